"""The lab scenario: two lab hosts, each with its own network namespace and kernel settings."""
from __future__ import annotations

import os
import sys

from testinfra.utils.ansible_runner import AnsibleRunner

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'resources', 'tests'))
from scenario_files import INVENTORY  # noqa: E402 pylint: disable=wrong-import-position

RUNNER = AnsibleRunner(INVENTORY)


def keepalive(host, key):
    return int(host.file('/proc/sys/net/ipv4/tcp_keepalive_%s' % key).content_string.strip())


def test_own_keepalive_settings(host):
    name = host.ansible.get_variables()['inventory_hostname']
    expected = 600 if name == 'lab-ssh' else 7200  # a new namespace starts at 7200/75/9
    assert keepalive(host, 'time') == expected
    assert keepalive(host, 'intvl') == 75
    assert keepalive(host, 'probes') == 9


def test_own_network_namespace(host):
    variables = host.ansible.get_variables()
    ns = host.run('readlink /proc/self/ns/net').stdout.strip()
    assert ns.startswith('net:[')
    assert ns != os.readlink('/proc/self/ns/net'), 'the task ran in the root namespace'
    assert ns == 'net:[%d]' % os.stat('/run/netns/%s' % variables['lab_netns']).st_ino


def test_lab_address_and_reachability(host):
    variables = host.ansible.get_variables()
    addrs = host.run('ip -o -4 addr show dev eth0').stdout
    assert ' %s/24 ' % variables['lab_address'] in addrs
    # the lab hosts reach each other over the bridge: lab-ssh's sshd answers from any lab host
    peer = RUNNER.get_variables('lab-ssh')['lab_address']
    python = variables['ansible_python_interpreter']
    check = host.run("%s -c \"import socket; socket.create_connection(('%s', 22), 3).close(); print('ok')\"" % (python, peer))
    assert check.rc == 0 and check.stdout.strip() == 'ok', check.stderr
