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

"""``import --target cinder --create-server`` on the loopback cloud's real
Nova (libvirt, TCG), Neutron and Cinder.

Guest 2: the boot guest of :mod:`tests.lib.guestbuild` as an OVA with a
streamOptimized VMDK goes through ``openstack any2kvm import --target
cinder --create-server --flavor auto --no-network``; its token appears on
the console, and the domain libvirt built has the SCSI disk on a
virtio-scsi controller the volume's image metadata asked for.  Two TCG
boots in all (about a minute each): the verified one, and one whose
readiness pattern never matches (exit 1, console tail, server deleted,
volume kept).  The refusals and the NIC mapping cost no boot.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from xml.etree import ElementTree

import pytest

from any2kvm_os.targets import server
from tests.lib import guestbuild
from tests.lib.cloudapi import server_clients
from tests.lib.cloudapi import servers_named
from tests.lib.cloudapi import unique
from tests.lib.cloudapi import wait_for
from tests.lib import ovabuild
from tests.lib.tools import missing_tool

CLI_TIMEOUT = 900


@pytest.fixture(scope='module')
def nova_clients(cloud, keystone_session):
    return server_clients(cloud, keystone_session)


@pytest.fixture(scope='module')
def guest_raw(tmp_path_factory):
    missing = guestbuild.missing_tools()
    if missing:
        missing_tool('boot guest: missing %s' % ', '.join(missing))
    path = tmp_path_factory.mktemp('guest2') / 'guest.raw'
    token = guestbuild.nova_guest(path)
    return path, token


def _ova(qemu_img, guest_raw, tmp_path, **ovf):
    raw, _token = guest_raw
    return ovabuild.small_ova(qemu_img, raw, tmp_path / 'guest2.ova', **ovf)


def _cli(program, cloud, *args):
    """Run ``program`` of this virtualenv with the cloud's openrc."""
    env = dict(os.environ)
    env.update(cloud.env)
    cmd = [os.path.join(os.path.dirname(sys.executable), program)]
    return subprocess.run(cmd + [str(a) for a in args], env=env,
                          capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, cwd='/')


def openstack(cloud, *args):
    return _cli('openstack', cloud, *args)


def any2kvm(cloud, *args):
    return _cli('any2kvm', cloud, *args)


def _named(cinder, nova, name):
    vols = [v.id for v in cinder.volumes.list(search_opts={'name': name})]
    srvs = [s.id for s in nova.servers.list(search_opts={'name': name})]
    return vols, srvs


def _domain_xml(cloud, nova, server_id):
    uri = cloud.env.get('LOOPBACK_LIBVIRT_URI')
    virsh = shutil.which('virsh')
    if not uri or not virsh:
        missing_tool('virsh or LOOPBACK_LIBVIRT_URI missing: cannot read '
                     'the domain')
    got = nova.servers.get(server_id).to_dict()
    domain = got['OS-EXT-SRV-ATTR:instance_name']
    r = subprocess.run([virsh, '-c', uri, 'dumpxml', domain],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _assert_rolled_back(r, nova, cinder, name, vols, srvs, start, says):
    """The failed import ``r``: exit 1, a one-line error starting with
    ``start`` and holding ``says``, one volume kept (named at the end of
    the error, available again), the server gone: at once, since the
    library's rollback returns only once Nova answers 404 for it (no
    DELETED moment to wait out).  Returns the error."""
    assert r.returncode == 1, r.stdout
    err = r.stderr
    assert err.count('\n') == 1, err
    assert err.startswith(start), err
    assert says in err
    assert len(vols) == 1
    assert servers_named(nova, name, settle=0) == [], srvs
    assert err.rstrip().endswith(
        '; server and its ports deleted; volumes kept: %s (%s)'
        % (name, vols[0]))
    wait_for(lambda: cinder.volumes.get(vols[0]), ('available',),
             timeout=300)
    return err


def _cleanup(clients, volume_ids):
    for vid in volume_ids:
        try:
            server.rollback(clients, volumes=[vid])
            clients.cinder.volumes.delete(vid)
        except Exception as e:
            print('cleanup of volume %s: %s' % (vid, e))


def test_guest2_ova_boots_with_flavor_auto(cloud, nova_clients, qemu_img,
                                           guest_raw, tmp_path):
    """openstack any2kvm import ... --create-server --flavor auto
    --no-network: boot verified, virtio-scsi disk, rollback keeps the
    volume."""
    _raw, token = guest_raw
    ova = _ova(qemu_img, guest_raw, tmp_path)
    name = unique('guest2')
    nova, cinder = nova_clients.nova, nova_clients.cinder
    t0 = time.monotonic()
    r = openstack(cloud, 'any2kvm', 'import', ova, '--name', name,
                  '--target', 'cinder', '--volume-route', 'image',
                  '--create-server', '--flavor', 'auto', '--no-network',
                  '--boot-check', guestbuild.ready_line(token),
                  '--boot-timeout', 600, '-f', 'json')
    took = time.monotonic() - t0
    vols, _srvs = _named(cinder, nova, name)
    try:
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)
        srv = shown['server']
        print('guest2: import --create-server %.1f s; %s' % (
            took, srv['boot_message']))
        assert srv['flavor_name'] == 'm1.small'
        assert srv['plan'][0].startswith(
            "flavor auto: m1.small (1 vCPU, 512 MiB RAM), the smallest of ")
        assert re.match(r'boot verified after \d+ s \(ACTIVE after \d+ s\): '
                        r'ANY2KVM-BOOT-OK root=/dev/sda1 id=%s( |$)' % token,
                        srv['boot_message']), srv['boot_message']
        assert [v['id'] for v in srv['volumes']] == [shown['id']]
        got = nova.servers.get(srv['id'])
        assert got.status == 'ACTIVE'
        bdms = nova.volumes.get_server_volumes(srv['id'])
        assert [b.volumeId for b in bdms] == [shown['id']]

        xml = ElementTree.fromstring(_domain_xml(cloud, nova, srv['id']))
        disks = xml.findall("./devices/disk[@device='disk']")
        assert [d.find('target').get('bus') for d in disks] == ['scsi']
        assert disks[0].find('source').get('file').endswith(
            'volume-%s' % shown['id'])
        assert [c.get('model') for c in xml.findall(
            "./devices/controller[@type='scsi']")] == ['virtio-scsi']
        assert xml.findall('./devices/interface') == []
        assert xml.find('./os/loader') is None      # BIOS

        # Run again (a script retried): refused by the name, before
        # anything is written (Nova's name filter is a regular
        # expression: the name is escaped, the match exact).
        with pytest.raises(server.ServerError) as e:
            server.prepare(nova_clients, {'cpus': 1, 'memory_mb': 256},
                           server.Options(create_server=True,
                                          no_network=True), name)
        assert str(e.value).startswith(
            'server %s exists already (%s, ACTIVE), made by an earlier '
            'any2kvm run: delete it' % (name, srv['id']))
        assert server.prepare(nova_clients, {'cpus': 1, 'memory_mb': 256},
                              server.Options(create_server=True,
                                             no_network=True),
                              name[:-1]).name == name[:-1]

        result = server.rollback(nova_clients, volumes=[shown['id']])
        assert result['server_id'] == srv['id']
        assert result['volumes_kept'] == [shown['id']]
        assert cinder.volumes.get(shown['id']).status == 'available'
        assert servers_named(nova, name) == []
    finally:
        _cleanup(nova_clients, vols)


def test_refusals_write_nothing(cloud, nova_clients, qemu_img, guest_raw,
                                tmp_path):
    """No flavor fits / an unmapped NIC: one line, exit 1, nothing
    written; on both command lines."""
    nova, cinder = nova_clients.nova, nova_clients.cinder
    big = _ova(qemu_img, guest_raw, tmp_path, cpus=64, memory_mb=1 << 20)
    name = unique('refused')
    r = openstack(cloud, 'any2kvm', 'import', big, '--name', name,
                  '--target', 'cinder', '--create-server', '--no-network')
    assert r.returncode == 1
    assert r.stderr.count('\n') == 1, r.stderr
    assert r.stderr.startswith(
        "--flavor auto: no enabled flavor has at least the source's 64 "
        "vCPU and 1048576 MiB RAM; closest: "), r.stderr
    assert r.stderr.rstrip().endswith('give --flavor NAME or '
                                      '--create-flavor')
    assert _named(cinder, nova, name) == ([], [])

    (tmp_path / 'guest2.ova').unlink()
    ova = _ova(qemu_img, guest_raw, tmp_path, nics=(
        ('VM Network', 'VmxNet3'), ('Backup', 'E1000')))
    r = any2kvm(cloud, 'import', ova, '--name', name, '--target', 'cinder',
                '--create-server', '--network-map', 'Backup=private')
    assert r.returncode == 1
    assert r.stderr == (
        'any2kvm: error: unmapped NIC(s): nic0 (VM Network, vmxnet3); map '
        'them with --network-map SRC=NET[,...] or give --no-network\n')
    r = any2kvm(cloud, 'import', ova, '--name', name, '--target', 'cinder',
                '--create-server', '--network-map',
                'VM Network=private,Backup=no-such-net')
    assert r.returncode == 1
    assert r.stderr == ('any2kvm: error: --network-map: no Neutron network '
                        'no-such-net\n')
    assert _named(cinder, nova, name) == ([], [])


def test_nic_mapping_down_to_the_ports(nova_clients):
    """Ports on real Neutron: networks, MACs and order as mapped.  (The
    loopback cloud's Neutron has no mechanism driver, so a server cannot
    boot with them.)"""
    neutron = nova_clients.neutron
    net = neutron.create_network(name=unique('net'))
    ports = []
    try:
        facts = {'cpus': 1, 'memory_mb': 256, 'nics': [
            {'device': '0', 'mac': 'fa:16:3e:a2:00:01', 'network': 'lan'},
            {'device': '1', 'mac': 'fa:16:3e:a2:00:02', 'network': 'dmz',
             'model': 'e1000'},
            {'device': '2', 'mac': 'fa:16:3e:a2:00:03', 'network': 'lan'}]}
        opts = server.Options(create_server=True, keep_macs=True,
                              network_map={'lan': 'private',
                                           'dmz': net.name})
        plan = server.prepare(nova_clients, facts, opts, unique('nics'))
        assert plan.flavor.name == 'm1.tiny'
        ports = server.create_ports(plan)
        got = [neutron.get_port(p) for p in ports]
        private = neutron.find_network('private')
        assert [(p.network_id, p.mac_address) for p in got] == [
            (private.id, 'fa:16:3e:a2:00:01'), (net.id, 'fa:16:3e:a2:00:02'),
            (private.id, 'fa:16:3e:a2:00:03')]
        assert [p.name for p in got] == ['%s-nic%d' % (plan.name, i)
                                         for i in range(3)]
        # The MACs are taken now: a second plan is refused.
        with pytest.raises(server.ServerError) as e:
            server.prepare(nova_clients, facts, opts, 'again')
        assert str(e.value).startswith('--keep-macs: MAC fa:16:3e:a2:00:01 '
                                       'of NIC 0 is used by port ')
        # Neutron keeps a MAC unique within a network only: the same
        # MACs on the other networks are planned, and Neutron makes
        # their ports.
        swapped = server.Options(create_server=True, keep_macs=True,
                                 network_map={'lan': net.name,
                                              'dmz': 'private'})
        plan = server.prepare(nova_clients, facts, swapped, unique('nics'))
        more = server.create_ports(plan)
        ports += more
        assert [(neutron.get_port(p).network_id,
                 neutron.get_port(p).mac_address) for p in more] == [
            (net.id, 'fa:16:3e:a2:00:01'), (private.id, 'fa:16:3e:a2:00:02'),
            (net.id, 'fa:16:3e:a2:00:03')]
    finally:
        for p in ports:
            neutron.delete_port(p, ignore_missing=True)
        neutron.delete_network(net, ignore_missing=True)


def test_boot_never_verified_is_rolled_back(cloud, nova_clients, qemu_img,
                                            guest_raw, tmp_path):
    """A readiness pattern that never matches: exit 1 with the console's
    last lines, the server deleted, the volume kept and named."""
    _raw, token = guest_raw
    ova = _ova(qemu_img, guest_raw, tmp_path, nics=())
    name = unique('noboot')
    nova, cinder = nova_clients.nova, nova_clients.cinder
    r = any2kvm(cloud, 'import', ova, '--name', name, '--target', 'cinder',
                '--volume-route', 'image', '--create-server',
                '--boot-check', 'NEVER-PRINTED-%s' % token,
                '--boot-timeout', 150)
    vols, srvs = _named(cinder, nova, name)
    try:
        err = _assert_rolled_back(
            r, nova, cinder, name, vols, srvs,
            'any2kvm: error: server %s (' % name, ': boot not verified: ')
        assert 'last console lines: ' in err
        assert 'last console lines: (none)' not in err
        print('console tail: %s' % err.split('last console lines: ')[1])
    finally:
        _cleanup(nova_clients, vols)


def test_corrupted_boot_sector_is_not_verified(cloud, nova_clients,
                                               qemu_img, guest_raw,
                                               tmp_path):
    """A guest whose MBR boot code is zeroed never prints its ready line
    (the BIOS finds no boot loader): exit 1 "boot not verified" after
    --boot-timeout, the server deleted, the volume kept."""
    raw, _token = guest_raw
    broken = tmp_path / 'broken.raw'
    shutil.copyfile(raw, broken)
    with open(broken, 'r+b') as f:
        f.write(bytes(440))         # the boot code; the partitions stay
    ova = ovabuild.small_ova(qemu_img, broken, tmp_path / 'broken.ova',
                             nics=())
    name = unique('badmbr')
    nova, cinder = nova_clients.nova, nova_clients.cinder
    r = any2kvm(cloud, 'import', ova, '--name', name, '--target', 'cinder',
                '--volume-route', 'image', '--create-server',
                '--boot-timeout', 60)
    vols, srvs = _named(cinder, nova, name)
    try:
        err = _assert_rolled_back(
            r, nova, cinder, name, vols, srvs,
            'any2kvm: error: server %s (' % name, ': boot not verified: ')
        print('\ncorrupted boot sector: %s' % err.strip())
    finally:
        _cleanup(nova_clients, vols)


def test_error_server_is_reported_and_rolled_back(cloud, nova_clients,
                                                  qemu_img, guest_raw,
                                                  tmp_path):
    """A server with a port on this Neutron (no mechanism driver: the
    binding fails) goes to ERROR: exit 1 with Nova's fault, the server and
    the port deleted, the volume kept.  No boot is needed."""
    ova = _ova(qemu_img, guest_raw, tmp_path)
    name = unique('error')
    nova, cinder = nova_clients.nova, nova_clients.cinder
    neutron = nova_clients.neutron
    r = openstack(cloud, 'any2kvm', 'import', ova, '--name', name,
                  '--target', 'cinder', '--volume-route', 'image',
                  '--create-server', '--network-map', 'VM Network=private',
                  '--boot-timeout', 600)
    vols, srvs = _named(cinder, nova, name)
    try:
        print('ERROR server: %s' % r.stderr)
        _assert_rolled_back(r, nova, cinder, name, vols, srvs,
                            'server %s (' % name, ') went to ERROR: ')
        assert list(neutron.ports(name='%s-nic0' % name)) == []
    finally:
        _cleanup(nova_clients, vols)


def test_create_flavor_is_private_to_the_project(nova_clients,
                                                 keystone_session):
    """--create-flavor on real Nova: a flavor of the source's size, private
    to the credentials' project (which lists it), found by the next VM
    of that size, deleted by the rollback's helper while no server has
    it."""
    nova = nova_clients.nova
    facts = {'cpus': 3, 'memory_mb': 777, 'nics': []}
    opts = server.Options(create_server=True, create_flavor=True,
                          no_network=True)
    project = keystone_session.get_project_id()
    plan = server.prepare(nova_clients, facts, opts, unique('flavor'))
    made = plan.created_flavor
    try:
        flavor = nova.flavors.get(made)
        assert (flavor.vcpus, flavor.ram, flavor.disk) == (3, 777, 0)
        assert flavor.name == 'any2kvm-3vcpu-777mb-%s' % project[:8]
        assert flavor.is_public is False
        assert [a.tenant_id for a in nova.flavor_access.list(
            flavor=flavor)] == [project]
        again = server.prepare(nova_clients, facts, opts, unique('flavor'))
        assert (again.flavor.id, again.created_flavor) == (made, None)
        assert 'any2kvm-3vcpu-777mb' not in [
            f.name for f in nova.flavors.list(is_public=True)
            if f.is_public]
        assert server.delete_flavor(nova_clients, made, unless_used=True)
        assert made not in [f.id for f in nova.flavors.list(
            is_public=None)]
        made = None
    finally:
        if made:
            nova.flavors.delete(made)
