# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet report of the keepalive audit: aggregation of the per-host results
(linear in hosts) and the writers of audit.json, audit.csv, audit.junit.xml
and audit.html (one self-contained page: no external assets).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
from xml.etree import ElementTree
from xml.sax.saxutils import escape as xml_escape

from ansible_collections.tcplab.keepalive.plugins.module_utils._common import atomic_write

SEVERITIES = ('error', 'warning', 'info')
FILES = ('audit.json', 'audit.csv', 'audit.junit.xml', 'audit.html')
# written next to FILES: the metrics (Prometheus text format) and the slice file a merge reads
PROM_FILE = 'audit.prom'
SLICE_FILE = 'audit.slice.json'
SLICE_FORMAT = 'tcplab.keepalive.audit-slice/1'
# connections read exactly (pidfd_getfd) that a host entry of the report shows, per namespace
MAX_CONNECTION_EXAMPLES = 20
# the collection's version (galaxy.yml; a unit test keeps them equal), recorded in each slice file
COLLECTION_VERSION = '0.1.0'
# histogram bins of the detection time (seconds): edges chosen around the usual idle timeouts
BIN_EDGES = (0, 60, 120, 240, 350, 600, 1200, 3600, 7200, 7876)
CSV_COLUMNS = ('host', 'status', 'namespace', 'kind', 'time', 'intvl', 'probes', 'detection_seconds',
               'keepalive_sockets', 'override_sockets', 'compliant', 'errors', 'warnings', 'infos',
               'finding_ids', 'messages')

MSG_UNREACHABLE = 'host unreachable: %s'
MSG_FAILED = 'audit failed: %s'
MSG_NOT_RUN = 'the audit did not run on this host (unreachable or failed earlier in the play)'

MSG_HOSTS = 'hosts must be a list of inventory hostnames, got %r'
MSG_REACHABLE = 'reachable must be a list of inventory hostnames, got %r'
MSG_RESULTS = 'results must be a mapping of inventory hostname to the registered audit result, got %s'
MSG_MALFORMED = ('results[%r]%s must be %s, got %s: pass the result registered from tcplab.keepalive.audit '
                 '(or null for a host without one), unchanged')
MSG_REMEDIATION = 'remediation[%r] must be a mapping (what remediation did on that host) or null, got %s'
MSG_DEST_FILE = ('dest %s is a file, not a directory: give a directory for the report (it is created if missing), '
                 'or move the file away')
MSG_DEST_PARENT = 'cannot create the report directory %s (%s): give a directory whose parent exists or can be made'
MSG_WRITE = 'cannot write the audit report in %s: %s'

# A CSV cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection)
CSV_FORMULA_START = ('=', '+', '-', '@', '\t', '\r')
# characters XML 1.0 does not allow, even escaped
XML_INVALID = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')


class ReportError(Exception):
    """Bad input to the report writer."""


def _counts(findings):
    return dict((sev, sum(1 for f in findings if f.get('severity') == sev)) for sev in SEVERITIES)


# -- input validation: say which host and entry is malformed ---------------------

def _shown(value):
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + '...'
    return '%s %s' % (type(value).__name__, text)


def _int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _need(host, path, ok, expected, value):
    if not ok:
        raise ReportError(MSG_MALFORMED % (host, path, expected, _shown(value)))


def _check_findings(host, path, findings):
    _need(host, path, isinstance(findings, list), 'a list of findings', findings)
    for i, item in enumerate(findings):
        where = '%s[%d]' % (path, i)
        _need(host, where, isinstance(item, dict), 'a finding (a mapping with id, severity and message)', item)
        for key in ('id', 'severity', 'message'):
            _need(host, '%s.%s' % (where, key), isinstance(item.get(key), str), 'a string', item.get(key))


def _check_namespace(host, path, ns):
    _need(host, path, isinstance(ns, dict), 'a namespace entry (a mapping with label, kind, values and findings)', ns)
    _need(host, path + '.label', isinstance(ns.get('label'), str), 'a string', ns.get('label'))
    _need(host, path + '.kind', ns.get('kind') is None or isinstance(ns.get('kind'), str), 'a string', ns.get('kind'))
    values = ns.get('values')
    _need(host, path + '.values', values is None or (isinstance(values, dict) and all(
        _int(values.get(k)) for k in ('time', 'intvl', 'probes'))), 'a mapping of time, intvl and probes to integers',
        values)
    detection = ns.get('detection_seconds')
    _need(host, path + '.detection_seconds', detection is None or _int(detection), 'an integer', detection)
    _check_findings(host, path + '.findings', ns.get('findings') or [])
    sockets = ns.get('sockets')
    _need(host, path + '.sockets', sockets is None or isinstance(sockets, dict), 'a mapping', sockets)
    for key in ('keepalive', 'established', 'overrides'):
        count = (sockets or {}).get(key, 0)
        _need(host, '%s.sockets.%s' % (path, key), _int(count), 'an integer', count)


def check_result(host, result):
    """ReportError naming the host and the entry when result is not an audit result (or null)."""
    if result is None:
        return
    _need(host, '', isinstance(result, dict), 'the registered result of tcplab.keepalive.audit (a mapping) or null',
          result)
    if result.get('unreachable') or result.get('failed') or 'compliant' not in result:
        return
    _need(host, '.compliant', isinstance(result['compliant'], bool), 'true or false', result['compliant'])
    namespaces = result.get('namespaces') or []
    _need(host, '.namespaces', isinstance(namespaces, list), 'a list of namespace entries', namespaces)
    for i, ns in enumerate(namespaces):
        _check_namespace(host, '.namespaces[%d]' % i, ns)
    _check_findings(host, '.findings', result.get('findings') or [])
    for key, kind, expected in (('drift', list, 'a list'), ('notes', list, 'a list of strings'),
                                ('policy', dict, 'a mapping'), ('persisted', dict, 'a mapping')):
        value = result.get(key)
        _need(host, '.' + key, value is None or isinstance(value, kind), expected, value)
    _need(host, '.notes', all(isinstance(n, str) for n in result.get('notes') or []), 'a list of strings',
          result.get('notes'))


def check_input(hosts, reachable, results, remediation):
    """ReportError with what is malformed and what is expected, before anything is written."""
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ReportError(MSG_HOSTS % (hosts,))
    if reachable is not None and (not isinstance(reachable, list) or not all(isinstance(h, str) for h in reachable)):
        raise ReportError(MSG_REACHABLE % (reachable,))
    if results is not None and not isinstance(results, dict):
        raise ReportError(MSG_RESULTS % _shown(results))
    for host in hosts:
        check_result(host, (results or {}).get(host))
        value = (remediation or {}).get(host)
        if value is not None and not isinstance(value, dict):
            raise ReportError(MSG_REMEDIATION % (host, _shown(value)))


def host_entry(result, reachable=True):
    """The audit.json entry of one host from its registered audit result (or None).

    A host no longer in the play (not reachable) is never reported as audited:
    its registered result, if any, may be from an earlier play.
    """
    if result is None or (not reachable and not result.get('unreachable')):
        return {'status': 'unreachable' if not reachable else 'failed', 'compliant': False,
                'message': MSG_NOT_RUN, 'namespaces': [], 'findings': [], 'drift': [], 'notes': []}
    if result.get('unreachable'):
        return {'status': 'unreachable', 'compliant': False, 'message': MSG_UNREACHABLE % result.get('msg', ''),
                'namespaces': [], 'findings': [], 'drift': [], 'notes': []}
    if result.get('failed') or 'compliant' not in result:
        return {'status': 'failed', 'compliant': False,
                'message': MSG_FAILED % (result.get('msg') or 'no result'),
                'namespaces': [], 'findings': [], 'drift': [], 'notes': []}
    namespaces = []
    for ns in result.get('namespaces') or []:
        sockets = ns.get('sockets') or {}
        namespaces.append({
            'label': ns.get('label'), 'kind': ns.get('kind'), 'inode': ns.get('inode'), 'boot_netns': ns.get('boot_netns'),
            'pid': ns.get('pid'), 'comm': ns.get('comm'), 'container_id': ns.get('container_id'),
            'values': ns.get('values'), 'detection_seconds': ns.get('detection_seconds'),
            'compliant': bool(ns.get('compliant')), 'findings': ns.get('findings') or [],
            'remediation': ns.get('remediation'), 'error': ns.get('error'),
            'sockets': {'keepalive': sockets.get('keepalive', 0), 'established': sockets.get('established', 0),
                        'overrides': sockets.get('overrides', 0),
                        'top_processes': sockets.get('top_processes') or [],
                        'override_examples': sockets.get('override_examples') or [],
                        'owners_complete': sockets.get('owners_complete', True),
                        'exact': bool(sockets.get('exact')),
                        'connection_examples': connection_examples(sockets.get('connections') or [])},
        })
    return {'status': 'ok', 'compliant': bool(result.get('compliant')), 'message': None,
            'namespaces': namespaces, 'findings': result.get('findings') or [],
            'drift': result.get('drift') or [], 'persisted': result.get('persisted'),
            'boot_netns_inode': result.get('boot_netns_inode'),
            'notes': result.get('notes') or []}


def connection_examples(connections, limit=MAX_CONNECTION_EXAMPLES):
    """The connections read exactly that matter to a policy (their own settings override the sysctls, or keepalive
    is off), slowest to detect a dead peer first (keepalive off: never), at most limit."""
    keys = ('pid', 'comm', 'local', 'remote', 'accepted', 'keepalive', 'idle', 'intvl', 'cnt', 'user_timeout_ms',
            'override', 'detection_seconds')
    chosen = [c for c in connections if c.get('override') or not c.get('keepalive')]
    chosen.sort(key=lambda c: (c.get('keepalive', False), -(c.get('detection_seconds') or 0)))
    return [dict((key, c.get(key)) for key in keys) for c in chosen[:limit]]


def _empty_summary():
    return {'hosts': 0, 'compliant': 0, 'noncompliant': 0, 'unreachable': 0, 'failed': 0, 'namespaces': 0,
            'findings': dict((sev, 0) for sev in SEVERITIES), 'findings_by_id': {}}


def summarize(out_hosts):
    """The summary of audit.json from its host entries (one pass): a single run and a merge of
    slices compute it the same way."""
    summary = _empty_summary()
    detections = []
    for entry in out_hosts.values():
        summary['hosts'] += 1
        if entry['status'] == 'unreachable':
            summary['unreachable'] += 1
        elif entry['status'] == 'failed':
            summary['failed'] += 1
        elif entry['compliant']:
            summary['compliant'] += 1
        else:
            summary['noncompliant'] += 1
        summary['namespaces'] += len(entry['namespaces'])
        for f in entry['findings']:
            sev = f.get('severity')
            if sev in summary['findings']:
                summary['findings'][sev] += 1
            summary['findings_by_id'][f.get('id')] = summary['findings_by_id'].get(f.get('id'), 0) + 1
        detections.extend(ns['detection_seconds'] for ns in entry['namespaces']
                          if ns.get('detection_seconds') is not None)
    detections.sort()
    summary['detection_seconds'] = {
        'min': detections[0] if detections else None,
        'max': detections[-1] if detections else None,
        'median': detections[len(detections) // 2] if detections else None,
    }
    return summary


def now_utc():
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def aggregate(hosts, reachable, results, remediation=None, policy=None, generated_at=None):
    """audit.json content: one pass over the hosts.

    hosts: every host of the play (ansible_play_hosts_all); reachable: those
    still in the play (ansible_play_hosts); results: host -> registered audit
    result; remediation: host -> what remediation did. A host without a
    result is reported as unreachable (not in reachable) or failed; no host is
    ever dropped.
    """
    check_input(hosts, reachable, results, remediation)
    reachable = set(reachable or [])
    results = results or {}
    remediation = remediation or {}
    out_hosts = {}
    for name in hosts:
        if name in out_hosts:
            continue
        entry = host_entry(results.get(name), name in reachable)
        if name in remediation and remediation[name]:
            entry['remediation'] = remediation[name]
        if policy is None and entry['status'] == 'ok' and isinstance(results.get(name), dict):
            policy = results[name].get('policy')
        out_hosts[name] = entry
    return {'generated_at': generated_at or now_utc(), 'policy': policy, 'summary': summarize(out_hosts),
            'hosts': out_hosts}


# -- the slice file: one run's report in a form a later merge can check and combine ------

def policy_hash(policy):
    """sha256 of the policy as canonical JSON (sorted keys, no spaces): equal policies, equal hashes."""
    text = json.dumps(policy if policy is not None else {}, sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def default_slice_id(generated_at):
    return '%s-%d-%s' % (socket.gethostname(), os.getpid(), generated_at)


def slice_document(report, requested_policy=None, slice_id=None, merged_from=None):
    """audit.slice.json: the report's hosts and policy, with what a merge checks - the policy the run
    was asked for (and its hash), the collection version and the slice's identity."""
    requested = requested_policy if requested_policy is not None else {}
    doc = {'format': SLICE_FORMAT, 'collection_version': COLLECTION_VERSION,
           'slice': {'id': slice_id or default_slice_id(report['generated_at']),
                     'generated_at': report['generated_at'], 'hosts': len(report['hosts'])},
           'requested_policy': requested, 'policy_hash': policy_hash(requested),
           'generated_at': report['generated_at'], 'policy': report['policy'], 'hosts': report['hosts']}
    if merged_from is not None:
        doc['slice']['merged_from'] = merged_from
    return doc


def render_slice(doc):
    return json.dumps(doc, indent=1, sort_keys=True) + '\n'


def rows(report):
    """One row per host and namespace (a host without namespaces gets one row)."""
    for name, host in report['hosts'].items():
        if not host['namespaces']:
            yield {'host': name, 'status': host['status'], 'namespace': '', 'kind': '', 'time': '', 'intvl': '',
                   'probes': '', 'detection_seconds': '', 'keepalive_sockets': '', 'override_sockets': '',
                   'compliant': host['compliant'], 'errors': 1 if host['status'] != 'ok' else 0, 'warnings': 0,
                   'infos': 0, 'finding_ids': '', 'messages': host.get('message') or ''}
            continue
        for ns in host['namespaces']:
            values = ns.get('values') or {}
            counts = _counts(ns['findings'])
            yield {'host': name, 'status': host['status'], 'namespace': ns['label'], 'kind': ns['kind'],
                   'time': values.get('time', ''), 'intvl': values.get('intvl', ''),
                   'probes': values.get('probes', ''),
                   'detection_seconds': '' if ns.get('detection_seconds') is None else ns['detection_seconds'],
                   'keepalive_sockets': ns['sockets']['keepalive'], 'override_sockets': ns['sockets']['overrides'],
                   'compliant': ns['compliant'], 'errors': counts['error'], 'warnings': counts['warning'],
                   'infos': counts['info'], 'finding_ids': ' '.join(f['id'] for f in ns['findings']),
                   'messages': '; '.join(f['message'] for f in ns['findings'])}


def csv_cell(value):
    """A text cell a spreadsheet would take for a formula gets a leading quote; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_START):
        return "'" + value
    return value


def render_csv(report):
    """audit.csv, as OWASP advises against CSV injection: every text cell is quoted, and one starting
    with = + - @ tab or CR gets a leading '. The numeric columns hold integers from the audit and are
    written as bare numbers (a negative number stays a number)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator='\n', quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    for row in rows(report):
        row = dict(row, compliant='true' if row['compliant'] else 'false')
        writer.writerow(dict((key, csv_cell(value)) for key, value in row.items()))
    return buf.getvalue()


def _x(value):
    """Text safe for XML 1.0: characters it cannot carry at all become U+FFFD."""
    return XML_INVALID.sub('\ufffd', '' if value is None else str(value))


def render_junit(report):
    """JUnit XML: one test case per host and namespace; errors and warnings are failures."""
    cases = []
    failures = errors = 0
    for name, host in report['hosts'].items():
        if host['status'] != 'ok':
            errors += 1
            case = ElementTree.Element('testcase', classname=_x('tcplab.keepalive.audit.%s' % name), name='host')
            ElementTree.SubElement(case, 'error', type=host['status'], message=_x(host.get('message') or host['status']))
            cases.append(case)
            continue
        for ns in host['namespaces']:
            case = ElementTree.Element('testcase', classname=_x('tcplab.keepalive.audit.%s' % name), name=_x(ns['label']))
            bad = [f for f in ns['findings'] if f['severity'] in ('error', 'warning')]
            if bad:
                failures += 1
                failure = ElementTree.SubElement(
                    case, 'failure', type=bad[0]['severity'],
                    message=_x('; '.join('%s %s' % (f['id'], f['message']) for f in bad)))
                failure.text = _x('\n'.join('%s [%s] %s: observed %s, expected %s' % (
                    f['id'], f['severity'], f.get('key'), f.get('observed'), f.get('expected')) for f in bad))
            values = ns.get('values') or {}
            out = ElementTree.SubElement(case, 'system-out')
            out.text = _x('time=%s intvl=%s probes=%s detection_seconds=%s keepalive_sockets=%s%s' % (
                values.get('time'), values.get('intvl'), values.get('probes'), ns.get('detection_seconds'),
                ns['sockets']['keepalive'],
                ''.join('\n%s [info] %s' % (f['id'], f['message']) for f in ns['findings'] if f['severity'] == 'info')))
            cases.append(case)
    suite = ElementTree.Element('testsuite', name='tcplab.keepalive.audit', tests=str(len(cases)),
                                failures=str(failures), errors=str(errors), skipped='0',
                                timestamp=report['generated_at'])
    suite.extend(cases)
    suites = ElementTree.Element('testsuites', name='tcplab.keepalive.audit', tests=str(len(cases)),
                                 failures=str(failures), errors=str(errors))
    suites.append(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(suites, encoding='unicode') + '\n'


def histogram(values, edges=BIN_EDGES):
    """[(label, low, high, count)]: bins [edge, next edge), and a last open bin."""
    bins = []
    for i, low in enumerate(edges):
        high = edges[i + 1] if i + 1 < len(edges) else None
        bins.append([low, high, 0])
    for value in values:
        for b in reversed(bins):
            if value >= b[0]:
                b[2] += 1
                break
    out = []
    for low, high, count in bins:
        label = '%s-%s s' % (_short(low), _short(high)) if high is not None else '>= %s s' % _short(low)
        out.append((label, low, high, count))
    return out


def _short(seconds):
    if seconds >= 3600 and seconds % 3600 == 0:
        return '%dh' % (seconds // 3600)
    return str(seconds)


def render_svg(values, limit=None, width=720, height=260):
    """Inline SVG bar chart of the detection-time histogram (namespaces per bin)."""
    bins = histogram(values)
    top = max([b[3] for b in bins] + [1])
    left, bottom, pad = 40, 50, 10
    plot_w = width - left - pad
    plot_h = height - bottom - pad
    bar_w = plot_w / float(len(bins))
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" id="histogram" role="img" width="%d" height="%d" '
             'viewBox="0 0 %d %d" aria-label="Histogram of dead-peer detection times">' % (width, height, width, height),
             '<title>Dead-peer detection time per namespace</title>',
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>' % (left, pad + plot_h, width - pad, pad + plot_h),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>' % (left, pad, left, pad + plot_h)]
    for tick in range(0, top + 1, max(1, top // 5)):
        y = pad + plot_h - plot_h * tick / float(top)
        parts.append('<text x="%d" y="%.1f" font-size="11" text-anchor="end">%d</text>' % (left - 4, y + 4, tick))
    for i, (label, low, high, count) in enumerate(bins):
        x = left + i * bar_w
        h = plot_h * count / float(top)
        bad = limit is not None and (high is None or high - 1 > limit)
        color = '#c0392b' if bad and count else '#2e86c1'
        parts.append('<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %d</title></rect>'
                     % (x + 3, pad + plot_h - h, bar_w - 6, h, color, xml_escape(label), count))
        if count:
            parts.append('<text x="%.1f" y="%.1f" font-size="11" text-anchor="middle">%d</text>'
                         % (x + bar_w / 2, pad + plot_h - h - 3, count))
        parts.append('<text x="%.1f" y="%d" font-size="10" text-anchor="middle">%s</text>'
                     % (x + bar_w / 2, pad + plot_h + 15, xml_escape(label)))
    parts.append('<text x="%d" y="%d" font-size="12" text-anchor="middle">dead-peer detection time '
                 '(time + intvl x probes)%s</text>'
                 % (left + plot_w / 2, height - 8, xml_escape(', limit %d s' % limit) if limit is not None else ''))
    parts.append('</svg>')
    return '\n'.join(parts)


HTML_STYLE = '''
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;min-width:8em}
.card b{display:block;font-size:1.6em}.ok{color:#1e8449}.bad{color:#c0392b}.warn{color:#b9770e}
table{border-collapse:collapse;width:100%;font-size:.9em}th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2;cursor:pointer;user-select:none}th.asc:after{content:" \\25b2"}th.desc:after{content:" \\25bc"}
tr.noncompliant td:first-child{border-left:4px solid #c0392b}tr.compliant td:first-child{border-left:4px solid #1e8449}
tr.unreachable td:first-child,tr.failed td:first-child{border-left:4px solid #7f8c8d}
'''

HTML_SCRIPT = '''
(function(){
  var table=document.getElementById('hosts');
  var heads=table.tHead.rows[0].cells;
  function key(cell,numeric){var v=cell.getAttribute('data-sort');if(v===null){v=cell.textContent;}
    if(numeric){var n=parseFloat(v);return isNaN(n)?Infinity:n;}return v.toLowerCase();}
  Array.prototype.forEach.call(heads,function(th,col){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      Array.prototype.forEach.call(heads,function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      var numeric=th.getAttribute('data-type')==='number';
      var body=table.tBodies[0];var list=Array.prototype.slice.call(body.rows);
      list.sort(function(a,b){var x=key(a.cells[col],numeric),y=key(b.cells[col],numeric);
        return (x<y?-1:x>y?1:0)*(asc?1:-1);});
      list.forEach(function(r){body.appendChild(r);});
    });
  });
})();
'''

TABLE_COLUMNS = (('host', 'Host', 'text'), ('status', 'Status', 'text'), ('namespace', 'Namespace', 'text'),
                 ('time', 'time', 'number'), ('intvl', 'intvl', 'number'), ('probes', 'probes', 'number'),
                 ('detection_seconds', 'Detection (s)', 'number'), ('keepalive_sockets', 'Keepalive sockets', 'number'),
                 ('compliant', 'Compliant', 'text'), ('messages', 'Findings', 'text'))


def _h(value):
    return xml_escape(_x(value), {'"': '&quot;', "'": '&#x27;'})


def render_html(report):
    summary = report['summary']
    policy = report.get('policy') or {}
    limit = policy.get('max_detection_seconds')
    detections = [ns['detection_seconds'] for host in report['hosts'].values() for ns in host['namespaces']
                  if ns.get('detection_seconds') is not None]
    cards = [('Hosts', summary['hosts'], ''), ('Compliant', summary['compliant'], 'ok'),
             ('Non-compliant', summary['noncompliant'], 'bad'), ('Unreachable', summary['unreachable'], 'warn'),
             ('Failed', summary['failed'], 'warn'), ('Namespaces', summary['namespaces'], ''),
             ('Errors', summary['findings']['error'], 'bad'), ('Warnings', summary['findings']['warning'], 'warn'),
             ('Info', summary['findings']['info'], '')]
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           '<title>tcplab.keepalive audit</title>', '<style>%s</style></head><body>' % HTML_STYLE,
           '<h1>TCP keepalive audit</h1>',
           '<p>Generated %s. Policy: %s.</p>' % (_h(report['generated_at']), _h(describe(policy))),
           '<div class="cards" id="summary">']
    for title, value, cls in cards:
        out.append('<div class="card"><b class="%s" id="count-%s">%d</b>%s</div>'
                   % (cls, title.lower().replace(' ', '-'), value, _h(title)))
    out.append('</div><h2>Detection time</h2>')
    out.append(render_svg(detections, limit))
    out.append('<h2>Hosts and namespaces</h2><p>Click a column header to sort.</p>')
    out.append('<table id="hosts"><thead><tr>%s</tr></thead><tbody>'
               % ''.join('<th data-type="%s">%s</th>' % (kind, _h(title)) for dummy, title, kind in TABLE_COLUMNS))
    for row in rows(report):
        cls = row['status'] if row['status'] != 'ok' else ('compliant' if row['compliant'] else 'noncompliant')
        cells = []
        for key, dummy, dummy2 in TABLE_COLUMNS:
            value = row[key]
            if key == 'compliant':
                value = 'yes' if value else 'no'
            cells.append('<td data-sort="%s">%s</td>' % (_h(value), _h(value)))
        out.append('<tr class="%s">%s</tr>' % (cls, ''.join(cells)))
    out.append('</tbody></table>')
    out.append('<script>%s</script></body></html>' % HTML_SCRIPT)
    return '\n'.join(out) + '\n'


def describe(policy):
    if not policy:
        return 'none'
    parts = []
    if policy.get('preset'):
        parts.append('preset %s' % policy['preset'])
    for key in ('time', 'intvl', 'probes'):
        rng = policy.get(key) or {}
        if rng.get('min') is not None or rng.get('max') is not None:
            parts.append('%s %s..%s' % (key, '' if rng.get('min') is None else rng['min'],
                                        '' if rng.get('max') is None else rng['max']))
    if policy.get('max_detection_seconds') is not None:
        parts.append('detection <= %s s' % policy['max_detection_seconds'])
    return ', '.join(parts) or 'none'


def render_all(report):
    return {
        'audit.json': json.dumps(report, indent=2, sort_keys=True) + '\n',
        'audit.csv': render_csv(report),
        'audit.junit.xml': render_junit(report),
        'audit.html': render_html(report),
    }


def _make_dest(dest):
    """Create dest; returns the topmost directory created (to remove on failure), or None."""
    if os.path.isdir(dest):
        return None
    if os.path.lexists(dest):
        raise ReportError(MSG_DEST_FILE % (dest,))
    top = dest
    while not os.path.lexists(os.path.dirname(top)) and os.path.dirname(top) != top:
        top = os.path.dirname(top)
    try:
        os.makedirs(dest, 0o755)
    except OSError as exc:
        shutil.rmtree(top, ignore_errors=True)
        raise ReportError(MSG_DEST_PARENT % (dest, exc.strerror or exc))
    return top


def _unchanged(path, text):
    try:
        with open(path) as handle:
            return handle.read() == text
    except (IOError, OSError, ValueError):
        return False


def write_reports(dest, report, extra=None):
    """Write the four files (and extra: name -> text, rendered by the caller); returns the names
    whose content changed.

    Everything is rendered before the first byte is written. The new files are
    written next to the old ones first and renamed into place only when all
    are written, so a failure leaves the old report as it was, and removes a
    directory this call created.
    """
    texts = render_all(report)
    texts.update(extra or {})
    created = _make_dest(dest)
    staged = []
    try:
        for name, text in texts.items():
            path = os.path.join(dest, name)
            if _unchanged(path, text):
                continue
            tmp = os.path.join(dest, '.%s.new' % name)
            atomic_write(tmp, text, 0o644)
            staged.append((tmp, path, name))
        for tmp, path, dummy in staged:
            os.rename(tmp, path)
    except BaseException:
        for tmp, dummy, dummy2 in staged:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return [name for dummy, dummy2, name in staged]


def summary_lines(report):
    """A few lines for the end of the play."""
    s = report['summary']
    lines = ['%d hosts: %d compliant, %d non-compliant, %d unreachable, %d failed; %d namespaces; '
             'findings: %d error, %d warning, %d info'
             % (s['hosts'], s['compliant'], s['noncompliant'], s['unreachable'], s['failed'], s['namespaces'],
                s['findings']['error'], s['findings']['warning'], s['findings']['info'])]
    if s['detection_seconds']['max'] is not None:
        lines.append('detection time: min %d s, median %d s, max %d s'
                     % (s['detection_seconds']['min'], s['detection_seconds']['median'], s['detection_seconds']['max']))
    for title, status in (('non-compliant', 'ok'), ('unreachable', 'unreachable'), ('failed', 'failed')):
        names = [name for name, host in report['hosts'].items()
                 if host['status'] == status and not host['compliant']]
        if names:
            more = ' and %d more' % (len(names) - 10) if len(names) > 10 else ''
            lines.append('%s: %s%s' % (title, ', '.join(names[:10]), more))
    return lines


def should_fail(report, fail_on):
    """True when the play must fail: fail_on none | warning | error.

    error: any error finding, or a host that could not be audited.
    warning: also any warning finding.
    """
    if fail_on == 'none':
        return False
    s = report['summary']
    bad = s['findings']['error'] + s['unreachable'] + s['failed']
    if fail_on == 'warning':
        bad += s['findings']['warning']
    return bad > 0
