# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kernel's evidence of an experiment: parsing /proc/net/netstat and /proc/net/tcp (real text of Linux 6.18),
the evidence the report derives (agreement, disagreement with both numbers, the guards against other connections
and the loopback server's probes), report.json/report.md with evidence.kernel, and - against the real kernel in lab
namespaces of this test (tkk-*, 198.19.61.0/24) - a keepalive connection silenced by a DROP rule in the server's
namespace: the counters and the timer the code reads are checked against /proc/net/netstat and `ss -tnoi` read
here, independently."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_evidence as ke
from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_judge as kj
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import run_in
from ansible_collections.tcplab.keepalive.plugins.module_utils._report import ReportError, observe, write_experiment

_spec = importlib.util.spec_from_file_location('tcplab_test__report_ke', str(Path(__file__).with_name('test__report.py')))
_rep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rep)

# /proc/net/netstat of a fresh namespace on Linux 6.18 after two keepalive probes (the header and value lines are
# rebuilt from these words exactly as the kernel prints them: single spaces)
TCPEXT_NAMES = """SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned
OutOfWindowIcmps LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab BeyondWindow TSEcrRejected
PAWSOldAck PAWSTimewait DelayedACKs DelayedACKLocked DelayedACKLost ListenOverflows ListenDrops TCPHPHits TCPPureAcks
TCPHPAcks TCPRenoRecovery TCPSackRecovery TCPSACKReneging TCPSACKReorder TCPRenoReorder TCPTSReorder TCPFullUndo
TCPPartialUndo TCPDSACKUndo TCPLossUndo TCPLostRetransmit TCPRenoFailures TCPSackFailures TCPLossFailures TCPFastRetrans
TCPSlowStartRetrans TCPTimeouts TCPLossProbes TCPLossProbeRecovery TCPRenoRecoveryFail TCPSackRecoveryFail
TCPRcvCollapsed TCPBacklogCoalesce TCPDSACKOldSent TCPDSACKOfoSent TCPDSACKRecv TCPDSACKOfoRecv TCPAbortOnData
TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger TCPAbortFailed TCPMemoryPressures
TCPMemoryPressuresChrono TCPSACKDiscard TCPDSACKIgnoredOld TCPDSACKIgnoredNoUndo TCPSpuriousRTOs TCPMD5NotFound
TCPMD5Unexpected TCPMD5Failure TCPSackShifted TCPSackMerged TCPSackShiftFallback TCPBacklogDrop PFMemallocDrop
TCPMinTTLDrop TCPDeferAcceptDrop IPReversePathFilter TCPTimeWaitOverflow TCPReqQFullDoCookies TCPReqQFullDrop
TCPRetransFail TCPRcvCoalesce TCPOFOQueue TCPOFODrop TCPOFOMerge TCPChallengeACK TCPSYNChallenge TCPFastOpenActive
TCPFastOpenActiveFail TCPFastOpenPassive TCPFastOpenPassiveFail TCPFastOpenListenOverflow TCPFastOpenCookieReqd
TCPFastOpenBlackhole TCPSpuriousRtxHostQueues BusyPollRxPackets TCPAutoCorking TCPFromZeroWindowAdv TCPToZeroWindowAdv
TCPWantZeroWindowAdv TCPSynRetrans TCPOrigDataSent TCPHystartTrainDetect TCPHystartTrainCwnd TCPHystartDelayDetect
TCPHystartDelayCwnd TCPACKSkippedSynRecv TCPACKSkippedPAWS TCPACKSkippedSeq TCPACKSkippedFinWait2
TCPACKSkippedTimeWait TCPACKSkippedChallenge TCPWinProbe TCPKeepAlive TCPMTUPFail TCPMTUPSuccess TCPDelivered
TCPDeliveredCE TCPAckCompressed TCPZeroWindowDrop TCPRcvQDrop TCPWqueueTooBig TCPFastOpenPassiveAltKey
TcpTimeoutRehash TcpDuplicateDataRehash TCPDSACKRecvSegs TCPDSACKIgnoredDubious TCPMigrateReqSuccess
TCPMigrateReqFailure TCPPLBRehash TCPAORequired TCPAOBad TCPAOKeyNotFound TCPAOGood TCPAODroppedIcmps""".split()
TCPEXT_VALUES = ('0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 '
                 '0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 '
                 '0 0 0 0 0 0 0 0 0 0 0 0 0 2 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0').split()
NETSTAT_6_18 = '\n'.join([
    'TcpExt: ' + ' '.join(TCPEXT_NAMES), 'TcpExt: ' + ' '.join(TCPEXT_VALUES),
    'IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets '
    'InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts InECT0Pkts InCEPkts '
    'ReasmOverlaps',
    'IpExt: 0 0 0 0 0 0 380 380 0 0 0 0 0 7 0 0 0 0', ''])

# /proc/net/tcp of the same namespace: a listener on 127.0.0.1:5000, the accepted socket, and the client on 22345
# with its keepalive timer (02) due in 0x35 ticks and 0 unanswered probes
PROC_TCP_6_18 = textwrap.dedent('''\
      sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
       0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2433042 1 00000000da7dd4a0 100 0 0 10 0
       1: 0100007F:1388 0100007F:5749 01 00000000:00000000 00:00000000 00000000     0        0 2433044 1 000000000fe738c8 20 0 0 10 -1
       2: 0100007F:5749 0100007F:1388 01 00000000:00000000 02:00000035 00000000     0        0 2433043 2 000000004b4d2549 20 0 0 10 -1
    ''')


def test_parse_netstat_real_text():
    parsed = ke.parse_netstat(NETSTAT_6_18)
    assert len(TCPEXT_NAMES) == len(TCPEXT_VALUES) == 135
    assert set(parsed) == {'TcpExt', 'IpExt'}
    assert parsed['TcpExt']['TCPKeepAlive'] == 2 and parsed['TcpExt']['TCPPureAcks'] == 3
    assert parsed['IpExt']['InOctets'] == 380
    assert ke.counters(parsed) == {'tcp_keepalive': 2, 'tcp_abort_on_timeout': 0, 'tcp_timeouts': 0}


def test_a_kernel_without_the_counter_is_named():
    text = NETSTAT_6_18.replace('TCPKeepAlive', 'TCPKeepAliveX')
    with pytest.raises(ke.KernelEvidenceError) as err:
        ke.counters(ke.parse_netstat(text), '/proc/net/netstat')
    assert str(err.value) == ke.MSG_NO_TCPEXT % ('/proc/net/netstat', 'TCPKeepAlive')


def test_parse_proc_tcp_real_text():
    rows = ke.parse_proc_tcp(PROC_TCP_6_18, hz=100)
    assert [(r['local'], r['remote'], r['state'], r['timer']) for r in rows] == [
        ('127.0.0.1:5000', '0.0.0.0:0', 'LISTEN', 'off'),
        ('127.0.0.1:5000', '127.0.0.1:22345', 'ESTABLISHED', 'off'),
        ('127.0.0.1:22345', '127.0.0.1:5000', 'ESTABLISHED', 'keepalive')]
    assert rows[2]['expires_s'] == 0.53 and rows[2]['timer_count'] == 0 and rows[2]['inode'] == 2433043
    client, ours, others = ke.classify(rows, 22345, 5000)
    assert client is rows[2] and ours == rows[1:] and others == []
    # the same rows seen from another experiment's port: the keepalive socket is another connection
    assert ke.classify(rows, 22346, 5001)[2] == [rows[2]]


def test_diag_messages_round_trip():
    """A netlink message as the kernel builds it (inet_diag_msg + INET_DIAG_INFO) parses to the same row."""
    import socket
    import struct
    msg = ke.DIAG_MSG.pack(socket.AF_INET, 1, 2, 2, socket.htons(22345), socket.htons(5000),
                           socket.inet_aton('198.19.61.2') + b'\0' * 12, socket.inet_aton('198.19.61.3') + b'\0' * 12,
                           0, 0, 980, 0, 0, 0, 77)
    info = ke.TCP_INFO_HEAD.pack(1, 0, 0, 2, 0) + b'\0' * 3 + b'\0' * 36 + struct.pack('=III', 1500, 0, 1250) + b'\0' * 4
    attr = ke.RTA_HDR.pack(ke.RTA_HDR.size + len(info), ke.INET_DIAG_INFO) + info
    payload = msg + attr
    data = ke.NLMSG_HDR.pack(16 + len(payload), ke.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + payload
    data += ke.NLMSG_HDR.pack(20, ke.NLMSG_DONE, 2, 1, 0) + struct.pack('=i', 0)
    (kind, body), (done, _done_body) = ke.split_messages(data)
    assert (kind, done) == (ke.SOCK_DIAG_BY_FAMILY, ke.NLMSG_DONE)
    row = ke.parse_diag(body)
    assert (row['local'], row['remote'], row['timer'], row['expires_s'], row['timer_count'], row['probes'], row['backoff'],
            row['inode']) == ('198.19.61.2:22345', '198.19.61.3:5000', 'keepalive', 0.98, 2, 2, 0, 77)
    assert (row['last_data_sent_ms'], row['last_data_recv_ms']) == (1500, 1250)
    # a tcp_info cut after its head (an old kernel's): no data times
    short = ke.RTA_HDR.pack(ke.RTA_HDR.size + 8, ke.INET_DIAG_INFO) + info[:8]
    assert ke.parse_diag(msg + short)['last_data_recv_ms'] is None


@pytest.mark.parametrize('port, peer', [(0, None), (70000, None), (22345, -1)])
def test_bad_ports_are_named(port, peer):
    with pytest.raises(ke.KernelEvidenceError) as err:
        ke.check_ports(port, peer)
    assert 'must be a TCP port 1..65535' in str(err.value) and 'give the port' in str(err.value)


# ---------------------------------------------------------------- the evidence


def sample_of(t, keepalive, abort, timeouts=0, socket=None, others=(), inode=4026532000):
    return {'time': t, 'netns_inode': inode, 'source': 'inet_diag', 'source_error': None, 'socket': socket,
            'counters': {'tcp_keepalive': keepalive, 'tcp_abort_on_timeout': abort, 'tcp_timeouts': timeouts},
            'others': list(others), 'others_count': len(others), 'ours': [], 'sockets_count': 3, 'changed': False}


TIMER = {'local': '127.0.0.1:22345', 'remote': '127.0.0.1:12345', 'state': 'ESTABLISHED', 'timer': 'keepalive',
         'expires_s': 0.98, 'timer_count': 2, 'probes': 2, 'backoff': 0}
OTHER = dict(TIMER, local='127.0.0.1:40000', remote='127.0.0.1:22', timer_count=0, probes=0)


def kernel(end_keepalive=105, end_abort=8, others=(), end=True, inode=4026532000):
    return kj.check_kernel({'server_port': '12345', 'start': sample_of(999.0, 100, 7),
                            'samples': [sample_of(1006.5, 103, 7, socket=TIMER, others=others), {'skipped': True}],
                            'end': sample_of(1009.0, end_keepalive, end_abort, inode=inode) if end else {}})


def judge_kernel(k, loopback=True, analysis=None):
    a = analysis or _rep.analysis()
    return kj.evidence(k, a, observe(a, 22345), _rep.CLIENT_OK, loopback, 22345)


def test_capture_and_kernel_agree():
    ev, reasons = judge_kernel(kernel())
    assert reasons == [] and ev['agree'] is True
    assert (ev['tcp_keepalive'], ev['tcp_abort_on_timeout'], ev['tcp_timeouts']) == (5, 1, 0)
    assert ev['capture'] == {'client_probes': 5, 'server_probes': 0, 'abort': 1}
    assert ev['timer_samples'] == [{'at_s': 7.5, 'state': 'ESTABLISHED', 'timer': 'keepalive', 'expires_s': 0.98,
                                    'unanswered': 2, 'tcpi_probes': 2, 'tcpi_backoff': 0}]


def test_a_disagreement_fails_with_both_numbers():
    ev, reasons = judge_kernel(kernel(end_keepalive=104, end_abort=7))
    assert ev['agree'] is False
    assert reasons == [kj.MSG_DISAGREE_PROBES % (5, '5 from the client and 0 from the server, loopback', 4),
                       kj.MSG_DISAGREE_ABORT % ("the capture shows the client's RST after 3 unanswered probes", 1, 0)]


def test_loopback_counts_the_servers_probes_too():
    a = _rep.analysis()
    conn = a['connections'][0]
    conn['probers'].append({'endpoint': '127.0.0.1:12345', 'probes': [{'time': 3.0, 'answered': True}], 'answered': 1,
                            'final_unanswered': 0})
    ev, reasons = judge_kernel(kernel(end_keepalive=106), analysis=a)
    assert reasons == [] and ev['capture']['server_probes'] == 1
    # two hosts: the server's probes leave from another namespace and do not count in the client's
    ev, reasons = judge_kernel(kernel(end_keepalive=106), loopback=False, analysis=a)
    assert reasons == [kj.MSG_DISAGREE_PROBES % (5, '5 from the client', 6)]


@pytest.mark.parametrize('kw, note', [
    ({'others': [OTHER]}, 'kernel evidence not judged: 1 other connection(s)'),
    ({'end': False}, 'kernel evidence not judged: no sample after the client ended'),
    ({'inode': 1}, 'kernel evidence not judged: the samples come from different network namespaces'),
])
def test_what_could_move_the_counters_is_not_judged(kw, note):
    ev, reasons = judge_kernel(kernel(end_keepalive=120, **kw))
    assert reasons == [] and ev['agree'] is None and ev['notes'][-1].startswith(note)


@pytest.mark.parametrize('value', [[], {'start': {}}, {'server_port': 1, 'start': {'counters': {}}},
                                   {'server_port': 1, 'start': sample_of(1.0, 1, 1), 'extra': 1}])
def test_malformed_kernel_data_is_refused_and_nothing_is_written(tmp_path, value):
    dest = tmp_path / 'r'
    with pytest.raises(ReportError) as err:
        write_experiment(str(dest), _rep.good_data(kernel=value))
    assert str(err.value).startswith('data.kernel must be a dict with server_port') and not dest.exists()


def test_report_carries_evidence_and_a_disagreement_fails(tmp_path):
    report, text = write_experiment(str(tmp_path / 'ok'), _rep.good_data(kernel=kernel()))
    assert report['verdict'] == 'pass' and report['evidence']['kernel']['agree'] is True
    stored = json.loads((tmp_path / 'ok' / 'report.json').read_text())
    assert stored['evidence']['kernel']['tcp_keepalive'] == 5 and stored['evidence']['kernel']['tcp_abort_on_timeout'] == 1
    assert '- kernel evidence (client\'s namespace, inet_diag): TCPKeepAlive +5, TCPAbortOnTimeout +1' in text
    assert 'abort 1 - agree' in text and 'timer samples (unanswered/timer): 2/keepalive' in text
    report, text = write_experiment(str(tmp_path / 'bad'), _rep.good_data(kernel=kernel(end_keepalive=104)))
    assert report['verdict'] == 'fail' and 'DISAGREE' in text
    assert kj.MSG_DISAGREE_PROBES % (5, '5 from the client and 0 from the server, loopback', 4) in report['reasons']
    # without kernel data the report is as before
    report, _text = write_experiment(str(tmp_path / 'none'), _rep.good_data())
    assert 'evidence' not in report and report['verdict'] == 'pass'


# ---------------------------------------------------------------- the real kernel

NS_C, NS_S = 'tkk-c', 'tkk-s'
C_ADDR, S_ADDR = '198.19.61.1', '198.19.61.2'
S_PORT, C_PORT, O_PORT = 5061, 22361, 22362

CLIENT = textwrap.dedent('''\
    import socket, sys, time
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.connect((sys.argv[1], %d))
    print("connected", flush=True)
    try:
        s.recv(1)
        print("closed", flush=True)
    except OSError as exc:
        print("error", exc.errno, flush=True)
    ''') % S_PORT
SERVER = textwrap.dedent('''\
    import socket, sys, time
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], %d))
    srv.listen(8)
    print("listening", flush=True)
    held = []
    while True:
        conn, _ = srv.accept()
        held.append(conn)
    ''') % S_PORT

MSG_LEFT = 'network namespace %s exists (an interrupted run of this test?): not ours to remove; check and ip netns del %s'
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip') or not shutil.which('iptables'),
                                reason='needs root, ip and iptables')


def sh(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def netstat_here(ns):
    """TCPKeepAlive and TCPAbortOnTimeout of a namespace, read by this test itself."""
    lines = sh('ip', 'netns', 'exec', ns, 'cat', '/proc/net/netstat').splitlines()
    for head, values in zip(lines[0::2], lines[1::2]):
        if head.startswith('TcpExt:'):
            pairs = dict(zip(head.split(), values.split()))
            return int(pairs['TCPKeepAlive']), int(pairs['TCPAbortOnTimeout'])
    raise AssertionError('no TcpExt in /proc/net/netstat of %s' % ns)


def ss_timer(ns, port):
    """(timer, unanswered) of `ss -tno` for the socket with local port `port`, or None."""
    out = sh('ip', 'netns', 'exec', ns, 'ss', '-tnoH', 'sport', '= :%d' % port)
    match = re.search(r'timer:\((\w+),[^,]*,(\d+)\)', out)
    return (match.group(1), int(match.group(2))) if match else None


@pytest.fixture
def lab():
    procs, made = [], []
    for ns in (NS_C, NS_S):
        if os.path.exists('/run/netns/' + ns):
            pytest.fail(MSG_LEFT % (ns, ns))
    try:
        for ns in (NS_C, NS_S):
            sh('ip', 'netns', 'add', ns)
            made.append(ns)
        sh('ip', 'link', 'add', 'tkkc0', 'netns', NS_C, 'type', 'veth', 'peer', 'name', 'tkks0', 'netns', NS_S)
        for ns, dev, addr in ((NS_C, 'tkkc0', C_ADDR), (NS_S, 'tkks0', S_ADDR)):
            sh('ip', '-n', ns, 'addr', 'add', addr + '/24', 'dev', dev)
            sh('ip', '-n', ns, 'link', 'set', dev, 'up')
            sh('ip', '-n', ns, 'link', 'set', 'lo', 'up')

        def start(ns, code, *args):
            proc = subprocess.Popen(['ip', 'netns', 'exec', ns, sys.executable, '-c', code] + list(args),
                                    stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout.readline().strip() in ('listening', 'connected')
            return proc
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for ns in made:   # only the namespaces this test made (the veth pair goes with them)
            subprocess.run(['ip', 'netns', 'del', ns], check=False)


def sample_in(ns, port, peer=S_PORT):
    return run_in('/run/netns/' + ns, ke.sample, (port, peer))


def poll(what, func, ok, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = func()
        if ok(value):
            return value
        time.sleep(0.05)
    raise AssertionError('never saw ' + what)


@needs_root
def test_the_kernel_counts_what_the_code_reads(lab):
    """Two namespaces, a keepalive client (idle 1 s, interval 2 s, 3 probes) silenced by a DROP in the server's."""
    lab(NS_S, SERVER, S_ADDR)
    before_here = netstat_here(NS_C)
    start = sample_in(NS_C, C_PORT)
    assert (start['counters']['tcp_keepalive'], start['counters']['tcp_abort_on_timeout']) == before_here
    client = lab(NS_C, CLIENT, S_ADDR, str(C_PORT))
    time.sleep(2.4)   # an answered probe at ~1 s (the next one is due at ~3 s: 2 s after the first)
    sh('ip', 'netns', 'exec', NS_S, 'iptables', '-w', '10', '-I', 'INPUT', '-p', 'tcp', '--dport', str(S_PORT), '-j', 'DROP')
    seen = {}
    for k in (1, 2, 3):

        def shows_k(sample, k=k):
            return (sample['socket'] or {}).get('timer_count') == k

        poll('unanswered probe %d' % k, lambda: sample_in(NS_C, C_PORT), shows_k)
        # a sample reads the counters, then the sockets: the one that first shows probe k may have read the
        # counters just before it went out; the next sample that still shows it has counted it
        one = poll('unanswered probe %d counted' % k, lambda: sample_in(NS_C, C_PORT), shows_k, seconds=1.5)
        sock = one['socket']
        assert sock['timer'] == 'keepalive' and sock['probes'] == k and sock['local'] == '%s:%d' % (C_ADDR, C_PORT)
        assert 0 < sock['expires_s'] <= 2.3
        assert ss_timer(NS_C, C_PORT) in (('keepalive', k), ('keepalive', k + 1))   # ss, read here
        seen[k] = one['counters']['tcp_keepalive'] - start['counters']['tcp_keepalive']
    assert client.stdout.readline().split() == ['error', '110']   # ETIMEDOUT
    assert client.wait(timeout=10) == 0   # its fd, and so the CLOSE socket, is gone only when it has exited
    end = sample_in(NS_C, C_PORT)
    after_here = netstat_here(NS_C)
    assert (end['counters']['tcp_keepalive'], end['counters']['tcp_abort_on_timeout']) == after_here
    delta = after_here[0] - before_here[0]
    assert after_here[1] - before_here[1] == 1                  # the abort after the third unanswered probe
    assert delta >= 4 and seen[3] - seen[1] == 2 and delta == seen[3]   # answered ones, then exactly 3 unanswered
    assert end['socket'] is None and end['others_count'] == 0 and end['source'] == 'inet_diag'


def both_sources():
    def key(rows):
        return sorted((r['local'], r['remote'], r['state'], r['timer'], r['timer_count']) for r in rows)
    return key(ke.diag_sockets(2) + ke.diag_sockets(10)), key(ke.proc_sockets())


@needs_root
def test_other_keepalive_connections_and_the_loopback_server_are_told_apart(lab):
    """Loopback in one namespace: the server's accepted socket is the connection's own, another keepalive connection
    of the namespace is listed as one that could move the counters."""
    lab(NS_C, SERVER, '127.0.0.1')
    lab(NS_C, CLIENT, '127.0.0.1', str(C_PORT))
    one = sample_in(NS_C, C_PORT)
    assert one['others_count'] == 0 and len(one['ours']) == 2 and one['socket']['timer'] == 'keepalive'
    # /proc/net/tcp, the fallback, lists the same sockets with the same timers as inet_diag
    diag, proc = run_in('/run/netns/' + NS_C, both_sources)
    assert diag == proc and ['127.0.0.1:%d' % C_PORT, '127.0.0.1:%d' % S_PORT, 'ESTABLISHED', 'keepalive', 0] in diag
    lab(NS_C, CLIENT, '127.0.0.1', str(O_PORT))
    two = poll('the other connection', lambda: sample_in(NS_C, C_PORT), lambda s: s['others_count'])
    assert [(o['local'], o['timer']) for o in two['others']] == [('127.0.0.1:%d' % O_PORT, 'keepalive')]
    ev, _reasons = judge_kernel(kj.check_kernel({'server_port': S_PORT, 'start': one, 'samples': [], 'end': two}))
    assert ev['agree'] is None and ev['others']['count'] == 1
