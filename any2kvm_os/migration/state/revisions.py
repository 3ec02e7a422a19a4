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

"""Which alembic revision a database and a set of scripts are at,
without alembic: every command opens the state database, and importing
alembic (with mako) and loading its scripts cost more than the check
(:func:`.sql.upgrade`, :func:`.flowdb.is_current`).  When these cannot
tell, the callers ask alembic as before."""

import os
import re

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc


_REVISION_LINE = re.compile(
    r"""^(down_revision|revision)\s*=\s*(?:'(\w+)'|"(\w+)"|(None))\s*$""",
    re.M)


def scanned_head(directory):
    """The head revision of the alembic scripts in ``directory``, read
    from their ``revision = '...'`` and ``down_revision = ...`` lines: a
    few small file reads, where alembic's own answer
    (:func:`.sql.head_revision`) imports every script.  None when the
    scripts are not one line of history written that way (a merge, a
    branch, a line not understood): the caller then asks alembic."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    revisions, parents = set(), set()
    for name in names:
        if not name.endswith('.py') or name.startswith('_'):
            continue
        try:
            with open(os.path.join(directory, name), encoding='utf-8') as f:
                text = f.read()
        except (OSError, ValueError):
            return None
        found = {}
        for m in _REVISION_LINE.finditer(text):
            if m.group(1) in found:
                return None
            found[m.group(1)] = m.group(2) or m.group(3)   # None: None
        if 'revision' not in found or 'down_revision' not in found or \
                found['revision'] is None or found['revision'] in revisions:
            return None
        revisions.add(found['revision'])
        if found['down_revision'] is not None:
            parents.add(found['down_revision'])
    heads = revisions - parents
    if len(heads) != 1 or not parents <= revisions:
        return None
    return heads.pop()


def stored(engine, table):
    """The ``version_num`` rows of the alembic version table ``table``,
    by a plain query (no alembic import); None when it cannot be read
    (no such table yet, say)."""
    t = sa.table(table, sa.column('version_num'))
    try:
        with engine.connect() as connection:
            return sorted(r[0] for r in connection.execute(
                sa.select(t.c.version_num)))
    except sa_exc.DBAPIError:
        return None
