#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: drop_rule
short_description: The iptables DROP rule that silences a peer - tagged, idempotent, lockout-safe, self-expiring
version_added: 0.1.0
description:
  - Adds or removes one iptables (or ip6tables) rule C(-j DROP) for a TCP or UDP port in the C(INPUT)
    or C(OUTPUT) chain of the filter table, as the keepalive experiment does to make a peer silent.
  - Every rule carries the comment C(tcplab-keepalive:<tag>); the module never removes a rule without
    that comment. O(state=purged) removes every rule with the prefix (of one tag, when O(tag) is given)
    from every iptables backend of the namespace, nf_tables and legacy, and cancels their timers.
  - Idempotent through C(iptables -C) with the xtables lock wait (C(-w)), so a busy lock is reported
    as an error and never mistaken for an absent rule.
  - Works with the nf_tables and the legacy iptables backends and reports which one the program uses.
    O(state=present) adds with C(iptables) (the host's default backend) or O(executable).
    O(state=absent) without O(executable), and O(state=purged) always, also look in the other backend
    (C(iptables-nft), C(iptables-legacy)) when it holds tables in the namespace; a namespace without
    legacy tables is not listed with C(iptables-legacy), which would create them.
  - Refuses a rule that would cut the SSH connection Ansible manages the host over (read from
    C(SSH_CONNECTION), also under become) unless O(allow_lockout=true).
  - O(expire_after) arms a dead-man timer, a detached process that removes exactly this rule after
    that many seconds, so a lost controller never leaves a host cut off. O(state=absent) cancels it.
    A timer is stopped (SIGTERM, SIGKILL after 5 s) only when its process matches the pid and start
    time of its record, and the module waits until it has gone.
  - Acts in the network namespace the module runs in (with the C(tcplab.keepalive.netns) connection,
    a lab host's namespace).
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode runs only probes (C(iptables -V), C(-C), C(-S)) and says what would happen
        (C(would insert), C(would remove), C(would re-arm the timer)).
  diff_mode:
    support: full
  platform:
    platforms: linux
options:
  port:
    description:
      - The port, 1 to 65535, an integer or integer text such as V('8080') (as C(k=v) arguments and
        C(-e) variables arrive). Required unless O(state=purged), which does not take it.
    type: raw
  match:
    description: Match the destination (V(dport)) or source (V(sport)) port.
    type: str
    choices: [dport, sport]
    default: dport
  protocol:
    description: The protocol.
    type: str
    choices: [tcp, udp]
    default: tcp
  chain:
    description: The filter chain.
    type: str
    choices: [INPUT, OUTPUT]
    default: INPUT
  source:
    description: Only packets from this address or CIDR (of the O(ip_version) family).
    type: str
  destination:
    description: Only packets to this address or CIDR (of the O(ip_version) family).
    type: str
  in_interface:
    description: Only packets arriving on this interface (O(chain=INPUT) only).
    type: str
  out_interface:
    description: Only packets leaving through this interface (O(chain=OUTPUT) only).
    type: str
  ip_version:
    description:
      - V(4) for iptables, V(6) for ip6tables; V(both) only with O(state=purged).
    type: str
    choices: ['4', '6', 'both']
    default: '4'
  tag:
    description:
      - Names the rule - 1 to 32 letters, digits, C(-) or C(_). The rule's comment is
        C(tcplab-keepalive:<tag>). Required unless O(state=purged), where it limits the purge to one tag.
    type: str
  state:
    description:
      - V(present) adds the rule, V(absent) removes it (all copies, in every backend unless
        O(executable) names one) and cancels its timer, V(purged) removes every rule carrying the
        C(tcplab-keepalive:) comment prefix (of O(tag), when given) in every backend and family of
        O(ip_version) and cancels their timers. V(purged) takes none of the options of one rule
        (O(port), O(source), O(destination), O(in_interface), O(out_interface), O(expire_after)).
    type: str
    choices: [present, absent, purged]
    default: present
  position:
    description: V(insert) puts the rule first in the chain (so it wins over earlier ACCEPTs), V(append) last.
    type: str
    choices: [insert, append]
    default: insert
  wait:
    description: Seconds to wait for the xtables lock (C(iptables -w)), 0 to 3600.
    type: int
    default: 30
  expire_after:
    description:
      - Seconds after which a detached timer removes exactly this rule by itself (1 to 604800, 7 days).
        The timer survives the module's exit; the result returns its handle and deadline.
      - Asking again with the same value keeps the running timer and its deadline (V(changed=false));
        another value re-arms it, that many seconds from now (V(changed=true)). Leaving it out keeps a
        timer armed earlier; to make a timed rule permanent, remove it (O(state=absent)) and add it again.
      - Only with O(state=present).
    type: int
  when_idle:
    description:
      - Insert the rule only once the TCP connection between O(port) (a single port, this host's end) and
        O(when_idle.peer_port) in this host's network namespace has carried no data for O(when_idle.seconds)
        seconds, waiting for that moment in this module run (read from the kernel's tcp_info through inet_diag;
        keepalive probes carry no data, so they do not end the idle time).
      - The experiment role silences the server this way between the client's last answered probe and the next
        one, without a wait of the controller's own (one module run less, the DROP when planned).
      - Nothing is inserted, and the module fails saying why, when the connection ends while it waits, is not
        there, or does not become idle within O(when_idle.timeout) seconds - and when the process that ran it ends
        meanwhile (a killed controller), so that no rule goes in after a rollback has looked for it. Only with
        O(state=present); check mode does not wait.
    type: dict
    version_added: 0.2.0
    suboptions:
      peer_port:
        description: The other end's port (the keepalive client's), 1..65535.
        type: int
        required: true
      seconds:
        description: Seconds without data on the connection before the rule goes in, 0..86400.
        type: float
        required: true
      timeout:
        description: Seconds to wait at most.
        type: float
        default: 60
      established:
        description:
          - The connection was up before this module run (the caller saw it connect). Not there at the first
            look, it has ended - a process closed or reset it - and the module fails at once saying so, instead
            of waiting up to O(when_idle.timeout) for a connection to appear.
        type: bool
        default: false
        version_added: 0.2.0
  allow_lockout:
    description: Allow a rule that would drop the SSH connection Ansible manages the host over.
    type: bool
    default: false
  executable:
    description:
      - The iptables program to use instead of C(iptables) / C(ip6tables), for example
        C(iptables-legacy) or C(iptables-nft) - a name looked up in C(PATH) and the sbin directories, or
        an absolute path. For O(ip_version=6) C(iptables) in its name becomes C(ip6tables).
      - It must answer C(-V) as iptables does (C(iptables v1.8.9 (legacy))); a directory, a file that
        cannot be run or another program is refused with a message before anything runs.
      - With O(state=purged) the other backend is purged as well.
    type: str
requirements:
  - iptables (C(iptables), C(ip6tables)) with the C(comment) match
  - root
seealso:
  - module: ansible.builtin.iptables
'''

EXAMPLES = r'''
- name: Make the experiment's server silent (as iptables -A INPUT -p tcp --dport 12345 -j DROP)
  tcplab.keepalive.drop_rule:
    port: 12345
    destination: 127.0.0.1
    tag: experiment
    expire_after: 600
  register: silenced

- name: Give the experiment more time (re-arms the timer, 900 s from now)
  tcplab.keepalive.drop_rule:
    port: 12345
    destination: 127.0.0.1
    tag: experiment
    expire_after: 900

- name: Remove it again
  tcplab.keepalive.drop_rule:
    port: 12345
    destination: 127.0.0.1
    tag: experiment
    state: absent

- name: Panic button - every rule this collection made, both families
  tcplab.keepalive.drop_rule:
    state: purged
    ip_version: both
'''

RETURN = r'''
rule:
  description: The command that adds the rule, as an argument list.
  returned: unless O(state=purged)
  type: list
  elements: str
  sample: [iptables, -w, '30', -I, INPUT, -p, tcp, -m, tcp, --dport, '12345', -m, comment, --comment, 'tcplab-keepalive:experiment', -j, DROP]
rule_text:
  description: The rule as C(iptables -S) prints it.
  returned: unless O(state=purged)
  type: str
  sample: -A INPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 12345 -m comment --comment "tcplab-keepalive:experiment" -j DROP
backend:
  description: The backend of the iptables program that adds the rule (the first one looked in), V(nf_tables) or V(legacy).
  returned: always
  type: str
  sample: nf_tables
backends:
  description: The backends looked in (O(state=absent) and O(state=purged) look in every backend that holds tables).
  returned: always
  type: list
  elements: str
  sample: [nf_tables, legacy]
expiry:
  description: The dead-man timer of the rule, if one runs.
  returned: unless O(state=purged)
  type: dict
  contains:
    pid:
      description: Pid of the timer process.
      type: int
    start:
      description: Its start time (clock ticks after boot, from C(/proc/PID/stat)); with the pid, the proof that a process is this timer.
      type: int
    ip_version:
      description: The family of the rule, V(4) or V(6).
      type: str
    expires_at:
      description: When the rule is removed (seconds since the epoch).
      type: float
    expire_after:
      description: The O(expire_after) the timer was armed with.
      type: int
    handle:
      description: The timer's state file.
      type: str
    rule:
      description: The command the timer runs to remove the rule.
      type: list
      elements: str
when_idle:
  description:
    - With O(when_idle), how the wait went - C(idle_s) (the connection's idle seconds when the rule went in),
      C(waited_s) and C(inserted_at) (seconds since the epoch on this host, right after the insert).
  returned: when O(when_idle) is given and the rule was inserted
  type: dict
  version_added: 0.2.0
removed:
  description: The rules O(state=purged) removed.
  returned: when O(state=purged)
  type: list
  elements: dict
  contains:
    ip_version:
      description: V(4) or V(6).
      type: str
    chain:
      description: The chain.
      type: str
    backend:
      description: The backend that held it, V(nf_tables) or V(legacy).
      type: str
    program:
      description: The program that removed it.
      type: str
    rule_text:
      description: The rule as C(iptables -S) printed it.
      type: str
timers_cancelled:
  description: How many timers O(state=purged) cancelled.
  returned: when O(state=purged)
  type: int
msg:
  description: What was done, or in check mode what would be done (C(would insert), C(would re-arm the timer) ...).
  returned: always
  type: str
  sample: 'already present, re-armed the timer: removes the rule at 2025-01-01 12:10:00 UTC (600 s from now)'
'''

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, Runner
from ansible_collections.tcplab.keepalive.plugins.module_utils._drop_when_idle import (
    IdleError, await_idle, check as check_idle, parent_gone)
from ansible_collections.tcplab.keepalive.plugins.module_utils._iptables import (
    SBIN_DIRS, RuleError, Timers, find_ssh_connection, manage, open_tables, validate)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            port=dict(type='raw'),
            match=dict(type='str', choices=['dport', 'sport'], default='dport'),
            protocol=dict(type='str', choices=['tcp', 'udp'], default='tcp'),
            chain=dict(type='str', choices=['INPUT', 'OUTPUT'], default='INPUT'),
            source=dict(type='str'),
            destination=dict(type='str'),
            in_interface=dict(type='str'),
            out_interface=dict(type='str'),
            ip_version=dict(type='str', choices=['4', '6', 'both'], default='4'),
            tag=dict(type='str'),
            state=dict(type='str', choices=['present', 'absent', 'purged'], default='present'),
            position=dict(type='str', choices=['insert', 'append'], default='insert'),
            wait=dict(type='int', default=30),
            expire_after=dict(type='int'),
            allow_lockout=dict(type='bool', default=False),
            executable=dict(type='str'),
            when_idle=dict(type='dict', options=dict(
                peer_port=dict(type='int', required=True),
                seconds=dict(type='float', required=True),
                timeout=dict(type='float', default=60),
                established=dict(type='bool', default=False),
            )),
        ),
        supports_check_mode=True,
    )
    try:
        rule = validate(module.params)
        tables = open_tables(rule, module.params['executable'], Runner(module),
                             lambda name: module.get_bin_path(name, opt_dirs=list(SBIN_DIRS)))
        idle = None
        if module.params['when_idle'] and module.params['state'] == 'present':
            idle = check_idle(module.params['when_idle'], module.params['port'])
            if not module.check_mode:
                idle = await_idle(idle, orphaned=parent_gone())
        result = manage(rule, tables, Timers(), module.check_mode, find_ssh_connection())
        if idle is not None and not module.check_mode:
            result['when_idle'] = dict(idle, inserted_at=time.time())
    except CommandError as exc:
        module.fail_json(**exc.as_result())
    except (RuleError, IdleError, OSError) as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
