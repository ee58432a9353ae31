# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The experiment role's input for data in flight, run for real with ansible-playbook on lab namespaces of this test
(tk5a-<random>, 198.19.81.0/24, the netns connection):

- check mode of the in-flight run says what it would change for tcp_retries2 and TCP_USER_TIMEOUT too (before: only
  the keepalive trio), and changes nothing;
- experiment_in_flight with experiment_fault idle_timeout is refused by the preflight with its message (before: the
  idle-timeout run went ahead and experiment_in_flight was silently ignored), before anything changed;
- a start bound (experiment_start_timeout) that is not whole seconds from 1 to 600 is refused (the role's argument
  spec, then its first check) before anything changed."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys

import pytest
import yaml

from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.lab_netns import namespaces

NETNS_PREFIX = 'tk5a-'


@pytest.fixture
def netns_factory():
    """This test's namespaces (tk5a-<random>), removed afterwards: lab_netns.namespaces."""
    with namespaces(NETNS_PREFIX) as make:
        yield make


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PREFLIGHT = os.path.join(ROOT, 'roles', 'experiment', 'tasks', 'preflight.yml')
real = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ansible-playbook') or not shutil.which('nsenter'),
                          reason='needs root, ansible-playbook and nsenter')
PLAY = '''
- name: The experiment
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Run it
      ansible.builtin.include_role:
        name: tcplab.keepalive.experiment
'''


def message():
    """The preflight's message constant, as the play prints it (folded, whitespace collapsed)."""
    with open(PREFLIGHT) as handle:
        tasks = yaml.safe_load(handle)
    task = next(t for t in tasks if t.get('name') == 'Refuse data in flight with the idle-timeout fault')
    return ' '.join(task['vars']['__experiment_msg_in_flight_fault'].split())


def sysctl(ns, name):
    return subprocess.run(['ip', 'netns', 'exec', ns, 'cat', '/proc/sys/net/ipv4/' + name], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def hosts(netns_factory, tmp_path):
    names = {role: netns_factory() for role in ('client', 'server', 'middlebox')}
    suffix = secrets.token_hex(3)
    subprocess.run(['ip', 'link', 'add', 'tk5a' + suffix, 'netns', names['client'], 'type', 'veth', 'peer', 'name',
                    'tk5b' + suffix, 'netns', names['server']], check=True)
    addresses = {'client': '198.19.81.21', 'server': '198.19.81.22', 'middlebox': '198.19.81.23'}
    for role, dev in (('client', 'tk5a' + suffix), ('server', 'tk5b' + suffix)):
        subprocess.run(['ip', '-n', names[role], 'addr', 'add', addresses[role] + '/24', 'dev', dev], check=True)
        subprocess.run(['ip', '-n', names[role], 'link', 'set', dev, 'up'], check=True)
    inventory = {'all': {'hosts': {role: {'ansible_connection': 'tcplab.keepalive.netns', 'ansible_netns_name': name,
                                          'lab_address': addresses[role], 'ansible_python_interpreter': sys.executable}
                                   for role, name in names.items()}}}
    (tmp_path / 'inventory.yml').write_text(yaml.safe_dump(inventory))
    (tmp_path / 'play.yml').write_text(PLAY)
    return names


def play(tmp_path, *args):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, '.build', 'collections'),
               ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0')
    argv = ['ansible-playbook', '-i', str(tmp_path / 'inventory.yml'), str(tmp_path / 'play.yml'),
            '-e', 'experiment_client=client experiment_server=server experiment_run_id=tk5a-input',
            '-e', 'experiment_report_dir=%s' % (tmp_path / 'reports'),
            '-e', '{"experiment_keepalive": {"time": 20, "intvl": 1, "probes": 3}}'] + list(args)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    return done.returncode, ' '.join((done.stdout + done.stderr).split())


@real
@pytest.mark.once
def test_check_mode_of_data_in_flight_names_tcp_retries2_and_the_user_timeout(hosts, tmp_path):
    before = sysctl(hosts['client'], 'tcp_retries2')
    rc, out = play(tmp_path, '--check', '--diff', '-e', 'experiment_in_flight=true experiment_tcp_retries2=3',
                   '-e', 'experiment_user_timeout_ms=1500')
    assert rc == 0, out[-3000:]
    said = re.search(r'Check mode, nothing changed\. (.*?)Run id tk5a-input', out).group(1)
    assert "set client's net.ipv4.tcp_retries2 to 3 (" in said
    assert "set TCP_USER_TIMEOUT 1500 ms on the client's socket" in said
    assert 'TCP_USER_TIMEOUT decides, not keepalive' in said and 'unanswered probes and the RST' not in said
    assert sysctl(hosts['client'], 'tcp_retries2') == before and not (tmp_path / 'reports').exists()
    # without experiment_tcp_retries2 it says the value stays
    rc, out = play(tmp_path, '--check', '-e', 'experiment_in_flight=true')
    assert rc == 0 and "leave client's net.ipv4.tcp_retries2 as it is" in out and 'tcp_retries2 decides' in out


@real
def test_data_in_flight_with_the_idle_timeout_fault_is_refused_before_anything_changes(hosts, tmp_path):
    before = [sysctl(hosts['client'], name) for name in ('tcp_retries2', 'tcp_keepalive_time')]
    rc, out = play(tmp_path, '-e', 'experiment_in_flight=true experiment_fault=idle_timeout experiment_middlebox=middlebox',
                   '-e', '{"experiment_idle_timeout": {"seconds": 6}}')
    assert rc != 0 and message() in out
    assert 'Refuse data in flight with the idle-timeout fault' in out and 'Take the lease' not in out
    assert [sysctl(hosts['client'], name) for name in ('tcp_retries2', 'tcp_keepalive_time')] == before
    assert not (tmp_path / 'reports').exists()


@real
@pytest.mark.once
@pytest.mark.parametrize('value, said', [('0', 'experiment_start_timeout is whole seconds from 1 to 600'),
                                         ('601', 'experiment_start_timeout is whole seconds from 1 to 600'),
                                         ('soon', "argument 'experiment_start_timeout' is of type str and we were "
                                                  "unable to convert to int")])
def test_a_bad_start_timeout_is_refused_before_anything_changes(hosts, tmp_path, value, said):
    before = sysctl(hosts['client'], 'tcp_keepalive_time')
    rc, out = play(tmp_path, '-e', 'experiment_start_timeout=%s' % value)
    assert rc != 0 and said in out, out[-2000:]
    assert 'Take the lease' not in out and sysctl(hosts['client'], 'tcp_keepalive_time') == before


def as_nobody(tmp_path, *roles):
    """The inventory with roles' hosts running the modules as nobody (sudo; the system's Python, which nobody can
    read): hosts that cannot run their part of the experiment - not root."""
    path = tmp_path / 'inventory.yml'
    inventory = yaml.safe_load(path.read_text())
    for role in roles:
        inventory['all']['hosts'][role].update(ansible_become=True, ansible_become_method='sudo', ansible_become_user='nobody',
                                               ansible_python_interpreter='/usr/bin/python3')
    path.write_text(yaml.safe_dump(inventory))


@real
def test_the_server_s_start_looks_at_its_host_first_and_refuses_it_before_anything_changes(hosts, tmp_path):
    """The preflight looks at the client only; the server's start looks at its host itself (one module run less per
    run) and, as it cannot run its part there, changes nothing: the run ends with the preflight's message, no lease,
    no report."""
    as_nobody(tmp_path, 'server')
    before = sysctl(hosts['client'], 'tcp_keepalive_time')
    rc, out = play(tmp_path)
    assert rc != 0 and 'server (' in out, out[-3000:]
    assert 'cannot run the experiment, nothing was changed: it runs tasks as uid 65534, not root (use become: true);' in out
    assert re.search(r'not root \(use become: true\);["\'\n]', out), out[-3000:]   # the message ends there, no blanks
    assert 'client (' not in out.split('cannot run the experiment', maxsplit=1)[0][-200:]
    assert "Start the server's host" in out and "Start the client's host" not in out
    # nothing to put back or report: the ends and the report did not run
    assert "End on the client's host" not in out and 'Judge the experiment' not in out and '(report: ' not in out
    assert sysctl(hosts['client'], 'tcp_keepalive_time') == before and not (tmp_path / 'reports').exists()


@real
@pytest.mark.once
def test_when_the_client_cannot_run_its_part_the_preflight_names_what_the_server_lacks_too(hosts, tmp_path):
    as_nobody(tmp_path, 'client', 'server')
    rc, out = play(tmp_path)
    assert rc != 0, out[-3000:]
    for role in ('client', 'server'):
        assert re.search(role + r' \([^)]*\) cannot run the experiment, nothing was changed: it runs tasks as uid 65534', out), out[-3000:]
    assert "Start the server's host" not in out and not (tmp_path / 'reports').exists()


@real
@pytest.mark.once
def test_a_server_that_captures_is_looked_at_by_the_preflight(hosts, tmp_path):
    """The server's capture takes its interface toward the client from the preflight's look: with captures on both
    hosts the preflight looks at the server too, and an unfit server fails there, before any start."""
    as_nobody(tmp_path, 'server')
    rc, out = play(tmp_path, '-e', 'experiment_captures=both')
    assert rc != 0 and re.search(r'server \([^)]*\) cannot run the experiment, nothing was changed: it runs tasks as uid 65534', out), out[-3000:]
    assert "Start the server's host" not in out and not (tmp_path / 'reports').exists()


@real
@pytest.mark.once
def test_on_loopback_the_one_host_s_start_looks_at_it_and_refuses_it_before_anything_changes(hosts, tmp_path):
    as_nobody(tmp_path, 'client')
    before = sysctl(hosts['client'], 'tcp_keepalive_time')
    rc, out = play(tmp_path, '-e', 'experiment_server=client')
    assert rc != 0 and re.search(r'client \([^)]*\) cannot run the experiment, nothing was changed: it runs tasks as uid 65534', out), out[-3000:]
    # no look of its own in the preflight: the start looked, refused, and nothing ran after it
    assert "Start the client's host" in out and "End on the client's host" not in out and '(report: ' not in out
    assert sysctl(hosts['client'], 'tcp_keepalive_time') == before and not (tmp_path / 'reports').exists()
