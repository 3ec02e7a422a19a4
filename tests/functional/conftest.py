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

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lib import imagegen as ig

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get('ANY2KVM_CORPUS') or
              REPO.parent / 'shared' / 'corpus')


# ---------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------

def tools_required():
    return os.environ.get('ANY2KVM_REQUIRE_TOOLS') == '1'


def missing_tool(message):
    if tools_required():
        pytest.fail('%s (ANY2KVM_REQUIRE_TOOLS=1)' % message, pytrace=False)
    pytest.skip(message)


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

SIMPLE_SIZE = 8 * ig.MiB


def build_simple_chain(directory):
    """3 levels, 8 MiB, writes on 4 KiB boundaries (whole bitmap bytes).

    Simple enough for libvhdi 20210425 to be a valid second opinion.
    """
    MiB, KiB, p = ig.MiB, ig.KiB, ig.pattern
    c = ig.FatChain(directory, SIMPLE_SIZE)
    c.base('l0.vhd', [
        (0, p(1, 2 * MiB)),                       # block 0 full
        (2 * MiB + 64 * KiB, p(2, 128 * KiB)),    # block 1 partial
        (4 * MiB, p(3, 1 * MiB)),                 # block 2 half
    ])                                            # block 3: nowhere
    c.child('l1.vhd', [
        (4 * KiB, p(4, 8 * KiB)),                 # inside parent data
        (2 * MiB + 64 * KiB, bytes(64 * KiB)),    # zeros over parent data
        (4 * MiB + 512 * KiB, p(5, 1 * MiB)),     # straddles parent's end
    ])
    c.child('l2.vhd', [
        (8 * KiB, p(6, 4 * KiB)),
        (0, bytes(4 * KiB)),                      # zeros over base data
        (4 * MiB + 1 * MiB, bytes(256 * KiB)),    # zeros over l1 data
    ])
    return c


COMPLEX_SIZE = 10 * ig.MiB + 1536   # 6 blocks, the last one partial


def build_complex_chain(directory):
    """3 levels with partial sector-bitmap bytes, odd offsets, zero writes.

    libvhdi 20210425 misreads this kind of chain: the model is the truth.
    """
    MiB, KiB, p = ig.MiB, ig.KiB, ig.pattern
    end = COMPLEX_SIZE
    c = ig.FatChain(directory, COMPLEX_SIZE)
    c.base('l0.vhd', [
        (0, p(11, 2 * MiB)),                      # block 0 full
        (2 * MiB, p(12, 64 * KiB)),               # block 1 partial
        (4 * MiB, p(13, 2 * MiB)),                # block 2 full
        (10 * MiB, p(14, 1536)),                  # last, partial block
    ])                                            # blocks 3, 4: nowhere
    c.child('l1.vhd', [
        (5 * 512, p(15, 3 * 512)),                # bitmap byte 0: bits 5-7
        (13 * 512, p(16, 512)),                   # bitmap byte 1: bit 5 only
        (1 * MiB + 100, p(17, 700)),              # unaligned, inside sectors
        (4 * MiB, bytes(1 * MiB)),                # zeros over parent data
        (6 * MiB + 4 * KiB, p(18, 100 * KiB)),    # block only in l1
        (10 * MiB + 512, bytes(512)),             # zero the middle sector
    ])
    c.child('l2.vhd', [
        (6 * 512, bytes(512)),                    # zeros over l1 data
        (2 * MiB, p(19, 2 * MiB)),                # block 1 replaced whole
        (4 * MiB + 512 * KiB + 3, p(20, 5000)),   # unaligned in zeroed area
        (6 * MiB + 8 * KiB, bytes(8 * KiB)),      # zeros over l1 data
        (8 * MiB + 17 * 512, bytes(4 * KiB)),     # zeros where nothing is
        (end - 512, p(21, 512)),                  # last sector of the disk
    ])
    return c


@pytest.fixture(scope='session')
def simple_chain(fattools, tmp_path_factory):
    return build_simple_chain(tmp_path_factory.mktemp('simple-chain'))


@pytest.fixture(scope='session')
def complex_chain(fattools, tmp_path_factory):
    return build_complex_chain(tmp_path_factory.mktemp('complex-chain'))


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / 'out'
    d.mkdir()
    return d


def relocate(chain, dest, names):
    """Move a chain's files into ``dest`` under new ``names`` (base first).

    The originals are gone afterwards, so the parent locators FATtools wrote
    (absolute path and ``.\\name``) point at nothing: parents can only be
    found by unique id (or, for archives, by member number).
    Returns the new paths, base first.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for layer, name in zip(chain.layers, names):
        target = dest / name
        shutil.move(layer.path, target)
        out.append(target)
    return out


@pytest.fixture(scope='session')
def orphan_simple(fattools, tmp_path_factory):
    """The simple chain moved to 2.vhd (base), 1.vhd, 0.vhd (leaf)."""
    root = tmp_path_factory.mktemp('orphan-simple')
    c = build_simple_chain(root / 'gen')
    paths = relocate(c, root / 'store', ['2.vhd', '1.vhd', '0.vhd'])
    (root / 'gen').rmdir()
    return c, paths[::-1]       # (chain with models, paths leaf first)


@pytest.fixture(scope='session')
def orphan_complex(fattools, tmp_path_factory):
    root = tmp_path_factory.mktemp('orphan-complex')
    c = build_complex_chain(root / 'gen')
    paths = relocate(c, root / 'store', ['2.vhd', '1.vhd', '0.vhd'])
    (root / 'gen').rmdir()
    return c, paths[::-1]
