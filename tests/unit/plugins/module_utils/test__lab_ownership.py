# The lab changes and removes only what it made (issue 10: items 2, 3, 8, 16), on the real kernel:
# real namespaces, bridges, dummy interfaces, users, sudo. Everything here is named tkla-*/tkla0/tkla1/
# tkladum0/tklau*, on 198.19.10.0/24 and 198.19.11.0/24, with state under /run/tcplab-test-lab.
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _lab, _lab_manifest, _proc
from ansible_collections.tcplab.keepalive.plugins.module_utils._common import Runner

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip'), reason='needs root and iproute2')

BASE = '/run/tcplab-test-lab'
USERS = ('tklau1', 'tklau2')
BINARIES = {name: shutil.which(name) or shutil.which(name, path='/usr/sbin:/sbin')
            for name in ('ip', 'nsenter', 'sshd', 'ssh-keygen', 'sudo', 'useradd', 'userdel', 'visudo')}
LAB_A = dict(bridge='tkla0', netns_prefix='tkla-', state_dir=BASE + '/a', network='198.19.10.0/24')
LAB_X = dict(bridge='tkla1', netns_prefix='tkla-x-', state_dir=BASE + '/x', network='198.19.11.0/24')


class _Module:
    """What Runner needs of an AnsibleModule: run_command, for real."""

    @staticmethod
    def run_command(argv, check_rc=False, data=None, binary_data=False, environ_update=None, use_unsafe_shell=False):
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False, env=dict(os.environ, **(environ_update or {})))
        return proc.returncode, proc.stdout, proc.stderr


def make_lab(spec, check_mode=False, **extra):
    params = {key: value for key, value in dict(spec, **extra).items() if key != 'network'}
    return _lab.Lab(Runner(_Module()), params, check_mode=check_mode, binaries=BINARIES)


def present(spec, names, check_mode=False, **extra):
    lab = make_lab(spec, check_mode, **extra)
    result = lab.present(_lab.normalize_hosts(names, 'netns'), extra.get('network', spec['network']))
    return lab, result


def present_lab(spec, names, check_mode=False, **extra):
    return present(spec, names, check_mode, **extra)[0]


def absent(spec, **extra):
    lab = make_lab(spec, **extra)
    lab.result = lab.absent()
    return lab


def sh(*argv, check=True):
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def namespaces():
    return set(os.listdir('/run/netns')) if os.path.isdir('/run/netns') else set()


def link(name):
    found = json.loads(sh('ip', '-j', '-d', 'link', 'show', 'dev', name, check=False).stdout or '[]')
    return found[0] if found else None


def addresses(name, netns=None):
    prefix = ['ip', '-n', netns] if netns else ['ip']
    found = json.loads(sh(*prefix, '-j', 'addr', 'show', 'dev', name, check=False).stdout or '[]')
    return ['%s/%s' % (a['local'], a['prefixlen']) for entry in found for a in entry['addr_info'] if a['family'] == 'inet']


def ours_left():
    return sorted(name for name in namespaces() if name.startswith('tkla-'))


def cleanup():
    """Remove everything these tests may have made (all of it carries this file's names)."""
    for pid in [p for p in os.listdir('/proc') if p.isdigit()]:
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as handle:
                text = handle.read().replace(b'\0', b' ').decode('utf-8', 'replace')
        except OSError:
            continue
        if BASE in text and ('sshd' in text or 'sleep' in text):
            subprocess.call(['kill', '-9', pid])
    namespaces = ours_left()
    for netns in namespaces:
        sh('ip', 'netns', 'del', netns, check=False)
    # the kernel tears a deleted namespace's veth pair down asynchronously: wait
    # for it, so that the next test does not find it as a foreign interface
    veths = [_lab.veth_name(netns) for netns in namespaces]
    deadline = time.monotonic() + 5
    while veths and time.monotonic() < deadline:
        veths = [name for name in veths if os.path.exists('/sys/class/net/' + name)]
        time.sleep(0.05)
    for name in veths:
        sh('ip', 'link', 'del', name, check=False)
    for name in ('tkla0', 'tkla1', 'tkladum0'):
        sh('ip', 'link', 'del', name, check=False)
    for user in USERS:
        sh('pkill', '-9', '-u', user, check=False)
        sh('userdel', '--remove', user, check=False)
    for name in os.listdir('/etc/sudoers.d'):
        path = os.path.join('/etc/sudoers.d', name)
        with open(path) as handle:
            text = handle.read()
        if name.startswith('tcplab-keepalive-lab') and (BASE in text or any(u + ' ' in text for u in USERS)):
            os.unlink(path)
    shutil.rmtree(BASE, ignore_errors=True)


@pytest.fixture
def clean():
    cleanup()
    try:
        yield
    finally:
        cleanup()


def add_dummy(cidr):
    """tkladum0, a non-bridge interface with an address (an ifb where the kernel has no dummy driver)."""
    if sh('ip', 'link', 'add', 'tkladum0', 'type', 'dummy', check=False).returncode != 0:
        sh('ip', 'link', 'add', 'tkladum0', 'type', 'ifb')
    sh('ip', 'addr', 'add', cidr, 'dev', 'tkladum0')
    return link('tkladum0')['linkinfo']['info_kind']


def refused(call, *fragments):
    with pytest.raises(_lab.LabError) as exc:
        call()
    for fragment in fragments:
        assert fragment in str(exc.value)
    return str(exc.value)


# -- item 2: a bridge name that is not the lab's own bridge ----------------------

def test_bridge_naming_a_dummy_interface_is_refused_before_anything(clean):
    kind = add_dummy('198.19.11.5/24')
    msg = refused(lambda: present(dict(LAB_A, bridge='tkladum0'), ['a']),
                  'interface tkladum0 exists and was not made by this lab', BASE + '/a/lab.json', 'lab_bridge')
    assert 'choose another' in msg
    assert addresses('tkladum0') == ['198.19.11.5/24']
    assert ours_left() == [] and not os.path.exists(BASE + '/a')
    absent(dict(LAB_A, bridge='tkladum0'))
    assert link('tkladum0')['linkinfo']['info_kind'] == kind
    assert addresses('tkladum0') == ['198.19.11.5/24']


def test_bridge_naming_a_bridge_of_someone_else_is_refused(clean):
    sh('ip', 'link', 'add', 'tkla1', 'type', 'bridge')
    sh('ip', 'addr', 'add', '198.19.11.1/24', 'dev', 'tkla1')
    refused(lambda: present(dict(LAB_A, bridge='tkla1'), ['a']), 'interface tkla1 exists and was not made by this lab')
    absent(dict(LAB_A, bridge='tkla1'))
    assert link('tkla1') is not None and addresses('tkla1') == ['198.19.11.1/24']
    assert ours_left() == []


def test_own_bridge_is_kept_and_a_recreated_one_is_not_ours(clean):
    present(LAB_A, ['a'])
    again = present_lab(LAB_A, ['a'])
    assert not again.changed and again.actions == []
    assert addresses('tkla0') == ['198.19.10.1/24']
    # someone deletes the lab's bridge and makes their own under the same name
    sh('ip', 'link', 'del', 'tkla0')
    sh('ip', 'link', 'add', 'tkla0', 'type', 'bridge')
    refused(lambda: present(LAB_A, ['a']), 'is not the bridge this lab made', 'ip link del tkla0')
    absent(LAB_A)
    assert link('tkla0') is not None
    assert ours_left() == []


# -- item 3: namespaces by manifest, never by name prefix ------------------------

def test_namespace_of_someone_else_with_the_prefix_survives(clean):
    sh('ip', 'netns', 'add', 'tkla-other')
    present(LAB_A, ['a', 'b'])
    present(LAB_A, ['a'])
    assert ours_left() == ['tkla-a', 'tkla-other']
    absent(LAB_A)
    assert ours_left() == ['tkla-other']


def test_second_lab_with_a_longer_prefix_survives(clean):
    other = present(LAB_X, ['one'])[1]
    present(LAB_A, ['a'])
    present(LAB_A, ['b'])
    absent(LAB_A)
    assert ours_left() == ['tkla-x-one']
    assert link(other['hosts'][0]['veth'])['master'] == 'tkla1'
    assert addresses('eth0', 'tkla-x-one') == ['198.19.11.10/24']
    absent(LAB_X)
    assert ours_left() == [] and link('tkla1') is None


def test_existing_namespace_not_in_the_manifest_is_not_adopted(clean):
    sh('ip', 'netns', 'add', 'tkla-a')
    inode = os.stat('/run/netns/tkla-a').st_ino
    refused(lambda: present(LAB_A, ['a']), 'network namespace tkla-a exists and was not made by this lab')
    assert link('tkla0') is None and os.stat('/run/netns/tkla-a').st_ino == inode
    assert addresses('eth0', 'tkla-a') == []


def test_namespace_recreated_by_someone_else_is_not_ours(clean):
    present(LAB_A, ['a', 'b'])
    sh('ip', 'netns', 'del', 'tkla-b')
    sh('ip', 'netns', 'add', 'tkla-b')
    present(LAB_A, ['a'])
    assert ours_left() == ['tkla-a', 'tkla-b']
    absent(LAB_A)
    assert ours_left() == ['tkla-b']


def test_recreated_namespace_is_refused_when_wanted(clean):
    present(LAB_A, ['a'])
    sh('ip', 'netns', 'del', 'tkla-a')
    sh('ip', 'netns', 'add', 'tkla-a')
    refused(lambda: present(LAB_A, ['a']), 'network namespace tkla-a is not the one this lab made')


def test_manifest_records_intent_and_inode(clean):
    result = present(LAB_A, ['a'])[1]
    with open(BASE + '/a/lab.json') as handle:
        manifest = json.load(handle)
    inode, cookie = _proc.netns_identity('/run/netns/tkla-a')
    assert manifest['namespaces'] == {'tkla-a': {'inode': inode, 'cookie': cookie}}
    assert inode == os.stat('/run/netns/tkla-a').st_ino
    assert manifest['bridges'] == {'tkla0': {'ifindex': link('tkla0')['ifindex']}}
    assert manifest['veths'] == {result['hosts'][0]['veth']: {'ifindex': link(result['hosts'][0]['veth'])['ifindex']}}


def crash_after_intent(netns, busy=False):
    """A run of the lab that wrote the intent for netns, made it, and died before recording its inode."""
    path = BASE + '/a/lab.json'
    with open(path) as handle:
        manifest = json.load(handle)
    manifest.setdefault('namespaces', {})[netns] = {'inode': None}
    with open(path, 'w') as handle:
        json.dump(manifest, handle)
    sh('ip', 'netns', 'add', netns)
    return subprocess.Popen(['ip', 'netns', 'exec', netns, 'sleep', '600']) if busy else None


def test_crashed_run_of_this_lab_is_cleaned_up(clean):
    present(LAB_A, ['a', 'b', 'c'])
    present(LAB_A, ['a'])
    assert ours_left() == ['tkla-a']
    sleeper = crash_after_intent('tkla-d', busy=True)
    try:
        lab = present_lab(LAB_A, ['a'])
        assert ours_left() == ['tkla-a']
        assert sleeper.wait(timeout=10) is not None
        assert [BINARIES['ip'], 'netns', 'del', 'tkla-d'] in lab.actions
    finally:
        sleeper.kill()
        sleeper.wait()


def test_crashed_run_leftover_is_adopted_when_wanted(clean):
    present(LAB_A, ['a'])
    crash_after_intent('tkla-e')
    present(LAB_A, ['a', 'e'])
    with open(BASE + '/a/lab.json') as handle:
        inode, cookie = _proc.netns_identity('/run/netns/tkla-e')
        assert json.load(handle)['namespaces']['tkla-e'] == {'inode': inode, 'cookie': cookie}
    assert addresses('eth0', 'tkla-e') == ['198.19.10.11/24']


def edit_namespace_entry(netns, **changes):
    """Change the manifest's entry of netns (a key None: remove it); returns the namespace's identity now."""
    path = BASE + '/a/lab.json'
    with open(path) as handle:
        manifest = json.load(handle)
    for key, value in changes.items():
        if value is None:
            manifest['namespaces'][netns].pop(key, None)
        else:
            manifest['namespaces'][netns][key] = value
    with open(path, 'w') as handle:
        json.dump(manifest, handle)
    return _proc.netns_identity('/run/netns/' + netns)


needs_cookies = pytest.mark.skipif(_proc.netns_identity()[1] is None, reason='the kernel has no SO_NETNS_COOKIE')


@needs_cookies
def test_absent_leaves_alone_a_namespace_with_the_inode_but_not_the_cookie(clean):
    """The lab's namespace was deleted and a new one got its inode (made here by editing the recorded cookie)."""
    present(LAB_A, ['a', 'b'])
    inode, cookie = _proc.netns_identity('/run/netns/tkla-b')
    edit_namespace_entry('tkla-b', cookie=cookie + 1)
    lab = absent(LAB_A)
    assert ours_left() == ['tkla-b'] and _proc.netns_identity('/run/netns/tkla-b') == (inode, cookie)
    assert [BINARIES['ip'], 'netns', 'del', 'tkla-b'] not in lab.actions
    assert [BINARIES['ip'], 'netns', 'del', 'tkla-a'] in lab.actions
    assert lab.net.notes == [_lab_manifest.MSG_NETNS_LEFT % ('tkla-b', inode, BASE + '/a/lab.json', cookie, cookie + 1,
                                                             'tkla-b')]
    assert 'left alone, not deleted' in lab.net.notes[0]
    assert lab.result['notes'] == lab.net.notes  # lab_hosts returns them


@needs_cookies
def test_a_host_no_longer_listed_is_left_alone_when_its_cookie_differs(clean):
    present(LAB_A, ['a', 'b'])
    inode, cookie = edit_namespace_entry('tkla-b')
    edit_namespace_entry('tkla-b', cookie=cookie + 1)
    lab, result = present(LAB_A, ['a'])
    assert ours_left() == ['tkla-a', 'tkla-b'] and _proc.netns_identity('/run/netns/tkla-b') == (inode, cookie)
    assert len(lab.net.notes) == 1 and lab.net.notes[0].startswith('network namespace tkla-b left alone, not deleted')
    assert result['notes'] == lab.net.notes  # lab_hosts returns them


@needs_cookies
def test_present_refuses_a_namespace_with_the_inode_but_not_the_cookie(clean):
    present(LAB_A, ['a'])
    inode, cookie = edit_namespace_entry('tkla-a')
    edit_namespace_entry('tkla-a', cookie=cookie + 1)
    message = refused(lambda: present(LAB_A, ['a']), 'network namespace tkla-a is not the one this lab made')
    assert message == _lab_manifest.MSG_NETNS_RECYCLED % ('tkla-a', inode, cookie, cookie + 1, 'tkla-a')
    assert _proc.netns_identity('/run/netns/tkla-a') == (inode, cookie)


def test_a_manifest_without_cookies_still_works(clean):
    """Manifests written before cookies (or on a kernel without them): the inode alone, and present adds the cookie."""
    present(LAB_A, ['a', 'b'])
    edit_namespace_entry('tkla-a', cookie=None)
    identity = edit_namespace_entry('tkla-b', cookie=None)
    present(LAB_A, ['a', 'b'])
    with open(BASE + '/a/lab.json') as handle:
        assert json.load(handle)['namespaces']['tkla-b'] == {'inode': identity[0], 'cookie': identity[1]}
    edit_namespace_entry('tkla-a', cookie=None)
    edit_namespace_entry('tkla-b', cookie=None)
    lab = absent(LAB_A)
    assert ours_left() == [] and lab.net.notes == []


def test_check_mode_changes_nothing(clean):
    lab = present_lab(LAB_A, ['a'], check_mode=True)
    assert lab.changed and [BINARIES['ip'], 'netns', 'add', 'tkla-a'] in lab.actions
    assert ours_left() == [] and link('tkla0') is None and not os.path.exists(BASE + '/a')
    present(LAB_A, ['a'])
    lab = present_lab(LAB_A, ['b'], check_mode=True)
    assert lab.changed and ours_left() == ['tkla-a']


# -- item 16: one network, one lab ------------------------------------------------

def test_network_held_by_another_interface_is_refused(clean):
    add_dummy('198.19.10.1/24')
    msg = refused(lambda: present(LAB_A, ['a']), 'overlaps 198.19.10.1/24 on interface tkladum0', 'choose another lab_network')
    assert '198.19.10.0/24' not in msg.split('e.g.')[1]
    assert link('tkla0') is None and ours_left() == []


@pytest.mark.parametrize('network', ['198.19.10.0/24', '198.19.10.0/23', '198.19.10.128/25'])
def test_second_lab_on_the_same_or_an_overlapping_network_is_refused(clean, network):
    present(LAB_A, ['a'])
    refused(lambda: present(dict(LAB_X, network=network), ['one']), 'on interface tkla0')
    assert link('tkla1') is None and ours_left() == ['tkla-a']
    assert addresses('tkla0') == ['198.19.10.1/24']


def test_own_bridge_may_keep_its_network(clean):
    present(LAB_A, ['a'])
    lab = present_lab(LAB_A, ['a', 'b'])
    assert lab.changed and ours_left() == ['tkla-a', 'tkla-b']


# -- item 8: one sudoers file per lab ---------------------------------------------

def sudo_works(user):
    return sh('runuser', '-u', user, '--', 'sudo', '-n', 'true', check=False).returncode == 0


def ssh_present(spec, name, user):
    lab = make_lab(spec, ssh_user=user)
    return lab.present(_lab.normalize_hosts([name], 'ssh'), spec['network'])


@pytest.mark.skipif(not all(BINARIES.values()), reason='needs sshd, sudo, useradd, visudo')
def test_two_labs_with_two_ssh_users_keep_their_own_sudo(clean):
    ssh_present(LAB_A, 'a', 'tklau1')
    ssh_present(LAB_X, 'one', 'tklau2')
    assert sudo_works('tklau1') and sudo_works('tklau2')
    absent(LAB_A, ssh_user='tklau1')
    with pytest.raises(KeyError):
        pwd.getpwnam('tklau1')
    assert sudo_works('tklau2')
    absent(LAB_X, ssh_user='tklau2')
    with pytest.raises(KeyError):
        pwd.getpwnam('tklau2')
    assert not [n for n in os.listdir('/etc/sudoers.d') if n.startswith('tcplab-keepalive-lab')
                and 'tklau' in open(os.path.join('/etc/sudoers.d', n)).read()]


@pytest.mark.skipif(not all(BINARIES.values()), reason='needs sshd, sudo, useradd, visudo')
def test_user_shared_with_another_lab_is_kept(clean):
    ssh_present(LAB_A, 'a', 'tklau1')
    ssh_present(LAB_X, 'one', 'tklau1')  # exists already: used, not made, by lab X
    absent(LAB_A, ssh_user='tklau1')
    assert pwd.getpwnam('tklau1') and sudo_works('tklau1')


@pytest.mark.skipif(not all(BINARIES.values()), reason='needs sshd, sudo, useradd, visudo')
def test_user_not_made_by_the_lab_is_not_deleted(clean):
    sh('useradd', '--shell', '/bin/sh', 'tklau2')
    ssh_present(LAB_A, 'a', 'tklau2')
    assert sudo_works('tklau2')
    absent(LAB_A, ssh_user='tklau2')
    assert pwd.getpwnam('tklau2') and not sudo_works('tklau2')
