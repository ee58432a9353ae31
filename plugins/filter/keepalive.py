# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters of the experiment's arithmetic: what governs the client's keepalive and how long each step may take.

The documentation of each filter is in the YAML file of its name beside this one. The formulas use the
collection's one description of the kernel's keepalive (module_utils/_keepalive.py), so the role, the
analyser and the audit agree on them.
"""

from __future__ import annotations

import math

from ansible.errors import AnsibleFilterError

from ansible_collections.tcplab.keepalive.plugins.module_utils import _host_facts
from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import BOUNDS, KEYS, detection_seconds
from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive_rules import DEFAULT_HZ, next_probe
from ansible_collections.tcplab.keepalive.plugins.module_utils._middlebox import MiddleboxError, idle_timeout

# A few more seconds on top of the whole timeline before the kernel's own clocks stop what a lost
# controller left behind: the lease of the sysctls and the capture (ten minutes), the DROP rule's
# dead-man timer (five minutes).
LEASE_SPARE = 600
CAPTURE_SPARE = 600
DROP_SPARE = 300
# curl's own --keepalive-time when the role passes none
CURL_STOCK = 60
CLIENT_KINDS = ('python', 'curl')
PHASES = ('answered', 'unanswered', 'rst')

GOVERNS_SYSCTLS = 'the sysctls (python client, SO_KEEPALIVE without per-socket options)'
GOVERNS_CURL = ('curl --keepalive-time %d set by the role: TCP_KEEPIDLE = TCP_KEEPINTVL = %d s per socket override '
                'the sysctls; probes from the sysctl')
GOVERNS_STOCK_CURL = ('stock curl: TCP_KEEPIDLE = TCP_KEEPINTVL = %d s per socket override the sysctls; '
                      'probes from the sysctl' % CURL_STOCK)

MSG_VALUES = ('%s needs time, intvl and probes as whole numbers (time and intvl 1..32767 seconds, probes 1..127), '
              'for example {"time": 2, "intvl": 1, "probes": 3}; got %r')
MSG_NUMBER = '%s must be a whole number from %d to %d; got %r'
MSG_CLIENT_KIND = 'experiment_client_kind must be one of %s; got %%r' % ', '.join(CLIENT_KINDS)
MSG_CURL_TIME = ('experiment_curl_keepalive_time must be match (the keepalive time), stock (curl\'s own %d s) '
                 'or seconds from %d to %d; got %%r' % ((CURL_STOCK,) + BOUNDS['time']))
MSG_PHASE = 'the phase of a wait must be one of %s; got %%r' % ', '.join(PHASES)
MSG_LIST = '%s must be a list (%s); got %r'
MSG_FACTS = 'host_shortfalls reads a dict of facts (host_facts\' ansible_facts, or experiment_host\'s look.facts); got %r'
MSG_IDLE = ('experiment_idle_timeout must be a dict with preset (%s), or seconds and action (drop or reset); got %r')
# the request after the idle time: how many idle timeouts to stay idle (plus a second), how long to wait for its answer
IDLE_TIMEOUTS_BEFORE_REQUEST = 3
REQUEST_TIMEOUT = 10


def _whole(what, value, low, high):
    """value as an int within low..high; strings of digits are accepted as Jinja hands them over."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip('-').isdigit():
        number = int(value.strip())
    if number is None or not low <= number <= high:
        raise AnsibleFilterError(MSG_NUMBER % (what, low, high, value))
    return number


def _values(values, what='experiment_keepalive'):
    """{time, intvl, probes} as ints within the kernel's bounds."""
    if not isinstance(values, dict) or any(key not in values for key in KEYS):
        raise AnsibleFilterError(MSG_VALUES % (what, values))
    try:
        return {key: _whole('%s.%s' % (what, key), values[key], *BOUNDS[key]) for key in KEYS}
    except AnsibleFilterError:
        raise AnsibleFilterError(MSG_VALUES % (what, values)) from None


def curl_time(setting, keepalive):
    """The --keepalive-time the role passes to curl: None for stock curl."""
    if setting == 'match':
        return keepalive['time']
    if setting == 'stock':
        return None
    try:
        return _whole('experiment_curl_keepalive_time', setting, *BOUNDS['time'])
    except AnsibleFilterError:
        raise AnsibleFilterError(MSG_CURL_TIME % (setting,)) from None


def client_keepalive(keepalive, client_kind='python', curl_keepalive_time='match'):
    """What governs the client's keepalive: the expected values, the sentence that says why, curl's option."""
    values = _values(keepalive)
    if client_kind not in CLIENT_KINDS:
        raise AnsibleFilterError(MSG_CLIENT_KIND % (client_kind,))
    if client_kind == 'python':
        return {'expect': values, 'governs': GOVERNS_SYSCTLS, 'curl_keepalive_time': None}
    curl = curl_time(curl_keepalive_time, values)
    per_socket = CURL_STOCK if curl is None else curl
    return {
        'expect': {'time': per_socket, 'intvl': per_socket, 'probes': values['probes']},
        'governs': GOVERNS_STOCK_CURL if curl is None else GOVERNS_CURL % (curl, curl),
        'curl_keepalive_time': curl,
    }


def keepalive_detection(values):
    """Seconds from the last segment received until the kernel gives up on a silent peer."""
    return detection_seconds(_values(values, 'the keepalive values'))


def experiment_timeline(expect, idle_probes=0, margin=0):
    """The budgets of one run, in seconds, from the governing values, the answered probes and the margin."""
    values = _values(expect, 'the expected keepalive values')
    idle = _whole('experiment_idle_probes', idle_probes, 0, 1000000)
    slack = _whole('experiment_margin', margin, 0, 1000000)
    detection = detection_seconds(values)
    answered = values['time'] * idle
    return {
        'detection': detection,
        # from the DROP: the unanswered probes and the RST, with one margin
        'silence_wait': detection + slack,
        # the DROP rule removes itself after this, should cleanup never come
        'drop_expire_after': detection + slack + DROP_SPARE,
        # the capture stops itself after this
        'capture_seconds': answered + detection + CAPTURE_SPARE,
        # the whole timeline with every wait's margin: a lease a killed controller never released expires after it
        'lease_ttl': answered + detection + slack * (idle + values['probes'] + 3) + LEASE_SPARE,
    }


def idle_timeout_plan(idle, expect, margin=0):
    """The idle-timeout run: the middlebox's seconds, action and preset (from the audit's table), the prediction,
    and its budgets in seconds."""
    if not isinstance(idle, dict):
        raise AnsibleFilterError(MSG_IDLE % ('aws-nlb, azure-lb, azure-lb-reset, gcp-vpc', idle))
    try:
        seconds, action, preset = idle_timeout({key: idle.get(key) for key in ('preset', 'seconds', 'action')})
    except MiddleboxError as exc:
        raise AnsibleFilterError('experiment_idle_timeout: %s' % exc) from None
    values = _values(expect, 'the expected keepalive values')
    slack = _whole('experiment_margin', margin, 0, 1000000)
    idle_wait = IDLE_TIMEOUTS_BEFORE_REQUEST * seconds + 1
    detection = detection_seconds(values)
    # after the request: its answer, or the keepalive's detection of a dead peer, with one margin
    end_wait = max(REQUEST_TIMEOUT, detection) + slack
    return {
        'seconds': seconds, 'action': action, 'preset': preset,
        'survives': values['time'] < seconds,
        'idle_wait': idle_wait,
        'end_wait': end_wait,
        'capture_seconds': idle_wait + end_wait + CAPTURE_SPARE,
        'lease_ttl': idle_wait + end_wait + slack * 3 + LEASE_SPARE,
    }


def keepalive_eta(expect, phase, number, answered=0):
    """When event number of phase is due by the kernel's timer rules (_keepalive_rules), answers taken as instant:
    answered probes from the connect, the rest from the last answered segment.

    Answered probe 1 comes time after the connect, each later one max(time, intvl) after the one before (the timer
    is re-armed with intvl when a probe leaves, and the answer restarts the idle time). Unanswered probe 1 comes
    time after the last answered segment, or max(time, intvl) when `answered` probes came before; each later one
    and the RST (number probes + 1) one intvl after the one before.
    """
    values = _values(expect, 'the expected keepalive values')
    if phase not in PHASES:
        raise AnsibleFilterError(MSG_PHASE % (phase,))
    k = _whole('the probe number', number, 1, 1000000)
    before = _whole('the answered probes before the silence', answered, 0, 1000000)
    if phase == 'answered':
        # from the first answered probe on, every next one comes as unanswered probe 1 does after an answered probe
        return values['time'] + _first_after(values, True) * (k - 1)
    return _first_after(values, before > 0) + values['intvl'] * (k - 1)


def _first_after(values, answered):
    """Seconds from the last segment from the peer (at 0, the answer to a probe sent at 0 when `answered`) to the
    next probe."""
    return int(next_probe(values, 0.0, 0.0 if answered else None, answered, hz=DEFAULT_HZ).due)


def poll_retries(seconds, every=5):
    """How many polls of every seconds cover seconds (rounded up)."""
    total = _whole('the seconds to wait', seconds, 0, 100000000)
    step = _whole('the poll interval', every, 1, 3600)
    return int(math.ceil(total / float(step)))


def missing_tools(needs, found=None, capture=None):
    """The tools of needs that a host lacks.

    found is the files list of ansible.builtin.find (or host_facts) over the host's binary directories; capture the
    result of tcplab.keepalive.capture in check mode (it has a backend when tcpdump or scapy can capture there), or
    None where the host does not capture.
    """
    if not isinstance(needs, list):
        raise AnsibleFilterError(MSG_LIST % ('needs', 'tool names', needs))
    files = found if found is not None else []
    if not isinstance(files, list):
        raise AnsibleFilterError(MSG_LIST % ('found', 'the files of ansible.builtin.find', files))
    try:
        return _host_facts.missing_tools(needs, files, capture)
    except _host_facts.HostFactsError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def tool_binaries(tools=None):
    """The binary names to look for, for the given tools (all when None), in a stable order."""
    wanted = sorted(_host_facts.TOOL_BINARIES) if tools is None else tools
    if not isinstance(wanted, list):
        raise AnsibleFilterError(MSG_LIST % ('tools', 'tool names', wanted))
    try:
        return _host_facts.tool_binaries(wanted)
    except _host_facts.HostFactsError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def host_shortfalls(facts, missing=None, min_kernel=_host_facts.MIN_KERNEL, min_python=_host_facts.MIN_PYTHON):
    """What keeps a host from running its part of the experiment - of user (not root), kernel and python (older than
    the minimum), tools (missing not empty) - from the facts host_facts gathered: the judgement the experiment_host
    module's look makes on a host it starts (module_utils/_host_facts.py)."""
    if not isinstance(facts, dict):
        raise AnsibleFilterError(MSG_FACTS % (facts,))
    try:
        return _host_facts.shortfalls(facts, missing or [], str(min_kernel), str(min_python))
    except (_host_facts.HostFactsError, KeyError, TypeError) as exc:
        raise AnsibleFilterError('host_shortfalls: %s' % (exc,)) from exc


class FilterModule:
    """The experiment's keepalive arithmetic."""

    def filters(self):
        return {
            'client_keepalive': client_keepalive,
            'keepalive_detection': keepalive_detection,
            'experiment_timeline': experiment_timeline,
            'keepalive_eta': keepalive_eta,
            'poll_retries': poll_retries,
            'idle_timeout_plan': idle_timeout_plan,
            'missing_tools': missing_tools,
            'host_shortfalls': host_shortfalls,
            'tool_binaries': tool_binaries,
        }
