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

"""The XenServer client (any2kvm_os.sources.xenserver) against the `xe`
stand-in (tests/lib/xenserver): two pieces written apart from the xapi
sources and documentation, each checking the other.  No SSH here: the
runner runs the stand-in's ``xe`` locally, as the SSH layer runs it on a
host.
"""

import functools
import os
import subprocess

import pytest

from any2kvm_os.sources.xenserver import discovery
from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import snapshots
from tests.lib.xenserver import host as xhost


class XeFailed(Exception):
    pass


@pytest.fixture(scope='module')
def standin(tmp_path_factory):
    root, facts = xhost.standard_host(tmp_path_factory.mktemp('xs'))
    calls = []

    def run(argv):
        assert argv[0] == 'xe'
        calls.append(list(argv))
        return _run_on(root, argv)
    return root, facts, run, calls


def _run_on(root, argv):
    """What the stand-in host at ``root`` prints for ``argv`` (its xe, or
    ``cat`` of a file); XeFailed when it exits non-zero."""
    if argv[0] == 'cat':
        r = subprocess.run(list(argv), capture_output=True, text=True,
                           timeout=60, cwd='/')
    else:
        assert argv[0] == 'xe'
        r = subprocess.run([str(xhost.XE)] + list(argv[1:]),
                           capture_output=True, text=True,
                           env=xhost.xe_env(root), timeout=120, cwd='/')
    if r.returncode != 0:
        raise XeFailed('%s: %s%s' % (argv, r.stdout, r.stderr))
    return r.stdout


def mount_base(root):
    return os.path.join(str(root), 'run', 'sr-mount')


def test_two_disks_uefi_vm(standin):
    root, facts, run, _calls = standin
    found = discovery.discover(run, 'two-disks', host='standin',
                               mount_base=mount_base(root))
    assert found.facts['name'] == 'two-disks'
    assert found.facts['firmware'] == 'uefi'
    # The CD drive is skipped; disks in device order, files that exist.
    assert [d.userdevice for d in found.disks] == sorted(
        d.userdevice for d in found.disks)
    assert len(found.disks) == 2
    assert [d.virtual_size for d in found.disks] == [8 << 20, 4 << 20]
    for d in found.disks:
        assert os.path.isfile(d.path), d.path
        assert d.sr_type == 'ext'
    assert [n['network'] for n in found.facts['nics']] == [
        'Pool-wide network associated with eth0',
        'Pool-wide network associated with eth1']


def test_metacharacters_are_only_a_name(standin, tmp_path):
    root, _facts, run, _calls = standin
    assert not os.path.exists('/tmp/pwned')
    found = discovery.discover(run, 'a; touch /tmp/pwned',
                               mount_base=mount_base(root))
    assert found.facts['name'] == 'a; touch /tmp/pwned'
    assert found.disks[0].sr_type == 'nfs'
    assert not os.path.exists('/tmp/pwned')
    found = discovery.discover(run, 'it\'s "mine"',
                               mount_base=mount_base(root))
    assert found.facts['name'] == 'it\'s "mine"'


def test_shared_name_is_refused_with_the_candidates(standin):
    root, facts, run, _calls = standin
    with pytest.raises(errors.AmbiguousVm) as e:
        discovery.discover(run, 'twin', mount_base=mount_base(root))
    for key in ('twin-a', 'twin-b'):
        uuid = facts[key] if isinstance(facts[key], str) else \
            facts[key]['uuid']
        assert uuid in str(e.value)


def test_a_disk_on_an_lvm_sr_is_its_lv_device_node(standin):
    root, facts, run, _calls = standin
    found = discovery.discover(run, 'on-lvm', mount_base=mount_base(root),
                               lvm_dev=os.path.join(str(root), 'dev'))
    d, = found.disks
    assert d.storage == 'lvm' and d.sr_type == 'lvm'
    assert d.path == os.path.join(str(root), 'dev', 'VG_XenStorage-%s'
                                  % facts['sr']['lvm'], 'VHD-' + d.vdi_uuid)
    # The VM runs: its chain is active, the leaf's node is there.
    assert os.path.exists(d.path)


def test_snapshot_as_xenserver_does_it(standin):
    root, _facts, run, _calls = standin
    found = discovery.discover(run, 'two-disks',
                               mount_base=mount_base(root))
    snap = snapshots.snapshot(run, found.uuid, 'any2kvm-test')
    try:
        disks = snapshots.snapshot_disks(run, snap,
                                         mount_base=mount_base(root))
        assert len(disks) == 2
        for d in disks:
            assert os.path.isfile(d.path), d.path
        # The running VM's disks keep their files (now empty leaves).
        again = discovery.discover(run, 'two-disks',
                                   mount_base=mount_base(root))
        assert [d.path for d in again.disks] == [d.path for d in
                                                 found.disks]
    finally:
        snapshots.remove_snapshot(run, snap)
    assert snap not in run(['xe', 'snapshot-list', '--minimal'])


def test_snapshot_of_disks_attached_without_owner_leaves_nothing(tmp_path):
    """xapi's snapshot-uninstall destroys only the VDIs whose VBD has
    ``owner`` in its other-config (cli_operations.ml
    vm_uninstall_common); a VM whose disks were attached with ``xe
    vbd-create`` has none, but xapi gives the snapshot's disk VBDs
    ``owner`` (xapi_vm_clone.ml, CA-58405), so removing the snapshot
    leaves none of its VDIs, and the VM keeps its own."""
    b = xhost.HostBuilder(tmp_path / 'xs')
    sr = b.add_sr('Local storage', 'ext')
    vm = b.add_vm('no-owner', disks=((4 * xhost.MiB, None),), sr=sr,
                  owner=False)
    root = b.save()

    def run(argv):
        r = subprocess.run([str(xhost.XE)] + list(argv[1:]),
                           capture_output=True, text=True,
                           env=xhost.xe_env(root), timeout=120, cwd='/')
        if r.returncode != 0:
            raise XeFailed('%s: %s%s' % (argv, r.stdout, r.stderr))
        return r.stdout

    def snapshot_vdis():
        return run(['xe', 'vdi-list', 'is-a-snapshot=true',
                    '--minimal']).strip()
    own = discovery.discover(run, vm, mount_base=mount_base(root)).disks
    snap = snapshots.snapshot(run, vm, 'any2kvm-test')
    assert snapshot_vdis()
    snapshots.remove_snapshot(run, snap)
    assert snapshot_vdis() == ''
    again = discovery.discover(run, vm, mount_base=mount_base(root)).disks
    assert [d.vdi_uuid for d in again] == [d.vdi_uuid for d in own]
    assert os.path.isfile(again[0].path)


def test_many_disks_odd_names_and_a_cd_through_xe(tmp_path):
    # Twelve disks (userdevice 10 and 11 come after 9, not after 1), a
    # name with non-ASCII letters, a comma and a backslash (which xe
    # escapes only with --minimal), a disk name over two lines (xe
    # prints it as it is) and an empty CD drive after the disks.
    b = xhost.HostBuilder(tmp_path / 'xs')
    sr = b.add_sr('Local storage', 'ext')
    name = 'Bürо, VM \\ «二»'
    vm = b.add_vm(name, disks=[(1 << 20, None)] * 12, sr=sr)
    first = [v for v in b.state['vbd'].values()
             if v['vm'] == vm and v['userdevice'] == '0'][0]
    b.state['vdi'][first['vdi']]['name-label'] = 'system\n  (copy 2)'
    b._vbd(vm, None, '12', 'xvdm', 'CD', bootable=False)
    b.save()

    def run(argv):
        r = subprocess.run([str(xhost.XE)] + list(argv[1:]),
                           capture_output=True, env=xhost.xe_env(b.root),
                           timeout=120, cwd='/')
        if r.returncode != 0:
            raise XeFailed('%s: %r' % (argv, r.stderr))
        return r.stdout
    found = discovery.discover(run, name, host='standin',
                               mount_base=mount_base(b.root))
    assert found.uuid == vm and found.facts['name'] == name
    assert [d.userdevice for d in found.disks] == [str(i)
                                                   for i in range(12)]
    assert all(os.path.isfile(d.path) for d in found.disks)
    assert found.disks[0].vdi_name == 'system\n  (copy 2)'
    assert any('userdevice 12' in n for n in found.notes)


@pytest.fixture(scope='module')
def pool(tmp_path_factory):
    """The stand-in pool (xs-a, where the commands run, and xs-b), and a
    runner of its xe and of ``cat`` (the inventory), as on the host."""
    root, facts = xhost.pool_host(tmp_path_factory.mktemp('pool'))
    return root, facts, functools.partial(_run_on, root)


def _pool_discover(pool, vm):
    root, _facts, run = pool
    return discovery.discover(run, vm, host='xs-a',
                              mount_base=mount_base(root),
                              inventory=os.path.join(
                                  str(root), 'etc', 'xensource-inventory'))


def test_five_disks_and_a_cd_in_userdevice_order(pool):
    found = _pool_discover(pool, 'five-disks')
    assert [d.userdevice for d in found.disks] == ['0', '1', '2', '3', '4']
    assert [d.device for d in found.disks] == ['xvda', 'xvdb', 'xvdc',
                                               'xvdd', 'xvde']
    assert [d.virtual_size for d in found.disks] == [
        (i + 1) << 20 for i in range(5)]
    assert [d.vdi_name for d in found.disks] == ['disk %d' % i
                                                 for i in range(5)]
    assert all(os.path.isfile(d.path) for d in found.disks)
    assert 'skipped an empty drive at userdevice 5 (CD)' in found.notes


def test_srs_must_be_attached_on_the_host_connected_to(pool):
    root, facts, _run = pool
    found = _pool_discover(pool, 'here')
    assert [d.sr_uuid for d in found.disks] == [facts['sr']['local'],
                                                facts['sr']['shared']]
    assert all(os.path.isfile(d.path) for d in found.disks)
    with pytest.raises(errors.UnsupportedStorage) as e:
        _pool_discover(pool, 'on-xs-b')
    msg = str(e.value)
    assert '\n' not in msg
    assert ("xs-a: VM 'on-xs-b', disk userdevice 0: VDI 'on-xs-b 0'" in msg)
    assert ("SR 'Local storage' (%s), which is not attached on this host "
            "'xs-a' (%s); it is attached on 'xs-b' (%s)"
            % (facts['sr']['remote'], facts['hosts']['xs-a'],
               facts['hosts']['xs-b'])) in msg
    with pytest.raises(errors.UnsupportedStorage,
                       match=r"SR 'NFS old' \(%s\), which is not attached "
                       r"on this host .*; it is attached on no host \(its "
                       r"PBDs are unplugged\)$" % facts['sr']['gone']):
        _pool_discover(pool, 'unplugged')
