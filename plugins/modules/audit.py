#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: audit
short_description: Keepalive settings, sockets and policy findings of one host, per network namespace
version_added: 0.1.0
description:
  - Reads the three keepalive sysctls (C(net.ipv4.tcp_keepalive_time), C(_intvl), C(_probes)) of the
    host's network namespace straight from C(/proc/sys), and with O(namespaces=all) those of every
    other network namespace on the host (containers keep 7200/75/9 whatever the host says).
  - Reads the persisted values with the file that sets each one, following systemd-sysctl precedence,
    and reports drift - runtime values that a reboot would change. Only in the boot network namespace
    (the one PID 1 runs in, which systemd-sysctl configures from sysctl.d at boot) - every namespace
    says whether it is that one (C(boot_netns) in RV(namespaces)). A lab host or a container is another
    namespace - its values come from the lab or the container runtime, not from sysctl.d, so no drift
    is reported there (a note says so).
  - Derives the dead-peer detection time C(time + intvl x probes) per namespace.
  - Counts established TCP sockets with a keepalive timer (C(/proc/net/tcp) and C(tcp6), timer type 2)
    and names the processes holding most of them.
  - Reads the keepalive settings of every established connection exactly, from the socket itself - C(SO_KEEPALIVE),
    C(TCP_KEEPIDLE), C(TCP_KEEPINTVL), C(TCP_KEEPCNT), C(TCP_USER_TIMEOUT) - with the process holding it and
    the dead-peer detection time that follows (RV(namespaces[].sockets.connections)). The audit duplicates the
    holder's descriptor with C(pidfd_open) and C(pidfd_getfd) (Linux 5.6 or later, root), reads it with
    C(getsockopt) and closes the duplicate; the holder is not stopped, signalled or changed. Bounded by
    O(max_connections) and O(max_connections_per_process).
  - Where C(pidfd_getfd) is not available (an older kernel, no permission), per-socket overrides are inferred as
    before - sockets whose remaining keepalive timer is longer than the namespace's C(tcp_keepalive_time) - and
    C(notes) says so.
  - Evaluates a O(policy) and returns findings with ids and severities, and C(compliant).
  - Read-only. No C(gather_facts) needed; one call per host. Another namespace is read by a short-lived
    child process that enters it with C(setns(2)); the module itself never leaves its own namespace and
    runs no external command.
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
  - tcplab.keepalive.attributes.info_module
attributes:
  platform:
    platforms: linux
options:
  policy:
    description:
      - What a compliant namespace looks like. Every key is optional; an empty policy only reports
        drift and per-socket overrides.
      - An explicit key overrides the same key of the O(policy.preset).
      - Refused when no values can meet it (the minimums alone take longer than O(policy.max_detection_seconds)),
        or when a C(min) is above its C(max).
    type: dict
    default: {}
    suboptions:
      preset:
        description:
          - V(azure-lb) - detection time below Azure Load Balancer's default idle timeout of 240 s
            (C(max_detection_seconds=239)).
          - V(azure-lb-reset) - the same 240 s with Azure's TCP reset on idle turned on (C(max_detection_seconds=239)).
          - V(aws-nlb) - below AWS Network Load Balancer's idle timeout of 350 s (C(max_detection_seconds=349)).
          - V(gcp-vpc) - below the 600 s (10 minutes) of Google Cloud VPC firewall connection tracking
            (C(max_detection_seconds=599)).
          - V(kernel-default) - exactly the kernel defaults 7200/75/9 (each key's min and max).
        type: str
        choices: [azure-lb, azure-lb-reset, aws-nlb, gcp-vpc, kernel-default]
      max_detection_seconds:
        description:
          - Largest allowed C(time + intvl x probes), in seconds. Also applies to every connection's own settings
            (C(KA009)).
        type: int
      accepted_without_keepalive:
        description:
          - Severity of C(KA010) - a service whose accepted connections have C(SO_KEEPALIVE) off, so it never
            notices a dead client. V(warning) makes the namespace non-compliant, V(info) only reports it.
        type: str
        choices: [warning, info]
        default: info
      time:
        description: C(min) and/or C(max) of C(net.ipv4.tcp_keepalive_time) (1..32767).
        type: dict
      intvl:
        description: C(min) and/or C(max) of C(net.ipv4.tcp_keepalive_intvl) (1..32767).
        type: dict
      probes:
        description: C(min) and/or C(max) of C(net.ipv4.tcp_keepalive_probes) (1..127).
        type: dict
      target:
        description:
          - The values remediation should set (keys C(time), C(intvl), C(probes)); must satisfy the
            policy. Without it the module suggests the compliant values closest to the observed ones.
        type: dict
  namespaces:
    description:
      - V(host) reads the namespace the module runs in. V(all) also reads every other network namespace
        on the host - named ones under O(netns_dir) and those of running processes, de-duplicated by
        inode, labelled by name, or by process name and container id (from C(/proc/PID/cgroup)).
    type: str
    choices: [host, all]
    default: host
  namespace_include:
    description:
      - With O(namespaces=all), only the other namespaces whose label, name, process name or container id
        matches one of these shell patterns (at least one; V(*) for all). The host namespace is always read.
    type: list
    elements: str
    default: ['*']
  root:
    description:
      - File-system root under which the persisted sysctl files are read (for tests and chroots). It must
        exist; a root other than V(/) must hold an C(etc) directory (else no file could ever be read).
    type: path
    default: /
  netns_dir:
    description: Directory of named network namespaces.
    type: path
    default: /run/netns
  sockets:
    description: Scan the keepalive sockets (turn off to skip C(/proc/net/tcp) and the owner lookup).
    type: bool
    default: true
  top_processes:
    description: How many of the processes holding most keepalive sockets to return per namespace (0..10000).
    type: int
    default: 10
  max_examples:
    description: How many override sockets (longest timers first) to return per namespace (0..10000).
    type: int
    default: 20
  max_fd_scan:
    description:
      - The owner lookup reads at most this many C(/proc/PID/fd) entries, then stops and says so in
        C(notes) (C(owners_complete=false)). Bounds the cost on hosts with very many sockets (1..1000000000).
    type: int
    default: 100000
  max_namespaces:
    description: Read at most this many other namespaces (the rest are counted in C(notes)) (1..100000).
    type: int
    default: 256
  timeout:
    description: Seconds to wait for the reading of one other namespace (above 0, at most 3600).
    type: float
    default: 10
  max_connections:
    description:
      - Read the own keepalive settings of at most this many connections in all (every namespace together); the
        rest are counted in C(notes) and judged by the inference from timers (0..1000000; V(0) reads none).
    type: int
    default: 1000
  max_connections_per_process:
    description:
      - Read at most this many connections of one process (1..1000000), so that one busy server does not use up
        O(max_connections); the rest are counted in C(notes).
      - Which connections are read when a cap is reached is fair and deterministic - one connection per process per
        round, the lowest pid first, within a process by local then remote address - and C(notes) names the
        processes whose connections were skipped and how many.
    type: int
    default: 100
notes:
  - Runtime values come from C(/proc/sys), which shows the reading process's network namespace.
  - Persisted files, highest precedence first - C(/etc/sysctl.d), C(/run/sysctl.d), C(/usr/local/lib/sysctl.d),
    C(/usr/lib/sysctl.d), C(/lib/sysctl.d) (C(*.conf)). Files are applied in file-name order across the
    directories; a name in an earlier directory masks the same name later (a link to C(/dev/null) masks
    without setting anything); a later file wins per key; C(/etc/sysctl.conf) comes last. A key no file
    sets boots with the kernel default.
  - A socket with a keepalive timer but data in flight shows the retransmit timer instead and is not counted in
    C(keepalive); the exact reading does not depend on the timer.
  - Without C(pidfd_getfd), per-socket options shorter than the sysctl cannot be seen from C(/proc/net/tcp); longer
    ones can.
  - With C(TCP_USER_TIMEOUT) set, a connection's detection time is the first keepalive timer run at or after the
    user timeout once a probe went out (C(idle + k x intvl), k at least 1), not C(idle + intvl x cnt).
  - Findings - C(KA001) value below min (error), C(KA002) above max (error), C(KA003) detection time above
    the maximum (error), C(KA004) drift between runtime and persisted value (warning, host namespace when it
    is the boot namespace),
    C(KA005) keepalive connections with their own idle, interval or count (warning; exact when read with
    C(pidfd_getfd), else inferred from timers longer than C(tcp_keepalive_time)), C(KA006) namespace unreadable
    (warning), C(KA007) policy cannot be met (error), C(KA008) unparsable line in a sysctl file (info),
    C(KA009) a process's connections take longer to detect a dead peer than O(policy.max_detection_seconds)
    because of their own settings (error, one per process), C(KA010) a service whose accepted connections have
    keepalive off (O(policy.accepted_without_keepalive), one per process name and port).
    A namespace is compliant when it has no error or warning finding.
  - Needs root to read other namespaces, other users' file descriptors, and other processes' sockets.
seealso:
  - module: tcplab.keepalive.sysctl
  - name: Azure Load Balancer TCP idle timeout
    description: The 4 minute default the V(azure-lb) preset enforces.
    link: https://learn.microsoft.com/en-us/azure/load-balancer/load-balancer-tcp-idle-timeout
'''

EXAMPLES = r'''
- name: Audit the host against the Azure load balancer idle timeout
  tcplab.keepalive.audit:
    policy:
      preset: azure-lb
  register: keepalive_audit

- name: Every namespace on the host, containers included, with explicit ranges
  tcplab.keepalive.audit:
    namespaces: all
    policy:
      max_detection_seconds: 300
      time: {min: 30, max: 200}
      probes: {max: 9}

- name: Services that never notice a dead client are a warning, not only information
  tcplab.keepalive.audit:
    policy:
      preset: aws-nlb
      accepted_without_keepalive: warning
    max_connections_per_process: 20
  register: keepalive_audit_strict

- name: Show the connections whose own settings take longer than the load balancer's idle timeout
  ansible.builtin.debug:
    msg: "{{ keepalive_audit_strict.namespaces[0].sockets.connections | rejectattr('detection_seconds', 'none')
             | selectattr('detection_seconds', 'gt', 349) | list }}"

- name: Fail when the host is not compliant
  ansible.builtin.assert:
    that: keepalive_audit.compliant
    fail_msg: "{{ keepalive_audit.findings | map(attribute='message') | join('; ') }}"
'''

RETURN = r'''
compliant:
  description: True when no namespace has an error or warning finding.
  returned: success
  type: bool
  sample: false
findings:
  description: Every finding of every namespace.
  returned: success
  type: list
  elements: dict
  contains:
    id:
      description: Finding id, C(KA001) to C(KA010) (see the notes).
      type: str
      sample: KA003
    severity:
      description: V(error), V(warning) or V(info).
      type: str
      sample: error
    namespace:
      description: Label of the namespace.
      type: str
      sample: host
    key:
      description: The sysctl, C(detection_seconds), C(sockets), C(connections), or null.
      type: str
      sample: detection_seconds
    observed:
      description: The value found.
      type: raw
      sample: 7875
    expected:
      description: What the policy (or the persisted file) wants.
      type: raw
      sample: "<= 239"
    message:
      description: What is wrong, in words.
      type: str
      sample: dead-peer detection takes 7875 s (time 7200 + intvl 75 x probes 9), above the policy maximum 239 s
namespaces:
  description: One entry per network namespace read, the host's first.
  returned: success
  type: list
  elements: dict
  contains:
    label:
      description: V(host), the namespace name, C(comm (pid N)) or C(container ID12 (comm)).
      type: str
      sample: host
    kind:
      description: V(host), V(named) or V(process).
      type: str
    boot_netns:
      description:
        - Whether this is the boot network namespace - the one PID 1 runs in, which systemd-sysctl configures
          from sysctl.d at boot (inode equal to that of C(/proc/1/ns/net); when PID 1 hides it, that of the
          kernel's thread daemon, PID 2, which stays in the initial namespace). Only there can values be
          persisted (M(tcplab.keepalive.sysctl) refuses C(persist) elsewhere).
        - Null when that namespace cannot be identified (not root); then drift is checked as if this were it,
          and a note says so.
      type: bool
    inode:
      description: Namespace inode.
      type: int
    name:
      description: Name under O(netns_dir), or null.
      type: str
    pid:
      description: A process in the namespace (for namespaces only processes hold), or null.
      type: int
    comm:
      description: That process's name.
      type: str
    container_id:
      description: Container id from the process's cgroup, or null.
      type: str
    values:
      description: Runtime values, keys C(time), C(intvl), C(probes) (absent when unreadable).
      type: dict
    detection_seconds:
      description: C(time + intvl x probes).
      type: int
      sample: 7875
    sockets:
      description: Keepalive sockets of the namespace.
      type: dict
      contains:
        established:
          description: Established TCP sockets.
          type: int
        keepalive:
          description: Established sockets with a keepalive timer running.
          type: int
        overrides:
          description:
            - Keepalive connections with their own idle, interval or count (C(KA005)) - C(overrides_exact) plus
              C(overrides_inferred).
          type: int
        overrides_exact:
          description: Connections read exactly whose idle, interval or count differ from the sysctls.
          type: int
        overrides_inferred:
          description:
            - Connections not read exactly whose keepalive timer is longer than C(tcp_keepalive_time) (all of them
              when C(exact) is false).
          type: int
        max_timer_seconds:
          description: Longest remaining keepalive timer.
          type: float
        override_examples:
          description:
            - Up to O(max_examples) sockets whose keepalive timer is longer than C(tcp_keepalive_time), longest first
              (C(local), C(remote), C(timer_seconds), C(inode)).
          type: list
          elements: dict
        exact:
          description: Whether the connections were read with C(pidfd_getfd) (false - the inference only, see C(notes)).
          type: bool
        connections:
          description:
            - The established connections read exactly (at most O(max_connections) in all, O(max_connections_per_process)
              per process).
          type: list
          elements: dict
          contains:
            pid:
              description: The process holding the socket.
              type: int
            comm:
              description: Its name.
              type: str
            fd:
              description: The descriptor number in that process.
              type: int
            inode:
              description: Socket inode.
              type: int
            local:
              description: Local address and port.
              type: str
              sample: "198.19.190.1:6379"
            remote:
              description: Remote address and port.
              type: str
            accepted:
              description: Whether the local address is one a listening socket of the namespace accepts on.
              type: bool
            keepalive:
              description: C(SO_KEEPALIVE).
              type: bool
            idle:
              description: C(TCP_KEEPIDLE) in seconds (the sysctl's value unless the socket sets its own).
              type: int
            intvl:
              description: C(TCP_KEEPINTVL) in seconds.
              type: int
            cnt:
              description: C(TCP_KEEPCNT).
              type: int
            user_timeout_ms:
              description: C(TCP_USER_TIMEOUT) in milliseconds, 0 when unset.
              type: int
            override:
              description: Keepalive on, with idle, interval or count other than the sysctls.
              type: bool
            detection_seconds:
              description: Seconds until the kernel gives up on a silent peer; null when keepalive is off.
              type: int
        processes:
          description:
            - Up to O(top_processes) processes holding most connections read (C(pid), C(comm), C(connections),
              C(keepalive_off), C(overrides)).
          type: list
          elements: dict
        unread:
          description:
            - Connections not read exactly, by reason - C(no_owner), C(per_process_cap), C(total_cap), C(refused)
              (no permission), C(gone) (closed meanwhile).
          type: dict
        top_processes:
          description: Up to O(top_processes) processes holding most keepalive sockets (C(pid), C(comm), C(sockets)).
          type: list
          elements: dict
        owners_complete:
          description: False when the owner lookup stopped at O(max_fd_scan).
          type: bool
    findings:
      description: The namespace's findings (same fields as RV(findings)).
      type: list
      elements: dict
    compliant:
      description: No error or warning finding.
      type: bool
    remediation:
      description:
        - Compliant values (C(time), C(intvl), C(probes)) to set when a finding can be fixed with the sysctls
          (policy target, else the closest to the observed values); null when nothing to fix or impossible.
      type: dict
    error:
      description: Why the namespace could not be read.
      type: str
      returned: when unreadable
boot_netns_inode:
  description: Inode of the boot network namespace (PID 1's), null when it cannot be identified (not root).
  returned: success
  type: int
persisted:
  description: Persisted values.
  returned: success
  type: dict
  contains:
    root:
      description: The O(root) read.
      type: str
    compared:
      description:
        - Whether the runtime values were compared with these (drift) - false when the module runs in a
          namespace that is not the boot namespace (a lab host, a container).
      type: bool
    values:
      description: Per key (C(time), C(intvl), C(probes)) the C(value) and the C(file) that sets it.
      type: dict
    files:
      description: The files read, in the order applied.
      type: list
      elements: str
drift:
  description: Host keys whose runtime value differs from the value after a reboot.
  returned: success
  type: list
  elements: dict
  contains:
    key:
      description: The sysctl.
      type: str
    runtime:
      description: Runtime value.
      type: int
    persisted:
      description: Value after a reboot (the kernel default when no file sets it).
      type: int
    file:
      description: The file that sets it, or null.
      type: str
policy:
  description: The policy applied, normalised (preset expanded).
  returned: success
  type: dict
summary:
  description: C(namespaces) (count), C(findings) (count per severity), C(detection_seconds_max).
  returned: success
  type: dict
notes:
  description:
    - Limits that applied (capped owner lookup, skipped namespaces, connections not read exactly), why drift was not
      checked, and why connections were not read exactly (then overrides are inferred from timers).
  returned: success
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._audit import AuditError, run_audit
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NETNS_DIR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            policy=dict(type='dict', default={}, options=dict(
                preset=dict(type='str', choices=['azure-lb', 'azure-lb-reset', 'aws-nlb', 'gcp-vpc', 'kernel-default']),
                max_detection_seconds=dict(type='int'),
                accepted_without_keepalive=dict(type='str', choices=['warning', 'info'], default='info'),
                time=dict(type='dict'),
                intvl=dict(type='dict'),
                probes=dict(type='dict'),
                target=dict(type='dict'),
            )),
            namespaces=dict(type='str', choices=['host', 'all'], default='host'),
            namespace_include=dict(type='list', elements='str', default=['*']),
            root=dict(type='path', default='/'),
            netns_dir=dict(type='path', default=NETNS_DIR),
            sockets=dict(type='bool', default=True),
            top_processes=dict(type='int', default=10),
            max_examples=dict(type='int', default=20),
            max_fd_scan=dict(type='int', default=100000),
            max_namespaces=dict(type='int', default=256),
            timeout=dict(type='float', default=10),
            max_connections=dict(type='int', default=1000),
            max_connections_per_process=dict(type='int', default=100),
        ),
        supports_check_mode=True,
    )
    params = dict(module.params)
    params['policy'] = dict((k, v) for k, v in (params['policy'] or {}).items() if v is not None)
    try:
        result = run_audit(params)
    except (AuditError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
