# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The files a lab VM gets before its boot: its ssh host key, its overlay on the base image, its seed.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

The host key is made per VM on the controller, so the known_hosts entry is
pinned before the first connection. The overlay (qcow2, backed by the shared
base image) holds the VM's own writes and starts afresh when the base image
changes. The seed (format: see _vm) reaches the image's tcplab-seed unit
through QEMU's fw_cfg.
"""

from __future__ import annotations

import base64
import os
import re

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError, read_text

SEED_NAME = 'opt/tcplab/seed'
SEED_VALUE_RE = re.compile(r'^[^\r\n]*$')

MSG_SEED_VALUE = 'seed value %s=%r of lab VM %s holds a line break: give a single line'
MSG_OVERLAY_AFRESH = 'lab VM %s: base image changed; its overlay (the VM\'s own writes) starts afresh'


def render_seed(name, hostname, address, mac, authorized_keys, host_key=None, host_key_pub=None,
                gateway=None, apt_proxy=None):
    """The seed text of one VM (see the docstring of _vm)."""
    pairs = [('version', '1'), ('hostname', hostname), ('mac', mac), ('address', address),
             ('gateway', gateway or ''), ('apt_proxy', apt_proxy or '')]
    pairs += [('authorized_key', key.strip()) for key in authorized_keys]
    if host_key:
        pairs.append(('host_key_ed25519', base64.b64encode(host_key.encode('ascii')).decode('ascii')))
        pairs.append(('host_key_ed25519_pub', host_key_pub.strip()))
    for key, value in pairs:
        if not SEED_VALUE_RE.match(value):
            raise VmError(MSG_SEED_VALUE % (key, value, name))
    head = '# tcplab lab VM seed, read at every boot by tcplab-seed through QEMU fw_cfg %s\n' % SEED_NAME
    return head + ''.join('%s=%s\n' % pair for pair in pairs)


class BootFiles:
    """The host key, known_hosts, overlay and seed of one VM. `paths` is the VM's {part: path} (host_key,
    known_hosts, overlay, seed); `tool` maps a program to its path; note(line) reports what a user should
    know; save(record) writes the VM's record."""

    def __init__(self, run, tool, name, paths, note, save):
        self.run, self.tool, self.name, self.paths, self.note, self.save = run, tool, name, paths, note, save

    def ensure_host_key(self, address):
        """The VM's host key (kept when both halves exist) and the known_hosts line pinning it at address."""
        key = self.paths['host_key']
        if not (os.path.exists(key) and os.path.exists(key + '.pub')):
            for stale in (key, key + '.pub'):
                if os.path.exists(stale):
                    os.unlink(stale)
            self.run([self.tool('ssh-keygen'), '-q', '-t', 'ed25519', '-N', '', '-C', 'tcplab-vm-%s' % self.name,
                      '-f', key], what='generating the host key of lab VM %s' % self.name)
        keytype, keydata = read_text(key + '.pub').split()[:2]
        atomic_write(self.paths['known_hosts'], '%s %s %s\n' % (address, keytype, keydata), 0o644)

    def ensure_overlay(self, record, image):
        """The overlay on image's disk, made afresh when the record names another build; recorded."""
        overlay = self.paths['overlay']
        if os.path.exists(overlay) and record.get('build_id') == image['build_id']:
            return
        if os.path.exists(overlay):
            self.note(MSG_OVERLAY_AFRESH % self.name)
            os.unlink(overlay)
        self.run([self.tool('qemu-img'), 'create', '-q', '-f', 'qcow2', '-b', image['disk'], '-F',
                  image.get('disk_format', 'raw'), overlay], what='creating the overlay of lab VM %s' % self.name)
        os.chmod(overlay, 0o600)
        record['build_id'] = image['build_id']
        record['overlay'] = overlay
        self.save(record)

    def write_seed(self, hostname, iface, mac, key, gateway=None, apt_proxy=None):
        """The seed (mode 0600: it holds the private host key); key is the lab's private key (its .pub is sent)."""
        text = render_seed(self.name, hostname, '%s/%d' % (iface.ip, iface.network.prefixlen), mac,
                           [read_text(key + '.pub')], read_text(self.paths['host_key']),
                           read_text(self.paths['host_key'] + '.pub'), gateway, apt_proxy)
        atomic_write(self.paths['seed'], text, 0o600)
