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

"""What Xen's drivers and consoles leave in an older Linux guest's
settings (CentOS/RHEL 5 and 6, SLES 11): modprobe aliases of xenblk and
xennet, SUSE's INITRD_MODULES, gettys on the Xen console, securetty; and
the XenServer guest tools, reported with the command that removes
them."""

import copy
import json
import os
import subprocess
import time
from pathlib import Path

from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe
from any2kvm_os import properties
from tests.lib.fakeguestfs import FilesG

DATA = Path(__file__).parent / 'data'


def recorded_guest(hostname):
    """A guest of the probe output recorded on the real test guests."""
    for g in json.loads((DATA / 'probe-linux-guests.json').read_text())[
            'guests']:
        if g['hostname'] == hostname:
            return g
    raise AssertionError(hostname)


# -- real-looking files -------------------------------------------------------

#: CentOS 5 PV guest, as its installer wrote it.
RHEL5_MODPROBE = (
    'alias eth0 xennet\n'
    'alias scsi_hostadapter xenblk\n'
    '# alias scsi_hostadapter1 xenblk (an old disk)\n'
    'alias scsi_hostadapter1 xenblk\n'
    'alias snd-card-0 snd-intel8x0\n'
    'options snd-card-0 index=0\n'
    'alias eth1 xen-vnif   # second NIC\n')

#: SLES 11 SP4, a PV guest.
SLES11_KERNEL = (
    '## Path:\tSystem/Kernel\n'
    '## Description:\n'
    '## Type:\tstring\n'
    '## Command:\t/sbin/mkinitrd\n'
    '#\n'
    '# This variable contains the list of modules to be added to the '
    'initial\n'
    '# ramdisk by calling the script "mkinitrd"\n'
    '# (like drivers for scsi-controllers, for lvm or reiserfs)\n'
    '#\n'
    'INITRD_MODULES="processor thermal xenblk ata_piix xennet fan jbd '
    'ext3 edd"\n'
    '\n'
    '## Type:\tstring\n'
    '## Command:\t/sbin/mkinitrd\n'
    '#\n'
    '# This variable contains the list of modules to be added to the '
    'initial\n'
    '# ramdisk that is created for unprivilged Xen domains (domU); you may '
    'need\n'
    '# drivers for virtual block and network devices in addition to '
    'filesystem\n'
    '# and device-mapper modules.\n'
    '#\n'
    'DOMU_INITRD_MODULES="xennet xenblk"\n'
    '\n'
    '## Type:\tstring\n'
    '#\n'
    'MODULES_LOADED_ON_BOOT=""\n')

#: CentOS 5's inittab on XenServer (the tools' installer commented out
#: the virtual terminals and added the Xen console's getty).
RHEL5_INITTAB = (
    '#\n'
    '# inittab       This file describes how the INIT process should set '
    'up\n'
    '#               the system in a certain run-level.\n'
    'id:3:initdefault:\n'
    '\n'
    '# System initialization.\n'
    'si::sysinit:/etc/rc.d/rc.sysinit\n'
    'l3:3:wait:/etc/rc.d/rc 3\n'
    '\n'
    '# Run gettys in standard runlevels\n'
    'co:2345:respawn:/sbin/agetty xvc0 9600 vt100-nav\n'
    '#co:2345:respawn:/sbin/agetty hvc0 9600 vt100-nav\n'
    '1:2345:respawn:/sbin/mingetty tty1\n'
    '2:2345:respawn:/sbin/mingetty tty2\n')

RHEL5_SECURETTY = 'console\nvc/1\nvc/2\ntty1\ntty2\nxvc0\ntty3\n'

#: CentOS 6: a hand-made upstart job for the Xen console.
RHEL6_UPSTART = (
    '# hvc0 - getty on the Xen console\n'
    'start on stopped rc RUNLEVEL=[2345]\n'
    'stop on starting runlevel [016]\n'
    'respawn\n'
    'exec /sbin/agetty /dev/hvc0 38400 vt100-nav\n')


# -- modprobe -----------------------------------------------------------------

def test_modprobe_aliases_name_the_kvm_drivers():
    new, changes, left = probe.fix_modprobe_text(
        RHEL5_MODPROBE, 'virtio_scsi', 'virtio_net')
    assert new == (
        'alias eth0 virtio_net\n'
        'alias scsi_hostadapter virtio_scsi\n'
        '# alias scsi_hostadapter1 xenblk (an old disk)\n'
        'alias snd-card-0 snd-intel8x0\n'
        'options snd-card-0 index=0\n'
        'alias eth1 virtio_net   # second NIC\n')
    assert changes == [
        ('alias eth0 xennet', 'alias eth0 virtio_net'),
        ('alias scsi_hostadapter xenblk',
         'alias scsi_hostadapter virtio_scsi'),
        ('alias scsi_hostadapter1 xenblk', ''),
        ('alias eth1 xen-vnif   # second NIC',
         'alias eth1 virtio_net   # second NIC')]
    assert left == []
    # Fixing twice changes nothing the second time.
    assert probe.fix_modprobe_text(new, 'virtio_scsi', 'virtio_net') == (
        new, [], [])


def test_modprobe_aliases_on_ide_sata_and_without_a_module():
    text = ('alias scsi_hostadapter xen-vbd\n'
            'alias scsi_hostadapter1 ata_piix\n'
            'alias eth0 xen_netfront\n')
    # ata_piix is aliased already: the Xen one goes, not a second one.
    have = {'ata_piix'}
    new, changes, _left = probe.fix_modprobe_text(text, 'ata_piix', 'e1000',
                                                  have)
    assert new == 'alias scsi_hostadapter1 ata_piix\nalias eth0 e1000\n'
    new, changes, _left = probe.fix_modprobe_text(text, 'ahci', 'e1000')
    assert new.startswith('alias scsi_hostadapter ahci\n')
    # Built in (or absent): nothing to load, the aliases go.
    new, changes, _left = probe.fix_modprobe_text(text, None, None)
    assert new == 'alias scsi_hostadapter1 ata_piix\n'
    assert changes == [('alias scsi_hostadapter xen-vbd', ''),
                       ('alias eth0 xen_netfront', '')]


def test_modprobe_aliases_it_cannot_replace_are_left_and_reported():
    text = ('alias block-major-202 xenblk\n'
            'alias eth0 xenblk\n'          # not a network driver
            'install xennet /bin/true\n'
            'alias scsi_hostadapter xen-platform-pci\n')
    new, changes, left = probe.fix_modprobe_text(text, 'virtio_blk',
                                                 'virtio_net')
    assert (new, changes) == (text, [])
    assert left == ['alias block-major-202 xenblk', 'alias eth0 xenblk',
                    'alias scsi_hostadapter xen-platform-pci']


def test_xen_module_names():
    for name in ('xenblk', 'xen-vbd', 'xen_vbd', 'xen-blkfront',
                 'xen_blkfront'):
        assert probe.xen_module(name) == 'block', name
    for name in ('xennet', 'xen-vnif', 'xen_vnif', 'xen-netfront',
                 'xen_netfront'):
        assert probe.xen_module(name) == 'net', name
    assert probe.xen_module('xen-platform-pci') == 'other'
    for name in ('virtio_blk', 'xenfs', 'xen-blkback', 'e1000', '', None):
        assert probe.xen_module(name) is None, name


# -- SUSE's /etc/sysconfig/kernel --------------------------------------------

def test_sles_initrd_modules_lose_the_xen_drivers():
    new, changes, left = probe.fix_sysconfig_kernel_text(SLES11_KERNEL)
    assert new == SLES11_KERNEL.replace(
        'INITRD_MODULES="processor thermal xenblk ata_piix xennet fan jbd '
        'ext3 edd"',
        'INITRD_MODULES="processor thermal ata_piix fan jbd ext3 edd"'
    ).replace('DOMU_INITRD_MODULES="xennet xenblk"',
              'DOMU_INITRD_MODULES=""')
    assert changes == [
        ('INITRD_MODULES="processor thermal xenblk ata_piix xennet fan jbd '
         'ext3 edd"',
         'INITRD_MODULES="processor thermal ata_piix fan jbd ext3 edd"'),
        ('DOMU_INITRD_MODULES="xennet xenblk"', 'DOMU_INITRD_MODULES=""')]
    assert left == []
    assert probe.fix_sysconfig_kernel_text(new) == (new, [], [])


def test_initrd_modules_quoting_and_spacing_are_kept():
    def fix(line):
        return probe.fix_sysconfig_kernel_text(line)[0]
    assert fix("INITRD_MODULES='xen-vbd  dm-mod'\n") == \
        "INITRD_MODULES='dm-mod'\n"
    assert fix('INITRD_MODULES=xenblk\n') == 'INITRD_MODULES=\n'
    assert fix('INITRD_MODULES="  ahci\txen-blkfront  dm-mod"  # x\r\n') \
        == 'INITRD_MODULES="  ahci  dm-mod"  # x\r\n'
    # A comment, another variable, an unclosed quote: as they were.
    for line in ('#INITRD_MODULES="xenblk"\n',
                 'MODULES_LOADED_ON_BOOT="xenblk"\n',
                 'INITRD_MODULES="xenblk\n'):
        assert fix(line) == line


# -- consoles -----------------------------------------------------------------

def test_inittab_getty_on_the_xen_console_runs_on_ttyS0():
    new, changes, _left = probe.fix_inittab_text(RHEL5_INITTAB)
    assert new == RHEL5_INITTAB.replace(
        'co:2345:respawn:/sbin/agetty xvc0 9600 vt100-nav\n',
        'co:2345:respawn:/sbin/agetty ttyS0 9600 vt100-nav\n')
    assert changes == [('co:2345:respawn:/sbin/agetty xvc0 9600 vt100-nav',
                        'co:2345:respawn:/sbin/agetty ttyS0 9600 '
                        'vt100-nav')]
    assert probe.fix_inittab_text(new) == (new, [], [])


def test_inittab_with_a_getty_on_ttyS0_already_comments_the_xen_one():
    text = ('S0:2345:respawn:/sbin/agetty -L ttyS0 115200 vt100\n'
            'h0:2345:respawn:/sbin/agetty /dev/hvc0 38400\n'
            'x0:2345:respawn:/sbin/agetty xvc0 9600\n')
    new, changes, _left = probe.fix_inittab_text(text)
    assert new == ('S0:2345:respawn:/sbin/agetty -L ttyS0 115200 vt100\n'
                   '#h0:2345:respawn:/sbin/agetty /dev/hvc0 38400\n'
                   '#x0:2345:respawn:/sbin/agetty xvc0 9600\n')
    assert len(changes) == 2
    # Two Xen consoles, no ttyS0: the first runs there, the second is
    # commented out (two gettys would fight over one tty).
    new, _changes, _left = probe.fix_inittab_text(
        'h0:2345:respawn:/sbin/agetty /dev/hvc0 38400\n'
        'x0:2345:respawn:/sbin/agetty xvc0 9600')
    assert new == ('h0:2345:respawn:/sbin/agetty /dev/ttyS0 38400\n'
                   '#x0:2345:respawn:/sbin/agetty xvc0 9600')
    # hvc1, a process that is no getty, the id field: as they were.
    for line in ('h1:2345:respawn:/sbin/agetty hvc1 9600\n',
                 'x:5:respawn:/usr/bin/xvc0-monitor\n',
                 'xvc0:2345:respawn:/sbin/mingetty tty1\n'):
        assert probe.fix_inittab_text(line)[0] == line


def test_securetty_gets_ttyS0_after_the_xen_console():
    new, changes, _left = probe.fix_securetty_text(RHEL5_SECURETTY)
    assert new == 'console\nvc/1\nvc/2\ntty1\ntty2\nxvc0\nttyS0\ntty3\n'
    assert changes == [('', 'ttyS0')]
    assert probe.fix_securetty_text(new) == (new, [], [])
    # No newline at the end; hvc0; CRLF.
    assert probe.fix_securetty_text('tty1\nhvc0')[0] == 'tty1\nhvc0\nttyS0\n'
    assert probe.fix_securetty_text('hvc0\r\n')[0] == 'hvc0\r\nttyS0\r\n'
    # Without a Xen console, or with ttyS0 already: as it was.
    for text in ('console\ntty1\n', 'xvc0\nttyS0\n', '# xvc0\n'):
        assert probe.fix_securetty_text(text) == (text, [], [])


def test_upstart_gettys_on_the_xen_console_are_reported_only():
    assert probe.upstart_xen_gettys(RHEL6_UPSTART) == (
        RHEL6_UPSTART, [], ['exec /sbin/agetty /dev/hvc0 38400 vt100-nav'])
    serial = RHEL6_UPSTART.replace('/dev/hvc0', '/dev/$DEV')
    assert probe.upstart_xen_gettys(serial) == (serial, [], [])


# -- the guest's files together -----------------------------------------------

def rhel5_guest(**more):
    files = {'/etc/modprobe.conf': RHEL5_MODPROBE,
             '/etc/modprobe.d/blacklist': 'blacklist floppy\n',
             '/etc/modprobe.d/xen.conf': 'alias scsi_hostadapter2 xenblk\n',
             '/etc/inittab': RHEL5_INITTAB,
             '/etc/securetty': RHEL5_SECURETTY,
             '/etc/init/hvc0.conf': RHEL6_UPSTART}
    files.update(more)
    return FilesG(files)


MODULES = {'block': 'virtio_blk', 'net': 'virtio_net'}


def test_facts_are_what_the_fix_changes():
    facts = probe.xen_files(rhel5_guest(), MODULES)
    by_path = {f['path']: f for f in facts}
    assert sorted(by_path) == ['/etc/init/hvc0.conf', '/etc/inittab',
                               '/etc/modprobe.conf',
                               '/etc/modprobe.d/xen.conf', '/etc/securetty']
    assert by_path['/etc/modprobe.conf']['kind'] == 'modprobe'
    assert by_path['/etc/modprobe.conf']['changes'][:2] == [
        {'from': 'alias eth0 xennet', 'to': 'alias eth0 virtio_net'},
        {'from': 'alias scsi_hostadapter xenblk',
         'to': 'alias scsi_hostadapter virtio_blk'}]
    # One virtio_blk alias across the files: modprobe.d's goes.
    assert by_path['/etc/modprobe.d/xen.conf']['changes'] == [
        {'from': 'alias scsi_hostadapter2 xenblk', 'to': ''}]
    assert by_path['/etc/init/hvc0.conf'] == {
        'path': '/etc/init/hvc0.conf', 'kind': 'upstart', 'changes': [],
        'more': 0, 'left': ['exec /sbin/agetty /dev/hvc0 38400 vt100-nav']}
    assert by_path['/etc/securetty']['changes'] == [
        {'from': '', 'to': 'ttyS0'}]


def test_symlinks_are_not_written_through_and_files_are_bounded():
    g = rhel5_guest()
    g.links['/etc/modprobe.conf'] = 'modprobe.conf.rpmnew'
    paths = [f['path'] for f in probe.xen_files(g, MODULES)]
    assert '/etc/modprobe.conf' not in paths
    # Thousands of files in modprobe.d: the first MAX_CONFIG_FILES only.
    many = {'/etc/modprobe.d/%04d.conf' % i: 'alias eth0 xennet\n'
            for i in range(2000)}
    paths = [f['path'] for f in probe.xen_files(FilesG(many), MODULES)]
    assert len(paths) == probe.MAX_CONFIG_FILES
    assert paths[-1] == '/etc/modprobe.d/%04d.conf' % (
        probe.MAX_CONFIG_FILES - 1)
    # Backups, hidden files and other names modprobe does not read.
    g = FilesG({'/etc/modprobe.d/x.conf.rpmsave': 'alias eth0 xennet\n',
                '/etc/modprobe.d/.x.conf': 'alias eth0 xennet\n',
                '/etc/modprobe.d/x.conf~': 'alias eth0 xennet\n',
                '/etc/init/x.override': 'exec agetty hvc0\n'})
    assert probe.xen_files(g, MODULES) == []
    # A file over the bound is not read at all.
    big = 'alias eth0 xennet\n' + '#' * probe.MAX_CONFIG_FILE
    assert probe.xen_files(FilesG({'/etc/modprobe.conf': big}),
                           MODULES) == []


def test_hostile_contents_keep_their_bytes():
    junk = bytes(range(256)) * 64 + b'\xff\xfe\r\x0c\x0b\x00'
    latin1 = (b'# Kr\xe4fte: \xa9 2009\nalias eth0 xennet\x0c\n' + junk +
              b'\nalias scsi_hostadapter xenblk\n')
    g = FilesG({'/etc/modprobe.conf': latin1,
                '/etc/inittab': junk, '/etc/securetty': junk,
                '/etc/sysconfig/kernel': junk})
    found = probe.xen_config(g, MODULES)
    assert [(p, c) for p, _k, _t, _n, c, _l in found] == [
        ('/etc/modprobe.conf', [
            ('alias eth0 xennet', 'alias eth0 virtio_net'),
            ('alias scsi_hostadapter xenblk',
             'alias scsi_hostadapter virtio_blk')])]
    new = found[0][3].encode('utf-8', 'surrogateescape')
    assert new == latin1.replace(b'eth0 xennet', b'eth0 virtio_net').replace(
        b'hostadapter xenblk', b'hostadapter virtio_blk')
    # What is reported is JSON-safe text.
    facts = probe.xen_files(FilesG({'/etc/modprobe.conf':
                                    b'alias eth0 xennet \xe4\n'}), MODULES)
    assert facts[0]['changes'] == [{'from': 'alias eth0 xennet \ufffd',
                                    'to': 'alias eth0 virtio_net \ufffd'}]


def test_many_lines_are_fixed_quickly_and_reported_bounded():
    text = 'alias eth0 xennet\n' * 50000
    begin = time.monotonic()
    (_p, _k, _t, new, changes, _l), = probe.xen_config(
        FilesG({'/etc/modprobe.conf': text}), MODULES)
    assert time.monotonic() - begin < 10
    assert new == 'alias eth0 virtio_net\n' * 50000
    assert len(changes) == 50000
    (fact,) = probe.xen_files(FilesG({'/etc/modprobe.conf': text}), MODULES)
    assert (len(fact['changes']), fact['more']) == (
        probe.MAX_REPORTED, 50000 - probe.MAX_REPORTED)
    warning = gi.xen_file_warnings([fact])[0]
    assert '(and %d more)' % (50000 - 4) in warning
    assert len(warning) < 1000


def test_fix_linux_writes_the_files_and_a_second_fix_changes_nothing():
    g = rhel5_guest(**{'/etc/sysconfig/kernel': SLES11_KERNEL})
    untouched = dict(g.files)
    tried = []
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', tried,
                           modules=MODULES)
    records = {d['path']: d['changes'] for d in done}
    assert sorted(records) == ['/etc/inittab', '/etc/modprobe.conf',
                               '/etc/modprobe.d/xen.conf', '/etc/securetty',
                               '/etc/sysconfig/kernel']
    assert tried == g.writes
    assert {'from': 'alias scsi_hostadapter xenblk',
            'to': 'alias scsi_hostadapter virtio_blk'} in \
        records['/etc/modprobe.conf']
    assert g.files['/etc/modprobe.d/xen.conf'] == b''
    assert b'agetty ttyS0 9600' in g.files['/etc/inittab']
    assert g.files['/etc/init/hvc0.conf'] == \
        untouched['/etc/init/hvc0.conf']
    assert g.files['/etc/modprobe.d/blacklist'] == \
        untouched['/etc/modprobe.d/blacklist']
    # Again: nothing left to change, nothing written.
    g.writes = []
    assert probe.fix_linux(g, '/dev/sda1', 'virtio', [],
                           modules=MODULES) == []
    assert g.writes == []


# -- the bus and NIC the aliases name -----------------------------------------

def test_kvm_modules_follow_the_bus_and_nic_tables():
    g = recorded_guest('guest-virtio')
    # virtio_scsi in the initramfs, virtio_net a module.
    assert properties.kvm_modules(g) == {'block': 'virtio_scsi',
                                         'net': 'virtio_net'}
    mods = g['linux']['kernels'][0]['modules']
    mods.update(virtio_scsi=None, virtio_net='builtin')
    assert properties.kvm_modules(g) == {'block': 'virtio_blk', 'net': None}
    mods.update(virtio_blk=None, virtio_pci=None, ahci='initramfs',
                virtio_net=None, e1000='module')
    assert properties.kvm_modules(g) == {'block': 'ahci', 'net': 'e1000'}
    mods.update(ahci=None)
    assert properties.kvm_modules(g) == {'block': 'ata_piix',
                                         'net': 'e1000'}
    assert properties.kvm_modules({'type': 'linux', 'linux': {}}) == {
        'block': None, 'net': None}
    # The probe asks the same table.
    assert probe.fix_modules(g) == properties.kvm_modules(g)


# -- what the inspection says -------------------------------------------------

def inspected_rhel5():
    g = recorded_guest('guest-xenpv')
    g['package_format'] = 'rpm'
    g['linux']['tools'] = {'xe_guest_utilities': [
        'xe-guest-utilities', 'xe-guest-utilities-xenstore',
        '/usr/sbin/xe-daemon']}
    g['linux']['xen_files'] = probe.xen_files(
        rhel5_guest(**{'/etc/sysconfig/kernel': SLES11_KERNEL}),
        properties.kvm_modules(g))
    return g


def test_warnings_say_what_fix_does_until_it_did():
    g = inspected_rhel5()
    out = [w for w in gi.warnings(g) if w.startswith('/etc/') and
           '/etc/fstab' not in w and 'grub' not in w]
    assert out == [
        '/etc/modprobe.conf aliases Xen\'s paravirtual drivers (alias eth0 '
        'xennet, alias scsi_hostadapter xenblk, alias scsi_hostadapter1 '
        'xenblk, alias eth1 xen-vnif   # second NIC): on KVM they find no '
        'device, and RHEL 5\'s mkinitrd builds the next kernel\'s initrd '
        'with the scsi_hostadapter drivers alone, which then does not boot;'
        ' --fix makes them: alias eth0 xennet -> alias eth0 virtio_net, '
        'alias scsi_hostadapter xenblk -> alias scsi_hostadapter '
        'virtio_scsi, alias scsi_hostadapter1 xenblk -> (dropped), alias '
        'eth1 xen-vnif   # second NIC -> alias eth1 virtio_net   # second '
        'NIC',
        '/etc/modprobe.d/xen.conf aliases Xen\'s paravirtual drivers (alias '
        'scsi_hostadapter2 xenblk): on KVM they find no device, and RHEL '
        '5\'s mkinitrd builds the next kernel\'s initrd with the '
        'scsi_hostadapter drivers alone, which then does not boot; --fix '
        'makes them: alias scsi_hostadapter2 xenblk -> (dropped)',
        '/etc/sysconfig/kernel has Xen\'s paravirtual drivers in the '
        'modules SUSE\'s mkinitrd puts in the initrd (INITRD_MODULES="'
        'processor thermal xenblk ata_piix xennet fan jbd ext3 edd", '
        'DOMU_INITRD_MODULES="xennet xenblk"); --fix makes it: '
        'INITRD_MODULES="processor thermal xenblk ata_piix xennet fan jbd '
        'ext3 edd" -> INITRD_MODULES="processor thermal ata_piix fan jbd '
        'ext3 edd", DOMU_INITRD_MODULES="xennet xenblk" -> '
        'DOMU_INITRD_MODULES=""',
        '/etc/inittab runs a getty on the Xen console (co:2345:respawn:'
        '/sbin/agetty xvc0 9600 vt100-nav), which KVM does not have: init '
        'respawns it for ever; --fix makes it: co:2345:respawn:/sbin/agetty '
        'xvc0 9600 vt100-nav -> co:2345:respawn:/sbin/agetty ttyS0 9600 '
        'vt100-nav',
        '/etc/securetty lets root log in on the Xen console but not on the '
        'serial console; --fix adds ttyS0',
        '/etc/init/hvc0.conf runs a getty on the Xen console (exec '
        '/sbin/agetty /dev/hvc0 38400 vt100-nav), which KVM does not have; '
        '--fix leaves it (upstart gives up respawning it): point it at '
        'ttyS0 or remove the job']
    tools = [w for w in gi.warnings(g) if 'XenServer guest tools' in w]
    assert tools == [
        'XenServer guest tools are installed (xe-guest-utilities, '
        'xe-guest-utilities-xenstore): their daemon finds no Xen on KVM and '
        'fails at every boot; --fix does not remove packages: after the '
        'move, run "rpm -e xe-guest-utilities xe-guest-utilities-xenstore" '
        'in the guest, and install qemu-guest-agent']
    # Without --fix, no "not fixed" list.
    assert 'left' not in gi.summary({'guests': [copy.deepcopy(g)]})
    # After --fix: the files it wrote are no longer warned of; what it
    # leaves is, and the fix summary says it too.
    fixed = [{'root': g['root'], 'files': [
        {'path': e['path'], 'changes': e['changes']}
        for e in g['linux']['xen_files'] if e['changes']]}]
    s = gi.summary({'guests': [g], 'fixed': fixed})
    left = [w for w in s['warnings'] if w.startswith('/etc/') and
            '/etc/fstab' not in w and 'grub' not in w]
    assert [w.split(' ', 1)[0] for w in left] == ['/etc/init/hvc0.conf']
    assert s['left'] == [tools[0], '/etc/init/hvc0.conf: exec /sbin/agetty '
                         '/dev/hvc0 38400 vt100-nav']
    text = gi.text_lines(s)
    assert 'fixed:        /etc/securetty: added ttyS0' in text
    assert 'fixed:        /etc/modprobe.d/xen.conf: alias scsi_hostadapter2 ' \
        'xenblk -> (dropped)' in text
    assert 'not fixed:    /etc/init/hvc0.conf: exec /sbin/agetty /dev/hvc0 ' \
        '38400 vt100-nav' in text
    assert any(line.startswith('not fixed:    XenServer guest tools')
               for line in text)


def test_the_tools_command_follows_the_package_format():
    g = {'type': 'linux', 'package_format': 'deb', 'linux': {
        'tools': {'xe_guest_utilities': ['xe-guest-utilities',
                                         '/usr/sbin/xe-daemon']}}}
    assert 'run "dpkg -r xe-guest-utilities" in the guest' in \
        gi.xe_tools_warning(g)
    g['package_format'] = 'pacman'
    assert 'remove the package(s) xe-guest-utilities' in \
        gi.xe_tools_warning(g)
    # Installed from the tools ISO's tarball: no package to remove.
    g['linux']['tools']['xe_guest_utilities'] = ['/usr/sbin/xe-daemon']
    assert 'remove /usr/sbin/xe-daemon (installed without a package)' in \
        gi.xe_tools_warning(g)
    g['linux']['tools']['xe_guest_utilities'] = []
    assert gi.xe_tools_warning(g) is None


class UnreadRpmG(FilesG):
    """A guest whose RPM database the appliance's librpm cannot read."""

    def inspect_list_applications2(self, root):
        raise RuntimeError('internal_list_rpm_applications: '
                           'rpmtsInitIterator')


def test_a_package_database_not_read_is_said_and_not_taken_for_none():
    """The tools found by their files alone, the packages unread: the
    warning does not say "installed without a package" (deleting a
    packaged daemon leaves its unit failing), and the inspection says
    the list was not read."""
    g = UnreadRpmG({'/usr/sbin/xe-daemon': 'x'})
    found, apps, unread = probe.tools(g, '/dev/sda1')
    assert found['xe_guest_utilities'] == ['/usr/sbin/xe-daemon']
    assert apps == [] and 'rpmtsInitIterator' in unread
    guest = {'type': 'linux', 'package_format': 'rpm', 'linux': {
        'tools': found, 'packages_unread': unread}}
    line = gi.xe_tools_warning(guest)
    assert 'installed without a package' not in line
    assert ('remove the package that owns /usr/sbin/xe-daemon (rpm -qf; '
            'the package database could not be read here)') in line
    assert any(w.startswith("the guest's package database could not be "
                            "read here (internal_list_rpm_applications")
               for w in gi.warnings(guest))
    # Read, and no package: the tarball's install.

    class ReadG(FilesG):
        def inspect_list_applications2(self, root):
            return [{'app2_name': 'bash'}]
    found, apps, unread = probe.tools(ReadG(
        {'/usr/sbin/xe-daemon': 'x'}), '/dev/sda1')
    assert (apps, unread) == (['bash'], None)


def test_the_probe_reads_no_file_twice_per_kind():
    """Every file of XEN_FILES is listed by one kind only."""
    seen = [p for _kind, files, _top in probe.XEN_FILES for p in files]
    assert len(seen) == len(set(seen))
    assert all(os.path.isabs(p) for p in seen)


def test_every_fix_writes_back_the_bytes_it_did_not_change():
    """Old guests keep Latin-1 text (a comment in fstab, a title in
    menu.lst): the fixes change their lines and leave every other byte as
    it was, where a 'replace' decode would have written U+FFFD's bytes
    (EF BF BD) for each of them."""
    fstab = (b'# Ger\xe4te der Festplatte (\xa9 M\xfcller)\n'
             b'/dev/xvda1  /      ext3  defaults  1 1\n'
             b'LABEL=d\xf6ten  /data  ext3  defaults  1 2\n')
    menu = (b'default=0\ntimeout=5\n'
            b'title CentOS (2.6.18-398.el5) \xbbKVM\xab\n'
            b'\troot (hd0,0)\n'
            b'\tkernel /vmlinuz-2.6.18-398.el5 ro root=/dev/xvda1 '
            b'console=hvc0\n'
            b'\tinitrd /initrd-2.6.18-398.el5.img\n')
    ifcfg = (b'# Schnittstelle f\xfcr das B\xfcro\nDEVICE=eth0\n'
             b'HWADDR=00:16:3e:11:22:33\nBOOTPROTO=dhcp\n')
    g = FilesG({'/etc/fstab': fstab, '/boot/grub/menu.lst': menu,
                '/etc/sysconfig/network-scripts/ifcfg-eth0': ifcfg})
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [], modules=MODULES)
    assert sorted(d['path'] for d in done) == [
        '/boot/grub/menu.lst', '/etc/fstab',
        '/etc/sysconfig/network-scripts/ifcfg-eth0']
    new_fstab = g.files['/etc/fstab'].split(b'\n')
    assert new_fstab[0] == fstab.split(b'\n')[0]
    assert new_fstab[1].startswith(b'/dev/vda1 ') and b'xvda' not in \
        new_fstab[1]
    assert new_fstab[2:] == fstab.split(b'\n')[2:]
    new_menu = g.files['/boot/grub/menu.lst']
    assert b'\xbbKVM\xab' in new_menu and b'\xef\xbf\xbd' not in new_menu
    assert b'console=hvc0' not in new_menu and b'root=/dev/vda1' in new_menu
    new_ifcfg = g.files['/etc/sysconfig/network-scripts/ifcfg-eth0']
    assert new_ifcfg.startswith(ifcfg.split(b'\n')[0] + b'\n')
    assert b'HWADDR=00:16:3e' not in new_ifcfg.replace(b'#HWADDR', b'')
    # What is reported is JSON text: the bytes shown as U+FFFD there only.
    json.dumps(done)
    changes = [c for d in done for c in d['changes']]
    assert all('\udce4' not in c['from'] + c['to'] for c in changes)


CENTOS6_GRUB = ('default=0\ntimeout=5\n'
                'title CentOS (2.6.32-754.el6.x86_64)\n\troot (hd0,0)\n'
                '\tkernel /vmlinuz-2.6.32-754.el6.x86_64 ro root=/dev/xvda2 '
                'console=hvc0 xencons=tty\n'
                '\tinitrd /initramfs-2.6.32-754.el6.x86_64.img\n')


def test_a_bootloader_file_reached_by_links_is_one_file():
    """RHEL 5 and 6: GRUB's grub.conf, reached as menu.lst (-> ./grub.conf)
    and /etc/grub.conf (-> ../boot/grub/grub.conf) too.  Listed, fixed
    and reported once, by its real path: fixed through one name, it was
    still reported unfixed under the others."""
    files = {'/boot/grub/grub.conf': CENTOS6_GRUB,
             '/boot/grub/menu.lst': CENTOS6_GRUB,
             '/etc/grub.conf': CENTOS6_GRUB,
             '/etc/fstab': '/dev/xvda2 / ext4 defaults 1 1\n'}
    links = {'/boot/grub/menu.lst': './grub.conf',
             '/etc/grub.conf': '../boot/grub/grub.conf'}
    g = FilesG(files, links=links)
    assert probe.boot_files(g) == ['/boot/grub/grub.conf']
    listed = [e['path'] for e in probe.disk_names(g, probe.in_order(1))]
    assert listed == ['/etc/fstab', '/boot/grub/grub.conf'], listed
    done = probe.fix_linux(g, '/dev/sda2', 'scsi', [],
                           slots=probe.in_order(1))
    assert [d['path'] for d in done] == ['/etc/fstab',
                                         '/boot/grub/grub.conf']
    assert g.writes == ['/etc/fstab', '/boot/grub/grub.conf']
    assert 'xvda' not in g.files['/boot/grub/grub.conf'].decode()
    # An absolute link, and one to nowhere (kept by its own name).
    g = FilesG(dict(files), links={'/etc/grub.conf': '/boot/grub/grub.conf',
                                   '/boot/grub/menu.lst': '../nowhere/x'})
    assert probe.boot_files(g) == ['/boot/grub/menu.lst',
                                   '/boot/grub/grub.conf']


SLES11_BOOTLOADER = (
    '## Path:\tSystem/Bootloader\n'
    'LOADER_TYPE="grub"\n'
    'DEFAULT_APPEND="resume=/dev/xvda1 splash=silent showopts '
    'console=xvc0"\n'
    'FAILSAFE_APPEND="showopts ide=nodma apm=off noresume edd=off '
    'powersaved=off nohz=off highres=off processor.max_cstate=1 '
    'nomodeset x11failsafe console=xvc0"\n'
    'XEN_KERNEL_APPEND="resume=/dev/xvda1 splash=silent showopts"\n')


def test_sles11_bootloader_settings_are_fixed_like_grubs_defaults():
    """SLES 11's /etc/sysconfig/bootloader: perl-Bootloader writes the
    entry of every kernel to come with DEFAULT_APPEND.  Its Xen names
    and consoles are found and fixed, and the kernels to come keep
    their NIC names, as GRUB_CMDLINE_LINUX does."""
    g = FilesG({'/etc/sysconfig/bootloader': SLES11_BOOTLOADER})
    assert '/etc/sysconfig/bootloader' in probe.boot_files(g)
    (entry,) = probe.disk_names(g, probe.in_order(1))
    assert (entry['names'], entry['xen_consoles']) == (
        ['/dev/xvda1'], ['console=xvc0']), entry
    new, changes = probe.fix_text(
        g, SLES11_BOOTLOADER, 'scsi', True, probe.in_order(1), [],
        path='/etc/sysconfig/bootloader', kernel_args=['net.ifnames=0'])
    assert 'DEFAULT_APPEND="resume=/dev/sda1 splash=silent showopts ' \
        'console=ttyS0 net.ifnames=0"\n' in new, new
    assert 'x11failsafe console=ttyS0 net.ifnames=0"\n' in new, new
    assert 'xvc0' not in new and 'LOADER_TYPE="grub"\n' in new
    r = subprocess.run(['bash', '-n'], input=new, text=True,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
