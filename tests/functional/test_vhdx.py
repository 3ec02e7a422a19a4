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

"""VHDX written by Hyper-V, Windows, Disk2vhd, qemu-img and FATtools.

Where the truth comes from:

* the corpus' ``expected-hashes.json`` (libvhdi, qemu-img and dissect agree
  on every single file used here; for the dirty-log sample the right answer
  is the replayed content, which all three give once qemu has replayed the
  log; for the Hyper-V AVHDX over its all-zero stand-in parent, libvhdi and
  dissect agree);
* ``qemu-img convert -f vhdx -O raw`` for VHDX that qemu-img writes here
  from a raw disk of known content (and that raw disk itself);
* for FATtools chains built here, a flat bytearray that receives exactly
  the bytes written through FATtools (``imagegen.RawModel``), and libvhdi
  (Debian ``python3-libvhdi``) on chains with 4 KiB-aligned writes.

The only VHDX knowledge in this file is the handful of field offsets needed
to *patch* files written by those tools (BAT entry states, a header's
LogGuid), each documented where it is used.
"""

import concurrent.futures
import contextlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.lib import cli
from tests.lib import imagegen as ig

MiB, KiB, GiB = ig.MiB, ig.KiB, ig.GiB
p = ig.pattern

DIRTY = 'upstream/qemu/iotest-dirtylog-10G-4M.vhdx.bz2'
REPLAYED_SHA = ('179cefe8b0587f123393eedf2aa7aa8d'
                '25798591178e6bc3950a09762f38f96f')
STALE_SHA = ('cc3d67a6bfea2ec826b5d0f77ac755bd'
             'bca18479ed13f64ee8b3d3f0d64859ca')
AVHDX = 'upstream/dissect-hypervisor/differencing.avhdx.gz'
STANDIN = ('helpers/Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385'
           '.avhdx.gz')
STANDIN_NAME = 'Generation 1_49C4BAF3-4B25-4406-8C4B-D39E65C32385.avhdx'
AVHDX_SHA = ('fc5c91bfd8f7ee388cf482dc7eb6cef6'
             '4b39a7e1bd043516ee95887b839f2b78')
FATTOOLS = 'generated/fattools-chains.tar.gz'
QEMU_TAR = 'generated/qemu-img-7.2.tar.gz'


# -- helpers ------------------------------------------------------------------

def oracle_rows(expected, key, image):
    """The successful oracle rows for ``image``: they must all agree."""
    rows = [r for r in expected[key]
            if r['image'] == image and not r['parents'] and not r['error']]
    assert rows, 'no oracle row for %s' % image
    assert len({(r['size'], r['sha256']) for r in rows}) == 1, rows
    return rows[0]


def region_offsets(path):
    """{'bat': (offset, length), 'metadata': ...} from the first region
    table (MS-VHDX 2.2.3: 16-byte header at 192 KiB, then 32-byte entries
    GUID, FileOffset u64, Length u32, Required u32)."""
    names = {'2dc27766-f623-4200-9d64-115e9bfd4a08': 'bat',
             '8b7ca206-4790-4b9a-b8fe-575f050f886e': 'metadata'}
    import uuid
    with open(str(path), 'rb') as f:
        f.seek(192 * KiB)
        table = f.read(64 * KiB)
    count = struct.unpack_from('<I', table, 8)[0]
    out = {}
    for i in range(count):
        guid, off, length, _ = struct.unpack_from('<16sQII', table,
                                                  16 + 32 * i)
        name = names.get(str(uuid.UUID(bytes_le=guid)))
        if name:
            out[name] = (off, length)
    return out


def set_block_state(path, bat_index, state):
    """Set the 3-bit state of a BAT entry (MS-VHDX 2.5.1: bits 0-2 state,
    bits 20-63 offset in MiB; the BAT has no checksum)."""
    bat_off = region_offsets(path)['bat'][0]
    with open(str(path), 'r+b') as f:
        f.seek(bat_off + 8 * bat_index)
        entry = struct.unpack('<Q', f.read(8))[0]
        f.seek(bat_off + 8 * bat_index)
        f.write(struct.pack('<Q', (entry & ~7) | state))


def fattools_crc32c(data):
    from FATtools.crc32c import crc_update
    return crc_update(0xFFFFFFFF, data, len(data)) ^ 0xFFFFFFFF


# -- FATtools chains ----------------------------------------------------------

@contextlib.contextmanager
def fattools_dir(directory):
    """Run FATtools inside ``directory``.

    FATtools finds a parent through the relative path it stored
    (``.\\l0.vhdx``), taken literally on Linux: while it works, each VHDX of
    the directory also exists under that name (a symlink, removed after).
    """
    old = os.getcwd()
    os.chdir(str(directory))
    links = []
    try:
        for name in os.listdir('.'):
            if name.endswith('.vhdx') and not name.startswith('.\\'):
                os.symlink(name, '.\\' + name)
                links.append('.\\' + name)
        yield
    finally:
        for link in links:
            os.unlink(link)
        os.chdir(old)


class VhdxChain(object):
    """A VHDX chain written by FATtools, with its write model.

    ``layers`` are base first: (path, model snapshot after that layer).
    """

    def __init__(self, directory, size):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.model = ig.RawModel(size)
        self.layers = []

    def base(self, name, writes=(), block=2 * MiB, sector=512):
        from FATtools import vhdxutils
        with fattools_dir(self.directory):
            vhdxutils.mk_dynamic(name, self.size, block=block, sector=sector)
        self._write(name, writes)
        return self._add(name)

    def child(self, name, writes=(), block=1 * MiB):
        from FATtools import vhdxutils
        with fattools_dir(self.directory):
            vhdxutils.mk_diff(name, os.path.basename(self.layers[-1][0]),
                              block=block)
        self._write(name, writes)
        return self._add(name)

    def _write(self, name, writes):
        from FATtools import vhdxutils
        writes = list(writes)
        if not writes:
            return
        with fattools_dir(self.directory):
            img = vhdxutils.Image(name, 'r+b')
            try:
                for offset, data in writes:
                    img.seek(offset)
                    img.write(bytes(data))
                    self.model.write(offset, data)
            finally:
                img.close()

    def _add(self, name):
        path = str(self.directory / name)
        self.layers.append((path, self.model.copy()))
        return path

    @property
    def leaf(self):
        return self.layers[-1]

    def paths_leaf_first(self, level=None):
        layers = self.layers if level is None else self.layers[:level + 1]
        return [lp for lp, _ in reversed(layers)]


CHAIN_SIZE = 12 * MiB


def build_complex_chain(directory):
    """Base with 2 MiB blocks, children with 1 MiB blocks (each child block
    lies inside one block of every older layer, so FATtools' choice between
    "fully" and "partially present" is right).  Partial sector-bitmap
    bytes, unaligned writes, zeros written over parent data, a block only in
    a child, the last sector of the disk."""
    c = VhdxChain(directory, CHAIN_SIZE)
    c.base('l0.vhdx', [
        (0, p(1, 2 * MiB)),                       # block 0 full
        (2 * MiB + 64 * KiB, p(2, 128 * KiB)),    # block 1 partial
        (6 * MiB + 3 * 512, p(3, 5000)),          # block 3, odd offset
        (10 * MiB, p(4, 1 * MiB)),                # block 5
    ])                                            # blocks 2, 4: nothing
    c.child('l1.vhdx', [
        (5 * 512, p(5, 3 * 512)),                 # bitmap byte 0: bits 5-7
        (13 * 512, p(6, 512)),                    # bitmap byte 1: bit 5
        (1 * MiB + 100, p(7, 700)),               # unaligned, in one sector
        (2 * MiB + 64 * KiB, bytes(64 * KiB)),    # zeros over parent data
        (4 * MiB + 4 * KiB, p(8, 100 * KiB)),     # block only in l1
        (7 * MiB - 512, p(9, 1024)),              # straddles two blocks
        (11 * MiB + 512, bytes(512)),             # zero one parent sector
    ])
    c.child('l2.vhdx', [
        (6 * 512, bytes(512)),                    # zeros over l1 data
        (2 * MiB, p(10, 1 * MiB)),                # block replaced whole
        (4 * MiB + 512 * KiB + 3, p(11, 5000)),   # inside l1's own block
        (8 * MiB + 17 * 512, bytes(4 * KiB)),     # zeros where nothing is
        (CHAIN_SIZE - 512, p(12, 512)),           # last sector of the disk
    ])
    return c


def build_simple_chain(directory):
    """4 KiB-aligned writes only: simple enough for libvhdi."""
    c = VhdxChain(directory, 8 * MiB)
    c.base('s0.vhdx', [(0, p(21, 3 * MiB)), (6 * MiB, p(22, 1 * MiB))])
    c.child('s1.vhdx', [(64 * KiB, p(23, 128 * KiB)),
                        (3 * MiB, p(24, 2 * MiB)),
                        (6 * MiB + 8 * KiB, bytes(64 * KiB))])
    c.child('s2.vhdx', [(0, bytes(8 * KiB)), (5 * MiB, p(25, 8 * KiB))])
    return c


@pytest.fixture(scope='session')
def complex_vhdx_chain(fattools, tmp_path_factory):
    return build_complex_chain(tmp_path_factory.mktemp('vhdx-complex'))


@pytest.fixture(scope='session')
def simple_vhdx_chain(fattools, tmp_path_factory):
    return build_simple_chain(tmp_path_factory.mktemp('vhdx-simple'))


# -- the corpus, decompressed once, in parallel -------------------------------

COMPRESSED = [
    'upstream/qemu/iotest-dynamic-1G.vhdx.bz2',
    'upstream/qemu/test-disk2vhd.vhdx.bz2',
    'upstream/dissect-hypervisor/fixed.vhdx.gz',
    'upstream/dissect-hypervisor/dynamic.vhdx.gz',
    DIRTY, AVHDX, STANDIN,
]


@pytest.fixture(scope='session')
def vhdx_corpus(corpus, tmp_path_factory):
    """{stored name: decompressed path} (bz2 and zlib release the GIL: two
    threads halve the wait)."""
    root = tmp_path_factory.mktemp('vhdx-corpus')
    for rel in COMPRESSED:
        if not (corpus / rel).is_file():
            pytest.fail('corpus file missing: %s' % (corpus / rel),
                        pytrace=False)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {rel: pool.submit(ig.decompress, corpus / rel,
                                 root / rel.replace('/', '_'))
                for rel in COMPRESSED}
    return {rel: Path(job.result()) for rel, job in jobs.items()}


def _convert_big(vhdx_corpus, root):
    """The two big sparse disks converted and hashed: the 10 GiB dirty-log
    VHDX and the 8 GiB Hyper-V checkpoint over its stand-in parent."""
    dirty = root / 'dirty.vhdx'
    shutil.copy(vhdx_corpus[DIRTY], dirty)
    vm = root / 'Virtual hard disks'
    vm.mkdir()
    avhdx = vm / 'differencing.avhdx'
    shutil.copy(vhdx_corpus[AVHDX], avhdx)
    shutil.copy(vhdx_corpus[STANDIN], vm / STANDIN_NAME)
    before = (ig.sha256_file(dirty), os.stat(dirty))
    outs = [cli.convert(dirty, root / 'dirty.raw'),
            cli.convert(avhdx, root / 'avhdx.raw')]
    hashes = [ig.sparse_sha256(out)[1] for out in outs]
    return {'dirty': dirty, 'dirty_before': before, 'dirty_raw': outs[0],
            'dirty_sha': hashes[0], 'avhdx': avhdx, 'avhdx_raw': outs[1],
            'avhdx_sha': hashes[1]}


_BIG = {}


@pytest.fixture(scope='module', autouse=True)
def _start_big_outputs(request, tmp_path_factory):
    """Hashing 18 GiB of mostly holes takes a while: when tests of this
    module need it, start it in a thread as the module starts, so that it
    overlaps the other tests (which mostly wait for subprocesses; hashlib
    releases the GIL).  The tests that use it come last.
    """
    needed = any('big_outputs' in getattr(item, 'fixturenames', ())
                 and item.module is request.module
                 for item in request.session.items)
    if not needed:
        yield
        return
    vhdx_corpus = request.getfixturevalue('vhdx_corpus')
    root = tmp_path_factory.mktemp('vhdx-big')
    pool = concurrent.futures.ThreadPoolExecutor(1)
    _BIG['job'] = pool.submit(_convert_big, vhdx_corpus, root)
    yield
    pool.shutdown(wait=True)


@pytest.fixture
def big_outputs(vhdx_corpus, tmp_path_factory):
    job = _BIG.get('job')
    if job is None:     # the module fixture did not see this test coming
        return _convert_big(vhdx_corpus,
                            tmp_path_factory.mktemp('vhdx-big'))
    return job.result()


# -- the corpus: single files -------------------------------------------------

SINGLE = [
    # (stored file, tar member or None, image, subformat, creator)
    ('upstream/qemu/iotest-dynamic-1G.vhdx.bz2', None,
     'iotest-dynamic-1G.vhdx', 'dynamic',
     'Microsoft Windows 6.2.9200.16384'),
    ('upstream/qemu/test-disk2vhd.vhdx.bz2', None, 'test-disk2vhd.vhdx',
     'dynamic', 'd2v'),
    ('upstream/dissect-hypervisor/fixed.vhdx.gz', None, 'fixed.vhdx',
     'fixed', 'Microsoft Windows 10.0.18363.0'),
    ('upstream/dissect-hypervisor/dynamic.vhdx.gz', None, 'dynamic.vhdx',
     'dynamic', 'Microsoft Windows 10.0.18363.0'),
    (QEMU_TAR, 'vhdx-dynamic.vhdx', 'vhdx-dynamic.vhdx', 'dynamic',
     'QEMU v7.2.22'),
    (QEMU_TAR, 'vhdx-fixed.vhdx', 'vhdx-fixed.vhdx', 'fixed',
     'QEMU v7.2.22'),
    (QEMU_TAR, 'vhdx-dyn-1M.vhdx', 'vhdx-dyn-1M.vhdx', 'dynamic',
     'QEMU v7.2.22'),
    (FATTOOLS, 'l0.vhdx', 'l0.vhdx', 'dynamic', 'Python 3'),
]
SINGLE_IDS = [s[2] for s in SINGLE]


def materialise(rel, member, vhdx_corpus, corpus_tar):
    if member is not None:
        return corpus_tar(rel)[member]
    return vhdx_corpus[rel]


@pytest.mark.parametrize('rel,member,image,subformat,creator', SINGLE,
                         ids=SINGLE_IDS)
def test_corpus_vhdx(rel, member, image, subformat, creator, vhdx_corpus,
                     corpus_tar, expected, out_dir):
    row = oracle_rows(expected, rel, image)
    src = materialise(rel, member, vhdx_corpus, corpus_tar)
    out = cli.convert(src, out_dir / 'disk.raw')
    assert os.path.getsize(out) == row['size']
    assert ig.sparse_sha256(out)[1] == row['sha256']


@pytest.fixture(scope='session')
def single_meta(vhdx_corpus, corpus_tar, pyvhdi):
    """libvhdi's view of every single corpus file (one subprocess)."""
    paths = [materialise(s[0], s[1], vhdx_corpus, corpus_tar)
             for s in SINGLE]
    return dict(zip(SINGLE_IDS, ig.pyvhdi_meta(*paths)))


@pytest.mark.parametrize('rel,member,image,subformat,creator', SINGLE,
                         ids=SINGLE_IDS)
def test_corpus_vhdx_info(rel, member, image, subformat, creator,
                          vhdx_corpus, corpus_tar, single_meta):
    src = materialise(rel, member, vhdx_corpus, corpus_tar)
    truth = single_meta[image]
    doc = cli.info(src)
    assert doc['format'] == 'vhdx'
    assert doc['virtual_size'] == truth['media_size']
    (layer,) = doc['chain']
    assert layer['subformat'] == subformat
    assert layer['creator'] == creator
    assert layer['id'].lower() == truth['id']     # the DataWriteGuid
    assert layer['parent_id'] is None


# -- the corpus: FATtools chain (l0 <- l1 <- l2, ``.\\l0.vhdx`` locators) -----

@pytest.mark.parametrize('image', ['l1.vhdx', 'l2.vhdx'])
def test_corpus_fattools_chain(image, corpus_tar, expected, out_dir):
    files = corpus_tar(FATTOOLS)        # VHD and VMDK files lie beside
    row = ig.expected_row(expected, FATTOOLS, image, 'pyvhdi')
    out = cli.convert(files[image], out_dir / 'disk.raw')
    assert os.path.getsize(out) == row['size']
    assert ig.sha256_file(out) == row['sha256']


def test_corpus_fattools_chain_renamed(corpus_tar, expected, tmp_path,
                                       out_dir):
    """Parents under other names (with spaces): found by DataWriteGuid."""
    files = corpus_tar(FATTOOLS)
    vm = tmp_path / 'vm'
    vm.mkdir()
    for src, dst in (('l0.vhdx', 'base disk.vhdx'),
                     ('l1.vhdx', 'snapshot 1.avhdx'),
                     ('l2.vhdx', 'current.avhdx')):
        shutil.copy(files[src], vm / dst)
    row = ig.expected_row(expected, FATTOOLS, 'l2.vhdx', 'pyvhdi')
    out = cli.convert(vm / 'current.avhdx', out_dir / 'disk.raw')
    assert ig.sha256_file(out) == row['sha256']
    doc = cli.info(vm / 'current.avhdx')
    assert [cli.basename(x['name']) for x in doc['chain']] == [
        'current.avhdx', 'snapshot 1.avhdx', 'base disk.vhdx']


def test_corpus_fattools_chain_ids(corpus_tar, pyvhdi):
    files = corpus_tar(FATTOOLS)
    truth = ig.pyvhdi_meta(files['l2.vhdx'], files['l1.vhdx'],
                           files['l0.vhdx'])
    doc = cli.info(files['l2.vhdx'])
    assert [(x['id'], x['parent_id']) for x in doc['chain']] == [
        (t['id'], t['parent_id']) for t in truth]
    assert [x['subformat'] for x in doc['chain']] == [
        'differencing', 'differencing', 'dynamic']


# -- qemu-img: VHDX from a raw disk of known content --------------------------

QEMU_SIZE = 40 * MiB + 3584


def qemu_source(path):
    """Data, explicit zeros and holes; writes across block boundaries."""
    ig.write_raw(path, QEMU_SIZE, [
        (0, p(31, 700 * KiB)),
        (3 * MiB + 512, p(32, 5000)),
        (8 * MiB, bytes(2 * MiB)),                # written zeros
        (17 * MiB - 4096, p(33, 2 * MiB)),        # across a block boundary
        (32 * MiB - 512, p(34, 1024)),
        (QEMU_SIZE - 4096, p(35, 4096)),          # the last sector
    ])
    return path


@pytest.mark.parametrize('options', [
    'subformat=dynamic,block_size=1M',
    'subformat=dynamic,block_size=32M',
    'subformat=dynamic,block_size=256M,log_size=4M',
    'subformat=fixed,block_size=8M',
    'subformat=dynamic',
])
def test_qemu_made(qemu_img, options, tmp_path, out_dir):
    raw = qemu_source(tmp_path / 'src.raw')
    img = tmp_path / 'disk.vhdx'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'vhdx', '-o', options, raw,
                img)
    qraw = tmp_path / 'qemu.raw'
    ig.qemu_img('convert', '-f', 'vhdx', '-O', 'raw', img, qraw)
    truth = ig.sha256_file(raw)
    assert ig.sha256_file(qraw) == truth         # the oracle agrees
    out = cli.convert(img, out_dir / 'disk.raw')
    assert os.path.getsize(out) == QEMU_SIZE
    assert ig.sha256_file(out) == truth
    if 'block_size=8M' in options or options == 'subformat=dynamic':
        doc = cli.info(img)
        assert doc['chain'][0]['subformat'] == options.split(',')[0].split(
            '=')[1]


# -- FATtools: chains built here ----------------------------------------------

def test_fattools_chain_really_has_partial_blocks(complex_vhdx_chain):
    """l1 and l2 hold PARTIALLY_PRESENT (7) and FULLY_PRESENT (6) blocks."""
    for path, _ in complex_vhdx_chain.layers[1:]:
        bat_off = region_offsets(path)['bat'][0]
        with open(path, 'rb') as f:
            f.seek(bat_off)
            states = {e & 7 for e in struct.unpack('<12Q', f.read(96))}
        assert {6, 7} <= states, (path, states)


@pytest.mark.parametrize('level', [0, 1, 2], ids=['l0', 'l1', 'l2'])
def test_fattools_complex_chain(complex_vhdx_chain, level, out_dir):
    path, model = complex_vhdx_chain.layers[level]
    out = cli.convert(path, out_dir / 'disk.raw')
    assert os.path.getsize(out) == CHAIN_SIZE
    assert ig.sha256_file(out) == model.sha256()


@pytest.mark.parametrize('level', [0, 1, 2], ids=['s0', 's1', 's2'])
def test_fattools_simple_chain_with_libvhdi(simple_vhdx_chain, level, pyvhdi,
                                            out_dir):
    path, model = simple_vhdx_chain.layers[level]
    assert pyvhdi(simple_vhdx_chain.paths_leaf_first(level)) == (
        model.size, model.sha256())
    out = cli.convert(path, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == model.sha256()


def test_fattools_chain_ids_agree_with_libvhdi(simple_vhdx_chain, pyvhdi):
    truth = ig.pyvhdi_meta(*simple_vhdx_chain.paths_leaf_first())
    doc = cli.info(simple_vhdx_chain.leaf[0])
    assert [(x['id'], x['parent_id']) for x in doc['chain']] == [
        (t['id'], t['parent_id']) for t in truth]


@pytest.mark.parametrize('block,state', [(1, 1), (10, 2), (11, 3)],
                         ids=['undefined', 'zero', 'unmapped'])
def test_zero_states_in_a_child_hide_the_parent(complex_vhdx_chain, block,
                                                state, tmp_path, out_dir):
    """A child block set to UNDEFINED, ZERO or UNMAPPED reads as zeros,
    whatever its parents hold there (block 1: l1 and l0 data; block 10: l0
    data; block 11: l2's own last sector, l1 and l0 data)."""
    vm = tmp_path / 'vm'
    vm.mkdir()
    for path, _ in complex_vhdx_chain.layers:
        shutil.copy(path, vm)
    leaf_path, model = complex_vhdx_chain.leaf
    leaf = vm / os.path.basename(leaf_path)
    want = model.copy()
    want.write(block * MiB, bytes(MiB))
    assert want.data != model.data
    # l2: 1 MiB blocks, chunk ratio 4096: BAT index == block number
    set_block_state(leaf, block, state)
    out = cli.convert(leaf, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == want.sha256()


def test_fattools_4k_sectors(fattools, pyvhdi, tmp_path, out_dir):
    """4Kn (logical sectors of 4096 bytes): qemu-img cannot write or read
    them; FATtools writes them, libvhdi and the model judge."""
    c = VhdxChain(tmp_path / 'vm', 16 * MiB)
    path = c.base('k4.vhdx', [(0, p(41, 5000)),
                              (3 * MiB + 3 * 4096, p(42, 9000)),
                              (9 * MiB, bytes(4096)),
                              (15 * MiB, p(43, 1 * MiB))], sector=4096)
    with open(path, 'rb') as f:
        meta = f.read(4 * MiB)
    assert struct.pack('<I', 4096) in meta
    model = c.layers[-1][1]
    assert pyvhdi([path]) == (model.size, model.sha256())
    out = cli.convert(path, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == model.sha256()


# -- refusals -----------------------------------------------------------------

def test_truncated_vhdx_refused(vhdx_corpus, tmp_path, out_dir):
    src = tmp_path / 'fixed.vhdx'
    shutil.copy(vhdx_corpus['upstream/dissect-hypervisor/fixed.vhdx.gz'],
                src)
    os.truncate(src, 8 * MiB)
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out)
    cli.assert_refused(res, out, names=['fixed.vhdx'],
                       problem=r'outside the file')


def test_both_headers_corrupt_refused(corpus_tar, tmp_path, out_dir):
    src = tmp_path / 'bad.vhdx'
    shutil.copy(corpus_tar(QEMU_TAR)['vhdx-dynamic.vhdx'], src)
    with open(src, 'r+b') as f:
        for off in (64 * KiB + 300, 128 * KiB + 300):
            f.seek(off)
            f.write(b'\xEE')
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out)
    cli.assert_refused(res, out, names=['bad.vhdx'],
                       problem=r'header checksum mismatch \(both headers\)')


# -- the corpus: the log must be replayed (big outputs: last, see
# _start_big_outputs) ---------------------------------------------------------

def test_dirty_log_is_replayed_without_touching_the_source(
        big_outputs, expected, qemu_img, tmp_path):
    rows = {(r['image'], r['oracle']): r['sha256']
            for r in expected['dirtylog']}
    # what the corpus says: stale without replay, replayed by everyone after
    assert rows[('iotest-dirtylog-10G-4M.vhdx', 'pyvhdi')] == STALE_SHA
    assert rows[('replayed.vhdx', 'qemu')] == REPLAYED_SHA
    src = big_outputs['dirty']
    # qemu refuses it read-only: there really is a log to replay
    res = subprocess.run([qemu_img, 'info', str(src)], capture_output=True,
                         text=True)
    assert res.returncode != 0 and 'log' in res.stderr, res.stderr

    out = big_outputs['dirty_raw']
    assert os.path.getsize(out) == 10 * GiB
    assert big_outputs['dirty_sha'] == REPLAYED_SHA

    # the source is exactly as it was
    digest, stat = big_outputs['dirty_before']
    assert ig.sha256_file(src) == digest
    after = os.stat(src)
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size,
                                                  stat.st_mtime_ns)

    # qemu replays the log for real (on a copy): same content as ours
    copy = tmp_path / 'qemu-copy.vhdx'
    shutil.copy(src, copy)
    ig.qemu_img('check', '-r', 'all', copy)
    qraw = tmp_path / 'qemu.raw'
    ig.qemu_img('convert', '-f', 'vhdx', '-O', 'raw', copy, qraw)
    assert ig.same_content(out, qraw)


def test_dirty_log_info(vhdx_corpus):
    doc = cli.info(vhdx_corpus[DIRTY])
    (layer,) = doc['chain']
    assert doc['virtual_size'] == 10 * GiB
    assert layer['subformat'] == 'dynamic'
    assert layer['creator'] == 'QEMU v1.6.50'


def test_dirty_log_with_log_guid_cleared_reads_stale(big_outputs, fattools,
                                                     tmp_path, out_dir):
    """Clearing the LogGuid of both headers (checksums fixed with FATtools'
    CRC-32C) means "no log": the output then differs from the replayed
    one."""
    src = tmp_path / 'cleared.vhdx'
    shutil.copy(big_outputs['dirty'], src)
    with open(src, 'r+b') as f:
        for off in (64 * KiB, 128 * KiB):
            # MS-VHDX 2.2.2: Checksum at 4, LogGuid at 48 (16 bytes)
            f.seek(off)
            h = bytearray(f.read(4096))
            h[48:64] = bytes(16)
            h[4:8] = bytes(4)
            struct.pack_into('<I', h, 4, fattools_crc32c(h))
            f.seek(off)
            f.write(h)
    stale = cli.convert(src, out_dir / 'stale.raw')
    assert os.path.getsize(stale) == os.path.getsize(
        big_outputs['dirty_raw'])
    assert not ig.same_content(stale, big_outputs['dirty_raw'])


# -- the corpus: Hyper-V checkpoint over an all-zero stand-in parent ----------

def test_avhdx_with_standin_parent(big_outputs):
    out = big_outputs['avhdx_raw']
    assert os.path.getsize(out) == 8 * GiB
    assert big_outputs['avhdx_sha'] == AVHDX_SHA

    doc = cli.info(big_outputs['avhdx'])
    leaf, parent = doc['chain']
    assert cli.basename(parent['name']) == STANDIN_NAME
    assert leaf['subformat'] == 'differencing'
    assert leaf['creator'] == 'Microsoft Windows 10.0.17763.0'
    assert leaf['parent_id'] == 'ff34003b-11ed-4cf8-a166-b2be05e20b80'
    assert parent['id'] == leaf['parent_id']


def test_avhdx_ids_agree_with_libvhdi(big_outputs, pyvhdi):
    avhdx = big_outputs['avhdx']
    truth = ig.pyvhdi_meta(avhdx, avhdx.parent / STANDIN_NAME)
    doc = cli.info(avhdx)
    assert [(x['id'], x['parent_id']) for x in doc['chain']] == [
        (t['id'], t['parent_id']) for t in truth]


def test_avhdx_without_parent_refused(vhdx_corpus, tmp_path, out_dir):
    src = tmp_path / 'differencing.avhdx'
    shutil.copy(vhdx_corpus[AVHDX], src)
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out)
    cli.assert_refused(res, out, names=['differencing.avhdx'],
                       problem=r'parent')
