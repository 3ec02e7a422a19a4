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

"""One SSH connection to a hypervisor host.

:class:`Connection` logs in (key file, ssh-agent, then a password from
an environment variable or a terminal prompt), verifies the host key
first (:mod:`.hostkeys`), sends keepalives, and reconnects with backoff
when the connection drops during a step: a read of a
:class:`~.remotefile.RemoteFile` goes on at the same offset, a command
marked ``idempotent`` runs again.  Reconnections are bounded in number
(``ssh_retries``) and time (``ssh_retry_max_seconds``).

Commands are argv lists: every word is quoted (:func:`shlex.quote`) so
that it reaches the remote program as one literal word, whatever it
holds; nothing is ever built from a shell string.
"""

import collections
import logging
import os
import shlex
import socket
import stat
import threading
import time
import uuid

import paramiko

from any2kvm_os import exception
from any2kvm_os.ssh import credentials
from any2kvm_os.ssh import hostkeys
from any2kvm_os.ssh import options as options_mod
from any2kvm_os.ssh import remotefile
from any2kvm_os.ssh import sftpread

LOG = logging.getLogger(__name__)

#: paramiko logs a connection's transport, channels and SFTP here (not
#: under ``paramiko``), behind the password filter.
WIRE_LOGGER = 'any2kvm_os.ssh.wire'
_FILTERED_LOGGERS = (WIRE_LOGGER, WIRE_LOGGER + '.sftp', 'paramiko',
                     'paramiko.transport', 'paramiko.transport.sftp',
                     'paramiko.sftp', 'paramiko.agent',
                     'paramiko.auth_strategy')


class _DebugOnly(logging.Filter):
    """paramiko's records are diagnostics, passed on only when this
    layer logs at DEBUG (``--debug``).

    Its transport thread logs what it meets at ERROR ("Socket
    exception: Connection reset by peer" when a link dies, whatever
    thread is reading), but every such failure reaches the caller as
    the error of the call it broke: retried with our own warning, or
    raised as our one-line error.  Without this a lost connection
    printed a second line, ours being the one that says what happens
    next, and a reconnected sync that succeeded printed an ERROR."""

    def filter(self, record):
        return record.levelno < logging.WARNING or \
            LOG.isEnabledFor(logging.DEBUG)


_DEBUG_ONLY = _DebugOnly()

_BUFFER = 64 << 10
# How long a command's output loop sleeps when nothing has arrived: from
# the first value, doubling up to the second while it stays quiet.
_MIN_PAUSE = 0.0005
_MAX_PAUSE = 0.02

#: Ciphers tried first: AES-GCM needs no separate MAC and is the
#: cheapest for paramiko (the client's CPU bounds a fast link): with
#: AES-NI, 512 MiB over loopback took 5.1-6.4 s with aes128-gcm against
#: 6.5-14.3 s with aes128-ctr and its HMAC, the same runs.
PREFERRED_CIPHERS = ('aes128-gcm@openssh.com', 'aes256-gcm@openssh.com')
#: The only ciphers offered: OpenSSH's default set (9.x) but for
#: chacha20-poly1305, which paramiko lacks; never CBC or 3DES, which
#: paramiko would offer too.
CIPHERS = PREFERRED_CIPHERS + ('aes128-ctr', 'aes192-ctr', 'aes256-ctr')
#: The only MACs offered (GCM needs none): OpenSSH's default set but for
#: the UMACs paramiko lacks, encrypt-then-MAC first; never MD5 or the
#: truncated ones.
MACS = ('hmac-sha2-256-etm@openssh.com', 'hmac-sha2-512-etm@openssh.com',
        'hmac-sha2-256', 'hmac-sha2-512', 'hmac-sha1')

#: Most bytes of one SSH packet the host may send on the SFTP channel
#: (paramiko's default, 32 KiB, costs one Python round per 32 KiB).
SFTP_PACKET = 128 << 10


def _pause(channel, seconds):
    """Wait ``seconds``, or less if the exit status of the command on
    ``channel`` arrives meanwhile (paramiko's ``Channel.status_event``,
    the event its ``recv_exit_status`` waits on, set by the transport
    thread); once it has arrived (the output or the end of file may
    still be on their way), a plain sleep."""
    event = getattr(channel, 'status_event', None)
    if event is not None and not event.is_set():
        event.wait(seconds)
    else:
        time.sleep(seconds)


class _Output(object):
    """What one command running on its channel printed so far."""

    __slots__ = ('channel', 'argv', 'command', 'out', 'err', 'status')

    def __init__(self, channel, argv, command):
        self.channel, self.argv, self.command = channel, argv, command
        self.out, self.err = bytearray(), bytearray()
        self.status = None


class CommandResult(collections.namedtuple(
        'CommandResult', 'argv status stdout stderr')):
    """What a remote command did: ``status`` is its exit status (-1 when
    it ended without one, e.g. killed by a signal); ``stdout`` and
    ``stderr`` are bytes (stderr cut at :data:`options.MAX_STDERR`)."""

    @property
    def command(self):
        return quote_argv(self.argv)


def quote_argv(argv):
    """The command line that runs ``argv`` word for word in a POSIX
    shell; refuses a string (it would be split by the remote shell) and
    words holding NUL."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError('a command is a non-empty list of words, not %r'
                        % (argv,))
    words = []
    for word in argv:
        if not isinstance(word, str):
            raise TypeError('command word %r is not a string' % (word,))
        if '\0' in word:
            raise ValueError('command word %r holds a NUL byte' % (word,))
        words.append(shlex.quote(word))
    return ' '.join(words)


def _prefer_ciphers(transport):
    """Offer only :data:`CIPHERS` (:data:`PREFERRED_CIPHERS` first) and
    :data:`MACS`, those paramiko has (host key verification is not
    touched)."""
    security = transport.get_security_options()
    offered = list(security.ciphers)
    ciphers = [c for c in CIPHERS if c in offered]
    if ciphers:
        security.ciphers = ciphers
    macs = [m for m in MACS if m in security.digests]
    if macs:
        security.digests = macs


def _short(text, limit=300):
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _close_transport(transport):
    """Close a transport and let its thread end (its last log records
    then belong to the step that closed it)."""
    # A connected socket has no timeout (see Connection._open): the
    # transport's thread may sit in recv(), which close() does not wake
    # (the thread would outlive the connection until the server hangs
    # up, and log then).  shutdown() does.
    sock = getattr(transport, 'sock', None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # not connected, or closed already
            pass
    try:
        transport.close()
    except Exception:  # closing a dead connection
        pass
    if transport is not threading.current_thread():
        transport.join(5)


#: What the gate prints once its shell is up and waiting: the shell's
#: start (a login shell's rc files: 0.1 s and more on some hosts) is
#: then paid before the gate is opened, not after.
GATE_READY = b'any2kvm-gate-ready\n'
#: The gate of :meth:`Connection.armed`: it says it is ready, and the
#: command (``$0 "$@"``) runs only once the line ``go`` comes; end of
#: input ends the shell.
GATE = ('printf "%%s\\n" %s && IFS= read -r go && [ "$go" = go ] && '
        'exec "$0" "$@"' % GATE_READY.decode().strip())
#: Most bytes a host may print before its gate says it is ready (a
#: login banner of the shell's rc files), read and dropped.
#: Most queries :meth:`Connection.run_all` runs side by side, each on a
#: channel of its own (OpenSSH's sshd allows 10 sessions on a connection
#: by default: MaxSessions; the SFTP session and an armed command are two
#: more).
SIDE_BY_SIDE = 8
_GATE_NOISE = 64 << 10
#: Longest pause between two looks at a fired command's channel.
_ARMED_PAUSE = 0.001


def judged(label, result):
    """``result`` (a :class:`CommandResult` of a command on host
    ``label``), or :class:`~any2kvm_os.exception.RemoteCommandError`
    (naming the command and its stderr) unless its exit status is 0."""
    if result.status != 0:
        stderr = result.stderr.decode('utf-8', 'replace').strip()
        raise exception.RemoteCommandError(
            host=label, command=_short(result.command, 200),
            reason='exit status %d%s' % (
                result.status,
                ': ' + _short(stderr, 500) if stderr else
                ' (nothing on stderr)'))
    return result


def batch(commands):
    """(argv, marker) of a batch of commands: one command as it is
    (marker None); several in ``sh -c``, each command, then the marker on
    a line of its own; ``&&`` between them all (the marker's printf must
    end before the next command starts, or that command becomes printf's
    arguments).  Every word of every command is quoted
    (:func:`quote_argv`)."""
    if len(commands) == 1:
        return list(commands[0]), None
    marker = 'any2kvm-batch-%s' % uuid.uuid4().hex
    sep = " && printf '\\n%%s\\n' %s" % marker
    script = ' && '.join(quote_argv(argv) + sep for argv in commands)
    return ['sh', '-c', script], marker


def batch_outputs(label, commands, marker, result):
    """The outputs of a batch of ``commands`` (:func:`batch`) from its
    ``result`` (a :class:`CommandResult`).  When a command failed, the
    :class:`~any2kvm_os.exception.RemoteCommandError` it would have
    raised alone (naming it, its exit status and the batch's stderr),
    with ``outputs``: those of the commands before it, which each printed
    their marker."""
    if marker is None:
        return [judged(label, result).stdout]
    sep = ('\n%s\n' % marker).encode()
    parts = result.stdout.split(sep)
    done = len(parts) - 1
    if result.status != 0 and done < len(commands):
        try:
            judged(label, CommandResult(list(commands[done]), result.status,
                                        parts[-1], result.stderr))
        except exception.RemoteCommandError as e:
            e.outputs = parts[:-1]
            raise
    judged(label, result)
    if done != len(commands):
        raise exception.Any2KvmError(
            '%s: a batch of %d commands gave %d outputs'
            % (label, len(commands), done))
    return parts[:-1]


class Armed(object):
    """A command at its gate (:meth:`Connection.armed`)."""

    def __init__(self, connection, channel, argv, command, max_output):
        self.connection = connection
        self.channel = channel
        self.argv = argv
        self.command = command
        self.max_output = max_output
        self.fired = False

    @property
    def ready(self):
        """Whether the gate can still be opened (its channel open on a
        live connection)."""
        return (not self.fired and not self.channel.closed and
                self.connection.is_active())

    def fire(self, timeout=None):
        """Open the gate: the command runs; its :class:`CommandResult`
        (the exit status not judged), within ``timeout`` seconds
        (default ``ssh_command_timeout``).  A lost connection is raised,
        never retried: the command may have run."""
        c = self.connection
        timeout = c.settings.command_timeout if timeout is None \
            else timeout
        self.fired = True
        deadline = time.monotonic() + timeout
        LOG.debug('%s: running %s', c.label, self.command)
        try:
            self.channel.sendall(b'go\n')
            self.channel.shutdown_write()
            return c._collect(self.channel, self.argv, self.command,
                              deadline, self.max_output,
                              max_pause=_ARMED_PAUSE)
        except (paramiko.SSHException, EOFError, OSError,
                _Dropped) as e:
            self.channel.close()
            raise exception.SshError(
                host=c.label, reason='connection lost while %s ran: %s'
                % (_short(self.command, 80), _short(str(e) or
                                                    type(e).__name__)))

    def close(self):
        """Not fired: the shell at the gate ends, nothing runs."""
        if not self.fired:
            self.fired = True
            try:
                self.channel.close()
            except Exception:   # a dead connection
                pass


def _cut_short(error):
    """Whether a failed SSH handshake was cut short by the host (closed
    or reset before or during the key exchange, as sshd does beyond its
    ``MaxStartups``) rather than refused (no algorithm in common, not an
    SSH server)."""
    if isinstance(error, (EOFError, OSError)):
        return True
    # paramiko wraps what ended the wait for the host's first line.
    return str(error).startswith('Error reading SSH protocol banner')


def _kind(perms):
    """What a directory entry that is no regular file is, in words."""
    if perms is None:
        return 'of an unknown kind'
    if stat.S_ISLNK(perms):
        return 'a symbolic link (not followed)'
    if stat.S_ISDIR(perms):
        return 'a directory'
    return 'not a regular file'


class _Dropped(Exception):
    """The connection was lost (internal: retried or turned into an
    SshError).  ``before_login``: the host closed it (or stopped
    answering) before the login completed, so nothing ran: retried even
    on the first connection, as a busy host's sshd does this when it
    drops connections beyond its ``MaxStartups``."""

    def __init__(self, message, before_login=False):
        super(_Dropped, self).__init__(message)
        self.before_login = before_login


class Connection(object):
    """An SSH connection to one host (:class:`~.options.HostOptions`),
    with :class:`~.options.Settings`.

    Connects on first use (or :meth:`connect`); use it as a context
    manager or call :meth:`close`.  ``bytes_read`` counts the bytes
    received as file data and command output (re-reads after a
    reconnection included): the bytes read over the wire.
    """

    def __init__(self, host_options, settings=None, stdin=None,
                 environ=None, parent=None):
        self.host_options = host_options
        self.settings = settings or options_mod.Settings()
        self.bytes_read = 0
        self.generation = 0
        self._stdin = stdin
        self._environ = environ
        self._lock = threading.RLock()
        self._count_lock = threading.Lock()
        self._transport = None
        self._password = None
        self._ever_connected = False
        self._pipeline = None
        #: The connection this one reads stripes beside (see
        #: :meth:`streams`): it counts the bytes and knows the password.
        self._parent = parent
        #: The connection whose password this one logs in with, never
        #: asking for one (a stream beside the first connection: that
        #: one; a connection of a reader process, :meth:`beside`:
        #: itself, given the first one's); None: it finds its own
        #: ($password_env, else a prompt).
        self._password_of = parent
        self._siblings = []
        self._dropped = False
        #: The connection to the jump host (``host_options.jump``), made
        #: by the first :meth:`_open` (a stream beside this one uses its
        #: parent's).
        self._jump = None
        credentials.install_filter(_FILTERED_LOGGERS)
        credentials.install_filter(_FILTERED_LOGGERS, _DEBUG_ONLY)

    # -- life -------------------------------------------------------------

    @property
    def label(self):
        return self.host_options.label

    def connect(self):
        """Connect and log in now (it is otherwise done on first use)."""
        self.retrying('connecting', lambda: None)
        return self

    def close(self):
        for sibling in self._siblings:
            sibling.close()
        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.shutdown()
        with self._lock:
            self._teardown()
            if self._password is not None:
                credentials.REDACT.discard(self._password)
                self._password = None
            jump, self._jump = self._jump, None
        if jump is not None:
            jump.close()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return '<Connection %s>' % self.label

    def is_active(self):
        t = self._transport
        return t is not None and t.is_active()

    def _teardown(self):
        transport, self._transport = self._transport, None
        if transport is not None:
            _close_transport(transport)

    def _ensure(self):
        """The live transport, connecting (again) if needed; returns the
        generation it belongs to."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._teardown()
                self._transport = self._open()
                self.generation += 1
                self._ever_connected = True
            return self.generation

    def _jump_connection(self):
        """The connection to the jump host: the parent's for a stream
        beside it, else this one's own (made once)."""
        if self._parent is not None:
            return self._parent._jump_connection()
        with self._lock:
            if self._jump is None:
                self._jump = Connection(self.host_options.jump,
                                        self.settings, self._stdin,
                                        self._environ)
            return self._jump

    def _through_jump(self):
        """A ``direct-tcpip`` channel from the jump host to this host,
        as ``ssh -J`` opens it (the jump host resolves and connects)."""
        ho, st = self.host_options, self.settings
        jump = self._jump_connection()
        try:
            jump._ensure()
        except _Dropped as e:
            raise _Dropped('jump host %s: %s' % (jump.label, e),
                           before_login=e.before_login)
        try:
            return jump._transport.open_channel(
                'direct-tcpip', (ho.host, ho.port), ('127.0.0.1', 0),
                timeout=st.connect_timeout)
        except paramiko.ChannelException as e:
            raise _Dropped('jump host %s could not reach %s port %d: %s'
                           % (jump.label, ho.host, ho.port,
                              e.text or e))
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise _Dropped('jump host %s: %s' % (jump.label, e))

    def _open(self):
        ho, st = self.host_options, self.settings
        if ho.jump is not None:
            sock = self._through_jump()
        else:
            try:
                sock = socket.create_connection((ho.host, ho.port),
                                                timeout=st.connect_timeout)
            except OSError as e:
                raise _Dropped('cannot connect to %s port %d: %s'
                               % (ho.host, ho.port, e.strerror or e))
        transport = paramiko.Transport(sock)
        try:
            transport.set_log_channel(WIRE_LOGGER)
            transport.banner_timeout = st.connect_timeout
            transport.handshake_timeout = st.connect_timeout
            transport.auth_timeout = st.connect_timeout
            if not ho.host_keys:
                known = hostkeys.KnownHosts(ho.known_hosts,
                                            ho.known_hosts_name)
                security = transport.get_security_options()
                security.key_types = hostkeys.preferred_algorithms(
                    known.key_types(), list(security.key_types))
            _prefer_ciphers(transport)
            silent = _Dropped(
                '%s sent no SSH banner, or did not finish the key '
                'exchange, within %s s (ssh_connect_timeout)'
                % (self.label, st.connect_timeout), before_login=True)
            try:
                transport.start_client(timeout=st.connect_timeout)
            except (paramiko.SSHException, EOFError, OSError) as e:
                if str(e) == 'Error reading SSH protocol banner':
                    # The banner's own timeout, in the transport's
                    # thread, came first (a loaded machine): the same
                    # silence, said the same way.
                    raise silent
                raise _Dropped('SSH handshake with %s failed: %s'
                               % (self.label, e),
                               before_login=_cut_short(e))
            if not getattr(transport, 'initial_kex_done', True) or \
                    not transport.is_active():
                # start_client gave up waiting (its timeout) before its
                # thread did (the banner's): nothing came in time.
                raise silent
            hostkeys.verify(ho, transport.get_remote_server_key())
            self._authenticate(transport)
            if st.keepalive_interval:
                transport.set_keepalive(st.keepalive_interval)
            # The socket keeps the short timeout paramiko gave it: its
            # transport thread sends keepalives (and notices a close)
            # only when a read times out, so a blocking socket silently
            # sent none.
        except BaseException:
            _close_transport(transport)
            raise
        LOG.debug('%s: connected', ho.route)
        return transport

    # -- authentication ---------------------------------------------------

    def _not_refused(self, transport, started):
        """Raise :class:`_Dropped` if an attempt to log in that failed
        (started at ``started``, :func:`time.monotonic`) was not refused
        by the host but cut short: the connection closed, or no answer
        within ``ssh_connect_timeout``."""
        if not transport.is_active():
            raise _Dropped('%s closed the connection during the login'
                           % self.label, before_login=True)
        # paramiko's own clock (time.time) decided: allow for the gap.
        if time.monotonic() - started >= transport.auth_timeout - 0.5:
            raise _Dropped('%s did not answer the login within %d s'
                           % (self.label, transport.auth_timeout),
                           before_login=True)

    def _allowed(self, transport, user):
        """The methods the server accepts (from a "none" attempt)."""
        started = time.monotonic()
        try:
            transport.auth_none(user)
        except paramiko.BadAuthenticationType as e:
            return list(e.allowed_types)
        except paramiko.AuthenticationException:
            self._not_refused(transport, started)
            return []
        return None   # logged in without credentials

    def _authenticate(self, transport):
        ho = self.host_options
        user = ho.user
        allowed = self._allowed(transport, user)
        if allowed is None:
            return
        tried = []
        if 'publickey' in allowed:
            for what, key in self._keys(tried):
                started = time.monotonic()
                try:
                    transport.auth_publickey(user, key)
                except paramiko.AuthenticationException as e:
                    self._not_refused(transport, started)
                    LOG.debug('%s: %s refused: %s', self.label, what, e)
                    allowed = getattr(e, 'allowed_types', allowed)
                    continue
                if transport.is_authenticated():
                    LOG.debug('%s: logged in with %s', self.label, what)
                    return
        if {'password', 'keyboard-interactive'} & set(allowed):
            secret = self._get_password(tried)
            if secret is not None:
                if self._password_login(transport, user, secret, allowed):
                    return
        raise exception.SshAuthError(
            host=self.label, reason='authentication failed (tried: %s; '
            'the host accepts: %s)%s'
            % (', '.join(tried) or 'nothing',
               ', '.join(allowed) or 'nothing',
               '' if tried else ': give a key (--identity-file, or '
               'ssh-agent) or a password (--password-env VAR, or a '
               'terminal to ask on)'))

    def _keys(self, tried):
        """(description, key) of the identity file, then of ssh-agent."""
        ho = self.host_options
        if ho.identity_file:
            tried.append('key %s' % ho.identity_file)
            try:
                key = paramiko.PKey.from_path(ho.identity_file)
            except (paramiko.PasswordRequiredException, TypeError) as e:
                # paramiko's own, or, through PKey.from_path, the
                # cryptography library's TypeError ("Key is
                # password-protected, but password was not provided").
                if not isinstance(e, paramiko.PasswordRequiredException) \
                        and 'password' not in str(e).lower():
                    raise exception.SshAuthError(
                        host=self.label, reason='identity file %s cannot '
                        'be read: %s' % (ho.identity_file, e))
                raise exception.SshAuthError(
                    host=self.label, reason='identity file %s is '
                    'encrypted: add it to ssh-agent (ssh-add) and leave '
                    '--identity-file out' % ho.identity_file)
            except (OSError, paramiko.SSHException, ValueError) as e:
                raise exception.SshAuthError(
                    host=self.label, reason='identity file %s cannot be '
                    'read: %s' % (ho.identity_file, e))
            yield 'key %s' % ho.identity_file, key
        environ = os.environ if self._environ is None else self._environ
        if environ.get('SSH_AUTH_SOCK'):
            agent = paramiko.Agent()
            try:
                keys = agent.get_keys()
                tried.append('ssh-agent (%d keys)' % len(keys))
                for key in keys:
                    yield 'ssh-agent key %s' % hostkeys.describe(key), key
            finally:
                agent.close()

    @classmethod
    def beside(cls, host_options, settings, password, jump_password=None):
        """A connection of another process (a reader process) that logs
        in as the first connection does (:meth:`password_to_hand`):
        with ``password`` (None: none), never asking for one; its jump
        host's connection, if any, the same with ``jump_password``."""
        conn = cls(host_options, settings)
        conn._password_of = conn
        if password is not None:
            conn._password = credentials.Secret(password)
            credentials.REDACT.add(conn._password)
        if host_options.jump is not None:
            conn._jump = cls.beside(host_options.jump, settings,
                                    jump_password)
        return conn

    def password_to_hand(self, jump=False):
        """The password this connection logs in with (``jump``: its jump
        host's connection), revealed (None if it has none), for a
        connection of another process that logs in as this one does
        (:meth:`beside`): the caller hands it over a pipe, never in an
        argv, an environment or a log."""
        if jump:
            if self.host_options.jump is None:
                return None
            return self._jump_connection().password_to_hand()
        secret = self._password
        return secret.reveal() if secret is not None else None

    def _get_password(self, tried):
        ho = self.host_options
        if self._password_of is not None:
            # A connection beside the first one logs in with what the
            # first one was given; it never asks.
            secret = self._password_of._password
            if secret is not None:
                tried.append('the password of the first connection')
            return secret
        if self._password is None:
            if ho.password_env:
                self._password = credentials.from_env(
                    self.label, ho.password_env, self._environ)
            elif not self._ever_connected:
                # Asked once; a reconnection uses what was typed.
                self._password = credentials.prompt(self.label, self._stdin)
            if self._password is not None:
                credentials.REDACT.add(self._password)
        if self._password is None:
            return None
        tried.append('password from $%s' % ho.password_env
                     if ho.password_env else 'password typed')
        return self._password

    def _password_login(self, transport, user, secret, allowed):
        started = time.monotonic()
        try:
            if 'password' in allowed:
                transport.auth_password(user, secret.reveal(),
                                        fallback=False)
            else:
                def answer(title, instructions, prompts):
                    return [secret.reveal() if not echo else ''
                            for _, echo in prompts]
                transport.auth_interactive(user, answer)
        except paramiko.AuthenticationException as e:
            self._not_refused(transport, started)
            LOG.debug('%s: password refused: %s', self.label,
                      type(e).__name__)
            return False
        return transport.is_authenticated()

    # -- retries ----------------------------------------------------------

    def _is_drop(self, error):
        if isinstance(error, (_Dropped, sftpread.Lost)):
            return True
        if isinstance(error, exception.Any2KvmError):
            return False
        if isinstance(error, (paramiko.AuthenticationException,
                              paramiko.BadHostKeyException)):
            return False
        if isinstance(error, (socket.timeout, EOFError, ConnectionError)):
            # paramiko's EOFError means the channel or transport ended;
            # a remote file's own error is never one.
            return True
        if isinstance(error, (EOFError, OSError, paramiko.SSHException)):
            # An SFTP status (no such file, ...) arrives as an OSError on
            # a live connection: that is the remote file's error.
            return not self.is_active() or (
                isinstance(error, paramiko.SSHException) and
                'dropped' in str(error))
        return False

    def retrying(self, what, step, retry=True):
        """Run ``step()`` on a live connection; if the connection drops,
        reconnect with backoff and (``retry``) run it again, within
        ``ssh_retries`` attempts and ``ssh_retry_max_seconds``."""
        st = self.settings
        attempts = 0
        deadline = None
        delay = st.retry_delay
        while True:
            started = False
            try:
                self._ensure()
                started = True
                return step()
            except Exception as e:
                if not self._is_drop(e):
                    raise
                first = not self._ever_connected
                if first and not getattr(e, 'before_login', False):
                    raise exception.SshError(host=self.label,
                                             reason=str(e))
                with self._lock:
                    self._teardown()
                now = time.monotonic()
                if deadline is None:
                    deadline = now + st.retry_max_seconds
                attempts += 1
                exhausted = attempts > st.retries or now + delay > deadline
                if first and exhausted:
                    raise exception.SshError(
                        host=self.label, reason='could not log in: %s '
                        '(%d attempts in %.0f s; a busy host\'s sshd '
                        'drops connections beyond its MaxStartups)'
                        % (_short(str(e)), attempts,
                           now - deadline + st.retry_max_seconds))
                if not retry and started:
                    raise exception.SshError(
                        host=self.label, reason='connection lost during '
                        '%s (not repeated: it may have had effects): %s'
                        % (what, _short(str(e) or type(e).__name__)))
                if exhausted:
                    raise exception.SshError(
                        host=self.label, reason='connection lost during '
                        '%s; gave up after %d reconnection attempts in '
                        '%.0f s: %s' % (what, attempts - 1,
                                        now - deadline + st.retry_max_seconds,
                                        _short(str(e) or type(e).__name__)))
                LOG.warning('%s: %s (%s); %s in %.1f s (attempt %d of %d)',
                            self.label, 'no login yet' if first else
                            'connection lost during %s' % what,
                            _short(str(e) or type(e).__name__),
                            'trying again' if first else 'reconnecting',
                            delay, attempts, st.retries)
                time.sleep(delay)
                delay = min(delay * 2, st.max_retry_delay)

    def count(self, n):
        if self._parent is not None:
            self._parent.count(n)
            return
        with self._count_lock:
            self.bytes_read += n

    # -- commands ---------------------------------------------------------

    def run(self, argv, timeout=None, max_output=None, idempotent=False):
        """Run ``argv`` on the host (each word quoted) and return a
        :class:`CommandResult`; the exit status is not judged (see
        :meth:`check_run`).

        ``timeout`` (seconds, default ``ssh_command_timeout``) bounds
        the whole command, ``max_output`` (bytes, default
        ``ssh_max_output_mib``) its standard output: beyond either, the
        channel is closed and :class:`~any2kvm_os.exception.
        RemoteCommandError` raised.  A command is run again after a lost
        connection only when ``idempotent`` (a query).
        """
        return self.run_all([argv], timeout=timeout, max_output=max_output,
                            idempotent=idempotent)[0]

    def check_run(self, argv, **kwargs):
        """:meth:`run`, raising :class:`~any2kvm_os.exception.
        RemoteCommandError` (naming the command and its stderr) unless
        the exit status is 0."""
        return judged(self.label, self.run(argv, **kwargs))

    def run_many(self, commands, idempotent=False, timeout=None):
        """Several commands in one round trip (:func:`batch`: ``sh -c``,
        every word of each quoted, ``&&`` between them: the first failure
        stops the rest and is raised, with the outputs before it); their
        outputs (stdout), in order."""
        argv, marker = batch(commands)
        return batch_outputs(self.label, commands, marker, self.run(
            argv, idempotent=idempotent, timeout=timeout))

    def run_all(self, argvs, timeout=None, max_output=None,
                idempotent=False):
        """Run the commands of ``argvs`` side by side, each on an exec
        channel of its own (they take the time of the slowest, not the
        sum), and return their :class:`CommandResult` objects in order;
        no exit status is judged.  ``timeout`` bounds them all,
        ``max_output`` each one's stdout (beyond either, every channel is
        closed and :class:`~any2kvm_os.exception.RemoteCommandError`
        raised).  Run again after a lost connection, all of them, only
        when ``idempotent`` (every one a query)."""
        # Quoted first: a string is refused, not split into letters.
        commands = [quote_argv(a) for a in argvs]
        argvs = [list(a) for a in argvs]
        timeout = self.settings.command_timeout if timeout is None \
            else timeout
        max_output = self.settings.max_output if max_output is None \
            else max_output
        what = ('command %s' % _short(commands[0], 80) if len(commands) == 1
                else '%d commands (%s)' % (len(commands), _short(
                    '; '.join(commands), 80)))
        if idempotent and len(commands) > SIDE_BY_SIDE:
            # Queries: a group at a time (sshd's MaxSessions).
            out = []
            for i in range(0, len(commands), SIDE_BY_SIDE):
                out += self.run_all(argvs[i:i + SIDE_BY_SIDE],
                                    timeout=timeout, max_output=max_output,
                                    idempotent=True)
            return out
        return self.retrying(
            what, lambda: self._run_all_once(argvs, commands, timeout,
                                             max_output),
            retry=idempotent)

    def _run_all_once(self, argvs, commands, timeout, max_output):
        deadline = time.monotonic() + timeout
        runs = []
        try:
            # Every channel open before any command starts: a host that
            # refuses one more session has run none of them.
            for argv, command in zip(argvs, commands):
                try:
                    channel = self._transport.open_session(
                        timeout=self.settings.connect_timeout)
                except paramiko.ChannelException as e:
                    raise exception.SshError(
                        host=self.label, reason='the host refused session '
                        'channel %d of %d (%s): its sshd allows fewer at '
                        'once (MaxSessions, 10 by default)' % (
                            len(runs) + 1, len(commands),
                            _short(str(e) or type(e).__name__, 100)))
                runs.append((channel, argv, command))
            for channel, _argv, command in runs:
                LOG.debug('%s: running %s', self.label, command)
                channel.exec_command(command)
                channel.shutdown_write()
        except BaseException:
            for channel, _argv, _command in runs:
                channel.close()
            raise
        return self._collect_all(runs, deadline, max_output)

    def _collect(self, channel, argv, command, deadline, max_output,
                 max_pause=_MAX_PAUSE):
        """The output and exit status of the command running on
        ``channel`` (closed after)."""
        return self._collect_all([(channel, argv, command)], deadline,
                                 max_output, max_pause)[0]

    def _collect_all(self, runs, deadline, max_output,
                     max_pause=_MAX_PAUSE):
        """The :class:`CommandResult` of each command of ``runs``
        (``(channel, argv, command)``, each running on its own channel),
        in order, read side by side; every channel closed after.  A
        command that prints more than ``max_output`` bytes on stdout, or
        any still running at ``deadline``, stops them all."""
        timeout = round(deadline - time.monotonic(), 3)
        outputs = [_Output(*run) for run in runs]
        left = list(outputs)
        try:
            pause = _MIN_PAUSE
            while left:
                busy = False
                for run in left:
                    if self._drain(run, max_output):
                        busy = True
                if busy:
                    pause = _MIN_PAUSE
                    continue
                # A channel closed with its connection is a lost
                # connection, not a command that ended.
                if not self.is_active():
                    raise _Dropped('connection closed while %s ran'
                                   % _short(left[0].command, 80))
                for run in list(left):
                    channel = run.channel
                    if channel.closed or (channel.exit_status_ready() and
                                          channel.eof_received):
                        # What arrived since the drain, before the end of
                        # file (the channel's data comes in order).
                        self._drain(run, max_output)
                        # Closed without a status (killed by a signal): -1.
                        run.status = channel.recv_exit_status()
                        left.remove(run)
                        LOG.debug('%s: %s: exit status %d', self.label,
                                  _short(run.command, 80), run.status)
                if not left:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    error = exception.RemoteCommandError(
                        host=self.label,
                        command=_short(left[0].command, 200),
                        reason='no exit after %s s: stopped' % timeout)
                    # We stopped waiting: the command may still be at
                    # work on the host (an xe request goes on in xapi).
                    error.timed_out = True
                    raise error
                # Polled, not select()ed on channel.fileno(): paramiko's
                # Channel.close() closes that pipe while its transport
                # thread may still feed data arriving for the channel,
                # and the thread's write to the closed (or already
                # reused) descriptor kills the transport or writes into
                # another file.  The pause ends early when the exit
                # status arrives: a command's end is seen at once, not up
                # to a pause later (each xe query, and the shutdown inside
                # a cutover's downtime).
                _pause(left[0].channel, min(remaining, pause))
                pause = min(pause * 2, max_pause)
        finally:
            for run in outputs:
                run.channel.close()
        return [CommandResult(list(run.argv), run.status, bytes(run.out),
                              bytes(run.err)) for run in outputs]

    def _drain(self, run, max_output):
        """Take what waits on ``run``'s channel (stdout, then stderr);
        whether anything did."""
        channel, busy = run.channel, False
        while channel.recv_ready():
            data = channel.recv(_BUFFER)
            if not data:
                break
            busy = True
            self.count(len(data))
            run.out += data
            if len(run.out) > max_output:
                raise exception.RemoteCommandError(
                    host=self.label, command=_short(run.command, 200),
                    reason='printed more than %d bytes on stdout: '
                    'stopped' % max_output)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(_BUFFER)
            if not data:
                break
            busy = True
            self.count(len(data))
            room = options_mod.MAX_STDERR - len(run.err)
            if room > 0:
                run.err += data[:room]
        return busy

    def armed(self, argv, max_output=None):
        """``argv`` started on the host now but held at a gate: a
        ``sh`` that waits for one line on its standard input and runs
        ``argv`` (``exec``, every word quoted) only if that line is
        ``go``.  :meth:`Armed.fire` sends it and returns the command's
        :class:`CommandResult`; what costs round trips (the channel, the
        session, the shell) is paid here, before the moment that counts.
        Closing the channel, or losing the connection, ends the shell at
        its gate: nothing runs.  Never repeated after a lost
        connection."""
        command = quote_argv(['sh', '-c', GATE] + list(argv))
        max_output = self.settings.max_output if max_output is None \
            else max_output

        def start():
            channel = self._transport.open_session(
                timeout=self.settings.connect_timeout)
            try:
                channel.exec_command(command)
                self._until_ready(channel, command)
            except BaseException:
                channel.close()
                raise
            return channel
        channel = self.retrying('arming %s' % _short(command, 80), start,
                                retry=True)
        return Armed(self, channel, list(argv), command, max_output)

    def _until_ready(self, channel, command):
        """Wait until the gate on ``channel`` says its shell is up
        (:data:`GATE_READY`; what the host printed before it is
        dropped), within ``ssh_connect_timeout`` seconds."""
        deadline = time.monotonic() + self.settings.connect_timeout
        seen = bytearray()
        pause = _MIN_PAUSE
        while GATE_READY not in seen:
            if channel.recv_ready():
                data = channel.recv(_BUFFER)
                if not data:
                    break
                self.count(len(data))
                seen += data
                if len(seen) > _GATE_NOISE:
                    break
                continue
            if channel.closed or channel.exit_status_ready():
                break
            if not self.is_active():
                raise _Dropped('connection closed while %s started'
                               % _short(command, 80))
            if time.monotonic() > deadline:
                break
            time.sleep(pause)
            pause = min(2 * pause, _MAX_PAUSE)
        if not seen.endswith(GATE_READY):
            raise exception.SshError(
                host=self.label, reason='%s did not come to its gate '
                '(it printed %d bytes, ended or took longer than %s s)'
                % (_short(command, 80), len(seen),
                   self.settings.connect_timeout))

    # -- files ------------------------------------------------------------

    def listdir(self, path, limit, skipped=None):
        """The names of the regular files in the directory ``path`` on
        the host, sorted (links and everything else left out; ``skipped``,
        a dict, gets {name: what it is} of those); an error if the
        directory cannot be listed or has more than ``limit`` entries (a
        listing cut short would make a parent beyond it look missing).
        Listed over the SFTP session of the file reads (:meth:`pipeline`):
        one SFTP server on the host, not two."""
        pipeline = self.pipeline
        entries = self.retrying('listing %s' % path,
                                lambda: pipeline.listdir(path, limit))
        names = []
        for name, perms in entries:
            if perms is not None and stat.S_ISREG(perms):
                names.append(name)
            elif skipped is not None:
                skipped[name] = _kind(perms)
        return sorted(names)

    def start_files(self):
        """Start the SFTP session of the file reads (:meth:`pipeline`)
        now: the files opened later (in a cutover's downtime) then cost
        no new channel nor a new SFTP server on the host."""
        pipeline = self.pipeline
        self.retrying('starting SFTP', pipeline.start)

    @property
    def pipeline(self):
        """The :class:`~.sftpread.Pipeline` of this connection's file
        reads (internal to :class:`~.remotefile.RemoteFile`)."""
        with self._lock:
            if self._pipeline is None:
                st = self.settings
                self._pipeline = sftpread.Pipeline(
                    self._sftp_session, self.count, self.label,
                    request_size=st.sftp_request_size,
                    max_requests=st.stream_requests)
            return self._pipeline

    def _sftp_session(self, session, generation):
        """The SFTP session of the pipeline on the live connection:
        ``session`` if it belongs to it, else a new one."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                raise _Dropped('connection lost')
            if session is not None and not session.closed and \
                    generation == self.generation:
                return session, generation
            st = self.settings
            # Room for every request in flight (the reads under way and
            # the read-ahead: twice the bound), so the host never waits
            # for the window.
            window = 2 * st.stream_requests * (
                st.sftp_request_size + 1024) + (1 << 20)
            window = min(window, (1 << 31) - 1)
            return sftpread.Session.open(
                self._transport, st.io_timeout,
                window, SFTP_PACKET), self.generation

    def streams(self):
        """This connection and the ones that read large files beside it
        (``ssh_sftp_streams`` in all; each connects on first use, with
        the same host key check and credentials; a stream that could
        not connect is left out)."""
        with self._lock:
            while len(self._siblings) < self.settings.sftp_streams - 1:
                self._siblings.append(Connection(
                    self.host_options, self.settings, environ=self._environ,
                    parent=self))
            return [self] + [c for c in self._siblings if not c._dropped]

    def drop_stream(self, sibling, error):
        """Leave out a stream that could not connect or open a file:
        its stripes are read over the others."""
        LOG.warning('%s: reading over %d connection(s) instead of %d: '
                    'another connection failed: %s', self.label,
                    len(self.streams()) - 1, self.settings.sftp_streams,
                    _short(str(error) or type(error).__name__))
        sibling._dropped = True
        sibling.close()

    def open_file(self, path, size=None, name=None, prefetch=None):
        """A :class:`~.remotefile.RemoteFile` of ``path`` (absolute) on
        the host, read over SFTP.  ``size``: for what SFTP cannot size
        (a block device); a regular file's size is its own.
        ``prefetch``: ranges read with the size, in one round trip, and
        kept (for a file that no longer changes)."""
        return remotefile.RemoteFile(self, path, size=size, name=name,
                                     prefetch=prefetch)
