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

"""NTFS disks laid out like installed Windows guests, with no Windows image.

:func:`build(path, kind)` writes a raw MBR disk like a BIOS install of
Windows: partition 1 "System Reserved" (NTFS, active) with ``/bootmgr``
and the boot configuration ``/Boot/BCD``, partition 2 the system volume
(NTFS) with ``\\Windows\\System32`` (``cmd.exe``: a PE header whose machine
field libguestfs reads for the architecture; ``drivers\\*.sys``;
``config\\SYSTEM`` and ``config\\SOFTWARE``, hives made with hivex),
``\\Windows\\System32\\DriverStore\\FileRepository``, ``\\Program Files``,
``\\Users``.  The filesystems are made by ``mkntfs`` and filled through
ntfs-3g (FUSE); nothing else on the host changes.  Built disks are kept
in the test cache (tests/lib/guestbuild.py's) under a name that hashes
what went into them, and copied from there.

The hives follow Microsoft's documented layout:
``HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion`` (ProductName,
CurrentVersion, CurrentMajorVersionNumber/CurrentMinorVersionNumber from
Windows 10 on, CurrentBuildNumber, EditionID, InstallationType), the
SYSTEM hive of tests/lib/winhive.py (two ControlSets, ``Select``, the
Citrix XenServer PV drivers' services, an UpperFilters naming xenfilt)
plus ``Tcpip\\Parameters\\Hostname`` and ``MountedDevices`` (``\\DosDevices\\
C:``: the disk signature and the partition's byte offset).  The BCD is a
hive too (``HKLM\\BCD00000000``): the boot manager object
``{9dea862c-5cdd-4e70-acc1-f32b344d4795}`` whose element ``23000003``
names the default Windows boot loader object, whose ``11000001``
(ApplicationDevice) and ``21000001`` (OSDevice) elements name the system
partition by disk signature and byte offset.

Kinds (:data:`KINDS`):

``win2019``        Windows Server 2019 Standard x64, build 17763, the
                   Citrix PV drivers, no virtio driver anywhere, a BCD
                   naming its system partition.
``win2019-store``  the same with vioscsi and netkvm in the driver store
                   only (staged, no service), and a BCD whose boot entry
                   names another disk (a stale signature).
``win7-x86``       Windows 7 Professional 32-bit (CurrentVersion 6.1), no
                   BCD on the disk.

:data:`UEFI_KINDS` (built alike, inspected on their own) are GPT disks like
a UEFI install: partition 1 the EFI system partition (FAT, made by
``mkfs.vfat`` and filled by mtools) with ``\\EFI\\Microsoft\\Boot\\BCD``
and, unless the kind says otherwise, ``bootmgfw.efi`` (a PE header and a
marker, never run), and no ``\\EFI\\Boot`` (the fallback path); partition
2 the system volume as above.  Their BCD and ``MountedDevices`` name the
system partition by its GPT partition GUID (``DMIO:ID:`` and the GUID).

``win2019-uefi``           Windows Server 2019 Standard as ``win2019``, UEFI.
``win2019-uefi-nobootmgr`` the same without ``bootmgfw.efi`` on the ESP.
"""

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.lib import guestbuild
from tests.lib import winhive

SIZE_MB = 40
P1_START = 2048                   # sectors
P1_SECTORS = 8 << 11              # 8 MiB
P2_START = P1_START + P1_SECTORS
#: The disk signature (MBR offset 440) of every test Windows disk, and the
#: one the stale BCD names.
SIGNATURE = 0x2ee6b3c1
STALE_SIGNATURE = 0x0badd15c
BOOTMGR = '{9dea862c-5cdd-4e70-acc1-f32b344d4795}'
LOADER = '{6b9e2f15-1c40-11ea-9c4d-806e6f6e6963}'
DISK_CLASS = '{4d36e967-e325-11ce-bfc1-08002be10318}'
CITRIX = ('xenbus', 'xenfilt', 'xenvbd', 'xennet', 'xenvif', 'xeniface')

KINDS = {
    'win2019': {
        'product': 'Windows Server 2019 Standard', 'edition':
        'ServerStandard', 'type': 'Server', 'version': '6.3',
        'major': 10, 'minor': 0, 'build': '17763', 'arch': 'x64',
        'store': (), 'bcd': 'good', 'hostname': 'WIN2019-XEN'},
    'win2019-store': {
        'product': 'Windows Server 2019 Datacenter', 'edition':
        'ServerDatacenter', 'type': 'Server', 'version': '6.3',
        'major': 10, 'minor': 0, 'build': '17763', 'arch': 'x64',
        'store': ('vioscsi', 'netkvm'), 'bcd': 'stale',
        'hostname': 'WIN2019-STORE'},
    'win7-x86': {
        'product': 'Windows 7 Professional', 'edition': 'Professional',
        'type': 'Client', 'version': '6.1', 'major': None,
        'minor': None, 'build': '7601', 'arch': 'x86', 'store': (),
        'bcd': None, 'hostname': 'WIN7-X86', 'hibernated': True},
}

#: The UEFI kinds: the GPT disk of a UEFI install (see the module's
#: documentation); ``bootmgr``: whether bootmgfw.efi is on the ESP.
UEFI_KINDS = {
    'win2019-uefi': dict(KINDS['win2019'], hostname='WIN2019-UEFI',
                         firmware='uefi', bootmgr=True),
    'win2019-uefi-nobootmgr': dict(KINDS['win2019'], firmware='uefi',
                                   hostname='WIN2019-NOBOOT', bootmgr=False),
}
#: The GUIDs of the UEFI disks: the disk's, the ESP's, the system
#: partition's (which the BCD and MountedDevices name).
DISK_GUID = '5d2b7e1a-3c4f-4a6b-9e8d-0f1a2b3c4d5e'
ESP_GUID = '0e5f7a9b-1c2d-4e3f-8a7b-6c5d4e3f2a1b'
SYSTEM_GUID = '9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d'
ESP_VOLID = '5EF1CAFE'
GPT_ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
GPT_BASIC_DATA = 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7'
#: Bump when the layout below changes (the cache key); UEFI_LAYOUT too
#: for the UEFI kinds' own.
LAYOUT = '2'
UEFI_LAYOUT = '2'
#: The MBR's boot code (bytes 0-439) of the test disks: a real Windows
#: disk has Microsoft's there, which a BIOS runs; this stand-in only
#: stops the CPU (cli; hlt; jmp back), and says what it is.  Never booted.
MBR_CODE = b'\xfa\xf4\xeb\xfd' + b'any2kvm test disk: no Windows MBR code'


def missing_tools(uefi=False):
    """The host tools a build needs that are absent (``uefi``: those of
    :data:`UEFI_KINDS` too)."""
    need = ('mkntfs', 'ntfs-3g', 'ntfscat', 'sfdisk', 'hivexregedit') + (
        ('mkfs.vfat', 'mcopy', 'mmd') if uefi else ())
    out = [t for t in need if not shutil.which(t) and
           not os.path.exists('/sbin/' + t)]
    if not os.path.exists('/dev/fuse'):
        out.append('/dev/fuse (ntfs-3g)')
    return out


def pe_header(arch):
    """A PE image header: what ``file`` (and so libguestfs) reads the
    architecture from: machine 0x8664 with a PE32+ optional header, or
    0x14c with a PE32 one."""
    wide = arch == 'x64'
    opt = bytearray(240 if wide else 224)
    struct.pack_into('<H', opt, 0, 0x20b if wide else 0x10b)
    struct.pack_into('<H', opt, 68, 3)            # console subsystem
    dos = bytearray(64)
    dos[0:2] = b'MZ'
    struct.pack_into('<I', dos, 0x3c, 64)
    coff = struct.pack('<4sHHIIIHH', b'PE\0\0', 0x8664 if wide else 0x14c,
                       0, 0, 0, 0, len(opt), 0x22 if wide else 0x102)
    return bytes(dos) + coff + bytes(opt)


#: The stand-in for Windows' boot manager (\\EFI\\Microsoft\\Boot\\
#: bootmgfw.efi) on the UEFI disks: never run.
BOOTMGFW = pe_header('x64') + b'any2kvm test disk: no Windows boot manager'


def spec_of(kind):
    """The spec of a kind of :data:`KINDS` or :data:`UEFI_KINDS`."""
    if kind in KINDS:
        return KINDS[kind]
    if kind in UEFI_KINDS:
        return UEFI_KINDS[kind]
    raise ValueError('unknown Windows disk %r (known: %s)' % (
        kind, ', '.join(list(KINDS) + list(UEFI_KINDS))))


def software_reg(spec):
    cv = 'HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion'
    lines = ['Windows Registry Editor Version 5.00', '',
             '[%s]' % cv,
             '"ProductName"="%s"' % spec['product'],
             '"EditionID"="%s"' % spec['edition'],
             '"InstallationType"="%s"' % spec['type'],
             '"CurrentVersion"="%s"' % spec['version'],
             '"CurrentBuild"="%s"' % spec['build'],
             '"CurrentBuildNumber"="%s"' % spec['build'],
             '"SystemRoot"="C:\\\\Windows"',
             '"PathName"="C:\\\\Windows"']
    if spec['major'] is not None:
        lines += ['"CurrentMajorVersionNumber"=dword:%08x' % spec['major'],
                  '"CurrentMinorVersionNumber"=dword:%08x' % spec['minor']]
    lines += ['', '[HKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows\\'
              'CurrentVersion]',
              '"ProgramFilesDir"="C:\\\\Program Files"', '']
    return '\n'.join(lines) + '\n'


def mounted_device(signature, offset):
    """A MountedDevices value of an MBR partition: 4 bytes of disk
    signature, 8 of byte offset."""
    return struct.pack('<IQ', signature, offset)


def mounted_device_gpt(guid):
    """A MountedDevices value of a GPT partition: ``DMIO:ID:`` and the
    partition GUID (mixed-endian bytes)."""
    return b'DMIO:ID:' + uuid.UUID(guid).bytes_le


def system_reg(spec):
    text = winhive.system_reg()
    value = mounted_device_gpt(SYSTEM_GUID) if spec.get('firmware') == \
        'uefi' else mounted_device(SIGNATURE, P2_START * 512)
    extra = ['[HKEY_LOCAL_MACHINE\\SYSTEM\\MountedDevices]',
             '"\\\\DosDevices\\\\C:"=hex:%s' % winhive.hex_bytes(value), '']
    for cset in ('ControlSet001', 'ControlSet002'):
        extra += ['[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Services\\Tcpip\\'
                  'Parameters]' % cset,
                  '"Hostname"="%s"' % spec['hostname'], '',
                  '[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Control\\ComputerName\\'
                  'ComputerName]' % cset,
                  '"ComputerName"="%s"' % spec['hostname'], '']
    return text + '\n'.join(extra) + '\n'


def bcd_device(signature, offset):
    """A BCD device element naming an MBR partition: the device
    descriptor (type 6, partition) with the partition's byte offset and
    the disk's signature, 88 bytes as Windows writes them."""
    data = bytes(16)                                   # no associated entry
    data += struct.pack('<IIII', 6, 0, 0x48, 0)
    data += struct.pack('<Q', offset) + bytes(8)
    data += struct.pack('<III', 0, 1, signature)       # local disk, MBR
    return data + bytes(88 - len(data))


def bcd_device_gpt(partition, disk):
    """A BCD device element naming a GPT partition: the partition's GUID
    where an MBR one has its offset, partition style 0 (GPT) and the
    disk's GUID where an MBR one has its signature."""
    data = bytes(16)
    data += struct.pack('<IIII', 6, 0, 0x48, 0)
    data += uuid.UUID(partition).bytes_le
    data += struct.pack('<II', 0, 0) + uuid.UUID(disk).bytes_le
    return data + bytes(88 - len(data))


def bcd_reg(spec):
    top = 'HKEY_LOCAL_MACHINE\\BCD00000000'
    signature = STALE_SIGNATURE if spec['bcd'] == 'stale' else SIGNATURE
    if spec.get('firmware') == 'uefi':
        system = bcd_device_gpt(SYSTEM_GUID, DISK_GUID)
        boot = bcd_device_gpt(ESP_GUID, DISK_GUID)
    else:
        system = bcd_device(signature, P2_START * 512)
        boot = bcd_device(signature, P1_START * 512)

    def element(obj, elem, value):
        return ['[%s\\Objects\\%s\\Elements\\%s]' % (top, obj, elem),
                '"Element"=%s' % value, '']
    lines = ['Windows Registry Editor Version 5.00', '',
             '[%s\\Description]' % top, '"KeyName"="BCD00000000"',
             '"System"=dword:00000001', '"TreatAsSystem"=dword:00000001', '',
             '[%s\\Objects\\%s\\Description]' % (top, BOOTMGR),
             '"Type"=dword:10100002', '']
    lines += element(BOOTMGR, '11000001', 'hex:' + winhive.hex_bytes(boot))
    lines += element(BOOTMGR, '12000004', '"Windows Boot Manager"')
    lines += element(BOOTMGR, '23000003', '"%s"' % LOADER)
    lines += ['[%s\\Objects\\%s\\Description]' % (top, LOADER),
              '"Type"=dword:10200003', '']
    lines += element(LOADER, '11000001', 'hex:' + winhive.hex_bytes(system))
    lines += element(LOADER, '12000002', '"\\\\Windows\\\\system32\\\\%s"' % (
        'winload.efi' if spec.get('firmware') == 'uefi' else 'winload.exe'))
    lines += element(LOADER, '12000004', '"%s"' % spec['product'])
    lines += element(LOADER, '21000001', 'hex:' + winhive.hex_bytes(system))
    lines += element(LOADER, '22000002', '"\\\\Windows"')
    return '\n'.join(lines) + '\n'


def _ntfs(part, sectors, start, label):
    with open(str(part), 'wb') as f:
        f.truncate(sectors * 512)
    guestbuild._run(['mkntfs', '-Q', '-F', '-q', '-L', label,
                     '-p', str(start), '-H', '255', '-S', '63', str(part)])


class _Mounted(object):
    """An NTFS image mounted through ntfs-3g for the ``with`` block."""

    def __init__(self, image, mnt):
        self.image, self.mnt = str(image), str(mnt)

    def __enter__(self):
        guestbuild._run(['ntfs-3g', '-o', 'no_def_opts,silent', self.image,
                         self.mnt])
        return Path(self.mnt)

    def __exit__(self, *exc):
        tool = shutil.which('fusermount3') or shutil.which('fusermount')
        cmd = [tool, '-u', self.mnt] if tool else ['umount', self.mnt]
        for _ in range(50):
            r = subprocess.run(cmd, capture_output=True, timeout=60)
            if r.returncode == 0:
                return False
            time.sleep(0.2)
        subprocess.run(['umount', '-l', self.mnt], capture_output=True,
                       timeout=60)
        return False


def _fill_system(root, spec, work):
    win = root / 'Windows'
    s32 = win / 'System32'
    for d in (s32 / 'config', s32 / 'drivers', s32 / 'DriverStore' /
              'FileRepository', win / 'INF', root / 'Program Files' /
              'Common Files', root / 'ProgramData', root / 'Users' /
              'Administrator', root / 'Users' / 'Public'):
        d.mkdir(parents=True, exist_ok=True)
    (s32 / 'cmd.exe').write_bytes(pe_header(spec['arch']))
    (s32 / 'winload.exe').write_bytes(pe_header(spec['arch']))
    if spec.get('firmware') == 'uefi':
        (s32 / 'winload.efi').write_bytes(pe_header(spec['arch']))
    for name in ('atapi', 'intelide', 'pciide', 'storahci', 'disk',
                 'partmgr') + CITRIX:
        (s32 / 'drivers' / (name + '.sys')).write_bytes(
            pe_header(spec['arch']))
    suffix = 'amd64' if spec['arch'] == 'x64' else 'x86'
    for drv in spec['store']:
        d = s32 / 'DriverStore' / 'FileRepository' / (
            '%s.inf_%s_%s' % (drv, suffix, hashlib.sha1(
                drv.encode()).hexdigest()[:16]))
        d.mkdir()
        (d / (drv + '.inf')).write_text(
            '[Version]\r\nSignature="$WINDOWS NT$"\r\nProvider=%Red Hat%\r\n')
        (d / (drv + '.sys')).write_bytes(pe_header(spec['arch']))
    winhive.build(work / 'SYSTEM', system_reg(spec))
    winhive.build(work / 'SOFTWARE', software_reg(spec),
                  prefix='HKEY_LOCAL_MACHINE\\SOFTWARE')
    shutil.copy(str(work / 'SYSTEM'), str(s32 / 'config' / 'SYSTEM'))
    shutil.copy(str(work / 'SOFTWARE'), str(s32 / 'config' / 'SOFTWARE'))
    (root / 'pagefile.sys').write_bytes(b'')
    if spec.get('hibernated'):
        # A hibernated session's header ("HIBR"; "wake" once resumed):
        # what ntfs-3g looks at before it mounts the volume read-only.
        (root / 'hiberfil.sys').write_bytes(b'HIBR' + bytes(4092))


def _write_uefi(path, spec, work):
    """The GPT disk of a UEFI kind: the ESP, then the system volume."""
    mnt = work / 'mnt'
    mnt.mkdir()
    total = SIZE_MB << 11
    p2_sectors = total - P2_START - 2048          # the backup GPT's room
    esp = work / 'esp.img'
    with open(str(esp), 'wb') as f:
        f.truncate(P1_SECTORS * 512)
    guestbuild._run(['mkfs.vfat', '-i', ESP_VOLID, '-n', 'SYSTEM',
                     str(esp)])
    guestbuild._run(['mmd', '-i', str(esp), '::/EFI', '::/EFI/Microsoft',
                     '::/EFI/Microsoft/Boot'])
    winhive.build(work / 'BCD', bcd_reg(spec),
                  prefix='HKEY_LOCAL_MACHINE\\BCD00000000')
    guestbuild._run(['mcopy', '-i', str(esp), str(work / 'BCD'),
                     '::/EFI/Microsoft/Boot/BCD'])
    if spec['bootmgr']:
        (work / 'bootmgfw.efi').write_bytes(BOOTMGFW)
        guestbuild._run(['mcopy', '-i', str(esp), str(work / 'bootmgfw.efi'),
                         '::/EFI/Microsoft/Boot/bootmgfw.efi'])
    p2 = work / 'p2.img'
    _ntfs(p2, p2_sectors, P2_START, 'Windows')
    with _Mounted(p2, mnt) as root:
        _fill_system(root, spec, work)
    _assemble(path, total, (
        'label: gpt\nlabel-id: %s\n'
        'start=%d, size=%d, type=%s, uuid=%s, name="EFI system partition"\n'
        'start=%d, size=%d, type=%s, uuid=%s, name="Basic data partition"\n'
        % (DISK_GUID, P1_START, P1_SECTORS, GPT_ESP, ESP_GUID, P2_START,
           p2_sectors, GPT_BASIC_DATA, SYSTEM_GUID)),
        ((P1_START, esp), (P2_START, p2)))


def _assemble(path, total, table, parts, boot_code=b''):
    """The disk ``path`` of ``total`` sectors: the partition table sfdisk
    makes of ``table``, ``boot_code`` at its start, and each partition's
    image of ``parts`` ((start sector, image path)) in place."""
    with open(str(path), 'wb') as f:
        f.truncate(total * 512)
    subprocess.run(['sfdisk', '-q', str(path)], input=table, text=True,
                   check=True, capture_output=True, timeout=60)
    with open(str(path), 'r+b') as f:
        f.write(boot_code)
        for start, part in parts:
            f.seek(start * 512)
            with open(str(part), 'rb') as src:
                shutil.copyfileobj(src, f)


def _write(path, spec):
    with tempfile.TemporaryDirectory(prefix='winbuild-') as tmp:
        if spec.get('firmware') == 'uefi':
            return _write_uefi(path, spec, Path(tmp))
        work = Path(tmp)
        mnt = work / 'mnt'
        mnt.mkdir()
        total = SIZE_MB << 11
        p2_sectors = total - P2_START - 2048
        p1 = work / 'p1.img'
        p2 = work / 'p2.img'
        _ntfs(p1, P1_SECTORS, P1_START, 'System Reserved')
        _ntfs(p2, p2_sectors, P2_START, 'Windows')
        with _Mounted(p1, mnt) as root:
            (root / 'bootmgr').write_bytes(b'BOOTMGR test stand-in\r\n')
            (root / 'Boot').mkdir()
            if spec['bcd']:
                winhive.build(work / 'BCD', bcd_reg(spec),
                              prefix='HKEY_LOCAL_MACHINE\\BCD00000000')
                shutil.copy(str(work / 'BCD'), str(root / 'Boot' / 'BCD'))
        with _Mounted(p2, mnt) as root:
            _fill_system(root, spec, work)
        _assemble(path, total, (
            'label: dos\nlabel-id: 0x%08x\n'
            'start=%d, size=%d, type=7, bootable\n'
            'start=%d, size=%d, type=7\n' % (
                SIGNATURE, P1_START, P1_SECTORS, P2_START, p2_sectors)),
            ((P1_START, p1), (P2_START, p2)), boot_code=MBR_CODE)


def cache_key(kind):
    spec = spec_of(kind)
    h = hashlib.sha256()
    uefi = UEFI_LAYOUT + BOOTMGFW.hex() if spec.get('firmware') == 'uefi' \
        else ''
    for part in (LAYOUT + uefi, repr(sorted(spec.items())), system_reg(spec),
                 software_reg(spec), bcd_reg(spec) if spec['bcd'] else ''):
        h.update(part.encode('utf-8'))
    return h.hexdigest()[:16]


def build(path, kind):
    """Write the Windows test disk ``kind`` at ``path`` (from the cache
    when it was built before); returns its spec with ``path``."""
    spec = spec_of(kind)
    cached = guestbuild.cache_dir() / ('windows-%s-%s.raw' % (
        kind, cache_key(kind)))
    if not cached.exists():
        tmp = cached.with_name(cached.name + '.%d.tmp' % os.getpid())
        try:
            _write(tmp, spec)
            tmp.rename(cached)
        finally:
            if tmp.exists():
                tmp.unlink()
    subprocess.run(['cp', '--sparse=always', str(cached), str(path)],
                   check=True, capture_output=True, timeout=300)
    return dict(spec, kind=kind, path=Path(path))


def read_file(disk, partition_start, path, tmp_dir):
    """A file of an NTFS partition of ``disk``, read with ntfscat (outside
    libguestfs)."""
    part = Path(tmp_dir) / 'ntfs-part.img'
    with open(str(disk), 'rb') as src, open(str(part), 'wb') as dst:
        src.seek(partition_start * 512)
        shutil.copyfileobj(src, dst)
    try:
        r = subprocess.run(['ntfscat', str(part), path], capture_output=True,
                           timeout=120)
        if r.returncode != 0:
            raise guestbuild.BuildError('ntfscat %s: %s' % (
                path, r.stderr.decode('utf-8', 'replace').strip()))
        return r.stdout
    finally:
        part.unlink()


def read_esp_file(disk, path, start=P1_START):
    """A file of the EFI system partition of a UEFI kind's ``disk`` (at
    sector ``start``: guestbuild's kinds have theirs at
    ``guestbuild.START_SECTOR``), read with mtools (outside libguestfs);
    None when it is not there."""
    r = subprocess.run(['mcopy', '-n', '-i', '%s@@%d' % (disk, start * 512),
                        '::' + path, '-'], capture_output=True, timeout=120)
    return r.stdout if r.returncode == 0 else None
