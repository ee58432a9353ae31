# The lab's VMs (_lab_vm): settings and tools checked before any change, the manifest entry written
# before a VM is made, the accelerator choice when VMs boot in parallel (one KVM probe, then TCG
# directly once one fell back), logins awaited together with clear failures, kept and restarted
# VMs, and removal proven by records and markers (real stand-in processes for QEMU and
# apt-cacher-ng). With TCPLAB_VM_TESTS=1 (as root) one real lab - a namespace and a bookworm VM - is
# brought up with the role (its controller SIGKILLed mid-boot first), pinged, and removed.
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _lab_vm, _lab_vm_boot
from ansible_collections.tcplab.keepalive.plugins.module_utils._apt_proxy import AptProxy
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab import Lab, LabError
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import lab_id
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, starttime
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm import MSG_IMAGE, MSG_TOOL
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError, marker
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_boot import MSG_KVM_FALLBACK, MSG_NO_KVM_NOTE
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import MSG_DISK, ImageCache, VmImageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
REAL = os.environ.get('TCPLAB_VM_TESTS') == '1'


class FakeRunner:
    """Records argv; `ip -j` queries find nothing."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, check=True, ok_rc=(0,), data=None, what=None):
        self.calls.append(list(argv))
        return (1, '', 'Device does not exist.') if argv[:2] == ['ip', '-j'] else (0, '', '')


def make_lab(tmp_path, check_mode=False, **params):
    base = {'bridge': 'tkvi0', 'netns_prefix': 'tkvi-', 'state_dir': str(tmp_path / 'lab'),
            'netns_dir': str(tmp_path / 'netns'), 'image_cache': str(tmp_path / 'cache')}
    lab = Lab(FakeRunner(), dict(base, **params), check_mode=check_mode, binaries={'ip': 'ip'})
    lab.vms.stop_timeout = 0
    return lab


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class FakeVm:
    """What LabVms uses of a _vm.Vm. progress: the console under KVM ('progressed', or 'booting' for a stall)."""

    def __init__(self, name, progress='progressed', kvm_starts=True, logs_in=True, running=False):
        self.name, self.mark, self.progress, self.kvm_starts, self.logs_in = name, marker('x', name), progress, kvm_starts, logs_in
        self.launches, self.notes, self.stopped, self.running = [], [], [], running
        self.state_dir = '/nonexistent/%s' % name

    def launch(self, record, accel):
        if accel == 'kvm' and not self.kvm_starts:
            raise VmError('qemu-system-x86_64: failed to initialize kvm')
        self.launches.append(accel)
        record.update(pid=4242, starttime=1, accel=accel)

    def boot_progress(self, record):
        return self.progress if self.launches[-1] == 'kvm' else 'booting'

    def kvm_stalled(self, record):
        self._note(MSG_KVM_FALLBACK % (self.name, 10, ''))

    def _note(self, line):
        self.notes.append(line)

    def login(self, record, accel):
        if self.logs_in == 'dies':
            raise VmError('QEMU of lab VM %s exited during boot' % self.name)
        return self.logs_in

    def no_login_error(self, accel):
        return VmError('lab VM %s did not accept an ssh login; last lines of its console:\nPanic' % self.name)

    def stop(self, timeout=60):
        self.stopped.append(timeout)
        self.running = False
        return {'name': self.name, 'changed': True, 'stopped': 'killed'}

    def load(self):
        return {'pid': 4242, 'starttime': 1, 'accel': 'tcg'} if self.running else {}

    def owned_pid(self, record=None):
        return 4242 if self.running else None

    def begin_stop(self, acpi=True):
        return {}

    def finish_stop(self, begun, timeout=60):
        return self.stop(timeout)


def plans_of(lab, vms):
    for vm in vms:
        lab.manifest.data['vms'][vm.name] = {}
    return [{'vm': vm, 'record': {}, 'host': {'name': vm.name, 'release': 'bookworm'}} for vm in vms]


@pytest.fixture
def clocked(tmp_path):
    def make(**params):
        lab = make_lab(tmp_path, **params)
        clock = FakeClock()
        lab.vms.clock, lab.vms.sleep = clock, clock.sleep
        kvm = tmp_path / 'kvm'
        kvm.write_text('')
        lab.vms.kvm_device = str(kvm)
        return lab
    return make


# -- settings and tools, before anything changes -----------------------------

@pytest.mark.parametrize('accel, memory, port, message', [
    ('fast', 512, 3142, _lab_vm.MSG_ACCEL % ('fast',)),
    ('auto', 64, 3142, _lab_vm.MSG_MEMORY % (128, 65536, 64)),
    ('auto', True, 3142, _lab_vm.MSG_MEMORY % (128, 65536, True)),
    ('auto', 512, 0, _lab_vm.MSG_PORT % (0,)),
    ('auto', 512, 70000, _lab_vm.MSG_PORT % (70000,)),
])
def test_settings_out_of_range(accel, memory, port, message):
    with pytest.raises(LabError) as exc:
        _lab_vm.check_settings(accel, memory, port)
    assert str(exc.value) == message


def test_missing_qemu_names_its_package():
    def which(name, path=None):
        return None if name == 'qemu-system-x86_64' else '/usr/bin/' + name
    with pytest.raises(LabError) as exc:
        _lab_vm.find_tools(which=which)
    assert str(exc.value) == MSG_TOOL % ('qemu-system-x86_64', 'qemu-system-x86')
    assert 'apt-get install qemu-system-x86' in str(exc.value)


def test_missing_apt_cacher_ng_names_its_package():
    with pytest.raises(LabError) as exc:
        _lab_vm.find_tools(which=lambda name, path=None: None if name == 'apt-cacher-ng' else '/usr/bin/' + name)
    assert str(exc.value) == MSG_TOOL % ('apt-cacher-ng', 'apt-cacher-ng')


def test_not_enough_disk_for_the_image_is_the_lab_error(tmp_path, monkeypatch):
    lab = make_lab(tmp_path, image_cache=str(tmp_path / 'cache'))
    message = MSG_DISK % (str(tmp_path / 'cache'), 100, 3072)

    def ensure(self, release, rebuild=False):
        raise VmImageError(message)
    monkeypatch.setattr(ImageCache, 'ensure', ensure)
    monkeypatch.setattr(ImageCache, 'spec', lambda self, release: {'release': release, 'key': 'k'})
    with pytest.raises(LabError) as exc:
        lab.vms.ensure_images([{'name': 'vm1', 'kind': 'vm', 'release': 'bookworm'}])
    assert str(exc.value) == message
    assert not os.path.exists(lab.state_dir)


THREE = [{'name': 'vm-' + r, 'kind': 'vm', 'release': r} for r in ('bookworm', 'bullseye', 'trixie')]


def fake_builds(monkeypatch, seconds=0.4, fail=None):
    """ImageCache.ensure as a build that takes seconds (the real one is mmdebstrap: TCPLAB_VM_TESTS); the spans
    of the builds, and a failure for release fail."""
    spans = {}

    def ensure(self, release, rebuild=False):
        start = time.monotonic()
        time.sleep(seconds)
        spans[release] = (start, time.monotonic())
        if release == fail:
            raise VmImageError('the %s build failed' % release)
        return {'release': release, 'key': 'k', 'dir': '/cache/' + release, 'built': True}
    monkeypatch.setattr(ImageCache, 'ensure', ensure)
    monkeypatch.setattr(ImageCache, 'spec', lambda self, release: {'release': release, 'key': 'k'})
    monkeypatch.setattr(ImageCache, 'cached', lambda self, spec: None)
    return spans


def test_the_releases_images_are_built_side_by_side(tmp_path, monkeypatch):
    lab = make_lab(tmp_path)
    spans = fake_builds(monkeypatch)
    lab.vms.ensure_images(THREE)
    assert sorted(lab.vms.images) == ['bookworm', 'bullseye', 'trixie']
    assert max(start for start, end in spans.values()) < min(end for start, end in spans.values())  # all at once
    assert sorted(a[3] for a in lab.actions if a[0] == 'mmdebstrap') == ['/cache/bookworm', '/cache/bullseye', '/cache/trixie']


def test_a_failed_build_is_the_lab_error_once_every_build_ended(tmp_path, monkeypatch):
    lab = make_lab(tmp_path)
    spans = fake_builds(monkeypatch, fail='bullseye')
    with pytest.raises(LabError) as exc:
        lab.vms.ensure_images(THREE)
    assert str(exc.value) == 'the bullseye build failed'
    assert sorted(spans) == ['bookworm', 'bullseye', 'trixie']  # the others were not abandoned half-built


def test_builds_side_by_side_need_room_for_all_of_them(tmp_path, monkeypatch):
    lab = make_lab(tmp_path)
    spans = fake_builds(monkeypatch)
    free = os.statvfs(str(tmp_path)).f_bavail * os.statvfs(str(tmp_path)).f_frsize
    monkeypatch.setattr('ansible_collections.tcplab.keepalive.plugins.module_utils._lab_vm_supply.MIN_FREE_BYTES',
                        free // 2)
    with pytest.raises(LabError) as exc:
        lab.vms.ensure_images(THREE)
    assert str(exc.value).startswith('not enough free space in %s to build a lab VM image' % (tmp_path / 'cache'))
    assert spans == {} and lab.vms.images == {}  # refused before any build started


def test_bad_image_cache_is_refused(tmp_path):
    lab = make_lab(tmp_path, image_cache='relative/cache')
    with pytest.raises(LabError) as exc:
        lab.vms.ensure_images([{'name': 'vm1', 'kind': 'vm', 'release': 'bookworm'}])
    assert 'image cache directory must be an absolute path' in str(exc.value)


def test_vm_state_dir_too_long_is_refused_before_changes(tmp_path):
    lab = make_lab(tmp_path, state_dir='/run/' + 'x' * 90)
    lab.vms.tools = {}
    with pytest.raises(LabError) as exc:
        lab.vms.preflight([{'name': 'vm1', 'kind': 'vm', 'release': 'bookworm'}], {'vm1': '198.18.0.10'}, 24)
    assert 'too long for the QEMU monitor socket' in str(exc.value)


# -- the manifest -------------------------------------------------------------

def test_the_manifest_lists_a_vm_before_anything_of_it_is_made(tmp_path):
    lab = make_lab(tmp_path)
    image = {'release': 'bookworm', 'key': 'k1', 'build_id': 'k1-1', 'disk': str(tmp_path / 'none.img'),
             'kernel': str(tmp_path / 'vmlinuz'), 'initrd': str(tmp_path / 'initrd')}
    vm = lab.vms._vm('vm1', '198.18.0.10/24', image, 'http://198.18.0.1:3142')
    plan = {'vm': vm, 'host': {'name': 'vm1', 'release': 'bookworm'}, 'record': {},
            'config': _lab_vm.vm_config(image, 512, '198.18.0.10/24', 'http://198.18.0.1:3142')}
    with pytest.raises(LabError) as exc:
        lab.vms._prepare(plan)
    assert str(exc.value) == MSG_IMAGE % image['kernel']
    with open(os.path.join(lab.state_dir, 'lab.json')) as handle:
        entry = json.load(handle)['vms']['vm1']
    assert entry == {
        'state_dir': os.path.join(lab.state_dir, 'vms', 'vm1'), 'release': 'bookworm', 'address': '198.18.0.10/24',
        'image_key': 'k1', 'tap': vm.tap, 'tap_ifindex': None, 'marker': marker(lab_id(lab.state_dir), 'vm1'),
        'pid': None, 'starttime': None, 'accel': None, 'boot_seconds': None, 'config': plan['config']}


def test_launch_records_pid_start_time_and_accel(clocked):
    lab = clocked(vm_accel='tcg')
    plans = plans_of(lab, [FakeVm('vm1')])
    lab.vms._boot(plans)
    with open(os.path.join(lab.state_dir, 'lab.json')) as handle:
        entry = json.load(handle)['vms']['vm1']
    assert entry == {'pid': 4242, 'starttime': 1, 'accel': 'tcg'}
    assert ['qemu-system-x86_64', '-name', marker('x', 'vm1'), '-accel', 'tcg'] in lab.actions


# -- the accelerator, booting in parallel -----------------------------------------

def test_auto_probes_kvm_once_and_then_starts_the_others_with_tcg(clocked):
    lab = clocked()
    vms = [FakeVm('a', progress='booting'), FakeVm('b'), FakeVm('c')]
    lab.vms._boot(plans_of(lab, vms))
    assert [vm.launches for vm in vms] == [['kvm', 'tcg'], ['tcg'], ['tcg']]
    assert vms[0].notes == [MSG_KVM_FALLBACK % ('a', 10, '')]
    assert lab.manifest.data['kvm_fallback'] is True
    assert lab.vms.clock() <= 10.5  # one probe, not one per VM


def test_auto_keeps_kvm_and_probes_the_others_together(clocked):
    lab = clocked()
    vms = [FakeVm('a'), FakeVm('b', progress='booting'), FakeVm('c')]
    lab.vms._boot(plans_of(lab, vms))
    assert [vm.launches for vm in vms] == [['kvm'], ['kvm', 'tcg'], ['kvm']]
    assert lab.manifest.data['kvm_fallback'] is True
    assert lab.vms.clock() <= 10.5


def test_auto_after_a_fallback_in_this_lab_uses_tcg_at_once(clocked):
    lab = clocked()
    lab.manifest.data['kvm_fallback'] = True
    vms = [FakeVm('a'), FakeVm('b')]
    lab.vms._boot(plans_of(lab, vms))
    assert [vm.launches for vm in vms] == [['tcg'], ['tcg']]
    assert lab.vms.notes == [_lab_vm_boot.MSG_KNOWN_FALLBACK % 'a, b']
    assert lab.vms.clock() == 0


def test_a_fall_back_is_remembered_on_this_machine_until_its_next_boot(clocked, tmp_path):
    (tmp_path / 'cache').mkdir()
    first = clocked(state_dir=str(tmp_path / 'lab1'))
    first.vms.boot_id_path = str(tmp_path / 'boot_id')
    (tmp_path / 'boot_id').write_text('boot-1\n')
    first.vms._boot(plans_of(first, [FakeVm('a', progress='booting')]))
    assert (tmp_path / 'cache' / _lab_vm_boot.KVM_MEMO).read_text().startswith('boot-1 ')
    # another lab on the same machine, same boot: TCG at once, no probe
    other = clocked(state_dir=str(tmp_path / 'lab2'))
    other.vms.boot_id_path = str(tmp_path / 'boot_id')
    vm = FakeVm('b')
    other.vms._boot(plans_of(other, [vm]))
    assert vm.launches == ['tcg'] and other.vms.notes == [_lab_vm_boot.MSG_KNOWN_FALLBACK % 'b']
    # after a reboot of the machine KVM is probed again
    (tmp_path / 'boot_id').write_text('boot-2\n')
    third = clocked(state_dir=str(tmp_path / 'lab3'))
    third.vms.boot_id_path = str(tmp_path / 'boot_id')
    vm = FakeVm('c')
    third.vms._boot(plans_of(third, [vm]))
    assert vm.launches == ['kvm']


def test_auto_without_kvm_device_is_tcg_with_a_note(clocked, tmp_path):
    lab = clocked()
    lab.vms.kvm_device = str(tmp_path / 'no-kvm')
    vms = [FakeVm('a')]
    lab.vms._boot(plans_of(lab, vms))
    assert vms[0].launches == ['tcg'] and lab.vms.notes == [MSG_NO_KVM_NOTE % ('a', lab.vms.kvm_device)]


def test_auto_when_qemu_does_not_start_with_kvm(clocked):
    lab = clocked()
    vms = [FakeVm('a', kvm_starts=False), FakeVm('b')]
    lab.vms._boot(plans_of(lab, vms))
    assert [vm.launches for vm in vms] == [['tcg'], ['tcg']]
    assert 'failed to initialize kvm' in vms[0].notes[0]


def test_kvm_forced_that_does_not_start_is_an_error_and_cleaned_up(clocked):
    lab = clocked(vm_accel='kvm')
    vms = [FakeVm('a', kvm_starts=False)]
    with pytest.raises(LabError) as exc:
        lab.vms._boot(plans_of(lab, vms))
    assert str(exc.value) == 'qemu-system-x86_64: failed to initialize kvm'
    assert vms[0].stopped == [0]


# -- waiting for the logins ----------------------------------------------------------

def test_a_boot_that_never_reaches_ssh_fails_with_the_console_and_is_stopped(clocked):
    lab = clocked(vm_accel='tcg')
    vms = [FakeVm('a'), FakeVm('b', logs_in=False), FakeVm('c', logs_in='dies')]
    plans = plans_of(lab, vms)
    lab.vms._boot(plans)
    with pytest.raises(LabError) as exc:
        lab.vms._wait_logins(plans)
    text = str(exc.value)
    assert text.startswith('2 of 3 lab VMs did not come up')
    assert 'lab VM b did not accept an ssh login; last lines of its console:\nPanic' in text
    assert 'QEMU of lab VM c exited during boot' in text
    assert 'lab_state: absent removes everything' in text
    assert [vm.stopped for vm in vms] == [[], [0], [0]]
    assert lab.manifest.data['vms']['a']['boot_seconds'] == 0
    assert _lab_vm.BOOT_TIMEOUT - 10 <= lab.vms.clock() <= _lab_vm.BOOT_TIMEOUT + 10  # one shared wait, not one per VM


# -- present: keep, restart, check mode ---------------------------------------------

IMAGE = {'release': 'bookworm', 'key': 'k2', 'build_id': 'k2-1', 'dir': '/cache/bookworm-k2', 'built': False}


def present_vms(lab, monkeypatch, vms):
    monkeypatch.setattr(lab.vms, '_vm', lambda name, address=None, image=None, apt_proxy=None, accel=None: vms[name])

    def prepare(plan):
        lab.vms._entries()[plan['host']['name']] = {}
        plan['vm'].prepared = True
    monkeypatch.setattr(lab.vms, '_prepare', prepare)
    lab.vms.images = {'bookworm': IMAGE}
    hosts = [{'name': name, 'kind': 'vm', 'release': 'bookworm', 'transport': 'ssh'} for name in vms]
    return lab.vms.ensure(hosts, {name: '198.18.0.%d' % (10 + i) for i, name in enumerate(vms)}, 24,
                          'http://198.18.0.1:3142')


def running_entry(address, build_id='k2-1'):
    config = _lab_vm.vm_config(dict(IMAGE, build_id=build_id), 512, address, 'http://198.18.0.1:3142')
    return {'pid': 4242, 'starttime': 1, 'accel': 'tcg', 'boot_seconds': 20.0, 'config': config}


def test_running_vms_with_their_settings_are_kept(clocked, monkeypatch):
    lab = clocked(vm_accel='tcg')
    vm = FakeVm('vm1', running=True)
    vm.iface, vm.files, vm.key, vm.tap, vm.mac = None, {'console': 'c', 'known_hosts': 'k'}, 'key', 't', 'm'
    lab.manifest.data['vms']['vm1'] = running_entry('198.18.0.10/24')
    monkeypatch.setattr(_lab_vm.LabVms, '_info', lambda self, plan: plan['host']['name'])
    assert present_vms(lab, monkeypatch, {'vm1': vm}) == ['vm1']
    assert vm.launches == [] and vm.stopped == [] and not hasattr(vm, 'prepared')
    assert lab.changed is False and lab.actions == []


def test_a_vm_on_an_older_image_is_restarted_on_the_new_one(clocked, monkeypatch):
    lab = clocked(vm_accel='tcg')
    old, same = FakeVm('old', running=True), FakeVm('same', running=True)
    lab.manifest.data['vms'] = {'old': running_entry('198.18.0.10/24', 'k1-1'), 'same': running_entry('198.18.0.11/24')}
    monkeypatch.setattr(_lab_vm.LabVms, '_info', lambda self, plan: plan['host']['name'])
    present_vms(lab, monkeypatch, {'old': old, 'same': same})
    assert old.stopped and old.prepared and old.launches == ['tcg']
    assert same.launches == [] and not same.stopped
    assert _lab_vm.MSG_RESTART_IMAGE % ('old', 'k2', 'k2') in lab.vms.notes


def test_a_vm_with_other_memory_is_restarted(clocked, monkeypatch):
    lab = clocked(vm_accel='tcg', vm_memory=1024)
    vm = FakeVm('vm1', running=True)
    lab.manifest.data['vms'] = {'vm1': running_entry('198.18.0.10/24')}
    monkeypatch.setattr(_lab_vm.LabVms, '_info', lambda self, plan: plan['host']['name'])
    present_vms(lab, monkeypatch, {'vm1': vm})
    assert vm.launches == ['tcg']
    assert lab.vms.notes == [_lab_vm.MSG_RESTART_SETTINGS % ('vm1', 'memory 512 -> 1024')]


def test_a_vm_a_dead_run_started_under_kvm_is_restarted_not_adopted(clocked, monkeypatch):
    lab = clocked(vm_accel='tcg')
    vm = FakeVm('vm1', running=True)
    vm.load = lambda: {'pid': 4242, 'starttime': 1, 'accel': 'kvm', 'started_at': time.time() - 5}
    lab.manifest.data['vms'] = {'vm1': dict(running_entry('198.18.0.10/24'), boot_seconds=None, accel='kvm')}
    monkeypatch.setattr(_lab_vm.LabVms, '_info', lambda self, plan: plan['host']['name'])
    present_vms(lab, monkeypatch, {'vm1': vm})
    assert vm.stopped == [0] and vm.launches == ['tcg']
    assert lab.vms.notes == [_lab_vm.MSG_RESTART_UNCONFIRMED % 'vm1']


def test_a_vm_a_dead_run_started_under_tcg_is_adopted_with_its_boot_time(clocked, monkeypatch):
    lab = clocked(vm_accel='tcg')
    vm = FakeVm('vm1', running=True)
    vm.load = lambda: {'pid': 4242, 'starttime': 1, 'accel': 'tcg', 'started_at': time.time() - 30}
    lab.manifest.data['vms'] = {'vm1': dict(running_entry('198.18.0.10/24'), boot_seconds=None)}
    monkeypatch.setattr(_lab_vm.LabVms, '_info', lambda self, plan: plan['host']['name'])
    present_vms(lab, monkeypatch, {'vm1': vm})
    assert vm.stopped == [] and vm.launches == []
    assert 29 <= lab.manifest.data['vms']['vm1']['boot_seconds'] <= 40


def test_adopting_a_vm_whose_run_died_before_recording_it_completes_the_records(clocked, tmp_path):
    lab = clocked(vm_accel='tcg')
    ident = lab_id(lab.state_dir)
    vm = lab.vms._vm('vm1', '198.18.0.10/24')
    os.makedirs(vm.state_dir)
    qemu = stand_in('-name', marker(ident, 'vm1'), '-accel', 'tcg', '-pidfile', vm.files['pid'])
    try:
        with open(vm.files['pid'], 'w') as handle:
            handle.write('%d\n' % qemu.pid)
        vm.save({'name': 'vm1', 'pid': None, 'starttime': None})  # QEMU started, the run died before its record
        lab.manifest.data['vms']['vm1'] = {'pid': None, 'starttime': None, 'accel': None}
        plan = {'vm': vm, 'record': vm.load(), 'pid': vm.owned_pid()}
        assert plan['pid'] == qemu.pid
        lab.vms._adopt(plan)
        expected = {'pid': qemu.pid, 'starttime': starttime(qemu.pid), 'accel': 'tcg'}
        assert {key: vm.load()[key] for key in expected} == expected
        assert lab.manifest.data['vms']['vm1'] == expected
    finally:
        qemu.kill()
        qemu.wait()


def test_check_mode_starts_nothing(tmp_path, monkeypatch):
    lab = make_lab(tmp_path, check_mode=True)
    vm = FakeVm('vm1')
    monkeypatch.setattr(_lab_vm.LabVms, '_info', lambda self, plan: plan['host']['name'])
    present_vms(lab, monkeypatch, {'vm1': vm})
    assert vm.launches == [] and not hasattr(vm, 'prepared')
    assert lab.actions == [['qemu-system-x86_64', '-name', vm.mark]]
    assert not os.path.exists(lab.state_dir)


# -- removal, proven by records and markers (real stand-in processes) ------------------------

def stand_in(*argv, argv0=None):
    """A process that sleeps, with argv as a QEMU's or apt-cacher-ng's (python ignores the rest)."""
    proc = subprocess.Popen([argv0 or sys.executable, '-c', 'import time; time.sleep(120)'] + list(argv))
    deadline = time.monotonic() + 10
    while list(argv)[-1:] != cmdline(proc.pid)[-1:] and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def test_orphans_of_this_lab_are_killed_and_others_kept(tmp_path):
    lab = make_lab(tmp_path)
    ident, root = lab_id(lab.state_dir), os.path.join(lab.state_dir, 'vms')
    ours = stand_in('-name', marker(ident, 'lost'), '-pidfile', os.path.join(root, 'lost', 'qemu.pid'))
    elsewhere = stand_in('-name', marker(ident, 'odd'), '-pidfile', '/tmp/elsewhere/qemu.pid')
    other_lab = stand_in('-name', marker('0123456789', 'lost'), '-pidfile', os.path.join(root, 'lost', 'qemu.pid'))
    kept = stand_in('-name', marker(ident, 'kept'), '-pidfile', os.path.join(root, 'kept', 'qemu.pid'))
    try:
        lab.vms.reap_orphans(keep={kept.pid}, keep_names={'kept'})
        assert ours.wait(timeout=10) == -signal.SIGKILL
        assert elsewhere.poll() is None and other_lab.poll() is None and kept.poll() is None
        assert ['kill', '-KILL', str(ours.pid), marker(ident, 'lost')] in lab.actions
    finally:
        for proc in (ours, elsewhere, other_lab, kept):
            proc.kill()
            proc.wait()


def test_absent_stops_a_recorded_vm_and_a_crashed_runs_proxy(tmp_path):
    lab = make_lab(tmp_path)
    lab.manifest.save()  # the lab makes its state directory
    ident = lab_id(lab.state_dir)
    vm_dir = os.path.join(lab.state_dir, 'vms', 'vm1')
    os.makedirs(vm_dir)
    qemu = stand_in('-name', marker(ident, 'vm1'), '-pidfile', os.path.join(vm_dir, 'qemu.pid'))
    with open(os.path.join(vm_dir, 'vm.json'), 'w') as handle:
        json.dump({'marker': marker(ident, 'vm1'), 'pid': qemu.pid, 'starttime': starttime(qemu.pid)}, handle)
    acng = tmp_path / 'bin' / 'apt-cacher-ng'
    acng.parent.mkdir()
    acng.symlink_to(sys.executable)
    conf = os.path.join(lab.state_dir, 'apt-proxy', 'conf')
    os.makedirs(conf)
    proxy = stand_in('-c', conf, argv0=str(acng))  # started, but the run died before its record
    lab.manifest.data['vms']['vm1'] = {'address': '198.18.0.10/24'}
    lab.manifest.data['apt_proxy'] = {'state_dir': os.path.dirname(conf), 'address': '198.18.0.1', 'port': 3142}
    lab.manifest.save()
    lab = make_lab(tmp_path)  # a new run of the lab reads its manifest
    try:
        lab.absent()
        assert qemu.wait(timeout=10) == -signal.SIGKILL  # no QMP monitor answered: killed at the bound
        assert proxy.wait(timeout=10) == -signal.SIGTERM
        assert not os.path.exists(lab.state_dir)
        assert ['kill', marker(ident, 'vm1')] in lab.actions
    finally:
        for proc in (qemu, proxy):
            proc.kill()
            proc.wait()


def test_proxy_without_a_record_is_found_by_its_conf_dir_only(tmp_path):
    acng = tmp_path / 'apt-cacher-ng'
    acng.symlink_to(sys.executable)
    proxy = AptProxy(FakeRunner(), str(tmp_path / 'p'), '198.18.0.1')
    theirs = stand_in('-c', '/etc/apt-cacher-ng', argv0=str(acng))
    impostor = stand_in('-c', proxy.dirs['conf'])  # not apt-cacher-ng
    ours = stand_in('-c', proxy.dirs['conf'], argv0=str(acng))
    try:
        assert proxy.owned_pid(candidates=[theirs.pid, impostor.pid]) is None
        assert proxy.owned_pid() == ours.pid
        # a record that names another process: that record decides, nothing is adopted
        os.makedirs(proxy.state_dir)
        with open(proxy.record_path, 'w') as handle:
            json.dump({'pid': theirs.pid, 'starttime': 1}, handle)
        assert proxy.owned_pid() is None
    finally:
        for proc in (theirs, impostor, ours):
            proc.kill()
            proc.wait()


# -- real -----------------------------------------------------------------------

PLAYBOOK = '''
- name: Lab with a namespace and a lab VM
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: tcplab.keepalive.lab
      vars:
        lab_hosts: [ns1, {name: vmi1, kind: vm, release: bookworm}]
        lab_bridge: tkvi0
        lab_netns_prefix: tkvi-
        lab_network: 198.19.91.0/24
        lab_state_dir: /run/tcplab-test-vmi/lab
        lab_inventory: /run/tcplab-test-vmi/lab/inventory.ini
        lab_vm_image_cache: /var/cache/tcplab-keepalive-test-vm
'''
STATE = '/run/tcplab-test-vmi/lab'
IDENT = lab_id(STATE)


def playbook(path, *extra, background=False):
    argv = ['ansible-playbook', str(path)] + list(extra)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.environ.get('ANSIBLE_COLLECTIONS_PATH') or os.path.join(ROOT, '.build', 'collections'),
               ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1')
    if background:
        with open(str(path) + '.log', 'w') as log:
            return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


def play_stats(proc):
    """The PLAY RECAP counts of localhost."""
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    recap = re.search(r'^localhost\s+:(.*)$', proc.stdout, re.M).group(1)
    return {key: int(value) for key, value in re.findall(r'(\w+)=(\d+)', recap)}


def ansible(*argv):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'))
    return subprocess.run(['ansible', '-i', STATE + '/inventory.ini'] + list(argv), env=env, capture_output=True, text=True,
                          check=False)


def kill_tree(root):
    """SIGKILL the process groups of root and of all its descendants: ansible-core's workers call setsid(), so
    killing the controller's own group would leave the running module alive."""
    parents = {}
    for pid in map(int, filter(str.isdigit, os.listdir('/proc'))):
        try:
            with open('/proc/%d/stat' % pid) as handle:
                parents[pid] = int(handle.read().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    groups = set()
    for pid in tree:
        try:
            if 'qemu' not in ' '.join(cmdline(pid)[:1]):  # a daemonizing QEMU's own session is not the controller's
                groups.add(os.getpgid(pid))
        except OSError:
            continue
    for pgid in groups - {os.getpgid(0)}:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    return {pid for pid in tree if 'qemu' not in ' '.join(cmdline(pid)[:1])}


def live(name):
    """Pids of live (not zombie) processes whose argv holds name."""
    return [pid for pid in map(int, filter(str.isdigit, os.listdir('/proc')))
            if name in ' '.join(cmdline(pid)) and starttime(pid) is not None and pid != os.getpid()]


@pytest.mark.skipif(not REAL or os.geteuid() != 0, reason='set TCPLAB_VM_TESTS=1 (as root) to boot a real lab VM')
def test_real_lab_with_a_namespace_and_a_vm(tmp_path):
    book = tmp_path / 'lab.yml'
    book.write_text(PLAYBOOK)
    try:
        # a controller SIGKILLed while its VM boots: the next present adopts the QEMU (or restarts one in the KVM probe)
        crashed = playbook(book, background=True)
        deadline = time.monotonic() + 120
        while not live(marker(IDENT, 'vmi1')) and crashed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # QEMU daemonizes: its first process exits once the second runs
        tree = kill_tree(crashed.pid)
        crashed.wait()
        time.sleep(0.5)
        assert [pid for pid in tree if starttime(pid) is not None] == []  # the module died with its controller
        qemu = live(marker(IDENT, 'vmi1'))
        assert len(qemu) == 1, (tmp_path / 'lab.yml.log').read_text()
        with open(STATE + '/vms/vmi1/vm.json') as handle:
            crashed_accel = json.load(handle).get('accel')

        began = time.monotonic()
        first_run = playbook(book)
        first = play_stats(first_run)
        print(re.search(r'msg: (.*?)\n\nPLAY RECAP', first_run.stdout, re.S).group(1))
        present_seconds = time.monotonic() - began
        assert first['failed'] == 0 and first['changed'] >= 1
        with open(STATE + '/lab.json') as handle:
            manifest = json.load(handle)
        entry = manifest['vms']['vmi1']
        assert manifest['apt_proxy']['pid'] and manifest['apt_proxy']['address'] == '198.19.91.1'
        assert entry['tap_ifindex'] and entry['state_dir'] == STATE + '/vms/vmi1' and entry['image_key']
        assert live(marker(IDENT, 'vmi1')) == [entry['pid']]
        if crashed_accel == 'kvm':  # still in the KVM probe: restarted
            assert entry['pid'] != qemu[0]
        else:  # adopted, not booted again (also when the dead run had not recorded its pid yet)
            assert entry['pid'] == qemu[0] and entry['accel'] == 'tcg' and entry['boot_seconds'] > 0

        ping = ansible('all', '-m', 'ansible.builtin.ping')
        assert ping.returncode == 0 and ping.stdout.count('SUCCESS') == 2, ping.stdout + ping.stderr
        ident = ansible('vmi1', '-b', '-m', 'ansible.builtin.command', '-a', 'id')
        assert 'uid=0(root)' in ident.stdout, ident.stdout + ident.stderr
        login = ansible('vmi1', '-m', 'ansible.builtin.command', '-a', 'id -un', '-e', 'ansible_become=false')
        assert login.stdout.strip().endswith('tcplab'), login.stdout

        began = time.monotonic()
        again = play_stats(playbook(book))
        again_seconds = time.monotonic() - began
        assert again['changed'] == 0

        began = time.monotonic()
        gone = play_stats(playbook(book, '-e', 'lab_state=absent'))
        absent_seconds = time.monotonic() - began
        assert gone['changed'] >= 1
        print('present after the crash %.1f s, again %.1f s, absent %.1f s' % (present_seconds, again_seconds, absent_seconds))
        time.sleep(0.5)  # the init of a container may reap the exited daemons a moment later
        assert live(marker(IDENT, '')) == []
        assert live(STATE + '/apt-proxy') == []
        links = subprocess.run(['ip', '-o', 'link', 'show'], capture_output=True, text=True, check=True).stdout
        assert entry['tap'] not in links and 'tkvi0' not in links
        assert not os.path.exists(STATE) and 'tkvi-ns1' not in os.listdir('/run/netns')
    finally:
        playbook(book, '-e', 'lab_state=absent')
        shutil.rmtree('/run/tcplab-test-vmi', ignore_errors=True)
