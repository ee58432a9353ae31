# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit's exact per-connection reading against real daemons (issue 13, section 1).

Each daemon runs in a lab network namespace of this test (tkps-d-srv-PID),
joined to a client namespace (tkps-d-cli-PID) by a veth pair with addresses
from 198.19.190.0/24, with its own configuration and state directory under
/run/tcplab-test-ps/; the test starts it, opens connections from the client
namespace, audits the server namespace exactly as the module does there
(run_audit in a process inside it) and stops the daemon by the handle it
started (nothing in the root namespace is started, read-only there). A daemon
that is not installed is skipped with the reason; the packages:
redis-server, nginx-light (or nginx), openssh-server, postgresql.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_sockets import Pidfd
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.netns_child import audit_in_netns

STATE = '/run/tcplab-test-ps'
SERVER, CLIENT = '198.19.190.1', '198.19.190.2'
SYSCTLS = (120, 15, 6)   # 210 s: within azure-lb's 239 s, so every finding below is the connection's own
PGBIN = '/usr/lib/postgresql/15/bin'
# setpriv execs the program itself (no forked parent that would stand between the test and the daemon)
AS_POSTGRES = ['setpriv', '--reuid=postgres', '--regid=postgres', '--init-groups', '--']

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None or shutil.which('nsenter') is None,
                       reason='needs root, iproute2 and nsenter (lab namespaces)'),
    pytest.mark.skipif(Pidfd().why_not() is not None, reason='pidfd_getfd not available: %s' % Pidfd().why_not()),
]


def need(path, package):
    if not path or not os.path.exists(path):
        pytest.skip('%s is not installed (apt-get install %s)' % (path or package, package))
    return path


class Lab:
    """Two namespaces of this test joined by a veth pair; each is removed only while its inode is the one made."""

    def __init__(self, tag):
        self.srv = 'tkps-d-srv-%d' % os.getpid()
        self.cli = 'tkps-d-cli-%d' % os.getpid()
        self.dir = os.path.join(STATE, '%s-%d' % (tag, os.getpid()))
        self.inodes = {}
        self.started = []
        self.clients = []

    def up(self):
        os.makedirs(os.path.join(self.dir, 'etc'), mode=0o755)  # etc: the audit's root for persisted files
        for name in (self.srv, self.cli):
            subprocess.check_call(['ip', 'netns', 'add', name])
            self.inodes[name] = os.stat('/run/netns/%s' % name).st_ino
        subprocess.check_call(['ip', 'link', 'add', 'tkps-d%d' % (os.getpid() % 100000), 'netns', self.srv, 'type',
                               'veth', 'peer', 'name', 'tkps-p%d' % (os.getpid() % 100000), 'netns', self.cli])
        for name, dev, addr in ((self.srv, 'tkps-d', SERVER), (self.cli, 'tkps-p', CLIENT)):
            dev = '%s%d' % (dev, os.getpid() % 100000)
            self.run_in(name, ['ip', 'addr', 'add', addr + '/24', 'dev', dev])
            self.run_in(name, ['ip', 'link', 'set', dev, 'up'])
            self.run_in(name, ['ip', 'link', 'set', 'lo', 'up'])
        values = ['net.ipv4.tcp_keepalive_%s=%d' % kv for kv in zip(('time', 'intvl', 'probes'), SYSCTLS)]
        self.run_in(self.srv, ['sysctl', '-q', '-w'] + values)
        return self

    @staticmethod
    def run_in(name, argv):
        subprocess.check_call(['nsenter', '--net=/run/netns/%s' % name, '--'] + argv)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, name, text):
        with open(self.path(name), 'w') as handle:
            handle.write(text)
        return self.path(name)

    def start(self, argv, stop_signal=signal.SIGTERM):
        """A daemon in the server namespace, in the foreground, remembered by its handle (and start time)."""
        proc = subprocess.Popen(['nsenter', '--net=/run/netns/%s' % self.srv, '--'] + argv,
                                stdout=open(self.path('daemon-%d.log' % len(self.started)), 'w'),
                                stderr=subprocess.STDOUT)
        self.started.append((proc, stop_signal, _starttime(proc.pid)))
        return proc

    def wait_port(self, port, timeout=20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.connect(port, keep=False):
                return
            for started in self.started:
                proc = started[0]
                if proc.poll() is not None:
                    pytest.fail('the daemon ended (rc %s): %s' % (proc.returncode, self.logs()))
            time.sleep(0.2)
        pytest.fail('nothing listens on %s:%d after %s s: %s' % (SERVER, port, timeout, self.logs()))

    def logs(self):
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith('.log'):
                with open(self.path(name)) as handle:
                    out.append(handle.read()[-2000:])
        return ' | '.join(out)

    def connect(self, port, keep=True, send=b''):
        """A connection from the client namespace to the daemon (held by a child process), or False."""
        code = ('import socket,sys,time\ns=socket.socket()\ns.settimeout(2)\n'
                'try:\n  s.connect((%r,%d))\nexcept OSError:\n  sys.exit(1)\n'
                's.sendall(%r)\nprint("up",flush=True)\n'
                'sys.stdin.read() if %r else None\n' % (SERVER, port, send, keep))
        proc = subprocess.Popen(['nsenter', '--net=/run/netns/%s' % self.cli, '--', sys.executable, '-c', code],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
        line = proc.stdout.readline()
        if not keep or line.strip() != 'up':
            proc.stdin.close()
            proc.wait(10)
            return line.strip() == 'up'
        self.clients.append(proc)
        return proc

    def audit(self, policy):
        return audit_in_netns(self.srv, {'policy': policy, 'root': self.path(), 'namespaces': 'host'})

    def down(self):
        for proc in self.clients:
            proc.stdin.close()
            proc.wait(10)
        for proc, sig, start in reversed(self.started):
            if proc.poll() is None and _starttime(proc.pid) == start:
                proc.send_signal(sig)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for name, inode in self.inodes.items():
            path = '/run/netns/%s' % name
            if os.path.exists(path) and os.stat(path).st_ino == inode:
                left = subprocess.run(['ip', 'netns', 'pids', name], stdout=subprocess.PIPE,
                                      universal_newlines=True, check=False).stdout.split()
                for pid in left:  # in a namespace this test made and still holds: its daemons' children
                    os.kill(int(pid), signal.SIGKILL)
                subprocess.call(['ip', 'netns', 'del', name])
        shutil.rmtree(self.dir, ignore_errors=True)


def _starttime(pid):
    with open('/proc/%d/stat' % pid) as handle:
        return int(handle.read().rsplit(')', 1)[1].split()[19])


@pytest.fixture
def lab(request):
    made = Lab(request.node.name.split('[')[0][5:25])
    try:
        yield made.up()
    finally:
        made.down()


def on_port(result, port):
    return [c for c in result['namespaces'][0]['sockets']['connections'] if c['local'] == '%s:%d' % (SERVER, port)]


def findings(result, fid):
    return [f for f in result['findings'] if f['id'] == fid]


def settings(conn):
    return (conn['keepalive'], conn['idle'], conn['intvl'], conn['cnt'], conn['user_timeout_ms'], conn['detection_seconds'])


def test_redis_tcp_keepalive_sets_its_own_idle_interval_and_count(lab):
    server = need(shutil.which('redis-server') or '/usr/bin/redis-server', 'redis-server')
    os.makedirs(lab.path('redis'))
    conf = lab.write('redis.conf', 'bind %s\nport 6379\nprotected-mode no\ntcp-keepalive 300\ndaemonize no\n'
                                   'dir %s\nsave ""\nappendonly no\nlogfile ""\n' % (SERVER, lab.path('redis')))
    lab.start([server, conf])
    lab.wait_port(6379)
    lab.connect(6379, send=b'PING\r\n')
    lab.connect(6379)
    result = lab.audit({'preset': 'azure-lb'})
    conns = on_port(result, 6379)
    assert len(conns) == 2 and all(c['comm'] == 'redis-server' and c['accepted'] for c in conns)
    # redis: TCP_KEEPIDLE 300, TCP_KEEPINTVL 300 / 3, TCP_KEEPCNT 3 on every accepted connection
    assert [settings(c) for c in conns] == [(True, 300, 100, 3, 0, 600)] * 2
    ka009 = findings(result, 'KA009')
    assert len(ka009) == 1 and ka009[0]['observed'] == 600
    assert ka009[0]['message'].startswith('redis-server (pid %d): 2 connection(s) take up to 600 s to detect a dead '
                                          'peer (idle 300 + intvl 100 x cnt 3), above the policy maximum 239 s '
                                          'although the sysctls (120/15/6, 210 s) satisfy it' % conns[0]['pid'])
    assert findings(result, 'KA005')[0]['observed'] == 2 and not findings(result, 'KA010')
    print(json.dumps(conns, indent=1))


def _nginx():
    for path in ('/usr/sbin/nginx', shutil.which('nginx')):
        if path and os.path.exists(path):
            return path
    return None


def test_nginx_so_keepalive(lab):
    nginx = need(_nginx(), 'nginx-light')
    temp = ' '.join('%s_temp_path %s;' % (kind, lab.path('tmp-' + kind))
                    for kind in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'))
    conf = lab.write('nginx.conf', '''daemon off;
master_process on;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log stderr;
events { worker_connections 64; }
http {
  access_log off;
  %(temp)s
  server {
    listen %(ip)s:8080;
    listen %(ip)s:8081 so_keepalive=on;
    listen %(ip)s:8082 so_keepalive=30:10:3;
    location / { return 204; }
  }
}
''' % {'dir': lab.dir, 'temp': temp, 'ip': SERVER})
    lab.start([nginx, '-e', 'stderr', '-p', lab.dir, '-c', conf], signal.SIGTERM)
    for port in (8080, 8081, 8082):
        lab.wait_port(port)
        lab.connect(port)
    result = lab.audit({'preset': 'azure-lb', 'accepted_without_keepalive': 'warning'})
    by_port = dict((port, on_port(result, port)) for port in (8080, 8081, 8082))
    assert all(len(c) == 1 and c[0]['comm'] == 'nginx' and c[0]['accepted'] for c in by_port.values()), by_port
    assert settings(by_port[8080][0])[0] is False                     # default: no keepalive at all
    assert settings(by_port[8081][0]) == (True, 120, 15, 6, 0, 210)   # so_keepalive=on: the sysctls
    assert settings(by_port[8082][0]) == (True, 30, 10, 3, 0, 60)     # so_keepalive=30:10:3: its own
    ka010 = findings(result, 'KA010')
    assert [(f['severity'], f['observed']) for f in ka010] == [('warning', 1)]
    assert 'nginx (pid %d) accepts connections on port 8080 without keepalive' % by_port[8080][0]['pid'] \
        in ka010[0]['message']
    assert findings(result, 'KA005')[0]['observed'] == 1 and not findings(result, 'KA009')
    print(json.dumps(by_port, indent=1))


def test_sshd_tcpkeepalive_follows_the_sysctls(lab):
    sshd = need('/usr/sbin/sshd', 'openssh-server')
    key = lab.path('host_ed25519')
    subprocess.check_call(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', key])
    conf = lab.write('sshd_config', 'ListenAddress %s:2222\nHostKey %s\nTCPKeepAlive yes\nPidFile %s\n'
                                    'UsePAM no\nLoginGraceTime 60\n' % (SERVER, key, lab.path('sshd.pid')))
    lab.start([sshd, '-D', '-e', '-f', conf])
    lab.wait_port(2222)
    lab.connect(2222, send=b'SSH-2.0-tkps_test\r\n')
    time.sleep(0.5)  # sshd sets SO_KEEPALIVE in the connection's own process, after accept
    result = lab.audit({'preset': 'azure-lb'})
    conns = on_port(result, 2222)
    assert conns and all(c['comm'] == 'sshd' and c['accepted'] for c in conns)
    assert [settings(c) for c in conns] == [(True, 120, 15, 6, 0, 210)]
    assert not [f for f in result['findings'] if f['id'] in ('KA005', 'KA009', 'KA010')]
    print(json.dumps(conns, indent=1))


def test_postgresql_tcp_keepalives(lab):
    need(os.path.join(PGBIN, 'postgres'), 'postgresql')
    data = lab.path('pgdata')
    os.chmod(lab.dir, 0o755)
    os.makedirs(data, mode=0o700)
    shutil.chown(data, 'postgres', 'postgres')
    initdb = [os.path.join(PGBIN, 'initdb'), '-D', data, '-A', 'trust', '--no-sync', '-U', 'postgres']
    subprocess.check_call(AS_POSTGRES + initdb, stdout=subprocess.DEVNULL)
    pg_settings = ['listen_addresses=%s' % SERVER, 'port=5432', 'unix_socket_directories=%s' % data,
                   'tcp_keepalives_idle=60', 'tcp_keepalives_interval=10', 'tcp_keepalives_count=5', 'fsync=off']
    argv = [os.path.join(PGBIN, 'postgres'), '-D', data]
    for setting in pg_settings:
        argv += ['-c', setting]
    lab.start(AS_POSTGRES + argv, signal.SIGINT)
    lab.wait_port(5432)
    lab.connect(5432)
    time.sleep(0.3)
    result = lab.audit({'preset': 'azure-lb', 'max_detection_seconds': 100})
    conns = on_port(result, 5432)
    assert len(conns) == 1 and conns[0]['comm'] == 'postgres' and conns[0]['accepted']
    assert settings(conns[0]) == (True, 60, 10, 5, 0, 110)
    ka009 = findings(result, 'KA009')
    assert len(ka009) == 1 and ka009[0]['observed'] == 110 and ka009[0]['expected'] == '<= 100'
    print(json.dumps(conns, indent=1))
