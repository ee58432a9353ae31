#!/usr/bin/env python
"""What proving a network namespace's identity costs: the cookie (SO_NETNS_COOKIE) beside the inode, read
by _proc.netns_identity, against the other ways to run code in a namespace - all in one invocation, so the
ratios compare runs on the same machine at the same time.

Figures, in microseconds per namespace (median of --rounds):
  stat        the inode alone (os.stat of the nsfs file): the baseline, what the collection read before
  own         the caller's own namespace: one unix socket, getsockopt
  thread      another namespace: _proc.netns_identity (one short thread that setns()es, the caller never moves)
  batch       N namespaces at once: _proc.netns_identities (one thread for all of them), per namespace
  fork        a forked child that setns()es and answers over a pipe (_netns.run_in, as the sysctl module's
              reads and writes), entering with _proc.setns_net
  run-in      _netns.run_in as the sysctl module calls it (it enters with _proc.setns_net too; until
              it did, its setns looked up libc with ctypes.util.find_library in every child, which runs
              ldconfig: 5 to 10 times the fork figure)
  ip-exec     ip netns exec python -c ... (a new interpreter per namespace)

Run as root from the checkout:
    .venv/bin/python benchmarks/netns_identity.py [--namespaces 20] [--rounds 5] [--prefix tcplab-bid-]

The namespaces are made with --prefix and a random suffix and removed at the end (only while their inode is
the one made here). On a kernel without SO_NETNS_COOKIE (Linux < 5.14) the cookie is None and the thread and
batch figures are the cost of finding that out (no namespace is entered).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COOKIE_CODE = ('import socket, struct; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); '
               'print(struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0])')


def load_collection():
    """Import this checkout as ansible_collections.tcplab.keepalive (as tests/unit/conftest.py does)."""
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder  # pylint: disable=import-outside-toplevel
    root = tempfile.mkdtemp(prefix='tcplab-bench-')
    os.makedirs(os.path.join(root, 'ansible_collections', 'tcplab'))
    os.symlink(ROOT, os.path.join(root, 'ansible_collections', 'tcplab', 'keepalive'))
    _AnsibleCollectionFinder(paths=[root], scan_sys_paths=False)._install()  # pylint: disable=protected-access
    from ansible_collections.tcplab.keepalive.plugins.module_utils import _netns, _proc  # pylint: disable=import-outside-toplevel
    return _netns, _proc


def per_call(func, calls):
    """Microseconds per call of func over calls calls."""
    start = time.perf_counter()
    for dummy in range(calls):
        func()
    return (time.perf_counter() - start) / calls * 1e6


def measure(proc, netns, paths, calls):
    """One round: {figure: microseconds per namespace}."""
    one = paths[0]
    figures = {
        'stat': per_call(lambda: proc.netns_inode(one), calls),
        'own': per_call(proc.netns_identity, calls),
        'thread': per_call(lambda: proc.netns_identity(one), calls),
        'batch': per_call(lambda: proc.netns_identities(paths), max(1, calls // len(paths))) / len(paths),
        'fork': per_call(lambda: netns.run_in(one, proc.netns_cookie, enter=proc.setns_net), max(1, calls // 10)),
        'run-in': per_call(lambda: netns.run_in(one, proc.netns_cookie), max(1, calls // 10)),
    }
    figures['ip-exec'] = per_call(lambda: subprocess.run(
        ['ip', 'netns', 'exec', os.path.basename(one), sys.executable, '-I', '-S', '-c', COOKIE_CODE],
        capture_output=True, check=True), 3)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--namespaces', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--calls', type=int, default=200, help='calls per figure and round (fork: a tenth)')
    parser.add_argument('--prefix', default='tcplab-bid-')
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit('run as root: the benchmark makes network namespaces')
    netns, proc = load_collection()
    made = []
    try:
        for dummy in range(args.namespaces):
            name = args.prefix + secrets.token_hex(4)
            subprocess.run(['ip', 'netns', 'add', name], check=True)
            made.append((name, proc.netns_inode('/run/netns/' + name)))
        paths = ['/run/netns/' + name for name, dummy in made]
        identities = proc.netns_identities(paths)
        cookies = [cookie for dummy, cookie in identities.values()]
        print('kernel %s, Python %s, %d namespaces, cookies %s' % (
            os.uname().release, sys.version.split()[0], len(paths),
            'all distinct' if None not in cookies and len(set(cookies)) == len(cookies) else 'unavailable (None)'))
        rounds = [measure(proc, netns, paths, args.calls) for dummy in range(args.rounds)]
        base = statistics.median(r['fork'] for r in rounds)
        print('%-8s %12s %14s' % ('figure', 'us/namespace', 'ratio to fork'))
        for key in ('stat', 'own', 'thread', 'batch', 'fork', 'run-in', 'ip-exec'):
            value = statistics.median(r[key] for r in rounds)
            print('%-8s %12.1f %14.3f' % (key, value, value / base))
    finally:
        for name, inode in made:
            if proc.netns_inode('/run/netns/' + name) == inode:  # ours only: never by the name alone
                subprocess.run(['ip', 'netns', 'del', name], check=False)


if __name__ == '__main__':
    main()
