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

"""Differencing VHD chains written by FATtools, judged against the model.

The chains (see ``vhdchains.build_simple_chain``/``build_complex_chain``) are
written through FATtools' own ``Image.write``; the same bytes go into a flat
bytearray (the model).  libvhdi is asked as a second opinion only on the
simple chain (whole bitmap bytes, equal sizes).
"""

import math
import os
import shutil

import pytest

from tests.lib import cli
from tests.lib.cli import basename
from tests.lib import imagegen as ig
from tests.lib import vhdchains

MiB, KiB = ig.MiB, ig.KiB


def chain_fixture(request, which):
    return request.getfixturevalue('%s_chain' % which)


# --- the oracles agree with the model (checks the test data, not the engine)

def test_libvhdi_agrees_with_model_on_simple_chain(simple_chain, pyvhdi):
    for i, layer in enumerate(simple_chain.layers):
        paths = simple_chain.paths()[:i + 1][::-1]
        assert pyvhdi(paths) == (layer.size, layer.model.sha256()), layer.name


@pytest.mark.parametrize('which', ['simple', 'complex'])
def test_fattools_reader_agrees_with_model(request, which):
    from FATtools import vhdutils
    chain = chain_fixture(request, which)
    for layer in chain.layers:
        img = vhdutils.Image(layer.path)
        try:
            img.seek(0)
            data = img.read(img.size)
        finally:
            img.close()
        assert ig.sha256_bytes(bytes(data)) == layer.model.sha256()


def test_complex_chain_has_partial_bitmap_bytes(complex_chain):
    """The complex chain really exercises partial sector-bitmap bytes."""
    leaf_parent = complex_chain.layers[1].path
    meta = ig.read_vhd(leaf_parent)
    entry = meta['bat'][0]
    assert entry != 0xFFFFFFFF
    with open(leaf_parent, 'rb') as f:
        f.seek(entry * ig.SECTOR)
        bitmap = f.read(2)
    assert bitmap[0] not in (0, 0xFF) and bitmap[1] not in (0, 0xFF)


# --- conversion --------------------------------------------------------------

@pytest.mark.parametrize('level', [0, 1, 2], ids=['l0', 'l1', 'l2'])
@pytest.mark.parametrize('which', ['simple', 'complex'])
def test_convert_chain_level(request, which, level, out_dir):
    chain = chain_fixture(request, which)
    layer = chain.layers[level]
    out = cli.convert(layer.path, out_dir / 'disk.raw')
    assert os.path.getsize(out) == layer.size
    assert ig.sha256_file(out) == layer.model.sha256()


@pytest.mark.parametrize('which', ['simple', 'complex'])
def test_convert_chain_output_is_sparse(request, which, out_dir):
    chain = chain_fixture(request, which)
    out = cli.convert(chain.leaf.path, out_dir / 'disk.raw')
    zeros = chain.leaf.model.zero_ranges(granularity=256 * KiB)
    assert zeros
    assert ig.hole_violations(out, zeros) == []
    data_bytes = len(chain.leaf.model.data) - sum(e - s for s, e in zeros)
    assert ig.allocated_bytes(out) <= data_bytes + 256 * KiB


@pytest.mark.parametrize('which', ['simple', 'complex'])
def test_parents_found_by_unique_id_under_other_names(fattools, which,
                                                      tmp_path, out_dir):
    """Parents renamed and moved: only their unique ids lead to them."""
    build = {'simple': vhdchains.build_simple_chain,
             'complex': vhdchains.build_complex_chain}[which]
    chain = build(tmp_path / 'gen')
    paths = vhdchains.relocate(chain, tmp_path / 'vm',
                               ['base-disk.vhd', 'snapshot-a.vhd',
                                'leaf.vhd'])
    shutil.rmtree(tmp_path / 'gen')
    out = cli.convert(paths[-1], out_dir / 'disk.raw')
    assert ig.sha256_file(out) == chain.leaf.model.sha256()


def test_unrelated_files_beside_the_chain_are_ignored(fattools, tmp_path,
                                                      out_dir):
    chain = vhdchains.build_simple_chain(tmp_path / 'vm')
    vm = tmp_path / 'vm'
    (vm / 'notes.txt').write_text('not a disk\n')
    (vm / 'subdir').mkdir()
    other = ig.FatChain(tmp_path / 'other', 4 * MiB)
    other.base('unrelated.vhd', [(0, ig.pattern(77, 4096))])
    shutil.copy(other.leaf.path, vm / 'unrelated.vhd')
    out = cli.convert(chain.leaf.path, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == chain.leaf.model.sha256()


def test_source_directory_is_not_modified(simple_chain, out_dir):
    d = os.path.dirname(simple_chain.leaf.path)
    before = {n: ig.sha256_file(os.path.join(d, n)) for n in os.listdir(d)}
    cli.convert(simple_chain.leaf.path, out_dir / 'disk.raw')
    after = {n: ig.sha256_file(os.path.join(d, n)) for n in os.listdir(d)}
    assert before == after


# --- info --------------------------------------------------------------------

@pytest.mark.parametrize('which', ['simple', 'complex'])
def test_info_chain(request, which, pyvhdi):
    chain = chain_fixture(request, which)
    leaf_first = chain.layers[::-1]
    truth = ig.pyvhdi_meta(*[layer.path for layer in leaf_first])
    doc = cli.info(chain.leaf.path)
    assert doc['container'] == 'file'
    assert doc['format'] == 'vhd'
    assert os.path.basename(doc['source']) == chain.leaf.name
    assert doc['virtual_size'] == chain.size
    assert [basename(e['name']) for e in doc['chain']] == [
        layer.name for layer in leaf_first]
    assert [e['subformat'] for e in doc['chain']] == [
        'differencing', 'differencing', 'dynamic']
    assert [e['id'].lower() for e in doc['chain']] == [
        t['id'] for t in truth]
    assert [e['parent_id'] and e['parent_id'].lower()
            for e in doc['chain']] == [t['parent_id'] for t in truth]
    # and the links close: each parent_id is the next layer's id
    for child, parent in zip(doc['chain'], doc['chain'][1:]):
        assert child['parent_id'].lower() == parent['id'].lower()
    for e in doc['chain']:
        assert e['format'] == 'vhd'
        assert e['virtual_size'] == chain.size
        assert e['creator'] == 'Py'
        assert isinstance(e['allocated_bytes'], int)
        assert 0 < e['allocated_bytes'] <= math.ceil(
            chain.size / ig.VHD_BLOCK) * ig.VHD_BLOCK


def test_info_empty_child_allocates_nothing(fattools, tmp_path):
    c = ig.FatChain(tmp_path, 4 * MiB)
    c.base('base.vhd', [(0, ig.pattern(5, 64 * KiB))])
    c.child('child.vhd')
    doc = cli.info(c.leaf.path)
    assert [e['allocated_bytes'] for e in doc['chain']][0] == 0
    assert doc['chain'][1]['allocated_bytes'] > 0


def test_info_text_format(simple_chain):
    res = cli.run_any2kvm('info', simple_chain.leaf.path, '--format', 'text')
    assert res.returncode == 0, cli.describe(res)
    assert 'l2.vhd' in res.stdout and 'l0.vhd' in res.stdout


# --- grown children ----------------------------------------------------------
#
# FATtools cannot make a differencing VHD larger than its parent: grown
# children are FATtools' output, patched.  Construction A, the "shrunk
# parent", is vhdchains.build_grown_shrunk_parent (documented there); B is
# made here:
#
# B) "patched child": FATtools writes an 8 MiB chain; then the CHILD's
#    footer current size is raised to 12 MiB (both copies, geometry for the
#    new size, checksums fixed; original size left at 8 MiB like a real
#    resize) and its max_table_entries to 6: FATtools' BAT occupies a whole
#    sector (128 entries, unused ones 0xFFFFFFFF), so the table has room.
#    Expected: the chain content, then zeros up to 12 MiB.
#
# libvhdi 20210425 sizes layers by the original size and cannot read through
# grown children: only the model is used.

GROW_S, GROW_L = vhdchains.GROW_S, vhdchains.GROW_L


def test_grown_child_over_shrunk_parent(fattools, tmp_path, out_dir):
    c, base_model, child_model = vhdchains.build_grown_shrunk_parent(
        tmp_path / 'vm')
    # the patch took: the base is now 7 MiB, the child 16 MiB
    assert ig.read_vhd(c.layers[0].path)['footer']['current_size'] == GROW_S
    assert ig.read_vhd(c.leaf.path)['footer']['current_size'] == GROW_L

    out = cli.convert(c.leaf.path, out_dir / 'leaf.raw')
    assert os.path.getsize(out) == GROW_L
    data = ig.read_range(out, 0, GROW_L)
    # the specific promises, then the whole image
    assert data[GROW_S:GROW_S + 256 * KiB] == bytes(256 * KiB), (
        "parent data past the parent's size leaked into the child")
    assert data[9 * MiB:10 * MiB] == bytes(MiB), (
        "parent BAT slot past max_table_entries was read")
    assert data[12 * MiB:13 * MiB] == bytes(child_model.data[12 * MiB:
                                                             13 * MiB])
    assert ig.sha256_bytes(data) == child_model.sha256()


def test_shrunk_parent_alone(fattools, tmp_path, out_dir):
    c, base_model, _ = vhdchains.build_grown_shrunk_parent(tmp_path / 'vm')
    out = cli.convert(c.layers[0].path, out_dir / 'base.raw')
    assert os.path.getsize(out) == GROW_S
    assert ig.sha256_file(out) == base_model.sha256()


def test_info_grown_child(fattools, tmp_path):
    c, _, _ = vhdchains.build_grown_shrunk_parent(tmp_path / 'vm')
    doc = cli.info(c.leaf.path)
    assert doc['virtual_size'] == GROW_L
    assert [e['virtual_size'] for e in doc['chain']] == [GROW_L, GROW_S]


def test_grown_child_by_patched_footer(fattools, tmp_path, out_dir):
    size, grown = 8 * MiB, 12 * MiB
    p = ig.pattern
    c = ig.FatChain(tmp_path / 'vm', size)
    c.base('base.vhd', [(0, p(301, 3 * MiB)), (6 * MiB, p(302, 2 * MiB))])
    c.child('child.vhd', [(2 * MiB + 5, p(303, 10000)),
                          (7 * MiB, bytes(512 * KiB)),
                          (size - 512, p(304, 512))])
    child = c.leaf.path
    meta = ig.read_vhd(child)
    bat_room = (meta['locators'][0]['offset'] -
                meta['header']['table_offset']) // 4
    entries = math.ceil(grown / ig.VHD_BLOCK)
    assert bat_room >= entries, 'FATtools BAT has no room to grow'
    with open(child, 'rb') as f:     # the slots we expose are unused
        f.seek(meta['header']['table_offset'] + 4 * len(meta['bat']))
        assert f.read(4 * (entries - len(meta['bat']))) == b'\xff' * 4 * (
            entries - len(meta['bat']))
    ig.patch_footer(child, current_size=grown,
                    geometry=ig.chs_geometry(grown))
    ig.patch_header(child, max_table_entries=entries)

    expected = c.model.copy()
    expected.resize(grown)
    out = cli.convert(child, out_dir / 'disk.raw')
    assert os.path.getsize(out) == grown
    assert ig.sha256_file(out) == expected.sha256()
    assert ig.hole_violations(out, [(size, grown)]) == []


# --- other shapes ------------------------------------------------------------

@pytest.mark.parametrize('block', [512 * KiB, 8 * MiB],
                         ids=['512KiB', '8MiB'])
def test_non_default_block_size_chain(fattools, block, tmp_path, out_dir):
    """FATtools chains with 512 KiB blocks (1-sector bitmap, mostly padding)
    and 8 MiB blocks (4-sector bitmap), partial bitmap bytes included."""
    p = ig.pattern
    size = 16 * MiB + 3 * 512
    c = ig.FatChain(tmp_path / 'vm', size, block=block)
    c.base('l0.vhd', [(0, p(801, 3 * MiB)), (9 * MiB, p(802, 1 * MiB)),
                      (size - 1000, p(803, 1000))])
    c.child('l1.vhd', [(3 * 512, p(804, 2 * 512)),
                       (block + 7 * 512, p(805, 512)),
                       (9 * MiB + 4 * KiB, bytes(20 * KiB)),
                       (12 * MiB + 11, p(806, 3333))])
    c.child('l2.vhd', [(4 * 512, bytes(512)),
                       (8 * MiB - 512, p(807, 1024)),   # across 8 MiB
                       (size - 512, bytes(512))])
    assert ig.read_vhd(c.leaf.path)['header']['block_size'] == block
    for layer in c.layers:
        out = cli.convert(layer.path, out_dir / (layer.name + '.raw'))
        assert os.path.getsize(out) == size
        assert ig.sha256_file(out) == layer.model.sha256(), layer.name


def test_differencing_over_fixed_parent(fattools, tmp_path, out_dir):
    """A differencing disk whose parent is a FIXED VHD.

    FATtools can only make a child of a dynamic disk, so the child is made
    (and written) over a dynamic twin holding the same bytes as the fixed
    disk; then only the child's parent link (id, timestamp, name, locators,
    header checksum) is pointed at the fixed disk and the twin is deleted.
    """
    p = ig.pattern
    size = 6 * MiB
    base_writes = [(0, p(901, 1 * MiB)), (3 * MiB + 512, p(902, 4000))]
    fixed = ig.FatChain(tmp_path / 'vm', size)
    fixed.base('base-fixed.vhd', base_writes, kind='fixed')
    c = ig.FatChain(tmp_path / 'vm', size)
    c.base('twin.vhd', base_writes)
    c.child('child.vhd', [(5 * 512, p(903, 3 * 512)),
                          (3 * MiB, bytes(8 * KiB)),
                          (5 * MiB + 3, p(904, 600))])
    assert fixed.model.sha256() == c.layers[0].model.sha256()
    ig.relink(c.leaf.path, fixed.leaf.path)
    os.unlink(c.layers[0].path)
    out = cli.convert(c.leaf.path, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == c.leaf.model.sha256()
    doc = cli.info(c.leaf.path)
    assert [e['subformat'] for e in doc['chain']] == ['differencing',
                                                      'fixed']


def test_child_smaller_than_parent(fattools, tmp_path, out_dir):
    """The output has the LEAF's size, even when a parent is larger.

    FATtools writes an 8 MiB chain; the child's footer current size is then
    patched down to 5 MiB + 1 KiB (both copies, geometry, checksums).  Its
    BAT keeps 4 entries: covering more than the disk is harmless.
    """
    p = ig.pattern
    size, small = 8 * MiB, 5 * MiB + 1024
    c = ig.FatChain(tmp_path / 'vm', size)
    c.base('base.vhd', [(0, p(951, 8 * MiB))])
    c.child('child.vhd', [(4 * MiB, p(952, 2 * MiB)), (1 * MiB, bytes(512))])
    ig.patch_footer(c.leaf.path, current_size=small,
                    geometry=ig.chs_geometry(small))
    out = cli.convert(c.leaf.path, out_dir / 'disk.raw')
    assert os.path.getsize(out) == small
    assert ig.sha256_file(out) == ig.sha256_bytes(bytes(c.model.data[:small]))


def test_parent_scan_skips_broken_siblings(fattools, tmp_path, out_dir):
    """Renamed parents must be found by id although the directory also holds
    a corrupt VHD (bad header checksum), random bytes named ``.vhd``, an
    empty ``.vhd`` and a dangling symlink."""
    chain = vhdchains.build_simple_chain(tmp_path / 'gen')
    paths = vhdchains.relocate(chain, tmp_path / 'vm',
                               ['base-x.vhd', 'mid-y.vhd', 'leaf.vhd'])
    vm = tmp_path / 'vm'
    broken = vm / 'broken.vhd'
    shutil.copyfile(paths[0], broken)
    ig.set_uuid(broken)
    ig.patch_header(broken, checksum=1)
    (vm / 'junk.vhd').write_bytes(ig.pattern(55, 100000))
    (vm / 'empty.vhd').write_bytes(b'')
    os.symlink(tmp_path / 'nonexistent', vm / 'dangling.vhd')
    out = cli.convert(paths[-1], out_dir / 'disk.raw')
    assert ig.sha256_file(out) == chain.leaf.model.sha256()
