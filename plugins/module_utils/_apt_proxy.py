# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab's caching apt proxy: an apt-cacher-ng of its own on the lab bridge address.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

Lab VMs reach only the lab network; they install packages through this
proxy (their apt's Acquire::http::Proxy, set from the VM seed), which fetches
from the Debian archive named in their sources, as this machine reaches it.
It is not the system service: it has its own configuration, cache, log and
run directories under the given state directory, runs as the apt-cacher-ng
user, listens only on the given address, and is stopped only when its state
record (pid, start time, its -c configuration directory in the argv) proves
the process is this proxy.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import pwd
import shutil
import signal
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write, port_open
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, pids, starttime, wait_gone

DEFAULT_PORT = 3142
SERVICE_USER = 'apt-cacher-ng'
RECORD = 'proxy.json'

MSG_STATE_DIR = 'state directory of the apt proxy must be an absolute path that is not "/", got %r'
MSG_TOOL = '%s is needed for the lab apt proxy and was not found: install it (Debian/Ubuntu: apt-get install %s)'
MSG_USER = ('user %s does not exist: reinstall apt-cacher-ng (apt-get install --reinstall apt-cacher-ng), '
            'which creates it')
MSG_PORT_BUSY = ('%s:%d is already in use by another program: stop it (the system apt-cacher-ng service: '
                 'systemctl disable --now apt-cacher-ng) or give the lab proxy another port')
MSG_NOT_TRAVERSABLE = ('%s is not searchable by the %s user (mode %o): make it so (chmod o+x %s) '
                       'or put the lab state elsewhere')
MSG_NO_START = 'the lab apt proxy did not start listening on %s:%d within %d s; see %s'
MSG_ADDRESS = 'apt proxy address %r is not an IPv4 address: give the lab bridge address'


class AptProxyError(Exception):
    """The lab apt proxy cannot be started; the message names the fix."""


def render_config(dirs, address, port, upstream_proxy=None):
    """acng.conf of the lab proxy."""
    lines = [
        '# apt-cacher-ng of a tcplab.keepalive lab (not the system service); removed with the lab.',
        'CacheDir: %s' % dirs['cache'],
        'LogDir: %s' % dirs['log'],
        'SupportDir: /usr/lib/apt-cacher-ng',
        'BindAddress: %s' % address,
        'Port: %d' % port,
        'PidFile: %s' % os.path.join(dirs['run'], 'apt-cacher-ng.pid'),
        'SocketPath: %s' % os.path.join(dirs['run'], 'socket'),
        'ForeGround: 0',
        'ExThreshold: 4',
        'VerboseLog: 1',
        'UnbufferLogs: 1',
        # plain http proxying only: no CONNECT tunnels to anywhere
        'PassThroughPattern: ^$',
    ]
    if upstream_proxy:
        lines.append('Proxy: %s' % upstream_proxy)
    return '\n'.join(lines) + '\n'


def not_searchable(path, uid):
    """The first directory from / to path that uid cannot search (by its 'other' bits or ownership), or None."""
    current = '/'
    for part in [p for p in os.path.normpath(path).split('/') if p]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return None  # made later, with a searchable mode
        if not (st.st_mode & 0o001 or st.st_uid == uid):
            return current, st.st_mode & 0o777
    return None


class AptProxy:
    """One lab's apt-cacher-ng. `run` is a _common.Runner."""

    def __init__(self, run, state_dir, address, port=DEFAULT_PORT, cache_dir=None, upstream_proxy=None,
                 tools=None, user=SERVICE_USER, clock=time.monotonic, sleep=time.sleep):
        if not state_dir or not os.path.isabs(state_dir) or os.path.normpath(state_dir) == '/':
            raise AptProxyError(MSG_STATE_DIR % (state_dir,))
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise AptProxyError(MSG_ADDRESS % (address,))
        self.run, self.address, self.port, self.upstream_proxy = run, address, port, upstream_proxy
        self.state_dir = os.path.normpath(state_dir)
        self.dirs = {name: os.path.join(self.state_dir, name) for name in ('conf', 'run', 'log')}
        self.dirs['cache'] = os.path.normpath(cache_dir) if cache_dir else os.path.join(self.state_dir, 'cache')
        self.tools = tools or {}
        self.user = user
        self.clock, self.sleep = clock, sleep
        self.record_path = os.path.join(self.state_dir, RECORD)

    @property
    def url(self):
        return 'http://%s:%d' % (self.address, self.port)

    def tool(self, name):
        found = self.tools.get(name) or shutil.which(name, path=os.environ.get('PATH', '') + ':/usr/sbin:/sbin:/usr/bin')
        if not found:
            raise AptProxyError(MSG_TOOL % (name, {'apt-cacher-ng': 'apt-cacher-ng', 'setpriv': 'util-linux'}[name]))
        return found

    # -- record and ownership -------------------------------------------
    def load(self):
        try:
            with open(self.record_path) as handle:
                data = json.load(handle)
            return data if isinstance(data, dict) else {}
        except (IOError, OSError, ValueError):
            return {}

    def _is_ours(self, pid):
        argv = cmdline(pid)
        return any(argv[i] == '-c' and argv[i + 1] == self.dirs['conf'] for i in range(len(argv) - 1))

    def owned_pid(self, record=None, candidates=None):
        """Pid of this proxy: the recorded pid when its start time and argv match; without a record (a run
        that died between the start and the record) the apt-cacher-ng whose -c is this proxy's conf dir."""
        record = self.load() if record is None else record
        pid = record.get('pid')
        if pid and record.get('starttime') is not None and starttime(pid) == record['starttime'] and self._is_ours(pid):
            return pid
        if pid:
            return None
        for candidate in candidates if candidates is not None else pids():
            argv = cmdline(candidate)
            if argv and os.path.basename(argv[0]) == 'apt-cacher-ng' and self._is_ours(candidate) \
                    and starttime(candidate) is not None:
                return candidate
        return None

    def _record(self, pid):
        return {'pid': pid, 'starttime': starttime(pid), 'conf_dir': self.dirs['conf'],
                'address': self.address, 'port': self.port}

    def status(self):
        pid = self.owned_pid()
        return {'running': pid is not None, 'pid': pid, 'url': self.url, 'address': self.address, 'port': self.port,
                'cache_dir': self.dirs['cache'], 'log_dir': self.dirs['log']}

    # -- start -----------------------------------------------------------
    def start(self, timeout=15):
        """Start the proxy unless it runs. Returns status() plus changed."""
        record = self.load()
        pid = self.owned_pid(record)
        if pid:
            if not record.get('pid'):  # adopted from a run that died before writing the record
                atomic_write(self.record_path, json.dumps(self._record(pid), indent=2, sort_keys=True) + '\n')
            return dict(self.status(), changed=False)
        try:
            account = pwd.getpwnam(self.user)
        except KeyError:
            raise AptProxyError(MSG_USER % self.user)
        acng, setpriv = self.tool('apt-cacher-ng'), self.tool('setpriv')
        blocked = not_searchable(self.state_dir, account.pw_uid) or not_searchable(self.dirs['cache'], account.pw_uid)
        if blocked:
            raise AptProxyError(MSG_NOT_TRAVERSABLE % (blocked[0], self.user, blocked[1], blocked[0]))
        if port_open(self.address, self.port):
            raise AptProxyError(MSG_PORT_BUSY % (self.address, self.port))
        self._make_dirs(account)
        atomic_write(os.path.join(self.dirs['conf'], 'acng.conf'),
                     render_config(self.dirs, self.address, self.port, self.upstream_proxy), 0o644)
        pidfile = os.path.join(self.dirs['run'], 'apt-cacher-ng.pid')
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        self.run([setpriv, '--reuid=%d' % account.pw_uid, '--regid=%d' % account.pw_gid, '--clear-groups', '--',
                  acng, '-c', self.dirs['conf']], what='starting the lab apt proxy')
        record = self._wait_started(pidfile, timeout)
        atomic_write(self.record_path, json.dumps(record, indent=2, sort_keys=True) + '\n')
        return dict(self.status(), changed=True)

    def _make_dirs(self, account):
        os.makedirs(self.state_dir, mode=0o711, exist_ok=True)
        os.makedirs(self.dirs['conf'], mode=0o755, exist_ok=True)
        for name in ('run', 'log', 'cache'):
            os.makedirs(self.dirs[name], mode=0o750, exist_ok=True)
            os.chown(self.dirs[name], account.pw_uid, account.pw_gid)

    def _wait_started(self, pidfile, timeout):
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            try:
                with open(pidfile) as handle:
                    pid = int(handle.read().strip())
            except (IOError, OSError, ValueError):
                pid = None
            if pid and self._is_ours(pid) and port_open(self.address, self.port):
                return self._record(pid)
            self.sleep(0.1)
        raise AptProxyError(MSG_NO_START % (self.address, self.port, timeout, self.dirs['log']))

    # -- stop ------------------------------------------------------------
    def stop(self, purge=False, timeout=10):
        """Stop this proxy (SIGTERM, SIGKILL after timeout s); with purge also remove its cache and state.
        Returns {changed, stopped}."""
        record = self.load()
        pid = self.owned_pid(record)
        changed = False
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            if not self._wait_exit(pid, timeout):
                self._signal(pid, signal.SIGKILL)
                self._wait_exit(pid, 5)
            changed = True
        if os.path.exists(self.record_path):
            os.unlink(self.record_path)
            changed = True
        if purge and os.path.isdir(self.state_dir):
            # the state directory holds conf, run, log and the default cache; a cache_dir given elsewhere stays
            shutil.rmtree(self.state_dir)
            changed = True
        return {'changed': changed, 'stopped': pid is not None}

    @staticmethod
    def _signal(pid, signum):
        try:
            os.kill(pid, signum)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def _wait_exit(self, pid, timeout):
        return wait_gone(pid, timeout, step=0.1, clock=self.clock, sleep=self.sleep)
