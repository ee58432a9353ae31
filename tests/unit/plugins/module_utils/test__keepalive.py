# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import os

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _keepalive as ka


def test_sysctl_names_are_the_kernels():
    for key in ka.KEYS:
        path = ka.PROC % key
        assert path == '/proc/sys/' + (ka.SYSCTL % key).replace('.', '/')
        assert os.path.exists(path), path


def test_kernel_defaults_lie_within_bounds():
    for key, (low, high) in ka.BOUNDS.items():
        assert low <= ka.KERNEL_DEFAULTS[key] <= high


def test_detection_seconds_of_the_kernel_defaults_is_two_hours_and_eleven_minutes():
    assert ka.detection_seconds(ka.KERNEL_DEFAULTS) == 7200 + 75 * 9 == 7875
    assert ka.format_values({'time': 2, 'intvl': 1, 'probes': 3}) == '2/1/3'


@pytest.mark.parametrize('value, expected, tolerance, ok', [
    (1.25, 1, None, True),                          # 0.25 s + 10 % of 1 s = 0.35 s
    (1.36, 1, None, False),
    (31.2, 30, None, True),                         # long timers come late by the timer wheel
    (1.0, 2, {'seconds': 0, 'percent': 0}, False),
    (2.0, 2, {'seconds': 0, 'percent': 0}, True),
])
def test_fits(value, expected, tolerance, ok):
    assert ka.fits(value, expected, tolerance) is ok


def test_idle_timeouts_have_seconds_and_an_action():
    for name, preset in ka.IDLE_TIMEOUTS.items():
        assert preset['seconds'] > 0, name
        assert preset['action'] in ('drop', 'reset'), name


def test_file_kind_names_what_a_path_is(tmp_path):
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import file_kind
    fifo = tmp_path / 'fifo'
    os.mkfifo(str(fifo))
    (tmp_path / 'file').write_text('x')
    os.symlink(str(tmp_path / 'file'), str(tmp_path / 'link'))
    assert file_kind(os.lstat(str(tmp_path / 'file')).st_mode) == 'a file'
    assert file_kind(os.lstat(str(tmp_path)).st_mode) == 'a directory'
    assert file_kind(os.lstat(str(fifo)).st_mode) == 'a FIFO (named pipe)'
    assert file_kind(os.lstat(str(tmp_path / 'link')).st_mode) == 'a symbolic link'
    assert file_kind(os.lstat('/dev/null').st_mode) == 'a character device'


def test_port_open_sees_a_listener_and_not_a_closed_port():
    import socket
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import port_open
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert port_open('127.0.0.1', port)
    assert not port_open('127.0.0.1', port)
