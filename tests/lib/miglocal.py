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

"""The engine's host, played locally (no SSH): the ``xe`` stand-in run as
a subprocess and the VHD chains read in the stand-in's SR directory.
Test code only."""

import os

from any2kvm_os.chain import layer_chain
from any2kvm_os.containers import base as containers
from any2kvm_os import exception
from any2kvm_os import limits as limits_mod
from any2kvm_os import vm as vm_mod
from tests.lib.xenserver import host as xhost


class LocalHost(object):
    label = 'standin'

    def __init__(self, root):
        self.root = str(root)
        self.mount_base = os.path.join(self.root, 'run', 'sr-mount')
        self.limits = limits_mod.Limits()
        self.bytes_read = 0
        self.commands = []
        #: The batches run (run_many): one round trip each over SSH.
        self.batches = []
        #: Every disk opened (open_disk), in order.
        self.opened = []

    def run(self, argv, mutating=False, timeout=None):
        self.commands.append(list(argv))
        r = xhost.run_xe(self.root, *argv[1:])
        if r.returncode != 0:
            raise exception.Any2KvmError('xe %s: %s' % (argv[1], r.stderr
                                                        or r.stdout))
        return r.stdout

    def run_many(self, commands, mutating=False, timeout=None):
        self.batches.append([list(a) for a in commands])
        return [self.run(a, mutating, timeout) for a in commands]

    def open_disk(self, info):
        container = containers.DirectoryContainer(info.path, self.limits)
        chain = layer_chain.resolve(container, container.leaf_name,
                                    self.limits)
        disk = vm_mod.ChainDisk(info.path, 'xenserver-sr', chain,
                                disk_id=info.vdi_uuid,
                                closer=getattr(container, 'close', None))
        disk.chain_container = container
        self.opened.append(disk)
        return disk

    def close(self):
        pass


def connector(root):
    def connect(location, limits, args):
        return LocalHost(root)
    return connect
