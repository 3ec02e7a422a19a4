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

"""MySQL and MariaDB: every table in utf8mb4, compared byte by byte
(``utf8mb4_bin``).  A server's default character set may be latin1
(MariaDB's own default), which cannot hold a VM name in Cyrillic or an
emoji; its default collations ignore case, where SQLite and PostgreSQL
tell ``vm1`` from ``VM1``.  A new database is made so from the start
(:func:`any2kvm_os.migration.state.sql.upgrade` sets the database's
default first, for TaskFlow's tables too); this converts the tables of
a database made before.  Nothing to do on the other databases.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

CHARSET = 'CHARACTER SET utf8mb4 COLLATE utf8mb4_bin'
#: Ours.  TaskFlow's tables (``logbooks``...) stay as TaskFlow's own
#: migration makes them, in any database: ``CHARACTER SET utf8``
#: (utf8mb3), which is enough, since they hold ASCII only (our names,
#: uuids, states, and JSON with non-ASCII characters escaped; see
#: doc/source/admin/state-db.rst); converting them would mean dropping
#: their foreign keys, string columns MariaDB refuses to convert.
TABLES = ('migrations', 'disks', 'applied_layers', 'snapshots', 'syncs',
          'cutover_runs', 'holders')
#: Our TEXT columns (and whether they may be NULL): converting makes them
#: MEDIUMTEXT, room for the same number of 4-byte characters; they go
#: back to TEXT, the type of the model, as a new database has them.
TEXT_COLUMNS = {'migrations': [('location', False), ('error', True)],
                'disks': [('target_ref', True)],
                'syncs': [('error', True)]}


def upgrade():
    bind = op.get_bind()
    if bind.dialect.name not in ('mysql', 'mariadb'):
        return
    op.execute('ALTER DATABASE %s' % CHARSET)
    collations = dict(bind.execute(sa.text(
        'SELECT table_name, table_collation FROM information_schema.tables '
        'WHERE table_schema = DATABASE()')).all())
    for table in TABLES:
        if collations.get(table, 'utf8mb4_bin') == 'utf8mb4_bin':
            continue  # absent, or made so
        op.execute('ALTER TABLE %s CONVERT TO %s' % (table, CHARSET))
        for column, nullable in TEXT_COLUMNS.get(table, ()):
            op.execute('ALTER TABLE %s MODIFY %s TEXT %s %s' % (
                table, column, CHARSET, 'NULL' if nullable else 'NOT NULL'))


def downgrade():
    pass  # utf8mb4 holds whatever the tables held before
