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

"""The schema migrations of the state database (alembic).

:func:`any2kvm_os.migration.state.sql.upgrade` applies them whenever a
store is opened.  A schema change is one new revision in ``versions/``::

    alembic -x url=sqlite:////tmp/head.db \\
        -c /dev/null revision --autogenerate -m 'what changes'

run from this directory with ``script_location`` set to it (see
``env.py``), against a database already at head.
"""
