# Unit tests of the keepalive sysctl logic: validation messages, the journal,
# partial-failure rollback, check mode and diff. The kernel is replaced by an
# in-memory FakeAccess only here; tests/integration/targets/sysctl uses the
# real kernel.
from __future__ import annotations

import json
import multiprocessing
import os
import shutil

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _common, _netns, _proc, _sysctl
from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl import (
    Journal, KeepaliveSysctl, SysctlError, apply_values, check_saved, render, validate_values)


@pytest.mark.parametrize('params, expected', [
    ({'time': 30, 'intvl': 3, 'probes': 3}, {'time': 30, 'intvl': 3, 'probes': 3}),
    ({'time': 1}, {'time': 1}),
    ({'intvl': 32767, 'probes': 127}, {'intvl': 32767, 'probes': 127}),
    ({'time': None, 'probes': 1}, {'probes': 1}),
    # k=v arguments and -e variables arrive as text (issue 10 item 14)
    ({'time': '30', 'intvl': '3', 'probes': '3'}, {'time': 30, 'intvl': 3, 'probes': 3}),
    ({'time': ' 30 ', 'intvl': '3\n', 'probes': '+3'}, {'time': 30, 'intvl': 3, 'probes': 3}),
    ({'time': '030'}, {'time': 30}),
])
def test_valid_values(params, expected):
    assert validate_values(params) == expected


@pytest.mark.parametrize('key, value, message', [
    ('time', True, 'tcp_keepalive_time must be an integer 1..32767 seconds, got True'),
    ('time', False, 'tcp_keepalive_time must be an integer 1..32767 seconds, got False'),
    ('time', '2.5', "tcp_keepalive_time must be an integer 1..32767 seconds, got '2.5'"),
    ('time', 30.0, 'tcp_keepalive_time must be an integer 1..32767 seconds, got 30.0'),
    ('time', 'abc', "tcp_keepalive_time must be an integer 1..32767 seconds, got 'abc'"),
    ('time', '', "tcp_keepalive_time must be an integer 1..32767 seconds, got ''"),
    ('time', ' ', "tcp_keepalive_time must be an integer 1..32767 seconds, got ' '"),
    ('time', 'true', "tcp_keepalive_time must be an integer 1..32767 seconds, got 'true'"),
    ('time', '0x1e', "tcp_keepalive_time must be an integer 1..32767 seconds, got '0x1e'"),
    ('time', '3e1', "tcp_keepalive_time must be an integer 1..32767 seconds, got '3e1'"),
    ('time', '3 0', "tcp_keepalive_time must be an integer 1..32767 seconds, got '3 0'"),
    ('time', '0', "tcp_keepalive_time must be an integer 1..32767 seconds, got '0'"),
    ('time', '-5', "tcp_keepalive_time must be an integer 1..32767 seconds, got '-5'"),
    ('probes', '128', "tcp_keepalive_probes must be an integer 1..127, got '128'"),
    ('probes', '9' * 40, "tcp_keepalive_probes must be an integer 1..127, got '%s'" % ('9' * 40)),
    ('intvl', 2.5, 'tcp_keepalive_intvl must be an integer 1..32767 seconds, got 2.5'),
    ('intvl', 0, 'tcp_keepalive_intvl must be an integer 1..32767 seconds, got 0'),
    ('time', -5, 'tcp_keepalive_time must be an integer 1..32767 seconds, got -5'),
    ('time', 32768, 'tcp_keepalive_time must be an integer 1..32767 seconds, got 32768'),
    ('probes', 500, 'tcp_keepalive_probes must be an integer 1..127, got 500'),
    ('probes', 0, 'tcp_keepalive_probes must be an integer 1..127, got 0'),
    ('probes', [3], 'tcp_keepalive_probes must be an integer 1..127, got [3]'),
])
def test_invalid_values(key, value, message):
    with pytest.raises(SysctlError) as exc:
        validate_values({'time': 30, key: value})
    assert str(exc.value) == message


@pytest.mark.parametrize('params, message', [
    ({'time': '30', 'intvl': 'abc'}, "tcp_keepalive_intvl must be an integer 1..32767 seconds, got 'abc'"),
    ({'time': 30, 'intvl': '3', 'probes': '2.5'}, "tcp_keepalive_probes must be an integer 1..127, got '2.5'"),
])
def test_the_bad_option_is_blamed(params, message):
    with pytest.raises(SysctlError) as exc:
        validate_values(params)
    assert str(exc.value) == message


def test_one_bad_value_stops_all():
    access = FakeAccess()
    with pytest.raises(SysctlError):
        validate_values({'time': 30, 'intvl': 3, 'probes': 999})
    assert access.writes == []


class FakeNs:
    def __init__(self, inode=4026531840, label='own', own=True):
        self.inode = inode
        self.label = label
        self.own = own
        self.name = label
        self.path = '/proc/self/ns/net'

    def as_dict(self):
        return {'inode': self.inode, 'path': self.path, 'label': self.label}


class FakeAccess:
    """In-memory kernel; fail_on makes writing that key raise."""

    def __init__(self, values=None, fail_on=(), fail_restore=False):
        self.values = dict(values or {'time': 7200, 'intvl': 75, 'probes': 9})
        self.fail_on = set(fail_on)
        self.fail_restore = fail_restore
        self.writes = []

    def read(self):
        return dict(self.values)

    def write(self, key, value):
        self.writes.append((key, value))
        if key in self.fail_on:
            raise OSError(13, 'Permission denied')
        if self.fail_restore and len(self.writes) > 1:
            raise OSError(5, 'Input/output error')
        self.values[key] = value


LIVE = {1, 2, 4026531840}


def engine(tmp_path, access=None, ns=None, check_mode=False, live=None):
    return KeepaliveSysctl(ns or FakeNs(), access or FakeAccess(), Journal(str(tmp_path / 'run')),
                           Journal(str(tmp_path / 'lib')), check_mode=check_mode,
                           live_inodes=lambda: set(LIVE if live is None else live))


def journal_data(tmp_path):
    path = tmp_path / 'run' / 'journal.json'
    return json.loads(path.read_text()) if path.exists() else {}


def test_present_journals_then_sets(tmp_path):
    access = FakeAccess()
    result = engine(tmp_path, access).present({'time': 30, 'intvl': 3})
    assert result['changed']
    assert result['previous'] == {'time': 7200, 'intvl': 75, 'probes': 9}
    assert result['current'] == {'time': 30, 'intvl': 3, 'probes': 9}
    assert result['changed_keys'] == ['net.ipv4.tcp_keepalive_time', 'net.ipv4.tcp_keepalive_intvl']
    saved = result['ansible_facts']['tcplab_keepalive_saved']
    assert saved['originals'] == {'time': 7200, 'intvl': 75, 'probes': 9}
    assert journal_data(tmp_path)['4026531840']['originals'] == saved['originals']
    assert (os.stat(tmp_path / 'run' / 'journal.json').st_mode & 0o777) == 0o600


def test_first_originals_win(tmp_path):
    access = FakeAccess()
    engine(tmp_path, access).present({'time': 30})
    second = engine(tmp_path, access).present({'time': 40, 'probes': 4})
    assert second['previous']['time'] == 30
    assert second['ansible_facts']['tcplab_keepalive_saved']['originals'] == {'time': 7200, 'intvl': 75, 'probes': 9}
    result = engine(tmp_path, access).restored()
    assert access.values == {'time': 7200, 'intvl': 75, 'probes': 9}
    assert result['changed'] and journal_data(tmp_path) == {}


def test_idempotent_present_writes_nothing(tmp_path):
    access = FakeAccess({'time': 30, 'intvl': 3, 'probes': 3})
    result = engine(tmp_path, access).present({'time': 30, 'intvl': 3, 'probes': 3})
    assert not result['changed'] and access.writes == [] and journal_data(tmp_path) == {}
    assert result['msg'] == 'already set'


def test_namespaces_do_not_collide(tmp_path):
    a, b = FakeAccess(), FakeAccess({'time': 100, 'intvl': 10, 'probes': 5})
    engine(tmp_path, a, FakeNs(1, 'a', False)).present({'time': 2})
    engine(tmp_path, b, FakeNs(2, 'b', False)).present({'time': 3})
    data = journal_data(tmp_path)
    assert data['1']['originals']['time'] == 7200 and data['2']['originals']['time'] == 100
    engine(tmp_path, a, FakeNs(1, 'a', False)).restored()
    assert list(journal_data(tmp_path)) == ['2']
    assert b.values['time'] == 3


def test_entries_of_dead_namespaces_are_pruned(tmp_path):
    engine(tmp_path, FakeAccess(), FakeNs(1, 'a', False)).present({'time': 2})
    engine(tmp_path, FakeAccess(), FakeNs(2, 'b', False), live={2}).present({'time': 3})
    assert list(journal_data(tmp_path)) == ['2']


def test_live_netns_inodes_sees_own_namespace():
    assert os.stat('/proc/self/ns/net').st_ino in _sysctl.live_netns_inodes()


def test_partial_failure_puts_back_what_was_written(tmp_path):
    access = FakeAccess(fail_on={'probes'})
    with pytest.raises(SysctlError) as exc:
        engine(tmp_path, access).present({'time': 30, 'intvl': 3, 'probes': 3})
    assert access.values == {'time': 7200, 'intvl': 75, 'probes': 9}
    assert str(exc.value) == (
        'setting net.ipv4.tcp_keepalive_probes to 3 failed: [Errno 13] Permission denied; '
        'put back net.ipv4.tcp_keepalive_intvl=75, net.ipv4.tcp_keepalive_time=7200')
    # nothing changed in the end, so no journal entry is left either
    assert journal_data(tmp_path) == {}


def test_failure_on_first_write_says_nothing_changed():
    access = FakeAccess(fail_on={'time'})
    with pytest.raises(SysctlError) as exc:
        apply_values(access, access.read(), {'time': 30})
    assert str(exc.value).endswith('; nothing was changed')


def test_failed_undo_is_reported():
    access = FakeAccess(fail_on={'intvl'}, fail_restore=True)
    with pytest.raises(SysctlError) as exc:
        apply_values(access, access.read(), {'time': 30, 'intvl': 3})
    assert 'COULD NOT put back net.ipv4.tcp_keepalive_time: restore them with state: restored' in str(exc.value)


def test_check_mode_changes_nothing(tmp_path):
    access = FakeAccess()
    result = engine(tmp_path, access, check_mode=True).present({'time': 30})
    assert result['changed'] and access.writes == []
    assert not (tmp_path / 'run').exists()
    assert result['current']['time'] == 30
    assert result['diff']['before'] == render({'time': 7200, 'intvl': 75, 'probes': 9})
    assert result['diff']['after'] == render({'time': 30, 'intvl': 75, 'probes': 9})
    assert result['msg'] == 'would set net.ipv4.tcp_keepalive_time=30'


def test_check_mode_restore(tmp_path):
    access = FakeAccess()
    engine(tmp_path, access).present({'time': 30})
    result = engine(tmp_path, access, check_mode=True).restored()
    assert result['changed'] and access.values['time'] == 30
    assert result['current']['time'] == 7200
    assert '4026531840' in journal_data(tmp_path)


def test_restore_nothing(tmp_path):
    result = engine(tmp_path).restored()
    assert not result['changed']
    assert result['msg'] == _sysctl.MSG_NOTHING_TO_RESTORE % (4026531840, 'own')


def test_restore_from_saved_fact_without_journal(tmp_path):
    access = FakeAccess()
    saved = engine(tmp_path, access).present({'time': 30})['ansible_facts']['tcplab_keepalive_saved']
    os.unlink(tmp_path / 'run' / 'journal.json')  # a lost journal
    result = engine(tmp_path, access).restored(saved)
    assert result['changed'] and access.values['time'] == 7200


@pytest.mark.parametrize('saved, message', [
    ({'originals': {'time': 1}}, _sysctl.MSG_SAVED % ({'originals': {'time': 1}},)),
    ('x', _sysctl.MSG_SAVED % ('x',)),
    ({'netns_inode': 5, 'originals': {'time': 1}}, _sysctl.MSG_SAVED_NETNS % (5, 4026531840, 'own')),
    ({'netns_inode': 4026531840, 'originals': {'bogus': 1}},
     _sysctl.MSG_SAVED % ({'netns_inode': 4026531840, 'originals': {'bogus': 1}},)),
    ({'netns_inode': 4026531840, 'originals': {'probes': 900}}, 'tcp_keepalive_probes must be an integer 1..127, got 900'),
])
def test_bad_saved(saved, message):
    with pytest.raises(SysctlError) as exc:
        check_saved(saved, FakeNs())
    assert str(exc.value) == message


def test_persist_writes_and_restores_file(tmp_path):
    access = FakeAccess()
    dropin = tmp_path / 'etc' / 'sysctl.d' / '90-tcplab-keepalive.conf'
    engine(tmp_path, access).present({'time': 30}, str(dropin))
    assert 'net.ipv4.tcp_keepalive_time = 30\n' in dropin.read_text()
    assert oct(os.stat(dropin).st_mode & 0o777) == '0o644'
    engine(tmp_path, access).restored(None, str(dropin))
    assert not dropin.exists()  # it was absent before


def test_persist_restores_previous_content(tmp_path):
    access = FakeAccess()
    dropin = tmp_path / '90.conf'
    dropin.write_text('# mine\nnet.ipv4.tcp_keepalive_time = 600\n')
    engine(tmp_path, access).present({'time': 30}, str(dropin))
    engine(tmp_path, access).present({'time': 40}, str(dropin))
    engine(tmp_path, access).restored(None, str(dropin))
    assert dropin.read_text() == '# mine\nnet.ipv4.tcp_keepalive_time = 600\n'


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / 'journal.json'
    path.write_text('old')

    def broken_rename(src, dst):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(_common.os, 'rename', broken_rename)
    with pytest.raises(OSError):
        _common.atomic_write(str(path), 'new')
    assert path.read_text() == 'old'
    assert os.listdir(tmp_path) == ['journal.json']


def _add_entries(directory, start, count):
    journal = Journal(directory)
    for inode in range(start, start + count):
        with journal.locked() as data:
            data[str(inode)] = {'originals': {'time': inode}}
            journal.save(data)


def test_lock_serialises_concurrent_writers(tmp_path):
    directory = str(tmp_path / 'run')
    ctx = multiprocessing.get_context('fork')
    procs = [ctx.Process(target=_add_entries, args=(directory, n * 1000, 25)) for n in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    data = json.loads((tmp_path / 'run' / 'journal.json').read_text())
    assert len(data) == 100  # no lost update


def test_corrupt_journal_is_reported(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'journal.json').write_text('{not json')
    with pytest.raises(SysctlError) as exc:
        engine(tmp_path).present({'time': 30})
    assert 'is not valid JSON' in str(exc.value)


def test_journal_keeps_a_foreign_json_file(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'journal.json').write_text('[1, 2]\n')
    with pytest.raises(SysctlError) as exc:
        engine(tmp_path).present({'time': 30})
    assert str(exc.value) == _sysctl.MSG_JOURNAL_SHAPE % (tmp_path / 'run' / 'journal.json')
    assert (tmp_path / 'run' / 'journal.json').read_text() == '[1, 2]\n'


def test_bad_originals_in_the_journal_are_named(tmp_path):
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'journal.json').write_text(json.dumps({'4026531840': {
        'netns_inode': 4026531840, 'originals': {'time': 'abc'}}}))
    with pytest.raises(SysctlError) as exc:
        engine(tmp_path).restored()
    assert str(exc.value) == _sysctl.MSG_JOURNAL_ORIGINALS % (tmp_path / 'run' / 'journal.json', 4026531840, {'time': 'abc'})


# -- paths (issue 10 item 17): a clear message naming the fix, nothing left behind ----------------

def params_with(tmp_path, **kw):
    params = {'journal_dir': str(tmp_path / 'run'), 'persist_journal_dir': str(tmp_path / 'lib'), 'persist': False,
              'persist_path': str(tmp_path / 'etc' / '90.conf'), 'state': 'present', 'netns': None,
              'netns_dir': str(tmp_path / 'netns')}
    params.update(kw)
    return params


def test_journal_dir_that_is_a_file(tmp_path):
    (tmp_path / 'x').write_text('mine\n')
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_paths(params_with(tmp_path, journal_dir=str(tmp_path / 'x')))
    assert str(exc.value) == 'journal_dir %s is a file, not a directory: give a directory path' % (tmp_path / 'x')
    assert sorted(os.listdir(tmp_path)) == ['x'] and (tmp_path / 'x').read_text() == 'mine\n'


@pytest.mark.parametrize('option', ['journal_dir', 'persist_journal_dir'])
def test_dir_under_a_file(tmp_path, option):
    (tmp_path / 'x').write_text('mine\n')
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_paths(params_with(tmp_path, state='restored', **{option: str(tmp_path / 'x' / 'sub' / 'dir')}))
    assert str(exc.value) == _sysctl.MSG_PARENT_NOT_DIR % (option, tmp_path / 'x' / 'sub' / 'dir', tmp_path / 'x', 'a file')
    assert sorted(os.listdir(tmp_path)) == ['x']


def test_relative_journal_dir(tmp_path):
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_paths(params_with(tmp_path, journal_dir='run/journal'))
    assert str(exc.value) == _sysctl.MSG_RELATIVE % ('journal_dir', 'run/journal')


def test_netns_dir_that_is_a_file(tmp_path):
    (tmp_path / 'netns').write_text('')
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_paths(params_with(tmp_path, netns='lab1'))
    assert str(exc.value) == _sysctl.MSG_NOT_DIR % ('netns_dir', tmp_path / 'netns', 'a file')


@pytest.mark.parametrize('make, kind', [
    (lambda p: p.mkdir(), 'a directory'),
    (lambda p: os.mkfifo(str(p)), 'a FIFO (named pipe)'),
])
def test_persist_path_that_is_not_a_file(tmp_path, make, kind):
    make(tmp_path / '90.conf')
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_paths(params_with(tmp_path, persist=True, persist_path=str(tmp_path / '90.conf')))
    assert str(exc.value) == _sysctl.MSG_NOT_FILE % (tmp_path / '90.conf', kind)


def test_persist_path_that_is_a_link(tmp_path):
    os.symlink('/dev/null', str(tmp_path / '90.conf'))
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_paths(params_with(tmp_path, persist=True, persist_path=str(tmp_path / '90.conf')))
    assert str(exc.value) == _sysctl.MSG_SYMLINK % (tmp_path / '90.conf', '/dev/null')


def test_persist_path_under_a_file(tmp_path):
    (tmp_path / 'etc').write_text('')
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_paths(params_with(tmp_path, persist=True))
    assert str(exc.value) == _sysctl.MSG_PARENT_NOT_DIR % ('persist_path', tmp_path / 'etc' / '90.conf', tmp_path / 'etc', 'a file')


def test_persist_path_is_not_checked_without_persist(tmp_path):
    (tmp_path / 'etc').write_text('')
    _sysctl.check_paths(params_with(tmp_path))


@pytest.mark.parametrize('name', ['journal.json', 'journal.lock'])
def test_journal_files_that_are_directories(tmp_path, name):
    (tmp_path / 'run' / name).mkdir(parents=True)
    with pytest.raises(SysctlError) as exc:
        engine(tmp_path).present({'time': 30})
    assert str(exc.value) == _sysctl.MSG_JOURNAL_FILE % (tmp_path / 'run' / name, 'a directory', 'journal_dir')
    assert os.listdir(tmp_path / 'run') == [name]


def test_unwritable_journal_dir_is_named(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(_sysctl.os, 'makedirs', denied)
    with pytest.raises(SysctlError) as exc:
        engine(tmp_path).present({'time': 30})
    assert str(exc.value) == _sysctl.MSG_PATH_ERROR % ('journal_dir', tmp_path / 'run', 'Permission denied')


def test_journal_made_by_racing_writers(tmp_path, monkeypatch):
    # before: os.makedirs raised [Errno 17] File exists when another process made the directory first
    real = os.makedirs

    def racing(path, mode=0o777, exist_ok=False):
        real(path, mode)
        real(path, mode, exist_ok=exist_ok)
    monkeypatch.setattr(_sysctl.os, 'makedirs', racing)
    engine(tmp_path).present({'time': 30})
    assert journal_data(tmp_path)['4026531840']['originals']['time'] == 7200


# -- namespaces: persist only where sysctl.d applies at boot (issue 10 item 4) ---------------------

def test_stale_netns_file_is_refused(tmp_path):
    (tmp_path / 'netns').mkdir()
    (tmp_path / 'netns' / 'gone').write_text('')
    with pytest.raises(SysctlError) as exc:
        _sysctl.resolve_netns('gone', str(tmp_path / 'netns'))
    assert str(exc.value) == _sysctl.MSG_NETNS_NOT_NS % (tmp_path / 'netns' / 'gone', 'a file', 'gone')


def fake_proc(tmp_path, pid1_readable, kthreadd=True):
    proc = tmp_path / 'proc'
    for pid in (1, 2):
        (proc / str(pid) / 'ns').mkdir(parents=True)
    if pid1_readable:
        (proc / '1' / 'ns' / 'net').write_text('')
    (proc / '2' / 'ns' / 'net').write_text('')
    (proc / '2' / 'status').write_text('Name:\t%s\nState:\tS (sleeping)\nPPid:\t0\n' % ('kthreadd' if kthreadd else 'sh'))
    (proc / '2' / 'cmdline').write_bytes(b'' if kthreadd else b'sh\0')
    return proc


def test_boot_netns_is_pid1s(tmp_path):
    proc = fake_proc(tmp_path, True)
    assert _sysctl.boot_netns(str(proc)) == (os.stat(proc / '1' / 'ns' / 'net').st_ino, None)


def test_boot_netns_falls_back_to_kthreadd(tmp_path):
    # a PID 1 that is not dumpable hides /proc/1/ns even from root (this VM's init agent does)
    proc = fake_proc(tmp_path, False)
    assert _sysctl.boot_netns(str(proc)) == (os.stat(proc / '2' / 'ns' / 'net').st_ino, None)


def test_boot_netns_unknown(tmp_path):
    proc = fake_proc(tmp_path, False, kthreadd=False)
    inode, why = _sysctl.boot_netns(str(proc))
    assert inode is None and why == 'cannot read %s/1/ns/net: No such file or directory' % proc


def test_boot_netns_of_this_machine_is_the_root_namespace():
    # the test runs in the root namespace of the host
    assert _sysctl.boot_netns()[0] == os.stat('/proc/self/ns/net').st_ino


def test_persist_refused_outside_the_boot_namespace():
    ns = FakeNs(4026532999, 'lab1', False)
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_persist(ns, '/etc/sysctl.d/90-tcplab-keepalive.conf', (4026531840, None))
    assert str(exc.value) == (
        'persist: true writes /etc/sysctl.d/90-tcplab-keepalive.conf, which configures the network namespace of PID 1 '
        'at boot (inode 4026531840), not network namespace lab1 (inode 4026532999): lab hosts and containers get '
        "their keepalive settings from whoever creates their namespace at start (e.g. the container runtime's "
        'sysctls option, or the lab role); set them without persist')
    assert exc.value.extra['persist_refused'] is True
    assert exc.value.extra['boot_netns_inode'] == 4026531840


def test_persist_refused_when_the_boot_namespace_is_unknown():
    with pytest.raises(SysctlError) as exc:
        _sysctl.check_persist(FakeNs(), '/x.conf', (None, 'cannot read /proc/1/ns/net: Permission denied'))
    assert str(exc.value) == _sysctl.MSG_PERSIST_UNKNOWN % ('/x.conf', 'cannot read /proc/1/ns/net: Permission denied')
    assert exc.value.extra['persist_refused'] is True


def test_persist_allowed_in_the_boot_namespace():
    _sysctl.check_persist(FakeNs(), '/x.conf', (4026531840, None))


# -- the lease (issue 10 item 7) -------------------------------------------------------------------

class Clock:
    def __init__(self, now=1700000000.0):
        self.now = now

    def __call__(self):
        return self.now


def leased(tmp_path, access, clock, check_mode=False, ns=None):
    return KeepaliveSysctl(ns or FakeNs(7, 'lab1', False), access, Journal(str(tmp_path / 'run')),
                           Journal(str(tmp_path / 'lib')), check_mode=check_mode, live_inodes=lambda: {7},
                           clock=clock)


def req(holder, owner=None, ttl=3600):
    return _sysctl.LeaseRequest(holder, owner, ttl)


LAB = {'time': 2, 'intvl': 1, 'probes': 3}
ORIGINALS = {'time': 7200, 'intvl': 75, 'probes': 9}


def test_lease_sequence(tmp_path):
    access, clock = FakeAccess(), Clock()
    a = leased(tmp_path, access, clock).present(LAB, lease=req('run-A', 'ctl 1 42'))
    assert a['changed'] and access.values == LAB and not a['lease_busy']
    assert a['lease'] == {'holder': 'run-A', 'owner': 'ctl 1 42', 'since': '2023-11-14T22:13:20Z',
                          'expires': '2023-11-14T23:13:20Z', 'expired': False}
    assert a['msg'].endswith('; took the lease for run run-A until 2023-11-14T23:13:20Z')
    assert 'lease' not in a['ansible_facts']['tcplab_keepalive_saved']
    journal_before = journal_data(tmp_path)
    assert journal_before['7']['lease']['holder'] == 'run-A'

    clock.now += 60
    with pytest.raises(_sysctl.LeaseBusy) as exc:
        leased(tmp_path, access, clock).present({'time': 5}, lease=req('run-B'))
    assert str(exc.value) == (
        'the keepalive sysctls of network namespace lab1 (inode 7) are leased to run run-A (owner ctl 1 42, '
        'since 2023-11-14T22:13:20Z, expires 2023-11-14T23:13:20Z): wait for it to finish (experiment_lease_wait), '
        'or if that run is dead run the tcplab.keepalive.rollback playbook on this host')
    assert exc.value.extra['lease_busy'] is True and exc.value.extra['lease']['holder'] == 'run-A'
    assert access.values == LAB and journal_data(tmp_path) == journal_before

    b_restore = leased(tmp_path, access, clock).restored(lease=req('run-B'))
    assert not b_restore['changed'] and b_restore['lease_busy'] and access.values == LAB
    assert b_restore['msg'] == _sysctl.MSG_LEASE_OTHER % (
        'lab1', 7, 'run-A', 'ctl 1 42', '2023-11-14T22:13:20Z', '2023-11-14T23:13:20Z', 'run-B')
    assert journal_data(tmp_path) == journal_before

    a_restore = leased(tmp_path, access, clock).restored(lease=req('run-A'))
    assert a_restore['changed'] and access.values == ORIGINALS
    assert a_restore['msg'].endswith('; released the lease of run run-A')
    assert a_restore['lease'] is None and a_restore['lease_cleared']['holder'] == 'run-A'
    assert journal_data(tmp_path) == {}

    b = leased(tmp_path, access, clock).present({'time': 5}, lease=req('run-B'))
    assert b['changed'] and access.values['time'] == 5 and b['lease']['holder'] == 'run-B'


def test_operator_present_without_lease_is_refused_while_leased(tmp_path):
    access, clock = FakeAccess(), Clock()
    leased(tmp_path, access, clock).present(LAB, lease=req('run-A'))
    with pytest.raises(_sysctl.LeaseBusy):
        leased(tmp_path, access, clock).present({'time': 30})
    assert access.values == LAB


def test_same_holder_renews(tmp_path):
    access, clock = FakeAccess(), Clock()
    leased(tmp_path, access, clock).present(LAB, lease=req('run-A', ttl=100))
    clock.now += 50
    again = leased(tmp_path, access, clock).present(LAB, lease=req('run-A', ttl=100))
    assert not again['changed']
    assert again['lease']['since'] == '2023-11-14T22:13:20Z' and again['lease']['expires'] == '2023-11-14T22:15:50Z'
    assert again['msg'] == 'already set; renewed the lease for run run-A until 2023-11-14T22:15:50Z'


def test_expired_lease_is_taken_over(tmp_path):
    access, clock = FakeAccess(), Clock()
    leased(tmp_path, access, clock).present(LAB, lease=req('run-A', 'dead controller', ttl=1))
    clock.now += 2
    b = leased(tmp_path, access, clock).present({'time': 5}, lease=req('run-B'))
    assert b['changed'] and b['lease']['holder'] == 'run-B' and b['lease_cleared']['holder'] == 'run-A'
    assert ('took over the expired lease of run run-A (owner dead controller, since 2023-11-14T22:13:20Z, '
            'expired 2023-11-14T22:13:21Z)') in b['msg']
    # the first originals are kept for run-B's restore
    leased(tmp_path, access, clock).restored(lease=req('run-B'))
    assert access.values == ORIGINALS


def test_restored_without_lease_clears_it(tmp_path):
    access, clock = FakeAccess(), Clock()
    leased(tmp_path, access, clock).present(LAB, lease=req('run-A', 'ctl 1 42'))
    result = leased(tmp_path, access, clock).restored()
    assert result['changed'] and access.values == ORIGINALS and journal_data(tmp_path) == {}
    assert result['msg'] == (
        'restored net.ipv4.tcp_keepalive_time=7200, net.ipv4.tcp_keepalive_intvl=75, net.ipv4.tcp_keepalive_probes=9; '
        'cleared the lease of run run-A (owner ctl 1 42, since 2023-11-14T22:13:20Z, expires 2023-11-14T23:13:20Z)')
    assert result['lease_cleared']['holder'] == 'run-A'


def test_lease_without_changes_is_still_recorded(tmp_path):
    access, clock = FakeAccess(dict(LAB)), Clock()
    result = leased(tmp_path, access, clock).present(LAB, lease=req('run-A'))
    assert result['changed'] and access.writes == []
    assert journal_data(tmp_path)['7']['originals'] == LAB
    release = leased(tmp_path, access, clock).restored(lease=req('run-A'))
    assert release['msg'] == 'values were already the originals; released the lease of run run-A'
    assert journal_data(tmp_path) == {}


def test_lease_check_mode_changes_nothing(tmp_path):
    access, clock = FakeAccess(), Clock()
    result = leased(tmp_path, access, clock, check_mode=True).present(LAB, lease=req('run-A'))
    assert result['changed'] and access.writes == [] and not (tmp_path / 'run').exists()
    assert result['msg'].endswith('; would take the lease for run run-A until 2023-11-14T23:13:20Z')
    leased(tmp_path, access, clock).present(LAB, lease=req('run-A'))
    with pytest.raises(_sysctl.LeaseBusy):
        leased(tmp_path, access, clock, check_mode=True).present(LAB, lease=req('run-B'))
    check = leased(tmp_path, access, clock, check_mode=True).restored()
    assert check['msg'].endswith('; would clear the lease of run run-A (owner unknown, since 2023-11-14T22:13:20Z, '
                                 'expires 2023-11-14T23:13:20Z)')
    assert journal_data(tmp_path)['7']['lease']['holder'] == 'run-A' and access.values == LAB


def test_failed_write_gives_the_lease_back(tmp_path):
    access, clock = FakeAccess(fail_on={'time'}), Clock()
    with pytest.raises(SysctlError):
        leased(tmp_path, access, clock).present(LAB, lease=req('run-A'))
    assert journal_data(tmp_path) == {}


def test_lease_of_a_corrupt_record_counts_as_expired():
    view = _sysctl.lease_view({'holder': 'run-A', 'expires': 'soon'}, 1700000000.0)
    assert view['expired'] is True


@pytest.mark.parametrize('params, message', [
    ({'lease': ''}, _sysctl.MSG_LEASE_HOLDER % (200, '')),
    ({'lease': 'run A'}, _sysctl.MSG_LEASE_HOLDER % (200, 'run A')),
    ({'lease': 'x' * 201}, _sysctl.MSG_LEASE_HOLDER % (200, 'x' * 201)),
    ({'lease': 'run\x00'}, _sysctl.MSG_LEASE_HOLDER % (200, 'run\x00')),
    ({'lease_owner': 'me'}, _sysctl.MSG_LEASE_OWNER_ALONE),
    ({'lease': 'r', 'lease_owner': 'x' * 201}, _sysctl.MSG_LEASE_OWNER % (200, 'x' * 201)),
    ({'lease': 'r', 'lease_owner': 'bell\x07'}, _sysctl.MSG_LEASE_OWNER % (200, 'bell\x07')),
    ({'lease': 'r', 'lease_ttl': 0}, _sysctl.MSG_LEASE_TTL % (1, 604800, 0)),
    ({'lease': 'r', 'lease_ttl': 604801}, _sysctl.MSG_LEASE_TTL % (1, 604800, 604801)),
    ({'lease': 'r', 'lease_ttl': True}, _sysctl.MSG_LEASE_TTL % (1, 604800, True)),
])
def test_bad_lease_options(params, message):
    with pytest.raises(SysctlError) as exc:
        _sysctl.lease_request(params)
    assert str(exc.value) == message


def test_lease_options():
    assert _sysctl.lease_request({}) is None
    request = _sysctl.lease_request({'lease': '20240101T000000Z-ab12/nonce', 'lease_owner': ' ana on\n ctl ', 'lease_ttl': 60})
    assert (request.holder, request.owner, request.ttl) == ('20240101T000000Z-ab12/nonce', 'ana on ctl', 60)


def _take(directory, holder, out):
    engine_ = KeepaliveSysctl(FakeNs(7, 'lab1', False), FakeAccess(), Journal(directory), Journal(directory + '-lib'),
                              live_inodes=lambda: {7})
    try:
        engine_.present(LAB, lease=req(holder))
        out.put((holder, 'took'))
    except _sysctl.LeaseBusy as exc:
        out.put((holder, exc.extra['lease']['holder']))


def test_one_of_many_concurrent_runs_gets_the_lease(tmp_path):
    ctx = multiprocessing.get_context('fork')
    out = ctx.Queue()
    procs = [ctx.Process(target=_take, args=(str(tmp_path / 'run'), 'run-%d' % n, out)) for n in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    results = dict(out.get(timeout=5) for proc in procs)
    winners = [holder for holder, what in results.items() if what == 'took']
    assert len(winners) == 1
    assert set(results.values()) == {'took', winners[0]}
    assert journal_data(tmp_path)['7']['lease']['holder'] == winners[0]


# -- the namespace's identity: inode and cookie (_proc.netns_identity) ---------------------------------

@pytest.mark.parametrize('entry, cookie, expected', [
    ({'netns_inode': 7, 'netns_cookie': 40}, 40, False),
    ({'netns_inode': 7, 'netns_cookie': 40}, 41, True),    # a new namespace got the inode of the entry's
    ({'netns_inode': 7}, 41, False),                       # an entry of an older release: the inode alone
    ({'netns_inode': 7, 'netns_cookie': None}, 41, False),  # journalled on a kernel without cookies
    ({'netns_inode': 7, 'netns_cookie': 40}, None, False),  # the cookie cannot be read now: the inode alone
    (None, 41, False),
])
def test_stranger(entry, cookie, expected):
    ns = FakeNs(7, 'lab1', False)
    ns.cookie = cookie
    assert _sysctl.stranger(entry, ns) is expected


def test_prune_dead_drops_the_gone_and_the_recycled_only():
    data = {'1': {'netns_inode': 1, 'netns_cookie': 10}, '2': {'netns_inode': 2, 'netns_cookie': 20},
            '3': {'netns_inode': 3}, '4': {'netns_inode': 4, 'netns_cookie': 41}}
    # 2 is gone; 1 is recycled (a namespace with another cookie has its inode); 4 was judged recycled for an entry
    # with cookie 40, but the entry now there has 41 (made since, for the new namespace): it stays
    assert sorted(_sysctl.prune_dead(data, {1, 3, 4}, {1: 10, 4: 40})) == ['1', '2']
    assert sorted(data) == ['3', '4']


def test_saved_fact_of_another_namespace_with_the_inode_is_refused():
    ns = FakeNs()
    ns.cookie = 41
    with pytest.raises(SysctlError) as exc:
        check_saved({'netns_inode': 4026531840, 'netns_cookie': 40, 'originals': {'time': 1}}, ns)
    assert str(exc.value) == _sysctl.MSG_SAVED_COOKIE % (4026531840, 40, 'own', 41)
    assert check_saved({'netns_inode': 4026531840, 'netns_cookie': 41, 'originals': {'time': 1}}, ns) == {'time': 1}
    assert check_saved({'netns_inode': 4026531840, 'originals': {'time': 1}}, ns) == {'time': 1}


def test_journal_entry_records_the_cookie_or_says_there_is_none(tmp_path):
    ns = FakeNs(7, 'lab1', False)
    ns.cookie = 40
    engine(tmp_path, ns=ns, live={7}).present({'time': 30})
    assert journal_data(tmp_path)['7']['netns_cookie'] == 40
    engine(tmp_path, ns=FakeNs(8, 'lab2', False), live={7, 8}).present({'time': 30})
    assert journal_data(tmp_path)['8']['netns_cookie'] is None     # None: the inode alone


def test_a_kernel_without_cookies_journals_the_inode_alone(monkeypatch, tmp_path):
    """ENOPROTOOPT (Linux < 5.14, bullseye's 5.10) is simulated: this kernel has the option."""
    from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.test__proc import (  # pylint: disable=import-outside-toplevel
        _FakeSocketModule)
    monkeypatch.setattr(_proc, 'socket', _FakeSocketModule())
    ns = _sysctl.resolve_netns(None)
    assert (ns.inode, ns.cookie) == (os.stat('/proc/self/ns/net').st_ino, None)
    assert _sysctl.new_entry(ns, {'time': 1})['netns_cookie'] is None
    assert ns.as_dict()['cookie'] is None


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip'), reason='needs root and ip(8)')


@needs_root
def test_the_child_checks_the_cookie_before_it_writes(netns):
    """The child that enters a namespace refuses one with the right inode but another cookie (as after the
    namespace was deleted and a new one got its inode between resolving and entering)."""
    path = '/run/netns/' + netns
    inode, cookie = _proc.netns_identity(path)
    if cookie is None:
        pytest.skip('the kernel has no SO_NETNS_COOKIE')
    wrong = _sysctl.NetnsAccess(path, inode, cookie=cookie + 1)
    with pytest.raises(_netns.NetnsError) as exc:
        wrong.write('time', 77)
    assert str(exc.value) == _sysctl.MSG_NETNS_RECYCLED % (inode, cookie + 1, cookie)
    with pytest.raises(SysctlError):
        wrong.read()
    right = _sysctl.NetnsAccess(path, inode, cookie=cookie)
    assert right.read()['time'] == 7200
    right.write('time', 77)
    assert right.read()['time'] == 77
    # the engine hands the namespace's cookie to an access made without one (as the module makes it)
    ns = _sysctl.resolve_netns(netns)
    handed = _sysctl.NetnsAccess(ns.path, ns.inode)
    KeepaliveSysctl(ns, handed, Journal('/run/tcplab-test-unused'), None)
    assert (ns.cookie, handed.cookie) == (cookie, cookie)
