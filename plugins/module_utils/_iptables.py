# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The DROP rule that silences a peer: validation, argv, idempotent add and
remove through iptables -C with the xtables lock wait, purge of our tagged
rules in every iptables backend of the namespace (nf_tables and legacy), the
lockout guard and the dead-man timer.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import sys
import time

from ansible_collections.tcplab.keepalive.plugins.module_utils import _program_timer
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import (
    Process, load_record, program_argv, program_source, save_record, spawn, terminate)
from ansible_collections.tcplab.keepalive.plugins.module_utils._detached import facts as process_facts
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import cmdline, netns_inode
from ansible_collections.tcplab.keepalive.plugins.module_utils._proc import parent as proc_parent

COMMENT_PREFIX = 'tcplab-keepalive:'
TAG_RE = re.compile(r'^[A-Za-z0-9_-]{1,32}$')
IFACE_RE = re.compile(r'^[A-Za-z0-9_.:@-]{1,15}\+?$')
INT_RE = re.compile(r'^[+-]?[0-9]{1,20}$')
VERSION_RE = re.compile(r'^(ip6?tables) v[0-9]')
CHAINS = ('INPUT', 'OUTPUT')
TIMER_MARKER = 'tcplab-keepalive-drop-rule-timer'
TIMER_DIR = '/run/tcplab-keepalive/drop_rule'
SBIN_DIRS = ('/usr/sbin', '/sbin', '/usr/bin', '/bin')
# the legacy tables that exist in this network namespace (what iptables-nft reads to warn about them)
LEGACY_TABLES = {'4': '/proc/net/ip_tables_names', '6': '/proc/net/ip6_tables_names'}
# options that only describe one rule; state: purged works on tags, not on rules
RULE_OPTIONS = ('port', 'source', 'destination', 'in_interface', 'out_interface', 'expire_after')

MSG_PORT = 'port must be an integer 1..65535, got %r'
MSG_PORT_REQUIRED = 'port is required with state: %s'
MSG_TAG = ('tag must be 1 to 32 letters, digits, "-" or "_" (it becomes the rule comment '
           '"tcplab-keepalive:<tag>"), got %r')
MSG_CHAIN = 'chain must be INPUT or OUTPUT, got %r'
MSG_ADDRESS = '%s must be an IPv%s address or CIDR (ip_version: %s), got %r'
MSG_IFACE = '%s must be an interface name (1 to 15 letters, digits, ".", "_", "-", ":", "@"; "+" at the end), got %r'
MSG_IFACE_CHAIN = '%s cannot be used with chain %s (iptables allows in_interface on INPUT, out_interface on OUTPUT)'
MSG_IP_VERSION = 'ip_version must be 4 or 6 (both only with state: purged), got %r'
MSG_EXPIRE = 'expire_after must be an integer number of seconds 1..604800 (7 days), got %r'
MSG_EXPIRE_STATE = ('expire_after applies only to state: present (absent cancels the rule\'s timer, purged '
                    'cancels every timer of the tag), got state: %s')
MSG_WAIT = 'wait must be an integer number of seconds 0..3600, got %r'
MSG_PURGE_OPTION = ('state: purged takes no %s: it removes every rule of the tag (of every tag when tag is not '
                    'given); to remove one rule use state: absent with that rule\'s options')
MSG_LOCKOUT = ('refusing to DROP %s %s %d on %s: Ansible manages this host over SSH (%s:%s from %s:%s, '
               'SSH_CONNECTION) and the rule would cut that connection. Pick another port, narrow the '
               'rule with source/destination, or set allow_lockout: true if you really mean it')
MSG_LOCK_BUSY = ('the xtables lock is held by another program and was not released within wait (%d s): '
                 'nothing was changed; retry, or raise wait')
MSG_EXEC_HINT = 'give the path of %(family)s, %(family)s-legacy or %(family)s-nft'
MSG_EXEC_NOT_FOUND = ('%(program)s not found in PATH or %(dirs)s: install iptables (Debian/Ubuntu: apt-get install '
                      'iptables), or ' + MSG_EXEC_HINT)
MSG_EXEC_RELATIVE = 'executable %(program)s is a relative path: ' + MSG_EXEC_HINT + ' (absolute), or a program name in PATH'
MSG_EXEC_DIR = 'executable %(program)s is a directory, not a program: ' + MSG_EXEC_HINT
MSG_EXEC_NOT_PROGRAM = 'executable %(program)s is not an executable program (%(why)s): ' + MSG_EXEC_HINT
MSG_NOT_IPTABLES = ('executable %(program)s did not behave like %(family)s: "%(program)s -V" exited with rc=%(rc)d '
                    'and printed %(out)r, where %(family)s prints "%(family)s v1.8.9 (nf_tables)" or similar: ' + MSG_EXEC_HINT)
MSG_WRONG_FAMILY = ('executable %(program)s is %(other)s, the program of IPv%(other_version)s rules: for IPv%(other_version)s '
                    'set ip_version: %(other_version)s (the module then runs %(other)s); for IPv%(version)s ' + MSG_EXEC_HINT)
MSG_FAILED = '%s failed (rc=%d): %s'
MSG_TIMER_STUCK = 'the dead-man timer (pid %d) did not stop after SIGTERM and SIGKILL: %s'


class RuleError(Exception):
    """Invalid request or failed iptables call; the message says what to do."""


def _to_int(value):
    """value as an int if it is one, also as text ('300', as k=v arguments and -e variables arrive), else unchanged."""
    if isinstance(value, str) and INT_RE.match(value.strip()):
        return int(value.strip())
    return value


def _int_in(value, low, high, message):
    number = _to_int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        raise RuleError(message % (value,))
    return number


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
        'wait': _int_in(params.get('wait') if params.get('wait') is not None else 30, 0, 3600, MSG_WAIT),
        'allow_lockout': bool(params.get('allow_lockout')),
        'expire_after': None,
    }
    if state == 'purged':
        for key in RULE_OPTIONS:
            if params.get(key) is not None:
                raise RuleError(MSG_PURGE_OPTION % key)
        return rule
    if params.get('expire_after') is not None:
        if state != 'present':
            raise RuleError(MSG_EXPIRE_STATE % state)
        rule['expire_after'] = _int_in(params['expire_after'], 1, 604800, MSG_EXPIRE)
    if params.get('port') is None:
        raise RuleError(MSG_PORT_REQUIRED % state)
    rule['port'] = _int_in(params['port'], 1, 65535, MSG_PORT)
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
    return env, proc_parent(pid) or 0


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
        hit = any((rule['match'] == 'dport' and rule['port'] == server_port,
                   rule['match'] == 'sport' and rule['port'] == client_port))
        ours, theirs = server, client
        local_key, remote_key = 'destination', 'source'
    else:
        # packets from sshd back to the controller
        hit = any((rule['match'] == 'sport' and rule['port'] == server_port,
                   rule['match'] == 'dport' and rule['port'] == client_port))
        ours, theirs = server, client
        local_key, remote_key = 'source', 'destination'
    if not hit:
        return
    for key, address in ((local_key, ours), (remote_key, theirs)):
        if rule.get(key) and address not in ipaddress.ip_network(rule[key]):
            return
    raise RuleError(MSG_LOCKOUT % (rule['protocol'], rule['match'], rule['port'], rule['chain'],
                                   server_ip, server_port, client_ip, client_port))


# -- the iptables programs -----------------------------------------------------

def family_program(name, version):
    """The program of the family: iptables-legacy stays for IPv4 and becomes ip6tables-legacy for IPv6."""
    head, base = os.path.split(name)
    if version == '6' and base.startswith('iptables'):
        base = 'ip6tables' + base[len('iptables'):]
    return os.path.join(head, base) if head else base


def find_program(name, version, which):
    """Absolute path of the iptables program name (a name looked up by which, or an absolute path).

    Refuses, with the fix in the message, what cannot be an iptables program before it is run."""
    facts = {'program': name, 'family': binary_name(version), 'dirs': ', '.join(SBIN_DIRS)}
    if '/' not in name:
        path = which(name)
        if not path:
            raise RuleError(MSG_EXEC_NOT_FOUND % facts)
        return path
    if not os.path.isabs(name):
        raise RuleError(MSG_EXEC_RELATIVE % facts)
    if os.path.isdir(name):
        raise RuleError(MSG_EXEC_DIR % facts)
    if not os.path.exists(name):
        raise RuleError(MSG_EXEC_NOT_FOUND % facts)
    why = _not_runnable(name)
    if why:
        raise RuleError(MSG_EXEC_NOT_PROGRAM % dict(facts, why=why))
    return name


def _not_runnable(path):
    """Why path cannot be run as a program, or None."""
    if not os.path.isfile(path):
        return 'not a regular file'
    if not os.access(path, os.X_OK):
        return 'no execute permission'
    try:
        with open(path, 'rb') as handle:
            head = handle.read(4)
    except (IOError, OSError):
        return None
    if head != b'\x7fELF' and not head.startswith(b'#!'):
        return 'neither an ELF binary nor a #! script'
    return None


def legacy_tables_present(version, paths=None):
    """True if this network namespace has a legacy (x_tables) filter table of the family.

    Listing with iptables-legacy would create an empty one, so a namespace without one is not listed."""
    path = (paths or LEGACY_TABLES)[version]
    try:
        with open(path) as handle:
            return 'filter' in handle.read().split()
    except (IOError, OSError):
        return False


class Iptables:
    """One family's iptables program, always with the lock wait (-w)."""

    def __init__(self, run, binary, wait, version='4'):
        self.run = run
        self.binary = binary
        self.wait = wait
        self.version = version
        self._backend = None

    def _cmd(self, *args):
        return [self.binary, '-w', str(self.wait)] + list(args)

    def _fail(self, argv, rc, out, err):
        if rc == 4 and 'xtables lock' in (err or ''):
            raise RuleError(MSG_LOCK_BUSY % self.wait)
        raise RuleError(MSG_FAILED % (' '.join(argv), rc, (err or out or '').strip() or '(no output)'))

    def _call(self, argv, ok_rc=(0,)):
        rc, out, err = self.run(argv, check=False)
        if rc not in ok_rc:
            self._fail(argv, rc, out, err)
        return rc, out, err

    def probe(self):
        """The backend (nf_tables or legacy), from -V; a program that does not answer like iptables is refused."""
        family = binary_name(self.version)
        rc, out, err = self.run([self.binary, '-V'], check=False)
        text = ((out or '') + (err or '')).strip()
        found = VERSION_RE.match(text)
        if rc != 0 or not found:
            raise RuleError(MSG_NOT_IPTABLES % {'program': self.binary, 'family': family, 'rc': rc, 'out': text[:200]})
        if found.group(1) != family:
            raise RuleError(MSG_WRONG_FAMILY % {'program': self.binary, 'family': family, 'version': self.version,
                                                'other': found.group(1), 'other_version': '4' if self.version == '6' else '6'})
        self._backend = 'nf_tables' if 'nf_tables' in text else 'legacy'
        return self._backend

    def backend(self):
        return self._backend or self.probe()

    def usable(self):
        """True if the program can hold rules here (a second backend is looked at only then)."""
        if self.backend() == 'legacy':
            return legacy_tables_present(self.version)
        rc, out, err = self.run(self._cmd('-S', 'INPUT'), check=False)
        if rc == 4 and 'xtables lock' in (err or ''):
            raise RuleError(MSG_LOCK_BUSY % self.wait)
        return rc == 0

    def exists(self, chain, spec):
        """True/False from -C; a busy lock or any other error raises (never read as absent)."""
        return self._matched(self._cmd('-C', chain, *spec))

    def insert(self, chain, spec, position):
        self._call(self._cmd('-I' if position == 'insert' else '-A', chain, *spec))

    def delete(self, chain, spec):
        """Delete one copy; False if it was gone already (a timer or another run was faster)."""
        return self._matched(self._cmd('-D', chain, *spec))

    def _matched(self, argv):
        """True when -C/-D found the rule, False when iptables says there is none; any other error raises."""
        rc, out, err = self.run(argv, check=False)
        if rc == 0:
            return True
        if rc == 1 and 'does a matching rule exist' in (err or ''):
            return False
        return self._fail(argv, rc, out, err)

    def list_rules(self, chain=None):
        args = ['-S'] + ([chain] if chain else [])
        rc, out, err = self._call(self._cmd(*args))
        return out.splitlines()


def open_tables(rule, executable, run, which):
    """{ip_version: [Iptables, ...]}: first the program that adds (executable, else iptables/ip6tables), then,
    for state purged and for state absent without executable, the other backends that hold tables here."""
    versions = ['4', '6'] if rule['ip_version'] == 'both' else [rule['ip_version']]
    tables = {}
    for version in versions:
        name = family_program(executable, version) if executable else binary_name(version)
        if rule['state'] == 'purged' and not executable and not which(name) and not _any_backend(version, which):
            tables[version] = []  # no iptables program here: no rule of this collection can be in place
            continue
        first = Iptables(run, find_program(name, version, which), rule['wait'], version)
        first.probe()
        tables[version] = [first]
        if rule['state'] == 'purged' or (rule['state'] == 'absent' and not executable):
            tables[version] += other_backends(first, run, which)
    return tables


def _any_backend(version, which):
    """Whether an iptables-nft or iptables-legacy program of version's family is installed."""
    return any(which(binary_name(version) + suffix) for suffix in ('-nft', '-legacy'))


def other_backends(first, run, which):
    """iptables-nft / iptables-legacy (of first's family) when they are another backend and hold tables here."""
    seen = {first.backend()}
    found = []
    for suffix in ('-nft', '-legacy'):
        path = which(binary_name(first.version) + suffix)
        # the name first already is (iptables is a link to iptables-nft): nothing to ask it; a legacy program
        # where the namespace has no legacy table holds no rule (each iptables run costs a slow target ~0.1 s)
        if not path or os.path.realpath(path) == os.path.realpath(first.binary):
            continue
        if suffix == '-legacy' and not legacy_tables_present(first.version):
            continue
        other = Iptables(run, path, first.wait, first.version)
        try:
            backend = other.probe()
        except RuleError:
            continue
        if backend not in seen and other.usable():
            seen.add(backend)
            found.append(other)
    return found


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

# the timer program's source under the name of earlier releases (tests/unit/scripts/test_pycompat.py runs it so)
TIMER_CODE = program_source(_program_timer)


def timer_key(version, chain, spec, backend):
    """The timer's name: this network namespace, the family, the backend and the rule."""
    digest = hashlib.sha1(json.dumps([version, backend, chain, spec]).encode('utf-8')).hexdigest()[:16]
    return '%d-%s' % (netns_inode(), digest)


def timer_version(info):
    """'4' or '6': the family of the rule a timer removes (older records only name the program)."""
    if info.get('ip_version'):
        return str(info['ip_version'])
    program = os.path.basename(((info.get('rule') or ['']) + [''])[0])
    return '6' if program.startswith('ip6tables') else '4'


def when(epoch):
    return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(epoch))


class Timers:
    """Dead-man timers: detached processes (_program_timer.py) that delete one rule when they expire.

    A timer's state record (TIMER_DIR/<key>.json: pid, start, handle - the record's own path, which is also on
    the timer's command line -, expires_at, expire_after, rule, ip_version) proves it ours; it is started and
    stopped through _detached."""

    def __init__(self, directory=TIMER_DIR, patience=5.0):
        self.directory = directory
        self.patience = patience

    def path(self, key):
        return os.path.join(self.directory, key + '.json')

    def load(self, key):
        return load_record(self.path(key))

    @staticmethod
    def process(info):
        """The timer of a record as a _detached.Process: the marker and our state file in its command line, and
        the start time of the record."""
        handle = info.get('handle')
        return Process(int(info['pid']), info['start'],
                       proof=lambda argv: TIMER_MARKER in argv and (not handle or any(handle in part for part in argv[-1:])))

    def alive(self, info):
        """True if the timer's process still runs and is ours."""
        if not info or not info.get('pid') or not info.get('start'):
            return False
        return self.process(info).ours()

    def arm(self, key, seconds, check_argv, delete_argv, version='4'):
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, 0o700)
        state = self.path(key)
        expires_at = time.time() + seconds
        args = {'expires_at': expires_at, 'check': check_argv, 'delete': delete_argv, 'state': state}
        proc = spawn(program_argv(sys.executable, _program_timer, TIMER_MARKER, args))
        info = {'pid': proc.pid, 'start': process_facts(proc.pid)['start'], 'expires_at': expires_at,
                'expire_after': seconds, 'rule': delete_argv, 'handle': state, 'ip_version': version}
        save_record(state, info)
        return info

    def cancel(self, key):
        """Stop the timer of key, if any, and wait until it has gone. Returns True if one was running."""
        info = self.load(key)
        running = self.alive(info)
        if running:
            self.stop(info)
        try:
            os.unlink(self.path(key))
        except OSError:
            pass
        return running

    def stop(self, info):
        """SIGTERM, then SIGKILL (_detached.terminate), each only while the record's pid, start time and command
        line match; returns when the process has gone (or is a zombie), else raises."""
        if not terminate(self.process(info), self.patience, self.patience).gone:
            pid = int(info['pid'])
            raise RuleError(MSG_TIMER_STUCK % (pid, ' '.join(cmdline(pid))[:200]))

    def keys_of_netns(self):
        prefix = '%d-' % netns_inode()
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted(name[:-5] for name in names if name.startswith(prefix) and name.endswith('.json'))


# -- present / absent / purged -------------------------------------------------

def _programs(tables, version):
    found = tables[version]
    return list(found) if isinstance(found, (list, tuple)) else [found]


def manage(rule, tables, timers, check_mode=False, ssh_connection=None):
    """Bring the rule to rule['state']. tables maps '4'/'6' to a list of Iptables (the first adds; absent and
    purged look in all of them). Returns the result dict."""
    if rule['state'] == 'purged':
        return _purge(rule, tables, timers, check_mode)
    programs = _programs(tables, rule['ip_version'])
    first = programs[0]
    text = rule_text(rule)
    result = {
        'changed': False,
        'rule': first._cmd('-I' if rule['position'] == 'insert' else '-A', rule['chain']) + rule_spec(rule),
        'rule_text': text,
        'backend': first.backend(),
        'backends': [program.backend() for program in programs],
        'expiry': None,
        'diff': {'before': '', 'after': ''},
    }
    if rule['state'] == 'present':
        lockout_check(rule, ssh_connection)
        return _present(rule, first, timers, check_mode, result)
    return _absent(rule, programs, timers, check_mode, result)


def _present(rule, iptables, timers, check_mode, result):
    chain, spec, text = rule['chain'], rule_spec(rule), result['rule_text']
    exists = iptables.exists(chain, spec)
    result['diff'] = {'before': text + '\n' if exists else '', 'after': text + '\n'}
    if exists:
        said = ['already present']
    else:
        result['changed'] = True
        verb = 'insert' if rule['position'] == 'insert' else 'append'
        said = ['would ' + verb if check_mode else verb + 'ed']
        if not check_mode:
            iptables.insert(chain, spec, rule['position'])
            if not iptables.exists(chain, spec):
                raise RuleError('the rule was inserted but iptables -C does not find it: %s' % text)
    said += _present_timer(rule, iptables, timers, check_mode, exists, result)
    result['msg'] = ', '.join(said)
    return result


def _present_timer(rule, iptables, timers, check_mode, exists, result):
    """Arm, re-arm, keep or cancel the rule's dead-man timer; the phrases that say what happened."""
    chain, spec, wanted = rule['chain'], rule_spec(rule), rule['expire_after']
    key = timer_key(rule['ip_version'], chain, spec, iptables.backend())
    info = timers.load(key)
    running = timers.alive(info)
    if running and exists and wanted in (None, info.get('expire_after')):
        # the same expire_after, or none, keeps the timer armed earlier (and its deadline)
        result['expiry'] = info
        return ['the timer armed earlier stays: removes the rule at %s (expire_after %s)'
                % (when(info['expires_at']), info.get('expire_after'))]
    if wanted is None:
        if not running:
            return []
        # a timer left behind by an earlier copy of the rule would remove this one, which asks for no timer
        result['changed'] = True
        if check_mode:
            return ['would cancel the timer left by an earlier copy of the rule']
        timers.cancel(key)
        return ['cancelled the timer left by an earlier copy of the rule']
    result['changed'] = True
    verb = 're-arm' if running else 'arm'
    if check_mode:
        result['expiry'] = info if running else None
        return ['would %s the timer: %d s from now%s' % (verb, wanted, _was(info, running))]
    timers.cancel(key)
    result['expiry'] = timers.arm(key, wanted, iptables._cmd('-C', chain, *spec), iptables._cmd('-D', chain, *spec),
                                  rule['ip_version'])
    return ['%sed the timer: removes the rule at %s (%d s from now)%s'
            % (verb, when(result['expiry']['expires_at']), wanted, _was(info, running))]


def _was(info, running):
    if not running:
        return ''
    return ' instead of %s (expire_after %s)' % (when(info['expires_at']), info.get('expire_after'))


def _absent(rule, programs, timers, check_mode, result):
    chain, spec, text = rule['chain'], rule_spec(rule), result['rule_text']
    found, timed = [], 0
    for iptables in programs:
        key = timer_key(rule['ip_version'], chain, spec, iptables.backend())
        info = timers.load(key)
        running = timers.alive(info)
        if check_mode:
            exists = iptables.exists(chain, spec)
            if running:
                result['expiry'] = info
        else:
            # every copy (duplicates made by other tools) of exactly this tagged rule - -D until iptables says there
            # is none, no -C before each (an iptables run costs a lab VM under emulation about a tenth of a
            # second) - then its timer
            exists = False
            while iptables.delete(chain, spec):
                exists = True
            if info:
                timers.cancel(key)
        found += [iptables.backend()] if exists else []
        timed += 1 if running else 0
    result['changed'] = bool(found or timed)
    result['diff'] = {'before': text + '\n' if found else '', 'after': ''}
    said = ['%s (%s)' % ('would remove' if check_mode else 'removed', ', '.join(found))] if found else [
        'already absent (looked in %s)' % ', '.join(result['backends'])]
    if timed:
        said.append('%s its timer' % ('would cancel' if check_mode else 'cancelled'))
    result['msg'] = ', '.join(said)
    return result


def _purge(rule, tables, timers, check_mode):
    removed = []
    backends = []
    for version in sorted(tables):
        for iptables in _programs(tables, version):
            backends.append(iptables.backend())
            for chain, spec in tagged_rules(iptables.list_rules(), rule['tag']):
                removed.append({'ip_version': version, 'chain': chain, 'backend': iptables.backend(),
                                'program': iptables.binary,
                                'rule_text': '-A %s %s' % (chain, ' '.join(shlex.quote(part) for part in spec))})
                if not check_mode:
                    iptables.delete(chain, spec)
    # the timers go after their rules, so a failure half-way leaves every remaining rule its dead-man timer
    cancelled = 0
    for key in timers.keys_of_netns():
        info = timers.load(key) or {}
        if timer_version(info) not in tables:
            continue
        if rule['tag'] is not None and comment(rule['tag']) not in (info.get('rule') or []):
            continue
        if check_mode:
            cancelled += 1 if timers.alive(info) else 0
        else:
            cancelled += 1 if timers.cancel(key) else 0
    would = 'would ' if check_mode else ''
    return {
        'changed': bool(removed or cancelled),
        'removed': removed,
        'timers_cancelled': cancelled,
        'backend': backends[0] if backends else None,
        'backends': sorted(set(backends), key=backends.index),
        'msg': '%s %d tagged rule(s) and %s %d timer(s) (%s)' % (
            would + 'remove' if check_mode else 'removed', len(removed),
            'cancel' if check_mode else 'cancelled', cancelled,
            'looked in ' + ', '.join(sorted(set(backends), key=backends.index)) if backends
            else 'no iptables program here: no rule of ours can be'),
        'diff': {'before': ''.join(item['rule_text'] + '\n' for item in removed), 'after': ''},
    }
