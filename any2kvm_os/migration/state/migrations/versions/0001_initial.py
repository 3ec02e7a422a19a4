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

"""The initial schema: migrations, their disks and applied layers,
snapshots, syncs, cutover and holder.

Revision ID: 0001
Revises: None
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def _id():
    return sa.Column('id', sa.Integer(), nullable=False)


def _owner(table):
    """The column tying a row to its migration, and its foreign key."""
    return [
        sa.Column('migration_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ['migration_id'], ['migrations.id'], ondelete='CASCADE',
            name=op.f('fk_%s_migration_id_migrations' % table)),
    ]


def _time(name, nullable=False):
    return sa.Column(name, sa.Double(), nullable=nullable)


def _pk(table, *columns):
    return sa.PrimaryKeyConstraint(*columns, name=op.f('pk_%s' % table))


def _index(table, column):
    op.create_index(op.f('ix_%s_%s' % (table, column)), table, [column])


def upgrade():
    op.create_table(
        'migrations',
        _id(),
        sa.Column('name', sa.String(255), nullable=False),
        sa.Column('location', sa.Text(), nullable=False),
        sa.Column('target', sa.String(64), nullable=False),
        sa.Column('target_options', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(32), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        _time('created_at'),
        _time('updated_at'),
        _pk('migrations', 'id'),
        sa.UniqueConstraint('name', name=op.f('uq_migrations_name')))
    op.create_table(
        'cutovers',
        *_owner('cutovers'),
        _time('shutdown_at'),
        _time('completed_at', nullable=True),
        sa.Column('downtime', sa.Double(), nullable=True),
        _pk('cutovers', 'migration_id'))
    op.create_table(
        'disks',
        _id(),
        *_owner('disks'),
        sa.Column('disk_index', sa.Integer(), nullable=False),
        sa.Column('source_id', sa.String(255), nullable=True),
        sa.Column('name', sa.String(255), nullable=True),
        sa.Column('virtual_size', sa.BigInteger(), nullable=True),
        sa.Column('target_ref', sa.Text(), nullable=True),
        _pk('disks', 'id'),
        sa.UniqueConstraint('migration_id', 'disk_index',
                            name=op.f('uq_disks_migration_id')))
    _index('disks', 'migration_id')
    op.create_table(
        'holders',
        *_owner('holders'),
        sa.Column('token', sa.String(64), nullable=False),
        sa.Column('operation', sa.String(64), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(255), nullable=False),
        _time('since'),
        _time('expires'),
        _pk('holders', 'migration_id'))
    op.create_table(
        'snapshots',
        _id(),
        *_owner('snapshots'),
        sa.Column('snapshot_id', sa.String(255), nullable=False),
        _time('created_at'),
        _time('removed_at', nullable=True),
        _pk('snapshots', 'id'),
        sa.UniqueConstraint('migration_id', 'snapshot_id',
                            name=op.f('uq_snapshots_migration_id')))
    _index('snapshots', 'migration_id')
    op.create_table(
        'syncs',
        _id(),
        *_owner('syncs'),
        _time('started_at'),
        _time('ended_at', nullable=True),
        sa.Column('layers_applied', sa.Integer(), nullable=False),
        sa.Column('bytes_read', sa.BigInteger(), nullable=False),
        sa.Column('bytes_written', sa.BigInteger(), nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        _pk('syncs', 'id'))
    _index('syncs', 'migration_id')
    op.create_table(
        'applied_layers',
        _id(),
        sa.Column('disk_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('layer_id', sa.String(255), nullable=False),
        sa.Column('fingerprint', sa.String(255), nullable=True),
        sa.Column('name', sa.String(255), nullable=True),
        _time('started_at'),
        _time('applied_at', nullable=True),
        sa.Column('partial', sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ['disk_id'], ['disks.id'], ondelete='CASCADE',
            name=op.f('fk_applied_layers_disk_id_disks')),
        _pk('applied_layers', 'id'),
        sa.UniqueConstraint('disk_id', 'layer_id',
                            name=op.f('uq_applied_layers_disk_id')))
    _index('applied_layers', 'disk_id')


def downgrade():
    for table in ('applied_layers', 'syncs', 'snapshots', 'holders',
                  'disks', 'cutovers', 'migrations'):
        op.drop_table(table)
