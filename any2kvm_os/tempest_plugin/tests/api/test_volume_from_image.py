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

"""``openstack volume create --image`` with the any2kvm_os Cinder hook:
XenServer tgz, OVA and VHD images become bootable volumes holding the raw
disk, with the image properties KVM needs.

The volume's bytes are read back through Glance (os-volume_upload_image
to a raw image, then downloaded): the sample's raw disk, then zeros up to
the volume's size.
"""

from tempest import config
from tempest.lib import decorators

from any2kvm_os.tempest_plugin.tests.api import base

CONF = config.CONF


class VolumeFromImageTest(base.Any2KvmVolumeTest):

    def _check_volume_from_sample(self, name, disk_format,
                                  container_format):
        sample = self.sample(name)
        image = self.create_image_from_file(sample.path, disk_format,
                                            container_format)
        size_gib = max(CONF.any2kvm_samples.volume_size,
                       -(-sample.size // base.GiB))
        volume = self.create_volume_from_image(image['id'], size_gib)

        self.assertEqual('true', volume['bootable'])
        meta = volume.get('volume_image_metadata') or {}
        self.assertEqual(image['id'], meta.get('image_id'))
        self.assertEqual('virtio-scsi', meta.get('hw_scsi_model'),
                         'volume_image_metadata: %s' % meta)
        self.assertEqual('scsi', meta.get('hw_disk_bus'),
                         'volume_image_metadata: %s' % meta)

        upload_id = self.upload_volume_to_image(volume['id'])
        self.check_image_data(upload_id, sample.sha256, sample.size,
                              total=size_gib * base.GiB)

    @decorators.attr(type='smoke')
    @decorators.idempotent_id('7f115f4b-f438-4f60-9c9f-03bd419cae50')
    def test_volume_from_xenserver_tgz(self):
        self._check_volume_from_sample('xenserver_tgz', 'vhd', 'ovf')

    @decorators.attr(type='smoke')
    @decorators.idempotent_id('73b3ab7f-5188-4578-9e13-beeda562ca4b')
    def test_volume_from_ova(self):
        self._check_volume_from_sample('ova', 'vmdk', 'ova')

    @decorators.attr(type='smoke')
    @decorators.idempotent_id('8671bb9e-c204-44e1-b7e9-f86d14466713')
    def test_volume_from_vhd(self):
        self._check_volume_from_sample('vhd', 'vhd', 'bare')
