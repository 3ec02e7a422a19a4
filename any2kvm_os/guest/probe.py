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

"""Look inside guest disks with libguestfs; print what was found as JSON.

A standalone program (the standard library and the ``guestfs`` binding
only): Debian's ``python3-guestfs`` is built for ``/usr/bin/python3``, not
for the project's virtualenv, so :mod:`any2kvm_os.guest.inspect` runs this
file with that interpreter (``[any2kvm] guestfs_python``)::

    python3 probe.py [--backend B] [--backend-setting S]... \\
        [--format F] inspect DISK...
    python3 probe.py ... inspect --fix DISK...

``inspect`` adds every DISK read-only to ONE appliance (the disks of one
VM, or several test guests at once) and reports every operating system
found, each with the index of the disk holding its root.  ``--fix`` opens
the disks read-write (the caller gives qcow2 overlays, so that a failure
leaves the disks as they were) and rewrites, in a Linux guest, the device
names KVM will not have and the Xen-only consoles; in a Windows guest, the
SYSTEM hive (the Citrix PV drivers' services and filter entries, the
start of the chosen bus's storage driver).  For a Windows guest it also
reads the boot configuration (the BCD hive, ``/Boot/BCD`` or
``/EFI/Microsoft/Boot/BCD`` on a partition of the guest's disk), never
changing it; where that is the EFI system partition and it lacks the UEFI
fallback bootloader (``\\EFI\\Boot\\bootx64.efi``), ``--fix`` copies
Windows' boot manager there.

The output is one JSON object on stdout: ``{"guests": [...]}``, or
``{"error": "...", "missing": "guestfs"?}`` with a non-zero status.
"""

import argparse
import gzip
import io
import json
import lzma
import os
import posixpath
import re
import sys
import tempfile

#: Kernel modules whose presence decides the buses and the NIC model
#: (``sd_mod``: the SCSI disk driver, which a disk on virtio-scsi, SATA
#: or IDE needs beside its controller's).
MODULES = ('virtio_blk', 'virtio_scsi', 'virtio_net', 'virtio_pci',
           'sd_mod', 'ahci', 'ata_piix', 'ata_generic', 'e1000', 'e1000e',
           'vmxnet3', 'vmw_pvscsi', 'xen_blkfront', 'xen_netfront',
           'hv_storvsc', 'hv_netvsc')

#: Files that name disks: /etc/fstab, /etc/crypttab, GRUB's device maps
#: (``(hd0) /dev/xvda``: grub-install, at the next GRUB upgrade, looks
#: its disk up there), bootloader files.
NAME_FILES = ('/etc/fstab', '/etc/crypttab', '/boot/grub/device.map',
              '/boot/grub2/device.map', '/etc/default/grub_installdevice',
              '/etc/initramfs-tools/conf.d/resume')
#: The files of :data:`NAME_FILES` that take device paths only.
DEVICE_PATH_FILES = ('device.map', 'grub_installdevice')
#: systemd's units that mount or swap a device (``What=``): a unit
#: whose device never appears fails ``local-fs.target``, and the guest
#: stops at the emergency shell.
UNIT_DIR = '/etc/systemd/system'
UNIT_SUFFIXES = ('.mount', '.swap', '.automount')
#: The most units looked at.
MAX_UNITS = 256
BOOT_FILES = ('/boot/grub/grub.cfg', '/boot/grub2/grub.cfg',
              '/etc/default/grub', '/boot/grub/menu.lst',
              '/boot/grub/grub.conf', '/etc/grub.conf',
              '/boot/extlinux/extlinux.conf', '/boot/syslinux/syslinux.cfg',
              '/extlinux.conf', '/etc/kernel/cmdline',
              '/etc/sysconfig/bootloader')
BOOT_GLOBS = (('/boot/efi/EFI', 'grub.cfg'), ('/boot/loader/entries', None))

#: A disk name in a configuration file.
NAME_RE = re.compile(
    r'(?<![\w/.-])(/dev/(?:xvd|hd|sd|vd)[a-z]+[0-9]*'
    r'|(?:UUID|LABEL|PARTUUID|PARTLABEL)=[^\s,"\';]+)')
DEV_RE = re.compile(r'^/dev/(xvd|hd|sd|vd)([a-z]+)([0-9]*)$')
#: A Xen-only console on a kernel command line: the argument alone,
#: never a quote around it (``GRUB_CMDLINE_LINUX="console=hvc0"`` keeps
#: both of its quotes).
XEN_CONSOLE_RE = re.compile(
    r'(?<![\w-])(?:console=(?:hvc|xvc)[0-9]+[^\s"\']*|xencons=[^\s"\']+)')

#: Files that name the guest's network interfaces: ifupdown, netplan,
#: ifcfg (Red Hat, SUSE), NetworkManager, systemd-networkd.
NET_FILES = ('/etc/network/interfaces',)
#: (directory, name prefix, name suffix) of the files of each kind.
NET_GLOBS = (('/etc/network/interfaces.d', '', ''),
             ('/etc/netplan', '', '.yaml'),
             ('/etc/sysconfig/network-scripts', 'ifcfg-', ''),
             ('/etc/sysconfig/network', 'ifcfg-', ''),
             ('/etc/NetworkManager/system-connections', '', '.nmconnection'),
             ('/etc/systemd/network', '', '.network'))
#: udev's rules that pin a NIC's name to its MAC (older distributions):
#: a new MAC gets the next name (eth1), which no configuration names.
PERSISTENT_NET = '/etc/udev/rules.d/70-persistent-net.rules'
#: The names a Xen NIC had: ``ethN`` (netfront has no slot, so older
#: systemd and every earlier udev kept the kernel's name) or ``enXN``
#: (systemd's name for it since v250).  On KVM a virtio or e1000 NIC is a
#: PCI device: systemd names it by its slot (ens3, enp1s0), and a
#: configuration written for the Xen name brings up nothing.
XEN_NIC_RE = re.compile(r'(?<![\w.:-])(eth[0-9]+|enX[0-9]+)(?![\w-])')
#: LVM's devices file (RHEL 9, and 8.x where enabled): the only disks
#: LVM uses, by id; a Xen disk's id (its name: blkfront has no wwid) is
#: not the KVM disk's.  dracut copies it into the initramfs.
LVM_DEVICES = '/etc/lvm/devices/system.devices'

#: What keeps the kernel's names (eth0, eth1, ... in PCI order).
IFNAMES_ARG = 'net.ifnames=0'
#: A line that binds a network configuration to the NIC's MAC, which
#: changes on KVM (ifcfg, NetworkManager keyfiles).
MAC_BIND_RE = re.compile(r'^[ \t]*(?:HWADDR|mac-address)[ \t]*=.*\n?', re.M)
#: A match on the NIC's MAC that is reported, not changed: netplan's
#: ``match: macaddress:``, systemd-networkd's and .link files'
#: ``MACAddress=`` (a whole stanza chooses its NIC by it).
MAC_MATCH_RE = re.compile(
    r'^[ \t]*(?:macaddress[ \t]*:|MACAddress[ \t]*=)', re.M)

ESP_GUID = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
BIOS_BOOT_GUID = '21686148-6449-6E6F-744E-656564454649'

#: Hypervisor tools: (fact, package names, files).
TOOLS = (
    ('xe_guest_utilities', ('xe-guest-utilities',
                            'xe-guest-utilities-xenstore',
                            'xenserver-guest-utilities'),
     ('/usr/sbin/xe-daemon', '/usr/sbin/xe-linux-distribution')),
    ('vmware_tools', ('open-vm-tools', 'vmware-tools', 'vmware-tools-core'),
     ('/usr/bin/vmtoolsd', '/etc/vmware-tools')),
    ('hyperv_daemons', ('hyperv-daemons', 'hv-kvp-daemon-init',
                        'microsoft-hyper-v'),
     ('/usr/sbin/hv_kvp_daemon', '/usr/sbin/hypervkvpd')),
    ('qemu_guest_agent', ('qemu-guest-agent',),
     ('/usr/bin/qemu-ga', '/usr/sbin/qemu-ga')),
)

#: Windows services of interest, by what they drive.
WINDOWS_SERVICES = {
    'virtio': ('viostor', 'vioscsi', 'netkvm', 'balloon', 'vioserial'),
    'citrix': ('xenbus', 'xenvbd', 'xennet', 'xenvif', 'xeniface',
               'xenfilt', 'xenbus_monitor', 'xenagent', 'scsifilt'),
    'vmware': ('pvscsi', 'vmxnet3', 'vmxnet3ndis6', 'vmci'),
    'ide': ('atapi', 'intelide', 'pciide', 'msahci', 'storahci'),
    'tools': ('qemu-ga',),
}
#: The Xen PV drivers' names: ``xen*`` (every XenServer VM Tools and
#: xenproject's win-pv-drivers) and :data:`WINDOWS_SERVICES`' citrix
#: group, which adds ``scsifilt`` (the disk filter of the Citrix tools
#: before 7.x, over ``xenutil``: XCP-ng's XenBootFix removes it from
#: the class filters to recover such a guest off Xen).
CITRIX_RE = re.compile(r'^xen', re.I)
MAX_FILE = 4 << 20


class ProbeError(Exception):
    pass


def _hash(value):
    """A hashtable of the guestfs binding: a dict, or (older) pairs."""
    return dict(value) if not isinstance(value, dict) else value


def letters_index(letters):
    """'a' -> 0, 'z' -> 25, 'aa' -> 26: a disk's index in its name."""
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - 96)
    return index - 1


def index_letters(index):
    """The reverse of :func:`letters_index`: 0 -> 'a', 26 -> 'aa'."""
    out = ''
    index += 1
    while index:
        index, r = divmod(index - 1, 26)
        out = chr(97 + r) + out
    return out


def parse_slots(text):
    """``--xen-slots 0,1,2,4``: the Xen slot (the VBD's ``userdevice``)
    of each disk given, in order -> {slot: position}; None when not
    given."""
    if not text:
        return None
    slots = {}
    for position, item in enumerate(text.split(',')):
        slots[int(item)] = position
    return slots


def position(name, slots):
    """The position, among the disks given, of the disk that the guest's
    device ``name`` is on (/dev/xvde1 -> 3 when the VM's disks sit in Xen
    slots 0, 1, 2 and 4: the template's CD drive holds slot 3).  A Xen
    name (xvd, hd: the letter is the slot) is looked up in ``slots``
    when known, and is None when no disk given sits there; any other
    name, or a Xen name without ``slots``, is taken in order (None past
    the last of ``slots``' disks: see :func:`in_order`)."""
    m = DEV_RE.match(name)
    if not m:
        return None
    index = letters_index(m.group(2))
    if slots is not None and m.group(1) in ('xvd', 'hd'):
        return slots.get(index)
    if slots is not None and index >= len(slots):
        return None     # past the last disk given
    return index


def in_order(count):
    """The slots of ``count`` disks given without their Xen slots
    (``--xen-slots``): in order, the first in slot 0, and no disk past
    the last one (/dev/xvdc1 of a VM given as two disk files is on none
    of them: left as it is, and warned about, not made /dev/sdc1)."""
    return {i: i for i in range(count)}


def disk_index(device):
    """/dev/sdb2 -> 1 (the disk's index in the order they were added)."""
    m = re.match(r'^/dev/[shv]d([a-z]+)', device or '')
    if not m:
        return None
    return letters_index(m.group(1))


#: How a guest's file is decoded where it is to be written back (by the
#: fixes): its bytes that are not UTF-8 (a Latin-1 comment in an old
#: fstab or menu.lst) become surrogates, and :func:`_kept` makes them the
#: same bytes again.  Facts are decoded with 'replace' (JSON-safe).
KEEP = 'surrogateescape'


def _read(g, path, limit=MAX_FILE, errors='replace', follow=True):
    """The text of the guest's regular file ``path`` (``follow``: through
    a symbolic link), or None (none, or more than ``limit`` bytes)."""
    try:
        if not g.is_file(path, followsymlinks=follow):
            return None
        if g.filesize(path) > limit:
            return None
        return g.read_file(path).decode('utf-8', errors)
    except RuntimeError:
        return None


def _kept(text):
    """The bytes of a text read with :data:`KEEP`: every byte the fix did
    not change is written back as it was."""
    return text.encode('utf-8', KEEP)


def _decimal(text):
    """Whether the guest's ``text`` is a number as its tools read one:
    ASCII digits (``str.isdigit`` takes "\u00b2" too, which int()
    refuses), at most 20 of them (int() refuses thousands)."""
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def _exists(g, path):
    try:
        return bool(g.exists(path))
    except RuntimeError:
        return False


def _ls(g, path):
    try:
        if not g.is_dir(path, followsymlinks=True):
            return []
        return sorted(g.ls(path))
    except RuntimeError:
        return []


def _case_path(g, path):
    """``path`` as the guest's filesystem spells it (Windows' names
    match without regard to case), or None where a directory on the way
    is missing."""
    try:
        return g.case_sensitive_path(path)
    except RuntimeError:
        return None


def _is_file(g, path):
    try:
        return bool(path) and bool(g.is_file(path))
    except RuntimeError:
        return False


# -- disks and firmware -------------------------------------------------------

def partitions(g, disk=None):
    """The partition tables of the disks (all, or index ``disk``)."""
    out = []
    for dev in g.list_devices():
        if disk is not None and disk_index(dev) != disk:
            continue
        entry = {'device': dev, 'table': None, 'esp': False,
                 'bios_boot': False, 'partitions': [],
                 'boot_code': _boot_code(g, dev)}
        try:
            entry['table'] = g.part_get_parttype(dev)
            parts = g.part_list(dev)
        except RuntimeError:
            out.append(entry)
            continue
        for p in parts:
            num = p['part_num']
            kind = None
            try:
                if entry['table'] == 'gpt':
                    guid = g.part_get_gpt_type(dev, num).upper()
                    kind = {ESP_GUID: 'esp', BIOS_BOOT_GUID: 'bios_boot'}.get(
                        guid)
                elif entry['table'] == 'msdos':
                    if g.part_get_mbr_id(dev, num) == 0xef:
                        kind = 'esp'
            except RuntimeError:
                pass
            if kind:
                entry[kind] = True
            entry['partitions'].append({'number': num, 'kind': kind})
        out.append(entry)
    return out


#: The boot code of a master boot record: what a BIOS runs of the first
#: sector (the rest is the disk signature and the partition table).
MBR_CODE = 440


def _boot_code(g, dev):
    """Whether the master boot record of ``dev`` has boot code (not all
    zeros): a BIOS runs it.  A Xen PV guest was started by pygrub, which
    reads the bootloader's menu and needs none, so its installer may never
    have written any.  None when it could not be read."""
    try:
        return any(bytearray(g.pread_device(dev, MBR_CODE, 0)))
    except RuntimeError:
        return None


def firmware(tables):
    if any(t['esp'] for t in tables):
        return 'uefi'
    return 'bios'


# -- Linux --------------------------------------------------------------------

def name_kind(name):
    m = DEV_RE.match(name)
    if m:
        return m.group(1)
    return name.split('=', 1)[0].lower()


def _real(g, path):
    """``path`` with its links resolved in the guest (libguestfs's
    realpath, inside the guest's root); ``path`` itself when that
    fails (a link to nowhere)."""
    try:
        real = g.realpath(path)
    except RuntimeError:
        return path
    return real if isinstance(real, str) and real.startswith('/') else path


def boot_files(g):
    """The bootloader files of the guest: the fixed places, the ESP's
    grub.cfg files and the boot loader entries, at most
    :data:`MAX_BOOT_ENTRIES` of each directory (the guest's: untrusted;
    every file is read, up to MAX_FILE bytes).  Each file once, by its
    real path: RHEL 5 and 6 reach grub.conf as menu.lst and as
    /etc/grub.conf too (links), and one file read, fixed and reported
    under three names was fixed under one and still reported unfixed
    under the others."""
    files = [p for p in BOOT_FILES if _exists(g, p)]
    for top, name in BOOT_GLOBS:
        found = 0
        for entry in _ls(g, top):
            if found >= MAX_BOOT_ENTRIES:
                break
            path = top + '/' + entry
            if name is None:
                if entry.endswith('.conf'):
                    files.append(path)
                    found += 1
            elif _exists(g, path + '/' + name):
                files.append(path + '/' + name)
                found += 1
    real = []
    for path in files:
        path = _real(g, path)
        if path not in real:
            real.append(path)
    return real


def unit_files(g):
    """The guest's own systemd mount, automount and swap units
    (:data:`UNIT_DIR`), at most :data:`MAX_UNITS`."""
    return _files_in(g, UNIT_DIR, lambda e: e.endswith(UNIT_SUFFIXES),
                     MAX_UNITS)


def _files_in(g, top, keep, limit):
    """The regular files (through links) of the guest's directory
    ``top`` whose names ``keep`` takes (hidden ones never), in name
    order; at most ``limit`` names looked at (the guest's: untrusted)."""
    entries = [e for e in _ls(g, top) if not e.startswith('.') and keep(e)]
    files = []
    for entry in entries[:limit]:
        path = top + '/' + entry
        try:
            if g.is_file(path, followsymlinks=True):
                files.append(path)
        except RuntimeError:
            continue
    return files


#: The extended attribute that holds a file's SELinux label.
SELINUX_XATTR = 'security.selinux'
#: A label as SELinux writes one (``user:role:type:level``, the level's
#: categories included); anything else is not copied.
_LABEL_RE = re.compile(r'^[A-Za-z0-9_.]+:[A-Za-z0-9_.]+:[A-Za-z0-9_.]+'
                       r'(?::[A-Za-z0-9_.,:\- ]+)?$')
MAX_LABEL = 255
#: The files of a directory looked at for a label to copy.
MAX_LABEL_SIBLINGS = 64


def selinux_label(g, path):
    """The SELinux label of the guest's ``path`` (not through a link),
    without its trailing NUL; None when it has none, the file system
    keeps none (vfat), or it is not a label."""
    try:
        value = g.lgetxattr(path, SELINUX_XATTR)
    except RuntimeError:
        return None
    value = bytes(value).rstrip(b'\0')
    try:
        text = value.decode('ascii')
    except UnicodeDecodeError:
        return None
    if len(text) > MAX_LABEL or not _LABEL_RE.match(text):
        return None
    return text


def label_made(g, path):
    """Give ``path``, a file or directory ``--fix`` made, the SELinux
    label its neighbours have, as ``restorecon`` would: libguestfs
    writes with no policy loaded, so a file it creates has no label, and
    a guest that enforces SELinux sees it as ``unlabeled_t`` (files it
    only rewrites keep theirs: libguestfs writes them in place).  A file
    takes the label of the first file of its directory that has one
    (in name order), else the directory's; a directory its parent's.
    Returns the label given, or None (the guest's files have none: no
    SELinux, or a file system without labels)."""
    parent = posixpath.dirname(path)
    label = None
    try:
        is_dir = g.is_dir(path, followsymlinks=False)
    except RuntimeError:
        return None
    if not is_dir:
        name = posixpath.basename(path)
        for sibling in _files_in(g, parent, lambda e: e != name,
                                 MAX_LABEL_SIBLINGS):
            try:
                if g.is_symlink(sibling):
                    continue        # (a link's own label)
            except RuntimeError:
                continue
            label = selinux_label(g, sibling)
            if label:
                break
    label = label or selinux_label(g, parent)
    if not label:
        return None
    g.lsetxattr(SELINUX_XATTR, label, len(label), path)
    return label


def unit_name_device(path):
    """The Xen device a unit's own name stands for
    (``dev-xvda5.swap``: systemd's escaped path), or None: a name the
    fix cannot change (the unit's links name it)."""
    base = path.rsplit('/', 1)[-1]
    m = re.match(r'^dev-((?:xvd|hd)[a-z]+[0-9]*)\.(?:swap|mount)$', base)
    return '/dev/' + m.group(1) if m else None


def bootloader(files):
    for path, kind in (('/boot/grub/grub.cfg', 'grub2'),
                       ('/boot/grub2/grub.cfg', 'grub2'),
                       ('/boot/grub/menu.lst', 'grub-legacy'),
                       ('/boot/grub/grub.conf', 'grub-legacy'),
                       ('/boot/extlinux/extlinux.conf', 'extlinux'),
                       ('/extlinux.conf', 'extlinux'),
                       ('/boot/syslinux/syslinux.cfg', 'syslinux')):
        if path in files:
            return kind
    # RHEL 7 and 8 on UEFI: GRUB 2's only grub.cfg is on the ESP (RHEL
    # 8's BLS entries are GRUB's, through its blscfg).
    if any(p.startswith(ESP_MOUNT + '/EFI/') and p.endswith('/grub.cfg')
           for p in files):
        return 'grub2'
    if any(p.startswith('/boot/loader/entries/') for p in files):
        return 'systemd-boot'
    return None


def _reader(g):
    """:func:`_read` of the guest's files, each read once: for the facts
    that read the same files (the bootloader's)."""
    texts = {}

    def read(path):
        if path not in texts:
            texts[path] = _read(g, path)
        return texts[path]
    return read


def disk_names(g, slots=None, read=None, boot=None):
    """[{path, names, kinds, xen_consoles, unknown}] of fstab, crypttab
    and the bootloader files; ``unknown``: the Xen device names that are
    on none of the VM's disks (``slots``, see :func:`position`);
    ``read``: how a file is read (:func:`_reader`); ``boot``: the
    :func:`boot_files` when the caller has them (each costs the
    appliance a call per file)."""
    read = read or _reader(g)
    out = []
    boot = boot_files(g) if boot is None else boot
    files = [p for p in NAME_FILES if _exists(g, p)] + unit_files(g) + \
        boot + grub_envs(g)
    for path in files:
        text = read(path)
        if text is None:
            continue
        names = []
        for line in text.splitlines():
            if line.lstrip().startswith('#'):
                continue
            names.extend(NAME_RE.findall(line))
        names = sorted(set(names))
        unknown = [n for n in names if DEV_RE.match(n) and
                   position(n, slots) is None]
        entry = {}
        named = unit_name_device(path)
        if named:
            # Named after its device: reported, never rewritten (the
            # name and What= must agree).
            entry['unit_named'] = named
        entry.update(path=path, names=names, unknown=unknown,
                     kinds=sorted(set(name_kind(n) for n in names)),
                     xen_consoles=sorted(set(XEN_CONSOLE_RE.findall(text))))
        out.append(entry)
    return out


def _uncommented(text):
    return ''.join(line for line in (text or '').splitlines(True)
                   if not line.lstrip().startswith('#'))


#: Most network configuration files read of one directory (a router's
#: hundreds of VLAN interfaces fit; a hostile guest's million do not).
MAX_NET_FILES = 256


def net_files(g):
    """The guest's network configuration files (:data:`NET_GLOBS`), at
    most :data:`MAX_NET_FILES` of each directory."""
    files = [p for p in NET_FILES if _exists(g, p)]
    for top, prefix, suffix in NET_GLOBS:
        files += _files_in(g, top, lambda e, p=prefix, s=suffix:
                           e.startswith(p) and e.endswith(s), MAX_NET_FILES)
    return files


def network_facts(g, boot_texts=None):
    """What of the guest's network setup names its Xen NIC: {'files':
    [{path, names (ethN/enXN), mac_bound, mac_match}], 'pinned': the names
    70-persistent-net.rules pins to MACs, 'ifnames_off': whether a
    kernel command line already keeps the kernel's names};
    ``boot_texts``: the bootloader files' texts and
    :func:`kernelopts_lines`, when read already."""
    files = []
    for path in net_files(g):
        text = _uncommented(_read(g, path))
        names = sorted(set(XEN_NIC_RE.findall(text)))
        bound = bool(MAC_BIND_RE.search(text))
        match = bool(MAC_MATCH_RE.search(text))
        if names or bound or match:
            files.append({'path': path, 'names': names, 'mac_bound': bound,
                          'mac_match': match})
    rules = _uncommented(_read(g, PERSISTENT_NET))
    pinned = sorted(set(re.findall(r'NAME="?([\w.-]+)', rules))) \
        if 'ATTR{address}' in rules else []
    if boot_texts is None:
        boot_texts = [_read(g, p) or '' for p in boot_files(g)]
        boot_texts += kernelopts_lines(g, boot_texts)
    off = any(IFNAMES_ARG in _uncommented(t) for t in boot_texts)
    return {'files': files, 'pinned': pinned, 'ifnames_off': off}


def _module_name(path):
    base = path.rsplit('/', 1)[-1]
    base = re.sub(r'\.ko(\.(xz|gz|zst))?$', '', base)
    return base.replace('-', '_') if base != path.rsplit('/', 1)[-1] \
        else None


def unzstd(data):
    """zstd is not in the standard library: the zstd program (Debian's
    initramfs-tools compresses with it by default)."""
    import shutil
    import subprocess
    if not shutil.which('zstd'):
        raise ValueError('zstd-compressed initramfs and no zstd program')
    r = subprocess.run(['zstd', '-dcq'], input=data, capture_output=True,
                       timeout=300)
    if r.returncode != 0:
        raise ValueError('zstd: %s' % r.stderr.decode('utf-8', 'replace'))
    return r.stdout


def _cpio_entries(data):
    """(name, data, offset, size) of each member of a (possibly
    concatenated, gzip/xz/zstd compressed) newc cpio archive; ValueError
    for what cannot be read here."""
    pos = 0
    while pos < len(data):
        while pos < len(data) and data[pos] == 0:
            pos += 1
        if pos >= len(data):
            break
        head = data[pos:pos + 6]
        if head.startswith(b'\x1f\x8b'):
            rest = gzip.GzipFile(fileobj=io.BytesIO(data[pos:])).read()
            yield from _cpio_entries(rest)
            return
        if head.startswith(b'\xfd7zXZ') or head.startswith(b']\x00\x00'):
            yield from _cpio_entries(lzma.decompress(data[pos:]))
            return
        if head.startswith(b'\x28\xb5\x2f\xfd'):
            yield from _cpio_entries(unzstd(data[pos:]))
            return
        if head not in (b'070701', b'070702'):
            raise ValueError('initramfs compression not readable here '
                             '(%r)' % head[:4])
        fields = data[pos + 6:pos + 110]
        namesize = int(fields[88:96], 16)
        filesize = int(fields[48:56], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode(
            'utf-8', 'replace')
        pos = (pos + 110 + namesize + 3) & ~3
        start = pos
        pos = (pos + filesize + 3) & ~3
        if name == 'TRAILER!!!':
            continue
        yield name, data, start, filesize


def cpio_names(data):
    """The member names of a (possibly concatenated, gzip/xz compressed)
    newc cpio archive; ValueError for what cannot be read here (zstd)."""
    return [name for name, _d, _o, _s in _cpio_entries(data)]


def cpio_members(data, name, limit=MAX_FILE):
    """{name: bytes} of the member ``name`` of such an archive (the last
    of that name: a later one replaces an earlier when unpacked), when
    at most ``limit`` bytes."""
    out = {}
    for member, blob, offset, size in _cpio_entries(data):
        if member == name and size <= limit:
            out[name] = bytes(blob[offset:offset + size])
    return out


def _initrd_member(names, path):
    """The name of the file ``path`` (no leading /) in an initramfs
    listing (``etc/lvm/lvm.conf``, ``./etc/lvm/lvm.conf``), or None."""
    for name in names or ():
        if name.lstrip('./') == path or name == path:
            return name
    return None


def initrd_names(g, path):
    try:
        return g.initrd_list(path), None
    except RuntimeError:
        pass
    try:
        if g.filesize(path) > 512 << 20:
            return None, 'too large'
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, 'initrd')
            g.download(path, local)
            with open(local, 'rb') as f:
                return cpio_names(f.read()), None
    except (RuntimeError, ValueError, OSError, EOFError, lzma.LZMAError) as e:
        return None, str(e)


#: Most kernels looked at: a guest keeps a few, and each costs reads of
#: its modules.dep and its initramfs's listing.
MAX_KERNELS = 32


def _version_key(version):
    """A kernel version's sort key: its numbers as numbers (4.19 after
    4.9), compared by length then digits (no int() of a guest's run of
    digits, however long)."""
    parts = re.split(r'([0-9]+)', version)
    return [(len(t.lstrip('0')), t.lstrip('0')) if i % 2 else t
            for i, t in enumerate(parts)]


def kernels(g):
    """Per kernel version: its modules (builtin, module, initramfs) and
    whether it is a Xen-PV-only kernel."""
    out = []
    moddir = None
    for top in ('/lib/modules', '/usr/lib/modules'):
        if _ls(g, top):
            moddir = top
            break
    versions = _ls(g, moddir) if moddir else []
    if len(versions) > MAX_KERNELS:
        # Each is read (modules.dep, the initramfs's listing): the newest.
        versions = sorted(versions, key=_version_key)[-MAX_KERNELS:]
    boot = _ls(g, '/boot')
    for version in versions:
        base = '%s/%s' % (moddir, version)
        builtin = set()
        for line in (_read(g, base + '/modules.builtin') or '').splitlines():
            name = _module_name(line.strip())
            if name:
                builtin.add(name)
        available = set()
        for line in (_read(g, base + '/modules.dep', 64 << 20) or
                     '').splitlines():
            name = _module_name(line.split(':', 1)[0].strip())
            if name:
                available.add(name)
        initrd = None
        for cand in ('initrd.img-%s' % version, 'initramfs-%s.img' % version,
                     'initrd-%s' % version, 'initrd-%s.img' % version):
            if cand in boot:
                initrd = '/boot/' + cand
                break
        if initrd is None and len(versions) == 1:
            for cand in ('initrd.img', 'initramfs.img', 'initrd'):
                if cand in boot:
                    initrd = '/boot/' + cand
                    break
        in_initrd = set()
        initrd_error = None
        names = None
        if initrd:
            names, initrd_error = initrd_names(g, initrd)
            for name in names or ():
                mod = _module_name(name)
                if mod:
                    in_initrd.add(mod)
        modules = {}
        for mod in MODULES:
            if mod in builtin:
                modules[mod] = 'builtin'
            elif mod in in_initrd:
                modules[mod] = 'initramfs'
            elif mod in available:
                modules[mod] = 'module'
            else:
                modules[mod] = None
        # Its image: a directory of modules without one is a kernel
        # removed but not purged, which nothing boots.
        image = next(('/boot/' + name % version for name in IMAGE_NAMES
                      if name % version in boot), None)
        if image is None and _exists(g, base + '/vmlinuz'):
            image = base + '/vmlinuz'
        if image is None and len(versions) == 1:
            # One kernel, and one image whose name has no version
            # (Alpine's vmlinuz-lts, Arch's vmlinuz-linux, a hand-built
            # /boot/vmlinuz): that kernel's.
            found = [name for name in boot if name in UNVERSIONED_IMAGES
                     or name.startswith('vmlinuz-')]
            if len(found) == 1:
                image = '/boot/' + found[0]
        # A "xenified" kernel runs only as a Xen PV guest: its
        # configuration says so (what virt-v2v checks); without one, a
        # version naming xen and a kernel without virtio.
        config = _read(g, '/boot/config-%s' % version, 4 << 20)
        if config is not None:
            xen_only = bool(XEN_ONLY_CONFIG_RE.search(config))
        else:
            xen_only = bool(re.search(r'xen', version)) and \
                modules['virtio_pci'] is None
        out.append({'version': version, 'initramfs': initrd,
                    'initramfs_error': initrd_error,
                    'modules': modules, 'image': image,
                    'xen_pv_only': xen_only,
                    'initramfs_lvm_conf': _initrd_member(
                        names, LVM_INITRD_CONF)})
    return out


# -- the kernel the bootloader boots ------------------------------------------

#: Where a bootloader entry's kernel image is named (the rest of the
#: line is its command line).
_IMAGE_RE = re.compile(r'^\s*(?:linux|linux16|linuxefi|kernel)\s+(\S+)',
                       re.I)
_GRUB_ITEM_RE = re.compile(r'^\s*(menuentry|submenu)\s+(.*?)\s*\{\s*$')
_GRUB_ID_RE = re.compile(r'\$menuentry_id_option\s+([\'"])(.*?)\1|'
                         r'--id[= ]([\'"]?)(\S+?)\3(?:\s|$)')
_GRUB_SET_DEFAULT_RE = re.compile(
    r'^\s*set\s+default=([\'"]?)(.*?)\1\s*$')
#: A kernel's image in /boot, by version (also /lib/modules/V/vmlinuz,
#: where Fedora and RHEL 9 keep the packaged copy).
IMAGE_NAMES = ('vmlinuz-%s', 'vmlinux-%s', 'kernel-%s', 'bzImage-%s')
#: The image of a lone kernel whose name has no version.
UNVERSIONED_IMAGES = ('vmlinuz', 'vmlinux', 'bzImage')
#: Bounds on what is parsed (the files are the guest's: untrusted).
MAX_BOOT_ENTRIES = 256
#: A Xen-only kernel (the "xenified" 2.6.18/SUSE -xen kernels): it runs
#: only as a Xen PV guest, its kernel configuration says so.
XEN_ONLY_CONFIG_RE = re.compile(r'^CONFIG_X86(?:_64)?_XEN=y\s*$', re.M)


def _image_version(path, versions):
    """The kernel version a bootloader's image path boots
    (``/vmlinuz-5.10.0-8-amd64``, ``(hd0,0)/boot/vmlinuz-2.6.18-398.el5``)
    among ``versions``; None when it names none of them."""
    name = (path or '').rsplit('/', 1)[-1].rsplit(')', 1)[-1]
    for prefix in IMAGE_NAMES:
        prefix = prefix[:-2]
        if name.startswith(prefix) and name[len(prefix):] in versions:
            return name[len(prefix):]
    return None


def _grub_title(rest):
    """The title of a ``menuentry``/``submenu`` line's rest."""
    rest = rest.strip()
    if rest[:1] in ('"', "'"):
        end = rest.find(rest[0], 1)
        return rest[1:end] if end > 0 else rest[1:]
    return rest.split(None, 1)[0] if rest else ''


def grub2_items(text):
    """The menu of a grub.cfg: [{'title', 'id', 'image', 'items'}]
    (``items``: a submenu's entries, else None), in order."""
    top = []
    stack = [top]
    # One frame per open brace: the item it opened, or None (an if,
    # a function).
    frames = []
    count = 0
    for line in text.splitlines():
        body = line.strip()
        if not body or body.startswith('#'):
            continue
        m = _GRUB_ITEM_RE.match(body)
        if m and count < MAX_BOOT_ENTRIES:
            count += 1
            ident = _GRUB_ID_RE.search(m.group(2))
            item = {'title': _grub_title(m.group(2)),
                    'id': (ident.group(2) or ident.group(4)) if ident
                    else None,
                    'image': None,
                    'items': [] if m.group(1) == 'submenu' else None}
            stack[-1].append(item)
            frames.append(item)
            if item['items'] is not None:
                stack.append(item['items'])
            continue
        if body.endswith('{'):
            frames.append(None)
            continue
        if body == '}' or body.startswith('}'):
            if frames:
                item = frames.pop()
                if item is not None and item['items'] is not None and \
                        len(stack) > 1:
                    stack.pop()
            continue
        inner = [f for f in frames if f is not None]
        if inner and inner[-1]['items'] is None and \
                inner[-1]['image'] is None:
            m = _IMAGE_RE.match(body)
            if m:
                inner[-1]['image'] = m.group(1)
    return top


def grub2_default(text, env=None):
    """The default of a grub.cfg: the value of its last ``set default=``
    other than the one-shot ``${next_entry}``, with ``${saved_entry}``
    taken from grubenv's ``env``; '0' when it sets none."""
    value = None
    for line in text.splitlines():
        m = _GRUB_SET_DEFAULT_RE.match(line)
        if m and m.group(2) not in ('${next_entry}', '$next_entry'):
            value = m.group(2)
    if value is None:
        return '0'
    if value in ('${saved_entry}', '$saved_entry'):
        value = (env or {}).get('saved_entry') or '0'
    return value


def grub_env(text):
    """{name: value} of a GRUB environment block (grubenv)."""
    out = {}
    for line in (text or '').splitlines()[:64]:
        if line.startswith('#') or '=' not in line:
            continue
        k, v = line.split('=', 1)
        out[k.strip()] = v.strip()
    return out


def grub2_pick(items, default):
    """The menu entry ``default`` selects in ``items``: an index, a title
    or an id, or a ``>``-separated path of them into submenus; None
    when it selects no entry (or a submenu)."""
    for part in default.split('>'):
        if items is None:
            return None
        part = part.strip()
        if _decimal(part):
            n = int(part)
            item = items[n] if n < len(items) else None
        else:
            item = next((i for i in items if part in (i['id'], i['title'])),
                        None)
        if item is None:
            return None
        items = item['items']
    return item if item['items'] is None else None


def bls_entries(files, read):
    """The Boot Loader Specification entries (/boot/loader/entries) as
    GRUB's blscfg lists them: newest version first; [{'id', 'title',
    'image', 'version'}]."""
    from functools import cmp_to_key
    out = []
    for path in files:
        if not (path.startswith('/boot/loader/entries/') and
                path.endswith('.conf')):
            continue
        entry = {'id': path.rsplit('/', 1)[-1][:-len('.conf')],
                 'title': None, 'image': None, 'version': None,
                 'items': None}
        for line in (read(path) or '').splitlines():
            parts = line.strip().split(None, 1)
            if len(parts) == 2 and parts[0] in ('title', 'version', 'linux'):
                key = 'image' if parts[0] == 'linux' else parts[0]
                entry[key] = entry[key] or parts[1].strip()
        out.append(entry)
        if len(out) >= MAX_BOOT_ENTRIES:
            break
    props = _properties()

    def order(a, b):
        return props.debian_version_compare(
            b['version'] or b['id'], a['version'] or a['id'])
    return sorted(out, key=cmp_to_key(order))


def grub_legacy_entries(text):
    """(the ``default`` value, [the kernel image of each entry]) of a
    GRUB legacy menu.lst."""
    default = '0'
    images = []
    for line in text.splitlines():
        body = line.strip()
        if not body or body.startswith('#'):
            continue
        key = re.split(r'[\s=]+', body, 1)
        if key[0] == 'title':
            if len(images) >= MAX_BOOT_ENTRIES:
                break
            images.append(None)
        elif key[0] == 'default' and not images and len(key) == 2:
            default = key[1].strip()
        elif key[0] == 'kernel' and images and images[-1] is None and \
                len(key) == 2:
            images[-1] = key[1].split()[0]
    return default, images


def grub_legacy_default(text, saved=None):
    """(index, image) of the entry a GRUB legacy menu.lst boots by
    default (``default N``, ``default saved`` with /boot/grub/default's
    ``saved``); (index, None) when that entry names no kernel."""
    default, images = grub_legacy_entries(text)
    if default == 'saved':
        default = (saved or '0').strip().split('\n', 1)[0]
    n = int(default) if _decimal(default) else 0
    if n >= len(images):
        n = 0
    return n, (images[n] if images else None)


def set_grub_legacy_default(text, version, versions):
    """(new text, [(old, new)]) of a GRUB legacy menu.lst whose default
    is made the first entry booting kernel ``version`` (``versions``:
    the guest's); the text unchanged when no entry boots it."""
    _default, images = grub_legacy_entries(text)
    index = next((i for i, image in enumerate(images)
                  if _image_version(image, versions) == version), None)
    if index is None:
        return text, []
    want = 'default=%d' % index
    lines = text.splitlines(True)
    for i, line in enumerate(lines):
        body = line.strip()
        if body.startswith('title'):
            break
        if re.match(r'default(?:[\s=]|$)', body):
            if body == want:
                return text, []
            end = line[len(line.rstrip('\r\n')):]
            lines[i] = line[:len(line) - len(line.lstrip())] + want + end
            return ''.join(lines), [(body, want)]
    return want + '\n' + text, [('', want)]


def extlinux_default(text):
    """The image of the label an extlinux/syslinux configuration boots
    by default (``DEFAULT label``, or ``MENU DEFAULT`` in a label, or the
    first label)."""
    default = None
    labels = []
    menu_default = None
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        key = parts[0].lower()
        rest = parts[1].strip() if len(parts) == 2 else ''
        if key == 'default':
            default = rest
        elif key == 'label' and len(labels) < MAX_BOOT_ENTRIES:
            labels.append([rest, None])
        elif key in ('kernel', 'linux') and labels and \
                labels[-1][1] is None:
            labels[-1][1] = rest.split()[0] if rest else None
        elif key == 'menu' and rest.lower() == 'default' and labels:
            menu_default = labels[-1]
    for label in labels:
        if label[0] == default:
            return label[1]
    if menu_default is not None:
        return menu_default[1]
    return labels[0][1] if labels else None


GRUB_ENVS = ('/boot/grub/grubenv', '/boot/grub2/grubenv')


def boot_default(g, files, kernels, read=None):
    """What the guest's bootloader boots by default: {'file', 'image',
    'version', 'entry'} (``version``: the version of the one of
    ``kernels`` (:func:`kernels`) it boots, None when it could not be
    told), or None when no bootloader file names a kernel; ``read``: how
    a file is read (:func:`_reader`)."""
    versions = [k['version'] for k in kernels]
    read = read or _reader(g)

    def image_version(path):
        found = _image_version(path, versions)
        name = (path or '').rsplit('/', 1)[-1]
        if found or not name:
            return found
        for k in kernels:
            if (k.get('image') or '').rsplit('/', 1)[-1] == name:
                return k['version']
        # Debian's /vmlinuz and /boot/vmlinuz.old: symbolic links.
        for top in ('/boot/', '/'):
            try:
                found = _image_version(g.readlink(top + name), versions)
            except RuntimeError:
                continue
            if found:
                return found
        return None
    found = _boot_default(g, files, read, image_version)
    if found is not None and found.get('image') and not found['version']:
        # A kernel we cannot tell the version of: is it there at all?
        # (GRUB's paths are relative to the partition holding /boot.)
        path = found['image'].rsplit(')', 1)[-1]
        found['exists'] = any(_exists(g, p) for p in (path, '/boot' + path))
    return found


def _boot_default(g, files, read, image_version):
    grub2 = [p for p in files if p.endswith('/grub.cfg')]
    for path in grub2:
        text = read(path) or ''
        items = grub2_items(text)
        bls = bls_entries(files, read) if re.search(
            r'^\s*blscfg\b', text, re.M) else []
        if not items and not bls:
            continue
        envs = grub_envs(g)
        env = grub_env(read(envs[0])) if envs else {}
        default = grub2_default(text, env)
        pick = grub2_pick(bls + items, default)
        entry = default
        if pick is None and bls and not _decimal(default):
            # A saved entry gone (its kernel removed): blscfg's first.
            pick = bls[0]
        if pick is None:
            return {'file': path, 'entry': entry, 'image': None,
                    'version': None}
        return {'file': path, 'entry': pick.get('title') or entry,
                'image': pick['image'],
                'version': image_version(pick['image'])}
    for path in ('/boot/grub/menu.lst', '/boot/grub/grub.conf',
                 '/etc/grub.conf'):
        if path in files:
            n, image = grub_legacy_default(
                read(path) or '', read('/boot/grub/default'))
            return {'file': path, 'entry': n, 'image': image,
                    'version': image_version(image)}
    for path in ('/boot/extlinux/extlinux.conf', '/extlinux.conf',
                 '/boot/syslinux/syslinux.cfg'):
        if path in files:
            image = extlinux_default(read(path) or '')
            return {'file': path, 'entry': None, 'image': image,
                    'version': image_version(image)}
    bls = bls_entries(files, read)
    if bls:
        return {'file': '/boot/loader/entries', 'entry': bls[0]['id'],
                'image': bls[0]['image'],
                'version': image_version(bls[0]['image'])}
    return None


#: A BLS entry's options taken from grubenv (RHEL 8: ``options
#: $kernelopts``).
_KERNELOPTS_REF_RE = re.compile(r'^\s*options\s.*\$\{?kernelopts\b', re.M)


def kernelopts_lines(g, boot_texts, read=None):
    """The kernel command line that BLS entries take from grubenv's
    ``kernelopts`` (RHEL 8: ``options $kernelopts``), as an ``options``
    line of its own; [] when no entry of ``boot_texts`` refers to it."""
    if not any(_KERNELOPTS_REF_RE.search(t) for t in boot_texts):
        return []
    read = read or _reader(g)
    envs = grub_envs(g)
    opts = grub_env(read(envs[0])).get('kernelopts') if envs else None
    return ['options %s\n' % opts] if opts else []


def tools(g, root):
    """({fact: [packages, then known files]}, [the guest's packages],
    why its package database could not be read, or None).  libguestfs
    reads an RPM database with the appliance's librpm, which may not
    read the guest's (a SUSE ndb database; no rpmrc in the appliance)."""
    unread = None
    try:
        apps = {a['app2_name'] for a in g.inspect_list_applications2(root)}
    except RuntimeError as e:
        apps = set()
        unread = ' '.join(str(e).split())[:MAX_SHOWN] or 'failed'
    found = {}
    for fact, packages, files in TOOLS:
        hits = sorted(apps.intersection(packages)) + [
            f for f in files if _exists(g, f)]
        found[fact] = hits
    return found, sorted(apps), unread


def linux_facts(g, root, slots=None):
    # The bootloader files: read once, for the names in them, the
    # default entry and cloud-init's kernel argument.
    read = _reader(g)
    boot = boot_files(g)
    names = disk_names(g, slots, read, boot)
    files = [n['path'] for n in names]
    found, apps, unread = tools(g, root)
    found_kernels = kernels(g)
    boot_texts = [read(p) or '' for p in boot]
    boot_texts += kernelopts_lines(g, boot_texts, read)
    return {'bootloader': bootloader(files), 'disk_names': names,
            'uefi_fallback': uefi_fallback(g),
            'kernels': found_kernels,
            'boot_default': boot_default(g, files, found_kernels, read),
            'tools': found, 'packages_unread': unread,
            'network': network_facts(g, boot_texts),
            'lvm_devices': lvm_devices(g),
            'shared_uuids': shared_uuids(g),
            'cloud_init': cloud_init_facts(g, apps, boot_texts)}


#: The EFI system partition where Linux mounts it, and UEFI's
#: removable-media path on it: what a firmware with no boot entry runs.
ESP_MOUNT = '/boot/efi'
UEFI_FALLBACK_DIR = ESP_MOUNT + '/EFI/BOOT'
UEFI_FALLBACK = UEFI_FALLBACK_DIR + '/BOOTX64.EFI'
#: The names of shim and GRUB in a distribution's ESP directory (SUSE's
#: have no architecture in them), in order of preference.
UEFI_SHIMS = ('shimx64.efi', 'shim.efi')
UEFI_GRUBS = ('grubx64.efi', 'grub.efi')


def uefi_fallback(g):
    """Whether the guest's ESP has the UEFI fallback bootloader
    (``\\EFI\\BOOT\\BOOTX64.EFI``), and where the distribution's own
    is: {'present', 'source' (a directory under /boot/efi/EFI), 'shim'};
    None without an ESP at /boot/efi.

    The boot entry a distribution's installer writes (``\\EFI\\debian\\
    shimx64.efi``) lives in the firmware's NVRAM, which under XenServer
    is the VM's and does not move: on KVM the firmware starts with an
    empty one, and finds only the fallback path.  Debian and Ubuntu
    install none by default (RHEL's shim package does)."""
    top = ESP_MOUNT + '/EFI'
    names = _ls(g, top)
    if not names:
        return None
    # vfat in the appliance matches names without regard to case.
    out = {'present': _exists(g, UEFI_FALLBACK), 'source': None,
           'shim': False}
    for name in names[:MAX_BOOT_ENTRIES]:
        if name.lower() == 'boot':
            continue
        files = {f.lower(): f for f in _ls(g, top + '/' + name)}
        if not any(f in files for f in UEFI_GRUBS):
            continue
        shim = any(f in files for f in UEFI_SHIMS)
        if out['source'] is None or (shim and not out['shim']):
            out.update(source=top + '/' + name, shim=shim,
                       files=sorted(files[f] for f in UEFI_SHIMS +
                                    UEFI_GRUBS + ('grub.cfg',)
                                    if f in files))
    if not out['present'] and out['source']:
        out.update(room(g, ESP_MOUNT, [
            src for src, _ in _fallback_copies(out)],
            _exists(g, UEFI_FALLBACK_DIR)))
    return out


def room(g, top, sources, dir_exists=True):
    """{'needed', 'free'}: the bytes that copying the files ``sources``
    onto the file system mounted at ``top`` takes (each rounded up to
    its allocation unit, a FAT cluster on an ESP, and one more for a
    directory to make), and the bytes free there; {} when libguestfs
    cannot tell."""
    try:
        st = _hash(g.statvfs(top))
        unit = int(st['frsize'] or st['bsize'])
        free = int(st['bavail']) * unit
        sizes = [int(g.filesize(src)) for src in sources]
    except (RuntimeError, KeyError, TypeError, ValueError):
        return {}
    if unit <= 0:
        return {}
    needed = sum(-(-size // unit) * unit for size in sizes)
    if not dir_exists:
        needed += unit
    return {'needed': needed, 'free': free}


def no_room(facts, where):
    """The reason a UEFI fallback's copies (facts of
    :func:`uefi_fallback` or :func:`windows_uefi_fallback`) do not fit
    on the EFI system partition ``where``, or None."""
    needed, free = (facts or {}).get('needed'), (facts or {}).get('free')
    if needed is None or free is None or needed <= free:
        return None
    return ('the EFI system partition (%s) has %d KiB free and the UEFI '
            'fallback bootloader\'s copies need %d KiB: make room on it in '
            'the guest' % (where, free // 1024, -(-needed // 1024)))


def _fallback_copies(facts):
    """[(source, destination)] of the files :func:`fix_uefi_fallback`
    copies for ``facts``."""
    src = facts['source']
    names = {f.lower(): f for f in facts.get('files') or ()}
    shim = next((names[f] for f in UEFI_SHIMS if f in names), None)
    grub = next((names[f] for f in UEFI_GRUBS if f in names), None)
    copies = []
    if shim and grub:
        # Shim loads GRUB by its own name (grubx64.efi; SUSE's grub.efi).
        copies.append((shim, UEFI_FALLBACK))
        copies.append((grub, UEFI_FALLBACK_DIR + '/' + grub.lower()))
    elif grub:
        copies.append((grub, UEFI_FALLBACK))
    else:
        return []
    if 'grub.cfg' in names:
        copies.append((names['grub.cfg'], UEFI_FALLBACK_DIR + '/grub.cfg'))
    return [(src + '/' + name, dest) for name, dest in copies]


def fix_uefi_fallback(g, facts):
    """Copy the distribution's bootloader to the fallback path, as
    virt-v2v does for Debian and Ubuntu (convert_linux.ml): shim as
    BOOTX64.EFI with GRUB and its grub.cfg beside it (shim loads
    grubx64.efi from its own directory, and Debian's signed GRUB reads
    grub.cfg from its own), or GRUB itself as BOOTX64.EFI.  [(from, to)]
    of the copies."""
    if not facts or facts.get('present') or not facts.get('source'):
        return []
    copies = _fallback_copies(facts)
    if not copies:
        return []
    full = no_room(facts, ESP_MOUNT)
    if full:
        raise ProbeError(full)
    g.mkdir_p(UEFI_FALLBACK_DIR)
    done = []
    for src, dest in copies:
        g.cp(src, dest)
        done.append((src, dest))
    return done


def lvm_devices(g):
    """The devices LVM's devices file lists (its IDNAME values); None
    when there is no such file, or lvm.conf says LVM does not use it
    (``use_devicesfile = 0``)."""
    text = _read(g, LVM_DEVICES)
    if text is None:
        return None
    for conf in LVM_CONFS:
        if re.search(r'^[ \t]*(?:devices/)?use_devicesfile[ \t]*=[ \t]*0\b',
                     _uncommented(_read_config(g, conf) or ''), re.M):
            return None
    return re.findall(r'IDNAME=(\S+)', _uncommented(text))


# -- cloud-init: the guest's identity at its first boot in OpenStack ----------

#: Where cloud-init is, and how it is turned off: the systemd generator
#: reads ``cloud-init=enabled|disabled`` on the kernel command line first,
#: then /etc/cloud/cloud-init.enabled, then /etc/cloud/cloud-init.disabled
#: (the first found decides); a masked unit of the stage that runs the
#: ssh and hostname modules (``cloud-init.service``; since 24.3
#: ``cloud-init-network.service``), or the whole target, runs nothing.
CLOUD_INIT_PACKAGES = ('cloud-init',)
CLOUD_INIT_PROGRAMS = ('/usr/bin/cloud-init', '/usr/local/bin/cloud-init')
CLOUD_CFG = '/etc/cloud/cloud.cfg'
CLOUD_CFG_D = '/etc/cloud/cloud.cfg.d'
CLOUD_ENABLED = '/etc/cloud/cloud-init.enabled'
CLOUD_DISABLED = '/etc/cloud/cloud-init.disabled'
CLOUD_INIT_UNITS = ('cloud-init.target', 'cloud-init.service',
                    'cloud-init-network.service')
SYSTEMD_ETC = '/etc/systemd/system'
CLOUD_KERNEL_RE = re.compile(r'(?<!\S)cloud-init=(enabled|disabled)(?!\S)')
#: What cloud-init left of the instance it last ran on.
CLOUD_INSTANCE_ID = '/var/lib/cloud/data/instance-id'
CLOUD_DATASOURCE = '/var/lib/cloud/instance/datasource'
#: The configuration keys read (top-level keys of cloud.cfg and of
#: cloud.cfg.d/*.cfg, the later file winning, as cloud-init merges them)
#: and cloud-init's defaults for them (cc_ssh, cc_set_hostname).
CLOUD_KEYS = ('ssh_deletekeys', 'preserve_hostname', 'datasource_list')
CLOUD_DEFAULTS = {'ssh_deletekeys': True, 'preserve_hostname': False,
                  'datasource_list': None}
#: What cloud-init's translate_bool takes for true (YAML's true, yes and
#: on are booleans already); any other value set is false.
CLOUD_TRUE = ('true', 'yes', 'on', '1')
#: The drop-in ``--fix`` writes: sorted after the distributions' own
#: (05_logging.cfg, 90_dpkg.cfg, 99_pve.cfg...), so its values win.
CLOUD_KEEP = CLOUD_CFG_D + '/99-any2kvm-keep-identity.cfg'
CLOUD_KEEP_TEXT = (
    '# Written by any2kvm --fix when this server moved to KVM: at its\n'
    '# first boot in OpenStack cloud-init sees a new instance id; keep\n'
    '# the SSH host keys and the hostname the server had.  Remove this\n'
    '# file to let cloud-init regenerate and set them again.\n'
    'ssh_deletekeys: false\n'
    'preserve_hostname: true\n')
CLOUD_KEEP_VALUES = {'ssh_deletekeys': False, 'preserve_hostname': True}
MAX_LIST_LINES = 64
MAX_SHOWN = 128


def _yaml_scalar(text):
    """The scalar of a YAML value: its comment (`` #``) off, unquoted."""
    text = text.strip()
    if text[:1] in ('"', "'"):
        end = text.find(text[0], 1)
        return text[1:end] if end > 0 else text[1:]
    return re.split(r'[ \t]#', text, 1)[0].strip()


def _yaml_list(first, rest):
    """The items of a YAML sequence given as a flow list beginning on the
    key's line (``[ A, B,`` ... ``]``, at most MAX_LIST_LINES lines) or
    as a block (``- A`` lines after it); ``rest``: the lines after the
    key's.  None when it is neither."""
    first = re.split(r'(?:^|[ \t])#', first, 1)[0].strip()
    if first.startswith('['):
        text = first
        for line in rest[:MAX_LIST_LINES]:
            if ']' in text:
                break
            text += ' ' + re.split(r'(?:^|[ \t])#', line, 1)[0].strip()
        if ']' not in text:
            return None
        body = text[1:text.index(']')]
        return [x for x in (_yaml_scalar(i) for i in body.split(','))
                if x][:MAX_REPORTED]
    if first:
        return None
    items = []
    for line in rest[:MAX_LIST_LINES]:
        m = re.match(r'^[ \t]*-[ \t]+(\S.*)$', line)
        if m:
            items.append(_yaml_scalar(m.group(1)))
        elif line.strip() and not line.lstrip().startswith('#'):
            break
    return items[:MAX_REPORTED] or None


def cloud_config_values(text):
    """{key: value} of the :data:`CLOUD_KEYS` a cloud-init configuration
    file sets: top-level keys (at the start of a line; a block scalar's
    lines are indented, a comment's begin with #), without a YAML parser
    (the appliance's Python may have none, and the guest's text is only
    read).  The booleans as cloud-init takes them; ``datasource_list`` a
    list of names."""
    lines = [_body(line)[0] for line in _lines(text)]
    out = {}
    for i, line in enumerate(lines):
        m = re.match(r'^(%s)[ \t]*:(?:[ \t]+(.*))?$' % '|'.join(CLOUD_KEYS),
                     line)
        if not m:
            continue
        key, value = m.group(1), m.group(2) or ''
        if key == 'datasource_list':
            items = _yaml_list(value, lines[i + 1:])
            if items is not None:
                out[key] = [_shown(x)[:MAX_SHOWN] for x in items]
        else:
            out[key] = _yaml_scalar(value).lower() in CLOUD_TRUE
    return out


def cloud_config_files(g):
    """[(path, text)] of cloud-init's configuration files in the order
    it reads them (cloud.cfg, then cloud.cfg.d/*.cfg sorted, the first
    MAX_CONFIG_FILES)."""
    names = [n for n in _ls(g, CLOUD_CFG_D)
             if n.endswith('.cfg') and not n.startswith('.')]
    paths = [CLOUD_CFG_D + '/' + n for n in names[:MAX_CONFIG_FILES]]
    files = []
    for path in [CLOUD_CFG] + paths:
        text = _read_config(g, path)
        if text is not None:
            files.append((path, text))
    return files


def cloud_config(files):
    """(values, set_in) of cloud-init's merged configuration: each key's
    value (its default when no file sets it) and the file that set it."""
    values = dict(CLOUD_DEFAULTS)
    set_in = {}
    for path, text in files:
        for key, value in cloud_config_values(text).items():
            values[key] = value
            set_in[key] = path
    return values, set_in


def _first_line(g, path):
    text = _read(g, path, 4096)
    if not text or not text.strip():
        return None
    return _shown(text.strip().splitlines()[0].strip())[:MAX_SHOWN]


def _masked(g, unit):
    path = SYSTEMD_ETC + '/' + unit
    try:
        return bool(g.is_symlink(path)) and g.readlink(path) == '/dev/null'
    except RuntimeError:
        return False


def cloud_init_disabled(g, boot_texts):
    """How cloud-init is turned off, or None: the kernel command line
    (the bootloader files ``boot_texts``), the files of /etc/cloud, a
    masked unit (see :data:`CLOUD_INIT_UNITS`)."""
    said = set()
    for text in boot_texts:
        said.update(CLOUD_KERNEL_RE.findall(_uncommented(text)))
    if said == {'disabled'}:
        return 'cloud-init=disabled on the kernel command line'
    if not said and not _exists(g, CLOUD_ENABLED) and \
            _exists(g, CLOUD_DISABLED):
        return CLOUD_DISABLED
    for unit in CLOUD_INIT_UNITS:
        if _masked(g, unit):
            return '%s masked' % unit
    return None


def cloud_init_facts(g, apps=(), boot_texts=()):
    """cloud-init in a Linux guest: None when it is not installed, else
    {'installed': [packages, programs], 'disabled': how or None,
    'ssh_deletekeys', 'preserve_hostname', 'datasource_list' (None: not
    set, cloud-init's own list), 'set_in': {key: file},
    'instance_id', 'datasource': what it last ran on}."""
    found = sorted(set(apps).intersection(CLOUD_INIT_PACKAGES)) + [
        p for p in CLOUD_INIT_PROGRAMS if _exists(g, p)]
    if not found:
        return None
    files = cloud_config_files(g)
    values, set_in = cloud_config(files)
    ds = _first_line(g, CLOUD_DATASOURCE)
    out = {'installed': found,
           'disabled': cloud_init_disabled(g, boot_texts),
           'set_in': set_in, 'instance_id': _first_line(g, CLOUD_INSTANCE_ID),
           'datasource': ds.split(':', 1)[0].strip() if ds else None,
           'keep_overridden_by': _keep_overridden_by(files)}
    out.update(values)
    return out


def _with_keep(files):
    """``files`` (of :func:`cloud_config_files`) with the drop-in of
    --fix among them, where cloud-init would read it."""
    files = [f for f in files if f[0] != CLOUD_KEEP] + [
        (CLOUD_KEEP, CLOUD_KEEP_TEXT)]
    return sorted(files, key=lambda f: (f[0] != CLOUD_CFG, f[0]))


def _keep_overridden_by(files):
    """The file read after the drop-in of --fix that sets a key it sets
    (so the drop-in would not keep the identity), or None."""
    values, set_in = cloud_config(_with_keep(files))
    for key, value in sorted(CLOUD_KEEP_VALUES.items()):
        if values[key] != value:
            return set_in.get(key)
    return None


def keeps_identity(facts):
    """Whether cloud-init (the facts of :func:`cloud_init_facts`) leaves
    the guest's SSH host keys and hostname as they are: not installed,
    turned off, or told so."""
    return not facts or bool(facts.get('disabled')) or (
        facts.get('ssh_deletekeys') is False and
        facts.get('preserve_hostname') is True)


def fix_cloud_init(facts):
    """(path, text, [(old, new)]) of the drop-in that keeps the guest's
    identity when cloud-init (the inspection's ``facts``) would not
    (:func:`keeps_identity`), and when, counted among the guest's files,
    it does make it kept (``keep_overridden_by``: a file sorted after it
    sets the keys again); else None."""
    if keeps_identity(facts) or facts.get('keep_overridden_by'):
        return None
    changes = [('', 'ssh_deletekeys: false'), ('', 'preserve_hostname: true')]
    return CLOUD_KEEP, CLOUD_KEEP_TEXT, changes


# -- LVM filters that name Xen's disks ----------------------------------------

#: LVM's configuration files: ``devices { filter = [...] global_filter =
#: [...] }`` decide which devices LVM scans; dracut and initramfs-tools
#: copy lvm.conf into the initramfs, where the root's volume group is
#: activated.
LVM_CONFS = ('/etc/lvm/lvm.conf', '/etc/lvm/lvmlocal.conf')
LVM_INITRD_CONF = 'etc/lvm/lvm.conf'
_LVM_FILTER_RE = re.compile(
    r'^[ \t]*(?:devices/)?(global_filter|filter)[ \t]*=[ \t]*\[', re.M)
MAX_FILTER = 64 << 10
MAX_PATTERNS = 256
#: The Xen disks a filter is tried on (four disks, whole or partitions),
#: each against the same disk's name on KVM.
LVM_PROBE_DISKS = 'abcd'
LVM_PROBE_PARTS = ('', '1', '2', '3', '5')


def lvm_filter_arrays(text):
    """[(name, start, end, [(start, end, pattern)])] of the filter and
    global_filter settings of an LVM configuration text: where the
    array's brackets are, and each quoted pattern (without its quotes)
    and where its quotes are; a setting whose array does not end within
    MAX_FILTER characters is not one."""
    out = []
    for m in _LVM_FILTER_RE.finditer(text):
        pos = m.end()
        stop = min(len(text), pos + MAX_FILTER)
        items = []
        while pos < stop:
            ch = text[pos]
            if ch == ']':
                out.append((m.group(1), m.end() - 1, pos + 1,
                            items[:MAX_PATTERNS]))
                break
            if ch == '#':
                nl = text.find('\n', pos)
                pos = stop if nl < 0 else nl
                continue
            if ch == '"':
                end = pos + 1
                while end < stop and text[end] != '"':
                    end += 2 if text[end] == '\\' else 1
                if end >= stop:
                    break
                items.append((pos, end + 1, text[pos + 1:end]))
                pos = end + 1
                continue
            pos += 1
    return out


def _lvm_pattern(item):
    """('a' or 'r', regular expression) of a filter pattern
    (``a|^/dev/xvd.*|``: any character delimits), or None."""
    if len(item) < 3 or item[0] not in 'ar':
        return None
    delim = item[1]
    end = item.rfind(delim)
    if end < 2:
        return None
    return item[0], item[2:end]


def lvm_accepts(patterns, device):
    """Whether LVM's filter ``patterns`` accepts ``device``: the first
    pattern that matches decides; none: accepted.  A pattern Python
    cannot compile matches nothing."""
    for item in patterns[:MAX_PATTERNS]:
        parsed = _lvm_pattern(item)
        if parsed is None:
            continue
        try:
            if re.search(parsed[1], device):
                return parsed[0] == 'a'
        except (re.error, RecursionError, OverflowError):
            continue
    return True


def xen_only(patterns, bus, slots=None):
    """The first Xen disk (/dev/xvdb1) the filter ``patterns`` accepts
    while it rejects the same disk's name on KVM's ``bus`` (/dev/vdb1;
    the disks mapped by their Xen slots, see :func:`position`), or
    None."""
    for letter in LVM_PROBE_DISKS:
        for part in LVM_PROBE_PARTS:
            xen = '/dev/xvd%s%s' % (letter, part)
            kvm = kvm_name(xen, bus, slots)
            if kvm is None or not lvm_accepts(patterns, xen):
                continue
            if not lvm_accepts(patterns, kvm):
                return xen
    return None


def _kvm_pattern(item, bus, slots=None):
    """The pattern that names, on KVM's ``bus``, the disks the pattern
    ``item`` names under Xen (xvd -> vd or sd; a disk's letters mapped by
    its Xen slot, see :func:`position`), or None when it names none or a
    disk on none of the VM's disks."""
    prefix = bus_prefix(bus)
    lost = []

    def sub(m):
        letters = m.group(1)
        if not letters:
            return prefix
        at = position('/dev/xvd' + letters, slots)
        if at is None:
            lost.append(letters)
            return m.group(0)
        return prefix + index_letters(at)
    new = re.sub(r'xvd([a-z]*)(?![a-z])', sub, item)
    if new == item or lost:
        return None
    return new


def fix_lvm_text(text, bus, slots=None):
    """(new text, [(old, new)], [found]) of an LVM configuration text: in
    each filter that accepts a Xen disk (/dev/xvda2) and rejects the same
    disk on ``bus`` (/dev/vda2), each pattern that names a Xen disk gets
    the pattern naming that disk on KVM after it (``"a|^/dev/xvd.*|",
    "a|^/dev/vd.*|"``); every other byte as it was.  ``found``: {'setting',
    'patterns' (as they were), 'added', 'left' (whether it rejects the
    KVM disk after the fix still)} of each such filter (see
    :func:`xen_only`)."""
    out = []
    changes = []
    found = []
    at = 0
    for name, _start, _end, items in lvm_filter_arrays(text):
        patterns = [p for _s, _e, p in items]
        if xen_only(patterns, bus, slots) is None:
            continue
        before = list(patterns)
        added = []
        for _s, end, pattern in items:
            new = _kvm_pattern(pattern, bus, slots)
            if new is None or new in patterns:
                continue
            out.append(text[at:end] + ', "%s"' % new)
            at = end
            patterns.insert(patterns.index(pattern) + 1, new)
            added.append('"%s"' % new)
        changes.extend(('', a) for a in added)
        found.append({'setting': name, 'patterns': before, 'added': added,
                      'left': xen_only(patterns, bus, slots) is not None})
    out.append(text[at:])
    return ''.join(out), changes, found


def _lvm_shown(found):
    """The facts of :func:`fix_lvm_text`'s ``found``: bounded, JSON-safe."""
    return [{'setting': f['setting'],
             'patterns': [_shown(p)[:MAX_SHOWN] for p in f['patterns'][:8]],
             'more': max(0, len(f['patterns']) - 8),
             'changes': [_shown(a)[:MAX_SHOWN] for a in f['added'][:8]],
             'left': f['left']} for f in found]


def initrd_file(g, path, name, limit=None):
    """The text of the member ``name`` of the initramfs ``path`` (as its
    listing names it), or None: libguestfs's initrd-cat, else the
    archive read here (:func:`cpio_members`)."""
    limit = MAX_CONFIG_FILE if limit is None else limit
    try:
        data = g.initrd_cat(path, name)
    except (RuntimeError, AttributeError):
        try:
            if g.filesize(path) > 512 << 20:
                return None
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, 'initrd')
                g.download(path, local)
                with open(local, 'rb') as f:
                    data = cpio_members(f.read(), name, limit).get(name)
        except (RuntimeError, ValueError, OSError, EOFError,
                lzma.LZMAError):
            return None
    if data is None or len(data) > limit:
        return None
    return data.decode('utf-8', 'replace')


def lvm_filters(g, kernels_found, bus, slots=None):
    """The LVM filters that accept Xen's disks and reject KVM's (the
    chosen ``bus``'s): {'files': [{'path', 'setting', 'patterns',
    'changes' (what --fix adds), 'left' (whether it still rejects the KVM
    disk after that)}] of /etc/lvm, 'initramfs': [{'path' (the image),
    'kernel', 'setting', 'patterns'}] of the copies of lvm.conf in the
    kernels' initramfs images}; empty lists without such a filter."""
    files = []
    for path in LVM_CONFS:
        text = _read_config(g, path)
        if text is None:
            continue
        for entry in _lvm_shown(fix_lvm_text(text, bus, slots)[2]):
            entry['path'] = path
            files.append(entry)
    images = []
    for kernel in (kernels_found or ())[:MAX_BOOT_ENTRIES]:
        member = kernel.get('initramfs_lvm_conf')
        if not member or not kernel.get('initramfs'):
            continue
        text = initrd_file(g, kernel['initramfs'], member)
        for entry in _lvm_shown(fix_lvm_text(text or '', bus, slots)[2]):
            entry.update(path=kernel['initramfs'], kernel=kernel['version'])
            del entry['changes'], entry['left']
            images.append(entry)
    return {'bus': bus, 'files': files, 'initramfs': images}


# -- what Xen's drivers and consoles leave in a Linux guest's settings --------

#: The files, by kind: (kind, files, directory of more of them or None).
#: modprobe: ``alias scsi_hostadapter xenblk`` and ``alias eth0 xennet``
#: (RHEL 5 and 6, SLES; RHEL 5's mkinitrd puts the scsi_hostadapter
#: modules in the next initrd it builds); sysconfig_kernel: SUSE's
#: ``INITRD_MODULES``, what its mkinitrd puts in the initrd; inittab and
#: upstart: gettys on the Xen console (xvc0, hvc0), which KVM does not
#: have; securetty: the consoles root may log in on.
XEN_FILES = (
    ('modprobe', ('/etc/modprobe.conf', '/etc/modprobe.conf.local'),
     '/etc/modprobe.d'),
    ('sysconfig_kernel', ('/etc/sysconfig/kernel',), None),
    ('inittab', ('/etc/inittab',), None),
    ('securetty', ('/etc/securetty',), None),
    ('upstart', (), '/etc/init'),
)
#: Bounds on what is read of them (the guest's: untrusted): files of a
#: directory, bytes of a file, changes listed in the inspection's facts.
MAX_CONFIG_FILES = 64
MAX_CONFIG_FILE = 1 << 20
MAX_REPORTED = 64
#: Xen's paravirtual drivers as RHEL 5 and SLES (xenblk, xen-vbd,
#: xen-vnif) and upstream (xen-blkfront, xen_netfront) name them; the
#: group is the kind: block, net, or one of the others.
XEN_MODULE_RE = re.compile(
    r'^xen[-_]?(?:(?P<block>blk|vbd|blkfront)|(?P<net>net|vnif|netfront)'
    r'|platform[-_]pci|balloon|scsi|scsifront|vscsi)$')
_ALIAS_RE = re.compile(r'^([ \t]*alias[ \t]+)(\S+)([ \t]+)(\S+)')
_INITRD_MODULES_RE = re.compile(
    r'^([ \t]*(?:export[ \t]+)?(?:DOMU_)?INITRD_MODULES=)(["\']?)'
    r'([^"\'\n]*)\2([ \t]*(?:#.*)?)$')
#: The Xen console's name in a getty's command (/dev/xvc0 too).
XEN_TTY_RE = re.compile(r'(?<![\w-])([xh]vc0)(?![\w-])')
#: The serial console of a KVM guest (Nova gives every guest one).
SERIAL_TTY = 'ttyS0'


def xen_module(name):
    """'block', 'net' or 'other' for a Xen paravirtual driver's module
    name, else None."""
    m = XEN_MODULE_RE.match(name or '')
    if not m:
        return None
    return 'block' if m.group('block') else 'net' if m.group('net') \
        else 'other'


def _lines(text):
    """``text`` in lines with their ends, split at newlines only (not at
    the form feeds and other breaks of str.splitlines): joined, they are
    the text again."""
    return re.findall(r'[^\n]*\n|[^\n]+$', text)


def _body(line):
    """A line without its end (\\n, \\r\\n) -> (body, end)."""
    body = line.rstrip('\r\n')
    return body, line[len(body):]


def modprobe_aliases(text):
    """[(name, module)] of the ``alias`` lines of a modprobe file."""
    out = []
    for line in _lines(text):
        m = _ALIAS_RE.match(line)
        if m:
            out.append((m.group(2), m.group(4)))
    return out


def fix_modprobe_text(text, block=None, net=None, have=None):
    """(new text, [(old, new)], [left]) of a modprobe file: an ``alias
    scsi_hostadapterN`` of a Xen block driver names ``block`` instead
    (the first; the others, and every one when ``block`` is None or
    ``have`` (a set, shared by the guest's files) has it already, are
    dropped), an ``alias ethN`` of a Xen network driver names ``net``
    (dropped when None); ``left``: the other aliases of Xen drivers."""
    have = set() if have is None else have
    changes = []
    left = []
    out = []
    for line in _lines(text):
        m = _ALIAS_RE.match(line)
        kind = xen_module(m.group(4)) if m else None
        if kind is None:
            out.append(line)
            continue
        name = m.group(2)
        old = _body(line)[0].strip()
        if kind == 'block' and re.match(r'^scsi_hostadapter[0-9]*$', name):
            target = block if block not in have else None
        elif kind == 'net' and re.match(r'^eth[0-9]+$', name):
            target = net
        else:
            left.append(old)
            out.append(line)
            continue
        if target is None:
            changes.append((old, ''))
            continue
        if kind == 'block':
            have.add(target)
        new = m.group(1) + name + m.group(3) + target + line[m.end():]
        changes.append((old, _body(new)[0].strip()))
        out.append(new)
    return ''.join(out), changes, left


def _drop_words(value, drop):
    """``value`` (words separated by blanks) without the words ``drop``
    says yes to, its other blanks as they were."""
    out = re.sub(r'(^|[ \t]+)(\S+)',
                 lambda m: '' if drop(m.group(2)) else m.group(0), value)
    if value[:1] not in (' ', '\t'):
        out = out.lstrip(' \t')
    return out


def fix_sysconfig_kernel_text(text):
    """(new text, [(old, new)], []) of SUSE's /etc/sysconfig/kernel: the
    Xen drivers out of INITRD_MODULES and DOMU_INITRD_MODULES, the rest
    of the list and its quoting as they were."""
    changes = []
    out = []
    for line in _lines(text):
        body, end = _body(line)
        m = _INITRD_MODULES_RE.match(body)
        if m:
            value = _drop_words(m.group(3), xen_module)
            if value != m.group(3):
                new = m.group(1) + m.group(2) + value + m.group(2) + \
                    m.group(4)
                changes.append((body.strip(), new.strip()))
                line = new + end
        out.append(line)
    return ''.join(out), changes, []


def _inittab_getty(line):
    """The process of an uncommented /etc/inittab entry that runs a
    getty (``co:2345:respawn:/sbin/agetty xvc0 9600 vt100-nav``), else
    None."""
    if line.lstrip().startswith('#'):
        return None
    fields = _body(line)[0].split(':', 3)
    if len(fields) == 4 and 'getty' in fields[3]:
        return fields[3]
    return None


def fix_inittab_text(text):
    """(new text, [(old, new)], []) of /etc/inittab: a getty on the Xen
    console runs on the serial console (ttyS0) instead, or, where a
    getty runs there already (two would fight over it), is commented
    out."""
    lines = _lines(text)
    serial = any(re.search(r'(?<![\w-])%s(?![\w-])' % SERIAL_TTY, p)
                 for p in map(_inittab_getty, lines) if p)
    changes = []
    out = []
    for line in lines:
        process = _inittab_getty(line)
        if process is None or not XEN_TTY_RE.search(process):
            out.append(line)
            continue
        body, end = _body(line)
        if serial:
            new = '#' + body
        else:
            head = body[:len(body) - len(process)]
            new = head + XEN_TTY_RE.sub(SERIAL_TTY, process)
            serial = True
        changes.append((body.strip(), new.strip()))
        out.append(new + end)
    return ''.join(out), changes, []


def fix_securetty_text(text):
    """(new text, [('', 'ttyS0')], []) of /etc/securetty when it lets
    root log in on the Xen console (xvc0, hvc0) but not on ttyS0: ttyS0
    is added after the last Xen console; nothing is removed."""
    lines = _lines(text)
    names = [_body(line)[0].strip() for line in lines]
    if SERIAL_TTY in names:
        return text, [], []
    at = [i for i, name in enumerate(names) if name in ('xvc0', 'hvc0')]
    if not at:
        return text, [], []
    i = at[-1]
    body, end = _body(lines[i])
    lines[i] = body + (end or '\n') + SERIAL_TTY + (end or '\n')
    return ''.join(lines), [('', SERIAL_TTY)], []


def upstart_xen_gettys(text):
    """(text, [], [lines]) of an upstart job (/etc/init/*.conf, RHEL 6):
    its ``exec`` lines running a getty on the Xen console, reported and
    left (its respawn limit stops it)."""
    left = []
    for line in _lines(text):
        body = _body(line)[0].strip()
        if body.startswith('exec') and 'getty' in body and \
                XEN_TTY_RE.search(body):
            left.append(body)
    return text, [], left


_XEN_FIXES = {'modprobe': fix_modprobe_text,
              'sysconfig_kernel': fix_sysconfig_kernel_text,
              'inittab': fix_inittab_text,
              'securetty': fix_securetty_text,
              'upstart': upstart_xen_gettys}


def _read_config(g, path):
    """The text of a configuration file of :data:`XEN_FILES`, its bytes
    kept (undecodable ones as surrogates, written back as they were);
    None when it is no regular file (a symbolic link: the file it points
    to is fixed where it is listed itself) or too large."""
    return _read(g, path, MAX_CONFIG_FILE, KEEP, follow=False)


def _shown(text):
    """What JSON reports of a guest's text (no lone surrogates)."""
    return _kept(text).decode('utf-8', 'replace')


def xen_config(g, modules=None):
    """[(path, kind, text, new text, [(old, new)], [left])] of the files
    of :data:`XEN_FILES` that name Xen's drivers or consoles: what
    ``--fix`` writes and what the inspection reports (:func:`xen_files`),
    the one computation of both.  ``modules``: {'block', 'net'}, the
    modules the aliases name on KVM (``properties.kvm_modules``)."""
    modules = modules or {}
    found = []
    for kind, files, top in XEN_FILES:
        paths = list(files)
        if top:
            names = [n for n in _ls(g, top) if not n.startswith('.') and (
                n.endswith('.conf') or (kind == 'modprobe' and '.' not in n))]
            paths += [top + '/' + n for n in names[:MAX_CONFIG_FILES]]
        for path in paths:
            text = _read_config(g, path)
            if text is not None:
                found.append((path, kind, text))
    # The scsi_hostadapter drivers other aliases name already.
    have = {module for path, kind, text in found if kind == 'modprobe'
            for name, module in modprobe_aliases(text)
            if name.startswith('scsi_hostadapter') and not xen_module(module)}
    out = []
    for path, kind, text in found:
        if kind == 'modprobe':
            new, changes, left = fix_modprobe_text(
                text, modules.get('block'), modules.get('net'), have)
        else:
            new, changes, left = _XEN_FIXES[kind](text)
        if changes or left:
            out.append((path, kind, text, new, changes, left))
    return out


def xen_files(g, modules=None):
    """The inspection's facts of :func:`xen_config`: [{'path', 'kind',
    'changes': [{'from', 'to'}] (what --fix changes), 'left': [what it
    leaves]}]."""
    return [{'path': path, 'kind': kind,
             'changes': [{'from': _shown(a), 'to': _shown(b)}
                         for a, b in changes[:MAX_REPORTED]],
             'more': max(0, len(changes) - MAX_REPORTED),
             'left': [_shown(x) for x in left[:MAX_REPORTED]]}
            for path, kind, _text, _new, changes, left in xen_config(
                g, modules)]


def fix_modules(guest):
    """{'block', 'net'}: the modules a fixed Linux guest's modprobe
    aliases name (:func:`~any2kvm_os.properties.kvm_modules`)."""
    return _properties().kvm_modules(guest)


# -- Windows ------------------------------------------------------------------

class Hive(object):
    """A registry hive: the calls of the guestfs handle (``hivex_*``, in
    the appliance) or of the hivex binding (a hive file here)."""

    def __init__(self, g, path, write=False):
        self.g = g
        g.hivex_open(path, write=write)

    def _root(self):
        return self.g.hivex_root()

    def _child(self, node, name):
        return self.g.hivex_node_get_child(node, name)

    def _children(self, node):
        return [c['hivex_node_h'] for c in self.g.hivex_node_children(node)]

    def _name(self, node):
        return self.g.hivex_node_name(node)

    def _values(self, node):
        return [v['hivex_value_h'] for v in self.g.hivex_node_values(node)]

    def _value(self, h):
        return (self.g.hivex_value_key(h), self.g.hivex_value_type(h),
                self.g.hivex_value_value(h))

    def delete(self, node):
        self.g.hivex_node_delete_child(node)

    def add_child(self, node, name):
        return self.g.hivex_node_add_child(node, name)

    def set_value(self, node, key, kind, raw):
        self.g.hivex_node_set_value(node, key, kind, raw)

    def commit(self):
        self.g.hivex_commit(None)

    def close(self):
        self.g.hivex_close()

    # -- the same for both --------------------------------------------------

    def child(self, node, path):
        for part in [p for p in path.split('\\') if p]:
            node = self._child(node, part)
            if not node:
                return None
        return node

    def node(self, path):
        return self.child(self._root(), path)

    def children(self, node):
        return [(self._name(c), c) for c in self._children(node)]

    def values(self, node):
        """{lower-case name: (type, raw bytes, name)}."""
        out = {}
        for h in self._values(node):
            key, kind, raw = self._value(h)
            out[key.lower()] = (kind, raw, key)
        return out


class HivexHive(Hive):
    """A hive file read with the hivex binding (``probe.py hive``)."""

    def __init__(self, path, write=False):
        import hivex
        self.h = hivex.Hivex(path, write=write)

    def _root(self):
        return self.h.root()

    def _child(self, node, name):
        return self.h.node_get_child(node, name)

    def _children(self, node):
        return self.h.node_children(node)

    def _name(self, node):
        return self.h.node_name(node)

    def _values(self, node):
        return self.h.node_values(node)

    def _value(self, h):
        kind, raw = self.h.value_value(h)
        return self.h.value_key(h), kind, raw

    def delete(self, node):
        self.h.node_delete_child(node)

    def add_child(self, node, name):
        return self.h.node_add_child(node, name)

    def set_value(self, node, key, kind, raw):
        self.h.node_set_value(node, {'key': key, 't': kind, 'value': raw})

    def commit(self):
        self.h.commit(None)

    def close(self):
        self.h = None


def is_citrix(name):
    """Whether ``name`` (a service, a class filter) is one of the Xen PV
    drivers' (:data:`CITRIX_RE`, :data:`WINDOWS_SERVICES`)."""
    return name.lower() in WINDOWS_SERVICES['citrix'] or \
        bool(CITRIX_RE.match(name))


def multi_sz_items(raw):
    """The strings of a REG_MULTI_SZ as Windows reads them, as their
    UTF-16LE bytes: each ends with a NUL character, and the list with an
    empty string; what follows that is not in the list (old bytes of a
    longer value), an odd last byte neither.  A list whose end is missing
    ends with the value."""
    items = []
    start = 0
    units = len(raw) // 2
    for i in range(units):
        if raw[2 * i:2 * i + 2] == b'\x00\x00':
            if i == start:
                return items
            items.append(raw[2 * start:2 * i])
            start = i + 1
    if start < units:
        items.append(raw[2 * start:2 * units])
    return items


def reg_value(kind_value):
    kind, raw = kind_value[0], kind_value[1]
    if kind == 4 and len(raw) >= 4:                       # REG_DWORD
        return int.from_bytes(raw[:4], 'little')
    if kind == 11 and len(raw) >= 8:                      # REG_QWORD
        return int.from_bytes(raw[:8], 'little')
    if kind in (1, 2):                                    # REG_SZ/EXPAND
        return raw.decode('utf-16-le', 'replace').rstrip('\x00')
    if kind == 7:                                         # REG_MULTI_SZ
        return [i.decode('utf-16-le', 'replace')
                for i in multi_sz_items(raw)]
    return raw.hex()


def control_sets(hive, default=False):
    """(current ControlSet name, [names in use]) from Select; with
    ``default``, (current, default, [names in use]): ``Default`` is the
    set the next boot starts from (``Current`` the one the last boot
    ran; they differ only after a change not yet booted)."""
    select = hive.node('Select')
    used = []
    current = chosen = None
    if select:
        vals = hive.values(select)
        for key in ('current', 'default', 'lastknowngood', 'failed'):
            if key in vals:
                n = reg_value(vals[key])
                if isinstance(n, int) and n > 0:
                    name = 'ControlSet%03d' % n
                    if key == 'current':
                        current = name
                    if key == 'default':
                        chosen = name
                    if key != 'failed' and name not in used:
                        used.append(name)
    used = [u for u in used if hive.node(u)]
    if default:
        return current, chosen, used
    return current, used


def windows_services(hive, cset):
    out = {}
    services = hive.node(cset + '\\Services')
    if not services:
        return out
    by_name = {name.lower(): h for name, h in hive.children(services)}
    for group, names in WINDOWS_SERVICES.items():
        for name in names:
            h = by_name.get(name)
            if h is None:
                continue
            vals = hive.values(h)
            out[name] = {'group': group,
                         'start': reg_value(vals['start'])
                         if 'start' in vals else None,
                         'image_path': reg_value(vals['imagepath'])
                         if 'imagepath' in vals else None}
            override = start_overrides(hive, h)
            if override:
                out[name]['start_override'] = override
    for name, h in by_name.items():
        if is_citrix(name) and name not in out and _is_service(hive, h):
            vals = hive.values(h)
            out[name] = {'group': 'citrix',
                         'start': reg_value(vals['start'])
                         if 'start' in vals else None,
                         'image_path': None}
            override = start_overrides(hive, h)
            if override:
                out[name]['start_override'] = override
    return out


def _is_service(hive, key):
    """Whether a key under ``Services`` is a service (it has ``Type``),
    not a driver's parameters kept there (``Services\\XEN``, where xen.sys
    keeps ``ForceUnplug``)."""
    return 'type' in hive.values(key)


#: A service's Start that keeps it from loading (SERVICE_DISABLED).
START_DISABLED = 4


def citrix_active(services):
    """The names of the Citrix/Xen PV services of a control set's
    ``services`` (:func:`windows_services`) that are not disabled: those
    that can stop Windows booting on KVM."""
    return sorted(n for n, s in (services or {}).items()
                  if s.get('group') == 'citrix' and (
                      s.get('start') != START_DISABLED or any(
                          v != START_DISABLED for v in
                          (s.get('start_override') or {}).values())))


def start_overrides(hive, service):
    """{value name: start type} of a service's ``StartOverride`` key (see
    :func:`_start_override`), non-DWORD values as their hex; {} without
    one."""
    override = hive.child(service, 'StartOverride')
    if not override:
        return {}
    return {key: reg_value((kind, raw, key)) for _lower, (kind, raw, key)
            in sorted(hive.values(override).items())}


def windows_filters(hive, cset):
    """[{class, value, names}] of Upper/LowerFilters naming xen*."""
    out = []
    klass = hive.node(cset + '\\Control\\Class')
    for guid, h in hive.children(klass) if klass else ():
        vals = hive.values(h)
        for key in ('upperfilters', 'lowerfilters'):
            if key not in vals:
                continue
            names = reg_value(vals[key])
            if isinstance(names, list) and any(is_citrix(n)
                                               for n in names):
                out.append({'class': guid, 'value': key, 'names': names})
    return out


def windows_ide(hive, cset):
    cdd = hive.node(cset + '\\Control\\CriticalDeviceDatabase')
    if not cdd:
        return []
    return sorted(name for name, _h in hive.children(cdd)
                  if 'ide' in name.lower() or 'ven_8086&dev_7010' in
                  name.lower() or 'ven_8086&dev_7111' in name.lower())


#: The network adapters' device setup class (GUID_DEVCLASS_NET): each
#: adapter is a ``Control\Class\{...}\NNNN`` key whose ``NetCfgInstanceId``
#: is the GUID that ``Services\Tcpip\Parameters\Interfaces\{GUID}`` (its
#: TCP/IP settings) and ``Control\Network\{...}\{GUID}\Connection``
#: (its connection's name) are named by.
NET_CLASS = '{4d36e972-e325-11ce-bfc1-08002be10318}'
#: Bounds on what is read of the guest's network settings (the hive is
#: the guest's, so anything may be in it): registry keys looked at,
#: interfaces reported per ControlSet, entries kept of each list, and
#: characters kept of each name.
MAX_NET_KEYS = 256
MAX_INTERFACES = 16
MAX_NET_ENTRIES = 8
MAX_NET_TEXT = 128


def _net_text(value):
    """A name from the hive for a one-line report: bounded, without
    control characters; None when it is not text."""
    if not isinstance(value, str):
        return None
    return re.sub(r'[\x00-\x1f\x7f]', '?', value)[:MAX_NET_TEXT]


def ipv4(text):
    """``text`` when it is a dotted IPv4 address, else None."""
    import ipaddress
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except (ValueError, AttributeError):
        return None


def mask_prefix(mask):
    """'255.255.255.0' -> 24; None when ``mask`` is not a contiguous
    dotted IPv4 mask (255.0.255.0, 'abc')."""
    if ipv4(mask) is None:
        return None
    bits = int.from_bytes(bytes(int(p) for p in mask.split('.')), 'big')
    prefix = bin(bits).count('1')
    if bits != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        return None
    return prefix


def split_servers(value):
    """The IPv4 addresses of a server list: ``NameServer`` is a REG_SZ
    of addresses separated by commas or spaces; a REG_MULTI_SZ (as
    ``IPAddress`` is on Windows XP and later; Windows 2000 documents it
    as a REG_SZ) gives its strings.  What is not an address (0.0.0.0
    included: "none") is left out; at most :data:`MAX_NET_ENTRIES`."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        for part in re.split(r'[\s,]+', item[:4096]):
            addr = ipv4(part) if part else None
            if addr and addr != '0.0.0.0' and addr not in out:
                out.append(addr)
    return out[:MAX_NET_ENTRIES]


def static_addresses(addresses, masks):
    """['192.0.2.5/24', ...] of the parallel ``IPAddress`` and
    ``SubnetMask`` lists: a contiguous mask becomes its prefix length,
    another dotted mask is kept as it is ('192.0.2.5/255.0.255.0'), and
    an address without a usable mask (the lists' lengths differ) stands
    alone; 0.0.0.0 entries (none) are left out."""
    if isinstance(addresses, str):
        addresses = re.split(r'[\s,]+', addresses)
    if isinstance(masks, str):
        masks = re.split(r'[\s,]+', masks)
    addresses = addresses if isinstance(addresses, list) else []
    masks = masks if isinstance(masks, list) else []
    out = []
    for i, item in enumerate(addresses[:MAX_NET_KEYS]):
        addr = ipv4(item)
        if not addr or addr == '0.0.0.0':
            continue
        mask = ipv4(masks[i]) if i < len(masks) else None
        if mask == '0.0.0.0':
            mask = None
        prefix = mask_prefix(mask) if mask else None
        if prefix is not None:
            addr += '/%d' % prefix
        elif mask:
            addr += '/' + mask
        if addr not in out:
            out.append(addr)
    return out[:MAX_NET_ENTRIES]


def _net_adapters(hive, cset):
    """{GUID (lower case): (DriverDesc, connection name)} of the network
    adapters ``cset`` knows."""
    out = {}
    klass = hive.node(cset + '\\Control\\Class')
    by_name = {name.lower(): h for name, h in hive.children(klass)} \
        if klass else {}
    net = by_name.get(NET_CLASS)
    for _name, h in hive.children(net)[:MAX_NET_KEYS] if net else ():
        vals = hive.values(h)
        guid = _net_text(reg_value(vals['netcfginstanceid'])) \
            if 'netcfginstanceid' in vals else None
        if guid:
            out[guid.lower()] = [_net_text(reg_value(vals['driverdesc']))
                                 if 'driverdesc' in vals else None, None]
    network = hive.node(cset + '\\Control\\Network')
    by_name = {name.lower(): h for name, h in hive.children(network)} \
        if network else {}
    net = by_name.get(NET_CLASS)
    for guid, h in hive.children(net)[:MAX_NET_KEYS] if net else ():
        conn = hive.child(h, 'Connection')
        vals = hive.values(conn) if conn else {}
        if 'name' in vals:
            out.setdefault(guid.lower(), [None, None])[1] = _net_text(
                reg_value(vals['name']))
    return out


def windows_network(hive, cset):
    """The static IPv4 settings of ``cset``'s network interfaces:
    [{guid, name (the connection's), description (the adapter's
    DriverDesc), dhcp, addresses ('192.0.2.5/24'), gateways, dns}], only
    of the interfaces with a static address (``EnableDHCP`` 0) or static
    DNS servers (``NameServer``, which DHCP does not override).  Windows
    binds these to the adapter (its NetCfgInstanceId), not to its MAC:
    a new adapter, as the move to KVM makes, starts on DHCP."""
    interfaces = hive.node(cset + '\\Services\\Tcpip\\Parameters\\'
                           'Interfaces')
    if not interfaces:
        return []
    adapters = _net_adapters(hive, cset)
    out = []
    for guid, h in hive.children(interfaces)[:MAX_NET_KEYS]:
        vals = hive.values(h)
        dhcp = reg_value(vals['enabledhcp']) != 0 \
            if 'enabledhcp' in vals else True
        entry = {'guid': _net_text(guid), 'dhcp': dhcp, 'addresses': [],
                 'gateways': [],
                 'dns': split_servers(reg_value(vals['nameserver']))
                 if 'nameserver' in vals else []}
        if not dhcp:
            entry['addresses'] = static_addresses(
                reg_value(vals['ipaddress']) if 'ipaddress' in vals
                else [], reg_value(vals['subnetmask'])
                if 'subnetmask' in vals else [])
            entry['gateways'] = split_servers(
                reg_value(vals['defaultgateway'])) \
                if 'defaultgateway' in vals else []
        if not entry['addresses'] and not entry['dns']:
            continue
        entry['description'], entry['name'] = adapters.get(
            guid.lower(), (None, None))
        out.append(entry)
    out.sort(key=lambda e: (e['name'] is None, e['name'] or '', e['guid']))
    return out[:MAX_INTERFACES]


def system_facts(hive):
    """What the SYSTEM hive tells, per ControlSet in use."""
    current, default, used = control_sets(hive, default=True)
    facts = {'current_control_set': current, 'default_control_set': default,
             'control_sets': {}, 'rtc_utc': rtc_utc(hive, default or current)}
    for cset in used:
        facts['control_sets'][cset] = {
            'services': windows_services(hive, cset),
            'filters': windows_filters(hive, cset),
            'ide_entries': windows_ide(hive, cset),
            'network': windows_network(hive, cset)}
    return facts


def rtc_utc(hive, cset):
    """Whether the guest keeps the hardware clock in UTC
    (``Control\\TimeZoneInformation\\RealTimeIsUniversal`` non-zero; the
    Xen PV drivers honour it), where Windows' default is local time."""
    if not cset:
        return None
    node = hive.node(cset + '\\Control\\TimeZoneInformation')
    vals = hive.values(node) if node else {}
    if 'realtimeisuniversal' not in vals:
        return False
    value = reg_value(vals['realtimeisuniversal'])
    return isinstance(value, int) and value != 0


#: The storage service that must start at boot, per chosen bus.
BOOT_SERVICES = {'scsi': ('vioscsi',), 'virtio': ('viostor',),
                 'sata': ('storahci', 'msahci'),
                 'ide': ('intelide', 'pciide', 'atapi')}


#: Windows' SAN policy (``partmgr\Parameters\SanPolicy``): 1 brings
#: every disk it finds online.  Server editions default to "offline
#: shared", which leaves a disk found on a SCSI bus offline: after the
#: move, each data disk is a new disk on a new bus (virtio-scsi), and
#: comes up offline (its services fail to start).  virt-v2v brings them
#: online with a first-boot script; the policy does it at the first boot.
SAN_POLICY_ONLINE_ALL = 1


def _san_policy(hive, services, cset):
    """Set ``cset``'s SAN policy to online all; what changed, or None."""
    part = hive.child(services, 'partmgr') if services else None
    if not part:
        return None
    params = hive.child(part, 'Parameters')
    if not params:
        params = hive.add_child(part, 'Parameters')
    vals = hive.values(params)
    old = reg_value(vals['sanpolicy']) if 'sanpolicy' in vals else None
    if old == SAN_POLICY_ONLINE_ALL:
        return None
    hive.set_value(params, 'SanPolicy', 4,
                   SAN_POLICY_ONLINE_ALL.to_bytes(4, 'little'))
    return '%s\\Services\\partmgr\\Parameters\\SanPolicy: %s -> %d' % (
        cset, 'unset' if old is None else old, SAN_POLICY_ONLINE_ALL)


def _start_override(hive, service, where):
    """Windows 8 and Server 2012 on keep a driver's own start type per
    hardware profile (``StartOverride``, value ``0``: 3 for storahci on
    a machine installed on IDE), which wins over ``Start``: Microsoft's
    way to switch a system disk to AHCI sets it to 0.  Returns what
    changed."""
    override = hive.child(service, 'StartOverride')
    if not override:
        return []
    changes = []
    for _lower, (kind, raw, key) in sorted(hive.values(override).items()):
        old = reg_value((kind, raw, key))
        if kind != 4 or old != 0:
            # (One that is no DWORD is written as one: the bus chosen
            # counts on the fix clearing every override.)
            hive.set_value(override, key, 4, (0).to_bytes(4, 'little'))
            changes.append('%s\\StartOverride\\%s: %s -> 0'
                           % (where, key, old))
    return changes


def _disable(hive, service, where):
    """Make a service start never (:data:`START_DISABLED`), its
    ``StartOverride`` values too (they win over ``Start``).  Returns what
    changed."""
    changes = []
    vals = hive.values(service)
    start = vals.get('start')
    if start is None or start[0] != 4 or \
            reg_value(start) != START_DISABLED:
        hive.set_value(service, start[2] if start else 'Start', 4,
                       START_DISABLED.to_bytes(4, 'little'))
        changes.append('%s\\Start: %s -> %d (disabled)' % (
            where, reg_value(start) if start else 'none', START_DISABLED))
    override = hive.child(service, 'StartOverride')
    for _lower, (kind, raw, key) in sorted(
            hive.values(override).items()) if override else ():
        old = reg_value((kind, raw, key))
        if kind != 4 or old != START_DISABLED:
            hive.set_value(override, key, 4,
                           START_DISABLED.to_bytes(4, 'little'))
            changes.append('%s\\StartOverride\\%s: %s -> %d' % (
                where, key, old, START_DISABLED))
    return changes


def fix_system_hive(hive, bus=None, disks=1):
    """Disable the Citrix XenServer PV drivers' services and remove the
    filter entries naming them, and make the storage driver of ``bus``
    start at boot, in every ControlSet in use; with more than one disk,
    bring every disk online at boot (:data:`SAN_POLICY_ONLINE_ALL`).
    Returns what changed."""
    changes = []
    # Every Xen PV driver the report names (is_citrix), not only the
    # ones of :data:`WINDOWS_SERVICES`: newer VM Tools add xendisk (a
    # disk filter) and xencons, older ones and GPLPV others; a filter
    # left in a class whose driver cannot start fails the devices of
    # that class, the boot disk's included.  The services are disabled
    # (Start 4), not deleted, as XCP-ng's XenBootFix does, and virt-v2v
    # with the Parallels drivers (deleting "would confuse the
    # uninstaller"): the tools' own uninstaller, run later in the guest,
    # still finds what it installed, and the change can be undone.
    _current, used = control_sets(hive)
    for cset in used:
        services = hive.node(cset + '\\Services')
        for name, h in hive.children(services) if services else ():
            if is_citrix(name) and _is_service(hive, h):
                changes.extend(_disable(hive, h, '%s\\Services\\%s' % (
                    cset, name)))
        klass = hive.node(cset + '\\Control\\Class')
        for guid, h in hive.children(klass) if klass else ():
            vals = hive.values(h)
            for key in ('upperfilters', 'lowerfilters'):
                if key not in vals:
                    continue
                kind, raw, value = vals[key]
                if kind != 7:
                    continue
                # The list as Windows reads it (to its empty string),
                # each kept name written back as the bytes it was.
                items = multi_sz_items(raw)
                names = [i.decode('utf-16-le', 'replace') for i in items]
                keep = [i for i, n in zip(items, names) if not is_citrix(n)]
                if len(keep) != len(items):
                    hive.set_value(h, value, 7, b''.join(
                        i + b'\x00\x00' for i in keep) + b'\x00\x00')
                    changes.append('%s\\Control\\Class\\%s\\%s: %s -> %s'
                                   % (cset, guid, value, ','.join(names),
                                      ','.join(n for n in names
                                               if not is_citrix(n))))
        for name in BOOT_SERVICES.get(bus, ()):
            h = hive.child(services, name) if services else None
            if not h:
                continue
            vals = hive.values(h)
            if 'start' in vals and (vals['start'][0] != 4 or
                                    reg_value(vals['start']) != 0):
                # (A Start that is no DWORD is written as one.)
                hive.set_value(h, vals['start'][2], 4,
                               (0).to_bytes(4, 'little'))
                changes.append('%s\\Services\\%s\\Start: %s -> 0' % (
                    cset, name, reg_value(vals['start'])))
            changes.extend(_start_override(hive, h, '%s\\Services\\%s'
                                           % (cset, name)))
            break
        if disks > 1:
            changed = _san_policy(hive, services, cset)
            if changed:
                changes.append(changed)
    if changes:
        hive.commit()
    return changes


#: The BCD's boot manager object, and the elements read from its default
#: Windows boot loader object.
BCD_BOOTMGR = '{9dea862c-5cdd-4e70-acc1-f32b344d4795}'
BCD_DEFAULT = '23000003'
BCD_ELEMENTS = {'11000001': 'application_device', '21000001': 'os_device',
                '12000002': 'application_path', '12000004': 'description',
                '22000002': 'system_root'}
BCD_PATHS = ('/Boot/BCD', '/EFI/Microsoft/Boot/BCD')


def bcd_facts(hive):
    """The default boot entry of a BCD hive: {'default', 'description',
    'application_path', 'system_root', 'application_device',
    'os_device' (hex)} or {'error'}."""
    elements = hive.node('Objects\\%s\\Elements\\%s' % (
        BCD_BOOTMGR, BCD_DEFAULT))
    vals = hive.values(elements) if elements else {}
    if 'element' not in vals:
        return {'error': 'no default boot entry (boot manager element %s)'
                % BCD_DEFAULT}
    default = reg_value(vals['element'])
    out = {'default': default}
    node = hive.node('Objects\\%s\\Elements' % default)
    if not node:
        return {'default': default, 'error': 'the default boot entry %s '
                'is not in the BCD' % default}
    for elem, name in BCD_ELEMENTS.items():
        h = hive.child(node, elem)
        vals = hive.values(h) if h else {}
        if 'element' not in vals:
            out[name] = None
        elif name.endswith('_device'):
            out[name] = vals['element'][1].hex()
        else:
            out[name] = reg_value(vals['element'])
    return out


def partition_id(g, part):
    """How a BCD (and MountedDevices) names a partition: for MBR, the
    disk signature (4 bytes) and the partition's byte offset (8 bytes,
    little-endian); for GPT, the partition GUID (mixed-endian bytes)."""
    import uuid
    dev = g.part_to_dev(part)
    num = g.part_to_partnum(part)
    table = g.part_get_parttype(dev)
    if table == 'gpt':
        guid = uuid.UUID(g.part_get_gpt_guid(dev, num))
        return {'table': 'gpt', 'guid': str(guid),
                'bytes': [guid.bytes_le.hex()]}
    signature = g.pread_device(dev, 4, 440)
    start = [p['part_start'] for p in g.part_list(dev)
             if p['part_num'] == num][0]
    return {'table': table, 'signature': signature[::-1].hex(),
            'offset': start, 'bytes': [signature.hex(),
                                       start.to_bytes(8, 'little').hex()]}


#: Windows' boot manager on the EFI system partition (mounted at /), and
#: UEFI's removable-media path there, which ``bcdboot /f UEFI`` fills
#: with a copy of it: what a firmware with no boot entry runs.
WINDOWS_BOOT_DIR = '/EFI/Microsoft/Boot'
WINDOWS_BOOTMGR = 'bootmgfw.efi'
WINDOWS_FALLBACK_DIR = '/EFI/Boot'
WINDOWS_FALLBACK = WINDOWS_FALLBACK_DIR + '/bootx64.efi'
#: The largest boot manager copied to the fallback path (Windows' is a
#: few MiB).
MAX_BOOTMGR = 32 << 20


def windows_uefi_fallback(g, partition):
    """Whether the EFI system partition holding Windows' BCD (mounted at
    /) has the UEFI fallback bootloader (``\\EFI\\Boot\\bootx64.efi``),
    and whether Windows' boot manager is there to be copied to it:
    {'present', 'source' (its directory, or None when there is no
    ``bootmgfw.efi`` of at most :data:`MAX_BOOTMGR` bytes), 'files',
    'partition'}, the shape of :func:`uefi_fallback`'s.

    As for Linux (:func:`uefi_fallback`), the boot entry Windows wrote
    (``\\EFI\\Microsoft\\Boot\\bootmgfw.efi``) was in the source VM's
    NVRAM, which does not move: without the fallback, the disk boots
    nothing on KVM."""
    out = {'present': _is_file(g, _case_path(g, WINDOWS_FALLBACK)),
           'source': None, 'files': [], 'partition': partition}
    top = _case_path(g, WINDOWS_BOOT_DIR)
    bootmgr = _case_path(g, top + '/' + WINDOWS_BOOTMGR) if top else None
    try:
        usable = _is_file(g, bootmgr) and g.filesize(bootmgr) <= MAX_BOOTMGR
    except RuntimeError:
        usable = False
    if usable:
        out.update(source=top, files=[bootmgr.rsplit('/', 1)[1]])
        if not out['present']:
            made = _case_path(g, WINDOWS_FALLBACK_DIR)
            out.update(room(g, '/', [bootmgr],
                            bool(made) and _exists(g, made)))
    return out


def fix_windows_uefi_fallback(g, facts):
    """Copy Windows' boot manager to the fallback path, as virt-v2v does,
    on the EFI system partition mounted read-write at /; an existing
    ``bootx64.efi`` is never replaced.  [(from, to)] of the copy."""
    if not facts or facts.get('present') or not facts.get('source') or \
            not facts.get('files'):
        return []
    src = facts['source'] + '/' + facts['files'][0]
    if not _is_file(g, src) or g.filesize(src) > MAX_BOOTMGR:
        return []
    full = no_room(facts, facts.get('partition') or '/')
    if full:
        raise ProbeError(full)
    top = _case_path(g, WINDOWS_FALLBACK_DIR)
    if top is None:
        return []
    g.mkdir_p(top)
    dest = _case_path(g, top + '/' + WINDOWS_FALLBACK.rsplit('/', 1)[1])
    if dest is None or _exists(g, dest):
        return []
    g.cp(src, dest)
    return [(src, dest)]


#: How libguestfs names a volume of Windows' dynamic disks (LDM).
LDM_PREFIX = '/dev/mapper/ldm_vol_'


def windows_bcd(g, guest):
    """Find and read the BCD of the Windows guest (its root mounted
    nowhere): on each NTFS or FAT partition of the guest's disk.  Where
    it is on the EFI system partition (``/EFI/Microsoft/Boot/BCD`` on
    FAT), ``uefi_fallback`` is :func:`windows_uefi_fallback`'s facts."""
    searched = []
    found = None
    disk = guest.get('disk')
    if disk is None and str(guest.get('root')).startswith(LDM_PREFIX):
        # Windows on a dynamic disk: no disk of its own to look on.
        return {'found': False, 'searched': [], 'dynamic_disk': True}
    for part in g.list_partitions():
        if disk_index(part) != disk or found:
            continue
        try:
            fs = g.vfs_type(part)
            if fs not in ('ntfs', 'vfat'):
                continue
            g.mount_ro(part, '/')
        except RuntimeError:
            continue
        try:
            for cand in BCD_PATHS:
                searched.append('%s:%s' % (part, cand))
                path = _case_path(g, cand)
                if not _is_file(g, path):
                    continue
                found = {'partition': part, 'path': path}
                if fs == 'vfat' and cand == '/EFI/Microsoft/Boot/BCD':
                    found['uefi_fallback'] = windows_uefi_fallback(g, part)
                try:
                    hive = Hive(g, path)
                    try:
                        found.update(bcd_facts(hive))
                    finally:
                        hive.close()
                except RuntimeError as e:
                    found['error'] = ' '.join(str(e).split())
                break
        finally:
            g.umount_all()
    if found is None:
        return {'found': False, 'searched': searched}
    found['found'] = True
    try:
        ident = partition_id(g, guest['root'])
    except (RuntimeError, IndexError) as e:
        found['names_system_partition'] = None
        found['system_partition'] = {'error': str(e)}
        return found
    found['system_partition'] = {k: v for k, v in ident.items()
                                 if k != 'bytes'}
    devices = [found.get(k) for k in ('os_device', 'application_device')
               if found.get(k)]
    if 'error' in found or not devices:
        found['names_system_partition'] = None
    else:
        found['names_system_partition'] = all(
            all(b in dev for b in ident['bytes']) for dev in devices)
    return found


def windows_facts(g, root):
    sysroot = g.inspect_get_windows_systemroot(root)
    facts = {'systemroot': sysroot, 'control_sets': {}, 'driver_store': [],
             'build': None}
    try:
        system = g.case_sensitive_path(sysroot + '/system32/config/system')
    except RuntimeError as e:
        facts['error'] = 'no SYSTEM hive: %s' % e
        return facts
    facts['system_hive'] = system
    hive = Hive(g, system)
    try:
        facts.update(system_facts(hive))
    finally:
        hive.close()
    try:
        software = g.case_sensitive_path(
            sysroot + '/system32/config/software')
        hive = Hive(g, software)
        try:
            node = hive.node('Microsoft\\Windows NT\\CurrentVersion')
            vals = hive.values(node) if node else {}
            if 'currentbuildnumber' in vals:
                facts['build'] = reg_value(vals['currentbuildnumber'])
            for key, name in (('editionid', 'edition'),
                              ('installationtype', 'installation_type'),
                              ('currentversion', 'current_version')):
                if key in vals:
                    facts[name] = reg_value(vals[key])
        finally:
            hive.close()
    except RuntimeError:
        pass
    try:
        store = g.case_sensitive_path(
            sysroot + '/system32/DriverStore/FileRepository')
        for entry in _ls(g, store):
            low = entry.lower()
            for drv in ('viostor', 'vioscsi', 'netkvm'):
                if low.startswith(drv + '.inf') and \
                        len(facts['driver_store']) < MAX_REPORTED:
                    facts['driver_store'].append(entry)
    except RuntimeError:
        pass
    facts['hibernated'] = hibernated(g)
    return facts


#: The first bytes of ``hiberfil.sys`` while it holds a hibernated
#: session (a hibernation, or Windows 8 on's Fast Startup shutdown): what
#: ntfs-3g checks before it mounts the volume read-only instead.
HIBERNATION_MAGIC = b'hibr'


def hibernated(g):
    """Whether the mounted Windows volume's ``hiberfil.sys`` holds a
    hibernated session (:data:`HIBERNATION_MAGIC`, in any case)."""
    try:
        path = g.case_sensitive_path('/hiberfil.sys')
        return bytes(g.pread(path, 4, 0)).lower() == HIBERNATION_MAGIC
    except RuntimeError:
        return False


HIBERNATED = ('Windows was hibernated or shut down with Fast Startup '
              '(hiberfil.sys holds its session): ')


def _writable(g, what):
    """ProbeError when the volume mounted at / for writing is read-only
    (ntfs-3g mounts a hibernated Windows, a Fast Startup shutdown or an
    unclean one so, without an error): nothing could be written."""
    try:
        flags = _hash(g.statvfs('/')).get('flag', 0)
    except RuntimeError:
        return
    if flags & 1:                                 # ST_RDONLY
        raise ProbeError('%s was mounted read-only (a Windows hibernated, '
                         'shut down with Fast Startup or not shut down '
                         'cleanly): nothing was changed' % what)


# -- one guest ----------------------------------------------------------------

def mount_guest(g, root, write=False):
    """Mount the guest of ``root``: the root itself at / (libguestfs maps
    an fstab's /dev/xvda1 to the first disk's /dev/sda1, which is another
    guest's when several are inspected at once), the rest as its fstab
    says."""
    mps = _hash(g.inspect_get_mountpoints(root))
    mps['/'] = root
    mount = g.mount if write else g.mount_ro
    for mp, dev in sorted(mps.items(), key=lambda kv: len(kv[0])):
        try:
            mount(dev, mp)
        except RuntimeError:
            if mp == '/':
                raise


def inspect_root(g, root, slots=None):
    def get(fn, default=None):
        try:
            return fn(root)
        except RuntimeError:
            return default
    guest = {
        'root': root, 'disk': disk_index(root),
        'type': get(g.inspect_get_type),
        'distro': get(g.inspect_get_distro),
        'product_name': get(g.inspect_get_product_name),
        'major_version': get(g.inspect_get_major_version),
        'minor_version': get(g.inspect_get_minor_version),
        'arch': get(g.inspect_get_arch),
        'hostname': get(g.inspect_get_hostname),
        'package_format': get(g.inspect_get_package_format),
    }
    tables = partitions(g, guest['disk'])
    guest['partition_tables'] = tables
    guest['firmware'] = firmware(tables)
    mount_guest(g, root)
    try:
        if guest['type'] == 'linux':
            guest['linux'] = linux_facts(g, root, slots)
            guest['linux']['xen_files'] = xen_files(g, fix_modules(guest))
            guest['linux']['lvm_filters'] = lvm_filters(
                g, guest['linux']['kernels'], fix_bus(guest), slots)
        elif guest['type'] == 'windows':
            guest['windows'] = windows_facts(g, root)
    finally:
        g.umount_all()
    if guest['type'] == 'windows':
        bcd = windows_bcd(g, guest)
        guest['windows']['uefi_fallback'] = bcd.pop('uefi_fallback', None)
        guest['windows']['bcd'] = bcd
    return guest


# -- fixes --------------------------------------------------------------------

def device_for(name, slots=None):
    """/dev/xvdb2 -> /dev/sdb2, the appliance's name of that partition
    (the disks are added in order: see :func:`position`); None when the
    name is on none of the disks."""
    m = DEV_RE.match(name)
    at = position(name, slots)
    if at is None:
        return None
    return '/dev/sd%s%s' % (index_letters(at), m.group(3))


def bus_prefix(bus):
    """The names of a Linux guest's disks on KVM's ``bus``: vd on
    virtio-blk, sd on the others (virtio-scsi, sata, ide)."""
    return 'vd' if bus == 'virtio' else 'sd'


def kvm_name(name, bus, slots=None):
    """/dev/xvdb2 -> /dev/vdb2: the name on KVM's ``bus`` of the Xen
    device ``name`` (:func:`device_for`), or None when it is on none of
    the disks."""
    dev = device_for(name, slots)
    if dev is None:
        return None
    return '/dev/%s%s' % (bus_prefix(bus), dev[len('/dev/sd'):])


def shared_uuids(g):
    """{uuid: [devices]} of the filesystem UUIDs that more than one
    filesystem of the disks given has (a disk cloned from another, two
    disks made from one template): ``UUID=`` would name either of them.
    Asked once per handle."""
    found = getattr(g, '_any2kvm_shared_uuids', None)
    if found is not None:
        return found
    by_uuid = {}
    try:
        devices = sorted(g.list_filesystems())
    except (AttributeError, RuntimeError):
        devices = []
    # A btrfs subvolume (libguestfs's ``btrfsvol:DEVICE/PATH``) has its
    # filesystem's UUID: one filesystem, not a clone (fstab's subvol=
    # picks the subvolume).
    devices = [d for d in devices if not d.startswith('btrfsvol:')]
    for dev in devices[:MAX_FILESYSTEMS]:
        try:
            uuid = g.vfs_uuid(dev)
        except RuntimeError:
            continue
        if uuid:
            by_uuid.setdefault(uuid.lower(), []).append(dev)
    found = {u: devs for u, devs in by_uuid.items() if len(devs) > 1}
    try:
        g._any2kvm_shared_uuids = found
    except AttributeError:
        pass
    return found


#: The most filesystems whose UUIDs are compared (:func:`shared_uuids`).
MAX_FILESYSTEMS = 256


def replacement(g, name, bus, slots=None, whole_uuid=True):
    """What stands for the device ``name`` on KVM: UUID=... when the
    filesystem has one that no other filesystem of the disks has (a
    whole disk's too, unless not ``whole_uuid``: GRUB's device.map names
    disks), else the chosen bus's name; None when it stays (not a device
    name, already the bus's, or on none of the disks)."""
    m = DEV_RE.match(name)
    if not m:
        return None
    if m.group(1) == bus_prefix(bus):
        return None
    dev = device_for(name, slots)
    if dev is None:
        return None
    if m.group(3) or whole_uuid:
        try:
            uuid = g.vfs_uuid(dev)
        except RuntimeError:
            uuid = ''
        if uuid and uuid.lower() not in shared_uuids(g):
            return 'UUID=' + uuid
    return kvm_name(name, bus, slots)


#: The kernel command lines of each bootloader file (its path's last
#: part, or the path): what comes before the arguments.
_KERNEL_LINES = (
    (('grub.cfg',), re.compile(r'^\s*(?:linux|linux16|linuxefi)\s+\S')),
    (('menu.lst', 'grub.conf'), re.compile(r'^\s*kernel\s+\S')),
    (('extlinux.conf', 'syslinux.cfg'), re.compile(r'^\s*append\s', re.I)),
    (('/boot/loader/entries/',), re.compile(r'^\s*options\s')),
    # RHEL 8's BLS entries say "options $kernelopts": the value is here.
    (('grubenv',), re.compile(r'^kernelopts=\S')),
)
#: The shell-style settings whose value is the command line of the
#: kernels to come: GRUB's (update-grub, grub2-mkconfig), and SLES 11's
#: perl-Bootloader (a kernel update writes its entry with them).
_ASSIGNED_CMDLINES = {
    '/etc/default/grub': re.compile(
        r'^(GRUB_CMDLINE_LINUX=)(["\']?)(.*?)\2([ \t]*)$'),
    '/etc/sysconfig/bootloader': re.compile(
        r'^((?:DEFAULT|FAILSAFE)_APPEND=)(["\']?)(.*?)\2([ \t]*)$'),
}


def add_kernel_args(path, line, args):
    """``line`` of the bootloader file ``path`` with ``args`` added when
    it is a kernel command line that lacks them; (new line, added)."""
    body = line.rstrip('\r\n')
    end = line[len(body):]
    want = [a for a in args if a.split('=', 1)[0] + '=' not in body]
    if not want:
        return line, []
    extra = ' '.join(want)
    if path == '/etc/kernel/cmdline':
        if not body.strip():
            return line, []
        return body.rstrip() + ' ' + extra + end, want
    if path in _ASSIGNED_CMDLINES:
        m = _ASSIGNED_CMDLINES[path].match(body)
        if not m:
            return line, []
        value = (m.group(3) + ' ' + extra).strip()
        q = m.group(2) or '"'
        return m.group(1) + q + value + q + m.group(4) + end, want
    pattern = _kernel_line(path)
    if pattern is not None and pattern.match(body):
        return body.rstrip() + ' ' + extra + end, want
    return line, []


def _kernel_line(path):
    """The pattern of the kernel command lines of the bootloader file
    ``path`` (:data:`_KERNEL_LINES`), or None."""
    name = (path or '').rsplit('/', 1)[-1]
    for keys, pattern in _KERNEL_LINES:
        if name in keys or any((path or '').startswith(k) for k in keys
                               if k.startswith('/')):
            return pattern
    return None


def fix_net_text(text, unbind=True):
    """(new text, [(old, new)]) of a network configuration file: enXN
    becomes ethN (the kernel's name, kept by net.ifnames=0), and, with
    ``unbind``, a line binding it to the Xen NIC's MAC is dropped (only
    in a file that names its interface: one bound by its MAC alone would
    then match every NIC)."""
    changes = []
    lines = []
    for line in text.splitlines(True):
        if line.lstrip().startswith('#'):
            lines.append(line)
            continue
        if unbind and MAC_BIND_RE.match(line):
            changes.append((line.strip(), ''))
            continue

        def rename(m):
            old = m.group(1)
            if not old.startswith('enX'):
                return old
            new = 'eth' + old[3:]
            changes.append((old, new))
            return new
        lines.append(XEN_NIC_RE.sub(rename, line))
    return ''.join(lines), changes


#: What starts a boot entry in a bootloader file (GRUB 2, GRUB legacy,
#: extlinux/syslinux), and what loads an initrd in one.
_ENTRY_RE = re.compile(r'^\s*(?:menuentry|submenu|title|label)\b', re.I)
_INITRD_RE = re.compile(r'^\s*(?:initrd|initrd16|initrdefi)\b|'
                        r'^\s*append\b.*\binitrd=', re.I)


def initrdless_lines(path, lines):
    """The indexes of the kernel command lines of ``path``'s boot entries
    that load no initrd: their kernel must find the root itself, which it
    does by a device name (or PARTUUID=), never by ``UUID=`` (an
    initramfs resolves that).  Empty for the files that are no entries
    (``/etc/default/grub``: what update-grub makes has the initrd)."""
    name = (path or '').rsplit('/', 1)[-1]
    kernel = _kernel_line(path)
    if kernel is None or name == 'grubenv':
        return set()
    whole = (path or '').startswith('/boot/loader/entries/')
    out, entry, has_initrd = set(), [], False
    for i, line in enumerate(lines + ['menuentry end']):
        if (_ENTRY_RE.match(line) and not whole) or i == len(lines):
            if not has_initrd:
                out.update(entry)
            entry, has_initrd = [], False
            continue
        if line.lstrip().startswith('#'):
            continue
        if _INITRD_RE.match(line):
            has_initrd = True
        if kernel.match(line):
            entry.append(i)
    return out


def fix_text(g, text, bus, is_boot, slots=None, unknown=None, path=None,
             kernel_args=()):
    """(new text, [(old, new)]) of one file; ``unknown`` (a list) gets
    the Xen device names left as they are because they are on none of
    the VM's disks.  ``kernel_args``: added to the kernel command lines
    of the bootloader file ``path`` that lack them."""
    changes = []
    cache = {}
    # Files that take device paths only (GRUB's device map names disks;
    # SUSE's grub_installdevice, where perl-Bootloader installs GRUB at
    # each update, disks or partitions): never UUID=.
    devices_only = (path or '').endswith(DEVICE_PATH_FILES)

    def sub(m):
        name = m.group(1)
        if not name.startswith('/dev/'):
            return name
        if name not in cache:
            cache[name] = replacement(
                g, name, bus, slots, whole_uuid=not devices_only)
            if cache[name] and cache[name].startswith('UUID=') and (
                    devices_only or (path or '').startswith(UNIT_DIR + '/')):
                # A unit's What= is a path: udev's link of the UUID.
                cache[name] = '/dev/disk/by-uuid/' + cache[name][5:]
            if unknown is not None and cache[name] is None and \
                    DEV_RE.match(name) and position(name, slots) is None \
                    and name not in unknown:
                unknown.append(name)
        new = cache[name]
        if new is None:
            return name
        changes.append((name, new))
        return new

    def sub_plain(m):
        # A kernel line without an initrd: the bus's name.
        name = m.group(1)
        new = sub(m)
        if new.startswith('UUID='):
            changes.pop()
            new = kvm_name(name, bus, slots) or name
            if new != name:
                changes.append((name, new))
        return new
    lines = []
    texts = text.splitlines(True)
    plain = initrdless_lines(path, texts) if is_boot else set()
    for i, line in enumerate(texts):
        if line.lstrip().startswith('#'):
            lines.append(line)
            continue
        new = NAME_RE.sub(sub_plain if i in plain else sub, line)
        if is_boot:
            if XEN_CONSOLE_RE.search(new):
                new = _serial_console(new, changes)
            if kernel_args and path:
                new, added = add_kernel_args(path, new, kernel_args)
                changes.extend(('', a) for a in added)
        lines.append(new)
    return ''.join(lines), changes


#: The console every Nova guest has, whose log ``openstack console log
#: show`` (and the boot proof) reads: the first serial port.
SERIAL_CONSOLE = 'console=ttyS0'
_SERIAL_RE = re.compile(r'(?<![\w-])console=ttyS[0-9]')
_XEN_CONSOLE_ARG_RE = re.compile(r'([ \t]*)(' + XEN_CONSOLE_RE.pattern + ')')


def _serial_console(line, changes):
    """``line`` with its Xen consoles gone (KVM has neither ``hvc0``
    without a virtio console, which Nova does not add, nor ``xvc0``):
    the first ``console=`` of them becomes :data:`SERIAL_CONSOLE`, as
    virt-v2v does, unless the line has a serial console already, so that
    the kernel's messages and systemd's getty reach the console Nova
    logs; the others and ``xencons=`` are dropped.  ``changes`` gets
    (old, new) of each."""
    serial = [bool(_SERIAL_RE.search(line))]

    def swap(m):
        arg = m.group(2)
        if not serial[0] and arg.startswith('console='):
            serial[0] = True
            changes.append((arg, SERIAL_CONSOLE))
            return m.group(1) + SERIAL_CONSOLE
        changes.append((arg, ''))
        return ''
    return _XEN_CONSOLE_ARG_RE.sub(swap, line)


def fix_grubenv(g, text, bus, slots=None, unknown=None, path=None,
                kernel_args=()):
    """(new text, [(old, new)]) of a GRUB environment block (grubenv:
    RHEL 8 keeps the kernel command line of its BLS entries there, as
    ``kernelopts=``), fixed as a bootloader file (:func:`fix_text`) and
    kept at its size: GRUB reads and writes the block in place, padded
    with ``#``.  (None, changes) when the fixed text does not fit."""
    size = len(_kept(text))
    head, sep, pad = text.rpartition('\n')
    if pad.strip('#'):
        head, sep = text, ''        # no padding after the last line
    body = head + sep
    # UUID= is longer than the Xen name it replaces: where it does not
    # fit, the bus's name (never longer), then without the kernel
    # arguments (the NIC's name is not the root's).
    tries = ((g, kernel_args), (_NoUuids(g), kernel_args),
             (_NoUuids(g), ()))
    for view, args in tries:
        left = [] if unknown is None else list(unknown)
        new, changes = fix_text(view, body, bus, True, slots, left,
                                path=path, kernel_args=args)
        if not changes:
            return text, []
        room = size - len(_kept(new))
        if room >= 0:
            if unknown is not None:
                unknown[:] = left
            return new + '#' * room, changes
    return None, changes


class _NoUuids(object):
    """The guest's handle, with no filesystem UUID to name a device by:
    :func:`replacement` then gives the bus's name."""

    def __init__(self, g):
        self._g = g

    def vfs_uuid(self, dev):
        return ''

    def __getattr__(self, name):
        return getattr(self._g, name)


def grub_envs(g):
    """The guest's GRUB environment blocks."""
    return [p for p in GRUB_ENVS if _exists(g, p)]


def fix_linux(g, root, bus, tried, fail_after=None, slots=None,
              default=None, modules=None, cloud=None):
    """Rewrite the files of the Linux guest of ``root``; ``tried`` gets
    each path as its change starts (what a failure had touched).  A Xen
    device name on none of the VM's disks (``slots``) is left as it is,
    and listed in its file's ``unknown`` (the inspection's
    ``disk_names`` list it too).

    The network: where the guest's configuration names its Xen NIC
    (:func:`network_facts`), the kernel is told to keep its names
    (``net.ifnames=0`` on every kernel command line: the NICs are eth0,
    eth1, ... in PCI order, as Nova plugs them), ``enXN`` becomes
    ``ethN``, the lines binding a configuration to the Xen NIC's MAC
    are dropped, and udev's 70-persistent-net.rules is renamed aside
    (``.any2kvm-disabled``).

    ``default``: (menu.lst path, kernel version, [versions]) when a GRUB
    legacy menu boots a Xen-only kernel by default and another kernel
    can boot on KVM (:func:`default_fix`): that kernel's entry is made
    the default.

    What Xen's drivers and consoles leave in the guest's settings
    (:func:`xen_config`): the modprobe aliases of Xen's drivers name
    ``modules`` ({'block', 'net'}, :func:`fix_modules`) instead or go,
    SUSE's INITRD_MODULES lose Xen's drivers, an inittab getty on the
    Xen console runs on ttyS0, and securetty lists ttyS0.

    An LVM filter that accepts Xen's disks only gets, after each pattern
    naming them, the pattern naming them on ``bus`` (:func:`fix_lvm_text`;
    the initramfs's copy is reported, not rebuilt).  Where cloud-init
    runs and would regenerate the SSH host keys or set the hostname from
    Nova's metadata (``cloud``: the inspection's facts of
    :func:`cloud_init_facts`), the drop-in :data:`CLOUD_KEEP` keeps both
    (:func:`fix_cloud_init`)."""
    mount_guest(g, root, write=True)
    done = []

    def start(path):
        if fail_after is not None and len(done) >= fail_after:
            raise ProbeError('fix stopped after %d file(s) '
                             '(ANY2KVM_FIX_FAIL_AFTER)' % len(done))
        tried.append(path)

    def record(path, changes, unknown=None, label=None):
        # What is reported is JSON: no lone surrogates (KEEP).
        entry = {'path': path, 'changes': [
            {'from': _shown(a), 'to': _shown(b)} for a, b in changes]}
        if unknown is not None:
            entry['unknown'] = [_shown(n) for n in unknown]
        if label:
            entry['selinux_label'] = label
        done.append(entry)
    try:
        net = network_facts(g)
        args = [IFNAMES_ARG] if any(f['names'] for f in net['files']) \
            and not net['ifnames_off'] else []
        files = [(p, False) for p in NAME_FILES if _exists(g, p)] + [
            (p, False) for p in unit_files(g)
            if not unit_name_device(p)] + [
            (p, True) for p in boot_files(g)]
        for path, is_boot in files:
            text = _read(g, path, errors=KEEP)
            if text is None:
                continue
            unknown = []
            new, changes = fix_text(g, text, bus, is_boot, slots, unknown,
                                    path=path, kernel_args=args)
            if not changes:
                continue
            start(path)
            g.write(path, _kept(new))
            record(path, changes, unknown=unknown)
        for path in grub_envs(g):
            unknown = []
            new, changes = fix_grubenv(
                g, _read(g, path, errors=KEEP) or '', bus, slots, unknown,
                path=path, kernel_args=args)
            if not changes:
                continue
            if new is None:
                # Its command line names the root by a Xen device: left
                # so, the guest would not boot; no fix is committed.
                raise ProbeError(
                    '%s: the fixed kernel command line (kernelopts) does '
                    'not fit in GRUB\'s environment block, even with the '
                    'bus\'s device names: make room in the guest '
                    '(grub2-editenv - unset of variables it does not '
                    'need) and run the fix again' % path)
            start(path)
            g.write(path, _kept(new))
            record(path, changes, unknown=unknown)
        for f in net['files']:
            new, changes = fix_net_text(
                _read(g, f['path'], errors=KEEP) or '',
                unbind=bool(f['names']))
            if not changes:
                continue
            start(f['path'])
            g.write(f['path'], _kept(new))
            record(f['path'], changes)
        for path, _kind, _text, new, changes, _left in xen_config(
                g, modules):
            if not changes:
                continue
            start(path)
            g.write(path, _kept(new))
            record(path, changes)
        for path in LVM_CONFS:
            text = _read_config(g, path)
            new, changes, _found = fix_lvm_text(text or '', bus, slots)
            if not changes:
                continue
            start(path)
            g.write(path, _kept(new))
            record(path, changes)
        keep = fix_cloud_init(cloud)
        if keep:
            path, text, changes = keep
            start(path)
            made = [p for p in (CLOUD_CFG_D, path) if not _exists(g, p)]
            g.mkdir_p(CLOUD_CFG_D)
            g.write(path, text.encode('utf-8'))
            labels = [label_made(g, p) for p in made]
            record(path, changes, label=labels[-1] if labels else None)
        fallback = uefi_fallback(g)
        if fallback and not fallback['present'] and fallback['source']:
            start(UEFI_FALLBACK)
            record(UEFI_FALLBACK, fix_uefi_fallback(g, fallback))
        if default:
            path, version, versions = default
            new, changes = set_grub_legacy_default(
                _read(g, path, errors=KEEP) or '', version, versions)
            if changes:
                start(path)
                g.write(path, _kept(new))
                record(path, changes)
        if net['pinned']:
            aside = PERSISTENT_NET + '.any2kvm-disabled'
            start(PERSISTENT_NET)
            g.mv(PERSISTENT_NET, aside)
            record(PERSISTENT_NET, [(PERSISTENT_NET, aside)])
        g.sync()
    finally:
        g.umount_all()
    return done


# -- the program --------------------------------------------------------------

def launch(args, disks, readonly):
    import guestfs
    g = guestfs.GuestFS(python_return_dict=True)
    if args.backend:
        g.set_backend(args.backend)
    if args.backend_setting:
        g.set_backend_settings(args.backend_setting)
    for path in disks:
        kwargs = {'readonly': 1 if readonly else 0}
        if args.format:
            kwargs['format'] = args.format
        g.add_drive_opts(path, **kwargs)
    g.launch()
    return g


def _properties():
    """any2kvm_os/properties.py, whose bus table decides the bus (the
    standard library only, like this program): the project's module when
    this file is imported from the package, else loaded by path, since
    this program runs under ``[any2kvm] guestfs_python``."""
    import importlib
    if __package__:
        return importlib.import_module(
            __package__.rsplit('.', 1)[0] + '.properties')
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'properties.py')
    spec = importlib.util.spec_from_file_location('any2kvm_properties', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_fix(guest):
    """(menu.lst path, version, versions) when the guest's GRUB legacy
    menu boots another kernel by default than the one it must boot on KVM
    (:func:`~any2kvm_os.properties.boot_kernel`: a Xen-only default and
    a kernel without Xen installed beside it, the usual state of a PV
    guest of the 2.6.18 era), else None.  GRUB 2 and the others are
    reported, not changed (their menus are generated)."""
    linux = guest.get('linux') or {}
    default = linux.get('boot_default') or {}
    kernel = _properties().boot_kernel(guest)
    path = default.get('file') or ''
    if kernel is None or not path.endswith(('/menu.lst', '/grub.conf')) \
            or default.get('version') in (None, kernel.get('version')):
        return None
    return (path, kernel['version'],
            [k['version'] for k in linux.get('kernels') or ()])


def fix_bus(guest):
    """The bus family whose names a fixed guest uses where there is no
    UUID: the outcome of the bus table of
    :func:`any2kvm_os.properties.disk_bus` (the same function, and so the
    same boot kernel, :func:`~any2kvm_os.properties.boot_kernel`, as the
    properties): for Linux ``virtio`` (vdX) when that table chooses
    virtio-blk, else ``scsi`` (sdX, the names of scsi, sata and ide
    alike); for Windows the bus whose storage driver must start at boot.
    """
    if guest.get('type') == 'windows':
        # The bus once the fix has cleared its driver's StartOverride.
        bus = _properties().disk_bus(guest, fix=True)[0]
        return bus or 'ide'
    bus = _properties().disk_bus(guest)[0]
    return 'virtio' if bus == 'virtio' else 'scsi'


def hive_main(args):
    try:
        hive = HivexHive(args.path, write=bool(args.fix_bus))
    except ImportError as e:
        print(json.dumps({'error': 'no hivex Python binding for %s: %s'
                          % (sys.executable, e), 'missing': 'hivex'}))
        return 3
    except (OSError, RuntimeError) as e:
        print(json.dumps({'error': '%s: %s' % (args.path, e)}))
        return 2
    result = system_facts(hive)
    if args.fix_bus:
        result['fixed'] = fix_system_hive(hive, args.fix_bus, args.disks)
    print(json.dumps(result, sort_keys=True))
    return 0


def fix_windows(g, guest, bus, tried, fail_after=None, disks=1):
    """The SYSTEM hive fixes in the appliance (``disks``: how many disks
    the VM has); then the guest's report says what the hive holds after
    them.  A UEFI guest whose EFI system partition lacks the fallback
    bootloader gets Windows' boot manager copied there
    (:func:`fix_windows_uefi_fallback`).  ``fail_after`` (the tests'
    ANY2KVM_FIX_FAIL_AFTER): stop once that many files were written.
    (registry changes, [{'path', 'changes'}] of the files written, as
    :func:`fix_linux` reports them)."""
    path = (guest.get('windows') or {}).get('system_hive')
    changes = []
    written = 0
    if (guest.get('windows') or {}).get('hibernated'):
        raise ProbeError(HIBERNATED + 'its disk cannot be fixed, and it '
                         'would resume a session of other hardware; nothing '
                         'was changed: in the guest, "powercfg /h off", then '
                         'shut it down, and copy it again')
    if path:
        mount_guest(g, guest['root'], write=True)
        try:
            _writable(g, 'the Windows volume %s' % guest['root'])
            tried.append(path)
            hive = Hive(g, path, write=True)
            try:
                changes = fix_system_hive(hive, bus, disks)
            finally:
                hive.close()
            if not changes:
                tried.remove(path)
            g.sync()
            if changes:
                written += 1
            if changes and fail_after is not None and \
                    written >= fail_after:
                raise ProbeError('fix stopped after %d file(s) '
                                 '(ANY2KVM_FIX_FAIL_AFTER)' % written)
            hive = Hive(g, path)
            try:
                guest['windows'].update(system_facts(hive))
            finally:
                hive.close()
        finally:
            g.umount_all()
    files = []
    fallback = (guest.get('windows') or {}).get('uefi_fallback')
    if guest.get('firmware') == 'uefi' and fallback and \
            not fallback.get('present') and fallback.get('source'):
        if fail_after is not None and written >= fail_after:
            raise ProbeError('fix stopped after %d file(s) '
                             '(ANY2KVM_FIX_FAIL_AFTER)' % written)
        g.mount(fallback['partition'], '/')
        try:
            tried.append(WINDOWS_FALLBACK)
            copies = fix_windows_uefi_fallback(g, fallback)
            if copies:
                files.append({'path': copies[0][1], 'changes': [
                    {'from': _shown(a), 'to': _shown(b)}
                    for a, b in copies]})
            else:
                tried.remove(WINDOWS_FALLBACK)
            g.sync()
        finally:
            g.umount_all()
    return changes, files


def main(argv=None):
    parser = argparse.ArgumentParser(prog='probe.py')
    parser.add_argument('--backend')
    parser.add_argument('--backend-setting', action='append', default=[])
    parser.add_argument('--format')
    sub = parser.add_subparsers(dest='action', required=True)
    p = sub.add_parser('inspect')
    p.add_argument('--fix', action='store_true',
                   help='open the disks read-write and fix Linux guests')
    p.add_argument('--xen-slots', type=parse_slots, default=None,
                   help='the Xen slot (VBD userdevice) of each disk, in '
                   'order, comma-separated: /dev/xvdX and /dev/hdX names '
                   'are the disks of those slots')
    p.add_argument('disks', nargs='+')
    p = sub.add_parser('hive', help='read (and with --fix-bus, fix) a '
                       'SYSTEM hive file with the hivex binding')
    p.add_argument('--fix-bus')
    p.add_argument('--disks', type=int, default=1,
                   help='how many disks the VM has (with --fix-bus)')
    p.add_argument('path')
    args = parser.parse_args(argv)
    if args.action == 'hive':
        return hive_main(args)
    try:
        import guestfs  # noqa: F401
    except ImportError as e:
        print(json.dumps({'error': 'no libguestfs Python binding for %s: %s'
                          % (sys.executable, e), 'missing': 'guestfs'}))
        return 3
    try:
        g = launch(args, args.disks, readonly=not args.fix)
    except RuntimeError as e:
        print(json.dumps({'error': 'libguestfs appliance: %s' % ' '.join(
            str(e).split())}))
        return 2
    tried = []
    slots = args.xen_slots
    if slots is None:
        slots = in_order(len(args.disks))
    try:
        roots = g.inspect_os()
        result = {'guests': [inspect_root(g, r, slots) for r in roots]}
        if args.fix:
            fail_after = os.environ.get('ANY2KVM_FIX_FAIL_AFTER')
            result['fixed'] = []
            for guest in result['guests']:
                if guest.get('type') == 'windows':
                    bus = fix_bus(guest)
                    registry, files = fix_windows(
                        g, guest, bus, tried,
                        int(fail_after) if fail_after else None,
                        len(args.disks))
                    result['fixed'].append({
                        'root': guest['root'], 'disk': guest['disk'],
                        'bus': bus, 'files': files, 'registry': registry})
                if guest.get('type') != 'linux':
                    continue
                bus = fix_bus(guest)
                result['fixed'].append({
                    'root': guest['root'], 'disk': guest['disk'],
                    'bus': bus, 'files': fix_linux(
                        g, guest['root'], bus, tried,
                        int(fail_after) if fail_after else None,
                        slots, default_fix(guest),
                        fix_modules(guest),
                        guest['linux'].get('cloud_init'))})
        g.shutdown()
    except (RuntimeError, ProbeError) as e:
        print(json.dumps({'error': ' '.join(str(e).split()),
                          'tried': tried}))
        return 2
    finally:
        g.close()
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
