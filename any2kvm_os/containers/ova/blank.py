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

"""Blank disks of an OVF package: a disk the descriptor gives no file.

Such a disk is ``ovf:capacity`` bytes of zeros (written as a hole):
:class:`BlankLayer` is its one layer, :func:`blank_chain` its chain, the
same whether the OVA is read in place or as it downloads.
"""

from any2kvm_os.chain import layer_chain
from any2kvm_os import extents as ext
from any2kvm_os.formats import base as fbase


class BlankLayer(fbase.LayerReader):
    """A disk with no file: ``capacity`` bytes of zeros."""

    format_name = 'blank'

    def __init__(self, size, name):
        super(BlankLayer, self).__init__(None)
        self._size = size
        self._name = name

    @property
    def name(self):
        return self._name

    @classmethod
    def probe(cls, view):
        return False

    @property
    def virtual_size(self):
        return self._size

    @property
    def identity(self):
        return None

    @property
    def parent_ref(self):
        return None

    def block_status(self, offset, length):
        end = min(offset + length, self._size)
        if offset < end:
            yield ext.extent(ext.ZERO, offset, end - offset)

    def allocated_bytes(self):
        return 0


def blank_chain(ovf_display, disk):
    """(name, chain) of ``disk`` (a :class:`.descriptor.DiskDef` without a
    file) of the descriptor ``ovf_display`` names."""
    name = '%s (blank disk %s)' % (ovf_display, disk.id)
    chain = layer_chain.LayerChain([BlankLayer(disk.capacity, name)],
                                   [name], ['(blank disk %s)' % disk.id])
    return name, chain
