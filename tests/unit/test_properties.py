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

from any2kvm_os import properties

GiB = 1 << 30

VMWARE_VM = {
    'name': 'web01', 'cpus': 4, 'cores_per_socket': 2, 'memory_mb': 4096,
    'firmware': 'uefi', 'nics': [{'model': 'vmxnet3', 'network': 'VM'}],
    'os': {'cim_id': 94, 'vmware_os_type': 'ubuntu64Guest',
           'description': 'Ubuntu Linux (64-bit)'},
}


def test_vmware_vm():
    p = properties.image_properties(VMWARE_VM, 10 * GiB + 1)
    assert p == {
        'hw_scsi_model': 'virtio-scsi', 'hw_disk_bus': 'scsi',
        'min_disk': 11, 'os_distro': 'ubuntu', 'os_type': 'linux',
        'hw_firmware_type': 'uefi', 'hw_cpu_sockets': '2',
        'hw_cpu_cores': '2', 'min_ram': 4096, 'architecture': 'x86_64',
        'hw_vif_model': 'vmxnet3'}


def test_windows_xenserver_vm_with_secure_boot():
    vm = {'cpus': 2, 'cores_per_socket': 2, 'memory_mb': 8192,
          'firmware': 'uefi', 'secure_boot': True,
          'nics': [{'device': '0', 'mac': 'aa:bb'}],
          'os': {'distro': 'windows',
                 'description': 'Microsoft Windows Server 2019'}}
    p = properties.image_properties(vm, 40 * GiB)
    assert p['os_type'] == 'windows' and p['os_distro'] == 'windows'
    assert p['os_secure_boot'] == 'required'
    assert p['hw_machine_type'] == 'q35'
    assert p['hw_cpu_sockets'] == '1' and p['hw_cpu_cores'] == '2'
    assert 'hw_vif_model' not in p  # a Xen PV NIC has no KVM twin
    assert p['min_disk'] == 40
    # Not looked inside: not virtio-scsi, which Windows has no driver
    # for of its own; IDE, which it was installed on, but for Secure
    # Boot's q35 (no IDE there): SATA.
    assert p['hw_disk_bus'] == 'sata' and 'hw_scsi_model' not in p
    plain = dict(vm, secure_boot=False)
    p2 = properties.image_properties(plain, 40 * GiB)
    assert p2['hw_disk_bus'] == 'ide' and 'hw_scsi_model' not in p2
    # IDE needs the i440fx machine: a cloud whose default is q35 would
    # fail the spawn.
    assert p2['hw_machine_type'] == 'pc'
    # What inspection found wins.
    vm['guest_properties'] = {'hw_disk_bus': 'scsi',
                              'hw_scsi_model': 'virtio-scsi'}
    p = properties.image_properties(vm, 40 * GiB)
    assert (p['hw_disk_bus'], p['hw_scsi_model']) == ('scsi', 'virtio-scsi')


def test_ide_asked_by_the_user_gets_the_machine_that_has_it():
    p = properties.image_properties({}, GiB,
                                    overrides={'hw_disk_bus': 'ide'})
    assert (p['hw_disk_bus'], p['hw_machine_type']) == ('ide', 'pc')
    p = properties.image_properties({}, GiB, overrides={
        'hw_disk_bus': 'ide', 'hw_machine_type': 'q35'})
    assert p['hw_machine_type'] == 'q35'        # the user's, as given


def test_bare_disk_gets_defaults_only():
    assert properties.image_properties({}, 1) == {
        'hw_scsi_model': 'virtio-scsi', 'hw_disk_bus': 'scsi',
        'min_disk': 1}


def test_overrides_and_no_defaults():
    p = properties.image_properties(VMWARE_VM, GiB, defaults=False,
                                    overrides={'hw_disk_bus': 'virtio'})
    assert p == {'hw_disk_bus': 'virtio'}
    p = properties.image_properties(VMWARE_VM, GiB,
                                    overrides={'os_distro': 'debian'})
    assert p['os_distro'] == 'debian' and p['hw_scsi_model'] == 'virtio-scsi'


def test_odd_topology_is_not_guessed():
    vm = {'cpus': 3, 'cores_per_socket': 2}
    p = properties.image_properties(vm, GiB)
    assert 'hw_cpu_sockets' not in p and 'hw_cpu_cores' not in p


def test_distro_words():
    for words, distro in (('windows9Server64Guest', 'windows'),
                          ('rhel8_64Guest', 'rhel'),
                          ('centos7_64Guest', 'centos'),
                          ('sles15_64Guest', 'sles'),
                          ('otherLinux64Guest', None)):
        vm = {'os': {'vmware_os_type': words}}
        assert properties.guess_distro(vm) == distro, words


def test_xen_vm_without_nic_model_gets_one_its_guest_has_a_driver_for():
    """XenServer (xe, XVA) names no NIC model: without inspection the
    virtualization mode decides (doc: the bus and NIC table)."""
    from any2kvm_os.sources.xenserver import discovery
    nic = {'device': '0', 'mac': 'aa:bb'}

    def vm(policy, distro, domain_type=''):
        facts, _cpus, _notes = discovery.vm_facts({
            'name-label': 'vm', 'HVM-boot-policy': policy,
            'domain-type': domain_type}, osv={'distro': distro})
        facts['nics'] = [dict(nic)]
        return facts
    hvm_linux = vm('BIOS order', 'debian')
    assert hvm_linux['virtualization'] == 'hvm'
    assert properties.image_properties(hvm_linux, GiB)['hw_vif_model'] == \
        'rtl8139'
    assert properties.image_properties(vm('BIOS order', 'windows'), GiB)[
        'hw_vif_model'] == 'e1000'
    pv = vm('', 'debian')
    assert pv['virtualization'] == 'pv'
    assert properties.image_properties(pv, GiB)['hw_vif_model'] == 'e1000'
    assert properties.image_properties(vm('', 'debian', 'pvh'), GiB)[
        'hw_vif_model'] == 'e1000'
    # A model the source names wins; no NIC, nothing; the user wins.
    hvm_linux['nics'][0]['model'] = 'e1000e'
    assert properties.image_properties(hvm_linux, GiB)['hw_vif_model'] == \
        'e1000e'
    pv['nics'] = []
    assert 'hw_vif_model' not in properties.image_properties(pv, GiB)
    assert properties.image_properties(
        vm('', 'debian'), GiB, overrides={'hw_vif_model': 'virtio'})[
        'hw_vif_model'] == 'virtio'
