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

"""The pipelined SFTP reader against an SFTP server simulated in-process:
exact bytes, short reads, connections cut at every kind of place, stalls,
bounds on requests in flight and on bytes read.  Nothing here waits: the
simulated channel answers at once or fails at once."""

import random
import socket

import paramiko
import pytest

from any2kvm_os import exception
from any2kvm_os.ssh import connection as conn_mod
from any2kvm_os.ssh import sftpread
from tests.lib.sftpfake import FakeChannel
from tests.lib.sftpfake import FakeConnection
from tests.lib.sftpfake import FakeServer
from tests.lib.sftpfake import U32


def make(files, request=64 << 10, max_requests=8, **kwargs):
    server = FakeServer(files, **kwargs)
    conn = FakeConnection(server)
    pipe = sftpread.Pipeline(conn.connect, conn.count, 'fake',
                             request_size=request,
                             max_requests=max_requests)
    return server, conn, pipe


def read(conn, pipe, key, off, n):
    parts = []
    conn.retrying(lambda: pipe.read(key, off, off + n, parts))
    return b''.join(parts)


DATA = random.Random(1).randbytes(3 << 20)


def test_reads_equal_the_file_with_and_without_a_plan():
    server, conn, pipe = make({'/a': DATA, '/b': DATA[::-1]},
                              request=40000)
    assert conn.retrying(lambda: pipe.open('a', '/a')) == len(DATA)
    assert conn.retrying(lambda: pipe.open('b', '/b')) == len(DATA)
    rng = random.Random(2)
    for _ in range(30):
        off = rng.randrange(len(DATA))
        n = rng.randrange(1, 600000)
        assert read(conn, pipe, 'a', off, min(n, len(DATA) - off)) == \
            DATA[off:off + n]
    # A plan across two files, read in its order: every byte once.
    before = conn.bytes
    ranges = [(0, 300000), (512, 100), (1 << 20, 1 << 20)]
    wanted = 0
    for off, n in ranges:
        pipe.plan('a', [(off + 7, n)])
        pipe.plan('b', [(off, n)])
        wanted += 2 * n
    for off, n in ranges:
        assert read(conn, pipe, 'a', off + 7, n) == DATA[off + 7:off + 7 + n]
        assert read(conn, pipe, 'b', off, n) == DATA[::-1][off:off + n]
    assert conn.bytes - before == wanted
    assert server.max_inflight <= 2 * 8 + 1


def test_short_replies_are_completed_and_the_request_shrinks():
    server, conn, pipe = make({'/a': DATA}, request=252 << 10,
                              max_read=64 << 10)
    conn.retrying(lambda: pipe.open('a', '/a'))
    pipe.plan('a', [(0, len(DATA))])
    assert read(conn, pipe, 'a', 0, len(DATA)) == DATA
    assert pipe.request_size == 64 << 10
    assert conn.bytes == len(DATA)


@pytest.mark.parametrize('error', [None, EOFError(), OSError('reset'),
                                   paramiko.SSHException('dropped'),
                                   socket.timeout()])
def test_cut_anywhere_loses_nothing(error):
    # Cuts at many places: in a reply's length, its header, its data,
    # between replies, during OPEN and FSTAT after a reconnection.
    rng = random.Random(3)
    window = 8 * (64 << 10) * 2
    for trial in range(25):
        server, conn, pipe = make({'/a': DATA, '/b': DATA[:100000]},
                                  seed=trial)
        conn.retrying(lambda: pipe.open('a', '/a'))
        conn.retrying(lambda: pipe.open('b', '/b'))
        server.cut_with = error
        server.cut_at = rng.randrange(1, 2 << 20)
        pipe.plan('a', [(0, 1 << 20), (2 << 20, 512 << 10)])
        pipe.plan('b', [(0, 100000)])
        wanted = 0
        for key, off, n, src in (('a', 0, 1 << 20, DATA),
                                 ('a', 2 << 20, 512 << 10, DATA),
                                 ('b', 0, 100000, DATA[:100000]),
                                 ('a', 5, 70000, DATA)):
            if trial % 3 == 0:
                server.cut_at = server.sent + rng.randrange(1, 300000)
            assert read(conn, pipe, key, off, n) == src[off:off + n]
            wanted += n
        assert conn.drops >= 1
        # Whole replies are counted; one lost in a cut is asked again.
        assert wanted <= conn.bytes <= wanted + (conn.drops + 1) * window


@pytest.mark.parametrize('error, why', [
    (None, 'connection closed by the host'),
    (ConnectionResetError(104, 'Connection reset by peer'),
     'connection lost: Connection reset by peer'),
    (OSError(), 'connection lost: OSError')])
def test_a_lost_connection_says_why(error, why):
    """A channel that ends (recv gives nothing): the socket error its
    connection died of, when paramiko's transport holds one (it logs it
    for --debug only), else the host closed it."""
    server, conn, pipe = make({'/a': DATA})
    conn.retrying(lambda: pipe.open('a', '/a'))
    server.cut_error = error
    server.cut_at = server.sent + 1000
    with pytest.raises(sftpread.Lost) as e:
        pipe.read('a', 0, 1 << 20, [])
    assert str(e.value) == why


def test_stalled_host_is_taken_for_lost():
    server, conn, pipe = make({'/a': DATA})
    conn.retrying(lambda: pipe.open('a', '/a'))
    server.stall_at = server.sent + 1000
    assert read(conn, pipe, 'a', 0, 1 << 20) == DATA[:1 << 20]
    assert conn.drops == 1 and conn.generation == 2


def test_plan_skipped_costs_at_most_the_window():
    server, conn, pipe = make({'/a': DATA}, request=32 << 10,
                              max_requests=4)
    conn.retrying(lambda: pipe.open('a', '/a'))
    pipe.plan('a', [(0, 1 << 20), (2 << 20, 1 << 20)])
    # The reader jumps into the second range, then reads out of plan.
    assert read(conn, pipe, 'a', 2 << 20, 4096) == DATA[2 << 20:(2 << 20)
                                                        + 4096]
    assert read(conn, pipe, 'a', 100, 10) == DATA[100:110]
    assert read(conn, pipe, 'a', (2 << 20) + 4096, 100000) == \
        DATA[(2 << 20) + 4096:(2 << 20) + 104096]
    wanted = 4096 + 10 + 100000
    assert wanted <= conn.bytes <= wanted + 2 * 4 * (32 << 10) + (32 << 10)
    # Memory: what is held stays within the bounds.
    held = sum(len(c.data or b'') for c in pipe._files['a'].chunks.values())
    assert held <= 4 * (32 << 10)


def test_remote_errors_are_one_line_and_not_retried():
    server, conn, pipe = make({'/a': DATA})
    with pytest.raises(exception.SshError, match='/nope: No such file'):
        conn.retrying(lambda: pipe.open('x', '/nope'))
    conn.retrying(lambda: pipe.open('a', '/a'))
    # The file shrinks behind the reader: EOF before its size.
    server.files['/a'] = DATA[:1000]
    with pytest.raises(exception.SshError, match='ends before'):
        read(conn, pipe, 'a', 5000, 10)
    # After a reconnection its size is checked again.
    server.cut_at = server.sent
    with pytest.raises(exception.SshError, match='size changed'):
        read(conn, pipe, 'a', 0, 10)
    assert conn.drops == 1


def test_malformed_replies_are_a_lost_connection():
    class Garbage(FakeChannel):
        def recv(self, n):
            return U32.pack(sftpread.MAX_REPLY + 1) + b'x'
    with pytest.raises(sftpread.Lost, match='malformed'):
        sftpread.Session(Garbage(FakeServer({})))

    class NoVersion(FakeChannel):
        def recv(self, n):
            return U32.pack(5) + bytes((sftpread.FXP_HANDLE,)) + b'abcd'
    with pytest.raises(sftpread.Lost, match='version'):
        sftpread.Session(NoVersion(FakeServer({})))


def test_close_forgets_the_file():
    server, conn, pipe = make({'/a': DATA})
    conn.retrying(lambda: pipe.open('a', '/a'))
    pipe.plan('a', [(0, 1 << 20)])
    read(conn, pipe, 'a', 0, 10)
    pipe.close('a')
    assert not pipe._plan and 'a' not in pipe._files
    pipe.shutdown()
    assert conn.live.closed


def test_connection_errors_count_as_drops():
    c = conn_mod.Connection.__new__(conn_mod.Connection)
    c._transport = None
    for error in (EOFError(), ConnectionResetError(), socket.timeout(),
                  sftpread.Lost('x')):
        assert c._is_drop(error)
    assert not c._is_drop(exception.SshError(host='h', reason='r'))
    assert not c._is_drop(paramiko.AuthenticationException())


class PiecesChannel(object):
    """Hands out the given pieces, one per recv, then times out."""

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.sent = b''

    def sendall(self, data):
        self.sent += data

    def recv(self, n):
        if not self.pieces:
            raise socket.timeout()
        return self.pieces.pop(0)

    def gettimeout(self):
        return 5

    def close(self):
        pass


def _reply(kind, body):
    return U32.pack(len(body) + 1) + bytes((kind,)) + body


@pytest.mark.parametrize('cut', ['one piece', 'bytes', 'in headers',
                                 'between'])
def test_replies_framed_whatever_the_pieces(cut):
    # Replies framed out of what the channel gives, however it is cut:
    # file data comes out as a view of its own reply (not of the piece
    # it came in, which may hold a whole window of others).
    version = _reply(sftpread.FXP_VERSION, U32.pack(3))
    blob = random.Random(5).randbytes(70000)
    replies = [_reply(sftpread.FXP_DATA, U32.pack(7 + i) + U32.pack(
        len(blob) - i) + blob[i:]) for i in range(3)]
    replies.append(_reply(sftpread.FXP_STATUS, U32.pack(10) + U32.pack(1)
                          + U32.pack(3) + b'EOF' + U32.pack(0)))
    stream = version + b''.join(replies)
    if cut == 'one piece':
        pieces = [stream]
    elif cut == 'bytes':
        pieces = [stream[i:i + 1] for i in range(len(version) + 40)] + \
            [stream[len(version) + 40:]]
    elif cut == 'in headers':
        # Every cut inside a length or a type byte.
        stops, pos = [], 0
        for r in [version] + replies:
            stops += [pos + 2, pos + 4, pos + 5]
            pos += len(r)
        pieces = [stream[a:b] for a, b in zip([0] + stops, stops + [pos])]
    else:
        pieces = [version] + replies
    session = sftpread.Session(PiecesChannel(pieces))
    for i in range(3):
        kind, rid, p = session.receive()
        assert (kind, rid) == (sftpread.FXP_DATA, 7 + i)
        data = p.view()
        assert isinstance(data, memoryview)
        assert data == blob[i:]
        assert len(data.obj) == len(replies[i]) - 4
    kind, rid, p = session.receive()
    assert (kind, rid, p.u32(), p.string()) == (sftpread.FXP_STATUS, 10, 1,
                                                b'EOF')
    assert session._have == 0
    with pytest.raises(sftpread.Lost):
        session.receive()


def test_data_longer_than_its_reply_is_malformed():
    body = U32.pack(1) + U32.pack(100) + b'x' * 10
    session = sftpread.Session(PiecesChannel(
        [_reply(sftpread.FXP_VERSION, U32.pack(3)),
         _reply(sftpread.FXP_DATA, body)]))
    kind, rid, p = session.receive()
    with pytest.raises(sftpread.Lost):
        p.view()


DIR = [(b'.', 0o40755), (b'..', 0o40755)] + [
    (('%04d.vhd' % i).encode(), 0o100644) for i in range(10)] + [
    (b'sub', 0o40755), (b'odd \xff.vhd', 0o100644), (b'nomode', None),
    ('caf\u00e9 x.vhd'.encode(), 0o100600)]


def test_listdir_gives_every_entry_over_the_reading_session():
    """Names (UTF-8, spaces kept), modes, across several READDIR replies,
    on the session the reads use (no other session is started), the
    directory's handle closed; . and .. and names that are not UTF-8
    left out."""
    server, conn, pipe = make({'/a': DATA}, dirs={'/sr': DIR})
    conn.retrying(lambda: pipe.open('a', '/a'))
    got = conn.retrying(lambda: pipe.listdir('/sr', 100))
    want = [(n.decode(), m) for n, m in DIR
            if n not in (b'.', b'..') and n != b'odd \xff.vhd']
    assert got == want
    assert server.sessions == 1
    # Reads go on over the same session.
    assert read(conn, pipe, 'a', 5, 1000) == DATA[5:1005]
    assert server.sessions == 1
    assert server.closed_handles == 1


def test_listdir_refuses_more_entries_than_the_limit():
    server, conn, pipe = make({}, dirs={'/sr': DIR})
    n = len(DIR) - 3        # . .. and the name that is not UTF-8
    assert len(conn.retrying(lambda: pipe.listdir('/sr', n))) == n
    with pytest.raises(exception.SshError) as e:
        conn.retrying(lambda: pipe.listdir('/sr', n - 1))
    text = str(e.value)
    assert 'more than %d entries' % (n - 1) in text and '/sr' in text
    assert 'max_directory_entries' in text and '\n' not in text
    # The refused listing's handle was closed too.
    conn.retrying(lambda: pipe.listdir('/sr', n))
    assert server.closed_handles == 3


def test_listdir_of_names_left_out_without_end_is_refused():
    """A server that answers names that are all left out ("." again and
    again, names that are not UTF-8) counts them against the limit: the
    listing is refused in one line, not read for ever."""
    junk = [(b'.', 0o40755), (b'\xff', 0o100644)] * 5000
    server, conn, pipe = make({}, dirs={'/sr': junk})
    with pytest.raises(exception.SshError) as e:
        conn.retrying(lambda: pipe.listdir('/sr', 10))
    assert 'more than 10 entries' in str(e.value)
    assert server.closed_handles == 1


def test_listdir_of_a_missing_directory_is_one_line():
    server, conn, pipe = make({}, dirs={})
    with pytest.raises(exception.SshError) as e:
        conn.retrying(lambda: pipe.listdir('/nowhere', 10))
    text = str(e.value)
    assert 'cannot list /nowhere: No such file' in text
    assert '\n' not in text and conn.drops == 0


@pytest.mark.parametrize('cut', [3, 40, 150, 300, 600])
def test_listdir_cut_by_a_lost_connection_is_listed_again(cut):
    server, conn, pipe = make({}, dirs={'/sr': DIR}, seed=cut)
    server.cut_at = cut
    got = conn.retrying(lambda: pipe.listdir('/sr', 100))
    assert [n for n, _m in got] == [
        n.decode() for n, _m in DIR
        if n not in (b'.', b'..', b'odd \xff.vhd')]
    assert conn.drops == 1


def test_read_ahead_requests_go_out_in_batches():
    """A planned read of many requests sends them an eighth of the bound
    at a time (one send per reply cost the reading thread as much as the
    reply), within the bound, every byte once."""
    data = DATA[:2 << 20]
    server, conn, pipe = make({'/a': data}, request=4096, max_requests=64)
    conn.retrying(lambda: pipe.open('a', '/a'))
    pipe.plan('a', [(0, len(data))])
    sends = server.sends
    got = b''.join(read(conn, pipe, 'a', off, 64 << 10)
                   for off in range(0, len(data), 64 << 10))
    assert got == data and conn.bytes == len(data)
    requests = len(data) // 4096
    assert server.sends - sends <= requests // 8 + 2
    assert server.max_inflight <= 2 * 64 + 1


# -- the channel buffer: paramiko's, without its copies ---------------------


def test_pieces_come_out_as_they_went_in_one_per_read():
    buf = sftpread._Pieces()
    a, b = b'x' * 1000, b'y' * 300
    buf.feed(a)
    buf.feed(b)
    assert len(buf) == 1300
    first = buf.read(1 << 30)
    assert first is a                   # the very object: no copy
    assert buf.read(100) == b'y' * 100  # a read smaller than the piece
    assert len(buf) == 200
    assert buf.read(1 << 30) == b'y' * 200
    assert len(buf) == 0
    with pytest.raises(paramiko.buffered_pipe.PipeTimeout):
        buf.read(10, timeout=0.05)
    with pytest.raises(paramiko.buffered_pipe.PipeTimeout):
        buf.read(10, timeout=0.0)


def test_pieces_end_and_wake_as_paramikos_buffer_does():
    import threading
    buf = sftpread._Pieces()
    event = threading.Event()
    buf.set_event(event)
    assert not event.is_set() and not buf.read_ready()
    got = []
    reader = threading.Thread(target=lambda: got.append(buf.read(64, 5)))
    reader.start()
    buf.feed(b'late')
    reader.join()
    assert got == [b'late']
    buf.feed(b'left')
    assert event.is_set() and buf.read_ready()
    assert buf.empty() == b'left' and not event.is_set()
    buf.feed(b'tail')
    buf.close()
    assert buf.read(64) == b'tail'      # what came before the end
    assert buf.read(64) == b''          # then the end, at once


def test_sftp_channels_get_the_piece_buffer(monkeypatch):
    """Session.open puts _Pieces in place of paramiko's channel buffer
    (before anything arrives); a channel without one keeps its own."""
    made = []

    class Transport(object):
        def open_session(self, **kw):
            ch = FakeChannel(FakeServer({}))
            ch.in_buffer = paramiko.buffered_pipe.BufferedPipe()
            ch.invoke_subsystem = lambda name: None
            made.append(ch)
            return ch

    session = sftpread.Session.open(Transport(), 5, 1 << 20, 1 << 17)
    assert isinstance(made[0].in_buffer, sftpread._Pieces)
    session.close()
