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

from ansible_collections.tcplab.keepalive.plugins.module_utils import _iptables, _middlebox, _netns, _proc
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


def in_ns(netns, journal_dir, check_mode=False, **request):
    """The module's work (validate + execute) inside namespace netns, as the netns connection runs it."""
    def work():
        return _middlebox.execute(validate(request), run, which, check_mode, journal_dir)
    return _netns.run_in(os.path.join(_netns.NETNS_DIR, netns), work, timeout=30)


def module(name, journal_dir, check_mode=False, **request):
    """in_ns of lab host name."""
    return in_ns(PREFIX + name, journal_dir, check_mode, **request)


def ns_state(netns, dev='eth0'):
    """What must be as before: every IPv4 / netfilter sysctl we may touch, the routes, the rules."""
    keys = ['net/ipv4/ip_forward', TIMEOUT, LOOSE]
    for name in ('all', 'default', dev):
        keys += ['net/ipv4/conf/%s/%s' % (name, what) for what in ('forwarding', 'send_redirects', 'accept_redirects')]
    values = sh('ip', 'netns', 'exec', netns, 'sh', '-c',
                'for k in %s; do echo "$k=$(cat /proc/sys/$k)"; done' % ' '.join(keys))
    return (values + sh('ip', '-n', netns, '-o', 'route', 'show')
            + sh('ip', 'netns', 'exec', netns, 'iptables', '-w', '10', '-S'))


def host_state(name):
    """ns_state of lab host name."""
    return ns_state(PREFIX + name)


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


# -- ours only: the journal's namespace is its inode and its cookie -----------
# Namespaces of the shared netns_factory fixture (tests/unit/conftest.py), each with a veth pair of its own (lan0,
# on the lab network, and its peer lan0p). A namespace that got the inode of a gone one is made by editing the journal entry's cookie to the
# cookie of a namespace made and deleted here (an input the module reads, as after `ip netns del` and a new
# namespace that got the inode).

NETNS_PREFIX = 'tkmbx-'
LAN = {'c': '198.19.73.2', 'm': '198.19.73.3', 's': '198.19.73.4'}
needs_cookies = pytest.mark.skipif(_proc.netns_identity()[1] is None,
                                   reason='the kernel has no SO_NETNS_COOKIE (Linux < 5.14): the inode alone')


def lan_host(netns_factory, role):
    """A namespace with lan0 at the address of role (c, m or s) on the lab network (the other end of its veth,
    lan0p, in the same namespace)."""
    name = netns_factory()
    sh('ip', '-n', name, 'link', 'add', 'lan0', 'type', 'veth', 'peer', 'name', 'lan0p')
    sh('ip', '-n', name, 'addr', 'add', LAN[role] + '/24', 'dev', 'lan0')
    for dev in ('lan0p', 'lan0'):
        sh('ip', '-n', name, 'link', 'set', dev, 'up')
    return name


def mb_request(tag, seconds=7, **more):
    return dict({'state': 'present', 'role': 'middlebox', 'tag': tag, 'seconds': seconds,
                 'ends': [LAN['c'], LAN['s']]}, **more)


def end_request(tag):
    return {'state': 'present', 'role': 'end', 'tag': tag, 'peer': LAN['s'], 'via': LAN['m']}


def identity(name):
    return _proc.netns_identity(os.path.join(_netns.NETNS_DIR, name))


def journal_file(journal_dir):
    return os.path.join(journal_dir, 'journal.json')


def journalled(journal_dir):
    path = journal_file(journal_dir)
    return json.load(open(path)) if os.path.exists(path) else {}


def gone_cookie(netns_factory):
    """The cookie of a namespace that existed and is gone (deleted here)."""
    name = netns_factory()
    cookie = identity(name)[1]
    sh('ip', 'netns', 'del', name)
    return cookie


def recycled(netns_factory, tmp_path, role, request, **edits):
    """(journal, name, inode, cookie, old): request run in a new namespace of role (c or m), then its journal entry
    edited to be a gone namespace's (cookie old) whose inode this one got (and edits)."""
    journal = str(tmp_path / 'journal')
    name = lan_host(netns_factory, role)
    inode, cookie = identity(name)
    in_ns(name, journal, **request)
    old = gone_cookie(netns_factory)
    edit_entry(journal, name, netns_cookie=old, **edits)
    return journal, name, inode, cookie, old


def edit_entry(journal_dir, name, drop=(), **changes):
    """Change the journal entry of namespace name: set changes, remove the keys in drop."""
    data = journalled(journal_dir)
    entry = data[str(identity(name)[0])]
    entry.update(changes)
    for key in drop:
        del entry[key]
    with open(journal_file(journal_dir), 'w') as handle:
        json.dump(data, handle)
    return entry


@needs_root
def test_the_journal_records_the_cookie_with_the_inode(netns_factory, tmp_path):
    journal = str(tmp_path / 'journal')
    name = lan_host(netns_factory, 'm')
    inode, cookie = identity(name)
    result = in_ns(name, journal, **mb_request('tkh3-a'))
    assert (result['netns_inode'], result['netns_cookie']) == (inode, cookie)
    entry = journalled(journal)[str(inode)]
    assert (entry['netns_inode'], entry['netns_cookie']) == (inode, cookie)
    assert 'stale' not in result
    assert in_ns(name, journal, state='absent', role='middlebox', tag='tkh3-a')['changed']


@needs_root
@needs_cookies
def test_a_gone_namespaces_entry_is_never_undone_in_the_middlebox_that_got_its_inode(netns_factory, tmp_path):
    journal, name, inode, cookie, old = recycled(netns_factory, tmp_path, 'm', mb_request('tkh3-a'))
    during = ns_state(name, 'lan0')
    text = open(journal_file(journal)).read()
    checked = in_ns(name, journal, True, state='absent', role='middlebox', tag='tkh3-a')
    assert checked['stale'] and checked['changed']
    assert checked['msg'] == _middlebox.MSG_STALE_UNDO % (inode, 'tkh3-a', old, cookie, 'would drop')
    assert open(journal_file(journal)).read() == text, 'check mode changed the journal'
    result = in_ns(name, journal, state='absent', role='middlebox', tag='tkh3-a')
    assert result['stale'] and result['changed'] and 'undone' not in result
    assert result['msg'] == _middlebox.MSG_STALE_UNDO % (inode, 'tkh3-a', old, cookie, 'dropped')
    assert (result['sysctls'], result['routes'], result['rules']) == ({}, [], [])
    assert ns_state(name, 'lan0') == during, 'a gone namespace\'s originals were written to, or its rules removed from, this one'
    assert not os.path.exists(journal_file(journal))
    assert not in_ns(name, journal, state='absent', role='middlebox', tag='tkh3-a')['changed']


@needs_root
@needs_cookies
def test_present_replaces_a_gone_namespaces_entry_and_is_not_busy_with_its_run(netns_factory, tmp_path):
    # the gone namespace's originals were never this one's
    journal, name, inode, cookie, old = recycled(netns_factory, tmp_path, 'm', mb_request('tkh3-a', seconds=7),
                                                 sysctls=[[TIMEOUT, '12345']])
    during = ns_state(name, 'lan0')
    checked = in_ns(name, journal, True, **mb_request('tkh3-b', seconds=5))
    assert checked['stale'] and checked['msg'].startswith(
        _middlebox.MSG_STALE_PRESENT % ('would drop', inode, old, cookie) + '; would set ')
    assert journalled(journal)[str(inode)]['netns_cookie'] == old, 'check mode changed the journal'
    # the gone namespace's run tkh3-a does not make this middlebox busy
    result = in_ns(name, journal, **mb_request('tkh3-b', seconds=5))
    assert result['stale'] and result['msg'].startswith(_middlebox.MSG_STALE_PRESENT % ('dropped', inode, old, cookie))
    entry = journalled(journal)[str(inode)]
    assert entry['netns_cookie'] == cookie and sorted(entry['tags']) == ['tkh3-b']
    assert dict(entry['sysctls'])[TIMEOUT] == '7', 'the originals must be this namespace\'s'
    assert 'stale' not in in_ns(name, journal, **mb_request('tkh3-b', seconds=5))
    result = in_ns(name, journal, state='absent', role='middlebox', tag='tkh3-b')
    assert result['sysctls'] == {'net.netfilter.nf_conntrack_tcp_timeout_established': '7'}
    assert ns_state(name, 'lan0') == during
    assert not os.path.exists(journal_file(journal))


@needs_root
@needs_cookies
def test_a_gone_namespaces_route_is_never_removed_from_the_end_that_got_its_inode(netns_factory, tmp_path):
    journal, name, inode, cookie, old = recycled(netns_factory, tmp_path, 'c', end_request('tkh3-e'))
    route = sh('ip', '-n', name, '-o', 'route', 'show', 'exact', LAN['s'] + '/32')
    assert 'via %s dev lan0 proto 177' % LAN['m'] in route
    during = ns_state(name, 'lan0')
    checked = in_ns(name, journal, True, state='purged')
    assert checked['stale'] and checked['msg'] == _middlebox.MSG_STALE_UNDO % (inode, 'tkh3-e', old, cookie, 'would drop')
    assert journalled(journal)[str(inode)]['netns_cookie'] == old
    result = in_ns(name, journal, state='purged')
    assert result['stale'] and result['msg'] == _middlebox.MSG_STALE_UNDO % (inode, 'tkh3-e', old, cookie, 'dropped')
    assert result['routes'] == [] and ns_state(name, 'lan0') == during
    assert not os.path.exists(journal_file(journal))


@needs_root
@pytest.mark.parametrize('recorded', ['absent', 'null'])
def test_an_entry_without_a_cookie_is_judged_by_its_inode(netns_factory, tmp_path, recorded):
    """Entries written before cookies (no netns_cookie) or on a kernel without them (null) still undo; a
    present that finds one records the cookie from then on."""
    journal = str(tmp_path / 'journal')
    box, end = lan_host(netns_factory, 'm'), lan_host(netns_factory, 'c')
    before = {name: ns_state(name, 'lan0') for name in (box, end)}
    in_ns(box, journal, **mb_request('tkh3-o'))
    in_ns(end, journal, **end_request('tkh3-o'))
    for name in (box, end):
        if recorded == 'absent':
            edit_entry(journal, name, drop=['netns_cookie'])
        else:
            edit_entry(journal, name, netns_cookie=None)
    again = in_ns(box, journal, **mb_request('tkh3-o'))
    assert not again['changed'] and 'stale' not in again
    assert journalled(journal)[str(identity(box)[0])]['netns_cookie'] == identity(box)[1]
    result = in_ns(end, journal, state='absent', role='end', tag='tkh3-o')
    assert 'stale' not in result and result['undone'] == ['tkh3-o'] and result['routes']
    result = in_ns(box, journal, state='purged')
    assert 'stale' not in result and result['undone'] == ['tkh3-o'] and len(result['rules']) == 6
    assert {name: ns_state(name, 'lan0') for name in (box, end)} == before
    assert not os.path.exists(journal_file(journal))
