# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests for the tcplab.keepalive.netns connection plugin.

The plugin is loaded through ansible's connection_loader (so its DOCUMENTATION options are
registered exactly as in a real run) from a temporary ansible_collections/tcplab/keepalive
symlink to this repository. Tests that need a real network namespace create one named
tkcp-<random> with 'ip netns add' and delete it afterwards; they need root.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import become_loader, connection_loader
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

REPO_ROOT = Path(__file__).resolve().parents[4]
PLUGIN = 'tcplab.keepalive.netns'
ANSIBLE = Path(sys.executable).parent / 'ansible'

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason='needs root to create network namespaces (ip netns add) and to enter them')


@pytest.fixture(scope='module')
def collection_finder(tmp_path_factory):
    """Make tcplab.keepalive importable via a temporary ansible_collections tree."""
    coll_root = tmp_path_factory.mktemp('collections')
    (coll_root / 'ansible_collections' / 'tcplab').mkdir(parents=True)
    (coll_root / 'ansible_collections' / 'tcplab' / 'keepalive').symlink_to(REPO_ROOT)

    previous = AnsibleCollectionConfig.collection_finder
    if previous is not None and connection_loader.find_plugin(PLUGIN) is not None:
        yield coll_root  # already findable (e.g. under ansible-test units)
        return
    _AnsibleCollectionFinder(paths=[str(coll_root)], scan_sys_paths=False)._install()
    try:
        yield coll_root
    finally:
        _AnsibleCollectionFinder._remove()
        if previous is not None:
            previous._install()


@pytest.fixture
def make_conn(collection_finder):
    def make(**var_options):
        conn = connection_loader.get(PLUGIN, PlayContext())
        assert conn is not None, f'{PLUGIN} not found by connection_loader'
        conn.set_options(var_options=var_options)
        return conn
    return make


@pytest.fixture(scope='module')
def netns():
    """A real, empty network namespace; yields its name."""
    name = f'tkcp-{secrets.token_hex(4)}'
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    try:
        yield name
    finally:
        subprocess.run(['ip', 'netns', 'del', name], check=False)


@pytest.fixture
def conn(make_conn, netns):
    c = make_conn(inventory_hostname=netns)
    yield c
    c.close()


# --- option handling and validation (no namespace needed) ---

def test_class_attributes(make_conn):
    c = make_conn(inventory_hostname='h1')
    assert c.transport == 'tcplab.keepalive.netns'
    assert c.has_pipelining is True
    assert c.has_tty is False


def test_option_defaults_and_resolution(make_conn, monkeypatch):
    monkeypatch.delenv('ANSIBLE_NETNS_NAME', raising=False)
    monkeypatch.delenv('ANSIBLE_NETNS_DIR', raising=False)
    c = make_conn(inventory_hostname='h1')
    assert c.get_option('netns_name') is None
    assert c.get_option('netns_dir') == '/run/netns'
    assert c.get_option('nsenter_path') == 'nsenter'
    assert c.get_option('pipelining') is True  # on by default: shared file system, no TTY
    assert c._netns_name() == 'h1'

    c = make_conn(inventory_hostname='h1', ansible_netns_name='lab1', ansible_netns_dir='/x/y', ansible_pipelining=True)
    assert c._netns_name() == 'lab1'
    assert c.get_option('netns_dir') == '/x/y'
    assert c.get_option('pipelining') is True

    monkeypatch.setenv('ANSIBLE_NETNS_NAME', 'from-env')
    assert make_conn(inventory_hostname='h1')._netns_name() == 'from-env'
    # a host variable beats the environment
    assert make_conn(inventory_hostname='h1', ansible_netns_name='lab2')._netns_name() == 'lab2'


def test_missing_namespace_is_connection_failure(make_conn, tmp_path):
    name = f'tkcp-missing-{secrets.token_hex(4)}'
    c = make_conn(inventory_hostname=name, ansible_netns_dir=str(tmp_path))
    with pytest.raises(AnsibleConnectionFailure) as exc:
        c._connect()
    msg = str(exc.value)
    assert f"'{name}'" in msg
    assert str(tmp_path / name) in msg
    assert f'ip netns add {name}' in msg
    assert not c.connected


def test_missing_namespace_default_dir(make_conn):
    name = f'tkcp-missing-{secrets.token_hex(4)}'
    with pytest.raises(AnsibleConnectionFailure, match=f'/run/netns/{name}'):
        make_conn(ansible_netns_name=name).exec_command('true')


@pytest.mark.parametrize('name', ['../x', 'a/b', '', '.', '..', 'a\0b'])
def test_invalid_names_rejected(make_conn, name):
    c = make_conn(inventory_hostname='h1', ansible_netns_name=name)
    with pytest.raises(AnsibleConnectionFailure, match='invalid network namespace name'):
        c._connect()


def test_plain_file_is_not_a_namespace(make_conn, tmp_path):
    (tmp_path / 'tkcp-file').write_text('')
    c = make_conn(ansible_netns_name='tkcp-file', ansible_netns_dir=str(tmp_path))
    with pytest.raises(AnsibleConnectionFailure, match="'tkcp-file' at .* is not a namespace"):
        c._connect()


# --- real namespace ---

@needs_root
def test_exec_runs_inside_namespace(conn, netns):
    rc, out, err = conn.exec_command('readlink /proc/self/ns/net')
    assert (rc, err) == (0, b'')
    inside = out.decode().strip()
    assert inside != os.readlink('/proc/self/ns/net')
    assert inside == f'net:[{os.stat(f"/run/netns/{netns}").st_ino}]'
    assert conn.connected


@needs_root
def test_exec_sees_only_loopback(conn):
    rc, out, err = conn.exec_command('ip -o link')
    assert rc == 0, err
    links = [line.split(':')[1].strip() for line in out.decode().splitlines()]
    assert links == ['lo']


@needs_root
def test_exec_stdin_pipelining(conn):
    data = b'{"ANSIBLE_MODULE_ARGS": {}}\n\xffbinary\n'
    assert conn.exec_command('cat', in_data=data) == (0, data, b'')
    # without in_data stdin is empty, so cat must not hang
    assert conn.exec_command('cat') == (0, b'', b'')


@needs_root
def test_exec_exit_code_and_stderr(conn):
    rc, out, err = conn.exec_command("echo out; echo 'e r r' >&2; exit 3")
    assert (rc, out, err) == (3, b'out\n', b'e r r\n')


@needs_root
def test_become_password_prompt_refused(conn):
    become = become_loader.get('sudo')
    become.set_options(direct={'become_pass': 'secret'})
    cmd = become.build_become_command('true', conn._shell)
    conn.set_become_plugin(become)
    with pytest.raises(AnsibleError, match='cannot answer become password prompts'):
        conn.exec_command(cmd)


@needs_root
def test_close_and_reconnect(conn):
    assert conn.exec_command('true')[0] == 0
    conn.close()
    assert not conn.connected
    assert conn.exec_command('true')[0] == 0
    assert conn.connected


@needs_root
def test_put_and_fetch_file(conn, tmp_path, monkeypatch):
    src = tmp_path / 'src.bin'
    src.write_bytes(b'payload\x00\xff')
    conn.put_file(str(src), str(tmp_path / 'put.bin'))
    assert (tmp_path / 'put.bin').read_bytes() == b'payload\x00\xff'

    conn.fetch_file(str(tmp_path / 'put.bin'), str(tmp_path / 'fetched.bin'))
    assert (tmp_path / 'fetched.bin').read_bytes() == b'payload\x00\xff'

    monkeypatch.setenv('HOME', str(tmp_path))  # '~' is expanded like the local connection does
    conn.put_file(str(src), '~/home.bin')
    assert (tmp_path / 'home.bin').read_bytes() == b'payload\x00\xff'


@needs_root
def test_put_fetch_errors(conn, tmp_path):
    with pytest.raises(AnsibleFileNotFound):
        conn.put_file(str(tmp_path / 'nope'), str(tmp_path / 'out'))
    with pytest.raises(AnsibleFileNotFound):
        conn.fetch_file(str(tmp_path / 'nope'), str(tmp_path / 'out'))
    (tmp_path / 'src').write_text('x')
    with pytest.raises(AnsibleError, match='failed to copy'):
        conn.put_file(str(tmp_path / 'src'), str(tmp_path / 'no-such-dir' / 'out'))


@needs_root
def test_nsenter_missing(make_conn, netns):
    c = make_conn(inventory_hostname=netns, ansible_nsenter_path='/nonexistent/nsenter')
    with pytest.raises(AnsibleConnectionFailure, match='nsenter'):
        c._connect()


@needs_root
def test_not_root(make_conn, netns, monkeypatch):
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    with pytest.raises(AnsibleConnectionFailure, match='needs root on the controller'):
        make_conn(inventory_hostname=netns)._connect()


# --- end to end through the ansible CLI ---

def run_ansible(tmp_path, collections, inventory, *args, pipelining=False):
    """Run the ad-hoc ansible CLI (minimal callback); returns (process, {host: result}, vvv log).

    -vvv with ANSIBLE_VERBOSE_TO_STDERR (ansible-core 2.8 and newer) sends the connection's EXEC/PUT
    lines to stderr and to the log, so stdout stays parseable on every ansible-core we support;
    ANSIBLE_LOG_VERBOSITY alone would not do on 2.16, which does not have it."""
    (tmp_path / 'inv').write_text(inventory)
    log = tmp_path / 'ansible.log'
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_PIPELINING='1' if pipelining else '0',
        ANSIBLE_LOCAL_TEMP=str(tmp_path / 'local-tmp'),
        ANSIBLE_REMOTE_TMP=str(tmp_path / 'remote-tmp'),
        ANSIBLE_LOG_PATH=str(log),
        ANSIBLE_VERBOSE_TO_STDERR='1',
        ANSIBLE_NOCOLOR='1',
    )
    for var in ('ANSIBLE_NETNS_NAME', 'ANSIBLE_CONFIG', 'ANSIBLE_STDOUT_CALLBACK', 'ANSIBLE_LOAD_CALLBACK_PLUGINS',
                'ANSIBLE_LOG_VERBOSITY'):
        env.pop(var, None)
    proc = subprocess.run([str(ANSIBLE), '-vvv', '-i', str(tmp_path / 'inv'), 'all', *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    return proc, parse_adhoc(proc.stdout), log.read_text() if log.exists() else ''


def parse_adhoc(stdout):
    """Parse 'host | STATUS => {json}' and 'host | CHANGED | rc=N >>' (command/raw) blocks."""
    results = {}
    heads = list(re.finditer(r'^(\S+) \| ([A-Z!]+)(?: \| rc=(-?\d+))? (=>|>>)[ \n]', stdout, re.M))
    for head, nxt in zip(heads, heads[1:] + [None]):
        host, status, rc, kind = head.groups()
        body = stdout[head.end():nxt.start() if nxt else len(stdout)]
        if kind == '=>':
            results[host] = json.JSONDecoder().raw_decode(body.strip())[0]
        else:
            results[host] = {'rc': int(rc), 'stdout': body, 'stdout_lines': body.splitlines()}
        results[host]['status'] = status
    return results


def host_line(name, **hostvars):
    extra = ' '.join(f'{k}={v}' for k, v in hostvars.items())
    return f'{name} ansible_connection={PLUGIN} ansible_python_interpreter={sys.executable} {extra}\n'


@needs_root
@pytest.mark.parametrize('pipelining', [True, False], ids=['pipelining', 'no-pipelining'])
def test_cli_ping_and_command(collection_finder, netns, tmp_path, pipelining):
    inventory = host_line(netns)
    proc, res, log = run_ansible(tmp_path, collection_finder, inventory, '-m', 'ansible.builtin.ping', pipelining=pipelining)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (res[netns]['status'], res[netns]['ping']) == ('SUCCESS', 'pong')
    # the module file is only transferred when pipelining is off (EXEC: the log does hold the connection's lines)
    assert 'EXEC ' in log and ('PUT ' in log) is not pipelining, log

    proc, res, log = run_ansible(tmp_path, collection_finder, inventory, '-m', 'ansible.builtin.command', '-a', 'ip -o link',
                                 pipelining=pipelining)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (res[netns]['status'], res[netns]['rc']) == ('CHANGED', 0)
    assert [line.split(':')[1].strip() for line in res[netns]['stdout_lines']] == ['lo']


@needs_root
def test_cli_netns_name_var_and_become(collection_finder, netns, tmp_path):
    inventory = host_line('tkcp-alias', ansible_netns_name=netns)
    proc, res, log = run_ansible(tmp_path, collection_finder, inventory, '-m', 'ansible.builtin.raw',
                                 '-a', 'readlink /proc/self/ns/net', '--become', '--become-method', 'su')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # su as root needs no password prompt; the BECOME-SUCCESS marker does not leak into stdout
    assert 'BECOME-SUCCESS' not in res['tkcp-alias']['stdout']
    assert res['tkcp-alias']['stdout'].strip() == f'net:[{os.stat(f"/run/netns/{netns}").st_ino}]'


@needs_root
def test_cli_missing_namespace_unreachable(collection_finder, tmp_path):
    name = f'tkcp-missing-{secrets.token_hex(4)}'
    proc, res, log = run_ansible(tmp_path, collection_finder, host_line(name), '-m', 'ansible.builtin.ping')
    assert proc.returncode == 4, proc.stdout + proc.stderr  # 4 == unreachable hosts
    assert res[name]['status'] == 'UNREACHABLE!' and res[name]['unreachable'] is True
    assert f"network namespace '{name}' not found at /run/netns/{name}" in res[name]['msg']
