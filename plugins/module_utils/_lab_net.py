# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The network of a lab: its bridge, the lab hosts' namespaces, their veths and addresses.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

LabNetwork is the network part of a _lab.Lab: it uses the lab's runner,
binaries, check mode, manifest and change log (_act, _note, _save,
_act_missing_ok). Every change is an ``ip`` command (argv list); a lab
namespace's objects are changed with ``ip -n NAME``. Names and paths of
namespaces come from _netns; ownership is proven by the manifest
(_lab_manifest): an object is touched only when the manifest lists it with the
identity the kernel gives it (namespace inode and cookie, link ifindex). A
listed namespace that is now another one (its inode reused by a new namespace:
another cookie) is left alone, forgotten, and said so in ``notes``.
"""

from __future__ import annotations

import json
import os
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils import _netns
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import (
    MSG_NETNS_LEFT, OURS, LabError, check_bridge, check_netns, check_network, check_veth, claim_link, claim_netns,
    inet_networks, recycled_netns, veth_name)
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_ssh import stop_all
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import netns_identity, netns_inode, netns_of, pids

MSG_NETNS_BUSY = ('lab namespace %s was not deleted: its processes (%s) did not end after SIGTERM and SIGKILL; '
                  'find out what holds them (ps -o pid,stat,wchan:20,cmd -p PIDS), then run absent again')


def gateway_of(net):
    return net.network_address + 1


def pids_in_netns(ns_path):
    """Pids (but this one) whose network namespace is the one mounted at ns_path."""
    inode = netns_inode(ns_path)
    if inode is None:
        return []
    return [pid for pid in pids() if pid != os.getpid() and netns_of(pid) == inode]


class LabNetwork:
    """Bridge, namespaces, veths and addresses of one lab (`lab` is the _lab.Lab it belongs to)."""

    def __init__(self, lab):
        self.lab = lab
        self.notes = []  # what the lab left alone and why (MSG_NETNS_LEFT)

    # -- reading -----------------------------------------------------------
    def ip(self, *args):
        return [self.lab.bin.get('ip', 'ip')] + list(args)

    def _ip_json(self, *args):
        rc, out, dummy = self.lab.run(self.ip('-j', *args), check=False)
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
        return _netns.path_of(netns, self.lab.netns_dir)

    def _link_ifindex(self, name):
        found = self._ip_json('link', 'show', 'dev', name)
        return found[0].get('ifindex') if found else None

    def _inet_addrs(self, netns, dev):
        args = (['-n', netns] if netns else []) + ['addr', 'show', 'dev', dev]
        result = []
        for link in self._ip_json(*args):
            for addr in link.get('addr_info', []):
                if addr.get('family') == 'inet':
                    result.append('%s/%s' % (addr['local'], addr['prefixlen']))
        return result

    # -- ownership ---------------------------------------------------------
    def netns_claim(self, netns):
        """OURS, GONE or FOREIGN: the namespace now at netns's path against the manifest's inode and cookie."""
        return claim_netns(self.lab.manifest.entry('namespaces', netns), *netns_identity(self.ns_path(netns)))

    def _leave(self, netns):
        """A listed namespace that is not (any more) the lab's own is left alone: a note when a new one got its inode
        (another cookie); the caller forgets the entry."""
        manifest = self.lab.manifest
        entry = manifest.entry('namespaces', netns)
        inode, cookie = netns_identity(self.ns_path(netns))
        if recycled_netns(entry, inode, cookie):
            self.notes.append(MSG_NETNS_LEFT % (netns, inode, manifest.path, cookie, entry.get('cookie'), netns))

    def _link_claim(self, section, name, links, kind):
        return claim_link(self.lab.manifest.entry(section, name), links.get(name), kind)

    def our_bridges(self, links):
        return [name for name in sorted(self.lab.manifest.section('bridges'))
                if self._link_claim('bridges', name, links, 'bridge') == OURS]

    def preflight(self, net, namespaces, links):
        """Refuse objects of others, before the lab changes anything."""
        manifest = self.lab.manifest
        check_bridge(manifest, self.lab.bridge, links)
        check_network(net, inet_networks(self._ip_json('addr', 'show')), set(self.our_bridges(links)))
        for netns in namespaces:
            check_netns(manifest, netns, *netns_identity(self.ns_path(netns)))
            check_veth(manifest, netns, links)

    # -- present -----------------------------------------------------------
    def remove_other_bridges(self, links):
        """Bridges of this lab under an earlier lab_bridge name."""
        for name in self.our_bridges(links):
            if name != self.lab.bridge:
                self.lab._act(self.ip('link', 'del', name), 'deleting bridge %s' % name)
                self.lab.manifest.forget('bridges', name)

    def ensure_bridge(self, net, link):
        lab, bridge = self.lab, self.lab.bridge
        cidr = '%s/%d' % (gateway_of(net), net.prefixlen)
        if link is None:
            lab._save(lab.manifest.intend('bridges', bridge))
            lab._act(self.ip('link', 'add', 'name', bridge, 'type', 'bridge'), 'creating bridge %s' % bridge)
            link = {'flags': []}
        if not lab.check_mode:
            lab._save(lab.manifest.record('bridges', bridge, link.get('ifindex') or self._link_ifindex(bridge)))
        addrs = self._inet_addrs('', bridge) if 'ifindex' in link else []
        if addrs != [cidr]:
            if addrs:
                lab._act(self.ip('addr', 'flush', 'dev', bridge, 'scope', 'global'))
            lab._act(self.ip('addr', 'add', cidr, 'dev', bridge))
        if 'UP' not in link.get('flags', []):
            lab._act(self.ip('link', 'set', bridge, 'up'))

    def ensure_host(self, host, address, prefixlen, root_links):
        """One netns lab host: its namespace with lo up, its veth on the bridge, eth0 with its address."""
        netns = self.lab.prefix + host['name']
        info = {'name': host['name'], 'kind': 'netns', 'netns': netns, 'netns_path': self.ns_path(netns),
                'address': address, 'transport': host['transport'], 'veth': veth_name(netns)}
        if self._ensure_netns(netns):
            ns_links = {link['ifname']: link for link in self._ip_json('-n', netns, 'link', 'show')}
            if 'UP' not in ns_links.get('lo', {}).get('flags', []):
                self.lab._act(self.ip('-n', netns, 'link', 'set', 'lo', 'up'))
            self._ensure_veth(netns, ns_links, root_links)
            self._ensure_eth0(netns, ns_links, '%s/%d' % (address, prefixlen))
        return info

    def _ensure_netns(self, netns):
        """Make (or adopt from a crashed run of this lab) the namespace; False when only planned (check mode)."""
        lab, path = self.lab, self.ns_path(netns)
        if os.path.exists(path):
            entry = lab.manifest.entry('namespaces', netns)
            inode, cookie = netns_identity(path)
            # preflight proved it ours: an intent gets its identity, an entry of an older manifest its cookie
            unknown = entry.get('inode') is None or (entry.get('cookie') is None and cookie is not None)
            if unknown and not lab.check_mode:
                lab._save(lab.manifest.record('namespaces', netns, inode, cookie=cookie))
            return True
        lab._save(lab.manifest.intend('namespaces', netns))
        lab._save(lab.manifest.intend('veths', veth_name(netns)))
        lab._act(self.ip('netns', 'add', netns), 'creating network namespace %s' % netns)
        if lab.check_mode:
            return False
        inode, cookie = netns_identity(path)
        lab._save(lab.manifest.record('namespaces', netns, inode, cookie=cookie))
        return True

    def _ensure_veth(self, netns, ns_links, root_links):
        lab, veth = self.lab, veth_name(netns)
        root = root_links.get(veth)
        if root is None:
            if 'eth0' in ns_links:
                lab._act(self.ip('-n', netns, 'link', 'del', 'eth0'))
            lab._save(lab.manifest.intend('veths', veth))
            lab._act(self.ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns),
                     'creating veth %s for %s' % (veth, netns))
            root = {'flags': []}
            ns_links['eth0'] = {'flags': []}
        if not lab.check_mode:
            lab._save(lab.manifest.record('veths', veth, root.get('ifindex') or self._link_ifindex(veth)))
        if root.get('master') != lab.bridge:
            lab._act(self.ip('link', 'set', veth, 'master', lab.bridge))
        if 'UP' not in root.get('flags', []):
            lab._act(self.ip('link', 'set', veth, 'up'))

    def _ensure_eth0(self, netns, ns_links, cidr):
        addrs = self._inet_addrs(netns, 'eth0') if 'ifindex' in ns_links.get('eth0', {}) else []
        if addrs != [cidr]:
            if addrs:
                self.lab._act(self.ip('-n', netns, 'addr', 'flush', 'dev', 'eth0'))
            self.lab._act(self.ip('-n', netns, 'addr', 'add', cidr, 'dev', 'eth0'))
        if 'UP' not in ns_links.get('eth0', {}).get('flags', []):
            self.lab._act(self.ip('-n', netns, 'link', 'set', 'eth0', 'up'))

    # -- removal -----------------------------------------------------------
    def remove_unlisted(self, wanted):
        """Namespaces (and their veths) of hosts no longer listed, or left by a crashed run of this lab."""
        manifest = self.lab.manifest
        for netns in sorted(manifest.section('namespaces')):
            if netns in wanted:
                continue
            if self.netns_claim(netns) == OURS:
                self.remove_netns(netns)
            else:
                self._leave(netns)
            manifest.forget('namespaces', netns)
            manifest.forget('veths', veth_name(netns))

    def remove_netns(self, netns):
        """Stop every process of a lab namespace, then delete it (its veth pair goes with it)."""
        victims = pids_in_netns(self.ns_path(netns))
        if victims:
            self.lab._note(['kill', '-TERM'] + [str(p) for p in victims])
            if not self.lab.check_mode and not stop_all(victims)[1]:
                raise LabError(MSG_NETNS_BUSY % (netns, ', '.join(str(p) for p in victims)))
        self.lab._act(self.ip('netns', 'del', netns), 'deleting network namespace %s' % netns)

    def absent(self):
        """Delete the manifest's namespaces, veths and bridges that are still the lab's own."""
        manifest = self.lab.manifest
        for netns in sorted(manifest.section('namespaces')):
            if self.netns_claim(netns) == OURS:
                self.remove_netns(netns)
            else:
                self._leave(netns)
            manifest.forget('namespaces', netns)
        links = self._remove_veths()
        for name in self.our_bridges(links):
            self.lab._act(self.ip('link', 'del', name), 'deleting bridge %s' % name)

    def _remove_veths(self):
        """Delete the manifest's veths still there once their namespaces are gone; returns the root links."""
        # The kernel tears a deleted namespace down asynchronously; its veth
        # pair goes with it a moment later. Wait for that, then delete what
        # is still there (a veth gone in between is fine).
        names = sorted(self.lab.manifest.section('veths'))
        deadline = time.monotonic() + self.lab.veth_wait
        while True:
            links = self.root_links()
            ours = [name for name in names if self._link_claim('veths', name, links, 'veth') == OURS]
            if not ours or self.lab.check_mode or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for name in ours:
            self.lab._act_missing_ok(self.ip('link', 'del', name))
        return links
