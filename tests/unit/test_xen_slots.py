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

"""A XenServer guest names the disk of VBD slot N (its ``userdevice``)
xvd<letter N>.  The template's CD drive takes slot 3, so a VM's fourth
disk is xvde: the fix must map it to the fourth disk given, never to a
fifth, and leave a name on no disk alone."""

from any2kvm_os.containers.xva import metadata
from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe
from any2kvm_os import vm as vm_mod
from tests.lib.fakeguestfs import FilesG
from tests.lib import xvabuild


class UuidsG(object):
    """The one guestfs call fix_text makes: the appliance sees the disks
    given as sda, sdb, sdc, sdd (in order)."""

    UUIDS = {'/dev/sda1': 'root-0', '/dev/sdb1': 'data-1',
             '/dev/sdc1': 'data-2', '/dev/sdd1': 'backup-3'}

    def vfs_uuid(self, dev):
        return self.UUIDS.get(dev, '')


FSTAB = ('/dev/xvda1 / ext4 defaults 0 1\n'
         '/dev/xvdb1 /srv ext4 defaults 0 2\n'
         '/dev/xvdc1 /var ext4 defaults 0 2\n'
         '/dev/xvde1 /backup ext4 defaults 0 2\n'
         '/dev/xvdd /media/cdrom0 udf,iso9660 user,noauto 0 0\n')


def test_fourth_disk_in_slot_4_is_the_fourth_disk():
    slots = probe.parse_slots('0,1,2,4')
    unknown = []
    new, changes = probe.fix_text(UuidsG(), FSTAB, 'scsi', False, slots,
                                  unknown)
    assert new == ('UUID=root-0 / ext4 defaults 0 1\n'
                   'UUID=data-1 /srv ext4 defaults 0 2\n'
                   'UUID=data-2 /var ext4 defaults 0 2\n'
                   'UUID=backup-3 /backup ext4 defaults 0 2\n'
                   '/dev/xvdd /media/cdrom0 udf,iso9660 user,noauto 0 0\n')
    assert ('/dev/xvde1', 'UUID=backup-3') in changes
    # The CD drive's slot holds none of the disks: left, and said.
    assert unknown == ['/dev/xvdd']


def test_without_slots_the_names_are_taken_in_order():
    """A disk file with no VM facts: xvdX is the X-th disk given (what a
    VM without gaps has); a name past the disks given stays a device
    name of the bus."""
    new, _changes = probe.fix_text(UuidsG(), '/dev/xvdb1 /srv ext4\n'
                                   '/dev/xvdf1 /x ext4\n', 'virtio', False)
    assert new == 'UUID=data-1 /srv ext4\n/dev/vdf1 /x ext4\n'


def test_names_without_a_filesystem_uuid_get_the_bus_name_of_their_disk():
    slots = probe.parse_slots('0,4')
    new, changes = probe.fix_text(UuidsG(), '/dev/xvde2 none swap sw\n'
                                  '/dev/hde /mnt auto noauto\n', 'virtio',
                                  False, slots)
    # xvde/hde are the second disk given: vdb on KVM.
    assert new == '/dev/vdb2 none swap sw\n/dev/vdb /mnt auto noauto\n'
    assert probe.device_for('/dev/xvde2', slots) == '/dev/sdb2'
    assert probe.device_for('/dev/xvdb2', slots) is None
    # Names that are no Xen names are the disks in order.
    assert probe.device_for('/dev/sdb2', slots) == '/dev/sdb2'
    assert probe.position('/dev/xvdaa1', probe.parse_slots('0,26')) == 1


def test_letters_and_indexes():
    for i in (0, 1, 25, 26, 27, 51, 52, 701, 702):
        assert probe.letters_index(probe.index_letters(i)) == i
    assert probe.index_letters(26) == 'aa'


def test_userdevices_give_the_slots():
    assert vm_mod.xen_slots(['0', '1', '2', '4']) == [0, 1, 2, 4]
    assert vm_mod.xen_slots(['xvda', 'xvde', 'hdb']) == [0, 4, 1]
    assert vm_mod.xen_slots(['0', 'autodetect']) is None
    assert vm_mod.xen_slots(['0', '0']) is None
    assert vm_mod.xen_slots([]) == []
    # Untrusted text (xe, an XVA's ova.xml): no slot, not a crash.
    assert vm_mod.xen_slots(['0', '\u00b2']) is None
    assert vm_mod.xen_slots(['9' * 5000]) is None


def test_slots_of_a_subset_and_the_probe_argument():
    facts = {'xen_slots': [0, 2, 10]}
    assert gi.slots_of(facts, [0, 1, 2]) == [0, 2, 10]
    assert gi.slots_of(facts, [2]) == [10]
    assert gi.slots_of(facts, [3]) is None
    assert gi.slots_of({}, [0]) is None
    assert gi.slots_of(None, [0]) is None
    cmd = gi.command(gi.Settings(), ['a', 'b'], slots=[0, 4])
    assert cmd[cmd.index('--xen-slots') + 1] == '0,4'
    assert cmd[-2:] == ['a', 'b']
    assert '--xen-slots' not in gi.command(gi.Settings(), ['a'])


def test_inspection_warns_of_a_name_on_no_disk():
    guest = {'type': 'linux', 'linux': {'disk_names': [
        {'path': '/etc/fstab', 'names': ['/dev/xvdd', '/dev/xvde1'],
         'unknown': ['/dev/xvdd'], 'kinds': ['xvd'],
         'xen_consoles': []}], 'kernels': []}}
    out = gi.warnings(guest)
    assert any('/etc/fstab names /dev/xvdd, which is on none of the VM\'s '
               'disks' in w for w in out), out
    assert any('/etc/fstab names /dev/xvde1, which KVM will not have' in w
               for w in out), out


def test_xva_facts_carry_the_slots():
    disks = [('Ref:3', 1 << 20, 0), ('Ref:7', 1 << 20, 4)]
    xml = xvabuild.ova_xml(disks, cds=[3])
    assert metadata.parse_metadata('a.xva', xml).vm['xen_slots'] == [0, 4]


def test_grubs_device_map_names_the_boot_disk_by_its_kvm_name():
    """``(hd0) /dev/xvda``: a whole disk, so no UUID: the bus's name of
    the same disk (grub-install reads it at the next GRUB upgrade)."""
    assert '/boot/grub/device.map' in probe.NAME_FILES
    new, changes = probe.fix_text(UuidsG(), '(hd0)\t/dev/xvda\n', 'virtio',
                                  False, probe.parse_slots('0,4'))
    assert new == '(hd0)\t/dev/vda\n'
    assert changes == [('/dev/xvda', '/dev/vda')]


def test_without_slots_a_name_past_the_disks_given_is_left_and_reported():
    """A VM given as two disk files (no --xen-slots): its disks are the
    first two slots; /dev/xvdc1 is on neither, whatever gap there was
    under Xen.  It stays, and is reported, not made /dev/sdc1."""
    slots = probe.in_order(2)
    unknown = []
    new, changes = probe.fix_text(UuidsG(), '/dev/xvda1 / ext4\n'
                                  '/dev/xvdc1 /data ext4\n'
                                  '/dev/sdc1 /x ext4\n', 'scsi', False,
                                  slots, unknown)
    assert new == 'UUID=root-0 / ext4\n/dev/xvdc1 /data ext4\n' \
        '/dev/sdc1 /x ext4\n'
    assert changes == [('/dev/xvda1', 'UUID=root-0')]
    # (/dev/sdc1, the third disk on KVM, is on none of them either.)
    assert unknown == ['/dev/xvdc1', '/dev/sdc1']
    assert probe.position('/dev/sdc1', slots) is None
    assert probe.position('/dev/sdb1', slots) == 1


class ClonedG(UuidsG):
    """The second disk a clone of the first: one UUID on both."""

    UUIDS = {'/dev/sda1': 'Same-0', '/dev/sdb1': 'same-0',
             '/dev/sdb': '', '/dev/sdc': 'whole-2'}

    def list_filesystems(self):
        return {'/dev/sda1': 'ext4', '/dev/sdb1': 'ext4',
                '/dev/sdc': 'ext4'}


def test_a_uuid_two_filesystems_share_is_never_written():
    """UUID= of a root whose clone is on another disk would mount either
    on KVM: both are named by their bus instead, and the inspection says
    why."""
    g = ClonedG()
    assert probe.shared_uuids(g) == {'same-0': ['/dev/sda1', '/dev/sdb1']}
    new, changes = probe.fix_text(g, '/dev/xvda1 / ext4\n'
                                  '/dev/xvdb1 /backup ext4\n', 'scsi', False,
                                  probe.in_order(3))
    assert new == '/dev/sda1 / ext4\n/dev/sdb1 /backup ext4\n'
    new, _changes = probe.fix_text(g, '  linux /vmlinuz root=/dev/xvda1 ro\n',
                                   'virtio', True, probe.in_order(3))
    assert new == '  linux /vmlinuz root=/dev/vda1 ro\n'
    warned = [w for w in gi.warnings({'type': 'linux', 'linux': {
        'shared_uuids': probe.shared_uuids(g)}}) if 'share the UUID' in w]
    assert warned == [
        'filesystems /dev/sda1 and /dev/sdb1 share the UUID same-0 (one disk '
        'cloned from another?): UUID=same-0 may mount either of them on KVM, '
        'so --fix names them by their bus instead; give the copy a new UUID '
        '(tune2fs -U random, xfs_admin -U generate) and name it so in the '
        'guest']


class BtrfsG(UuidsG):
    """SLES 15's root: one btrfs filesystem whose subvolumes libguestfs
    lists as mountables of their own (``btrfsvol:``), each with the
    filesystem's UUID."""

    UUIDS = {'/dev/sda2': 'fs-0', 'btrfsvol:/dev/sda2/@': 'fs-0',
             'btrfsvol:/dev/sda2/@/.snapshots': 'fs-0',
             'btrfsvol:/dev/sda2/@/var': 'fs-0', '/dev/sda3': ''}

    def list_filesystems(self):
        return {'/dev/sda2': 'btrfs', 'btrfsvol:/dev/sda2/@': 'btrfs',
                'btrfsvol:/dev/sda2/@/.snapshots': 'btrfs',
                'btrfsvol:/dev/sda2/@/var': 'btrfs', '/dev/sda3': 'swap'}


def test_btrfs_subvolumes_are_one_filesystem_not_clones():
    """A btrfs filesystem's subvolumes share its UUID: not clones, and
    UUID= names the filesystem (fstab's subvol= picks the subvolume)."""
    g = BtrfsG()
    assert probe.shared_uuids(g) == {}
    new, changes = probe.fix_text(g, '/dev/xvda2 / btrfs subvol=/@ 0 0\n',
                                  'scsi', False, probe.in_order(1))
    assert new == 'UUID=fs-0 / btrfs subvol=/@ 0 0\n'
    # Two disks holding one filesystem's copy: clones still.

    class Two(BtrfsG):
        UUIDS = dict(BtrfsG.UUIDS, **{'/dev/sdb2': 'fs-0'})

        def list_filesystems(self):
            return dict(BtrfsG.list_filesystems(self), **{
                '/dev/sdb2': 'btrfs'})
    assert probe.shared_uuids(Two()) == {'fs-0': ['/dev/sda2', '/dev/sdb2']}


def test_a_filesystem_on_a_whole_disk_gets_its_uuid_not_in_device_map():
    g = ClonedG()
    new, _changes = probe.fix_text(g, '/dev/xvdc /data ext4\n'
                                   '/dev/xvdb /raw auto noauto\n', 'scsi',
                                   False, probe.in_order(3))
    assert new == 'UUID=whole-2 /data ext4\n/dev/sdb /raw auto noauto\n'
    # GRUB's device map names disks, never filesystems.
    new, _changes = probe.fix_text(g, '(hd2)\t/dev/xvdc\n', 'scsi', False,
                                   probe.in_order(3),
                                   path='/boot/grub/device.map')
    assert new == '(hd2)\t/dev/sdc\n'


UNITS = {
    '/etc/fstab': '/dev/xvda1 / ext4 defaults 0 1\n',
    '/etc/systemd/system/srv-data.mount': (
        '[Unit]\nDescription=data\n\n[Mount]\nWhat=/dev/xvdb1\n'
        'Where=/srv/data\nType=ext4\n\n[Install]\n'
        'WantedBy=local-fs.target\n'),
    '/etc/systemd/system/dev-xvda5.swap': (
        '[Swap]\nWhat=/dev/xvda5\n'),
    '/etc/systemd/system/app.service': '[Service]\nExecStart=/dev/xvdb1\n',
    '/etc/initramfs-tools/conf.d/resume': 'RESUME=/dev/xvda5\n',
}


class UnitsG(FilesG):
    def vfs_uuid(self, dev):
        return UuidsG.UUIDS.get(dev, '')


def test_systemd_units_and_resume_name_disks_too():
    """A mount unit whose device never appears fails local-fs.target (the
    emergency shell): its What= is read and fixed, as a path (udev's
    link of the UUID); a unit named after its Xen device is reported
    only; initramfs-tools' resume file is fixed as fstab is."""
    g = UnitsG(UNITS)
    assert probe.unit_files(g) == ['/etc/systemd/system/dev-xvda5.swap',
                                   '/etc/systemd/system/srv-data.mount']
    names = {e['path']: e for e in probe.disk_names(g, probe.in_order(2))}
    assert names['/etc/systemd/system/srv-data.mount']['names'] == [
        '/dev/xvdb1']
    assert names['/etc/systemd/system/dev-xvda5.swap']['unit_named'] == \
        '/dev/xvda5'
    assert names['/etc/initramfs-tools/conf.d/resume']['names'] == [
        '/dev/xvda5']
    assert '/etc/systemd/system/app.service' not in names
    new, changes = probe.fix_text(
        g, UNITS['/etc/systemd/system/srv-data.mount'], 'scsi', False,
        probe.in_order(2), path='/etc/systemd/system/srv-data.mount')
    assert 'What=/dev/disk/by-uuid/data-1\nWhere=/srv/data\n' in new
    assert changes == [('/dev/xvdb1', '/dev/disk/by-uuid/data-1')]
    guest = {'type': 'linux', 'linux': {'disk_names': list(names.values())}}
    said = [w for w in gi.warnings(guest) if 'dev-xvda5' in w]
    assert said == [
        '/etc/systemd/system/dev-xvda5.swap is named after /dev/xvda5, which '
        'KVM will not have: --fix leaves it (a unit\'s name must match its '
        'device); replace it with an fstab line by UUID, or disable it, '
        'before the move']
    assert said[0] in gi.left_after_fix(guest)


def test_suses_grub_installdevice_gets_device_paths():
    """/etc/default/grub_installdevice: where perl-Bootloader installs
    GRUB at each update, a disk or a partition by its path: the bus's
    name of a disk, a partition by udev's UUID link, never UUID=."""
    g = UuidsG()
    text = '/dev/xvda\n/dev/xvda1\nactivate\ngeneric_mbr\n'
    new, changes = probe.fix_text(
        g, text, 'scsi', False, probe.in_order(2),
        path='/etc/default/grub_installdevice')
    assert new == ('/dev/sda\n/dev/disk/by-uuid/root-0\nactivate\n'
                   'generic_mbr\n'), new
    assert '/etc/default/grub_installdevice' in probe.NAME_FILES
