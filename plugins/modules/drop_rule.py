#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: drop_rule
short_description: The iptables DROP rule that silences a peer - tagged, idempotent, lockout-safe, self-expiring
version_added: 1.0.0
description:
  - Adds or removes one iptables (or ip6tables) rule C(-j DROP) for a TCP or UDP port in the C(INPUT)
    or C(OUTPUT) chain of the filter table, as the keepalive experiment does to make a peer silent.
  - Every rule carries the comment C(tcplab-keepalive:<tag>); the module never removes a rule without
    that comment. O(state=purged) removes every rule with the prefix (of one tag, when O(tag) is given).
  - Idempotent through C(iptables -C) with the xtables lock wait (C(-w)), so a busy lock is reported
    as an error and never mistaken for an absent rule.
  - Works with the nf_tables and the legacy iptables backends and reports which one the host's
    C(iptables) uses.
  - Refuses a rule that would cut the SSH connection Ansible manages the host over (read from
    C(SSH_CONNECTION), also under become) unless O(allow_lockout=true).
  - O(expire_after) arms a dead-man timer, a detached process that removes exactly this rule after
    that many seconds, so a lost controller never leaves a host cut off. O(state=absent) cancels it.
  - Acts in the network namespace the module runs in (with the C(tcplab.keepalive.netns) connection,
    a lab host's namespace).
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode runs only probes (C(iptables -V), C(-C), C(-S)).
  diff_mode:
    support: full
  platform:
    platforms: linux
options:
  port:
    description: The port, 1 to 65535. Required unless O(state=purged).
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
      - V(present) adds the rule, V(absent) removes it (all copies) and cancels its timer,
        V(purged) removes every rule carrying the C(tcplab-keepalive:) comment prefix and cancels
        their timers.
    type: str
    choices: [present, absent, purged]
    default: present
  position:
    description: V(insert) puts the rule first in the chain (so it wins over earlier ACCEPTs), V(append) last.
    type: str
    choices: [insert, append]
    default: insert
  wait:
    description: Seconds to wait for the xtables lock (C(iptables -w)).
    type: int
    default: 30
  expire_after:
    description:
      - Seconds after which a detached timer removes exactly this rule by itself (1 to 604800).
        The timer survives the module's exit; the result returns its handle.
    type: int
  allow_lockout:
    description: Allow a rule that would drop the SSH connection Ansible manages the host over.
    type: bool
    default: false
  executable:
    description:
      - The iptables program to use instead of C(iptables) / C(ip6tables), for example
        C(iptables-legacy) or C(iptables-nft).
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
  description: The backend of the iptables program, V(nf_tables) or V(legacy).
  returned: always
  type: str
  sample: nf_tables
expiry:
  description: The dead-man timer of the rule, if one runs.
  returned: unless O(state=purged)
  type: dict
  contains:
    pid:
      description: Pid of the timer process.
      type: int
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
    rule_text:
      description: The rule as C(iptables -S) printed it.
      type: str
timers_cancelled:
  description: How many timers O(state=purged) cancelled.
  returned: when O(state=purged)
  type: int
msg:
  description: What was done.
  returned: always
  type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, Runner, find_binary
from ansible_collections.tcplab.keepalive.plugins.module_utils._iptables import (
    Iptables, RuleError, Timers, binary_name, find_ssh_connection, manage, validate)


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
        ),
        supports_check_mode=True,
    )
    try:
        rule = validate(module.params)
        versions = ['4', '6'] if rule['ip_version'] == 'both' else [rule['ip_version']]
        run = Runner(module)
        tables = {}
        for version in versions:
            binary = module.params['executable'] or binary_name(version)
            if version == '6' and module.params['executable']:
                binary = binary.replace('iptables', 'ip6tables', 1)
            tables[version] = Iptables(run, find_binary(module, binary), rule['wait'])
        result = manage(rule, tables, Timers(), module.check_mode, find_ssh_connection())
    except CommandError as exc:
        module.fail_json(**exc.as_result())
    except (RuleError, OSError) as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
