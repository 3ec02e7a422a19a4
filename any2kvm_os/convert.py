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

"""Open what the user named and turn it into raw disks.

``open_source`` looks at the content (never the file name) and returns a
:class:`any2kvm_os.vm.Vm`: the facts known of the virtual machine (empty
for a bare disk) and its disks (:class:`any2kvm_os.vm.Disk`).

A disk file is resolved with its parents among the regular files of its
directory; a XenServer tar is read in place; a compressed one is streamed.
"""

import os
import stat

from any2kvm_os.chain import layer_chain
from any2kvm_os.containers import base
from any2kvm_os.containers import tar
from any2kvm_os.containers import xenserver
from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os.formats import probe
from any2kvm_os import vm
from any2kvm_os.writers import raw


def open_source(path, limits):
    """Return a :class:`~any2kvm_os.vm.Vm` for ``path``."""
    disk = _open_disk_source(path, limits)
    if isinstance(disk, vm.Vm):
        return disk
    return vm.Vm(path, disk.container, [disk])


def _open_disk_source(path, limits):
    try:
        st = os.stat(path)
    except OSError as e:
        raise exception.Any2KvmError('%s: %s' % (path, e.strerror))
    if not stat.S_ISREG(st.st_mode):
        raise exception.UnsupportedImage(path=path,
                                         reason='not a regular file')
    with fileio.FileView.open_path(path) as view:
        cls = probe.detect(view)
        if cls is None:
            # Only archives need these (and their XML and hash modules).
            from any2kvm_os.containers import ova
            from any2kvm_os.containers import xva
        compressed = cls is None and tar.is_compressed(view)
        plain_tar = (cls is None and not compressed
                     and tar.looks_like_tar(view))
        plain_xva = plain_tar and xva.looks_like_xva(view)
        is_ovf = (cls is None and not compressed and not plain_tar
                  and ova.looks_like_ovf(view))
    if plain_xva or (compressed and xva.compressed_looks_like_xva(path)):
        return xva.open_xva(path, limits)
    if is_ovf:
        # The descriptor of an already extracted OVA.
        return ova.open_ovf(path, limits)
    if plain_tar and ova.is_ova_tar(path, limits):
        return ova.open_ova(path, limits)
    if cls is not None:
        container = base.DirectoryContainer(path, limits)
        try:
            chain = layer_chain.resolve(container, container.leaf_name,
                                        limits)
        except Exception:
            container.close()
            raise
        _check_size(path, chain.virtual_size, limits)
        return vm.ChainDisk(path, container.kind, chain,
                            closer=container.close)
    if plain_tar:
        xs = xenserver.XenServerTar(path, limits)
        _check_size(path, xs.chain.virtual_size, limits)
        return vm.ChainDisk(path, xs.container, xs.chain, closer=xs.close)
    if compressed:
        return xenserver.XenServerStream(path, limits)
    raise exception.UnsupportedImage(
        path=path, reason='neither a disk image any2kvm reads nor an '
        'archive it knows (XenServer tar/tgz, OVA, XVA)')


def _check_size(path, size, limits):
    if size > limits.max_virtual_size:
        raise exception.InvalidImage(
            path=path, reason='virtual size %d exceeds the limit of %d bytes '
            '(max_virtual_size_gib)' % (size, limits.max_virtual_size))


def convert(source, output, overwrite=False, progress=None):
    """Write ``source`` as a raw disk to ``output``; all or nothing."""
    writer = raw.RawWriter.open(output, overwrite=overwrite)
    try:
        source.write_to(writer, progress)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer
