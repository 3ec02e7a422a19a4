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

#: Query parameters of a URL that carry a password (libpq, PyMySQL).
SECRET_QUERY = ('password', 'passwd', 'pass', 'sslpassword')

#: ``user:PASSWORD@`` in a URL's authority, with or without its scheme
#: (a typo: ``mysql+pymysql//u:pw@h``): the password runs to the last
#: ``@`` before a space (SQLAlchemy reads ``/`` as part of it, and a
#: password with an unescaped ``@`` must not leave its tail shown).
_URL_USERINFO = re.compile(r'(?P<user>://[^\s/:@\'"]*):'
                           r'(?P<pw>[^\s\'"]*)@')
_USERINFO = re.compile(r'(?P<user>(?:^|(?<=[\s\'"(=])|(?<=[^/]//))'
                       r'[^\s/:@\'"()]*):'
                       r'(?P<pw>(?!\*\*\*@)(?!//)[^\s\'"]*)@')
_QUERY = re.compile(r'(?P<key>[?&;](?:%s)=)[^&;\s\'"]*' % '|'.join(
    SECRET_QUERY), re.IGNORECASE)
#: ``%3A`` (an escaped ``:``) in a location's user part: decoded, it
#: would be a password too.
_ESCAPED_COLON = re.compile(r'(?P<user>(?:^|(?<=[\s\'"(=])|(?<=[^/]//))'
                            r'[^\s/:@\'"()]*?)'
                            r'%3[aA][^\s@\'"]*@')
MASK = '***'


def text(value):
    """``value`` (any text: a URL, a location, a message naming them)
    with every password written into it shown as ``***``."""
    value = str(value)
    value = _URL_USERINFO.sub(lambda m: '%s:%s@' % (m.group('user'), MASK),
                              value)
    value = _USERINFO.sub(lambda m: '%s:%s@' % (m.group('user'), MASK),
                          value)
    value = _ESCAPED_COLON.sub(lambda m: '%s:%s@' % (m.group('user'), MASK),
                               value)
    return _QUERY.sub(lambda m: m.group('key') + MASK, value)


def has_secret(value):
    """Whether ``value`` holds a password that :func:`text` would hide."""
    return text(value) != str(value)


#: Variables of the command's environment that hold secrets of its own,
#: which no program it starts needs: OpenStack's (keystoneauth's
#: ``OS_*``), the state database's URL, the database clients'.
SECRET_ENV = ('OS_PASSWORD', 'OS_TOKEN', 'OS_APPLICATION_CREDENTIAL_SECRET',
              'ANY2KVM_STATE_DB', 'PGPASSWORD', 'MYSQL_PWD')
_SECRET_ENV_RE = re.compile(r'^OS_\w*(PASSWORD|SECRET|TOKEN)$')


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
