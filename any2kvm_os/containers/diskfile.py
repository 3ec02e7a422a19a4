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

"""The ``file`` container: a disk image file with its parents beside it.

A VHD, VHDX, VMDK or qcow2 file (the format readers of the
``any2kvm_os.formats`` namespace decide) whose chain is resolved among
the regular files of its directory.
"""

from any2kvm_os.chain import layer_chain
from any2kvm_os.containers import base
from any2kvm_os.containers import xenserver
from any2kvm_os.formats import probe
from any2kvm_os import vm


class DiskFileType(base.ContainerType):
    name = 'file'
    description = 'a disk image file (VHD, VHDX, VMDK, qcow2) with its ' \
        'parents beside it'
    noun = 'a disk image file'
    # Format magics are exact: they are asked before any archive.
    priority = 50
    # Glance images of these disk formats that Cinder cannot convert (it
    # converts qcow2 itself).
    glance_kinds = {'vhd': ('bare', 'vhd'), 'vhdx': ('bare', 'vhdx'),
                    'vmdk': ('bare', 'vmdk')}

    def probe(self, view, path, limits):
        return probe.detect(view) is not None

    def open(self, path, limits):
        container = base.DirectoryContainer(path, limits)
        try:
            # An unpacked XenServer archive named against the convention
            # (0.vhd its base): ordered by ids as the archive would be.
            chain = xenserver.directory_chain(container,
                                              container.leaf_name, limits)
            if chain is None:
                chain = layer_chain.resolve(container, container.leaf_name,
                                            limits)
        except Exception:
            container.close()
            raise
        disk = vm.ChainDisk(path, self.name, chain, closer=container.close)
        return vm.Vm(path, self.name, [disk])
