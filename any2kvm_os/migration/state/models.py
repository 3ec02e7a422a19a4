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

"""The tables of the migration state (:mod:`.sql`).

Times are UTC seconds since the epoch (double precision); sizes are
64-bit.  Every row of a migration goes with it (``ON DELETE CASCADE``, and
the same cascade in the ORM).  A schema change is a new revision under
``migrations/versions`` (``alembic revision --autogenerate`` compares these
models with a database at head).
"""

import sqlalchemy as sa
from sqlalchemy import orm

#: Names of constraints and indexes, so that a later revision can alter
#: them by name on every backend (SQLite's batch mode needs them).
NAMING = {
    'ix': 'ix_%(column_0_label)s',
    'uq': 'uq_%(table_name)s_%(column_0_name)s',
    'ck': 'ck_%(table_name)s_%(constraint_name)s',
    'fk': 'fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s',
    'pk': 'pk_%(table_name)s',
}


class Base(orm.DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)


def _owner():
    """The column that ties a row to its migration."""
    return orm.mapped_column(
        sa.ForeignKey('migrations.id', ondelete='CASCADE'), nullable=False,
        index=True)


_CHILDREN = dict(cascade='all, delete-orphan', passive_deletes=True)


class Migration(Base):
    __tablename__ = 'migrations'

    id = orm.mapped_column(sa.Integer, primary_key=True)
    name = orm.mapped_column(sa.String(255), nullable=False, unique=True)
    location = orm.mapped_column(sa.Text, nullable=False)
    target = orm.mapped_column(sa.String(64), nullable=False)
    target_options = orm.mapped_column(sa.JSON, nullable=False)
    status = orm.mapped_column(sa.String(32), nullable=False)
    error = orm.mapped_column(sa.Text)
    created_at = orm.mapped_column(sa.Double, nullable=False)
    updated_at = orm.mapped_column(sa.Double, nullable=False)
    #: The uuid of the migration's TaskFlow logbook (revision 0003).
    flow_logbook = orm.mapped_column(sa.String(64))
    #: What inspection found in the targets (revision 0004).
    guest = orm.mapped_column(sa.JSON)

    disks = orm.relationship('Disk', order_by='Disk.index',
                             back_populates='migration', **_CHILDREN)
    snapshots = orm.relationship('Snapshot', order_by='Snapshot.id',
                                 **_CHILDREN)
    syncs = orm.relationship('Sync', order_by='Sync.id', **_CHILDREN)
    cutovers = orm.relationship('Cutover', order_by='Cutover.id',
                                **_CHILDREN)
    holder = orm.relationship('Holder', uselist=False, **_CHILDREN)


class Disk(Base):
    __tablename__ = 'disks'
    __table_args__ = (sa.UniqueConstraint('migration_id', 'disk_index'),)

    id = orm.mapped_column(sa.Integer, primary_key=True)
    migration_id = _owner()
    index = orm.mapped_column('disk_index', sa.Integer, nullable=False)
    source_id = orm.mapped_column(sa.String(255))
    name = orm.mapped_column(sa.String(255))
    virtual_size = orm.mapped_column(sa.BigInteger)
    target_ref = orm.mapped_column(sa.Text)

    migration = orm.relationship('Migration', back_populates='disks')
    applied = orm.relationship('AppliedLayer', order_by='AppliedLayer.order',
                               **_CHILDREN)


class AppliedLayer(Base):
    """A layer applied onto a disk's target, or being applied
    (``partial``), in the order of application (``order``)."""

    __tablename__ = 'applied_layers'
    __table_args__ = (sa.UniqueConstraint('disk_id', 'layer_id'),)

    id = orm.mapped_column(sa.Integer, primary_key=True)
    disk_id = orm.mapped_column(
        sa.ForeignKey('disks.id', ondelete='CASCADE'), nullable=False,
        index=True)
    order = orm.mapped_column('position', sa.Integer, nullable=False)
    layer_id = orm.mapped_column(sa.String(255), nullable=False)
    fingerprint = orm.mapped_column(sa.String(255))
    name = orm.mapped_column(sa.String(255))
    started_at = orm.mapped_column(sa.Double, nullable=False)
    applied_at = orm.mapped_column(sa.Double)
    partial = orm.mapped_column(sa.Boolean, nullable=False)


class Snapshot(Base):
    __tablename__ = 'snapshots'
    __table_args__ = (sa.UniqueConstraint('migration_id', 'snapshot_id'),)

    id = orm.mapped_column(sa.Integer, primary_key=True)
    migration_id = _owner()
    snapshot_id = orm.mapped_column(sa.String(255), nullable=False)
    created_at = orm.mapped_column(sa.Double, nullable=False)
    removed_at = orm.mapped_column(sa.Double)


class Sync(Base):
    __tablename__ = 'syncs'

    id = orm.mapped_column(sa.Integer, primary_key=True)
    migration_id = _owner()
    started_at = orm.mapped_column(sa.Double, nullable=False)
    ended_at = orm.mapped_column(sa.Double)
    layers_applied = orm.mapped_column(sa.Integer, nullable=False)
    bytes_read = orm.mapped_column(sa.BigInteger, nullable=False)
    bytes_written = orm.mapped_column(sa.BigInteger, nullable=False)
    ok = orm.mapped_column(sa.Boolean, nullable=False)
    error = orm.mapped_column(sa.Text)


class Cutover(Base):
    """One cutover, in the order they happened: a rolled-back one
    (``rolled_back_at``) stays as history.  ``top_layers``: the layer id
    applied last on each disk (``{"0": id}``), the one the VM writes to
    again after a rollback; ``details``: what the destination reported
    (a created server...); ``phases``: where the downtime went, seconds
    per phase (revision 0006)."""

    __tablename__ = 'cutover_runs'

    id = orm.mapped_column(sa.Integer, primary_key=True)
    migration_id = _owner()
    shutdown_at = orm.mapped_column(sa.Double, nullable=False)
    completed_at = orm.mapped_column(sa.Double)
    downtime = orm.mapped_column(sa.Double)
    top_layers = orm.mapped_column(sa.JSON)
    details = orm.mapped_column(sa.JSON)
    rolled_back_at = orm.mapped_column(sa.Double)
    phases = orm.mapped_column(sa.JSON)


class Holder(Base):
    """The lease of the one command working on a migration."""

    __tablename__ = 'holders'

    migration_id = orm.mapped_column(
        sa.ForeignKey('migrations.id', ondelete='CASCADE'), primary_key=True)
    token = orm.mapped_column(sa.String(64), nullable=False)
    operation = orm.mapped_column(sa.String(64), nullable=False)
    pid = orm.mapped_column(sa.Integer, nullable=False)
    host = orm.mapped_column(sa.String(255), nullable=False)
    since = orm.mapped_column(sa.Double, nullable=False)
    expires = orm.mapped_column(sa.Double, nullable=False)
    #: The holder's process (``processes.mark``; revision 0007), null
    #: for a lease taken before.
    mark = orm.mapped_column(sa.String(255))
