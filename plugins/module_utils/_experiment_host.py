# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One host's start or end of the experiment in one module run (the experiment_host module).

On a lab VM under software emulation every module run costs about three
seconds (SSH, sudo, a Python start that compiles ansible's module_utils from
the AnsiballZ zip again), so the steps a host does one after the other at the
start (take the lease and shorten the sysctls, start the watch of the other
connections, the capture, the server or the client) and at the end (stop the
watch, stop and analyse the capture, remove the DROP rule, stop the
processes, restore the sysctls) run in one module run each. Every step is the
work of its own module, done by that module's module_utils with that module's
options and defaults (sysctl, kernel_counters, capture, drop_rule, endpoint),
so each keeps its safety properties: the sysctl lease and journal, the state
records with pid and start time, the capture's filter attached before its
start returns, the kernel sample taken right before the client connects.

started: with look, the host is looked at first, as the preflight does (its
facts, the tools its part needs, the capture backend): a host that cannot run
its part (look's shortfalls: not root, an old kernel or Python, a tool
missing) is refused - nothing is changed, the result says refused and carries
the look, so that the first host a run starts needs no look of its own. Then
the steps run in order - sysctl, watch, captures, endpoints (in the
order given: the server before the client on loopback) - and the first that
fails ends the run: the module fails naming the step, and what the earlier
steps started is for the caller's cleanup, as with separate tasks. The watch
is the exception: without it the run goes on, its result says why. A busy lease
(another run holds the namespace) changes nothing and fails with lease_busy,
so the caller can retry.
stopped: every step runs even when an earlier one failed - the settle (an
endpoint given settle seconds gets that long to end by itself, then its
kernel_sample is taken: the client's end, read in the run that stops it),
watch, captures, drop_rule, endpoints, sysctl - and the failures are reported
together.

The modules' code is imported only for the steps asked for, so a run that
removes no DROP rule does not compile the iptables code.

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import base64
import importlib
import os
import stat
import sys
import time

MSG_STEP = '%s: %s'
MSG_STEPS_FAILED = 'the end on this host could not do everything: %s'
MSG_DROP_STARTED = ('drop_rule is a step of state=stopped only (it removes the DROP rule); the DROP goes in with '
                    'tcplab.keepalive.drop_rule when the experiment silences the server')
MSG_NOTHING = 'give at least one of sysctl, watch, captures, drop_rule, endpoints: there is nothing to do'
MSG_LOOK_STOPPED = 'look is a step of state=started only (it looks at the host before anything starts)'

# the sysctl module's defaults for the options the experiment does not set (plugins/modules/sysctl.py)
SYSCTL_DEFAULTS = {
    'time': None, 'intvl': None, 'probes': None, 'retries2': None, 'saved': None, 'netns': None,
    'persist': False, 'persist_path': '/etc/sysctl.d/90-tcplab-keepalive.conf',
    'journal_dir': '/run/tcplab-keepalive/sysctl', 'persist_journal_dir': '/var/lib/tcplab-keepalive/sysctl',
    'lease': None, 'lease_owner': None, 'lease_ttl': 3600,
}
# the drop_rule module's defaults (plugins/modules/drop_rule.py)
DROP_DEFAULTS = {
    'port': None, 'match': 'dport', 'protocol': 'tcp', 'chain': 'INPUT', 'source': None, 'destination': None,
    'in_interface': None, 'out_interface': None, 'ip_version': '4', 'tag': None, 'state': 'absent',
    'position': 'insert', 'wait': 30, 'expire_after': None, 'allow_lockout': False, 'executable': None,
}
MSG_CONTENT_UNREAD = '%s was not returned: %s (it stays on the host)'
MSG_CONTENT_LARGE = '%s was not returned: %d bytes, more than %d (it stays on the host: fetch it)'
CONTENT_MAX = 8 * 1024 * 1024
MSG_SAMPLE_PROBES = ('sample_probes needs settle (seconds to await the client\'s end) and kernel_sample (the client\'s '
                     'port and its peer\'s): give both, or leave sample_probes false')
ENDPOINT_STATE_DIR = '/run/tcplab-keepalive/endpoint'
# an endpoint in these states has not ended by itself (the endpoint module's outcome.state)
RUNNING = ('starting', 'connected', 'running')
SETTLE_POLL = 0.1
# The code each step of an end imports lazily (in its function, or _capture_stop's _pcap for the analysis), imported
# before a settle (_preload); what these import at their top comes with them.
END_STEP_CODE = {
    'watch': ('_kernel_evidence', '_kernel_watch'),
    'captures': ('_capture', '_pcap'),
    'drop_rule': ('_iptables',),
    'endpoints': ('_endpoint',),
    'sysctl': ('_sysctl_task',),
}
PACKAGE = 'ansible_collections.tcplab.keepalive.plugins.module_utils.'


class StepError(Exception):
    """A step failed: its message starts with the step's name; extra goes to the result (lease_busy)."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.extra = extra


def _sysctl(module, params, state):
    """The sysctl module's present (lease + shorten) or restored (lease's originals back) in this namespace."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import NETNS_DIR  # pylint: disable=import-outside-toplevel
    from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl import SysctlError  # pylint: disable=import-outside-toplevel
    from ansible_collections.tcplab.keepalive.plugins.module_utils._sysctl_task import run  # pylint: disable=import-outside-toplevel
    p = dict(SYSCTL_DEFAULTS, netns_dir=NETNS_DIR)
    p.update((k, v) for k, v in params.items() if v is not None)
    p['state'] = state
    try:
        result = run(p, module.check_mode)
    except SysctlError as exc:
        raise StepError(MSG_STEP % ('sysctl', exc), **exc.extra) from exc
    except OSError as exc:
        raise StepError(MSG_STEP % ('sysctl', '%s: %s' % (exc.strerror or exc, exc.filename) if exc.filename else exc)) from exc
    if not module._diff:  # pylint: disable=protected-access
        result.pop('diff', None)
    return result


def _look(module, params):
    """host_facts' look, judged: {facts, capture, missing, shortfalls} (shortfalls empty: the host can run its part)."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils._host_facts import HostFactsError, look  # pylint: disable=import-outside-toplevel
    try:
        return look(params['tools'], params['min_kernel'], params['min_python'], module.get_bin_path('tcpdump'))
    except HostFactsError as exc:
        raise StepError(MSG_STEP % ('look', exc)) from exc


def _watch(module, params, state):
    """kernel_counters' watch of the namespace's other connections (started, or stopped with its analysis)."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_evidence, _kernel_watch  # pylint: disable=import-outside-toplevel
    try:
        _kernel_evidence.check_ports(params.get('port'), params.get('peer_port'))
        taken, watched, changed = _kernel_watch.act(params.get('port'), params.get('peer_port'), state, params['path'],
                                                    params.get('seconds') or 3600, module.check_mode)
    except (_kernel_evidence.KernelEvidenceError, _kernel_watch.WatchError, OSError) as exc:
        raise StepError(MSG_STEP % ('watch', exc)) from exc
    return dict(taken, watch=watched, changed=changed)


def _each(items, state, one, label):
    """one(item) per item: with started the first failure raises (StepError); with stopped every item runs and a
    failed one is a result with failed and msg. Returns (results, errors)."""
    results, errors = [], []
    for item in items:
        try:
            results.append(one(item))
        except StepError as exc:
            if state == 'started':
                raise
            results.append(dict(label(item), failed=True, msg=str(exc)))
            errors.append(str(exc))
    return results, errors


def _captures(module, items, state):
    """The capture module's started (filter attached before it returns) or stopped (with the analysis) per pcap."""
    if not items:
        return [], []
    from ansible_collections.tcplab.keepalive.plugins.module_utils._capture import Capture  # pylint: disable=import-outside-toplevel
    from ansible_collections.tcplab.keepalive.plugins.module_utils._capture_record import (  # pylint: disable=import-outside-toplevel
        DEFAULT_STATE_DIR, CaptureError, resolve_target)
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError  # pylint: disable=import-outside-toplevel

    def one(item):
        step = 'capture %s' % item['path']
        try:
            tcpdump = module.get_bin_path('tcpdump') if state == 'started' and item.get('backend') != 'scapy' else None
            capture = Capture(sys.executable, check_mode=module.check_mode, tcpdump=tcpdump,
                              state_dir=item.get('state_dir') or DEFAULT_STATE_DIR)
            path = resolve_target(None, item['path'])
            if state == 'started':
                result = capture.started(dict(item, path=path, handle=None, netns=None))
            else:
                result = capture.stopped(path, None, expect=item.get('expect'), tolerance=item.get('tolerance'))
                if item.get('return_content'):
                    result.update(pcap_content(path))
                # the caller has fetched it, or has its content: it goes with its record and log (ours only)
                if item.get('remove') and 'content_skipped' not in result:
                    result['removed'] = capture.absent(path, None)['removed']
        except CommandError as exc:
            raise StepError(MSG_STEP % (step, exc.as_result().get('msg', exc))) from exc
        except (CaptureError, OSError) as exc:
            raise StepError(MSG_STEP % (step, exc)) from exc
        for warning in result.pop('warnings', []):
            module.warn(warning)
        return result

    return _each(items, state, one, lambda item: {'path': item['path']})


def pcap_content(path, limit=CONTENT_MAX):
    """{'content': the pcap base64-encoded} or {'content_skipped': why} (none, not a regular file, over limit)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return {'content_skipped': MSG_CONTENT_UNREAD % (path, exc.strerror or exc)}
    with os.fdopen(fd, 'rb') as handle:
        size = os.fstat(fd)
        if not stat.S_ISREG(size.st_mode):
            return {'content_skipped': MSG_CONTENT_UNREAD % (path, 'not a regular file')}
        if size.st_size > limit:
            return {'content_skipped': MSG_CONTENT_LARGE % (path, size.st_size, limit)}
        return {'content': base64.b64encode(handle.read(limit + 1)).decode('ascii')}


def _drop_rule(module, params):
    """drop_rule's state=absent: the tagged rule goes, its dead-man timer is cancelled."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, Runner  # pylint: disable=import-outside-toplevel
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _iptables  # pylint: disable=import-outside-toplevel
    p = dict(DROP_DEFAULTS)
    p.update((k, v) for k, v in params.items() if v is not None)
    p['state'] = 'absent'
    try:
        rule = _iptables.validate(p)
        tables = _iptables.open_tables(rule, p['executable'], Runner(module),
                                       lambda name: module.get_bin_path(name, opt_dirs=list(_iptables.SBIN_DIRS)))
        result = _iptables.manage(rule, tables, _iptables.Timers(), module.check_mode, _iptables.find_ssh_connection())
    except CommandError as exc:
        raise StepError(MSG_STEP % ('drop_rule', exc.as_result().get('msg', exc))) from exc
    except (_iptables.RuleError, OSError) as exc:
        raise StepError(MSG_STEP % ('drop_rule', exc)) from exc
    if not module._diff:  # pylint: disable=protected-access
        result.pop('diff', None)
    return result


def _endpoints(module, items, state):
    """The endpoint module's started (a kernel_sample right before the client connects) or stopped, per process."""
    if not items:
        return [], []
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import CommandError, find_binary  # pylint: disable=import-outside-toplevel
    from ansible_collections.tcplab.keepalive.plugins.module_utils._endpoint import (  # pylint: disable=import-outside-toplevel
        EndpointError, Endpoints, validate)
    from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_sample import (  # pylint: disable=import-outside-toplevel
        KernelSampleError, check as check_sample, take as take_sample)

    def one(item):
        step = 'endpoint %s' % item.get('name')
        try:
            cfg = validate(item)
            binaries = {}
            if state == 'started' and cfg['kind'] in ('nc', 'curl'):
                binaries[cfg['kind']] = find_binary(module, cfg['kind'])
            endpoints = Endpoints(item.get('state_dir') or ENDPOINT_STATE_DIR, sys.executable, binaries, module.check_mode)
            if state != 'started':
                return endpoints.stopped(cfg, forget=True)   # the end's result carries what its files said
            check_sample(item.get('kernel_sample'))
            kernel = take_sample(item.get('kernel_sample'))   # right before the client connects
            result = endpoints.started(cfg)
        except CommandError as exc:
            raise StepError(MSG_STEP % (step, exc.as_result().get('msg', exc))) from exc
        except (EndpointError, KernelSampleError, OSError) as exc:
            raise StepError(MSG_STEP % (step, exc)) from exc
        if kernel is not None:
            result['kernel'] = kernel
        return result

    return _each(items, state, one, lambda item: {'name': item.get('name'), 'role': item.get('role')})


def _preload(p):
    """Before a settle, import the code of the end's steps: the settle waits for the kernel anyway, while on a target
    that compiles every module run's sources again (AnsiballZ ships sources; a lab VM under software emulation takes
    about half a second for an end's) the compile would otherwise come after the client's failure."""
    if not any(item.get('settle') for item in p.get('endpoints') or []):
        return
    for step in sorted(END_STEP_CODE):
        if p.get(step):
            for name in END_STEP_CODE[step]:
                importlib.import_module(PACKAGE + name)


def _settle(module, items):
    """Before the end: wait up to each endpoint's settle seconds for it to end by itself (the client, after the
    kernel gave up), then take its kernel_sample - the run's last status, in the run that stops it. Returns
    {name: {'settled': bool, 'kernel': sample or None}}; a sample that cannot be taken is an error."""
    items = [item for item in items if item.get('settle') or item.get('kernel_sample')]
    if not items:
        return {}, []
    from ansible_collections.tcplab.keepalive.plugins.module_utils._endpoint import (  # pylint: disable=import-outside-toplevel
        EndpointError, Endpoints, validate)
    from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_sample import (  # pylint: disable=import-outside-toplevel
        KernelSampleError, take as take_sample)
    out, errors = {}, []
    for item in items:
        try:
            cfg = validate(item)
            if item.get('sample_probes') and not (item.get('kernel_sample') and item.get('settle')):
                raise EndpointError(MSG_SAMPLE_PROBES)
            endpoints = Endpoints(item.get('state_dir') or ENDPOINT_STATE_DIR, sys.executable, {}, module.check_mode)
            deadline = time.monotonic() + max(0.0, float(item.get('settle') or 0))
            probes = ProbeSamples(take_sample, item['kernel_sample']) if item.get('sample_probes') else None
            state = endpoints.status(cfg)['outcome']['state']
            while state in RUNNING and time.monotonic() < deadline:
                if probes is not None:
                    probes.poll()
                time.sleep(SETTLE_POLL)
                state = endpoints.status(cfg)['outcome']['state']
            out[cfg['name']] = {'settled': state not in RUNNING, 'kernel': take_sample(item.get('kernel_sample'))}
            if probes is not None:
                out[cfg['name']]['kernel_samples'] = probes.samples
        except (EndpointError, KernelSampleError, OSError) as exc:
            errors.append(MSG_STEP % ('endpoint %s' % item.get('name'), exc))
    return out, errors


def probe_count(spec):
    """The client socket's count of unanswered keepalive probes (its keepalive timer's count) from the socket table
    alone - a whole sample (counters, every socket, the addresses) costs a slow target far more, ten times a second."""
    from ansible_collections.tcplab.keepalive.plugins.module_utils._kernel_evidence import (  # pylint: disable=import-outside-toplevel
        classify, read_sockets)
    client = classify(read_sockets()[0], spec['port'], spec.get('peer_port'))[0]
    return client['timer_count'] if client and client['timer'] == 'keepalive' else 0


class ProbeSamples:
    """The settle's samples: one each time the client socket's count of unanswered keepalive probes grows (its
    keepalive timer's count, as inet_diag reports it). The count is read alone; the whole sample is taken when it
    has grown."""

    def __init__(self, take, spec, count=probe_count):
        self.take, self.spec, self.read_count = take, spec, count
        self.samples, self.count = [], 0

    def poll(self):
        if self.read_count(self.spec) <= self.count:
            return
        sample = self.take(self.spec)
        sock = sample.get('socket') or {}
        count = sock.get('timer_count') or 0
        if sock.get('timer') == 'keepalive' and count > self.count:
            self.count = count
            self.samples.append(sample)


class Clock:
    """Seconds each step took (the result's seconds: where a host's start or end spends its time)."""

    def __init__(self):
        self.seconds = {}
        self._last = time.monotonic()

    def lap(self, step):
        now = time.monotonic()
        self.seconds[step] = round(now - self._last, 3)
        self._last = now


def started(module, p):
    """sysctl, watch, captures, endpoints in this order; the first failure raises StepError (nothing after it runs)."""
    if p.get('drop_rule'):
        raise StepError(MSG_DROP_STARTED)
    result, clock = {'changed': False}, Clock()
    if p.get('look'):
        result['look'] = _look(module, p['look'])
        clock.lap('look')
        if result['look']['shortfalls']:
            result.update(refused=True, captures=[], endpoints=[], seconds=clock.seconds)
            return result, []
    if p.get('sysctl'):
        result['sysctl'] = _sysctl(module, p['sysctl'], 'present')
        clock.lap('sysctl')
    if p.get('watch'):
        try:
            result['watch'] = _watch(module, p['watch'], 'started')
        except StepError as exc:   # the run goes on without it: the kernel evidence then says why it is not judged
            result['watch'] = {'failed': True, 'msg': str(exc), 'watch': {'error': str(exc)}}
        clock.lap('watch')
    result['captures'] = _captures(module, p.get('captures') or [], 'started')[0]
    clock.lap('captures')
    result['endpoints'] = _endpoints(module, p.get('endpoints') or [], 'started')[0]
    clock.lap('endpoints')
    result['changed'] = _changed(result)
    result['seconds'] = clock.seconds
    return result, []


def stopped(module, p):
    """watch, captures, drop_rule, endpoints, sysctl: every step runs; returns (result, errors)."""
    if p.get('look'):
        raise StepError(MSG_LOOK_STOPPED)
    result, clock = {}, Clock()
    _preload(p)
    settled, errors = _settle(module, p.get('endpoints') or [])
    clock.lap('settle')
    if p.get('watch'):
        try:
            result['watch'] = _watch(module, p['watch'], 'stopped')
        except StepError as exc:
            result['watch'] = {'failed': True, 'msg': str(exc), 'watch': {'error': str(exc)}}
            errors.append(str(exc))
        clock.lap('watch')
    result['captures'], failed = _captures(module, p.get('captures') or [], 'stopped')
    errors.extend(failed)
    clock.lap('captures')
    if p.get('drop_rule'):
        try:
            result['drop_rule'] = _drop_rule(module, p['drop_rule'])
        except StepError as exc:
            result['drop_rule'] = {'failed': True, 'msg': str(exc)}
            errors.append(str(exc))
        clock.lap('drop_rule')
    result['endpoints'], failed = _endpoints(module, p.get('endpoints') or [], 'stopped')
    errors.extend(failed)
    for endpoint in result['endpoints']:
        endpoint.update(settled.get(endpoint.get('name'), {}))
    clock.lap('endpoints')
    if p.get('sysctl'):
        try:
            result['sysctl'] = _sysctl(module, p['sysctl'], 'restored')
        except StepError as exc:
            result['sysctl'] = {'failed': True, 'msg': str(exc)}
            errors.append(str(exc))
        clock.lap('sysctl')
    result['changed'] = _changed(result)
    result['seconds'] = clock.seconds
    return result, errors


def _changed(result):
    steps = [result.get(k) for k in ('sysctl', 'watch', 'drop_rule')] + result.get('captures', []) + result.get('endpoints', [])
    return any(isinstance(step, dict) and step.get('changed') for step in steps)


def run(module, p):
    """(result, errors) of state started or stopped; StepError when a start step failed."""
    if not any(p.get(k) for k in ('sysctl', 'watch', 'captures', 'drop_rule', 'endpoints')):
        raise StepError(MSG_NOTHING)
    return started(module, p) if p['state'] == 'started' else stopped(module, p)
