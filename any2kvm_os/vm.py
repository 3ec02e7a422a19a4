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

"""The opened virtual machine and its disks: what a container hands on.

Every container (a directory of disk files, a XenServer archive, an OVA,
an XVA, later a datastore over SSH) opens its input as a :class:`Vm`: the
facts known of the machine and its :class:`Disk` objects in device order.
Sources hand a ``Vm`` to targets; nothing above this module needs to know
which container a disk came from.

A disk is read in one of two ways:

* random access: ``disk.chain`` is a
  :class:`~any2kvm_os.chain.layer_chain.LayerChain` (needed by the
  incremental apply of ``convert --onto``): :class:`ChainDisk`;
* one pass: ``disk.chain`` is None and ``write_to`` reads the input as it
  arrives (compressed archives, downloads): subclasses of :class:`Disk`.

Either way ``write_to(writer, progress)`` writes the whole disk onto a raw
writer (:class:`any2kvm_os.writers.raw.RawWriter` or anything with its
``resize``/``fresh``/``write_data``/``zero_range``).  Every fact is given
to the constructor; callers never patch attributes onto a disk.
"""

import abc
import re

from any2kvm_os.chain import copy as chain_copy


class Disk(object, metaclass=abc.ABCMeta):
    """One disk of a :class:`Vm`."""

    #: A LayerChain when the layers can be read at random, else None.
    chain = None

    def __init__(self, name, container, disk_id=None, controller=None,
                 closer=None):
        #: How the disk is called in messages (a path, ``archive:member``).
        self.name = name
        #: The container plugin that opened it ('file', 'ova', 'xva' ...).
        self.container = container
        #: The id the VM's description gives the disk (OVF ``ovf:diskId``).
        self.disk_id = disk_id
        #: Where the VM attaches it: {'type': 'scsi', 'model': ...} or None.
        self.controller = controller
        self._closer = closer

    @property
    @abc.abstractmethod
    def format(self):
        """The format of the leaf layer: 'vhd', 'vmdk', 'xva' ..."""

    @property
    def size_hint(self):
        """The virtual size if known without reading the input through,
        else None."""
        return self.virtual_size

    @property
    def virtual_size(self):
        return self.describe()[0]['virtual_size']

    @abc.abstractmethod
    def describe(self):
        """The layers, leaf first, as dicts (name, format, subformat, id,
        parent_id, virtual_size, allocated_bytes, creator)."""

    @abc.abstractmethod
    def write_to(self, writer, progress=None):
        """Write the whole disk onto ``writer``; ``progress(done, total,
        data)`` is called as it goes: the disk's address reached, its
        size (None when not known yet) and the bytes of data written so
        far (holes and zero runs are skipped, so ``data`` can be far
        below ``done``; see :mod:`any2kvm_os.progress`)."""

    def close(self):
        if self._closer:
            closer, self._closer = self._closer, None
            closer()


class ChainDisk(Disk):
    """A disk whose layers are read with random access."""

    def __init__(self, name, container, chain, **kwargs):
        super(ChainDisk, self).__init__(name, container, **kwargs)
        self.chain = chain

    @property
    def format(self):
        return self.chain.leaf.format_name

    @property
    def virtual_size(self):
        return self.chain.virtual_size

    def describe(self):
        return self.chain.describe()

    def write_to(self, writer, progress=None):
        chain_copy.copy_chain(self.chain, writer, progress)


def xen_slots(userdevices):
    """The ``xen_slots`` fact of a XenServer VM: the slot of each disk
    (in device order), from its VBD's ``userdevice`` ("0", "1", "4", or a
    device name, "xvde"), or None when one of them is neither.  The
    guest names the disk of slot N xvd<letter N> (hd<letter N> without
    PV drivers): the template's CD drive takes slot 3, so a VM's fourth
    disk is usually xvde, which guest inspection must map to the fourth
    disk, not to a fifth."""
    slots = []
    for value in userdevices:
        text = str(value if value is not None else '').strip().lower()
        if text.isdigit():
            if not text.isascii() or len(text) > 4:
                return None     # "²", or no slot (Xen has 16)
            slots.append(int(text))
            continue
        m = re.match(r'^(?:xvd|hd|sd)([a-z]{1,2})$', text)
        if not m:
            return None
        index = 0
        for ch in m.group(1):
            index = index * 26 + (ord(ch) - 96)
        slots.append(index - 1)
    if len(set(slots)) != len(slots):
        return None
    return slots


class Vm(object):
    """A virtual machine as a container opened it: facts and disks."""

    def __init__(self, path, container, disks, facts=None, notes=(),
                 closer=None):
        #: What the user named (a path, ``glance image ID``, a URL).
        self.path = path
        #: The container plugin that opened it.
        self.container = container
        #: The disks in the VM's device order.
        self.disks = list(disks)
        #: name, cpus, cores_per_socket, memory_mb, firmware, nics, os,
        #: boot_disk, xen_slots (:func:`xen_slots`) ... (empty for a bare
        #: disk file).
        self.facts = dict(facts or {})
        #: What the user should know of how the input was read.
        self.notes = list(notes)
        self._closers = [closer] if closer else []
        #: What counts the bytes read over the wire (an object with
        #: ``bytes_read``: an SSH connection), or None for local input.
        self.wire_counter = None
        #: Whether the VM runs while its disks are read in place (its
        #: leaf changes under the reader): a live source's.
        self.live = False

    def relabel(self, old, new):
        """Call the input ``new`` where it was called ``old`` (a private
        copy of a download is named after the download in messages)."""
        self.path = self.path.replace(old, new)
        for disk in self.disks:
            disk.name = disk.name.replace(old, new)

    def wire(self):
        """None for local input; else ``{'bytes_read': bytes read over
        the wire so far (file data and command output), 'file_bytes':
        the sizes of the disks' layer files, 'allocated_bytes': the data
        the layers hold}``."""
        if self.wire_counter is None:
            return None
        files = allocated = 0
        for disk in self.disks:
            for layer in (disk.chain.layers if disk.chain else ()):
                files += layer.view.size
                allocated += layer.allocated_bytes()
        return {'bytes_read': self.wire_counter.bytes_read,
                'file_bytes': files, 'allocated_bytes': allocated}

    def on_close(self, closer):
        """Call ``closer()`` when the VM is closed (after its disks)."""
        self._closers.append(closer)

    def close(self):
        """Close every disk, then call every closer (the last added
        first), whatever fails: the first error is raised after all."""
        first = None
        closers, self._closers = self._closers, []
        steps = [d.close for d in self.disks] + list(reversed(closers))
        for step in steps:
            try:
                step()
            except BaseException as e:
                if first is None:
                    first = e
        if first is not None:
            raise first

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
