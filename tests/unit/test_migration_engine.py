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

"""The warm-migration engine against the local xe stand-in (no SSH) and
the SQL store on an SQLite file."""

import argparse
import hashlib
import os
import time

import pytest

from any2kvm_os import api
from any2kvm_os import exception
from any2kvm_os import incremental
from any2kvm_os.migration import engine
from any2kvm_os.migration.state import api as state_api
from any2kvm_os.migration.state import sql
from any2kvm_os.sources.xenserver import snapshots
from tests.lib import imagegen as ig
from tests.lib import miglocal
from tests.lib.xenserver import host as xhost
from tests.lib.xenserver import sr as srlib
from tests.lib.xenserver import state as st

MiB = 1 << 20
LOC = 'xenserver://root@standin/two-disks'


@pytest.fixture
def bed(tmp_path):
    root, facts = xhost.standard_host(tmp_path / 'xs')
    out = tmp_path / 'out'
    out.mkdir()
    store = sql.SqlStore('sqlite:///%s' % (tmp_path / 'state.db'))
    return root, facts, out, store


def _kw(root):
    return {'connect': miglocal.connector(root)}


def _writers(root, facts, m):
    return [xhost.GuestWriter(root, d['source_id'],
                              facts['models'][d['source_id']])
            for d in m['disks']]


def _check(m, facts):
    for d in m['disks']:
        model = facts['models'][d['source_id']]
        with open(d['target_ref'], 'rb') as f:
            data = f.read()
        assert len(data) == model.size
        assert hashlib.sha256(data).hexdigest() == model.sha256(), \
            d['target_ref']


def _power(root, vm):
    return st.load(str(root))['vm'][vm]['power-state']


def test_create_two_syncs_cutover(bed):
    root, facts, out, store = bed
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    assert sorted(os.listdir(out)) == ['web-disk1.raw', 'web.raw']
    assert m['status'] == 'created'
    w0, w1 = _writers(root, facts, m)
    r1 = engine.sync(store, 'web', **_kw(root))
    assert r1['layers_applied'] == 2        # each disk's base
    w0.write(5 * MiB, ig.pattern(7, 2 * MiB))   # new blocks
    w0.zero(0, 4096)                           # zeroes parent data
    w1.write(MiB + 100, b'partial block')      # a partial sector
    r2 = engine.sync(store, 'web', **_kw(root))
    assert r2['layers_applied'] == 2
    assert r2['rewrites'] == []
    w0.write(3 * MiB, ig.pattern(8, 512))
    w1.zero(MiB, 4096)
    r3 = engine.cutover(store, 'web', **_kw(root))
    assert r3['layers_applied'] == 2        # each disk's leaf
    assert r3['snapshots_removed'] == 2
    m = store.get('web')
    assert m['status'] == 'done'
    assert m['cutover']['downtime'] >= 0
    assert [s['removed_at'] is not None for s in m['snapshots']] == \
        [True, True]
    _check(m, facts)
    assert _power(root, facts['two-disks']) == 'halted'
    assert not [v for v in st.load(str(root))['vm'].values()
                if v.get('snapshot-of') == facts['two-disks']]


def test_create_server_on_files_is_refused_before_anything(bed):
    """``cutover --create-server`` of a migration into files: refused
    from the record, before the cutover marks the migration (its status
    stays), connects or shuts anything down."""
    from any2kvm_os.migration import server_step
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))

    def no_host(*args, **kwargs):
        raise AssertionError('connected')
    with pytest.raises(exception.Any2KvmError) as e:
        engine.cutover(store, 'web', connect=no_host,
                       server=server_step.ServerStep())
    assert str(e.value) == (
        'migration web: --create-server needs a migration into Cinder '
        'volumes (--target cinder at create), not file')
    m = store.get('web')
    assert (m['status'], m['error']) == ('synced', None)
    assert m.get('holder') is None
    assert _power(root, facts['two-disks']) == 'running'


def _synced_twice_then_snapshot_deleted(bed):
    """Two syncs, both disks written between them (each snapshot makes
    a base: SM makes none over a leaf that holds no block); then someone
    deletes the migration's newest snapshot: its node (applied by sync
    2) has the leaf as only child.  Returns the two guest writers."""
    root, facts, out, store = bed
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    w0.write(6 * MiB, ig.pattern(9, 8192))
    w1.write(512, ig.pattern(11, 512))
    engine.sync(store, 'web', **_kw(root))
    last = store.get('web')['snapshots'][-1]['snapshot_id']
    xhost.xe_ok(root, 'snapshot-uninstall', 'uuid=%s' % last,
                'force=true')
    return w0, w1


def test_chain_coalesced_behind_our_back(bed):
    root, facts, out, store = bed
    w0, w1 = _synced_twice_then_snapshot_deleted(bed)
    # SM's GC coalesces the node and the leaf.
    for w in (w0, w1):
        xhost.coalesce(root, srlib.chain(w.path)[1][:-len('.vhd')])
    w0.write(MiB, ig.pattern(10, 4096))
    r = engine.sync(store, 'web', **_kw(root))
    assert [rw['disk'] for rw in r['rewrites']] == [0, 1]
    assert all(rw['bytes'] > 0 for rw in r['rewrites'])
    engine.cutover(store, 'web', **_kw(root))
    _check(store.get('web'), facts)


def test_busy_is_one_line(bed):
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    with store.hold('web', 'sync'):
        with pytest.raises(engine.MigrationError) as e:
            engine.sync(store, 'web', **_kw(root))
    assert 'busy' in str(e.value) and '\n' not in str(e.value)


def test_partial_layer_is_applied_again(bed, monkeypatch):
    root, facts, out, store = bed
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, _w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    w0.write(2 * MiB, ig.pattern(11, 3 * MiB))
    real = incremental._apply_one
    calls = []

    def crash(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, 'simulated crash')
        return real(*a, **kw)
    monkeypatch.setattr(incremental, '_apply_one', crash)
    with pytest.raises(OSError):
        engine.sync(store, 'web', **_kw(root))
    m = store.get('web')
    assert m['status'] == 'failed'
    assert m['disks'][0]['applied'][-1]['partial']
    monkeypatch.setattr(incremental, '_apply_one', real)
    r = engine.sync(store, 'web', **_kw(root))
    assert r['rewrites'] == []
    engine.cutover(store, 'web', **_kw(root))
    _check(store.get('web'), facts)


def test_abort_removes_only_our_snapshots(bed):
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    r = engine.abort(store, 'web', delete_targets=True, **_kw(root))
    assert r['snapshots_removed'] == 1
    assert os.listdir(out) == []
    assert store.get('web')['status'] == 'aborted'
    assert _power(root, facts['two-disks']) == 'running'


def test_abort_after_a_cutover_that_stopped_says_the_vm_is_halted(
        bed, monkeypatch, caplog):
    """A cutover stopped after the shutdown (the host's snapshots could
    not be removed), then abort: it says that the VM stays halted and
    how to start it; a rollback then starts it, and the migration stays
    aborted (its snapshots are gone: it is not synced)."""
    root, facts, out, store = bed
    vm = facts['two-disks']
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))

    def refused(*a, **k):
        raise exception.Any2KvmError('host: snapshot removal refused')
    monkeypatch.setattr(engine, '_remove_snapshots', refused)
    with pytest.raises(exception.Any2KvmError, match='removal refused'):
        engine.cutover(store, 'web', **_kw(root))
    monkeypatch.undo()
    m = store.get('web')
    assert m['status'] == 'failed' and 'stays halted' in m['error']
    assert _power(root, vm) == 'halted'
    r = engine.abort(store, 'web', **_kw(root))
    assert r['vm_left'] == vm
    assert 'abort leaves it as it is; start it with "migration rollback ' \
        'web"' in caplog.text, caplog.text
    assert _power(root, vm) == 'halted'
    r = engine.rollback(store, 'web', connect=_kw(root)['connect'])
    assert _power(root, vm) == 'running'
    assert store.get('web')['status'] == 'aborted'
    # Said so: no sync follows an aborted migration.
    assert api.migration_lines('rollback', r) == [
        'rolled back web: the source VM runs again; the migration stays '
        'aborted (a new one copies the VM again)']


def test_refusals(bed):
    root, facts, out, store = bed
    with pytest.raises(engine.MigrationError, match='not supported'):
        engine.create(store, 'web', LOC, target='glance', **_kw(root))
    with pytest.raises(exception.Any2KvmError, match='no cloud'):
        engine.create(store, 'web', LOC, target='cinder', **_kw(root))
    for step in (engine.sync, engine.cutover, engine.rollback, engine.show,
                 engine.abort):
        with pytest.raises(engine.MigrationError,
                           match='no such migration \\(see "any2kvm '
                                 'migration list"\\)'):
            step(store, 'nope', **({} if step is engine.show
                                   else _kw(root)))
    with pytest.raises(engine.MigrationError, match='name'):
        engine.create(store, '../x', LOC, output_dir=str(out), **_kw(root))
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    with pytest.raises(exception.Any2KvmError, match='already exists'):
        engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))


def test_plan():
    a = [{'layer_id': 'a', 'fingerprint': '1', 'partial': False},
         {'layer_id': 'b', 'fingerprint': '2', 'partial': True}]
    assert engine._plan(a, [('a', '1'), ('b', '2'), ('c', '3')]) == \
        ('redo', 1)
    a[1]['partial'] = False
    assert engine._plan(a, [('a', '1'), ('b', '2'), ('c', '3')]) == \
        ('ok', 2)
    assert engine._plan(a, [('a', '9'), ('c', '3')]) == ('rewrite', 0)
    assert engine._plan(a, [('a', '1')]) == ('rewrite', 1)
    assert isinstance(state_api.Busy('x', {}), Exception)


def test_an_interruption_is_recorded_in_words():
    """show's status of a run stopped by Ctrl-C, SIGTERM or SIGHUP: what
    stopped it, not "KeyboardInterrupt", "15" or "1"."""
    import signal
    from any2kvm_os.cmd import any2kvm as cmd
    assert engine._one_line(KeyboardInterrupt()) == 'interrupted (Ctrl-C)'
    assert engine._one_line(cmd.Terminated()) == 'terminated (SIGTERM)'
    assert engine._one_line(cmd.Terminated(signal.SIGHUP)) == \
        'terminated (hangup)'
    assert engine._one_line(ValueError('x\ny'), 'p: ') == 'p: x y'


def test_a_done_migration_says_what_can_follow(bed):
    """A sync or a cutover of a migration whose cutover is complete is
    refused, with the way on (a rollback starts the VM again)."""
    root, _facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    engine.cutover(store, 'web', **_kw(root))
    for action in (engine.sync, engine.cutover):
        with pytest.raises(engine.MigrationError) as e:
            action(store, 'web', **_kw(root))
        assert 'is done: ' in str(e.value), str(e.value)
        assert '"migration rollback web" starts the source VM again' in \
            str(e.value), str(e.value)


def test_a_leaf_written_since_its_cutover_is_not_a_rewrite():
    """A cutover cut short after it applied the leaf, the VM run again:
    only the leaf's fingerprint differs, and the leaf alone is applied
    again.  Anything else that differs still rewrites the disk."""
    disk = {'source_id': 'vdi1'}

    def rec(layer_id, fp, name=None):
        return {'layer_id': layer_id, 'fingerprint': fp, 'partial': False,
                'name': name or '%s.vhd' % layer_id}
    applied = [rec('a', '1'), rec('b', '2'), rec('leaf', '3', 'vdi1.vhd')]
    now = [('a', '1'), ('b', '2'), ('leaf', '4')]
    how, k = engine._plan(applied, now)
    assert (how, k) == ('rewrite', 2)
    assert engine._leaf_written_since(disk, applied, now, k)
    on_lvm = applied[:2] + [rec('leaf', '3', 'VHD-vdi1')]
    assert engine._leaf_written_since(disk, on_lvm, now, k)
    # A layer below the leaf changed (a coalesce): a rewrite.
    below = [('a', '1'), ('b', '9'), ('leaf', '3')]
    assert not engine._leaf_written_since(
        disk, applied, below, engine._plan(applied, below)[1])
    # Another leaf, or a leaf past the records (a sync's).
    assert not engine._leaf_written_since(
        disk, applied, [('a', '1'), ('b', '2'), ('other', '4')], 2)
    assert not engine._leaf_written_since(disk, applied[:2], now, 1)
    # The last record applied by a sync, the leaf now (SM's GC
    # coalesced the leaf into it): not the VM's leaf file.
    synced = applied[:2] + [rec('leaf', '3')]
    assert not engine._leaf_written_since(disk, synced, now, 2)
    # A rewrite cut short, or targets changed on the KVM side.
    marked = applied[:2] + [rec('leaf', engine.REWRITE + '3', 'vdi1.vhd')]
    assert not engine._leaf_written_since(disk, marked, now, 2)
    kvm = [rec(engine.KVM_MARK, 'x')] + applied
    assert not engine._leaf_written_since(disk, kvm, [('x', 'x')] + now, 3)


def _lose_the_first_record(store, monkeypatch):
    """The run stops right after ``xe vm-snapshot`` answered, before the
    store records the snapshot (a kill, a lost connection)."""
    real = store.snapshot_taken
    calls = []

    def taken(name, snapshot_id):
        calls.append(snapshot_id)
        if len(calls) == 1:
            monkeypatch.setattr(store, 'snapshot_taken', real)
            raise KeyboardInterrupt('killed')
        return real(name, snapshot_id)
    monkeypatch.setattr(store, 'snapshot_taken', taken)
    return calls


def _ours(root, vm):
    return [u for u, v in st.load(str(root))['vm'].items()
            if v.get('snapshot-of') == vm]


def test_abort_removes_a_snapshot_never_recorded(bed, monkeypatch):
    root, facts, out, store = bed
    vm = facts['two-disks']
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    _lose_the_first_record(store, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        engine.sync(store, 'web', **_kw(root))
    assert store.get('web')['snapshots'] == [] and len(_ours(root, vm)) == 1
    r = engine.abort(store, 'web', **_kw(root))
    assert r['snapshots_removed'] == 1
    assert _ours(root, vm) == []


def test_next_sync_records_a_snapshot_never_recorded(bed, monkeypatch):
    root, facts, out, store = bed
    vm = facts['two-disks']
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    lost = _lose_the_first_record(store, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        engine.sync(store, 'web', **_kw(root))
    r = engine.sync(store, 'web', **_kw(root))
    recorded = [s['snapshot_id'] for s in store.get('web')['snapshots']]
    assert sorted(recorded) == sorted(_ours(root, vm))
    assert lost[0] in recorded and r['snapshot'] in recorded
    assert len(recorded) == 2
    engine.cutover(store, 'web', **_kw(root))
    assert _ours(root, vm) == []
    _check(store.get('web'), facts)


def test_snapshots_of_another_migration_are_never_touched(bed):
    """Two migrations of one VM (two state databases, the same name):
    each removes only the snapshots carrying its own tag."""
    root, facts, out, store = bed
    vm = facts['two-disks']
    other = sql.SqlStore('sqlite:///%s' % (out.parent / 'other.db'))
    out2 = out.parent / 'out2'
    out2.mkdir()
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.create(other, 'web', LOC, output_dir=str(out2), **_kw(root))
    engine.sync(other, 'web', **_kw(root))
    theirs = _ours(root, vm)
    engine.sync(store, 'web', **_kw(root))
    r = engine.abort(store, 'web', **_kw(root))
    assert r['snapshots_removed'] == 1
    assert _ours(root, vm) == theirs
    other.close()


def test_disk_grown_between_syncs_file_target(bed):
    """The guest's disk grows between syncs (``vhd-util resize``); the
    raw file follows, the grown tail included when nothing is written
    there (zeros), and a write beyond the old end lands."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, w1 = _writers(root, facts, store.get('web'))
    engine.sync(store, 'web', **_kw(root))
    sizes = [d['virtual_size'] for d in store.get('web')['disks']]
    w0.grow(12 * MiB)
    w0.write(9 * MiB, ig.pattern(71, 4096))
    engine.sync(store, 'web', **_kw(root))
    # The state follows the disk that grew, not the other.
    assert [d['virtual_size'] for d in store.get('web')['disks']] == [
        12 * MiB, sizes[1]]
    w1.grow(6 * MiB)
    w0.write(11 * MiB, ig.pattern(72, 512))
    engine.cutover(store, 'web', **_kw(root))
    m = engine.show(store, 'web')
    assert [d['virtual_size'] for d in m['disks']] == [12 * MiB, 6 * MiB]
    assert 'web.raw, 12.0 MiB, ' in '\n'.join(
        api.migration_lines('show', m))
    _check(m, facts)


def test_a_connection_that_fails_marks_the_migration_failed(bed):
    """The host does not answer at sync or cutover: the migration is
    marked failed with a line saying why (not left "syncing" or
    "cutting-over"), the lease is free, and the next sync and cutover
    work."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))

    def refused(location, limits, args):
        raise exception.Any2KvmError('ssh root@standin:22: connection '
                                     'refused')

    for step in (engine.sync, engine.cutover):
        with pytest.raises(exception.Any2KvmError, match='refused'):
            step(store, 'web', connect=refused)
        m = store.get('web')
        assert m['status'] == 'failed'
        assert m['error'] == 'could not connect to the host: ssh ' \
            'root@standin:22: connection refused'
        assert m.get('holder') is None
        with store.hold('web', 'check'):      # the lease is free
            pass
        if step is engine.sync:
            assert not m['syncs'][-1]['ok']
            assert m['syncs'][-1]['bytes_read'] == 0
            engine.sync(store, 'web', **_kw(root))
    assert store.get('web')['cutover'] is None
    engine.cutover(store, 'web', **_kw(root))
    m = store.get('web')
    assert m['status'] == 'done' and not m.get('error')
    _check(m, facts)


def test_a_long_error_is_kept_for_show_up_to_its_bound(bed):
    """``show`` keeps the whole one-line error of a failed step (a failed
    fix names every volume) up to ``MAX_ERROR`` characters, and says how
    much it cut beyond that."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    names = ' '.join('volume-%04d' % i for i in range(300))

    def failing(reason):
        def connect(location, limits, args):
            raise exception.SshError(host='standin', reason=reason)
        return connect

    with pytest.raises(exception.SshError):
        engine.sync(store, 'web', connect=failing('no route to\n' + names))
    error = store.get('web')['error']
    assert error.endswith('volume-0299') and '\n' not in error
    assert 600 < len(error) < engine.MAX_ERROR
    with pytest.raises(exception.SshError):
        engine.sync(store, 'web', connect=failing('x' * 10000))
    error = store.get('web')['error']
    assert len(error) <= engine.MAX_ERROR and error.endswith(' more)')
    cut = int(error.rsplit('(', 1)[1].split()[0])
    assert len(error) - len(' ... (%d more)' % cut) + cut == \
        len('could not connect to the host: ') + len(
            str(exception.SshError(host='standin', reason='x' * 10000)))


def test_connect_failure_is_not_left_busy(bed):
    """A host that cannot be reached during sync or cutover leaves the
    migration failed (with the reason), not 'syncing'/'cutting-over';
    the lease is released and a later sync works."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))

    def unreachable(location, limits, args):
        raise exception.SshError(host='standin', reason='cannot connect '
                                 'to standin port 22: refused')

    with pytest.raises(exception.SshError):
        engine.sync(store, 'web', connect=unreachable)
    m = store.get('web')
    assert m['status'] == 'failed'
    assert 'cannot connect' in m['error'] and '\n' not in m['error']
    assert not m['snapshots']
    engine.sync(store, 'web', **_kw(root))
    assert store.get('web')['status'] == 'synced'
    with pytest.raises(exception.SshError):
        engine.cutover(store, 'web', connect=unreachable)
    m = store.get('web')
    assert m['status'] == 'failed' and 'cannot connect' in m['error']
    assert _power(root, facts['two-disks']) == 'running'
    engine.sync(store, 'web', **_kw(root))
    engine.cutover(store, 'web', **_kw(root))
    m = store.get('web')
    assert m['status'] == 'done'
    _check(m, facts)


def _batched_and_single(host):
    """(commands run in batches, commands run alone)."""
    batched = [a for b in host.batches for a in b]
    single = list(host.commands)
    for a in batched:
        single.remove(a)
    return batched, single


def test_discovery_of_a_known_vm_takes_one_round_trip(bed):
    root, facts, out, store = bed
    vm = facts['two-disks']
    alone = miglocal.LocalHost(root)
    want = engine.discovery.discover(alone.run, vm, host=alone.label,
                                     mount_base=alone.mount_base,
                                     inventory=alone.inventory)
    vdis = [d.vdi_uuid for d in want.disks]
    host = miglocal.LocalHost(root)
    got = engine._discover(host, vm.upper(), vdis)
    assert [d.as_dict() for d in got.disks] == [d.as_dict() for d in
                                                want.disks]
    assert (got.facts, got.power_state, got.uuid) == (
        want.facts, want.power_state, want.uuid)
    batched, single = _batched_and_single(host)
    # One batch: VM, the OS its guest reports, VIFs, VBDs, both VDIs, the
    # pool's SRs, the inventory and the PBDs that check the SRs are
    # attached here.  Nothing alone.
    assert len(host.batches) == 1 and len(batched) == 9
    assert batched[-3:] == [engine.discovery.sr_command(),
                            engine.discovery.pbd_command(),
                            ['cat', host.inventory]]
    assert single == []
    # A VDI the state does not know (a disk added) is asked alone.
    host = miglocal.LocalHost(root)
    got = engine._discover(host, vm, vdis[:1])
    assert [d.as_dict() for d in got.disks] == [d.as_dict() for d in
                                                want.disks]
    _, single = _batched_and_single(host)
    assert [a[1] for a in single] == ['vdi-list']


def test_a_host_without_an_inventory_costs_no_round_trip_more(bed):
    """A host without the inventory file (a stand-in, not a XenServer
    dom0): the batch fails at its last query, the ``cat``; every answer
    before it is used, the ``cat``'s failure is the note it gives run
    alone, and nothing is asked again, in a discovery and in a sync."""
    root, facts, out, store = bed
    vm = facts['two-disks']
    want = engine._discover(miglocal.LocalHost(root), vm)
    host = miglocal.LocalHost(root)
    host.inventory = str(root) + '/no/such/inventory'
    got = engine._discover(host, vm, [d.vdi_uuid for d in want.disks])
    assert [d.as_dict() for d in got.disks] == [d.as_dict() for d in
                                                want.disks]
    assert got.facts == want.facts
    assert any('could not tell which host' in n for n in got.notes), \
        got.notes
    batched, single = _batched_and_single(host)
    assert len(host.batches) == 1 and single == []
    assert batched[-1] == ['cat', host.inventory]

    class NoInventory(miglocal.LocalHost):
        def __init__(self, root):
            miglocal.LocalHost.__init__(self, root)
            self.inventory = str(root) + '/no/such/inventory'
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    hosts = []
    engine.sync(store, 'web', **_recording(root, hosts, NoInventory))
    host = hosts[-1]
    assert [b[-1][:1] for b in host.batches[:2]] == [['xe'], ['cat']]
    # After the two batches (the snapshot's, the discovery's), no query
    # of the discovery again.
    ran = sum(len(b) for b in host.batches[:2])
    assert not [a for a in host.commands[ran:]
                if a in host.batches[1]], host.commands[ran:]


def test_discovery_batch_that_fails_runs_each_query_alone(bed):
    root, facts, out, store = bed
    vm = facts['two-disks']

    class Flaky(miglocal.LocalHost):
        def run_many(self, commands, mutating=False, timeout=None):
            raise exception.Any2KvmError('standin: a batch of 5 commands '
                                         'gave 4 outputs')
    host = Flaky(root)
    got = engine._discover(host, vm, ['0' * 8 + '-0000-0000-0000-' +
                                      '0' * 12])
    assert len(got.disks) == 2
    assert [a[1] if a[0] == 'xe' else a[0] for a in host.commands] == [
        'vm-list', 'vm-param-get', 'vif-list', 'cat', 'vbd-list',
        'vdi-list', 'sr-list', 'pbd-list', 'vdi-list']


def _recording(root, hosts, cls=miglocal.LocalHost):
    def connect(location, limits, args):
        hosts.append(cls(root))
        return hosts[-1]
    return {'connect': connect}


def test_a_sync_discovers_beside_its_snapshot(bed):
    """A sync's discovery queries go with the snapshot (side by side on
    a host that can: ``run_batches``; here one after the other) and the
    discover step asks nothing more; what it finds is what a discovery
    of its own finds."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    hosts = []
    engine.sync(store, 'web', **_recording(root, hosts))
    host = hosts[-1]
    vm = facts['two-disks']
    m = store.get('web')
    queries = engine._discovery_queries(host, vm, [d['source_id'] for d in
                                                   m['disks']])
    snapshot_batch, discovery_batch = host.batches[:2]
    assert [a[1] for a in snapshot_batch] == ['snapshot-list',
                                              'snapshot-list',
                                              'vm-snapshot']
    assert discovery_batch == queries
    # Nothing of the discovery was asked again, alone or batched.
    later = [a for a in host.commands[len(snapshot_batch) +
                                      len(queries):]]
    assert not [a for a in later if a in queries], later
    alone = miglocal.LocalHost(root)
    want = engine.discovery.discover(alone.run, vm, host=alone.label,
                                     mount_base=alone.mount_base)
    assert [d['virtual_size'] for d in m['disks']] == [
        d.virtual_size for d in want.disks]


def test_discovery_answers_that_failed_beside_the_snapshot_are_asked_again(
        bed):
    """When the queries run beside the snapshot failed (an error of
    theirs, not the snapshot's), the discover step runs them itself; a
    snapshot that fails fails the step, whatever the queries did."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))

    class Beside(miglocal.LocalHost):
        fail = 'queries'

        def run_batches(self, batches, mutating=False, timeout=None):
            self.side_by_side = [list(map(list, b)) for b in batches]
            snap = self.run_many(batches[0], mutating, timeout)
            if self.fail == 'snapshot':
                snap = exception.RemoteCommandError(
                    host='standin', command='sh -c ...',
                    reason='exit status 1: VM_BAD_POWER_STATE')
            return [snap, exception.Any2KvmError('standin: a batch of 9 '
                                                 'commands gave 3 outputs')]
    hosts = []
    engine.sync(store, 'web', **_recording(root, hosts, Beside))
    host = hosts[-1]
    queries = host.side_by_side[1]
    assert host.batches[1] == queries     # asked again, as one batch
    assert store.get('web')['syncs'][-1]['ok']
    Beside.fail = 'snapshot'
    with pytest.raises(exception.RemoteCommandError) as e:
        engine.sync(store, 'web', **_recording(root, hosts, Beside))
    assert 'VM_BAD_POWER_STATE' in str(e.value)
    assert len(hosts[-1].batches) == 1    # no discovery after it


class _HookedHost(miglocal.LocalHost):
    """A host that runs ``hook()`` once, right before ``xe
    vm-shutdown``: after the cutover opened the chains, while the VM
    still runs."""

    hook = None

    def run(self, argv, mutating=False, timeout=None):
        hook = self.hook
        if hook is not None and argv[1] == 'vm-shutdown':
            self.hook = None
            hook()
        return super(_HookedHost, self).run(argv, mutating, timeout)


def _hooked(root, hook):
    hosts = []

    def connect(location, limits, args):
        hosts.append(_HookedHost(root))
        hosts[-1].hook = hook
        return hosts[-1]
    return connect, hosts


def test_cutover_reads_only_the_leaf_again_after_the_shutdown(bed):
    """The chains are opened before the shutdown; what the guest writes
    until the shutdown (the leaf grows) is read by reading the leaf
    again, not by finding the chain anew."""
    root, facts, out, store = bed
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    w0.write(2 * MiB, ig.pattern(21, MiB))

    def late_writes():
        w0.write(6 * MiB, ig.pattern(22, 2 * MiB))   # new blocks
        w0.write(2 * MiB, ig.pattern(23, 4096))      # a block rewritten
        w1.write(MiB + 7, b'late')
    connect, hosts = _hooked(root, late_writes)
    r = engine.cutover(store, 'web', connect=connect)
    assert hosts[0].hook is None
    assert r['layers_applied'] == 2
    # One open per disk, before the shutdown.
    assert len(hosts[0].opened) == 2
    _check(store.get('web'), facts)
    run = engine.show(store, 'web')['last_run']
    names = [t['name'] for t in run['tasks']]
    assert names.index('open-chains') < names.index('shutdown')


def test_cutover_leaf_coalesced_before_the_shutdown_is_found_anew(bed):
    """Between the chains' opening and the shutdown, the migration's
    snapshot goes and SM's GC coalesces the leaf's parent into it: the
    leaf no longer is the child of the layer opened, so the chain is
    found anew (and the disk rewritten from the stable chain)."""
    root, facts, out, store = bed
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    w0.write(3 * MiB, ig.pattern(24, MiB))
    snap = store.get('web')['snapshots'][-1]['snapshot_id']

    def coalesce():
        xhost.xe_ok(root, 'snapshot-uninstall', 'uuid=%s' % snap,
                    'force=true')
        xhost.coalesce(root, srlib.chain(w0.path)[1][:-len('.vhd')])
        w0.write(5 * MiB, ig.pattern(25, 4096))
    connect, hosts = _hooked(root, coalesce)
    r = engine.cutover(store, 'web', connect=connect)
    assert hosts[0].hook is None
    # Disk 0 opened twice (before the shutdown, then anew), disk 1 once.
    assert [d.disk_id for d in hosts[0].opened].count(
        m['disks'][0]['source_id']) == 2
    assert len(hosts[0].opened) == 3
    assert [rw['disk'] for rw in r['rewrites']] == [0]
    _check(store.get('web'), facts)


# -- xe's own errors, as the SSH host raises them -----------------------------

def _older(root, hosts, **kw):
    def connect(location, limits, args):
        hosts.append(miglocal.OlderHost(root, **kw))
        return hosts[-1]
    return {'connect': connect}


def test_a_failing_xe_command_raises_what_the_ssh_host_raises(bed):
    """The double raises the SSH layer's RemoteCommandError (the host,
    the quoted command, the exit status, xe's stderr), not a bare
    Any2KvmError."""
    root = bed[0]
    host = miglocal.LocalHost(root)
    argv = ['xe', 'vm-param-get', 'uuid=it\'s', 'param-name=uuid']
    with pytest.raises(exception.RemoteCommandError) as e:
        host.run(argv)
    assert str(e.value).startswith(
        "standin: xe vm-param-get 'uuid=it'\"'\"'s' param-name=uuid: "
        "exit status 1: The uuid you supplied was invalid."), str(e.value)
    assert e.value.kwargs['host'] == 'standin'
    assert isinstance(host.run(['xe', 'vm-list', 'params=uuid']), bytes)
    older = miglocal.OlderHost(root, unknown=['snapshot-uninstall'])
    with pytest.raises(exception.RemoteCommandError,
                       match='exit status 1: Unknown command: '
                       'snapshot-uninstall'):
        older.run(['xe', 'snapshot-uninstall', 'uuid=x', 'force=true'])


def test_an_older_xe_is_answered_by_the_fallbacks(bed):
    """Discovery through a host whose VDI and VM listings leave fields
    out and whose SR listing refuses ``params=``: the fields come from
    ``<cls>-param-get``, the SRs are listed by uuid, and what is found
    is what a newer host gives.  A sync and a cutover through a host
    whose xe lacks ``snapshot-uninstall`` (and lists no VDI size): the
    snapshots go with ``template-uninstall``, the targets end equal to
    the disks."""
    root, facts, out, store = bed
    vm = facts['two-disks']
    newer = miglocal.LocalHost(root)
    want = engine.discovery.discover(newer.run, vm, host='standin',
                                     mount_base=newer.mount_base)
    older = miglocal.OlderHost(
        root, unlisted={'vdi': ('virtual-size', 'sr-uuid'),
                        'vm': ('VCPUs-max', 'HVM-boot-params')},
        no_params=['sr'])
    found = engine._discover(older, vm)
    assert found.facts == want.facts
    assert [d.as_dict() for d in found.disks] == [
        d.as_dict() for d in want.disks]
    ran = [a[1] for a in older.commands]
    assert {'vdi-param-get', 'vm-param-get', 'sr-param-get'} <= set(ran)
    sr = want.disks[0].sr_uuid
    assert ['xe', 'sr-list', 'uuid=' + sr, 'params=uuid'] in older.commands
    hosts = []
    kw = _older(root, hosts, unknown=['snapshot-uninstall'],
                unlisted={'vdi': ('virtual-size',)})
    m = engine.create(store, 'web', LOC, output_dir=str(out), **kw)
    assert [d['virtual_size'] for d in m['disks']] == [
        d.virtual_size for d in want.disks]
    w0, w1 = _writers(root, facts, m)
    w0.write(5 * MiB, ig.pattern(81, MiB))
    engine.sync(store, 'web', **kw)
    w1.write(MiB + 3, b'older')
    r = engine.cutover(store, 'web', **kw)
    assert r['snapshots_removed'] == 1
    m = store.get('web')
    assert all(s['removed_at'] for s in m['snapshots'])
    assert _ours(root, vm) == [] and _power(root, vm) == 'halted'
    _check(m, facts)
    ran = [a[1] for h in hosts for a in h.commands]
    assert 'template-uninstall' in ran and 'vdi-param-get' in ran, ran


def test_abort_through_an_xe_without_snapshot_uninstall(bed):
    """Neither ``snapshot-uninstall`` nor ``template-uninstall``: abort
    fails with xe's first error, the snapshot still there and recorded;
    through an xe with ``template-uninstall`` only, abort removes it with
    that, the VM left running."""
    root, facts, out, store = bed
    vm = facts['two-disks']
    kw = _older(root, [], unknown=['snapshot-uninstall',
                                   'template-uninstall'])
    engine.create(store, 'web', LOC, output_dir=str(out), **kw)
    engine.sync(store, 'web', **kw)
    with pytest.raises(exception.Any2KvmError,
                       match='Unknown command: snapshot-uninstall'):
        engine.abort(store, 'web', **kw)
    assert len(_ours(root, vm)) == 1
    assert not store.get('web')['snapshots'][0]['removed_at']
    hosts = []
    kw = _older(root, hosts, unknown=['snapshot-uninstall'])
    r = engine.abort(store, 'web', **kw)
    assert r['snapshots_removed'] == 1
    assert _ours(root, vm) == [] and _power(root, vm) == 'running'
    assert store.get('web')['snapshots'][0]['removed_at']
    ran = [a[1] for a in hosts[-1].commands]
    assert ran.count('template-uninstall') == 1, ran


def test_vm_started_during_the_cutover_fails_it_and_forgets_the_leaf(
        bed, monkeypatch):
    """No power-state query inside the downtime (``xe vm-shutdown``'s
    exit status says the VM is halted); after it, the VM is checked to be
    halted still.  One started meanwhile (someone else's ``vm-start``)
    may have written while the leaf was read: the cutover fails, the
    layers read last are forgotten, and the next cutover (which shuts
    the VM down again) reads them again: the targets end right."""
    root, facts, out, store = bed
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    w0.write(2 * MiB, ig.pattern(31, MiB))
    vm = m['target_options']['vm_uuid']
    finish = engine._Run.finish_targets

    def started(run):
        out = finish(run)
        xhost.xe_ok(root, 'vm-start', 'uuid=%s' % vm)
        w0.write(2 * MiB + 512, ig.pattern(32, 4096))   # in the leaf
        return out
    monkeypatch.setattr(engine._Run, 'finish_targets', started)
    with pytest.raises(engine.MigrationError) as e:
        engine.cutover(store, 'web', **_kw(root))
    assert 'was started during the cutover' in str(e.value)
    m = store.get('web')
    assert m['status'] == 'failed'
    # Each disk's leaf forgotten, its stable layers kept.
    assert all(len(d['applied']) == 1 for d in m['disks'])
    assert all(not s.get('removed_at') for s in m['snapshots'])
    monkeypatch.setattr(engine._Run, 'finish_targets', finish)
    r = engine.cutover(store, 'web', **_kw(root))
    assert r['layers_applied'] == 2
    assert store.get('web')['status'] == 'done'
    assert _power(root, vm) == 'halted'
    _check(store.get('web'), facts)


def test_snapshot_listings_ask_for_the_uuid():
    # --minimal prints the first field of each record printed; without
    # params= that is the uuid only because select_fields keeps the
    # record table's order, which starts with uuid, while the default
    # columns xapi names for snapshot-list start with name-label
    # (xen-api cli_operations.ml gen_cmds, select_fields;
    # cli_printer.ml): params=uuid makes the answer uuids on any xe.
    vm = '6f1b7c4e-3d2a-4b8e-9c1d-0a2b3c4d5e6f'
    m = {'name': 'web', 'target_options': {'vm_uuid': vm,
                                           'snapshot_tag': 'any2kvm-x'}}
    by_label, by_tag = engine._adopt_commands(m)
    for argv in (by_label, by_tag):
        assert argv[:2] == ['xe', 'snapshot-list']
        assert 'params=uuid' in argv and argv[-1] == '--minimal'
    # The label carries the tag: xapi sets it with the snapshot, the
    # description in a second call that a killed run may never make.
    assert 'name-label=any2kvm migration web (any2kvm-x)' in by_label
    assert engine.snapshot_label(m) == 'any2kvm migration web (any2kvm-x)'
    assert 'name-description=any2kvm-x' in by_tag
    # A migration from before tags: its name only.
    old = {'name': 'web', 'target_options': {'vm_uuid': vm}}
    argv, = engine._adopt_commands(old)
    assert 'name-label=any2kvm migration web' in argv


class _ShutdownHost(object):
    """A host whose clean shutdown fails: ``state`` is the power state
    it then says, ``timed_out`` whether our wait ended (the SSH layer's
    "no exit after N s") rather than xe's exit status.

    Paused: xapi refuses its clean shutdown (VM_BAD_POWER_STATE, expected
    running: xapi_vm_lifecycle.ml allowed_power_states).  Running after
    our wait ended: xapi still waits for the guest."""
    label = 'xs1'

    def __init__(self, state, timed_out=False):
        self.state, self.timed_out = state, timed_out
        self.calls = []

    def run(self, argv, mutating=False, timeout=None):
        self.calls.append(argv[1])
        if argv[1] == 'vm-shutdown':
            e = exception.RemoteCommandError(
                host='xs1', command='xe vm-shutdown',
                reason='no exit after %s s: stopped' % timeout
                if self.timed_out else 'exit status 1')
            if self.timed_out:
                e.timed_out = True
            raise e
        return self.state + '\n'


def test_a_paused_vm_that_does_not_shut_down_is_said_paused():
    host = _ShutdownHost('paused')
    with pytest.raises(exception.Any2KvmError) as e:
        engine._shut_down(host, '6f1b7c4e-3d2a-4b8e-9c1d-0a2b3c4d5e6f',
                          force=False, timeout=5)
    assert 'paused' in str(e.value) and 'running' not in str(e.value)
    assert '--force' in str(e.value)


def test_a_shutdown_that_outlasts_the_timeout_says_it_may_still_halt():
    host = _ShutdownHost('running', timed_out=True)
    with pytest.raises(exception.Any2KvmError) as e:
        engine._shut_down(host, '6f1b7c4e-3d2a-4b8e-9c1d-0a2b3c4d5e6f',
                          force=False, timeout=600)
    text = str(e.value)
    assert 'did not halt within 600 s' in text, text
    assert 'may still be shutting it down' in text, text
    assert '--force' in text
    # Nothing stops it hard without --force.
    assert host.calls == ['vm-shutdown', 'vm-param-get']


#: ``xe vm-shutdown``'s stderr when a clean shutdown is under way (the
#: stand-in's, as xapi's CLI prints OTHER_OPERATION_IN_PROGRESS).
PENDING = ('exit status 1: Another operation involving the object is '
           'currently in progress class: VM object: 6f1b7c4e-3d2a-4b8e-'
           '9c1d-0a2b3c4d5e6f (web) operation_type: clean_shutdown '
           'operation_ref: 1c0e1f5a-2b3c-4d5e-8f90-a1b2c3d4e5f6 '
           '(Async.VM.clean_shutdown)')


class _PendingHost(_ShutdownHost):
    """A host whose clean shutdown is refused: one is under way; the VM
    halts after ``halts_after`` power state reads (never if None)."""

    def __init__(self, halts_after):
        _ShutdownHost.__init__(self, 'running')
        self.halts_after = halts_after
        self.reads = 0

    def run(self, argv, mutating=False, timeout=None):
        self.calls.append(argv[1])
        if argv[1] == 'vm-shutdown':
            if 'force=true' in argv:
                self.state = 'halted'
                return ''
            raise exception.RemoteCommandError(
                host='xs1', command='xe vm-shutdown', reason=PENDING)
        self.reads += 1
        if self.halts_after is not None and self.reads > self.halts_after:
            self.state = 'halted'
        return self.state + '\n'


def test_a_clean_shutdown_under_way_is_awaited(caplog):
    host = _PendingHost(halts_after=2)
    # True: the guest was going down before this request.
    assert engine._shut_down(host, '6f1b7c4e-3d2a-4b8e-9c1d-0a2b3c4d5e6f',
                             force=False, timeout=60) is True
    assert host.calls == ['vm-shutdown'] + ['vm-param-get'] * 3
    said = [r.getMessage() for r in caplog.records
            if 'already under way' in r.getMessage()]
    assert len(said) == 1 and 'up to 60 s' in said[0], said


def test_a_clean_shutdown_under_way_that_does_not_end_in_time():
    host = _PendingHost(halts_after=None)
    with pytest.raises(exception.Any2KvmError) as e:
        engine._shut_down(host, '6f1b7c4e-3d2a-4b8e-9c1d-0a2b3c4d5e6f',
                          force=False, timeout=0.5)
    text = str(e.value)
    assert '\n' not in text
    assert 'did not halt within 0.5 s' in text, text
    assert 'already under way' in text and 'it is running' in text, text
    assert '--force' in text
    assert 'vm-shutdown' not in host.calls[1:]


def test_a_clean_shutdown_under_way_is_cut_short_by_force():
    host = _PendingHost(halts_after=None)
    assert engine._shut_down(host, '6f1b7c4e-3d2a-4b8e-9c1d-0a2b3c4d5e6f',
                             force=True, timeout=60) is True
    assert host.calls[:3] == ['vm-shutdown', 'vm-param-get',
                              'vm-shutdown'], host.calls
    assert host.state == 'halted'


def test_other_operations_in_progress_are_not_a_pending_shutdown():
    assert snapshots.clean_shutdown_pending(PENDING)
    assert snapshots.clean_shutdown_pending(
        'exit status 1: Error code: OTHER_OPERATION_IN_PROGRESS Error '
        'parameters: VM, 6f1b7c4e (web), clean_shutdown, OpaqueRef:1')
    assert not snapshots.clean_shutdown_pending(
        PENDING.replace('operation_type: clean_shutdown',
                        'operation_type: snapshot'))
    assert not snapshots.clean_shutdown_pending(
        'exit status 1: VM failed to shutdown before the timeout expired')
    # xapi before 25.27 (XCP-ng 8.2 and 8.3): the operation is in the
    # class, and there are only class and object.
    old = ('exit status 1: Another operation involving the object is '
           'currently in progress class: VM.%s object: 6f1b7c4e-3d2a-4b8e-'
           '9c1d-0a2b3c4d5e6f (web)')
    assert snapshots.clean_shutdown_pending(old % 'clean_shutdown')
    assert snapshots.clean_shutdown_pending(
        old % '{hard_reboot,clean_shutdown}')
    assert snapshots.clean_shutdown_pending(
        'exit status 1: Error code: OTHER_OPERATION_IN_PROGRESS Error '
        'parameters: VM.clean_shutdown, 6f1b7c4e (web)')
    assert not snapshots.clean_shutdown_pending(old % 'snapshot')
    assert not snapshots.clean_shutdown_pending(old % 'clean_shutdownx')
    assert not snapshots.clean_shutdown_pending(
        old % '{clean_reboot,snapshot}')
    assert snapshots.clean_shutdown_pending(
        PENDING.replace('operation_type: clean_shutdown',
                        'operation_type: {clean_shutdown,snapshot}'))


def _set_power(root, vm, state):
    xhost.set_field(root, 'vm', vm, 'power-state', state)


def test_rollback_unpauses_a_paused_vm_and_resumes_a_suspended_one(bed):
    """xapi starts only a halted VM: a VM found paused after the cutover
    is unpaused (vm-unpause), a suspended one resumed (vm-resume), each
    from the state it is in (the stand-in refuses the wrong command with
    VM_BAD_POWER_STATE, as xapi does)."""
    root, facts, out, store = bed
    vm = facts['two-disks']
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    engine.cutover(store, 'web', **_kw(root))
    for state, command in (('paused', 'vm-unpause'),
                           ('suspended', 'vm-resume')):
        connect, hosts = _hooked(root, None)
        _set_power(root, vm, state)
        engine.rollback(store, 'web', connect=connect)
        assert _power(root, vm) == 'running'
        run = [c[1] for h in hosts for c in h.commands]
        assert run == ['vm-param-get', command], run
        assert store.get('web')['status'] == 'synced'
        engine.cutover(store, 'web', **_kw(root))
        assert _power(root, vm) == 'halted'


def test_rollback_refuses_a_power_state_it_cannot_start_from(bed):
    root, facts, out, store = bed
    vm = facts['two-disks']
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    engine.cutover(store, 'web', **_kw(root))
    _set_power(root, vm, 'crashed')
    with pytest.raises(exception.Any2KvmError) as e:
        engine.rollback(store, 'web', **_kw(root))
    assert '\n' not in str(e.value)
    assert "unknown power state 'crashed'" in str(e.value)
    assert store.get('web')['status'] != 'synced'


def test_the_recorded_route_and_the_commands_own():
    """A migration's recorded route (create's --jump-host, or its
    --no-jump-host) is taken by a command that gives none; a command that
    gives one, --no-jump-host included, takes its own."""
    seen = []

    def connect(location, limits, args):
        seen.append(dict((k, getattr(args, k, None))
                         for k in engine.ROUTE_OPTIONS))
        return 'host'

    def args(**kw):
        return argparse.Namespace(**dict(dict.fromkeys(
            engine.ROUTE_OPTIONS), identity_file='/k', **kw))
    via = {'target_options': {'vm_uuid': 'u', 'jump_host': 'ops@b:22',
                              'jump_host_key': ['SHA256:x']}}
    direct = {'target_options': {'vm_uuid': 'u', 'no_jump_host': True}}
    # create records what it was given, and only that.
    assert engine._route(args(jump_host='ops@b:22')) == {
        'jump_host': 'ops@b:22'}
    assert engine._route(args(no_jump_host=True)) == {'no_jump_host': True}
    assert engine._route(args(no_jump_host=False)) == {}
    engine._connect('loc', None, args(), connect, m=via)
    engine._connect('loc', None, args(no_jump_host=True), connect, m=via)
    engine._connect('loc', None, args(jump_host='o@c'), connect, m=via)
    engine._connect('loc', None, args(), connect, m=direct)
    assert seen == [
        {'jump_host': 'ops@b:22', 'jump_host_key': ['SHA256:x'],
         'no_jump_host': None},
        {'jump_host': None, 'jump_host_key': None, 'no_jump_host': True},
        {'jump_host': 'o@c', 'jump_host_key': None, 'no_jump_host': None},
        {'jump_host': None, 'jump_host_key': None, 'no_jump_host': True}]


def test_an_lvm_disk_read_from_its_snapshot_is_that_vdis_lv():
    """discovery.DiskInfo.of_vdi: the same SR, the other VDI's LV (or
    VHD file)."""
    from any2kvm_os.sources.xenserver import discovery
    vg = '/dev/VG_XenStorage-5f4c8a2e-1b3d-4e6f-8a9b-0c1d2e3f4a5b'
    info = discovery.DiskInfo('0', 'xvda', True, 'v1', 'disk', 1 << 30,
                              'sr', 'lvm', 'Local', vg + '/VHD-v1',
                              storage='lvm', control_domain='d0')
    other = info.of_vdi('v2')
    assert (other.vdi_uuid, other.path, other.control_domain,
            other.storage) == ('v2', vg + '/VHD-v2', 'd0', 'lvm')
    assert (info.vdi_uuid, info.path) == ('v1', vg + '/VHD-v1')
    info = discovery.DiskInfo('0', 'xvda', True, 'v1', 'disk', 1 << 30,
                              'sr', 'ext', 'Local', '/run/sr-mount/sr/v1.vhd')
    assert info.of_vdi('v2').path == '/run/sr-mount/sr/v2.vhd'


def test_create_refuses_an_lvm_disk_it_could_not_sync():
    """A sync of a disk on an LVM SR reads its snapshot attached to the
    host's control domain: with none known (no CONTROL_DOMAIN_UUID in the
    inventory), create refuses it in one line, before opening anything."""
    from any2kvm_os.sources.xenserver import discovery

    class Host(object):
        label = 'root@xs1'

        def open_disk(self, info):
            raise AssertionError('opened')
    info = discovery.DiskInfo('0', 'xvda', True, 'v1', 'disk', 1 << 30,
                              'sr', 'lvm', 'Local', '/dev/VG/VHD-v1',
                              storage='lvm')
    with pytest.raises(exception.ChainError) as e:
        engine._check_chains(Host(), [info])
    assert 'names no CONTROL_DOMAIN_UUID' in str(e.value)
    assert '\n' not in str(e.value)


def test_a_sync_reads_an_lvm_disk_from_its_snapshot_a_cutover_from_the_vm(
        monkeypatch):
    """_Run._read_from: a sync (not with_leaf) reads a disk on an LVM SR
    from the VDI its snapshot took of it (looked up once per run, for
    every LVM disk), a file SR's disk and every cutover read from the
    VM's own VDI."""
    from any2kvm_os.sources.xenserver import discovery
    vg = '/dev/VG_XenStorage-sr'
    on_lvm = discovery.DiskInfo('0', 'xvda', True, 'v1', 'a', 1 << 30, 'sr',
                                'lvm', 'L', vg + '/VHD-v1', storage='lvm',
                                control_domain='d0')
    on_file = discovery.DiskInfo('1', 'xvdb', False, 'v2', 'b', 1 << 30,
                                 'sr2', 'ext', 'E',
                                 '/run/sr-mount/sr2/v2.vhd')
    on_lvm2 = on_lvm.of_vdi('v3')
    run = engine._Run.__new__(engine._Run)
    run.infos = {0: on_lvm, 1: on_file, 2: on_lvm2}
    run.host, run.snap, run.snap_infos = object(), 'snap-1', None
    asked = []

    def snapshot_vdis(host, snap, vdis):
        asked.append((snap, vdis))
        return {'v1': 's1', 'v3': 's3'}
    monkeypatch.setattr(engine, 'snapshot_vdis', snapshot_vdis)
    assert run._read_from(1, False) is on_file
    assert run._read_from(0, True) is on_lvm
    assert asked == []
    got = run._read_from(0, False)
    assert (got.vdi_uuid, got.path, got.control_domain) == (
        's1', vg + '/VHD-s1', 'd0')
    assert run._read_from(2, False).path == vg + '/VHD-s3'
    assert asked == [('snap-1', ['v1', 'v3'])]


def _cut_short(store, details=None, at=None):
    """A cutover that stopped before it ended, as its records say: the
    migration failed, its cutover open (not complete)."""
    store.cutover_recorded('web', at or time.time(), None, details=details)
    store.set_status('web', 'failed', 'terminated')


def test_a_sync_closes_a_cutover_the_running_vm_outlived(bed):
    """A cutover stopped before its shutdown request, a day ago: the VM
    runs on, and a sync closes that cutover (as a rollback would).  A
    later cutover of the VM halted by hand counts its downtime from its
    own request, not from the day-old one."""
    root, facts, out, store = bed
    vm = facts['two-disks']
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, _w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    _cut_short(store, at=time.time() - 86400)
    w0.write(3 * MiB, ig.pattern(71, 8192))
    engine.sync(store, 'web', **_kw(root))
    m = store.get('web')
    assert m['cutover'] is None and m['status'] == 'synced'
    assert m['cutovers'][-1]['rolled_back_at'] is not None
    xhost.xe_ok(root, 'vm-shutdown', 'uuid=%s' % vm, 'force=true')
    asked = time.time()
    r = engine.cutover(store, 'web', **_kw(root))
    m = store.get('web')
    assert m['cutover']['shutdown_at'] >= asked - 1, m['cutover']
    assert r['downtime'] < 3600, r
    _check(m, facts)


def test_a_sync_after_a_cutover_that_fixed_the_targets_rewrites_them(bed):
    """The cutover fixed the targets (--fix) and stopped; the VM was
    started again by hand.  A sync closes that cutover and writes the
    targets again whole: no increment goes over the fixed bytes."""
    root, facts, out, store = bed
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, _w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    _cut_short(store, details={'targets_changed': 'cutover --fix (fstab)'})
    # What the fix wrote, where no layer of the VM will write again.
    with open(m['disks'][1]['target_ref'], 'r+b') as f:
        f.seek(MiB)
        f.write(b'fixed on KVM' * 100)
    w0.write(2 * MiB, ig.pattern(72, 4096))
    r = engine.sync(store, 'web', **_kw(root))
    assert sorted(rw['disk'] for rw in r['rewrites']) == [0, 1], r
    assert store.get('web')['cutover'] is None
    engine.cutover(store, 'web', **_kw(root))
    _check(store.get('web'), facts)


def test_a_sync_is_refused_while_a_cutovers_server_may_run(bed):
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    _cut_short(store, details={'server_id': 'f00d-1'})
    with pytest.raises(engine.MigrationError) as e:
        engine.sync(store, 'web', **_kw(root))
    assert str(e.value) == (
        'migration web: its last cutover made server f00d-1 from the '
        'volumes, which may run from them: "migration rollback web" '
        'deletes it and starts the source VM again (then sync)')
    assert store.get('web')['status'] == 'failed'


def _cutover_stopped_at_the_snapshots(store, root, monkeypatch):
    """A cutover that completed (targets ready, downtime recorded) and
    failed removing the snapshots; the recorded cutover."""
    def refused(*a, **k):
        raise exception.Any2KvmError('host: snapshot removal refused')
    monkeypatch.setattr(engine, '_remove_snapshots', refused)
    with pytest.raises(exception.Any2KvmError, match='removal refused'):
        engine.cutover(store, 'web', **_kw(root))
    monkeypatch.undo()
    m = store.get('web')
    assert m['status'] == 'failed' and m['cutover']['completed_at']
    return m['cutover']


def test_a_complete_cutover_cut_short_is_finished_without_a_downtime(
        bed, monkeypatch):
    """Run again, a cutover whose targets were complete and whose server
    was made only does what was left: the snapshots removed, the
    migration done; no shutdown, no layer, no new cutover, and the
    downtime is the one recorded.  (Without a server, it runs as a
    cutover again: test_cutover_again_after_the_vm_ran_again_applies_the_
    leaf.)"""
    root, facts, out, store = bed
    vm = facts['two-disks']
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    w0, _w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    w0.write(4 * MiB, ig.pattern(73, 4096))
    c = _cutover_stopped_at_the_snapshots(store, root, monkeypatch)
    # A server made from the volumes is no reason to refuse here.
    store.cutover_recorded('web', c['shutdown_at'], c['completed_at'],
                           details={'server_id': 'f00d-2'})
    r = engine.cutover(store, 'web', **_kw(root))
    assert r['finished'] and r['layers_applied'] == 0, r
    assert r['downtime'] == round(c['downtime'], 3)
    assert r['snapshots_removed'] == 1
    m = store.get('web')
    assert m['status'] == 'done' and len(m['cutovers']) == 1
    assert m['cutover']['completed_at'] == c['completed_at']
    assert _power(root, vm) == 'halted'
    assert not [v for v in st.load(str(root))['vm'].values()
                if v.get('snapshot-of') == vm]
    _check(m, facts)
    assert api.migration_lines('cutover', r)[0] == (
        'cut over web: finished what its cutover left (its targets were '
        'complete: downtime %.1f s); 1 snapshot(s) removed; the source VM '
        'is halted' % r['downtime'])


def test_a_complete_cutover_cut_short_counts_from_its_request_again(
        bed, monkeypatch):
    """Without a server, a cutover whose targets were complete and that
    stopped removing the snapshots runs as a cutover again; the VM has
    been halted since the first request, and the downtime it reports
    and records counts from that request, not from the rerun's start."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    c = _cutover_stopped_at_the_snapshots(store, root, monkeypatch)
    # The first run asked for the shutdown a minute ago.
    first = c['shutdown_at'] - 60
    store.cutover_recorded('web', first, c['completed_at'] - 60)
    r = engine.cutover(store, 'web', **_kw(root))
    assert r['downtime'] >= 60, r
    m = store.get('web')
    assert m['status'] == 'done' and len(m['cutovers']) == 1
    assert m['cutover']['shutdown_at'] == first
    assert m['cutover']['downtime'] >= 60
    _check(m, facts)


def test_a_complete_cutover_whose_vm_runs_again_is_not_finished(
        bed, monkeypatch):
    """Its server made, the VM started again (by HA): refused, with the
    way out (a rollback deletes the server)."""
    root, facts, out, store = bed
    vm = facts['two-disks']
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    c = _cutover_stopped_at_the_snapshots(store, root, monkeypatch)
    store.cutover_recorded('web', c['shutdown_at'], c['completed_at'],
                           details={'server_id': 'f00d-3'})
    xhost.xe_ok(root, 'vm-start', 'uuid=%s' % vm)
    with pytest.raises(engine.MigrationError) as e:
        engine.cutover(store, 'web', **_kw(root))
    assert 'is running again after its cutover completed' in str(e.value)
    assert '"migration rollback web"' in str(e.value)
    assert store.get('web')['status'] == 'failed'


def _taken_over_while_stopped(store, name='web'):
    """As if this command had been stopped past its lease and a command
    of another host had taken the migration over meanwhile."""
    import sqlalchemy as sa
    from any2kvm_os.migration.state import models
    store._held[name]['expires'] = time.time() - 1
    with store._engine.begin() as c:
        c.execute(sa.update(models.Holder).values(
            token='another', host='elsewhere.example', mark=None))


def test_abort_whose_lease_was_taken_over_deletes_no_target(bed,
                                                            monkeypatch):
    root, facts, out, store = bed
    m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))

    def removed(store_, name, host, run=None):
        _taken_over_while_stopped(store_, name)
        return 0
    monkeypatch.setattr(engine, '_remove_snapshots', removed)
    with pytest.raises(exception.LeaseLost):
        engine.abort(store, 'web', delete_targets=True, **_kw(root))
    for d in m['disks']:
        assert os.path.exists(d['target_ref'])


def test_a_sync_closes_the_cutover_of_a_killed_cutover_too(bed):
    """A cutover killed outright (SIGKILL) leaves the status
    cutting-over: a sync may run (the lease keeps a live cutover away),
    and closes it when the VM runs."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    store.cutover_recorded('web', time.time() - 600, None)
    store.set_status('web', 'cutting-over')
    engine.sync(store, 'web', **_kw(root))
    m = store.get('web')
    assert m['status'] == 'synced' and m['cutover'] is None


def test_a_sync_after_a_server_deleted_for_its_boot_rewrites(bed):
    """The cutover's server did not boot and was deleted: no server is
    left, a sync runs, and writes the disks again whole (the server's
    guest may have written to them)."""
    root, facts, out, store = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    _cut_short(store, details={'targets_changed': engine.SERVER_CHANGE,
                               'server_id': None,
                               'server_deleted': 'f00d-4'})
    r = engine.sync(store, 'web', **_kw(root))
    assert sorted(rw['disk'] for rw in r['rewrites']) == [0, 1], r


def test_a_deleted_snapshot_with_writes_merged_in_place_is_a_rewrite(bed):
    """Someone deletes the migration's newest snapshot; SM's GC then
    merges the VM's later writes into the node that snapshot held (a
    snapshot-coalesce of the leaf into its parent that stops before its
    rename): in place, in a block the node had, so the node keeps its
    name, id, header and block table, and no fingerprint shows it.  The
    next sync sees the snapshot gone and rewrites every disk; the one
    after it does not (the snapshot is recorded as removed)."""
    root, facts, out, store = bed
    w0, _w1 = _synced_twice_then_snapshot_deleted(bed)
    # What the guest wrote since, merged by the GC into the node the
    # sync applied (its block at 6 MiB), not in the leaf any more.
    node = srlib.chain(w0.path)[1]
    merged = ig.pattern(12, 4096)
    with st.locked(str(root)):
        srlib.write(os.path.join(os.path.dirname(w0.path), node),
                    6 * MiB, merged)
    w0.model.write(6 * MiB, merged)
    r = engine.sync(store, 'web', **_kw(root))
    assert [rw['disk'] for rw in r['rewrites']] == [0, 1]
    snaps = store.get('web')['snapshots']
    assert [s['removed_at'] is not None for s in snaps] == [
        False, True, False]
    assert engine.sync(store, 'web', **_kw(root))['rewrites'] == []
    engine.cutover(store, 'web', **_kw(root))
    _check(store.get('web'), facts)


def test_a_cutover_after_a_snapshot_was_deleted_refuses_before_shutdown(bed):
    """A snapshot of the migration deleted since the last sync: the
    cutover refuses before the shutdown (a sync rewrites the disks while
    the VM runs); after that sync it cuts over."""
    root, facts, out, store = bed
    _synced_twice_then_snapshot_deleted(bed)
    last = store.get('web')['snapshots'][-1]['snapshot_id']
    with pytest.raises(exception.Any2KvmError) as e:
        engine.cutover(store, 'web', **_kw(root))
    assert 'snapshot(s) %s of the migration are gone from the host' % last \
        in str(e.value) and 'nothing was shut down' in str(e.value)
    assert _power(root, facts['two-disks']) == 'running'
    r = engine.sync(store, 'web', **_kw(root))
    assert [rw['disk'] for rw in r['rewrites']] == [0, 1]
    engine.cutover(store, 'web', **_kw(root))
    _check(store.get('web'), facts)
