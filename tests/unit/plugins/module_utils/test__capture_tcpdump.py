# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the tcpdump backend of the capture (plugins/module_utils/_capture_tcpdump.py, _capture.py).

The first part is pure: tcpdump's argv, the choice of a backend and its messages. The rest is real: the
ownership proof against real processes, and captures in network namespaces tkct-<random> made for the test
(root, iproute2, tcpdump, nsenter), where the scapy and the tcpdump backend record the same traffic at the same
time and must agree packet for packet, in pcap_info's analysis too, and where tcpdump is killed, loses its
interface, outlives nothing and stops at its limits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _capture, _proc
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture import Capture, validate
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import (
    MARKER, CaptureError, count_packets, ownership)
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_start import capture_argv, child_args, error_message
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_tcpdump import BUFFER_KIB, parent_of, tcpdump_argv
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.capture_traffic import KEEPALIVE, TRAFFIC
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.pcap_files import read_pcap

NETNS_PREFIX = 'tkct-'   # the namespaces of the shared netns fixture (tests/unit/conftest.py)

TCPDUMP = shutil.which('tcpdump')
NSENTER = shutil.which('nsenter')
try:
    import scapy  # noqa: F401  pylint: disable=unused-import
    HAVE_SCAPY = True
except ImportError:
    HAVE_SCAPY = False
ROOT_TOOLS = os.geteuid() == 0 and all((TCPDUMP, NSENTER, shutil.which('ip')))
real = pytest.mark.skipif(not ROOT_TOOLS, reason='needs root, iproute2, nsenter and tcpdump')
both = pytest.mark.skipif(not (ROOT_TOOLS and HAVE_SCAPY), reason='needs root, iproute2, nsenter, tcpdump and scapy')


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / 'state')


# -- pure tests ---------------------------------------------------------------

def test_tcpdump_argv():
    settings = validate({'filter': 'tcp port 7', 'snaplen': 96, 'max_packets': 5})
    assert tcpdump_argv('/usr/bin/tcpdump', settings) == [
        '/usr/bin/tcpdump', '-i', 'lo', '-n', '-U', '--immediate-mode', '-Z', 'root', '-B', '16384', '-s', '96',
        '-c', '5', '-w', '-', '--', 'tcp port 7']
    unfiltered = tcpdump_argv('/t', validate({'max_packets': 2 ** 40}))
    assert unfiltered[-2:] == ['-w', '-'] and unfiltered[unfiltered.index('-c') + 1] == str(2 ** 31 - 1)
    assert BUFFER_KIB == 16384


def test_a_tcpdump_that_cannot_be_run_is_reported(tmp_path):
    """The program of the tcpdump backend, run for real from the argv the module builds, with a tcpdump that is not
    there: it says why before it is ready, and the module's message names it."""
    path = str(tmp_path / 'x.pcap')
    with open(path, 'wb'):
        pass
    st = os.stat(path)
    settings = dict(validate({'iface': 'lo'}), backend='tcpdump')
    read_fd, write_fd = os.pipe()
    args = child_args(settings, path, write_fd, str(tmp_path), (st.st_dev, st.st_ino), str(tmp_path / 'no-tcpdump'))
    subprocess.run(capture_argv(sys.executable, args), pass_fds=(write_fd,), check=True, timeout=60, capture_output=True)
    os.close(write_fd)
    reply = {}
    with os.fdopen(read_fd, 'rb') as replies:
        for line in replies.read().decode().splitlines():
            reply.update(json.loads(line))
    assert reply['error'] == 'exec' and 'ready' not in reply
    assert error_message('exec', reply['detail'], settings, sys.executable, path, 'tcpdump') == (
        'tcpdump could not be run: cannot run %s: FileNotFoundError: [Errno 2] No such file or directory'
        % (tmp_path / 'no-tcpdump'))


PYENV = os.path.expanduser('~/.pyenv/versions')
PYTHONS = sorted(os.path.join(PYENV, v, 'bin', 'python') for v in (os.listdir(PYENV) if os.path.isdir(PYENV) else [])
                 if v.startswith('3.') and int(v.split('.')[1]) >= 8) + ['/usr/bin/python3']


@pytest.mark.parametrize('python', [p for p in PYTHONS if os.path.exists(p)])
def test_monitor_and_module_utils_compile_on_target_pythons(python):
    """The capture program runs on the target's own Python (3.8 and later); so do the module_utils of the capture."""
    here = os.path.dirname(_capture.__file__)
    files = [os.path.join(here, name) for name in (
        '_capture.py', '_capture_record.py', '_capture_start.py', '_capture_stop.py', '_capture_tcpdump.py',
        '_program_capture.py', '_detached.py', '_proc.py')]
    code = 'import sys\nfor f in sys.argv[1:]:\n    compile(open(f).read(), f, "exec")\nprint("ok")'
    done = subprocess.run([python, '-c', code] + files, capture_output=True, text=True, check=False)
    assert done.stdout == 'ok\n', done.stderr


@pytest.mark.parametrize('requested, scapy, tcpdump, expected', [
    ('auto', True, True, 'scapy'),
    ('auto', False, True, 'tcpdump'),
    ('scapy', True, False, 'scapy'),
    ('tcpdump', True, True, 'tcpdump'),
])
def test_backend_choice(monkeypatch, requested, scapy, tcpdump, expected):
    monkeypatch.setattr(_capture, 'scapy_available', lambda: scapy)
    capture = Capture('/py', state_dir='/nonexistent/s', tcpdump=sys.executable if tcpdump else None)
    assert capture.backend(requested) == expected


NO_BACKEND = ('no capture backend on the target: scapy is not importable by /py and tcpdump is not installed (not '
              'found in PATH or the sbin directories): install one of them - apt-get install tcpdump, or apt-get '
              'install python3-scapy (scapy for the Python that runs the modules)')
NO_TCPDUMP = ('tcpdump is not installed on the target (not found in PATH or the sbin directories): install it '
              '(apt-get install tcpdump) or use backend: scapy')
NO_SCAPY = ("scapy is not importable by /py: install it for the Python that runs the modules (a distribution's "
            "package such as apt-get install python3-scapy, or in a virtual environment pip install scapy==2.8.0), or "
            "use backend: tcpdump (ImportError: No module named scapy)")


@pytest.mark.parametrize('requested, scapy, tcpdump, message', [
    ('auto', False, None, NO_BACKEND),
    ('auto', False, '/nonexistent/tcpdump', NO_BACKEND),
    ('auto', False, 'not-executable', NO_BACKEND),
    ('tcpdump', True, None, NO_TCPDUMP),
    ('scapy', False, sys.executable, NO_SCAPY),
])
def test_no_backend_is_refused_before_anything_is_made(tmp_path, monkeypatch, requested, scapy, tcpdump, message):
    monkeypatch.setattr(_capture, 'scapy_available', lambda: scapy)
    if tcpdump == 'not-executable':
        tcpdump = str(tmp_path.parent / ('%s-tcpdump' % tmp_path.name))
        with open(tcpdump, 'w') as handle:
            handle.write('#!/bin/sh\n')
        os.chmod(tcpdump, 0o644)
    for check_mode in (True, False):
        capture = Capture('/py', state_dir=str(tmp_path / 's'), default_dir=str(tmp_path / 'c'), tcpdump=tcpdump,
                          check_mode=check_mode)
        with pytest.raises(CaptureError) as exc:
            capture.started({'backend': requested})
        assert str(exc.value) == message
    assert os.listdir(tmp_path) == []


def test_bad_backend_is_refused():
    with pytest.raises(CaptureError) as exc:
        validate({'backend': 'wireshark'})
    assert str(exc.value) == "backend must be one of auto, scapy, tcpdump, got 'wireshark'"


def test_check_mode_says_which_backend_would_run(tmp_path, monkeypatch):
    monkeypatch.setattr(_capture, 'scapy_available', lambda: False)
    capture = Capture('/py', state_dir=str(tmp_path / 's'), default_dir=str(tmp_path / 'c'), tcpdump=sys.executable,
                      check_mode=True)
    result = capture.started({'path': str(tmp_path / 'x.pcap')})
    assert result['backend'] == 'tcpdump' and result['changed'] is True
    assert result['msg'] == 'would start a capture on lo to %s (with tcpdump)' % (tmp_path / 'x.pcap')
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('kind, detail, expected', [
    ('filter', "can't parse filter expression: syntax error", "bad filter 'tcp prt 1': can't parse filter expression: "
                                                              "syntax error"),
    ('filter', "unknown host 'x.invalid' (really)", "bad filter 'tcp prt 1': unknown host 'x.invalid' (really)"),
    ('socket', "lo: You don't have permission to perform this capture on that device (socket: Operation not permitted)",
     "cannot open a packet socket on 'lo' in the target (capturing needs root): lo: You don't have permission to "
     "perform this capture on that device (socket: Operation not permitted)"),
    ('exec', 'cannot run /x/tcpdump: FileNotFoundError: [Errno 2] No such file or directory',
     'tcpdump could not be run: cannot run /x/tcpdump: FileNotFoundError: [Errno 2] No such file or directory'),
    ('tcpdump', 'it exited with code 1 and said nothing',
     "tcpdump did not start capturing on 'lo' in the target: it exited with code 1 and said nothing"),
])
def test_error_messages_of_the_tcpdump_backend(kind, detail, expected):
    assert error_message(kind, detail, validate({'filter': 'tcp prt 1'}), '/py', '/c/x.pcap', 'tcpdump') == expected


# -- ownership: tcpdump is proven by its parent, the monitor -----------------------

# A stand-in monitor with the real monitor's command line (marker, JSON arguments with tcpdump's argv) that runs
# the argv (sleep here) as its child, as the real one runs tcpdump (or, for the test, another argv: run).
FAKE_MONITOR = textwrap.dedent('''
    import json, os, sys, time
    args = json.loads(sys.argv[2])
    run = args.get("run") or args["tcpdump_argv"]
    child = os.fork()
    if child == 0:
        os.execv(run[0], run)
    print(child, flush=True)
    os.waitpid(child, 0)
''')


def _fake_capture(path, argv, run=None):
    monitor = subprocess.Popen([sys.executable, '-c', FAKE_MONITOR, MARKER, json.dumps(
        {'backend': 'tcpdump', 'path': path, 'tcpdump_argv': argv, 'run': run})], stdout=subprocess.PIPE, text=True)
    child = int(monitor.stdout.readline())
    while _proc.cmdline(child) != (run or argv):  # until it has exec'd
        time.sleep(0.01)
    return monitor, child


@real
def test_ownership_of_a_tcpdump_is_proven_by_its_monitor(tmp_path):
    path = str(tmp_path / 'x.pcap')
    sleep = shutil.which('sleep')
    monitor, child = _fake_capture(path, [sleep, '60'])
    stranger = subprocess.Popen([sleep, '60'])
    odd = None
    try:
        start = _proc.starttime(child)
        assert parent_of(child) == monitor.pid
        assert ownership(child, start, path) == (True, '')
        assert ownership(child, None, path) == (True, '')
        assert ownership(child, start - 1, path) == (
            False, 'it started at tick %d, the capture at tick %d (the pid was reused)' % (start, start - 1))
        assert ownership(child, start, '/other.pcap') == (False, 'it is the tcpdump of the capture to %s' % path)
        # the monitor itself carries the marker, but it is not the capture
        assert ownership(monitor.pid, None, path) == (
            False, 'it is the monitor of the tcpdump capture of %s, not the capture' % path)
        # the same program with another parent proves nothing
        while _proc.cmdline(stranger.pid) != [sleep, '60']:
            time.sleep(0.01)
        assert ownership(stranger.pid, None, path) == (
            False, 'its command line is not a tcplab.keepalive capture: %s 60' % sleep)
        # a child of a monitor whose command line is not the argv the monitor was given
        other, odd = _fake_capture(path, [sleep, '61'], run=[sleep, '62'])
        try:
            assert ownership(odd, None, path) == (
                False, 'its command line is not the tcpdump its monitor (pid %d) started: %s 62' % (other.pid, sleep))
        finally:
            other.kill()
            other.wait()
        # once the monitor is gone, the orphan is nobody's
        monitor.kill()
        monitor.wait()
        assert parent_of(child) != monitor.pid
        assert ownership(child, start, path) == (False, 'its command line is not a tcplab.keepalive capture: %s 60' % sleep)
    finally:
        for proc in (monitor, stranger):
            proc.kill()
            proc.wait()
        for pid in (child, odd):
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# -- real captures in a network namespace ---------------------------------------------


def _ns(ns, *argv, **kw):
    return subprocess.run(['ip', 'netns', 'exec', ns] + [str(a) for a in argv], check=True, **kw)


@pytest.fixture
def capture_dir(tmp_path):
    return str(tmp_path / 'captures')


def _make(state_dir, capture_dir, **kw):
    return Capture(sys.executable, state_dir=state_dir, nsenter=NSENTER, default_dir=capture_dir, tcpdump=TCPDUMP, **kw)


def assert_same_analysis(one, other, where='analysis'):
    """The same analysis but for the pcap's path; times may differ by the microseconds the two timestamps differ."""
    if isinstance(one, dict) and isinstance(other, dict):
        assert sorted(one) == sorted(other), where
        for key in one:
            if not (where == 'analysis' and key == 'path'):
                assert_same_analysis(one[key], other[key], '%s.%s' % (where, key))
    elif isinstance(one, list) and isinstance(other, list):
        assert len(one) == len(other), where
        for index, (a, b) in enumerate(zip(one, other)):
            assert_same_analysis(a, b, '%s[%d]' % (where, index))
    elif isinstance(one, float) and isinstance(other, float):
        assert abs(one - other) < 0.002, (where, one, other)
    elif isinstance(one, str) and isinstance(other, str) and one != other:
        # a note that quotes a time ("a FIN at 3.501 s"): the same words, the numbers within the same microseconds
        # (a time rounded to 3.5005 can print as 3.5 from one capture and 3.501 from the other)
        words = [NUMBER_RE.split(text) for text in (one, other)]
        numbers = [[float(n) for n in NUMBER_RE.findall(text)] for text in (one, other)]
        assert words[0] == words[1] and len(numbers[0]) == len(numbers[1]), (where, one, other)
        assert all(abs(a - b) < 0.002 for a, b in zip(*numbers)), (where, one, other)
    else:
        assert one == other, (where, one, other)


NUMBER_RE = re.compile(r'\d+\.\d+')


def _settled_status(state_dir, path, quiet=0.5, bound=20.0):
    """The capture's status once its pcap has stopped growing for quiet seconds: the traffic's last segments (the
    closing FINs and ACKs) reach the pcap a moment after the program that made them has ended."""
    deadline = time.monotonic() + bound
    status = Capture(sys.executable, state_dir=state_dir).status(path)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = Capture(sys.executable, state_dir=state_dir).status(path)
        if again['packets'] == status['packets']:
            return again
        status = again
    return status


def _alive(pid):
    return _proc.starttime(pid) is not None


def _wait_dead(pid, seconds=5.0):
    end = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.02)
    assert not _alive(pid)


@both
@pytest.mark.parametrize('snaplen', [262144, 96])
def test_both_backends_record_the_same_packets(netns, capture_dir, state_dir, snaplen):
    port = 4100
    capture = _make(state_dir, capture_dir)
    params = {'netns': netns, 'filter': 'tcp port %d' % port, 'snaplen': snaplen}
    started = {backend: capture.started(dict(params, backend=backend)) for backend in ('scapy', 'tcpdump')}
    _ns(netns, sys.executable, '-c', TRAFFIC, port, 5)
    _ns(netns, sys.executable, '-c', TRAFFIC, port + 1, 2)  # other port: filtered out by both
    time.sleep(0.3)
    stopper = Capture(sys.executable, state_dir=state_dir)
    stopped = {backend: stopper.stopped(s['path'], s['handle']) for backend, s in started.items()}
    (head_s, scapy_frames), (head_t, tcpdump_frames) = [read_pcap(started[b]['path']) for b in ('scapy', 'tcpdump')]
    assert head_s == head_t  # the same file header: magic, version, snaplen, link type
    assert stopped['tcpdump']['packets'] == stopped['scapy']['packets'] == len(tcpdump_frames) >= 20
    # each segment once (libpcap drops the outgoing loopback copy, the scapy sniffer does the same), byte for byte
    assert [f[2:] for f in tcpdump_frames] == [f[2:] for f in scapy_frames]
    assert all(abs((a[0] - b[0]) * 1000000 + a[1] - b[1]) < 1000 for a, b in zip(scapy_frames, tcpdump_frames))
    for backend in ('scapy', 'tcpdump'):
        result = stopped[backend]
        assert result['backend'] == backend and result['stop_reason'] == 'stopped' and result['changed'] is True
        assert result['finished']['kernel_drops'] == 0
        assert result['finished']['packets'] == result['packets']
        assert result['pcap'] == {'packets': result['packets'], 'bytes': os.path.getsize(started[backend]['path']),
                                  'complete': True, 'readable': True, 'linktype': 1}
    assert stopped['tcpdump']['finished']['loopback_outgoing_dropped'] is None
    assert stopped['scapy']['finished']['loopback_outgoing_dropped'] == len(scapy_frames)
    assert_same_analysis(stopped['tcpdump']['analysis'], stopped['scapy']['analysis'])


@both
def test_both_backends_give_the_same_keepalive_analysis(netns, capture_dir, state_dir):
    port = 4600
    capture = _make(state_dir, capture_dir)
    started = {b: capture.started({'netns': netns, 'filter': 'tcp port %d' % port, 'backend': b})
               for b in ('tcpdump', 'scapy')}
    _ns(netns, sys.executable, '-c', KEEPALIVE, port)
    time.sleep(0.2)
    expect = {'time': 1, 'intvl': 1, 'probes': 3}
    stopped = {b: Capture(sys.executable, state_dir=state_dir).stopped(s['path'], expect=expect)
               for b, s in started.items()}
    tcpdump, scapy = stopped['tcpdump']['analysis'], stopped['scapy']['analysis']
    assert tcpdump is not None and scapy is not None
    assert_same_analysis(tcpdump, scapy)
    assert 2 <= tcpdump['summary']['keepalive'] <= 4 and tcpdump['summary']['loopback_duplicates'] == 0
    assert tcpdump['verdict'] == 'pass', tcpdump['reasons']
    [prober] = tcpdump['connections'][0]['probers']
    assert prober['count'] == prober['answered'] == tcpdump['summary']['keepalive']


@real
def test_a_tcpdump_capture_and_its_proofs(netns, capture_dir, state_dir):
    path = os.path.join(capture_dir, 'fixed.pcap')
    capture = _make(state_dir, capture_dir)
    params = {'netns': netns, 'filter': 'tcp port 4200', 'path': path, 'backend': 'tcpdump'}
    begin = time.monotonic()
    first = capture.started(params)
    took = time.monotonic() - begin
    try:
        pid, handle = first['pid'], first['handle']
        assert first['changed'] is True and first['running'] is True and first['backend'] == 'tcpdump', first
        assert first['msg'] == 'started a capture on lo (pid %d) to %s (with tcpdump)' % (pid, path)
        assert took < 5
        assert handle['backend'] == 'tcpdump' and handle['starttime'] == _proc.starttime(pid)
        argv = _proc.cmdline(pid)
        assert argv == tcpdump_argv(TCPDUMP, validate(params))  # the pid is tcpdump itself ...
        monitor = parent_of(pid)
        assert MARKER in _proc.cmdline(monitor)          # ... its parent carries the marker
        with open('/proc/%d/status' % pid) as status:
            assert 'Uid:\t0\t0\t0\t0' in status.read()          # -Z root: it kept root (and so its parent-death signal)
        assert os.stat('/proc/%d/ns/net' % pid).st_ino == os.stat('/run/netns/%s' % netns).st_ino
        record = json.load(open(handle['state_path']))
        assert record['backend'] == 'tcpdump' and record['pid'] == pid and record['monitor']['pid'] == monitor
        assert record['netns_inode'] == os.stat('/run/netns/%s' % netns).st_ino and record['linktype'] == 1
        assert record['tcpdump_argv'] == argv
        assert [record['pcap']['dev'], record['pcap']['ino']] == [os.stat(path).st_dev, os.stat(path).st_ino]
        # the header is there at once: tcpdump wrote it before it said "listening on"
        assert count_packets(path) == {'packets': 0, 'bytes': 24, 'complete': True, 'readable': True, 'linktype': 1}
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(handle['state_path']).st_mode) == 0o600
        # the same settings: nothing to do, with backend tcpdump or auto; another backend is other settings
        assert capture.started(params)['changed'] is False
        assert capture.started(dict(params, backend='auto'))['changed'] is False
        if HAVE_SCAPY:
            with pytest.raises(CaptureError) as exc:
                capture.started(dict(params, backend='scapy'))
            assert str(exc.value) == ('a capture with other settings is running on %s (pid %d): stop it first '
                                      '(state: stopped) or choose another path' % (path, pid))
        # a reused pid (another start time) is not signalled
        os.rename(handle['state_path'], handle['state_path'] + '.aside')
        forged = dict(handle, starttime=handle['starttime'] - 1)
        refused = Capture(sys.executable, state_dir=state_dir).stopped(path, forged, analyse=False)
        assert refused['changed'] is False and 'the pid was reused' in refused['msg'] and _alive(pid)
        os.rename(handle['state_path'] + '.aside', handle['state_path'])
        _ns(netns, sys.executable, '-c', TRAFFIC, 4200, 2)
        running = _settled_status(state_dir, path)
        assert running['running'] is True and running['backend'] == 'tcpdump' and running['packets'] >= 10
    finally:
        stopped = Capture(sys.executable, state_dir=state_dir).stopped(path, analyse=False)
    assert stopped['changed'] is True and stopped['stop_reason'] == 'stopped' and stopped['backend'] == 'tcpdump'
    assert stopped['msg'] == 'stopped the capture (pid %d, SIGTERM)' % pid
    assert stopped['packets'] == stopped['finished']['packets'] == running['packets']
    assert not _alive(pid)
    _wait_dead(monitor)
    log = open(handle['log_path']).read()
    assert 'listening on lo, link-type EN10MB' in log and '0 packets dropped by kernel' in log
    read = subprocess.run([TCPDUMP, '-nr', path], capture_output=True, text=True, check=True)
    assert len(read.stdout.splitlines()) == stopped['packets']
    # the ended capture's pcap is ours (its monitor recorded how tcpdump left it): a new start reuses the path
    again = capture.started(params)
    assert again['changed'] is True and again['pid'] != pid and again['backend'] == 'tcpdump'
    assert count_packets(path)['packets'] == 0
    gone = Capture(sys.executable, state_dir=state_dir).absent(path)
    assert gone['changed'] is True and gone['was_running'] is True
    assert sorted(gone['removed']) == sorted([path, handle['state_path'], handle['log_path']])
    assert os.listdir(state_dir) == [] and not _alive(again['pid'])


@both
@pytest.mark.parametrize('params, message', [
    ({'filter': 'tcp prt 1'}, "bad filter 'tcp prt 1': can't parse filter expression: syntax error"),
    ({'filter': 'host nosuchhost.invalid'}, "bad filter 'host nosuchhost.invalid': unknown host 'nosuchhost.invalid'"),
    ({'iface': 'eth7'}, "interface 'eth7' not found in network namespace {ns}: give an interface of that namespace "
                        "(ip link) (OSError: no interface with this name)"),
])
def test_bad_filter_and_missing_interface_say_the_same_with_both_backends(netns, capture_dir, state_dir, params, message):
    for backend in ('tcpdump', 'scapy'):
        with pytest.raises(CaptureError) as exc:
            _make(state_dir, capture_dir).started(dict(params, netns=netns, backend=backend))
        assert str(exc.value) == message.format(ns=netns), backend
        assert not os.path.exists(capture_dir) and not os.path.exists(state_dir)
        assert subprocess.run(['ip', 'netns', 'pids', netns], capture_output=True, text=True, check=True).stdout == ''


@real
def test_a_tcpdump_that_will_not_capture_is_reported_and_leaves_nothing(netns, capture_dir, state_dir, tmp_path):
    fake = tmp_path / 'bin' / 'tcpdump'
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "tcpdump: something went wrong" >&2\nexit 1\n')
    fake.chmod(0o755)
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=NSENTER, default_dir=capture_dir, tcpdump=str(fake))
    with pytest.raises(CaptureError) as exc:
        capture.started({'netns': netns, 'backend': 'tcpdump'})
    assert str(exc.value) == ("tcpdump did not start capturing on 'lo' in network namespace %s: something went wrong"
                              % netns)
    assert not os.path.exists(capture_dir) and not os.path.exists(state_dir)


@real
def test_limits_end_a_tcpdump_capture(netns, capture_dir, state_dir):
    capture = _make(state_dir, capture_dir)
    base = {'netns': netns, 'filter': 'tcp port 4500', 'backend': 'tcpdump'}
    by_packets = capture.started(dict(base, max_packets=3))
    by_bytes = capture.started(dict(base, max_bytes=1024))
    # started last, right before the traffic, with room for it on a loaded machine: a 1 s window
    # opened before the other start once closed before the traffic came (0 packets)
    by_seconds = capture.started(dict(base, max_seconds=3))
    _ns(netns, sys.executable, '-c', TRAFFIC, 4500, 5)
    stopper = Capture(sys.executable, state_dir=state_dir)
    deadline = time.monotonic() + 30
    while stopper.status(by_seconds['path'])['running'] and time.monotonic() < deadline:
        time.sleep(0.2)   # until max_seconds has ended it
    results = [stopper.stopped(s['path'], analyse=False) for s in (by_packets, by_seconds, by_bytes)]
    assert [r['stop_reason'] for r in results] == ['max_packets', 'max_seconds', 'max_bytes']
    assert all(r['changed'] is False and r['backend'] == 'tcpdump' for r in results)
    assert results[0]['packets'] == 3 and results[0]['finished']['packets'] == 3
    # cut back to the whole packets within max_bytes, as the scapy sniffer writes it
    assert results[2]['pcap']['bytes'] == os.path.getsize(by_bytes['path']) <= 1024
    assert results[2]['pcap']['complete'] is True and results[2]['packets'] >= 1
    assert results[2]['finished']['bytes'] == results[2]['pcap']['bytes']
    assert results[1]['packets'] >= 20


@real
def test_a_sigkilled_tcpdump_is_reported_with_its_signal(netns, capture_dir, state_dir):
    started = _make(state_dir, capture_dir).started({'netns': netns, 'filter': 'tcp port 4300', 'backend': 'tcpdump'})
    _ns(netns, sys.executable, '-c', TRAFFIC, 4300, 5)
    time.sleep(0.2)
    monitor = parent_of(started['pid'])
    os.kill(started['pid'], signal.SIGKILL)
    _wait_dead(started['pid'])
    _wait_dead(monitor)  # it has recorded how tcpdump ended
    begin = time.monotonic()
    status = Capture(sys.executable, state_dir=state_dir).status(started['path'])
    assert time.monotonic() - begin < 3
    expected = "the capture's sniffer (pid %d) died: killed by SIGKILL" % started['pid']
    assert status['msg'] == expected and status['stop_reason'] == 'killed' and status['died']['signal'] == 'SIGKILL'
    read = subprocess.run([TCPDUMP, '-nr', started['path']], capture_output=True, text=True, check=True)
    assert status['packets'] == len(read.stdout.splitlines()) >= 20 and status['pcap']['complete'] is True
    gone = Capture(sys.executable, state_dir=state_dir).absent(started['path'])  # its monitor recorded how it left it
    assert gone['changed'] is True and not os.path.exists(started['path'])


@real
def test_a_tcpdump_whose_interface_goes_is_reported_with_its_exit_code(netns, capture_dir, state_dir):
    subprocess.run(['ip', '-n', netns, 'link', 'add', 'tkct0', 'type', 'veth', 'peer', 'name', 'tkct1'], check=True)
    subprocess.run(['ip', '-n', netns, 'link', 'set', 'tkct0', 'up'], check=True)
    started = _make(state_dir, capture_dir).started({'netns': netns, 'iface': 'tkct0', 'backend': 'tcpdump'})
    monitor = parent_of(started['pid'])
    subprocess.run(['ip', '-n', netns, 'link', 'del', 'tkct0'], check=True)
    _wait_dead(started['pid'])
    _wait_dead(monitor)  # it has recorded how tcpdump ended
    stopped = Capture(sys.executable, state_dir=state_dir).stopped(started['path'], analyse=False)
    log = started['handle']['log_path']
    assert stopped['stop_reason'] == 'died' and stopped['died']['exit_code'] == 1
    assert stopped['msg'] == "the capture's sniffer (pid %d) died: exited with code 1, see %s" % (started['pid'], log)
    assert 'tcpdump: ' in open(log).read()  # tcpdump's own words about it


@real
def test_tcpdump_does_not_outlive_its_monitor(netns, capture_dir, state_dir):
    started = _make(state_dir, capture_dir).started({'netns': netns, 'filter': 'tcp port 4400', 'backend': 'tcpdump'})
    _ns(netns, sys.executable, '-c', TRAFFIC, 4400, 3)
    time.sleep(0.2)
    monitor = parent_of(started['pid'])
    os.kill(monitor, signal.SIGKILL)
    _wait_dead(started['pid'], 3)   # its parent-death signal: SIGTERM, so it flushed
    read = subprocess.run([TCPDUMP, '-nr', started['path']], capture_output=True, text=True, check=True)
    status = Capture(sys.executable, state_dir=state_dir).status(started['path'])
    assert status['packets'] == len(read.stdout.splitlines()) >= 15 and status['pcap']['complete'] is True
    assert status['running'] is False and status['stop_reason'] == 'killed'
    assert status['msg'] == ("the capture's sniffer (pid %d) died: it left no account of how (its monitor, pid %s, is "
                             "gone too), see %s" % (started['pid'], monitor, started['handle']['log_path']))
    assert subprocess.run(['ip', 'netns', 'pids', netns], capture_output=True, text=True, check=True).stdout == ''


@real
def test_a_sigterm_to_the_monitor_stops_the_capture_cleanly(netns, capture_dir, state_dir):
    started = _make(state_dir, capture_dir).started({'netns': netns, 'backend': 'tcpdump'})
    monitor = parent_of(started['pid'])
    os.kill(monitor, signal.SIGTERM)
    _wait_dead(monitor)
    assert not _alive(started['pid'])
    status = Capture(sys.executable, state_dir=state_dir).status(started['path'])
    assert status['stop_reason'] == 'stopped' and status['died'] is None and status['finished']['packets'] == 0
