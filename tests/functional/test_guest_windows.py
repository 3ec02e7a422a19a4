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

"""The Windows registry reading and fixing of the probe, on a real hive.

No Windows image exists here: the SYSTEM hive is made by hivex
(tests/lib/winhive.py: an empty hive written to the documented layout,
then ``hivexregedit --merge`` of a .reg file) with the Citrix XenServer PV
drivers' services, an UpperFilters naming xenfilt, the IDE entries and two
ControlSets.  The probe's ``hive`` command reads and fixes it with the
hivex binding (the same code reads it through guestfs in the appliance);
the hive is exported before and after the fix and compared: only the
intended keys change.
"""

import json
import shutil
import subprocess

import pytest

from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe
from any2kvm_os import properties
from tests.lib.tools import missing_tool
from tests.lib import winhive

CITRIX = ('xenbus', 'xenfilt', 'xenvbd', 'xennet', 'xenvif', 'xeniface')
CSETS = ('ControlSet001', 'ControlSet002')
DISK_CLASS = '{4d36e967-e325-11ce-bfc1-08002be10318}'


@pytest.fixture(scope='module')
def hivex_python():
    python = gi.Settings().python
    r = subprocess.run([python, '-c', 'import hivex'], capture_output=True,
                       timeout=60)
    if r.returncode != 0 or not shutil.which('hivexregedit'):
        missing_tool('python3-hivex (for %s) and libhivex-bin are needed'
                     % python)
    return python


def probe_hive(python, path, *extra):
    r = subprocess.run([python, gi.PROBE, 'hive'] + list(extra) +
                       [str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def parse_reg(text):
    """{key (lower case): {value name: data}} of a .reg export."""
    keys = {}
    current = None
    for line in text.splitlines():
        if line.startswith('[') and line.endswith(']'):
            current = keys.setdefault(line[1:-1].rstrip('\\').lower(), {})
        elif '=' in line and current is not None:
            name, _sep, data = line.partition('=')
            current[name] = data
    return keys


def test_an_empty_hive_is_valid(hivex_python, tmp_path):
    path = tmp_path / 'EMPTY'
    path.write_bytes(winhive.empty_hive())
    out = probe_hive(hivex_python, path)
    assert out == {'control_sets': {}, 'current_control_set': None,
                   'default_control_set': None, 'rtc_utc': None}


def test_reading_the_system_hive(hivex_python, tmp_path):
    path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg())
    facts = probe_hive(hivex_python, path)
    assert facts['current_control_set'] == 'ControlSet001'
    assert sorted(facts['control_sets']) == list(CSETS)
    for cset in CSETS:
        found = facts['control_sets'][cset]
        services = found['services']
        assert sorted(n for n, s in services.items()
                      if s['group'] == 'citrix') == sorted(CITRIX)
        assert services['xenbus']['start'] == 0
        assert services['storahci']['start'] == 3
        assert found['filters'] == [{'class': DISK_CLASS,
                                     'value': 'upperfilters',
                                     'names': ['partmgr', 'xenfilt']}]
        assert found['ide_entries'] == ['pci#ven_8086&dev_7010',
                                        'primary_ide_channel',
                                        'secondary_ide_channel']
    guest = {'type': 'windows', 'distro': 'windows', 'major_version': 10,
             'minor_version': 0, 'arch': 'x86_64', 'firmware': 'bios',
             'product_name': 'Windows Server 2019 Standard', 'disk': 0,
             'root': '/dev/sda2', 'windows': dict(facts, driver_store=[])}
    props, reasons = properties.guest_properties(guest)
    # storahci is there with Start 3 (installed on IDE): IDE, not AHCI.
    assert props['hw_disk_bus'] == 'ide'
    assert props['hw_vif_model'] == 'e1000'
    warnings = gi.warnings(guest)
    assert ('Windows Server 2019 Standard without a virtio storage driver: '
            'hw_disk_bus=ide; install virtio-win before migrating to get '
            'virtio-scsi') in warnings
    assert any('Citrix XenServer PV driver services' in w
               for w in warnings)


def test_virtio_services_choose_virtio_scsi(hivex_python, tmp_path):
    path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg(
        extra_services=(('vioscsi', 0), ('netkvm', 3))))
    facts = probe_hive(hivex_python, path)
    guest = {'type': 'windows', 'windows': facts}
    props, reasons = properties.guest_properties(guest)
    assert props['hw_disk_bus'] == 'scsi'
    assert props['hw_scsi_model'] == 'virtio-scsi'
    assert props['hw_vif_model'] == 'virtio'


def test_the_fix_changes_only_the_intended_keys(hivex_python, tmp_path):
    before_path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg())
    after_path = tmp_path / 'SYSTEM.fixed'
    shutil.copy(str(before_path), str(after_path))
    out = probe_hive(hivex_python, after_path, '--fix-bus', 'sata')
    assert len(out['fixed']) == 2 * (len(CITRIX) + 2)
    before = parse_reg(winhive.export(before_path))
    after = parse_reg(winhive.export(after_path))
    top = 'hkey_local_machine\\system\\'
    # Nothing removed, nothing added: the Xen services disabled in place.
    assert set(before) == set(after)
    changed = {(k, name) for k in after for name in after[k]
               if before[k].get(name) != after[k][name]}
    assert changed == {
        (top + '%s\\control\\class\\%s' % (c.lower(), DISK_CLASS),
         '"UpperFilters"') for c in CSETS} | {
        (top + '%s\\services\\storahci' % c.lower(), '"Start"')
        for c in CSETS} | {
        (top + '%s\\services\\%s' % (c.lower(), s), '"Start"')
        for c in CSETS for s in CITRIX}
    assert {after[top + '%s\\services\\%s' % (c.lower(), s)]['"Start"']
            for c in CSETS for s in CITRIX} == {'dword:00000004'}
    facts = probe_hive(hivex_python, after_path)
    for cset in CSETS:
        found = facts['control_sets'][cset]
        assert found['filters'] == []
        assert found['services']['storahci']['start'] == 0
        assert probe.citrix_active(found['services']) == []
    # A second fix finds nothing to do.
    assert probe_hive(hivex_python, after_path, '--fix-bus',
                      'sata')['fixed'] == []


def test_every_xen_driver_is_disabled_not_only_the_known_ones(
        hivex_python, tmp_path):
    """Newer XenServer VM Tools add xendisk (a disk filter) and xencons;
    the report names every xen* service, and the fix removes them all,
    from the services and from the class filters: a filter whose driver
    cannot start fails the devices of its class, the boot disk's."""
    reg = winhive.system_reg(extra_services=(('xendisk', 0),
                                             ('xencons', 3)))
    for cset in CSETS:
        reg += ('\n[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Control\\Class\\%s]\n'
                '"LowerFilters"=hex(7):%s\n' % (
                    cset, DISK_CLASS, winhive._multi_sz(
                        ['xendisk', 'EhStorClass'])))
        # A StartOverride wins over Start: disabled too.
        reg += ('\n[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Services\\xendisk\\'
                'StartOverride]\n"0"=dword:00000000\n' % cset)
        # Not a service (no Type): xen.sys's parameters, left alone.
        reg += ('\n[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Services\\XEN\\'
                'ForceUnplug]\n"DISKS"=dword:00000001\n' % cset)
    path = winhive.build(tmp_path / 'SYSTEM', reg)
    facts = probe_hive(hivex_python, path)
    found = facts['control_sets'][CSETS[0]]
    assert {'xendisk', 'xencons'} <= {
        n.lower() for n, s in found['services'].items()
        if s['group'] == 'citrix'}
    out = probe_hive(hivex_python, path, '--fix-bus', 'sata')
    assert '%s\\Services\\xendisk\\Start: 0 -> 4 (disabled)' % CSETS[0] \
        in out['fixed']
    assert '%s\\Services\\xencons\\Start: 3 -> 4 (disabled)' % CSETS[0] \
        in out['fixed']
    assert '%s\\Services\\xendisk\\StartOverride\\0: 0 -> 4' % CSETS[0] \
        in out['fixed']
    assert ('%s\\Control\\Class\\%s\\LowerFilters: xendisk,EhStorClass '
            '-> EhStorClass' % (CSETS[0], DISK_CLASS)) in out['fixed']
    facts = probe_hive(hivex_python, path)
    for cset in CSETS:
        found = facts['control_sets'][cset]
        assert found['filters'] == []
        # Disabled, not deleted (the tools' uninstaller finds them).
        citrix = {n.lower(): s['start'] for n, s in
                  found['services'].items() if s['group'] == 'citrix'}
        assert {'xendisk', 'xencons'} <= set(citrix)
        assert set(citrix.values()) == {4}, citrix
        assert probe.citrix_active(found['services']) == []
        assert found['services']['xendisk']['start_override'] == {'0': 4}
        assert 'xen' not in found['services']
    assert not [c for c in out['fixed'] if 'Services\\XEN' in c]
    # Fixed again: nothing left to change.
    assert probe_hive(hivex_python, path, '--fix-bus', 'sata')[
        'fixed'] == []


def test_a_vm_of_several_disks_gets_them_online_at_boot(hivex_python,
                                                        tmp_path):
    """Server editions leave a disk found on a new SCSI bus offline (SAN
    policy "offline shared"): with data disks, the fix sets the policy
    to bring every disk online (partmgr\\Parameters\\SanPolicy = 1), the
    Parameters key made where it is missing; with one disk it is left."""
    before_path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg(
        extra_services=(('partmgr', 0),)))
    one = tmp_path / 'SYSTEM.one'
    shutil.copy(str(before_path), str(one))
    assert not any('SanPolicy' in c for c in probe_hive(
        hivex_python, one, '--fix-bus', 'sata', '--disks', '1')['fixed'])
    after_path = tmp_path / 'SYSTEM.two'
    shutil.copy(str(before_path), str(after_path))
    out = probe_hive(hivex_python, after_path, '--fix-bus', 'sata',
                     '--disks', '2')
    assert sorted(c for c in out['fixed'] if 'SanPolicy' in c) == [
        '%s\\Services\\partmgr\\Parameters\\SanPolicy: unset -> 1' % c
        for c in CSETS]
    before = parse_reg(winhive.export(before_path))
    after = parse_reg(winhive.export(after_path))
    top = 'hkey_local_machine\\system\\'
    assert set(after) - set(before) == {
        top + '%s\\services\\partmgr\\parameters' % c.lower()
        for c in CSETS}
    for c in CSETS:
        assert after[top + '%s\\services\\partmgr\\parameters' % c.lower()
                     ] == {'"SanPolicy"': 'dword:00000001'}
    # Done once.
    assert not any('SanPolicy' in c for c in probe_hive(
        hivex_python, after_path, '--fix-bus', 'sata', '--disks',
        '2')['fixed'])


def test_storahcis_start_override_is_cleared_too(hivex_python, tmp_path):
    """Windows 8 and Server 2012 on: storahci's StartOverride\\0 = 3 (a
    system installed on IDE) wins over Start = 0; Microsoft's switch to
    AHCI sets it to 0."""
    reg = winhive.system_reg() + ''.join(
        '[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Services\\storahci\\'
        'StartOverride]\n"0"=dword:00000003\n\n' % c for c in CSETS)
    path = winhive.build(tmp_path / 'SYSTEM', reg)
    out = probe_hive(hivex_python, path, '--fix-bus', 'sata')
    assert sorted(c for c in out['fixed'] if 'StartOverride' in c) == [
        '%s\\Services\\storahci\\StartOverride\\0: 3 -> 0' % c
        for c in CSETS]
    after = parse_reg(winhive.export(path))
    for c in CSETS:
        assert after['hkey_local_machine\\system\\%s\\services\\storahci'
                     '\\startoverride' % c.lower()] == {
            '"0"': 'dword:00000000'}
    assert not any('StartOverride' in c for c in probe_hive(
        hivex_python, path, '--fix-bus', 'sata')['fixed'])


def test_vmware_pvscsi_and_vmxnet3_services(hivex_python, tmp_path):
    """A guest from VMware: pvscsi and vmxnet3 are read, grouped as
    vmware, told in the text report, and left alone by the fix."""
    vmware = (('pvscsi', 0), ('vmxnet3ndis6', 3), ('vmci', 0))
    path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg(
        extra_services=vmware))
    facts = probe_hive(hivex_python, path)
    for cset in CSETS:
        services = facts['control_sets'][cset]['services']
        assert {n: (s['group'], s['start']) for n, s in services.items()
                if s['group'] == 'vmware'} == {
            'pvscsi': ('vmware', 0), 'vmxnet3ndis6': ('vmware', 3),
            'vmci': ('vmware', 0)}
    lines = gi.windows_lines(facts)
    assert any('vmware pvscsi (start 0), vmci (start 0), vmxnet3ndis6 '
               '(start 3)' in line for line in lines), lines
    # No virtio driver: pvscsi does not make a virtio bus.
    props, _reasons = properties.guest_properties(
        {'type': 'windows', 'windows': facts})
    assert props['hw_disk_bus'] == 'ide'
    assert props['hw_vif_model'] == 'e1000'
    fixed = probe_hive(hivex_python, path, '--fix-bus', 'sata')
    assert not any('pvscsi' in c or 'vmxnet3' in c or 'vmci' in c
                   for c in fixed['fixed'])
    services = probe_hive(hivex_python, path)['control_sets'][
        'ControlSet001']['services']
    assert services['pvscsi']['start'] == 0


#: What the probe reports of winhive.NET_ADAPTERS: the static adapter,
#: the one with static DNS servers on DHCP, and the odd one (its
#: non-contiguous mask kept, its address without a mask alone, its
#: 0.0.0.0 entries and gateway dropped); not the adapter on DHCP alone.
STATIC = {'guid': '{5a0e2c4b-1d3f-4e6a-8b7c-9d0e1f2a3b4c}',
          'name': 'Ethernet 2',
          'description': 'XenServer PV Network Device #0', 'dhcp': False,
          'addresses': ['192.0.2.5/24', '198.51.100.7/25'],
          'gateways': ['192.0.2.1'], 'dns': ['192.0.2.53', '192.0.2.54']}
DNS_ONLY = {'guid': '{7C2A4E6D-3F5B-4A8C-8D9E-1F2A3B4C5D6E}',
            'name': 'Ethernet 4',
            'description': 'XenServer PV Network Device #2', 'dhcp': True,
            'addresses': [], 'gateways': [],
            'dns': ['192.0.2.53', '192.0.2.54']}
ODD = {'guid': '{8d3b5f7e-4a6c-4b9d-9e0f-2a3b4c5d6e7f}', 'name': None,
       'description': None, 'dhcp': False,
       'addresses': ['203.0.113.9/255.0.255.0', '203.0.113.10'],
       'gateways': [], 'dns': []}


def test_reading_the_static_ip_settings(hivex_python, tmp_path):
    """Windows binds its TCP/IP settings to the adapter (NetCfgInstanceId),
    not to the MAC: the probe reads them per ControlSet, with the
    adapter's DriverDesc and the connection's name."""
    old = list(winhive.NET_ADAPTERS[:1])
    old[0] = old[0][:4] + (dict(old[0][4], IPAddress=['192.0.2.4'],
                                SubnetMask=['255.255.255.0']),)
    path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg(network={
        'ControlSet001': winhive.NET_ADAPTERS, 'ControlSet002': old}))
    facts = probe_hive(hivex_python, path)
    sets = facts['control_sets']
    assert sets['ControlSet001']['network'] == [STATIC, DNS_ONLY, ODD]
    assert sets['ControlSet002']['network'] == [
        dict(STATIC, addresses=['192.0.2.4/24'])]
    # A hive without them reports none.
    path = winhive.build(tmp_path / 'PLAIN', winhive.system_reg())
    assert all(cs['network'] == [] for cs in probe_hive(
        hivex_python, path)['control_sets'].values())


def test_static_ip_settings_are_warned_about(hivex_python, tmp_path):
    """The current ControlSet's static settings are warned about, with
    the netsh commands that re-apply them to the new adapter, and shown
    in the text report; the other ControlSet's are in the JSON only."""
    old = [winhive.NET_ADAPTERS[3][:4] + (
        {'EnableDHCP': 0, 'IPAddress': ['192.0.2.99'],
         'SubnetMask': ['255.255.255.0']},)]
    path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg(network={
        'ControlSet001': winhive.NET_ADAPTERS, 'ControlSet002': old}))
    facts = probe_hive(hivex_python, path)
    guest = {'type': 'windows', 'product_name': 'Windows Server 2019',
             'windows': dict(facts, driver_store=[])}
    warnings = [w for w in gi.warnings(guest) if 'DNS' in w or 'IPv4' in w]
    new = 'name="<new adapter>"'
    assert warnings == [
        'the connection "Ethernet 2" (XenServer PV Network Device #0) has '
        'static IPv4 settings: 192.0.2.5/24, 198.51.100.7/25, gateway '
        '192.0.2.1, DNS 192.0.2.53, 192.0.2.54; Windows binds them to that '
        'adapter, not to its MAC, so the new NIC on KVM starts on DHCP: '
        're-apply them in the guest after the move (netsh interface ipv4 '
        'set address %s static 192.0.2.5 255.255.255.0 192.0.2.1; netsh '
        'interface ipv4 add address %s 198.51.100.7 255.255.255.128; netsh '
        'interface ipv4 set dnsservers %s static 192.0.2.53 primary; netsh '
        'interface ipv4 add dnsservers %s 192.0.2.54 index=2), or reserve '
        'these addresses for the new NIC on the DHCP server (Neutron: a '
        'port with these fixed IPs, on a subnet with DHCP)'
        % (new, new, new, new),
        'the connection "Ethernet 4" (XenServer PV Network Device #2) has '
        'static DNS servers 192.0.2.53, 192.0.2.54: Windows binds them to '
        'that adapter, so the new NIC on KVM uses the DHCP server\'s '
        'instead; re-apply them in the guest after the move (netsh '
        'interface ipv4 set dnsservers %s static 192.0.2.53 primary; netsh '
        'interface ipv4 add dnsservers %s 192.0.2.54 index=2)' % (new, new),
        'the interface {8d3b5f7e-4a6c-4b9d-9e0f-2a3b4c5d6e7f} has static '
        'IPv4 settings: 203.0.113.9/255.0.255.0, 203.0.113.10; Windows '
        'binds them to that adapter, not to its MAC, so the new NIC on KVM '
        'starts on DHCP: re-apply them in the guest after the move (netsh '
        'interface ipv4 set address %s static 203.0.113.9 255.0.255.0; '
        'netsh interface ipv4 add address %s 203.0.113.10 <mask>), or '
        'reserve these addresses for the new NIC on the DHCP server '
        '(Neutron: a port with these fixed IPs, on a subnet with DHCP)'
        % (new, new)]
    assert not any('192.0.2.99' in w for w in gi.warnings(guest))
    lines = [line for line in gi.windows_lines(guest['windows'])
             if line.startswith('network:')]
    assert lines == [
        'network:      Ethernet 2 (XenServer PV Network Device #0): static '
        '192.0.2.5/24, 198.51.100.7/25, gateway 192.0.2.1, DNS 192.0.2.53, '
        '192.0.2.54',
        'network:      Ethernet 4 (XenServer PV Network Device #2): DHCP, '
        'DNS 192.0.2.53, 192.0.2.54',
        'network:      {8d3b5f7e-4a6c-4b9d-9e0f-2a3b4c5d6e7f}: static '
        '203.0.113.9/255.0.255.0, 203.0.113.10']
    report = gi.report(guest)
    assert report['windows']['control_sets']['ControlSet002'][
        'network'][0]['addresses'] == ['192.0.2.99/24']


def _hex(data):
    return ','.join('%02x' % b for b in data)


def _raw_value(export, cset, klass, name):
    """The bytes of ``name`` (a hex(7) value) of ``klass`` in an
    exported hive."""
    key = 'hkey_local_machine\\system\\%s\\control\\class\\%s' % (
        cset.lower(), klass)
    text = parse_reg(export)[key]['"%s"' % name]
    assert text.startswith('hex(7):'), text
    digits = text[len('hex(7):'):].replace('\\', '').replace(' ', '')
    return bytes(int(b, 16) for b in digits.split(',') if b)


def test_a_filter_list_ends_where_windows_ends_it(hivex_python, tmp_path):
    """REG_MULTI_SZ ends at its empty string: bytes after it (a longer
    value's leftovers) are not filters, and the fix does not bring them
    back to life; the names it keeps are written back byte for byte,
    whatever they hold (an unpaired surrogate), and an odd last byte
    is not read as a name."""
    system = '{4d36e97d-e325-11ce-bfc1-08002be10318}'
    hdc = '{4d36e96a-e325-11ce-bfc1-08002be10318}'
    cdrom = '{4d36e965-e325-11ce-bfc1-08002be10318}'
    stale = 'XENFILT\0\0oldfilt\0\0'.encode('utf-16-le')
    odd = 'xenfilt\0\0'.encode('utf-16-le') + b'\xfd'
    odd_name = b'\x00\xd8' + 'x'.encode('utf-16-le')    # a lone surrogate
    kept = odd_name + b'\0\0' + 'xenfilt\0\0'.encode('utf-16-le')
    reg = winhive.system_reg()
    for cset in CSETS:
        top = 'HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Control\\Class' % cset
        reg += ('\n[%s\\%s]\n"UpperFilters"=hex(7):%s\n'
                '\n[%s\\%s]\n"UpperFilters"=hex(7):%s\n'
                '\n[%s\\%s]\n"LowerFilters"=hex(7):%s\n' % (
                    top, system, _hex(stale), top, hdc, _hex(odd),
                    top, cdrom, _hex(kept)))
    path = winhive.build(tmp_path / 'SYSTEM', reg)
    facts = probe_hive(hivex_python, path)
    filters = {(f['class'], f['value'].lower()): f['names'] for f in
               facts['control_sets'][CSETS[0]]['filters']}
    assert filters[(system, 'upperfilters')] == ['XENFILT']
    assert filters[(hdc, 'upperfilters')] == ['xenfilt']
    assert filters[(cdrom, 'lowerfilters')] == ['\ufffdx', 'xenfilt']
    out = probe_hive(hivex_python, path, '--fix-bus', 'sata')
    assert '%s\\Control\\Class\\%s\\UpperFilters: XENFILT -> ' % (
        CSETS[0], system) in out['fixed'], out['fixed']
    export = winhive.export(path)
    for cset in CSETS:
        assert _raw_value(export, cset, system, 'UpperFilters') == \
            b'\0\0'
        assert _raw_value(export, cset, hdc, 'UpperFilters') == b'\0\0'
        assert _raw_value(export, cset, cdrom, 'LowerFilters') == \
            odd_name + b'\0\0\0\0'


def test_the_old_citrix_disk_filter_goes_with_the_rest(hivex_python,
                                                       tmp_path):
    """scsifilt, the disk filter of the Citrix tools before 7.x (over
    xenutil, which goes as a xen* service): reported, and removed from
    the disk class's filters and the services, as XCP-ng's XenBootFix
    removes it."""
    reg = winhive.system_reg(extra_services=(('scsifilt', 0),
                                             ('xenutil', 0)))
    for cset in CSETS:
        reg += ('\n[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Control\\Class\\%s]\n'
                '"LowerFilters"=hex(7):%s\n' % (
                    cset, DISK_CLASS, winhive._multi_sz(['scsifilt'])))
    path = winhive.build(tmp_path / 'SYSTEM', reg)
    found = probe_hive(hivex_python, path)['control_sets'][CSETS[0]]
    assert found['services']['scsifilt']['group'] == 'citrix'
    assert {'class': DISK_CLASS, 'value': 'lowerfilters',
            'names': ['scsifilt']} in found['filters']
    out = probe_hive(hivex_python, path, '--fix-bus', 'sata')
    assert '%s\\Services\\scsifilt\\Start: 0 -> 4 (disabled)' % CSETS[0] \
        in out['fixed']
    assert '%s\\Control\\Class\\%s\\LowerFilters: scsifilt -> ' % (
        CSETS[0], DISK_CLASS) in out['fixed']
    for cset in CSETS:
        found = probe_hive(hivex_python, path)['control_sets'][cset]
        assert found['filters'] == []
        assert found['services']['scsifilt']['start'] == 4


def test_a_start_that_is_no_dword_is_made_one(hivex_python, tmp_path):
    """storahci's Start as two bytes of REG_BINARY: reported as it is,
    and the fix writes the DWORD 0 (it raised a TypeError before)."""
    reg = winhive.system_reg() + ''.join(
        '[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Services\\storahci]\n'
        '"Start"=hex:03,00\n\n' % c for c in CSETS)
    path = winhive.build(tmp_path / 'SYSTEM', reg)
    found = probe_hive(hivex_python, path)['control_sets'][CSETS[0]]
    assert found['services']['storahci']['start'] == '0300'
    out = probe_hive(hivex_python, path, '--fix-bus', 'sata')
    assert '%s\\Services\\storahci\\Start: 0300 -> 0' % CSETS[0] in \
        out['fixed'], out['fixed']
    found = probe_hive(hivex_python, path)['control_sets'][CSETS[0]]
    assert found['services']['storahci']['start'] == 0


def test_a_start_override_is_reported_and_weighs_on_the_bus(
        hivex_python, tmp_path):
    """vioscsi installed on XenServer (Start 0, no device): Windows 8 on
    sets its StartOverride\\0 = 3, and will not start it at the next
    boot.  The report has it; the bus chosen without --fix is not
    virtio-scsi (the guest would stop with 0x7B), and the fix, which
    clears the override, may choose it."""
    reg = winhive.system_reg(extra_services=(('vioscsi', 0),
                                             ('storahci', 0))) + ''.join(
        '[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Services\\vioscsi\\'
        'StartOverride]\n"0"=dword:00000003\n\n' % c for c in CSETS)
    path = winhive.build(tmp_path / 'SYSTEM', reg)
    facts = probe_hive(hivex_python, path)
    vioscsi = facts['control_sets'][CSETS[0]]['services']['vioscsi']
    assert (vioscsi['start'], vioscsi['start_override']) == (0, {'0': 3})
    guest = {'type': 'windows', 'windows': facts}
    bus, model, why = properties.disk_bus(guest)
    assert (bus, model) == ('sata', None), why
    assert 'vioscsi' in why and 'StartOverride' in why, why
    assert properties.disk_bus(guest, fix=True)[:2] == ('scsi',
                                                        'virtio-scsi')
    out = probe_hive(hivex_python, path, '--fix-bus', 'scsi')
    assert '%s\\Services\\vioscsi\\StartOverride\\0: 3 -> 0' % CSETS[0] \
        in out['fixed']
    facts = probe_hive(hivex_python, path)
    assert properties.disk_bus({'type': 'windows', 'windows': facts})[
        :2] == ('scsi', 'virtio-scsi')


def test_the_qemu_guest_agent_service_is_read(hivex_python, tmp_path):
    """QEMU's guest agent (service qemu-ga, qga/service-win32.h) in the
    hive: reported, and hw_qemu_guest_agent is set from it."""
    path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg(
        extra_services=(('qemu-ga', 2),)))
    facts = probe_hive(hivex_python, path)
    assert facts['control_sets'][CSETS[0]]['services']['qemu-ga'][
        'group'] == 'tools'
    props, _reasons = properties.guest_properties(
        {'type': 'windows', 'windows': facts})
    assert props['hw_qemu_guest_agent'] == 'yes'


def test_a_clock_kept_in_utc_is_said(hivex_python, tmp_path):
    """RealTimeIsUniversal = 1 (the Xen PV drivers honour it): Nova gives
    a Windows guest a local-time clock, and the report says so."""
    path = winhive.build(tmp_path / 'SYSTEM', winhive.system_reg())
    assert probe_hive(hivex_python, path)['rtc_utc'] is False
    reg = winhive.system_reg() + (
        '[HKEY_LOCAL_MACHINE\\SYSTEM\\ControlSet001\\Control\\'
        'TimeZoneInformation]\n"RealTimeIsUniversal"=dword:00000001\n')
    path = winhive.build(tmp_path / 'SYSTEM.utc', reg)
    facts = probe_hive(hivex_python, path)
    assert facts['rtc_utc'] is True
    warnings = gi.windows_warnings({'type': 'windows', 'windows': facts})
    assert any(w.startswith('the guest keeps its hardware clock in UTC')
               for w in warnings), warnings


def test_a_start_override_that_is_no_dword(hivex_python, tmp_path):
    """A StartOverride value of another type (a REG_MULTI_SZ): it holds
    the driver back (Windows' reading of it is not known), the bus
    choice does not fail on it, and the fix writes the DWORD 0."""
    reg = winhive.system_reg(extra_services=(('storahci', 0),)) + ''.join(
        '[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Services\\storahci\\'
        'StartOverride]\n"0"=hex(7):%s\n\n' % (c, winhive._multi_sz(['3']))
        for c in CSETS)
    path = winhive.build(tmp_path / 'SYSTEM', reg)
    facts = probe_hive(hivex_python, path)
    guest = {'type': 'windows', 'windows': facts}
    bus, _model, why = properties.disk_bus(guest)
    assert bus == 'ide' and 'StartOverride' in why, why
    assert properties.disk_bus(guest, fix=True)[0] == 'sata'
    out = probe_hive(hivex_python, path, '--fix-bus', 'sata')
    assert "%s\\Services\\storahci\\StartOverride\\0: ['3'] -> 0" % (
        CSETS[0]) in out['fixed'], out['fixed']
    facts = probe_hive(hivex_python, path)
    assert properties.disk_bus({'type': 'windows', 'windows': facts})[
        0] == 'sata'
