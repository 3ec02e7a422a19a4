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

"""Where the migration state database is: the ``state_db_url`` option,
``--state-db``, the default SQLite file.

Apart from :mod:`.sql` so that registering the options (every command
does) imports no SQLAlchemy.
"""

import os

from any2kvm_os import lazyopts
from any2kvm_os import limits
from any2kvm_os import redact

GROUP = limits.GROUP


def _options():
    from oslo_config import cfg
    return [
        cfg.StrOpt('state_db_url', secret=True,
                   help='SQLAlchemy URL of the database holding the state '
                        'of warm migrations, e.g. mysql+pymysql://user:pw@'
                        'host/any2kvm or postgresql://... Default: the '
                        'SQLite file $XDG_DATA_HOME/any2kvm/state.db (else '
                        '~/.local/share/any2kvm/state.db). The --state-db '
                        'option (a URL without a password) and the '
                        'ANY2KVM_STATE_DB environment variable override '
                        'it.'),
    ]


#: ``OPTIONS`` (oslo.config options), made on first use: a command that
#: reads no configuration does not import oslo.config.
__getattr__ = lazyopts.module_getattr(globals(), _options)


def data_dir():
    """``$XDG_DATA_HOME/any2kvm`` (an absolute XDG_DATA_HOME only), else
    ``~/.local/share/any2kvm``."""
    base = os.environ.get('XDG_DATA_HOME', '')
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser('~'), '.local', 'share')
    return os.path.join(base, 'any2kvm')


def default_url():
    """The URL of the default SQLite file, ``<data_dir>/state.db``."""
    return 'sqlite:///' + os.path.join(data_dir(), 'state.db')


def add_arguments(parser):
    """Add ``--state-db URL`` to an argparse parser (or group)."""
    parser.add_argument(
        '--state-db', metavar='URL', dest='state_db',
        help='SQLAlchemy URL of the migration state database, without a '
             'password (default: $ANY2KVM_STATE_DB, else state_db_url in '
             '[any2kvm], else the SQLite file %s). A URL with a password '
             'goes in ANY2KVM_STATE_DB or state_db_url, never here.'
             % os.path.join('$XDG_DATA_HOME', 'any2kvm', 'state.db'))


def has_password(url):
    """Whether the URL carries a password (``user:PASSWORD@host``, a
    ``password=`` query parameter), as SQLAlchemy, which will use it,
    reads it; a URL it cannot read, as the patterns that hide passwords
    in messages do (:func:`any2kvm_os.redact.has_secret`)."""
    url = url or ''
    try:
        import sqlalchemy as sa
        parsed = sa.engine.make_url(url)
    except Exception:
        return redact.has_secret(url)
    return parsed.password is not None or any(
        redact.secret_query_key(k) for k in parsed.query) or \
        redact.has_secret(url)


def check_argv_url(url):
    """Refuse a ``--state-db`` URL with a password: the command line is
    readable by every user of the host (``ps``, /proc) and kept in shell
    histories.  Returns None, or the one-line reason."""
    if url and has_password(url):
        return ('--state-db: a URL with a password is refused on the '
                'command line (others can read it); put it in the '
                'ANY2KVM_STATE_DB environment variable or in state_db_url '
                'of [any2kvm] in the configuration file')
    return None


def url_from(args=None, conf=None):
    """The URL to use: ``--state-db`` in ``args``, else ``state_db_url``
    of ``conf`` (registered by :func:`any2kvm_os.api.register_opts`), else
    :func:`default_url`."""
    url = getattr(args, 'state_db', None)
    if not url and conf is not None:
        from oslo_config import cfg  # a conf: oslo.config is loaded
        try:
            url = conf[GROUP].state_db_url
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            url = None
    return url or default_url()
