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

"""Talking to the integration tests' cloud: names, waits, read-backs."""

import hashlib
import time
import uuid


def unique(name):
    return 'any2kvm-test-%s-%s' % (name, uuid.uuid4().hex[:8])


def wait_for(get, ok, bad=('error',), timeout=600):
    deadline = time.monotonic() + timeout
    while True:
        thing = get()
        status = getattr(thing, 'status', None) or thing.get('status')
        if status in ok:
            return thing
        assert status not in bad, 'went to %s' % status
        assert time.monotonic() < deadline, 'still %s' % status
        time.sleep(2)


def servers_named(nova, name, settle=120):
    """The ids of the servers called ``name``, waiting up to ``settle``
    seconds for that list to become empty: Nova shows a deleted server
    (status DELETED) for a moment before its record goes, so a check right
    after a deletion must not see that moment as a server left behind."""
    deadline = time.monotonic() + settle
    while True:
        ids = [s.id for s in nova.servers.list(search_opts={'name': name})]
        if not ids or time.monotonic() >= deadline:
            return ids
        time.sleep(2)


def download_sha256(glance, image_id):
    h = hashlib.sha256()
    for chunk in glance.images.data(image_id):
        h.update(chunk)
    return h.hexdigest()


def volume_sha256(cinder, glance, volume_id):
    """Read a volume back through upload-to-image; SHA-256 of its bytes."""
    name = 'any2kvm-readback-%s' % uuid.uuid4().hex[:8]
    _resp, body = cinder.volumes.upload_to_image(
        volume_id, False, name, 'bare', 'raw')
    image_id = body['os-volume_upload_image']['image_id']
    try:
        wait_for(lambda: glance.images.get(image_id), ('active',),
                 ('killed', 'deleted'))
        wait_for(lambda: cinder.volumes.get(volume_id), ('available',))
        return download_sha256(glance, image_id)
    finally:
        glance.images.delete(image_id)


def padded_sha256(data, size):
    h = hashlib.sha256(data)
    left = size - len(data)
    zeros = bytes(1 << 20)
    while left > 0:
        n = min(left, len(zeros))
        h.update(zeros[:n])
        left -= n
    return h.hexdigest()
