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

"""Where a cutover's downtime went: ``cutover_runs.phases`` (JSON,
seconds per phase: shutdown, apply, close, fix, finish, server; and
before_shutdown, which is not downtime), null for a cutover recorded
before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('cutover_runs') as batch:
        batch.add_column(sa.Column('phases', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('cutover_runs') as batch:
        batch.drop_column('phases')
