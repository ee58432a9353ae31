#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: sysctl
short_description: Set the three TCP keepalive sysctls, with a journal that makes every change reversible
version_added: 0.1.0
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
  - The journal entry also records the namespace's cookie (C(SO_NETNS_COOKIE), Linux 5.14 and later), which the
    kernel never gives another namespace, while it soon gives a deleted namespace's inode to a new one. An entry
    whose inode now belongs to a namespace with another cookie is dropped and never applied to that namespace
    (RV(stale)). On older kernels the cookie is V(null) and the inode alone identifies the namespace, as in
    journals written before this.
  - O(state=restored) puts the originals back (from O(saved) when given, else from the journal),
    verifies them, and clears the journal.
  - O(netns=all) with O(state=restored) restores every network namespace the journal on the host lists
    (the one the module runs in, and those changed from it with O(netns)), skipping and reporting those
    that are gone - see O(netns). Entries journalled by a run from another network namespace (lab hosts that
    are namespaces of one machine share its journal) are left alone, with status V(other) - each lab host's
    own rollback restores its own.
  - O(retries2) sets C(net.ipv4.tcp_retries2) the same way - journalled with the keepalive trio, restored with it (also
    by O(netns=all) and the rollback playbook). It decides when a connection with unacknowledged data gives up, where
    keepalive does not help (docs/in_flight.md). Results and the journal carry it only once it was asked for.
  - All values are validated before any is written; if a write fails part-way the keys already
    written are put back before the module fails.
  - Values are read and written through C(/proc/sys); in another namespace by a child process that enters
    it with setns(2) and checks the namespace's inode before it reads or writes.
  - With O(lease), one experiment at a time owns a namespace's values - see O(lease). While another
    run's lease is live, O(state=present) fails with RV(lease_busy) and changes nothing, with or
    without O(lease).
  - Every path option is checked before anything changes; a directory option naming a file, a
    O(persist_path) that is a directory, FIFO or link, and a relative path are refused with a message
    that names the fix.
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
      - An integer, or the text of one (k=v arguments and C(-e) variables arrive as text; blanks around
        the digits are ignored). Booleans, floats (also V(2.5) as text), words and empty text are refused,
        naming the option.
    type: raw
  intvl:
    description:
      - C(net.ipv4.tcp_keepalive_intvl), seconds between unanswered probes, 1 to 32767.
      - An integer or the text of one, as for O(time).
    type: raw
  probes:
    description:
      - C(net.ipv4.tcp_keepalive_probes), unanswered probes before the connection is dropped, 1 to 127.
      - An integer or the text of one, as for O(time).
    type: raw
  retries2:
    description:
      - C(net.ipv4.tcp_retries2), 0 to 255 (the kernel's bounds) - how long the kernel retransmits unacknowledged data
        before it gives up on an established connection, as the time such retransmissions would take from 200 ms,
        doubling, capped at 120 s (the default 15 is about 924.6 s).
      - An integer or the text of one, as for O(time).
    type: raw
    version_added: 0.2.0
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
      - V(all), only with O(state=restored) and without O(saved), restores every namespace the journal lists.
        A namespace whose inode no longer exists, or that had a name which is gone or now points at another
        inode, is reported as gone in RV(namespaces) and not touched (a deleted namespace's inode is reused by
        the kernel). A namespace really named V(all) is named by a pid instead.
    type: str
  netns_dir:
    description: Directory of named network namespaces.
    type: path
    default: /run/netns
  persist:
    description:
      - Also write the values to a sysctl.d drop-in (O(persist_path)) atomically, and remember the
        file's previous content (or absence) so that O(state=restored) puts the file back too.
      - Only for the network namespace that sysctl.d configures at boot, the one of PID 1 (when PID 1
        hides its namespaces, that of the kernel's threads). Anywhere else - O(netns), or a lab host or
        container reached over its own connection - it is refused before anything changes, with
        RV(persist_refused), because whoever creates such a namespace sets its values at start (the
        container runtime's sysctls option, the lab role); set them without O(persist).
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
  lease:
    description:
      - The holder of the namespace's lease, for example an experiment's run id (printable, no blanks,
        at most 200 characters). The lease is recorded with the journal entry (same lock, same atomic
        write).
      - With O(state=present), takes the lease when it is free, expired or already this holder's
        (renewing it), then sets the values. When another holder's lease is live the task fails with
        RV(lease_busy) and changes nothing.
      - With O(state=restored), restores and releases the lease, unless another holder's lease is live;
        then nothing changes and the task returns ok (not failed) with RV(lease_busy), so one run's
        cleanup never undoes another run's values.
      - Without O(lease), O(state=restored) (the rollback playbook, an operator) restores and clears any
        lease, saying in RV(msg) whose; O(state=present) fails with RV(lease_busy) while another run's lease is live.
    type: str
  lease_owner:
    description:
      - Who takes the lease, shown to whoever finds it busy, for example V(controller host pid). Needs O(lease).
    type: str
  lease_ttl:
    description:
      - Seconds until the lease expires if it is never released (a dead controller), 1 to 604800.
        Renewing the lease (O(state=present) again by the same holder) starts it again.
    type: int
    default: 3600
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

- name: Put back every journalled namespace of the host, as the rollback playbook does
  tcplab.keepalive.sysctl:
    netns: all
    state: restored
  register: rollback

- name: Show the namespaces that were gone
  ansible.builtin.debug:
    msg: "{{ rollback.namespaces | selectattr('status', 'eq', 'gone') | map(attribute='msg') | list }}"

- name: Give up on unacknowledged data after about 3 s instead of 15 minutes (journalled with the keepalive trio)
  tcplab.keepalive.sysctl:
    netns: tcplab-client
    retries2: 3

- name: Take the client namespace for one experiment run
  tcplab.keepalive.sysctl:
    netns: tcplab-client
    time: 2
    intvl: 1
    probes: 3
    lease: "{{ run_id }}"
    lease_owner: "{{ lookup('ansible.builtin.pipe', 'hostname') }} pid 4242"
    lease_ttl: 1800
  register: leased
  # wait while another run holds the namespace
  retries: 60
  delay: 10
  until: not (leased.lease_busy | default(false))

- name: This run's cleanup (leaves another run's values alone)
  tcplab.keepalive.sysctl:
    netns: tcplab-client
    state: restored
    lease: "{{ run_id }}"
'''

RETURN = r'''
previous:
  description: The values before this task.
  returned: always but with O(netns=all)
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
    retries2:
      description: net.ipv4.tcp_retries2, only when O(retries2) was given
      type: int
      sample: 15
current:
  description: The values after this task (in check mode, the values it would set).
  returned: always but with O(netns=all)
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
    retries2:
      description: net.ipv4.tcp_retries2, only when O(retries2) was given
      type: int
      sample: 3
changed_keys:
  description: The sysctls changed (or, in check mode, that would change).
  returned: always but with O(netns=all)
  type: list
  elements: str
  sample: [net.ipv4.tcp_keepalive_time, net.ipv4.tcp_keepalive_intvl]
netns:
  description: The network namespace acted on.
  returned: always but with O(netns=all)
  type: dict
  contains:
    inode:
      description: Inode of the namespace (the journal key).
      type: int
      sample: 4026532249
    cookie:
      description:
        - The namespace's cookie (C(SO_NETNS_COOKIE)), which the kernel never reuses; V(null) on a kernel
          without it (before Linux 5.14), or when it cannot be read.
      type: int
      sample: 4102
    path:
      description: Path of the namespace.
      type: str
      sample: /run/netns/tcplab-client
    label:
      description: V(own), the name, or C(pid N).
      type: str
      sample: tcplab-client
    boot:
      description:
        - Whether this is the network namespace that sysctl.d configures at boot (PID 1's), the only one
          where O(persist) is allowed. V(null) when that namespace cannot be identified.
      type: bool
      sample: false
lease:
  description:
    - The namespace's lease after this task (in check mode, as it would be); V(null) when there is none.
    - When RV(lease_busy), the other run's lease.
  returned: always but with O(netns=all)
  type: dict
  contains:
    holder:
      description: The O(lease) of the run that holds it.
      type: str
      sample: 20240101T120000Z-3f9a
    owner:
      description: Its O(lease_owner), or V(null).
      type: str
      sample: controller host pid
    since:
      description: When the holder took it (UTC).
      type: str
      sample: '2024-01-01T12:00:00Z'
    expires:
      description: When it expires unless renewed (UTC).
      type: str
      sample: '2024-01-01T13:00:00Z'
    expired:
      description: Whether it had expired when the task ran.
      type: bool
      sample: false
lease_busy:
  description:
    - V(true) when another run's live lease stopped this task - O(state=present) then fails,
      O(state=restored) with O(lease) returns ok with nothing changed.
  returned: always but with O(netns=all), and on the failure it causes
  type: bool
  sample: false
lease_cleared:
  description:
    - The lease that this task released, cleared or took over (expired), or V(null).
  returned: always but with O(netns=all)
  type: dict
  sample: {holder: 20240101T120000Z-3f9a, owner: controller host pid, since: '2024-01-01T12:00:00Z',
           expires: '2024-01-01T13:00:00Z', expired: false}
stale:
  description:
    - V(true) when the journal entry for the namespace's inode was saved for another namespace (another cookie)
      that is gone - the kernel gave its inode to this one. The entry was dropped (in check mode, would be);
      nothing was written to this namespace.
  returned: with O(state=restored), when that happened
  type: bool
  sample: true
persist_refused:
  description: V(true) when O(persist) was refused because the namespace is not the one sysctl.d configures at boot.
  returned: on that failure
  type: bool
  sample: true
boot_netns_inode:
  description: Inode of the network namespace that sysctl.d configures at boot (PID 1's).
  returned: when O(persist) was refused for another namespace
  type: int
  sample: 4026531840
msg:
  description: What was done.
  returned: always
  type: str
  sample: set net.ipv4.tcp_keepalive_time=30
namespaces:
  description:
    - With O(netns=all), one entry per journalled namespace, in inode order.
  returned: with O(netns=all), also on the failure of one of them
  type: list
  elements: dict
  contains:
    netns:
      description:
        - The namespace (C(inode), C(cookie), C(path), C(label), C(boot)) as for a single one; C(path) is V(null)
          when gone, and C(cookie) then the journalled one.
      type: dict
    status:
      description:
        - V(restored) (values or journal changed), V(unchanged), V(busy) (another run's live lease, not touched),
          V(gone) (not touched; RV(namespaces[].msg) says why - also when a new namespace got its inode, with another
          cookie; its entry is then dropped), V(other) (journalled from another network
          namespace of this machine, not touched) or V(failed).
      type: str
      sample: gone
    changed:
      description: Whether this namespace was changed.
      type: bool
    msg:
      description: What was done, or why the namespace counts as gone.
      type: str
      sample: 'gone: no network namespace with inode 4026532999 exists any more; its journal entry is dropped'
    previous:
      description: The values before (not for V(gone) and V(failed)).
      type: dict
    current:
      description: The values after (not for V(gone) and V(failed)).
      type: dict
    changed_keys:
      description: The sysctls changed (not for V(gone) and V(failed)).
      type: list
      elements: str
    lease_cleared:
      description: The lease released or cleared (not for V(gone) and V(failed)).
      type: dict
counts:
  description: With O(netns=all), how many namespaces got each status.
  returned: with O(netns=all)
  type: dict
  sample: {restored: 1, unchanged: 0, busy: 0, gone: 1, failed: 0, other: 0}
ansible_facts:
  description: Facts for later tasks.
  returned: always but with O(netns=all)
  type: dict
  contains:
    tcplab_keepalive_saved:
      description: The original values of the namespace (the first ones the collection saw), for O(saved).
      type: dict
      contains:
        netns_inode:
          description: Namespace inode.
          type: int
        netns_cookie:
          description: Namespace cookie, V(null) on a kernel without cookies (the inode alone identifies it).
          type: int
        netns:
          description: Namespace label.
          type: str
        netns_name:
          description: Its name under O(netns_dir) when it had one, else V(null) (how O(netns=all) proves it is still there).
          type: str
        originals:
          description: The original values, keys C(time), C(intvl), C(probes), and C(retries2) once it was set.
          type: dict
        saved_at:
          description: When the originals were journalled (UTC).
          type: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NETNS_DIR
from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl import SysctlError
from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl_task import run


def main():
    module = AnsibleModule(
        argument_spec=dict(
            time=dict(type='raw'),
            intvl=dict(type='raw'),
            probes=dict(type='raw'),
            retries2=dict(type='raw'),
            state=dict(type='str', choices=['present', 'restored'], default='present'),
            saved=dict(type='dict'),
            netns=dict(type='str'),
            netns_dir=dict(type='path', default=NETNS_DIR),
            persist=dict(type='bool', default=False),
            persist_path=dict(type='path', default='/etc/sysctl.d/90-tcplab-keepalive.conf'),
            journal_dir=dict(type='path', default='/run/tcplab-keepalive/sysctl'),
            persist_journal_dir=dict(type='path', default='/var/lib/tcplab-keepalive/sysctl'),
            lease=dict(type='str'),
            lease_owner=dict(type='str'),
            lease_ttl=dict(type='int', default=3600),
        ),
        supports_check_mode=True,
    )
    try:
        result = run(module.params, module.check_mode)
    except SysctlError as exc:
        module.fail_json(msg=str(exc), **exc.extra)
    except OSError as exc:
        module.fail_json(msg='%s: %s' % (exc.strerror or exc, exc.filename) if exc.filename else str(exc))
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
