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

"""Warm migration into Cinder volumes, against a fake Cinder (volumes are
sparse files) and the local xe stand-in; and rollback."""

import hashlib
import json

import pytest

from any2kvm_os import api
from any2kvm_os import exception
from any2kvm_os.migration import destinations
from any2kvm_os.migration import engine
from any2kvm_os.migration.state import sql
from any2kvm_os.targets import cinder as cinder_target
from tests.lib import fakecinder
from tests.lib import imagegen as ig
from tests.lib import miglocal
from tests.lib.xenserver import host as xhost
from tests.lib.xenserver import state as st

MiB = 1 << 20
LOC = 'xenserver://root@standin/two-disks'


@pytest.fixture
def bed(tmp_path):
    root, facts = xhost.standard_host(tmp_path / 'xs')
    store = sql.SqlStore('sqlite:///%s' % (tmp_path / 'state.db'))
    cloud = fakecinder.FakeCinder(tmp_path / 'volumes')
    hosts = []

    def connect(location, limits, args):
        hosts.append(miglocal.LocalHost(root))
        return hosts[-1]

    def kw(**extra):
        dest = destinations.CinderDestination(
            extra.pop('options', {'volume_type': 'fast'}), client=cloud,
            attach=cloud.attach, poll=0.01)
        return dict(connect=connect, dest=dest, **extra)
    return root, facts, store, cloud, kw, hosts


def _writers(root, facts, m):
    return [xhost.GuestWriter(root, d['source_id'],
                              facts['models'][d['source_id']])
            for d in m['disks']]


def _check(cloud, m, facts):
    for d in m['disks']:
        model = facts['models'][d['source_id']]
        data = cloud.read(d['target_ref'], model.size)
        assert hashlib.sha256(data).hexdigest() == model.sha256(), d


def _nova_with_volumes(m):
    """A fake Nova knowing the volumes of migration ``m``."""
    from tests.lib import fakenova
    nova = fakenova.FakeCloud().standard()
    for d in m['disks']:
        nova.volumes[d['target_ref']] = fakenova.Obj(
            id=d['target_ref'], name=d['name'], size=1, status='available',
            attachments=[])
    return nova


def _written_on_kvm(paths, what=b'written on KVM'):
    """What the KVM side writes into each of ``paths`` (volume files): a
    guest, or a fix; the source has other bytes there."""
    for p in paths:
        with open(p, 'r+b') as f:
            f.seek(3 * MiB)
            f.write(what * 100)


def _fixing_probe():
    """A guest probe (``inspect.run_probe``) that fixes /etc/fstab: it
    writes into the disks it is given, and says so."""
    from pathlib import Path
    recorded = Path(__file__).parent / 'data' / 'probe-linux-guests.json'

    def probe(settings, paths, fmt='raw', fix=False, name=None, slots=None):
        _written_on_kvm(paths, b'fixed on KVM')
        return dict(json.loads(recorded.read_text()), fixed=[
            {'files': [{'path': '/etc/fstab'}]}])
    return probe


def _power(root, vm):
    return st.load(str(root))['vm'][vm]['power-state']


def test_create_makes_a_volume_per_disk_attached_once(bed):
    root, facts, store, cloud, kw, _hosts = bed
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    vols = [cloud.volumes.get(d['target_ref']) for d in m['disks']]
    assert [v.name for v in vols] == ['web', 'web-disk1']
    assert [v.size for v in vols] == [1, 1]
    assert [v.volume_type for v in vols] == ['fast', 'fast']
    assert cloud.count('attach') == 2 and not cloud.attached_now
    assert m['target'] == 'cinder'
    assert m['target_options']['volume_type'] == 'fast'
    # Volume ids, never credentials.
    assert 'password' not in json.dumps(m).lower()


def test_create_with_an_unreachable_volume_leaves_nothing(bed):
    root, facts, store, cloud, kw, _hosts = bed
    cloud.unreachable.add('web-disk1')
    with pytest.raises(exception.Any2KvmError, match='cannot be reached'):
        engine.create(store, 'web', LOC, target='cinder', **kw())
    assert cloud.volumes_by_id == {}
    assert store.list() == []
    cloud.unreachable.clear()
    cloud.refuse_create = True
    with pytest.raises(exception.Any2KvmError, match='quota'):
        engine.create(store, 'web', LOC, target='cinder', **kw())
    assert store.list() == []


def test_sync_sync_cutover_attaches_once_per_command(bed):
    root, facts, store, cloud, kw, hosts = bed
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    w0, w1 = _writers(root, facts, m)
    n = cloud.count('attach')
    r1 = engine.sync(store, 'web', **kw())
    assert r1['layers_applied'] == 2
    assert cloud.count('attach') - n == 2      # once per volume
    # Where the sync's time went: every step before the record, in order.
    assert list(r1['steps']) == ['connect', 'snapshot', 'discover',
                                 'open-targets', 'apply-disk-0',
                                 'apply-disk-1', 'close-targets']
    assert all(v >= 0 for v in r1['steps'].values())
    assert sum(r1['steps'].values()) <= r1['seconds'] + 0.01
    assert r1['files_size'] > 0
    w0.write(5 * MiB, ig.pattern(7, 2 * MiB))
    w0.zero(0, 4096)
    w1.write(MiB + 100, b'partial block')
    n = cloud.count('attach')
    r2 = engine.sync(store, 'web', **kw())
    assert r2['layers_applied'] == 2 and r2['rewrites'] == []
    assert cloud.count('attach') - n == 2
    w0.write(3 * MiB, ig.pattern(8, 512))
    n = cloud.count('attach')
    r3 = engine.cutover(store, 'web', **kw())
    assert cloud.count('attach') - n == 2
    assert r3['layers_applied'] == 2 and r3['downtime'] >= 0
    assert list(r3['steps'])[:2] == ['connect', 'discover']
    assert 'shutdown' in r3['steps'] and 'apply-disk-1' in r3['steps']
    assert api.migration_lines('cutover', r3)[-1].startswith(
        '  steps: connect ')
    m = store.get('web')
    assert m['status'] == 'done'
    _check(cloud, m, facts)
    boot, data = [cloud.volumes.get(d['target_ref']) for d in m['disks']]
    assert (boot.bootable, data.bootable) == ('true', 'false')
    assert boot.volume_image_metadata['any2kvm_migration'] == 'web'
    assert data.volume_image_metadata['any2kvm_migration'] == 'web'
    assert boot.volume_image_metadata['hw_firmware_type'] == 'uefi'
    assert boot.volume_image_metadata['hw_scsi_model'] == 'virtio-scsi'
    # The discovery's queries went in one round trip; before the
    # shutdown, the check that the migration's snapshots are all there;
    # the shutdown alone (its exit status is the answer); after the
    # downtime, the check that the VM is still halted with the list of
    # snapshots, the snapshots' disks, and the removal of the two
    # snapshots.
    batches = hosts[-1].batches
    assert [a[1] if a[0] == 'xe' else a[0] for a in batches[0]] == [
        'vm-list', 'vm-param-get', 'vif-list', 'vbd-list', 'vdi-list',
        'vdi-list', 'sr-list', 'pbd-list', 'cat']
    assert [a[1] for a in batches[1]] == ['snapshot-list'] * 2
    assert [a[1] for a in batches[2]] == ['vm-param-get', 'snapshot-list',
                                          'snapshot-list']
    # The snapshots' disks, then the removal.
    assert [a[1] for a in batches[3]] == ['vbd-list'] * 2
    assert [a[1] for a in batches[4]] == ['snapshot-uninstall'] * 2
    assert _power(root, facts['two-disks']) == 'halted'


def test_volumes_are_written_direct(bed, direct_io_calls):
    root, facts, store, cloud, kw, _hosts = bed
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    engine.sync(store, 'web', **kw())
    assert len(direct_io_calls) == len(m['disks'])
    _check(cloud, m, facts)


def test_grown_disk_extends_its_volume_first(bed, monkeypatch):
    root, facts, store, cloud, kw, _hosts = bed
    # A "GiB" of 16 MiB keeps the disks small.
    monkeypatch.setattr(cinder_target, 'GiB', 16 * MiB)
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    w0, _w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **kw())
    w0.grow(40 * MiB)
    w0.write(36 * MiB, ig.pattern(9, 8192))
    engine.sync(store, 'web', **kw())
    vol = cloud.volumes.get(m['disks'][0]['target_ref'])
    assert vol.size == 3
    assert [c[0] for c in cloud.calls].count('extend') == 1
    assert store.get('web')['disks'][0]['virtual_size'] == 40 * MiB
    engine.cutover(store, 'web', **kw())
    _check(cloud, store.get('web'), facts)


def test_rollback_then_sync_without_a_full_rewrite(bed):
    root, facts, store, cloud, kw, hosts = bed
    vm = facts['two-disks']
    with pytest.raises(engine.MigrationError, match='no such'):
        engine.rollback(store, 'web', connect=kw()['connect'])
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    with pytest.raises(engine.MigrationError, match='no cutover'):
        engine.rollback(store, 'web', connect=kw()['connect'])
    w0, w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **kw())
    w0.write(2 * MiB, ig.pattern(10, 4096))
    first = engine.cutover(store, 'web', **kw())
    assert _power(root, vm) == 'halted'
    r = engine.rollback(store, 'web', connect=kw()['connect'])
    assert r['layers_forgotten'] == 2
    assert _power(root, vm) == 'running'
    m = store.get('web')
    assert m['status'] == 'synced' and m['cutover'] is None
    assert len(m['cutovers']) == 1
    assert m['cutovers'][0]['rolled_back_at'] is not None
    assert m['cutovers'][0]['downtime'] == pytest.approx(
        first['downtime'], abs=0.01)
    # The restarted VM writes; the next sync copies the old leaf as an
    # ordinary layer, with no rewrite of the disk.
    w0.write(6 * MiB, ig.pattern(11, 64 * 1024))
    w1.zero(MiB, 4096)
    r = engine.sync(store, 'web', **kw())
    assert r['rewrites'] == []
    assert r['layers_applied'] == 2
    assert r['bytes_written'] < 2 * MiB
    w0.write(MiB, ig.pattern(12, 4096))
    engine.cutover(store, 'web', **kw())
    m = store.get('web')
    _check(cloud, m, facts)
    assert len(m['cutovers']) == 2 and m['status'] == 'done'


def test_a_second_cutover_replaces_the_image_metadata(bed):
    """Cut over with a guest on virtio-scsi, roll back, cut over again
    with the guest on sata: the boot volume's image metadata is the
    second cutover's, with no hw_scsi_model left from the first."""
    from any2kvm_os.migration import guest_step
    root, facts, store, cloud, kw, _hosts = bed
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    boot = cloud.volumes.get(m['disks'][0]['target_ref'])
    engine.sync(store, 'web', **kw())
    store.guest_recorded('web', {'properties': {
        'hw_disk_bus': 'scsi', 'hw_scsi_model': 'virtio-scsi'}})
    r = engine.cutover(store, 'web', guest=guest_step.GuestStep(), **kw())
    assert boot.volume_image_metadata['hw_scsi_model'] == 'virtio-scsi'
    # Without --fix, no "fix" phase in the downtime (0: not shown).
    assert r['phases']['fix'] == 0, r['phases']
    engine.rollback(store, 'web', connect=kw()['connect'])
    engine.sync(store, 'web', **kw())
    store.guest_recorded('web', {'properties': {'hw_disk_bus': 'sata'}})
    engine.cutover(store, 'web', guest=guest_step.GuestStep(), **kw())
    meta = boot.volume_image_metadata
    assert meta['hw_disk_bus'] == 'sata', meta
    assert 'hw_scsi_model' not in meta, meta
    assert meta['any2kvm_migration'] == 'web'
    assert ('delete-image-metadata', boot.id, ['hw_scsi_model']) in \
        cloud.calls


def test_abort_deletes_the_volumes_on_request(bed):
    root, facts, store, cloud, kw, _hosts = bed
    engine.create(store, 'web', LOC, target='cinder', **kw())
    engine.sync(store, 'web', **kw())
    r = engine.abort(store, 'web', delete_targets=True, **kw())
    assert len(r['targets_deleted']) == 2 and r['snapshots_removed'] == 1
    assert cloud.volumes_by_id == {}


def test_cutover_create_server_rollback_sync_cutover_again(bed):
    """--create-server on the fake Nova: a refusal by prepare comes
    before the shutdown; the downtime runs to the verified boot; rollback
    deletes the server (volumes kept) and starts the source; the server's
    guest wrote to the volumes, so the next sync writes them again whole
    (not as an increment: that would keep the guest's blocks beside the
    source's); a second cutover makes a second server; the volumes hold
    the disks."""
    from any2kvm_os.migration import server_step
    from any2kvm_os.targets import server as server_mod

    root, facts, store, cloud, kw, _hosts = bed
    vm = facts['two-disks']
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    nova = _nova_with_volumes(m)
    w0, w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **kw())
    w0.write(2 * MiB, ig.pattern(20, 4096))

    def step(**options):
        return server_step.ServerStep(
            server_mod.Options(create_server=True, poll=0.01, **options),
            clients=nova.clients())

    # A network that does not exist: refused before the shutdown.
    with pytest.raises(exception.Any2KvmError, match='nope'):
        engine.cutover(store, 'web', server=step(
            network_map={'nic0': 'nope', 'nic1': 'nope'}), **kw())
    assert _power(root, vm) == 'running'
    assert 'server-create' not in nova.changes()

    nets = {'nic0': 'private', 'nic1': 'private'}
    # Nova refuses the create request (a 4xx: a quota, a policy), after
    # the shutdown: no server ever existed, so the cutover run again
    # applies the leaf only, not every disk whole.
    from tests.lib import fakenova
    nova.fail_create = fakenova.Forbidden('Quota exceeded for instances')
    with pytest.raises(exception.Any2KvmError, match='Quota exceeded'):
        engine.cutover(store, 'web', server=step(network_map=nets), **kw())
    assert _power(root, vm) == 'halted'
    assert not engine.kvm_changes(store.get('web')['cutover']['details'])
    nova.fail_create = None
    r = engine.cutover(store, 'web', server=step(network_map=nets), **kw())
    assert r['rewrites'] == [], r['rewrites']
    assert _power(root, vm) == 'halted'
    first_server = r['details']['server_id']
    assert r['details']['boot_seconds'] >= 0
    assert r['downtime'] >= 0
    m = store.get('web')
    assert m['cutover']['details']['server_id'] == first_server
    _check(cloud, m, facts)

    # The guest of the server writes to its volumes.
    _written_on_kvm(cloud.path(d['target_ref']) for d in m['disks'])
    out = engine.rollback(store, 'web', connect=kw()['connect'],
                          server=step())
    assert out['rewrite'] == engine.SERVER_CHANGE
    assert out['server_deleted'] == first_server
    assert first_server not in nova.servers
    assert 'server-delete' in nova.changes()
    assert _power(root, vm) == 'running'
    # The volumes are kept.
    assert len(cloud.volumes_by_id) == 2

    w0.write(6 * MiB, ig.pattern(21, 8192))
    w1.write(MiB, ig.pattern(22, 4096))
    r = engine.sync(store, 'web', **kw())
    assert r['bytes_written'] > 6 * MiB, r
    assert not [a for d in store.get('web')['disks'] for a in d['applied']
                if a['partial']]
    w0.zero(2 * MiB, 4096)
    r = engine.cutover(store, 'web', server=step(network_map=nets), **kw())
    assert r['details']['server_id'] != first_server
    m = store.get('web')
    _check(cloud, m, facts)
    assert [bool(c['rolled_back_at']) for c in m['cutovers']] == [
        True, False]
    assert [c['details'].get('server_id') for c in m['cutovers']] == [
        first_server, r['details']['server_id']]


def test_cutover_cut_short_after_its_fix_rewrites_the_disks(
        bed, monkeypatch):
    """``cutover --fix`` whose fix changed the volumes, cut short after
    it (the volumes' metadata refused): the fix was recorded at once, so
    the cutover run again (here without --fix) writes each disk again
    whole rather than the leaf over the fixed volumes; they then hold
    the source's disks."""
    from any2kvm_os.guest import inspect as gi
    from any2kvm_os.migration import destinations
    from any2kvm_os.migration import guest_step
    root, facts, store, cloud, kw, _hosts = bed
    engine.create(store, 'web', LOC, target='cinder', **kw())
    engine.sync(store, 'web', **kw())

    def refused(self, *a, **k):
        raise exception.Any2KvmError('cinder: metadata refused')
    monkeypatch.setattr(gi, 'run_probe', _fixing_probe())
    monkeypatch.setattr(destinations.CinderDestination, 'finish', refused)
    with pytest.raises(exception.Any2KvmError, match='metadata refused'):
        engine.cutover(store, 'web', guest=guest_step.GuestStep(fix=True),
                       **kw())
    c = store.get('web')['cutover']
    assert c['completed_at'] is None
    assert engine.kvm_changes(c['details']).startswith('cutover --fix')
    monkeypatch.undo()
    r = engine.cutover(store, 'web', **kw())
    assert [x['disk'] for x in r['rewrites']] == [0, 1], r
    _check(cloud, store.get('web'), facts)


def test_rollback_of_a_fix_forgets_it(bed, monkeypatch):
    """``cutover --fix`` that fixed something, rolled back: the next sync
    writes the volumes again whole, and what the fix found and chose is
    forgotten: a cutover without --fix then reports no fix, and its
    volumes hold the source's disks."""
    from any2kvm_os.guest import inspect as gi
    from any2kvm_os.migration import guest_step
    root, facts, store, cloud, kw, _hosts = bed
    engine.create(store, 'web', LOC, target='cinder', **kw())
    engine.sync(store, 'web', **kw())
    monkeypatch.setattr(gi, 'run_probe', _fixing_probe())
    r = engine.cutover(store, 'web', guest=guest_step.GuestStep(fix=True),
                       **kw())
    assert r['details']['fixed'] == '/etc/fstab'
    monkeypatch.undo()
    out = engine.rollback(store, 'web', connect=kw()['connect'])
    assert out['rewrite'].startswith('cutover --fix')
    assert store.get('web')['guest'] is None
    r = engine.sync(store, 'web', **kw())
    assert [x['disk'] for x in r['rewrites']] == [0, 1]
    r = engine.cutover(store, 'web', **kw())
    assert 'fixed' not in r['details'], r['details']
    _check(cloud, store.get('web'), facts)


def test_cutover_interrupted_while_the_server_boots(bed, monkeypatch):
    """A cutover interrupted while it waits for the server's boot: the
    server's id was recorded as soon as Nova had it, the server is
    deleted before the interruption goes on; a rollback (which would
    delete it if that had failed) starts the source again and has the
    next sync write the volumes again whole (the guest may have written
    to them), and the volumes then hold the disks."""
    from any2kvm_os.migration import server_step
    from any2kvm_os.targets import server as server_mod

    root, facts, store, cloud, kw, _hosts = bed
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    nova = _nova_with_volumes(m)
    engine.sync(store, 'web', **kw())
    seen = {}

    def interrupted(server):
        seen['details'] = store.get('web')['cutover']['details']
        # The guest writes before the interruption.
        _written_on_kvm(cloud.path(d['target_ref']) for d in m['disks'])
        raise KeyboardInterrupt()
    monkeypatch.setattr(server_mod, 'wait_boot', interrupted)
    step = server_step.ServerStep(
        server_mod.Options(create_server=True, poll=0.01,
                           network_map={'nic0': 'private',
                                        'nic1': 'private'}),
        clients=nova.clients())
    with pytest.raises(KeyboardInterrupt):
        engine.cutover(store, 'web', server=step, **kw())
    made = seen['details']['server_id']
    assert seen['details']['targets_changed'] == engine.SERVER_CHANGE
    assert made not in nova.servers         # deleted on the way out
    m = store.get('web')
    assert m['cutover']['details']['server_deleted'] == made
    assert not m['cutover']['details']['server_id']
    assert _power(root, facts['two-disks']) == 'halted'
    out = engine.rollback(store, 'web', connect=kw()['connect'],
                          server=server_step.ServerStep(
                              server_mod.Options(poll=0.01),
                              clients=nova.clients()))
    assert out['rewrite'] == engine.SERVER_CHANGE
    assert _power(root, facts['two-disks']) == 'running'
    r = engine.sync(store, 'web', **kw())
    assert [x['disk'] for x in r['rewrites']] == [0, 1], r
    r = engine.cutover(store, 'web', **kw())
    assert r['rewrites'] == []
    _check(cloud, store.get('web'), facts)


def test_cutover_stopped_after_its_server_booted_is_finished_again(
        bed, monkeypatch):
    """A cutover whose server booted, stopped after (the host's snapshots
    could not be removed): run again, it finishes what was left (the
    snapshots removed, the migration done), with no second server and no
    second shutdown; a rollback later deletes the server and starts the
    source."""
    from any2kvm_os.migration import server_step
    from any2kvm_os.targets import server as server_mod

    root, facts, store, cloud, kw, _hosts = bed
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    nova = _nova_with_volumes(m)
    engine.sync(store, 'web', **kw())

    def step():
        return server_step.ServerStep(
            server_mod.Options(create_server=True, poll=0.01,
                               network_map={'nic0': 'private',
                                            'nic1': 'private'}),
            clients=nova.clients())

    def refused(*a, **k):
        raise exception.Any2KvmError('host: snapshot removal refused')
    monkeypatch.setattr(engine, '_remove_snapshots', refused)
    with pytest.raises(exception.Any2KvmError, match='removal refused'):
        engine.cutover(store, 'web', server=step(), **kw())
    monkeypatch.undo()
    first = store.get('web')['cutover']
    made = first['details']['server_id']
    assert made in nova.servers
    r = engine.cutover(store, 'web', server=step(), **kw())
    assert r['finished'] and r['layers_applied'] == 0, r
    assert r['downtime'] == round(first['downtime'], 3)
    assert r['details']['server_id'] == made
    m = store.get('web')
    assert m['status'] == 'done' and len(m['cutovers']) == 1
    assert [s for s in nova.servers] == [made]
    assert _power(root, facts['two-disks']) == 'halted'
    out = engine.rollback(store, 'web', connect=kw()['connect'],
                          server=step())
    assert out['server_deleted'] == made and not nova.servers
    assert _power(root, facts['two-disks']) == 'running'


def test_create_server_needs_a_cinder_migration(bed, tmp_path):
    from any2kvm_os.migration import server_step
    from tests.lib import fakenova

    root, facts, store, _cloud, kw, _hosts = bed
    out = tmp_path / 'out'
    out.mkdir()
    engine.create(store, 'files', LOC, output_dir=str(out),
                  connect=kw()['connect'])
    step = server_step.ServerStep(
        clients=fakenova.FakeCloud().standard().clients())
    with pytest.raises(exception.Any2KvmError, match='--target cinder'):
        engine.cutover(store, 'files', server=step, connect=kw()['connect'])
    assert _power(root, facts['two-disks']) == 'running'


def test_cutover_cut_short_then_run_again(bed, monkeypatch):
    """A cutover that fails after the shutdown leaves no volume attached;
    run again, its downtime counts from the first shutdown request."""
    root, facts, store, cloud, kw, _hosts = bed
    engine.create(store, 'web', LOC, target='cinder', **kw())
    engine.sync(store, 'web', **kw())
    real = engine._update_disk

    def broken(*a, **k):
        raise exception.Any2KvmError('connection lost')
    monkeypatch.setattr(engine, '_update_disk', broken)
    with pytest.raises(exception.Any2KvmError, match='connection lost'):
        engine.cutover(store, 'web', **kw())
    assert not cloud.attached_now
    assert _power(root, facts['two-disks']) == 'halted'
    m = store.get('web')
    assert m['status'] == 'failed'
    first = m['cutover']['shutdown_at']
    monkeypatch.setattr(engine, '_update_disk', real)
    r = engine.cutover(store, 'web', **kw())
    m = store.get('web')
    assert m['cutover']['shutdown_at'] == first
    assert len(m['cutovers']) == 1
    assert r['downtime'] == pytest.approx(
        m['cutover']['completed_at'] - first, abs=0.01)
    _check(cloud, m, facts)


def test_create_property_is_kept_and_wins_at_cutover(bed):
    """``migration create --property``: kept in the state DB (the target
    options), and set last, over any2kvm's choices, on every volume."""
    root, facts, store, cloud, kw, _hosts = bed
    props = {'hw_disk_bus': 'ide', 'hw_vif_model': 'e1000', 'owner': 'ops'}
    m = engine.create(store, 'web', LOC, target='cinder', **kw(
        options={'volume_type': 'fast', 'properties': props}))
    assert m['target_options']['properties'] == props
    # The cutover's last step, with a destination built from what the
    # state DB holds (as each command builds it; a full sync and cutover
    # are tested above).
    m = store.get('web')
    dest = engine.destination(m['target'], m['target_options'], None,
                              client=cloud, attach=cloud.attach, poll=0.01)
    dest.finish('web', m['disks'], {'firmware': 'uefi'})
    boot, data = [cloud.volumes.get(d['target_ref']) for d in m['disks']]
    for vol in (boot, data):
        meta = vol.volume_image_metadata
        assert meta['hw_disk_bus'] == 'ide'
        assert meta['hw_vif_model'] == 'e1000'
        assert meta['owner'] == 'ops'
        assert meta['any2kvm_migration'] == 'web'
    # What was not overridden is still any2kvm's choice.
    assert boot.volume_image_metadata['hw_firmware_type'] == 'uefi'


def test_create_property_parsing_and_refusal():
    import argparse

    from any2kvm_os import api
    from any2kvm_os import arguments
    parser = argparse.ArgumentParser()
    arguments.add_migration_arguments(parser, 'create', with_server=False)
    args = parser.parse_args(['web', LOC, '--target', 'cinder',
                              '--property', 'hw_disk_bus=sata',
                              '--property', 'note=a=b'])
    assert api._migration_target_options(args) == {
        'properties': {'hw_disk_bus': 'sata', 'note': 'a=b'}}
    args = parser.parse_args(['web', LOC, '--property', 'x=y'])
    with pytest.raises(exception.Any2KvmError) as e:
        api._migration_target_options(args)
    assert str(e.value) == '--property goes with --target cinder, not ' \
        '--target file'


def test_cutover_fix_failing_halfway_reverts_and_cutover_runs_again(
        bed, monkeypatch):
    """``cutover --fix`` whose fix fails after changing the volumes: they
    are detached, reverted to the snapshots taken before the fix, the
    snapshots deleted, no volume made bootable or given metadata; the
    migration is failed with one line saying the cutover can run again,
    and it does."""
    from pathlib import Path
    from any2kvm_os.guest import inspect as gi
    from any2kvm_os.migration import guest_step
    from any2kvm_os.targets import volume_fix
    recorded = Path(__file__).parent / 'data' / 'probe-linux-guests.json'
    root, facts, store, cloud, kw, _hosts = bed
    m = engine.create(store, 'web', LOC, target='cinder', **kw())
    ids = [d['target_ref'] for d in m['disks']]
    engine.sync(store, 'web', **kw())
    monkeypatch.setattr(volume_fix.time, 'sleep', lambda s: None)
    probes = []

    def probe(settings, paths, fmt='raw', fix=False, name=None, slots=None):
        probes.append(list(paths))
        assert fix and cloud.attached_now == set(ids)
        assert len(cloud.volume_snapshots.by_id) == 2
        for p in paths:
            with open(p, 'r+b') as f:
                f.write(b'half of a fix')
        if len(probes) == 1:
            raise exception.GuestFixError(path=name, reason='fix stopped '
                                          'after 1 file(s); it had '
                                          'changed: /etc/fstab')
        return dict(json.loads(recorded.read_text()), fixed=[])

    monkeypatch.setattr(gi, 'run_probe', probe)
    with pytest.raises(exception.GuestFixError) as e:
        engine.cutover(store, 'web', guest=guest_step.GuestStep(fix=True),
                       **kw())
    msg = str(e.value)
    assert '\n' not in msg
    assert 'reverted to the snapshot(s) taken before the fix' in msg, msg
    assert 'the VM stays halted: run "migration cutover web" again' in \
        msg, msg
    m = store.get('web')
    assert m['status'] == 'failed' and 'run "migration cutover web" ' \
        'again' in m['error']
    assert m.get('holder') is None
    _check(cloud, m, facts)                 # nothing of the half fix
    assert cloud.volume_snapshots.by_id == {}
    assert cloud.attached_now == set()
    assert [c[0] for c in cloud.calls if c[0] in (
        'detach', 'revert')][-4:] == ['detach', 'detach', 'revert',
                                      'revert']
    for vol_id in ids:
        v = cloud.volumes.get(vol_id)
        assert (v.bootable, v.volume_image_metadata) == ('false', {})
    assert _power(root, facts['two-disks']) == 'halted'
    r = engine.cutover(store, 'web', guest=guest_step.GuestStep(fix=True),
                       **kw())
    # Each leaf again (the VM might have run since), and nothing else:
    # the fix left nothing on the volumes.
    assert r['layers_applied'] == 2 and r['rewrites'] == []
    assert r['details']['guest_inspected_by'] == 'cutover --fix'
    # The downtime runs from the first shutdown request.
    assert r['phases']['before_shutdown'] == 0
    assert r['downtime'] >= r['phases']['fix']
    m = store.get('web')
    assert m['status'] == 'done' and not m['error']
    boot = cloud.volumes.get(ids[0])
    assert boot.bootable == 'true'
    assert boot.volume_image_metadata['hw_disk_bus'] == \
        m['guest']['properties']['hw_disk_bus']
    assert cloud.volume_snapshots.by_id == {}


def test_waiting_for_a_deleted_volume_asks_again_after_a_503():
    """A volume being deleted is waited for until Cinder answers 404: a
    503 meanwhile is not "gone"."""
    from cinderclient import exceptions as cinder_exc
    answers = [cinder_exc.ClientException(503, 'Service Unavailable'),
               fakecinder.Volume(None, 'v', 1, 'web', None),
               cinder_exc.ClientException(503, 'Service Unavailable'),
               cinder_exc.NotFound(404)]
    answers[1].status = 'deleting'
    asked = []

    class Volumes(object):
        def get(self, vol_id):
            asked.append(vol_id)
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    class Cinder(object):
        volumes = Volumes()
    destinations._wait_gone(Cinder(), 'v', timeout=10, poll=0.001)
    assert asked == ['v'] * 4 and answers == []
