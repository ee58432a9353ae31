#!/usr/bin/env python
"""Lab VMs: image build cold and cached, boot-to-SSH per VM, and the two-host
experiment on VMs against the same experiment on namespace lab hosts - all in
one invocation, so the ratios compare runs on the same machine at the same
time (issue "Lab VMs", section 5). Goals on a 2-core machine: cached image
ready in <= 5 s, boot-to-SSH <= 25 s per VM under TCG, three VMs booted in
parallel <= 40 s, the VM experiment within 2x of the namespace one.

Run as root after scripts/bootstrap.sh (or scripts/test.sh), from the checkout:
    .venv/bin/python benchmarks/lab_vms.py [--rounds 2] [--release bookworm]
        [--experiment-only] [--baseline COLLECTIONS_PATH]
        [--vm-bridge B --ns-bridge B --vm-network N --ns-network N --netns-prefix P --ns-netns-prefix P
         --state-dir D] [--keep-labs]

--experiment-only skips the image and boot figures. --baseline runs the VM
experiment a second time per round with another checkout's collection (an
ANSIBLE_COLLECTIONS_PATH, e.g. a worktree of an older commit linked under
ansible_collections/tcplab/keepalive), so a change's effect is measured under
the same load as the figures it is compared with. The lab options move the
labs off their defaults (two people benchmarking on one machine).

Each timed run's verdict is listed at the end (with the reasons of a fail): the
runs are timed with experiment_assert false, so that a verdict failed by a VM's
kernel timers running late on an overloaded controller is said rather than
losing every figure of the invocation; any other failure stops it.

The cold build goes to a temporary cache (removed at the end); the labs use
their own bridges, namespace prefixes and networks and are removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import vm_smoke  # noqa: E402  pylint: disable=wrong-import-position

KEEPALIVE = {'time': 2, 'intvl': 1, 'probes': 3}
VM_LAB = {'lab_bridge': 'tcplabbvm0', 'lab_netns_prefix': 'tcplab-bvm-', 'lab_network': '198.18.51.0/24',
          'lab_state_dir': '/run/tcplab-keepalive/bench-vms'}
NS_LAB = {'lab_bridge': 'tcplabbns0', 'lab_netns_prefix': 'tcplab-bns-', 'lab_network': '198.18.52.0/24',
          'lab_state_dir': '/run/tcplab-keepalive/bench-ns'}
RELEASES = ('bookworm', 'bullseye', 'trixie')


def ansible_playbook(*args, env=None):
    """Run ansible-playbook; returns (seconds, stdout); raises with the output on failure."""
    start = time.monotonic()
    proc = subprocess.run(['ansible-playbook'] + list(args), capture_output=True, text=True, check=False,
                          env=dict(os.environ, **(env or {})))
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit('ansible-playbook %s failed (rc %d)' % (' '.join(args), proc.returncode))
    return seconds, proc.stdout


def lab(spec, hosts, state='present'):
    extra = dict(spec, lab_hosts=hosts, lab_state=state)
    return ansible_playbook('tcplab.keepalive.lab', '-e', json.dumps(extra))


VERDICTS = []   # (label, verdict, reasons) of every timed run: a failed verdict is timed and said, not hidden
RUNS = []       # every run's label (None for a warm-up): numbers the run ids


def experiment(spec, client, server, reports, install=False, collections=None, label=None):
    """Seconds of one run. A run that fails for any other reason than its verdict stops the benchmark; a verdict
    fail (a VM's kernel timers late on an overloaded controller) is timed and listed at the end with its reasons."""
    RUNS.append(label)
    run_id = 'bench-%d-%d' % (os.getpid(), len(RUNS))
    extra = {'experiment_keepalive': KEEPALIVE, 'experiment_idle_probes': 1, 'experiment_client': client,
             'experiment_server': server, 'experiment_report_dir': reports, 'experiment_install_deps': install,
             'experiment_run_id': run_id, 'experiment_assert': False}
    env = {'ANSIBLE_COLLECTIONS_PATH': collections} if collections else None
    seconds = ansible_playbook('-i', os.path.join(spec['lab_state_dir'], 'inventory.yml'), 'tcplab.keepalive.experiment',
                               '-e', json.dumps(extra), env=env)[0]
    if label is not None:
        with open(os.path.join(reports, run_id, 'report.json')) as handle:
            report = json.load(handle)
        VERDICTS.append((label, report.get('verdict'), report.get('reasons') or []))
    return seconds


def lab_options(parser):
    """The options that move the two labs (bridges, networks, namespace prefix, state) off their defaults."""
    parser.add_argument('--vm-bridge', default=VM_LAB['lab_bridge'])
    parser.add_argument('--ns-bridge', default=NS_LAB['lab_bridge'])
    parser.add_argument('--vm-network', default=VM_LAB['lab_network'])
    parser.add_argument('--ns-network', default=NS_LAB['lab_network'])
    parser.add_argument('--netns-prefix', help='namespace prefix of the VM lab (the namespace lab adds "n-")')
    parser.add_argument('--ns-netns-prefix', help='namespace prefix of the namespace lab (instead of --netns-prefix "n-")')
    parser.add_argument('--state-dir', help='state directories of the labs: this with "-vms" and with "-ns" appended')
    parser.add_argument('--keep-labs', action='store_true', help='leave the two labs up at the end (to run again)')


def configure_labs(args):
    VM_LAB.update(lab_bridge=args.vm_bridge, lab_network=args.vm_network)
    NS_LAB.update(lab_bridge=args.ns_bridge, lab_network=args.ns_network)
    if args.netns_prefix:
        VM_LAB['lab_netns_prefix'], NS_LAB['lab_netns_prefix'] = args.netns_prefix, args.netns_prefix + 'n-'
    if args.ns_netns_prefix:
        NS_LAB['lab_netns_prefix'] = args.ns_netns_prefix
    if args.state_dir:
        VM_LAB['lab_state_dir'], NS_LAB['lab_state_dir'] = args.state_dir + '-vms', args.state_dir + '-ns'


def experiment_figures(args, reports):
    """The two-host experiment on VMs and on namespaces (and with the baseline collection), round by round."""
    lab(VM_LAB, [{'name': 'client', 'kind': 'vm', 'release': 'bookworm'},
                 {'name': 'server', 'kind': 'vm', 'release': 'bookworm'}])
    lab(NS_LAB, ['client', 'server'])
    experiment(VM_LAB, 'client', 'server', reports, install=True)  # warm-up: installs tcpdump and iptables
    experiment(NS_LAB, 'client', 'server', reports)
    vms, nss, base = [], [], []
    for _round in range(args.rounds):
        if args.baseline:
            base.append(experiment(VM_LAB, 'client', 'server', reports, collections=args.baseline, label='baseline VMs'))
        vms.append(experiment(VM_LAB, 'client', 'server', reports, label='VMs'))
        nss.append(experiment(NS_LAB, 'client', 'server', reports, label='namespaces'))
    ratios = [v / n for v, n in zip(vms, nss)]
    print('two-host experiment 2/1/3, 1 idle probe: VMs %s s, namespaces %s s' % (
        ', '.join('%.1f' % v for v in vms), ', '.join('%.1f' % n for n in nss)))
    print('ratio VMs / namespaces per round: %s, median %.2f (goal <= 2)' % (
        ', '.join('%.2f' % r for r in ratios), statistics.median(ratios)))
    if base:
        print('baseline (%s) on the same VMs: %s s, ratio per round %s, median %.2f' % (
            args.baseline, ', '.join('%.1f' % b for b in base), ', '.join('%.2f' % (b / n) for b, n in zip(base, nss)),
            statistics.median([b / n for b, n in zip(base, nss)])))
    print('load average after the rounds: %s' % ' '.join('%.2f' % x for x in os.getloadavg()))
    print('verdicts: %s' % ', '.join('%s %s' % (label, verdict) for label, verdict, _reasons in VERDICTS))
    for label, verdict, reasons in VERDICTS:
        if verdict != 'pass':
            print('  %s: %s' % (label, '; '.join(reasons)[:400]))


def image_figures(release):
    vm_smoke._install_collection_loader()  # pylint: disable=protected-access
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import Runner
    from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import ImageCache
    run = Runner(vm_smoke.LocalModule())
    cold_dir = tempfile.mkdtemp(prefix='tcplab-bench-images-', dir='/var/tmp')
    try:
        cold = ImageCache(run, cold_dir).ensure(release)
        cached = [ImageCache(run, cold_dir).ensure(release)['seconds'] for _round in range(5)]
    finally:
        shutil.rmtree(cold_dir, ignore_errors=True)
    return cold['seconds'], statistics.median(cached)


def boot_figures():
    """Boot the three releases in parallel: wall seconds and each VM's boot-to-SSH and accelerator."""
    hosts = [{'name': 'b-' + release, 'kind': 'vm', 'release': release} for release in RELEASES]
    lab(VM_LAB, [], state='absent')
    seconds = lab(VM_LAB, hosts)[0]
    with open(os.path.join(VM_LAB['lab_state_dir'], 'lab.json')) as handle:
        manifest = json.load(handle)
    return seconds, manifest


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--release', default='bookworm')
    parser.add_argument('--experiment-only', action='store_true', help='only the experiment figures (no image or boot figures)')
    parser.add_argument('--baseline', metavar='COLLECTIONS_PATH', help='also run the VM experiment with this collection')
    lab_options(parser)
    args = parser.parse_args()
    configure_labs(args)
    reports = tempfile.mkdtemp(prefix='tcplab-bench-reports-')
    print('load average at the start: %s' % ' '.join('%.2f' % x for x in os.getloadavg()))
    try:
        if not args.experiment_only:
            boot_and_image_figures(args)
        experiment_figures(args, reports)
    finally:
        if not args.keep_labs:
            lab(VM_LAB, [], state='absent')
            lab(NS_LAB, [], state='absent')
        shutil.rmtree(reports, ignore_errors=True)


def boot_and_image_figures(args):
    """Image build cold and cached, three VMs booted in parallel, one VM alone."""
    cold, cached = image_figures(args.release)
    print('image %s: cold build %.1f s, cached %.3f s (median of 5; goal <= 5 s)' % (args.release, cold, cached))
    wall, manifest = boot_figures()
    print('three VMs (%s) present in parallel: %.1f s (goal <= 40 s, images cached)' % (', '.join(RELEASES), wall))
    for name, entry in sorted(manifest.get('vms', {}).items()):
        print('  %s (%s): boot to ssh %s s under %s (goal <= 25 s)' % (
            name, entry.get('release'), entry.get('boot_seconds'), entry.get('accel')))
    lab(VM_LAB, [], state='absent')
    alone = lab(VM_LAB, [{'name': 'alone', 'kind': 'vm', 'release': args.release}])[0]
    with open(os.path.join(VM_LAB['lab_state_dir'], 'lab.json')) as handle:
        entry = json.load(handle).get('vms', {}).get('alone', {})
    print('one VM (%s) alone: boot to ssh %s s under %s, lab present %.1f s (goal <= 25 s)' % (
        args.release, entry.get('boot_seconds'), entry.get('accel'), alone))
    lab(VM_LAB, [], state='absent')


if __name__ == '__main__':
    main()
