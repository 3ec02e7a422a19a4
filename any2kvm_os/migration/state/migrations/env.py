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

"""Alembic's environment for the state database.

Run by :func:`any2kvm_os.migration.state.sql.upgrade` with an open
connection in ``config.attributes['connection']``; by hand, the URL comes
from ``-x url=...`` or the ``sqlalchemy.url`` main option.
"""

from alembic import context
import sqlalchemy as sa

from any2kvm_os.migration.state import models
from any2kvm_os.migration.state import sql

config = context.config
target_metadata = models.Base.metadata
#: Where our revision is kept (not alembic's default: see
#: ``sql.VERSION_TABLE``); the tests make databases of the old layout
#: with ``config.attributes['version_table']``.
VERSION_TABLE = config.attributes.get('version_table', sql.VERSION_TABLE)


def _configure_and_run(connection):
    context.configure(
        connection=connection, target_metadata=target_metadata,
        version_table=VERSION_TABLE, include_object=sql.include_object,
        # SQLite alters tables by copying them (batch mode).
        render_as_batch=connection.dialect.name == 'sqlite')
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline():
    context.configure(url=_url(), target_metadata=target_metadata,
                      version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _url():
    return (context.get_x_argument(as_dictionary=True).get('url') or
            config.get_main_option('sqlalchemy.url'))


def run_migrations_online():
    connection = config.attributes.get('connection')
    if connection is not None:
        _configure_and_run(connection)
        return
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        _configure_and_run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
