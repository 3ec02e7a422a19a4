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

"""The bounds one conversion works under, and the options that set them.

The options (``OPTIONS``, group ``[any2kvm]``) are owned here; the
scratch options are :mod:`any2kvm_os.scratch`'s.  :class:`Limits` takes
its defaults from the same table as these options: they are written once.
``OPTIONS`` is made on first use, so that a conversion that reads no
configuration does not import oslo.config (start-up time).
"""

from any2kvm_os import lazyopts
from any2kvm_os import scratch

GROUP = 'any2kvm'

#: The options' defaults, written once: :class:`Limits` and ``OPTIONS``
#: take them from here.
_DEFAULTS = dict(max_chain_depth=64, max_virtual_size_gib=65536,
                 max_archive_members=1024, max_archive_gib=16384,
                 max_directory_entries=10000, **scratch.DEFAULTS)


def _options():
    from oslo_config import cfg
    d = _DEFAULTS
    return [
        cfg.IntOpt('max_chain_depth', default=d['max_chain_depth'], min=1,
                   max=1024,
                   help='Most layers a snapshot chain may have. XenServer '
                        'keeps chains under 30; a deeper chain is refused '
                        'as absurd.'),
        cfg.IntOpt('max_virtual_size_gib',
                   default=d['max_virtual_size_gib'], min=1,
                   help='Largest virtual disk size accepted, in GiB. '
                        'Formats have their own, lower limits (VHD: 2 '
                        'TiB).'),
        cfg.IntOpt('max_archive_members', default=d['max_archive_members'],
                   min=1,
                   help='Most members an archive (tar, tgz) may hold.'),
        cfg.IntOpt('max_archive_gib', default=d['max_archive_gib'], min=1,
                   help='Largest total size, in GiB, of the members of an '
                        'archive (bounds decompression).'),
        cfg.IntOpt('max_directory_entries',
                   default=d['max_directory_entries'], min=1,
                   help='Most directory entries inspected when looking for '
                        'a parent disk beside a child.'),
    ]


#: ``OPTIONS`` (oslo.config options), made on first use: a conversion
#: that reads no configuration does not import oslo.config.
__getattr__ = lazyopts.module_getattr(globals(), _options)


class Limits(object):
    """The bounds one conversion works under, read from configuration.

    Sizes are in bytes here (the options give GiB); every argument left
    out takes its option's default.
    """

    def __init__(self, max_chain_depth=_DEFAULTS['max_chain_depth'],
                 max_virtual_size=_DEFAULTS['max_virtual_size_gib'] << 30,
                 max_archive_members=_DEFAULTS['max_archive_members'],
                 max_archive_bytes=_DEFAULTS['max_archive_gib'] << 30,
                 max_directory_entries=_DEFAULTS['max_directory_entries'],
                 scratch_dir=_DEFAULTS['scratch_dir'],
                 scratch_limit=_DEFAULTS['scratch_limit_gib'] << 30):
        self.max_chain_depth = max_chain_depth
        self.max_virtual_size = max_virtual_size
        self.max_archive_members = max_archive_members
        self.max_archive_bytes = max_archive_bytes
        self.max_directory_entries = max_directory_entries
        self.scratch_dir = scratch_dir
        self.scratch_limit = scratch_limit
        self.conf = None

    @classmethod
    def from_conf(cls, conf):
        """The limits ``conf`` sets (its ``[any2kvm]`` options must be
        registered: :func:`any2kvm_os.api.register_opts`)."""
        g = conf[GROUP]
        limits = cls(max_chain_depth=g.max_chain_depth,
                     max_virtual_size=g.max_virtual_size_gib << 30,
                     max_archive_members=g.max_archive_members,
                     max_archive_bytes=g.max_archive_gib << 30,
                     max_directory_entries=g.max_directory_entries,
                     scratch_dir=g.scratch_dir,
                     scratch_limit=g.scratch_limit_gib << 30)
        #: The whole configuration of the run, for the plugins that own
        #: options of their own (SSH settings, a source's paths).
        limits.conf = conf
        return limits
