# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""QEMU for a lab VM: its command line, KVM, its monitor (QMP), the VM's ssh port, orphans.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

QEMU boots the image's kernel and initrd directly, headless and detached,
with the serial console logged to a file, the seed passed through fw_cfg
(see _vm_files) and a QMP monitor socket for the ACPI power-off.
"""

from __future__ import annotations

import json
import os
import socket

from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, pids
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import MARKER_PREFIX, VmError
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_files import SEED_NAME

DEFAULT_MEMORY = 512
KVM_DEVICE = '/dev/kvm'

# Drivers of emulated hardware a lab VM does not use: udev would load them at every boot, and under TCG
# each costs a share of the boot (the floppy controller probes for seconds). Not evdev: it gives the ACPI
# power button its input device, on which systemd-logind hears the power-off a stop sends through QMP.
UNUSED_MODULES = ('floppy', 'ata_piix', 'ata_generic', 'pata_acpi', 'i2c_piix4', 'pcspkr', 'serio_raw', 'psmouse',
                  'kvm', 'kvm_amd', 'kvm_intel', 'joydev', 'parport_pc', 'ppdev', 'sg', 'bochs', 'drm')
# Boot faster under TCG without changing what the experiment measures: no crypto self-tests, no
# speculative-execution mitigations (lab VMs run only the lab's code), trust the emulated TSC.
FAST_BOOT = ('mitigations=off', 'cryptomgr.notests', 'no_timer_check', 'tsc=reliable', 'systemd.show_status=error')


def kernel_command_line():
    base = ('root=/dev/vda', 'rootfstype=ext4', 'rootflags=errors=remount-ro', 'rw', 'console=ttyS0', 'net.ifnames=0')
    return ' '.join(base + FAST_BOOT + ('modprobe.blacklist=%s' % ','.join(UNUSED_MODULES),))


def qemu_argv(qemu, mark, accel, image, files, tap, mac, memory=DEFAULT_MEMORY, cpus=1):
    """The QEMU command of a lab VM (detached, headless, console to a file)."""
    return [
        qemu, '-name', mark, '-machine', 'pc,i8042=off,smbus=off,vmport=off', '-accel', accel,
        '-m', str(memory), '-smp', str(cpus), '-nodefaults', '-no-user-config', '-display', 'none',
        '-serial', 'file:%s' % files['console'],
        '-qmp', 'unix:%s,server=on,wait=off' % files['qmp'],
        '-kernel', image['kernel'], '-initrd', image['initrd'], '-append', kernel_command_line(),
        '-drive', 'file=%s,if=virtio,format=qcow2,discard=unmap' % files['overlay'],
        '-netdev', 'tap,id=net0,ifname=%s,script=no,downscript=no' % tap,
        '-device', 'virtio-net-pci,netdev=net0,mac=%s' % mac,
        '-device', 'virtio-rng-pci',
        '-fw_cfg', 'name=%s,file=%s' % (SEED_NAME, files['seed']),
        '-daemonize', '-pidfile', files['pid'],
    ]


def kvm_usable(device=KVM_DEVICE):
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def qmp_command(path, command, timeout=5.0):
    """Run one QMP command on a monitor socket; returns its "return" value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        stream = sock.makefile('rwb')
        _qmp_reply(stream, greeting=True)
        for request in ({'execute': 'qmp_capabilities'}, {'execute': command}):
            stream.write(json.dumps(request).encode('utf-8') + b'\n')
            stream.flush()
            result = _qmp_reply(stream)
        return result


def _qmp_reply(stream, greeting=False):
    while True:
        line = stream.readline()
        if not line:
            raise VmError('the QEMU monitor closed the connection')
        message = json.loads(line.decode('utf-8'))
        if greeting and 'QMP' in message:
            return message
        if 'error' in message:
            raise VmError('QEMU monitor: %s' % message['error'].get('desc', message['error']))
        if 'return' in message:
            return message['return']


def find_orphans(lab_id, candidates=None, read=cmdline):
    """Pids of QEMU processes whose -name marks them as VMs of lab_id (for an audit after a crash)."""
    prefix = '%s:%s:' % (MARKER_PREFIX, lab_id)
    found = []
    for pid in candidates if candidates is not None else pids():
        argv = read(pid)
        if any(argv[i] == '-name' and argv[i + 1].startswith(prefix) for i in range(len(argv) - 1)):
            found.append(pid)
    return found
