# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Booting the lab's VMs in parallel: the accelerator choice, QEMU's launches, the KVM probe, the logins.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

With ``vm_accel: auto`` the first VM probes KVM (a Debian kernel that makes
no progress under a nested KVM within 10 s falls back to TCG), and the
others start with the accelerator that worked; once a VM fell back, the
lab's other VMs start with TCG directly, and so do all lab VMs on this
machine until its next boot (a memo with the boot id in the image cache
directory). Then every VM's ssh login is awaited in one loop.
"""

from __future__ import annotations

import os
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import LabError
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_boot import MSG_KVM_START_FALLBACK, MSG_NO_KVM_NOTE
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_qemu import kvm_usable

KVM_MEMO = '.kvm-no-progress'
BOOT_ID = '/proc/sys/kernel/random/boot_id'
MSG_BOOT_FAILED = ('%d of %d lab VMs did not come up (each was stopped; its console log stays in its directory under '
                   '%s, and lab_state: absent removes everything):\n%s')
MSG_KNOWN_FALLBACK = ('lab VMs %s: KVM made no boot progress before on this machine (since its last boot); using TCG '
                      '(software emulation) directly - vm_accel: kvm forces KVM')


def boot_id(path=BOOT_ID):
    """This machine's boot id (a KVM that stalls stays so until the next boot)."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return None


class LabVmBoot:
    """The boot part of _lab_vm.LabVms (a mixin: it uses the lab, its manifest entries, settings, clock and sleep).
    A plan is {host, vm, config, record, pid}; a launch adds accel and launched."""

    def _launch(self, plan, accel, fallback=True):
        """Start QEMU; a KVM start that fails falls back to TCG (auto). Returns the accelerator."""
        vm, record = plan['vm'], plan['record']
        try:
            vm.launch(record, accel)
        except (CommandError, VmError) as exc:
            if accel != 'kvm' or self.accel != 'auto' or not fallback:
                self._fail_launch(plan, exc)
            vm._note(MSG_KVM_START_FALLBACK % (vm.name, getattr(exc, 'msg', str(exc))))
            self._fallen_back()
            return self._launch(plan, 'tcg')
        self.lab._note(['qemu-system-x86_64', '-name', vm.mark, '-accel', accel])
        plan.update(accel=accel, launched=self.clock())
        entry = self._entries()[vm.name]
        entry.update(pid=record.get('pid'), starttime=record.get('starttime'), accel=accel)
        self.lab._save(self.manifest.save())
        return accel

    def _fail_launch(self, plan, exc):
        plan['vm'].stop(timeout=0)
        raise LabError(getattr(exc, 'msg', str(exc)))

    def _memo_path(self):
        return os.path.join(self.cache_dir, KVM_MEMO)

    def _known_fallback(self):
        """Whether a VM of this lab, or any lab VM on this machine since its last boot, made no progress under KVM."""
        if self.manifest.data.get('kvm_fallback'):
            return True
        current = boot_id(self.boot_id_path)
        try:
            with open(self._memo_path()) as handle:
                return current is not None and handle.read().split()[:1] == [current]
        except (IOError, OSError):
            return False

    def _fallen_back(self):
        if not self.manifest.data.get('kvm_fallback'):
            self.manifest.data['kvm_fallback'] = True
            self.lab._save(self.manifest.save())
        current = boot_id(self.boot_id_path)
        if current and os.path.isdir(self.cache_dir):
            # the image cache is the collection's own machine-wide directory; the memo is not lab state
            atomic_write(self._memo_path(), '%s lab VMs made no boot progress under KVM since this boot id\n' % current,
                         0o644)

    def _boot(self, plans):
        """Start every QEMU: auto probes KVM with the first VM; once one fell back, the others start with TCG."""
        usable = self.accel != 'tcg' and kvm_usable(self.kvm_device)
        rest, accel, probe = plans, self.accel, False
        names = ', '.join(plan['vm'].name for plan in plans)
        if self.accel == 'auto':
            if not usable:
                self._note(MSG_NO_KVM_NOTE % (names, self.kvm_device))
                accel = 'tcg'
            elif self._known_fallback():
                self._note(MSG_KNOWN_FALLBACK % names)
                accel = 'tcg'
            else:
                first, rest = plans[0], plans[1:]
                accel = self._probe([first])
                probe = accel == 'kvm'
        for plan in rest:
            self._launch(plan, accel)
        if probe and rest:
            self._probe(rest, launched=True)

    def _probe(self, plans, launched=False):
        """Launch with KVM (unless launched) and watch the consoles for boot progress; a VM without it within the
        probe bound is killed and started with TCG. Returns kvm, or tcg once one fell back."""
        pending = [plan for plan in plans if launched or self._launch(plan, 'kvm') == 'kvm']
        deadline = self.clock() + self.kvm_probe_timeout
        result = 'kvm' if len(pending) == len(plans) else 'tcg'
        while pending:
            for plan in list(pending):
                state = plan['vm'].boot_progress(plan['record'])
                if state == 'progressed':
                    pending.remove(plan)
                elif state == 'exited' or self.clock() >= deadline:
                    pending.remove(plan)
                    plan['vm'].kvm_stalled(plan['record'])
                    self._fallen_back()
                    self._launch(plan, 'tcg')
                    result = 'tcg'
            if pending:
                self.sleep(0.5)
        return result

    def _wait_logins(self, plans):
        """Wait for every VM's ssh login in one loop; a VM that dies or stays unreachable is stopped and reported."""
        now = self.clock()
        for plan in plans:
            plan.setdefault('launched', now)
        pending, failures = list(plans), []
        while pending:
            for plan in list(pending):
                vm, entry = plan['vm'], self._entries().get(plan['host']['name']) or {}
                accel = plan.get('accel') or entry.get('accel') or plan['record'].get('accel')
                try:
                    if vm.login(plan['record'], accel):
                        pending.remove(plan)
                        self._confirmed(plan, entry)
                    elif self.clock() - plan['launched'] > self.boot_timeout:
                        raise vm.no_login_error(accel)
                except VmError as exc:
                    pending.remove(plan)
                    failures.append(str(exc))
                    vm.stop(timeout=0)
                    entry.update(pid=None, starttime=None)
                    self.lab._save(self.manifest.save())
            if pending:
                self.sleep(1)
        if failures:
            raise LabError(MSG_BOOT_FAILED % (len(failures), len(plans), self.root, '\n\n'.join(failures)))

    def _confirmed(self, plan, entry):
        """Record the boot-to-login time of a VM that this run started, or of one a run that died started."""
        if 'accel' in plan:
            entry['boot_seconds'] = round(self.clock() - plan['launched'], 1)
        elif entry.get('boot_seconds') is None and plan['record'].get('started_at'):
            entry['boot_seconds'] = round(time.time() - plan['record']['started_at'], 1)
        else:
            return
        self.lab._save(self.manifest.save())
