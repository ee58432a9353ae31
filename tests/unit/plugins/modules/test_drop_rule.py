# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The drop_rule module run for real inside a network namespace of its own (tkdr-*): rules in both iptables
backends (nf_tables and legacy, IPv4 and IPv6) next to foreign rules, the dead-man timer processes, and the
errors of executables that are not iptables. Issue 10 items 11, 13 and 17."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.modules import drop_rule
from ansible_collections.tcplab.keepalive.plugins.module_utils import _iptables
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, starttime

MODULE = Path(drop_rule.__file__)
# the directory that holds ansible_collections/tcplab/keepalive (the unit tests' collection link)
COLLECTIONS = MODULE.parents[5]
PROGRAMS = ('iptables-nft', 'iptables-legacy', 'ip6tables-nft', 'ip6tables-legacy')
NEEDS = ('ip', 'nsenter') + PROGRAMS

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(tool) for tool in NEEDS),
                                reason='needs root, iproute2, nsenter and iptables with both backends')
COUNTER = itertools.count()


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture
def netns():
    """A fresh namespace tkdr-u<pid>-<n>; afterwards the timers armed in it are stopped and their records removed."""
    name = 'tkdr-u%d-%d' % (os.getpid(), next(COUNTER))
    sh('ip', 'netns', 'add', name)
    inode = os.stat('/run/netns/' + name).st_ino
    try:
        sh('ip', '-n', name, 'link', 'set', 'lo', 'up')
        yield name
    finally:
        for pid in sh('ip', 'netns', 'pids', name).split():
            if _iptables.TIMER_MARKER in cmdline(int(pid)):
                os.kill(int(pid), 9)
        for entry in os.listdir(_iptables.TIMER_DIR) if os.path.isdir(_iptables.TIMER_DIR) else []:
            if entry.startswith('%d-' % inode):
                os.unlink(os.path.join(_iptables.TIMER_DIR, entry))
        sh('ip', 'netns', 'del', name)


def run_module(ns, tmp_path, check=False, **args):
    """The module, run as Ansible runs it on a target, inside the namespace. Returns its result."""
    path = tmp_path / ('args-%d.json' % next(COUNTER))
    path.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': dict(args, _ansible_check_mode=check)}))
    proc = subprocess.run(['nsenter', '--net=/run/netns/' + ns, sys.executable, str(MODULE), str(path)],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, PYTHONPATH=str(COLLECTIONS), LANG='C', LC_ALL='C'), cwd='/')
    result = json.loads(proc.stdout[proc.stdout.index('{'):])
    assert result.get('failed') or proc.returncode == 0, proc.stdout + proc.stderr
    return result


def rules(ns, program):
    return sh('nsenter', '--net=/run/netns/' + ns, program, '-w', '10', '-S')


def all_rules(ns):
    return {program: rules(ns, program) for program in PROGRAMS}


def foreign_rules(ns):
    """A foreign rule in each backend and family, one with our prefix inside its comment, not at its start."""
    for program in PROGRAMS:
        sh('nsenter', '--net=/run/netns/' + ns, program, '-w', '10', '-A', 'INPUT', '-p', 'tcp', '--dport', '9999',
           '-m', 'comment', '--comment', 'foreign', '-j', 'ACCEPT')
        sh('nsenter', '--net=/run/netns/' + ns, program, '-w', '10', '-A', 'OUTPUT', '-p', 'tcp', '--sport', '9998',
           '-m', 'comment', '--comment', 'not ours: tcplab-keepalive:tkdr', '-j', 'DROP')


def gone(pid):
    """True once the process has ended (a zombie counts: it runs no more)."""
    return starttime(pid) is None


@pytest.mark.once
def test_purge_covers_both_backends_and_their_timers(netns, tmp_path):
    foreign_rules(netns)
    before = all_rules(netns)
    added = [
        run_module(netns, tmp_path, port=50001, tag='tkdr-a', executable='iptables-legacy', expire_after=300),
        run_module(netns, tmp_path, port=50002, tag='tkdr-b', destination='::1', ip_version='6',
                   executable='iptables-legacy', expire_after=300),
        run_module(netns, tmp_path, port=50003, tag='tkdr-c', expire_after=300),
        run_module(netns, tmp_path, port='50004', tag='tkdr-d', ip_version='6', executable='iptables-nft'),
    ]
    assert [result['backend'] for result in added] == ['legacy', 'legacy', 'nf_tables', 'nf_tables']
    timers = [result['expiry']['pid'] for result in added if result['expiry']]
    assert len(timers) == 3 and not any(gone(pid) for pid in timers)
    with_ours = all_rules(netns)
    assert all('tcplab-keepalive:tkdr-' in with_ours[program] for program in PROGRAMS)

    check = run_module(netns, tmp_path, check=True, state='purged', ip_version='both')
    assert check['changed'] and len(check['removed']) == 4 and check['timers_cancelled'] == 3
    assert check['msg'] == 'would remove 4 tagged rule(s) and cancel 3 timer(s) (looked in nf_tables, legacy)'
    assert all_rules(netns) == with_ours and not any(gone(pid) for pid in timers)

    purged = run_module(netns, tmp_path, state='purged', ip_version='both')
    assert purged['changed'] and purged['timers_cancelled'] == 3
    assert sorted((item['ip_version'], item['backend']) for item in purged['removed']) == [
        ('4', 'legacy'), ('4', 'nf_tables'), ('6', 'legacy'), ('6', 'nf_tables')]
    assert all_rules(netns) == before            # ours gone, every foreign rule still there
    assert all(gone(pid) for pid in timers)

    again = run_module(netns, tmp_path, state='purged', ip_version='both')
    assert not again['changed'] and again['removed'] == [] and again['timers_cancelled'] == 0


def test_purge_of_one_tag_in_both_backends(netns, tmp_path):
    before = all_rules(netns)
    run_module(netns, tmp_path, port=50001, tag='tkdr-a', executable='iptables-legacy')
    run_module(netns, tmp_path, port=50001, tag='tkdr-a')
    kept = run_module(netns, tmp_path, port=50002, tag='tkdr-b', executable='iptables-legacy', expire_after=300)
    purged = run_module(netns, tmp_path, state='purged', tag='tkdr-a')
    assert sorted(item['backend'] for item in purged['removed']) == ['legacy', 'nf_tables']
    assert 'tkdr-b' in rules(netns, 'iptables-legacy') and not gone(kept['expiry']['pid'])
    # with executable, purge still looks in the other backend too
    last = run_module(netns, tmp_path, state='purged', tag='tkdr-b', executable='iptables-legacy')
    assert last['backends'] == ['legacy', 'nf_tables'] and len(last['removed']) == 1 and gone(kept['expiry']['pid'])
    assert all_rules(netns) == before


def test_absent_without_executable_finds_the_legacy_rule(netns, tmp_path):
    foreign_rules(netns)
    before = all_rules(netns)
    added = run_module(netns, tmp_path, port=50001, tag='tkdr-a', executable='iptables-legacy', expire_after=300)
    check = run_module(netns, tmp_path, check=True, port=50001, tag='tkdr-a', state='absent')
    assert check['changed'] and check['msg'] == 'would remove (legacy), would cancel its timer'
    assert 'tkdr-a' in rules(netns, 'iptables-legacy') and not gone(added['expiry']['pid'])
    removed = run_module(netns, tmp_path, port=50001, tag='tkdr-a', state='absent')
    assert removed['changed'] and removed['msg'] == 'removed (legacy), cancelled its timer'
    assert all_rules(netns) == before and gone(added['expiry']['pid'])
    again = run_module(netns, tmp_path, port=50001, tag='tkdr-a', state='absent')
    assert not again['changed'] and again['msg'] == 'already absent (looked in nf_tables, legacy)'


def test_no_legacy_table_is_created_where_there_was_none(netns, tmp_path):
    names = ['nsenter', '--net=/run/netns/' + netns, 'cat', '/proc/net/ip_tables_names', '/proc/net/ip6_tables_names']
    assert 'filter' not in subprocess.run(names, capture_output=True, text=True, check=False).stdout
    purged = run_module(netns, tmp_path, state='purged', ip_version='both')
    absent = run_module(netns, tmp_path, port=50001, tag='tkdr-a', state='absent')
    assert purged['backends'] == absent['backends'] == ['nf_tables']
    assert 'filter' not in subprocess.run(names, capture_output=True, text=True, check=False).stdout


@pytest.mark.once
def test_expire_after_rearms_the_timer(netns, tmp_path):
    rule = {'port': 50001, 'tag': 'tkdr-a', 'destination': '198.19.50.1'}
    first = run_module(netns, tmp_path, expire_after=300, **rule)
    old = first['expiry']['pid']
    asked = time.time()
    longer = run_module(netns, tmp_path, expire_after=600, **rule)
    new = longer['expiry']['pid']
    assert longer['changed'] and new != old and longer['expiry']['expire_after'] == 600
    assert abs(longer['expiry']['expires_at'] - (asked + 600)) < 10
    assert longer['msg'].startswith('already present, re-armed the timer: removes the rule at ')
    # the old timer has gone by the time the module returns, the new one runs and its record says so
    assert gone(old) and not gone(new)
    assert json.loads(Path(longer['expiry']['handle']).read_text())['pid'] == new

    same = run_module(netns, tmp_path, expire_after=600, **rule)
    assert not same['changed'] and same['expiry']['pid'] == new and same['expiry']['expires_at'] == longer['expiry']['expires_at']

    check = run_module(netns, tmp_path, check=True, expire_after=60, **rule)
    assert check['changed'] and check['msg'].startswith('already present, would re-arm the timer: 60 s from now instead of ')
    assert not gone(new) and check['expiry']['pid'] == new

    shorter = run_module(netns, tmp_path, expire_after='60', **rule)
    assert shorter['changed'] and shorter['expiry']['expire_after'] == 60 and gone(new)
    newest = shorter['expiry']['pid']

    kept = run_module(netns, tmp_path, **rule)
    assert not kept['changed'] and kept['expiry']['pid'] == newest and not gone(newest)
    assert kept['msg'].startswith('already present, the timer armed earlier stays: ')

    check_absent = run_module(netns, tmp_path, check=True, state='absent', **rule)
    assert check_absent['msg'] == 'would remove (nf_tables), would cancel its timer' and not gone(newest)
    absent = run_module(netns, tmp_path, state='absent', **rule)
    assert absent['msg'] == 'removed (nf_tables), cancelled its timer' and gone(newest)
    assert 'tkdr' not in rules(netns, 'iptables')


def test_check_mode_says_would_insert(netns, tmp_path):
    check = run_module(netns, tmp_path, check=True, port=50001, tag='tkdr-a', expire_after=30)
    assert check['changed'] and check['msg'] == 'would insert, would arm the timer: 30 s from now'
    assert 'tkdr' not in rules(netns, 'iptables') and check['expiry'] is None


def test_executables_that_are_not_iptables(netns, tmp_path):
    before = all_rules(netns)
    plain = tmp_path / 'plain'
    plain.write_text('#!/bin/sh\n')
    hint = 'give the path of iptables, iptables-legacy or iptables-nft'
    for executable, message in (
            ('/bin/false', 'executable /bin/false did not behave like iptables: "/bin/false -V" exited with rc=1 and '
                           'printed \'\', where iptables prints "iptables v1.8.9 (nf_tables)" or similar: ' + hint),
            ('/usr', 'executable /usr is a directory, not a program: ' + hint),
            (str(plain), 'executable %s is not an executable program (no execute permission): %s' % (plain, hint))):
        for state in ('present', 'absent'):
            result = run_module(netns, tmp_path, port=50001, tag='tkdr-a', state=state, executable=executable)
            assert result['failed'] and result['msg'] == message
    v6 = run_module(netns, tmp_path, port=50001, tag='tkdr-a', ip_version='6', executable='/bin/false')
    assert v6['msg'].startswith('executable /bin/false did not behave like ip6tables: ')
    assert v6['msg'].endswith('give the path of ip6tables, ip6tables-legacy or ip6tables-nft')
    assert all_rules(netns) == before


# a connection in the namespace: the server's end on 5091, the client's on 22391; data both ways, then idle
CONNECTION = '''
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 5091))
srv.listen(1)
cli = socket.socket()
cli.bind(("127.0.0.1", 22391))
cli.connect(("127.0.0.1", 5091))
conn = srv.accept()[0]
cli.sendall(b"request")
conn.recv(7)
conn.sendall(b"answer")
cli.recv(6)
print("idle", flush=True)
time.sleep(float(sys.argv[1]))
'''


def connection(ns, seconds):
    proc = subprocess.Popen(['ip', 'netns', 'exec', ns, sys.executable, '-c', CONNECTION, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'idle'
    return proc


def test_when_idle_inserts_the_rule_once_the_connection_has_been_idle(netns, tmp_path):
    proc = connection(netns, 60)
    try:
        started = time.time()
        result = run_module(netns, tmp_path, port=5091, destination='127.0.0.1', tag='idle',
                            when_idle={'peer_port': 22391, 'seconds': 1.5})
        assert result['changed'] and not result.get('failed'), result
        idle = result['when_idle']
        # the wait ended once the connection had been idle for 1.5 s (read from tcp_info; a loaded machine may look
        # a little late)
        assert 1.5 <= idle['idle_s'] < 4 and started < idle['inserted_at'] < started + 15, idle
        assert 'tcplab-keepalive:idle' in rules(netns, 'iptables-nft')
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.once
def test_when_idle_inserts_nothing_when_the_connection_ends_meanwhile(netns, tmp_path):
    # closes both ends after 8 s of idle time: the module's first look (a second after its start here, several under
    # a loaded suite) sees it up, and it ends during the wait for 30 s of idle time
    proc = connection(netns, 8)
    try:
        result = run_module(netns, tmp_path, port=5091, destination='127.0.0.1', tag='idle',
                            when_idle={'peer_port': 22391, 'seconds': 30})
        assert result.get('failed') and 'ended before the DROP' in result['msg'], result
        assert 'tcplab-keepalive:idle' not in rules(netns, 'iptables-nft')
    finally:
        proc.wait()
    # no such connection at all: it says so after the timeout, and inserts nothing either
    result = run_module(netns, tmp_path, port=5091, destination='127.0.0.1', tag='idle',
                        when_idle={'peer_port': 22391, 'seconds': 1, 'timeout': 1})
    assert result.get('failed') and result['msg'].startswith('no ESTABLISHED connection of port 5091'), result
    assert 'tcplab-keepalive:idle' not in rules(netns, 'iptables-nft')
    # a connection the caller saw up (established) and that is gone at the first look has ended: at once, not
    # after the timeout
    started = time.monotonic()
    result = run_module(netns, tmp_path, port=5091, destination='127.0.0.1', tag='idle',
                        when_idle={'peer_port': 22391, 'seconds': 1, 'timeout': 30, 'established': True})
    assert result.get('failed') and 'ended before the DROP' in result['msg'], result
    assert time.monotonic() - started < 20 and 'tcplab-keepalive:idle' not in rules(netns, 'iptables-nft')


@pytest.mark.once
def test_when_idle_inserts_nothing_once_whoever_ran_it_is_gone(netns, tmp_path):
    """A killed controller: the module waiting for the idle moment notices that its parent has gone and exits
    without inserting (a rollback may already have looked for the rule)."""
    proc = connection(netns, 120)
    out = tmp_path / 'out.json'
    args = tmp_path / 'args.json'
    args.write_text(json.dumps({'ANSIBLE_MODULE_ARGS': {
        'port': 5091, 'destination': '127.0.0.1', 'tag': 'orphan', 'when_idle': {'peer_port': 22391, 'seconds': 60}}}))
    try:
        parent = subprocess.Popen(
            ['bash', '-c', '"$@" > "$OUT" 2>&1 & echo $!; wait', 'parent', 'nsenter', '--net=/run/netns/' + netns,
             sys.executable, str(MODULE), str(args)],
            stdout=subprocess.PIPE, text=True, cwd='/',
            env=dict(os.environ, OUT=str(out), PYTHONPATH=str(COLLECTIONS), LANG='C', LC_ALL='C'))
        child = int(parent.stdout.readline())
        time.sleep(4)   # the module has started and waits for 60 s of idle time
        assert not gone(child)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gone(child), 'the orphaned module still waits'
        text = out.read_text()
        result = json.loads(text[text.index('{'):])
        assert result.get('failed') and 'ended while it waited for the moment of the DROP' in result['msg'], result
        assert 'tcplab-keepalive:orphan' not in rules(netns, 'iptables-nft')
    finally:
        proc.kill()
        proc.wait()
