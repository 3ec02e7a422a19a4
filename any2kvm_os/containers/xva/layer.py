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

"""One disk of a plain XVA, read in place: the layer reader.

:class:`ChunkIndex` holds where the present chunks of one VDI lie in the
archive (built from the tar headers, see :mod:`.archive`);
:class:`XvaLayer` reads the disk from them, verifying each chunk's
checksum before any of its bytes is used.  Chunks left out read as zeros.
"""

import array
import bisect

from any2kvm_os.containers.xva import layout
from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os.formats import base as fbase

FORMAT = 'xva'
CHUNK = layout.CHUNK
_ALGO_CODE = {layout.SHA1: 1, layout.XXH64: 2}
_CODE_ALGO = {1: layout.SHA1, 2: layout.XXH64}


class ChunkIndex(object):
    """The present chunks of one VDI, in disk order."""

    def __init__(self):
        self.slots = array.array('q')      # chunk position // CHUNK
        self.data = array.array('q')       # archive offset of the data
        self.sums = array.array('q')       # archive offset of the checksum
        self.algos = bytearray()
        self.allocated = 0
        self.kinds = set()

    def add(self, chunk, data_offset, sum_offset, algo):
        self.slots.append(chunk.pos // CHUNK)
        self.data.append(data_offset)
        self.sums.append(sum_offset)
        self.algos.append(_ALGO_CODE[algo])
        self.allocated += chunk.length
        self.kinds.add(algo)


def subformat(kinds):
    """The subformat of a VDI whose checksums are of these kinds."""
    return '+'.join(sorted(kinds)) or None


class XvaLayer(fbase.LayerReader):
    """One VDI of a plain XVA tar: a base layer (no parent) whose data
    lives in many chunk members, read in place.

    ``block_status`` answers from the chunk index (DATA for a chunk present,
    UNALLOCATED for one left out: zeros, as the layer is a base); DATA
    extents carry their disk offset as ``file_offset`` token and
    :meth:`read_extent` reads whole chunks and verifies their checksums
    before returning any byte.
    """

    format_name = FORMAT

    def __init__(self, view, archive, vdi, index, creator, chunk_names):
        super(XvaLayer, self).__init__(view)
        self.archive = archive
        self.vdi = vdi
        self._index = index
        self._creator = creator
        self._chunk_names = chunk_names
        self._cached = (None, None)

    @classmethod
    def probe(cls, view):
        return False    # never detected on its own: see archive.open_xva

    @property
    def virtual_size(self):
        return self.vdi.virtual_size

    @property
    def identity(self):
        return self.vdi.uuid

    @property
    def parent_ref(self):
        return None

    @property
    def subformat(self):
        return subformat(self._index.kinds)

    @property
    def creator(self):
        return self._creator

    def allocated_bytes(self):
        return self._index.allocated

    def _chunk_len(self, slot):
        return min(CHUNK, self.vdi.virtual_size - slot * CHUNK)

    def block_status(self, offset, length):
        size = self.vdi.virtual_size
        end = min(offset + length, size)
        slots = self._index.slots
        i = bisect.bisect_left(slots, offset // CHUNK)
        pos = offset
        out = []
        while pos < end:
            start = slots[i] * CHUNK if i < len(slots) else end
            if start > pos:
                stop = min(start, end)
                out.append(ext.extent(ext.UNALLOCATED, pos, stop - pos))
                pos = stop
                continue
            stop = min(start + self._chunk_len(slots[i]), end)
            out.append(ext.extent(ext.DATA, pos, stop - pos,
                                  file_offset=pos))
            pos = stop
            i += 1
        return ext.merge(out)

    def _chunk(self, slot):
        """The verified bytes of the chunk at ``slot``."""
        if self._cached[0] == slot:
            return self._cached[1]
        idx = self._index
        i = bisect.bisect_left(idx.slots, slot)
        if i >= len(idx.slots) or idx.slots[i] != slot:
            raise exception.InvalidImage(
                path=self.name, reason='no chunk stored at disk offset %d'
                % (slot * CHUNK))
        length = self._chunk_len(slot)
        algo = _CODE_ALGO[idx.algos[i]]
        chunk = layout.Chunk(self.vdi.ref, None, slot * CHUNK, length,
                             self._chunk_names(self.vdi.ref, slot))
        data = self.read(idx.data[i], length)
        stored = self.read(idx.sums[i], layout.DIGEST_CHARS[algo])
        layout.verify_chunk(self.archive, chunk, algo, stored, data)
        self._cached = (slot, data)
        return data

    def read_extent(self, extent, skip, length):
        pos = extent.offset + skip
        end = pos + length
        parts = []
        while pos < end:
            slot = pos // CHUNK
            data = self._chunk(slot)
            lo = pos - slot * CHUNK
            n = min(len(data) - lo, end - pos)
            parts.append(data if (lo == 0 and n == len(data))
                         else data[lo:lo + n])
            pos += n
        return parts[0] if len(parts) == 1 else b''.join(parts)
