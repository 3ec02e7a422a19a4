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

"""Passwords: where they may come from, and keeping them out of logs.

A password comes only from an environment variable the user names
(``--password-env NAME``) or from a prompt on a terminal (getpass, and
only when standard input is one).  It is never an argument, never logged
and never written: a :class:`Secret` does not show it in ``repr`` or
``str``, and while one is alive :data:`REDACT` (a logging filter the
connection puts on every logger paramiko logs to for it) replaces it in
any record before a handler sees it.
"""

import getpass
import logging
import os
import sys
import threading

from any2kvm_os import exception


class Secret(object):
    """A password held in memory (to log in again after a lost
    connection); shown as ``***``."""

    __slots__ = ('_value', '__weakref__')

    def __init__(self, value):
        self._value = value

    def reveal(self):
        return self._value

    def __repr__(self):
        return '<Secret ***>'

    __str__ = __repr__


class RedactFilter(logging.Filter):
    """Replaces every registered password in log records by ``***``."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._secrets = {}

    def add(self, secret):
        with self._lock:
            self._secrets[id(secret)] = secret

    def discard(self, secret):
        with self._lock:
            self._secrets.pop(id(secret), None)

    def filter(self, record):
        with self._lock:
            values = [s.reveal() for s in self._secrets.values()
                      if s.reveal()]
        if not values:
            return True
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        cleaned = text
        for value in values:
            cleaned = cleaned.replace(value, '***')
        if cleaned != text:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(
                record.exc_info)
        if record.exc_text:
            cleaned = record.exc_text
            for value in values:
                cleaned = cleaned.replace(value, '***')
            if cleaned != record.exc_text:
                # The formatted traceback, redacted, in place of the
                # exception (which a handler would format again).
                record.exc_info = None
                record.exc_text = cleaned
        return True


#: The one filter of the process.
REDACT = RedactFilter()


def install_filter(logger_names, log_filter=REDACT):
    """Put ``log_filter`` (:data:`REDACT`) on the loggers named
    (idempotent)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if log_filter not in logger.filters:
            logger.addFilter(log_filter)


def from_env(label, name, environ=None):
    """The password in environment variable ``name``, as a
    :class:`Secret`; a clear error if it is not set."""
    environ = os.environ if environ is None else environ
    value = environ.get(name)
    if not value:
        raise exception.SshAuthError(
            host=label, reason='--password-env %s: that environment '
            'variable is not set (or empty)' % name)
    return Secret(value)


def prompt(label, stdin=None):
    """Ask for the password of ``label`` on the terminal; None when
    standard input is not a terminal (nothing is asked then)."""
    stdin = sys.stdin if stdin is None else stdin
    try:
        interactive = stdin is not None and stdin.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return None
    return Secret(getpass.getpass('%s password: ' % label))
