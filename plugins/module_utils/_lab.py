# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Local lab hosts: network namespaces on a bridge, optionally with an sshd.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

A lab is identified by its state directory, whose manifest (_lab_manifest)
lists every object the lab made: only those are ever changed or removed.
Each lab host is a network namespace ``<prefix><name>`` with
loopback up and a veth (``eth0`` inside, ``tk<hash>`` outside) enslaved to
the bridge; addresses come from 198.18.0.0/15. With the ssh transport an
sshd runs inside the namespace on the host's lab address. The lab never
touches the root namespace's sysctls or firewall: it only adds the bridge
(with the gateway address) and the veths.

The Lab here validates the request and orchestrates (present, absent, the
manifest's host records, the change log the module returns); the bridge,
namespaces, veths and addresses are _lab_net's part of it (names and paths of
namespaces from _netns), the sshds, the lab key, the lab user and its sudoers
file _lab_ssh's. A lab host of kind ``vm`` is a lab VM instead (QEMU on a tap in the same
bridge, reached over ssh as ``tcplab``): see _lab_vm, which this module hands
those hosts to.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import (  # noqa: F401 pylint: disable=unused-import
    LAB_RANGE, LabError, Manifest, remove_path, veth_name)
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_net import (  # noqa: F401 pylint: disable=unused-import
    LabNetwork, gateway_of, pids_in_netns)
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_ssh import LabSsh
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_ssh_masters import (
    NOTE_TOO_LONG, STATE_DIR_MAX, close_masters, control_dir, sockets_in)
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_vm import LabVms
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NETNS_DIR
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm import NAME_RE as VM_NAME_RE
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import DEFAULT_RELEASE, RELEASES

TRANSPORTS = ('netns', 'ssh')
KINDS = ('netns', 'vm')
HOST_KEYS = {'name', 'transport', 'kind', 'release'}
HOST_NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,31}$')
PREFIX_RE = re.compile(r'^[a-z][a-z0-9-]{0,15}$')
BRIDGE_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,14}$')

MSG_HOST_NAME = ('lab host name %r is invalid: use 1 to 32 letters, digits, "-" or "_", '
                 'starting with a letter')
MSG_HOST_DUP = 'lab host %r is listed twice in lab_hosts'
MSG_HOST_TYPE = 'lab_hosts entries are names or {name, transport, kind, release} mappings, got %r'
MSG_TRANSPORT = 'transport of lab host %r must be one of netns, ssh; got %r'
MSG_KIND = 'kind of lab host %r must be one of netns, vm; got %r'
MSG_RELEASE = 'release of lab VM %r must be one of bullseye, bookworm, trixie; got %r'
MSG_RELEASE_NETNS = ('lab host %r is a network namespace (kind: netns), which has no release of its own: remove '
                     'release, or add kind: vm for a lab VM of that release')
MSG_VM_TRANSPORT = ('lab host %r is a lab VM (kind: vm), which is always reached over ssh: remove transport: netns, '
                    'or use kind: netns for a namespace')
MSG_VM_NAME = ('lab VM name %r is invalid (it is also the VM\'s hostname): use 1 to 32 lower-case letters, digits or '
               '"-", starting with a letter')
MSG_NETWORK = 'lab network %r is invalid: give a CIDR inside 198.18.0.0/15, e.g. 198.18.0.0/24'
MSG_NETWORK_RANGE = ('lab network %s is outside 198.18.0.0/15, the range reserved for '
                     'network benchmark labs: pick a network inside it, e.g. 198.18.0.0/24')
MSG_NETWORK_FULL = 'lab network %s has room for %d lab hosts, %d asked: use a larger network (e.g. a /22)'
MSG_PREFIX = 'netns_prefix %r is invalid: use 1 to 16 lower-case letters, digits or "-", starting with a letter'
MSG_BRIDGE = 'bridge name %r is invalid: use 1 to 15 letters, digits, "-" or "_", starting with a letter'
MSG_STATE_DIR = 'state_dir must be an absolute path that is not "/", got %r'
MSG_STATE_DIR_FILE = 'state_dir %s exists and is not a directory: choose another state_dir (lab_state_dir)'
MSG_SSH_USER = 'ssh_user must be root or a user name (lower-case letters, digits, "_", "-"; 1 to 32), got %r'
SSH_USER_RE = re.compile(r'^[a-z_][a-z0-9_-]{0,31}$')


def normalize_host(entry, default_transport):
    """One lab_hosts entry as {name, kind, transport} (+ release for a VM)."""
    if isinstance(entry, str):
        entry = {'name': entry}
    elif not (isinstance(entry, dict) and set(entry) <= HOST_KEYS and 'name' in entry):
        raise LabError(MSG_HOST_TYPE % (entry,))
    name = entry['name']
    if not isinstance(name, str) or not HOST_NAME_RE.match(name):
        raise LabError(MSG_HOST_NAME % (name,))
    kind = entry.get('kind') or 'netns'
    if kind not in KINDS:
        raise LabError(MSG_KIND % (name, kind))
    transport = entry.get('transport')
    if kind == 'netns':
        if entry.get('release') is not None:
            raise LabError(MSG_RELEASE_NETNS % name)
        transport = transport or default_transport
        if transport not in TRANSPORTS:
            raise LabError(MSG_TRANSPORT % (name, transport))
        return {'name': name, 'kind': kind, 'transport': transport}
    if not VM_NAME_RE.match(name):
        raise LabError(MSG_VM_NAME % (name,))
    if transport == 'netns':
        raise LabError(MSG_VM_TRANSPORT % name)
    if transport not in (None, 'ssh'):
        raise LabError(MSG_TRANSPORT % (name, transport))
    release = entry.get('release') or DEFAULT_RELEASE
    if release not in RELEASES:
        raise LabError(MSG_RELEASE % (name, release))
    return {'name': name, 'kind': kind, 'transport': 'ssh', 'release': release}


def normalize_hosts(hosts, default_transport):
    """Validate lab_hosts: return a list of {name, kind, transport} (+ release for kind vm)."""
    if default_transport not in TRANSPORTS:
        raise LabError(MSG_TRANSPORT % ('(default)', default_transport))
    result = []
    seen = set()
    for entry in hosts or []:
        host = normalize_host(entry, default_transport)
        if host['name'] in seen:
            raise LabError(MSG_HOST_DUP % host['name'])
        seen.add(host['name'])
        result.append(host)
    return result


def parse_network(network):
    """The lab network as an IPv4Network inside 198.18.0.0/15."""
    try:
        net = ipaddress.ip_network(network, strict=True)
    except (ValueError, TypeError):
        raise LabError(MSG_NETWORK % (network,))
    if net.version != 4 or not net.subnet_of(LAB_RANGE):
        raise LabError(MSG_NETWORK_RANGE % (network,))
    if net.prefixlen > 29:
        raise LabError(MSG_NETWORK % (network,))
    return net


def host_offset(net):
    """Offset of the first lab host address (the gateway is the first address)."""
    return 10 if net.num_addresses >= 64 else 2


def plan_addresses(net, names, previous):
    """Addresses for names: keep a previous address when still valid, else take the lowest free one."""
    first = int(net.network_address) + host_offset(net)
    last = int(net.broadcast_address) - 1
    capacity = max(0, last - first + 1)
    if len(names) > capacity:
        raise LabError(MSG_NETWORK_FULL % (net, capacity, len(names)))
    taken = {}
    for name in names:
        addr = previous.get(name)
        try:
            value = int(ipaddress.ip_address(addr)) if addr else None
        except ValueError:
            value = None
        if value is not None and first <= value <= last and value not in taken.values():
            taken[name] = value
    used = set(taken.values())
    candidate = first
    for name in names:
        if name in taken:
            continue
        while candidate in used:
            candidate += 1
        taken[name] = candidate
        used.add(candidate)
    return {name: str(ipaddress.ip_address(taken[name])) for name in names}


def check_params(bridge, prefix, state_dir):
    """The normalised state_dir, once bridge, netns_prefix and state_dir are valid; LabError naming the fix."""
    if not BRIDGE_RE.match(bridge or ''):
        raise LabError(MSG_BRIDGE % (bridge,))
    if not PREFIX_RE.match(prefix or ''):
        raise LabError(MSG_PREFIX % (prefix,))
    if not state_dir or not os.path.isabs(state_dir) or os.path.normpath(state_dir) == '/':
        raise LabError(MSG_STATE_DIR % (state_dir,))
    state_dir = os.path.normpath(state_dir)
    if os.path.lexists(state_dir) and not os.path.isdir(state_dir):
        raise LabError(MSG_STATE_DIR_FILE % state_dir)
    return state_dir


class Lab(LabSsh):
    """Brings a lab to the requested state. `run` is a _common.Runner.

    The orchestration and the change log (_act, _note, _save: what the module
    returns as actions and changed) live here; the network is LabNetwork's
    (_lab_net), the ssh hosts, lab key, user and sudoers file LabSsh's
    (_lab_ssh), the VMs LabVms' (_lab_vm).
    """

    def __init__(self, run, params, check_mode=False, binaries=None):
        self.run = run
        self.check_mode = check_mode
        self.bin = binaries or {}
        self.bridge = params['bridge']
        self.prefix = params['netns_prefix']
        self.netns_dir = params.get('netns_dir') or NETNS_DIR
        self.state_dir = check_params(self.bridge, self.prefix, params['state_dir'])
        self.ssh_user = params.get('ssh_user') or 'root'
        if not SSH_USER_RE.match(self.ssh_user):
            raise LabError(MSG_SSH_USER % (self.ssh_user,))
        self.manifest = Manifest(self.state_dir, check_mode)
        self.net = LabNetwork(self)
        self.vms = LabVms(self, params)
        self.veth_wait = 5.0
        self.ssh_notes = []
        self.actions = []
        self.changed = False

    # -- the change log --------------------------------------------------
    def _act(self, argv, what=None):
        """Run a changing command (recorded; skipped in check mode)."""
        self.changed = True
        self.actions.append(list(argv))
        if not self.check_mode:
            self.run(argv, what=what)

    def _note(self, argv):
        """Record a change made in Python (not by a command)."""
        self.changed = True
        self.actions.append(list(argv))

    def _save(self, saved):
        if saved:
            self.changed = True

    def _act_missing_ok(self, argv):
        """Like _act for a deletion; a device that is already gone is not an error."""
        self.changed = True
        self.actions.append(list(argv))
        if not self.check_mode:
            rc, dummy, err = self.run(argv, check=False)
            if rc != 0 and 'Cannot find device' not in (err or '') and 'does not exist' not in (err or ''):
                self.run(argv)  # again, to fail with the full error

    # -- present ---------------------------------------------------------
    def present(self, hosts, network):
        net = parse_network(network)
        vm_hosts = [h for h in hosts if h['kind'] == 'vm']
        ns_hosts = [h for h in hosts if h['kind'] == 'netns']
        wanted = [self.prefix + h['name'] for h in ns_hosts]
        links = self.net.root_links()
        self.net.preflight(net, wanted, links)
        addresses = plan_addresses(net, [h['name'] for h in hosts], self._previous_addresses(net))
        self.vms.preflight(vm_hosts, addresses, net.prefixlen)
        self.vms.ensure_images(vm_hosts)  # may take minutes: before the lab changes anything

        # hosts no longer listed, and leftovers of a crashed run of this lab, go first
        self.net.remove_unlisted(set(wanted))
        self.vms.remove_unlisted({h['name'] for h in vm_hosts})
        self.net.remove_other_bridges(links)
        self.net.ensure_bridge(net, links.get(self.bridge))
        links = self.net.root_links() if not self.check_mode else links
        ns_infos = {h['name']: self.net.ensure_host(h, addresses[h['name']], net.prefixlen, links) for h in ns_hosts}
        ssh_hosts = [ns_infos[h['name']] for h in ns_hosts if h['transport'] == 'ssh']
        ssh = self._present_ssh(ssh_hosts, vm_hosts)
        if ssh_hosts or vm_hosts:
            control = self._ssh_control_dir()
        else:
            control = None
            self._close_ssh_masters()  # no ssh host or VM left for them to talk to
        self._record_hosts(net, hosts, addresses)
        proxy = self.vms.ensure_proxy(str(gateway_of(net))) if vm_hosts else self.vms.stop_proxy()
        vm_infos = {info['name']: info for info in self.vms.ensure(vm_hosts, addresses, net.prefixlen, proxy)}
        result = {
            'hosts': [ns_infos.get(h['name']) or vm_infos[h['name']] for h in hosts],
            'bridge': self.bridge,
            'gateway': str(gateway_of(net)),
            'network': str(net),
            'state_dir': self.state_dir,
            'ssh': ssh,
            'ssh_control_dir': control,
        }
        result.update(self.vms.summary())
        # a namespace of the manifest's name that is not the lab's (its inode reused, another cookie): left alone
        result['notes'] = list(self.net.notes) + self.ssh_notes + result.get('notes', [])
        return result

    def _ssh_control_dir(self):
        """The directory of the ssh master connections' sockets (the inventory's ansible_control_path_dir), made
        now; None (with a note) when the state directory is too long for a socket path in it."""
        directory = control_dir(self.state_dir)
        if directory is None:
            self.ssh_notes.append(NOTE_TOO_LONG % STATE_DIR_MAX)
            return None
        self._mkdir(directory, 0o700)
        return directory

    def _present_ssh(self, ssh_hosts, vm_hosts):
        """The sshds of the ssh hosts (none left running without any); the lab key for VMs. The ssh summary."""
        if ssh_hosts:
            return self._ensure_ssh(ssh_hosts)
        self._stop_sshd(self.state_dir)
        if vm_hosts:
            self._ensure_key()
        return {}

    def _previous_addresses(self, net):
        data = self.manifest.data
        if data.get('network') not in (None, str(net)):
            return {}
        return {name: info.get('address') for name, info in (data.get('hosts') or {}).items() if isinstance(info, dict)}

    def _record_hosts(self, net, hosts, addresses):
        """The lab's hosts and their addresses (kept across runs), before any VM boots."""
        recorded = {}
        for host in hosts:
            entry = {'address': addresses[host['name']], 'transport': host['transport'], 'kind': host['kind']}
            if host['kind'] == 'vm':
                entry['release'] = host['release']
            else:
                entry['netns'] = self.prefix + host['name']
            recorded[host['name']] = entry
        self.manifest.data.update({'bridge': self.bridge, 'network': str(net), 'netns_prefix': self.prefix,
                                   'hosts': recorded})
        self._save(self.manifest.save())

    # -- absent ----------------------------------------------------------
    def absent(self):
        """Remove what the manifest says this lab made, and nothing else."""
        self._close_ssh_masters()
        self.vms.absent()
        self._stop_sshd(self.state_dir)
        self.net.absent()
        self._remove_users()
        self._remove_sudoers()
        self._remove_state_dir()
        return {'hosts': [], 'bridge': self.bridge, 'state_dir': self.state_dir,
                'notes': list(self.net.notes) + self.ssh_notes}

    def _close_ssh_masters(self):
        """End the ssh master connections whose sockets are in the lab's own directory (_lab_ssh_masters): at
        absent, and at present when the lab has no ssh host and no VM (any more)."""
        directory = control_dir(self.state_dir)
        if directory is None or not os.path.isdir(directory) or not self.bin.get('ssh'):
            return
        if self.check_mode:
            for path in sockets_in(directory):
                self._note(['ssh', '-S', path, '-O', 'exit'])
            return
        closed, notes = close_masters(self.run, self.bin['ssh'], directory)
        for path in closed:
            self._note(['ssh', '-S', path, '-O', 'exit'])
        self.ssh_notes.extend(notes)

    def _remove_state_dir(self):
        """The state directory if the lab made it, else only the lab's own files in it."""
        for path in self.manifest.own_paths():
            if os.path.lexists(path):
                self._note(['rm', '-rf', path])
                if not self.check_mode:
                    remove_path(path)
