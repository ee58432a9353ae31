#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: lab_hosts
short_description: Local lab hosts as network namespaces on a bridge
version_added: 1.0.0
description:
  - Brings up (or removes) local lab hosts on the machine it runs on. Each lab host is a Linux
    network namespace C(<netns_prefix><name>) with loopback up and a veth pair, C(eth0) inside and
    C(tk<hash>) outside, enslaved to a bridge in the root namespace.
  - Addresses come from 198.18.0.0/15, the range reserved for network benchmark labs. The bridge
    takes the first address of O(network); lab hosts keep their address across runs.
  - Lab hosts using the C(ssh) transport get an sshd inside their namespace, listening on their lab
    address, with a host key and a lab key pair generated in O(state_dir).
  - The lab keeps a manifest (C(lab.json) in O(state_dir)) of everything it made - namespaces with
    their inode, the bridge and the veths with their ifindex, users with their uid, its sudoers file
    - written before each object is made and completed right after. It only ever changes or removes
    what the manifest lists, never objects selected by name or prefix alone.
  - The lab is exactly O(hosts) - namespaces of this lab that are not listed are removed, also
    leftovers of a crashed run of this lab. O(state=absent) removes everything the lab made
    (namespaces, processes in them, veths, bridge, sshd processes, users, keys, state) and nothing
    else - another lab's namespaces, even with a prefix that starts with O(netns_prefix), stay.
  - Before it changes anything, the module refuses an existing interface named O(bridge) that this
    lab did not make (or that is not a bridge), an existing namespace it would need that this lab did
    not make (it is not adopted), and a O(network) that overlaps an address of another interface
    in the root namespace (such as another lab's bridge).
  - The lab never changes the root namespace's keepalive sysctls or firewall rules.
  - Most users want the C(tcplab.keepalive.lab) role, which also writes an inventory for the lab.
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
  hosts:
    description:
      - The lab hosts, each a name (letters, digits, C(-), C(_); 1 to 32 characters, starting with
        a letter) or a mapping with keys C(name) and C(transport).
    type: list
    elements: raw
    default: []
  transport:
    description: Transport of the hosts that do not name their own.
    type: str
    choices: [netns, ssh]
    default: netns
  state:
    description: Whether the lab should exist.
    type: str
    choices: [present, absent]
    default: present
  network:
    description: The lab network, a CIDR inside 198.18.0.0/15 (prefix length 29 or shorter).
    type: str
    default: 198.18.0.0/24
  bridge:
    description:
      - Name of the bridge in the root namespace (at most 15 characters).
      - The lab creates it; an existing interface of that name that this lab did not create is refused.
    type: str
    default: tcplab0
  netns_prefix:
    description:
      - Prefix of the namespace names. It does not select what the lab removes - the manifest does -
        so labs whose prefixes start alike (V(tcplab-) and V(tcplab-demo-)) do not touch each other.
    type: str
    default: tcplab-
  state_dir:
    description:
      - Directory for the lab's state - manifest, keys, sshd configurations. It identifies the lab - use
        one per lab. O(state=absent) removes it if the lab created it, else only the lab's files in it.
    type: path
    default: /run/tcplab-keepalive/lab
  ssh_user:
    description:
      - The user the C(ssh) transport logs in as. Other than V(root), the module creates that user on
        this machine (if missing) and gives it passwordless sudo in a sudoers file of this lab's own,
        C(/etc/sudoers.d/tcplab-keepalive-lab-<hash of state_dir>), checked with C(visudo -cf) (when
        installed) before it is installed, as lab VMs are usually reached.
      - O(state=absent) removes this lab's sudoers file and a user this lab created (unless another
        lab's sudoers file still grants it); a user that existed before is kept.
    type: str
    default: root
requirements:
  - root on the machine the lab runs on
  - iproute2 (C(ip)) and util-linux (C(nsenter))
  - openssh-server and openssh-client for the C(ssh) transport; sudo and passwd (C(useradd)) for a
    non-root O(ssh_user)
'''

EXAMPLES = r'''
- name: Two lab hosts, one reached over ssh
  tcplab.keepalive.lab_hosts:
    hosts:
      - client
      - name: server
        transport: ssh

- name: Remove the lab and all it made
  tcplab.keepalive.lab_hosts:
    state: absent
'''

RETURN = r'''
hosts:
  description: The lab hosts (empty when O(state=absent)).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Lab host name (the inventory hostname).
      type: str
      sample: client
    netns:
      description: Network namespace name.
      type: str
      sample: tcplab-client
    netns_path:
      description: Path of the namespace.
      type: str
      sample: /run/netns/tcplab-client
    address:
      description: IPv4 address of C(eth0) in the namespace.
      type: str
      sample: 198.18.0.10
    transport:
      description: How Ansible reaches the host, V(netns) or V(ssh).
      type: str
      sample: netns
    veth:
      description: Root-side veth name.
      type: str
      sample: tk5f0c2a9b31e
    sshd_pid:
      description: Pid of the host's sshd (ssh transport only).
      type: int
      returned: when transport is ssh
      sample: 4242
bridge:
  description: Bridge name.
  returned: always
  type: str
  sample: tcplab0
gateway:
  description: Address of the bridge in the root namespace.
  returned: when O(state=present)
  type: str
  sample: 198.18.0.1
network:
  description: The lab network.
  returned: when O(state=present)
  type: str
  sample: 198.18.0.0/24
state_dir:
  description: The lab's state directory.
  returned: always
  type: str
  sample: /run/tcplab-keepalive/lab
ssh:
  description: How to reach the ssh hosts (empty without ssh hosts).
  returned: when O(state=present)
  type: dict
  contains:
    private_key:
      description: Private key of the lab (mode 0600).
      type: str
      sample: /run/tcplab-keepalive/lab/id_ed25519
    known_hosts:
      description: Known hosts file with the lab hosts' keys.
      type: str
      sample: /run/tcplab-keepalive/lab/known_hosts
    user:
      description: Remote user.
      type: str
      sample: root
    become:
      description: Whether the inventory sets C(ansible_become) (a non-root O(ssh_user)).
      type: bool
    port:
      description: sshd port.
      type: int
      sample: 22
actions:
  description: The commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: list
  sample: [["ip", "netns", "add", "tcplab-client"]]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import (
    CommandError, Runner, find_binary, require_root)
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab import (
    Lab, LabError, normalize_hosts)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            hosts=dict(type='list', elements='raw', default=[]),
            transport=dict(type='str', choices=['netns', 'ssh'], default='netns'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
            network=dict(type='str', default='198.18.0.0/24'),
            bridge=dict(type='str', default='tcplab0'),
            netns_prefix=dict(type='str', default='tcplab-'),
            state_dir=dict(type='path', default='/run/tcplab-keepalive/lab'),
            ssh_user=dict(type='str', default='root'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        require_root('the lab (network namespaces, veths, a bridge)')
        hosts = normalize_hosts(params['hosts'], params['transport'])
        binaries = {'ip': find_binary(module, 'ip'), 'nsenter': find_binary(module, 'nsenter'),
                    'userdel': find_binary(module, 'userdel', required=False)}
        if params['state'] == 'present' and any(h['transport'] == 'ssh' for h in hosts):
            binaries['sshd'] = find_binary(module, 'sshd')
            binaries['ssh-keygen'] = find_binary(module, 'ssh-keygen')
            if params['ssh_user'] != 'root':
                binaries['sudo'] = find_binary(module, 'sudo', required=False)
                binaries['useradd'] = find_binary(module, 'useradd')
                binaries['visudo'] = find_binary(module, 'visudo', required=False)
            binaries['sftp-server'] = find_binary(module, 'sftp-server', required=False,
                                                  extra=('/usr/lib/openssh', '/usr/libexec/openssh',
                                                         '/usr/lib/ssh', '/usr/libexec'))
        lab = Lab(Runner(module), params, check_mode=module.check_mode, binaries=binaries)
        if params['state'] == 'present':
            result = lab.present(hosts, params['network'])
        else:
            result = lab.absent()
    except CommandError as exc:
        module.fail_json(**exc.as_result())
    except (LabError, PermissionError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=lab.changed, actions=lab.actions, **result)


if __name__ == '__main__':
    main()
