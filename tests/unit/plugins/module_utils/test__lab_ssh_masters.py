# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_lab_ssh_masters: the lab's ssh control directory, and which master is the lab's. The real masters (an ssh
host's, ended by absent) are the lab_hosts integration target's; here, the argv and the refusals."""

from __future__ import annotations

import socket

from ansible_collections.tcplab.keepalive.plugins.module_utils import _lab_ssh_masters as masters


def test_the_control_directory_is_the_lab_s_own_unless_the_path_would_be_too_long():
    assert masters.control_dir('/run/tcplab-keepalive/lab') == '/run/tcplab-keepalive/lab/cp'
    longest = '/run/' + 'x' * (masters.STATE_DIR_MAX - 5)
    assert masters.control_dir(longest) == longest + '/cp'
    # ssh binds "<dir>/<10 letters>.<16 letters>": 107 bytes at most
    assert len(longest + '/cp/' + 'a' * 10 + '.' + 'b' * 16) <= 107
    assert masters.control_dir(longest + 'x') is None


def test_a_master_proves_itself_by_ssh_s_title_for_that_very_socket():
    # ssh blanks the rest of its old command line's room: /proc/PID/cmdline ends in empty arguments
    table = {1: ['ssh: /run/lab/cp/0123456789 [mux]', '', ''], 2: ['ssh: /run/lab2/cp/0123456789 [mux]'],
             3: ['ssh', '-S', '/run/lab/cp/0123456789', 'host'], 4: []}
    assert [pid for pid, argv in table.items() if masters.is_master_title(argv, '/run/lab/cp/0123456789')] == [1]


def test_a_socket_nobody_listens_on_is_removed_and_a_master_that_does_not_prove_itself_stays(tmp_path):
    stale = tmp_path / 'stale'
    listening = tmp_path / 'foreign'
    made = socket.socket(socket.AF_UNIX)
    made.bind(str(stale))
    made.close()
    held = socket.socket(socket.AF_UNIX)
    held.bind(str(listening))
    (tmp_path / 'not-a-socket').write_text('x')
    calls = []

    def run(argv, check=True):
        calls.append(argv)
        if argv[argv.index('-S') + 1] == str(listening):
            return 0, '', 'Master running (pid=1)\n'   # pid 1 is init, not an ssh master
        return 255, '', 'Control socket connect(%s): Connection refused\n' % argv[argv.index('-S') + 1]

    try:
        closed, notes = masters.close_masters(run, '/usr/bin/ssh', str(tmp_path))
    finally:
        held.close()
    assert closed == [] and not stale.exists() and listening.exists() and (tmp_path / 'not-a-socket').exists()
    assert len(notes) == 1 and 'left alone: %s, whose master (pid 1)' % listening in notes[0]
    assert sorted(calls) == sorted([['/usr/bin/ssh', '-o', 'BatchMode=yes', '-S', str(path), '-O', 'check', 'tcplab-lab-master']
                                    for path in (listening, stale)])
