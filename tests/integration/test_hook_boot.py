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

"""Guest 3: a XenServer tgz in Glance booted the way a user boots it.

The tiny boot guest (tests/lib/guestbuild.py) as a dynamic VHD packed as a
XenServer VDI export (``0.vhd`` in a tgz) goes to Glance as
``vhd``/``ovf``; then ``openstack server create --image IMAGE
--boot-from-volume 1 --flavor m1.small --network none`` as an API request:
a block device mapping image -> volume, so Nova asks Cinder for the volume
and Cinder makes it from the image.  With the ``any2kvm`` volume type (the
loopback cloud's default; named in the mapping, compute API 2.67) the
hook converts the tgz and the guest boots: its token appears in the
console log, read from the SCSI disk the hook's image metadata asked for.
The same request with the stock ``loopback`` type ends with the server
in ERROR: Cinder cannot make a volume of a tgz.
"""

import re
import time

import pytest

from tests.lib import guestbuild
from tests.lib.cloudapi import nova_client
from tests.lib.cloudapi import poll
from tests.lib.cloudapi import unique
from tests.lib.tools import missing_tool

# volume_type in a block device mapping needs 2.67.
MICROVERSION = '2.67'
HOOK_TYPE = 'any2kvm'
STOCK_TYPE = 'loopback'
FLAVOR = 'm1.small'

IMAGE_TIMEOUT = 300
ACTIVE_TIMEOUT = 600
BOOT_TIMEOUT = 900      # TCG on a loaded 2-core machine
DELETE_TIMEOUT = 300
VOLUME_TIMEOUT = 300


def boot_from_image(nova, image_id, volume_type):
    """openstack server create --image IMAGE --boot-from-volume 1
    --flavor m1.small --network none (with the volume type)."""
    r = nova.request('POST', '/servers', json={'server': {
        'name': unique('guest3'),
        'flavorRef': nova.flavor_id(FLAVOR),
        'networks': 'none',
        'block_device_mapping_v2': [{
            'boot_index': 0, 'uuid': image_id, 'source_type': 'image',
            'destination_type': 'volume', 'volume_size': 1,
            'volume_type': volume_type,
            'delete_on_termination': True}]}})
    return r.json()['server']['id']


def wait_settled(nova, server_id):
    """The server once ACTIVE or ERROR."""
    return poll('server %s' % server_id, lambda: nova.server(server_id),
                lambda s: s is None or s['status'] in ('ACTIVE', 'ERROR'),
                ACTIVE_TIMEOUT)


@pytest.fixture(scope='module')
def nova(cloud, keystone_session):
    return nova_client(keystone_session, MICROVERSION)


@pytest.fixture(scope='module')
def guest_tgz(qemu_img, tmp_path_factory):
    """(path of the XenServer tgz of a boot guest, its token)."""
    missing = guestbuild.missing_tools()
    if missing:
        missing_tool('cannot build a boot guest, missing: %s'
                     % ', '.join(missing))
    return guestbuild.xenserver_tgz(qemu_img,
                                    tmp_path_factory.mktemp('guest3'))


@pytest.fixture(scope='module')
def image(glance, guest_tgz):
    path, _token = guest_tgz
    img = glance.images.create(name=unique('guest3'), disk_format='vhd',
                               container_format='ovf')
    try:
        with open(path, 'rb') as f:
            glance.images.upload(img.id, f, image_size=path.stat().st_size)
        status = poll('image %s' % img.id,
                      lambda: glance.images.get(img.id).status,
                      lambda s: s in ('active', 'killed'), IMAGE_TIMEOUT)
        assert status == 'active'
        yield img.id
    finally:
        glance.images.delete(img.id)


def volumes_of(cinder, image_id, before):
    """The volumes made since ``before`` (ids) for this image."""
    made = []
    for v in cinder.volumes.list():
        if v.id in before:
            continue
        meta = getattr(v, 'volume_image_metadata', None) or {}
        if meta.get('image_id') in (None, image_id) and not v.name:
            made.append(v.id)
    return made


def clean_volumes(cinder, ids):
    for vid in ids:
        try:
            poll('volume %s settled' % vid,
                 lambda: cinder.volumes.get(vid).status,
                 lambda s: s not in ('creating', 'downloading', 'in-use',
                                     'detaching', 'attaching',
                                     'reserved'), VOLUME_TIMEOUT)
            cinder.volumes.delete(vid)
        except Exception as e:     # gone already (delete_on_termination)
            if 'could not be found' not in str(e) and \
                    type(e).__name__ != 'NotFound':
                raise


def test_guest3_boots_through_the_hook(nova, cinder, image, guest_tgz):
    _path, token = guest_tgz
    before = {v.id for v in cinder.volumes.list()}
    server_id = None
    try:
        t0 = time.monotonic()
        server_id = boot_from_image(nova, image, HOOK_TYPE)
        server = wait_settled(nova, server_id)
        assert server['status'] == 'ACTIVE', server.get('fault')
        active = time.monotonic() - t0
        console = poll('console of %s' % server_id,
                       lambda: nova.console(server_id),
                       lambda text: guestbuild.READY in text and
                       ('id=%s' % token) in text, BOOT_TIMEOUT, interval=3)
        print('\nguest3: ACTIVE after %.1f s, token on the console after '
              '%.1f s' % (active, time.monotonic() - t0))
        lines = [line for line in console.splitlines()
                 if guestbuild.READY in line]
        assert 'id=%s' % token in lines[0], lines
        # Read from the converted disk.  (For an image -> volume mapping
        # Nova takes the bus from the Glance image's properties, not from
        # the volume's image metadata the hook writes: virtio-blk here.)
        assert re.search(r' root=/dev/[sv]da1 ', lines[0]), lines
        made = volumes_of(cinder, image, before)
        assert len(made) == 1, made
        vol = cinder.volumes.get(made[0])
        assert vol.volume_type == HOOK_TYPE
        assert vol.status == 'in-use'
    finally:
        if server_id:
            nova.delete(server_id, DELETE_TIMEOUT)
        clean_volumes(cinder, volumes_of(cinder, image, before))


def test_stock_backend_fails(nova, cinder, image):
    """The baseline: the same request, stock Cinder: the server in ERROR
    for want of its volume."""
    before = {v.id for v in cinder.volumes.list()}
    server_id = None
    try:
        server_id = boot_from_image(nova, image, STOCK_TYPE)
        server = wait_settled(nova, server_id)
        assert server is not None
        assert server['status'] == 'ERROR', server['status']
        fault = server.get('fault') or {}
        print('\nstock backend: ERROR: %s' % fault.get('message'))
        assert 'olume' in fault.get('message', ''), fault
    finally:
        if server_id:
            nova.delete(server_id, DELETE_TIMEOUT)
        clean_volumes(cinder, volumes_of(cinder, image, before))
