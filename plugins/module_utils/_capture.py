# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A detached scapy capture: start it, find it again from its handle, stop it.

The sniffer is a separate Python process (CHILD_CODE, run with ``python -c``)
that outlives the module and the Ansible connection. It opens its packet
socket with the BPF filter compiled by libpcap *before* it reports ready, so
a capture that the module reports as started sees every later packet. It
writes a pcap (mode 0600) record by record, so a SIGKILLed capture still
leaves a readable file, and a state file next to the pcap that lets a later
task (or a fresh controller) stop exactly that process and nothing else.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import struct
import subprocess
import tempfile
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import LANG_ENV
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline as proc_cmdline, starttime as proc_starttime

MARKER = 'tcplab-keepalive-capture'
DEFAULT_DIR = '/var/tmp/tcplab-keepalive/captures'
NETNS_DIR = '/run/netns'
STATE_SUFFIX = '.state.json'
LOG_SUFFIX = '.log'
DEFAULTS = {
    'iface': 'lo',
    'snaplen': 262144,
    'max_packets': 1000000,
    'max_seconds': 3600,
    'max_bytes': 200 * 1000 * 1000,
}
# tcpdump's largest snapshot length (MAXIMUM_SNAPLEN)
MAX_SNAPLEN = 262144
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
ARPHRD_LOOPBACK = 772
PACKET_OUTGOING = 4
IFACE_RE = re.compile(r'^[^\s/]{1,15}$')
NETNS_NAME_RE = re.compile(r'^[A-Za-z0-9_.-]{1,64}$')
SCAPY_PIN = 'scapy==2.8.0'

MSG_NO_SCAPY = ('scapy is not importable by %s: install scapy (pip install ' + SCAPY_PIN
                + ') in the Python that runs the modules (%s)')
MSG_NO_LIBPCAP = ('libpcap is not available to scapy, so the filter %r cannot be compiled (scapy would capture '
                  'unfiltered): install libpcap (apt-get install libpcap0.8) (%s)')
MSG_BAD_FILTER = 'bad filter %r: %s'
MSG_NO_IFACE = 'interface %r not found in %s: give an interface of that namespace (ip link) (%s)'
MSG_SOCKET = 'cannot open a packet socket on %r in %s (capturing needs root): %s'
MSG_CHILD_DIED = 'the capture process exited before it was ready; its log said: %s'
MSG_TIMEOUT = 'the capture process was not ready within %d seconds (stopped it); its log said: %s'
MSG_NEEDS_TARGET = 'state=%s needs the handle of a capture (or its path)'
MSG_HANDLE = 'handle must be the handle returned by state=started (a dict with path) or a pcap path, got %r'
MSG_HANDLE_PATH = 'handle is for %s but path is %s: give one of them'
MSG_NOT_CAPTURE = ('%s exists and is not a tcplab.keepalive capture (no %s next to it): '
                   'choose another path or remove the file')
MSG_RUNNING_OTHER = ('a capture with other settings is running on %s (%s): stop it first '
                     '(state: stopped) or choose another path')
MSG_NOT_OURS = ('pid %d is not the capture of %s (%s): not signalled; the capture is not running')
MSG_NETNS_NAME = 'netns %r is not a network namespace name: give a name from %s (ip netns list)'
MSG_NETNS_MISSING = 'network namespace %r not found at %s: create it (ip netns add %s) or fix the name'
MSG_INT = '%s must be an integer %d..%d, got %r'
MSG_IFACE = 'iface %r is not an interface name'
MSG_FILTER = 'filter must be a string, got %r'
MSG_DIR_MODE = 'capture directory %s is a symlink or not a directory: remove it'
MSG_STOP_FAILED = 'pid %d (the capture of %s) did not exit after SIGTERM and SIGKILL'


class CaptureError(Exception):
    """A capture cannot be started or stopped; the message names the fix."""


# -- the sniffer process ------------------------------------------------------

# Run as [python, -c, CHILD_CODE, MARKER, json-args]. It double-forks (the
# module waits for the first child only), reports {"pid"} and then
# {"ready"} or {"error", "detail"} as JSON lines on the inherited fd
# ready_fd, and captures until SIGTERM or a limit.
# On loopback a packet socket sees each segment twice (the outgoing copy,
# sll_pkttype PACKET_OUTGOING, and the incoming one); libpcap - and so
# tcpdump - drops the outgoing copy there, and so does this loop. scapy's
# L2ListenSocket does not report the packet type, so the loop reads the
# socket itself with recvmsg (address, kernel timestamp, original length).
CHILD_CODE = r'''
import json, logging, os, select, signal, socket, struct, sys, time
A = json.loads(sys.argv[2])
R = A.pop("ready_fd")
if os.fork():
    os._exit(0)


def say(**kw):
    os.write(R, (json.dumps(kw) + "\n").encode())


def fail(kind, exc):
    say(error=kind, detail="%s: %s" % (type(exc).__name__, exc))
    sys.exit(2)


def save(state):
    tmp = A["state"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    os.rename(tmp, A["state"])


os.umask(0o077)
pid = os.getpid()
with open("/proc/self/stat") as f:
    starttime = int(f.read().rsplit(")", 1)[1].split()[19])
say(pid=pid, starttime=starttime)
try:
    import scapy.arch  # noqa: sets conf.L2listen
    from scapy.config import conf
    from scapy.data import ARPHRD_TO_DLT
    from scapy.utils import PcapWriter
except ImportError as exc:
    fail("scapy", exc)
try:
    socket.if_nametoindex(A["iface"])
except OSError as exc:
    fail("iface", exc)
if A["filter"]:
    try:
        from scapy.arch.common import compile_filter
        compile_filter(A["filter"], iface=A["iface"])
    except ImportError as exc:  # no libpcap: scapy's sniff() would silently skip the filter
        fail("libpcap", exc)
    except Exception as exc:
        fail("filter", exc)
try:
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # not "Unable to guess type": we parse nothing
    listener = conf.L2listen(iface=A["iface"], filter=A["filter"] or None)  # filter attached before bind
    sock = listener.ins
    try:  # room for bursts of 64 KiB loopback segments
        sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 23)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
    sock.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
    sock.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA: original length, VLAN tag
    hatype = sock.getsockname()[3]
    linktype = {12: 101}.get(ARPHRD_TO_DLT.get(hatype, 1), ARPHRD_TO_DLT.get(hatype, 1))
    out = PcapWriter(A["path"], linktype=linktype, sync=True, snaplen=A["snaplen"])
    out.write_header(None)
    os.chmod(A["path"], 0o600)
except Exception as exc:
    fail("socket", exc)
state = dict(A, pid=pid, starttime=starttime, started_at=time.time(), linktype=linktype, hatype=hatype)
save(state)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append("stopped"))
signal.signal(signal.SIGINT, lambda *_: stop.append("stopped"))
signal.signal(signal.SIGHUP, signal.SIG_IGN)
say(ready=True, pid=pid, starttime=starttime, linktype=linktype)
os.close(R)
print("capturing on %s (filter %r) to %s, pid %d" % (A["iface"], A["filter"], A["path"], pid), flush=True)
TS = struct.Struct("ll")
AUX = struct.Struct("IIIHHHH")
packets, size, outgoing, reason = 0, 24, 0, None
deadline = time.monotonic() + A["max_seconds"]


def one():
    global packets, size, outgoing, reason
    try:
        data, anc, flags, addr = sock.recvmsg(A["snaplen"], 512, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    if addr[3] == 772 and addr[2] == 4:  # ARPHRD_LOOPBACK, PACKET_OUTGOING: the copy tcpdump drops
        outgoing += 1
        return True
    sec, usec, wire = None, 0, len(data)
    for level, kind, value in anc:
        if level == socket.SOL_SOCKET and kind == 35 and len(value) >= TS.size:
            sec, nsec = TS.unpack(value[:TS.size])
            usec = nsec // 1000
        elif level == 263 and kind == 8 and len(value) >= AUX.size:
            status, wire, _, _, _, tci, tpid = AUX.unpack(value[:AUX.size])
            if tci or status & 0x10:  # TP_STATUS_VLAN_VALID: put the tag back, as libpcap does
                tag = struct.pack("!HH", tpid if status & 0x40 else 0x8100, tci)
                data, wire = data[:12] + tag + data[12:], wire + 4
    if sec is None:
        now = time.time()
        sec, usec = int(now), int((now - int(now)) * 1e6)
    if packets >= A["max_packets"]:
        reason = "max_packets"
    elif size + 16 + len(data) > A["max_bytes"]:
        reason = "max_bytes"
    else:
        out.write_packet(data, sec=sec, usec=usec, caplen=len(data), wirelen=wire)
        packets, size = packets + 1, size + 16 + len(data)
    return reason is None


while reason is None:
    if stop:
        while one():  # what the kernel already queued belongs to the capture
            pass
        reason = reason or stop[0]
        break
    left = deadline - time.monotonic()
    if left <= 0:
        reason = "max_seconds"
        break
    if select.select([sock], [], [], min(left, 0.2))[0]:
        while reason is None and one():
            pass
    if packets >= A["max_packets"]:
        reason = "max_packets"
try:
    received, drops = struct.unpack("II", sock.getsockopt(263, 6, 8))  # PACKET_STATISTICS
except OSError:
    drops = None
out.close()
state["finished"] = {"reason": reason, "packets": packets, "bytes": size, "loopback_outgoing_dropped": outgoing,
                     "kernel_drops": drops, "at": time.time()}
save(state)
print("finished (%s): %d packets, %d bytes" % (reason, packets, size), flush=True)
'''


# -- validation ---------------------------------------------------------------

def _int_option(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CaptureError(MSG_INT % (name, low, high, value))
    return value


def validate(params, netns_dir=NETNS_DIR):
    """Checked and defaulted settings of a capture (a new dict)."""
    out = {}
    iface = params.get('iface')
    iface = DEFAULTS['iface'] if iface is None else iface
    if not isinstance(iface, str) or not IFACE_RE.match(iface) or iface in ('.', '..'):
        raise CaptureError(MSG_IFACE % (iface,))
    out['iface'] = iface
    filt = params.get('filter')
    if filt is not None and not isinstance(filt, str):
        raise CaptureError(MSG_FILTER % (filt,))
    out['filter'] = (filt or '').strip() or None
    for name, high in (('snaplen', MAX_SNAPLEN), ('max_packets', 2 ** 40), ('max_seconds', 10 ** 9),
                       ('max_bytes', 2 ** 50)):
        value = params.get(name)
        out[name] = DEFAULTS[name] if value is None else _int_option(name, value, 1 if name != 'snaplen' else 64, high)
    out['netns'] = netns_path(params.get('netns'), netns_dir)[0] if params.get('netns') else None
    return out


def netns_path(name, netns_dir=NETNS_DIR):
    """(name, path) of a named network namespace; raises when it does not exist."""
    text = str(name)
    if isinstance(name, bool) or not NETNS_NAME_RE.match(text) or text in ('.', '..'):
        raise CaptureError(MSG_NETNS_NAME % (name, netns_dir))
    path = os.path.join(netns_dir, text)
    if not os.path.exists(path):
        raise CaptureError(MSG_NETNS_MISSING % (text, path, text))
    return text, path


def scapy_available():
    """True when the interpreter running this code can import scapy."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    try:
        return importlib.util.find_spec('scapy') is not None
    except (ImportError, ValueError):
        return False


# -- files, handles and processes --------------------------------------------

def state_path(path):
    return path + STATE_SUFFIX


def log_path(path):
    return path + LOG_SUFFIX


def read_state(path):
    """The state file of the capture at path, or None."""
    try:
        with open(state_path(path)) as handle:
            data = json.load(handle)
    except (IOError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resolve_target(handle, path):
    """The pcap path named by a handle (dict or path string) and/or path."""
    from_handle = None
    if handle is not None:
        if isinstance(handle, dict) and isinstance(handle.get('path'), str) and handle['path']:
            from_handle = handle['path']
        elif isinstance(handle, str) and handle:
            from_handle = handle
        else:
            raise CaptureError(MSG_HANDLE % (handle,))
    if from_handle and path and os.path.abspath(from_handle) != os.path.abspath(path):
        raise CaptureError(MSG_HANDLE_PATH % (from_handle, path))
    target = from_handle or path
    return os.path.abspath(target) if target else None


def ownership(pid, starttime, path):
    """(True, '') when pid is the running capture writing path, else (False, why)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return False, 'no valid pid'
    now = proc_starttime(pid)
    if now is None:
        return False, 'no such process'
    argv = proc_cmdline(pid) or []
    if MARKER not in argv or argv.index(MARKER) + 1 >= len(argv):
        return False, 'its command line is not a tcplab.keepalive capture: %s' % ' '.join(argv)[:200]
    try:
        args = json.loads(argv[argv.index(MARKER) + 1])
    except ValueError:
        return False, 'its command line has no capture arguments'
    if not isinstance(args, dict) or args.get('path') != path:
        return False, 'it captures to %s' % (args.get('path') if isinstance(args, dict) else '?')
    if starttime is not None and now != starttime:
        return False, 'it started at tick %d, the capture at tick %s (the pid was reused)' % (now, starttime)
    return True, ''


def child_args(settings, path, ready_fd):
    """The JSON arguments of the sniffer process."""
    return {
        'path': path,
        'state': state_path(path),
        'iface': settings['iface'],
        'filter': settings['filter'],
        'snaplen': settings['snaplen'],
        'max_packets': settings['max_packets'],
        'max_seconds': settings['max_seconds'],
        'max_bytes': settings['max_bytes'],
        'netns': settings['netns'],
        'ready_fd': ready_fd,
    }


def capture_argv(python, args, nsenter=None, netns_dir=NETNS_DIR):
    """argv of the sniffer; inside another namespace it runs under nsenter --net."""
    argv = [python, '-c', CHILD_CODE, MARKER, json.dumps(args, sort_keys=True)]
    if args.get('netns'):
        argv = [nsenter, '--net=%s' % os.path.join(netns_dir, args['netns']), '--'] + argv
    return argv


def make_handle(path, state):
    state = state or {}
    return {
        'path': path,
        'state_path': state_path(path),
        'log_path': log_path(path),
        'pid': state.get('pid'),
        'starttime': state.get('starttime'),
        'marker': MARKER,
        'iface': state.get('iface'),
        'filter': state.get('filter'),
        'netns': state.get('netns'),
    }


def count_packets(path):
    """Packets of a pcap, reading record headers only; a torn last record is not counted.

    Returns {'packets', 'bytes', 'complete', 'readable', 'linktype'}.
    """
    result = {'packets': 0, 'bytes': 0, 'complete': True, 'readable': False, 'linktype': None}
    try:
        handle = open(path, 'rb')
    except (IOError, OSError):
        return result
    with handle:
        head = handle.read(24)
        if len(head) < 24:
            result['complete'] = False
            return result
        magic = head[:4]
        if magic in (b'\xd4\xc3\xb2\xa1', b'\x4d\x3c\xb2\xa1'):
            endian = '<'
        elif magic in (b'\xa1\xb2\xc3\xd4', b'\xa1\xb2\x3c\x4d'):
            endian = '>'
        else:
            return result
        result['readable'] = True
        result['linktype'] = struct.unpack(endian + 'I', head[20:24])[0]
        record = struct.Struct(endian + 'IIII')
        size = 24
        while True:
            header = handle.read(16)
            if not header:
                break
            if len(header) < 16:
                result['complete'] = False
                break
            caplen = record.unpack(header)[2]
            data = handle.read(caplen)
            if len(data) < caplen:
                result['complete'] = False
                break
            result['packets'] += 1
            size += 16 + caplen
        result['bytes'] = size
    return result


def _ensure_dir(directory, own):
    """Create directory (mode 0700); the default capture directory is kept at 0700."""
    if os.path.islink(directory) or (os.path.exists(directory) and not os.path.isdir(directory)):
        raise CaptureError(MSG_DIR_MODE % directory)
    if not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        os.mkdir(directory, 0o700)
    if own:
        os.chmod(directory, 0o700)


def _tail(path, limit=2000):
    try:
        with open(path, 'rb') as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            return handle.read().decode('utf-8', 'replace').strip()
    except (IOError, OSError):
        return ''


def _remove(*paths):
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def error_message(kind, detail, settings, python):
    """The message for an error the sniffer reported before it was ready."""
    where = 'network namespace %s' % settings['netns'] if settings.get('netns') else 'the target'
    if kind == 'scapy':
        return MSG_NO_SCAPY % (python, detail)
    if kind == 'libpcap':
        return MSG_NO_LIBPCAP % (settings['filter'], detail)
    if kind == 'filter':
        # scapy says "Failed to compile filter expression 'x' (<pcap error>)"; keep the pcap part
        match = re.search(r'\((.*)\)\s*$', detail)
        return MSG_BAD_FILTER % (settings['filter'], match.group(1) if match else detail)
    if kind == 'iface':
        return MSG_NO_IFACE % (settings['iface'], where, detail)
    return MSG_SOCKET % (settings['iface'], where, detail)


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(pid, starttime, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_starttime(pid) != starttime:
            return True
        time.sleep(0.05)
    return proc_starttime(pid) != starttime


def _terminate(pid, starttime, path, timeout=STOP_TIMEOUT):
    """SIGTERM, wait, SIGKILL (the caller has checked that pid is ours). Returns the signal that ended it."""
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, starttime, timeout):
        return 'SIGTERM'
    _signal(pid, signal.SIGKILL)
    if _wait_gone(pid, starttime, timeout):
        return 'SIGKILL'
    raise CaptureError(MSG_STOP_FAILED % (pid, path))


# -- the three states ---------------------------------------------------------

class Capture:
    """started / stopped / absent. Returns result dicts for the module."""

    def __init__(self, python, nsenter=None, check_mode=False, default_dir=DEFAULT_DIR,
                 netns_dir=NETNS_DIR, ready_timeout=READY_TIMEOUT, stop_timeout=STOP_TIMEOUT):
        self.python = python
        self.nsenter = nsenter
        self.check_mode = check_mode
        self.default_dir = default_dir
        self.netns_dir = netns_dir
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.warnings = []

    # status of the capture at path
    def status(self, path, handle=None):
        """{state, pid, starttime, running, not_ours} of the capture at path.

        The pid comes from the state file next to the pcap, else from the
        handle; it counts as running only when /proc shows our marker, the
        same pcap path and the same process start time.
        """
        state = read_state(path)
        source = state if state is not None else (handle if isinstance(handle, dict) else {})
        info = {'state': state, 'pid': source.get('pid'), 'starttime': source.get('starttime'),
                'running': False, 'not_ours': ''}
        if info['pid'] is None or (state is not None and state.get('finished')):
            return info
        ours, why = ownership(info['pid'], info['starttime'], path)
        info['running'] = ours
        if not ours and isinstance(info['pid'], int) and proc_starttime(info['pid']) is not None:
            info['not_ours'] = MSG_NOT_OURS % (info['pid'], path, why)
        return info

    def started(self, params):
        settings = validate(params, self.netns_dir)
        if not scapy_available():
            raise CaptureError(MSG_NO_SCAPY % (self.python, 'ImportError: No module named scapy'))
        path = os.path.abspath(params['path']) if params.get('path') else None
        if path is not None:
            info = self.status(path)
            state = info['state']
            if info['running']:
                same = all(state.get(key) == settings[key] for key in
                           ('iface', 'filter', 'netns', 'snaplen', 'max_packets', 'max_seconds', 'max_bytes'))
                if not same:
                    raise CaptureError(MSG_RUNNING_OTHER % (path, 'pid %s' % state.get('pid')))
                return self._result(False, path, state, True, 'capture already running (pid %d)' % state['pid'])
            if os.path.lexists(path) and not os.path.exists(state_path(path)):
                raise CaptureError(MSG_NOT_CAPTURE % (path, os.path.basename(state_path(path))))
        if self.check_mode:
            shown = path or os.path.join(self.default_dir, 'capture-<timestamp>-%s-<random>.pcap' % settings['iface'])
            return self._result(True, shown, None, False, 'would start a capture on %s to %s' % (settings['iface'], shown))
        if path is None:
            _ensure_dir(self.default_dir, own=True)
            fd, path = tempfile.mkstemp(
                prefix='capture-%s-%s-' % (time.strftime('%Y%m%dT%H%M%S'), settings['iface']),
                suffix='.pcap', dir=self.default_dir)
            os.close(fd)
        else:
            _ensure_dir(os.path.dirname(path), own=os.path.dirname(path) == self.default_dir)
            _remove(state_path(path))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            os.close(fd)
        os.chmod(path, 0o600)
        try:
            state = self._launch(settings, path)
        except BaseException:
            # a capture that did not start leaves nothing behind; the error carries the log's text
            _remove(path, state_path(path), state_path(path) + '.tmp', log_path(path))
            raise
        return self._result(True, path, state, True, 'started a capture on %s (pid %d) to %s'
                            % (settings['iface'], state['pid'], path))

    def _launch(self, settings, path):
        read_fd, write_fd = os.pipe()
        log_fd = os.open(log_path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        argv = capture_argv(self.python, child_args(settings, path, write_fd), self.nsenter, self.netns_dir)
        env = dict(os.environ, **LANG_ENV)
        env['PYTHONUNBUFFERED'] = '1'
        try:
            # Not through Runner: this process must outlive the module, so it is
            # started detached (own session, stdio to the log) and not waited for.
            first = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                     pass_fds=(write_fd,), close_fds=True, cwd='/', env=env,
                                     start_new_session=True)
        finally:
            os.close(write_fd)
            os.close(log_fd)
        try:
            reply = self._await_ready(read_fd, first)
        finally:
            os.close(read_fd)
        if reply.get('ready'):
            state = read_state(path)
            if state is None:
                raise CaptureError(MSG_CHILD_DIED % ('no state file %s' % state_path(path)))
            return state
        if reply.get('pid') and reply.get('starttime'):
            ours, _why = ownership(reply['pid'], reply['starttime'], path)
            if ours:
                _terminate(reply['pid'], reply['starttime'], path, self.stop_timeout)
        if 'error' in reply:
            raise CaptureError(error_message(reply['error'], reply.get('detail', ''), settings, self.python))
        if reply.get('timeout'):
            raise CaptureError(MSG_TIMEOUT % (self.ready_timeout, _tail(log_path(path)) or '(nothing)'))
        raise CaptureError(MSG_CHILD_DIED % (_tail(log_path(path)) or '(nothing)'))

    def _await_ready(self, read_fd, first):
        """Merged JSON lines from the sniffer until ready, error, EOF or timeout."""
        deadline = time.monotonic() + self.ready_timeout
        buf, reply = b'', {}
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                reply['timeout'] = True
                break
            if not select.select([read_fd], [], [], left)[0]:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                try:
                    reply.update(json.loads(line.decode('utf-8', 'replace')))
                except ValueError:
                    continue
            if reply.get('ready') or 'error' in reply:
                break
        try:
            first.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
        return reply

    def _result(self, changed, path, state, running, msg, **extra):
        result = {
            'changed': changed,
            'path': path,
            'handle': make_handle(path, state),
            'running': running,
            'pid': (state or {}).get('pid'),
            'msg': msg,
        }
        result.update(extra)
        if self.warnings:
            result['warnings'] = list(self.warnings)
        return result

    def stopped(self, path, handle=None, expect=None, tolerance=None, analyse=True):
        if path is None:
            raise CaptureError(MSG_NEEDS_TARGET % 'stopped')
        info = self.status(path, handle)
        state, pid, running, not_ours = info['state'], info['pid'], info['running'], info['not_ours']
        if not_ours:
            self.warnings.append(not_ours)
        signalled = None
        if running and not self.check_mode:
            signalled = _terminate(pid, info['starttime'], path, self.stop_timeout)
            state = read_state(path) or state
        finished = (state or {}).get('finished') or {}
        counted = count_packets(path)
        if running:
            msg = ('would stop the capture (pid %d)' % pid) if self.check_mode else \
                ('stopped the capture (pid %d, %s)' % (pid, signalled))
        elif not_ours:
            msg = not_ours
        else:
            msg = 'capture was not running'
        extra = {
            'was_running': running,
            'packets': counted['packets'],
            'pcap': counted,
            'stop_reason': finished.get('reason') or (signalled and 'stopped') or
            ('killed' if state is not None and not running else None),
            'finished': finished or None,
        }
        if analyse and counted['readable']:
            extra.update(self.analysis(path, expect, tolerance))
        else:
            extra.update({'analysis': None})
        return self._result(bool(running), path, state, bool(running and self.check_mode), msg, **extra)

    def analysis(self, path, expect, tolerance):
        """The keepalive analysis of the pcap (plugins/module_utils/_pcap.py)."""
        try:
            # imported here: only stopping needs it
            from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import (  # pylint: disable=import-outside-toplevel
                PcapError, analyse)
        except ImportError as exc:
            self.warnings.append('no keepalive analysis: %s' % exc)
            return {'analysis': None, 'analysis_error': str(exc)}
        try:
            return {'analysis': analyse(path, expect=expect, tolerance=tolerance)}
        except PcapError as exc:
            self.warnings.append('keepalive analysis of %s failed: %s' % (path, exc))
            return {'analysis': None, 'analysis_error': str(exc)}

    def absent(self, path, handle=None):
        if path is None:
            raise CaptureError(MSG_NEEDS_TARGET % 'absent')
        result = self.stopped(path, handle, analyse=False)
        files = [p for p in (path, state_path(path), log_path(path)) if os.path.lexists(p)]
        if self.check_mode:
            result['removed'] = files
            result['msg'] = '%s; would remove %s' % (result['msg'], ', '.join(files) or 'nothing')
        else:
            result['removed'] = _remove(*files)
            result['msg'] = '%s; removed %s' % (result['msg'], ', '.join(result['removed']) or 'nothing')
        result['changed'] = bool(result['changed'] or files)
        result['running'] = False
        result.pop('analysis', None)
        return result
