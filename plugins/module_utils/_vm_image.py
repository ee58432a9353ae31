# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Base images of lab VMs, built from Debian's archive.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

An image is what a minimal Debian cloud image holds (python3, openssh-server,
sudo, iproute2, the release's own kernel and what boot needs; no scapy,
tcpdump, iptables or nftables), made with mmdebstrap from the Debian archive
that this machine's apt sources use, then turned into an ext4 disk without
loop mounts (``mkfs.ext4 -d``). The kernel and initrd lie beside the disk so
that QEMU boots them directly. The image keeps the package lists its build
fetched, and its apt fetches no translations (the build fetched none): a
VM's first ``apt-get update`` then fetches only what the archive changed
since (under software emulation, fetching a release's whole lists takes a
VM a minute or more).

Nothing in an image is specific to one VM: a login user ``tcplab`` with
passwordless sudo but no key, and a first-boot unit (``tcplab-seed``) that
reads the VM's own settings from QEMU's fw_cfg at every boot (see _vm.py for
the seed). Images are cached by release and by a hash of everything that
shaped them; a build happens in a temporary directory that is renamed into
place when complete. VMs never write the base image: each runs on its own
qcow2 overlay.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import starttime
from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image_prune import MANIFEST, mark_used, prune

RELEASES = ('bullseye', 'bookworm', 'trixie')
DEFAULT_RELEASE = 'bookworm'
DEFAULT_CACHE_DIR = '/var/cache/tcplab-keepalive/images'
# Bump when the build logic changes in a way the hashed inputs below do not show.
BUILDER_VERSION = '3'
IMAGE_SIZE = '4G'
MIN_FREE_BYTES = 3 * 1024 ** 3
LOGIN_USER = 'tcplab'
SEED_FW_CFG = 'opt/tcplab/seed'

# What a minimal cloud image holds; iptables, nftables, tcpdump and scapy are left out on purpose.
# python3-apt: Debian's cloud images carry it (their unattended-upgrades needs it), and ansible's apt
# module uses it. Without it, that module's first run on a VM fetches the package lists, installs it and
# starts again (under TCG a large part of installing the experiment's tools).
PACKAGES = (
    'systemd-sysv', 'udev', 'dbus', 'libpam-systemd', 'kmod', 'e2fsprogs', 'tiny-initramfs',
    'linux-image-amd64', 'iproute2', 'openssh-server', 'sudo', 'python3', 'python3-apt',
)
ABSENT_PACKAGES = ('python3-scapy', 'tcpdump', 'iptables', 'nftables')
DPKG_EXCLUDES = (
    'path-exclude=/usr/share/man/*',
    'path-exclude=/usr/share/locale/*',
    'path-exclude=/usr/share/doc/*',
    'path-include=/usr/share/doc/*/copyright',
)
# Timers that would run apt or disk jobs in the background of an experiment.
MASKED_TIMERS = ('apt-daily.timer', 'apt-daily-upgrade.timer', 'e2scrub_all.timer', 'e2scrub_reap.service',
                 'fstrim.timer', 'dpkg-db-backup.timer')
# Units a headless lab VM does not use. Under TCG every process started at boot costs a share of the
# boot-to-SSH time (and three VMs boot on two cores), so what serves nobody here is not started:
# consoles nobody logs in on (the login has no password), file systems and kernel modules for hardware
# and features the lab does not have, a runlevel record, the flush of a journal kept in memory.
MASKED_BOOT_UNITS = (
    'getty@tty1.service', 'serial-getty@ttyS0.service',
    'modprobe@drm.service', 'modprobe@dm_mod.service', 'modprobe@efi_pstore.service', 'modprobe@fuse.service',
    'modprobe@loop.service', 'modprobe@configfs.service', 'kmod-static-nodes.service',
    'dev-hugepages.mount', 'dev-mqueue.mount', 'sys-kernel-debug.mount', 'sys-kernel-tracing.mount',
    'sys-fs-fuse-connections.mount', 'sys-kernel-config.mount', 'proc-sys-fs-binfmt_misc.automount',
    'systemd-binfmt.service', 'systemd-pstore.service', 'systemd-update-utmp-runlevel.service',
    'systemd-journal-flush.service',
)
MASKED_UNITS = MASKED_TIMERS + MASKED_BOOT_UNITS
DEBIAN_SUITES = RELEASES + ('buster', 'forky', 'sid', 'oldoldstable', 'oldstable', 'stable', 'testing', 'unstable')
SOURCES_LIST = '/etc/apt/sources.list'
SOURCES_DIR = '/etc/apt/sources.list.d'

TOOLS = {
    'mmdebstrap': 'mmdebstrap',
    'mkfs.ext4': 'e2fsprogs',
    'qemu-img': 'qemu-utils',
    'chroot': 'coreutils',
}

MSG_RELEASE = 'release %r is not supported: use one of bullseye, bookworm, trixie'
MSG_TOOL = '%s is needed to build lab VM images and was not found: install it (Debian/Ubuntu: apt-get install %s)'
MSG_DISK = ('not enough free space in %s to build a lab VM image: %d MiB free, %d MiB needed; '
            'free some space or set the image cache directory to a larger file system')
MSG_NO_MIRROR = ('no Debian archive found in the apt sources (%s): give the mirror explicitly '
                 '(the URI of a Debian archive, as used in a deb line)')
MSG_MIRROR = 'mirror %r is not an http(s) URI: give the URI of a Debian archive, as used in a deb line'
MSG_CACHE_DIR = 'image cache directory must be an absolute path without spaces that is not "/", got %r'
MSG_KERNEL = 'the image of %s holds %d kernels in /boot (%s), expected exactly one: rebuild with rebuild: true'
MSG_FORBIDDEN = ('the image of %s holds %s, which a minimal image must not hold: '
                 'remove it from the package list and rebuild')
MSG_MOUNTED = ('%s still has file systems mounted under it (%s), left by an interrupted mmdebstrap: '
               'unmount them (umount -R), then remove the directory')
MSG_NOT_ROOT = 'building lab VM images needs root (running as uid %d): use become: true or run as root'


class VmImageError(Exception):
    """A lab VM image cannot be built or used; the message names the fix."""


# -- files baked into every image -------------------------------------------

SEED_SCRIPT = r'''#!/bin/sh
# tcplab-seed: apply this VM's own settings (hostname, address, keys, apt proxy)
# from the seed that QEMU hands over through fw_cfg (opt/tcplab/seed). Runs at
# every boot before sshd, so that one base image serves every VM. Written by
# tcplab.keepalive; the seed format is documented in _vm.py. Shell built-ins
# where they do: every program started costs time in an emulated VM.
set -eu
SEED=/sys/firmware/qemu_fw_cfg/by_name/opt/tcplab/seed/raw
say() { echo "tcplab-seed: $*"; }
fail() { say "$*"; exit 1; }

[ -r "$SEED" ] || modprobe qemu_fw_cfg 2>/dev/null || true
if [ ! -r "$SEED" ]; then
    say "no seed at $SEED (QEMU option -fw_cfg name=opt/tcplab/seed,file=...): image defaults kept"
    [ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -A
    exit 0
fi
version='' hostname='' address='' gateway='' mac='' apt_proxy='' host_key='' host_key_pub='' keys=''
while IFS= read -r line || [ -n "$line" ]; do
    value=${line#*=}
    case "$line" in
        version=*) version=$value ;;
        hostname=*) hostname=$value ;;
        address=*) address=$value ;;
        gateway=*) gateway=$value ;;
        mac=*) mac=$value ;;
        apt_proxy=*) apt_proxy=$value ;;
        host_key_ed25519=*) host_key=$value ;;
        host_key_ed25519_pub=*) host_key_pub=$value ;;
        authorized_key=*) keys="$keys$value
" ;;
    esac
done < "$SEED"
[ "$version" = 1 ] || fail "seed version '$version' is not 1: boot with an image of this collection"
case "$hostname" in ''|-*|*[!A-Za-z0-9-]*) fail "bad hostname '$hostname'";; esac
case "$address" in ''|*[!0-9./]*) fail "bad address '$address'";; esac
case "$gateway" in *[!0-9.]*) fail "bad gateway '$gateway'";; esac
case "$mac" in *[!0-9a-f:]*) fail "bad mac '$mac'";; esac
case "$apt_proxy" in *[!A-Za-z0-9:/.-]*) fail "bad apt_proxy '$apt_proxy'";; esac
umask 022

echo "$hostname" > /etc/hostname
echo "$hostname" > /proc/sys/kernel/hostname
{
    echo "# Written at every boot by tcplab-seed from this VM's seed: edits are lost."
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$hostname"
} > /etc/hosts

# net.ifnames=0 makes the one NIC eth0. This unit starts once udev has announced it, or
# once systemd stops waiting for it (90 s): on a loaded host under TCG udev has taken longer,
# so the NIC is waited for here too (up to 600 s, the unit's TimeoutStartSec allows it).
nic_present() {
    for dev in /sys/class/net/*; do [ "${dev##*/}" = lo ] || return 0; done
    return 1
}
tries=0
until nic_present; do
    [ "$tries" -lt 1200 ] || fail "no network device after 600 s (is the VM's virtio-net device there?)"
    [ "$tries" -gt 0 ] || say "waiting for the network device"
    tries=$((tries + 1))
    sleep 0.5
done
iface=eth0
for dev in /sys/class/net/*; do
    dev_mac=''
    read -r dev_mac < "$dev/address" || true
    if [ -n "$mac" ] && [ "$dev_mac" = "$mac" ]; then iface=${dev##*/}; fi
done
# one ip for all of it; "replace" keeps a restart of this unit harmless
{
    echo "link set dev $iface up"
    echo "address replace $address dev $iface"
    if [ -n "$gateway" ]; then echo "route replace default via $gateway dev $iface"; fi
} | ip -batch -

if [ -n "$apt_proxy" ]; then
    printf 'Acquire::http::Proxy "%s";\n' "$apt_proxy" > /etc/apt/apt.conf.d/01tcplab-proxy
elif [ -e /etc/apt/apt.conf.d/01tcplab-proxy ]; then
    rm -f /etc/apt/apt.conf.d/01tcplab-proxy
fi

install -d -m 0700 -o tcplab -g tcplab /home/tcplab/.ssh
(umask 077 && printf '%s' "$keys" > /home/tcplab/.ssh/authorized_keys)
chown tcplab:tcplab /home/tcplab/.ssh/authorized_keys
if [ -n "$host_key" ]; then
    (umask 077 && printf '%s\n' "$host_key" | base64 -d > /etc/ssh/ssh_host_ed25519_key)
    printf '%s\n' "$host_key_pub" > /etc/ssh/ssh_host_ed25519_key.pub
elif [ ! -e /etc/ssh/ssh_host_ed25519_key ]; then
    ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
fi
say "$hostname: $address on $iface${gateway:+ via $gateway}${apt_proxy:+, apt proxy $apt_proxy}"
'''

SEED_UNIT = '''[Unit]
Description=tcplab lab VM settings from the QEMU fw_cfg seed
DefaultDependencies=no
After=local-fs.target systemd-modules-load.service sys-subsystem-net-devices-eth0.device
Wants=sys-subsystem-net-devices-eth0.device network-pre.target
Before=network-pre.target network.target ssh.service systemd-user-sessions.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/tcplab-seed
# the script waits up to 600 s for a NIC that udev announces late (a loaded host under TCG)
TimeoutStartSec=660
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
'''

SSHD_DROPIN = '''# tcplab.keepalive lab VM: key logins of tcplab only; the host key comes from the VM's seed.
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin no
PasswordAuthentication no
'''

SUDOERS = '# tcplab.keepalive lab VM login\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n' % LOGIN_USER
# The kernel command line mounts the root file system read-write (rw, rootflags): nothing to check
# or remount on a VM's fresh copy-on-write overlay.
FSTAB = '# / is /dev/vda (ext4), mounted by the initramfs as the kernel command line says\n'
JOURNALD = ('# tcplab.keepalive lab VM: the journal lives in memory (the serial console log is kept on '
            'the host)\n[Journal]\nStorage=volatile\n')
SSH_UNIT_DROPIN = '# tcplab.keepalive lab VM: no configuration test before every start\n[Service]\nExecStartPre=\n'
HOSTS = '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n'

# The initramfs is Debian's tiny-initramfs: one small static init that loads the modules that find the
# root file system of a lab VM (a virtio disk with ext4; crc32c is what ext4 asks the crypto API for)
# and mounts it. No shell, no udev: under TCG the full initramfs-tools one took about 5 s of every boot.
# In place before the kernel is installed (an mmdebstrap essential hook), so that it is made once.
INITRAMFS_FILES = {
    'etc/tiny-initramfs/tiny-initramfs.conf': ('# tcplab.keepalive lab VM\nAUTO_MODULES=no\nMICROCODE=no\n'
                                               'INCLUDE_MODULES="virtio_pci virtio_blk crc32c_generic ext4"\n'),
}

# path in the image -> (text, mode)
# The package lists of the build stay in the image (mmdebstrap fetches no translations): a VM's apt then
# fetches none either, so its first apt-get update finds the lists it has current.
APT_NO_TRANSLATIONS = ('// tcplab lab VM: the image keeps the package lists of its build, which hold no translations\n'
                       'Acquire::Languages "none";\n')

BAKED_FILES = {
    '/usr/local/sbin/tcplab-seed': (SEED_SCRIPT, 0o755),
    '/etc/systemd/system/tcplab-seed.service': (SEED_UNIT, 0o644),
    '/etc/modules-load.d/tcplab.conf': ('qemu_fw_cfg\n', 0o644),
    '/etc/ssh/sshd_config.d/tcplab.conf': (SSHD_DROPIN, 0o644),
    '/etc/sudoers.d/tcplab': (SUDOERS, 0o440),
    '/etc/systemd/journald.conf.d/tcplab.conf': (JOURNALD, 0o644),
    '/etc/systemd/system/ssh.service.d/tcplab.conf': (SSH_UNIT_DROPIN, 0o644),
    '/etc/fstab': (FSTAB, 0o644),
    '/etc/apt/apt.conf.d/50tcplab-no-translations': (APT_NO_TRANSLATIONS, 0o644),
    '/etc/hostname': ('tcplab\n', 0o644),
    '/etc/hosts': (HOSTS, 0o644),
    '/etc/resolv.conf': ('# lab VMs reach only the lab network: no name server\n', 0o644),
    '/etc/machine-id': ('', 0o444),
}
# path in the image -> link target
BAKED_LINKS = {'/etc/systemd/system/multi-user.target.wants/tcplab-seed.service': '/etc/systemd/system/tcplab-seed.service'}
BAKED_LINKS.update(('/etc/systemd/system/%s' % unit, '/dev/null') for unit in MASKED_UNITS)


# -- apt sources ------------------------------------------------------------

def _deb822_stanzas(text):
    """Stanzas of a deb822 file as dicts of lower-case field name -> value (continuations joined)."""
    stanzas, current, last = [], {}, None
    for raw in text.splitlines():
        if raw.startswith('#'):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, last = {}, None
        elif raw[0] in ' \t' and last:
            current[last] += ' ' + raw.strip()
        elif ':' in raw:
            key, value = raw.split(':', 1)
            last = key.strip().lower()
            current[last] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def parse_deb822(text):
    """Source entries ({types, uris, suites, components}) of a .sources file; disabled ones left out."""
    entries = []
    for stanza in _deb822_stanzas(text):
        if stanza.get('enabled', 'yes').lower() == 'no':
            continue
        entries.append({field: stanza.get(field, '').split() for field in ('types', 'uris', 'suites', 'components')})
    return entries


def parse_one_line(text):
    """Source entries of a one-line sources.list."""
    entries = []
    for raw in text.splitlines():
        line = raw.split('#', 1)[0].strip()
        if line.startswith('['):
            continue
        if ' [' in line and ']' in line:
            head, rest = line.split(' [', 1)
            line = head + ' ' + rest.split(']', 1)[1]
        words = line.split()
        if len(words) < 3 or words[0] not in ('deb', 'deb-src'):
            continue
        entries.append({'types': [words[0]], 'uris': [words[1]], 'suites': [words[2]], 'components': words[3:]})
    return entries


def read_apt_sources(sources_list=SOURCES_LIST, sources_dir=SOURCES_DIR):
    """Every enabled source entry of this machine's apt configuration."""
    entries = []
    paths = [sources_list] + sorted(glob.glob(os.path.join(sources_dir, '*.list')))
    paths += sorted(glob.glob(os.path.join(sources_dir, '*.sources')))
    for path in paths:
        try:
            with open(path) as handle:
                text = handle.read()
        except (IOError, OSError):
            continue
        entries.extend(parse_deb822(text) if path.endswith('.sources') else parse_one_line(text))
    return entries


def debian_mirrors(entries):
    """(archive URI, security URI or None) of the Debian archive these source entries use."""
    archive = security = None
    for entry in entries:
        if 'deb' not in entry['types'] or not entry['uris']:
            continue
        uri = entry['uris'][0].rstrip('/')
        if archive is None and any(suite in DEBIAN_SUITES for suite in entry['suites']):
            archive = uri
        if security is None and any(suite.endswith('-security') for suite in entry['suites']):
            security = uri
    return archive, security


def image_sources(release, archive, security):
    """The deb lines of an image: the release, its updates and (when known) its security suite."""
    lines = ['deb %s %s main' % (archive, release), 'deb %s %s-updates main' % (archive, release)]
    if security:
        lines.append('deb %s %s-security main' % (security, release))
    return lines


# -- the build --------------------------------------------------------------

def check_release(release):
    if release not in RELEASES:
        raise VmImageError(MSG_RELEASE % (release,))
    return release


def find_tools(names, which=shutil.which, path=None):
    """{name: path} of the build tools; a clear error naming the Debian package of a missing one."""
    search = os.pathsep.join([path or os.environ.get('PATH', ''), '/usr/sbin', '/sbin', '/usr/bin', '/bin'])
    found = {}
    for name in names:
        found[name] = which(name, path=search)
        if not found[name]:
            raise VmImageError(MSG_TOOL % (name, TOOLS.get(name, name)))
    return found


def check_free_space(directory, needed=MIN_FREE_BYTES, statvfs=os.statvfs):
    st = statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise VmImageError(MSG_DISK % (directory, free // 2 ** 20, needed // 2 ** 20))
    return free


def mounts_under(directory, mountinfo='/proc/self/mountinfo'):
    """Mount points at or below directory (an interrupted mmdebstrap may leave /proc, /dev... mounted)."""
    prefix = os.path.realpath(directory).rstrip('/') + '/'
    found = []
    try:
        with open(mountinfo) as handle:
            for line in handle:
                point = line.split()[4].replace('\\040', ' ')
                if (point + '/').startswith(prefix):
                    found.append(point)
    except (IOError, OSError):
        pass
    return found


def remove_tree(directory):
    """rmtree, but never through a mount point (a bind-mounted /dev would lose the host's device nodes)."""
    if not os.path.lexists(directory):
        return
    mounted = mounts_under(directory)
    if mounted:
        raise VmImageError(MSG_MOUNTED % (directory, ', '.join(mounted)))
    shutil.rmtree(directory)


def image_spec(release, archive, security, packages=PACKAGES, size=IMAGE_SIZE):
    """Everything that shapes an image, and the cache key (a hash of it)."""
    spec = {
        'builder': BUILDER_VERSION,
        'release': release,
        'sources': image_sources(release, archive, security),
        'packages': sorted(packages),
        'dpkg_excludes': list(DPKG_EXCLUDES),
        'size': size,
        'files': {path: [hashlib.sha256(text.encode('utf-8')).hexdigest(), oct(mode)]
                  for path, (text, mode) in sorted(BAKED_FILES.items())},
        'initramfs': {path: hashlib.sha256(text.encode('utf-8')).hexdigest() for path, text in sorted(INITRAMFS_FILES.items())},
        'links': dict(sorted(BAKED_LINKS.items())),
        'user': LOGIN_USER,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode('utf-8')).hexdigest()
    spec['key'] = digest[:16]
    return spec


def stage_initramfs_files(stage):
    """Write INITRAMFS_FILES under stage; returns the mmdebstrap hooks that copy them in."""
    for path, text in INITRAMFS_FILES.items():
        target = os.path.join(stage, path)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        atomic_write(target, text, 0o644)
    for root, dirs, files in os.walk(stage):
        os.chmod(root, 0o755)
    # copy-in DIR /parent puts DIR (with its tree) into /parent, which exists at that point
    dirs = sorted({os.path.dirname(path) for path in INITRAMFS_FILES})
    return ['--essential-hook=copy-in %s /%s' % (os.path.join(stage, path), os.path.dirname(path)) for path in dirs]


def mmdebstrap_argv(tool, spec, rootfs, hooks=()):
    argv = [tool, '--mode=root', '--variant=apt', '--format=directory', '--skip=cleanup/apt/lists',
            '--include=%s' % ','.join(spec['packages'])]
    argv += ['--dpkgopt=%s' % opt for opt in spec['dpkg_excludes']] + list(hooks)
    return argv + [spec['release'], rootfs] + spec['sources']


def mkfs_argv(tool, rootfs, disk, size):
    return [tool, '-q', '-F', '-L', 'tcplab-root', '-d', rootfs, disk, size]


def useradd_argv(chroot, rootfs):
    # '*': no password, yet not a locked account; keys come from the seed at boot
    return [chroot, rootfs, 'useradd', '--create-home', '--shell', '/bin/bash', '--password', '*',
            '--comment', 'tcplab.keepalive lab VM login', LOGIN_USER]


def _inside(rootfs, path):
    return os.path.join(rootfs, path.lstrip('/'))


def customize_rootfs(rootfs):
    """Write the baked files and links into a freshly bootstrapped root file system."""
    for path, (text, mode) in BAKED_FILES.items():
        target = _inside(rootfs, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        atomic_write(target, text, mode)
    for path, link in BAKED_LINKS.items():
        target = _inside(rootfs, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            os.unlink(target)
        os.symlink(link, target)
    # host keys made by openssh-server's postinst would be shared by every VM: each VM's comes from its seed
    for key in glob.glob(_inside(rootfs, '/etc/ssh/ssh_host_*')):
        os.unlink(key)
    sshd_config = _inside(rootfs, '/etc/ssh/sshd_config')
    with open(sshd_config) as handle:
        text = handle.read()
    if 'Include /etc/ssh/sshd_config.d/' not in text:
        atomic_write(sshd_config, 'Include /etc/ssh/sshd_config.d/*.conf\n' + text, 0o644)


def kernel_files(rootfs, release):
    """(vmlinuz, initrd, version) in the image's /boot."""
    kernels = sorted(glob.glob(_inside(rootfs, '/boot/vmlinuz-*')))
    if len(kernels) != 1:
        raise VmImageError(MSG_KERNEL % (release, len(kernels), ', '.join(os.path.basename(k) for k in kernels)))
    version = os.path.basename(kernels[0])[len('vmlinuz-'):]
    initrd = _inside(rootfs, '/boot/initrd.img-%s' % version)
    if not os.path.exists(initrd):
        raise VmImageError(MSG_KERNEL % (release, 0, 'no initrd.img-%s' % version))
    return kernels[0], initrd, version


def installed_packages(run, chroot, rootfs):
    rc, out, err = run([chroot, rootfs, 'dpkg-query', '-W', '-f', '${Package}\\n'], what='listing the packages of the image')
    return sorted(set(out.split()))


def check_packages(release, installed, absent=ABSENT_PACKAGES):
    found = sorted(set(installed) & set(absent))
    if found:
        raise VmImageError(MSG_FORBIDDEN % (release, ', '.join(found)))


class ImageCache:
    """Lab VM base images in one cache directory. `run` is a _common.Runner."""

    def __init__(self, run, cache_dir=DEFAULT_CACHE_DIR, tools=None, log=None, sources=None, clock=time.monotonic,
                 note=None):
        """log gets the build's progress lines; note (default: log) the housekeeping's (an image removed or kept)."""
        if not cache_dir or not os.path.isabs(cache_dir) or os.path.normpath(cache_dir) == '/' or len(cache_dir.split()) != 1:
            raise VmImageError(MSG_CACHE_DIR % (cache_dir,))
        self.run = run
        self.cache_dir = os.path.normpath(cache_dir)
        self.tools = tools
        self.log = log or (lambda line: None)
        self.note = note or self.log
        self.sources = sources
        self.clock = clock

    # -- lookup ----------------------------------------------------------
    def spec(self, release, mirror=None, security_mirror=None):
        check_release(release)
        archive, security = (mirror, security_mirror) if mirror else debian_mirrors(
            self.sources if self.sources is not None else read_apt_sources())
        if not archive:
            raise VmImageError(MSG_NO_MIRROR % ', '.join([SOURCES_LIST, SOURCES_DIR]))
        for uri in (archive, security):
            if uri and not uri.startswith(('http://', 'https://')):
                raise VmImageError(MSG_MIRROR % (uri,))
        return image_spec(release, archive.rstrip('/'), security.rstrip('/') if security else None)

    def entry_dir(self, spec):
        return os.path.join(self.cache_dir, '%s-%s' % (spec['release'], spec['key']))

    def cached(self, spec):
        """The image info of a complete cache entry for spec, or None."""
        directory = self.entry_dir(spec)
        try:
            with open(os.path.join(directory, MANIFEST)) as handle:
                manifest = json.load(handle)
        except (IOError, OSError, ValueError):
            return None
        if manifest.get('key') != spec['key']:
            return None
        info = self._info(directory, manifest)
        if not all(os.path.isfile(info[name]) for name in ('disk', 'kernel', 'initrd')):
            return None
        return info

    @staticmethod
    def _info(directory, manifest):
        return {
            'release': manifest['release'], 'key': manifest['key'], 'build_id': manifest['build_id'],
            'dir': directory, 'disk': os.path.join(directory, 'disk.img'), 'disk_format': 'raw',
            'kernel': os.path.join(directory, 'vmlinuz'), 'initrd': os.path.join(directory, 'initrd.img'),
            'kernel_version': manifest['kernel_version'], 'packages': manifest['packages'],
        }

    # -- build -----------------------------------------------------------
    def ensure(self, release=DEFAULT_RELEASE, rebuild=False, mirror=None, security_mirror=None):
        """The image of release, built unless cached (or always with rebuild).

        Returns the image info (release, key, build_id, dir, disk, disk_format, kernel, initrd,
        kernel_version, packages) plus built (bool) and seconds (time taken). As root, the entry is looked up
        and stamped as used under its lock, and then the release's entries no use has stamped for
        PRUNE_AFTER_DAYS days are removed (_vm_image_prune: each under its own lock, never one a process uses).
        """
        started = self.clock()
        spec = self.spec(release, mirror, security_mirror)
        if os.geteuid() != 0:
            info = None if rebuild else self.cached(spec)
            if info is None:
                raise VmImageError(MSG_NOT_ROOT % os.geteuid())
        else:
            os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
            with self._lock(spec):
                info = None if rebuild else self.cached(spec)
                if info is None:
                    info = self._build(spec, self.tools or find_tools(sorted(TOOLS)))
                    info['built'] = True
                self._stamp(info['dir'])
            self._prune(spec, info['dir'])
        info.setdefault('built', False)
        info['seconds'] = round(self.clock() - started, 2)
        return info

    def _stamp(self, directory):
        try:
            mark_used(directory)
        except OSError as exc:
            self.note('could not stamp the lab VM image %s as used: %s' % (directory, exc))

    def _prune(self, spec, current):
        """Remove the release's entries no use has stamped for a while; a failure is said, never fatal."""
        try:
            prune(self.cache_dir, (spec['release'],), current, remove_tree, self.note,
                  lock=lambda release, key: self._lock({'release': release, 'key': key}, wait=False))
        except (OSError, VmImageError) as exc:
            self.note('the image cache housekeeping of %s did not finish: %s' % (self.cache_dir, exc))

    def _lock(self, spec, wait=True):
        return _FileLock(os.path.join(self.cache_dir, '.%s-%s.lock' % (spec['release'], spec['key'])), wait)

    def _build(self, spec, tools):
        self._clean_stale_builds()
        check_free_space(self.cache_dir, MIN_FREE_BYTES)
        work = os.path.join(self.cache_dir, '.build-%s-%s-%d' % (spec['release'], spec['key'], os.getpid()))
        remove_tree(work)
        os.mkdir(work, 0o700)
        try:
            return self._build_in(work, spec, tools)
        finally:
            remove_tree(work)

    def _build_in(self, work, spec, tools):
        rootfs = os.path.join(work, 'rootfs')
        out = os.path.join(work, 'out')
        os.mkdir(out, 0o755)
        hooks = stage_initramfs_files(os.path.join(work, 'stage'))
        self.log('building the %s lab VM image %s with mmdebstrap' % (spec['release'], spec['key']))
        rc, stdout, stderr = self.run(mmdebstrap_argv(tools['mmdebstrap'], spec, rootfs, hooks),
                                      what='mmdebstrap of %s' % spec['release'])
        customize_rootfs(rootfs)
        self.run(useradd_argv(tools['chroot'], rootfs), what='adding the %s user to the image' % LOGIN_USER)
        packages = installed_packages(self.run, tools['chroot'], rootfs)
        check_packages(spec['release'], packages)
        kernel, initrd, version = kernel_files(rootfs, spec['release'])
        shutil.copyfile(kernel, os.path.join(out, 'vmlinuz'))
        shutil.copyfile(initrd, os.path.join(out, 'initrd.img'))
        disk = os.path.join(out, 'disk.img')
        self.run(mkfs_argv(tools['mkfs.ext4'], rootfs, disk, spec['size']), what='mkfs.ext4 of the image')
        remove_tree(rootfs)
        self.run([tools['qemu-img'], 'info', '-f', 'raw', disk], what='checking the image with qemu-img')
        for name in ('disk.img', 'vmlinuz', 'initrd.img'):
            os.chmod(os.path.join(out, name), 0o444)  # the base is never written: VMs run on overlays
        manifest = dict(spec, kernel_version=version, packages=packages, built_at=int(time.time()),
                        build_id='%s-%d-%d' % (spec['key'], time.time_ns(), os.getpid()))
        atomic_write(os.path.join(out, 'build.log'), (stdout or '') + (stderr or ''), 0o644)
        atomic_write(os.path.join(out, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True) + '\n', 0o644)
        return self._info(self._publish(out, spec), manifest)

    def _publish(self, out, spec):
        """Rename the finished build into place (an older entry of the same key is replaced)."""
        final = self.entry_dir(spec)
        old = None
        if os.path.lexists(final):
            old = final + '.old-%d' % os.getpid()
            os.rename(final, old)
        os.rename(out, final)
        if old:
            remove_tree(old)
        self.log('lab VM image %s ready in %s' % (spec['key'], final))
        return final

    def _clean_stale_builds(self):
        """Work directories of builds whose process has gone."""
        for work in glob.glob(os.path.join(self.cache_dir, '.build-*-*-*')):
            try:
                pid = int(work.rsplit('-', 1)[1])
            except ValueError:
                continue
            if pid != os.getpid() and starttime(pid) is None and not mounts_under(work):
                shutil.rmtree(work, ignore_errors=True)


class _FileLock:
    """An exclusive flock on a file, held while the with-block runs."""

    def __init__(self, path, wait=True):
        self.path = path
        self.wait = wait
        self.handle = None

    def __enter__(self):
        """Take the lock; without wait, a lock another process holds raises BlockingIOError (an OSError)."""
        self.handle = open(self.path, 'a')
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except OSError:
            self.handle.close()
            raise
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        return False


def build_image(run, release=DEFAULT_RELEASE, cache_dir=DEFAULT_CACHE_DIR, rebuild=False, mirror=None,
                security_mirror=None, log=None):
    """The image of release (see ImageCache.ensure)."""
    return ImageCache(run, cache_dir, log=log).ensure(release, rebuild=rebuild, mirror=mirror,
                                                      security_mirror=security_mirror)
