# Unit tests of the keepalive sysctl logic: validation messages, the journal,
# partial-failure rollback, check mode and diff. The kernel is replaced by an
# in-memory FakeAccess only here; tests/integration/targets/sysctl uses the
# real kernel.
from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _common, _sysctl
from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl import (
    Journal, KeepaliveSysctl, SysctlError, apply_values, check_saved, render, validate_values)


@pytest.mark.parametrize('params, expected', [
    ({'time': 30, 'intvl': 3, 'probes': 3}, {'time': 30, 'intvl': 3, 'probes': 3}),
    ({'time': 1}, {'time': 1}),
    ({'intvl': 32767, 'probes': 127}, {'intvl': 32767, 'probes': 127}),
    ({'time': None, 'probes': 1}, {'probes': 1}),
])
def test_valid_values(params, expected):
    assert validate_values(params) == expected


@pytest.mark.parametrize('key, value, message', [
    ('time', True, 'tcp_keepalive_time must be an integer 1..32767 seconds, got True'),
    ('time', False, 'tcp_keepalive_time must be an integer 1..32767 seconds, got False'),
    ('time', '30', "tcp_keepalive_time must be an integer 1..32767 seconds, got '30'"),
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
