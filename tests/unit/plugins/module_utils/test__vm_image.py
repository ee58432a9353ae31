# Unit tests of the lab VM image builder: apt sources, the cache key, argv, error
# messages, atomic publishing (with a fake mmdebstrap/mkfs), and the script baked into
# the image (shellcheck). With TCPLAB_VM_TESTS=1 a real image is built (or taken from
# the cache) and read without mounting it (debugfs).
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _vm_image
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import (
    ImageCache, VmImageError, check_free_space, check_packages, debian_mirrors, find_tools, image_spec,
    mmdebstrap_argv, mounts_under, parse_deb822, parse_one_line, remove_tree)

SOURCES = '''Types: deb
# a comment
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://archive.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: trixie
Components: main
Enabled: no
'''
ENTRIES = parse_deb822(SOURCES)
REAL = os.environ.get('TCPLAB_VM_TESTS') == '1'
REAL_CACHE = os.environ.get('TCPLAB_VM_CACHE', '/var/cache/tcplab-keepalive-test-vm')


def test_parse_deb822():
    assert ENTRIES == [
        {'types': ['deb'], 'uris': ['http://archive.example/debian'], 'suites': ['bookworm', 'bookworm-updates'],
         'components': ['main']},
        {'types': ['deb'], 'uris': ['http://archive.example/debian-security'], 'suites': ['bookworm-security'],
         'components': ['main']},
    ]


def test_parse_one_line():
    text = ('# comment\n'
            'deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://one.example/debian bookworm main contrib\n'
            'deb-src http://one.example/debian bookworm main\n'
            'deb http://sec.example/debian-security bookworm-security main # trailing\n'
            'garbage\n')
    assert parse_one_line(text) == [
        {'types': ['deb'], 'uris': ['http://one.example/debian'], 'suites': ['bookworm'], 'components': ['main', 'contrib']},
        {'types': ['deb-src'], 'uris': ['http://one.example/debian'], 'suites': ['bookworm'], 'components': ['main']},
        {'types': ['deb'], 'uris': ['http://sec.example/debian-security'], 'suites': ['bookworm-security'],
         'components': ['main']},
    ]


def test_debian_mirrors():
    assert debian_mirrors(ENTRIES) == ('http://archive.example/debian', 'http://archive.example/debian-security')
    # no Debian suite (e.g. another distribution's sources): nothing
    other = [{'types': ['deb'], 'uris': ['http://x.example/ubuntu'], 'suites': ['noble'], 'components': ['main']}]
    assert debian_mirrors(other) == (None, None)


def test_read_apt_sources_of_this_machine_style(tmp_path):
    (tmp_path / 'sources.list.d').mkdir()
    (tmp_path / 'sources.list.d' / 'debian.sources').write_text(SOURCES)
    (tmp_path / 'sources.list.d' / 'other.list.disabled').write_text('deb http://no.example/debian sid main\n')
    entries = _vm_image.read_apt_sources(str(tmp_path / 'sources.list'), str(tmp_path / 'sources.list.d'))
    assert entries == ENTRIES


def cache(tmp_path, **kwargs):
    kwargs.setdefault('sources', ENTRIES)
    return ImageCache(kwargs.pop('run', None), str(tmp_path / 'cache'), **kwargs)


@pytest.mark.parametrize('release', ['buster', 'sid', 'jammy', '', None])
def test_unknown_release(tmp_path, release):
    with pytest.raises(VmImageError) as exc:
        cache(tmp_path).spec(release)
    assert str(exc.value) == _vm_image.MSG_RELEASE % (release,)
    assert 'bullseye, bookworm, trixie' in str(exc.value)
    assert not (tmp_path / 'cache').exists()


def test_no_mirror(tmp_path):
    with pytest.raises(VmImageError) as exc:
        cache(tmp_path, sources=[]).spec('bookworm')
    assert str(exc.value) == _vm_image.MSG_NO_MIRROR % '/etc/apt/sources.list, /etc/apt/sources.list.d'


def test_bad_mirror(tmp_path):
    with pytest.raises(VmImageError) as exc:
        cache(tmp_path).spec('bookworm', mirror='ftp://old.example/debian')
    assert str(exc.value) == _vm_image.MSG_MIRROR % 'ftp://old.example/debian'


@pytest.mark.parametrize('path', ['relative/dir', '/', '', '/with space/cache'])
def test_bad_cache_dir(path):
    with pytest.raises(VmImageError) as exc:
        ImageCache(None, path)
    assert str(exc.value) == _vm_image.MSG_CACHE_DIR % (path,)


def test_spec_sources_and_key(tmp_path):
    spec = cache(tmp_path).spec('trixie')
    assert spec['sources'] == ['deb http://archive.example/debian trixie main',
                               'deb http://archive.example/debian trixie-updates main',
                               'deb http://archive.example/debian-security trixie-security main']
    assert spec['key'] == cache(tmp_path).spec('trixie')['key']  # stable
    assert len(spec['key']) == 16


def test_key_follows_every_input(tmp_path, monkeypatch):
    base = image_spec('bookworm', 'http://a.example/debian', None)['key']
    assert image_spec('bullseye', 'http://a.example/debian', None)['key'] != base
    assert image_spec('bookworm', 'http://b.example/debian', None)['key'] != base
    assert image_spec('bookworm', 'http://a.example/debian', 'http://a.example/debian-security')['key'] != base
    assert image_spec('bookworm', 'http://a.example/debian', None, packages=('python3',))['key'] != base
    assert image_spec('bookworm', 'http://a.example/debian', None, size='8G')['key'] != base
    monkeypatch.setattr(_vm_image, 'BUILDER_VERSION', 'next')
    assert image_spec('bookworm', 'http://a.example/debian', None)['key'] != base
    monkeypatch.undo()
    files = dict(_vm_image.BAKED_FILES)
    files['/usr/local/sbin/tcplab-seed'] = (_vm_image.SEED_SCRIPT + '# changed\n', 0o755)
    monkeypatch.setattr(_vm_image, 'BAKED_FILES', files)
    assert image_spec('bookworm', 'http://a.example/debian', None)['key'] != base


def test_packages_are_minimal():
    assert {'python3', 'openssh-server', 'sudo', 'iproute2', 'linux-image-amd64', 'systemd-sysv', 'udev',
            'python3-apt'} <= set(_vm_image.PACKAGES)
    assert not set(_vm_image.PACKAGES) & {'python3-scapy', 'tcpdump', 'iptables', 'nftables'}


def test_mmdebstrap_argv(tmp_path):
    spec = cache(tmp_path).spec('bookworm')
    argv = mmdebstrap_argv('/usr/bin/mmdebstrap', spec, '/x/rootfs', ['--essential-hook=copy-in /s/a /etc'])
    assert argv[:4] == ['/usr/bin/mmdebstrap', '--mode=root', '--variant=apt', '--format=directory']
    # the package lists the build fetched stay in the image: a VM's first apt-get update fetches what changed since
    assert '--skip=cleanup/apt/lists' in argv
    assert 'Acquire::Languages "none";' in _vm_image.BAKED_FILES['/etc/apt/apt.conf.d/50tcplab-no-translations'][0]
    assert '--include=%s' % ','.join(sorted(_vm_image.PACKAGES)) in argv
    assert '--essential-hook=copy-in /s/a /etc' in argv
    assert argv[-5:] == ['bookworm', '/x/rootfs'] + spec['sources']


def test_stage_initramfs_files(tmp_path):
    hooks = _vm_image.stage_initramfs_files(str(tmp_path))
    assert hooks == ['--essential-hook=copy-in %s/etc/tiny-initramfs /etc' % tmp_path]
    conf = (tmp_path / 'etc/tiny-initramfs/tiny-initramfs.conf').read_text()
    assert 'AUTO_MODULES=no' in conf and 'virtio_blk' in conf and 'ext4' in conf


@pytest.mark.parametrize('missing, package', [('mmdebstrap', 'mmdebstrap'), ('mkfs.ext4', 'e2fsprogs'),
                                              ('qemu-img', 'qemu-utils')])
def test_missing_tool_names_the_package(missing, package):
    def which(name, path=None):
        return None if name == missing else '/usr/bin/' + name
    with pytest.raises(VmImageError) as exc:
        find_tools(sorted(_vm_image.TOOLS), which=which)
    assert str(exc.value) == _vm_image.MSG_TOOL % (missing, package)
    assert 'apt-get install %s' % package in str(exc.value)


def test_not_enough_disk(tmp_path):
    def statvfs(path):
        return SimpleNamespace(f_bavail=1000, f_frsize=4096)
    with pytest.raises(VmImageError) as exc:
        check_free_space(str(tmp_path), needed=3 * 2 ** 30, statvfs=statvfs)
    assert str(exc.value) == _vm_image.MSG_DISK % (tmp_path, 3, 3072)
    assert check_free_space(str(tmp_path), needed=1) > 0


def test_forbidden_packages():
    check_packages('bookworm', ['python3', 'sudo'])
    with pytest.raises(VmImageError) as exc:
        check_packages('bookworm', ['python3', 'tcpdump', 'iptables'])
    assert str(exc.value) == _vm_image.MSG_FORBIDDEN % ('bookworm', 'iptables, tcpdump')


def test_mounts_under_and_remove_tree_refuses_mounts(tmp_path):
    target = tmp_path / 'build'
    (target / 'rootfs' / 'proc').mkdir(parents=True)
    info = tmp_path / 'mountinfo'
    info.write_text('22 1 0:5 / /proc rw - proc proc rw\n'
                    '99 22 0:5 / %s/rootfs/proc rw - proc proc rw\n' % target)
    assert mounts_under(str(target), str(info)) == ['%s/rootfs/proc' % target]
    assert mounts_under(str(tmp_path / 'buil'), str(info)) == []  # a prefix of the name is not "under"
    remove_tree(str(target))  # nothing is mounted there really
    assert not target.exists()


def test_remove_tree_refuses_a_mounted_tree(tmp_path, monkeypatch):
    (tmp_path / 'w').mkdir()
    monkeypatch.setattr(_vm_image, 'mounts_under', lambda d: [d + '/rootfs/dev'])
    with pytest.raises(VmImageError) as exc:
        remove_tree(str(tmp_path / 'w'))
    assert 'umount -R' in str(exc.value)
    assert (tmp_path / 'w').exists()


# -- a build with a fake mmdebstrap/mkfs/chroot -----------------------------------

class FakeBuild:
    """Plays mmdebstrap, chroot, mkfs.ext4 and qemu-img on the file system."""

    def __init__(self, installed=('python3', 'sudo', 'openssh-server'), fail=None):
        self.calls = []
        self.installed = installed
        self.fail = fail

    def __call__(self, argv, check=True, ok_rc=(0,), data=None, what=None):
        self.calls.append(list(argv))
        name = os.path.basename(argv[0])
        if name == self.fail:
            raise _vm_image.VmImageError('%s failed' % name)
        if name == 'mmdebstrap':
            self._bootstrap(argv[-4])
        elif name == 'chroot' and argv[2] == 'dpkg-query':
            return 0, '\n'.join(self.installed) + '\n', ''
        elif name == 'mkfs.ext4':
            with open(argv[-2], 'wb') as handle:
                handle.truncate(1024)
        return 0, 'ok\n', ''

    @staticmethod
    def _bootstrap(rootfs):
        for path in ('boot', 'etc/ssh', 'etc/systemd/system'):
            os.makedirs(os.path.join(rootfs, path))
        for leaf, text in (('boot/vmlinuz-6.1.0-9-amd64', 'k'), ('boot/initrd.img-6.1.0-9-amd64', 'i'),
                           ('etc/ssh/sshd_config', 'Include /etc/ssh/sshd_config.d/*.conf\n'),
                           ('etc/ssh/ssh_host_rsa_key', 'secret'), ('etc/ssh/ssh_host_rsa_key.pub', 'pub')):
            with open(os.path.join(rootfs, leaf), 'w') as handle:
                handle.write(text)

    def names(self):
        return [os.path.basename(argv[0]) + (' ' + argv[2] if argv[0].endswith('chroot') else '') for argv in self.calls]


TOOLS = {name: '/usr/bin/%s' % name for name in _vm_image.TOOLS}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason='builds need root')


@needs_root
def test_build_publishes_atomically_and_caches(tmp_path):
    run = FakeBuild()
    images = cache(tmp_path, run=run, tools=TOOLS)
    info = images.ensure('bookworm')
    assert info['built'] is True
    assert run.names() == ['mmdebstrap', 'chroot useradd', 'chroot dpkg-query', 'mkfs.ext4', 'qemu-img']
    assert info['dir'] == str(tmp_path / 'cache' / ('bookworm-' + info['key']))
    assert info['kernel_version'] == '6.1.0-9-amd64'
    for name in ('disk', 'kernel', 'initrd'):
        assert stat.S_IMODE(os.stat(info[name]).st_mode) == 0o444  # the base is never written
    manifest = json.loads((tmp_path / 'cache' / ('bookworm-' + info['key']) / 'manifest.json').read_text())
    assert manifest['key'] == info['key'] and manifest['packages'] == ['openssh-server', 'python3', 'sudo']
    # nothing but the entry and its lock file
    assert sorted(os.listdir(tmp_path / 'cache')) == ['.bookworm-%s.lock' % info['key'], 'bookworm-' + info['key']]
    # cached: no command at all
    again = cache(tmp_path, run=None, tools=TOOLS).ensure('bookworm')
    assert again['built'] is False and again['build_id'] == info['build_id']


@needs_root
def test_build_customizes_the_rootfs(tmp_path, monkeypatch):
    seen = {}
    real_mkfs = _vm_image.mkfs_argv

    def mkfs_argv(tool, rootfs, disk, size):
        seen['rootfs'] = {os.path.relpath(os.path.join(d, f), rootfs) for d, dirs, fs in os.walk(rootfs) for f in fs}
        seen['links'] = {os.path.relpath(os.path.join(d, f), rootfs): os.readlink(os.path.join(d, f))
                         for d, dirs, fs in os.walk(rootfs) for f in fs if os.path.islink(os.path.join(d, f))}
        seen['sudoers'] = stat.S_IMODE(os.stat(os.path.join(rootfs, 'etc/sudoers.d/tcplab')).st_mode)
        return real_mkfs(tool, rootfs, disk, size)
    monkeypatch.setattr(_vm_image, 'mkfs_argv', mkfs_argv)
    cache(tmp_path, run=FakeBuild(), tools=TOOLS).ensure('bookworm')
    assert 'etc/ssh/ssh_host_rsa_key' not in seen['rootfs']  # each VM's host key comes from its seed
    assert {'usr/local/sbin/tcplab-seed', 'etc/sudoers.d/tcplab', 'etc/modules-load.d/tcplab.conf',
            'etc/ssh/sshd_config.d/tcplab.conf', 'etc/machine-id'} <= seen['rootfs']
    assert seen['sudoers'] == 0o440
    assert seen['links']['etc/systemd/system/multi-user.target.wants/tcplab-seed.service'] == \
        '/etc/systemd/system/tcplab-seed.service'
    assert seen['links']['etc/systemd/system/apt-daily.timer'] == '/dev/null'


@needs_root
@pytest.mark.parametrize('fail', ['mmdebstrap', 'mkfs.ext4', 'qemu-img'])
def test_failed_build_leaves_nothing(tmp_path, fail):
    with pytest.raises(VmImageError):
        cache(tmp_path, run=FakeBuild(fail=fail), tools=TOOLS).ensure('bookworm')
    assert [n for n in os.listdir(tmp_path / 'cache') if not n.endswith('.lock')] == []


@needs_root
def test_forbidden_package_fails_the_build(tmp_path):
    with pytest.raises(VmImageError) as exc:
        cache(tmp_path, run=FakeBuild(installed=('python3', 'tcpdump')), tools=TOOLS).ensure('bookworm')
    assert str(exc.value) == _vm_image.MSG_FORBIDDEN % ('bookworm', 'tcpdump')
    assert [n for n in os.listdir(tmp_path / 'cache') if not n.endswith('.lock')] == []


@needs_root
def test_rebuild_replaces_the_entry(tmp_path):
    first = cache(tmp_path, run=FakeBuild(), tools=TOOLS).ensure('bookworm')
    second = cache(tmp_path, run=FakeBuild(), tools=TOOLS).ensure('bookworm', rebuild=True)
    assert second['built'] is True and second['dir'] == first['dir'] and second['build_id'] != first['build_id']
    assert [n for n in os.listdir(tmp_path / 'cache') if not n.endswith('.lock')] == ['bookworm-' + first['key']]


@needs_root
def test_not_enough_disk_before_anything(tmp_path, monkeypatch):
    run = FakeBuild()
    monkeypatch.setattr(_vm_image, 'MIN_FREE_BYTES', 2 ** 62)
    with pytest.raises(VmImageError) as exc:
        cache(tmp_path, run=run, tools=TOOLS).ensure('bookworm')
    assert 'not enough free space in %s' % (tmp_path / 'cache') in str(exc.value)
    assert run.calls == []


def test_stale_build_dirs_are_cleaned(tmp_path):
    images = cache(tmp_path)
    os.makedirs(str(tmp_path / 'cache' / '.build-bookworm-abc-999999999' / 'rootfs'))
    os.makedirs(str(tmp_path / 'cache' / ('.build-bookworm-abc-%d' % os.getppid())))  # its process lives
    images._clean_stale_builds()
    assert sorted(os.listdir(tmp_path / 'cache')) == ['.build-bookworm-abc-%d' % os.getppid()]


@pytest.mark.skipif(not shutil.which('shellcheck'), reason='needs shellcheck')
def test_seed_script_is_shellcheck_clean(tmp_path):
    script = tmp_path / 'tcplab-seed'
    script.write_text(_vm_image.SEED_SCRIPT)
    proc = subprocess.run(['shellcheck', '-s', 'sh', str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_seed_unit_runs_before_network_and_sshd():
    unit = _vm_image.SEED_UNIT
    before = [line for line in unit.splitlines() if line.startswith('Before=')][0].split('=', 1)[1].split()
    assert {'network-pre.target', 'network.target', 'ssh.service'} <= set(before)
    assert 'After=' in unit and 'sys-subsystem-net-devices-eth0.device' in unit
    assert 'ExecStart=/usr/local/sbin/tcplab-seed' in unit
    # the script's own wait for a late NIC (600 s) fits in the unit's start timeout
    assert 'TimeoutStartSec=660' in unit and 'tries" -lt 1200' in _vm_image.SEED_SCRIPT
    assert _vm_image.SEED_FW_CFG in _vm_image.SEED_SCRIPT


# -- real -----------------------------------------------------------------

@pytest.mark.skipif(not REAL or os.geteuid() != 0, reason='set TCPLAB_VM_TESTS=1 (as root) to build a real image')
def test_real_bookworm_image():
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import Runner

    class Module:
        def run_command(self, args, check_rc=False, data=None, binary_data=False, environ_update=None,
                        use_unsafe_shell=False):
            proc = subprocess.run(args, capture_output=True, env=dict(os.environ, **(environ_update or {})), check=False)
            return proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace')

    images = ImageCache(Runner(Module()), REAL_CACHE)
    info = images.ensure('bookworm')
    assert info['kernel_version'].endswith('-amd64')
    assert {'python3', 'openssh-server', 'sudo', 'iproute2', 'systemd-sysv', 'udev'} <= set(info['packages'])
    assert not set(info['packages']) & {'python3-scapy', 'tcpdump', 'iptables', 'nftables'}
    again = images.ensure('bookworm')
    assert again['built'] is False and again['seconds'] < 5

    def cat(path):  # read the ext4 image without mounting it
        proc = subprocess.run(['debugfs', '-R', 'cat %s' % path, info['disk']], capture_output=True, check=True)
        return proc.stdout.decode()
    assert cat('/usr/local/sbin/tcplab-seed') == _vm_image.SEED_SCRIPT
    assert cat('/etc/sudoers.d/tcplab') == _vm_image.SUDOERS
    assert 'tcplab:' in cat('/etc/passwd')
    assert 'qemu_fw_cfg' in subprocess.run(['debugfs', '-R', 'ls -l /usr/lib/modules/%s/kernel/drivers/firmware'
                                            % info['kernel_version'], info['disk']],
                                           capture_output=True, text=True, check=True).stdout
    assert subprocess.run(['debugfs', '-R', 'stat /etc/ssh/ssh_host_rsa_key', info['disk']],
                          capture_output=True, text=True, check=False).stderr.count('File not found') == 1


# -- housekeeping: images nothing has used for PRUNE_AFTER_DAYS go -----------------

def _entry(root, release, key, days_unused, manifest_key=None):
    """A complete-looking cache entry last used days_unused days ago."""
    directory = root / ('%s-%s' % (release, key))
    directory.mkdir(parents=True)
    (directory / 'manifest.json').write_text(json.dumps({'release': release, 'key': manifest_key or key}))
    (directory / 'disk.img').write_bytes(b'x')
    (root / ('.%s-%s.lock' % (release, key))).write_text('')
    stamp = directory / 'last-used'
    stamp.write_text('')
    when = time.time() - days_unused * 86400
    os.utime(stamp, (when, when))
    return directory


@needs_root
def test_an_image_is_stamped_at_each_use_and_the_release_s_unused_ones_go(tmp_path):
    lines = []
    first = cache(tmp_path, run=FakeBuild(), tools=TOOLS, log=lines.append).ensure('bookworm')
    root = tmp_path / 'cache'
    stamp = os.path.join(first['dir'], 'last-used')
    assert os.path.isfile(stamp)
    os.utime(stamp, (1, 1))
    old = _entry(root, 'bookworm', 'a' * 16, 30)                      # unused for 30 days: goes
    recent = _entry(root, 'bookworm', 'b' * 16, 3)                    # used 3 days ago: stays
    other_release = _entry(root, 'trixie', 'c' * 16, 30)              # another release's run prunes it
    not_ours = _entry(root, 'bookworm', 'd' * 16, 30, manifest_key='e' * 16)   # its manifest says otherwise
    (root / ('bookworm-' + 'f' * 16)).mkdir()                          # no manifest: not ours
    in_use = _entry(root, 'bookworm', '1' * 16, 30)
    user = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', str(in_use / 'vmlinuz')])
    held = _entry(root, 'bookworm', '2' * 16, 30)
    holder = subprocess.Popen(['flock', str(root / ('.bookworm-%s.lock' % ('2' * 16))), 'sleep', '60'])
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(['flock', '-n', str(root / ('.bookworm-%s.lock' % ('2' * 16))), 'true'],
                             check=False).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        del lines[:]
        again = cache(tmp_path, run=None, tools=TOOLS, log=lines.append).ensure('bookworm')
    finally:
        for proc in (user, holder):
            proc.kill()
            proc.wait()
    assert again['built'] is False and os.stat(stamp).st_mtime > time.time() - 60   # stamped anew
    assert not old.exists() and not (root / ('.bookworm-%s.lock' % ('a' * 16))).exists()
    assert recent.exists() and other_release.exists() and not_ours.exists() and (root / ('bookworm-' + 'f' * 16)).exists()
    assert in_use.exists() and held.exists() and os.path.isdir(first['dir'])
    said = ' | '.join(lines)
    assert 'removed the lab VM image %s, unused for 30 days (more than 14)' % old in said, said
    assert 'kept the lab VM image %s, unused for 30 days: process %d uses it' % (in_use, user.pid) in said, said
    assert 'kept the lab VM image %s: another run holds its lock' % held in said, said
