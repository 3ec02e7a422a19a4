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

"""Unit tests of the VMDK reader on small crafted files.

The builders below write the layouts of VMware's "Virtual Disk Format 1.1"
(hosted sparse and stream-optimized extents, vmfsSparse/COWD), of the ESX
``cow_ext.h`` header, and of seSparse as qemu documents it in its sources;
they exist to produce corner cases and corruptions cheaply.  Truth about
real images comes from the functional tests (VMware, qemu-img, FATtools,
VMDKstream and ESXi files, libvmdk, qemu and dissect results).
"""

import io
import os
import struct
import threading
import zlib

import pytest

from any2kvm_os.containers import base as cbase
from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.formats import vmdk
from any2kvm_os.formats import vmdk_descriptor as vd
from any2kvm_os import limits as a2k_limits

S = 512
KiB = 1 << 10
MiB = 1 << 20


# ---------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------

def descriptor(create_type='monolithicSparse', cid='12345678',
               parent='ffffffff', hint=None, extents=(), extra='',
               header='# Disk DescriptorFile', nl='\n'):
    lines = [header, 'version=1', 'encoding="UTF-8"', 'CID=%s' % cid]
    if parent is not None:
        lines.append('parentCID=%s' % parent)
    lines.append('createType="%s"' % create_type)
    if hint:
        lines.append('parentFileNameHint="%s"' % hint)
    lines += ['', '# Extent description'] + list(extents)
    lines += ['', '# The Disk Data Base', '#DDB', '',
              'ddb.adapterType = "lsilogic"',
              'ddb.geometry.cylinders = "16"',
              'ddb.geometry.heads = "16"',
              'ddb.geometry.sectors = "63"',
              'ddb.virtualHWVersion = "4"']
    text = nl.join(lines) + nl + extra
    return text.encode('utf-8')


def kdmv_header(capacity, grain, gtes, desc_off, desc_size, rgd, gd,
                overhead, flags=0x3, version=1, compress=0,
                check=b'\n \r\n'):
    h = struct.pack('<4sIIQQQQIQQQB4sH', b'KDMV', version, flags, capacity,
                    grain, desc_off, desc_size, gtes, rgd, gd, overhead, 0,
                    check, compress)
    return h + bytes(S - len(h))


def _pad(b):
    return b + bytes(-len(b) % S)


class Sparse(object):
    """A hosted sparse extent: ``grains`` maps a grain index to bytes or to
    'zero' (GTE 1).  Small grains (``grain`` sectors) and short grain tables
    (``gtes``) give several tables on a few KiB."""

    def __init__(self, capacity, grains, grain=8, gtes=4, desc=None,
                 flags=0x3, version=1):
        self.capacity = capacity
        self.grain = grain
        self.gtes = gtes
        span = grain * gtes
        ngd = -(-capacity // span)
        desc_sectors = -(-len(desc) // S) if desc else 0
        desc_off = 1 if desc else 0
        gd = 1 + desc_sectors
        gd_sectors = -(-ngd * 4 // S)
        gt_sectors = -(-gtes * 4 // S)
        tables = sorted({i // gtes for i in grains})
        gt_at = {}
        pos = gd + gd_sectors
        for t in tables:
            gt_at[t] = pos
            pos += gt_sectors
        overhead = pos
        entries = {}
        data = []
        for i in sorted(grains):
            if grains[i] == 'zero':
                entries[i] = 1
                continue
            entries[i] = pos
            data.append((pos, grains[i]))
            pos += grain
        self.layout = {'gd': gd, 'gt': gt_at, 'grains': dict(data),
                       'entries': entries, 'ngd': ngd, 'end': pos}
        buf = bytearray(pos * S)
        buf[0:S] = kdmv_header(capacity, grain, gtes, desc_off, desc_sectors,
                               0, gd, overhead, flags, version)
        if desc:
            buf[S:S + len(desc)] = desc
        for t, sec in gt_at.items():
            struct.pack_into('<I', buf, gd * S + t * 4, sec)
            for j in range(gtes):
                e = entries.get(t * gtes + j, 0)
                struct.pack_into('<I', buf, sec * S + j * 4, e)
        for sec, b in data:
            buf[sec * S:sec * S + len(b)] = b
        self.data = bytes(buf)


def stream(capacity, grains, grain=8, gtes=4, desc=None, gd_at_end=True,
           footer=True, mangle=None):
    """A streamOptimized extent: compressed grains behind markers, then GT
    and GD metadata markers, a footer and the end-of-stream marker.
    ``mangle(index, lba, payload)`` may alter a grain's marker fields."""
    flags = 0x30001
    desc_sectors = -(-len(desc) // S) if desc else 0
    overhead = 1 + desc_sectors
    out = bytearray(bytes(overhead * S))
    entries = {}
    for i in sorted(grains):
        payload = zlib.compress(grains[i])
        lba = i * grain
        if mangle:
            lba, payload = mangle(i, lba, payload)
        entries[i] = len(out) // S
        out += _pad(struct.pack('<QI', lba, len(payload)) + payload)
    span = grain * gtes
    ngd = -(-capacity // span)
    gt_at = {}
    for t in sorted({i // gtes for i in grains}):
        gt = b''.join(struct.pack('<I', entries.get(t * gtes + j, 0))
                      for j in range(gtes))
        gt = _pad(gt)
        out += _pad(struct.pack('<QII', len(gt) // S, 0, vmdk.MARKER_GT))
        gt_at[t] = len(out) // S
        out += gt
    gd = _pad(b''.join(struct.pack('<I', gt_at.get(t, 0))
                       for t in range(ngd)))
    out += _pad(struct.pack('<QII', len(gd) // S, 0, vmdk.MARKER_GD))
    gd_sector = len(out) // S
    out += gd
    hdr = kdmv_header(capacity, grain, gtes, 1 if desc else 0, desc_sectors,
                      0, vmdk.GD_AT_END if gd_at_end else gd_sector,
                      overhead, flags, 3, 1)
    out[0:S] = hdr
    if desc:
        out[S:S + len(desc)] = desc
    if footer:
        out += _pad(struct.pack('<QII', 1, 0, vmdk.MARKER_FOOTER))
        out += kdmv_header(capacity, grain, gtes, 1 if desc else 0,
                           desc_sectors, 0, gd_sector, overhead, flags, 3, 1)
    out += bytes(S)      # end of stream
    return bytes(out), entries


def cowd(capacity, grains, grain=1, parent_name=None):
    """An ESX vmfsSparse (COWD) extent, after VMware's cow_ext.h: a
    2048-byte header, a root directory of sector numbers of tables of 4096
    sector numbers of grains.  No sample of this format exists in the
    corpus (no generator outside ESX), hence this crafted file."""
    gtes = 4096
    n = -(-capacity // (grain * gtes))
    root = 4
    root_sectors = -(-n * 4 // S)
    tables = sorted({i // gtes for i in grains})
    pos = root + root_sectors
    gt_at = {}
    for t in tables:
        gt_at[t] = pos
        pos += gtes * 4 // S
    entries = {}
    data = []
    for i in sorted(grains):
        entries[i] = pos
        data.append((pos, grains[i]))
        pos += grain
    buf = bytearray(pos * S)
    flags = 0x3 if parent_name is None else 0x2
    struct.pack_into('<4sIIIIIII', buf, 0, b'COWD', 1, flags, capacity, grain,
                     root, n, pos)
    if parent_name:
        buf[32:32 + len(parent_name)] = parent_name.encode()
    for t, sec in gt_at.items():
        struct.pack_into('<I', buf, root * S + t * 4, sec)
        for j in range(gtes):
            struct.pack_into('<I', buf, sec * S + j * 4,
                             entries.get(t * gtes + j, 0))
    for sec, b in data:
        buf[sec * S:sec * S + len(b)] = b
    return bytes(buf)


SES_GT = 4096               # entries per seSparse grain table
SES_GRAIN = 4096


def ses_entry(kind, grain=None):
    if kind == 'data':
        return (0x3 << 60) | ((grain & 0xFFF) << 48) | (grain >> 12)
    return {'unalloc': 0, 'unmapped': 1 << 60, 'zero': 2 << 60}[kind]


def sesparse(capacity, table_entries, grains, journal=0, gd_raw=None,
             version=0x200000001):
    """A seSparse extent as qemu's sources describe it.

    ``table_entries`` maps a virtual grain number to a 64-bit GT entry;
    ``grains`` maps a grain number (in the grain area) to its bytes.
    """
    ngd = -(-capacity // (8 * SES_GT))
    gd_off, gd_size = 8, 1
    tables = sorted({i // SES_GT for i in table_entries})
    gt_off = 16
    gt_size_total = 64 * max(1, len(tables))
    grains_off = gt_off + gt_size_total
    grains_size = 8 * 8192
    hdr = struct.pack('<26Q', 0xcafebabe, version, capacity, 8, 64, 0, 0,
                      0, 0, 0, 1, 1, 2, 2, 4, 2, gd_off, gd_size, gt_off,
                      gt_size_total, 6, 1, 7, 1, grains_off, grains_size)
    end = grains_off * S + (max(grains) + 1 if grains else 0) * SES_GRAIN
    buf = bytearray(end)
    buf[0:len(hdr)] = hdr
    struct.pack_into('<4Q', buf, S, 0xcafecafe, 1, 1, journal)
    for k, t in enumerate(tables):
        struct.pack_into('<Q', buf, gd_off * S + t * 8, (1 << 60) | k)
        for j in range(SES_GT):
            e = table_entries.get(t * SES_GT + j, 0)
            struct.pack_into('<Q', buf, gt_off * S + k * 64 * S + j * 8, e)
    if gd_raw:
        for i, e in gd_raw.items():
            struct.pack_into('<Q', buf, gd_off * S + i * 8, e)
    for g, b in grains.items():
        at = grains_off * S + g * SES_GRAIN
        buf[at:at + len(b)] = b
    assert ngd <= gd_size * S // 8
    return bytes(buf)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def view_of(tmp_path, data, name='x.vmdk'):
    return fileio.FileView.open_path(str(write(tmp_path, name, data)))


def reader_in(path):
    """A reader of ``path`` with the opener of its directory."""
    limits = a2k_limits.Limits()
    c = cbase.DirectoryContainer(str(path), limits)
    view = c.open_view(c.leaf_name)
    return vmdk.VmdkReader(view, opener=c.opener(c.leaf_name))


def raw_of(r):
    """The whole layer read through block_status/read_extent (unallocated
    and zero read as zeros)."""
    out = bytearray(r.virtual_size)
    for e in r.block_status(0, r.virtual_size):
        if e.kind == ext.DATA:
            out[e.offset:e.end] = r.read_extent(e, 0, e.length)
    return bytes(out)


def kinds(r, offset=0, length=None):
    length = r.virtual_size if length is None else length
    return [(e.kind, e.offset, e.length)
            for e in r.block_status(offset, length)]


def fill(c, n):
    return bytes([c]) * n


# ---------------------------------------------------------------------------
# descriptor
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('header', [
    '# Disk DescriptorFile', '# Disk Descriptor File',
    '#Disk DescriptorFile', '# disk descriptorfile'])
def test_descriptor_header_variants(header):
    raw = descriptor(header=header, extents=['RW 100 FLAT "a.vmdk" 0'])
    assert vd.looks_like_descriptor(raw)
    d = vd.parse(raw, 'x')
    assert d.create_type == 'monolithicSparse'


def test_descriptor_crlf_comments_quotes_spaces():
    text = ('# Disk DescriptorFile\r\nversion=1 \r\n# a comment\r\n'
            'CID=ac2a197 \r\nparentCID=FFFFFFFF\r\n'
            'createType = "twoGbMaxExtentFlat"  \r\n\r\n'
            '  RW 4096 FLAT "my disk-f001.vmdk" 0  \r\n'
            'RDONLY 8 ZERO\r\n'
            'ddb.uuid = "60 00 C2 9a f2 6c 48 d6-13 0c dc a5 d2 bc d9 18"\r\n'
            '\0\0\0\0')
    d = vd.parse(text.encode(), 'x')
    assert d.cid == '0ac2a197'
    assert d.parent_cid is None
    assert d.create_type == 'twoGbMaxExtentFlat'
    assert d.extents[0] == vd.ExtentLine('RW', 4096, 'FLAT',
                                         'my disk-f001.vmdk', 0, 8)
    assert d.extents[1].type == 'ZERO' and d.extents[1].filename is None
    assert d.ddb['ddb.uuid'].startswith('60 00 C2')


def test_descriptor_windows_1252_and_utf8_names():
    d = descriptor(extents=['RW 8 FLAT "caf\xe9.vmdk" 0'])
    raw = d.replace(b'UTF-8', b'windows-1252').replace(
        'café'.encode('utf-8'), 'café'.encode('cp1252'))
    assert vd.parse(raw, 'x').extents[0].filename == 'café.vmdk'
    assert vd.parse(d, 'x').extents[0].filename == 'café.vmdk'


def test_descriptor_parent_hint_is_a_basename():
    d = vd.parse(descriptor(parent='d941e849',
                            hint='C:\\VMs\\win\\base.vmdk'), 'x')
    assert d.parent_cid == 'd941e849'
    assert d.parent_hint == 'base.vmdk'
    d = vd.parse(descriptor(parent='1', hint='/vmfs/volumes/ds/vm/b.vmdk'),
                 'x')
    assert (d.parent_cid, d.parent_hint) == ('00000001', 'b.vmdk')


@pytest.mark.parametrize('raw,match', [
    (descriptor(cid='xyz'), 'CID'),
    (descriptor(parent='123456789'), 'parentCID'),
    (descriptor(extents=['RW 0 FLAT "a" 0']), '0 sectors'),
    (descriptor(extents=['RW 99999999999999999 FLAT "a" 0']), 'absurd'),
    (descriptor(extents=['RW 10 FLAT a.vmdk 0']), 'quoted'),
    (descriptor(extents=['RW 10 SPARSE "a.vmdk" 5']), 'offset'),
    (descriptor(extents=['RW 10 FLAT']), 'without a file name'),
    (descriptor(extents=['RW 10 SPARSE "a"'] * 2,
                extra='CID=87654321\n'), 'twice'),
    (descriptor().replace(b'version=1', b'version=7'), 'version'),
])
def test_descriptor_refusals(raw, match):
    with pytest.raises(exception.Any2KvmError, match=match):
        vd.parse(raw, 'x')


@pytest.mark.parametrize('line', ['RW 10 VMFSRDM "a.vmdk"',
                                  'RW 10 VMFSRAW "a.vmdk"',
                                  'RW 10 WEIRD "a.vmdk"'])
def test_descriptor_device_and_unknown_extents(line):
    with pytest.raises(exception.UnsupportedImage):
        vd.parse(descriptor(extents=[line]), 'x')


@pytest.mark.parametrize('ct,ok', [
    ('monolithicSparse', True), ('vmfs', True), ('seSparse', True),
    ('VMFSSPARSE', True), ('vmfsRaw', False), ('fullDevice', False),
    ('vmfsRawDeviceMap', False), ('custom', False), ('banana', False)])
def test_create_types(ct, ok):
    d = vd.parse(descriptor(create_type=ct), 'x')
    if ok:
        assert vd.check_create_type(d, 'x').lower() == ct.lower()
    else:
        with pytest.raises(exception.UnsupportedImage, match=ct):
            vd.check_create_type(d, 'x')


@pytest.mark.parametrize('text,claimed', [
    (b'# Disk DescriptorFile\nversion=1\n', True),
    (b'\xef\xbb\xbf# Disk Descriptor File\n', True),
    (b'# made by hand\nversion=1\ncreateType="vmfs"\n', True),
    (b'version=1\n', False),
    (b'#!/bin/sh\necho version=1\n', False),
    (b'Hello, world\n', False),
    (b'', False),
    (b'\0' * 512, False),
])
def test_looks_like_descriptor(text, claimed):
    assert vd.looks_like_descriptor(text) is claimed


# ---------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------

def test_probe(tmp_path):
    sp = Sparse(64, {0: fill(1, 4096)})
    assert vmdk.VmdkReader.probe(view_of(tmp_path, sp.data, 'a'))
    assert vmdk.VmdkReader.probe(view_of(tmp_path, cowd(64, {}), 'b'))
    ses = sesparse(8 * SES_GT, {}, {})
    assert vmdk.VmdkReader.probe(view_of(tmp_path, ses, 'c'))
    long_comment = b'# ' + b'x' * 2000 + b'\nversion=1\ncreateType="vmfs"\n'
    assert vmdk.VmdkReader.probe(view_of(tmp_path, long_comment, 'd'))
    assert vmdk.VmdkReader.probe(view_of(tmp_path, descriptor(), 'e'))
    assert not vmdk.VmdkReader.probe(view_of(tmp_path, b'hello\n' * 99,
                                             'f'))
    big = descriptor() + b'#' * (vd.MAX_DESCRIPTOR_SIZE + 1)
    assert not vmdk.VmdkReader.probe(view_of(tmp_path, big, 'g'))
    assert not vmdk.VmdkReader.probe(view_of(tmp_path, b'', 'h'))


def test_text_that_is_no_descriptor_is_refused(tmp_path):
    with pytest.raises(exception.InvalidImage, match='not a VMDK'):
        vmdk.VmdkReader(view_of(tmp_path, b'hello\n'))


# ---------------------------------------------------------------------------
# hosted sparse
# ---------------------------------------------------------------------------

def test_sparse_block_status_and_read(tmp_path):
    g = 4096
    grains = {0: fill(1, g), 1: fill(2, g), 5: fill(3, g), 9: 'zero'}
    sp = Sparse(96, grains, flags=0x7, version=2,
                desc=descriptor(cid='0000abcd'))
    r = vmdk.VmdkReader(view_of(tmp_path, sp.data))
    assert r.virtual_size == 96 * S
    assert r.identity == '0000abcd'
    assert r.parent_ref is None
    assert r.subformat == 'monolithicSparse'
    assert kinds(r) == [
        (ext.DATA, 0, 2 * g),              # contiguous in the file: one run
        (ext.UNALLOCATED, 2 * g, 3 * g),   # GT 0 entries, GT 1 absent
        (ext.DATA, 5 * g, g),
        (ext.UNALLOCATED, 6 * g, 3 * g),
        (ext.ZERO, 9 * g, g),
        (ext.UNALLOCATED, 10 * g, 2 * g)]
    assert raw_of(r) == (fill(1, g) + fill(2, g) + bytes(3 * g) + fill(3, g)
                         + bytes(6 * g))
    assert r.allocated_bytes() == 3 * g


def test_sparse_partial_ranges_and_tokens(tmp_path):
    g = 4096
    sp = Sparse(48, {0: fill(1, g), 1: fill(2, g), 3: fill(4, g)})
    r = vmdk.VmdkReader(view_of(tmp_path, sp.data))
    st = list(r.block_status(100, g))
    assert [(e.kind, e.offset, e.length) for e in st] == [
        (ext.DATA, 100, g)]
    assert r.read_extent(st[0], 10, 20) == fill(1, g - 110)[:20]
    assert r.read_extent(st[0], g - 100, 10) == fill(2, 10)
    # Tokens are tuples: the fold never merges runs of different files.
    assert isinstance(st[0].file_offset, tuple)


def test_sparse_without_zero_flag_reads_gte1_as_data(tmp_path):
    # GTE 1 is a zero grain only with the zeroed-grain flag (bit 2).
    sp = Sparse(16, {0: 'zero', 1: fill(5, 4096)}, flags=0x3)
    r = vmdk.VmdkReader(view_of(tmp_path, sp.data))
    assert r.block_status(0, 4096).__next__().kind == ext.DATA


def test_bare_sparse_extent_is_a_disk_without_identity(tmp_path):
    sp = Sparse(16, {1: fill(7, 4096)})
    r = vmdk.VmdkReader(view_of(tmp_path, sp.data))
    assert r.identity is None and r.parent_ref is None
    assert r.subformat == 'monolithicSparse'
    assert r.creator is None
    assert raw_of(r) == bytes(4096) + fill(7, 4096)


def _patch(data, offset, fmt, *values):
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


@pytest.mark.parametrize('mutate,match', [
    (lambda sp: _patch(sp.data, 12, '<Q', 1 << 62), 'absurd'),
    (lambda sp: _patch(sp.data, 4, '<I', 4), 'version'),
    (lambda sp: _patch(sp.data, 20, '<Q', 12), 'power of two'),
    (lambda sp: _patch(sp.data, 44, '<I', 0), 'grain tables of 0'),
    (lambda sp: _patch(sp.data, 73, '4s', b'\r\n\n\n'), 'text-mode'),
    (lambda sp: _patch(sp.data, 56, '<Q', 10 ** 6), 'outside the file'),
    (lambda sp: _patch(sp.data, sp.layout['gd'] * S, '<I', 10 ** 6),
     'directory entry 0 points'),
    (lambda sp: _patch(sp.data, sp.layout['gt'][0] * S + 4, '<I', 10 ** 6),
     'beyond the end of the file'),
    (lambda sp: sp.data[:-100], 'not made of whole sectors'),
    (lambda sp: sp.data[:-S], 'beyond the end of the file'),
    (lambda sp: sp.data[:S * 3] + b'\0' + sp.data[S * 3:],
     'not made of whole sectors'),
    (lambda sp: sp.data[:S * 2], 'outside the file|beyond the end'),
])
def test_sparse_corruptions(tmp_path, mutate, match):
    sp = Sparse(32, {0: fill(1, 4096), 1: fill(2, 4096)})
    bad = mutate(sp)
    with pytest.raises(exception.Any2KvmError, match=match):
        r = vmdk.VmdkReader(view_of(tmp_path, bad))
        raw_of(r)


def test_huge_capacity_refused_without_allocating(tmp_path):
    # The shape of qemu's afl9.vmdk: a capacity of 2**61 sectors.
    sp = Sparse(32, {0: fill(1, 4096)})
    bad = _patch(sp.data, 12, '<Q', 0x1f00000000000001)
    with pytest.raises(exception.InvalidImage, match='absurd'):
        vmdk.VmdkReader(view_of(tmp_path, bad))


def test_last_partial_grain(tmp_path):
    # Capacity not a multiple of the grain: the last grain is cut.
    sp = Sparse(20, {2: fill(9, 2048)})
    data = sp.data[:len(sp.data) - 2048]      # the file ends with the data
    r = vmdk.VmdkReader(view_of(tmp_path, data))
    assert r.virtual_size == 20 * S
    assert raw_of(r)[8192:] == fill(9, 2048)


# ---------------------------------------------------------------------------
# streamOptimized
# ---------------------------------------------------------------------------

def test_stream_with_footer(tmp_path):
    g = 4096
    grains = {0: fill(1, g), 3: os.urandom(g), 6: fill(3, g)}
    data, _ = stream(64, grains, desc=descriptor('streamOptimized'))
    r = vmdk.VmdkReader(view_of(tmp_path, data))
    assert r.subformat == 'streamOptimized'
    assert r.virtual_size == 64 * S
    st = list(r.block_status(0, r.virtual_size))
    # one DATA extent per grain, each with its own token
    assert [(e.kind, e.offset, e.length) for e in st] == [
        (ext.DATA, 0, g), (ext.UNALLOCATED, g, 2 * g), (ext.DATA, 3 * g, g),
        (ext.UNALLOCATED, 4 * g, 2 * g), (ext.DATA, 6 * g, g),
        (ext.UNALLOCATED, 7 * g, g)]
    expected = bytearray(64 * S)
    for i, b in grains.items():
        expected[i * g:(i + 1) * g] = b
    assert raw_of(r) == bytes(expected)
    # partial reads inside a grain, from a block_status started mid-grain
    e = next(r.block_status(3 * g + 100, 50))
    assert r.read_extent(e, 7, 13) == grains[3][107:120]


def test_stream_adjacent_grains_make_one_run(tmp_path):
    # Runs of compressed grains are read through the tables: the copy loop
    # gets large reads, not one per grain (and across grain tables).
    g = 4096
    grains = {i: os.urandom(g) for i in range(2, 7)}
    data, _ = stream(64, grains)
    r = vmdk.VmdkReader(view_of(tmp_path, data))
    st = list(r.block_status(0, r.virtual_size))
    assert [(e.kind, e.offset, e.length) for e in st] == [
        (ext.UNALLOCATED, 0, 2 * g), (ext.DATA, 2 * g, 5 * g),
        (ext.UNALLOCATED, 7 * g, g)]
    assert st[1].file_offset == (0, vmdk.COMPRESSED)
    whole = b''.join(grains[i] for i in range(2, 7))
    assert r.read_extent(st[1], 0, 5 * g) == whole
    assert r.read_extent(st[1], 100, 2 * g) == whole[100:100 + 2 * g]
    e = next(r.block_status(3 * g + 5, 10))
    assert r.read_extent(e, 1, 9) == grains[3][6:15]


def test_stream_gd_in_header(tmp_path):
    # qemu writes the GD in the header area and no footer.
    grains = {1: fill(5, 4096)}
    data, _ = stream(16, grains, gd_at_end=False, footer=False)
    r = vmdk.VmdkReader(view_of(tmp_path, data))
    assert raw_of(r)[4096:8192] == fill(5, 4096)


@pytest.mark.parametrize('tail', [0, 1, 2],
                         ids=['after-gd', 'after-footer-marker',
                              'after-footer'])
def test_stream_cut_after_grain_directory(tmp_path, caplog, tail):
    """A transfer cut short after the grain directory: every grain the
    tables reference is there, so it reads whole, with a warning."""
    g = 4096
    grains = {0: fill(1, g), 3: os.urandom(g), 9: fill(3, g)}
    data, _ = stream(128, grains, desc=descriptor('streamOptimized'))
    cut = data[:len(data) - (3 - tail) * S]
    r = vmdk.VmdkReader(view_of(tmp_path, cut))
    expected = bytearray(128 * S)
    for i, b in grains.items():
        expected[i * g:(i + 1) * g] = b
    assert raw_of(r) == bytes(expected)
    if tail < 2:
        assert 'ends without its footer' in caplog.text
        assert 'read as complete' in caplog.text


def test_stream_cut_with_a_grain_missing(tmp_path):
    """The directory is there, but a grain it references is not (the
    stream was cut and its tables rebuilt, or damaged): refused."""
    g = 4096
    data, entries = stream(64, {0: fill(1, g), 3: fill(2, g)},
                           desc=descriptor('streamOptimized'))
    cut = data[:len(data) - 3 * S]
    bad = _patch(cut, entries[3] * S, '<QII', 0, 0, 0)
    with pytest.raises(exception.InvalidImage,
                       match='without its footer, and grain 3 .* missing'):
        vmdk.VmdkReader(view_of(tmp_path, bad))


def test_stream_cut_before_grain_directory(tmp_path):
    data, entries = stream(16, {0: fill(1, 4096)}, footer=False)
    with pytest.raises(exception.InvalidImage, match='footer'):
        vmdk.VmdkReader(view_of(tmp_path, data))
    # cut inside the grains: no directory at the end
    data, entries = stream(16, {0: fill(1, 4096), 1: fill(2, 4096)})
    with pytest.raises(exception.InvalidImage, match='footer'):
        vmdk.VmdkReader(view_of(tmp_path, data[:(entries[1] + 1) * S]))


@pytest.mark.parametrize('field,offset,fmt,value', [
    ('capacity', 12, '<Q', 32), ('grain size', 20, '<Q', 16),
    ('num gtes', 44, '<I', 8), ('flags', 8, '<I', 0x30003)])
def test_stream_footer_disagrees_with_header(tmp_path, field, offset, fmt,
                                             value):
    data, _ = stream(16, {0: fill(1, 4096)})
    footer_at = len(data) - 2 * S
    bad = _patch(data, footer_at + offset, fmt, value)
    with pytest.raises(exception.InvalidImage,
                       match='header and footer disagree on the %s' % field):
        vmdk.VmdkReader(view_of(tmp_path, bad))


def test_stream_grain_directory_without_marker(tmp_path):
    data, _ = stream(16, {0: fill(1, 4096)})
    hdr = vmdk.parse_kdmv_header(data[-2 * S:-S], 'x')
    bad = _patch(data, (hdr.gd_offset - 1) * S, '<QII', 0, 0, 0)
    with pytest.raises(exception.InvalidImage,
                       match='no grain directory marker'):
        vmdk.VmdkReader(view_of(tmp_path, bad))


def test_stream_shifted_by_whole_sectors(tmp_path):
    """A sector inserted among the grains keeps the length whole: the
    tables then point one sector off, where no marker for their grain is;
    a directory entry one sector off has no table marker before it."""
    g = 4096
    data, entries = stream(16, {0: fill(1, g), 1: fill(2, g)})
    at = entries[1] * S
    bad = data[:at] + bytes(S) + data[at:]
    # The footer moved with the tail, the offsets it holds did not.
    with pytest.raises(exception.InvalidImage,
                       match='marker|corrupt|metadata'):
        raw_of(vmdk.VmdkReader(view_of(tmp_path, bad)))
    hdr = vmdk.parse_kdmv_header(data[-2 * S:-S], 'x')
    gd = struct.unpack_from('<I', data, hdr.gd_offset * S)[0]
    bad = _patch(data, hdr.gd_offset * S, '<I', gd + 1)
    r = vmdk.VmdkReader(view_of(tmp_path, bad))
    with pytest.raises(exception.InvalidImage,
                       match='no grain table marker'):
        raw_of(r)


@pytest.mark.parametrize('mangle,match', [
    (lambda i, lba, p: (lba + 8, p), 'is for sector 16'),
    (lambda i, lba, p: (lba, p[:10] + b'\xff' * 20 + p[30:]), 'deflate'),
    (lambda i, lba, p: (lba, p[:-8]), 'cut short|deflate'),
    (lambda i, lba, p: (lba, zlib.compress(bytes(8192))), 'more than'),
    (lambda i, lba, p: (lba, zlib.compress(bytes(100))), '100 bytes'),
])
def test_stream_grain_corruptions(tmp_path, mangle, match):
    def m(i, lba, p):
        return mangle(i, lba, p) if i == 1 else (lba, p)
    data, _ = stream(16, {0: fill(1, 4096), 1: fill(2, 4096)}, mangle=m)
    r = vmdk.VmdkReader(view_of(tmp_path, data))
    assert raw_of_range(r, 0, 4096) == fill(1, 4096)
    with pytest.raises(exception.InvalidImage, match=match):
        raw_of(r)


def raw_of_range(r, off, n):
    out = bytearray(n)
    for e in r.block_status(off, n):
        if e.kind == ext.DATA:
            out[e.offset - off:e.end - off] = r.read_extent(e, 0, e.length)
    return bytes(out)


def test_stream_marker_size_beyond_file(tmp_path):
    data, entries = stream(16, {0: fill(1, 4096)})
    bad = _patch(data, entries[0] * S + 8, '<I', 9000)
    r = vmdk.VmdkReader(view_of(tmp_path, bad))
    with pytest.raises(exception.InvalidImage, match='past the end|limit'):
        raw_of(r)


def test_stream_gte_points_to_metadata_marker(tmp_path):
    data, entries = stream(16, {0: fill(1, 4096)})
    # the grain's marker, turned into a metadata marker (size 0)
    bad = _patch(data, entries[0] * S, '<QII', 0, 0, vmdk.MARKER_GT)
    r = vmdk.VmdkReader(view_of(tmp_path, bad))
    with pytest.raises(exception.InvalidImage, match='metadata marker'):
        raw_of(r)


def test_stream_decompressed_grain_cached(tmp_path, monkeypatch):
    g = 4096
    grain = os.urandom(g)
    data, _ = stream(16, {0: grain})
    r = vmdk.VmdkReader(view_of(tmp_path, data))
    calls = []
    real = r.extents[0]._inflate_raw
    monkeypatch.setattr(r.extents[0], '_inflate_raw',
                        lambda *a: calls.append(a) or real(*a))
    e = next(r.block_status(0, g))
    parts = [r.read_extent(e, k, 512) for k in range(0, g, 512)]
    assert b''.join(parts) == grain
    assert len(calls) == 1


@pytest.mark.parametrize('cpus', [1, 2, 4])
def test_stream_grains_inflated_in_parallel(tmp_path, monkeypatch, cpus):
    """The grains of one read are inflated by up to INFLATE_THREADS
    threads into their own parts of the buffer: the same bytes as one
    grain at a time, reads that start or end inside a grain included, and
    the last grain kept for the next read."""
    g = 4096
    grains = {i: os.urandom(g // 2) + fill(i, g // 2) for i in range(40)
              if i % 7 != 3}
    data, _ = stream(48 * 8, grains)
    monkeypatch.setattr(vmdk, '_inflate_threads', lambda: cpus)
    r = vmdk.VmdkReader(view_of(tmp_path, data))
    want = bytearray(48 * g)
    for i, b in grains.items():
        want[i * g:(i + 1) * g] = b
    assert raw_of(r) == bytes(want)
    calls = []
    real = r.extents[0]._inflate_raw
    monkeypatch.setattr(r.extents[0], '_inflate_raw',
                        lambda *a: calls.append(a[0]) or real(*a))
    runs = [e for e in r.block_status(0, r.virtual_size)
            if e.kind == ext.DATA]
    for e in runs:
        for skip, n in ((100, 5 * g), (100 + 5 * g, 9 * g + 7)):
            n = min(n, e.length - skip)
            if n <= 0:
                continue
            buf = bytearray(n)
            r.read_extent_into(e, skip, memoryview(buf))
            assert bytes(buf) == want[e.offset + skip:e.offset + skip + n]
    # the grain cut by the end of the first read is inflated once
    assert len(calls) == len(set(calls))


def test_stream_parallel_inflate_error_of_first_bad_grain(tmp_path,
                                                          monkeypatch):
    """A corrupt grain in a helper's part is reported as such, once every
    helper has finished (none left running)."""
    g = 4096
    grains = {i: fill(i + 1, g) for i in range(16)}

    def mangle(i, lba, payload):
        if i == 13:
            payload = payload[:2] + bytes(len(payload) - 2)
        return lba, payload
    data, entries = stream(16 * 8, grains, mangle=mangle)
    monkeypatch.setattr(vmdk, '_inflate_threads', lambda: 4)
    r = vmdk.VmdkReader(view_of(tmp_path, data))
    before = threading.active_count()
    with pytest.raises(exception.InvalidImage,
                       match='offset %d' % (entries[13] * S)):
        raw_of(r)
    assert threading.active_count() == before


@pytest.mark.parametrize('cpus,load,want', [
    (1, 0.0, 1), (2, 0.5, 2), (2, 2.9, 2), (2, 3.0, 1), (8, 1.0, 4)])
def test_inflate_threads(monkeypatch, cpus, load, want):
    monkeypatch.setattr(vmdk.os, 'sched_getaffinity',
                        lambda pid: set(range(cpus)))
    monkeypatch.setattr(vmdk.os, 'getloadavg', lambda: (load, 0.0, 0.0))
    assert vmdk._inflate_threads() == want


def test_stream_one_pass(tmp_path):
    g = 4096
    grains = {0: os.urandom(g), 2: fill(2, g), 5: fill(3, g)}
    data, _ = stream(48, grains, desc=descriptor('streamOptimized',
                                                 cid='01020304'))
    s = fileio.ForwardStream(io.BytesIO(data), 'x.vmdk', len(data))
    layer = vmdk.StreamLayer('x.vmdk', s.peek(S), len(data))
    layer.read_headers(s)
    assert layer.identity == '01020304' and layer.parent_id is None
    runs = dict(layer.data_runs(s))
    assert runs == {i * g: b for i, b in grains.items()}
    assert layer.virtual_size == 48 * S


def test_stream_one_pass_refusals(tmp_path):
    g = 4096
    data, entries = stream(16, {0: os.urandom(g)})
    for bad, match in [
            # cut before the grain directory (only the end-of-stream
            # marker lost is read: test_one_pass_stream_cut_after_...)
            (data[:-4 * S], 'end-of-stream|truncated'),
            (_patch(data, entries[0] * S + 12 + 30, '8s', b'\xff' * 8),
             'deflate|corrupt'),
            (_patch(data, entries[0] * S, '<Q', 3), 'not a grain')]:
        s = fileio.ForwardStream(io.BytesIO(bad), 'x.vmdk', len(bad))
        layer = vmdk.StreamLayer('x.vmdk', s.peek(S), len(bad))
        layer.read_headers(s)
        with pytest.raises(exception.InvalidImage, match=match):
            list(layer.data_runs(s))


# ---------------------------------------------------------------------------
# descriptors with extent files
# ---------------------------------------------------------------------------

def test_multi_extent_concatenation(tmp_path):
    g = 4096
    sp = Sparse(16, {1: fill(2, g)})
    write(tmp_path, 'd-s001.vmdk', sp.data)
    write(tmp_path, 'd-f001.vmdk', b'\0' * 512 + fill(0x33, 4096))
    desc = descriptor('custom-ignored', extents=[
        'RW 8 FLAT "d-f001.vmdk" 1',
        'RW 4 ZERO',
        'RDONLY 16 SPARSE "d-s001.vmdk"'])
    desc = desc.replace(b'custom-ignored', b'twoGbMaxExtentSparse')
    r = reader_in(write(tmp_path, 'd.vmdk', desc))
    assert r.virtual_size == 28 * S
    assert kinds(r) == [(ext.DATA, 0, 4096), (ext.ZERO, 4096, 2048),
                        (ext.UNALLOCATED, 6144, 4096),
                        (ext.DATA, 10240, 4096)]
    assert raw_of(r) == fill(0x33, 4096) + bytes(6144) + fill(2, 4096)
    # A range across extents, started inside one.
    assert kinds(r, 4000, 3000) == [(ext.DATA, 4000, 96),
                                    (ext.ZERO, 4096, 2048),
                                    (ext.UNALLOCATED, 6144, 856)]
    assert r.metadata['adapter_type'] == 'lsilogic'
    assert r.geometry == (16, 16, 63)
    r.close()


def test_flat_extent_holes_are_zero(tmp_path):
    p = tmp_path / 'f-flat.vmdk'
    with open(p, 'wb') as f:
        f.truncate(4 * MiB)
        f.seek(MiB)
        f.write(fill(9, 64 * KiB))
    write(tmp_path, 'f.vmdk', descriptor('monolithicFlat', extents=[
        'RW 8192 FLAT "f-flat.vmdk" 0']))
    r = reader_in(tmp_path / 'f.vmdk')
    raw = raw_of(r)
    assert raw[MiB:MiB + 64 * KiB] == fill(9, 64 * KiB)
    assert raw.count(0) == 4 * MiB - 64 * KiB
    with open(p, 'rb') as f:
        fs_has_holes = os.lseek(f.fileno(), 0, os.SEEK_DATA) > 0
    if fs_has_holes:
        assert (ext.ZERO, 0, MiB) == kinds(r)[0]
        assert r.allocated_bytes() < 4 * MiB


def test_flat_extent_truncated(tmp_path):
    write(tmp_path, 'f-flat.vmdk', bytes(1000))
    write(tmp_path, 'f.vmdk', descriptor('monolithicFlat', extents=[
        'RW 8 FLAT "f-flat.vmdk" 0']))
    with pytest.raises(exception.InvalidImage, match='truncated'):
        reader_in(tmp_path / 'f.vmdk')


@pytest.mark.parametrize('name', ['/etc/passwd', '../x.vmdk', 'sub/x.vmdk',
                                  'C:\\x.vmdk', 'C:x.vmdk', '..', '.'])
def test_extent_paths_refused(tmp_path, name):
    write(tmp_path, 'x.vmdk', bytes(4096))
    write(tmp_path, 'd.vmdk', descriptor('monolithicFlat', extents=[
        'RW 8 FLAT "%s" 0' % name]))
    with pytest.raises(exception.InvalidImage, match='path is refused'):
        reader_in(tmp_path / 'd.vmdk')


def test_extent_symlink_and_missing_refused(tmp_path):
    write(tmp_path, 'real.bin', bytes(4096))
    os.symlink(str(tmp_path / 'real.bin'), str(tmp_path / 'link.vmdk'))
    write(tmp_path, 'd.vmdk', descriptor('monolithicFlat', extents=[
        'RW 8 FLAT "link.vmdk" 0']))
    with pytest.raises(exception.ChainError, match='link.vmdk'):
        reader_in(tmp_path / 'd.vmdk')
    write(tmp_path, 'e.vmdk', descriptor('monolithicFlat', extents=[
        'RW 8 FLAT "nothere.vmdk" 0']))
    with pytest.raises(exception.ChainError, match='nothere.vmdk'):
        reader_in(tmp_path / 'e.vmdk')


def test_no_opener_no_extent(tmp_path):
    v = view_of(tmp_path, descriptor('monolithicFlat', extents=[
        'RW 8 FLAT "a.vmdk" 0']))
    with pytest.raises(exception.ChainError, match='a.vmdk'):
        vmdk.VmdkReader(v)


def test_noaccess_extent_refused(tmp_path):
    write(tmp_path, 'a.vmdk', bytes(4096))
    write(tmp_path, 'd.vmdk', descriptor('monolithicFlat', extents=[
        'NOACCESS 8 FLAT "a.vmdk" 0']))
    with pytest.raises(exception.UnsupportedImage, match='NOACCESS'):
        reader_in(tmp_path / 'd.vmdk')


@pytest.mark.parametrize('sectors', [32, 1, 15])
def test_sparse_extent_size_disagrees_with_capacity(tmp_path, sectors):
    """The descriptor must be consistent with the extent's header: a line
    of size 1 would otherwise make a 512-byte disk."""
    write(tmp_path, 's.vmdk', Sparse(16, {}).data)
    write(tmp_path, 'd.vmdk', descriptor('twoGbMaxExtentSparse', extents=[
        'RW %d SPARSE "s.vmdk"' % sectors]))
    with pytest.raises(exception.InvalidImage,
                       match='capacity of 16: inconsistent'):
        reader_in(tmp_path / 'd.vmdk')


def test_embedded_descriptor_size_disagrees_with_capacity(tmp_path):
    sp = Sparse(16, {}, desc=descriptor(extents=['RW 1 SPARSE "x.vmdk"']))
    with pytest.raises(exception.InvalidImage,
                       match='declares 1 sectors, the extent header a '
                       'capacity of 16'):
        vmdk.VmdkReader(view_of(tmp_path, sp.data))


def test_extent_of_the_wrong_kind(tmp_path):
    write(tmp_path, 's.vmdk', bytes(4096))
    write(tmp_path, 'd.vmdk', descriptor('twoGbMaxExtentSparse', extents=[
        'RW 8 SPARSE "s.vmdk"']))
    with pytest.raises(exception.InvalidImage, match='not a SPARSE extent'):
        reader_in(tmp_path / 'd.vmdk')


def test_many_extent_files_stay_within_open_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(vmdk, 'MAX_OPEN_FILES', 2)
    lines = []
    expected = b''
    for i in range(6):
        write(tmp_path, 'm-f%03d.vmdk' % i, fill(i + 1, 1024))
        lines.append('RW 2 FLAT "m-f%03d.vmdk" 0' % i)
        expected += fill(i + 1, 1024)
    write(tmp_path, 'm.vmdk', descriptor('twoGbMaxExtentFlat',
                                         extents=lines))
    r = reader_in(tmp_path / 'm.vmdk')
    open_now = [f for f in r._files.values()
                if f._view is not None and f._view.fd is not None]
    assert len(open_now) <= 2
    assert raw_of(r) == expected
    assert raw_of(r) == expected       # reopened through the opener
    r.close()
    assert all(f._view is None for f in r._files.values())


def test_chain_identity_and_parent(tmp_path):
    sp = Sparse(16, {}, desc=descriptor(cid='ac2a197', parent='D941E849',
                                        hint='..\\base dir\\base.vmdk'))
    r = vmdk.VmdkReader(view_of(tmp_path, sp.data))
    assert r.identity == '0ac2a197'
    assert r.parent_ref.id == 'd941e849'
    assert r.parent_ref.name_hints == ('base.vmdk',)


def test_child_without_hint_refused(tmp_path):
    # qemu reads it as a base and drops the parent's data: refused.
    sp = Sparse(16, {}, desc=descriptor(parent='00000001'))
    with pytest.raises(exception.InvalidImage,
                       match='parentCID 00000001 but no parentFileNameHint'):
        vmdk.VmdkReader(view_of(tmp_path, sp.data))


@pytest.mark.parametrize('parent', [None, 'ffffffff'])
def test_hint_without_parent_cid_refused(tmp_path, parent):
    sp = Sparse(16, {}, desc=descriptor(parent=parent, hint='base.vmdk'))
    with pytest.raises(exception.InvalidImage,
                       match="parentFileNameHint 'base.vmdk'.* no parentCID"):
        vmdk.VmdkReader(view_of(tmp_path, sp.data))


def test_embedded_descriptor_with_text_after_nul_refused(tmp_path):
    """A delta whose descriptor is cut by a NUL would read as a base."""
    desc = descriptor(cid='ac2a197', parent='D941E849', hint='base.vmdk')
    cut = desc.replace(b'parentCID', b'\0parentCID')
    assert cut != desc
    sp = Sparse(16, {}, desc=cut)
    with pytest.raises(exception.InvalidImage, match='text after a NUL'):
        vmdk.VmdkReader(view_of(tmp_path, sp.data))


def test_embedded_descriptor_raw_device_refused(tmp_path):
    sp = Sparse(16, {}, desc=descriptor('vmfsRawDeviceMap'))
    with pytest.raises(exception.UnsupportedImage, match='raw device'):
        vmdk.VmdkReader(view_of(tmp_path, sp.data))


def test_creator():
    def creator(extra):
        r = vmdk.VmdkReader.__new__(vmdk.VmdkReader)
        r.descriptor = vd.parse(descriptor(extra=extra), 'x')
        return r.creator
    assert creator('ddb.toolsVersion = "2147483647"\n') == 'qemu'
    assert creator('ddb.longContentID = "abc"\n') == 'vmware'
    assert creator('# Created by VMDKstream\n') == 'VMDKstream'
    assert creator('') is None


# ---------------------------------------------------------------------------
# vmfsSparse (COWD)
# ---------------------------------------------------------------------------

def test_vmfssparse_delta_over_flat_base(tmp_path):
    # No sample exists (only ESX writes these): the delta is crafted from
    # VMware's published COWD header (cow_ext.h), 512-byte grains.
    size_s = 8192                                   # 4 MiB
    write(tmp_path, 'vm-flat.vmdk', fill(0x11, size_s * S))
    write(tmp_path, 'vm.vmdk', descriptor('vmfs', cid='0000b0b0', extents=[
        'RW %d VMFS "vm-flat.vmdk"' % size_s]))
    grains = {0: fill(0x22, S), 1: fill(0x23, S), 4096 + 7: fill(0x24, S)}
    write(tmp_path, 'vm-000001-delta.vmdk',
          cowd(size_s, grains, parent_name='vm.vmdk'))
    write(tmp_path, 'vm-000001.vmdk', descriptor(
        'vmfsSparse', cid='0000c1c1', parent='0000b0b0',
        hint='/vmfs/volumes/ds1/vm/vm.vmdk',
        extents=['RW %d VMFSSPARSE "vm-000001-delta.vmdk"' % size_s]))
    r = reader_in(tmp_path / 'vm-000001.vmdk')
    assert r.subformat == 'vmfsSparse'
    assert r.parent_ref == ('0000b0b0', ('vm.vmdk',))
    assert kinds(r, 0, 3 * S) == [(ext.DATA, 0, 2 * S),
                                  (ext.UNALLOCATED, 2 * S, S)]
    assert kinds(r, (4096 + 6) * S, 3 * S) == [
        (ext.UNALLOCATED, (4096 + 6) * S, S),
        (ext.DATA, (4096 + 7) * S, S),
        (ext.UNALLOCATED, (4096 + 8) * S, S)]
    raw = raw_of(r)
    assert raw[:2 * S] == fill(0x22, S) + fill(0x23, S)
    assert raw[(4096 + 7) * S:(4096 + 8) * S] == fill(0x24, S)
    assert r.allocated_bytes() == 3 * S
    # The whole chain, folded: the delta over its flat base.
    from any2kvm_os.chain import layer_chain
    c = cbase.DirectoryContainer(str(tmp_path / 'vm-000001.vmdk'),
                                 a2k_limits.Limits())
    chain = layer_chain.resolve(c, c.leaf_name, a2k_limits.Limits())
    assert [lay.identity for lay in chain.layers] == ['0000c1c1', '0000b0b0']
    folded = [(e.kind, e.offset, e.length, e.layer)
              for e in chain.fold(0, 4 * S)]
    assert folded == [(ext.DATA, 0, 2 * S, 0), (ext.DATA, 2 * S, 2 * S, 1)]
    c.close()


def test_vmfssparse_corruptions(tmp_path):
    good = cowd(8192, {0: fill(1, S)})
    for bad, match in [
            (_patch(good, 24, '<I', 0), 'needs 2'),
            (_patch(good, 16, '<I', 3), 'power of two'),
            (_patch(good, 4 * S, '<I', 10 ** 7), 'beyond the end'),
            (good[:-S], 'beyond the end')]:
        with pytest.raises(exception.InvalidImage, match=match):
            raw_of(vmdk.VmdkReader(view_of(tmp_path, bad)))


def test_bare_cowd(tmp_path):
    r = vmdk.VmdkReader(view_of(tmp_path, cowd(64, {2: fill(3, S)})))
    assert r.identity is None and r.subformat == 'vmfsSparse'
    assert raw_of(r)[2 * S:3 * S] == fill(3, S)


# ---------------------------------------------------------------------------
# seSparse
# ---------------------------------------------------------------------------

def test_sesparse_types_and_grain_numbers(tmp_path):
    cap = 2 * 8 * SES_GT                     # two grain tables: 32 MiB
    entries = {0: ses_entry('data', 0), 1: ses_entry('zero'),
               2: ses_entry('unmapped'), 4: ses_entry('data', 4096 + 5),
               SES_GT + 1: ses_entry('data', 1)}
    grains = {0: fill(0x61, SES_GRAIN), 1: fill(0x62, SES_GRAIN),
              4096 + 5: fill(0x63, SES_GRAIN)}
    data = sesparse(cap, entries, grains)
    write(tmp_path, 'snap-sesparse.vmdk', data)
    write(tmp_path, 'snap.vmdk', descriptor(
        'seSparse', parent='ffffffff',
        extents=['RW %d SESPARSE "snap-sesparse.vmdk"' % cap]))
    r = reader_in(tmp_path / 'snap.vmdk')
    g = SES_GRAIN
    assert r.virtual_size == cap * S
    assert kinds(r, 0, 6 * g) == [
        (ext.DATA, 0, g), (ext.ZERO, g, 2 * g), (ext.UNALLOCATED, 3 * g, g),
        (ext.DATA, 4 * g, g), (ext.UNALLOCATED, 5 * g, g)]
    raw = raw_of(r)
    assert raw[:g] == fill(0x61, g)
    assert raw[4 * g:5 * g] == fill(0x63, g)
    assert raw[(SES_GT + 1) * g:(SES_GT + 2) * g] == fill(0x62, g)
    assert r.allocated_bytes() == 3 * g


@pytest.mark.parametrize('kw,match', [
    ({'journal': 1}, 'journal'),
    ({'version': 0x100000001}, 'version'),
    ({'gd_raw': {0: 0x2000000000000000}}, 'unknown type'),
    ({'gd_raw': {0: 0x1000000000000009}}, 'table area'),
    ({'entries': {0: 0x5000000000000000}}, 'unknown type'),
    ({'entries': {0: 0x0000000000000007}}, 'non-zero'),
    ({'entries': {0: ses_entry('data', 10 ** 6)}}, 'grain area'),
    ({'entries': {0: ses_entry('data', 9)}}, 'beyond the end'),
])
def test_sesparse_refusals(tmp_path, kw, match):
    entries = kw.pop('entries', {0: ses_entry('data', 0)})
    data = sesparse(8 * SES_GT, entries, {0: fill(1, SES_GRAIN)}, **kw)
    with pytest.raises(exception.Any2KvmError, match=match):
        raw_of(vmdk.VmdkReader(view_of(tmp_path, data)))


# -- a stream cut short, read in one pass (an OVA downloaded or compressed)

def _one_pass(data):
    import io
    from any2kvm_os import fileio
    st = fileio.ForwardStream(io.BytesIO(data), 'm', len(data))
    layer = vmdk.StreamLayer('m', st.peek(S), len(data))
    layer.read_headers(st)
    got = {}
    for off, buf in layer.data_runs(st):
        got[off] = buf
    return got


@pytest.mark.parametrize('tail', [0, 1, 2],
                         ids=['after-gd', 'after-footer-marker',
                              'after-footer'])
def test_one_pass_stream_cut_after_grain_directory(caplog, tail):
    """As from a file: every grain the tables reference came, so it reads
    whole, with the same warning; memory is a few numbers per table."""
    g = 4096
    grains = {0: fill(1, g), 3: os.urandom(g), 9: fill(3, g),
              12: fill(4, g)}
    data, _ = stream(128, grains, desc=descriptor('streamOptimized'))
    cut = data[:len(data) - (3 - tail) * S]
    got = _one_pass(cut)
    assert got == {i * g: b for i, b in grains.items()}
    assert 'ends without its footer' in caplog.text
    assert 'read as complete' in caplog.text


def test_one_pass_complete_stream_has_no_warning(caplog):
    g = 4096
    grains = {0: fill(1, g), 5: fill(2, g)}
    data, _ = stream(64, grains, desc=descriptor('streamOptimized'))
    assert _one_pass(data) == {i * g: b for i, b in grains.items()}
    assert 'ends without' not in caplog.text


def _swap_gt_entries(data, entries, a, b):
    """Point table entry ``a`` at grain ``b``'s marker and back."""
    out = bytearray(data)
    gd_end = len(data) - 3 * S
    pos = entries[max(entries)] * S
    # Find each GT by scanning the metadata markers after the grains.
    while pos < gd_end:
        val, size, mtype = struct.unpack_from('<QII', out, pos)
        if size:
            pos += -(-(12 + size) // S) * S
            continue
        if mtype == vmdk.MARKER_GT:
            for j in range(val * S // 4):
                o = pos + S + 4 * j
                e = struct.unpack_from('<I', out, o)[0]
                if e == entries[a]:
                    struct.pack_into('<I', out, o, entries[b])
                elif e == entries[b]:
                    struct.pack_into('<I', out, o, entries[a])
        pos += S + val * S
    return bytes(out)


@pytest.mark.parametrize('damage', ['grain-lost', 'grain-dropped',
                                    'tables-swapped', 'table-lost'])
def test_one_pass_stream_cut_and_damaged_is_refused(damage):
    """Cut after the directory, but the grains that came are not those
    the tables reference: refused, not read as a disk missing data."""
    g = 4096
    grains = {0: fill(1, g), 3: fill(2, g), 6: fill(3, g)}
    data, entries = stream(64, grains, desc=descriptor('streamOptimized'))
    cut = data[:len(data) - 3 * S]
    if damage == 'grain-lost':
        # Grain 3's marker turned into an (unknown) metadata marker.
        bad = _patch(cut, entries[3] * S, '<QII', 0, 0, 7)
        match = 'unknown VMDK stream marker'
    elif damage == 'grain-dropped':
        # Grain 6's marker sector overwritten by a GT marker of 0 sectors
        # (skipped): its table entry points at nothing that came.
        bad = _patch(cut, entries[6] * S, '<QII', 0, 0, vmdk.MARKER_GT)
        match = 'reference 3 grains, 2 came'
    elif damage == 'tables-swapped':
        bad = _swap_gt_entries(cut, entries, 0, 3)
        match = 'do not reference the grains that came'
    else:
        # The directory's first entry points where no table came.
        bad = _patch(cut, len(cut) - S, '<I', 2)
        match = 'no grain table came'
    with pytest.raises(exception.InvalidImage, match=match):
        _one_pass(bad)


def test_one_pass_stream_cut_before_directory_says_what_to_do():
    g = 4096
    data, entries = stream(16, {0: fill(1, g), 1: fill(2, g)})
    with pytest.raises(exception.InvalidImage,
                       match='before its grain directory: truncated .*only '
                       'a complete copy'):
        _one_pass(data[:(entries[1] + 1) * S])


def test_one_pass_cut_stream_agrees_with_the_file_reader(tmp_path):
    """Differential: mutants of a stream cut after its directory (bytes
    changed in its grain markers, tables and directory) read in one pass
    either are refused or give exactly what the table-driven file reader
    gives for the same bytes.  A fixed seed: replayable."""
    import random
    g = 4096
    grains = {0: fill(1, g), 2: fill(2, g), 5: fill(3, g), 9: fill(4, g),
              14: fill(5, g)}
    data, entries = stream(128, grains, gtes=4,
                           desc=descriptor('streamOptimized'))
    cut = data[:len(data) - 3 * S]
    rnd = random.Random(14)
    first_grain = min(entries.values()) * S
    agreed = refused = 0
    for i in range(300):
        out = bytearray(cut)
        for _ in range(rnd.randint(1, 3)):
            o = rnd.randrange(first_grain, len(out))
            if rnd.random() < 0.5:
                out[o] ^= 1 << rnd.randrange(8)
            else:
                struct.pack_into('<I', out, o & ~3,
                                 rnd.choice([0, 1, 2, 3, entries[2],
                                             entries[9], 0xffffffff]))
        try:
            got = _one_pass(bytes(out))
        except exception.InvalidImage:
            refused += 1
            continue
        one_pass = bytearray(128 * S)
        for off, buf in got.items():
            one_pass[off:off + len(buf)] = buf
        try:
            by_table = raw_of(vmdk.VmdkReader(
                view_of(tmp_path, bytes(out), 'm%d.vmdk' % i)))
        except exception.InvalidImage as e:
            raise AssertionError('mutant %d read in one pass, refused by '
                                 'the file reader: %s' % (i, e))
        assert bytes(one_pass) == by_table, 'mutant %d' % i
        agreed += 1
    assert refused and agreed


def _rewritten(desc, *cids):
    from tests.lib import ovabuild
    raw = desc + bytes(-len(desc) % S or S)
    for cid in cids:
        raw = ovabuild.qemu_write_cid(raw, cid)
    return raw


@pytest.mark.parametrize('cids', [
    (0x1a2b3c,),                  # 8 digits -> 6: 1 byte left after NUL
    (0x1,),                       # 8 -> 1: 6 bytes left
    (0x1a2b3c4, 0x1a2b3, 0x12),   # three opens, each CID shorter
    (0x1, 0x1a2b3c4d),            # shorter, then longer again
])
def test_qemu_cid_rewrite_residue_accepted(tmp_path, cids):
    """qemu rewrites the CID in place, unpadded, on the first write after
    each open: a shorter one leaves the old text's last bytes after the
    NUL (qemu reads up to the NUL).  Not corrupt: read as qemu reads it."""
    desc = descriptor(cid='ac2a1975', parent='D941E849', hint='base.vmdk')
    raw = _rewritten(desc, *cids)
    nul = raw.index(b'\0')
    if cids != (0x1, 0x1a2b3c4d):
        assert raw[nul:].count(0) != len(raw) - nul     # residue there
    d = vd.parse(raw, 'x')
    assert d.cid == '%08x' % cids[-1]
    assert d.parent_cid == 'd941e849'
    assert d.parent_hint == 'base.vmdk'


@pytest.mark.parametrize('cut', [
    b'"\0\n',              # a NUL over the last quote
    b'\0"\n',              # a NUL before it
    b'"\n\0ddb.x = "1"\n',  # a short line after the NUL
])
def test_text_after_nul_not_a_cid_residue_refused(cut):
    desc = descriptor(cid='ac2a1975')
    assert desc.endswith(b'"\n')
    raw = desc[:-2] + cut + bytes(64)
    with pytest.raises(exception.InvalidImage, match='text after a NUL'):
        vd.parse(raw, 'x')
