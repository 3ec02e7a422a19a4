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

"""File target: each disk becomes a sparse raw file.

The one path for raw files, shared by ``any2kvm convert`` and ``import
--target file``: which disks (:func:`plan`), what the files are called
(``NAME.raw``, ``NAME-diskN.raw``, as Glance images and Cinder volumes are
named ``NAME``, ``NAME-diskN``), and all or nothing (:func:`write`: the
files of a VM written before a failure are removed).
"""

import os
import re

from any2kvm_os.targets import base
from any2kvm_os.writers import raw


def stem(vm):
    """A file name stem for ``vm``: its name, else the input's name."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', vm.facts.get('name') or
                  os.path.basename(vm.path)).strip('._') or 'disk'


def plan(vm, directory, name, disk=None):
    """[(index, disk, path)]: the disks to write (all, or only ``disk``)
    and their files in ``directory``."""
    return [(index, d, os.path.join(directory, base.disk_name(
        name, index, len(vm.disks)) + '.raw'))
        for index, d in base.selected(vm, disk)]


def write(outputs, overwrite=False, progress=None, each=None):
    """Write every (index, disk, path) of ``outputs``; all or none: on a
    failure the files already written are removed.  ``each(index, disk,
    path, writer)`` is called after each disk.  Returns the writers."""
    written = []
    writers = []
    try:
        for index, d, path in outputs:
            writer = raw.write_file(d, path, overwrite=overwrite,
                                    progress=progress)
            if not writer.is_block:
                written.append(path)
            writers.append(writer)
            if each:
                each(index, d, path, writer)
    except BaseException:
        for path in written:
            os.unlink(path)
        raise
    return writers


class FileTarget(base.Target):
    name = 'file'
    description = 'sparse raw files in a directory'
    needs_cloud = False
    takes_properties = False
    arguments = (
        base.Argument('--output-dir', 'directory', metavar='DIR',
                      help='directory of the raw files (--target file; '
                           'default: the current directory)'),
        base.Argument('--overwrite', 'overwrite', action='store_true',
                      help='replace existing raw files (--target file)'),
    )

    def __init__(self, directory='.', overwrite=False, **context):
        super(FileTarget, self).__init__(**context)
        self.directory = directory
        self.overwrite = overwrite

    def write(self, vm, name, props=None, disk=None, progress=None):
        outputs = plan(vm, self.directory, name, disk)
        writers = write(outputs, self.overwrite, progress)
        return [{'disk': index, 'name': os.path.basename(path),
                 'path': path, 'size': writer.size}
                for (index, _d, path), writer in zip(outputs, writers)]
