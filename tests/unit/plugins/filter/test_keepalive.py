# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import ast
import os
import stat

import pytest
import yaml

from ansible.errors import AnsibleFilterError

from ansible_collections.tcplab.keepalive.plugins.filter import keepalive as kf
from ansible_collections.tcplab.keepalive.plugins.module_utils import _host_facts
from ansible_collections.tcplab.keepalive.plugins.module_utils import _keepalive as ka

WALKTHROUGH = {'time': 30, 'intvl': 3, 'probes': 3}
DEMO = {'time': 2, 'intvl': 1, 'probes': 3}


# client_keepalive ---------------------------------------------------------------
def test_a_python_client_is_governed_by_the_sysctls():
    out = kf.client_keepalive(WALKTHROUGH, 'python', 'match')
    assert out == {'expect': WALKTHROUGH, 'governs': kf.GOVERNS_SYSCTLS, 'curl_keepalive_time': None}
    assert 'SO_KEEPALIVE without per-socket options' in out['governs']


def test_curl_matched_to_the_keepalive_time_sets_idle_and_interval_to_it():
    out = kf.client_keepalive(DEMO, 'curl', 'match')
    assert out['expect'] == {'time': 2, 'intvl': 2, 'probes': 3}
    assert out['curl_keepalive_time'] == 2
    assert out['governs'] == ('curl --keepalive-time 2 set by the role: TCP_KEEPIDLE = TCP_KEEPINTVL = 2 s per socket '
                              'override the sysctls; probes from the sysctl')


def test_stock_curl_keeps_its_own_sixty_seconds():
    out = kf.client_keepalive(DEMO, 'curl', 'stock')
    assert out['expect'] == {'time': 60, 'intvl': 60, 'probes': 3}
    assert out['curl_keepalive_time'] is None
    assert out['governs'].startswith('stock curl: TCP_KEEPIDLE = TCP_KEEPINTVL = 60 s')


@pytest.mark.parametrize('setting', [7, '7', 7.0])
def test_curl_with_seconds(setting):
    out = kf.client_keepalive(DEMO, 'curl', setting)
    assert out['expect'] == {'time': 7, 'intvl': 7, 'probes': 3}
    assert out['curl_keepalive_time'] == 7


def test_values_as_jinja_hands_them_over_become_integers():
    assert kf.client_keepalive({'time': '2', 'intvl': ' 1 ', 'probes': 3.0})['expect'] == DEMO


@pytest.mark.parametrize('values', [
    None, [], {'time': 2, 'intvl': 1}, {'time': 0, 'intvl': 1, 'probes': 3}, {'time': 2, 'intvl': 1, 'probes': 128},
    {'time': 32768, 'intvl': 1, 'probes': 3}, {'time': 'two', 'intvl': 1, 'probes': 3}, {'time': True, 'intvl': 1, 'probes': 3},
    {'time': 2.5, 'intvl': 1, 'probes': 3}, {'time': -2, 'intvl': 1, 'probes': 3},
])
def test_bad_keepalive_values_name_the_fix(values):
    with pytest.raises(AnsibleFilterError) as err:
        kf.client_keepalive(values)
    assert str(err.value) == kf.MSG_VALUES % ('experiment_keepalive', values)
    assert 'probes 1..127' in str(err.value) and '{"time": 2, "intvl": 1, "probes": 3}' in str(err.value)


@pytest.mark.parametrize('setting', ['often', 0, 32768, True, None, 1.5])
def test_bad_curl_setting_names_the_choices(setting):
    with pytest.raises(AnsibleFilterError) as err:
        kf.client_keepalive(DEMO, 'curl', setting)
    assert str(err.value) == kf.MSG_CURL_TIME % (setting,)
    assert 'match' in str(err.value) and 'stock' in str(err.value) and '1 to 32767' in str(err.value)


def test_an_unknown_client_kind_names_the_kinds():
    with pytest.raises(AnsibleFilterError) as err:
        kf.client_keepalive(DEMO, 'wget')
    assert str(err.value) == "experiment_client_kind must be one of python, curl; got 'wget'"


# the timeline ---------------------------------------------------------------------
def test_detection_is_the_kernels():
    assert kf.keepalive_detection(ka.KERNEL_DEFAULTS) == 7875
    assert kf.keepalive_detection(WALKTHROUGH) == 39


@pytest.mark.parametrize('expect, idle, margin, budgets', [
    # the demo: 2/1/3, two answered probes, 5 s margin
    (DEMO, 2, 5, {'detection': 5, 'silence_wait': 10, 'drop_expire_after': 310, 'capture_seconds': 609, 'lease_ttl': 649}),
    # the walk-through: 30/3/3
    (WALKTHROUGH, 2, 5, {'detection': 39, 'silence_wait': 44, 'drop_expire_after': 344, 'capture_seconds': 699,
                         'lease_ttl': 30 * 3 + 9 + 5 * 8 + 600}),
    # no answered probes, no margin
    (DEMO, 0, 0, {'detection': 5, 'silence_wait': 5, 'drop_expire_after': 305, 'capture_seconds': 605, 'lease_ttl': 605}),
    # stock curl: 60/60/3, from strings
    ({'time': '60', 'intvl': '60', 'probes': '3'}, '1', '5',
     {'detection': 240, 'silence_wait': 245, 'drop_expire_after': 545, 'capture_seconds': 900, 'lease_ttl': 60 * 2 + 180 + 5 * 7 + 600}),
])
def test_the_budgets_of_a_run(expect, idle, margin, budgets):
    assert kf.experiment_timeline(expect, idle_probes=idle, margin=margin) == budgets


def test_the_budgets_are_those_the_role_computed_in_jinja_before():
    """The formulas the role had in run.yml, check.yml and preflight.yml, for a spread of settings."""
    for t, i, n, idle, m in [(2, 1, 3, 2, 5), (30, 3, 3, 2, 5), (7200, 75, 9, 0, 0), (1, 1, 1, 10, 60), (32767, 32767, 127, 3, 9)]:
        out = kf.experiment_timeline({'time': t, 'intvl': i, 'probes': n}, idle, m)
        assert out['lease_ttl'] == t * (idle + 1) + i * n + m * (idle + n + 3) + 600
        assert out['capture_seconds'] == t * (idle + 1) + i * n + 600
        assert out['drop_expire_after'] == t + i * n + m + 300
        assert out['silence_wait'] == t + i * n + m


@pytest.mark.parametrize('idle, margin, what', [(-1, 5, 'experiment_idle_probes'), (2, 'x', 'experiment_margin'),
                                                (None, 5, 'experiment_idle_probes')])
def test_bad_counts_name_the_variable(idle, margin, what):
    with pytest.raises(AnsibleFilterError, match='^%s must be a whole number from 0' % what):
        kf.experiment_timeline(DEMO, idle, margin)


@pytest.mark.parametrize('phase, k, eta', [
    ('answered', 1, 2), ('answered', 2, 4),
    ('unanswered', 1, 2), ('unanswered', 2, 3), ('unanswered', 3, 4), ('rst', 4, 5),
])
def test_eta_of_each_event(phase, k, eta):
    assert kf.keepalive_eta(DEMO, phase, k) == eta


def test_eta_of_the_rst_is_the_detection_time():
    assert kf.keepalive_eta(WALKTHROUGH, 'rst', WALKTHROUGH['probes'] + 1) == kf.keepalive_detection(WALKTHROUGH)


def test_eta_refuses_an_unknown_phase_and_probe_zero():
    with pytest.raises(AnsibleFilterError) as err:
        kf.keepalive_eta(DEMO, 'silent', 1)
    assert str(err.value) == "the phase of a wait must be one of answered, unanswered, rst; got 'silent'"
    with pytest.raises(AnsibleFilterError, match='^the probe number must be a whole number from 1'):
        kf.keepalive_eta(DEMO, 'answered', 0)


@pytest.mark.parametrize('seconds, every, polls', [(0, 5, 0), (1, 5, 1), (5, 5, 1), (6, 5, 2), (120, 5, 24), ('12', 5, 3), (7, 1, 7)])
def test_poll_retries(seconds, every, polls):
    assert kf.poll_retries(seconds, every) == polls


@pytest.mark.parametrize('seconds, every', [(-1, 5), ('soon', 5), (5, 0)])
def test_poll_retries_refuses_bad_numbers(seconds, every):
    with pytest.raises(AnsibleFilterError, match='must be a whole number'):
        kf.poll_retries(seconds, every)


# tools ------------------------------------------------------------------------------
def _found(path):
    """An entry as ansible.builtin.find returns it (lstat, like find without follow)."""
    st = os.lstat(path)
    return {'path': path, 'islnk': stat.S_ISLNK(st.st_mode), 'isreg': stat.S_ISREG(st.st_mode),
            'xusr': bool(st.st_mode & stat.S_IXUSR), 'xgrp': bool(st.st_mode & stat.S_IXGRP), 'xoth': bool(st.st_mode & stat.S_IXOTH)}


def test_tool_binaries():
    assert kf.tool_binaries(['ip', 'iptables', 'capture']) == ['ip', 'iptables', 'iptables-nft', 'iptables-legacy']
    assert kf.tool_binaries(['curl', 'curl']) == ['curl']
    assert sorted(kf.tool_binaries(None)) == sorted(sum((list(v) for v in _host_facts.TOOL_BINARIES.values()), []))


def test_missing_tools_from_the_files_of_this_machine(tmp_path):
    ip = '/usr/sbin/ip' if os.path.exists('/usr/sbin/ip') else '/usr/bin/ip'
    plain = tmp_path / 'curl'
    plain.write_text('not a program')
    os.chmod(str(plain), 0o644)
    found = [_found(ip), _found(str(plain))]
    needs = ['capture', 'curl', 'iptables', 'ip']
    assert kf.missing_tools(needs, found=found) == ['capture', 'curl', 'iptables']
    os.chmod(str(plain), 0o755)
    found = [_found(ip), _found(str(plain))]
    assert kf.missing_tools(needs, found=found, capture={'backend': 'tcpdump'}) == ['iptables']
    assert kf.missing_tools(needs, found=found, capture={'failed': True, 'msg': 'no capture backend'}) == ['capture', 'iptables']


def test_any_iptables_backend_counts_and_a_link_counts():
    link = {'path': '/usr/sbin/iptables-nft', 'islnk': True, 'isreg': False}
    directory = {'path': '/usr/bin/nc', 'islnk': False, 'isreg': False, 'xusr': True}
    assert kf.missing_tools(['iptables', 'nc'], found=[link, directory]) == ['nc']


def test_missing_tools_refuses_unknown_tools_and_bad_lists():
    with pytest.raises(AnsibleFilterError) as err:
        kf.missing_tools(['ip', 'tshark'], found=[])
    assert str(err.value) == "unknown tool 'tshark': the experiment knows curl, ip, iptables, nc, capture"
    with pytest.raises(AnsibleFilterError, match='^needs must be a list'):
        kf.missing_tools('ip', found=[])
    with pytest.raises(AnsibleFilterError, match='^found must be a list'):
        kf.missing_tools(['ip'], found={'files': []})
    with pytest.raises(AnsibleFilterError, match='^unknown tool'):
        kf.tool_binaries(['ip', 'wireshark'])


# the plugin as Ansible loads it --------------------------------------------------------
def test_every_filter_has_its_documentation():
    here = os.path.dirname(kf.__file__)
    names = set(kf.FilterModule().filters())
    for name in names:
        with open(os.path.join(here, name + '.yml')) as handle:
            doc = yaml.safe_load(handle)
        assert doc['DOCUMENTATION']['name'] == name
        assert 'tcplab.keepalive.%s' % name in doc['EXAMPLES']
        assert doc['RETURN']['_value']['description']
    documented = {f[:-4] for f in os.listdir(here) if f.endswith('.yml')}
    assert documented == names


def test_the_filters_render_in_a_template():
    """Through Ansible's templating, by FQCN, the way the role calls them."""
    from ansible.errors import AnsibleError  # pylint: disable=import-outside-toplevel
    from ansible.parsing.dataloader import DataLoader  # pylint: disable=import-outside-toplevel
    from ansible.template import Templar  # pylint: disable=import-outside-toplevel
    try:
        from ansible.template import trust_as_template  # pylint: disable=import-outside-toplevel
        native = True
    except ImportError:  # ansible-core before 2.19 templates any string, and renders a lone expression as text

        def trust_as_template(text):
            return text
        native = False
    templar = Templar(loader=DataLoader(), variables={'ka': {'time': 2, 'intvl': 1, 'probes': 3}, 'idle': 2, 'margin': 5})

    def render(text):
        result = templar.template(trust_as_template(text))
        if native or not isinstance(result, str):
            return result
        try:
            return ast.literal_eval(result)
        except (ValueError, SyntaxError):
            return result
    budget = render("{{ (ka | tcplab.keepalive.client_keepalive('curl', 'stock')).expect"
                    " | tcplab.keepalive.experiment_timeline(idle_probes=idle, margin=margin) }}")
    assert budget['silence_wait'] == 60 + 60 * 3 + 5
    assert render("{{ ka | tcplab.keepalive.keepalive_eta('rst', 4) }}") == 5
    assert render("{{ (7 + 5) | tcplab.keepalive.poll_retries + 1 }}") == 4
    assert render("{{ ka | tcplab.keepalive.keepalive_detection }}") == 5
    with pytest.raises(AnsibleError, match='experiment_client_kind must be one of python, curl'):
        render("{{ ka | tcplab.keepalive.client_keepalive('wget') }}")


def test_host_shortfalls_is_the_modules_judgement():
    host = {'effective_user_id': 0, 'kernel': '6.1.0-28-amd64', 'python': {'version': {'major': 3, 'minor': 11}}}
    assert kf.host_shortfalls(host) == []
    assert kf.host_shortfalls(host, ['iptables']) == ['tools']
    assert kf.host_shortfalls(dict(host, effective_user_id=1000), [], '4.5', '3.12') == ['user', 'python']
    assert kf.host_shortfalls(host, [], '6.2', '3.8') == ['kernel']
    with pytest.raises(AnsibleFilterError, match='host_shortfalls reads a dict of facts'):
        kf.host_shortfalls(None)
    with pytest.raises(AnsibleFilterError, match="host_shortfalls: min_python 'latest' is not a version"):
        kf.host_shortfalls(host, [], '4.5', 'latest')
