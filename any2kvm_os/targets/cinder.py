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

"""Cinder target: each disk becomes a volume.

The portable route, which works with every Cinder backend: the disk is
uploaded as a raw Glance image (through :class:`GlanceTarget`, digests
verified), a volume of the disk's size (GiB, rounded up) is created from
it, Cinder copies the image's properties into the volume's image metadata
and marks it bootable, and the intermediate image is deleted.  The first
disk of a VM is the boot volume; the others are ``<name>-diskN``.  On any
failure the volumes and images this call made are deleted, so nothing
half-written is left ``available``.
"""

import logging
import time

from any2kvm_os import exception
from any2kvm_os.targets import base
from any2kvm_os.targets import glance as glance_target

LOG = logging.getLogger(__name__)

GiB = 1 << 30


def cinder_client(session, region_name=None, interface=None):
    from cinderclient import client
    kw = {}
    if region_name:
        kw['region_name'] = region_name
    if interface:
        kw['interface'] = interface
    return client.Client('3', session=session, **kw)


class CinderTarget(base.Target):
    name = 'cinder'
    description = 'a Cinder volume per disk (through a raw Glance image)'

    def __init__(self, session=None, scratch_dir=None, defaults=True,
                 timeout=3600, poll=2.0, keep_image=False, wait=True,
                 region_name=None, interface=None):
        super(CinderTarget, self).__init__(session)
        self.glance = glance_target.GlanceTarget(
            session, scratch_dir, defaults, region_name=region_name,
            interface=interface)
        self.region_name = region_name
        self.interface = interface
        # The volume is always waited for: the intermediate image can only
        # be deleted, and a failure only reported, once Cinder is done.
        self.wait = wait
        self.timeout = timeout
        self.poll = poll
        self.keep_image = keep_image

    def write(self, source, name, props=None, disk=None, progress=None):
        images = self.glance.write(source, name + '-any2kvm-upload', props,
                                   disk=disk, progress=progress)
        cinder = cinder_client(self.session, self.region_name,
                               self.interface)
        glance = self.glance.client()
        volumes = []
        results = []
        try:
            chosen = base.selected(source, disk)
            for (index, _d), image in zip(chosen, images):
                vol_name = base.disk_name(name, index, len(source.disks))
                size_gib = max(1, -(-image['size'] // GiB))
                volume = cinder.volumes.create(
                    size_gib, name=vol_name, imageRef=image['id'],
                    description='imported by any2kvm')
                volumes.append(volume.id)
                volume = self._wait(cinder, volume.id, vol_name)
                results.append({
                    'disk': index, 'name': vol_name, 'id': volume.id,
                    'size': image['size'], 'size_gib': size_gib,
                    'bootable': volume.bootable, 'sha256': image['sha256'],
                    'image_id': image['id'] if self.keep_image else None,
                    'properties': getattr(volume, 'volume_image_metadata',
                                          None) or {}})
        except BaseException as e:
            for vol_id in volumes:
                try:
                    cinder.volumes.delete(vol_id)
                except Exception as del_err:
                    LOG.warning('Could not delete volume %s: %s', vol_id,
                                del_err)
            self._drop_images(glance, images, force=True)
            if isinstance(e, exception.Any2KvmError) or \
                    not isinstance(e, Exception):
                raise
            raise glance_target.cloud_error('cinder', e)
        self._drop_images(glance, images)
        return results

    def _drop_images(self, glance, images, force=False):
        if self.keep_image and not force:
            return
        for image in images:
            try:
                glance.images.delete(image['id'])
            except Exception as e:
                LOG.warning('Could not delete image %s: %s', image['id'], e)

    def _wait(self, cinder, vol_id, vol_name):
        deadline = time.monotonic() + self.timeout
        while True:
            volume = cinder.volumes.get(vol_id)
            if volume.status == 'available':
                return volume
            if volume.status in ('error', 'error_restoring'):
                messages = []
                try:
                    messages = [m.user_message for m in cinder.messages.list(
                        search_opts={'resource_uuid': vol_id})]
                except Exception:
                    pass
                raise exception.TargetError(
                    path=vol_name, reason='volume %s went to %s%s' % (
                        vol_id, volume.status,
                        (': ' + '; '.join(messages)) if messages else ''))
            if time.monotonic() > deadline:
                raise exception.TargetError(
                    path=vol_name, reason='volume %s still %s after %d s'
                    % (vol_id, volume.status, self.timeout))
            time.sleep(self.poll)
