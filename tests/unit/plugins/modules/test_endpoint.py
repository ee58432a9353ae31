# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The endpoint module run for real, `ansible localhost -m tcplab.keepalive.endpoint` inside a network namespace
(tken-*): a timeout without sense is refused before anything is written, and a server killed from outside is
reported at once as died, with the process and the signal, in the result the experiment role polls."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[4]
ANSIBLE = Path(sys.executable).parent / 'ansible'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason='needs root for ip netns')


@pytest.fixture
def netns(tmp_path):
    name = 'tken-%s' % secrets.token_hex(3)
    state = '/run/tcplab-test-endpoint/%s' % name
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    try:
        subprocess.run(['ip', '-n', name, 'link', 'set', 'lo', 'up'], check=True)
        yield name, state
    finally:
        pids = subprocess.run(['ip', 'netns', 'pids', name], capture_output=True, text=True, check=False).stdout.split()
        for pid in pids:
            subprocess.run(['kill', '-9', pid], check=False)
        subprocess.run(['ip', 'netns', 'del', name], check=False)
        shutil.rmtree(state, ignore_errors=True)


def run_module(ns, args, tmp_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
               ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    proc = subprocess.run(['ip', 'netns', 'exec', ns, str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,',
                           '-m', 'tcplab.keepalive.endpoint', '-a', json.dumps(args),
                           '-e', 'ansible_python_interpreter=%s' % sys.executable],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    match = re.search(r'^localhost \| (SUCCESS|CHANGED|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    result = json.JSONDecoder().raw_decode(proc.stdout[match.end():])[0]
    result['_status'] = match.group(1)
    return result


def test_timeout_without_sense_is_refused_and_nothing_written(netns, tmp_path):
    ns, state = netns
    got = run_module(ns, {'role': 'server', 'port': 41200, 'timeout': -1, 'state_dir': state}, tmp_path)
    assert got['_status'] == 'FAILED!'
    assert got['msg'] == 'timeout must be a number of seconds greater than 0 and at most 3600, got -1.0'
    assert not os.path.exists(state)


@pytest.mark.once
def test_a_killed_server_is_reported_died_at_once(netns, tmp_path):
    ns, state = netns
    args = {'role': 'server', 'port': 41201, 'state_dir': state}
    started = run_module(ns, args, tmp_path)
    assert started['_status'] == 'CHANGED' and started['outcome']['state'] == 'running', started
    assert started['pid'] != started['supervisor_pid']
    os.kill(started['pid'], signal.SIGKILL)
    status = run_module(ns, dict(args, state='status'), tmp_path)
    assert status['outcome']['state'] == 'died'
    assert status['outcome']['signal'] == 'SIGKILL'
    assert status['msg'] == status['outcome']['reason'] == 'the server (pid %d, python) was killed by SIGKILL' % started['pid']
    assert run_module(ns, {'state': 'purged', 'state_dir': state}, tmp_path)['stopped'] == []
