# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The DROP rule that silences a peer: validation, argv, idempotent add and
remove through iptables -C with the xtables lock wait, purge of our tagged
rules, the lockout guard and the dead-man timer.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, netns_inode, starttime

COMMENT_PREFIX = 'tcplab-keepalive:'
TAG_RE = re.compile(r'^[A-Za-z0-9_-]{1,32}$')
IFACE_RE = re.compile(r'^[A-Za-z0-9_.:@-]{1,15}\+?$')
CHAINS = ('INPUT', 'OUTPUT')
TIMER_MARKER = 'tcplab-keepalive-drop-rule-timer'
TIMER_DIR = '/run/tcplab-keepalive/drop_rule'

MSG_PORT = 'port must be an integer 1..65535, got %r'
MSG_PORT_REQUIRED = 'port is required with state: %s'
MSG_TAG = ('tag must be 1 to 32 letters, digits, "-" or "_" (it becomes the rule comment '
           '"tcplab-keepalive:<tag>"), got %r')
MSG_CHAIN = 'chain must be INPUT or OUTPUT, got %r'
MSG_ADDRESS = '%s must be an IPv%s address or CIDR (ip_version: %s), got %r'
MSG_IFACE = '%s must be an interface name (1 to 15 letters, digits, ".", "_", "-", ":", "@"; "+" at the end), got %r'
MSG_IFACE_CHAIN = '%s cannot be used with chain %s (iptables allows in_interface on INPUT, out_interface on OUTPUT)'
MSG_IP_VERSION = 'ip_version must be 4 or 6 (both only with state: purged), got %r'
MSG_EXPIRE = 'expire_after must be an integer number of seconds 1..604800, got %r'
MSG_WAIT = 'wait must be an integer number of seconds 0..3600, got %r'
MSG_LOCKOUT = ('refusing to DROP %s %s %d on %s: Ansible manages this host over SSH (%s:%s from %s:%s, '
               'SSH_CONNECTION) and the rule would cut that connection. Pick another port, narrow the '
               'rule with source/destination, or set allow_lockout: true if you really mean it')
MSG_LOCK_BUSY = ('the xtables lock is held by another program and was not released within wait (%d s): '
                 'nothing was changed; retry, or raise wait')


class RuleError(Exception):
    """Invalid request or failed iptables call; the message says what to do."""


def _int_in(value, low, high, message):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RuleError(message % (value,))
    return value


def validate(params):
    """Checked, normalised parameters. Raises RuleError before anything runs."""
    state = params.get('state') or 'present'
    version = str(params.get('ip_version') if params.get('ip_version') is not None else '4')
    if version not in ('4', '6', 'both') or (version == 'both' and state != 'purged'):
        raise RuleError(MSG_IP_VERSION % (params.get('ip_version'),))
    tag = params.get('tag')
    if tag is not None or state != 'purged':
        if not isinstance(tag, str) or not TAG_RE.match(tag):
            raise RuleError(MSG_TAG % (tag,))
    rule = {
        'state': state,
        'ip_version': version,
        'tag': tag,
        'wait': _int_in(params.get('wait', 30) if params.get('wait') is not None else 30, 0, 3600, MSG_WAIT),
        'allow_lockout': bool(params.get('allow_lockout')),
        'expire_after': None,
    }
    if state == 'purged':
        return rule
    port = params.get('port')
    if isinstance(port, str) and port.isdigit() and len(port) <= 5:
        port = int(port)
    if port is None:
        raise RuleError(MSG_PORT_REQUIRED % state)
    rule['port'] = _int_in(port, 1, 65535, MSG_PORT)
    rule['match'] = params.get('match') or 'dport'
    rule['protocol'] = params.get('protocol') or 'tcp'
    chain = params.get('chain') or 'INPUT'
    if chain not in CHAINS:
        raise RuleError(MSG_CHAIN % (chain,))
    rule['chain'] = chain
    for key in ('source', 'destination'):
        rule[key] = _address(key, params.get(key), version)
    for key, allowed in (('in_interface', 'INPUT'), ('out_interface', 'OUTPUT')):
        value = params.get(key)
        if value is not None:
            if not isinstance(value, str) or not IFACE_RE.match(value):
                raise RuleError(MSG_IFACE % (key, value))
            if chain != allowed:
                raise RuleError(MSG_IFACE_CHAIN % (key, chain))
        rule[key] = value
    rule['position'] = params.get('position') or 'insert'
    if params.get('expire_after') is not None:
        rule['expire_after'] = _int_in(params['expire_after'], 1, 604800, MSG_EXPIRE)
    return rule


def _address(key, value, version):
    if value is None:
        return None
    try:
        net = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise RuleError(MSG_ADDRESS % (key, version, version, value))
    if str(net.version) != version:
        raise RuleError(MSG_ADDRESS % (key, version, version, value))
    return str(net)


def comment(tag):
    return COMMENT_PREFIX + tag


def rule_spec(rule):
    """The match and target part of the rule, as iptables argv (no command, no chain)."""
    spec = ['-p', rule['protocol']]
    if rule.get('source'):
        spec += ['-s', rule['source']]
    if rule.get('destination'):
        spec += ['-d', rule['destination']]
    if rule.get('in_interface'):
        spec += ['-i', rule['in_interface']]
    if rule.get('out_interface'):
        spec += ['-o', rule['out_interface']]
    spec += ['-m', rule['protocol'], '--%s' % rule['match'], str(rule['port']),
             '-m', 'comment', '--comment', comment(rule['tag']), '-j', 'DROP']
    return spec


def rule_text(rule):
    """The rule as `iptables -S` prints it."""
    parts = ['-A', rule['chain']]
    if rule.get('source'):
        parts += ['-s', rule['source']]
    if rule.get('destination'):
        parts += ['-d', rule['destination']]
    if rule.get('in_interface'):
        parts += ['-i', rule['in_interface']]
    if rule.get('out_interface'):
        parts += ['-o', rule['out_interface']]
    parts += ['-p', rule['protocol'], '-m', rule['protocol'], '--%s' % rule['match'], str(rule['port']),
              '-m', 'comment', '--comment', '"%s"' % comment(rule['tag']), '-j', 'DROP']
    return ' '.join(parts)


def binary_name(version):
    return 'ip6tables' if version == '6' else 'iptables'


# -- the lockout guard --------------------------------------------------------

def find_ssh_connection(environ=None, pid=None, read_environ=None):
    """SSH_CONNECTION of this process or, under become (sudo drops it), of an ancestor."""
    environ = os.environ if environ is None else environ
    if environ.get('SSH_CONNECTION'):
        return environ['SSH_CONNECTION']
    read_environ = read_environ or _read_environ
    pid = os.getppid() if pid is None else pid
    for dummy in range(16):
        if pid <= 1:
            break
        env, parent = read_environ(pid)
        if env.get('SSH_CONNECTION'):
            return env['SSH_CONNECTION']
        pid = parent
    return None


def _read_environ(pid):
    env = {}
    try:
        with open('/proc/%d/environ' % pid, 'rb') as handle:
            for item in handle.read().split(b'\0'):
                key, sep, value = item.partition(b'=')
                if sep:
                    env[key.decode('utf-8', 'replace')] = value.decode('utf-8', 'replace')
    except (IOError, OSError):
        pass
    parent = 0
    try:
        with open('/proc/%d/stat' % pid) as handle:
            parent = int(handle.read().rsplit(')', 1)[1].split()[1])
    except (IOError, OSError, ValueError, IndexError):
        pass
    return env, parent


def lockout_check(rule, ssh_connection):
    """Raise RuleError if the rule would drop the managing SSH connection."""
    if rule['allow_lockout'] or not ssh_connection or rule['protocol'] != 'tcp':
        return
    try:
        client_ip, client_port, server_ip, server_port = ssh_connection.split()[:4]
        client_port, server_port = int(client_port), int(server_port)
        client = ipaddress.ip_address(client_ip.split('%')[0])
        server = ipaddress.ip_address(server_ip.split('%')[0])
    except ValueError:
        return
    if str(server.version) != rule['ip_version']:
        return
    if rule['chain'] == 'INPUT':
        # packets from the controller to sshd
        hit = ((rule['match'] == 'dport' and rule['port'] == server_port)
               or (rule['match'] == 'sport' and rule['port'] == client_port))
        ours, theirs = server, client
        local_key, remote_key = 'destination', 'source'
    else:
        # packets from sshd back to the controller
        hit = ((rule['match'] == 'sport' and rule['port'] == server_port)
               or (rule['match'] == 'dport' and rule['port'] == client_port))
        ours, theirs = server, client
        local_key, remote_key = 'source', 'destination'
    if not hit:
        return
    for key, address in ((local_key, ours), (remote_key, theirs)):
        if rule.get(key) and address not in ipaddress.ip_network(rule[key]):
            return
    raise RuleError(MSG_LOCKOUT % (rule['protocol'], rule['match'], rule['port'], rule['chain'],
                                   server_ip, server_port, client_ip, client_port))


# -- iptables -----------------------------------------------------------------

class Iptables:
    """One family's iptables binary, always with the lock wait (-w)."""

    def __init__(self, run, binary, wait):
        self.run = run
        self.binary = binary
        self.wait = wait

    def _cmd(self, *args):
        return [self.binary, '-w', str(self.wait)] + list(args)

    def _call(self, argv, ok_rc=(0,)):
        rc, out, err = self.run(argv, check=False)
        if rc == 4 and 'xtables lock' in (err or ''):
            raise RuleError(MSG_LOCK_BUSY % self.wait)
        if rc not in ok_rc:
            raise RuleError('%s failed (rc=%d): %s' % (' '.join(argv), rc, (err or out).strip()))
        return rc, out, err

    def backend(self):
        rc, out, err = self.run([self.binary, '-V'], check=False)
        text = (out or '') + (err or '')
        if 'nf_tables' in text:
            return 'nf_tables'
        if 'legacy' in text:
            return 'legacy'
        return 'legacy' if rc == 0 else 'unknown'

    def exists(self, chain, spec):
        """True/False from -C; a busy lock or any other error raises (never read as absent)."""
        argv = self._cmd('-C', chain, *spec)
        rc, out, err = self.run(argv, check=False)
        if rc == 0:
            return True
        if rc == 1 and 'does a matching rule exist' in (err or ''):
            return False
        if rc == 4 and 'xtables lock' in (err or ''):
            raise RuleError(MSG_LOCK_BUSY % self.wait)
        raise RuleError('%s failed (rc=%d): %s' % (' '.join(argv), rc, (err or out).strip()))

    def insert(self, chain, spec, position):
        self._call(self._cmd('-I' if position == 'insert' else '-A', chain, *spec))

    def delete(self, chain, spec):
        self._call(self._cmd('-D', chain, *spec))

    def list_rules(self, chain=None):
        args = ['-S'] + ([chain] if chain else [])
        rc, out, err = self._call(self._cmd(*args))
        return out.splitlines()


def tagged_rules(lines, tag=None):
    """(chain, spec) of every `-A` line carrying our comment (of tag, when given)."""
    found = []
    for line in lines:
        if not line.startswith('-A ') or COMMENT_PREFIX not in line:
            continue
        try:
            argv = shlex.split(line)
        except ValueError:
            continue
        try:
            value = argv[argv.index('--comment') + 1]
        except (ValueError, IndexError):
            continue
        if not value.startswith(COMMENT_PREFIX):
            continue
        if tag is not None and value != comment(tag):
            continue
        found.append((argv[1], argv[2:]))
    return found


# -- the dead-man timer -------------------------------------------------------

TIMER_CODE = r'''
import json, os, subprocess, sys, time
args = json.loads(sys.argv[2])
time.sleep(max(0.0, args["expires_at"] - time.time()))
for _ in range(100):
    check = subprocess.run(args["check"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if check.returncode == 1 and b"does a matching rule exist" in check.stderr:
        break
    if check.returncode == 0:
        subprocess.run(args["delete"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        time.sleep(1)
try:
    os.unlink(args["state"])
except OSError:
    pass
'''


def timer_key(version, chain, spec):
    digest = hashlib.sha1(json.dumps([version, chain, spec]).encode('utf-8')).hexdigest()[:16]
    return '%d-%s' % (netns_inode(), digest)


class Timers:
    """Dead-man timers: detached processes that delete one rule when they expire."""

    def __init__(self, directory=TIMER_DIR):
        self.directory = directory

    def path(self, key):
        return os.path.join(self.directory, key + '.json')

    def load(self, key):
        try:
            with open(self.path(key)) as handle:
                return json.load(handle)
        except (IOError, OSError, ValueError):
            return None

    def alive(self, info):
        """True if the timer's process still runs and is ours (command line and start time)."""
        if not info or not info.get('pid'):
            return False
        pid = int(info['pid'])
        return TIMER_MARKER in cmdline(pid) and starttime(pid) == info.get('start')

    def arm(self, key, seconds, check_argv, delete_argv):
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, 0o700)
        state = self.path(key)
        expires_at = time.time() + seconds
        args = json.dumps({'expires_at': expires_at, 'check': check_argv, 'delete': delete_argv, 'state': state})
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, '-c', TIMER_CODE, TIMER_MARKER, args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True, cwd='/')
        info = {'pid': proc.pid, 'start': starttime(proc.pid), 'expires_at': expires_at,
                'expire_after': seconds, 'rule': delete_argv, 'handle': state}
        atomic_write(state, json.dumps(info) + '\n', 0o600)
        return info

    def cancel(self, key):
        """Stop the timer of key, if any. Returns True if one was running."""
        info = self.load(key)
        running = self.alive(info)
        if running:
            try:
                os.kill(int(info['pid']), signal.SIGTERM)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        try:
            os.unlink(self.path(key))
        except OSError:
            pass
        return running

    def keys_of_netns(self):
        prefix = '%d-' % netns_inode()
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted(name[:-5] for name in names if name.startswith(prefix) and name.endswith('.json'))


# -- present / absent / purged -------------------------------------------------

def manage(rule, tables, timers, check_mode=False, ssh_connection=None):
    """Bring the rule to rule['state']. tables maps '4'/'6' to Iptables. Returns the result dict."""
    if rule['state'] == 'purged':
        return _purge(rule, tables, timers, check_mode)
    iptables = tables[rule['ip_version']]
    chain, spec = rule['chain'], rule_spec(rule)
    key = timer_key(rule['ip_version'], chain, spec)
    text = rule_text(rule)
    result = {
        'changed': False,
        'rule': [iptables.binary, '-w', str(iptables.wait), '-I' if rule['position'] == 'insert' else '-A', chain] + spec,
        'rule_text': text,
        'backend': iptables.backend(),
        'expiry': None,
        'diff': {'before': '', 'after': ''},
    }
    exists = iptables.exists(chain, spec)
    if rule['state'] == 'present':
        lockout_check(rule, ssh_connection)
        result['diff'] = {'before': text + '\n' if exists else '', 'after': text + '\n'}
        if not exists:
            result['changed'] = True
            if not check_mode:
                iptables.insert(chain, spec, rule['position'])
                if not iptables.exists(chain, spec):
                    raise RuleError('the rule was inserted but iptables -C does not find it: %s' % text)
        info = timers.load(key)
        if rule['expire_after'] is not None:
            if exists and timers.alive(info):
                result['expiry'] = info
            else:
                result['changed'] = True
                if not check_mode:
                    timers.cancel(key)
                    result['expiry'] = timers.arm(
                        key, rule['expire_after'],
                        iptables._cmd('-C', chain, *spec), iptables._cmd('-D', chain, *spec))
        elif timers.alive(info):
            result['expiry'] = info
        result['msg'] = ('inserted' if rule['position'] == 'insert' else 'appended') if not exists else 'already present'
    else:
        result['diff'] = {'before': text + '\n' if exists else '', 'after': ''}
        info = timers.load(key)
        if exists or timers.alive(info) or info:
            result['changed'] = bool(exists or timers.alive(info))
            if not check_mode:
                timers.cancel(key)
                # remove every copy (duplicates made by other tools) of exactly this tagged rule
                while iptables.exists(chain, spec):
                    iptables.delete(chain, spec)
        result['msg'] = 'removed' if exists else 'already absent'
    return result


def _purge(rule, tables, timers, check_mode):
    versions = ['4', '6'] if rule['ip_version'] == 'both' else [rule['ip_version']]
    removed = []
    backend = None
    before = []
    for version in versions:
        iptables = tables[version]
        backend = backend or iptables.backend()
        for chain, spec in tagged_rules(iptables.list_rules(), rule['tag']):
            removed.append({'ip_version': version, 'chain': chain, 'rule_text': '-A %s %s' % (chain, ' '.join(
                shlex.quote(part) for part in spec))})
            before.append(removed[-1]['rule_text'])
            if not check_mode:
                iptables.delete(chain, spec)
    cancelled = 0
    for key in timers.keys_of_netns():
        info = timers.load(key)
        rule_argv = (info or {}).get('rule') or []
        if rule['tag'] is not None and comment(rule['tag']) not in rule_argv:
            continue
        if not check_mode:
            cancelled += 1 if timers.cancel(key) else 0
        elif timers.alive(info):
            cancelled += 1
    return {
        'changed': bool(removed or cancelled),
        'removed': removed,
        'timers_cancelled': cancelled,
        'backend': backend,
        'msg': 'removed %d tagged rule(s), cancelled %d timer(s)' % (len(removed), cancelled),
        'diff': {'before': ''.join(line + '\n' for line in before), 'after': ''},
    }
