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

"""A history of cutovers (``migration rollback``): ``cutovers``, one row
per migration, becomes ``cutover_runs``, a row per cutover with the top
layer of each disk, the destination's details and when it was rolled
back.  The rows of ``cutovers`` are kept.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'cutover_runs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('migration_id', sa.Integer(), nullable=False),
        sa.Column('shutdown_at', sa.Double(), nullable=False),
        sa.Column('completed_at', sa.Double(), nullable=True),
        sa.Column('downtime', sa.Double(), nullable=True),
        sa.Column('top_layers', sa.JSON(), nullable=True),
        sa.Column('details', sa.JSON(), nullable=True),
        sa.Column('rolled_back_at', sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ['migration_id'], ['migrations.id'], ondelete='CASCADE',
            name=op.f('fk_cutover_runs_migration_id_migrations')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_cutover_runs')))
    op.create_index(op.f('ix_cutover_runs_migration_id'), 'cutover_runs',
                    ['migration_id'])
    op.execute('INSERT INTO cutover_runs (migration_id, shutdown_at, '
               'completed_at, downtime) SELECT migration_id, shutdown_at, '
               'completed_at, downtime FROM cutovers')
    op.drop_table('cutovers')


def downgrade():
    op.create_table(
        'cutovers',
        sa.Column('migration_id', sa.Integer(), nullable=False),
        sa.Column('shutdown_at', sa.Double(), nullable=False),
        sa.Column('completed_at', sa.Double(), nullable=True),
        sa.Column('downtime', sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(
            ['migration_id'], ['migrations.id'], ondelete='CASCADE',
            name=op.f('fk_cutovers_migration_id_migrations')),
        sa.PrimaryKeyConstraint('migration_id', name=op.f('pk_cutovers')))
    # The last cutover of each migration; the history is lost.
    op.execute('INSERT INTO cutovers (migration_id, shutdown_at, '
               'completed_at, downtime) SELECT migration_id, shutdown_at, '
               'completed_at, downtime FROM cutover_runs WHERE id IN '
               '(SELECT MAX(id) FROM cutover_runs GROUP BY migration_id)')
    op.drop_index(op.f('ix_cutover_runs_migration_id'), 'cutover_runs')
    op.drop_table('cutover_runs')
