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

"""Find a VM on a XenServer host and collect what a migration needs.

Everything goes through a runner, ``run(argv) -> stdout`` (str or UTF-8
bytes), which runs one ``xe`` command (or the ``cat`` of the host's
inventory, see below) on the host and raises (an
:class:`~any2kvm_os.exception.Any2KvmError` of the transport) when it
exits non-zero; nothing here opens a connection.

:func:`discover` returns a :class:`Discovered`: the VM's facts under the
keys of :class:`any2kvm_os.vm.Vm` facts exactly as the XVA container
(``containers/xva.py``) reports them for an export of the same VM (name,
cpus = VCPUs-max, cores_per_socket, memory_mb = memory-static-max in MiB,
firmware, secure_boot, virtualization, nics, os), so that
:mod:`any2kvm_os.properties` makes the same image properties; and the
disks in ``userdevice`` order with the path of each VHD on the host.

Where a disk's VHD lives depends on the SR type:

* ``ext`` (local EXT) and ``nfs`` (NFS VHD) keep one file per VDI,
  ``<mount base>/<sr-uuid>/<vdi-uuid>.vhd``; the SR is mounted at
  ``/run/sr-mount/<sr-uuid>`` (``/var/run/sr-mount`` on older hosts,
  the same directory through the /var/run link).  The base is a
  parameter, so tests can point it at a stand-in tree.  So do the other
  SM drivers built on FileSR, whose ``load`` sets the same path
  (xapi-project/sm ``drivers/``): ``smb`` (and ``cifs``, its older
  name; a link to the share's directory), ``file`` (a local directory),
  and XCP-ng's ``ext4``, ``xfs`` and ``zfs``.
* ``lvm``, ``lvmoiscsi``, ``lvmohba`` keep each VHD in a logical volume
  (``VHD-<vdi-uuid>`` in volume group ``VG_XenStorage-<sr-uuid>``), whose
  device node ``<dev base>/VG_XenStorage-<sr-uuid>/VHD-<vdi-uuid>``
  exists only while the VDI's chain is attached (:mod:`.lvm` reads it,
  and attaches a halted VM's VDI to dom0 to do so); a raw LV VDI
  (``vdi_type`` ``aio``: ``LV-<uuid>``) is refused.
* Any other SR type is refused by name.

A file SR is mounted only on the hosts where its PBD is plugged
(``currently-attached`` true): in a pool, local storage of another host,
or an SR whose PBD is unplugged, has no directory under the mount base of
the host we are connected to.  So when the caller names the host's
inventory (``/etc/xensource-inventory``, whose ``INSTALLATION_UUID`` is
the uuid of the host the dom0 shell runs on, as xapi's own dom0 scripts
read it), each disk's SR must have a plugged PBD on that host
(``xe pbd-list params=uuid,host-uuid,sr-uuid,currently-attached``); if
not, the disk is refused, naming the hosts where the SR is attached
(``xe host-list params=uuid,name-label``), or saying it is attached
nowhere.  An inventory that cannot be read leaves the check out, with a
note.

Refused VMs: a name-label shared by several VMs (the candidates are
listed with their uuids and power states), snapshots, templates and the
control domain.
"""

import copy
import logging
import posixpath

from any2kvm_os import exception
from any2kvm_os import vm as vm_mod
from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import location
from any2kvm_os.sources.xenserver import xe

LOG = logging.getLogger(__name__)
#: Largest virtual size a VDI is taken to have (XenServer's are at most
#: 2 TiB on VHD SRs, 16 TiB as qcow2): beyond, the answer is refused as
#: absurd (a target of that size could not be made; 2**63 overflows).
MAX_VIRTUAL_SIZE = 1 << 50

DEFAULT_MOUNT_BASE = '/run/sr-mount'
#: Where LVs' device nodes are (``/dev/VG_XenStorage-<sr>/VHD-<vdi>``).
DEFAULT_LVM_DEV = '/dev'
#: The dom0 file that names the host the shell runs on
#: (``INSTALLATION_UUID``).
DEFAULT_INVENTORY = '/etc/xensource-inventory'
FILE_SR_TYPES = ('ext', 'nfs', 'smb', 'cifs', 'file', 'ext4', 'xfs', 'zfs',
                 'cephfs', 'largeblock', 'glusterfs', 'moosefs')
#: LVHD's drivers answer to both names (xapi-project/sm LVHDSR.py and
#: its iSCSI and HBA kin: ``handles()``).
LVM_SR_TYPES = ('lvm', 'lvmoiscsi', 'lvmohba', 'lvmofcoe', 'lvhd',
                'lvhdoiscsi', 'lvhdohba', 'lvhdofcoe')
MiB = 1 << 20
#: Most disks and NICs a VM may have here (xapi allows 16 VBDs on an HVM
#: guest, 255 on a PV one; 7 VIFs).
MAX_DEVICES = 256

#: What is asked of the VM (``vm-list params=``).  Not ``os-version``:
#: the guest writes it (its agent copies the guest's own OS name into
#: xenstore, and xapi prints it unescaped), so a name holding a blank
#: line would end the record there for any parser, and could even print
#: a second record; it is asked alone (:func:`os_version_command`).
VM_FIELDS = (
    'uuid', 'name-label', 'power-state', 'is-a-template', 'is-a-snapshot',
    'is-control-domain', 'VCPUs-max', 'VCPUs-at-startup',
    'memory-static-max', 'platform', 'HVM-boot-policy', 'HVM-boot-params',
    'domain-type', 'other-config', 'reference-label')
VM_REQUIRED = ('uuid', 'name-label', 'power-state')
VBD_FIELDS = ('uuid', 'vm-uuid', 'vdi-uuid', 'userdevice', 'device', 'type',
              'empty', 'bootable')
VDI_FIELDS = ('uuid', 'name-label', 'virtual-size', 'sr-uuid', 'sm-config')
SR_FIELDS = ('uuid', 'name-label', 'type')
VIF_FIELDS = ('uuid', 'vm-uuid', 'device', 'MAC', 'network-uuid',
              'network-name-label')
PBD_FIELDS = ('uuid', 'host-uuid', 'sr-uuid', 'currently-attached')
#: Most SRs taken from one pool-wide ``sr-list`` (a pool holds a local SR
#: per host, shared SRs, ISO and udev SRs: tens); beyond it, each disk's
#: SR is asked for by uuid.
MAX_SRS = 4096
HOST_FIELDS = ('uuid', 'name-label')
#: Longest inventory file read.
MAX_INVENTORY = 64 << 10


class DiskInfo(object):
    """One disk of the VM as the host describes it."""

    def __init__(self, userdevice, device, bootable, vdi_uuid, vdi_name,
                 virtual_size, sr_uuid, sr_type, sr_name, path,
                 storage='file', control_domain=None, this_host=None):
        self.userdevice = userdevice
        #: The guest's device name (xvda, hda ...), '' when not running.
        self.device = device
        self.bootable = bootable
        self.vdi_uuid = vdi_uuid
        self.vdi_name = vdi_name
        self.virtual_size = virtual_size
        self.sr_uuid = sr_uuid
        self.sr_type = sr_type
        self.sr_name = sr_name
        #: Where the VHD file is on the host (an LV's device node for
        #: ``storage`` 'lvm').
        self.path = path
        #: 'file' (a file SR's VHD file) or 'lvm' (an LVHD logical
        #: volume: :mod:`.lvm`).
        self.storage = storage
        #: For an LV: the uuid of the control domain of the host
        #: connected to (the inventory's), which a halted VM's LVs are
        #: attached to; None when unknown (and for a file).
        self.control_domain = control_domain
        #: For an LV: the uuid of the host connected to (whether its VM
        #: runs here), None when unknown (and for a file).
        self.this_host = this_host

    def as_dict(self):
        return dict(vars(self))

    def of_vdi(self, vdi_uuid):
        """This disk as VDI ``vdi_uuid`` of the same SR holds it (a
        snapshot of it): a copy whose VDI, and VHD file or LV, are that
        VDI's."""
        other = copy.copy(self)
        other.vdi_uuid = vdi_uuid
        directory = posixpath.dirname(self.path)
        if self.storage == 'lvm':
            from any2kvm_os.sources.xenserver import lvm
            other.path = posixpath.join(directory, lvm.LV_PREFIX + vdi_uuid)
        else:
            other.path = posixpath.join(directory, vdi_uuid + '.vhd')
        return other

    def __repr__(self):
        return 'DiskInfo(%r)' % self.as_dict()


class Discovered(object):
    """A VM found on the host: ``uuid``, ``power_state``, ``facts`` (the
    :class:`~any2kvm_os.vm.Vm` facts), ``disks`` (:class:`DiskInfo` in
    userdevice order), ``vcpus_at_startup`` and ``notes`` (what the user
    should know, one line each)."""

    def __init__(self, uuid, power_state, facts, disks, vcpus_at_startup,
                 notes):
        self.uuid = uuid
        self.power_state = power_state
        self.facts = facts
        self.disks = disks
        self.vcpus_at_startup = vcpus_at_startup
        self.notes = notes


#: Fields not worth a ``param-get`` each when a host leaves them out of
#: a listing (hints only; absent on older hosts).
_HINTS = frozenset(('other-config', 'reference-label'))


class _Host(object):
    """Runs commands on one host and parses their answers."""

    def __init__(self, run, host):
        self.run = run
        self.host = host

    def records(self, argv, fields, required=()):
        return xe.parse_records(self.run(argv), argv, fields,
                                required=required)

    def query(self, cls, filters, fields, required=()):
        """``xe <cls>-list FILTERS params=FIELDS``: (that command, as
        errors name it; the records, each with the fields it was asked
        for).

        Real xe prints every field asked for that its table has.  A host
        that leaves one out (an older xapi without the field, or a CLI
        that does not honour ``params=``) is asked for it with ``<cls>-
        param-get uuid=U param-name=F``, and a field it cannot give is
        left out.  When xe fails the listing with ``params=`` (exits
        non-zero: :class:`~any2kvm_os.exception.RemoteCommandError`), the
        uuids are listed alone (``params=uuid``) and every field asked with
        ``param-get``; if that fails too, the first error is raised.  A
        listing that timed out is not asked again.
        """
        argv = listing = xe.list_command(cls, filters, fields)
        skip = _HINTS
        try:
            out = self.run(argv)
        except exception.RemoteCommandError as first:
            if getattr(first, 'timed_out', False):
                # No answer in ssh_command_timeout: asking again would
                # double the wait (and leave a second xe at work).
                raise
            # xe answered with an error (not a lost connection)
            short = xe.list_command(cls, filters, ('uuid',))
            try:
                records = self.records(short, ('uuid',), ('uuid',))
            except exception.Any2KvmError:
                raise first
            argv, skip = short, ()
        else:
            records = xe.parse_records(out, argv, fields)
        for record in records:
            self._fill(cls, record, fields, skip)
        for i, record in enumerate(records, 1):
            missing = [f for f in required if f not in record]
            if missing:
                raise errors.XeOutputError(
                    command=xe.describe(argv), reason='record %d lacks %s'
                    % (i, ', '.join(missing)))
        return listing, records

    def _fill(self, cls, record, fields, skip):
        uuid = record.get('uuid', '')
        if not location.is_uuid(uuid):
            return
        for name in fields:
            if name in record or name in skip:
                continue
            get = xe.param_get(cls, uuid.lower(), name)
            try:
                value = xe.parse_value(self.run(get), get)
            except (exception.RemoteCommandError, errors.XeOutputError):
                continue
            # As parse_records gives a listed value.
            record[name] = value if name in xe.VERBATIM_FIELDS else \
                value.strip()


def _one(records, argv):
    """The one record of a listing by uuid, or None."""
    if len(records) > 1:
        raise errors.XeOutputError(command=xe.describe(argv),
                                   reason='%d records where one was '
                                   'expected' % len(records))
    return records[0] if records else None


def _uuid_field(record, name, argv):
    value = record.get(name, '')
    if not location.is_uuid(value):
        raise errors.XeOutputError(
            command=xe.describe(argv),
            reason='field %s is %r, not a uuid' % (name, value[:80]))
    return value.lower()


def _device_key(value):
    text = (value or '').strip()
    if text.isdigit() and text.isascii():
        return (0, int(text), '')
    return (1, 0, text)


def _true(value):
    return (value or '').strip().lower() in ('true', '1')


def _candidates(records):
    return '; '.join('%s (%s)' % (r.get('uuid', '?'),
                                  r.get('power-state', '?'))
                     for r in records)


def _refuse_kind(host, record, shown):
    if _true(record.get('is-control-domain')):
        raise errors.UnsupportedVm(host=host, vm=shown, reason='is the '
                                   'control domain (dom0) of the host')
    if _true(record.get('is-a-snapshot')):
        raise errors.UnsupportedVm(host=host, vm=shown, reason='is a '
                                   'snapshot; name the VM itself')
    if _true(record.get('is-a-template')):
        raise errors.UnsupportedVm(host=host, vm=shown, reason='is a '
                                   'template, not a VM')


def find_vm(run, vm, host='host'):
    """The ``vm-list`` record (the fields of :data:`VM_FIELDS`) of the VM
    whose uuid or name-label is ``vm``.

    A uuid is looked up as a uuid first, then as a name-label (a VM may
    be named like a uuid).  ``vm-list`` leaves out templates and
    snapshots; a uuid not found is then checked against them, so that
    the refusal says what it is.
    """
    h = _Host(run, host)
    found = []
    if location.is_uuid(vm):
        argv, found = h.query('vm', [('uuid', vm.lower())], VM_FIELDS,
                              VM_REQUIRED)
        found = [r for r in found if r['uuid'].lower() == vm.lower()]
    if not found:
        argv, found = h.query('vm', [('name-label', vm)], VM_FIELDS,
                              VM_REQUIRED)
        found = [r for r in found if r['name-label'] == vm] or [
            r for r in found if r['name-label'].strip() == vm.strip()]
    if not found:
        if location.is_uuid(vm):
            for cls, what in (('snapshot', 'a snapshot; name the VM itself'),
                              ('template', 'a template, not a VM')):
                argv = xe.list_command(cls, [('uuid', vm.lower())],
                                       ('uuid',))
                try:
                    known = h.records(argv, ('uuid',), ('uuid',))
                except exception.Any2KvmError:
                    # A host without <cls>-list: the VM is just not found.
                    known = []
                if known:
                    raise errors.UnsupportedVm(host=host, vm=vm,
                                               reason='is ' + what)
        raise errors.VmNotFound(host=host, vm=repr(vm))
    if len(found) > 1:
        raise errors.AmbiguousVm(host=host, count=len(found), vm=repr(vm),
                                 candidates=_candidates(found))
    record = found[0]
    _uuid_field(record, 'uuid', argv)
    _refuse_kind(host, record, repr(vm))
    return record


def _firmware(record, notes, argv):
    """(facts about booting, the virtualization mode)."""
    platform = xe.parse_map(record.get('platform', ''), argv, 'platform')
    boot = xe.parse_map(record.get('HVM-boot-params', ''), argv,
                        'HVM-boot-params')
    policy = record.get('HVM-boot-policy')
    # xe prints pv-in-pvh (record_util.ml domain_type_to_string), the
    # API's enum is pv_in_pvh.
    domain_type = (record.get('domain-type') or '').strip().lower()
    if domain_type in ('pv', 'pv-in-pvh', 'pv_in_pvh'):
        mode = 'pv'
    elif domain_type in ('hvm', 'pvh'):
        mode = domain_type
    else:
        # Hosts before domain-type (XenServer < 7.5): a PV guest is one
        # with an empty HVM-boot-policy.
        mode = 'pv' if policy == '' else 'hvm'
    if mode == 'pv':
        notes.append('the VM is a PV guest: it booted a kernel chosen by '
                     'pygrub from its disk, with no BIOS; under KVM it '
                     'needs a bootloader and a kernel with virtio drivers')
    elif mode == 'pvh':
        notes.append('the VM is a PVH guest: it boots without firmware '
                     'under Xen; under KVM it needs a bootloader')
    firmware = (boot.get('firmware') or '').strip().lower()
    uefi = (firmware == 'uefi'
            or 'uefi' in (platform.get('device-model') or ''))
    if firmware not in ('', 'bios', 'uefi'):
        notes.append('HVM-boot-params firmware is %r; taken as BIOS'
                     % firmware[:40])
    facts = {'firmware': 'uefi' if uefi else 'bios',
             'cores_per_socket': _soft_int(platform.get('cores-per-socket'))
             or 1}
    if uefi:
        secureboot = (platform.get('secureboot') or '').strip().lower()
        facts['secure_boot'] = _true(secureboot)
        if secureboot == 'auto':
            # xapi turns "auto" into true or false when the VM starts,
            # after whether the pool has UEFI certificates (xapi_vm.ml
            # update_platform_secureboot): a VM never started since.
            notes.append('platform secureboot is "auto" (on if the pool '
                         'has UEFI certificates); taken as off')
    return facts, mode


def _soft_int(value):
    text = (value or '').strip()
    if text.isdigit() and text.isascii() and len(text) <= 20:
        return int(text)
    return None


def os_version_command(vm_uuid):
    """``xe vm-param-get uuid=U param-name=os-version``: the OS the
    guest's agent reports (a map: name, distro, major, minor, uname),
    the whole answer one value whatever it holds."""
    return xe.param_get('vm', vm_uuid, 'os-version')


def os_version(run, vm_uuid, notes=None):
    """The guest's ``os-version`` map; {} (with a note) when the host
    cannot give it or it is not a map: it is only a hint, and the guest
    writes it."""
    argv = os_version_command(vm_uuid)
    try:
        text = xe.text_of(run(argv), argv)
        if text.endswith('\n'):
            text = text[:-1]
        if len(text) > xe.MAX_VALUE:
            raise errors.XeOutputError(command=xe.describe(argv),
                                       reason='longer than %d characters'
                                       % xe.MAX_VALUE)
        return xe.parse_map(' '.join(text.split('\n')), argv, 'os-version')
    except (exception.RemoteCommandError, errors.XeOutputError) as e:
        if notes is not None:
            notes.append('the OS the guest reports (os-version) was not '
                         'read: %s' % e)
        return {}


def _os(record, argv, osv=None):
    """The OS hints, as the XVA container reports them (``osv``: the
    guest's :func:`os_version`)."""
    out = {}
    osv = osv or {}
    other = xe.parse_map(record.get('other-config', ''), argv,
                         'other-config')
    if osv.get('distro'):
        out['distro'] = osv['distro']
    elif other.get('install-distro'):
        out['distro'] = other['install-distro']
    if osv.get('name'):
        out['description'] = osv['name']
    if osv.get('major'):
        out['version'] = osv['major'] + (
            '.' + osv['minor'] if osv.get('minor') else '')
    template = other.get('base_template_name') or record.get(
        'reference-label')
    if template:
        out['template'] = template
    return out


def vm_facts(record, argv=('xe', 'vm-list'), osv=None):
    """(facts, vcpus_at_startup, notes) of a ``vm-list`` record (and of
    the guest's ``os-version``, ``osv``)."""
    notes = []
    boot, mode = _firmware(record, notes, argv)
    cpus = _soft_int(record.get('VCPUs-max'))
    at_startup = _soft_int(record.get('VCPUs-at-startup'))
    if cpus and at_startup and at_startup != cpus:
        notes.append('the VM starts with %d of its %d VCPUs; the flavour '
                     'decides under KVM' % (at_startup, cpus))
    memory = _soft_int(record.get('memory-static-max'))
    facts = {
        'name': record.get('name-label', ''),
        'cpus': cpus,
        'cores_per_socket': boot.pop('cores_per_socket'),
        'memory_mb': memory // MiB if memory is not None else None,
        'virtualization': mode,
        'nics': [],
        'os': _os(record, argv, osv),
    }
    facts.update(boot)
    return facts, at_startup, notes


def nics(run, vm_uuid, host='host'):
    """The VM's NICs in device order: {'device', 'mac', 'network'}."""
    argv, records = _Host(run, host).query('vif', [('vm-uuid', vm_uuid)],
                                           VIF_FIELDS, ('device',))
    if len(records) > MAX_DEVICES:
        raise errors.XeOutputError(command=xe.describe(argv),
                                   reason='more than %d VIFs' % MAX_DEVICES)
    out = []
    for r in records:
        if r.get('vm-uuid', vm_uuid).lower() != vm_uuid:
            raise errors.XeOutputError(
                command=xe.describe(argv), reason='VIF %s belongs to VM %s'
                % (r.get('uuid'), r.get('vm-uuid')))
        nic = {'device': r['device'],
               'mac': (r.get('MAC') or '').lower()}
        network = r.get('network-name-label')
        if network and not xe.is_null(network):
            nic['network'] = network
        out.append(nic)
    out.sort(key=lambda n: _device_key(n['device']))
    return out


def disk_vbds(run, vm_uuid, host='host', notes=None):
    """The VM's disk VBDs in userdevice order (CD drives, floppies and
    empty drives left out, and said so in ``notes``)."""
    argv, records = _Host(run, host).query(
        'vbd', [('vm-uuid', vm_uuid)], VBD_FIELDS,
        ('uuid', 'vdi-uuid', 'userdevice', 'type', 'empty'))
    if len(records) > MAX_DEVICES:
        raise errors.XeOutputError(command=xe.describe(argv),
                                   reason='more than %d VBDs' % MAX_DEVICES)
    disks = []
    seen = set()
    for r in records:
        if r.get('vm-uuid', vm_uuid).lower() != vm_uuid:
            raise errors.XeOutputError(
                command=xe.describe(argv), reason='VBD %s belongs to VM %s'
                % (r.get('uuid'), r.get('vm-uuid')))
        kind = r['type']
        if kind != 'Disk' or xe.parse_bool(r['empty'], argv, 'empty'):
            if notes is not None:
                notes.append('skipped %s drive at userdevice %s%s'
                             % ('an empty' if _true(r['empty']) else 'a',
                                r['userdevice'],
                                '' if kind == 'Disk' else ' (%s)' % kind))
            continue
        vdi = _uuid_field(r, 'vdi-uuid', argv)
        if vdi in seen:
            raise errors.XeOutputError(command=xe.describe(argv),
                                       reason='VDI %s is attached twice'
                                       % vdi)
        seen.add(vdi)
        disks.append(r)
    disks.sort(key=lambda r: _device_key(r['userdevice']))
    return disks


def _image_format(sm_config):
    """The VDI's on-disk format from its sm-config, 'vhd' when unsaid:
    ``image-format`` (XCP-ng 8.3: vhd, qcow2), ``vdi_type`` (LVHD), or
    ``type`` (a file SR's raw VDI, ``<vdi-uuid>.raw``, which SM marks
    ``type: raw`` only: xapi-project/sm FileSR.py)."""
    for key in ('image-format', 'vdi_type', 'type'):
        value = (sm_config.get(key) or '').strip().lower()
        if value:
            return value
    return 'vhd'


def disks(run, vm_uuid, host='host', vm_name=None, notes=None,
          mount_base=DEFAULT_MOUNT_BASE, this_host=None,
          lvm_dev=DEFAULT_LVM_DEV):
    """The VM's disks (:class:`DiskInfo`) in userdevice order, each with
    the path of its VHD on the host (a file of a file SR under
    ``mount_base``, an LV's device node under ``lvm_dev``); refuses
    other SRs and, when ``this_host`` (the uuid of the host connected
    to) is given, SRs not attached on that host."""
    shown = repr(vm_name) if vm_name is not None else vm_uuid
    h = _Host(run, host)
    attached = _Attachments(h, this_host) if this_host else None
    #: The SRs by uuid: the pool-wide listing, at the first disk, and
    #: those asked for by uuid.
    srs = None
    out = []
    for vbd in disk_vbds(run, vm_uuid, host, notes):
        vdi_uuid = vbd['vdi-uuid'].lower()
        disk = 'userdevice %s' % vbd['userdevice']
        argv, vdis = h.query('vdi', [('uuid', vdi_uuid)], VDI_FIELDS,
                             ('uuid', 'virtual-size', 'sr-uuid'))
        vdi = _one(vdis, argv)
        if vdi is None or vdi['uuid'].lower() != vdi_uuid:
            raise errors.XeOutputError(command=xe.describe(argv),
                                       reason='no record of VDI %s'
                                       % vdi_uuid)
        size = xe.parse_int(vdi['virtual-size'], argv, 'virtual-size',
                            maximum=MAX_VIRTUAL_SIZE)
        sr_uuid = _uuid_field(vdi, 'sr-uuid', argv)
        if srs is None:
            srs = _pool_srs(h)
        if sr_uuid not in srs:
            sr_argv, found = h.query('sr', [('uuid', sr_uuid)], SR_FIELDS,
                                     ('uuid', 'type'))
            sr = _one(found, sr_argv)
            if sr is None or sr['uuid'].lower() != sr_uuid:
                raise errors.XeOutputError(command=xe.describe(sr_argv),
                                           reason='no record of SR %s'
                                           % sr_uuid)
            srs[sr_uuid] = sr
        sr = srs[sr_uuid]
        sr_type = sr['type']
        sr_name = sr.get('name-label', '')
        where = 'SR %r (%s) is of type %s' % (sr_name, sr_uuid, sr_type)
        if sr_type not in FILE_SR_TYPES + LVM_SR_TYPES:
            raise errors.UnsupportedStorage(
                host=host, vm=shown, disk=disk, reason='%s; only %s SRs '
                '(VHD files) and %s SRs (VHD logical volumes) are read'
                % (where, ', '.join(FILE_SR_TYPES),
                   ', '.join(LVM_SR_TYPES)))
        sm_config = xe.parse_map(vdi.get('sm-config', ''), argv,
                                 'sm-config')
        fmt = _image_format(sm_config)
        if fmt != 'vhd':
            raise errors.UnsupportedStorage(
                host=host, vm=shown, disk=disk, reason='VDI %s is stored '
                'as %s, not VHD%s' % (vdi_uuid, fmt[:40], (
                    ' (a raw logical volume: %s)' % lvm_way_out(
                        vdi_uuid, srs)) if sr_type in LVM_SR_TYPES
                    else ''))
        if attached is not None:
            attached.check(shown, disk, vdi, sr_uuid, sr_name)
        if sr_type in LVM_SR_TYPES:
            from any2kvm_os.sources.xenserver import lvm
            storage = 'lvm'
            path = lvm.device_path(lvm_dev, sr_uuid, vdi_uuid)
        else:
            storage = 'file'
            path = posixpath.join(mount_base, sr_uuid, vdi_uuid + '.vhd')
        out.append(DiskInfo(
            userdevice=vbd['userdevice'],
            device=vbd.get('device', ''),
            bootable=_true(vbd.get('bootable')), vdi_uuid=vdi_uuid,
            vdi_name=vdi.get('name-label', ''), virtual_size=size,
            sr_uuid=sr_uuid, sr_type=sr_type, sr_name=sr_name, path=path,
            storage=storage))
    return out


#: How many file SRs an LVM refusal names as places to move a disk to.
MAX_SUGGESTED_SRS = 3


def lvm_way_out(vdi_uuid, srs):
    """What to do with a disk on an LVM SR: move it, while the VM runs,
    to a file SR (Storage XenMotion, ``xe vdi-pool-migrate``: the VM
    keeps running, and its disk is then a VHD file this source reads),
    naming the file SRs of the pool listing ``srs`` (by uuid, as
    :func:`_pool_srs` gives them); or export the VM as an XVA."""
    files = sorted((r.get('name-label', ''), u) for u, r in srs.items()
                   if r.get('type') in FILE_SR_TYPES)
    named = ', '.join('%r (%s)' % (name[:60], u)
                      for name, u in files[:MAX_SUGGESTED_SRS])
    if len(files) > MAX_SUGGESTED_SRS:
        named += ', ...'
    return ('move the disk to a file SR while the VM runs (xe '
            'vdi-pool-migrate uuid=%s sr-uuid=<file SR>; %s), or use an '
            'XVA export' % (vdi_uuid, 'file SRs of this pool: ' + named
                            if named else 'xe sr-list type=ext and '
                            'type=nfs list them'))


def sr_command():
    """``xe sr-list params=uuid,name-label,type``: every SR of the pool,
    in one listing (:func:`disks` takes each disk's SR from it)."""
    return xe.list_command('sr', (), SR_FIELDS)


def _pool_srs(h):
    """The SRs of one pool-wide listing (:func:`sr_command`) that carry
    every field asked for, by uuid; empty when the host refuses the listing,
    answers it with what does not parse, or lists more than
    :data:`MAX_SRS`: each disk's SR is then asked for by its uuid, which
    fails (or not) with its own message."""
    argv = sr_command()
    try:
        records = xe.parse_records(h.run(argv), argv, SR_FIELDS)
    except (exception.RemoteCommandError, errors.XeOutputError) as e:
        LOG.debug('%s: pool-wide SR listing failed (%s): each SR by uuid',
                  h.host, errors.first_line(e))
        return {}
    if len(records) > MAX_SRS:
        return {}
    return dict((r['uuid'].lower(), r) for r in records
                if location.is_uuid(r.get('uuid', '')) and
                all(f in r for f in SR_FIELDS))


def inventory_command(path=DEFAULT_INVENTORY):
    """``cat PATH``: the host's inventory file."""
    return ['cat', path]


def pbd_command():
    """``xe pbd-list params=...``: every PBD of the pool (one per SR and
    host that may attach it), whether it is plugged."""
    return xe.list_command('pbd', (), PBD_FIELDS)


def parse_inventory(output, argv):
    """The ``KEY='value'`` lines of an inventory file, as a dict (the
    file is sourced by dom0 shell scripts: values are single-quoted)."""
    text = xe.text_of(output, argv)
    if len(text) > MAX_INVENTORY:
        raise errors.XeOutputError(command=xe.describe(argv),
                                   reason='more than %d characters'
                                   % MAX_INVENTORY)
    out = {}
    for line in text.split('\n'):
        key, sep, value = line.strip().partition('=')
        if not sep or not key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in '\'"':
            value = value[1:-1]
        out[key.strip()] = value
    return out


def host_uuids(run, inventory, notes=None):
    """(the uuid of the host the commands run on, that of its control
    domain): the inventory's ``INSTALLATION_UUID`` and
    ``CONTROL_DOMAIN_UUID``, each None when the inventory cannot be read
    or does not name it (the host's missing is said in ``notes``)."""
    argv = inventory_command(inventory)
    try:
        items = parse_inventory(run(argv), argv)
    except (exception.RemoteCommandError, errors.XeOutputError) as e:
        items = {}
        why = errors.first_line(e)
    else:
        why = 'it names no INSTALLATION_UUID'
    found = items.get('INSTALLATION_UUID', '')
    dom0 = items.get('CONTROL_DOMAIN_UUID', '')
    dom0 = dom0.lower() if dom0 and location.is_uuid(dom0) else None
    if found and location.is_uuid(found):
        return found.lower(), dom0
    if notes is not None:
        notes.append('could not tell which host this is from %s (%s): '
                     'whether each disk\'s SR is attached here was not '
                     'checked' % (inventory, why))
    return None, dom0


class _Attachments(object):
    """Where the SRs are attached (``pbd-list``, once), checked against
    the host connected to."""

    def __init__(self, h, this):
        self.h = h
        self.this = this.lower()
        self.pbds = None
        self.names = None

    def _load(self):
        if self.pbds is None:
            argv, self.pbds = self.h.query(
                'pbd', (), PBD_FIELDS, ('uuid', 'sr-uuid',
                                        'currently-attached'))
            for r in self.pbds:
                r['currently-attached'] = xe.parse_bool(
                    r['currently-attached'], argv, 'currently-attached')
        return self.pbds

    def _host_names(self, uuids):
        if self.names is None:
            try:
                _argv, hosts = self.h.query('host', (), HOST_FIELDS,
                                            ('uuid',))
            except exception.Any2KvmError:
                hosts = []
            self.names = dict((r['uuid'].lower(), r.get('name-label', ''))
                              for r in hosts)
        return ', '.join('%r (%s)' % (self.names[u], u)
                         if self.names.get(u) else u for u in uuids)

    def check(self, shown, disk, vdi, sr_uuid, sr_name):
        pbds = [r for r in self._load()
                if (r.get('sr-uuid') or '').lower() == sr_uuid]
        on = sorted(set((r.get('host-uuid') or '').lower() for r in pbds
                        if r['currently-attached']))
        if self.this in on:
            return
        if on:
            where = 'it is attached on %s' % self._host_names(on)
        elif pbds:
            where = 'it is attached on no host (its PBDs are unplugged)'
        else:
            where = 'it is attached on no host (it has no PBD)'
        raise errors.UnsupportedStorage(
            host=self.h.host, vm=shown, disk=disk, reason='VDI %r (%s) is '
            'on SR %r (%s), which is not attached on this host %s; %s'
            % (vdi.get('name-label', ''), vdi['uuid'].lower(), sr_name,
               sr_uuid, self._host_names([self.this]), where))


def discover(run, vm, host='host', mount_base=DEFAULT_MOUNT_BASE,
             inventory=None, lvm_dev=DEFAULT_LVM_DEV):
    """Find ``vm`` (a name-label or uuid) and collect its facts, NICs and
    disks: a :class:`Discovered`.  ``inventory``: the path of the host's
    inventory file (:data:`DEFAULT_INVENTORY`), read with ``cat`` to
    check that each disk's SR is attached on this host (and to know its
    control domain: :attr:`Discovered.control_domain`); None leaves the
    check out."""
    record = find_vm(run, vm, host)
    uuid = record['uuid'].lower()
    argv = xe.list_command('vm', [('uuid', uuid)], VM_FIELDS)
    os_notes = []
    osv = os_version(run, uuid, os_notes)
    facts, at_startup, notes = vm_facts(record, argv, osv)
    notes.extend(os_notes)
    facts['nics'] = nics(run, uuid, host)
    this, dom0 = (host_uuids(run, inventory, notes) if inventory
                  else (None, None))
    found = disks(run, uuid, host, vm_name=record['name-label'],
                  notes=notes, mount_base=mount_base, this_host=this,
                  lvm_dev=lvm_dev)
    for d in found:
        if d.storage == 'lvm':
            d.control_domain, d.this_host = dom0, this
    slots = vm_mod.xen_slots(d.userdevice for d in found)
    if slots is not None:
        facts['xen_slots'] = slots
    boot = [i for i, d in enumerate(found) if d.bootable]
    if len(boot) == 1 and boot[0]:
        # The one bootable VBD is not the first disk: it boots.
        facts['boot_disk'] = boot[0]
    return Discovered(uuid, record['power-state'], facts, found,
                      at_startup, notes)
