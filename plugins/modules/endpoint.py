#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: endpoint
short_description: The server and the keepalive client of a keepalive experiment
version_added: 0.1.0
description:
  - Starts and stops the experiment's server and client as detached processes that outlive the
    module, and reports the client's outcome.
  - The V(python) server accepts connections, holds them and never sends; the V(nc) server is
    C(nc -l ADDRESS PORT) as in the walk-through.
  - The V(python) client connects with SO_KEEPALIVE and B(no) per-socket keepalive options, so the
    network namespace's C(net.ipv4.tcp_keepalive_*) sysctls govern it, then waits in C(recv()) until
    the connection ends. The V(curl) client is C(curl --local-port LOCAL http://ADDRESS:PORT/) as in
    the walk-through; curl sets TCP_KEEPIDLE and TCP_KEEPINTVL on its socket itself (60 s unless
    O(keepalive_time) is given), which overrides the sysctls - the result says which value governs.
  - Each endpoint is one unit of two processes, a supervisor and its program (the server or client); the
    kernel ends the program when the supervisor dies, so neither is ever left orphaned. The supervisor
    records how the program ended (exit code or signal).
  - O(state=started) returns once the server listens or the client's connection is ESTABLISHED. A start
    that fails (port in use, an address the host does not have, a missing program, a refused connection)
    stops what it started and leaves no state, log or outcome file behind.
  - O(state=status) and O(state=stopped) return the endpoint's outcome for both roles at once - the client
    still connected, or failed with the errno name (C(ETIMEDOUT) when keepalive gave up), curl's exit code
    (56) and the seconds from connect to failure; an endpoint that V(died) says which process and how
    (C(the server (pid 4242, python\) was killed by SIGKILL\)), or that it exited with a code and the last
    line of its log - distinct from one V(stopped) by this module.
  - Stops only its own processes, each checked by pid, start time, command line and network namespace
    against the endpoint's state record; stopping twice is fine. State records are kept per network
    namespace (lab hosts share one file system), so a name only ever means this namespace's endpoint.
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
  role:
    description: Which end. Required unless O(state=purged).
    type: str
    choices: [server, client]
  kind:
    description:
      - The program - V(python) (default) or V(nc) for the server, V(python) (default) or V(curl) for the client.
    type: str
    choices: [python, nc, curl]
    default: python
  address:
    description: The server's address - where the server listens and the client connects.
    type: str
    default: 127.0.0.1
  port:
    description: The server's port, 1..65535.
    type: int
    default: 12345
  local_port:
    description: The client's local port (C(curl --local-port)), 1..65535.
    type: int
  keepalive_time:
    description:
      - C(curl --keepalive-time) (seconds, 1..32767); O(kind=curl) only. When not set, curl's own 60 s applies
        and the result says so.
    type: int
  user_timeout_ms:
    description:
      - TCP_USER_TIMEOUT on the client's socket, milliseconds (0..2147483647, 0 leaves it off); O(kind=python)
        clients only. With unacknowledged data the kernel then ends the connection that long after its first timeout
        retransmission, instead of after C(net.ipv4.tcp_retries2) (docs/in_flight.md).
    type: int
    version_added: 0.2.0
  request_timeout:
    description:
      - Seconds the python client waits for the answer to its request (sent when its RV(request_file) appears),
        greater than 0 and at most 86400; 10 when not set. The in-flight experiment sets it past the kernel's own end
        of the connection.
    type: float
    version_added: 0.2.0
  state:
    description:
      - V(started), V(stopped) or V(status) of one endpoint; V(purged) stops every endpoint whose state record
        in O(state_dir) says it runs in the target's network namespace, and only while its processes still
        match that record (the rollback's panic button), then removes the files of each endpoint it found
        there once nothing of it runs.
      - V(stopped) keeps the endpoint's files, so that V(status) still tells how it ended; the experiment's end
        (M(tcplab.keepalive.experiment_host)) removes them once it has that report.
    type: str
    choices: [started, stopped, status, purged]
    default: started
  name:
    description:
      - Name of the endpoint (its state files), 1 to 48 letters, digits, C(-) or C(_); default C(<role>-<port>).
      - Names are per network namespace.
    type: str
  state_dir:
    description:
      - Directory of the endpoints' state, outcome, exit and log files, in a subdirectory C(netns-<inode>) per
        network namespace.
    type: path
    default: /run/tcplab-keepalive/endpoint
  timeout:
    description:
      - Seconds O(state=started) waits for the server to listen or the client to connect; more than 0 and at
        most 3600.
    type: float
    default: 10
  kernel_sample:
    description:
      - Also read the kernel's keepalive counters and TCP sockets of the network namespace the module runs in, as
        M(tcplab.keepalive.kernel_counters) does with the same O(kernel_sample.port) and O(kernel_sample.peer_port);
        the sample is RV(kernel). With O(state=started) it is taken before the endpoint starts (the client's
        namespace before it connects), with O(state=status) and O(state=stopped) after the endpoint was looked at.
      - The experiment role takes its kernel samples this way, in a module run it makes anyway (on a lab VM under
        software emulation each module run costs seconds).
    type: dict
    version_added: 0.2.0
    suboptions:
      port:
        description: The connection's local port (the client's), 1..65535; its socket is C(socket) in RV(kernel).
        type: int
        required: true
      peer_port:
        description: The other end's port (the server's), 1..65535.
        type: int
requirements:
  - netcat-openbsd for O(kind=nc), curl for O(kind=curl)
'''

EXAMPLES = r'''
- name: Start the server (nc -l 127.0.0.1 12345)
  tcplab.keepalive.endpoint:
    role: server
    kind: nc

- name: Start a keepalive client governed by the sysctls
  tcplab.keepalive.endpoint:
    role: client
    local_port: 22345

- name: Wait for the client's connection to end - or for the client to die
  tcplab.keepalive.endpoint:
    role: client
    state: status
  register: client
  until: client.outcome.state not in ['starting', 'connected', 'running']
  retries: 60
  delay: 1

- name: Say how the server is doing (running, or which process died and how)
  tcplab.keepalive.endpoint:
    role: server
    state: status
  register: server
  failed_when: server.outcome.state in ['died', 'exited']

- name: Stop both
  tcplab.keepalive.endpoint:
    role: "{{ item }}"
    state: stopped
  loop: [client, server]
'''

RETURN = r'''
kernel:
  description:
    - With O(kernel_sample), the sample - the same keys as M(tcplab.keepalive.kernel_counters) returns (C(time),
      C(netns_inode), C(counters), C(socket), C(ours), C(others), C(others_count), C(sockets_count), C(source)).
  returned: when O(kernel_sample) is given and O(state) is not V(purged)
  type: dict
  version_added: 0.2.0
stopped:
  description: The endpoints O(state=purged) stopped.
  returned: when O(state=purged)
  type: list
  elements: str
name:
  description: Name of the endpoint.
  returned: unless O(state=purged)
  type: str
  sample: client-12345
role:
  description: V(server) or V(client).
  returned: unless O(state=purged)
  type: str
kind:
  description: The program.
  returned: unless O(state=purged)
  type: str
running:
  description: Whether the endpoint's program runs (after this task).
  returned: unless O(state=purged)
  type: bool
pid:
  description: Pid of the endpoint's program (the server or client; its supervisor's while it starts).
  returned: unless O(state=purged)
  type: int
supervisor_pid:
  description: Pid of the endpoint's supervisor.
  returned: unless O(state=purged)
  type: int
log:
  description: The endpoint's log file (the program's output and error messages).
  returned: unless O(state=purged)
  type: str
outcome:
  description: How the endpoint is doing, or how it ended (server and client).
  returned: unless O(state=purged)
  type: dict
  contains:
    state:
      description:
        - V(starting), V(connected) (client) or V(running) while the program runs.
        - V(failed) or V(closed) - the client's connection ended (see RV(outcome.errno), RV(outcome.exit_code)).
        - V(answered) - the python client sent its one request (when RV(request_file) appeared) and got the answer.
        - V(stopped) - ended by O(state=stopped) or O(state=purged) of this module.
        - V(died) - ended by anything else - a signal from outside (RV(outcome.signal)) or a non-zero exit.
        - V(exited) - the program exited with code 0 by itself (C(nc -l) does when its connection closes).
        - V(unknown) - no endpoint of this name was started in this network namespace.
      type: str
      sample: died
    reason:
      description: One sentence - which process (role, pid, program) is doing what or ended how.
      type: str
      sample: the server (pid 4242, python) was killed by SIGKILL
    errno:
      description: The errno name the client's connection ended with.
      type: str
      sample: ETIMEDOUT
    exit_code:
      description: curl's exit code (O(kind=curl)), or the exit code of a program that exited by itself.
      type: int
      sample: 56
    signal:
      description: The signal that killed the program (V(died), V(stopped)).
      type: str
      sample: SIGKILL
    error:
      description: The error text (the client's error, or the last line of the log of a program that exited).
      type: str
      sample: 'curl: (56) Recv failure: Connection timed out'
    seconds:
      description: Seconds from connect to failure (client).
      type: float
      sample: 9.03
    connected_at:
      description: When the connection was made (seconds since the epoch; client).
      type: float
    failed_at:
      description: When it ended (seconds since the epoch; client).
      type: float
    requested_at:
      description: When the python client sent its one request (seconds since the epoch).
      type: float
      version_added: 0.2.0
    answered_at:
      description: When the answer to that request came (seconds since the epoch).
      type: float
      version_added: 0.2.0
request_file:
  description:
    - The python client sends one request on its connection, and the python server answers it, once this file
      exists (the idle-timeout experiment creates it after the idle wait to see whether the connection still works).
  returned: when O(role=client) and O(kind=python) start
  type: str
  version_added: 0.2.0
keepalive_time:
  description: The per-socket keepalive idle time and interval curl sets (O(kind=curl)).
  returned: when O(kind=curl)
  type: int
  sample: 60
keepalive_time_source:
  description: V(option) (O(keepalive_time)) or V(curl default).
  returned: when O(kind=curl)
  type: str
msg:
  description: What was done.
  returned: always
  type: str
'''

import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, find_binary
from ansible_collections.tcplab.keepalive.plugins.module_utils._endpoint import EndpointError, Endpoints, validate
from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_sample import (
    SPEC as KERNEL_SAMPLE, KernelSampleError, check as check_sample, take as take_sample)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            role=dict(type='str', choices=['server', 'client']),
            kind=dict(type='str', choices=['python', 'nc', 'curl'], default='python'),
            address=dict(type='str', default='127.0.0.1'),
            port=dict(type='int', default=12345),
            local_port=dict(type='int'),
            keepalive_time=dict(type='int'),
            user_timeout_ms=dict(type='int'),
            request_timeout=dict(type='float'),
            state=dict(type='str', choices=['started', 'stopped', 'status', 'purged'], default='started'),
            name=dict(type='str'),
            state_dir=dict(type='path', default='/run/tcplab-keepalive/endpoint'),
            timeout=dict(type='float', default=10),
            kernel_sample=KERNEL_SAMPLE,
        ),
        required_if=[('state', 'started', ['role']), ('state', 'stopped', ['role']), ('state', 'status', ['role'])],
        supports_check_mode=True,
    )
    try:
        if module.params['state'] == 'purged':
            module.exit_json(**Endpoints(module.params['state_dir'], check_mode=module.check_mode).purged())
        cfg = validate(module.params)
        binaries = {}
        if module.params['state'] == 'started':
            if cfg['kind'] == 'nc':
                binaries['nc'] = find_binary(module, 'nc')
            if cfg['kind'] == 'curl':
                binaries['curl'] = find_binary(module, 'curl')
        endpoints = Endpoints(module.params['state_dir'], sys.executable, binaries, module.check_mode)
        sample = module.params['kernel_sample']
        if module.params['state'] == 'started':
            kernel = take_sample(sample)   # before the client connects
            result = endpoints.started(cfg)
        else:
            check_sample(sample)
            result = endpoints.stopped(cfg) if module.params['state'] == 'stopped' else endpoints.status(cfg)
            kernel = take_sample(sample)
        if kernel is not None:
            result['kernel'] = kernel
    except CommandError as exc:
        module.fail_json(**exc.as_result())
    except (EndpointError, KernelSampleError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
