# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""evidence.kernel against the real kernel, in lab namespaces of this test (tk5a-<random>, 198.19.81.0/24):

- a VM's situation: another keepalive connection of the client's namespace (as the controller's SSH connection to
  sshd, TCPKeepAlive yes) probes while the experiment runs. Without a watch the evidence is not judged (before: the
  only outcome); with the watch the role runs (kernel_counters watch: started / stopped - tcpdump -i any of every TCP
  segment but the experiment's connection) the other connection's probes are counted and capture and kernel agree
  exactly; tshark counts them in a tcpdump of this test's own;
- data in flight: the client writes into a DROP and TCP_USER_TIMEOUT ends it; RetransSegs, TCPLossProbes,
  TCPTimeouts and TCPAbortOnTimeout agree with the resends the capture shows.

The counters are read here from /proc/net/netstat and /proc/net/snmp, and the probes and resends counted with tshark
(tcp.analysis.keep_alive, tcp.len) - independently of the collection's own code."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_evidence as ke
from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_judge as kj
from ansible_collections.tcplab.keepalive.plugins.module_utils import _kernel_watch as kw
from ansible_collections.tcplab.keepalive.plugins.module_utils._netns import run_in
from ansible_collections.tcplab.keepalive.plugins.module_utils._report import write_experiment
from ansible_collections.tcplab.keepalive.plugins.modules import capture as capture_module
from ansible_collections.tcplab.keepalive.plugins.modules import kernel_counters as kc_module
from ansible_collections.tcplab.keepalive.tests.unit.plugins.modules.module_args import module_result
from ansible_collections.tcplab.keepalive.tests.unit.plugins.module_utils.lab_netns import namespaces

NETNS_PREFIX = 'tk5a-'


@pytest.fixture
def netns_factory():
    """This test's namespaces (tk5a-<random>), removed afterwards: lab_netns.namespaces."""
    with namespaces(NETNS_PREFIX) as make:
        yield make


C_ADDR, S_ADDR = '198.19.81.1', '198.19.81.2'
S_PORT, C_PORT, O_PORT = 5081, 22381, 2281
real = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ('ip', 'iptables', 'tcpdump', 'tshark')),
                          reason='needs root, ip, iptables, tcpdump and tshark')

SERVER = textwrap.dedent('''\
    import socket, sys, threading
    def serve(port):
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((sys.argv[1], port))
        srv.listen(8)
        held = []
        while True:
            held.append(srv.accept()[0])
    for port in sys.argv[2:]:
        threading.Thread(target=serve, args=(int(port),), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()
    ''')
# argv: address port local_port idle intvl cnt user_timeout_ms write_after_s
CLIENT = textwrap.dedent('''\
    import socket, sys, time
    addr, port, local, idle, intvl, cnt, user, write = sys.argv[1:]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, int(idle))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, int(intvl))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, int(cnt))
    if int(user):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(user))
    if int(local):
        s.bind(("0.0.0.0", int(local)))
    s.connect((addr, int(port)))
    print("connected", flush=True)
    if float(write) >= 0:
        sys.stdin.readline()
        s.send(b"tcplab-keepalive request\\n")
    try:
        s.recv(1)
        print("closed", flush=True)
    except OSError as exc:
        print("error", exc.errno, flush=True)
    ''')


def sh(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def counters_here(ns):
    """TCPKeepAlive, TCPAbortOnTimeout, TCPTimeouts, TCPLossProbes and RetransSegs of a namespace, read here."""
    out = {}
    for path in ('/proc/net/netstat', '/proc/net/snmp'):
        lines = sh('ip', 'netns', 'exec', ns, 'cat', path).splitlines()
        for head, values in zip(lines[0::2], lines[1::2]):
            out.update(zip(head.split()[1:], values.split()[1:]))
    return {k: int(out[k]) for k in ('TCPKeepAlive', 'TCPAbortOnTimeout', 'TCPTimeouts', 'TCPLossProbes', 'RetransSegs')}


def gone_or_zombie(pid):
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except FileNotFoundError:
        return True


def bracketed(lab, take):
    """A sample, and (the counters read here just before, just after) when it lies between them (counters only
    grow), else None."""
    before = counters_here(lab['client'])
    got = take()
    after = counters_here(lab['client'])
    names = {'tcp_keepalive': 'TCPKeepAlive', 'tcp_abort_on_timeout': 'TCPAbortOnTimeout', 'tcp_timeouts': 'TCPTimeouts',
             'tcp_loss_probes': 'TCPLossProbes', 'tcp_retrans_segs': 'RetransSegs'}
    inside = all(before[name] <= got['counters'][key] <= after[name] for key, name in names.items())
    return got, ((before, after) if inside else None)


def tshark_count(pcap, display_filter):
    out = sh('tshark', '-r', pcap, '-Y', display_filter, '-T', 'fields', '-e', 'frame.number')
    return len(out.split())


@pytest.fixture
def lab(netns_factory, tmp_path):
    client_ns, server_ns = netns_factory(), netns_factory()
    suffix = secrets.token_hex(3)
    sh('ip', 'link', 'add', 'tk5a' + suffix, 'netns', client_ns, 'type', 'veth', 'peer', 'name', 'tk5b' + suffix,
       'netns', server_ns)
    for ns, dev, addr in ((client_ns, 'tk5a' + suffix, C_ADDR), (server_ns, 'tk5b' + suffix, S_ADDR)):
        sh('ip', '-n', ns, 'addr', 'add', addr + '/24', 'dev', dev)
        sh('ip', '-n', ns, 'link', 'set', dev, 'up')
    procs = []

    def start(ns, code, *args):
        proc = subprocess.Popen(['ip', 'netns', 'exec', ns, sys.executable, '-c', code] + [str(a) for a in args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() in ('listening', 'connected')
        return proc
    try:
        start(server_ns, SERVER, S_ADDR, S_PORT, O_PORT)
        yield {'client': client_ns, 'server': server_ns, 'dev': 'tk5a' + suffix, 'start': start, 'dir': tmp_path}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def capture(lab, name, iface, bpf, **extra):
    """A capture by the capture module in the client's namespace, as the role starts it."""
    args = dict({'iface': iface, 'filter': bpf, 'path': str(lab['dir'] / name), 'netns': lab['client'],
                 'backend': 'tcpdump', 'state_dir': str(lab['dir'] / 'state')}, **extra)
    result = module_result(capture_module.main, args)
    assert not result.get('failed'), result
    return str(lab['dir'] / name)


def stop(lab, path):
    result = module_result(capture_module.main, {'state': 'stopped', 'path': path, 'state_dir': str(lab['dir'] / 'state')})
    assert not result.get('failed'), result
    return result['analysis']


def sample(lab):
    return run_in('/run/netns/' + lab['client'], ke.sample, (C_PORT, S_PORT))


def report_data(lab, pcap, analysis, start, end, client, watch=None, **extra):
    kernel = {'server_port': S_PORT, 'start': start, 'end': end, 'samples': [], 'capture_host': 'client'}
    if watch is not None:
        kernel['others_watch'] = watch
    return dict({'run_id': 'tk5a', 'settings': {'time': 1, 'intvl': 1, 'probes': 2},
                 'expected': {'time': 1, 'intvl': 1, 'probes': 2}, 'client_port': C_PORT, 'pcaps': [pcap],
                 'analysis': analysis, 'client': client, 'kernel': kernel,
                 'hosts': {'client': 'c', 'server': 's', 'loopback': False}}, **extra)


def drop(lab):
    sh('ip', 'netns', 'exec', lab['server'], 'iptables', '-w', '10', '-I', 'INPUT', '-p', 'tcp', '--dport', str(S_PORT),
       '-j', 'DROP')


def kernel_counters(lab, **args):
    result = module_result(kc_module.main, dict({'port': C_PORT, 'peer_port': S_PORT, 'netns': lab['client']}, **args))
    assert not result.get('failed'), result
    return result


@real
def test_another_keepalive_connection_is_watched_and_the_evidence_judged(lab, tmp_path):
    # this test's own capture, from before the other connection's handshake (tshark needs it to tell a probe); in
    # immediate mode as the watch is: a probe the kernel still held for it when it stops would be missing from its count
    mine = subprocess.Popen(['ip', 'netns', 'exec', lab['client'], 'tcpdump', '-i', 'any', '-n', '-U', '--immediate-mode',
                             '-s', '128', '-w', str(tmp_path / 'independent.pcap'), 'tcp'], stderr=subprocess.PIPE, text=True)
    assert 'listening on any' in mine.stderr.readline() + mine.stderr.readline()
    # the other connection (the SSH connection's part): keepalive every second, answered, there before the run - the
    # watch sees it mid-stream
    lab['start'](lab['client'], CLIENT, S_ADDR, O_PORT, 0, 1, 1, 9, 0, -1)
    time.sleep(1.2)
    exp = capture(lab, 'client.pcap', lab['dev'], 'tcp port %d' % S_PORT)
    watch_path = str(tmp_path / 'watch' / 'others.pcap')
    start, start_read = bracketed(lab, lambda: kernel_counters(lab, watch='started', watch_path=watch_path,
                                                               watch_seconds=60))
    assert start['changed'] and start['watch']['filter'] == 'tcp and not (port %d and port %d)' % (C_PORT, S_PORT)
    assert start['others_count'] == 1 and C_ADDR in start['addresses']
    client = lab['start'](lab['client'], CLIENT, S_ADDR, S_PORT, C_PORT, 1, 1, 2, 0, -1)
    drop(lab)
    assert client.stdout.readline().split() == ['error', '110']     # ETIMEDOUT after 2 unanswered probes
    end, end_read = bracketed(lab, lambda: kernel_counters(lab, watch='stopped', watch_path=watch_path))
    others = end.pop('watch')['seen']
    assert not os.listdir(str(tmp_path / 'watch'))     # the pcap with the other connections' headers is gone
    time.sleep(0.3)
    mine.terminate()
    mine.wait()
    analysis = stop(lab, exp)
    outcome = {'state': 'failed', 'errno': 'ETIMEDOUT'}
    # without the watch: not judged, as before
    report, _text = write_experiment(str(tmp_path / 'unwatched'), report_data(lab, exp, analysis, start, end, outcome))
    assert report['evidence']['kernel']['agree'] is None and report['notes'][-1].endswith(kj.NOTE_NOT_WATCHED)
    # with it: judged, and exact
    report, text = write_experiment(str(tmp_path / 'watched'),
                                    report_data(lab, exp, analysis, start, end, outcome, watch={'seen': others}))
    ev = report['evidence']['kernel']
    sent = sh('tshark', '-r', str(tmp_path / 'independent.pcap'), '-Y', 'tcp.analysis.keep_alive && ip.src == %s' % C_ADDR,
              '-T', 'fields', '-e', 'frame.time_epoch', '-e', 'tcp.srcport').split()
    assert ev['agree'] is True, (report['reasons'], 'window', start['time'], end['time'], 'watch', others['probes'],
                                 others['unsure'], 'tshark', sent)
    assert not [r for r in report['reasons'] if r.startswith('capture and kernel disagree')]
    assert ev['capture']['client_probes'] == 2 and ev['others_watch']['probes'] >= 2
    # independently: the namespace's own counters read here around each sample, and tshark's count of the probes in
    # this test's own capture between the two samples
    assert start_read and end_read
    assert end_read[1]['TCPAbortOnTimeout'] - start_read[0]['TCPAbortOnTimeout'] == ev['tcp_abort_on_timeout'] == 1
    window = 'frame.time_epoch > %f && frame.time_epoch <= %f' % (start['time'], end['time'])
    ours = tshark_count(str(tmp_path / 'independent.pcap'), 'tcp.analysis.keep_alive && ip.src == %s && tcp.srcport == %d'
                        ' && %s' % (C_ADDR, C_PORT, window))
    theirs = tshark_count(str(tmp_path / 'independent.pcap'), 'tcp.analysis.keep_alive && ip.src == %s && '
                          'tcp.srcport != %d && %s' % (C_ADDR, C_PORT, window))
    assert (ours, theirs) == (ev['capture']['client_probes'], ev['others_watch']['probes'])
    assert ev['tcp_keepalive'] == ours + theirs
    assert '+ %d from other connections (watched)' % theirs in text and '- agree' in text


@real
def test_the_watch_is_ours_only_and_absent_removes_it(lab, tmp_path):
    watch_path = str(tmp_path / 'w' / 'others.pcap')
    first = kernel_counters(lab, watch='started', watch_path=watch_path, watch_seconds=60)
    again = module_result(kc_module.main, {'port': C_PORT, 'netns': lab['client'], 'watch': 'started',
                                           'watch_path': watch_path})
    assert again['failed'] and again['msg'] == kw.MSG_RUNNING % (watch_path, first['watch']['pid'])
    gone = kernel_counters(lab, watch='absent', watch_path=watch_path)
    assert gone['changed'] and gone['watch']['removed'] is True and not os.listdir(str(tmp_path / 'w'))
    assert gone_or_zombie(first['watch']['pid'])
    assert kernel_counters(lab, watch='absent', watch_path=watch_path)['changed'] is False


@real
def test_purged_stops_the_watches_of_its_namespace_only_and_never_removes_by_name(lab, tmp_path):
    """rollback.yml after a SIGKILLed controller: the watch it left (still running) is stopped and its files go; a
    watch of another namespace in the same directory and a file without a record stay."""
    where = tmp_path / 'w'
    mine = kernel_counters(lab, watch='started', watch_path=str(where / 'mine.pcap'), watch_seconds=60)
    theirs = kernel_counters(lab, watch='started', watch_path=str(where / 'theirs.pcap'), watch_seconds=60,
                             netns=lab['server'])
    stranger = where / 'stranger.pcap'
    stranger.write_bytes(b'not ours')
    # absent without a record naming the path leaves the file (never by its name alone)
    assert kernel_counters(lab, watch='absent', watch_path=str(stranger))['changed'] is False and stranger.exists()
    checked = kernel_counters(lab, watch='purged', watch_path=str(where), _ansible_check_mode=True)
    assert checked['changed'] and checked['watch']['purged'] == [str(where / 'mine.pcap')]
    assert not gone_or_zombie(mine['watch']['pid'])            # check mode stopped nothing
    purged = kernel_counters(lab, watch='purged', watch_path=str(where))
    assert purged['changed'] and purged['watch']['purged'] == [str(where / 'mine.pcap')]
    assert gone_or_zombie(mine['watch']['pid']) and not gone_or_zombie(theirs['watch']['pid'])
    assert sorted(os.listdir(str(where))) == sorted(['stranger.pcap', 'theirs.pcap', 'theirs.pcap.watch.json',
                                                     'theirs.pcap.watch.log'])
    assert kernel_counters(lab, watch='purged', watch_path=str(where))['changed'] is False
    kernel_counters(lab, watch='absent', watch_path=str(where / 'theirs.pcap'), netns=lab['server'])
    assert gone_or_zombie(theirs['watch']['pid'])


@real
def test_data_in_flight_counters_agree_with_the_resends(lab, tmp_path):
    exp = capture(lab, 'client.pcap', lab['dev'], 'tcp port %d' % S_PORT)
    start, start_read = bracketed(lab, lambda: sample(lab))
    assert start['counters']['tcp_retrans_segs'] is not None and start['counters']['tcp_loss_probes'] is not None
    client = lab['start'](lab['client'], CLIENT, S_ADDR, S_PORT, C_PORT, 20, 1, 3, 1000, 0)
    time.sleep(0.3)
    drop(lab)
    write_at = time.time()
    client.stdin.write('\n')
    client.stdin.flush()
    assert client.stdout.readline().split() == ['error', '110']     # TCP_USER_TIMEOUT
    failed_at = time.time()
    end, end_read = bracketed(lab, lambda: sample(lab))
    before, after = start_read[0], end_read[1]      # nothing else runs in the namespace: the counters stand still
    time.sleep(0.3)
    analysis = stop(lab, exp)
    outcome = {'state': 'failed', 'errno': 'ETIMEDOUT', 'requested_at': write_at, 'failed_at': failed_at}
    data = report_data(lab, exp, analysis, start, end, outcome, drop_at=write_at - 0.01,
                       in_flight={'rto_ms': 204, 'retries2': 15, 'user_timeout_ms': 1000})
    report, text = write_experiment(str(tmp_path / 'r'), data)
    ev = report['evidence']['kernel']
    assert ev['agree'] is True, report['reasons']
    sent = tshark_count(exp, 'tcp.len > 0 && ip.src == %s' % C_ADDR)
    assert sent >= 3 and ev['capture']['resends'] == sent - 1
    assert ev['tcp_retrans_segs'] == after['RetransSegs'] - before['RetransSegs'] == sent - 1
    assert ev['tcp_timeouts'] == after['TCPTimeouts'] - before['TCPTimeouts']
    assert ev['tcp_timeouts'] + ev['tcp_loss_probes'] == sent       # every resend, and the expiry that ended it
    assert ev['tcp_abort_on_timeout'] == 1 and ev['tcp_keepalive'] == 0
    assert 'RetransSegs +%d' % (sent - 1) in text
