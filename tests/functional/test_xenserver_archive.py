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

"""XenServer-style archives: ``0.vhd`` (leaf) .. ``n.vhd`` (base).

The VHDs come from FATtools (moved and renamed after writing, so the parent
names stored inside point at files that exist nowhere) and from XenServer's
own ``vhd-util`` (corpus).  Archives are packed with Python's tarfile.
"""

import itertools
import os
import shutil
import subprocess
import tarfile

import pytest

from tests.lib import cli
from tests.lib.cli import basename
from tests.lib.corpus import VHDUTIL
from tests.lib.corpus import VHDUTIL_L2
from tests.lib import imagegen as ig
from tests.lib import tools

ORDERS = ['leaf-first', 'base-first', 'shuffled']
PREFIXES = ['', './']
COMPRESSIONS = ['gz', None]


def archive_name(compression):
    return 'vdi.tgz' if compression == 'gz' else 'vdi.tar'


# every order and prefix gzipped, and two of them as plain tar
ARCHIVE_CASES = (list(itertools.product(ORDERS, PREFIXES, ['gz'])) +
                 [('leaf-first', '', None), ('shuffled', './', None)])


@pytest.mark.parametrize(
    'order,prefix,compression', ARCHIVE_CASES,
    ids=['%s-%s-%s' % (o, 'dot' if p else 'bare', c or 'plain')
         for o, p, c in ARCHIVE_CASES])
def test_fattools_chain_archive(orphan_simple, order, prefix, compression,
                                tmp_path, out_dir):
    chain, leaf_first = orphan_simple
    tar = tmp_path / archive_name(compression)
    ig.make_tar(tar, ig.xenserver_members(leaf_first, prefix, order),
                compression)
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert os.path.getsize(out) == chain.size
    assert ig.sha256_file(out) == chain.leaf.model.sha256()


@pytest.mark.parametrize('compression', COMPRESSIONS,
                         ids=['gz', 'plain'])
def test_complex_chain_archive(orphan_complex, compression, tmp_path,
                               out_dir):
    chain, leaf_first = orphan_complex
    tar = tmp_path / archive_name(compression)
    ig.make_tar(tar, ig.xenserver_members(leaf_first, './', 'shuffled',
                                          seed=3), compression)
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == chain.leaf.model.sha256()
    zeros = chain.leaf.model.zero_ranges(granularity=256 * ig.KiB)
    assert ig.hole_violations(out, zeros) == []


def test_zstd_archive(orphan_complex, tmp_path, out_dir):
    """A XenServer archive compressed with zstd, members out of order, is
    converted in one pass like a tgz."""
    import zstandard
    chain, leaf_first = orphan_complex
    plain = tmp_path / 'vdi.tar'
    ig.make_tar(plain, ig.xenserver_members(leaf_first, './', 'shuffled',
                                            seed=3))
    tar = tmp_path / 'vdi.tar.zst'
    with open(plain, 'rb') as src, open(tar, 'wb') as dst:
        zstandard.ZstdCompressor().copy_stream(src, dst)
    os.unlink(plain)
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == chain.leaf.model.sha256()


LEADING_COMPRESSIONS = [None, 'gz', 'xz', 'zst']


@pytest.mark.parametrize('compression', LEADING_COMPRESSIONS,
                         ids=[c or 'plain' for c in LEADING_COMPRESSIONS])
def test_leading_directory_entries(orphan_simple, compression, tmp_path):
    """``tar -C dir -cf vdi.tar .``: a ``./`` directory entry, then
    ``./0.vhd`` ... out of order; read in place or in one pass, whatever
    the compression."""
    chain, leaf_first = orphan_simple
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    members = [{'name': '.', 'type': 'dir'}] + ig.xenserver_members(
        leaf_first, './', 'shuffled', seed=2)
    ig.make_tar(tmp_path / 'vdi.tar', members)
    path = ig.compress_whole(tmp_path / 'vdi.tar', compression)
    out = tmp_path / 'disk.raw'
    assert cli.convert_in_process(path, out, scratch) is None
    assert ig.sha256_file(out) == chain.leaf.model.sha256()
    assert list(scratch.iterdir()) == []


def test_members_in_a_directory_refused_alike(orphan_simple, tmp_path):
    """``export/0.vhd`` ...: refused in the same line, plain or
    compressed (gzip, xz, zstd), and not taken for an OVA, nothing
    written."""
    _chain, leaf_first = orphan_simple
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    members = [{'name': 'export', 'type': 'dir'}] + ig.xenserver_members(
        leaf_first, 'export/')
    ig.make_tar(tmp_path / 'vdi.tar', members)
    lines = cli.refused_alike(
        [ig.compress_whole(tmp_path / 'vdi.tar', compression)
         for compression in LEADING_COMPRESSIONS], tmp_path / 'disk.raw',
        scratch)
    assert lines == {"ARCHIVE: member 'export/0.vhd' lies in a directory: "
                     "a XenServer image holds 0.vhd ... n.vhd at the top of "
                     "the archive"}, lines
    assert list(scratch.iterdir()) == []


def test_pax_format_archive(orphan_simple, tmp_path, out_dir):
    chain, leaf_first = orphan_simple
    tar = tmp_path / 'vdi.tgz'
    ig.make_tar(tar, ig.xenserver_members(leaf_first), 'gz',
                fmt=tarfile.PAX_FORMAT)
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == chain.leaf.model.sha256()


def test_single_member_archive(fattools, tmp_path, out_dir):
    c = ig.FatChain(tmp_path / 'gen', 4 * ig.MiB)
    c.base('anything.vhd', [(512 * ig.KiB, ig.pattern(401, 300 * ig.KiB))])
    tar = tmp_path / 'vdi.tgz'
    ig.make_tar(tar, [ig.tar_member_file('0.vhd', c.leaf.path)], 'gz')
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == c.model.sha256()


def test_archive_is_not_extracted_beside_itself(orphan_simple, tmp_path,
                                                out_dir):
    _, leaf_first = orphan_simple
    src = tmp_path / 'src'
    src.mkdir()
    tar = src / 'vdi.tgz'
    ig.make_tar(tar, ig.xenserver_members(leaf_first), 'gz')
    cli.convert(tar, out_dir / 'disk.raw')
    assert os.listdir(src) == ['vdi.tgz']


def test_info_archive(orphan_simple, pyvhdi, tmp_path):
    chain, leaf_first = orphan_simple
    tar = tmp_path / 'vdi.tgz'
    ig.make_tar(tar, ig.xenserver_members(leaf_first, './', 'base-first'),
                'gz')
    truth = ig.pyvhdi_meta(*leaf_first)
    doc = cli.info(tar)
    assert doc['container'] in ('tar', 'xenserver-tgz')
    assert doc['format'] == 'vhd'
    assert doc['virtual_size'] == chain.size
    names = [basename(e['name']) for e in doc['chain']]
    assert [n[2:] if n.startswith('./') else n for n in names] == [
        '0.vhd', '1.vhd', '2.vhd']
    assert [e['id'].lower() for e in doc['chain']] == [
        t['id'] for t in truth]
    assert [e['parent_id'] and e['parent_id'].lower()
            for e in doc['chain']] == [t['parent_id'] for t in truth]
    assert [e['subformat'] for e in doc['chain']] == [
        'differencing', 'differencing', 'dynamic']


# --- XenServer's own vhd-util chain (corpus) ---------------------------------

@pytest.fixture(scope='module')
def vhdutil(corpus_tar, expected):
    files = corpus_tar(VHDUTIL)
    row = ig.expected_row(expected, VHDUTIL, 'l2.vhd', 'pyvhdi')
    assert row['parents'] == ['l1.vhd', 'l0.vhd']
    assert row['sha256'] == VHDUTIL_L2
    return files, row


@pytest.mark.parametrize('order,prefix,compression', [
    ('leaf-first', '', 'gz'),
    ('base-first', './', 'gz'),
    ('shuffled', './', None),
], ids=['leaf-first-gz', 'base-first-dot-gz', 'shuffled-dot-plain'])
def test_vhdutil_chain_repacked(vhdutil, order, prefix, compression,
                                tmp_path, out_dir):
    files, row = vhdutil
    leaf_first = [files['l2.vhd'], files['l1.vhd'], files['l0.vhd']]
    tar = tmp_path / archive_name(compression)
    ig.make_tar(tar, ig.xenserver_members(leaf_first, prefix, order),
                compression)
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert os.path.getsize(out) == row['size']
    assert ig.sha256_file(out) == row['sha256']


@pytest.mark.parametrize('image', ['l0.vhd', 'l1.vhd', 'l2.vhd'])
def test_vhdutil_chain_as_files(vhdutil, expected, image, out_dir):
    files, _ = vhdutil
    row = ig.expected_row(expected, VHDUTIL, image, 'pyvhdi')
    out = cli.convert(files[image], out_dir / 'disk.raw')
    assert os.path.getsize(out) == row['size']
    assert ig.sha256_file(out) == row['sha256']


def test_info_vhdutil_chain(vhdutil, pyvhdi):
    files, row = vhdutil
    leaf_first = [files['l2.vhd'], files['l1.vhd'], files['l0.vhd']]
    truth = ig.pyvhdi_meta(*leaf_first)
    doc = cli.info(files['l2.vhd'])
    assert [basename(e['name']) for e in doc['chain']] == [
        'l2.vhd', 'l1.vhd', 'l0.vhd']
    assert [e['id'].lower() for e in doc['chain']] == [
        t['id'] for t in truth]
    assert [e['subformat'] for e in doc['chain']] == [
        'differencing', 'differencing', 'dynamic']
    assert [e['creator'] for e in doc['chain']] == ['tap'] * 3
    assert doc['virtual_size'] == row['size']


# --- packed by GNU tar, the way XenServer archives are usually made ----------

@pytest.fixture(scope='module')
def gnu_tar():
    path = shutil.which('tar')
    if not path:
        tools.missing_tool('GNU tar not found')
    r = subprocess.run([path, '--version'], capture_output=True, text=True)
    if 'GNU tar' not in r.stdout:
        tools.missing_tool('tar is not GNU tar')
    return path


@pytest.mark.parametrize('how', ['names', 'dot', 'sparse-gnu',
                                 'sparse-posix'])
def test_gnu_tar_archive(gnu_tar, orphan_complex, how, tmp_path, out_dir):
    """Archives made by GNU tar rather than Python's tarfile.

    * ``names``: ``tar czf vdi.tgz -C d 0.vhd 1.vhd 2.vhd``;
    * ``dot``: ``tar czf vdi.tgz -C d .`` -- adds a harmless ``./``
      directory member and ``./`` prefixes;
    * ``sparse-*``: the VHDs are first copied with ``cp --sparse=always``
      (same bytes, zero runs become holes), then packed with ``--sparse``:
      GNU sparse members (old GNU 'S' headers, or PAX GNU.sparse 1.0 whose
      member data starts with the sparse map).
    """
    chain, leaf_first = orphan_complex
    store = os.path.dirname(leaf_first[0])
    tar = tmp_path / 'vdi.tgz'
    names = ['0.vhd', '1.vhd', '2.vhd']
    if how == 'names':
        args = ['-czf', tar, '-C', store] + names
    elif how == 'dot':
        args = ['-czf', tar, '-C', store, '.']
    else:
        holey = tmp_path / 'holey'
        holey.mkdir()
        for n in names:
            subprocess.run(['cp', '--sparse=always', os.path.join(store, n),
                            holey / n], check=True)
        fmt = 'gnu' if how == 'sparse-gnu' else 'posix'
        args = ['--sparse', '--format=%s' % fmt, '-czf', tar, '-C', holey,
                '2.vhd', '0.vhd', '1.vhd']
    subprocess.run([gnu_tar] + [str(a) for a in args], check=True)
    if how.startswith('sparse'):
        with tarfile.open(tar) as tf:
            assert any(m.sparse for m in tf.getmembers()), 'not sparse'
        # The contract does not require sparse members: reading them right
        # or refusing them cleanly are both acceptable; wrong data is not.
        out = out_dir / 'disk.raw'
        res = cli.run_any2kvm('convert', tar, out)
        if res.returncode != 0:
            cli.assert_refused(res, out, names=['vdi.tgz'], problem='sparse')
            return
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == chain.leaf.model.sha256()


# --- member names that contradict the chain ----------------------------------

REVERSED_CASES = list(itertools.product(ORDERS, ['gz', None]))


@pytest.mark.parametrize(
    'order,compression', REVERSED_CASES,
    ids=['%s-%s' % (o, c or 'plain') for o, c in REVERSED_CASES])
def test_vhdutil_chain_reverse_named(vhdutil, order, compression, tmp_path,
                                     out_dir):
    """``0.vhd`` the base and ``2.vhd`` the leaf (older export scripts):
    the parent unique ids win over the names, in a plain tar read in place
    and in a tgz read in one pass, whatever order the members come in.
    The result is what pyvhdi (libvhdi) reads through the same chain."""
    files, row = vhdutil
    base_first = [files['l0.vhd'], files['l1.vhd'], files['l2.vhd']]
    tar = tmp_path / archive_name(compression)
    ig.make_tar(tar, ig.xenserver_members(base_first, './', order, seed=5),
                compression)
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', tar, out)
    assert res.returncode == 0, cli.describe(res)
    assert os.path.getsize(out) == row['size']
    assert ig.sha256_file(out) == row['sha256']
    # One warning, naming the order found.
    assert res.stderr.count('\n') == 1, res.stderr
    assert 'leaf to base: 2.vhd, 1.vhd, 0.vhd' in res.stderr
    assert 'contradict' in res.stderr


@pytest.mark.parametrize('compression', COMPRESSIONS, ids=['gz', 'plain'])
def test_info_reverse_named(vhdutil, pyvhdi, compression, tmp_path):
    files, row = vhdutil
    leaf_first = [files['l2.vhd'], files['l1.vhd'], files['l0.vhd']]
    truth = ig.pyvhdi_meta(*leaf_first)
    tar = tmp_path / archive_name(compression)
    ig.make_tar(tar, ig.xenserver_members(leaf_first[::-1], '', 'shuffled',
                                          seed=2), compression)
    doc = cli.info(tar)
    assert [basename(e['name']) for e in doc['chain']] == [
        '2.vhd', '1.vhd', '0.vhd']
    assert [e['id'].lower() for e in doc['chain']] == [
        t['id'] for t in truth]
    assert doc['virtual_size'] == row['size']


def _numbered_dir(tmp_path, files, names):
    """A directory of ``0.vhd`` .. as unpacked from an archive: ``names``
    are the corpus files to copy, in member order."""
    d = tmp_path / 'unpacked'
    d.mkdir()
    for i, name in enumerate(names):
        shutil.copyfile(files[name], d / ('%d.vhd' % i))
    return d


def test_vhdutil_chain_reverse_named_directory(vhdutil, pyvhdi, tmp_path,
                                               out_dir):
    """An unpacked reverse-named archive, the user naming ``0.vhd`` (the
    leaf by the convention, the base here): the ids order the members as
    in the archive, a warning names the order found, and the disk is what
    pyvhdi (libvhdi) reads through the vhd-util chain, not the base alone.
    """
    files, row = vhdutil
    d = _numbered_dir(tmp_path, files, ['l0.vhd', 'l1.vhd', 'l2.vhd'])
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', d / '0.vhd', out)
    assert res.returncode == 0, cli.describe(res)
    assert os.path.getsize(out) == row['size']
    assert ig.sha256_file(out) == row['sha256']
    assert res.stderr.count('\n') == 1, res.stderr
    assert 'leaf to base: 2.vhd, 1.vhd, 0.vhd' in res.stderr
    assert 'contradict' in res.stderr
    doc = cli.info(d / '0.vhd')
    truth = ig.pyvhdi_meta(files['l2.vhd'], files['l1.vhd'], files['l0.vhd'])
    assert [basename(e['name']) for e in doc['chain']] == [
        '2.vhd', '1.vhd', '0.vhd']
    assert [e['id'].lower() for e in doc['chain']] == [
        t['id'] for t in truth]
    # Naming the leaf (2.vhd) reads the same chain, by id, silently.
    res = cli.run_any2kvm('convert', d / '2.vhd', out_dir / 'leaf.raw')
    assert res.returncode == 0, cli.describe(res)
    assert ig.sha256_file(out_dir / 'leaf.raw') == row['sha256']
    assert res.stderr == ''


def test_vhdutil_chain_conventional_directory(vhdutil, tmp_path, out_dir):
    """Named by the convention (``0.vhd`` the leaf): no warning."""
    files, row = vhdutil
    d = _numbered_dir(tmp_path, files, ['l2.vhd', 'l1.vhd', 'l0.vhd'])
    res = cli.run_any2kvm('convert', d / '0.vhd', out_dir / 'disk.raw')
    assert res.returncode == 0, cli.describe(res)
    assert ig.sha256_file(out_dir / 'disk.raw') == row['sha256']
    assert res.stderr == ''


@pytest.mark.parametrize('names,problem', [
    (['l0.vhd', 'l1.vhd', 'l1.vhd'], 'same unique id'),
    (['l0.vhd', 'l1.vhd', 'l2.vhd', 'l0.vhd'], 'same unique id'),
    (['l0.vhd', 'l1.vhd', None, 'l2.vhd'], '2.vhd is missing'),
], ids=['child-twice', 'base-twice', 'gap'])
def test_reverse_named_directory_ambiguous(vhdutil, names, problem, tmp_path,
                                           out_dir):
    """A reverse-named directory the ids do not order is refused, as the
    archive would be, rather than converting ``0.vhd`` alone."""
    files, _row = vhdutil
    d = tmp_path / 'unpacked'
    d.mkdir()
    for i, name in enumerate(names):
        if name:
            shutil.copyfile(files[name], d / ('%d.vhd' % i))
    out = out_dir / 'disk.raw'
    cli.assert_refused(cli.run_any2kvm('convert', d / '0.vhd', out), out,
                       names=[str(d)], problem=problem)


@pytest.mark.parametrize('compression', COMPRESSIONS, ids=['gz', 'plain'])
def test_complex_chain_reverse_named(orphan_complex, compression, tmp_path,
                                     out_dir):
    chain, leaf_first = orphan_complex
    tar = tmp_path / archive_name(compression)
    ig.make_tar(tar, ig.xenserver_members(leaf_first[::-1], './',
                                          'shuffled', seed=4), compression)
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == chain.leaf.model.sha256()


@pytest.mark.parametrize('compression', COMPRESSIONS, ids=['gz', 'plain'])
def test_reverse_named_checked_against_qemu(fattools, qemu_img, compression,
                                            tmp_path, out_dir):
    """The same writes made as a qcow2 chain by qemu-io, flattened by
    qemu-img (which cannot follow VHD parents), and as a FATtools VHD chain
    named against the convention: both read the same."""
    qemu_io = shutil.which('qemu-io')
    if not qemu_io:
        tools.missing_tool('qemu-io not found (Debian package qemu-utils)')
    size = 8 * ig.MiB
    writes = [[(0, ig.pattern(11, 3 * ig.MiB)),
               (5 * ig.MiB, ig.pattern(12, 512 * ig.KiB))],
              [(ig.MiB + 4096, ig.pattern(13, 70144))],
              [(7 * ig.MiB, ig.pattern(14, ig.MiB)),
               (512, ig.pattern(15, 1536))]]
    c = ig.FatChain(tmp_path / 'gen', size)
    c.base('b.vhd', writes[0])
    c.child('c1.vhd', writes[1])
    c.child('c2.vhd', writes[2])
    qcow = []
    for i, layer_writes in enumerate(writes):
        q = tmp_path / ('q%d.qcow2' % i)
        cmd = [qemu_img, 'create', '-q', '-f', 'qcow2']
        if qcow:
            cmd += ['-b', str(qcow[-1]), '-F', 'qcow2']
        subprocess.run(cmd + [str(q), str(size)], check=True, timeout=120)
        for n, (off, data) in enumerate(layer_writes):
            blob = tmp_path / ('w%d-%d' % (i, n))
            blob.write_bytes(data)
            subprocess.run([qemu_io, '-f', 'qcow2', '-c',
                            'write -q -s %s %d %d' % (blob, off, len(data)),
                            str(q)], check=True, timeout=120,
                           capture_output=True)
        qcow.append(q)
    flat = tmp_path / 'qemu.raw'
    subprocess.run([qemu_img, 'convert', '-f', 'qcow2', '-O', 'raw',
                    str(qcow[-1]), str(flat)], check=True, timeout=120)
    tar = tmp_path / archive_name(compression)
    # Base first: 0.vhd the base, 2.vhd the leaf; packed leaf first.
    ig.make_tar(tar, ig.xenserver_members([lay.path for lay in c.layers],
                                          '', 'base-first'), compression)
    out = cli.convert(tar, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == ig.sha256_file(flat)
    assert ig.sha256_file(out) == c.model.sha256()
