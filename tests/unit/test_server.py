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

"""Server creation, boot verification and rollback
(:mod:`any2kvm_os.targets.server`) against the in-memory Nova, Neutron
and Cinder of :mod:`tests.lib.fakenova`, and the request the real
novaclient sends, read by a small HTTP stand-in."""

import argparse
import http.server
import json
import re
import threading

import pytest

from any2kvm_os import clients as os_clients
from any2kvm_os import exception
from any2kvm_os.targets import server
from tests.lib import fakenova

FACTS = {'name': 'web', 'cpus': 1, 'memory_mb': 512,
         'nics': [{'device': '0', 'mac': 'aa:00:00:00:00:01',
                   'network': 'Pool-wide network'},
                  {'device': '1', 'mac': 'aa:00:00:00:00:02',
                   'network': 'storage'}]}


def opts(**kw):
    kw.setdefault('create_server', True)
    kw.setdefault('poll', 0)
    return server.Options(**kw)


@pytest.fixture
def cloud(monkeypatch):
    # A create answer that never came is looked for a second here, not
    # half a minute.
    monkeypatch.setattr(server, 'REQUEST_LOOKUP_SECONDS', 1)
    return fakenova.FakeCloud().standard()


def plan_for(cloud, facts=None, **kw):
    facts = dict(FACTS if facts is None else facts)
    kw.setdefault('no_network', not kw.get('network_map'))
    disk_count = kw.pop('disk_count', None)
    return server.prepare(cloud.clients(), facts, opts(**kw), 'web',
                          disk_count=disk_count)


# -- options ------------------------------------------------------------------

def test_options_without_create_server_are_refused():
    with pytest.raises(server.ServerError) as e:
        server.Options(flavor='m1.small', keep_macs=True).check()
    assert str(e.value) == ('--flavor, --keep-macs: only with '
                            '--create-server')
    server.Options().check()


@pytest.mark.parametrize('kw, text', [
    ({'no_network': True, 'network_map': {'a': 'b'}},
     '--no-network contradicts --network-map'),
    ({'no_network': True, 'keep_macs': True},
     '--no-network contradicts --keep-macs'),
    ({'create_flavor': True, 'flavor': 'm1.small'},
     '--create-flavor goes with --flavor auto (not m1.small)'),
])
def test_contradictions_are_refused(kw, text):
    with pytest.raises(server.ServerError) as e:
        opts(**kw).check()
    assert str(e.value) == text


def test_arguments_parse_and_read_back():
    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    args = parser.parse_args([
        '--create-server', '--flavor', 'auto', '--network-map',
        'a=net1,b=net2', '--network-map', 'nic2=net3', '--keep-macs',
        '--boot-check', 'ready$', '--boot-timeout', '30'])
    o = server.Options.from_args(args)
    assert o.create_server and o.flavor == 'auto' and o.keep_macs
    assert o.network_map == {'a': 'net1', 'b': 'net2', 'nic2': 'net3'}
    assert o.boot_check == 'ready$' and o.boot_timeout == 30
    assert server.Options.from_args(parser.parse_args([])).boot_check == \
        server.DEFAULT_BOOT_CHECK
    for bad in (['--network-map', 'x'], ['--boot-timeout', '0'],
                ['--boot-check', '(']):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


# -- flavors ------------------------------------------------------------------

def test_auto_takes_the_smallest_fitting_flavor_and_says_why(cloud):
    cloud.add_flavor('big', 8, 16384)
    cloud.add_flavor('small-off', 1, 512, disabled=True)
    plan = plan_for(cloud, dict(FACTS, cpus=1, memory_mb=300))
    assert plan.flavor.name == 'm1.small'
    assert plan.reasons[0] == (
        "flavor auto: m1.small (1 vCPU, 512 MiB RAM), the smallest of 3 "
        "enabled flavor(s) with at least the source's 1 vCPU and 300 MiB "
        "RAM")
    plan = plan_for(cloud, dict(FACTS, cpus=2, memory_mb=512))
    assert plan.flavor.name == 'm1.medium'
    assert cloud.calls == []


def test_no_flavor_fits_lists_the_three_closest_and_writes_nothing(cloud):
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192))
    assert str(e.value) == (
        "--flavor auto: no enabled flavor has at least the source's 4 vCPU "
        "and 8192 MiB RAM; closest: m1.medium (2 vCPU, 1024 MiB RAM); "
        "m1.small (1 vCPU, 512 MiB RAM); m1.tiny (1 vCPU, 256 MiB RAM); "
        "give --flavor NAME or --create-flavor")
    assert cloud.calls == []


NEW_FLAVOR = 'any2kvm-4vcpu-8192mb-5e1f0c2b'


def test_create_flavor_only_when_asked_and_discarded(cloud):
    plan = plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                    create_flavor=True)
    assert plan.flavor.name == NEW_FLAVOR
    assert (plan.flavor.vcpus, plan.flavor.ram) == (4, 8192)
    assert 'created %s' % NEW_FLAVOR in plan.reasons[0]
    assert plan.reasons[0].endswith(
        'private to project %s (--create-flavor)' % cloud.project_id)
    assert plan.created_flavor == plan.flavor.id
    # Private, for the credentials' project only: other projects' lists
    # do not fill up with one flavor per migrated VM.
    assert plan.flavor.is_public is False
    assert cloud.flavor_access[plan.flavor.id] == {cloud.project_id}
    server.discard(plan)
    assert cloud.changes() == ['flavor-create', 'flavor-access',
                               'flavor-delete']
    assert plan.flavor.id not in cloud.flavors


def test_a_created_flavor_is_found_by_the_next_vm_of_its_size(cloud):
    """The project sees its private flavor: the next VM of that size
    takes it with --flavor auto, and makes none."""
    first = plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                     create_flavor=True)
    second = plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                      create_flavor=True)
    assert second.flavor.id == first.flavor.id
    assert second.created_flavor is None
    assert cloud.changes().count('flavor-create') == 1
    # Another project's credentials do not see it, and its name is
    # another (flavor names are unique in the whole cloud).
    cloud.project_id = 'aaaabbbbccccdddd'
    third = plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                     create_flavor=True)
    assert third.flavor.name == 'any2kvm-4vcpu-8192mb-aaaabbbb'


def test_create_flavor_refused_by_policy_before_writing():
    cloud = fakenova.FakeCloud(admin=False).standard()
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                 create_flavor=True)
    assert str(e.value).startswith(
        '--create-flavor: flavor %s: Forbidden: Policy' % NEW_FLAVOR)


def test_create_flavor_whose_access_fails_leaves_no_flavor(cloud):
    cloud.fail_access = fakenova.Forbidden('Policy doesn\'t allow it')
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                 create_flavor=True)
    assert str(e.value).startswith(
        '--create-flavor: access to flavor %s for project %s: Forbidden'
        % (NEW_FLAVOR, cloud.project_id))
    assert cloud.changes() == ['flavor-create', 'flavor-delete']


def test_create_flavor_whose_name_is_taken_says_what_to_do(cloud):
    """A flavor of the name that --flavor auto cannot use (disabled):
    refused with what to give, nothing made."""
    cloud.add_flavor(NEW_FLAVOR, 4, 8192, disabled=True)
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                 create_flavor=True)
    assert str(e.value) == (
        '--create-flavor: a flavor named %s exists, and --flavor auto could '
        'not use it (disabled, or another project\'s); give --flavor NAME'
        % NEW_FLAVOR)


def test_create_flavor_needs_a_project(cloud):
    cloud.project_id = None
    with pytest.raises(server.ServerError, match='name no project'):
        plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                 create_flavor=True)
    assert cloud.changes() == []


def test_flavor_by_name_or_id(cloud):
    assert plan_for(cloud, flavor='m1.medium').flavor.name == 'm1.medium'
    medium = [f for f in cloud.flavors.values() if f.name == 'm1.medium'][0]
    assert plan_for(cloud, flavor=medium.id).flavor.name == 'm1.medium'
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, flavor='m9.huge')
    assert str(e.value) == '--flavor m9.huge: no such flavor'
    # Less RAM than the source's, which the volumes' min_ram asks for:
    # Nova would refuse it at the spawn, after a cutover's shutdown.
    tiny = [f for f in cloud.flavors.values() if f.name == 'm1.tiny'][0]
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, flavor=tiny.id)
    assert str(e.value).startswith('--flavor %s: 256 MiB RAM, less than the '
                                   'source\'s' % tiny.id), str(e.value)
    # Fewer vCPUs only: said, not refused.
    few = cloud.add_flavor('m1.fewcpu', 1, 4096)
    plan = plan_for(cloud, dict(FACTS, cpus=2), flavor=few.id)
    assert 'fewer vCPUs than the source' in plan.reasons[0]


def test_names_nova_would_refuse_after_the_shutdown(cloud):
    """A key pair or a zone that does not exist: refused by prepare, not
    by Nova at the create request (a cutover has shut the VM down by
    then)."""
    assert plan_for(cloud, key_name='ops', availability_zone='nova')
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, key_name='opz')
    assert str(e.value).startswith('--key-name opz: no such key pair')
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, availability_zone='nvoa')
    assert str(e.value) == ('--availability-zone nvoa: no such zone (there '
                            'are: nova)')
    assert cloud.changes() == []


def test_a_quota_without_room_is_refused_before_anything(cloud):
    """Nova's absolute limits: no room for one more server of the
    flavor, refused by prepare (Nova would refuse the create request,
    after a cutover's shutdown); a flavor made for it is deleted."""
    cloud.limits.update(maxTotalInstances=10, totalInstancesUsed=10)
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud)
    assert str(e.value) == ('quota: the server needs 1 of instances, and '
                            'the project has 0 left of 10; raise the quota '
                            'or free some')
    cloud.limits.update(maxTotalInstances=-1, maxTotalRAMSize=4096,
                        totalRAMUsed=4000)
    with pytest.raises(server.ServerError, match='RAM'):
        plan_for(cloud, dict(FACTS, cpus=3, memory_mb=3000),
                 create_flavor=True)
    assert [c for c in cloud.changes() if c.startswith('flavor')] == [
        'flavor-create', 'flavor-access', 'flavor-delete']
    cloud.limits.update(maxTotalRAMSize=-1)
    assert plan_for(cloud)


def test_auto_leaves_out_flavors_with_disks_of_their_own(cloud):
    """An ephemeral or swap disk comes between the volumes: the source's
    second disk would be the server's third."""
    eph = cloud.add_flavor('a.eph', 2, 1024)
    setattr(eph, 'OS-FLV-EXT-DATA:ephemeral', 10)
    swap = cloud.add_flavor('a.swap', 2, 1024)
    swap.swap = 512
    assert plan_for(cloud, dict(FACTS, cpus=2, memory_mb=1024)
                    ).flavor.name == 'm1.medium'


def test_auto_needs_the_sources_size(cloud):
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, {})
    assert str(e.value) == ('--flavor auto: the source does not say its '
                            'vCPUs and RAM; give --flavor NAME')


def test_flavors_are_read_page_by_page(cloud, monkeypatch):
    monkeypatch.setattr(server, 'FLAVOR_PAGE', 2)
    cloud.add_flavor('z.last', 16, 65536)
    plan = plan_for(cloud, dict(FACTS, cpus=16, memory_mb=65536))
    assert plan.flavor.name == 'z.last'
    assert cloud.flavor_pages == 3


# -- networks -----------------------------------------------------------------

def test_unmapped_nics_are_refused_and_listed(cloud):
    with pytest.raises(server.ServerError) as e:
        server.prepare(cloud.clients(), FACTS, opts(), 'web')
    assert str(e.value) == (
        'unmapped NIC(s): nic0 (Pool-wide network, aa:00:00:00:00:01), '
        'nic1 (storage, aa:00:00:00:00:02); map them with --network-map '
        'SRC=NET[,...] or give --no-network')
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, network_map={'Pool-wide network': 'private'})
    assert str(e.value).startswith('unmapped NIC(s): nic1 (storage, ')
    assert cloud.calls == []


def test_mapping_by_network_name_or_nic_index(cloud):
    cloud.add_network('backend')
    plan = plan_for(cloud, network_map={'Pool-wide network': 'private',
                                        'nic1': 'backend'})
    assert [(n['index'], n['network_name'], n['mac']) for n in plan.nics] \
        == [(0, 'private', None), (1, 'backend', None)]
    assert plan.reasons[1:] == ['nic0 (Pool-wide network) -> network '
                                'private', 'nic1 (storage) -> network '
                                'backend']


def test_bad_mappings_are_refused(cloud):
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, network_map={'Pool-wide network': 'private',
                                     'storage': 'private', 'dmz': 'x'})
    assert str(e.value).startswith('--network-map dmz: no source NIC is on '
                                   'it (the NICs: nic0 (Pool-wide network')
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, network_map={'nic0': 'private', 'nic1': 'nowhere'})
    assert str(e.value) == '--network-map: no Neutron network nowhere'
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, dict(FACTS, nics=[]), network_map={'a': 'private'})
    assert str(e.value) == '--network-map a: the source has no NIC'


def test_keep_macs(cloud):
    both = {'nic0': 'private', 'nic1': 'private'}
    plan = plan_for(cloud, network_map=both, keep_macs=True)
    assert [n['mac'] for n in plan.nics] == ['aa:00:00:00:00:01',
                                             'aa:00:00:00:00:02']
    nics = [dict(FACTS['nics'][0]), {'network': 'storage'}]
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, dict(FACTS, nics=nics), network_map=both,
                 keep_macs=True)
    assert str(e.value) == '--keep-macs: NIC nic1 (storage) has no MAC'
    net = cloud.neutron.find_network('private')
    cloud.neutron.create_port(net.id, mac_address='aa:00:00:00:00:02')
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, network_map=both, keep_macs=True)
    assert str(e.value).startswith('--keep-macs: MAC aa:00:00:00:00:02 of '
                                   'NIC 1 is used by port ')
    assert str(e.value).endswith(' on network private')


def test_keep_macs_is_per_network(cloud):
    """Neutron keeps a MAC unique within a network: a port with the MAC
    on another network is no obstacle; two NICs of one MAC mapped to
    one network are refused before anything is made (Neutron would
    refuse the second port after a cutover's shutdown)."""
    other = cloud.add_network('other')
    cloud.neutron.create_port(other.id, mac_address='aa:00:00:00:00:02')
    both = {'nic0': 'private', 'nic1': 'private'}
    plan = plan_for(cloud, network_map=both, keep_macs=True)
    assert plan.nics[1]['mac'] == 'aa:00:00:00:00:02'
    srv = server.create(plan, volumes(cloud, 1))
    assert [cloud.ports[p].mac_address for p in srv.port_ids] == [
        'aa:00:00:00:00:01', 'aa:00:00:00:00:02']
    twins = [dict(FACTS['nics'][0]), dict(FACTS['nics'][0], device='1')]
    calls = len(cloud.calls)
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, dict(FACTS, nics=twins),
                 network_map={'nic0': 'private', 'nic1': 'other'},
                 keep_macs=True, server_name='web-twins')
    assert str(e.value).startswith('--keep-macs: MAC aa:00:00:00:00:01 of '
                                   'NIC 0 is used by port ')
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, dict(FACTS, nics=twins, name='x'),
                 network_map={'nic0': 'other', 'nic1': 'other'},
                 keep_macs=True, server_name='web-twins')
    assert str(e.value) == ('--keep-macs: NICs 0 and 1 have the same MAC '
                            'aa:00:00:00:00:01 and map to the same network '
                            'other')
    assert len(cloud.calls) == calls


# -- creating -----------------------------------------------------------------

def volumes(cloud, n=2):
    return [{'id': cloud.add_volume('web' if i == 0 else 'web-disk%d' % i)
             .id, 'name': 'web' if i == 0 else 'web-disk%d' % i}
            for i in range(n)]


def test_create_without_network(cloud):
    vols = volumes(cloud)
    plan = plan_for(cloud, availability_zone='nova', key_name='ops')
    srv = server.create(plan, vols)
    (what, body), = cloud.calls
    assert what == 'server-create'
    # The request's token, by which a server whose answer never came is
    # found.
    assert re.fullmatch('[0-9a-f]{32}', body.pop('meta')[
        server.REQUEST_KEY])
    assert body == {
        'name': 'web', 'image': None, 'flavor': plan.flavor.id,
        'nics': 'none', 'availability_zone': 'nova', 'key_name': 'ops',
        'block_device_mapping_v2': [
            {'uuid': vols[0]['id'], 'source_type': 'volume',
             'destination_type': 'volume', 'boot_index': 0,
             'delete_on_termination': False},
            {'uuid': vols[1]['id'], 'source_type': 'volume',
             'destination_type': 'volume', 'boot_index': 1,
             'delete_on_termination': False}]}
    assert srv.to_dict()['flavor_name'] == 'm1.small'
    assert srv.port_ids == []


def test_boot_disk_fact_gets_boot_index_0(cloud):
    vols = volumes(cloud, 3)
    plan = plan_for(cloud, dict(FACTS, boot_disk=2), disk_count=3)
    assert plan.reasons[-1] == 'boots from disk 2 (the source says so)'
    server.create(plan, [v['id'] for v in vols])
    bdm = cloud.calls[0][1]['block_device_mapping_v2']
    assert [(b['uuid'], b['boot_index']) for b in bdm] == [
        (vols[2]['id'], 0), (vols[0]['id'], 1), (vols[1]['id'], 2)]
    with pytest.raises(server.ServerError):
        plan_for(cloud, dict(FACTS, boot_disk=3), disk_count=3)


def test_create_with_ports_in_nic_order(cloud):
    backend = cloud.add_network('backend')
    vols = volumes(cloud, 1)
    plan = plan_for(cloud, network_map={'nic0': 'backend',
                                        'nic1': 'private'}, keep_macs=True,
                    server_name='web-kvm')
    srv = server.create(plan, vols)
    ports = [cloud.ports[p] for p in srv.port_ids]
    assert [(p.network_id, p.mac_address, p.name) for p in ports] == [
        (backend.id, 'aa:00:00:00:00:01', 'web-kvm-nic0'),
        (cloud.neutron.find_network('private').id, 'aa:00:00:00:00:02',
         'web-kvm-nic1')]
    assert cloud.calls[-1][1]['nics'] == [{'port-id': p}
                                          for p in srv.port_ids]
    assert cloud.calls[-1][1]['name'] == 'web-kvm'


def test_failed_create_deletes_ports_and_flavor_keeps_volumes(cloud):
    vols = volumes(cloud, 1)
    plan = plan_for(cloud, dict(FACTS, cpus=3, memory_mb=4096),
                    create_flavor=True, network_map={'nic0': 'private',
                                                     'nic1': 'private'})
    cloud.fail_create = fakenova.Forbidden('Quota exceeded for instances')
    with pytest.raises(server.ServerError) as e:
        server.create(plan, vols)
    assert str(e.value) == (
        'nova: server web: Forbidden: Quota exceeded for instances; '
        'volumes kept: web (%s)' % vols[0]['id'])
    assert cloud.ports == {} and cloud.servers == {}
    assert cloud.changes() == ['flavor-create', 'flavor-access',
                               'port-create', 'port-create',
                               'server-create', 'port-delete', 'port-delete',
                               'flavor-delete']
    assert vols[0]['id'] in cloud.volumes


@pytest.mark.parametrize('cut', [KeyboardInterrupt(),
                                 fakenova.GatewayTimeout('Gateway Timeout')])
def test_a_server_whose_create_answer_never_came_is_deleted(cloud, cut):
    """The create request reached Nova, its answer did not come back (a
    ^C while it was in flight, a proxy's timeout): the server it made is
    found by the request's token and deleted with the ports; the
    volumes are kept."""
    vols = volumes(cloud, 1)
    other = server.create(plan_for(cloud, server_name='web'), vols)
    plan = plan_for(cloud, network_map={'nic0': 'private',
                                        'nic1': 'private'},
                    server_name='web-2')
    cloud.interrupt_create = cut
    with pytest.raises(type(cut) if isinstance(cut, KeyboardInterrupt)
                       else server.ServerError) as e:
        server.create(plan, volumes(cloud, 1))
    assert list(cloud.servers) == [other.id]
    assert [p for p in cloud.ports.values() if p.device_id != other.id] \
        == []
    if isinstance(cut, Exception):
        # A 504 may have made a server: a cutover run again writes the
        # volumes whole.
        assert not e.value.no_server


def test_a_create_answer_that_never_came_says_where_to_look(cloud, caplog):
    plan = plan_for(cloud)
    cloud.interrupt_create = KeyboardInterrupt()
    cloud.fail_list = fakenova.ServiceUnavailable('Service Unavailable')
    with caplog.at_level('WARNING'), pytest.raises(KeyboardInterrupt):
        server.create(plan, volumes(cloud, 1))
    assert 'the servers could not be listed' in caplog.text
    assert 'look with "openstack server list --name web" and delete it' \
        in caplog.text
    assert len(cloud.servers) == 1


def test_a_server_of_the_name_is_refused_before_anything(cloud):
    """An import or a cutover run again must not make a second server
    of the VM: Nova allows a name twice.  Only the exact name counts
    (Nova's filter is a regular expression)."""
    srv = server.create(plan_for(cloud), volumes(cloud, 1))
    assert plan_for(cloud, server_name='we').name == 'we'
    assert plan_for(cloud, server_name='web.').name == 'web.'
    calls = len(cloud.calls)
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud)
    assert str(e.value) == (
        'server web exists already (%s, BUILD), made by an earlier any2kvm '
        'run: delete it ("migration rollback" when a cutover made it), or '
        'give --server-name if it is another VM\'s' % srv.id)
    assert len(cloud.calls) == calls
    # One any2kvm did not make (no request token).
    cloud.servers[srv.id].metadata = {}
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud)
    assert str(e.value) == ('server web exists already (%s, BUILD); give '
                            '--server-name, or delete it first' % srv.id)
    server._delete_server(cloud.clients(), srv.id, poll=0)
    assert plan_for(cloud).name == 'web'


def test_volume_count_must_match(cloud):
    plan = plan_for(cloud, disk_count=2)
    with pytest.raises(server.ServerError) as e:
        server.create(plan, volumes(cloud, 1))
    assert str(e.value) == 'server web: 1 volume(s) given for 2 disk(s)'


# -- booting ------------------------------------------------------------------

def test_boot_verified(cloud):
    srv = server.create(plan_for(cloud), volumes(cloud, 1))
    boot = server.wait_boot(srv)
    assert boot.line == 'ANY2KVM-BOOT-OK token'
    assert boot.message().startswith('boot verified after ')
    assert 0 <= boot.active_seconds <= boot.seconds


def test_a_transient_error_while_waiting_does_not_cost_the_server(
        cloud, caplog):
    """A 503 (the API restarting, a proxy) or a connection that failed
    while the boot is waited for is asked again: the server (and, in a
    cutover, the downtime spent) is not thrown away for it."""
    from keystoneauth1 import exceptions as ks_exc
    srv = server.create(plan_for(cloud), volumes(cloud, 1))
    cloud.fail_get = [fakenova.ServiceUnavailable('Service Unavailable'),
                      None,
                      ks_exc.ConnectFailure('Unable to establish connection'),
                      fakenova.GatewayTimeout('Gateway Timeout')]
    with caplog.at_level('WARNING'):
        boot = server.wait_boot(srv)
    assert boot.line == 'ANY2KVM-BOOT-OK token'
    assert srv.id in cloud.servers
    assert caplog.text.count('asking again') == 3
    assert 'server-delete' not in cloud.changes()


def test_an_error_that_says_no_ends_the_wait_at_once(cloud):
    srv = server.create(plan_for(cloud), volumes(cloud, 1))
    cloud.fail_get = [fakenova.Forbidden('Policy does not allow it')]
    with pytest.raises(server.BootError) as e:
        server.wait_boot(srv, timeout=600)
    assert str(e.value) == ('server web (%s): nova: Forbidden: Policy does '
                            'not allow it' % srv.id)


def test_transient_errors_until_the_deadline_end_the_wait(cloud):
    srv = server.create(plan_for(cloud), volumes(cloud, 1))
    cloud.fail_get = [fakenova.ServiceUnavailable('Service Unavailable')
                      ] * 1000
    with pytest.raises(server.BootError) as e:
        server.wait_boot(srv, timeout=0.2, poll=0.01)
    assert 'ServiceUnavailable: Service Unavailable' in str(e.value)


def test_transient():
    from keystoneauth1 import exceptions as ks_exc
    assert os_clients.transient(fakenova.ServiceUnavailable('x'))
    assert os_clients.transient(ks_exc.ConnectTimeout('x'))
    assert not os_clients.transient(fakenova.NotFound('x'))
    assert not os_clients.transient(fakenova.Conflict('x'))
    assert not os_clients.transient(ks_exc.SSLError('x'))
    assert not os_clients.transient(ValueError('x'))
    assert not os_clients.transient(KeyboardInterrupt())


def test_boot_check_regex_and_console_that_grows(cloud):
    cloud.console = lambda calls: '\n'.join(
        'line %d' % i for i in range(calls)) + '\n'
    srv = server.create(plan_for(cloud, boot_check=r'^line 3$'),
                        volumes(cloud, 1))
    assert server.wait_boot(srv).line == 'line 3'


def test_a_windows_source_needs_a_boot_check_it_can_pass(cloud):
    """Windows writes nothing on the serial console Nova reads: the
    default check would wait --boot-timeout, then delete the server (in
    a cutover with the VM down all the while).  Refused before anything
    is done, unless --boot-check says what to wait for; ACTIVE takes
    Nova's ACTIVE, with no console line."""
    windows = dict(FACTS, os={'distro': 'windows',
                              'description': 'Microsoft Windows Server 2019'})
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud, windows)
    assert 'give --boot-check ACTIVE' in str(e.value)
    assert cloud.changes() == []
    cloud.console = ['nothing Windows would write']
    srv = server.create(plan_for(cloud, windows, boot_check='ACTIVE'),
                        volumes(cloud, 1))
    boot = server.wait_boot(srv)
    assert boot.line.startswith('ACTIVE (--boot-check ACTIVE')
    # A Linux source keeps the console proof.
    srv = server.create(plan_for(cloud, server_name='web-linux'),
                        volumes(cloud, 1))
    with pytest.raises(server.BootError):
        server.wait_boot(srv, timeout=0.05)


@pytest.mark.parametrize('line', ['Debian GNU/Linux 12 web ttyS0',
                                  'web login: ',
                                  'Cloud-init v. 24.1 finished at Fri',
                                  'ANY2KVM-BOOT-OK root=/dev/sda1'])
def test_default_boot_check(line):
    import re
    matched = re.search(server.DEFAULT_BOOT_CHECK, line) is not None
    assert matched == ('ttyS0' not in line)


def test_error_server_is_reported_with_novas_fault(cloud):
    cloud.fail_build = 'No valid host was found. There are not enough ' \
                       'hosts available.'
    srv = server.create(plan_for(cloud), volumes(cloud, 1))
    with pytest.raises(server.BootError) as e:
        server.wait_boot(srv)
    assert str(e.value) == ('server web (%s) went to ERROR: No valid host '
                            'was found. There are not enough hosts '
                            'available.' % srv.id)
    assert e.value.fault.startswith('No valid host')


def test_boot_not_verified_rolls_back_and_keeps_volumes(cloud):
    cloud.console = ['line %d' % i for i in range(40)]
    vols = volumes(cloud, 2)
    plan = plan_for(cloud, boot_timeout=1, network_map={
        'nic0': 'private', 'nic1': 'private'}, poll=0.05)
    with pytest.raises(server.BootError) as e:
        server.create_and_boot(plan, vols)
    text = str(e.value)
    assert "ACTIVE, but no console line matched" in text
    assert 'last console lines: line 25 | line 26 |' in text
    assert text.endswith('line 39; server and its ports deleted; volumes '
                         'kept: web (%s), web-disk1 (%s)' % (
                             vols[0]['id'], vols[1]['id']))
    assert e.value.console_tail == ['line %d' % i for i in range(25, 40)]
    assert cloud.servers == {} and cloud.ports == {}
    assert all(cloud.volumes[v['id']].status == 'available' for v in vols)


def test_boot_not_verified_deletes_the_flavor_made_for_the_server(cloud):
    """--create-flavor: the flavor made for a server whose boot was not
    verified goes with it (a cutover run again makes its own)."""
    cloud.console = ['nothing to see']
    vols = volumes(cloud, 1)
    plan = plan_for(cloud, dict(FACTS, cpus=3, memory_mb=4096),
                    create_flavor=True, boot_timeout=1, poll=0.05,
                    network_map={'nic0': 'private', 'nic1': 'private'})
    with pytest.raises(server.BootError):
        server.create_and_boot(plan, vols)
    assert cloud.changes()[0] == 'flavor-create'
    assert cloud.changes()[-1] == 'flavor-delete'
    assert plan.created_flavor is None


def test_rollback_finds_the_server_from_the_volumes(cloud):
    cloud.add_network('other')
    vols = volumes(cloud, 2)
    plan = plan_for(cloud, network_map={'nic0': 'private',
                                        'nic1': 'other'})
    srv = server.create(plan, vols)
    server.wait_boot(srv)
    foreign = cloud.neutron.create_port(
        cloud.neutron.find_network('other').id)
    foreign.device_id = srv.id
    result = server.rollback(cloud.clients(), volumes=[v['id']
                                                       for v in vols],
                             poll=0)
    assert result['server_id'] == srv.id
    assert sorted(result['ports_deleted']) == sorted(srv.port_ids)
    assert result['volumes_kept'] == [v['id'] for v in vols]
    assert cloud.servers == {} and list(cloud.ports) == [foreign.id]
    assert all(cloud.volumes[v['id']].status == 'available' for v in vols)
    # Nothing attached any more: nothing to do.
    assert server.rollback(cloud.clients(), volumes=[vols[0]['id']],
                           poll=0)['server_id'] is None


def test_rollback_waits_until_a_deleted_server_is_gone(cloud):
    """Nova lists a deleted server (status DELETED) for a moment before
    its record goes: the rollback returns once Nova answers 404."""
    cloud.deleted_polls = 3
    vols = volumes(cloud, 1)
    srv = server.create(plan_for(cloud), vols)
    server.wait_boot(srv)
    server.rollback(cloud.clients(), srv, poll=0)
    assert cloud.servers == {}
    with pytest.raises(fakenova.NotFound):
        cloud.nova.servers.get(srv.id)


def test_rollback_warns_of_a_server_still_deleted_at_the_bound(
        cloud, caplog):
    cloud.deleted_polls = 10 ** 9
    vols = volumes(cloud, 1)
    srv = server.create(plan_for(cloud), vols)
    server.wait_boot(srv)
    with caplog.at_level('WARNING'):
        server._delete_server(cloud.clients(), srv.id, timeout=0.2,
                              poll=0.01)
    assert 'is deleted but still listed (status DELETED)' in caplog.text
    assert cloud.nova.servers.get(srv.id).status == 'DELETED'


# -- the real novaclient's request --------------------------------------------

class _Nova(http.server.BaseHTTPRequestHandler):
    requests = None

    def do_POST(self):
        length = int(self.headers.get('Content-Length') or 0)
        body = json.loads(self.rfile.read(length).decode())
        self.requests.append((self.path, dict(self.headers), body))
        reply = json.dumps({'server': {'id': 'srv-1', 'links': [],
                                       'adminPass': 'x'}}).encode()
        self.send_response(202)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def nova_standin():
    handler = type('Handler', (_Nova,), {'requests': []})
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    httpd.timeout = 10
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield 'http://127.0.0.1:%d/v2.1' % httpd.server_address[1], \
            handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_the_request_novaclient_sends(cloud, nova_standin):
    from keystoneauth1 import session as ks_session
    from novaclient import client as nova_client
    url, requests = nova_standin
    nova = nova_client.Client(server.MICROVERSION,
                              session=ks_session.Session(timeout=30),
                              endpoint_override=url)
    clients = server.Clients(nova=nova, neutron=cloud.neutron,
                             cinder=cloud.cinder)
    flavor = fakenova.Obj(id='42', name='m1.small', vcpus=1, ram=512)
    plan = server.Plan(clients, opts(no_network=True,
                                     availability_zone='az1'),
                       'web', flavor, [], 0, 2, [])
    srv = server.create(plan, ['vol-a', 'vol-b'])
    assert srv.id == 'srv-1'
    (path, headers, body), = requests
    assert path == '/v2.1/servers'
    assert headers['X-OpenStack-Nova-API-Version'] == '2.37'
    assert re.fullmatch('[0-9a-f]{32}', body['server'].pop('metadata')[
        server.REQUEST_KEY])
    assert body == {'server': {
        'name': 'web', 'imageRef': '', 'flavorRef': '42',
        'min_count': 1, 'max_count': 1, 'networks': 'none',
        'availability_zone': 'az1',
        'block_device_mapping_v2': [
            {'uuid': 'vol-a', 'source_type': 'volume',
             'destination_type': 'volume', 'boot_index': 0,
             'delete_on_termination': False},
            {'uuid': 'vol-b', 'source_type': 'volume',
             'destination_type': 'volume', 'boot_index': 1,
             'delete_on_termination': False}]}}


def test_error_message_is_one_line(cloud):
    with pytest.raises(exception.Any2KvmError) as e:
        plan_for(cloud, dict(FACTS, cpus=64, memory_mb=1 << 20))
    assert '\n' not in str(e.value)


# -- the Cinder target and both command lines ---------------------------------

def _fake_volume_writer(cloud, fail=None):
    def write(self, vm, name, props=None, disk=None, progress=None):
        cloud.calls.append(('volumes-write', name))
        if fail:
            raise exception.TargetError(path='cinder', reason=fail)
        rows = []
        for index in range(len(vm.disks)):
            vol_name = name if index == 0 else '%s-disk%d' % (name, index)
            rows.append({'disk': index, 'name': vol_name,
                         'id': cloud.add_volume(vol_name).id, 'size': 1})
        return rows
    return write


@pytest.fixture
def cinder_target(cloud, monkeypatch):
    from any2kvm_os.targets import cinder
    clients = cloud.clients()
    monkeypatch.setattr(server, 'Clients', lambda *a, **kw: clients)
    monkeypatch.setattr(cinder.CinderTarget, '_write_volumes',
                        _fake_volume_writer(cloud))
    return cinder.CinderTarget


def _vm(facts, disks=1):
    from any2kvm_os import vm as vm_mod
    return vm_mod.Vm('web.ova', 'ova', [object()] * disks, facts)


def test_target_plans_before_writing(cloud, cinder_target):
    target = cinder_target(create_server=True)
    target.server_options.poll = 0
    with pytest.raises(server.ServerError) as e:
        target.write(_vm(FACTS), 'web')
    assert str(e.value).startswith('unmapped NIC(s): nic0')
    assert cloud.calls == []
    with pytest.raises(exception.Any2KvmError) as e:
        target.write(_vm(FACTS), 'web', disk=0)
    assert str(e.value) == ('--create-server needs every disk of the VM: '
                            'drop --disk')


def test_target_discards_a_made_flavor_when_the_write_fails(
        cloud, cinder_target, monkeypatch):
    monkeypatch.setattr(cinder_target, '_write_volumes',
                        _fake_volume_writer(cloud, fail='no space'))
    target = cinder_target(create_server=True, create_flavor=True,
                           no_network=True)
    with pytest.raises(exception.TargetError):
        target.write(_vm(dict(FACTS, cpus=8, memory_mb=4096)), 'web')
    assert cloud.changes() == ['flavor-create', 'flavor-access',
                               'volumes-write', 'flavor-delete']


def test_target_creates_and_verifies(cloud, cinder_target):
    target = cinder_target(create_server=True, no_network=True)
    target.server_options.poll = 0
    results = target.write(_vm(FACTS, disks=2), 'web')
    info = results[0]['server']
    assert info['name'] == 'web' and info['flavor_name'] == 'm1.small'
    assert info['boot_message'].startswith('boot verified after ')
    assert [v['name'] for v in info['volumes']] == ['web', 'web-disk1']
    assert info['plan'][0].startswith('flavor auto: m1.small')
    assert 'server' not in results[1]


def test_cli_refuses_server_options_elsewhere(capsys, monkeypatch):
    from any2kvm_os import api
    from any2kvm_os.cmd import any2kvm

    def no_cloud(*a):
        raise AssertionError('the cloud was asked')
    monkeypatch.setattr(api, 'cloud_session', no_cloud)
    for argv, err in (
            (['--flavor', 'm1.small'],
             '--flavor does not apply to target glance'),
            (['--target', 'cinder', '--flavor', 'm1.small', '--no-network'],
             '--flavor, --no-network: only with --create-server'),
            (['--target', 'cinder', '--create-server', '--no-network',
              '--keep-macs'], '--no-network contradicts --keep-macs')):
        assert any2kvm.main(['import', 'd.vhd', '--name', 'vm1'] + argv) \
            == 1
        assert capsys.readouterr().err == 'any2kvm: error: %s\n' % err


def test_cli_import_create_server(cloud, cinder_target, monkeypatch,
                                  capsys, tmp_path):
    from any2kvm_os import api
    from any2kvm_os.cmd import any2kvm
    from tests.lib import vhdbuild
    monkeypatch.setattr(api, 'cloud_session',
                        lambda cloud_name: (object(), None, None))
    monkeypatch.setattr(server.Options, '__init__', _no_poll(
        server.Options.__init__))
    paths = vhdbuild.write_chain(tmp_path, 1)
    argv = ['import', str(paths[0]), '--name', 'web', '--target', 'cinder',
            '--create-server', '--flavor', 'm1.tiny',
            '--boot-check', 'BOOT-OK']
    assert any2kvm.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith('server:        web (')
    assert out[-2] == ('               flavor m1.tiny (1 vCPU, 256 MiB RAM), '
                       'as given')
    assert out[-1].startswith('               boot verified after ')
    assert out[-1].endswith(': ANY2KVM-BOOT-OK token')
    # Run again (a script retried): refused before anything is written,
    # not a second server of the VM.
    made = dict(cloud.volumes)
    assert any2kvm.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith('any2kvm: error: server web exists already (')
    assert err.endswith('ACTIVE), made by an earlier any2kvm run: delete '
                        'it ("migration rollback" when a cutover made it), '
                        'or give --server-name if it is another VM\'s\n')
    assert cloud.volumes == made
    argv[argv.index('web')] = 'web2'
    assert any2kvm.main(argv + ['--format', 'json']) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown['server']['flavor_name'] == 'm1.tiny'
    assert shown['server']['volumes'][0]['name'] == 'web2'
    cloud.console = ['no luck']
    argv[argv.index('web2')] = 'web3'
    assert any2kvm.main(argv + ['--boot-timeout', '1']) == 1
    err = capsys.readouterr().err
    assert err.startswith('any2kvm: error: server web3 (')
    assert 'last console lines: no luck; server and its ports deleted; ' \
        'volumes kept: web3 (' in err
    assert err.count('\n') == 1


def _no_poll(init):
    def __init__(self, *a, **kw):
        init(self, *a, **kw)
        self.poll = 0.05
    return __init__


def test_osc_import_has_the_options():
    from unittest import mock
    from any2kvm_os.osc.v1 import import_image
    cmd = import_image.ImportImage(mock.Mock(), None)
    parser = cmd.get_parser('openstack any2kvm import')
    args = parser.parse_args(['vm.ova', '--name', 'web', '--target',
                              'cinder', '--create-server', '--flavor',
                              'auto', '--network-map', 'VM Network=private',
                              '--keep-macs'])
    o = server.Options.from_args(args)
    assert (o.create_server, o.flavor, o.network_map, o.keep_macs) == (
        True, 'auto', {'VM Network': 'private'}, True)


def test_the_servers_name(cloud):
    o = opts(no_network=True)
    assert server.prepare(cloud.clients(), FACTS, o).name == 'web'
    assert server.prepare(cloud.clients(), dict(FACTS, name=''), o,
                          disk_count=1).name == 'any2kvm-server'
    o.server_name = 'kvm-web'
    assert server.prepare(cloud.clients(), FACTS, o, 'x').name == 'kvm-web'


# -- the boot_disk fact -------------------------------------------------------

def _flip_bootable(xml):
    """The first bootable VBD becomes unbootable, the second bootable."""
    xml = xml.decode() if isinstance(xml, bytes) else xml
    on = '<name>bootable</name><value><boolean>1</boolean>'
    off = '<name>bootable</name><value><boolean>0</boolean>'
    first = xml.index(on)
    second = xml.index(off)
    xml = xml[:first] + off + xml[first + len(on):]
    return (xml[:second] + on + xml[second + len(off):]).encode()


def test_xva_says_which_disk_boots():
    from any2kvm_os.containers.xva import metadata
    from tests.lib import xvabuild
    disks = [('Ref:3', 1 << 20, 0), ('Ref:7', 1 << 20, 1)]
    xml = xvabuild.ova_xml(disks)
    assert 'boot_disk' not in metadata.parse_metadata('a.xva', xml).vm
    meta = metadata.parse_metadata('a.xva', _flip_bootable(xml))
    assert meta.vm['boot_disk'] == 1


def test_the_boot_disk_gets_the_vms_properties(tmp_path):
    from any2kvm_os.targets import glance
    from any2kvm_os import vm as vm_mod
    from unittest import mock
    from tests.lib import vhdbuild
    paths = vhdbuild.write_chain(tmp_path, 1)
    made = []

    class Images(object):
        def create(self, **kw):
            made.append(kw)
            raise exception.TargetError(path='glance', reason='stop')

    target = glance.GlanceTarget()
    vm = vm_mod.Vm('x', 'xva', [], {'boot_disk': 1, 'firmware': 'uefi'})
    disk = mock.Mock(size_hint=1 << 20)
    with mock.patch.object(glance, 'disk_stream') as stream:
        stream.return_value.__enter__.return_value = paths[0].read_bytes()
        for index in (0, 1):
            with pytest.raises(exception.TargetError):
                target._upload(mock.Mock(images=Images()), vm, disk, index,
                               'web', 2, {}, None, [])
    assert 'hw_firmware_type' not in made[0]
    assert made[1]['hw_firmware_type'] == 'uefi'


# -- the migration's side (server_step) ---------------------------------------

def _migration(cloud, name='web'):
    return {'name': name, 'target': 'cinder',
            'disks': [{'target_ref': v['id'], 'name': v['name']}
                      for v in volumes(cloud, 1)]}


def test_rollback_deletes_the_flavor_made_for_the_server(cloud):
    """--create-flavor: the flavor is recorded with the server as soon as
    Nova has it, and "migration rollback" deletes it after the server
    (a cutover run again makes its own)."""
    from any2kvm_os.migration import server_step
    step = server_step.ServerStep(opts(create_flavor=True, no_network=True),
                                  clients=cloud.clients())
    m = _migration(cloud)
    step.prepare(m, dict(FACTS, cpus=4, memory_mb=8192))
    recorded = []
    details = step.create(m, created=recorded.append)
    made = details['created_flavor']
    assert recorded[0]['created_flavor'] == made
    assert cloud.flavors[made].name == NEW_FLAVOR
    assert step.rollback(details, m) == details['server_id']
    assert made not in cloud.flavors and not cloud.servers
    assert cloud.changes()[-1] == 'flavor-delete'


def test_rollback_keeps_a_made_flavor_another_server_has(cloud, caplog):
    """The flavor is private to the project, where the next VM of its size
    takes it (--flavor auto): kept while a server has it."""
    from any2kvm_os.migration import server_step

    def step():
        return server_step.ServerStep(
            opts(create_flavor=True, no_network=True),
            clients=cloud.clients())
    first, second = step(), step()
    m1, m2 = _migration(cloud, 'web'), _migration(cloud, 'db')
    first.prepare(m1, dict(FACTS, cpus=4, memory_mb=8192))
    d1 = first.create(m1)
    second.prepare(m2, dict(FACTS, name='db', cpus=4, memory_mb=8192))
    d2 = second.create(m2)
    assert 'created_flavor' not in d2 and d2['flavor'] == NEW_FLAVOR
    with caplog.at_level('WARNING'):
        first.rollback(d1, m1)
    assert d1['created_flavor'] in cloud.flavors
    assert 'kept: server %s has it' % d2['server_id'] in caplog.text


# -- the second review of the above -------------------------------------------

def test_the_name_is_found_beyond_the_first_page(cloud):
    """Nova's name filter is a regular expression and a list without
    limit is one page (1000): the server named exactly so is found among
    more, and a name's every character reads the same in each database's
    dialect."""
    for i in range(1001):
        cloud.servers['s%d' % i] = fakenova.Obj(
            id='s%d' % i, name='web-%d' % i, status='ACTIVE', flavor='x',
            metadata={}, delete_polls=None)
    srv = server.create(plan_for(cloud, server_name='web'),
                        volumes(cloud, 1))
    with pytest.raises(server.ServerError, match='server web exists'):
        plan_for(cloud)
    assert srv.id in [s.id for s in server._named(cloud.clients(), 'web')]
    assert server._name_filter('a|b c-d.e_1') == '^a.*b.*c.*d.*e_1$'
    # (MySQL before 8.0.4 matches bytes: a two-byte character is more
    # than one '.'.)
    assert server._name_filter('caf\u00e9 (2)') == '^caf.*2.*$'
    assert plan_for(cloud, server_name='web|x').name == 'web|x'


def test_an_earlier_runs_server_of_the_name_is_said_so(cloud):
    plan = plan_for(cloud)
    cloud.interrupt_create = KeyboardInterrupt()
    cloud.fail_list = fakenova.ServiceUnavailable('Service Unavailable')
    with pytest.raises(KeyboardInterrupt):
        server.create(plan, volumes(cloud, 1))
    cloud.fail_list = None
    with pytest.raises(server.ServerError) as e:
        plan_for(cloud)
    assert 'made by an earlier any2kvm run: delete it ("migration ' \
        'rollback" when a cutover made it)' in str(e.value)


def test_a_create_answer_is_looked_for_a_while(cloud, monkeypatch):
    """The API may still be handling the request when the answer was
    lost: the server is looked for again until it shows."""
    real = server._named
    answers = [[], []]

    def late(clients, name):
        return answers.pop() if answers else real(clients, name)
    monkeypatch.setattr(server, '_named', late)
    monkeypatch.setattr(server, 'REQUEST_LOOKUP_SECONDS', 10)
    cloud.interrupt_create = KeyboardInterrupt()
    plan = plan_for(cloud)
    plan.options.poll = 0.01
    with pytest.raises(KeyboardInterrupt):
        server.create(plan, volumes(cloud, 1))
    assert cloud.servers == {}


def test_a_flavor_made_meanwhile_by_another_run_is_taken(cloud):
    """Two VMs of one size at once: the second create meets the first's
    flavor (409) and takes it, made by neither for itself."""
    clients = cloud.clients()
    first, made = server._create_flavor(clients, 4, 8192)
    assert made == first.id
    second, made = server._create_flavor(clients, 4, 8192)
    assert (second.id, made) == (first.id, None)


def test_a_flavor_another_run_has_not_yet_shared_is_waited_for(
        cloud, monkeypatch):
    """The other run has made the flavor (409) and not yet given the
    project access to it: the list shows it a moment later, and it is
    taken; when it never does, the refusal names the flavor."""
    monkeypatch.setattr(server, 'FLAVOR_RACE_POLL', 0.01)
    clients = cloud.clients()
    name = 'any2kvm-4vcpu-8192mb-%s' % cloud.project_id[:8]
    other = cloud.add_flavor(name, 4, 8192, 0, is_public=False)
    lists = []
    listed = cloud.nova.flavors.list

    def listing(*a, **kw):
        lists.append(1)
        if len(lists) == 3:
            # The other run's next request.
            cloud.flavor_access[other.id] = {cloud.project_id}
        return listed(*a, **kw)
    monkeypatch.setattr(cloud.nova.flavors, 'list', listing)
    flavor, made = server._create_flavor(clients, 4, 8192)
    assert (flavor.id, made) == (other.id, None) and len(lists) == 3

    monkeypatch.setattr(server, 'FLAVOR_RACE_SECONDS', 0.05)
    cloud.add_flavor('any2kvm-2vcpu-1024mb-%s' % cloud.project_id[:8], 2,
                     1024, 0, is_public=False)
    with pytest.raises(server.ServerError) as e:
        server._create_flavor(clients, 2, 1024)
    assert 'a flavor named any2kvm-2vcpu-1024mb-' in str(e.value)
    assert len(lists) > 4


def test_a_failed_run_keeps_the_flavor_another_server_has(cloud):
    a = plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                 create_flavor=True)
    b = plan_for(cloud, dict(FACTS, name='db', cpus=4, memory_mb=8192),
                 create_flavor=True, server_name='db')
    assert b.flavor.id == a.flavor.id and b.created_flavor is None
    server.create(b, volumes(cloud, 1))
    server.discard(a)
    assert a.flavor.id in cloud.flavors


def test_a_flavor_deleted_since_the_plan_is_made_again(cloud):
    """Run A made the flavor, run B took it; A failed and deleted it,
    unused then: B's create request makes it again (and B owns it), or,
    without --create-flavor, is refused before anything is made."""
    a = plan_for(cloud, dict(FACTS, cpus=4, memory_mb=8192),
                 create_flavor=True)
    b = plan_for(cloud, dict(FACTS, name='db', cpus=4, memory_mb=8192),
                 create_flavor=True, server_name='db')
    server.discard(a)
    assert a.flavor.id not in cloud.flavors
    srv = server.create(b, volumes(cloud, 1))
    assert srv.flavor != a.flavor.id and srv.flavor in cloud.flavors
    assert srv.created_flavor == srv.flavor
    cloud.add_flavor('m1.big', 4, 4096)
    c = plan_for(cloud, flavor='m1.medium', server_name='c')
    cloud.flavors.pop(c.flavor.id)
    calls = len(cloud.calls)
    with pytest.raises(server.ServerError) as e:
        server.create(c, volumes(cloud, 1))
    assert str(e.value).startswith('flavor m1.medium (2 vCPU, 1024 MiB '
                                   'RAM) was deleted since the server was '
                                   'planned; volumes kept: web (')
    assert len(cloud.calls) == calls
    # Only a flavor --create-flavor made is made again (of another, its
    # size may be more than the source's, its extra specs unknown).
    d = plan_for(cloud, dict(FACTS, cpus=2, memory_mb=700),
                 create_flavor=True, server_name='d')
    assert d.flavor.name == 'm1.big' and d.created_flavor is None
    cloud.flavors.pop(d.flavor.id)
    with pytest.raises(server.ServerError, match='was deleted since'):
        server.create(d, volumes(cloud, 1))
    assert len(cloud.calls) == calls


def test_a_second_interrupt_during_the_lookup_still_deletes_the_ports(
        cloud, monkeypatch):
    def interrupted(clients, name):
        raise KeyboardInterrupt()
    plan = plan_for(cloud, network_map={'nic0': 'private',
                                        'nic1': 'private'})
    monkeypatch.setattr(server, '_named', interrupted)
    cloud.interrupt_create = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        server.create(plan, volumes(cloud, 1))
    assert cloud.ports == {}
    assert cloud.changes().count('port-delete') == 2


def test_show_names_the_flavor_the_cutover_made():
    from any2kvm_os import api
    text = api.details_text({'server_name': 'web', 'server_id': 's1',
                             'flavor': 'any2kvm-4vcpu-8192mb-5e1f0c2b',
                             'created_flavor': '0004', 'port_ids': []})
    assert text == (', server web, server id s1, flavor '
                    'any2kvm-4vcpu-8192mb-5e1f0c2b, made by --create-flavor '
                    '(id 0004)')


def test_not_found_by_status_or_class():
    """A 404 is "not there" whatever the client's class calls it; a 503
    is not."""
    from cinderclient import exceptions as cinder_exc
    from keystoneauth1 import exceptions as ks_exc
    from novaclient import exceptions as nova_exc
    assert os_clients.not_found(nova_exc.NotFound(404))
    assert os_clients.not_found(cinder_exc.NotFound(404))
    assert os_clients.not_found(ks_exc.NotFound())
    assert os_clients.not_found(ks_exc.HttpError(http_status=404))
    assert os_clients.not_found(fakenova.NotFound('x'))
    assert not os_clients.not_found(nova_exc.ClientException(503))
    assert not os_clients.not_found(ks_exc.HttpError(http_status=503))
    assert not os_clients.not_found(ValueError('x'))
    assert not os_clients.not_found(KeyboardInterrupt())
    assert os_clients.http_code(cinder_exc.OverLimit(413)) == 413
    assert os_clients.http_code(ValueError('x')) is None
