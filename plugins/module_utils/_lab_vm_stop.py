# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Removing the lab's VMs: power-offs in parallel, QEMUs of a crashed run, their directories.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

A VM is the lab's when the manifest lists it or its directory under the
lab's vms/ holds a record; its QEMU is signalled only when proven by that
record (pid, start time, the marker in QEMU's argv). A QEMU of this lab whose
record was lost is found by its marker and its pid file under the lab's vms/.
"""

from __future__ import annotations

import os
import signal
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import remove_path
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, starttime
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm import Vm
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError, marker
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_qemu import find_orphans


def kill_proven(pid, argv, timeout=10.0):
    """SIGKILL pid if it still runs with argv (a pid reused meanwhile is left alone); wait until it has gone."""
    if cmdline(pid) != argv:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while starttime(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


class LabVmStop:
    """The removal part of _lab_vm.LabVms (a mixin: it uses the lab, its manifest entries and _vm)."""

    def _known_names(self):
        """VMs of this lab: listed in the manifest, or with a directory and a record under the lab's vms/."""
        names = set(self._entries())
        try:
            names |= {name for name in os.listdir(self.root) if os.path.isfile(os.path.join(self.root, name, Vm.RECORD))}
        except OSError:
            pass
        return sorted(names)

    def _stop_many(self, names, acpi=True):
        """Power off VMs in parallel (ACPI, then kill after the bound; without acpi kill at once) and remove
        their directories."""
        vms = []
        for name in names:
            entry = self._entries().get(name) or {}
            try:
                vms.append(self._vm(name, entry.get('address')))
            except VmError:
                continue  # not a name this lab could have made
        if self.lab.check_mode:
            for vm in vms:
                if vm.owned_pid() is not None or os.path.isdir(vm.state_dir):
                    self.lab._note(['system_powerdown', vm.mark])
            return
        begun = [(vm, vm.begin_stop(acpi=acpi)) for vm in vms]
        forgotten = False
        for vm, state in begun:
            result = vm.finish_stop(state, self.stop_timeout if acpi else 0)
            if result['changed'] or os.path.isdir(vm.state_dir):
                self.lab._note(['system_powerdown' if result['stopped'] == 'acpi' else 'kill', vm.mark])
            if vm.owned_pid() is None:
                remove_path(vm.state_dir)
                forgotten = self._entries().pop(vm.name, None) is not None or forgotten
        if forgotten:
            self.lab._save(self.manifest.save())

    def reap_orphans(self, keep=(), keep_names=()):
        """Kill QEMUs of this lab that no VM record owns (a crashed run's): proven by the marker with this lab's
        id and a pid file under this lab's vms/. Then clean up their VMs, but for names in keep_names."""
        prefix = self.root.rstrip('/') + '/'
        for pid in find_orphans(self.lab_id):
            argv = cmdline(pid)
            pairs = dict(zip(argv, argv[1:]))
            if pid in keep or not pairs.get('-pidfile', '').startswith(prefix):
                continue
            name = pairs.get('-name', '').rsplit(':', 1)[-1]
            self.lab._note(['kill', '-KILL', str(pid), marker(self.lab_id, name)])
            if self.lab.check_mode:
                continue
            kill_proven(pid, argv)
            if name not in keep_names:
                try:
                    self._vm(name).stop(timeout=0)
                except VmError:
                    pass

    def remove_unlisted(self, wanted):
        self._stop_many([name for name in self._known_names() if name not in wanted])

    def absent(self):
        """Stop every VM of the lab, a crashed run's too, and the proxy; remove their directories."""
        self._stop_many(self._known_names())
        self.reap_orphans()
        if not self.lab.check_mode and os.path.isdir(self.root) and not os.listdir(self.root):
            os.rmdir(self.root)
        self.stop_proxy(purge=True)
