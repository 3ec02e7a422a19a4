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

"""Secrets kept out of what any2kvm shows: messages, logs, the state
database.  One home for the patterns of a password written into a URL or
a location (``scheme://user:PASSWORD@host``, ``user:PASSWORD@host``,
``?password=``), and for the environment of the programs any2kvm
starts."""

import os
import re
import urllib.parse

#: Query parameters of a URL that carry a password (libpq, PyMySQL).
SECRET_QUERY = ('password', 'passwd', 'pass', 'sslpassword')

#: ``?key=value`` (or ``&``, ``;``) of a URL: the key at most 64
#: characters, so that each match costs no more than what it consumes.
_QUERY = re.compile(r'(?P<sep>[?&;])(?P<key>[^=&;\s?]{1,64})='
                    r'(?P<value>[^&;\s]*)')
_SPACE = re.compile(r'(\s+)')
MASK = '***'


def secret_query_key(key):
    """Whether a URL's query ``key`` carries a password (percent-encoded
    or not, in any case: as SQLAlchemy and the drivers read it)."""
    return urllib.parse.unquote(key).strip().lower() in SECRET_QUERY


def _query(match):
    if not secret_query_key(match.group('key')):
        return match.group(0)
    return '%s%s=%s' % (match.group('sep'), match.group('key'), MASK)


def userinfo(token):
    """(start, end) of the password in ``token`` (text without spaces)
    written as ``[scheme://]user:PASSWORD@host``, else None.  The
    password runs to the token's last ``@`` (SQLAlchemy reads ``/`` as
    part of it, and one with an unescaped ``@`` must not leave its tail
    shown); the user may hold an ``@`` (``admin@server``, as Azure's
    databases name users) but no ``/``; ``%3A`` is an escaped ``:``."""
    at = token.rfind('@')
    if at < 0:
        return None
    head = token[:at]
    start = head.find('://')
    if start >= 0:
        start += 3
    else:
        # A typo (mysql+pymysql//u:pw@h) or no scheme at all.
        start = head.find('//')
        start = start + 2 if start >= 0 else 0
    colon = head.find(':', start)
    escaped = head.lower().find('%3a', start)
    ends = [i for i in (colon, escaped) if i >= 0]
    if not ends:
        return None
    colon = min(ends)
    if '/' in head[start:colon]:
        # A path ("sqlite:////srv/a:b@c.db"), not a user.
        return None
    return colon + (1 if colon != escaped else 3), at


def _token(token):
    where = userinfo(token) if '@' in token else None
    if where is not None:
        token = token[:where[0]] + MASK + token[where[1]:]
    if '=' in token:
        token = _QUERY.sub(_query, token)
    return token


def text(value):
    """``value`` (any text: a URL, a location, a message naming them)
    with every password written into it shown as ``***``: each word
    (between spaces) on its own, in time linear in its length (the text
    may come from a guest or a hypervisor).  A password holding a space
    is beyond it: where the text is known to hold one, the caller shows
    none of it (:func:`location`)."""
    value = str(value)
    if '@' not in value and '=' not in value:
        return value
    return ''.join(_token(part) if part and not part.isspace() else part
                   for part in _SPACE.split(value))


def has_secret(value):
    """Whether ``value`` holds a password that :func:`text` would hide."""
    return text(value) != str(value)


def location(value):
    """``scheme://USER:PASSWORD@rest`` shown as ``scheme://***@rest``,
    the whole of the user part gone, spaces and quotes in the password
    included (a text known to be one location); else :func:`text`."""
    value = str(value)
    scheme, sep, rest = value.partition('://')
    at = rest.rfind('@', 0, len(rest.split('/', 1)[0]) + 1
                    if '/' in rest else len(rest))
    if sep and at >= 0:
        user = urllib.parse.unquote(rest[:at])
        if ':' in user:
            return '%s://%s@%s' % (scheme, MASK, text(rest[at + 1:]))
    return text(value)


#: Variables of the command's environment that hold secrets of its own,
#: which no program it starts needs: OpenStack's (keystoneauth's
#: ``OS_*``), the state database's URL, the database clients'.
SECRET_ENV = ('OS_PASSWORD', 'OS_TOKEN', 'OS_APPLICATION_CREDENTIAL_SECRET',
              'ANY2KVM_STATE_DB', 'PGPASSWORD', 'MYSQL_PWD',
              # oslo.config's environment form of [any2kvm] state_db_url
              'OS_ANY2KVM__STATE_DB_URL')
_SECRET_ENV_RE = re.compile(r'^OS_\w*(PASSWORD|SECRET|TOKEN|PASSCODE)$')


#: Variables this process was told hold a secret (:func:`secret_env`).
_MORE = set()


def secret_env(name):
    """Note that the variable ``name`` holds a secret (the SSH password's
    ``--password-env``): :func:`child_environ` leaves it out."""
    if name:
        _MORE.add(name)


def child_environ(*more, base=None):
    """The environment for a program any2kvm starts: the command's
    (``base``, else ``os.environ``) without :data:`SECRET_ENV`, other
    ``OS_*`` secrets, the variables of :func:`secret_env` and those
    named in ``more``."""
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name in SECRET_ENV or name in more or name in _MORE or \
                _SECRET_ENV_RE.match(name):
            del env[name]
    return env
