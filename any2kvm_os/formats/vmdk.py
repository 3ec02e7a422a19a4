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
"""VMDK disks: VMware Workstation, ESXi and exported (OVF/OVA) disks.

A VMDK disk is a text descriptor (see :mod:`vmdk_descriptor`) and one or
more extents, the pieces of the disk in order.  The descriptor is a file of
its own or is embedded in a hosted sparse extent.  Extents (VMware "Virtual
Disk Format 1.1", and what qemu documents in its sources for seSparse):

* FLAT / VMFS: the bytes of the disk at an offset of a plain file;
* ZERO: zeros, no file;
* SPARSE, hosted (magic ``KDMV``): a grain directory (GD) of 32-bit sector
  numbers of grain tables (GT), each of ``numGTEsPerGT`` 32-bit sector
  numbers of grains.  A GT entry 0 is unallocated (the parent's data, or
  zeros without parent); 1 is a zero grain when the header's zeroed-grain
  flag is set.  streamOptimized extents hold deflate-compressed grains,
  each behind a marker (LBA, size), and metadata markers (GT, GD, footer,
  end of stream); the real GD offset may be in a footer at the end;
* VMFSSPARSE (magic ``COWD``, ESX "-delta.vmdk"): a root directory of
  32-bit sector numbers of tables of 4096 32-bit sector numbers of grains
  (1 sector by default);
* SESPARSE (ESXi 6.5+, VMFS6 snapshots, magic ``0xcafebabe``): 64-bit
  directory entries (``0x1000000000000000 | table index``) and 64-bit
  table entries whose top nibble is the grain type: 0 unallocated,
  1 unmapped and 2 zero (both read as zeros), 3 allocated with the grain
  number split in two bit fields.

Decisions:

* extent files are opened only through the container's ``opener`` (a file
  of the same directory or archive, by plain name); a path, ``..``, a link
  or a missing file is refused (CVE-2022-47951);
* the identity of a layer is its descriptor's CID (8 hex digits), its
  parent is the parentCID; a bare extent without descriptor has no
  identity and no parent and is read as a disk of its own, with a warning
  (dissect does the same; qemu 7.2 refuses a bare sparse extent and
  probes a bare seSparse one as raw; a delta read that way shows zeros
  where its parent would have data: ``info`` shows it without id and
  parent), except a piece of a split disk (``NAME-s001.vmdk``), whose
  place on the disk only its descriptor knows: refused;
* every table is validated before use: inside the file, counts bounded by
  the capacity, the capacity bounded by 64 TiB; a grain that does not
  decompress to its size, a grain marker for another LBA, or a pointer
  beyond the end of the file are refused, never read as zeros; so are
  NOACCESS extents and raw device mappings;
* the holes of a flat extent file (SEEK_HOLE) are reported as ZERO, so a
  sparse flat file is not read through;
* a DATA extent's ``file_offset`` is a tuple: ``(extent, offset)`` for
  stored bytes (runs of grains that follow each other in the file),
  ``(extent, 'deflate')`` for a run of compressed grains, which
  :meth:`VmdkReader.read_extent` finds through the tables and inflates
  (the last grain is cached; grains are read ahead 1 MiB at a time).
"""

import array
import bisect
import collections
import errno
import logging
import os
import re
import struct
import sys
import threading
import zlib

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.formats import base
from any2kvm_os.formats import vmdk_descriptor as vd

LOG = logging.getLogger(__name__)
#: The name qemu and VMware give the extents of a split sparse disk.
_SPLIT_PIECE_RE = re.compile(r'-s[0-9]{3}\.vmdk$', re.I)

SECTOR = 512
MAX_VIRTUAL_SIZE = vd.MAX_VIRTUAL_SIZE

KDMV_MAGIC = b'KDMV'
COWD_MAGIC = b'COWD'
SESPARSE_MAGIC = struct.pack('<Q', 0xcafebabe)
SESPARSE_VOLATILE_MAGIC = 0xcafecafe
SESPARSE_VERSION = 0x0000000200000001

# Hosted sparse header flags.
FLAG_NL_TEST = 1 << 0
FLAG_RGD = 1 << 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
COMPRESS_DEFLATE = 1
GD_AT_END = 0xFFFFFFFFFFFFFFFF

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

# Bounds (independent of configuration).
MAX_GRAIN_SECTORS = 1 << 16          # 32 MiB grains
MAX_GTES = 4096
MAX_GD_ENTRIES = 1 << 25
COWD_GTES = 4096
SESPARSE_GRAIN_SECTORS = 8
SESPARSE_GT_SECTORS = 64
#: Extent files kept open at once (a split disk may have thousands).
MAX_OPEN_FILES = 64
#: Grain tables kept decoded per extent.
TABLE_CACHE = 256

_UNALLOC = -1
_ZERO = -2
#: Second item of the token of a run of compressed grains.
COMPRESSED = 'deflate'
#: Read-ahead of compressed grains (they follow each other in the file).
READ_AHEAD = 1 << 20
#: Threads, the caller included, that inflate the grains of one read of
#: compressed grains (zlib releases the GIL while it inflates); fewer on a
#: host with fewer cpus.  Memory stays that of the read: its grains.
INFLATE_THREADS = 4
#: A read of fewer grains than this is inflated by the caller alone.
INFLATE_PARALLEL_MIN = 4


def _inflate_threads():
    """How many threads may inflate one read: one per cpu we may use, up
    to INFLATE_THREADS; one when the host's cpus are already all busy
    (1-minute load average at least cpus + 1, this conversion's own
    threads counted in it), where more threads only add switching
    (measured: no gain at a load of 10-15 on 2 cpus)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if cpus < 2:
        return 1
    try:
        if os.getloadavg()[0] >= cpus + 1:
            return 1
    except (AttributeError, OSError):
        pass
    return min(INFLATE_THREADS, cpus)


# magic(4) version flags capacity grainSize descriptorOffset descriptorSize
# numGTEsPerGT rgdOffset gdOffset overHead uncleanShutdown 4 check chars
# compressAlgorithm
_KDMV = struct.Struct('<4sIIQQQQIQQQB4sH')
KdmvHeader = collections.namedtuple('KdmvHeader', [
    'magic', 'version', 'flags', 'capacity', 'grain_size', 'desc_offset',
    'desc_size', 'num_gtes', 'rgd_offset', 'gd_offset', 'overhead',
    'unclean', 'check_chars', 'compress'])

_COWD = struct.Struct('<4sIIIIIII')
CowdHeader = collections.namedtuple('CowdHeader', [
    'magic', 'version', 'flags', 'capacity', 'grain_size', 'gd_offset',
    'gd_entries', 'free_sector'])
COWD_HEADER_SIZE = 2048
COWD_FLAG_ROOT = 0x01

_SES = struct.Struct('<26Q')
SeSparseHeader = collections.namedtuple('SeSparseHeader', [
    'magic', 'version', 'capacity', 'grain_size', 'gt_size', 'flags',
    'reserved1', 'reserved2', 'reserved3', 'reserved4',
    'volatile_offset', 'volatile_size', 'journal_header_offset',
    'journal_header_size', 'journal_offset', 'journal_size',
    'gd_offset', 'gd_size', 'gt_offset', 'gt_size_total',
    'free_bitmap_offset', 'free_bitmap_size', 'backmap_offset',
    'backmap_size', 'grains_offset', 'grains_size'])
_SES_VOLATILE = struct.Struct('<4Q')

_MARKER = struct.Struct('<QII')


def _array(code, raw):
    a = array.array(code)
    a.frombytes(raw)
    if sys.byteorder != 'little':
        a.byteswap()
    return a


def parse_kdmv_header(buf, path):
    if len(buf) < _KDMV.size:
        raise exception.InvalidImage(
            path=path, reason='truncated VMDK sparse extent header')
    return KdmvHeader._make(_KDMV.unpack_from(buf, 0))


def _pow2(n):
    return n > 0 and not n & (n - 1)


# -- extent files -------------------------------------------------------------


class _File(object):
    """An extent file, opened through the container; reopened on demand
    when too many are open."""

    def __init__(self, reader, name, view, owned):
        self.reader = reader
        self.name = name
        self._view = view
        self.owned = owned
        self.size = view.size
        self.display = view.name

    def view(self):
        if self._view is None or self._view.fd is None:
            self._view = self.reader._reopen(self)
        self.reader._touch(self)
        return self._view

    def close(self):
        if self.owned and self._view is not None:
            self._view.close()
            self._view = None

    def pread(self, length, offset):
        data = self.view().pread(length, offset)
        base.check_read(self.display, len(data), length, offset)
        return data

    def preadinto(self, buf, offset):
        """:meth:`pread` of ``len(buf)`` bytes straight into ``buf``."""
        view = self.view()
        length = len(buf)
        if type(view) is fileio.FileView:
            got = view.preadinto(buf, offset)
        else:
            data = view.pread(length, offset)
            got = len(data)
            if got == length:
                buf[:] = data
        base.check_read(self.display, got, length, offset)


# -- extents ------------------------------------------------------------------


def _put(buf, pos, data, inner, n):
    """Copy ``data[inner:inner + n]`` (a grain) to ``buf[pos:]``."""
    if inner == 0 and n == len(data):
        buf[pos:pos + n] = data
    else:
        buf[pos:pos + n] = memoryview(data)[inner:inner + n]


class _Extent(object):
    """A piece of the virtual disk: ``[start, start + size)``."""

    kind = None
    compressed = False

    def __init__(self, index, start, size):
        self.index = index
        self.start = start
        self.size = size

    @property
    def end(self):
        return self.start + self.size

    def status(self, lo, hi):
        """Yield (kind, lo, hi, token) runs of ``[lo, hi)`` (absolute)."""
        raise NotImplementedError

    def read(self, token, skip, length):
        f = self.file
        return f.pread(length, token[1] + skip)

    def read_into(self, token, skip, buf):
        """:meth:`read` into ``buf`` (a writable memoryview), in place."""
        self.file.preadinto(buf, token[1] + skip)


class _ZeroExtent(_Extent):
    kind = 'ZERO'

    def status(self, lo, hi):
        yield ext.ZERO, lo, hi, None


class _FlatExtent(_Extent):
    kind = 'FLAT'

    def __init__(self, index, start, size, file, offset):
        super(_FlatExtent, self).__init__(index, start, size)
        self.file = file
        self.offset = offset
        if offset + size > file.size:
            raise exception.InvalidImage(
                path=file.display, reason='flat extent needs %d bytes from '
                'offset %d, the file holds %d: truncated'
                % (size, offset, file.size))

    def _holes(self, a, b):
        """(start, end, is_data) runs of file bytes [a, b) according to
        SEEK_DATA/SEEK_HOLE (a hole reads as zeros); one data run when the
        file system does not tell."""
        view = self.file.view()
        fd, fbase = view.fd, view.base
        out = []
        pos = a
        try:
            while pos < b:
                try:
                    d = os.lseek(fd, fbase + pos, os.SEEK_DATA) - fbase
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    d = b       # ENXIO: only a hole up to the end
                d = max(pos, min(d, b))
                if d > pos:
                    out.append((pos, d, False))
                if d >= b:
                    break
                h = os.lseek(fd, fbase + d, os.SEEK_HOLE) - fbase
                h = max(d + 1, min(h, b))
                out.append((d, h, True))
                pos = h
        except (OSError, AttributeError):
            return [(a, b, True)]
        return out

    def status(self, lo, hi):
        a = self.offset + (lo - self.start)
        for s, e, is_data in self._holes(a, a + (hi - lo)):
            vlo = lo + (s - a)
            vhi = lo + (e - a)
            if is_data:
                yield ext.DATA, vlo, vhi, (self.index, s)
            else:
                yield ext.ZERO, vlo, vhi, None


class _GrainExtent(_Extent):
    """An extent made of grains found through a directory and tables.

    Subclasses set ``grain`` (bytes), ``gt_entries``, ``gd`` (one entry
    per table, falsy when the table is absent) and implement
    ``_decode(gdi)`` that returns the table's entries as _UNALLOC, _ZERO
    or the byte offset of the grain (of its marker when compressed).
    """

    def __init__(self, index, start, size, file):
        super(_GrainExtent, self).__init__(index, start, size)
        self.file = file
        self._tables = collections.OrderedDict()

    def _table(self, gdi):
        t = self._tables.get(gdi)
        if t is not None:
            self._tables.move_to_end(gdi)
            return t
        if not self.gd[gdi]:
            return None
        t = self._decode(gdi)
        self._tables[gdi] = t
        if len(self._tables) > TABLE_CACHE:
            self._tables.popitem(last=False)
        return t

    def _grain_need(self, gdi, j):
        """Bytes of grain ``j`` of table ``gdi`` inside the extent."""
        g0 = (gdi * self.gt_entries + j) * self.grain
        return max(0, min(self.grain, self.size - g0))

    def _check_pointers(self, gdi, offsets):
        """Every grain of a decoded table lies inside the file."""
        limit = self.file.size
        data = [o for o in offsets if o >= 0]
        if not data or max(data) + self.grain <= limit:
            return
        for j, o in enumerate(offsets):
            if o >= 0 and o + self._grain_need(gdi, j) > limit:
                raise exception.InvalidImage(
                    path=self.file.display, reason='grain table %d entry %d '
                    'points to offset %d, beyond the end of the file (%d '
                    'bytes): truncated or corrupt' % (gdi, j, o, limit))

    def _token(self, kind, off):
        if kind != ext.DATA:
            return None
        return (self.index, COMPRESSED) if self.compressed else \
            (self.index, off)

    def status(self, lo, hi):
        span = self.grain * self.gt_entries
        base_ = self.start
        compressed = self.compressed
        run_kind = None
        run_lo = lo
        run_off = None
        pos = lo
        while pos < hi:
            gdi = (pos - base_) // span
            gt_lo = base_ + gdi * span
            gt_hi = min(hi, gt_lo + span)
            table = self._table(gdi)
            if table is None:
                pieces = ((ext.UNALLOCATED, pos, None),)
            else:
                pieces = self._pieces(table, gt_lo, pos, gt_hi)
            for kind, a, off in pieces:
                # Stored grains join a run when they follow each other in
                # the file; compressed grains always do (read_extent finds
                # each one through the tables).
                if run_kind == kind and (
                        kind != ext.DATA or compressed
                        or run_off + (a - run_lo) == off):
                    continue
                if run_kind is not None:
                    yield run_kind, run_lo, a, self._token(run_kind, run_off)
                run_kind, run_lo, run_off = kind, a, off
            pos = gt_hi
        if run_kind is not None:
            yield run_kind, run_lo, hi, self._token(run_kind, run_off)

    def _pieces(self, table, gt_lo, lo, hi):
        """(kind, start, file offset) of each grain from ``lo`` to ``hi``
        (the part of one table's span being looked at)."""
        g = self.grain
        j = (lo - gt_lo) // g
        pos = lo
        out = []
        while pos < hi:
            e = table[j]
            if e == _UNALLOC:
                out.append((ext.UNALLOCATED, pos, None))
            elif e == _ZERO:
                out.append((ext.ZERO, pos, None))
            else:
                out.append((ext.DATA, pos, e + (pos - gt_lo - j * g)))
            pos = gt_lo + (j + 1) * g
            j += 1
        return out


class _HostedSparseExtent(_GrainExtent):
    """A hosted sparse extent (``KDMV``), plain or stream-optimized."""

    kind = 'SPARSE'

    def __init__(self, index, start, size, file, hdr, how=None):
        super(_HostedSparseExtent, self).__init__(index, start, size, file)
        path = file.display
        self.hdr = hdr
        #: Metadata markers precede the directory and every table (a
        #: stream whose directory offset is in its footer).
        self.marked_tables = how in ('footer', 'cut') and bool(
            hdr.flags & FLAG_MARKERS)
        self.grain = hdr.grain_size * SECTOR
        self.gt_entries = hdr.num_gtes
        self.zero_grain = bool(hdr.flags & FLAG_ZERO_GRAIN)
        self.compressed = bool(hdr.flags & FLAG_COMPRESSED)
        self.markers = bool(hdr.flags & FLAG_MARKERS)
        self._cache = (None, None)
        self._ra = (None, memoryview(b''))
        span_sectors = hdr.grain_size * hdr.num_gtes
        n = -(-hdr.capacity // span_sectors)
        if n > MAX_GD_ENTRIES:
            raise exception.InvalidImage(
                path=path, reason='VMDK grain directory of %d entries is '
                'larger than the limit of %d' % (n, MAX_GD_ENTRIES))
        gd_off = hdr.gd_offset * SECTOR
        if hdr.gd_offset == 0 or gd_off + n * 4 > file.size:
            raise exception.InvalidImage(
                path=path, reason='VMDK grain directory at sector %d (%d '
                'entries) lies outside the file (%d bytes)'
                % (hdr.gd_offset, n, file.size))
        if self.marked_tables and not _is_marker(
                file.pread(SECTOR, gd_off - SECTOR), MARKER_GD,
                -(-n * 4 // SECTOR)):
            raise exception.InvalidImage(
                path=path, reason='streamOptimized VMDK has no grain '
                'directory marker before its directory (sector %d): '
                'corrupt or shifted' % hdr.gd_offset)
        self.gd = _array('I', file.pread(n * 4, gd_off))
        gt_bytes = self.gt_entries * 4
        if n and max(self.gd) * SECTOR + gt_bytes > file.size:
            bad = max(range(n), key=lambda i: self.gd[i])
            raise exception.InvalidImage(
                path=path, reason='VMDK grain directory entry %d points to '
                'sector %d, beyond the end of the file (%d bytes): truncated '
                'or corrupt' % (bad, self.gd[bad], file.size))
        if how == 'cut':
            self._check_every_grain()
            LOG.warning('%s: streamOptimized VMDK ends without its footer '
                        'and end-of-stream marker (a transfer cut short?); '
                        'every grain its tables reference is present, so '
                        'it is read as complete', path)

    def _check_every_grain(self):
        """A stream cut short: every grain its tables reference must be
        there, whole, behind a marker for its place on the disk."""
        path = self.file.display
        for gdi in range(len(self.gd)):
            table = self._table(gdi)
            if table is None:
                continue
            for j, off in enumerate(table):
                if off < 0:
                    continue
                rel = (gdi * self.gt_entries + j) * self.grain
                lba, size = struct.unpack('<QI', self.file.pread(12, off))
                if size == 0 or lba * SECTOR != rel or \
                        off + 12 + size > self.file.size:
                    raise exception.InvalidImage(
                        path=path, reason='streamOptimized VMDK ends without '
                        'its footer, and grain %d (table %d entry %d, offset '
                        '%d) is missing or cut: truncated'
                        % (rel // self.grain, gdi, j, off))

    def _decode(self, gdi):
        if self.marked_tables and not _is_marker(
                self.file.pread(SECTOR, self.gd[gdi] * SECTOR - SECTOR),
                MARKER_GT, -(-self.gt_entries * 4 // SECTOR)):
            raise exception.InvalidImage(
                path=self.file.display, reason='VMDK grain directory entry '
                '%d points to sector %d, where no grain table marker '
                'precedes: corrupt or shifted' % (gdi, self.gd[gdi]))
        raw = self.file.pread(self.gt_entries * 4, self.gd[gdi] * SECTOR)
        zero = 1 if self.zero_grain else None
        out = [_UNALLOC if e == 0 else _ZERO if e == zero else e * SECTOR
               for e in _array('I', raw)]
        if self.compressed:
            limit = self.file.size - _MARKER.size
            for j, o in enumerate(out):
                if o > limit:
                    raise exception.InvalidImage(
                        path=self.file.display, reason='grain table %d entry '
                        '%d points to offset %d, beyond the end of the file '
                        '(%d bytes): truncated or corrupt'
                        % (gdi, j, o, self.file.size))
        else:
            self._check_pointers(gdi, out)
        return out

    def read_compressed(self, vpos, length):
        """Disk bytes ``[vpos, vpos + length)`` of a run of compressed
        grains (see :meth:`read_compressed_into`), as a bytearray."""
        buf = bytearray(length)
        self.read_compressed_into(vpos, memoryview(buf))
        return buf

    def read_compressed_into(self, vpos, buf):
        """Disk bytes ``[vpos, vpos + len(buf))`` of a run of compressed
        grains into ``buf`` (a writable memoryview): each grain is found
        through the tables, inflated and copied straight in.  The grains
        of one read are inflated by up to INFLATE_THREADS threads, each
        into its own part of ``buf``.  The last grain inflated is kept:
        the copy loop's chunks may end inside it."""
        g = self.grain
        pos = 0
        end = len(buf)
        jobs = []       # (pos in buf, offset in the grain, n, marker,
        #                  the grain's start on the disk)
        while pos < end:
            gi = (vpos - self.start) // g
            gdi, j = divmod(gi, self.gt_entries)
            table = self._table(gdi)
            off = table[j] if table is not None else _UNALLOC
            if off < 0:
                raise exception.InvalidImage(
                    path=self.file.display, reason='grain %d is not stored '
                    '(internal inconsistency)' % gi)
            gstart = self.start + gi * g
            inner = vpos - gstart
            n = min(end - pos, g - inner)
            key, data = self._cache
            if key == off:
                buf[pos:pos + n] = memoryview(data)[inner:inner + n]
            else:
                jobs.append((pos, inner, n, off, gstart))
            pos += n
            vpos += n
        if not jobs:
            return
        threads = 1
        if len(jobs) >= 2 * INFLATE_PARALLEL_MIN:
            threads = min(_inflate_threads(),
                          len(jobs) // INFLATE_PARALLEL_MIN)
        self._cache = (jobs[-1][3], self._inflate_jobs(jobs, buf, threads))

    def _inflate_jobs(self, jobs, buf, threads):
        """Inflate ``jobs`` (see :meth:`read_compressed_into`) into
        ``buf`` in ``threads`` contiguous parts, the first by the caller;
        return the last grain's bytes.  The file is read by the caller, in
        order (the read-ahead is not shared): grain by grain as it
        inflates when alone, else every grain before the parts start;
        only inflating is parallel."""
        if threads < 2:
            def raw_of(i):
                return self._grain_raw(jobs[i][3], jobs[i][4])
        else:
            raw_of = [self._grain_raw(off, gstart)
                      for _p, _inner, _n, off, gstart in jobs].__getitem__
        per = -(-len(jobs) // threads)
        results = [None] * threads

        def part(k):
            data = None
            try:
                for i in range(k * per, min(len(jobs), (k + 1) * per)):
                    p, inner, n, off, _gstart = jobs[i]
                    data = self._inflate_raw(off, *raw_of(i))
                    _put(buf, p, data, inner, n)
                results[k] = (True, data)
            except BaseException as e:  # raised by the caller, in order
                results[k] = (False, e)

        helpers = [threading.Thread(target=part, args=(k,), daemon=True,
                                    name='any2kvm-inflate')
                   for k in range(1, threads)]
        for t in helpers:
            t.start()
        try:
            part(0)
        finally:
            for t in helpers:
                t.join()
        data = None
        for ok, value in results:
            if not ok:
                raise value
            if value is not None:
                data = value
        return data

    def _read_ahead(self, length, off):
        """File bytes for grains, through a read-ahead buffer: the grains
        of a stream follow each other in the file."""
        start, buf = self._ra
        if start is not None and start <= off and \
                off + length <= start + len(buf):
            return buf[off - start:off - start + length]
        n = min(max(length, READ_AHEAD), self.file.size - off)
        buf = memoryview(self.file.view().pread(n, off))
        self._ra = (off, buf)
        base.check_read(self.file.display, min(len(buf), length), length,
                        off)
        return buf[:length]

    def _grain_raw(self, off, gstart):
        """(compressed bytes, bytes expected) of the grain whose marker is
        at ``off``, checked against the tables; read through the
        read-ahead (not thread-safe)."""
        path = self.file.display
        rel = gstart - self.start
        need = min(self.grain, self.size - rel)
        bound = 2 * self.grain + 4096
        if self.markers:
            lba, size = struct.unpack('<QI', self._read_ahead(12, off))
            if size == 0:
                raise exception.InvalidImage(
                    path=path, reason='grain table points to a metadata '
                    'marker at offset %d, not to a grain' % off)
            if lba * SECTOR != rel:
                raise exception.InvalidImage(
                    path=path, reason='grain marker at offset %d is for '
                    'sector %d, the grain table expects sector %d: corrupt'
                    % (off, lba, rel // SECTOR))
            if size > bound:
                raise exception.InvalidImage(
                    path=path, reason='compressed grain at offset %d of %d '
                    'bytes is larger than the limit of %d for %d-byte grains'
                    % (off, size, bound, self.grain))
            if off + 12 + size > self.file.size:
                raise exception.InvalidImage(
                    path=path, reason='compressed grain at offset %d (%d '
                    'bytes) runs past the end of the file: truncated'
                    % (off, size))
            raw = self._read_ahead(size, off + 12)
        else:
            raw = self._read_ahead(min(bound, self.file.size - off), off)
        return raw, need

    def _inflate_raw(self, off, raw, need):
        """Inflate the compressed bytes ``raw`` of the grain at ``off``
        (:meth:`_grain_raw`); safe in any thread."""
        path = self.file.display
        d = zlib.decompressobj()
        try:
            # One byte more than a grain tells a grain that inflates too
            # far; input left over with room in the output, a cut stream.
            out = d.decompress(raw, self.grain + 1)
        except zlib.error as e:
            raise exception.InvalidImage(
                path=path, reason='compressed grain at offset %d: corrupt '
                'deflate stream (%s)' % (off, e))
        if len(out) > self.grain:
            raise exception.InvalidImage(
                path=path, reason='compressed grain at offset %d inflates to '
                'more than the grain size (%d bytes): corrupt'
                % (off, self.grain))
        if not d.eof:
            raise exception.InvalidImage(
                path=path, reason='compressed grain at offset %d is cut '
                'short: corrupt deflate stream' % off)
        if len(out) < need:
            raise exception.InvalidImage(
                path=path, reason='compressed grain at offset %d inflates to '
                '%d bytes, %d expected: corrupt' % (off, len(out), need))
        return out


class _CowdExtent(_GrainExtent):
    """An ESX vmfsSparse extent (``COWD``, "-delta.vmdk")."""

    kind = 'VMFSSPARSE'

    def __init__(self, index, start, size, file, hdr):
        super(_CowdExtent, self).__init__(index, start, size, file)
        path = file.display
        self.hdr = hdr
        self.grain = hdr.grain_size * SECTOR
        self.gt_entries = COWD_GTES
        n = -(-hdr.capacity // (hdr.grain_size * COWD_GTES))
        if hdr.gd_entries < n:
            raise exception.InvalidImage(
                path=path, reason='vmfsSparse root directory has %d entries, '
                'the capacity needs %d' % (hdr.gd_entries, n))
        gd_off = hdr.gd_offset * SECTOR
        if hdr.gd_offset == 0 or gd_off + n * 4 > file.size:
            raise exception.InvalidImage(
                path=path, reason='vmfsSparse root directory at sector %d '
                '(%d entries) lies outside the file (%d bytes)'
                % (hdr.gd_offset, n, file.size))
        self.gd = _array('I', file.pread(n * 4, gd_off))
        if n and max(self.gd) * SECTOR + COWD_GTES * 4 > file.size:
            bad = max(range(n), key=lambda i: self.gd[i])
            raise exception.InvalidImage(
                path=path, reason='vmfsSparse root entry %d points to sector '
                '%d, beyond the end of the file (%d bytes): truncated or '
                'corrupt' % (bad, self.gd[bad], file.size))

    def _decode(self, gdi):
        raw = self.file.pread(COWD_GTES * 4, self.gd[gdi] * SECTOR)
        out = [_UNALLOC if e == 0 else e * SECTOR for e in _array('I', raw)]
        self._check_pointers(gdi, out)
        return out


class _SeSparseExtent(_GrainExtent):
    """An ESXi seSparse extent (VMFS6 snapshot delta)."""

    kind = 'SESPARSE'

    def __init__(self, index, start, size, file, hdr):
        super(_SeSparseExtent, self).__init__(index, start, size, file)
        path = file.display
        self.hdr = hdr
        self.grain = hdr.grain_size * SECTOR
        self.gt_entries = hdr.gt_size * SECTOR // 8
        self.gt_bytes = hdr.gt_size * SECTOR
        n = -(-hdr.capacity // (hdr.grain_size * self.gt_entries))
        if hdr.gd_size * SECTOR // 8 < n:
            raise exception.InvalidImage(
                path=path, reason='seSparse grain directory of %d sectors is '
                'too small for the capacity' % hdr.gd_size)
        gd_off = hdr.gd_offset * SECTOR
        if gd_off + n * 8 > file.size:
            raise exception.InvalidImage(
                path=path, reason='seSparse grain directory at sector %d lies '
                'outside the file (%d bytes)' % (hdr.gd_offset, file.size))
        self.max_tables = hdr.gt_size_total // hdr.gt_size
        self.max_grains = hdr.grains_size // hdr.grain_size
        gd = []
        for i, e in enumerate(_array('Q', file.pread(n * 8, gd_off))):
            if e == 0:
                gd.append(None)
                continue
            if e >> 32 != 0x10000000:
                raise exception.InvalidImage(
                    path=path, reason='seSparse grain directory entry %d has '
                    'an unknown type (0x%016x): corrupt' % (i, e))
            t = e & 0xFFFFFFFF
            off = hdr.gt_offset * SECTOR + t * self.gt_bytes
            if t >= self.max_tables or off + self.gt_bytes > file.size:
                raise exception.InvalidImage(
                    path=path, reason='seSparse grain directory entry %d '
                    'points to grain table %d, outside the file or its '
                    'table area: truncated or corrupt' % (i, t))
            gd.append(off)
        self.gd = gd

    def _decode(self, gdi):
        raw = self.file.pread(self.gt_bytes, self.gd[gdi])
        out = []
        grains_off = self.hdr.grains_offset * SECTOR
        for j, e in enumerate(_array('Q', raw)):
            t = e >> 60
            if t == 0:
                if e:
                    raise exception.InvalidImage(
                        path=self.file.display, reason='seSparse grain table '
                        '%d entry %d: unallocated with a non-zero value '
                        '(0x%016x): corrupt' % (gdi, j, e))
                out.append(_UNALLOC)
            elif t in (1, 2):
                # 1: unmapped (SCSI UNMAP), 2: zero grain: both read zeros.
                out.append(_ZERO)
            elif t == 3:
                grain = ((e >> 48) & 0xFFF) | ((e & 0xFFFFFFFFFFFF) << 12)
                if grain >= self.max_grains:
                    raise exception.InvalidImage(
                        path=self.file.display, reason='seSparse grain table '
                        '%d entry %d: grain %d lies outside the grain area: '
                        'corrupt' % (gdi, j, grain))
                out.append(grains_off + grain * self.grain)
            else:
                raise exception.InvalidImage(
                    path=self.file.display, reason='seSparse grain table %d '
                    'entry %d has an unknown type (0x%016x): corrupt'
                    % (gdi, j, e))
        self._check_pointers(gdi, out)
        return out


# -- headers of sparse extents ------------------------------------------------


def _check_kdmv(hdr, file_size, path):
    if hdr.magic != KDMV_MAGIC:
        raise exception.InvalidImage(path=path,
                                     reason='not a VMDK sparse extent')
    if hdr.version not in (1, 2, 3):
        raise exception.UnsupportedImage(
            path=path, reason='VMDK sparse extent version %d is not '
            'supported (1 to 3)' % hdr.version)
    if hdr.capacity * SECTOR > MAX_VIRTUAL_SIZE:
        raise exception.InvalidImage(
            path=path, reason='VMDK capacity of %d sectors is larger than '
            'the format limit of %d bytes: refused as absurd'
            % (hdr.capacity, MAX_VIRTUAL_SIZE))
    if not _pow2(hdr.grain_size) or hdr.grain_size > MAX_GRAIN_SECTORS:
        raise exception.InvalidImage(
            path=path, reason='VMDK grain size of %d sectors is not a power '
            'of two up to %d' % (hdr.grain_size, MAX_GRAIN_SECTORS))
    if not 1 <= hdr.num_gtes <= MAX_GTES:
        raise exception.InvalidImage(
            path=path, reason='VMDK grain tables of %d entries: refused '
            '(1 to %d)' % (hdr.num_gtes, MAX_GTES))
    if hdr.flags & FLAG_NL_TEST and hdr.check_chars != b'\n \r\n':
        raise exception.InvalidImage(
            path=path, reason='VMDK header end-of-line check bytes are '
            'altered: the file was damaged by a text-mode transfer')
    if hdr.flags & FLAG_COMPRESSED and hdr.compress != COMPRESS_DEFLATE:
        raise exception.UnsupportedImage(
            path=path, reason='VMDK compression algorithm %d is not '
            'supported (deflate only)' % hdr.compress)


def _stream_footer(file, path):
    """The header copy at the end of a stream-optimized extent.

    Layout: footer marker, footer (a header with the real gdOffset),
    end-of-stream marker, each one sector.
    """
    size = file.size
    if size < 3 * SECTOR + SECTOR:
        raise exception.InvalidImage(
            path=path, reason='streamOptimized VMDK without its footer: '
            'truncated')
    tail = file.pread(3 * SECTOR, size - 3 * SECTOR)
    val, msize, mtype = _MARKER.unpack_from(tail, 0)
    eval_, esize, etype = _MARKER.unpack_from(tail, 2 * SECTOR)
    if (msize != 0 or mtype != MARKER_FOOTER or eval_ != 0 or esize != 0
            or etype != MARKER_EOS or tail[SECTOR:SECTOR + 4] != KDMV_MAGIC):
        raise exception.InvalidImage(
            path=path, reason='streamOptimized VMDK declares its grain '
            'directory at the end but has no valid footer: truncated or '
            'corrupt')
    return parse_kdmv_header(tail[SECTOR:2 * SECTOR], path)


def open_kdmv(file, path):
    """Header of a hosted sparse extent, the footer's when it has one."""
    return open_kdmv_ex(file, path)[0]


def open_kdmv_ex(file, path):
    """(header, how): the header of a hosted sparse extent, the footer's
    when it has one; ``how`` is None for a header used as it is,
    ``'footer'`` when the grain directory offset came from the footer of
    a stream, ``'cut'`` when a stream without footer was found to end just
    after its grain directory (every grain must then be checked)."""
    hdr = parse_kdmv_header(file.pread(SECTOR, 0), path)
    _check_kdmv(hdr, file.size, path)
    if file.size % SECTOR:
        raise exception.InvalidImage(
            path=path, reason='VMDK sparse extent of %d bytes is not made '
            'of whole sectors: truncated, or bytes inserted or deleted'
            % file.size)
    if hdr.gd_offset != GD_AT_END:
        return hdr, None
    try:
        foot = _stream_footer(file, path)
    except exception.InvalidImage as e:
        cut = _cut_stream_gd(file, hdr)
        if cut is None:
            raise e
        return hdr._replace(gd_offset=cut), 'cut'
    _check_kdmv(foot, file.size, path)
    if foot.gd_offset == GD_AT_END:
        raise exception.InvalidImage(
            path=path, reason='streamOptimized VMDK footer has no grain '
            'directory offset')
    for field in ('capacity', 'grain_size', 'num_gtes', 'flags',
                  'compress'):
        if getattr(foot, field) != getattr(hdr, field):
            raise exception.InvalidImage(
                path=path, reason='streamOptimized VMDK header and footer '
                'disagree on the %s (%d and %d): corrupt or shifted'
                % (field.replace('_', ' '), getattr(hdr, field),
                   getattr(foot, field)))
    return foot, 'footer'


def _gd_sectors(hdr):
    n = -(-hdr.capacity // (hdr.grain_size * hdr.num_gtes))
    return n, -(-n * 4 // SECTOR)


def _is_marker(raw, mtype, sectors=None):
    val, size, kind = _MARKER.unpack_from(raw, 0)
    return size == 0 and kind == mtype and (sectors is None
                                            or val == sectors)


def _cut_stream_gd(file, hdr):
    """The sector of the grain directory of a stream cut short after it
    (its footer and end-of-stream marker missing, or only the latter):
    the file ends with the directory's marker and the directory, then at
    most the footer marker and the footer.  None when it does not."""
    if not hdr.flags & FLAG_MARKERS or hdr.gd_offset != GD_AT_END:
        return None
    n, sectors = _gd_sectors(hdr)
    if n > MAX_GD_ENTRIES:
        return None
    for extra in (0, 1, 2):
        at = file.size - (extra + sectors + 1) * SECTOR
        if at < SECTOR:
            continue
        if not _is_marker(file.pread(SECTOR, at), MARKER_GD, sectors):
            continue
        after = at + (sectors + 1) * SECTOR
        if extra and not _is_marker(file.pread(SECTOR, after),
                                    MARKER_FOOTER):
            continue
        return at // SECTOR + 1
    return None


def open_cowd(file, path):
    if file.size < COWD_HEADER_SIZE:
        raise exception.InvalidImage(
            path=path, reason='truncated vmfsSparse (COWD) header')
    raw = file.pread(COWD_HEADER_SIZE, 0)
    hdr = CowdHeader._make(_COWD.unpack_from(raw, 0))
    if hdr.magic != COWD_MAGIC:
        raise exception.InvalidImage(path=path,
                                     reason='not a vmfsSparse (COWD) extent')
    if not _pow2(hdr.grain_size) or hdr.grain_size > MAX_GRAIN_SECTORS:
        raise exception.InvalidImage(
            path=path, reason='vmfsSparse grain size of %d sectors is not a '
            'power of two up to %d' % (hdr.grain_size, MAX_GRAIN_SECTORS))
    if hdr.gd_entries > MAX_GD_ENTRIES:
        raise exception.InvalidImage(
            path=path, reason='vmfsSparse root directory of %d entries is '
            'larger than the limit of %d' % (hdr.gd_entries, MAX_GD_ENTRIES))
    child = not hdr.flags & COWD_FLAG_ROOT
    parent = raw[32:32 + 1024].split(b'\0', 1)[0].decode('latin-1')
    return hdr, (vd.basename_hint(parent) if child else None)


def open_sesparse(file, path):
    """Const and volatile headers of a seSparse extent, checked strictly
    (the format is not published: anything unexpected is refused)."""
    raw = file.pread(SECTOR, 0)
    hdr = SeSparseHeader._make(_SES.unpack_from(raw, 0))
    if raw[:8] != SESPARSE_MAGIC:
        raise exception.InvalidImage(path=path,
                                     reason='not a seSparse extent')
    if hdr.version != SESPARSE_VERSION:
        raise exception.UnsupportedImage(
            path=path, reason='seSparse version 0x%016x is not supported'
            % hdr.version)
    if (hdr.grain_size != SESPARSE_GRAIN_SECTORS
            or hdr.gt_size != SESPARSE_GT_SECTORS):
        raise exception.UnsupportedImage(
            path=path, reason='seSparse grains of %d sectors or tables of %d '
            'sectors are not supported (8 and 64)'
            % (hdr.grain_size, hdr.gt_size))
    if hdr.flags or hdr.reserved1 or hdr.reserved2 or hdr.reserved3 or \
            hdr.reserved4 or any(raw[_SES.size:]):
        raise exception.UnsupportedImage(
            path=path, reason='seSparse header has unknown flags or non-zero '
            'reserved fields')
    if hdr.capacity * SECTOR > MAX_VIRTUAL_SIZE:
        raise exception.InvalidImage(
            path=path, reason='seSparse capacity of %d sectors is larger than '
            'the format limit of %d bytes: refused as absurd'
            % (hdr.capacity, MAX_VIRTUAL_SIZE))
    n = -(-hdr.capacity // (hdr.grain_size * hdr.gt_size * SECTOR // 8))
    if n * 8 > hdr.gd_size * SECTOR or n > MAX_GD_ENTRIES:
        raise exception.InvalidImage(
            path=path, reason='seSparse grain directory of %d sectors does '
            'not fit the capacity of %d sectors' % (hdr.gd_size,
                                                    hdr.capacity))
    if hdr.volatile_offset * SECTOR + SECTOR > file.size:
        raise exception.InvalidImage(
            path=path, reason='seSparse volatile header lies outside the '
            'file: truncated')
    vol = _SES_VOLATILE.unpack_from(
        file.pread(SECTOR, hdr.volatile_offset * SECTOR), 0)
    if vol[0] != SESPARSE_VOLATILE_MAGIC:
        raise exception.InvalidImage(
            path=path, reason='seSparse volatile header has a bad magic')
    if vol[3]:
        raise exception.UnsupportedImage(
            path=path, reason='seSparse journal must be replayed by ESXi '
            'first (the snapshot was not closed cleanly): not supported')
    return hdr


def descriptor_creator(d):
    """Who wrote a disk, from its descriptor's habits; None if they do not
    tell.  qemu writes ``ddb.toolsVersion = "2147483647"``; VMware
    products write ``ddb.longContentID`` / ``ddb.uuid`` or a real tools
    version."""
    if d is None:
        return None
    ddb = {k.lower(): v for k, v in d.ddb.items()}
    if ddb.get('ddb.toolsversion') == '2147483647':
        return 'qemu'
    for c in d.comments:
        if 'vmdkstream' in c.lower():
            return 'VMDKstream'
    if ('ddb.longcontentid' in ddb or 'ddb.uuid' in ddb
            or 'ddb.toolsversion' in ddb):
        return 'vmware'
    return None


# -- the reader ---------------------------------------------------------------


def _check_extent_name(name, path, lineno):
    """Plain names of the same directory only (CVE-2022-47951)."""
    if (not name or '/' in name or '\\' in name or name in ('.', '..')
            or '\0' in name or (len(name) > 1 and name[1] == ':')):
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor line %d names extent file %r: '
            'a path is refused, only a file of the same directory or archive '
            'is read' % (lineno, name))


class VmdkReader(base.LayerReader):
    """Random-access reader of one VMDK layer (a descriptor and its
    extents, or one sparse extent)."""

    format_name = 'vmdk'

    def __init__(self, view, opener=None):
        super(VmdkReader, self).__init__(view, opener)
        path = view.name
        self.descriptor = None
        self.extents = []
        self._files = {}
        self._open = collections.OrderedDict()
        self._subformat = None
        self._bare_parent_hint = None
        self._allocated = None
        head = view.pread(SECTOR, 0)
        try:
            if head[:4] == KDMV_MAGIC:
                self._open_hosted(view)
            elif head[:4] == COWD_MAGIC:
                self._open_bare_cowd(view)
            elif head[:8] == SESPARSE_MAGIC:
                self._open_bare_sesparse(view)
            else:
                self._open_text(view)
        except BaseException:
            self.close()
            raise
        self._starts = [e.start for e in self.extents]
        self._size = self.extents[-1].end if self.extents else 0
        if self._size > MAX_VIRTUAL_SIZE:
            raise exception.InvalidImage(
                path=path, reason='VMDK virtual size %d exceeds the format '
                'limit of %d bytes' % (self._size, MAX_VIRTUAL_SIZE))

    # -- opening --------------------------------------------------------------

    def _self_file(self, view):
        f = _File(self, None, view, owned=False)
        return f

    def _file(self, name, lineno):
        """The extent file ``name``, through the container's opener."""
        path = self.view.name
        _check_extent_name(name, path, lineno)
        f = self._files.get(name)
        if f is not None:
            return f
        if self.opener is None:
            raise exception.ChainError(
                path=path, reason='refers to extent file %r, but no other '
                'file can be opened here' % name)
        view = self.opener(name)
        f = _File(self, name, view, owned=True)
        self._files[name] = f
        self._touch(f)
        return f

    def _touch(self, f):
        if not f.owned:
            return
        self._open[f.name] = f
        self._open.move_to_end(f.name)
        while len(self._open) > MAX_OPEN_FILES:
            _, old = self._open.popitem(last=False)
            old.close()

    def _reopen(self, f):
        view = self.opener(f.name)
        if view.size != f.size:
            view.close()
            raise exception.InvalidImage(
                path=f.display, reason='changed size while being read')
        return view

    def _open_hosted(self, view):
        path = view.name
        f = self._self_file(view)
        hdr = parse_kdmv_header(view.pread(SECTOR, 0), path)
        _check_kdmv(hdr, view.size, path)
        desc = None
        if hdr.desc_offset and hdr.desc_size:
            size = hdr.desc_size * SECTOR
            off = hdr.desc_offset * SECTOR
            if size > vd.MAX_DESCRIPTOR_SIZE:
                raise exception.InvalidImage(
                    path=path, reason='embedded VMDK descriptor of %d sectors '
                    'is larger than the limit of %d bytes'
                    % (hdr.desc_size, vd.MAX_DESCRIPTOR_SIZE))
            if off + size > view.size:
                raise exception.InvalidImage(
                    path=path, reason='embedded VMDK descriptor at sector %d '
                    'lies outside the file: truncated or corrupt'
                    % hdr.desc_offset)
            desc = vd.parse(f.pread(size, off), path)
        if desc is not None and hdr.capacity == 0 and desc.extents:
            # A sparse header that only carries a descriptor naming other
            # extent files (qemu reads this form too).
            self.descriptor = desc
            self._subformat = vd.check_create_type(desc, path)
            self._open_extents(desc)
            return
        if desc is not None and desc.extents and \
                desc.virtual_sectors != hdr.capacity:
            raise exception.InvalidImage(
                path=path, reason='embedded VMDK descriptor declares %d '
                'sectors, the extent header a capacity of %d: inconsistent'
                % (desc.virtual_sectors, hdr.capacity))
        if (desc is None or not desc.extents) and \
                _SPLIT_PIECE_RE.search(os.path.basename(path)):
            # No tool writes a whole sparse disk without a descriptor of
            # its own (VMware, VirtualBox and qemu embed one): this is one
            # extent of a split disk, whose offset in it only the
            # descriptor knows (qemu refuses it too).
            raise exception.UnsupportedImage(
                path=path, reason='one extent of a split sparse disk '
                '(twoGbMaxExtentSparse) without a descriptor of its own: '
                'convert the descriptor (.vmdk) that lists the extents')
        hdr, how = open_kdmv_ex(f, path)
        if desc is None or not desc.extents:
            LOG.warning('%s: a sparse extent without a descriptor, read as '
                        'a whole disk of %d bytes; if it is one piece of a '
                        'split disk, convert the descriptor that lists it',
                        path, hdr.capacity * SECTOR)
        if desc is not None:
            self.descriptor = desc
            compressed = bool(hdr.flags & FLAG_COMPRESSED)
            self._subformat = vd.check_create_type(
                desc, path, 'streamOptimized' if compressed
                else 'monolithicSparse')
        else:
            self._subformat = ('streamOptimized' if hdr.flags &
                               FLAG_COMPRESSED else 'monolithicSparse')
        self.extents.append(_HostedSparseExtent(
            0, 0, hdr.capacity * SECTOR, f, hdr, how))

    def _open_bare_cowd(self, view):
        path = view.name
        f = self._self_file(view)
        hdr, parent = open_cowd(f, path)
        self._subformat = 'vmfsSparse'
        if parent is not None:
            LOG.warning('%s: vmfsSparse delta read without its descriptor: '
                        'its parent (%s) is not read, what the parent '
                        'holds reads as zeros; convert the snapshot\'s '
                        'descriptor (.vmdk) with its parent beside it',
                        path, parent or 'unnamed')
        self.extents.append(_CowdExtent(0, 0, hdr.capacity * SECTOR, f, hdr))

    def _open_bare_sesparse(self, view):
        path = view.name
        f = self._self_file(view)
        hdr = open_sesparse(f, path)
        self._subformat = 'seSparse'
        LOG.warning('%s: seSparse delta read without its descriptor: its '
                    'parent is unknown, what the parent holds reads as '
                    'zeros; convert the snapshot\'s descriptor (.vmdk) '
                    'with its parent beside it', path)
        self.extents.append(_SeSparseExtent(0, 0, hdr.capacity * SECTOR, f,
                                            hdr))

    def _open_text(self, view):
        path = view.name
        if view.size > vd.MAX_DESCRIPTOR_SIZE:
            raise exception.InvalidImage(
                path=path, reason='not a VMDK: no sparse extent magic, and '
                'too large (%d bytes) for a descriptor' % view.size)
        raw = view.pread(view.size, 0)
        if not vd.looks_like_descriptor(raw):
            raise exception.InvalidImage(
                path=path, reason='not a VMDK descriptor or extent')
        desc = vd.parse(raw, path)
        self.descriptor = desc
        self._subformat = vd.check_create_type(desc, path)
        if not desc.extents:
            raise exception.InvalidImage(
                path=path, reason='VMDK descriptor without any extent')
        self._open_extents(desc)

    def _open_extents(self, desc):
        path = self.view.name
        start = 0
        for i, line in enumerate(desc.extents):
            size = line.sectors * SECTOR
            if line.access == 'NOACCESS':
                raise exception.UnsupportedImage(
                    path=path, reason='VMDK descriptor line %d: NOACCESS '
                    'extent cannot be read' % line.lineno)
            if line.type == 'ZERO':
                e = _ZeroExtent(i, start, size)
            elif line.type in ('FLAT', 'VMFS'):
                f = self._file(line.filename, line.lineno)
                e = _FlatExtent(i, start, size, f, line.offset * SECTOR)
            else:
                f = self._file(line.filename, line.lineno)
                e = self._sparse_extent(i, start, size, f, line)
            self.extents.append(e)
            start += size

    def _sparse_extent(self, i, start, size, f, line):
        magic = f.pread(min(8, f.size), 0) if f.size else b''
        disp = f.display
        how = None
        if line.type in ('SPARSE', 'VMFSSPARSE') and magic[:4] == KDMV_MAGIC:
            hdr, how = open_kdmv_ex(f, disp)
            cls = _HostedSparseExtent
        elif line.type in ('SPARSE', 'VMFSSPARSE') and \
                magic[:4] == COWD_MAGIC:
            hdr, _ = open_cowd(f, disp)
            cls = _CowdExtent
        elif line.type == 'SESPARSE' and magic == SESPARSE_MAGIC:
            hdr = open_sesparse(f, disp)
            cls = _SeSparseExtent
        else:
            raise exception.InvalidImage(
                path=disp, reason='is not a %s extent (descriptor %s line %d)'
                % (line.type, self.view.name, line.lineno))
        if size != hdr.capacity * SECTOR:
            raise exception.InvalidImage(
                path=self.view.name, reason='VMDK descriptor line %d: extent '
                'of %d sectors, but the header of %s declares a capacity of '
                '%d: inconsistent' % (line.lineno, line.sectors,
                                      line.filename, hdr.capacity))
        if cls is _HostedSparseExtent:
            return cls(i, start, size, f, hdr, how)
        return cls(i, start, size, f, hdr)

    def close(self):
        for f in self._files.values():
            f.close()
        self._open.clear()

    # -- identity -------------------------------------------------------------

    @classmethod
    def probe(cls, view):
        head = view.pread(SECTOR, 0)
        if head[:4] == KDMV_MAGIC:
            return view.size >= SECTOR
        if head[:4] == COWD_MAGIC:
            return view.size >= COWD_HEADER_SIZE
        if head[:8] == SESPARSE_MAGIC:
            return view.size >= 2 * SECTOR
        if view.size > vd.MAX_DESCRIPTOR_SIZE or not head:
            return False
        if not vd.looks_like_descriptor(head):
            # The first sector may end before the first significant line
            # of a descriptor with long comments: look at all of it.
            if len(head) < view.size and b'\0' not in head:
                return vd.looks_like_descriptor(view.pread(view.size, 0))
            return False
        return True

    @property
    def virtual_size(self):
        return self._size

    @property
    def identity(self):
        return self.descriptor.cid if self.descriptor else None

    @property
    def parent_ref(self):
        if self.descriptor is None:
            return None
        pcid = self.descriptor.parent_cid
        if pcid is None:
            return None
        hint = self.descriptor.parent_hint
        return base.ParentRef(pcid, (hint,) if hint else ())

    @property
    def subformat(self):
        return self._subformat

    @property
    def creator(self):
        """Who wrote the disk, from the descriptor's habits; None if they
        do not tell.  qemu writes ``ddb.toolsVersion = "2147483647"``;
        VMware products write ``ddb.longContentID`` / ``ddb.uuid`` or a
        real tools version."""
        return descriptor_creator(self.descriptor)

    @property
    def ddb(self):
        """The disk database (``ddb.*`` keys as written)."""
        return dict(self.descriptor.ddb) if self.descriptor else {}

    def _ddb(self, key):
        key = key.lower()
        for k, v in self.ddb.items():
            if k.lower() == key:
                return v
        return None

    @property
    def adapter_type(self):
        return self._ddb('ddb.adapterType')

    @property
    def hw_version(self):
        return self._ddb('ddb.virtualHWVersion')

    @property
    def disk_uuid(self):
        return self._ddb('ddb.uuid')

    @property
    def geometry(self):
        """(cylinders, heads, sectors) or None."""
        vals = [self._ddb('ddb.geometry.' + k)
                for k in ('cylinders', 'heads', 'sectors')]
        try:
            return tuple(int(v) for v in vals)
        except (TypeError, ValueError):
            return None

    @property
    def metadata(self):
        d = self.descriptor
        return {
            'create_type': self._subformat,
            'cid': self.identity,
            'parent_cid': d.parent_cid if d else None,
            'parent_hint': d.parent_hint if d else None,
            'encoding': d.encoding if d else None,
            'adapter_type': self.adapter_type,
            'hw_version': self.hw_version,
            'uuid': self.disk_uuid,
            'geometry': self.geometry,
            'ddb': self.ddb,
            'extents': [(e.kind, e.size, getattr(e, 'file', None) and
                         e.file.display) for e in self.extents],
        }

    def allocated_bytes(self):
        if self._allocated is None:
            total = 0
            for e in self.block_status(0, self._size):
                if e.kind == ext.DATA:
                    total += e.length
            self._allocated = total
        return self._allocated

    # -- block status and reads ---------------------------------------------

    def block_status(self, offset, length):
        end = min(offset + length, self._size)
        if offset >= end:
            return
        i = bisect.bisect_right(self._starts, offset) - 1
        pos = offset
        while pos < end:
            e = self.extents[i]
            stop = min(end, e.end)
            for kind, a, b, token in e.status(pos, stop):
                if b > a:
                    yield ext.extent(kind, a, b - a, token)
            pos = stop
            i += 1

    def read_extent(self, extent, skip, length):
        token = extent.file_offset
        e = self.extents[token[0]]
        if token[1] == COMPRESSED:
            return e.read_compressed(extent.offset + skip, length)
        return e.read(token, skip, length)

    def read_extent_into(self, extent, skip, buf):
        """:meth:`read_extent` into ``buf`` (a writable memoryview): stored
        grains and flat runs are read in place, compressed grains are
        inflated and copied straight into it (no join, no second copy)."""
        token = extent.file_offset
        e = self.extents[token[0]]
        if token[1] == COMPRESSED:
            e.read_compressed_into(extent.offset + skip, buf)
        else:
            e.read_into(token, skip, buf)


# -- one forward pass (streamOptimized inside a compressed archive) -----------


#: A prime modulus for the tally of a stream read in one pass.
_TALLY_PRIME = (1 << 61) - 1


class _CutStreamTally(object):
    """What a stream read in one pass must keep to tell, should it end
    without its footer and end-of-stream marker (cut after its grain
    directory), that every grain its tables reference came: two sums per
    grain table and one for the grains, not the grains' offsets.

    Each grain marker at sector ``s`` for disk grain ``v`` adds
    ``h(s) * (v + k)``; each table entry pointing at ``s`` adds the same
    for the grain its place in the table names, ``v = base + j``, whose
    ``base`` is known only from the directory, which comes after the
    tables.  The sum is linear in ``base``, so a table keeps
    ``sum(h(s))`` and ``sum(h(s) * (j + k))``.  ``h`` and ``k`` are drawn
    at random for each read: the sums of the grains and of the tables
    agree when the same (sector, grain) pairs are on both sides, and
    disagree otherwise except with a probability of about 2**-60.  Memory:
    three numbers per grain table (a 2 TiB disk has 65536 tables).
    """

    def __init__(self, num_gtes, max_tables):
        rnd = os.urandom(24)
        self._mul = int.from_bytes(rnd[:8], 'little') | 1
        self._add = int.from_bytes(rnd[8:16], 'little')
        self._k = int.from_bytes(rnd[16:], 'little') % _TALLY_PRIME
        self.num_gtes = num_gtes
        self.max_tables = max_tables
        self.grains = 0
        self.grain_count = 0
        self.tables = {}
        self.overflow = False

    def _h(self, sector):
        x = (sector * self._mul + self._add) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
        return (x * 0xBF58476D1CE4E5B9) % _TALLY_PRIME

    def grain(self, sector, index):
        self.grains = (self.grains + self._h(sector) * (index + self._k)) \
            % _TALLY_PRIME
        self.grain_count += 1

    def table(self, sector, raw, zero_grain):
        if len(self.tables) >= self.max_tables or sector in self.tables:
            self.overflow = True
            return
        s1 = s2 = count = 0
        k = self._k
        for j, e in enumerate(_array('I', raw)):
            if e == 0 or (zero_grain and e == 1):
                continue
            h = self._h(e)
            s1 += h
            s2 += h * (j + k)
            count += 1
        self.tables[sector] = (s1 % _TALLY_PRIME, s2 % _TALLY_PRIME, count)

    def missing(self, gd):
        """None when the tables the directory ``gd`` lists reference
        exactly the grains that came; else why not."""
        if self.overflow:
            return 'more grain tables than its directory has room for'
        total = count = 0
        for i, sector in enumerate(_array('I', gd)):
            if not sector:
                continue
            t = self.tables.get(sector)
            if t is None:
                return 'grain directory entry %d points to sector %d, where ' \
                    'no grain table came' % (i, sector)
            s1, s2, n = t
            total += s1 * (i * self.num_gtes) + s2
            count += n
        if count != self.grain_count:
            return 'its grain tables reference %d grains, %d came' % (
                count, self.grain_count)
        if total % _TALLY_PRIME != self.grains:
            return 'its grain tables do not reference the grains that came'
        return None


class StreamLayer(object):
    """A streamOptimized VMDK read in one forward pass.

    Created from the first sector of a member (peeked); ``read_headers``
    consumes the header and the embedded descriptor, ``data_runs`` walks
    the grain markers in file order and yields ``(virtual offset, bytes)``
    for every grain, skipping the metadata (GT, GD, footer) markers up to
    the end-of-stream marker.  No table is needed: each grain marker
    carries its LBA.
    """

    def __init__(self, name, head, member_size):
        self.name = name
        self.member_size = member_size
        hdr = parse_kdmv_header(head, name)
        _check_kdmv(hdr, member_size, name)
        if not (hdr.flags & FLAG_COMPRESSED and hdr.flags & FLAG_MARKERS):
            raise exception.UnsupportedImage(
                path=name, reason='only streamOptimized VMDKs (compressed '
                'grains with markers) can be read in one pass')
        self.hdr = hdr
        self.descriptor = None
        self.expected_grains = None

    @property
    def virtual_size(self):
        return self.hdr.capacity * SECTOR

    @property
    def grain(self):
        return self.hdr.grain_size * SECTOR

    @property
    def identity(self):
        return self.descriptor.cid if self.descriptor else None

    @property
    def parent_id(self):
        return self.descriptor.parent_cid if self.descriptor else None

    def read_headers(self, stream):
        hdr = self.hdr
        stream.skip_to(SECTOR)
        if hdr.desc_offset and hdr.desc_size:
            if (hdr.desc_size * SECTOR > vd.MAX_DESCRIPTOR_SIZE
                    or hdr.desc_offset * SECTOR < stream.pos):
                raise exception.InvalidImage(
                    path=self.name, reason='embedded VMDK descriptor at '
                    'sector %d (%d sectors) cannot be read'
                    % (hdr.desc_offset, hdr.desc_size))
            stream.skip_to(hdr.desc_offset * SECTOR)
            self.descriptor = vd.parse(
                stream.read_exact(hdr.desc_size * SECTOR), self.name)
            # As VmdkReader: an unknown or raw-device createType is
            # refused.
            vd.check_create_type(self.descriptor, self.name,
                                 'streamOptimized')
        if hdr.overhead * SECTOR < stream.pos:
            raise exception.InvalidImage(
                path=self.name, reason='VMDK overhead of %d sectors overlaps '
                'the descriptor' % hdr.overhead)
        self._count_tables(stream)
        stream.skip_to(hdr.overhead * SECTOR)

    def _count_tables(self, stream):
        """Count the grains the tables expect when they come before the
        grains (qemu-img's layout: grain directory in the header, tables
        in the overhead, and no end-of-stream marker): the stream is then
        complete when that many grains came."""
        hdr = self.hdr
        self.expected_grains = None
        if hdr.gd_offset in (0, GD_AT_END):
            return
        end = hdr.overhead * SECTOR
        span = hdr.grain_size * hdr.num_gtes
        n = -(-hdr.capacity // span)
        gd_off = hdr.gd_offset * SECTOR
        gt_bytes = hdr.num_gtes * 4
        if n > MAX_GD_ENTRIES or gd_off < stream.pos or \
                gd_off + n * 4 > end:
            return
        stream.skip_to(gd_off)
        gd = _array('I', stream.read_exact(n * 4))
        zero = 1 if hdr.flags & FLAG_ZERO_GRAIN else 0
        count = 0
        for off in sorted(o * SECTOR for o in gd if o):
            if off < stream.pos or off + gt_bytes > end:
                raise exception.InvalidImage(
                    path=self.name, reason='VMDK grain table at offset %d '
                    'cannot be read in one pass (overlapping, or past the '
                    'grains)' % off)
            stream.skip_to(off)
            gt = _array('I', stream.read_exact(gt_bytes))
            count += len(gt) - gt.count(0) - (gt.count(1) if zero else 0)
        self.expected_grains = count

    def _check_count(self, got, why):
        if self.expected_grains is not None and \
                got != self.expected_grains:
            raise exception.InvalidImage(
                path=self.name, reason='streamOptimized VMDK %s after %d '
                'grains, its grain tables list %d: truncated or corrupt'
                % (why, got, self.expected_grains))

    def data_runs(self, stream):
        name = self.name
        g = self.grain
        vsize = self.virtual_size
        bound = 2 * g + 4096
        got = 0
        hdr = self.hdr
        tally = None
        gd = None
        if hdr.gd_offset == GD_AT_END and hdr.flags & FLAG_MARKERS:
            n_gd, gd_sectors = _gd_sectors(hdr)
            gt_sectors = -(-hdr.num_gtes * 4 // SECTOR)
            if n_gd <= MAX_GD_ENTRIES:
                tally = _CutStreamTally(hdr.num_gtes, n_gd)
        while True:
            if stream.pos == self.member_size and \
                    self.expected_grains is not None:
                # qemu-img writes no end-of-stream marker.
                self._check_count(got, 'ends')
                return
            if stream.pos == self.member_size and gd is not None:
                self._accept_cut(tally, gd)
                return
            if stream.pos + SECTOR > self.member_size:
                raise exception.InvalidImage(
                    path=name, reason='streamOptimized VMDK ends without an '
                    'end-of-stream marker%s: truncated (the transfer was cut '
                    'short; only a complete copy can be read)'
                    % ('' if tally is None else
                       ', before its grain directory'))
            sector = stream.read_exact(SECTOR)
            val, size, mtype = _MARKER.unpack_from(sector, 0)
            if size == 0:
                if mtype == MARKER_EOS:
                    self._check_count(got, 'has its end-of-stream marker')
                    return
                if mtype not in (MARKER_GT, MARKER_GD, MARKER_FOOTER):
                    raise exception.InvalidImage(
                        path=name, reason='unknown VMDK stream marker type %d '
                        'at offset %d' % (mtype, stream.pos - SECTOR))
                if val > self.member_size // SECTOR:
                    raise exception.InvalidImage(
                        path=name, reason='VMDK stream metadata of %d sectors '
                        'runs past the end: corrupt' % val)
                end = stream.pos + val * SECTOR
                if tally is not None and gd is None and \
                        end <= self.member_size:
                    # Kept for a stream that turns out cut short after
                    # its directory; a complete one ends at its marker.
                    if mtype == MARKER_GT and val == gt_sectors:
                        tally.table(stream.pos // SECTOR,
                                    stream.read_exact(hdr.num_gtes * 4),
                                    hdr.flags & FLAG_ZERO_GRAIN)
                    elif mtype == MARKER_GD and val == gd_sectors:
                        gd = stream.read_exact(n_gd * 4)
                elif mtype == MARKER_FOOTER and gd is not None and \
                        end > self.member_size:
                    # The footer marker came, not the footer: as a file
                    # ending there is read (_cut_stream_gd).
                    if stream.pos == self.member_size:
                        self._accept_cut(tally, gd)
                        return
                    raise exception.InvalidImage(
                        path=name, reason='streamOptimized VMDK ends inside '
                        'its footer: truncated (the transfer was cut short; '
                        'only a complete copy can be read)')
                stream.skip_to(end)
                continue
            at = stream.pos - SECTOR
            if size > bound:
                raise exception.InvalidImage(
                    path=name, reason='compressed grain at offset %d of %d '
                    'bytes is larger than the limit of %d' % (at, size,
                                                              bound))
            total = -(-(12 + size) // SECTOR) * SECTOR
            if at + total > self.member_size:
                raise exception.InvalidImage(
                    path=name, reason='streamOptimized VMDK ends inside its '
                    'grain at offset %d: truncated (the transfer was cut '
                    'short; only a complete copy can be read)' % at)
            data = sector[12:] + stream.read_exact(total - SECTOR) \
                if total > SECTOR else sector[12:]
            vpos = val * SECTOR
            if vpos % g or vpos >= vsize:
                raise exception.InvalidImage(
                    path=name, reason='grain marker at offset %d for sector '
                    '%d: not a grain of the disk' % (at, val))
            d = zlib.decompressobj()
            try:
                out = d.decompress(data[:size], g)
            except zlib.error as e:
                raise exception.InvalidImage(
                    path=name, reason='compressed grain at offset %d: corrupt '
                    'deflate stream (%s)' % (at, e))
            need = min(g, vsize - vpos)
            if d.unconsumed_tail or not d.eof or len(out) < need:
                raise exception.InvalidImage(
                    path=name, reason='compressed grain at offset %d does not '
                    'inflate to one grain: corrupt' % at)
            got += 1
            if tally is not None:
                tally.grain(at // SECTOR, vpos // g)
            yield vpos, out[:need]

    def _accept_cut(self, tally, gd):
        """The stream ended after its grain directory (and perhaps its
        footer), without its end-of-stream marker: read as complete, with
        a warning, when its tables reference exactly the grains that came,
        as for a file (:meth:`VmdkReader._check_every_grain`)."""
        why = tally.missing(gd)
        if why:
            raise exception.InvalidImage(
                path=self.name, reason='streamOptimized VMDK ends without '
                'its footer and end-of-stream marker, and %s: truncated or '
                'corrupt' % why)
        LOG.warning('%s: streamOptimized VMDK ends without its footer and '
                    'end-of-stream marker (a transfer cut short?); every '
                    'grain its tables reference is present, so it is read '
                    'as complete', self.name)
