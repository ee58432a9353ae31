# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared helpers of the tcplab.keepalive modules.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import os
import socket
import stat

# Every external command runs with the C locale so that its messages (which
# some callers parse) are stable.
LANG_ENV = {'LANG': 'C', 'LC_ALL': 'C', 'LC_MESSAGES': 'C'}


class CommandError(Exception):
    """An external command failed; carries everything needed to report it."""

    def __init__(self, msg, cmd, rc, stdout, stderr):
        super().__init__(msg)
        self.msg = msg
        self.cmd = list(cmd)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    def as_result(self):
        """Keyword arguments for AnsibleModule.fail_json()."""
        return dict(msg=self.msg, cmd=self.cmd, rc=self.rc,
                    stdout=self.stdout, stderr=self.stderr)


class Runner:
    """The one way the collection runs external commands.

    Commands are argv lists, never shell strings. A non-zero exit raises
    CommandError (unless the caller allows that exit code) with the command,
    exit code and output attached.
    """

    def __init__(self, module):
        self.module = module

    def __call__(self, argv, check=True, ok_rc=(0,), data=None, what=None):
        if isinstance(argv, (str, bytes)):
            raise TypeError('commands are argv lists, got a string: %r' % (argv,))
        argv = [str(a) for a in argv]
        rc, out, err = self.module.run_command(
            argv, check_rc=False, data=data, binary_data=data is not None,
            environ_update=LANG_ENV, use_unsafe_shell=False)
        if check and rc not in ok_rc:
            detail = (err or out or '').strip()
            msg = '%s failed (rc=%d): %s' % (what or ' '.join(argv), rc, detail)
            raise CommandError(msg, argv, rc, out, err)
        return rc, out, err


def find_binary(module, name, required=True, extra=('/usr/sbin', '/sbin', '/usr/bin', '/bin')):
    """Path of a program, or None; a clear error naming the package if required."""
    path = module.get_bin_path(name, required=False, opt_dirs=list(extra))
    if path is None and required:
        raise CommandError(
            '%s not found in PATH or %s: install it (Debian/Ubuntu: apt-get install %s)'
            % (name, ', '.join(extra), PACKAGE_OF.get(name, name)), [name], 127, '', '')
    return path


PACKAGE_OF = {
    'ip': 'iproute2',
    'iptables': 'iptables',
    'ip6tables': 'iptables',
    'sshd': 'openssh-server',
    'ssh-keygen': 'openssh-client',
    'nsenter': 'util-linux',
    'tcpdump': 'tcpdump',
    'sysctl': 'procps',
    'nc': 'netcat-openbsd',
    'curl': 'curl',
    'useradd': 'passwd',
    'userdel': 'passwd',
    'sudo': 'sudo',
}


def require_root(what):
    """Raise PermissionError with a message that names the fix."""
    if os.geteuid() != 0:
        raise PermissionError(
            '%s needs root (running as uid %d): use become: true or run as root'
            % (what, os.geteuid()))


def atomic_write(path, data, mode=0o600):
    """Write bytes or text to path through a temp file and a rename."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    directory = os.path.dirname(path) or '.'
    tmp = os.path.join(directory, '.%s.tmp.%d' % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


FILE_KINDS = ((stat.S_ISREG, 'a file'), (stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO (named pipe)'),
              (stat.S_ISSOCK, 'a socket'), (stat.S_ISLNK, 'a symbolic link'), (stat.S_ISCHR, 'a character device'),
              (stat.S_ISBLK, 'a block device'))


def file_kind(mode):
    """'a file', 'a directory', 'a FIFO (named pipe)', ... for a st_mode (in error messages)."""
    for test, name in FILE_KINDS:
        if test(mode):
            return name
    return 'a special file'


def port_open(address, port, timeout=0.5):
    """Whether a TCP connection to address:port is accepted within timeout seconds (and closed at once)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
