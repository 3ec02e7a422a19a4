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
"""The contract every disk format reader fulfils.

A reader describes ONE layer of a disk.  It answers, for any range of the
virtual disk, which parts this layer stores (DATA, with the position in its
file), which it knows to be zero (ZERO) and which it leaves to its parent
(UNALLOCATED).  It never opens a path: it receives a file view from its
container, and it never follows a path written inside the image - the
chain resolver does that, among the files of the same directory or archive.
"""

import abc
import collections
import struct

from any2kvm_os import extents as ext
from any2kvm_os import fileio


def basename_hint(path):
    """Last component of a Windows, URL or POSIX path written inside an
    image ('' if none): only ever used as a hint to look for a file of the
    same container, never opened as a path."""
    for sep in ('\\', '/'):
        path = path.rsplit(sep, 1)[-1]
    return path.strip('\x00').strip()


#: Each byte with its bits in the reverse order (a VHD bitmap, bit 7
#: first, read as a VHDX one, bit 0 first).
_REVERSED_BITS = bytes(int('{:08b}'.format(i)[::-1], 2) for i in range(256))
_ALL_64 = (1 << 64) - 1


def bitmap_runs(bitmap, first, count, msb_first):
    """Runs of (start_sector, length, is_set) for sectors [first,
    first + count) of a sector bitmap.

    ``msb_first``: bit 7 of byte 0 is sector 0 (VHD); otherwise bit 0 is
    (VHDX).  The bitmap is taken as one integer (bit i: sector i; a VHD's
    bytes are bit-reversed first, ``bytes.translate``), so an all-set or
    all-clear range is one comparison; otherwise it is scanned in 64-bit
    words, a whole-0/whole-1 word at a time and runs inside a word by
    counting trailing bits (``int.bit_length``).  This runs once per block
    read: it used to loop per byte in Python.
    """
    if count <= 0:
        return []
    end = first + count
    b0 = first >> 3
    seg = bytes(bitmap[b0:(end + 7) >> 3])
    if msb_first:
        seg = seg.translate(_REVERSED_BITS)
    full = (1 << count) - 1
    x = (int.from_bytes(seg, 'little') >> (first & 7)) & full
    if x == 0:
        return [(first, count, False)]
    if x == full:
        return [(first, count, True)]
    seg += bytes(-len(seg) % 8)
    runs = []
    append = runs.append
    cur_state = None
    cur_start = base = b0 << 3
    for w in struct.unpack('<%dQ' % (len(seg) >> 3), seg):
        if w == 0 or w == _ALL_64:
            state = w != 0
            if state is not cur_state:
                if cur_state is not None:
                    append((cur_start, base - cur_start, cur_state))
                cur_state = state
                cur_start = base
        else:
            p = 0
            while p < 64:
                if w & 1:
                    # trailing ones
                    n = (w ^ (w + 1)).bit_length() - 1
                    state = True
                else:
                    # trailing zeros (the rest of the word when none is set)
                    n = ((w & -w).bit_length() - 1) if w else 64 - p
                    state = False
                if state is not cur_state:
                    if cur_state is not None:
                        append((cur_start, base + p - cur_start, cur_state))
                    cur_state = state
                    cur_start = base + p
                w >>= n
                p += n
        base += 64
    append((cur_start, base - cur_start, cur_state))
    # The words cover whole bytes: cut the runs to [first, end).
    clipped = []
    for s, n, state in runs:
        a = s if s > first else first
        b = s + n
        if b > end:
            b = end
        if a < b:
            clipped.append((a, b - a, state))
    return clipped


def bitmap_extents(bitmap, msb_first, sector, block_start, data_start,
                   pos, stop):
    """Yield the extents of ``[pos, stop)`` inside one block of a layer
    that keeps a sector bitmap (VHD differencing, VHDX partially present).

    The block starts at ``block_start`` on the virtual disk and its data
    at ``data_start`` in the file; ``bitmap`` has a bit per ``sector``
    bytes (see :func:`bitmap_runs` for ``msb_first``).  A set bit is DATA
    at the same offset in the block's data, a clear one UNALLOCATED (the
    parent's).
    """
    first = (pos - block_start) // sector
    last = -(-(stop - block_start) // sector)
    make = ext.extent
    for s, n, is_set in bitmap_runs(bitmap, first, last - first, msb_first):
        a = block_start + s * sector
        if a < pos:
            a = pos
        b = block_start + (s + n) * sector
        if b > stop:
            b = stop
        if is_set:
            yield make(ext.DATA, a, b - a, data_start + (a - block_start))
        else:
            yield make(ext.UNALLOCATED, a, b - a)


def check_read(name, got, length, file_offset):
    """The one short-read check of a layer's stored bytes: raise
    :class:`~any2kvm_os.exception.InvalidImage` (``name`` truncated)
    unless ``got`` bytes were read of the ``length`` asked for at
    ``file_offset`` (:meth:`LayerReader.read`, its in-place
    :meth:`LayerReader.read_extent_into`, a reader process's reads)."""
    if got != length:
        from any2kvm_os import exception
        raise exception.InvalidImage(
            path=name, reason='truncated: expected %d bytes at offset %d, '
            'got %d' % (length, file_offset, got))


ParentRef = collections.namedtuple('ParentRef', ['id', 'name_hints'])
ParentRef.__doc__ = """What a child says of its parent.

``id`` is the parent's unique id (a UUID string); ``name_hints`` are
base names taken from the image (locators, parent name), hints only.
Formats without ids (qcow2) give ``id=None``: the parent is then the
member named by the first hint that exists in the same container.
"""


class LayerReader(object, metaclass=abc.ABCMeta):
    """One layer of a disk image, read from a file view."""

    #: Name of the format (the stevedore entry point name).
    format_name = None

    def __init__(self, view, opener=None):
        self.view = view
        #: ``opener(name)`` returns a :class:`FileView` of another file of
        #: the same directory or archive (a VMDK extent, say) or raises
        #: :class:`any2kvm_os.exception.ChainError`; it refuses paths, links
        #: and anything outside the container.  None: no siblings.
        self.opener = opener

    @property
    def name(self):
        return self.view.name

    @classmethod
    @abc.abstractmethod
    def probe(cls, view):
        """Return True when ``view`` holds this format (by content)."""

    @property
    @abc.abstractmethod
    def virtual_size(self):
        """Size in bytes of the disk this layer describes."""

    @property
    @abc.abstractmethod
    def identity(self):
        """The layer's unique id (a UUID string) or None."""

    @property
    @abc.abstractmethod
    def parent_ref(self):
        """A :class:`ParentRef` or None for a layer without parent."""

    @property
    def subformat(self):
        return None

    @property
    def creator(self):
        return None

    @abc.abstractmethod
    def block_status(self, offset, length):
        """Yield :class:`any2kvm_os.extents.Extent` runs for this layer.

        The runs cover ``[offset, offset + length)`` clipped to the
        virtual size, in order, without gaps.
        """

    def allocated_bytes(self):
        """How many bytes of the virtual disk this layer stores: by default
        the DATA runs of :meth:`block_status` over the whole disk (computed
        once); formats with a cheaper count override it."""
        total = getattr(self, '_allocated_total', None)
        if total is None:
            total = sum(e.length for e in self.block_status(
                0, self.virtual_size) if e.kind == ext.DATA)
            self._allocated_total = total
        return total

    def read_extent(self, extent, skip, length):
        """Bytes ``[extent.offset + skip, +length)`` of a DATA extent this
        reader reported.  The default reads ``extent.file_offset`` linearly
        from :attr:`view`; formats with compressed or scattered data
        override it (``file_offset`` is then whatever token they chose)."""
        return self.read(extent.file_offset + skip, length)

    def reads_in_place(self):
        """Whether a DATA extent's bytes are the view's bytes at its
        ``file_offset``, read as they are: this reader overrides none of
        :meth:`read_extent`, :meth:`read` and :meth:`_pread`."""
        cls = type(self)
        return (cls.read_extent is LayerReader.read_extent and
                cls.read is LayerReader.read and
                cls._pread is LayerReader._pread)

    def read_extent_into(self, extent, skip, buf):
        """Fill ``buf`` (a writable memoryview) with bytes ``[extent.offset
        + skip, + len(buf))`` of a DATA extent this reader reported, as
        :meth:`read_extent` returns them.  A reader that reads its DATA in
        place from a plain local file reads straight into ``buf`` (no
        buffer allocated per read); every other one copies what
        :meth:`read_extent` returns."""
        length = len(buf)
        if self.reads_in_place() and type(self.view) is fileio.FileView:
            got = self.view.preadinto(buf, extent.file_offset + skip)
            check_read(self.name, got, length, extent.file_offset + skip)
            return
        data = self.read_extent(extent, skip, length)
        if len(data) != length:
            from any2kvm_os import exception
            raise exception.InvalidImage(
                path=self.name, reason='read %d bytes of a DATA run where '
                '%d were expected' % (len(data), length))
        buf[:] = data

    def close(self):
        """Release sibling views this reader opened (the container closes
        the main view)."""

    def _pread(self, length, offset):
        """The file's bytes as this reader sees them (VHDX lays its
        replayed log over them)."""
        return self.view.pread(length, offset)

    def read(self, file_offset, length):
        """Read stored bytes (the ``file_offset`` of a DATA extent)."""
        data = self._pread(length, file_offset)
        check_read(self.name, len(data), length, file_offset)
        return data
