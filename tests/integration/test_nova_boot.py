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

"""A real guest boots from a volume in the loopback cloud's Nova.

A tiny BIOS guest (tests/lib/guestbuild.py) becomes a raw image with
``hw_disk_bus=scsi`` and ``hw_scsi_model=virtio-scsi``, then a volume, then
a server with ``networks: none`` (Neutron ports cannot be wired here).  The
server reaches ACTIVE, the guest's token appears in the console log
(``os-getConsoleOutput``), libvirt's domain has the SCSI disk on a
virtio-scsi controller under TCG, a hard reboot boots it again, and the
delete keeps the volume.  One guest for the whole module: each boot under
TCG costs about a minute on a loaded machine.

The requests go through keystoneauth1 sessions against the public
endpoints, as any client's would.
"""

import os
import re
import subprocess
import time
import urllib.parse
import uuid

import pytest
from defusedxml import ElementTree

from tests.lib import guestbuild
from tests.lib.cloudapi import nova_client
from tests.lib.cloudapi import poll
from tests.lib.cloudapi import unique
from tests.lib.tools import missing_tool

NETWORK = {'service_type': 'network', 'interface': 'public'}
# networks "none" needs 2.37; the console and actions are older.
MICROVERSION = '2.37'

IMAGE_TIMEOUT = 300
VOLUME_TIMEOUT = 300
ACTIVE_TIMEOUT = 600
BOOT_TIMEOUT = 900      # TCG on a loaded 2-core machine
DELETE_TIMEOUT = 300


def wait_active(nova, server_id, timeout=ACTIVE_TIMEOUT):
    status = poll('server %s' % server_id,
                  lambda: nova.status(server_id),
                  lambda s: s in ('ACTIVE', 'ERROR'), timeout)
    assert status == 'ACTIVE', nova.fault(server_id)


def wait_console(nova, server_id, pattern, timeout=BOOT_TIMEOUT,
                 accept=lambda text: True):
    """The console log once ``pattern`` appears in it (and accept())."""
    regex = re.compile(pattern)

    def ready(text):
        return bool(regex.search(text)) and accept(text)
    return poll('console of %s: %s' % (server_id, pattern),
                lambda: nova.console(server_id), ready, timeout, interval=3)


def virsh(cloud, *args):
    uri = cloud.env.get('LOOPBACK_LIBVIRT_URI')
    if not uri:
        pytest.fail('the openrc has no LOOPBACK_LIBVIRT_URI')
    r = subprocess.run(['virsh', '-c', uri] + list(args),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope='module')
def nova(cloud, keystone_session):
    return nova_client(keystone_session, MICROVERSION)


@pytest.fixture(scope='module')
def guest(tmp_path_factory):
    missing = guestbuild.missing_tools()
    if missing:
        missing_tool('cannot build a boot guest, missing: %s'
                     % ', '.join(missing))
    path = tmp_path_factory.mktemp('bootguest') / 'guest.raw'
    token = guestbuild.nova_guest(path)
    return path, token


@pytest.fixture(scope='module')
def booted(nova, glance, cinder, guest):
    """A server booted from a volume of the guest: (server id, volume id,
    token, seconds to ACTIVE, seconds to the token on the console)."""
    path, token = guest
    made = {}
    try:
        image = glance.images.create(
            name=unique('bootguest'), disk_format='raw',
            container_format='bare', hw_disk_bus='scsi',
            hw_scsi_model='virtio-scsi')
        made['image'] = image.id
        with open(path, 'rb') as f:
            glance.images.upload(image.id, f, image_size=os.path.getsize(path))
        poll('image %s' % image.id, lambda: glance.images.get(image.id).status,
             lambda s: s in ('active', 'killed'), IMAGE_TIMEOUT)

        volume = cinder.volumes.create(1, name=unique('bootvol'),
                                       imageRef=image.id)
        made['volume'] = volume.id
        status = poll('volume %s' % volume.id,
                      lambda: cinder.volumes.get(volume.id).status,
                      lambda s: s in ('available', 'error'), VOLUME_TIMEOUT)
        assert status == 'available'

        t0 = time.monotonic()
        r = nova.request('POST', '/servers', json={'server': {
            'name': unique('server'),
            'flavorRef': '1',           # m1.tiny
            'networks': 'none',
            'block_device_mapping_v2': [{
                'boot_index': 0, 'uuid': volume.id, 'source_type': 'volume',
                'destination_type': 'volume',
                'delete_on_termination': False}]}})
        server_id = r.json()['server']['id']
        made['server'] = server_id
        wait_active(nova, server_id)
        active = time.monotonic() - t0
        console = wait_console(nova, server_id, guestbuild.ready_line(token))
        verified = time.monotonic() - t0
        print('\nserver %s: ACTIVE after %.1f s, token on the console after '
              '%.1f s' % (server_id, active, verified))
        yield {'server': server_id, 'volume': volume.id, 'token': token,
               'console': console}
    finally:
        if made.get('server'):
            nova.delete(made['server'], DELETE_TIMEOUT)
        if made.get('volume'):
            poll('volume %s detached' % made['volume'],
                 lambda: cinder.volumes.get(made['volume']).status,
                 lambda s: s in ('available', 'error'), VOLUME_TIMEOUT)
            cinder.volumes.delete(made['volume'])
        if made.get('image'):
            glance.images.delete(made['image'])


class TestBootFromVolume(object):
    """In this order: they share the one booted guest."""

    def test_token_on_the_console(self, booted):
        lines = [line for line in booted['console'].splitlines()
                 if guestbuild.READY in line]
        assert len(lines) == 1, booted['console'][-2000:]
        assert 'id=%s' % booted['token'] in lines[0]
        # The SCSI disk, as the image metadata asked.
        assert 'root=/dev/sda1' in lines[0]

    def test_domain_is_tcg_with_a_virtio_scsi_disk(self, cloud, nova,
                                                   booted):
        server = nova.server(booted['server'])
        domain = server['OS-EXT-SRV-ATTR:instance_name']
        port_base = re.search(r':(\d+)/', cloud.env['OS_AUTH_URL']).group(1)
        assert domain.startswith('loopback%s-' % port_base), domain
        xml = ElementTree.fromstring(virsh(cloud, 'dumpxml', domain))
        assert xml.get('type') == 'qemu'
        disks = xml.findall("./devices/disk[@device='disk']")
        assert len(disks) == 1
        assert disks[0].find('target').get('bus') == 'scsi'
        source = disks[0].find('source').get('file')
        assert source.endswith('volume-%s' % booted['volume']), source
        controllers = xml.findall("./devices/controller[@type='scsi']")
        assert [c.get('model') for c in controllers] == ['virtio-scsi']

    def test_hard_reboot_boots_again(self, nova, booted):
        server_id = booted['server']
        before = set(guestbuild.boots(nova.console(server_id)))
        assert before
        nova.action(server_id, {'reboot': {'type': 'HARD'}})
        poll('server %s reboot' % server_id,
             lambda: nova.server(server_id),
             lambda s: s['status'] == 'ERROR' or (
                 s['status'] == 'ACTIVE' and
                 s['OS-EXT-STS:task_state'] is None), ACTIVE_TIMEOUT)
        wait_active(nova, server_id)

        def booted_again(text):
            # A ready line of another boot (virtlogd starts the log anew).
            return bool(set(guestbuild.boots(text)) - before)
        console = wait_console(nova, server_id,
                               guestbuild.ready_line(booted['token']),
                               accept=booted_again)
        assert 'root=/dev/sda1' in console

    def test_delete_keeps_the_volume(self, nova, cinder, booted):
        server_id = booted['server']
        nova.request('DELETE', '/servers/%s' % server_id)
        seen = set()

        def gone(status):
            seen.add(status)
            return status is None or status == 'ERROR'
        poll('server %s deleted' % server_id,
             lambda: nova.status(server_id), gone, DELETE_TIMEOUT)
        assert 'ERROR' not in seen, nova.fault(server_id)
        status = poll('volume %s' % booted['volume'],
                      lambda: cinder.volumes.get(booted['volume']).status,
                      lambda s: s in ('available', 'error'), VOLUME_TIMEOUT)
        assert status == 'available'


def test_flavors_and_network(nova, keystone_session):
    flavors = nova.request('GET', '/flavors/detail').json()['flavors']
    got = {f['name']: (f['vcpus'], f['ram']) for f in flavors}
    assert got['m1.tiny'] == (1, 256)
    assert got['m1.small'] == (1, 512)
    assert got['m1.medium'] == (2, 1024)
    nets = keystone_session.get('/v2.0/networks?name=private',
                                endpoint_filter=NETWORK).json()['networks']
    assert len(nets) == 1 and nets[0]['shared'] is True


def test_port_keeps_network_and_mac(nova, keystone_session):
    net = keystone_session.get('/v2.0/networks?name=private',
                               endpoint_filter=NETWORK).json()['networks'][0]
    mac = 'fa:16:3e:%02x:%02x:%02x' % tuple(uuid.uuid4().bytes[:3])
    port = keystone_session.post('/v2.0/ports', endpoint_filter=NETWORK,
                                 json={'port': {
                                     'name': unique('port'),
                                     'network_id': net['id'],
                                     'mac_address': mac}}).json()['port']
    try:
        got = keystone_session.get('/v2.0/ports/%s' % port['id'],
                                   endpoint_filter=NETWORK).json()['port']
        assert got['network_id'] == net['id']
        assert got['mac_address'] == mac
    finally:
        keystone_session.delete('/v2.0/ports/%s' % port['id'],
                                endpoint_filter=NETWORK)


def test_catalog_has_nova_placement_neutron(nova, keystone_session):
    for service_type in ('compute', 'placement', 'network'):
        url = keystone_session.get_endpoint(service_type=service_type,
                                            interface='public')
        assert url, service_type
        assert urllib.parse.urlsplit(url).hostname == '127.0.0.1', url
