# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ssh part of a lab: the lab key, an sshd per ssh lab host, the lab user and its sudoers file.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

LabSsh is a part of _lab.Lab (which inherits it) and uses its attributes:
run, bin, check_mode, state_dir, ssh_user, manifest and its change log
(_act, _note, _save). An sshd runs inside a lab host's namespace on its lab
address with a configuration in the lab's state directory, which is how the
lab recognises its sshds; the lab user and its sudoers file are the lab's
own only as the manifest (_lab_manifest) proves.
"""

from __future__ import annotations

import os
import shutil
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write, port_open
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import Process
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import terminate as stop_processes
from ansible_collections.tcplab.keepalive.plugins.module_utils._lab_manifest import (
    MSG_SUDOERS_FOREIGN, USER_COMMENT, LabError, read_text, render_sudoers, sudoers_path, users_of_other_labs)
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, netns_inode, netns_of, pids, starttime

MSG_NO_SUDO = ('ssh_user %s needs sudo on this machine for become: install it (Debian/Ubuntu: apt-get install sudo) '
               'or use ssh_user: root')


def render_sshd_config(address, host_dir, authorized_keys, sftp_server):
    """sshd_config of one lab host: key-only root login on the lab address."""
    lines = [
        '# Managed by tcplab.keepalive (lab role); removed with lab_state: absent.',
        'ListenAddress %s' % address,
        'Port 22',
        'HostKey %s' % os.path.join(host_dir, 'ssh_host_ed25519_key'),
        'PidFile %s' % os.path.join(host_dir, 'sshd.pid'),
        'AuthorizedKeysFile %s' % authorized_keys,
        'PermitRootLogin prohibit-password',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'PrintMotd no',
        'AcceptEnv LANG LC_*',
    ]
    if sftp_server:
        lines.append('Subsystem sftp %s' % sftp_server)
    return '\n'.join(lines) + '\n'


def sshd_pids_of(state_dir, candidates=None, read=cmdline):
    """Pids of sshd listeners started for this lab (their -f config lies in state_dir).

    sshd re-titles itself ("sshd: /usr/sbin/sshd -f <config> [listener] ..."),
    so the whole command line is searched.
    """
    marker = '-f ' + state_dir.rstrip('/') + '/'
    found = []
    for pid in candidates if candidates is not None else pids():
        text = ' '.join(read(pid))
        if 'sshd' in text and marker in text:
            found.append(pid)
    return found


def stop_all(targets, timeout=5.0):
    """SIGTERM the processes targets, wait, then SIGKILL what is left and wait again (_detached.terminate); each
    only while it is the process found here (its start time now: a pid reused meanwhile is never signalled).
    Returns (the pids signalled, whether all of them have gone)."""
    processes = [Process(pid, starttime(pid)) for pid in targets]
    running = [one for one in processes if one.ours()]
    ended = stop_processes(running, timeout, timeout)
    return [one.pid for one in running], ended.gone


def terminate(targets, timeout=5.0):
    """stop_all, for callers that want the pids signalled only."""
    return stop_all(targets, timeout)[0]


class LabSsh:
    """The ssh hosts, lab key, lab user and sudoers file of a _lab.Lab."""

    @staticmethod
    def _user_pids(user):
        import pwd  # pylint: disable=import-outside-toplevel
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            return []
        found = []
        for pid in pids():
            try:
                if os.stat('/proc/%d' % pid).st_uid == uid:
                    found.append(pid)
            except OSError:
                continue
        return found

    def _mkdir(self, path, mode=0o700):
        if not os.path.isdir(path):
            self.changed = True
            if not self.check_mode:
                os.makedirs(path, mode)
        if not self.check_mode and (os.stat(path).st_mode & 0o777) != mode:
            os.chmod(path, mode)

    def _write_if_changed(self, path, text, mode=0o600):
        try:
            with open(path) as handle:
                if handle.read() == text:
                    return False
        except (IOError, OSError):
            pass
        self.changed = True
        if not self.check_mode:
            atomic_write(path, text, mode)
        return True

    def _keygen(self, path, comment):
        if os.path.exists(path) and os.path.exists(path + '.pub'):
            return
        for stale in (path, path + '.pub'):
            if os.path.exists(stale) and not self.check_mode:
                os.unlink(stale)
        self._act([self.bin.get('ssh-keygen', 'ssh-keygen'), '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path],
                  'generating the lab key %s' % path)

    def _ensure_key(self):
        """The lab key pair (for the sshds of ssh hosts and the lab VMs' login); returns the private key's path."""
        state = self.state_dir
        self._mkdir(os.path.dirname(state), 0o755)
        # traversable (not listable) so that sshd can read a non-root user's authorized_keys
        self._mkdir(state, 0o711)
        self._mkdir(os.path.join(state, 'pub'), 0o755)
        key = os.path.join(state, 'id_ed25519')
        self._keygen(key, 'tcplab-keepalive-lab')
        if not self.check_mode:
            with open(key + '.pub') as handle:
                self._write_if_changed(os.path.join(state, 'pub', 'authorized_keys'), handle.read(), 0o644)
        return key

    def _ensure_ssh(self, hosts):
        state = self.state_dir
        key = self._ensure_key()
        self._mkdir(os.path.join(state, 'hosts'))
        authorized = os.path.join(state, 'pub', 'authorized_keys')
        if self.ssh_user != 'root':
            self._ensure_user()
        # sshd's privilege separation directory (created by the service unit normally)
        self._mkdir('/run/sshd', 0o755)
        known = [self._ensure_host_sshd(host, authorized) for host in hosts]
        self._remove_other_sshds({host['name'] for host in hosts})
        known_hosts = os.path.join(state, 'known_hosts')
        if not self.check_mode:
            self._write_if_changed(known_hosts, '\n'.join(sorted(known)) + '\n')
        return {'private_key': key, 'known_hosts': known_hosts, 'user': self.ssh_user, 'port': 22,
                'become': self.ssh_user != 'root'}

    def _ensure_host_sshd(self, host, authorized):
        """Start (or keep) one host's sshd; returns its known_hosts line."""
        host_dir = os.path.join(self.state_dir, 'hosts', host['name'])
        self._mkdir(host_dir)
        host_key = os.path.join(host_dir, 'ssh_host_ed25519_key')
        self._keygen(host_key, 'tcplab-keepalive-lab-%s' % host['name'])
        config = os.path.join(host_dir, 'sshd_config')
        text = render_sshd_config(host['address'], host_dir, authorized, self.bin.get('sftp-server'))
        config_changed = self._write_if_changed(config, text)
        pid = self._sshd_pid(host_dir, host['netns_path'])
        if pid and config_changed:
            terminate([pid])
            pid = None
        if not pid:
            pid = self._start_sshd(host, config)
        host['sshd_pid'] = pid
        if self.check_mode:
            return ''
        with open(host_key + '.pub') as handle:
            keytype, keydata = handle.read().split()[:2]
        return '%s %s %s' % (host['address'], keytype, keydata)

    def _remove_other_sshds(self, wanted):
        """sshds and directories of hosts that are no longer ssh hosts."""
        for name in self._listdir(os.path.join(self.state_dir, 'hosts')):
            if name not in wanted:
                host_dir = os.path.join(self.state_dir, 'hosts', name)
                self._stop_sshd(host_dir)
                self.changed = True
                if not self.check_mode:
                    shutil.rmtree(host_dir, ignore_errors=True)

    def _ensure_user(self):
        """A lab user with passwordless sudo, as lab VMs are usually reached."""
        import pwd  # pylint: disable=import-outside-toplevel
        if not self.bin.get('sudo'):
            raise LabError(MSG_NO_SUDO % self.ssh_user)
        try:
            pwd.getpwnam(self.ssh_user)
        except KeyError:
            self._save(self.manifest.intend('users', self.ssh_user))
            # '*': no password, but not a locked account (sshd refuses locked ones without PAM)
            self._act([self.bin.get('useradd', 'useradd'), '--create-home', '--shell', '/bin/sh', '--password', '*',
                       '--comment', USER_COMMENT, self.ssh_user], 'creating the lab user %s' % self.ssh_user)
            if not self.check_mode:
                self._save(self.manifest.record('users', self.ssh_user, pwd.getpwnam(self.ssh_user).pw_uid))
        self._ensure_sudoers()

    def _ensure_sudoers(self):
        """The lab's own sudoers file (one per lab), checked with visudo before it is installed."""
        path = sudoers_path(self.state_dir)
        if self.manifest.data.get('sudoers') not in (None, path):
            self._remove_sudoers()  # a version 1 lab's shared file
        text = render_sudoers(self.state_dir, self.ssh_user)
        current = read_text(path)
        if current == text:
            return
        if current is not None and not self.manifest.owns_sudoers(path, current):
            raise LabError(MSG_SUDOERS_FOREIGN % path)
        self._check_sudoers(text)
        self.manifest.data['sudoers'] = path
        self._save(self.manifest.save())
        self._write_if_changed(path, text, 0o440)

    def _check_sudoers(self, text):
        visudo = self.bin.get('visudo')
        if not visudo or self.check_mode:
            return
        # a name with a "." (sudo skips such files in sudoers.d) in the lab's own directory
        tmp = os.path.join(self.state_dir, '.sudoers.check')
        atomic_write(tmp, text, 0o440)
        try:
            self.run([visudo, '-cf', tmp], what='checking the lab sudoers rule with visudo')
        finally:
            os.unlink(tmp)

    @staticmethod
    def _listdir(path):
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def _sshd_pid(self, host_dir, ns_path):
        """Pid of this host's running sshd, if it runs in the right namespace."""
        try:
            with open(os.path.join(host_dir, 'sshd.pid')) as handle:
                pid = int(handle.read().strip())
        except (IOError, OSError, ValueError):
            return None
        if pid not in sshd_pids_of(host_dir, [pid]):
            return None
        if netns_of(pid) != netns_inode(ns_path):
            return None
        return pid

    def _start_sshd(self, host, config):
        sshd = self.bin.get('sshd', '/usr/sbin/sshd')
        if self.check_mode:
            self._act([sshd, '-f', config])
            return None
        self.run([sshd, '-t', '-f', config], what='checking %s' % config)
        self._act([self.bin.get('nsenter', 'nsenter'), '--net=%s' % host['netns_path'], '--', sshd, '-f', config],
                  'starting sshd for lab host %s' % host['name'])
        host_dir = os.path.dirname(config)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = self._sshd_pid(host_dir, host['netns_path'])
            if pid and port_open(host['address'], 22):
                return pid
            time.sleep(0.05)
        raise LabError('sshd of lab host %s did not start listening on %s:22 within 10 s; '
                       'see %s and the system log' % (host['name'], host['address'], config))

    def _stop_sshd(self, directory):
        """Stop the sshds started with a configuration in the lab's own directory."""
        victims = sshd_pids_of(os.path.join(directory, 'hosts') if directory == self.state_dir else directory)
        if victims:
            self._note(['kill', '-TERM'] + [str(p) for p in victims])
            if not self.check_mode:
                terminate(victims)

    def _remove_users(self):
        import pwd  # pylint: disable=import-outside-toplevel
        for user in self.manifest.users_to_delete(pwd.getpwnam, users_of_other_labs(self.manifest.sudoers_files())):
            for pid in self._user_pids(user):
                terminate([pid])
            self._act_missing_ok([self.bin.get('userdel', 'userdel'), '--remove', user])

    def _remove_sudoers(self):
        for path in self.manifest.sudoers_files():
            if self.manifest.owns_sudoers(path, read_text(path)):
                self._note(['rm', path])
                if not self.check_mode:
                    os.unlink(path)
        self.manifest.data['sudoers'] = None
