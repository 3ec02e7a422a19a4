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

"""A tiny real BIOS guest built from Debian packages, for boot tests.

The disk is a raw file with an MBR, GRUB (``grub-mkimage`` core image in
the MBR gap, no ``grub-bios-setup``), and one ext4 partition, written with
``mke2fs -d`` straight into the file (no loop device, no mount).  The
partition holds Debian's cloud kernel, an initramfs of static busybox and
the disk modules, and a token in ``/etc/any2kvm-id``.  The initramfs finds
the root filesystem by label, mounts it read-only and prints on the serial
console::

    ANY2KVM-BOOT-OK root=/dev/sda1 id=<token> boot=<a new uuid each boot>

then stays up: a guest that powers off has no console left for Nova to
read.  Building takes about a second once the kernel and busybox packages
are in the cache (``apt-get download``, nothing is installed on the host),
``run/test-cache/bootguest`` of the checkout, shared by every test and
every run.

Host tools: apt-get, dpkg-deb, depmod and modprobe (kmod), cpio, gzip,
sfdisk (fdisk), mke2fs (e2fsprogs), grub-mkimage (grub-pc-bin).
"""

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.lib.corpus import REPO

CACHE = REPO / 'run' / 'test-cache' / 'bootguest'
READY = 'ANY2KVM-BOOT-OK'
LABEL = 'ANY2KVM_ROOT'
START_SECTOR = 2048
MODULES = ('virtio_pci', 'virtio_blk', 'virtio_scsi', 'sd_mod', 'ata_piix',
           'ata_generic')
TOOLS = ('apt-get', 'apt-cache', 'dpkg-deb', 'depmod', 'modprobe', 'cpio',
         'gzip', 'sfdisk', 'mke2fs', 'grub-mkimage')
GRUB_BOOT_IMG = Path('/usr/lib/grub/i386-pc/boot.img')
TIMEOUT = 600       # a download on a slow machine


class GuestError(Exception):
    pass


def missing_tools():
    """The host tools this module needs that are not there."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    if not GRUB_BOOT_IMG.is_file():
        missing.append(str(GRUB_BOOT_IMG))
    return missing


def ready_line(token):
    """A regex for the console line of a guest with this token."""
    return r'%s root=\S+ id=%s' % (READY, re.escape(token))


def boots(console):
    """The boot ids of the ready lines in a console log, in order."""
    return re.findall(r'%s root=\S+ id=\S+ boot=(\S+)' % READY, console)


def _run(args, **kwargs):
    r = subprocess.run(args, capture_output=True, text=True,
                       timeout=TIMEOUT, **kwargs)
    if r.returncode != 0:
        raise GuestError('%s failed (%d): %s' % (
            ' '.join(str(a) for a in args), r.returncode,
            (r.stderr or r.stdout).strip()[-2000:]))
    return r.stdout


def _kernel_package():
    out = _run(['apt-cache', 'depends', 'linux-image-cloud-amd64'])
    for line in out.splitlines():
        m = re.match(r'\s*Depends:\s*(linux-image-[0-9]\S*)', line)
        if m:
            return m.group(1)
    raise GuestError('apt-cache: no kernel behind linux-image-cloud-amd64 '
                     '(apt-get update?)')


def packages(cache=CACHE):
    """The unpacked kernel and busybox (downloaded once, under a lock)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    kroot, bbroot = cache / 'kroot', cache / 'bbroot'
    with open(cache / '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / '.ready').exists():
            shutil.rmtree(kroot, ignore_errors=True)
            shutil.rmtree(bbroot, ignore_errors=True)
            for deb in cache.glob('*.deb'):
                deb.unlink()
            _run(['apt-get', 'download', _kernel_package(), 'busybox-static'],
                 cwd=cache)
            (kdeb,) = cache.glob('linux-image-*.deb')
            (bdeb,) = cache.glob('busybox-static_*.deb')
            _run(['dpkg-deb', '-x', str(kdeb), str(kroot)])
            _run(['dpkg-deb', '-x', str(bdeb), str(bbroot)])
            (version,) = os.listdir(kroot / 'lib' / 'modules')
            _run(['depmod', '-b', str(kroot), version])
            (cache / '.ready').write_text(version + '\n')
    version = (cache / '.ready').read_text().strip()
    return kroot, bbroot, version


INIT = r'''#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null; done
say() { echo "$*" > /dev/console; }
dev=
i=0
while [ $i -lt 300 ]; do
    dev=$(findfs LABEL=@LABEL@ 2>/dev/null) && break
    dev=
    sleep 0.1
    i=$((i + 1))
done
if [ -n "$dev" ] && mount -o ro "$dev" /mnt; then
    say "@READY@ root=$dev id=$(cat /mnt/etc/any2kvm-id)" \
        "boot=$(cat /proc/sys/kernel/random/uuid)"
    umount /mnt
else
    say "ANY2KVM-BOOT-FAIL no root filesystem; block devices:" \
        "$(ls /sys/class/block | tr '\n' ' ')"
fi
# Stay up: Nova reads the console of a running guest only.
while :; do sleep 3600; done
'''


def _initramfs(work, kroot, bbroot, version):
    root = work / 'initramfs'
    for d in ('bin', 'dev', 'proc', 'sys', 'mnt', 'mods'):
        (root / d).mkdir(parents=True)
    shutil.copy2(bbroot / 'bin' / 'busybox', root / 'bin' / 'busybox')
    (root / 'bin' / 'sh').symlink_to('busybox')
    order = []
    for module in MODULES:
        out = _run(['modprobe', '-d', str(kroot), '-S', version,
                    '--show-depends', module])
        for line in out.splitlines():
            words = line.split()
            if words[:1] == ['insmod'] and words[1] not in order:
                order.append(words[1])
    for ko in order:
        shutil.copy2(ko, root / 'mods')
    (root / 'mods' / 'order').write_text(
        ''.join(os.path.basename(ko) + '\n' for ko in order))
    init = root / 'init'
    init.write_text(INIT.replace('@LABEL@', LABEL).replace('@READY@', READY))
    init.chmod(0o755)
    files = _run(['find', '.'], cwd=root)
    cpio = subprocess.run(['cpio', '-o', '-H', 'newc', '--quiet'],
                          input=files.encode(), capture_output=True,
                          cwd=root, timeout=TIMEOUT, check=True).stdout
    return subprocess.run(['gzip', '-6'], input=cpio, capture_output=True,
                          timeout=TIMEOUT, check=True).stdout


def build(path, token=None, size_mib=64, cache=CACHE):
    """Write a bootable raw disk at ``path``; return its token."""
    token = token or uuid.uuid4().hex
    path = Path(path)
    kroot, bbroot, version = packages(cache)
    with tempfile.TemporaryDirectory(prefix='bootguest-') as tmp:
        work = Path(tmp)
        tree = work / 'root'
        (tree / 'boot').mkdir(parents=True)
        (tree / 'etc').mkdir()
        shutil.copy2(kroot / 'boot' / ('vmlinuz-' + version),
                     tree / 'boot' / 'vmlinuz')
        (tree / 'boot' / 'initrd.img').write_bytes(
            _initramfs(work, kroot, bbroot, version))
        (tree / 'etc' / 'any2kvm-id').write_text(token + '\n')

        if path.exists():
            path.unlink()
        with open(path, 'wb') as f:
            f.truncate(size_mib << 20)
        _run(['sfdisk', '-q', str(path)],
             input='label: dos\nstart=%d, type=83, bootable\n' % START_SECTOR)
        sectors = (size_mib << 20) // 512 - START_SECTOR
        _run(['mke2fs', '-q', '-F', '-L', LABEL, '-t', 'ext4',
              '-O', '^64bit,^metadata_csum',
              '-E', 'offset=%d' % (START_SECTOR * 512), '-d', str(tree),
              str(path), '%dk' % (sectors // 2)])

        cfg = work / 'early.cfg'
        cfg.write_text('set root=(hd0,msdos1)\n'
                       'linux /boot/vmlinuz console=ttyS0,115200 panic=-1 '
                       'quiet\n'
                       'initrd /boot/initrd.img\n'
                       'boot\n')
        core = work / 'core.img'
        _run(['grub-mkimage', '-O', 'i386-pc', '-o', str(core), '-c',
              str(cfg), '-p', '(hd0,msdos1)/boot/grub', 'biosdisk',
              'part_msdos', 'ext2', 'linux', 'boot'])
        core_bytes = core.read_bytes()
        if len(core_bytes) > (START_SECTOR - 1) * 512:
            raise GuestError('GRUB core image too big: %d bytes'
                             % len(core_bytes))
        with open(path, 'r+b') as f:
            # boot.img's first 440 bytes keep the partition table; its
            # default sectors match core.img at LBA 1.
            f.write(GRUB_BOOT_IMG.read_bytes()[:440])
            f.seek(512)
            f.write(core_bytes)
    return token


def xenserver_tgz(qemu_img, directory, token=None):
    """A boot guest as a XenServer VDI export: a gzipped tar of ``0.vhd``,
    a dynamic VHD of the guest written by qemu-img.  Returns (path of the
    tgz, token)."""
    from tests.lib import imagegen

    directory = Path(directory)
    raw = directory / 'guest.raw'
    token = build(raw, token)
    vhd = directory / 'guest.vhd'
    _run([str(qemu_img), 'convert', '-f', 'raw', '-O', 'vpc', '-o',
          'subformat=dynamic,force_size=on', str(raw), str(vhd)])
    raw.unlink()
    tgz = directory / 'guest.tgz'
    imagegen.make_tar(tgz, imagegen.xenserver_members([vhd]),
                      compression='gz')
    vhd.unlink()
    return tgz, token
