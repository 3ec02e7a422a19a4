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

"""Targets: where converted disks go (stevedore ``any2kvm_os.targets``).

A target plugin receives an opened :class:`any2kvm_os.vm.Vm`
and writes its disks: raw files, Glance images or Cinder volumes.  It
returns one result dict per disk (``name``, ``id`` or ``path``, ``size``,
digests, properties) for the CLI to print.
"""

import abc
import functools

from stevedore import extension

from any2kvm_os import exception

NAMESPACE = 'any2kvm_os.targets'


class Target(object, metaclass=abc.ABCMeta):
    """One kind of place converted disks go to."""

    name = None
    description = None

    def __init__(self, session=None):
        #: A keystoneauth1 session (cloud targets).
        self.session = session

    @abc.abstractmethod
    def write(self, source, name, properties, disk=None, progress=None):
        """Write the disks of ``source`` (all, or only index ``disk``);
        return one result dict per disk.  On failure nothing made by this
        call is left behind."""


@functools.lru_cache(maxsize=1)
def plugins():
    mgr = extension.ExtensionManager(NAMESPACE, invoke_on_load=False)
    return {e.name: e.plugin for e in mgr}


def get(name, session=None):
    try:
        cls = plugins()[name]
    except KeyError:
        raise exception.Any2KvmError('unknown target %r (known: %s)' % (
            name, ', '.join(sorted(plugins()))))
    return cls(session=session)


def disk_name(name, index, count):
    """``name`` for a one-disk VM; ``name-diskN`` for the others."""
    return name if count == 1 or index == 0 else '%s-disk%d' % (name, index)


def selected(source, disk):
    if disk is None:
        return list(enumerate(source.disks))
    if not 0 <= disk < len(source.disks):
        raise exception.Any2KvmError(
            '%s: has %d disk(s); --disk takes 0 to %d' % (
                source.path, len(source.disks), len(source.disks) - 1))
    return [(disk, source.disks[disk])]
