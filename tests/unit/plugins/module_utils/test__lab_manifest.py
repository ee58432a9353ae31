# Unit tests of the lab's manifest and ownership rules: pure functions over recorded identities.
from __future__ import annotations

import ipaddress
import json
from types import SimpleNamespace

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _lab_manifest as m


def user(name='tklau1', uid=1234, gecos=m.USER_COMMENT):
    """The fields of a pwd entry that ownership looks at."""
    return SimpleNamespace(pw_name=name, pw_uid=uid, pw_gecos=gecos)


@pytest.mark.parametrize('entry, identity, expected', [
    (None, None, m.GONE),
    ({'inode': 7}, None, m.GONE),
    (None, 7, m.FOREIGN),            # exists, not in the manifest: someone else's
    ({'inode': 7}, 7, m.OURS),
    ({'inode': 7}, 8, m.FOREIGN),    # deleted and re-created by someone else
    ({'inode': None}, 8, m.OURS),    # intent written, the run died before recording the inode
])
def test_claim(entry, identity, expected):
    assert m.claim(entry, identity, 'inode') == expected


@pytest.mark.parametrize('entry, inode, cookie, expected', [
    ({'inode': 7, 'cookie': 40}, 7, 40, m.OURS),
    ({'inode': 7, 'cookie': 40}, 7, 41, m.FOREIGN),   # deleted; a new namespace got the inode
    ({'inode': 7, 'cookie': 40}, 8, 40, m.FOREIGN),
    ({'inode': 7, 'cookie': 40}, None, None, m.GONE),
    ({'inode': 7}, 7, 41, m.OURS),                    # a manifest written before cookies: the inode alone
    ({'inode': 7, 'cookie': None}, 7, 41, m.OURS),    # made on a kernel without cookies
    ({'inode': 7, 'cookie': 40}, 7, None, m.OURS),    # the cookie cannot be read now: the inode alone
    ({'inode': None}, 7, 41, m.OURS),                 # intent of a crashed run of this lab
    (None, 7, 41, m.FOREIGN),
])
def test_claim_netns(entry, inode, cookie, expected):
    assert m.claim_netns(entry, inode, cookie) == expected
    assert m.recycled_netns(entry, inode, cookie) == (expected == m.FOREIGN and entry is not None
                                                      and entry.get('inode') == inode)


@pytest.mark.parametrize('entry, link, expected', [
    ({'ifindex': 5}, None, m.GONE),
    (None, {'ifindex': 5, 'linkinfo': {'info_kind': 'bridge'}}, m.FOREIGN),
    ({'ifindex': 5}, {'ifindex': 5, 'linkinfo': {'info_kind': 'bridge'}}, m.OURS),
    ({'ifindex': 5}, {'ifindex': 9, 'linkinfo': {'info_kind': 'bridge'}}, m.FOREIGN),
    ({'ifindex': 5}, {'ifindex': 5, 'linkinfo': {'info_kind': 'dummy'}}, m.FOREIGN),
    ({'ifindex': None}, {'ifindex': 5}, m.FOREIGN),  # hardware (no kind) is never a lab bridge
    ({'ifindex': None}, {'ifindex': 5, 'linkinfo': {'info_kind': 'bridge'}}, m.OURS),
])
def test_claim_link(entry, link, expected):
    assert m.claim_link(entry, link, 'bridge') == expected


@pytest.mark.parametrize('entry, pw, expected', [
    ({'uid': 1234}, None, m.GONE),
    ({'uid': 1234}, user(), m.OURS),
    ({'uid': None}, user(), m.OURS),
    (None, user(), m.FOREIGN),
    ({'uid': 1234}, user(uid=999), m.FOREIGN),
    ({'uid': 1234}, user(gecos='Somebody'), m.FOREIGN),
])
def test_claim_user(entry, pw, expected):
    assert m.claim_user(entry, pw) == expected


def test_sudoers_file_per_lab():
    one, two = m.sudoers_path('/run/lab-one'), m.sudoers_path('/run/lab-two')
    assert one != two and one.startswith('/etc/sudoers.d/tcplab-keepalive-lab-')
    assert '.' not in one.rsplit('/', 1)[1]  # sudo skips names with a dot
    assert m.sudoers_path('/run/lab-one/') == one
    text = m.render_sudoers('/run/lab-one', 'tklau1')
    assert m.sudoers_users(text) == {'tklau1'}
    assert text.endswith('tklau1 ALL=(ALL:ALL) NOPASSWD: ALL\n')


def test_owns_sudoers(tmp_path):
    manifest = m.Manifest(str(tmp_path / 'lab'))
    own = m.sudoers_path(manifest.state_dir)
    assert manifest.owns_sudoers(own, m.render_sudoers(manifest.state_dir, 'tklau1'))
    assert not manifest.owns_sudoers(own, m.render_sudoers('/run/other-lab', 'tklau1'))
    assert not manifest.owns_sudoers(own, 'tklau1 ALL=(ALL) ALL\n')
    assert not manifest.owns_sudoers(own, None)
    assert not manifest.owns_sudoers(m.SUDOERS_LEGACY, '# Managed by tcplab.keepalive\ntklau1 ALL=(ALL:ALL) NOPASSWD: ALL\n')


def test_users_of_other_labs(tmp_path):
    (tmp_path / 'tcplab-keepalive-lab-aaaa').write_text(m.render_sudoers('/run/a', 'alice'))
    (tmp_path / 'tcplab-keepalive-lab-bbbb').write_text(m.render_sudoers('/run/b', 'bob'))
    (tmp_path / 'admins').write_text('carol ALL=(ALL) ALL\n')
    assert m.users_of_other_labs([str(tmp_path / 'tcplab-keepalive-lab-aaaa')], str(tmp_path)) == {'bob'}


def test_migrate_version_1_manifest():
    old = {'bridge': 'tcplab0', 'network': '198.18.0.0/24', 'netns_prefix': 'tcplab-', 'created_users': ['lab'],
           'hosts': {'a': {'address': '198.18.0.10', 'netns': 'tcplab-a', 'transport': 'ssh'}}}
    new = m.migrate(old)
    assert new['version'] == m.VERSION
    assert new['namespaces'] == {'tcplab-a': {'inode': None}}
    assert new['veths'] == {m.veth_name('tcplab-a'): {'ifindex': None}}
    assert new['bridges'] == {'tcplab0': {'ifindex': None}}
    assert new['users'] == {'lab': {'uid': None}} and new['sudoers'] == m.SUDOERS_LEGACY
    assert new['hosts'] == old['hosts'] and new['network'] == '198.18.0.0/24'
    manifest = m.Manifest('/nonexistent')
    manifest.data = new
    legacy_text = '# Managed by tcplab.keepalive (lab role); removed with lab_state: absent.\nlab ALL=(ALL:ALL) NOPASSWD: ALL\n'
    assert manifest.owns_sudoers(m.SUDOERS_LEGACY, legacy_text)
    assert not manifest.owns_sudoers(m.SUDOERS_LEGACY, legacy_text.replace('lab ALL', 'other ALL'))


@pytest.mark.parametrize('data', [None, [], 'x', {}])
def test_migrate_garbage_is_an_empty_manifest(data):
    assert m.migrate(data) == m.empty()


def test_manifest_intent_then_record(tmp_path):
    state = tmp_path / 'parent' / 'lab'
    manifest = m.Manifest(str(state))
    assert manifest.intend('namespaces', 'tkla-a')
    on_disk = json.loads((state / 'lab.json').read_text())
    assert on_disk['namespaces'] == {'tkla-a': {'inode': None}} and on_disk['state_dir_created']
    assert oct(state.stat().st_mode & 0o777) == '0o711'
    assert manifest.record('namespaces', 'tkla-a', 42)
    assert not manifest.record('namespaces', 'tkla-a', 42)  # nothing new, nothing written
    assert m.Manifest(str(state)).entry('namespaces', 'tkla-a') == {'inode': 42}
    assert manifest.record('namespaces', 'tkla-a', 42, cookie=4242)
    assert m.Manifest(str(state)).entry('namespaces', 'tkla-a') == {'inode': 42, 'cookie': 4242}


def test_manifest_check_mode_writes_nothing(tmp_path):
    manifest = m.Manifest(str(tmp_path / 'lab'), check_mode=True)
    assert manifest.intend('namespaces', 'tkla-a')
    assert not (tmp_path / 'lab').exists()


def test_free_network_skips_taken():
    net = ipaddress.ip_network('198.18.0.0/24')
    taken = [ipaddress.ip_network('198.18.0.0/24'), ipaddress.ip_network('198.18.1.0/25')]
    assert str(m.free_network(net, taken)) == '198.18.2.0/24'
    assert m.free_network(ipaddress.ip_network('198.18.0.0/15'), taken) is None


class Fake:
    path = '/run/x/lab.json'

    def __init__(self, **sections):
        self.sections = sections

    def entry(self, section, name):
        return self.sections.get(section, {}).get(name)


def raises(call):
    with pytest.raises(m.LabError) as exc:
        call()
    return str(exc.value)


def test_check_bridge_messages_name_the_fix():
    links = {'eth0': {'ifname': 'eth0', 'ifindex': 2}, 'br0': {'ifindex': 9, 'linkinfo': {'info_kind': 'bridge'}}}
    assert raises(lambda: m.check_bridge(Fake(), 'eth0', links)) == m.MSG_BRIDGE_FOREIGN % ('eth0', '/run/x/lab.json')
    assert 'choose another lab_bridge' in m.MSG_BRIDGE_FOREIGN
    msg = raises(lambda: m.check_bridge(Fake(bridges={'br0': {'ifindex': 5}}), 'br0', links))
    assert msg == m.MSG_BRIDGE_REPLACED % ('br0', '/run/x/lab.json', 5, 9, 'bridge', 'br0')
    m.check_bridge(Fake(bridges={'br0': {'ifindex': 9}}), 'br0', links)
    m.check_bridge(Fake(), 'br1', links)


def test_check_network_names_the_interface_and_a_free_network():
    net = ipaddress.ip_network('198.18.0.0/24')
    found = [('lo', '127.0.0.1/8', ipaddress.ip_network('127.0.0.0/8')),
             ('tcplab0', '198.18.0.1/24', ipaddress.ip_network('198.18.0.0/24'))]
    msg = raises(lambda: m.check_network(net, found, set()))
    assert msg == m.MSG_NETWORK_TAKEN % (net, '198.18.0.1/24', 'tcplab0', '198.18.1.0/24')
    m.check_network(net, found, {'tcplab0'})  # the lab's own bridge
    wide = ipaddress.ip_network('198.18.0.0/23')
    assert 'tcplab0' in raises(lambda: m.check_network(wide, found, set()))


def test_check_netns_messages():
    assert raises(lambda: m.check_netns(Fake(), 'tkla-a', 7)) == m.MSG_NETNS_FOREIGN % ('tkla-a', '/run/x/lab.json', 'tkla-a')
    msg = raises(lambda: m.check_netns(Fake(namespaces={'tkla-a': {'inode': 3}}), 'tkla-a', 7))
    assert msg == m.MSG_NETNS_REPLACED % ('tkla-a', 7, '/run/x/lab.json', 3, 'tkla-a')
    m.check_netns(Fake(namespaces={'tkla-a': {'inode': 7}}), 'tkla-a', 7)
    m.check_netns(Fake(), 'tkla-a', None)
    recorded = Fake(namespaces={'tkla-a': {'inode': 7, 'cookie': 40}})
    msg = raises(lambda: m.check_netns(recorded, 'tkla-a', 7, 41))
    assert msg == m.MSG_NETNS_RECYCLED % ('tkla-a', 7, 41, 40, 'tkla-a')
    assert 'a new one got its inode' in msg and 'ip netns del tkla-a' in msg
    m.check_netns(recorded, 'tkla-a', 7, 40)
    m.check_netns(recorded, 'tkla-a', 7, None)


def test_check_veth_message():
    veth = m.veth_name('tkla-a')
    links = {veth: {'ifindex': 4, 'linkinfo': {'info_kind': 'veth'}}}
    assert raises(lambda: m.check_veth(Fake(), 'tkla-a', links)) == m.MSG_VETH_FOREIGN % (veth, 'tkla-a', '/run/x/lab.json')
    m.check_veth(Fake(veths={veth: {'ifindex': 4}}), 'tkla-a', links)
