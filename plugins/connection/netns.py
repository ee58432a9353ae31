# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: netns
short_description: Run tasks inside a named Linux network namespace on the controller
description:
  - Runs commands and modules on the Ansible controller, but inside a named Linux network
    namespace, by wrapping every command in C(nsenter --net=<path>).
  - Entering a network namespace needs root on the controller (C(CAP_SYS_ADMIN)); the
    connection fails with an unreachable host when Ansible does not run as root.
  - The namespace is looked up at O(netns_dir)/<name>, that is C(/run/netns/<name>) as made
    by C(ip netns add <name>) (for example by the C(tcplab.keepalive.lab) role).
  - Only the network namespace differs from the controller. The file system, users and
    processes are shared, so C(put_file) and C(fetch_file) are plain local copies.
  - Privilege escalation (C(become)) works with methods that do not prompt for a password,
    for example C(su) or C(sudo) with C(NOPASSWD) when Ansible already runs as root.
author: tcplab.keepalive developers (@tcplab)
version_added: 0.1.0
options:
  pipelining:
    description:
      - Run modules by piping them into the interpreter's standard input instead of copying them
        to a temporary file first. On by default here - the namespace shares the controller's file
        system and no TTY is involved, so nothing stands in its way - which saves two C(nsenter)
        round trips per task.
      - Set it to V(false) (for example with C(ANSIBLE_PIPELINING=0)) to debug module transfers.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PIPELINING
    ini:
      - section: defaults
        key: pipelining
      - section: connection
        key: pipelining
    vars:
      - name: ansible_pipelining
  netns_name:
    description:
      - Name of the network namespace to run in, 1 to 64 letters, digits, V(.), V(_) or V(-).
      - When unset, O(inventory_hostname) is used.
    type: str
    vars:
      - name: ansible_netns_name
    env:
      - name: ANSIBLE_NETNS_NAME
    ini:
      - section: netns_connection
        key: netns_name
  inventory_hostname:
    description:
      - The inventory hostname of the host, used as the namespace name when O(netns_name) is unset.
      - Filled in by Ansible; there is normally no need to set it.
    type: str
    vars:
      - name: inventory_hostname
  netns_dir:
    description:
      - Directory holding the named network namespaces (bind mounts of C(nsfs) files).
    type: path
    default: /run/netns
    vars:
      - name: ansible_netns_dir
    env:
      - name: ANSIBLE_NETNS_DIR
    ini:
      - section: netns_connection
        key: netns_dir
  nsenter_path:
    description:
      - Path of the util-linux C(nsenter) executable.
      - A bare name is looked up in E(PATH) and in C(/usr/bin), C(/usr/sbin), C(/bin) and C(/sbin).
    type: str
    default: nsenter
    vars:
      - name: ansible_nsenter_path
    env:
      - name: ANSIBLE_NSENTER_PATH
    ini:
      - section: netns_connection
        key: nsenter_path
notes:
  - The remote user is ignored; commands run as the user running Ansible (root).
"""

EXAMPLES = r"""
# inventory.ini
# [lab]
# lab1 ansible_connection=tcplab.keepalive.netns
# probe ansible_connection=tcplab.keepalive.netns ansible_netns_name=lab2

- name: Show the links of a namespace
  hosts: lab
  gather_facts: false
  tasks:
    - name: List links
      ansible.builtin.command: ip -o link
      changed_when: false
"""

import os
import shutil
import subprocess

import ansible.constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_native, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display
from ansible.utils.path import unfrackpath

from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import is_name, is_nsfs, nsenter_argv

display = Display()

NSENTER_EXTRA_DIRS = ('/usr/bin', '/usr/sbin', '/bin', '/sbin')


class Connection(ConnectionBase):
    """Run commands inside a named network namespace of the controller."""

    transport = 'tcplab.keepalive.netns'
    has_pipelining = True
    has_tty = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.netns_name: str | None = None
        self.netns_path: str | None = None
        self.nsenter: str | None = None

    def _netns_name(self) -> str:
        name = self.get_option('netns_name')
        if name is None:
            name = self.get_option('inventory_hostname') or self._play_context.remote_addr
        return to_text(name if name is not None else '')

    def _find_nsenter(self) -> str:
        nsenter = self.get_option('nsenter_path') or 'nsenter'
        if '/' in nsenter:
            found = nsenter if os.access(nsenter, os.X_OK) else None
        else:
            search = os.pathsep.join([os.environ.get('PATH', os.defpath), *NSENTER_EXTRA_DIRS])
            found = shutil.which(nsenter, path=search)
        if not found:
            raise AnsibleConnectionFailure(
                f"nsenter executable {nsenter!r} not found: install util-linux or set ansible_nsenter_path")
        return found

    def _connect(self) -> Connection:
        if self._connected:
            return self

        name = self._netns_name()
        path = os.path.join(self.get_option('netns_dir'), name)
        if not is_name(name):
            raise AnsibleConnectionFailure(
                f"invalid network namespace name {name!r} (path {path}): use 1 to 64 letters, digits, '.', '_' or '-' "
                "as given to 'ip netns add', or set ansible_netns_name")

        hint = f"create it with the tcplab.keepalive.lab role or 'ip netns add {name}', or set ansible_netns_name"
        try:
            st = os.stat(path)
        except OSError as ex:
            raise AnsibleConnectionFailure(
                f"network namespace {name!r} not found at {path}: {hint} ({ex.strerror})") from None
        if not is_nsfs(st):
            raise AnsibleConnectionFailure(
                f"network namespace {name!r} at {path} is not a namespace (no nsfs mount): {hint}")

        self.nsenter = self._find_nsenter()
        if os.geteuid() != 0:
            raise AnsibleConnectionFailure("the netns connection needs root on the controller to enter network namespaces")

        self.netns_name, self.netns_path = name, path
        display.vvv(f"ESTABLISH NETNS CONNECTION TO {name} ({path})", host=self._play_context.remote_addr)
        self._connected = True
        return self

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run cmd with the configured shell inside the namespace."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)

        if sudoable and self.become and self.become.expect_prompt():
            raise AnsibleError(
                "the netns connection cannot answer become password prompts: "
                "use a become method that needs no password (Ansible already runs as root)")

        executable = (self._play_context.executable or C.DEFAULT_EXECUTABLE or '/bin/sh').split()[0]
        if not os.path.exists(to_bytes(executable, errors='surrogate_or_strict')):
            executable = '/bin/sh'

        argv = nsenter_argv(self.nsenter, self.netns_path, [executable, '-c', to_text(cmd)])
        display.vvv(f"EXEC {argv}", host=self._play_context.remote_addr)

        p = subprocess.Popen(
            [to_bytes(a, errors='surrogate_or_strict') for a in argv],
            stdin=subprocess.DEVNULL if in_data is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd='/',
        )
        # the action plugin strips the BECOME-SUCCESS marker from stdout itself
        stdout, stderr = p.communicate(in_data)
        return p.returncode, stdout, stderr

    @staticmethod
    def _copy(in_path: str, out_path: str) -> None:
        if not os.path.exists(to_bytes(in_path, errors='surrogate_or_strict')):
            raise AnsibleFileNotFound(f"file or module does not exist: {to_native(in_path)}")
        try:
            shutil.copyfile(to_bytes(in_path, errors='surrogate_or_strict'), to_bytes(out_path, errors='surrogate_or_strict'))
        except shutil.Error as ex:
            raise AnsibleError(f"failed to copy {to_native(in_path)} to {to_native(out_path)}: {ex}") from ex
        except OSError as ex:
            raise AnsibleError(f"failed to copy {to_native(in_path)} to {to_native(out_path)}: {ex.strerror}") from ex

    def put_file(self, in_path: str, out_path: str) -> None:
        """Copy a file to the 'remote' side, which is the shared controller file system."""
        super().put_file(in_path, out_path)
        # like the local connection: expand ~ and $VARS; relative 'remote' paths start at / (the cwd of exec_command)
        in_path, out_path = unfrackpath(in_path), unfrackpath(out_path, basedir='/')
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._play_context.remote_addr)
        self._copy(in_path, out_path)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy a file from the 'remote' side, which is the shared controller file system."""
        super().fetch_file(in_path, out_path)
        in_path, out_path = unfrackpath(in_path, basedir='/'), unfrackpath(out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._play_context.remote_addr)
        self._copy(in_path, out_path)

    def reset(self) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to tear down: just forget the connection state."""
        self._connected = False
