# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The experiment role's watch of the other connections, end to end: the role runs (ansible-playbook, the drop
fault on loopback) inside a lab namespace of this test (tk5a-<random>) with the local connection - as on a VM, the
controller reaches the client over a connection of its own, so the role watches - while another keepalive
connection of that namespace probes every second. The report's evidence.kernel must be judged and agree
(before: "not judged"), and its TCPKeepAlive delta must be what tshark counts in this test's own capture of the
namespace between the two samples - the client's probes and the other connection's."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.lab_netns import namespaces

NETNS_PREFIX = 'tk5a-'
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
real = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ('ansible-playbook', 'tcpdump', 'tshark')),
                          reason='needs root, ansible-playbook, tcpdump and tshark')
PLAY = textwrap.dedent('''\
    - name: The experiment
      hosts: localhost
      connection: local
      gather_facts: false
      tasks:
        - name: Run it
          ansible.builtin.include_role:
            name: tcplab.keepalive.experiment
    ''')
OTHER = textwrap.dedent('''\
    import socket, threading, time
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 2281))
    srv.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    s.connect(("127.0.0.1", 2281))
    print("connected", flush=True)
    time.sleep(900)
    ''')


@pytest.fixture
def netns():
    with namespaces(NETNS_PREFIX) as make:
        yield make()


@real
def test_the_role_watches_another_keepalive_connection_and_judges_the_evidence(netns, tmp_path):
    # a run id of its own: the capture directory /var/tmp/tcplab-keepalive/captures is shared with every other suite
    # running on the machine (the matrix runs four at once)
    run = 'tk5a-w%s' % secrets.token_hex(3)
    # in immediate mode as the watch is: a probe the kernel still held for it when it stops would be missing from its count
    mine = subprocess.Popen(['ip', 'netns', 'exec', netns, 'tcpdump', '-i', 'any', '-n', '-U', '--immediate-mode', '-s', '128',
                             '-w', str(tmp_path / 'independent.pcap'), 'tcp'], stderr=subprocess.PIPE, text=True)
    try:
        assert 'listening on any' in mine.stderr.readline() + mine.stderr.readline()
        other = subprocess.Popen(['ip', 'netns', 'exec', netns, sys.executable, '-c', OTHER], stdout=subprocess.PIPE,
                                 text=True)
        assert other.stdout.readline().strip() == 'connected'
        (tmp_path / 'inventory.yml').write_text(json.dumps({'all': {'hosts': {'here': {
            'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}}}}))
        (tmp_path / 'play.yml').write_text(PLAY)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, '.build', 'collections'),
                   ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'))
        done = subprocess.run(['ip', 'netns', 'exec', netns, 'ansible-playbook', '-i', str(tmp_path / 'inventory.yml'),
                               str(tmp_path / 'play.yml'), '-e', 'experiment_client=here experiment_server=here',
                               '-e', 'experiment_run_id=%s experiment_margin=3 experiment_idle_probes=1' % run,
                               '-e', 'experiment_report_dir=%s' % (tmp_path / 'reports'),
                               '-e', '{"experiment_keepalive": {"time": 2, "intvl": 1, "probes": 2}}'],
                              capture_output=True, text=True, env=env, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-3000:]
        time.sleep(0.3)
    finally:
        mine.terminate()
        mine.wait()
    report = json.loads((tmp_path / 'reports' / run / 'report.json').read_text())
    ev = report['evidence']['kernel']
    assert report['verdict'] == 'pass' and ev['agree'] is True, (report['reasons'], ev['notes'])
    assert ev['others']['count'] >= 1 and ev['others_watch']['probes'] >= 5      # one a second over the run
    assert ev['tcp_keepalive'] == ev['capture']['client_probes'] + ev['others_watch']['probes']
    # independently: every keepalive probe of the namespace between the two samples, by tshark in this test's capture
    window = 'frame.time_epoch > %f && frame.time_epoch <= %f' % tuple(ev['window'])
    counted = subprocess.run(['tshark', '-r', str(tmp_path / 'independent.pcap'), '-Y', 'tcp.analysis.keep_alive && '
                              + window, '-T', 'fields', '-e', 'frame.number'], capture_output=True, text=True,
                             check=True).stdout.split()
    assert len(counted) == ev['tcp_keepalive']
    # the watch's pcap (other connections' headers) is gone
    assert not [name for name in os.listdir('/var/tmp/tcplab-keepalive/captures') if run.replace('-', '') in name and 'others' in name]
