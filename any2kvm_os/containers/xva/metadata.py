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

"""XenServer's export metadata: the VM and VDI model of ``ova.xml``.

The first member of an XVA, ``ova.xml``, is one XML-RPC value (read by
:mod:`.xmlrpc`): ``version`` and ``objects``, an array of XenAPI records
(VM, VBD, VDI, VIF, network ...) each with a ``class``, an ``id``
(``Ref:N``) and a ``snapshot`` (the record's fields).
:class:`XvaMetadata` finds the VM, its disks (the VDIs behind its
``Disk`` VBDs, in ``userdevice`` order) and every VDI's size.  ``ova.xml``
is parsed with defusedxml, DTDs refused, its size and object count
bounded.
"""

import collections
import logging
import re

import defusedxml
from defusedxml import ElementTree as SafeET

from any2kvm_os.containers.xva import xmlrpc
from any2kvm_os import exception
from any2kvm_os import vm as vm_mod

LOG = logging.getLogger(__name__)

#: The member that holds the metadata (its real name in every XVA).
OVA_XML = 'ova.xml'
#: Bounds on ova.xml (a VM with many snapshots is a few MiB).
MAX_OVA_XML_BYTES = 64 << 20
MAX_OVA_OBJECTS = 100000
#: What a VDI id may look like (xapi writes ``Ref:<N>``).
VDI_ID_RE = re.compile(r'^[A-Za-z0-9:._-]{1,64}$')

Vdi = collections.namedtuple('Vdi', ['ref', 'uuid', 'name_label',
                                     'virtual_size', 'userdevice',
                                     'bootable'])
Vdi.__doc__ = """A disk of the VM: the VDI behind one of its Disk VBDs."""


def metadata_error(archive, reason):
    """An InvalidArchive about the ova.xml of ``archive``."""
    return exception.InvalidArchive(path='%s:%s' % (archive, OVA_XML),
                                    reason=reason)


def _int(value):
    """An XenAPI integer (int64s travel as decimal strings) or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.match(r'^-?[0-9]{1,20}$',
                                           value.strip()):
        return int(value.strip())
    return None


def _dict(value):
    return value if isinstance(value, dict) else {}


def _list(value):
    return value if isinstance(value, list) else []


def _text(value):
    return value if isinstance(value, str) else None


def _true(value):
    return value is True or (isinstance(value, str)
                             and value.strip().lower() in ('true', '1'))


def _device_key(value):
    n = _int(value)
    return (0, n, '') if n is not None else (1, 0, str(value))


class XvaMetadata(object):
    """What ova.xml says: the VM, its disks, and every VDI's size.

    ``vdi_sizes`` maps every VDI id to its virtual size (the layout of the
    archive's members is checked against it); ``disks`` lists the VM's
    disks in ``userdevice`` order; ``vm`` holds the facts reported by
    ``any2kvm info``.
    """

    def __init__(self, archive, data, max_virtual_size):
        self.archive = archive
        if len(data) > MAX_OVA_XML_BYTES:
            raise metadata_error(archive, 'larger than %d bytes'
                                 % MAX_OVA_XML_BYTES)
        try:
            root = SafeET.fromstring(data, forbid_dtd=True,
                                     forbid_entities=True,
                                     forbid_external=True)
        except defusedxml.DefusedXmlException as e:
            raise metadata_error(archive, 'refused: %s (DTDs and entities are '
                                 'not allowed)' % type(e).__name__)
        except SafeET.ParseError as e:
            raise metadata_error(archive, 'not well-formed XML: %s' % e)
        except (ValueError, LookupError) as e:
            # An unknown encoding name, say.
            raise metadata_error(archive, 'unreadable XML (%s)' % ' '.join(
                str(e).split())[:120])
        top = xmlrpc.XmlRpc('%s:%s' % (archive, OVA_XML)).value(root)
        if not isinstance(top, dict) or not isinstance(top.get('objects'),
                                                       list):
            raise metadata_error(archive, 'not an XVA description (no '
                                 '"objects" array)')
        self.version = _dict(top.get('version'))
        objects = top['objects']
        if len(objects) > MAX_OVA_OBJECTS:
            raise metadata_error(archive, 'more than %d objects'
                                 % MAX_OVA_OBJECTS)
        self.objects = {}
        self.classes = collections.defaultdict(list)
        for obj in objects:
            if (not isinstance(obj, dict)
                    or not isinstance(obj.get('class'), str)
                    or not isinstance(obj.get('id'), str)
                    or not isinstance(obj.get('snapshot'), dict)):
                raise metadata_error(archive, 'an object lacks its class, id '
                                     'or record')
            if obj['id'] in self.objects:
                raise metadata_error(archive, 'object id %s appears twice'
                                     % obj['id'])
            self.objects[obj['id']] = (obj['class'], obj['snapshot'])
            self.classes[obj['class']].append(obj['id'])
        self.vdi_sizes = {}
        for ref in self.classes['VDI']:
            size = _int(self.objects[ref][1].get('virtual_size'))
            if size is None or size < 0:
                continue    # checked below if it is one of the disks
            if not VDI_ID_RE.match(ref):
                raise metadata_error(archive, 'VDI id %r is not a plain name'
                                     % ref)
            if size > max_virtual_size:
                raise exception.InvalidImage(
                    path='%s:%s' % (archive, ref), reason='virtual size %d '
                    'exceeds the limit of %d bytes (max_virtual_size_gib)'
                    % (size, max_virtual_size))
            self.vdi_sizes[ref] = size
        #: What the user should know of how ova.xml was read.
        self.notes = []
        self.vm_id = self._choose_vm()
        if self.vm_id is None:
            # xva-img writes VDIs without a VM: the disks are all there is.
            self.vm_record = {}
            self.disks = self._bare_disks()
            self.vm = {}
            self.notes.append(
                '%s: ova.xml describes disks but no VM: converting its %d '
                'VDI(s) in ova.xml order; the VM facts (name, CPUs, memory, '
                'firmware, NICs) are unknown' % (archive, len(self.disks)))
            return
        self.vm_record = self.objects[self.vm_id][1]
        self.disks = self._disks()
        self.vm = self._facts()
        slots = vm_mod.xen_slots(d.userdevice for d in self.disks)
        if slots is not None:
            self.vm['xen_slots'] = slots
        boot = [i for i, d in enumerate(self.disks) if d.bootable]
        if len(boot) == 1 and boot[0]:
            # The one bootable VBD is not the first disk: it boots.
            self.vm['boot_disk'] = boot[0]

    def record(self, ref, cls):
        found = self.objects.get(ref) if isinstance(ref, str) else None
        if found is None or found[0] != cls:
            return None
        return found[1]

    def _choose_vm(self):
        vms = [r for r in self.classes['VM']
               if not _true(self.objects[r][1].get('is_control_domain'))]
        if not vms:
            if not self.classes['VDI']:
                raise metadata_error(self.archive, 'describes no VM and no '
                                     'VDI')
            return None
        # An export carries the VM and, with its snapshots, their records
        # (is_a_snapshot true): the VM is the one that is no snapshot.
        live = [r for r in vms
                if not _true(self.objects[r][1].get('is_a_snapshot'))]
        if len(live) > 1:
            LOG.warning('%s: ova.xml describes %d VMs; using the first, %s',
                        self.archive, len(live), live[0])
        return (live or vms)[0]

    def _vbds(self):
        refs = _list(self.vm_record.get('VBDs'))
        if not refs:
            refs = [r for r in self.classes['VBD']
                    if self.objects[r][1].get('VM') == self.vm_id]
        return [(r, self.record(r, 'VBD')) for r in refs
                if self.record(r, 'VBD') is not None]

    def _disks(self):
        disks = []
        seen = set()
        for vbd_ref, vbd in self._vbds():
            kind = _text(vbd.get('type')) or ''
            if kind.lower() != 'disk' or _true(vbd.get('empty')):
                LOG.info('%s: skipping %s drive %s (userdevice %s)',
                         self.archive, kind or 'unknown', vbd_ref,
                         vbd.get('userdevice'))
                continue
            ref = vbd.get('VDI')
            vdi = self.record(ref, 'VDI')
            if vdi is None:
                raise metadata_error(
                    self.archive, 'disk VBD %s (userdevice %s) refers to VDI '
                    '%s, which ova.xml does not describe'
                    % (vbd_ref, vbd.get('userdevice'), ref))
            if ref not in self.vdi_sizes:
                raise metadata_error(self.archive, 'VDI %s has no valid '
                                     'virtual_size (%r)'
                                     % (ref, vdi.get('virtual_size')))
            if ref in seen:
                continue
            seen.add(ref)
            disks.append(Vdi(ref, _text(vdi.get('uuid')) or None,
                             _text(vdi.get('name_label')) or '',
                             self.vdi_sizes[ref],
                             vbd.get('userdevice'),
                             _true(vbd.get('bootable'))))
        disks.sort(key=lambda d: _device_key(d.userdevice))
        return disks

    def _bare_disks(self):
        """Every VDI, in ova.xml order, when no VM says which are disks."""
        disks = []
        for n, ref in enumerate(self.classes['VDI']):
            vdi = self.objects[ref][1]
            if ref not in self.vdi_sizes:
                raise metadata_error(self.archive, 'VDI %s has no valid '
                                     'virtual_size (%r)'
                                     % (ref, vdi.get('virtual_size')))
            disks.append(Vdi(ref, _text(vdi.get('uuid')) or None,
                             _text(vdi.get('name_label')) or '',
                             self.vdi_sizes[ref], str(n), n == 0))
        return disks

    @property
    def creator(self):
        v = self.version
        brand = _text(v.get('product_brand')) or ''
        version = _text(v.get('product_version')) or ''
        made = ('%s %s' % (brand, version)).strip()
        return made or None

    def _facts(self):
        rec = self.vm_record
        platform = _dict(rec.get('platform'))
        boot = _dict(rec.get('HVM_boot_params'))
        policy = _text(rec.get('HVM_boot_policy'))
        uefi = ((_text(boot.get('firmware')) or '').lower() == 'uefi'
                or 'uefi' in (_text(platform.get('device-model')) or ''))
        memory = _int(rec.get('memory_static_max'))
        vm = {
            'name': _text(rec.get('name_label')) or '',
            'cpus': _int(rec.get('VCPUs_max')),
            'cores_per_socket': _int(platform.get('cores-per-socket')) or 1,
            'memory_mb': memory // (1 << 20) if memory is not None else None,
            'firmware': 'uefi' if uefi else 'bios',
            'virtualization': 'pv' if policy == '' else 'hvm',
            'nics': self._nics(),
            'os': self._os(),
        }
        if uefi:
            vm['secure_boot'] = _true(platform.get('secureboot'))
        return vm

    def _nics(self):
        refs = _list(self.vm_record.get('VIFs'))
        if not refs:
            refs = [r for r in self.classes['VIF']
                    if self.objects[r][1].get('VM') == self.vm_id]
        nics = []
        for ref in refs:
            vif = self.record(ref, 'VIF')
            if vif is None:
                continue
            nic = {'device': _text(vif.get('device')) or '',
                   'mac': (_text(vif.get('MAC')) or '').lower()}
            net = self.record(vif.get('network'), 'network')
            if net is not None and _text(net.get('name_label')):
                nic['network'] = net['name_label']
            nics.append(nic)
        nics.sort(key=lambda n: _device_key(n['device']))
        return nics

    def _os(self):
        out = {}
        gm = self.record(self.vm_record.get('guest_metrics'),
                         'VM_guest_metrics')
        osv = _dict(gm.get('os_version')) if gm is not None else {}
        other = _dict(self.vm_record.get('other_config'))
        if _text(osv.get('distro')):
            out['distro'] = osv['distro']
        elif _text(other.get('install-distro')):
            out['distro'] = other['install-distro']
        if _text(osv.get('name')):
            out['description'] = osv['name']
        if _text(osv.get('major')):
            out['version'] = osv['major'] + (
                '.' + osv['minor'] if _text(osv.get('minor')) else '')
        template = (_text(other.get('base_template_name'))
                    or _text(self.vm_record.get('reference_label')))
        if template:
            out['template'] = template
        return out


def parse_metadata(archive, data, max_virtual_size=65536 << 30):
    """Parse ova.xml (bytes); see :class:`XvaMetadata`."""
    return XvaMetadata(archive, data, max_virtual_size)
