# Unit tests of the keepalive audit: policy validation and presets, findings,
# remediation values, systemd-sysctl precedence, drift, the /proc/net/tcp
# scanner (golden lines and a 100 000-socket listing), namespace labels, and
# reading another namespace through a forked setns() child (real kernel,
# a namespace made and removed here, when running as root).
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _audit
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit import (
    AuditError, container_id_from_cgroup, decode_address, detection_seconds, drift_findings, label_of, matches,
    parse_sysctl_text, read_in_netns, read_namespace, read_persisted, remediation_target, run_audit, scan_tcp,
    socket_owners, sysctl_files, top_processes, validate_policy, value_findings)
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.netns_child import audit_in_netns

DEFAULTS = {'time': 7200, 'intvl': 75, 'probes': 9}
KNOWN = 'preset, max_detection_seconds, target, time, intvl, probes, accepted_without_keepalive'
NO_RANGE = {'min': None, 'max': None}


def policy(**kw):
    return validate_policy(kw)


# -- policy ---------------------------------------------------------------------

@pytest.mark.parametrize('preset, limit', [('azure-lb', 239), ('azure-lb-reset', 239), ('aws-nlb', 349), ('gcp-vpc', 599)])
def test_load_balancer_presets_are_below_the_idle_timeout(preset, limit):
    p = policy(preset=preset)
    assert p['max_detection_seconds'] == limit
    assert p['max_detection_seconds'] < _audit.PRESET_IDLE_TIMEOUTS[preset]
    assert all(p[k] == NO_RANGE for k in _audit.KEYS)


def test_kernel_default_preset_is_exactly_7200_75_9():
    p = policy(preset='kernel-default')
    assert p['time'] == {'min': 7200, 'max': 7200}
    assert p['intvl'] == {'min': 75, 'max': 75}
    assert p['probes'] == {'min': 9, 'max': 9}
    assert value_findings(DEFAULTS, p, 'host') == []
    assert [f['id'] for f in value_findings(dict(DEFAULTS, time=7199), p, 'host')] == ['KA001']


def test_explicit_keys_override_the_preset():
    p = policy(preset='azure-lb', max_detection_seconds=100, time={'min': 30})
    assert p['max_detection_seconds'] == 100
    assert p['time'] == {'min': 30, 'max': None}
    assert p['preset'] == 'azure-lb'


def test_empty_policy():
    assert validate_policy(None) == validate_policy({})
    assert value_findings(DEFAULTS, validate_policy({}), 'host') == []


@pytest.mark.parametrize('given, message', [
    ('azure', _audit.MSG_POLICY_TYPE % (KNOWN, 'azure')),
    ({'bogus': 1}, _audit.MSG_POLICY_KEY % ('bogus', KNOWN)),
    ({'preset': 'azure'}, "policy preset 'azure' is unknown: use one of aws-nlb, azure-lb, azure-lb-reset, gcp-vpc, kernel-default"),
    ({'time': 30}, 'policy time must be a mapping with min and/or max, got 30'),
    ({'time': {'low': 3}}, "policy time has an unknown key 'low': use min and max"),
    ({'probes': {'max': 500}}, 'policy probes.max must be an integer 1..127, got 500'),
    ({'time': {'min': '30'}}, "policy time.min must be an integer 1..32767, got '30'"),
    ({'time': {'min': True}}, 'policy time.min must be an integer 1..32767, got True'),
    ({'intvl': {'min': 10, 'max': 5}}, 'policy intvl.min (10) is above intvl.max (5): swap them'),
    ({'max_detection_seconds': 0}, 'policy max_detection_seconds must be a positive integer, got 0'),
    ({'target': {'time': 1}}, "policy target must be a mapping with time, intvl and probes, got {'time': 1}"),
    ({'target': {'time': 0, 'intvl': 1, 'probes': 1}}, 'policy target.time must be an integer 1..32767, got 0'),
    ({'preset': 'azure-lb', 'target': {'time': 200, 'intvl': 10, 'probes': 5}},
     'policy target 200/10/5 is not compliant with the policy itself: dead-peer detection takes 250 s '
     '(time 200 + intvl 10 x probes 5), above the policy maximum 239 s (preset azure-lb: below the 240 s idle timeout)'),
])
def test_policy_errors(given, message):
    with pytest.raises(AuditError) as exc:
        validate_policy(given)
    assert str(exc.value) == message


# -- findings -------------------------------------------------------------------

def test_detection_time():
    assert detection_seconds(DEFAULTS) == 7875
    assert detection_seconds({'time': 30, 'intvl': 3, 'probes': 3}) == 39


def test_value_findings_fields_and_messages():
    p = policy(preset='azure-lb', time={'min': 30, 'max': 200}, probes={'max': 5})
    found = value_findings({'time': 20, 'intvl': 75, 'probes': 9}, p, 'ns1')
    assert [(f['id'], f['severity'], f['key']) for f in found] == [
        ('KA001', 'error', 'net.ipv4.tcp_keepalive_time'),
        ('KA002', 'error', 'net.ipv4.tcp_keepalive_probes'),
        ('KA003', 'error', 'detection_seconds'),
    ]
    assert found[0] == {'id': 'KA001', 'severity': 'error', 'namespace': 'ns1', 'key': 'net.ipv4.tcp_keepalive_time',
                        'observed': 20, 'expected': '>= 30',
                        'message': 'net.ipv4.tcp_keepalive_time is 20, below the policy minimum 30'}
    assert found[1]['message'] == 'net.ipv4.tcp_keepalive_probes is 9, above the policy maximum 5'
    assert found[2]['message'] == ('dead-peer detection takes 695 s (time 20 + intvl 75 x probes 9), above the policy '
                                   'maximum 239 s (preset azure-lb: below the 240 s idle timeout)')
    assert (found[2]['observed'], found[2]['expected']) == (695, '<= 239')


def test_detection_on_the_limit_is_compliant():
    p = policy(max_detection_seconds=239)
    assert value_findings({'time': 200, 'intvl': 13, 'probes': 3}, p, 'h') == []
    assert len(value_findings({'time': 201, 'intvl': 13, 'probes': 3}, p, 'h')) == 1


@pytest.mark.parametrize('values, pol, expected', [
    (DEFAULTS, {'preset': 'azure-lb'}, {'time': 122, 'intvl': 13, 'probes': 9}),
    (DEFAULTS, {'preset': 'aws-nlb'}, {'time': 178, 'intvl': 19, 'probes': 9}),
    ({'time': 20, 'intvl': 5, 'probes': 3}, {'preset': 'azure-lb', 'time': {'min': 30}}, {'time': 30, 'intvl': 5, 'probes': 3}),
    ({'time': 600, 'intvl': 60, 'probes': 2}, {'max_detection_seconds': 100}, {'time': 50, 'intvl': 25, 'probes': 2}),
    (DEFAULTS, {'preset': 'azure-lb', 'target': {'time': 60, 'intvl': 10, 'probes': 6}}, {'time': 60, 'intvl': 10, 'probes': 6}),
    # the first cut (probing to half the limit) is not enough: time goes to its minimum, probing gets the rest
    (DEFAULTS, {'max_detection_seconds': 110, 'time': {'min': 100}, 'intvl': {'max': 5}}, {'time': 101, 'intvl': 1, 'probes': 9}),
])
def test_remediation_target(values, pol, expected):
    p = validate_policy(pol)
    target = remediation_target(values, p)
    assert target == expected
    if target is not None:
        assert value_findings(target, p, 'x') == []


# -- persisted values -----------------------------------------------------------

def test_parse_sysctl_text():
    text = '''# comment
; also a comment
net.ipv4.tcp_keepalive_time = 600
net/ipv4/tcp_keepalive_intvl=30
-net.ipv4.tcp_keepalive_probes = 4
net.ipv4.ip_forward = 1
net.ipv4.tcp_keepalive_time = lots
no equals sign here
'''
    assert parse_sysctl_text(text) == [
        ('time', 600, 3, None), ('intvl', 30, 4, None), ('probes', 4, 5, None),
        ('time', None, 7, "net.ipv4.tcp_keepalive_time = 'lots' is not an integer; sysctl would reject it"),
    ]


def write(root, rel, text):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(text)
    return path


def test_systemd_sysctl_precedence(tmp_path):
    write(tmp_path, 'usr/lib/sysctl.d/50-default.conf', 'net.ipv4.tcp_keepalive_time = 7000\n')
    write(tmp_path, 'etc/sysctl.d/50-default.conf', 'net.ipv4.tcp_keepalive_time = 300\n')  # masks /usr/lib's
    write(tmp_path, 'run/sysctl.d/60-run.conf', 'net.ipv4.tcp_keepalive_intvl = 20\n')
    write(tmp_path, 'usr/local/lib/sysctl.d/70-local.conf', 'net.ipv4.tcp_keepalive_intvl = 25\n')
    write(tmp_path, 'lib/sysctl.d/10-early.conf', 'net.ipv4.tcp_keepalive_probes = 3\n')
    write(tmp_path, 'usr/lib/sysctl.d/80-masked.conf', 'net.ipv4.tcp_keepalive_probes = 99\n')
    os.symlink('/dev/null', str(tmp_path / 'etc/sysctl.d/80-masked.conf'))
    write(tmp_path, 'etc/sysctl.d/README', 'net.ipv4.tcp_keepalive_probes = 98\n')  # not *.conf
    write(tmp_path, 'etc/sysctl.conf', 'net.ipv4.tcp_keepalive_probes = 5\n')
    files = sysctl_files(str(tmp_path))
    assert [shown for shown, real in files] == [
        '/lib/sysctl.d/10-early.conf', '/etc/sysctl.d/50-default.conf', '/run/sysctl.d/60-run.conf',
        '/usr/local/lib/sysctl.d/70-local.conf', '/etc/sysctl.conf']
    persisted = read_persisted(str(tmp_path))
    assert persisted['values'] == {
        'time': {'value': 300, 'file': '/etc/sysctl.d/50-default.conf'},
        'intvl': {'value': 25, 'file': '/usr/local/lib/sysctl.d/70-local.conf'},
        'probes': {'value': 5, 'file': '/etc/sysctl.conf'},
    }
    assert persisted['problems'] == []


def test_no_files_means_kernel_defaults_at_boot(tmp_path):
    persisted = read_persisted(str(tmp_path))
    assert persisted == {'values': {}, 'files': [], 'problems': []}
    assert drift_findings(DEFAULTS, persisted, 'host') == []
    found = drift_findings(dict(DEFAULTS, time=120), persisted, 'host')
    assert found == [{'id': 'KA004', 'severity': 'warning', 'namespace': 'host', 'key': 'net.ipv4.tcp_keepalive_time',
                      'observed': 120, 'expected': 7200,
                      'message': 'net.ipv4.tcp_keepalive_time is 120 at runtime but 7200 after a reboot '
                                 '(kernel default, no sysctl file sets it)'}]


def test_drift_names_the_file(tmp_path):
    write(tmp_path, 'etc/sysctl.d/90-x.conf', 'net.ipv4.tcp_keepalive_intvl = 30\n')
    found = drift_findings({'time': 7200, 'intvl': 15, 'probes': 9}, read_persisted(str(tmp_path)), 'host')
    assert [f['message'] for f in found] == [
        'net.ipv4.tcp_keepalive_intvl is 15 at runtime but 30 after a reboot (/etc/sysctl.d/90-x.conf)']


# -- sockets --------------------------------------------------------------------

HEADER = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode'
TCP4 = [
    # listening socket: ignored
    '   0: 00000000:3039 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0',
    # established, keepalive timer 25 s (2500 ticks): within tcp_keepalive_time 30
    '   1: 0100007F:3039 0100007F:D431 01 00000000:00000000 02:000009C4 00000000     0        0 1002 1 0 20 4 30 10 -1',
    # established, keepalive timer 3000 s: a per-socket override
    '   2: 0100007F:D431 0100007F:3039 01 00000000:00000000 02:000493E0 00000000     0        0 1003 1 0 20 4 30 10 -1',
    # established, retransmit timer: not keepalive
    '   3: 0100007F:D432 0100007F:3039 01 00000001:00000000 01:00000014 00000000     0        0 1004 1 0 20 4 30 10 -1',
    # established, no timer
    '   4: 0100007F:D433 0100007F:3039 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0 20 4 30 10 -1',
]
TCP6 = [
    '   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:E290 01 00000000:00000000 '
    '02:00030D40 00000000     0        0 2001 1 0 20 4 30 10 -1',
]


def test_scan_tcp_golden():
    scan = scan_tcp(iter(TCP4), 30, clk_tck=100)
    assert scan == {'established': 4, 'keepalive': 2, 'overrides': 1, 'max_timer_seconds': 3000.0,
                    'inodes': ['1002', '1003'],
                    'override_examples': [{'local': '127.0.0.1:54321', 'remote': '127.0.0.1:12345',
                                           'timer_seconds': 3000.0, 'inode': 1003}]}
    scan6 = scan_tcp(iter(TCP6), 30, clk_tck=100)
    assert scan6['override_examples'] == [{'local': '[::1]:8080', 'remote': '[::1]:58000',
                                           'timer_seconds': 2000.0, 'inode': 2001}]


@pytest.mark.parametrize('text, expected', [
    ('0100007F:3039', '127.0.0.1:12345'),
    ('0A0012C6:0016', '198.18.0.10:22'),
    ('00000000000000000000000001000000:1F90', '[::1]:8080'),
    ('0000000000000000FFFF00000100007F:0050', '[::ffff:127.0.0.1]:80'),
])
def test_decode_address(text, expected):
    assert decode_address(text) == expected


def synthetic(n, override_every=1000):
    for i in range(n):
        when = 400000 if i % override_every == 0 else 300000
        yield ('%6d: 0100007F:%04X 0100007F:3039 01 00000000:00000000 02:%08X 00000000     0        0 %d 1 0 20 4 30 10 -1'
               % (i, 1024 + i % 60000, when + i % 7, 100000 + i))


def test_scan_tcp_keeps_at_most_max_examples_of_100000_sockets():
    # how long a scan of many sockets takes is benchmarks/audit_scale.sh's to measure, not a unit test's
    scan = scan_tcp(synthetic(100000), 3500, clk_tck=100, max_examples=20)
    assert scan['keepalive'] == 100000 and scan['overrides'] == 100
    assert len(scan['override_examples']) == 20
    assert scan['override_examples'][0]['timer_seconds'] >= scan['override_examples'][-1]['timer_seconds']


def test_socket_owner_of_a_real_socket():
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    try:
        inode = str(os.fstat(client.fileno()).st_ino)
        owner, complete, scanned = socket_owners([inode])
        assert owner == {inode: os.getpid()} and complete and scanned > 0
        top = top_processes([inode], owner)
        assert top == [{'pid': os.getpid(), 'comm': open('/proc/self/comm').read().strip(), 'sockets': 1}]
        owner, complete, scanned = socket_owners([inode], max_fd_scan=0)
        assert owner == {} and not complete
    finally:
        client.close()
        server.close()


def test_top_processes_orders_and_caps():
    owner = {'1': 10, '2': 10, '3': 11, '4': 12, '5': 12, '6': 12}
    assert [p['pid'] for p in top_processes(list(owner), owner, top=2)] == [12, 10]


# -- namespaces -----------------------------------------------------------------

CID = 'a' * 64


@pytest.mark.parametrize('cgroup, expected', [
    ('0::/system.slice/docker-%s.scope\n' % CID, CID),
    ('12:pids:/docker/%s\n' % CID, CID),
    ('0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-%s.scope\n' % CID, CID),
    ('0::/kubepods/besteffort/pod0b2c/%s\n' % CID, CID),
    ('0::/machine.slice/libpod-%s.scope/container\n' % CID, CID),
    ('0::/user.slice/user-0.slice/session-3.scope\n', None),
    ('', None),
])
def test_container_id_from_cgroup(cgroup, expected):
    assert container_id_from_cgroup(cgroup) == expected


@pytest.mark.parametrize('ns, label', [
    ({'kind': 'host', 'name': 'x', 'pid': None, 'comm': None, 'container_id': None}, 'host'),
    ({'kind': 'named', 'name': 'tcplab-a', 'pid': None, 'comm': None, 'container_id': None}, 'tcplab-a'),
    ({'kind': 'process', 'name': None, 'pid': 42, 'comm': 'nginx', 'container_id': CID}, 'container aaaaaaaaaaaa (nginx)'),
    ({'kind': 'process', 'name': None, 'pid': 42, 'comm': 'sleep', 'container_id': None}, 'sleep (pid 42)'),
])
def test_labels(ns, label):
    assert label_of(ns) == label


def test_matches():
    ns = {'kind': 'process', 'name': None, 'pid': 42, 'comm': 'nginx', 'container_id': CID}
    assert matches(ns, ['*'])
    assert matches(ns, ['ngin?'])
    assert matches(ns, ['aaaa*'])
    assert not matches(ns, ['tcplab-*'])


def test_read_in_netns_own_namespace_matches_in_process_reading():
    child = read_in_netns('/proc/self/ns/net', sockets=False)
    assert child == read_namespace('/proc', sockets=False)


def test_read_in_netns_reports_errors():
    result = read_in_netns('/nonexistent/ns')
    assert result['error'].startswith('[Errno 2] No such file or directory')

    def failing(fd):
        raise OSError(1, 'Operation not permitted')
    assert read_in_netns('/proc/self/ns/net', setns=failing) == {'error': '[Errno 1] Operation not permitted'}

    def hanging(fd):
        time.sleep(30)
    start = time.time()
    assert read_in_netns('/proc/self/ns/net', setns=hanging, timeout=0.5) == {'error': 'no answer within 0.5 s'}
    assert time.time() - start < 5


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None, reason='needs root and iproute2')
def test_read_a_fresh_namespace_through_setns():
    name = 'tcplab-ut-audit-%d' % os.getpid()
    subprocess.check_call(['ip', 'netns', 'add', name])
    try:
        subprocess.check_call(['ip', 'netns', 'exec', name, 'sysctl', '-q', '-w', 'net.ipv4.tcp_keepalive_time=123'])
        result = read_in_netns('/run/netns/%s' % name)
        assert result['values'] == {'time': 123, 'intvl': 75, 'probes': 9}
        assert result['sockets']['keepalive'] == 0
        found = _audit.discover_namespaces()
        mine = [ns for ns in found if ns['name'] == name]
        assert len(mine) == 1 and mine[0]['kind'] == 'named'
        assert len(set(ns['inode'] for ns in found)) == len(found)
        assert [ns['kind'] for ns in found].count('host') == 1
    finally:
        subprocess.call(['ip', 'netns', 'del', name])


# -- the whole audit over a fake /proc and root ---------------------------------

def fake_proc(tmp_path, values, tcp_lines=(), boot=True):
    """A /proc with the values; boot: PID 1 in the same namespace (True), another one (False), unreadable (None)."""
    proc = tmp_path / 'proc'
    for key, value in values.items():
        write(proc, 'sys/net/ipv4/tcp_keepalive_%s' % key, '%d\n' % value)
    write(proc, 'self/ns/net', '')
    if boot is True:  # the same inode as self/ns/net
        os.makedirs(str(proc / '1/ns'))
        os.link(str(proc / 'self/ns/net'), str(proc / '1/ns/net'))
    elif boot is False:
        write(proc, '1/ns/net', '')
    write(proc, 'net/tcp', '\n'.join([HEADER] + list(tcp_lines)) + '\n')
    write(proc, 'net/tcp6', HEADER + '\n')
    return str(proc)


class NoPidfd:
    """A Pidfd where pidfd_getfd is not available (the fallback to the inference from timers)."""

    def __init__(self, why):
        self.why = why

    def why_not(self):
        return self.why


def test_run_audit_host(tmp_path):
    proc = fake_proc(tmp_path, {'time': 30, 'intvl': 5, 'probes': 3}, TCP4)
    root = tmp_path / 'root'
    write(root, 'etc/sysctl.d/60-app.conf', 'net.ipv4.tcp_keepalive_time = 30\nnet.ipv4.tcp_keepalive_intvl = 5\n')
    result = run_audit({'policy': {'preset': 'azure-lb'}, 'root': str(root)}, proc=proc,
                       holders=lambda inodes, proc, cap: ({'1002': (7, 3), '1003': (7, 4)}, True, 2),
                       pidfd=NoPidfd('pidfd_getfd not in this test'))
    host = result['namespaces'][0]
    assert host['label'] == 'host' and host['detection_seconds'] == 45
    assert host['sockets']['top_processes'] == [{'pid': 7, 'comm': None, 'sockets': 2}]
    assert [f['id'] for f in result['findings']] == ['KA004', 'KA005']
    assert result['findings'][0]['message'] == ('net.ipv4.tcp_keepalive_probes is 3 at runtime but 9 after a reboot '
                                                '(kernel default, no sysctl file sets it)')
    assert result['findings'][1]['message'] == _audit.MSG_F_OVERRIDE % (1, 30, 3000)
    assert result['drift'] == [{'key': 'net.ipv4.tcp_keepalive_probes', 'runtime': 3, 'persisted': 9, 'file': None}]
    assert host['remediation'] == {'time': 30, 'intvl': 5, 'probes': 3}
    assert result['compliant'] is False
    assert result['summary'] == {'namespaces': 1, 'findings': {'error': 0, 'warning': 2, 'info': 0},
                                 'detection_seconds_max': 45}
    assert result['persisted']['files'] == ['/etc/sysctl.d/60-app.conf']


def test_run_audit_compliant_and_parse_info(tmp_path):
    proc = fake_proc(tmp_path, DEFAULTS)
    root = tmp_path / 'root'
    write(root, 'etc/sysctl.conf', 'net.ipv4.tcp_keepalive_time = soon\n')
    result = run_audit({'policy': {'preset': 'kernel-default'}, 'root': str(root)}, proc=proc)
    assert result['compliant'] is True
    assert [(f['id'], f['severity'], f['message']) for f in result['findings']] == [
        ('KA008', 'info', "/etc/sysctl.conf line 1: net.ipv4.tcp_keepalive_time = 'soon' is not an integer; "
                          "sysctl would reject it")]
    assert result['notes'] == [_audit.NOTE_OWNERS_SKIPPED]


def test_run_audit_all_namespaces(tmp_path, monkeypatch):
    proc = fake_proc(tmp_path, DEFAULTS)
    others = [
        {'inode': 11, 'path': '/run/netns/a', 'kind': 'named', 'name': 'tcplab-a', 'pid': None, 'comm': None,
         'container_id': None},
        {'inode': 12, 'path': '/proc/9/ns/net', 'kind': 'process', 'name': None, 'pid': 9, 'comm': 'nginx',
         'container_id': CID},
        {'inode': 13, 'path': '/proc/10/ns/net', 'kind': 'process', 'name': None, 'pid': 10, 'comm': 'other',
         'container_id': None},
    ]
    monkeypatch.setattr(_audit, 'discover_namespaces', lambda netns_dir, proc, own: others)
    os.makedirs(str(tmp_path / 'root/etc'))
    answers = {'/run/netns/a': {'values': {'time': 60, 'intvl': 5, 'probes': 3}},
               '/proc/9/ns/net': {'error': '[Errno 1] Operation not permitted'}}
    result = run_audit({'namespaces': 'all', 'namespace_include': ['tcplab-*', 'nginx'], 'sockets': False,
                        'policy': {'preset': 'azure-lb'}, 'root': str(tmp_path / 'root')}, proc=proc,
                       reader=lambda path, sockets, examples, timeout: answers[path])
    assert [ns['label'] for ns in result['namespaces']] == ['host', 'tcplab-a', 'container aaaaaaaaaaaa (nginx)']
    assert [(f['id'], f['namespace']) for f in result['findings']] == [
        ('KA003', 'host'), ('KA006', 'container aaaaaaaaaaaa (nginx)')]
    assert result['findings'][1]['message'] == ('network namespace container aaaaaaaaaaaa (nginx) could not be read: '
                                                '[Errno 1] Operation not permitted')
    assert result['namespaces'][1]['compliant'] and result['namespaces'][1]['remediation'] is None
    assert result['notes'] == [_audit.NOTE_FILTERED % 1]


@pytest.mark.parametrize('params, message', [
    ({'namespaces': 'some'}, "namespaces must be host or all, got 'some'"),
    ({'root': 'relative/dir'}, "root must be an absolute path, got 'relative/dir'"),
])
def test_run_audit_bad_params(tmp_path, params, message):
    with pytest.raises(AuditError) as exc:
        run_audit(params, proc=fake_proc(tmp_path, DEFAULTS))
    assert str(exc.value) == message


# -- nonsense refused (issue 10 item 16) ----------------------------------------

@pytest.mark.parametrize('given, message', [
    # the preset gives time.min 7200: "swap them" would be wrong advice
    ({'preset': 'kernel-default', 'time': {'max': 100}},
     'policy time.max (100) conflicts with time.min 7200 of preset kernel-default: drop the preset, or give both '
     'time.min and time.max'),
    # no values can meet it: 30 + 1 x 1 > 20
    ({'max_detection_seconds': 20, 'time': {'min': 30}},
     'policy cannot be met: its smallest values (time 30, intvl 1, probes 1) already take 31 s, above '
     'max_detection_seconds 20: lower the minimums or raise max_detection_seconds'),
    ({'preset': 'azure-lb', 'time': {'min': 200}, 'intvl': {'min': 10}, 'probes': {'min': 4}},
     'policy cannot be met: its smallest values (time 200, intvl 10, probes 4) already take 240 s, above '
     'max_detection_seconds 239: lower the minimums or raise max_detection_seconds'),
    ({'max_detection_seconds': -1}, 'policy max_detection_seconds must be a positive integer, got -1'),
    ({'time': {'min': -5}}, 'policy time.min must be an integer 1..32767, got -5'),
])
def test_nonsense_policies_are_refused(given, message):
    with pytest.raises(AuditError) as exc:
        validate_policy(given)
    assert str(exc.value) == message


def test_remediation_always_meets_a_policy_that_validation_accepts():
    import random
    rnd = random.Random(10)
    tried = 0
    while tried < 2000:
        pol = {'max_detection_seconds': rnd.randint(3, 2000)}
        for key, high in (('time', 3000), ('intvl', 100), ('probes', 20)):
            low = rnd.choice([None, rnd.randint(1, high)])
            top = rnd.choice([None, rnd.randint(low or 1, high)])
            pol[key] = {'min': low, 'max': top}
        try:
            p = validate_policy(pol)
        except AuditError:
            continue
        tried += 1
        values = {'time': rnd.randint(1, 32767), 'intvl': rnd.randint(1, 32767), 'probes': rnd.randint(1, 127)}
        target = remediation_target(values, p)
        assert target is not None and value_findings(target, p, 'x') == [], (pol, values)


TIMEOUT_MSG = ('timeout must be a number of seconds above 0 and at most 3600 (the wait for the reading of one other '
               'namespace), got %s')


@pytest.mark.parametrize('params, message', [
    ({'timeout': -1}, TIMEOUT_MSG % -1),
    ({'timeout': 0}, TIMEOUT_MSG % 0),
    ({'timeout': 86400.0}, TIMEOUT_MSG % 86400.0),
    ({'timeout': float('nan')}, TIMEOUT_MSG % 'nan'),
    ({'timeout': True}, TIMEOUT_MSG % True),
    ({'max_namespaces': -1}, 'max_namespaces must be an integer 1..100000 (other namespaces read), got -1'),
    ({'max_namespaces': 0}, 'max_namespaces must be an integer 1..100000 (other namespaces read), got 0'),
    ({'top_processes': -5}, 'top_processes must be an integer 0..10000 (processes listed per namespace), got -5'),
    ({'max_examples': -1}, 'max_examples must be an integer 0..10000 (override sockets listed per namespace), got -1'),
    ({'max_fd_scan': 0}, 'max_fd_scan must be an integer 1..1000000000 (file descriptors read by the owner lookup), got 0'),
    ({'namespace_include': []}, "namespace_include must be a list of at least one shell pattern ('*' for every "
                                "namespace), got []"),
    ({'namespace_include': ['']}, "namespace_include must be a list of at least one shell pattern ('*' for every "
                                  "namespace), got ['']"),
    ({'root': '/nonexistent'}, 'root /nonexistent does not exist: give the directory that holds etc/sysctl.d '
                               '(/ for the host itself)'),
])
def test_nonsense_options_are_refused(tmp_path, params, message):
    with pytest.raises(AuditError) as exc:
        run_audit(dict(params, sockets=False), proc=fake_proc(tmp_path, DEFAULTS))
    assert str(exc.value) == message


def test_a_root_that_is_a_file_or_holds_no_etc_is_refused(tmp_path):
    proc = fake_proc(tmp_path, DEFAULTS)
    afile = write(tmp_path, 'afile', '')
    with pytest.raises(AuditError) as exc:
        run_audit({'root': afile}, proc=proc)
    assert str(exc.value) == _audit.MSG_ROOT_NOT_DIR % afile
    empty = str(tmp_path / 'empty')
    os.makedirs(empty)
    with pytest.raises(AuditError) as exc:
        run_audit({'root': empty}, proc=proc)
    assert str(exc.value) == ('root %s has no etc directory, so no sysctl file would be read: give the directory '
                              'that holds etc/sysctl.d (/ for the host itself)' % empty)
    os.makedirs(os.path.join(empty, 'etc'))
    assert run_audit({'root': empty, 'sockets': False}, proc=proc)['persisted']['files'] == []


# -- the boot namespace (issue 10 item 4) ---------------------------------------

def drifting_root(tmp_path):
    root = tmp_path / 'root'
    write(root, 'etc/sysctl.d/60-app.conf', 'net.ipv4.tcp_keepalive_time = 600\n')
    return str(root)


def test_boot_namespace_is_marked_and_checked_for_drift(tmp_path):
    proc = fake_proc(tmp_path, DEFAULTS, boot=True)
    result = run_audit({'root': drifting_root(tmp_path), 'sockets': False}, proc=proc)
    assert result['namespaces'][0]['boot_netns'] is True
    assert result['boot_netns_inode'] == os.stat(os.path.join(proc, 'self/ns/net')).st_ino
    assert [f['id'] for f in result['findings']] == ['KA004']
    assert result['persisted']['compared'] is True and result['notes'] == []


def test_another_namespace_is_not_checked_for_drift(tmp_path):
    proc = fake_proc(tmp_path, DEFAULTS, boot=False)
    result = run_audit({'root': drifting_root(tmp_path), 'sockets': False}, proc=proc)
    host = result['namespaces'][0]
    assert host['boot_netns'] is False
    assert result['findings'] == [] and result['drift'] == [] and result['compliant']
    assert result['persisted']['compared'] is False
    assert result['persisted']['values'] == {'time': {'value': 600, 'file': '/etc/sysctl.d/60-app.conf'}}
    assert result['notes'] == [_audit.NOTE_NOT_BOOT % (host['inode'], result['boot_netns_inode'])]
    assert 'containers from their container runtime' in result['notes'][0]


def test_unknown_boot_namespace_checks_drift_and_says_so(tmp_path):
    proc = fake_proc(tmp_path, DEFAULTS, boot=None)
    result = run_audit({'root': drifting_root(tmp_path), 'sockets': False}, proc=proc)
    assert result['namespaces'][0]['boot_netns'] is None and result['boot_netns_inode'] is None
    assert [f['id'] for f in result['findings']] == ['KA004']
    assert result['notes'] == [_audit.NOTE_BOOT_UNKNOWN % ('cannot read %s/1/ns/net: No such file or directory' % proc)]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None, reason='needs root and iproute2')
def test_real_namespaces_boot_netns(tmp_path):
    """The real kernel: the test's own namespace is PID 1's; a namespace made here is not (like a lab host)."""
    name = 'tkau-ut-boot-%d' % os.getpid()
    root = drifting_root(tmp_path)
    subprocess.check_call(['ip', 'netns', 'add', name])
    try:
        mine = run_audit({'root': root, 'sockets': False, 'namespaces': 'all', 'namespace_include': [name]})
        # the test runs in the initial namespace (that of PID 1, or of kthreadd when PID 1 hides its own)
        assert os.stat('/proc/2/ns/net').st_ino == os.stat('/proc/self/ns/net').st_ino
        assert [(ns['label'], ns['boot_netns']) for ns in mine['namespaces']] == [('host', True), (name, False)]
        assert mine['boot_netns_inode'] == os.stat('/proc/self/ns/net').st_ino
        assert mine['persisted']['compared'] is True
        lab = audit_in_netns('/run/netns/%s' % name, {'root': root, 'sockets': False})
        host = lab['namespaces'][0]
        assert host['boot_netns'] is False and host['inode'] == os.stat('/run/netns/%s' % name).st_ino
        assert host['values'] == DEFAULTS and lab['drift'] == [] and lab['findings'] == []
        assert lab['persisted']['compared'] is False
        assert lab['notes'] == [_audit.NOTE_NOT_BOOT % (host['inode'], mine['boot_netns_inode'])]
    finally:
        subprocess.call(['ip', 'netns', 'del', name])
