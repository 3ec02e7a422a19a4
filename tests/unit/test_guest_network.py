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

"""A Linux guest's network after the move: its configuration names the
Xen NIC (eth0, or enX0 with systemd 250 and later), which a KVM guest's
PCI NIC is not called (ens3, enp1s0) unless the kernel keeps its own
names (net.ifnames=0)."""

from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe
from tests.lib.fakeguestfs import FilesG


DEBIAN = {
    '/etc/network/interfaces': (
        '# The primary network interface\n'
        'auto lo\niface lo inet loopback\n'
        'allow-hotplug enX0\niface enX0 inet static\n'
        '    address 192.0.2.10/24\n'),
    '/boot/grub/grub.cfg': (
        "menuentry 'Debian' {\n"
        '    linux /boot/vmlinuz root=UUID=x ro quiet\n'
        '    initrd /boot/initrd.img\n}\n'),
}

REDHAT = {
    '/etc/sysconfig/network-scripts/ifcfg-eth0': (
        'DEVICE=eth0\nHWADDR=aa:00:00:00:00:01\nBOOTPROTO=none\n'
        'IPADDR=192.0.2.11\n# HWADDR=kept as a comment\n'),
    '/etc/sysconfig/network-scripts/ifcfg-lo': 'DEVICE=lo\n',
    '/etc/udev/rules.d/70-persistent-net.rules': (
        'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", '
        'ATTR{address}=="aa:00:00:00:00:01", KERNEL=="eth*", '
        'NAME="eth0"\n'),
    '/etc/default/grub': 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="rhgb quiet"\n',
}


def test_facts_name_the_xen_nic_the_mac_binding_and_the_pinning():
    net = probe.network_facts(FilesG(DEBIAN))
    assert net == {'files': [{'path': '/etc/network/interfaces',
                              'names': ['enX0'], 'mac_bound': False,
                              'mac_match': False}],
                   'pinned': [], 'ifnames_off': False}
    net = probe.network_facts(FilesG(REDHAT))
    assert net['files'] == [{
        'path': '/etc/sysconfig/network-scripts/ifcfg-eth0',
        'names': ['eth0'], 'mac_bound': True, 'mac_match': False}]
    assert net['pinned'] == ['eth0']
    # Already told to keep the kernel's names: eth0 will be eth0.
    off = dict(REDHAT)
    off['/etc/default/grub'] = 'GRUB_CMDLINE_LINUX="net.ifnames=0"\n'
    assert probe.network_facts(FilesG(off))['ifnames_off'] is True


def test_kernel_arguments_go_on_every_kind_of_kernel_line():
    arg = ['net.ifnames=0']

    def add(path, line):
        return probe.add_kernel_args(path, line, arg)
    assert add('/boot/grub/grub.cfg', '\tlinux /vmlinuz root=x ro\n') == (
        '\tlinux /vmlinuz root=x ro net.ifnames=0\n', arg)
    assert add('/boot/efi/EFI/debian/grub.cfg',
               '  linuxefi /vmlinuz ro\n')[0] == \
        '  linuxefi /vmlinuz ro net.ifnames=0\n'
    assert add('/boot/grub/grub.cfg', '\tinitrd /initrd.img\n') == (
        '\tinitrd /initrd.img\n', [])
    assert add('/etc/default/grub', 'GRUB_CMDLINE_LINUX="rhgb quiet"\n') \
        == ('GRUB_CMDLINE_LINUX="rhgb quiet net.ifnames=0"\n', arg)
    assert add('/etc/default/grub', 'GRUB_CMDLINE_LINUX=""\n')[0] == \
        'GRUB_CMDLINE_LINUX="net.ifnames=0"\n'
    assert add('/etc/default/grub', 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
               ) == ('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n', [])
    assert add('/boot/grub/menu.lst', 'kernel /vmlinuz-2.6 ro root=x\n')[0] \
        == 'kernel /vmlinuz-2.6 ro root=x net.ifnames=0\n'
    assert add('/boot/extlinux/extlinux.conf', '  APPEND root=x\n')[0] == \
        '  APPEND root=x net.ifnames=0\n'
    assert add('/boot/loader/entries/a.conf', 'options root=x ro\n')[0] == \
        'options root=x ro net.ifnames=0\n'
    assert add('/etc/kernel/cmdline', 'root=x ro\n')[0] == \
        'root=x ro net.ifnames=0\n'
    # A line that says net.ifnames already keeps what it says.
    assert add('/boot/grub/grub.cfg', 'linux /v net.ifnames=1\n') == (
        'linux /v net.ifnames=1\n', [])


def test_network_files_are_renamed_and_unbound_from_the_mac():
    new, changes = probe.fix_net_text(DEBIAN['/etc/network/interfaces'])
    assert 'allow-hotplug eth0\niface eth0 inet static\n' in new
    assert new.startswith('# The primary network interface\n')
    assert changes == [('enX0', 'eth0'), ('enX0', 'eth0')]
    path = '/etc/sysconfig/network-scripts/ifcfg-eth0'
    new, changes = probe.fix_net_text(REDHAT[path])
    assert new == ('DEVICE=eth0\nBOOTPROTO=none\nIPADDR=192.0.2.11\n'
                   '# HWADDR=kept as a comment\n')
    assert changes == [('HWADDR=aa:00:00:00:00:01', '')]
    # NetworkManager's keyfile.
    new, changes = probe.fix_net_text(
        '[connection]\nid=enX0\ninterface-name=enX0\n[ethernet]\n'
        'mac-address=AA:00:00:00:00:01\n')
    assert new == '[connection]\nid=eth0\ninterface-name=eth0\n' \
        '[ethernet]\n'


def test_warnings_until_fixed():
    guest = {'type': 'linux', 'root': '/dev/sda1', 'linux': {
        'disk_names': [], 'kernels': [],
        'network': probe.network_facts(FilesG(REDHAT))}}
    out = gi.network_warnings(guest['linux']['network'])
    assert len(out) == 3, out
    assert 'ifcfg-eth0 names eth0, the Xen NIC' in out[0]
    assert 'binds its interface to the Xen NIC\'s MAC' in out[1]
    assert '70-persistent-net.rules pins eth0' in out[2]
    fixed = [{'root': '/dev/sda1', 'files': [
        {'path': '/etc/default/grub', 'changes': [
            {'from': '', 'to': 'net.ifnames=0'}]},
        {'path': '/etc/sysconfig/network-scripts/ifcfg-eth0', 'changes': [
            {'from': 'HWADDR=aa:00:00:00:00:01', 'to': ''}]},
        {'path': probe.PERSISTENT_NET, 'changes': [
            {'from': probe.PERSISTENT_NET,
             'to': probe.PERSISTENT_NET + '.any2kvm-disabled'}]}]}]
    gi._apply_fixes(guest, fixed)
    assert gi.network_warnings(guest['linux']['network']) == []
    summary = gi.summary({'guests': [guest], 'fixed': fixed})
    text = '\n'.join(gi.text_lines(summary))
    assert 'fixed:        /etc/default/grub: added net.ifnames=0' in text
    assert 'network:      /etc/sysconfig/network-scripts/ifcfg-eth0: eth0' \
        in text


def test_lvm_devices_file_is_reported():
    g = FilesG({probe.LVM_DEVICES: (
        '# LVM uses devices listed in this file.\n'
        'VERSION=1.1.2\n'
        'IDTYPE=devname IDNAME=/dev/xvda2 DEVNAME=/dev/xvda2 '
        'PVID=abc PART=2\n')})
    assert probe.lvm_devices(g) == ['/dev/xvda2']
    assert probe.lvm_devices(FilesG({})) is None
    guest = {'type': 'linux', 'linux': {'disk_names': [], 'kernels': [],
                                        'lvm_devices': ['/dev/xvda2']}}
    assert any('system.devices lists the disks LVM may use by their ids '
               'under Xen (/dev/xvda2)' in w for w in gi.warnings(guest))
    # What --fix leaves: among the summary's "not fixed" lines too.
    assert any('system.devices lists the disks' in w
               for w in gi.left_after_fix(guest))
    # lvm.conf says LVM does not use the file: nothing to say.
    for conf in ('devices {\n\tuse_devicesfile = 0\n}\n',
                 'devices/use_devicesfile=0\n'):
        g.files['/etc/lvm/lvm.conf'] = conf.encode()
        assert probe.lvm_devices(g) is None, conf
    g.files['/etc/lvm/lvm.conf'] = b'devices {\n# use_devicesfile = 0\n' \
        b'\tuse_devicesfile = 1\n}\n'
    assert probe.lvm_devices(g) == ['/dev/xvda2']


def test_xenserver_guest_tools_are_told_to_go():
    guest = {'type': 'linux', 'linux': {'disk_names': [], 'kernels': [],
                                        'tools': {'xe_guest_utilities': [
                                            'xe-guest-utilities',
                                            '/usr/sbin/xe-daemon']}}}
    assert any('XenServer guest tools are installed (xe-guest-utilities, '
               '/usr/sbin/xe-daemon)' in w for w in gi.warnings(guest))


def test_a_file_bound_by_mac_alone_keeps_its_binding():
    """A NetworkManager profile that finds its NIC by MAC only: dropping
    the MAC would make it match every NIC, so the fix leaves it and the
    warning says what to do."""
    text = ('[connection]\nid=Wired\n[ethernet]\n'
            'mac-address=AA:00:00:00:00:01\n')
    g = FilesG({'/etc/NetworkManager/system-connections/w.nmconnection':
                text})
    net = probe.network_facts(g)
    assert net['files'][0]['names'] == [] and net['files'][0]['mac_bound']
    assert probe.fix_net_text(text, unbind=False) == (text, [])
    out = gi.network_warnings(net)
    assert len(out) == 1 and 'by the Xen NIC\'s MAC alone' in out[0]
    assert '--keep-macs' in out[0]


NETPLAN = {
    # cloud-init's netplan on XenServer: the stanza chooses its NIC by
    # the MAC, and names it.
    '/etc/netplan/50-cloud-init.yaml': (
        'network:\n  version: 2\n  ethernets:\n    enX0:\n'
        '      match:\n        macaddress: "aa:00:00:00:00:01"\n'
        '      set-name: enX0\n      dhcp4: true\n'),
    '/etc/systemd/network/10-lan.network': (
        '[Match]\nMACAddress=aa:00:00:00:00:02\n\n[Network]\nDHCP=yes\n'),
}


def test_a_match_on_the_mac_is_reported_before_and_after_the_fix():
    net = probe.network_facts(FilesG(NETPLAN))
    assert [(f['path'], f['names'], f['mac_match']) for f in net['files']] \
        == [('/etc/netplan/50-cloud-init.yaml', ['enX0'], True),
            ('/etc/systemd/network/10-lan.network', [], True)]
    guest = {'type': 'linux', 'linux': {'network': net}}
    said = [w for w in gi.warnings(guest) if 'by the Xen NIC\'s MAC (' in w]
    assert said == [
        '%s chooses its interface by the Xen NIC\'s MAC (macaddress:, '
        'MACAddress=), which changes on KVM: keep the MAC (--keep-macs), or '
        'change the match; --fix leaves it' % p for p in sorted(NETPLAN)]
    # What --fix does to it: the name, not the match; so it is left.
    new, changes = probe.fix_net_text(NETPLAN['/etc/netplan/50-cloud-init'
                                              '.yaml'])
    assert 'macaddress: "aa:00:00:00:00:01"' in new
    assert changes == [('enX0', 'eth0'), ('enX0', 'eth0')]
    assert gi.left_after_fix(guest)[-2:] == said
