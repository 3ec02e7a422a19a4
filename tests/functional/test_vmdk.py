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

"""VMDK disks written by VMware, ESXi, qemu-img, FATtools and VMDKstream,
converted by the ``any2kvm`` command.

Where the truth comes from:

* the corpus' ``expected-hashes.json`` (libvmdk, qemu, dissect and
  open-vmdk agree on every file used here, except where the corpus README
  names the right answer: the bare seSparse extent, VMDKstream's
  descriptor spelling that libvmdk rejects);
* for images made here: the raw file they were made from, or a model of
  the writes (:class:`imagegen.RawModel`), with ``qemu-img convert -O raw``
  (qemu follows VMDK backing files) and libvmdk (``pyvmdk``, parents given
  explicitly) as second opinions.  libvmdk 20200926 does not know the
  zeroed-grain GTE (it reads sector 1, the descriptor, as the grain), so it
  is not asked about chains that use it.

Nothing here imports ``any2kvm_os``.  The only VMDK knowledge is the field
offsets of the hosted sparse header (VMware "Virtual Disk Format 1.1"),
used to craft corrupt copies of files qemu-img wrote.
"""

import os
import shutil
import struct
import subprocess

import pytest

from tests.lib import cli
from tests.lib import imagegen as ig
from tests.lib import tools

KiB, MiB, GiB = ig.KiB, ig.MiB, ig.GiB
S = 512

QEMU_TAR = 'generated/qemu-img-7.2.tar.gz'
FAT_TAR = 'generated/fattools-chains.tar.gz'
SUBFORMATS = ('monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse',
              'twoGbMaxExtentFlat', 'streamOptimized')

# Hosted sparse extent header fields (VMware Virtual Disk Format 1.1):
# capacity u64 @12, grainSize u64 @20, gdOffset u64 @56, overHead u64 @64
# (sectors).
HDR_GD_OFFSET = 56
HDR_OVERHEAD = 64


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def row(expected, key, image, oracle):
    for r in expected[key]:
        if r['image'] == image and r['oracle'] == oracle and r['sha256']:
            return r
    raise LookupError('no %s result for %s in %s' % (oracle, image, key))


def run(*cmd, timeout=300):
    r = subprocess.run([str(c) for c in cmd], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError('%s failed: %s' % (' '.join(map(str, cmd)),
                                              r.stderr.strip()))
    return r.stdout


def layers(info):
    return [(cli.basename(la['name']), la['subformat'], la['id'],
             la['parent_id']) for la in info['chain']]


def patch(path, offset, fmt, *values):
    with open(str(path), 'r+b') as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def read_u(path, offset, fmt):
    with open(str(path), 'rb') as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


@pytest.fixture(scope='module')
def pyvmdk():
    if not ig.system_python_has('pyvmdk'):
        tools.missing_tool('pyvmdk not importable by %s (Debian package '
                           'python3-libvmdk)' % ig.SYSTEM_PYTHON)

    def read(*paths_leaf_first):
        return ig.libyal_read('pyvmdk', paths_leaf_first, kind='handle',
                              extents=True)
    return read


@pytest.fixture(scope='module')
def qemu_io(qemu_img):
    path = shutil.which('qemu-io')
    if not path:
        tools.missing_tool('qemu-io not found (Debian package '
                           'qemu-utils)')
    return path


@pytest.fixture(scope='module')
def vmdkstream():
    if not ig.system_python_has('VMDKstream'):
        tools.missing_tool('VMDKstream not importable by %s (Debian '
                           'package python3-vmdkstream)'
                           % ig.SYSTEM_PYTHON)

    def make(raw, out):
        run(ig.SYSTEM_PYTHON, '-c', 'import sys, VMDKstream; '
            'VMDKstream.convert_to_stream(sys.argv[1], sys.argv[2])',
            raw, out)
        return out
    return make


#: A raw disk with data, written zeros, holes, unaligned data and a last
#: grain cut short (10 MiB + 1536: not a multiple of the 64 KiB grain).
RAW_SIZE = 10 * MiB + 1536


def raw_extents():
    p = ig.pattern
    return [(0, p(1, 1 * MiB)),
            (1 * MiB, bytes(1 * MiB)),                 # zeros written
            (3 * MiB + 512, p(2, 100 * KiB)),          # unaligned
            (4 * MiB + 60 * KiB, p(3, 8 * KiB)),       # across two grains
            (10 * MiB, p(4, 1536))]                    # the cut last grain


@pytest.fixture(scope='module')
def raw_source(tmp_path_factory):
    d = tmp_path_factory.mktemp('vmdk-raw')
    path = d / 'source.raw'
    ig.write_raw(path, RAW_SIZE, raw_extents())
    return path


# ---------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------

CORPUS_SINGLE = [
    # (stored file, image, oracle whose answer is the truth)
    ('upstream/dfvfs/ext2.vmdk', 'ext2.vmdk', 'pyvmdk'),
    ('upstream/dfvfs/image.vmdk', 'image.vmdk', 'pyvmdk'),
    ('generated/vmdkstream-0.2.vmdk.gz', 'vmdkstream-0.2.vmdk', 'qemu'),
]


@pytest.mark.parametrize('rel,image,oracle', CORPUS_SINGLE,
                         ids=[c[1] for c in CORPUS_SINGLE])
def test_corpus_vmdk(rel, image, oracle, corpus, corpus_file, expected,
                     out_dir):
    want = row(expected, rel, image, oracle)
    src = corpus_file(rel) if rel.endswith('.gz') else corpus / rel
    out = cli.convert(src, out_dir / 'disk.raw')
    assert ig.sparse_sha256(out) == (want['size'], want['sha256'])


def test_corpus_vmware_10g_sparse_and_stream(corpus, expected, out_dir):
    """VMware Workstation monolithicSparse and its streamOptimized export:
    10 GiB each, the same raw disk.  One is hashed whole (7 s of zeros),
    the other compared with it where either holds data."""
    key = 'upstream/DiskAccessLibrary/%s'
    want = row(expected, key % 'MonolithicSparse.vmdk',
               'MonolithicSparse.vmdk', 'pyvmdk')
    assert want['sha256'] == row(expected, key % 'StreamOptimized.vmdk',
                                 'StreamOptimized.vmdk', 'pyvmdk')['sha256']
    sparse = cli.convert(corpus / (key % 'MonolithicSparse.vmdk'),
                         out_dir / 'sparse.raw')
    stream = cli.convert(corpus / (key % 'StreamOptimized.vmdk'),
                         out_dir / 'stream.raw')
    assert ig.sparse_sha256(sparse) == (want['size'], want['sha256'])
    assert ig.same_content(sparse, stream)
    # What the sample's README says: sector n holds BE64 n at 512..1535.
    assert ig.read_range(sparse, 512 * 3, 8) == struct.pack('>Q', 3)
    info = cli.info(corpus / (key % 'StreamOptimized.vmdk'))
    assert layers(info) == [('StreamOptimized.vmdk', 'streamOptimized',
                             '565a9714', None)]
    assert info['chain'][0]['creator'] == 'vmware'


def test_corpus_esxi_stream_16g(corpus_file, expected, out_dir):
    rel = 'upstream/qemu/iotest-version3.vmdk.bz2'
    want = row(expected, rel, 'iotest-version3.vmdk', 'pyvmdk')
    out = cli.convert(corpus_file(rel), out_dir / 'disk.raw')
    assert ig.sparse_sha256(out) == (want['size'], want['sha256'])


def test_corpus_qemu_subformats_and_chain(corpus_tar, expected, out_dir):
    files = corpus_tar(QEMU_TAR)          # all members in one directory
    for sub in SUBFORMATS:
        image = 'vmdk-%s.vmdk' % sub
        want = row(expected, QEMU_TAR, image, 'pyvmdk')
        out = cli.convert(files[image], out_dir / (sub + '.raw'))
        assert ig.sparse_sha256(out) == (want['size'], want['sha256']), sub
        info = cli.info(files[image])
        assert info['chain'][0]['subformat'] == sub
        assert info['chain'][0]['creator'] == 'qemu'
    want = [r for r in expected[QEMU_TAR] if r['image'] == 'chain2.vmdk'
            and r['oracle'] == 'pyvmdk' and r['sha256']][0]
    assert want['parents'] == ['chain1.vmdk', 'chain0.vmdk']
    out = cli.convert(files['chain2.vmdk'], out_dir / 'chain.raw')
    assert ig.sparse_sha256(out) == (want['size'], want['sha256'])
    info = cli.info(files['chain2.vmdk'])
    assert layers(info) == [
        ('chain2.vmdk', 'monolithicSparse', '8c0424ce', '0ac2a197'),
        ('chain1.vmdk', 'monolithicSparse', '0ac2a197', 'd941e849'),
        ('chain0.vmdk', 'monolithicSparse', 'd941e849', None)]


def test_corpus_fattools_split_chain(corpus_tar, expected, out_dir):
    files = corpus_tar(FAT_TAR)
    for name, parents in (('l0.vmdk', []), ('l1.vmdk', ['l0.vmdk']),
                          ('l2.vmdk', ['l1.vmdk', 'l0.vmdk'])):
        want = [r for r in expected[FAT_TAR] if r['image'] == name
                and r['oracle'] == 'pyvmdk' and r['parents'] == parents][0]
        out = cli.convert(files[name], out_dir / (name + '.raw'))
        assert ig.sparse_sha256(out) == (want['size'], want['sha256']), name
    info = cli.info(files['l2.vmdk'])
    assert [la[0] for la in layers(info)] == ['l2.vmdk', 'l1.vmdk',
                                              'l0.vmdk']
    assert {la[1] for la in layers(info)} == {'twoGbMaxExtentSparse'}


def test_corpus_sesparse(corpus, corpus_file, expected, tmp_path, out_dir):
    """The bare ESXi seSparse extent, through the hand-written descriptor
    (it names no parent: parentCID=ffffffff) and alone.  The right answer
    (corpus README): "a" x 16 MiB then zeros to 512 MiB, qemu (through the
    descriptor) and dissect agree."""
    want = row(expected, 'sesparse-desc', 'sesparse-descriptor.vmdk',
               'qemu')
    assert want['sha256'] == row(
        expected, 'upstream/dissect-hypervisor/sesparse.vmdk.gz',
        'sesparse.vmdk', 'dissect')['sha256']
    d = tmp_path / 'ses'
    extent = ig.decompress(
        corpus / 'upstream/dissect-hypervisor/sesparse.vmdk.gz', d)
    desc = d / 'sesparse-descriptor.vmdk'
    shutil.copyfile(corpus / 'helpers/sesparse-descriptor.vmdk', desc)
    out = cli.convert(desc, out_dir / 'desc.raw')
    assert ig.sparse_sha256(out) == (want['size'], want['sha256'])
    assert ig.read_range(out, 16 * MiB - 1, 2) == b'a\0'
    info = cli.info(desc)
    assert layers(info) == [('sesparse-descriptor.vmdk', 'seSparse',
                             'fffffffe', None)]
    res = cli.run_any2kvm('convert', extent, out_dir / 'alone.raw')
    assert res.returncode == 0, cli.describe(res)
    assert ig.sparse_sha256(out_dir / 'alone.raw') == (
        want['size'], want['sha256'])
    # A delta without its parent: said, as the user may not know.
    assert 'seSparse delta read without its descriptor' in res.stderr, \
        res.stderr
    assert layers(cli.info(extent)) == [('sesparse.vmdk', 'seSparse', None,
                                         None)]


def test_one_extent_of_a_split_sparse_disk_alone_is_refused(
        qemu_img, qemu_io, tmp_path, out_dir):
    """disk-s002.vmdk, the second 2 GiB piece of a 5 GiB split disk,
    given instead of its descriptor: its place on the disk is in the
    descriptor only (qemu refuses it too); the descriptor converts."""
    d = tmp_path / 'split'
    d.mkdir()
    ig.qemu_img('create', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse',
                d / 'disk.vmdk', '5G')
    run(qemu_io, '-f', 'vmdk', '-c', 'write -P 0x5a 0 512', '-c',
        'write -P 0x6b 3G 512', d / 'disk.vmdk')
    for piece in ('disk-s001.vmdk', 'disk-s002.vmdk', 'disk-s003.vmdk'):
        _refused(d / piece, out_dir, [piece],
                 'one extent of a split sparse disk .* convert the '
                 'descriptor')
    out = cli.convert(d / 'disk.vmdk', out_dir / 'whole.raw')
    assert os.path.getsize(out) == 5 << 30
    assert ig.read_range(out, 3 << 30, 1) == b'\x6b'


def test_corpus_afl9_refused(corpus_file, out_dir):
    src = corpus_file('upstream/qemu/afl9.vmdk.bz2')
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out)
    cli.assert_refused(res, output=out, names=['afl9.vmdk'],
                       problem='capacity|absurd')
    cli.assert_refused(cli.run_any2kvm('info', src), names=['afl9.vmdk'])


# ---------------------------------------------------------------------------
# made here by qemu-img, qemu-io and VMDKstream
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('sub', SUBFORMATS)
def test_qemu_subformats(sub, qemu_img, raw_source, tmp_path, out_dir):
    img = tmp_path / 'disk.vmdk'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'vmdk', '-o',
                'subformat=' + sub, raw_source, img)
    qraw = tmp_path / 'qemu.raw'
    ig.qemu_img('convert', '-f', 'vmdk', '-O', 'raw', img, qraw)
    truth = ig.sparse_sha256(raw_source)
    assert ig.sparse_sha256(qraw) == truth
    out = cli.convert(img, out_dir / 'disk.raw')
    assert ig.sparse_sha256(out) == truth
    info = cli.info(img)
    assert info['chain'][0]['subformat'] == sub
    assert info['virtual_size'] == RAW_SIZE


def test_qemu_subformats_pyvmdk_agrees(qemu_img, pyvmdk, raw_source,
                                       tmp_path):
    truth = ig.sparse_sha256(raw_source)
    for sub in SUBFORMATS:
        img = tmp_path / ('%s.vmdk' % sub)
        ig.qemu_img('convert', '-f', 'raw', '-O', 'vmdk', '-o',
                    'subformat=' + sub, raw_source, img)
        assert pyvmdk(img) == truth, sub


@pytest.fixture
def qemu_chain(qemu_img, qemu_io, raw_source, tmp_path):
    """base (monolithicSparse) <- c1 (twoGbMaxExtentSparse) <- c2
    (monolithicSparse with zeroed grains), and the model of the writes."""
    d = tmp_path / 'chain'
    d.mkdir()
    model = ig.RawModel(RAW_SIZE)
    model.data[:] = open(raw_source, 'rb').read()
    ig.qemu_img('convert', '-f', 'raw', '-O', 'vmdk', raw_source,
                d / 'base.vmdk')
    ig.qemu_img('create', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk',
                '-o', 'subformat=twoGbMaxExtentSparse', d / 'c1.vmdk')
    writes1 = [('write -P 0x5a 1M 64k', 1 * MiB, b'\x5a' * 64 * KiB),
               ('write -P 0x77 3145728 4k', 3 * MiB, b'\x77' * 4 * KiB),
               ('write -z 0 64k', 0, bytes(64 * KiB)),
               ('write -P 0x11 10485760 1536', 10 * MiB, b'\x11' * 1536)]
    run(qemu_io, '-f', 'vmdk', *sum((['-c', w[0]] for w in writes1), []),
        d / 'c1.vmdk')
    for _, off, data in writes1:
        model.write(off, data)
    c1 = model.copy()
    ig.qemu_img('create', '-f', 'vmdk', '-b', 'c1.vmdk', '-F', 'vmdk',
                '-o', 'zeroed_grain=on', d / 'c2.vmdk')
    writes2 = [('write -z 1M 128k', 1 * MiB, bytes(128 * KiB)),
               ('write -z 3M 64k', 3 * MiB, bytes(64 * KiB)),
               ('write -P 0x33 2M 4k', 2 * MiB, b'\x33' * 4 * KiB)]
    run(qemu_io, '-f', 'vmdk', *sum((['-c', w[0]] for w in writes2), []),
        d / 'c2.vmdk')
    for _, off, data in writes2:
        model.write(off, data)
    return d, c1, model


def test_qemu_chain(qemu_chain, out_dir):
    d, c1_model, model = qemu_chain
    out = cli.convert(d / 'c2.vmdk', out_dir / 'c2.raw')
    assert ig.sparse_sha256(out) == (RAW_SIZE, model.sha256())
    qraw = d / 'qemu.raw'
    ig.qemu_img('convert', '-f', 'vmdk', '-O', 'raw', d / 'c2.vmdk', qraw)
    assert ig.sparse_sha256(qraw) == (RAW_SIZE, model.sha256())
    out1 = cli.convert(d / 'c1.vmdk', out_dir / 'c1.raw')
    assert ig.sparse_sha256(out1) == (RAW_SIZE, c1_model.sha256())
    info = cli.info(d / 'c2.vmdk')
    got = layers(info)
    assert [(n, s) for n, s, _, _ in got] == [
        ('c2.vmdk', 'monolithicSparse'), ('c1.vmdk', 'twoGbMaxExtentSparse'),
        ('base.vmdk', 'monolithicSparse')]
    assert got[0][3] == got[1][2] and got[1][3] == got[2][2]
    assert got[2][3] is None


def test_qemu_chain_pyvmdk_agrees(qemu_chain, pyvmdk, out_dir):
    # c1 only: libvmdk 20200926 misreads c2's zeroed-grain entries.
    d, c1_model, _ = qemu_chain
    assert pyvmdk(d / 'c1.vmdk', d / 'base.vmdk') == (RAW_SIZE,
                                                      c1_model.sha256())


def test_qemu_chain_modified_parent_refused(qemu_chain, qemu_io, out_dir):
    """Writing to a parent after the snapshot changes its CID: the child's
    parentCID no longer matches (VMware refuses such a chain too)."""
    d, _, _ = qemu_chain
    run(qemu_io, '-f', 'vmdk', '-c', 'write -P 0x01 0 4k', d / 'base.vmdk')
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', d / 'c2.vmdk', out)
    cli.assert_refused(res, output=out, names=['c1.vmdk'],
                       problem='parent-id mismatch')


def test_vmdkstream(vmdkstream, raw_source, tmp_path, out_dir):
    img = vmdkstream(raw_source, tmp_path / 'stream.vmdk')
    out = cli.convert(img, out_dir / 'disk.raw')
    assert ig.sparse_sha256(out) == ig.sparse_sha256(raw_source)
    info = cli.info(img)
    assert info['chain'][0]['subformat'] == 'streamOptimized'
    assert info['chain'][0]['creator'] == 'VMDKstream'


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------

def _flat_descriptor(d, extent_line, name='disk.vmdk'):
    text = ('# Disk DescriptorFile\nversion=1\nCID=12345678\n'
            'parentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
            '# Extent description\n%s\n\n#DDB\n'
            'ddb.adapterType = "lsilogic"\n' % extent_line)
    (d / name).write_text(text)
    return d / name


def _refused(src, out_dir, names, problem):
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out)
    return cli.assert_refused(res, output=out, names=names, problem=problem)


@pytest.mark.parametrize('extent,problem', [
    ('/etc/passwd', 'path is refused'),
    ('../outside.vmdk', 'path is refused'),
    ('sub/inner.vmdk', 'path is refused'),
    ('missing-flat.vmdk', 'not a regular file of the same directory'),
])
def test_extent_outside_directory_refused(extent, problem, tmp_path,
                                          out_dir):
    """CVE-2022-47951: a descriptor must not make the converter read a
    file the user did not give (the output would leak it)."""
    d = tmp_path / 'src'
    (d / 'sub').mkdir(parents=True)
    (tmp_path / 'outside.vmdk').write_bytes(b'secret' * 1000)
    (d / 'sub' / 'inner.vmdk').write_bytes(b'secret' * 1000)
    src = _flat_descriptor(d, 'RW 8 FLAT "%s" 0' % extent)
    line = _refused(src, out_dir, ['disk.vmdk'], problem)
    assert extent in line


def test_symlinked_extent_refused(tmp_path, out_dir):
    d = tmp_path / 'src'
    d.mkdir()
    (tmp_path / 'target.bin').write_bytes(b'secret' * 1000)
    os.symlink(str(tmp_path / 'target.bin'), str(d / 'disk-flat.vmdk'))
    src = _flat_descriptor(d, 'RW 8 FLAT "disk-flat.vmdk" 0')
    _refused(src, out_dir, ['disk.vmdk'], 'not a regular file')


def test_absurd_extent_size_refused(tmp_path, out_dir):
    d = tmp_path / 'src'
    d.mkdir()
    (d / 'disk-flat.vmdk').write_bytes(bytes(4096))
    src = _flat_descriptor(d, 'RW 999999999999999999 FLAT '
                              '"disk-flat.vmdk" 0')
    _refused(src, out_dir, ['disk.vmdk'], 'absurd')


def test_flat_extent_too_short_refused(tmp_path, out_dir):
    d = tmp_path / 'src'
    d.mkdir()
    (d / 'disk-flat.vmdk').write_bytes(bytes(4096))
    src = _flat_descriptor(d, 'RW 16 FLAT "disk-flat.vmdk" 0')
    _refused(src, out_dir, ['disk-flat.vmdk'], 'truncated')


def test_text_file_not_claimed(tmp_path, out_dir):
    p = tmp_path / 'notes.vmdk'
    p.write_text('version=1\nThis is not a disk.\n')
    line = _refused(p, out_dir, ['notes.vmdk'], None)
    assert 'VMDK' not in line and 'descriptor' not in line


@pytest.fixture
def qemu_sparse(qemu_img, raw_source, tmp_path):
    d = tmp_path / 'src'
    d.mkdir()
    img = d / 'disk.vmdk'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'vmdk', raw_source, img)
    gd = read_u(img, HDR_GD_OFFSET, '<Q')
    gt = read_u(img, gd * S, '<I')
    return img, gd, gt


def test_truncated_sparse_refused(qemu_sparse, out_dir):
    img, _, _ = qemu_sparse
    with open(img, 'r+b') as f:
        f.truncate(os.path.getsize(img) // 2)
    _refused(img, out_dir, ['disk.vmdk'], 'beyond the end|truncated')


def test_grain_table_outside_file_refused(qemu_sparse, out_dir):
    img, gd, _ = qemu_sparse
    patch(img, gd * S, '<I', 0x7fffffff)
    _refused(img, out_dir, ['disk.vmdk'], 'beyond the end')


def test_grain_outside_file_refused(qemu_sparse, out_dir):
    img, _, gt = qemu_sparse
    assert read_u(img, gt * S, '<I') != 0       # grain 0 holds data
    patch(img, gt * S, '<I', 0x7fffff00)
    _refused(img, out_dir, ['disk.vmdk'], 'beyond the end')


def test_corrupt_deflate_refused(qemu_img, raw_source, tmp_path, out_dir):
    d = tmp_path / 'src'
    d.mkdir()
    img = d / 'disk.vmdk'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'vmdk', '-o',
                'subformat=streamOptimized', raw_source, img)
    first = read_u(img, HDR_OVERHEAD, '<Q') * S   # the first grain marker
    with open(img, 'r+b') as f:
        f.seek(first + 12 + 40)
        f.write(b'\xff' * 64)
    _refused(img, out_dir, ['disk.vmdk'], 'deflate|corrupt')


# ---------------------------------------------------------------------------
# streams cut short, and shifted bytes
# ---------------------------------------------------------------------------

CUT_STREAMS = ['generated/vmdkstream-0.2.vmdk.gz',
               'upstream/DiskAccessLibrary/StreamOptimized.vmdk']


@pytest.mark.parametrize('rel', CUT_STREAMS,
                         ids=[os.path.basename(r) for r in CUT_STREAMS])
def test_corpus_stream_cut_after_grain_directory(rel, qemu_img, corpus,
                                                 corpus_file, tmp_path,
                                                 out_dir):
    """A transfer cut short after the grain directory (footer marker,
    footer and end-of-stream marker lost): every grain is there, so it
    reads as qemu-img reads the whole file, with a warning."""
    src = corpus_file(rel) if rel.endswith('.gz') else corpus / rel
    whole = tmp_path / 'whole.raw'
    run(qemu_img, 'convert', '-f', 'vmdk', '-O', 'raw', src, whole)
    data = open(src, 'rb').read()
    assert struct.unpack_from('<QII', data, len(data) - 3 * 512) == (1, 0, 3)
    cut = tmp_path / 'cut.vmdk'
    cut.write_bytes(data[:-3 * 512])
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', cut, out)
    assert res.returncode == 0, cli.describe(res)
    assert 'ends without its footer' in res.stderr
    assert res.stderr.count('\n') == 1, res.stderr
    assert ig.same_content(out, whole)


def test_corpus_stream_cut_inside_grains_refused(corpus_file, tmp_path,
                                                 out_dir):
    src = corpus_file('generated/vmdkstream-0.2.vmdk.gz')
    data = open(src, 'rb').read()
    cut = tmp_path / 'cut.vmdk'
    cut.write_bytes(data[:len(data) // 2 // 512 * 512])
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', cut, out)
    cli.assert_refused(res, out, names=[cut], problem='footer')


@pytest.mark.parametrize('how', ['insert', 'delete', 'odd-cut'])
def test_corpus_sparse_shifted_refused(how, corpus_tar, tmp_path, out_dir):
    """One byte inserted into or deleted from a monolithicSparse VMDK, or
    the file cut at an odd length: the tables would be read from shifted
    bytes; refused in one line."""
    files = corpus_tar(QEMU_TAR)
    data = open(files['vmdk-monolithicSparse.vmdk'], 'rb').read()
    mid = len(data) // 2
    bad = {'insert': data[:mid] + b'\x01' + data[mid:],
           'delete': data[:mid] + data[mid + 1:],
           'odd-cut': data[:-100]}[how]
    path = tmp_path / 'shifted.vmdk'
    path.write_bytes(bad)
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', path, out)
    cli.assert_refused(res, out, names=[path], problem='whole sectors')
