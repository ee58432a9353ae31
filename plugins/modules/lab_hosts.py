#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: lab_hosts
short_description: Local lab hosts as network namespaces or lab VMs on a bridge
version_added: 0.1.0
description:
  - Brings up (or removes) local lab hosts on the machine it runs on. Each lab host is a Linux
    network namespace C(<netns_prefix><name>) with loopback up and a veth pair, C(eth0) inside and
    C(tk<hash>) outside, enslaved to a bridge in the root namespace.
  - A host of C(kind=vm) is a lab VM instead - QEMU booting the Debian kernel of its C(release) from a
    base image the module builds from Debian's archive (mmdebstrap, C(mkfs.ext4 -d); cached in
    O(image_cache)), on a qcow2 overlay of its own, with a tap in the bridge, a static lab address, and
    a login C(tcplab) with the lab key and passwordless sudo. The VMs of one run boot in parallel; the
    module returns once each accepts an ssh login. Running VMs are kept; a VM whose base image or
    settings changed is restarted on a fresh overlay.
  - While the lab has VMs, the lab's own caching apt proxy (C(apt-cacher-ng)) listens on the bridge
    address, port O(apt_proxy_port); the VMs' apt uses it. The VMs reach only the lab network (no
    gateway, no NAT).
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
  - For VMs the manifest also lists each VM (its directory under O(state_dir)C(/vms/), tap with its
    ifindex, QEMU pid and start time, image key) and the apt proxy. O(state=absent) powers the VMs off
    (ACPI, killed after 30 s), removes their taps, overlays, seeds and keys, stops the proxy and removes
    its cache, also after a crashed run (a QEMU of this lab is recognised by its C(-name) marker).
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
        a letter) or a mapping with keys C(name), C(transport), C(kind) and C(release).
      - C(kind) is V(netns) (the default, a network namespace) or V(vm) (a lab VM; its name must be
        lower-case letters, digits and C(-), as it is also its hostname).
      - C(release) of a VM is V(bullseye), V(bookworm) (the default) or V(trixie); it is refused for a
        namespace. A VM is always reached over ssh (C(transport=netns) is refused for it).
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
  vm_accel:
    description:
      - Accelerator of the lab VMs. V(auto) uses KVM when C(/dev/kvm) opens and falls back to TCG (software
        emulation), with a note, when a VM's kernel makes no progress under KVM within 10 s (Debian kernels
        hang in early boot under some nested KVM); once one VM fell back, the lab's other VMs start with
        TCG directly, and so does every lab VM on this machine until it reboots (a memo with the boot id in
        O(image_cache)).
      - V(kvm) fails when C(/dev/kvm) cannot be opened; V(tcg) never tries KVM.
    type: str
    choices: [auto, kvm, tcg]
    default: auto
  image_cache:
    description:
      - Directory of the cached VM base images, one per release and per hash of everything that shaped it.
      - Building needs about 3 GiB free there; a cached image is ready at once.
    type: path
    default: /var/cache/tcplab-keepalive/images
  image_rebuild:
    description: Build the base images of the VMs' releases again, even when cached (then restart the VMs on them).
    type: bool
    default: false
  vm_memory:
    description: Memory of each lab VM in MiB (128 to 65536). A change restarts running VMs.
    type: int
    default: 512
  apt_proxy_port:
    description: Port of the lab's apt proxy on the bridge address (while the lab has VMs).
    type: int
    default: 3142
requirements:
  - root on the machine the lab runs on
  - iproute2 (C(ip)) and util-linux (C(nsenter))
  - openssh-server and openssh-client for the C(ssh) transport; sudo and passwd (C(useradd)) for a
    non-root O(ssh_user)
  - for lab VMs - qemu-system-x86, qemu-utils, mmdebstrap, e2fsprogs, apt-cacher-ng, openssh-client
'''

EXAMPLES = r'''
- name: Two lab hosts, one reached over ssh
  tcplab.keepalive.lab_hosts:
    hosts:
      - client
      - name: server
        transport: ssh

- name: A namespace and two lab VMs of different Debian releases
  tcplab.keepalive.lab_hosts:
    hosts:
      - client
      - name: vm1
        kind: vm
      - name: vm2
        kind: vm
        release: trixie

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
    kind:
      description: V(netns) (a network namespace) or V(vm) (a lab VM).
      type: str
      sample: netns
    netns:
      description: Network namespace name.
      type: str
      returned: when kind is netns
      sample: tcplab-client
    netns_path:
      description: Path of the namespace.
      type: str
      returned: when kind is netns
      sample: /run/netns/tcplab-client
    address:
      description: IPv4 address of the host's C(eth0).
      type: str
      sample: 198.18.0.10
    transport:
      description: How Ansible reaches the host, V(netns) or V(ssh) (always V(ssh) for a VM).
      type: str
      sample: netns
    veth:
      description: Root-side veth name.
      type: str
      returned: when kind is netns
      sample: tk5f0c2a9b31e
    sshd_pid:
      description: Pid of the host's sshd.
      type: int
      returned: when kind is netns and transport is ssh
      sample: 4242
    release:
      description: Debian release of the VM.
      type: str
      returned: when kind is vm
      sample: bookworm
    accel:
      description: Accelerator the VM runs with, V(kvm) or V(tcg) (null in check mode for a VM not running).
      type: str
      returned: when kind is vm
      sample: tcg
    boot_seconds:
      description: Seconds from the VM's QEMU start to its first ssh login (of the boot that started it).
      type: float
      returned: when kind is vm
      sample: 23.4
    console_log:
      description: The VM's serial console log (the previous boot's is C(console.log.1) beside it).
      type: str
      returned: when kind is vm
      sample: /run/tcplab-keepalive/lab/vms/vm1/console.log
    known_hosts:
      description: Known hosts file with the VM's host key (generated for the VM, pinned before its first boot).
      type: str
      returned: when kind is vm
      sample: /run/tcplab-keepalive/lab/vms/vm1/known_hosts
    user:
      description: The VM's login, with passwordless sudo.
      type: str
      returned: when kind is vm
      sample: tcplab
    python:
      description: The VM's system Python.
      type: str
      returned: when kind is vm
      sample: /usr/bin/python3
    private_key:
      description: The lab's private key, which the VM's login accepts.
      type: str
      returned: when kind is vm
      sample: /run/tcplab-keepalive/lab/id_ed25519
    state_dir:
      description: The VM's directory (overlay, seed, console, QEMU monitor and record).
      type: str
      returned: when kind is vm
      sample: /run/tcplab-keepalive/lab/vms/vm1
    tap:
      description: The VM's tap in the bridge.
      type: str
      returned: when kind is vm
      sample: tkv3f9a0c1d2e4b
    mac:
      description: The VM's MAC address.
      type: str
      returned: when kind is vm
      sample: "52:54:00:3f:9a:0c"
    image_key:
      description: Cache key of the base image the VM runs on.
      type: str
      returned: when kind is vm
      sample: 063627ef3b30e19d
    memory:
      description: Memory of the VM in MiB.
      type: int
      returned: when kind is vm
      sample: 512
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
ssh_control_dir:
  description:
    - The directory of the ssh master connections' sockets of the lab's ssh hosts and VMs, in the state directory.
    - The inventory sets it as C(ansible_control_path_dir), and O(state=absent) asks each master there to exit.
    - Null without ssh hosts or VMs, and when O(state_dir) is longer than 76 characters (see RV(notes)).
  returned: when O(state=present)
  type: str
  sample: /run/tcplab-keepalive/lab/cp
images:
  description: The VM base images used, one per release (empty without VMs).
  returned: when O(state=present)
  type: list
  elements: dict
  contains:
    release:
      description: Debian release.
      type: str
      sample: bookworm
    key:
      description: Cache key (a hash of everything that shaped the image).
      type: str
      sample: 063627ef3b30e19d
    dir:
      description: The image's cache entry.
      type: str
      sample: /var/cache/tcplab-keepalive/images/bookworm-063627ef3b30e19d
    built:
      description: Whether this run built it (else it came from the cache).
      type: bool
    seconds:
      description: Time to build or find it.
      type: float
      sample: 0.01
    kernel_version:
      description: The Debian kernel in the image.
      type: str
      sample: 6.1.0-26-amd64
apt_proxy:
  description: The lab's apt proxy (empty without VMs).
  returned: when O(state=present)
  type: dict
  contains:
    url:
      description: What the VMs' apt uses.
      type: str
      sample: http://198.18.0.1:3142
    pid:
      description: Pid of the lab's apt-cacher-ng.
      type: int
    cache_dir:
      description: Its package cache (removed with the lab).
      type: str
      sample: /run/tcplab-keepalive/lab/apt-proxy/cache
notes:
  description:
    - What the lab chose on its own, e.g. the fall back from KVM to TCG, or a VM restarted on a new image.
    - A namespace of a lab host's name that is not the lab's (the kernel gave a new namespace the inode of the lab's
      deleted one, with another namespace cookie) is left alone and forgotten, and said so here.
  returned: always
  type: list
  elements: str
  sample: ["lab VM vm1: no boot progress under KVM within 10 s (console: 'Probing EDD'); falling back to TCG"]
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
            vm_accel=dict(type='str', choices=['auto', 'kvm', 'tcg'], default='auto'),
            image_cache=dict(type='path', default='/var/cache/tcplab-keepalive/images'),
            image_rebuild=dict(type='bool', default=False),
            vm_memory=dict(type='int', default=512),
            apt_proxy_port=dict(type='int', default=3142),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        require_root('the lab (network namespaces, veths, a bridge)')
        hosts = normalize_hosts(params['hosts'], params['transport'])
        binaries = {'ip': find_binary(module, 'ip'), 'nsenter': find_binary(module, 'nsenter'),
                    'userdel': find_binary(module, 'userdel', required=False), 'ssh': find_binary(module, 'ssh', required=False)}
        if params['state'] == 'present' and any(h['transport'] == 'ssh' for h in hosts):
            binaries['ssh-keygen'] = find_binary(module, 'ssh-keygen')
        if params['state'] == 'present' and any(h['transport'] == 'ssh' and h['kind'] == 'netns' for h in hosts):
            binaries['sshd'] = find_binary(module, 'sshd')
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
