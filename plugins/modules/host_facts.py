#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: host_facts
short_description: What the experiment's preflight needs to know about a host, in one module run
version_added: 0.2.0
description:
  - Returns, in one module run, what the C(tcplab.keepalive.experiment) role's preflight checks on each experiment host -
    which used to take three (C(ansible.builtin.setup), C(ansible.builtin.find) and C(tcplab.keepalive.capture) in check
    mode), each a Python start on the target, about a second apiece on a lab VM under software emulation.
  - The facts under the names C(ansible.builtin.setup) gives them - C(effective_user_id), C(system), C(kernel),
    C(python), C(distribution), C(distribution_version) (from C(/etc/os-release), and C(/etc/debian_version) on Debian)
    and C(pkg_mgr) (the first package manager found, in the order Ansible's own fact prefers them; left out when there
    is none it knows) - so that C(delegate_facts) puts them where setup would, and C(ansible.builtin.package) finds
    C(pkg_mgr) without gathering facts again.
  - Which of O(binaries) are in C(/usr/sbin), C(/usr/bin), C(/sbin) and C(/bin), listed like the files of
    C(ansible.builtin.find).
  - With O(capture), what C(tcplab.keepalive.capture) answers in check mode for the loopback interface - the backend it
    would run (tcpdump, or scapy in the Python that runs the modules) or why it cannot capture.
  - With O(route_to), the interface the host would send to that address on (C(ip -o route get)).
  - It only reads.
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
  - tcplab.keepalive.attributes.info_module
attributes:
  platform:
    platforms: linux
options:
  binaries:
    description: Program names (no paths, no patterns) to look for in the binary directories.
    type: list
    elements: str
    default: []
  capture:
    description: Ask the capture module's own check whether, and with which backend, this host can capture.
    type: bool
    default: false
  route_to:
    description: An address whose outgoing interface to return in RV(route).
    type: str
'''

EXAMPLES = r'''
- name: Look at an experiment host in one module run
  tcplab.keepalive.host_facts:
    binaries: [ip, iptables, iptables-nft, iptables-legacy]
    capture: true
    route_to: 198.18.0.11
  delegate_to: client
  delegate_facts: true
  register: client_facts

- name: Say which capture backend the client would run
  ansible.builtin.debug:
    msg: "{{ client_facts.capture.backend | default(client_facts.capture.msg) }} toward {{ client_facts.route.dev }}"
'''

RETURN = r'''
ansible_facts:
  description: The facts, under the names C(ansible.builtin.setup) gives them.
  returned: always
  type: dict
  contains:
    effective_user_id:
      description: The uid the module runs as.
      type: int
    system:
      description: The kernel's name (C(Linux)).
      type: str
    kernel:
      description: The kernel's release.
      type: str
      sample: 6.1.0-28-amd64
    python:
      description: The Python that runs the modules (C(executable), C(version) with C(major), C(minor), C(micro)).
      type: dict
    distribution:
      description: The distribution's name.
      type: str
      sample: Debian
    distribution_version:
      description: The distribution's version.
      type: str
      sample: '12.8'
    pkg_mgr:
      description: The package manager, as Ansible's C(pkg_mgr) fact names it; absent when none is known.
      type: str
      sample: apt
files:
  description: The O(binaries) found, as C(ansible.builtin.find) lists files (C(path), C(isreg), C(islnk), C(xusr), C(xgrp), C(xoth)).
  returned: always
  type: list
  elements: dict
capture:
  description: C(backend) and C(msg) of the capture module's check-mode answer, or C(failed) and C(msg) when it cannot capture.
  returned: when O(capture) is true
  type: dict
  sample: {backend: tcpdump, msg: would start a capture on lo to ... (with tcpdump)}
route:
  description:
    - C(address), C(dev) (the outgoing interface) and C(stdout) (ip's line).
    - C(dev) is null, and C(msg) says why, when ip is missing or names no interface; the module does not fail then.
  returned: when O(route_to) is given
  type: dict
  sample: {address: 198.18.0.11, dev: eth0, stdout: 198.18.0.11 dev eth0 src 198.18.0.10 uid 0 \ cache}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils import _zipimport_once
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import Runner, find_binary
from ansible_collections.tcplab.keepalive.plugins.module_utils._host_facts import (
    HostFactsError, capture_check, check_binaries, facts, find_binaries, route_dev)


def main():
    _zipimport_once.install()
    module = AnsibleModule(
        argument_spec=dict(
            binaries=dict(type='list', elements='str', default=[]),
            capture=dict(type='bool', default=False),
            route_to=dict(type='str'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = {'changed': False, 'ansible_facts': facts(), 'files': find_binaries(check_binaries(p['binaries']))}
        if p['capture']:
            result['capture'] = capture_check(module.get_bin_path('tcpdump'))
        if p['route_to']:
            result['route'] = route_dev(Runner(module), find_binary(module, 'ip', required=False), p['route_to'])
    except HostFactsError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
