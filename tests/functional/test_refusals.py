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

"""Bad input must be refused cleanly.

Every case: exit status 1, exactly one stderr line ``any2kvm: error: ...``
naming the file and the problem, no traceback, no output file and nothing
else left in the output's directory.

Corrupt inputs are made by patching bytes of images written by qemu-img or
FATtools.  Where a test wants a *later* check to fire (BAT, block size,
parent links), the checksums of the patched structures are fixed so the
earlier checks pass.
"""

import os
import shutil

import pytest

from tests.lib import blockdev
from tests.lib import cli
from tests.lib import imagegen as ig
from tests.lib import vhdchains

MiB, KiB = ig.MiB, ig.KiB

P_CHECKSUM = r'checksum'
P_OUTSIDE = r'outside|beyond|past|exceed|truncat|end of|too (short|small)'
P_OVERLAP = r'overlap|duplicat|same|twice|more than once|shared|collid'
P_PARENT = r'parent'
P_LINK = r'link|unsafe|regular|type|not a (regular )?file'
# an extra, unexpected member may also be refused for being unexpected
P_EXTRA = r'|unexpected|unknown|not allowed|invalid|unsupported'


def refuse(src, out_dir, names=None, problem=None, *extra):
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', src, out, *extra)
    return cli.assert_refused(res, out,
                              names=names or [os.path.basename(str(src))],
                              problem=problem)


# --- single files ------------------------------------------------------------

@pytest.fixture
def qemu_dynamic(qemu_img, tmp_path):
    """6 MiB dynamic VHD by qemu-img: blocks 0 and 1 allocated, 2 not."""
    raw = tmp_path / 'src.raw'
    ig.write_raw(raw, 6 * MiB, [
        (0, ig.pattern(501, 1 * MiB)),
        (2 * MiB + 4 * KiB, ig.pattern(502, 64 * KiB))])
    d = tmp_path / 'in'
    d.mkdir()
    vhd = d / 'disk.vhd'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'vpc', '-o',
                'subformat=dynamic,force_size=on', raw, vhd)
    meta = ig.read_vhd(vhd)
    allocated = [i for i, e in enumerate(meta['bat']) if e != 0xFFFFFFFF]
    assert allocated == [0, 1], meta['bat']
    return vhd


@pytest.fixture
def qemu_fixed(qemu_img, tmp_path):
    raw = tmp_path / 'src-fixed.raw'
    ig.write_raw(raw, 4 * MiB, [(0, ig.pattern(503, 64 * KiB))])
    d = tmp_path / 'in-fixed'
    d.mkdir()
    vhd = d / 'fixed.vhd'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'vpc', '-o',
                'subformat=fixed,force_size=on', raw, vhd)
    return vhd


def test_sanity_uncorrupted_inputs_convert(qemu_dynamic, qemu_fixed, out_dir):
    """The images the refusals start from are fine before patching."""
    cli.convert(qemu_dynamic, out_dir / 'a.raw')
    cli.convert(qemu_fixed, out_dir / 'b.raw')


def test_footer_checksum(qemu_dynamic, out_dir):
    bad = ig.read_vhd(qemu_dynamic)['footer']['checksum'] ^ 0x10
    ig.patch_footer(qemu_dynamic, checksum=bad)        # both copies
    refuse(qemu_dynamic, out_dir, problem=P_CHECKSUM)


def test_footer_checksum_wrong_field(qemu_dynamic, out_dir):
    """A covered field changed, checksum left stale (both copies)."""
    size = ig.read_vhd(qemu_dynamic)['footer']['current_size']
    ig.patch_footer(qemu_dynamic, fix_checksum=False,
                    current_size=size - 512)
    refuse(qemu_dynamic, out_dir, problem=P_CHECKSUM)


def test_fixed_footer_checksum(qemu_fixed, out_dir):
    bad = ig.read_vhd(qemu_fixed)['footer']['checksum'] ^ 0x01
    ig.patch_footer(qemu_fixed, checksum=bad)
    refuse(qemu_fixed, out_dir, problem=P_CHECKSUM)


def test_dynamic_header_checksum(qemu_dynamic, out_dir):
    bad = ig.read_vhd(qemu_dynamic)['header']['checksum'] ^ 0x100
    ig.patch_header(qemu_dynamic, checksum=bad)
    refuse(qemu_dynamic, out_dir, problem=P_CHECKSUM)


def test_bat_entry_outside_file(qemu_dynamic, out_dir):
    size = os.path.getsize(qemu_dynamic)
    ig.set_bat_entry(qemu_dynamic, 1, size // ig.SECTOR + 64)
    refuse(qemu_dynamic, out_dir, problem=P_OUTSIDE)


def test_bat_entry_of_unused_block_outside_file(qemu_dynamic, out_dir):
    """Block 2 was never written; its entry now points far past the end."""
    ig.set_bat_entry(qemu_dynamic, 2, 0xFFFFFF00)
    refuse(qemu_dynamic, out_dir, problem=P_OUTSIDE)


def test_bat_entry_overlapping_footer(qemu_dynamic, out_dir):
    """The block (bitmap + 2 MiB) would run over the trailing footer."""
    size = os.path.getsize(qemu_dynamic)
    ig.set_bat_entry(qemu_dynamic, 2, (size - 512 - 1 * MiB) // ig.SECTOR)
    refuse(qemu_dynamic, out_dir,
           problem=P_OUTSIDE + '|' + P_OVERLAP + '|footer')


def test_two_bat_entries_same_block(qemu_dynamic, out_dir):
    meta = ig.read_vhd(qemu_dynamic)
    ig.set_bat_entry(qemu_dynamic, 1, meta['bat'][0])
    refuse(qemu_dynamic, out_dir, problem=P_OVERLAP)


def test_two_bat_entries_partly_overlapping(qemu_dynamic, out_dir):
    meta = ig.read_vhd(qemu_dynamic)
    ig.set_bat_entry(qemu_dynamic, 1, meta['bat'][0] + 8)   # 4 KiB later
    refuse(qemu_dynamic, out_dir, problem=P_OVERLAP)


def test_bat_entry_overlapping_headers(qemu_dynamic, out_dir):
    meta = ig.read_vhd(qemu_dynamic)
    sector = meta['header']['table_offset'] // ig.SECTOR   # the BAT itself
    ig.set_bat_entry(qemu_dynamic, 2, sector)
    refuse(qemu_dynamic, out_dir,
           problem=P_OVERLAP + '|header|metadata|BAT|table|reserved')


def test_truncated_dynamic(qemu_dynamic, out_dir):
    size = os.path.getsize(qemu_dynamic)
    with open(qemu_dynamic, 'r+b') as f:
        f.truncate(size - 512 - 1 * MiB)          # mid last block, no footer
    refuse(qemu_dynamic, out_dir,
           problem=P_OUTSIDE + '|short|footer|size|cookie|not a')


def test_truncated_keeping_footer(qemu_dynamic, out_dir):
    """Half of the last block cut out, the footer put back at the end."""
    with open(qemu_dynamic, 'r+b') as f:
        f.seek(-512, 2)
        footer = f.read(512)
        f.seek(-512 - 1 * MiB, 2)
        f.write(footer)
        f.truncate()
    refuse(qemu_dynamic, out_dir, problem=P_OUTSIDE + '|short|size')


def test_truncated_fixed(qemu_fixed, out_dir):
    with open(qemu_fixed, 'r+b') as f:
        f.seek(-512, 2)
        footer = f.read(512)
        f.seek(1 * MiB)
        f.write(footer)              # a footer whose size is 3 MiB too big
        f.truncate()
    refuse(qemu_fixed, out_dir, problem=P_OUTSIDE + '|short|size')


@pytest.mark.parametrize('block_size', [3 * MiB, 2 * MiB + 512, 0],
                         ids=['3MiB', '2MiB+512', 'zero'])
def test_block_size_not_power_of_two(fattools, tmp_path, out_dir,
                                     block_size):
    c = ig.FatChain(tmp_path / 'in', 8 * MiB)
    c.base('disk.vhd')                               # no block allocated
    ig.patch_header(c.leaf.path, block_size=block_size)
    refuse(c.leaf.path, out_dir, problem=r'block.?size|power|zero')


def test_not_a_vhd(tmp_path, out_dir):
    junk = tmp_path / 'junk.vhd'
    junk.write_bytes(ig.pattern(9, 3 * MiB))
    refuse(junk, out_dir)


def test_empty_file(tmp_path, out_dir):
    empty = tmp_path / 'empty.vhd'
    empty.write_bytes(b'')
    refuse(empty, out_dir)


def test_missing_source(tmp_path, out_dir):
    refuse(tmp_path / 'nowhere.vhd', out_dir)


# --- chains ------------------------------------------------------------------

@pytest.fixture
def chain3(fattools, tmp_path):
    return vhdchains.build_simple_chain(tmp_path / 'vm')


def test_missing_parent(chain3, out_dir):
    os.unlink(chain3.layers[1].path)
    refuse(chain3.leaf.path, out_dir, names=['l2.vhd', 'l1.vhd'],
           problem=P_PARENT)


def test_missing_grandparent(chain3, out_dir):
    os.unlink(chain3.layers[0].path)
    refuse(chain3.leaf.path, out_dir, names=['l2.vhd', 'l1.vhd', 'l0.vhd'],
           problem=P_PARENT)


def test_parent_id_mismatch(fattools, tmp_path, out_dir):
    """A file by the parent's name, but with another unique id."""
    c = ig.FatChain(tmp_path / 'vm', 4 * MiB)
    c.base('l0.vhd', [(0, ig.pattern(601, 64 * KiB))])
    c.child('l1.vhd', [(4096, ig.pattern(602, 4096))])
    os.unlink(c.layers[0].path)
    impostor = ig.FatChain(tmp_path / 'other', 4 * MiB)
    impostor.base('l0.vhd', [(0, ig.pattern(603, 64 * KiB))])
    shutil.move(impostor.leaf.path, c.layers[0].path)
    assert ig.read_vhd(c.layers[0].path)['footer']['uuid'] != \
        c.layers[0].uuid
    refuse(c.leaf.path, out_dir, names=['l1.vhd', 'l0.vhd'],
           problem=P_PARENT + r'|uuid|\bid\b|identifier|match')


def _two_children(tmp_path):
    c = ig.FatChain(tmp_path / 'vm', 4 * MiB)
    base = c.base('base.vhd', [(0, ig.pattern(611, 64 * KiB))])
    a = c.child('a.vhd', [(4096, ig.pattern(612, 4096))])
    b = tmp_path / 'vm' / 'b.vhd'
    ig._vhdutils().mk_diff(str(b), base.path)
    return base.path, a.path, str(b)


def test_cycle_of_two(fattools, tmp_path, out_dir):
    base, a, b = _two_children(tmp_path)
    ig.relink(a, b)
    ig.relink(b, a)
    os.unlink(base)
    assert ig.read_vhd(a)['header']['parent_uuid'] == \
        ig.read_vhd(b)['footer']['uuid']
    assert ig.read_vhd(b)['header']['parent_uuid'] == \
        ig.read_vhd(a)['footer']['uuid']
    refuse(a, out_dir, names=['a.vhd', 'b.vhd'],
           problem=r'cycle|loop|circular|recurs|itself|twice|already')


def test_cycle_of_one(fattools, tmp_path, out_dir):
    base, a, b = _two_children(tmp_path)
    ig.relink(a, a)
    os.unlink(base)
    refuse(a, out_dir, names=['a.vhd'],
           problem=r'cycle|loop|circular|recurs|itself|twice|already')


def _deep_chain(tmp_path, depth):
    """base <- c1 <- ... <- c<depth>; c1 by FATtools, others cloned from it.

    Each clone is a byte copy of FATtools' empty child with a new unique id
    (footer, both copies, checksum fixed) relinked to the previous one
    (parent id, timestamp, name and locators, header checksum fixed).
    """
    d = tmp_path / 'deep'
    c = ig.FatChain(d, 4 * MiB)
    c.base('c0000.vhd', [(0, ig.pattern(621, 128 * KiB))])
    c.child('c0001.vhd')
    template = c.leaf.path
    prev = template
    for i in range(2, depth + 1):
        path = str(d / ('c%04d.vhd' % i))
        shutil.copyfile(template, path)
        ig.set_uuid(path)
        ig.relink(path, prev)
        prev = path
    return c.model, prev


def test_deep_but_sane_chain_converts(fattools, tmp_path, out_dir):
    """30 levels (XenServer's own chain limit) must work."""
    model, leaf = _deep_chain(tmp_path, 30)
    out = cli.convert(leaf, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == model.sha256()


def test_absurd_depth(fattools, tmp_path, out_dir):
    model, leaf = _deep_chain(tmp_path, 1000)
    refuse(leaf, out_dir, names=['c%04d.vhd' % i for i in range(1001)],
           problem=r'depth|deep|too many|long|levels|limit|layers')


@pytest.mark.parametrize('how', ['insert', 'delete'])
def test_dynamic_shifted_data_refused(qemu_dynamic, qemu_img, how, tmp_path,
                                      out_dir):
    """One byte inserted into (or cut from) block 0's data of a dynamic
    VHD qemu-img wrote, both footers intact: qemu-img still reads it, with
    block 1 one byte off; any2kvm refuses it, the length not being whole
    sectors."""
    data = qemu_dynamic.read_bytes()
    at = ig.read_vhd(qemu_dynamic)['bat'][0] * ig.SECTOR + 512 + 1000
    bad = (data[:at] + b'\x33' + data[at:] if how == 'insert'
           else data[:at] + data[at + 1:])
    qemu_dynamic.write_bytes(bad)
    shifted = tmp_path / 'qemu.raw'
    ig.qemu_img('convert', '-f', 'vpc', '-O', 'raw', qemu_dynamic, shifted)
    refuse(qemu_dynamic, out_dir, problem='whole 512-byte sectors')


SHIFT_WRITERS = {
    # qemu-img's format name, its options: small blocks/clusters, so that
    # the data spans several of them
    'vhdx': ('vhdx', 'block_size=1M'),
    'qcow2': ('qcow2', 'cluster_size=64K'),
}


def _shift_source(tmp_path, fmt):
    """(raw, image): 4 MiB, data in blocks 0..2, written by qemu-img."""
    raw = tmp_path / 'shift-src.raw'
    ig.write_raw(raw, 4 * MiB, [(0, ig.pattern(511, 3 * MiB))])
    qfmt, options = SHIFT_WRITERS[fmt]
    image = tmp_path / ('shift.' + fmt)
    ig.qemu_img('convert', '-f', 'raw', '-O', qfmt, '-o', options, raw,
                image)
    return raw, image


@pytest.mark.parametrize('how', ['insert', 'delete'])
@pytest.mark.parametrize('fmt', sorted(SHIFT_WRITERS))
def test_shifted_data_refused(fmt, how, qemu_img, tmp_path, out_dir):
    """One byte inserted into (or cut from) the first block's data of a
    VHDX or qcow2 qemu-img wrote.  Every table points at absolute
    offsets, so the later data is read one byte off: qemu-img converts it
    with exit 0 into another disk and ``qemu-img check`` finds nothing;
    any2kvm refuses it, the length not being whole sectors (a byte cut from
    a VHDX may first leave its last block past the end)."""
    raw, image = _shift_source(tmp_path, fmt)
    assert image.stat().st_size % 512 == 0
    data = image.read_bytes()
    at = data.find(ig.pattern(511, 4 * KiB)) + 300 * KiB
    assert at > 300 * KiB
    bad = (data[:at] + b'\x33' + data[at:] if how == 'insert'
           else data[:at] + data[at + 1:])
    image.write_bytes(bad)
    # the independent reader: no complaint, and another disk
    ig.qemu_img('check', '-f', SHIFT_WRITERS[fmt][0], image)
    shifted = tmp_path / 'qemu.raw'
    ig.qemu_img('convert', '-f', SHIFT_WRITERS[fmt][0], '-O', 'raw', image,
                shifted)
    assert not ig.same_content(shifted, raw)
    refuse(image, out_dir, problem=r'whole 512-byte sectors|outside|beyond')


def test_qcow2_compressed_ending_inside_a_sector_converts(qemu_img, tmp_path,
                                                          out_dir):
    """A compressed qcow2 may end inside a sector (its last compressed
    cluster's data; qemu pads to a sector, older writers need not): read,
    not taken for a shifted file."""
    raw = tmp_path / 'c.raw'
    text = b''.join(b'line %d of a compressible disk\n' % i
                    for i in range(60000))
    ig.write_raw(raw, 2 * MiB, [(0, text[:2 * MiB])])
    image = tmp_path / 'c.qcow2'
    ig.qemu_img('convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, image)
    data = image.read_bytes().rstrip(b'\0')
    assert len(data) % 512, 'the cut ends on a sector: pick other data'
    image.write_bytes(data)
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', image, out)
    assert res.returncode == 0, cli.describe(res)
    assert ig.same_content(out, raw)


def test_dynamic_shifted_member_refused_in_one_pass(pair, tmp_path,
                                                    out_dir):
    """The same in a XenServer tgz read in one pass."""
    data = bytearray(pair['1.vhd'].read_bytes())
    bad = tmp_path / '1.vhd'
    bad.write_bytes(bytes(data[:4096]) + b'\0' + bytes(data[4096:]))
    refuse_tar(tmp_path, out_dir, [member('0.vhd', pair['0.vhd']),
                                   member('1.vhd', bad)],
               problem='whole 512-byte sectors')


# --- archives ----------------------------------------------------------------

@pytest.fixture(scope='module')
def pair(fattools, tmp_path_factory):
    """A FATtools chain base <- leaf relocated as 1.vhd and 0.vhd."""
    root = tmp_path_factory.mktemp('pair')
    c = ig.FatChain(root / 'gen', 4 * MiB)
    c.base('l0.vhd', [(0, ig.pattern(701, 256 * KiB))])
    c.child('l1.vhd', [(64 * KiB, ig.pattern(702, 8 * KiB))])
    paths = vhdchains.relocate(c, root / 'store', ['1.vhd', '0.vhd'])
    return {'0.vhd': paths[1], '1.vhd': paths[0]}


def member(name, path):
    return ig.tar_member_file(name, path)


def refuse_tar(tmp_path, out_dir, members, problem, names=(),
               compression='gz'):
    tar = tmp_path / ('vdi.tgz' if compression else 'vdi.tar')
    ig.make_tar(tar, members, compression)
    return refuse(tar, out_dir, names=['vdi.tgz', 'vdi.tar'] + list(names),
                  problem=problem)


def test_sanity_pair_archive_converts(pair, tmp_path, out_dir):
    tar = tmp_path / 'vdi.tgz'
    ig.make_tar(tar, [member('0.vhd', pair['0.vhd']),
                      member('1.vhd', pair['1.vhd'])], 'gz')
    cli.convert(tar, out_dir / 'disk.raw')


@pytest.mark.parametrize('where', ['chain', 'extra'])
def test_tar_symlink_member(pair, tmp_path, out_dir, where):
    m = [member('0.vhd', pair['0.vhd'])]
    if where == 'chain':
        m.append({'name': '1.vhd', 'type': 'symlink',
                  'link': str(pair['1.vhd'])})
    else:
        m += [member('1.vhd', pair['1.vhd']),
              {'name': 'x.vhd', 'type': 'symlink', 'link': '/etc/passwd'}]
    refuse_tar(tmp_path, out_dir, m, P_LINK + (P_EXTRA if where == 'extra'
                                               else ''),
               names=['1.vhd', 'x.vhd'])


@pytest.mark.parametrize('where', ['chain', 'extra'])
def test_tar_hardlink_member(pair, tmp_path, out_dir, where):
    m = [member('0.vhd', pair['0.vhd'])]
    if where == 'chain':
        m.append({'name': '1.vhd', 'type': 'hardlink', 'link': '0.vhd'})
    else:
        m += [member('1.vhd', pair['1.vhd']),
              {'name': 'x.vhd', 'type': 'hardlink', 'link': '1.vhd'}]
    refuse_tar(tmp_path, out_dir, m, P_LINK + (P_EXTRA if where == 'extra'
                                               else ''),
               names=['1.vhd', 'x.vhd'])


@pytest.mark.parametrize('kind', ['chardev', 'blockdev', 'fifo'])
@pytest.mark.parametrize('where', ['chain', 'extra'])
def test_tar_device_member(pair, tmp_path, out_dir, kind, where):
    m = [member('0.vhd', pair['0.vhd'])]
    if where == 'chain':
        m.append({'name': '1.vhd', 'type': kind})
    else:
        m += [member('1.vhd', pair['1.vhd']), {'name': 'x.vhd', 'type': kind}]
    refuse_tar(tmp_path, out_dir, m,
               r'device|special|fifo|pipe|unsafe|regular|type|not a' +
               (P_EXTRA if where == 'extra' else ''),
               names=['1.vhd', 'x.vhd'])


@pytest.mark.parametrize('name', ['../x.vhd', '../1.vhd', 'a/../../1.vhd',
                                  './../1.vhd'])
def test_tar_dotdot_member(pair, tmp_path, out_dir, name):
    m = [member('0.vhd', pair['0.vhd']), member(name, pair['1.vhd'])]
    if name == '../x.vhd':
        m.insert(1, member('1.vhd', pair['1.vhd']))
    refuse_tar(tmp_path, out_dir, m,
               r'\.\.|unsafe|outside|travers|escap|relative|path' +
               (P_EXTRA if name == '../x.vhd' else ''),
               names=[name])


@pytest.mark.parametrize('name', ['/x.vhd', '/1.vhd', '/tmp/0.vhd'])
def test_tar_absolute_member(pair, tmp_path, out_dir, name):
    m = [member('0.vhd', pair['0.vhd'])]
    if name == '/1.vhd':
        m.append(member(name, pair['1.vhd']))
    else:
        m += [member('1.vhd', pair['1.vhd']), member(name, pair['1.vhd'])]
    problem = r'absolute|unsafe|' + name.replace('.', r'\.')
    refuse_tar(tmp_path, out_dir, m,
               problem + (P_EXTRA if name != '/1.vhd' else ''), names=[name])


@pytest.mark.parametrize('second', ['1.vhd', './1.vhd', '0.vhd'])
def test_tar_duplicate_member(pair, tmp_path, out_dir, second):
    m = [member('0.vhd', pair['0.vhd']), member('1.vhd', pair['1.vhd']),
         member(second, pair['1.vhd'])]
    refuse_tar(tmp_path, out_dir, m,
               r'duplicat|twice|more than once|repeated|multiple',
               names=[second, second.lstrip('./')])


def test_tar_without_leaf(orphan_simple, tmp_path, out_dir):
    _, leaf_first = orphan_simple
    m = [member('1.vhd', leaf_first[1]), member('2.vhd', leaf_first[2])]
    refuse_tar(tmp_path, out_dir, m, r'0\.vhd', compression=None)


def test_tar_with_gap(orphan_simple, tmp_path, out_dir):
    _, leaf_first = orphan_simple
    m = [member('0.vhd', leaf_first[0]), member('1.vhd', leaf_first[1]),
         member('3.vhd', leaf_first[2])]
    refuse_tar(tmp_path, out_dir, m,
               r'2\.vhd|3\.vhd|gap|missing|sequence|consecutive|number')


def test_tar_chain_cut_short(orphan_simple, tmp_path, out_dir):
    """The last member is a differencing disk whose parent is absent."""
    _, leaf_first = orphan_simple
    m = [member('0.vhd', leaf_first[0]), member('1.vhd', leaf_first[1])]
    refuse_tar(tmp_path, out_dir, m, P_PARENT, names=['1.vhd'])


def test_tar_members_from_different_chains(pair, orphan_simple, tmp_path,
                                           out_dir):
    _, leaf_first = orphan_simple
    m = [member('0.vhd', pair['0.vhd']), member('1.vhd', leaf_first[2])]
    refuse_tar(tmp_path, out_dir, m,
               P_PARENT + r'|uuid|\bid\b|identifier|match',
               names=['0.vhd', '1.vhd'])


def test_tar_with_corrupt_member(pair, tmp_path, out_dir):
    bad = tmp_path / 'bad.vhd'
    shutil.copyfile(pair['1.vhd'], bad)
    ig.patch_header(bad, checksum=ig.read_vhd(bad)['header']['checksum'] ^ 1)
    m = [member('0.vhd', pair['0.vhd']), member('1.vhd', bad)]
    refuse_tar(tmp_path, out_dir, m, P_CHECKSUM, names=['1.vhd'])


def test_truncated_archive(pair, tmp_path, out_dir):
    tar = tmp_path / 'vdi.tar'
    ig.make_tar(tar, [member('0.vhd', pair['0.vhd']),
                      member('1.vhd', pair['1.vhd'])])
    with open(tar, 'r+b') as f:
        f.truncate(os.path.getsize(tar) // 2)
    refuse(tar, out_dir, names=['vdi.tar', '1.vhd', '0.vhd'])


# --- the output side ---------------------------------------------------------

def test_existing_output_not_overwritten(qemu_dynamic, out_dir):
    out = out_dir / 'disk.raw'
    out.write_bytes(b'precious')
    res = cli.run_any2kvm('convert', qemu_dynamic, out)
    assert res.returncode == 1, cli.describe(res)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(cli.ERROR_PREFIX), \
        cli.describe(res)
    assert 'disk.raw' in lines[0]
    assert out.read_bytes() == b'precious'
    assert os.listdir(out_dir) == ['disk.raw']


def test_refusal_with_overwrite_leaves_no_temp_file(qemu_dynamic, out_dir):
    """--overwrite and bad input: a clean refusal, no temp file beside."""
    ig.patch_header(qemu_dynamic,
                    checksum=ig.read_vhd(qemu_dynamic)['header']['checksum']
                    ^ 1)
    out = out_dir / 'disk.raw'
    out.write_bytes(b'precious')
    res = cli.run_any2kvm('convert', qemu_dynamic, out, '--overwrite')
    cli.assert_refused(res, names=['disk.vhd'], problem=P_CHECKSUM)
    # whether the old file survives is not specified; no stray file is
    assert set(os.listdir(out_dir)) <= {'disk.raw'}


def test_output_directory_missing(qemu_dynamic, tmp_path):
    out = tmp_path / 'no' / 'such' / 'dir' / 'disk.raw'
    res = cli.run_any2kvm('convert', qemu_dynamic, out)
    cli.assert_refused(res)
    assert not (tmp_path / 'no').exists()


@pytest.mark.parametrize('where', ['after', 'global'])
def test_debug_still_fails_cleanly(qemu_dynamic, out_dir, where):
    """``convert SOURCE OUTPUT --debug`` (the brief's synopsis) and
    ``any2kvm --debug convert SOURCE OUTPUT`` (the global option)."""
    bad = ig.read_vhd(qemu_dynamic)['footer']['checksum'] ^ 0x10
    ig.patch_footer(qemu_dynamic, checksum=bad)
    out = out_dir / 'disk.raw'
    if where == 'after':
        res = cli.run_any2kvm('convert', qemu_dynamic, out, '--debug')
    else:
        res = cli.run_any2kvm('--debug', 'convert', qemu_dynamic, out)
    # --debug may add a traceback and log lines; the failure itself stays
    assert res.returncode == 1, cli.describe(res)
    assert 'disk.vhd' in res.stderr and 'checksum' in res.stderr.lower(), \
        cli.describe(res)
    assert os.listdir(out_dir) == []


def test_output_is_a_directory(qemu_dynamic, out_dir):
    """A directory takes the disk's file (named as import names it); a
    directory where that file would go is refused, nothing written."""
    target = out_dir / 'adir'
    target.mkdir()
    name = os.path.basename(str(qemu_dynamic)) + '.raw'
    (target / name).mkdir()
    res = cli.run_any2kvm('convert', qemu_dynamic, target)
    cli.assert_refused(res, names=[name],
                       problem='neither a regular file nor a block device')
    assert os.listdir(out_dir) == ['adir'] and os.listdir(target) == [name]
    assert os.listdir(target / name) == []


# --- damaged compression -----------------------------------------------------

def _pair_tgz(pair, tmp_path):
    tar = tmp_path / 'vdi.tgz'
    ig.make_tar(tar, [member('0.vhd', pair['0.vhd']),
                      member('1.vhd', pair['1.vhd'])], 'gz')
    return tar


def test_gzip_truncated(pair, tmp_path, out_dir):
    tar = _pair_tgz(pair, tmp_path)
    with open(tar, 'r+b') as f:
        f.truncate(os.path.getsize(tar) - 4096)
    refuse(tar, out_dir, names=['vdi.tgz'])


def test_gzip_crc_mismatch(pair, tmp_path, out_dir):
    """Only the gzip trailer's CRC-32 is wrong: the data was damaged."""
    tar = _pair_tgz(pair, tmp_path)
    with open(tar, 'r+b') as f:
        f.seek(-8, 2)
        crc = bytearray(f.read(4))
        crc[0] ^= 0xFF
        f.seek(-8, 2)
        f.write(crc)
    refuse(tar, out_dir, names=['vdi.tgz'])


def test_gzip_damaged_member_data(pair, tmp_path, out_dir):
    """One byte of VHD data changed inside a *stored* (level 0) deflate block.

    Decompression still succeeds -- only gzip's CRC-32 can tell.  Accepting
    the archive would write a wrong disk with exit status 0.
    """
    tar = tmp_path / 'vdi.tgz'
    ig.make_tar(tar, [member('0.vhd', pair['0.vhd']),
                      member('1.vhd', pair['1.vhd'])], 'gz', compresslevel=0)
    blob = bytearray(tar.read_bytes())
    needle = ig.pattern(702, 8 * KiB)[4096:4160]    # data of the leaf
    at = blob.find(needle)
    assert at > 0, 'stored deflate block not found'
    blob[at + 10] ^= 0x01
    tar.write_bytes(bytes(blob))
    refuse(tar, out_dir, names=['vdi.tgz'])


def test_tar_member_not_a_vhd(pair, tmp_path, out_dir):
    junk = tmp_path / 'junk'
    junk.write_bytes(ig.pattern(990, 1 * MiB))
    m = [member('0.vhd', pair['0.vhd']), member('1.vhd', junk)]
    refuse_tar(tmp_path, out_dir, m, None, names=['1.vhd'])


# --- block devices -----------------------------------------------------------

def test_block_device_too_small(qemu_dynamic, tmp_path):
    backing = tmp_path / 'small.img'
    with open(backing, 'wb') as f:
        f.write(b'\xAA' * (2 * MiB))
    with blockdev.loop_device(backing) as dev:
        res = cli.run_any2kvm('convert', qemu_dynamic, dev, '--overwrite')
        cli.assert_refused(res, names=[dev, os.path.basename(dev)])
