# Unit tests of the DROP rule logic: exact argv, check mode runs only probes,
# error messages, purge parsing, the lockout guard. iptables itself is
# replaced by a recorder here only; tests/integration/targets/drop_rule uses
# the real one.
from __future__ import annotations

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _iptables
from ansible_collections.tcplab.keepalive.plugins.module_utils._iptables import (
    Iptables, RuleError, find_ssh_connection, lockout_check, manage, rule_spec, rule_text, tagged_rules, validate)

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
])
def test_bad_input(extra, message):
    with pytest.raises(RuleError) as exc:
        validate(params(**extra))
    assert str(exc.value) == message


def test_purge_needs_no_port_or_tag():
    rule = validate({'state': 'purged', 'ip_version': 'both'})
    assert rule['tag'] is None and rule['ip_version'] == 'both'


class FakeIptables:
    """Records argv; the chain holds `rules` (specs); -C answers from it."""

    def __init__(self, rules=None, listing=''):
        self.calls = []
        self.rules = [list(r) for r in rules or []]
        self.listing = listing

    def __call__(self, argv, check=True, ok_rc=(0,), data=None, what=None):
        self.calls.append(list(argv))
        op = argv[3] if len(argv) > 3 and argv[1] == '-w' else argv[1]
        spec = argv[5:]
        if op == '-V':
            return 0, 'iptables v1.8.9 (nf_tables)\n', ''
        if op == '-C':
            return (0, '', '') if spec in self.rules else (1, '', 'iptables: Bad rule (does a matching rule exist in that chain?).\n')
        if op in ('-I', '-A'):
            self.rules.append(spec)
        if op == '-D':
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
    assert ops(run) == ['-V', '-C', '-C', '-D', '-C', '-D', '-C']


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
