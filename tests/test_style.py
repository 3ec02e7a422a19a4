# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Style and shell checks run with the suite, so CI enforces them too."""

import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, 'tools', '*.sh'))) + [
    os.path.join(ROOT, '.ci', 'run'),
    os.path.join(ROOT, 'tools', 'loopback-cloud')]
# Sourced by devstack rather than run; bash all the same.
DEVSTACK = [os.path.join(ROOT, 'devstack', 'plugin.sh'),
            os.path.join(ROOT, 'devstack', 'settings')]


def test_flake8_clean():
    r = subprocess.run([sys.executable, '-m', 'flake8', 'any2kvm_os',
                        'tests', 'benchmarks'], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_contracts_kept():
    """The layering of setup.cfg's [importlinter] contracts (the map of
    the package): each layer imports only from those below it, and no
    package's modules import each other in a cycle."""
    lint = os.path.join(os.path.dirname(sys.executable), 'lint-imports')
    if not os.path.exists(lint):
        pytest.fail('lint-imports is not installed beside %s; pip install '
                    '"import-linter>=2.1"' % sys.executable)
    r = subprocess.run([lint, '--no-cache'], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'Contracts: 2 kept, 0 broken.' in r.stdout, r.stdout


def test_doc8_clean():
    """The reStructuredText of tox -e pep8 (the same paths; the [doc8]
    section of tox.ini sets the line length)."""
    try:
        import doc8  # noqa: F401
    except ImportError:
        # A missing test requirement (test-requirements.txt) is a failure.
        pytest.fail('doc8 is not importable by %s; pip install '
                    '"doc8>=0.11.0"' % sys.executable)
    r = subprocess.run([sys.executable, '-m', 'doc8', 'README.rst',
                        'devstack/README.rst', 'doc/source',
                        'releasenotes/source'], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(tree, package):
    """(line, dotted name) of everything a module imports, anywhere in it.

    ``from a import b`` gives ``a.b`` (b may be a module); relative imports
    are resolved against ``package``; ``importlib.import_module`` and
    ``__import__`` calls with a literal name count too.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                parts = parts[:len(parts) - node.level + 1]
                base = '.'.join(parts + ([base] if base else []))
            for alias in node.names:
                yield node.lineno, '%s.%s' % (base, alias.name)
        elif (isinstance(node, ast.Call) and node.args and
              isinstance(node.args[0], ast.Constant) and
              isinstance(node.args[0].value, str) and
              ((isinstance(node.func, ast.Name) and
                node.func.id == '__import__') or
               (isinstance(node.func, ast.Attribute) and
                node.func.attr == 'import_module'))):
            yield node.lineno, node.args[0].value


def _borrowed(name):
    """Whether an imported name reaches into a test or conftest module.

    Shared code lives in tests.lib; a test module holds tests and a
    conftest.py holds fixtures, and neither is imported by anything.
    """
    parts = name.split('.')
    if parts[0] == 'tests' and parts[1:2] != ['lib']:
        return True
    return any(p == 'conftest' or p.startswith('test_') for p in parts)


def test_test_modules_import_only_tests_lib():
    """No test_*.py, conftest.py (or tests/lib module) imports a test
    module or a conftest module: shared builders and helpers are in
    tests/lib."""
    tests = os.path.join(ROOT, 'tests')
    bad = []
    for directory, _dirs, files in os.walk(tests):
        for name in sorted(files):
            if not name.endswith('.py'):
                continue
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, ROOT)
            package = os.path.dirname(rel).replace(os.sep, '.')
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            bad += ['%s:%d imports %s' % (rel, line, imported)
                    for line, imported in _imports(tree, package)
                    if _borrowed(imported)]
    assert not bad, 'import from tests.lib instead:\n' + '\n'.join(bad)


def _id(path):
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize('script', SCRIPTS + DEVSTACK, ids=_id)
def test_shell_syntax(script):
    r = subprocess.run(['bash', '-n', script], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize('script', SCRIPTS + DEVSTACK, ids=_id)
def test_shellcheck(script):
    if not shutil.which('shellcheck'):
        if os.environ.get('ANY2KVM_REQUIRE_TOOLS') == '1':
            pytest.fail('shellcheck is not installed')
        pytest.skip('shellcheck is not installed')
    # -s bash: the devstack files are sourced, and a file without a #!
    # line would otherwise need a "shellcheck shell=" directive.
    r = subprocess.run(['shellcheck', '-s', 'bash', '-x', script],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _bashate():
    try:
        import bashate  # noqa: F401
    except ImportError:
        # A missing test requirement (test-requirements.txt) is a failure.
        pytest.fail('bashate is not importable by %s; pip install '
                    '"bashate>=2.1.0"' % sys.executable)
    # "python -m bashate" is broken in bashate 2.1.1; the module runs.
    return [sys.executable, '-m', 'bashate.bashate']


@pytest.mark.parametrize('script', SCRIPTS + DEVSTACK, ids=_id)
def test_bashate(script):
    # Every rule is an error, as in tox -e pep8.  The devstack files keep
    # lines under 80 columns too; the tools scripts may be longer (E006).
    args = ['-e', 'E*']
    if script not in DEVSTACK:
        args += ['-i', 'E006']
    r = subprocess.run(_bashate() + args + [script], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
