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

"""Image properties from what a source tells about its virtual machine.

The properties go to the Glance image (and to a Cinder volume's image
metadata) so that Nova boots the guest with matching virtual hardware.
Defaults: ``hw_scsi_model=virtio-scsi`` and ``hw_disk_bus=scsi``; then what
the source says: OS type and distro, UEFI firmware, CPU topology, memory,
disk size, NIC model.  User properties override everything.
"""

import math
import re

DEFAULTS = {'hw_scsi_model': 'virtio-scsi', 'hw_disk_bus': 'scsi'}

#: Our NIC model names -> Nova's hw_vif_model values (libvirt/KVM).
VIF_MODELS = {'vmxnet3': 'vmxnet3', 'e1000': 'e1000', 'e1000e': 'e1000e',
              'pcnet32': 'pcnet', 'rtl8139': 'rtl8139', 'virtio': 'virtio',
              'ne2k_pci': 'ne2k_pci'}

#: Words found in VMware osType, XenServer distro names or OS
#: descriptions -> Glance's os_distro values, most specific first.
DISTROS = [
    ('windows', 'windows'), ('win', 'windows'), ('ubuntu', 'ubuntu'),
    ('debian', 'debian'), ('centos', 'centos'), ('rocky', 'rocky'),
    ('almalinux', 'almalinux'), ('rhel', 'rhel'), ('redhat', 'rhel'),
    ('red hat', 'rhel'), ('fedora', 'fedora'), ('opensuse', 'opensuse'),
    ('sles', 'sles'), ('suse', 'sles'), ('oracle', 'ol'),
    ('freebsd', 'freebsd'), ('netbsd', 'netbsd'), ('openbsd', 'openbsd'),
    ('solaris', 'opensolaris'), ('gentoo', 'gentoo'), ('arch', 'arch'),
]


def _os_words(vm):
    os_ = vm.get('os') or {}
    words = [os_.get(k) for k in ('vmware_os_type', 'distro',
                                  'description', 'template')]
    return ' '.join(w for w in words if isinstance(w, str)).lower()


def guess_distro(vm):
    words = _os_words(vm)
    for key, distro in DISTROS:
        if re.search(r'(^|[^a-z])%s' % re.escape(key), words):
            return distro
    return None


def image_properties(vm, virtual_size, defaults=True, overrides=None):
    """The properties for an image of a disk of ``virtual_size`` bytes of
    the VM described by ``vm`` (``any2kvm info``'s vm section)."""
    props = dict(DEFAULTS) if defaults else {}
    if defaults:
        props['min_disk'] = max(1, int(math.ceil(virtual_size / float(
            1 << 30))))
        distro = guess_distro(vm)
        if distro:
            props['os_distro'] = distro
            props['os_type'] = 'windows' if distro == 'windows' else 'linux'
        if vm.get('firmware') == 'uefi':
            props['hw_firmware_type'] = 'uefi'
            if vm.get('secure_boot'):
                props['os_secure_boot'] = 'required'
                props['hw_machine_type'] = 'q35'
        cpus = vm.get('cpus')
        cores = vm.get('cores_per_socket')
        if isinstance(cpus, int) and cpus > 0:
            if isinstance(cores, int) and 0 < cores <= cpus and \
                    cpus % cores == 0:
                props['hw_cpu_sockets'] = cpus // cores
                props['hw_cpu_cores'] = cores
        memory = vm.get('memory_mb')
        if isinstance(memory, int) and memory > 0:
            props['min_ram'] = memory
        os_type = (vm.get('os') or {}).get('vmware_os_type') or ''
        if '64' in os_type:
            props['architecture'] = 'x86_64'
        nics = vm.get('nics') or []
        model = VIF_MODELS.get((nics[0].get('model') or '') if nics else '')
        if model:
            props['hw_vif_model'] = model
    props.update(overrides or {})
    # Glance takes min_disk and min_ram as image attributes (integers),
    # the rest as string properties.
    return {k: (v if k in ('min_disk', 'min_ram') else str(v))
            for k, v in props.items()}
