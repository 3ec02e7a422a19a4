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

"""Unit tests of the VHDX reader on crafted files.

The files are made by a small builder below (its own, simple CRC-32C, not
the reader's): it lays out the structures of MS-VHDX 1.0 so that each test
can break exactly one thing.  Real images (Hyper-V, Windows, Disk2vhd,
qemu-img, FATtools) are judged in tests/functional/test_vhdx.py.
"""

import hashlib
import os
import struct
import uuid

import pytest

from any2kvm_os.chain import layer_chain
from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.formats import vhdx

KiB = 1 << 10
MiB = 1 << 20

# -- an independent, obviously simple CRC-32C (one table, byte by byte) -------

_REF_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _REF_TABLE.append(_c)


def ref_crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc = _REF_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def seal(buf):
    """Store the CRC-32C of ``buf`` (checksum field zeroed) at offset 4."""
    buf = bytearray(buf)
    buf[4:8] = b'\0\0\0\0'
    struct.pack_into('<I', buf, 4, ref_crc32c(buf))
    return bytes(buf)


def guid_le(text):
    return uuid.UUID(text).bytes_le


# -- the builder --------------------------------------------------------------

BAT_GUID = '2dc27766-f623-4200-9d64-115e9bfd4a08'
META_GUID = '8b7ca206-4790-4b9a-b8fe-575f050f886e'
FILE_PARAMS = 'caa16737-fa36-4d43-b3b6-33f0aa44e76b'
DISK_SIZE = '2fa54224-cd1b-4876-b211-5dbed83bf4b8'
PAGE83 = 'beca12ab-b2e6-4523-93ef-c309e000c746'
LSS = '8141bf1d-a96f-4709-ba47-f233a8faab5f'
PSS = 'cda348c7-445d-4471-9cc9-e9885251c556'
LOCATOR = 'a8d35f2d-b30b-454d-abf7-d3d84834ab0c'
LOCATOR_TYPE = 'b04aefb7-d19e-4a81-b789-25b8e9445913'
DATA_WRITE_GUID = '11111111-2222-3333-4444-555555555555'
PARENT_GUID = 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee'
LOG_GUID = '99999999-8888-7777-6666-555555555555'
LOG_OFFSET = 1 * MiB
LOG_LENGTH = 1 * MiB
META_OFFSET = 2 * MiB
BAT_OFFSET = 3 * MiB


class Builder(object):
    """A VHDX laid out as Hyper-V does: headers, log, metadata, BAT, data."""

    def __init__(self, vsize=8 * MiB, block=1 * MiB, lss=512, pss=4096,
                 parent=None, fixed=False, creator='unit test'):
        self.vsize = vsize
        self.block = block
        self.lss = lss
        self.pss = pss
        self.parent = parent        # locator entries (dict) or None
        self.fixed = fixed
        self.creator = creator
        self.chunk_ratio = (1 << 23) * lss // block
        nblocks = -(-vsize // block)
        if parent is not None:
            self.entries = -(-nblocks // self.chunk_ratio) * (
                self.chunk_ratio + 1)
        else:
            self.entries = nblocks + (nblocks - 1) // self.chunk_ratio
        self.bat_length = max(1, -(-self.entries * 8 // MiB)) * MiB
        self.bat = {}
        self.pieces = {}            # file offset -> bytes
        self.next_free = BAT_OFFSET + self.bat_length
        self.header_seq = (1, 2)
        self.log_guid = bytes(16)
        self.log = bytearray(LOG_LENGTH)
        self.extra_regions = []
        self.extra_items = []
        self.file_params = None
        self.size = None            # file size; default: end of last piece

    # payload and bitmaps
    def alloc(self, length):
        off = self.next_free
        self.next_free += -(-length // MiB) * MiB
        return off

    def payload(self, block, state=6, data=b'', offset=None):
        idx = block + block // self.chunk_ratio
        if state in (6, 7):
            if offset is None:
                offset = self.alloc(self.block)
            self.pieces[offset] = data
            self.bat[idx] = (offset >> 20) << 20 | state
            return offset
        self.bat[idx] = state
        return None

    def sector_bitmap(self, chunk, sectors=(), offset=None, fill=0):
        if offset is None:
            offset = self.alloc(MiB)
        bm = bytearray(bytes([fill]) * MiB)
        for s in sectors:
            bm[s // 8] |= 1 << (s % 8)
        self.pieces[offset] = bytes(bm)
        idx = chunk * (self.chunk_ratio + 1) + self.chunk_ratio
        self.bat[idx] = (offset >> 20) << 20 | 6
        return offset

    # structures
    def header(self, seq):
        h = struct.pack('<4sIQ16s16s16sHHIQ', b'head', 0, seq,
                        guid_le('01010101-0101-0101-0101-010101010101'),
                        guid_le(DATA_WRITE_GUID), self.log_guid, 0, 1,
                        LOG_LENGTH, LOG_OFFSET)
        return seal(h + bytes(4096 - len(h)))

    def region_table(self):
        regions = [(guid_le(META_GUID), META_OFFSET, MiB, 1),
                   (guid_le(BAT_GUID), BAT_OFFSET, self.bat_length, 1)]
        regions += self.extra_regions
        t = struct.pack('<4sIII', b'regi', 0, len(regions), 0)
        for r in regions:
            t += struct.pack('<16sQII', *r)
        return seal(t + bytes(64 * KiB - len(t)))

    def locator(self):
        keys = list(self.parent.items())
        head = struct.pack('<16sHH', guid_le(LOCATOR_TYPE), 0, len(keys))
        table = b''
        blob = b''
        base = len(head) + 12 * len(keys)
        for k, v in keys:
            kb, vb = k.encode('utf-16-le'), v.encode('utf-16-le')
            ko = base + len(blob)
            blob += kb
            vo = base + len(blob)
            blob += vb
            table += struct.pack('<IIHH', ko, vo, len(kb), len(vb))
        return head + table + blob

    def metadata(self):
        flags = self.file_params
        if flags is None:
            flags = (1 if self.fixed else 0) | (2 if self.parent else 0)
        items = [(FILE_PARAMS, struct.pack('<II', self.block, flags), 4),
                 (DISK_SIZE, struct.pack('<Q', self.vsize), 6),
                 (LSS, struct.pack('<I', self.lss), 6),
                 (PSS, struct.pack('<I', self.pss), 6),
                 (PAGE83, guid_le('cafecafe-0000-1111-2222-333344445555'),
                  6)]
        if self.parent is not None:
            items.append((LOCATOR, self.locator(), 4))
        items += self.extra_items
        region = bytearray(MiB)
        struct.pack_into('<8sHH', region, 0, b'metadata', 0, len(items))
        off = 64 * KiB
        for i, (guid, data, flags) in enumerate(items):
            struct.pack_into('<16sIII', region, 32 + 32 * i, guid_le(guid),
                             off, len(data), flags)
            region[off:off + len(data)] = data
            off += -(-len(data) // 8) * 8
        return bytes(region)

    def bat_bytes(self):
        raw = bytearray(self.entries * 8)
        for idx, value in self.bat.items():
            struct.pack_into('<Q', raw, idx * 8, value)
        return bytes(raw)

    def add_log_entry(self, position, entry):
        for i in range(0, len(entry), 4096):
            p = (position + i) % LOG_LENGTH
            self.log[p:p + 4096] = entry[i:i + 4096]

    def write(self, path):
        ident = b'vhdxfile' + self.creator.encode('utf-16-le')
        parts = {0: ident,
                 64 * KiB: self.header(self.header_seq[0]),
                 128 * KiB: self.header(self.header_seq[1]),
                 192 * KiB: self.region_table(),
                 256 * KiB: self.region_table(),
                 LOG_OFFSET: bytes(self.log),
                 META_OFFSET: self.metadata(),
                 BAT_OFFSET: self.bat_bytes()}
        parts.update(self.pieces)
        size = self.size
        if size is None:
            size = self.next_free
        with open(str(path), 'wb') as f:
            f.truncate(size)
            for off, data in sorted(parts.items()):
                if off < size:
                    f.seek(off)
                    f.write(data[:size - off])
        return str(path)


def log_entry(seq, tail=0, writes=(), guid=LOG_GUID, flushed=0, last=0,
              corrupt=False, data_seq=None):
    """One log entry.  ``writes``: (file_offset, 4 KiB bytes) for data
    descriptors, (file_offset, int length) for zero descriptors."""
    descs = []
    sectors = []
    for off, what in writes:
        if isinstance(what, int):
            descs.append(struct.pack('<4sIQQQ', b'zero', 0, what, off, seq))
        else:
            assert len(what) == 4096
            lead = struct.unpack_from('<Q', what, 0)[0]
            trail = struct.unpack_from('<I', what, 4092)[0]
            descs.append(struct.pack('<4sIQQQ', b'desc', trail, lead, off,
                                     seq))
            s = data_seq if data_seq is not None else seq
            sectors.append(struct.pack('<4sI', b'data', s >> 32)
                           + what[8:4092]
                           + struct.pack('<I', s & 0xFFFFFFFF))
    desc_area = -(-(64 + 32 * len(descs)) // 4096) * 4096
    length = desc_area + 4096 * len(sectors)
    head = struct.pack('<4sIIIQII16sQQ', b'loge', 0, length, tail, seq,
                       len(descs), 0, guid_le(guid), flushed, last)
    body = head + b''.join(descs)
    body += bytes(desc_area - len(body)) + b''.join(sectors)
    body = seal(body)
    if corrupt:
        body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
    return body


class DenseView(fileio.FileView):
    """A view that reports no holes: the block-state tests below are about
    the BAT, not about the holes of the sparse files the Builder writes."""

    def data_runs(self, offset, length):
        yield offset, min(offset + length, self.size), True


def open_reader(path, dense=True):
    view = fileio.FileView.open_path(str(path))
    if dense:
        view.__class__ = DenseView
    return vhdx.VhdxReader(view)


def test_holes_in_present_blocks_are_zero_and_not_read(tmp_path):
    b = Builder(vsize=4 * MiB, block=2 * MiB)
    b.payload(0, 6, pattern(1, 8192))        # 8 KiB of data, then holes
    b.payload(1, 6, pattern(2, 512))
    path = b.write(tmp_path / 'h.vhdx')
    dense = open_reader(path)
    sparse = open_reader(path, dense=False)
    assert read_disk(sparse) == read_disk(dense)
    got = kinds(sparse)
    assert got[0] == (ext.DATA, 0, 8192)
    assert (ext.ZERO, 8192, 2 * MiB - 8192) in got
    assert sum(n for k, _o, n in got if k == ext.DATA) < 64 * 1024


def kinds(reader, offset=0, length=None):
    if length is None:
        length = reader.virtual_size
    return [(e.kind, e.offset, e.length)
            for e in ext.merge(reader.block_status(offset, length))]


def read_disk(reader):
    """The layer alone, UNALLOCATED and ZERO as zeros."""
    out = bytearray(reader.virtual_size)
    for e in reader.block_status(0, reader.virtual_size):
        if e.kind == ext.DATA:
            out[e.offset:e.end] = reader.read_extent(e, 0, e.length)
    return bytes(out)


def pattern(seed, n):
    return hashlib.shake_256(b'%d' % seed).digest(n)


# -- CRC-32C -----------------------------------------------------------------

def test_crc32c_known_values():
    # RFC 3720 (iSCSI) B.4 test vectors and the usual check value.
    assert vhdx.crc32c(b'123456789') == 0xE3069283
    assert vhdx.crc32c(bytes(32)) == 0x8A9136AA
    assert vhdx.crc32c(b'\xff' * 32) == 0x62A8AB43
    assert vhdx.crc32c(bytes(range(32))) == 0x46DD794E
    assert vhdx.crc32c(b'') == 0


@pytest.mark.parametrize('n', [1, 7, 8, 9, 63, 4096, 4099])
def test_crc32c_matches_reference(n):
    data = os.urandom(n)
    assert vhdx.crc32c(data) == ref_crc32c(data)
    # incremental use gives the same result
    half = n // 2
    assert vhdx.crc32c(data[half:], vhdx.crc32c(data[:half])) == \
        ref_crc32c(data)


def test_crc32c_matches_fattools():
    """FATtools (PyPI) has its own CRC-32C: a second, independent opinion."""
    try:
        from FATtools.crc32c import crc_update
    except ImportError:
        msg = 'FATtools not importable; pip install FATtools==1.1.23'
        if os.environ.get('ANY2KVM_REQUIRE_TOOLS') == '1':
            pytest.fail(msg + ' (ANY2KVM_REQUIRE_TOOLS=1)', pytrace=False)
        pytest.skip(msg)
    data = os.urandom(10001)
    assert vhdx.crc32c(data) == crc_update(0xFFFFFFFF, data,
                                           len(data)) ^ 0xFFFFFFFF


# -- helpers ------------------------------------------------------------------

def test_bitmap_runs_lsb_first():
    runs = vhdx.bitmap_runs(b'\xff\xf0\x00\x01', 0, 32)
    assert runs == [(0, 8, True), (8, 4, False), (12, 4, True),
                    (16, 8, False), (24, 1, True), (25, 7, False)]
    assert vhdx.bitmap_runs(b'\x0f', 2, 4) == [(2, 2, True), (4, 2, False)]


def test_overlay_later_writes_win():
    o = vhdx.Overlay()
    o.apply(4096, 3 * 4096, b'a' * 8192)
    o.apply(0, 8192)                        # zeros over the start
    o.apply(12288, 16384, b'b' * 4096)
    o.apply(10000, 13000, b'c' * 3000)
    got = o.patch(b'x' * 20000, 0)
    want = (bytes(8192) + b'a' * (10000 - 8192) + b'c' * 3000
            + b'b' * (16384 - 13000) + b'x' * (20000 - 16384))
    assert got == want
    assert o.patch(b'y' * 10, 30000) == b'y' * 10
    assert o.patch(b'y' * 10, 8190) == b'\0\0' + b'a' * 8


# -- well-formed files --------------------------------------------------------

def test_dynamic_block_states(tmp_path):
    b = Builder(vsize=6 * MiB + 3 * 512, block=1 * MiB)
    b.payload(0, 6, pattern(1, 1000))
    b.payload(1, 2)                         # ZERO
    b.payload(2, 1)                         # UNDEFINED
    b.payload(3, 3)                         # UNMAPPED
    b.payload(6, 6, pattern(2, 1536))       # the last, partial block
    r = open_reader(b.write(tmp_path / 'd.vhdx'))
    assert r.subformat == 'dynamic'
    assert r.creator == 'unit test'
    assert r.virtual_size == 6 * MiB + 1536
    assert r.identity == DATA_WRITE_GUID
    assert r.parent_ref is None
    assert r.virtual_disk_id == 'cafecafe-0000-1111-2222-333344445555'
    assert kinds(r) == [(ext.DATA, 0, MiB), (ext.ZERO, MiB, 5 * MiB),
                        (ext.DATA, 6 * MiB, 1536)]
    disk = read_disk(r)
    assert disk[:1000] == pattern(1, 1000)
    assert disk[6 * MiB:] == pattern(2, 1536)
    assert r.allocated_bytes() == MiB + 1536


def test_fixed_subformat(tmp_path):
    b = Builder(vsize=2 * MiB, fixed=True)
    b.payload(0, 6, b'x')
    b.payload(1, 6, b'y')
    r = open_reader(b.write(tmp_path / 'f.vhdx'))
    assert r.subformat == 'fixed'
    assert [e.kind for e in ext.merge(r.block_status(0, 2 * MiB))] == [
        ext.DATA]


def test_differencing_states_and_bitmap(tmp_path):
    parent = {'parent_linkage': '{%s}' % PARENT_GUID.upper(),
              'relative_path': '..\\dir\\base.vhdx',
              'absolute_win32_path': 'C:\\VMs\\other-name.vhdx',
              'volume_path': '\\\\?\\Volume{0eba351e}\\VMs\\base.vhdx'}
    b = Builder(vsize=8 * MiB, block=2 * MiB, parent=parent)
    # block 0: partially present, sectors 1, 2 and 9 here; block 1 absent;
    # block 2: ZERO; block 3: fully present.
    b.payload(0, 7, pattern(3, 2 * MiB))
    b.payload(2, 2)
    b.payload(3, 6, pattern(4, 100))
    b.sector_bitmap(0, [1, 2, 9])
    r = open_reader(b.write(tmp_path / 'c.vhdx'))
    assert r.subformat == 'differencing'
    assert r.parent_ref.id == PARENT_GUID
    assert r.parent_ref.name_hints == ('base.vhdx', 'other-name.vhdx')
    assert r.parent_linkage2 is None
    assert kinds(r) == [
        (ext.UNALLOCATED, 0, 512), (ext.DATA, 512, 1024),
        (ext.UNALLOCATED, 1536, 9 * 512 - 1536), (ext.DATA, 9 * 512, 512),
        (ext.UNALLOCATED, 10 * 512, 4 * MiB - 10 * 512),
        (ext.ZERO, 4 * MiB, 2 * MiB), (ext.DATA, 6 * MiB, 2 * MiB)]
    e = [x for x in r.block_status(0, MiB) if x.kind == ext.DATA][0]
    assert r.read_extent(e, 0, 1024) == pattern(3, 2 * MiB)[512:1536]
    assert r.allocated_bytes() == 1536 + 2 * MiB


@pytest.mark.parametrize('state', [1, 2, 3])
def test_zero_states_hide_the_parent(tmp_path, state):
    """UNDEFINED, ZERO and UNMAPPED blocks of a child read as zeros, whatever
    the parent holds (letting the parent show through is a known bug)."""
    base = Builder(vsize=4 * MiB, block=1 * MiB)
    for blk in range(4):
        base.payload(blk, 6, pattern(10 + blk, MiB))
    base_path = base.write(tmp_path / 'base.vhdx')
    child = Builder(vsize=4 * MiB, block=1 * MiB,
                    parent={'parent_linkage': '{%s}' % DATA_WRITE_GUID,
                            'relative_path': '.\\base.vhdx'})
    child.payload(1, state)
    child_path = child.write(tmp_path / 'child.vhdx')
    # the two files have the same DataWriteGuid: give the child another one
    with open(child_path, 'r+b') as f:
        for off in (64 * KiB, 128 * KiB):
            f.seek(off)
            h = bytearray(f.read(4096))
            h[32:48] = guid_le(PARENT_GUID)
            f.seek(off)
            f.write(seal(h))
    leaf, parent = open_reader(child_path), open_reader(base_path)
    assert leaf.parent_ref.id == parent.identity
    chain = layer_chain.LayerChain([leaf, parent], ['child', 'base'])
    got = bytearray(4 * MiB)
    for e in chain.fold(0, 4 * MiB):
        if e.kind == ext.DATA:
            got[e.offset:e.end] = chain.layers[e.layer].read_extent(
                e, 0, e.length)
    want = bytearray(b''.join(pattern(10 + i, MiB) for i in range(4)))
    want[MiB:2 * MiB] = bytes(MiB)
    assert got == want


def test_chunk_interleave(tmp_path):
    """Block 16 of a disk with chunk ratio 16 is BAT entry 17; its sector
    bitmap is entry 33 (after the second chunk's 16 payload entries)."""
    bs = 256 * MiB
    b = Builder(vsize=18 * bs, block=bs,
                parent={'parent_linkage': PARENT_GUID})
    assert b.chunk_ratio == 16
    b.payload(16, 7, pattern(5, 4096))
    # chunk 1 bitmap: block 16 is its first block: sectors 0..7 set
    b.sector_bitmap(1, range(8))
    # the chunk 0 bitmap sets everything: it must not be used for block 16
    b.sector_bitmap(0, fill=0xFF)
    b.payload(15, 7, b'', None)
    r = open_reader(b.write(tmp_path / 'big.vhdx'))
    assert r.bat[17] & 7 == 7 and r.bat[33] & 7 == 6
    assert kinds(r, 16 * bs, bs) == [
        (ext.DATA, 16 * bs, 4096), (ext.UNALLOCATED, 16 * bs + 4096,
                                    bs - 4096)]
    assert kinds(r, 15 * bs, bs) == [(ext.DATA, 15 * bs, bs)]
    assert kinds(r, 17 * bs, bs) == [(ext.UNALLOCATED, 17 * bs, bs)]


def test_4k_logical_sectors(tmp_path):
    """4Kn: bits are 4 KiB sectors, the chunk ratio is 2^23 * 4096 / bs."""
    b = Builder(vsize=8 * MiB, block=2 * MiB, lss=4096, pss=4096,
                parent={'parent_linkage': PARENT_GUID})
    assert b.chunk_ratio == 16384
    b.payload(1, 7, pattern(6, 2 * MiB))
    # block 1 starts at sector 512 of the chunk: set its sectors 0 and 2
    b.sector_bitmap(0, [512, 514])
    r = open_reader(b.write(tmp_path / 'k.vhdx'))
    assert r.logical_sector_size == 4096
    assert kinds(r, 2 * MiB, 2 * MiB) == [
        (ext.DATA, 2 * MiB, 4096), (ext.UNALLOCATED, 2 * MiB + 4096, 4096),
        (ext.DATA, 2 * MiB + 8192, 4096),
        (ext.UNALLOCATED, 2 * MiB + 12288, 2 * MiB - 12288)]


def test_4k_sector_size_rejects_unaligned_virtual_size(tmp_path):
    b = Builder(vsize=8 * MiB + 512, lss=4096)
    with pytest.raises(exception.InvalidImage, match='multiple'):
        open_reader(b.write(tmp_path / 'k.vhdx'))


def test_probe(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    assert vhdx.VhdxReader.probe(fileio.FileView.open_path(p))
    (tmp_path / 'b').write_bytes(b'vhdxfilX' + bytes(100))
    assert not vhdx.VhdxReader.probe(
        fileio.FileView.open_path(str(tmp_path / 'b')))
    (tmp_path / 'c').write_bytes(b'')
    assert not vhdx.VhdxReader.probe(
        fileio.FileView.open_path(str(tmp_path / 'c')))


# -- headers ------------------------------------------------------------------

def _patch(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)


def _header_with(b, seq, **fields):
    h = bytearray(b.header(seq))
    for off, value in fields.values():
        h[off:off + len(value)] = value
    return seal(h)


def test_highest_sequence_header_wins(tmp_path):
    b = Builder()
    b.header_seq = (7, 3)
    p = b.write(tmp_path / 'a.vhdx')
    other = 'abcdefab-0000-0000-0000-000000000000'
    _patch(p, 128 * KiB, _header_with(b, 3, g=(32, guid_le(other))))
    assert open_reader(p).identity == DATA_WRITE_GUID
    _patch(p, 128 * KiB, _header_with(b, 8, g=(32, guid_le(other))))
    assert open_reader(p).identity == other


def test_one_corrupt_header_uses_the_other(tmp_path):
    b = Builder()
    b.header_seq = (1, 9)
    p = b.write(tmp_path / 'a.vhdx')
    _patch(p, 128 * KiB + 200, b'\x55')     # the newer one is corrupt
    r = open_reader(p)
    assert r.header.sequence_number == 1


def test_both_headers_corrupt(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    _patch(p, 64 * KiB + 100, b'\x01')
    _patch(p, 128 * KiB + 100, b'\x01')
    with pytest.raises(exception.InvalidImage,
                       match=r'a\.vhdx: VHDX header checksum mismatch '
                       r'\(both headers\)'):
        open_reader(p)


def test_equal_sequence_numbers(tmp_path):
    b = Builder()
    b.header_seq = (4, 4)
    p = b.write(tmp_path / 'a.vhdx')
    assert open_reader(p).header.sequence_number == 4   # identical: fine
    _patch(p, 128 * KiB, _header_with(
        b, 4, g=(32, guid_le('abcdefab-0000-0000-0000-000000000000'))))
    with pytest.raises(exception.InvalidImage, match='same sequence'):
        open_reader(p)


def test_unsupported_version(tmp_path):
    b = Builder()
    p = b.write(tmp_path / 'a.vhdx')
    for off in (64 * KiB, 128 * KiB):
        _patch(p, off, _header_with(b, 1, v=(66, b'\x02\x00')))
    with pytest.raises(exception.UnsupportedImage, match='version 2'):
        open_reader(p)


def test_not_a_vhdx(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    _patch(p, 0, b'vhdxfilz')
    with pytest.raises(exception.InvalidImage, match='identifier'):
        open_reader(p)


def test_too_small(tmp_path):
    (tmp_path / 'a.vhdx').write_bytes(b'vhdxfile' + bytes(5000))
    with pytest.raises(exception.InvalidImage, match='too small'):
        open_reader(tmp_path / 'a.vhdx')


# -- region table -------------------------------------------------------------

def test_first_region_table_corrupt_uses_the_copy(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    _patch(p, 192 * KiB + 1000, b'\x07')
    assert open_reader(p).virtual_size == 8 * MiB


def test_both_region_tables_corrupt(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    _patch(p, 192 * KiB + 1000, b'\x07')
    _patch(p, 256 * KiB + 1000, b'\x07')
    with pytest.raises(exception.InvalidImage,
                       match='region table checksum mismatch'):
        open_reader(p)


@pytest.mark.parametrize('region,match', [
    ((guid_le(BAT_GUID), 3 * MiB, MiB, 1), 'twice'),
    ((guid_le('12345678-1234-1234-1234-123456789abc'), 9 * MiB, MiB, 0),
     'outside the file'),
    ((guid_le('12345678-1234-1234-1234-123456789abc'), 2 * MiB, MiB, 0),
     'overlap'),
    ((guid_le('12345678-1234-1234-1234-123456789abc'), 1 * MiB, MiB, 0),
     'overlap'),
    ((guid_le('12345678-1234-1234-1234-123456789abc'), 4 * MiB + 4096, MiB,
      0), 'aligned'),
])
def test_bad_regions(tmp_path, region, match):
    b = Builder()
    b.extra_regions.append(region)
    with pytest.raises(exception.InvalidImage, match=match):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_unknown_required_region(tmp_path):
    b = Builder()
    b.payload(0, 6, b'')
    b.next_free += MiB
    b.extra_regions.append((guid_le('12345678-1234-1234-1234-123456789abc'),
                            b.next_free - MiB, MiB, 1))
    with pytest.raises(exception.UnsupportedImage, match='unknown required'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_unknown_optional_region_is_ignored(tmp_path):
    b = Builder()
    b.next_free += MiB
    b.extra_regions.append((guid_le('12345678-1234-1234-1234-123456789abc'),
                            b.next_free - MiB, MiB, 0))
    assert open_reader(b.write(tmp_path / 'a.vhdx')).virtual_size == 8 * MiB


def test_region_entry_count_bounded(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    for off in (192 * KiB, 256 * KiB):
        with open(p, 'rb') as f:
            f.seek(off)
            t = bytearray(f.read(64 * KiB))
        struct.pack_into('<I', t, 8, 5000)
        _patch(p, off, seal(t))
    with pytest.raises(exception.InvalidImage, match='5000 entries'):
        open_reader(p)


def test_missing_bat_region(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    for off in (192 * KiB, 256 * KiB):
        with open(p, 'rb') as f:
            f.seek(off)
            t = bytearray(f.read(64 * KiB))
        # second entry (the BAT): another GUID, not required
        t[48:64] = guid_le('12345678-1234-1234-1234-123456789abc')
        struct.pack_into('<I', t, 48 + 28, 0)
        _patch(p, off, seal(t))
    with pytest.raises(exception.InvalidImage, match='no BAT region'):
        open_reader(p)


# -- metadata -----------------------------------------------------------------

@pytest.mark.parametrize('block', [3 * MiB, 512 * KiB, 512 * MiB])
def test_block_size_refused(tmp_path, block):
    b = Builder(block=MiB)
    b.block = block
    with pytest.raises(exception.InvalidImage, match='power of two'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_logical_sector_size_refused(tmp_path):
    b = Builder()
    b.lss = 1024
    with pytest.raises(exception.InvalidImage, match='sector size 1024'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_unknown_required_metadata_item(tmp_path):
    b = Builder()
    b.extra_items.append(('12345678-1234-1234-1234-123456789abc', b'x', 4))
    with pytest.raises(exception.UnsupportedImage, match='metadata item'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_unknown_optional_metadata_item_is_ignored(tmp_path):
    b = Builder()
    b.extra_items.append(('12345678-1234-1234-1234-123456789abc', b'x', 0))
    assert open_reader(b.write(tmp_path / 'a.vhdx')).virtual_size == 8 * MiB


def test_metadata_item_outside_region(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    # the first entry (file parameters): offset 0xFFFF8 + 16 bytes
    _patch(p, META_OFFSET + 32 + 16, struct.pack('<II', MiB - 8, 16))
    with pytest.raises(exception.InvalidImage, match='outside the metadata'):
        open_reader(p)


def test_missing_virtual_disk_size(tmp_path):
    p = Builder().write(tmp_path / 'a.vhdx')
    # the second entry becomes an optional unknown item
    _patch(p, META_OFFSET + 64, guid_le('12345678-1234-1234-1234-1234567'
                                        '89abc'))
    _patch(p, META_OFFSET + 64 + 24, b'\0\0\0\0')
    with pytest.raises(exception.InvalidImage, match='virtual disk size'):
        open_reader(p)


def test_optional_items_may_be_missing(tmp_path):
    """Page 83 data and the physical sector size are not needed to read."""
    p = Builder().write(tmp_path / 'a.vhdx')
    for n in (3, 4):
        _patch(p, META_OFFSET + 32 + 32 * n, guid_le(
            '12345678-1234-1234-1234-12345678900%d' % n))
        _patch(p, META_OFFSET + 32 + 32 * n + 24, b'\0\0\0\0')
    r = open_reader(p)
    assert r.virtual_disk_id is None and r.physical_sector_size is None
    assert r.virtual_size == 8 * MiB


def test_differencing_without_locator(tmp_path):
    b = Builder()
    b.file_params = 2
    with pytest.raises(exception.InvalidImage, match='parent locator'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_locator_without_linkage(tmp_path):
    b = Builder(parent={'relative_path': '.\\p.vhdx'})
    with pytest.raises(exception.InvalidImage, match='parent_linkage'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_locator_linkage2_kept(tmp_path):
    b = Builder(parent={'parent_linkage': PARENT_GUID,
                        'parent_linkage2': '{%s}' % DATA_WRITE_GUID})
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert r.parent_ref == (PARENT_GUID, ())
    assert r.parent_linkage2 == '{%s}' % DATA_WRITE_GUID


# -- BAT ----------------------------------------------------------------------

def test_bat_entry_outside_the_file(tmp_path):
    b = Builder()
    b.payload(0, 6, b'x')
    b.bat[3] = (100 << 20) | 6
    with pytest.raises(exception.InvalidImage,
                       match='BAT entry for block 3 points outside the file'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_truncated_file(tmp_path):
    b = Builder()
    b.payload(0, 6, b'x')
    b.payload(1, 6, b'y')
    b.size = b.next_free - 4096
    with pytest.raises(exception.InvalidImage,
                       match='block 1 points outside the file'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_bat_entries_overlap(tmp_path):
    b = Builder()
    off = b.payload(0, 6, b'x')
    b.payload(5, 6, b'', offset=off)
    with pytest.raises(exception.InvalidImage, match='overlaps block 0'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


@pytest.mark.parametrize('offset,what', [
    (0, 'outside'), (LOG_OFFSET, 'the log'), (META_OFFSET, 'metadata'),
    (BAT_OFFSET, 'BAT')])
def test_bat_entry_over_structures(tmp_path, offset, what):
    b = Builder()
    b.payload(0, 6, b'x')
    b.bat[2] = offset | 6
    with pytest.raises(exception.InvalidImage, match=what):
        open_reader(b.write(tmp_path / 'a.vhdx'))


@pytest.mark.parametrize('state', [4, 5])
def test_bat_invalid_state(tmp_path, state):
    b = Builder()
    b.bat[1] = state
    with pytest.raises(exception.InvalidImage, match='invalid state %d'
                       % state):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_partially_present_without_parent(tmp_path):
    b = Builder()
    b.payload(0, 7, b'x')
    with pytest.raises(exception.InvalidImage, match='without parent'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_partially_present_without_bitmap(tmp_path):
    b = Builder(parent={'parent_linkage': PARENT_GUID})
    b.payload(0, 7, b'x')
    with pytest.raises(exception.InvalidImage, match='bitmap block is '
                       'missing'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_sector_bitmap_outside_the_file(tmp_path):
    b = Builder(parent={'parent_linkage': PARENT_GUID})
    b.bat[b.chunk_ratio] = (500 << 20) | 6
    with pytest.raises(exception.InvalidImage, match='sector bitmap 0 '
                       'points outside'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_bat_region_too_small(tmp_path):
    b = Builder(vsize=1 << 40, block=MiB)     # 1 Mi entries need 8 MiB
    b.bat_length = MiB
    b.next_free = 5 * MiB
    with pytest.raises(exception.InvalidImage, match='too small'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


# -- log replay ---------------------------------------------------------------

def _dirty(b, *entries):
    """Put entries (position, bytes) in the log and mark the log dirty."""
    b.log_guid = guid_le(LOG_GUID)
    for pos, entry in entries:
        b.add_log_entry(pos, entry)


def _bat_sector(b, updates):
    """The first 4 KiB of the BAT with ``updates`` {index: value}."""
    raw = bytearray(b.bat_bytes()[:4096].ljust(4096, b'\0'))
    for idx, value in updates.items():
        struct.pack_into('<Q', raw, idx * 8, value)
    return bytes(raw)


def test_log_data_write_is_replayed_in_memory(tmp_path):
    b = Builder()
    off = b.payload(0, 6, pattern(7, MiB))
    new = pattern(8, 4096)
    _dirty(b, (0, log_entry(5, 0, [(off + 8192, new)],
                            flushed=b.next_free, last=b.next_free)))
    p = b.write(tmp_path / 'a.vhdx')
    before = hashlib.sha256(open(p, 'rb').read()).hexdigest()
    r = open_reader(p)
    assert r.log_entries_replayed == 1
    disk = read_disk(r)
    assert disk[8192:12288] == new
    assert disk[:8192] == pattern(7, MiB)[:8192]
    assert disk[12288:MiB] == pattern(7, MiB)[12288:]
    assert hashlib.sha256(open(p, 'rb').read()).hexdigest() == before


def test_log_replayed_before_the_bat_is_parsed(tmp_path):
    """The BAT on disk points outside the file; the log fixes it."""
    b = Builder()
    data_off = b.alloc(MiB)
    b.bat[0] = (900 << 20) | 6
    sector = _bat_sector(b, {0: data_off | 6, 1: 2})
    _dirty(b, (0, log_entry(3, 0, [(BAT_OFFSET, sector)])))
    b.pieces[data_off] = pattern(9, 5000)
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert kinds(r, 0, 3 * MiB) == [(ext.DATA, 0, MiB),
                                    (ext.ZERO, MiB, 2 * MiB)]
    assert read_disk(r)[:5000] == pattern(9, 5000)


def test_log_changes_metadata(tmp_path):
    b = Builder(vsize=8 * MiB)
    sector = bytearray(b.metadata()[64 * KiB:68 * KiB])
    struct.pack_into('<Q', sector, 8, 4 * MiB)     # virtual disk size
    _dirty(b, (0, log_entry(3, 0, [(META_OFFSET + 64 * KiB,
                                    bytes(sector))])))
    assert open_reader(b.write(tmp_path / 'a.vhdx')).virtual_size == 4 * MiB


def test_log_zero_descriptor(tmp_path):
    b = Builder()
    off = b.payload(0, 6, pattern(10, MiB))
    _dirty(b, (0, log_entry(3, 0, [(off + 4096, 3 * 4096)])))
    disk = read_disk(open_reader(b.write(tmp_path / 'a.vhdx')))
    want = bytearray(pattern(10, MiB))
    want[4096:4 * 4096] = bytes(3 * 4096)
    assert disk[:MiB] == want


def test_log_sequence_applied_in_order(tmp_path):
    b = Builder()
    off = b.payload(0, 6, bytes(MiB))
    e1 = log_entry(10, 0, [(off, b'1' * 4096), (off + 4096, b'1' * 4096)])
    e2 = log_entry(11, 0, [(off, b'2' * 4096)])
    e3 = log_entry(12, 0, [(off + 4096, 8192)])
    _dirty(b, (0, e1), (len(e1), e2), (len(e1) + len(e2), e3))
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert r.log_entries_replayed == 3
    disk = read_disk(r)
    assert disk[:4096] == b'2' * 4096
    assert disk[4096:12288] == bytes(8192)


def test_log_torn_last_entry_is_ignored(tmp_path):
    """Entries 10 and 11 are complete; 12 was torn (bad CRC): it was never
    committed, the active sequence is 10-11."""
    b = Builder()
    off = b.payload(0, 6, bytes(MiB))
    e1 = log_entry(10, 0, [(off, b'1' * 4096)])
    e2 = log_entry(11, 0, [(off + 4096, b'2' * 4096)])
    e3 = log_entry(12, 0, [(off, b'3' * 4096)], corrupt=True)
    _dirty(b, (0, e1), (8192, e2), (16384, e3))
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert r.log_entries_replayed == 2
    disk = read_disk(r)
    assert disk[:8192] == b'1' * 4096 + b'2' * 4096


def test_log_sole_corrupt_entry_replays_nothing(tmp_path):
    """A single entry with a bad CRC: no write was committed; the file is
    read as it is (what it was before the interrupted write)."""
    b = Builder()
    off = b.payload(0, 6, pattern(11, MiB))
    _dirty(b, (0, log_entry(10, 0, [(off, b'3' * 4096)], corrupt=True)))
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert r.log_entries_replayed == 0
    assert read_disk(r)[:MiB] == pattern(11, MiB)


@pytest.mark.parametrize('breakage', ['guid', 'data-seq', 'signature'])
def test_log_invalid_entries_are_not_replayed(tmp_path, breakage):
    b = Builder()
    off = b.payload(0, 6, pattern(12, MiB))
    kw = {}
    if breakage == 'guid':
        kw['guid'] = '12345678-1234-1234-1234-123456789abc'
    elif breakage == 'data-seq':
        kw['data_seq'] = 99
    entry = log_entry(10, 0, [(off, b'3' * 4096)], **kw)
    if breakage == 'signature':
        entry = seal(b'logx' + entry[4:])
    _dirty(b, (0, entry))
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert r.log_entries_replayed == 0
    assert read_disk(r)[:MiB] == pattern(12, MiB)


def test_log_tail_bounds_the_active_sequence(tmp_path):
    """Entry 6's tail is itself: entry 5 before it was already flushed and is
    not part of the active sequence."""
    b = Builder()
    off = b.payload(0, 6, bytes(MiB))
    e5 = log_entry(5, 0, [(off, b'5' * 4096)])
    e6 = log_entry(6, 8192, [(off + 4096, b'6' * 4096)])
    _dirty(b, (0, e5), (8192, e6))
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert r.log_entries_replayed == 1
    disk = read_disk(r)
    assert disk[:8192] == bytes(4096) + b'6' * 4096


def test_log_head_with_missing_tail_is_not_used(tmp_path):
    """Entry 8 says its sequence starts at entry 7's position, but entry 7 is
    corrupt: 8 cannot be replayed; entry 6 (complete on its own) is."""
    b = Builder()
    off = b.payload(0, 6, bytes(MiB))
    e6 = log_entry(6, 0, [(off, b'6' * 4096)])
    e7 = log_entry(7, 8192, [(off, b'7' * 4096)], corrupt=True)
    e8 = log_entry(8, 8192, [(off, b'8' * 4096)])
    _dirty(b, (0, e6), (8192, e7), (16384, e8))
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert read_disk(r)[:4096] == b'6' * 4096


def test_log_entry_wraps_around_the_log(tmp_path):
    b = Builder()
    off = b.payload(0, 6, bytes(MiB))
    entry = log_entry(20, LOG_LENGTH - 4096, [(off, b'w' * 4096)])
    assert len(entry) == 8192
    _dirty(b, (LOG_LENGTH - 4096, entry))
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    assert r.log_entries_replayed == 1
    assert read_disk(r)[:4096] == b'w' * 4096


def test_log_extends_the_file_to_last_file_offset(tmp_path):
    """A block allocated at the end of the file, whose BAT update is in the
    log and whose end was never written: it reads as zeros."""
    b = Builder()
    end = b.next_free
    sector = _bat_sector(b, {1: end | 6})
    last = end + MiB
    _dirty(b, (0, log_entry(3, 0, [(BAT_OFFSET, sector),
                                   (end, b'e' * 4096)],
                            flushed=end, last=last)))
    r = open_reader(b.write(tmp_path / 'a.vhdx'))
    disk = read_disk(r)
    assert disk[MiB:MiB + 4096] == b'e' * 4096
    assert disk[MiB + 4096:2 * MiB] == bytes(MiB - 4096)


def test_log_write_beyond_last_file_offset(tmp_path):
    b = Builder()
    end = b.next_free
    _dirty(b, (0, log_entry(3, 0, [(end + 5 * MiB, b'e' * 4096)],
                            last=end)))
    with pytest.raises(exception.InvalidImage,
                       match='log entry 3 writes at .* beyond the end'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_log_flushed_offset_beyond_the_file(tmp_path):
    b = Builder()
    _dirty(b, (0, log_entry(3, 0, [(BAT_OFFSET, _bat_sector(b, {}))],
                            flushed=b.next_free + 2 * MiB)))
    with pytest.raises(exception.InvalidImage, match='truncated'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


@pytest.mark.parametrize('target', [64 * KiB, LOG_OFFSET + 8192])
def test_log_write_over_headers_or_log(tmp_path, target):
    b = Builder()
    _dirty(b, (0, log_entry(3, 0, [(target, bytes(4096))])))
    with pytest.raises(exception.InvalidImage, match='headers or the log'):
        open_reader(b.write(tmp_path / 'a.vhdx'))


def test_log_guid_without_log_region(tmp_path):
    b = Builder()
    b.log_guid = guid_le(LOG_GUID)
    p = b.write(tmp_path / 'a.vhdx')
    for off in (64 * KiB, 128 * KiB):
        _patch(p, off, _header_with(b, 1 if off == 64 * KiB else 2,
                                    n=(68, b'\0\0\0\0')))
    with pytest.raises(exception.InvalidImage, match='log of length 0'):
        open_reader(p)


def test_log_region_outside_the_file(tmp_path):
    b = Builder()
    p = b.write(tmp_path / 'a.vhdx')
    for seq, off in ((1, 64 * KiB), (2, 128 * KiB)):
        _patch(p, off, _header_with(b, seq, o=(72, struct.pack(
            '<Q', 64 * MiB))))
    with pytest.raises(exception.InvalidImage, match='log region'):
        open_reader(p)


def _cli_dirty_log(tmp_path, monkeypatch):
    """A VHDX whose log holds no complete entry (a warning, no error), for
    the command line run in this process: no guest inspection, and the
    root logger's handlers the run's own."""
    import logging
    monkeypatch.setattr(logging.getLogger(), 'handlers', [])
    monkeypatch.setenv('ANY2KVM_INSPECT', '0')
    b = Builder()
    off = b.payload(0, 6, pattern(11, MiB))
    _dirty(b, (0, log_entry(10, 0, [(off, b'3' * 4096)], corrupt=True)))
    return b.write(tmp_path / 'a.vhdx')


@pytest.mark.parametrize('config', [False, True], ids=['', 'config'])
@pytest.mark.parametrize('refused', [False, True], ids=['read', 'refused'])
def test_cli_log_warning_only_on_success(tmp_path, capsys, monkeypatch,
                                         refused, config):
    """A log with no complete entry is warned about; when the file is then
    refused (here: a byte appended, not whole sectors), the error line is
    printed alone.  The same with a configuration file that sets none of
    oslo.log's options."""
    from any2kvm_os.cmd import any2kvm
    path = _cli_dirty_log(tmp_path, monkeypatch)
    if refused:
        with open(path, 'ab') as f:
            f.write(b'\0')
    out = tmp_path / 'out'
    out.mkdir()
    options = []
    if config:
        conf = tmp_path / 'any2kvm.conf'
        conf.write_text('[any2kvm]\nmax_chain_depth = 8\n')
        options = ['--config-file', str(conf)]
    rc = any2kvm.main(options + ['convert', str(path),
                                 str(out / 'disk.raw')])
    lines = [ln for ln in capsys.readouterr().err.splitlines()
             if ln.strip()]
    if refused:
        assert rc == 1
        assert len(lines) == 1, lines
        assert lines[0].startswith('any2kvm: error: ')
        assert 'whole 512-byte sectors' in lines[0], lines
    else:
        assert rc == 0
        assert len(lines) == 1 and 'no complete entry' in lines[0], lines
        assert lines[0].startswith('any2kvm: WARNING: ')


def test_cli_logs_through_oslo_log_when_configured_to(tmp_path, capsys,
                                                      monkeypatch):
    """A configuration file setting an oslo.log option (log_file) gets
    oslo.log: the warning is in the log file."""
    import logging
    from any2kvm_os.cmd import any2kvm
    path = _cli_dirty_log(tmp_path, monkeypatch)
    log_file = tmp_path / 'any2kvm.log'
    conf = tmp_path / 'any2kvm.conf'
    conf.write_text('[DEFAULT]\nlog_file = %s\n' % log_file)
    try:
        rc = any2kvm.main(['--config-file', str(conf), 'convert', str(path),
                           str(tmp_path / 'disk.raw')])
    finally:
        for h in logging.getLogger().handlers:
            h.close()
    assert rc == 0, capsys.readouterr().err
    assert 'no complete entry' in log_file.read_text()
