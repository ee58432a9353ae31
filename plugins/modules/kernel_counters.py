#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: kernel_counters
short_description: The kernel's own count of keepalive probes and timeouts in a network namespace, and a socket's timer
version_added: 0.2.0
description:
  - Reads the C(TcpExt) counters C(TCPKeepAlive) (keepalive probes sent), C(TCPAbortOnTimeout) (connections the kernel
    gave up on after their last unanswered keepalive probe, their last retransmission or C(TCP_USER_TIMEOUT)) and
    C(TCPTimeouts) (retransmission timeouts) from C(/proc/net/netstat) of the network namespace the module runs in, or
    of O(netns).
  - Lists the namespace's TCP sockets from inet_diag (the source of C(ss -tnoi)) - or from C(/proc/net/tcp) and
    C(tcp6) where inet_diag cannot be used, said in RV(source) - and returns the socket of O(port) with its pending
    timer (C(keepalive) while it waits to probe), the timer's expiry, its count of unanswered probes and tcp_info's
    C(tcpi_probes) and C(tcpi_backoff).
  - The counters count every connection of the namespace. RV(others) lists the other connections that could move them
    (a keepalive timer, or a retransmission or zero-window timer that hides whether keepalive is on).
  - Also reads C(TcpExt TCPLossProbes) (tail loss probes) and C(Tcp RetransSegs) of C(/proc/net/snmp) (segments sent
    again), which the in-flight experiment compares with the capture's resends; null where the kernel lacks them.
  - The C(tcplab.keepalive.experiment) role samples the client's namespace before its client connects, after each
    unanswered probe and after the client ended (every fault); the C(tcplab.keepalive.report) module compares the
    deltas with the capture (C(evidence.kernel) in C(report.json)).
  - With O(watch) it also watches the other connections of the namespace, which the counters count too (on a VM the
    controller's SSH connection - sshd keeps keepalive on and follows the shortened sysctls). V(started) starts a
    C(tcpdump -i any) of the headers of every TCP segment but the connection of O(port) and O(peer_port) into
    O(watch_path) and then takes the sample; V(stopped) takes the sample, waits until the watch has caught up (a
    marker, a connection attempt to a closed port on lo, is in its pcap), stops it, returns the times of the keepalive
    probes, RSTs and zero-length segments the namespace sent and the count of its retransmissions in RV(watch) and
    removes the pcap; V(absent) stops one that still runs and removes its files. Without O(watch) the module only
    reads.
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  port:
    description:
      - The local port (1..65535) of the connection to report in RV(socket) (the experiment's client port). Sockets with this
        port at either end are the connection's own and are not listed in RV(others).
    type: int
  peer_port:
    description:
      - The other end's port (1..65535, the experiment's server port); with it only sockets between O(port) and O(peer_port)
        are the connection's own.
    type: int
  netns:
    description:
      - Read another network namespace of the host, given by its name under O(netns_dir) (as made by
        C(ip netns add)) or the pid of a process in it. Without it, the namespace the module runs in.
    type: str
  netns_dir:
    description: Where named network namespaces live.
    type: path
    default: /run/netns
  watch:
    description:
      - Start, stop or remove the watch of the other connections of the namespace (see the description); it needs
        O(watch_path). The watch's tcpdump runs detached; its state record C(<watch_path>.watch.json) (pid, start
        time, namespace) is what V(stopped) and V(absent) check before they signal it, and they remove only the files
        the record names.
      - V(purged) (C(playbooks/rollback.yml), after a lost controller) takes O(watch_path) as a directory and stops
        every watch whose state record there names this network namespace, then removes the files each record names;
        a file without such a record is never removed.
    type: str
    choices: [started, stopped, absent, purged]
    version_added: 0.2.0
  watch_path:
    description:
      - The watch's pcap (an absolute path; its directory is created with mode 0700); with O(watch=purged) the directory
        of the watches' pcaps and records.
    type: path
    version_added: 0.2.0
  watch_seconds:
    description: The watch ends by itself after this many seconds (C(tcpdump -G -W 1)), 1..86400, should nobody stop it.
    type: int
    default: 3600
    version_added: 0.2.0
notes:
  - Reading another namespace (O(netns)) needs root; the watch needs root and tcpdump.
'''

EXAMPLES = r'''
- name: Count keepalive activity in the client's namespace before the experiment
  tcplab.keepalive.kernel_counters:
    port: 22345
    peer_port: 12345
  register: before

- name: The client's keepalive timer in a lab namespace
  tcplab.keepalive.kernel_counters:
    port: 22345
    netns: tcplab-client
  register: now

- name: Watch the other connections of the namespace while an experiment runs
  tcplab.keepalive.kernel_counters:
    port: 22345
    peer_port: 12345
    watch: started
    watch_path: /var/tmp/tcplab-keepalive/captures/others.pcap
    watch_seconds: 600
  register: start

- name: Say how many probes are unanswered
  ansible.builtin.debug:
    msg: "{{ now.socket.timer_count }} unanswered, next in {{ now.socket.expires_s }} s"
  when: now.socket is not none and now.socket.timer == 'keepalive'
'''

RETURN = r'''
time:
  description: When the sample was taken, in seconds since the epoch (the target's clock).
  returned: always
  type: float
netns_inode:
  description: The inode of the network namespace read (to tell that two samples come from the same one).
  returned: always
  type: int
counters:
  description: The namespace's counters since it was created.
  returned: always
  type: dict
  contains:
    tcp_keepalive:
      description: C(TcpExt TCPKeepAlive), keepalive probes sent.
      type: int
    tcp_abort_on_timeout:
      description: C(TcpExt TCPAbortOnTimeout), connections given up after keepalive probes, retransmissions or the
        user timeout.
      type: int
    tcp_timeouts:
      description: C(TcpExt TCPTimeouts), retransmission timeouts.
      type: int
    tcp_loss_probes:
      description: C(TcpExt TCPLossProbes), tail loss probes (null where the kernel lacks it).
      type: int
    tcp_retrans_segs:
      description: C(Tcp RetransSegs) of C(/proc/net/snmp), segments sent again (null where it cannot be read).
      type: int
  sample: {tcp_keepalive: 5, tcp_abort_on_timeout: 1, tcp_timeouts: 0, tcp_loss_probes: 0, tcp_retrans_segs: 0}
source:
  description: Where the sockets were read - V(inet_diag), or V(proc) (C(/proc/net/tcp)) when inet_diag failed.
  returned: always
  type: str
source_error:
  description: Why inet_diag could not be used, or null.
  returned: always
  type: str
socket:
  description:
    - The socket whose local port is O(port), or null (no O(port), or the connection has gone).
    - C(timer) is V(keepalive), V(on) (retransmission), V(persist), V(timewait) or V(off); C(expires_s) when it fires;
      C(timer_count) the unanswered probes of a keepalive timer (the retransmissions of another);
      C(probes) and C(backoff) are tcp_info's C(tcpi_probes) and C(tcpi_backoff) (null from C(/proc/net/tcp)).
  returned: always
  type: dict
  sample: {local: 198.19.61.2:22345, remote: 198.19.61.3:12345, state: ESTABLISHED, timer: keepalive,
           expires_s: 0.98, timer_count: 2, probes: 2, backoff: 0}
ours:
  description: Every socket of the connection in the namespace (both ends on loopback), as in RV(socket).
  returned: always
  type: list
  elements: dict
others:
  description: Up to 20 other connections that could send keepalive probes or time out, as in RV(socket).
  returned: always
  type: list
  elements: dict
others_count:
  description: How many other connections could send keepalive probes or time out.
  returned: always
  type: int
sockets_count:
  description: The TCP sockets of the namespace, in every state.
  returned: always
  type: int
addresses:
  description: The namespace's own addresses (from C(/proc/net/fib_trie) and C(/proc/net/if_inet6); a local network
    such as C(127.0.0.0/8) as a prefix), to tell the probes it sent from those it received.
  returned: always
  type: list
  elements: str
  version_added: 0.2.0
watch:
  description:
    - With O(watch) - C(path); with V(started) C(pid) and C(filter); with V(stopped) C(seen) - C(probes), C(rsts) and
      C(unsure) (times, seconds since the epoch, of the keepalive probes, RSTs and zero-length segments the namespace
      sent that could not be told probes or not), C(retransmissions), C(connections), C(packets), C(truncated) - or
      C(error) (why there is none); with V(absent) C(removed); with V(purged) C(purged), the pcap paths of the watches
      stopped and removed.
  returned: when O(watch) is given
  type: dict
  version_added: 0.2.0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_evidence import KernelEvidenceError, check_ports
from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_watch import WatchError, act
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NetnsError, resolve, run_in


def main():
    module = AnsibleModule(
        argument_spec=dict(
            port=dict(type='int'),
            peer_port=dict(type='int'),
            netns=dict(type='str'),
            netns_dir=dict(type='path', default='/run/netns'),
            watch=dict(type='str', choices=['started', 'stopped', 'absent', 'purged']),
            watch_path=dict(type='path'),
            watch_seconds=dict(type='int', default=3600),
        ),
        required_by={'watch': 'watch_path'},
        supports_check_mode=True,
    )
    p = module.params
    args = (p['port'], p['peer_port'], p['watch'], p['watch_path'], p['watch_seconds'], module.check_mode)
    try:
        check_ports(p['port'], p['peer_port'])
        if p['netns']:
            taken, watched, changed = run_in(resolve(p['netns'], p['netns_dir']).path, act, args)
        else:
            taken, watched, changed = act(*args)
    except (KernelEvidenceError, NetnsError, WatchError) as exc:
        module.fail_json(msg=str(exc))
    if watched is not None:
        taken['watch'] = watched
    module.exit_json(changed=changed, **taken)


if __name__ == '__main__':
    main()
