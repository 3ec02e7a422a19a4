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

"""The UEFI fallback bootloader of a Windows guest: on KVM the firmware
starts with an empty NVRAM, so Windows' boot entry (\\EFI\\Microsoft\\Boot\\
bootmgfw.efi) is gone and only \\EFI\\Boot\\bootx64.efi runs.  The probe
finds it where the BCD is on the EFI system partition, the inspection
warns when it is missing, and --fix copies the boot manager there (the
same facts, warning and report as a Linux guest's fallback)."""

import copy
import json
from pathlib import Path

import pytest

from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe
from tests.lib.fakeguestfs import FilesG

DATA = Path(__file__).parent / 'data'
BOOTMGFW = b'MZ' + b'Windows Boot Manager test stand-in\r\n' * 8
OTHER = b'MZ another bootloader, not to be replaced\r\n'
BCD = b'regf test stand-in'


def esp_files(fallback=None, bootmgr=True):
    """The files of an EFI system partition as Windows' bcdboot writes
    them (names in the case it uses)."""
    files = {'/EFI/Microsoft/Boot/BCD': BCD,
             '/EFI/Microsoft/Boot/en-US/bootmgfw.efi.mui': b'mui',
             '/EFI/Microsoft/Boot/bootmgr.efi': b'MZ bootmgr'}
    if bootmgr:
        files['/EFI/Microsoft/Boot/bootmgfw.efi'] = BOOTMGFW
    if fallback:
        files[fallback] = OTHER
    return files


class DiskG(FilesG):
    """A Windows guest's disk: {partition: (filesystem, files)}; the
    partition mounted at / is the one whose files are seen (and written:
    the same dict).  The BCD is no hive here (hivex_open fails, as it
    does on a damaged one)."""

    def __init__(self, parts):
        FilesG.__init__(self, {})
        self.parts = {}
        for part, (fs, files) in parts.items():
            made = FilesG(files)
            self.parts[part] = (fs, made.files, made.dirs)
        self.mounts = []

    def list_partitions(self):
        return sorted(self.parts)

    def vfs_type(self, part):
        return self.parts[part][0]

    def _mount(self, part, mp, how):
        assert mp == '/'
        self.mounts.append((how, part))
        _fs, self.files, self.dirs = self.parts[part]

    def mount_ro(self, part, mp):
        self._mount(part, mp, 'ro')

    def mount(self, part, mp):
        self._mount(part, mp, 'rw')

    def umount_all(self):
        self.files, self.dirs = {}, set()

    def hivex_open(self, path, write=False):
        raise RuntimeError('hivex_open: %s: not a hive' % path)

    def part_to_dev(self, part):
        raise RuntimeError('part_to_dev: not in this fake')


def uefi_disk(**kw):
    return DiskG({'/dev/sda1': ('vfat', esp_files(**kw)),
                  '/dev/sda2': ('unknown', {}),
                  '/dev/sda3': ('ntfs', {'/Windows/System32/cmd.exe': 'x'})})


def probed(g):
    """What inspect_root records: windows_bcd's facts, and the fallback's
    taken out of them."""
    bcd = probe.windows_bcd(g, {'root': '/dev/sda3', 'disk': 0})
    return bcd, bcd.pop('uefi_fallback', None)


# -- the probe ----------------------------------------------------------------

def test_the_fallback_is_found_beside_the_bcd_on_the_esp():
    bcd, facts = probed(uefi_disk(fallback='/EFI/Boot/bootx64.efi'))
    assert bcd['found'] is True
    assert (bcd['partition'], bcd['path']) == (
        '/dev/sda1', '/EFI/Microsoft/Boot/BCD')
    assert facts == {'present': True, 'source': '/EFI/Microsoft/Boot',
                     'files': ['bootmgfw.efi'], 'partition': '/dev/sda1'}
    # Names match without regard to case, as on FAT.
    _bcd, facts = probed(uefi_disk(fallback='/EFI/BOOT/BOOTX64.EFI'))
    assert facts['present'] is True


def test_a_missing_fallback_and_a_missing_boot_manager():
    _bcd, facts = probed(uefi_disk())
    # Room: the boot manager's cluster, and one for \EFI\Boot to make.
    assert facts == {'present': False, 'source': '/EFI/Microsoft/Boot',
                     'files': ['bootmgfw.efi'], 'partition': '/dev/sda1',
                     'needed': 2 * 4096, 'free': 100 << 20}
    _bcd, facts = probed(uefi_disk(bootmgr=False))
    assert facts == {'present': False, 'source': None, 'files': [],
                     'partition': '/dev/sda1'}
    # A boot manager larger than the bound is not one to copy.
    g = uefi_disk()
    g.parts['/dev/sda1'][1]['/EFI/Microsoft/Boot/bootmgfw.efi'] = bytes(
        probe.MAX_BOOTMGR + 1)
    assert probed(g)[1]['source'] is None


def test_a_bios_bcd_has_no_fallback_facts():
    g = DiskG({'/dev/sda1': ('ntfs', {'/Boot/BCD': BCD, '/bootmgr': 'x'}),
               '/dev/sda2': ('ntfs', {'/Windows/System32/cmd.exe': 'x'})})
    bcd, facts = probed(g)
    assert bcd['path'] == '/Boot/BCD' and facts is None
    # Nor a BCD at the EFI path on NTFS: not an EFI system partition.
    g = DiskG({'/dev/sda1': ('ntfs', esp_files())})
    bcd, facts = probed(g)
    assert bcd['path'] == '/EFI/Microsoft/Boot/BCD' and facts is None


def test_the_fix_copies_the_boot_manager_byte_for_byte():
    g = FilesG(esp_files())
    facts = probe.windows_uefi_fallback(g, '/dev/sda1')
    assert probe.fix_windows_uefi_fallback(g, facts) == [
        ('/EFI/Microsoft/Boot/bootmgfw.efi', '/EFI/Boot/bootx64.efi')]
    assert g.files['/EFI/Boot/bootx64.efi'] == BOOTMGFW
    assert g.writes == ['/EFI/Boot/bootx64.efi']
    assert probe.windows_uefi_fallback(g, '/dev/sda1')['present'] is True
    # Done once: a second run finds it and copies nothing.
    facts = probe.windows_uefi_fallback(g, '/dev/sda1')
    assert probe.fix_windows_uefi_fallback(g, facts) == []
    assert g.writes == ['/EFI/Boot/bootx64.efi']


def test_an_existing_bootx64_is_never_replaced():
    # Facts taken before another bootloader appeared (in whatever case
    # its directory is spelt): the fix looks again and leaves it.
    for fallback in ('/EFI/Boot/bootx64.efi', '/EFI/BOOT/BOOTX64.EFI'):
        g = FilesG(esp_files())
        facts = probe.windows_uefi_fallback(g, '/dev/sda1')
        assert facts['present'] is False
        g.files[fallback] = OTHER
        assert probe.fix_windows_uefi_fallback(g, facts) == []
        assert g.files[fallback] == OTHER and g.writes == []
        assert len([p for p in g.files if p.lower().startswith(
            '/efi/boot/')]) == 1
    # An upper-case BOOT directory holding something else gets the copy
    # in it, not a second directory.
    g = FilesG(dict(esp_files(), **{'/EFI/BOOT/fbx64.efi': 'x'}))
    facts = probe.windows_uefi_fallback(g, '/dev/sda1')
    assert probe.fix_windows_uefi_fallback(g, facts) == [
        ('/EFI/Microsoft/Boot/bootmgfw.efi', '/EFI/BOOT/bootx64.efi')]


def test_an_esp_without_room_for_the_boot_manager():
    """Said by the inspection's warning, and refused by the fix before it
    writes anything."""
    g = FilesG(dict(esp_files(), **{'/EFI/BOOT/fbx64.efi': 'x'}))
    g.free = 4096
    facts = probe.windows_uefi_fallback(g, '/dev/sda1')
    assert (facts['needed'], facts['free']) == (4096, 4096)
    g.free = 4095
    facts = probe.windows_uefi_fallback(g, '/dev/sda1')
    with pytest.raises(probe.ProbeError, match=r'the EFI system partition '
                       r'\(/dev/sda1\) has 0 KiB free and the UEFI '
                       r'fallback bootloader\'s copies need 4 KiB'):
        probe.fix_windows_uefi_fallback(g, facts)
    assert g.writes == [] and g.dirs == set()
    warned = gi.uefi_fallback_warning(_windows_guest('uefi', facts))
    assert warned.endswith(
        "--fix would copy Windows' boot manager "
        "\\EFI\\Microsoft\\Boot\\bootmgfw.efi there, but the EFI "
        "system partition (/dev/sda1) has 0 KiB free and the UEFI "
        "fallback bootloader's copies need 4 KiB: make room on it in the "
        "guest (--fix fails until then)"), warned


def test_nothing_to_copy_copies_nothing():
    g = FilesG(esp_files(bootmgr=False))
    facts = probe.windows_uefi_fallback(g, '/dev/sda1')
    assert probe.fix_windows_uefi_fallback(g, facts) == []
    assert probe.fix_windows_uefi_fallback(g, None) == []
    assert g.writes == []


def _windows_guest(firmware, facts):
    return {'root': '/dev/sda3', 'disk': 0, 'type': 'windows',
            'firmware': firmware, 'windows': {'uefi_fallback': facts}}


def test_fix_windows_mounts_the_esp_read_write_and_reports_the_copy():
    g = uefi_disk()
    _bcd, facts = probed(g)
    tried = []
    registry, files = probe.fix_windows(g, _windows_guest('uefi', facts),
                                        'sata', tried)
    assert registry == []
    assert files == [{'path': '/EFI/Boot/bootx64.efi', 'changes': [
        {'from': '/EFI/Microsoft/Boot/bootmgfw.efi',
         'to': '/EFI/Boot/bootx64.efi'}]}]
    assert g.mounts[-1] == ('rw', '/dev/sda1')
    assert g.parts['/dev/sda1'][1]['/EFI/Boot/bootx64.efi'] == BOOTMGFW
    assert tried == [probe.WINDOWS_FALLBACK]


def test_fix_windows_leaves_bios_present_and_nothing_to_copy_alone():
    cases = (('bios', {}), ('uefi', {'fallback': '/EFI/Boot/bootx64.efi'}),
             ('uefi', {'bootmgr': False}))
    for firmware, kw in cases:
        g = uefi_disk(**kw)
        _bcd, facts = probed(g)
        before = copy.deepcopy(g.parts)
        mounted = len(g.mounts)
        tried = []
        assert probe.fix_windows(g, _windows_guest(firmware, facts), 'sata',
                                 tried) == ([], []), (firmware, kw)
        assert g.parts == before and tried == [], (firmware, kw)
        assert g.mounts[mounted:] == [], (firmware, kw)


def test_fix_windows_stops_where_the_tests_say():
    g = uefi_disk()
    _bcd, facts = probed(g)
    with pytest.raises(probe.ProbeError) as e:
        probe.fix_windows(g, _windows_guest('uefi', facts), 'sata', [],
                          fail_after=0)
    assert 'fix stopped after 0 file(s)' in str(e.value)
    assert '/EFI/Boot/bootx64.efi' not in g.parts['/dev/sda1'][1]


# -- the inspection: warning, fix report, what is left ------------------------

def windows_guest(firmware='uefi', **facts):
    """The recorded Windows Server 2019 guest, as if UEFI."""
    data = json.loads((DATA / 'probe-windows-disks.json').read_text())
    (g,) = [g for g in data['guests'] if g['hostname'] == 'WIN2019-XEN']
    g['firmware'] = firmware
    g['windows']['uefi_fallback'] = dict(
        {'present': False, 'source': '/EFI/Microsoft/Boot',
         'files': ['bootmgfw.efi'], 'partition': '/dev/sda1'}, **facts)
    return g


def fallback_warnings(summary):
    return [w for w in summary['warnings'] if 'UEFI fallback' in w]


def test_a_missing_fallback_is_warned_of_with_what_fix_copies():
    s = gi.summary({'guests': [windows_guest()]})
    assert fallback_warnings(s) == [
        'no UEFI fallback bootloader (\\EFI\\Boot\\bootx64.efi) on the EFI '
        'system partition (/dev/sda1): the boot entry was in the VM\'s '
        'NVRAM under Xen, which does not move, and a new NVRAM finds '
        'nothing to boot; --fix copies Windows\' boot manager '
        '\\EFI\\Microsoft\\Boot\\bootmgfw.efi there']
    assert s['guest']['windows']['uefi_fallback']['present'] is False
    assert 'left' not in s


def test_after_the_fix_it_is_present_and_nothing_is_left():
    fixed = {'root': '/dev/sda2', 'disk': 0, 'bus': 'sata', 'registry': [],
             'files': [{'path': '/EFI/Boot/bootx64.efi', 'changes': [
                 {'from': '/EFI/Microsoft/Boot/bootmgfw.efi',
                  'to': '/EFI/Boot/bootx64.efi'}]}]}
    g = windows_guest()
    assert g['root'] == fixed['root']
    s = gi.summary({'guests': [g], 'fixed': [fixed]})
    assert fallback_warnings(s) == []
    assert s['guest']['windows']['uefi_fallback']['present'] is True
    assert not [x for x in s['left'] if 'UEFI' in x]
    assert s['fixed'] == [fixed]
    assert ('fixed:        /EFI/Boot/bootx64.efi: /EFI/Microsoft/Boot/'
            'bootmgfw.efi -> /EFI/Boot/bootx64.efi') in gi.text_lines(s)
    # A fix that copied nothing leaves the warning, and says so.
    s = gi.summary({'guests': [windows_guest()], 'fixed': [
        dict(fixed, files=[], registry=['x'])]})
    assert len(fallback_warnings(s)) == 1
    assert [x for x in s['left'] if 'UEFI fallback' in x]


def test_no_boot_manager_to_copy_says_to_run_bcdboot():
    g = windows_guest(source=None, files=[])
    (w,) = fallback_warnings(gi.summary({'guests': [g]}))
    assert w.endswith('; there is no \\EFI\\Microsoft\\Boot\\bootmgfw.efi '
                      'to copy either: run "bcdboot C:\\Windows /f UEFI" '
                      'in the guest before the move'), w
    s = gi.summary({'guests': [windows_guest(source=None, files=[])],
                    'fixed': []})
    assert s['left'] == [w]


def test_present_or_bios_warns_nothing():
    for g in (windows_guest(present=True), windows_guest('bios'),
              windows_guest('bios', source=None, files=[])):
        s = gi.summary({'guests': [g], 'fixed': []})
        assert fallback_warnings(s) == [] and s['left'] == [], g['firmware']
    # A guest inspected before the fallback was looked for.
    g = windows_guest()
    del g['windows']['uefi_fallback']
    assert fallback_warnings(gi.summary({'guests': [g]})) == []


def test_probe_facts_fix_and_summary_end_to_end():
    """The fake disk through the probe's facts, its fix, and the
    summary: the warning before, none and nothing left after."""
    g = uefi_disk()
    bcd, facts = probed(g)
    guest = windows_guest()
    guest['windows']['uefi_fallback'] = facts
    assert len(fallback_warnings(gi.summary({'guests': [guest]}))) == 1
    # (The SYSTEM hive's fix is other tests'.)
    no_hive = copy.deepcopy(guest)
    del no_hive['windows']['system_hive']
    registry, files = probe.fix_windows(g, no_hive, 'sata', [])
    assert files and registry == []
    result = {'guests': [guest], 'fixed': [{
        'root': guest['root'], 'disk': 0, 'bus': 'sata',
        'registry': registry, 'files': files}]}
    s = gi.summary(result)
    assert fallback_warnings(s) == [] and s['left'] == []
    # And what the disk holds agrees: the probe now finds it.
    g.mount_ro('/dev/sda1', '/')
    assert probe.windows_uefi_fallback(g, '/dev/sda1')['present'] is True
