#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: middlebox
short_description: Put a stateful middlebox that forgets idle flows between two lab hosts - journalled, reversible
version_added: 0.2.0
description:
  - With O(role=middlebox) makes the host a router with netfilter connection tracking that forgets a TCP
    flow idle for longer than an idle timeout, as a cloud load balancer or NAT gateway does - forwarding on,
    C(net.netfilter.nf_conntrack_tcp_timeout_established) set to the idle timeout,
    C(net.netfilter.nf_conntrack_tcp_loose=0) (a forgotten flow is not picked up in mid-stream), ICMP
    redirects off (C(send_redirects)) - and inserts tagged rules at the top of C(FORWARD), per direction
    between the two O(ends), that accept the packets of known flows and the SYN of a new one, and drop
    (O(action=drop)) or reject with a TCP reset (O(action=reset)) the packets of a flow it no longer knows.
  - With O(role=end) routes the host's traffic to O(peer) through the middlebox (a host route via O(via),
    tagged with routing protocol number 177) and turns off C(accept_redirects), so that on a flat lab bridge
    the host does not learn the direct path.
  - Every value, route and rule is recorded in a journal (O(journal_dir), under a lock, written atomically)
    before it is changed; the first original of a sysctl wins. O(state=absent) undoes one run (O(tag)),
    O(state=purged) every journalled run of the host's network namespace (of O(tag), when given), also after
    a killed controller. A route is removed only when it is journalled and still carries our protocol number,
    gateway and device; a rule only when it carries the run's C(tcplab-keepalive:<tag>) comment. The sysctls
    are put back when the last run of the namespace goes.
  - The journal keys a namespace by its inode and records its cookie (C(SO_NETNS_COOKIE), Linux 5.14 and later)
    beside it - the kernel soon gives a deleted namespace's inode to a new one, never its cookie. An entry whose
    inode the namespace has, but with another cookie, belongs to a namespace that is gone (with its sysctls,
    routes and rules); it is dropped with a note (RV(stale)) and nothing of it is restored into or removed from
    this namespace. On older kernels the cookie is V(null) and the inode alone identifies the namespace, as in
    journals written before this.
  - One middlebox serves one run at a time; a second tag is refused with the holder's name.
  - Acts in the network namespace the module runs in (with the C(tcplab.keepalive.netns) connection, a lab
    host's namespace). IPv4 only.
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode reads the sysctls, routes and rules and says what would change; it writes no journal.
  diff_mode:
    support: full
  platform:
    platforms: linux
options:
  role:
    description:
      - V(middlebox) for the host in the middle, V(end) for each of the two ends. Required unless
        O(state=purged), which takes no role.
    type: str
    choices: [middlebox, end]
  tag:
    description:
      - The run - 1 to 32 letters, digits, C(-) or C(_); the rules carry the comment C(tcplab-keepalive:<tag>).
        Required unless O(state=purged), where it limits the purge to one run.
    type: str
  state:
    description:
      - V(present) sets the host up, V(absent) undoes the run of O(tag), V(purged) undoes every journalled
        run of the namespace (of O(tag), when given) and takes no other option.
    type: str
    choices: [present, absent, purged]
    default: present
  preset:
    description:
      - The idle timeout and action of a known load balancer or firewall, from the table the audit's presets
        use too - V(azure-lb) (240 s, drop), V(azure-lb-reset) (240 s, reset), V(aws-nlb) (350 s, reset),
        V(gcp-vpc) (600 s, drop). Not together with O(seconds) or O(action). O(role=middlebox) only.
    type: str
  seconds:
    description:
      - The idle timeout in seconds, 1 to 432000 (the kernel's own default, 5 days). O(role=middlebox) only;
        required there unless O(preset) is given.
    type: int
  action:
    description:
      - What the middlebox does with a packet of a flow it has forgotten - V(drop) it silently (the client's
        connection is left half-open and times out) or answer with a TCP reset (V(reset), the client sees
        C(ECONNRESET)). Default V(drop). O(role=middlebox) only.
    type: str
    choices: [drop, reset]
  ends:
    description:
      - The IPv4 addresses of the two ends; the rules match only the traffic between them.
        Required with O(role=middlebox) and O(state=present).
    type: list
    elements: str
  peer:
    description: The other end's IPv4 address (O(role=end), O(state=present)).
    type: str
  via:
    description: The middlebox's IPv4 address (O(role=end), O(state=present)).
    type: str
  wait:
    description: Seconds to wait for the xtables lock (C(iptables -w)), 0 to 3600.
    type: int
    default: 30
  journal_dir:
    description: Where the journal of original values, routes and rules lives (C(journal.json), C(journal.lock)).
    type: path
    default: /run/tcplab-keepalive/middlebox
requirements:
  - iproute2 (C(ip)), iptables with the C(conntrack), C(comment) and C(REJECT) matches and targets
  - a kernel with connection tracking (C(nf_conntrack))
  - root
seealso:
  - module: tcplab.keepalive.drop_rule
  - module: tcplab.keepalive.audit
'''

EXAMPLES = r'''
- name: Make mb forget flows idle for 350 s and answer them with a RST, as an AWS NLB does
  tcplab.keepalive.middlebox:
    role: middlebox
    preset: aws-nlb
    ends: [198.18.0.2, 198.18.0.4]
    tag: run1
  delegate_to: mb

- name: Route each end to the other through mb (198.18.0.3)
  tcplab.keepalive.middlebox:
    role: end
    peer: "{{ item.peer }}"
    via: 198.18.0.3
    tag: run1
  delegate_to: "{{ item.host }}"
  loop:
    - {host: client, peer: 198.18.0.4}
    - {host: server, peer: 198.18.0.2}

- name: CI timings - forget after 6 s, drop silently
  tcplab.keepalive.middlebox:
    role: middlebox
    seconds: 6
    action: drop
    ends: [198.18.0.2, 198.18.0.4]
    tag: run2
  delegate_to: mb

- name: Undo one run
  tcplab.keepalive.middlebox:
    role: middlebox
    tag: run1
    state: absent
  delegate_to: mb

- name: Panic button - every journalled run of the host
  tcplab.keepalive.middlebox:
    state: purged
'''

RETURN = r'''
sysctls:
  description: The sysctls changed (O(state=present)) or put back (V(absent), V(purged)), name to value.
  returned: always
  type: dict
  sample: {net.ipv4.ip_forward: '1', net.netfilter.nf_conntrack_tcp_timeout_established: '6'}
routes:
  description: The host routes added or removed, as C(ip route) arguments.
  returned: always
  type: list
  elements: str
  sample: ['198.18.0.4/32 via 198.18.0.3 dev eth0 proto 177']
rules:
  description: The FORWARD rules inserted or removed, as C(iptables -S) prints them.
  returned: always
  type: list
  elements: str
record:
  description: The journal record of the run (O(state=present)); null otherwise.
  returned: always
  type: dict
undone:
  description: The runs (tags) that O(state=absent) or O(state=purged) undid.
  returned: when something was undone
  type: list
  elements: str
netns_inode:
  description: The inode of the network namespace acted in.
  returned: always
  type: int
netns_cookie:
  description: The cookie of the network namespace acted in, V(null) on a kernel without cookies (Linux < 5.14).
  returned: always
  type: int
stale:
  description:
    - V(true) when the journal entry for the namespace's inode was made in another namespace (another cookie) that
      is gone - the kernel gave its inode to this one. The entry was dropped (in check mode, would be); with
      O(state=absent) or O(state=purged) nothing was restored or removed here, with O(state=present) the run was
      journalled afresh with this namespace's own originals.
  returned: when that happened
  type: bool
  sample: true
msg:
  description: What was done, or in check mode what would be done.
  returned: always
  type: str
  sample: 'set net.ipv4.ip_forward=1, net.netfilter.nf_conntrack_tcp_timeout_established=6; insert 6 FORWARD rules'
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, Runner
from ansible_collections.tcplab.keepalive.plugins.module_utils._iptables import SBIN_DIRS
from ansible_collections.tcplab.keepalive.plugins.module_utils._middlebox import MiddleboxError, execute, validate


def main():
    module = AnsibleModule(
        argument_spec=dict(
            role=dict(type='str', choices=['middlebox', 'end']),
            tag=dict(type='str'),
            state=dict(type='str', choices=['present', 'absent', 'purged'], default='present'),
            preset=dict(type='str'),
            seconds=dict(type='int'),
            action=dict(type='str', choices=['drop', 'reset']),
            ends=dict(type='list', elements='str'),
            peer=dict(type='str'),
            via=dict(type='str'),
            wait=dict(type='int', default=30),
            journal_dir=dict(type='path', default='/run/tcplab-keepalive/middlebox'),
        ),
        supports_check_mode=True,
    )
    try:
        request = validate(module.params)
        result = execute(request, Runner(module), lambda name: module.get_bin_path(name, opt_dirs=list(SBIN_DIRS)),
                         module.check_mode, module.params['journal_dir'])
    except CommandError as exc:
        module.fail_json(**exc.as_result())
    except (MiddleboxError, OSError) as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
