# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
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

The sshds, the lab key, the lab user and its sudoers file are _lab_ssh's part
of the Lab. A lab host of kind ``vm`` is a lab VM instead (QEMU on a tap in the same
bridge, reached over ssh as ``tcplab``): see _lab_vm, which this module hands
those hosts to.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import (
    LAB_RANGE, OURS, LabError, Manifest, check_bridge, check_netns, check_network, check_veth, claim, claim_link,
    inet_networks, remove_path, veth_name)
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_ssh import LabSsh, terminate
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_vm import LabVms
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import netns_inode, netns_of, pids
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm import NAME_RE as VM_NAME_RE
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import DEFAULT_RELEASE, RELEASES

NETNS_DIR = '/run/netns'
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


def gateway_of(net):
    return net.network_address + 1


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


def pids_in_netns(ns_path):
    """Pids (but this one) whose network namespace is the one mounted at ns_path."""
    inode = netns_inode(ns_path)
    if inode is None:
        return []
    return [pid for pid in pids() if pid != os.getpid() and netns_of(pid) == inode]


class Lab(LabSsh):
    """Brings a lab to the requested state. `run` is a _common.Runner."""

    def __init__(self, run, params, check_mode=False, binaries=None):
        self.run = run
        self.check_mode = check_mode
        self.bin = binaries or {}
        self.bridge = params['bridge']
        self.prefix = params['netns_prefix']
        self.state_dir = params['state_dir']
        self.netns_dir = params.get('netns_dir') or NETNS_DIR
        if not BRIDGE_RE.match(self.bridge or ''):
            raise LabError(MSG_BRIDGE % (self.bridge,))
        if not PREFIX_RE.match(self.prefix or ''):
            raise LabError(MSG_PREFIX % (self.prefix,))
        if not self.state_dir or not os.path.isabs(self.state_dir) or os.path.normpath(self.state_dir) == '/':
            raise LabError(MSG_STATE_DIR % (self.state_dir,))
        self.state_dir = os.path.normpath(self.state_dir)
        if os.path.lexists(self.state_dir) and not os.path.isdir(self.state_dir):
            raise LabError(MSG_STATE_DIR_FILE % self.state_dir)
        self.ssh_user = params.get('ssh_user') or 'root'
        if not SSH_USER_RE.match(self.ssh_user):
            raise LabError(MSG_SSH_USER % (self.ssh_user,))
        self.manifest = Manifest(self.state_dir, check_mode)
        self.vms = LabVms(self, params)
        self.veth_wait = 5.0
        self.actions = []
        self.changed = False

    # -- helpers ---------------------------------------------------------
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
            rc, out, err = self.run(argv, check=False)
            if rc != 0 and 'Cannot find device' not in (err or '') and 'does not exist' not in (err or ''):
                self.run(argv)  # again, to fail with the full error

    def ip(self, *args):
        return [self.bin.get('ip', 'ip')] + list(args)

    def _ip_json(self, *args):
        rc, out, err = self.run(self.ip('-j', *args), check=False)
        if rc != 0:
            return []
        try:
            return json.loads(out or '[]')
        except ValueError:
            return []

    def root_links(self):
        """Links of the root namespace by name, with their kind (`-d`)."""
        return {link['ifname']: link for link in self._ip_json('-d', 'link', 'show')}

    def ns_path(self, netns):
        return os.path.join(self.netns_dir, netns)

    def _netns_claim(self, netns):
        return claim(self.manifest.entry('namespaces', netns), netns_inode(self.ns_path(netns)), 'inode')

    def _link_claim(self, section, name, links, kind):
        return claim_link(self.manifest.entry(section, name), links.get(name), kind)

    def _our_bridges(self, links):
        return [name for name in sorted(self.manifest.section('bridges'))
                if self._link_claim('bridges', name, links, 'bridge') == OURS]

    def _preflight(self, net, namespaces, links):
        """Refuse objects of others, before the lab changes anything."""
        check_bridge(self.manifest, self.bridge, links)
        check_network(net, inet_networks(self._ip_json('addr', 'show')), set(self._our_bridges(links)))
        for netns in namespaces:
            check_netns(self.manifest, netns, netns_inode(self.ns_path(netns)))
            check_veth(self.manifest, netns, links)

    # -- present ---------------------------------------------------------
    def present(self, hosts, network):
        net = parse_network(network)
        vm_hosts = [h for h in hosts if h['kind'] == 'vm']
        ns_hosts = [h for h in hosts if h['kind'] == 'netns']
        wanted = [self.prefix + h['name'] for h in ns_hosts]
        links = self.root_links()
        self._preflight(net, wanted, links)
        addresses = plan_addresses(net, [h['name'] for h in hosts], self._previous_addresses(net))
        self.vms.preflight(vm_hosts, addresses, net.prefixlen)
        self.vms.ensure_images(vm_hosts)  # may take minutes: before the lab changes anything

        # hosts no longer listed, and leftovers of a crashed run of this lab, go first
        self._remove_unlisted(set(wanted))
        self.vms.remove_unlisted({h['name'] for h in vm_hosts})
        self._remove_other_bridges(links)
        self._ensure_bridge(net, links.get(self.bridge))
        links = self.root_links() if not self.check_mode else links
        ns_infos = {h['name']: self._ensure_host(h, addresses[h['name']], net.prefixlen, links) for h in ns_hosts}

        ssh_hosts = [ns_infos[h['name']] for h in ns_hosts if h['transport'] == 'ssh']
        ssh = {}
        if ssh_hosts:
            ssh = self._ensure_ssh(ssh_hosts)
        else:
            self._stop_sshd(self.state_dir)
            if vm_hosts:
                self._ensure_key()
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
        }
        result.update(self.vms.summary())
        return result

    def _previous_addresses(self, net):
        data = self.manifest.data
        if data.get('network') not in (None, str(net)):
            return {}
        return {name: info.get('address') for name, info in (data.get('hosts') or {}).items() if isinstance(info, dict)}

    def _remove_unlisted(self, wanted):
        for netns in sorted(self.manifest.section('namespaces')):
            if netns in wanted:
                continue
            if self._netns_claim(netns) == OURS:
                self._remove_netns(netns)
            self.manifest.forget('namespaces', netns)
            self.manifest.forget('veths', veth_name(netns))

    def _remove_other_bridges(self, links):
        """Bridges of this lab under an earlier lab_bridge name."""
        for name in self._our_bridges(links):
            if name != self.bridge:
                self._act(self.ip('link', 'del', name), 'deleting bridge %s' % name)
                self.manifest.forget('bridges', name)

    def _link_ifindex(self, name):
        found = self._ip_json('link', 'show', 'dev', name)
        return found[0].get('ifindex') if found else None

    def _ensure_bridge(self, net, link):
        cidr = '%s/%d' % (gateway_of(net), net.prefixlen)
        if link is None:
            self._save(self.manifest.intend('bridges', self.bridge))
            self._act(self.ip('link', 'add', 'name', self.bridge, 'type', 'bridge'), 'creating bridge %s' % self.bridge)
            link = {'flags': []}
        if not self.check_mode:
            self._save(self.manifest.record('bridges', self.bridge, link.get('ifindex') or self._link_ifindex(self.bridge)))
        addrs = self._inet_addrs('', self.bridge) if 'ifindex' in link else []
        if addrs != [cidr]:
            if addrs:
                self._act(self.ip('addr', 'flush', 'dev', self.bridge, 'scope', 'global'))
            self._act(self.ip('addr', 'add', cidr, 'dev', self.bridge))
        if 'UP' not in link.get('flags', []):
            self._act(self.ip('link', 'set', self.bridge, 'up'))

    def _inet_addrs(self, netns, dev):
        args = (['-n', netns] if netns else []) + ['addr', 'show', 'dev', dev]
        result = []
        for link in self._ip_json(*args):
            for addr in link.get('addr_info', []):
                if addr.get('family') == 'inet':
                    result.append('%s/%s' % (addr['local'], addr['prefixlen']))
        return result

    def _ensure_host(self, host, address, prefixlen, root_links):
        netns = self.prefix + host['name']
        info = {'name': host['name'], 'kind': 'netns', 'netns': netns, 'netns_path': self.ns_path(netns), 'address': address,
                'transport': host['transport'], 'veth': veth_name(netns)}
        if self._ensure_netns(netns):
            ns_links = {link['ifname']: link for link in self._ip_json('-n', netns, 'link', 'show')}
            if 'UP' not in ns_links.get('lo', {}).get('flags', []):
                self._act(self.ip('-n', netns, 'link', 'set', 'lo', 'up'))
            self._ensure_veth(netns, ns_links, root_links)
            self._ensure_eth0(netns, ns_links, '%s/%d' % (address, prefixlen))
        return info

    def _ensure_netns(self, netns):
        """Make (or adopt from a crashed run of this lab) the namespace; False when only planned (check mode)."""
        if os.path.exists(self.ns_path(netns)):
            if self.manifest.entry('namespaces', netns).get('inode') is None and not self.check_mode:
                self._save(self.manifest.record('namespaces', netns, netns_inode(self.ns_path(netns))))
            return True
        self._save(self.manifest.intend('namespaces', netns))
        self._save(self.manifest.intend('veths', veth_name(netns)))
        self._act(self.ip('netns', 'add', netns), 'creating network namespace %s' % netns)
        if self.check_mode:
            return False
        self._save(self.manifest.record('namespaces', netns, netns_inode(self.ns_path(netns))))
        return True

    def _ensure_veth(self, netns, ns_links, root_links):
        veth = veth_name(netns)
        root = root_links.get(veth)
        if root is None:
            if 'eth0' in ns_links:
                self._act(self.ip('-n', netns, 'link', 'del', 'eth0'))
            self._save(self.manifest.intend('veths', veth))
            self._act(self.ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns),
                      'creating veth %s for %s' % (veth, netns))
            root = {'flags': []}
            ns_links['eth0'] = {'flags': []}
        if not self.check_mode:
            self._save(self.manifest.record('veths', veth, root.get('ifindex') or self._link_ifindex(veth)))
        if root.get('master') != self.bridge:
            self._act(self.ip('link', 'set', veth, 'master', self.bridge))
        if 'UP' not in root.get('flags', []):
            self._act(self.ip('link', 'set', veth, 'up'))

    def _ensure_eth0(self, netns, ns_links, cidr):
        addrs = self._inet_addrs(netns, 'eth0') if 'ifindex' in ns_links.get('eth0', {}) else []
        if addrs != [cidr]:
            if addrs:
                self._act(self.ip('-n', netns, 'addr', 'flush', 'dev', 'eth0'))
            self._act(self.ip('-n', netns, 'addr', 'add', cidr, 'dev', 'eth0'))
        if 'UP' not in ns_links.get('eth0', {}).get('flags', []):
            self._act(self.ip('-n', netns, 'link', 'set', 'eth0', 'up'))

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
    def _remove_netns(self, netns):
        """Stop every process of a lab namespace, then delete it (its veth pair goes with it)."""
        victims = pids_in_netns(self.ns_path(netns))
        if victims:
            self._note(['kill', '-TERM'] + [str(p) for p in victims])
            if not self.check_mode:
                terminate(victims)
        self._act(self.ip('netns', 'del', netns), 'deleting network namespace %s' % netns)

    def absent(self):
        """Remove what the manifest says this lab made, and nothing else."""
        self.vms.absent()
        self._stop_sshd(self.state_dir)
        for netns in sorted(self.manifest.section('namespaces')):
            if self._netns_claim(netns) == OURS:
                self._remove_netns(netns)
            self.manifest.forget('namespaces', netns)
        links = self._remove_veths()
        for name in self._our_bridges(links):
            self._act(self.ip('link', 'del', name), 'deleting bridge %s' % name)
        self._remove_users()
        self._remove_sudoers()
        self._remove_state_dir()
        return {'hosts': [], 'bridge': self.bridge, 'state_dir': self.state_dir}

    def _remove_veths(self):
        """Delete the manifest's veths still there once their namespaces are gone; returns the root links."""
        # The kernel tears a deleted namespace down asynchronously; its veth
        # pair goes with it a moment later. Wait for that, then delete what
        # is still there (a veth gone in between is fine).
        names = sorted(self.manifest.section('veths'))
        deadline = time.monotonic() + self.veth_wait
        while True:
            links = self.root_links()
            ours = [name for name in names if self._link_claim('veths', name, links, 'veth') == OURS]
            if not ours or self.check_mode or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for name in ours:
            self._act_missing_ok(self.ip('link', 'del', name))
        return links

    def _remove_state_dir(self):
        """The state directory if the lab made it, else only the lab's own files in it."""
        for path in self.manifest.own_paths():
            if os.path.lexists(path):
                self._note(['rm', '-rf', path])
                if not self.check_mode:
                    remove_path(path)
