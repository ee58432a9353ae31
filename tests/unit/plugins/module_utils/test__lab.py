# Unit tests of the lab logic: validation messages, address planning, and what a lab leaves in the kernel.
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _lab
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import Runner
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab import (
    Lab, LabError, normalize_hosts, parse_network, plan_addresses, veth_name)
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_ssh import render_sshd_config, sshd_pids_of


@pytest.mark.parametrize('hosts, expected', [
    (['a'], [{'name': 'a', 'kind': 'netns', 'transport': 'netns'}]),
    (['a', {'name': 'b', 'transport': 'ssh'}],
     [{'name': 'a', 'kind': 'netns', 'transport': 'netns'}, {'name': 'b', 'kind': 'netns', 'transport': 'ssh'}]),
    ([{'name': 'c'}], [{'name': 'c', 'kind': 'netns', 'transport': 'netns'}]),
    ([{'name': 'c', 'kind': 'netns', 'release': None}], [{'name': 'c', 'kind': 'netns', 'transport': 'netns'}]),
    ([], []),
    # a VM is reached over ssh, whatever the lab's default transport; bookworm unless told
    ([{'name': 'vm1', 'kind': 'vm'}], [{'name': 'vm1', 'kind': 'vm', 'transport': 'ssh', 'release': 'bookworm'}]),
    ([{'name': 'vm-2', 'kind': 'vm', 'release': 'trixie', 'transport': 'ssh'}],
     [{'name': 'vm-2', 'kind': 'vm', 'transport': 'ssh', 'release': 'trixie'}]),
    ([{'name': 'old', 'kind': 'vm', 'release': 'bullseye', 'transport': None}],
     [{'name': 'old', 'kind': 'vm', 'transport': 'ssh', 'release': 'bullseye'}]),
])
def test_normalize_hosts(hosts, expected):
    assert normalize_hosts(hosts, 'netns') == expected


def test_normalize_hosts_vm_ignores_the_lab_default_transport():
    assert normalize_hosts([{'name': 'vm1', 'kind': 'vm'}, 'n'], 'ssh') == [
        {'name': 'vm1', 'kind': 'vm', 'transport': 'ssh', 'release': 'bookworm'},
        {'name': 'n', 'kind': 'netns', 'transport': 'ssh'}]


@pytest.mark.parametrize('hosts, message', [
    (['bad name'], _lab.MSG_HOST_NAME % ('bad name',)),
    (['1abc'], _lab.MSG_HOST_NAME % ('1abc',)),
    (['a;rm -rf /'], _lab.MSG_HOST_NAME % ('a;rm -rf /',)),
    (['x' * 33], _lab.MSG_HOST_NAME % ('x' * 33,)),
    (['a', 'a'], _lab.MSG_HOST_DUP % 'a'),
    ([{'name': 'a', 'transport': 'telnet'}], _lab.MSG_TRANSPORT % ('a', 'telnet')),
    ([{'host': 'a'}], _lab.MSG_HOST_TYPE % ({'host': 'a'},)),
    ([42], _lab.MSG_HOST_TYPE % (42,)),
    ([{'name': 'a', 'kind': 'vm', 'image': 'x'}], _lab.MSG_HOST_TYPE % ({'name': 'a', 'kind': 'vm', 'image': 'x'},)),
    ([{'name': 'a', 'kind': 'container'}], _lab.MSG_KIND % ('a', 'container')),
    ([{'name': 'a', 'release': 'bookworm'}], _lab.MSG_RELEASE_NETNS % 'a'),
    ([{'name': 'a', 'kind': 'netns', 'release': 'trixie'}], _lab.MSG_RELEASE_NETNS % 'a'),
    ([{'name': 'vm1', 'kind': 'vm', 'release': 'buster'}], _lab.MSG_RELEASE % ('vm1', 'buster')),
    ([{'name': 'vm1', 'kind': 'vm', 'release': 12}], _lab.MSG_RELEASE % ('vm1', 12)),
    ([{'name': 'vm1', 'kind': 'vm', 'transport': 'netns'}], _lab.MSG_VM_TRANSPORT % 'vm1'),
    ([{'name': 'vm1', 'kind': 'vm', 'transport': 'telnet'}], _lab.MSG_TRANSPORT % ('vm1', 'telnet')),
    ([{'name': 'Vm_1', 'kind': 'vm'}], _lab.MSG_VM_NAME % ('Vm_1',)),
    (['vm1', {'name': 'vm1', 'kind': 'vm'}], _lab.MSG_HOST_DUP % 'vm1'),
])
def test_normalize_hosts_errors(hosts, message):
    with pytest.raises(LabError) as exc:
        normalize_hosts(hosts, 'netns')
    assert str(exc.value) == message


def test_message_names_the_fix():
    assert 'starting with a letter' in _lab.MSG_HOST_NAME
    assert 'e.g. 198.18.0.0/24' in _lab.MSG_NETWORK_RANGE
    assert 'remove release, or add kind: vm' in _lab.MSG_RELEASE_NETNS
    assert 'remove transport: netns' in _lab.MSG_VM_TRANSPORT
    assert 'bullseye, bookworm, trixie' in _lab.MSG_RELEASE


@pytest.mark.parametrize('network, message', [
    ('10.0.0.0/24', _lab.MSG_NETWORK_RANGE % '10.0.0.0/24'),
    ('198.20.0.0/24', _lab.MSG_NETWORK_RANGE % '198.20.0.0/24'),
    ('198.16.0.0/14', _lab.MSG_NETWORK_RANGE % '198.16.0.0/14'),
    ('198.18.0.1/24', _lab.MSG_NETWORK % '198.18.0.1/24'),
    ('nonsense', _lab.MSG_NETWORK % 'nonsense'),
    ('198.18.0.0/30', _lab.MSG_NETWORK % '198.18.0.0/30'),
])
def test_parse_network_errors(network, message):
    with pytest.raises(LabError) as exc:
        parse_network(network)
    assert str(exc.value) == message


def test_plan_addresses_is_stable_and_fills_gaps():
    net = parse_network('198.18.0.0/24')
    first = plan_addresses(net, ['a', 'b', 'c'], {})
    assert first == {'a': '198.18.0.10', 'b': '198.18.0.11', 'c': '198.18.0.12'}
    # b leaves, d arrives: a and c keep theirs, d takes the lowest free address
    second = plan_addresses(net, ['a', 'c', 'd'], first)
    assert second == {'a': '198.18.0.10', 'c': '198.18.0.12', 'd': '198.18.0.11'}


def test_plan_addresses_ignores_bad_previous():
    net = parse_network('198.18.0.0/24')
    got = plan_addresses(net, ['a', 'b'], {'a': '10.1.1.1', 'b': 'garbage'})
    assert got == {'a': '198.18.0.10', 'b': '198.18.0.11'}


def test_plan_addresses_full():
    net = parse_network('198.18.0.0/29')  # 8 addresses: gateway .1, hosts .2 - .6
    plan_addresses(net, list('abcde'), {})
    with pytest.raises(LabError) as exc:
        plan_addresses(net, list('abcdef'), {})
    assert str(exc.value) == _lab.MSG_NETWORK_FULL % (net, 5, 6)


def test_plan_addresses_200_hosts_in_a_22():
    net = parse_network('198.18.0.0/22')
    names = ['h%d' % i for i in range(200)]
    got = plan_addresses(net, names, {})
    assert len(set(got.values())) == 200
    assert all(ipaddress.ip_address(a) in net for a in got.values())


def test_veth_name():
    name = veth_name('tcplab-client')
    assert name.startswith('tk') and len(name) <= 15
    assert name == veth_name('tcplab-client') != veth_name('tcplab-server')


def test_sshd_config():
    text = render_sshd_config('198.18.0.10', '/run/x/hosts/a', '/run/x/authorized_keys', '/usr/lib/openssh/sftp-server')
    lines = text.splitlines()
    assert 'ListenAddress 198.18.0.10' in lines
    assert 'PasswordAuthentication no' in lines
    assert 'PidFile /run/x/hosts/a/sshd.pid' in lines
    assert 'Subsystem sftp /usr/lib/openssh/sftp-server' in lines


def test_sshd_pids_of_matches_only_our_listeners():
    table = {
        1: ['sshd: /usr/sbin/sshd -f /run/lab/hosts/a/sshd_config [listener] 0 of 10-100 startups'],
        2: ['/usr/sbin/sshd', '-f', '/run/lab/hosts/b/sshd_config'],
        3: ['sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups'],
        4: ['/usr/sbin/sshd', '-f', '/run/lab2/hosts/b/sshd_config'],
        5: ['python3', '-f', '/run/lab/hosts/a/x'],
    }
    assert sshd_pids_of('/run/lab', list(table), table.get) == [1, 2]
    assert sshd_pids_of('/run/lab/hosts/b', list(table), table.get) == [2]


class FakeRunner:
    """Runs nothing (for the checks made before any command)."""

    def __call__(self, argv, check=True, ok_rc=(0,), data=None, what=None):
        raise AssertionError('no command expected, got %r' % (argv,))


PARAMS = {'bridge': 'tknsbr1', 'netns_prefix': 'tkns-u-', 'state_dir': '/run/tcplab-test-ns/unit-lab',
          'netns_dir': '/nonexistent'}


@pytest.mark.parametrize('params, message', [
    (dict(PARAMS, bridge='a bridge name too long'), _lab.MSG_BRIDGE % 'a bridge name too long'),
    (dict(PARAMS, netns_prefix='Bad/'), _lab.MSG_PREFIX % 'Bad/'),
    (dict(PARAMS, state_dir='/'), _lab.MSG_STATE_DIR % '/'),
    (dict(PARAMS, state_dir='relative'), _lab.MSG_STATE_DIR % 'relative'),
    (dict(PARAMS, ssh_user='Bad User'), _lab.MSG_SSH_USER % 'Bad User'),
    (dict(PARAMS, ssh_user='x;id'), _lab.MSG_SSH_USER % 'x;id'),
])
def test_lab_rejects_bad_params(params, message):
    with pytest.raises(LabError) as exc:
        Lab(FakeRunner(), params)
    assert str(exc.value) == message


# -- behaviour against the real kernel (what exists afterwards, not which commands ran) -------------

NETWORK = '198.19.130.128/25'
REAL = dict(PARAMS, netns_dir='/run/netns')
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which('ip') is None,
                                reason='needs root and ip(8): the tests make network namespaces')


class _Module:
    """What Runner needs of an AnsibleModule: run_command, for real."""

    @staticmethod
    def run_command(argv, check_rc=False, data=None, binary_data=False, environ_update=None, use_unsafe_shell=False):
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False,
                              env=dict(os.environ, **(environ_update or {})))
        return proc.returncode, proc.stdout, proc.stderr


def real_lab(check_mode=False, **params):
    return Lab(Runner(_Module()), dict(REAL, **params), check_mode=check_mode, binaries={'ip': shutil.which('ip')})


def link_exists(name, netns=None):
    argv = ['ip'] + (['-n', netns] if netns else []) + ['link', 'show', 'dev', name]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def addresses(dev, netns=None):
    argv = ['ip', '-j'] + (['-n', netns] if netns else []) + ['addr', 'show', 'dev', dev]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return ['%s/%s' % (a['local'], a['prefixlen']) for link in json.loads(out) for a in link['addr_info']
            if a['family'] == 'inet']


@pytest.fixture
def clean():
    """Whatever a failed test left of the lab goes, also a foreign namespace made by a test."""
    try:
        yield
    finally:
        try:
            real_lab().absent()
        finally:
            for name in ('tkns-u-a', 'tkns-u-b', 'tkns-u-other'):
                subprocess.run(['ip', 'netns', 'del', name], capture_output=True, check=False)
            subprocess.run(['ip', 'link', 'del', 'tknsbr1'], capture_output=True, check=False)


@needs_root
def test_present_check_mode_changes_nothing(clean):
    lab = real_lab(check_mode=True)
    result = lab.present(normalize_hosts(['a'], 'netns'), NETWORK)
    assert lab.changed
    assert result['hosts'][0]['address'] == '198.19.130.138'
    assert result['gateway'] == '198.19.130.129'
    assert not os.path.exists('/run/netns/tkns-u-a')
    assert not link_exists('tknsbr1')
    assert not os.path.exists(REAL['state_dir'])


@needs_root
def test_present_makes_the_hosts_and_absent_removes_only_what_the_manifest_lists(clean):
    lab = real_lab()
    result = lab.present(normalize_hosts(['a', 'b'], 'netns'), NETWORK)
    assert [h['netns'] for h in result['hosts']] == ['tkns-u-a', 'tkns-u-b']
    for host in result['hosts']:
        assert addresses('eth0', host['netns']) == [host['address'] + '/25']
        assert link_exists(host['veth'])
    assert addresses('tknsbr1') == ['198.19.130.129/25']
    again = real_lab()
    again.present(normalize_hosts(['a', 'b'], 'netns'), NETWORK)
    assert not again.changed

    subprocess.run(['ip', 'netns', 'add', 'tkns-u-other'], check=True)  # the same prefix, but not the lab's
    gone = real_lab()
    gone.absent()
    assert gone.changed
    for host in result['hosts']:
        assert not os.path.exists(host['netns_path'])
        assert not link_exists(host['veth'])
    assert not link_exists('tknsbr1')
    assert os.path.exists('/run/netns/tkns-u-other')
    assert not os.path.exists(REAL['state_dir'])


@needs_root
def test_absent_without_a_manifest_touches_nothing(clean):
    subprocess.run(['ip', 'netns', 'add', 'tkns-u-a'], check=True)
    subprocess.run(['ip', 'link', 'add', 'tknsbr1', 'type', 'bridge'], check=True)
    lab = real_lab()
    lab.absent()
    assert not lab.changed
    assert os.path.exists('/run/netns/tkns-u-a') and link_exists('tknsbr1')


def test_state_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('mine')
    with pytest.raises(LabError) as exc:
        Lab(FakeRunner(), dict(PARAMS, state_dir=str(path)))
    assert str(exc.value) == _lab.MSG_STATE_DIR_FILE % path
    assert path.read_text() == 'mine'


@needs_root
def test_absent_keeps_a_namespace_whose_processes_do_not_end(clean, monkeypatch):
    """A process that survives SIGTERM and SIGKILL (stuck in the kernel) keeps its namespace: the error names it."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _lab_net
    from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import LabError
    lab = real_lab()
    host = lab.present(normalize_hosts(['a'], 'netns'), NETWORK)['hosts'][0]
    sleeper = subprocess.Popen(['ip', 'netns', 'exec', host['netns'], 'sleep', '60'])
    try:
        deadline = time.monotonic() + 5
        while not _lab_net.pids_in_netns(host['netns_path']) and time.monotonic() < deadline:
            time.sleep(0.05)
        monkeypatch.setattr(_lab_net, 'stop_all', lambda victims, timeout=5.0: (list(victims), False))
        with pytest.raises(LabError, match='lab namespace tkns-u-a was not deleted: its processes .* did not end'):
            real_lab().absent()
        assert os.path.exists(host['netns_path'])
    finally:
        sleeper.kill()
        sleeper.wait()
