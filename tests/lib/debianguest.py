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

"""A real, minimal Debian 12 test guest whose initramfs lacks virtio.

The busybox guests of :mod:`tests.lib.guestbuild` have no initramfs-tools:
nothing can rebuild their initramfs.  virt-v2v rebuilds a Linux initramfs
by running the guest's own ``update-initramfs`` inside its appliance, so
the guest the virt-v2v hand-off is tested on is a real Debian, installed
by ``mmdebstrap`` (``--variant=minbase``, no docs, no locales) with
``linux-image-cloud-amd64``, ``initramfs-tools`` and GRUB's tools
(``grub-common``, ``grub2-common``, ``grub-pc-bin``: ``grub-mkconfig``
for virt-v2v, no ``grub-pc`` postinst).

Its initramfs is made with ``MODULES=list`` (``conf.d/any2kvm``) and a hook
adding ``ata_piix``, ``ata_generic``, ``ahci`` and ``sd_mod`` only: it
boots on IDE and SATA, not on virtio.  The virtio modules are on the disk.
``/etc/initramfs-tools/modules`` (what virt-v2v appends the virtio
modules to) is the package's.

The kernel command line (``/etc/default/grub`` and the ``grub.cfg`` this
module writes in the ``grub-mkconfig`` style) has ``init=`` a script that
prints ``ANY2KVM-BOOT-OK root=DEV id=TOKEN`` on the serial console and
powers off (no systemd boot under TCG), ``rootdelay=10`` and ``panic=-1``:
on a bus it has no driver for, the initramfs gives up after 10 s and the
guest reboots (QEMU exits, ``-no-reboot``) without a line.  GRUB's core
image is in the MBR gap (as in guestbuild), its modules in
``/boot/grub/i386-pc``.

The disk (512 MiB sparse raw, ~300 MiB allocated; virt-v2v wants 100 MB
free on ``/``) is built once into the
test cache (``guestbuild.cache_dir()``) and copied (sparse) for each use.
"""

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.lib import guestbuild

KIND = 'debian-novirtio'
FSUUID = '2e6b3c1a-4a2b-4d7e-9a11-a2c0ffee0301'
TOKEN = 'any2kvm-debian-novirtio-1'
SIZE_MB = 512
START = guestbuild.START_SECTOR
MIRRORS = ('deb http://deb.debian.org/debian bookworm main',
           'deb http://deb.debian.org/debian bookworm-updates main',
           'deb http://deb.debian.org/debian-security bookworm-security '
           'main')
PACKAGES = ('linux-image-cloud-amd64', 'initramfs-tools', 'grub-common',
            'grub2-common', 'grub-pc-bin')
#: The initramfs's storage modules: no virtio.
INITRAMFS_MODULES = ('ata_piix', 'ata_generic', 'ahci', 'sd_mod')
CMDLINE = ('console=ttyS0,115200 init=/usr/local/sbin/any2kvm-ready '
           'rootdelay=10 panic=-1')

READY = '''#!/bin/sh
mount -t proc proc /proc 2>/dev/null
dev=$(awk '$2=="/" {print $1}' /proc/mounts | grep ^/dev | tail -1)
echo "ANY2KVM-BOOT-OK root=$dev id=$(cat /etc/any2kvm-id)" > /dev/console
echo o > /proc/sysrq-trigger
sleep 60
'''

HOOK = '''#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules %s
''' % ' '.join(INITRAMFS_MODULES)

SETUP = ('mkdir -p "$1/etc/initramfs-tools/conf.d" '
         '"$1/etc/initramfs-tools/hooks" && '
         'printf "MODULES=list\\nCOMPRESS=gzip\\n" > '
         '"$1/etc/initramfs-tools/conf.d/any2kvm" && '
         'printf "%s" "$ANY2KVM_HOOK" > '
         '"$1/etc/initramfs-tools/hooks/any2kvm" && '
         'chmod 755 "$1/etc/initramfs-tools/hooks/any2kvm"')

EXCLUDES = ('/usr/share/doc/*', '/usr/share/man/*', '/usr/share/locale/*',
            '/usr/share/info/*', '/usr/share/lintian/*',
            '/usr/share/grub/themes/*')


def missing_tools():
    out = [t for t in ('mmdebstrap', 'mke2fs', 'sfdisk', 'grub-mkimage',
                       'qemu-system-x86_64') if not shutil.which(t) and
           not os.path.exists('/sbin/' + t)]
    if os.geteuid() != 0:
        out.append('root (mmdebstrap --mode=root)')
    return out


def _grub_cfg(version):
    return ('set timeout=0\n'
            'set default=0\n'
            'insmod part_msdos\ninsmod ext2\n'
            "search --no-floppy --fs-uuid --set=root %(uuid)s\n"
            "menuentry 'Debian GNU/Linux' {\n"
            '\tinsmod part_msdos\n\tinsmod ext2\n'
            '\tsearch --no-floppy --fs-uuid --set=root %(uuid)s\n'
            '\tlinux\t/boot/vmlinuz-%(v)s root=UUID=%(uuid)s ro %(cmd)s\n'
            '\tinitrd\t/boot/initrd.img-%(v)s\n'
            '}\n' % {'uuid': FSUUID, 'v': version, 'cmd': CMDLINE})


def _tree(work):
    root = work / 'root'
    env = dict(os.environ, ANY2KVM_HOOK=HOOK)
    cmd = ['mmdebstrap', '--mode=root', '--variant=minbase', '--quiet',
           '--include=' + ','.join(PACKAGES), '--setup-hook=' + SETUP]
    cmd += ['--dpkgopt=path-exclude=' + p for p in EXCLUDES]
    cmd += ['--dpkgopt=path-include=/usr/share/doc/*/copyright']
    cmd += ['bookworm', str(root)] + list(MIRRORS)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                       env=env)
    if r.returncode != 0:
        raise guestbuild.BuildError('mmdebstrap: exit %d: %s' % (
            r.returncode, r.stderr.strip()[-2000:]))
    (version,) = os.listdir(str(root / 'lib' / 'modules'))
    (root / 'boot' / 'grub').mkdir(parents=True, exist_ok=True)
    shutil.copytree(os.path.join(guestbuild.GRUB_DIR),
                    str(root / 'boot' / 'grub' / 'i386-pc'))
    (root / 'boot' / 'grub' / 'grub.cfg').write_text(_grub_cfg(version))
    (root / 'etc' / 'default' / 'grub').write_text(
        'GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR=Debian\n'
        'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
        'GRUB_CMDLINE_LINUX="%s"\nGRUB_TERMINAL=console\n'
        'GRUB_DISABLE_OS_PROBER=true\n' % CMDLINE)
    (root / 'etc' / 'fstab').write_text(
        'UUID=%s / ext4 errors=remount-ro 0 1\n' % FSUUID)
    (root / 'etc' / 'hostname').write_text('guest-debian\n')
    (root / 'etc' / 'any2kvm-id').write_text(TOKEN + '\n')
    ready = root / 'usr' / 'local' / 'sbin' / 'any2kvm-ready'
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.write_text(READY)
    ready.chmod(0o755)
    for cache in ('var/cache/apt/archives', 'var/lib/apt/lists'):
        for p in (root / cache).glob('*'):
            if p.is_file():
                p.unlink()
    return root, version


def _disk(path, work, root):
    with open(str(path), 'wb') as f:
        f.truncate(SIZE_MB << 20)
    subprocess.run(['sfdisk', '-q', str(path)],
                   input='label: dos\nstart=%d, type=83, bootable\n'
                   % START, text=True, check=True, capture_output=True,
                   timeout=60)
    sectors = (SIZE_MB << 20) // 512 - START
    guestbuild._run(['mke2fs', '-q', '-F', '-L', 'ANY2KVM_DEBIAN', '-U',
                     FSUUID, '-t', 'ext4', '-E', 'offset=%d' % (START * 512),
                     '-d', str(root), str(path), '%dk' % (sectors // 2)])
    core = work / 'core.img'
    guestbuild._run(['grub-mkimage', '-O', 'i386-pc', '-o', str(core),
                     '-p', '(hd0,msdos1)/boot/grub', 'biosdisk',
                     'part_msdos', 'ext2', 'search', 'search_fs_uuid',
                     'linux', 'boot', 'configfile', 'normal'])
    data = core.read_bytes()
    with open(os.path.join(guestbuild.GRUB_DIR, 'boot.img'), 'rb') as f:
        mbr = f.read(440)
    with open(str(path), 'r+b') as f:
        f.write(mbr)
        f.seek(512)
        f.write(data)


def cached_disk():
    """The cached disk (built on first use, under the cache's lock);
    (path, seconds the build took or 0.0)."""
    cache = guestbuild.cache_dir()
    disk = cache / (KIND + '.raw')
    with open(str(cache / '.lock-debian'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if disk.exists():
            return disk, 0.0
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix='debianguest-',
                                         dir=str(cache)) as tmp:
            work = Path(tmp)
            root, _version = _tree(work)
            part = work / 'disk.raw'
            _disk(part, work, root)
            part.rename(disk)
        return disk, time.monotonic() - start


def build(path):
    """Copy the guest (sparse) to ``path``; {'kind', 'fsuuid', 'token',
    'build_seconds'}."""
    disk, seconds = cached_disk()
    subprocess.run(['cp', '--sparse=always', str(disk), str(path)],
                   check=True, timeout=600)
    return {'kind': KIND, 'fsuuid': FSUUID, 'token': TOKEN,
            'build_seconds': seconds}
