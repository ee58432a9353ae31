# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the background capture (plugins/module_utils/_capture.py).

The first half are pure tests: validation and its messages, the sniffer's
argv, handles, the pcap record counter over golden bytes, check mode, and
the ownership proof of state records (forged here as the sniffer writes them).
The second half is real: captures in a network namespace tkca-<random>
made for the test (root, iproute2, tcpdump), traffic between a Python
server and client inside it, and a tcpdump capture of the same traffic at
the same time as the reference. Nothing leaves the namespace.
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

from ansible_collections.tcplab.keepalive.plugins.module_utils import _capture, _capture_record, _proc
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture import DEFAULTS, Capture, validate
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import (
    MARKER, CaptureError, count_packets, death, liveness, make_handle, ownership, record_paths, resolve_target)
from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_start import capture_argv, child_args, error_message
from ansible_collections.tcplab.keepalive.plugins.modules import capture as capture_module
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.pcap_files import pcap_bytes as _pcap_bytes, read_pcap
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.capture_traffic import KEEPALIVE, TRAFFIC

NETNS_PREFIX = 'tkca-'   # the namespaces of the shared netns fixture (tests/unit/conftest.py)

UNIT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def state_dir(tmp_path):
    return str(tmp_path / 'state')


def forge_record(state_dir, target, end=True, **changes):
    """A state record as the sniffer writes it, for the file at target (pid: no such process)."""
    st = os.lstat(target)
    record = {'marker': MARKER, 'path': str(target), 'pid': 2 ** 22 + 12345, 'starttime': 1, 'netns_inode': 1,
              'pcap': {'dev': st.st_dev, 'ino': st.st_ino}, 'iface': 'lo', 'filter': None, 'netns': None,
              'monitor': {'pid': 2 ** 22 + 12346, 'starttime': 1}}
    if end:
        record['pcap_end'] = {'size': st.st_size, 'mtime_ns': st.st_mtime_ns, 'ctime_ns': st.st_ctime_ns}
    record.update(changes)
    os.makedirs(state_dir, 0o700, exist_ok=True)
    with open(record_paths(state_dir, str(target))[0], 'w') as handle:
        json.dump(record, handle)
    return record_paths(state_dir, str(target))


# -- pure tests ---------------------------------------------------------------

def test_defaults_are_the_documented_ones():
    """What the module documents as defaults is what a capture without those options gets."""
    import yaml  # pylint: disable=import-outside-toplevel
    options = yaml.safe_load(capture_module.DOCUMENTATION)['options']
    settings = validate({})
    for name in ('backend', 'iface', 'snaplen', 'max_packets', 'max_seconds', 'max_bytes'):
        assert options[name]['default'] == settings[name] == DEFAULTS[name], name
    assert 'filter' not in DEFAULTS and settings['filter'] is None and settings['netns'] is None


def test_validate_defaults():
    assert validate({}) == {'backend': 'auto', 'iface': 'lo', 'filter': None, 'snaplen': 262144, 'max_packets': 1000000,
                            'max_seconds': 3600, 'max_bytes': 200000000, 'netns': None}
    assert validate({'filter': '  tcp port 1 ', 'iface': 'eth0', 'max_seconds': 5})['filter'] == 'tcp port 1'
    assert validate({'filter': ''})['filter'] is None


@pytest.mark.parametrize('params, message', [
    ({'snaplen': 10}, 'snaplen must be an integer 64..262144 (bytes kept of each packet), got 10'),
    ({'snaplen': 262145}, 'snaplen must be an integer 64..262144 (bytes kept of each packet), got 262145'),
    ({'max_packets': 0}, 'max_packets must be an integer 1..1099511627776 (packets), got 0'),
    ({'max_packets': 2 ** 40 + 1}, 'max_packets must be an integer 1..1099511627776 (packets), got 1099511627777'),
    ({'max_seconds': -1}, 'max_seconds must be an integer 1..1000000000 (seconds), got -1'),
    ({'max_seconds': 0}, 'max_seconds must be an integer 1..1000000000 (seconds), got 0'),
    ({'max_seconds': 1.5}, 'max_seconds must be an integer 1..1000000000 (seconds), got 1.5'),
    ({'max_bytes': True}, 'max_bytes must be an integer 1024..1125899906842624 (bytes of pcap, its 24-byte header '
                          'and 16 bytes per packet included), got True'),
    ({'max_bytes': 10}, 'max_bytes must be an integer 1024..1125899906842624 (bytes of pcap, its 24-byte header '
                        'and 16 bytes per packet included), got 10'),
    ({'max_bytes': 1023}, 'max_bytes must be an integer 1024..1125899906842624 (bytes of pcap, its 24-byte header '
                          'and 16 bytes per packet included), got 1023'),
    ({'iface': 'a b'}, "iface 'a b' is not an interface name"),
    ({'iface': '../x'}, "iface '../x' is not an interface name"),
    ({'iface': 'averyveryverylongname'}, "iface 'averyveryverylongname' is not an interface name"),
    ({'filter': 5}, 'filter must be a string, got 5'),
    ({'netns': '../etc'}, "netns '../etc' is not a network namespace name: give a name from /run/netns (ip netns list)"),
    ({'netns': 'tkca-does-not-exist'},
     "network namespace 'tkca-does-not-exist' not found at /run/netns/tkca-does-not-exist: "
     "create it (ip netns add tkca-does-not-exist) or fix the name"),
])
def test_validate_errors(params, message):
    with pytest.raises(CaptureError) as exc:
        validate(params)
    assert str(exc.value) == message


def run_program(tmp_path, settings, pcap_id=None, tcpdump=None):
    """Run the capture program for real from the argv the module builds; its JSON replies (it fails before ready)."""
    path = str(tmp_path / 'x.pcap')
    with open(path, 'wb'):
        pass
    st = os.stat(path)
    read_fd, write_fd = os.pipe()
    args = child_args(settings, path, write_fd, str(tmp_path), pcap_id or (st.st_dev, st.st_ino), tcpdump)
    done = subprocess.run(capture_argv(sys.executable, args), pass_fds=(write_fd,), capture_output=True, timeout=60,
                          check=False)
    os.close(write_fd)
    with os.fdopen(read_fd, 'rb') as replies:
        lines = replies.read().decode().splitlines()
    assert done.returncode == 0, done.stderr  # the first process exits at once; the program runs on detached
    reply = {}
    for line in lines:
        reply.update(json.loads(line))
    return reply


@pytest.mark.parametrize('backend', ['scapy', 'tcpdump'])
def test_the_program_reports_a_missing_interface(tmp_path, backend):
    if backend == 'scapy':
        pytest.importorskip('scapy')
    settings = dict(validate({'iface': 'tkpr-none0'}), backend=backend)
    reply = run_program(tmp_path, settings, tcpdump='/bin/false')
    assert reply['error'] == 'iface' and 'ready' not in reply
    assert error_message(reply['error'], reply['detail'], settings, sys.executable).startswith(
        "interface 'tkpr-none0' not found in the target: give an interface of that namespace (ip link) (OSError: ")
    assert _proc.wait_gone(reply['monitor'], 10)  # and it leaves no process behind


def test_the_program_refuses_a_pcap_that_is_not_the_one_the_module_made(tmp_path):
    settings = dict(validate({'iface': 'lo'}), backend='tcpdump')
    reply = run_program(tmp_path, settings, pcap_id=(1, 2), tcpdump='/bin/false')
    assert reply['error'] == 'pcap' and 'ready' not in reply
    assert error_message(reply['error'], reply['detail'], settings, sys.executable, '/x.pcap') == (
        'the capture could not open its pcap /x.pcap: OSError: it is no longer the file the module created '
        '(replaced since)')


@pytest.mark.parametrize('handle, path, expected', [
    ({'path': '/c/a.pcap', 'pid': 1}, None, '/c/a.pcap'),
    ('/c/a.pcap', None, '/c/a.pcap'),
    (None, '/c/b.pcap', '/c/b.pcap'),
    ({'path': '/c/a.pcap'}, '/c/a.pcap', '/c/a.pcap'),
    (None, None, None),
])
def test_resolve_target(handle, path, expected):
    assert resolve_target(handle, path) == expected


@pytest.mark.parametrize('handle, path, message', [
    ({'pid': 1}, None,
     "handle must be the handle returned by state=started (a dict with path) or a pcap path, got {'pid': 1}"),
    (5, None, 'handle must be the handle returned by state=started (a dict with path) or a pcap path, got 5'),
    ({'path': '/c/a.pcap'}, '/c/b.pcap', 'handle is for /c/a.pcap but path is /c/b.pcap: give one of them'),
])
def test_resolve_target_errors(handle, path, message):
    with pytest.raises(CaptureError) as exc:
        resolve_target(handle, path)
    assert str(exc.value) == message


@pytest.mark.parametrize('kind, detail, expected', [
    ('scapy', "ModuleNotFoundError: No module named 'scapy'",
     "scapy is not importable by /py: install it for the Python that runs the modules (a distribution's package "
     "such as apt-get install python3-scapy, or in a virtual environment pip install scapy==2.8.0), or use backend: "
     "tcpdump (ModuleNotFoundError: No module named 'scapy')"),
    ('libpcap', 'ImportError: libpcap is not available. Cannot compile filter !',
     "libpcap is not available to scapy, so the filter 'tcp prt 1' cannot be compiled (scapy would capture "
     "unfiltered): install libpcap (apt-get install libpcap0.8) (ImportError: libpcap is not available. Cannot "
     "compile filter !)"),
    ('filter', "Scapy_Exception: Failed to compile filter expression 'tcp prt 1' (can't parse filter expression: "
     "syntax error)", "bad filter 'tcp prt 1': can't parse filter expression: syntax error"),
    ('iface', 'OSError: [Errno 19] No such device',
     "interface 'lo' not found in the target: give an interface of that namespace (ip link) "
     "(OSError: [Errno 19] No such device)"),
    ('socket', 'PermissionError: [Errno 1] Operation not permitted',
     "cannot open a packet socket on 'lo' in the target (capturing needs root): "
     "PermissionError: [Errno 1] Operation not permitted"),
])
def test_error_messages(kind, detail, expected):
    settings = validate({'filter': 'tcp prt 1'})
    assert error_message(kind, detail, settings, '/py') == expected


def test_make_handle():
    state = {'pid': 42, 'starttime': 7, 'iface': 'lo', 'filter': None, 'netns': 'tkca-x', 'other': 1}
    record, log = record_paths('/s', '/c/x.pcap')
    assert make_handle('/c/x.pcap', state, '/s') == {
        'path': '/c/x.pcap', 'state_dir': '/s', 'state_path': record, 'log_path': log, 'pid': 42,
        'starttime': 7, 'marker': MARKER, 'iface': 'lo', 'filter': None, 'netns': 'tkca-x', 'backend': 'scapy'}
    assert make_handle('/c/x.pcap', dict(state, backend='tcpdump'), '/s')['backend'] == 'tcpdump'
    assert make_handle('/c/x.pcap', None, '/s')['backend'] is None


def test_ownership_rejects_processes_that_are_not_captures(tmp_path):
    assert ownership(None, None, '/x') == (False, 'no valid pid')
    assert ownership(True, None, '/x') == (False, 'no valid pid')
    assert ownership(1, None, '/x') == (False, 'no valid pid')
    ours, why = ownership(os.getpid(), None, '/x')
    assert not ours and why.startswith('its command line is not a tcplab.keepalive capture: ')
    assert ownership(2 ** 22 + 12345, None, '/x') == (False, 'no such process')


def test_missing_scapy_is_reported_before_anything_starts(tmp_path, monkeypatch, state_dir):
    monkeypatch.setattr(_capture, 'scapy_available', lambda: False)
    with pytest.raises(CaptureError) as exc:
        Capture('/opt/py/bin/python3', state_dir=state_dir, default_dir=str(tmp_path / 'c')).started({'backend': 'scapy'})
    assert str(exc.value) == ("scapy is not importable by /opt/py/bin/python3: install it for the Python that runs the "
                              "modules (a distribution's package such as apt-get install python3-scapy, or in a virtual "
                              "environment pip install scapy==2.8.0), or use backend: tcpdump (ImportError: No module "
                              "named scapy)")
    assert not (tmp_path / 'c').exists()


def test_check_mode_started_creates_nothing(tmp_path, state_dir):
    capture = Capture(sys.executable, state_dir=state_dir, check_mode=True, default_dir=str(tmp_path / 'c'))
    result = capture.started({'filter': 'tcp port 1'})
    assert result['changed'] is True and result['running'] is False and result['pid'] is None
    assert result['msg'].startswith('would start a capture on lo to %s/capture-<timestamp>-lo-' % (tmp_path / 'c'))
    assert not (tmp_path / 'c').exists()
    result = capture.started({'path': str(tmp_path / 'x.pcap')})
    assert result['changed'] is True and not (tmp_path / 'x.pcap').exists()


def test_check_mode_stopped_and_absent_change_nothing(tmp_path, state_dir):
    path = tmp_path / 'x.pcap'
    path.write_bytes(_pcap_bytes([b'a' * 60]))
    record, dummy = forge_record(state_dir, path)
    capture = Capture(sys.executable, state_dir=state_dir, check_mode=True)
    result = capture.stopped(str(path), analyse=False)
    assert result['changed'] is False and result['packets'] == 1 and result['stop_reason'] == 'killed'
    assert result['msg'] == ("the capture's sniffer (pid %d) died: it left no account of how (its monitor, pid %d, is "
                             "gone too), see %s" % (2 ** 22 + 12345, 2 ** 22 + 12346, dummy))
    result = capture.absent(str(path))
    assert result['changed'] is True
    assert result['removed'] == [str(path), record]
    assert path.exists() and os.path.exists(record)
    result = Capture(sys.executable, state_dir=state_dir).absent(str(path))
    assert result['changed'] is True and result['removed'] == [str(path), record] and not path.exists()
    result = Capture(sys.executable, state_dir=state_dir).absent(str(path))
    assert result['changed'] is False and result['removed'] == []
    assert result['msg'] == 'nothing to remove: no capture of this module at %s' % path


def test_refuses_to_overwrite_a_file_that_is_not_a_capture(tmp_path, state_dir):
    path = tmp_path / 'precious.pcap'
    path.write_bytes(b'keep me')
    with pytest.raises(CaptureError) as exc:
        Capture(sys.executable, state_dir=state_dir).started({'path': str(path)})
    assert str(exc.value) == ('%s exists and is not a capture of this module (no state record for it in %s): choose '
                              'another path or remove the file yourself' % (path, state_dir))
    assert path.read_bytes() == b'keep me'
    assert not os.path.exists(state_dir)


# -- ownership of a pcap: its record, its identity, how the capture left it ------

def _not_removed(path, why):
    return '%s was not removed: it is not a pcap this module wrote (%s); remove it yourself if it should go' % (path, why)


def test_absent_refuses_a_pcap_modified_after_the_capture_ended(tmp_path, state_dir):
    path = tmp_path / 'x.pcap'
    path.write_bytes(_pcap_bytes([b'a' * 60]))
    record, dummy = forge_record(state_dir, path)
    end = json.load(open(record))['pcap_end']
    time.sleep(0.01)
    with open(path, 'ab') as handle:  # same inode (as when a new file reuses it), other size and change time
        handle.write(b'more')
    with pytest.raises(CaptureError) as exc:
        Capture(sys.executable, state_dir=state_dir).absent(str(path))
    assert str(exc.value) == _not_removed(path, 'it is not the file as the capture left it: size %d, change time %d ns; '
                                          'the record says size %d, change time %d ns (replaced or modified since)'
                                          % (end['size'] + 4, os.lstat(path).st_ctime_ns, end['size'], end['ctime_ns']))
    assert path.exists() and os.path.exists(record)


def test_absent_refuses_a_pcap_of_another_inode(tmp_path, state_dir):
    path = tmp_path / 'x.pcap'
    path.write_bytes(_pcap_bytes([b'a' * 60]))
    forge_record(state_dir, path, pcap={'dev': os.lstat(path).st_dev, 'ino': 7})
    with pytest.raises(CaptureError) as exc:
        Capture(sys.executable, state_dir=state_dir).absent(str(path))
    st = os.lstat(path)
    assert str(exc.value) == _not_removed(path, 'it is not the file the capture wrote: device %d inode %d, the record '
                                          'says device %d inode 7 (replaced since)' % (st.st_dev, st.st_ino, st.st_dev))
    assert path.exists()


def test_absent_refuses_a_pcap_whose_end_was_not_recorded(tmp_path, state_dir):
    path = tmp_path / 'x.pcap'
    path.write_bytes(_pcap_bytes([b'a' * 60]))
    forge_record(state_dir, path, end=False)
    with pytest.raises(CaptureError) as exc:
        Capture(sys.executable, state_dir=state_dir).absent(str(path))
    assert str(exc.value) == _not_removed(path, "the capture ended without recording its pcap's final size and times "
                                          '(its monitor was killed too), so it cannot be told from a file put in its '
                                          'place')
    assert path.exists()


@pytest.mark.parametrize('change', [
    {'marker': 'someone-else'}, {'path': '/elsewhere.pcap'}, {'pid': 'x'}, {'pcap': None}, {'netns_inode': None}])
def test_a_record_that_is_not_ours_proves_nothing(tmp_path, state_dir, change):
    path = tmp_path / 'x.pcap'
    path.write_bytes(b'notes')
    forge_record(state_dir, path, **change)
    with pytest.raises(CaptureError) as exc:
        Capture(sys.executable, state_dir=state_dir).absent(str(path))
    assert str(exc.value) == _not_removed(path, 'no state record for it in %s' % state_dir)
    assert path.read_bytes() == b'notes'


def test_a_record_that_is_a_fifo_or_symlink_is_not_read(tmp_path, state_dir):
    path = tmp_path / 'x.pcap'
    path.write_bytes(b'notes')
    record, dummy = forge_record(state_dir, path)
    os.unlink(record)
    os.mkfifo(record)
    with pytest.raises(CaptureError):
        Capture(sys.executable, state_dir=state_dir).absent(str(path))
    os.unlink(record)
    valid = forge_record(str(tmp_path / 'other'), path)[0]
    assert _capture_record.read_record(str(tmp_path / 'other'), str(path)) is not None
    os.symlink(valid, record)
    assert _capture_record.read_record(state_dir, str(path)) is None


@pytest.mark.parametrize('died, how', [
    ({'signal': 'SIGKILL'}, 'killed by SIGKILL'),
    ({'exit_code': 1}, 'exited with code 1, see /s/log'),
    ({}, 'it left no account of how (its monitor, pid 9, is gone too), see /s/log'),
])
def test_death_messages(died, how):
    record = {'pid': 8, 'monitor': {'pid': 9}, 'died': died}
    assert death(record, '/s/log') == {'pid': 8, 'signal': died.get('signal'), 'exit_code': died.get('exit_code'),
                                       'log': '/s/log', 'msg': "the capture's sniffer (pid 8) died: " + how}


def test_liveness_for_a_follower_of_the_pcap(tmp_path, state_dir):
    path = tmp_path / 'x.pcap'
    path.write_bytes(_pcap_bytes([]))
    assert liveness(str(path), state_dir) is None
    dummy, log = forge_record(state_dir, path, died={'signal': 'SIGKILL'})
    assert liveness(str(path), state_dir) == {
        'running': False, 'pid': 2 ** 22 + 12345, 'finished': None,
        'died': {'pid': 2 ** 22 + 12345, 'signal': 'SIGKILL', 'exit_code': None, 'log': log,
                 'msg': "the capture's sniffer (pid %d) died: killed by SIGKILL" % (2 ** 22 + 12345)}}
    forge_record(state_dir, path, finished={'reason': 'stopped'})
    assert liveness(str(path), state_dir)['died'] is None
    # the sniffer gone, its monitor still writing how it ended: still running for the follower, not died
    monitor = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', MARKER])
    try:
        forge_record(state_dir, path, monitor={'pid': monitor.pid, 'starttime': _proc.starttime(monitor.pid)})
        assert liveness(str(path), state_dir) == {'running': True, 'pid': 2 ** 22 + 12345, 'finished': None,
                                                  'died': None}
    finally:
        monitor.kill()
        monitor.wait()
    assert liveness(str(path), state_dir)['running'] is False   # the monitor gone without an account: died


@pytest.mark.parametrize('state_dir_value', ['relative/dir', '/', '//'])
def test_state_dir_must_be_absolute(state_dir_value):
    with pytest.raises(CaptureError) as exc:
        Capture(sys.executable, state_dir=state_dir_value)
    assert str(exc.value) == 'state_dir must be an absolute path other than /, got %r' % state_dir_value


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root (chown)')
def test_a_state_dir_that_is_a_symlink_or_foreign_is_refused(tmp_path):
    real_dir = tmp_path / 'real'
    real_dir.mkdir()
    link = tmp_path / 'link'
    link.symlink_to(real_dir)
    with pytest.raises(CaptureError) as exc:
        Capture(sys.executable, state_dir=str(link)).started({'path': str(tmp_path / 'x.pcap')})
    assert str(exc.value) == ('state_dir %s is a symbolic link: it must be a real directory owned by uid %d; remove it '
                              'or choose another state_dir' % (link, os.geteuid()))
    os.chown(real_dir, 4321, 4321)
    with pytest.raises(CaptureError) as exc:
        Capture(sys.executable, state_dir=str(real_dir)).started({'path': str(tmp_path / 'x.pcap')})
    assert str(exc.value) == ('state_dir %s is owned by uid 4321: it must be a real directory owned by uid %d; remove it '
                              'or choose another state_dir' % (real_dir, os.geteuid()))
    assert sorted(os.listdir(tmp_path)) == ['link', 'real']


@pytest.mark.parametrize('state', ['stopped', 'absent'])
def test_stop_needs_a_target(state, state_dir):
    with pytest.raises(CaptureError) as exc:
        getattr(Capture(sys.executable, state_dir=state_dir), state)(None)
    assert str(exc.value) == 'state=%s needs the handle of a capture (or its path)' % state


# -- real captures in a network namespace -------------------------------------

HAVE_TOOLS = all(shutil.which(tool) for tool in ('ip', 'tcpdump', 'nsenter'))
try:
    import scapy  # noqa: F401  pylint: disable=unused-import
    HAVE_SCAPY = True
except ImportError:
    HAVE_SCAPY = False
real = pytest.mark.skipif(os.geteuid() != 0 or not HAVE_TOOLS or not HAVE_SCAPY,
                          reason='needs root, iproute2, tcpdump, nsenter and scapy')


def _ns(ns, *argv, **kw):
    return subprocess.run(['ip', 'netns', 'exec', ns] + [str(a) for a in argv], check=True, **kw)


def _traffic(ns, port, rounds=5):
    _ns(ns, sys.executable, '-c', TRAFFIC, port, rounds)


class Tcpdump:
    """The reference: tcpdump -i lo in the same namespace, at the same time."""

    def __init__(self, ns, path, bpf, snaplen=262144):
        # -B: a 64 MiB buffer; tcpdump's default ring (2 MiB of 256 KiB slots) drops loopback bursts
        self.path = path
        self.proc = subprocess.Popen(
            ['ip', 'netns', 'exec', ns, 'tcpdump', '-i', 'lo', '-n', '-U', '--immediate-mode', '-Z', 'root',
             '-B', '65536', '-s', str(snaplen), '-w', path, bpf], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        line = self.proc.stderr.readline()
        assert b'listening on lo' in line, line

    def stop(self):
        time.sleep(0.5)
        self.proc.send_signal(signal.SIGINT)
        return self.proc.communicate(timeout=10)[1].decode()


@pytest.fixture
def capture_dir(tmp_path):
    return str(tmp_path / 'captures')


@real
@pytest.mark.parametrize('snaplen', [262144, 96])
def test_capture_equals_tcpdump(netns, capture_dir, tmp_path, snaplen, state_dir):
    port = 4100
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    started = capture.started({'netns': netns, 'filter': 'tcp port %d' % port, 'snaplen': snaplen})
    reference = Tcpdump(netns, str(tmp_path / 'tcpdump.pcap'), 'tcp port %d' % port, snaplen)
    _traffic(netns, port)
    _ns(netns, sys.executable, '-c', TRAFFIC, port + 1, 2)  # other port: filtered out by both
    tcpdump_says = reference.stop()
    stopped = Capture(sys.executable, state_dir=state_dir).stopped(started['handle']['path'], started['handle'])
    assert re.search(r'^0 packets dropped by kernel$', tcpdump_says, re.M), tcpdump_says

    ours, theirs = read_pcap(started['path'])[1], read_pcap(reference.path)[1]
    assert stopped['changed'] is True and stopped['stop_reason'] == 'stopped'
    assert stopped['packets'] == len(ours) == len(theirs) >= 20
    assert '%d packets captured' % len(theirs) in tcpdump_says
    # each segment once, byte for byte (original length included) and in the same order as tcpdump
    assert [f[2:] for f in ours] == [f[2:] for f in theirs]
    assert max(len(f[3]) for f in ours) == min(snaplen, 65536 + 14) or snaplen > 65536
    with open(started['path'], 'rb') as mine, open(reference.path, 'rb') as tcpdump:
        assert mine.read(24) == tcpdump.read(24)  # the same file header (snaplen, link type)
    # ... with kernel timestamps (microseconds) within a millisecond of tcpdump's
    assert all(abs((a[0] - b[0]) * 1000000 + a[1] - b[1]) < 1000 for a, b in zip(ours, theirs))
    # the outgoing copy of every segment was seen and left out
    assert stopped['finished']['loopback_outgoing_dropped'] == len(ours)
    assert stopped['finished']['kernel_drops'] == 0
    assert stopped['pcap'] == {'packets': len(ours), 'bytes': os.path.getsize(started['path']), 'complete': True,
                               'readable': True, 'linktype': 1}
    # private files: pcap 0600 in a 0700 directory
    assert stat.S_IMODE(os.stat(started['path']).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(capture_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(started['handle']['state_path']).st_mode) == 0o600
    # tcpdump itself reads it
    read = subprocess.run(['tcpdump', '-nr', started['path']], capture_output=True, text=True, check=True)
    assert len(read.stdout.splitlines()) == len(theirs)


@real
def test_started_result_and_idempotence(netns, capture_dir, state_dir):
    path = os.path.join(capture_dir, 'fixed.pcap')
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    params = {'netns': netns, 'filter': 'tcp port 4200', 'path': path}
    first = capture.started(params)
    try:
        handle = first['handle']
        assert first['changed'] is True and first['running'] is True
        assert handle['path'] == path and handle['marker'] == MARKER and handle['netns'] == netns
        assert handle['pid'] == first['pid'] and handle['starttime'] == _proc.starttime(first['pid'])
        assert MARKER in _proc.cmdline(first['pid'])
        assert count_packets(path) == {'packets': 0, 'bytes': 24, 'complete': True, 'readable': True, 'linktype': 1}
        again = capture.started(params)
        assert again['changed'] is False and again['pid'] == first['pid']
        check = Capture(sys.executable, state_dir=state_dir, check_mode=True).started(params)
        assert check['changed'] is False
        with pytest.raises(CaptureError) as exc:
            capture.started(dict(params, filter='tcp port 4201'))
        assert str(exc.value) == ('a capture with other settings is running on %s (pid %d): stop it first '
                                  '(state: stopped) or choose another path' % (path, first['pid']))
        would = Capture(sys.executable, state_dir=state_dir, check_mode=True).stopped(path, analyse=False)
        assert would['changed'] is True and would['running'] is True
        assert _proc.starttime(first['pid']) is not None
    finally:
        stopped = Capture(sys.executable, state_dir=state_dir).stopped(path, analyse=False)
    assert stopped['changed'] is True and stopped['was_running'] is True
    assert _proc.starttime(first['pid']) is None
    stopped_again = Capture(sys.executable, state_dir=state_dir).stopped(path, analyse=False)
    assert stopped_again['changed'] is False and stopped_again['msg'] == 'capture was not running'
    # a stopped capture on the same path starts again (the old file is replaced)
    restarted = capture.started(params)
    assert restarted['changed'] is True and restarted['pid'] != first['pid']
    gone = Capture(sys.executable, state_dir=state_dir).absent(path, restarted['handle'])
    assert gone['changed'] is True and gone['was_running'] is True
    assert sorted(gone['removed']) == sorted([path] + list(record_paths(state_dir, path)))
    assert os.listdir(state_dir) == []
    assert _proc.starttime(restarted['pid']) is None


@real
def test_sigkilled_capture_leaves_a_readable_pcap(netns, capture_dir, state_dir):
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    started = capture.started({'netns': netns, 'filter': 'tcp port 4300'})
    _traffic(netns, 4300)
    time.sleep(0.3)
    os.kill(started['pid'], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _proc.starttime(started['pid']) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    read = subprocess.run(['tcpdump', '-nr', started['path']], capture_output=True, text=True, check=False)
    assert read.returncode == 0, read.stderr
    stopped = Capture(sys.executable, state_dir=state_dir).stopped(started['path'], analyse=False)
    assert stopped['changed'] is False and stopped['was_running'] is False
    assert stopped['stop_reason'] == 'killed' and stopped['finished'] is None
    assert stopped['died']['signal'] == 'SIGKILL'
    assert stopped['msg'] == "the capture's sniffer (pid %d) died: killed by SIGKILL" % started['pid']
    assert stopped['packets'] == len(read.stdout.splitlines()) >= 20
    assert stopped['pcap']['complete'] is True


@real
def test_bad_filter_fails_at_start(netns, capture_dir, state_dir):
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    with pytest.raises(CaptureError) as exc:
        capture.started({'netns': netns, 'filter': 'tcp prt 1'})
    assert str(exc.value) == "bad filter 'tcp prt 1': can't parse filter expression: syntax error"
    nothing_left(netns, capture_dir, state_dir)
    # on a chosen path in a directory that exists: the directory stays, nothing in it
    os.makedirs(capture_dir)
    with pytest.raises(CaptureError):
        capture.started({'netns': netns, 'filter': 'tcp prt 1', 'path': os.path.join(capture_dir, 'x.pcap')})
    assert os.listdir(capture_dir) == []
    nothing_left(netns, None, state_dir)


def nothing_left(netns, capture_dir, state_dir):
    """A failed start leaves no pcap, state record or log, no directory it made, and no process."""
    if capture_dir:
        assert not os.path.exists(capture_dir)
    assert not os.path.exists(state_dir)
    assert subprocess.run(['ip', 'netns', 'pids', netns], capture_output=True, text=True, check=True).stdout == ''


@real
def test_missing_interface_fails_at_start(netns, capture_dir, state_dir):
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    with pytest.raises(CaptureError) as exc:
        capture.started({'netns': netns, 'iface': 'eth7'})
    assert str(exc.value) == ("interface 'eth7' not found in network namespace %s: give an interface of that "
                              "namespace (ip link) (OSError: no interface with this name)" % netns)
    nothing_left(netns, capture_dir, state_dir)


def _poisoned_python(tmp_path, monkeypatch, module):
    """Make the sniffer's interpreter fail to import module (as if it were not installed)."""
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text('import sys\nsys.modules[%r] = None\n' % module)
    monkeypatch.setenv('PYTHONPATH', str(site))


@real
def test_missing_libpcap_fails_at_start(netns, capture_dir, tmp_path, monkeypatch, state_dir):
    _poisoned_python(tmp_path, monkeypatch, 'scapy.libs.winpcapy')
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    with pytest.raises(CaptureError) as exc:
        capture.started({'netns': netns, 'filter': 'tcp port 1'})
    assert str(exc.value).startswith(
        "libpcap is not available to scapy, so the filter 'tcp port 1' cannot be compiled (scapy would capture "
        "unfiltered): install libpcap (apt-get install libpcap0.8) (")
    nothing_left(netns, capture_dir, state_dir)


@real
def test_missing_scapy_in_the_sniffer_fails_at_start(netns, capture_dir, tmp_path, monkeypatch, state_dir):
    _poisoned_python(tmp_path, monkeypatch, 'scapy')
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    with pytest.raises(CaptureError) as exc:
        capture.started({'netns': netns})
    assert str(exc.value).startswith(
        "scapy is not importable by %s: install it for the Python that runs the modules (a distribution's package "
        "such as apt-get install python3-scapy, or in a virtual environment pip install scapy==2.8.0), or use "
        "backend: tcpdump (" % sys.executable)
    nothing_left(netns, capture_dir, state_dir)


@real
def test_stop_refuses_a_pid_that_is_not_ours(tmp_path, state_dir):
    sleeper = subprocess.Popen(['sleep', '60'])
    while _proc.cmdline(sleeper.pid) != ['sleep', '60']:  # until it has exec'd
        time.sleep(0.01)
    try:
        path = str(tmp_path / 'fake.pcap')
        fake = {'path': path, 'pid': sleeper.pid, 'starttime': _proc.starttime(sleeper.pid)}
        result = Capture(sys.executable, state_dir=state_dir).stopped(path, fake, analyse=False)
        assert result['changed'] is False and result['was_running'] is False
        assert result['msg'] == ('pid %d is not the capture of %s (its command line is not a tcplab.keepalive '
                                 'capture: sleep 60): not signalled; the capture is not running' % (sleeper.pid, path))
        assert result['warnings'] == [result['msg']]
        # the same through a forged state record, and through absent
        with open(path, 'wb') as handle:
            handle.write(_pcap_bytes([]))
        forge_record(state_dir, path, pid=fake['pid'], starttime=fake['starttime'])
        gone = Capture(sys.executable, state_dir=state_dir).absent(path)
        assert gone['was_running'] is False and gone['died']['pid'] == sleeper.pid
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


@real
def test_stop_refuses_a_reused_pid(netns, capture_dir, state_dir):
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    started = capture.started({'netns': netns, 'max_seconds': 30})
    handle = dict(started['handle'], starttime=started['handle']['starttime'] - 1)
    os.unlink(handle['state_path'])
    result = Capture(sys.executable, state_dir=state_dir).stopped(handle['path'], handle, analyse=False)
    assert result['changed'] is False
    assert 'the pid was reused' in result['msg']
    assert _proc.starttime(started['pid']) is not None
    Capture(sys.executable, state_dir=state_dir).stopped(started['path'], started['handle'], analyse=False)
    assert _proc.starttime(started['pid']) is None


STARTER = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import conftest  # installs the collection loader
    from ansible_collections.tcplab.keepalive.plugins.module_utils._capture import Capture
    result = Capture(sys.executable, nsenter=sys.argv[4], default_dir=sys.argv[3], state_dir=sys.argv[5]).started(
        {"netns": sys.argv[2], "filter": "tcp port 4400"})
    print(json.dumps(result))
''')


@real
def test_capture_outlives_the_process_that_started_it(netns, capture_dir, state_dir):
    starter = subprocess.run([sys.executable, '-c', STARTER, UNIT_DIR, netns, capture_dir, shutil.which('nsenter'), state_dir],
                             capture_output=True, text=True, check=True, timeout=60)
    started = json.loads(starter.stdout)
    pid = started['pid']
    with open('/proc/%d/stat' % pid) as handle:
        fields = handle.read().rsplit(')', 1)[1].split()
    assert int(fields[1]) != os.getpid()            # not our child: reparented after the double fork
    assert int(fields[3]) != os.getsid(0)           # its own session (no SIGHUP with the connection)
    assert os.stat('/proc/%d/ns/net' % pid).st_ino == os.stat('/run/netns/%s' % netns).st_ino
    _traffic(netns, 4400)
    stopped = Capture(sys.executable, state_dir=state_dir).stopped(started['path'], started['handle'], analyse=False)
    assert stopped['changed'] is True and stopped['packets'] >= 20


@real
def test_limits_end_the_capture_by_itself(netns, capture_dir, state_dir):
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    by_packets = capture.started({'netns': netns, 'filter': 'tcp port 4500', 'max_packets': 3})
    by_seconds = capture.started({'netns': netns, 'filter': 'tcp port 4500', 'max_seconds': 1})
    by_bytes = capture.started({'netns': netns, 'filter': 'tcp port 4500', 'max_bytes': 1024})
    _traffic(netns, 4500)
    time.sleep(1.5)
    stopper = Capture(sys.executable, state_dir=state_dir)
    results = [stopper.stopped(s['path'], analyse=False) for s in (by_packets, by_seconds, by_bytes)]
    assert [r['stop_reason'] for r in results] == ['max_packets', 'max_seconds', 'max_bytes']
    assert all(r['changed'] is False for r in results)
    assert results[0]['packets'] == 3
    assert results[2]['pcap']['bytes'] <= 1024 and results[2]['packets'] >= 1


@real
def test_stop_returns_the_keepalive_analysis(netns, capture_dir, state_dir):
    try:
        from ansible_collections.tcplab.keepalive.plugins.module_utils import _pcap  # noqa: F401  pylint: disable=unused-import
    except ImportError:
        pytest.skip('plugins/module_utils/_pcap.py is not there yet')
    capture = Capture(sys.executable, state_dir=state_dir, nsenter=shutil.which('nsenter'), default_dir=capture_dir)
    started = capture.started({'netns': netns, 'filter': 'tcp port 4600'})
    _ns(netns, sys.executable, '-c', KEEPALIVE, 4600)
    stopped = Capture(sys.executable, state_dir=state_dir).stopped(started['path'], expect={'time': 1, 'intvl': 1, 'probes': 3})
    analysis = stopped['analysis']
    assert analysis is not None, stopped.get('analysis_error')
    # idle 1 s, probes answered: one probe a second for 3.5 s, each segment once
    summary = analysis['summary']
    assert 2 <= summary['keepalive'] <= 4
    assert summary['loopback_duplicates'] == 0 and summary['packets'] == stopped['packets']
    assert analysis['verdict'] == 'pass', analysis['reasons']
    [connection] = analysis['connections']
    [prober] = connection['probers']
    assert connection['endpoints'][1] == '127.0.0.1:4600' and prober['peer'] == '127.0.0.1:4600'
    assert prober['count'] == prober['answered'] == summary['keepalive'] and prober['unanswered'] == 0
    assert all(0.9 < idle < 1.3 for idle in prober['idle_times'])
    assert connection['rst'] is None


def test_settled_reads_the_record_once_more_after_the_monitor_is_gone(monkeypatch):
    """The monitor writes how the sniffer ended, then exits. A status whose last read came just before that write
    and whose look at the monitor came just after its exit must read once more (once, a loaded suite reported
    'it left no account of how (its monitor ... is gone too)' for a sniffer killed by SIGKILL)."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _capture_stop  # pylint: disable=import-outside-toplevel
    stale = {'pid': 41, 'monitor': {'pid': 40, 'starttime': 1}}
    written = dict(stale, died={'signal': 'SIGKILL', 'exit_code': None})
    reads = iter([stale, written])
    alive = iter([True, False])
    monkeypatch.setattr(_capture_stop, 'read_record', lambda state_dir, path: next(reads))
    monkeypatch.setattr(_capture_stop, 'monitor_alive', lambda record: next(alive))
    monkeypatch.setattr(_capture_stop.time, 'sleep', lambda seconds: None)

    class Stop(_capture_stop.CaptureStop):
        state_dir = '/nonexistent'

    settled = Stop()._settled('/x.pcap', stale)
    assert settled['died'] == {'signal': 'SIGKILL', 'exit_code': None}
