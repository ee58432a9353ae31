# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Check that the collection's target-side code runs on every supported target Python.

Target-side code is what Ansible ships to a managed host: plugins/modules/*.py,
plugins/module_utils/*.py, the Python programs kept in strings that those
files start detached with ``python -c`` (module-level ``*_CODE`` constants, and
any string that follows ``'-c'`` in an argv list that starts with a Python),
and the programs that the roles' and playbooks' tasks run the same way
(``argv: [<python>, -c, <code>]``).

The declared minimum is ``python_requires`` in tests/config.yml. For every
installed interpreter at or above it (pyenv's versions, Debian's /usr/bin/python3
and any --python), a child process of that interpreter, started with
``-I -S -B`` (no site-packages, so no scapy; no bytecode written):
  - compiles every file and every program string, warnings as errors
    (an invalid escape is a SyntaxWarning today and an error tomorrow);
  - imports the stdlib modules each program string imports unguarded;
  - imports every module and module_util as ansible_collections.tcplab.keepalive.*
    beside ``ansible.module_utils`` of the installed ansible-core, the layout
    AnsiballZ gives a module on the target.
Once, on the controller: vermin at the minimum over the files and the program
strings (stdlib APIs used inside functions, which an import does not run), and
an AST check for ``isinstance(x, A | B)`` (3.10) that vermin cannot tell from
``os.O_RDONLY | os.O_CLOEXEC``.

Usage: python scripts/pycompat.py [--require 3.8,3.9,3.11,3.13] [--python PATH]... [--no-discover] [--no-vermin]
Exit 0 when every check passed on every interpreter checked and at least one
release Python (RELEASE_PYTHONS) was among them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTION = ('ansible_collections', 'tcplab', 'keepalive')
# The target Python of each Debian release the collection supports.
RELEASE_PYTHONS = {'3.9': 'Debian 11 bullseye', '3.11': 'Debian 12 bookworm', '3.13': 'Debian 13 trixie'}
PYTHON_HINT = re.compile(r'python|executable|interpreter', re.IGNORECASE)
PROBE = 'import sys; sys.stdout.write("%d.%d.%d" % tuple(sys.version_info[:3]))'
VERMIN = 'import sys; from vermin.main import main; sys.exit(main())'

MSG_NO_MINIMUM = "%s has no modules: python_requires: '>=X.Y': declare the target Pythons' minimum there"
MSG_MISSING = 'Python %s (%s) is required but not installed: pyenv install %s, or pass --python /path/to/python%s'
MSG_NO_RELEASE = ('none of the release Pythons %s is installed: pyenv install one of them, or pass --python '
                  '/path/to/python3.X (the check must run on at least one Python of a supported Debian release)')
MSG_NO_VERMIN = 'vermin is not installed in %s: pip install -r requirements-dev.txt (or run with --no-vermin)'
MSG_NO_ANSIBLE = 'ansible-core is not importable from %s: run this with the project venv (. .venv/bin/activate)'
MSG_RUNTIME_UNION = '%s:%d: %s(..., A | B) needs Python 3.10: write a tuple (A, B)'
MSG_NO_FUTURE = '%s: no "from __future__ import annotations": annotations such as list[str] fail on Python 3.8'
MSG_CODE_NOT_FOUND = ('%s:%d: %s runs "python -c %s", which is not a module-level string (of this file or imported '
                      'from a module_util, or a local set from those): keep detached Python programs in module-level '
                      '*_CODE strings so that scripts/pycompat.py can check them')


def version_tuple(text):
    return tuple(int(part) for part in text.split('.'))


def declared_minimum(root):
    """The minimum target Python: modules.python_requires ('>=3.8') in tests/config.yml."""
    path = os.path.join(root, 'tests', 'config.yml')
    try:
        with open(path) as handle:
            match = re.search(r"^\s+python_requires:\s*['\"]?>=\s*(\d+\.\d+)['\"]?\s*$", handle.read(), re.MULTILINE)
    except OSError:
        match = None
    if not match:
        raise SystemExit(MSG_NO_MINIMUM % path)
    return match.group(1)


# -- what runs on targets ------------------------------------------------------

def target_files(root):
    """(path relative to root, import name) of every module and module_util."""
    found = []
    for kind in ('modules', 'module_utils'):
        directory = os.path.join(root, 'plugins', kind)
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            if name.endswith('.py') and name != '__init__.py':
                found.append((os.path.join('plugins', kind, name), '.'.join(COLLECTION + ('plugins', kind, name[:-3]))))
    return found


def _string_constants(tree):
    constants = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            constants[node.targets[0].id] = (node.value.value, node.value.lineno)
    return constants


def _dash_c_names(tree):
    """(line, interpreter expression, name, enclosing function or None) for each [python, ..., '-c', NAME, ...]."""
    scopes = [(node, None) for node in ast.iter_child_nodes(tree)]
    while scopes:
        node, function = scopes.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node
        if isinstance(node, (ast.List, ast.Tuple)):
            elts = node.elts
            for i, elt in enumerate(elts[:-1]):
                if (isinstance(elt, ast.Constant) and elt.value == '-c' and isinstance(elts[i + 1], ast.Name)
                        and PYTHON_HINT.search(ast.unparse(elts[0]))):
                    yield elts[i + 1].lineno, ast.unparse(elts[0]), elts[i + 1].id, function
        scopes.extend((child, function) for child in ast.iter_child_nodes(node))


def _imported_names(tree):
    """name -> (module file stem, original name) for 'from ...module_utils._x import NAME [as alias]'."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module != '__future__':
            for alias in node.names:
                names[alias.asname or alias.name] = (node.module.rsplit('.', 1)[-1], alias.name)
    return names


def _local_choices(function, name):
    """The names a local variable is set from ('code = A if x else B' gives A, B); None if anything else."""
    if function is None:
        return None
    values = [node.value for node in ast.walk(function) if isinstance(node, ast.Assign)
              and any(isinstance(target, ast.Name) and target.id == name for target in node.targets)]
    names = []
    while values:
        value = values.pop()
        if isinstance(value, ast.IfExp):
            values.extend((value.body, value.orelse))
        elif isinstance(value, ast.Name) and value.id != name:
            names.append(value.id)
        else:
            return None
    return names or None


def program_strings(sources):
    """The Python programs the files keep in strings: (rel, name) -> (source, line), and the problems."""
    constants = {rel: _string_constants(tree) for rel, tree in sources.items()}
    by_stem = {os.path.splitext(os.path.basename(rel))[0]: rel for rel in sources if '/module_utils/' in rel}
    programs, problems = {}, []

    def resolve(rel, imported, name):
        if name not in constants[rel] and name in imported and imported[name][0] in by_stem:
            return by_stem[imported[name][0]], imported[name][1]
        return rel, name

    for rel, tree in sources.items():
        programs.update(((rel, name), value) for name, value in constants[rel].items() if name.endswith('_CODE'))
        imported = _imported_names(tree)
        for line, interpreter, name, function in _dash_c_names(tree):
            wheres = [resolve(rel, imported, name)]
            if wheres[0][1] not in constants[wheres[0][0]]:
                wheres = [resolve(rel, imported, choice) for choice in _local_choices(function, name) or [name]]
            if all(where[1] in constants[where[0]] for where in wheres):
                programs.update((where, constants[where[0]][where[1]]) for where in wheres)
            else:
                problems.append(MSG_CODE_NOT_FOUND % (rel, line, interpreter, name))
    return programs, problems


def yaml_programs(root):
    """Python programs in the roles' and playbooks' tasks: argv lists [<a python>, -c, CODE, ...].
    (rel:line, code) each; these run on the targets too, with the Python that runs the modules."""
    import yaml  # pylint: disable=import-outside-toplevel  # PyYAML comes with ansible-core
    found = []
    for top in ('roles', 'playbooks'):
        for directory, _dirs, names in sorted(os.walk(os.path.join(root, top))):
            for name in sorted(names):
                if not name.endswith(('.yml', '.yaml')):
                    continue
                path = os.path.join(directory, name)
                with open(path, encoding='utf-8') as handle:
                    try:
                        nodes = list(yaml.compose_all(handle))
                    except yaml.YAMLError:
                        continue  # ansible-lint's business
                stack = [node for node in nodes if node is not None]
                while stack:
                    node = stack.pop()
                    if isinstance(node, yaml.SequenceNode):
                        items = node.value
                        for i, item in enumerate(items[:-1]):
                            if (isinstance(item, yaml.ScalarNode) and item.value == '-c' and i > 0
                                    and isinstance(items[0], yaml.ScalarNode) and PYTHON_HINT.search(items[0].value)
                                    and isinstance(items[i + 1], yaml.ScalarNode)):
                                found.append(('%s:%d' % (os.path.relpath(path, root), items[i + 1].start_mark.line + 1),
                                              items[i + 1].value))
                        stack.extend(items)
                    elif isinstance(node, yaml.MappingNode):
                        stack.extend(value for _key, value in node.value)
    return sorted(found)


def unguarded_imports(source):
    """The import statements at the top level of a program (not inside try: those are optional)."""
    statements = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.module != '__future__'):
            statements.append(ast.unparse(node))
    return statements


def runtime_unions(rel, tree):
    problems = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ('isinstance', 'issubclass')
                and len(node.args) == 2 and isinstance(node.args[1], ast.BinOp) and isinstance(node.args[1].op, ast.BitOr)):
            problems.append(MSG_RUNTIME_UNION % (rel, node.lineno, node.func.id))
    return problems


def has_future_annotations(tree):
    return any(isinstance(node, ast.ImportFrom) and node.module == '__future__'
               and any(alias.name == 'annotations' for alias in node.names) for node in tree.body)


def collect(root):
    """The spec every interpreter checks, and the problems found by reading the sources once."""
    files, programs, problems, sources = [], [], [], {}
    for rel, module in target_files(root):
        with open(os.path.join(root, rel), encoding='utf-8') as handle:
            sources[rel] = ast.parse(handle.read(), rel)
        files.append({'path': rel, 'module': module})
        if not has_future_annotations(sources[rel]):
            problems.append(MSG_NO_FUTURE % rel)
        problems.extend(runtime_unions(rel, sources[rel]))
    found, more = program_strings(sources)
    problems.extend(more)
    programs_found = [('%s:%d %s' % (rel, line, name), name, code) for (rel, name), (code, line) in sorted(found.items())]
    programs_found.extend((label, 'task ' + label.rsplit('/', 1)[-1], code) for label, code in yaml_programs(root))
    for label, name, code in programs_found:
        if '{{' in code or '{%' in code:
            problems.append('%s: a Jinja template inside Python code; pass values as arguments instead' % label)
            continue
        try:
            imports = unguarded_imports(code)
            problems.extend(runtime_unions(label, ast.parse(code)))
        except SyntaxError as exc:
            imports = []
            problems.append('%s: does not parse: %s' % (label, exc))
        programs.append({'label': label, 'name': name, 'source': code, 'imports': imports})
    return {'root': root, 'files': files, 'programs': programs}, problems


# -- the child: runs under each target interpreter -----------------------------

def _error(exc):
    """The last line of a traceback, with the innermost frame that is ours."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if 'ansible_collections' in frame.filename]
    where = ' (%s:%s)' % (frames[-1].filename.split('ansible_collections/')[-1], frames[-1].lineno) if frames else ''
    return '%s: %s%s' % (type(exc).__name__, exc, where)


def child(spec_path):
    """Compile, import-check and import everything in the spec with this interpreter; write the result as JSON."""
    with open(spec_path) as handle:
        spec = json.load(handle)
    failures, counts = [], {'files': 0, 'programs': 0, 'imports': 0}
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for item in spec['files']:
            try:
                with open(os.path.join(spec['root'], item['path']), 'rb') as handle:
                    compile(handle.read(), item['path'], 'exec', dont_inherit=True)
                counts['files'] += 1
            except (SyntaxError, ValueError, Warning) as exc:
                failures.append('compile %s: %s' % (item['path'], _error(exc)))
        for program in spec['programs']:
            try:
                compile(program['source'], program['label'], 'exec', dont_inherit=True)
                counts['programs'] += 1
            except (SyntaxError, ValueError, Warning) as exc:
                failures.append('compile %s: %s' % (program['label'], _error(exc)))
            for statement in program['imports']:
                try:
                    exec(statement, {})  # pylint: disable=exec-used
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    failures.append('%s needs "%s": %s' % (program['label'], statement, _error(exc)))
    sys.path.insert(0, spec['sys_path'])
    broken = {}
    for item in spec['files']:
        try:
            __import__(item['module'])
            counts['imports'] += 1
        except BaseException as exc:  # pylint: disable=broad-exception-caught  # SystemExit from a module too
            broken.setdefault(_error(exc), []).append(item['module'].rsplit('.', 1)[-1])
    failures.extend('import %s: %s' % (', '.join(names), error) for error, names in sorted(broken.items()))
    with open(spec['out'], 'w') as handle:
        json.dump({'failures': failures, 'counts': counts}, handle)


# -- the driver ----------------------------------------------------------------

def interpreters(extra, discover=True):
    """(label, path) of pyenv's Pythons, Debian's /usr/bin/python3 and the extra ones, one per real file."""
    pyenv_root = os.environ.get('PYENV_ROOT') or os.path.expanduser('~/.pyenv')
    found = []
    versions = os.path.join(pyenv_root, 'versions')
    for name in sorted(os.listdir(versions)) if discover and os.path.isdir(versions) else []:
        for exe in ('python3', 'python'):
            path = os.path.join(versions, name, 'bin', exe)
            if os.access(path, os.X_OK):
                found.append(('pyenv %s' % name, path))
                break
    if discover and os.access('/usr/bin/python3', os.X_OK):
        found.append(('system', '/usr/bin/python3'))
    found.extend(('--python', path) for path in extra)
    unique, seen = [], set()
    for label, path in found:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append((label, path))
    return unique


def probe(path):
    try:
        out = subprocess.run([path, '-c', PROBE], capture_output=True, text=True, timeout=30, check=True).stdout
        return out.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def collection_path(workdir, root):
    """A sys.path entry holding ansible.module_utils (of the installed ansible-core) and this checkout as
    ansible_collections.tcplab.keepalive, like AnsiballZ's payload on a target."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    spec = importlib.util.find_spec('ansible')
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(MSG_NO_ANSIBLE % sys.executable)
    top = os.path.join(workdir, 'path')
    os.makedirs(os.path.join(top, 'ansible'))
    open(os.path.join(top, 'ansible', '__init__.py'), 'w').close()  # pylint: disable=consider-using-with
    os.symlink(os.path.join(list(spec.submodule_search_locations)[0], 'module_utils'),
               os.path.join(top, 'ansible', 'module_utils'))
    os.makedirs(os.path.join(top, *COLLECTION[:-1]))
    os.symlink(root, os.path.join(top, *COLLECTION))
    return top


def check_interpreter(path, spec, workdir, index):
    spec = dict(spec, out=os.path.join(workdir, 'out-%d.json' % index))
    spec_path = os.path.join(workdir, 'spec-%d.json' % index)
    with open(spec_path, 'w') as handle:
        json.dump(spec, handle)
    proc = subprocess.run([path, '-I', '-S', '-B', os.path.abspath(__file__), '--child', spec_path],
                          capture_output=True, text=True, timeout=120, check=False, cwd=workdir)
    if proc.returncode != 0 or not os.path.exists(spec['out']):
        return {'failures': ['the check itself failed (rc %d): %s' % (proc.returncode, proc.stderr.strip()[-2000:])],
                'counts': {}}
    with open(spec['out']) as handle:
        return json.load(handle)


def run_vermin(spec, minimum, workdir):
    """vermin at the minimum over the files and the program strings; the violations it prints."""
    try:
        import vermin  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return [MSG_NO_VERMIN % sys.executable]
    base = [sys.executable, '-c', VERMIN, '--no-tips', '--violations', '--no-make-paths-absolute', '-t=%s-' % minimum]
    problems = []
    files = [item['path'] for item in spec['files']]
    programs_dir = os.path.join(workdir, 'programs')
    os.makedirs(programs_dir)
    names = []
    for program in spec['programs']:
        name = os.path.join(programs_dir, program['label'].replace('/', '.').replace(':', '.').replace(' ', '.') + '.py')
        with open(name, 'w') as handle:
            handle.write(program['source'])
        names.append(name)
    # Files carry "from __future__ import annotations"; the programs do not, so their annotations are evaluated.
    runs = [(files, 'files')] + ([(['--eval-annotations'] + names, 'program strings')] if names else [])
    for args, what in runs:
        proc = subprocess.run(base + args, capture_output=True, text=True, cwd=spec['root'], check=False, timeout=300)
        if proc.returncode != 0:
            text = (proc.stdout + proc.stderr).replace(programs_dir + os.sep, '')
            problems.append('vermin -t=%s- (%s):\n%s' % (minimum, what, text.strip()))
    return problems


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--root', default=ROOT, help='collection checkout (default: this script\'s)')
    parser.add_argument('--min', dest='minimum', help='minimum target Python (default: tests/config.yml python_requires)')
    parser.add_argument('--require', default='', help='comma-separated X.Y that must be installed, e.g. 3.8,3.9,3.11,3.13')
    parser.add_argument('--python', action='append', default=[], help='another interpreter to check (repeatable)')
    parser.add_argument('--no-discover', action='store_true', help='check only the --python interpreters')
    parser.add_argument('--no-vermin', action='store_true', help='skip the static vermin check')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_all(spec, minimum, extra, discover, workdir):
    """Run the child check under each interpreter at or above the minimum: (versions checked, problems)."""
    problems, found, checked, below = [], [], [], []
    for label, path in interpreters(extra, discover):
        version = probe(path)
        if version is None:
            problems.append('%s (%s) does not run' % (label, path))
        else:
            found.append((version_tuple(version), version, label, path))
    for index, (_key, version, label, path) in enumerate(sorted(found)):
        if version_tuple(version) < version_tuple(minimum):
            below.append(version)
            continue
        begin = time.time()
        result = check_interpreter(path, spec, workdir, index)
        checked.append(version)
        counts = result['counts']
        print('  %-8s %-16s %-44s compiled %s files + %s programs, imported %s: %s (%.1f s)' % (
            version, label, path, counts.get('files', '-'), counts.get('programs', '-'), counts.get('imports', '-'),
            'FAILED' if result['failures'] else 'ok', time.time() - begin))
        problems.extend('Python %s (%s): %s' % (version, path, failure) for failure in result['failures'])
    if below:
        print('  not checked, below the minimum %s: %s' % (minimum, ', '.join(below)))
    return checked, problems


def missing(checked, require):
    """Problems for each required X.Y that was not checked, and for no release Python at all."""
    minors = set('.'.join(v.split('.')[:2]) for v in checked)
    problems = [MSG_MISSING % (wanted, RELEASE_PYTHONS.get(wanted, 'required'), wanted, wanted)
                for wanted in [v.strip() for v in require.split(',') if v.strip()] if wanted not in minors]
    if not minors & set(RELEASE_PYTHONS):
        problems.append(MSG_NO_RELEASE % ', '.join(sorted(RELEASE_PYTHONS, key=version_tuple)))
    return problems


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    root = os.path.abspath(args.root)
    minimum = args.minimum or declared_minimum(root)
    started = time.time()
    spec, problems = collect(root)
    workdir = tempfile.mkdtemp(prefix='tcplab-pycompat-')
    try:
        spec['sys_path'] = collection_path(workdir, root)
        print('pycompat: minimum target Python %s; %d files, %d program strings (%s)' % (
            minimum, len(spec['files']), len(spec['programs']), ', '.join(p['name'] for p in spec['programs'])))
        checked, more = check_all(spec, minimum, args.python, not args.no_discover, workdir)
        problems += more + missing(checked, args.require)
        if not args.no_vermin:
            problems += run_vermin(spec, minimum, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for problem in problems:
        print('PROBLEM: %s' % problem)
    print('pycompat: %d interpreters checked (%s), %d problems, %.1f s' % (
        len(checked), ' '.join(checked), len(problems), time.time() - started))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
