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
"""VHD (Virtual PC / Hyper-V / XenServer) disks: fixed, dynamic, differencing.

Layout (Microsoft "Virtual Hard Disk Image Format Specification" 1.0):

* a 512-byte footer at the end of the file (and, for dynamic and
  differencing disks, a copy at offset 0);
* dynamic/differencing disks: a 1024-byte dynamic header at the footer's
  ``data_offset``, a block allocation table (BAT) of big-endian sector
  numbers at ``table_offset``, and blocks made of a sector bitmap
  followed by ``block_size`` bytes of data.

Decisions (see doc/source/formats.rst):

* the virtual size is the footer's ``current_size``, never a size derived
  from the CHS geometry;
* footer and dynamic header checksums are verified; a bad one is refused;
* the two footers of a dynamic or differencing disk must agree, and the
  one at the end must be there, but in a *padded* view (a logical
  volume of SM's LVHD: the view's ``padded``) and in a *live* one (the
  leaf of a XenServer VDI, which a running VM's tapdisk holds open for
  writing: the view's ``live``; blktap overwrites the end copy when it
  opens it, and writes new blocks there until it closes it), where the
  copy at offset 0 is the footer when no footer ends the view, as
  libvhd (and qemu) read it;
* in a dynamic disk an allocated block is data as a whole (as qemu reads
  it); in a differencing disk its sector bitmap says which sectors the
  layer holds, the others belong to the parent;
* the BAT is validated before use: inside the file, no overlaps with the
  headers or with each other, big enough for the virtual size.
"""

import array
import collections
import struct
import sys
import uuid

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os.formats import base

SECTOR = 512
FOOTER_SIZE = 512
DYN_HEADER_SIZE = 1024
FOOTER_COOKIE = b'conectix'
DYN_COOKIE = b'cxsparse'
UNUSED_OFFSET = 0xFFFFFFFFFFFFFFFF
BAT_UNUSED = 0xFFFFFFFF

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
SUBFORMATS = {DISK_FIXED: 'fixed', DISK_DYNAMIC: 'dynamic',
              DISK_DIFFERENCING: 'differencing'}

# Hard limits, independent of configuration: the VHD format cannot address
# more than 2040 GiB; XenServer stops at 2 TiB.
MAX_VIRTUAL_SIZE = 2 << 40
MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 256 << 20
MAX_BAT_ENTRIES = 1 << 24

_FOOTER = struct.Struct('>8sIIQI4sI4sQQHBBII16sB427s')
_DYN = struct.Struct('>8sQQIIII16sII512s192s256s')
_LOCATOR = struct.Struct('>4sIIIQ')

Footer = collections.namedtuple('Footer', [
    'cookie', 'features', 'version', 'data_offset', 'timestamp',
    'creator_app', 'creator_version', 'creator_os', 'original_size',
    'current_size', 'cylinders', 'heads', 'sectors_per_track', 'disk_type',
    'checksum', 'unique_id', 'saved_state', 'reserved'])

DynamicHeader = collections.namedtuple('DynamicHeader', [
    'cookie', 'data_offset', 'table_offset', 'header_version',
    'max_table_entries', 'block_size', 'checksum', 'parent_unique_id',
    'parent_timestamp', 'reserved1', 'parent_unicode_name', 'locators',
    'reserved2'])

Locator = collections.namedtuple('Locator', [
    'platform_code', 'data_space', 'data_length', 'reserved', 'data_offset'])


def vhd_checksum(buf, checksum_offset):
    """One's complement of the byte sum, the checksum field counted as 0."""
    total = sum(buf) - sum(buf[checksum_offset:checksum_offset + 4])
    return (~total) & 0xFFFFFFFF


def parse_footer(buf, path):
    if len(buf) < FOOTER_SIZE:
        raise exception.InvalidImage(path=path, reason='truncated VHD footer')
    footer = Footer._make(_FOOTER.unpack(buf[:FOOTER_SIZE]))
    if footer.cookie != FOOTER_COOKIE:
        raise exception.InvalidImage(path=path,
                                     reason='no VHD footer (bad cookie)')
    if vhd_checksum(buf[:FOOTER_SIZE], 64) != footer.checksum:
        raise exception.InvalidImage(
            path=path, reason='VHD footer checksum mismatch')
    if footer.disk_type not in SUBFORMATS:
        raise exception.UnsupportedImage(
            path=path, reason='unsupported VHD disk type %d'
            % footer.disk_type)
    if footer.current_size > MAX_VIRTUAL_SIZE:
        raise exception.InvalidImage(
            path=path, reason='VHD virtual size %d exceeds the format limit '
            'of %d bytes' % (footer.current_size, MAX_VIRTUAL_SIZE))
    return footer


def parse_dynamic_header(buf, path):
    if len(buf) < DYN_HEADER_SIZE:
        raise exception.InvalidImage(
            path=path, reason='truncated VHD dynamic header')
    hdr = DynamicHeader._make(_DYN.unpack(buf[:DYN_HEADER_SIZE]))
    if hdr.cookie != DYN_COOKIE:
        raise exception.InvalidImage(
            path=path, reason='bad VHD dynamic header cookie')
    if vhd_checksum(buf[:DYN_HEADER_SIZE], 36) != hdr.checksum:
        raise exception.InvalidImage(
            path=path, reason='VHD dynamic header checksum mismatch')
    bs = hdr.block_size
    if bs & (bs - 1) or not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
        raise exception.InvalidImage(
            path=path, reason='VHD block size %d is not a power of two '
            'between %d and %d' % (bs, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE))
    return hdr


def _locators(hdr):
    return [Locator._make(_LOCATOR.unpack_from(hdr.locators, i * 24))
            for i in range(8)]


def footer_identity(data):
    """The unique id (as :attr:`VhdImage.identity` gives it) of the
    footer ``data`` holds (a VHD's first or last :data:`FOOTER_SIZE`
    bytes: a dynamic VHD keeps a copy of its footer at offset 0); None
    when it is not a footer."""
    if len(data) < FOOTER_SIZE or data[:8] != FOOTER_COOKIE:
        return None
    return _format_uuid(data[68:84])


def _format_uuid(raw):
    return str(uuid.UUID(bytes=bytes(raw)))


_basename = base.basename_hint


class _Geometry(object):
    """What the BAT tells about a dynamic/differencing layer."""

    def __init__(self, footer, hdr, path):
        self.footer = footer
        self.hdr = hdr
        self.block_size = hdr.block_size
        bits = self.block_size // SECTOR
        self.bitmap_size = -(-(-(-bits // 8)) // SECTOR) * SECTOR
        self.needed = -(-footer.current_size // self.block_size)
        if hdr.max_table_entries < self.needed:
            raise exception.InvalidImage(
                path=path, reason='VHD block table has %d entries, the '
                'virtual size needs %d' % (hdr.max_table_entries,
                                           self.needed))
        if hdr.max_table_entries > MAX_BAT_ENTRIES:
            raise exception.InvalidImage(
                path=path, reason='VHD block table of %d entries is larger '
                'than the limit of %d' % (hdr.max_table_entries,
                                          MAX_BAT_ENTRIES))
        self.bat_bytes = hdr.max_table_entries * 4
        self.bat_span = -(-self.bat_bytes // SECTOR) * SECTOR


def _parse_bat(raw, needed):
    bat = array.array('I')
    bat.frombytes(raw[:needed * 4])
    if sys.byteorder == 'little':
        bat.byteswap()
    return bat


def _validate_bat(bat, geo, footer_offset, table_offset, path):
    """Every allocated block inside the file, no overlap with anything."""
    span = geo.bitmap_size + geo.block_size
    regions = [(0, FOOTER_SIZE),
               (geo.footer.data_offset,
                geo.footer.data_offset + DYN_HEADER_SIZE),
               (table_offset, table_offset + geo.bat_span)]
    starts = sorted(e * SECTOR for e in bat if e != BAT_UNUSED)
    if starts and starts[-1] + span > footer_offset:
        raise exception.InvalidImage(
            path=path, reason='VHD block table points beyond the end of the '
            'file (block at %d + %d > %d): truncated or corrupt'
            % (starts[-1], span, footer_offset))
    for i in range(1, len(starts)):
        if starts[i] < starts[i - 1] + span:
            raise exception.InvalidImage(
                path=path, reason='VHD block table entries overlap (blocks '
                'at %d and %d)' % (starts[i - 1], starts[i]))
    for lo, hi in regions:
        # The first block that ends after the region starts must start at or
        # after the region's end.
        for s in starts:
            if s + span <= lo:
                continue
            if s < hi:
                raise exception.InvalidImage(
                    path=path, reason='VHD block at %d overlaps the headers '
                    'or the block table (%d-%d)' % (s, lo, hi))
            break


def _check_header_layout(footer, hdr, file_size, path):
    for what, off, size in (('dynamic header', footer.data_offset,
                             DYN_HEADER_SIZE),
                            ('block table', hdr.table_offset,
                             hdr.max_table_entries * 4)):
        if off < FOOTER_SIZE or off + size > file_size - FOOTER_SIZE:
            raise exception.InvalidImage(
                path=path, reason='VHD %s at %d (+%d) lies outside the file '
                '(%d bytes)' % (what, off, size, file_size))


def _check_fixed_length(data_bytes, footer, path):
    """A fixed VHD is its data then its footer, nothing else: any other
    length means bytes were lost or inserted, and every later byte would
    be read shifted."""
    if data_bytes < footer.current_size:
        raise exception.InvalidImage(
            path=path, reason='fixed VHD holds %d bytes of data but declares '
            '%d: truncated' % (data_bytes, footer.current_size))
    if data_bytes != footer.current_size:
        raise exception.InvalidImage(
            path=path, reason='fixed VHD holds %d bytes of data but declares '
            '%d: %d bytes too many (inserted or appended), the data would '
            'be read shifted' % (data_bytes, footer.current_size,
                                 data_bytes - footer.current_size))


def _check_dynamic_length(file_size, footer, path):
    """A dynamic or differencing VHD is whole 512-byte sectors: the footer
    copy, the dynamic header, the block table, each block's bitmap and data
    are sectors, and the footer is the file's last sector.  Any other
    length means bytes were inserted into the file or cut from it, with
    the footer intact: every block after that point would be read
    shifted (qemu-img reads it so)."""
    extra = file_size % SECTOR
    if extra:
        raise exception.InvalidImage(
            path=path, reason='%s VHD of %d bytes is not whole 512-byte '
            'sectors (%d bytes over): bytes were inserted or cut, the data '
            'would be read shifted' % (SUBFORMATS[footer.disk_type],
                                       file_size, extra))


def _footers_agree(head, tail):
    """The footer copy at offset 0 mirrors the footer at the end: the
    fields that place and identify the data must be equal."""
    return (head.unique_id == tail.unique_id
            and head.current_size == tail.current_size
            and head.disk_type == tail.disk_type
            and head.data_offset == tail.data_offset)


def bitmap_runs(bitmap, first, count):
    """Runs of (start_sector, length, is_set): the VHD bitmap is MSB-first
    (bit 7 of byte 0 is sector 0)."""
    return base.bitmap_runs(bitmap, first, count, msb_first=True)


#: Most sector bitmaps of a differencing VHD read in one batch from a
#: remote file (512 bytes each for 2 MiB blocks).
BITMAP_BATCH = 256
#: Most sector bitmaps :meth:`VhdReader.reread_ranges` names (1024: the
#: blocks of 2 GiB of a leaf written since its last snapshot).
REREAD_BITMAPS = 1024


class VhdReader(base.LayerReader):
    """Random-access reader of one VHD layer."""

    format_name = 'vhd'

    def __init__(self, view, opener=None):
        super(VhdReader, self).__init__(view, opener)
        path = view.name
        size = view.size
        if size < FOOTER_SIZE:
            raise exception.InvalidImage(
                path=path, reason='too small to be a VHD (%d bytes)' % size)
        head = view.pread(FOOTER_SIZE, 0)
        tail = view.pread(FOOTER_SIZE, size - FOOTER_SIZE)
        self.footer_offset = size - FOOTER_SIZE
        if head[:8] == FOOTER_COOKIE:
            # Dynamic or differencing: both copies must be sound and agree.
            footer = parse_footer(head, path)
            if footer.disk_type == DISK_FIXED:
                raise exception.InvalidImage(
                    path=path, reason='fixed VHD with a footer copy at '
                    'offset 0')
            if tail[:8] == FOOTER_COOKIE:
                end_footer = parse_footer(tail, path)
                if not _footers_agree(footer, end_footer):
                    raise exception.InvalidImage(
                        path=path, reason='the two VHD footer copies '
                        'disagree')
            elif getattr(view, 'padded', False) or \
                    getattr(view, 'live', False):
                # A VHD a tapdisk holds open for writing (a running VM's
                # leaf: blktap's vhd_kill_footer overwrites the end copy
                # when it opens it, and writes new blocks where it was,
                # until it closes it), or a logical volume (SM's LVHD)
                # whose last sector is no footer (that, or an inflate cut
                # short): libvhd's footer search falls back to the copy
                # at offset 0, as here, and blocks may reach the end.
                self.footer_offset = size
            else:
                raise exception.InvalidImage(
                    path=path, reason='VHD footer missing at the end of the '
                    'file: truncated')
            _check_dynamic_length(size, footer, path)
        else:
            footer = parse_footer(tail, path)
            if footer.disk_type != DISK_FIXED:
                raise exception.InvalidImage(
                    path=path, reason='%s VHD without its footer copy at '
                    'offset 0' % SUBFORMATS[footer.disk_type])
        self.footer = footer
        self.hdr = None
        self.bat = None
        self._bitmap_cache = (None, None)
        if footer.disk_type == DISK_FIXED:
            _check_fixed_length(self.footer_offset, footer, path)
            return
        if footer.data_offset == UNUSED_OFFSET:
            raise exception.InvalidImage(
                path=path, reason='dynamic VHD without a dynamic header')
        if (footer.data_offset < FOOTER_SIZE
                or footer.data_offset + DYN_HEADER_SIZE > self.footer_offset):
            raise exception.InvalidImage(
                path=path, reason='VHD dynamic header offset %d lies outside '
                'the file' % footer.data_offset)
        self.hdr = parse_dynamic_header(
            view.pread(DYN_HEADER_SIZE, footer.data_offset), path)
        self.geo = _Geometry(footer, self.hdr, path)
        _check_header_layout(footer, self.hdr, size, path)
        raw_bat = view.pread(self.geo.needed * 4, self.hdr.table_offset)
        self.bat = _parse_bat(raw_bat, self.geo.needed)
        _validate_bat(self.bat, self.geo, self.footer_offset,
                      self.hdr.table_offset, path)

    # -- identity -----------------------------------------------------------

    @classmethod
    def probe(cls, view):
        if view.size < FOOTER_SIZE:
            return False
        if view.pread(8, 0) == FOOTER_COOKIE:
            return True
        return view.pread(8, view.size - FOOTER_SIZE) == FOOTER_COOKIE

    @property
    def virtual_size(self):
        return self.footer.current_size

    @property
    def identity(self):
        return _format_uuid(self.footer.unique_id)

    @property
    def subformat(self):
        return SUBFORMATS[self.footer.disk_type]

    @property
    def creator(self):
        return self.footer.creator_app.decode('latin-1').rstrip('\x00 ')

    @property
    def block_size(self):
        return self.hdr.block_size if self.hdr else None

    @property
    def parent_ref(self):
        if self.footer.disk_type != DISK_DIFFERENCING:
            return None
        return base.ParentRef(_format_uuid(self.hdr.parent_unique_id),
                              self._name_hints())

    def _name_hints(self):
        # Read once per reader (the locators never change under it): a
        # remote file would pay a round trip per locator each time the
        # parent is asked for.
        cached = getattr(self, '_hints', None)
        if cached is None:
            cached = self._hints = self._read_name_hints()
        return cached

    def _read_name_hints(self):
        hints = []
        try:
            name = self.hdr.parent_unicode_name.decode('utf-16-be')
            name = name.split('\x00', 1)[0]
        except UnicodeDecodeError:
            name = ''
        if _basename(name):
            hints.append(_basename(name))
        wanted = self._locator_ranges()
        preadv = getattr(self.view, 'preadv', None)
        if preadv is not None and len(wanted) > 1:
            # A remote file: every locator in one round trip.
            got = preadv([(off, length) for _code, off, length in wanted])
        else:
            got = [self.view.pread(length, off)
                   for _code, off, length in wanted]
        for (code, _off, _length), raw in zip(wanted, got):
            enc = {b'W2ru': 'utf-16-le', b'W2ku': 'utf-16-le',
                   b'MacX': 'utf-8'}.get(code, 'latin-1')
            try:
                text = raw.decode(enc)
            except UnicodeDecodeError:
                continue
            if code == b'MacX' and text.startswith('file://'):
                text = text[len('file://'):]
            hint = _basename(text)
            if hint and hint not in hints:
                hints.append(hint)
        return tuple(hints)

    def _locator_ranges(self):
        """(platform code, offset, length) of each parent locator whose
        name is read (inside the file, at most 4 KiB)."""
        out = []
        for loc in _locators(self.hdr):
            code = loc.platform_code
            if code not in (b'W2ru', b'W2ku', b'MacX', b'Wi2r', b'Wi2k'):
                continue
            length = min(loc.data_length, 4096)
            if (not length or loc.data_offset + length > self.footer_offset):
                continue
            out.append((code, loc.data_offset, length))
        return out

    def reread_ranges(self):
        """(offset, length) of what opening this layer's file again
        reads, as far as its layout tells now: both footers (the one at
        the end where the file ends now), the dynamic header, the block
        table, the parent locators and the sector bitmaps of the
        allocated blocks (at most :data:`REREAD_BITMAPS`).  A hint, to
        ask for them together (:func:`any2kvm_os.chain.layer_chain.
        reopen_leaf`): the reader opened on the file reads what it needs
        wherever the file has it now, and checks it as always."""
        size = self.view.size
        out = [(0, FOOTER_SIZE), (size - FOOTER_SIZE, FOOTER_SIZE)]
        if self.hdr is None:
            return out
        out.append((self.footer.data_offset, DYN_HEADER_SIZE))
        out.append((self.hdr.table_offset, self.geo.needed * 4))
        out += [(off, length) for _code, off, length in
                self._locator_ranges()]
        if self.footer.disk_type == DISK_DIFFERENCING:
            size = self.geo.bitmap_size
            entries = [e for e in self.bat if e != BAT_UNUSED]
            out += [(e * SECTOR, size) for e in entries[:REREAD_BITMAPS]]
        return out

    def allocated_bytes(self):
        if self.footer.disk_type == DISK_FIXED:
            # A fixed disk stores every byte (holes of a sparse copy of it
            # are the host file system's business).
            return self.footer.current_size
        return super(VhdReader, self).allocated_bytes()

    # -- block status ---------------------------------------------------------

    def _bitmap(self, block, entry):
        cached_block, bitmap = self._bitmap_cache
        if cached_block != block:
            bitmap = self._batched_bitmap(block)
            if bitmap is None:
                bitmap = self.read(entry * SECTOR, self.geo.bitmap_size)
            self._bitmap_cache = (block, bitmap)
        return bitmap

    def _batched_bitmap(self, block):
        """A remote view (one with ``preadv``) has the bitmaps of the
        next BITMAP_BATCH allocated blocks of the range being looked at
        read together: one round trip, not one per block."""
        preadv = getattr(self.view, 'preadv', None)
        batch = getattr(self, '_bitmap_batch', None)
        if preadv is None:
            return None
        if batch and block in batch:
            return batch.pop(block)
        last = getattr(self, '_bitmap_last', block)
        blocks = [b for b in range(block, min(last + 1, len(self.bat)))
                  if self.bat[b] != BAT_UNUSED][:BITMAP_BATCH]
        size = self.geo.bitmap_size
        got = preadv([(self.bat[b] * SECTOR, size) for b in blocks])
        self._bitmap_batch = batch = {}
        for b, bitmap in zip(blocks, got):
            if len(bitmap) != size:
                return None   # self.read says what is wrong
            batch[b] = bitmap
        return batch.pop(block, None)

    def block_status(self, offset, length):
        vsize = self.footer.current_size
        end = min(offset + length, vsize)
        if offset >= end:
            return
        if self.footer.disk_type == DISK_FIXED:
            # A fixed disk copied as a sparse file: its holes are zeros,
            # not data to read.
            for a, b, is_data in self.view.data_runs(offset, end - offset):
                if is_data:
                    yield ext.extent(ext.DATA, a, b - a, a)
                else:
                    yield ext.extent(ext.ZERO, a, b - a)
            return
        bs = self.geo.block_size
        bitmap_size = self.geo.bitmap_size
        diff = self.footer.disk_type == DISK_DIFFERENCING
        self._status_end = end
        pos = offset
        while pos < end:
            block = pos // bs
            block_start = block * bs
            stop = min(end, block_start + bs)
            entry = self.bat[block]
            if entry == BAT_UNUSED:
                yield ext.extent(ext.UNALLOCATED, pos, stop - pos)
            else:
                data_start = entry * SECTOR + bitmap_size
                if not diff:
                    yield ext.extent(ext.DATA, pos, stop - pos,
                                     data_start + (pos - block_start))
                else:
                    yield from self._diff_runs(block, entry, block_start,
                                               data_start, pos, stop)
            pos = stop

    def _diff_runs(self, block, entry, block_start, data_start, pos, stop):
        # The last block of the range looked at bounds a bitmap batch.
        self._bitmap_last = (self._status_end - 1) // self.geo.block_size
        return base.bitmap_extents(self._bitmap(block, entry), True, SECTOR,
                                   block_start, data_start, pos, stop)


# -- streaming (one forward pass, for compressed archives) --------------------


class StreamLayer(object):
    """One VHD read in a single forward pass from a non-seekable stream.

    Created from the first bytes of a member, peeked without consuming
    them; ``read_headers()`` and ``data_runs()`` then consume the member and
    yield the layer's DATA runs in file order.  Identity and parent are
    known before the data is read for dynamic and differencing disks; a
    fixed disk is recognised by the absence of a footer copy at offset 0
    and verified at its end.
    """

    def __init__(self, name, head, member_size):
        self.name = name
        self.member_size = member_size
        self.head = head
        self.footer = None
        self.hdr = None
        if member_size < FOOTER_SIZE:
            raise exception.InvalidImage(
                path=name, reason='too small to be a VHD (%d bytes)'
                % member_size)
        if head[:8] == FOOTER_COOKIE:
            self.footer = parse_footer(head, name)
            if self.footer.disk_type == DISK_FIXED:
                raise exception.InvalidImage(
                    path=name, reason='fixed VHD with a footer copy at '
                    'offset 0')
            _check_dynamic_length(member_size, self.footer, name)
        self.fixed = self.footer is None

    # What the chain logic needs before consuming the data:
    @property
    def identity(self):
        return _format_uuid(self.footer.unique_id) if self.footer else None

    @property
    def is_base(self):
        return self.fixed or self.footer.disk_type == DISK_DYNAMIC

    def read_headers(self, stream):
        """Read the dynamic header and BAT (stream positioned after head)."""
        if self.fixed:
            return
        name = self.name
        footer = self.footer
        if (footer.data_offset < FOOTER_SIZE
                or footer.data_offset + DYN_HEADER_SIZE
                > self.member_size - FOOTER_SIZE):
            raise exception.InvalidImage(
                path=name, reason='VHD dynamic header offset %d lies outside '
                'the file' % footer.data_offset)
        stream.skip_to(footer.data_offset)
        self.hdr = parse_dynamic_header(stream.read_exact(DYN_HEADER_SIZE),
                                        name)
        self.geo = _Geometry(footer, self.hdr, name)
        _check_header_layout(footer, self.hdr, self.member_size, name)
        if self.hdr.table_offset < stream.pos:
            raise exception.InvalidImage(
                path=name, reason='VHD block table before the dynamic header '
                'cannot be streamed')
        stream.skip_to(self.hdr.table_offset)
        raw = stream.read_exact(self.geo.needed * 4)
        self.bat = _parse_bat(raw, self.geo.needed)
        _validate_bat(self.bat, self.geo, self.member_size - FOOTER_SIZE,
                      self.hdr.table_offset, name)

    @property
    def parent_id(self):
        if self.fixed or self.footer.disk_type != DISK_DIFFERENCING:
            return None
        return _format_uuid(self.hdr.parent_unique_id)

    @property
    def virtual_size(self):
        return self.footer.current_size if self.footer else None

    def data_runs(self, stream, chunk=4 << 20):
        """Yield (virtual_offset, bytes) for this layer's data, file order.

        For a fixed disk the footer is read and checked at the end; its
        ``virtual_size`` is known only then.
        """
        name = self.name
        if self.fixed:
            data_end = self.member_size - FOOTER_SIZE
            pos = 0
            while pos < data_end:
                want = min(chunk, data_end - pos)
                yield pos, stream.read_exact(want)
                pos += want
            footer = parse_footer(stream.read_exact(FOOTER_SIZE), name)
            if footer.disk_type != DISK_FIXED:
                raise exception.InvalidImage(
                    path=name, reason='%s VHD without its footer copy at '
                    'offset 0' % SUBFORMATS[footer.disk_type])
            _check_fixed_length(data_end, footer, name)
            self.footer = footer
            return
        geo = self.geo
        vsize = self.footer.current_size
        bs = geo.block_size
        diff = self.footer.disk_type == DISK_DIFFERENCING
        order = sorted((e, i) for i, e in enumerate(self.bat)
                       if e != BAT_UNUSED)
        for entry, block in order:
            stream.skip_to(entry * SECTOR)
            bitmap = stream.read_exact(geo.bitmap_size)
            block_start = block * bs
            valid = min(bs, vsize - block_start)
            if not diff:
                done = 0
                while done < bs:
                    n = min(chunk, bs - done)
                    buf = stream.read_exact(n)
                    if done < valid:
                        yield block_start + done, buf[:valid - done]
                    done += n
                continue
            data = stream.read_exact(bs)
            nsect = -(-valid // SECTOR)
            for s, n, is_set in bitmap_runs(bitmap, 0, nsect):
                if is_set:
                    a = s * SECTOR
                    b = min(valid, (s + n) * SECTOR)
                    yield block_start + a, data[a:b]
        stream.skip_to(self.member_size - FOOTER_SIZE)
        tail = parse_footer(stream.read_exact(FOOTER_SIZE), name)
        if not _footers_agree(self.footer, tail):
            raise exception.InvalidImage(
                path=name, reason='the two VHD footer copies disagree')
