# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit's exact per-connection keepalive settings (issue 13, section 1).

Real kernel: another process (holder_sockets.py) holds a loopback connection
with its own TCP_KEEPIDLE/INTVL/CNT/USER_TIMEOUT; the audit duplicates its
descriptors with pidfd_getfd, reads them exactly and leaves the owner as it
was. In a lab network namespace made here (prefix tkps-), the whole audit
(run_audit inside the namespace, and namespaces: all from outside) lists the
connections and finds KA005 (exact), KA009 and KA010. Mocks only where the
kernel cannot be made to fail on demand (an unknown machine, an old kernel).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _audit, _audit_sockets
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit import run_audit, validate_policy
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_sockets import (
    Budget, Pidfd, connection_detection, is_accepted, kernel_version, read_entry, read_socket, socket_holders)
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.netns_child import audit_in_netns

HOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'holder_sockets.py')
ROOT = os.geteuid() == 0
PIDFD = Pidfd().why_not() is None
needs_pidfd = pytest.mark.skipif(not PIDFD, reason='pidfd_getfd not available here: %s' % Pidfd().why_not())
needs_root_ns = pytest.mark.skipif(not ROOT or shutil.which('ip') is None, reason='needs root and iproute2')


class Holder:
    """holder_sockets.py as a child process (optionally inside a network namespace), stopped by its handle."""

    def __init__(self, options, netns=None):
        argv = [sys.executable, HOLDER, json.dumps(options)]
        if netns:
            argv = ['nsenter', '--net=/run/netns/%s' % netns, '--'] + argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
        self.info = json.loads(self.proc.stdout.readline())

    def exchange(self, text):
        self.proc.stdin.write(text + '\n')
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def holder():
    made = []

    def make(options, netns=None):
        made.append(Holder(options, netns))
        return made[-1]
    yield make
    for item in made:
        item.stop()


@pytest.fixture
def netns():
    """A lab network namespace of this test; removed only when its inode is still the one made here."""
    name = 'tkps-ut-%d' % os.getpid()
    subprocess.check_call(['ip', 'netns', 'add', name])
    inode = os.stat('/run/netns/%s' % name).st_ino
    subprocess.check_call(['ip', 'netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up'])
    try:
        yield name
    finally:
        if os.path.exists('/run/netns/%s' % name) and os.stat('/run/netns/%s' % name).st_ino == inode:
            subprocess.call(['ip', 'netns', 'del', name])


def own_fds():
    return sorted(os.listdir('/proc/self/fd'))


# -- pure rules ---------------------------------------------------------------------

@pytest.mark.parametrize('idle, intvl, cnt, uto, expected', [
    (7200, 75, 9, 0, 7875),
    (300, 100, 3, 0, 600),
    # TCP_USER_TIMEOUT: the first timer run at or after it, once a probe has gone out
    (300, 100, 3, 450000, 500),
    (300, 100, 3, 500000, 500),
    (300, 100, 3, 1000, 400),      # below idle: still one probe first
    (30, 5, 9, 3000000, 3000),     # far above idle + cnt x intvl: the user timeout decides, not cnt
])
def test_connection_detection(idle, intvl, cnt, uto, expected):
    assert connection_detection(idle, intvl, cnt, uto) == expected


@pytest.mark.parametrize('local, listeners, expected', [
    ('0100007F:1F90', ['00000000:1F90'], True),
    ('0100007F:1F90', ['0100007F:1F90'], True),
    ('0100007F:1F90', ['0200007F:1F90'], False),
    ('0100007F:D431', ['00000000:1F90'], False),
    ('0000000000000000FFFF00000100007F:1F90', ['00000000000000000000000000000000:1F90'], True),
])
def test_is_accepted(local, listeners, expected):
    assert is_accepted(local, listeners) is expected


@pytest.mark.parametrize('release, expected', [
    ('6.1.0-18-amd64', (6, 1)), ('5.6.0', (5, 6)), ('5.4.0-150-generic', (5, 4)), ('4.19.0-26-arm64', (4, 19)),
    ('6.18.44-fc-v857', (6, 18)), ('weird', None),
])
def test_kernel_version(release, expected):
    assert kernel_version(release) == expected


def test_budget_spreads_the_reads_across_processes_then_by_socket():
    """Not the first rows in /proc order: a round over the processes (lowest pid first), each process's connections
    in order of local and remote address, until max_connections; the rest per_process_cap or total_cap, counted by
    process. Rows: [inode, local, remote, timer, seconds]; holders: {inode: (pid, fd)}."""
    def row(inode, local):
        return [str(inode), '0100007F:%04X' % local, '0100007F:3039', '00', 0.0]
    # /proc order: pid 30's five connections first (the old choice read 3 of them and 1 of pid 10's, none of 20's)
    ns1 = [row(1, 9), row(2, 5), row(3, 7), row(4, 1), row(5, 3), row(6, 8)]
    ns2 = [row(7, 6), row(8, 2), row(9, 4), row(99, 1)]
    holders = dict((str(i), (30, i)) for i in (1, 2, 3, 4, 5))
    holders.update({'6': (10, 6), '7': (10, 7), '8': (20, 8), '9': (20, 9)})   # inode 99: no owner
    budget = Budget(total=5, per_process=3)
    reasons = budget.plan([ns1, ns2], holders)
    # round 1: pid 10 (local 6), 20 (2), 30 (1); round 2: pid 10 (8), 20 (4); total reached before pid 30's 3 and 5
    assert reasons == [['per_process_cap', 'total_cap', 'per_process_cap', None, 'total_cap', None],
                       [None, None, None, None]]
    assert budget.skipped == {30: 4}
    assert Budget(total=100, per_process=2).plan([ns1, ns2], holders) == [
        ['per_process_cap', 'per_process_cap', 'per_process_cap', None, None, None], [None, None, None, None]]
    # the same rows in another /proc order: the same connections
    shuffled = Budget(total=5, per_process=3).plan([ns2[::-1], ns1[::-1]], holders)
    assert shuffled == [[None, None, None, None], reasons[0][::-1]]


def test_the_skipped_note_names_the_processes_most_first():
    budget = Budget(total=5, per_process=3)
    budget.skipped = {30: 4, 10: 1, 7: 4}
    comms = {30: 'nginx', 10: None, 7: 'redis-server'}
    assert _audit_sockets.skipped_note(budget, comms=comms) == _audit_sockets.NOTE_SKIPPED % (
        9, 5, 3, '4 of redis-server (pid 7), 4 of nginx (pid 30), 1 of ? (pid 10)')
    budget.skipped = dict((pid, 1) for pid in range(1, 13))
    note = _audit_sockets.skipped_note(budget, comms=dict((pid, 'p%d' % pid) for pid in range(1, 13)))
    assert note.endswith('1 of p10 (pid 10) and 2 of 2 more process(es)')


def test_why_not_on_an_unknown_machine_or_an_old_kernel():
    assert Pidfd(machine='alpha').why_not() == _audit_sockets.WHY_MACHINE % 'alpha'
    assert Pidfd(release='5.4.0-150-generic', machine='x86_64').why_not() == (
        'Linux 5.4.0-150-generic is older than 5.6, which added pidfd_getfd')


def test_why_not_when_the_call_fails():
    def enosys(number, *args):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    why = Pidfd(release='6.1.0', machine='aarch64', syscall=enosys, pidfd_open=lambda pid: os.open('/', 0)).why_not()
    assert why == 'pidfd_getfd failed on the audit process itself: [Errno 38] Function not implemented'


def test_socket_holders_finds_pid_and_fd():
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    try:
        inode = str(os.fstat(client.fileno()).st_ino)
        holder, complete, scanned = socket_holders([inode])
        assert holder == {inode: (os.getpid(), client.fileno())} and complete and scanned > 0
        assert socket_holders([inode], max_fd_scan=0)[:2] == ({}, False)
    finally:
        client.close()
        server.close()


# -- the real kernel: another process's socket ---------------------------------------

@needs_pidfd
def test_reads_another_process_socket_exactly_and_leaves_it_alone(holder):
    """The issue's check: a TCP_KEEPIDLE of 123 set by another process is read back exactly."""
    held = holder({'keepalive': 1, 'idle': 123, 'intvl': 7, 'cnt': 4, 'user_timeout_ms': 45000})
    before = own_fds()
    pidfd = Pidfd()
    try:
        got = read_socket(pidfd.dup(held.info['pid'], held.info['client_fd']), held.info['client_inode'])
        server = read_socket(pidfd.dup(held.info['pid'], held.info['server_fd']), held.info['server_inode'])
    finally:
        pidfd.close()
    assert got == {'keepalive': True, 'idle': 123, 'intvl': 7, 'cnt': 4, 'user_timeout_ms': 45000}
    assert server['keepalive'] is False and server['user_timeout_ms'] == 0
    assert own_fds() == before  # every duplicate and pidfd closed
    after = held.exchange('still works')
    assert after['got'] == 'still works\n'
    assert after['own'] == {'keepalive': 1, 'idle': 123, 'intvl': 7, 'cnt': 4, 'user_timeout_ms': 45000}
    assert after['fds'] == held.info['fds']


@needs_pidfd
def test_pidfd_open_through_the_syscall_as_on_python_3_8(holder):
    """Python 3.8 has no os.pidfd_open: syscall 434 stands in."""
    held = holder({'keepalive': 1, 'idle': 321})
    pidfd = Pidfd()
    pidfd._pidfd_open = None
    try:
        got = read_socket(pidfd.dup(held.info['pid'], held.info['client_fd']), held.info['client_inode'])
    finally:
        pidfd.close()
    assert got['idle'] == 321


@needs_pidfd
def test_a_descriptor_that_is_another_socket_now_is_not_read(holder):
    held = holder({'keepalive': 1, 'idle': 50})
    pidfd = Pidfd()
    try:
        assert read_socket(pidfd.dup(held.info['pid'], held.info['client_fd']), held.info['server_inode']) is None
        with pytest.raises(OSError) as exc:
            pidfd.dup(held.info['pid'], 999)
        assert exc.value.errno == errno.EBADF
    finally:
        pidfd.close()


@needs_pidfd
@pytest.mark.skipif(not ROOT, reason='needs root (to drop to nobody)')
def test_without_permission_the_connection_is_counted_refused(holder):
    """A real EPERM: a child that dropped to nobody may not duplicate a root process's descriptor."""
    held = holder({'keepalive': 1, 'idle': 50})
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            row = [str(held.info['client_inode']), '0100007F:0001', '0100007F:0002', '02', 9000.0]
            sockets = {'rows': [row], 'listening': []}
            read_entry(sockets, {'time': 60, 'intvl': 5, 'probes': 3},
                       {row[0]: (held.info['pid'], held.info['client_fd'])}, Pidfd(), Budget(10, 10))
            os.write(wfd, json.dumps(sockets).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    data = json.loads(os.read(rfd, 65536).decode())
    os.close(rfd)
    os.waitpid(pid, 0)
    assert data['connections'] == [] and data['unread']['refused'] == 1
    # not read: the timer (9000 s above the 60 s sysctl) still gives the inference
    assert (data['overrides'], data['overrides_exact'], data['overrides_inferred']) == (1, 0, 1)


# -- the whole audit in a lab namespace -----------------------------------------------

def set_sysctls(name, time, intvl, probes):
    subprocess.check_call(['ip', 'netns', 'exec', name, 'sysctl', '-q', '-w', 'net.ipv4.tcp_keepalive_time=%d' % time,
                           'net.ipv4.tcp_keepalive_intvl=%d' % intvl, 'net.ipv4.tcp_keepalive_probes=%d' % probes])


def ids(result):
    return [(f['id'], f['severity']) for f in result['findings']]


@needs_pidfd
@needs_root_ns
def test_audit_in_a_lab_namespace_reads_every_connection(holder, netns, tmp_path):
    set_sysctls(netns, 120, 15, 6)  # 210 s: within azure-lb's 239 s
    held = holder({'keepalive': 1, 'idle': 3000}, netns)      # the molecule scenario's override
    quiet = holder({'keepalive': 0}, netns)                   # a service whose accepted connection has no keepalive
    os.makedirs(str(tmp_path / 'etc'))
    result = audit_in_netns(netns, {'policy': {'preset': 'azure-lb'}, 'root': str(tmp_path)})
    sockets = result['namespaces'][0]['sockets']
    assert sockets['exact'] is True and sockets['established'] == 4
    by_inode = dict((c['inode'], c) for c in sockets['connections'])
    client = by_inode[held.info['client_inode']]
    assert client == {
        'pid': held.info['pid'], 'comm': open('/proc/%d/comm' % held.info['pid']).read().strip(),
        'fd': held.info['client_fd'], 'inode': held.info['client_inode'],
        'local': '127.0.0.1:%d' % held.info['client_port'], 'remote': '127.0.0.1:%d' % held.info['port'],
        'accepted': False, 'keepalive': True, 'idle': 3000, 'intvl': 15, 'cnt': 6, 'user_timeout_ms': 0,
        'override': True, 'detection_seconds': 3090}
    accepted = by_inode[quiet.info['server_inode']]
    assert accepted['accepted'] is True and accepted['keepalive'] is False and accepted['detection_seconds'] is None
    assert by_inode[quiet.info['client_inode']]['override'] is False  # keepalive off: no override
    assert sorted(p['connections'] for p in sockets['processes']) == [2, 2]
    assert sockets['overrides'] == 1 and sockets['overrides_inferred'] == 0
    assert ids(result) == [('KA005', 'warning'), ('KA009', 'error'), ('KA010', 'info'), ('KA010', 'info')]
    ka005, ka009, ka010 = result['findings'][0], result['findings'][1], result['findings'][2]
    assert ka005['message'].startswith('1 keepalive connection(s) set their own idle/interval/count instead of the '
                                       'sysctls (120/15/6), e.g. ')
    assert ka009['observed'] == 3090 and ka009['expected'] == '<= 239'
    assert ka009['message'] == _audit_sockets.MSG_F_CONNECTION % (
        client['comm'], held.info['pid'], 1, 3090, 'idle 3000 + intvl 15 x cnt 6', 239,
        ' although the sysctls (120/15/6, 210 s) satisfy it', client['local'], client['remote'])
    assert 'without keepalive: 1 of 1 accepted connection(s) have SO_KEEPALIVE off' in ka010['message']
    assert result['compliant'] is False and not [n for n in result['notes'] if 'not read' in n]
    # the knob makes the service finding a warning
    strict = audit_in_netns(netns, {'policy': {'preset': 'azure-lb', 'accepted_without_keepalive': 'warning'},
                                    'root': str(tmp_path), 'sockets': True})
    assert [i for i in ids(strict) if i[0] == 'KA010'] == [('KA010', 'warning'), ('KA010', 'warning')]


@needs_pidfd
@needs_root_ns
def test_an_override_below_the_sysctl_is_seen_now(holder, netns, tmp_path):
    """Invisible to the timer inference: TCP_KEEPIDLE below the sysctl, TCP_USER_TIMEOUT above the policy."""
    set_sysctls(netns, 120, 15, 6)
    held = holder({'keepalive': 1, 'idle': 60, 'intvl': 10, 'cnt': 3, 'user_timeout_ms': 600000,
                   'server_keepalive': 1}, netns)
    os.makedirs(str(tmp_path / 'etc'))
    result = audit_in_netns(netns, {'policy': {'preset': 'azure-lb'}, 'root': str(tmp_path)})
    conn = [c for c in result['namespaces'][0]['sockets']['connections'] if c['inode'] == held.info['client_inode']][0]
    assert conn['detection_seconds'] == 600 and conn['override']
    assert ids(result) == [('KA005', 'warning'), ('KA009', 'error')]
    assert 'idle 60, then every 10 s until TCP_USER_TIMEOUT 600000 ms' in result['findings'][1]['message']
    # the old inference sees nothing: the timer (60 s) is below tcp_keepalive_time
    inferred = audit_in_netns(netns, {'policy': {'preset': 'azure-lb'}, 'root': str(tmp_path), 'max_connections': 0})
    assert ids(inferred) == [] and inferred['namespaces'][0]['sockets']['exact'] is False
    assert _audit_sockets.NOTE_UNAVAILABLE % 'max_connections is 0' in inferred['notes']


@needs_pidfd
@needs_root_ns
def test_namespaces_all_reads_the_lab_namespace_from_outside_with_caps(holder, netns, tmp_path):
    set_sysctls(netns, 120, 15, 6)
    held = holder({'keepalive': 1, 'idle': 3000}, netns)
    os.makedirs(str(tmp_path / 'etc'))
    result = run_audit({'namespaces': 'all', 'namespace_include': [netns], 'root': str(tmp_path),
                        'policy': {'preset': 'azure-lb'}, 'max_connections_per_process': 1})
    lab = [ns for ns in result['namespaces'] if ns['label'] == netns][0]
    sockets = lab['sockets']
    assert sockets['exact'] and len(sockets['connections']) == 1
    assert sockets['unread']['per_process_cap'] == 1
    note = [n for n in result['notes'] if n.startswith('exact per-connection keepalive settings: ')]
    assert len(note) == 1 and ' over max_connections_per_process' in note[0]
    assert [c['pid'] for c in sockets['connections']] == [held.info['pid']]


@needs_pidfd
@needs_root_ns
def test_the_caps_spread_the_reads_over_the_processes(holder, netns, tmp_path):
    """Four processes with two connections each (client and accepted), max_connections 4: one of each process's is
    read - its lower by local and remote address - whatever /proc's order; the note says which were skipped."""
    set_sysctls(netns, 120, 15, 6)
    held = [holder({'keepalive': 1}, netns) for dummy in range(4)]
    os.makedirs(str(tmp_path / 'etc'))
    result = audit_in_netns(netns, {'policy': {'preset': 'azure-lb'}, 'root': str(tmp_path), 'max_connections': 4,
                                    'max_connections_per_process': 2})
    sockets = result['namespaces'][0]['sockets']
    read = sorted((c['pid'], c['inode']) for c in sockets['connections'])
    expected = []
    for h in sorted(held, key=lambda h: h.info['pid']):
        client = (_hex('127.0.0.1', h.info['client_port']), _hex('127.0.0.1', h.info['port']), h.info['client_inode'])
        server = (_hex('127.0.0.1', h.info['port']), _hex('127.0.0.1', h.info['client_port']), h.info['server_inode'])
        expected.append((h.info['pid'], min(client, server)[2]))
    assert read == expected
    assert sockets['unread']['total_cap'] == 4 and sockets['unread']['per_process_cap'] == 0
    comm = open('/proc/%d/comm' % held[0].info['pid']).read().strip()
    skipped = ', '.join('1 of %s (pid %d)' % (comm, pid) for pid in sorted(h.info['pid'] for h in held))
    assert _audit_sockets.NOTE_SKIPPED % (4, 4, 2, skipped) in result['notes']


def _hex(host, port):
    """An address as /proc/net/tcp writes it (IPv4: the address's bytes in host order, here little-endian)."""
    return '%08X:%04X' % (struct.unpack('<I', socket.inet_aton(host))[0], port)


def test_fallback_without_pidfd_getfd_keeps_the_inference(tmp_path):
    """Where pidfd_getfd is missing, KA005 comes from the timers as before and a note says why."""
    class Old:
        def why_not(self):
            return _audit_sockets.WHY_KERNEL % '5.4.0'
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 32000)
    client.connect(server.getsockname())
    accepted = server.accept()[0]
    try:
        os.makedirs(str(tmp_path / 'etc'))
        result = run_audit({'root': str(tmp_path)}, pidfd=Old())
    finally:
        for sock in (accepted, client, server):
            sock.close()
    sockets = result['namespaces'][0]['sockets']
    assert sockets['exact'] is False and sockets['connections'] == []
    assert _audit_sockets.NOTE_UNAVAILABLE % 'Linux 5.4.0 is older than 5.6, which added pidfd_getfd' in result['notes']
    if result['namespaces'][0]['values']['time'] < 31000:
        assert sockets['overrides'] >= 1 and 'KA005' in [f['id'] for f in result['findings']]


@pytest.mark.parametrize('params, message', [
    ({'max_connections': -1}, 'max_connections must be an integer 0..1000000 (connections whose own keepalive '
                              'settings are read, in all; 0: none), got -1'),
    ({'max_connections_per_process': 0}, 'max_connections_per_process must be an integer 1..1000000 (connections '
                                         'read per process), got 0'),
    ({'policy': {'accepted_without_keepalive': 'error'}}, "policy accepted_without_keepalive must be warning or info, "
                                                          "got 'error'"),
])
def test_bad_caps_and_knob_are_refused(params, message):
    with pytest.raises(_audit.AuditError) as exc:
        if 'policy' in params:
            validate_policy(params['policy'])
        else:
            _audit.validate_params(params)
    assert str(exc.value) == message


@needs_pidfd
def test_reading_is_bounded_on_100000_connections():
    """100 000 established rows held by one process: 100 read (the per-process cap), the rest counted. (How long it
    takes is benchmarks/audit_scale.sh's to measure, not a unit test's.)"""
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    accepted = server.accept()[0]
    try:
        inode = str(os.fstat(client.fileno()).st_ino)
        rows = [[inode, '0100007F:%04X' % (1024 + i % 60000), '0100007F:3039', '02', 30.0] for i in range(100000)]
        sockets = {'rows': rows, 'listening': ['0100007F:3039']}
        read_entry(sockets, {'time': 7200, 'intvl': 75, 'probes': 9}, {inode: (os.getpid(), client.fileno())},
                   Pidfd(), Budget(1000, 100))
    finally:
        for sock in (accepted, client, server):
            sock.close()
    assert len(sockets['connections']) == 100 and sockets['unread']['per_process_cap'] == 99900
    assert all(c['accepted'] is False and c['keepalive'] is False for c in sockets['connections'])


def test_pidfd_keeps_at_most_64_descriptors_open():
    opened = []

    def fake_open(pid):
        opened.append(os.open(os.devnull, os.O_RDONLY))
        return opened[-1]
    pidfd = Pidfd(release='6.1.0', machine='x86_64', syscall=lambda number, *args: os.dup(args[0]),
                  pidfd_open=fake_open)
    before = len(own_fds())
    most = 0
    for pid in range(1, 200):
        os.close(pidfd.dup(pid, 0))
        most = max(most, len(pidfd._pidfds))
        assert len(own_fds()) - before == len(pidfd._pidfds)
    pidfd.close()
    assert len(opened) == 199 and most == _audit_sockets.PIDFD_CACHE and len(own_fds()) == before
