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

"""What the any2kvm_os tempest tests share: the skip rules, the samples,
waiting for volumes and images (or anything else), and checking the
bytes of an image.

Only tempest's stable interfaces are used (tempest.lib, tempest.config,
tempest.test); the wait loops are written here rather than borrowed from
tempest.common.waiters.
"""

import hashlib
import os
import time

from tempest import config
from tempest.lib.common import api_microversion_fixture
from tempest.lib.common.utils import data_utils
from tempest.lib.common.utils import test_utils
from tempest.lib import exceptions as lib_exc
from tempest import test

CONF = config.CONF
GiB = 1 << 30
CHUNK = 4 << 20

# Statuses after which waiting for another one is pointless.
VOLUME_FAILED = ('error', 'error_restoring', 'error_extending',
                 'error_managing')
IMAGE_FAILED = ('killed', 'deleted', 'deactivated')


class Sample(object):
    """A sample image and the raw disk it converts to."""

    def __init__(self, name, path, sha256, size):
        self.name = name
        self.path = path
        self.sha256 = sha256.lower()
        self.size = size


class Any2KvmBaseTest(test.BaseTestCase):
    """Base of every any2kvm_os test: skipped unless ``[service_available]
    any2kvm`` is True; clients of the primary (project member) user."""

    credentials = ['primary']

    @classmethod
    def skip_checks(cls):
        super(Any2KvmBaseTest, cls).skip_checks()
        if not CONF.service_available.any2kvm:
            raise cls.skipException(
                'any2kvm_os is not installed in the cloud under test '
                '([service_available] any2kvm = False)')
        if not CONF.service_available.glance:
            raise cls.skipException(
                'Glance is not available ([service_available] glance)')

    @classmethod
    def setup_clients(cls):
        super(Any2KvmBaseTest, cls).setup_clients()
        cls.images_client = cls.os_primary.image_client_v2

    # -- samples -----------------------------------------------------------

    def sample(self, name):
        """The sample ``name`` of ``[any2kvm-samples]``; skips the test
        when it is not configured, fails when its file is missing."""
        group = CONF.any2kvm_samples
        path = getattr(group, name)
        if not path:
            raise self.skipException(
                'no %s sample: [any2kvm-samples] %s is not set' % (name, name))
        missing = [opt for opt in ('%s_sha256' % name, '%s_size' % name)
                   if getattr(group, opt) is None]
        if missing:
            raise self.skipException(
                'the %s sample is incomplete: [any2kvm-samples] %s not set'
                % (name, ' and '.join(missing)))
        if not os.path.isfile(path):
            self.fail('[any2kvm-samples] %s = %s: no such file' % (name, path))
        return Sample(name, path, getattr(group, '%s_sha256' % name),
                      getattr(group, '%s_size' % name))

    # -- waiting -----------------------------------------------------------

    def wait_until(self, get, done, timeout, interval, timed_out):
        """Call ``get()`` every ``interval`` seconds until ``done(value)``
        is true; return that value.  After ``timeout`` seconds raise
        ``timed_out(last value)``.  ``done`` may fail the test at once."""
        start = time.monotonic()
        while True:
            value = get()
            if done(value):
                return value
            if time.monotonic() - start >= timeout:
                raise timed_out(value)
            time.sleep(interval)

    def _wait_for_status(self, kind, show, resource_id, wanted, failed,
                         timeout, interval, describe):
        """Poll ``show(resource_id)`` (which returns the resource's dict)
        until its status is ``wanted``; fail at once on a status in
        ``failed`` (with ``describe(resource)`` in the message), raise
        TimeoutException after ``timeout`` seconds."""
        def done(resource):
            status = resource['status']
            if status == wanted:
                return True
            if status in failed:
                self.fail('%s %s became %s while waiting for %s: %s'
                          % (kind, resource_id, status, wanted,
                             describe(resource)))
            return False

        return self.wait_until(
            lambda: show(resource_id), done, timeout, interval,
            lambda resource: lib_exc.TimeoutException(
                '%s %s is still %s after %d s (waiting for %s)'
                % (kind, resource_id, resource['status'], timeout, wanted)))

    @staticmethod
    def _fields(resource, keys):
        return ', '.join('%s=%s' % (k, resource[k]) for k in keys
                         if k in resource)

    def wait_for_image_status(self, image_id, status='active'):
        return self._wait_for_status(
            'image', self.images_client.show_image, image_id, status,
            IMAGE_FAILED, CONF.image.build_timeout, CONF.image.build_interval,
            lambda image: self._fields(
                image, ('disk_format', 'container_format', 'size')))

    # -- resources, deleted at cleanup ---------------------------------------

    def delete_image_at_cleanup(self, image_id):
        self.addCleanup(self.images_client.wait_for_resource_deletion,
                        image_id)
        self.addCleanup(test_utils.call_and_ignore_notfound_exc,
                        self.images_client.delete_image, image_id)

    def create_image_from_file(self, path, disk_format, container_format,
                               **properties):
        """A Glance image holding the bytes of ``path``, active."""
        image = self.images_client.create_image(
            name=self.rand_name('image'), disk_format=disk_format,
            container_format=container_format, visibility='private',
            **properties)
        self.delete_image_at_cleanup(image['id'])
        with open(path, 'rb') as f:
            self.images_client.store_image_file(image['id'], f)
        return self.wait_for_image_status(image['id'], 'active')

    def rand_name(self, what):
        return data_utils.rand_name(prefix='any2kvm', name=what)

    # -- content -----------------------------------------------------------

    def check_image_data(self, image_id, sha256, size, total=None):
        """Download the image and check that its first ``size`` bytes have
        the SHA-256 ``sha256``, that the rest (if any) is zeros and that it
        holds ``total`` bytes in all (``size`` when None)."""
        total = size if total is None else total
        digest = hashlib.sha256()
        got = 0
        nonzero_at = None
        resp = self.images_client.show_image_file(image_id, chunked=True)
        try:
            for chunk in resp.stream(CHUNK):
                head = max(0, min(len(chunk), size - got))
                if head:
                    digest.update(chunk[:head] if head < len(chunk)
                                  else chunk)
                if nonzero_at is None and head < len(chunk):
                    tail = chunk[head:]
                    if tail.count(0) != len(tail):
                        nonzero_at = got + head + len(tail) - len(
                            tail.lstrip(b'\0'))
                got += len(chunk)
        finally:
            resp.release_conn()
        self.assertEqual(total, got,
                         'image %s holds %d bytes, expected %d'
                         % (image_id, got, total))
        self.assertEqual(sha256, digest.hexdigest(),
                         'SHA-256 of the first %d bytes of image %s'
                         % (size, image_id))
        self.assertIsNone(nonzero_at,
                          'image %s: non-zero byte at offset %s, past the '
                          '%d bytes of the disk' % (image_id, nonzero_at,
                                                    size))


class Any2KvmVolumeTest(Any2KvmBaseTest):
    """Base of the tests of the Cinder hook: skipped unless Cinder is
    available and ``[any2kvm-feature-enabled] cinder_hook`` is True."""

    @classmethod
    def skip_checks(cls):
        super(Any2KvmVolumeTest, cls).skip_checks()
        if not CONF.service_available.cinder:
            raise cls.skipException(
                'Cinder is not available ([service_available] cinder)')
        if not CONF.any2kvm_feature_enabled.cinder_hook:
            raise cls.skipException(
                'the any2kvm_os Cinder hook is not enabled '
                '([any2kvm-feature-enabled] cinder_hook = False)')

    @classmethod
    def setup_clients(cls):
        super(Any2KvmVolumeTest, cls).setup_clients()
        cls.volumes_client = cls.os_primary.volumes_client_latest
        cls.messages_client = cls.os_primary.volume_messages_client_latest

    def _volume_messages(self, volume_id):
        """Cinder's user messages about the volume (API 3.3), to say why
        it failed; best effort."""
        try:
            with api_microversion_fixture.APIMicroversionFixture(
                    volume_microversion='3.3'):
                messages = self.messages_client.list_messages()['messages']
        except Exception as e:
            return 'no user messages (%s)' % e
        return '; '.join(
            '%s (%s)' % (m.get('user_message'), m.get('event_id'))
            for m in messages
            if m.get('resource_uuid') == volume_id) or 'no user message'

    def _describe_volume(self, volume):
        return '%s; %s' % (
            self._fields(volume, ('volume_type', 'size',
                                  'os-vol-host-attr:host')),
            self._volume_messages(volume['id']))

    def wait_for_volume_status(self, volume_id, status='available'):
        return self._wait_for_status(
            'volume', lambda i: self.volumes_client.show_volume(i)['volume'],
            volume_id, status, VOLUME_FAILED, CONF.volume.build_timeout,
            CONF.volume.build_interval, self._describe_volume)

    def delete_volume_at_cleanup(self, volume_id):
        self.addCleanup(self.volumes_client.wait_for_resource_deletion,
                        volume_id)
        self.addCleanup(test_utils.call_and_ignore_notfound_exc,
                        self.volumes_client.delete_volume, volume_id)

    def create_volume_from_image(self, image_id, size_gib):
        """A volume made from the image (of the configured volume type),
        available; deleted at cleanup."""
        kwargs = {'name': self.rand_name('volume'), 'size': size_gib,
                  'imageRef': image_id}
        if CONF.any2kvm_feature_enabled.volume_type:
            kwargs['volume_type'] = CONF.any2kvm_feature_enabled.volume_type
        volume = self.volumes_client.create_volume(**kwargs)['volume']
        self.delete_volume_at_cleanup(volume['id'])
        return self.wait_for_volume_status(volume['id'], 'available')

    def upload_volume_to_image(self, volume_id):
        """os-volume_upload_image into a new raw/bare image; waits until
        the image is active and the volume available again."""
        body = self.volumes_client.upload_volume(
            volume_id, image_name=self.rand_name('upload'),
            disk_format='raw', container_format='bare', force=False)
        image_id = body['os-volume_upload_image']['image_id']
        self.delete_image_at_cleanup(image_id)
        self.wait_for_image_status(image_id, 'active')
        self.wait_for_volume_status(volume_id, 'available')
        return image_id
