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

"""Guest inspection and ``convert --fix`` on real Linux and Windows disks.

The Linux guests are built from Debian packages (tests/lib/guestbuild.py)
and booted under QEMU TCG on the bus the properties choose (the UEFI one
with OVMF).  The Windows disks are NTFS disks laid out like installed
Windows guests, with hives made by hivex (tests/lib/winbuild.py).  The
libguestfs appliance under TCG costs a minute or more per launch on a
loaded machine, so this module launches it five times in all: once for
the seven disks together (one appliance, seven drives), then for
``convert --fix`` and for a fix that fails half-way, each on the Xen PV
Linux guest and on the Windows Server 2019 disk.  The command-line
plumbing (info, convert, import, warnings) is tested with a stand-in
interpreter that prints a recorded probe output instead.
"""

import copy
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from any2kvm_os import exception
from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe
from any2kvm_os import properties
from tests.lib.cli import describe
from tests.lib.cli import run_any2kvm
from tests.lib import guestbuild
from tests.lib import imagegen as ig
from tests.lib.tools import missing_tool
from tests.lib import winbuild
from tests.lib import winhive

RECORDED = Path(__file__).parent.parent / 'unit' / 'data' / \
    'probe-linux-guests.json'
APPLIANCE_TIMEOUT = 1800
#: The one launch inspecting every guest (the guest builds come first,
#: within the same APPLIANCE_TIMEOUT of the first test using it).
INSPECT_ALL_TIMEOUT = 1500
#: The Linux guests booted with SeaBIOS.
BIOS_KINDS = ('virtio', 'novirtio', 'xenpv')
CITRIX = winbuild.CITRIX
CSETS = ('ControlSet001', 'ControlSet002')


def qemu_img(*args):
    subprocess.run(('qemu-img',) + tuple(str(a) for a in args), check=True,
                   capture_output=True, timeout=300)


@pytest.fixture(scope='module')
def guests(tmp_path_factory):
    missing = guestbuild.missing_tools() + winbuild.missing_tools()
    if missing:
        missing_tool('test guests need: %s' % ', '.join(missing))
    top = tmp_path_factory.mktemp('guests')
    built = {}
    for kind in guestbuild.KINDS:
        path = top / ('%s.raw' % kind)
        built[kind] = dict(guestbuild.build(path, kind), path=path)
    for kind in winbuild.KINDS:
        built[kind] = winbuild.build(top / ('%s.raw' % kind), kind)
    return built


@pytest.fixture(scope='module')
def libguestfs():
    settings = gi.Settings()
    r = subprocess.run([settings.python, '-c', 'import guestfs'],
                       capture_output=True, timeout=60)
    if r.returncode != 0 or not shutil.which('qemu-system-x86_64'):
        missing_tool('libguestfs with its Python binding for %s is needed '
                     '(bindep profile inspect: python3-guestfs, '
                     'libguestfs-tools)' % settings.python)
    return settings


@pytest.fixture(scope='module')
def inspected(guests, libguestfs):
    """ONE appliance launch for all the guests (one drive each).  Seven
    inspections in one launch: bound by the tests' own limit, not by the
    900 s default of one inspection (missed at load 20, beside the
    loopback cloud's start-up)."""
    order = list(guestbuild.KINDS) + list(winbuild.KINDS)
    settings = gi.Settings(libguestfs.python, libguestfs.backend,
                           libguestfs.backend_settings,
                           timeout=INSPECT_ALL_TIMEOUT)
    result = gi.inspect_files([guests[k]['path'] for k in order], settings)
    by_disk = {g['disk']: g for g in result['guests']}
    return {kind: by_disk.get(index) for index, kind in enumerate(order)}


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_inspection_of_the_three_guests(inspected):
    for kind in BIOS_KINDS:
        g = inspected[kind]
        assert g is not None, kind
        assert g['type'] == 'linux'
        assert g['distro'] == 'debian'
        assert g['major_version'] == 12
        assert g['arch'] == 'x86_64'
        assert g['hostname'] == 'guest-%s' % kind
        assert g['firmware'] == 'bios'
        assert g['linux']['bootloader'] == 'grub2'
    mods = {k: properties.boot_kernel(inspected[k])['modules']
            for k in BIOS_KINDS}
    assert mods['virtio']['virtio_scsi'] == 'initramfs'
    assert mods['novirtio']['virtio_scsi'] == 'module'
    assert mods['novirtio']['ata_piix'] == 'initramfs'
    names = {e['path']: e for e in inspected['xenpv']['linux']['disk_names']}
    assert names['/etc/fstab']['names'] == ['/dev/xvda1']
    assert names['/boot/grub/grub.cfg']['xen_consoles'] == ['console=hvc0']
    assert inspected['xenpv']['linux']['tools']['xe_guest_utilities'] == [
        'xe-guest-utilities']
    assert inspected['virtio']['linux']['tools']['qemu_guest_agent'] == [
        'qemu-guest-agent']


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_each_guest_boots_on_the_bus_its_properties_choose(guests,
                                                           inspected):
    chosen = {k: properties.guest_properties(inspected[k])[0]
              for k in BIOS_KINDS}
    assert chosen['virtio']['hw_disk_bus'] == 'scsi'
    assert chosen['virtio']['hw_scsi_model'] == 'virtio-scsi'
    assert chosen['virtio']['hw_qemu_guest_agent'] == 'yes'
    assert chosen['novirtio']['hw_disk_bus'] == 'ide'
    assert 'hw_scsi_model' not in chosen['novirtio']
    for kind in ('virtio', 'novirtio'):
        bus = guestbuild.NOVA_BUS[chosen[kind]['hw_disk_bus']]
        line = guestbuild.boot(guests[kind]['path'], bus)
        assert line and 'ANY2KVM-BOOT-OK' in line, (kind, bus, line)
        assert guests[kind]['token'] in line
    # On virtio-scsi, the guest without virtio in its initramfs does not
    # come up: what the old default (scsi for every image) did to it.
    line = guestbuild.boot(guests['novirtio']['path'], 'virtio-scsi')
    assert line is None or 'ANY2KVM-BOOT-FAIL' in line, line
    # The Xen PV guest's /dev/xvda1 does not exist on KVM.
    line = guestbuild.boot(guests['xenpv']['path'], 'virtio-scsi')
    assert line is None or 'root=/dev/xvda1 not found' in line, line


def _debugfs(disk, request, tmp_path):
    """What debugfs answers ``request`` on the guest's ext4 root
    (outside libguestfs)."""
    part = tmp_path / 'part.img'
    with open(str(disk), 'rb') as src, open(str(part), 'wb') as dst:
        src.seek(guestbuild.START_SECTOR * 512)
        shutil.copyfileobj(src, dst)
    r = subprocess.run(['debugfs', '-R', request, str(part)],
                       capture_output=True, text=True, timeout=120)
    part.unlink()
    return r.stdout


def _debugfs_cat(disk, path, tmp_path):
    """A file of the guest's ext4 root, read with debugfs."""
    return _debugfs(disk, 'cat %s' % path, tmp_path)


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_convert_fix_makes_the_xen_guest_boot_on_virtio_scsi(
        guests, libguestfs, tmp_path):
    source = tmp_path / 'xen.qcow2'
    qemu_img('convert', '-O', 'qcow2', guests['xenpv']['path'], source)
    before = ig.sha256_file(source)
    out = tmp_path / 'xen.raw'
    res = run_any2kvm('convert', source, out, '--fix', '--format', 'json',
                      timeout=APPLIANCE_TIMEOUT)
    assert res.returncode == 0, describe(res)
    report = json.loads(res.stdout)
    uuid = 'UUID=' + guests['xenpv']['fsuuid']
    (fix,) = report['fixed']
    assert {f['path']: f['changes'] for f in fix['files']} == {
        '/etc/fstab': [{'from': '/dev/xvda1', 'to': uuid}],
        '/boot/grub/grub.cfg': [{'from': '/dev/xvda1', 'to': uuid},
                                {'from': 'console=hvc0', 'to': ''}]}
    assert report['properties']['hw_disk_bus'] == 'scsi'
    assert report['guest']['disk_names']['/etc/fstab'] == [uuid]
    # The source is untouched; the copy has the new names.
    assert ig.sha256_file(source) == before
    assert '%s / ext4' % uuid in _debugfs_cat(out, '/etc/fstab', tmp_path)
    grub = _debugfs_cat(out, '/boot/grub/grub.cfg', tmp_path)
    assert 'root=%s ro console=ttyS0' % uuid in grub
    assert 'hvc0' not in grub
    line = guestbuild.boot(out, 'virtio-scsi')
    assert line and 'ANY2KVM-BOOT-OK' in line, line
    assert 'fstab=%s' % uuid in line


NETWORK_FILES = {
    '/etc/network/interfaces': (
        'auto lo\niface lo inet loopback\n\n'
        'allow-hotplug enX0\niface enX0 inet static\n'
        '    address 192.0.2.10/24\n'),
    '/etc/udev/rules.d/70-persistent-net.rules': (
        'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", '
        'ATTR{address}=="aa:00:00:00:00:01", KERNEL=="eth*", '
        'NAME="eth0"\n'),
}


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_xen_console_alone_becomes_the_serial_console(libguestfs,
                                                        tmp_path):
    """A Xen PV guest whose kernel's only console is hvc0 (pygrub's
    guests, XenServer's templates): on KVM it would log nowhere Nova
    reads (the serial port: ``openstack console log show``, the boot
    proof).  --fix makes it console=ttyS0, and the boot's line is seen
    on the serial port."""
    disk = tmp_path / 'hvc0.raw'
    built = guestbuild.build(disk, 'xenpv', extra_files={
        '/boot/grub/grub.cfg': (
            'set timeout=0\n'
            "menuentry 'Debian GNU/Linux (Xen console only)' {\n"
            '    linux /boot/vmlinuz root=/dev/xvda1 ro console=hvc0 '
            'panic=-1 quiet\n'
            '    initrd /boot/initrd.img\n}\n')})
    gi.inspect_files([disk], libguestfs, fix=True)
    grub = _debugfs_cat(disk, '/boot/grub/grub.cfg', tmp_path)
    assert 'root=UUID=%s ro console=ttyS0 panic=-1' % built['fsuuid'] \
        in grub, grub
    line = guestbuild.boot(disk, 'virtio-scsi')
    assert line and 'ANY2KVM-BOOT-OK' in line, line


@pytest.mark.timeout(APPLIANCE_TIMEOUT * 2)
def test_the_fix_maps_xen_names_by_the_disks_slots(libguestfs, tmp_path):
    """A XenServer VM with disks in slots 0 and 4 (the template's CD
    drive sits in slot 3): the guest's /dev/xvde1 is the second disk
    given, and /dev/xvdd (the CD drive) is none of them, left as it is
    and reported.  Taken in order, xvde1 would have been a fifth disk.
    Its network configuration names the Xen NIC (enX0) and udev pins
    eth0 to the Xen MAC: the fix keeps the kernel's names
    (net.ifnames=0), renames enX0 to eth0 and sets the rules aside; the
    guest still boots."""
    extra = ('/dev/xvde1 /backup ext4 defaults 0 2\n'
             '/dev/xvdd /media/cdrom0 udf,iso9660 user,noauto 0 0\n')
    boot = tmp_path / 'xen0.raw'
    # RHEL 8 keeps its BLS entries' command line in grubenv.
    env = ('# GRUB Environment Block\nsaved_entry=x\n'
           'kernelopts=root=/dev/xvda1 ro console=hvc0\n')
    env += '#' * (1024 - len(env))
    built = guestbuild.build(boot, 'xenpv', extra_fstab=extra,
                             extra_files=dict(NETWORK_FILES, **{
                                 '/boot/grub2/grubenv': env}))
    data_uuid = '6a1f0c3e-9d4b-4e7a-8c21-5b0e3f9a7d14'
    data = guestbuild.data_disk(tmp_path / 'xen4.raw', data_uuid)
    result = gi.inspect_files([boot, data], libguestfs, fix=True,
                              slots=[0, 4])
    fstab = _debugfs_cat(boot, '/etc/fstab', tmp_path)
    assert 'UUID=%s / ext4' % built['fsuuid'] in fstab, fstab
    assert 'UUID=%s /backup ext4' % data_uuid in fstab, fstab
    assert '/dev/xvdd /media/cdrom0' in fstab, fstab
    summary = gi.summary(result, {'xen_slots': [0, 4]})
    assert any('/etc/fstab names /dev/xvdd, which is on none of the '
               'VM\'s disks' in w for w in summary['warnings']), summary
    # The network.
    assert not [w for w in summary['warnings'] if 'Xen NIC' in w], summary
    interfaces = _debugfs_cat(boot, '/etc/network/interfaces', tmp_path)
    assert 'allow-hotplug eth0\niface eth0 inet static' in interfaces
    assert _debugfs_cat(boot, probe.PERSISTENT_NET, tmp_path) == ''
    assert 'NAME="eth0"' in _debugfs_cat(
        boot, probe.PERSISTENT_NET + '.any2kvm-disabled', tmp_path)
    grub = _debugfs_cat(boot, '/boot/grub/grub.cfg', tmp_path)
    assert 'net.ifnames=0' in grub and 'hvc0' not in grub, grub
    fixed_env = _debugfs_cat(boot, '/boot/grub2/grubenv', tmp_path)
    assert len(fixed_env) == 1024, len(fixed_env)
    assert ('kernelopts=root=UUID=%s ro console=ttyS0 net.ifnames=0\n'
            % built['fsuuid']) in fixed_env, fixed_env
    line = guestbuild.boot(boot, 'virtio-scsi')
    assert line and 'ANY2KVM-BOOT-OK' in line, line


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_the_fix_on_a_vm_with_a_cloned_disk_units_and_a_quoted_console(
        libguestfs, tmp_path):
    """Guests the other tests do not build (a review's findings, on the
    real appliance): a VM of three disk files (no slots), the second a
    clone of the root's filesystem (one UUID on both), the third with a
    UUID of its own.  UUID= would mount either clone: the root and
    /backup get their bus names and a warning; the systemd mount unit of
    the third disk gets udev's by-uuid path; /dev/xvdd1, past the three
    disks, stays and is reported; console=hvc0 made console=ttyS0 leaves
    /etc/default/grub a shell file that parses.  The guest boots."""
    boot = tmp_path / 'xen0.raw'
    unit = ('[Mount]\nWhat=/dev/xvdc1\nWhere=/srv/data\nType=ext4\n\n'
            '[Install]\nWantedBy=local-fs.target\n')
    built = guestbuild.build(
        boot, 'xenpv',
        extra_fstab=('/dev/xvdb1 /backup ext4 defaults 0 2\n'
                     '/dev/xvdd1 /more ext4 defaults,nofail 0 2\n'),
        extra_files={
            '/etc/default/grub': ('GRUB_DEFAULT=0\n'
                                  'GRUB_CMDLINE_LINUX_DEFAULT="console=hvc0"'
                                  '\nGRUB_TIMEOUT=5\n'),
            '/etc/systemd/system/srv-data.mount': unit})
    clone = guestbuild.data_disk(tmp_path / 'xen1.raw', built['fsuuid'])
    own = '0c9e4d2a-7b1f-4a36-9e58-2d4f6a8b1c03'
    third = guestbuild.data_disk(tmp_path / 'xen2.raw', own)
    result = gi.inspect_files([boot, clone, third], libguestfs, fix=True)
    summary = gi.summary(result)
    fstab = _debugfs_cat(boot, '/etc/fstab', tmp_path)
    assert 'UUID=%s' % built['fsuuid'] not in fstab, fstab
    assert '\n/dev/sdb1 /backup ext4' in fstab, fstab
    assert '/dev/xvdd1 /more ext4' in fstab, fstab
    assert any(w.startswith('filesystems /dev/sda1 and /dev/sdb1 share the '
                            'UUID %s' % built['fsuuid'])
               for w in summary['warnings']), summary['warnings']
    assert any('/etc/fstab names /dev/xvdd1, which is on none of the VM\'s '
               'disks' in w for w in summary['warnings']), summary
    grub_cfg = _debugfs_cat(boot, '/boot/grub/grub.cfg', tmp_path)
    assert 'root=/dev/sda1' in grub_cfg, grub_cfg
    assert 'What=/dev/disk/by-uuid/%s\n' % own in _debugfs_cat(
        boot, '/etc/systemd/system/srv-data.mount', tmp_path)
    default = _debugfs_cat(boot, '/etc/default/grub', tmp_path)
    # The Xen console becomes the serial one Nova logs (the next
    # update-grub keeps it).
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\n' in default, \
        default
    r = subprocess.run(['bash', '-c', default + 'echo "$GRUB_TIMEOUT"'],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, '5\n', ''), r
    line = guestbuild.boot(boot, 'virtio-scsi')
    assert line and 'ANY2KVM-BOOT-OK' in line, line


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_the_kernel_the_bootloader_boots_decides_and_a_xen_default_is_moved(
        libguestfs, tmp_path):
    """A PV guest of the 2.6.18 era: GRUB legacy boots its Xen-only kernel
    (its configuration says CONFIG_X86_64_XEN=y) by default, and a
    standard kernel is installed beside it; a directory of modules of a
    newer kernel has no image (removed, not purged).  The bus is chosen
    for the standard kernel, not for the newest directory nor for the
    Xen default, and --fix makes the standard kernel GRUB's default.
    What Xen's drivers and consoles left in its settings is fixed in the
    same launch: the modprobe aliases name the KVM drivers, SUSE's
    INITRD_MODULES lose Xen's, the inittab getty on xvc0 runs on ttyS0,
    securetty gets ttyS0; an upstart getty on hvc0 is reported only.
    Its identity: cloud-init (built for CloudStack) would regenerate the
    SSH host keys and take Nova's hostname: --fix writes the drop-in that
    keeps them; its lvm.conf filter accepts Xen's disks only: --fix adds
    the KVM names, and the initramfs's copy (read in the appliance) is
    reported."""
    _kroot, version, _busybox = guestbuild.packages()
    xen = '2.6.18-398.el5xen'
    menu = ('default=0\ntimeout=5\n'
            'title CentOS (%s)\n\troot (hd0,0)\n'
            '\tkernel /boot/vmlinuz-%s ro root=/dev/xvda1\n'
            'title Debian (%s)\n\troot (hd0,0)\n'
            '\tkernel /boot/vmlinuz-%s ro root=/dev/xvda1\n' % (
                xen, xen, version, version))
    extra = {
        # GRUB legacy boots this guest: the grub.cfg has no entry.
        '/boot/grub/grub.cfg': '# not used\n',
        '/boot/grub/menu.lst': menu,
        '/boot/vmlinuz-' + version: ('symlink', 'vmlinuz'),
        '/boot/initrd.img-' + version: ('symlink', 'initrd.img'),
        '/boot/vmlinuz-' + xen: 'image\n',
        '/boot/config-' + xen: 'CONFIG_X86_64_XEN=y\n',
        '/lib/modules/%s/modules.dep' % xen: '',
        '/lib/modules/9.9.9-leftover/modules.dep': '',
    }
    extra.update(XEN_LEFTOVERS)
    extra.update(IDENTITY_FILES)
    disk = tmp_path / 'pv.raw'
    # SELinux labels, as a RHEL guest has them (the test guest's kernel
    # does not enforce them: only their copy is checked).
    labels = {'/etc/fstab': {'security.selinux': ETC_T},
              '/etc/cloud/cloud.cfg.d': {
                  'security.selinux': b'system_u:object_r:etc_dir_t:s0'},
              '/etc/cloud/cloud.cfg.d/99_cloudstack.cfg': {
                  'security.selinux': ETC_T}}
    guestbuild.build(disk, 'xenpv', extra_files=extra, initramfs_files={
        '/etc/lvm/lvm.conf': IDENTITY_FILES['/etc/lvm/lvm.conf']},
        xattrs=labels)
    result = gi.inspect_files([disk], libguestfs, fix=True)
    (guest,) = [g for g in result['guests'] if g.get('type')]
    kernels = {k['version']: k for k in guest['linux']['kernels']}
    assert (kernels[version]['image'], kernels[version]['xen_pv_only']) \
        == ('/boot/vmlinuz-' + version, False)
    assert (kernels[xen]['image'], kernels[xen]['xen_pv_only']) == (
        '/boot/vmlinuz-' + xen, True)
    assert kernels['9.9.9-leftover']['image'] is None
    assert guest['linux']['boot_default'] == {
        'file': '/boot/grub/menu.lst', 'entry': 0,
        'image': '/boot/vmlinuz-' + xen, 'version': xen}
    summary = gi.summary(result)
    assert summary['guest']['kernel'] == version
    assert summary['properties']['hw_disk_bus'] == 'scsi'
    assert summary['guest']['boot_default']['version'] == version
    assert not [w for w in summary['warnings'] if 'by default' in w], \
        summary['warnings']
    fixed = _debugfs_cat(disk, '/boot/grub/menu.lst', tmp_path)
    assert fixed.startswith('default=1\ntimeout=5\n'), fixed
    assert 'root=/dev/xvda1' not in fixed, fixed
    # Xen's leftovers: found by the inspection, fixed in the disk.
    kinds = {e['path']: e['kind'] for e in guest['linux']['xen_files']}
    assert kinds == {'/etc/modprobe.conf': 'modprobe',
                     '/etc/modprobe.d/xen.conf': 'modprobe',
                     '/etc/sysconfig/kernel': 'sysconfig_kernel',
                     '/etc/inittab': 'inittab',
                     '/etc/securetty': 'securetty',
                     '/etc/init/hvc0.conf': 'upstart'}, kinds
    assert _debugfs_cat(disk, '/etc/modprobe.conf', tmp_path) == (
        'alias eth0 virtio_net\nalias scsi_hostadapter virtio_scsi\n'
        '# alias scsi_hostadapter1 xenblk\n'
        'options snd-card-0 index=0\n')
    assert _debugfs_cat(disk, '/etc/modprobe.d/xen.conf', tmp_path) == \
        'blacklist floppy\n'
    assert 'INITRD_MODULES="processor ata_piix ext3"\n' \
        'DOMU_INITRD_MODULES=""\n' == _debugfs_cat(
            disk, '/etc/sysconfig/kernel', tmp_path)
    assert _debugfs_cat(disk, '/etc/inittab', tmp_path) == (
        'id:3:initdefault:\n'
        'co:2345:respawn:/sbin/agetty ttyS0 9600 vt100-nav\n'
        '1:2345:respawn:/sbin/mingetty tty1\n')
    assert _debugfs_cat(disk, '/etc/securetty', tmp_path) == \
        'console\ntty1\nxvc0\nttyS0\n'
    assert _debugfs_cat(disk, '/etc/init/hvc0.conf', tmp_path) == \
        XEN_LEFTOVERS['/etc/init/hvc0.conf']
    assert [w for w in summary['warnings'] if w.startswith('/etc/')] == [
        '/etc/init/hvc0.conf runs a getty on the Xen console (exec '
        '/sbin/agetty /dev/hvc0 38400), which KVM does not have; --fix '
        'leaves it (upstart gives up respawning it): point it at ttyS0 or '
        'remove the job'], summary['warnings']
    assert any('run "dpkg -r xe-guest-utilities" in the guest' in line
               for line in summary['left']), summary['left']
    # Its identity: cloud-init and the LVM filter (the facts as the
    # summary made them: after the fix).
    ci = guest['linux']['cloud_init']
    assert (ci['installed'], ci['disabled'], ci['ssh_deletekeys'],
            ci['preserve_hostname'], ci['datasource_list'],
            ci['instance_id'], ci['datasource'], ci['set_in']) == (
        ['/usr/bin/cloud-init'], None, False, True, ['CloudStack', 'None'],
        'i-2-1234-VM', 'DataSourceCloudStack', {
            'ssh_deletekeys': probe.CLOUD_KEEP,
            'preserve_hostname': probe.CLOUD_KEEP,
            'datasource_list': '/etc/cloud/cloud.cfg.d/99_cloudstack.cfg'}
    ), ci
    fixed = {f['path']: f['changes'] for f in result['fixed'][0]['files']}
    assert fixed[probe.CLOUD_KEEP] == [
        {'from': '', 'to': 'ssh_deletekeys: false'},
        {'from': '', 'to': 'preserve_hostname: true'}]
    assert fixed['/etc/lvm/lvm.conf'] == [
        {'from': '', 'to': '"a|^/dev/sd.*|"'}]
    assert _debugfs_cat(disk, probe.CLOUD_KEEP, tmp_path) == \
        probe.CLOUD_KEEP_TEXT
    # The file the fix made has its neighbour's label (libguestfs gave it
    # none); the files it rewrote kept theirs.
    assert _debugfs(
        disk, 'ea_get -V %s security.selinux' % probe.CLOUD_KEEP,
        tmp_path) == 'system_u:object_r:etc_t:s0\n'
    assert _debugfs(disk, 'ea_get -V /etc/fstab security.selinux',
                    tmp_path) == 'system_u:object_r:etc_t:s0\0\n'
    assert '/dev/xvda1' not in _debugfs_cat(disk, '/etc/fstab', tmp_path)
    assert [f.get('selinux_label') for f in result['fixed'][0]['files']
            if f['path'] == probe.CLOUD_KEEP] == [
                'system_u:object_r:etc_t:s0']
    assert summary['guest']['cloud_init']['ssh_deletekeys'] is False
    assert not [w for w in summary['warnings'] if 'cloud-init' in w], \
        summary['warnings']
    lvm = guest['linux']['lvm_filters']
    assert [(e['path'], e['setting'], e['changes']) for e in lvm['files']] \
        == [('/etc/lvm/lvm.conf', 'filter', ['"a|^/dev/sd.*|"'])], lvm
    assert [(e['path'], e['kernel'], e['patterns']) for e in
            lvm['initramfs']] == [('/boot/initrd.img-' + version, version,
                                   ['a|^/dev/xvd.*|', 'r|.*|'])], lvm
    assert _debugfs_cat(disk, '/etc/lvm/lvm.conf', tmp_path) == \
        IDENTITY_FILES['/etc/lvm/lvm.conf'].replace(
            '"a|^/dev/xvd.*|", ', '"a|^/dev/xvd.*|", "a|^/dev/sd.*|", ')
    assert [w.split(' (')[0] for w in summary['warnings']
            if 'lvm' in w] == ['the initramfs /boot/initrd.img-' + version]


#: What Xen's drivers and consoles leave in an older guest's settings
#: (RHEL 5's modprobe.conf, inittab and securetty, SLES 11's
#: /etc/sysconfig/kernel, a RHEL 6 upstart job).
#: SELinux's label of /etc's files, as setfiles writes it (NUL ended).
ETC_T = b'system_u:object_r:etc_t:s0\0'

XEN_LEFTOVERS = {
    '/etc/modprobe.conf': (
        'alias eth0 xennet\nalias scsi_hostadapter xenblk\n'
        '# alias scsi_hostadapter1 xenblk\n'
        'alias scsi_hostadapter1 xenblk\noptions snd-card-0 index=0\n'),
    '/etc/modprobe.d/xen.conf': (
        'alias scsi_hostadapter2 xen-vbd\nblacklist floppy\n'),
    '/etc/sysconfig/kernel': (
        'INITRD_MODULES="processor xenblk ata_piix xennet ext3"\n'
        'DOMU_INITRD_MODULES="xennet xenblk"\n'),
    '/etc/inittab': (
        'id:3:initdefault:\n'
        'co:2345:respawn:/sbin/agetty xvc0 9600 vt100-nav\n'
        '1:2345:respawn:/sbin/mingetty tty1\n'),
    '/etc/securetty': 'console\ntty1\nxvc0\n',
    '/etc/init/hvc0.conf': (
        'start on stopped rc RUNLEVEL=[2345]\nrespawn\n'
        'exec /sbin/agetty /dev/hvc0 38400\n'),
}


#: What decides the guest's identity on KVM: cloud-init built for
#: CloudStack (the instance it last ran on), an LVM filter for Xen's disks.
IDENTITY_FILES = {
    '/usr/bin/cloud-init': '#!/usr/bin/python3\n',
    '/etc/cloud/cloud.cfg': (
        'users:\n - default\ndisable_root: true\n'
        'preserve_hostname: false\n'
        'cloud_init_modules:\n - set_hostname\n - ssh\n'),
    '/etc/cloud/cloud.cfg.d/99_cloudstack.cfg':
        'datasource_list: [ CloudStack, None ]\n',
    '/var/lib/cloud/data/instance-id': 'i-2-1234-VM\n',
    '/var/lib/cloud/instance/datasource':
        'DataSourceCloudStack: DataSourceCloudStack\n',
    '/etc/lvm/lvm.conf': (
        'devices {\n\tdir = "/dev"\n\t# filter = [ "a|.*|" ]\n'
        '\tfilter = [ "a|^/dev/xvd.*|", "r|.*|" ]\n}\n'),
}


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_disk_without_boot_code_is_warned_of_and_does_not_boot(
        guests, inspected, libguestfs, tmp_path):
    """A BIOS guest whose master boot record has no boot code (a Xen PV
    guest's installer need not write any: pygrub reads the menu) is
    warned of; SeaBIOS indeed finds nothing to run on it."""
    assert inspected['xenpv']['partition_tables'][0]['boot_code'] is True
    assert inspected['uefi']['partition_tables'][0]['boot_code'] is False
    assert not [w for w in gi.summary({'guests': [inspected['uefi']]})[
        'warnings'] if 'boot code' in w]
    disk = tmp_path / 'pv.raw'
    shutil.copyfile(str(guests['xenpv']['path']), str(disk))
    with open(str(disk), 'r+b') as f:
        f.write(bytes(probe.MBR_CODE))
    result = gi.inspect_files([disk], libguestfs)
    warned = [w for w in gi.summary(result)['warnings'] if 'boot code' in w]
    assert len(warned) == 1 and warned[0].startswith(
        'the disk of the root (/dev/sda1) has no boot code'), warned
    log = tmp_path / 'seabios.log'
    line = guestbuild.boot(disk, 'virtio-scsi', timeout=30, log=log)
    assert line is None, line
    assert 'Booting from Hard Disk' in log.read_text(errors='replace')


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_fix_failing_half_way_leaves_the_copy_as_converted(
        guests, libguestfs, tmp_path, monkeypatch):
    source = tmp_path / 'xen.qcow2'
    qemu_img('convert', '-O', 'qcow2', guests['xenpv']['path'], source)
    out = tmp_path / 'xen.raw'
    monkeypatch.setenv('ANY2KVM_FIX_FAIL_AFTER', '1')
    res = run_any2kvm('convert', source, out, '--fix',
                      timeout=APPLIANCE_TIMEOUT)
    assert res.returncode == 1, describe(res)
    err = res.stderr.strip()
    assert err.startswith('any2kvm: error: %s: guest fix: fix stopped after '
                          '1 file(s)' % out), err
    assert 'it had changed: /etc/fstab' in err
    assert len(err.splitlines()) == 1, err
    # The converted copy is byte for byte the source: nothing of the
    # half-made fix reached it.
    assert ig.sha256_file(out) == ig.sha256_file(guests['xenpv']['path'])


# -- UEFI ---------------------------------------------------------------------

@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_the_uefi_guest_gets_uefi_and_q35_and_boots_with_ovmf(
        guests, inspected):
    g = inspected['uefi']
    assert g is not None
    assert g['type'] == 'linux' and g['distro'] == 'debian'
    assert g['firmware'] == 'uefi'
    (table,) = g['partition_tables']
    assert table['table'] == 'gpt' and table['esp']
    assert table['partitions'][0] == {'number': 1, 'kind': 'esp'}
    names = {e['path']: e['names'] for e in g['linux']['disk_names']}
    assert names['/etc/fstab'] == ['UUID=%s' % guests['uefi']['esp_uuid'],
                                   'UUID=%s' % guests['uefi']['fsuuid']]
    props, reasons = properties.guest_properties(g)
    assert props['hw_firmware_type'] == 'uefi'
    assert props['hw_machine_type'] == 'q35'
    assert reasons['hw_firmware_type'] == 'an EFI system partition'
    assert props['hw_disk_bus'] == 'scsi'
    bus = guestbuild.NOVA_BUS[props['hw_disk_bus']]
    line = guestbuild.boot(guests['uefi']['path'], bus, firmware='uefi')
    assert line and 'ANY2KVM-BOOT-OK' in line, line
    assert guests['uefi']['token'] in line
    # SeaBIOS finds the disk but nothing to run: the protective MBR of a
    # GPT disk has no boot code.
    log = Path(str(guests['uefi']['path']) + '.seabios.log')
    line = guestbuild.boot(guests['uefi']['path'], bus, timeout=30, log=log)
    assert line is None, line
    assert 'Booting from Hard Disk' in log.read_text(errors='replace')


@pytest.mark.timeout(APPLIANCE_TIMEOUT * 2)
def test_a_uefi_guest_without_the_fallback_path_gets_it_and_boots(
        libguestfs, tmp_path):
    """GRUB at \\EFI\\debian\\grubx64.efi only, as Debian installs it: its
    boot entry was in the Xen VM's NVRAM, which does not move, so OVMF
    with a new NVRAM boots nothing.  The inspection says so, --fix copies
    GRUB and its grub.cfg to \\EFI\\BOOT, and OVMF then boots it."""
    disk = tmp_path / 'debian-uefi.raw'
    built = guestbuild.build(disk, 'uefi', esp_dir='debian')
    log = tmp_path / 'before.log'
    line = guestbuild.boot(disk, 'virtio-scsi', timeout=120, log=log,
                           firmware='uefi', give_up='UEFI Interactive Shell')
    assert line is None, line
    console = log.read_text(errors='replace')
    # OVMF tried the disk, found no bootloader on it, and fell back to
    # its shell.
    assert 'failed to load Boot0001' in console and 'Not Found' in console
    assert 'UEFI Interactive Shell' in console, console[-2000:]
    before = gi.inspect_files([disk], libguestfs)
    (guest,) = [g for g in before['guests'] if g.get('type')]
    facts = dict(guest['linux']['uefi_fallback'])
    needed, free = facts.pop('needed'), facts.pop('free')
    assert facts == {
        'present': False, 'source': '/boot/efi/EFI/debian', 'shim': False,
        'files': ['grub.cfg', 'grubx64.efi']}
    # The room the copies take on the FAT16 ESP, which is mostly free:
    # GRUB's image, and a cluster each for grub.cfg and the directory.
    grub = len(winbuild.read_esp_file(disk, '/EFI/debian/grubx64.efi',
                                      start=guestbuild.START_SECTOR))
    assert grub + 2 * 512 < needed <= grub + 3 * 65536 < free, \
        (needed, free)
    warned = [w for w in gi.summary(before)['warnings'] if 'NVRAM' in w]
    assert warned == [
        'no UEFI fallback bootloader (\\EFI\\BOOT\\BOOTX64.EFI) on the EFI '
        'system partition: the boot entry was in the VM\'s NVRAM under '
        'Xen, which does not move, and a new NVRAM finds nothing to boot; '
        '--fix copies /boot/efi/EFI/debian there (grub.cfg, grubx64.efi)']
    result = gi.inspect_files([disk], libguestfs, fix=True)
    summary = gi.summary(result)
    assert not [w for w in summary['warnings'] if 'NVRAM' in w], summary
    assert summary['guest']['uefi_fallback']['present'] is True
    (fix,) = summary['fixed']
    copies = [f for f in fix['files']
              if f['path'] == probe.UEFI_FALLBACK][0]['changes']
    assert copies == [
        {'from': '/boot/efi/EFI/debian/grubx64.efi',
         'to': '/boot/efi/EFI/BOOT/BOOTX64.EFI'},
        {'from': '/boot/efi/EFI/debian/grub.cfg',
         'to': '/boot/efi/EFI/BOOT/grub.cfg'}]
    line = guestbuild.boot(disk, 'virtio-scsi', firmware='uefi')
    assert line and 'ANY2KVM-BOOT-OK' in line, line
    assert built['token'] in line


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_full_esp_fails_the_fallback_fix_before_it_copies(
        libguestfs, tmp_path):
    """An ESP without room for GRUB's copy: --fix refuses in one line
    that says so, before it copies anything (the room is what libguestfs'
    statvfs says of the real FAT file system), and the disk is left as
    it was."""
    disk = tmp_path / 'debian-uefi-full.raw'
    guestbuild.build(disk, 'uefi', esp_dir='debian')
    guestbuild.fill_esp(disk, 8192)
    with open(str(disk), 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with pytest.raises(exception.GuestFixError) as e:
        gi.inspect_files([disk], libguestfs, fix=True)
    assert re.search(r'the EFI system partition \(/boot/efi\) has [0-9]+ '
                     r'KiB free and the UEFI fallback bootloader\'s copies '
                     r'need [0-9]+ KiB: make room on it in the guest',
                     str(e.value)), str(e.value)
    assert '\n' not in str(e.value)
    with open(str(disk), 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest
    assert winbuild.read_esp_file(disk, '/EFI/BOOT/BOOTX64.EFI',
                                  start=guestbuild.START_SECTOR) is None


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_uefi_guest_on_ide_gets_a_machine_with_ide_and_boots(
        guests, inspected):
    """The UEFI guest as if its initramfs had neither virtio nor AHCI
    (a host-only initramfs made under Xen): the bus is IDE, which q35 does
    not have, so the machine is pc (i440fx), where OVMF boots it."""
    g = copy.deepcopy(inspected['uefi'])
    for k in g['linux']['kernels']:
        for mod in ('virtio_pci', 'virtio_scsi', 'virtio_blk', 'ahci'):
            if k['modules'].get(mod) in ('initramfs', 'builtin'):
                k['modules'][mod] = 'module' if k['modules'][mod] == \
                    'initramfs' else None
    props, reasons = properties.guest_properties(g)
    assert (props['hw_firmware_type'], props['hw_disk_bus'],
            props['hw_machine_type']) == ('uefi', 'ide', 'pc'), reasons
    bus = guestbuild.NOVA_BUS[props['hw_disk_bus']]
    line = guestbuild.boot(guests['uefi']['path'], bus, firmware='uefi',
                           machine=props['hw_machine_type'])
    assert line and 'ANY2KVM-BOOT-OK' in line, line
    assert guests['uefi']['token'] in line
    # What the properties said before, q35: libvirt refuses an IDE disk
    # there (Nova fails the spawn).  QEMU alone puts it on q35's only
    # disk controller, its AHCI (whose buses are called ide.N), which a
    # guest with ata_piix and no ahci does not see.
    line = guestbuild.boot(guests['uefi']['path'], bus, firmware='uefi',
                           machine='q35')
    assert line and line.startswith('ANY2KVM-BOOT-FAIL') and \
        'not found' in line, line


# -- Windows ------------------------------------------------------------------

def test_windows_inspection(inspected, guests):
    win = {k: inspected[k] for k in winbuild.KINDS}
    for kind, g in win.items():
        spec = winbuild.KINDS[kind]
        assert g is not None, kind
        assert g['type'] == 'windows' and g['distro'] == 'windows'
        assert g['product_name'] == spec['product']
        assert g['hostname'] == spec['hostname']
        assert g['root'].endswith('2')
        facts = g['windows']
        assert facts['build'] == spec['build']
        assert facts['edition'] == spec['edition']
        assert facts['current_control_set'] == 'ControlSet001'
        assert sorted(facts['control_sets']) == list(CSETS)
        for cset in CSETS:
            found = facts['control_sets'][cset]
            assert sorted(n for n, s in found['services'].items()
                          if s['group'] == 'citrix') == sorted(CITRIX)
            assert found['filters'] == [{
                'class': winbuild.DISK_CLASS, 'value': 'upperfilters',
                'names': ['partmgr', 'xenfilt']}]
            assert not [n for n, s in found['services'].items()
                        if s['group'] == 'virtio']
    assert (win['win2019']['major_version'],
            win['win2019']['minor_version']) == (10, 0)
    assert win['win2019']['arch'] == 'x86_64'
    assert win['win2019']['windows']['driver_store'] == []
    assert [d.split('.inf')[0] for d in sorted(
        win['win2019-store']['windows']['driver_store'])] == [
            'netkvm', 'vioscsi']
    assert (win['win7-x86']['major_version'],
            win['win7-x86']['minor_version']) == (6, 1)
    assert win['win7-x86']['arch'] == 'i386'
    # Hibernated (hiberfil.sys holds a session): win7-x86 only.
    assert {k: g['windows']['hibernated'] for k, g in win.items()} == {
        k: bool(spec.get('hibernated'))
        for k, spec in winbuild.KINDS.items()}
    # The boot configuration.
    bcd = win['win2019']['windows']['bcd']
    assert bcd['found'] and bcd['path'] == '/Boot/BCD'
    assert bcd['partition'].endswith('1')
    assert bcd['default'] == winbuild.LOADER
    assert bcd['description'] == 'Windows Server 2019 Standard'
    assert bcd['application_path'] == '\\Windows\\system32\\winload.exe'
    assert bcd['names_system_partition'] is True
    assert bcd['system_partition'] == {
        'table': 'msdos', 'signature': '%08x' % winbuild.SIGNATURE,
        'offset': winbuild.P2_START * 512}
    assert win['win2019-store']['windows']['bcd'][
        'names_system_partition'] is False
    assert win['win7-x86']['windows']['bcd']['found'] is False

    props = {k: properties.guest_properties(g) for k, g in win.items()}
    p, why = props['win2019']
    assert {k: p[k] for k in ('os_type', 'os_distro', 'os_version',
                              'architecture', 'hw_disk_bus',
                              'hw_vif_model', 'hw_firmware_type')} == {
        'os_type': 'windows', 'os_distro': 'windows', 'os_version': '10.0',
        'architecture': 'x86_64', 'hw_disk_bus': 'ide',
        'hw_vif_model': 'e1000', 'hw_firmware_type': 'bios'}
    assert 'hw_scsi_model' not in p
    # storahci with Start 3 (installed on Xen's emulated IDE): IDE.
    assert why['hw_disk_bus'] == ('no virtio storage service starting at '
                                  'boot; storahci (AHCI) does not start at '
                                  'boot (Start 3; --fix makes it); IDE is '
                                  'built into Windows')
    p, why = props['win2019-store']
    assert p['hw_disk_bus'] == 'ide'
    assert 'vioscsi.inf_amd64_' in why['hw_disk_bus']
    assert 'is in the driver store only' in why['hw_disk_bus']
    assert props['win7-x86'][0]['architecture'] == 'i686'
    assert props['win7-x86'][0]['os_version'] == '6.1'

    warns = {k: gi.warnings(g) for k, g in win.items()}
    for kind, spec in winbuild.KINDS.items():
        assert ('%s without a virtio storage driver: hw_disk_bus=ide; '
                'install virtio-win before migrating to get virtio-scsi'
                % spec['product']) in warns[kind]
        assert ('ControlSet001: Citrix XenServer PV driver services %s: '
                'they can stop Windows booting on KVM (--fix disables them)'
                % ', '.join(sorted(CITRIX))) in warns[kind]
    assert not [w for w in warns['win2019'] if 'BCD' in w or '32-bit' in w]
    assert ('vioscsi is in the driver store but not installed as a '
            'service: install it in the guest (pnputil /add-driver ... '
            '/install, or virtio-win\'s installer) before migrating'
            ) in warns['win2019-store']
    root = win['win2019-store']['root']
    (bcd_warning,) = [w for w in warns['win2019-store'] if 'BCD' in w]
    assert bcd_warning == (
        'BCD %s1:/Boot/BCD: its default entry %s (Windows Server 2019 '
        'Datacenter) does not name the Windows partition %s (disk '
        'signature %08x, offset %d): Windows will not find its boot '
        'device; rebuild it from the Windows recovery environment with '
        '"bcdboot C:\\Windows"' % (root[:-1], winbuild.LOADER, root,
                                   winbuild.SIGNATURE,
                                   winbuild.P2_START * 512))
    (bcd_warning,) = [w for w in warns['win7-x86'] if 'BCD' in w]
    assert bcd_warning.startswith('no BCD found (')
    assert 'the boot configuration could not be checked; rebuild it ' \
        'from the Windows recovery environment with "bcdboot C:\\Windows" ' \
        'if the guest does not boot' in bcd_warning
    hibernated = [w for w in warns['win7-x86'] if 'Fast Startup' in w]
    assert hibernated == [
        'Windows was hibernated or shut down with Fast Startup '
        '(hiberfil.sys holds its session): it would resume a session of '
        'other hardware, and --fix cannot write its volume; in the guest, '
        '"powercfg /h off", then shut it down, and copy it again']
    assert not [w for w in warns['win2019'] if 'Fast Startup' in w]
    assert ('32-bit guest (i386): nothing converts it to 64-bit; give it '
            'a flavor of at most 4 GiB of RAM (more is not usable without '
            'PAE) and, for Windows, the 32-bit (x86) virtio-win drivers'
            ) in warns['win7-x86']


def _hives(disk, tmp_path):
    """{name: bytes} of the SYSTEM and SOFTWARE hives and the BCD of a
    Windows test disk, read with ntfscat (not libguestfs)."""
    out = {}
    for name, start, path in (
            ('SYSTEM', winbuild.P2_START,
             '/Windows/System32/config/SYSTEM'),
            ('SOFTWARE', winbuild.P2_START,
             '/Windows/System32/config/SOFTWARE'),
            ('BCD', winbuild.P1_START, '/Boot/BCD')):
        out[name] = winbuild.read_file(disk, start, path, tmp_path)
    return out


def _parse_reg(text):
    keys = {}
    current = None
    for line in text.splitlines():
        if line.startswith('[') and line.endswith(']'):
            current = keys.setdefault(line[1:-1].rstrip('\\').lower(), {})
        elif '=' in line and current is not None:
            name, _sep, data = line.partition('=')
            current[name] = data
    return keys


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_convert_fix_on_the_windows_disk(guests, libguestfs, tmp_path):
    disk = guests['win2019']['path']
    source = tmp_path / 'win.qcow2'
    qemu_img('convert', '-O', 'qcow2', disk, source)
    before = ig.sha256_file(source)
    out = tmp_path / 'win.raw'
    res = run_any2kvm('convert', source, out, '--fix', '--format', 'json',
                      timeout=APPLIANCE_TIMEOUT)
    assert res.returncode == 0, describe(res)
    report = json.loads(res.stdout)
    assert ig.sha256_file(source) == before
    guest = report['guest']
    assert guest['product_name'] == 'Windows Server 2019 Standard'
    assert guest['windows']['build'] == '17763'
    assert (guest['major_version'], guest['minor_version']) == (10, 0)
    assert guest['windows']['driver_store'] == []
    assert guest['windows']['bcd']['names_system_partition'] is True
    (fix,) = report['fixed']
    assert fix['bus'] == 'sata' and fix['files'] == []
    expected = []
    for cset in CSETS:
        # Disabled in place (winhive's Start values), not deleted.
        expected += ['%s\\Services\\%s\\Start: %d -> 4 (disabled)' % (
            cset, s, start) for s, start in (
            ('xenbus', 0), ('xenfilt', 0), ('xenvbd', 0), ('xennet', 3),
            ('xenvif', 3), ('xeniface', 3))]
        expected.append('%s\\Control\\Class\\%s\\UpperFilters: '
                        'partmgr,xenfilt -> partmgr' % (
                            cset, winbuild.DISK_CLASS))
        expected.append('%s\\Services\\storahci\\Start: 3 -> 0' % cset)
    assert sorted(fix['registry']) == sorted(expected)
    # The report tells what the hive holds after the fix.
    for cset in CSETS:
        facts = guest['windows']['control_sets'][cset]
        assert facts['filters'] == []
        assert facts['services']['storahci']['start'] == 0
        assert not [n for n, s in facts['services'].items()
                    if s['group'] == 'virtio']
        assert probe.citrix_active(facts['services']) == []
        assert {s['start'] for s in facts['services'].values()
                if s['group'] == 'citrix'} == {4}
    assert report['properties']['hw_disk_bus'] == 'sata'
    assert report['reasons']['hw_disk_bus'] == (
        'no virtio storage service starting at boot; storahci (AHCI) starts '
        'at boot')
    assert report['warnings'] == [
        'Windows Server 2019 Standard without a virtio storage driver: '
        'hw_disk_bus=sata; install virtio-win before migrating to get '
        'virtio-scsi']
    # Only the intended keys of the SYSTEM hive changed; the SOFTWARE
    # hive and the BCD did not change at all.
    old = _hives(disk, tmp_path)
    new = _hives(out, tmp_path)
    assert new['SOFTWARE'] == old['SOFTWARE']
    assert new['BCD'] == old['BCD']
    for name, data in (('old', old), ('new', new)):
        (tmp_path / name).write_bytes(data['SYSTEM'])
    old_keys = _parse_reg(winhive.export(tmp_path / 'old'))
    new_keys = _parse_reg(winhive.export(tmp_path / 'new'))
    top = 'hkey_local_machine\\system\\'
    assert set(old_keys) == set(new_keys)
    changed = {(k, name) for k in new_keys for name in new_keys[k]
               if old_keys[k].get(name) != new_keys[k][name]}
    assert changed == {
        (top + '%s\\control\\class\\%s' % (c.lower(), winbuild.DISK_CLASS),
         '"UpperFilters"') for c in CSETS} | {
        (top + '%s\\services\\storahci' % c.lower(), '"Start"')
        for c in CSETS} | {
        (top + '%s\\services\\%s' % (c.lower(), s), '"Start"')
        for c in CSETS for s in CITRIX}


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_hibernated_windows_is_not_fixed(guests, libguestfs, tmp_path):
    """A Windows whose hiberfil.sys holds a session (hibernated, or shut
    down with Fast Startup): ntfs-3g would mount its volume read-only
    and the hive's commit fail.  The fix refuses it in one line that
    says what to do in the guest, changing nothing: the copy is as
    converted."""
    disk = guests['win7-x86']['path']
    source = tmp_path / 'win7.qcow2'
    qemu_img('convert', '-O', 'qcow2', disk, source)
    out = tmp_path / 'win7.raw'
    res = run_any2kvm('convert', source, out, '--fix',
                      timeout=APPLIANCE_TIMEOUT)
    assert res.returncode == 1, describe(res)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert 'Windows was hibernated or shut down with Fast Startup' in err
    assert '"powercfg /h off"' in err and 'nothing was changed' in err
    assert 'it had changed' not in err, err
    assert ig.sha256_file(out) == ig.sha256_file(disk)


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_windows_fix_failing_half_way_leaves_the_copy_as_converted(
        guests, libguestfs, tmp_path, monkeypatch):
    disk = guests['win2019']['path']
    source = tmp_path / 'win.qcow2'
    qemu_img('convert', '-O', 'qcow2', disk, source)
    out = tmp_path / 'win.raw'
    monkeypatch.setenv('ANY2KVM_FIX_FAIL_AFTER', '1')
    res = run_any2kvm('convert', source, out, '--fix',
                      timeout=APPLIANCE_TIMEOUT)
    assert res.returncode == 1, describe(res)
    err = res.stderr.strip()
    assert err.startswith('any2kvm: error: %s: guest fix: fix stopped after '
                          '1 file(s)' % out), err
    assert 'it had changed: /Windows/System32/config/SYSTEM' in err
    assert len(err.splitlines()) == 1, err
    # The SYSTEM hive had been written in the appliance; none of it
    # reached the converted copy.
    assert ig.sha256_file(out) == ig.sha256_file(disk)


FALLBACK_WARNING = (
    'no UEFI fallback bootloader (\\EFI\\Boot\\bootx64.efi) on the EFI '
    'system partition (%s): the boot entry was in the VM\'s NVRAM under '
    'Xen, which does not move, and a new NVRAM finds nothing to boot; ')


@pytest.mark.timeout(APPLIANCE_TIMEOUT * 2)
def test_a_uefi_windows_guest_gets_the_uefi_fallback_bootloader(
        libguestfs, tmp_path):
    """A GPT Windows disk whose EFI system partition has the BCD and
    bootmgfw.efi under \\EFI\\Microsoft\\Boot but no \\EFI\\Boot\\
    bootx64.efi: OVMF with a new NVRAM would find nothing to run.  The
    inspection warns, --fix copies the boot manager there (the same
    bytes); without a boot manager to copy, the warning says to run
    bcdboot and --fix leaves it."""
    missing = winbuild.missing_tools(uefi=True)
    if missing:
        missing_tool('test guests need: %s' % ', '.join(missing))
    disk = winbuild.build(tmp_path / 'win-uefi.raw', 'win2019-uefi')['path']
    result = gi.inspect_files([disk], libguestfs, fix=True)
    # The facts are the inspection's before the fix.
    (guest,) = [g for g in result['guests'] if g.get('type')]
    assert guest['firmware'] == 'uefi'
    esp = guest['root'][:-1] + '1'
    bcd = guest['windows']['bcd']
    assert (bcd['partition'], bcd['path']) == (esp, '/EFI/Microsoft/Boot/BCD')
    assert bcd['names_system_partition'] is True
    assert bcd['system_partition'] == {'table': 'gpt',
                                       'guid': winbuild.SYSTEM_GUID}
    facts = dict(guest['windows']['uefi_fallback'])
    needed, free = facts.pop('needed'), facts.pop('free')
    assert facts == {
        'present': False, 'source': '/EFI/Microsoft/Boot',
        'files': ['bootmgfw.efi'], 'partition': esp}
    # The boot manager's clusters and \EFI\Boot's, on a mostly free ESP.
    assert len(winbuild.BOOTMGFW) < needed <= len(winbuild.BOOTMGFW) + \
        2 * 65536 < free, (needed, free)
    before = [w for w in gi.warnings(copy.deepcopy(guest)) if 'UEFI' in w]
    assert before == [FALLBACK_WARNING % esp + (
        '--fix copies Windows\' boot manager \\EFI\\Microsoft\\Boot\\'
        'bootmgfw.efi there')]
    summary = gi.summary(result)
    (fix,) = summary['fixed']
    assert fix['files'] == [{'path': '/EFI/Boot/bootx64.efi', 'changes': [
        {'from': '/EFI/Microsoft/Boot/bootmgfw.efi',
         'to': '/EFI/Boot/bootx64.efi'}]}]
    assert fix['registry']              # the SYSTEM hive's, as on BIOS
    assert not [w for w in summary['warnings'] if 'UEFI' in w], summary
    assert not [w for w in summary['left'] if 'UEFI' in w], summary
    assert summary['guest']['windows']['uefi_fallback']['present'] is True
    # What the disk holds, read outside libguestfs.
    assert winbuild.read_esp_file(disk, '/EFI/Boot/bootx64.efi') == \
        winbuild.BOOTMGFW
    assert winbuild.read_esp_file(
        disk, '/EFI/Microsoft/Boot/bootmgfw.efi') == winbuild.BOOTMGFW
    # A second inspection finds it.
    (again,) = [g for g in gi.inspect_files([disk], libguestfs)['guests']
                if g.get('type')]
    assert again['windows']['uefi_fallback']['present'] is True

    # No boot manager on the ESP: nothing to copy, and the step to take.
    disk = winbuild.build(tmp_path / 'win-noboot.raw',
                          'win2019-uefi-nobootmgr')['path']
    result = gi.inspect_files([disk], libguestfs, fix=True)
    (guest,) = [g for g in result['guests'] if g.get('type')]
    esp = guest['root'][:-1] + '1'
    assert guest['windows']['uefi_fallback'] == {
        'present': False, 'source': None, 'files': [], 'partition': esp}
    summary = gi.summary(result)
    warned = FALLBACK_WARNING % esp + (
        'there is no \\EFI\\Microsoft\\Boot\\bootmgfw.efi to copy either: '
        'run "bcdboot C:\\Windows /f UEFI" in the guest before the move')
    assert [w for w in summary['warnings'] if 'UEFI' in w] == [warned]
    assert [w for w in summary['left'] if 'UEFI' in w] == [warned]
    (fix,) = summary['fixed']
    assert fix['files'] == []
    assert winbuild.read_esp_file(disk, '/EFI/Boot/bootx64.efi') is None


# -- the command lines, with a recorded probe output -----------------------

@pytest.fixture
def recorded_probe(tmp_path):
    """A config file whose guestfs_python prints the recorded output of
    the three guests (the virtio guest, on disk 0, is chosen)."""
    fake = tmp_path / 'fakepython'
    fake.write_text('#!/bin/sh\ncat %s\n' % RECORDED)
    fake.chmod(0o755)
    conf = tmp_path / 'a.conf'
    conf.write_text('[any2kvm]\nguestfs_python = %s\n' % fake)
    return conf


@pytest.fixture
def small_disk(tmp_path):
    raw = tmp_path / 'small.raw'
    with open(str(raw), 'wb') as f:
        f.truncate(4 << 20)
    disk = tmp_path / 'small.qcow2'
    qemu_img('convert', '-O', 'qcow2', raw, disk)
    return disk


def test_info_inspect_json_has_a_properties_object(recorded_probe,
                                                   small_disk):
    res = run_any2kvm('info', small_disk, '--inspect', '--format', 'json',
                      '--config-file', recorded_probe)
    assert res.returncode == 0, describe(res)
    info = json.loads(res.stdout)
    assert info['format'] == 'qcow2'
    assert info['guest']['hostname'] == 'guest-virtio'
    assert info['properties']['hw_disk_bus'] == 'scsi'
    assert info['properties']['hw_scsi_model'] == 'virtio-scsi'
    assert 'virtio_scsi is in the initramfs' in \
        info['reasons']['hw_disk_bus']
    res = run_any2kvm('info', small_disk, '--inspect', '--config-file',
                      recorded_probe)
    assert res.returncode == 0, describe(res)
    assert 'property:     hw_disk_bus=scsi (kernel 6.1.0' in res.stdout
    # Without --inspect, info does not look inside.
    res = run_any2kvm('info', small_disk, '--format', 'json',
                      '--config-file', recorded_probe)
    assert 'guest' not in json.loads(res.stdout)


def test_convert_inspects_by_default(recorded_probe, small_disk, tmp_path,
                                     monkeypatch):
    monkeypatch.setenv(gi.ENV, '1')
    res = run_any2kvm('convert', small_disk, tmp_path / 'a.raw',
                      '--config-file', recorded_probe)
    assert res.returncode == 0, describe(res)
    assert 'property:     hw_vif_model=virtio' in res.stdout
    res = run_any2kvm('convert', small_disk, tmp_path / 'b.raw',
                      '--no-inspect', '--config-file', recorded_probe)
    assert res.returncode == 0, describe(res)
    assert res.stdout == ''
    monkeypatch.setenv(gi.ENV, '0')
    res = run_any2kvm('convert', small_disk, tmp_path / 'c.raw',
                      '--config-file', recorded_probe)
    assert res.stdout == ''


def test_import_to_files_reports_the_guest(recorded_probe, small_disk,
                                           tmp_path):
    res = run_any2kvm('import', small_disk, '--name', 'vm', '--target',
                      'file', '--output-dir', tmp_path, '--inspect',
                      '--format', 'json', '--config-file', recorded_probe)
    assert res.returncode == 0, describe(res)
    summary = json.loads(res.stdout)
    assert summary['path'] == str(tmp_path / 'vm.raw')
    assert summary['properties']['os_distro'] == 'debian'
    assert summary['guest']['kernel'].endswith('-cloud-amd64')


def test_fix_refusals_before_the_cloud_is_asked(small_disk):
    """A cloud target takes --fix (the copy before the upload, or the
    volume with a snapshot); what cannot work is refused before any
    cloud or disk is touched."""
    env_free = ('--os-cloud', 'nowhere')
    res = run_any2kvm('import', small_disk, '--name', 'vm', '--fix',
                      '--no-inspect', *env_free)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        'any2kvm: error: --fix needs inspection: drop --no-inspect')
    res = run_any2kvm('import', small_disk, '--name', 'vm', '--target',
                      'cinder', '--keep-fix-snapshot', *env_free)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        'any2kvm: error: --keep-fix-snapshot goes with --fix')


def test_without_libguestfs_a_warning_or_with_inspect_an_error(
        small_disk, tmp_path, monkeypatch):
    conf = tmp_path / 'none.conf'
    conf.write_text('[any2kvm]\nguestfs_python = %s\n' % (
        tmp_path / 'no' / 'python3'))
    monkeypatch.setenv(gi.ENV, '1')
    res = run_any2kvm('convert', small_disk, tmp_path / 'a.raw',
                      '--config-file', conf)
    assert res.returncode == 0, describe(res)
    assert 'guest inspection: %s not found ([any2kvm] guestfs_python); ' \
        'install libguestfs-tools and python3-guestfs' % (
            tmp_path / 'no' / 'python3') in res.stderr
    assert 'WARNING' in res.stderr
    res = run_any2kvm('convert', small_disk, tmp_path / 'b.raw',
                      '--inspect', '--config-file', conf)
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert 'Traceback' not in res.stderr
    # The conversion itself is kept.
    assert (tmp_path / 'b.raw').exists()


# -- committing a multi-disk fix: all or none (no appliance) ---------------

def _two_raw_disks(tmp_path):
    disks = []
    for index in range(2):
        path = tmp_path / ('d%d.raw' % index)
        path.write_bytes(bytes([0x30 + index]) * (2 << 20))
        disks.append(path)
    return disks


def _fake_fix(monkeypatch):
    """The probe stand-in: it "fixes" each overlay by writing into it
    (64 KiB of 0xab at 1 MiB, a zeroed cluster at 0), as the appliance
    would, and reports a fixed file."""
    def run_probe(settings, overlays, fmt='raw', fix=False, name=None,
                  slots=None):
        for overlay in overlays:
            subprocess.run(['qemu-io', '-f', 'qcow2', '-c',
                            'write -P 0xab 1M 64k', '-c',
                            'write -z 0 64k', overlay], check=True,
                           capture_output=True, timeout=120)
        return {'guests': [], 'fixed': [{'root': '/dev/sda1', 'files': [
            {'path': '/etc/fstab', 'changes': []}]}]}
    monkeypatch.setattr(gi, 'run_probe', run_probe)


def _fail_at_second_commit(monkeypatch, after_writing, error):
    real = gi._qemu_img
    commits = []

    def qemu_img_(*args):
        if args[0] == 'commit':
            commits.append(args[-1])
            if len(commits) == 2:
                if after_writing:
                    real(*args)
                raise error
        return real(*args)
    monkeypatch.setattr(gi, '_qemu_img', qemu_img_)
    return commits


def test_a_multi_disk_fix_commits_both_disks(tmp_path, monkeypatch):
    if shutil.which('qemu-io') is None:
        missing_tool('qemu-io (qemu-utils)')
    disks = _two_raw_disks(tmp_path)
    _fake_fix(monkeypatch)
    gi.inspect_files(disks, fix=True, scratch_dir=str(tmp_path))
    for index, disk in enumerate(disks):
        data = disk.read_bytes()
        assert data[:64 << 10] == bytes(64 << 10)
        assert data[1 << 20:(1 << 20) + (64 << 10)] == b'\xab' * (64 << 10)
        assert data[(1 << 20) + (64 << 10):] == bytes([0x30 + index]) * (
            (1 << 20) - (64 << 10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['d0.raw', 'd1.raw']


@pytest.mark.parametrize('after_writing', [False, True])
def test_a_fix_failing_at_the_second_commit_leaves_both_disks(
        tmp_path, monkeypatch, after_writing):
    """The second commit fails (before, or after it had written into the
    second disk): the first disk, already committed, is put back too."""
    if shutil.which('qemu-io') is None:
        missing_tool('qemu-io (qemu-utils)')
    disks = _two_raw_disks(tmp_path)
    before = [ig.sha256_file(d) for d in disks]
    _fake_fix(monkeypatch)
    commits = _fail_at_second_commit(
        monkeypatch, after_writing, gi.exception.GuestFixError(
            path='disk1.qcow2', reason='qemu-img commit: No space left'))
    with pytest.raises(gi.exception.GuestFixError) as e:
        gi.inspect_files(disks, fix=True, scratch_dir=str(tmp_path))
    assert len(commits) == 2
    assert str(e.value) == (
        '%s: guest fix: disk1.qcow2: qemu-img commit: No space left; the 2 '
        'disk(s) it had started were put back as they were, none is '
        'fixed' % disks[0])
    assert [ig.sha256_file(d) for d in disks] == before
    # The scratch directory (overlays, undo journal) is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ['d0.raw', 'd1.raw']


def test_an_interrupted_commit_puts_the_disks_back(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM turned into SystemExit) during the second
    commit: the disks are put back and the interrupt goes on."""
    if shutil.which('qemu-io') is None:
        missing_tool('qemu-io (qemu-utils)')
    disks = _two_raw_disks(tmp_path)
    before = [ig.sha256_file(d) for d in disks]
    _fake_fix(monkeypatch)
    _fail_at_second_commit(monkeypatch, True, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        gi.inspect_files(disks, fix=True, scratch_dir=str(tmp_path))
    assert [ig.sha256_file(d) for d in disks] == before


def test_the_undo_journal_restores_by_hand(tmp_path, monkeypatch):
    """When putting the disks back fails too (or the process is killed,
    which leaves the same), the journal stays in the scratch directory
    and restore_journal puts the disks back from it."""
    if shutil.which('qemu-io') is None:
        missing_tool('qemu-io (qemu-utils)')
    disks = _two_raw_disks(tmp_path)
    before = [ig.sha256_file(d) for d in disks]
    _fake_fix(monkeypatch)
    _fail_at_second_commit(monkeypatch, True, OSError('killed'))
    restore = gi.restore_journal

    def broken(tmp):
        raise OSError('stand-in for a kill')
    monkeypatch.setattr(gi, 'restore_journal', broken)
    with pytest.raises(gi.UndoFailed) as e:
        gi.inspect_files(disks, fix=True, scratch_dir=str(tmp_path))
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(
        'any2kvm-fix-')]
    assert len(kept) == 1
    assert 'the undo journal is kept in %s' % kept[0] in str(e.value)
    assert [ig.sha256_file(d) for d in disks] != before
    restore(str(kept[0]))
    assert [ig.sha256_file(d) for d in disks] == before


def test_openstack_any2kvm_inspect_with_inspect(recorded_probe, small_disk):
    """``openstack any2kvm inspect --inspect`` in process, on a local
    file, the probe a stand-in printing the recorded guests."""
    from tests.lib import osc_inprocess
    shown = osc_inprocess.inspect(small_disk, '--inspect', '--config-file',
                                  recorded_probe)
    assert shown['format'] == 'qcow2'
    assert shown['guest']['hostname'] == 'guest-virtio'
    assert shown['properties']['hw_disk_bus'] == 'scsi'
    assert shown['properties']['hw_scsi_model'] == 'virtio-scsi'
    assert 'virtio_scsi is in the initramfs' in \
        shown['reasons']['hw_disk_bus']
    # Without --inspect: the disks only.
    shown = osc_inprocess.inspect(small_disk, '--config-file',
                                  recorded_probe)
    assert shown.get('guest') is None
    assert shown.get('properties') is None
