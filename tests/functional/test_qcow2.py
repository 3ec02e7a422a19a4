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

"""qcow2 images written by qemu-img / qemu-io and from the shared corpus.

Truth comes from outside the project: ``qemu-img convert -O raw`` (which
follows backing chains itself), the corpus' ``expected-hashes.json`` and,
as a second opinion on one chain, libqcow (Debian ``python3-libqcow``,
importable only by the system python3, given the parents explicitly).
Caution: libqcow 20201213 returns the parent's data for a whole read that
starts in a cluster the child does not hold, even where later clusters of
the same read are the child's: it is asked 64 KiB (one cluster) at a time.

Corrupt inputs are made by patching a few header fields of qemu-made
images; the offsets used are those of the qcow2 header (QEMU
docs/interop/qcow2.txt) and are documented where they are patched.
"""

import os
import shutil
import struct

import pytest

from tests.lib import cli
from tests.lib import imagegen as ig
from tests.lib import tools

KiB, MiB, GiB = ig.KiB, ig.MiB, ig.GiB

# qcow2 header fields (big-endian) patched by the refusal tests.
H_BACKING_OFFSET = 8        # u64
H_BACKING_SIZE = 16         # u32
H_SIZE = 24                 # u64
H_CRYPT = 32                # u32
H_L1_OFFSET = 40            # u64
H_INCOMPATIBLE = 72         # u64, version 3 only


# ---------------------------------------------------------------------------
# tools and helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def qemu_io(qemu_img):
    path = shutil.which('qemu-io')
    if not path:
        tools.missing_tool('qemu-io not found (Debian package qemu-utils)')
    return path


@pytest.fixture(scope='module')
def pyqcow():
    if not ig.system_python_has('pyqcow'):
        tools.missing_tool('pyqcow not importable by %s (Debian package '
                           'python3-libqcow)' % ig.SYSTEM_PYTHON)

    def read(paths_leaf_first):
        # 64 KiB reads: libqcow 20201213 returns the parent's data for a
        # whole read that starts in a cluster the child does not hold.
        return ig.libyal_read('pyqcow', paths_leaf_first, chunk=64 << 10)
    return read


def text(seed, length):
    """Compressible, position-dependent bytes."""
    line = b'any2kvm qcow2 seed %04d line %%08d: lorem ipsum dolor sit\n' \
        % seed
    out = bytearray()
    i = 0
    while len(out) < length:
        out += line % i
        i += 1
    return bytes(out[:length])


def check_same(src, out_dir, truth, size=None):
    """Convert ``src`` with the CLI; its output must equal ``truth``."""
    out = cli.convert(src, out_dir / 'out.raw')
    want = os.path.getsize(truth) if size is None else size
    assert os.path.getsize(out) == want
    assert ig.sha256_file(out) == ig.sha256_file(truth, want)
    return out


def versus_qemu(src, tmp_path, out_dir):
    """The CLI's raw output equals qemu-img's for ``src`` (and chain)."""
    truth = ig.qemu_raw(src, tmp_path / 'qemu.raw')
    return check_same(src, out_dir, truth)


def patch(path, offset, fmt, *values):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def peek(path, offset, fmt):
    with open(path, 'rb') as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))


def refuse(src, out_dir, problem, names=None):
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out)
    return cli.assert_refused(
        res, out, names=names or [os.path.basename(str(src))],
        problem=problem)


# ---------------------------------------------------------------------------
# the shared corpus
# ---------------------------------------------------------------------------

DISSECT = 'upstream/dissect-hypervisor/'


@pytest.mark.parametrize('rel,image', [
    (DISSECT + 'basic.qcow2.gz', 'basic.qcow2'),
    ('upstream/dfvfs/ext2.qcow2', 'ext2.qcow2'),
])
def test_corpus_single(rel, image, corpus, expected, tmp_path, out_dir):
    src = ig.decompress(corpus / rel, tmp_path / 'src')
    row = ig.expected_row(expected, rel, image, oracle='pyqcow')
    out = cli.convert(src, out_dir / 'out.raw')
    assert os.path.getsize(out) == row['size']
    assert ig.sha256_file(out) == row['sha256']
    meta = cli.info(src)
    assert meta['format'] == 'qcow2'
    assert meta['virtual_size'] == row['size']
    assert len(meta['chain']) == 1


def test_corpus_backing_chain(corpus, expected, tmp_path, out_dir):
    d = tmp_path / 'chain'
    for i in (1, 2, 3):
        ig.decompress(corpus / (DISSECT + 'backing-chain-%d.qcow2.gz' % i), d)
    row = ig.expected_row(expected, 'qcow2chain', 'backing-chain-1.qcow2',
                          oracle='pyqcow')
    leaf = d / 'backing-chain-1.qcow2'
    out = cli.convert(leaf, out_dir / 'out.raw')
    assert os.path.getsize(out) == row['size']
    assert ig.sha256_file(out) == row['sha256']
    meta = cli.info(leaf)
    assert [cli.basename(x['name']) for x in meta['chain']] == [
        'backing-chain-1.qcow2', 'backing-chain-2.qcow2',
        'backing-chain-3.qcow2']
    assert {(x['format'], x['subformat']) for x in meta['chain']} == {
        ('qcow2', 'v3')}
    assert [x['id'] for x in meta['chain']] == [None, None, None]


# ---------------------------------------------------------------------------
# images written by qemu-img, read back against qemu-img
# ---------------------------------------------------------------------------

SOURCE_SIZE = 6 * MiB + 5 * 512     # not a multiple of any cluster size


def source_raw(path, size=SOURCE_SIZE):
    """Random data, compressible text and holes (some cluster-unaligned)."""
    ig.write_raw(path, size, [
        (0, ig.pattern(601, 96 * KiB)),
        (160 * KiB + 512, text(602, 300 * KiB)),
        (1 * MiB, ig.pattern(603, 8 * KiB)),
        (2 * MiB - 4 * KiB, text(604, 1 * MiB + 8 * KiB)),
        (4 * MiB + 3 * 512, ig.pattern(605, 700)),
        (size - 3 * 512, text(606, 3 * 512)),
    ])
    return path


@pytest.mark.parametrize('options,compress', [
    ('compat=0.10', False),
    ('compat=0.10,cluster_size=512', True),
    ('compat=1.1', False),
    ('compat=1.1', True),
    ('compat=1.1,cluster_size=4096', True),
    ('compat=1.1,cluster_size=2M', False),
    ('compat=1.1,cluster_size=2M', True),
    ('compat=1.1,extended_l2=on,cluster_size=32K', True),
])
def test_qemu_convert(options, compress, qemu_img, tmp_path, out_dir):
    """v2 and v3, cluster sizes 512 B to 2 MiB (so every width of the
    compressed-size field), deflate-compressed clusters, extended L2."""
    raw = source_raw(tmp_path / 'src.raw')
    img = tmp_path / 'disk.qcow2'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', '-o', options,
                *(['-c'] if compress else []), raw, img)
    check_same(img, out_dir, raw)


@pytest.mark.parametrize('compat,subformat', [('0.10', 'v2'),
                                              ('1.1', 'v3')])
def test_info(compat, subformat, qemu_img, tmp_path):
    img = tmp_path / 'disk.qcow2'
    ig.qemu_img('create', '-f', 'qcow2', '-o', 'compat=' + compat, img,
                '3M')
    meta = cli.info(img)
    assert meta['format'] == 'qcow2'
    assert meta['virtual_size'] == 3 * MiB
    layer, = meta['chain']
    assert layer['subformat'] == subformat
    assert layer['allocated_bytes'] == 0
    assert layer['id'] is None and layer['parent_id'] is None


def test_zstd(qemu_img, tmp_path, out_dir):
    raw = source_raw(tmp_path / 'src.raw')
    img = tmp_path / 'zstd.qcow2'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', '-c', '-o',
                'compression_type=zstd', raw, img)
    # zstandard is a test requirement: CI exercises this path (the refusal
    # without the module is in test_zstd).
    import zstandard  # noqa: F401
    check_same(img, out_dir, raw)


def test_written_by_qemu_io(qemu_io, tmp_path, out_dir):
    """Unaligned writes, a discard, compressed and zero writes in one v3."""
    img = tmp_path / 'io.qcow2'
    ig.qemu_img('create', '-f', 'qcow2', '-o', 'cluster_size=16K', img,
                '5000K')
    ig.qio(img, 'write -P 0x11 0 100k', 'write -P 0x22 33k 1k',
           'write -c -P 0x33 128k 16k', 'write -P 0x44 4999k 1k',
           'write -z 48k 32k', 'discard 200k 64k', 'write -P 0x55 190k 40k')
    versus_qemu(img, tmp_path, out_dir)


# ---------------------------------------------------------------------------
# internal snapshots and persistent bitmaps (tables the disk does not need)
# ---------------------------------------------------------------------------

def _snapshots_and_bitmaps(img):
    """Data, a bitmap, a snapshot, more data, another bitmap and
    snapshot: the file ends with the last snapshot table (unpadded)."""
    ig.qemu_img('create', '-f', 'qcow2', img, '8M')
    ig.qio(img, 'write -P 0x41 0 1M')
    ig.qemu_img('bitmap', '--add', img, 'b0')
    ig.qemu_img('snapshot', '-c', 's1', img)
    ig.qio(img, 'write -P 0x43 512k 1M')
    ig.qemu_img('bitmap', '--add', '--granularity', '512', img, 'b1')
    ig.qemu_img('snapshot', '-c', 'snapshot-two', img)


def _v2_snapshot(img):
    ig.qemu_img('create', '-f', 'qcow2', '-o', 'compat=0.10', img, '8M')
    ig.qio(img, 'write -P 0x41 0 1M')
    ig.qemu_img('snapshot', '-c', 's1', img)


def _bitmaps(img):
    """The file ends with the bitmap directory."""
    ig.qemu_img('create', '-f', 'qcow2', img, '8M')
    ig.qio(img, 'write -P 0x41 0 1M')
    ig.qemu_img('bitmap', '--add', img, 'b0')
    ig.qemu_img('bitmap', '--add', '--granularity', '512', img, 'b1')


def _snapshot_deleted(img):
    """The only snapshot deleted: the file ends with its freed (discarded)
    table, which nothing references (was refused as shifted before)."""
    ig.qemu_img('create', '-f', 'qcow2', img, '8M')
    ig.qio(img, 'write -P 0x41 0 1M')
    ig.qemu_img('snapshot', '-c', 's1', img)
    ig.qemu_img('snapshot', '-d', 's1', img)


TABLE_MAKERS = {'snapshots-and-bitmaps': _snapshots_and_bitmaps,
                'v2-snapshot': _v2_snapshot, 'bitmaps': _bitmaps,
                'snapshot-deleted': _snapshot_deleted}


@pytest.mark.parametrize('kind', sorted(TABLE_MAKERS))
def test_snapshots_and_bitmaps_convert(kind, qemu_io, tmp_path, out_dir):
    """qemu-img writes them; each file ends inside a sector (a table
    written last); read as qemu-img reads them."""
    img = tmp_path / 'tables.qcow2'
    TABLE_MAKERS[kind](img)
    assert img.stat().st_size % 512, 'the case needs a file ending ' \
        'inside a sector'
    versus_qemu(img, tmp_path, out_dir)


def _mutate(img, how):
    data = img.read_bytes()
    at = data.find(b'\x41' * 4096, 64 * KiB) + 1000
    assert at > 64 * KiB
    bad = {'insert': lambda: data[:at] + b'\x33' + data[at:],
           'delete': lambda: data[:at] + data[at + 1:],
           'cut': lambda: data[:-1],
           'append': lambda: data + b'\0'}[how]()
    img.write_bytes(bad)


@pytest.mark.parametrize('kind,how', [
    ('snapshots-and-bitmaps', 'insert'), ('snapshots-and-bitmaps', 'cut'),
    ('v2-snapshot', 'delete'), ('bitmaps', 'insert'), ('bitmaps', 'cut'),
    ('bitmaps', 'append')])
def test_snapshots_and_bitmaps_shifted_refused(kind, how, qemu_io, tmp_path,
                                               out_dir):
    """A byte inserted into the data, cut from it, cut from the end or
    appended: refused, with one line, although the tables qemu-img
    needs for the active disk may survive (it converts these into
    another disk, or the same, with exit 0)."""
    img = tmp_path / 'tables.qcow2'
    TABLE_MAKERS[kind](img)
    _mutate(img, how)
    refuse(img, out_dir, r'truncated|beyond the end|runs \d+ bytes past|'
           r'not cluster aligned')


@pytest.mark.parametrize('field,value,problem', [
    # the snapshot table offset (header bytes 64..71): not aligned
    (64, 4096 + 65536, r'snapshot table offset .* not cluster aligned'),
    # past the end of the file
    (64, 1 << 40, r'snapshot table entry 0 .* beyond the end'),
])
def test_snapshot_table_outside_refused(field, value, problem, qemu_io,
                                        tmp_path, out_dir):
    img = tmp_path / 'tables.qcow2'
    _v2_snapshot(img)
    patch(img, field, '>Q', value)
    refuse(img, out_dir, problem)


def test_snapshot_l1_table_outside_refused(qemu_io, tmp_path, out_dir):
    """A snapshot's L1 table (its size: bytes 8..11 of the table entry)
    running past the end of the file: refused, though the active disk
    does not need it."""
    img = tmp_path / 'tables.qcow2'
    _v2_snapshot(img)
    table, = peek(img, 64, '>Q')
    patch(img, table + 8, '>I', 1 << 20)
    refuse(img, out_dir, r'snapshot 0: L1 table .* beyond the end')


# ---------------------------------------------------------------------------
# backing chains
# ---------------------------------------------------------------------------

def make_chain(d, sizes=('8M', '8M', '8M'), compat=('1.1', '1.1', '1.1')):
    """base.qcow2 <- mid.qcow2 <- top.qcow2 (qemu-img -b/-F), data via
    qemu-io: overwrites, zero writes over parent data, a compressed write.
    Returns the leaf."""
    d.mkdir(parents=True, exist_ok=True)
    base, mid, top = d / 'base.qcow2', d / 'mid.qcow2', d / 'top.qcow2'
    ig.qemu_img('create', '-f', 'qcow2', '-o', 'compat=' + compat[0], base,
                sizes[0])
    ig.qio(base, 'write -P 0xb0 0 3M', 'write -P 0xb1 5M 1M')
    ig.qemu_img('create', '-f', 'qcow2', '-o', 'compat=' + compat[1],
                '-b', 'base.qcow2', '-F', 'qcow2', mid, sizes[1])
    zero = 'write -z 1M 256k' if compat[1] == '1.1' else 'write -P 0 1M 256k'
    ig.qio(mid, 'write -P 0xc0 64k 64k', zero, 'write -P 0xc1 5632k 1M',
           'write -c -P 0xc2 2M 64k')
    ig.qemu_img('create', '-f', 'qcow2', '-o', 'compat=' + compat[2],
                '-b', 'mid.qcow2', '-F', 'qcow2', top, sizes[2])
    ig.qio(top, 'write -P 0xd0 96k 8k', 'write -z 5M 128k',
           'write -P 0xd1 2052k 4k')
    return top


def test_chain_three_levels(qemu_io, tmp_path, out_dir):
    top = make_chain(tmp_path / 'c')
    versus_qemu(top, tmp_path, out_dir)
    meta = cli.info(top)
    assert [cli.basename(x['name']) for x in meta['chain']] == [
        'top.qcow2', 'mid.qcow2', 'base.qcow2']
    assert all(x['format'] == 'qcow2' for x in meta['chain'])


def test_chain_second_opinion_pyqcow(qemu_io, pyqcow, tmp_path, out_dir):
    d = tmp_path / 'c'
    d.mkdir()
    base, top = d / 'base.qcow2', d / 'top.qcow2'
    ig.qemu_img('create', '-f', 'qcow2', base, '4M')
    ig.qio(base, 'write -P 0x61 0 2M', 'write -P 0x62 3M 512k')
    ig.qemu_img('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2',
                top, '4M')
    ig.qio(top, 'write -P 0x63 64k 64k', 'write -P 0x64 1049088 3k')
    out = cli.convert(top, out_dir / 'out.raw')
    size, digest = pyqcow([top, base])
    assert os.path.getsize(out) == size
    assert ig.sha256_file(out) == digest


def test_chain_mixed_versions_and_sizes(qemu_io, tmp_path, out_dir):
    """v2 base, v3 middle grown past its parent, v2 leaf grown again."""
    top = make_chain(tmp_path / 'c', sizes=('6M', '7M', '9M'),
                     compat=('0.10', '1.1', '0.10'))
    versus_qemu(top, tmp_path, out_dir)


def test_child_smaller_than_backing(qemu_io, tmp_path, out_dir):
    d = tmp_path / 'c'
    d.mkdir()
    ig.qemu_img('create', '-f', 'qcow2', d / 'base.qcow2', '8M')
    ig.qio(d / 'base.qcow2', 'write -P 0x71 0 8M')
    ig.qemu_img('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2',
                d / 'top.qcow2', '8M')
    ig.qemu_img('resize', '--shrink', d / 'top.qcow2', '3M')
    ig.qio(d / 'top.qcow2', 'write -P 0x72 1M 4k')
    versus_qemu(d / 'top.qcow2', tmp_path, out_dir)


def test_extended_l2_subclusters(qemu_io, tmp_path, out_dir):
    d = tmp_path / 'c'
    d.mkdir()
    ig.qemu_img('create', '-f', 'qcow2', d / 'base.qcow2', '4M')
    ig.qio(d / 'base.qcow2', 'write -P 0x81 0 4M')
    ig.qemu_img('create', '-f', 'qcow2', '-o',
                'extended_l2=on,cluster_size=64K', '-b', 'base.qcow2', '-F',
                'qcow2', d / 'top.qcow2', '4M')
    # 2 KiB subclusters: partly written clusters keep the parent's data in
    # the others; zero writes make zero subclusters.
    ig.qio(d / 'top.qcow2', 'write -P 0x82 2k 2k', 'write -P 0x83 70k 10k',
           'write -z 256k 4k', 'write -z 512k 64k', 'write -P 0x84 1025k 1k',
           'write -c -P 0x85 2M 64k')
    versus_qemu(d / 'top.qcow2', tmp_path, out_dir)


def test_raw_backing_file(qemu_io, tmp_path, out_dir):
    """backing_fmt raw: read through the sibling opener; the raw file is
    shorter than the child (zeros beyond its end)."""
    d = tmp_path / 'c'
    d.mkdir()
    ig.write_raw(d / 'base.img', 3 * MiB + 1000,
                 [(0, ig.pattern(901, 1 * MiB)),
                  (3 * MiB, ig.pattern(902, 1000))])
    ig.qemu_img('create', '-f', 'qcow2', '-b', 'base.img', '-F', 'raw',
                d / 'top.qcow2', '5M')
    ig.qio(d / 'top.qcow2', 'write -P 0x91 512k 64k', 'write -z 128k 64k')
    versus_qemu(d / 'top.qcow2', tmp_path, out_dir)
    meta = cli.info(d / 'top.qcow2')
    assert len(meta['chain']) == 1


def test_vhd_backing_file(qemu_io, tmp_path, out_dir):
    """A qcow2 child over a dynamic VHD (backing format vpc)."""
    d = tmp_path / 'c'
    d.mkdir()
    ig.qemu_img('create', '-f', 'vpc', '-o',
                'subformat=dynamic,force_size=on', d / 'base.vhd', '4M')
    ig.qio(d / 'base.vhd', 'write -P 0x95 0 3M', fmt='vpc')
    ig.qemu_img('create', '-f', 'qcow2', '-b', 'base.vhd', '-F', 'vpc',
                d / 'top.qcow2', '4M')
    ig.qio(d / 'top.qcow2', 'write -P 0x96 1M 64k', 'write -z 2M 128k')
    versus_qemu(d / 'top.qcow2', tmp_path, out_dir)
    meta = cli.info(d / 'top.qcow2')
    assert [x['format'] for x in meta['chain']] == ['qcow2', 'vhd']


def test_refuse_backing_format_mismatch(qemu_io, tmp_path, out_dir):
    """The image says its backing file is qcow2; the file of that name is a
    VHD: QEMU refuses to open it, so must we."""
    d = tmp_path / 'c'
    d.mkdir()
    ig.qemu_img('create', '-f', 'qcow2', d / 'base.qcow2', '4M')
    ig.qemu_img('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2',
                d / 'top.qcow2', '4M')
    os.unlink(d / 'base.qcow2')
    ig.qemu_img('create', '-f', 'vpc', '-o',
                'subformat=dynamic,force_size=on', d / 'base.qcow2', '4M')
    refuse(d / 'top.qcow2', out_dir, r'base\.qcow2.*(vhd|format)')


def test_backing_path_is_reduced_to_its_name(qemu_io, tmp_path, out_dir):
    """A backing file named by an absolute path is looked for, by its last
    component, in the child's own directory only."""
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    ig.qemu_img('create', '-f', 'qcow2', elsewhere / 'base.qcow2', '2M')
    ig.qio(elsewhere / 'base.qcow2', 'write -P 0xa1 0 1M')
    d = tmp_path / 'c'
    d.mkdir()
    top = d / 'top.qcow2'
    ig.qemu_img('create', '-f', 'qcow2', '-b', elsewhere / 'base.qcow2',
                '-F', 'qcow2', top, '2M')
    ig.qio(top, 'write -P 0xa2 64k 4k')
    truth = ig.qemu_raw(top, tmp_path / 'qemu.raw')
    # Not beside the child: refused, although the path inside is valid.
    refuse(top, out_dir, r'missing parent base\.qcow2')
    shutil.copy(elsewhere / 'base.qcow2', d / 'base.qcow2')
    ig.qio(elsewhere / 'base.qcow2', 'write -P 0xee 0 2M')   # not read
    check_same(top, out_dir, truth)


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------

@pytest.fixture
def v3_image(qemu_io, tmp_path):
    img = tmp_path / 'src' / 'disk.qcow2'
    img.parent.mkdir()
    ig.qemu_img('create', '-f', 'qcow2', img, '4M')
    ig.qio(img, 'write -P 0x5a 0 1M', 'write -P 0x5b 3M 64k')
    return img


def test_refuse_external_data_file(qemu_img, tmp_path, out_dir):
    d = tmp_path / 'src'
    d.mkdir()
    # An absolute path: qemu-img resolves a relative one against the
    # working directory, not the image's.
    ig.qemu_img('create', '-f', 'qcow2', '-o', 'data_file=%s' % (d / 'x.raw'),
                d / 'disk.qcow2', '1M')
    refuse(d / 'disk.qcow2', out_dir, r'external data file')


def test_refuse_corrupt_bit(v3_image, out_dir):
    flags, = peek(v3_image, H_INCOMPATIBLE, '>Q')
    patch(v3_image, H_INCOMPATIBLE, '>Q', flags | 2)
    refuse(v3_image, out_dir, r'corrupt')


def test_refuse_unknown_incompatible_feature(v3_image, out_dir):
    flags, = peek(v3_image, H_INCOMPATIBLE, '>Q')
    patch(v3_image, H_INCOMPATIBLE, '>Q', flags | (1 << 40))
    refuse(v3_image, out_dir, r'unknown incompatible feature.*40')


def test_dirty_bit_is_read(v3_image, tmp_path, out_dir):
    truth = ig.qemu_raw(v3_image, tmp_path / 'qemu.raw')
    flags, = peek(v3_image, H_INCOMPATIBLE, '>Q')
    patch(v3_image, H_INCOMPATIBLE, '>Q', flags | 1)
    check_same(v3_image, out_dir, truth)


def test_refuse_encrypted(v3_image, out_dir):
    # crypt_method 1: the legacy AES encryption (creating a LUKS image
    # needs qemu's key-derivation benchmark: slow and flaky under load).
    patch(v3_image, H_CRYPT, '>I', 1)
    refuse(v3_image, out_dir, r'encrypted')


def set_backing_name(path, name):
    """Overwrite the backing file name in place (room for it is made by
    creating the child with a long enough name)."""
    off, size = peek(path, H_BACKING_OFFSET, '>QI')
    assert off and len(name) <= size
    with open(path, 'r+b') as f:
        f.seek(off)
        f.write(name + bytes(size - len(name)))
    patch(path, H_BACKING_SIZE, '>I', len(name))


@pytest.fixture
def child(qemu_io, tmp_path):
    d = tmp_path / 'src'
    d.mkdir()
    long_name = 'base-with-a-rather-long-name-0123456789.qcow2'
    ig.qemu_img('create', '-f', 'qcow2', d / long_name, '2M')
    ig.qemu_img('create', '-f', 'qcow2', '-b', long_name, '-F', 'qcow2',
                d / 'child.qcow2', '2M')
    ig.qio(d / 'child.qcow2', 'write -P 0x3c 0 64k')
    return d / 'child.qcow2'


def test_refuse_backing_etc_passwd(child, out_dir):
    set_backing_name(child, b'/etc/passwd')
    refuse(child, out_dir, r'missing parent passwd')


def test_refuse_backing_protocol(child, out_dir):
    set_backing_name(child, b'nbd://127.0.0.1:10809/x')
    refuse(child, out_dir, r'protocol')


def test_refuse_backing_cycle(child, out_dir):
    d = child.parent
    ig.qemu_img('create', '-f', 'qcow2', '-b', 'child.qcow2', '-F', 'qcow2',
                d / 'other.qcow2', '2M')
    set_backing_name(child, b'other.qcow2')
    refuse(child, out_dir, r'cycle')


def test_refuse_backing_itself(child, out_dir):
    set_backing_name(child, b'child.qcow2')
    refuse(child, out_dir, r'cycle')


def test_refuse_missing_raw_backing(qemu_img, tmp_path, out_dir):
    d = tmp_path / 'src'
    d.mkdir()
    ig.write_raw(d / 'base.img', 1 * MiB, [])
    ig.qemu_img('create', '-f', 'qcow2', '-b', 'base.img', '-F', 'raw',
                d / 'top.qcow2', '1M')
    os.unlink(d / 'base.img')
    refuse(d / 'top.qcow2', out_dir, r'base\.img')


def test_refuse_l1_outside(v3_image, out_dir):
    l1, = peek(v3_image, H_L1_OFFSET, '>Q')
    patch(v3_image, l1, '>Q', (1 << 40) | (1 << 63))
    refuse(v3_image, out_dir, r'L1 entry 0 points beyond the end')


def test_refuse_l1_table_outside(v3_image, out_dir):
    patch(v3_image, H_L1_OFFSET, '>Q', 1 << 40)
    refuse(v3_image, out_dir, r'L1 table .* beyond the end')


def test_refuse_truncated(v3_image, out_dir):
    size = os.path.getsize(v3_image)
    os.truncate(v3_image, size // 2)
    refuse(v3_image, out_dir, r'truncated')


@pytest.mark.parametrize('size,problem', [
    (1 << 62, r'absurd'),
    (1 << 50, r'L1 table has 1 entries'),
])
def test_refuse_absurd_size(v3_image, out_dir, size, problem):
    patch(v3_image, H_SIZE, '>Q', size)
    refuse(v3_image, out_dir, problem)


def test_a_backing_file_recorded_in_another_directory(qemu_io, tmp_path,
                                                      out_dir):
    """qcow2 has no parent id: the parent is found by its file name, in
    the child's directory only.  A chain copied into one directory still
    records the old directory: read, with a warning that says which file
    stood in; recorded in the child's own directory (absolute or
    relative), no warning."""
    other, vm = tmp_path / 'other', tmp_path / 'vm'
    other.mkdir()
    vm.mkdir()
    ig.qemu_img('create', '-f', 'qcow2', other / 'base.qcow2', '4M')
    ig.qio(other / 'base.qcow2', 'write -P 0x33 0 4M')
    ig.qemu_img('create', '-f', 'qcow2', '-b', '../other/base.qcow2', '-F',
                'qcow2', vm / 'child.qcow2', '4M')
    ig.qio(vm / 'child.qcow2', 'write -P 0x22 1M 1M')
    shutil.copy(str(other / 'base.qcow2'), str(vm / 'base.qcow2'))
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', vm / 'child.qcow2', out)
    assert res.returncode == 0, cli.describe(res)
    assert ('its backing file is recorded as ../other/base.qcow2, in '
            'another directory; %s beside it is read in its place' % (
                vm / 'base.qcow2') in res.stderr), res.stderr
    assert ('(qemu-img rebase -u -b base.qcow2 -F qcow2 %s)' % (
        vm / 'child.qcow2')) in res.stderr, res.stderr
    assert ig.sha256_file(out) == ig.sha256_file(
        ig.qemu_raw(vm / 'child.qcow2', tmp_path / 'q.raw'))
    out.unlink()
    for name in (str(vm / 'base.qcow2'), './base.qcow2'):
        ig.qemu_img('rebase', '-u', '-b', name, '-F', 'qcow2',
                    vm / 'child.qcow2')
        res = cli.run_any2kvm('convert', vm / 'child.qcow2', out)
        assert res.returncode == 0, cli.describe(res)
        assert 'WARNING' not in res.stderr, res.stderr
        out.unlink()


def test_a_backing_file_of_the_childs_name_elsewhere(qemu_io, tmp_path,
                                                     out_dir):
    """template/disk.qcow2 <- vm/disk.qcow2: not a cycle; refused as
    what it is, with the way to read it."""
    tpl, vm = tmp_path / 'template', tmp_path / 'vm'
    tpl.mkdir()
    vm.mkdir()
    ig.qemu_img('create', '-f', 'qcow2', tpl / 'disk.qcow2', '4M')
    ig.qemu_img('create', '-f', 'qcow2', '-b', '../template/disk.qcow2',
                '-F', 'qcow2', vm / 'disk.qcow2', '4M')
    line = refuse(vm / 'disk.qcow2', out_dir,
                  'backing file ../template/disk.qcow2, in another '
                  'directory, has the name of a file of this chain')
    assert 'cycle' not in line and 'qemu-img rebase -u' in line


def test_no_backing_format_over_a_raw_file(qemu_io, tmp_path, out_dir):
    """An image made before qemu 5.0 (or without -F) records no backing
    format; its raw parent is not guessed: refused, saying how to record
    the format."""
    d = tmp_path / 'c'
    d.mkdir()
    ig.write_raw(d / 'base.img', MiB, [(0, ig.pattern(905, MiB))])
    ig.qemu_img('create', '-f', 'qcow2', '-b', 'base.img', '-F', 'raw',
                d / 'top.qcow2', '1M')
    data = bytearray((d / 'top.qcow2').read_bytes())
    at = data.find(struct.pack('>I', 0xE2792ACA))
    assert at > 0
    data[at:at + 4] = struct.pack('>I', 0x0A2B3C4D)   # an unknown one
    (d / 'top.qcow2').write_bytes(bytes(data))
    refuse(d / 'top.qcow2', out_dir, r'records no backing format; if it is '
           r'raw, record so: qemu-img rebase -u -F raw -b base\.img')
