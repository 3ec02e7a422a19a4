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

"""The SSH layer against a real OpenSSH server on 127.0.0.1
(tests/lib/sshd.py): no mocks."""

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from any2kvm_os import exception
from any2kvm_os.formats import probe
from any2kvm_os import fileio
from any2kvm_os.ssh import connection as conn_mod
from any2kvm_os.ssh import options
from tests.lib import sshd as sshd_lib
from tests.lib import vhdbuild

PASSWORD = 'Pw-never-seen-7f3a9c'   # wrong on purpose: no account has it


def fast():
    """Settings that retry at once (tests are in a hurry)."""
    return options.Settings(connect_timeout=10, io_timeout=10,
                            retry_delay=0.05, max_retry_delay=0.2,
                            retries=10, sftp_max_requests=8)


def host(server, **kwargs):
    args = dict(port=server.port, user=server.user,
                identity_file=str(server.client_key),
                known_hosts=str(server.known_hosts))
    args.update(kwargs)
    return options.HostOptions(server.host, **args)


def connect(server, settings=None, environ=None, **kwargs):
    # No ssh-agent of the machine running the tests takes part.
    environ = {} if environ is None else environ
    return conn_mod.Connection(host(server, **kwargs), settings or fast(),
                               environ=environ).connect()


def window(c):
    """Most bytes a connection's reads may have asked for ahead."""
    st = c.settings
    return 2 * st.sftp_max_requests * st.sftp_request_size


def one_line(error):
    text = str(error)
    assert '\n' not in text, text
    return text


# -- logging in -----------------------------------------------------------

def test_key_login_runs_a_command(sshd):
    with connect(sshd) as c:
        r = c.run(['id', '-un'])
    assert (r.status, r.stdout, r.stderr) == (0, sshd.user.encode() + b'\n',
                                              b'')


def test_close_ends_the_transport_thread(sshd):
    """No transport thread outlives its connection (blocked in recv()
    until the server hangs up, it would log then, into whatever stream
    is gone by that time)."""
    with connect(sshd) as c:
        c.run(['true'])
        transport = c._transport
    transport.join(30)
    assert not transport.is_alive()


def test_pinned_host_key_is_accepted_without_known_hosts(sshd, tmp_path):
    with connect(sshd, host_keys=[sshd.fingerprint],
                 known_hosts=str(tmp_path / 'none')) as c:
        assert c.check_run(['true']).status == 0


def test_wrong_pinned_key_is_refused_with_the_offered_one(sshd):
    wrong = 'SHA256:' + 'A' * 43
    with pytest.raises(exception.HostKeyError) as e:
        connect(sshd, host_keys=[wrong])
    text = one_line(e.value)
    assert sshd.fingerprint in text and wrong in text
    assert 'pinned' in text


def test_host_missing_from_known_hosts_is_refused(sshd, tmp_path):
    other = tmp_path / 'known_hosts'
    kind, blob = sshd.host_public_key()
    other.write_text('[127.0.0.1]:1 %s %s\n' % (kind, blob))
    with pytest.raises(exception.HostKeyError) as e:
        connect(sshd, known_hosts=str(other))
    text = one_line(e.value)
    assert 'not known' in text and sshd.fingerprint in text
    assert '--host-key %s' % sshd.fingerprint in text
    with pytest.raises(exception.HostKeyError, match='does not exist'):
        connect(sshd, known_hosts=str(tmp_path / 'absent'))


def test_hashed_known_hosts_entry_is_accepted(sshd, tmp_path):
    path = sshd.write_known_hosts(tmp_path / 'hashed', hashed=True)
    assert path.read_text().startswith('|1|')
    with connect(sshd, known_hosts=str(path)) as c:
        assert c.run(['true']).status == 0


def test_changed_host_key_is_refused(sshd_factory):
    server = sshd_factory()
    old = server.fingerprint
    connect(server).close()
    server.regenerate_host_key()
    new = server.fingerprint
    assert new != old
    with pytest.raises(exception.HostKeyError) as e:
        connect(server)
    text = one_line(e.value)
    assert 'HOST KEY CHANGED' in text
    assert old in text and new in text and '--host-key %s' % new in text


def test_wrong_password_from_the_environment(sshd, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ('', 'paramiko', conn_mod.WIRE_LOGGER):
        logging.getLogger(name).setLevel(logging.DEBUG)
    with pytest.raises(exception.SshAuthError) as e:
        connect(sshd, identity_file=None, password_env='ANY2KVM_TEST_PW',
                environ={'ANY2KVM_TEST_PW': PASSWORD})
    text = one_line(e.value)
    assert 'authentication failed' in text
    assert 'password from $ANY2KVM_TEST_PW' in text
    assert 'Failed password for %s' % sshd.user in sshd.log_text()
    # Never in a message, a log record (paramiko's at DEBUG included) or
    # this process's argv.
    assert PASSWORD not in text
    assert caplog.records
    assert any(r.name.startswith(conn_mod.WIRE_LOGGER)
               for r in caplog.records)
    assert PASSWORD not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
    with open('/proc/self/cmdline', 'rb') as f:
        assert PASSWORD.encode() not in f.read()


def test_password_variable_not_set(sshd):
    with pytest.raises(exception.SshAuthError) as e:
        connect(sshd, identity_file=None, password_env='ANY2KVM_UNSET_PW')
    assert 'ANY2KVM_UNSET_PW' in one_line(e.value)
    assert 'not set' in str(e.value)


def test_no_credential_is_one_line(sshd):
    with pytest.raises(exception.SshAuthError) as e:
        connect(sshd, identity_file=None)
    assert 'tried: nothing' in one_line(e.value)
    assert 'give a key (--identity-file, or ssh-agent) or a password ' \
        '(--password-env VAR' in one_line(e.value)


# -- commands -------------------------------------------------------------

def test_metacharacters_are_one_literal_word(sshd, tmp_path):
    marker = tmp_path / 'pwned'
    words = ['a; touch %s' % marker, 'it\'s "mine"', '$(touch %s)' % marker,
             '`touch %s`' % marker, '*', '| touch %s &' % marker,
             'new\nline', '']
    with connect(sshd) as c:
        r = c.check_run(['printf', '<%s>\\n'] + words)
    assert r.stdout.decode() == ''.join('<%s>\n' % w for w in words)
    assert not marker.exists()


def test_batches_and_many_commands_side_by_side(sshd):
    """A batch (``run_many``) runs its commands in one round trip, each
    word quoted, and gives each one's output; the first that fails stops
    the rest and names itself, with the outputs before it.  More queries
    side by side than sshd's MaxSessions (10) run a group at a time; as
    many commands that change things are refused in one line, before any
    of them runs."""
    words = ['a; touch pwned', "it's", '$(id)']
    with connect(sshd) as c:
        outs = c.run_many([['printf', '%s\\n', w] for w in words] +
                          [['printf', 'no newline']])
        assert outs == [w.encode() + b'\n' for w in words] + [
            b'no newline']
        with pytest.raises(exception.RemoteCommandError,
                           match=r'false.*exit status 1') as e:
            c.run_many([['echo', 'one'], ['false'], ['echo', 'never']])
        assert e.value.outputs == [b'one\n']
        got = c.run_all([['echo', str(i)] for i in range(16)],
                        idempotent=True)
        assert [r.stdout for r in got] == [b'%d\n' % i for i in range(16)]
        with pytest.raises(exception.SshError,
                           match=r'refused session channel 11 of 16 .*'
                           'MaxSessions') as e:
            c.run_all([['echo', str(i)] for i in range(16)])
        assert '\n' not in str(e.value)
        # The connection is still of use, once sshd has closed the
        # sessions given up.
        for _ in range(50):
            try:
                assert c.check_run(['echo', 'still']).stdout == b'still\n'
                break
            except exception.SshError:
                time.sleep(0.1)
        else:
            raise AssertionError('the connection is of no use')


def test_failed_command_names_itself_and_its_stderr(sshd):
    with connect(sshd) as c:
        with pytest.raises(exception.RemoteCommandError) as e:
            c.check_run(['sh', '-c', 'echo "no such VM" >&2; exit 3'])
    text = one_line(e.value)
    assert 'exit status 3' in text and 'no such VM' in text
    assert "sh -c 'echo" in text


def test_command_timeout_and_output_bound(sshd):
    with connect(sshd) as c:
        start = time.monotonic()
        with pytest.raises(exception.RemoteCommandError,
                           match='no exit') as e:
            c.run(['sleep', '30'], timeout=0.5)
        assert time.monotonic() - start < 10
        # Said apart from a command that failed: it may still be at work.
        assert e.value.timed_out is True
        with pytest.raises(exception.RemoteCommandError,
                           match='more than 1000 bytes'):
            c.run(['head', '-c', '100000', '/dev/zero'], max_output=1000)
        # stderr is kept up to its bound, the rest dropped.
        r = c.run(['sh', '-c', 'head -c 200000 /dev/zero >&2'])
        assert r.status == 0 and len(r.stderr) == options.MAX_STDERR
        # The connection still serves.
        assert c.run(['echo', 'ok']).stdout == b'ok\n'


# -- a command held at its gate (the cutover's shutdown) ------------------

def test_armed_command_runs_when_fired_and_only_then(sshd, tmp_path):
    fired = tmp_path / 'fired'
    never = tmp_path / 'never'
    marker = tmp_path / 'pwned'
    words = ['a; touch %s' % marker, 'it\'s "mine"', '$(touch %s)' % marker,
             'go', '']
    with connect(sshd) as c:
        a = c.armed(['sh', '-c', 'touch "$1"; printf "<%s>" "$@"; exit 3',
                     'sh', str(fired)] + words)
        b = c.armed(['touch', str(never)])
        assert a.ready and b.ready
        assert not fired.exists()
        r = a.fire(timeout=60)
        assert not a.ready
        # Every word arrived whole: quoted through the gate too.
        assert r.status == 3 and fired.exists()
        assert r.stdout.decode() == ''.join(
            '<%s>' % w for w in [str(fired)] + words)
        # Closed without firing: the shell at its gate reads the end of
        # its input and runs nothing.
        b.close()
        assert not b.ready
        c.check_run(['true'])
    assert not never.exists() and not marker.exists()
    with connect(sshd) as c:
        d = c.armed(['touch', str(never)])
    # The connection closed under it: nothing runs either.
    assert not d.ready and not never.exists()


def test_channels_closed_while_data_arrives_leave_the_connection_alive(
        sshd):
    # A command stopped at its output bound is closed while the server
    # still sends: paramiko's transport thread then feeds a channel whose
    # select() pipe Channel.close() has just closed, and a write to that
    # closed descriptor killed the whole transport (seen once in CI as
    # "[Errno 9] Bad file descriptor" on the next command).  The client
    # must not use that pipe, so every round here must leave the
    # connection serving.
    with connect(sshd) as c:
        for _ in range(15):
            with pytest.raises(exception.RemoteCommandError,
                               match='more than 1000 bytes'):
                c.run(['sh', '-c', 'head -c 1000000 /dev/zero; '
                       'head -c 1000000 /dev/zero >&2'], max_output=1000)
            assert c.run(['echo', 'ok']).stdout == b'ok\n'


def test_keepalives_flow_on_an_idle_connection(sshd, caplog):
    # ssh_keepalive_interval: an idle connection sends a keepalive global
    # request at that interval (paramiko logs each on the wire logger),
    # and 0 sends none.
    caplog.set_level(logging.DEBUG, logger=conn_mod.WIRE_LOGGER)

    def keepalives():
        return sum('Sending global request "keepalive' in r.getMessage()
                   for r in caplog.records)

    st = fast()
    st.keepalive_interval = 1
    with connect(sshd, settings=st) as c:
        deadline = time.monotonic() + 30
        while keepalives() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert keepalives() >= 2
        assert c.run(['echo', 'ok']).stdout == b'ok\n'
    caplog.clear()
    st.keepalive_interval = 0
    with connect(sshd, settings=st) as c:
        time.sleep(2.5)
        assert c.run(['echo', 'ok']).stdout == b'ok\n'
    assert keepalives() == 0


def test_environment_of_the_test_bed(sshd_factory, tmp_path):
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'xe').write_text('#!/bin/sh\necho "fake xe $*"\n')
    (fake / 'xe').chmod(0o755)
    server = sshd_factory(env={'PATH': '%s:/usr/bin:/bin' % fake})
    with connect(server) as c:
        assert c.check_run(['xe', 'vm-list']).stdout == b'fake xe vm-list\n'
        with c.open_file(str(fake / 'xe')) as f:
            assert f.pread(9, 0) == b'#!/bin/sh'


# -- files ----------------------------------------------------------------

def test_large_pread_equals_local_bytes(sshd, tmp_path):
    data = os.urandom(5 << 20) * 3 + os.urandom(12345)
    path = tmp_path / 'disk.bin'
    path.write_bytes(data)
    with connect(sshd) as c:
        before = c.bytes_read
        with c.open_file(str(path)) as f:
            assert f.size == len(data)
            assert f.name.endswith(':%s' % path)
            assert f.pread(len(data) + 100, 0) == data
            assert f.bytes_read == len(data)
            for offset, length in [(1, 1), (70000, 300000),
                                   (len(data) - 5, 100), (len(data), 10),
                                   (12 << 20, 0)]:
                assert f.pread(length, offset) == \
                    data[offset:offset + length]
            assert list(f.data_runs(10, 1 << 40)) == [(10, len(data), True)]
            assert f.bytes_read == len(data) + 1 + 300000 + 5
        assert c.bytes_read - before == f.bytes_read


def test_remote_vhd_reads_like_a_local_one(sshd, tmp_path):
    image, _ = vhdbuild.build(8 << 20, {1: (None, b'remote' * 1000)})
    path = tmp_path / 'disk.vhd'
    path.write_bytes(image)
    with connect(sshd) as c, c.open_file(str(path)) as remote, \
            fileio.FileView.open_path(str(path)) as local:
        a = probe.open_layer(remote)
        b = probe.open_layer(local)
        assert type(a) is type(b)
        assert list(a.block_status(0, 8 << 20)) == \
            list(b.block_status(0, 8 << 20))
        assert a.read(0, 4096) == b.read(0, 4096)


def test_missing_and_odd_files(sshd, tmp_path):
    with connect(sshd) as c:
        with pytest.raises(exception.SshError, match='No such file'):
            c.open_file(str(tmp_path / 'absent'))
        with pytest.raises(exception.SshError, match='not a regular file'):
            c.open_file('/dev/null')
        with pytest.raises(ValueError, match='absolute'):
            c.open_file('relative/path')
        # The connection is not taken for lost after a remote error.
        assert c.generation == 1


def test_listdir_over_the_reading_session(sshd, tmp_path):
    """Regular files only, sorted, names with spaces kept; the limit and
    a missing directory are one-line errors; the listing and the reads
    share one SFTP session (one sftp-server on the host)."""
    d = tmp_path / 'sr'
    d.mkdir()
    names = ['%03d.vhd' % i for i in range(150)] + ['a b .vhd']
    for name in names:
        (d / name).write_bytes(b'x' * 10)
    (d / 'sub').mkdir()
    os.symlink(str(d / '000.vhd'), str(d / 'link.vhd'))
    with connect(sshd) as c:
        f = c.open_file(str(d / '001.vhd'))
        skipped = {}
        assert c.listdir(str(d), 1000, skipped=skipped) == sorted(names)
        assert skipped == {'sub': 'a directory',
                           'link.vhd': 'a symbolic link (not followed)'}
        assert f.pread(10, 0) == b'x' * 10
        with pytest.raises(exception.SshError) as e:
            c.listdir(str(d), 150)
        assert 'more than 150 entries' in one_line(e.value)
        with pytest.raises(exception.SshError) as e:
            c.listdir(str(tmp_path / 'absent'), 10)
        assert 'cannot list' in one_line(e.value)
        assert c.listdir(str(d), 1000) == sorted(names)
        assert c.generation == 1
        # The SFTP servers of this connection: children of its session
        # process, as this shell is.
        r = c.run(['sh', '-c', 'pgrep -c -P "$PPID" -f sftp-server || '
                   'true'])
        assert r.stdout.strip() == b'1'


def test_read_resumes_after_the_connection_is_cut(sshd_factory, tmp_path):
    server = sshd_factory()
    data = os.urandom(24 << 20)
    path = tmp_path / 'big.bin'
    path.write_bytes(data)
    c = connect(server)
    try:
        f = c.open_file(str(path))
        assert f.pread(4096, 0) == data[:4096]
        # Between two reads.
        assert server.kill_sessions() >= 1
        time.sleep(0.2)
        assert f.pread(1 << 20, 1000) == data[1000:1000 + (1 << 20)]
        assert c.generation == 2
        # In the middle of a read.
        killed = []

        def cut():
            while f.bytes_read < (4 << 20):
                time.sleep(0.001)
            killed.append(server.kill_sessions())

        t = threading.Thread(target=cut)
        t.start()
        assert f.pread(len(data), 0) == data
        t.join()
        assert killed and killed[0] >= 1
        assert c.generation == 3
        # Bytes received: whole replies are counted; what was in flight
        # at the cut is asked again.
        wanted = 4096 + (1 << 20) + len(data)
        assert wanted <= f.bytes_read <= wanted + 2 * window(c)
        assert c.bytes_read == f.bytes_read
        f.close()
    finally:
        c.close()


def test_idempotent_command_runs_again_after_a_cut(sshd_factory):
    server = sshd_factory()
    with connect(server) as c:
        assert c.run(['true']).status == 0
        server.kill_sessions()
        time.sleep(0.2)
        assert c.run(['echo', 'again'], idempotent=True).stdout == \
            b'again\n'
        # Cut while a command runs: not repeated unless idempotent.
        timer = threading.Timer(0.5, server.kill_sessions)
        timer.start()
        with pytest.raises(exception.SshError, match='not repeated'):
            c.run(['sleep', '5'])
        timer.join()
        assert c.run(['echo', 'after'], idempotent=True).stdout == \
            b'after\n'


def test_gives_up_when_the_host_is_gone(sshd_factory, tmp_path):
    server = sshd_factory()
    path = tmp_path / 'f'
    path.write_bytes(b'x' * 100000)
    c = connect(server, settings=options.Settings(
        connect_timeout=2, io_timeout=2, retries=2, retry_delay=0.05,
        max_retry_delay=0.1))
    try:
        f = c.open_file(str(path))
        server.stop()
        start = time.monotonic()
        with pytest.raises(exception.SshError) as e:
            f.pread(100, 0)
        assert 'gave up after 2 reconnection attempts' in one_line(e.value)
        assert time.monotonic() - start < 10
    finally:
        c.close()


def test_first_connection_refused_is_one_line(tmp_path):
    port = sshd_lib.free_port()
    ho = options.HostOptions('127.0.0.1', port=port,
                             known_hosts=str(tmp_path / 'kh'))
    with pytest.raises(exception.SshError) as e:
        conn_mod.Connection(ho, fast(), environ={}).connect()
    assert 'cannot connect' in one_line(e.value)


class _Unauthenticated(object):
    """A connection to ``server`` that never logs in: with sshd's
    ``MaxStartups 1`` every later connection is dropped while it stays.
    :meth:`release_after_a_drop` closes it once sshd has logged a drop
    (from a thread, within 60 s)."""

    def __init__(self, server):
        self.server = server
        # sshd may still count the connection that saw it was up (the
        # fixture's): dropped too, until that one's process is gone.
        deadline = time.monotonic() + 30
        while True:
            self.sock = socket.create_connection(
                (server.host, server.port), timeout=10)
            if self.sock.recv(64).startswith(b'SSH-2.0-'):
                break
            self.sock.close()
            assert time.monotonic() < deadline, 'sshd drops everything'
            time.sleep(0.05)
        self._before = self._count()

    def _count(self):
        return self.server.log_text().count('past MaxStartups')

    def drops(self):
        """Connections sshd dropped since this one was up."""
        return self._count() - self._before

    def release_after_a_drop(self):
        def wait():
            deadline = time.monotonic() + 60
            while not self.drops() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.close()
        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        return thread

    def close(self):
        self.sock.close()


def test_first_connection_dropped_before_login_is_tried_again(
        sshd_factory, caplog):
    # A busy host's sshd drops connections beyond MaxStartups before they
    # log in: nothing ran, so even the first connection tries again.
    server = sshd_factory(max_startups='1')
    holder = _Unauthenticated(server)
    try:
        thread = holder.release_after_a_drop()
        settings = options.Settings(connect_timeout=10, io_timeout=10,
                                    retry_delay=0.2, max_retry_delay=1,
                                    retries=20, retry_max_seconds=120)
        with caplog.at_level(logging.WARNING, logger=conn_mod.__name__):
            c = connect(server, settings=settings)
        try:
            assert c.run(['echo', 'in']).stdout == b'in\n'
        finally:
            c.close()
        thread.join(60)
        assert holder.drops() >= 1
        assert 'no login yet' in caplog.text
    finally:
        holder.close()


def test_first_connection_always_dropped_gives_up_in_one_line(
        sshd_factory):
    server = sshd_factory(max_startups='1')
    holder = _Unauthenticated(server)
    try:
        settings = options.Settings(connect_timeout=10, io_timeout=10,
                                    retry_delay=0.05, max_retry_delay=0.1,
                                    retries=2)
        with pytest.raises(exception.SshError) as e:
            connect(server, settings=settings)
        text = one_line(e.value)
        assert 'could not log in' in text and '3 attempts' in text, text
        assert 'MaxStartups' in text
        assert holder.drops() == 3
    finally:
        holder.close()


# -- cuts and stalls in the middle of pipelined reads ---------------------

class Cutter(object):
    """A thread that signals the sessions of ``server`` once ``f`` has
    received ``after`` more bytes (or gives up when told, or after a
    deadline); ``fired`` says whether it did.  Where it lands depends
    on the scheduler: tests count on :func:`cut_in_reader` for that."""

    def __init__(self, server, f, after, sig=signal.SIGKILL):
        self.server, self.f, self.sig = server, f, sig
        self.target = f.bytes_read + after
        self.done = threading.Event()
        self.fired = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + 60
        while not self.done.is_set() and time.monotonic() < deadline:
            if self.f.bytes_read >= self.target:
                self.fired.append(self.server.signal_tree(self.sig))
                return
            self.done.wait(0.002)

    def stop(self):
        self.done.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


class cut_in_reader(object):
    """Signal the sessions of ``server`` from the reading thread itself,
    the moment the connection has counted ``after`` more bytes: right
    after a reply was parsed, with others in flight.  Deterministic.
    Must be installed before the connection's first file is opened."""

    def __init__(self, server, c, sig=signal.SIGKILL):
        self.server, self.c, self.sig = server, c, sig
        self.target = None
        self.fired = []
        original = c.count

        def count(n):
            original(n)
            if self.target is not None and c.bytes_read >= self.target:
                self.target = None
                self.fired.append(self.server.signal_tree(self.sig))
        c.count = count

    def arm(self, after):
        self.target = self.c.bytes_read + after


def test_pipelined_read_survives_cuts_anywhere(sshd_factory, tmp_path):
    """Connections cut at twenty points of planned and unplanned reads:
    every byte right, the bytes read within bounds."""
    server = sshd_factory()
    rng = random.Random(10)
    data = os.urandom(6 << 20)
    path = tmp_path / 'disk.bin'
    path.write_bytes(data)
    c = conn_mod.Connection(host(server), fast(), environ={})
    cutter = cut_in_reader(server, c)
    try:
        f = c.open_file(str(path))
        wanted = 0
        for trial in range(20):
            off = rng.randrange(0, 1 << 20)
            n = rng.randrange(1 << 20, len(data) - off)
            if trial % 2:
                f.will_read([(off, n // 2), (off + n // 2, n - n // 2)])
            cutter.arm(rng.randrange(1, n - 1))
            assert f.pread(n, off) == data[off:off + n], trial
            wanted += n
            assert len(cutter.fired) == trial + 1
        # A cut after the last reply arrived is noticed by the next read.
        assert 2 <= c.generation <= 21
        assert wanted <= f.bytes_read <= wanted + 21 * window(c)
        # Cuts from another thread, wherever they land.
        for trial in range(10):
            off = rng.randrange(0, 1 << 20)
            other = Cutter(server, f, rng.randrange(1, 4 << 20))
            try:
                got = f.pread(len(data) - off, off)
            finally:
                other.stop()
            assert got == data[off:], trial
        f.close()
    finally:
        c.close()


def test_stalled_host_is_left_and_the_read_goes_on(sshd_factory, tmp_path):
    """The host stops answering (its session processes stopped) with
    read-ahead in flight: after ssh_io_timeout the connection is taken
    for dead, a new one is made and the read goes on."""
    server = sshd_factory()
    data = os.urandom(8 << 20)
    path = tmp_path / 'disk.bin'
    path.write_bytes(data)
    c = conn_mod.Connection(host(server), options.Settings(
        connect_timeout=10, io_timeout=2, retry_delay=0.05,
        max_retry_delay=0.2, sftp_max_requests=8), environ={})
    stopper = cut_in_reader(server, c, sig=signal.SIGSTOP)
    try:
        f = c.open_file(str(path))
        f.will_read([(0, len(data))])
        stopper.arm(300 << 10)
        start = time.monotonic()
        assert f.pread(len(data), 0) == data
        elapsed = time.monotonic() - start
        assert len(stopper.fired) == 1 and stopper.fired[0]
        assert c.generation == 2
        # Bounded: about the I/O timeout, far from forever.
        assert elapsed < 60
        f.close()
    finally:
        c.close()
        for pids in stopper.fired:
            server.signal_tree(signal.SIGKILL, pids)
            server.signal_tree(signal.SIGCONT, pids)


def test_remote_chain_read_with_a_plan_and_a_cut(sshd_factory, fattools,
                                                 tmp_path):
    """A remote VHD chain (FATtools) folded and copied with read-ahead,
    cut at several points: the bytes of the model."""
    from any2kvm_os.chain import copy as chain_copy
    from any2kvm_os.chain import layer_chain
    from any2kvm_os.containers import remote
    from any2kvm_os import limits as limits_mod
    from tests.lib import imagegen
    from tests.lib import vhdchains

    server = sshd_factory()
    built = vhdchains.build_complex_chain(tmp_path / 'sr')
    leaf = str(built.leaf.path)
    limits = limits_mod.Limits()

    class Sink(object):
        fresh = True

        def __init__(self):
            self.buf = bytearray()

        def resize(self, size):
            self.buf = bytearray(size)

        def write_data(self, offset, data, over_hole):
            self.buf[offset:offset + len(data)] = data

        def zero_range(self, offset, length):
            self.buf[offset:offset + length] = bytes(length)

    c = conn_mod.Connection(host(server), fast(), environ={})
    cutter = cut_in_reader(server, c)
    try:
        for after in (1, 600, 5000, 70000, 700000, 2 << 20, 4 << 20):
            container = remote.RemoteDirectoryContainer(
                c, os.path.dirname(leaf), os.path.basename(leaf), limits)
            try:
                cutter.arm(after)
                chain = layer_chain.resolve(container, container.leaf_name,
                                            limits)
                sink = Sink()
                chain_copy.copy_chain(chain, sink)
                assert imagegen.sha256_bytes(bytes(sink.buf)) == \
                    built.leaf.model.sha256(), after
            finally:
                container.close()
        assert len(cutter.fired) >= 5
    finally:
        c.close()


@pytest.fixture
def agent(tmp_path, monkeypatch):
    """A private ssh-agent (its socket in this test's directory, no key
    kept more than 5 minutes), stopped after; SSH_AUTH_SOCK points at it
    in this process only."""
    if not shutil.which('ssh-agent') or not shutil.which('ssh-add'):
        pytest.skip('ssh-agent is not installed')
    sock = str(tmp_path / 'agent.sock')
    proc = subprocess.Popen(['ssh-agent', '-D', '-a', sock, '-t', '300'],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline:
            assert proc.poll() is None, 'ssh-agent ended'
            time.sleep(0.05)
        assert os.path.exists(sock), 'ssh-agent made no socket'
        monkeypatch.setenv('SSH_AUTH_SOCK', sock)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_login_with_a_key_from_ssh_agent(sshd, agent):
    """No identity file: the key comes from ssh-agent (``ssh-add``); with
    the agent empty the login is refused in one line that says what was
    tried."""
    env = dict(os.environ, SSH_AUTH_SOCK=agent)
    with pytest.raises(exception.SshAuthError) as e:
        connect(sshd, identity_file=None, environ={'SSH_AUTH_SOCK': agent})
    assert 'ssh-agent (0 keys)' in one_line(e.value)
    r = subprocess.run(['ssh-add', str(sshd.client_key)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    with connect(sshd, identity_file=None,
                 environ={'SSH_AUTH_SOCK': agent}) as c:
        r = c.run(['id', '-un'])
    assert (r.status, r.stdout) == (0, sshd.user.encode() + b'\n')


# -- large files over several connections -------------------------------------

def striped(**kwargs):
    """Settings that read files of 1 MiB or more over two connections in
    stripes of 256 KiB."""
    args = dict(connect_timeout=10, io_timeout=10, retry_delay=0.05,
                max_retry_delay=0.2, retries=3, sftp_max_requests=8,
                sftp_streams=2, stripe_min=1 << 20, stripe=256 << 10)
    args.update(kwargs)
    return options.Settings(**args)


def test_striped_read_over_two_connections(sshd, tmp_path):
    rng = random.Random(3)
    data = os.urandom((6 << 20) + 12345)
    path = tmp_path / 'big.bin'
    path.write_bytes(data)
    with conn_mod.Connection(host(sshd), striped(), environ={}) as c:
        f = c.open_file(str(path))
        # Reading its tables opens no other connection; a plan does.
        assert f.pread(4096, 0) == data[:4096]
        assert len(f._streams) == 1 and not c._siblings
        f.will_read([(0, len(data))])
        assert len(f._streams) == 2 and f._streams[1][0] is not c
        # AES-GCM agreed with OpenSSH, on both connections.
        for conn, _key in f._streams:
            assert conn._transport.remote_cipher == 'aes128-gcm@openssh.com'
        f.will_read([(0, len(data))])
        got = b''.join(f.pread(1 << 20, off)
                       for off in range(0, len(data), 1 << 20))
        assert got == data
        wanted = len(data)
        for _ in range(20):
            off = rng.randrange(len(data))
            n = rng.randrange(1, 1 << 20)
            assert f.pread(n, off) == data[off:off + n]
            wanted += min(n, len(data) - off)
        spans = [(1000, 512), ((256 << 10) - 10, 20), (5 << 20, 4096)]
        assert f.preadv(spans) == [data[o:o + n] for o, n in spans]
        # Both connections carried data; the first counts it all.
        per = [conn.pipeline.bytes_read(key) for conn, key in f._streams]
        assert all(n > 0 for n in per), per
        assert c.bytes_read == f.bytes_read == sum(per) >= wanted
        f.close()
        # A small file is read over the first connection only.
        small = tmp_path / 'small.bin'
        small.write_bytes(data[:4096])
        g = c.open_file(str(small))
        assert len(g._streams) == 1 and g.pread(5000, 0) == data[:4096]
        g.close()


def _cut_second_stream(c, f, after):
    """Shut the second connection's socket (a drop the client sees) from
    the reading thread, once ``after`` bytes have been counted."""
    sibling = f._streams[1][0]
    original = c.count
    fired = []

    def count(n):
        original(n)
        if not fired and c.bytes_read >= after:
            fired.append(sibling.generation)
            sibling._transport.sock.shutdown(2)
    c.count = count
    return sibling, fired


def test_one_stream_cut_is_reconnected(sshd, tmp_path):
    data = os.urandom(4 << 20)
    path = tmp_path / 'big.bin'
    path.write_bytes(data)
    with conn_mod.Connection(host(sshd), striped(), environ={}) as c:
        f = c.open_file(str(path))
        f.will_read([(0, len(data))])
        sibling, fired = _cut_second_stream(c, f, 1 << 20)
        assert f.pread(len(data), 0) == data
        assert fired == [1]
        assert sibling.generation == 2 and c.generation == 1
        f.close()


def test_one_stream_that_gives_up_fails_the_read_in_one_line(sshd,
                                                             tmp_path):
    data = os.urandom(4 << 20)
    path = tmp_path / 'big.bin'
    path.write_bytes(data)
    with conn_mod.Connection(host(sshd), striped(retries=2),
                             environ={}) as c:
        f = c.open_file(str(path))
        f.will_read([(0, len(data))])
        sibling, fired = _cut_second_stream(c, f, 1 << 20)

        def refused():
            raise conn_mod._Dropped('cannot connect to 127.0.0.1: refused')
        sibling._open = refused
        with pytest.raises(exception.SshError) as e:
            f.pread(len(data), 0)
        text = one_line(e.value)
        assert 'gave up after 2 reconnection attempts' in text, text
        assert 'refused' in text
        f.close()


def test_stream_that_cannot_connect_is_left_out(sshd, tmp_path, caplog,
                                                monkeypatch):
    data = os.urandom(2 << 20)
    path = tmp_path / 'big.bin'
    path.write_bytes(data)
    real = conn_mod.Connection._open

    def first_only(self):
        if self._parent is not None:
            raise conn_mod._Dropped('cannot connect: MaxStartups')
        return real(self)
    monkeypatch.setattr(conn_mod.Connection, '_open', first_only)
    with conn_mod.Connection(host(sshd), striped(), environ={}) as c:
        with caplog.at_level(logging.WARNING):
            f = c.open_file(str(path))
            assert f.pread(len(data), 0) == data
        assert len(f._streams) == 1
        assert 'instead of 2' in caplog.text and 'MaxStartups' in \
            caplog.text
        assert f.pread(len(data), 0) == data
        f.close()
        # Not tried again for the next file.
        g = c.open_file(str(path))
        g.will_read([(0, len(data))])
        assert len(g._streams) == 1
        g.close()


def test_password_prompt_on_a_terminal_is_used_and_never_shown(
        sshd, tmp_path):
    """No key and no password variable, on a terminal: the CLI asks for
    the password (getpass: not echoed), sends it (the server refuses it:
    no account has it) and fails in one line without showing it."""
    from tests.lib import cli
    env = dict(os.environ, HOME=str(tmp_path), LC_ALL='C.UTF-8')
    env.pop('SSH_AUTH_SOCK', None)
    env.pop('PYTHONPATH', None)
    loc = 'xenserver://%s@127.0.0.1:%d/vm' % (sshd.user, sshd.port)
    status, out, answered = cli.on_a_terminal(
        cli.cli_command() + ['info', loc, '--host-key', sshd.fingerprint],
        env, '/', timeout=120, stdin_tty=True,
        answers={b'password: ': PASSWORD.encode() + b'\n'})
    sent = answered == [b'password: ']
    assert sent, out
    assert status == 1, out
    assert 'Failed password for %s' % sshd.user in sshd.log_text()
    assert PASSWORD not in out
    after = out.split('password: ', 1)[1].strip()
    assert len(after.splitlines()) == 1, out
    assert 'authentication failed' in after and 'Traceback' not in out
