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

"""Which process holds a migration: ``holders.mark`` (its pid, boot id,
start time and machine tag: ``processes.mark``), so that a holder of this
host is judged by its process (a stopped one still holds; a pid given to
another process since does not), not by its lease's expiry; null for a
lease taken before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('holders') as batch:
        batch.add_column(sa.Column('mark', sa.String(255), nullable=True))


def downgrade():
    with op.batch_alter_table('holders') as batch:
        batch.drop_column('mark')
