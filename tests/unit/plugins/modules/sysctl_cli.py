# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The sysctl module run for real, as a user runs it (`ansible localhost -m tcplab.keepalive.sysctl -a ...`), and the
kernel's values read back from a network namespace: shared by test_sysctl_netns, test_sysctl_all and
test_sysctl_retries2 (their fixtures `collections` and `journal` are in this directory's conftest.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ANSIBLE = Path(sys.executable).parent / 'ansible'
TRIO = ('tcp_keepalive_time', 'tcp_keepalive_intvl', 'tcp_keepalive_probes')


def run_module(collections, tmp_path, args, extra=(), inside=None):
    """(status, result) of the module run ad hoc with k=v args (text) or typed ones (a dict, sent as JSON); extra:
    more ansible arguments; inside: run the whole ansible in that netns (a lab host that is a namespace)."""
    if isinstance(args, dict):
        args = json.dumps(args)
    (tmp_path / 'ansible.cfg').write_text('[defaults]\n')
    env = dict(os.environ, ANSIBLE_CONFIG=str(tmp_path / 'ansible.cfg'), ANSIBLE_COLLECTIONS_PATH=str(collections),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'), ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1',
               ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    cmd = [str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,', '-m', 'tcplab.keepalive.sysctl', '-a', args,
           '-e', 'ansible_python_interpreter=%s' % sys.executable] + list(extra)
    if inside is not None:
        cmd = ['ip', 'netns', 'exec', inside] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120, check=False)
    match = re.search(r'^localhost \| (SUCCESS|CHANGED|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    return match.group(1), json.loads(proc.stdout[match.end():])


def kernel_values(ns, keys=TRIO):
    """The values of net.ipv4.<key> for keys, read inside namespace ns."""
    out = subprocess.run(['ip', 'netns', 'exec', ns, 'cat'] + ['/proc/sys/net/ipv4/%s' % key for key in keys],
                         capture_output=True, text=True, check=True).stdout
    return [int(line) for line in out.split()]


def netns_inode(ns):
    return os.stat('/run/netns/%s' % ns).st_ino
