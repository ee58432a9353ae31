# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The experiment's server and keepalive client as detached processes.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

Each endpoint is a detached process (new session, stdio to a log file) whose
command line carries MARKER and its name, so that stop only ever signals our
own processes (checked with the command line and the start time). The
client records its outcome in a JSON file when its connection ends: the
errno name (ETIMEDOUT when keepalive gave up), curl's exit code, and the
seconds from connect to failure.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, netns_inode, netns_of, starttime

MARKER = 'tcplab-keepalive-endpoint'
NAME_RE = re.compile(r'^[A-Za-z0-9_-]{1,48}$')
CURL_DEFAULT_KEEPALIVE = 60

MSG_PORT = '%s must be an integer 1..65535, got %r'
MSG_ADDRESS = 'address must be an IP address, got %r'
MSG_KIND = 'kind %r is not a %s kind: use %s'
MSG_KEEPALIVE_TIME = ('keepalive_time must be an integer 1..32767 seconds and applies to kind: curl only '
                      '(the python client sets no per-socket options), got %r')
MSG_NAME = 'name must be 1 to 48 letters, digits, "-" or "_", got %r'
MSG_NOT_READY = '%s %s did not become ready within %s s: %s'
MSG_RUNNING_OTHER = ('an endpoint named %s already runs with other settings (%s); stop it first '
                     '(state: stopped) or pick another name')

# A server that accepts connections, holds them and never sends (like nc -l).
SERVER_CODE = r'''
import json, socket, sys, time
cfg = json.loads(sys.argv[2])
family = socket.AF_INET6 if ":" in cfg["address"] else socket.AF_INET
srv = socket.socket(family, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((cfg["address"], cfg["port"]))
srv.listen(16)
held = []
while True:
    conn, peer = srv.accept()
    held.append(conn)
    print(json.dumps({"event": "accepted", "peer": list(peer[:2]), "at": time.time()}), flush=True)
'''

# Shared start of the client programs: their settings, and record(), which
# replaces the outcome file atomically.
RECORD_CODE = r'''
import errno, json, os, sys, time
cfg = json.loads(sys.argv[2])
def record(data):
    tmp = cfg["outcome"] + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.rename(tmp, cfg["outcome"])
'''

# A client with SO_KEEPALIVE and no per-socket keepalive options: the
# namespace's sysctls govern. It blocks in recv() until the connection ends.
CLIENT_CODE = RECORD_CODE + r'''
import socket
family = socket.AF_INET6 if ":" in cfg["address"] else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
if cfg.get("local_port"):
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", cfg["local_port"]))
start = time.time()
try:
    sock.connect((cfg["address"], cfg["port"]))
except OSError as exc:
    record({"state": "failed", "phase": "connect", "errno": errno.errorcode.get(exc.errno, str(exc.errno)),
            "error": str(exc), "connected_at": None, "failed_at": time.time(), "seconds": 0.0})
    sys.exit(1)
connected = time.time()
record({"state": "connected", "connected_at": connected})
try:
    while True:
        data = sock.recv(65536)
        if not data:
            record({"state": "closed", "errno": None, "error": "the server closed the connection",
                    "connected_at": connected, "failed_at": time.time(), "seconds": time.time() - connected})
            break
except OSError as exc:
    now = time.time()
    record({"state": "failed", "errno": errno.errorcode.get(exc.errno, str(exc.errno)), "error": str(exc),
            "connected_at": connected, "failed_at": now, "seconds": now - connected})
'''

# curl as in the walk-through, wrapped to record its exit code and timing.
CURL_WRAPPER_CODE = RECORD_CODE + r'''
import subprocess
start = time.time()
record({"state": "starting", "connected_at": None})
proc = subprocess.Popen(cfg["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
record({"state": "connected", "connected_at": start, "curl_pid": proc.pid})
err = proc.communicate()[1].decode("utf-8", "replace")
now = time.time()
names = {os.strerror(code): name for code, name in errno.errorcode.items()}
found = [names[text] for text in names if text in err]
record({"state": "failed" if proc.returncode else "closed", "exit_code": proc.returncode,
        "errno": found[0] if found else None, "error": err.strip().splitlines()[-1] if err.strip() else "",
        "connected_at": start, "failed_at": now, "seconds": now - start})
'''


class EndpointError(Exception):
    """Invalid request or failed start; the message says what to do."""


def _port(key, value):
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise EndpointError(MSG_PORT % (key, value))
    return value


def validate(params):
    role = params['role']
    kinds = ('python', 'nc') if role == 'server' else ('python', 'curl')
    kind = params.get('kind') or 'python'
    if kind not in kinds:
        raise EndpointError(MSG_KIND % (kind, role, ' or '.join(kinds)))
    try:
        address = str(ipaddress.ip_address(params.get('address') or '127.0.0.1'))
    except ValueError:
        raise EndpointError(MSG_ADDRESS % (params.get('address'),))
    cfg = {'role': role, 'kind': kind, 'address': address, 'port': _port('port', params.get('port', 12345))}
    if role == 'client':
        local = params.get('local_port')
        cfg['local_port'] = _port('local_port', local) if local is not None else None
        keepalive = params.get('keepalive_time')
        if keepalive is not None:
            if kind != 'curl' or isinstance(keepalive, bool) or not isinstance(keepalive, int) \
                    or not 1 <= keepalive <= 32767:
                raise EndpointError(MSG_KEEPALIVE_TIME % (keepalive,))
        cfg['keepalive_time'] = keepalive
    name = params.get('name') or '%s-%d' % (role, cfg['port'])
    if not NAME_RE.match(name):
        raise EndpointError(MSG_NAME % (name,))
    cfg['name'] = name
    return cfg


def curl_argv(curl, cfg):
    """curl as in the walk-through; --keepalive-time only when asked."""
    host = '[%s]' % cfg['address'] if ':' in cfg['address'] else cfg['address']
    argv = [curl, '--silent', '--show-error', '--no-buffer']
    if cfg.get('local_port'):
        argv += ['--local-port', str(cfg['local_port'])]
    if cfg.get('keepalive_time') is not None:
        argv += ['--keepalive-time', str(cfg['keepalive_time'])]
    return argv + ['http://%s:%d/' % (host, cfg['port'])]


def child_argv(cfg, python, binaries, outcome):
    """argv of the detached process of an endpoint."""
    tag = '%s:%s' % (MARKER, cfg['name'])
    if cfg['role'] == 'server':
        if cfg['kind'] == 'nc':
            # netcat-openbsd: listen on address:port, keep the connection, send nothing
            return [binaries['nc'], '-l', cfg['address'], str(cfg['port'])], tag
        return [python, '-c', SERVER_CODE, tag, json.dumps({'address': cfg['address'], 'port': cfg['port']})], tag
    if cfg['kind'] == 'curl':
        args = {'argv': curl_argv(binaries['curl'], cfg), 'outcome': outcome}
        return [python, '-c', CURL_WRAPPER_CODE, tag, json.dumps(args)], tag
    args = {'address': cfg['address'], 'port': cfg['port'], 'local_port': cfg.get('local_port'), 'outcome': outcome}
    return [python, '-c', CLIENT_CODE, tag, json.dumps(args)], tag


# -- processes ----------------------------------------------------------------

def is_ours(info):
    """The recorded process still runs and is the one we started."""
    if not info or not info.get('pid'):
        return False
    pid = int(info['pid'])
    start = starttime(pid)
    if start is None or start != info.get('start'):
        return False
    argv = cmdline(pid)
    return info.get('tag') in argv or (info.get('kind') == 'nc' and argv[:1] == info.get('argv', [None])[:1])


def spawn(argv, log_path):
    """Start argv detached: new session, stdin from /dev/null, output to log_path."""
    with open(log_path, 'ab') as log:
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
            start_new_session=True, cwd='/')
    return proc


# -- sockets (/proc/net/tcp) ----------------------------------------------------

TCP_STATES = {'01': 'ESTABLISHED', '0A': 'LISTEN'}


def parse_proc_net_tcp(text):
    """(local_port, remote_port, state, inode) of each socket in /proc/net/tcp{,6} text."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state = fields[1], fields[2], fields[3]
        rows.append((int(local.rsplit(':', 1)[1], 16), int(remote.rsplit(':', 1)[1], 16),
                     TCP_STATES.get(state.upper(), state), int(fields[9])))
    return rows


def sockets():
    rows = []
    for path in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(path) as handle:
                rows.extend(parse_proc_net_tcp(handle.read()))
        except (IOError, OSError):
            continue
    return rows


def session_socket_inodes(session):
    """Inodes of the sockets held by the processes of a session (the endpoint and its children)."""
    inodes = set()
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as handle:
                if int(handle.read().rsplit(')', 1)[1].split()[3]) != session:
                    continue
            fds = os.listdir('/proc/%s/fd' % entry)
        except (IOError, OSError, ValueError, IndexError):
            continue
        for fd in fds:
            try:
                link = os.readlink('/proc/%s/fd/%s' % (entry, fd))
            except OSError:
                continue
            if link.startswith('socket:['):
                inodes.add(int(link[8:-1]))
    return inodes


def ready(cfg, pid):
    """True once the endpoint's own socket listens (server) or is ESTABLISHED (client)."""
    owned = session_socket_inodes(pid)
    for local_port, remote_port, state, inode in sockets():
        if inode not in owned:
            continue
        if cfg['role'] == 'server' and state == 'LISTEN' and local_port == cfg['port']:
            return True
        if cfg['role'] == 'client' and state == 'ESTABLISHED' and remote_port == cfg['port'] \
                and (not cfg.get('local_port') or local_port == cfg['local_port']):
            return True
    return False


class Endpoints:
    """Start, stop and report endpoints; state files live in state_dir."""

    def __init__(self, state_dir, python=None, binaries=None, check_mode=False):
        self.state_dir = state_dir
        self.python = python or sys.executable
        self.binaries = binaries or {}
        self.check_mode = check_mode

    def _paths(self, name):
        base = os.path.join(self.state_dir, name)
        return base + '.json', base + '.outcome.json', base + '.log'

    def load(self, name):
        state, dummy, dummy2 = self._paths(name)
        try:
            with open(state) as handle:
                return json.load(handle)
        except (IOError, OSError, ValueError):
            return None

    def outcome(self, name):
        dummy, path, dummy2 = self._paths(name)
        try:
            with open(path) as handle:
                return json.load(handle)
        except (IOError, OSError, ValueError):
            return None

    def report(self, cfg, info, changed, msg):
        running = is_ours(info)
        outcome = self.outcome(cfg['name']) if cfg['role'] == 'client' else None
        result = {
            'changed': changed,
            'msg': msg,
            'name': cfg['name'],
            'role': cfg['role'],
            'kind': cfg['kind'],
            'running': running,
            'pid': info.get('pid') if info else None,
            'log': self._paths(cfg['name'])[2],
        }
        if cfg['role'] == 'client':
            result['outcome'] = outcome_summary(outcome, running)
            if cfg['kind'] == 'curl':
                effective = cfg.get('keepalive_time') or (info or {}).get('keepalive_time')
                result['keepalive_time'] = effective or CURL_DEFAULT_KEEPALIVE
                result['keepalive_time_source'] = 'option' if effective else 'curl default'
        return result

    def started(self, cfg, timeout=10.0):
        info = self.load(cfg['name'])
        if is_ours(info):
            same = all(info.get(k) == cfg.get(k) for k in ('role', 'kind', 'address', 'port'))
            if not same:
                raise EndpointError(MSG_RUNNING_OTHER % (cfg['name'], ', '.join(
                    '%s=%s' % (k, info.get(k)) for k in ('role', 'kind', 'address', 'port'))))
            return self.report(cfg, info, False, 'already running')
        if self.check_mode:
            return self.report(cfg, None, True, 'would start')
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, 0o700)
        state, outcome, log = self._paths(cfg['name'])
        for stale in (outcome, outcome + '.tmp'):
            if os.path.exists(stale):
                os.unlink(stale)
        argv, tag = child_argv(cfg, self.python, self.binaries, outcome)
        proc = spawn(argv, log)
        info = dict(cfg, pid=proc.pid, start=starttime(proc.pid), tag=tag, argv=argv[:1],
                    started_at=time.time(), outcome_file=outcome)
        atomic_write(state, json.dumps(info) + '\n', 0o600)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready(cfg, proc.pid):
                return self.report(cfg, info, True, 'started')
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        detail = self._tail(log) or 'no output'
        out = self.outcome(cfg['name'])
        if out and out.get('error'):
            detail = out['error']
        self._terminate(info)
        raise EndpointError(MSG_NOT_READY % (cfg['role'], cfg['name'], timeout, detail))

    @staticmethod
    def _tail(path):
        try:
            with open(path, 'rb') as handle:
                return handle.read()[-2000:].decode('utf-8', 'replace').strip()
        except (IOError, OSError):
            return ''

    def _terminate(self, info):
        """SIGTERM the endpoint's process group (ours only), then SIGKILL what is left."""
        if not is_ours(info):
            return False
        pid = int(info['pid'])
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and starttime(pid) is not None:
                time.sleep(0.02)
            if starttime(pid) is None:
                return True
        return True

    def stopped(self, cfg):
        info = self.load(cfg['name'])
        running = is_ours(info)
        if self.check_mode:
            return self.report(cfg, info, running, 'would stop' if running else 'not running')
        result = self.report(cfg, info, running, 'stopped' if running else 'not running')
        if running:
            self._terminate(info)
            result['running'] = False
        return result

    def purged(self):
        """Stop every endpoint recorded in state_dir that runs in this network namespace (the rollback's panic button)."""
        stopped = []
        try:
            names = sorted(n[:-5] for n in os.listdir(self.state_dir)
                           if n.endswith('.json') and not n.endswith('.outcome.json'))
        except OSError:
            names = []
        own = netns_inode()
        for name in names:
            info = self.load(name)
            # lab hosts share one file system: only the endpoints of this host's network namespace
            if is_ours(info) and netns_of(int(info['pid'])) == own:
                stopped.append(name)
                if not self.check_mode:
                    self._terminate(info)
        return {'changed': bool(stopped), 'stopped': stopped,
                'msg': 'stopped %s' % ', '.join(stopped) if stopped else 'no endpoint running'}

    def status(self, cfg):
        info = self.load(cfg['name'])
        return self.report(cfg, info, False, 'running' if is_ours(info) else 'not running')


def outcome_summary(outcome, running):
    """The client's outcome for the module result."""
    if not outcome:
        return {'state': 'running' if running else 'unknown', 'errno': None, 'exit_code': None, 'seconds': None}
    state = outcome.get('state')
    if state in ('connected', 'starting') and not running:
        state = 'stopped'
    return {
        'state': state,
        'errno': outcome.get('errno'),
        'exit_code': outcome.get('exit_code'),
        'error': outcome.get('error'),
        'seconds': round(outcome['seconds'], 3) if outcome.get('seconds') is not None else None,
        'connected_at': outcome.get('connected_at'),
        'failed_at': outcome.get('failed_at'),
    }
