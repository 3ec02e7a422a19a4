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
migration, a flow detail per command run, each task's state), on
SQLite: the tests of every database (tests/lib/flowcontract.py), and
the others."""

import functools
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from any2kvm_os import api
from any2kvm_os.migration import engine
from any2kvm_os.migration import flows
from any2kvm_os.migration.state import sql
from tests.lib import flowcontract
from tests.lib.flowcontract import _kw
from tests.lib.flowcontract import LOC
from tests.lib.flowcontract import REPO
from tests.lib.flowcontract import SYNC
from tests.lib import miglocal
from tests.lib.xenserver import host as xhost


class TestFlowContract(flowcontract.FlowContract):
    """The tests of every database, on SQLite."""


@pytest.fixture
def bed(tmp_path):
    root, facts = xhost.standard_host(tmp_path / 'xs')
    out = tmp_path / 'out'
    out.mkdir()
    url = 'sqlite:///%s' % (tmp_path / 'state.db')
    with sql.SqlStore(url) as store:
        yield root, facts, out, store, url


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


def test_steps_record_the_seconds_they_took_raised_or_not():
    """``timings``: each step that ran, in order, with its seconds (a
    step that raised too); a step that did not run is not there."""
    timings = {}

    def slow():
        time.sleep(0.05)

    def fail():
        raise ValueError('no')
    step = functools.partial(flows.Step, timings=timings)
    steps = [step('a', slow), step('b', lambda: None), step('c', fail),
             step('d', slow)]
    with pytest.raises(ValueError):
        flows.run(_NoBackend(), 'x', 'test', flows.flow('test', steps))
    assert list(timings) == ['a', 'b', 'c']
    assert timings['a'] >= 0.05
    assert 0 <= timings['b'] < timings['a']
    assert api.steps_text({'connect': 0.0712, 'apply-disk-0': 2.5}) == \
        'connect 0.071 s, apply-disk-0 2.500 s'
    assert api.steps_text(None) == ''


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


def test_no_taskflow_record_inside_the_downtime(bed, monkeypatch):
    """From the shutdown request to the targets ready, the only commits
    are the migration's own (each disk's leaf recorded as started, then
    as applied): the tasks' records (TaskFlow's states and results) are
    held, and written once the clock stops, all of them."""
    from sqlalchemy import event
    root, facts, out, store, _url = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    engine.sync(store, 'web', **_kw(root))
    window = []
    commits = []
    shutdown, finish = engine._Run.shutdown, engine._Run.finish_targets

    def opened(run, *args):
        window.append(True)
        return shutdown(run, *args)

    def closed(run):
        out = finish(run)
        window.append(False)
        return out
    monkeypatch.setattr(engine._Run, 'shutdown', opened)
    monkeypatch.setattr(engine._Run, 'finish_targets', closed)
    listen = (store._engine, 'commit',
              lambda conn: commits.append(window[-1] if window else False))
    event.listen(*listen)
    from any2kvm_os.migration import guest_step
    try:
        engine.cutover(store, 'web', guest=guest_step.GuestStep(),
                       **_kw(root))
    finally:
        event.remove(*listen)
    assert window == [True, False]
    # Two disks: started and applied, each.
    assert commits.count(True) == 4
    run = engine.show(store, 'web')['last_run']
    assert [t['state'] for t in run['tasks']] == ['SUCCESS'] * len(
        run['tasks'])
    results = dict((t['name'], t['result']) for t in run['tasks'])
    assert 'fix-guest' in results
    assert results['shutdown']['was'] == 'running'
    assert results['apply-disk-0']['layers'] == 1


def test_held_records_are_written_when_a_held_task_fails():
    store = sql.SqlStore('sqlite://')
    store.create('m', 'xenserver://root@h/vm', 'file', {}, [
        {'index': 0, 'source_id': 'v', 'target_ref': '/dev/null',
         'virtual_size': 1}])

    def fail():
        raise ValueError('apply failed')
    steps = [flows.Step('a', lambda: 1),
             flows.Step('b', lambda: 2, quiet=True),
             flows.Step('c', fail, quiet=True),
             flows.Step('d', lambda: 4)]
    with pytest.raises(ValueError):
        flows.run(store, 'm', 'cutover', flows.flow('cutover', steps))
    run = flows.last_run(store, 'm')
    states = dict((t['name'], t['state']) for t in run['tasks'])
    assert states['c'] in ('FAILURE', 'REVERTED')
    assert states['b'] == 'REVERTED' and states['d'] == 'PENDING'
    assert run['stopped_in'] == 'c'
    assert 'apply failed' in [t for t in run['tasks']
                              if t['name'] == 'c'][0]['error']


def test_phases_of_the_downtime_as_show_tells_them():
    from any2kvm_os import api
    from any2kvm_os.osc.v1 import migration as osc_migration
    phases = {'shutdown': 0.0714, 'apply': 0.102, 'close': 0.0,
              'fix': 0.0, 'finish': 0.001, 'server': 0.0,
              'before_shutdown': 2.5}
    assert api.phases_text(phases) == (
        ' (shutdown 0.071 s, apply 0.102 s, finish 0.001 s), 2.5 s before '
        'the shutdown request')
    assert api.phases_text(None) == '' and api.phases_text({}) == ''
    c = {'downtime': 0.1744, 'details': {}, 'phases': phases,
         'rolled_back_at': None}
    text = '\n'.join(api.migration_lines('show', {
        'name': 'web', 'location': 'x', 'target': 'file',
        'status': 'done', 'disks': [], 'syncs': [], 'cutovers': [c]}))
    assert 'cutover:  downtime 0.2 s (shutdown 0.071 s, apply 0.102 s' \
        in text
    column = osc_migration.FORMATTERS['cutovers']([c])
    assert column.human_readable().startswith(
        'downtime 0.2 s (shutdown 0.071 s, apply 0.102 s')
    # The details in words, in the order of what happened, not the
    # record's key names.
    c['details'] = {'server_id': 's1', 'guest_inspected_by':
                    'cutover --fix', 'guest': 'Debian 12', 'volumes':
                    ['v0', 'v1'], 'boot_seconds': 9.1, 'new_key': 1,
                    'server_deleted': None}
    said = ('downtime 0.2 s, guest Debian 12, inspected by cutover --fix, '
            'volumes ready: v0 v1, server id s1, seen booting after 9.1 s, '
            'new key 1 (shutdown 0.071 s')
    assert said in column.human_readable()
    text = '\n'.join(api.migration_lines('show', {
        'name': 'web', 'location': 'x', 'target': 'file',
        'status': 'done', 'disks': [], 'syncs': [], 'cutovers': [c]}))
    assert 'cutover:  ' + said in text, text


class _Watched(miglocal.LocalHost):
    """The stand-in, noting the thread each command ran in and whether
    the command's flow had started (a flow detail recorded) by then."""

    started = None

    def __init__(self, root, seen):
        super(_Watched, self).__init__(root)
        self.seen = seen
        self.closed = 0

    def run(self, argv, mutating=False, timeout=None):
        self.seen.append((threading.current_thread().name, argv[1],
                          _Watched.started))
        return super(_Watched, self).run(argv, mutating, timeout)

    def close(self):
        self.closed += 1


def _watching(monkeypatch, root, seen, hosts):
    """A connect that makes :class:`_Watched` hosts (kept in ``hosts``),
    and :data:`_Watched.started` set when TaskFlow starts a flow."""
    _Watched.started = False
    real = flows.run

    def run(*args, **kwargs):
        _Watched.started = True
        return real(*args, **kwargs)
    monkeypatch.setattr(flows, 'run', run)
    monkeypatch.setattr(engine, '_interactive', lambda: False)

    def connect(location, limits, args):
        seen.append((threading.current_thread().name, 'connect',
                     _Watched.started))
        hosts.append(_Watched(root, seen))
        return hosts[-1]
    return connect


def test_the_host_works_while_taskflow_loads(bed, monkeypatch):
    """A sync connects and asks its snapshot (beside the discovery's
    queries) in a thread of its own before its flow starts; a cutover
    connects and asks its queries so.  The tasks take the answers: the
    results are those of a sync done in order."""
    root, facts, out, store, _url = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    seen, hosts = [], []
    connect = _watching(monkeypatch, root, seen, hosts)
    r = engine.sync(store, 'web', connect=connect)
    assert r['layers_applied'] >= 1
    assert seen[0][:2] == ('any2kvm-host', 'connect')
    snap = [s for s in seen if s[1] == 'vm-snapshot']
    assert len(snap) == 1 and snap[0][0].startswith('any2kvm-host'), seen
    # Everything the host was asked before the flow, it was asked by
    # the thread; the layers were read by this one, in the flow.
    assert all(name.startswith('any2kvm-host') for name, _c, started
               in seen if not started), seen
    assert hosts[0].closed == 1
    m = store.get('web')
    assert m['status'] == 'synced' and len(m['snapshots']) == 1
    assert m['snapshots'][0]['snapshot_id'] == r['snapshot']
    assert engine.show(store, 'web')['last_run']['tasks'][1]['result'] \
        == {'snapshot': r['snapshot']}

    del seen[:]
    _Watched.started = False
    engine.cutover(store, 'web', connect=connect, timeout=60)
    assert seen[0][:2] == ('any2kvm-host', 'connect')
    # The discovery's queries (the VM's listing first) in the thread;
    # the shutdown in the flow, in this thread.
    asked = dict((c, name) for name, c, _s in reversed(seen))
    assert asked['vm-list'].startswith('any2kvm-host'), seen
    assert asked['vm-shutdown'] == threading.current_thread().name
    assert all(name.startswith('any2kvm-host') for name, _c, started
               in seen if not started), seen
    assert store.get('web')['status'] == 'done'


def test_at_a_terminal_the_host_is_connected_in_the_flow(bed, monkeypatch):
    """Standard input a terminal: the connection may prompt for a
    password, so it is made by the flow's connect task, in this thread."""
    root, facts, out, store, _url = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    seen, hosts = [], []
    connect = _watching(monkeypatch, root, seen, hosts)
    monkeypatch.setattr(engine, '_interactive', lambda: True)
    engine.sync(store, 'web', connect=connect)
    main = threading.current_thread().name
    assert seen[0] == (main, 'connect', True)
    assert all(name == main and started for name, _c, started in seen)


def test_a_refused_check_asks_the_host_nothing(bed, monkeypatch):
    """The targets' check fails: the host is never connected, and the
    flow fails at its connect task with the check's error, the migration
    not marked (nothing was done).  The check is made once (a cloud's is
    a login: two failed logins could lock an account)."""
    from any2kvm_os.migration import destinations
    root, facts, out, store, _url = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    os.rename(str(out), str(out) + '.gone')
    seen, hosts = [], []
    connect = _watching(monkeypatch, root, seen, hosts)
    checks = []
    real = destinations.FileDestination.check

    def check(self):
        checks.append(1)
        return real(self)
    monkeypatch.setattr(destinations.FileDestination, 'check', check)
    with pytest.raises(Exception) as e:
        engine.sync(store, 'web', connect=connect)
    assert 'is not a directory' in str(e.value)
    assert seen == [] and hosts == []
    assert len(checks) == 1
    run = engine.show(store, 'web')['last_run']
    assert run['stopped_in'] == 'connect'
    assert store.get('web')['status'] == 'created'


def test_a_flow_failing_before_its_tasks_closes_the_host(bed, monkeypatch):
    """TaskFlow fails before the first task (its database, say) while the
    thread works: the thread is waited for, its connection closed, the
    migration left as it was; the snapshot it took is adopted by the next
    sync (its tag), as one whose answer was lost."""
    root, facts, out, store, _url = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    seen, hosts = [], []
    connect = _watching(monkeypatch, root, seen, hosts)

    def broken(*args, **kwargs):
        time.sleep(0.05)
        raise RuntimeError('no flow today')
    monkeypatch.setattr(flows, 'run', broken)
    with pytest.raises(RuntimeError):
        engine.sync(store, 'web', connect=connect)
    assert len(hosts) == 1 and hosts[0].closed == 1
    assert [c for _n, c, _s in seen].count('vm-snapshot') == 1
    assert store.get('web')['status'] == 'created'
    assert store.get('web')['snapshots'] == []
    monkeypatch.undo()
    engine.sync(store, 'web', **_kw(root))
    snaps = store.get('web')['snapshots']
    assert len(snaps) == 2, snaps


def test_an_interrupted_command_leaves_the_host_thread_alone(bed,
                                                             monkeypatch):
    """Interrupted (KeyboardInterrupt) while the host thread waits for an
    answer: the command ends at once; the thread is neither waited for
    nor has its connection closed under it (the process ends)."""
    root, facts, out, store, _url = bed
    engine.create(store, 'web', LOC, output_dir=str(out), **_kw(root))
    seen, hosts = [], []
    connect = _watching(monkeypatch, root, seen, hosts)
    answer = threading.Event()
    asked = threading.Event()
    real_run = _Watched.run

    def held(self, argv, mutating=False, timeout=None):
        if argv[1] == 'vm-snapshot':
            asked.set()
            answer.wait(30)
        return real_run(self, argv, mutating, timeout)
    monkeypatch.setattr(_Watched, 'run', held)

    def interrupted(*args, **kwargs):
        asked.wait(30)
        raise KeyboardInterrupt()
    monkeypatch.setattr(flows, 'run', interrupted)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            engine.sync(store, 'web', connect=connect)
        assert time.monotonic() - start < 10
        assert asked.is_set() and not answer.is_set()
        assert hosts[0].closed == 0
    finally:
        answer.set()


def test_the_last_verify_as_show_tells_it():
    """show's "verified:" line: when (UTC), what moved on since, and the
    outcome, from the last verify's recorded flow."""
    def run(state, tasks, **kw):
        return dict({'operation': 'verify', 'state': state,
                     'started_at': 86400.0, 'tasks': tasks,
                     'since': {'syncs': 0, 'cutovers': 0}}, **kw)
    ok = run('SUCCESS', [{'name': 'judge', 'state': 'SUCCESS',
                          'result': {'identical': 3}, 'error': None}])
    assert api.last_verify_text(None) == ''
    assert api.last_verify_text(ok) == \
        '1970-01-02 00:00:00 UTC; identical (3 target(s))'
    assert api.last_verify_text(dict(ok, since={'syncs': 2, 'cutovers': 1})) \
        == ('1970-01-02 00:00:00 UTC; 2 sync(s) and a cutover since: verify '
            'again; identical (3 target(s))')
    differs = run('REVERTED', [
        {'name': 'connect', 'state': 'REVERTED', 'error': None},
        {'name': 'judge', 'state': 'REVERTED',
         'error': 'migration web: disk 0 (/t) differs from the host\'s'}],
        stopped_in='judge')
    assert api.last_verify_text(differs).endswith(
        'UTC; differs: disk 0 (/t) differs from the host\'s')
    failed = run('REVERTED', [
        {'name': 'connect', 'state': 'REVERTED',
         'error': 'migration web: root@xs: connection refused'},
        {'name': 'judge', 'state': 'PENDING', 'error': None}],
        stopped_in='connect')
    assert api.last_verify_text(failed).endswith(
        'UTC; failed in connect: root@xs: connection refused')
    assert api.last_verify_text(run('RUNNING', [], running=True)).endswith(
        'UTC; running')
    assert api.last_verify_text(run(
        'RUNNING', [], interrupted=True, stopped_in='verify-disk-1')).endswith(
        'UTC; interrupted in verify-disk-1')
