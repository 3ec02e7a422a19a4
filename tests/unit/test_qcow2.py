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

"""Unit tests of the qcow2 reader on small images built here.

The builder below writes the layout of QEMU's docs/interop/qcow2.txt
directly (cluster 0: header, extensions, backing name; cluster 1: the L1
table; then L2 tables and data), so that each field can be set to a bad
value.  Images written by qemu-img are the functional tests' business.
"""

import logging
import os
import struct
import sys
import zlib

import pytest

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.formats import base
from any2kvm_os.formats import qcow2

KiB, MiB = 1 << 10, 1 << 20
COPIED = 1 << 63


def deflate(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -12)
    return c.compress(data) + c.flush()


class Image(object):
    """A qcow2 image under construction."""

    def __init__(self, size, cluster_bits=16, version=3, extended_l2=False,
                 incompatible=0):
        self.size = size
        self.cb = cluster_bits
        self.cs = 1 << cluster_bits
        self.version = version
        self.extended_l2 = extended_l2
        self.incompatible = incompatible | (
            qcow2.INCOMPAT_EXTL2 if extended_l2 else 0)
        self.header_length = 112 if version == 3 else 72
        self.compression_type = 0
        self.crypt = 0
        self.l2_bits = cluster_bits - (4 if extended_l2 else 3)
        span = 1 << (cluster_bits + self.l2_bits)
        self.l1_size = -(-size // span)
        self.l1_offset = self.cs
        self.l1 = [0] * self.l1_size
        self.l2 = {}            # l1 index -> {entry index: (entry, bitmap)}
        self.extensions = []    # (type, bytes)
        self.backing = None
        self.overrides = {}
        # cluster 0 header, cluster 1 L1 (grown if needed), then the rest
        l1_clusters = max(1, -(-self.l1_size * 8 // self.cs))
        self.file = bytearray((1 + l1_clusters) * self.cs)

    def alloc(self, length=None):
        """A new cluster, or ``length`` bytes at the end of the file."""
        if length is None:
            self.file += bytes(-len(self.file) % self.cs)
            length = self.cs
        off = len(self.file)
        self.file += bytes(length)
        return off

    def table(self, vcluster):
        index, i = divmod(vcluster, 1 << self.l2_bits)
        if not self.l1[index]:
            self.l1[index] = self.alloc() | COPIED
        return index, i

    def set(self, vcluster, entry, bitmap=0):
        index, i = self.table(vcluster)
        self.l2.setdefault(index, {})[i] = (entry, bitmap)

    def data(self, vcluster, payload, bitmap=0):
        self.table(vcluster)
        off = self.alloc()
        self.file[off:off + len(payload)] = payload
        self.set(vcluster, off | COPIED, bitmap)
        return off

    def compressed(self, vcluster, payload, raw=None):
        self.table(vcluster)
        blob = deflate(payload) if raw is None else raw
        off = self.alloc(len(blob))
        self.file[off:off + len(blob)] = blob
        shift = 62 - (self.cb - 8)
        sectors = ((off & 511) + len(blob) + 511) // 512
        self.set(vcluster, (1 << 62) | ((sectors - 1) << shift) | off)
        return off

    def build(self):
        f = self.file
        for index, entries in self.l2.items():
            table = self.l1[index] & qcow2.OFFSET_MASK
            for i, (entry, bitmap) in entries.items():
                if self.extended_l2:
                    struct.pack_into('>QQ', f, table + 16 * i, entry, bitmap)
                else:
                    struct.pack_into('>Q', f, table + 8 * i, entry)
        for i, entry in enumerate(self.l1):
            struct.pack_into('>Q', f, self.l1_offset + 8 * i, entry)
        exts = b''
        for kind, payload in self.extensions:
            exts += struct.pack('>II', kind, len(payload)) + payload
            exts += bytes(-len(payload) % 8)
        exts += struct.pack('>II', 0, 0)
        boff = bsize = 0
        if self.backing is not None:
            boff = self.header_length + len(exts)
            bsize = len(self.backing)
            f[boff:boff + bsize] = self.backing
        f[self.header_length:self.header_length + len(exts)] = exts
        fields = dict(
            magic=b'QFI\xfb', version=self.version, boff=boff, bsize=bsize,
            cb=self.cb, size=self.size, crypt=self.crypt,
            l1_size=self.l1_size, l1_offset=self.l1_offset, rt_offset=0,
            rt_clusters=0, nb_snapshots=0, snapshots_offset=0,
            incompatible=self.incompatible, compatible=0, autoclear=0,
            refcount_order=4, header_length=self.header_length,
            compression_type=self.compression_type)
        fields.update(self.overrides)
        struct.pack_into(
            '>4sIQIIQIIQQIIQ', f, 0, fields['magic'], fields['version'],
            fields['boff'], fields['bsize'], fields['cb'], fields['size'],
            fields['crypt'], fields['l1_size'], fields['l1_offset'],
            fields['rt_offset'], fields['rt_clusters'],
            fields['nb_snapshots'], fields['snapshots_offset'])
        if self.version == 3:
            struct.pack_into('>QQQIIB', f, 72, fields['incompatible'],
                             fields['compatible'], fields['autoclear'],
                             fields['refcount_order'],
                             fields['header_length'],
                             fields['compression_type'])
        return bytes(f)


@pytest.fixture
def opened(tmp_path):
    views = []

    def open_(img, name='disk.qcow2', opener=None):
        data = img if isinstance(img, bytes) else img.build()
        p = tmp_path / name
        p.write_bytes(data)
        view = fileio.FileView.open_path(str(p))
        views.append(view)
        return qcow2.Qcow2Reader(view, opener=opener)
    yield open_
    for v in views:
        v.close()


def refused(opened, img, pattern, exc=exception.Any2KvmError):
    with pytest.raises(exc) as e:
        opened(img)
    msg = str(e.value)
    assert 'disk.qcow2' in msg, msg
    assert '\n' not in msg
    assert pattern in msg, msg
    return msg


def status(reader, offset=0, length=None):
    if length is None:
        length = reader.virtual_size
    return [(e.kind, e.offset, e.length)
            for e in reader.block_status(offset, length)]


def read_all(reader):
    out = bytearray(reader.virtual_size)
    for e in reader.block_status(0, reader.virtual_size):
        if e.kind == ext.DATA:
            out[e.offset:e.end] = reader.read_extent(e, 0, e.length)
    return bytes(out)


# -- probe and header ---------------------------------------------------------

def test_probe(tmp_path):
    p = tmp_path / 'x'
    p.write_bytes(Image(MiB).build())
    with fileio.FileView.open_path(str(p)) as v:
        assert qcow2.Qcow2Reader.probe(v)
    p.write_bytes(b'QFI\xfa' + bytes(600))
    with fileio.FileView.open_path(str(p)) as v:
        assert not qcow2.Qcow2Reader.probe(v)


@pytest.mark.parametrize('version', [2, 3])
def test_empty_image(opened, version):
    r = opened(Image(3 * MiB + 512, version=version))
    assert r.virtual_size == 3 * MiB + 512
    assert r.subformat == 'v%d' % version
    assert r.identity is None
    assert r.parent_ref is None
    assert r.creator is None
    assert status(r) == [(ext.UNALLOCATED, 0, 3 * MiB + 512)]
    assert r.allocated_bytes() == 0


def test_zero_size(opened):
    r = opened(Image(0))
    assert r.virtual_size == 0
    assert status(r) == []


@pytest.mark.parametrize('cluster_bits', [9, 12, 16, 21])
def test_data_zero_unallocated(opened, cluster_bits):
    img = Image(40 * (1 << cluster_bits) + 300, cluster_bits=cluster_bits)
    cs = img.cs
    img.data(1, b'A' * cs)
    img.data(2, b'B' * cs)     # contiguous in the file: one run
    img.set(3, qcow2.L2_ZERO)
    img.set(4, qcow2.L2_ZERO | img.alloc())   # preallocated zero
    img.data(40, b'C' * cs)    # last, partial cluster
    r = opened(img)
    assert status(r) == [
        (ext.UNALLOCATED, 0, cs), (ext.DATA, cs, 2 * cs),
        (ext.ZERO, 3 * cs, 2 * cs), (ext.UNALLOCATED, 5 * cs, 35 * cs),
        (ext.DATA, 40 * cs, 300)]
    data = read_all(r)
    assert data[cs:2 * cs] == b'A' * cs
    assert data[2 * cs:3 * cs] == b'B' * cs
    assert data[40 * cs:] == b'C' * 300
    assert r.allocated_bytes() == 2 * cs + 300


def test_status_subrange_and_clipping(opened):
    img = Image(4 * 64 * KiB)
    img.data(1, bytes(range(256)) * 256)
    r = opened(img)
    st = list(r.block_status(64 * KiB + 100, 10 * MiB))
    assert [(e.kind, e.offset, e.length) for e in st] == [
        (ext.DATA, 64 * KiB + 100, 64 * KiB - 100),
        (ext.UNALLOCATED, 128 * KiB, 128 * KiB)]
    assert r.read_extent(st[0], 0, 4) == bytes([100, 101, 102, 103])
    assert list(r.block_status(4 * 64 * KiB, 10)) == []


def test_l2_spanning_many_tables(opened):
    # 512-byte clusters: one L2 table covers 32 KiB.
    img = Image(200 * KiB, cluster_bits=9)
    for c in (0, 63, 64, 65, 399):
        img.data(c, bytes([c % 256 + 1]) * 512)
    r = opened(img)
    data = read_all(r)
    for c in (0, 63, 64, 65, 399):
        assert data[c * 512:(c + 1) * 512] == bytes([c % 256 + 1]) * 512
    assert data[512:63 * 512] == bytes(62 * 512)


def test_l2_cache_is_bounded(opened, monkeypatch):
    monkeypatch.setattr(qcow2, 'L2_CACHE_BYTES', 0)
    img = Image(MiB, cluster_bits=9)
    for c in range(0, 2048, 64):
        img.data(c, b'x' * 512)
    r = opened(img)
    assert r.allocated_bytes() == 32 * 512
    assert len(r._l2_cache) <= 2


def test_zero_flag_in_version_2_reads_as_zeros(opened):
    # QEMU's qcow2_get_cluster_type does not look at the version.
    img = Image(MiB, version=2)
    img.set(0, qcow2.L2_ZERO)
    assert status(opened(img))[0] == (ext.ZERO, 0, 64 * KiB)


# -- compressed clusters ------------------------------------------------------

@pytest.mark.parametrize('cluster_bits', [9, 16, 21])
def test_compressed(opened, cluster_bits):
    img = Image(8 << cluster_bits, cluster_bits=cluster_bits)
    cs = img.cs
    one = (b'compressed one ' * cs)[:cs]
    two = (b'and two, ' * cs)[:cs]
    img.alloc(100)             # compressed data need not be aligned
    img.compressed(1, one)
    img.compressed(2, two)
    img.data(3, b'D' * cs)
    r = opened(img)
    st = list(r.block_status(0, 8 * cs))
    assert [(e.kind, e.offset, e.length) for e in st] == [
        (ext.UNALLOCATED, 0, cs), (ext.DATA, cs, cs), (ext.DATA, 2 * cs, cs),
        (ext.DATA, 3 * cs, cs), (ext.UNALLOCATED, 4 * cs, 4 * cs)]
    assert r.read_extent(st[1], 0, cs) == one
    assert r.read_extent(st[1], 7, 5) == one[7:12]
    assert r.read_extent(st[2], cs - 3, 3) == two[-3:]
    # an extent starting inside the cluster
    mid, = r.block_status(2 * cs + 9, 4)
    assert r.read_extent(mid, 0, 4) == two[9:13]
    assert r.allocated_bytes() == 3 * cs


def test_compressed_last_cluster_may_end_past_eof(opened):
    img = Image(MiB)
    payload = b'tail ' * (64 * KiB // 5) + b'x'
    img.compressed(0, payload)
    data = img.build()
    # drop the padding of the last sector: QEMU reads zeros there
    blob = deflate(payload)
    end = data.rindex(blob) + len(blob)
    r = opened(data[:end])
    assert read_all(r)[:64 * KiB] == payload


def test_compressed_garbage_is_refused_when_read(opened):
    img = Image(MiB)
    img.compressed(0, None, raw=b'\xff' * 700)
    r = opened(img)
    e, _ = r.block_status(0, MiB)
    with pytest.raises(exception.InvalidImage, match='decompress'):
        r.read_extent(e, 0, 10)


def test_compressed_short_stream_is_refused(opened):
    img = Image(MiB)
    img.compressed(0, b'only 1 KiB' * 100)
    r = opened(img)
    e, _ = r.block_status(0, MiB)
    with pytest.raises(exception.InvalidImage, match='65536 bytes'):
        r.read_extent(e, 0, 10)


def test_compressed_outside_file(opened):
    img = Image(MiB)
    img.set(0, (1 << 62) | (1 << 40))
    r = opened(img)
    with pytest.raises(exception.InvalidImage, match='outside the file'):
        list(r.block_status(0, MiB))


def test_zstd_without_module(opened, monkeypatch):
    monkeypatch.setitem(sys.modules, 'zstandard', None)
    img = Image(MiB, incompatible=qcow2.INCOMPAT_COMPRESSION)
    img.compression_type = 1
    refused(opened, img, 'zstandard')


def test_unknown_compression_type(opened):
    img = Image(MiB, incompatible=qcow2.INCOMPAT_COMPRESSION)
    img.compression_type = 7
    refused(opened, img, 'compression type 7')


def test_compression_type_without_feature_bit(opened):
    img = Image(MiB)
    img.compression_type = 1
    refused(opened, img, 'disagrees')


# -- extended L2 entries ------------------------------------------------------

def test_subclusters(opened):
    img = Image(MiB, extended_l2=True)      # 2 KiB subclusters
    sc = 2 * KiB
    payload = bytes(range(256)) * 256
    alloc = 0b1011          # subclusters 0, 1, 3
    zero = 0b10000          # subcluster 4
    img.data(0, payload, bitmap=alloc | zero << 32)
    img.set(1, 0, bitmap=0xFFFFFFFF << 32)   # all zero, no host cluster
    r = opened(img)
    assert status(r, 0, 2 * 64 * KiB) == [
        (ext.DATA, 0, 2 * sc), (ext.UNALLOCATED, 2 * sc, sc),
        (ext.DATA, 3 * sc, sc), (ext.ZERO, 4 * sc, sc),
        (ext.UNALLOCATED, 5 * sc, 64 * KiB - 5 * sc),
        (ext.ZERO, 64 * KiB, 64 * KiB)]
    data = read_all(r)
    assert data[:2 * sc] == payload[:2 * sc]
    assert data[3 * sc:4 * sc] == payload[3 * sc:4 * sc]
    assert data[2 * sc:3 * sc] == bytes(sc)


def test_subclusters_last_cluster_ends_with_its_allocated_part(opened):
    # qemu writes no more of a cluster than its allocated subclusters:
    # the file may end there (qemu-io "write 0 100k" on an extended-L2
    # image).  Cut inside an allocated subcluster, it is refused.
    sc = 2 * KiB
    img = Image(MiB, extended_l2=True)
    img.data(0, b'a' * 64 * KiB, bitmap=0xFFFFFFFF)
    host = img.data(1, b'b' * 3 * sc, bitmap=0b111)
    data = img.build()
    r = opened(data[:host + 3 * sc])
    assert status(r, 0, 2 * 64 * KiB) == [
        (ext.DATA, 0, 64 * KiB + 3 * sc),
        (ext.UNALLOCATED, 64 * KiB + 3 * sc, 64 * KiB - 3 * sc)]
    assert read_all(r)[64 * KiB:64 * KiB + 3 * sc + 1] == b'b' * 3 * sc + \
        b'\0'
    r = opened(data[:host + 2 * sc + 512])
    with pytest.raises(exception.InvalidImage, match='beyond the end'):
        list(r.block_status(0, MiB))


def test_subclusters_allocated_and_zero(opened):
    img = Image(MiB, extended_l2=True)
    img.data(0, b'x', bitmap=1 | 1 << 32)
    r = opened(img)
    with pytest.raises(exception.InvalidImage, match='both allocated'):
        list(r.block_status(0, MiB))


def test_subclusters_allocated_without_host(opened):
    img = Image(MiB, extended_l2=True)
    img.set(0, 0, bitmap=1)
    r = opened(img)
    with pytest.raises(exception.InvalidImage, match='no host cluster'):
        list(r.block_status(0, MiB))


def test_subclusters_need_16k_clusters(opened):
    refused(opened, Image(MiB, cluster_bits=13, extended_l2=True),
            'at least 16 KiB')


# -- features -----------------------------------------------------------------

def test_dirty_is_read_with_a_warning(opened, caplog):
    img = Image(MiB, incompatible=qcow2.INCOMPAT_DIRTY)
    img.data(0, b'd' * 10)
    with caplog.at_level(logging.WARNING):
        r = opened(img)
    assert r.dirty
    assert 'dirty' in caplog.text
    assert read_all(r)[:10] == b'd' * 10


def test_corrupt_bit(opened):
    refused(opened, Image(MiB, incompatible=qcow2.INCOMPAT_CORRUPT),
            'marked corrupt')


def test_external_data_file_bit(opened):
    refused(opened, Image(MiB, incompatible=qcow2.INCOMPAT_DATA_FILE),
            'external data file')


def test_external_data_file_extension(opened):
    img = Image(MiB)
    img.extensions.append((qcow2.EXT_DATA_FILE, b'/dev/sda'))
    assert '/dev/sda' in refused(opened, img, 'external data file')


def test_unknown_incompatible_feature_named(opened):
    img = Image(MiB, incompatible=1 << 9)
    entry = struct.pack('>BB46s', 0, 9, b'teleportation')
    img.extensions.append((qcow2.EXT_FEATURE_TABLE, entry))
    refused(opened, img, 'bit 9 (teleportation)')


def test_encrypted(opened):
    img = Image(MiB)
    img.crypt = 2
    refused(opened, img, 'encrypted', exception.UnsupportedImage)


def test_unknown_extensions_and_bitmaps_ignored(opened):
    img = Image(MiB)
    img.extensions += [(qcow2.EXT_BITMAPS, bytes(24)),
                       (0x12345678, b'whatever')]
    assert opened(img).virtual_size == MiB


# -- header bounds ------------------------------------------------------------

@pytest.mark.parametrize('field,value,pattern', [
    ('version', 1, 'version 1'),
    ('version', 4, 'version 4'),
    ('cb', 8, 'cluster_bits 8'),
    ('cb', 22, 'cluster_bits 22'),
    ('header_length', 100, 'header length 100'),
    ('header_length', 108, 'header length 108'),
    ('size', 1 << 60, 'absurd'),
    ('size', 1 << 40, 'L1 table has 1 entries'),
    ('l1_size', qcow2.MAX_L1_ENTRIES + 1, 'larger than the limit'),
    ('l1_offset', 65536 + 8, 'not cluster aligned'),
    ('l1_offset', 1 << 40, 'beyond the end of the file'),
    ('l1_offset', 0, 'overlaps the header'),
    ('refcount_order', 7, 'refcount_order'),
    ('bsize', 1024, 'too long'),
])
def test_header_bounds(opened, field, value, pattern):
    img = Image(MiB)
    img.backing = b'base.qcow2'
    img.overrides[field] = value
    refused(opened, img, pattern)


def test_header_length_beyond_cluster(opened):
    img = Image(MiB, cluster_bits=9)
    img.overrides['header_length'] = 520
    refused(opened, img, 'exceeds the cluster size')


def test_truncated_header(opened):
    refused(opened, Image(MiB).build()[:80], 'truncated')


def test_extension_overruns(opened):
    img = Image(MiB)
    img.extensions.append((0x1234, b''))
    data = bytearray(img.build())
    struct.pack_into('>I', data, 112 + 4, 70000)
    refused(opened, bytes(data), 'overruns')


def test_too_many_extensions(opened, monkeypatch):
    monkeypatch.setattr(qcow2, 'MAX_EXTENSIONS', 3)
    img = Image(MiB)
    img.extensions += [(0x1234, b'')] * 4
    refused(opened, img, 'more than 3')


def test_backing_format_too_long(opened):
    img = Image(MiB)
    img.backing = b'base.qcow2'
    img.extensions.append((qcow2.EXT_BACKING_FORMAT, b'q' * 16))
    refused(opened, img, 'backing format name')


# -- tables -------------------------------------------------------------------

def test_l1_entry_outside(opened):
    img = Image(MiB)
    img.l1[0] = 1 << 40
    refused(opened, img, 'L1 entry 0 points beyond the end')


def test_l1_entry_unaligned(opened):
    img = Image(MiB)
    img.l1[0] = 3 * 65536 + 512
    img.alloc()
    img.alloc()
    refused(opened, img, 'not cluster aligned')


def test_data_cluster_unaligned(opened):
    img = Image(MiB)
    off = img.data(0, b'x')
    img.set(0, (off + 512) | COPIED)
    r = opened(img)
    with pytest.raises(exception.InvalidImage, match='unaligned'):
        list(r.block_status(0, MiB))


def test_data_cluster_beyond_eof(opened):
    img = Image(MiB)
    img.set(0, (1 << 40) | COPIED)
    r = opened(img)
    with pytest.raises(exception.InvalidImage, match='beyond the end'):
        list(r.block_status(0, MiB))


def test_run_of_clusters_is_one_extent_and_checked_in_order(opened):
    # Data clusters stored one after the other make one extent; a run
    # that the file's end cuts is refused at the first cluster cut off,
    # as cluster by cluster; other entries between runs break them.
    img = Image(MiB)
    for c in range(2, 8):
        img.data(c, bytes([c]) * 64 * KiB)
    img.set(8, qcow2.L2_ZERO)
    img.set(9, qcow2.L2_ZERO | img.alloc())
    img.data(11, b'k' * 64 * KiB)
    img.data(12, b'l' * 64 * KiB)
    r = opened(img)
    assert status(r) == [
        (ext.UNALLOCATED, 0, 128 * KiB), (ext.DATA, 128 * KiB, 384 * KiB),
        (ext.ZERO, 512 * KiB, 128 * KiB),
        (ext.UNALLOCATED, 640 * KiB, 64 * KiB),
        (ext.DATA, 704 * KiB, 128 * KiB),
        (ext.UNALLOCATED, 832 * KiB, 192 * KiB)]
    data = read_all(r)
    for c in range(2, 8):
        assert data[c * 64 * KiB:(c + 1) * 64 * KiB] == bytes([c]) * 64 * KiB
    first = img.l2[0][2][0] & qcow2.OFFSET_MASK
    cut = img.build()[:first + 3 * 64 * KiB + 512]
    r = opened(cut)
    with pytest.raises(exception.InvalidImage,
                       match='virtual offset %d is stored at %d, beyond' % (
                           5 * 64 * KiB, first + 3 * 64 * KiB)):
        list(r.block_status(0, MiB))


def test_stored_clusters_are_announced_for_read_ahead(opened):
    # announce() hands a local qcow2's stored clusters to its view's
    # will_read (the kernel reads them ahead), not its compressed ones.
    from any2kvm_os.chain import layer_chain
    img = Image(MiB)
    img.data(0, b'a' * 64 * KiB)
    img.data(1, b'b' * 64 * KiB)
    img.compressed(3, b'c' * 64 * KiB)
    r = opened(img)
    got = []
    r.view.will_read = got.append
    extents = [e._replace(layer=0) for e in r.block_status(0, MiB)]
    layer_chain.announce([r], extents)
    first = img.l2[0][0][0] & qcow2.OFFSET_MASK
    assert got == [[(first, 128 * KiB)]]


def test_last_cluster_only_needs_its_used_part(opened):
    img = Image(64 * KiB + 512)
    img.data(1, b'e' * 512)
    data = img.build()
    r = opened(data[:len(data) - 64 * KiB + 512])
    assert read_all(r)[64 * KiB:] == b'e' * 512


# -- backing files ------------------------------------------------------------

@pytest.mark.parametrize('name,hint', [
    (b'base.qcow2', 'base.qcow2'),
    (b'/var/lib/images/base.qcow2', 'base.qcow2'),
    (b'../other/base.qcow2', 'base.qcow2'),
    (b'with space.qcow2', 'with space.qcow2'),
])
def test_backing_hint(opened, name, hint):
    img = Image(MiB)
    img.backing = name
    img.extensions.append((qcow2.EXT_BACKING_FORMAT, b'qcow2'))
    r = opened(img)
    assert r.parent_ref == base.ParentRef(None, (hint,))
    assert r.parent_format == 'qcow2'
    assert r.backing_name == name.decode()


@pytest.mark.parametrize('name,pattern', [
    (b'json:{"file.filename": "/etc/passwd"}', 'json:'),
    (b'nbd://10.0.0.1/x', 'protocol'),
    (b'http://example.com/base.qcow2', 'protocol'),
    (b'nbd:localhost:10809', 'protocol'),
    (b'../', 'names no file'),
    (b'dir/..', 'names no file'),
    (b'base\x00.qcow2', 'NUL'),
])
def test_backing_refused(opened, name, pattern):
    img = Image(MiB)
    img.backing = name
    refused(opened, img, pattern)


def test_backing_format_mapping(opened):
    img = Image(MiB)
    img.backing = b'base.vhd'
    img.extensions.append((qcow2.EXT_BACKING_FORMAT, b'vpc'))
    assert opened(img).parent_format == 'vhd'


def test_backing_format_unsupported(opened):
    img = Image(MiB)
    img.backing = b'base.qed'
    img.extensions.append((qcow2.EXT_BACKING_FORMAT, b'qed'))
    refused(opened, img, "format 'qed'")


def test_no_backing_format_means_probe(opened):
    img = Image(MiB)
    img.backing = b'base.img'
    r = opened(img)
    assert r.parent_format is None
    assert r.parent_ref.name_hints == ('base.img',)


def raw_child(size=4 * 64 * KiB):
    img = Image(size)
    img.backing = b'base.raw'
    img.extensions.append((qcow2.EXT_BACKING_FORMAT, b'raw'))
    return img


def test_raw_backing(opened, tmp_path):
    raw = bytes(range(256)) * 400          # 102400 bytes: 1.56 clusters
    (tmp_path / 'base.raw').write_bytes(raw)
    img = raw_child()
    img.data(0, b'C' * 64 * KiB)
    img.set(2, qcow2.L2_ZERO)

    def opener(name):
        assert name == 'base.raw'
        return fileio.FileView.open_path(str(tmp_path / name))
    r = opened(img, opener=opener)
    assert r.parent_ref is None
    assert status(r) == [
        (ext.DATA, 0, 64 * KiB), (ext.DATA, 64 * KiB, len(raw) - 64 * KiB),
        (ext.ZERO, len(raw), 128 * KiB - len(raw)),
        (ext.ZERO, 128 * KiB, 64 * KiB),
        (ext.ZERO, 192 * KiB, 64 * KiB)]
    data = read_all(r)
    assert data[:64 * KiB] == b'C' * 64 * KiB
    assert data[64 * KiB:len(raw)] == raw[64 * KiB:]
    assert data[len(raw):] == bytes(len(data) - len(raw))
    assert r.allocated_bytes() == 64 * KiB
    r.close()


def test_raw_backing_without_opener(opened):
    refused(opened, raw_child(), 'cannot be opened', exception.ChainError)


def test_raw_backing_is_itself(opened, tmp_path):
    img = raw_child()
    img.backing = b'disk.qcow2'

    def opener(name):
        return fileio.FileView.open_path(str(tmp_path / name))
    with pytest.raises(exception.ChainError, match='its own raw backing'):
        opened(img, opener=opener)


def test_raw_backing_missing_refused_by_opener(opened):
    def opener(name):
        raise exception.ChainError(path='disk.qcow2',
                                   reason='refers to %r' % name)
    with pytest.raises(exception.ChainError, match='base.raw'):
        opened(raw_child(), opener=opener)


def test_registered():
    from any2kvm_os.formats import probe
    assert probe.readers()['qcow2'] is qcow2.Qcow2Reader
    assert os.path.basename(qcow2.__file__) == 'qcow2.py'
