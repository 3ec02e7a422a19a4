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

"""The state database on a real PostgreSQL server, where TaskFlow makes
its tables with its own alembic migrations (on SQLite it creates them
directly): ours and TaskFlow's schema share the database, each with its
own version table, and a database of revision 0002 (our revision in
``alembic_version``) is moved over.

The server is a throwaway one: ``initdb`` in a private directory (as the
``postgres`` user when the tests run as root), reached only through a
Unix socket in that directory (nothing listens on the network), stopped
and removed after.  Skipped where PostgreSQL or psycopg2 is missing."""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest
import sqlalchemy as sa

from any2kvm_os.migration import engine
from any2kvm_os.migration.state import sql
from tests.lib import imagegen as ig
from tests.lib import miglocal
from tests.lib.xenserver import host as xhost

MiB = 1 << 20
LOC = 'xenserver://root@standin/two-disks'


def _pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    found = sorted(glob.glob('/usr/lib/postgresql/*/bin/%s' % name))
    return found[-1] if found else None


@pytest.fixture(scope='module')
def pg_server():
    pytest.importorskip('psycopg2')
    initdb, pg_ctl = _pg_bin('initdb'), _pg_bin('pg_ctl')
    if not initdb or not pg_ctl:
        pytest.skip('PostgreSQL (initdb, pg_ctl) is not installed')
    as_user = []
    top = tempfile.mkdtemp(prefix='any2kvm-pg-')
    os.chmod(top, 0o700)
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root.
        try:
            pw = pwd.getpwnam('postgres')
        except KeyError:
            shutil.rmtree(top)
            pytest.skip('running as root and there is no postgres user')
        os.chown(top, pw.pw_uid, pw.pw_gid)
        as_user = ['runuser', '-u', 'postgres', '--']
    data = os.path.join(top, 'data')
    log = os.path.join(top, 'log')

    def run(argv):
        return subprocess.run(as_user + argv, capture_output=True,
                              text=True, timeout=180, cwd=top)
    try:
        r = run([initdb, '-D', data, '-A', 'trust', '-U', 'postgres',
                 '--no-sync'])
        assert r.returncode == 0, r.stderr
        r = run([pg_ctl, '-D', data, '-l', log, '-w', '-t', '120', '-o',
                 "-c listen_addresses='' -k %s -p 5432 -c fsync=off" % top,
                 'start'])
        assert r.returncode == 0, (r.stderr, open(log).read()
                                   if os.path.exists(log) else '')
        yield top
    finally:
        run([pg_ctl, '-D', data, '-m', 'immediate', '-w', '-t', '60',
             'stop'])
        shutil.rmtree(top, ignore_errors=True)


_count = [0]


@pytest.fixture
def pg_url(pg_server):
    """A new, empty database on the server."""
    _count[0] += 1
    name = 'any2kvm%d' % _count[0]
    admin = sa.create_engine(
        'postgresql+psycopg2://postgres@/postgres?host=%s&port=5432'
        % pg_server, isolation_level='AUTOCOMMIT', poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.exec_driver_sql('CREATE DATABASE %s' % name)
    admin.dispose()
    return ('postgresql+psycopg2://postgres@/%s?host=%s&port=5432'
            % (name, pg_server))


def _versions(url, table):
    e = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with e.connect() as c:
            return c.exec_driver_sql('SELECT version_num FROM %s'
                                     % table).scalars().all()
    finally:
        e.dispose()


def _tables(url):
    e = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(e).get_table_names())
    finally:
        e.dispose()


def test_database_of_0002_moves_over_and_taskflow_migrates(pg_url):
    from alembic import command
    # A database of revision 0002 as it was made: our revision in
    # alembic_version; a migration in it.
    e = sql.make_engine(pg_url)
    with e.begin() as connection:
        config = sql._alembic_config(connection)
        config.attributes['version_table'] = sql.LEGACY_VERSION_TABLE
        command.upgrade(config, '0002')
    migrations = sa.table(
        'migrations', sa.column('name'), sa.column('location'),
        sa.column('target'), sa.column('target_options', sa.JSON),
        sa.column('status'), sa.column('created_at'),
        sa.column('updated_at'))
    with e.begin() as c:
        c.execute(migrations.insert().values(
            name='vm1', location='xenserver://root@h/vm1', target='file',
            target_options={'output_dir': '/o'}, status='synced',
            created_at=1.0, updated_at=2.0))
    e.dispose()
    assert _versions(pg_url, 'alembic_version') == ['0002']
    with sql.SqlStore(pg_url) as store:
        assert store.get('vm1')['status'] == 'synced'
        # TaskFlow's alembic migrations run (PostgreSQL), in
        # alembic_version, which is now theirs alone.
        store.flow_backend()
    theirs = _versions(pg_url, 'alembic_version')
    assert len(theirs) == 1 and theirs[0] not in ('0001', '0002', '0003',
                                                  '0004')
    assert _versions(pg_url, sql.VERSION_TABLE) == [sql.head_revision()]
    assert {'logbooks', 'flowdetails', 'atomdetails', 'migrations'} <= \
        _tables(pg_url)
    # Opened again: nothing to do on either side.
    with sql.SqlStore(pg_url) as store:
        store.flow_backend()
        assert store.get('vm1')['target_options'] == {'output_dir': '/o'}
    assert _versions(pg_url, 'alembic_version') == theirs


def test_migration_flows_on_postgresql(pg_url, tmp_path):
    """create, sync, cutover (the xe stand-in, locally) with the state and
    TaskFlow's record on PostgreSQL; the targets equal the guest's
    disks."""
    root, facts = xhost.standard_host(tmp_path / 'xs')
    out = tmp_path / 'out'
    out.mkdir()
    kw = {'connect': miglocal.connector(root)}
    with sql.SqlStore(pg_url) as store:
        m = engine.create(store, 'web', LOC, output_dir=str(out), **kw)
        engine.sync(store, 'web', **kw)
        d0 = m['disks'][0]
        xhost.GuestWriter(root, d0['source_id'],
                          facts['models'][d0['source_id']]).write(
            2 * MiB, ig.pattern(5, 8192))
        engine.cutover(store, 'web', **kw)
        m = engine.show(store, 'web')
        assert m['status'] == 'done'
        assert m['last_run']['operation'] == 'cutover'
        assert m['last_run']['state'] == 'SUCCESS'
        assert m['last_run']['runs'] == 2
    for d in m['disks']:
        model = facts['models'][d['source_id']]
        assert ig.sha256_file(d['target_ref']) == model.sha256()
        assert os.path.getsize(d['target_ref']) == model.size
