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

"""Extents: what a layer (or a whole chain) holds for a range of the disk.

Every reader answers, for its own layer only, which ranges are

* DATA - stored in this layer, at file_offset in the layer's file;
* ZERO - known to read as zeros (this hides any parent data);
* UNALLOCATED - not this layer's business: ask the parent.

UNALLOCATED is not ZERO.  Only a chain's base turns the
unallocated ranges of the whole chain into zeros.
"""

import collections

DATA = 'data'
ZERO = 'zero'
UNALLOCATED = 'unallocated'


class Extent(collections.namedtuple(
        'Extent', ['kind', 'offset', 'length', 'file_offset', 'layer'])):
    """A run of the virtual disk [offset, offset + length).

    file_offset is where a DATA run starts in its layer's file (None
    otherwise); layer is the index of the layer in its chain (0 = leaf)
    once the extent has been folded over a chain, None inside a reader.
    """

    __slots__ = ()

    @property
    def end(self):
        return self.offset + self.length


def extent(kind, offset, length, file_offset=None, layer=None):
    return Extent(kind, offset, length, file_offset, layer)


def merge(extents):
    """Join neighbouring extents that continue each other."""
    out = []
    for e in extents:
        if out:
            p = out[-1]
            if (p.kind == e.kind and p.end == e.offset and p.layer == e.layer
                    and (p.kind != DATA
                         or (isinstance(p.file_offset, int)
                             and isinstance(e.file_offset, int)
                             and p.file_offset + p.length
                             == e.file_offset))):
                out[-1] = p._replace(length=p.length + e.length)
                continue
        out.append(e)
    return out
