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

"""The SSH layer's pieces without a server: quoting, options, known_hosts
matching, the password filter."""

import argparse
import io
import logging
import subprocess
import threading
import time

import paramiko
import pytest
from oslo_config import cfg

from any2kvm_os import api
from any2kvm_os import exception
from any2kvm_os import opts
from any2kvm_os.ssh import connection
from any2kvm_os.ssh import credentials
from any2kvm_os.ssh import hostkeys
from any2kvm_os.ssh import options


def test_quote_argv_keeps_every_word_whole():
    assert connection.quote_argv(['xe', 'vm-list', 'name-label=a; b']) == \
        "xe vm-list 'name-label=a; b'"
    assert connection.quote_argv(['echo', "it's"]) == \
        "echo 'it'\"'\"'s'"
    for bad in ('xe vm-list', b'xe', [], ['a', 1]):
        with pytest.raises(TypeError):
            connection.quote_argv(bad)
    with pytest.raises(ValueError, match='NUL'):
        connection.quote_argv(['a\0b'])


def test_host_options_parse_and_refuse():
    ho = options.HostOptions.parse('admin@xen1:2222', known_hosts='/kh')
    assert (ho.user, ho.host, ho.port) == ('admin', 'xen1', 2222)
    assert ho.known_hosts_name == '[xen1]:2222'
    assert ho.label == 'admin@[xen1]:2222'
    ho = options.HostOptions.parse('[::1]:22', user='root')
    assert (ho.host, ho.port, ho.known_hosts_name) == ('::1', 22, '::1')
    assert options.HostOptions('h').user
    for kwargs in ({'host': '-oProxyCommand=x'}, {'host': 'a b'},
                   {'host': 'h', 'port': 0},
                   {'host': 'h', 'password_env': 'A-B'},
                   {'host': 'h', 'host_keys': ['MD5:aa']}):
        with pytest.raises(ValueError):
            options.HostOptions(**kwargs)


def test_shared_command_line_options():
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    fp = 'SHA256:' + 'x' * 43
    args = parser.parse_args(['--identity-file', '/k', '--known-hosts',
                              '/kh', '--host-key', fp + '=',
                              '--password-env', 'XEN_PW'])
    ho = options.host_options(args, 'root@xen1')
    assert (ho.identity_file, ho.known_hosts, ho.host_keys,
            ho.password_env) == ('/k', '/kh', (fp,), 'XEN_PW')
    for bad in (['--host-key', 'nope'], ['--password-env', 'a b']):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    # No option takes a password itself.
    assert not any('password' in a and a != '--password-env'
                   for a in parser._option_string_actions)


def test_options_are_gathered_and_read():
    names = {o.name for o in dict(opts.list_opts())['any2kvm']}
    assert {o.name for o in options.OPTIONS} <= names
    conf = cfg.ConfigOpts()
    api.register_opts(conf)
    conf(args=[])
    conf.set_override('ssh_retries', 2, group='any2kvm')
    settings = options.Settings.from_conf(conf)
    assert settings.retries == 2 and settings.max_output == 64 << 20


@pytest.fixture(scope='module')
def keys():
    return [paramiko.ECDSAKey.generate() for _ in range(3)]


def line(name, key):
    return '%s %s %s\n' % (name, key.get_name(), key.get_base64())


def test_known_hosts_matching(tmp_path, keys):
    a, b, c = keys
    hashed = paramiko.HostKeys.hash_host('[xen1]:2222')
    path = tmp_path / 'known_hosts'
    path.write_text(
        '# comment\n\n'
        + line('xen2,[xen1]:22', c)
        + line(hashed, a)
        + line('*.lab,!bad.lab', b)
        + '@revoked * %s %s\n' % (c.get_name(), c.get_base64())
        + 'garbage\n')
    kh = hostkeys.KnownHosts(str(path), '[xen1]:2222')
    assert [k for _, k in kh.keys] == [a]
    assert kh.revoked == [c]
    assert [k for _, k in hostkeys.KnownHosts(str(path), 'x.lab').keys] \
        == [b]
    assert hostkeys.KnownHosts(str(path), 'bad.lab').keys == []
    ho = options.HostOptions('xen1', port=2222, known_hosts=str(path))
    hostkeys.verify(ho, a)
    with pytest.raises(exception.HostKeyError, match='HOST KEY CHANGED'):
        hostkeys.verify(ho, b)
    with pytest.raises(exception.HostKeyError, match='@revoked'):
        hostkeys.verify(options.HostOptions('xen2', known_hosts=str(path)),
                        c)


def test_fingerprint_as_ssh_keygen_prints_it(keys):
    fp = hostkeys.fingerprint(keys[0])
    assert fp.startswith('SHA256:') and len(fp) == 7 + 43
    assert fp == keys[0].fingerprint   # paramiko's own, same format


def test_preferred_algorithms_put_known_types_first():
    offered = ['ssh-ed25519', 'ecdsa-sha2-nistp256', 'rsa-sha2-512',
               'rsa-sha2-256']
    assert hostkeys.preferred_algorithms(['ssh-rsa'], offered) == [
        'rsa-sha2-512', 'rsa-sha2-256', 'ssh-ed25519', 'ecdsa-sha2-nistp256']


def test_redact_filter_cleans_records_and_tracebacks():
    secret = credentials.Secret('hunter2-secret')
    assert 'hunter2' not in repr(secret) + str(secret)
    credentials.REDACT.add(secret)
    try:
        logger = logging.getLogger('any2kvm_os.test.redact')
        logger.addFilter(credentials.REDACT)
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        logger.debug('auth with %s', 'hunter2-secret')
        try:
            raise ValueError('bad hunter2-secret')
        except ValueError:
            logger.exception('failed')
        logger.removeHandler(handler)
    finally:
        credentials.REDACT.discard(secret)
    text = stream.getvalue()
    assert 'hunter2' not in text
    assert 'auth with ***' in text and 'ValueError: bad ***' in text


def test_password_sources():
    with pytest.raises(exception.SshAuthError, match='PW_X: that env'):
        credentials.from_env('h', 'PW_X', {})
    assert credentials.from_env('h', 'PW_X', {'PW_X': 's'}).reveal() == 's'
    # Not a terminal: nothing is asked.
    assert credentials.prompt('h', io.StringIO()) is None


# -- stripes over several connections -----------------------------------------

def _striped_file(n, stripe=4):
    from any2kvm_os.ssh import remotefile
    f = remotefile.RemoteFile.__new__(remotefile.RemoteFile)
    f._streams = [('conn%d' % i, 'key%d' % i) for i in range(n)]
    f._stripe = stripe
    f._closed = False
    return f


@pytest.mark.parametrize('kind', [['-t', 'ed25519'],
                                  ['-t', 'rsa', '-b', '2048', '-m', 'PEM'],
                                  ['-t', 'ecdsa']])
def test_an_encrypted_identity_file_is_one_line(tmp_path, kind):
    """An identity file with a passphrase (ssh-keygen's, in OpenSSH's
    format and in PEM): the line says to use ssh-agent, whatever the
    library raised (paramiko's PasswordRequiredException, or
    cryptography's TypeError through it)."""
    key = tmp_path / 'enckey'
    subprocess.run(['ssh-keygen', '-q', '-N', 'secret', '-f', str(key)] +
                   kind, check=True, capture_output=True, timeout=60)
    c = connection.Connection(options.HostOptions(
        'xen1', identity_file=str(key)), environ={})
    with pytest.raises(exception.SshAuthError) as e:
        list(c._keys([]))
    assert 'identity file %s is encrypted: add it to ssh-agent' % key in \
        str(e.value), str(e.value)
    assert 'secret' not in str(e.value)
    # Not a key at all: cannot be read, and why.
    key.write_text('not a key\n')
    with pytest.raises(exception.SshAuthError, match='cannot be read'):
        list(c._keys([]))


def test_stripes_go_round_the_streams():
    f = _striped_file(2)
    assert list(f._split(0, 10)) == [(0, 0, 4), (1, 4, 8), (0, 8, 10)]
    assert list(f._split(3, 5)) == [(0, 3, 4), (1, 4, 5)]
    assert list(f._split(5, 5)) == []
    f3 = _striped_file(3)
    assert [i for i, _, _ in f3._split(0, 24)] == [0, 1, 2, 0, 1, 2]
    # Every byte once, in order, whatever the cut.
    for off in range(0, 13):
        for end in range(off, 30):
            spans = list(f3._split(off, end))
            assert [b for _, a, b in spans][:-1] == \
                [a for _, a, b in spans][1:]
            assert sum(b - a for _, a, b in spans) == end - off
            assert all(i == (a // 4) % 3 for i, a, b in spans)
    one = _striped_file(1)
    assert list(one._split(3, 100)) == [(0, 3, 100)]


def test_plans_are_cut_per_stream():
    f = _striped_file(2)
    assert f._per_stream([(2, 9), (20, 2)]) == [
        [(2, 2), (8, 3)], [(4, 4), (20, 2)]]
    assert _striped_file(1)._per_stream([(2, 9)]) == [[(2, 9)]]


def test_streams_share_the_request_bound():
    st = options.Settings(sftp_max_requests=64, sftp_streams=2)
    assert st.stream_requests == 32
    assert options.Settings(sftp_max_requests=3,
                            sftp_streams=4).stream_requests == 1
    assert options.Settings(sftp_streams=0).sftp_streams == 1


def test_second_stream_logs_in_with_the_first_ones_password():
    ho = options.HostOptions('h', user='u', password_env='A2K_PW')
    first = connection.Connection(ho, environ={'A2K_PW': 'sekrit'})
    tried = []
    secret = first._get_password(tried)
    assert secret.reveal() == 'sekrit'
    first.settings.sftp_streams = 2
    second = first.streams()[1]
    tried = []
    assert second._get_password(tried) is secret
    assert tried == ['the password of the first connection']
    # Counted on the first connection.
    second.count(10)
    assert first.bytes_read == 10 and second.bytes_read == 0
    first.close()


def test_reader_process_connection_logs_in_with_the_password_handed():
    """Connection.beside (a reader process's connection) logs in with the
    password the first connection hands (password_to_hand), as a stream
    beside it does; without one it never asks nor reads the variable;
    the password is redacted from logs while the connection lives."""
    from any2kvm_os.ssh import credentials
    ho = options.HostOptions('h', user='u', password_env='A2K_PW')
    first = connection.Connection(ho, environ={'A2K_PW': 'sekrit'})
    assert first.password_to_hand() is None
    first._get_password([])
    handed = first.password_to_hand()
    assert handed == 'sekrit'
    worker = connection.Connection.beside(ho, first.settings, handed)
    tried = []
    assert worker._get_password(tried).reveal() == 'sekrit'
    assert tried == ['the password of the first connection']
    record = logging.LogRecord('x', logging.INFO, __file__, 1, 'pw %s',
                               ('sekrit',), None)
    first.close()
    credentials.REDACT.filter(record)
    assert record.getMessage() == 'pw ***'
    worker.close()
    record = logging.LogRecord('x', logging.INFO, __file__, 1, 'pw %s',
                               ('sekrit',), None)
    credentials.REDACT.filter(record)
    assert record.getMessage() == 'pw sekrit'
    none = connection.Connection.beside(ho, first.settings, None)
    none._environ = {'A2K_PW': 'other'}
    tried = []
    assert none._get_password(tried) is None and tried == []


def test_offers_no_cipher_or_mac_weaker_than_openssh_does():
    import socket
    sock = socket.socket()
    try:
        t = paramiko.Transport(sock)
        connection._prefer_ciphers(t)
        s = t.get_security_options()
        assert s.ciphers[0] == 'aes128-gcm@openssh.com'
        assert not [c for c in s.ciphers if 'cbc' in c or 'des' in c]
        assert set(s.ciphers) <= set(connection.CIPHERS)
        assert not [m for m in s.digests if 'md5' in m or m.endswith('-96')]
        assert set(s.digests) <= set(connection.MACS)
    finally:
        sock.close()


class _GateChannel(object):
    """A channel whose command prints ``pieces`` (then, with ``ends``,
    exits)."""

    def __init__(self, pieces, ends=False):
        self.pieces = list(pieces)
        self.closed = False
        self.ends = ends

    def recv_ready(self):
        return bool(self.pieces)

    def recv(self, n):
        return self.pieces.pop(0)

    def exit_status_ready(self):
        return self.ends and not self.pieces


def _gate_connection():
    c = connection.Connection(options.HostOptions('h'), options.Settings(
        connect_timeout=0.2))
    c.is_active = lambda: True
    return c


def test_the_gate_is_waited_for_and_a_banner_dropped():
    c = _gate_connection()
    ready = connection.GATE_READY
    c._until_ready(_GateChannel([ready]), 'cmd')
    # A login banner from the shell's rc files comes first: dropped.
    c._until_ready(_GateChannel([b'Welcome\n', ready[:5], ready[5:]]), 'cmd')
    assert c.bytes_read == 2 * len(ready) + len(b'Welcome\n')


@pytest.mark.parametrize('pieces,ends', [
    ([], False),                                       # never ready
    ([b'sh: 1: printf: not found\n'], True),           # the shell ended
    ([connection.GATE_READY + b'more'], False),        # output after it
    ([b'x' * (connection._GATE_NOISE + 1)], False),    # endless banner
])
def test_a_gate_that_does_not_come_is_one_line(pieces, ends):
    c = _gate_connection()
    with pytest.raises(exception.SshError) as e:
        c._until_ready(_GateChannel(pieces, ends), 'xe vm-shutdown')
    assert 'did not come to its gate' in str(e.value)
    assert '\n' not in str(e.value)


class _StatusChannel(object):
    """What ``connection._pause`` looks at: paramiko's ``status_event``
    (set by the transport thread when the exit status arrives)."""

    def __init__(self):
        self.status_event = threading.Event()


def test_a_pause_ends_when_the_exit_status_arrives():
    channel = _StatusChannel()
    timer = threading.Timer(0.05, channel.status_event.set)
    timer.start()
    try:
        t = time.monotonic()
        connection._pause(channel, 60)
        # Woken by the status, not after the 60 s asked for.
        assert time.monotonic() - t < 30
    finally:
        timer.cancel()
    # Once the status is in (the output or the end of file may still be
    # on their way), each pause sleeps its length: no busy loop.
    t = time.monotonic()
    connection._pause(channel, 0.05)
    assert time.monotonic() - t >= 0.04
    t = time.monotonic()
    connection._pause(object(), 0.05)
    assert time.monotonic() - t >= 0.04


class _LateChannel(object):
    """A command whose last output, end of file and exit status all
    arrive just after a look found nothing waiting."""

    def __init__(self):
        self.arrived = False
        self.pieces = []
        self.closed = False

    def recv_ready(self):
        if not self.arrived:
            # The transport thread delivers it all right after this.
            self.arrived = True
            self.pieces = [b'the last line\n']
            return False
        return bool(self.pieces)

    def recv(self, n):
        return self.pieces.pop(0)

    def recv_stderr_ready(self):
        return False

    @property
    def eof_received(self):
        return self.arrived

    def exit_status_ready(self):
        return self.arrived

    def recv_exit_status(self):
        return 0

    def close(self):
        self.closed = True


def test_run_all_refuses_a_string_before_anything_runs():
    """A command given as one string is refused (it would be split by
    the remote shell), not taken as a list of its letters."""
    c = _gate_connection()
    with pytest.raises(TypeError):
        c.run_all([['true'], 'xe vm-list'])
    with pytest.raises(TypeError):
        c.run('xe vm-list')


def test_output_that_arrives_with_the_end_is_kept():
    c = _gate_connection()
    r = c._collect(_LateChannel(), ['xe', 'vm-list'], 'xe vm-list',
                   time.monotonic() + 30, 1 << 20)
    assert (r.status, r.stdout) == (0, b'the last line\n')


class _LoginTransport(object):
    def __init__(self, active, auth_timeout=30):
        self.active = active
        self.auth_timeout = auth_timeout

    def is_active(self):
        return self.active


def test_a_login_cut_short_is_a_drop_not_a_refusal():
    c = connection.Connection(options.HostOptions('xen1'))
    now = time.monotonic()
    with pytest.raises(connection._Dropped) as e:
        c._not_refused(_LoginTransport(False), now)
    assert e.value.before_login
    assert 'closed the connection during the login' in str(e.value)
    with pytest.raises(connection._Dropped) as e:
        c._not_refused(_LoginTransport(True, 5), now - 6)
    assert e.value.before_login
    assert 'did not answer the login within 5 s' in str(e.value)
    # Refused on a live connection, in time: a refusal (nothing raised).
    c._not_refused(_LoginTransport(True, 5), now)


def test_a_host_that_accepts_and_never_speaks_is_tried_again(tmp_path):
    """A host whose TCP port accepts and whose sshd sends nothing (hung,
    SIGSTOPped, a proxy in between): no banner within
    ssh_connect_timeout is a login not made yet, tried again with
    backoff, then one line saying what did not come, not paramiko's
    "No existing session"."""
    import socket
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(8)
    held = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return
    threading.Thread(target=accept, daemon=True).start()
    try:
        c = connection.Connection(
            options.HostOptions('127.0.0.1', port=listener.getsockname()[1],
                                host_keys=('SHA256:' + 'A' * 43,)),
            options.Settings(connect_timeout=1, retries=1,
                             retry_max_seconds=10, retry_delay=0.1),
            environ={})
        started = time.monotonic()
        with pytest.raises(exception.SshError) as e:
            c.run(['true'])
        took = time.monotonic() - started
    finally:
        listener.close()
        for sock in held:
            sock.close()
    text = str(e.value)
    assert 'sent no SSH banner' in text and '(2 attempts in' in text, text
    assert 'No existing session' not in text
    assert len(held) == 2 and took < 10, (held, took)


def test_the_banners_own_timeout_is_said_as_the_silence_it_is(
        tmp_path, monkeypatch):
    """On a loaded machine paramiko's banner timeout (its thread) can end
    the wait before start_client's: "Error reading SSH protocol banner",
    with nothing after it.  Said as the host's silence, the same line
    as when start_client's timeout comes first."""
    import socket
    real = paramiko.Transport.start_client

    def start_client(self, event=None, timeout=None):
        # Its own wait made longer than the banner's: the thread's
        # banner timeout ends it, as it can under load.
        return real(self, event=event, timeout=timeout * 5)
    monkeypatch.setattr(paramiko.Transport, 'start_client', start_client)
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(8)
    try:
        c = connection.Connection(
            options.HostOptions('127.0.0.1', port=listener.getsockname()[1],
                                host_keys=('SHA256:' + 'A' * 43,)),
            options.Settings(connect_timeout=1, retries=0),
            environ={})
        with pytest.raises(exception.SshError) as e:
            c.run(['true'])
    finally:
        listener.close()
    assert 'sent no SSH banner' in str(e.value), str(e.value)


@pytest.mark.parametrize('error, cut', [
    (EOFError(), True),
    (ConnectionResetError(104, 'reset'), True),
    (paramiko.SSHException('Error reading SSH protocol banner'), True),
    (paramiko.IncompatiblePeer('no acceptable kex algorithm'), False),
    (paramiko.SSHException('Indecipherable protocol version "x"'), False),
])
def test_a_handshake_cut_short_by_the_host(error, cut):
    assert connection._cut_short(error) is cut


@pytest.mark.parametrize('name', [connection.WIRE_LOGGER,
                                  connection.WIRE_LOGGER + '.sftp',
                                  'paramiko.transport'])
def test_paramikos_errors_are_logged_with_debug_only(name):
    """paramiko's transport logs a dead link at ERROR from its own
    thread; the caller gets the failure as our error (or our retry
    warning), so the record reaches a handler only with --debug."""
    connection.Connection(options.HostOptions('h'))
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    root = logging.getLogger()
    ours = logging.getLogger('any2kvm_os')
    saved = root.level, ours.level
    root.addHandler(handler)
    try:
        root.setLevel(logging.WARNING)
        ours.setLevel(logging.WARNING)
        logging.getLogger(name).error('Socket exception: reset (104)')
        assert records == []
        # Our own warnings still pass.
        logging.getLogger('any2kvm_os.ssh.connection').warning('lost')
        assert [r.getMessage() for r in records] == ['lost']
        ours.setLevel(logging.DEBUG)
        root.setLevel(logging.DEBUG)
        logging.getLogger(name).error('Socket exception: reset (104)')
        assert records[-1].getMessage() == 'Socket exception: reset (104)'
        assert records[-1].levelno == logging.ERROR
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])


def test_jump_host_options():
    """--jump-host and --jump-host-key: the jump host's HostOptions (the
    same identity file, known_hosts and password variable, its own
    pins), plain data for a reader process, at most MAX_JUMPS deep."""
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    pin = 'SHA256:' + 'A' * 43
    args = parser.parse_args([
        '--identity-file', '/k', '--known-hosts', '/kh',
        '--password-env', 'PW', '--jump-host', 'ops@bastion:2200',
        '--jump-host-key', pin])
    ho = options.host_options(args, 'root@xen1')
    j = ho.jump
    assert (j.user, j.host, j.port, j.identity_file, j.known_hosts,
            j.password_env, j.host_keys) == (
        'ops', 'bastion', 2200, '/k', '/kh', 'PW', (pin,))
    assert ho.host_keys == () and j.pin_option == '--jump-host-key'
    assert ho.route == 'root@xen1 (via ops@[bastion]:2200)'
    again = options.HostOptions(**ho.as_dict())
    assert again.as_dict() == ho.as_dict()
    assert again.jump.label == 'ops@[bastion]:2200'
    # A reader process's refusal of the jump host's key names the option
    # that pins it, as the first connection's does.
    assert again.jump.pin_option == '--jump-host-key'
    assert again.pin_option == '--host-key'
    # Without --jump-host: none, or the configuration's (ssh_jump_host),
    # which --jump-host overrides; a bad one is refused by the parser.
    assert options.host_options(parser.parse_args([]), 'xen1').jump is None
    assert options.from_args(parser.parse_args([]), 'ops@b1')[
        'jump'].label == 'ops@b1'
    assert options.from_args(args, 'ops@b1')['jump'].host == 'bastion'
    with pytest.raises(SystemExit):
        parser.parse_args(['--jump-host', 'bastion:99999'])
    # --no-jump-host: direct, whatever the configuration says; it and
    # --jump-host exclude each other.
    direct = parser.parse_args(['--no-jump-host'])
    assert options.from_args(direct, 'ops@b1')['jump'] is None
    with pytest.raises(SystemExit):
        parser.parse_args(['--no-jump-host', '--jump-host', 'bastion'])
    # Jumps of jumps, bounded.
    hop = None
    for n in range(options.MAX_JUMPS):
        hop = options.HostOptions('j%d' % n, user='u', jump=hop)
    assert options.HostOptions('h', user='u', jump=hop).jump is hop
    with pytest.raises(ValueError, match='more than 4 jump hosts'):
        options.HostOptions('h', user='u', jump=options.HostOptions(
            'x', user='u', jump=hop))


def test_a_reader_process_logs_in_to_the_jump_host_as_the_first_did():
    """The jump host's password (taken from the variable by the first
    connection) reaches a reader process's connection over its pipe, as
    the host's does: the worker's environment has no variable, and it
    never asks."""
    jump = options.HostOptions('bastion', user='ops', password_env='PW')
    ho = options.HostOptions('xen1', user='root', password_env='PW',
                             jump=jump)
    first = connection.Connection(ho, environ={'PW': 'jump-secret'})
    assert first.password_to_hand(jump=True) is None    # not logged in yet
    first._jump_connection()._get_password([])
    assert first.password_to_hand(jump=True) == 'jump-secret'
    assert first.password_to_hand() is None
    worker = connection.Connection.beside(
        options.HostOptions(**ho.as_dict()), options.Settings(), 'host-pw',
        first.password_to_hand(jump=True))
    assert worker._jump.host_options.label == 'ops@bastion'
    tried = []
    assert worker._jump._get_password(tried).reveal() == 'jump-secret'
    assert worker._get_password([]).reveal() == 'host-pw'
    assert tried == ['the password of the first connection']
    # Without a jump host: nothing to hand.
    plain = connection.Connection(options.HostOptions('xen2', user='u'))
    assert plain.password_to_hand(jump=True) is None
    for c in (first, worker, plain):
        c.close()
