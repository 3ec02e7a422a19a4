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

"""The tests of the SQL state store that hold on every database: SQLite
(tests/unit/test_migration_state.py) and real PostgreSQL and MariaDB
servers (tests/functional/test_state_servers.py) import them, each with
its own fixtures: ``url``, a new, empty database (a URL without
password: the driver finds it on its own), and ``store``, a
:class:`~any2kvm_os.migration.state.sql.SqlStore` on it."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

from alembic import autogenerate
from alembic.runtime import migration as alembic_migration
import pytest
import sqlalchemy as sa

from any2kvm_os.migration.state import api
from any2kvm_os import processes
from any2kvm_os.migration.state import models
from any2kvm_os.migration.state import sql


DISKS = [
    {'index': 0, 'source_id': 'vdi-0', 'name': 'root',
     'virtual_size': 10 << 30, 'target_ref': '/out/vm-0.raw'},
    {'index': 1, 'source_id': 'vdi-1', 'name': 'data',
     'virtual_size': 1 << 40, 'target_ref': '/out/vm-1.raw'},
]


def _create(store, name='vm1', options=None):
    return store.create(name, 'xenserver://root@xs1/vm1', 'file',
                        {'output_dir': '/out'} if options is None
                        else options, DISKS)


def _layers(store, name='vm1', disk=0):
    return [(a['layer_id'], a['partial'])
            for a in store.get(name)['disks'][disk]['applied']]


def _run(script, *args, **kwargs):
    """A child Python process running ``script`` with ``args``."""
    return subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(script)] + list(args),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs)


def _plant_holder(url, host, expires, pid=1, mark=None):
    engine = sa.create_engine(url)
    with engine.begin() as c:
        mid = c.execute(sa.select(models.Migration.id)).scalar()
        c.execute(sa.insert(models.Holder).values(
            migration_id=mid, token='t', operation='sync', pid=pid,
            host=host, since=time.time() - 10, expires=expires, mark=mark))
    engine.dispose()


def _expired_elsewhere(url):
    """Make the holder look like a command of another host stopped past
    its lease (judged by its expiry alone: taken over)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(sa.update(models.Holder).values(
                expires=time.time() - 1, host='elsewhere.example',
                mark=None))
    finally:
        engine.dispose()


def _tables(url):
    engine = sa.create_engine(url)
    try:
        return sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _versions(url, table):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return c.exec_driver_sql(
                'SELECT version_num FROM %s' % table).scalars().all()
    finally:
        engine.dispose()


def _legacy_database(url, revision):
    """A database as revisions 0001 and 0002 made it: our revision in
    alembic's default ``alembic_version`` table."""
    from alembic import command
    engine = sql.make_engine(url)
    with engine.begin() as connection:
        config = sql._alembic_config(connection)
        config.attributes['version_table'] = sql.LEGACY_VERSION_TABLE
        command.upgrade(config, revision)
    engine.dispose()
    assert _versions(url, 'alembic_version') == [revision]


def _insert_0002_migration(url):
    """A migration with a disk, an applied layer and a cutover, written
    in SQL as revision 0002 knew the tables."""
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO migrations (id, name, location, target, "
            "target_options, status, created_at, updated_at) VALUES "
            "(1, 'vm1', 'xenserver://root@h/vm1', 'file', '{}', "
            "'synced', 1.0, 2.0)")
        c.exec_driver_sql(
            "INSERT INTO disks (id, migration_id, disk_index, source_id, "
            "name, virtual_size, target_ref) VALUES (1, 1, 0, 'vdi0', "
            "'disk', 4096, '/t/vm1.raw')")
        c.exec_driver_sql(
            "INSERT INTO applied_layers (disk_id, position, layer_id, "
            "name, fingerprint, started_at, applied_at, partial) VALUES "
            "(1, 0, 'base', 'base', 'fp', 1.0, 2.0, FALSE)")
        c.exec_driver_sql(
            "INSERT INTO cutover_runs (migration_id, shutdown_at, "
            "completed_at, downtime) VALUES (1, 5.0, 7.5, 2.5)")
    engine.dispose()


def _cli(args, env_extra=None):
    """``any2kvm ARGS`` in a child process, without ANY2KVM_STATE_DB
    unless ``env_extra`` has it."""
    from tests.lib import cli
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    env.pop('ANY2KVM_STATE_DB', None)
    env.update(env_extra or {})
    return subprocess.run(cli.cli_command() + args, capture_output=True,
                          text=True, env=env, cwd='/', timeout=120)


class StoreContract(object):
    """The tests of every database, as methods: a test module runs them
    with a subclass named Test..., beside its ``url`` and ``store``
    fixtures."""

    def test_create_and_get(self, store):
        before = time.time()
        m = _create(store)
        assert m['name'] == 'vm1'
        assert m['location'] == 'xenserver://root@xs1/vm1'
        assert (m['target'], m['target_options']) == ('file',
                                                      {'output_dir': '/out'})
        assert m['status'] == 'created' and m['error'] is None
        assert before <= m['created_at'] == m['updated_at'] <= time.time()
        assert [d['index'] for d in m['disks']] == [0, 1]
        assert m['disks'][1] == dict(DISKS[1], applied=[])
        assert (m['snapshots'], m['syncs'], m['cutover'], m['holder']) == (
            [], [], None, None)
        assert store.get('vm1') == m

    def test_create_twice_is_exists(self, store):
        _create(store)
        with pytest.raises(api.Exists):
            _create(store)

    def test_unknown_migration_is_not_found(self, store):
        for call in (lambda: store.get('nope'), lambda: store.delete('nope'),
                     lambda: store.set_status('nope', 'syncing'),
                     lambda: store.hold('nope', 'sync').__enter__(),
                     lambda: store.layer_started('nope', 0, 'L', 'n', 'f'),
                     lambda: store.snapshot_taken('nope', 's'),
                     lambda: store.sync_recorded('nope', 1, 2, 0, 0, 0),
                     lambda: store.cutover_recorded('nope', 1, 2)):
            with pytest.raises(api.NotFound):
                call()
        _create(store)
        with pytest.raises(api.NotFound):
            store.layer_started('vm1', 7, 'L', 'n', 'f')
        with pytest.raises(api.NotFound):
            store.layer_applied('vm1', 0, 'never-started')
        with pytest.raises(api.NotFound):
            store.snapshot_removed('vm1', 'never-taken')

    def test_list_in_name_order(self, store):
        assert store.list() == []
        for name in ('b', 'c', 'a'):
            _create(store, name)
        store.set_status('c', 'syncing')
        listed = store.list()
        assert [m['name'] for m in listed] == ['a', 'b', 'c']
        assert set(listed[0]) == {'name', 'location', 'target', 'status',
                                  'updated_at'}
        assert listed[2]['status'] == 'syncing'

    def test_delete_forgets_everything(self, store, url):
        _create(store)
        store.layer_started('vm1', 0, 'L1', 'base', 'fp1')
        store.snapshot_taken('vm1', 'snap-1')
        store.sync_recorded('vm1', 1.0, 2.0, 1, 10, 10)
        store.cutover_recorded('vm1', 3.0, 4.0)
        store.delete('vm1')
        with pytest.raises(api.NotFound):
            store.get('vm1')
        engine = sa.create_engine(url)
        with engine.connect() as c:
            for table in models.Base.metadata.sorted_tables:
                assert c.execute(sa.select(sa.func.count()).select_from(
                    table)).scalar() == 0, table.name
        engine.dispose()
        _create(store)  # the name is free again

    def test_set_status(self, store):
        _create(store)
        for status in api.STATUSES:
            store.set_status('vm1', status)
            assert store.get('vm1')['status'] == status
        store.set_status('vm1', 'failed', error='the host went away')
        m = store.get('vm1')
        assert (m['status'], m['error']) == ('failed', 'the host went away')
        assert m['updated_at'] >= m['created_at']
        with pytest.raises(ValueError):
            store.set_status('vm1', 'sleeping')

    def test_layers_in_order_of_application(self, store):
        _create(store)
        for i, layer in enumerate(['base', 'snap1', 'snap2']):
            store.layer_started('vm1', 0, layer, 'name-' + layer,
                                'fp-' + layer)
            assert _layers(store)[-1] == (layer, True)
            store.layer_applied('vm1', 0, layer)
        applied = store.get('vm1')['disks'][0]['applied']
        assert [(a['layer_id'], a['name'], a['fingerprint'], a['partial'])
                for a in applied] == [
            ('base', 'name-base', 'fp-base', False),
            ('snap1', 'name-snap1', 'fp-snap1', False),
            ('snap2', 'name-snap2', 'fp-snap2', False)]
        times = [a['applied_at'] for a in applied]
        assert times == sorted(times) and None not in times
        assert store.get('vm1')['disks'][1]['applied'] == []
        # Applied again: it moves last, partial until applied.
        store.layer_started('vm1', 0, 'snap1', 'name-snap1', 'fp-snap1')
        assert _layers(store) == [('base', False), ('snap2', False),
                                  ('snap1', True)]
        assert store.get('vm1')['disks'][0]['applied'][2]['applied_at'] is None

    def test_disk_resized(self, store):
        """A disk that grew keeps its layers; its new size (above 4 GiB:
        a BIGINT) is what get gives, the other disk's unchanged."""
        _create(store)
        store.layer_started('vm1', 1, 'base', 'base', 'fp')
        store.layer_applied('vm1', 1, 'base')
        before = store.get('vm1')['updated_at']
        store.disk_resized('vm1', 1, (1 << 40) + (1 << 30))
        m = store.get('vm1')
        assert m['disks'][1]['virtual_size'] == (1 << 40) + (1 << 30)
        assert m['disks'][0]['virtual_size'] == 10 << 30
        assert [a['layer_id'] for a in m['disks'][1]['applied']] == ['base']
        assert m['updated_at'] >= before
        with pytest.raises(api.NotFound):
            store.disk_resized('vm1', 7, 1 << 30)

    def test_forget_layers(self, store):
        _create(store)
        for layer in ('a', 'b', 'c', 'd'):
            store.layer_started('vm1', 0, layer, layer, layer)
            store.layer_applied('vm1', 0, layer)
            store.layer_started('vm1', 1, layer, layer, layer)
        store.forget_layers('vm1', 0, 'b')
        assert _layers(store) == [('a', False)]
        assert len(_layers(store, disk=1)) == 4  # the other disk untouched
        # Applied again after forgetting: after the ones kept.
        store.layer_started('vm1', 0, 'b2', 'b2', 'b2')
        assert _layers(store) == [('a', False), ('b2', True)]
        with pytest.raises(api.NotFound):
            store.forget_layers('vm1', 0, 'c')
        store.forget_layers('vm1', 1, None)
        assert _layers(store, disk=1) == []

    def test_partial_layer_survives_a_crash(self, url):
        child = _run('''
            import os, signal, sys
            from any2kvm_os.migration.state import sql
            store = sql.SqlStore(sys.argv[1])
            store.create('vm1', 'xenserver://root@xs1/vm1', 'file', {}, [
                {'index': 0, 'source_id': 'v', 'name': 'd', 'virtual_size': 1,
                 'target_ref': '/t'}])
            store.layer_started('vm1', 0, 'base', 'base', 'fp')
            store.layer_applied('vm1', 0, 'base')
            store.layer_started('vm1', 0, 'snap', 'snap', 'fp2')
            os.kill(os.getpid(), signal.SIGKILL)
            ''', url)
        child.communicate(timeout=60)
        assert child.returncode == -signal.SIGKILL
        with sql.SqlStore(url) as store:
            assert _layers(store) == [('base', False), ('snap', True)]

    def test_snapshots(self, store):
        _create(store)
        store.snapshot_taken('vm1', 'snap-1')
        store.snapshot_taken('vm1', 'snap-2')
        store.snapshot_removed('vm1', 'snap-1')
        snaps = store.get('vm1')['snapshots']
        assert [s['snapshot_id'] for s in snaps] == ['snap-1', 'snap-2']
        assert snaps[0]['removed_at'] >= snaps[0]['created_at']
        assert snaps[1]['removed_at'] is None
        removed = snaps[0]['removed_at']
        store.snapshot_removed('vm1', 'snap-1')
        assert store.get('vm1')['snapshots'][0]['removed_at'] == removed

    def test_syncs_and_cutover(self, store):
        _create(store)
        store.sync_recorded('vm1', 100.0, 160.5, 3, 3 << 30, 2 << 30)
        store.sync_recorded('vm1', 200.0, 201.0, 0, 0, 0, ok=False,
                            error='connection reset')
        assert store.get('vm1')['syncs'] == [
            {'started_at': 100.0, 'ended_at': 160.5, 'layers_applied': 3,
             'bytes_read': 3 << 30, 'bytes_written': 2 << 30, 'ok': True,
             'error': None},
            {'started_at': 200.0, 'ended_at': 201.0, 'layers_applied': 0,
             'bytes_read': 0, 'bytes_written': 0, 'ok': False,
             'error': 'connection reset'}]
        store.cutover_recorded('vm1', 1000.25, None)
        blank = {'top_layers': {}, 'details': {}, 'rolled_back_at': None,
                 'phases': None}
        assert store.get('vm1')['cutover'] == dict(
            blank, shutdown_at=1000.25, completed_at=None, downtime=None)
        store.cutover_recorded('vm1', 1000.25, 1180.75, top_layers={0: 'L'},
                               details={'server_id': 'S'})
        first = dict(shutdown_at=1000.25, completed_at=1180.75, downtime=180.5,
                     top_layers={'0': 'L'}, details={'server_id': 'S'},
                     rolled_back_at=None, phases=None)
        assert store.get('vm1')['cutover'] == first
        # Where the downtime went (revision 0006), replaced as a whole.
        store.cutover_recorded('vm1', 1000.25, 1180.75,
                               phases={'shutdown': 0.071, 'apply': 1})
        store.cutover_recorded('vm1', 1000.25, 1180.75,
                               phases={'shutdown': 0.07, 'apply': 0.1,
                                       'before_shutdown': 2.5})
        first['phases'] = {'shutdown': 0.07, 'apply': 0.1,
                           'before_shutdown': 2.5}
        assert store.get('vm1')['cutover'] == first
        # A rollback keeps the cutover as history; the next one is new.
        store.rollback_recorded('vm1', at=1200.0)
        m = store.get('vm1')
        assert m['cutover'] is None
        assert m['cutovers'] == [dict(first, rolled_back_at=1200.0)]
        with pytest.raises(api.NotFound):
            store.rollback_recorded('vm1')
        store.cutover_recorded('vm1', 2000.0, 2001.5)
        m = store.get('vm1')
        assert m['cutover']['downtime'] == 1.5
        assert [c['shutdown_at'] for c in m['cutovers']] == [1000.25, 2000.0]
        with pytest.raises(ValueError):
            store.cutover_recorded('vm1', 2000.0, 2001.5,
                                   details={'admin_password': 'x'})

    @pytest.mark.parametrize('options', [
        {'password': 'x'}, {'os_password': 'x'}, {'auth_token': 'x'},
        {'Client_Secret': 'x'}, {'private_key': 'x'}, {'api-key': 'x'},
        {'nested': {'token': 'x'}}, {'list': [{'passphrase': 'x'}]},
        {'endpoint': 'https://admin:hunter2@cloud.example/v3'},
    ])
    def test_secret_looking_options_are_refused(self, store, options):
        with pytest.raises(ValueError) as e:
            _create(store, options=options)
        assert 'x' != str(e.value) and 'hunter2' not in str(e.value)
        assert store.list() == []

    def test_harmless_options_are_kept(self, store):
        options = {'volume_type': 'ssd', 'password_env': 'XS_PASSWORD',
                   'endpoint': 'https://cloud.example/v3', 'size_gib': 10}
        assert _create(store, options=options)['target_options'] == options

    def test_hold_is_released_at_the_end_and_on_exceptions(self, store):
        _create(store)
        with store.hold('vm1', 'sync') as lease:
            assert (lease['operation'], lease['pid'], lease['host']) == (
                'sync', os.getpid(), socket.gethostname())
            holder = store.get('vm1')['holder']
            assert holder['operation'] == 'sync' and holder['live']
        assert store.get('vm1')['holder'] is None
        with pytest.raises(RuntimeError):
            with store.hold('vm1', 'cutover'):
                raise RuntimeError('boom')
        assert store.get('vm1')['holder'] is None
        with store.hold('vm1', 'abort'):
            pass

    def test_busy_between_two_stores_on_one_file(self, url):
        with sql.SqlStore(url) as one, sql.SqlStore(url) as two:
            _create(one)
            _create(one, 'vm2')
            with one.hold('vm1', 'sync'):
                with pytest.raises(api.Busy) as e:
                    with two.hold('vm1', 'cutover'):
                        pass
                assert e.value.holder['operation'] == 'sync'
                assert 'sync by pid %d on %s' % (
                    os.getpid(), socket.gethostname()) in str(e.value)
                with two.hold('vm2', 'sync'):  # another migration: free
                    pass
            with two.hold('vm1', 'cutover'):
                pass

    def test_busy_between_two_processes(self, url, store):
        _create(store)
        child = _run('''
            import sys
            from any2kvm_os.migration.state import sql
            with sql.SqlStore(sys.argv[1]).hold('vm1', 'sync'):
                print('held', flush=True)
                sys.stdin.readline()
            print('released', flush=True)
            ''', url)
        try:
            assert child.stdout.readline() == 'held\n'
            with pytest.raises(api.Busy) as e:
                with store.hold('vm1', 'cutover'):
                    pass
            assert 'sync by pid %d' % child.pid in str(e.value)
            # Reading while the other process holds it.
            assert store.get('vm1')['holder']['pid'] == child.pid
            child.stdin.write('\n')
            child.stdin.flush()
            assert child.stdout.readline() == 'released\n'
        finally:
            child.communicate(timeout=60)
        with store.hold('vm1', 'cutover'):
            pass

    def test_dead_holder_is_taken_over(self, url, store):
        _create(store)
        child = _run('''
            import os, signal, sys
            from any2kvm_os.migration.state import sql
            with sql.SqlStore(sys.argv[1]).hold('vm1', 'sync'):
                os.kill(os.getpid(), signal.SIGKILL)
            ''', url)
        child.communicate(timeout=60)
        holder = store.get('vm1')['holder']
        assert holder['pid'] == child.pid and not holder['live']
        with store.hold('vm1', 'abort') as lease:
            assert lease['pid'] == os.getpid()

    def test_live_holder_on_another_host_is_busy_until_it_expires(
            self, url, store):
        _create(store)
        _plant_holder(url, 'elsewhere.example', time.time() + 3600)
        with pytest.raises(api.Busy) as e:
            store.hold('vm1', 'sync').__enter__()
        assert 'on elsewhere.example' in str(e.value)

    def test_expired_lease_is_taken_over(self, url, store):
        _create(store)
        # A lease recorded before marks (no process mark): even a live
        # process on this host, its lease not renewed.
        _plant_holder(url, socket.gethostname(), time.time() - 1,
                      pid=os.getppid())
        with store.hold('vm1', 'sync') as lease:
            assert lease['pid'] == os.getpid()

    def test_stopped_holder_of_this_host_keeps_its_expired_lease(
            self, url, store):
        """A process of this host that holds a migration and is stopped
        (Ctrl-Z, SIGSTOP) past its lease still holds it: taken over, it
        would write the rest of its layer over what the new holder wrote
        once resumed.  The refusal says the lease expired and what to do;
        once the process is gone, the lease is taken over."""
        _create(store)
        child = _run('''
            import sys
            from any2kvm_os.migration.state import sql
            with sql.SqlStore(sys.argv[1], lease=0.5).hold('vm1', 'sync'):
                print('held', flush=True)
                sys.stdin.readline()
            ''', url)
        try:
            assert child.stdout.readline() == 'held\n'
            os.kill(child.pid, signal.SIGSTOP)
            time.sleep(1.2)
            assert store.get('vm1')['holder']['expires'] < time.time()
            with pytest.raises(api.Busy) as e:
                store.hold('vm1', 'cutover').__enter__()
            text = str(e.value)
            assert 'sync by pid %d' % child.pid in text, text
            assert 'its lease expired at' in text and 'kill it' in text, \
                text
            assert store.get('vm1')['holder']['live']
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=60)
        holder = store.get('vm1')['holder']
        assert holder['pid'] == child.pid and not holder['live']
        with store.hold('vm1', 'abort') as lease:
            assert lease['pid'] == os.getpid()

    def test_a_holder_whose_pid_is_another_process_now_is_gone(
            self, url, store):
        """A mark names a process by its pid and start time: the pid
        given to another process since (this one, in the test) holds
        nothing."""
        _create(store)
        _plant_holder(url, socket.gethostname(), time.time() + 3600,
                      pid=os.getpid(), mark='%d:%s:1:%s' % (
                          os.getpid(), processes.boot_id() or '',
                          processes.machine_tag() or ''))
        assert not store.get('vm1')['holder']['live']
        with store.hold('vm1', 'sync') as lease:
            assert lease['pid'] == os.getpid()

    def test_lease_is_renewed_while_held(self, url):
        with sql.SqlStore(url, lease=0.4) as store:
            _create(store)
            with store.hold('vm1', 'sync') as lease:
                first = lease['expires']
                time.sleep(1.0)  # longer than the lease: renewed meanwhile
                assert lease['expires'] > first and not lease['lost']
                assert store.get('vm1')['holder']['expires'] > time.time()
                assert store.touch(lease)

    def test_lost_lease_is_noticed(self, url, store):
        _create(store)
        with store.hold('vm1', 'sync') as lease:
            # Not renewed in time (a process of another host that shares
            # the database, stopped): expired, taken over.
            engine = sa.create_engine(url)
            with engine.begin() as c:
                c.execute(sa.update(models.Holder).values(
                    expires=time.time(), host='elsewhere.example'))
            engine.dispose()
            with store.hold('vm1', 'abort'):
                assert not store.touch(lease) and lease['lost']
            assert store.get('vm1')['holder'] is None

    def _taken_over(self, url, store):
        """``store`` holds vm1 as a command of another host stopped past
        its lease would; a second store (a command of this host) has
        taken it over.  (the first lease, the second store)."""
        _create(store)
        cm = store.hold('vm1', 'sync')
        lease = cm.__enter__()
        _expired_elsewhere(url)
        other = sql.SqlStore(url)
        other_cm = other.hold('vm1', 'sync')
        other_cm.__enter__()
        return lease, cm, other, other_cm

    def test_writes_of_a_lease_taken_over_are_refused(self, url, store):
        lease, cm, other, other_cm = self._taken_over(url, store)
        try:
            other.layer_started('vm1', 0, 'L2', 'b.vhd', 'f2')
            writes = [
                lambda: store.layer_started('vm1', 0, 'L1', 'a.vhd', 'f1'),
                lambda: store.layer_applied('vm1', 0, 'L2'),
                lambda: store.forget_layers('vm1', 0, None),
                lambda: store.disk_resized('vm1', 0, 1 << 30),
                lambda: store.set_status('vm1', 'failed', 'x'),
                lambda: store.snapshot_taken('vm1', 'snap'),
                lambda: store.sync_recorded('vm1', 1.0, 2.0, 1, 2, 3),
                lambda: store.cutover_recorded('vm1', 1.0, None),
                lambda: store.guest_recorded('vm1', {'os': 'linux'}),
                lambda: store.delete('vm1'),
            ]
            for write in writes:
                with pytest.raises(api.LeaseLost) as e:
                    write()
                assert str(e.value).startswith(
                    'migration vm1: the hold of this sync is lost (sync by '
                    'pid %d on ' % os.getpid())
            assert lease['lost']
            with pytest.raises(api.LeaseLost):
                store.fence('vm1')()
            m = other.get('vm1')
            assert [(a['layer_id'], a['partial'])
                    for a in m['disks'][0]['applied']] == [('L2', True)]
            assert m['status'] == 'created' and m['syncs'] == [] and \
                m['snapshots'] == [] and m['guest'] is None
            # The taker's writes go on.
            other.layer_applied('vm1', 0, 'L2')
            other.fence('vm1')()
        finally:
            other_cm.__exit__(None, None, None)
            other.close()
            cm.__exit__(None, None, None)
        # Its release took nothing from anybody; a store that holds
        # nothing writes as before.
        store.set_status('vm1', 'synced')
        assert store.fence('vm1') is None

    def test_a_fence_of_a_lease_let_go_stops_everything(self, url, store):
        _create(store)
        with store.hold('vm1', 'sync'):
            fence = store.fence('vm1')
            fence()
        with pytest.raises(api.LeaseLost) as e:
            fence()
        assert 'the hold of this sync is lost (the command let it go)' in \
            str(e.value)

    def test_a_write_and_a_taking_over_wait_for_each_other(
            self, url, store):
        """A command stopped past its lease while a command of another
        host takes the migration over: its state write, once its check
        passed, holds the taker back until it commits (the taker then
        holds, and sees that write); its next write is refused.  (Before,
        on MySQL and PostgreSQL, the taker went on and the old write
        still landed after it.)"""
        _create(store)
        other = sql.SqlStore(url)
        seen = {}
        with store.hold('vm1', 'sync') as lease:
            _expired_elsewhere(url)
            taken = threading.Event()
            release = threading.Event()

            def take():
                try:
                    with other.hold('vm1', 'abort'):
                        seen['layers'] = _layers(other, 'vm1')
                        taken.set()
                        release.wait(30)
                except Exception as e:  # reported below
                    seen['error'] = e
                    taken.set()
            checked = store._mine
            thread = threading.Thread(target=take)

            def mine(session, name):
                m = checked(session, name)
                if not thread.is_alive() and 'started' not in seen:
                    seen['started'] = True
                    thread.start()
                    seen['taken_before_commit'] = taken.wait(1.5)
                return m
            store._mine = mine
            store.layer_started('vm1', 0, 'L1', 'a.vhd', 'f1')
            del store._mine
            assert taken.wait(30), 'the taker never got the migration'
            try:
                assert 'error' not in seen, seen.get('error')
                assert seen['taken_before_commit'] is False
                assert seen['layers'] == [('L1', True)]
                with pytest.raises(api.LeaseLost):
                    store.layer_applied('vm1', 0, 'L1')
                assert lease['lost']
            finally:
                release.set()
                thread.join(30)
                other.close()

    def test_fence_renews_a_lease_past_its_margin(self, url):
        with sql.SqlStore(url, lease=60) as store:
            _create(store)
            with store.hold('vm1', 'sync') as lease:
                fence = store.fence('vm1')
                assert fence.until() == lease['expires'] - 12
                assert fence.workers_until() == lease['expires'] - 6
                # A command stopped past its lease that nobody took over
                # renews it and goes on.
                lease['expires'] = time.time() - 1
                fence()
                assert lease['expires'] > time.time() + 59 and \
                    not lease['lost']
                assert store.get('vm1')['holder']['expires'] == \
                    pytest.approx(lease['expires'])

    def test_two_processes_write_at_once(self, url, store):
        _create(store, 'a')
        _create(store, 'b')
        script = '''
            import sys
            from any2kvm_os.migration.state import sql
            store = sql.SqlStore(sys.argv[1])
            for i in range(40):
                store.layer_started(sys.argv[2], 0, 'L%d' % i, 'n', 'f')
                store.layer_applied(sys.argv[2], 0, 'L%d' % i)
                store.get(sys.argv[2])
            '''
        children = [_run(script, url, name) for name in ('a', 'b')]
        for child in children:
            child.communicate(timeout=120)
            assert child.returncode == 0
        for name in ('a', 'b'):
            assert _layers(store, name) == [('L%d' % i, False)
                                            for i in range(40)]

    def test_new_database_is_at_head_with_a_version_table(self, store, url):
        """Our revision is in our own version table; alembic's default one
        is left to TaskFlow's schema."""
        names = _tables(url)
        assert sql.VERSION_TABLE in names and 'alembic_version' not in names
        assert sql.current_revision(store._engine) == sql.head_revision()
        assert _versions(url, sql.VERSION_TABLE) == [sql.head_revision()]

    def test_models_match_the_migrations(self, store):
        """A model changed without a new revision under migrations/versions
        shows here (TaskFlow's tables beside ours are not compared)."""
        store.flow_backend()
        with store._engine.connect() as c:
            diff = autogenerate.compare_metadata(
                alembic_migration.MigrationContext.configure(c, opts={
                    'version_table': sql.VERSION_TABLE,
                    'include_object': sql.include_object}),
                models.Base.metadata)
        assert diff == []

    def test_existing_database_is_upgraded_and_kept(self, tmp_path, url):
        # A database of revision 0001 (in alembic_version), with a migration.
        _legacy_database(url, '0001')
        with sql.SqlStore(url) as store:
            _create(store)
            store.layer_started('vm1', 0, 'base', 'base', 'fp')
        with sql.SqlStore(url) as store:
            assert sql.current_revision(store._engine) == sql.head_revision()
            assert _layers(store) == [('base', True)]
        assert _versions(url, sql.VERSION_TABLE) == [sql.head_revision()]
        assert 'alembic_version' not in _tables(url)

    def test_database_of_0002_is_upgraded_and_takes_taskflow(self, url):
        """A database of revision 0002, made when our revision was in
        alembic's default table: opened, its revision moves to our table and
        goes to head, its rows are kept, and TaskFlow's schema is made
        beside it, by TaskFlow's own alembic migrations too (as on MySQL or
        PostgreSQL), which would have refused the shared table."""
        from taskflow.persistence.backends.sqlalchemy import migration
        _legacy_database(url, '0002')
        _insert_0002_migration(url)
        # The trap: TaskFlow's migrations find a revision they do not know.
        engine = sa.create_engine(url)
        with engine.connect() as c:
            with pytest.raises(Exception, match='0002'):
                migration.db_sync(c)
        engine.dispose()
        with sql.SqlStore(url) as store:
            m = store.get('vm1')
            assert m['status'] == 'synced'
            assert _layers(store) == [('base', False)]
            assert m['cutovers'][0]['downtime'] == 2.5
            assert store.flow_logbook('vm1', create=False) is None
            assert store.flow_logbook('vm1') == store.flow_logbook('vm1')
        assert _versions(url, sql.VERSION_TABLE) == [sql.head_revision()]
        assert 'alembic_version' not in _tables(url)
        engine = sa.create_engine(url)
        with engine.connect() as c:
            migration.db_sync(c)
            c.commit()
        engine.dispose()
        theirs = _versions(url, 'alembic_version')
        assert len(theirs) == 1 and theirs[0] not in ('0001', '0002', '0003',
                                                      '0004')
        with sql.SqlStore(url) as store:
            store.flow_backend()
            assert store.get('vm1')['status'] == 'synced'
        assert _versions(url, 'alembic_version') == theirs
        assert _versions(url, sql.VERSION_TABLE) == [sql.head_revision()]
        assert {'logbooks', 'flowdetails', 'atomdetails'} <= set(_tables(url))

    def test_taskflow_revision_in_alembic_version_is_left_alone(self, url):
        engine = sa.create_engine(url)
        with engine.begin() as c:
            c.exec_driver_sql('CREATE TABLE alembic_version (version_num '
                              'VARCHAR(32) NOT NULL PRIMARY KEY)')
            c.exec_driver_sql("INSERT INTO alembic_version VALUES "
                              "('00af93df9d77')")
        engine.dispose()
        with sql.SqlStore(url) as store:
            _create(store)
        assert _versions(url, 'alembic_version') == ['00af93df9d77']
        assert _versions(url, sql.VERSION_TABLE) == [sql.head_revision()]

    def test_upgrade_at_head_does_nothing(self, store, monkeypatch):
        from alembic import command
        monkeypatch.setattr(command, 'upgrade', pytest.fail)
        sql.upgrade(store._engine)
