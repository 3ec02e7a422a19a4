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
"""VHDX (Hyper-V) disks: fixed, dynamic, differencing (.vhdx, .avhdx).

Layout (Microsoft "[MS-VHDX] Virtual Hard Disk v2 (VHDX) File Format"),
all fields little-endian, GUIDs in the Microsoft mixed-endian layout:

* a 1 MiB header area: the file type identifier ``vhdxfile`` and the
  creator string (UTF-16LE) at 0, two headers (4 KiB, CRC-32C) at 64 KiB
  and 128 KiB, two copies of the region table (64 KiB, CRC-32C) at
  192 KiB and 256 KiB;
* the log, a circular buffer of 4 KiB sectors that the current header
  locates;
* the regions the region table lists: the block allocation table (BAT)
  and the metadata region (a table of items: file parameters, virtual
  disk size, sector sizes, page 83 data, parent locator);
* payload blocks (1 MiB..256 MiB) and, in differencing disks, 1 MiB
  sector bitmap blocks; the BAT interleaves one sector bitmap entry after
  every ``chunk_ratio`` payload entries.

Decisions (see doc/source/formats.rst):

* the current header is the valid one (signature and CRC-32C) with the
  higher sequence number; two valid headers with the same sequence number
  are accepted only if they are identical (Disk2vhd writes them so);
* a non-empty log (the current header's LogGuid is not zero) is replayed
  IN MEMORY, before anything else is parsed: the active sequence is the
  complete sequence whose head has the highest sequence number (a head's
  ``Tail`` must lead, through valid contiguous entries with consecutive
  sequence numbers, back to it); its data and zero descriptors make an
  overlay of the file that every read goes through (region tables, BAT,
  metadata, bitmaps and payload).  The file itself is never written.  A
  log without any valid sequence holds no committed write (a write is
  committed once its entry is complete) and the file is read as it is;
* block states: NOT_PRESENT is "ask the parent" in a differencing disk
  and zeros otherwise; UNDEFINED, ZERO and UNMAPPED read as zeros and
  HIDE the parent; FULLY_PRESENT is data; PARTIALLY_PRESENT (differencing
  disks only) follows the sector bitmap: bit ``i`` (LSB first) is sector
  ``i`` of the chunk, set = this layer, clear = the parent.  The sector
  bitmap entries of a disk without parent are not used, hence ignored;
* the layer's identity is the header's DataWriteGuid, its parent's id the
  parent locator's ``parent_linkage``.  ``parent_linkage2``, an
  alternative linkage Hyper-V may write (the null GUID in the Hyper-V
  checkpoint of the corpus), is kept in :attr:`VhdxReader.parent_locator`
  but not used: the chain resolver matches one id, and ``parent_linkage``
  is the one the format requires;
* every offset and length is checked against the file before use, counts
  are bounded, allocated blocks may not overlap each other or the
  headers, log, BAT or metadata.
"""

import array
import bisect
import collections
import logging
import struct
import sys
import uuid

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os.formats import base

LOG = logging.getLogger(__name__)

KiB = 1 << 10
MiB = 1 << 20

SIGNATURE = b'vhdxfile'
CREATOR_SIZE = 512
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
HEADER_AREA = 1 * MiB
METADATA_TABLE_SIZE = 64 * KiB
LOG_SECTOR = 4 * KiB
#: The unit every VHDX writer's file length is a multiple of (at least).
SECTOR = 512
BITMAP_BLOCK = 1 * MiB
#: Sectors one sector bitmap block describes (8 bits per byte of 1 MiB).
SECTORS_PER_BITMAP = 1 << 23

# Hard limits.  Counts come from the format; sizes are generous but keep a
# hostile file from making the reader allocate or compute without bound.
MAX_TABLE_ENTRIES = 2047
MAX_METADATA_ITEM = 1 * MiB
MAX_VIRTUAL_SIZE = 64 << 40
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 256 * MiB
MAX_BAT_ENTRIES = 1 << 25
MAX_LOG_LENGTH = 256 * MiB
MAX_FILE_OFFSET = 1 << 50
MAX_LOCATOR_ENTRIES = 256

PAYLOAD_NOT_PRESENT = 0
PAYLOAD_UNDEFINED = 1
PAYLOAD_ZERO = 2
PAYLOAD_UNMAPPED = 3
PAYLOAD_FULLY_PRESENT = 6
PAYLOAD_PARTIALLY_PRESENT = 7
SB_NOT_PRESENT = 0
SB_PRESENT = 6
ZERO_STATES = (PAYLOAD_UNDEFINED, PAYLOAD_ZERO, PAYLOAD_UNMAPPED)

BAT_REGION = uuid.UUID('2dc27766-f623-4200-9d64-115e9bfd4a08')
METADATA_REGION = uuid.UUID('8b7ca206-4790-4b9a-b8fe-575f050f886e')
KNOWN_REGIONS = {BAT_REGION: 'BAT', METADATA_REGION: 'metadata'}

FILE_PARAMETERS = uuid.UUID('caa16737-fa36-4d43-b3b6-33f0aa44e76b')
VIRTUAL_DISK_SIZE = uuid.UUID('2fa54224-cd1b-4876-b211-5dbed83bf4b8')
PAGE83_DATA = uuid.UUID('beca12ab-b2e6-4523-93ef-c309e000c746')
LOGICAL_SECTOR_SIZE = uuid.UUID('8141bf1d-a96f-4709-ba47-f233a8faab5f')
PHYSICAL_SECTOR_SIZE = uuid.UUID('cda348c7-445d-4471-9cc9-e9885251c556')
PARENT_LOCATOR = uuid.UUID('a8d35f2d-b30b-454d-abf7-d3d84834ab0c')
VHDX_LOCATOR_TYPE = uuid.UUID('b04aefb7-d19e-4a81-b789-25b8e9445913')
KNOWN_ITEMS = {
    FILE_PARAMETERS: ('file parameters', 8),
    VIRTUAL_DISK_SIZE: ('virtual disk size', 8),
    PAGE83_DATA: ('page 83 data', 16),
    LOGICAL_SECTOR_SIZE: ('logical sector size', 4),
    PHYSICAL_SECTOR_SIZE: ('physical sector size', 4),
    PARENT_LOCATOR: ('parent locator', None),
}

_HEADER = struct.Struct('<4sIQ16s16s16sHHIQ')
_REGION_HEADER = struct.Struct('<4sIII')
_REGION_ENTRY = struct.Struct('<16sQII')
_METADATA_HEADER = struct.Struct('<8sHH20s')
_METADATA_ENTRY = struct.Struct('<16sIII4s')
_LOCATOR_HEADER = struct.Struct('<16sHH')
_LOCATOR_ENTRY = struct.Struct('<IIHH')
_LOG_HEADER = struct.Struct('<4sIIIQII16sQQ')
_LOG_DESCRIPTOR = struct.Struct('<4sIQQQ')
_LOG_DATA_SEQ = struct.Struct('<4sI')

Header = collections.namedtuple('Header', [
    'signature', 'checksum', 'sequence_number', 'file_write_guid',
    'data_write_guid', 'log_guid', 'log_version', 'version', 'log_length',
    'log_offset'])

Region = collections.namedtuple('Region', [
    'guid', 'file_offset', 'length', 'required'])

LogEntry = collections.namedtuple('LogEntry', [
    'position', 'length', 'tail', 'sequence_number', 'flushed_file_offset',
    'last_file_offset', 'writes'])
LogEntry.__doc__ = """A valid log entry; ``writes`` are (file_offset,
length, data) in order, ``data`` None for a zero descriptor."""


# -- CRC-32C (Castagnoli), slicing by 8 ---------------------------------------

def _crc_tables():
    poly = 0x82F63B78  # reflected 0x1EDC6F41
    t0 = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        t0.append(c)
    tables = [t0]
    for _ in range(7):
        prev = tables[-1]
        tables.append([(prev[n] >> 8) ^ t0[prev[n] & 0xFF]
                       for n in range(256)])
    return tuple(tuple(t) for t in tables)


_CRC_TABLES = _crc_tables()
_TWO_WORDS = struct.Struct('<II')


def crc32c(data, crc=0):
    """CRC-32C of ``data`` (bytes-like), continuing from ``crc``.

    Pure Python, about 20 MB/s: used for headers, region tables and log
    entries only, never for payload data.
    """
    t0, t1, t2, t3, t4, t5, t6, t7 = _CRC_TABLES
    crc ^= 0xFFFFFFFF
    mv = memoryview(data).cast('B')
    n8 = len(mv) & ~7
    for a, b in _TWO_WORDS.iter_unpack(mv[:n8]):
        a ^= crc
        crc = (t7[a & 0xFF] ^ t6[(a >> 8) & 0xFF] ^ t5[(a >> 16) & 0xFF]
               ^ t4[a >> 24] ^ t3[b & 0xFF] ^ t2[(b >> 8) & 0xFF]
               ^ t1[(b >> 16) & 0xFF] ^ t0[b >> 24])
    for byte in mv[n8:]:
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def checksum_ok(buf, field_offset=4):
    """The CRC-32C of ``buf`` with its checksum field zeroed is stored."""
    stored = struct.unpack_from('<I', buf, field_offset)[0]
    crc = crc32c(buf[:field_offset])
    crc = crc32c(b'\0\0\0\0', crc)
    crc = crc32c(memoryview(buf)[field_offset + 4:], crc)
    return crc == stored


# -- helpers ------------------------------------------------------------------

def _guid(raw):
    return uuid.UUID(bytes_le=bytes(raw))


_basename = base.basename_hint


def bitmap_runs(bitmap, first, count):
    """Runs of (start_sector, length, is_set): the VHDX bitmap is LSB-first
    (bit 0 of byte 0 is sector 0; the VHD one is MSB-first)."""
    return base.bitmap_runs(bitmap, first, count, msb_first=False)


class Overlay(object):
    """The file as the replayed log leaves it: disjoint segments over it.

    Each segment is (start, end, data), ``data`` the segment's bytes or
    None for zeros; later writes replace earlier ones.  Its size is bounded
    by the log's: every data byte comes from a log sector.
    """

    def __init__(self):
        self.starts = []
        self.segments = []

    def __len__(self):
        return len(self.segments)

    def apply(self, start, end, data=None):
        starts, segs = self.starts, self.segments
        lo = bisect.bisect_right(starts, start) - 1
        if lo < 0:
            lo = 0
        elif segs[lo][1] <= start:
            lo += 1
        hi = bisect.bisect_left(starts, end)
        new = []
        if lo < hi:
            s, e, d = segs[lo]
            if s < start:
                new.append((s, start, None if d is None else d[:start - s]))
        new.append((start, end, data))
        if lo < hi:
            s, e, d = segs[hi - 1]
            if e > end:
                new.append((end, e, None if d is None else d[end - s:]))
        segs[lo:hi] = new
        starts[lo:hi] = [n[0] for n in new]

    def patch(self, data, offset):
        """``data`` read at ``offset`` with the overlay applied."""
        end = offset + len(data)
        segs = self.segments
        i = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        out = None
        while i < len(segs):
            s, e, d = segs[i]
            if s >= end:
                break
            if e > offset:
                if out is None:
                    out = bytearray(data)
                a, b = max(s, offset), min(e, end)
                out[a - offset:b - offset] = (bytes(b - a) if d is None
                                              else d[a - s:b - s])
            i += 1
        return data if out is None else bytes(out)


# -- the reader ---------------------------------------------------------------

class VhdxReader(base.LayerReader):
    """Random-access reader of one VHDX layer."""

    format_name = 'vhdx'

    def __init__(self, view, opener=None):
        super(VhdxReader, self).__init__(view, opener)
        path = view.name
        if view.size < HEADER_AREA:
            raise exception.InvalidImage(
                path=path, reason='too small to be a VHDX (%d bytes)'
                % view.size)
        self._overlay = None
        self._file_size = view.size
        self.log_entries_replayed = 0
        self._bitmap_cache = (None, None)
        self._allocated = None

        ident = view.pread(8 + CREATOR_SIZE, 0)
        if ident[:8] != SIGNATURE:
            raise exception.InvalidImage(
                path=path, reason='no VHDX file type identifier')
        try:
            creator = ident[8:].decode('utf-16-le')
        except UnicodeDecodeError:
            creator = ''
        self._creator = creator.split('\x00', 1)[0].strip() or None

        self.header = self._current_header()
        self._log_region = self._check_log_region(self.header)
        if self.header.log_guid != bytes(16):
            self._replay_log(self.header)

        self.regions = self._region_table()
        self._parse_metadata(self.regions[METADATA_REGION])
        self._load_bat(self.regions[BAT_REGION])
        self._check_whole_sectors()

    # -- low-level reads ------------------------------------------------------

    def _pread(self, length, offset):
        """Bytes of the file as the replayed log leaves it.

        Past the real end of the file and up to the size the log gives it,
        the file reads as zeros (replay would extend it so).
        """
        end = min(offset + length, self._file_size)
        if offset >= end:
            return b''
        data = self.view.pread(end - offset, offset)
        if len(data) < end - offset:
            if offset + len(data) < self.view.size:
                raise self._invalid('short read at offset %d: the file '
                                    'shrank' % (offset + len(data)))
            data += bytes(end - offset - len(data))
        if self._overlay:
            data = self._overlay.patch(data, offset)
        return data

    def _invalid(self, reason):
        return exception.InvalidImage(path=self.name, reason=reason)

    # -- headers --------------------------------------------------------------

    def _current_header(self):
        found = []
        problems = []
        for off in HEADER_OFFSETS:
            buf = self.view.pread(HEADER_SIZE, off)
            if len(buf) != HEADER_SIZE:
                problems.append('truncated')
                continue
            hdr = Header._make(_HEADER.unpack_from(buf))
            if hdr.signature != b'head':
                problems.append('bad signature')
            elif not checksum_ok(buf):
                problems.append('checksum mismatch')
            else:
                found.append((hdr, buf))
        if not found:
            if problems == ['checksum mismatch'] * 2:
                raise self._invalid(
                    'VHDX header checksum mismatch (both headers)')
            raise self._invalid('no valid VHDX header (header 1: %s, '
                                'header 2: %s)' % tuple(problems))
        if len(found) == 2:
            (h1, b1), (h2, b2) = found
            if h1.sequence_number == h2.sequence_number:
                if b1 != b2:
                    raise self._invalid(
                        'the two VHDX headers have the same sequence number '
                        '%d but differ' % h1.sequence_number)
                hdr = h1
            else:
                hdr = max(h1, h2, key=lambda h: h.sequence_number)
        else:
            hdr = found[0][0]
        if hdr.version != 1:
            raise exception.UnsupportedImage(
                path=self.name, reason='unsupported VHDX version %d'
                % hdr.version)
        return hdr

    def _check_log_region(self, hdr):
        if hdr.log_length == 0:
            if hdr.log_guid != bytes(16):
                raise self._invalid('VHDX header has a log to replay but a '
                                    'log of length 0')
            return None
        off, length = hdr.log_offset, hdr.log_length
        if off % MiB or length % MiB or off < HEADER_AREA:
            raise self._invalid(
                'VHDX log region at %d (+%d) is not aligned on 1 MiB or lies '
                'in the header area' % (off, length))
        if off + length > self.view.size:
            raise self._invalid(
                'VHDX log region at %d (+%d) lies outside the file (%d '
                'bytes)' % (off, length, self.view.size))
        return (off, off + length)

    # -- log replay -----------------------------------------------------------

    def _replay_log(self, hdr):
        if hdr.log_version != 0:
            raise exception.UnsupportedImage(
                path=self.name, reason='VHDX log version %d is not supported'
                % hdr.log_version)
        length = hdr.log_length
        if length > MAX_LOG_LENGTH:
            raise exception.UnsupportedImage(
                path=self.name, reason='VHDX log of %d bytes to replay is '
                'larger than the limit of %d' % (length, MAX_LOG_LENGTH))
        log = self.view.pread(length, hdr.log_offset)
        if len(log) != length:
            raise self._invalid('truncated VHDX log')
        active = find_active_sequence(log, hdr.log_guid, self.name)
        if not active:
            LOG.warning('%s: the VHDX log holds no complete entry (an '
                        'interrupted write was never committed): nothing to '
                        'replay', self.name)
            return
        head = active[-1]
        if self.view.size < head.flushed_file_offset:
            raise self._invalid(
                'VHDX log: the file is %d bytes but was flushed at %d: '
                'truncated' % (self.view.size, head.flushed_file_offset))
        if head.last_file_offset > MAX_FILE_OFFSET:
            raise self._invalid('VHDX log entry %d: last file offset %d is '
                                'absurd' % (head.sequence_number,
                                            head.last_file_offset))
        size = max(self.view.size, -(-head.last_file_offset // MiB) * MiB)
        log_lo, log_hi = self._log_region
        overlay = Overlay()
        for entry in active:
            for off, n, data in entry.writes:
                if off + n > size:
                    raise self._invalid(
                        'VHDX log entry %d writes at %d (+%d), beyond the end '
                        'of the file (%d bytes)' % (
                            entry.sequence_number, off, n, size))
                over_log = off < log_hi and off + n > log_lo
                if off < REGION_TABLE_OFFSETS[0] or over_log:
                    raise self._invalid(
                        'VHDX log entry %d writes at %d (+%d), over the '
                        'headers or the log itself' % (
                            entry.sequence_number, off, n))
                overlay.apply(off, off + n, data)
        self._file_size = size
        self._overlay = overlay
        self.log_entries_replayed = len(active)
        LOG.info('%s: replayed %d VHDX log entries (sequence %d-%d) in '
                 'memory; the file is not modified', self.name, len(active),
                 active[0].sequence_number, head.sequence_number)

    # -- region table -------------------------------------------------------

    def _region_table(self):
        problems = []
        for off in REGION_TABLE_OFFSETS:
            buf = self._pread(REGION_TABLE_SIZE, off)
            if len(buf) != REGION_TABLE_SIZE:
                problems.append('truncated')
                continue
            sig, _, count, _ = _REGION_HEADER.unpack_from(buf)
            if sig != b'regi':
                problems.append('bad signature')
            elif not checksum_ok(buf):
                problems.append('checksum mismatch')
            elif count > MAX_TABLE_ENTRIES:
                problems.append('%d entries' % count)
            else:
                return self._region_entries(buf, count)
        if problems == ['checksum mismatch'] * 2:
            raise self._invalid(
                'VHDX region table checksum mismatch (both copies)')
        raise self._invalid('no valid VHDX region table (copy 1: %s, copy 2: '
                            '%s)' % tuple(problems))

    def _region_entries(self, buf, count):
        regions = {}
        spans = []
        if self._log_region:
            spans.append(self._log_region + ('the log',))
        for i in range(count):
            raw = _REGION_ENTRY.unpack_from(buf, 16 + i * 32)
            reg = Region(_guid(raw[0]), raw[1], raw[2], raw[3] & 1)
            name = KNOWN_REGIONS.get(reg.guid, 'region %s' % reg.guid)
            if reg.guid in regions:
                raise self._invalid('VHDX region table lists the %s twice'
                                    % name)
            if reg.guid not in KNOWN_REGIONS and reg.required:
                raise exception.UnsupportedImage(
                    path=self.name, reason='VHDX has an unknown required '
                    'region %s' % reg.guid)
            if (reg.file_offset % MiB or reg.length % MiB or not reg.length
                    or reg.file_offset < HEADER_AREA):
                raise self._invalid(
                    'VHDX %s region at %d (+%d) is not aligned on 1 MiB or '
                    'lies in the header area' % (name, reg.file_offset,
                                                 reg.length))
            if reg.file_offset + reg.length > self._file_size:
                raise self._invalid(
                    'VHDX %s region at %d (+%d) lies outside the file (%d '
                    'bytes)' % (name, reg.file_offset, reg.length,
                                self._file_size))
            regions[reg.guid] = reg
            spans.append((reg.file_offset, reg.file_offset + reg.length,
                          'the %s region' % name))
        for guid, name in KNOWN_REGIONS.items():
            if guid not in regions:
                raise self._invalid('VHDX region table has no %s region'
                                    % name)
        spans.sort()
        for a, b in zip(spans, spans[1:]):
            if b[0] < a[1]:
                raise self._invalid('VHDX %s and %s overlap' % (a[2], b[2]))
        self._spans = spans
        return regions

    # -- metadata -------------------------------------------------------------

    def _parse_metadata(self, region):
        table = self.read(region.file_offset, METADATA_TABLE_SIZE)
        sig, _, count, _ = _METADATA_HEADER.unpack_from(table)
        if sig != b'metadata':
            raise self._invalid('bad VHDX metadata table signature')
        if count > MAX_TABLE_ENTRIES:
            raise self._invalid('VHDX metadata table has %d entries (limit '
                                '%d)' % (count, MAX_TABLE_ENTRIES))
        items = {}
        for i in range(count):
            raw_id, off, length, flags, _ = _METADATA_ENTRY.unpack_from(
                table, 32 + i * 32)
            item = _guid(raw_id)
            is_user = bool(flags & 1)
            required = bool(flags & 4)
            known = not is_user and item in KNOWN_ITEMS
            name = KNOWN_ITEMS[item][0] if known else 'item %s' % item
            if not known and required:
                raise exception.UnsupportedImage(
                    path=self.name, reason='VHDX has an unknown required '
                    'metadata item %s' % item)
            if length == 0:
                data = b''
            elif (off < METADATA_TABLE_SIZE or length > MAX_METADATA_ITEM
                    or off + length > region.length):
                raise self._invalid(
                    'VHDX metadata %s at %d (+%d) lies outside the metadata '
                    'region (%d bytes)' % (name, off, length, region.length))
            elif known:
                data = self.read(region.file_offset + off, length)
            if not known:
                continue
            if item in items:
                raise self._invalid('VHDX metadata lists the %s twice' % name)
            want = KNOWN_ITEMS[item][1]
            if want is not None and len(data) < want:
                raise self._invalid('VHDX metadata %s is %d bytes, expected '
                                    '%d' % (name, len(data), want))
            items[item] = data
        # Physical sector size and page 83 data are required by the format
        # but not needed to read the disk: their absence is tolerated.
        for item in (FILE_PARAMETERS, VIRTUAL_DISK_SIZE, LOGICAL_SECTOR_SIZE):
            if item not in items:
                raise self._invalid('VHDX metadata has no %s'
                                    % KNOWN_ITEMS[item][0])

        bs, flags = struct.unpack_from('<II', items[FILE_PARAMETERS])
        if bs & (bs - 1) or not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
            raise self._invalid(
                'VHDX block size %d is not a power of two between %d and %d'
                % (bs, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE))
        self.block_size = bs
        self.leave_blocks_allocated = bool(flags & 1)
        self.has_parent = bool(flags & 2)
        lss = struct.unpack_from('<I', items[LOGICAL_SECTOR_SIZE])[0]
        pss = None
        if PHYSICAL_SECTOR_SIZE in items:
            pss = struct.unpack_from('<I', items[PHYSICAL_SECTOR_SIZE])[0]
        for what, v in (('logical', lss), ('physical', pss)):
            if v not in (512, 4096, None):
                raise self._invalid('VHDX %s sector size %d is neither 512 '
                                    'nor 4096' % (what, v))
        self.logical_sector_size = lss
        self.physical_sector_size = pss
        vsize = struct.unpack_from('<Q', items[VIRTUAL_DISK_SIZE])[0]
        if vsize > MAX_VIRTUAL_SIZE:
            raise self._invalid('VHDX virtual size %d exceeds the format '
                                'limit of %d bytes' % (vsize,
                                                       MAX_VIRTUAL_SIZE))
        if vsize % lss:
            raise self._invalid('VHDX virtual size %d is not a multiple of '
                                'the logical sector size %d' % (vsize, lss))
        self._virtual_size = vsize
        self.virtual_disk_id = None
        if PAGE83_DATA in items:
            self.virtual_disk_id = str(_guid(items[PAGE83_DATA][:16]))
        self.parent_locator = None
        if self.has_parent:
            if PARENT_LOCATOR not in items:
                raise self._invalid('differencing VHDX without a parent '
                                    'locator')
            self.parent_locator = self._parse_locator(items[PARENT_LOCATOR])
        self.chunk_ratio = (SECTORS_PER_BITMAP * lss) // bs

    def _parse_locator(self, data):
        if len(data) < _LOCATOR_HEADER.size:
            raise self._invalid('VHDX parent locator is truncated')
        kind, _, count = _LOCATOR_HEADER.unpack_from(data)
        if _guid(kind) != VHDX_LOCATOR_TYPE:
            raise exception.UnsupportedImage(
                path=self.name, reason='unknown VHDX parent locator type %s'
                % _guid(kind))
        if (count > MAX_LOCATOR_ENTRIES
                or _LOCATOR_HEADER.size + count * _LOCATOR_ENTRY.size
                > len(data)):
            raise self._invalid('VHDX parent locator has %d entries that do '
                                'not fit in it' % count)
        entries = {}
        for i in range(count):
            ko, vo, kl, vl = _LOCATOR_ENTRY.unpack_from(
                data, _LOCATOR_HEADER.size + i * _LOCATOR_ENTRY.size)
            if ko + kl > len(data) or vo + vl > len(data):
                raise self._invalid('VHDX parent locator entry %d lies '
                                    'outside the locator' % i)
            try:
                key = data[ko:ko + kl].decode('utf-16-le')
                value = data[vo:vo + vl].decode('utf-16-le')
            except UnicodeDecodeError:
                raise self._invalid('VHDX parent locator entry %d is not '
                                    'UTF-16' % i)
            if key in entries:
                raise self._invalid('VHDX parent locator lists %r twice'
                                    % key)
            entries[key] = value.split('\x00', 1)[0]
        link = entries.get('parent_linkage')
        if link is None:
            raise self._invalid('VHDX parent locator has no parent_linkage')
        try:
            self.parent_linkage = str(uuid.UUID(link.strip()))
        except ValueError:
            raise self._invalid('VHDX parent_linkage %r is not a GUID' % link)
        return entries

    # -- BAT ------------------------------------------------------------------

    def _load_bat(self, region):
        bs, cr = self.block_size, self.chunk_ratio
        vsize = self._virtual_size
        self.data_blocks = -(-vsize // bs)
        if self.has_parent:
            total = -(-self.data_blocks // cr) * (cr + 1)
        elif self.data_blocks:
            total = self.data_blocks + (self.data_blocks - 1) // cr
        else:
            total = 0
        if total > MAX_BAT_ENTRIES:
            raise self._invalid('VHDX BAT of %d entries is larger than the '
                                'limit of %d' % (total, MAX_BAT_ENTRIES))
        if total * 8 > region.length:
            raise self._invalid(
                'VHDX BAT region of %d bytes is too small for the %d entries '
                'the virtual size needs' % (region.length, total))
        bat = array.array('Q')
        bat.frombytes(self.read(region.file_offset, total * 8))
        if sys.byteorder != 'little':
            bat.byteswap()
        self.bat = bat
        self._validate_bat()

    def _validate_bat(self):
        bs, cr = self.block_size, self.chunk_ratio
        diff = self.has_parent
        size = self._file_size
        spans = [(0, HEADER_AREA, 'the VHDX headers')] + list(self._spans)
        bat = self.bat
        present = []
        for block in range(self.data_blocks):
            entry = bat[block + block // cr]
            state = entry & 7
            if state in (PAYLOAD_NOT_PRESENT,) + ZERO_STATES:
                continue
            if state == PAYLOAD_PARTIALLY_PRESENT and not diff:
                raise self._invalid(
                    'VHDX block %d is partially present in a disk without '
                    'parent' % block)
            if state not in (PAYLOAD_FULLY_PRESENT,
                             PAYLOAD_PARTIALLY_PRESENT):
                raise self._invalid('VHDX BAT entry for block %d has the '
                                    'invalid state %d' % (block, state))
            off = (entry >> 20) * MiB
            if off < HEADER_AREA or off + bs > size:
                raise self._invalid(
                    'VHDX BAT entry for block %d points outside the file '
                    '(%d + %d, file of %d bytes)' % (block, off, bs, size))
            if state == PAYLOAD_PARTIALLY_PRESENT:
                sb = bat[(block // cr) * (cr + 1) + cr]
                if sb & 7 != SB_PRESENT:
                    raise self._invalid(
                        'VHDX block %d is partially present but its sector '
                        'bitmap block is missing' % block)
            spans.append((off, off + bs, 'block %d' % block))
            present.append(block)
        if diff:
            for chunk in range(-(-self.data_blocks // cr)):
                entry = bat[chunk * (cr + 1) + cr]
                state = entry & 7
                if state == SB_NOT_PRESENT:
                    continue
                if state != SB_PRESENT:
                    raise self._invalid(
                        'VHDX BAT entry for sector bitmap %d has the invalid '
                        'state %d' % (chunk, state))
                off = (entry >> 20) * MiB
                if off < HEADER_AREA or off + BITMAP_BLOCK > size:
                    raise self._invalid(
                        'VHDX BAT entry for sector bitmap %d points outside '
                        'the file (%d + %d, file of %d bytes)'
                        % (chunk, off, BITMAP_BLOCK, size))
                spans.append((off, off + BITMAP_BLOCK,
                              'sector bitmap %d' % chunk))
        spans.sort()
        for a, b in zip(spans, spans[1:]):
            if b[0] < a[1]:
                raise self._invalid('VHDX %s overlaps %s (at %d)'
                                    % (b[2], a[2], b[0]))
        #: Indices of the payload blocks stored in this file.
        self.present_blocks = present

    def _check_whole_sectors(self):
        """Refuse a file whose length is not whole 512-byte sectors.

        Every VHDX structure (the header area, the regions, payload blocks
        and sector bitmaps) starts on a 1 MiB boundary and is a whole
        number of MiB long, and the specification wants the file's size a
        multiple of 1 MiB (its log's FlushedFileOffset); writers honour at
        least whole sectors (Disk2vhd's file ends on a 512 KiB boundary).
        A byte inserted into or cut from the data leaves every later block
        at its BAT offset but shifted by that byte, and an odd length is
        then all that tells: qemu-img reads such a file shifted, with
        exit 0, and ``qemu-img check`` finds nothing.  Not detected: whole
        sectors inserted or removed.
        """
        size = self.view.size
        if size % SECTOR:
            raise self._invalid(
                'VHDX file of %d bytes is not whole 512-byte sectors, where '
                'every VHDX structure is aligned on 1 MiB: a byte was '
                'inserted or deleted, or the file was cut' % size)

    # -- identity -------------------------------------------------------------

    @classmethod
    def probe(cls, view):
        return view.size >= 8 and view.pread(8, 0) == SIGNATURE

    @property
    def virtual_size(self):
        return self._virtual_size

    @property
    def identity(self):
        return str(_guid(self.header.data_write_guid))

    @property
    def subformat(self):
        if self.has_parent:
            return 'differencing'
        return 'fixed' if self.leave_blocks_allocated else 'dynamic'

    @property
    def creator(self):
        return self._creator

    @property
    def parent_ref(self):
        if not self.has_parent:
            return None
        hints = []
        for key in ('relative_path', 'absolute_win32_path', 'volume_path'):
            hint = _basename(self.parent_locator.get(key) or '')
            if hint and hint not in hints:
                hints.append(hint)
        return base.ParentRef(self.parent_linkage, tuple(hints))

    @property
    def parent_linkage2(self):
        if not self.parent_locator:
            return None
        return self.parent_locator.get('parent_linkage2')

    def allocated_bytes(self):
        if self._allocated is None:
            bs = self.block_size
            total = 0
            for block in self.present_blocks:
                start = block * bs
                for e in self.block_status(start, bs):
                    if e.kind == ext.DATA:
                        total += e.length
            self._allocated = total
        return self._allocated

    # -- block status ---------------------------------------------------------

    def _bitmap(self, block, bitmap_entry):
        """The sector bitmap bytes of one payload block."""
        cached, bitmap = self._bitmap_cache
        if cached != block:
            per_block = self.block_size // self.logical_sector_size // 8
            off = ((bitmap_entry >> 20) * MiB
                   + (block % self.chunk_ratio) * per_block)
            bitmap = self.read(off, per_block)
            self._bitmap_cache = (block, bitmap)
        return bitmap

    def block_status(self, offset, length):
        vsize = self._virtual_size
        end = min(offset + length, vsize)
        if offset >= end:
            return
        bs, cr = self.block_size, self.chunk_ratio
        diff = self.has_parent
        absent = ext.UNALLOCATED if diff else ext.ZERO
        bat = self.bat
        pos = offset
        while pos < end:
            block = pos // bs
            block_start = block * bs
            stop = min(end, block_start + bs)
            entry = bat[block + block // cr]
            state = entry & 7
            if state == PAYLOAD_FULLY_PRESENT:
                file_off = (entry >> 20) * MiB + (pos - block_start)
                if self._overlay:
                    # Replayed log writes may land in holes of the file.
                    yield ext.extent(ext.DATA, pos, stop - pos, file_off)
                else:
                    # Present blocks are often mostly holes in the file
                    # (qemu-img makes 16 MiB blocks): holes read as zeros
                    # and need not be read.
                    for a, b, is_data in self.view.data_runs(
                            file_off, stop - pos):
                        yield ext.extent(ext.DATA if is_data else ext.ZERO,
                                         pos + a - file_off, b - a,
                                         a if is_data else None)
            elif state == PAYLOAD_PARTIALLY_PRESENT:
                yield from self._partial_runs(block, entry, block_start,
                                              pos, stop)
            elif state == PAYLOAD_NOT_PRESENT:
                yield ext.extent(absent, pos, stop - pos)
            else:
                yield ext.extent(ext.ZERO, pos, stop - pos)
            pos = stop

    def _partial_runs(self, block, entry, block_start, pos, stop):
        cr = self.chunk_ratio
        bitmap = self._bitmap(block, self.bat[(block // cr) * (cr + 1) + cr])
        return base.bitmap_extents(bitmap, False, self.logical_sector_size,
                                   block_start, (entry >> 20) * MiB, pos,
                                   stop)


# -- the log ------------------------------------------------------------------

def _log_slice(log, pos, n):
    """``n`` bytes of the circular ``log`` from ``pos`` (wrapping once)."""
    length = len(log)
    pos %= length
    if pos + n <= length:
        return log[pos:pos + n]
    return log[pos:] + log[:n - (length - pos)]


class _LogScanner(object):
    """Validates log entries at 4 KiB positions of a log region."""

    def __init__(self, log, log_guid, path):
        self.log = log
        self.log_guid = log_guid
        self.path = path
        # Pure-Python CRC is the costly part: entries of a sane log do not
        # overlap, so their checksums cover the log about once.
        self.crc_budget = 4 * len(log) + 16 * MiB

    def entry_at(self, pos):
        """The valid :class:`LogEntry` at ``pos``, or None."""
        log = self.log
        head = log[pos:pos + _LOG_HEADER.size]
        (sig, _, length, tail, seq, count, _, guid, flushed,
         last) = _LOG_HEADER.unpack(head)
        if sig != b'loge' or guid != self.log_guid:
            return None
        if (length % LOG_SECTOR or not length or length > len(log)
                or tail % LOG_SECTOR or tail >= len(log)):
            return None
        desc_sectors = -(-(_LOG_HEADER.size + 32 * count) // LOG_SECTOR)
        if desc_sectors * LOG_SECTOR > length:
            return None
        entry = _log_slice(log, pos, length)
        writes = []
        data_index = desc_sectors
        for i in range(count):
            (dsig, trailing, lead_or_len, file_offset,
             dseq) = _LOG_DESCRIPTOR.unpack_from(entry, 64 + 32 * i)
            if dseq != seq or file_offset % LOG_SECTOR:
                return None
            if dsig == b'zero':
                if not lead_or_len or lead_or_len % LOG_SECTOR:
                    return None
                writes.append((file_offset, lead_or_len, None))
            elif dsig == b'desc':
                start = data_index * LOG_SECTOR
                if start + LOG_SECTOR > length:
                    return None
                sector = entry[start:start + LOG_SECTOR]
                ssig, high = _LOG_DATA_SEQ.unpack_from(sector)
                low = struct.unpack_from('<I', sector, LOG_SECTOR - 4)[0]
                if ssig != b'data' or (high << 32 | low) != seq:
                    return None
                data = (struct.pack('<Q', lead_or_len)
                        + sector[8:LOG_SECTOR - 4]
                        + struct.pack('<I', trailing))
                writes.append((file_offset, LOG_SECTOR, data))
                data_index += 1
            else:
                return None
        self.crc_budget -= length
        if self.crc_budget < 0:
            raise exception.InvalidImage(
                path=self.path, reason='VHDX log: too many overlapping '
                'entries to check (corrupt log)')
        if not checksum_ok(entry):
            LOG.debug('%s: VHDX log entry %d at %d: checksum mismatch',
                      self.path, seq, pos)
            return None
        return LogEntry(pos, length, tail, seq, flushed, last, writes)


def find_active_sequence(log, log_guid, path):
    """The entries to replay, oldest first ([] if none).

    Every valid entry (signature, log GUID, descriptors, data sectors whose
    sequence numbers match, CRC-32C) is a candidate head.  Heads are tried
    from the highest sequence number down; a head is accepted when its
    ``Tail`` leads, through valid contiguous entries with consecutive
    sequence numbers, to the head itself.  Those entries are the active
    sequence.  A torn (invalid) last entry is thus ignored, and a log with
    no valid entry replays nothing.
    """
    scanner = _LogScanner(log, log_guid, path)
    entries = {}
    for pos in range(0, len(log), LOG_SECTOR):
        if log[pos:pos + 4] != b'loge':
            continue
        entry = scanner.entry_at(pos)
        if entry is not None:
            entries[pos] = entry
    steps = len(entries) * 64 + 4096
    for head in sorted(entries.values(), key=lambda e: e.sequence_number,
                       reverse=True):
        chain = []
        pos = head.tail
        while True:
            steps -= 1
            if steps < 0:
                raise exception.InvalidImage(
                    path=path, reason='VHDX log: too many broken sequences '
                    '(corrupt log)')
            entry = entries.get(pos)
            if entry is None or entry.sequence_number > head.sequence_number:
                chain = None
                break
            if chain and (entry.sequence_number
                          != chain[-1].sequence_number + 1):
                chain = None
                break
            chain.append(entry)
            if entry is head:
                break
            pos = (pos + entry.length) % len(log)
            if pos == head.tail:
                chain = None
                break
        if chain:
            return chain
    return []
