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

"""Sources: where a VM's disks come from (stevedore ``any2kvm_os.sources``).

A source plugin turns a LOCATION (a path, an image id, later a host spec)
into a :class:`any2kvm_os.vm.Vm`: the VM facts and its disks.
The local-file plugins all go through the same content detection
(:func:`any2kvm_os.convert.open_source`) and then check that what was found
is what the user asked for, so ``--source ova`` on a XenServer tgz is a
clear error instead of a surprise.
"""

import abc
import functools

from stevedore import extension

from any2kvm_os import convert
from any2kvm_os import exception

NAMESPACE = 'any2kvm_os.sources'


class Source(object, metaclass=abc.ABCMeta):
    """One kind of place a VM comes from."""

    #: Entry point name, e.g. 'ova'.
    name = None
    #: One line for ``openstack any2kvm source list``.
    description = None

    def __init__(self, limits, session=None):
        self.limits = limits
        #: A keystoneauth1 session, for sources that live in the cloud.
        self.session = session

    @abc.abstractmethod
    def open(self, location):
        """Return a VmSource for ``location``."""


class LocalSource(Source):
    """A local file whose content must be of ``kinds``."""

    kinds = ()

    def open(self, location):
        source = convert.open_source(location, self.limits)
        if source.container not in self.kinds:
            source.close()
            raise exception.UnsupportedImage(
                path=location, reason='is %s, not %s (use --source %s or '
                'leave --source out)' % (_KIND_WORDS.get(source.container,
                                                         source.container),
                                         self.description,
                                         _KIND_SOURCE.get(source.container,
                                                          source.container)))
        return source


_KIND_WORDS = {'file': 'a disk image file', 'tar': 'a tar archive',
               'xenserver-tgz': 'a XenServer VHD chain archive',
               'ova': 'an OVA', 'ovf': 'an OVF descriptor',
               'xva': 'a XenServer XVA export'}
_KIND_SOURCE = {'file': 'file', 'xenserver-tgz': 'xenserver-tgz',
                'ova': 'ova', 'ovf': 'ova', 'xva': 'xva'}


class FileSource(LocalSource):
    name = 'file'
    description = 'a disk image file (VHD, VHDX, VMDK, qcow2) with its ' \
        'parents beside it'
    kinds = ('file',)


class XenServerTgzSource(LocalSource):
    name = 'xenserver-tgz'
    description = 'a XenServer tar/tgz of 0.vhd (leaf) .. n.vhd (base)'
    kinds = ('xenserver-tgz',)


class OvaSource(LocalSource):
    name = 'ova'
    description = 'an OVA package, or the .ovf of an extracted one'
    kinds = ('ova', 'ovf')


class XvaSource(LocalSource):
    name = 'xva'
    description = 'a XenServer/XCP-ng XVA export'
    kinds = ('xva',)


@functools.lru_cache(maxsize=1)
def plugins():
    """{name: Source class} of the installed source plugins."""
    mgr = extension.ExtensionManager(NAMESPACE, invoke_on_load=False)
    return {e.name: e.plugin for e in mgr}


def open_location(location, limits, source_name=None, session=None):
    """Open ``location`` with the named source, or detect it by content."""
    if source_name is None:
        return convert.open_source(location, limits)
    try:
        cls = plugins()[source_name]
    except KeyError:
        raise exception.Any2KvmError(
            'unknown source %r (known: %s)' % (
                source_name, ', '.join(sorted(plugins()))))
    return cls(limits, session=session).open(location)
