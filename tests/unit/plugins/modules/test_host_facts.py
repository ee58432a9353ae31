# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""host_facts, the experiment preflight's one module run per host: run for real (`ansible localhost -m ...`) and
compared with what it replaces - ansible.builtin.setup's facts, ansible.builtin.find's files (read by the
missing_tools filter) and tcplab.keepalive.capture's check-mode answer - on this machine; and its parts on files
of a temporary directory (os-release, package managers, binaries) and its bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.filter.keepalive import missing_tools
from ansible_collections.tcplab.keepalive.plugins.module_utils import _host_facts as hf

REPO_ROOT = Path(__file__).resolve().parents[4]
ANSIBLE = Path(sys.executable).parent / 'ansible'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'


def run_module(module, args, tmp_path, check=False):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
               ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    proc = subprocess.run([str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,', '-m', module,
                           '-a', json.dumps(args), '-e', 'ansible_python_interpreter=%s' % sys.executable]
                          + (['--check'] if check else []),
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    match = re.search(r'^localhost \| (SUCCESS|CHANGED|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    return match.group(1), json.loads(proc.stdout[match.end():])


def test_module_answers_what_setup_find_and_capture_answer(tmp_path):
    names = ['ip', 'iptables', 'iptables-nft', 'iptables-legacy', 'curl', 'nc', 'tcplab-no-such-tool']
    status, got = run_module('tcplab.keepalive.host_facts', {'binaries': names, 'capture': True, 'route_to': '127.0.0.1'},
                             tmp_path, check=True)
    assert status == 'SUCCESS', got
    assert got['changed'] is False
    _status, setup = run_module('ansible.builtin.setup', {'gather_subset': ['!all', '!min', 'platform', 'user', 'python',
                                                                            'distribution', 'pkg_mgr']}, tmp_path)
    facts, wanted = got['ansible_facts'], setup['ansible_facts']
    for key in ('effective_user_id', 'system', 'kernel', 'distribution', 'pkg_mgr'):
        assert facts.get(key) == wanted.get('ansible_' + key), key
    assert facts['distribution_version'] == wanted['ansible_distribution_version']
    for part in ('major', 'minor', 'micro'):
        assert facts['python']['version'][part] == wanted['ansible_python']['version'][part]
    _status, found = run_module('ansible.builtin.find', {'paths': list(hf.BIN_DIRS), 'patterns': names, 'file_type': 'any'},
                                tmp_path)
    assert sorted(f['path'] for f in got['files']) == sorted(f['path'] for f in found['files'])
    needs = ['capture', 'ip', 'iptables', 'curl', 'nc']
    _status, capture = run_module('tcplab.keepalive.capture', {'iface': 'lo'}, tmp_path, check=True)
    assert got['capture'].get('backend') == capture.get('backend')
    assert missing_tools(needs, found=got['files'], capture=got['capture']) == \
        missing_tools(needs, found=found['files'], capture=capture)
    assert got['route']['dev'] == 'lo' and '127.0.0.1' in got['route']['stdout']


def test_module_refuses_a_path_as_binary_name(tmp_path):
    status, got = run_module('tcplab.keepalive.host_facts', {'binaries': ['/bin/sh']}, tmp_path)
    assert status == 'FAILED!'
    assert got['msg'] == hf.MSG_BINARY % ('/bin/sh',)


@pytest.mark.parametrize('name', ['/bin/sh', '*', 'ip*', '../ip', '', 'a b'])
def test_check_binaries_refuses_paths_and_patterns(name):
    with pytest.raises(hf.HostFactsError) as err:
        hf.check_binaries([name])
    assert str(err.value) == hf.MSG_BINARY % (name,)


def test_find_binaries_lists_files_as_find_does(tmp_path):
    (tmp_path / 'tool').write_text('#!/bin/sh\n')
    (tmp_path / 'tool').chmod(0o755)
    (tmp_path / 'plain').write_text('')
    (tmp_path / 'plain').chmod(0o644)
    (tmp_path / 'link').symlink_to(tmp_path / 'tool')
    files = {os.path.basename(f['path']): f for f in hf.find_binaries(['tool', 'plain', 'link', 'gone'], dirs=[str(tmp_path)])}
    assert sorted(files) == ['link', 'plain', 'tool']
    assert files['tool']['isreg'] and files['tool']['xusr'] and not files['tool']['islnk']
    assert files['plain']['isreg'] and not (files['plain']['xusr'] or files['plain']['xgrp'] or files['plain']['xoth'])
    assert files['link']['islnk'] and not files['link']['isreg']


def test_distribution_from_os_release(tmp_path):
    release = tmp_path / 'os-release'
    release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n')
    point = tmp_path / 'debian_version'
    point.write_text('12.8\n')
    values = hf.os_release([str(tmp_path / 'missing'), str(release)])
    assert hf.distribution(values, str(point)) == ('Debian', '12.8')
    point.write_text('trixie/sid\n')
    assert hf.distribution(values, str(point)) == ('Debian', '12')
    assert hf.distribution({'NAME': 'Ubuntu', 'ID': 'ubuntu', 'VERSION_ID': '24.04'}) == ('Ubuntu', '24.04')
    assert hf.os_release([str(tmp_path / 'missing')]) == {}


def test_pkg_mgr_order_and_none(tmp_path):
    assert hf.pkg_mgr(dirs=[str(tmp_path)]) is None
    for name in ('yum', 'apt-get'):
        (tmp_path / name).write_text('')
        (tmp_path / name).chmod(0o755)
    assert hf.pkg_mgr(dirs=[str(tmp_path)]) == 'apt'


def test_route_dev_without_ip_or_route():
    assert hf.route_dev(None, None, '198.18.0.1') == {'address': '198.18.0.1', 'dev': None, 'stdout': '', 'msg': hf.MSG_NO_IP}

    def no_route(argv, check=True):
        assert check is False and argv[1:] == ['-o', 'route', 'get', '198.18.0.1']
        return 2, '', 'RTNETLINK answers: Network is unreachable\n'
    got = hf.route_dev(no_route, '/usr/sbin/ip', '198.18.0.1')
    assert got['dev'] is None
    assert got['msg'] == hf.MSG_NO_ROUTE % ('198.18.0.1', 2, 'RTNETLINK answers: Network is unreachable')


def test_preflight_runs_one_module_per_host():
    """The experiment's preflight (preflight.yml and the probe.yml it includes) runs one module on each host when
    nothing is to be installed: host_facts. Before, setup, find and the capture module's check were three (and
    start.yml's ip route command a fourth on a capture host)."""
    import yaml  # pylint: disable=import-outside-toplevel
    tasks_dir = REPO_ROOT / 'roles' / 'experiment' / 'tasks'
    controller = {'ansible.builtin.assert', 'ansible.builtin.set_fact', 'ansible.builtin.include_tasks', 'ansible.builtin.debug'}
    remote = []
    for name in ('preflight.yml', 'probe.yml'):
        for task in yaml.safe_load((tasks_dir / name).read_text()):
            action = next(key for key in task if '.' in key)
            when = ' '.join(task.get('when', [])) if isinstance(task.get('when'), list) else str(task.get('when', ''))
            if action in controller or 'experiment_install_deps' in when:
                continue
            remote.append((name, action))
    assert remote == [('probe.yml', 'tcplab.keepalive.host_facts')]
    start = yaml.safe_load((tasks_dir / 'start.yml').read_text())
    route = next(task for task in start if task['name'].startswith('Find the interface'))
    assert "experiment_fault == 'idle_timeout'" in route['when'] and '__experiment_route_dev' in route['when']


def executable(directory, name):
    path = directory / name
    path.write_text('#!/bin/sh\n')
    path.chmod(0o755)
    return path


def test_tools_are_found_by_any_of_their_binaries(tmp_path):
    executable(tmp_path, 'iptables-legacy')
    executable(tmp_path, 'ip')
    files = hf.find_binaries(hf.tool_binaries(['ip', 'iptables', 'nc', 'capture']), dirs=[str(tmp_path)])
    assert hf.found_tools(files) == {'ip', 'iptables'}
    assert hf.missing_tools(['ip', 'iptables', 'nc'], files) == ['nc']
    # capture is had when the capture module's check names a backend
    assert hf.missing_tools(['capture'], files, {'failed': True, 'msg': 'no tcpdump'}) == ['capture']
    assert hf.missing_tools(['capture'], files, {'backend': 'tcpdump'}) == []
    # the filter gives the same answer for ansible.builtin.find's files
    assert missing_tools(['ip', 'iptables', 'nc'], files) == ['nc']
    with pytest.raises(hf.HostFactsError, match="unknown tool 'ssh': the experiment knows curl, ip, iptables, nc, capture"):
        hf.tool_binaries(['ssh'])


def facts_of(uid=0, kernel='6.1.0-28-amd64', python=(3, 11)):
    return {'effective_user_id': uid, 'kernel': kernel, 'python': {'version': {'major': python[0], 'minor': python[1]}}}


@pytest.mark.parametrize('host, missing, expected', [
    (facts_of(), [], []),
    (facts_of(uid=1000), [], ['user']),
    (facts_of(kernel='4.4.0-210-generic'), [], ['kernel']),
    (facts_of(kernel='4.5'), [], []),
    (facts_of(python=(3, 7)), ['iptables'], ['python', 'tools']),
    (facts_of(uid=1000, kernel='3.10.0-1160.el7.x86_64', python=(2, 7)), ['capture'], ['user', 'kernel', 'python', 'tools']),
])
def test_shortfalls_name_what_keeps_a_host_from_its_part(host, missing, expected):
    assert hf.shortfalls(host, missing, '4.5', '3.8') == expected


def test_shortfalls_refuse_a_minimum_that_is_no_version():
    with pytest.raises(hf.HostFactsError, match="min_kernel 'new' is not a version"):
        hf.shortfalls(facts_of(), [], 'new', '3.8')
    assert hf.version_of('6.12.9+bpo-amd64') == (6, 12, 9)
    # a kernel release without a leading version is said the same way, not a bare ValueError
    with pytest.raises(hf.HostFactsError, match="kernel 'custom-build' is not a version"):
        hf.shortfalls(facts_of(kernel='custom-build'), [], '4.5', '3.8')


def test_look_judges_this_host(tmp_path):
    found = hf.look(['ip'], '4.5', '3.8', None)
    assert found['facts']['effective_user_id'] == os.geteuid() and found['missing'] == [] and 'capture' not in found
    assert found['shortfalls'] == ([] if os.geteuid() == 0 else ['user'])
    # a kernel newer than any there is: refused for the kernel alone
    refused = hf.look(['ip'], '999.0', '3.8', None)['shortfalls']
    assert 'kernel' in refused and 'tools' not in refused
