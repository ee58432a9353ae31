# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a lab made: its manifest, and the proof that an object is the lab's own.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The manifest (``lab.json`` in the lab's state directory) lists every object
the lab made, with an identity the kernel or the system gives it: network
namespaces with their inode and cookie (_proc.netns_identity: the kernel
reuses a deleted namespace's inode, never its cookie; the cookie is null on a
kernel without cookies, Linux < 5.14, and absent from older manifests: then
the inode alone), bridges and veths with their ifindex, users
with their uid, and the lab's own sudoers file; lab VMs with their directory,
tap ifindex and QEMU pid and start time, and the lab's apt proxy (_lab_vm). An entry is written *before*
the object is made (the intent: identity still null) and completed right
after, so a run that dies in between leaves a record that the next run of the
same lab recognises. An object is the lab's own only when the manifest lists
it and its identity matches (or is still null: a crashed run of this lab made
it). Names or prefixes alone never prove anything.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cookie_matches

LAB_RANGE = ipaddress.ip_network('198.18.0.0/15')
MANIFEST = 'lab.json'
VERSION = 2
VETH_PREFIX = 'tk'
USER_COMMENT = 'tcplab.keepalive lab user'
SUDOERS_DIR = '/etc/sudoers.d'
SUDOERS_PREFIX = 'tcplab-keepalive-lab'
SUDOERS_LEGACY = os.path.join(SUDOERS_DIR, SUDOERS_PREFIX)
STATE_FILES = (MANIFEST, 'id_ed25519', 'id_ed25519.pub', 'known_hosts', 'pub', 'hosts', 'vms', 'apt-proxy', 'cp')
SECTIONS = {'namespaces': 'inode', 'bridges': 'ifindex', 'veths': 'ifindex', 'users': 'uid'}

OURS = 'ours'
GONE = 'gone'
FOREIGN = 'foreign'

MSG_BRIDGE_FOREIGN = ('interface %s exists and was not made by this lab (not in %s): choose another lab_bridge '
                      '(the bridge option of lab_hosts)')
MSG_BRIDGE_REPLACED = ('interface %s is not the bridge this lab made (%s records ifindex %s; found ifindex %s, kind %s): '
                       'someone replaced it; delete it (ip link del %s) or choose another lab_bridge')
MSG_NETNS_FOREIGN = ('network namespace %s exists and was not made by this lab (not in %s): choose another '
                     'lab_netns_prefix or host name, or delete it (ip netns del %s) if it is nobody\'s')
MSG_NETNS_REPLACED = ('network namespace %s is not the one this lab made (inode %s, %s records %s): someone re-created '
                      'it; choose another lab_netns_prefix or host name, or delete it (ip netns del %s)')
MSG_NETNS_RECYCLED = ('network namespace %s is not the one this lab made: it has the inode %s recorded, but cookie %s, '
                      'not the recorded %s (the lab\'s namespace was deleted and a new one got its inode): choose '
                      'another lab_netns_prefix or host name, or delete it (ip netns del %s) if it is nobody\'s')
MSG_NETNS_LEFT = ('network namespace %s left alone, not deleted: it has the inode %s that %s records, but cookie %s, '
                  'not the recorded %s (the lab\'s namespace was deleted and a new one got its inode); the lab '
                  'forgets it; delete it yourself (ip netns del %s) only if it is nobody\'s')
MSG_VETH_FOREIGN = ('interface %s (the veth of lab host namespace %s) exists and was not made by this lab (not in %s): '
                    'choose another lab_netns_prefix or host name')
MSG_NETWORK_TAKEN = ('lab network %s overlaps %s on interface %s, which this lab did not make (two labs on one network '
                     'cannot work): choose another lab_network, e.g. %s')
MSG_SUDOERS_FOREIGN = 'sudoers file %s exists and was not made by this lab: remove it, or choose another lab_state_dir'


class LabError(Exception):
    """Invalid lab request; the message names the fix."""


def veth_name(netns):
    """Root-side veth name of a lab namespace (at most 15 characters)."""
    return VETH_PREFIX + hashlib.sha1(netns.encode('utf-8')).hexdigest()[:11]


def lab_id(state_dir):
    """A short, stable id of the lab (its state directory)."""
    return hashlib.sha1(os.path.normpath(state_dir).encode('utf-8')).hexdigest()[:10]


def sudoers_path(state_dir, directory=SUDOERS_DIR):
    """The lab's own sudoers file (no "." in the name: sudo would skip it)."""
    return os.path.join(directory, '%s-%s' % (SUDOERS_PREFIX, lab_id(state_dir)))


def sudoers_marker(state_dir):
    return '# Managed by tcplab.keepalive (lab role) for the lab in %s; removed with its lab_state: absent.' % state_dir


def render_sudoers(state_dir, user):
    return '%s\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n' % (sudoers_marker(state_dir), user)


def sudoers_users(text):
    """The users a sudoers text grants something to (first word of each rule line)."""
    return {line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith('#')}


def link_kind(link):
    """Kind of a link from `ip -j -d link show` (bridge, veth, dummy ...; '' for hardware)."""
    return ((link or {}).get('linkinfo') or {}).get('info_kind') or ''


def claim(entry, identity, key):
    """OURS, GONE or FOREIGN for an object found with identity (None: not there)."""
    if identity is None:
        return GONE
    if entry is None:
        return FOREIGN
    recorded = entry.get(key)
    return OURS if recorded is None or recorded == identity else FOREIGN


def claim_netns(entry, inode, cookie=None):
    """OURS, GONE or FOREIGN for a namespace found with inode and cookie (inode None: not there; cookie None:
    unknown, the inode alone decides, as for an entry that records none)."""
    found = claim(entry, inode, 'inode')
    if found != OURS or entry.get('inode') is None:
        return found
    return OURS if cookie_matches(entry.get('cookie'), cookie) else FOREIGN


def recycled_netns(entry, inode, cookie):
    """Whether a namespace with the recorded inode is another one (both cookies known, unequal): the lab's was
    deleted and a new one got its inode."""
    if entry is None or inode is None or entry.get('inode') != inode:
        return False
    return not cookie_matches(entry.get('cookie'), cookie)


def claim_link(entry, link, kind):
    """Ownership of a root-namespace link: listed, of the right kind, same ifindex."""
    if link is None:
        return GONE
    if entry is None or link_kind(link) != kind:
        return FOREIGN
    return claim(entry, link.get('ifindex'), 'ifindex')


def claim_user(entry, pw):
    """Ownership of a user: listed, made by the lab (its comment), same uid."""
    if pw is None:
        return GONE
    if entry is None or pw.pw_gecos != USER_COMMENT:
        return FOREIGN
    return claim(entry, pw.pw_uid, 'uid')


def free_network(net, taken):
    """The first network of net's size in the lab range that overlaps none of taken (or None)."""
    for candidate in LAB_RANGE.subnets(new_prefix=net.prefixlen):
        if not any(candidate.overlaps(other) for other in taken):
            return candidate
    return None


def read_text(path):
    """Text of a file, or None when it cannot be read."""
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def users_of_other_labs(own, directory=SUDOERS_DIR):
    """Users that other labs' sudoers files grant (paths in own are this lab's)."""
    users = set()
    try:
        names = os.listdir(directory)
    except OSError:
        return users
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(SUDOERS_PREFIX) and path not in own:
            users |= sudoers_users(read_text(path) or '')
    return users


def inet_networks(addr_json):
    """(interface, address, its network) of each IPv4 address in `ip -j addr show` output."""
    found = []
    for link in addr_json:
        for addr in link.get('addr_info', []):
            if addr.get('family') == 'inet':
                cidr = '%s/%s' % (addr['local'], addr['prefixlen'])
                found.append((link.get('ifname'), cidr, ipaddress.ip_network(cidr, strict=False)))
    return found


def remove_path(path):
    """Remove a file, a symlink or a directory tree (not following links)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


# -- checks before anything is changed -------------------------------------
def check_bridge(manifest, bridge, links):
    """Refuse an existing interface named bridge that is not the lab's own bridge."""
    if claim_link(manifest.entry('bridges', bridge), links.get(bridge), 'bridge') != FOREIGN:
        return
    entry = manifest.entry('bridges', bridge)
    if entry is None:
        raise LabError(MSG_BRIDGE_FOREIGN % (bridge, manifest.path))
    link = links[bridge]
    raise LabError(MSG_BRIDGE_REPLACED % (bridge, manifest.path, entry.get('ifindex'), link.get('ifindex'),
                                          link_kind(link) or 'hardware', bridge))


def check_network(net, found, own_links):
    """Refuse a network that overlaps an address (ifname, cidr, network) of a link that is not ours."""
    for ifname, cidr, other in found:
        if ifname not in own_links and other.overlaps(net):
            suggestion = free_network(net, [item[2] for item in found])
            raise LabError(MSG_NETWORK_TAKEN % (net, cidr, ifname, suggestion or 'a smaller network'))


def check_netns(manifest, netns, inode, cookie=None):
    """Refuse an existing namespace that is not the lab's own (not listed, re-created, or a new one that got the
    inode of the lab's deleted one: another cookie)."""
    entry = manifest.entry('namespaces', netns)
    if claim_netns(entry, inode, cookie) != FOREIGN:
        return
    if entry is None:
        raise LabError(MSG_NETNS_FOREIGN % (netns, manifest.path, netns))
    if recycled_netns(entry, inode, cookie):
        raise LabError(MSG_NETNS_RECYCLED % (netns, inode, cookie, entry.get('cookie'), netns))
    raise LabError(MSG_NETNS_REPLACED % (netns, inode, manifest.path, entry.get('inode'), netns))


def check_veth(manifest, netns, links):
    veth = veth_name(netns)
    if claim_link(manifest.entry('veths', veth), links.get(veth), 'veth') == FOREIGN:
        raise LabError(MSG_VETH_FOREIGN % (veth, netns, manifest.path))


def empty():
    # vms: name -> {state_dir, release, address, image_key, tap, tap_ifindex, marker, pid, starttime, accel,
    # boot_seconds, config} (the VM's own vm.json is the proof of its QEMU); apt_proxy: {state_dir, address, port,
    # pid, starttime} or None; kvm_fallback: a VM of this lab made no boot progress under KVM (auto uses TCG).
    return {'version': VERSION, 'namespaces': {}, 'bridges': {}, 'veths': {}, 'users': {},
            'hosts': {}, 'sudoers': None, 'state_dir_created': False, 'vms': {}, 'apt_proxy': None, 'kvm_fallback': False}


def migrate(data):
    """A manifest of any version as the current one.

    Version 1 (no ``version`` key) listed the hosts, the bridge and the users
    the lab created, without identities: they become entries with a null
    identity (ours when they exist and are of the right kind).
    """
    if not isinstance(data, dict) or not data:
        return empty()
    if data.get('version') == VERSION:
        result = empty()
        result.update(data)
        return result
    result = empty()
    hosts = data.get('hosts') if isinstance(data.get('hosts'), dict) else {}
    for info in hosts.values():
        netns = info.get('netns') if isinstance(info, dict) else None
        if isinstance(netns, str):
            result['namespaces'][netns] = {'inode': None}
            result['veths'][veth_name(netns)] = {'ifindex': None}
    if isinstance(data.get('bridge'), str):
        result['bridges'][data['bridge']] = {'ifindex': None}
    users = [u for u in data.get('created_users') or [] if isinstance(u, str)]
    result['users'] = {user: {'uid': None} for user in users}
    if users:
        result['sudoers'] = SUDOERS_LEGACY
    result.update({'hosts': hosts, 'network': data.get('network'), 'netns_prefix': data.get('netns_prefix'),
                   'state_dir_created': True, 'legacy_users': users})
    return result


class Manifest:
    """The manifest of the lab in state_dir. Nothing is written in check mode."""

    def __init__(self, state_dir, check_mode=False):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, MANIFEST)
        self.check_mode = check_mode
        self.exists = os.path.isfile(self.path)
        self.data = migrate(self._read())

    def _read(self):
        try:
            with open(self.path) as handle:
                return json.load(handle)
        except (IOError, OSError, ValueError):
            return {}

    def section(self, name):
        return self.data[name]

    def entry(self, section, name):
        return self.data[section].get(name)

    def intend(self, section, *names):
        """Record that the lab is about to make these objects; saved before they are made."""
        for name in names:
            self.data[section].setdefault(name, {SECTIONS[section]: None})
        return self.save()

    def record(self, section, name, identity, **more):
        """The identity of an object the lab has just made (or adopted from a crashed run of its own); more: the
        rest of it (a namespace's cookie)."""
        entry = dict({SECTIONS[section]: identity}, **more)
        if self.data[section].get(name) == entry:
            return False
        self.data[section][name] = entry
        return self.save()

    def forget(self, section, name):
        self.data[section].pop(name, None)

    def own_paths(self):
        """What absent removes of the state directory: all of it if the lab made it, else the lab's own files."""
        if not self.exists:
            return []
        if self.data.get('state_dir_created'):
            return [self.state_dir]
        return [os.path.join(self.state_dir, name) for name in STATE_FILES]

    def users_to_delete(self, getpwnam, still_used):
        """Users this lab made that still exist as it made them, and that no other lab still grants."""
        doomed = []
        for name, entry in sorted(self.data['users'].items()):
            try:
                pw = getpwnam(name)
            except KeyError:
                pw = None
            if name != 'root' and name not in still_used and claim_user(entry, pw) == OURS:
                doomed.append(name)
        return doomed

    def text(self):
        return json.dumps(self.data, indent=2, sort_keys=True) + '\n'

    def sudoers_files(self):
        """Paths the lab's sudoers file may have: its own name, and what the manifest records."""
        return sorted({sudoers_path(self.state_dir)} | ({self.data['sudoers']} if self.data.get('sudoers') else set()))

    def owns_sudoers(self, path, text):
        """Whether the sudoers file at path (content text) is this lab's own: our marker, or a version 1 file."""
        if text is None:
            return False
        if path == sudoers_path(self.state_dir) and sudoers_marker(self.state_dir) in text:
            return True
        legacy = set(self.data.get('legacy_users') or [])
        return path == SUDOERS_LEGACY == self.data.get('sudoers') and bool(legacy) and sudoers_users(text) <= legacy

    def save(self):
        """Write the manifest when it differs; returns whether it differed."""
        text = self.text()
        try:
            with open(self.path) as handle:
                if handle.read() == text:
                    return False
        except (IOError, OSError):
            pass
        if not self.check_mode:
            self._ensure_dir()
            atomic_write(self.path, self.text(), 0o600)
        return True

    def _ensure_dir(self):
        if os.path.isdir(self.state_dir):
            return
        parent = os.path.dirname(self.state_dir)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        # traversable (not listable) so that sshd can read a non-root user's authorized_keys
        os.mkdir(self.state_dir, 0o711)
        os.chmod(self.state_dir, 0o711)
        self.data['state_dir_created'] = True
