#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: experiment_host
short_description: One host's start or end of a keepalive experiment in one module run
version_added: 0.2.0
description:
  - Runs the steps one experiment host does one after the other at the start or at the end of a run, in one module
    run, each with the module_utils of its own module - M(tcplab.keepalive.sysctl), M(tcplab.keepalive.kernel_counters)
    (the watch), M(tcplab.keepalive.capture), M(tcplab.keepalive.drop_rule), M(tcplab.keepalive.endpoint) - and that
    module's options and defaults, so every step keeps its guarantees (the sysctl lease and journal, the state records
    checked by pid and start time before a signal, the capture's filter attached before the start returns, the kernel
    sample taken right before the client connects).
  - It exists for speed. On a lab VM under software emulation a module run costs about three seconds (SSH, sudo and a
    Python start that compiles ansible's module_utils again), so the C(tcplab.keepalive.experiment) role starts and
    ends each host with one run instead of one per step.
  - O(state=started) with O(look) first looks at the host as the role's preflight does with M(tcplab.keepalive.host_facts);
    a host that cannot run its part changes nothing and returns RV(refused) with RV(look).
  - O(state=started) runs O(sysctl) (take the lease, shorten the sysctls), O(watch), O(captures), O(endpoints) (in the
    order given), and stops at the first step that fails (but the watch - a watch that cannot start is said in
    RV(watch) and the run goes on); the module then fails naming the step, and what the earlier
    steps started is left for the caller's cleanup (O(state=stopped), or C(playbooks/rollback.yml) after a lost
    controller), as with separate tasks. A lease held by another run changes nothing and fails with RV(lease_busy).
  - O(state=stopped) first gives each endpoint with O(endpoints[].settle) that long to end by itself and takes its
    O(endpoints[].kernel_sample), then runs O(watch) (stopped, with its analysis), O(captures) (stopped, with the keepalive analysis),
    O(drop_rule) (removed), O(endpoints) (stopped, and their state files removed once nothing of them runs, as the
    result carries what they said), O(sysctl) (restored, releasing the lease); every step runs even
    when an earlier one failed, and the module fails with all their messages.
  - Acts in the network namespace the module runs in (with the C(tcplab.keepalive.netns) connection, a lab host's).
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
attributes:
  check_mode:
    support: full
    details:
      - Each step runs in its module's check mode (it says what it would do; nothing is started, changed or stopped).
  diff_mode:
    support: partial
    details:
      - The sysctl and drop_rule steps return their diff in their results.
  platform:
    platforms: linux
options:
  state:
    description: V(started) runs the steps of a host's start, V(stopped) those of its end.
    type: str
    choices: [started, stopped]
    required: true
  look:
    description:
      - With V(started), before any step, look at the host as M(tcplab.keepalive.host_facts) does for the role's
        preflight - its facts, the binaries of O(look.tools), the capture backend when O(look.tools) has V(capture) - and
        judge it. A host that runs the module as another user than root, has a kernel older than O(look.min_kernel) or a
        Python older than O(look.min_python), or lacks a tool is refused - nothing is changed, RV(refused) is true and
        RV(look) says what it lacks - so that the first host a run starts needs no look of its own.
    type: dict
    version_added: 0.2.0
    suboptions:
      tools:
        description:
          - The tools this host's part needs - V(ip), V(iptables) (any of C(iptables), C(iptables-nft),
            C(iptables-legacy)), V(curl), V(nc), V(capture) (tcpdump, or scapy in the Python that runs the modules).
        type: list
        elements: str
        required: true
      min_kernel:
        description: The oldest kernel release that can run the experiment (per-namespace keepalive sysctls).
        type: str
        default: '4.5'
      min_python:
        description: The oldest Python (major.minor) the modules run on.
        type: str
        default: '3.8'
  sysctl:
    description:
      - With V(started), M(tcplab.keepalive.sysctl) with state V(present) - the lease and the values; with V(stopped),
        state V(restored) with O(sysctl.lease) (the values are not given). The journal and defaults are the sysctl
        module's.
    type: dict
    suboptions:
      time:
        description: net.ipv4.tcp_keepalive_time (seconds).
        type: raw
      intvl:
        description: net.ipv4.tcp_keepalive_intvl (seconds).
        type: raw
      probes:
        description: net.ipv4.tcp_keepalive_probes.
        type: raw
      retries2:
        description: net.ipv4.tcp_retries2 (the in-flight experiment), journalled with the others.
        type: raw
      lease:
        description: The lease holder, as the sysctl module's O(tcplab.keepalive.sysctl#module:lease).
        type: str
        required: true
      lease_owner:
        description: Who holds the lease (said to a run that finds it busy).
        type: str
      lease_ttl:
        description: Seconds the lease lasts should nobody release it.
        type: int
        default: 3600
  watch:
    description:
      - M(tcplab.keepalive.kernel_counters)' watch of the namespace's other connections - V(started) or V(stopped)
        with the state, and its sample.
    type: dict
    suboptions:
      port:
        description: The experiment's client port.
        type: int
      peer_port:
        description: The experiment's server port.
        type: int
      path:
        description: The watch's pcap (O(tcplab.keepalive.kernel_counters#module:watch_path)).
        type: path
        required: true
      seconds:
        description: The watch ends by itself after this many seconds.
        type: int
        default: 3600
  captures:
    description:
      - M(tcplab.keepalive.capture) per pcap, started (in the namespace the module runs in) or stopped with the
        keepalive analysis (O(captures[].expect), O(captures[].tolerance)).
    type: list
    elements: dict
    suboptions:
      path:
        description: The pcap.
        type: path
        required: true
      iface:
        description: The interface (V(started)).
        type: str
      filter:
        description: The BPF filter (V(started)).
        type: str
      backend:
        description: V(auto), V(scapy) or V(tcpdump) (V(started)).
        type: str
      max_seconds:
        description: The capture ends by itself after this many seconds (V(started)).
        type: int
      max_packets:
        description: The capture ends after this many packets (V(started)).
        type: int
      max_bytes:
        description: The capture ends at this pcap size (V(started)).
        type: int
      snaplen:
        description: Bytes kept of each packet (V(started)).
        type: int
      state_dir:
        description: Where the capture's state record is kept (the capture module's default when not given).
        type: path
      expect:
        description: The expected keepalive settings the analysis compares with (V(stopped)).
        type: dict
      tolerance:
        description: The tolerance of the comparison (V(stopped)).
        type: dict
      remove:
        description:
          - With V(stopped), remove the pcap, its state record and log after the analysis, as the capture module's
            state V(absent) does - only a pcap its record proves the capture wrote (the caller has fetched it, or
            has it in C(content) with O(captures[].return_content)).
        type: bool
        default: false
      return_content:
        description:
          - With V(stopped), return the pcap itself, base64-encoded, in C(content) of the capture's result (read once
            the capture has stopped), so that the caller needs no fetch of its own - on a lab VM under software
            emulation a fetch costs two module runs. A pcap larger than 8 MiB is not returned (C(content_skipped)
            says why) and is then not removed by O(captures[].remove) either, so the caller can fetch it.
        type: bool
        default: false
        version_added: 0.2.0
  drop_rule:
    description:
      - With V(stopped) only, M(tcplab.keepalive.drop_rule) with state V(absent) - the tagged rule goes and its
        dead-man timer is cancelled.
    type: dict
    suboptions:
      port:
        description: The port of the rule.
        type: raw
        required: true
      destination:
        description: The rule's destination address.
        type: str
      source:
        description: The rule's source address.
        type: str
      chain:
        description: The chain.
        type: str
        choices: [INPUT, OUTPUT]
        default: INPUT
      tag:
        description: The rule's tag.
        type: str
        required: true
  endpoints:
    description:
      - M(tcplab.keepalive.endpoint) per process, started (in the order given) or stopped; the options are the
        endpoint module's.
    type: list
    elements: dict
    suboptions:
      role:
        description: V(server) or V(client).
        type: str
        choices: [server, client]
        required: true
      kind:
        description: V(python), V(nc) (server) or V(curl) (client).
        type: str
        choices: [python, nc, curl]
        default: python
      name:
        description: The endpoint's name.
        type: str
      address:
        description: The server's address.
        type: str
        default: 127.0.0.1
      port:
        description: The server's port.
        type: int
        default: 12345
      local_port:
        description: The client's local port.
        type: int
      keepalive_time:
        description: curl's C(--keepalive-time).
        type: int
      user_timeout_ms:
        description: TCP_USER_TIMEOUT of the python client.
        type: int
      request_timeout:
        description: How long the python client waits for the answer to its request.
        type: float
      timeout:
        description: Seconds the start waits for the server to listen or the client to connect.
        type: float
        default: 10
      state_dir:
        description: Where the endpoints' state records are kept.
        type: path
        default: /run/tcplab-keepalive/endpoint
      settle:
        description:
          - With V(stopped), first wait up to this many seconds for the endpoint to end by itself (the client after the
            kernel gave up on its connection), before the watch and the captures stop; its result then says
            C(settled). 0 (the default) stops it at once.
        type: float
        default: 0
      sample_probes:
        description:
          - With V(stopped), O(endpoints[].settle) and O(endpoints[].kernel_sample), also take a kernel sample during
            the settle each time the socket's count of unanswered keepalive probes grows (C(kernel_samples) in the
            endpoint's result, oldest first), so that the end follows the kernel's timer through the unanswered
            probes to the client's failure in the same module run.
        type: bool
        default: false
        version_added: 0.2.0
      kernel_sample:
        description:
          - The kernel's counters of the namespace and the socket's timer, as M(tcplab.keepalive.kernel_counters)
            returns them, in the endpoint's result as C(kernel) - with V(started) read right before the client
            connects, with V(stopped) after the settle (before anything stops).
        type: dict
        suboptions:
          port:
            description: The client port.
            type: int
            required: true
          peer_port:
            description: The server port.
            type: int
notes:
  - Needs root, as the modules of its steps do.
seealso:
  - module: tcplab.keepalive.sysctl
  - module: tcplab.keepalive.kernel_counters
  - module: tcplab.keepalive.capture
  - module: tcplab.keepalive.drop_rule
  - module: tcplab.keepalive.endpoint
'''

EXAMPLES = r'''
- name: The client host's start - lease, capture, client (one module run)
  tcplab.keepalive.experiment_host:
    state: started
    sysctl: {time: 2, intvl: 1, probes: 3, lease: run-1/abcd, lease_ttl: 600}
    captures:
      - {path: /var/tmp/tcplab-keepalive/captures/run-1-client.pcap, iface: eth0, filter: tcp port 12345, max_seconds: 300}
    endpoints:
      - {role: client, address: 198.18.0.11, port: 12345, local_port: 22345, name: run-1-client,
         kernel_sample: {port: 22345, peer_port: 12345}}
  register: start
  until: not (start.lease_busy | default(false))
  retries: 12
  delay: 5

- name: The server host's end - the DROP rule and the server go
  tcplab.keepalive.experiment_host:
    state: stopped
    drop_rule: {port: 12345, destination: 198.18.0.11, tag: run-1}
    endpoints:
      - {role: server, name: run-1-server}
'''

RETURN = r'''
look:
  description:
    - What O(look) found - C(facts) (under the names M(tcplab.keepalive.host_facts) returns them in its
      C(ansible_facts)), C(capture) (when O(look.tools) has V(capture), the capture module's check-mode answer),
      C(missing) (the tools of O(look.tools) the host lacks) and C(shortfalls) (what keeps it from running its part, of
      C(user), C(kernel), C(python), C(tools); empty when it can).
  returned: when O(look) is given
  type: dict
  sample: {facts: {effective_user_id: 0, kernel: 6.1.0-28-amd64}, missing: [iptables], shortfalls: [tools]}
refused:
  description: O(look) found a shortfall; nothing was changed and no step ran.
  returned: when the look refused the host
  type: bool
sysctl:
  description: The sysctl module's result of the step.
  returned: when O(sysctl) is given
  type: dict
watch:
  description: The kernel_counters module's result of the step (its RV(tcplab.keepalive.kernel_counters#module:watch) in C(watch)).
  returned: when O(watch) is given
  type: dict
captures:
  description:
    - The capture module's result per pcap (with V(stopped), C(analysis); with O(captures[].remove), C(removed), the files
      removed; with O(captures[].return_content), C(content) - the pcap base64-encoded - or C(content_skipped)); a
      failed one has C(failed) and C(msg).
  returned: always
  type: list
  elements: dict
drop_rule:
  description: The drop_rule module's result of the step.
  returned: when O(drop_rule) is given
  type: dict
endpoints:
  description:
    - The endpoint module's result per process (C(outcome); with O(endpoints[].kernel_sample), C(kernel); with
      V(stopped) and O(endpoints[].settle) or O(endpoints[].kernel_sample), C(settled); with
      O(endpoints[].sample_probes), C(kernel_samples)); a failed one has C(failed) and C(msg).
  returned: always
  type: list
  elements: dict
seconds:
  description: The seconds each step took, by step name (C(settle) with V(stopped)) - where a host's start or end spends its time.
  returned: unless a start step failed
  type: dict
  sample: {sysctl: 0.05, watch: 0.4, captures: 0.6, endpoints: 0.9}
lease_busy:
  description: Another run holds the namespace's lease; nothing was changed (V(started)).
  returned: when the lease is busy
  type: bool
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils import _zipimport_once
from ansible_collections.tcplab.keepalive.plugins.module_utils._experiment_host import (
    MSG_STEPS_FAILED, StepError, run)
from ansible_collections.tcplab.keepalive.plugins.module_utils._host_facts import MIN_KERNEL, MIN_PYTHON

SAMPLE = dict(type='dict', options=dict(port=dict(type='int', required=True), peer_port=dict(type='int')))


def main():
    _zipimport_once.install()
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', choices=['started', 'stopped'], required=True),
            look=dict(type='dict', options=dict(
                tools=dict(type='list', elements='str', required=True), min_kernel=dict(type='str', default=MIN_KERNEL),
                min_python=dict(type='str', default=MIN_PYTHON))),
            sysctl=dict(type='dict', options=dict(
                time=dict(type='raw'), intvl=dict(type='raw'), probes=dict(type='raw'), retries2=dict(type='raw'),
                lease=dict(type='str', required=True), lease_owner=dict(type='str'),
                lease_ttl=dict(type='int', default=3600))),
            watch=dict(type='dict', options=dict(
                port=dict(type='int'), peer_port=dict(type='int'), path=dict(type='path', required=True),
                seconds=dict(type='int', default=3600))),
            captures=dict(type='list', elements='dict', options=dict(
                path=dict(type='path', required=True), iface=dict(type='str'), filter=dict(type='str'),
                backend=dict(type='str'), max_seconds=dict(type='int'), max_packets=dict(type='int'),
                max_bytes=dict(type='int'), snaplen=dict(type='int'), state_dir=dict(type='path'),
                expect=dict(type='dict'), tolerance=dict(type='dict'), remove=dict(type='bool', default=False),
                return_content=dict(type='bool', default=False))),
            drop_rule=dict(type='dict', options=dict(
                port=dict(type='raw', required=True), destination=dict(type='str'), source=dict(type='str'),
                chain=dict(type='str', choices=['INPUT', 'OUTPUT'], default='INPUT'), tag=dict(type='str', required=True))),
            endpoints=dict(type='list', elements='dict', options=dict(
                role=dict(type='str', choices=['server', 'client'], required=True),
                kind=dict(type='str', choices=['python', 'nc', 'curl'], default='python'), name=dict(type='str'),
                address=dict(type='str', default='127.0.0.1'), port=dict(type='int', default=12345),
                local_port=dict(type='int'), keepalive_time=dict(type='int'), user_timeout_ms=dict(type='int'),
                request_timeout=dict(type='float'), timeout=dict(type='float', default=10),
                state_dir=dict(type='path', default='/run/tcplab-keepalive/endpoint'), settle=dict(type='float', default=0),
                sample_probes=dict(type='bool', default=False), kernel_sample=SAMPLE)),
        ),
        supports_check_mode=True,
    )
    try:
        result, errors = run(module, module.params)
    except StepError as exc:
        module.fail_json(msg=str(exc), **exc.extra)
    if errors:
        module.fail_json(msg=MSG_STEPS_FAILED % '; '.join(errors), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
