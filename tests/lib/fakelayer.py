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

"""A layer reader made of declared runs, for the chain-folding tests."""

from any2kvm_os import extents as ext
from any2kvm_os.formats import base as fbase


class FakeLayer(fbase.LayerReader):
    """A layer given as {offset: (kind, length)} on a byte-per-offset map."""

    format_name = 'fake'

    def __init__(self, size, runs, ident, parent=None):
        self._size = size
        self._runs = runs
        self._id = ident
        self._parent = parent

    @classmethod
    def probe(cls, view):
        return False

    virtual_size = property(lambda self: self._size)
    identity = property(lambda self: self._id)
    parent_ref = property(lambda self: fbase.ParentRef(self._parent, ())
                          if self._parent else None)

    def allocated_bytes(self):
        return 0

    def block_status(self, offset, length):
        end = min(offset + length, self._size)
        pos = offset
        for start, kind, n in sorted(self._runs):
            a, b = max(start, pos), min(start + n, end)
            if a >= b:
                continue
            if a > pos:
                yield ext.extent(ext.UNALLOCATED, pos, a - pos)
            yield ext.extent(kind, a, b - a, a if kind == ext.DATA else None)
            pos = b
        if pos < end:
            yield ext.extent(ext.UNALLOCATED, pos, end - pos)
