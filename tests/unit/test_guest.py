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

"""Guest inspection without an appliance: the decisions are taken from
probe output recorded on the real test guests
(``data/probe-linux-guests.json``: ``probe.py inspect`` of the virtio,
novirtio and xenpv guests of tests/lib/guestbuild.py, in one launch), and
from hand-written Windows facts (``data/probe-windows-handmade.json``)."""

import copy
import gzip
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from any2kvm_os import exception
from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe
from any2kvm_os.guest import v2v
from any2kvm_os import properties

DATA = Path(__file__).parent / 'data'


def recorded():
    return json.loads((DATA / 'probe-linux-guests.json').read_text())


def guest(hostname):
    for g in recorded()['guests']:
        if g['hostname'] == hostname:
            return g
    raise AssertionError(hostname)


def windows():
    return json.loads((DATA / 'probe-windows-handmade.json').read_text())


# -- the bus table ---------------------------------------------------------

def test_virtio_guest_gets_virtio_scsi():
    props, reasons = properties.guest_properties(guest('guest-virtio'))
    assert props == {
        'os_type': 'linux', 'os_distro': 'debian', 'os_version': '12',
        'architecture': 'x86_64', 'hw_disk_bus': 'scsi',
        'hw_scsi_model': 'virtio-scsi', 'hw_vif_model': 'virtio',
        'hw_firmware_type': 'bios', 'hw_qemu_guest_agent': 'yes'}
    assert 'virtio_scsi is in the initramfs' in reasons['hw_disk_bus']


def test_guest_without_virtio_in_initramfs_gets_ide():
    props, reasons = properties.guest_properties(guest('guest-novirtio'))
    assert props['hw_disk_bus'] == 'ide'
    assert 'hw_scsi_model' not in props
    assert 'hw_qemu_guest_agent' not in props
    # The module is on the disk, but not where the boot can load it.
    assert 'virtio_scsi a module outside the initramfs' in \
        reasons['hw_disk_bus']
    # The NIC driver may load after the boot: virtio-net is fine.
    assert props['hw_vif_model'] == 'virtio'


def test_virtio_blk_only_gets_virtio():
    g = guest('guest-virtio')
    g['linux']['kernels'][0]['modules']['virtio_scsi'] = 'module'
    props, reasons = properties.guest_properties(g)
    assert props['hw_disk_bus'] == 'virtio'
    assert 'hw_scsi_model' not in props
    assert 'virtio_blk is in the initramfs' in reasons['hw_disk_bus']


def test_virtio_scsi_without_sd_mod_is_no_scsi_bus():
    """Debian's MODULES=dep made on Xen, with the virtio drivers added by
    hand: virtio_scsi is in the initramfs, the SCSI disk driver is not.
    On virtio-scsi the guest would find no disk: virtio-blk boots it."""
    g = guest('guest-virtio')
    mods = g['linux']['kernels'][0]['modules']
    mods['sd_mod'] = 'module'
    props, reasons = properties.guest_properties(g)
    assert props['hw_disk_bus'] == 'virtio'
    assert 'hw_scsi_model' not in props
    assert 'but sd_mod (the SCSI disk driver) is a module outside the ' \
        'initramfs' in reasons['hw_disk_bus']
    assert v2v.needed(g) is None
    # Without virtio_blk at boot either: no bus boots it; said so, and
    # --fix hands it to virt-v2v.
    mods['virtio_blk'] = 'module'
    props, reasons = properties.guest_properties(g)
    assert props['hw_disk_bus'] == 'ide'
    assert reasons['hw_disk_bus'].endswith(properties.NO_BUS)
    assert not properties.bootable_bus(g)
    assert v2v.needed(g) == 'initramfs'
    assert [w for w in gi.warnings(g) if 'no disk bus can boot it' in w]
    # sd_mod built in (or in the initramfs): virtio-scsi.
    for state in ('builtin', 'initramfs'):
        mods['sd_mod'] = state
        assert properties.guest_properties(g)[0]['hw_disk_bus'] == 'scsi'
        assert properties.bootable_bus(g)
        assert not [w for w in gi.warnings(g) if 'no disk bus' in w]


def test_ata_piix_outside_the_initramfs_is_no_ide_bus():
    g = guest('guest-novirtio')
    mods = g['linux']['kernels'][0]['modules']
    assert properties.bootable_bus(g)      # its ata_piix is at boot
    mods['ata_piix'] = 'module'
    props, reasons = properties.guest_properties(g)
    assert props['hw_disk_bus'] == 'ide'
    assert reasons['hw_disk_bus'].endswith(
        'ata_piix is a module outside the initramfs: ' + properties.NO_BUS)
    assert not properties.bootable_bus(g)
    # ahci at boot, without sd_mod: no SATA disk either.
    mods['ahci'], mods['sd_mod'] = 'initramfs', None
    assert not properties.bootable_bus(g)
    mods['sd_mod'] = 'initramfs'
    assert properties.guest_properties(g)[0]['hw_disk_bus'] == 'sata'


def test_ahci_gets_sata():
    g = guest('guest-novirtio')
    g['linux']['kernels'][0]['modules']['ahci'] = 'builtin'
    props, reasons = properties.guest_properties(g)
    assert props['hw_disk_bus'] == 'sata'
    assert 'ahci is built into the kernel' in reasons['hw_disk_bus']


def test_no_virtio_net_gets_e1000_or_the_sources_model():
    g = guest('guest-virtio')
    mods = g['linux']['kernels'][0]['modules']
    mods['virtio_net'] = None
    props, reasons = properties.guest_properties(g)
    assert props['hw_vif_model'] == 'e1000'
    vm = {'nics': [{'model': 'vmxnet3'}]}
    props, reasons = properties.guest_properties(g, vm)
    assert props['hw_vif_model'] == 'vmxnet3'
    assert 'vmxnet3' in reasons['hw_vif_model']


def test_uefi_guest():
    g = guest('guest-virtio')
    g['firmware'] = 'uefi'
    props, reasons = properties.guest_properties(g)
    assert props['hw_firmware_type'] == 'uefi'
    assert props['hw_machine_type'] == 'q35'


def test_a_uefi_guest_that_boots_from_ide_only_gets_the_pc_machine():
    # q35 has no IDE controller: libvirt refuses the disk and Nova fails
    # the spawn.  OVMF runs on i440fx too.
    g = guest('guest-novirtio')
    g['firmware'] = 'uefi'
    result = {'guests': [g]}
    summary = gi.summary(result)
    props, why = summary['properties'], summary['reasons']
    assert props['hw_disk_bus'] == 'ide'
    assert props['hw_firmware_type'] == 'uefi'
    assert props['hw_machine_type'] == 'pc'
    assert why['hw_machine_type'].startswith(
        'UEFI guest that boots from IDE only: q35 has no IDE controller')
    assert not [w for w in summary['warnings'] if 'spawn' in w]
    # With AHCI in its initramfs it keeps q35 (sata is q35's own bus).
    g['linux']['kernels'][0]['modules']['ahci'] = 'initramfs'
    props, why = properties.guest_properties(g)
    assert (props['hw_disk_bus'], props['hw_machine_type']) == ('sata',
                                                                'q35')
    assert why['hw_machine_type'] == 'UEFI guest'


def test_secure_boot_keeps_q35_and_an_ide_only_guest_is_warned_of():
    g = guest('guest-novirtio')
    g['firmware'] = 'uefi'
    vm = {'firmware': 'uefi', 'secure_boot': True}
    summary = gi.summary({'guests': [g]}, vm)
    props = summary['properties']
    assert (props['hw_disk_bus'], props['hw_machine_type']) == ('ide',
                                                                'q35')
    assert summary['reasons']['hw_machine_type'] == (
        'UEFI guest with Secure Boot (it needs q35)')
    spawn = [w for w in summary['warnings'] if 'cannot spawn' in w]
    assert spawn == [
        'hw_disk_bus=ide on hw_machine_type=q35, which Secure Boot needs: '
        'q35 has no IDE controller, so the server cannot spawn; get virtio '
        'or AHCI into the guest\'s initramfs (--fix with virt-v2v) or turn '
        'Secure Boot off (os_secure_boot=disabled, hw_machine_type=pc)']
    # The image's properties: the guest's machine type, and the source's
    # Secure Boot, together.
    image = properties.image_properties(dict(vm, guest_properties=props),
                                        1 << 30)
    assert image['hw_machine_type'] == 'q35'
    assert image['os_secure_boot'] == 'required'


def test_newest_kernel_decides():
    g = guest('guest-virtio')
    old = copy.deepcopy(g['linux']['kernels'][0])
    old['version'] = '4.19.0-9-amd64'
    old['modules'] = dict.fromkeys(old['modules'])
    g['linux']['kernels'].insert(0, old)
    assert properties.boot_kernel(g)['version'].startswith('6.1.0')
    assert properties.guest_properties(g)[0]['hw_disk_bus'] == 'scsi'


def test_debian_version_order():
    cmp = properties.debian_version_compare
    assert cmp('6.1.0-10-amd64', '6.1.0-9-amd64') > 0
    assert cmp('6.1.0-9-amd64', '6.1.0-10-amd64') < 0
    assert cmp('5.10.0-28-amd64', '6.1.0-9-amd64') < 0
    assert cmp('6.1.0-rc1~1', '6.1.0-rc1') < 0
    assert cmp('6.1.0', '6.1.0') == 0
    assert cmp('6.1.0-10-cloud-amd64', '6.1.0-10-amd64') > 0


def _two_kernels():
    """6.1.0-10 (virtio_blk only) and 6.1.0-9 (virtio_scsi), in the
    order the probe lists /lib/modules (sorted names: -10 first)."""
    g = guest('guest-virtio')
    newer = g['linux']['kernels'][0]
    older = copy.deepcopy(newer)
    newer['version'] = '6.1.0-10-amd64'
    newer['modules']['virtio_scsi'] = 'module'
    older['version'] = '6.1.0-9-amd64'
    g['linux']['kernels'] = [newer, older]
    return g


def test_fix_and_properties_choose_the_same_kernel():
    # One function chooses the boot kernel, by Debian version: the
    # names --fix writes match the bus the properties set.
    g = _two_kernels()
    assert properties.boot_kernel(g)['version'] == '6.1.0-10-amd64'
    assert properties.guest_properties(g)[0]['hw_disk_bus'] == 'virtio'
    assert probe.fix_bus(g) == 'virtio'
    g['linux']['kernels'].reverse()
    assert properties.guest_properties(g)[0]['hw_disk_bus'] == 'virtio'
    assert probe.fix_bus(g) == 'virtio'


def test_fix_bus_standalone_loads_the_bus_table(tmp_path):
    # Run as the program (no package, no site-packages): probe.py loads
    # properties.py by path and chooses as the project does.
    import subprocess
    import sys
    data = tmp_path / 'guest.json'
    data.write_text(json.dumps(_two_kernels()))
    code = ('import json, sys; sys.path.insert(0, sys.argv[1]); '
            'import probe; '
            'print(probe.fix_bus(json.load(open(sys.argv[2]))))')
    r = subprocess.run([sys.executable, '-I', '-S', '-c', code,
                        os.path.dirname(probe.__file__), str(data)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'virtio'


def test_nothing_found_sets_nothing():
    assert properties.guest_properties(None) == ({}, {})
    assert properties.guest_properties({'type': 'unknown'}) == ({}, {})


def test_image_properties_guest_wins_over_source_user_over_guest():
    g = guest('guest-novirtio')
    props, _reasons = properties.guest_properties(g)
    vm = {'os': {'vmware_os_type': 'windows9Server64Guest'},
          'guest_properties': props}
    p = properties.image_properties(vm, 1 << 30,
                                    overrides={'hw_vif_model': 'e1000'})
    assert p['hw_disk_bus'] == 'ide'
    assert 'hw_scsi_model' not in p
    assert p['os_distro'] == 'debian'
    assert p['os_type'] == 'linux'
    assert p['hw_vif_model'] == 'e1000'
    # --no-default-properties: nothing derived, the guest's neither.
    p = properties.image_properties(vm, 1 << 30, defaults=False,
                                    overrides={'a': 'b'})
    assert p == {'a': 'b'}
    # Without inspection: as before.
    p = properties.image_properties({}, 1 << 30)
    assert p['hw_disk_bus'] == 'scsi'
    assert p['hw_scsi_model'] == 'virtio-scsi'


# -- Windows (hand-written facts) -----------------------------------------

def test_windows_without_virtio_or_ahci_at_boot_gets_ide_and_a_warning():
    """Installed on Xen's emulated IDE: storahci is there but set not to
    start at boot (Start 3): AHCI would stop it with 0x7B
    (INACCESSIBLE_BOOT_DEVICE) until --fix makes it start; IDE boots."""
    result = windows()
    summary = gi.summary(result)
    props, reasons = summary['properties'], summary['reasons']
    assert props['os_type'] == 'windows'
    assert props['os_distro'] == 'windows'
    assert props['os_version'] == '10.0'
    assert props['hw_disk_bus'] == 'ide'
    assert props['hw_vif_model'] == 'e1000'
    # IDE: the i440fx machine, whatever the cloud's default.
    assert props['hw_machine_type'] == 'pc'
    assert 'q35' in reasons['hw_machine_type']
    assert 'vioscsi.inf_amd64_1234 is in the driver store only' in \
        reasons['hw_disk_bus']
    assert 'storahci (AHCI) does not start at boot (Start 3; --fix makes ' \
        'it)' in reasons['hw_disk_bus'], reasons['hw_disk_bus']
    text = '\n'.join(summary['warnings'])
    assert ('Windows Server 2019 Standard without a virtio storage '
            'driver: hw_disk_bus=ide; install virtio-win before migrating '
            'to get virtio-scsi') in text
    # storahci at boot: AHCI.
    for cs in result['guests'][0]['windows']['control_sets'].values():
        cs['services']['storahci']['start'] = 0
    assert gi.summary(result)['properties']['hw_disk_bus'] == 'sata'
    # ... unless its StartOverride holds it back (Windows 8 on).
    for cs in result['guests'][0]['windows']['control_sets'].values():
        cs['services']['storahci']['start_override'] = {'0': 3}
    assert gi.summary(result)['properties']['hw_disk_bus'] == 'ide'
    # The fix makes it start: it may choose AHCI.
    assert properties.disk_bus(result['guests'][0], fix=True)[0] == 'sata'
    assert 'ControlSet001: Citrix XenServer PV driver services xenbus, ' \
        'xenfilt, xenvbd' in text
    assert 'upperfilters names xenfilt' in text


def test_windows_with_vioscsi_at_boot_gets_virtio_scsi():
    result = windows()
    services = result['guests'][0]['windows']['control_sets'][
        'ControlSet001']['services']
    services['vioscsi'] = {'group': 'virtio', 'start': 0,
                           'image_path': None}
    services['netkvm'] = {'group': 'virtio', 'start': 3,
                          'image_path': None}
    props, reasons = properties.guest_properties(result['guests'][0])
    assert props['hw_disk_bus'] == 'scsi'
    assert props['hw_scsi_model'] == 'virtio-scsi'
    assert props['hw_vif_model'] == 'virtio'
    assert reasons['hw_disk_bus'] == 'the vioscsi service starts at boot'


def test_windows_vioscsi_installed_but_not_at_boot_gets_the_right_advice():
    """vioscsi installed with Start 3 (someone changed it): the advice is
    to set its Start, not to install virtio-win; held by its
    StartOverride: that --fix clears it."""
    result = windows()
    guest = result['guests'][0]
    services = guest['windows']['control_sets']['ControlSet001'][
        'services']
    services['vioscsi'] = {'group': 'virtio', 'start': 3,
                           'image_path': 'system32\\drivers\\vioscsi.sys'}
    text = '\n'.join(gi.summary(result)['warnings'])
    assert 'vioscsi is installed but does not start at boot (Start 3): ' \
        'hw_disk_bus=ide; set its Start to 0' in text, text
    assert 'install virtio-win before migrating' not in text
    services['vioscsi'].update(start=0, start_override={'0': 3})
    text = '\n'.join(gi.summary(result)['warnings'])
    assert 'vioscsi would start at boot but for its StartOverride: ' \
        'hw_disk_bus=ide; --fix clears it' in text, text
    assert gi.summary(result)['properties']['hw_disk_bus'] == 'ide'


def test_windows_bus_follows_the_control_set_of_the_next_boot():
    """Select's Default is the set the next boot starts from: the bus is
    chosen from it, not from Current."""
    guest = windows()['guests'][0]
    win = guest['windows']
    first = win['control_sets']['ControlSet001']
    win['control_sets']['ControlSet002'] = {
        'services': dict(first['services'], vioscsi={
            'group': 'virtio', 'start': 0, 'image_path': None})}
    win['current_control_set'] = 'ControlSet001'
    assert properties.disk_bus(guest)[0] == 'ide'
    win['default_control_set'] = 'ControlSet002'
    assert properties.disk_bus(guest)[:2] == ('scsi', 'virtio-scsi')


def test_a_windows_hive_without_select_is_said():
    result = windows()
    win = result['guests'][0]['windows']
    win['control_sets'] = {}
    win['current_control_set'] = None
    win['system_hive'] = '/Windows/System32/config/SYSTEM'
    text = '\n'.join(gi.summary(result)['warnings'])
    assert 'the SYSTEM hive has no usable Select key' in text, text


def test_windows_with_the_qemu_guest_agent():
    guest = windows()['guests'][0]
    services = guest['windows']['control_sets']['ControlSet001'][
        'services']
    assert 'hw_qemu_guest_agent' not in properties.guest_properties(
        guest)[0]
    services['qemu-ga'] = {'group': 'tools', 'start': 2,
                           'image_path': None}
    props, reasons = properties.guest_properties(guest)
    assert props['hw_qemu_guest_agent'] == 'yes'
    assert reasons['hw_qemu_guest_agent'] == 'qemu-ga installed'


def test_windows_without_ahci_gets_ide():
    g = windows()['guests'][0]
    for cs in g['windows']['control_sets'].values():
        cs['services'].pop('storahci', None)
    assert properties.disk_bus(g)[0] == 'ide'


# -- the report ------------------------------------------------------------

def test_summary_of_the_xen_guest():
    result = recorded()
    result['guests'] = [g for g in result['guests']
                        if g['hostname'] == 'guest-xenpv']
    s = gi.summary(result)
    assert s['guest']['disk_names'] == {'/etc/fstab': ['/dev/xvda1'],
                                        '/boot/grub/grub.cfg':
                                        ['/dev/xvda1']}
    assert s['guest']['xen_consoles'] == ['console=hvc0']
    assert s['guest']['tools'] == {
        'xe_guest_utilities': ['xe-guest-utilities']}
    assert any('/etc/fstab names /dev/xvda1' in w for w in s['warnings'])
    text = '\n'.join(gi.text_lines(s))
    assert 'property:     hw_disk_bus=scsi (kernel 6.1.0' in text
    assert 'disk names:   /etc/fstab: /dev/xvda1' in text


def test_summary_after_a_fix_reports_the_new_names():
    result = recorded()
    result['guests'] = [g for g in result['guests']
                        if g['hostname'] == 'guest-xenpv']
    uuid = 'UUID=2e6b3c1a-4a2b-4d7e-9a11-a2c0ffee0103'
    result['fixed'] = [{'root': '/dev/sda1', 'disk': 0, 'bus': 'scsi',
                        'files': [
                            {'path': '/etc/fstab', 'changes': [
                                {'from': '/dev/xvda1', 'to': uuid}]},
                            {'path': '/boot/grub/grub.cfg', 'changes': [
                                {'from': '/dev/xvda1', 'to': uuid},
                                {'from': 'console=hvc0', 'to': ''}]}]}]
    result['guests'][0]['root'] = '/dev/sda1'
    s = gi.summary(result)
    assert s['guest']['disk_names']['/etc/fstab'] == [uuid]
    assert s['guest']['xen_consoles'] == []
    assert not [w for w in s['warnings'] if 'xvda' in w or 'hvc0' in w]
    text = '\n'.join(gi.text_lines(s))
    assert 'fixed:        /boot/grub/grub.cfg: /dev/xvda1 -> %s, ' \
        'console=hvc0 -> (dropped)' % uuid in text


def test_several_guests_the_lowest_disk_is_chosen():
    s = gi.summary(recorded())
    assert s['guest']['hostname'] == 'guest-virtio'
    assert any('2 other operating system(s) found; the one on disk 0 '
               '(root %s) was used' % s['guest']['root'] in w
               for w in s['warnings']), s['warnings']


def test_the_fixes_of_several_systems_name_their_roots():
    """Two Linux systems on one disk (a main one and a rescue one): each
    fixed file is said with the root it belongs to."""
    result = recorded()
    result['fixed'] = [
        {'root': '/dev/sda1', 'disk': 0, 'bus': 'scsi', 'files': [
            {'path': '/etc/fstab', 'changes': [
                {'from': '/dev/xvda1', 'to': 'UUID=a'}]}]},
        {'root': '/dev/sda2', 'disk': 0, 'bus': 'virtio', 'files': [
            {'path': '/etc/fstab', 'changes': [
                {'from': '/dev/xvda2', 'to': 'UUID=b'}]}]}]
    lines = gi.text_lines(gi.summary(result))
    assert 'fixed:        /dev/sda1 /etc/fstab: /dev/xvda1 -> UUID=a' in lines
    assert 'fixed:        /dev/sda2 /etc/fstab: /dev/xvda2 -> UUID=b' in lines


def test_no_guest():
    s = gi.summary({'guests': []})
    assert s['guest'] is None
    assert s['properties'] == {}
    assert s['warnings'] == ['no operating system found on the disk(s)']


# -- the probe's own logic (stdlib parts) ---------------------------------

def _cpio(names):
    """A newc cpio archive of empty files ``names``."""
    out = b''
    for name in list(names) + ['TRAILER!!!']:
        raw = name.encode() + b'\0'
        head = b'070701' + b''.join(b'%08X' % v for v in (
            0, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(raw), 0))
        out += head + raw
        out += b'\0' * (-len(out) % 4)
    return out


def test_cpio_names_of_an_early_and_a_compressed_archive():
    early = _cpio(['kernel/x86/microcode/GenuineIntel.bin'])
    early += b'\0' * (-len(early) % 512)
    main = gzip.compress(_cpio([
        'usr/lib/modules/6.1/kernel/drivers/scsi/virtio_scsi.ko',
        'init']))
    names = probe.cpio_names(early + main)
    assert names == ['kernel/x86/microcode/GenuineIntel.bin',
                     'usr/lib/modules/6.1/kernel/drivers/scsi/virtio_scsi.ko',
                     'init']
    with pytest.raises(ValueError):
        probe.cpio_names(b'\x28\xb5\x2f\xfdzstd')


def test_module_names():
    assert probe._module_name('kernel/drivers/block/virtio_blk.ko') == \
        'virtio_blk'
    assert probe._module_name('a/b/ata-piix.ko.xz') == 'ata_piix'
    assert probe._module_name('init') is None


def test_disk_index():
    assert probe.disk_index('/dev/sda1') == 0
    assert probe.disk_index('/dev/sdc') == 2
    assert probe.disk_index('/dev/sdaa1') == 26
    assert probe.disk_index('/dev/mapper/vg-root') is None


class FakeG(object):
    """The one guestfs call fix_text makes."""

    def vfs_uuid(self, dev):
        return {'/dev/sda1': 'aaaa-1111', '/dev/sda2': ''}.get(dev, '')


class FakeAppsG(object):
    """The guestfs calls of probe.tools: a Debian guest's packages (its
    dpkg status, as libguestfs lists it) and files."""

    def __init__(self, apps, files):
        self.apps = apps
        self.files = files

    def inspect_list_applications2(self, root):
        return [{'app2_name': a} for a in self.apps]

    def exists(self, path):
        return path in self.files


def test_vmware_tools_and_hyperv_daemons_are_detected():
    g = FakeAppsG(['open-vm-tools', 'hyperv-daemons', 'bash'],
                  {'/usr/bin/vmtoolsd', '/usr/sbin/hv_kvp_daemon'})
    found, apps, _unread = probe.tools(g, '/dev/sda1')
    assert found == {
        'xe_guest_utilities': [],
        'vmware_tools': ['open-vm-tools', '/usr/bin/vmtoolsd'],
        'hyperv_daemons': ['hyperv-daemons', '/usr/sbin/hv_kvp_daemon'],
        'qemu_guest_agent': []}
    assert apps == ['bash', 'hyperv-daemons', 'open-vm-tools']
    # As users read it: the report and the text lines.
    g2 = guest('guest-virtio')
    g2['linux']['tools'] = found
    s = gi.summary({'guests': [g2]})
    assert s['guest']['tools'] == {
        'vmware_tools': ['open-vm-tools', '/usr/bin/vmtoolsd'],
        'hyperv_daemons': ['hyperv-daemons', '/usr/sbin/hv_kvp_daemon']}
    assert 'tools:        /usr/bin/vmtoolsd, /usr/sbin/hv_kvp_daemon, ' \
        'hyperv-daemons, open-vm-tools' in gi.text_lines(s)
    # Neither is a guest agent KVM talks to.
    assert 'hw_qemu_guest_agent' not in s['properties']
    # VMware Tools from VMware's own package, found by its files only.
    g = FakeAppsG([], {'/etc/vmware-tools'})
    assert probe.tools(g, '/dev/sda1')[0]['vmware_tools'] == [
        '/etc/vmware-tools']


def test_fix_text_rewrites_names_and_drops_xen_consoles():
    text = ('# /dev/xvda1 was the root\n'
            '/dev/xvda1 / ext4 defaults 0 1\n'
            '/dev/xvda2 none swap sw 0 0\n'
            'UUID=abcd /data ext4 defaults 0 2\n'
            '/dev/sdb1 /srv ext4 defaults 0 2\n')
    new, changes = probe.fix_text(FakeG(), text, 'scsi', False)
    assert new == ('# /dev/xvda1 was the root\n'
                   'UUID=aaaa-1111 / ext4 defaults 0 1\n'
                   '/dev/sda2 none swap sw 0 0\n'
                   'UUID=abcd /data ext4 defaults 0 2\n'
                   '/dev/sdb1 /srv ext4 defaults 0 2\n')
    assert changes == [('/dev/xvda1', 'UUID=aaaa-1111'),
                       ('/dev/xvda2', '/dev/sda2')]
    cfg = ('  linux /vmlinuz root=/dev/xvda1 ro console=hvc0 '
           'console=ttyS0 xencons=tty quiet\n')
    new, changes = probe.fix_text(FakeG(), cfg, 'scsi', True)
    assert new == '  linux /vmlinuz root=UUID=aaaa-1111 ro console=ttyS0 ' \
        'quiet\n'
    assert ('console=hvc0', '') in changes
    # On virtio-blk, sd names would not exist either.
    new, _changes = probe.fix_text(FakeG(), '/dev/sdb1 /srv ext4\n',
                                   'virtio', False)
    assert new == '/dev/vdb1 /srv ext4\n'


GRUB_CFG_TWO_ENTRIES = (
    "menuentry 'Debian' {\n"
    '\tlinux /vmlinuz root=/dev/xvda1 ro\n'
    '\tinitrd /initrd.img\n'
    '}\n'
    "menuentry 'Custom kernel, no initrd' {\n"
    '\tlinux /vmlinuz-custom root=/dev/xvda1 ro\n'
    '}\n')


def test_a_boot_entry_without_an_initrd_gets_a_name_its_kernel_finds():
    """UUID= is resolved by an initramfs; a kernel booted without one
    finds its root by a device name only: that entry gets the bus's name,
    the other UUID=."""
    new, changes = probe.fix_text(FakeG(), GRUB_CFG_TWO_ENTRIES, 'scsi', True,
                                  path='/boot/grub/grub.cfg')
    assert new == GRUB_CFG_TWO_ENTRIES.replace(
        'root=/dev/xvda1 ro\n\tinitrd', 'root=UUID=aaaa-1111 ro\n\tinitrd'
    ).replace('custom root=/dev/xvda1', 'custom root=/dev/sda1')
    assert changes == [('/dev/xvda1', 'UUID=aaaa-1111'),
                       ('/dev/xvda1', '/dev/sda1')]
    menu = ('default 0\ntitle Old\n\tkernel /vmlinuz root=/dev/xvda1\n'
            'title New\n\tkernel /vmlinuz-2 root=/dev/xvda1\n'
            '\tinitrd /initrd-2\n')
    assert probe.initrdless_lines('/boot/grub/menu.lst',
                                  menu.splitlines(True)) == {2}
    ext = ('LABEL a\n  KERNEL /vmlinuz\n  APPEND root=/dev/xvda1 '
           'initrd=/initrd.img\nLABEL b\n  KERNEL /vmlinuz\n'
           '  APPEND root=/dev/xvda1\n')
    assert probe.initrdless_lines('/boot/extlinux/extlinux.conf',
                                  ext.splitlines(True)) == {5}
    bls = 'title x\nlinux /vmlinuz\noptions root=/dev/xvda1\n'
    assert probe.initrdless_lines('/boot/loader/entries/x.conf',
                                  bls.splitlines(True)) == {2}
    assert probe.initrdless_lines('/boot/loader/entries/x.conf', (
        bls + 'initrd /initrd\n').splitlines(True)) == set()
    assert probe.initrdless_lines('/etc/default/grub', [
        'GRUB_CMDLINE_LINUX="root=/dev/xvda1"\n']) == set()


@pytest.mark.parametrize('line, fixed', [
    ('GRUB_CMDLINE_LINUX_DEFAULT="console=hvc0"\n',
     'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\n'),
    ('GRUB_CMDLINE_LINUX_DEFAULT="quiet console=hvc0"\n',
     'GRUB_CMDLINE_LINUX_DEFAULT="quiet console=ttyS0"\n'),
    ('GRUB_CMDLINE_LINUX="quiet xencons=tty"\n',
     'GRUB_CMDLINE_LINUX="quiet"\n'),
    ("GRUB_CMDLINE_LINUX='console=hvc0,115200n8 ro'\n",
     "GRUB_CMDLINE_LINUX='console=ttyS0 ro'\n"),
    # A serial console there already: the Xen one only goes.
    ('GRUB_CMDLINE_LINUX="console=hvc0 console=ttyS0,115200"\n',
     'GRUB_CMDLINE_LINUX=" console=ttyS0,115200"\n'),
    ('GRUB_CMDLINE_LINUX="console=xvc0 xencons=xvc console=hvc0"\n',
     'GRUB_CMDLINE_LINUX="console=ttyS0"\n'),
])
def test_a_xen_console_becomes_the_serial_one_in_its_quotes(line, fixed):
    """/etc/default/grub is a shell file that update-grub sources: the
    Xen console becomes ttyS0 (the console Nova logs, which the boot
    proof reads), or goes where the line has a serial console; its quotes
    stay (the file still parses)."""
    text = 'GRUB_DEFAULT=0\n' + line + 'GRUB_TIMEOUT=5\n'
    new, changes = probe.fix_text(FakeG(), text, 'scsi', True)
    assert new == 'GRUB_DEFAULT=0\n' + fixed + 'GRUB_TIMEOUT=5\n'
    assert [c[0] for c in changes] == XEN_ARGS.findall(line)
    # bash reads it, with every variable as it should be.
    out = subprocess.run(['bash', '-c', new + 'echo "$GRUB_TIMEOUT"'],
                         capture_output=True, text=True, check=True)
    assert out.stdout == '5\n' and not out.stderr


#: The Xen consoles in the lines above, as an independent pattern.
XEN_ARGS = re.compile(r'console=(?:hvc|xvc)0(?:,115200n8)?|xencons=\w+')


def test_fix_bus_follows_the_table():
    g = guest('guest-virtio')
    assert probe.fix_bus(g) == 'scsi'
    g['linux']['kernels'][0]['modules']['virtio_scsi'] = 'module'
    assert probe.fix_bus(g) == 'virtio'
    assert probe.fix_bus(guest('guest-novirtio')) == 'scsi'


# -- running the probe -----------------------------------------------------

def _fake_python(tmp_path, body):
    """An interpreter stand-in: a script that ignores its arguments."""
    path = tmp_path / 'fakepython'
    path.write_text('#!/bin/sh\n' + body + '\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_run_probe_reads_the_json(tmp_path):
    data = tmp_path / 'out.json'
    data.write_text(json.dumps(recorded()))
    s = gi.Settings(python=_fake_python(tmp_path, 'cat %s' % data))
    assert gi.run_probe(s, ['disk.raw'])['guests'][0]['hostname'] == \
        'guest-virtio'
    cmd = gi.command(s, ['d.raw'])
    assert cmd[1] == gi.PROBE
    assert cmd[2:] == ['--backend', 'direct', '--backend-setting',
                       'force_tcg', '--format', 'raw', 'inspect', 'd.raw']


def test_missing_binding_says_what_to_install(tmp_path):
    s = gi.Settings(python=_fake_python(
        tmp_path, 'echo \'{"error": "no libguestfs Python binding", '
        '"missing": "guestfs"}\'; exit 3'))
    with pytest.raises(exception.InspectionError) as e:
        gi.run_probe(s, ['disk.raw'])
    assert str(e.value) == (
        'disk.raw: guest inspection: no libguestfs Python binding; install '
        'libguestfs-tools and python3-guestfs (bindep profile "inspect"), '
        'or give --no-inspect')
    s = gi.Settings(python=str(tmp_path / 'nowhere' / 'python3'))
    with pytest.raises(exception.InspectionError) as e:
        gi.run_probe(s, ['disk.raw'])
    assert 'not found ([any2kvm] guestfs_python)' in str(e.value)


def test_the_real_probe_without_the_binding_is_one_line(tmp_path):
    # The virtualenv's interpreter has no guestfs binding.
    import sys
    try:
        import guestfs  # noqa: F401
        pytest.skip('this interpreter has the guestfs binding')
    except ImportError:
        pass
    s = gi.Settings(python=sys.executable)
    with pytest.raises(exception.InspectionError) as e:
        gi.run_probe(s, ['disk.raw'])
    assert 'no libguestfs Python binding for' in str(e.value)
    assert '\n' not in str(e.value)


def test_probe_garbage_and_timeout(tmp_path):
    s = gi.Settings(python=_fake_python(
        tmp_path, 'echo boom >&2; echo not json; exit 1'))
    with pytest.raises(exception.InspectionError) as e:
        gi.run_probe(s, ['disk.raw'])
    assert 'the probe failed (exit 1): boom' in str(e.value)
    s = gi.Settings(python=_fake_python(tmp_path, 'exec sleep 60'),
                    timeout=1)
    start = time.monotonic()
    with pytest.raises(exception.InspectionError) as e:
        gi.run_probe(s, ['disk.raw'])
    assert 'no answer within 1 s' in str(e.value)
    assert time.monotonic() - start < 50


def test_appliance_failure_suggests_force_tcg(tmp_path):
    s = gi.Settings(python=_fake_python(
        tmp_path, 'echo \'{"error": "libguestfs appliance: launch '
        'failed"}\'; exit 2'), backend_settings='')
    with pytest.raises(exception.InspectionError) as e:
        gi.run_probe(s, ['disk.raw'])
    assert 'guestfs_backend_settings = force_tcg' in str(e.value)


def test_enabled(monkeypatch):
    monkeypatch.delenv(gi.ENV, raising=False)
    assert gi.enabled(None) == (True, False)
    assert gi.enabled(True) == (True, True)
    assert gi.enabled(False) == (False, False)
    monkeypatch.setenv(gi.ENV, '0')
    assert gi.enabled(None) == (False, False)
    assert gi.enabled(True) == (True, True)


def test_fix_failure_is_a_fix_error_naming_what_it_tried(tmp_path):
    s = gi.Settings(python=_fake_python(
        tmp_path, 'echo \'{"error": "stopped", "tried": ["/etc/fstab"]}\';'
        ' exit 2'))
    with pytest.raises(exception.GuestFixError) as e:
        gi.run_probe(s, ['disk.raw'], fix=True)
    assert str(e.value) == 'disk.raw: guest fix: stopped; it had ' \
        'changed: /etc/fstab'


def test_probe_is_standalone():
    # probe.py runs under another interpreter: the standard library and
    # guestfs only, nothing of the project.
    text = Path(probe.__file__).read_text()
    assert 'any2kvm_os' not in ''.join(
        line for line in text.splitlines(True)
        if line.startswith(('import ', 'from ')))
    assert os.path.basename(gi.PROBE) == 'probe.py'


def test_fix_bus_of_windows():
    g = windows()['guests'][0]
    assert probe.fix_bus(g) == 'sata'
    services = g['windows']['control_sets']['ControlSet001']['services']
    services['viostor'] = {'group': 'virtio', 'start': 0}
    assert probe.fix_bus(g) == 'virtio'


def test_registry_fixes_are_reported():
    result = windows()
    result['fixed'] = [{'root': '/dev/sda1', 'disk': 0, 'bus': 'sata',
                        'files': [], 'registry': [
                            'ControlSet001\\Services\\xenbus\\Start: 0 -> '
                            '4 (disabled)']}]
    s = gi.summary(result)
    assert s['fixed'][0]['registry']
    assert 'fixed:        SYSTEM hive: ControlSet001\\Services\\xenbus\\' \
        'Start: 0 -> 4 (disabled)' in gi.text_lines(s)


def test_disabled_citrix_services_are_not_warned_of():
    """A Xen service disabled (Start 4, by --fix or by hand) cannot stop
    the boot: no warning; one whose StartOverride still starts it is."""
    result = windows()
    services = result['guests'][0]['windows']['control_sets'][
        'ControlSet001']['services']
    for name, svc in services.items():
        if svc['group'] == 'citrix':
            svc['start'] = 4
    text = '\n'.join(gi.warnings(result['guests'][0]))
    assert 'Citrix XenServer PV driver services' not in text
    services['xenvbd']['start_override'] = {'0': 0}
    text = '\n'.join(gi.warnings(result['guests'][0]))
    assert 'ControlSet001: Citrix XenServer PV driver services xenvbd: ' \
        'they can stop Windows booting on KVM (--fix disables them)' in text


# -- the library: import_vm hands the guest's properties to the target ----

class _Disk(object):
    chain = object()
    name = 'd0'


class _Vm(object):
    path = 'vm.ova'

    def __init__(self):
        self.facts = {'name': 'vm'}
        self.disks = [_Disk()]

    def close(self):
        pass


def test_import_vm_inspects_before_a_cloud_target_writes(monkeypatch):
    from any2kvm_os import api
    from any2kvm_os.targets import base as targets
    seen = {}

    class Target(targets.Target):
        takes_properties = True

        def __init__(self, **kw):
            pass

        def write(self, vm, name, props, disk=None, progress=None):
            seen['facts'] = dict(vm.facts)
            return [{'disk': 0, 'name': name, 'id': 'x',
                     'properties': properties.image_properties(
                         vm.facts, 1 << 30, overrides=props)}]
    summary = gi.summary(recorded())
    monkeypatch.setattr(targets, 'get_class', lambda name: Target)
    monkeypatch.setattr(api, 'open_location', lambda *a, **k: _Vm())
    monkeypatch.setattr(api, 'inspect_vm', lambda vm, limits, disk: summary)
    monkeypatch.delenv(gi.ENV, raising=False)
    _facts, results = api.import_vm('vm.ova', 'glance', 'vm', None,
                                    props={'hw_vif_model': 'e1000'})
    assert seen['facts']['guest_properties']['hw_disk_bus'] == 'scsi'
    # The image's properties: the guest's, then --property.
    assert results[0]['properties']['hw_vif_model'] == 'e1000'
    assert results[0]['properties']['hw_qemu_guest_agent'] == 'yes'
    assert results[0]['guest']['hostname'] == 'guest-virtio'
    assert results[0]['reasons']['hw_disk_bus']


def test_import_vm_warns_and_goes_on_when_inspection_fails(monkeypatch,
                                                           caplog):
    from any2kvm_os import api
    from any2kvm_os.targets import base as targets

    class Target(targets.Target):
        def __init__(self, **kw):
            pass

        def write(self, vm, name, props, disk=None, progress=None):
            return [{'disk': 0, 'name': name, 'properties':
                     properties.image_properties(vm.facts, 1 << 30)}]

    def fail(vm, limits, disk):
        raise exception.InspectionError(path='vm.ova', reason='no binding')
    monkeypatch.setattr(targets, 'get_class', lambda name: Target)
    monkeypatch.setattr(api, 'open_location', lambda *a, **k: _Vm())
    monkeypatch.setattr(api, 'inspect_vm', fail)
    monkeypatch.delenv(gi.ENV, raising=False)
    _facts, results = api.import_vm('vm.ova', 'glance', 'vm', None)
    assert results[0]['properties']['hw_disk_bus'] == 'scsi'
    assert 'vm.ova: guest inspection: no binding' in caplog.text

    class Args(object):
        inspect = True
        fix = False
    with pytest.raises(exception.InspectionError):
        api.import_vm('vm.ova', 'glance', 'vm', None, args=Args())


def test_zstd_initramfs(tmp_path):
    import shutil
    import subprocess
    if not shutil.which('zstd'):
        pytest.skip('no zstd program')
    raw = _cpio(['lib/modules/6.1/kernel/drivers/block/virtio_blk.ko'])
    packed = subprocess.run(['zstd', '-q', '-c'], input=raw,
                            capture_output=True, check=True,
                            timeout=60).stdout
    assert probe.cpio_names(packed) == [
        'lib/modules/6.1/kernel/drivers/block/virtio_blk.ko']


def test_an_unread_initramfs_assumes_the_modules_on_disk():
    g = guest('guest-novirtio')
    g['linux']['kernels'][0]['initramfs_error'] = 'zstd: not found'
    props, reasons = properties.guest_properties(g)
    assert props['hw_disk_bus'] == 'scsi'
    assert 'initramfs not read: zstd: not found' in reasons['hw_disk_bus']


# -- Windows disks and the UEFI guest, as the real appliance saw them --------

def disks():
    """The probe's output for the Windows test disks (win2019,
    win2019-store, win7-x86 of tests/lib/winbuild.py) and the uefi Linux
    guest, inspected together."""
    return json.loads((DATA / 'probe-windows-disks.json').read_text())


def disk_guest(hostname):
    for g in disks()['guests']:
        if g['hostname'] == hostname:
            return g
    raise AssertionError(hostname)


def test_windows_on_a_dynamic_disk_is_said_so():
    """A system volume on a dynamic disk (LDM, which libguestfs names
    /dev/mapper/ldm_vol_...): not "no NTFS or FAT partition", but what
    it is, and that it is not supported."""
    from any2kvm_os.guest import probe

    class G(object):
        def list_partitions(self):
            raise AssertionError('every disk searched')
    root = '/dev/mapper/ldm_vol_WIN-8c7a9b2Dg0-Volume1'
    guest = {'root': root, 'disk': probe.disk_index(root),
             'type': 'windows'}
    bcd = probe.windows_bcd(G(), guest)
    assert bcd == {'found': False, 'searched': [], 'dynamic_disk': True}
    guest['windows'] = {'bcd': bcd}
    (warning,) = gi.bcd_warnings(guest)
    assert warning.startswith('the Windows system volume %s is on a '
                              'dynamic disk (LDM), which is not supported'
                              % root), warning


def test_a_bcd_naming_the_windows_partition_warns_nothing():
    g = disk_guest('WIN2019-XEN')
    assert g['windows']['bcd']['names_system_partition'] is True
    assert gi.bcd_warnings(g) == []


def test_a_stale_bcd_and_a_missing_one_warn_with_the_step_to_take():
    (w,) = gi.bcd_warnings(disk_guest('WIN2019-STORE'))
    assert w.startswith('BCD /dev/sdb1:/Boot/BCD: its default entry '
                        '{6b9e2f15-1c40-11ea-9c4d-806e6f6e6963} (Windows '
                        'Server 2019 Datacenter) does not name the Windows '
                        'partition /dev/sdb2 (disk signature 2ee6b3c1, '
                        'offset 9437184)')
    assert w.endswith('"bcdboot C:\\Windows"')
    (w,) = gi.bcd_warnings(disk_guest('WIN7-X86'))
    assert w.startswith('no BCD found (/dev/sdc1:/Boot/BCD, /dev/sdc1:/EFI/'
                        'Microsoft/Boot/BCD, /dev/sdc2:/Boot/BCD, ')


def test_bcd_that_cannot_be_read_or_has_no_device():
    g = disk_guest('WIN2019-XEN')
    bcd = g['windows']['bcd']
    bcd['error'] = 'no default boot entry (boot manager element 23000003)'
    (w,) = gi.bcd_warnings(g)
    assert w.startswith('BCD /dev/sda1:/Boot/BCD could not be checked: no '
                        'default boot entry')
    del bcd['error']
    bcd['names_system_partition'] = None
    (w,) = gi.bcd_warnings(g)
    assert 'has no device element to check' in w
    # A guest inspected before the BCD was read: no warning about it.
    del g['windows']['bcd']
    assert gi.bcd_warnings(g) == []


def test_a_32_bit_windows_guest():
    g = disk_guest('WIN7-X86')
    props, _why = properties.guest_properties(g)
    assert props['architecture'] == 'i686'
    assert props['os_version'] == '6.1'
    assert [w for w in gi.warnings(g) if w.startswith('32-bit guest (i386)')]
    assert not [w for w in gi.warnings(disk_guest('WIN2019-XEN'))
                if '32-bit' in w]


def test_a_vioscsi_in_the_driver_store_only():
    g = disk_guest('WIN2019-STORE')
    props, why = properties.guest_properties(g)
    assert props['hw_disk_bus'] == 'ide'
    assert props['hw_vif_model'] == 'e1000'
    assert 'vioscsi.inf_amd64_' in why['hw_disk_bus']
    assert [w for w in gi.warnings(g) if w.startswith(
        'vioscsi is in the driver store but not installed as a service')]


def test_text_lines_of_a_windows_guest():
    lines = gi.text_lines(gi.summary({'guests': [disk_guest('WIN2019-XEN')]}))
    text = '\n'.join(lines)
    assert 'windows:      build 17763 (ServerStandard), /Windows' in lines
    assert [ln for ln in lines if ln.startswith(
        'registry:     ControlSet001 (current): virtio none; citrix ')]
    assert 'filters upperfilters partmgr,xenfilt' in text
    assert 'driverstore:  no virtio driver' in lines
    assert ('bcd:          /dev/sda1:/Boot/BCD default '
            '{6b9e2f15-1c40-11ea-9c4d-806e6f6e6963} (Windows Server 2019 '
            'Standard), names the Windows partition: yes') in lines
    assert 'property:     hw_disk_bus=ide (no virtio storage service ' \
        'starting at boot; storahci (AHCI) does not start at boot (Start 3; ' \
        '--fix makes it); IDE is built into Windows)' in lines, lines


def test_the_uefi_guest_as_inspected():
    g = disk_guest('guest-uefi')
    assert g['firmware'] == 'uefi'
    props, why = properties.guest_properties(g)
    assert props['hw_firmware_type'] == 'uefi'
    assert props['hw_machine_type'] == 'q35'
    assert why['hw_machine_type'] == 'UEFI guest'
    assert props['hw_disk_bus'] == 'scsi'
