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

"""Host key verification: known_hosts or pinned fingerprints, never
trust on first use.

:func:`verify` decides on the key a host offered.  It accepts a key that
matches a pinned fingerprint, or (without pins) a key listed for the
host in an OpenSSH known_hosts file: plain or hashed (``|1|salt|hash``)
host names, ``[host]:port`` for other ports than 22, patterns with ``*``,
``?`` and ``!`` negation, ``@revoked`` keys refused.  Anything else is a
:class:`~any2kvm_os.exception.HostKeyError` on one line that shows the
fingerprint offered and how to pin it.
"""

import base64
import hashlib
import logging
import re

import paramiko
import paramiko.hostkeys

from any2kvm_os import exception

LOG = logging.getLogger(__name__)

# The host key algorithms of a known_hosts key type, preferred first.
_ALGORITHMS = {
    'ssh-rsa': ('rsa-sha2-512', 'rsa-sha2-256'),
}


def fingerprint(key):
    """``SHA256:<base64>`` of a paramiko key, as ``ssh-keygen -l`` prints
    it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return 'SHA256:' + base64.b64encode(digest).decode('ascii').rstrip('=')


def describe(key):
    """``<type> SHA256:<base64>``."""
    return '%s %s' % (key.get_name(), fingerprint(key))


def _glob(pattern):
    """OpenSSH's host patterns: ``*`` and ``?``, nothing else special
    (``[host]:port`` is literal)."""
    return re.compile('^%s$' % ''.join(
        '.*' if c == '*' else '.' if c == '?' else re.escape(c)
        for c in pattern.lower()))


def _matches(name, patterns):
    """Whether ``name`` matches a known_hosts host field (already split
    on commas): hashed names, patterns, negations."""
    matched = False
    for pattern in patterns:
        if pattern.startswith('|1|'):
            try:
                hashed = paramiko.HostKeys.hash_host(name, pattern)
            except Exception:  # a corrupt salt: not this host
                continue
            if hashed == pattern:
                matched = True
            continue
        negated = pattern.startswith('!')
        if negated:
            pattern = pattern[1:]
        if _glob(pattern).match(name.lower()):
            if negated:
                return False
            matched = True
    return matched


class KnownHosts(object):
    """The entries of one known_hosts file for one host name."""

    def __init__(self, path, name):
        self.path = path
        self.name = name
        self.keys = []       # (line number, key)
        self.revoked = []    # keys
        self.exists = True
        try:
            with open(path, encoding='utf-8', errors='replace') as f:
                lines = list(f)
        except FileNotFoundError:
            self.exists = False
            lines = []
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            marker = None
            if line.startswith('@'):
                marker, _, line = line.partition(' ')
                if marker not in ('@revoked', '@cert-authority'):
                    continue
            fields = line.split()
            if len(fields) < 3:
                continue
            if marker != '@revoked' and not _matches(
                    name, fields[0].split(',')):
                continue
            if marker == '@cert-authority':
                continue   # host certificates are not offered by paramiko
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(
                    ' '.join(fields[:3]), number)
            except Exception as e:
                LOG.debug('%s:%d: unreadable entry: %s', path, number, e)
                continue
            if entry is None or entry.key is None:
                continue
            if marker == '@revoked':
                self.revoked.append(entry.key)
            else:
                self.keys.append((number, entry.key))

    def key_types(self):
        """The key types listed for the host, in file order."""
        out = []
        for _, key in self.keys:
            if key.get_name() not in out:
                out.append(key.get_name())
        return out


def preferred_algorithms(key_types, offered):
    """``offered`` (host key algorithms in preference order) with those
    of the known key types first, so that the host offers a key we know
    if it has one."""
    first = []
    for key_type in key_types:
        for algorithm in _ALGORITHMS.get(key_type, (key_type,)):
            if algorithm in offered and algorithm not in first:
                first.append(algorithm)
    return first + [a for a in offered if a not in first]


def _pin_hint(key, option='--host-key'):
    return ('if it is the host\'s key (on the host: ssh-keygen -lf '
            '/etc/ssh/ssh_host_%s_key.pub), pin it with %s %s'
            % (_key_file_type(key), option, fingerprint(key)))


def _key_file_type(key):
    name = key.get_name()
    if name.startswith('ecdsa'):
        return 'ecdsa'
    return {'ssh-ed25519': 'ed25519', 'ssh-rsa': 'rsa'}.get(name, '*')


def verify(host_options, key):
    """Accept ``key``, offered by the host of ``host_options``, or raise
    :class:`~any2kvm_os.exception.HostKeyError`."""
    label = host_options.label
    offered = describe(key)
    # The option that pins this host's key: a jump host's has its own.
    option = getattr(host_options, 'pin_option', '--host-key')
    if host_options.host_keys:
        if fingerprint(key) in host_options.host_keys:
            LOG.debug('%s: host key %s is pinned', label, offered)
            return
        raise exception.HostKeyError(
            host=label, reason='host key refused: the host offers %s, '
            'which is not the pinned %s %s (if the host\'s key '
            'really changed, pin the new one)'
            % (offered, option, ', '.join(host_options.host_keys)))
    known = KnownHosts(host_options.known_hosts,
                       host_options.known_hosts_name)
    for revoked in known.revoked:
        if revoked == key:
            raise exception.HostKeyError(
                host=label, reason='host key refused: %s is marked '
                '@revoked in %s' % (offered, known.path))
    same_type = []
    for number, candidate in known.keys:
        if candidate == key:
            LOG.debug('%s: host key %s found in %s:%d', label, offered,
                      known.path, number)
            return
        if candidate.get_name() == key.get_name():
            same_type.append((number, candidate))
    if same_type:
        number, old = same_type[0]
        raise exception.HostKeyError(
            host=label, reason='HOST KEY CHANGED, refused (this may be '
            'an attack): %s:%d holds %s, the host offers %s; %s, or '
            'remove the old entry (ssh-keygen -R \'%s\' -f %s)'
            % (known.path, number, describe(old), offered,
               _pin_hint(key, option), host_options.known_hosts_name,
               known.path))
    where = ('%s has no entry for %s' % (known.path,
                                         host_options.known_hosts_name)
             if known.exists else '%s does not exist' % known.path)
    if known.keys:
        where = ('%s lists for %s only keys of type %s'
                 % (known.path, host_options.known_hosts_name,
                    ', '.join(known.key_types())))
    raise exception.HostKeyError(
        host=label, reason='host key not known, refused: the host '
        'offers %s and %s; %s' % (offered, where, _pin_hint(key,
                                                            option)))
