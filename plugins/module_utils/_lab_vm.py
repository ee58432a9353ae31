# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
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
"""

from __future__ import annotations

import os
import shutil
import signal
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._apt_proxy import DEFAULT_PORT, AptProxy, AptProxyError
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import LabError, lab_id, remove_path
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, starttime
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm import (
    ACCELS, DEFAULT_MEMORY, KVM_DEVICE, LOGIN_USER, MSG_KVM_START_FALLBACK, MSG_NO_KVM, MSG_NO_KVM_NOTE, MSG_TOOL,
    TOOLS as VM_TOOLS, Vm, VmError, find_orphans, kvm_usable, marker)
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import (
    DEFAULT_CACHE_DIR, ImageCache, VmImageError)

VM_DIR = 'vms'
PROXY_DIR = 'apt-proxy'
VM_PYTHON = '/usr/bin/python3'
TAP_PREFIX = 'tkv'
BOOT_TIMEOUT = 300
STOP_TIMEOUT = 30
KVM_PROBE_TIMEOUT = 10
MEMORY_RANGE = (128, 65536)
TOOLS = dict(VM_TOOLS, **{'apt-cacher-ng': 'apt-cacher-ng', 'setpriv': 'util-linux'})

MSG_ACCEL = 'vm_accel must be one of auto, kvm, tcg; got %r'
MSG_MEMORY = 'vm_memory must be an integer %d..%d (MiB), got %r'
MSG_PORT = 'apt_proxy_port must be an integer 1..65535, got %r'
MSG_BOOT_FAILED = ('%d of %d lab VMs did not come up (each was stopped; its console log stays in its directory under '
                   '%s, and lab_state: absent removes everything):\n%s')
MSG_KNOWN_FALLBACK = ('lab VMs %s: KVM made no boot progress before on this machine (since its last boot); using TCG '
                      '(software emulation) directly - vm_accel: kvm forces KVM')
KVM_MEMO = '.kvm-no-progress'
BOOT_ID = '/proc/sys/kernel/random/boot_id'
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


def boot_id(path=BOOT_ID):
    """This machine's boot id (a KVM that stalls stays so until the next boot)."""
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return None


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


class LabVms:
    """The VMs of one lab (`lab` is the _lab.Lab that owns the manifest, the runner and the change log)."""

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

    def _cache(self):
        try:
            return ImageCache(self.lab.run, self.cache_dir, log=None)
        except VmImageError as exc:
            raise LabError(str(exc))

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

    def ensure_images(self, hosts):
        """The base image of each release the VMs use: built unless cached (always with image_rebuild)."""
        cache = self._cache()
        for release in sorted({host['release'] for host in hosts}):
            try:
                if self.lab.check_mode:
                    spec = cache.spec(release)
                    info = None if self.rebuild else cache.cached(spec)
                    if info is None:
                        self.lab._note(['mmdebstrap', '--variant=apt', release, cache.entry_dir(spec)])
                        info = {'release': release, 'key': spec['key'], 'build_id': None, 'built': True}
                else:
                    info = cache.ensure(release, rebuild=self.rebuild)
                    if info['built']:
                        self.lab._note(['mmdebstrap', '--variant=apt', release, info['dir']])
            except VmImageError as exc:
                raise LabError(str(exc))
            self.images[release] = info

    # -- the apt proxy ---------------------------------------------------
    def _proxy(self, address, port):
        tools = {name: self.tools[name] for name in ('apt-cacher-ng', 'setpriv') if self.tools.get(name)}
        return AptProxy(self.lab.run, os.path.join(self.lab.state_dir, PROXY_DIR), address, port, tools=tools)

    def ensure_proxy(self, address):
        """The lab's apt proxy on the bridge address; returns its URL."""
        entry = self.manifest.data.get('apt_proxy') or {}
        if entry and (entry.get('address'), entry.get('port')) != (address, self.proxy_port):
            self.stop_proxy(purge=False)  # another bridge address or port: the cache stays
        proxy = self._proxy(address, self.proxy_port)
        self.proxy = proxy
        if self.lab.check_mode:
            if proxy.owned_pid() is None:
                self.lab._note(['apt-cacher-ng', '-c', proxy.dirs['conf']])
            return proxy.url
        self.manifest.data['apt_proxy'] = dict(entry, state_dir=proxy.state_dir, address=address, port=self.proxy_port)
        self.lab._save(self.manifest.save())
        try:
            started = proxy.start()
        except (AptProxyError, CommandError) as exc:
            raise LabError(getattr(exc, 'msg', str(exc)))
        if started['changed']:
            self.lab._note(['apt-cacher-ng', '-c', proxy.dirs['conf']])
        record = proxy.load()
        self.manifest.data['apt_proxy'].update(pid=record.get('pid'), starttime=record.get('starttime'))
        self.lab._save(self.manifest.save())
        return proxy.url

    def stop_proxy(self, purge=True):
        """Stop the lab's proxy (proven by its record or its -c argv); with purge also remove its directory."""
        entry = self.manifest.data.get('apt_proxy') or {}
        directory = os.path.join(self.lab.state_dir, PROXY_DIR)
        if not entry and not os.path.isdir(directory):
            return
        # the address only matters to start(); stop() finds the process by its record or its -c argv
        proxy = self._proxy(entry.get('address') or '0.0.0.0', entry.get('port') or self.proxy_port)
        if self.lab.check_mode:
            if proxy.owned_pid() is not None or os.path.isdir(directory):
                self.lab._note(['kill', '-TERM', 'apt-cacher-ng -c %s' % proxy.dirs['conf']])
            return
        stopped = proxy.stop(purge=purge)
        if stopped['changed']:
            self.lab._note(['kill', '-TERM', 'apt-cacher-ng -c %s' % proxy.dirs['conf']])
        if entry:
            self.manifest.data['apt_proxy'] = None
            self.lab._save(self.manifest.save())

    # -- removing VMs ----------------------------------------------------
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

    def summary(self):
        """What the module returns about the images and the proxy."""
        images = [{key: info.get(key) for key in ('release', 'key', 'dir', 'built', 'seconds', 'kernel_version')}
                  for _release, info in sorted(self.images.items())]
        proxy = self.proxy.status() if self.proxy is not None and not self.lab.check_mode else {}
        return {'images': images, 'apt_proxy': {key: proxy.get(key) for key in ('url', 'pid', 'cache_dir')} if proxy else {},
                'notes': list(self.notes)}
