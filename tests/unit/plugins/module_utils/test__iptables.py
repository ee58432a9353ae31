# Unit tests of the DROP rule logic: exact argv, check mode runs only probes
# and says "would", error messages, purge parsing, the lockout guard, the
# executable checks, and the dead-man timer's stop (real processes). iptables
# itself is replaced by a recorder here only; tests/unit/plugins/modules/
# test_drop_rule.py and tests/integration/targets/drop_rule use the real one.
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _iptables
from ansible_collections.tcplab.keepalive.plugins.module_utils._iptables import (
    Iptables, RuleError, Timers, family_program, find_program, find_ssh_connection, legacy_tables_present, lockout_check,
    manage, open_tables, rule_spec, rule_text, tagged_rules, validate)
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import starttime

BASE = {'port': 12345, 'tag': 'exp', 'state': 'present', 'ip_version': '4', 'wait': 30,
        'match': 'dport', 'protocol': 'tcp', 'chain': 'INPUT', 'position': 'insert'}
COMMENT = ['-m', 'comment', '--comment', 'tcplab-keepalive:exp', '-j', 'DROP']


def params(**kw):
    out = dict(BASE)
    out.update(kw)
    return out


@pytest.mark.parametrize('extra, spec', [
    ({}, ['-p', 'tcp', '-m', 'tcp', '--dport', '12345'] + COMMENT),
    ({'match': 'sport'}, ['-p', 'tcp', '-m', 'tcp', '--sport', '12345'] + COMMENT),
    ({'protocol': 'udp'}, ['-p', 'udp', '-m', 'udp', '--dport', '12345'] + COMMENT),
    ({'destination': '127.0.0.1'}, ['-p', 'tcp', '-d', '127.0.0.1/32', '-m', 'tcp', '--dport', '12345'] + COMMENT),
    ({'source': '198.18.0.0/24', 'in_interface': 'eth0'},
     ['-p', 'tcp', '-s', '198.18.0.0/24', '-i', 'eth0', '-m', 'tcp', '--dport', '12345'] + COMMENT),
    ({'chain': 'OUTPUT', 'match': 'sport', 'out_interface': 'lo'},
     ['-p', 'tcp', '-o', 'lo', '-m', 'tcp', '--sport', '12345'] + COMMENT),
    ({'ip_version': '6', 'destination': '::1'}, ['-p', 'tcp', '-d', '::1/128', '-m', 'tcp', '--dport', '12345'] + COMMENT),
    ({'port': '8080'}, ['-p', 'tcp', '-m', 'tcp', '--dport', '8080'] + COMMENT),
    ({'port': ' 443 '}, ['-p', 'tcp', '-m', 'tcp', '--dport', '443'] + COMMENT),
    ({'port': '65535'}, ['-p', 'tcp', '-m', 'tcp', '--dport', '65535'] + COMMENT),
])
def test_rule_spec(extra, spec):
    assert rule_spec(validate(params(**extra))) == spec


def test_rule_text_is_iptables_s_format():
    rule = validate(params(destination='127.0.0.1'))
    assert rule_text(rule) == ('-A INPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 12345 '
                               '-m comment --comment "tcplab-keepalive:exp" -j DROP')


@pytest.mark.parametrize('extra, message', [
    ({'port': 0}, _iptables.MSG_PORT % 0),
    ({'port': 70000}, _iptables.MSG_PORT % 70000),
    ({'port': 'abc'}, _iptables.MSG_PORT % 'abc'),
    ({'port': True}, _iptables.MSG_PORT % True),
    ({'port': None}, _iptables.MSG_PORT_REQUIRED % 'present'),
    ({'destination': '300.1.1.1'}, _iptables.MSG_ADDRESS % ('destination', '4', '4', '300.1.1.1')),
    ({'source': '::1'}, _iptables.MSG_ADDRESS % ('source', '4', '4', '::1')),
    ({'ip_version': '6', 'destination': '127.0.0.1'}, _iptables.MSG_ADDRESS % ('destination', '6', '6', '127.0.0.1')),
    ({'tag': 'has space'}, _iptables.MSG_TAG % 'has space'),
    ({'tag': 'x;rm -rf /'}, _iptables.MSG_TAG % 'x;rm -rf /'),
    ({'tag': '$(reboot)'}, _iptables.MSG_TAG % '$(reboot)'),
    ({'tag': 'a' * 33}, _iptables.MSG_TAG % ('a' * 33)),
    ({'tag': None}, _iptables.MSG_TAG % None),
    ({'chain': 'FORWARD'}, _iptables.MSG_CHAIN % 'FORWARD'),
    ({'in_interface': 'eth0', 'chain': 'OUTPUT'}, _iptables.MSG_IFACE_CHAIN % ('in_interface', 'OUTPUT')),
    ({'in_interface': 'bad iface'}, _iptables.MSG_IFACE % ('in_interface', 'bad iface')),
    ({'ip_version': 'both'}, _iptables.MSG_IP_VERSION % 'both'),
    ({'expire_after': 0}, _iptables.MSG_EXPIRE % 0),
    # the valid range is named for every numeric option, and text that is not an integer is refused
    ({'port': 65536}, 'port must be an integer 1..65535, got 65536'),
    ({'port': '65536'}, "port must be an integer 1..65535, got '65536'"),
    ({'port': '0'}, "port must be an integer 1..65535, got '0'"),
    ({'port': -1}, 'port must be an integer 1..65535, got -1'),
    ({'port': 80.0}, 'port must be an integer 1..65535, got 80.0'),
    ({'port': '80.5'}, "port must be an integer 1..65535, got '80.5'"),
    ({'port': '9' * 40}, "port must be an integer 1..65535, got '%s'" % ('9' * 40)),
    ({'port': [80]}, 'port must be an integer 1..65535, got [80]'),
    ({'expire_after': -5}, 'expire_after must be an integer number of seconds 1..604800 (7 days), got -5'),
    ({'expire_after': 604801}, 'expire_after must be an integer number of seconds 1..604800 (7 days), got 604801'),
    ({'expire_after': 10 ** 30}, 'expire_after must be an integer number of seconds 1..604800 (7 days), got %d' % 10 ** 30),
    ({'expire_after': 'soon'}, "expire_after must be an integer number of seconds 1..604800 (7 days), got 'soon'"),
    ({'expire_after': True}, 'expire_after must be an integer number of seconds 1..604800 (7 days), got True'),
    ({'wait': -1}, 'wait must be an integer number of seconds 0..3600, got -1'),
    ({'wait': '3601'}, "wait must be an integer number of seconds 0..3600, got '3601'"),
    ({'tag': ''}, _iptables.MSG_TAG % ''),
    ({'tag': 'tkdr:x'}, _iptables.MSG_TAG % 'tkdr:x'),
    ({'tag': 'tkdr"x'}, _iptables.MSG_TAG % 'tkdr"x'),
    ({'tag': 'a' * 300}, _iptables.MSG_TAG % ('a' * 300)),
    ({'state': 'absent', 'expire_after': 60}, _iptables.MSG_EXPIRE_STATE % 'absent'),
    ({'state': 'purged', 'port': 80}, _iptables.MSG_PURGE_OPTION % 'port'),
    ({'state': 'purged', 'port': None, 'destination': '198.19.50.1'}, _iptables.MSG_PURGE_OPTION % 'destination'),
    ({'state': 'purged', 'port': None, 'expire_after': 60}, _iptables.MSG_PURGE_OPTION % 'expire_after'),
])
def test_bad_input(extra, message):
    with pytest.raises(RuleError) as exc:
        validate(params(**extra))
    assert str(exc.value) == message


def test_purged_takes_no_rule_options():
    with pytest.raises(RuleError) as exc:
        validate({'state': 'purged', 'in_interface': 'eth0'})
    assert str(exc.value) == ("state: purged takes no in_interface: it removes every rule of the tag (of every tag when "
                              "tag is not given); to remove one rule use state: absent with that rule's options")


@pytest.mark.parametrize('extra, key, value', [
    ({'port': '300'}, 'port', 300),
    ({'expire_after': '300'}, 'expire_after', 300),
    ({'expire_after': 604800}, 'expire_after', 604800),
    ({'wait': '0'}, 'wait', 0),
    ({'wait': '+5'}, 'wait', 5),
])
def test_integer_text_is_accepted(extra, key, value):
    # k=v arguments and -e variables arrive as text, as Ansible's own int options take them
    assert validate(params(**extra))[key] == value


def test_tag_fits_the_comment_limit():
    # iptables comments hold 256 characters; the longest tag makes a comment far below that
    assert len(_iptables.comment('a' * 32)) <= 256
    assert validate(params(tag='a' * 32))['tag'] == 'a' * 32


def test_purge_needs_no_port_or_tag():
    rule = validate({'state': 'purged', 'ip_version': 'both'})
    assert rule['tag'] is None and rule['ip_version'] == 'both'


class FakeIptables:
    """Records argv; the chain holds `rules` (specs); -C answers from it."""

    def __init__(self, rules=None, listing='', backend='nf_tables'):
        self.backend = backend
        self.calls = []
        self.rules = [list(r) for r in rules or []]
        self.listing = listing

    def __call__(self, argv, check=True, ok_rc=(0,), data=None, what=None):
        self.calls.append(list(argv))
        op = argv[3] if len(argv) > 3 and argv[1] == '-w' else argv[1]
        spec = argv[5:]
        if op == '-V':
            return 0, '%s v1.8.9 (%s)\n' % (os.path.basename(argv[0]).split('-')[0], self.backend), ''
        if op == '-C':
            return (0, '', '') if spec in self.rules else (1, '', 'iptables: Bad rule (does a matching rule exist in that chain?).\n')
        if op in ('-I', '-A'):
            self.rules.append(spec)
        if op == '-D':
            if spec not in self.rules:
                return 1, '', 'iptables: Bad rule (does a matching rule exist in that chain?).\n'
            self.rules.remove(spec)
        if op == '-S':
            return 0, self.listing, ''
        return 0, '', ''


class NoTimers:
    def load(self, key):
        return None

    def alive(self, info):
        return False

    def cancel(self, key):
        return False

    def keys_of_netns(self):
        return []


def ops(run):
    return [c[3] if c[1] == '-w' else c[1] for c in run.calls]


def test_present_inserts_once():
    run = FakeIptables()
    rule = validate(params())
    result = manage(rule, {'4': Iptables(run, 'iptables', 30)}, NoTimers())
    assert result['changed'] and ops(run) == ['-V', '-C', '-I', '-C']
    assert run.calls[2] == ['iptables', '-w', '30', '-I', 'INPUT'] + rule_spec(rule)
    again = manage(rule, {'4': Iptables(run, 'iptables', 30)}, NoTimers())
    assert not again['changed'] and ops(run)[4:] == ['-V', '-C']


def test_append_position():
    run = FakeIptables()
    manage(validate(params(position='append')), {'4': Iptables(run, 'iptables', 5)}, NoTimers())
    assert run.calls[2][:5] == ['iptables', '-w', '5', '-A', 'INPUT']


def test_check_mode_runs_only_probes():
    run = FakeIptables()
    result = manage(validate(params()), {'4': Iptables(run, 'iptables', 30)}, NoTimers(), check_mode=True)
    assert result['changed']
    assert set(ops(run)) <= {'-V', '-C'}
    assert result['diff']['after'].startswith('-A INPUT')


def test_absent_removes_every_copy():
    rule = validate(params())
    spec = rule_spec(rule)
    run = FakeIptables([spec, spec])
    result = manage(dict(rule, state='absent'), {'4': Iptables(run, 'iptables', 30)}, NoTimers())
    assert result['changed'] and run.rules == []
    # -D until iptables says there is none: no -C before each copy (each iptables run is slow on a lab VM)
    assert ops(run) == ['-V', '-D', '-D', '-D']


def test_busy_lock_is_an_error_not_absent():
    def busy(argv, check=True, ok_rc=(0,), data=None, what=None):
        if '-V' in argv:
            return 0, 'iptables v1.8.9 (legacy)', ''
        return 4, '', 'Another app is currently holding the xtables lock. Stopped waiting after 1s.\n'
    with pytest.raises(RuleError) as exc:
        manage(validate(params(state='absent', wait=1)), {'4': Iptables(busy, 'iptables', 1)}, NoTimers())
    assert str(exc.value) == _iptables.MSG_LOCK_BUSY % 1


LISTING = '''-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 12345 -m comment --comment "tcplab-keepalive:exp" -j DROP
-A INPUT -p tcp -m tcp --dport 80 -m comment --comment "not ours: tcplab-keepalive:exp" -j DROP
-A OUTPUT -p tcp -m tcp --sport 5 -m comment --comment tcplab-keepalive:other -j DROP
'''


def test_tagged_rules():
    assert tagged_rules(LISTING.splitlines()) == [
        ('INPUT', ['-d', '127.0.0.1/32', '-p', 'tcp', '-m', 'tcp', '--dport', '12345', '-m', 'comment',
                   '--comment', 'tcplab-keepalive:exp', '-j', 'DROP']),
        ('OUTPUT', ['-p', 'tcp', '-m', 'tcp', '--sport', '5', '-m', 'comment', '--comment',
                    'tcplab-keepalive:other', '-j', 'DROP']),
    ]
    assert [c for c, dummy in tagged_rules(LISTING.splitlines(), 'other')] == ['OUTPUT']


def test_purge_deletes_only_ours():
    run = FakeIptables(listing=LISTING)
    for chain, spec in tagged_rules(LISTING.splitlines()):
        run.rules.append(spec)
    result = manage(validate({'state': 'purged'}), {'4': Iptables(run, 'iptables', 30)}, NoTimers())
    deletes = [c for c in run.calls if '-D' in c]
    assert len(deletes) == 2 and result['changed'] and len(result['removed']) == 2
    assert all('--dport 22' not in ' '.join(c) and '--dport 80' not in ' '.join(c) for c in deletes)


SSH = '198.18.0.1 50022 198.18.0.10 22'


@pytest.mark.parametrize('extra, refused', [
    ({'port': 22}, True),
    ({'port': 22, 'destination': '198.18.0.10'}, True),
    ({'port': 22, 'destination': '127.0.0.1'}, False),
    ({'port': 22, 'source': '198.18.0.0/24'}, True),
    ({'port': 22, 'source': '10.9.9.9'}, False),
    ({'port': 12345}, False),
    ({'port': 22, 'chain': 'OUTPUT', 'match': 'sport'}, True),
    ({'port': 22, 'chain': 'OUTPUT'}, False),
    ({'port': 50022, 'match': 'sport'}, True),
    ({'port': 22, 'protocol': 'udp'}, False),
    ({'port': 22, 'allow_lockout': True}, False),
])
def test_lockout_guard(extra, refused):
    rule = validate(params(**extra))
    if refused:
        with pytest.raises(RuleError) as exc:
            lockout_check(rule, SSH)
        assert 'allow_lockout: true' in str(exc.value)
    else:
        lockout_check(rule, SSH)


def test_lockout_guard_refuses_before_any_change():
    run = FakeIptables()
    with pytest.raises(RuleError):
        manage(validate(params(port=22)), {'4': Iptables(run, 'iptables', 30)}, NoTimers(), ssh_connection=SSH)
    assert set(ops(run)) <= {'-V', '-C'}


def test_ssh_connection_found_in_an_ancestor():
    tree = {100: ({}, 50), 50: ({'SSH_CONNECTION': SSH}, 1)}
    assert find_ssh_connection({}, 100, tree.get) == SSH
    assert find_ssh_connection({'SSH_CONNECTION': 'x'}, 100, tree.get) == 'x'
    assert find_ssh_connection({}, 100, {100: ({}, 1)}.get) is None


# -- check mode says "would", the timer is re-armed when expire_after changes (issue 10 item 13) --------------

class FakeTimers:
    """Timer records in memory; arm/cancel are recorded in events (the real ones: test_timer_* below)."""

    def __init__(self, records=None):
        self.records = dict(records or {})
        self.events = []

    def load(self, key):
        return self.records.get(key)

    def alive(self, info):
        return bool(info)

    def arm(self, key, seconds, check_argv, delete_argv, version='4'):
        self.events.append(('arm', key, seconds))
        self.records[key] = {'pid': 4242, 'start': 1, 'expires_at': time.time() + seconds, 'expire_after': seconds,
                             'rule': delete_argv, 'ip_version': version}
        return self.records[key]

    def cancel(self, key):
        self.events.append(('cancel', key))
        return self.records.pop(key, None) is not None

    def keys_of_netns(self):
        return sorted(self.records)


def armed(rule, seconds, version='4', backend='nf_tables'):
    key = _iptables.timer_key(version, rule['chain'], rule_spec(rule), backend)
    argv = ['iptables', '-w', '30', '-D', rule['chain']] + rule_spec(rule)
    return key, {key: {'pid': 4241, 'start': 1, 'expires_at': time.time() + seconds - 50, 'expire_after': seconds,
                       'rule': argv, 'ip_version': version}}


@pytest.mark.parametrize('extra, message', [
    ({}, 'would insert'),
    ({'position': 'append'}, 'would append'),
    ({'expire_after': 60}, 'would insert, would arm the timer: 60 s from now'),
])
def test_check_mode_says_would(extra, message):
    run = FakeIptables()
    timers = FakeTimers()
    result = manage(validate(params(**extra)), {'4': [Iptables(run, 'iptables', 30)]}, timers, check_mode=True)
    assert result['changed'] and result['msg'] == message
    assert set(ops(run)) <= {'-V', '-C'} and timers.events == []


def test_check_mode_absent_says_would_remove():
    rule = validate(params())
    key, records = armed(rule, 300)
    run = FakeIptables([rule_spec(rule)])
    timers = FakeTimers(records)
    result = manage(dict(rule, state='absent'), {'4': [Iptables(run, 'iptables', 30)]}, timers, check_mode=True)
    assert result['changed'] and result['msg'] == 'would remove (nf_tables), would cancel its timer'
    assert run.rules == [rule_spec(rule)] and timers.events == [] and set(ops(run)) <= {'-V', '-C'}
    done = manage(dict(rule, state='absent'), {'4': [Iptables(run, 'iptables', 30)]}, timers)
    assert done['msg'] == 'removed (nf_tables), cancelled its timer' and run.rules == [] and timers.events == [('cancel', key)]


@pytest.mark.parametrize('armed_with, asked, changed, events', [
    (300, 600, True, ['cancel', 'arm']),      # longer: re-armed from now
    (300, 60, True, ['cancel', 'arm']),       # shorter: re-armed from now
    (300, 300, False, []),                    # the same: the timer and its deadline stay
    (300, None, False, []),                   # none: the timer armed earlier stays
])
def test_expire_after_rearms(armed_with, asked, changed, events):
    rule = validate(params(expire_after=asked))
    key, records = armed(rule, armed_with)
    old = dict(records[key])
    run = FakeIptables([rule_spec(rule)])
    timers = FakeTimers(records)
    result = manage(rule, {'4': [Iptables(run, 'iptables', 30)]}, timers)
    assert result['changed'] is changed
    assert [event[0] for event in timers.events] == events
    assert set(ops(run)) <= {'-V', '-C'}
    if changed:
        assert result['expiry']['expire_after'] == asked
        assert abs(result['expiry']['expires_at'] - (time.time() + asked)) < 5
        assert result['msg'].startswith('already present, re-armed the timer: removes the rule at ')
        assert result['msg'].endswith('(%d s from now) instead of %s (expire_after 300)' % (asked, _iptables.when(old['expires_at'])))
    else:
        assert result['expiry'] == old
        assert result['msg'] == ('already present, the timer armed earlier stays: removes the rule at %s (expire_after 300)'
                                 % _iptables.when(old['expires_at']))


def test_check_mode_rearm_says_would_and_keeps_the_timer():
    rule = validate(params(expire_after=600))
    key, records = armed(rule, 300)
    old = dict(records[key])
    timers = FakeTimers(records)
    result = manage(rule, {'4': [Iptables(FakeIptables([rule_spec(rule)]), 'iptables', 30)]}, timers, check_mode=True)
    assert result['changed'] and timers.events == [] and result['expiry'] == old
    assert result['msg'] == ('already present, would re-arm the timer: 600 s from now instead of %s (expire_after 300)'
                             % _iptables.when(old['expires_at']))


def test_a_timer_left_by_a_gone_rule_is_cancelled_when_the_rule_comes_back_without_one():
    rule = validate(params())
    key, records = armed(rule, 300)
    timers = FakeTimers(records)
    result = manage(rule, {'4': [Iptables(FakeIptables(), 'iptables', 30)]}, timers)
    assert result['changed'] and timers.events == [('cancel', key)]
    assert result['msg'] == 'inserted, cancelled the timer left by an earlier copy of the rule'


# -- purge and absent in every backend (issue 10 item 11; for real in tests/unit/plugins/modules) --------------

def test_purge_looks_in_every_program_and_cancels_timers_after_the_rules():
    nft = FakeIptables(listing=LISTING)
    legacy = FakeIptables(listing=LISTING, backend='legacy')
    for run in (nft, legacy):
        run.rules = [spec for dummy, spec in tagged_rules(LISTING.splitlines())]
    rule = validate(params(port=12345, destination='127.0.0.1'))
    key, records = armed(rule, 300, backend='legacy')
    v6key, v6records = armed(validate(params(ip_version='6', destination='::1')), 300, version='6')
    records.update(v6records)
    timers = FakeTimers(records)
    cancel = timers.cancel

    def cancel_after_the_rules(key):
        # a purge that fails half-way leaves every remaining rule its dead-man timer
        assert nft.rules == [] and legacy.rules == []
        return cancel(key)
    timers.cancel = cancel_after_the_rules
    result = manage(validate({'state': 'purged'}), {'4': [Iptables(nft, 'iptables', 30), Iptables(legacy, 'iptables-legacy', 30)]},
                    timers)
    assert [item['backend'] for item in result['removed']] == ['nf_tables', 'nf_tables', 'legacy', 'legacy']
    assert nft.rules == [] and legacy.rules == []
    # the IPv6 rule's timer stays: ip_version 4 purges IPv4 rules only
    assert timers.events == [('cancel', key)] and v6key in timers.records
    assert result['msg'] == 'removed 4 tagged rule(s) and cancelled 1 timer(s) (looked in nf_tables, legacy)'


def test_absent_without_executable_looks_in_every_program():
    rule = validate(params())
    nft, legacy = FakeIptables(), FakeIptables([rule_spec(rule)], backend='legacy')
    result = manage(dict(rule, state='absent'), {'4': [Iptables(nft, 'iptables', 30), Iptables(legacy, 'iptables-legacy', 30)]},
                    FakeTimers())
    assert result['changed'] and result['msg'] == 'removed (legacy)' and legacy.rules == []
    assert result['backend'] == 'nf_tables' and result['backends'] == ['nf_tables', 'legacy']


@pytest.mark.parametrize('state, executable, legacy_filter, programs', [
    ('purged', None, True, ['/usr/sbin/iptables', '/usr/sbin/iptables-legacy']),
    ('purged', None, False, ['/usr/sbin/iptables']),          # no legacy table here: not listed (that would create one)
    ('purged', 'iptables-legacy', True, ['/usr/sbin/iptables-legacy', '/usr/sbin/iptables-nft']),
    ('absent', None, True, ['/usr/sbin/iptables', '/usr/sbin/iptables-legacy']),
    ('absent', 'iptables-legacy', True, ['/usr/sbin/iptables-legacy']),
    ('present', None, True, ['/usr/sbin/iptables']),
])
def test_open_tables(monkeypatch, tmp_path, state, executable, legacy_filter, programs):
    names = tmp_path / 'ip_tables_names'
    names.write_text('filter\nraw\n' if legacy_filter else 'raw\n')
    monkeypatch.setattr(_iptables, 'LEGACY_TABLES', {'4': str(names), '6': str(names)})

    def run(argv, check=True, ok_rc=(0,), data=None, what=None):
        backend = 'legacy' if 'legacy' in argv[0] else 'nf_tables'
        return (0, 'iptables v1.8.9 (%s)\n' % backend, '') if argv[1] == '-V' else (0, '', '')
    rule = validate(params(state=state, port=None if state == 'purged' else 1))
    tables = open_tables(rule, executable, run, lambda name: '/usr/sbin/' + name)
    assert [program.binary for program in tables['4']] == programs


def test_purged_on_a_host_without_iptables_finds_nothing_to_remove():
    """A host without any iptables program (a lab VM's client: only the server needs one) cannot hold a rule of
    ours: purged (rollback.yml) says so and succeeds; present still names the package to install."""
    def run(argv, check=True, ok_rc=(0,), data=None, what=None):
        raise AssertionError('nothing may run: %s' % argv)
    rule = validate(params(state='purged', port=None, ip_version='both'))
    tables = open_tables(rule, None, run, lambda name: None)
    assert tables == {'4': [], '6': []}
    result = manage(rule, tables, FakeTimers())
    assert not result['changed'] and result['removed'] == [] and result['backends'] == []
    assert result['msg'] == ('removed 0 tagged rule(s) and cancelled 0 timer(s) '
                             '(no iptables program here: no rule of ours can be)')
    with pytest.raises(RuleError) as exc:
        open_tables(validate(params()), None, run, lambda name: None)
    assert 'apt-get install' in str(exc.value)


def test_legacy_tables_present(tmp_path):
    names = tmp_path / 'names'
    names.write_text('mangle\nfilter\n')
    assert legacy_tables_present('4', {'4': str(names)})
    names.write_text('mangle\n')
    assert not legacy_tables_present('4', {'4': str(names)})
    assert not legacy_tables_present('4', {'4': str(tmp_path / 'missing')})


# -- the executable is an iptables program, or a clear error (issue 10 item 17) -------------------------------

def real_run(argv, check=True, ok_rc=(0,), data=None, what=None):
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, LANG='C', LC_ALL='C'), check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_bin_false_is_not_iptables():
    with pytest.raises(RuleError) as exc:
        manage(validate(params()), {'4': [Iptables(real_run, '/bin/false', 30)]}, FakeTimers())
    assert str(exc.value) == _iptables.MSG_NOT_IPTABLES % {'program': '/bin/false', 'family': 'iptables', 'rc': 1, 'out': ''}
    assert str(exc.value) == ('executable /bin/false did not behave like iptables: "/bin/false -V" exited with rc=1 and printed '
                              "'', where iptables prints \"iptables v1.8.9 (nf_tables)\" or similar: give the path of iptables, "
                              'iptables-legacy or iptables-nft')


def test_the_other_family_is_named():
    run = FakeIptables()
    with pytest.raises(RuleError) as exc:
        Iptables(run, '/usr/sbin/ip6tables', 30, '4').probe()
    assert str(exc.value) == ('executable /usr/sbin/ip6tables is ip6tables, the program of IPv6 rules: for IPv6 set '
                              'ip_version: 6 (the module then runs ip6tables); for IPv4 give the path of iptables, '
                              'iptables-legacy or iptables-nft')


def test_find_program(tmp_path):
    plain = tmp_path / 'plain'
    plain.write_text('not a program\n')
    script = tmp_path / 'script'
    script.write_text('just words\n')
    script.chmod(0o755)
    hint = 'give the path of iptables, iptables-legacy or iptables-nft'
    cases = [
        ('/usr', 'executable /usr is a directory, not a program: ' + hint),
        ('/usr/', 'executable /usr/ is a directory, not a program: ' + hint),
        (str(plain), 'executable %s is not an executable program (no execute permission): %s' % (plain, hint)),
        (str(script), 'executable %s is not an executable program (neither an ELF binary nor a #! script): %s' % (script, hint)),
        ('sbin/iptables', 'executable sbin/iptables is a relative path: %s (absolute), or a program name in PATH' % hint),
        (str(tmp_path / 'missing'), '%s not found in PATH or /usr/sbin, /sbin, /usr/bin, /bin: install iptables '
                                    '(Debian/Ubuntu: apt-get install iptables), or %s' % (tmp_path / 'missing', hint)),
        ('iptables-nope', 'iptables-nope not found in PATH or /usr/sbin, /sbin, /usr/bin, /bin: install iptables '
                          '(Debian/Ubuntu: apt-get install iptables), or ' + hint),
    ]
    for name, message in cases:
        with pytest.raises(RuleError) as exc:
            find_program(name, '4', lambda dummy: None)
        assert str(exc.value) == message
    assert find_program('iptables', '4', lambda name: '/usr/sbin/' + name) == '/usr/sbin/iptables'
    assert find_program('/bin/false', '4', lambda dummy: None) == '/bin/false'


@pytest.mark.parametrize('name, version, program', [
    ('iptables-legacy', '4', 'iptables-legacy'),
    ('iptables-legacy', '6', 'ip6tables-legacy'),
    ('/usr/sbin/iptables-nft', '6', '/usr/sbin/ip6tables-nft'),
    ('/opt/iptables/bin/iptables', '6', '/opt/iptables/bin/ip6tables'),
    ('ip6tables-legacy', '6', 'ip6tables-legacy'),
])
def test_family_program(name, version, program):
    assert family_program(name, version) == program


# -- the timer is stopped for real, and only when it is ours (issue 10 items 12 and 13) -----------------------

FAKE_TIMER = r'''
import json, signal, sys, time
args = json.loads(sys.argv[2])
if args["term"] == "slow":
    signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), sys.exit(0)))
elif args["term"] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
'''


@pytest.fixture
def fake_timer(tmp_path):
    """A process that looks like a timer (marker and state file in its command line) and handles SIGTERM as asked."""
    started = []

    def start(term, key='1-abc', start_offset=0, handle=None):
        timers = Timers(str(tmp_path))
        timers.patience = 0.5
        state = timers.path(key)
        proc = subprocess.Popen([sys.executable, '-c', FAKE_TIMER, _iptables.TIMER_MARKER,
                                 json.dumps({'term': term, 'state': state})], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline() == 'ready\n'
        info = {'pid': proc.pid, 'start': starttime(proc.pid) + start_offset, 'expires_at': time.time() + 300,
                'expire_after': 300, 'rule': [], 'handle': handle or state}
        with open(state, 'w') as handle_file:
            json.dump(info, handle_file)
        return timers, key, proc
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_timer_cancel_waits_until_the_timer_has_gone(fake_timer):
    timers, key, proc = fake_timer('slow')
    assert timers.cancel(key) is True
    # gone (a zombie until its parent, here this test, reaps it) when cancel returns
    assert starttime(proc.pid) is None
    assert not os.path.exists(timers.path(key))


def test_timer_that_ignores_sigterm_gets_sigkill(fake_timer):
    timers, key, proc = fake_timer('ignore')
    assert timers.cancel(key) is True
    assert starttime(proc.pid) is None and proc.wait(5) == -9


@pytest.mark.parametrize('start_offset, other_handle', [(1, False), (0, True)])
def test_timer_not_ours_is_never_signalled(fake_timer, tmp_path, start_offset, other_handle):
    # a record whose start time does not match (a reused pid), or naming another state file, is not our timer
    timers, key, proc = fake_timer('default', start_offset=start_offset,
                                   handle=str(tmp_path / 'other.json') if other_handle else None)
    assert timers.cancel(key) is False
    time.sleep(0.2)
    assert proc.poll() is None and starttime(proc.pid) is not None
    assert not os.path.exists(timers.path(key))


@pytest.mark.parametrize('legacy_tables', [True, False], ids=['legacy-tables', 'no-legacy-table'])
def test_other_backends_do_not_ask_the_program_first_already_is(tmp_path, monkeypatch, legacy_tables):
    # Debian: iptables is a link to iptables-nft; iptables-legacy is another program, asked only where the
    # namespace has a legacy table (without one it holds no rule)
    monkeypatch.setattr(_iptables, 'legacy_tables_present', lambda version, paths=None: legacy_tables)
    (tmp_path / 'iptables-nft').write_text('')
    (tmp_path / 'iptables').symlink_to(tmp_path / 'iptables-nft')
    (tmp_path / 'iptables-legacy').write_text('')
    run = FakeIptables()
    first = Iptables(run, str(tmp_path / 'iptables'), 30)
    first.probe()
    _iptables.other_backends(first, run, lambda name: str(tmp_path / name) if (tmp_path / name).exists() else None)
    assert [call[0] for call in run.calls] == [str(tmp_path / 'iptables')] + ([str(tmp_path / 'iptables-legacy')] if legacy_tables else [])
