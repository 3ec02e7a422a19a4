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

"""The SQL state store (migration.state.sql) on real SQLite files: the
tests of every database (tests/lib/statecontract.py), and SQLite's own."""

import argparse
import os
import stat
import subprocess
import sys
import textwrap

from oslo_config import cfg
import pytest
import sqlalchemy as sa

from any2kvm_os import api as any2kvm_api
from any2kvm_os import exception
from any2kvm_os.migration.state import revisions
from any2kvm_os.migration.state import sql
from tests.lib import statecontract
from tests.lib.statecontract import _cli
from tests.lib.statecontract import _create


def _url(tmp_path, name='state.db'):
    return 'sqlite:///%s' % (tmp_path / name)


@pytest.fixture
def url(tmp_path):
    return _url(tmp_path)


@pytest.fixture
def store(url):
    with sql.SqlStore(url) as s:
        yield s


# -- the contract -----------------------------------------------------------


class TestStoreContract(statecontract.StoreContract):
    """The tests of every database, on SQLite."""


# -- the contract (SQLite's own) -------------------------------------------


def test_cutover_of_revision_0001_is_kept_as_history(tmp_path):
    url = 'sqlite:///%s' % (tmp_path / 'old.db')
    engine = sql.make_engine(url)
    sql.upgrade(engine, '0001')
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO migrations (id, name, location, target, "
            "target_options, status, created_at, updated_at) VALUES (1, "
            "'old', 'xenserver://root@h/vm', 'file', '{}', 'done', 1, 2)"))
        c.execute(sa.text(
            "INSERT INTO cutovers (migration_id, shutdown_at, completed_at, "
            "downtime) VALUES (1, 10.0, 12.5, 2.5)"))
    engine.dispose()
    with sql.SqlStore(url) as store:
        m = store.get('old')
        assert m['cutover']['downtime'] == 2.5
        assert len(m['cutovers']) == 1
        assert sql.current_revision(store._engine) == sql.head_revision()


# -- the database ----------------------------------------------------------


def test_sqlite_pragmas(store, url):
    with store._engine.connect() as c:
        assert c.exec_driver_sql('PRAGMA journal_mode').scalar() == 'wal'
        assert c.exec_driver_sql('PRAGMA foreign_keys').scalar() == 1
        assert c.exec_driver_sql('PRAGMA busy_timeout').scalar() >= 1000


def test_default_location_under_xdg_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path / 'data'))
    assert sql.data_dir() == str(tmp_path / 'data' / 'any2kvm')
    old = os.umask(0o022)
    try:
        with sql.SqlStore() as store:
            _create(store)
    finally:
        os.umask(old)
    directory = tmp_path / 'data' / 'any2kvm'
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / 'state.db').stat().st_mode) == 0o600
    assert sql.default_url() == 'sqlite:///%s' % (directory / 'state.db')


def test_default_location_without_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.delenv('XDG_DATA_HOME', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert sql.data_dir() == str(tmp_path / '.local' / 'share' / 'any2kvm')
    monkeypatch.setenv('XDG_DATA_HOME', 'relative/ignored')
    assert sql.data_dir() == str(tmp_path / '.local' / 'share' / 'any2kvm')


def test_url_from_argument_then_option_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path))
    parser = argparse.ArgumentParser()
    sql.add_arguments(parser)
    conf = cfg.ConfigOpts()
    any2kvm_api.register_opts(conf)
    conf(args=[])
    assert sql.url_from(parser.parse_args([]), conf) == sql.default_url()
    conf.set_override('state_db_url', 'sqlite:////from/conf.db',
                      group='any2kvm')
    assert sql.url_from(parser.parse_args([]), conf) == (
        'sqlite:////from/conf.db')
    args = parser.parse_args(['--state-db', 'sqlite:////from/arg.db'])
    assert sql.url_from(args, conf) == 'sqlite:////from/arg.db'
    assert sql.url_from() == sql.default_url()


def test_option_is_listed_and_secret():
    from any2kvm_os import opts
    option, = [o for o in dict(opts.list_opts())['any2kvm']
               if o.name == 'state_db_url']
    assert option.secret and option.help


def test_registering_the_options_imports_no_sqlalchemy():
    r = subprocess.run([sys.executable, '-c', textwrap.dedent('''
        import sys
        from oslo_config import cfg
        from any2kvm_os import api
        api.register_opts(cfg.ConfigOpts())
        assert 'sqlalchemy' not in sys.modules
        ''')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_password_hidden_in_the_url_shown():
    text = sql.safe_url('mysql+pymysql://any2kvm:hunter2@db/any2kvm')
    assert 'hunter2' not in text and 'db/any2kvm' in text


@pytest.mark.parametrize('url,secret', [
    ('sqlite:////srv/a:b@c.db', False),
    ('sqlite:///relative.db', False),
    ('mysql+pymysql://any2kvm@db/any2kvm', False),
    ('postgresql://any2kvm@db/any2kvm?sslmode=require', False),
    ('mysql+pymysql://any2kvm:hunter2@db/any2kvm', True),
    ('postgresql+psycopg2://any2kvm:p%2Fw@db:5432/x', True),
    ('postgresql://any2kvm@db/any2kvm?password=hunter2', True),
    ('postgresql://any2kvm:@db/any2kvm', True),
])
def test_password_in_url(url, secret):
    from any2kvm_os.migration.state import options
    assert options.has_password(url) is secret


def test_password_on_the_command_line_is_refused(monkeypatch, tmp_path):
    """``--state-db`` with a password: one line pointing at the variable
    and the option, the password not in it; the variable works."""
    from any2kvm_os import exception
    from any2kvm_os.migration import engine
    with pytest.raises(exception.Any2KvmError) as e:
        engine.open_store('mysql+pymysql://any2kvm:hunter2@db/any2kvm')
    text = str(e.value)
    assert '\n' not in text and 'hunter2' not in text
    assert 'ANY2KVM_STATE_DB' in text and 'state_db_url' in text
    monkeypatch.setenv('ANY2KVM_STATE_DB', 'sqlite:///%s'
                       % (tmp_path / 'env.db'))
    store = engine.open_store(None)
    try:
        assert store.list() == []
    finally:
        store.close()
    assert (tmp_path / 'env.db').exists()


def test_cli_refuses_a_password_in_argv_and_never_shows_one(tmp_path):
    r = _cli(['migration', 'list', '--state-db',
              'postgresql://any2kvm:hunter2@127.0.0.1:9/any2kvm'])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'ANY2KVM_STATE_DB' in r.stderr
    assert 'hunter2' not in r.stdout + r.stderr
    # From the variable it is used: a server that cannot be reached (or
    # a driver missing) fails without the password in any output, even
    # the traceback of --debug.
    r = _cli(['migration', 'list', '--debug'], {
        'ANY2KVM_STATE_DB':
            'postgresql+psycopg2://any2kvm:hunter2@127.0.0.1:9/any2kvm'})
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert 'hunter2' not in r.stdout + r.stderr, r.stderr


def test_a_damaged_or_newer_database_is_one_line_naming_it(tmp_path):
    """A state database that is not one (damaged, another file), or that
    a newer any2kvm upgraded: one line naming it and the cause, exit 1,
    no traceback (it was "internal error (...)")."""
    bad = tmp_path / 'bad.db'
    bad.write_bytes(b'not a database at all, ' * 500)
    r = _cli(['migration', 'list', '--state-db', 'sqlite:///%s' % bad])
    assert r.returncode == 1, (r.stdout, r.stderr)
    line, = r.stderr.strip().splitlines()
    assert line.startswith('any2kvm: error: state database sqlite:///%s: '
                           % bad), line
    assert 'not a SQLite database' in line and 'internal' not in line
    newer = tmp_path / 'newer.db'
    url = 'sqlite:///%s' % newer
    sql.SqlStore(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.execute(sa.text('UPDATE %s SET version_num = :v'
                          % sql.VERSION_TABLE), {'v': '9999'})
    engine.dispose()
    r = _cli(['migration', 'list', '--state-db', url])
    assert r.returncode == 1, (r.stdout, r.stderr)
    line, = r.stderr.strip().splitlines()
    assert line.startswith('any2kvm: error: state database %s: ' % url)
    assert 'made by a newer any2kvm' in line, line


@pytest.mark.parametrize('url,hidden,hint', [
    ('mysql+pymysql://any2kvm:hunter2@127.0.0.1:9/any2kvm', 'pymysql',
     'pip install "any2kvm_os[mysql]"'),
    ('postgresql+psycopg2://any2kvm:hunter2@127.0.0.1:9/any2kvm',
     'psycopg2',
     'pip install "any2kvm_os[postgresql]"'),
    ('mysql+mysqldb://any2kvm:hunter2@127.0.0.1:9/any2kvm', None,
     'or use mysql+pymysql://'),
])
def test_missing_driver_is_one_line_naming_the_extra(url, hidden, hint):
    """``hidden``: a driver made unimportable in the command's process."""
    script = textwrap.dedent('''
        import sys
        if sys.argv[1]:
            sys.modules[sys.argv[1]] = None
        from any2kvm_os.cmd import any2kvm
        sys.argv[1:] = ['migration', 'list']
        sys.exit(any2kvm.main())
        ''')
    env = dict(os.environ, ANY2KVM_STATE_DB=url)
    env.pop('PYTHONPATH', None)
    r = subprocess.run([sys.executable, '-c', script, hidden or ''],
                       capture_output=True, text=True, env=env, cwd='/',
                       timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'not installed' in r.stderr and hint in r.stderr, r.stderr
    assert 'hunter2' not in r.stdout + r.stderr


# -- the schema check of every command ---------------------------------------


def test_scanned_heads_are_alembics():
    """The head read from the scripts' revision lines is alembic's own,
    for our scripts and TaskFlow's (a new revision written otherwise
    makes the scan answer None, never a wrong head)."""
    from alembic import script
    from any2kvm_os.migration.state import flowdb
    assert revisions.scanned_head(sql.VERSIONS_DIR) == sql.head_revision()
    tf = script.ScriptDirectory(os.path.dirname(flowdb._versions_dir()))
    assert revisions.scanned_head(flowdb._versions_dir()) == \
        tf.get_current_head()


def _script(directory, name, revision, down):
    (directory / name).write_text(
        '"""x"""\nrevision = %r\ndown_revision = %r\n\n\ndef upgrade():\n'
        '    pass\n' % (revision, down))


@pytest.mark.parametrize('case', ['branch', 'merge', 'twice', 'missing',
                                  'no-down', 'empty'])
def test_scanned_head_is_none_unless_one_line_of_history(tmp_path, case):
    d = tmp_path / 'versions'
    d.mkdir()
    if case != 'empty':
        _script(d, '0001_a.py', '0001', None)
        _script(d, '0002_b.py', '0002', '0001')
    assert case == 'empty' or revisions.scanned_head(str(d)) == '0002'
    if case == 'branch':
        _script(d, '0003_c.py', '0003', '0001')
    elif case == 'merge':
        (d / '0003_c.py').write_text(
            "revision = '0003'\ndown_revision = ('0001', '0002')\n")
    elif case == 'twice':
        _script(d, '0003_c.py', '0002', '0001')
    elif case == 'missing':
        _script(d, '0003_c.py', '0003', '0009')
    elif case == 'no-down':
        (d / '0003_c.py').write_text("revision = '0003'\n")
    assert revisions.scanned_head(str(d)) is None
    assert revisions.scanned_head(str(tmp_path / 'absent')) is None


def test_a_current_schema_is_not_handed_to_alembic(
        url, monkeypatch, tmp_path):
    """The second opening finds our version row at the head: alembic is
    not run (nor TaskFlow's: on SQLite its tables, once made, are
    current, and nothing takes a writer's lock for them); a database
    behind the head is upgraded."""
    from alembic import command
    from any2kvm_os.migration.state import flowdb
    with sql.SqlStore(url):
        pass
    # A database an earlier version made: revision 0004.
    older = 'sqlite:///%s' % (tmp_path / 'older.db')
    e = sql.make_engine(older)
    with e.begin() as c:
        command.upgrade(sql._alembic_config(c), '0004')
    e.dispose()
    calls = []
    real = command.upgrade
    monkeypatch.setattr(command, 'upgrade',
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    with sql.SqlStore(url) as store:
        assert calls == []
        # SQLite: current once TaskFlow made its tables (the first
        # flow_backend), not before.
        assert flowdb.is_current(store._engine) is False
        store.flow_backend()
        assert flowdb.is_current(store._engine) is True
    with sql.SqlStore(older) as store:
        assert len(calls) == 1
        assert sql.current_revision(store._engine) == sql.head_revision()


def test_commands_but_create_never_make_the_database(tmp_path):
    """A mistyped ``--state-db`` must not read as "no migrations": only
    ``create`` makes the file; ``list`` says it is missing and lists
    nothing, the others refuse in one line; nothing is made on disk."""
    url = 'sqlite:///%s' % (tmp_path / 'typo' / 'state.db')
    r = _cli(['migration', 'list', '--format', 'json', '--state-db', url])
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.strip() == '[]'
    assert 'does not exist' in r.stderr, r.stderr
    for action in (['show', 'web'], ['sync', 'web'], ['abort', 'web']):
        r = _cli(['migration'] + action + ['--state-db', url])
        assert r.returncode == 1, (action, r.stdout, r.stderr)
        assert r.stderr.count('\n') == 1, r.stderr
        assert 'state database %s does not exist' % (
            tmp_path / 'typo' / 'state.db') in r.stderr
    assert not (tmp_path / 'typo').exists()
    with pytest.raises(sql.NoDatabase):
        sql.SqlStore(url, create=False)
    assert not (tmp_path / 'typo').exists()
    sql.SqlStore(url).close()
    sql.SqlStore(url, create=False).close()


@pytest.mark.parametrize('url,text', [
    ('bogus://x', "state database bogus://x: not a database URL we can "
                  "use (Can't load plugin: sqlalchemy.dialects:bogus)"),
    ('not a url', 'state database not a url: not a database URL'),
])
def test_unusable_url_is_one_line(url, text):
    r = _cli(['migration', 'list'], {'ANY2KVM_STATE_DB': url})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.count('\n') == 1 and text in r.stderr, r.stderr
    assert 'internal error' not in r.stderr


def test_unusable_url_hides_its_password():
    r = _cli(['migration', 'list'],
             {'ANY2KVM_STATE_DB': 'bogus://u:hunter2@h/x'})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert 'hunter2' not in r.stderr and 'not a database URL' in r.stderr


def test_fence_stops_when_the_lease_cannot_be_renewed():
    """The database cannot be reached past the lease's margin: the
    command stops writing, and says why in one line."""
    from any2kvm_os.migration.state import api

    class Store(object):
        def touch(self, lease):
            raise sa.exc.OperationalError('UPDATE holders', {},
                                          Exception('server has gone away'))

    import time
    lease = {'name': 'vm1', 'operation': 'cutover', 'lost': False,
             'expires': time.time() + 100}
    fence = api.Fence(Store(), lease, 20)
    fence()                     # far from its end: nothing asked
    lease['expires'] = time.time() + 10
    with pytest.raises(api.LeaseLost) as e:
        fence()
    text = str(e.value)
    assert text.startswith('migration vm1: the hold of this cutover is lost '
                           '(it could not be renewed: '), text
    assert 'server has gone away' in text and '\n' not in text


@pytest.mark.parametrize('scheme, driver', [('mysql+pymysql', 'pymysql'),
                                            ('postgresql+psycopg2',
                                             'psycopg2')])
def test_a_server_that_never_answers_fails_in_bounded_time(
        monkeypatch, scheme, driver):
    """A database server that accepts the connection and then says
    nothing (hung, or a link that drops everything): the command fails in
    one line after the connect timeout, instead of waiting for ever."""
    import socket
    import time
    short = {'connect_timeout': 2}
    if driver == 'pymysql':
        # (pymysql waits for the server's greeting by its read timeout)
        short.update(read_timeout=2, write_timeout=2)
    monkeypatch.setitem(sql.SERVER_TIMEOUTS, driver, dict(
        sql.SERVER_TIMEOUTS[driver], **short))
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(8)
    try:
        url = '%s://any2kvm@127.0.0.1:%d/state' % (
            scheme, listener.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(exception.Any2KvmError) as e:
            sql.SqlStore(url)
        assert time.monotonic() - started < 30
    finally:
        listener.close()
    text = str(e.value)
    assert text.startswith('state database %s: ' % url), text
    assert '\n' not in text


def test_a_state_database_error_is_one_clean_line():
    """The driver's words and the hint; not SQLAlchemy's statement nor
    its "(Background on this error at: https://sqlalche.me/...)"."""
    from sqlalchemy import exc as sa_exc
    from any2kvm_os import api as a2k_api
    e = sa_exc.DatabaseError('SELECT 1', {}, Exception(
        'file is not a database'))
    assert 'sqlalche.me' in str(e)
    text = str(a2k_api._state_error(e, 'sqlite:////tmp/x.db'))
    assert text == ('state database sqlite:////tmp/x.db: (builtins.'
                    'Exception) file is not a database: not a SQLite '
                    'database (damaged, or another file)'), text
