# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A lab host as a stateful middlebox that forgets idle flows, and the two ends
that are routed through it: validation, the plan of sysctls, host routes and
tagged FORWARD rules, the journal that records every change before it is made,
and the restore of one run (absent) or of every journalled run (purged).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.

Journal (JOURNAL_DIR/journal.json, flock + atomic write through
_sysctl.Journal), keyed by the network namespace inode::

    {"<inode>": {"netns_inode": N, "netns_cookie": C, "netns_name": ..., "saved_at": ...,
                 "sysctls": [[path, original], ...],      # first originals win, restored in reverse order
                 "tags": {"<tag>": {"role": ..., "routes": [...], "rules": [[chain, spec], ...], ...}}}}

The sysctls of a namespace are put back when its last tag goes.

The namespace is its inode and its cookie (_proc.netns_identity): the kernel
gives a deleted namespace's inode to a new one soon, its cookie never. An
entry whose inode the module's namespace has, but with another cookie, was
made in a namespace that is gone (and its sysctls, routes and rules with it):
it is dropped with a note (stale: true), and nothing of it is restored into or
removed from this stranger (_sysctl.stranger, _sysctl.prune_dead). The cookie
is null on a kernel without cookies (Linux < 5.14) and absent from entries
older than it: those are judged by their inode alone, as before.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.tcplab.keepalive.plugins.module_utils import _iptables
from ansible_collections.tcplab.keepalive.plugins.module_utils import _netns
from ansible_collections.tcplab.keepalive.plugins.module_utils import _proc
from ansible_collections.tcplab.keepalive.plugins.module_utils import _sysctl
from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import IDLE_TIMEOUTS

JOURNAL_DIR = '/run/tcplab-keepalive/middlebox'
PROC_SYS = '/proc/sys/'
# the routing protocol number our host routes carry (ip route ... proto 177; no name in rt_protos): with the journal, the proof they are ours
ROUTE_PROTO = '177'
ROLES = ('middlebox', 'end')
ACTIONS = ('drop', 'reset')
# the kernel's default established timeout is 5 days; beyond it nothing is forgotten sooner than without us
SECONDS_RANGE = (1, 432000)
FORWARD = 'FORWARD'
TIMEOUT = 'net/netfilter/nf_conntrack_tcp_timeout_established'
LOOSE = 'net/netfilter/nf_conntrack_tcp_loose'
IP_FORWARD = 'net/ipv4/ip_forward'
# ip_forward also sets these; they are recorded first, so that they are restored after it
FORWARD_SIDE = ('net/ipv4/conf/all/forwarding', 'net/ipv4/conf/default/forwarding', 'net/ipv4/conf/%s/forwarding')
DEV_RE = re.compile(r'^[A-Za-z0-9_.:@-]{1,15}$')

MSG_ROLE = 'role must be middlebox or end (state: %s), got %r'
MSG_PRESET = 'preset must be one of %s, got %r'
MSG_PRESET_WITH = ('preset %s sets seconds (%d) and action (%s) itself: give preset, or seconds and action, '
                   'not both')
MSG_SECONDS = 'seconds must be an integer %d..%d (the idle timeout of the middlebox), got %r'
MSG_SECONDS_REQUIRED = 'role: middlebox needs the idle timeout: give preset (%s) or seconds'
MSG_ACTION = 'action must be drop or reset, got %r'
MSG_ADDRESS = '%s must be an IPv4 address, got %r'
MSG_ENDS = 'ends must be the two IPv4 addresses of the ends the middlebox stands between, got %r'
MSG_END_OPTS = 'role: end needs peer (the other end\'s address) and via (the middlebox\'s address), got peer=%r via=%r'
MSG_WRONG_ROLE_OPT = 'role: %s takes no %s (that is an option of role: %s)'
MSG_PURGE_OPT = ('state: purged takes no %s: it undoes every journalled run of this namespace (of tag, when '
                 'given); to undo one run use state: absent with its tag')
MSG_NO_CONNTRACK = ('this host has no connection tracking in its network namespace (%s is missing): load it '
                    '(modprobe nf_conntrack) on the machine, or pick another middlebox')
MSG_NO_ROUTE = 'no route from this host to %s (%s): the middlebox and the ends must share a network'
MSG_ROUTE_TAKEN = ('a host route to %s that is not ours already exists (%s): remove it (ip route del %s), '
                   'or route the ends yourself')
MSG_BUSY = ('this middlebox already serves run %s (idle timeout %s s, %s): one run at a time; wait for it to end '
            'or, if it is dead, run the tcplab.keepalive.rollback playbook on this host')
MSG_SYSCTL_WRITE = 'setting %s to %s failed (%s): run as root (become: true); %s'
MSG_READ_BACK = 'read back %s=%s after writing %s: the kernel did not keep it; %s'
MSG_NO_IP = 'ip not found in PATH or %s: install iproute2 (Debian/Ubuntu: apt-get install iproute2)'
MSG_UNDONE = 'everything changed so far is journalled: state: absent with the same tag (or rollback) puts it back'
# present: a note before the rest of the message; the verb is 'dropped' or 'would drop'
MSG_STALE_PRESENT = _sysctl.MSG_STALE_PRESENT
MSG_STALE_UNDO = ('nothing undone: the journal entry for inode %d (run(s) %s) was made in another network namespace '
                  '(cookie %d), which is gone with its sysctls, routes and rules; this one got its inode but has '
                  'cookie %d; %s that entry')


class MiddleboxError(Exception):
    """Invalid request or failed change; the message says what to do."""


# -- validation ---------------------------------------------------------------

def _address(key, value):
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError:
        raise MiddleboxError(MSG_ADDRESS % (key, value))


def _seconds(value):
    low, high = SECONDS_RANGE
    number = _sysctl.as_int(value)
    if number is None or not low <= number <= high:
        raise MiddleboxError(MSG_SECONDS % (low, high, value))
    return number


def idle_timeout(params):
    """(seconds, action, preset) of the options preset, seconds and action (also the experiment role's, through the
    idle_timeout_plan filter)."""
    preset, seconds, action = params.get('preset'), params.get('seconds'), params.get('action')
    if preset is not None:
        if preset not in IDLE_TIMEOUTS:
            raise MiddleboxError(MSG_PRESET % (', '.join(sorted(IDLE_TIMEOUTS)), preset))
        table = IDLE_TIMEOUTS[preset]
        if seconds is not None or action is not None:
            raise MiddleboxError(MSG_PRESET_WITH % (preset, table['seconds'], table['action']))
        return table['seconds'], table['action'], preset
    if seconds is None:
        raise MiddleboxError(MSG_SECONDS_REQUIRED % ', '.join(sorted(IDLE_TIMEOUTS)))
    action = 'drop' if action is None else action
    if action not in ACTIONS:
        raise MiddleboxError(MSG_ACTION % (action,))
    return _seconds(seconds), action, None


def _check_tag(tag):
    if not isinstance(tag, str) or not _iptables.TAG_RE.match(tag):
        raise MiddleboxError(_iptables.MSG_TAG % (tag,))
    return tag


ROLE_OPTIONS = {'middlebox': ('preset', 'seconds', 'action', 'ends'), 'end': ('peer', 'via')}


def validate(params):
    """Checked, normalised request; MiddleboxError before anything runs."""
    state = params.get('state') or 'present'
    role = params.get('role')
    wait = _iptables._int_in(30 if params.get('wait') is None else params['wait'], 0, 3600, _iptables.MSG_WAIT)
    if state == 'purged':
        for key in ('role',) + ROLE_OPTIONS['middlebox'] + ROLE_OPTIONS['end']:
            if params.get(key) is not None:
                raise MiddleboxError(MSG_PURGE_OPT % key)
        tag = params.get('tag')
        return {'state': state, 'tag': None if tag is None else _check_tag(tag), 'wait': wait}
    if role not in ROLES:
        raise MiddleboxError(MSG_ROLE % (state, role))
    request = {'state': state, 'role': role, 'tag': _check_tag(params.get('tag')), 'wait': wait}
    other = 'end' if role == 'middlebox' else 'middlebox'
    for key in ROLE_OPTIONS[other]:
        if params.get(key) is not None:
            raise MiddleboxError(MSG_WRONG_ROLE_OPT % (role, key, other))
    if state == 'absent':
        return request
    if role == 'middlebox':
        request['seconds'], request['action'], request['preset'] = idle_timeout(params)
        ends = params.get('ends')
        if not isinstance(ends, (list, tuple)) or len(ends) != 2:
            raise MiddleboxError(MSG_ENDS % (ends,))
        request['ends'] = [_address('ends', end) for end in ends]
        if request['ends'][0] == request['ends'][1]:
            raise MiddleboxError(MSG_ENDS % (ends,))
        return request
    if params.get('peer') is None or params.get('via') is None:
        raise MiddleboxError(MSG_END_OPTS % (params.get('peer'), params.get('via')))
    request['peer'] = _address('peer', params['peer'])
    request['via'] = _address('via', params['via'])
    return request


# -- the plan -----------------------------------------------------------------

def forward_rules(tag, ends, action):
    """(chain, spec) of the middlebox's rules, in the order they must stand (first matches first).

    Per direction between the two ends: accept what conntrack knows, accept a new flow's SYN, and drop
    (or reject with a TCP reset) the rest - the packets of a flow it has forgotten (INVALID with
    nf_conntrack_tcp_loose = 0) or never saw begin (NEW without SYN)."""
    mark = ['-m', 'comment', '--comment', _iptables.comment(tag)]
    last = ['-j', 'DROP'] if action == 'drop' else ['-j', 'REJECT', '--reject-with', 'tcp-reset']
    rules = []
    for source, destination in ((ends[0], ends[1]), (ends[1], ends[0])):
        head = ['-s', source + '/32', '-d', destination + '/32', '-p', 'tcp']
        rules.append((FORWARD, head + ['-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED'] + mark + ['-j', 'ACCEPT']))
        rules.append((FORWARD, head + ['-m', 'tcp', '--tcp-flags', 'FIN,SYN,RST,ACK', 'SYN',
                                       '-m', 'conntrack', '--ctstate', 'NEW'] + mark + ['-j', 'ACCEPT']))
        rules.append((FORWARD, head + mark + last))
    return rules


def rule_text(chain, spec):
    return ' '.join(['-A', chain] + [('"%s"' % part if part.startswith(_iptables.COMMENT_PREFIX) else part)
                                     for part in spec])


def route_argv(route):
    """ip route argv (after 'ip route add|del') of a journalled host route."""
    return [route['to'], 'via', route['via'], 'dev', route['dev'], 'proto', ROUTE_PROTO]


def route_text(route):
    return ' '.join(route_argv(route))


# -- the host -----------------------------------------------------------------

class Host:
    """The network namespace the module runs in: its /proc/sys, and ip through the one Runner."""

    def __init__(self, run, ip, proc_sys=PROC_SYS):
        self.run = run
        self.ip = ip
        self.proc_sys = proc_sys

    def has(self, path):
        return os.path.exists(self.proc_sys + path)

    def read(self, path):
        with open(self.proc_sys + path) as handle:
            return handle.read().strip()

    def write(self, path, value):
        with open(self.proc_sys + path, 'w') as handle:
            handle.write('%s\n' % value)

    def _ip(self):
        """The ip program; needed only where routes are read or changed (a purge with nothing to do needs none)."""
        if not self.ip:
            raise MiddleboxError(MSG_NO_IP % ', '.join(_iptables.SBIN_DIRS))
        return self.ip

    def dev_to(self, address):
        """The interface this host reaches address through."""
        rc, out, err = self.run([self._ip(), '-o', 'route', 'get', address], check=False)
        found = re.search(r'\bdev (\S+)', out or '')
        if rc != 0 or not found or not DEV_RE.match(found.group(1)):
            raise MiddleboxError(MSG_NO_ROUTE % (address, (err or out or '').strip() or 'no answer'))
        return found.group(1)

    def routes_to(self, to):
        """The routes of exactly this prefix in the main table, as `ip -o route show` prints them."""
        rc, out, err = self.run([self._ip(), '-o', 'route', 'show', 'exact', to])
        return [line.strip() for line in out.splitlines() if line.strip()]

    def route_add(self, route):
        self.run([self._ip(), 'route', 'add'] + route_argv(route))

    def route_del(self, route):
        self.run([self._ip(), 'route', 'del'] + route_argv(route))


def is_our_route(line, route):
    """Whether an `ip route show` line is this journalled route (our proto, the same gateway and device)."""
    words = line.split()

    def after(word):
        return words[words.index(word) + 1] if word in words[:-1] else None
    return after('via') == route['via'] and after('dev') == route['dev'] and after('proto') == ROUTE_PROTO


def plan(request, host):
    """(sysctls [(path, value)] in the order to write, routes [dict], rules [(chain, spec)])."""
    if request['role'] == 'middlebox':
        if not host.has(TIMEOUT):
            raise MiddleboxError(MSG_NO_CONNTRACK % (PROC_SYS + TIMEOUT))
        devs = sorted({host.dev_to(end) for end in request['ends']})
        sides = [side for side in FORWARD_SIDE if '%s' not in side] + [FORWARD_SIDE[2] % dev for dev in devs]
        sysctls = [(side, '1') for side in sides] + [(IP_FORWARD, '1')]
        sysctls += [('net/ipv4/conf/all/send_redirects', '0')]
        sysctls += [('net/ipv4/conf/%s/send_redirects' % dev, '0') for dev in devs]
        sysctls += [(LOOSE, '0'), (TIMEOUT, str(request['seconds']))]
        return sysctls, [], forward_rules(request['tag'], request['ends'], request['action'])
    dev = host.dev_to(request['via'])
    sysctls = [('net/ipv4/conf/all/accept_redirects', '0'), ('net/ipv4/conf/%s/accept_redirects' % dev, '0')]
    return sysctls, [{'to': request['peer'] + '/32', 'via': request['via'], 'dev': dev}], []


def sysctl_name(path):
    return path.replace('/', '.')


def missing_routes(host, routes):
    """The routes of the plan that are not there yet; MiddleboxError when another route has the prefix."""
    todo = []
    for route in routes:
        lines = host.routes_to(route['to'])
        if any(is_our_route(line, route) for line in lines):
            continue
        if lines:
            raise MiddleboxError(MSG_ROUTE_TAKEN % (route['to'], '; '.join(lines), route['to']))
        todo.append(route)
    return todo


def write_sysctls(host, changes):
    """Write (path, value) in order and read each back; the error says the journal has it all."""
    for path, value in changes:
        try:
            host.write(path, value)
        except (IOError, OSError) as exc:
            raise MiddleboxError(MSG_SYSCTL_WRITE % (sysctl_name(path), value, exc, MSG_UNDONE))
        found = host.read(path)
        if found != value:
            raise MiddleboxError(MSG_READ_BACK % (sysctl_name(path), found, value, MSG_UNDONE))


def record_originals(entry, current):
    """Journal the original of every path not journalled yet (the first originals win), in plan order."""
    known = {path for path, dummy in entry['sysctls']}
    for path, value in current:
        if path not in known:
            entry['sysctls'].append([path, value])
            known.add(path)


def tag_record(request, routes, rules):
    record = {'role': request['role'], 'routes': routes, 'rules': [[chain, list(spec)] for chain, spec in rules],
              'saved_at': _sysctl.now_iso()}
    for key in ('seconds', 'action', 'preset', 'ends', 'peer', 'via'):
        if key in request:
            record[key] = request[key]
    return record


class Middlebox:
    """present / absent / purged in the module's own network namespace; returns result dicts.

    tables() opens the iptables programs only when rules are involved (first adds; absent and purged
    look in every backend that holds tables here)."""

    def __init__(self, host, tables, journal, inode, netns_name=None, check_mode=False,
                 live_inodes=_sysctl.live_netns_inodes, cookie=None):
        self.host = host
        self.tables = tables
        self.journal = journal
        self.inode = inode
        self.cookie = cookie  # _proc.netns_identity; None: unknown (the inode alone proves an entry is this one's)
        self.netns_name = netns_name
        self.check_mode = check_mode
        self.live_inodes = live_inodes
        self._programs = None

    def programs(self):
        if self._programs is None:
            self._programs = self.tables()
        return self._programs

    def _locked(self, create):
        try:
            return self.journal.locked(create=create)
        except _sysctl.SysctlError as exc:
            raise MiddleboxError(str(exc))

    def _new_entry(self):
        return {'netns_inode': self.inode, 'netns_cookie': self.cookie, 'netns_name': self.netns_name,
                'saved_at': _sysctl.now_iso(), 'sysctls': [], 'tags': {}}

    def _entry(self, data):
        """(this namespace's journal entry or None, the entry of a gone namespace that had its inode or None)."""
        entry = data.get(str(self.inode))
        if _sysctl.stranger(entry, self):
            return None, entry
        return entry, None

    def _prune(self, data, stale):
        """Drop the entries of namespaces that are gone: inode no longer live, or stale (this inode's, another
        cookie)."""
        gone = {self.inode: _sysctl.entry_cookie(stale)} if stale is not None else None
        return _sysctl.prune_dead(data, self.live_inodes() | {self.inode}, gone)

    def _stale_note(self, stale):
        return MSG_STALE_PRESENT % ('would drop' if self.check_mode else 'dropped', self.inode,
                                    _sysctl.entry_cookie(stale), self.cookie)

    def _result(self, changed, msg, sysctls, routes, rules, record):
        said = [sysctl_name(path) + ' = ' + value for path, value in sysctls]
        return {'changed': changed, 'msg': msg, 'netns_inode': self.inode, 'netns_cookie': self.cookie,
                'record': record,
                'sysctls': {sysctl_name(path): value for path, value in sysctls},
                'routes': [route_text(route) for route in routes], 'rules': [rule_text(*rule) for rule in rules],
                'diff': {'before': '', 'after': ''.join(line + '\n' for line in said)}}

    # -- present

    def present(self, request):
        sysctls, routes, rules = plan(request, self.host)
        current = [(path, self.host.read(path)) for path, dummy in sysctls]
        now = dict(current)
        changes = [(path, value) for path, value in sysctls if now[path] != value]
        new_routes = missing_routes(self.host, routes)
        first = self.programs()[0] if rules else None
        rules_missing = first is not None and not all(first.exists(chain, spec) for chain, spec in rules)
        tag = request['tag']
        with self._locked(not self.check_mode) as data:
            entry, stale = self._entry(data)
            self._refuse_busy(entry, request)
            known = entry is not None and tag in entry['tags']
            changed = bool(changes or new_routes or rules_missing or not known)
            verb = 'would ' if self.check_mode else ''
            msg = self._present_msg(verb, changes, new_routes, rules if rules_missing else [])
            if stale is not None:  # a gone namespace's: neither its originals nor its runs are this one's
                msg = self._stale_note(stale) + '; ' + msg
            record = tag_record(request, routes, rules)
            if self.check_mode:
                return self._stale(self._result(changed, msg, changes, new_routes, rules if rules_missing else [],
                                                record), stale)
            self._prune(data, stale)
            entry = data.setdefault(str(self.inode), self._new_entry())
            if _sysctl.entry_cookie(entry) is None:  # an entry older than cookies, ours by its inode: proven from now on
                entry['netns_cookie'] = self.cookie
            record_originals(entry, current)
            entry['tags'][tag] = record
            self.journal.save(data)
        write_sysctls(self.host, changes)
        for route in new_routes:
            self.host.route_add(route)
        if rules_missing:
            self._insert_rules(first, rules)
        return self._stale(self._result(changed, msg, changes, new_routes, rules if rules_missing else [], record),
                           stale)

    @staticmethod
    def _stale(result, stale):
        if stale is not None:
            result['stale'] = True
        return result

    def _refuse_busy(self, entry, request):
        if request['role'] != 'middlebox' or entry is None:
            return
        for tag, record in entry['tags'].items():
            if tag != request['tag'] and record.get('role') == 'middlebox':
                raise MiddleboxError(MSG_BUSY % (tag, record.get('seconds'), record.get('action')))

    @staticmethod
    def _present_msg(verb, changes, routes, rules):
        parts = []
        if changes:
            parts.append('%sset %s' % (verb, ', '.join('%s=%s' % (sysctl_name(p), v) for p, v in changes)))
        if routes:
            parts.append('%sadd route %s' % (verb, ', '.join(route_text(route) for route in routes)))
        if rules:
            parts.append('%sinsert %d FORWARD rules' % (verb, len(rules)))
        return '; '.join(parts) or 'already in place'

    @staticmethod
    def _insert_rules(first, rules):
        """Every rule of the set in its order: copies left by a killed run go first, then -I in reverse."""
        for chain, spec in rules:
            while first.exists(chain, spec):
                first.delete(chain, spec)
        for chain, spec in reversed(rules):
            first.insert(chain, spec, 'insert')
        for chain, spec in rules:
            if not first.exists(chain, spec):
                raise MiddleboxError('the rule was inserted but iptables -C does not find it: %s'
                                     % rule_text(chain, spec))

    # -- absent / purged

    def absent(self, tag):
        return self._undo([tag], 'absent')

    def purged(self, tag=None):
        return self._undo(None if tag is None else [tag], 'purged')

    def _undo(self, tags, state):
        with self._locked(False) as data:
            entry, stale = self._entry(data)
            if stale is not None:
                return self._drop_stale(data, stale)
            journalled = sorted(entry['tags']) if entry else []
            chosen = [tag for tag in journalled if tags is None or tag in tags]
            if not chosen:
                what = 'tag %s' % tags[0] if tags else 'any run'
                return self._result(False, 'nothing journalled for %s in this network namespace (inode %d)'
                                    % (what, self.inode), [], [], [], None)
            routes, rules = [], []
            for tag in chosen:
                found_routes, found_rules = self._undo_tag(tag, entry['tags'][tag])
                routes += found_routes
                rules += found_rules
            remaining = [tag for tag in journalled if tag not in chosen]
            restores = [] if remaining else self._restores(entry)
            if not self.check_mode:
                for path, value in restores:
                    self.host.write(path, value)
                if remaining:
                    entry['tags'] = {tag: entry['tags'][tag] for tag in remaining}
                else:
                    del data[str(self.inode)]
                self.journal.save(data)
        verb = 'would ' if self.check_mode else ''
        parts = ['%s%s run(s) %s' % (verb, 'undo' if self.check_mode else 'undid', ', '.join(chosen))]
        if restores:
            parts.append('%srestore %s' % (verb, ', '.join('%s=%s' % (sysctl_name(p), v) for p, v in restores)))
        if routes:
            parts.append('%sremove route %s' % (verb, ', '.join(route_text(route) for route in routes)))
        if rules:
            parts.append('%sremove %d FORWARD rules' % (verb, len(rules)))
        if remaining:
            parts.append('sysctls stay for run(s) %s' % ', '.join(remaining))
        result = self._result(True, '; '.join(parts), restores, routes, rules, None)
        result['diff'] = {'before': ''.join(rule_text(*rule) + '\n' for rule in rules), 'after': ''}
        result['undone'] = chosen
        return result

    def _drop_stale(self, data, stale):
        """The result of absent / purged for a journal entry of a gone namespace whose inode this one got: the entry
        is dropped (not in check mode); nothing is restored into or removed from this namespace (stale: true)."""
        if not self.check_mode:
            self._prune(data, stale)
            self.journal.save(data)
        msg = MSG_STALE_UNDO % (self.inode, ', '.join(sorted(stale.get('tags') or {})) or 'none',
                                _sysctl.entry_cookie(stale), self.cookie, 'would drop' if self.check_mode else 'dropped')
        result = self._result(True, msg, [], [], [], None)
        result['diff'] = {'before': '', 'after': ''}
        return self._stale(result, stale)

    def _restores(self, entry):
        """(path, original) to write, in reverse journal order, of the values that are not the originals now."""
        todo = []
        for path, value in reversed(entry['sysctls']):
            if self.host.has(path) and self.host.read(path) != str(value):
                todo.append((path, str(value)))
        return todo

    def _undo_tag(self, tag, record):
        """Remove a run's routes (ours by proto, gateway and device) and rules (by spec, then by tag comment)."""
        routes = []
        for route in record.get('routes') or []:
            if any(is_our_route(line, route) for line in self.host.routes_to(route['to'])):
                routes.append(route)
                if not self.check_mode:
                    self.host.route_del(route)
        rules = []
        if record.get('rules') or record.get('role') == 'middlebox':
            for program in self.programs():
                # in check mode the listing of the tag says it all; else every exact copy first, then the tag's rest
                for chain, spec in [] if self.check_mode else [(c, list(s)) for c, s in record.get('rules') or []]:
                    while program.exists(chain, spec):
                        rules.append((chain, spec))
                        program.delete(chain, spec)
                for chain, spec in _iptables.tagged_rules(program.list_rules(FORWARD), tag):
                    rules.append((chain, spec))
                    if not self.check_mode:
                        program.delete(chain, spec)
        return routes, rules


def execute(request, run, which, check_mode=False, journal_dir=JOURNAL_DIR):
    """The result of the validated request in the module's own network namespace.

    run is the one Runner, which(name) finds a program (None when missing)."""
    def tables():
        wanted = {'ip_version': '4', 'state': 'present' if request['state'] == 'present' else 'purged',
                  'wait': request['wait']}
        return _iptables.open_tables(wanted, None, run, which)['4']
    inode, cookie = _proc.netns_identity()
    journal = _sysctl.Journal(journal_dir)
    box = Middlebox(Host(run, which('ip')), tables, journal, inode, _netns.name_of(inode), check_mode, cookie=cookie)
    try:
        if request['state'] == 'present':
            return box.present(request)
        if request['state'] == 'absent':
            return box.absent(request['tag'])
        return box.purged(request['tag'])
    except (_sysctl.SysctlError, _iptables.RuleError) as exc:
        raise MiddleboxError(str(exc))
