"""What an idle-timeout run may change on a lab host and must put back, read
in the host's network namespace: forwarding, redirects, the conntrack and
keepalive sysctls, the routes, all iptables rules, and the collection's
processes in this namespace. Prints JSON."""
import glob
import json
import os
import subprocess

PATTERNS = ('/proc/sys/net/ipv4/ip_forward', '/proc/sys/net/ipv4/conf/*/forwarding',
            '/proc/sys/net/ipv4/conf/*/send_redirects', '/proc/sys/net/ipv4/conf/*/accept_redirects',
            '/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established',
            '/proc/sys/net/netfilter/nf_conntrack_tcp_loose', '/proc/sys/net/ipv4/tcp_keepalive_*')


def run(*argv):
    return subprocess.run(list(argv), stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.splitlines()


state = {'sysctl': {}, 'routes': run('ip', '-o', 'route', 'show', 'table', 'all'),
         'rules': run('iptables', '-w', '10', '-S'), 'processes': []}
for pattern in PATTERNS:
    for path in sorted(glob.glob(pattern)):
        with open(path) as handle:
            state['sysctl'][path[len('/proc/sys/'):]] = handle.read().strip()
here = os.readlink('/proc/self/ns/net')
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        if os.readlink('/proc/%s/ns/net' % pid) != here:
            continue
        with open('/proc/%s/cmdline' % pid, 'rb') as handle:
            args = handle.read().replace(b'\0', b' ').decode('utf-8', 'replace')
    except OSError:
        continue
    if pid in (str(os.getpid()), str(os.getppid())) or 'host_state.py' in args:
        continue
    if 'tcplab-keepalive' in args or 'conntrack_watch' in args:
        state['processes'].append(args.strip()[:200])
print(json.dumps(state, sort_keys=True))
