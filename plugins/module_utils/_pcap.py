# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Keepalive analysis of pcap and pcapng files: the entry point analyse(),
its options, and the per-connection account of the probes compared with
expected settings (the verdict).

The work is shared by three files: _pcap_reader.py reads the capture (pcap,
pcapng, link types, check_file, count_packets), _pcap_scan.py parses IPv4,
IPv6 and TCP and classifies every segment like Wireshark's
tcp.analysis.keep_alive and tcp.analysis.keep_alive_ack (frame for frame the
same as tshark), and this file turns the scan into the result pcap_info
returns. The names other modules use are importable from here.

Deliberate differences, documented in docs/pcap_info.md: IP fragments are
not reassembled (they are counted and skipped), tunnels (IP in IP, GRE) are
not decapsulated, and a truncated last record ends the analysis with
``truncated: true`` instead of an error (a record that cannot be valid in the
middle of the file - longer than the snapshot length, a pcapng block whose
two lengths differ - is an error that says where).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import gc
import ipaddress
import math

from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive import (
    BOUNDS, DEFAULT_TOLERANCE, KEYS, TOLERANCE_RANGE, allowed)
from ansible_collections.tcplab.keepalive.plugins.module_utils._keepalive_rules import (
    ANSWERED_IDLE, ANSWERED_INTVL, IDLE, RETRY, lateness, next_probe, rst as rst_prediction)
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap_reader import (  # noqa: F401 pylint: disable=unused-import
    MSG_BAD_BLOCK, MSG_BAD_BOM, MSG_BAD_PACKET, MSG_BAD_RECORD, MSG_BAD_TRAILER, MSG_LIMIT_IDB, MSG_LIMIT_MAX,
    MSG_LIMIT_SNAPLEN, MSG_LINKTYPE, MSG_MISSING, MSG_NO_IDB, MSG_NOT_FILE, MSG_NOT_PCAP, MSG_SHORT_HEADER,
    MSG_TRUNCATED, MSG_UNREADABLE, PcapError, Reader, check_file, count_packets, open_capture, truncation_note)
from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap_scan import COPY_WINDOW, HALF, M32, Scan, flag_names

MSG_EXPECT = 'expect.%s must be an integer 1..%d (%s), got %r'
MSG_EXPECT_KEYS = 'expect takes time, intvl and probes, got unknown key(s): %s'
MSG_TOLERANCE = 'tolerance.%s must be a number 0..%d (%s), got %r'
MSG_TOLERANCE_KEYS = 'tolerance takes seconds and percent, got unknown key(s): %s'
MSG_CONNECTION = 'connection.%s %s'
MSG_CONNECTION_KEYS = 'connection takes address and port, got unknown key(s): %s'
MSG_DUPLICATES = ('%d frames are loopback duplicates (an outgoing frame seen again as incoming, Linux cooked capture): '
                  'they are classified like tshark does but left out of the probe timing')
MSG_FRAGMENTS = '%d IP fragments were skipped (not reassembled)'
MSG_COPIES = ('%d keepalive probe frame(s) are copies of the probe just before them (the same seq, ack, flags, window and '
              'length within %s ms, no segment of that sender between: the capture saw one probe again, e.g. forwarded '
              'back onto the captured link by a router on the same bridge, or on a second interface): they are '
              'classified like tshark does, and each probe is numbered, timed and judged once (its copies counted)')
MSG_NOT_LISTED = ('%d more connections with keepalive activity are counted and judged but not listed (only the first %d '
                  'are): select one with the connection option')
MSG_MORE_FAILED = '%d connections failed in all; select one with the connection option to see its report'
MSG_CLOSED_BY_FIN = ('%s closed the connection with a FIN at %s s (its program closed the socket or exited): keepalive '
                     'did not end it')
# a probe or the RST outside the window of its predicted time (_keepalive_rules): the observed and the expected
# seconds since what the rule counts from, the window, the rule and the predicted time since the capture started
MSG_PROBE_TIMING = 'probe %d came %s s after %s, expected %s s %s (%s; due at %s s)'
MSG_RST_TIMING = 'RST came %s s after probe %d, expected %s s %s (%s; due at %s s): a TCP_USER_TIMEOUT-style ending'
MSG_ABORTED = ('%s reset the connection at %s s without unanswered probes before it (its program aborted the connection '
               'or exited with unread data): keepalive did not end it')
# a module result is not the place for tens of thousands of connection reports
MAX_LISTED = 100
MAX_REASONS = 20

# what expect's values mean, for messages (their bounds are the kernel's: _keepalive.BOUNDS)
EXPECT_WHAT = {'time': 'seconds of idle time', 'intvl': 'seconds between probes',
               'probes': 'unanswered probes before the RST'}


# ---------------------------------------------------------------- options

def _int_in(value, low, high):
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def normalise_expect(expect):
    if not expect:
        return None
    unknown = sorted(set(expect) - set(KEYS))
    if unknown:
        raise PcapError(MSG_EXPECT_KEYS % ', '.join(unknown))
    result = {}
    for key in KEYS:
        value = expect.get(key)
        if value is None:
            continue
        high = BOUNDS[key][1]
        if not _int_in(value, 1, high):
            raise PcapError(MSG_EXPECT % (key, high, EXPECT_WHAT[key], value))
        result[key] = value
    return result or None


def normalise_tolerance(tolerance):
    result = dict(DEFAULT_TOLERANCE)
    if tolerance:
        unknown = sorted(set(tolerance) - set(DEFAULT_TOLERANCE))
        if unknown:
            raise PcapError(MSG_TOLERANCE_KEYS % ', '.join(unknown))
        for key in DEFAULT_TOLERANCE:
            value = tolerance.get(key)
            if value is None:
                continue
            high, what = TOLERANCE_RANGE[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 <= value <= high:
                raise PcapError(MSG_TOLERANCE % (key, high, what, value))
            result[key] = float(value)
    return result


def normalise_connection(connection):
    """(packed address or None, port or None), or None for no filter."""
    if not connection:
        return None
    unknown = sorted(set(connection) - {'address', 'port'})
    if unknown:
        raise PcapError(MSG_CONNECTION_KEYS % ', '.join(unknown))
    address = connection.get('address')
    port = connection.get('port')
    packed = None
    if address is not None:
        try:
            packed = ipaddress.ip_address(str(address)).packed
        except ValueError:
            raise PcapError(MSG_CONNECTION % ('address', 'must be an IPv4 or IPv6 address, got %r' % (address,)))
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise PcapError(MSG_CONNECTION % ('port', 'must be a port number 0..65535, got %r' % (port,)))
    if packed is None and port is None:
        return None
    return packed, port


# ---------------------------------------------------------------- the analysis

def analyse(path, expect=None, connection=None, tolerance=None, return_frames=False, packets=False):
    """Analyse the capture at path; the dict pcap_info returns (without changed). Raises PcapError.

    packets (with connection): every listed connection also gets `packets`, [time, sender (0: the first of its
    endpoints, 1: the second), kind] of each of its segments, kind one of keepalive, keepalive_ack,
    zero_window_probe, rst, fin, answer (a segment that answered a probe) and segment (the analyser's own
    classification, for a picture of the connection)."""
    expect = normalise_expect(expect)
    tol = normalise_tolerance(tolerance)
    focus = normalise_connection(connection)
    handle = open_capture(path)
    # The scan allocates a few objects per connection and probe, and none of them form reference cycles: the cyclic
    # garbage collector would only traverse them again and again (a fifth of the run time with tens of thousands of
    # connections), and once more when it is enabled again while they are alive. So it stays off until the result is
    # built and the scan is freed.
    collecting = gc.isenabled()
    gc.disable()
    try:
        reader = Reader(path, handle)
        scan = Scan(focus, packets)
        scan.run(reader.start())
        result = _result(path, reader, scan, expect, tol, focus is not None, return_frames)
        scan = None
    except OSError as exc:   # an I/O error while reading (EIO, a file system gone)
        raise PcapError(MSG_UNREADABLE % (path, exc.strerror or exc))
    finally:
        handle.close()
        if collecting:
            gc.enable()
    return result


def _result(path, reader, scan, expect, tol, focused, return_frames):
    result = {
        'path': path,
        'format': reader.format,
        'link_types': reader.linktypes,
        'truncated': reader.truncated,
        'truncated_at': reader.truncated_at,
        'start': scan.first_ts or 0.0,
        'expect': expect,
        'tolerance': tol,
    }
    result.update(_judge_all(scan, result['start'], expect, tol, focused))
    result['summary']['notes'].extend(_capture_notes(scan, reader, result['summary']['probe_copies']))
    if return_frames:
        result['keepalive_frames'] = scan.ka_frames
        result['keepalive_ack_frames'] = scan.kaack_frames
    return result


def client_connection(result, port):
    """(connection, prober, client endpoint) of the last connection in an analysis result with an endpoint on the
    client's local port `port` (a port reused later is a new connection: the last one is the current one); the
    prober is the client's entry in the connection's probers, or None. (None, None, None) without one.

    The one reading of "the client's connection" that pcap_info's wait_for and the experiment report share."""
    suffix = ':%d' % port
    conn = None
    for candidate in (result or {}).get('connections') or []:
        if any(str(e).endswith(suffix) for e in candidate.get('endpoints') or []):
            conn = candidate
    if conn is None:
        return None, None, None
    client = next(str(e) for e in conn['endpoints'] if str(e).endswith(suffix))
    prober = next((p for p in conn.get('probers') or [] if p.get('endpoint') == client), None)
    return conn, prober, client


# ---------------------------------------------------------------- the verdict

def _num(value):
    text = '%.3f' % value
    return text.rstrip('0').rstrip('.') if '.' in text else text


def _fits_timer(value, seconds, tol):
    """Whether an observed interval counts as a timer of `seconds`: within the tolerance early, within the timer
    wheel's lateness (_keepalive_rules.lateness: 30 s -> up to ~32 s at HZ 250) or the tolerance late."""
    early = allowed(seconds, tol)
    return -early <= value - seconds <= max(lateness(seconds) + tol['seconds'], early)


def _override(values, expected, tol):
    """The whole number of seconds all values fit when it is not the expected one, else None."""
    if not values or all(_fits_timer(v, expected, tol) for v in values):
        # values that fit the expected timer are the expected one
        return None
    guess = int(round(sorted(values)[len(values) // 2]))
    if guess < 1 or guess == expected:
        return None
    if all(_fits_timer(v, guess, tol) for v in values):
        return guess
    return None


def _capture_notes(scan, reader, copies):
    notes = []
    if scan.duplicates:
        notes.append(MSG_DUPLICATES % scan.duplicates)
    if copies:
        notes.append(MSG_COPIES % (copies, _num(COPY_WINDOW * 1000)))
    if scan.fragments:
        notes.append(MSG_FRAGMENTS % scan.fragments)
    if reader.truncated:
        notes.append(truncation_note(reader.truncated_at, scan.packets))
    return notes


def _judge_all(scan, t0, expect, tol, focused):
    """summary, connections, verdict and reasons of the whole capture."""
    counts = {'connections': 0, 'rst_after_probes': 0, 'zero_window_probes': 0, 'retransmissions': 0,
              'not_listed': 0, 'judged': 0, 'failed': 0, 'reported': 0, 'probe_copies': 0}
    listed, reasons = [], []
    n_conns = rst_after_probes = zwp_total = retx_total = 0
    for conn in scan.connections():
        a, b = conn.a, conn.b
        n_conns += 1
        if conn.rst is not None and conn.rst[4]:
            rst_after_probes += 1
        if b is a:
            zwp, retx, probing = a.zwp, a.retx, a.probes is not None
        else:
            zwp, retx, probing = a.zwp + b.zwp, a.retx + b.retx, a.probes is not None or b.probes is not None
        if not (probing or zwp or retx or focused):
            continue
        if probing:
            counts['probe_copies'] += a.copies if b is a else a.copies + b.copies
        zwp_total += zwp
        retx_total += retx
        in_flight = _in_flight(conn) if retx else {}
        if not (focused or probing or zwp or in_flight):
            continue
        verdict, why, name = _judge_conn(conn, t0, expect, tol, zwp, retx, in_flight, focused, listed, counts)
        counts['judged'] += verdict is not None
        if verdict == 'fail':
            counts['failed'] += 1
            if len(reasons) < MAX_REASONS:
                counts['reported'] += 1
                reasons.extend('%s: %s' % (name or _conn_name(conn), reason) for reason in why)
    counts.update(connections=n_conns, rst_after_probes=rst_after_probes, zero_window_probes=zwp_total,
                  retransmissions=retx_total)
    out = {'summary': _summary(scan, counts, len(listed)), 'connections': listed, 'verdict': None, 'reasons': []}
    if expect:
        out.update(_overall(counts, reasons, focused))
    return out


def _judge_conn(conn, t0, expect, tol, zwp, retx, in_flight, focused, listed, counts):
    """(verdict, reasons, name or None) of a connection with keepalive activity: listed with its report while fewer
    than MAX_LISTED are, else judged without one."""
    if len(listed) < MAX_LISTED:
        entry = _conn_report(conn, t0, expect, tol, zwp, retx, in_flight, focused)
        listed.append(entry)
        return entry['verdict'], entry['reasons'], entry['name']
    counts['not_listed'] += 1
    if not expect:
        return None, [], None
    verdict, why = _conn_verdict(conn, t0, expect, tol, focused)
    return verdict, why, None


def _summary(scan, counts, n_listed):
    summary = {
        'packets': scan.packets,
        'tcp_packets': scan.tcp,
        'connections': counts['connections'],
        'keepalive': scan.keepalive,
        'keepalive_ack': scan.keepalive_ack,
        'rst_after_probes': counts['rst_after_probes'],
        'zero_window_probes': counts['zero_window_probes'],
        'retransmissions': counts['retransmissions'],
        'fragments_skipped': scan.fragments,
        'loopback_duplicates': scan.duplicates,
        'probe_copies': counts['probe_copies'],
        'listed': n_listed,
        'not_listed': counts['not_listed'],
        'notes': [],
    }
    if counts['not_listed']:
        summary['notes'].append(MSG_NOT_LISTED % (counts['not_listed'], MAX_LISTED))
    return summary


def _overall(counts, reasons, focused):
    """The verdict of the capture: fail without judged probes, else fail when a connection failed."""
    if not counts['judged']:
        return {'verdict': 'fail',
                'reasons': ['no keepalive probes found in %s' % ('the focused connection(s)' if focused else 'the capture')]}
    if counts['failed'] > counts['reported']:
        reasons.append(MSG_MORE_FAILED % counts['failed'])
    return {'verdict': 'fail' if counts['failed'] else 'pass', 'reasons': reasons}


def _in_flight(conn):
    """{id of the sending flow: bytes sent but not acknowledged at the end} (data only, not SYN/FIN)."""
    result = {}
    for f, r in ((conn.a, conn.b), (conn.b, conn.a)):
        if f is r or r.base is None or not f.nxt:
            continue
        gap = (f.nxt - r.lack) & M32
        if f.fin:
            gap = (gap - 1) & M32
        if 0 < gap < HALF:
            result[id(f)] = gap
    return result


def _order(conn):
    """(first, second) flow: the sender of the SYN first when the handshake was captured."""
    first = conn.syn_from if conn.syn_from is not None else conn.a
    second = conn.b if first is conn.a else conn.a
    return first, second


def _conn_name(conn):
    first, second = _order(conn)
    return '%s -> %s' % (first.endpoint(), second.endpoint())


def _idle_spacing(probes):
    idle = [p.after for p in probes if p.kind == 'idle' and p.after is not None]
    spacing = [p.after for p in probes if p.kind == 'retry']
    return idle, spacing


def _conn_verdict(conn, t0, expect, tol, focused):
    """(verdict, reasons) of a connection that is not listed: the same judgement without the report."""
    first, second = _order(conn)
    verdict = None
    reasons = []
    for f in (first, second) if second is not first else (first,):
        if f.probes:
            verdict = verdict or 'pass'
            why = _judge(conn, f, expect, tol, {'notes': []}, _predictions(f.probes, expect), t0)
            if why:
                verdict = 'fail'
                reasons.extend('%s: %s' % (f.endpoint(), reason) for reason in why)
    if verdict is None and focused:
        return 'fail', ['no keepalive probes']
    return verdict, reasons


def _end_report(conn, t0, first, second, probers):
    """(rst, fin, notes) of a connection report: its first RST and FIN, and what they say of the keepalive."""
    notes = []
    rst = fin = None
    if conn.rst is not None:
        frame, ts, flags, f, run, last_probe_ts = conn.rst
        r = second if f is first else first
        rst = {'from': f.endpoint(), 'to': r.endpoint(), 'frame': frame, 'time': round(ts - t0, 6),
               'flags': flag_names(flags), 'after_probes': run,
               'after_last_probe': None if last_probe_ts is None else round(ts - last_probe_ts, 6)}
        if run == 0 and any(p['endpoint'] == r.endpoint() for p in probers):
            notes.append('the RST came from %s, the peer of the prober, not after unanswered probes' % f.endpoint())
        elif run == 0 and probers and (conn.fin is None or frame < conn.fin[0]):
            notes.append(MSG_ABORTED % (f.endpoint(), _num(ts - t0)))
    if conn.fin is not None:
        frame, ts, flags, f = conn.fin
        r = second if f is first else first
        fin = {'from': f.endpoint(), 'to': r.endpoint(), 'frame': frame, 'time': round(ts - t0, 6),
               'flags': flag_names(flags)}
        if probers and (conn.rst is None or frame < conn.rst[0]):
            notes.append(MSG_CLOSED_BY_FIN % (f.endpoint(), _num(ts - t0)))
    return rst, fin, notes


def _traffic_notes(conn, first, second, zwp, retx, in_flight):
    """({endpoint: bytes in flight at the end}, notes on what is not keepalive: data in flight, zero-window probes)."""
    notes = []
    flight = {f.endpoint(): in_flight[id(f)] for f in (first, second) if id(f) in in_flight}
    if flight and retx:
        for endpoint, nbytes in flight.items():
            notes.append('%s had %d bytes unacknowledged and %d retransmissions: the kernel sends no keepalive probes '
                         'while data is in flight; retransmission timeouts (tcp_retries2) or TCP_USER_TIMEOUT end such '
                         'a connection, not keepalive' % (endpoint, nbytes, retx))
    elif retx:
        notes.append('%d retransmitted segments are not keepalives' % retx)
    if zwp:
        notes.append('%d zero-window probes (1 byte at the next sequence number while the peer advertises window 0) '
                     'are not keepalives' % zwp)
    if conn.reused:
        notes.append('the ports were reused: this is a new connection after an earlier one on the same ports')
    return flight, notes


def _conn_report(conn, t0, expect, tol, zwp, retx, in_flight, focused):
    first, second = _order(conn)
    flows = (first,) if second is first else (first, second)
    probers = [_prober_report(conn, f, second if f is first else first, t0, expect, tol) for f in flows if f.probes]
    rst, fin, notes = _end_report(conn, t0, first, second, probers)
    flight, more = _traffic_notes(conn, first, second, zwp, retx, in_flight)
    notes += more
    verdict = None
    reasons = []
    if expect:
        if probers:
            verdict = 'pass'
            for p in probers:
                if p['verdict'] == 'fail':
                    verdict = 'fail'
                    reasons.extend('%s: %s' % (p['endpoint'], reason) for reason in p['reasons'])
        elif focused:
            verdict = 'fail'
            reasons.append('no keepalive probes' + ('; ' + notes[0] if notes else ''))
    report = {
        'name': '%s -> %s' % (first.endpoint(), second.endpoint()),
        'endpoints': [first.endpoint(), second.endpoint()],
        'handshake_seen': conn.syn_from is not None,
        'first_frame': conn.first_frame,
        'start': round(conn.first_ts - t0, 6),
        'end': round(max(f.last or conn.first_ts for f in flows) - t0, 6),
        'keepalive': sum(f.ka for f in flows),
        'keepalive_ack': sum(f.kaack for f in flows),
        'zero_window_probes': zwp,
        'retransmissions': retx,
        'in_flight_at_end': flight,
        'probers': probers,
        'rst': rst,
        'fin': fin,
        'notes': notes,
        'verdict': verdict,
        'reasons': reasons,
    }
    if conn.packets is not None:
        report['packets'] = [[round(ts - t0, 6), 0 if f is first else 1, kind] for ts, f, kind in conn.packets]
    return report


def _prober_report(conn, f, r, t0, expect, tol):
    probes = f.probes
    idle, spacing = _idle_spacing(probes)
    preds = _predictions(probes, expect) if expect else [None] * len(probes)
    report = {
        'endpoint': f.endpoint(),
        'peer': r.endpoint(),
        'probes': [{'number': index, 'frame': p.frame, 'time': round(p.ts - t0, 6), 'seq': p.seq, 'length': p.length,
                    'answered': p.answered, 'answer_frame': p.answer_frame, 'kind': p.kind,
                    'after': None if p.after is None else round(p.after, 6),
                    'expected': None if pred is None else round(pred.due - t0, 6),
                    'rule': None if pred is None else pred.rule, 'copies': p.copies}
                   for index, (p, pred) in enumerate(zip(probes, preds), 1)],
        'count': len(probes),
        'copies': sum(p.copies for p in probes),
        'answered': sum(1 for p in probes if p.answered),
        'unanswered': sum(1 for p in probes if not p.answered),
        'final_unanswered': f.run,
        'idle_before_first_probe': None if probes[0].after is None or probes[0].kind != 'idle'
        else round(probes[0].after, 6),
        'idle_times': [round(v, 6) for v in idle],
        'spacing': [round(v, 6) for v in spacing],
        'rst_sent': conn.rst is not None and conn.rst[3] is f,
        'verdict': None,
        'reasons': [],
        'notes': [],
    }
    if probes[0].kind == 'idle' and probes[0].after is None:
        report['notes'].append('no segment from %s before probe 1 in the capture: the idle time before it is unknown'
                               % report['peer'])
    if expect:
        report['reasons'] = _judge(conn, f, expect, tol, report, preds, t0)
        report['verdict'] = 'fail' if report['reasons'] else 'pass'
    return report


def _predictions(probes, expect):
    """The prediction (_keepalive_rules.Prediction) of every probe from the ones before it, None where there is none:
    the last segment from the peer before an idle probe is `after` before it, a retry has the same one."""
    preds = []
    last_rx = None
    previous = None
    for p in probes:
        if p.kind == 'idle':
            last_rx = None if p.after is None else p.ts - p.after
        preds.append(next_probe(expect, last_rx, None if previous is None else previous.ts,
                                previous is not None and previous.answered))
        previous = p
    return preds


def _window(pred, tol):
    """(earliest, latest, text) of the observed times that count as pred: '± 0.35 s' or '-0.25/+0.284 s'."""
    early = allowed(pred.interval, tol)
    low, high = pred.window(early, tol['seconds'])
    late = high - pred.due
    if abs(late - early) < 5e-4:
        return low, high, '± %s s' % _num(early)
    return low, high, '-%s/+%s s' % (_num(early), _num(late))


def _judge_timing(probes, preds, expect, tol, t0):
    """Reasons about the probes that came outside the window of their predicted time, and about idle times or
    spacings that all fit a per-socket override."""
    reasons = []
    idle = [p.after for p, pred in zip(probes, preds) if pred is not None and pred.rule in (IDLE, ANSWERED_IDLE)]
    spacing = [p.ts - q.ts for q, p, pred in zip(probes, probes[1:], preds[1:])
               if pred is not None and pred.rule in (RETRY, ANSWERED_INTVL)]
    for key, values, text in (
            ('time', idle, "idle time fits a per-socket TCP_KEEPIDLE of %d s, not the sysctl's %d s"),
            ('intvl', spacing, "spacing fits a per-socket TCP_KEEPINTVL of %d s, not the sysctl's %d s")):
        want = expect.get(key)
        override = None if want is None else _override(values, want, tol)
        if override is not None:
            reasons.append(text % (override, want))
    for index, (p, pred) in enumerate(zip(probes, preds), 1):
        if pred is None:
            continue
        low, high, window = _window(pred, tol)
        if low <= p.ts <= high:
            continue
        since, ref = ('the last segment from the peer', pred.due - pred.interval) if pred.rule in (IDLE, ANSWERED_IDLE) \
            else ('probe %d' % (index - 1), probes[index - 2].ts)
        reasons.append(MSG_PROBE_TIMING % (index, _num(p.ts - ref), since, _num(pred.due - ref), window, pred.rule,
                                           _num(pred.due - t0)))
    return reasons


def _judge(conn, f, expect, tol, report, preds, t0):
    """Why the probes of f do not follow expect (empty: they do); notes that do not fail go to report['notes']."""
    probes = f.probes
    reasons = _judge_timing(probes, preds, expect, tol, t0)
    want_intvl = expect.get('intvl')
    want_probes = expect.get('probes')
    rst = conn.rst
    if rst is not None and rst[3] is f and rst[4]:
        run = rst[4]
        after = rst[1] - rst[5]
        if want_probes is not None and run < want_probes:
            reasons.append('RST after %d unanswered probe%s, expected %d: a TCP_USER_TIMEOUT (or a per-socket '
                           'TCP_KEEPCNT of %d) ended the connection' % (run, '' if run == 1 else 's', want_probes, run))
        elif want_probes is not None and run > want_probes:
            reasons.append('RST after %d unanswered probes, expected %d: fits a per-socket TCP_KEEPCNT of %d'
                           % (run, want_probes, run))
        pred = None if want_intvl is None else rst_prediction(expect, rst[5])
        low, high, window = (None, None, None) if pred is None else _window(pred, tol)
        if pred is not None and not low <= rst[1] <= high:
            reasons.append(MSG_RST_TIMING % (_num(after), len(probes), _num(want_intvl), window, pred.rule,
                                             _num(pred.due - t0)))
    elif want_probes is not None:
        run = f.run
        if run > want_probes:
            reasons.append('%d unanswered probes and no RST, expected a RST after %d' % (run, want_probes))
        elif run:
            report['notes'].append('the capture ends after %d unanswered probe%s without a RST (expected after %d)'
                                   % (run, '' if run == 1 else 's', want_probes))
    return reasons
