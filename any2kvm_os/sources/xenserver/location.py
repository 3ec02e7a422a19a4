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

"""``xenserver://USER@HOST[:PORT]/VM``: where a VM lives on a XenServer host.

* ``USER`` is the SSH user (optional: ``None`` lets the SSH layer choose,
  usually ``root``); a password in the location (``USER:PASS@``) is
  refused, it would end up in shell histories and process lists.
* ``HOST`` is a host name, an IPv4 address or an IPv6 address in brackets
  (``[fd00::1]``; zone ids are not accepted).
* ``PORT`` is the SSH port, 22 when left out.
* ``VM`` is the VM's name-label or uuid, percent-decoded as UTF-8
  (RFC 3986): a name with spaces or shell metacharacters may be written
  as is when quoted for the shell, or percent-encoded; ``/``, ``?``,
  ``#`` and ``%`` inside a name must be written ``%2F``, ``%3F``, ``%23``,
  ``%25``.  Control characters are refused, encoded or not.
"""

import collections
import ipaddress
import re
import urllib.parse

from any2kvm_os import redact
from any2kvm_os.sources.xenserver import errors

SCHEME = 'xenserver'
DEFAULT_PORT = 22
#: Longest name-label accepted (bytes of UTF-8, after decoding).
MAX_NAME_BYTES = 1024
MAX_LOCATION = 4096

UUID_RE = re.compile(r'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-'
                     r'[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')
_LABEL = r'[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
HOSTNAME_RE = re.compile(r'^%s(?:\.%s)*\.?$' % (_LABEL, _LABEL))
USER_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$')
_ESCAPE_RE = re.compile(r'%(?![0-9A-Fa-f]{2})')
_CONTROL_RE = re.compile(r'[\x00-\x1f\x7f]')


def is_uuid(text):
    return bool(UUID_RE.match(text or ''))


class Location(collections.namedtuple('Location', 'user host port vm')):
    """A parsed location: ``user`` (or None), ``host`` (brackets removed
    from an IPv6 address), ``port`` (int) and ``vm`` (decoded)."""

    @property
    def vm_is_uuid(self):
        """Whether ``vm`` is written like a uuid (it may still be a
        name-label: discovery looks for both)."""
        return is_uuid(self.vm)

    @property
    def host_for_display(self):
        host = '[%s]' % self.host if ':' in self.host else self.host
        if self.port != DEFAULT_PORT:
            host = '%s:%d' % (host, self.port)
        return host

    def __str__(self):
        user = (urllib.parse.quote(self.user, safe='') + '@'
                if self.user else '')
        return '%s://%s%s/%s' % (SCHEME, user, self.host_for_display,
                                 urllib.parse.quote(self.vm, safe=''))


def _bad(text, reason):
    # A password written into the location is refused, never repeated.
    shown = redact.location(text)
    shown = shown if len(shown) <= 200 else shown[:200] + '...'
    return errors.BadLocation(location=repr(shown), reason=reason)


def _decode(part, whole):
    """Percent-decode ``part`` of the location ``whole`` as UTF-8."""
    if _ESCAPE_RE.search(part):
        raise _bad(whole, 'a % not followed by two hex digits (write a '
                   'literal % as %25)')
    try:
        return urllib.parse.unquote_to_bytes(part).decode('utf-8')
    except UnicodeDecodeError:
        raise _bad(whole, 'percent-escapes that are not UTF-8')


def _host_port(hostport, whole):
    if hostport.startswith('['):
        end = hostport.find(']')
        if end < 0:
            raise _bad(whole, 'an IPv6 address without its closing ]')
        host, rest = hostport[1:end], hostport[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(whole, '[%s] is not an IPv6 address' % host)
        if rest and not rest.startswith(':'):
            raise _bad(whole, 'unexpected %r after the IPv6 address' % rest)
        port = rest[1:] if rest else None
    else:
        host, sep, port = hostport.partition(':')
        if not sep:
            port = None
        if ':' in (port or ''):
            raise _bad(whole, 'write an IPv6 address in brackets, as '
                       '[%s]' % hostport)
        if not host:
            raise _bad(whole, 'no host')
        if len(host) > 253 or not HOSTNAME_RE.match(host):
            raise _bad(whole, '%r is not a host name or IPv4 address' % host)
    if port is None:
        return host, DEFAULT_PORT
    if not re.match(r'^[0-9]{1,5}$', port) or not 0 < int(port) < 65536:
        raise _bad(whole, 'port %r is not a number from 1 to 65535' % port)
    return host, int(port)


def parse(text):
    """The :class:`Location` of ``xenserver://USER@HOST[:PORT]/VM``;
    :class:`~errors.BadLocation` (one line, saying what is wrong)
    otherwise."""
    if not isinstance(text, str):
        raise errors.BadLocation(location=repr(text), reason='not text')
    if len(text) > MAX_LOCATION:
        raise _bad(text, 'longer than %d characters' % MAX_LOCATION)
    if _CONTROL_RE.search(text):
        raise _bad(text, 'control characters (newline, tab ...) are not '
                   'allowed; percent-encoding does not make them so')
    scheme, sep, rest = text.partition('://')
    if not sep or scheme.lower() != SCHEME:
        raise _bad(text, 'expected %s://USER@HOST[:PORT]/VM' % SCHEME)
    authority, slash, vm_part = rest.partition('/')
    if not slash or not vm_part:
        raise _bad(text, 'no VM: expected %s://USER@HOST[:PORT]/VM (a '
                   'name-label or a uuid)' % SCHEME)
    for char, escape in (('/', '%2F'), ('?', '%3F'), ('#', '%23')):
        if char in vm_part:
            raise _bad(text, 'write %s in a VM name as %s' % (char, escape))
    userinfo, at, hostport = authority.rpartition('@')
    user = None
    if at:
        if ':' in userinfo:
            raise _bad(text, 'a password does not belong in the location '
                       '(use an SSH key)')
        user = _decode(userinfo, text)
        if ':' in user:
            raise _bad(text, 'a password does not belong in the location '
                       '(use an SSH key)')
        if not USER_RE.match(user):
            raise _bad(text, '%r is not a user name' % user)
    host, port = _host_port(hostport, text)
    vm = _decode(vm_part, text)
    if _CONTROL_RE.search(vm):
        raise _bad(text, 'the VM name holds control characters')
    if not vm.strip():
        raise _bad(text, 'the VM name is empty')
    if len(vm.encode('utf-8')) > MAX_NAME_BYTES:
        raise _bad(text, 'the VM name is longer than %d bytes'
                   % MAX_NAME_BYTES)
    return Location(user, host, port, vm)
