#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: capture
short_description: Start and stop a background packet capture and analyse the keepalive probes it saw
version_added: 1.0.0
description:
  - O(state=started) starts a detached scapy sniffer on one interface, with an optional BPF filter,
    writing a pcap file record by record (so even a killed capture leaves a readable file). The
    process outlives the module and the Ansible connection. The module returns only once the
    packet socket is open with the filter attached, so every packet sent after the task is captured.
  - A bad filter, a missing libpcap (without which scapy would silently capture unfiltered) or a
    missing scapy fail the task at start, with a message that names the fix.
  - O(state=stopped) stops the capture (only after checking that the process is ours - its command
    line and start time), and returns the packet count and the keepalive analysis of the pcap
    (probes, answers, spacing, the RST, compared with O(expect)). Stopping a capture that is not
    running is not an error; the result describes what the file holds.
  - O(state=absent) stops the capture if it runs and removes the pcap, its state file and its log.
  - The pcap holds what C(tcpdump -i IFACE) would record. On loopback a packet socket sees every
    segment twice (the outgoing and the incoming copy); like libpcap, the capture keeps only the
    incoming copy.
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: linux
options:
  state:
    description:
      - V(started) starts a capture (nothing changes when one with the same settings already runs on O(path)).
      - V(stopped) stops the capture given by O(handle) or O(path) and analyses it.
      - V(absent) stops it if needed and removes its files.
    type: str
    choices: [started, stopped, absent]
    default: started
  iface:
    description: The interface to capture on, in the target's network namespace or in O(netns).
    type: str
    default: lo
  filter:
    description:
      - A BPF filter in tcpdump syntax, for example C(tcp port 12345). It is compiled by libpcap and
        attached to the socket before the capture reports ready. Without it every packet is captured.
    type: str
  path:
    description:
      - The pcap file. Its state file (C(PATH.state.json)) and log (C(PATH.log)) are written next to it.
      - Default for O(state=started) - a new file in C(/var/tmp/tcplab-keepalive/captures/) (a
        directory of mode 0700). The pcap is created with mode 0600.
      - A file that exists and is not a capture of this module is never overwritten.
      - With O(state=stopped) or O(state=absent), an alternative to O(handle).
    type: path
  handle:
    description:
      - The RV(handle) returned by O(state=started) (or just the pcap path), naming the capture to
        stop or remove.
    type: raw
  snaplen:
    description: Bytes kept of each packet (as C(tcpdump -s)), 64 to 262144.
    type: int
    default: 262144
  max_packets:
    description: The capture stops by itself after this many packets.
    type: int
    default: 1000000
  max_seconds:
    description: The capture stops by itself after this many seconds, so a forgotten capture ends.
    type: int
    default: 3600
  max_bytes:
    description: The capture stops by itself before the pcap grows beyond this many bytes (200 MB by default).
    type: int
    default: 200000000
  netns:
    description:
      - Capture inside another network namespace of the host, given by its name under C(/run/netns)
        (as made by C(ip netns add)). The sniffer runs under C(nsenter --net).
    type: str
  expect:
    description:
      - With O(state=stopped), the keepalive settings the analysis compares the probes with, keys
        C(time), C(intvl) and C(probes) in seconds and probes.
    type: dict
  tolerance:
    description:
      - With O(state=stopped), how far timings may be from O(expect) and still pass, keys C(seconds)
        (default 0.25) and C(percent) (default 10) of the expected value; the two add up.
    type: dict
requirements:
  - scapy (tested with 2.8.0) in the Python that runs the modules on the target
  - libpcap (Debian/Ubuntu C(libpcap0.8)) when O(filter) is used
  - nsenter (util-linux) when O(netns) is used
  - root (packet sockets)
notes:
  - The capture process carries the marker C(tcplab-keepalive-capture) in its command line. It is only
    ever signalled when its command line names the same pcap and its start time (from
    C(/proc/PID/stat)) matches the one recorded at start, so a reused pid is never killed.
  - Timestamps come from the kernel (microseconds, as tcpdump writes them).
seealso:
  - module: tcplab.keepalive.sysctl
'''

EXAMPLES = r'''
- name: Capture the experiment's port on loopback
  tcplab.keepalive.capture:
    filter: tcp port 12345
  register: capture

- name: Stop it and analyse the keepalive probes
  tcplab.keepalive.capture:
    state: stopped
    handle: "{{ capture.handle }}"
    expect: {time: 30, intvl: 3, probes: 3}
  register: captured

- name: Capture inside a lab namespace, to a chosen file
  tcplab.keepalive.capture:
    netns: tcplab-client
    iface: eth0
    filter: tcp port 12345
    path: /var/tmp/tcplab-keepalive/captures/client.pcap
    max_seconds: 600

- name: Remove the capture and its files
  tcplab.keepalive.capture:
    state: absent
    path: /var/tmp/tcplab-keepalive/captures/client.pcap
'''

RETURN = r'''
path:
  description: The pcap file (in check mode for a new default file, a placeholder name).
  returned: always
  type: str
  sample: /var/tmp/tcplab-keepalive/captures/capture-20260101T120000-lo-k2j4h1xa.pcap
handle:
  description: Names the capture for O(state=stopped) and O(state=absent).
  returned: always
  type: dict
  contains:
    path:
      description: The pcap file.
      type: str
    state_path:
      description: The state file next to it (pid, start time, settings; the result of the capture when it ended).
      type: str
    log_path:
      description: The capture process's log.
      type: str
    pid:
      description: The capture process (null when none was started).
      type: int
    starttime:
      description: The process start time in clock ticks after boot (field 22 of C(/proc/PID/stat)).
      type: int
    marker:
      description: The marker in the process's command line.
      type: str
      sample: tcplab-keepalive-capture
    iface:
      description: The interface.
      type: str
    filter:
      description: The BPF filter (null for none).
      type: str
    netns:
      description: The network namespace name (null for the target's own).
      type: str
pid:
  description: The capture process.
  returned: always
  type: int
  sample: 12345
running:
  description: Whether the capture runs after this task.
  returned: always
  type: bool
msg:
  description: What was done.
  returned: always
  type: str
  sample: stopped the capture (pid 12345, SIGTERM)
was_running:
  description: Whether the capture was running before this task.
  returned: when state is stopped or absent
  type: bool
packets:
  description: Packets in the pcap.
  returned: when state is stopped or absent
  type: int
  sample: 11
pcap:
  description: What the pcap file holds, read record by record.
  returned: when state is stopped or absent
  type: dict
  contains:
    packets:
      description: Complete records.
      type: int
    bytes:
      description: File size up to the last complete record.
      type: int
    complete:
      description: False when the file ends in a torn record (a capture killed mid-write); the rest is readable.
      type: bool
    readable:
      description: Whether the file has a pcap header.
      type: bool
    linktype:
      description: The pcap link type (1 is Ethernet, which loopback also uses).
      type: int
stop_reason:
  description:
    - Why the capture ended - V(stopped) (by this module), V(max_packets), V(max_seconds), V(max_bytes),
      or V(killed) (it ended without recording why, for example SIGKILL).
  returned: when state is stopped or absent
  type: str
  sample: stopped
finished:
  description: The capture process's own account of its end (null when it was killed).
  returned: when state is stopped or absent
  type: dict
  contains:
    reason:
      description: As RV(stop_reason).
      type: str
    packets:
      description: Packets written.
      type: int
    bytes:
      description: Bytes written.
      type: int
    loopback_outgoing_dropped:
      description: Outgoing copies of loopback segments left out (tcpdump leaves them out too).
      type: int
    kernel_drops:
      description: Packets the kernel dropped because the capture fell behind.
      type: int
    at:
      description: When it ended (seconds since the epoch).
      type: float
analysis:
  description:
    - The keepalive analysis of the pcap, as the C(tcplab.keepalive.pcap_info) module returns it
      (per connection, the probes and answers, their spacing, the RST, compared with O(expect)).
    - Null when the file is not readable or the analysis failed (see RV(analysis_error)).
  returned: when state is stopped
  type: dict
  contains:
    summary:
      description: Totals over all connections, for example C(keepalive), the number of keepalive probes.
      type: dict
    connections:
      description: Per connection, the probes, answers, RST and verdict.
      type: list
      elements: dict
analysis_error:
  description: Why there is no analysis.
  returned: when the analysis failed
  type: str
removed:
  description: Files removed (in check mode, that would be removed).
  returned: when state is absent
  type: list
  elements: str
'''

import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._capture import (
    DEFAULTS, Capture, CaptureError, MSG_NEEDS_TARGET, resolve_target)
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, find_binary


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', choices=['started', 'stopped', 'absent'], default='started'),
            iface=dict(type='str', default=DEFAULTS['iface']),
            filter=dict(type='str'),
            path=dict(type='path'),
            handle=dict(type='raw'),
            snaplen=dict(type='int', default=DEFAULTS['snaplen']),
            max_packets=dict(type='int', default=DEFAULTS['max_packets']),
            max_seconds=dict(type='int', default=DEFAULTS['max_seconds']),
            max_bytes=dict(type='int', default=DEFAULTS['max_bytes']),
            netns=dict(type='str'),
            expect=dict(type='dict'),
            tolerance=dict(type='dict'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        path = resolve_target(p['handle'], p['path'])
        nsenter = find_binary(module, 'nsenter') if p['netns'] and p['state'] == 'started' else None
        capture = Capture(sys.executable, nsenter=nsenter, check_mode=module.check_mode)
        if p['state'] == 'started':
            result = capture.started(dict(p, path=path))
        elif path is None:
            raise CaptureError(MSG_NEEDS_TARGET % p['state'])
        elif p['state'] == 'stopped':
            result = capture.stopped(path, p['handle'], expect=p['expect'], tolerance=p['tolerance'])
        else:
            result = capture.absent(path, p['handle'])
    except CommandError as exc:
        module.fail_json(**exc.as_result())
    except (CaptureError, OSError) as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop('warnings', []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
