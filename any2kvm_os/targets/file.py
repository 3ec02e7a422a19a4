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

"""File target: each disk becomes a sparse raw file (what ``any2kvm
convert`` does), named ``<name>.raw`` / ``<name>-diskN.raw`` in a
directory."""

import os

from any2kvm_os import convert
from any2kvm_os.targets import base


class FileTarget(base.Target):
    name = 'file'
    description = 'sparse raw files in a directory'

    def __init__(self, session=None, directory='.', overwrite=False):
        super(FileTarget, self).__init__(session)
        self.directory = directory
        self.overwrite = overwrite

    def write(self, source, name, props=None, disk=None, progress=None):
        written = []
        results = []
        try:
            for index, d in base.selected(source, disk):
                path = os.path.join(self.directory, base.disk_name(
                    name, index, len(source.disks)) + '.raw')
                target = convert.convert(d, path, overwrite=self.overwrite,
                                         progress=progress)
                written.append(path)
                results.append({'disk': index, 'name': os.path.basename(
                    path), 'path': path, 'size': target.size})
        except BaseException:
            for path in written:
                os.unlink(path)
            raise
        return results
