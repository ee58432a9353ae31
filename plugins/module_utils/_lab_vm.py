# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab's VMs: their images, the apt proxy, booting them in parallel, removing them.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

_lab.Lab hands the hosts of kind ``vm`` to LabVms. Each VM (_vm.Vm) lives in
``<state_dir>/vms/<name>/`` and runs on a qcow2 overlay of a cached base image
(_vm_image.ImageCache); the lab's own apt-cacher-ng (_apt_proxy.AptProxy)
listens on the bridge address while the lab has VMs. Before a VM is prepared
the manifest records it (its directory, address, release, image); after QEMU
starts, its pid, start time and tap. Ownership before a signal or a deletion
is proven by the VM's own record (pid, start time, the ``-name`` marker in
QEMU's argv) and the proxy's (pid, start time, its ``-c`` configuration
directory); a QEMU of this lab whose record was lost is found by its marker.

``present`` boots the VMs that are not running all at once: with
``vm_accel: auto`` the first one probes KVM (a Debian kernel that makes no
progress under a nested KVM within 10 s falls back to TCG), and the others
start with the accelerator that worked; once a VM fell back, the lab's other
VMs start with TCG directly, and so do all lab VMs on this machine until its
next boot (a memo with the boot id in the image cache directory). Then it waits
for every VM's ssh login in one loop. Running VMs with unchanged settings are
kept.

The parts, one concern each: _lab_vm_supply (images and the apt proxy),
_lab_vm_boot (launches, the KVM probe and its memo, the logins) and
_lab_vm_stop (power-offs, orphans, directories). LabVms here checks the
settings and plans which VMs to keep, restart or start.
"""

from __future__ import annotations

import os
import shutil
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._apt_proxy import DEFAULT_PORT
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import LabError, lab_id
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_vm_boot import BOOT_ID, LabVmBoot
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_vm_stop import LabVmStop
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_vm_supply import LabVmSupply
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, starttime
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm import MSG_TOOL, TOOLS as VM_TOOLS, Vm
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_boot import ACCELS, LOGIN_USER, MSG_NO_KVM
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import DEFAULT_CACHE_DIR
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_qemu import DEFAULT_MEMORY, KVM_DEVICE, kvm_usable

VM_DIR = 'vms'
VM_PYTHON = '/usr/bin/python3'
TAP_PREFIX = 'tkv'
# boot to an ssh login: about 20 s alone under TCG; three VMs beside a loaded suite have taken
# over 150 s to get as far as their NIC (the wait ends as soon as the login works)
BOOT_TIMEOUT = 600
STOP_TIMEOUT = 30
KVM_PROBE_TIMEOUT = 10
MEMORY_RANGE = (128, 65536)
TOOLS = dict(VM_TOOLS, **{'apt-cacher-ng': 'apt-cacher-ng', 'setpriv': 'util-linux'})

MSG_ACCEL = 'vm_accel must be one of auto, kvm, tcg; got %r'
MSG_MEMORY = 'vm_memory must be an integer %d..%d (MiB), got %r'
MSG_PORT = 'apt_proxy_port must be an integer 1..65535, got %r'
MSG_RESTART_IMAGE = 'lab VM %s: base image changed (%s -> %s); restarting it on a fresh overlay'
MSG_RESTART_SETTINGS = 'lab VM %s: settings changed (%s); restarting it on a fresh overlay'
MSG_RESTART_UNCONFIRMED = ('lab VM %s: started under KVM by a run that ended before its first login (it may be '
                           'stalled in early boot); restarting it')


def find_tools(names=None, which=shutil.which, path=None):
    """{name: path} of what lab VMs need on this machine; a clear error naming the Debian package."""
    search = os.pathsep.join([path or os.environ.get('PATH', ''), '/usr/sbin', '/sbin', '/usr/bin', '/bin'])
    found = {}
    for name in sorted(names or TOOLS):
        found[name] = which(name, path=search)
        if not found[name]:
            raise LabError(MSG_TOOL % (name, TOOLS.get(name, name)))
    return found


def check_settings(accel, memory, port):
    """Refuse VM settings outside their ranges (before anything changes)."""
    if accel not in ACCELS:
        raise LabError(MSG_ACCEL % (accel,))
    if isinstance(memory, bool) or not isinstance(memory, int) or not MEMORY_RANGE[0] <= memory <= MEMORY_RANGE[1]:
        raise LabError(MSG_MEMORY % (MEMORY_RANGE + (memory,)))
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise LabError(MSG_PORT % (port,))


def vm_config(image, memory, address, apt_proxy):
    """What a running VM was started with; a difference restarts it."""
    return {'build_id': image['build_id'], 'image_key': image['key'], 'release': image['release'], 'memory': memory,
            'address': address, 'apt_proxy': apt_proxy}


def config_changes(old, new):
    """The settings that differ (the image first), as text."""
    keys = [key for key in ('memory', 'address', 'apt_proxy') if (old or {}).get(key) != new.get(key)]
    return ', '.join('%s %s -> %s' % (key, (old or {}).get(key), new[key]) for key in keys)


class LabVms(LabVmSupply, LabVmBoot, LabVmStop):
    """The VMs of one lab (`lab` is the _lab.Lab that owns the manifest, the runner and the change log).
    Images and proxy: LabVmSupply; launches and logins: LabVmBoot; removal: LabVmStop."""

    def __init__(self, lab, params):
        self.lab = lab
        self.accel = params.get('vm_accel') or 'auto'
        self.cache_dir = params.get('image_cache') or DEFAULT_CACHE_DIR
        self.rebuild = bool(params.get('image_rebuild'))
        self.memory = params.get('vm_memory', DEFAULT_MEMORY)
        self.proxy_port = params.get('apt_proxy_port', DEFAULT_PORT)
        self.lab_id = lab_id(lab.state_dir)
        self.root = os.path.join(lab.state_dir, VM_DIR)
        self.tools = {}
        self.images = {}
        self.notes = []
        self.proxy = None
        self.boot_timeout, self.kvm_probe_timeout, self.stop_timeout = BOOT_TIMEOUT, KVM_PROBE_TIMEOUT, STOP_TIMEOUT
        self.kvm_device, self.boot_id_path = KVM_DEVICE, BOOT_ID
        self.clock, self.sleep = time.monotonic, time.sleep

    # -- helpers ---------------------------------------------------------
    @property
    def manifest(self):
        return self.lab.manifest

    def _entries(self):
        return self.manifest.data.setdefault('vms', {})

    def _vm(self, name, address=None, image=None, apt_proxy=None, accel=None):
        tools = dict(self.tools, ip=self.lab.bin.get('ip', 'ip'), kvm_device=self.kvm_device)
        return Vm(self.lab.run, name, os.path.join(self.root, name), image or {}, self.lab.bridge, address, self.lab_id,
                  os.path.join(self.lab.state_dir, 'id_ed25519'), apt_proxy=apt_proxy, accel=accel or self.accel,
                  memory=self.memory, tap_prefix=TAP_PREFIX, tools=tools, boot_timeout=self.boot_timeout,
                  kvm_probe_timeout=self.kvm_probe_timeout, clock=self.clock, sleep=self.sleep)

    def _note(self, line):
        self.notes.append(line)

    # -- before any change -----------------------------------------------
    def preflight(self, hosts, addresses, prefixlen):
        """Settings, tools, images' cache directory and each VM's names, checked before the lab changes anything."""
        check_settings(self.accel, self.memory, self.proxy_port)
        if not hosts:
            return
        self.tools = find_tools()
        self._cache()
        if self.accel == 'kvm' and not kvm_usable(self.kvm_device):
            raise LabError(MSG_NO_KVM % (hosts[0]['name'], self.kvm_device))
        for host in hosts:
            try:
                self._vm(host['name'], '%s/%d' % (addresses[host['name']], prefixlen))
            except VmError as exc:
                raise LabError(str(exc))

    # -- present ---------------------------------------------------------
    def ensure(self, hosts, addresses, prefixlen, apt_proxy):
        """Every VM of hosts running with its image and settings, reachable over ssh. Returns the host infos."""
        if not hosts:
            return []
        if not self.lab.check_mode:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        plans = []
        for host in hosts:
            image = self.images[host['release']]
            address = '%s/%d' % (addresses[host['name']], prefixlen)
            plan = {'host': host, 'vm': self._vm(host['name'], address, image, apt_proxy),
                    'config': vm_config(image, self.memory, address, apt_proxy)}
            plan['record'] = plan['vm'].load()
            plan['pid'] = plan['vm'].owned_pid(plan['record'])
            plans.append(plan)
        running = [plan for plan in plans if plan['pid']]
        self.reap_orphans({plan['pid'] for plan in running}, {plan['host']['name'] for plan in running})
        restart = [plan for plan in plans if plan['pid'] and self._must_restart(plan)]
        start = [plan for plan in plans if not plan['pid'] or plan in restart]
        kept = [plan for plan in plans if plan not in start]
        if self.lab.check_mode:
            for plan in start:
                self.lab._note(['qemu-system-x86_64', '-name', plan['vm'].mark])
            return [self._info(plan) for plan in plans]
        for plan in kept:
            self._adopt(plan)
        if restart:  # their overlays start afresh: nothing of the old guest is kept, so no ACPI wait
            self._stop_many([plan['host']['name'] for plan in restart], acpi=False)
        for plan in start:
            self._prepare(plan)
        if start:
            self._boot(start)
        self._wait_logins(start + kept)
        for plan in plans:
            self.notes.extend(line for line in plan['vm'].notes if line not in self.notes)
        return [self._info(plan) for plan in plans]

    def _must_restart(self, plan):
        entry = self._entries().get(plan['host']['name']) or {}
        old, new = entry.get('config') or {}, plan['config']
        if entry.get('boot_seconds') is None and plan['record'].get('accel') == 'kvm':
            self._note(MSG_RESTART_UNCONFIRMED % plan['host']['name'])
            return True
        if old.get('build_id') != new['build_id']:
            self._note(MSG_RESTART_IMAGE % (plan['host']['name'], old.get('image_key'), new['image_key']))
            return True
        changes = config_changes(old, new)
        if changes:
            self._note(MSG_RESTART_SETTINGS % (plan['host']['name'], changes))
            return True
        return False

    def _adopt(self, plan):
        """Complete the records of a running VM that a run which died before recording it started (its pid proven
        by QEMU's pid file and marker)."""
        vm, record, pid = plan['vm'], plan['record'], plan['pid']
        if record.get('pid') != pid:
            argv = cmdline(pid)
            accel = dict(zip(argv, argv[1:])).get('-accel')
            record.update(pid=pid, starttime=starttime(pid), accel=record.get('accel') or accel)
            vm.save(record)
        entry = self._entries().get(vm.name)
        if entry is not None and (entry.get('pid'), entry.get('starttime')) != (pid, record.get('starttime')):
            entry.update(pid=pid, starttime=record.get('starttime'), accel=record.get('accel'))
            self.lab._save(self.manifest.save())

    def _prepare(self, plan):
        """Record the VM in the manifest (before anything of it is made), then its overlay, tap and seed."""
        vm, host = plan['vm'], plan['host']
        entries = self._entries()
        entries[host['name']] = {'state_dir': vm.state_dir, 'release': host['release'], 'address': plan['config']['address'],
                                 'image_key': plan['config']['image_key'], 'tap': vm.tap, 'tap_ifindex': None,
                                 'marker': vm.mark, 'pid': None, 'starttime': None, 'accel': None,
                                 'boot_seconds': None, 'config': plan['config']}
        self.lab._save(self.manifest.save())
        try:
            plan['record'] = vm.prepare()
        except (VmError, CommandError) as exc:
            raise LabError(getattr(exc, 'msg', str(exc)))
        entries[host['name']]['tap_ifindex'] = plan['record'].get('tap_ifindex')
        self.lab._save(self.manifest.save())

    def _info(self, plan):
        vm, host = plan['vm'], plan['host']
        entry = self._entries().get(host['name']) or {}
        return {
            'name': host['name'], 'kind': 'vm', 'release': host['release'], 'address': str(vm.iface.ip),
            'transport': 'ssh', 'accel': entry.get('accel'), 'boot_seconds': entry.get('boot_seconds'),
            'console_log': vm.files['console'], 'known_hosts': vm.files['known_hosts'], 'user': LOGIN_USER,
            'python': VM_PYTHON, 'private_key': vm.key, 'state_dir': vm.state_dir, 'tap': vm.tap, 'mac': vm.mac,
            'image_key': plan['config']['image_key'], 'memory': self.memory,
        }
