#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: capture
short_description: Start and stop a background packet capture and analyse the keepalive probes it saw
version_added: 0.1.0
description:
  - O(state=started) starts a detached capture on one interface, with an optional BPF filter,
    writing a pcap file packet by packet (so even a killed capture leaves a readable file). The
    process outlives the module and the Ansible connection. The module returns only once the
    packet socket is open with the filter attached, so every packet sent after the task is captured.
  - Two backends write the same pcap (O(backend)) - a scapy sniffer where the Python that runs the modules has
    scapy, else C(tcpdump) (what a fresh Debian target can get with C(apt-get install tcpdump)). The result and
    the state record say which one ran (RV(backend)); the analysis is the same.
  - A bad filter, a missing interface, a missing libpcap (without which scapy would silently capture unfiltered),
    or no backend at all (neither scapy nor tcpdump) fail the task at start, with a message that names the fix.
  - Each capture has a state record in O(state_dir) - the pcap's path and identity (device and inode), the
    sniffer's pid, start time and network namespace - which is the proof that a capture and its pcap are
    this module's. Nothing is signalled or removed without it.
  - O(state=stopped) stops the capture (only after checking that the process is ours - its command
    line and start time), and returns the packet count and the keepalive analysis of the pcap
    (probes, answers, spacing, the RST, compared with O(expect)). Stopping a capture that is not
    running is not an error; the result describes what the file holds, and when the sniffer died on
    its own it says how (killed by which signal, or its exit code and log).
  - O(state=status) reports whether the capture runs, how many packets it holds so far, and how its
    sniffer ended; it changes nothing.
  - O(state=absent) stops the capture if it runs and removes the pcap, its state record and its log - only
    a pcap whose record says this module wrote it, and only while the file at O(path) is still that file.
    A path without a record, a symbolic link, or a file put in the pcap's place since is refused and left alone.
  - O(state=purged) stops every capture whose record says its sniffer runs in the target's network namespace
    (or in O(netns)), when its pid, start time and namespace still match; captures of other namespaces are left
    alone, and the pcaps stay (the rollback's panic button).
  - A O(path) that is a FIFO, a device, a directory, a socket or a symbolic link is refused before it is opened.
  - The pcap holds what C(tcpdump -i IFACE) would record. On loopback a packet socket sees every
    segment twice (the outgoing and the incoming copy); like libpcap, the capture keeps only the
    incoming copy. With the tcpdump backend, tcpdump itself writes it.
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
      - V(status) reports on the capture given by O(handle) or O(path) and changes nothing.
      - V(absent) stops it if needed and removes its files (only those its state record proves ours).
      - V(purged) stops every capture of this module that runs in the target's network namespace, or in
        O(netns) when given, and returns them in RV(stopped). It takes no O(path) or O(handle).
    type: str
    choices: [started, stopped, status, absent, purged]
    default: started
  backend:
    description:
      - What captures, with O(state=started).
      - V(auto) takes scapy when the Python that runs the modules can import it, else tcpdump; it fails, naming
        both packages, when there is neither.
      - V(scapy) - a scapy sniffer in that Python (its C(python3-scapy) package, or scapy in its virtualenv).
      - V(tcpdump) - C(tcpdump) (found in C(PATH) or the sbin directories) under a monitor that runs on the
        target's own Python with its standard library only. It runs as root (C(-Z root)), writes the pcap to the
        file the module created (C(-w -), C(-U), C(--immediate-mode), C(-B 16384)), stops at O(max_packets)
        (C(-c), at most 2^31-1) by itself and at O(max_seconds) and O(max_bytes) by its monitor, which polls the
        pcap's size every 0.1 s and cuts it back to the whole packets within O(max_bytes) when it ends there.
    type: str
    choices: [auto, scapy, tcpdump]
    default: auto
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
      - The pcap file. Its state record and log are kept in O(state_dir).
      - Default for O(state=started) - a new file in C(/var/tmp/tcplab-keepalive/captures/) (a
        directory of mode 0700). The pcap is created with mode 0600.
      - A file that exists and is not a capture of this module is never overwritten; anything that is not
        a regular file (a FIFO, a device, a directory, a socket, a symbolic link) is refused.
      - With O(state=stopped), O(state=status) or O(state=absent), an alternative to O(handle).
    type: path
  state_dir:
    description:
      - Directory of the captures' state records and logs (mode 0700, owned by the user the module runs as).
        One record per pcap path; O(state=purged) looks at every record in it.
      - Default - the RV(handle)'s C(state_dir) when a handle is given, else C(/var/lib/tcplab-keepalive/capture).
        Give the same O(state_dir) to every task that handles the same capture.
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
    description: The capture stops by itself after this many packets, 1 to 2^40.
    type: int
    default: 1000000
  max_seconds:
    description: The capture stops by itself after this many seconds, so a forgotten capture ends; 1 to 10^9.
    type: int
    default: 3600
  max_bytes:
    description:
      - The capture stops by itself before the pcap grows beyond this many bytes (200 MB by default), 1024 to 2^50.
        The pcap's header takes 24 bytes and each packet 16 bytes plus the bytes kept of it.
    type: int
    default: 200000000
  netns:
    description:
      - Capture inside another network namespace of the host, given by its name under C(/run/netns)
        (as made by C(ip netns add)). The sniffer runs under C(nsenter --net).
      - With O(state=purged), stop the captures of that namespace instead of the target's own.
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
  - Python 3.8 or later on the target
  - For the scapy backend, scapy (tested with 2.8.0) in the Python that runs the modules on the target, and
    libpcap (Debian/Ubuntu C(libpcap0.8)) when O(filter) is used
  - For the tcpdump backend, tcpdump (Debian/Ubuntu C(tcpdump); tested with 4.99)
  - nsenter (util-linux) when O(netns) is used
  - root (packet sockets)
notes:
  - The scapy sniffer carries the marker C(tcplab-keepalive-capture) in its command line. It is only
    ever signalled when its command line names the same pcap and its start time (from
    C(/proc/PID/stat)) matches the one recorded at start, so a reused pid is never killed.
  - tcpdump's command line cannot carry the marker; its parent, the monitor, does, with the pcap path and
    tcpdump's exact argv. tcpdump is signalled only while its parent is that monitor, its command line is that
    argv and its start time is the recorded one. It is tied to the monitor's life (it gets SIGTERM, and flushes,
    when the monitor dies), so it never runs on unproven.
  - Two processes run per capture - the sniffer (or tcpdump) and its parent, a monitor that records in the state
    record how the sniffer ended when it did not end by itself (a signal, an exit code).
  - Where AppArmor confines tcpdump (the profile of Debian's package), tcpdump may write only files named
    C(*.pcap) or C(*.cap); keep such a O(path) with the tcpdump backend.
  - Records of a release before the state records moved to O(state_dir) (C(PATH.state.json) next to the pcap)
    are not recognised; remove such old pcaps yourself.
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

- name: Capture with tcpdump (a target without scapy; auto would choose it there too)
  tcplab.keepalive.capture:
    backend: tcpdump
    filter: tcp port 12345
  register: capture

- name: Capture inside a lab namespace, to a chosen file
  tcplab.keepalive.capture:
    netns: tcplab-client
    iface: eth0
    filter: tcp port 12345
    path: /var/tmp/tcplab-keepalive/captures/client.pcap
    max_seconds: 600

- name: Is it still capturing? (says how the sniffer died if it did)
  tcplab.keepalive.capture:
    state: status
    path: /var/tmp/tcplab-keepalive/captures/client.pcap
  register: capture_status

- name: Remove the capture and its files
  tcplab.keepalive.capture:
    state: absent
    path: /var/tmp/tcplab-keepalive/captures/client.pcap

- name: Rollback - stop every capture of this host's network namespace (the pcaps stay)
  tcplab.keepalive.capture:
    state: purged
  register: purged
'''

RETURN = r'''
path:
  description: The pcap file (in check mode for a new default file, a placeholder name).
  returned: when state is not purged
  type: str
  sample: /var/tmp/tcplab-keepalive/captures/capture-20260101T120000-lo-k2j4h1xa.pcap
handle:
  description: Names the capture for O(state=stopped), O(state=status) and O(state=absent).
  returned: when state is not purged
  type: dict
  contains:
    path:
      description: The pcap file.
      type: str
    state_dir:
      description: The directory of the state record and the log.
      type: str
    state_path:
      description:
        - The state record in O(state_dir) (pcap path and identity, pid, start time, network namespace inode, settings;
          the capture's own account of its end, or the monitor's when it died).
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
    backend:
      description: The backend that captures (null when none was started).
      type: str
      sample: tcpdump
pid:
  description: The capture process (the scapy sniffer, or tcpdump).
  returned: when state is not purged
  type: int
  sample: 12345
backend:
  description:
    - The backend that runs (or ran) the capture - V(scapy) or V(tcpdump); also in its state record. With
      O(state=started) in check mode, the one that would run. Null when there is no capture of this module.
  returned: when state is not purged
  type: str
  sample: tcpdump
running:
  description: Whether the capture runs after this task.
  returned: when state is not purged
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
  returned: when state is stopped, status or absent
  type: int
  sample: 11
pcap:
  description: What the pcap file holds, read record by record.
  returned: when state is stopped, status or absent
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
      V(killed) (a signal it did not handle, for example SIGKILL, see RV(died)) or V(died) (it exited with an error
      code, see RV(died)). Null while it runs.
  returned: when state is stopped, status or absent
  type: str
  sample: stopped
died:
  description: How the sniffer ended when it did not end by itself or by this module (null otherwise).
  returned: when state is stopped, status or absent
  type: dict
  contains:
    pid:
      description: The sniffer's pid.
      type: int
    signal:
      description: The signal that killed it (null when it exited).
      type: str
      sample: SIGKILL
    exit_code:
      description: Its exit code (null when a signal killed it).
      type: int
    log:
      description: Its log (a Python traceback, for example).
      type: str
    msg:
      description: The same in a sentence, also given as a warning.
      type: str
      sample: "the capture's sniffer (pid 12345) died: killed by SIGKILL"
finished:
  description: The capture process's own account of its end (null when it was killed).
  returned: when state is stopped, status or absent
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
      description:
        - Outgoing copies of loopback segments left out (tcpdump leaves them out too).
        - Null with the tcpdump backend (libpcap leaves them out without counting).
      type: int
    kernel_drops:
      description: Packets the kernel dropped because the capture fell behind (from tcpdump's own count with tcpdump).
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
stopped:
  description: The captures O(state=purged) stopped (in check mode, would stop).
  returned: when state is purged
  type: list
  elements: dict
  contains:
    path:
      description: The pcap (it stays).
      type: str
    pid:
      description: The sniffer's pid.
      type: int
    iface:
      description: Its interface.
      type: str
    filter:
      description: Its BPF filter.
      type: str
    netns:
      description: The O(netns) name it was started with (null when started in the target's own namespace).
      type: str
    backend:
      description: Its backend, V(scapy) or V(tcpdump).
      type: str
    signal:
      description: The signal that ended it (V(SIGTERM), or V(SIGKILL) when it did not exit); null in check mode.
      type: str
netns_inode:
  description: The inode of the network namespace whose captures O(state=purged) stopped.
  returned: when state is purged
  type: int
others_running:
  description: Running captures of this module in other network namespaces, left alone by O(state=purged).
  returned: when state is purged
  type: int
'''

import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._capture import BACKENDS, DEFAULTS, MSG_PURGED_TARGET, Capture
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import (
    DEFAULT_STATE_DIR, CaptureError, handle_state_dir, resolve_target)
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_stop import MSG_NEEDS_TARGET
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, find_binary


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', choices=['started', 'stopped', 'status', 'absent', 'purged'], default='started'),
            backend=dict(type='str', choices=list(BACKENDS), default=DEFAULTS['backend']),
            iface=dict(type='str', default=DEFAULTS['iface']),
            filter=dict(type='str'),
            path=dict(type='path'),
            handle=dict(type='raw'),
            state_dir=dict(type='path'),
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
        state_dir = p['state_dir'] or handle_state_dir(p['handle']) or DEFAULT_STATE_DIR
        nsenter = find_binary(module, 'nsenter') if p['netns'] and p['state'] == 'started' else None
        tcpdump = module.get_bin_path('tcpdump') if p['state'] == 'started' and p['backend'] != 'scapy' else None
        capture = Capture(sys.executable, nsenter=nsenter, check_mode=module.check_mode, state_dir=state_dir, tcpdump=tcpdump)
        if p['state'] == 'purged':
            if p['path'] or p['handle'] is not None:
                raise CaptureError(MSG_PURGED_TARGET)
            module.exit_json(**capture.purged(p['netns']))
        path = resolve_target(p['handle'], p['path'])
        if p['state'] == 'started':
            result = capture.started(dict(p, path=path))
        elif path is None:
            raise CaptureError(MSG_NEEDS_TARGET % p['state'])
        elif p['state'] == 'stopped':
            result = capture.stopped(path, p['handle'], expect=p['expect'], tolerance=p['tolerance'])
        elif p['state'] == 'status':
            result = capture.status(path, p['handle'])
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
