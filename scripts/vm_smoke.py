#!/usr/bin/env python
"""Smoke run of the lab VM foundations: image, proxy, one VM, ssh, apt, power-off, cleanup.

Builds (or takes from the cache) a Debian image, makes a bridge with an
address (no NAT, no forwarding), starts the lab apt proxy on it, boots one VM,
logs in as tcplab over ssh with the pinned host key, reads a keepalive sysctl
through sudo, installs one package through the proxy, powers the VM off and
removes everything it made (the image cache stays). Prints a JSON summary.

Run as root from the checkout:  .venv/bin/python scripts/vm_smoke.py [--release bookworm]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _install_collection_loader():
    from ansible.utils.collection_loader import AnsibleCollectionConfig
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder
    if AnsibleCollectionConfig.collection_finder is not None:
        return
    base = tempfile.mkdtemp(prefix='tcplab-vm-smoke-')
    os.makedirs(os.path.join(base, 'ansible_collections', 'tcplab'))
    os.symlink(ROOT, os.path.join(base, 'ansible_collections', 'tcplab', 'keepalive'))
    _AnsibleCollectionFinder(paths=[base], scan_sys_paths=False)._install()


class LocalModule:
    """The part of AnsibleModule that _common.Runner uses, on subprocess."""

    def run_command(self, args, check_rc=False, data=None, binary_data=False, environ_update=None,
                    use_unsafe_shell=False):
        env = dict(os.environ, **(environ_update or {}))
        proc = subprocess.run(args, input=data.encode() if isinstance(data, str) else data,
                              capture_output=True, env=env, check=False)
        return proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace')


def log(line):
    print('[%s] %s' % (time.strftime('%H:%M:%S'), line), flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--release', default='bookworm')
    parser.add_argument('--cache-dir', default='/var/cache/tcplab-keepalive-test-vm')
    parser.add_argument('--state-dir', default='/run/tcplab-test-vm/smoke')
    parser.add_argument('--bridge', default='tkvm0')
    parser.add_argument('--bridge-address', default='198.19.90.1/24')
    parser.add_argument('--address', default='198.19.90.10/24')
    parser.add_argument('--tap-prefix', default='tkvmt')
    parser.add_argument('--accel', default='auto', choices=['auto', 'kvm', 'tcg'])
    parser.add_argument('--rebuild', action='store_true', help='build the image even if cached (cold timing)')
    parser.add_argument('--package', default='tcpdump', help='installed in the VM through the proxy')
    return parser.parse_args(argv)


def ensure_bridge(run, bridge, cidr):
    """Create the bridge unless it exists; True when this run made it (and so removes it)."""
    rc, out, err = run(['ip', 'link', 'show', 'dev', bridge], check=False)
    if rc == 0:
        return False
    run(['ip', 'link', 'add', 'name', bridge, 'type', 'bridge'])
    run(['ip', 'addr', 'add', cidr, 'dev', bridge])
    run(['ip', 'link', 'set', 'dev', bridge, 'up'])
    return True


def in_vm(run, vm, *command):
    rc, out, err = run(vm.ssh_argv(*command), check=False)
    return {'rc': rc, 'out': out.strip(), 'err': err.strip()[-500:]}


def smoke(args):
    _install_collection_loader()
    from ansible_collections.tcplab.keepalive.plugins.module_utils._apt_proxy import AptProxy
    from ansible_collections.tcplab.keepalive.plugins.module_utils._common import Runner
    from ansible_collections.tcplab.keepalive.plugins.module_utils._vm import Vm
    from ansible_collections.tcplab.keepalive.plugins.module_utils._vm_image import ImageCache

    run = Runner(LocalModule())
    result = {'release': args.release}
    cache = ImageCache(run, args.cache_dir, log=log)
    image = cache.ensure(args.release, rebuild=args.rebuild)
    result['image'] = {'built': image['built'], 'seconds': image['seconds'], 'dir': image['dir'],
                       'kernel_version': image['kernel_version']}
    result['image_packages_absent'] = sorted({'tcpdump', 'iptables', 'nftables', 'python3-scapy'} - set(image['packages']))
    again = cache.ensure(args.release)
    result['image_cached_seconds'] = again['seconds']
    log('image %s: %s in %.1f s; cached lookup %.2f s' % (
        image['key'], 'built' if image['built'] else 'cached', image['seconds'], again['seconds']))
    disk_stat = os.stat(image['disk'])

    os.makedirs(args.state_dir, mode=0o711, exist_ok=True)
    os.chmod(os.path.dirname(args.state_dir), 0o711)
    made_bridge = ensure_bridge(run, args.bridge, args.bridge_address)
    gateway = args.bridge_address.split('/')[0]
    proxy = AptProxy(run, os.path.join(args.state_dir, 'apt-proxy'), gateway)
    key = os.path.join(args.state_dir, 'id_ed25519')
    vm = None
    try:
        if not os.path.exists(key):
            run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'tcplab-vm-smoke', '-f', key])
        result['proxy'] = proxy.start()
        log('apt proxy at %s (pid %s)' % (proxy.url, result['proxy']['pid']))
        vm = Vm(run, 'smoke1', os.path.join(args.state_dir, 'vms', 'smoke1'), image, args.bridge, args.address,
                'unit-vm', key, apt_proxy=proxy.url, accel=args.accel, tap_prefix=args.tap_prefix, log=log)
        started = vm.start()
        result['vm'] = {k: started[k] for k in ('accel', 'boot_seconds', 'ssh_seconds', 'notes', 'tap', 'mac', 'address')}
        log('VM up (%s): ssh login %.1f s after the QEMU start that booted, %.1f s in all' % (
            started['accel'], started['ssh_seconds'], started['boot_seconds']))
        result['sysctl'] = in_vm(run, vm, 'sudo', '-n', 'sysctl', 'net.ipv4.tcp_keepalive_time')
        result['python'] = in_vm(run, vm, 'python3', '--version')
        result['whoami'] = in_vm(run, vm, 'id', '-un')
        result['hostname'] = in_vm(run, vm, 'hostname')
        result['has_package_before'] = in_vm(run, vm, 'dpkg-query', '-W', args.package)['rc'] == 0
        begin = time.monotonic()
        result['apt'] = in_vm(run, vm, 'sudo', '-n', 'sh', '-c',
                              'apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive '
                              'apt-get install -y -q %s >/dev/null && dpkg-query -W %s' % (args.package, args.package))
        result['apt']['seconds'] = round(time.monotonic() - begin, 1)
        log('apt-get install %s: rc %d in %.1f s' % (args.package, result['apt']['rc'], result['apt']['seconds']))
        begin = time.monotonic()
        result['stop'] = vm.stop()
        result['stop']['seconds'] = round(time.monotonic() - begin, 1)
        log('VM stopped (%s) in %.1f s' % (result['stop']['stopped'], result['stop']['seconds']))
        result['tap_left'] = run(['ip', 'link', 'show', 'dev', vm.tap], check=False)[0] == 0
        result['overlay_left'] = os.path.exists(vm.files['overlay'])
    finally:
        if vm is not None:
            vm.stop(timeout=0)
        result['proxy_stop'] = proxy.stop(purge=True)
        if made_bridge:
            run(['ip', 'link', 'del', 'dev', args.bridge])
        shutil.rmtree(args.state_dir, ignore_errors=True)
    after = os.stat(image['disk'])
    result['base_unchanged'] = (after.st_mtime_ns, after.st_size) == (disk_stat.st_mtime_ns, disk_stat.st_size)
    return result


def main(argv=None):
    if os.geteuid() != 0:
        sys.exit('vm_smoke.py needs root (bridge, tap, QEMU)')
    result = smoke(parse_args(argv))
    print(json.dumps(result, indent=2, sort_keys=True))
    ok = (result['sysctl']['rc'] == 0 and result['python']['rc'] == 0 and result['apt']['rc'] == 0
          and not result['tap_left'] and not result['overlay_left'] and result['base_unchanged'])
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
