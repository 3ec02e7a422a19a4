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

"""Every option of any2kvm_os, gathered for oslo-config-generator.

Each module owns its options (``OPTIONS``); this module only gathers them
and registers them on demand, never at import time.
"""

import copy

from oslo_config import cfg

GROUP = 'any2kvm'

LIMIT_OPTS = [
    cfg.IntOpt('max_chain_depth', default=64, min=1, max=1024,
               help='Most layers a snapshot chain may have. XenServer '
                    'keeps chains under 30; a deeper chain is refused as '
                    'absurd.'),
    cfg.IntOpt('max_virtual_size_gib', default=65536, min=1,
               help='Largest virtual disk size accepted, in GiB. Formats '
                    'have their own, lower limits (VHD: 2 TiB).'),
    cfg.IntOpt('max_archive_members', default=1024, min=1,
               help='Most members an archive (tar, tgz) may hold.'),
    cfg.IntOpt('max_archive_gib', default=16384, min=1,
               help='Largest total size, in GiB, of the members of an '
                    'archive (bounds decompression).'),
    cfg.IntOpt('max_directory_entries', default=10000, min=1,
               help='Most directory entries inspected when looking for a '
                    'parent disk beside a child.'),
]

SCRATCH_OPTS = [
    cfg.StrOpt('scratch_dir',
               help='Directory under which a private (0700) scratch '
                    'directory is made when archive members must be '
                    'buffered. Default: the directory of the output.'),
    cfg.IntOpt('scratch_limit_gib', default=1024, min=0,
               help='Most scratch space, in GiB, one conversion may use. '
                    'Scratch is needed only when a compressed archive '
                    'holds members in an order that cannot be applied as '
                    'they come.'),
]


def register_opts(conf):
    conf.register_opts(LIMIT_OPTS + SCRATCH_OPTS, group=GROUP)


def list_opts():
    from any2kvm_os.cinder import driver
    return [(GROUP, copy.deepcopy(LIMIT_OPTS + SCRATCH_OPTS))] + [
        (group, copy.deepcopy(options))
        for group, options in driver.list_opts()]


class Limits(object):
    """The bounds one conversion works under, read from configuration."""

    def __init__(self, max_chain_depth=64, max_virtual_size=65536 << 30,
                 max_archive_members=1024, max_archive_bytes=16384 << 30,
                 max_directory_entries=10000, scratch_dir=None,
                 scratch_limit=1024 << 30):
        self.max_chain_depth = max_chain_depth
        self.max_virtual_size = max_virtual_size
        self.max_archive_members = max_archive_members
        self.max_archive_bytes = max_archive_bytes
        self.max_directory_entries = max_directory_entries
        self.scratch_dir = scratch_dir
        self.scratch_limit = scratch_limit

    @classmethod
    def from_conf(cls, conf):
        g = conf[GROUP]
        return cls(max_chain_depth=g.max_chain_depth,
                   max_virtual_size=g.max_virtual_size_gib << 30,
                   max_archive_members=g.max_archive_members,
                   max_archive_bytes=g.max_archive_gib << 30,
                   max_directory_entries=g.max_directory_entries,
                   scratch_dir=g.scratch_dir,
                   scratch_limit=g.scratch_limit_gib << 30)
