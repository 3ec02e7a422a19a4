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

import os
import struct

import pytest

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.formats import vhd
from tests.lib import vhdbuild

MiB = 1 << 20


def view_of(tmp_path, data, name='x.vhd'):
    p = tmp_path / name
    p.write_bytes(data)
    return fileio.FileView.open_path(str(p))


def test_bitmap_runs_msb_first():
    runs = vhd.bitmap_runs(b'\xff\x0f\x00\x80', 0, 32)
    assert runs == [(0, 8, True), (8, 4, False), (12, 4, True),
                    (16, 8, False), (24, 1, True), (25, 7, False)]


def test_bitmap_runs_subrange():
    assert vhd.bitmap_runs(b'\xf0', 2, 4) == [(2, 2, True), (4, 2, False)]


def test_checksum_matches_spec_example():
    f = vhdbuild.footer(MiB, vhd.DISK_DYNAMIC, b'\1' * 16)
    stored = struct.unpack_from('>I', f, 64)[0]
    total = sum(f) - sum(f[64:68])
    assert stored == (~total) & 0xFFFFFFFF


def test_fixed(tmp_path):
    data, uid = vhdbuild.build(MiB, disk_type=vhd.DISK_FIXED,
                               fixed_data=b'A' * 1000)
    r = vhd.VhdReader(view_of(tmp_path, data))
    assert r.subformat == 'fixed'
    assert r.virtual_size == MiB
    assert r.parent_ref is None
    assert list(r.block_status(0, 2 * MiB)) == [
        ext.extent(ext.DATA, 0, MiB, 0)]


def test_dynamic_blocks(tmp_path):
    data, uid = vhdbuild.build(8 * MiB, blocks={1: (None, b'x' * 100)})
    r = vhd.VhdReader(view_of(tmp_path, data))
    st = ext.merge(r.block_status(0, 8 * MiB))
    assert [e.kind for e in st] == [ext.UNALLOCATED, ext.DATA,
                                    ext.UNALLOCATED]
    assert st[1].offset == 2 * MiB and st[1].length == 2 * MiB
    assert r.read(st[1].file_offset, 100) == b'x' * 100
    assert r.allocated_bytes() == 2 * MiB


def test_dynamic_allocated_block_ignores_bitmap(tmp_path):
    # In a dynamic (non-differencing) disk an allocated block is data as a
    # whole, as qemu reads it, whatever its bitmap says.
    bm = vhdbuild.sectors_bitmap(2 * MiB, [0])
    data, _ = vhdbuild.build(2 * MiB, blocks={0: (bm, b'y' * 1024)})
    r = vhd.VhdReader(view_of(tmp_path, data))
    assert [e.kind for e in r.block_status(0, 2 * MiB)] == [ext.DATA]


def test_differencing_partial_bitmap(tmp_path):
    bm = vhdbuild.sectors_bitmap(2 * MiB, [0, 1, 9])
    data, _ = vhdbuild.build(4 * MiB, blocks={0: (bm, b'z' * 5120)},
                             disk_type=vhd.DISK_DIFFERENCING,
                             parent_uid=b'\2' * 16, parent_name='C:\\a\\p.vhd')
    r = vhd.VhdReader(view_of(tmp_path, data))
    st = list(r.block_status(0, 4 * MiB))
    assert [(e.kind, e.offset, e.length) for e in st] == [
        (ext.DATA, 0, 1024), (ext.UNALLOCATED, 1024, 7 * 512),
        (ext.DATA, 9 * 512, 512), (ext.UNALLOCATED, 5120, 2 * MiB - 5120),
        (ext.UNALLOCATED, 2 * MiB, 2 * MiB)]
    assert r.parent_ref.id == '02020202-0202-0202-0202-020202020202'
    assert r.parent_ref.name_hints == ('p.vhd',)
    assert r.allocated_bytes() == 1536


def test_virtual_size_is_current_size_not_chs(tmp_path):
    # 127 GiB Virtual PC style: current_size is what the guest saw.
    size = 136365211648
    data, _ = vhdbuild.build(size, entries=-(-size // (2 * MiB)))
    r = vhd.VhdReader(view_of(tmp_path, data))
    assert r.virtual_size == size


@pytest.mark.parametrize('corrupt,match', [
    # (flipped bits: a byte of a random unique id may be 0x55 already)
    (lambda b: b[:70] + bytes([b[70] ^ 0x55]) + b[71:], 'footer checksum'),
    (lambda b: b[:612] + bytes([b[612] ^ 0x55]) + b[613:],
     'header checksum'),
    (lambda b: b[:-512], 'truncated|footer'),
    (lambda b: b[:-513] + b'\0' + b[-512:], None),  # data byte: still fine
])
def test_corruptions(tmp_path, corrupt, match):
    data, _ = vhdbuild.build(4 * MiB, blocks={1: (None, b'q' * 10)})
    bad = corrupt(data)
    if match is None:
        vhd.VhdReader(view_of(tmp_path, bad))
        return
    with pytest.raises(exception.InvalidImage, match=match):
        vhd.VhdReader(view_of(tmp_path, bad))


def _patch_bat(data, entries):
    bat = struct.pack('>%dI' % len(entries), *entries)
    return data[:1536] + bat + data[1536 + len(bat):]


def test_bat_outside_file(tmp_path):
    data, _ = vhdbuild.build(4 * MiB, blocks={0: (None, b'a')})
    bad = _patch_bat(data, [0x00FFFFFF, 0xFFFFFFFF])
    with pytest.raises(exception.InvalidImage, match='beyond the end'):
        vhd.VhdReader(view_of(tmp_path, bad))


def test_bat_duplicate_entries(tmp_path):
    data, _ = vhdbuild.build(4 * MiB, blocks={0: (None, b'a')})
    first = struct.unpack_from('>I', data, 1536)[0]
    bad = _patch_bat(data, [first, first])
    with pytest.raises(exception.InvalidImage, match='overlap'):
        vhd.VhdReader(view_of(tmp_path, bad))


def test_bat_overlapping_headers(tmp_path):
    data, _ = vhdbuild.build(4 * MiB, blocks={0: (None, b'a')})
    bad = _patch_bat(data, [1, 0xFFFFFFFF])
    with pytest.raises(exception.InvalidImage, match='overlaps'):
        vhd.VhdReader(view_of(tmp_path, bad))


def test_block_size_not_power_of_two(tmp_path):
    data, _ = vhdbuild.build(4 * MiB)
    hdr = bytearray(data[512:1536])
    struct.pack_into('>I', hdr, 32, 3 * MiB)
    struct.pack_into('>I', hdr, 36, vhd.vhd_checksum(hdr, 36))
    bad = data[:512] + bytes(hdr) + data[1536:]
    with pytest.raises(exception.InvalidImage, match='power of two'):
        vhd.VhdReader(view_of(tmp_path, bad))


def test_bat_too_small_for_size(tmp_path):
    data, _ = vhdbuild.build(4 * MiB, entries=1)
    with pytest.raises(exception.InvalidImage, match='entries'):
        vhd.VhdReader(view_of(tmp_path, data))


def test_huge_table_refused_before_allocation(tmp_path):
    data, _ = vhdbuild.build(4 * MiB)
    hdr = bytearray(data[512:1536])
    struct.pack_into('>I', hdr, 28, 0x7FFFFFFF)
    struct.pack_into('>I', hdr, 36, vhd.vhd_checksum(hdr, 36))
    bad = data[:512] + bytes(hdr) + data[1536:]
    with pytest.raises(exception.InvalidImage):
        vhd.VhdReader(view_of(tmp_path, bad))


def test_footer_copies_disagree(tmp_path):
    data, _ = vhdbuild.build(4 * MiB)
    other = vhdbuild.footer(4 * MiB, vhd.DISK_DYNAMIC, b'\7' * 16)
    with pytest.raises(exception.InvalidImage, match='disagree'):
        vhd.VhdReader(view_of(tmp_path, data[:-512] + other))


def test_probe(tmp_path):
    data, _ = vhdbuild.build(MiB, disk_type=vhd.DISK_FIXED)
    assert vhd.VhdReader.probe(view_of(tmp_path, data, 'a'))
    assert not vhd.VhdReader.probe(view_of(tmp_path, b'\0' * 4096, 'b'))
    assert not vhd.VhdReader.probe(view_of(tmp_path, b'', 'c'))


class _Stream(object):
    def __init__(self, data):
        import io
        self.f = io.BytesIO(data)

    def read(self, n):
        return self.f.read(n)


@pytest.mark.parametrize('kind', ['fixed', 'dynamic', 'differencing'])
def test_stream_layer_matches_random_access(tmp_path, kind):
    bs = 2 * MiB
    if kind == 'fixed':
        data, _ = vhdbuild.build(3 * MiB, disk_type=vhd.DISK_FIXED,
                                 fixed_data=os.urandom(5000))
    else:
        dt = (vhd.DISK_DYNAMIC if kind == 'dynamic'
              else vhd.DISK_DIFFERENCING)
        bm = vhdbuild.sectors_bitmap(bs, [3, 4, 100])
        data, _ = vhdbuild.build(
            3 * MiB, disk_type=dt, parent_uid=b'\3' * 16,
            blocks={1: (bm, os.urandom(bs)), 0: (None, os.urandom(600))})
    r = vhd.VhdReader(view_of(tmp_path, data))
    expected = {}
    for e in r.block_status(0, r.virtual_size):
        if e.kind == ext.DATA:
            expected[e.offset] = r.read(e.file_offset, e.length)
    stream = fileio.ForwardStream(_Stream(data), 'm', len(data))
    layer = vhd.StreamLayer('m', stream.peek(512), len(data))
    layer.read_headers(stream)
    got = bytearray(len(data))
    want = bytearray(r.virtual_size)
    for off, buf in layer.data_runs(stream):
        got[off:off + len(buf)] = buf
    # A fixed disk's size is known only once its footer has been read.
    del got[layer.virtual_size:]
    for off, buf in expected.items():
        want[off:off + len(buf)] = buf
    assert got == want
    assert layer.virtual_size == r.virtual_size


@pytest.mark.parametrize('change,match', [
    (lambda d: d[:1000] + b'\x00' + d[1000:], '1 bytes too many'),
    (lambda d: d[:1000] + d[1001:], 'truncated'),
    (lambda d: d[:-512] + bytes(4096) + d[-512:], '4096 bytes too many'),
], ids=['inserted', 'deleted', 'appended'])
def test_fixed_length_must_be_size_plus_footer(tmp_path, change, match):
    """A byte inserted into a fixed VHD would shift every later byte: its
    length must be the declared size plus the footer, on the random-access
    and on the stream path."""
    data, _ = vhdbuild.build(MiB, disk_type=vhd.DISK_FIXED,
                             fixed_data=os.urandom(5000))
    bad = change(data)
    with pytest.raises(exception.InvalidImage, match=match):
        vhd.VhdReader(view_of(tmp_path, bad))
    stream = fileio.ForwardStream(_Stream(bad), 'm', len(bad))
    layer = vhd.StreamLayer('m', stream.peek(512), len(bad))
    layer.read_headers(stream)
    with pytest.raises(exception.InvalidImage, match=match):
        list(layer.data_runs(stream))


def _two_block_dynamic(disk_type=vhd.DISK_DYNAMIC):
    blocks = {0: (None, os.urandom(4096)), 1: (None, os.urandom(8192))}
    kw = {}
    if disk_type == vhd.DISK_DIFFERENCING:
        kw = {'parent_uid': b'\7' * 16, 'parent_name': 'p.vhd'}
    data, _ = vhdbuild.build(4 * MiB, blocks=blocks, disk_type=disk_type,
                             **kw)
    return data


# A byte inserted into or cut from the first block's data (the footer and
# its copy intact): the second block would be read one byte off.
SHIFTS = [
    (lambda d: d[:4 * 512 + 700] + b'\x5a' + d[4 * 512 + 700:],
     r'1 bytes over\): bytes were inserted or cut'),
    (lambda d: d[:4 * 512 + 700] + d[4 * 512 + 701:],
     r'511 bytes over\): bytes were inserted or cut'),
    (lambda d: d[:-512] + b'\0' * 7 + d[-512:],
     r'7 bytes over\): bytes were inserted or cut'),
]
SHIFT_IDS = ['inserted', 'deleted', 'appended-before-footer']


@pytest.mark.parametrize('disk_type', [vhd.DISK_DYNAMIC,
                                       vhd.DISK_DIFFERENCING],
                         ids=['dynamic', 'differencing'])
@pytest.mark.parametrize('change,match', SHIFTS, ids=SHIFT_IDS)
def test_dynamic_length_must_be_whole_sectors(tmp_path, disk_type, change,
                                              match):
    """Every structure of a dynamic VHD is whole sectors and the footer is
    the last one: a length that is not whole sectors means bytes were
    inserted or cut.  Refused on the random-access and the stream path."""
    good = _two_block_dynamic(disk_type)
    vhd.VhdReader(view_of(tmp_path, good, 'good.vhd'))
    bad = change(good)
    assert len(bad) % 512
    with pytest.raises(exception.InvalidImage, match=match):
        vhd.VhdReader(view_of(tmp_path, bad))
    stream = fileio.ForwardStream(_Stream(bad), 'm', len(bad))
    with pytest.raises(exception.InvalidImage, match=match):
        vhd.StreamLayer('m', stream.peek(512), len(bad))


def test_footer_copies_must_place_the_header_alike(tmp_path):
    """The copy at offset 0 and the footer at the end must agree on where
    the dynamic header is, not only on the id, size and type."""
    good = _two_block_dynamic()
    tail = vhdbuild.footer(4 * MiB, vhd.DISK_DYNAMIC, good[68:84],
                           data_offset=1024)
    assert vhd.parse_footer(tail, 't').unique_id == \
        vhd.parse_footer(good[:512], 'h').unique_id
    bad = good[:-512] + tail
    with pytest.raises(exception.InvalidImage, match='copies disagree'):
        vhd.VhdReader(view_of(tmp_path, bad))


def test_a_padded_view_takes_the_footer_copy_at_offset_0(tmp_path):
    """A logical volume of SM's LVHD whose last sector holds no footer (an
    inflate cut short): libvhd then takes the footer copy at offset 0.
    Only a view that says it is padded is read so; a VHD file cut that
    way is truncated."""
    data, uid = vhdbuild.build(8 * MiB, blocks={1: (None, b'x' * 100)})
    lv = data[:-512] + bytes(4 * MiB - len(data) % (4 * MiB)) + data[-512:]
    # the footer at the LV's end (inflated or deflated by SM): a VHD file
    assert vhd.VhdReader(view_of(tmp_path, lv, 'a')).virtual_size == 8 * MiB
    # no footer at the end: the footer moved with nothing in its place
    short = data[:-512] + bytes(4 * MiB - len(data) % (4 * MiB) + 512)
    with pytest.raises(exception.InvalidImage, match='footer missing'):
        vhd.VhdReader(view_of(tmp_path, short, 'b'))
    view = view_of(tmp_path, short, 'c')
    view.padded = True
    r = vhd.VhdReader(view)
    st = ext.merge(r.block_status(0, 8 * MiB))
    assert [e.kind for e in st] == [ext.UNALLOCATED, ext.DATA,
                                    ext.UNALLOCATED]
    assert r.read(st[1].file_offset, 100) == b'x' * 100
    # A footer at the end that disagrees is refused even so.
    other, _ = vhdbuild.build(4 * MiB)
    bad = short[:-512] + other[-512:]
    view = view_of(tmp_path, bad, 'd')
    view.padded = True
    with pytest.raises(exception.InvalidImage, match='disagree'):
        vhd.VhdReader(view)


def _qemu_vhd(tmp_path, raw_bytes):
    """A dynamic VHD that qemu-img writes of ``raw_bytes``."""
    import shutil
    import subprocess
    if not shutil.which('qemu-img'):
        from tests.lib.tools import missing_tool
        missing_tool('qemu-img is needed')
    raw = tmp_path / 'src.raw'
    raw.write_bytes(raw_bytes)
    out = tmp_path / 'q.vhd'
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'vpc', '-o',
                    'subformat=dynamic', str(raw), str(out)], check=True,
                   capture_output=True, timeout=120)
    return out.read_bytes()


def test_a_live_leaf_without_its_end_footer_is_read_from_the_copy(tmp_path):
    """A running VM's leaf as blktap leaves it while its tapdisk holds it
    open for writing: the end footer overwritten with 0xc7
    (vhd_kill_footer, at every open for writing), or a new block written
    where the footer was (allocate_block at next_db), the footer only
    written back at close.  A view that says it is live is read from the
    footer copy at offset 0, as libvhd and qemu read it; the same bytes
    in a view that does not say so are a truncated file."""
    import subprocess
    size = 6 * MiB
    content = bytearray(size)
    content[5 * MiB:5 * MiB + 7] = b'written'
    content[100:105] = b'first'
    data = _qemu_vhd(tmp_path, bytes(content))
    killed = data[:-512] + b'\xc7' * 512
    # The footer's sector taken by a block (its last sector here).
    grown = data[:-512]
    for name, image in (('killed.vhd', killed), ('grown.vhd', grown)):
        with pytest.raises(exception.InvalidImage, match='footer missing'):
            vhd.VhdReader(view_of(tmp_path, image, 'strict-' + name))
        view = view_of(tmp_path, image, name)
        view.live = True
        r = vhd.VhdReader(view)
        assert r.virtual_size >= size
        got = bytearray()
        for e in ext.merge(r.block_status(0, size)):
            if e.kind == ext.DATA:
                got += r.read(e.file_offset, e.length)
            else:
                got += bytes(e.length)
        assert bytes(got) == bytes(content), name
        # qemu reads the same file the same way (its footer from offset 0).
        out = tmp_path / ('%s.raw' % name)
        subprocess.run(['qemu-img', 'convert', '-f', 'vpc', '-O', 'raw',
                        str(tmp_path / name), str(out)], check=True,
                       capture_output=True, timeout=120)
        assert out.read_bytes()[:size] == bytes(content), name
