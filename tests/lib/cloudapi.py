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

import pytest

from tests.lib.tools import missing_tool

COMPUTE = {'service_type': 'compute', 'interface': 'public'}


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


def poll(what, get, done, timeout, interval=2):
    """Call get() until done(value); fail with the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while True:
        value = get()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail('%s: not done after %d s (last: %r)'
                        % (what, timeout, value))
        time.sleep(interval)


class Nova(object):
    """The few compute calls the Nova tests make, through a keystoneauth1
    session against the public endpoint, at compute API ``microversion``."""

    def __init__(self, session, microversion):
        self.session = session
        self.microversion = microversion

    def request(self, method, url, **kwargs):
        headers = {'OpenStack-API-Version': 'compute %s' % self.microversion}
        headers.update(kwargs.pop('headers', {}))
        return self.session.request(url, method, endpoint_filter=COMPUTE,
                                    headers=headers, **kwargs)

    def server(self, server_id):
        """The server, or None once it is gone."""
        r = self.request('GET', '/servers/%s' % server_id, raise_exc=False)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()['server']

    def status(self, server_id):
        server = self.server(server_id)
        return server['status'] if server else None

    def action(self, server_id, body):
        return self.request('POST', '/servers/%s/action' % server_id,
                            json=body)

    def console(self, server_id):
        r = self.action(server_id, {'os-getConsoleOutput': {}})
        return r.json()['output'] or ''

    def fault(self, server_id):
        server = self.server(server_id) or {}
        return server.get('fault')

    def flavor_id(self, flavor_name):
        flavors = self.request('GET', '/flavors').json()['flavors']
        ids = [f['id'] for f in flavors if f['name'] == flavor_name]
        assert ids, 'no flavor %s' % flavor_name
        return ids[0]

    def delete(self, server_id, timeout):
        """Delete the server (if there) and wait until it is gone."""
        if self.server(server_id) is None:
            return
        self.request('DELETE', '/servers/%s' % server_id, raise_exc=False)
        poll('server %s deleted' % server_id, lambda: self.server(server_id),
             lambda s: s is None, timeout)


def nova_client(keystone_session, microversion):
    """A :class:`Nova` on the cloud; skipped without Nova (or failed under
    ANY2KVM_REQUIRE_TOOLS=1)."""
    from keystoneauth1 import exceptions

    try:
        endpoint = keystone_session.get_endpoint(**COMPUTE)
    except exceptions.EndpointNotFound:
        endpoint = None
    if not endpoint:
        missing_tool('the loopback cloud has no Nova '
                     '(LOOPBACK_CLOUD_NOVA=0?)')
    return Nova(keystone_session, microversion)


def server_clients(cloud, keystone_session):
    """The server library's Clients on the cloud; skipped without Nova
    (or failed under ANY2KVM_REQUIRE_TOOLS=1)."""
    from any2kvm_os.targets import server

    clients = server.Clients(keystone_session, cloud.region, 'public')
    try:
        clients.nova.flavors.list(limit=1)
    except Exception as e:
        missing_tool('the loopback cloud has no Nova: %s' % e)
    return clients


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
