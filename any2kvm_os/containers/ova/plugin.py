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

"""The container plugins of OVA packages and of extracted OVF descriptors.

A local OVA or OVF directory is read in place (:mod:`.package`); a
download as it arrives (:mod:`.stream`).

Those modules (and defusedxml) are imported when a method needs them:
every conversion loads every container plugin to learn its priority, and
one of a disk image file never asks these plugins anything.
"""

from any2kvm_os.containers import base
from any2kvm_os.containers import tar
from any2kvm_os import fileio


class OvaType(base.ContainerType):
    name = 'ova'
    description = 'an OVA package, or the .ovf of an extracted one'
    noun = 'an OVA package'
    archive_title = 'OVA'
    # Before the XenServer archive plugin, which takes any tar.
    priority = 30
    glance_kinds = {'ova': ('ova', None)}

    def probe(self, view, path, limits):
        from any2kvm_os.containers.ova import package
        from any2kvm_os.containers.ova import stream
        if tar.is_compressed(view):
            # an .ova.gz: the whole OVA compressed, its .ovf first (or
            # another file of an OVA first: read through scratch)
            return stream.compressed_looks_like_ova(path)
        return tar.looks_like_tar(view) and package.is_ova_tar(path, limits)

    def open(self, path, limits):
        from any2kvm_os.containers.ova import package
        from any2kvm_os.containers.ova import stream
        with fileio.FileView.open_path(path) as view:
            compressed = tar.is_compressed(view)
        if not compressed:
            return package.open_ova(path, limits)
        # Read in one pass per use, as a download is; what cannot be
        # (a disk with no one-pass reader) is decompressed into scratch.
        return stream.open_ova_stream(
            path, limits, lambda: open(path, 'rb'),
            fallback=lambda: package.open_compressed_ova(path, limits))

    def probe_head(self, head):
        from any2kvm_os.containers.ova import stream
        return stream.head_is_ova(head)

    def open_stream(self, label, limits, opener, fallback):
        from any2kvm_os.containers.ova import stream
        return stream.open_ova_stream(label, limits, opener,
                                      fallback=fallback)


class OvfType(base.ContainerType):
    name = 'ovf'
    description = 'the OVF descriptor of an extracted OVA, its files ' \
        'beside it'
    noun = 'an OVF descriptor'
    source = 'ova'
    priority = 25

    def probe(self, view, path, limits):
        from any2kvm_os.containers.ova import descriptor
        return (not tar.looks_like_tar(view)
                and not tar.is_compressed(view)
                and descriptor.looks_like_ovf(view))

    def open(self, path, limits):
        from any2kvm_os.containers.ova import package
        return package.open_ovf(path, limits)
