# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One lab VM: QEMU on a qcow2 overlay of a base image, a tap in the lab bridge.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

QEMU boots the image's kernel and initrd directly, with the serial console
logged to ``console.log`` in the VM's state directory. The VM's own settings
reach the shared base image at boot through QEMU's fw_cfg (``-fw_cfg
name=opt/tcplab/seed,file=<state>/seed``), read by the image's tcplab-seed
unit. The seed is a text file of ``key=value`` lines (values never hold a
newline):

    version=1                          the seed format
    hostname=<name>                    letters, digits, "-"
    mac=52:54:00:xx:xx:xx              the NIC to configure
    address=<ip>/<prefixlen>           static, on that NIC (set by tcplab-seed with ip)
    gateway=<ip>                       optional (none: the VM reaches only its network)
    apt_proxy=http://<ip>:<port>       optional, apt's Acquire::http::Proxy
    authorized_key=<openssh public key>  once per key, for the tcplab login
    host_key_ed25519=<base64 of the private host key file>
    host_key_ed25519_pub=<openssh public host key>

The host key is made per VM on the controller, so the known_hosts entry is
pinned before the first connection. QEMU runs detached; its state record
(``vm.json``: pid, start time, the ``-name tcplab-vm:<lab>:<vm>`` marker,
the tap's ifindex) proves ownership before anything is signalled or deleted.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import ipaddress
import json
import os
import re
import shlex
import signal
import socket
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, pids, starttime, wait_gone

ACCELS = ('auto', 'kvm', 'tcg')
LOGIN_USER = 'tcplab'
SEED_NAME = 'opt/tcplab/seed'
MARKER_PREFIX = 'tcplab-vm'
DEFAULT_TAP_PREFIX = 'tkv'
DEFAULT_MEMORY = 512
KVM_DEVICE = '/dev/kvm'
# The kernel got past its early boot (under a broken nested KVM nothing comes after "Probing EDD").
PROGRESS_RE = re.compile(r'Run /init as init process|Freeing unused kernel')
NAME_RE = re.compile(r'^[a-z][a-z0-9-]{0,31}$')
LAB_ID_RE = re.compile(r'^[a-z0-9][a-z0-9-]{0,31}$')
TAP_PREFIX_RE = re.compile(r'^[a-z][a-z0-9]{1,6}$')
SEED_VALUE_RE = re.compile(r'^[^\r\n]*$')
HOSTNAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9-]{0,62}$')
APT_PROXY_RE = re.compile(r'^http://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$')
UNIX_PATH_MAX = 107

MSG_NAME = 'lab VM name %r is invalid: use 1 to 32 lower-case letters, digits or "-", starting with a letter'
MSG_LAB_ID = 'lab id %r is invalid: use 1 to 32 lower-case letters, digits or "-"'
MSG_TAP_PREFIX = 'tap prefix %r is invalid: use 2 to 7 lower-case letters or digits, starting with a letter'
MSG_ACCEL = 'accelerator %r is invalid: use one of auto, kvm, tcg'
MSG_ADDRESS = 'address %r of lab VM %s is invalid: give an IPv4 address and a prefix length, e.g. 198.18.0.10/24'
MSG_GATEWAY = 'gateway %r of lab VM %s is not in its network %s: give an address of the lab network or none'
MSG_HOSTNAME = 'hostname %r of lab VM %s is invalid: use 1 to 63 letters, digits or "-", not starting with "-"'
MSG_APT_PROXY = 'apt proxy %r of lab VM %s is invalid: give http://<address>:<port>, e.g. http://198.18.0.1:3142'
MSG_STATE_DIR = 'state directory of a lab VM must be an absolute path that is not "/", got %r'
MSG_STATE_DIR_LONG = ('state directory %s is too long for the QEMU monitor socket (%d > %d characters): '
                      'use a shorter state directory')
MSG_IMAGE = 'lab VM image file %s is missing: build the image again (rebuild: true)'
MSG_KEY = 'lab key %s (and its .pub) is missing: generate it (ssh-keygen -t ed25519 -N "" -f %s)'
MSG_SEED_VALUE = 'seed value %s=%r of lab VM %s holds a line break: give a single line'
MSG_TOOL = '%s is needed to run lab VMs and was not found: install it (Debian/Ubuntu: apt-get install %s)'
MSG_NO_BRIDGE = 'bridge %s does not exist (or is not a bridge): create the lab bridge before its VMs'
MSG_TAP_TAKEN = ('interface %s exists but was not made for lab VM %s (no matching ifindex in %s, no alias %s): '
                 'remove it (ip link del %s) if it is a leftover, or use another tap prefix')
MSG_NO_KVM = 'accelerator kvm asked for lab VM %s, but %s cannot be opened: use accel auto or tcg'
MSG_KVM_FALLBACK = ('lab VM %s: no boot progress under KVM within %d s (console: %r); '
                    'falling back to TCG (software emulation)')
MSG_KVM_START_FALLBACK = 'lab VM %s: QEMU did not start with KVM (%s); falling back to TCG (software emulation)'
MSG_NO_KVM_NOTE = 'lab VM %s: %s cannot be opened; using TCG (software emulation)'
MSG_DIED = 'QEMU of lab VM %s exited during boot (accel %s); last lines of %s:\n%s'
MSG_NO_SSH = ('lab VM %s did not accept an ssh login as %s at %s within %d s (accel %s); '
              'last lines of its console %s:\n%s')
MSG_START = 'QEMU of lab VM %s did not start (no pid in %s); see %s'

TOOLS = {
    'qemu-system-x86_64': 'qemu-system-x86',
    'qemu-img': 'qemu-utils',
    'ip': 'iproute2',
    'ssh': 'openssh-client',
    'ssh-keygen': 'openssh-client',
}


class VmError(Exception):
    """A lab VM cannot be started or stopped; the message names the fix."""


# -- naming -----------------------------------------------------------------

def marker(lab_id, name):
    """The QEMU -name of a lab VM: it stays in the process's argv, which proves ownership."""
    return '%s:%s:%s' % (MARKER_PREFIX, lab_id, name)


def _digest(lab_id, name):
    return hashlib.sha256(marker(lab_id, name).encode('utf-8')).hexdigest()


def mac_address(lab_id, name):
    """A stable, locally administered MAC in QEMU's 52:54:00 range."""
    tail = _digest(lab_id, name)[:6]
    return '52:54:00:%s:%s:%s' % (tail[0:2], tail[2:4], tail[4:6])


def tap_name(prefix, lab_id, name):
    """The tap of a lab VM (at most 15 characters)."""
    return prefix + _digest(lab_id, name)[:15 - len(prefix)]


# -- seed -------------------------------------------------------------------

def render_seed(name, hostname, address, mac, authorized_keys, host_key=None, host_key_pub=None,
                gateway=None, apt_proxy=None):
    """The seed text of one VM (see the module docstring)."""
    pairs = [('version', '1'), ('hostname', hostname), ('mac', mac), ('address', address),
             ('gateway', gateway or ''), ('apt_proxy', apt_proxy or '')]
    pairs += [('authorized_key', key.strip()) for key in authorized_keys]
    if host_key:
        pairs.append(('host_key_ed25519', base64.b64encode(host_key.encode('ascii')).decode('ascii')))
        pairs.append(('host_key_ed25519_pub', host_key_pub.strip()))
    for key, value in pairs:
        if not SEED_VALUE_RE.match(value):
            raise VmError(MSG_SEED_VALUE % (key, value, name))
    head = '# tcplab lab VM seed, read at every boot by tcplab-seed through QEMU fw_cfg %s\n' % SEED_NAME
    return head + ''.join('%s=%s\n' % pair for pair in pairs)


def parse_interface(address, name):
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise VmError(MSG_ADDRESS % (address, name))
    if iface.version != 4 or '/' not in str(address) or iface.ip == iface.network.network_address:
        raise VmError(MSG_ADDRESS % (address, name))
    return iface


# -- QEMU -------------------------------------------------------------------

# Drivers of emulated hardware a lab VM does not use: udev would load them at every boot, and under TCG
# each costs a share of the boot (the floppy controller probes for seconds).
UNUSED_MODULES = ('floppy', 'ata_piix', 'ata_generic', 'pata_acpi', 'i2c_piix4', 'pcspkr', 'serio_raw', 'psmouse',
                  'kvm', 'kvm_amd', 'kvm_intel', 'joydev', 'evdev', 'parport_pc', 'ppdev', 'sg', 'bochs', 'drm')
# Boot faster under TCG without changing what the experiment measures: no crypto self-tests, no
# speculative-execution mitigations (lab VMs run only the lab's code), trust the emulated TSC.
FAST_BOOT = ('mitigations=off', 'cryptomgr.notests', 'no_timer_check', 'tsc=reliable', 'systemd.show_status=error')


def kernel_command_line():
    return ' '.join(('root=/dev/vda', 'rootfstype=ext4', 'rootflags=errors=remount-ro', 'rw', 'console=ttyS0', 'net.ifnames=0') + FAST_BOOT
                    + ('modprobe.blacklist=%s' % ','.join(UNUSED_MODULES),))


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


def read_text(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('utf-8', 'replace')
    except (IOError, OSError):
        return ''


def console_tail(path, lines=25):
    text = read_text(path).replace('\r', '')
    text = re.sub(r'\x1b\[[0-9;]*[A-Za-z]', '', text)  # colour codes of systemd's status lines
    return '\n'.join(text.rstrip('\n').split('\n')[-lines:])


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


def port_open(address, port, timeout=0.5):
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- the VM -----------------------------------------------------------------

class Vm:
    """One lab VM. `run` is a _common.Runner; `image` is what _vm_image.ImageCache.ensure returns."""

    RECORD = 'vm.json'

    def __init__(self, run, name, state_dir, image, bridge, address, lab_id, key, gateway=None,
                 apt_proxy=None, accel='auto', hostname=None, memory=DEFAULT_MEMORY, cpus=1,
                 tap_prefix=DEFAULT_TAP_PREFIX, tools=None, log=None, boot_timeout=300, kvm_probe_timeout=10,
                 clock=time.monotonic, sleep=time.sleep):
        self._check_names(name, lab_id, tap_prefix, accel, state_dir)
        # address None: a VM only to be stopped (e.g. QEMU of a crashed run found by its marker)
        self.iface = parse_interface(address, name) if address is not None else None
        if gateway and (self.iface is None or ipaddress.ip_address(gateway) not in self.iface.network):
            raise VmError(MSG_GATEWAY % (gateway, name, self.iface.network if self.iface else None))
        self.run, self.name, self.image, self.bridge = run, name, image, bridge
        self.state_dir = os.path.normpath(state_dir)
        self.lab_id, self.key, self.gateway, self.apt_proxy, self.accel = lab_id, key, gateway, apt_proxy, accel
        self.hostname = hostname or name
        if not HOSTNAME_RE.match(self.hostname):
            raise VmError(MSG_HOSTNAME % (self.hostname, name))
        if apt_proxy and not APT_PROXY_RE.match(apt_proxy):
            raise VmError(MSG_APT_PROXY % (apt_proxy, name))
        self.memory, self.cpus = memory, cpus
        self.mark = marker(lab_id, name)
        self.mac = mac_address(lab_id, name)
        self.tap = tap_name(tap_prefix, lab_id, name)
        self.tools = tools or {}
        self.log = log or (lambda line: None)
        self.boot_timeout, self.kvm_probe_timeout = boot_timeout, kvm_probe_timeout
        self.clock, self.sleep = clock, sleep
        self.notes = []
        self._launched = None
        self.files = {part: os.path.join(self.state_dir, leaf) for part, leaf in (
            ('record', self.RECORD), ('overlay', 'overlay.qcow2'), ('seed', 'seed'), ('console', 'console.log'),
            ('qmp', 'qmp.sock'), ('pid', 'qemu.pid'), ('host_key', 'ssh_host_ed25519_key'),
            ('known_hosts', 'known_hosts'))}
        if len(self.files['qmp']) > UNIX_PATH_MAX:
            raise VmError(MSG_STATE_DIR_LONG % (self.state_dir, len(self.files['qmp']), UNIX_PATH_MAX))

    @staticmethod
    def _check_names(name, lab_id, tap_prefix, accel, state_dir):
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise VmError(MSG_NAME % (name,))
        if not isinstance(lab_id, str) or not LAB_ID_RE.match(lab_id):
            raise VmError(MSG_LAB_ID % (lab_id,))
        if not TAP_PREFIX_RE.match(tap_prefix or ''):
            raise VmError(MSG_TAP_PREFIX % (tap_prefix,))
        if accel not in ACCELS:
            raise VmError(MSG_ACCEL % (accel,))
        if not state_dir or not os.path.isabs(state_dir) or os.path.normpath(state_dir) == '/':
            raise VmError(MSG_STATE_DIR % (state_dir,))

    def tool(self, name):
        return self.tools.get(name, name)

    # -- record and ownership -------------------------------------------
    def load(self):
        try:
            with open(self.files['record']) as handle:
                data = json.load(handle)
            return data if isinstance(data, dict) and data.get('marker') == self.mark else {}
        except (IOError, OSError, ValueError):
            return {}

    def save(self, record):
        record['marker'] = self.mark
        atomic_write(self.files['record'], json.dumps(record, indent=2, sort_keys=True) + '\n')

    def _is_ours(self, pid):
        argv = cmdline(pid)
        return any(argv[i] == '-name' and argv[i + 1] == self.mark for i in range(len(argv) - 1)) \
            and self.files['pid'] in argv

    def owned_pid(self, record=None):
        """Pid of this VM's QEMU when its start time and argv match the record (or, when the record has no
        pid yet, the pid file and the argv match: a crash between QEMU's start and the record)."""
        record = self.load() if record is None else record
        pid = record.get('pid')
        if pid and starttime(pid) == record.get('starttime') and self._is_ours(pid):
            return pid
        if not record.get('pid'):
            try:
                with open(self.files['pid']) as handle:
                    pid = int(handle.read().strip())
            except (IOError, OSError, ValueError):
                return None
            if starttime(pid) is not None and self._is_ours(pid):
                return pid
        return None

    def status(self):
        record = self.load()
        pid = self.owned_pid(record)
        return {'name': self.name, 'running': pid is not None, 'pid': pid, 'accel': record.get('accel'),
                'address': str(self.iface.ip) if self.iface else None, 'mac': self.mac, 'tap': self.tap,
                'console_log': self.files['console'], 'known_hosts': self.files['known_hosts']}

    # -- start -----------------------------------------------------------
    def start(self):
        """Boot the VM unless it runs; wait for an ssh login. Returns status() plus changed, accel,
        boot_seconds and notes (e.g. the KVM to TCG fallback)."""
        record = self.load()
        if self.owned_pid(record):
            result = self.status()
            result.update(changed=False, boot_seconds=None, ssh_seconds=None, notes=[])
            return result
        record = self.prepare()
        started = self.clock()
        accel = self._boot(record)
        try:
            self._wait_ssh(record, accel, started)
        except VmError:
            self.stop(timeout=0)  # nothing of a failed boot stays but its console logs
            raise
        result = self.status()
        now = self.clock()
        result.update(changed=True, accel=accel, boot_seconds=round(now - started, 1),
                      ssh_seconds=round(now - self._launched, 1), notes=self.notes)
        return result

    def prepare(self):
        """Everything up to QEMU's start: checks, the record (before anything is made), host key, overlay,
        tap and seed. Returns the record."""
        if self.iface is None:
            raise VmError(MSG_ADDRESS % (None, self.name))
        self._preflight()
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        record = dict(self.load(), name=self.name, lab_id=self.lab_id, pid=None, starttime=None)
        self.save(record)
        self._ensure_host_key()
        self._ensure_overlay(record)
        self._ensure_tap(record)
        self._write_seed()
        return record

    def _preflight(self):
        for name in ('kernel', 'initrd', 'disk'):
            if not os.path.isfile(self.image[name]):
                raise VmError(MSG_IMAGE % self.image[name])
        if not (os.path.isfile(self.key) and os.path.isfile(self.key + '.pub')):
            raise VmError(MSG_KEY % (self.key, self.key))
        link = self._link(self.bridge)
        if link is None or link.get('linkinfo', {}).get('info_kind') != 'bridge':
            raise VmError(MSG_NO_BRIDGE % self.bridge)

    def _note(self, line):
        self.notes.append(line)
        self.log(line)

    def _ensure_host_key(self):
        key = self.files['host_key']
        if not (os.path.exists(key) and os.path.exists(key + '.pub')):
            for stale in (key, key + '.pub'):
                if os.path.exists(stale):
                    os.unlink(stale)
            self.run([self.tool('ssh-keygen'), '-q', '-t', 'ed25519', '-N', '', '-C', 'tcplab-vm-%s' % self.name,
                      '-f', key], what='generating the host key of lab VM %s' % self.name)
        keytype, keydata = read_text(key + '.pub').split()[:2]
        atomic_write(self.files['known_hosts'], '%s %s %s\n' % (self.iface.ip, keytype, keydata), 0o644)

    def _ensure_overlay(self, record):
        overlay = self.files['overlay']
        if os.path.exists(overlay) and record.get('build_id') == self.image['build_id']:
            return
        if os.path.exists(overlay):
            self._note('lab VM %s: base image changed; its overlay (the VM\'s own writes) starts afresh' % self.name)
            os.unlink(overlay)
        self.run([self.tool('qemu-img'), 'create', '-q', '-f', 'qcow2', '-b', self.image['disk'], '-F',
                  self.image.get('disk_format', 'raw'), overlay], what='creating the overlay of lab VM %s' % self.name)
        os.chmod(overlay, 0o600)
        record['build_id'] = self.image['build_id']
        record['overlay'] = overlay
        self.save(record)

    def _write_seed(self):
        text = render_seed(self.name, self.hostname, '%s/%d' % (self.iface.ip, self.iface.network.prefixlen),
                           self.mac, [read_text(self.key + '.pub')], read_text(self.files['host_key']),
                           read_text(self.files['host_key'] + '.pub'), self.gateway, self.apt_proxy)
        atomic_write(self.files['seed'], text, 0o600)

    # -- tap -------------------------------------------------------------
    def ip(self, *args):
        return [self.tool('ip')] + list(args)

    def _link(self, dev):
        rc, out, err = self.run(self.ip('-j', '-d', 'link', 'show', 'dev', dev), check=False)
        if rc != 0:
            return None
        try:
            links = json.loads(out or '[]')
        except ValueError:
            return None
        return links[0] if links else None

    def _tap_is_ours(self, link, record):
        if link.get('linkinfo', {}).get('info_kind') != 'tun':
            return False
        return link.get('ifindex') == record.get('tap_ifindex') or link.get('ifalias') == self.mark

    def _ensure_tap(self, record):
        link = self._link(self.tap)
        if link is not None and not self._tap_is_ours(link, record):
            raise VmError(MSG_TAP_TAKEN % (self.tap, self.name, self.files['record'], self.mark, self.tap))
        if link is None:
            self.run(self.ip('tuntap', 'add', 'dev', self.tap, 'mode', 'tap'), what='creating tap %s' % self.tap)
            link = self._link(self.tap) or {}
            record.update(tap=self.tap, tap_ifindex=link.get('ifindex'))
            self.save(record)
            self.run(self.ip('link', 'set', 'dev', self.tap, 'alias', self.mark))
        elif record.get('tap_ifindex') != link.get('ifindex'):
            record.update(tap=self.tap, tap_ifindex=link.get('ifindex'))
            self.save(record)
        if link.get('master') != self.bridge:
            self.run(self.ip('link', 'set', 'dev', self.tap, 'master', self.bridge),
                     what='adding tap %s to bridge %s' % (self.tap, self.bridge))
        self.run(self.ip('link', 'set', 'dev', self.tap, 'up'))

    def _remove_tap(self, record):
        link = self._link(self.tap)
        if link is None or not self._tap_is_ours(link, record):
            return False
        self.run(self.ip('link', 'del', 'dev', self.tap), what='deleting tap %s' % self.tap)
        return True

    # -- boot ------------------------------------------------------------
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
        rc, out, err = self.run(self.ssh_argv('true'), check=False)
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

    # -- stop ------------------------------------------------------------
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
            changed = self._remove_tap(record) or changed
            for part in ('overlay', 'seed', 'qmp', 'pid', 'host_key', 'known_hosts', 'record'):
                for path in (self.files[part], self.files[part] + '.pub') if part == 'host_key' else (self.files[part],):
                    if os.path.lexists(path):
                        os.unlink(path)
                        changed = True
        return {'name': self.name, 'changed': changed, 'stopped': how}

    def stop(self, timeout=60):
        """ACPI power-off (kill after timeout s; at once with timeout 0), then remove the tap, overlay, seed
        and keys of this VM. The console logs stay. Returns {name, changed, stopped: acpi | killed | None}."""
        return self.finish_stop(self.begin_stop(acpi=timeout > 0), timeout)


def find_orphans(lab_id, candidates=None, read=cmdline):
    """Pids of QEMU processes whose -name marks them as VMs of lab_id (for an audit after a crash)."""
    prefix = '%s:%s:' % (MARKER_PREFIX, lab_id)
    found = []
    for pid in candidates if candidates is not None else pids():
        argv = read(pid)
        if any(argv[i] == '-name' and argv[i + 1].startswith(prefix) for i in range(len(argv) - 1)):
            found.append(pid)
    return found
