# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The report module run for real (`ansible localhost -m tcplab.keepalive.report`) on bad input: a FIFO among the
pcaps, a missing key, a dest that is a file. Each fails at once with a message that names the fix, and leaves
nothing behind."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[4]
ANSIBLE = Path(sys.executable).parent / 'ansible'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'
SETTINGS = {'time': 2, 'intvl': 1, 'probes': 3}


@pytest.fixture(scope='module', autouse=True)
def needs_build_tree():
    if not (COLLECTIONS / 'ansible_collections' / 'tcplab' / 'keepalive').exists() or not ANSIBLE.exists():
        pytest.skip('needs %s (scripts/bootstrap) and ansible next to %s' % (COLLECTIONS, sys.executable))


def run_report(args, tmp_path):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
               ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    proc = subprocess.run([str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,', '-m', 'tcplab.keepalive.report',
                           '-a', json.dumps(args), '-e', 'ansible_python_interpreter=%s' % sys.executable],
                          capture_output=True, text=True, env=env, timeout=25, check=False)
    match = re.search(r'^localhost \| (SUCCESS|CHANGED|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    result = json.loads(proc.stdout[match.end():])
    result['_status'] = match.group(1)
    return proc.returncode, result


def _release(fifo):
    """Unblock a reader stuck in open() on the FIFO (the old module), so that no process is left behind."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        assert exc.errno == errno.ENXIO


def test_fifo_missing_key_and_file_dest(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    fifo = str(out / 'capture.pcap')
    os.mkfifo(fifo)
    data = {'run_id': 'r1', 'settings': SETTINGS, 'expected': SETTINGS, 'client_port': 22345, 'pcaps': [fifo]}
    started = time.monotonic()
    try:
        rc, result = run_report({'dest': str(out / 'r1'), 'data': data}, tmp_path)
    finally:
        _release(fifo)
    assert rc != 0 and time.monotonic() - started < 20
    assert result['msg'] == 'data.pcaps: %s is a FIFO (named pipe), not a regular file: give the path of a pcap or ' \
                            'pcapng capture file' % fifo

    data = {'run_id': 'r1', 'settings': SETTINGS, 'expected': SETTINGS}
    rc, result = run_report({'dest': str(out / 'r2'), 'data': data}, tmp_path)
    assert rc != 0
    assert result['msg'] == "data.client_port is missing: give the keepalive client's local port (an integer 1..65535)"

    afile = out / 'notes.txt'
    afile.write_text('mine')
    rc, result = run_report({'dest': str(afile), 'data': dict(data, client_port=22345)}, tmp_path)
    assert rc != 0
    assert result['msg'] == ('dest %s exists and is not a directory: give the path of a directory for the report (it is '
                             'created if missing)' % afile)
    assert sorted(p.name for p in out.iterdir()) == ['capture.pcap', 'notes.txt'] and afile.read_text() == 'mine'
