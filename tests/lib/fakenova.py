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

"""An in-memory Nova, Neutron and Cinder for the unit tests of
:mod:`any2kvm_os.targets.server`.

``FakeCloud()`` holds flavors, networks, ports, servers and volumes;
``cloud.clients()`` is a :class:`~any2kvm_os.targets.server.Clients` on
it.  The surfaces are those the real clients have (novaclient's
``flavors``/``servers`` managers, openstacksdk's network proxy,
cinderclient's ``volumes``), and they behave as the services do:

* a server goes BUILD -> ACTIVE after ``build_polls`` ``servers.get``
  calls (or to ERROR with ``fault`` when ``cloud.fail_build`` is set);
  its volumes are then ``in-use`` with an attachment naming it, and its
  ports carry its id as ``device_id``;
* ``get_console_output`` raises NotFound until the server is ACTIVE, then
  returns ``cloud.console`` (a list of lines, or a callable giving one
  from the number of calls);
* deleting a server takes ``delete_polls`` gets, then ``deleted_polls``
  gets with status DELETED (Nova lists a deleted server for a moment
  before its record goes), then NotFound; the
  volumes become ``available``, pre-made ports stay (as Nova leaves
  ports it did not make);
* a port with a MAC already in use on its network is refused (409), like
  Neutron's MacAddressInUse (a MAC is unique within a network, not
  across networks);

``cloud.calls`` records (what, arguments) of every change.
"""

import itertools
import re
import uuid

from any2kvm_os.targets import server as server_mod


class NotFound(Exception):
    """As novaclient's and cinderclient's (matched by name)."""

    code = 404


class Conflict(Exception):
    code = 409


class Forbidden(Exception):
    code = 403


class ServiceUnavailable(Exception):
    """A 503, as novaclient raises it (a proxy, a restarting API)."""

    code = 503


class GatewayTimeout(Exception):
    code = 504


class Obj(object):
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def to_dict(self):
        return dict(self.__dict__)

    def get(self, key, default=None):
        return self.__dict__.get(key, default)


def _id():
    return str(uuid.uuid4())


class FlavorManager(object):
    def __init__(self, cloud):
        self.cloud = cloud

    def list(self, detailed=True, is_public=True, marker=None, limit=None,
             **kw):
        # As Nova answers: the public flavors and the private ones the
        # project was given access to (is_public=None: all, admin only).
        cloud = self.cloud
        flavors = sorted((f for f in cloud.flavors.values()
                          if f.is_public or is_public is None or
                          cloud.project_id in cloud.flavor_access.get(
                              f.id, ())), key=lambda f: f.id)
        if marker is not None:
            flavors = [f for f in flavors if f.id > marker]
        self.cloud.flavor_pages += 1
        return flavors[:limit] if limit else flavors

    def get(self, flavor_id):
        try:
            return self.cloud.flavors[flavor_id]
        except KeyError:
            raise NotFound('Flavor %s could not be found.' % flavor_id)

    def create(self, name, ram, vcpus, disk, flavorid='auto', is_public=True,
               description=None, **kw):
        if description is not None:
            # As python-novaclient says below microversion 2.55 (any2kvm
            # speaks 2.37): the argument is refused before any request.
            raise TypeError("'description' argument is only allowed since "
                            "microversion 2.55.")
        if not self.cloud.admin:
            raise Forbidden('Policy doesn\'t allow os_compute_api:'
                            'os-flavor-manage:create to be performed.')
        if any(f.name == name for f in self.cloud.flavors.values()):
            raise Conflict('Flavor with name %s already exists.' % name)
        flavor = self.cloud.add_flavor(name, vcpus, ram, disk,
                                       is_public=is_public)
        self.cloud.calls.append(('flavor-create', name))
        return flavor

    def delete(self, flavor):
        flavor_id = getattr(flavor, 'id', flavor)
        if self.cloud.flavors.pop(flavor_id, None) is None:
            raise NotFound('Flavor %s could not be found.' % flavor_id)
        self.cloud.flavor_access.pop(flavor_id, None)
        self.cloud.calls.append(('flavor-delete', flavor_id))


class FlavorAccessManager(object):
    """novaclient's ``flavor_access``: a private flavor's projects."""

    def __init__(self, cloud):
        self.cloud = cloud

    def add_tenant_access(self, flavor, tenant):
        cloud = self.cloud
        flavor_id = getattr(flavor, 'id', flavor)
        if not cloud.admin:
            raise Forbidden('Policy doesn\'t allow os_compute_api:os-flavor-'
                            'access:add_tenant_access to be performed.')
        if cloud.fail_access:
            raise cloud.fail_access
        if flavor_id not in cloud.flavors:
            raise NotFound('Flavor %s could not be found.' % flavor_id)
        if cloud.flavors[flavor_id].is_public:
            raise Conflict('Can not add access to a public flavor.')
        projects = cloud.flavor_access.setdefault(flavor_id, set())
        if tenant in projects:
            raise Conflict('Flavor access already exists for flavor %s and '
                           'project %s combination.' % (flavor_id, tenant))
        projects.add(tenant)
        cloud.calls.append(('flavor-access', (flavor_id, tenant)))
        return [Obj(flavor_id=flavor_id, tenant_id=t) for t in projects]


class ServerManager(object):
    #: Nova's [api] max_limit: the most servers one page holds.
    PAGE = 1000

    def __init__(self, cloud):
        self.cloud = cloud

    def create(self, name, image, flavor, meta=None,
               block_device_mapping_v2=None, nics=None,
               availability_zone=None, key_name=None, **kw):
        cloud = self.cloud
        cloud.calls.append(('server-create', {
            'name': name, 'image': image, 'flavor': flavor,
            'block_device_mapping_v2': block_device_mapping_v2,
            'nics': nics, 'availability_zone': availability_zone,
            'key_name': key_name, 'meta': meta}))
        if cloud.interrupt_create is not None:
            # The request reached Nova, its answer did not reach us (a
            # ^C while it was in flight, a proxy's 504): the server
            # exists all the same.
            fail, cloud.interrupt_create = cloud.interrupt_create, None
            self._make(name, flavor, meta, block_device_mapping_v2, nics)
            raise fail
        if cloud.fail_create:
            # An exception as it is (a Forbidden: a 4xx refusal), or a
            # message (an error of no known kind).
            fail = cloud.fail_create
            raise fail if isinstance(fail, BaseException) else \
                Exception(fail)
        if flavor not in cloud.flavors:
            raise NotFound('Flavor %s could not be found.' % flavor)
        for bdm in block_device_mapping_v2 or ():
            if bdm['uuid'] not in cloud.volumes:
                raise NotFound('Volume %s could not be found.' % bdm['uuid'])
        server = self._make(name, flavor, meta, block_device_mapping_v2,
                            nics)
        return Obj(id=server.id, name=name, status='BUILD')

    def _make(self, name, flavor, meta, bdm, nics):
        cloud = self.cloud
        server = Obj(id=_id(), name=name, status='BUILD', flavor=flavor,
                     metadata=dict(meta or {}), bdm=bdm, nics=nics, polls=0,
                     console_calls=0, delete_polls=None)
        cloud.servers[server.id] = server
        for nic in nics if isinstance(nics, list) else ():
            cloud.ports[nic['port-id']].device_id = server.id
        return server

    def list(self, detailed=True, search_opts=None, marker=None,
             limit=None, **kw):
        """Nova's filters: ``name`` a regular expression (re.search, as
        Nova's database filter), ``flavor`` an id; ``all_tenants``
        (admin only) changes nothing here: one project.  As novaclient
        lists: without ``limit`` one page (:data:`PAGE`), ``-1`` every
        page.  A server being deleted is listed (task_state deleting)
        until it is gone."""
        opts = dict(search_opts or {})
        if opts.pop('all_tenants', None) and not self.cloud.admin:
            raise Forbidden('Policy doesn\'t allow os_compute_api:servers:'
                            'index:get_all_tenants to be performed.')
        if self.cloud.fail_list:
            raise self.cloud.fail_list
        out = []
        for srv in self.cloud.servers.values():
            if 'name' in opts and not re.search(opts['name'], srv.name):
                continue
            if 'flavor' in opts and srv.flavor != opts['flavor']:
                continue
            out.append(Obj(id=srv.id, name=srv.name, status=srv.status,
                           flavor={'id': srv.flavor},
                           metadata=dict(srv.metadata)))
        if limit == -1:
            return out
        return out[:min(limit or self.PAGE, self.PAGE)]

    def get(self, server_id):
        cloud = self.cloud
        if cloud.fail_get:
            fail = cloud.fail_get.pop(0)
            if fail is not None:
                raise fail
        server = cloud.servers.get(server_id)
        if server is None:
            raise NotFound('Instance %s could not be found.' % server_id)
        if server.delete_polls is not None:
            server.delete_polls += 1
            if server.delete_polls >= cloud.delete_polls + \
                    cloud.deleted_polls:
                cloud.servers.pop(server_id)
                raise NotFound('Instance %s could not be found.'
                               % server_id)
            if server.delete_polls >= cloud.delete_polls:
                return Obj(id=server.id, status='DELETED',
                           **{'OS-EXT-STS:task_state': None})
            return Obj(id=server.id, status=server.status,
                       **{'OS-EXT-STS:task_state': 'deleting'})
        server.polls += 1
        if server.status == 'BUILD' and server.polls >= cloud.build_polls:
            if cloud.fail_build:
                server.status = 'ERROR'
            else:
                server.status = 'ACTIVE'
                for bdm in server.bdm or ():
                    vol = cloud.volumes[bdm['uuid']]
                    vol.status = 'in-use'
                    vol.attachments = [{'server_id': server.id,
                                        'attachment_id': _id()}]
        extra = {}
        if server.status == 'ERROR':
            extra['fault'] = {'code': 500, 'message': cloud.fail_build}
        return Obj(id=server.id, name=server.name, status=server.status,
                   **extra)

    def get_console_output(self, server, length=None):
        server_id = getattr(server, 'id', server)
        srv = self.cloud.servers.get(server_id)
        if srv is None or srv.status != 'ACTIVE':
            raise NotFound('Guest does not have a console available.')
        srv.console_calls += 1
        console = self.cloud.console
        if callable(console):
            return console(srv.console_calls)
        return '\n'.join(console) + '\n'

    def delete(self, server):
        cloud = self.cloud
        server_id = getattr(server, 'id', server)
        srv = cloud.servers.get(server_id)
        if srv is None:
            raise NotFound('Instance %s could not be found.' % server_id)
        cloud.calls.append(('server-delete', server_id))
        srv.delete_polls = 0
        for bdm in srv.bdm or ():
            vol = cloud.volumes.get(bdm['uuid'])
            if vol is not None:
                vol.status = 'available'
                vol.attachments = []
        for port in cloud.ports.values():
            if port.device_id == server_id:
                port.device_id = ''


class KeypairManager(object):
    def __init__(self, cloud):
        self.cloud = cloud

    def get(self, name):
        if name not in self.cloud.keypairs:
            raise NotFound('Keypair %s not found for user x' % name)
        return Obj(name=name)


class ZoneManager(object):
    def __init__(self, cloud):
        self.cloud = cloud

    def list(self, detailed=True):
        return [Obj(zoneName=z, zoneState={'available': True})
                for z in sorted(self.cloud.zones)]


class LimitsManager(object):
    """novaclient's ``limits.get()``: ``absolute``, a list of (name,
    value); -1 is no limit."""

    def __init__(self, cloud):
        self.cloud = cloud

    def get(self, reserved=False, tenant_id=None):
        return Obj(absolute=[Obj(name=k, value=v) for k, v in
                             sorted(self.cloud.limits.items())])


class FakeNova(object):
    def __init__(self, cloud):
        self.flavors = FlavorManager(cloud)
        self.flavor_access = FlavorAccessManager(cloud)
        self.limits = LimitsManager(cloud)
        self.keypairs = KeypairManager(cloud)
        self.availability_zones = ZoneManager(cloud)
        self.servers = ServerManager(cloud)


class FakeNeutron(object):
    """openstacksdk's network proxy, the calls server.py makes."""

    def __init__(self, cloud):
        self.cloud = cloud

    def find_network(self, name_or_id, ignore_missing=True):
        for net in self.cloud.networks.values():
            if name_or_id in (net.id, net.name):
                return net
        if not ignore_missing:
            raise NotFound('No Network found for %s' % name_or_id)
        return None

    def create_port(self, network_id, name=None, mac_address=None,
                    description='', **kw):
        cloud = self.cloud
        if network_id not in cloud.networks:
            raise NotFound('Network %s could not be found.' % network_id)
        if cloud.fail_port:
            raise Conflict(cloud.fail_port)
        if mac_address and any(p.mac_address == mac_address and
                               p.network_id == network_id
                               for p in cloud.ports.values()):
            raise Conflict('Unable to complete operation for network %s. '
                           'The mac address %s is in use.' % (network_id,
                                                              mac_address))
        port = Obj(id=_id(), network_id=network_id, name=name,
                   description=description, device_id='',
                   mac_address=mac_address or 'fa:16:3e:00:00:%02x' % next(
                       cloud.macs))
        cloud.ports[port.id] = port
        cloud.calls.append(('port-create', port.id))
        return port

    def delete_port(self, port, ignore_missing=True):
        port_id = getattr(port, 'id', port)
        if self.cloud.ports.pop(port_id, None) is None and \
                not ignore_missing:
            raise NotFound('Port %s could not be found.' % port_id)
        self.cloud.calls.append(('port-delete', port_id))

    def ports(self, **filters):
        for port in list(self.cloud.ports.values()):
            if all(getattr(port, k, None) == v for k, v in filters.items()):
                yield port

    def get_port(self, port_id):
        return self.cloud.ports[port_id]


class VolumeManager(object):
    def __init__(self, cloud):
        self.cloud = cloud

    def get(self, volume_id):
        try:
            return self.cloud.volumes[volume_id]
        except KeyError:
            raise NotFound('Volume %s could not be found.' % volume_id)


class FakeCinder(object):
    def __init__(self, cloud):
        self.volumes = VolumeManager(cloud)


class FakeCloud(object):
    """Nova, Neutron and Cinder in memory (see the module's doc)."""

    def __init__(self, admin=True):
        self.admin = admin
        #: The project the credentials are scoped to.
        self.project_id = '5e1f0c2b9a6d4e7f8a1b2c3d4e5f6a7b'
        self.flavors = {}
        #: {flavor id: set of project ids} of private flavors.
        self.flavor_access = {}
        self.keypairs = {'ops'}
        self.zones = {'nova'}
        self.limits = {'maxTotalInstances': -1, 'totalInstancesUsed': 0,
                       'maxTotalCores': -1, 'totalCoresUsed': 0,
                       'maxTotalRAMSize': -1, 'totalRAMUsed': 0}
        self.networks = {}
        self.ports = {}
        self.servers = {}
        self.volumes = {}
        self.calls = []
        self.build_polls = 2
        self.delete_polls = 2
        self.deleted_polls = 0
        self.fail_build = None
        self.fail_create = None
        self.fail_port = None
        self.fail_access = None
        self.fail_list = None
        #: Errors ``servers.get`` raises, one per call (None: answer).
        self.fail_get = []
        #: Raised by the create request once it has made the server (a
        #: KeyboardInterrupt: a ^C while it was in flight).
        self.interrupt_create = None
        self.console = ['booting', 'ANY2KVM-BOOT-OK token']
        self.flavor_pages = 0
        self.macs = itertools.count(1)
        self._flavor_ids = itertools.count(1)
        self.nova = FakeNova(self)
        self.neutron = FakeNeutron(self)
        self.cinder = FakeCinder(self)

    def add_flavor(self, name, vcpus, ram, disk=1, disabled=False,
                   is_public=True):
        flavor = Obj(id='%04d' % next(self._flavor_ids), name=name,
                     vcpus=vcpus, ram=ram, disk=disk, is_public=is_public,
                     **{'OS-FLV-DISABLED:disabled': disabled})
        self.flavors[flavor.id] = flavor
        return flavor

    def add_network(self, name):
        net = Obj(id=_id(), name=name)
        self.networks[net.id] = net
        return net

    def add_volume(self, name, size=1):
        vol = Obj(id=_id(), name=name, size=size, status='available',
                  attachments=[])
        self.volumes[vol.id] = vol
        return vol

    def standard(self):
        """The loopback cloud's flavors and network."""
        self.add_flavor('m1.tiny', 1, 256)
        self.add_flavor('m1.small', 1, 512)
        self.add_flavor('m1.medium', 2, 1024)
        self.add_network('private')
        return self

    def clients(self):
        return server_mod.Clients(nova=self.nova, neutron=self.neutron,
                                  cinder=self.cinder,
                                  project_id=self.project_id)

    def changes(self):
        """The kinds of change made, in order."""
        return [what for what, _ in self.calls]
