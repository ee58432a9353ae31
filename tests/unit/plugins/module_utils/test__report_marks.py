# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The moment the middlebox forgot the flow: watched in a real conntrack table (a namespace whose established
timeout is 2 s), recorded in report.json (observed.forgotten_at / forgotten_s), a line of the timeline, and marked
in timeline.png with the idle timeout - checked on the drawn figure's artists, not its pixels."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _report
from ansible_collections.tcplab.keepalive.plugins.module_utils import _report_marks as marks
from ansible_collections.tcplab.keepalive.plugins.module_utils._report import write_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
WATCH = os.path.join(ROOT, 'roles', 'experiment', 'files', 'conntrack_watch.py')
FAULT = {'kind': 'idle_timeout', 'seconds': 6, 'action': 'drop', 'middlebox': 'mb', 'preset': None}
TIMEDOUT = {'state': 'failed', 'errno': 'ETIMEDOUT', 'connected_at': 100.0, 'failed_at': 113.1, 'seconds': 13.1}
ANSWERED = {'state': 'answered', 'errno': None, 'connected_at': 100.0, 'requested_at': 119.5, 'answered_at': 119.51,
            'seconds': 19.51}
GONE = {'started_at': 100.2, 'first_seen_at': 100.2, 'last_seen_at': 105.9, 'renewals': 0, 'forgotten_at': 106.1,
        'error': None}
KEPT = {'started_at': 100.2, 'first_seen_at': 100.2, 'last_seen_at': 119.0, 'renewals': 9, 'forgotten_at': None,
        'error': None}


def load_watch():
    spec = importlib.util.spec_from_file_location('conntrack_watch', WATCH)
    module = importlib.util.module_from_spec(spec)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True    # no __pycache__ in the role's files
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


def ka(time_):
    return {'time': time_, 'intvl': 1, 'probes': 3}


def data(keepalive, client, watch, action='drop'):
    fault = dict(FAULT, action=action, conntrack=json.dumps(watch) if watch is not None else '')
    return {'run_id': 'r1', 'settings': ka(keepalive), 'expected': ka(keepalive), 'client_port': 22345,
            'client': client, 'fault': fault, 'hosts': {'client': 'c', 'server': 's', 'loopback': False}, 'pcaps': []}


# --- the watch, with a table that changes under a fake clock

class Table:
    """A conntrack table in time: (from, to, remaining timeout at 'from') spans of the flow being present."""

    def __init__(self, spans, flow=('10.0.0.1', '10.0.0.2', 22345, 12345)):
        self.now, self.spans, self.flow = 0.0, spans, flow

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def read(self):
        line = 'ipv4     2 tcp      6 %d ESTABLISHED src=%s dst=%s sport=%d dport=%d src=x dst=y sport=1 dport=2\n'
        for start, end, timeout in self.spans:
            if start <= self.now < end:
                return 'ipv4 2 udp 17 20 src=1 dst=2 sport=3 dport=4\n' + line % ((timeout - int(self.now - start),) + self.flow)
        return ''


def test_the_watch_records_the_moment_the_flow_left_the_table():
    table = Table([(0, 3.0, 2), (3.0, 6.1, 6)])      # renewed at 3 s, expired at 6.1 s
    out = load_watch().watch(10, table.flow, clock=table.clock, sleep=table.sleep, reader=table.read)
    assert out['forgotten_at'] == pytest.approx(6.25) and out['first_seen_at'] == 0.0
    assert out['renewals'] == 1 and out['renewed_at'] == [3.0] and out['max_timeout'] == 6
    assert out['ended_at'] == pytest.approx(10.0) and out['error'] is None


def test_a_flow_kept_alive_is_not_forgotten_and_another_flow_does_not_count():
    table = Table([(0, 10.0, 6)])
    out = load_watch().watch(5, table.flow, clock=table.clock, sleep=table.sleep, reader=table.read)
    assert out['forgotten_at'] is None and out['last_seen_at'] == pytest.approx(4.75)
    other = load_watch().watch(5, ('10.0.0.1', '10.0.0.2', 22346, 12345), clock=table.clock, sleep=table.sleep,
                               reader=table.read)
    assert other['first_seen_at'] is None and other['forgotten_at'] is None


def test_an_unreadable_table_still_waits_the_full_time_and_says_why():
    table = Table([])

    def broken():
        raise OSError('cannot read /proc/net/nf_conntrack and no conntrack tool: nope')
    out = load_watch().watch(7, table.flow, clock=table.clock, sleep=table.sleep, reader=broken)
    assert table.now == pytest.approx(7) and 'no conntrack tool' in out['error']
    assert marks.notes(out, 0.0) == [marks.NOTE_WATCH % out['error']]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which('ip'), reason='needs root and iproute2 (network namespaces)')
def test_a_real_conntrack_table_forgets_an_idle_flow_after_its_timeout():
    """A loopback connection in a namespace whose established timeout is 2 s: the watch (the script itself, run
    in the namespace) sees the flow, then sees it gone 2 s after its last packet."""
    ns = 'tkr-unit-%d' % os.getpid()
    subprocess.run(['ip', 'netns', 'add', ns], check=True)
    holder = None
    try:
        def run(*argv):
            return subprocess.run(['ip', 'netns', 'exec', ns] + list(argv), check=True, capture_output=True, text=True)
        run('ip', 'link', 'set', 'lo', 'up')
        run('iptables', '-w', '10', '-A', 'INPUT', '-m', 'conntrack', '--ctstate', 'ESTABLISHED', '-j', 'ACCEPT')
        run('sh', '-c', 'echo 2 > /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established')
        pair = ('import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); '
                's.bind(("127.0.0.1", 12399)); s.listen(1); c = socket.socket(); c.bind(("127.0.0.1", 40399)); '
                'c.connect(("127.0.0.1", 12399)); a, _ = s.accept(); print("up", flush=True); time.sleep(6)')
        holder = subprocess.Popen(['ip', 'netns', 'exec', ns, sys.executable, '-c', pair], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == 'up'
        connected = time.time()
        out = json.loads(run(sys.executable, WATCH, '4', '127.0.0.1', '127.0.0.1', '40399', '12399').stdout)
        assert out['error'] is None and out['first_seen_at'] is not None and out['state'] == 'ESTABLISHED'
        assert out['forgotten_at'] is not None, out
        assert 1.5 <= out['forgotten_at'] - connected <= 3.0, (out, connected)
    finally:
        if holder:
            holder.kill()
            holder.wait()
        subprocess.run(['ip', 'netns', 'del', ns], check=False)


# --- the report

def test_report_json_and_the_timeline_have_the_moment_the_middlebox_forgot(tmp_path):
    report, text = write_experiment(str(tmp_path), data(10, TIMEDOUT, GONE))
    saved = json.loads((tmp_path / 'report.json').read_text())
    assert saved['observed']['forgotten_at'] == 106.1 and saved['observed']['forgotten_s'] == pytest.approx(6.1)
    assert saved['fault'] == FAULT        # the watch is not part of the fault
    line = {'t': 6.1, 'who': 'middlebox', 'what': marks.FORGOT % 6}
    assert line in saved['timeline']
    assert marks.FORGOT % 6 in text and 'then it was gone' in text


def test_a_kept_flow_has_no_forgetting_and_a_run_without_watch_says_nothing(tmp_path):
    report, dummy = write_experiment(str(tmp_path / 'kept'), data(2, ANSWERED, KEPT))
    assert report['observed']['forgotten_at'] is None and report['observed']['forgotten_s'] is None
    assert not any(item['who'] == 'middlebox' for item in report['timeline'])
    assert any('renewed 9 time(s), still there at the end of the idle wait' in note for note in report['notes'])
    report, dummy = write_experiment(str(tmp_path / 'none'), data(10, TIMEDOUT, None))
    assert report['observed']['forgotten_s'] is None
    assert not any('conntrack' in note for note in report['notes'])


def test_watch_of_takes_the_last_json_line_and_ignores_garbage():
    assert marks.watch_of({'conntrack': 'warning: something\n{"forgotten_at": 5}'}) == {'forgotten_at': 5}
    assert marks.watch_of({'conntrack': 'not json'}) == {} and marks.watch_of({}) == {}
    assert marks.watch_of({'conntrack': {'forgotten_at': 1}}) == {'forgotten_at': 1}


# --- the picture: its artists, not its pixels

@pytest.fixture
def drawn(monkeypatch):
    """The axes picture() drew on (kept by wrapping the hook)."""
    axes = []
    original = marks.draw_marks

    def keep(ax, report):
        axes.append(ax)
        original(ax, report)
    monkeypatch.setattr(marks, 'draw_marks', keep)
    return axes


def labels(ax):
    return ax.get_legend_handles_labels()[1]


def test_the_picture_marks_the_idle_timeout_and_the_forgetting(tmp_path, drawn):
    report, dummy = write_experiment(str(tmp_path), data(10, TIMEDOUT, GONE))
    assert (tmp_path / 'timeline.png').read_bytes()[:4] == b'\x89PNG'
    ax = drawn[0]
    assert marks.IDLE_LABEL % 6 in labels(ax) and marks.FORGOT_LABEL in labels(ax)
    assert [t.get_text() for t in ax.get_legend().get_texts()].count(marks.FORGOT_LABEL) == 1
    span = [p for p in ax.patches if p.get_label() == marks.IDLE_LABEL % 6][0]
    if hasattr(span, 'get_width'):          # a Rectangle (matplotlib >= 3.9), a Polygon before
        xs = [span.get_x(), span.get_x() + span.get_width()]
    else:
        xs = [x for x, dummy in span.get_xy()]
    assert min(xs) == pytest.approx(0) and max(xs) == pytest.approx(6)
    line = [ln for ln in ax.lines if ln.get_label() == marks.FORGOT_LABEL][0]
    assert list(line.get_xdata()) == [pytest.approx(6.1)] * 2
    texts = [t.get_text() for t in ax.texts]
    assert 'idle timeout 6 s' in texts and ' forgot the flow at +6.1 s' in texts


def test_the_picture_of_a_surviving_run_has_the_idle_timeout_but_no_forgetting(tmp_path, drawn):
    write_experiment(str(tmp_path), data(2, ANSWERED, KEPT))
    assert marks.IDLE_LABEL % 6 in labels(drawn[0]) and marks.FORGOT_LABEL not in labels(drawn[0])


def test_the_drop_fault_picture_has_no_idle_marks(drawn):
    report = {'run_id': 'r', 'verdict': 'pass', 'expected': ka(2), 'fault': {'kind': 'drop'}, 'observed': {}}
    _report.picture(None, report, [(1.0, 'server', 'DROP rule inserted')], 22345)
    assert labels(drawn[0]) == ['DROP']
