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

from any2kvm_os import extents as ext


def basename_hint(path):
    """Last component of a Windows, URL or POSIX path written inside an
    image ('' if none): only ever used as a hint to look for a file of the
    same container, never opened as a path."""
    for sep in ('\\', '/'):
        path = path.rsplit(sep, 1)[-1]
    return path.strip('\x00').strip()


def bitmap_runs(bitmap, first, count, msb_first):
    """Runs of (start_sector, length, is_set) for sectors [first,
    first + count) of a sector bitmap.

    ``msb_first``: bit 7 of byte 0 is sector 0 (VHD); otherwise bit 0 is
    (VHDX).  Whole 0x00/0xFF bytes are taken eight sectors at a time.
    """
    runs = []
    cur_state = None
    cur_start = first
    s = first
    end = first + count
    while s < end:
        byte = bitmap[s >> 3]
        if s & 7 == 0 and s + 8 <= end and byte in (0, 0xFF):
            state = byte == 0xFF
            n = 8
        else:
            bit = (0x80 >> (s & 7)) if msb_first else (1 << (s & 7))
            state = bool(byte & bit)
            n = 1
        if state != cur_state:
            if cur_state is not None:
                runs.append((cur_start, s - cur_start, cur_state))
            cur_state = state
            cur_start = s
        s += n
    if cur_state is not None:
        runs.append((cur_start, end - cur_start, cur_state))
    return runs


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
        if len(data) != length:
            from any2kvm_os import exception
            raise exception.InvalidImage(
                path=self.name,
                reason='truncated: expected %d bytes at offset %d, got %d'
                % (length, file_offset, len(data)))
        return data
