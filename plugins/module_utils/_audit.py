# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Keepalive audit of one host: runtime values per network namespace, persisted
values with systemd-sysctl precedence, drift, keepalive sockets, and policy
findings.

Everything here only reads. Another network namespace is read by a forked
child that enters it with setns(2) and sends its readings back as JSON over a
pipe (_netns.run_in); the parent process never leaves its own namespace. The
exact keepalive settings of each connection are read from the sockets
themselves (pidfd_getfd) in _audit_sockets.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import fnmatch
import heapq
import os
import re

from ansible_collections.tcplab.keepalive.plugins.module_utils import _netns
# the connection readers live in _audit_sockets; these names stay importable from here
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_sockets import (  # noqa: F401 pylint: disable=unused-import
    F_CONNECTION, F_KEEPALIVE_OFF, F_OVERRIDE, MSG_F_OVERRIDE, TCP_LISTEN, connection_findings, decode_address,
    override_message, read_connections, socket_holders)
from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import (  # noqa: F401 pylint: disable=unused-import
    BOUNDS, IDLE_TIMEOUTS, KERNEL_DEFAULTS, KEYS, PROC_SYS, SYSCTL, detection_seconds, format_values)
# the namespace helpers live in _netns; these names stay importable from here
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import (  # noqa: F401 pylint: disable=unused-import
    NETNS_DIR, NetnsError, boot_netns, setns as _setns)

# A load balancer preset requires the dead-peer detection time (time + intvl * probes) to be strictly
# below the idle timeout, i.e. max_detection_seconds = timeout - 1; one preset per known idle timeout.
PRESET_IDLE_TIMEOUTS = {name: timeout['seconds'] for name, timeout in IDLE_TIMEOUTS.items()}
PRESETS = dict(
    (name, {'max_detection_seconds': timeout - 1}) for name, timeout in PRESET_IDLE_TIMEOUTS.items())
PRESETS['kernel-default'] = {key: {'min': KERNEL_DEFAULTS[key], 'max': KERNEL_DEFAULTS[key]} for key in KEYS}

# systemd-sysctl directories, highest precedence first; /etc/sysctl.conf is applied last
SYSCTL_DIRS = ('etc/sysctl.d', 'run/sysctl.d', 'usr/local/lib/sysctl.d', 'usr/lib/sysctl.d', 'lib/sysctl.d')
SYSCTL_CONF = 'etc/sysctl.conf'

TCP_ESTABLISHED = '01'

# finding ids
F_MIN = 'KA001'
F_MAX = 'KA002'
F_DETECTION = 'KA003'
F_DRIFT = 'KA004'
F_UNREADABLE = 'KA006'
F_UNSATISFIABLE = 'KA007'
F_PARSE = 'KA008'
# KA005 F_OVERRIDE, KA009 F_CONNECTION and KA010 F_KEEPALIVE_OFF come from _audit_sockets
FINDING_SEVERITY = {
    F_MIN: 'error', F_MAX: 'error', F_DETECTION: 'error', F_UNSATISFIABLE: 'error', F_CONNECTION: 'error',
    F_DRIFT: 'warning', F_OVERRIDE: 'warning', F_UNREADABLE: 'warning',
    F_PARSE: 'info',
    # the policy's accepted_without_keepalive decides: warning or info (the default)
    F_KEEPALIVE_OFF: 'info',
}
SEVERITIES = ('error', 'warning', 'info')
KEEPALIVE_OFF_SEVERITIES = ('warning', 'info')

MSG_POLICY_TYPE = 'policy must be a mapping with keys %s, got %r'
MSG_POLICY_KEY = 'policy has an unknown key %r: use %s'
MSG_PRESET = 'policy preset %r is unknown: use one of %s'
MSG_RANGE_TYPE = 'policy %s must be a mapping with min and/or max, got %r'
MSG_RANGE_KEY = 'policy %s has an unknown key %r: use min and max'
MSG_RANGE_VALUE = 'policy %s.%s must be an integer %d..%d, got %r'
MSG_RANGE_ORDER = 'policy %s.min (%d) is above %s.max (%d): swap them'
MSG_DETECTION_VALUE = 'policy max_detection_seconds must be a positive integer, got %r'
MSG_KEEPALIVE_OFF = 'policy accepted_without_keepalive must be warning or info, got %r'
MSG_TARGET = 'policy target must be a mapping with time, intvl and probes, got %r'
MSG_TARGET_POLICY = 'policy target %s is not compliant with the policy itself: %s'
MSG_RANGE_PRESET = ('policy %s.%s (%d) conflicts with %s.%s %d of preset %s: drop the preset, or give both %s.min '
                    'and %s.max')
MSG_UNSATISFIABLE_POLICY = ('policy cannot be met: its smallest values (time %d, intvl %d, probes %d) already take '
                            '%d s, above max_detection_seconds %d: lower the minimums or raise max_detection_seconds')
MSG_NAMESPACES = 'namespaces must be host or all, got %r'
MSG_ROOT = 'root must be an absolute path, got %r'
MSG_ROOT_MISSING = 'root %s does not exist: give the directory that holds etc/sysctl.d (/ for the host itself)'
MSG_ROOT_NOT_DIR = 'root %s is not a directory: give the directory that holds etc/sysctl.d (/ for the host itself)'
MSG_ROOT_NO_ETC = ('root %s has no etc directory, so no sysctl file would be read: give the directory that holds '
                   'etc/sysctl.d (/ for the host itself)')
MSG_TIMEOUT = ('timeout must be a number of seconds above 0 and at most %d (the wait for the reading of one other '
               'namespace), got %r')
MSG_LIMIT = '%s must be an integer %d..%d (%s), got %r'
MSG_INCLUDE = "namespace_include must be a list of at least one shell pattern ('*' for every namespace), got %r"

MSG_F_MIN = '%s is %d, below the policy minimum %d'
MSG_F_MAX = '%s is %d, above the policy maximum %d'
MSG_F_DETECTION = ('dead-peer detection takes %d s (time %d + intvl %d x probes %d), above the policy '
                   'maximum %d s%s')
MSG_F_DRIFT = '%s is %d at runtime but %d after a reboot (%s)'
MSG_F_DRIFT_DEFAULT = 'kernel default, no sysctl file sets it'
MSG_F_UNREADABLE = 'network namespace %s could not be read: %s'
MSG_F_UNSATISFIABLE = 'no keepalive values satisfy the policy (%s): widen the ranges or raise max_detection_seconds'
MSG_F_PARSE = '%s line %d: %s'

NOTE_OWNERS_CAPPED = ('socket owners: stopped after %d file descriptors (max_fd_scan); '
                      'top_processes is partial')
NOTE_OWNERS_SKIPPED = 'socket owners: not looked up (no established connections)'
NOTE_NAMESPACES_CAPPED = 'namespaces: %d found, only the first %d read (max_namespaces)'
NOTE_FILTERED = 'namespaces: %d not matching namespace_include skipped'
NOTE_NOT_BOOT = ('persisted values not compared with the runtime ones (no drift check): the module runs in network '
                 'namespace inode %d, not in the boot namespace of the machine (inode %d, that of PID 1), and sysctl.d '
                 'files configure only that one at boot; lab hosts get their values from the lab, containers from '
                 'their container runtime')
NOTE_BOOT_UNKNOWN = ('boot namespace unknown (%s): drift is checked as if this were the boot namespace; run the audit '
                     'as root to know')

TIMEOUT_MAX = 3600
# option: (lowest, highest, what it counts)
LIMITS = {
    'top_processes': (0, 10000, 'processes listed per namespace'),
    'max_examples': (0, 10000, 'override sockets listed per namespace'),
    'max_fd_scan': (1, 1000000000, 'file descriptors read by the owner lookup'),
    'max_namespaces': (1, 100000, 'other namespaces read'),
    'max_connections': (0, 1000000, 'connections whose own keepalive settings are read, in all; 0: none'),
    'max_connections_per_process': (1, 1000000, 'connections read per process'),
}
DEFAULT_PARAMS = {'top_processes': 10, 'max_examples': 20, 'max_fd_scan': 100000, 'max_namespaces': 256,
                  'timeout': 10.0, 'max_connections': 1000, 'max_connections_per_process': 100}


class AuditError(Exception):
    """Invalid request; the message says what to do."""


# -- policy -------------------------------------------------------------------

def _int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def validate_policy(policy):
    """Normalised policy: ranges per key, max_detection_seconds, preset, target.

    A preset gives the base; explicit keys override it.
    """
    if policy is None:
        policy = {}
    known = ('preset', 'max_detection_seconds', 'target') + KEYS + ('accepted_without_keepalive',)
    if not isinstance(policy, dict):
        raise AuditError(MSG_POLICY_TYPE % (', '.join(known), policy))
    for key in policy:
        if key not in known:
            raise AuditError(MSG_POLICY_KEY % (key, ', '.join(known)))
    preset = policy.get('preset')
    base = {}
    if preset is not None:
        if preset not in PRESETS:
            raise AuditError(MSG_PRESET % (preset, ', '.join(sorted(PRESETS))))
        base = PRESETS[preset]
    off = policy.get('accepted_without_keepalive')
    if off is not None and off not in KEEPALIVE_OFF_SEVERITIES:
        raise AuditError(MSG_KEEPALIVE_OFF % (off,))
    out = {'preset': preset, 'max_detection_seconds': None, 'target': None, 'accepted_without_keepalive': off or 'info'}
    for key in KEYS:
        low, high = BOUNDS[key]
        merged = dict(base.get(key) or {})
        given = policy.get(key)
        if given is not None:
            if not isinstance(given, dict):
                raise AuditError(MSG_RANGE_TYPE % (key, given))
            for bound in given:
                if bound not in ('min', 'max'):
                    raise AuditError(MSG_RANGE_KEY % (key, bound))
            merged.update(dict((k, v) for k, v in given.items() if v is not None))
        rng = {'min': None, 'max': None}
        for bound in ('min', 'max'):
            value = merged.get(bound)
            if value is None:
                continue
            if not _int(value) or not low <= value <= high:
                raise AuditError(MSG_RANGE_VALUE % (key, bound, low, high, value))
            rng[bound] = value
        if rng['min'] is not None and rng['max'] is not None and rng['min'] > rng['max']:
            _range_order_error(key, rng, given or {}, preset)
        out[key] = rng
    detection = policy.get('max_detection_seconds', base.get('max_detection_seconds'))
    if detection is not None:
        if not _int(detection) or detection < 1:
            raise AuditError(MSG_DETECTION_VALUE % (detection,))
        out['max_detection_seconds'] = detection
        smallest = dict((key, out[key]['min'] or BOUNDS[key][0]) for key in KEYS)
        if detection_seconds(smallest) > detection:
            raise AuditError(MSG_UNSATISFIABLE_POLICY % (smallest['time'], smallest['intvl'], smallest['probes'],
                                                         detection_seconds(smallest), detection))
    target = policy.get('target')
    if target is not None:
        if not isinstance(target, dict) or sorted(target) != sorted(KEYS):
            raise AuditError(MSG_TARGET % (target,))
        for key in KEYS:
            low, high = BOUNDS[key]
            if not _int(target[key]) or not low <= target[key] <= high:
                raise AuditError(MSG_RANGE_VALUE % ('target', key, low, high, target[key]))
        problems = value_findings(target, out, 'target')
        if problems:
            raise AuditError(MSG_TARGET_POLICY % (format_values(target), '; '.join(f['message'] for f in problems)))
        out['target'] = dict(target)
    return out


def _range_order_error(key, rng, given, preset):
    """min above max: say which bound the preset gave, so the advice fits."""
    for mine, theirs in (('max', 'min'), ('min', 'max')):
        if given.get(mine) is not None and given.get(theirs) is None and preset:
            raise AuditError(MSG_RANGE_PRESET % (key, mine, rng[mine], key, theirs, rng[theirs], preset, key, key))
    raise AuditError(MSG_RANGE_ORDER % (key, rng['min'], key, rng['max']))


def finding(fid, namespace, key, observed, expected, message):
    return {'id': fid, 'severity': FINDING_SEVERITY[fid], 'namespace': namespace, 'key': key,
            'observed': observed, 'expected': expected, 'message': message}


def value_findings(values, policy, namespace):
    """Range and detection findings of one namespace's values."""
    out = []
    for key in KEYS:
        rng = policy[key]
        name = SYSCTL % key
        if rng['min'] is not None and values[key] < rng['min']:
            out.append(finding(F_MIN, namespace, name, values[key], '>= %d' % rng['min'],
                               MSG_F_MIN % (name, values[key], rng['min'])))
        if rng['max'] is not None and values[key] > rng['max']:
            out.append(finding(F_MAX, namespace, name, values[key], '<= %d' % rng['max'],
                               MSG_F_MAX % (name, values[key], rng['max'])))
    limit = policy['max_detection_seconds']
    if limit is not None and detection_seconds(values) > limit:
        preset = policy.get('preset')
        why = ''
        if preset in PRESET_IDLE_TIMEOUTS:
            why = ' (preset %s: below the %d s idle timeout)' % (preset, PRESET_IDLE_TIMEOUTS[preset])
        out.append(finding(F_DETECTION, namespace, 'detection_seconds', detection_seconds(values), '<= %d' % limit,
                           MSG_F_DETECTION % (detection_seconds(values), values['time'], values['intvl'],
                                              values['probes'], limit, why)))
    return out


def _clamp(value, rng, key):
    low, high = BOUNDS[key]
    if rng['min'] is not None:
        low = max(low, rng['min'])
    if rng['max'] is not None:
        high = min(high, rng['max'])
    return max(low, min(high, value))


def remediation_target(values, policy):
    """Compliant values close to the observed ones, or None when the policy cannot be met.

    The policy's explicit target wins. Otherwise every key is clamped into its
    range; if detection is still too long, probing (intvl x probes) is cut to
    at most half of max_detection_seconds and time gets the rest; if that is
    not enough (a high time minimum), probing gets what time's minimum leaves.
    """
    if policy.get('target'):
        return dict(policy['target'])
    out = dict((key, _clamp(values[key], policy[key], key)) for key in KEYS)
    clamped = dict(out)
    limit = policy['max_detection_seconds']
    if limit is not None and detection_seconds(out) > limit:
        half = max(1, limit // 2)
        if out['intvl'] * out['probes'] > half:
            out['intvl'] = _clamp(max(1, half // out['probes']), policy['intvl'], 'intvl')
        if out['intvl'] * out['probes'] > half:
            out['probes'] = _clamp(max(1, half // out['intvl']), policy['probes'], 'probes')
        out['time'] = _clamp(max(1, min(out['time'], limit - out['intvl'] * out['probes'])), policy['time'], 'time')
        if detection_seconds(out) > limit:
            out = _fit(clamped, policy, limit)
    if value_findings(out, policy, 'target'):
        return None
    return out


def _fit(out, policy, limit):
    """Values within the ranges and within limit, when the first cut was not enough.

    time goes down to its minimum, then the probing budget (limit - time) bounds
    probes and intvl. A validated policy guarantees that its smallest values
    fit, so this always succeeds.
    """
    low = dict((key, policy[key]['min'] or BOUNDS[key][0]) for key in KEYS)
    budget = limit - low['time']
    probes = _clamp(min(out['probes'], max(1, budget // low['intvl'])), policy['probes'], 'probes')
    intvl = _clamp(min(out['intvl'], max(1, budget // probes)), policy['intvl'], 'intvl')
    return {'time': _clamp(min(out['time'], limit - intvl * probes), policy['time'], 'time'),
            'intvl': intvl, 'probes': probes}


# -- persisted values ---------------------------------------------------------

KEY_NAMES = dict((SYSCTL % key, key) for key in KEYS)


def parse_sysctl_text(text):
    """(key, value, lineno, problem) for our keys in sysctl.conf text.

    problem is None, or a description when the value is not an integer. A
    leading '-' (ignore errors) is accepted; '/' separators are normalised.
    """
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in '#;':
            continue
        if line.startswith('-'):
            line = line[1:].lstrip()
        if '=' not in line:
            continue
        name, value = line.split('=', 1)
        name = name.strip()
        if '/' in name:
            name = name.replace('/', '.')
        key = KEY_NAMES.get(name)
        if key is None:
            continue
        value = value.strip()
        try:
            number = int(value)
        except ValueError:
            out.append((key, None, lineno, '%s = %r is not an integer; sysctl would reject it' % (name, value)))
            continue
        out.append((key, number, lineno, None))
    return out


def sysctl_files(root='/', listdir=os.listdir, islink=os.path.islink, readlink=os.readlink):
    """The files systemd-sysctl reads under root, in the order it applies them.

    Returns a list of (shown_path, real_path): shown_path is the path on the
    audited system, real_path where to read it (under root). Files are
    ordered by name across the directories; a name in a higher-precedence
    directory masks the same name later (a link to /dev/null masks without
    contributing anything). /etc/sysctl.conf comes last.
    """
    chosen = {}
    for directory in SYSCTL_DIRS:
        real_dir = os.path.join(root, directory)
        try:
            names = listdir(real_dir)
        except OSError:
            continue
        for name in names:
            if not name.endswith('.conf') or name in chosen:
                continue
            chosen[name] = ('/' + directory + '/' + name, os.path.join(real_dir, name))
    out = []
    for name in sorted(chosen):
        shown, real = chosen[name]
        if islink(real):
            try:
                if readlink(real) == '/dev/null':
                    continue
            except OSError:
                continue
        out.append((shown, real))
    conf = os.path.join(root, SYSCTL_CONF)
    out.append(('/' + SYSCTL_CONF, conf))
    return out


def _read_text(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read().decode('utf-8', 'replace')
    except (IOError, OSError):
        return None


def read_persisted(root='/', files=None, read=_read_text):
    """{'values': {key: {'value', 'file'}}, 'files': [paths read], 'problems': [(file, lineno, text)]}."""
    if files is None:
        files = sysctl_files(root)
    values, read_files, problems = {}, [], []
    for shown, real in files:
        text = read(real)
        if text is None:
            continue
        read_files.append(shown)
        for key, value, lineno, problem in parse_sysctl_text(text):
            if problem:
                problems.append((shown, lineno, problem))
                continue
            values[key] = {'value': value, 'file': shown}
    return {'values': values, 'files': read_files, 'problems': problems}


def drift_findings(runtime, persisted, namespace):
    """Runtime values that a reboot would change (host namespace only)."""
    out = []
    for key in KEYS:
        entry = persisted['values'].get(key)
        boot = entry['value'] if entry else KERNEL_DEFAULTS[key]
        source = entry['file'] if entry else MSG_F_DRIFT_DEFAULT
        if runtime[key] != boot:
            out.append(finding(F_DRIFT, namespace, SYSCTL % key, runtime[key], boot,
                               MSG_F_DRIFT % (SYSCTL % key, runtime[key], boot, source)))
    return out


# -- runtime values and sockets (run in the namespace being read) -------------

def read_runtime(proc='/proc'):
    values = {}
    for key in KEYS:
        with open(os.path.join(proc, PROC_SYS % key)) as handle:
            values[key] = int(handle.read().strip())
    return values


def scan_tcp(lines, keepalive_time, clk_tck=100, max_examples=20, tolerance=1.0, rows=None, listening=None):
    """Keepalive sockets of one /proc/net/tcp{,6} listing (an iterable of lines, streamed).

    Returns a dict: established, keepalive (counts), inodes ({inode: 1} of
    keepalive sockets, for the owner lookup), overrides (count), max_timer,
    and override_examples (at most max_examples, the longest timers).
    Given lists, rows gets [inode, local, remote, timer type, timer seconds]
    of every established connection (addresses as in the listing) and
    listening the local address of every listening socket
    (_audit_sockets reads the connections exactly).
    """
    established = keepalive = overrides = 0
    max_timer = 0.0
    inodes = []
    heap = []
    limit = keepalive_time + tolerance
    for line in lines:
        fields = line.split(None, 10)
        if len(fields) < 10 or fields[3] != TCP_ESTABLISHED:
            if listening is not None and len(fields) >= 10 and fields[3] == TCP_LISTEN:
                listening.append(fields[1])
            continue
        established += 1
        timer = fields[5]
        if rows is not None:
            rows.append([fields[9], fields[1], fields[2], timer[:2], round(int(timer[3:], 16) / float(clk_tck), 2)])
        if timer[:2] != '02' or timer[2:3] != ':':
            continue
        keepalive += 1
        inodes.append(fields[9])
        seconds = int(timer[3:], 16) / float(clk_tck)
        if seconds > max_timer:
            max_timer = seconds
        if seconds > limit:
            overrides += 1
            item = (seconds, fields[9], fields[1], fields[2])
            if len(heap) < max_examples:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    examples = [{'local': decode_address(local), 'remote': decode_address(remote),
                 'timer_seconds': round(seconds, 2), 'inode': int(inode)}
                for seconds, inode, local, remote in sorted(heap, reverse=True)]
    return {'established': established, 'keepalive': keepalive, 'overrides': overrides,
            'max_timer_seconds': round(max_timer, 2), 'inodes': inodes, 'override_examples': examples}


def merge_scans(scans, max_examples=20):
    out = {'established': 0, 'keepalive': 0, 'overrides': 0, 'max_timer_seconds': 0.0, 'inodes': [],
           'override_examples': []}
    for scan in scans:
        for key in ('established', 'keepalive', 'overrides'):
            out[key] += scan[key]
        out['max_timer_seconds'] = max(out['max_timer_seconds'], scan['max_timer_seconds'])
        out['inodes'].extend(scan['inodes'])
        out['override_examples'].extend(scan['override_examples'])
    out['override_examples'].sort(key=lambda e: -e['timer_seconds'])
    del out['override_examples'][max_examples:]
    return out


def read_namespace(proc='/proc', sockets=True, max_examples=20):
    """Everything about the current network namespace: values and keepalive sockets."""
    values = read_runtime(proc)
    out = {'values': values}
    if sockets:
        clk = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
        scans, rows, listening = [], [], []
        for name in ('tcp', 'tcp6'):
            try:
                with open(os.path.join(proc, 'net', name)) as handle:
                    next(handle, None)  # header
                    scans.append(scan_tcp(handle, values['time'], clk, max_examples, rows=rows, listening=listening))
            except (IOError, OSError):
                continue
        out['sockets'] = merge_scans(scans, max_examples)
        out['sockets'].update(rows=rows, listening=listening)
    return out


# -- other namespaces: discovery and reading through setns --------------------

CONTAINER_PATTERNS = (
    re.compile(r'docker-([0-9a-f]{64})\.scope'),
    re.compile(r'/docker/([0-9a-f]{64})'),
    re.compile(r'cri-containerd-([0-9a-f]{64})\.scope'),
    re.compile(r'crio-([0-9a-f]{64})\.scope'),
    re.compile(r'libpod-([0-9a-f]{64})\.scope'),
    re.compile(r'/kubepods[^\n]*/([0-9a-f]{64})(?:\n|$)'),
)


def container_id_from_cgroup(text):
    """The container id a /proc/PID/cgroup text shows (docker, containerd, cri-o, podman), or None."""
    for pattern in CONTAINER_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def _read_first(path):
    text = _read_text(path)
    return text.strip() if text is not None else None


def discover_namespaces(netns_dir=NETNS_DIR, proc='/proc', own_inode=None):
    """Every distinct network namespace (_netns.discover), each with the comm and container id of its process.

    Returns a list of dicts with inode, path, kind (host, named or process),
    name, pid, comm and container_id.
    """
    found = _netns.discover(netns_dir, proc, own_inode)
    for ns in found:
        pid = ns['pid']
        ns['comm'] = _read_first(os.path.join(proc, str(pid), 'comm')) if pid is not None else None
        cgroup = (_read_text(os.path.join(proc, str(pid), 'cgroup')) or '') if pid is not None else ''
        ns['container_id'] = container_id_from_cgroup(cgroup) if pid is not None else None
    return found


def label_of(ns):
    if ns['kind'] == 'host':
        return 'host'
    if ns['name']:
        return ns['name']
    if ns['container_id']:
        return 'container %s (%s)' % (ns['container_id'][:12], ns['comm'] or 'pid %d' % ns['pid'])
    return '%s (pid %d)' % (ns['comm'] or '?', ns['pid'])


def matches(ns, patterns):
    candidates = [label_of(ns)] + [c for c in (ns['name'], ns['comm'], ns['container_id']) if c]
    return any(fnmatch.fnmatchcase(c, p) for p in patterns for c in candidates)


def read_in_netns(path, sockets=True, max_examples=20, timeout=10.0, setns=_setns):
    """Read a namespace in a forked child that setns()es into it (_netns.run_in); its readings or {'error'}."""
    try:
        return _netns.run_in(path, read_namespace, ('/proc', sockets, max_examples), timeout, setns)
    except NetnsError as exc:
        return {'error': str(exc)}


# -- socket owners ------------------------------------------------------------

def socket_owners(inodes, proc='/proc', max_fd_scan=100000):
    """Which process holds each of the given socket inodes: ({inode: pid}, complete, scanned).

    One pass over /proc/*/fd (_audit_sockets.socket_holders, which also
    gives the descriptor); stops after max_fd_scan descriptors (complete is
    then False). A socket shared by several processes counts for the first.
    """
    holder, complete, scanned = socket_holders(inodes, proc, max_fd_scan)
    return dict((inode, pid) for inode, (pid, fd) in holder.items()), complete, scanned


def top_processes(inodes, owner, proc='/proc', top=10):
    """[{pid, comm, sockets}] of the processes holding most of inodes."""
    counts = {}
    for inode in inodes:
        pid = owner.get(inode)
        if pid is not None:
            counts[pid] = counts.get(pid, 0) + 1
    best = heapq.nlargest(top, counts.items(), key=lambda item: (item[1], -item[0]))
    return [{'pid': pid, 'comm': _read_first(os.path.join(proc, str(pid), 'comm')), 'sockets': n} for pid, n in best]


# -- the audit ------------------------------------------------------------------

def evaluate_namespace(entry, policy, persisted=None):
    """Findings of one namespace entry (values, sockets, error); sets compliant and remediation."""
    label = entry['label']
    findings = []
    if entry.get('error'):
        findings.append(finding(F_UNREADABLE, label, None, None, None, MSG_F_UNREADABLE % (label, entry['error'])))
        entry.update(findings=findings, compliant=False, remediation=None, detection_seconds=None)
        return entry
    values = entry['values']
    entry['detection_seconds'] = detection_seconds(values)
    findings.extend(value_findings(values, policy, label))
    if persisted is not None:
        findings.extend(drift_findings(values, persisted, label))
        for shown, lineno, problem in persisted['problems']:
            findings.append(finding(F_PARSE, label, None, None, None, MSG_F_PARSE % (shown, lineno, problem)))
    sockets = entry.get('sockets')
    if sockets and sockets['overrides']:
        findings.append(finding(F_OVERRIDE, label, 'sockets', sockets['overrides'], 0, override_message(sockets, values)))
    findings.extend(connection_findings(entry, policy, finding))
    fixable = [f for f in findings if f['id'] in (F_MIN, F_MAX, F_DETECTION, F_DRIFT)]
    remediation = None
    if fixable:
        remediation = remediation_target(values, policy)
        if remediation is None:
            findings.append(finding(F_UNSATISFIABLE, label, None, format_values(values), None,
                                    MSG_F_UNSATISFIABLE % describe_policy(policy)))
    entry['findings'] = findings
    entry['remediation'] = remediation
    entry['compliant'] = not any(f['severity'] in ('error', 'warning') for f in findings)
    return entry


def describe_policy(policy):
    parts = []
    if policy.get('preset'):
        parts.append('preset %s' % policy['preset'])
    for key in KEYS:
        rng = policy[key]
        if rng['min'] is not None or rng['max'] is not None:
            parts.append('%s %s..%s' % (key, '' if rng['min'] is None else rng['min'],
                                        '' if rng['max'] is None else rng['max']))
    if policy['max_detection_seconds'] is not None:
        parts.append('detection <= %d s' % policy['max_detection_seconds'])
    return ', '.join(parts) or 'no limits'


def validate_root(root):
    """root, or AuditError when no sysctl file could ever be read under it."""
    if not os.path.isabs(root):
        raise AuditError(MSG_ROOT % (root,))
    if not os.path.exists(root):
        raise AuditError(MSG_ROOT_MISSING % (root,))
    if not os.path.isdir(root):
        raise AuditError(MSG_ROOT_NOT_DIR % (root,))
    if os.path.normpath(root) != '/' and not os.path.isdir(os.path.join(root, 'etc')):
        raise AuditError(MSG_ROOT_NO_ETC % (root,))
    return root


def validate_params(params):
    """The options other than policy, checked and with their defaults: a dict."""
    out = dict(DEFAULT_PARAMS)
    out.update((k, v) for k, v in params.items() if v is not None)
    if out.get('namespaces', 'host') not in ('host', 'all'):
        raise AuditError(MSG_NAMESPACES % (out['namespaces'],))
    out['root'] = validate_root(out.get('root') or '/')
    for name, (low, high, what) in LIMITS.items():
        if not _int(out[name]) or not low <= out[name] <= high:
            raise AuditError(MSG_LIMIT % (name, low, high, what, out[name]))
    timeout = out['timeout']
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= TIMEOUT_MAX:
        raise AuditError(MSG_TIMEOUT % (TIMEOUT_MAX, timeout))
    include = out.get('namespace_include', ['*'])
    if not isinstance(include, list) or not include or not all(isinstance(p, str) and p for p in include):
        raise AuditError(MSG_INCLUDE % (include,))
    return out


def _other_namespaces(params, proc, own_inode, reader, notes):
    """Entries of the other namespaces (namespaces: all), chosen by namespace_include and max_namespaces."""
    found = [ns for ns in discover_namespaces(params.get('netns_dir') or NETNS_DIR, proc, own_inode)
             if ns['kind'] != 'host']
    patterns = params.get('namespace_include', ['*'])
    chosen = [ns for ns in found if matches(ns, patterns)]
    if len(chosen) < len(found):
        notes.append(NOTE_FILTERED % (len(found) - len(chosen)))
    limit = params['max_namespaces']
    if len(chosen) > limit:
        notes.append(NOTE_NAMESPACES_CAPPED % (len(chosen), limit))
        chosen = chosen[:limit]
    entries = []
    for ns in chosen:
        entry = dict((k, ns[k]) for k in ('inode', 'kind', 'name', 'pid', 'comm', 'container_id'))
        entry['label'] = label_of(ns)
        entry.update(reader(ns['path'], params.get('sockets', True), params['max_examples'], params['timeout']))
        entries.append(entry)
    return entries


def _add_owners(entries, params, proc, holders, notes, pidfd=None):
    """The processes holding each namespace's sockets (one pass over /proc/*/fd for all), and the exact
    keepalive settings of their connections (_audit_sockets.read_connections)."""
    inodes = [row[0] for entry in entries for row in (entry.get('sockets') or {}).get('rows', [])]
    holder, complete = {}, True
    if inodes:
        holder, complete, scanned = holders(inodes, proc, params['max_fd_scan'])
        if not complete:
            notes.append(NOTE_OWNERS_CAPPED % scanned)
    else:
        notes.append(NOTE_OWNERS_SKIPPED)
    owner = dict((inode, pid_fd[0]) for inode, pid_fd in holder.items())
    for entry in entries:
        sock = entry.get('sockets')
        if sock is None:
            continue
        sock['top_processes'] = top_processes(sock.pop('inodes'), owner, proc, params['top_processes'])
        sock['owners_complete'] = complete
    read_connections(entries, holder, params, notes, pidfd, proc)


def run_audit(params, proc='/proc', reader=read_in_netns, holders=socket_holders, pidfd=None):
    """The module's work: returns the result dict (without changed).

    reader reads another namespace, holders finds the processes holding
    sockets, pidfd duplicates their descriptors (_audit_sockets.Pidfd).
    """
    policy = validate_policy(params.get('policy'))
    params = validate_params(params)
    mode = params.get('namespaces', 'host')
    root = params['root']
    sockets = params.get('sockets', True)
    max_examples = params['max_examples']
    notes = []

    own_inode = os.stat(os.path.join(proc, 'self/ns/net')).st_ino
    # the same answer as the sysctl module's, which refuses persist anywhere else
    boot_inode, boot_unknown = boot_netns(proc)
    host = {'label': 'host', 'kind': 'host', 'inode': own_inode, 'name': None, 'pid': None, 'comm': None,
            'container_id': None}
    host.update(read_namespace(proc, sockets, max_examples))
    entries = [host]
    if mode == 'all':
        entries.extend(_other_namespaces(params, proc, own_inode, reader, notes))
    for entry in entries:
        entry['boot_netns'] = None if boot_inode is None else entry['inode'] == boot_inode
    if sockets:
        _add_owners(entries, params, proc, holders, notes, pidfd)

    persisted = read_persisted(root)
    # sysctl.d is applied at boot to PID 1's namespace only: drift elsewhere would compare unrelated things
    compare = host['boot_netns'] is not False
    if not compare:
        notes.append(NOTE_NOT_BOOT % (own_inode, boot_inode))
    elif boot_inode is None:
        notes.append(NOTE_BOOT_UNKNOWN % (boot_unknown,))
    for entry in entries:
        evaluate_namespace(entry, policy, persisted if entry['kind'] == 'host' and compare else None)
    findings = [f for entry in entries for f in entry['findings']]
    counts = dict((sev, sum(1 for f in findings if f['severity'] == sev)) for sev in SEVERITIES)
    drift = [{'key': f['key'], 'runtime': f['observed'], 'persisted': f['expected'],
              'file': (persisted['values'].get(KEY_NAMES[f['key']]) or {}).get('file')}
             for f in host['findings'] if f['id'] == F_DRIFT]
    return {
        'compliant': all(entry['compliant'] for entry in entries),
        'policy': policy,
        'namespaces': entries,
        'boot_netns_inode': boot_inode,
        'persisted': {'root': root, 'values': persisted['values'], 'files': persisted['files'],
                      'compared': compare},
        'drift': drift,
        'findings': findings,
        'summary': {'namespaces': len(entries), 'findings': counts,
                    'detection_seconds_max': max([e['detection_seconds'] for e in entries
                                                  if e.get('detection_seconds') is not None] or [None])},
        'notes': notes,
    }
