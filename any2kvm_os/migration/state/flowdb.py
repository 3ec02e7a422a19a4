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

"""TaskFlow's persistence in the state database.

TaskFlow keeps its logbooks, flow details and atom details in its own
tables (``logbooks``, ``flowdetails``, ``atomdetails``), made by TaskFlow
itself: on SQLite by creating them from its table definitions, on MySQL
and PostgreSQL by its own alembic migrations, which record their revision
in alembic's default ``alembic_version`` table.  Our schema keeps its
revision elsewhere (:data:`.sql.VERSION_TABLE`), so the two never meet.

Importing TaskFlow imports eventlet when it is installed (oslo.service
brings it), and eventlet warns that it is deprecated: TaskFlow is
imported with eventlet hidden and warnings silenced
(:func:`any2kvm_os.migration.taskflow_import`).
"""

import contextlib
import importlib.util
import os
import sys

import sqlalchemy as sa

from any2kvm_os import migration
from any2kvm_os.migration.state import revisions

#: TaskFlow's module that runs its alembic migrations: it imports alembic
#: (0.1 to 0.3 s with mako) at import time, and runs only when the
#: tables are not current (:func:`is_current`; never on SQLite).
_TF_MIGRATION = 'taskflow.persistence.backends.sqlalchemy.migration'


def _lazy(name):
    """Import module ``name`` as the standard library's
    :class:`importlib.util.LazyLoader` does: its code runs at the first
    use of one of its attributes (unless it is imported already)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return None
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    # Bound in its package as an import binds it, so that ``from
    # package import module`` finds it there without the import
    # machinery looking into it (which would load it).
    parent, _, child = name.rpartition('.')
    setattr(sys.modules[parent], child, module)
    return module


with migration.taskflow_import():
    _lazy(_TF_MIGRATION)
    from taskflow import exceptions as tf_exc
    from taskflow.persistence.backends import impl_sqlalchemy

NotFound = tf_exc.NotFound


class _Backend(impl_sqlalchemy.SQLAlchemyBackend):
    """TaskFlow's backend with one connection object for every save.

    TaskFlow's storage asks for a connection at each save (several per
    task), and each new one builds its own table objects, so that
    SQLAlchemy compiles every statement again: most of the cost of a
    task's record.  Its connections keep nothing else (``close`` does
    nothing), and a command's flow runs in one thread."""

    _connection = None
    #: Names of the atoms whose writes are held (:meth:`holding`).
    _quiet = frozenset()
    _held = None

    def get_connection(self):
        if self._connection is None:
            self._connection = super(_Backend, self).get_connection()
        if self._quiet:
            return _Holding(self)
        return self._connection

    @contextlib.contextmanager
    def holding(self, names):
        """Within the block, the records of the atoms ``names`` (their
        states and results) are held in memory, the latest of each, and
        written with the next record of another atom, or at the end of
        the block, whatever ends it (a cutover's tasks inside the
        downtime: their small transactions are no downtime)."""
        self._quiet, self._held = frozenset(names), {}
        try:
            yield
        finally:
            self._quiet = frozenset()
            self.flush_held()

    def flush_held(self):
        held, self._held = self._held or {}, {}
        for ad in held.values():
            self._connection.update_atom_details(ad)

    def close(self):
        self._connection = None
        super(_Backend, self).close()


class _Holding(object):
    """The backend's connection while records are held
    (:meth:`_Backend.holding`)."""

    def __init__(self, backend):
        self._backend = backend
        self._conn = backend._connection

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def close(self):
        pass

    def update_atom_details(self, ad):
        b = self._backend
        if ad.name in b._quiet:
            b._held[ad.uuid] = ad.copy()
            return ad
        b.flush_held()
        return self._conn.update_atom_details(ad)

    def update_flow_details(self, fd, *args, **kwargs):
        self._backend.flush_held()
        return self._conn.update_flow_details(fd, *args, **kwargs)


#: Where TaskFlow's alembic migrations keep their revision (alembic's
#: default table; ours is elsewhere, :data:`.sql.VERSION_TABLE`).
TASKFLOW_VERSION_TABLE = 'alembic_version'


def _versions_dir():
    """Where TaskFlow's alembic scripts are."""
    return os.path.join(os.path.dirname(os.path.abspath(
        impl_sqlalchemy.__file__)), 'sqlalchemy', 'alembic', 'versions')


def is_current(engine):
    """Whether TaskFlow's tables are known to be at the head of its
    migrations without running them: on MySQL and PostgreSQL, its
    version table (alembic's ``alembic_version``) holds exactly the head
    revision of its scripts (:func:`.revisions.scanned_head`).  On
    SQLite TaskFlow makes missing tables and migrates nothing: current
    when its three tables are there (its "upgrade" would be a writer's
    transaction that makes nothing, and a reader, ``show``, would wait
    for another command's lock, then fail)."""
    if engine.dialect.name == 'sqlite':
        names = set(sa.inspect(engine).get_table_names())
        return {'logbooks', 'flowdetails', 'atomdetails'} <= names
    head = revisions.scanned_head(_versions_dir())
    return head is not None and revisions.stored(
        engine, TASKFLOW_VERSION_TABLE) == [head]


def backend(engine, url_text):
    """TaskFlow's SQLAlchemy backend on ``engine`` (ours: its connection
    settings, and on SQLite writers that take the lock first), its
    tables made or upgraded (nothing run when :func:`is_current`: its
    migrations cost 0.2 to 0.4 s of every command on a database
    server).  ``url_text``: the URL without password (TaskFlow keeps it
    in its configuration)."""
    b = _Backend({'connection': url_text}, engine=engine)
    if not is_current(engine):
        with contextlib.closing(b.get_connection()) as conn:
            conn.upgrade()
    return b


def destroy(b, book_uuid):
    """Delete a logbook and its flow and atom details (gone already:
    nothing to do)."""
    with contextlib.closing(b.get_connection()) as conn:
        try:
            conn.destroy_logbook(book_uuid)
        except tf_exc.NotFound:
            pass
