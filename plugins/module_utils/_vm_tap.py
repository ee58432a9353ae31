# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The tap of a lab VM in the lab bridge: made, checked and removed only when proven ours.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

A tap is ours when it is a tun device and either its ifindex is the one in
the VM's record or its alias is the VM's marker (set right after the tap is
made, for a crash before the record holds the ifindex).
"""

from __future__ import annotations

import json

from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError

MSG_NO_BRIDGE = 'bridge %s does not exist (or is not a bridge): create the lab bridge before its VMs'
MSG_TAP_TAKEN = ('interface %s exists but was not made for lab VM %s (no matching ifindex in %s, no alias %s): '
                 'remove it (ip link del %s) if it is a leftover, or use another tap prefix')


class VmTap:
    """The tap `name` of lab VM `vm_name` (marker `mark`, record file `record_path`, saved by save(record))
    in `bridge`; `ip` is the path of the ip program."""

    def __init__(self, run, ip, name, vm_name, bridge, mark, record_path, save):
        self.run, self.ip_path, self.name, self.vm_name = run, ip, name, vm_name
        self.bridge, self.mark, self.record_path, self.save = bridge, mark, record_path, save

    def ip(self, *args):
        return [self.ip_path] + list(args)

    def link(self, dev=None):
        """`ip -j -d link show` of dev (default: the tap), or None when it does not exist."""
        rc, out, _err = self.run(self.ip('-j', '-d', 'link', 'show', 'dev', dev or self.name), check=False)
        if rc != 0:
            return None
        try:
            links = json.loads(out or '[]')
        except ValueError:
            return None
        return links[0] if links else None

    def check_bridge(self):
        link = self.link(self.bridge)
        if link is None or link.get('linkinfo', {}).get('info_kind') != 'bridge':
            raise VmError(MSG_NO_BRIDGE % self.bridge)

    def is_ours(self, link, record):
        if link.get('linkinfo', {}).get('info_kind') != 'tun':
            return False
        return link.get('ifindex') == record.get('tap_ifindex') or link.get('ifalias') == self.mark

    def ensure(self, record):
        """The tap up in the bridge; its ifindex is recorded before anything else can fail."""
        link = self.link()
        if link is not None and not self.is_ours(link, record):
            raise VmError(MSG_TAP_TAKEN % (self.name, self.vm_name, self.record_path, self.mark, self.name))
        if link is None:
            self.run(self.ip('tuntap', 'add', 'dev', self.name, 'mode', 'tap'), what='creating tap %s' % self.name)
            link = self.link() or {}
            record.update(tap=self.name, tap_ifindex=link.get('ifindex'))
            self.save(record)
            self.run(self.ip('link', 'set', 'dev', self.name, 'alias', self.mark))
        elif record.get('tap_ifindex') != link.get('ifindex'):
            record.update(tap=self.name, tap_ifindex=link.get('ifindex'))
            self.save(record)
        if link.get('master') != self.bridge:
            self.run(self.ip('link', 'set', 'dev', self.name, 'master', self.bridge),
                     what='adding tap %s to bridge %s' % (self.name, self.bridge))
        self.run(self.ip('link', 'set', 'dev', self.name, 'up'))

    def remove(self, record):
        """Delete the tap when it is ours; True when it was deleted."""
        link = self.link()
        if link is None or not self.is_ours(link, record):
            return False
        self.run(self.ip('link', 'del', 'dev', self.name), what='deleting tap %s' % self.name)
        return True
