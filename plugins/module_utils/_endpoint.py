# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The experiment's server and keepalive client as detached processes.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

Each endpoint is one unit of two processes: a supervisor (a new session,
stdio to the endpoint's log, MARKER and the endpoint's name on its command
line) and its program (the python server or client, nc or curl), which the
kernel kills when the supervisor dies (PR_SET_PDEATHSIG), so that neither is
ever orphaned. The supervisor records how the program ended - exit code or
signal - in an exit record; the client programs record their connection's
outcome (errno, curl's exit code, seconds from connect to failure).

The state files of an endpoint live in STATE_DIR/netns-<inode>/ of the network
namespace it runs in (lab hosts share one file system). Its state record
holds the pids and start times of both processes and the namespace inode: stop
and purge signal only processes that match that record, and record that they
asked for the stop, so that status can tell our own stop from a kill from
outside.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import sys
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils import _program_client, _program_server, _program_supervisor
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import (
    Process, load_record, program_source, save_record, spawn, terminate)
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import program_argv as source_argv
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import (
    children, cmdline, cpu_seconds, load_average, netns_inode, netns_of, session_members, starttime)

MARKER = 'tcplab-keepalive-endpoint'
NAME_RE = re.compile(r'^[A-Za-z0-9_-]{1,48}$')
CURL_DEFAULT_KEEPALIVE = 60
TIMEOUT_MAX = 3600
REQUEST_TIMEOUT_MAX = 86400
USER_TIMEOUT_MAX = 2147483647
TERM_WAIT = 3.0  # seconds each of SIGTERM and SIGKILL gets to end an endpoint
EXIT_WAIT = 2.0  # seconds status waits for the supervisor to record a program that has just ended
PACKAGES = {'nc': 'netcat-openbsd', 'curl': 'curl'}

MSG_PORT = '%s must be an integer 1..65535, got %r'
MSG_ADDRESS = 'address must be an IP address, got %r'
MSG_KIND = 'kind %r is not a %s kind: use %s'
MSG_KEEPALIVE_TIME = ('keepalive_time must be an integer 1..32767 seconds and applies to kind: curl only '
                      '(the python client sets no per-socket options), got %r')
MSG_USER_TIMEOUT = ('user_timeout_ms must be an integer 0..2147483647 milliseconds (TCP_USER_TIMEOUT; 0 leaves it off) '
                    'and applies to kind: python clients only, got %r')
MSG_REQUEST_TIMEOUT = ('request_timeout must be a number of seconds greater than 0 and at most %d and applies to kind: '
                       'python clients only, got %r')
MSG_NAME = 'name must be 1 to 48 letters, digits, "-" or "_", got %r'
MSG_TIMEOUT = 'timeout must be a number of seconds greater than 0 and at most %d, got %r'
MSG_PROGRAM = 'kind %s needs %s, but %r is not an executable file: install it (Debian/Ubuntu: apt-get install %s)'
MSG_NOT_READY = '%s %s did not become ready within %s s: %s'
MSG_START_KEPT = '; %s could not be stopped either, so its state record is kept: run state=stopped once that is fixed'
MSG_STATE_DIR = 'state_dir %r exists and is not a directory: remove it or pick another state_dir'
MSG_RUNNING_OTHER = ('an endpoint named %s already runs with other settings (%s); stop it first '
                     '(state: stopped) or pick another name')
MSG_STOP_FAILED = 'could not stop %s %s: %s still running after SIGTERM and SIGKILL'
MSG_PURGE_FAILED = 'could not stop every endpoint: %s'

# the programs an endpoint runs, each a module of its own (plugins/module_utils/_program_*.py), started by its source
PROGRAMS = {'server': _program_server, 'client': _program_client, 'supervisor': _program_supervisor}
# their source texts under the names of earlier releases (tests/unit/scripts/test_pycompat.py runs them so)
SERVER_CODE = program_source(_program_server)
CLIENT_CODE = program_source(_program_client)
SUPERVISOR_CODE = program_source(_program_supervisor)


class EndpointError(Exception):
    """Invalid request or failed start; the message says what to do."""


def _port(key, value):
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise EndpointError(MSG_PORT % (key, value))
    return value


def _timeout(value):
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise EndpointError(MSG_TIMEOUT % (TIMEOUT_MAX, value))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or not 0 < value <= TIMEOUT_MAX:
        raise EndpointError(MSG_TIMEOUT % (TIMEOUT_MAX, value))
    return float(value)


def _in_flight_options(params, kind):
    """The python client's user_timeout_ms (TCP_USER_TIMEOUT) and request_timeout (how long it waits for the answer to
    its request: the in-flight experiment lets the kernel end the connection first)."""
    out = {}
    user = params.get('user_timeout_ms')
    if user is not None:
        if kind != 'python' or isinstance(user, bool) or not isinstance(user, int) or not 0 <= user <= USER_TIMEOUT_MAX:
            raise EndpointError(MSG_USER_TIMEOUT % (user,))
        out['user_timeout_ms'] = user
    wait = params.get('request_timeout')
    if wait is not None:
        if kind != 'python' or isinstance(wait, bool) or not isinstance(wait, (int, float)) or math.isnan(wait) \
                or not 0 < wait <= REQUEST_TIMEOUT_MAX:
            raise EndpointError(MSG_REQUEST_TIMEOUT % (REQUEST_TIMEOUT_MAX, wait))
        out['request_timeout'] = float(wait)
    return out


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
    cfg = {'role': role, 'kind': kind, 'address': address, 'port': _port('port', params.get('port', 12345)),
           'timeout': _timeout(params['timeout'] if params.get('timeout') is not None else 10)}
    if role == 'client':
        local = params.get('local_port')
        cfg['local_port'] = _port('local_port', local) if local is not None else None
        keepalive = params.get('keepalive_time')
        if keepalive is not None:
            if kind != 'curl' or isinstance(keepalive, bool) or not isinstance(keepalive, int) \
                    or not 1 <= keepalive <= 32767:
                raise EndpointError(MSG_KEEPALIVE_TIME % (keepalive,))
        cfg['keepalive_time'] = keepalive
        cfg.update(_in_flight_options(params, kind))
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


def program_argv(cfg, python, binaries, outcome, tag, request=None):
    """argv of the endpoint's program (the supervisor's child). The python client sends one request when the file
    request appears (the idle-timeout experiment creates it)."""
    if cfg['role'] == 'server':
        if cfg['kind'] == 'nc':
            # netcat-openbsd: listen on address:port, keep the connection, send nothing
            return [binaries['nc'], '-l', cfg['address'], str(cfg['port'])]
        return source_argv(python, _program_server, tag, {'address': cfg['address'], 'port': cfg['port']})
    if cfg['kind'] == 'curl':
        return curl_argv(binaries['curl'], cfg)
    args = {'address': cfg['address'], 'port': cfg['port'], 'local_port': cfg.get('local_port'), 'outcome': outcome}
    if request:
        args['request'] = request
    for key in ('user_timeout_ms', 'request_timeout'):
        if cfg.get(key):
            args[key] = cfg[key]
    return source_argv(python, _program_client, tag, args)


def child_argv(cfg, python, binaries, paths):
    """argv of the detached supervisor of an endpoint, and the tag on its command line."""
    tag = '%s:%s' % (MARKER, cfg['name'])
    spec = {'argv': program_argv(cfg, python, binaries, paths['outcome'], tag, paths.get('request')), 'outcome': paths['outcome'],
            'exit': paths['exit'], 'curl': cfg['kind'] == 'curl'}
    return source_argv(python, _program_supervisor, tag, spec), tag


def progress(supervisor):
    """How far a start that is still waiting got: the CPU time its supervisor and the supervisor's program have
    used, and the machine's load, for a message that tells a starved host from a stuck program."""
    program = children(supervisor) if supervisor else []
    return 'its supervisor %s, its program %s; load average %s' % (
        _cpu_used(supervisor) if supervisor else '(none)', _cpu_used(program[0]) if program else 'has not started',
        _figure(load_average(), '?'))


def _figure(number, missing):
    return missing if number is None else '%.2f' % number


def _cpu_used(pid):
    seconds = cpu_seconds(pid)
    return 'pid %d used %s' % (pid, 'no CPU time we could read' if seconds is None else _figure(seconds, '') + ' s of CPU')


# -- processes ----------------------------------------------------------------
# An endpoint is two processes (_detached.Process): the supervisor, proven by its start time, the endpoint's tag on
# its command line and its network namespace, signalled with its process group (it leads its own session); and its
# program, proven by its own start time and namespace and the tag (python programs) or its argv[0] (nc, curl).

def supervisor_process(info, netns):
    """The recorded supervisor as a Process (ours only while in netns with the tag), or None."""
    if not info or info.get('netns') != netns or not info.get('pid'):
        return None
    pid, tag = int(info['pid']), info.get('tag')
    return Process(pid, info.get('start'), proof=lambda argv: tag in argv and netns_of(pid) == netns, group=True)


def program_process(info, netns):
    """The recorded program (the supervisor's child) as a Process, or None."""
    info = info or {}
    program = info.get('program') or {}
    if info.get('netns') != netns or not program.get('pid'):
        return None
    pid, tag, argv0 = int(program['pid']), info.get('tag'), program.get('argv0')
    return Process(pid, program.get('start'),
                   proof=lambda argv: (tag in argv or argv[:1] == [argv0]) and netns_of(pid) == netns)


def supervisor_is_ours(info, netns):
    """The recorded supervisor still runs, in netns, and is the one we started."""
    process = supervisor_process(info, netns)
    return bool(process and process.ours())


def program_is_ours(info, netns):
    """The recorded program (the supervisor's child) still runs, in netns, and is the one we started."""
    process = program_process(info, netns)
    return bool(process and process.ours())


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


def session_socket_inodes(leader):
    """Inodes of the sockets held by the processes of a session (the endpoint and its children)."""
    inodes = set()
    for entry in session_members(leader):
        try:
            fds = os.listdir('/proc/%d/fd' % entry)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink('/proc/%d/fd/%s' % (entry, fd))
            except OSError:
                continue
            if link.startswith('socket:['):
                inodes.add(int(link[8:-1]))
    return inodes


def _endpoint_socket(cfg, row):
    """Whether a /proc/net/tcp row is the socket an endpoint is ready with: the server's LISTEN on its port, the
    client's ESTABLISHED to its peer's port (from its own local port, when it has one)."""
    local_port, remote_port, state, _inode = row
    if cfg['role'] == 'server':
        return state == 'LISTEN' and local_port == cfg['port']
    return state == 'ESTABLISHED' and remote_port == cfg['port'] and (not cfg.get('local_port') or local_port == cfg['local_port'])


def ready(cfg, pid):
    """True once the endpoint's own socket listens (server) or is ESTABLISHED (client). The processes' sockets are
    only looked up once such a socket exists: under software emulation one look at every process costs 50 ms of
    the one CPU the starting program needs."""
    candidates = [row[3] for row in sockets() if _endpoint_socket(cfg, row)]
    return bool(candidates) and not session_socket_inodes(pid).isdisjoint(candidates)


def recorded(path, deadline, clock=time.monotonic, sleep=time.sleep):
    """Wait (until deadline) for the client's own record of its connection: its socket is ESTABLISHED a moment
    before the program writes 'connected', and a start that returns in between would report it merely running."""
    while clock() < deadline:
        if (_read_json(path) or {}).get('state') not in (None, 'starting'):
            return True
        sleep(0.02)
    return False


# -- outcome ------------------------------------------------------------------

FINAL = ('failed', 'closed', 'answered')
OUTCOME_KEYS = ('state', 'reason', 'errno', 'exit_code', 'signal', 'error', 'seconds', 'connected_at', 'failed_at')


def _who(info):
    program = info.get('program') or {}
    return 'the %s (pid %s, %s)' % (info.get('role'), program.get('pid') or info.get('pid'), info.get('kind'))


def _ended(who, out):
    """Reason of a client whose connection ended (the program recorded it)."""
    if out['state'] == 'closed':
        return '%s: %s' % (who, out.get('error') or 'the connection was closed')
    if out['state'] == 'answered':
        return '%s had its request answered %.1f s after connect' % (who, out.get('seconds') or 0.0)
    how = out.get('errno') or ('exit code %s' % out['exit_code'] if out.get('exit_code') is not None else 'an error')
    after = ' after %.1f s' % out['seconds'] if out.get('seconds') else ''
    return '%s failed with %s%s: %s' % (who, how, after, out.get('error') or 'no error text')


def _death(info, exit_rec, supervisor_alive, program_alive, last_line):
    """state, reason, exit_code, signal and error of an endpoint whose program no longer runs."""
    who = _who(info)
    stop_at = info.get('stop_requested')
    if exit_rec:
        sig = exit_rec.get('signal')
        if stop_at is not None and (exit_rec.get('at') or 0) >= stop_at:
            return {'state': 'stopped', 'signal': sig, 'reason': '%s was stopped (state=stopped or purged)' % who}
        if sig:
            via = ' (sent to its supervisor, pid %s)' % info.get('pid') if exit_rec.get('received') == sig else ''
            return {'state': 'died', 'signal': sig, 'reason': '%s was killed by %s%s' % (who, sig, via)}
        code = exit_rec.get('exit_code')
        # the last line of the log says why a program failed; after a clean exit it is just output (nc's data)
        text = (exit_rec.get('error') or last_line) if code else None
        return {'state': 'exited' if code == 0 else 'died', 'exit_code': code, 'error': text or None,
                'reason': '%s exited with code %s%s' % (who, code, ': %s' % text if text else '')}
    if stop_at is not None:
        return {'state': 'stopped', 'signal': 'SIGKILL', 'reason': '%s was stopped (state=stopped or purged)' % who}
    if supervisor_alive:
        return {'state': 'died', 'reason': '%s has ended; its supervisor (pid %s) has not recorded how' % (who, info.get('pid'))}
    left = 'still runs orphaned: state=stopped or purged ends it' if program_alive else 'ended with it'
    return {'state': 'died', 'signal': 'SIGKILL',
            'reason': 'the supervisor (pid %s) of %s was killed by SIGKILL (it records every other end), and %s %s'
                      % (info.get('pid'), who, info.get('kind'), left)}


def derive(role, info, outcome, exit_rec, supervisor_alive, program_alive, last_line=''):
    """The outcome of an endpoint from its records and whether its processes run.

    program_alive is None while the program is not recorded yet (the start window).
    """
    out = dict.fromkeys(OUTCOME_KEYS)
    outcome = outcome or {}
    for key in ('errno', 'exit_code', 'error', 'connected_at', 'failed_at'):
        out[key] = outcome.get(key)
    if outcome.get('seconds') is not None:
        out['seconds'] = round(outcome['seconds'], 3)
    for key in ('requested_at', 'answered_at'):  # a python client's one request (idle-timeout experiment)
        if outcome.get(key) is not None:
            out[key] = outcome[key]
    if not info:
        out.update(state='unknown', reason='no %s of this name was started in this network namespace' % role)
        return out
    recorded = outcome.get('state')
    if recorded in FINAL:
        out['state'] = recorded
        out['reason'] = _ended(_who(info), out)
    elif supervisor_alive and program_alive is not False:
        out['state'] = recorded if recorded in ('starting', 'connected') else 'running'
        out['reason'] = '%s is %s' % (_who(info), 'connected' if out['state'] == 'connected' else 'running')
    else:
        out.update(_death(info, exit_rec, supervisor_alive, program_alive, last_line))
    return out


def _last_line(path):
    try:
        with open(path, 'rb') as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            lines = [line.strip() for line in handle.read().decode('utf-8', 'replace').splitlines() if line.strip()]
    except (IOError, OSError):
        return ''
    return lines[-1][:300] if lines else ''


def _read_json(path):
    return load_record(path)


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Endpoints:
    """Start, stop and report the endpoints of this network namespace; state files live in state_dir/netns-<inode>."""

    def __init__(self, state_dir, python=None, binaries=None, check_mode=False):
        self.state_dir = state_dir
        self.python = python or sys.executable
        self.binaries = binaries or {}
        self.check_mode = check_mode
        self.netns = netns_inode()
        self.dir = os.path.join(state_dir, 'netns-%s' % self.netns)

    def _paths(self, name):
        base = os.path.join(self.dir, name)
        return {'state': base + '.json', 'outcome': base + '.outcome.json', 'exit': base + '.exit.json', 'log': base + '.log',
                'request': base + '.request'}

    def load(self, name):
        """The state record of name in this network namespace (None for a record of another namespace that had
        the same inode)."""
        info = _read_json(self._paths(name)['state'])
        return info if isinstance(info, dict) and info.get('netns') == self.netns else None

    def _save(self, info):
        save_record(self._paths(info['name'])['state'], info)

    def _alive(self, info):
        """(supervisor runs, program runs - None while not recorded)."""
        program = (info or {}).get('program')
        return supervisor_is_ours(info, self.netns), program_is_ours(info, self.netns) if program else None

    def report(self, cfg, info, changed, msg):
        paths = self._paths(cfg['name'])
        supervisor, program = self._alive(info)
        role = (info or {}).get('role') or cfg['role']
        outcome = derive(role, info, _read_json(paths['outcome']) if role == 'client' else None,
                         _read_json(paths['exit']), supervisor, program, _last_line(paths['log']))
        result = {
            'changed': changed,
            'msg': msg or outcome['reason'],
            'name': cfg['name'],
            'role': cfg['role'],
            'kind': cfg['kind'],
            'running': bool(supervisor and program is not False),
            'pid': ((info or {}).get('program') or {}).get('pid') or (info or {}).get('pid'),
            'supervisor_pid': (info or {}).get('pid'),
            'log': paths['log'],
            'outcome': outcome,
        }
        if cfg['role'] == 'client' and cfg['kind'] == 'python':
            # the file whose appearance makes the client send its one request
            result['request_file'] = paths['request']
        if cfg['role'] == 'client' and cfg['kind'] == 'curl':
            effective = cfg.get('keepalive_time') or (info or {}).get('keepalive_time')
            result['keepalive_time'] = effective or CURL_DEFAULT_KEEPALIVE
            result['keepalive_time_source'] = 'option' if effective else 'curl default'
        return result

    # -- start ----------------------------------------------------------------

    def _preflight(self, cfg):
        """The state directory can be made and the programs the endpoint needs are there - before anything is written."""
        for path in (self.state_dir, self.dir):
            if os.path.lexists(path) and not os.path.isdir(path):
                raise EndpointError(MSG_STATE_DIR % (path,))
        needed = {'python': self.python}
        if cfg['kind'] in PACKAGES:
            needed[cfg['kind']] = self.binaries.get(cfg['kind'])
        for what, path in needed.items():
            if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
                raise EndpointError(MSG_PROGRAM % (cfg['kind'], what, path, PACKAGES.get(what, 'python3')))

    def _make_dirs(self):
        """Create state_dir and the namespace's directory; return those created (to remove after a failed start)."""
        created = []
        for path in (self.state_dir, self.dir):
            if not os.path.isdir(path):
                os.makedirs(path, 0o700)
                created.append(path)
        return created

    def _forget(self, name, created):
        """Remove every file of the endpoint, and the directories in created when empty (those a failed start
        made; after a stop, this namespace's directory)."""
        for path in self._paths(name).values():
            _remove(path)
            _remove(path + '.tmp')
        for path in reversed(created):
            try:
                os.rmdir(path)
            except OSError:
                pass

    def _failure(self, name, running, role, supervisor=None):
        paths = self._paths(name)
        outcome, exit_rec = _read_json(paths['outcome']) or {}, _read_json(paths['exit']) or {}
        detail = outcome.get('error') if outcome.get('state') in FINAL else None
        detail = detail or exit_rec.get('error') or _last_line(paths['log'])
        if running:
            waiting = 'still not listening' if role == 'server' else 'still not connected'
            return '%s%s; %s' % (waiting, ' (%s)' % detail if detail else '', progress(supervisor))
        if not detail and exit_rec:
            detail = 'killed by %s' % exit_rec['signal'] if exit_rec.get('signal') else 'exit code %s' % exit_rec.get('exit_code')
        return detail or 'no output'

    def started(self, cfg, timeout=None):
        timeout = cfg.get('timeout', 10) if timeout is None else timeout
        info = self.load(cfg['name'])
        if supervisor_is_ours(info, self.netns):
            keys = ('role', 'kind', 'address', 'port')
            if not all(info.get(k) == cfg.get(k) for k in keys):
                raise EndpointError(MSG_RUNNING_OTHER % (cfg['name'], ', '.join('%s=%s' % (k, info.get(k)) for k in keys)))
            return self.report(cfg, info, False, 'already running')
        self._preflight(cfg)
        if self.check_mode:
            return self.report(cfg, None, True, 'would start')
        if info and program_is_ours(info, self.netns) and not self._terminate(info):
            raise EndpointError(MSG_STOP_FAILED % (cfg['role'], cfg['name'], _who(info)))
        created = self._make_dirs()
        paths, info = self._paths(cfg['name']), None
        try:
            for key in ('outcome', 'exit', 'request'):
                _remove(paths[key])
            argv, tag = child_argv(cfg, self.python, self.binaries, paths)
            proc = spawn(argv, paths['log'])  # _detached.spawn: a new session, the log 0600
            info = dict(cfg, pid=proc.pid, start=starttime(proc.pid), tag=tag, argv0=argv[0], started_at=time.time(),
                        netns=self.netns, program=None, outcome_file=paths['outcome'])
            self._save(info)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if ready(cfg, proc.pid):
                    info['program'] = self._program(proc.pid)
                    self._save(info)
                    if cfg['role'] == 'client':
                        recorded(paths['outcome'], deadline)
                    return self.report(cfg, info, True, 'started')
                time.sleep(0.02)
            detail = self._failure(cfg['name'], proc.poll() is None, cfg['role'], proc.pid)
        except BaseException:
            self._abandon(cfg['name'], info, created)
            raise
        msg = MSG_NOT_READY % (cfg['role'], cfg['name'], timeout, detail)
        if not self._abandon(cfg['name'], info, created):
            msg += MSG_START_KEPT % _who(info)
        proc.poll()
        raise EndpointError(msg)

    def _abandon(self, name, info, created):
        """After a failed start: stop what it started and remove every file of it; False (files kept) if that
        could not be stopped."""
        if info and not self._terminate(info):
            return False
        self._forget(name, created)
        return True

    @staticmethod
    def _program(supervisor):
        """pid, start time and argv[0] of the supervisor's child."""
        for pid in children(supervisor):
            argv = cmdline(pid)
            if argv:
                return {'pid': pid, 'start': starttime(pid), 'argv0': argv[0]}
        return None

    # -- stop -----------------------------------------------------------------

    def _gone(self, info):
        supervisor, program = self._alive(info)
        return not supervisor and not program

    def _terminate(self, info):
        """SIGTERM, then SIGKILL, the endpoint's process group and its program (_detached.terminate) - each only
        while it is still ours (pid, start time, namespace, command line). True once nothing of it runs, False
        when something survived both."""
        processes = [p for p in (supervisor_process(info, self.netns), program_process(info, self.netns)) if p]
        return terminate(processes, TERM_WAIT, TERM_WAIT).gone

    def _stop(self, info):
        """Stop one endpoint (ours only); the message, or None when nothing of it ran. Raise if it survives."""
        supervisor, program = self._alive(info)
        if not supervisor and not program:
            return None
        if self.check_mode:
            return 'would stop'
        if supervisor and program is not False:
            # ours: status tells this stop from a kill from outside
            info['stop_requested'] = time.time()
            self._save(info)
        if not self._terminate(info):
            raise EndpointError(MSG_STOP_FAILED % (info.get('role'), info.get('name'), _who(info)))
        if supervisor:
            return 'stopped'
        return 'stopped %s, which its killed supervisor (pid %s) had left running' % (_who(info), info.get('pid'))

    def stopped(self, cfg, forget=False):
        """Stop the endpoint (ours only) and report how it ended. forget (the experiment's end, whose result carries
        that report): then also remove its files, and this namespace's directory once empty - only after nothing
        of it runs (a stop that fails raises first, and the files stay for a later look)."""
        info = self.load(cfg['name'])
        msg = self._stop(info) if info else None
        result = self.report(cfg, info, msg is not None, msg or 'not running')
        if forget and info and not self.check_mode:
            self._forget(cfg['name'], [self.dir])
        return result

    def purged(self):
        """Stop every endpoint whose state record says it runs in this network namespace (the rollback's panic button),
        and remove the files of each once nothing of it runs."""
        stopped, failed = [], []
        try:
            names = sorted(n[:-5] for n in os.listdir(self.dir)
                           if n.endswith('.json') and not n.endswith(('.outcome.json', '.exit.json')))
        except OSError:
            names = []
        for name in names:
            info = self.load(name)
            if not info:
                continue
            try:
                if self._stop(info):
                    stopped.append(name)
            except EndpointError as exc:
                failed.append(str(exc))
                continue
            if not self.check_mode:
                self._forget(name, [self.dir])  # its record proved it this namespace's, and nothing of it runs
        if failed:
            raise EndpointError(MSG_PURGE_FAILED % '; '.join(failed))
        return {'changed': bool(stopped), 'stopped': stopped,
                'msg': '%s %s' % ('would stop' if self.check_mode else 'stopped', ', '.join(stopped))
                       if stopped else 'no endpoint running'}

    # -- status ---------------------------------------------------------------

    def status(self, cfg):
        info = self.load(cfg['name'])
        supervisor, program = self._alive(info)
        if supervisor and program is False:
            # the program has just ended: give its supervisor a moment to record how
            path, deadline = self._paths(cfg['name'])['exit'], time.monotonic() + EXIT_WAIT
            while time.monotonic() < deadline and not os.path.exists(path) and supervisor_is_ours(info, self.netns):
                time.sleep(0.02)
        return self.report(cfg, info, False, None)
