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

"""Real, bootable Linux test guests built from Debian packages.

:func:`build(path, kind)` writes a small raw BIOS/MBR disk: GRUB in the MBR
gap reading ``/boot/grub/grub.cfg`` from an ext4 root, Debian's cloud
kernel, an initramfs of busybox-static plus some of the kernel's disk
modules, and enough of an operating system on the root filesystem for
libguestfs to inspect it: ``/etc/os-release``, ``/etc/debian_version``,
``/bin`` (busybox), ``/lib/modules/VERSION`` (``modules.dep``,
``modules.builtin`` and a few ``.ko``), ``/etc/fstab`` and a dpkg status
file.  Nothing is installed on the host; the packages are fetched with
``apt-get download`` once into the test cache (``<repo>/run/test-cache``,
or ``$ANY2KVM_TEST_CACHE``), shared by every builder of test guests.

The initramfs's ``/init`` mounts the root the kernel command line names
(``root=UUID=...``, ``LABEL=...`` or ``/dev/...``) and then the device
``/etc/fstab`` gives for ``/``, as a real system would, and prints one line
on the serial console: ``ANY2KVM-BOOT-OK root=DEV id=TOKEN`` or
``ANY2KVM-BOOT-FAIL reason``; then it powers off.

Kinds (:data:`KINDS`):

``virtio``  the initramfs has virtio_pci, virtio_blk, virtio_scsi, sd_mod
            and ata_piix; fstab and grub.cfg name the root ``UUID=``;
            qemu-guest-agent in the dpkg status.
``novirtio`` the initramfs has sd_mod and ata_piix only (the virtio
            modules are on the disk, not in the initramfs: a guest built
            for another hypervisor).
``xenpv``   like ``virtio``, but fstab and grub.cfg name ``/dev/xvda1``
            and the kernel command line has ``console=hvc0``, as a Xen PV
            guest's do; xe-guest-utilities in the dpkg status.
``uefi``    like ``virtio``, on a GPT disk: partition 1 an EFI system
            partition (FAT, made by mkfs.vfat and filled by mtools, no
            mount) holding GRUB for UEFI (grub-mkimage -O x86_64-efi, at
            the removable-media path \\EFI\\BOOT\\BOOTX64.EFI, finding
            the root by its UUID), partition 2 the ext4 root; fstab mounts
            the ESP at /boot/efi.  It boots with OVMF (``boot(...,
            firmware='uefi')``), not with SeaBIOS: its protective MBR has
            no boot code.

Two more kinds, not among :data:`KINDS` (not inspected with them): ``nova``,
the guest the Nova boot tests boot (:func:`nova_guest`), like ``virtio``
but it stays up after its line (Nova reads the console of a running guest
only), printing ``ANY2KVM-BOOT-OK root=DEV id=TOKEN boot=UUID`` (a new
UUID each boot: :func:`boots`); and ``nova-xen``, the same named as
``xenpv`` is (``/dev/xvda1``, ``console=hvc0``, xe-guest-utilities).

:func:`boot(path, bus)` boots a disk under QEMU TCG on a bus
(``virtio-scsi``, ``virtio-blk``, ``ide``, ``sata``) and returns the
console's marker line (or None).
"""

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GRUB_DIR = '/usr/lib/grub/i386-pc'
START_SECTOR = 2048
SIZE_MB = 80

BOOT_MODULES = {
    'virtio': ('virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod',
               'ata_piix', 'ata_generic'),
    'novirtio': ('sd_mod', 'ata_piix', 'ata_generic'),
    'xenpv': ('virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod',
              'ata_piix', 'ata_generic'),
    'uefi': ('virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod',
             'ata_piix', 'ata_generic'),
}
KINDS = tuple(BOOT_MODULES)
#: Modules copied onto the root filesystem's /lib/modules (all kinds).
DISK_MODULES = ('virtio_pci', 'virtio_blk', 'virtio_scsi', 'virtio_net',
                'sd_mod', 'ata_piix', 'ata_generic')
#: Fixed filesystem UUIDs, one per kind (guests inspected together must
#: not share one).
FS_UUIDS = {'virtio': '2e6b3c1a-4a2b-4d7e-9a11-a2c0ffee0101',
            'novirtio': '2e6b3c1a-4a2b-4d7e-9a11-a2c0ffee0102',
            'xenpv': '2e6b3c1a-4a2b-4d7e-9a11-a2c0ffee0103',
            'uefi': '2e6b3c1a-4a2b-4d7e-9a11-a2c0ffee0104'}
TOOLS_PACKAGES = {'virtio': ('qemu-guest-agent',), 'novirtio': (),
                  'xenpv': ('xe-guest-utilities',), 'uefi': ()}
#: The Nova boot tests' guests (see the module's doc; not in KINDS).
BOOT_MODULES['nova'] = BOOT_MODULES['virtio']
FS_UUIDS['nova'] = '2e6b3c1a-4a2b-4d7e-9a11-a2c0ffee0201'
TOOLS_PACKAGES['nova'] = ()
BOOT_MODULES['nova-xen'] = BOOT_MODULES['virtio']
FS_UUIDS['nova-xen'] = '2e6b3c1a-4a2b-4d7e-9a11-a2c0ffee0202'
TOOLS_PACKAGES['nova-xen'] = TOOLS_PACKAGES['xenpv']
#: The kinds that name their root as a Xen PV guest does, and those that
#: stay up after their line.
XEN_NAMED = ('xenpv', 'nova-xen')
STAYS_UP = ('nova', 'nova-xen')
READY = 'ANY2KVM-BOOT-OK'
#: The UEFI guest: GRUB's EFI modules, the ESP's size and FAT volume id
#: (its UUID is ``2EC0-FFEE``), OVMF for booting it.
GRUB_EFI_DIR = '/usr/lib/grub/x86_64-efi'
ESP_SECTORS = 16 << 11
ESP_VOLID = '2EC0FFEE'
ESP_UUID = '2EC0-FFEE'
OVMF = ('/usr/share/ovmf/OVMF.fd', '/usr/share/qemu/OVMF.fd')
GPT_ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'
GPT_LINUX = '0FC63DAF-8483-4772-8E79-3D69D8477DE4'

INIT = r'''#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null; done
say() { echo "$*" > /dev/console; }
root=""; stay=""; tries=100
for w in $(cat /proc/cmdline); do case $w in root=*) root=${w#root=};;
  any2kvm.stay) stay=1; tries=300;; esac
done
end() {
  if [ -n "$stay" ]; then while :; do sleep 3600; done; fi
  poweroff -f
}
find_dev() {
  case $1 in
    UUID=*|LABEL=*) findfs "$1" 2>/dev/null ;;
    /dev/*) [ -b "$1" ] && echo "$1" ;;
  esac
}
dev=""; i=0
while [ $i -lt $tries ]; do
  dev=$(find_dev "$root") && [ -n "$dev" ] && break
  sleep 0.1; i=$((i+1))
done
if [ -z "$dev" ]; then
  devs=$(ls /sys/class/block | tr '\n' ' ')
  say "ANY2KVM-BOOT-FAIL root=$root not found; block devs: $devs"
  end
fi
if ! mount -o ro "$dev" /mnt; then
  say "ANY2KVM-BOOT-FAIL cannot mount $dev"; end
fi
fsroot=$(awk '$2=="/" {print $1}' /mnt/etc/fstab)
fsdev=$(find_dev "$fsroot")
if [ -z "$fsdev" ]; then
  say "ANY2KVM-BOOT-FAIL fstab root $fsroot not found"
elif [ -n "$stay" ]; then
  say "ANY2KVM-BOOT-OK root=$dev id=$(cat /mnt/etc/any2kvm-id)" \
      "boot=$(cat /proc/sys/kernel/random/uuid)"
else
  say "ANY2KVM-BOOT-OK root=$dev fstab=$fsroot id=$(cat /mnt/etc/any2kvm-id)"
fi
umount /mnt
end
'''


class BuildError(Exception):
    pass


def cache_dir():
    path = Path(os.environ.get('ANY2KVM_TEST_CACHE') or
                REPO / 'run' / 'test-cache')
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd, **kwargs):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       **kwargs)
    if r.returncode != 0:
        raise BuildError('%s: exit %d: %s' % (' '.join(map(str, cmd)),
                                              r.returncode,
                                              r.stderr.strip()[-2000:]))
    return r.stdout


def missing_tools():
    """The host tools a build or boot needs that are absent."""
    need = ['apt-get', 'apt-cache', 'dpkg-deb', 'depmod', 'modprobe',
            'sfdisk', 'mke2fs', 'cpio', 'grub-mkimage',
            'qemu-system-x86_64']
    out = [t for t in need if not shutil.which(t) and
           not os.path.exists('/sbin/' + t)]
    if not os.path.exists(os.path.join(GRUB_DIR, 'boot.img')):
        out.append('grub-pc-bin (%s)' % GRUB_DIR)
    # The UEFI guest.
    out += [t for t in ('mkfs.vfat', 'mcopy', 'mmd') if not shutil.which(
        t) and not os.path.exists('/sbin/' + t)]
    if not os.path.exists(os.path.join(GRUB_EFI_DIR, 'linux.mod')):
        out.append('grub-efi-amd64-bin (%s)' % GRUB_EFI_DIR)
    if not any(os.path.exists(p) for p in OVMF):
        out.append('ovmf (%s)' % OVMF[0])
    return out


def packages():
    """(kernel root, kernel version, busybox path), downloaded and unpacked
    once into the cache (under a lock: several test processes may ask at
    once)."""
    cache = cache_dir()
    with open(cache / '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kroot = cache / 'kroot'
        bbroot = cache / 'bbroot'
        if not (kroot / 'lib' / 'modules').is_dir() or not bbroot.is_dir():
            deps = _run(['apt-cache', 'depends', 'linux-image-cloud-amd64'])
            m = re.search(r'Depends: (linux-image-[0-9]\S*)', deps)
            if not m:
                raise BuildError('no kernel package behind '
                                 'linux-image-cloud-amd64: %s' % deps)
            debs = cache / 'debs'
            debs.mkdir(exist_ok=True)
            for pkg in (m.group(1), 'busybox-static'):
                if not list(debs.glob(pkg + '_*.deb')):
                    _run(['apt-get', 'download', pkg], cwd=str(debs))
            for pkg, dest in ((m.group(1), kroot), ('busybox-static',
                                                    bbroot)):
                (deb,) = debs.glob(pkg + '_*.deb')
                tmp = Path(tempfile.mkdtemp(dir=str(cache)))
                _run(['dpkg-deb', '-x', str(deb), str(tmp)])
                if dest.exists():
                    shutil.rmtree(str(dest))
                tmp.rename(dest)
            (version,) = os.listdir(str(kroot / 'lib' / 'modules'))
            _run(['depmod', '-b', str(kroot), version])
        (version,) = os.listdir(str(kroot / 'lib' / 'modules'))
        return kroot, version, bbroot / 'bin' / 'busybox'


def _module_files(kroot, version, names):
    """The .ko files of ``names`` and their dependencies, in load order."""
    files = []
    for name in names:
        out = _run(['modprobe', '-d', str(kroot), '-S', version,
                    '--show-depends', name])
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == 'insmod' and parts[1] not in files:
                files.append(parts[1])
    return files


def _initramfs(work, kroot, version, busybox, kind, extra=None):
    top = work / 'initramfs'
    for d in ('bin', 'dev', 'proc', 'sys', 'mnt', 'mods'):
        (top / d).mkdir(parents=True)
    for name, text in (extra or {}).items():
        path = top / name.lstrip('/')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.copy(str(busybox), str(top / 'bin' / 'busybox'))
    os.symlink('busybox', str(top / 'bin' / 'sh'))
    order = []
    for ko in _module_files(kroot, version, BOOT_MODULES[kind]):
        shutil.copy(ko, str(top / 'mods'))
        order.append(os.path.basename(ko))
    (top / 'mods' / 'order').write_text('\n'.join(order) + '\n')
    (top / 'init').write_text(INIT)
    (top / 'init').chmod(0o755)
    names = subprocess.run(['find', '.'], cwd=str(top), capture_output=True,
                           check=True, timeout=60).stdout
    cpio = subprocess.run(['cpio', '-o', '-H', 'newc', '--quiet'],
                          cwd=str(top), input=names, capture_output=True,
                          check=True, timeout=120).stdout
    import gzip
    return gzip.compress(cpio, 6)


def _root_tree(work, kroot, version, busybox, kind, fsuuid, token,
               extra_fstab='', extra_files=None, initramfs_files=None,
               xattrs=None):
    root = work / 'root'
    for d in ('boot/grub', 'etc', 'bin', 'sbin', 'usr/bin', 'var/lib/dpkg',
              'dev', 'proc', 'sys', 'tmp', 'mnt'):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(str(kroot / 'boot' / ('vmlinuz-' + version)),
                str(root / 'boot' / 'vmlinuz'))
    (root / 'boot' / 'initrd.img').write_bytes(
        _initramfs(work, kroot, version, busybox, kind, initramfs_files))
    shutil.copy(str(busybox), str(root / 'bin' / 'busybox'))
    for tool in ('sh', 'ls', 'echo', 'rm', 'mount', 'cat'):
        os.symlink('busybox', str(root / 'bin' / tool))
    # /lib/modules: the index files and a few modules.
    mods = root / 'lib' / 'modules' / version
    mods.mkdir(parents=True)
    src = kroot / 'lib' / 'modules' / version
    for name in ('modules.dep', 'modules.builtin', 'modules.order',
                 'modules.builtin.modinfo'):
        if (src / name).exists():
            shutil.copy(str(src / name), str(mods / name))
    for ko in _module_files(kroot, version, DISK_MODULES):
        rel = Path(ko).relative_to(src)
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ko, str(mods / rel))
    xen = kind in XEN_NAMED
    rootname = '/dev/xvda1' if xen else 'UUID=' + fsuuid
    consoles = 'console=hvc0 console=ttyS0,115200' if xen else \
        'console=ttyS0,115200'
    if kind in STAYS_UP:
        consoles += ' any2kvm.stay'
    (root / 'boot' / 'grub' / 'grub.cfg').write_text(
        'set timeout=0\n'
        "menuentry 'Debian GNU/Linux (any2kvm test guest)' {\n"
        '    linux /boot/vmlinuz root=%s ro %s panic=-1 quiet\n'
        '    initrd /boot/initrd.img\n'
        '}\n' % (rootname, consoles))
    fstab = ('# <file system> <mount point> <type> <options> <dump> <pass>\n'
             '%s / ext4 errors=remount-ro 0 1\n' % rootname)
    if kind == 'uefi':
        (root / 'boot' / 'efi').mkdir()
        fstab += 'UUID=%s /boot/efi vfat umask=0077 0 1\n' % ESP_UUID
    (root / 'etc' / 'fstab').write_text(fstab + extra_fstab)
    (root / 'etc' / 'os-release').write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
        'NAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
        'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n')
    (root / 'etc' / 'debian_version').write_text('12.8\n')
    (root / 'etc' / 'hostname').write_text('guest-%s\n' % kind)
    (root / 'etc' / 'hosts').write_text('127.0.0.1 localhost\n')
    (root / 'etc' / 'any2kvm-id').write_text(token + '\n')
    status = ''
    for pkg in ('base-files', 'busybox-static') + TOOLS_PACKAGES[kind]:
        status += ('Package: %s\nStatus: install ok installed\n'
                   'Architecture: amd64\nVersion: 1.0\n'
                   'Description: test\n\n' % pkg)
    (root / 'var' / 'lib' / 'dpkg' / 'status').write_text(status)
    for name, text in (extra_files or {}).items():
        path = root / name.lstrip('/')
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, tuple):     # ('symlink', target)
            os.symlink(text[1], str(path))
        else:
            path.write_text(text)
    # mke2fs -d copies them into the file system.
    for name, attrs in (xattrs or {}).items():
        for key, value in attrs.items():
            os.setxattr(str(root / name.lstrip('/')), key, value,
                        follow_symlinks=False)
    return root


def build(path, kind, token=None, size_mb=SIZE_MB, extra_fstab='',
          extra_files=None, esp_dir=None, initramfs_files=None,
          xattrs=None):
    """Write the test guest ``kind`` as a raw disk of ``size_mb`` MiB at
    ``path``; returns {'kind', 'fsuuid', 'token', 'kernel'}.
    ``extra_fstab``: lines added to its /etc/fstab; ``extra_files``:
    {path in the guest: text, or ('symlink', target)} written into it;
    ``initramfs_files``: {path: text} written into its initramfs;
    ``xattrs``: {path in the guest: {name: bytes}} set on its files (an
    SELinux label: ``security.selinux``).
    ``esp_dir`` (``uefi`` only): GRUB goes to ``\\EFI\\<esp_dir>\\
    grubx64.efi``, with a ``grub.cfg`` beside it, as Debian installs it,
    and not to the removable-media path: booted only from an NVRAM entry."""
    if kind not in BOOT_MODULES:
        raise ValueError('unknown guest kind %r (known: %s)' % (
            kind, ', '.join(KINDS)))
    kroot, version, busybox = packages()
    token = token or str(uuid.uuid4())
    fsuuid = FS_UUIDS[kind]
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix='guestbuild-') as tmp:
        work = Path(tmp)
        root = _root_tree(work, kroot, version, busybox, kind, fsuuid,
                          token, extra_fstab, extra_files,
                          initramfs_files, xattrs)
        if kind == 'uefi':
            _write_uefi(path, work, root, fsuuid, esp_dir)
            return {'kind': kind, 'fsuuid': fsuuid, 'token': token,
                    'kernel': version, 'esp_uuid': ESP_UUID}
        if path.exists():
            path.unlink()
        with open(str(path), 'wb') as f:
            f.truncate(size_mb << 20)
        subprocess.run(['sfdisk', '-q', str(path)],
                       input='label: dos\nstart=%d, type=83, bootable\n'
                       % START_SECTOR, text=True, check=True,
                       capture_output=True, timeout=60)
        sectors = (size_mb << 20) // 512 - START_SECTOR
        _run(['mke2fs', '-q', '-F', '-L', 'ANY2KVM_ROOT', '-U', fsuuid,
              '-t', 'ext4', '-O', '^64bit,^metadata_csum',
              '-E', 'offset=%d' % (START_SECTOR * 512), '-d', str(root),
              str(path), '%dk' % (sectors // 2)])
        early = work / 'early.cfg'
        early.write_text('set root=(hd0,msdos1)\n'
                         'set prefix=(hd0,msdos1)/boot/grub\n'
                         'configfile (hd0,msdos1)/boot/grub/grub.cfg\n')
        core = work / 'core.img'
        _run(['grub-mkimage', '-O', 'i386-pc', '-o', str(core), '-c',
              str(early), '-p', '(hd0,msdos1)/boot/grub', 'biosdisk',
              'part_msdos', 'ext2', 'linux', 'boot', 'configfile',
              'normal'])
        data = core.read_bytes()
        if len(data) > (START_SECTOR - 1) * 512:
            raise BuildError('core.img too big: %d bytes' % len(data))
        with open(os.path.join(GRUB_DIR, 'boot.img'), 'rb') as f:
            mbr = f.read(440)
        with open(str(path), 'r+b') as f:
            f.seek(0)
            f.write(mbr)
            f.seek(512)
            f.write(data)
    return {'kind': kind, 'fsuuid': fsuuid, 'token': token,
            'kernel': version}


def data_disk(path, fsuuid, size_mb=16):
    """A second disk: one DOS partition holding an empty ext4 file
    system of UUID ``fsuuid``."""
    path = Path(path)
    with open(str(path), 'wb') as f:
        f.truncate(size_mb << 20)
    subprocess.run(['sfdisk', '-q', str(path)],
                   input='label: dos\nstart=%d, type=83\n' % START_SECTOR,
                   text=True, check=True, capture_output=True, timeout=60)
    sectors = (size_mb << 20) // 512 - START_SECTOR
    _run(['mke2fs', '-q', '-F', '-U', fsuuid, '-t', 'ext4',
          '-E', 'offset=%d' % (START_SECTOR * 512), str(path),
          '%dk' % (sectors // 2)])
    return path


def _write_uefi(path, work, root, fsuuid, esp_dir=None):
    """The GPT disk of the ``uefi`` guest: ESP, then the ext4 root."""
    root_start = START_SECTOR + ESP_SECTORS
    total = SIZE_MB << 11
    root_sectors = total - root_start - 2048      # the backup GPT's room
    if path.exists():
        path.unlink()
    with open(str(path), 'wb') as f:
        f.truncate(total * 512)
    subprocess.run(['sfdisk', '-q', str(path)], input=(
        'label: gpt\n'
        'start=%d, size=%d, type=%s, name="EFI system partition"\n'
        'start=%d, size=%d, type=%s, name="root"\n' % (
            START_SECTOR, ESP_SECTORS, GPT_ESP, root_start, root_sectors,
            GPT_LINUX)), text=True, check=True, capture_output=True,
        timeout=60)
    _run(['mke2fs', '-q', '-F', '-L', 'ANY2KVM_ROOT', '-U', fsuuid,
          '-t', 'ext4', '-O', '^64bit,^metadata_csum',
          '-E', 'offset=%d' % (root_start * 512), '-d', str(root),
          str(path), '%dk' % (root_sectors // 2)])
    early = work / 'early-efi.cfg'
    early.write_text('search --no-floppy --fs-uuid --set=root %s\n'
                     'set prefix=($root)/boot/grub\n'
                     'configfile ($root)/boot/grub/grub.cfg\n' % fsuuid)
    efi = work / 'BOOTX64.EFI'
    _run(['grub-mkimage', '-O', 'x86_64-efi', '-d', GRUB_EFI_DIR,
          '-o', str(efi), '-c', str(early), '-p', '/boot/grub',
          'part_gpt', 'fat', 'ext2', 'search', 'search_fs_uuid', 'linux',
          'boot', 'configfile', 'normal', 'efi_gop'])
    esp = work / 'esp.img'
    with open(str(esp), 'wb') as f:
        f.truncate(ESP_SECTORS * 512)
    _run(['mkfs.vfat', '-F', '16', '-i', ESP_VOLID, '-n', 'ESP', str(esp)])
    if esp_dir:
        stub = work / 'grub.cfg'
        stub.write_text('search.fs_uuid %s root\n'
                        'set prefix=($root)/boot/grub\n'
                        'configfile $prefix/grub.cfg\n' % fsuuid)
        _run(['mmd', '-i', str(esp), '::/EFI', '::/EFI/' + esp_dir])
        _run(['mcopy', '-i', str(esp), str(efi),
              '::/EFI/%s/grubx64.efi' % esp_dir])
        _run(['mcopy', '-i', str(esp), str(stub),
              '::/EFI/%s/grub.cfg' % esp_dir])
    else:
        _run(['mmd', '-i', str(esp), '::/EFI', '::/EFI/BOOT'])
        _run(['mcopy', '-i', str(esp), str(efi), '::/EFI/BOOT/BOOTX64.EFI'])
    with open(str(path), 'r+b') as f, open(str(esp), 'rb') as src:
        f.seek(START_SECTOR * 512)
        shutil.copyfileobj(src, f)


def fill_esp(disk, leave):
    """Fill the EFI system partition of a ``uefi`` kind's ``disk`` (with
    mtools, outside libguestfs) until ``leave`` bytes are free in it."""
    where = '%s@@%d' % (disk, START_SECTOR * 512)
    r = subprocess.run(['mdir', '-i', where, '::/'], capture_output=True,
                       text=True, timeout=60, check=True)
    m = re.search(r'([0-9][0-9 ]*) bytes free', r.stdout)
    free = int(m.group(1).replace(' ', ''))
    filler = Path(str(disk) + '.filler')
    with open(str(filler), 'wb') as f:
        f.write(b'\xa5' * max(0, free - leave))
    try:
        _run(['mcopy', '-i', where, str(filler), '::/FILLER.BIN'])
    finally:
        filler.unlink()


#: QEMU devices of each bus, for a drive with id d0.
BUS_DEVICES = {
    'virtio-scsi': ['-device', 'virtio-scsi-pci,id=scsi0',
                    '-device', 'scsi-hd,drive=d0,bus=scsi0.0,bootindex=0'],
    'virtio-blk': ['-device', 'virtio-blk-pci,drive=d0,bootindex=0'],
    'ide': ['-device', 'ide-hd,drive=d0,bus=ide.0,bootindex=0'],
    'sata': ['-device', 'ahci,id=ahci0',
             '-device', 'ide-hd,drive=d0,bus=ahci0.0,bootindex=0'],
}
#: Nova's hw_disk_bus (with hw_scsi_model) -> a BUS_DEVICES key.
NOVA_BUS = {'scsi': 'virtio-scsi', 'virtio': 'virtio-blk', 'ide': 'ide',
            'sata': 'sata'}


def boot(path, bus, timeout=240, log=None, fmt='raw', firmware='bios',
         machine=None, give_up=None):
    """Boot the disk at ``path`` under QEMU TCG on ``bus``; the console's
    ANY2KVM-BOOT line (None if none came within ``timeout`` s, or if QEMU
    refused the machine).  The disk is never written (``snapshot=on``).
    ``firmware='uefi'``: OVMF, by default on a q35 machine (what
    hw_firmware_type=uefi, hw_machine_type=q35 give), else SeaBIOS, by
    default on pc; ``machine`` (Nova's hw_machine_type, ``pc`` or
    ``q35``) sets the machine.  ``give_up``: a console text that says
    the firmware found nothing to boot (OVMF's ``UEFI Interactive
    Shell``): None at once when it shows."""
    if log is None:
        with tempfile.TemporaryDirectory(prefix='guestboot-') as tmp:
            return boot(path, bus, timeout, Path(tmp) / 'console.log', fmt,
                        firmware, machine, give_up)
    log = Path(log)
    machine = ['-machine', machine or (
        'q35' if firmware == 'uefi' else 'pc')]
    if firmware == 'uefi':
        ovmf = [p for p in OVMF if os.path.exists(p)]
        machine += ['-bios', ovmf[0]]
    cmd = ['qemu-system-x86_64'] + machine + [
        '-accel', 'tcg', '-m', '512', '-smp', '1', '-nographic',
        '-monitor', 'none', '-serial', 'file:%s' % log, '-no-reboot',
        '-net', 'none',
        '-drive', 'file=%s,format=%s,if=none,id=d0,snapshot=on' % (
            path, fmt)] + BUS_DEVICES[bus]
    # QEMU's own errors (a machine it refuses) go beside the console log.
    with open(str(log) + '.stderr', 'wb') as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout
    line = None
    try:
        while time.monotonic() < deadline:
            if log.exists():
                # Whole lines only while QEMU writes: a line read half
                # written (a loaded machine) is not the guest's verdict.
                console = log.read_bytes().decode('utf-8', 'replace')
                for text in console.splitlines(keepends=True):
                    if 'ANY2KVM-BOOT-' in text and text.endswith('\n'):
                        line = text.strip()
                if give_up and line is None and give_up in console:
                    break
            if line or proc.poll() is not None:
                break
            time.sleep(0.2)
        if line is None and log.exists():
            for text in log.read_bytes().decode(
                    'utf-8', 'replace').splitlines():
                if 'ANY2KVM-BOOT-' in text:
                    line = text.strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    return line


# -- the Nova boot tests' guest ----------------------------------------------

def nova_guest(path, token=None, size_mib=64, xen=False):
    """Write the ``nova`` guest as a raw disk at ``path``; its token (by
    default 32 hex digits, which a test may overwrite in place).
    ``xen``: the ``nova-xen`` guest instead, whose fstab and grub.cfg
    name ``/dev/xvda1`` and whose kernel takes ``console=hvc0``, as a Xen
    PV guest's do: it boots on KVM only once ``--fix`` renamed them."""
    return build(path, 'nova-xen' if xen else 'nova',
                 token or uuid.uuid4().hex, size_mib)['token']


def ready_line(token):
    """A regex for the console line of a ``nova`` guest with this token."""
    return r'%s root=\S+ id=%s' % (READY, re.escape(token))


def boots(console):
    """The boot ids of the ready lines in a console log, in order."""
    return re.findall(r'%s root=\S+ id=\S+ boot=(\S+)' % READY, console)


def xenserver_tgz(qemu_img, directory, token=None):
    """A ``nova`` guest as a XenServer VDI export: a gzipped tar of
    ``0.vhd``, a dynamic VHD of the guest written by qemu-img.  Returns
    (path of the tgz, token)."""
    from tests.lib import imagegen

    directory = Path(directory)
    raw = directory / 'guest.raw'
    token = nova_guest(raw, token)
    vhd = directory / 'guest.vhd'
    _run([str(qemu_img), 'convert', '-f', 'raw', '-O', 'vpc', '-o',
          'subformat=dynamic,force_size=on', str(raw), str(vhd)])
    raw.unlink()
    tgz = directory / 'guest.tgz'
    imagegen.make_tar(tgz, imagegen.xenserver_members([vhd]),
                      compression='gz')
    vhd.unlink()
    return tgz, token
