# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The stop of a lab VM: an ACPI power-off through QEMU's monitor, a kill after the bound, the cleanup.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

Only a QEMU proven ours (the VM's record: pid, start time, marker in its
argv) is signalled; only a tap proven ours is deleted. The console logs stay.
"""

from __future__ import annotations

import errno
import os
import signal

from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import wait_gone
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_qemu import qmp_command

# What a stop removes of a VM's directory (the host key with its .pub); the console logs stay.
REMOVED = ('overlay', 'seed', 'qmp', 'pid', 'host_key', 'known_hosts', 'record')


class VmStop:
    """The stop part of _vm.Vm (a mixin: it uses the VM's record, owned_pid, files and tap)."""

    def _wait_exit(self, pid, timeout):
        return wait_gone(pid, timeout, step=0.2, clock=self.clock, sleep=self.sleep)

    def kill(self, record):
        """SIGKILL this VM's QEMU (when proven ours); True when there was one."""
        return self._kill(record)

    def _kill(self, record):
        pid = self.owned_pid(record)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise
        self._wait_exit(pid, 10)
        return True

    def begin_stop(self, acpi=True):
        """Ask a running VM to power off (ACPI, through the QMP monitor) without waiting; see finish_stop."""
        record = self.load()
        pid = self.owned_pid(record)
        sent = False
        if pid is not None:
            self.log('lab VM %s: powering off' % self.name)
            if acpi:
                try:
                    qmp_command(self.files['qmp'], 'system_powerdown')
                    sent = True
                except (OSError, ValueError, VmError):
                    sent = False
        return {'record': record, 'pid': pid, 'acpi': sent, 'since': self.clock()}

    def finish_stop(self, begun, timeout=60):
        """Wait for the power-off begun by begin_stop (kill once timeout s have passed since), then remove
        the tap, overlay, seed and keys of this VM. The console logs stay.
        Returns {name, changed, stopped: acpi | killed | None}."""
        record, pid, how = begun['record'], begun['pid'], None
        if pid is not None:
            remaining = max(0.0, timeout - (self.clock() - begun['since']))
            if begun['acpi'] and self._wait_exit(pid, remaining):
                how = 'acpi'
            else:
                self._kill(record)
                how = 'killed'
        changed = how is not None
        if os.path.isdir(self.state_dir):
            changed = self.tap_device.remove(record) or changed
            changed = self._remove_files() or changed
        return {'name': self.name, 'changed': changed, 'stopped': how}

    def _remove_files(self):
        changed = False
        for part in REMOVED:
            for path in (self.files[part], self.files[part] + '.pub') if part == 'host_key' else (self.files[part],):
                if os.path.lexists(path):
                    os.unlink(path)
                    changed = True
        return changed

    def stop(self, timeout=60):
        """ACPI power-off (kill after timeout s; at once with timeout 0), then remove the tap, overlay, seed
        and keys of this VM. The console logs stay. Returns {name, changed, stopped: acpi | killed | None}."""
        return self.finish_stop(self.begin_stop(acpi=timeout > 0), timeout)
