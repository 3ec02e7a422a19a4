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
"""qcow2 (QEMU copy-on-write, versions 2 and 3).

Layout (QEMU ``docs/interop/qcow2.txt``), all fields big-endian:

* a header in the first cluster (72 bytes in version 2, ``header_length``
  in version 3), followed by header extensions and the backing file name;
* a two-level table: the L1 table points at L2 tables (one cluster each),
  whose entries say, for each cluster of the virtual disk, where it is
  stored, that it reads as zeros, that it is compressed, or nothing (the
  backing file then answers);
* with extended L2 entries (incompatible feature bit 4) each L2 entry
  carries a 64-bit bitmap: for each of 32 subclusters "allocated" (bits
  0-31) and "reads as zeros" (bits 32-63).

Decisions (see doc/source/formats.rst):

* only the active L1 table is read for the disk; internal snapshots,
  refcounts and bitmaps are not needed to read it, but their tables are
  checked to lie inside the file, cluster aligned, and (for a file that
  is not whole sectors) where the last of them ends: a truncated or
  shifted file is refused whatever it holds;
* L2 entries are interpreted as QEMU does (``qcow2_get_cluster_type``):
  the zero flag means zeros whatever the version, an unaligned data
  cluster or a subcluster both allocated and zero is corruption;
* refused: encryption, the corrupt bit, an external data file (its data
  would live at a path the image chooses), unknown incompatible features,
  backing files given as protocols or ``json:`` options;
* a dirty image (bit 0: not closed cleanly, refcounts possibly stale) is
  read: its L1/L2 tables are written before the dirty bit is cleared, so
  the mapping is consistent; a warning says so;
* the backing file is looked for BY NAME among the files of the same
  directory or archive: only the last component of the name written in
  the image is used, whatever directories precede it.  qcow2 has no
  unique ids, so the layer's ``identity`` is None and its ``parent_ref``
  is ``ParentRef(None, (name,))``: "the member of that name, which must be
  a disk image";
* a raw backing file (backing format ``raw``) has no format to detect: it
  is opened by this reader through its sibling opener (same directory or
  archive only) and folded into this layer: what this layer leaves
  unallocated reads from the raw file, zeros beyond its end;
* compressed clusters are deflate (raw, 4 KiB window) or, when the image
  says so and the ``zstandard`` module is importable, zstd.
"""

import array
import collections
import logging
import os
import posixpath
import struct
import sys
import zlib

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.formats import base

LOG = logging.getLogger(__name__)

MAGIC = b'QFI\xfb'
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
#: QEMU refuses larger active L1 tables (QCOW_MAX_L1_SIZE, 32 MiB).
MAX_L1_ENTRIES = (32 << 20) // 8
#: Host offsets have 56 bits; no virtual disk beyond that is sane.
MAX_VIRTUAL_SIZE = 1 << 56
MAX_BACKING_NAME = 1023
#: QEMU keeps the backing format name in a 16-byte buffer.
MAX_BACKING_FORMAT = 15
MAX_EXTENSIONS = 1024
#: QEMU's limits (QCOW_MAX_SNAPSHOTS, QCOW_MAX_SNAPSHOTS_SIZE,
#: QCOW2_MAX_BITMAP_DIRECTORY_SIZE, QCOW2_MAX_BITMAPS,
#: QCOW_MAX_REFTABLE_SIZE).
MAX_SNAPSHOTS = 65536
MAX_SNAPSHOT_TABLE = 1024 * 65536
MAX_BITMAP_DIRECTORY = 1024 * 65535
MAX_BITMAPS = 65535
MAX_REFCOUNT_TABLE = 8 << 20
#: Bytes of L2 tables kept in memory per layer.
L2_CACHE_BYTES = 16 << 20

#: Offset bits of an L1 entry and of a standard L2 entry (bits 9-55).
OFFSET_MASK = 0x00fffffffffffe00
L2_COMPRESSED = 1 << 62
L2_ZERO = 1

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_KNOWN = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                  | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)

#: Autoclear feature bit 0: the bitmaps extension is consistent.
AUTOCLEAR_BITMAPS = 1

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xe2792aca
EXT_FEATURE_TABLE = 0x6803f857
EXT_BITMAPS = 0x23852875
EXT_ENCRYPTION = 0x0537be77
EXT_DATA_FILE = 0x44415441

COMPRESSION_DEFLATE = 0
COMPRESSION_ZSTD = 1

#: qemu backing format names -> our format names (``format_name``).
BACKING_FORMATS = {'qcow2': 'qcow2', 'vpc': 'vhd', 'vhdx': 'vhdx',
                   'vmdk': 'vmdk'}

_HEADER = struct.Struct('>4sIQIIQIIQQIIQ')
_V3 = struct.Struct('>QQQII')
_EXT = struct.Struct('>II')
#: A snapshot table entry's fixed part (extra data, id and name follow).
_SNAPSHOT = struct.Struct('>QIHHIIQII')
#: The bitmaps extension, and a bitmap directory entry's fixed part.
_BITMAPS_EXT = struct.Struct('>IIQQ')
_BITMAP_ENTRY = struct.Struct('>QIIBBHI')

Header = collections.namedtuple('Header', [
    'magic', 'version', 'backing_file_offset', 'backing_file_size',
    'cluster_bits', 'size', 'crypt_method', 'l1_size', 'l1_table_offset',
    'refcount_table_offset', 'refcount_table_clusters', 'nb_snapshots',
    'snapshots_offset', 'incompatible_features', 'compatible_features',
    'autoclear_features', 'refcount_order', 'header_length',
    'compression_type'])

#: Extent tokens (``file_offset``) for data not stored linearly in the file.
COMPRESSED = 'compressed'
RAW_BACKING = 'raw-backing'


def _be_array(raw):
    table = array.array('Q')
    table.frombytes(raw)
    if sys.byteorder == 'little':
        table.byteswap()
    return table


def parse_header(buf, path):
    """The header fields (version 2 fields padded with v2 defaults)."""
    if len(buf) < V2_HEADER_LENGTH:
        raise exception.InvalidImage(path=path,
                                     reason='truncated qcow2 header')
    fields = _HEADER.unpack_from(buf, 0)
    if fields[0] != MAGIC:
        raise exception.InvalidImage(path=path, reason='not a qcow2 image '
                                     '(bad magic)')
    version = fields[1]
    if version == 2:
        rest = (0, 0, 0, 4, V2_HEADER_LENGTH, COMPRESSION_DEFLATE)
    elif version == 3:
        if len(buf) < V3_HEADER_LENGTH:
            raise exception.InvalidImage(
                path=path, reason='truncated qcow2 version 3 header')
        rest = _V3.unpack_from(buf, V2_HEADER_LENGTH)
        header_length = rest[4]
        if header_length < V3_HEADER_LENGTH or header_length % 8:
            raise exception.InvalidImage(
                path=path, reason='qcow2 header length %d is not a multiple '
                'of 8 of at least %d' % (header_length, V3_HEADER_LENGTH))
        if header_length > V3_HEADER_LENGTH:
            if len(buf) <= V3_HEADER_LENGTH:
                raise exception.InvalidImage(
                    path=path, reason='truncated qcow2 version 3 header')
            ctype = buf[V3_HEADER_LENGTH]
        else:
            ctype = COMPRESSION_DEFLATE
        rest = rest + (ctype,)
    else:
        raise exception.UnsupportedImage(
            path=path, reason='qcow2 version %d is not supported (only 2 '
            'and 3)' % version)
    return Header._make(fields + tuple(rest))


def _check_header(h, path):
    if not MIN_CLUSTER_BITS <= h.cluster_bits <= MAX_CLUSTER_BITS:
        raise exception.InvalidImage(
            path=path, reason='qcow2 cluster_bits %d outside %d..%d'
            % (h.cluster_bits, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS))
    cluster_size = 1 << h.cluster_bits
    if h.header_length > cluster_size:
        raise exception.InvalidImage(
            path=path, reason='qcow2 header length %d exceeds the cluster '
            'size %d' % (h.header_length, cluster_size))
    if h.size > MAX_VIRTUAL_SIZE:
        raise exception.InvalidImage(
            path=path, reason='qcow2 virtual size %d is absurd (more than '
            '%d bytes)' % (h.size, MAX_VIRTUAL_SIZE))
    if h.crypt_method:
        raise exception.UnsupportedImage(
            path=path, reason='encrypted qcow2 images are not supported '
            '(crypt_method %d)' % h.crypt_method)
    if h.refcount_order > 6:
        raise exception.InvalidImage(
            path=path, reason='qcow2 refcount_order %d is larger than 6'
            % h.refcount_order)
    if h.backing_file_offset:
        if (h.backing_file_offset > cluster_size
                or h.backing_file_size > min(
                    MAX_BACKING_NAME, cluster_size - h.backing_file_offset)):
            raise exception.InvalidImage(
                path=path, reason='qcow2 backing file name (%d bytes at %d) '
                'is too long or outside the first cluster'
                % (h.backing_file_size, h.backing_file_offset))
        if h.backing_file_offset < h.header_length:
            raise exception.InvalidImage(
                path=path, reason='qcow2 backing file name at %d overlaps '
                'the header' % h.backing_file_offset)
    if h.l1_size > MAX_L1_ENTRIES:
        raise exception.InvalidImage(
            path=path, reason='qcow2 L1 table of %d entries is larger than '
            'the limit of %d' % (h.l1_size, MAX_L1_ENTRIES))
    if h.l1_table_offset & (cluster_size - 1):
        raise exception.InvalidImage(
            path=path, reason='qcow2 L1 table offset %d is not cluster '
            'aligned' % h.l1_table_offset)
    # As qemu (qcow2_validate_table): every table starts on a cluster.
    if h.refcount_table_offset & (cluster_size - 1):
        raise exception.InvalidImage(
            path=path, reason='qcow2 refcount table offset %d is not '
            'cluster aligned' % h.refcount_table_offset)
    if h.nb_snapshots and h.snapshots_offset & (cluster_size - 1):
        raise exception.InvalidImage(
            path=path, reason='qcow2 snapshot table offset %d is not '
            'cluster aligned' % h.snapshots_offset)


def _feature_names(raw):
    """{(type, bit): name} from a feature name table extension."""
    names = {}
    for i in range(len(raw) // 48):
        kind, bit = raw[i * 48], raw[i * 48 + 1]
        name = raw[i * 48 + 2:i * 48 + 48].split(b'\0', 1)[0]
        names[(kind, bit)] = name.decode('ascii', 'replace')
    return names


def _backing_hint(name, path):
    """The member name to look for, from the name written in the image."""
    if '\0' in name:
        raise exception.InvalidImage(
            path=path, reason='qcow2 backing file name contains a NUL byte')
    if name.startswith('json:'):
        raise exception.UnsupportedImage(
            path=path, reason='backing file given as json: options is not '
            'supported')
    head = name.split('/', 1)[0]
    if ':' in head:
        # QEMU reads "proto:..." before any slash as a protocol (nbd:,
        # http://, ...): nothing of the kind is looked for here.
        raise exception.UnsupportedImage(
            path=path, reason='backing file %r is a protocol (network) '
            'location, not a file' % name)
    hint = posixpath.basename(name)
    if hint in ('', '.', '..'):
        raise exception.InvalidImage(
            path=path, reason='backing file name %r names no file' % name)
    return hint


def _distinct(tables):
    """{offset: entries} of tables (offset, 64-bit entries): a table given
    several times is counted (and read) once, at its largest size."""
    out = {}
    for offset, entries in tables:
        out[offset] = max(entries, out.get(offset, 0))
    return out


def _check_budget(tables, file_size, path, what):
    """Tables (offset, 64-bit entries) of distinct offsets must fit in the
    file together, as they do in any image qemu wrote (each snapshot and
    bitmap has its own): this bounds what is read to check them."""
    total = sum(entries * 8 for entries in _distinct(tables).values())
    if total > file_size:
        raise exception.InvalidImage(
            path=path, reason='qcow2 %s add up to %d bytes, more than the '
            'file (%d bytes): corrupt' % (what, total, file_size))


def _same_file(a, b):
    sa, sb = os.fstat(a.fd), os.fstat(b.fd)
    return (sa.st_dev, sa.st_ino, a.base) == (sb.st_dev, sb.st_ino, b.base)


class Qcow2Reader(base.LayerReader):
    """Random-access reader of one qcow2 layer."""

    format_name = 'qcow2'

    @property
    def int_offsets_in_place(self):
        """A DATA extent whose ``file_offset`` is an int is stored in
        place at that offset of :attr:`view`: announced ahead of the reads
        (:func:`any2kvm_os.chain.layer_chain.announce`) for a local file,
        which the kernel then reads ahead."""
        return type(self.view) is fileio.FileView

    def __init__(self, view, opener=None):
        super(Qcow2Reader, self).__init__(view, opener)
        path = view.name
        self.file_size = view.size
        head = view.pread(V3_HEADER_LENGTH + 8, 0)
        h = parse_header(head, path)
        _check_header(h, path)
        self.header = h
        self.cluster_bits = h.cluster_bits
        self.cluster_size = cs = 1 << h.cluster_bits
        first = view.pread(cs, 0)
        if len(first) < h.header_length:
            raise exception.InvalidImage(
                path=path, reason='truncated qcow2 header')
        self.backing_format = None
        self.data_file = None
        self.has_bitmaps = False
        self._bitmaps_ext = None
        self.feature_names = {}
        self._read_extensions(first)
        self._check_features()
        self.extended_l2 = bool(h.incompatible_features & INCOMPAT_EXTL2)
        if self.extended_l2 and h.cluster_bits < 14:
            raise exception.InvalidImage(
                path=path, reason='qcow2 extended L2 entries need clusters '
                'of at least 16 KiB (cluster_bits %d)' % h.cluster_bits)
        self.dirty = bool(h.incompatible_features & INCOMPAT_DIRTY)
        if self.dirty:
            LOG.warning('%s: qcow2 dirty bit set (not closed cleanly): its '
                        'refcounts may be stale, its mapping is sound; '
                        'reading it', path)
        self._decompress_fn = self._compression()

        # Backing file.
        self.backing_name = None
        self.backing_hint = None
        if h.backing_file_offset and h.backing_file_size:
            raw = first[h.backing_file_offset:
                        h.backing_file_offset + h.backing_file_size]
            if len(raw) != h.backing_file_size:
                raise exception.InvalidImage(
                    path=path, reason='truncated qcow2 backing file name')
            self.backing_name = raw.decode('utf-8', 'surrogateescape')
            self.backing_hint = _backing_hint(self.backing_name, path)
        elif self.backing_format is not None:
            LOG.debug('%s: backing format %r without a backing file',
                      path, self.backing_format)
        self.parent_format = None
        self._raw = None

        # Tables.
        self.l2_bits = h.cluster_bits - (4 if self.extended_l2 else 3)
        self.l2_entries = 1 << self.l2_bits
        self.l1_shift = h.cluster_bits + self.l2_bits
        self.l1_needed = -(-h.size >> self.l1_shift)
        if h.l1_size < self.l1_needed:
            raise exception.InvalidImage(
                path=path, reason='qcow2 L1 table has %d entries, the '
                'virtual size %d needs %d' % (h.l1_size, h.size,
                                              self.l1_needed))
        if self.l1_needed:
            if h.l1_table_offset < cs:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 L1 table at %d overlaps the '
                    'header' % h.l1_table_offset)
            if h.l1_table_offset + self.l1_needed * 8 > self.file_size:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 L1 table (%d entries at %d) '
                    'lies beyond the end of the file (%d bytes): truncated '
                    'or corrupt' % (self.l1_needed, h.l1_table_offset,
                                    self.file_size))
        self.l1 = _be_array(self.read(h.l1_table_offset,
                                      self.l1_needed * 8))
        self._check_l1()
        self._l2_cache = collections.OrderedDict()
        self._l2_cache_max = max(2, L2_CACHE_BYTES // cs)
        self._cluster_cache = (None, None)
        self.csize_shift = 62 - (h.cluster_bits - 8)
        self.csize_mask = (1 << (h.cluster_bits - 8)) - 1
        self.coffset_mask = (1 << self.csize_shift) - 1
        self._allocated = None
        self._check_tables()
        self._check_whole_sectors()
        if self.backing_hint is not None:
            self._open_backing()

    # -- header -------------------------------------------------------------

    def _read_extensions(self, first):
        h = self.header
        path = self.name
        end = h.backing_file_offset or self.cluster_size
        end = min(end, len(first))
        offset = h.header_length
        count = 0
        while offset < end:
            count += 1
            if count > MAX_EXTENSIONS:
                raise exception.InvalidImage(
                    path=path, reason='more than %d qcow2 header extensions'
                    % MAX_EXTENSIONS)
            if offset + _EXT.size > end:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 header extension at %d is '
                    'truncated' % offset)
            kind, length = _EXT.unpack_from(first, offset)
            offset += _EXT.size
            if kind == EXT_END:
                break
            if length > end - offset:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 header extension 0x%08x of %d '
                    'bytes at %d overruns the header area' % (
                        kind, length, offset))
            data = first[offset:offset + length]
            if kind == EXT_BACKING_FORMAT:
                if length > MAX_BACKING_FORMAT:
                    raise exception.InvalidImage(
                        path=path, reason='qcow2 backing format name of %d '
                        'bytes is too long' % length)
                self.backing_format = data.split(b'\0', 1)[0].decode(
                    'ascii', 'replace')
            elif kind == EXT_FEATURE_TABLE:
                self.feature_names = _feature_names(data)
            elif kind == EXT_DATA_FILE:
                self.data_file = data.split(b'\0', 1)[0].decode(
                    'utf-8', 'replace')
            elif kind == EXT_BITMAPS:
                # Not needed to read the disk; its tables may end the file
                # and are checked to lie inside it.
                self.has_bitmaps = True
                self._bitmaps_ext = data
            # Encryption header (refused through crypt_method) and unknown
            # extensions are not needed to read the disk.
            offset += (length + 7) & ~7

    def _feature(self, bit):
        name = self.feature_names.get((0, bit))
        return 'bit %d (%s)' % (bit, name) if name else 'bit %d' % bit

    def _check_features(self):
        h = self.header
        path = self.name
        inc = h.incompatible_features
        if inc & INCOMPAT_CORRUPT:
            raise exception.InvalidImage(
                path=path, reason='qcow2 image is marked corrupt '
                '(incompatible feature bit 1): repair it with qemu-img check '
                '-r first')
        if inc & INCOMPAT_DATA_FILE or self.data_file is not None:
            raise exception.UnsupportedImage(
                path=path, reason='qcow2 image with an external data file%s: '
                'refused, its data would be read from a path the image '
                'chooses' % (' (%s)' % self.data_file if self.data_file
                             else ''))
        unknown = inc & ~INCOMPAT_KNOWN
        if unknown:
            bits = [self._feature(b) for b in range(64) if unknown >> b & 1]
            raise exception.UnsupportedImage(
                path=path, reason='qcow2 image uses unknown incompatible '
                'features: %s' % ', '.join(bits))
        if bool(inc & INCOMPAT_COMPRESSION) != bool(h.compression_type):
            raise exception.InvalidImage(
                path=path, reason='qcow2 compression type %d disagrees with '
                'incompatible feature bit 3' % h.compression_type)

    def _compression(self):
        ctype = self.header.compression_type
        if ctype == COMPRESSION_DEFLATE:
            return self._inflate
        if ctype == COMPRESSION_ZSTD:
            try:
                import zstandard
            except ImportError:
                raise exception.UnsupportedImage(
                    path=self.name, reason='qcow2 image compressed with zstd: '
                    'the Python module zstandard is needed to read it and '
                    'is not installed (the zstd extra: pip install '
                    'any2kvm_os[zstd])')
            self._zstd = zstandard.ZstdDecompressor()
            return self._unzstd
        raise exception.UnsupportedImage(
            path=self.name, reason='qcow2 compression type %d is not '
            'supported' % ctype)

    def _open_backing(self):
        path = self.name
        fmt = self.backing_format
        if fmt is None or fmt in BACKING_FORMATS:
            self.parent_format = BACKING_FORMATS.get(fmt)
            return
        if fmt != 'raw':
            raise exception.UnsupportedImage(
                path=path, reason='backing file %s has format %r, which '
                'any2kvm does not read' % (self.backing_hint, fmt))
        if self.opener is None:
            raise exception.ChainError(
                path=path, reason='raw backing file %s cannot be opened '
                'here' % self.backing_hint)
        view = self.opener(self.backing_hint)
        if _same_file(view, self.view):
            raise exception.ChainError(
                path=path, reason='qcow2 image is its own raw backing file')
        self._raw = view

    # -- tables ---------------------------------------------------------------

    def _check_l1(self):
        cs = self.cluster_size
        for i, entry in enumerate(self.l1):
            off = entry & OFFSET_MASK
            if not off:
                continue
            if off & (cs - 1):
                raise exception.InvalidImage(
                    path=self.name, reason='qcow2 L1 entry %d: L2 table '
                    'offset %d is not cluster aligned' % (i, off))
            if off + cs > self.file_size:
                raise exception.InvalidImage(
                    path=self.name, reason='qcow2 L1 entry %d points beyond '
                    'the end of the file (L2 table at %d, file of %d bytes): '
                    'truncated or corrupt' % (i, off, self.file_size))

    def _snapshots(self):
        """(L1 table offset, L1 entries) of every internal snapshot; the
        snapshot table and each snapshot's L1 table are checked to lie
        inside the file, cluster aligned.  Sets ``self._snapshot_end``."""
        h = self.header
        path = self.name
        cs = self.cluster_size
        self._snapshot_end = 0
        if not h.nb_snapshots:
            return []
        if h.nb_snapshots > MAX_SNAPSHOTS:
            raise exception.InvalidImage(
                path=path, reason='qcow2 image has %d internal snapshots, '
                'more than the limit of %d' % (h.nb_snapshots,
                                               MAX_SNAPSHOTS))
        if h.snapshots_offset < cs:
            raise exception.InvalidImage(
                path=path, reason='qcow2 snapshot table at %d overlaps the '
                'header' % h.snapshots_offset)
        found = []
        pos = h.snapshots_offset
        for i in range(h.nb_snapshots):
            if pos + _SNAPSHOT.size > self.file_size:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 snapshot table entry %d (at %d) '
                    'lies beyond the end of the file (%d bytes): truncated '
                    'or corrupt' % (i, pos, self.file_size))
            (l1_offset, l1_size, id_size, name_size, _sec, _nsec, _clock,
             _vmstate, extra) = _SNAPSHOT.unpack(self.read(pos,
                                                           _SNAPSHOT.size))
            # Entries are padded to 8 bytes, but for the last (qemu
            # writes the table up to the end of its last name).
            last = pos + _SNAPSHOT.size + extra + id_size + name_size
            pos = (last + 7) & ~7
            if pos - h.snapshots_offset > MAX_SNAPSHOT_TABLE:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 snapshot table is larger than '
                    'the limit of %d bytes' % MAX_SNAPSHOT_TABLE)
            if l1_size > MAX_L1_ENTRIES or l1_offset & (cs - 1) or (
                    l1_size and l1_offset < cs):
                raise exception.InvalidImage(
                    path=path, reason='qcow2 snapshot %d: L1 table of %d '
                    'entries at %d is too large, not cluster aligned or '
                    'overlaps the header' % (i, l1_size, l1_offset))
            if l1_offset + l1_size * 8 > self.file_size:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 snapshot %d: L1 table (%d '
                    'entries at %d) lies beyond the end of the file (%d '
                    'bytes): truncated or corrupt' % (
                        i, l1_size, l1_offset, self.file_size))
            found.append((l1_offset, l1_size))
        _check_budget(found, self.file_size, path, 'snapshot L1 tables')
        if last > self.file_size:
            raise exception.InvalidImage(
                path=path, reason='qcow2 snapshot table (%d bytes at %d) '
                'runs beyond the end of the file (%d bytes): truncated or '
                'corrupt' % (last - h.snapshots_offset, h.snapshots_offset,
                             self.file_size))
        self._snapshot_end = last
        return found

    def _bitmap_tables(self):
        """(bitmap table offset, entries) of every persistent bitmap; the
        bitmap directory and each table are checked to lie inside the
        file, cluster aligned.  Sets ``self._bitmap_dir_end``."""
        path = self.name
        cs = self.cluster_size
        self._bitmap_dir_end = 0
        raw = self._bitmaps_ext
        if raw is None:
            return []
        if len(raw) < _BITMAPS_EXT.size:
            raise exception.InvalidImage(
                path=path, reason='qcow2 bitmaps extension of %d bytes is '
                'truncated' % len(raw))
        count, _reserved, dir_size, dir_offset = _BITMAPS_EXT.unpack_from(
            raw, 0)
        if not count or not self.header.autoclear_features & AUTOCLEAR_BITMAPS:
            # Without the autoclear bit (an older writer touched the
            # image) qemu ignores the extension: its tables may be stale.
            return []
        if count > MAX_BITMAPS:
            raise exception.InvalidImage(
                path=path, reason='qcow2 image has %d bitmaps, more than the '
                'limit of %d' % (count, MAX_BITMAPS))
        if (dir_offset & (cs - 1) or dir_offset < cs
                or dir_size > MAX_BITMAP_DIRECTORY
                or dir_offset + dir_size > self.file_size):
            raise exception.InvalidImage(
                path=path, reason='qcow2 bitmap directory (%d bytes at %d) '
                'is not cluster aligned, too large or beyond the end of the '
                'file (%d bytes): truncated or corrupt' % (
                    dir_size, dir_offset, self.file_size))
        directory = self.read(dir_offset, dir_size)
        found = []
        pos = 0
        for i in range(count):
            if pos + _BITMAP_ENTRY.size > dir_size:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 bitmap directory of %d bytes '
                    'ends inside entry %d of %d' % (dir_size, i, count))
            (offset, entries, _flags, _kind, _gran, name_size,
             extra) = _BITMAP_ENTRY.unpack_from(directory, pos)
            pos += (_BITMAP_ENTRY.size + extra + name_size + 7) & ~7
            if (offset & (cs - 1) or offset < cs
                    or entries > MAX_L1_ENTRIES
                    or offset + entries * 8 > self.file_size):
                raise exception.InvalidImage(
                    path=path, reason='qcow2 bitmap %d: table of %d entries '
                    'at %d is not cluster aligned, too large or beyond the '
                    'end of the file (%d bytes): truncated or corrupt' % (
                        i, entries, offset, self.file_size))
            found.append((offset, entries))
        _check_budget(found, self.file_size, path, 'bitmap tables')
        if pos > dir_size:
            raise exception.InvalidImage(
                path=path, reason='qcow2 bitmap directory of %d bytes ends '
                'inside its last entry' % dir_size)
        self._bitmap_dir_end = dir_offset + dir_size
        return found

    def _check_tables(self):
        """Every table the disk does not need (snapshots, bitmaps, the
        refcount table) still lies inside the file, cluster aligned: a
        file cut short or shifted is refused even when the bytes the
        active disk needs happen to survive."""
        h = self.header
        cs = self.cluster_size
        if h.refcount_table_clusters > MAX_REFCOUNT_TABLE // cs or (
                h.refcount_table_offset + h.refcount_table_clusters * cs
                > self.file_size):
            raise exception.InvalidImage(
                path=self.name, reason='qcow2 refcount table (%d clusters at '
                '%d) is too large or lies beyond the end of the file (%d '
                'bytes): truncated or corrupt' % (
                    h.refcount_table_clusters, h.refcount_table_offset,
                    self.file_size))
        self._snapshot_l1s = self._snapshots()
        self._bitmap_list = self._bitmap_tables()

    def _table(self, offset, entries):
        """A table of ``entries`` 64-bit entries at ``offset`` (checked in
        bounds by the caller): an array."""
        return _be_array(self.read(offset, entries * 8))

    def _structure_end(self):
        """Where the last structure any table references ends: every L1
        table (active and of each snapshot), its L2 tables and clusters,
        the refcount table and blocks, the snapshot table, the bitmap
        directory, tables and data.  Each is checked to lie inside the
        file; a compressed cluster counts up to its last sector."""
        h = self.header
        cs = self.cluster_size
        size = self.file_size
        path = self.name
        end = max(cs, h.l1_table_offset + h.l1_size * 8,
                  h.refcount_table_offset + h.refcount_table_clusters * cs,
                  self._snapshot_end, self._bitmap_dir_end)

        def cluster(off, what):
            if off & (cs - 1) or off + cs > size:
                raise exception.InvalidImage(
                    path=path, reason='qcow2 %s at %d is not cluster aligned '
                    'or lies beyond the end of the file (%d bytes): '
                    'truncated or corrupt' % (what, off, size))
            return off + cs

        # The refcount blocks.
        for entry in self._table(h.refcount_table_offset,
                                 h.refcount_table_clusters * cs // 8):
            if entry:
                end = max(end, cluster(entry & ~511, 'refcount block'))
        # The bitmaps' data clusters.
        for offset, entries in _distinct(self._bitmap_list).items():
            end = max(end, offset + entries * 8)
            for entry in self._table(offset, entries):
                if entry & OFFSET_MASK:
                    end = max(end, cluster(entry & OFFSET_MASK,
                                           'bitmap data cluster'))
        # Every L1 table: the active one whole, then each snapshot's.
        if h.l1_table_offset + h.l1_size * 8 > size:
            raise exception.InvalidImage(
                path=path, reason='qcow2 L1 table (%d entries at %d) lies '
                'beyond the end of the file (%d bytes): truncated or '
                'corrupt' % (h.l1_size, h.l1_table_offset, size))
        l1s = [(h.l1_table_offset, h.l1_size)]
        l1s += self._snapshot_l1s
        step = 2 if self.extended_l2 else 1
        seen = set()
        for offset, entries in _distinct(l1s).items():
            end = max(end, offset + entries * 8)
            for l1_entry in self._table(offset, entries):
                off = l1_entry & OFFSET_MASK
                if not off or off in seen:
                    continue
                seen.add(off)
                end = max(end, cluster(off, 'L2 table'))
                table = _be_array(self.read(off, cs))
                for entry in table[::step]:
                    if entry & L2_COMPRESSED:
                        host = entry & self.coffset_mask
                        sectors = ((entry >> self.csize_shift)
                                   & self.csize_mask) + 1
                        end = max(end, (host & ~511) + sectors * 512)
                    elif entry & OFFSET_MASK:
                        end = max(end, (entry & OFFSET_MASK) + cs)
        return end

    def _check_whole_sectors(self):
        """Refuse a file that runs past the end of its last structure by
        bytes no qcow2 writer leaves there.

        Every qcow2 structure starts on a cluster boundary; data clusters,
        L2 tables, refcount blocks and bitmap data fill whole clusters.
        Only a table written last (an L1 table of either the disk or a
        snapshot, the snapshot table, the bitmap directory or a bitmap
        table: all multiples of 8 bytes, unpadded) or a compressed cluster
        (packed at a byte offset) may end the file inside a sector.
        Tables and data sit at absolute offsets, so a byte inserted into
        the data is otherwise read shifted, with exit 0, as qemu-img does
        (``qemu-img check`` finds nothing); a byte cut leaves the last
        structure past the end of the file.

        What lies past every structure the tables reference is accepted
        only as a table qemu freed and did not cut off (qemu never
        shrinks the file; a deleted snapshot's table, an old bitmap
        directory, zeroed when discarded): in clusters of its own, and
        either a multiple of 8 bytes long (tables of 8-byte entries) or
        at least one snapshot table entry long (qemu leaves the last
        entry of a snapshot table unpadded).  Not detected
        (doc/source/formats.rst): whole sectors inserted or removed;
        anything inserted or removed in a file that ends in such freed
        space.  Every table is read, only for a file whose length is not
        whole sectors.
        """
        size = self.file_size
        if not size % 512:
            return
        end = self._structure_end()
        if size <= end:
            return
        tail = size & ~(self.cluster_size - 1)
        if tail >= end and (not (size - tail) % 8
                            or size - tail >= _SNAPSHOT.size):
            LOG.debug('%s: qcow2 file ends with %d bytes past its last '
                      'structure (at %d): space a deleted table left',
                      self.name, size - end, end)
            return
        raise exception.InvalidImage(
            path=self.name, reason='qcow2 file of %d bytes is not whole '
            '512-byte sectors and runs %d bytes past its last structure '
            '(at %d), where every qcow2 structure is cluster aligned: a '
            'byte was inserted, or bytes appended' % (size, size - end, end))

    def _l2(self, index):
        """The L2 table of L1 entry ``index`` (an array), or None."""
        table = self._l2_cache.get(index)
        if table is not None:
            self._l2_cache.move_to_end(index)
            return table
        off = self.l1[index] & OFFSET_MASK
        if not off:
            return None
        table = _be_array(self.read(off, self.cluster_size))
        self._l2_cache[index] = table
        if len(self._l2_cache) > self._l2_cache_max:
            self._l2_cache.popitem(last=False)
        return table

    # -- identity -----------------------------------------------------------

    @classmethod
    def probe(cls, view):
        return view.pread(4, 0) == MAGIC

    @property
    def virtual_size(self):
        return self.header.size

    @property
    def identity(self):
        # qcow2 has no unique id: a child names its backing file.
        return None

    @property
    def parent_ref(self):
        if self.backing_hint is None or self._raw is not None:
            return None
        return base.ParentRef(None, (self.backing_hint,))

    @property
    def subformat(self):
        return 'v%d' % self.header.version

    def allocated_bytes(self):
        if self._allocated is None:
            self._allocated = sum(
                e.length for e in self._layer_status(0, self.virtual_size)
                if e.kind == ext.DATA)
        return self._allocated

    # -- block status ---------------------------------------------------------

    def block_status(self, offset, length):
        if self._raw is None:
            yield from self._layer_status(offset, length)
            return
        raw_size = self._raw.size
        for e in self._layer_status(offset, length):
            if e.kind != ext.UNALLOCATED:
                yield e
                continue
            mid = min(e.end, max(e.offset, raw_size))
            if mid > e.offset:
                yield ext.extent(ext.DATA, e.offset, mid - e.offset,
                                 (RAW_BACKING, e.offset))
            if mid < e.end:
                yield ext.extent(ext.ZERO, mid, e.end - mid)

    def _layer_status(self, offset, length):
        """This file's own answer: UNALLOCATED where the backing file is
        asked (the raw backing file included)."""
        end = min(offset + length, self.header.size)
        pos = offset
        run = None
        cb = self.cluster_bits
        cs = self.cluster_size
        while pos < end:
            index = pos >> self.l1_shift
            l2_start = index << self.l1_shift
            stop = min(end, l2_start + (1 << self.l1_shift))
            table = self._l2(index)
            if table is None:
                pieces = ((ext.UNALLOCATED, pos, stop - pos, None),)
                pos = stop
            else:
                pieces = []
                while pos < stop:
                    i = (pos - l2_start) >> cb
                    cstart = l2_start + (i << cb)
                    if pos == cstart and not self.extended_l2:
                        # Whole clusters: one piece per run of entries.
                        n = (stop - cstart) >> cb
                        if n:
                            pos = self._runs(table, i, i + n, l2_start,
                                             pieces)
                            continue
                    cend = min(stop, cstart + cs)
                    pieces.extend(self._cluster(table, i, cstart, pos, cend))
                    pos = cend
            for kind, a, n, fo in pieces:
                if run is not None:
                    rk, ra, rn, rfo = run
                    if rk == kind and (
                            kind != ext.DATA
                            or (isinstance(rfo, int) and isinstance(fo, int)
                                and rfo + rn == fo)):
                        run = (rk, ra, rn + n, rfo)
                        continue
                    yield ext.extent(rk, ra, rn, rfo)
                run = (kind, a, n, fo)
        if run is not None:
            yield ext.extent(run[0], run[1], run[2], run[3])

    def _runs(self, table, i, n, l2_start, pieces):
        """Append to ``pieces`` the whole clusters ``i`` to ``n - 1`` of a
        standard L2 table starting at ``l2_start``, one piece per run of
        entries of one kind (data clusters stored one after the other in
        the file make one run); return where they end on the disk.

        The same pieces as :meth:`_cluster` gives cluster by cluster,
        merged, and the same checks, found in the same order: a run of
        data clusters is checked at its first cluster (alignment, which
        then holds for all) and at its last (the end of the file: the
        earlier ones end before the last starts); when the last fails, the
        first failing cluster of the run is reported, as one by one.
        This loop runs once per cluster of the disk (16384 per GiB at
        the default 64 KiB), so it does no more per entry than compare
        it."""
        cb = self.cluster_bits
        cs = self.cluster_size
        special = L2_COMPRESSED | L2_ZERO
        blank = special | OFFSET_MASK
        append = pieces.append
        while i < n:
            e = table[i]
            cstart = l2_start + (i << cb)
            j = i + 1
            if e & L2_COMPRESSED:
                pieces.extend(self._cluster(table, i, cstart, cstart,
                                            cstart + cs))
                i = j
                continue
            if e & L2_ZERO:
                while j < n and table[j] & special == L2_ZERO:
                    j += 1
                append((ext.ZERO, cstart, (j - i) << cb, None))
            elif not e & OFFSET_MASK:
                while j < n and not table[j] & blank:
                    j += 1
                append((ext.UNALLOCATED, cstart, (j - i) << cb, None))
            else:
                host = e & OFFSET_MASK
                self._check_data(host, cstart)
                expect = e + cs
                while j < n and table[j] == expect:
                    expect += cs
                    j += 1
                if j - 1 > i:
                    try:
                        self._check_data(host + ((j - 1 - i) << cb),
                                         l2_start + ((j - 1) << cb))
                    except exception.InvalidImage:
                        for k in range(i + 1, j):
                            self._check_data(host + ((k - i) << cb),
                                             l2_start + (k << cb))
                        raise
                append((ext.DATA, cstart, (j - i) << cb, host))
            i = j
        return l2_start + (n << cb)

    def _cluster(self, table, i, cstart, pos, cend):
        """Pieces (kind, offset, length, file_offset) of [pos, cend), all
        in cluster ``i`` of an L2 table starting at ``cstart``."""
        if self.extended_l2:
            entry = table[2 * i]
            bitmap = table[2 * i + 1]
        else:
            entry = table[i]
            bitmap = None
        if entry & L2_COMPRESSED:
            host = entry & self.coffset_mask
            sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
            csize = sectors * 512 - (host & 511)
            if host < self.cluster_size or host >= self.file_size:
                raise exception.InvalidImage(
                    path=self.name, reason='qcow2 compressed cluster at '
                    'virtual offset %d is stored at %d, outside the file '
                    '(%d bytes): truncated or corrupt' % (
                        cstart, host, self.file_size))
            return [(ext.DATA, pos, cend - pos,
                     (COMPRESSED, host, csize, cstart))]
        host = entry & OFFSET_MASK
        if bitmap is None:
            if entry & L2_ZERO:
                return [(ext.ZERO, pos, cend - pos, None)]
            if not host:
                return [(ext.UNALLOCATED, pos, cend - pos, None)]
            self._check_data(host, cstart)
            return [(ext.DATA, pos, cend - pos, host + (pos - cstart))]
        return self._subclusters(entry, bitmap, host, cstart, pos, cend)

    def _check_data(self, host, cstart, used=None):
        """The data cluster of virtual ``cstart`` stored at ``host`` is
        aligned and its first ``used`` bytes (default: all the disk uses of
        it) lie inside the file."""
        if host & (self.cluster_size - 1):
            raise exception.InvalidImage(
                path=self.name, reason='qcow2 data cluster at virtual offset '
                '%d is stored at unaligned offset %d: corrupt'
                % (cstart, host))
        if used is None:
            used = self.cluster_size
        used = min(used, self.header.size - cstart)
        if host + used > self.file_size:
            raise exception.InvalidImage(
                path=self.name, reason='qcow2 data cluster at virtual offset '
                '%d is stored at %d, beyond the end of the file (%d bytes): '
                'truncated or corrupt' % (cstart, host, self.file_size))

    def _subclusters(self, entry, bitmap, host, cstart, pos, cend):
        alloc = bitmap & 0xFFFFFFFF
        zero = bitmap >> 32
        if host:
            if alloc & zero:
                raise exception.InvalidImage(
                    path=self.name, reason='qcow2 cluster at virtual offset '
                    '%d has subclusters both allocated and zero: corrupt'
                    % cstart)
            if alloc & ~zero:
                # Only up to the last allocated subcluster: qemu writes no
                # more of a cluster than it allocates, so the last cluster
                # of a file may end there.
                last = (alloc & ~zero).bit_length()
                self._check_data(host, cstart,
                                 last << (self.cluster_bits - 5))
        elif alloc:
            raise exception.InvalidImage(
                path=self.name, reason='qcow2 cluster at virtual offset %d '
                'has allocated subclusters but no host cluster: corrupt'
                % cstart)
        scb = self.cluster_bits - 5
        out = []
        first = (pos - cstart) >> scb
        last = (cend - 1 - cstart) >> scb
        for sc in range(first, last + 1):
            a = max(pos, cstart + (sc << scb))
            b = min(cend, cstart + ((sc + 1) << scb))
            if zero >> sc & 1:
                out.append((ext.ZERO, a, b - a, None))
            elif alloc >> sc & 1:
                out.append((ext.DATA, a, b - a, host + (a - cstart)))
            else:
                out.append((ext.UNALLOCATED, a, b - a, None))
        return out

    # -- data -----------------------------------------------------------------

    def read_extent(self, extent, skip, length):
        token = extent.file_offset
        if isinstance(token, int):
            return self.read(token + skip, length)
        if token[0] == RAW_BACKING:
            start = token[1] + skip
            data = self._raw.pread(length, start)
            if len(data) != length:
                raise exception.InvalidImage(
                    path=self._raw.name, reason='raw backing file shrank '
                    'while being read')
            return data
        _, host, csize, cstart = token
        cluster = self._decompressed(host, csize, cstart)
        within = extent.offset + skip - cstart
        return cluster[within:within + length]

    def read_extent_into(self, extent, skip, buf):
        """:meth:`read_extent` into ``buf``: stored clusters are read in
        place, a compressed cluster's bytes are copied straight in."""
        token = extent.file_offset
        if isinstance(token, int) and type(self.view) is fileio.FileView:
            start = token + skip
            base.check_read(self.name, self.view.preadinto(buf, start),
                            len(buf), start)
            return
        if not isinstance(token, int) and token[0] != RAW_BACKING:
            _, host, csize, cstart = token
            cluster = self._decompressed(host, csize, cstart)
            within = extent.offset + skip - cstart
            buf[:] = memoryview(cluster)[within:within + len(buf)]
            return
        super(Qcow2Reader, self).read_extent_into(extent, skip, buf)

    def _decompressed(self, host, csize, cstart):
        cached_host, data = self._cluster_cache
        if cached_host == host:
            return data
        # The last compressed cluster may end inside its last sector, past
        # the end of the file (QEMU reads zeros there).
        raw = self.view.pread(min(csize, self.file_size - host), host)
        data = self._decompress_fn(raw)
        if data is None or len(data) != self.cluster_size:
            raise exception.InvalidImage(
                path=self.name, reason='qcow2 compressed cluster at virtual '
                'offset %d (stored at %d) does not decompress to %d bytes: '
                'corrupt' % (cstart, host, self.cluster_size))
        self._cluster_cache = (host, data)
        return data

    def _inflate(self, raw):
        # As QEMU: a raw deflate stream with a 4 KiB window that fills the
        # cluster; bytes after it (sector padding) are ignored.
        d = zlib.decompressobj(-12)
        try:
            return d.decompress(raw, self.cluster_size)
        except zlib.error:
            return None

    def _unzstd(self, raw):
        # As QEMU: one or more zstd frames until the cluster is full.
        import zstandard
        out = []
        have = 0
        while have < self.cluster_size and raw:
            d = self._zstd.decompressobj()
            try:
                chunk = d.decompress(raw)
            except zstandard.ZstdError:
                return None
            if not chunk:
                return None
            out.append(chunk)
            have += len(chunk)
            raw = d.unused_data
        return b''.join(out)
