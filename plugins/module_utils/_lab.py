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
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import (
    LAB_RANGE, MSG_SUDOERS_FOREIGN, OURS, USER_COMMENT, LabError, Manifest, check_bridge, check_netns, check_network,
    check_veth, claim, claim_link, inet_networks, read_text, remove_path, render_sudoers, sudoers_path, users_of_other_labs,
    veth_name)
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, netns_inode, netns_of, pids, starttime

NETNS_DIR = '/run/netns'
TRANSPORTS = ('netns', 'ssh')
HOST_NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,31}$')
PREFIX_RE = re.compile(r'^[a-z][a-z0-9-]{0,15}$')
BRIDGE_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,14}$')

MSG_HOST_NAME = ('lab host name %r is invalid: use 1 to 32 letters, digits, "-" or "_", '
                 'starting with a letter')
MSG_HOST_DUP = 'lab host %r is listed twice in lab_hosts'
MSG_HOST_TYPE = 'lab_hosts entries are names or {name, transport} mappings, got %r'
MSG_TRANSPORT = 'transport of lab host %r must be one of netns, ssh; got %r'
MSG_NETWORK = 'lab network %r is invalid: give a CIDR inside 198.18.0.0/15, e.g. 198.18.0.0/24'
MSG_NETWORK_RANGE = ('lab network %s is outside 198.18.0.0/15, the range reserved for '
                     'network benchmark labs: pick a network inside it, e.g. 198.18.0.0/24')
MSG_NETWORK_FULL = 'lab network %s has room for %d lab hosts, %d asked: use a larger network (e.g. a /22)'
MSG_PREFIX = 'netns_prefix %r is invalid: use 1 to 16 lower-case letters, digits or "-", starting with a letter'
MSG_BRIDGE = 'bridge name %r is invalid: use 1 to 15 letters, digits, "-" or "_", starting with a letter'
MSG_STATE_DIR = 'state_dir must be an absolute path that is not "/", got %r'
MSG_STATE_DIR_FILE = 'state_dir %s exists and is not a directory: choose another state_dir (lab_state_dir)'
MSG_SSH_USER = 'ssh_user must be root or a user name (lower-case letters, digits, "_", "-"; 1 to 32), got %r'
MSG_NO_SUDO = ('ssh_user %s needs sudo on this machine for become: install it (Debian/Ubuntu: apt-get install sudo) '
               'or use ssh_user: root')
SSH_USER_RE = re.compile(r'^[a-z_][a-z0-9_-]{0,31}$')


def normalize_hosts(hosts, default_transport):
    """Validate lab_hosts: return a list of {name, transport}."""
    if default_transport not in TRANSPORTS:
        raise LabError(MSG_TRANSPORT % ('(default)', default_transport))
    result = []
    seen = set()
    for entry in hosts or []:
        if isinstance(entry, str):
            name, transport = entry, default_transport
        elif isinstance(entry, dict) and set(entry) <= {'name', 'transport'} and 'name' in entry:
            name = entry['name']
            transport = entry.get('transport') or default_transport
        else:
            raise LabError(MSG_HOST_TYPE % (entry,))
        if not isinstance(name, str) or not HOST_NAME_RE.match(name):
            raise LabError(MSG_HOST_NAME % (name,))
        if transport not in TRANSPORTS:
            raise LabError(MSG_TRANSPORT % (name, transport))
        if name in seen:
            raise LabError(MSG_HOST_DUP % name)
        seen.add(name)
        result.append({'name': name, 'transport': transport})
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


def render_sshd_config(address, host_dir, authorized_keys, sftp_server):
    """sshd_config of one lab host: key-only root login on the lab address."""
    lines = [
        '# Managed by tcplab.keepalive (lab role); removed with lab_state: absent.',
        'ListenAddress %s' % address,
        'Port 22',
        'HostKey %s' % os.path.join(host_dir, 'ssh_host_ed25519_key'),
        'PidFile %s' % os.path.join(host_dir, 'sshd.pid'),
        'AuthorizedKeysFile %s' % authorized_keys,
        'PermitRootLogin prohibit-password',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'PrintMotd no',
        'AcceptEnv LANG LC_*',
    ]
    if sftp_server:
        lines.append('Subsystem sftp %s' % sftp_server)
    return '\n'.join(lines) + '\n'


def sshd_pids_of(state_dir, candidates=None, read=cmdline):
    """Pids of sshd listeners started for this lab (their -f config lies in state_dir).

    sshd re-titles itself ("sshd: /usr/sbin/sshd -f <config> [listener] ..."),
    so the whole command line is searched.
    """
    marker = '-f ' + state_dir.rstrip('/') + '/'
    found = []
    for pid in candidates if candidates is not None else pids():
        text = ' '.join(read(pid))
        if 'sshd' in text and marker in text:
            found.append(pid)
    return found


def pids_in_netns(ns_path):
    """Pids (but this one) whose network namespace is the one mounted at ns_path."""
    inode = netns_inode(ns_path)
    if inode is None:
        return []
    return [pid for pid in pids() if pid != os.getpid() and netns_of(pid) == inode]


def terminate(targets, timeout=5.0):
    """SIGTERM, wait, then SIGKILL what is left. Returns the pids signalled."""
    signalled = []
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
    deadline = time.monotonic() + timeout
    alive = list(signalled)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if starttime(pid) is not None]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return signalled


class Lab:
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

    @staticmethod
    def _user_pids(user):
        import pwd  # pylint: disable=import-outside-toplevel
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            return []
        found = []
        for pid in pids():
            try:
                if os.stat('/proc/%d' % pid).st_uid == uid:
                    found.append(pid)
            except OSError:
                continue
        return found

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
        wanted = [self.prefix + h['name'] for h in hosts]
        links = self.root_links()
        self._preflight(net, wanted, links)
        addresses = plan_addresses(net, [h['name'] for h in hosts], self._previous_addresses(net))

        # hosts no longer listed, and leftovers of a crashed run of this lab, go first
        self._remove_unlisted(set(wanted))
        self._remove_other_bridges(links)
        self._ensure_bridge(net, links.get(self.bridge))
        links = self.root_links() if not self.check_mode else links
        result_hosts = [self._ensure_host(host, addresses[host['name']], net.prefixlen, links) for host in hosts]

        ssh_hosts = [h for h in result_hosts if h['transport'] == 'ssh']
        ssh = {}
        if ssh_hosts:
            ssh = self._ensure_ssh(ssh_hosts)
        else:
            self._stop_sshd(self.state_dir)
        self._record_hosts(net, result_hosts)
        return {
            'hosts': result_hosts,
            'bridge': self.bridge,
            'gateway': str(gateway_of(net)),
            'network': str(net),
            'state_dir': self.state_dir,
            'ssh': ssh,
        }

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
        info = {'name': host['name'], 'netns': netns, 'netns_path': self.ns_path(netns), 'address': address,
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

    def _record_hosts(self, net, hosts):
        self.manifest.data.update({
            'bridge': self.bridge,
            'network': str(net),
            'netns_prefix': self.prefix,
            'hosts': {h['name']: {'address': h['address'], 'netns': h['netns'], 'transport': h['transport']}
                      for h in hosts},
        })
        self._save(self.manifest.save())

    # -- ssh -------------------------------------------------------------
    def _mkdir(self, path, mode=0o700):
        if not os.path.isdir(path):
            self.changed = True
            if not self.check_mode:
                os.makedirs(path, mode)
        if not self.check_mode and (os.stat(path).st_mode & 0o777) != mode:
            os.chmod(path, mode)

    def _write_if_changed(self, path, text, mode=0o600):
        try:
            with open(path) as handle:
                if handle.read() == text:
                    return False
        except (IOError, OSError):
            pass
        self.changed = True
        if not self.check_mode:
            atomic_write(path, text, mode)
        return True

    def _keygen(self, path, comment):
        if os.path.exists(path) and os.path.exists(path + '.pub'):
            return
        for stale in (path, path + '.pub'):
            if os.path.exists(stale) and not self.check_mode:
                os.unlink(stale)
        self._act([self.bin.get('ssh-keygen', 'ssh-keygen'), '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path],
                  'generating the lab key %s' % path)

    def _ensure_ssh(self, hosts):
        state = self.state_dir
        self._mkdir(os.path.dirname(state), 0o755)
        # traversable (not listable) so that sshd can read a non-root user's authorized_keys
        self._mkdir(state, 0o711)
        self._mkdir(os.path.join(state, 'hosts'))
        self._mkdir(os.path.join(state, 'pub'), 0o755)
        key = os.path.join(state, 'id_ed25519')
        self._keygen(key, 'tcplab-keepalive-lab')
        authorized = os.path.join(state, 'pub', 'authorized_keys')
        if not self.check_mode:
            with open(key + '.pub') as handle:
                self._write_if_changed(authorized, handle.read(), 0o644)
        if self.ssh_user != 'root':
            self._ensure_user()
        # sshd's privilege separation directory (created by the service unit normally)
        self._mkdir('/run/sshd', 0o755)
        known = [self._ensure_host_sshd(host, authorized) for host in hosts]
        self._remove_other_sshds({host['name'] for host in hosts})
        known_hosts = os.path.join(state, 'known_hosts')
        if not self.check_mode:
            self._write_if_changed(known_hosts, '\n'.join(sorted(known)) + '\n')
        return {'private_key': key, 'known_hosts': known_hosts, 'user': self.ssh_user, 'port': 22,
                'become': self.ssh_user != 'root'}

    def _ensure_host_sshd(self, host, authorized):
        """Start (or keep) one host's sshd; returns its known_hosts line."""
        host_dir = os.path.join(self.state_dir, 'hosts', host['name'])
        self._mkdir(host_dir)
        host_key = os.path.join(host_dir, 'ssh_host_ed25519_key')
        self._keygen(host_key, 'tcplab-keepalive-lab-%s' % host['name'])
        config = os.path.join(host_dir, 'sshd_config')
        text = render_sshd_config(host['address'], host_dir, authorized, self.bin.get('sftp-server'))
        config_changed = self._write_if_changed(config, text)
        pid = self._sshd_pid(host_dir, host['netns_path'])
        if pid and config_changed:
            terminate([pid])
            pid = None
        if not pid:
            pid = self._start_sshd(host, config)
        host['sshd_pid'] = pid
        if self.check_mode:
            return ''
        with open(host_key + '.pub') as handle:
            keytype, keydata = handle.read().split()[:2]
        return '%s %s %s' % (host['address'], keytype, keydata)

    def _remove_other_sshds(self, wanted):
        """sshds and directories of hosts that are no longer ssh hosts."""
        for name in self._listdir(os.path.join(self.state_dir, 'hosts')):
            if name not in wanted:
                host_dir = os.path.join(self.state_dir, 'hosts', name)
                self._stop_sshd(host_dir)
                self.changed = True
                if not self.check_mode:
                    shutil.rmtree(host_dir, ignore_errors=True)

    def _ensure_user(self):
        """A lab user with passwordless sudo, as lab VMs are usually reached."""
        import pwd  # pylint: disable=import-outside-toplevel
        if not self.bin.get('sudo'):
            raise LabError(MSG_NO_SUDO % self.ssh_user)
        try:
            pwd.getpwnam(self.ssh_user)
        except KeyError:
            self._save(self.manifest.intend('users', self.ssh_user))
            # '*': no password, but not a locked account (sshd refuses locked ones without PAM)
            self._act([self.bin.get('useradd', 'useradd'), '--create-home', '--shell', '/bin/sh', '--password', '*',
                       '--comment', USER_COMMENT, self.ssh_user], 'creating the lab user %s' % self.ssh_user)
            if not self.check_mode:
                self._save(self.manifest.record('users', self.ssh_user, pwd.getpwnam(self.ssh_user).pw_uid))
        self._ensure_sudoers()

    def _ensure_sudoers(self):
        """The lab's own sudoers file (one per lab), checked with visudo before it is installed."""
        path = sudoers_path(self.state_dir)
        if self.manifest.data.get('sudoers') not in (None, path):
            self._remove_sudoers()  # a version 1 lab's shared file
        text = render_sudoers(self.state_dir, self.ssh_user)
        current = read_text(path)
        if current == text:
            return
        if current is not None and not self.manifest.owns_sudoers(path, current):
            raise LabError(MSG_SUDOERS_FOREIGN % path)
        self._check_sudoers(text)
        self.manifest.data['sudoers'] = path
        self._save(self.manifest.save())
        self._write_if_changed(path, text, 0o440)

    def _check_sudoers(self, text):
        visudo = self.bin.get('visudo')
        if not visudo or self.check_mode:
            return
        # a name with a "." (sudo skips such files in sudoers.d) in the lab's own directory
        tmp = os.path.join(self.state_dir, '.sudoers.check')
        atomic_write(tmp, text, 0o440)
        try:
            self.run([visudo, '-cf', tmp], what='checking the lab sudoers rule with visudo')
        finally:
            os.unlink(tmp)

    @staticmethod
    def _listdir(path):
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def _sshd_pid(self, host_dir, ns_path):
        """Pid of this host's running sshd, if it runs in the right namespace."""
        try:
            with open(os.path.join(host_dir, 'sshd.pid')) as handle:
                pid = int(handle.read().strip())
        except (IOError, OSError, ValueError):
            return None
        if pid not in sshd_pids_of(host_dir, [pid]):
            return None
        if netns_of(pid) != netns_inode(ns_path):
            return None
        return pid

    def _start_sshd(self, host, config):
        sshd = self.bin.get('sshd', '/usr/sbin/sshd')
        if self.check_mode:
            self._act([sshd, '-f', config])
            return None
        self.run([sshd, '-t', '-f', config], what='checking %s' % config)
        self._act([self.bin.get('nsenter', 'nsenter'), '--net=%s' % host['netns_path'], '--', sshd, '-f', config],
                  'starting sshd for lab host %s' % host['name'])
        host_dir = os.path.dirname(config)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = self._sshd_pid(host_dir, host['netns_path'])
            if pid and self._port_open(host['address'], 22):
                return pid
            time.sleep(0.05)
        raise LabError('sshd of lab host %s did not start listening on %s:22 within 10 s; '
                       'see %s and the system log' % (host['name'], host['address'], config))

    @staticmethod
    def _port_open(address, port):
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            return False

    def _stop_sshd(self, directory):
        """Stop the sshds started with a configuration in the lab's own directory."""
        victims = sshd_pids_of(os.path.join(directory, 'hosts') if directory == self.state_dir else directory)
        if victims:
            self._note(['kill', '-TERM'] + [str(p) for p in victims])
            if not self.check_mode:
                terminate(victims)

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

    def _remove_users(self):
        import pwd  # pylint: disable=import-outside-toplevel
        for user in self.manifest.users_to_delete(pwd.getpwnam, users_of_other_labs(self.manifest.sudoers_files())):
            for pid in self._user_pids(user):
                terminate([pid])
            self._act_missing_ok([self.bin.get('userdel', 'userdel'), '--remove', user])

    def _remove_sudoers(self):
        for path in self.manifest.sudoers_files():
            if self.manifest.owns_sudoers(path, read_text(path)):
                self._note(['rm', path])
                if not self.check_mode:
                    os.unlink(path)
        self.manifest.data['sudoers'] = None

    def _remove_state_dir(self):
        """The state directory if the lab made it, else only the lab's own files in it."""
        for path in self.manifest.own_paths():
            if os.path.lexists(path):
                self._note(['rm', '-rf', path])
                if not self.check_mode:
                    remove_path(path)
