#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: pcap_info
short_description: TCP keepalive analysis of a pcap or pcapng capture, classified like Wireshark
version_added: 0.1.0
description:
  - Reads a capture file on the target and finds every TCP Keep-Alive and Keep-Alive ACK with Wireshark's
    rules (the frames are the same as those of C(tshark -Y tcp.analysis.keep_alive) and
    C(tcp.analysis.keep_alive_ack)).
  - Per connection it reports the probes (time, sequence number, length, answered or not), the idle time
    before each first probe counted from the last segment the prober received, the spacing of unanswered
    probes, the RST (who sent it, when, its flags) and, with O(expect), a verdict with reasons.
  - It tells apart what otherwise misleads, such as data in flight (no probes are sent then), spacing that fits a
    per-socket TCP_KEEPINTVL rather than the sysctl, a RST after fewer probes than expected (TCP_USER_TIMEOUT),
    zero-window probes and retransmissions.
  - Reads pcap (both byte orders, microsecond and nanosecond stamps) and pcapng; link types Ethernet (with
    802.1Q/802.1ad tags), Linux cooked SLL and SLL2, raw IP and BSD loopback; IPv4 and IPv6. The file is streamed,
    so memory stays bounded by the number of connections, not of packets.
  - O(path) must be a regular file; a directory, FIFO, socket or device is refused before it is opened (a FIFO
    would block the reader).
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
  - tcplab.keepalive.attributes.info_module
attributes:
  platform:
    platforms: posix
options:
  path:
    description:
      - The capture file on the target (written by C(tcpdump -w), C(tshark -w) or the capture module).
    type: path
    required: true
  connection:
    description:
      - Analyse only the connections with an endpoint that matches both of the given fields (an endpoint is an
        address and a port). Without it every connection is counted and the ones with keepalive probes,
        zero-window probes or data in flight are listed.
    type: dict
    suboptions:
      address:
        description: IPv4 or IPv6 address of either endpoint.
        type: str
      port:
        description: TCP port of either endpoint.
        type: int
  expect:
    description:
      - The keepalive settings the probes should follow; adds a V(pass) or V(fail) verdict with reasons.
    type: dict
    suboptions:
      time:
        description: Seconds of idle time (from the last segment received) before the first probe, 1..32767.
        type: int
      intvl:
        description: Seconds between unanswered probes, and between the last probe and the RST, 1..32767.
        type: int
      probes:
        description: Unanswered probes before the prober gives up with a RST, 1..127.
        type: int
  tolerance:
    description:
      - How far a measured time may be from the expected one - O(tolerance.seconds) plus O(tolerance.percent) of the
        expected value. Timer slack makes a kernel's 2 s come out as about 2.02 s.
    type: dict
    suboptions:
      seconds:
        description: Absolute part of the tolerance, 0..32767 seconds.
        type: float
        default: 0.25
      percent:
        description: Relative part of the tolerance, in percent of the expected value, 0..100.
        type: float
        default: 10.0
  return_frames:
    description:
      - Also return the 1-based frame numbers of every Keep-Alive and Keep-Alive ACK (as tshark numbers them).
    type: bool
    default: false
  capture_state_dir:
    description:
      - With O(wait_for), where M(tcplab.keepalive.capture) keeps its state records. When a capture of that
        module writes O(path) and its sniffer has stopped or died, the wait ends at once and says how, since
        nothing more will come.
    type: path
    default: /var/lib/tcplab-keepalive/capture
  wait_for:
    description:
      - Poll the file (a capture still being written) until the client's probes reach a count or its
        connection ends, for at most O(wait_for.timeout) seconds; the result says whether it was met.
        Used by the experiment role to follow the kernel's timeline without polling from the controller.
      - The wait returns at once when the watched connection ends. RV(waited.end) says how (FIN or RST, from the
        client or the server, when) and RV(waited.unexpected_end) whether the keepalive timeline does not explain it -
        a FIN from either side, a RST from the server, or a RST from the client without unanswered probes before it
        (a process stopped or aborted the connection).
      - RV(waited.reason) and RV(msg) say in words what was seen, so that a task retried C(until) a condition
        holds ends with that reason rather than a bare failure.
      - Without O(connection) the analysis is focused on O(wait_for.port), so that a connection without probes
        is listed too.
      - A missing file, or one without a complete header yet, is read again until the timeout; any other error
        fails at once.
    type: dict
    suboptions:
      port:
        description: Local port of the prober (the keepalive client) to watch, 1..65535.
        type: int
        required: true
      answered:
        description: Met when the prober has at least this many answered probes (1..1000000).
        type: int
      unanswered:
        description: Met when the prober's final run of unanswered probes is at least this long (1..127).
        type: int
      rst:
        description:
          - Met when the client has ended the connection with a RST. At least one of O(wait_for.answered),
            O(wait_for.unanswered) and O(wait_for.rst) must be given.
        type: bool
        default: false
      timeout:
        description: Seconds to wait before returning with RV(waited.met=false), 0..3600.
        type: float
        default: 5
      interval:
        description: Seconds between two reads of the file, 0.01..60.
        type: float
        default: 0.1
  kernel_sample:
    description:
      - Also read the kernel's keepalive counters and TCP sockets of the network namespace the module runs in once the
        analysis (with O(wait_for), the wait) is done, as M(tcplab.keepalive.kernel_counters) does with the same
        O(kernel_sample.port) and O(kernel_sample.peer_port); the sample is RV(kernel).
      - The experiment role samples the client's keepalive timer this way when the capture runs on the client, in the
        module run of the wait (on a lab VM under software emulation each module run costs seconds).
    type: dict
    version_added: 0.2.0
    suboptions:
      port:
        description: The connection's local port (the client's), 1..65535; its socket is C(socket) in RV(kernel).
        type: int
        required: true
      peer_port:
        description: The other end's port (the server's), 1..65535.
        type: int
notes:
  - A truncated last record (a capture still being written) is not an error - the complete packets are analysed,
    RV(truncated) is V(true) and RV(truncated_at) says where. A record that cannot be valid (longer than the
    snapshot length, a pcapng block whose two lengths differ) is an error that names its number and byte offset.
  - IP fragments are counted and skipped (not reassembled); tunnels are not decapsulated.
  - On loopback a packet socket sees each segment twice. Files written by tcpdump hold one copy; when a Linux cooked
    capture holds both, the second copies are classified (as tshark does), counted in
    RV(summary.loopback_duplicates) and left out of the probe timing.
  - A probe seen twice about 0.1 ms apart, the copy's TTL one less, was forwarded back onto the captured bridge by
    a router on it (a bridge floods once it has forgotten the peer's MAC address, after 300 s by default); the copy
    is counted in the probe's RV(connections[].probers[].probes[].copies) and RV(summary.probe_copies), with a note,
    and is never numbered, timed or judged as a probe.
seealso:
  - name: Wireshark TCP analysis
    description: The Keep-Alive and Keep-Alive ACK rules this module follows.
    link: https://www.wireshark.org/docs/wsug_html_chunked/ChAdvTCPAnalysis.html
'''

EXAMPLES = r'''
- name: Analyse the capture of an experiment
  tcplab.keepalive.pcap_info:
    path: /tmp/keepalive.pcap
    connection:
      port: 12345
    expect:
      time: 2
      intvl: 1
      probes: 3
  register: analysis

- name: The probes must follow the sysctls
  ansible.builtin.assert:
    that: analysis.verdict == 'pass'
    fail_msg: "{{ analysis.reasons | join('; ') }}"

- name: Frame numbers for a look in Wireshark
  tcplab.keepalive.pcap_info:
    path: /tmp/keepalive.pcap
    return_frames: true
    tolerance:
      seconds: 0.5
      percent: 0
'''

RETURN = r'''
kernel:
  description:
    - With O(kernel_sample), the sample taken after the analysis or the wait - the same keys as
      M(tcplab.keepalive.kernel_counters) returns (C(time), C(netns_inode), C(counters), C(socket), C(ours), C(others),
      C(others_count), C(sockets_count), C(source)).
  returned: when O(kernel_sample) is given
  type: dict
  version_added: 0.2.0
msg:
  description: With O(wait_for), RV(waited.reason).
  returned: when O(wait_for) is given
  type: str
  sample: >-
    the connection 198.19.40.1:40002 -> 198.19.40.2:40001 ended with a FIN from the server (198.19.40.2:40001) at
    +5.278 s (the server process stopped or closed the connection?) before unanswered keepalive probe 1 was seen
    (2 answered and 0 unanswered probes by then)
waited:
  description: With O(wait_for), how the wait went.
  returned: when O(wait_for) is given
  type: dict
  contains:
    met:
      description: Whether the condition was met.
      type: bool
    ended:
      description: Whether the watched connection ended (a RST or a FIN) - nothing more will come.
      type: bool
    end:
      description: How the connection ended (its first RST or FIN), or null while it is open.
      type: dict
      contains:
        by:
          description: V(RST) or V(FIN).
          type: str
        from:
          description: V(client) (the endpoint with O(wait_for.port)) or V(server).
          type: str
        endpoint:
          description: The sender, address and port.
          type: str
        time:
          description: Seconds since the first packet of the capture.
          type: float
        after_start:
          description: Seconds since the first packet of the connection.
          type: float
        flags:
          description: TCP flags of the segment.
          type: str
        after_probes:
          description: With a RST, the unanswered probes its sender had sent right before it.
          type: int
    unexpected_end:
      description:
        - Whether the connection ended in a way the keepalive timeline does not explain - a FIN from either side, a
          RST from the server, or a RST from the client without unanswered probes before it (or while only answered
          probes were awaited), or the capture writing the file stopped or died (RV(waited.capture)). The caller
          should stop and report RV(waited.reason).
      type: bool
    capture:
      description:
        - When the capture writing the file (a M(tcplab.keepalive.capture) of O(capture_state_dir)) no longer runs,
          how it ended, in words (which process, and the signal or exit code that ended it).
      type: str
      returned: when the capture ended during the wait
    reason:
      description: What was seen, in words - met, still open, no connection yet, or how and when the connection ended.
      type: str
    seconds:
      description: Seconds waited.
      type: float
    answered:
      description: Answered probes of the prober at the end of the wait.
      type: int
    unanswered:
      description: The prober's final run of unanswered probes at the end of the wait.
      type: int
path:
  description: The capture analysed.
  returned: always
  type: str
  sample: /tmp/keepalive.pcap
format:
  description: V(pcap) or V(pcapng).
  returned: always
  type: str
  sample: pcap
link_types:
  description: The link-layer header types of the capture (one per pcapng interface).
  returned: always
  type: list
  elements: int
  sample: [1]
truncated:
  description: Whether the last record was cut short; the complete packets before it were analysed.
  returned: always
  type: bool
  sample: false
truncated_at:
  description: Where the cut-short last record starts, or null.
  returned: always
  type: dict
  contains:
    unit:
      description: V(record) (pcap) or V(block) (pcapng).
      type: str
    number:
      description: 1-based number of the record or block.
      type: int
    offset:
      description: Its byte offset in the file.
      type: int
start:
  description: Time stamp (seconds since the epoch) of the first packet; every C(time) is relative to it.
  returned: always
  type: float
  sample: 1700000000.123456
summary:
  description: Counts over the whole capture (or the connections selected with O(connection)).
  returned: always
  type: dict
  contains:
    packets:
      description: Frames in the capture.
      type: int
      sample: 13
    tcp_packets:
      description: Frames with a TCP segment.
      type: int
      sample: 13
    connections:
      description: TCP connections (a new initial sequence number on the same ports starts a new one).
      type: int
      sample: 1
    keepalive:
      description: Frames classified Keep-Alive.
      type: int
      sample: 5
    keepalive_ack:
      description: Frames classified Keep-Alive ACK.
      type: int
      sample: 2
    rst_after_probes:
      description: Connections whose first RST came from an endpoint right after its unanswered probes.
      type: int
      sample: 1
    zero_window_probes:
      description: Zero-window probes, which are not keepalives.
      type: int
      sample: 0
    retransmissions:
      description: Segments with data (or SYN/FIN) below the highest sequence number already sent, not keepalives.
      type: int
      sample: 0
    fragments_skipped:
      description: IP fragments, which are not reassembled.
      type: int
      sample: 0
    loopback_duplicates:
      description: Frames of a Linux cooked capture that repeat the previous outgoing frame (loopback).
      type: int
      sample: 0
    probe_copies:
      description:
        - Keep-Alive frames that are copies of the probe just before them (the same segment within 10 ms, for example
          forwarded back onto the captured bridge by a router on it); classified as tshark does, counted and judged
          as one probe.
      type: int
      sample: 0
    notes:
      description: Remarks on the capture as a whole.
      type: list
      elements: str
connections:
  description: The connections with keepalive probes, zero-window probes or data in flight (every selected one with
    O(connection)), in order of their first frame.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: C(client -> server); the client is the sender of the SYN when the handshake was captured.
      type: str
      sample: 127.0.0.1:22345 -> 127.0.0.1:12345
    endpoints:
      description: The two endpoints, client first.
      type: list
      elements: str
    handshake_seen:
      description: Whether the SYN was captured.
      type: bool
    first_frame:
      description: First frame of the connection.
      type: int
    start:
      description: Time of the first frame.
      type: float
    end:
      description: Time of the last frame.
      type: float
    keepalive:
      description: Keep-Alive frames of the connection.
      type: int
    keepalive_ack:
      description: Keep-Alive ACK frames of the connection.
      type: int
    zero_window_probes:
      description: Zero-window probes of the connection.
      type: int
    retransmissions:
      description: Retransmitted segments of the connection.
      type: int
    in_flight_at_end:
      description: Bytes each endpoint had sent but not seen acknowledged at the end, by endpoint.
      type: dict
    probers:
      description: One entry per endpoint that sent keepalive probes.
      type: list
      elements: dict
      contains:
        endpoint:
          description: The prober.
          type: str
        peer:
          description: The endpoint probed.
          type: str
        count:
          description: Probes sent.
          type: int
        answered:
          description: Probes followed by a segment from the peer.
          type: int
        unanswered:
          description: Probes not answered.
          type: int
        final_unanswered:
          description: Unanswered probes in a row at the end (or before the RST).
          type: int
        idle_before_first_probe:
          description: Seconds from the last segment the prober received to its first probe.
          type: float
          sample: 2.019
        idle_times:
          description: The idle time before every probe that followed a received segment.
          type: list
          elements: float
        spacing:
          description: Seconds between consecutive unanswered probes.
          type: list
          elements: float
          sample: [1.01, 1.01]
        rst_sent:
          description: Whether this endpoint sent the RST.
          type: bool
        copies:
          description: Copies of this endpoint's probes that the capture holds (not counted as probes).
          type: int
          sample: 0
        probes:
          description: The probes.
          type: list
          elements: dict
          contains:
            number:
              description: 1-based number of the probe.
              type: int
            frame:
              description: Frame number.
              type: int
            time:
              description: Seconds since the first packet of the capture.
              type: float
            seq:
              description: Sequence number (next expected minus one).
              type: int
            length:
              description: Payload bytes, 0 or 1.
              type: int
            answered:
              description: Whether a segment from the peer followed before the next probe.
              type: bool
            answer_frame:
              description: The frame that answered it.
              type: int
            copies:
              description: Copies of this probe that the capture holds (not counted as probes).
              type: int
            kind:
              description: V(idle) after a received segment, V(retry) after an unanswered probe.
              type: str
            after:
              description: Seconds since the last received segment (idle) or the previous probe (retry).
              type: float
            expected:
              description:
                - Seconds since the first packet of the capture when the kernel's timer rules had the probe due
                  (docs/architecture.md, "The kernel's keepalive timer rules"); null without O(expect).
              type: float
            rule:
              description:
                - "The rule that gave the expected time, for example C(retry: previous probe + intvl); null without O(expect)."
              type: str
        verdict:
          description: V(pass) or V(fail) with O(expect), else null.
          type: str
        reasons:
          description: Why the verdict is V(fail).
          type: list
          elements: str
        notes:
          description: Remarks that do not fail the verdict.
          type: list
          elements: str
    rst:
      description: The first RST of the connection, or null.
      type: dict
      contains:
        from:
          description: Sender.
          type: str
        to:
          description: Receiver.
          type: str
        frame:
          description: Frame number.
          type: int
        time:
          description: Seconds since the first packet of the capture.
          type: float
        flags:
          description: TCP flags, for example C(RST|ACK).
          type: str
        after_probes:
          description: Unanswered probes the sender had sent right before it.
          type: int
        after_last_probe:
          description: Seconds since the sender's last probe.
          type: float
    fin:
      description: The first FIN of the connection, or null. Segments after the first RST answer no probe.
      type: dict
      contains:
        from:
          description: Sender.
          type: str
        to:
          description: Receiver.
          type: str
        frame:
          description: Frame number.
          type: int
        time:
          description: Seconds since the first packet of the capture.
          type: float
        flags:
          description: TCP flags, for example C(FIN|ACK).
          type: str
    notes:
      description: What else explains the traffic (data in flight, zero-window probes, reused ports, a connection
        closed by a FIN or reset by a program rather than ended by keepalive).
      type: list
      elements: str
    verdict:
      description: V(pass) or V(fail) with O(expect); null for a connection without probes that was not selected.
      type: str
    reasons:
      description: Why the verdict is V(fail), for example C(probe 2 came 2.9 s after probe 1, expected 1 s ± 0.35 s).
      type: list
      elements: str
expect:
  description: The expected settings used, or null.
  returned: always
  type: dict
tolerance:
  description: The tolerance used.
  returned: always
  type: dict
  sample: {seconds: 0.25, percent: 10.0}
verdict:
  description: V(pass) when every judged connection passes, V(fail) otherwise or when no probes were found; null
    without O(expect).
  returned: always
  type: str
  sample: pass
reasons:
  description: The reasons of every failed connection, each prefixed with its name.
  returned: always
  type: list
  elements: str
keepalive_frames:
  description: Frame numbers classified Keep-Alive.
  returned: when O(return_frames=true)
  type: list
  elements: int
  sample: [6, 8, 10, 11, 12]
keepalive_ack_frames:
  description: Frame numbers classified Keep-Alive ACK.
  returned: when O(return_frames=true)
  type: list
  elements: int
  sample: [7, 9]
'''

from ansible.module_utils.basic import AnsibleModule

# from _capture_record, not _capture: a wait runs once a second or so, and on a lab VM under software
# emulation every module_utils file it imports is compiled again on each run (AnsiballZ ships sources)
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import DEFAULT_STATE_DIR, liveness
from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_sample import (
    SPEC as KERNEL_SAMPLE, KernelSampleError, check as check_sample, take as take_sample)
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap_wait import wait_for
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, analyse, truncation_note


def capture_alive(path, state_dir):
    """A callable telling whether the capture that writes path still runs (None: no capture of ours writes it)."""
    def alive():
        try:
            return liveness(path, state_dir)
        except (OSError, ValueError):
            return None
    return alive


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            connection=dict(type='dict', options=dict(
                address=dict(type='str'),
                port=dict(type='int'),
            )),
            expect=dict(type='dict', options=dict(
                time=dict(type='int'),
                intvl=dict(type='int'),
                probes=dict(type='int'),
            )),
            tolerance=dict(type='dict', options=dict(
                seconds=dict(type='float', default=0.25),
                percent=dict(type='float', default=10.0),
            )),
            return_frames=dict(type='bool', default=False),
            capture_state_dir=dict(type='path', default=DEFAULT_STATE_DIR),
            wait_for=dict(type='dict', options=dict(
                port=dict(type='int', required=True),
                answered=dict(type='int'),
                unanswered=dict(type='int'),
                rst=dict(type='bool', default=False),
                timeout=dict(type='float', default=5),
                interval=dict(type='float', default=0.1),
            )),
            kernel_sample=KERNEL_SAMPLE,
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        check_sample(p['kernel_sample'])
        if p['wait_for']:
            result = wait_for(p['path'], p['wait_for'], expect=p['expect'], connection=p['connection'],
                              tolerance=p['tolerance'], return_frames=p['return_frames'],
                              alive=capture_alive(p['path'], p['capture_state_dir']))
        else:
            result = analyse(p['path'], expect=p['expect'], connection=p['connection'], tolerance=p['tolerance'],
                             return_frames=p['return_frames'])
        if p['kernel_sample']:
            result['kernel'] = take_sample(p['kernel_sample'])
    except (PcapError, KernelSampleError) as exc:
        module.fail_json(msg=str(exc))
    if result['truncated']:
        module.warn(truncation_note(result['truncated_at'], result['summary']['packets']))
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
