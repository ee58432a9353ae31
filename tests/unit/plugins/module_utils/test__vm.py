# Unit tests of one lab VM: naming, the seed, QEMU argv, validation messages, the KVM
# to TCG fallback, ownership before signals and deletions (with a real stand-in process
# and a real QMP socket), boot errors with the console's last lines. With
# TCPLAB_VM_TESTS=1 (as root) scripts/vm_smoke.py boots one real VM: image, apt proxy,
# ssh as tcplab, sudo sysctl, apt-get install through the proxy, ACPI power-off, cleanup.
from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _vm, _vm_boot, _vm_files, _vm_qemu, _vm_tap
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import starttime
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm import Vm
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_base import VmError, console_tail, mac_address, marker, tap_name
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_files import render_seed
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_qemu import find_orphans, qemu_argv, qmp_command

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
REAL = os.environ.get('TCPLAB_VM_TESTS') == '1'


class FakeRun:
    """ip/qemu-img/ssh-keygen stand-ins: links is {name: ip -j -d link show entry}."""

    def __init__(self, links=None):
        self.links = links if links is not None else {'tkvm0': {'ifname': 'tkvm0', 'ifindex': 5,
                                                                'linkinfo': {'info_kind': 'bridge'}}}
        self.calls = []

    def __call__(self, argv, check=True, ok_rc=(0,), data=None, what=None):
        self.calls.append(list(argv))
        if argv[:4] == ['ip', '-j', '-d', 'link']:
            link = self.links.get(argv[-1])
            return (0, json.dumps([link]), '') if link else (1, '', 'Device "%s" does not exist.' % argv[-1])
        if argv[:3] == ['ip', 'tuntap', 'add']:
            self.links[argv[4]] = {'ifname': argv[4], 'ifindex': 77, 'linkinfo': {'info_kind': 'tun'}}
        if argv[:3] == ['ip', 'link', 'del']:
            self.links.pop(argv[-1], None)
        if argv[:2] == ['qemu-img', 'create']:
            with open(argv[-1], 'w') as handle:
                handle.write('overlay')
        if argv[0] == 'ssh-keygen':
            path = argv[argv.index('-f') + 1]
            with open(path, 'w') as handle:
                handle.write('-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n')
            with open(path + '.pub', 'w') as handle:
                handle.write('ssh-ed25519 HOSTKEY tcplab-vm\n')
        return 0, '', ''

    def changes(self):
        return [c for c in self.calls if c[:3] != ['ip', '-j', '-d']]


@pytest.fixture
def image(tmp_path):
    files = {}
    for name in ('kernel', 'initrd', 'disk'):
        files[name] = str(tmp_path / ('image-' + name))
        with open(files[name], 'w') as handle:
            handle.write(name)
    return dict(files, build_id='b1', disk_format='raw')


@pytest.fixture
def key(tmp_path):
    path = tmp_path / 'id_ed25519'
    path.write_text('private')
    (tmp_path / 'id_ed25519.pub').write_text('ssh-ed25519 LABKEY lab\n')
    return str(path)


def make_vm(tmp_path, image, key, run=None, **kwargs):
    kwargs.setdefault('tap_prefix', 'tkvmt')
    return Vm(run or FakeRun(), kwargs.pop('name', 'vm1'), str(tmp_path / 'state' / 'vm1'), image, 'tkvm0',
              kwargs.pop('address', '198.19.90.10/24'), 'unit-vm', key, **kwargs)


# -- naming and seed ------------------------------------------------------

def test_names_are_stable_and_short():
    assert marker('lab1', 'vm1') == 'tcplab-vm:lab1:vm1'
    assert mac_address('lab1', 'vm1') == mac_address('lab1', 'vm1')
    assert mac_address('lab1', 'vm1') != mac_address('lab1', 'vm2') != mac_address('lab2', 'vm2')
    assert mac_address('lab1', 'vm1').startswith('52:54:00:') and len(mac_address('lab1', 'vm1')) == 17
    for prefix in ('tkv', 'tkvmt', 'abcdefg'):
        name = tap_name(prefix, 'lab1', 'vm1')
        assert name.startswith(prefix) and len(name) == 15


def test_render_seed():
    text = render_seed('vm1', 'vm1', '198.19.90.10/24', '52:54:00:aa:bb:cc', ['ssh-ed25519 K1 a\n', 'ssh-ed25519 K2 b'],
                       '-----BEGIN-----\nxyz\n', 'ssh-ed25519 H h\n', gateway=None, apt_proxy='http://198.19.90.1:3142')
    lines = text.splitlines()
    assert lines[0].startswith('#')
    assert lines[1:] == ['version=1', 'hostname=vm1', 'mac=52:54:00:aa:bb:cc', 'address=198.19.90.10/24', 'gateway=',
                         'apt_proxy=http://198.19.90.1:3142', 'authorized_key=ssh-ed25519 K1 a',
                         'authorized_key=ssh-ed25519 K2 b', 'host_key_ed25519=LS0tLS1CRUdJTi0tLS0tCnh5ego=',
                         'host_key_ed25519_pub=ssh-ed25519 H h']
    assert base64.b64decode(lines[9].split('=', 1)[1]) == b'-----BEGIN-----\nxyz\n'


def test_seed_refuses_line_breaks():
    with pytest.raises(VmError) as exc:
        render_seed('vm1', 'vm1', '198.19.90.10/24', '52:54:00:aa:bb:cc', ['ssh-ed25519 K1\ninjected=1'])
    assert str(exc.value) == _vm_files.MSG_SEED_VALUE % ('authorized_key', 'ssh-ed25519 K1\ninjected=1', 'vm1')


def test_seed_matches_the_script_in_the_image():
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _vm_image
    for key in ('version', 'hostname', 'mac', 'address', 'gateway', 'apt_proxy', 'authorized_key',
                'host_key_ed25519', 'host_key_ed25519_pub'):
        assert '%s=*)' % key in _vm_image.SEED_SCRIPT
    assert _vm_files.SEED_NAME == _vm_image.SEED_FW_CFG


# -- validation -----------------------------------------------------------

@pytest.mark.parametrize('kwargs, message', [
    ({'name': 'VM1'}, _vm.MSG_NAME % ('VM1',)),
    ({'name': 'a b'}, _vm.MSG_NAME % ('a b',)),
    ({'name': 'vm_1'}, _vm.MSG_NAME % ('vm_1',)),
    ({'accel': 'hvf'}, _vm.MSG_ACCEL % ('hvf',)),
    ({'tap_prefix': 'tkvmtap1'}, _vm.MSG_TAP_PREFIX % ('tkvmtap1',)),
    ({'tap_prefix': 'T'}, _vm.MSG_TAP_PREFIX % ('T',)),
    ({'address': '198.19.90.10'}, _vm.MSG_ADDRESS % ('198.19.90.10', 'vm1')),
    ({'address': '198.19.90.0/24'}, _vm.MSG_ADDRESS % ('198.19.90.0/24', 'vm1')),
    ({'address': 'fd00::1/64'}, _vm.MSG_ADDRESS % ('fd00::1/64', 'vm1')),
    ({'address': 'nonsense'}, _vm.MSG_ADDRESS % ('nonsense', 'vm1')),
    ({'gateway': '10.0.0.1'}, _vm.MSG_GATEWAY % ('10.0.0.1', 'vm1', '198.19.90.0/24')),
    ({'hostname': 'web_1'}, _vm.MSG_HOSTNAME % ('web_1', 'vm1')),
    ({'hostname': '-x'}, _vm.MSG_HOSTNAME % ('-x', 'vm1')),
    ({'apt_proxy': 'https://198.19.90.1:3142'}, _vm.MSG_APT_PROXY % ('https://198.19.90.1:3142', 'vm1')),
    ({'apt_proxy': 'http://x";rm'}, _vm.MSG_APT_PROXY % ('http://x";rm', 'vm1')),
])
def test_invalid_arguments(tmp_path, image, key, kwargs, message):
    with pytest.raises(VmError) as exc:
        make_vm(tmp_path, image, key, **kwargs)
    assert str(exc.value) == message
    assert not (tmp_path / 'state').exists()


@pytest.mark.parametrize('lab_id', ['', 'Lab', 'a:b', 'x' * 33])
def test_invalid_lab_id(tmp_path, image, key, lab_id):
    with pytest.raises(VmError) as exc:
        Vm(FakeRun(), 'vm1', str(tmp_path), image, 'tkvm0', '198.19.90.10/24', lab_id, key)
    assert str(exc.value) == _vm.MSG_LAB_ID % (lab_id,)


@pytest.mark.parametrize('state_dir', ['relative', '/', ''])
def test_invalid_state_dir(image, key, state_dir):
    with pytest.raises(VmError) as exc:
        Vm(FakeRun(), 'vm1', state_dir, image, 'tkvm0', '198.19.90.10/24', 'lab', key)
    assert str(exc.value) == _vm.MSG_STATE_DIR % (state_dir,)


def test_state_dir_too_long_for_the_monitor_socket(image, key):
    long_dir = '/run/' + 'x' * 120
    with pytest.raises(VmError) as exc:
        Vm(FakeRun(), 'vm1', long_dir, image, 'tkvm0', '198.19.90.10/24', 'lab', key)
    assert str(exc.value) == _vm.MSG_STATE_DIR_LONG % (long_dir, len(long_dir) + 9, 107)


def test_missing_image_file(tmp_path, image, key):
    os.unlink(image['initrd'])
    with pytest.raises(VmError) as exc:
        make_vm(tmp_path, image, key).start()
    assert str(exc.value) == _vm.MSG_IMAGE % image['initrd']
    assert not (tmp_path / 'state').exists()


def test_missing_key(tmp_path, image, key):
    os.unlink(key + '.pub')
    with pytest.raises(VmError) as exc:
        make_vm(tmp_path, image, key).start()
    assert str(exc.value) == _vm.MSG_KEY % (key, key)


@pytest.mark.parametrize('links', [{}, {'tkvm0': {'ifname': 'tkvm0', 'ifindex': 5, 'linkinfo': {'info_kind': 'veth'}}}])
def test_missing_bridge(tmp_path, image, key, links):
    run = FakeRun(links)
    with pytest.raises(VmError) as exc:
        make_vm(tmp_path, image, key, run=run).start()
    assert str(exc.value) == _vm_tap.MSG_NO_BRIDGE % 'tkvm0'
    assert run.changes() == [] and not (tmp_path / 'state').exists()


def test_qemu_argv(tmp_path, image, key):
    vm = make_vm(tmp_path, image, key)
    argv = qemu_argv('qemu-system-x86_64', vm.mark, 'tcg', image, vm.files, vm.tap, vm.mac)
    text = ' '.join(argv)
    assert argv[:3] == ['qemu-system-x86_64', '-name', 'tcplab-vm:unit-vm:vm1']
    assert '-accel tcg' in text and '-display none' in text and '-nodefaults' in text
    assert '-serial file:%s' % vm.files['console'] in text
    assert '-qmp unix:%s,server=on,wait=off' % vm.files['qmp'] in text
    assert '-kernel %s -initrd %s -append root=/dev/vda ' % (image['kernel'], image['initrd']) in text
    append = argv[argv.index('-append') + 1].split()
    assert {'rw', 'console=ttyS0', 'net.ifnames=0'} <= set(append)
    assert 'floppy' in [arg for arg in append if arg.startswith('modprobe.blacklist=')][0].split('=', 1)[1].split(',')
    assert argv[argv.index('-machine') + 1].split(',')[0] == 'pc' and 'i8042=off' in argv[argv.index('-machine') + 1]
    assert 'file=%s,if=virtio,format=qcow2' % vm.files['overlay'] in text
    assert 'tap,id=net0,ifname=%s,script=no,downscript=no' % vm.tap in text
    assert 'virtio-net-pci,netdev=net0,mac=%s' % vm.mac in text
    assert '-fw_cfg name=opt/tcplab/seed,file=%s' % vm.files['seed'] in text
    assert argv[-3:] == ['-daemonize', '-pidfile', vm.files['pid']]
    assert image['disk'] not in text  # only the overlay is ever opened for writing


def test_kernel_keeps_the_power_button():
    """evdev gives the ACPI power button its input device: without it logind never hears system_powerdown,
    and every stop waits its whole bound and then kills QEMU."""
    append = _vm_qemu.kernel_command_line().split()
    blacklisted = [arg for arg in append if arg.startswith('modprobe.blacklist=')][0].split('=', 1)[1].split(',')
    assert 'floppy' in blacklisted
    assert 'evdev' not in blacklisted and 'button' not in blacklisted


def test_ssh_argv_quotes_the_remote_command(tmp_path, image, key):
    vm = make_vm(tmp_path, image, key)
    argv = vm.ssh_argv('sh', '-c', 'echo a && echo b')
    assert argv[-2:] == ['--', "sh -c 'echo a && echo b'"]
    assert 'StrictHostKeyChecking=yes' in argv and 'UserKnownHostsFile=%s' % vm.files['known_hosts'] in argv
    assert argv[argv.index('-l') + 1:argv.index('-l') + 3] == ['tcplab', '198.19.90.10']


# -- preparing: host key, overlay, tap, seed ---------------------------------

def test_prepare_without_boot(tmp_path, image, key):
    run = FakeRun()
    vm = make_vm(tmp_path, image, key, run=run, apt_proxy='http://198.19.90.1:3142')
    os.makedirs(vm.state_dir)
    record = {}
    vm.boot_files.ensure_host_key(vm.iface.ip)
    vm.boot_files.ensure_overlay(record, image)
    vm.tap_device.ensure(record)
    vm.boot_files.write_seed(vm.hostname, vm.iface, vm.mac, key, apt_proxy=vm.apt_proxy)
    assert run.changes() == [
        ['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'tcplab-vm-vm1', '-f', vm.files['host_key']],
        ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', image['disk'], '-F', 'raw', vm.files['overlay']],
        ['ip', 'tuntap', 'add', 'dev', vm.tap, 'mode', 'tap'],
        ['ip', 'link', 'set', 'dev', vm.tap, 'alias', 'tcplab-vm:unit-vm:vm1'],
        ['ip', 'link', 'set', 'dev', vm.tap, 'master', 'tkvm0'],
        ['ip', 'link', 'set', 'dev', vm.tap, 'up'],
    ]
    assert record['tap_ifindex'] == 77 and record['build_id'] == 'b1'
    assert vm.load()['tap_ifindex'] == 77  # recorded before anything else can fail
    assert (tmp_path / 'state/vm1/known_hosts').read_text() == '198.19.90.10 ssh-ed25519 HOSTKEY\n'
    seed = (tmp_path / 'state/vm1/seed').read_text()
    assert 'authorized_key=ssh-ed25519 LABKEY lab\n' in seed and 'apt_proxy=http://198.19.90.1:3142\n' in seed
    assert oct(os.stat(vm.files['seed']).st_mode & 0o777) == '0o600'


def test_overlay_is_remade_when_the_base_changes(tmp_path, image, key):
    run = FakeRun()
    vm = make_vm(tmp_path, image, key, run=run)
    os.makedirs(vm.state_dir)
    with open(vm.files['overlay'], 'w') as handle:
        handle.write('old writes')
    record = {'build_id': 'b1'}
    vm.boot_files.ensure_overlay(record, image)
    assert run.changes() == []  # same base: the VM keeps its writes
    record = {'build_id': 'b0'}
    vm.boot_files.ensure_overlay(record, image)
    assert run.changes()[0][:2] == ['qemu-img', 'create'] and record['build_id'] == 'b1'
    assert 'base image changed' in vm.notes[0]


def test_foreign_tap_is_refused_and_kept(tmp_path, image, key):
    tap = tap_name('tkvmt', 'unit-vm', 'vm1')
    run = FakeRun({'tkvm0': {'ifname': 'tkvm0', 'linkinfo': {'info_kind': 'bridge'}},
                   tap: {'ifname': tap, 'ifindex': 12, 'linkinfo': {'info_kind': 'tun'}}})
    vm = make_vm(tmp_path, image, key, run=run)
    assert vm.tap == tap
    with pytest.raises(VmError) as exc:
        vm.tap_device.ensure({'tap_ifindex': 11})
    assert str(exc.value) == _vm_tap.MSG_TAP_TAKEN % (vm.tap, 'vm1', vm.files['record'], vm.mark, vm.tap)
    assert vm.tap_device.remove({'tap_ifindex': 11}) is False
    assert run.changes() == []
    # same name and ifindex, but not a tun device: not ours either
    run.links[vm.tap]['linkinfo'] = {'info_kind': 'veth'}
    assert vm.tap_device.remove({'tap_ifindex': 12}) is False
    # ours by ifindex, or by the alias after a crash before the record was written
    run.links[vm.tap]['linkinfo'] = {'info_kind': 'tun'}
    assert vm.tap_device.remove({'tap_ifindex': 12}) is True
    run.links[vm.tap] = {'ifname': vm.tap, 'ifindex': 13, 'ifalias': vm.mark, 'linkinfo': {'info_kind': 'tun'}}
    assert vm.tap_device.remove({}) is True
    assert run.changes() == [['ip', 'link', 'del', 'dev', vm.tap]] * 2


# -- accelerator ----------------------------------------------------------

def test_kvm_required_but_unusable(tmp_path, image, key):
    vm = make_vm(tmp_path, image, key, accel='kvm', tools={'kvm_device': str(tmp_path / 'no-kvm')})
    with pytest.raises(VmError) as exc:
        vm.accels()
    assert str(exc.value) == _vm_boot.MSG_NO_KVM % ('vm1', '/dev/kvm')


def test_auto_without_kvm_is_tcg_with_a_note(tmp_path, image, key):
    vm = make_vm(tmp_path, image, key, tools={'kvm_device': str(tmp_path / 'no-kvm')})
    assert vm.accels() == ['tcg']
    assert vm.notes == [_vm_boot.MSG_NO_KVM_NOTE % ('vm1', '/dev/kvm')]
    assert make_vm(tmp_path, image, key, accel='tcg').accels() == ['tcg']


def test_auto_falls_back_to_tcg_when_kvm_makes_no_progress(tmp_path, image, key, monkeypatch):
    clock = FakeClock()
    vm = make_vm(tmp_path, image, key, tools={'kvm_device': '/dev/null'}, clock=clock, sleep=clock.sleep,
                 kvm_probe_timeout=10)
    os.makedirs(vm.state_dir)
    launched, killed = [], []

    def launch(record, accel):
        launched.append(accel)
        with open(vm.files['console'], 'w') as handle:
            handle.write('Probing EDD (edd=off to disable)... ok\n' if accel == 'kvm' else '')
    monkeypatch.setattr(vm, 'launch', launch)
    monkeypatch.setattr(vm, 'owned_pid', lambda record=None: 4242)
    monkeypatch.setattr(vm, '_kill', lambda record: killed.append(True))
    assert vm._boot({}) == 'tcg'
    assert launched == ['kvm', 'tcg'] and killed == [True]
    assert vm.notes == [_vm_boot.MSG_KVM_FALLBACK % ('vm1', 10, 'Probing EDD (edd=off to disable)... ok')]
    assert 'falling back to TCG' in vm.notes[0]
    assert clock.now >= 10


def test_auto_falls_back_to_tcg_when_qemu_fails_with_kvm(tmp_path, image, key, monkeypatch):
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError
    vm = make_vm(tmp_path, image, key, tools={'kvm_device': '/dev/null'}, sleep=lambda s: None)
    os.makedirs(vm.state_dir)
    launched = []

    def launch(record, accel):
        launched.append(accel)
        if accel == 'kvm':
            raise CommandError('starting QEMU failed (rc=1): kvm_init_vcpu failed', ['qemu'], 1, '', '')
    monkeypatch.setattr(vm, 'launch', launch)
    assert vm._boot({}) == 'tcg' and launched == ['kvm', 'tcg']
    assert vm.notes == [_vm_boot.MSG_KVM_START_FALLBACK % ('vm1', 'starting QEMU failed (rc=1): kvm_init_vcpu failed')]
    # asked for kvm explicitly: the error stands
    vm = make_vm(tmp_path, image, key, accel='kvm', tools={'kvm_device': '/dev/null'})
    monkeypatch.setattr(vm, 'launch', launch)
    with pytest.raises(CommandError):
        vm._boot({})


def test_auto_keeps_kvm_when_the_kernel_progresses(tmp_path, image, key, monkeypatch):
    vm = make_vm(tmp_path, image, key, tools={'kvm_device': '/dev/null'}, sleep=lambda s: None)
    os.makedirs(vm.state_dir)

    def launch(record, accel):
        with open(vm.files['console'], 'w') as handle:
            handle.write('[    0.9] Run /init as init process\n')
    monkeypatch.setattr(vm, 'launch', launch)
    assert vm._boot({}) == 'kvm' and vm.notes == []


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_boot_that_never_reaches_ssh(tmp_path, image, key, monkeypatch):
    clock = FakeClock()
    vm = make_vm(tmp_path, image, key, clock=clock, sleep=clock.sleep, boot_timeout=30)
    os.makedirs(vm.state_dir)
    with open(vm.files['console'], 'w') as handle:
        handle.write('\n'.join('line %d' % i for i in range(100)) + '\n\x1b[0;32m  OK  \x1b[0m] Reached target\n')
    monkeypatch.setattr(vm, 'owned_pid', lambda record=None: 4242)
    monkeypatch.setattr(_vm_boot, 'port_open', lambda address, port, timeout=0.5: False)
    with pytest.raises(VmError) as exc:
        vm._wait_ssh({}, 'tcg', 0.0)
    tail = console_tail(vm.files['console'])
    assert str(exc.value) == _vm_boot.MSG_NO_SSH % ('vm1', 'tcplab', '198.19.90.10', 30, 'tcg', vm.files['console'], tail)
    assert tail.endswith('line 99\n  OK  ] Reached target') and 'line 75' not in tail


def test_qemu_that_dies_during_boot(tmp_path, image, key, monkeypatch):
    vm = make_vm(tmp_path, image, key, sleep=lambda s: None)
    os.makedirs(vm.state_dir)
    with open(vm.files['console'], 'w') as handle:
        handle.write('Kernel panic - not syncing: VFS: Unable to mount root fs\n')
    monkeypatch.setattr(vm, 'owned_pid', lambda record=None: None)
    with pytest.raises(VmError) as exc:
        vm._wait_ssh({}, 'tcg', vm.clock())
    assert str(exc.value) == _vm_boot.MSG_DIED % ('vm1', 'tcg', vm.files['console'],
                                                  'Kernel panic - not syncing: VFS: Unable to mount root fs')


def test_failed_boot_cleans_up_but_keeps_the_console(tmp_path, image, key, monkeypatch):
    run = FakeRun()
    vm = make_vm(tmp_path, image, key, run=run, accel='tcg', sleep=lambda s: None)

    def launch(record, accel):
        with open(vm.files['console'], 'w') as handle:
            handle.write('Probing EDD\n')
    monkeypatch.setattr(vm, 'launch', launch)
    with pytest.raises(VmError):
        vm.start()
    assert sorted(os.listdir(vm.state_dir)) == ['console.log']
    assert run.changes()[-1] == ['ip', 'link', 'del', 'dev', vm.tap]


# -- ownership with a real process and a real QMP socket -----------------------

def stand_in(vm, extra=()):
    """A process whose argv carries the VM's marker and pid file, as QEMU's does."""
    return subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '-name', vm.mark,
                             '-pidfile', vm.files['pid']] + list(extra))


def wait_for_argv(pid):
    """Until the stand-in's argv is readable (right after the fork it is still the parent's)."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline
    deadline = time.monotonic() + 5
    while '-name' not in cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_stop_kills_only_a_proven_process(tmp_path, image, key):
    vm = make_vm(tmp_path, image, key)
    os.makedirs(vm.state_dir)
    proc = stand_in(vm)
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        wait_for_argv(proc.pid)
        # a record naming another process (pid reuse, a forged record): not signalled
        vm.save({'pid': other.pid, 'starttime': starttime(other.pid)})
        assert vm.owned_pid() is None
        # right pid, wrong start time: not signalled
        vm.save({'pid': proc.pid, 'starttime': starttime(proc.pid) + 1})
        assert vm.owned_pid() is None
        assert vm.stop(timeout=0)['stopped'] is None
        assert proc.poll() is None and other.poll() is None
        # the true record: no monitor answers, so it is killed after the bound
        vm.save({'pid': proc.pid, 'starttime': starttime(proc.pid)})
        assert vm.status()['running'] is True
        result = vm.stop(timeout=1)
        assert result['stopped'] == 'killed'
        assert proc.wait(timeout=10) == -9
        assert other.poll() is None
        assert not os.path.exists(vm.files['record'])
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()


def test_pid_file_proves_ownership_only_with_the_marker(tmp_path, image, key):
    vm = make_vm(tmp_path, image, key)
    os.makedirs(vm.state_dir)
    proc = stand_in(vm)
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '-name', 'tcplab-vm:unit-vm:vm2'])
    try:
        wait_for_argv(proc.pid)
        wait_for_argv(other.pid)
        with open(vm.files['pid'], 'w') as handle:
            handle.write('%d\n' % other.pid)
        assert vm.owned_pid({}) is None
        with open(vm.files['pid'], 'w') as handle:
            handle.write('%d\n' % proc.pid)
        assert vm.owned_pid({}) == proc.pid  # a crash between QEMU's start and the record
        assert vm.owned_pid({'name': 'vm1', 'pid': None}) == proc.pid
        # a record with a pid that is not (or no longer) QEMU's: the pid file does not count
        assert vm.owned_pid({'pid': other.pid, 'starttime': starttime(other.pid)}) is None
        assert sorted(find_orphans('unit-vm', [proc.pid, other.pid, os.getpid()])) == sorted([proc.pid, other.pid])
        assert find_orphans('unit', [proc.pid, other.pid]) == []
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()


def fake_monitor(path, replies):
    """A QMP server on a unix socket answering one client; returns the commands it got."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    got = []

    def serve():
        conn = server.accept()[0]
        stream = conn.makefile('rwb')
        stream.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
        stream.flush()
        for reply in replies:
            line = stream.readline()
            if not line:
                break
            got.append(json.loads(line)['execute'])
            stream.write(b'{"event": "SOMETHING"}\n' + json.dumps(reply).encode() + b'\n')
            stream.flush()
        conn.close()
        server.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return got, thread


def test_qmp_command(tmp_path):
    path = str(tmp_path / 'qmp.sock')
    got, thread = fake_monitor(path, [{'return': {}}, {'return': {}}])
    assert qmp_command(path, 'system_powerdown') == {}
    thread.join(5)
    assert got == ['qmp_capabilities', 'system_powerdown']


def test_qmp_error(tmp_path):
    path = str(tmp_path / 'qmp.sock')
    got, thread = fake_monitor(path, [{'return': {}}, {'error': {'class': 'GenericError', 'desc': 'nope'}}])
    with pytest.raises(VmError) as exc:
        qmp_command(path, 'system_powerdown')
    assert str(exc.value) == 'QEMU monitor: nope'


def test_stop_powers_off_through_the_monitor(tmp_path, image, key):
    vm = make_vm(tmp_path, image, key)
    os.makedirs(vm.state_dir)
    proc = stand_in(vm)
    try:
        wait_for_argv(proc.pid)
        vm.save({'pid': proc.pid, 'starttime': starttime(proc.pid)})
        got, thread = fake_monitor(vm.files['qmp'], [{'return': {}}, {'return': {}}])
        threading.Timer(0.5, proc.terminate).start()  # the guest powers off after the ACPI event
        assert vm.stop(timeout=20)['stopped'] == 'acpi'
        assert got == ['qmp_capabilities', 'system_powerdown']
    finally:
        proc.kill()
        proc.wait()


# -- real -----------------------------------------------------------------

@pytest.mark.skipif(not REAL or os.geteuid() != 0, reason='set TCPLAB_VM_TESTS=1 (as root) to boot a real VM')
def test_real_vm_smoke():
    spec = importlib.util.spec_from_file_location('vm_smoke', os.path.join(ROOT, 'scripts', 'vm_smoke.py'))
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    result = smoke.smoke(smoke.parse_args([]))
    assert result['vm']['accel'] in ('kvm', 'tcg')
    assert result['whoami']['out'] == 'tcplab'
    assert result['hostname']['out'] == 'smoke1'
    assert result['sysctl'] == {'rc': 0, 'out': 'net.ipv4.tcp_keepalive_time = 7200', 'err': ''}
    assert result['python']['out'].startswith('Python 3.11')
    assert result['has_package_before'] is False
    assert result['apt']['rc'] == 0 and result['apt']['out'].startswith('tcpdump\t')
    assert result['stop']['stopped'] == 'acpi'
    assert result['tap_left'] is False and result['overlay_left'] is False and result['base_unchanged'] is True
    assert result['proxy_stop'] == {'changed': True, 'stopped': True}
    assert not os.path.exists('/run/tcplab-test-vm/smoke')
