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

"""The container plugins, and detection by content as one loop over them.

Every way any2kvm recognises an input is derived from the plugins of the
``any2kvm_os.containers`` namespace (:class:`~any2kvm_os.containers.base.
ContainerType`): local files (:func:`open_path`), downloads read as they
arrive (:func:`open_stream`), the ``--source`` words of local sources and
the Cinder hook's table of Glance images (:func:`glance_kinds`).  A new
container is one module and one entry point; nothing here changes.
"""

import functools
import os
import stat

from stevedore import extension

from any2kvm_os import exception
from any2kvm_os import fileio

NAMESPACE = 'any2kvm_os.containers'


@functools.lru_cache(maxsize=1)
def plugins():
    """The container plugins, instantiated, highest priority first."""
    mgr = extension.ExtensionManager(NAMESPACE, invoke_on_load=False)
    found = []
    for ext in mgr:
        if ext.plugin.name != ext.name:
            raise exception.Any2KvmError(
                'container plugin %s: entry point %r names %r' % (
                    ext.entry_point_target, ext.name, ext.plugin.name))
        found.append(ext.plugin())
    return tuple(sorted(found, key=lambda p: (-p.priority, p.name)))


def get(name):
    for plugin in plugins():
        if plugin.name == name:
            return plugin
    raise KeyError(name)


def _regular_file(path):
    try:
        st = os.stat(path)
    except OSError as e:
        raise exception.Any2KvmError('%s: %s' % (path, e.strerror))
    if not stat.S_ISREG(st.st_mode):
        raise exception.UnsupportedImage(path=path,
                                         reason='not a regular file')


def detect(path, limits):
    """The plugin that claims the regular file at ``path``."""
    _regular_file(path)
    with fileio.FileView.open_path(path) as view:
        for plugin in plugins():
            if plugin.probe(view, path, limits):
                return plugin
    raise exception.UnsupportedImage(
        path=path, reason='neither a disk image any2kvm reads nor an '
        'archive it knows (%s)' % ', '.join(sorted(
            p.archive_title for p in plugins() if p.archive_title)))


def open_path(path, limits):
    """Open the file at ``path`` with the plugin that claims it; return an
    :class:`~any2kvm_os.vm.Vm`."""
    vm = detect(path, limits).open(path, limits)
    _check_sizes(vm, limits)
    return vm


def _check_sizes(vm, limits):
    for disk in vm.disks:
        size = disk.size_hint
        if size is not None and size > limits.max_virtual_size:
            vm.close()
            raise exception.InvalidImage(
                path=disk.name, reason='virtual size %d exceeds the limit '
                'of %d bytes (max_virtual_size_gib)'
                % (size, limits.max_virtual_size))


def stream_plugin(head):
    """The plugin that can read a download starting with ``head`` as it
    arrives, or None."""
    for plugin in plugins():
        if plugin.probe_head(head):
            return plugin
    return None


def glance_kinds():
    """{kind word: (container_format, disk_format or None)}: every Glance
    image the Cinder hook may take over, in plugin order."""
    kinds = {}
    for plugin in plugins():
        kinds.update(plugin.glance_kinds)
    return kinds


def source_words():
    """{--source word: [plugins it selects]} of the local containers."""
    words = {}
    for plugin in plugins():
        words.setdefault(plugin.source_name(), []).append(plugin)
    return words
