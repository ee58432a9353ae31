# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One lab VM: QEMU on a qcow2 overlay of a base image, a tap in the lab bridge.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

QEMU boots the image's kernel and initrd directly, with the serial console
logged to ``console.log`` in the VM's state directory. The VM's own settings
reach the shared base image at boot through QEMU's fw_cfg (``-fw_cfg
name=opt/tcplab/seed,file=<state>/seed``), read by the image's tcplab-seed
unit. The seed is a text file of ``key=value`` lines (values never hold a
newline):

    version=1                          the seed format
    hostname=<name>                    letters, digits, "-"
    mac=52:54:00:xx:xx:xx              the NIC to configure
    address=<ip>/<prefixlen>           static, on that NIC (set by tcplab-seed with ip)
    gateway=<ip>                       optional (none: the VM reaches only its network)
    apt_proxy=http://<ip>:<port>       optional, apt's Acquire::http::Proxy
    authorized_key=<openssh public key>  once per key, for the tcplab login
    host_key_ed25519=<base64 of the private host key file>
    host_key_ed25519_pub=<openssh public host key>

The host key is made per VM on the controller, so the known_hosts entry is
pinned before the first connection. QEMU runs detached; its state record
(``vm.json``: pid, start time, the ``-name tcplab-vm:<lab>:<vm>`` marker,
the tap's ifindex) proves ownership before anything is signalled or deleted.

The parts, one concern each: _vm_base (the error, names, console), _vm_qemu
(QEMU's command line, KVM, the monitor), _vm_files (host key, overlay, seed),
_vm_tap (the tap), _vm_boot (accelerators, launch, KVM fallback, ssh login)
and _vm_stop (ACPI power-off, kill, cleanup). Vm here checks the settings,
keeps the record, proves ownership and puts the parts together.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, starttime
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError, mac_address, marker, tap_name
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_boot import ACCELS, VmBoot
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_files import BootFiles
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_qemu import DEFAULT_MEMORY
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_stop import VmStop
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_tap import VmTap

DEFAULT_TAP_PREFIX = 'tkv'
NAME_RE = re.compile(r'^[a-z][a-z0-9-]{0,31}$')
LAB_ID_RE = re.compile(r'^[a-z0-9][a-z0-9-]{0,31}$')
TAP_PREFIX_RE = re.compile(r'^[a-z][a-z0-9]{1,6}$')
HOSTNAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9-]{0,62}$')
APT_PROXY_RE = re.compile(r'^http://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$')
UNIX_PATH_MAX = 107

MSG_NAME = 'lab VM name %r is invalid: use 1 to 32 lower-case letters, digits or "-", starting with a letter'
MSG_LAB_ID = 'lab id %r is invalid: use 1 to 32 lower-case letters, digits or "-"'
MSG_TAP_PREFIX = 'tap prefix %r is invalid: use 2 to 7 lower-case letters or digits, starting with a letter'
MSG_ACCEL = 'accelerator %r is invalid: use one of auto, kvm, tcg'
MSG_ADDRESS = 'address %r of lab VM %s is invalid: give an IPv4 address and a prefix length, e.g. 198.18.0.10/24'
MSG_GATEWAY = 'gateway %r of lab VM %s is not in its network %s: give an address of the lab network or none'
MSG_HOSTNAME = 'hostname %r of lab VM %s is invalid: use 1 to 63 letters, digits or "-", not starting with "-"'
MSG_APT_PROXY = 'apt proxy %r of lab VM %s is invalid: give http://<address>:<port>, e.g. http://198.18.0.1:3142'
MSG_STATE_DIR = 'state directory of a lab VM must be an absolute path that is not "/", got %r'
MSG_STATE_DIR_LONG = ('state directory %s is too long for the QEMU monitor socket (%d > %d characters): '
                      'use a shorter state directory')
MSG_IMAGE = 'lab VM image file %s is missing: build the image again (rebuild: true)'
MSG_KEY = 'lab key %s (and its .pub) is missing: generate it (ssh-keygen -t ed25519 -N "" -f %s)'
MSG_TOOL = '%s is needed to run lab VMs and was not found: install it (Debian/Ubuntu: apt-get install %s)'

TOOLS = {
    'qemu-system-x86_64': 'qemu-system-x86',
    'qemu-img': 'qemu-utils',
    'ip': 'iproute2',
    'ssh': 'openssh-client',
    'ssh-keygen': 'openssh-client',
}


def parse_interface(address, name):
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise VmError(MSG_ADDRESS % (address, name))
    if iface.version != 4 or '/' not in str(address) or iface.ip == iface.network.network_address:
        raise VmError(MSG_ADDRESS % (address, name))
    return iface


class Vm(VmBoot, VmStop):
    """One lab VM. `run` is a _common.Runner; `image` is what _vm_image.ImageCache.ensure returns.
    The boot (VmBoot) and the stop (VmStop) are in their own files; the tap is `tap_device` (a _vm_tap.VmTap),
    the files made before the boot `boot_files` (a _vm_files.BootFiles)."""

    RECORD = 'vm.json'

    def __init__(self, run, name, state_dir, image, bridge, address, lab_id, key, gateway=None,
                 apt_proxy=None, accel='auto', hostname=None, memory=DEFAULT_MEMORY, cpus=1,
                 tap_prefix=DEFAULT_TAP_PREFIX, tools=None, log=None, boot_timeout=300, kvm_probe_timeout=10,
                 clock=time.monotonic, sleep=time.sleep):
        self._check_names(name, lab_id, tap_prefix, accel, state_dir)
        # address None: a VM only to be stopped (e.g. QEMU of a crashed run found by its marker)
        self.iface = parse_interface(address, name) if address is not None else None
        if gateway and (self.iface is None or ipaddress.ip_address(gateway) not in self.iface.network):
            raise VmError(MSG_GATEWAY % (gateway, name, self.iface.network if self.iface else None))
        self.run, self.name, self.image, self.bridge = run, name, image, bridge
        self.state_dir = os.path.normpath(state_dir)
        self.lab_id, self.key, self.gateway, self.apt_proxy, self.accel = lab_id, key, gateway, apt_proxy, accel
        self.hostname = hostname or name
        if not HOSTNAME_RE.match(self.hostname):
            raise VmError(MSG_HOSTNAME % (self.hostname, name))
        if apt_proxy and not APT_PROXY_RE.match(apt_proxy):
            raise VmError(MSG_APT_PROXY % (apt_proxy, name))
        self.memory, self.cpus = memory, cpus
        self.mark = marker(lab_id, name)
        self.mac = mac_address(lab_id, name)
        self.tap = tap_name(tap_prefix, lab_id, name)
        self.tools = tools or {}
        self.log = log or (lambda line: None)
        self.boot_timeout, self.kvm_probe_timeout = boot_timeout, kvm_probe_timeout
        self.clock, self.sleep = clock, sleep
        self.notes = []
        self._launched = None
        self.files = {part: os.path.join(self.state_dir, leaf) for part, leaf in (
            ('record', self.RECORD), ('overlay', 'overlay.qcow2'), ('seed', 'seed'), ('console', 'console.log'),
            ('qmp', 'qmp.sock'), ('pid', 'qemu.pid'), ('host_key', 'ssh_host_ed25519_key'),
            ('known_hosts', 'known_hosts'))}
        if len(self.files['qmp']) > UNIX_PATH_MAX:
            raise VmError(MSG_STATE_DIR_LONG % (self.state_dir, len(self.files['qmp']), UNIX_PATH_MAX))
        self.tap_device = VmTap(run, self.tool('ip'), self.tap, name, bridge, self.mark, self.files['record'], self.save)
        self.boot_files = BootFiles(run, self.tool, name, self.files, self._note, self.save)

    @staticmethod
    def _check_names(name, lab_id, tap_prefix, accel, state_dir):
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise VmError(MSG_NAME % (name,))
        if not isinstance(lab_id, str) or not LAB_ID_RE.match(lab_id):
            raise VmError(MSG_LAB_ID % (lab_id,))
        if not TAP_PREFIX_RE.match(tap_prefix or ''):
            raise VmError(MSG_TAP_PREFIX % (tap_prefix,))
        if accel not in ACCELS:
            raise VmError(MSG_ACCEL % (accel,))
        if not state_dir or not os.path.isabs(state_dir) or os.path.normpath(state_dir) == '/':
            raise VmError(MSG_STATE_DIR % (state_dir,))

    def tool(self, name):
        return self.tools.get(name, name)

    def _note(self, line):
        self.notes.append(line)
        self.log(line)

    # -- record and ownership -------------------------------------------
    def load(self):
        try:
            with open(self.files['record']) as handle:
                data = json.load(handle)
            return data if isinstance(data, dict) and data.get('marker') == self.mark else {}
        except (IOError, OSError, ValueError):
            return {}

    def save(self, record):
        record['marker'] = self.mark
        atomic_write(self.files['record'], json.dumps(record, indent=2, sort_keys=True) + '\n')

    def _is_ours(self, pid):
        argv = cmdline(pid)
        return any(argv[i] == '-name' and argv[i + 1] == self.mark for i in range(len(argv) - 1)) \
            and self.files['pid'] in argv

    def owned_pid(self, record=None):
        """Pid of this VM's QEMU when its start time and argv match the record (or, when the record has no
        pid yet, the pid file and the argv match: a crash between QEMU's start and the record)."""
        record = self.load() if record is None else record
        pid = record.get('pid')
        if pid and starttime(pid) == record.get('starttime') and self._is_ours(pid):
            return pid
        if not record.get('pid'):
            try:
                with open(self.files['pid']) as handle:
                    pid = int(handle.read().strip())
            except (IOError, OSError, ValueError):
                return None
            if starttime(pid) is not None and self._is_ours(pid):
                return pid
        return None

    def status(self):
        record = self.load()
        pid = self.owned_pid(record)
        return {'name': self.name, 'running': pid is not None, 'pid': pid, 'accel': record.get('accel'),
                'address': str(self.iface.ip) if self.iface else None, 'mac': self.mac, 'tap': self.tap,
                'console_log': self.files['console'], 'known_hosts': self.files['known_hosts']}

    # -- start -----------------------------------------------------------
    def start(self):
        """Boot the VM unless it runs; wait for an ssh login. Returns status() plus changed, accel,
        boot_seconds and notes (e.g. the KVM to TCG fallback)."""
        record = self.load()
        if self.owned_pid(record):
            result = self.status()
            result.update(changed=False, boot_seconds=None, ssh_seconds=None, notes=[])
            return result
        record = self.prepare()
        started = self.clock()
        accel = self._boot(record)
        try:
            self._wait_ssh(record, accel, started)
        except VmError:
            self.stop(timeout=0)  # nothing of a failed boot stays but its console logs
            raise
        result = self.status()
        now = self.clock()
        result.update(changed=True, accel=accel, boot_seconds=round(now - started, 1),
                      ssh_seconds=round(now - self._launched, 1), notes=self.notes)
        return result

    def prepare(self):
        """Everything up to QEMU's start: checks, the record (before anything is made), host key, overlay,
        tap and seed. Returns the record."""
        if self.iface is None:
            raise VmError(MSG_ADDRESS % (None, self.name))
        self._preflight()
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        record = dict(self.load(), name=self.name, lab_id=self.lab_id, pid=None, starttime=None)
        self.save(record)
        self.boot_files.ensure_host_key(self.iface.ip)
        self.boot_files.ensure_overlay(record, self.image)
        self.tap_device.ensure(record)
        self.boot_files.write_seed(self.hostname, self.iface, self.mac, self.key, self.gateway, self.apt_proxy)
        return record

    def _preflight(self):
        for name in ('kernel', 'initrd', 'disk'):
            if not os.path.isfile(self.image[name]):
                raise VmError(MSG_IMAGE % self.image[name])
        if not (os.path.isfile(self.key) and os.path.isfile(self.key + '.pub')):
            raise VmError(MSG_KEY % (self.key, self.key))
        self.tap_device.check_bridge()
