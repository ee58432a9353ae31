# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# The middlebox that forgets idle flows: validation messages (no kernel), and on
# the real kernel three network namespaces on a bridge - client, middlebox, server -
# where the module's code routes the ends through the middlebox, a flow idle
# longer than the timeout is forgotten (dropped or reset) while keepalive keeps
# one alive, and absent / purged / check mode leave every host exactly as before.
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _iptables, _middlebox, _netns
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError
from ansible_collections.tcplab.keepalive.plugins.module_utils._middlebox import MiddleboxError, validate

MB = {'state': 'present', 'role': 'middlebox', 'tag': 'tkit-a', 'seconds': 6, 'ends': ['198.19.170.2', '198.19.170.4']}
END = {'state': 'present', 'role': 'end', 'tag': 'tkit-a', 'peer': '198.19.170.4', 'via': '198.19.170.3'}


def params(base, **kw):
    out = dict(base)
    out.update(kw)
    return {key: value for key, value in out.items() if value is not None}


# -- validation ---------------------------------------------------------------

def test_preset_takes_seconds_and_action_from_the_shared_table():
    request = validate(params(MB, seconds=None, preset='aws-nlb'))
    assert (request['seconds'], request['action'], request['preset']) == (350, 'reset', 'aws-nlb')
    assert validate(params(MB, seconds=None, preset='gcp-vpc'))['seconds'] == 600
    assert validate(MB)['action'] == 'drop'
    assert validate(params(MB, seconds='7', action='reset'))['seconds'] == 7


@pytest.mark.parametrize('extra, message', [
    ({'seconds': None, 'preset': 'haproxy'}, _middlebox.MSG_PRESET % ('aws-nlb, azure-lb, azure-lb-reset, gcp-vpc', 'haproxy')),
    ({'preset': 'aws-nlb'}, _middlebox.MSG_PRESET_WITH % ('aws-nlb', 350, 'reset')),
    ({'seconds': None, 'preset': 'aws-nlb', 'action': 'drop'}, _middlebox.MSG_PRESET_WITH % ('aws-nlb', 350, 'reset')),
    ({'seconds': 0}, _middlebox.MSG_SECONDS % (1, 432000, 0)),
    ({'seconds': 432001}, _middlebox.MSG_SECONDS % (1, 432000, 432001)),
    ({'seconds': 'six'}, _middlebox.MSG_SECONDS % (1, 432000, 'six')),
    ({'seconds': True}, _middlebox.MSG_SECONDS % (1, 432000, True)),
    ({'seconds': None}, _middlebox.MSG_SECONDS_REQUIRED % 'aws-nlb, azure-lb, azure-lb-reset, gcp-vpc'),
    ({'action': 'reject'}, _middlebox.MSG_ACTION % 'reject'),
    ({'ends': ['198.19.170.2']}, _middlebox.MSG_ENDS % (['198.19.170.2'],)),
    ({'ends': ['198.19.170.2', '198.19.170.2']}, _middlebox.MSG_ENDS % (['198.19.170.2', '198.19.170.2'],)),
    ({'ends': ['198.19.170.2', '::1']}, _middlebox.MSG_ADDRESS % ('ends', '::1')),
    ({'peer': '198.19.170.4'}, _middlebox.MSG_WRONG_ROLE_OPT % ('middlebox', 'peer', 'end')),
    ({'tag': 'bad tag'}, _iptables.MSG_TAG % 'bad tag'),
    ({'role': 'router'}, _middlebox.MSG_ROLE % ('present', 'router')),
    ({'role': None}, _middlebox.MSG_ROLE % ('present', None)),
])
def test_bad_middlebox_request_names_the_fix(extra, message):
    with pytest.raises(MiddleboxError) as info:
        validate(params(MB, **extra))
    assert str(info.value) == message


@pytest.mark.parametrize('extra, message', [
    ({'via': None}, _middlebox.MSG_END_OPTS % ('198.19.170.4', None)),
    ({'peer': 'server'}, _middlebox.MSG_ADDRESS % ('peer', 'server')),
    ({'seconds': 6}, _middlebox.MSG_WRONG_ROLE_OPT % ('end', 'seconds', 'middlebox')),
])
def test_bad_end_request_names_the_fix(extra, message):
    with pytest.raises(MiddleboxError) as info:
        validate(params(END, **extra))
    assert str(info.value) == message


def test_purge_takes_only_a_tag():
    assert validate({'state': 'purged'}) == {'state': 'purged', 'tag': None, 'wait': 30}
    with pytest.raises(MiddleboxError) as info:
        validate({'state': 'purged', 'role': 'middlebox'})
    assert str(info.value) == _middlebox.MSG_PURGE_OPT % 'role'
    # absent needs only role and tag
    assert validate({'state': 'absent', 'role': 'end', 'tag': 'x'})['tag'] == 'x'


def test_rules_accept_known_flows_and_syns_then_drop_or_reset_the_rest():
    rules = _middlebox.forward_rules('t1', ['198.19.170.2', '198.19.170.4'], 'reset')
    assert len(rules) == 6
    texts = [_middlebox.rule_text(*rule) for rule in rules]
    assert texts[0] == ('-A FORWARD -s 198.19.170.2/32 -d 198.19.170.4/32 -p tcp -m conntrack --ctstate '
                        'RELATED,ESTABLISHED -m comment --comment "tcplab-keepalive:t1" -j ACCEPT')
    assert texts[1].endswith('--tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -m comment '
                             '--comment "tcplab-keepalive:t1" -j ACCEPT')
    assert texts[2].endswith('-j REJECT --reject-with tcp-reset')
    assert texts[5].startswith('-A FORWARD -s 198.19.170.4/32 -d 198.19.170.2/32')
    assert _middlebox.forward_rules('t1', ['198.19.170.2', '198.19.170.4'], 'drop')[2][1][-2:] == ['-j', 'DROP']


def test_a_route_is_ours_only_with_our_proto_gateway_and_device():
    route = {'to': '198.19.170.4/32', 'via': '198.19.170.3', 'dev': 'eth0'}
    assert _middlebox.is_our_route('198.19.170.4 via 198.19.170.3 dev eth0 proto 177', route)
    assert not _middlebox.is_our_route('198.19.170.4 via 198.19.170.3 dev eth0 proto static', route)
    assert not _middlebox.is_our_route('198.19.170.4 via 198.19.170.9 dev eth0 proto 177', route)
    assert not _middlebox.is_our_route('198.19.170.4 dev eth0 proto 177 scope link', route)


# -- the real kernel: three namespaces on a bridge ---------------------------

PREFIX = 'tkit-ut-'
BRIDGE_NS = PREFIX + 'br'
HOSTS = {'c': '198.19.170.12', 'm': '198.19.170.13', 's': '198.19.170.14'}
PORT = 23456
TIMEOUT, LOOSE = _middlebox.TIMEOUT, _middlebox.LOOSE  # as imported: one test replaces the module's TIMEOUT
SBIN = ('/usr/sbin', '/sbin', '/usr/bin', '/bin')
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip', path=':'.join(SBIN))
                                or not shutil.which('iptables', path=':'.join(SBIN)),
                                reason='needs root, ip and iptables')


def sh(*argv, check=True):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True).stdout


def ns_path(name):
    return os.path.join(_netns.NETNS_DIR, PREFIX + name)


def nsx(name, *argv, check=True):
    return sh('ip', 'netns', 'exec', PREFIX + name, *argv, check=check)


def run(argv, check=True, ok_rc=(0,), data=None, what=None):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    if check and proc.returncode not in ok_rc:
        raise CommandError('%s failed (rc=%d): %s' % (' '.join(argv), proc.returncode, proc.stderr.strip()),
                           argv, proc.returncode, proc.stdout, proc.stderr)
    return proc.returncode, proc.stdout, proc.stderr


def which(name):
    return shutil.which(name, path=':'.join(SBIN))


def module(name, journal_dir, check_mode=False, **request):
    """The module's work (validate + execute) inside host name's namespace, as the netns connection runs it."""
    def work():
        return _middlebox.execute(validate(request), run, which, check_mode, journal_dir)
    return _netns.run_in(ns_path(name), work, timeout=30)


def host_state(name):
    """What must be as before: every IPv4 / netfilter sysctl we may touch, the routes, the rules."""
    keys = ['net/ipv4/ip_forward', TIMEOUT, LOOSE]
    for dev in ('all', 'default', 'eth0'):
        keys += ['net/ipv4/conf/%s/%s' % (dev, what) for what in ('forwarding', 'send_redirects', 'accept_redirects')]
    values = nsx(name, 'sh', '-c', 'for k in %s; do echo "$k=$(cat /proc/sys/$k)"; done' % ' '.join(keys))
    return values + nsx(name, 'ip', '-o', 'route', 'show') + nsx(name, 'iptables', '-w', '10', '-S')


@pytest.fixture
def lab(tmp_path):
    for name in ['br'] + sorted(HOSTS):
        sh('ip', 'netns', 'del', PREFIX + name, check=False)
    try:
        sh('ip', 'netns', 'add', BRIDGE_NS)
        sh('ip', '-n', BRIDGE_NS, 'link', 'add', 'tkitbr0', 'type', 'bridge')
        sh('ip', '-n', BRIDGE_NS, 'link', 'set', 'tkitbr0', 'up')
        for name, address in sorted(HOSTS.items()):
            sh('ip', 'netns', 'add', PREFIX + name)
            sh('ip', '-n', BRIDGE_NS, 'link', 'add', 'tkit-' + name, 'type', 'veth', 'peer', 'eth0', 'netns', PREFIX + name)
            sh('ip', '-n', BRIDGE_NS, 'link', 'set', 'tkit-' + name, 'master', 'tkitbr0', 'up')
            nsx(name, 'ip', 'addr', 'add', address + '/24', 'dev', 'eth0')
            nsx(name, 'ip', 'link', 'set', 'eth0', 'up')
            nsx(name, 'ip', 'link', 'set', 'lo', 'up')
        yield str(tmp_path / 'journal')
    finally:
        for name in ['br'] + sorted(HOSTS):
            sh('ip', 'netns', 'del', PREFIX + name, check=False)


def build(journal, tag, seconds=3, action='drop', check_mode=False):
    ends = [HOSTS['c'], HOSTS['s']]
    results = [module('m', journal, check_mode, state='present', role='middlebox', tag=tag, seconds=seconds,
                      action=action, ends=ends)]
    for name, peer in (('c', HOSTS['s']), ('s', HOSTS['c'])):
        results.append(module(name, journal, check_mode, state='present', role='end', tag=tag, peer=peer,
                              via=HOSTS['m']))
    return results


SERVER = r'''
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('0.0.0.0', int(sys.argv[1]))); srv.listen(5)
print('ready', flush=True)
while True:
    conn, peer = srv.accept()
    while True:
        data = conn.recv(100)
        if not data:
            break
        conn.sendall(data)
'''


def start_server():
    proc = subprocess.Popen(['ip', 'netns', 'exec', PREFIX + 's', 'python3', '-c', SERVER, str(PORT)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'ready'
    return proc


def idle_then_request(idle, keepalive=None, user_timeout_ms=3000):
    """From the client's namespace: connect, stay idle, send 'ping'; 'echo', or the errno name of the failure."""
    def work():
        sock = socket.socket()
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, keepalive)
        sock.setsockopt(socket.IPPROTO_TCP, 18, user_timeout_ms)  # TCP_USER_TIMEOUT: a dropped request fails soon
        sock.settimeout(idle + 10)
        sock.connect((HOSTS['s'], PORT))
        time.sleep(idle)
        try:
            sock.sendall(b'ping')
            return 'echo' if sock.recv(100) == b'ping' else 'closed'
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc))
        finally:
            sock.close()
    return _netns.run_in(ns_path('c'), work, timeout=idle + 20)


@needs_root
def test_routes_rules_and_sysctls_then_absent_restores_all_three(lab):
    before = {name: host_state(name) for name in HOSTS}
    checked = build(lab, 'tkit-t1', check_mode=True)
    assert all(result['changed'] for result in checked)
    assert 'would set' in checked[0]['msg'] and 'would insert 6 FORWARD rules' in checked[0]['msg']
    assert {name: host_state(name) for name in HOSTS} == before, 'check mode changed a host'
    assert not os.path.exists(lab)
    results = build(lab, 'tkit-t1', seconds=7)
    assert results[0]['sysctls']['net.netfilter.nf_conntrack_tcp_timeout_established'] == '7'
    assert nsx('m', 'cat', '/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established').strip() == '7'
    assert nsx('m', 'cat', '/proc/sys/net/netfilter/nf_conntrack_tcp_loose').strip() == '0'
    assert nsx('m', 'cat', '/proc/sys/net/ipv4/ip_forward').strip() == '1'
    assert 'via 198.19.170.13 dev eth0' in nsx('c', 'ip', '-o', 'route', 'get', HOSTS['s'])
    assert nsx('m', 'iptables', '-S', 'FORWARD').count('tcplab-keepalive:tkit-t1') == 6
    # again: nothing to do
    assert [result['changed'] for result in build(lab, 'tkit-t1', seconds=7)] == [False, False, False]
    journal = json.load(open(os.path.join(lab, 'journal.json')))
    assert len(journal) == 3
    # one middlebox, one run
    with pytest.raises(_netns.NetnsError) as info:
        module('m', lab, state='present', role='middlebox', tag='tkit-t2', seconds=5, ends=[HOSTS['c'], HOSTS['s']])
    assert str(info.value) == _middlebox.MSG_BUSY % ('tkit-t1', 7, 'drop')
    for name in ('m', 'c', 's'):
        role = 'middlebox' if name == 'm' else 'end'
        assert module(name, lab, state='absent', role=role, tag='tkit-t1')['changed']
        assert not module(name, lab, state='absent', role=role, tag='tkit-t1')['changed']
    assert {name: host_state(name) for name in HOSTS} == before
    assert not os.path.exists(os.path.join(lab, 'journal.json'))


@needs_root
def test_purge_after_a_lost_controller_restores_all_three(lab):
    before = {name: host_state(name) for name in HOSTS}
    build(lab, 'tkit-t3', action='reset')
    # someone's own route to the peer is not ours: refused, nothing changed
    nsx('c', 'ip', 'route', 'add', '198.19.170.99/32', 'via', HOSTS['m'])
    with pytest.raises(_netns.NetnsError) as info:
        module('c', lab, state='present', role='end', tag='tkit-t4', peer='198.19.170.99', via=HOSTS['m'])
    assert 'a host route to 198.19.170.99/32 that is not ours already exists' in str(info.value)
    nsx('c', 'ip', 'route', 'del', '198.19.170.99/32')
    checked = module('m', lab, True, state='purged')
    assert checked['changed'] and 'would undo run(s) tkit-t3' in checked['msg']
    assert nsx('m', 'iptables', '-S', 'FORWARD').count('tcplab-keepalive:tkit-t3') == 6
    for name in HOSTS:
        result = module(name, lab, state='purged')
        assert result['undone'] == ['tkit-t3']
    assert {name: host_state(name) for name in HOSTS} == before
    assert not module('m', lab, state='purged')['changed']


@needs_root
def test_no_conntrack_is_refused_before_anything_changes(lab, monkeypatch):
    before = host_state('m')
    monkeypatch.setattr(_middlebox, 'TIMEOUT', 'net/netfilter/no_such_file')
    with pytest.raises(_netns.NetnsError) as info:
        build(lab, 'tkit-t5')
    assert str(info.value) == _middlebox.MSG_NO_CONNTRACK % '/proc/sys/net/netfilter/no_such_file'
    assert host_state('m') == before
    assert not os.path.exists(os.path.join(lab, 'journal.json'))


@needs_root
@pytest.mark.parametrize('action, keepalive, outcome', [
    ('drop', 1, 'echo'),         # keepalive below the idle timeout keeps the flow in the table
    ('drop', None, 'ETIMEDOUT'),  # forgotten: the request is dropped, the connection is half-open
    ('reset', None, 'ECONNRESET'),  # forgotten: the middlebox answers with a RST
])
def test_an_idle_flow_is_forgotten_unless_keepalive_refreshes_it(lab, action, keepalive, outcome):
    build(lab, 'tkit-t6', seconds=3, action=action)
    server = start_server()
    try:
        assert idle_then_request(0) == 'echo'  # the path through the middlebox works
        assert idle_then_request(7, keepalive=keepalive) == outcome
    finally:
        server.kill()
        server.wait()
