#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: sysctl
short_description: Set the three TCP keepalive sysctls, with a journal that makes every change reversible
version_added: 1.0.0
description:
  - Sets any of C(net.ipv4.tcp_keepalive_time), C(net.ipv4.tcp_keepalive_intvl) and
    C(net.ipv4.tcp_keepalive_probes) in the target's network namespace, or in another namespace
    of the host given by O(netns).
  - These sysctls are per network namespace (Linux 4.5 and later) and govern every socket in it
    that enables SO_KEEPALIVE without per-socket overrides. A new namespace (or container) starts at
    7200/75/9 whatever the host says.
  - Before the first change the original values of all three are written to a journal on the host,
    keyed by the namespace's inode, and returned as the fact C(tcplab_keepalive_saved). Changing the
    same namespace again keeps the B(first) originals.
  - O(state=restored) puts the originals back (from O(saved) when given, else from the journal),
    verifies them, and clears the journal.
  - All values are validated before any is written; if a write fails part-way the keys already
    written are put back before the module fails.
  - Values are read and written through C(/proc/sys); another namespace is entered with
    C(nsenter --net) running C(sysctl) (argument lists, never a shell).
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: linux
options:
  time:
    description:
      - C(net.ipv4.tcp_keepalive_time), seconds of idle time before the first probe, 1 to 32767.
    type: raw
  intvl:
    description:
      - C(net.ipv4.tcp_keepalive_intvl), seconds between unanswered probes, 1 to 32767.
    type: raw
  probes:
    description:
      - C(net.ipv4.tcp_keepalive_probes), unanswered probes before the connection is dropped, 1 to 127.
    type: raw
  state:
    description:
      - V(present) sets the values given. V(restored) puts the original values back.
    type: str
    choices: [present, restored]
    default: present
  saved:
    description:
      - With O(state=restored), the C(tcplab_keepalive_saved) fact of an earlier task. Without it
        the journal on the host is used.
    type: dict
  netns:
    description:
      - Act in another network namespace of the host instead of the target's own - a name under
        O(netns_dir) (as made by C(ip netns add)) or the pid of a process in it (for example a
        container's).
    type: str
  netns_dir:
    description: Directory of named network namespaces.
    type: path
    default: /run/netns
  persist:
    description:
      - Also write the values to a sysctl.d drop-in (O(persist_path)) atomically, and remember the
        file's previous content (or absence) so that O(state=restored) puts the file back too.
      - Only for the host's own namespace - sysctl.d is applied to the root namespace at boot.
    type: bool
    default: false
  persist_path:
    description: The drop-in written with O(persist=true), and put back on restore.
    type: path
    default: /etc/sysctl.d/90-tcplab-keepalive.conf
  journal_dir:
    description:
      - Directory of the journal of original runtime values. Under C(/run) by default, so it vanishes
        at reboot together with the runtime values it describes.
    type: path
    default: /run/tcplab-keepalive/sysctl
  persist_journal_dir:
    description: Directory of the journal of drop-in files, which survives a reboot.
    type: path
    default: /var/lib/tcplab-keepalive/sysctl
notes:
  - Per-socket options (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) override these sysctls; stock
    curl, for one, sets its own idle time and interval (C(--keepalive-time), default 60).
  - A network namespace inode can be reused by the kernel after the namespace is gone; restore
    journals promptly (C(playbooks/rollback.yml) restores every journalled namespace).
seealso:
  - name: Kernel documentation of the ip-sysctl keys
    description: tcp_keepalive_time, tcp_keepalive_probes and tcp_keepalive_intvl.
    link: https://www.kernel.org/doc/html/latest/networking/ip-sysctl.html
'''

EXAMPLES = r'''
- name: Shorten keepalive for the experiment (remembers the originals)
  tcplab.keepalive.sysctl:
    time: 30
    intvl: 3
    probes: 3

- name: Tune a lab namespace from the host
  tcplab.keepalive.sysctl:
    netns: tcplab-client
    time: 2
    intvl: 1
    probes: 3
  register: tuned

- name: Put back the originals from the fact
  tcplab.keepalive.sysctl:
    netns: tcplab-client
    state: restored
    saved: "{{ tuned.ansible_facts.tcplab_keepalive_saved }}"

- name: Put back whatever the journal on the host remembers (a fresh controller can do this)
  tcplab.keepalive.sysctl:
    state: restored
'''

RETURN = r'''
previous:
  description: The values before this task.
  returned: always
  type: dict
  contains:
    time:
      description: net.ipv4.tcp_keepalive_time
      type: int
      sample: 7200
    intvl:
      description: net.ipv4.tcp_keepalive_intvl
      type: int
      sample: 75
    probes:
      description: net.ipv4.tcp_keepalive_probes
      type: int
      sample: 9
current:
  description: The values after this task (in check mode, the values it would set).
  returned: always
  type: dict
  contains:
    time:
      description: net.ipv4.tcp_keepalive_time
      type: int
      sample: 30
    intvl:
      description: net.ipv4.tcp_keepalive_intvl
      type: int
      sample: 3
    probes:
      description: net.ipv4.tcp_keepalive_probes
      type: int
      sample: 3
changed_keys:
  description: The sysctls changed (or, in check mode, that would change).
  returned: always
  type: list
  elements: str
  sample: [net.ipv4.tcp_keepalive_time, net.ipv4.tcp_keepalive_intvl]
netns:
  description: The network namespace acted on.
  returned: always
  type: dict
  contains:
    inode:
      description: Inode of the namespace (the journal key).
      type: int
      sample: 4026532249
    path:
      description: Path of the namespace.
      type: str
      sample: /run/netns/tcplab-client
    label:
      description: V(own), the name, or C(pid N).
      type: str
      sample: tcplab-client
msg:
  description: What was done.
  returned: always
  type: str
  sample: set net.ipv4.tcp_keepalive_time=30
ansible_facts:
  description: Facts for later tasks.
  returned: always
  type: dict
  contains:
    tcplab_keepalive_saved:
      description: The original values of the namespace (the first ones the collection saw), for O(saved).
      type: dict
      contains:
        netns_inode:
          description: Namespace inode.
          type: int
        netns:
          description: Namespace label.
          type: str
        originals:
          description: The original values, keys C(time), C(intvl), C(probes).
          type: dict
        saved_at:
          description: When the originals were journalled (UTC).
          type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, Runner, find_binary
from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl import (
    MSG_NOTHING, MSG_PERSIST_NETNS, Journal, KeepaliveSysctl, NsenterAccess, ProcAccess, SysctlError,
    resolve_netns, validate_values)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            time=dict(type='raw'),
            intvl=dict(type='raw'),
            probes=dict(type='raw'),
            state=dict(type='str', choices=['present', 'restored'], default='present'),
            saved=dict(type='dict'),
            netns=dict(type='str'),
            netns_dir=dict(type='path', default='/run/netns'),
            persist=dict(type='bool', default=False),
            persist_path=dict(type='path', default='/etc/sysctl.d/90-tcplab-keepalive.conf'),
            journal_dir=dict(type='path', default='/run/tcplab-keepalive/sysctl'),
            persist_journal_dir=dict(type='path', default='/var/lib/tcplab-keepalive/sysctl'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        wanted = validate_values(p)
        if p['state'] == 'present' and not wanted:
            raise SysctlError(MSG_NOTHING)
        ns = resolve_netns(p['netns'], p['netns_dir'])
        if p['persist'] and not ns.own:
            raise SysctlError(MSG_PERSIST_NETNS)
        if ns.own:
            access = ProcAccess()
        else:
            access = NsenterAccess(Runner(module), find_binary(module, 'nsenter'), find_binary(module, 'sysctl'), ns.path)
        engine = KeepaliveSysctl(ns, access, Journal(p['journal_dir']), Journal(p['persist_journal_dir']),
                                 check_mode=module.check_mode)
        persist_path = p['persist_path'] if (p['persist'] or p['state'] == 'restored') else None
        if p['state'] == 'present':
            result = engine.present(wanted, persist_path)
        else:
            result = engine.restored(p['saved'], persist_path)
    except CommandError as exc:
        module.fail_json(**exc.as_result())
    except (SysctlError, OSError) as exc:
        module.fail_json(msg=str(exc))
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
