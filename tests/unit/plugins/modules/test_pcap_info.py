# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pcap_info module run for real: `ansible localhost -m tcplab.keepalive.pcap_info` with the json stdout
callback, over a capture generated with scapy, plus the error of a missing file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

REPO_ROOT = Path(__file__).resolve().parents[4]
ANSIBLE = Path(sys.executable).parent / 'ansible'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'


def run_module(args, tmp_path):
    # the json stdout callback lives in ansible.posix, which is not a dependency: parse the default ad-hoc output,
    # 'localhost | SUCCESS => {...}', whose result part is JSON
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
               ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_CALLBACK_RESULT_FORMAT='json', LANG='C')
    proc = subprocess.run([str(ANSIBLE), 'localhost', '-c', 'local', '-i', 'localhost,', '-m', 'tcplab.keepalive.pcap_info',
                           '-a', json.dumps(args), '-e', 'ansible_python_interpreter=%s' % sys.executable],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    match = re.search(r'^localhost \| (SUCCESS|FAILED!) => ', proc.stdout, re.MULTILINE)
    assert match, proc.stdout + proc.stderr
    result = json.loads(proc.stdout[match.end():])
    result['_status'] = match.group(1)
    return proc.returncode, result


def keepalive_capture(path):
    """Client probes after 2 s idle; one answered, then 3 unanswered 1 s apart, RST|ACK."""
    c, s = ('198.18.0.1', 22345), ('198.18.0.2', 12345)
    t0 = 1700000000.0
    pkts = []

    def seg(t, frm_client, flags, seq, ack, data=b''):
        src, dst = (c, s) if frm_client else (s, c)
        pkt = Ether() / IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq, ack=ack)
        if data:
            pkt = pkt / data
        pkt.time = t0 + t
        pkts.append(pkt)
    seg(0.0, True, 'S', 100, 0)
    seg(0.001, False, 'SA', 900, 101)
    seg(0.002, True, 'A', 101, 901)
    seg(0.003, True, 'PA', 101, 901, b'hi')
    seg(0.004, False, 'A', 901, 103)
    seg(2.024, True, 'A', 102, 901)        # probe 1 (answered)
    seg(2.025, False, 'A', 901, 103)
    seg(4.045, True, 'A', 102, 901)        # probes 2..4 unanswered
    seg(5.055, True, 'A', 102, 901)
    seg(6.065, True, 'A', 102, 901)
    seg(7.075, True, 'RA', 103, 901)
    wrpcap(str(path), pkts)
    return str(path)


@pytest.fixture(scope='module', autouse=True)
def needs_build_tree():
    if not (COLLECTIONS / 'ansible_collections' / 'tcplab' / 'keepalive').exists() or not ANSIBLE.exists():
        pytest.skip('needs %s (scripts/bootstrap) and ansible next to %s' % (COLLECTIONS, sys.executable))


def test_module_verdict_and_frames(tmp_path):
    path = keepalive_capture(tmp_path / 'ka.pcap')
    rc, result = run_module({'path': path, 'connection': {'port': 12345}, 'return_frames': True,
                             'expect': {'time': 2, 'intvl': 1, 'probes': 3}}, tmp_path)
    assert rc == 0, result
    assert result['_status'] == 'SUCCESS' and result['changed'] is False
    assert result['verdict'] == 'pass', result['reasons']
    assert result['keepalive_frames'] == [6, 8, 9, 10]
    assert result['keepalive_ack_frames'] == [7]
    assert result['summary']['rst_after_probes'] == 1
    assert result['tolerance'] == {'seconds': 0.25, 'percent': 10.0}
    conn = result['connections'][0]
    assert conn['name'] == '198.18.0.1:22345 -> 198.18.0.2:12345'
    assert conn['rst']['flags'] == 'RST|ACK' and conn['rst']['after_probes'] == 3
    assert conn['probers'][0]['idle_before_first_probe'] == pytest.approx(2.02, abs=1e-6)


def test_module_fail_verdict_is_not_a_task_failure(tmp_path):
    path = keepalive_capture(tmp_path / 'ka.pcap')
    rc, result = run_module({'path': path, 'expect': {'time': 2, 'intvl': 3, 'probes': 3},
                             'tolerance': {'seconds': 0.25, 'percent': 0}}, tmp_path)
    assert rc == 0, result
    assert result['verdict'] == 'fail'
    assert '198.18.0.1:22345 -> 198.18.0.2:12345: 198.18.0.1:22345: probe 3 came 1.01 s after probe 2, ' \
           'expected 3 s ± 0.25 s' in result['reasons']


def test_module_missing_file(tmp_path):
    missing = str(tmp_path / 'missing.pcap')
    rc, result = run_module({'path': missing}, tmp_path)
    assert rc != 0
    assert result['_status'] == 'FAILED!'
    assert result['msg'] == ('pcap file %s not found: give the path of a capture (tcpdump -w, tshark -w or the '
                             'capture module)' % missing)
