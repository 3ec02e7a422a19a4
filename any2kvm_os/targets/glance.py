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

"""Glance target: each disk becomes a raw image.

The image is created with ``disk_format=raw``, ``container_format=bare``
and the properties of :mod:`any2kvm_os.properties`; the disk is streamed
from the converter into the upload (no intermediate copy for disks read
at random; one-pass archives are first converted to a sparse scratch
file).  Glance computes ``os_hash_value`` (and ``checksum``) of what it
stored: the digests computed while streaming must match, or the image is
deleted.  On any failure every image this call created is deleted.
"""

import contextlib
import logging

from any2kvm_os import clients
from any2kvm_os import exception
from any2kvm_os import properties
from any2kvm_os import scratch
from any2kvm_os.targets import base
from any2kvm_os.writers import stream

LOG = logging.getLogger(__name__)


@contextlib.contextmanager
def disk_stream(disk, scratch_dir, progress=None,
                scratch_limit=scratch.DEFAULT_LIMIT):
    """A read(n) stream of ``disk``'s raw bytes, with digests."""
    chain = disk.chain
    if chain is not None:
        yield stream.RawStream(chain, progress=progress)
        return
    if getattr(disk, 'raw_path', None):
        # A raw file already (a copy fixed by --fix): read as it is.
        s = stream.FileStream(disk.raw_path, progress=progress)
        try:
            yield s
        finally:
            s.close()
        return
    # One-pass sources: convert to a sparse scratch file first, bounded by
    # the scratch limit.  It is read back from the page cache and deleted:
    # never flushed (Glance's checksum covers what it stored).
    with scratch.Scratch(scratch_dir, scratch_limit,
                         prefix='any2kvm-upload-') as space:
        path = base.write_scratch_raw(
            space, disk, 'disk.raw',
            '%s (converted before the upload)' % disk.name)
        s = stream.FileStream(path, progress=progress)
        try:
            yield s
        finally:
            s.close()


#: ``--no-default-properties``, an option of every target that writes
#: image properties.
NO_DEFAULT_PROPERTIES = base.Argument(
    '--no-default-properties', 'defaults', convert=lambda value: not value,
    action='store_true',
    help='set only the --property ones, none derived from the VM '
         '(hw_disk_bus, os_distro, ...)')


class GlanceTarget(base.Target):
    name = 'glance'
    description = 'a raw Glance image per disk'
    arguments = (NO_DEFAULT_PROPERTIES,)

    def __init__(self, defaults=True, **context):
        super(GlanceTarget, self).__init__(**context)
        self.defaults = defaults

    def client(self):
        return clients.glance_client(self.session, self.region_name,
                                     self.interface)

    def write(self, vm, name, props=None, disk=None, progress=None):
        glance = self.client()
        made = []
        results = []
        chosen = base.selected(vm, disk)
        try:
            for index, d in chosen:
                result = self._upload(glance, vm, d, index, name,
                                      len(vm.disks), props, progress,
                                      made)
                results.append(result)
        except BaseException as e:
            for image_id in made:
                try:
                    glance.images.delete(image_id)
                except Exception as del_err:  # report, keep the first error
                    LOG.warning('Could not delete image %s: %s', image_id,
                                del_err)
            if isinstance(e, exception.Any2KvmError) or \
                    not isinstance(e, Exception):
                raise
            raise clients.cloud_error('glance', e)
        return results

    def _upload(self, glance, vm, disk, index, name, count, props,
                progress, made):
        size_hint = disk.size_hint
        facts = vm.facts if index == (vm.facts.get('boot_disk') or 0) \
            else {}
        image_name = base.disk_name(name, index, count)
        with disk_stream(disk, self.scratch_dir, progress,
                         self.scratch_limit) as data:
            size = len(data)
            attrs = properties.image_properties(
                facts, size or size_hint or 0, defaults=self.defaults,
                overrides=props)
            image = glance.images.create(
                name=image_name, disk_format='raw', container_format='bare',
                **attrs)
            made.append(image['id'])
            LOG.info('Uploading %s (%d bytes) to Glance image %s',
                     disk.name, size, image['id'])
            glance.images.upload(image['id'], data, image_size=size)
            image = glance.images.get(image['id'])
            algo = image.get('os_hash_algo')
            mine = {a: data.hexdigest(a) for a in data.digests}
            if image.get('status') != 'active':
                raise exception.TargetError(
                    path=image_name, reason='Glance image %s is %s after '
                    'upload' % (image['id'], image.get('status')))
            if image.get('size') != size:
                raise exception.TargetError(
                    path=image_name, reason='Glance stored %s bytes, %d were '
                    'sent' % (image.get('size'), size))
            if algo in mine and image.get('os_hash_value') != mine[algo]:
                raise exception.TargetError(
                    path=image_name, reason='Glance %s %s differs from the '
                    'one computed while uploading (%s)' % (
                        algo, image.get('os_hash_value'), mine[algo]))
            if image.get('checksum') and image['checksum'] != mine['md5']:
                raise exception.TargetError(
                    path=image_name, reason='Glance checksum differs from '
                    'the md5 computed while uploading')
        return {'disk': index, 'name': image_name, 'id': image['id'],
                'size': size, 'sha256': mine['sha256'],
                'os_hash_algo': algo,
                'os_hash_value': image.get('os_hash_value'),
                'properties': {k: image.get(k) for k in attrs}}
