# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The boot of a lab VM: the accelerators to try, QEMU's launch, the KVM probe and fallback, the ssh login.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

With accel ``auto`` QEMU first starts with KVM when /dev/kvm opens; a QEMU
that does not start with KVM, or a kernel that shows no boot progress on the
console within the probe bound (a broken nested KVM stops after "Probing
EDD"), is killed and started again with TCG. Then the boot waits for an ssh
login as the lab user, with the pinned host key only.
"""

from __future__ import annotations

import os
import re
import shlex
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, port_open
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import starttime
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError, console_tail, read_text
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_qemu import KVM_DEVICE, kvm_usable, qemu_argv

ACCELS = ('auto', 'kvm', 'tcg')
LOGIN_USER = 'tcplab'
# The kernel got past its early boot (under a broken nested KVM nothing comes after "Probing EDD").
PROGRESS_RE = re.compile(r'Run /init as init process|Freeing unused kernel')

MSG_NO_KVM = 'accelerator kvm asked for lab VM %s, but %s cannot be opened: use accel auto or tcg'
MSG_KVM_FALLBACK = ('lab VM %s: no boot progress under KVM within %d s (console: %r); '
                    'falling back to TCG (software emulation)')
MSG_KVM_START_FALLBACK = 'lab VM %s: QEMU did not start with KVM (%s); falling back to TCG (software emulation)'
MSG_NO_KVM_NOTE = 'lab VM %s: %s cannot be opened; using TCG (software emulation)'
MSG_DIED = 'QEMU of lab VM %s exited during boot (accel %s); last lines of %s:\n%s'
MSG_NO_SSH = ('lab VM %s did not accept an ssh login as %s at %s within %d s (accel %s); '
              'last lines of its console %s:\n%s')
MSG_START = 'QEMU of lab VM %s did not start (no pid in %s); see %s'


class VmBoot:
    """The boot part of _vm.Vm (a mixin: it uses the VM's names, files, settings, record and _kill)."""

    def accels(self):
        """The accelerators to try, in order (auto: kvm then tcg when /dev/kvm opens)."""
        if self.accel == 'tcg':
            return ['tcg']
        usable = kvm_usable(self.tools.get('kvm_device', KVM_DEVICE))
        if self.accel == 'kvm':
            if not usable:
                raise VmError(MSG_NO_KVM % (self.name, KVM_DEVICE))
            return ['kvm']
        if not usable:
            self._note(MSG_NO_KVM_NOTE % (self.name, KVM_DEVICE))
            return ['tcg']
        return ['kvm', 'tcg']

    def _boot(self, record):
        accels = self.accels()
        for accel in accels:
            probing = accel == 'kvm' and len(accels) > 1
            try:
                self.launch(record, accel)
            except (CommandError, VmError) as exc:
                if not probing:
                    raise
                self._note(MSG_KVM_START_FALLBACK % (self.name, getattr(exc, 'msg', str(exc))))
                continue
            if probing and not self._progress(record):
                self.kvm_stalled(record)
                continue
            return accel
        return accels[-1]

    def launch(self, record, accel):
        """Start QEMU detached with accel; the record gets its pid and start time."""
        console = self.files['console']
        if os.path.exists(console):
            os.replace(console, console + '.1')  # the previous boot's console stays readable
        for stale in (self.files['pid'], self.files['qmp']):
            if os.path.exists(stale):
                os.unlink(stale)
        argv = qemu_argv(self.tool('qemu-system-x86_64'), self.mark, accel, self.image, self.files, self.tap,
                         self.mac, self.memory, self.cpus)
        self.log('lab VM %s: starting QEMU (%s)' % (self.name, accel))
        self._launched = self.clock()
        self.run(argv, what='starting QEMU for lab VM %s' % self.name)
        try:
            with open(self.files['pid']) as handle:
                pid = int(handle.read().strip())
        except (IOError, OSError, ValueError):
            raise VmError(MSG_START % (self.name, self.files['pid'], console))
        record.update(pid=pid, starttime=starttime(pid), accel=accel, argv=argv, started_at=time.time())
        self.save(record)

    def boot_progress(self, record):
        """'progressed' once the console shows the kernel past early boot, 'exited' when QEMU is gone,
        else 'booting' (one look, no waiting)."""
        if PROGRESS_RE.search(read_text(self.files['console'])):
            return 'progressed'
        return 'booting' if self.owned_pid(record) else 'exited'

    def _progress(self, record):
        """True once the console shows the kernel past early boot; False on a stall or exit."""
        deadline = self.clock() + self.kvm_probe_timeout
        while self.clock() < deadline:
            state = self.boot_progress(record)
            if state != 'booting':
                return state == 'progressed'
            self.sleep(0.5)
        return False

    def kvm_stalled(self, record):
        """Note the KVM stall and kill QEMU (before a start with TCG)."""
        self._note(MSG_KVM_FALLBACK % (self.name, self.kvm_probe_timeout, console_tail(self.files['console'], 1)))
        self._kill(record)

    def ssh_argv(self, *command):
        """ssh to the VM as the lab login, with the pinned host key only. command is an argv: each word
        is quoted for the remote shell, so it arrives as given."""
        return [self.tool('ssh'), '-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10',
                '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=%s' % self.files['known_hosts'],
                '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'IdentitiesOnly=yes', '-o', 'IdentityAgent=none',
                '-o', 'LogLevel=ERROR', '-i', self.key, '-l', LOGIN_USER, str(self.iface.ip), '--',
                ' '.join(shlex.quote(word) for word in command)]

    def login(self, record, accel):
        """One look: True once an ssh login as the lab user works; a VmError when QEMU has gone."""
        if not self.owned_pid(record):
            raise VmError(MSG_DIED % (self.name, accel, self.files['console'], console_tail(self.files['console'])))
        if not port_open(str(self.iface.ip), 22):
            return False
        rc, _out, _err = self.run(self.ssh_argv('true'), check=False)
        return rc == 0

    def no_login_error(self, accel):
        """The error of a boot that did not reach an ssh login within boot_timeout."""
        return VmError(MSG_NO_SSH % (self.name, LOGIN_USER, self.iface.ip, self.boot_timeout, accel,
                                     self.files['console'], console_tail(self.files['console'])))

    def _wait_ssh(self, record, accel, started):
        while self.clock() - started < self.boot_timeout:
            if self.login(record, accel):
                return
            self.sleep(1)
        raise self.no_login_error(accel)
