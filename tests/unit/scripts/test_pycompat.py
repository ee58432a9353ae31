# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Target Pythons: scripts/pycompat.py passes on this checkout with every installed Python from the declared
minimum up (a release Python of bullseye, bookworm or trixie must be among them), catches each kind of
incompatibility in a small collection made for the test, and the modules and the detached programs really run
under each of those Pythons: a module through Ansible (AnsiballZ) and the endpoint and timer programs directly."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ansible_collections.tcplab.keepalive.plugins.module_utils import _endpoint, _iptables

REPO_ROOT = Path(__file__).resolve().parents[3]
SCRIPT = REPO_ROOT / 'scripts' / 'pycompat.py'
COLLECTIONS = REPO_ROOT / '.build' / 'collections'
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / 'ansible-playbook'
DECLARED_MINIMUM = '3.8'
RELEASES = {'3.9': 'bullseye', '3.11': 'bookworm', '3.13': 'trixie'}
PYENV_VERSIONS = Path(os.environ.get('PYENV_ROOT') or os.path.expanduser('~/.pyenv')) / 'versions'


def pyenv_python(minor):
    """The newest installed pyenv interpreter of X.Y, or None."""
    found = sorted(glob.glob(str(PYENV_VERSIONS / ('%s.*' % minor) / 'bin' / 'python3')),
                   key=lambda path: [int(part) for part in re.findall(r'\d+', Path(path).parts[-3])])
    return found[-1] if found else None


def target_pythons():
    """{X.Y: path} of the installed pyenv Pythons at or above the minimum."""
    found = {}
    for path in glob.glob(str(PYENV_VERSIONS / '3.*' / 'bin' / 'python3')):
        minor = '.'.join(Path(path).parts[-3].split('.')[:2])
        if tuple(map(int, minor.split('.'))) >= tuple(map(int, DECLARED_MINIMUM.split('.'))):
            found[minor] = pyenv_python(minor)
    return dict(sorted(found.items(), key=lambda item: tuple(map(int, item[0].split('.')))))


@pytest.fixture(scope='module')
def pythons():
    found = target_pythons()
    releases = [minor for minor in RELEASES if minor in found]
    assert releases, ('none of the release Pythons %s is installed under %s: pyenv install one of them '
                      '(the target-Python checks must run on at least one)' % (', '.join(RELEASES), PYENV_VERSIONS))
    return found


def run_checker(*args, timeout=900):
    # a guard against a hang, not a bound on speed: on every interpreter, beside a loaded suite, the whole
    # checker took 66 s in one run's matrix and over 120 s in another
    proc = subprocess.run([sys.executable, str(SCRIPT)] + list(args), capture_output=True, text=True,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr


# -- the declared minimum ------------------------------------------------------

def test_the_declared_minimum_is_the_same_everywhere():
    config = (REPO_ROOT / 'tests' / 'config.yml').read_text()
    assert "python_requires: '>=%s'" % DECLARED_MINIMUM in config
    docs = (REPO_ROOT / 'docs' / 'targets.md').read_text()
    assert 'Python >= %s' % DECLARED_MINIMUM in docs
    for minor, release in RELEASES.items():
        assert release in docs and minor in docs


# -- this checkout -------------------------------------------------------------

@pytest.mark.once
def test_this_collection_passes_on_every_installed_target_python(pythons):
    rc, out = run_checker('--min', DECLARED_MINIMUM, '--require', ','.join(pythons))
    assert rc == 0, out
    for minor in pythons:
        assert re.search(r'^  %s\.\d+ +pyenv .* ok \(' % re.escape(minor), out, re.MULTILINE), out
    # the detached programs are files of their own (plugins/module_utils/_program_*.py), checked with the rest
    programs = sorted((REPO_ROOT / 'plugins' / 'module_utils').glob('_program_*.py'))
    assert len(programs) >= 4, programs
    checked = int(re.search(r'; (\d+) files,', out.splitlines()[0]).group(1))
    assert checked >= len(list((REPO_ROOT / 'plugins' / 'module_utils').glob('*.py'))), out
    assert ' 0 problems' in out


@pytest.mark.once
def test_a_required_python_that_is_missing_is_named(pythons):
    minor, path = next(iter(pythons.items()))
    rc, out = run_checker('--no-discover', '--no-vermin', '--python', path, '--require', '%s,3.99' % minor)
    assert rc == 1
    assert 'PROBLEM: Python 3.99 (required) is required but not installed: pyenv install 3.99' in out


@pytest.mark.once
def test_no_release_python_is_a_failure(pythons):
    others = [path for minor, path in pythons.items() if minor not in RELEASES]
    if not others:
        pytest.skip('needs an installed Python at or above %s that is no Debian release Python (3.8, 3.10, 3.12)'
                    % DECLARED_MINIMUM)
    rc, out = run_checker('--no-discover', '--no-vermin', '--python', others[0])
    assert rc == 1
    assert 'none of the release Pythons 3.9, 3.11, 3.13 is installed' in out


# -- a small collection with one problem each ----------------------------------

CLEAN_UTIL = '''
from __future__ import annotations

import os
import subprocess
import sys

from ansible_collections.tcplab.keepalive.plugins.module_utils._progs import HELPER_CODE as HELPER, OTHER_CODE

PROGRAM_CODE = r"""
import json, sys
print(json.dumps(sys.argv[1:]))
"""


def start(which):
    code = HELPER if which else OTHER_CODE
    return subprocess.Popen([sys.executable, '-c', code, 'x']), [sys.executable, '-c', PROGRAM_CODE]


def is_text(value):
    return isinstance(value, (str, bytes)) and os.O_RDONLY | os.O_CLOEXEC > 0
'''

PROGS_UTIL = '''
from __future__ import annotations

HELPER_CODE = "import os\\nprint(os.getpid())\\n"
OTHER_CODE = "import sys\\nsys.exit(0)\\n"
'''

MODULE = '''
from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.tcplab.keepalive.plugins.module_utils._util import start


def main():
    AnsibleModule(argument_spec={}).exit_json(changed=False)


if __name__ == '__main__':
    main()
'''

BROKEN = {
    'syntax of 3.10 (match)': (
        'plugins/module_utils/_bad.py',
        'from __future__ import annotations\n\ndef f(x):\n    match x:\n        case 1:\n            return 1\n',
        r'compile plugins/module_utils/_bad\.py: SyntaxError|_bad\.py\n  pattern matching requires !2, 3\.10'),
    'a third-party import at the top': (
        'plugins/module_utils/_bad.py', 'from __future__ import annotations\n\nimport scapy.all\n',
        r'import _bad: ModuleNotFoundError: No module named .scapy.'),
    'a stdlib function of 3.9 inside a function': (
        'plugins/module_utils/_bad.py', 'from __future__ import annotations\n\nimport os\n\ndef f(pid):\n    return os.pidfd_open(pid)\n',
        r"'os\.pidfd_open' member requires !2, 3\.9"),
    'a 3.9 annotation in a detached program': (
        'plugins/module_utils/_bad.py', 'from __future__ import annotations\n\nBAD_CODE = """\ndef f(a: list[int]):\n    pass\n"""\n',
        r'_bad\.py\.3\.BAD_CODE\.py.*\n.*builtin generic type annotation \(list\[\.\.\]\) requires !2, 3\.9'),
    'an invalid escape in a detached program': (
        'plugins/module_utils/_bad.py', 'from __future__ import annotations\n\nBAD_CODE = """\nimport re\nre.compile("\\\\d")\n"""\n',
        r'compile plugins/module_utils/_bad\.py:3 BAD_CODE: SyntaxError: invalid escape sequence'),
    'a detached program that imports what a release lacks': (
        'plugins/module_utils/_bad.py', 'from __future__ import annotations\n\nBAD_CODE = "import tomllib\\n"\n',
        r'_bad\.py:3 BAD_CODE needs "import tomllib": ModuleNotFoundError'),
    'isinstance with a union': (
        'plugins/module_utils/_bad.py', 'from __future__ import annotations\n\ndef f(x):\n    return isinstance(x, int | str)\n',
        r'plugins/module_utils/_bad\.py:4: isinstance\(\.\.\., A \| B\) needs Python 3\.10: write a tuple \(A, B\)'),
    'python -c with code that is not a module-level string': (
        'plugins/module_utils/_bad.py',
        'from __future__ import annotations\n\nimport sys\n\ndef f(code):\n    return [sys.executable, "-c", code]\n',
        r'_bad\.py:6: sys\.executable runs "python -c code", which is not a module-level string'),
    'no postponed annotations': (
        'plugins/module_utils/_bad.py', 'import os\n',
        r'plugins/module_utils/_bad\.py: no "from __future__ import annotations"'),
    'a template in a task\'s Python': (
        'roles/r/tasks/main.yml',
        '---\n- name: Probe\n  ansible.builtin.command:\n    argv:\n      - "{{ ansible_python.executable }}"\n      - -c\n'
        '      - "print({{ x }})"\n',
        r'roles/r/tasks/main\.yml:7: a Jinja template inside Python code'),
    'a task\'s Python that needs 3.10': (
        'roles/r/tasks/main.yml',
        '---\n- name: Probe\n  ansible.builtin.command:\n    argv:\n      - "{{ ansible_python.executable }}"\n      - -c\n'
        '      - |\n        match 1:\n            case 1: pass\n',
        r'compile roles/r/tasks/main\.yml:7: SyntaxError|main\.yml\.7\.py\n  pattern matching requires !2, 3\.10'),
}


def make_collection(root, extra=None):
    files = {'tests/config.yml': "---\nmodules:\n  python_requires: '>=%s'\n" % DECLARED_MINIMUM,
             'plugins/modules/thing.py': MODULE, 'plugins/module_utils/_util.py': CLEAN_UTIL,
             'plugins/module_utils/_progs.py': PROGS_UTIL}
    if extra:
        files[extra[0]] = extra[1]
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip('\n') if rel.endswith('.py') else text)
    return root


def oldest_release_python(pythons):
    """One interpreter keeps these fast: the oldest release Python installed (a release one, or the checker
    would fail for want of one whatever the code)."""
    return [pythons[minor] for minor in RELEASES if minor in pythons][0]


@pytest.mark.once
def test_a_clean_collection_passes(tmp_path, pythons):
    root = make_collection(tmp_path)
    rc, out = run_checker('--root', str(root), '--no-discover', '--python', oldest_release_python(pythons))
    assert rc == 0, out
    # the programs reached through an import, an alias and a local choice are all found
    assert '3 program strings (HELPER_CODE, OTHER_CODE, PROGRAM_CODE)' in out, out
    assert 'imported 3: ok' in out, out


@pytest.mark.parametrize('case', sorted(BROKEN))
@pytest.mark.once
def test_each_incompatibility_is_caught(tmp_path, pythons, case):
    rel, text, expected = BROKEN[case]
    root = make_collection(tmp_path, (rel, text))
    rc, out = run_checker('--root', str(root), '--no-discover', '--python', oldest_release_python(pythons))
    assert rc == 1, out
    assert re.search(expected, out), out


# -- really running under each Python ------------------------------------------

def pcap_of_a_keepalive_run():
    """An Ethernet pcap: handshake, one answered probe, three unanswered ones 1 s apart, the client's RST."""
    client, server = bytes([198, 18, 200, 1]), bytes([198, 18, 200, 2])
    frames = []

    def seg(t, frm, seq, ack, flags):
        src, dst, sport, dport = (client, server, 40000, 12345) if frm == 'c' else (server, client, 12345, 40000)
        tcp = struct.pack('!HHIIBBHHH', sport, dport, seq, ack, 5 << 4, flags, 502, 0, 0)
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst) + tcp
        eth = b'\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00' + ip
        frames.append(struct.pack('<IIII', int(t), int(round((t % 1) * 1e6)), len(eth), len(eth)) + eth)

    syn, ack, rst, synack = 0x02, 0x10, 0x04, 0x12
    seg(100.0, 'c', 1000, 0, syn)
    seg(100.0001, 's', 5000, 1001, synack)
    seg(100.0002, 'c', 1001, 5001, ack)
    seg(102.0, 'c', 1000, 5001, ack)  # a probe: seq = next - 1, no data
    seg(102.0001, 's', 5001, 1001, ack)  # its ACK
    for k in range(3):
        seg(104.0 + k, 'c', 1000, 5001, ack)
    seg(107.0, 'c', 1001, 5001, rst | ack)
    return struct.pack('<IHHiIII', 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1) + b''.join(frames)


def test_modules_run_through_ansible_on_each_python(tmp_path, pythons):
    """A read-only audit and pcap_info, run by ansible-playbook with each release Python and the minimum as
    ansible_python_interpreter."""
    if not (COLLECTIONS / 'ansible_collections' / 'tcplab' / 'keepalive').exists() or not ANSIBLE_PLAYBOOK.exists():
        pytest.skip('needs %s (scripts/bootstrap) and ansible-playbook next to %s' % (COLLECTIONS, sys.executable))
    pcap = tmp_path / 'run.pcap'
    pcap.write_bytes(pcap_of_a_keepalive_run())
    inventory = tmp_path / 'hosts.yml'
    hosts = {'py' + minor.replace('.', '_'): {'ansible_connection': 'local', 'ansible_python_interpreter': path}
             for minor, path in pythons.items() if minor in RELEASES or minor == DECLARED_MINIMUM}
    inventory.write_text(json.dumps({'all': {'hosts': hosts}}))
    playbook = tmp_path / 'play.yml'
    playbook.write_text(json.dumps([{
        'hosts': 'all', 'gather_facts': False, 'tasks': [
            {'name': 'audit', 'tcplab.keepalive.audit': {'namespaces': 'host', 'top_processes': 1}, 'register': 'audit'},
            {'name': 'pcap', 'tcplab.keepalive.pcap_info': {'path': str(pcap), 'expect': {'time': 2, 'intvl': 1, 'probes': 3}},
             'register': 'pcap'},
            {'name': 'python', 'ansible.builtin.command': {'argv': ['{{ ansible_python_interpreter }}', '-c',
                                                                    'import sys; print("%d.%d" % sys.version_info[:2])']},
             'register': 'version', 'changed_when': False},
            {'name': 'save', 'ansible.builtin.copy': {
                'dest': str(tmp_path) + '/{{ inventory_hostname }}.json', 'mode': '0600',
                'content': '{{ {"version": version.stdout, "audit": audit.namespaces[0].kind, '
                           '"pcap": pcap | dict2items | rejectattr("key", "in", ["invocation", "changed"]) | items2dict} '
                           '| to_json }}'}}]}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_LOCAL_TEMP=str(tmp_path / 'tmp'),
               ANSIBLE_HOME=str(tmp_path / 'home'), ANSIBLE_NOCOLOR='1', ANSIBLE_FORKS=str(min(4, len(hosts))), LANG='C')
    env.pop('ANSIBLE_CONFIG', None)
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), '-i', str(inventory), str(playbook)], capture_output=True, text=True,
                          env=env, timeout=180, check=False, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {host: json.loads((tmp_path / ('%s.json' % host)).read_text()) for host in hosts}
    for host, result in results.items():
        assert result['version'] == host[2:].replace('_', '.')
        assert result['audit'] == 'host'
    # the analysis is the same on every Python, and it is the analysis of that run
    first = next(iter(results.values()))['pcap']
    assert all(result['pcap'] == first for result in results.values())
    assert 'keepalive' in json.dumps(first)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(('127.0.0.1', port)) == 0


def wait_for(predicate, seconds=10.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize('minor', list(RELEASES) + [DECLARED_MINIMUM])
@pytest.mark.once
def test_the_endpoint_programs_run_on_each_release_python(tmp_path, pythons, minor):
    """Server, supervisor and python client on loopback: the client connects, the server goes away, the client
    records the end and the supervisor records the client's exit."""
    if minor not in pythons:
        pytest.skip('Python %s is not installed' % minor)
    python = pythons[minor]
    port = free_port()
    outcome, exit_record = tmp_path / 'outcome.json', tmp_path / 'exit.json'
    server = subprocess.Popen([python, '-c', _endpoint.SERVER_CODE, 'tcplab-pycompat-test',  # pylint: disable=consider-using-with
                               json.dumps({'address': '127.0.0.1', 'port': port})], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    supervisor = None
    try:
        assert wait_for(lambda: listening(port)), server.stderr.read()
        server.stdout.readline()  # the probe above was its first connection
        client = {'address': '127.0.0.1', 'port': port, 'local_port': None, 'outcome': str(outcome)}
        spec = {'argv': [python, '-c', _endpoint.CLIENT_CODE, 'tcplab-pycompat-test', json.dumps(client)],
                'outcome': str(outcome), 'exit': str(exit_record), 'curl': False}
        supervisor = subprocess.Popen([python, '-c', _endpoint.SUPERVISOR_CODE, 'tcplab-pycompat-test',  # pylint: disable=consider-using-with
                                       json.dumps(spec)], stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: (read_json(outcome) or {}).get('state') == 'connected'), supervisor.stderr.read()
        assert json.loads(server.stdout.readline())['event'] == 'accepted'
    finally:
        server.kill()
        server.wait()
    try:
        assert supervisor.wait(timeout=10) == 0, supervisor.stderr.read()
    finally:
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGKILL)
            supervisor.wait()
    ended = read_json(outcome)
    assert ended['state'] in ('closed', 'failed'), ended
    assert ended['state'] == 'closed' or ended['errno'] == 'ECONNRESET', ended
    assert read_json(exit_record)['exit_code'] == 0


@pytest.mark.parametrize('minor', list(RELEASES) + [DECLARED_MINIMUM])
@pytest.mark.once
def test_the_rule_timer_program_runs_on_each_release_python(tmp_path, pythons, minor):
    """The dead-man timer: at expiry it checks the rule, deletes it while it exists, and removes its state file."""
    if minor not in pythons:
        pytest.skip('Python %s is not installed' % minor)
    state, deleted, rule = tmp_path / 'timer.json', tmp_path / 'deleted', tmp_path / 'rule'
    state.write_text('{}')
    rule.write_text('')
    check = ['sh', '-c', 'test -e %s || { echo "does a matching rule exist?" >&2; exit 1; }' % rule]
    delete = ['sh', '-c', 'rm %s && echo x >> %s' % (rule, deleted)]
    args = {'expires_at': time.time() + 0.3, 'check': check, 'delete': delete, 'state': str(state)}
    proc = subprocess.run([pythons[minor], '-c', _iptables.TIMER_CODE, 'tcplab-pycompat-test', json.dumps(args)],
                          capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 0, proc.stderr
    assert deleted.read_text() == 'x\n' and not rule.exists() and not state.exists()
