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

"""The SSH options: connection defaults (oslo.config), one host's
options, and the command-line options every SSH source shares.

The defaults of a connection (timeouts, keepalives, retries, output
bounds) are options of ``[any2kvm]`` owned here (``OPTIONS``, gathered by
:mod:`any2kvm_os.opts`); :class:`Settings` takes its defaults from them.
What names one host (user, address, port) and how to trust and log in
to it (identity file, known_hosts, pinned key, password variable) is a
:class:`HostOptions`; :func:`add_arguments` adds the shared
command-line options and :func:`host_options` reads them back.
"""

import os
import re

from any2kvm_os import lazyopts
from any2kvm_os import redact

GROUP = 'any2kvm'

#: The options' defaults, written once.
_DEFAULTS = dict(ssh_connect_timeout=30, ssh_io_timeout=120,
                 ssh_keepalive_interval=30, ssh_retries=5,
                 ssh_retry_max_seconds=300,
                 ssh_command_timeout=3600,
                 ssh_max_output_mib=64,
                 ssh_sftp_max_requests=64,
                 ssh_sftp_request_kib=252, ssh_sftp_streams=1,
                 ssh_reader_processes=1,
                 ssh_reader_processes_min_mib=256,
                 ssh_jump_host=None)


def _options():
    from oslo_config import cfg
    d = _DEFAULTS
    return [
        cfg.IntOpt('ssh_connect_timeout',
                   default=d['ssh_connect_timeout'], min=1,
                   help='Seconds to wait for an SSH host to answer (TCP '
                        'connection, key exchange, authentication).'),
        cfg.IntOpt('ssh_io_timeout', default=d['ssh_io_timeout'], min=1,
                   help='Seconds without an answer to a file read after '
                        'which the SSH connection is taken for dead (and '
                        'reconnected).'),
        cfg.IntOpt('ssh_keepalive_interval',
                   default=d['ssh_keepalive_interval'], min=0,
                   help='Seconds between SSH keepalive messages; 0 sends '
                        'none.'),
        cfg.IntOpt('ssh_retries', default=d['ssh_retries'], min=0,
                   help='Most reconnections after a lost SSH connection '
                        'during one step (a file read, a command marked '
                        'as safe to repeat).'),
        cfg.IntOpt('ssh_retry_max_seconds',
                   default=d['ssh_retry_max_seconds'], min=1,
                   help='Most seconds spent reconnecting after a lost SSH '
                        'connection during one step; the wait between two '
                        'attempts doubles from 1 second up to 30.'),
        cfg.IntOpt('ssh_command_timeout',
                   default=d['ssh_command_timeout'], min=1,
                   help='Default seconds a command run on a host may take.'),
        cfg.IntOpt('ssh_max_output_mib',
                   default=d['ssh_max_output_mib'], min=1,
                   help='Default most MiB a command run on a host may print '
                        'on its standard output.'),
        cfg.IntOpt('ssh_sftp_max_requests',
                   default=d['ssh_sftp_max_requests'], min=1, max=1024,
                   help='Most SFTP read requests in flight on one connection '
                        '(for the reads under way and the read-ahead): '
                        'bounds the memory the reads hold (twice this times '
                        'ssh_sftp_request_kib at most) and how full a '
                        'high-latency link is kept.'),
        cfg.IntOpt('ssh_sftp_request_kib',
                   default=d['ssh_sftp_request_kib'], min=4, max=1024,
                   help='KiB asked by one SFTP read request; a server that '
                        'sends less per request (OpenSSH before 8 sends 64 '
                        'KiB) is then asked for what it sends.'),
        cfg.IntOpt('ssh_sftp_streams',
                   default=d['ssh_sftp_streams'], min=1, max=8,
                   help='SSH connections that read one large file (64 MiB '
                        'or more) together, each its own 4 MiB stripes of '
                        'it, so that decrypting runs on more than one core; '
                        'each is verified and logged in to like the first. '
                        'ssh_sftp_max_requests is shared among them (the '
                        'memory bound does not grow). 1 (the default: no '
                        'gain was measured yet on a loaded 2-core host) reads '
                        'over one connection.'),
        cfg.IntOpt('ssh_reader_processes',
                   default=d['ssh_reader_processes'], min=1, max=8,
                   help='Processes that read the layers of a large first '
                        'sync (a layer file of ssh_reader_processes_min_mib '
                        'or more) over SFTP and write them into the target, '
                        'each over its own SSH connection (verified and '
                        'logged in to like the first; a password is passed '
                        'to them over a pipe), each its share of the data, '
                        'so that decrypting and writing run on more than one '
                        'core.  A cutover reads its last delta in the '
                        'command\'s own process whatever this is.  1 reads '
                        'in the command\'s process (the default: on the '
                        'shared 2-core test host 2 made a 1 GiB first sync '
                        'faster in some conditions and slower in others, '
                        'and always used more CPU; try 2 on a conversion '
                        'host with idle cores).'),
        cfg.IntOpt('ssh_reader_processes_min_mib',
                   default=d['ssh_reader_processes_min_mib'], min=0,
                   help='Smallest layer (its files on the host, MiB) read '
                        'by ssh_reader_processes processes: starting a '
                        'process and its connection costs about half a '
                        'second of CPU, more than a small layer takes.'),
        cfg.StrOpt('ssh_jump_host', default=d['ssh_jump_host'],
                   help='[USER@]HOST[:PORT] of a jump host (a bastion) '
                        'through which every hypervisor host is reached, '
                        'as ssh -J reaches it, when --jump-host does not '
                        'name one.  Its key is verified like the hosts\', '
                        'against the same known_hosts (or --jump-host-key), '
                        'and it is logged in to the same way.'),
    ]


#: ``OPTIONS`` (oslo.config options), made on first use: a conversion
#: that reads no configuration does not import oslo.config.
__getattr__ = lazyopts.module_getattr(globals(), _options)


#: Most bytes of a command's standard error kept (the rest is dropped).
MAX_STDERR = 64 << 10
#: Files of at least this size are read over ``ssh_sftp_streams``
#: connections ...
STRIPE_MIN = 64 << 20
#: ... each reading every n-th stripe of this size.
STRIPE = 4 << 20

_ENV_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')
_FINGERPRINT = re.compile(r'^SHA256:[A-Za-z0-9+/]{43}=?$')


class Settings(object):
    """The defaults of SSH connections, read from configuration.

    Every argument left out takes its option's default; ``retry_delay``
    is the first wait between reconnections (it doubles up to
    ``max_retry_delay``).
    """

    def __init__(self,
                 connect_timeout=_DEFAULTS['ssh_connect_timeout'],
                 io_timeout=_DEFAULTS['ssh_io_timeout'],
                 keepalive_interval=_DEFAULTS['ssh_keepalive_interval'],
                 retries=_DEFAULTS['ssh_retries'],
                 retry_max_seconds=_DEFAULTS['ssh_retry_max_seconds'],
                 command_timeout=_DEFAULTS['ssh_command_timeout'],
                 max_output=_DEFAULTS['ssh_max_output_mib'] << 20,
                 sftp_max_requests=_DEFAULTS['ssh_sftp_max_requests'],
                 retry_delay=1.0, max_retry_delay=30.0,
                 sftp_request_kib=_DEFAULTS['ssh_sftp_request_kib'],
                 sftp_streams=_DEFAULTS['ssh_sftp_streams'],
                 stripe_min=STRIPE_MIN, stripe=STRIPE,
                 reader_processes=_DEFAULTS['ssh_reader_processes'],
                 reader_min_mib=_DEFAULTS['ssh_reader_processes_min_mib']):
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.keepalive_interval = keepalive_interval
        self.retries = retries
        self.retry_max_seconds = retry_max_seconds
        self.command_timeout = command_timeout
        self.max_output = max_output
        self.sftp_max_requests = sftp_max_requests
        self.sftp_request_size = sftp_request_kib << 10
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.sftp_streams = max(1, sftp_streams)
        #: Files this large or larger are read over ``sftp_streams``
        #: connections, in stripes of ``stripe`` bytes.
        self.stripe_min = stripe_min
        self.stripe = stripe
        #: Processes reading a layer of ``reader_min_bytes`` or more.
        self.reader_processes = max(1, reader_processes)
        self.reader_min_bytes = reader_min_mib << 20

    @property
    def stream_requests(self):
        """Most read requests in flight on each connection reading in
        stripes: ``sftp_max_requests`` shared among them."""
        return max(1, self.sftp_max_requests // self.sftp_streams)

    @classmethod
    def from_conf(cls, conf):
        """The settings ``conf`` sets (its ``[any2kvm]`` options must be
        registered: :func:`any2kvm_os.api.register_opts`)."""
        g = conf[GROUP]
        return cls(connect_timeout=g.ssh_connect_timeout,
                   io_timeout=g.ssh_io_timeout,
                   keepalive_interval=g.ssh_keepalive_interval,
                   retries=g.ssh_retries,
                   retry_max_seconds=g.ssh_retry_max_seconds,
                   command_timeout=g.ssh_command_timeout,
                   max_output=g.ssh_max_output_mib << 20,
                   sftp_max_requests=g.ssh_sftp_max_requests,
                   sftp_request_kib=g.ssh_sftp_request_kib,
                   sftp_streams=g.ssh_sftp_streams,
                   reader_processes=g.ssh_reader_processes,
                   reader_min_mib=g.ssh_reader_processes_min_mib)


def default_known_hosts():
    """Where OpenSSH keeps the user's known hosts."""
    return os.path.expanduser('~/.ssh/known_hosts')


#: The most jump hosts between this host and the one it reaches.
MAX_JUMPS = 4


class HostOptions(object):
    """How to reach, trust and log in to one host.

    ``host_keys``: pinned fingerprints (``SHA256:...`` as ``ssh-keygen -l``
    prints them); when given, the host must offer one of them and
    ``known_hosts`` is not consulted.  ``known_hosts``: an OpenSSH
    known_hosts file (None: ``~/.ssh/known_hosts``).  ``password_env``:
    the name of an environment variable holding the password (the
    password itself is never an option).  ``jump``: the host (a
    HostOptions, or the dict of :meth:`as_dict`) to log in to first and
    reach this one through (a ``direct-tcpip`` channel, as ``ssh -J``
    does: the jump host connects to ``host:port`` itself), or None.
    """

    def __init__(self, host, user=None, port=22, identity_file=None,
                 known_hosts=None, host_keys=(), password_env=None,
                 jump=None, pin_option='--host-key'):
        if not host or host.startswith('-') or any(
                c.isspace() for c in host):
            raise ValueError('invalid host name %r' % (host,))
        if not 0 < int(port) < 65536:
            raise ValueError('invalid port %r' % (port,))
        if password_env is not None and not _ENV_NAME.match(password_env):
            raise ValueError('invalid environment variable name %r'
                             % (password_env,))
        if isinstance(host_keys, str):
            host_keys = [host_keys]
        for key in host_keys:
            check_fingerprint(key)
        self.host = host
        if not user:
            import getpass  # termios: not imported by a local conversion
            user = getpass.getuser()
        self.user = user
        self.port = int(port)
        self.identity_file = identity_file
        self.known_hosts = known_hosts or default_known_hosts()
        self.host_keys = tuple(k.rstrip('=') for k in host_keys)
        self.password_env = password_env
        redact.secret_env(password_env)
        if isinstance(jump, dict):
            jump = HostOptions(**jump)
        depth, hop = 0, jump
        while hop is not None:
            depth += 1
            if depth > MAX_JUMPS:
                raise ValueError('more than %d jump hosts' % MAX_JUMPS)
            hop = hop.jump
        self.jump = jump
        #: The command-line option that pins this host's key (messages).
        self.pin_option = pin_option

    def as_dict(self):
        """The keywords that make this HostOptions again (plain data: a
        reader process gets them)."""
        return {'host': self.host, 'user': self.user, 'port': self.port,
                'identity_file': self.identity_file,
                'known_hosts': self.known_hosts,
                'host_keys': list(self.host_keys),
                'password_env': self.password_env,
                'jump': self.jump.as_dict() if self.jump else None,
                'pin_option': self.pin_option}

    @classmethod
    def parse(cls, target, **kwargs):
        """``[user@]host[:port]`` (an IPv6 address in brackets:
        ``[::1]:22``) and the other options as keywords."""
        user, sep, rest = target.rpartition('@')
        if ':' in user or '%3a' in user.lower():
            # OpenSSH takes "user:style" (BSD auth): a password written
            # there would go over the wire as the user name, and be
            # logged and stored.  Not echoed.
            raise ValueError('a password does not belong in the SSH user '
                             'name of %s (use a key, ssh-agent or '
                             '--password-env)' % redact.text(rest))
        port = kwargs.pop('port', 22)
        if rest.startswith('['):
            addr, _, tail = rest[1:].partition(']')
            if tail.startswith(':'):
                port = int(tail[1:])
            elif tail:
                raise ValueError('invalid host %r' % (target,))
            rest = addr
        elif rest.count(':') == 1:
            rest, port = rest.split(':')
            port = int(port)
        return cls(rest, user=user if sep else kwargs.pop('user', None),
                   port=port, **kwargs)

    @property
    def known_hosts_name(self):
        """The host as known_hosts names it: ``host``, or ``[host]:port``
        for another port than 22."""
        if self.port == 22:
            return self.host
        return '[%s]:%d' % (self.host, self.port)

    @property
    def label(self):
        """``user@host`` or ``user@[host]:port``, for messages."""
        return '%s@%s' % (self.user, self.known_hosts_name)

    @property
    def route(self):
        """The label, with the jump hosts on the way: ``user@host (via
        user@jump)``."""
        hops = []
        hop = self.jump
        while hop is not None:
            hops.append(hop.label)
            hop = hop.jump
        if not hops:
            return self.label
        return '%s (via %s)' % (self.label, ', '.join(reversed(hops)))

    def __repr__(self):
        return '<HostOptions %s>' % self.label


def check_fingerprint(text):
    """Refuse what is not a SHA256 fingerprint as OpenSSH prints it."""
    if not _FINGERPRINT.match(text or ''):
        raise ValueError('%r is not a host key fingerprint: give it as '
                         'ssh-keygen -l prints it, SHA256:<43 characters>'
                         % (text,))
    return text.rstrip('=')


def _fingerprint_arg(text):
    import argparse
    try:
        return check_fingerprint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _env_name_arg(text):
    import argparse
    if not _ENV_NAME.match(text):
        raise argparse.ArgumentTypeError(
            'the name of an environment variable, not %r' % (text,))
    return text


def add_arguments(parser):
    """Add the options every SSH source shares to an argparse parser (or
    group) and return the group they are in."""
    group = parser.add_argument_group(
        'SSH', 'How hypervisor hosts are trusted and logged in to.')
    group.add_argument(
        '--identity-file', metavar='PATH',
        help='Private key to log in with (default: the keys of '
             'ssh-agent, if SSH_AUTH_SOCK is set).')
    group.add_argument(
        '--known-hosts', metavar='PATH',
        help='OpenSSH known_hosts file the host key must be in '
             '(default: ~/.ssh/known_hosts).')
    group.add_argument(
        '--host-key', metavar='SHA256:...', action='append', default=[],
        type=_fingerprint_arg,
        help='Fingerprint of the host key, as ssh-keygen -l prints it; '
             'when given, known_hosts is not consulted. May be repeated.')
    group.add_argument(
        '--password-env', metavar='NAME', type=_env_name_arg,
        help='Name of an environment variable holding the password '
             '(the password is never an option; without this, it is '
             'asked for on a terminal when no key is accepted).')
    route = group.add_mutually_exclusive_group()
    route.add_argument(
        '--jump-host', metavar='[USER@]HOST[:PORT]', type=_jump_arg,
        help='Log in to this host first and reach the hypervisor host '
             'through it, as ssh -J does (the jump host connects to it; '
             'its host key is verified the same way, with the same '
             'identity file, known_hosts and password variable).')
    route.add_argument(
        '--no-jump-host', action='store_true',
        help='Connect to the hypervisor host directly: no jump host, '
             'whatever [any2kvm] ssh_jump_host or the migration\'s '
             'recorded --jump-host says.')
    group.add_argument(
        '--jump-host-key', metavar='SHA256:...', action='append',
        default=[], type=_fingerprint_arg,
        help='Fingerprint of the jump host\'s key; when given, '
             'known_hosts is not consulted for it. May be repeated.')
    return group


def _jump_arg(text):
    import argparse
    try:
        # A user given, or any (the local user is the default).
        HostOptions.parse(text if '@' in text else '-@' + text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return text


def from_args(args, jump_host=None):
    """The keywords of :class:`HostOptions` that the options
    :func:`add_arguments` added give (all but the host itself); an
    ``args`` without them gives the defaults.  ``jump_host``: the jump
    host when ``--jump-host`` names none (``[any2kvm] ssh_jump_host``);
    ``--no-jump-host`` drops both."""
    get = lambda name, default=None: getattr(args, name, None) or default  # noqa: E731,E501
    common = dict(identity_file=get('identity_file'),
                  known_hosts=get('known_hosts'),
                  password_env=get('password_env'))
    jump = None if get('no_jump_host') else get('jump_host', jump_host)
    if jump is not None:
        jump = HostOptions.parse(jump, host_keys=get('jump_host_key', ()),
                                 pin_option='--jump-host-key', **common)
    return dict(common, host_keys=get('host_key', ()), jump=jump)


def host_options(args, target, **kwargs):
    """The :class:`HostOptions` of ``target`` (``[user@]host[:port]``)
    from the options :func:`add_arguments` added."""
    return HostOptions.parse(target, **dict(from_args(args), **kwargs))
