# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The capture module run for real, in-process (its main() with module args), as a task would run it.

Regression tests of issue 10: state=absent removes only a pcap its state record proves ours (never a file
that merely sits at the path, a symlink, or a file put in the pcap's place), state=purged stops the captures
of one network namespace only, a FIFO as path is refused instead of hanging, nonsense numbers and a path
under a regular file are refused with a message that names the fix (and leave nothing behind), a sniffer
that died is reported with its signal or exit code. The real captures run in network namespaces tkca-<random>
made for the test; files live under the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.modules import capture as capture_module
from ansible_collections.tcplab.keepalive.tests.unit.plugins.modules.module_args import module_result
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.capture_traffic import alive, wait_dead

NETNS_PREFIX = 'tkca-'   # the namespaces of the shared netns fixture (tests/unit/conftest.py)

UNIT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import scapy  # noqa: F401  pylint: disable=unused-import
    HAVE_SCAPY = True
except ImportError:
    HAVE_SCAPY = False
real = pytest.mark.skipif(os.geteuid() != 0 or not HAVE_SCAPY or not all(shutil.which(t) for t in ('ip', 'nsenter')),
                          reason='needs root, iproute2, nsenter and scapy')


class Timeout(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds):
    """Fail (instead of hanging the suite) when the block takes longer than seconds."""
    def expired(*_):
        raise Timeout('still running after %d s: the module hangs' % seconds)
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(args, check_mode=False, seconds=60):
    """The module's result dict for args (failed: True when it failed)."""
    with deadline(seconds):
        return module_result(capture_module.main, dict({'_ansible_check_mode': check_mode}, **args))


@pytest.fixture
def netns(netns_factory):
    """make() -> a new namespace of this test (the shared netns_factory of tests/unit/conftest.py)."""
    return netns_factory


# -- item 1: absent removes only a pcap this module wrote ------------------------

def test_absent_refuses_a_file_that_is_not_a_capture(tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text('keep me\n')
    result = run({'state': 'absent', 'path': str(notes)})
    assert result.get('failed') is True
    assert result['msg'].startswith('%s was not removed: it is not a pcap this module wrote (no state record for it in '
                                    % notes)
    assert result['msg'].endswith('remove it yourself if it should go')
    assert notes.read_text() == 'keep me\n'


def test_absent_refuses_a_symlink_and_never_follows_it(tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text('keep me\n')
    link = tmp_path / 'link.pcap'
    link.symlink_to(notes)
    for state in ('absent', 'stopped'):
        result = run({'state': state, 'path': str(link)})
        assert result.get('failed') is True
        assert result['msg'] == ('%s is a symbolic link, not a regular file: give the path of a pcap (a capture only ever '
                                 'writes regular files); nothing was opened or changed' % link)
    assert os.path.islink(link) and notes.read_text() == 'keep me\n'


@real
def test_absent_removes_our_pcap_but_not_one_put_in_its_place(tmp_path, netns):
    state_dir = str(tmp_path / 'state')
    ns = netns()
    pcap = str(tmp_path / 'caps' / 'run.pcap')
    started = run({'netns': ns, 'path': pcap, 'filter': 'tcp port 4700', 'state_dir': state_dir})
    assert started['changed'] is True and started['running'] is True, started
    assert started['handle']['state_dir'] == state_dir
    stopped = run({'state': 'stopped', 'handle': started['handle']})
    assert stopped['changed'] is True and stopped['stop_reason'] == 'stopped'
    # someone replaces the pcap with a file of their own: absent must leave it alone
    os.unlink(pcap)
    with open(pcap, 'w') as handle:
        handle.write('my own notes\n')
    refused = run({'state': 'absent', 'path': pcap, 'state_dir': state_dir})
    assert refused.get('failed') is True
    # the new file may even reuse the inode: then its size and change time tell it from the pcap the capture left
    assert refused['msg'].startswith('%s was not removed: it is not a pcap this module wrote (it is not the file ' % pcap)
    assert re.search(r'\(replaced (or modified )?since\)\); remove it yourself if it should go$', refused['msg'])
    with open(pcap) as handle:
        assert handle.read() == 'my own notes\n'
    assert os.path.exists(started['handle']['state_path'])  # the record stays with the refusal
    # a real capture's pcap goes, with its record and log
    os.unlink(pcap)
    again = run({'netns': ns, 'path': pcap, 'filter': 'tcp port 4700', 'state_dir': state_dir})
    assert again['changed'] is True, again
    gone = run({'state': 'absent', 'handle': again['handle']})
    assert gone['changed'] is True and gone['was_running'] is True
    assert sorted(gone['removed']) == sorted([pcap, again['handle']['state_path'], again['handle']['log_path']])
    assert not os.path.lexists(pcap) and os.listdir(state_dir) == []
    wait_dead(again['pid'])


# -- item 9: a FIFO (or anything that is not a regular file) is refused, at once ----

# (no state_dir: the refusal comes before any state record is looked at)
@pytest.mark.parametrize('state', ['stopped', 'absent', 'status'])
def test_a_fifo_is_refused_without_hanging(tmp_path, state):
    fifo = tmp_path / 'x.pcap'
    os.mkfifo(fifo)
    result = run({'state': state, 'path': str(fifo)}, seconds=10)
    assert result.get('failed') is True
    assert result['msg'] == ('%s is a FIFO, not a regular file: give the path of a pcap (a capture only ever writes '
                             'regular files); nothing was opened or changed' % fifo)
    assert os.path.exists(fifo) and os.listdir(tmp_path) == ['x.pcap']


@pytest.mark.parametrize('kind', ['directory', 'device'])
def test_a_directory_or_device_is_refused(tmp_path, kind):
    path = str(tmp_path / 'd') if kind == 'directory' else '/dev/null'
    if kind == 'directory':
        os.mkdir(path)
    for state in ('stopped', 'absent', 'started'):
        result = run({'state': state, 'path': path}, check_mode=state == 'started', seconds=10)
        assert result.get('failed') is True, (state, result)
        assert result['msg'].startswith('%s is a %s, not a regular file' % (
            path, 'directory' if kind == 'directory' else 'character device')), result['msg']
    assert os.path.exists(path)


# -- item 16: numbers without sense are refused with the valid range -------------

@pytest.mark.parametrize('option, value, message', [
    ('max_bytes', 10, 'max_bytes must be an integer 1024..1125899906842624 (bytes of pcap, its 24-byte header and '
                      '16 bytes per packet included), got 10'),
    ('max_bytes', 0, 'max_bytes must be an integer 1024..1125899906842624 (bytes of pcap, its 24-byte header and '
                     '16 bytes per packet included), got 0'),
    ('max_seconds', 0, 'max_seconds must be an integer 1..1000000000 (seconds), got 0'),
    ('max_seconds', -5, 'max_seconds must be an integer 1..1000000000 (seconds), got -5'),
    ('max_packets', -1, 'max_packets must be an integer 1..1099511627776 (packets), got -1'),
    ('snaplen', 0, 'snaplen must be an integer 64..262144 (bytes kept of each packet), got 0'),
])
@pytest.mark.parametrize('check_mode', [True, False])
def test_nonsense_numbers_are_refused_before_anything_happens(tmp_path, option, value, message, check_mode):
    pcap = tmp_path / 'caps' / 'x.pcap'
    result = run({'path': str(pcap), option: value}, check_mode=check_mode)
    try:
        assert result.get('failed') is True and result['msg'] == message
        assert os.listdir(tmp_path) == []
    finally:
        if result.get('pid'):  # a capture that should not have started
            run({'state': 'stopped', 'path': str(pcap)})


def test_a_bad_expect_is_refused_before_the_capture_is_stopped(tmp_path):
    result = run({'state': 'stopped', 'path': str(tmp_path / 'x.pcap'), 'expect': {'time': -1}})
    assert result.get('failed') is True and result['msg'].startswith('expect.time must be ')  # pcap_info's own text


# -- item 17: a directory that is a file: a message that names the fix -------------

def test_path_under_a_regular_file_is_refused_and_leaves_nothing(tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text('keep me\n')
    pcap = notes / 'sub' / 'x.pcap'
    result = run({'path': str(pcap)})
    assert result.get('failed') is True
    assert result['msg'] == ('path %s cannot be used: %s is a regular file, not a directory: give a path whose '
                             'directory is a directory (or move that file away)' % (pcap, notes))
    assert sorted(os.listdir(tmp_path)) == ['notes.txt'] and notes.read_text() == 'keep me\n'


@pytest.mark.parametrize('under', [False, True])
def test_state_dir_that_is_a_file_is_refused_and_leaves_nothing(tmp_path, under):
    notes = tmp_path / 'notes.txt'
    notes.write_text('keep me\n')
    state_dir = notes / 'state' if under else notes
    result = run({'path': str(tmp_path / 'caps' / 'x.pcap'), 'state_dir': str(state_dir)})
    assert result.get('failed') is True
    assert result['msg'] == ('state_dir %s cannot be used: %s is a regular file, not a directory: give another '
                             'state_dir (or move that file away)' % (state_dir, notes))
    assert sorted(os.listdir(tmp_path)) == ['notes.txt']


# -- item 5: purged stops the captures of this network namespace only -------------

RUNNER = textwrap.dedent('''
    import json, os, sys
    sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "plugins", "modules")]
    import conftest  # installs the collection loader
    import test_capture
    print(json.dumps(test_capture.run(json.loads(sys.argv[2]))))
''')


def run_in(ns, args):
    """The module run inside network namespace ns (as over the netns connection)."""
    proc = subprocess.run(['ip', 'netns', 'exec', ns, sys.executable, '-c', RUNNER, UNIT_DIR, json.dumps(args)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


@real
@pytest.mark.once
def test_purged_stops_only_the_captures_of_its_own_namespace(tmp_path, netns):
    state_dir = str(tmp_path / 'state')
    ns_a, ns_b = netns(), netns()
    # the same file name in both: the old rollback matched on it; ownership is the namespace in the record
    a = run({'netns': ns_a, 'path': str(tmp_path / 'a' / 'exp-h1.pcap'), 'state_dir': state_dir})
    b = run({'netns': ns_b, 'path': str(tmp_path / 'b' / 'exp-h1.pcap'), 'state_dir': state_dir})
    assert a['running'] and b['running']
    would = run_in(ns_a, {'state': 'purged', 'state_dir': state_dir, '_ansible_check_mode': True})
    assert would['changed'] is True and [s['pid'] for s in would['stopped']] == [a['pid']]
    assert would['stopped'][0]['signal'] is None and alive(a['pid'])
    purged = run_in(ns_a, {'state': 'purged', 'state_dir': state_dir})
    assert purged['changed'] is True, purged
    assert purged['stopped'] == [{'path': a['path'], 'pid': a['pid'], 'iface': 'lo', 'filter': None, 'netns': ns_a,
                                  'backend': 'scapy', 'signal': 'SIGTERM'}]
    assert purged['others_running'] == 1
    assert purged['netns_inode'] == os.stat('/run/netns/%s' % ns_a).st_ino
    assert purged['msg'] == ('stopped 1 capture(s) of this network namespace: %s (pid %d); left 1 capture(s) of other '
                             'network namespaces alone' % (a['path'], a['pid']))
    wait_dead(a['pid'])
    assert alive(b['pid'])                                        # the other namespace's capture runs on
    assert os.path.exists(a['path']) and os.path.exists(b['path'])  # pcaps are kept
    again = run_in(ns_a, {'state': 'purged', 'state_dir': state_dir})
    assert again['changed'] is False and again['stopped'] == []
    assert again['msg'] == 'no capture of this module runs in this network namespace; left 1 capture(s) of other ' \
                           'network namespaces alone'
    # from the root namespace: none of them is its own; by name, the other namespace's
    assert run({'state': 'purged', 'state_dir': state_dir})['stopped'] == []
    by_name = run({'state': 'purged', 'state_dir': state_dir, 'netns': ns_b})
    assert [s['pid'] for s in by_name['stopped']] == [b['pid']]
    wait_dead(b['pid'])


def test_purged_takes_no_path(tmp_path):
    result = run({'state': 'purged', 'path': str(tmp_path / 'x.pcap'), 'state_dir': str(tmp_path / 'state')})
    assert result.get('failed') is True
    assert result['msg'] == ('state=purged stops every capture of the network namespace and takes no path or handle: '
                             'use state=stopped to stop one capture')


# -- item 10: a sniffer that died says how, at once --------------------------------

@real
def test_a_sniffer_killed_mid_run_is_reported_with_its_signal(tmp_path, netns):
    state_dir = str(tmp_path / 'state')
    started = run({'netns': netns(), 'path': str(tmp_path / 'k.pcap'), 'state_dir': state_dir})
    running = run({'state': 'status', 'handle': started['handle']})
    assert running['running'] is True and running['changed'] is False and running['died'] is None
    assert running['msg'] == 'capture running (pid %d, 0 packets so far)' % started['pid']
    os.kill(started['pid'], signal.SIGKILL)
    wait_dead(started['pid'])
    begin = time.monotonic()
    status = run({'state': 'status', 'handle': started['handle']})
    assert time.monotonic() - begin < 3  # at once, not after a retry budget
    expected = "the capture's sniffer (pid %d) died: killed by SIGKILL" % started['pid']
    assert status['msg'] == expected and status['running'] is False and status['stop_reason'] == 'killed'
    assert status['died'] == {'pid': started['pid'], 'signal': 'SIGKILL', 'exit_code': None,
                              'log': started['handle']['log_path'], 'msg': expected}
    assert expected in json.dumps(status['warnings'])
    stopped = run({'state': 'stopped', 'handle': started['handle']})
    assert stopped['msg'] == expected and stopped['changed'] is False and stopped['died']['signal'] == 'SIGKILL'


@real
def test_a_sniffer_that_exits_with_an_error_is_reported_with_its_code_and_log(tmp_path, netns, monkeypatch):
    # the sniffer's interpreter exits with code 3 on SIGUSR2 (as if it had failed mid-run)
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text('import signal, sys\nsignal.signal(signal.SIGUSR2, lambda *a: sys.exit(3))\n')
    monkeypatch.setenv('PYTHONPATH', str(site))
    state_dir = str(tmp_path / 'state')
    started = run({'netns': netns(), 'path': str(tmp_path / 'e.pcap'), 'state_dir': state_dir})
    os.kill(started['pid'], signal.SIGUSR2)
    wait_dead(started['pid'])
    stopped = run({'state': 'stopped', 'handle': started['handle']})
    log = started['handle']['log_path']
    assert stopped['msg'] == "the capture's sniffer (pid %d) died: exited with code 3, see %s" % (started['pid'], log)
    assert stopped['stop_reason'] == 'died' and stopped['died']['exit_code'] == 3
