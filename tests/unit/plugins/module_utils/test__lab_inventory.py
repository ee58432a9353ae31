# The lab role's inventory templates (YAML and INI), rendered with Ansible's own templar from a
# lab_hosts result holding a namespace, an ssh namespace and a lab VM, then read back the way
# `ansible -i` reads them (InventoryManager + VariableManager): the variables each host ends up with.
from __future__ import annotations

import os

import pytest
import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible.vars.manager import VariableManager

try:
    from ansible.template import trust_as_template
except ImportError:  # ansible-core < 2.19: every template string is trusted
    def trust_as_template(text):
        return text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
ROLE = os.path.join(ROOT, 'roles', 'lab')

RESULT = {
    'hosts': [
        {'name': 'ns1', 'kind': 'netns', 'address': '198.18.0.10', 'transport': 'netns', 'netns': 'tcplab-ns1'},
        {'name': 'ns2', 'kind': 'netns', 'address': '198.18.0.11', 'transport': 'ssh', 'netns': 'tcplab-ns2'},
        {'name': 'vm1', 'kind': 'vm', 'release': 'trixie', 'address': '198.18.0.12', 'transport': 'ssh', 'accel': 'tcg',
         'boot_seconds': 21.5, 'user': 'tcplab', 'python': '/usr/bin/python3', 'private_key': '/run/lab/id_ed25519',
         'known_hosts': '/run/lab/vms/vm1/known_hosts', 'console_log': '/run/lab/vms/vm1/console.log'},
    ],
    'gateway': '198.18.0.1', 'network': '198.18.0.0/24',
    'ssh': {'private_key': '/run/lab/id_ed25519', 'known_hosts': '/run/lab/known_hosts', 'user': 'root', 'port': 22,
            'become': False},
    'ssh_control_dir': '/run/lab/cp',
}
VM_SSH_ARGS = ('-o UserKnownHostsFile=/run/lab/vms/vm1/known_hosts -o StrictHostKeyChecking=yes '
               '-o IdentitiesOnly=yes -o BatchMode=yes')


def render(template, result=None):
    with open(os.path.join(ROLE, 'vars', 'main.yml')) as handle:
        variables = yaml.safe_load(handle)
    with open(os.path.join(ROLE, 'defaults', 'main.yml')) as handle:
        defaults = yaml.safe_load(handle)
    variables.update(ansible_managed='Ansible managed', lab_group=defaults['lab_group'],
                     lab_python_interpreter='/venv/bin/python', __lab_result=result or RESULT)
    with open(os.path.join(ROLE, 'templates', template)) as handle:
        text = handle.read()
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(text))


def host_vars(tmp_path, template, result=None):
    """{host: the variables ansible -i gives it} for the rendered inventory."""
    path = tmp_path / ('lab.yml' if template.endswith('.yml.j2') else 'lab.ini')
    path.write_text(render(template, result))
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(path)])
    manager = VariableManager(loader=loader, inventory=inventory)
    keep = ('ansible_', 'lab_')
    return {host.name: {key: value for key, value in manager.get_vars(host=host).items() if key.startswith(keep)
                        and key not in ('ansible_playbook_python', 'ansible_config_file', 'ansible_version',
                                        'ansible_run_tags', 'ansible_skip_tags', 'ansible_check_mode',
                                        'ansible_diff_mode', 'ansible_forks', 'ansible_inventory_sources',
                                        'ansible_verbosity', 'ansible_collection_name', 'ansible_search_path',
                                        'ansible_dependent_role_names', 'ansible_role_names', 'ansible_play_name',
                                        'ansible_facts')}
            for host in inventory.get_hosts()}


@pytest.mark.parametrize('template', ['inventory.yml.j2', 'inventory.ini.j2'])
def test_vm_host_variables(tmp_path, template):
    got = host_vars(tmp_path, template)['vm1']
    assert got == {
        'ansible_connection': 'ansible.builtin.ssh',
        'ansible_host': '198.18.0.12',
        'ansible_user': 'tcplab',
        'ansible_become': True,
        # a module run is one ssh command over a kept master connection, without compression (the VM's CPU is slow)
        'ansible_pipelining': True,
        'ansible_ssh_args': '-o ControlMaster=auto -o ControlPersist=300s',
        'ansible_ssh_private_key_file': '/run/lab/id_ed25519',
        'ansible_ssh_common_args': VM_SSH_ARGS,
        # the VM's system Python, not the controller's virtual environment of the group
        'ansible_python_interpreter': '/usr/bin/python3',
        # an emulated VM on a busy controller answers ssh and sudo slower than Ansible's default 10 s
        'ansible_timeout': 60,
        # the master connection's socket in the lab's own directory: absent ends the master
        'ansible_control_path_dir': '/run/lab/cp',
        'lab_address': '198.18.0.12',
        'lab_kind': 'vm',
        'lab_release': 'trixie',
        'lab_accel': 'tcg',
        'lab_transport': 'ssh',
        'lab_gateway': '198.18.0.1',
        'lab_network': '198.18.0.0/24',
    }


@pytest.mark.parametrize('template', ['inventory.yml.j2', 'inventory.ini.j2'])
def test_namespace_hosts_are_as_before(tmp_path, template):
    got = host_vars(tmp_path, template)
    assert got['ns1'] == {
        'ansible_connection': 'tcplab.keepalive.netns', 'ansible_netns_name': 'tcplab-ns1',
        'ansible_python_interpreter': '/venv/bin/python', 'lab_address': '198.18.0.10', 'lab_kind': 'netns',
        'lab_netns': 'tcplab-ns1', 'lab_transport': 'netns', 'lab_gateway': '198.18.0.1', 'lab_network': '198.18.0.0/24',
    }
    assert got['ns2']['ansible_user'] == 'root' and 'ansible_become' not in got['ns2']
    assert got['ns2']['ansible_ssh_common_args'].startswith('-o UserKnownHostsFile=/run/lab/known_hosts ')
    assert got['ns2']['ansible_python_interpreter'] == '/venv/bin/python'
    assert got['ns2']['ansible_control_path_dir'] == '/run/lab/cp' and 'ansible_control_path_dir' not in got['ns1']


@pytest.mark.parametrize('template', ['inventory.yml.j2', 'inventory.ini.j2'])
def test_without_a_control_directory_ssh_keeps_ansible_s_own(tmp_path, template):
    got = host_vars(tmp_path, template, dict(RESULT, ssh_control_dir=None))
    assert not any('ansible_control_path_dir' in hostvars for hostvars in got.values())


def test_vm_not_yet_running_in_check_mode_has_no_accel(tmp_path):
    result = dict(RESULT, hosts=[dict(RESULT['hosts'][2], accel=None, boot_seconds=None)])
    for template in ('inventory.yml.j2', 'inventory.ini.j2'):
        got = host_vars(tmp_path, template, result)['vm1']
        assert got.get('lab_accel') is None and got['ansible_user'] == 'tcplab'


def test_only_a_lab_vm_gets_a_become_and_its_own_known_hosts():
    text = render('inventory.yml.j2')
    assert text.count('ansible_become: true') == 1
    assert text.count('/run/lab/vms/vm1/known_hosts') == 1
    assert yaml.safe_load(text)['all']['children']['lab']['hosts']['vm1']['lab_kind'] == 'vm'


def summary(result):
    with open(os.path.join(ROLE, 'tasks', 'main.yml')) as handle:
        task = [t for t in yaml.safe_load(handle) if t.get('name') == 'Show the lab'][0]
    variables = {'lab_inventory': '/run/lab/inventory.yml', '__lab_result': result}
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(task['vars']['__lab_summary']))


def test_the_summary_line_says_each_vms_release_and_accelerator():
    result = dict(RESULT, notes=['lab VM vm1: no boot progress under KVM within 10 s; falling back to TCG'])
    result['hosts'] = RESULT['hosts'] + [{'name': 'vm2', 'kind': 'vm', 'release': 'bullseye', 'address': '198.18.0.13',
                                          'transport': 'ssh', 'accel': 'kvm', 'boot_seconds': 8.0}]
    assert summary(result) == (
        'Lab hosts: ns1 198.18.0.10 netns, ns2 198.18.0.11 ssh, vm1 198.18.0.12 ssh (VM trixie, tcg, booted to ssh in 21.5 s), '
        'vm2 198.18.0.13 ssh (VM bullseye, kvm, booted to ssh in 8.0 s). Inventory: /run/lab/inventory.yml. '
        'lab VM vm1: no boot progress under KVM within 10 s; falling back to TCG')
    assert summary(dict(RESULT, hosts=RESULT['hosts'][:1])) == 'Lab hosts: ns1 198.18.0.10 netns. Inventory: /run/lab/inventory.yml'
