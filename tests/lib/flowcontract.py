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

"""The tests of the migration commands' TaskFlow record that hold on
every database: SQLite (tests/unit/test_migration_flows.py) and real
PostgreSQL and MariaDB servers (tests/functional/test_state_servers.py)
import them, each with its own ``bed`` fixture: (root of the xe
stand-in's host, its facts, output directory, store, store's URL)."""

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from any2kvm_os import api
from any2kvm_os.migration import engine
from tests.lib import imagegen as ig
from tests.lib import miglocal
from tests.lib.xenserver import host as xhost


REPO = Path(__file__).resolve().parents[2]


MiB = 1 << 20


LOC = 'xenserver://root@standin/two-disks'


SYNC = ['connect', 'snapshot', 'discover', 'open-targets', 'apply-disk-0',
        'apply-disk-1', 'close-targets', 'record']


CUTOVER = ['connect', 'discover', 'open-targets', 'open-chains',
           'prepare-shutdown', 'shutdown',
           'apply-disk-0', 'apply-disk-1', 'close-targets', 'finish-targets',
           'record-downtime', 'detach-sources', 'remove-snapshots',
           'record']


def _kw(root):
    return {'connect': miglocal.connector(root)}


def _flow_details(store, name):
    backend = store.flow_backend()
    with contextlib.closing(backend.get_connection()) as conn:
        book = conn.get_logbook(store.flow_logbook(name, create=False))
        return sorted(book, key=lambda fd: fd.meta['started_at'])


class FlowContract(object):
    """The tests of every database, as methods: a test module runs them
    with a subclass named Test..., beside its ``bed`` fixture."""

    def test_sync_and_cutover_are_recorded_flows(self, bed):
        root, facts, out, store, _url = bed
        m = engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
        assert engine.show(store, 'web')['last_run'] is None
        r = engine.sync(store, 'web', **_kw(root))
        run = engine.show(store, 'web')['last_run']
        assert run['operation'] == 'sync' and run['state'] == 'SUCCESS'
        assert [t['name'] for t in run['tasks']] == SYNC
        assert all(t['state'] == 'SUCCESS' for t in run['tasks'])
        assert not run['interrupted'] and run['stopped_in'] is None
        # Each disk's task records its figures.
        applied = [t['result'] for t in run['tasks']
                   if t['name'].startswith('apply-disk-')]
        assert [a['layers'] for a in applied] == [1, 1]
        assert sum(a['bytes_written'] for a in applied) == r['bytes_written']
        assert run['tasks'][-1]['result']['layers_applied'] == 2
        xhost.GuestWriter(root, m['disks'][0]['source_id'],
                          facts['models'][m['disks'][0]['source_id']]).write(
            MiB, ig.pattern(3, 4096))
        engine.cutover(store, 'web', **_kw(root))
        run = engine.show(store, 'web')['last_run']
        assert run['operation'] == 'cutover' and run['state'] == 'SUCCESS'
        assert [t['name'] for t in run['tasks']] == CUTOVER
        assert run['runs'] == 2
        # In the database: one logbook, a flow detail per command run, an
        # atom detail per task.
        fds = _flow_details(store, 'web')
        assert [fd.name for fd in fds] == ['sync', 'cutover']
        assert [fd.state for fd in fds] == ['SUCCESS', 'SUCCESS']
        assert sorted(ad.name for ad in fds[1]) == sorted(CUTOVER)
        assert all(fd.meta['pid'] == os.getpid() and fd.meta['ended_at']
                   for fd in fds)
        text = '\n'.join(api.migration_lines('show', engine.show(store,
                                                                 'web')))
        assert 'last run: cutover SUCCESS, 14 of 14 task(s) done' in text
        assert 'tasks:    connect SUCCESS, discover SUCCESS' in text
        # Where the downtime went is kept (revision 0006) and shown.
        phases = store.get('web')['cutover']['phases']
        assert {'shutdown', 'apply', 'close', 'finish',
                'before_shutdown'} <= set(phases)
        assert 'cutover:  downtime' in text
        assert 'before the shutdown request' in text
        # The OpenStack client's table tells it the same way.
        from any2kvm_os.osc.v1 import migration as osc_migration
        column = osc_migration.FORMATTERS['last_run'](run)
        assert column.human_readable().startswith(
            'last run: cutover SUCCESS, 14 of 14 task(s) done\ntasks:')
        # Rollback and abort are flows too.
        engine.rollback(store, 'web', **_kw(root))
        assert [t['name'] for t in engine.show(store, 'web')['last_run'][
            'tasks']] == ['start-vm', 'forget-layers', 'record']
        engine.abort(store, 'web', **_kw(root))
        assert engine.show(store, 'web')['last_run']['operation'] == 'abort'

    def test_a_failed_task_is_recorded_and_the_rest_reverted(
            self, bed, monkeypatch):
        root, facts, out, store, _url = bed
        engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
        real = engine._update_disk

        def broken(store_, name, disk, *a, **k):
            if disk['index'] == 1:
                raise OSError(5, 'disk 1 went away')
            return real(store_, name, disk, *a, **k)
        monkeypatch.setattr(engine, '_update_disk', broken)
        with pytest.raises(OSError, match='disk 1 went away'):
            engine.sync(store, 'web', **_kw(root))
        m = engine.show(store, 'web')
        assert m['status'] == 'failed'
        run = m['last_run']
        assert run['state'] == 'REVERTED' and not run['interrupted']
        assert run['stopped_in'] == 'apply-disk-1'
        states = dict((t['name'], t['state']) for t in run['tasks'])
        assert states['apply-disk-1'] in ('FAILURE', 'REVERTED')
        assert states['record'] == 'PENDING'
        assert 'disk 1 went away' in ' '.join(t['error'] or ''
                                              for t in run['tasks'])
        text = '\n'.join(api.migration_lines('show', m))
        assert '(apply-disk-1)' in text and 'failed at task' in text, text
        monkeypatch.setattr(engine, '_update_disk', real)
        engine.sync(store, 'web', **_kw(root))
        assert engine.show(store, 'web')['last_run']['state'] == 'SUCCESS'

    def test_a_killed_run_shows_where_it_stopped(self, bed):
        """A sync whose process dies in the middle (``os._exit`` in the
        first disk's task, as ``kill -9`` would) stays RUNNING in that task;
        ``show`` says so; the next sync marks it interrupted and finishes."""
        root, facts, out, store, url = bed
        engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
        script = textwrap.dedent('''
            import os, sys
            from any2kvm_os.migration import engine
            from any2kvm_os.migration.state import sql
            from tests.lib import miglocal

            def die(*a, **k):
                os._exit(9)
            engine._update_disk = die
            engine.sync(sql.SqlStore(sys.argv[1]), 'web',
                        connect=miglocal.connector(sys.argv[2]))
            ''')
        env = dict(os.environ, PYTHONPATH=str(REPO))
        r = subprocess.run([sys.executable, '-c', script, url, str(root)],
                           capture_output=True, text=True, cwd=str(REPO),
                           env=env, timeout=300)
        assert r.returncode == 9, r.stderr
        m = engine.show(store, 'web')
        run = m['last_run']
        assert run['state'] == 'RUNNING' and run['interrupted']
        assert run['stopped_in'] == 'apply-disk-0'
        assert m['status'] == 'syncing'
        text = '\n'.join(api.migration_lines('show', m))
        assert 'interrupted in apply-disk-0' in text, text
        engine.sync(store, 'web', **_kw(root))
        fds = _flow_details(store, 'web')
        assert [fd.state for fd in fds] == ['RUNNING', 'SUCCESS']
        assert fds[0].meta.get('interrupted_at')
        run = engine.show(store, 'web')['last_run']
        assert run['state'] == 'SUCCESS' and run['runs'] == 2
