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

"""Fixtures for the functional tests of the ``any2kvm`` command.

The command is always run as a separate process (the installed console
script, or ``python -m any2kvm_os.cmd.any2kvm`` when the script is missing),
and its output is judged against truth that comes from outside the project
(see ``imagegen``).

Tools: qemu-img, FATtools and the libvhdi Python binding are needed.  A
missing tool skips the tests that need it, unless ``ANY2KVM_REQUIRE_TOOLS=1``
is set (CI), in which case the tests fail.  The shared corpus
(``<repo>/../shared/corpus``, or ``$ANY2KVM_CORPUS``) must be present: its
absence is always a failure.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lib.corpus import CORPUS
from tests.lib import imagegen as ig
from tests.lib.tools import missing_tool
from tests.lib import vhdchains


# ---------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------

@pytest.fixture(scope='session')
def qemu_img():
    path = shutil.which('qemu-img')
    if not path:
        missing_tool('qemu-img not found (Debian package qemu-utils)')
    r = subprocess.run([path, '--version'], capture_output=True, text=True)
    if r.returncode != 0:
        missing_tool('qemu-img does not run: %s' % r.stderr.strip())
    return path


@pytest.fixture(scope='session')
def fattools():
    try:
        from FATtools import vhdutils
    except ImportError as e:
        missing_tool('FATtools not importable (%s); pip install '
                     'FATtools==1.1.23' % e)
    return vhdutils


@pytest.fixture(scope='session')
def pyvhdi():
    if not ig.pyvhdi_available():
        missing_tool('pyvhdi not importable by %s (Debian package '
                     'python3-libvhdi)' % ig.SYSTEM_PYTHON)
    return ig.pyvhdi_read


# ---------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------

@pytest.fixture(scope='session')
def corpus():
    if not (CORPUS / 'expected-hashes.json').is_file():
        pytest.fail('shared corpus not found at %s (expected '
                    '../shared/corpus beside the repository, or set '
                    'ANY2KVM_CORPUS)' % CORPUS, pytrace=False)
    return CORPUS


@pytest.fixture(scope='session')
def expected(corpus):
    return ig.load_expected(corpus)


@pytest.fixture(scope='session')
def corpus_file(corpus, tmp_path_factory):
    """Decompress (once per session) a stored corpus file into a tmp dir."""
    cache = {}
    root = tmp_path_factory.mktemp('corpus')

    def get(rel):
        if rel not in cache:
            src = corpus / rel
            if not src.is_file():
                pytest.fail('corpus file missing: %s' % src, pytrace=False)
            d = root / rel.replace('/', '_')
            cache[rel] = Path(ig.decompress(src, d))
        return cache[rel]
    return get


@pytest.fixture(scope='session')
def corpus_tar(corpus, tmp_path_factory):
    """Extract (once per session) members of a corpus tarball."""
    cache = {}
    root = tmp_path_factory.mktemp('corpus-tar')

    def get(rel, only=None):
        key = (rel, tuple(sorted(only)) if only else None)
        if key not in cache:
            src = corpus / rel
            if not src.is_file():
                pytest.fail('corpus file missing: %s' % src, pytrace=False)
            d = root / ('%s-%d' % (rel.replace('/', '_'), len(cache)))
            cache[key] = {k: Path(v) for k, v in
                          ig.extract_tar(src, d, only).items()}
        return cache[key]
    return get


# ---------------------------------------------------------------------------
# shared FATtools chains (built once, read-only afterwards)
# ---------------------------------------------------------------------------

@pytest.fixture(scope='session')
def simple_chain(fattools, tmp_path_factory):
    return vhdchains.build_simple_chain(
        tmp_path_factory.mktemp('simple-chain'))


@pytest.fixture(scope='session')
def complex_chain(fattools, tmp_path_factory):
    return vhdchains.build_complex_chain(
        tmp_path_factory.mktemp('complex-chain'))


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / 'out'
    d.mkdir()
    return d


@pytest.fixture(scope='session')
def orphan_simple(fattools, tmp_path_factory):
    """The simple chain moved to 2.vhd (base), 1.vhd, 0.vhd (leaf)."""
    root = tmp_path_factory.mktemp('orphan-simple')
    c = vhdchains.build_simple_chain(root / 'gen')
    paths = vhdchains.relocate(c, root / 'store', ['2.vhd', '1.vhd', '0.vhd'])
    (root / 'gen').rmdir()
    return c, paths[::-1]       # (chain with models, paths leaf first)


@pytest.fixture(scope='session')
def orphan_complex(fattools, tmp_path_factory):
    root = tmp_path_factory.mktemp('orphan-complex')
    c = vhdchains.build_complex_chain(root / 'gen')
    paths = vhdchains.relocate(c, root / 'store', ['2.vhd', '1.vhd', '0.vhd'])
    (root / 'gen').rmdir()
    return c, paths[::-1]


# ---------------------------------------------------------------------------
# the state database on real servers
# ---------------------------------------------------------------------------

@pytest.fixture(scope='session')
def state_servers():
    """``state_servers(kind)`` -> a started :mod:`tests.lib.dbservers`
    server ('postgresql' or 'mysql'), started at its first use and
    shared by the whole session; stopped at its end.  A server that
    cannot be made here (not installed, driver missing) skips, or fails
    with ANY2KVM_REQUIRE_TOOLS=1."""
    from tests.lib import dbservers
    started = {}

    failed = {}

    def get(kind):
        if kind in failed:
            pytest.fail(failed[kind], pytrace=False)
        if kind not in started:
            cls = dbservers.SERVERS[kind]
            why = cls.missing()
            if why:
                missing_tool('state database on %s: %s' % (kind, why))
            server = cls()
            started[kind] = server
            try:
                server.start()
            except Exception as e:
                # Once: the next tests fail at once, not after a timeout.
                failed[kind] = 'the %s server did not start: %s' % (kind, e)
                raise
        return started[kind]

    try:
        yield get
    finally:
        for server in started.values():
            server.stop()
