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

"""VHDs written by Hyper-V, Virtual PC, Disk2vhd, Windows, qemu-img,
FATtools and XenServer's vhd-util, from the shared corpus.

Expected values are the corpus' ``expected-hashes.json`` rows (libvhdi with
explicit parents; it agrees with qemu and dissect on every file used here,
and with the write model on the chains).  Files are decompressed into pytest
temporary directories, never into the repository.
"""

import os

import pytest

from tests.lib import cli
from tests.lib import imagegen as ig

BIG_SIZE = 136365211648     # 127 GiB, footer current size

SINGLE = [
    # (stored file, member or None, image name in expected-hashes.json)
    ('upstream/dissect-hypervisor/fixed.vhd.gz', None, 'fixed.vhd'),
    ('upstream/dissect-hypervisor/dynamic.vhd.gz', None, 'dynamic.vhd'),
    ('upstream/qemu/d2v-zerofilled.vhd.bz2', None, 'd2v-zerofilled.vhd'),
    ('upstream/dfvfs/ext2.vhd', None, 'ext2.vhd'),
    ('generated/qemu-img-7.2.tar.gz', 'vpc-dynamic.vhd', 'vpc-dynamic.vhd'),
    ('generated/qemu-img-7.2.tar.gz', 'vpc-dynamic-force.vhd',
     'vpc-dynamic-force.vhd'),
    ('generated/qemu-img-7.2.tar.gz', 'vpc-fixed.vhd', 'vpc-fixed.vhd'),
    ('generated/qemu-img-7.2.tar.gz', 'vpc-fixed-force.vhd',
     'vpc-fixed-force.vhd'),
    ('generated/fattools-chains.tar.gz', 'fixed.vhd', 'fixed.vhd'),
    ('generated/fattools-chains.tar.gz', 'l0.vhd', 'l0.vhd'),
    ('generated/fattools-chains.tar.gz', 'l1.vhd', 'l1.vhd'),
    ('generated/fattools-chains.tar.gz', 'l2.vhd', 'l2.vhd'),
]
FATTOOLS_VHDS = ('fixed.vhd', 'l0.vhd', 'l1.vhd', 'l2.vhd')


def materialise(rel, member, corpus, corpus_file, corpus_tar):
    if member is not None:
        only = FATTOOLS_VHDS if 'fattools' in rel else None
        return corpus_tar(rel, only)[member]
    if rel.endswith(('.gz', '.bz2')):
        return corpus_file(rel)
    return corpus / rel          # plain file: read it where it is (r/o)


@pytest.mark.parametrize('rel,member,image', SINGLE,
                         ids=[s[2] if s[1] is None else
                              '%s:%s' % (os.path.basename(s[0]), s[1])
                              for s in SINGLE])
def test_corpus_vhd(rel, member, image, corpus, corpus_file, corpus_tar,
                    expected, out_dir):
    row = ig.expected_row(expected, rel, image, 'pyvhdi')
    src = materialise(rel, member, corpus, corpus_file, corpus_tar)
    out = cli.convert(src, out_dir / 'disk.raw')
    assert os.path.getsize(out) == row['size']
    assert ig.sha256_file(out) == row['sha256']


def test_fattools_corpus_chain_with_other_formats_beside(
        corpus_tar, expected, out_dir):
    """The whole tarball extracted: VHDX and VMDK files lie beside l2.vhd."""
    files = corpus_tar('generated/fattools-chains.tar.gz')
    assert 'l0.vhdx' in files and 'l0.vmdk' in files
    row = ig.expected_row(expected, 'generated/fattools-chains.tar.gz',
                          'l2.vhd', 'pyvhdi')
    out = cli.convert(files['l2.vhd'], out_dir / 'disk.raw')
    assert ig.sha256_file(out) == row['sha256']


@pytest.mark.parametrize('rel,creator', [
    ('upstream/qemu/hyperv2012r2-dynamic.vhd.bz2', 'win'),
    ('upstream/qemu/virtualpc-dynamic.vhd.bz2', 'vpc'),
], ids=['hyperv2012r2', 'virtualpc'])
def test_big_empty_vhd_is_all_hole(rel, creator, corpus_file, expected,
                                   out_dir):
    """127 GiB of zeros: too big to hash, so prove it is all hole.

    Holes read as zeros, so "no data extent at all" plus the right size is
    the same statement as the zero hash of the oracles.
    """
    image = os.path.basename(rel)[:-4]
    row = ig.expected_row(expected, rel, image, 'pyvhdi')
    assert row['size'] == BIG_SIZE
    src = corpus_file(rel)
    res = cli.run_any2kvm('convert', src, out_dir / 'disk.raw', timeout=120)
    assert res.returncode == 0, cli.describe(res)
    out = out_dir / 'disk.raw'
    assert os.path.getsize(out) == BIG_SIZE
    assert ig.allocated_bytes(out) <= 1 * ig.MiB
    for start, end in ig.data_ranges(out):      # tolerate tiny zero extents
        assert end - start <= 1 * ig.MiB
        assert not any(ig.read_range(out, start, end - start))

    doc = cli.info(src)
    assert doc['virtual_size'] == BIG_SIZE
    assert doc['chain'][0]['subformat'] == 'dynamic'
    assert doc['chain'][0]['creator'] == creator


@pytest.mark.parametrize('rel,member,creator,subformat', [
    ('upstream/dissect-hypervisor/fixed.vhd.gz', None, 'win', 'fixed'),
    ('upstream/dissect-hypervisor/dynamic.vhd.gz', None, 'win', 'dynamic'),
    ('upstream/qemu/d2v-zerofilled.vhd.bz2', None, 'd2v', 'dynamic'),
    ('upstream/dfvfs/ext2.vhd', None, 'qemu', 'dynamic'),
    ('generated/fattools-chains.tar.gz', 'fixed.vhd', 'Py', 'fixed'),
], ids=['dissect-fixed', 'dissect-dynamic', 'd2v', 'dfvfs-ext2',
        'fattools-fixed'])
def test_info_corpus(rel, member, creator, subformat, corpus, corpus_file,
                     corpus_tar, pyvhdi):
    src = materialise(rel, member, corpus, corpus_file, corpus_tar)
    truth = ig.pyvhdi_meta(src)[0]
    doc = cli.info(src)
    assert doc['virtual_size'] == truth['media_size']
    (layer,) = doc['chain']
    assert layer['creator'] == creator
    assert layer['subformat'] == subformat
    assert layer['id'].lower() == truth['id']
    assert layer['parent_id'] is None


# --- corpus files that must be refused ---------------------------------------

@pytest.mark.parametrize('name', ['image.vhd', 'image-differential.vhd'])
def test_dfvfs_bad_checksums_refused(name, corpus, out_dir):
    """Hand-edited files with wrong footer and header checksums.

    qemu refuses them; libvhdi and dissect ignore checksums.  Policy: refuse.
    """
    src = corpus / 'upstream' / 'dfvfs' / name
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out)
    cli.assert_refused(res, out, names=[name], problem=r'checksum')


def test_dfvfs_differencing_without_parent_refused(corpus, out_dir):
    """fat-differential.vhd: its parent fat-parent.vhd is not available."""
    src = corpus / 'upstream' / 'dfvfs' / 'fat-differential.vhd'
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out)
    cli.assert_refused(res, out,
                       names=['fat-differential.vhd', 'fat-parent.vhd'],
                       problem=r'parent')


def test_zero_filled_allocated_blocks_become_holes(corpus_file, expected,
                                                   out_dir):
    """d2v-zerofilled.vhd: every block allocated, every byte zero."""
    rel = 'upstream/qemu/d2v-zerofilled.vhd.bz2'
    row = ig.expected_row(expected, rel, 'd2v-zerofilled.vhd', 'pyvhdi')
    assert row['sha256'] == ig.sha256_zeros(row['size'])
    src = corpus_file(rel)
    assert all(e != 0xFFFFFFFF for e in ig.read_vhd(src)['bat'])
    out = cli.convert(src, out_dir / 'disk.raw')
    assert os.path.getsize(out) == row['size']
    assert ig.allocated_bytes(out) <= 256 * ig.KiB
