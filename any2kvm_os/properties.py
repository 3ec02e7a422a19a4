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

"""Image properties from what a source tells about its virtual machine.

The properties go to the Glance image (and to a Cinder volume's image
metadata) so that Nova boots the guest with matching virtual hardware.
Defaults: ``hw_scsi_model=virtio-scsi`` and ``hw_disk_bus=scsi`` (for a
Windows guest not looked inside, ``hw_disk_bus=ide``, or ``sata`` with
Secure Boot's q35); then what the
source says: OS type and distro, UEFI firmware, CPU topology, memory, disk
size, NIC model.  User properties override everything.
"""

import math
import re

DEFAULTS = {'hw_scsi_model': 'virtio-scsi', 'hw_disk_bus': 'scsi'}

#: The disk bus of a Windows guest that was not looked inside (see
#: :func:`image_properties`): IDE, which every Windows boots from when it
#: was installed on Xen's or Hyper-V's emulated IDE; AHCI where the
#: machine must be q35 (Secure Boot), which has no IDE.
WINDOWS_UNINSPECTED_BUS = 'ide'
WINDOWS_UNINSPECTED_Q35_BUS = 'sata'

#: Our NIC model names -> Nova's hw_vif_model values (libvirt/KVM).
VIF_MODELS = {'vmxnet3': 'vmxnet3', 'e1000': 'e1000', 'e1000e': 'e1000e',
              'pcnet32': 'pcnet', 'rtl8139': 'rtl8139', 'virtio': 'virtio',
              'ne2k_pci': 'ne2k_pci'}

#: Words found in VMware osType, XenServer distro names or OS
#: descriptions -> Glance's os_distro values, most specific first.
DISTROS = [
    ('windows', 'windows'), ('win', 'windows'), ('ubuntu', 'ubuntu'),
    ('debian', 'debian'), ('centos', 'centos'), ('rocky', 'rocky'),
    ('almalinux', 'almalinux'), ('rhel', 'rhel'), ('redhat', 'rhel'),
    ('red hat', 'rhel'), ('fedora', 'fedora'), ('opensuse', 'opensuse'),
    ('sles', 'sles'), ('suse', 'sles'), ('oracle', 'ol'),
    ('freebsd', 'freebsd'), ('netbsd', 'netbsd'), ('openbsd', 'openbsd'),
    ('solaris', 'opensolaris'), ('gentoo', 'gentoo'), ('arch', 'arch'),
]


def _os_words(vm):
    os_ = vm.get('os') or {}
    words = [os_.get(k) for k in ('vmware_os_type', 'distro',
                                  'description', 'template')]
    return ' '.join(w for w in words if isinstance(w, str)).lower()


def guess_distro(vm):
    words = _os_words(vm)
    for key, distro in DISTROS:
        if re.search(r'(^|[^a-z])%s' % re.escape(key), words):
            return distro
    return None


def source_vif_model(vm, distro=None):
    """``hw_vif_model`` from the source's facts: its first NIC's model,
    else, for a Xen VM (XenServer and XVA name no NIC model), what the
    guest has a driver for by its virtualization mode: an HVM guest had
    Xen's emulated rtl8139 (until PV drivers took over) and keeps it,
    except Windows, which has no inbox rtl8139 driver since Windows 8 and
    Server 2012 and gets e1000; a PV or PVH guest had only Xen's netfront,
    no emulated NIC, and gets e1000 (in every x86 Linux distribution's
    kernel; virtio-net is not implied).  None: Nova's default."""
    nics = vm.get('nics') or []
    if not nics:
        return None
    model = VIF_MODELS.get(nics[0].get('model') or '')
    if model:
        return model
    mode = vm.get('virtualization')
    if mode == 'hvm':
        return 'e1000' if distro == 'windows' else 'rtl8139'
    if mode in ('pv', 'pvh'):
        return 'e1000'
    return None


def image_properties(vm, virtual_size, defaults=True, overrides=None):
    """The properties for an image of a disk of ``virtual_size`` bytes of
    the VM described by ``vm`` (``any2kvm info``'s vm section)."""
    props = dict(DEFAULTS) if defaults else {}
    if defaults:
        props['min_disk'] = max(1, int(math.ceil(virtual_size / float(
            1 << 30))))
        distro = guess_distro(vm)
        if distro:
            props['os_distro'] = distro
            props['os_type'] = 'windows' if distro == 'windows' else 'linux'
        if vm.get('firmware') == 'uefi':
            props['hw_firmware_type'] = 'uefi'
            if vm.get('secure_boot'):
                props['os_secure_boot'] = 'required'
                props['hw_machine_type'] = 'q35'
        cpus = vm.get('cpus')
        cores = vm.get('cores_per_socket')
        if isinstance(cpus, int) and cpus > 0:
            if isinstance(cores, int) and 0 < cores <= cpus and \
                    cpus % cores == 0:
                props['hw_cpu_sockets'] = cpus // cores
                props['hw_cpu_cores'] = cores
        memory = vm.get('memory_mb')
        if isinstance(memory, int) and memory > 0:
            props['min_ram'] = memory
        os_type = (vm.get('os') or {}).get('vmware_os_type') or ''
        if '64' in os_type:
            props['architecture'] = 'x86_64'
        model = source_vif_model(vm, distro)
        if model:
            props['hw_vif_model'] = model
        if distro == 'windows':
            # Not looked inside (--no-inspect, an inspection that failed,
            # a BitLocker volume): Windows has no virtio storage driver
            # of its own, and one off XenServer seldom has virtio-win;
            # on virtio-scsi it stops with 0x7B.  Installed on emulated
            # IDE, it keeps AHCI from starting at boot (storahci Start
            # 3): IDE, unless Secure Boot needs q35.
            props.pop('hw_scsi_model', None)
            props['hw_disk_bus'] = WINDOWS_UNINSPECTED_Q35_BUS if \
                props.get('hw_machine_type') == 'q35' else \
                WINDOWS_UNINSPECTED_BUS
            if props['hw_disk_bus'] == 'ide':
                props['hw_machine_type'] = IDE_MACHINE[0]
    guest = vm.get('guest_properties') if defaults else None
    if guest:
        # What inspection found inside the guest replaces the defaults
        # and what the source's metadata said.
        for key in DEFAULTS:
            props.pop(key, None)
        props.update(guest)
    props.update(overrides or {})
    if defaults and props.get('hw_disk_bus') == 'ide' and \
            'hw_machine_type' not in props:
        # IDE asked for (by the user too): the machine that has it.
        props['hw_machine_type'] = IDE_MACHINE[0]
    # Glance takes min_disk and min_ram as image attributes (integers),
    # the rest as string properties.
    return {k: (v if k in ('min_disk', 'min_ram') else str(v))
            for k, v in props.items()}


# -- what is inside the guest (any2kvm_os.guest) ------------------------------

#: libguestfs's distro names -> Glance's os_distro values.
GUESTFS_DISTROS = {
    'archlinux': 'arch', 'oraclelinux': 'ol', 'redhat-based': 'rhel',
    'rhel': 'rhel', 'centos': 'centos', 'rocky': 'rocky', 'alma': 'almalinux',
    'almalinux': 'almalinux', 'debian': 'debian', 'ubuntu': 'ubuntu',
    'fedora': 'fedora', 'sles': 'sles', 'opensuse': 'opensuse',
    'gentoo': 'gentoo', 'freebsd': 'freebsd', 'netbsd': 'netbsd',
    'openbsd': 'openbsd', 'windows': 'windows', 'alpine': 'alpine',
}

#: libguestfs's architectures -> Glance's ``architecture`` values (i686
#: for 32-bit x86, which libguestfs calls i386 from a PE or ELF header).
ARCHITECTURES = {'x86_64': 'x86_64', 'i386': 'i686', 'i486': 'i686',
                 'i586': 'i686', 'i686': 'i686', 'aarch64': 'aarch64',
                 'ppc64le': 'ppc64le', 's390x': 's390x'}

#: Where a Linux module can be for the guest to boot from a disk behind it.
BOOTABLE = ('builtin', 'initramfs')


def _version_order(ch):
    # dpkg's order(): letters first, then the other characters, '~'
    # before everything, even the end of the string.
    if ch == '~':
        return -1
    if 'a' <= ch.lower() <= 'z':
        return ord(ch)
    return ord(ch) + 256


def debian_version_compare(a, b):
    """<0, 0 or >0 as the version ``a`` sorts before, with or after ``b``
    in Debian's ordering (dpkg's verrevcmp: runs of digits compare as
    numbers, ``6.1.0-10`` after ``6.1.0-9``; ``~`` before anything)."""
    digits = '0123456789'
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and a[i] not in digits) or (
                j < len(b) and b[j] not in digits):
            ac = _version_order(a[i]) if i < len(a) and \
                a[i] not in digits else 0
            bc = _version_order(b[j]) if j < len(b) and \
                b[j] not in digits else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == '0':
            i += 1
        while j < len(b) and b[j] == '0':
            j += 1
        first_diff = 0
        while i < len(a) and a[i] in digits and j < len(b) and \
                b[j] in digits:
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i] in digits:
            return 1
        if j < len(b) and b[j] in digits:
            return -1
        if first_diff:
            return first_diff
    return 0


def boot_kernel(guest):
    """The kernel facts a Linux guest boots with.  The one choice of both
    the properties (:func:`disk_bus`) and the names ``--fix`` writes
    (``probe.fix_bus``, which loads this file by path: keep it to the
    standard library).

    The kernel the bootloader boots by default (the probe's
    ``boot_default``), when that is a kernel with an image that does not
    need Xen.  Else the newest (:func:`debian_version_compare`) of the
    kernels with an image (a directory of modules without one is a kernel
    removed but not purged), preferring one that runs without Xen: what
    ``--fix`` makes the default of a GRUB legacy menu, and what an
    operator must make the default of any other bootloader."""
    linux = guest.get('linux') or {}
    kernels = linux.get('kernels') or []
    if not kernels:
        return None
    version = (linux.get('boot_default') or {}).get('version')
    # (Facts of an older probe have no 'image': taken as bootable.)
    bootable = [k for k in kernels if k.get('image', True)] or kernels
    chosen = [k for k in bootable if version and k.get('version') ==
              version and not k.get('xen_pv_only')]
    if chosen:
        return chosen[0]
    return newest_kernel([k for k in bootable if not k.get('xen_pv_only')]
                         or bootable)


def newest_kernel(kernels):
    """The newest of ``kernels`` by version, or None."""
    newest = None
    for k in kernels:
        if newest is None or debian_version_compare(
                k.get('version') or '', newest.get('version') or '') > 0:
            newest = k
    return newest


def windows_boot_services(guest):
    """{service: its facts} of the ControlSet the Windows guest's next boot
    starts from (``Default``; else ``Current``, else the first read)."""
    win = guest.get('windows') or {}
    sets = win.get('control_sets') or {}
    chosen = sets.get(win.get('default_control_set')) or sets.get(
        win.get('current_control_set')) or (
        list(sets.values())[0] if sets else {})
    return chosen.get('services') or {}


def _windows_services(guest):
    """{service: Start} of the Windows guest's ControlSet of its next
    boot (:func:`windows_boot_services`)."""
    return {name: svc.get('start')
            for name, svc in windows_boot_services(guest).items()}


def _overridden(svc):
    """The start types a service's ``StartOverride`` sets other than
    boot start (Windows 8 on: it wins over ``Start``; Windows sets 3 on
    a storage driver that found no device at boot, as vioscsi installed
    on XenServer, or storahci on a system installed on IDE), as text; a
    value that is not a DWORD counts, as it is."""
    out = []
    for value in (svc.get('start_override') or {}).values():
        if value != 0 and str(value) not in out:
            out.append(str(value))
    return sorted(out)


def _at_boot(svc, fix):
    """(starts at boot, what holds it back): a Windows storage service
    starts at boot when its ``Start`` is 0 and no ``StartOverride`` value
    says otherwise; with ``fix``, when it is installed at all (``--fix``
    sets its Start to 0 and its overrides to 0, :data:`probe.
    BOOT_SERVICES`)."""
    if not svc:
        return False, None
    if fix:
        return True, None
    if svc.get('start') != 0:
        return False, 'Start %s' % svc.get('start')
    override = _overridden(svc)
    if override:
        return False, 'its StartOverride, %s, wins over Start 0' % (
            ', '.join(override))
    return True, None


def disk_bus(guest, fix=False):
    """(hw_disk_bus, hw_scsi_model or None, reason) for ``guest``: the
    bus its boot disk can be found on; with ``fix``, once ``--fix`` has
    made the chosen bus's storage driver start at boot (a virtio driver
    held back by its ``StartOverride`` only; any installed AHCI driver).
    """
    if guest.get('type') == 'windows':
        services = windows_boot_services(guest)
        held = []
        for name, bus, model in (('vioscsi', 'scsi', 'virtio-scsi'),
                                 ('viostor', 'virtio', None)):
            svc = services.get(name)
            # A virtio driver with Start 3 is not made to start by the
            # fix (it may not be bound to the device): Start 0 and an
            # override only.
            ok, why = _at_boot(svc, fix and (svc or {}).get('start') == 0)
            if ok:
                return bus, model, 'the %s service starts at boot%s' % (
                    name, ' once its StartOverride is cleared (--fix)'
                    if _overridden(svc) else '')
            if why and (svc or {}).get('start') == 0:
                held.append('%s does not (%s; --fix clears it)' % (name,
                                                                   why))
        store = ' '.join((guest.get('windows') or {}).get(
            'driver_store') or ())
        note = ''.join('; ' + h for h in held)
        note += '; %s is in the driver store only' % store if store else ''
        for name in ('storahci', 'msahci'):
            ok, why = _at_boot(services.get(name), fix)
            if ok:
                return 'sata', None, (
                    'no virtio storage service starting at boot%s; %s '
                    '(AHCI) %s' % (note, name, 'is made to start at boot '
                                   '(--fix)' if fix else 'starts at boot'))
            if why:
                note += '; %s (AHCI) does not start at boot (%s; --fix ' \
                    'makes it)' % (name, why)
        return 'ide', None, ('no virtio storage service starting at boot%s;'
                             ' IDE is built into Windows' % note)
    kernel = boot_kernel(guest)
    if kernel is None:
        return None, None, 'no kernel found'
    mods = dict(kernel.get('modules') or {})
    where = ('kernel %s' % kernel.get('version'))
    if kernel.get('initramfs_error'):
        # An initramfs that could not be read: a module the kernel ships
        # is taken to be in it (what initramfs-tools' MODULES=most does),
        # and the reason says so.
        where += ' (initramfs not read: %s; its modules assumed in it)' % (
            kernel['initramfs_error'])
        mods = {k: ('initramfs' if v == 'module' else v)
                for k, v in mods.items()}
    pci = mods.get('virtio_pci') in BOOTABLE
    # A disk on virtio-scsi, SATA or IDE is a SCSI disk: sd_mod reads it
    # (facts recorded before sd_mod was looked for do not say: taken as
    # there, as they were).
    sd = 'sd_mod' not in mods or mods['sd_mod'] in BOOTABLE
    no_sd = '' if sd else ', but sd_mod (the SCSI disk driver) is %s' % (
        _where(mods['sd_mod']))
    if pci and sd and mods.get('virtio_scsi') in BOOTABLE:
        return 'scsi', 'virtio-scsi', '%s: virtio_scsi is %s' % (
            where, _where(mods['virtio_scsi']))
    if pci and mods.get('virtio_blk') in BOOTABLE:
        return 'virtio', None, '%s: virtio_blk is %s, virtio_scsi is %s%s' % (
            where, _where(mods['virtio_blk']),
            _where(mods.get('virtio_scsi')), no_sd)
    why = '%s: no virtio_scsi or virtio_blk at boot (virtio_scsi %s%s)' % (
        where, _where(mods.get('virtio_scsi')), no_sd)
    if sd and mods.get('ahci') in BOOTABLE:
        return 'sata', None, why + '; ahci is %s' % _where(mods['ahci'])
    if sd and mods.get('ata_piix') in BOOTABLE:
        return 'ide', None, why + '; ata_piix is %s' % _where(
            mods['ata_piix'])
    # Nothing at boot drives a disk of any bus: IDE is a guess, said so
    # (:func:`bootable_bus`).
    return 'ide', None, why + '; ata_piix is %s: %s' % (
        _where(mods.get('ata_piix')), NO_BUS)


#: What :func:`disk_bus`'s reason ends with when no bus can boot the
#: guest as it is.
NO_BUS = 'no bus can boot this initramfs, hw_disk_bus=ide is a guess'


def bootable_bus(guest):
    """False when :func:`disk_bus` found no bus the guest's boot can
    drive (its ``ide`` is a guess); True otherwise."""
    return not disk_bus(guest)[2].endswith(NO_BUS)


def _where(state):
    return {'builtin': 'built into the kernel',
            'initramfs': 'in the initramfs',
            'module': 'a module outside the initramfs',
            None: 'absent'}.get(state, state)


def vif_model(guest, source_model=None):
    """(hw_vif_model, reason)."""
    if guest.get('type') == 'windows':
        if 'netkvm' in _windows_services(guest):
            return 'virtio', 'the netkvm service is installed'
        return 'e1000', 'no netkvm (virtio-net) service'
    kernel = boot_kernel(guest) or {}
    mods = kernel.get('modules') or {}
    if mods.get('virtio_net'):
        return 'virtio', 'virtio_net is %s' % _where(mods['virtio_net'])
    if source_model and mods.get(source_model):
        return source_model, 'no virtio_net; the source\'s %s has its ' \
            'driver' % source_model
    return 'e1000', 'no virtio_net in kernel %s' % kernel.get('version')


#: The Linux kernel module of each disk bus's controller (``scsi``:
#: virtio-scsi, the only SCSI model chosen) and of each NIC model: what
#: a guest's ``alias scsi_hostadapter`` and ``alias ethN`` lines name
#: (RHEL 5's mkinitrd puts the scsi_hostadapter modules in the initrd).
BUS_MODULES = {'virtio': 'virtio_blk', 'scsi': 'virtio_scsi',
               'sata': 'ahci', 'ide': 'ata_piix'}
VIF_MODULES = {'virtio': 'virtio_net', 'e1000': 'e1000', 'e1000e': 'e1000e',
               'vmxnet3': 'vmxnet3', 'rtl8139': '8139cp',
               'pcnet': 'pcnet32', 'ne2k_pci': 'ne2k_pci'}


def kvm_modules(guest):
    """{'block': module, 'net': module} of a Linux guest: the modules of
    the bus (:func:`disk_bus`) and NIC model (:func:`vif_model`, without
    a source's model: a Xen VM names none) chosen for it, where its boot
    kernel (:func:`boot_kernel`) has them as loadable modules; None for
    one built into the kernel or absent (there is nothing to load: an
    alias naming it is dropped).  The one choice of ``--fix``'s modprobe
    aliases and of the inspection's warning about them."""
    kernel = boot_kernel(guest) or {}
    mods = kernel.get('modules') or {}
    out = {}
    for key, module in (
            ('block', BUS_MODULES.get(disk_bus(guest)[0])),
            ('net', VIF_MODULES.get(vif_model(guest)[0]))):
        out[key] = module if mods.get(module) in ('module',
                                                  'initramfs') else None
    return out


#: (hw_machine_type, reason) of a guest that boots from IDE only: a
#: cloud that makes q35 its default (``[libvirt] hw_machine_type``, as
#: many do for UEFI and PCIe) would fail its spawn.
IDE_MACHINE = ('pc', 'the guest boots from IDE only, which q35 (a cloud\'s '
               'default machine may be q35) does not have')


def uefi_machine(bus, source_vm=None):
    """(hw_machine_type, reason) of a UEFI guest booting from ``bus``.

    q35, unless the guest can only boot from IDE: q35 has no IDE
    controller (libvirt refuses the disk, so Nova fails the spawn), and
    OVMF runs on the i440fx machine (``pc``) too; QEMU's firmware
    descriptor for OVMF without Secure Boot lists both machines.
    Secure Boot is the exception: it needs q35 (SMM), whatever the bus
    (see :func:`machine_warning`)."""
    if bus == 'ide' and not (source_vm or {}).get('secure_boot'):
        return 'pc', ('UEFI guest that boots from IDE only: q35 has no IDE '
                      'controller, and OVMF also runs on the i440fx '
                      'machine')
    if (source_vm or {}).get('secure_boot'):
        return 'q35', 'UEFI guest with Secure Boot (it needs q35)'
    return 'q35', 'UEFI guest'


def machine_warning(props):
    """The warning for ``props`` that cannot spawn: IDE on q35."""
    if props.get('hw_disk_bus') == 'ide' and \
            props.get('hw_machine_type') == 'q35':
        return ('hw_disk_bus=ide on hw_machine_type=q35, which Secure Boot '
                'needs: q35 has no IDE controller, so the server cannot '
                'spawn; get virtio or AHCI into the guest\'s initramfs '
                '(--fix with virt-v2v) or turn Secure Boot off '
                '(os_secure_boot=disabled, hw_machine_type=pc)')
    return None


def guest_properties(guest, source_vm=None):
    """(properties, reasons) for what inspection found in ``guest`` (one
    guest of :mod:`any2kvm_os.guest.probe`'s output): the bus the guest
    can boot from, the NIC model it has a driver for, its OS, firmware
    and agent.  ``reasons`` says why, per property."""
    props = {}
    reasons = {}
    if not guest or not guest.get('type') or guest.get('type') == 'unknown':
        return props, reasons
    os_type = guest['type']
    if os_type in ('linux', 'windows'):
        props['os_type'] = os_type
    distro = GUESTFS_DISTROS.get(guest.get('distro') or '')
    if distro:
        props['os_distro'] = distro
    major = guest.get('major_version')
    if isinstance(major, int) and major > 0:
        minor = guest.get('minor_version')
        props['os_version'] = '%d.%d' % (major, minor) if (
            isinstance(minor, int) and os_type == 'windows') else str(major)
    arch = ARCHITECTURES.get(guest.get('arch'))
    if arch:
        props['architecture'] = arch
    bus, model, why = disk_bus(guest)
    if bus:
        props['hw_disk_bus'] = bus
        reasons['hw_disk_bus'] = why
        if model:
            props['hw_scsi_model'] = model
            reasons['hw_scsi_model'] = why
    nics = (source_vm or {}).get('nics') or []
    source_model = VIF_MODELS.get((nics[0].get('model') or '')
                                  if nics else '')
    if os_type == 'windows' or boot_kernel(guest):
        props['hw_vif_model'], reasons['hw_vif_model'] = vif_model(
            guest, source_model)
    fw = guest.get('firmware')
    if fw:
        props['hw_firmware_type'] = fw
        reasons['hw_firmware_type'] = (
            'an EFI system partition' if fw == 'uefi' else
            'no EFI system partition')
        if fw == 'uefi':
            props['hw_machine_type'], reasons['hw_machine_type'] = \
                uefi_machine(props.get('hw_disk_bus'), source_vm)
    if props.get('hw_disk_bus') == 'ide' and 'hw_machine_type' not in props:
        props['hw_machine_type'], reasons['hw_machine_type'] = IDE_MACHINE
    agent = ((guest.get('linux') or {}).get('tools') or {}).get(
        'qemu_guest_agent') or []
    if not agent and 'qemu-ga' in _windows_services(guest):
        agent = ['qemu-ga']
    if agent:
        props['hw_qemu_guest_agent'] = 'yes'
        reasons['hw_qemu_guest_agent'] = '%s installed' % ', '.join(agent)
    return props, reasons
