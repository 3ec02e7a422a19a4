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

"""The migration state in SQL: :class:`SqlStore`.

SQLite by default, in a file under the user's data directory
(:func:`default_url`); MySQL or PostgreSQL by URL (``state_db_url`` in
``[any2kvm]``, or ``--state-db URL``: :func:`add_arguments`,
:func:`url_from`; they live in :mod:`.options`, which imports no
SQLAlchemy, and are repeated here).  The schema is brought to the newest
revision of ``migrations/`` whenever a store is opened (:func:`upgrade`);
our revision is kept in :data:`VERSION_TABLE`, not in alembic's default
``alembic_version``, which belongs to TaskFlow's schema in the same
database (:meth:`SqlStore.flow_backend`).

SQLite runs in WAL mode (``synchronous=NORMAL``: see :func:`make_engine`)
with foreign keys on and a busy timeout; every
write transaction starts with ``BEGIN IMMEDIATE``, so two processes on one
file (a sync in one shell, a show in another) take turns instead of
failing.  On MySQL (READ COMMITTED, as PostgreSQL) and PostgreSQL, the
hold of a migration locks its row (``SELECT ... FOR UPDATE``), and
processes making or upgrading the schema take turns
(:func:`schema_lock`); on MySQL the tables are utf8mb4
(:func:`_mysql_utf8mb4`, revision 0005).  Nothing secret is stored:
:meth:`SqlStore.create` refuses target options whose names look like
passwords, tokens or keys.
"""

import contextlib
import logging
import os
import re
import socket
import threading
import time
import uuid

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm

from any2kvm_os import exception
from any2kvm_os import processes
from any2kvm_os import redact
from any2kvm_os.migration.state import api
from any2kvm_os.migration.state import models
from any2kvm_os.migration.state import options
from any2kvm_os.migration.state import revisions

LOG = logging.getLogger(__name__)

GROUP = options.GROUP
data_dir = options.data_dir
default_url = options.default_url
add_arguments = options.add_arguments
url_from = options.url_from

#: Where alembic finds the revisions (a package resource).
SCRIPT_LOCATION = 'any2kvm_os.migration.state:migrations'

#: The revisions' files (read by :func:`.revisions.scanned_head`).
VERSIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            'migrations', 'versions')

#: The table that records our schema's revision.  Not alembic's default
#: ``alembic_version``: TaskFlow's persistence schema lives in the same
#: database and its own alembic migrations (MySQL, PostgreSQL) keep their
#: revision in ``alembic_version``; sharing the table, each tool would
#: find a revision it does not know and refuse.  A database made before
#: (revision 0001 or 0002 in ``alembic_version``) is moved over by
#: :func:`upgrade` (:func:`_adopt_legacy_version`).
VERSION_TABLE = 'any2kvm_alembic_version'
#: Alembic's default version table, where revisions 0001 and 0002 were.
LEGACY_VERSION_TABLE = 'alembic_version'

#: How long, in seconds, a SQLite connection waits for a lock.
BUSY_TIMEOUT = 30.0

#: How long, in seconds, a hold lasts unless renewed; a holder renews it
#: every :data:`LEASE` / 4 while its block runs.
LEASE = 300.0

#: Names of target options that could hold a secret (refused); a name
#: ending in ``_env`` (the name of a variable) is not a secret.
_SECRET_NAME = re.compile(
    r'passw|passphrase|secret|token|credential|private[_-]?key|'
    r'api[_-]?key|access[_-]?key|auth[_-]?key|cookie', re.IGNORECASE)

_WRITE = 'any2kvm_write'

#: How long, in seconds, a process waits for another one changing the
#: schema of the same database (:func:`schema_lock`).
SCHEMA_LOCK_TIMEOUT = 300.0
#: PostgreSQL's advisory lock of schema changes (a lock of the database:
#: PostgreSQL scopes advisory locks to it).
_PG_SCHEMA_LOCK = 0x616e79326b766d  # 'any2kvm'

#: The extras of the package that bring a driver, by (backend, driver).
_EXTRAS = {('mysql', 'pymysql'): 'any2kvm_os[mysql]',
           ('mariadb', 'pymysql'): 'any2kvm_os[mysql]',
           ('postgresql', 'psycopg2'): 'any2kvm_os[postgresql]'}


# -- where the database is-----------------------------------------------------

def safe_url(url):
    """``url`` as text, its passwords hidden (``user:***@``, and the
    query's ``password=``; :mod:`any2kvm_os.redact`): for messages.  A
    text that does not parse is shown through the same patterns."""
    try:
        parsed = sa.engine.make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        # Not a URL SQLAlchemy reads (a typo): its scheme and what
        # follows its last "@" (the host, the database), not the rest.
        text = str(url)
        if '@' not in text:
            return redact.text(text)
        scheme = re.match(r'[\w+.-]{0,40}', text).group(0)
        return redact.text('%s...@%s' % (scheme, text.rsplit('@', 1)[1]))
    secret = dict((k, redact.MASK) for k in parsed.query
                  if redact.secret_query_key(k))
    if secret:
        parsed = parsed.update_query_dict(secret)
    return redact.text(parsed.render_as_string(hide_password=True))


def _prepare_sqlite_file(path):
    """Make the file's directory (0700 when we make it) and the file
    itself (0600), so that neither is ever readable by others."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # whatever the umask
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)


# -- the engine ---------------------------------------------------------------

class NoDatabase(exception.Any2KvmError):
    """A SQLite state database that does not exist, opened by a command
    that must not create it."""


def _parse_url(url):
    """``url`` parsed, or one line saying what is wrong with it."""
    text = url
    try:
        url = sa.engine.make_url(url)
        url.get_dialect()
    except (sa_exc.ArgumentError, ValueError) as e:
        # NoSuchModuleError too: an unknown scheme or driver; ValueError:
        # a port that is no number (its text is what SQLAlchemy took for
        # the port, which may be a password's tail: not shown).
        why = 'its port is not a number' if isinstance(e, ValueError) \
            else redact.text(_first_line(e))
        raise exception.Any2KvmError('state database %s: not a database '
                                     'URL we can use (%s)' % (
                                         safe_url(text), why))
    if '@' in (url.host or ''):
        # SQLAlchemy ends the password at its first "@": the rest of it
        # would be taken for the host (and looked up).
        raise exception.Any2KvmError(
            'state database %s: its host part holds an "@" (write an "@" '
            'of the password as %%40)' % safe_url(text))
    return url


def sqlite_path(url):
    """The file of a SQLite ``url``, else None (another backend, or an
    in-memory database)."""
    url = _parse_url(url)
    database = url.database
    if (url.get_backend_name() == 'sqlite' and database
            and database != ':memory:' and not database.startswith('file:')):
        return database
    return None


#: Seconds a database server is given to answer a connection, and a
#: statement (lock waits included: InnoDB gives up on one at 50 s).
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60

#: The drivers' settings that bound the waits on a server that stopped
#: answering, by driver (none of them bounds them by default).
SERVER_TIMEOUTS = {
    'pymysql': {'connect_timeout': CONNECT_TIMEOUT,
                'read_timeout': READ_TIMEOUT, 'write_timeout': READ_TIMEOUT},
    'mysqldb': {'connect_timeout': CONNECT_TIMEOUT,
                'read_timeout': READ_TIMEOUT, 'write_timeout': READ_TIMEOUT},
    # libpq: the connection, then TCP keepalives (a dead server or link is
    # found within about a minute), and a statement's own time, lock
    # waits included (a row a stopped command keeps locked: PostgreSQL
    # waits for ever by default, InnoDB 50 s).
    'psycopg2': {'connect_timeout': CONNECT_TIMEOUT, 'keepalives': 1,
                 'keepalives_idle': 30, 'keepalives_interval': 10,
                 'keepalives_count': 3,
                 'options': '-c statement_timeout=%d' % (READ_TIMEOUT * 1000)},
}
SERVER_TIMEOUTS['psycopg'] = SERVER_TIMEOUTS['psycopg2']


def make_engine(url, create=True):
    """An engine for ``url``; for SQLite, the file prepared, WAL mode
    with ``synchronous=NORMAL`` (commits durable across a crash of the
    process, not a power loss: see the comment below), foreign keys, busy
    timeout and ``BEGIN IMMEDIATE`` for writes.  ``create=False``: a
    SQLite file that does not exist is refused (:class:`NoDatabase`),
    not made."""
    path = sqlite_path(url)
    url = _parse_url(url)
    backend = url.get_backend_name()
    if backend != 'sqlite':
        kwargs = {}
        if backend in ('mysql', 'mariadb'):
            # InnoDB's default, REPEATABLE READ, would let a reader keep
            # reading the snapshot of its first statement: READ COMMITTED
            # is what PostgreSQL and SQLite's WAL give each statement.
            kwargs['isolation_level'] = 'READ COMMITTED'
        # A server that stops answering fails the command in a bounded
        # time rather than holding it (inside a cutover's downtime too):
        # the driver's defaults wait for ever.  A parameter of the URL's
        # own wins.
        given = set(url.query)
        connect_args = dict(
            (k, v) for k, v in SERVER_TIMEOUTS.get(url.get_driver_name(),
                                                   {}).items()
            if k not in given)
        if connect_args:
            kwargs['connect_args'] = connect_args
        try:
            return sa.create_engine(url, pool_pre_ping=True, **kwargs)
        except ImportError as e:
            extra = _EXTRAS.get((backend, url.get_driver_name()))
            raise exception.Any2KvmError(
                'state database %s: its Python driver is not installed '
                '(%s): %s' % (safe_url(url), e, (
                    'pip install "%s"' % extra if extra else
                    'install it, or use mysql+pymysql:// or '
                    'postgresql+psycopg2:// (pip install '
                    '"any2kvm_os[mysql]" or "any2kvm_os[postgresql]")')))
    if path is not None:
        if not create and not os.path.exists(path):
            raise NoDatabase(
                'state database %s does not exist: no migration was '
                'created there (check --state-db, $ANY2KVM_STATE_DB or '
                'state_db_url)' % path)
        _prepare_sqlite_file(path)
    engine = sa.create_engine(
        url, connect_args={'timeout': BUSY_TIMEOUT,
                           'check_same_thread': False})

    @event.listens_for(engine, 'connect')
    def _connect(dbapi_connection, _record):
        # The driver's own transaction handling off: SQLAlchemy's begin
        # event below says when a transaction starts, and how.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute('PRAGMA busy_timeout = %d'
                           % int(BUSY_TIMEOUT * 1000))
            cursor.execute('PRAGMA foreign_keys = ON')
            cursor.execute('PRAGMA journal_mode = WAL')
            # A commit is written to the WAL, synced at checkpoints only:
            # durable across a crash of the process (kill -9), not across
            # a power loss, which may lose the last commits (never
            # corrupt the file).  What the state records survives that:
            # a layer whose record is lost is applied again (every write
            # is absolute, and the target is flushed before its layer is
            # recorded), an unrecorded snapshot is found by its name,
            # one removed twice counts as removed.  FULL cost 0.05-0.23 s
            # per command (44 commits) on a busy disk; NORMAL 0.005 s.
            cursor.execute('PRAGMA synchronous = NORMAL')
        finally:
            cursor.close()

    @event.listens_for(engine, 'begin')
    def _begin(connection):
        # A writer takes the write lock first: no deadlock between two
        # readers that both want to write (SQLITE_BUSY without waiting).
        if connection.get_execution_options().get(_WRITE):
            connection.exec_driver_sql('BEGIN IMMEDIATE')
        else:
            connection.exec_driver_sql('BEGIN')

    return engine


def include_object(obj, name, type_, reflected, compare_to):
    """Alembic's autogenerate compares our tables only: TaskFlow's
    (``logbooks``...) and the version tables live beside them."""
    return type_ != 'table' or name in models.Base.metadata.tables


def _alembic_config(connection=None):
    from alembic import config as alembic_config
    config = alembic_config.Config()
    config.set_main_option('script_location', SCRIPT_LOCATION)
    config.attributes['connection'] = connection
    return config


def head_revision():
    """The newest revision of the schema."""
    from alembic import script
    return script.ScriptDirectory.from_config(
        _alembic_config()).get_current_head()


def current_revision(engine):
    """The revision of the database behind ``engine`` (None: empty, or
    not yet moved to :data:`VERSION_TABLE`)."""
    from alembic.runtime import migration
    with engine.connect() as connection:
        return migration.MigrationContext.configure(
            connection, opts={'version_table': VERSION_TABLE}
        ).get_current_revision()


def _our_revisions():
    from alembic import script
    directory = script.ScriptDirectory.from_config(_alembic_config())
    return set(r.revision for r in directory.walk_revisions())


def _adopt_legacy_version(connection):
    """Move our revision from ``alembic_version`` (where revisions 0001
    and 0002 kept it) to :data:`VERSION_TABLE`, in the caller's
    transaction; ``alembic_version`` is dropped when nothing else is left
    in it, and left alone when it holds another schema's revision
    (TaskFlow's).  Returns the revision moved, or None."""
    names = sa.inspect(connection).get_table_names()
    if VERSION_TABLE in names or LEGACY_VERSION_TABLE not in names:
        return None
    legacy = sa.table(LEGACY_VERSION_TABLE, sa.column('version_num'))
    rows = [r[0] for r in connection.execute(sa.select(
        legacy.c.version_num))]
    ours = [r for r in rows if r in _our_revisions()]
    if not ours:
        return None
    table = sa.Table(
        VERSION_TABLE, sa.MetaData(),
        sa.Column('version_num', sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint('version_num',
                                name='%s_pkc' % VERSION_TABLE))
    table.create(connection)
    connection.execute(table.insert(), [{'version_num': r} for r in ours])
    connection.execute(legacy.delete().where(
        legacy.c.version_num.in_(ours)))
    if len(ours) == len(rows):
        sa.Table(LEGACY_VERSION_TABLE, sa.MetaData()).drop(connection)
    LOG.info('state database: revision %s moved from %s to %s',
             ', '.join(ours), LEGACY_VERSION_TABLE, VERSION_TABLE)
    return ours[0]


def _mysql_utf8mb4(engine):
    """MySQL: the database's default character set utf8mb4, compared
    byte by byte as on SQLite and PostgreSQL, before any of our tables
    is made, whatever the server's default (latin1 on MariaDB's own).
    Revision 0005 converts the tables of an older database.  TaskFlow
    makes its own tables ``CHARACTER SET utf8`` whatever this default
    (they hold ASCII only: see revision 0005)."""
    if engine.dialect.name not in ('mysql', 'mariadb'):
        return
    with engine.connect() as connection:
        if connection.exec_driver_sql(
                'SELECT @@collation_database').scalar() != 'utf8mb4_bin':
            connection.exec_driver_sql(
                'ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_bin')
        connection.commit()


@contextlib.contextmanager
def schema_lock(engine):
    """Hold the lock of schema changes of the database behind ``engine``
    while the block runs: two processes opening a new database take
    turns making its tables (ours, then TaskFlow's), the second finding
    them made.  PostgreSQL: an advisory lock (of this database); MySQL:
    a named lock (``GET_LOCK``, named after the database); both held by
    a connection of their own.  On SQLite, nothing: its writers take the
    lock of the file (``BEGIN IMMEDIATE``), and the schema is made in one
    transaction."""
    dialect = engine.dialect.name
    if dialect not in ('postgresql', 'mysql', 'mariadb'):
        yield
        return
    if dialect == 'postgresql':
        take = sa.text('SELECT pg_try_advisory_lock(:key)').bindparams(
            key=_PG_SCHEMA_LOCK)
        give = sa.text('SELECT pg_advisory_unlock(:key)').bindparams(
            key=_PG_SCHEMA_LOCK)
    else:
        name = ('any2kvm.schema.%s' % engine.url.database)[:64]
        take = sa.text('SELECT GET_LOCK(:name, 1)').bindparams(name=name)
        give = sa.text('SELECT RELEASE_LOCK(:name)').bindparams(name=name)
    with engine.connect() as connection:
        deadline = time.monotonic() + SCHEMA_LOCK_TIMEOUT
        while not connection.execute(take).scalar():
            connection.rollback()
            if time.monotonic() > deadline:
                raise exception.Any2KvmError(
                    'state database %s: another process has been changing '
                    'its schema for more than %d s' % (
                        safe_url(engine.url), SCHEMA_LOCK_TIMEOUT))
            time.sleep(0.2)
        connection.commit()
        try:
            yield
        finally:
            try:
                connection.execute(give)
                connection.commit()
            except Exception:
                # Closed: the server releases the lock with the session.
                connection.invalidate()


def upgrade(engine, revision='head'):
    """Bring the schema to ``revision``; nothing is done (or logged)
    when it is there already.  Every command opens the store: when our
    version table already holds the head revision of the scripts
    (:func:`.revisions.scanned_head`, one query), alembic is not
    asked."""
    if revision == 'head':
        head = revisions.scanned_head(VERSIONS_DIR)
        if head is not None and \
                revisions.stored(engine, VERSION_TABLE) == [head]:
            return
    from alembic import command
    want = head_revision() if revision == 'head' else revision
    if current_revision(engine) == want:
        return
    with schema_lock(engine):
        if current_revision(engine) == want:
            return  # made meanwhile by another process
        _mysql_utf8mb4(engine)
        with engine.execution_options(**{_WRITE: True}).begin() as \
                connection:
            # In one transaction, so that two processes opening a new
            # SQLite database take turns; the second finds it at head.
            _adopt_legacy_version(connection)
            command.upgrade(_alembic_config(connection), revision)


# -- plain data ---------------------------------------------------------------

def check_not_secret(options, where='target_options'):
    """ValueError when ``options`` (a dict, nested or not) has a key that
    looks secret, or a URL with a password in it."""
    if isinstance(options, dict):
        for key, value in options.items():
            key = str(key)
            if _SECRET_NAME.search(key) and not key.lower().endswith('_env'):
                raise ValueError(
                    '%s: %r looks like a secret, and nothing secret is '
                    'stored in the migration state' % (where, key))
            check_not_secret(value, '%s.%s' % (where, key))
    elif isinstance(options, (list, tuple)):
        for i, value in enumerate(options):
            check_not_secret(value, '%s[%d]' % (where, i))
    elif isinstance(options, str) and redact.has_secret(options):
        raise ValueError('%s: a URL with a password in it, and nothing '
                         'secret is stored in the migration state' % where)


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def _time_text(t):
    return time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t))


def _holder_dict(holder):
    return {'operation': holder.operation, 'pid': holder.pid,
            'host': holder.host, 'since': holder.since,
            'since_text': _time_text(holder.since),
            'expires': holder.expires,
            'expires_text': _time_text(holder.expires)}


def _layer_dict(layer):
    return {'layer_id': layer.layer_id, 'fingerprint': layer.fingerprint,
            'name': layer.name, 'applied_at': layer.applied_at,
            'partial': layer.partial}


def _disk_dict(disk):
    return {'index': disk.index, 'source_id': disk.source_id,
            'name': disk.name, 'virtual_size': disk.virtual_size,
            'target_ref': disk.target_ref,
            'applied': [_layer_dict(a) for a in disk.applied]}


def _host():
    return socket.gethostname()


# -- the store ----------------------------------------------------------------

class SqlStore(api.Store):
    """The state of every migration in the database at ``url`` (None:
    :func:`default_url`), its schema upgraded on opening.

    ``lease``: how long a hold lasts without renewal (seconds).
    """

    def __init__(self, url=None, lease=LEASE, create=True):
        self.url = url or default_url()
        self.lease = lease
        #: {name: the lease this store holds on it} (:meth:`hold`): every
        #: write of such a migration checks, in its transaction, that the
        #: lease is still this command's (:meth:`_mine`).
        self._held = {}
        self._engine = make_engine(self.url, create=create)
        self._writer = self._engine.execution_options(**{_WRITE: True})
        try:
            upgrade(self._engine)
        except sa_exc.OperationalError as e:
            self._engine.dispose()
            if self._engine.dialect.name == 'sqlite':
                raise
            # The server cannot be reached, refuses us...: one line, the
            # URL's password hidden (the driver's message has none).
            raise exception.Any2KvmError('state database %s: %s' % (
                safe_url(self.url), _first_line(e.orig))) from e
        except Exception:
            self._engine.dispose()
            raise

    def __repr__(self):
        return '<SqlStore %s>' % safe_url(self.url)

    def close(self):
        backend, self._flow_backend = self._flow_backend, None
        if backend is not None:
            backend.close()
        self._engine.dispose()

    # -- TaskFlow's persistence -----------------------------------------------

    _flow_backend = None

    def flow_backend(self):
        """TaskFlow's SQLAlchemy persistence backend on this database
        (its tables made or upgraded by TaskFlow the first time).  Its
        transactions are writers (``BEGIN IMMEDIATE`` on SQLite), so that
        they take turns with ours instead of failing."""
        if self._flow_backend is None:
            from any2kvm_os.migration.state import flowdb
            with schema_lock(self._engine):
                self._flow_backend = flowdb.backend(self._writer,
                                                    safe_url(self.url))
        return self._flow_backend

    def flow_logbook(self, name, create=True):
        with self._tx(write=create) as session:
            m = self._mine(session, name)
            if m.flow_logbook is None and create:
                m.flow_logbook = str(uuid.uuid4())
            return m.flow_logbook

    @contextlib.contextmanager
    def _tx(self, write=True):
        """A session in one transaction, committed at the end of the block
        (rolled back on an exception)."""
        bind = self._writer if write else self._engine
        with orm.Session(bind, expire_on_commit=False) as session:
            with session.begin():
                yield session

    @staticmethod
    def _migration(session, name, lock=False):
        query = sa.select(models.Migration).where(
            models.Migration.name == name)
        if lock:
            query = query.with_for_update()
        m = session.scalars(query).one_or_none()
        if m is None:
            raise api.NotFound('no migration named %s' % name)
        return m

    def _mine(self, session, name):
        """:meth:`_migration` ``name`` for a write: refused with
        :class:`~any2kvm_os.exception.LeaseLost` when this store holds it
        (:meth:`hold`) and its holder in the database is no longer this
        lease (taken over by another command): the state is fenced, in the
        write's own transaction.  The check is a write of the holder's
        row (its expiry, unchanged): the row stays locked until the
        transaction ends, so that a command taking the migration over
        (which deletes that row) waits for this write to commit, and this
        write sees it gone when it came first."""
        lease = self._held.get(name)
        # The migration's row locked first, as a taking over locks it
        # (:meth:`_acquire`): the two wait for each other, in one order.
        m = self._migration(session, name, lock=lease is not None)
        if lease is not None:
            H = models.Holder
            mine = session.execute(
                sa.update(H).where(H.migration_id == m.id,
                                   H.token == lease['token'])
                .values(expires=H.expires)
                .execution_options(synchronize_session=False)).rowcount
            if mine != 1:
                lease['lost'] = True
                session.expire(m, ['holder'])
                holder = m.holder
                raise api.LeaseLost(
                    name=name, operation=lease['operation'],
                    reason='another command took it over' if holder is None
                    else '%s by pid %s on %s took it over' % (
                        holder.operation, holder.pid, holder.host))
        return m

    def _disk(self, session, name, disk_index):
        m = self._mine(session, name)
        for disk in m.disks:
            if disk.index == disk_index:
                return m, disk
        raise api.NotFound('migration %s has no disk %s' % (name, disk_index))

    # -- migrations -----------------------------------------------------------

    def create(self, name, location, target, target_options, disks):
        target_options = dict(target_options or {})
        check_not_secret(target_options)
        now = time.time()
        m = models.Migration(
            name=name, location=location, target=target,
            target_options=target_options, status=api.STATUSES[0],
            created_at=now, updated_at=now,
            disks=[models.Disk(index=d['index'],
                               source_id=d.get('source_id'),
                               name=d.get('name'),
                               virtual_size=d.get('virtual_size'),
                               target_ref=d.get('target_ref'))
                   for d in disks])
        try:
            with self._tx() as session:
                if session.scalars(sa.select(models.Migration.id).where(
                        models.Migration.name == name)).first() is not None:
                    raise api.Exists('migration %s exists' % name)
                session.add(m)
        except sa_exc.IntegrityError:
            # Made by another process between the check and the insert
            # (or two disks with one index).
            with self._tx(write=False) as session:
                if session.scalars(sa.select(models.Migration.id).where(
                        models.Migration.name == name)).first():
                    raise api.Exists('migration %s exists' % name)
            raise
        return self.get(name)

    def get(self, name):
        with self._tx(write=False) as session:
            m = self._migration(session, name)
            now = time.time()
            holder = None
            if m.holder is not None:
                holder = _holder_dict(m.holder)
                holder['live'] = self._alive(m.holder, now)
            return {
                'name': m.name, 'location': m.location, 'target': m.target,
                'target_options': dict(m.target_options),
                'status': m.status, 'error': m.error,
                'created_at': m.created_at, 'updated_at': m.updated_at,
                'disks': [_disk_dict(d) for d in m.disks],
                'snapshots': [
                    {'snapshot_id': s.snapshot_id,
                     'created_at': s.created_at,
                     'removed_at': s.removed_at} for s in m.snapshots],
                'syncs': [
                    {'started_at': s.started_at, 'ended_at': s.ended_at,
                     'layers_applied': s.layers_applied,
                     'bytes_read': s.bytes_read,
                     'bytes_written': s.bytes_written,
                     'ok': s.ok, 'error': s.error} for s in m.syncs],
                'cutover': _open_cutover(m),
                'cutovers': [_cutover_dict(c) for c in m.cutovers],
                'holder': holder,
                'guest': dict(m.guest) if m.guest is not None else None,
            }

    def list(self):
        M = models.Migration
        with self._tx(write=False) as session:
            rows = session.execute(
                sa.select(M.name, M.location, M.target, M.status,
                          M.updated_at).order_by(M.name)).all()
        return [{'name': r.name, 'location': r.location, 'target': r.target,
                 'status': r.status, 'updated_at': r.updated_at}
                for r in rows]

    def delete(self, name):
        book = self.flow_logbook(name, create=False)
        with self._tx() as session:
            session.delete(self._mine(session, name))
        if book is not None:
            from any2kvm_os.migration.state import flowdb
            flowdb.destroy(self.flow_backend(), book)

    def set_status(self, name, status, error=None):
        if status not in api.STATUSES:
            raise ValueError('unknown status %r (one of %s)'
                             % (status, ', '.join(api.STATUSES)))
        with self._tx() as session:
            m = self._mine(session, name)
            m.status = status
            m.error = error
            m.updated_at = time.time()

    def guest_recorded(self, name, guest):
        guest = dict(guest) if guest is not None else None
        if guest is not None:
            check_not_secret(guest, 'guest')
        with self._tx() as session:
            m = self._mine(session, name)
            m.guest = guest
            m.updated_at = time.time()

    # -- the lease ------------------------------------------------------------

    def _alive(self, holder, now):
        """Whether ``holder`` still holds.  One of this host (its host
        name and machine) is judged by its process alone
        (:func:`processes.gone`): while it lives it holds, even when its
        lease expired (a process stopped or hung that went on would write
        beside the one that took over); once it is gone, or its pid is
        another process's, it does not.  One of another host holds until
        its lease expires (so does one recorded before marks, while its
        pid is there)."""
        if holder.host == _host() and holder.mark and \
                processes.mark_here(holder.mark):
            return not processes.gone(holder.mark)
        if holder.expires <= now:
            return False
        if holder.host == _host():
            return processes.pid_alive(holder.pid)
        return True

    def _acquire(self, name, operation):
        now = time.time()
        with self._tx() as session:
            m = self._migration(session, name, lock=True)
            holder = m.holder
            if holder is not None:
                if self._alive(holder, now):
                    raise api.Busy(name, _holder_dict(holder))
                LOG.warning('migration %s: taking over from %s by pid %s on '
                            '%s since %s (gone or expired)', name,
                            holder.operation, holder.pid, holder.host,
                            _time_text(holder.since))
                session.delete(holder)
                session.flush()
            holder = models.Holder(
                migration_id=m.id, token=uuid.uuid4().hex,
                operation=operation, pid=os.getpid(), host=_host(),
                since=now, expires=now + self.lease,
                mark=processes.mark())
            session.add(holder)
            lease = _holder_dict(holder)
            lease.update(name=name, token=holder.token, lost=False)
            return lease

    def _renew(self, lease):
        """Push the lease's expiry on; False when it is no longer ours."""
        H = models.Holder
        with self._tx() as session:
            owner = sa.select(models.Migration.id).where(
                models.Migration.name == lease['name']).scalar_subquery()
            expires = time.time() + self.lease
            done = session.execute(
                sa.update(H).where(H.migration_id == owner,
                                   H.token == lease['token'])
                .values(expires=expires)).rowcount
        if done:
            lease['expires'] = expires
        return bool(done)

    def _release(self, lease):
        H = models.Holder
        with self._tx() as session:
            owner = sa.select(models.Migration.id).where(
                models.Migration.name == lease['name']).scalar_subquery()
            session.execute(sa.delete(H).where(
                H.migration_id == owner, H.token == lease['token']))

    def touch(self, lease):
        """Renew ``lease`` (what :meth:`hold` yields) now; False, and
        ``lease['lost']`` set, when another command has taken it over.
        :meth:`hold` renews it by itself every ``lease / 4`` seconds."""
        if not self._renew(lease):
            lease['lost'] = True
        return not lease['lost']

    def fence(self, name):
        lease = self._held.get(name)
        if lease is None:
            return None
        # The renewer keeps the lease at least 3/4 of it ahead: the check
        # asks the database only when that failed for a while.
        return api.Fence(self, lease, self.lease / 5.0)

    @contextlib.contextmanager
    def hold(self, name, operation):
        lease = self._acquire(name, operation)
        self._held[name] = lease
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._keep, args=(lease, stop),
            name='any2kvm-lease-%s' % name, daemon=True)
        renewer.start()
        try:
            yield lease
        finally:
            stop.set()
            renewer.join()
            if self._held.get(name) is lease:
                del self._held[name]
            # Whatever still holds a fence of it (a thread the command
            # left behind) may change nothing more.
            lease['released'] = True
            self._release(lease)

    def _keep(self, lease, stop):
        """Renew ``lease`` until ``stop`` is set (the renewer thread)."""
        while not stop.wait(self.lease / 4.0):
            try:
                if not self.touch(lease):
                    LOG.warning('migration %s: the hold of %s was taken '
                                'over by another command', lease['name'],
                                lease['operation'])
                    return
            except Exception as e:
                # Retried at the next turn; the lease outlives a few.
                LOG.warning('migration %s: cannot renew the hold: %s',
                            lease['name'], e)

    # -- layers ---------------------------------------------------------------

    def layer_started(self, name, disk_index, layer_id, layer_name,
                      fingerprint):
        now = time.time()
        with self._tx() as session:
            m, disk = self._disk(session, name, disk_index)
            for layer in list(disk.applied):
                if layer.layer_id == layer_id:
                    # Applied again: it now comes after every other one.
                    disk.applied.remove(layer)
                    session.flush()
            last = max([a.order for a in disk.applied], default=-1)
            disk.applied.append(models.AppliedLayer(
                order=last + 1, layer_id=layer_id, name=layer_name,
                fingerprint=fingerprint, started_at=now, applied_at=None,
                partial=True))
            m.updated_at = now

    def layer_applied(self, name, disk_index, layer_id):
        now = time.time()
        with self._tx() as session:
            m, disk = self._disk(session, name, disk_index)
            layer = self._layer(disk, name, layer_id)
            layer.partial = False
            layer.applied_at = now
            m.updated_at = now

    @staticmethod
    def _layer(disk, name, layer_id):
        for layer in disk.applied:
            if layer.layer_id == layer_id:
                return layer
        raise api.NotFound('disk %s of migration %s has no layer %s'
                           % (disk.index, name, layer_id))

    def forget_layers(self, name, disk_index, from_layer_id):
        now = time.time()
        with self._tx() as session:
            m, disk = self._disk(session, name, disk_index)
            if from_layer_id is None:
                first = None
            else:
                first = self._layer(disk, name, from_layer_id).order
            for layer in list(disk.applied):
                if first is None or layer.order >= first:
                    disk.applied.remove(layer)
            m.updated_at = now

    def disk_resized(self, name, disk_index, virtual_size):
        now = time.time()
        with self._tx() as session:
            m, disk = self._disk(session, name, disk_index)
            disk.virtual_size = virtual_size
            m.updated_at = now

    # -- snapshots, syncs, cutover --------------------------------------------

    def snapshot_taken(self, name, snapshot_id):
        now = time.time()
        with self._tx() as session:
            m = self._mine(session, name)
            for s in m.snapshots:
                if s.snapshot_id == snapshot_id:
                    s.created_at, s.removed_at = now, None
                    break
            else:
                m.snapshots.append(models.Snapshot(
                    snapshot_id=snapshot_id, created_at=now))
            m.updated_at = now

    def snapshot_removed(self, name, snapshot_id):
        now = time.time()
        with self._tx() as session:
            m = self._mine(session, name)
            for s in m.snapshots:
                if s.snapshot_id == snapshot_id:
                    if s.removed_at is None:
                        s.removed_at = now
                    break
            else:
                raise api.NotFound('migration %s has no snapshot %s'
                                   % (name, snapshot_id))
            m.updated_at = now

    def sync_recorded(self, name, started_at, ended_at, layers_applied,
                      bytes_read, bytes_written, ok=True, error=None):
        with self._tx() as session:
            m = self._mine(session, name)
            m.syncs.append(models.Sync(
                started_at=started_at, ended_at=ended_at,
                layers_applied=layers_applied, bytes_read=bytes_read,
                bytes_written=bytes_written, ok=bool(ok), error=error))
            m.updated_at = time.time()

    def cutover_recorded(self, name, shutdown_at, completed_at,
                         top_layers=None, details=None, phases=None):
        downtime = (None if completed_at is None
                    else completed_at - shutdown_at)
        with self._tx() as session:
            m = self._mine(session, name)
            c = m.cutovers[-1] if m.cutovers else None
            if c is None or c.rolled_back_at is not None:
                c = models.Cutover()
                m.cutovers.append(c)
            c.shutdown_at = shutdown_at
            c.completed_at = completed_at
            c.downtime = downtime
            if top_layers is not None:
                c.top_layers = {str(k): v for k, v in top_layers.items()}
            if details is not None:
                check_not_secret(details, 'cutover details')
                merged = dict(c.details or {})
                merged.update(details)
                c.details = merged
            if phases is not None:
                c.phases = dict((str(k), float(v))
                                for k, v in phases.items())
            elif completed_at is None:
                c.phases = None     # not complete (again): none yet
            m.updated_at = time.time()

    def rollback_recorded(self, name, at=None):
        with self._tx() as session:
            m = self._mine(session, name)
            c = m.cutovers[-1] if m.cutovers else None
            if c is None or c.rolled_back_at is not None:
                raise api.NotFound('migration %s has no cutover to roll '
                                   'back' % name)
            c.rolled_back_at = time.time() if at is None else at
            m.updated_at = time.time()


def _cutover_dict(c):
    return {'shutdown_at': c.shutdown_at, 'completed_at': c.completed_at,
            'downtime': c.downtime,
            'top_layers': dict(c.top_layers or {}),
            'details': dict(c.details or {}),
            'phases': dict(c.phases) if c.phases is not None else None,
            'rolled_back_at': c.rolled_back_at}


def _open_cutover(m):
    """The last cutover unless it was rolled back."""
    if m.cutovers and m.cutovers[-1].rolled_back_at is None:
        return _cutover_dict(m.cutovers[-1])
    return None


def open_store(args=None, conf=None):
    """The :class:`SqlStore` at :func:`url_from` ``(args, conf)``."""
    return SqlStore(url_from(args, conf))
