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

"""The state database on real PostgreSQL and MariaDB servers.

The tests of the store (tests/lib/statecontract.py) and of the recorded
flows (tests/lib/flowcontract.py) that the SQLite tests run
(tests/unit/test_migration_state.py, test_migration_flows.py) run here
again, on a new database of each server: the same test functions,
imported, with the ``url``, ``store`` and ``bed`` fixtures of this
module.  The servers are the session's
(``state_servers``, tests/functional/conftest.py: one of each, on
127.0.0.1, started once); each test has a database of its own, reached
as an unprivileged user whose password is never in a URL: libpq reads it
from its password file (``PGPASSFILE``), PyMySQL from a MySQL option
file (``read_default_file``), so that no command line of the tests'
child processes holds it either.
"""

import os
import subprocess
import time

import pytest
import sqlalchemy as sa

from any2kvm_os import exception
from any2kvm_os.migration import engine
from any2kvm_os.migration.state import api
from any2kvm_os.migration.state import flowdb
from any2kvm_os.migration.state import sql
from tests.lib import cli
from tests.lib import dbservers
from tests.lib import miglocal
from tests.lib.xenserver import host as xhost
from tests.lib import flowcontract
from tests.lib import statecontract

KINDS = sorted(dbservers.SERVERS)


@pytest.fixture(params=KINDS)
def server(request, state_servers, monkeypatch):
    s = state_servers(request.param)
    for key, value in s.client_env().items():
        monkeypatch.setenv(key, value)  # the child processes' too
    return s


@pytest.fixture
def url(server):
    return server.new_database()


@pytest.fixture
def store(url):
    with sql.SqlStore(url) as s:
        yield s


@pytest.fixture
def bed(tmp_path, url):
    root, facts = xhost.standard_host(tmp_path / 'xs')
    out = tmp_path / 'out'
    out.mkdir()
    with sql.SqlStore(url) as store:
        yield root, facts, out, store, url


class TestStoreContract(statecontract.StoreContract):
    """The tests of every database (tests/lib/statecontract.py)."""

    #: SQLite's writers taking turns on one file (BEGIN IMMEDIATE): 40 s
    #: of the suite on the two servers, whose writers never wait on
    #: each other's migrations; processes at once on a server are
    #: tested below (the busy lock, a new database opened by three).
    test_two_processes_write_at_once = None


class TestFlowContract(flowcontract.FlowContract):
    """TaskFlow's record: sync, cutover, rollback, abort; a failed task;
    a run killed in the middle, shown as interrupted and resumed."""


# -- what only a server shows ------------------------------------------------


def test_text_beyond_latin1_and_sizes_beyond_32_bits(store):
    """MariaDB's default character set is latin1 (the test server has
    no configuration): the tables are utf8mb4 whatever the server's
    default; sizes are 64-bit; times keep their fraction."""
    location = 'xenserver://root@xs1/\u0412\u041c-\u4e00 \U0001f600'
    m = store.create('vm1', location, 'file', {'label': '\u00e9\u4e00'}, [
        {'index': 0, 'source_id': 'v', 'name': '\u30c7\u30a3\u30b9\u30af',
         'virtual_size': 1 << 50, 'target_ref': '/t/\u00e9'}])
    assert m['location'] == location
    assert m['target_options'] == {'label': '\u00e9\u4e00'}
    assert m['disks'][0]['virtual_size'] == 1 << 50
    assert m['disks'][0]['name'] == '\u30c7\u30a3\u30b9\u30af'
    store.layer_started('vm1', 0, 'x' * 255, 'n' * 255, 'f' * 255)
    store.sync_recorded('vm1', 1.25, 2.5, 1, 1 << 45, 1 << 45)
    m = store.get('vm1')
    assert m['disks'][0]['applied'][0]['layer_id'] == 'x' * 255
    assert m['syncs'][0]['bytes_read'] == 1 << 45
    assert m['syncs'][0]['started_at'] == 1.25


def test_two_processes_open_a_new_database_at_once(url):
    """Both bring the empty database to head: one makes the schema,
    the other waits for it and finds it made (ours and TaskFlow's)."""
    script = '''
        import sys
        from any2kvm_os.migration.state import sql
        sys.stdin.readline()
        with sql.SqlStore(sys.argv[1]) as store:
            store.flow_backend()
        print('ok', flush=True)
        '''
    children = [statecontract._run(script, url, stderr=subprocess.PIPE)
                for _ in range(3)]
    results = []
    for child in children:
        child.stdin.write('\n')
        child.stdin.flush()
    for child in children:
        out, err = child.communicate(timeout=180)
        results.append((child.returncode, out, err[-3000:]))
    assert [r[:2] for r in results] == [(0, 'ok\n')] * 3, results
    with sql.SqlStore(url) as store:
        assert sql.current_revision(store._engine) == sql.head_revision()


def test_cli_show_and_list_with_the_password_kept_out(server, tmp_path):
    """``any2kvm migration list`` and ``show``: the URL with its
    password in ANY2KVM_STATE_DB, or without it in --state-db with the
    password in the driver's own file; the password is in no output
    (--debug too) and nowhere in the database."""
    secret_url = server.new_database(password=True)
    url = secret_url.replace(':' + dbservers.PASSWORD + '@', '@') + \
        server._query()
    root, facts = xhost.standard_host(tmp_path / 'xs')
    out = tmp_path / 'out'
    out.mkdir()
    with sql.SqlStore(secret_url) as store:
        engine.create(store, 'web', flowcontract.LOC, output_dir=str(out),
                      connect=miglocal.connector(root))
        engine.sync(store, 'web', connect=miglocal.connector(root))
    # list with the URL on the command line, show with the variable.
    r = statecontract._cli(['migration', 'list', '--debug', '--state-db',
                            url], server.client_env())
    assert r.returncode == 0, cli.describe(r)
    assert 'web' in r.stdout and 'synced' in r.stdout, r.stdout
    assert dbservers.PASSWORD not in r.stdout + r.stderr
    r = statecontract._cli(['migration', 'show', 'web', '--debug'],
                           {'ANY2KVM_STATE_DB': secret_url})
    assert r.returncode == 0, cli.describe(r)
    assert 'last run: sync SUCCESS' in r.stdout, r.stdout
    assert dbservers.PASSWORD not in r.stdout + r.stderr
    # Not in any row of any table, ours or TaskFlow's.
    e = sa.create_engine(secret_url, poolclass=sa.pool.NullPool)
    try:
        with e.connect() as c:
            for table in sa.inspect(c).get_table_names():
                t = sa.Table(table, sa.MetaData(), autoload_with=c)
                for row in c.execute(sa.select(t)):
                    assert dbservers.PASSWORD not in repr(tuple(row)), table
    finally:
        e.dispose()


def test_unreachable_server_is_one_line_without_the_password(server):
    """A server that does not answer: one line naming the database (its
    password hidden), no traceback."""
    dead = 'postgresql+psycopg2' if server.name == 'postgresql' else \
        'mysql+pymysql'
    port = dbservers.free_port()
    r = statecontract._cli(['migration', 'list'], {
        'ANY2KVM_STATE_DB': '%s://%s:%s@127.0.0.1:%d/x' % (
            dead, dbservers.USER, dbservers.PASSWORD, port)})
    assert r.returncode == 1, cli.describe(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert 'state database' in lines[0] and '127.0.0.1:%d' % port in \
        lines[0], lines
    assert dbservers.PASSWORD not in r.stdout + r.stderr


def test_busy_lock_is_a_row_lock_between_processes(url, store):
    """Two processes ask for the same migration at the same moment:
    exactly one holds it, the other is told it is busy (the row of the
    migration is locked, SELECT ... FOR UPDATE, while the hold is
    decided)."""
    statecontract._create(store)
    script = '''
        import sys
        from any2kvm_os.migration.state import api, sql
        store = sql.SqlStore(sys.argv[1])
        sys.stdin.readline()
        try:
            with store.hold('vm1', 'sync'):
                print('held', flush=True)
                sys.stdin.readline()
        except api.Busy:
            print('busy', flush=True)
        '''
    children = [statecontract._run(script, url) for _ in range(3)]
    try:
        for child in children:
            child.stdin.write('\n')
            child.stdin.flush()
        said = sorted(child.stdout.readline() for child in children)
        assert said == ['busy\n'] * 2 + ['held\n'], said
        holder = store.get('vm1')['holder']
        assert holder['live'] and holder['pid'] in [c.pid for c in children]
    finally:
        for child in children:
            child.communicate('\n', timeout=120)
    assert all(child.returncode == 0 for child in children)
    assert store.get('vm1')['holder'] is None


#: A short bound on a statement's wait, given in the URL (whose query
#: wins over the built-in one of sql.SERVER_TIMEOUTS).
SHORT_WAIT = {'postgresql': 'options=-c%20statement_timeout%3D3000',
              'mariadb': 'read_timeout=3'}


def test_a_row_left_locked_fails_the_next_command_in_bounded_time(
        server, url, store):
    """A command stopped (SIGSTOP, a hung host) inside a transaction
    keeps its migration's row locked: the next command on it waits for
    the lock, and fails in a bounded time (PostgreSQL's statement
    timeout; MySQL's read timeout, or InnoDB's lock wait) with one line
    naming the state database and what to do, not an internal error."""
    statecontract._create(store)
    short = url + ('&' if '?' in url else '?') + SHORT_WAIT[server.name]
    locker = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with locker.connect() as c:
            with c.begin():
                c.execute(sa.text("SELECT name FROM migrations WHERE "
                                  "name = 'vm1' FOR UPDATE"))
                started = time.monotonic()
                r = statecontract._cli(['migration', 'abort', 'vm1',
                                        '--state-db', short],
                                       server.client_env())
                took = time.monotonic() - started
    finally:
        locker.dispose()
    assert r.returncode == 1, cli.describe(r)
    assert took < 60, took
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith('any2kvm: error: state database '), lines
    assert 'internal error' not in lines[0], lines
    assert 'run the command again' in lines[0], lines
    # Nothing changed: the migration is there, held by nobody.
    m = store.get('vm1')
    assert (m['status'], m['holder']) == ('created', None), m


def test_the_built_in_bounds_reach_the_server(server, store):
    """Without a bound in the URL, the built-in ones apply: PostgreSQL
    cuts a statement (a lock wait too) after a minute; PyMySQL gives up
    reading after a minute, and InnoDB's lock wait ends before that."""
    with store._engine.connect() as c:
        if server.name == 'postgresql':
            assert c.execute(sa.text('SHOW statement_timeout')).scalar() \
                == '1min'
        else:
            assert c.connection.dbapi_connection._read_timeout == 60
            assert c.execute(sa.text(
                'SELECT @@innodb_lock_wait_timeout')).scalar() < 60


def test_busy_error_names_the_holder(store):
    statecontract._create(store)
    with store.hold('vm1', 'sync'):
        with pytest.raises(api.Busy, match='busy: sync by pid %d'
                           % os.getpid()):
            with store.hold('vm1', 'cutover'):
                pass


def _store_at_0004(url):
    """The store of a database made by revision 0004 (before 0005 made
    our MySQL tables utf8mb4), without the upgrade opening does."""
    from alembic import command
    e = sql.make_engine(url)
    with e.begin() as c:
        command.upgrade(sql._alembic_config(c), '0004')
    e.dispose()
    store = sql.SqlStore.__new__(sql.SqlStore)
    store.url, store.lease = url, sql.LEASE
    store._engine = sql.make_engine(url)
    store._writer = store._engine.execution_options(**{sql._WRITE: True})
    return store


def test_latin1_tables_of_a_mysql_database_are_converted(state_servers):
    """A MySQL database made before revision 0005 on a latin1 server:
    opened, our tables become utf8mb4 (TaskFlow's stay: see the
    revision), rows kept, and the schema is the one a new database
    has."""
    url = state_servers('mysql').new_database()
    with _store_at_0004(url) as store:
        # Written as revision 0004's code wrote it: today's models read
        # columns later revisions add (cutover_runs.phases), so only the
        # rows are added here, not read back.
        from any2kvm_os.migration.state import models
        with store._tx() as session:
            session.add(models.Migration(
                name='vm1', location='xenserver://root@xs1/vm1',
                target='file', target_options={'label': 'caf\u00e9'},
                status=api.STATUSES[0], created_at=1.0, updated_at=1.0,
                disks=[models.Disk(**d) for d in statecontract.DISKS]))
        flowdb.backend(store._writer, sql.safe_url(url)).close()
    with sql.SqlStore(url) as store:
        assert sql.current_revision(store._engine) == sql.head_revision()
        assert store.get('vm1')['target_options'] == {'label': 'caf\u00e9'}
        store.create('VM1', 'xenserver://root@h/\u4e00 \U0001f600', 'file',
                     {}, [])
        assert store.get('VM1')['location'].endswith('\U0001f600')
        statecontract.StoreContract().test_models_match_the_migrations(store)
    e = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with e.connect() as c:
            collations = dict(c.exec_driver_sql(
                'SELECT table_name, table_collation FROM '
                'information_schema.tables WHERE table_schema = '
                'DATABASE()').all())
    finally:
        e.dispose()
    for table in ('migrations', 'disks', 'applied_layers', 'snapshots',
                  'syncs', 'cutover_runs', 'holders'):
        assert collations[table] == 'utf8mb4_bin', collations


def _collations(url):
    e = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with e.connect() as c:
            return dict(c.exec_driver_sql(
                'SELECT table_name, table_collation FROM '
                'information_schema.tables WHERE table_schema = '
                'DATABASE()').all())
    finally:
        e.dispose()


def test_taskflow_tables_keep_a_failure_beyond_latin1(state_servers,
                                                      tmp_path):
    """TaskFlow makes its tables ``CHARACTER SET utf8`` (utf8mb3) itself,
    in a database made before revision 0005 on a latin1 server as in a
    new one, and they are left so (doc/source/admin/state-db.rst): the
    names TaskFlow keeps in plain columns are ours (ASCII), and what it
    keeps as JSON (results, failures, meta) has every non-ASCII character
    escaped.  A task failing with a message beyond latin1 and beyond the
    BMP (a VM's Cyrillic name, an emoji) is recorded and shown back as
    it was."""
    server = state_servers('mysql')
    url = server.new_database()
    with _store_at_0004(url) as store:
        flowdb.backend(store._writer, sql.safe_url(url)).close()
    root, facts = xhost.standard_host(tmp_path / 'xs')
    out = tmp_path / 'out'
    out.mkdir()
    vm = '\u0412\u041c-\u4e00 \U0001f600'
    with sql.SqlStore(url) as store:
        engine.create(store, 'web', flowcontract.LOC, output_dir=str(out),
                      connect=miglocal.connector(root))
        engine.sync(store, 'web', connect=miglocal.connector(root))

        def unreachable(location, limits, args):
            raise exception.Any2KvmError('host of %s: no route' % vm)
        with pytest.raises(exception.Any2KvmError):
            engine.sync(store, 'web', connect=unreachable)
        m = engine.show(store, 'web')
        assert m['error'].endswith('host of %s: no route' % vm), m['error']
        run = m['last_run']
        assert (run['operation'], run['stopped_in']) == ('sync', 'connect')
        assert vm in str(run), run
    raw = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with raw.connect() as c:
            failures = [f for (f,) in c.exec_driver_sql(
                'SELECT failure FROM atomdetails WHERE failure IS NOT '
                'NULL').all()]
    finally:
        raw.dispose()
    assert len(failures) == 1 and '\\u0412\\u041c' in failures[0], failures
    assert vm not in failures[0]
    # TaskFlow's tables: utf8mb3 in the old database and in a new one.
    new = server.new_database()
    with sql.SqlStore(new) as store:
        store.flow_backend()
    for collations in (_collations(url), _collations(new)):
        for table in ('logbooks', 'flowdetails', 'atomdetails'):
            # utf8mb3_general_ci (utf8_general_ci before MariaDB 10.6)
            assert collations[table].split('_')[0] in (
                'utf8', 'utf8mb3'), collations
        assert collations['migrations'] == 'utf8mb4_bin', collations


def test_taskflow_tables_once_made_are_known_current(store, monkeypatch):
    """Once TaskFlow made its tables, a command finds its version row at
    the head of its scripts and runs none of its migrations; a row behind
    is upgraded as before."""
    from taskflow.persistence.backends.sqlalchemy import migration
    store.flow_backend()
    assert flowdb.is_current(store._engine)
    ran = []
    monkeypatch.setattr(migration, 'db_sync',
                        lambda *a, **k: ran.append(a))
    flowdb.backend(store._writer, 'x').close()
    assert ran == []
    with store._engine.begin() as c:
        c.execute(sa.text("UPDATE alembic_version SET version_num = "
                          "'40fc8c914bd2'"))
    assert not flowdb.is_current(store._engine)
    flowdb.backend(store._writer, 'x').close()
    assert len(ran) == 1
