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

"""The container plugin of XenServer / XCP-ng exports (XVA).

It tells an XVA from other archives and opens it through
:mod:`.archive`: a local file in place (plain) or in passes (compressed),
a download as it arrives.

:mod:`.archive` (and defusedxml, xxhash) is imported when a method needs
it: every conversion loads every container plugin to learn its priority,
and one of a disk image file never asks this plugin anything.
"""

from any2kvm_os.containers import base
from any2kvm_os.containers import tar


class XvaType(base.ContainerType):
    name = 'xva'  # archive.KIND
    description = 'a XenServer/XCP-ng XVA export'
    noun = 'a XenServer XVA export'
    archive_title = 'XVA'
    # Before the XenServer archive plugin, which takes any tar.
    priority = 40
    glance_kinds = {'xva': ('ovf', None)}

    def probe(self, view, path, limits):
        from any2kvm_os.containers.xva import archive
        if tar.looks_like_tar(view):
            return archive.looks_like_xva(view)
        return (tar.is_compressed(view)
                and archive.compressed_looks_like_xva(path))

    def open(self, path, limits):
        from any2kvm_os.containers.xva import archive
        return archive.open_xva(path, limits)

    def probe_head(self, head):
        from any2kvm_os.containers.xva import archive
        return archive.head_is_xva(head)

    def open_stream(self, label, limits, opener, fallback):
        from any2kvm_os.containers.xva import archive
        return archive.open_xva_stream(label, limits, opener)
