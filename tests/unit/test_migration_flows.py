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

"""The migration commands as TaskFlow flows: their tasks, and their
record in TaskFlow's persistence in the state database (a logbook per
migration, a flow detail per command run, each task's state)."""

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from any2kvm_os import api
from any2kvm_os.migration import engine
from any2kvm_os.migration import flows
from any2kvm_os.migration.state import sql
from tests.lib import imagegen as ig
from tests.lib import miglocal
from tests.lib.xenserver import host as xhost

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
LOC = 'xenserver://root@standin/two-disks'
SYNC = ['connect', 'snapshot', 'discover', 'open-targets', 'apply-disk-0',
        'apply-disk-1', 'close-targets', 'record']
CUTOVER = ['connect', 'discover', 'open-targets', 'open-chains', 'shutdown',
           'apply-disk-0', 'apply-disk-1', 'close-targets', 'finish-targets',
           'record-downtime', 'remove-snapshots', 'record']


@pytest.fixture
def bed(tmp_path):
    root, facts = xhost.standard_host(tmp_path / 'xs')
    out = tmp_path / 'out'
    out.mkdir()
    url = 'sqlite:///%s' % (tmp_path / 'state.db')
    with sql.SqlStore(url) as store:
        yield root, facts, out, store, url


def _kw(root):
    return {'connect': miglocal.connector(root)}


def _flow_details(store, name):
    backend = store.flow_backend()
    with contextlib.closing(backend.get_connection()) as conn:
        book = conn.get_logbook(store.flow_logbook(name, create=False))
        return sorted(book, key=lambda fd: fd.meta['started_at'])


def test_sync_and_cutover_are_recorded_flows(bed):
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
    assert 'last run: cutover SUCCESS, 12 of 12 task(s) done' in text
    assert 'tasks:    connect SUCCESS, discover SUCCESS' in text
    # The OpenStack client's table tells it the same way.
    from any2kvm_os.osc.v1 import migration as osc_migration
    column = osc_migration.FORMATTERS['last_run'](run)
    assert column.human_readable().startswith(
        'last run: cutover SUCCESS, 12 of 12 task(s) done\ntasks:')
    # Rollback and abort are flows too.
    engine.rollback(store, 'web', **_kw(root))
    assert [t['name'] for t in engine.show(store, 'web')['last_run'][
        'tasks']] == ['start-vm', 'forget-layers', 'record']
    engine.abort(store, 'web', **_kw(root))
    assert engine.show(store, 'web')['last_run']['operation'] == 'abort'


def test_a_failed_task_is_recorded_and_the_rest_reverted(bed, monkeypatch):
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
    assert 'failed in apply-disk-1' in text, text
    monkeypatch.setattr(engine, '_update_disk', real)
    engine.sync(store, 'web', **_kw(root))
    assert engine.show(store, 'web')['last_run']['state'] == 'SUCCESS'


def test_a_killed_run_shows_where_it_stopped(bed):
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


def test_cutover_steps_plan_the_server_before_the_shutdown(bed):
    root, facts, out, store, _url = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    run = engine._Run(store, 'web', engine.CUTTABLE, 'cutting-over', '',
                      None, None, None, None, None, server=object())
    names = [s.name for s in engine._cutover_steps(run, False, 60)]
    assert names.index('prepare-server') < names.index('shutdown')
    assert names.index('finish-targets') < names.index('create-server') < \
        names.index('record-downtime')
    run = engine._Run(store, 'web', engine.SYNCABLE, 'syncing', '',
                      None, None, None, None, None)
    assert [s.name for s in engine._sync_steps(run)] == SYNC


class _NoBackend(object):
    """A store without TaskFlow persistence: flows run unrecorded."""

    def flow_backend(self):
        return None


def test_flow_runs_in_order_reverts_and_raises_the_same_exception():
    done = []
    boom = ValueError('step c failed')

    def fail():
        done.append('c')
        raise boom
    steps = [flows.Step('a', lambda: done.append('a'),
                        undo=lambda: done.append('undo a')),
             flows.Step('b', lambda: done.append('b'),
                        undo=lambda: done.append('undo b')),
             flows.Step('c', fail),
             flows.Step('d', lambda: done.append('d'))]
    with pytest.raises(ValueError) as e:
        flows.run(_NoBackend(), 'x', 'test', flows.flow('test', steps))
    assert e.value is boom
    assert done == ['a', 'b', 'c', 'undo b', 'undo a']


class _Store(object):
    """A store with TaskFlow persistence on an SQLite file (the
    migration's rows left out)."""

    def __init__(self, url):
        self.sql = sql.SqlStore(url)
        self.sql.create('x', LOC, 'file', {}, [{'index': 0}])

    def flow_backend(self):
        return self.sql.flow_backend()

    def flow_logbook(self, name, create=True):
        return self.sql.flow_logbook(name, create)


def test_a_run_stopped_from_outside_is_interrupted(tmp_path):
    """^C (a BaseException, not an Exception) in a task: the flow stays
    RUNNING in that task, and is told interrupted."""
    store = _Store('sqlite:///%s' % (tmp_path / 'state.db'))

    def stop():
        raise KeyboardInterrupt()
    steps = [flows.Step('a', lambda: None), flows.Step('b', stop),
             flows.Step('c', lambda: None)]
    with pytest.raises(KeyboardInterrupt):
        flows.run(store, 'x', 'test', flows.flow('test', steps))
    run = flows.last_run(store, 'x')
    assert run['state'] == 'RUNNING' and run['interrupted']
    assert not run['running'] and run['stopped_in'] == 'b'
    assert [t['state'] for t in run['tasks']] == [
        'SUCCESS', 'RUNNING', 'PENDING']
    store.sql.close()


def test_taskflow_is_imported_without_eventlet():
    """A command's process does not import eventlet through TaskFlow
    (a third of its imports); one that imported it first keeps it, and
    it stays importable."""
    if 'eventlet' not in sys.modules:
        pytest.importorskip('eventlet')
    script = textwrap.dedent('''
        import sys
        first = sys.argv[1] == 'first'
        if first:
            import eventlet  # noqa
        from any2kvm_os.migration import flows  # noqa
        from any2kvm_os.migration.state import flowdb  # noqa
        from taskflow.patterns import linear_flow
        from taskflow import task
        class T(task.Task):
            def execute(self):
                return 1
        # Running a flow on the serial engine imports nothing more.
        flows.tf_engines.run(linear_flow.Flow('f').add(T('t')),
                             engine='serial')
        print('eventlet' in sys.modules)
        import eventlet  # noqa
        print(sys.modules['eventlet'] is not None)
        ''')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for how, want in (('after', 'False\nTrue'), ('first', 'True\nTrue')):
        r = subprocess.run([sys.executable, '-W', 'ignore', '-c', script,
                            how], capture_output=True, text=True,
                           cwd=str(REPO), env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want, (how, r.stdout)
