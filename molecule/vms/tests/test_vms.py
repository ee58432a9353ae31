"""The vms scenario, checked over ssh on each VM and in the reports on the controller.

Each VM is reached with testinfra's ssh backend, as the lab inventory says (address, the
non-root login, the lab's key, the VM's own known_hosts), over one shared ssh connection
per VM: a check is a command over ssh, not an Ansible module run (under software
emulation each of those starts Python and imports ansible-core's module code, seconds
per check)."""
from __future__ import annotations

import os
import sys

import pytest
import testinfra
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'resources', 'tests'))
from scenario_files import INVENTORY, REPORTS, load_json, scenario_vars  # noqa: E402 pylint: disable=wrong-import-position

VARS = scenario_vars('vms.yml')
RELEASES = {entry['name']: entry['release'] for entry in scenario_vars('lab.yml')['lab_hosts']}
PYTHONS = {'bullseye': '3.9', 'bookworm': '3.11', 'trixie': '3.13'}
LAB_INVENTORY = os.path.join(INVENTORY, 'lab.yml')   # where create.yml has the lab role write it


def lab_hosts():
    """The lab inventory's hosts (name: its variables), as the lab role wrote them."""
    with open(LAB_INVENTORY) as handle:
        return yaml.safe_load(handle)['all']['children']['lab']['hosts']


@pytest.fixture(scope='module')
def control_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('ssh')


@pytest.fixture(params=sorted(RELEASES), scope='module')
def vm(request, control_dir):
    """A VM of the lab over ssh (testinfra's ssh backend), with the inventory's login, key and known_hosts."""
    name = request.param
    hostvars = lab_hosts()[name]
    # the inventory's own connection options (known_hosts, ControlMaster and ControlPersist), with a
    # ControlPath of this session's: testinfra sets none itself
    extra = '%s %s -o ControlPath=%s' % (hostvars['ansible_ssh_common_args'], hostvars['ansible_ssh_args'],
                                         os.path.join(str(control_dir), name))
    lab_vm = testinfra.get_host('ssh://%s@%s' % (hostvars['ansible_user'], hostvars['ansible_host']),
                                ssh_identity_file=hostvars['ansible_ssh_private_key_file'], ssh_extra_args=extra, timeout=60)
    lab_vm.lab_name = name
    return lab_vm


def load(*parts):
    return load_json('reports', *parts)


@pytest.mark.parametrize('run_id', ['vms-two-hosts', 'vms-loopback'])
def test_experiment_verdict_pass(run_id):
    report = load(run_id, 'report.json')
    assert report['verdict'] == 'pass', report['reasons']
    assert report['client']['errno'] == 'ETIMEDOUT'
    # the kernel's evidence is judged on a VM too: the controller's SSH connection is watched, not a reason to skip
    kernel = report['evidence']['kernel']
    assert kernel['agree'] is True, kernel.get('notes')
    assert kernel['others_watch'] is not None and kernel['tcp_keepalive'] >= kernel['capture']['client_probes']


@pytest.mark.parametrize('run_id', ['vms-preflight', 'vms-refused'])
def test_a_refused_run_changed_nothing_and_wrote_no_report(run_id):
    """Refused by the preflight (fresh VMs), or by the server's start looking at its host (no sudo)."""
    assert not os.path.exists(os.path.join(REPORTS, run_id))


def test_audit_before_found_drift_defaults_and_the_dropin():
    hosts = load('audit-before', 'audit.json')['hosts']
    # the drop-in sets what runs: no drift, values in the policy (sockets opened before
    # it was applied may still show older keepalive timers, KA005: not asserted here)
    dropin = [f['id'] for f in hosts[VARS['vms_dropin_host']]['findings']]
    assert not {'KA001', 'KA002', 'KA003', 'KA004'} & set(dropin), dropin
    drift = [f['id'] for f in hosts[VARS['vms_runtime_host']]['findings']]
    assert 'KA004' in drift, drift
    defaults = [f['id'] for f in hosts[VARS['vms_loopback']]['findings']]
    assert 'KA003' in defaults, defaults
    for name, host in hosts.items():
        host_ns = [ns for ns in host['namespaces'] if ns['kind'] == 'host'][0]
        assert host_ns['boot_netns'] is True, name  # a VM's own namespace is the one sysctl.d configures


def test_audit_after_reboot_is_compliant():
    report = load('audit-after', 'audit.json')
    assert report['summary']['compliant'] == len(RELEASES), report['summary']
    for name, host in report['hosts'].items():
        assert host['compliant'] is True, (name, host['findings'])
        assert [f for f in host['findings'] if f['severity'] in ('error', 'warning')] == [], name


def vm_state(vm):
    return [int(vm.file('/proc/sys/net/ipv4/tcp_keepalive_%s' % key).content_string)
            for key in ('time', 'intvl', 'probes')]


def test_runtime_values_are_the_persisted_ones(vm):
    runtime = vm_state(vm)
    assert runtime != [7200, 75, 9]  # remediated or seeded, and kept over the reboot
    name = vm.lab_name
    if name == VARS['vms_dropin_host']:
        assert runtime == [120, 15, 6]
    else:
        assert vm.file('/etc/sysctl.d/90-tcplab-keepalive.conf').exists


def test_nothing_of_the_experiments_is_left(vm):
    with vm.sudo():
        for tool in ('iptables-nft', 'iptables-legacy'):
            if vm.exists(tool):
                assert 'tcplab-keepalive' not in vm.check_output('%s -w 10 -S' % tool)
        processes = vm.check_output('ps -eo args')
        # the experiments' ends and the rollback removed their endpoints' files
        endpoint_files = vm.check_output('find /run/tcplab-keepalive/endpoint -type f 2>/dev/null || true')
    assert 'tcplab-keepalive-' not in processes
    assert endpoint_files == '', endpoint_files


def test_the_vm_is_its_own_release_with_its_system_python_and_no_scapy(vm):
    name = vm.lab_name
    release = RELEASES[name]
    assert vm.system_info.codename == release
    version = vm.check_output("/usr/bin/python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
    assert version == PYTHONS[release]
    assert vm.run("/usr/bin/python3 -c 'import scapy'").rc != 0
