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

"""Reading files over SFTP with many requests in flight.

:class:`Session` speaks the read-only part of SFTP version 3
(draft-ietf-secsh-filexfer-02: INIT, OPEN, FSTAT, READ, CLOSE, and
OPENDIR/READDIR to list a directory) on one
channel of paramiko's public API (``Transport.open_session``,
``Channel.invoke_subsystem``, ``send``/``recv`` with ``settimeout``).
One internal is touched: the new channel's buffer (``in_buffer``, a
:class:`paramiko.buffered_pipe.BufferedPipe`) is replaced, before
anything arrives, by :class:`_Pieces`, a subclass that hands out the
pieces the transport fed it as they are.  paramiko's copies each byte
into an array and twice out of it; reading a 1 GiB file over loopback
SSH while writing it to disk went from 372-383 to 393-407 MiB/s
(medians of 3, two interleaved rounds).  A channel without such a
buffer keeps its own.  Every failure of the channel (end of
stream, socket error, paramiko's ``SSHException``/``EOFError``, a
receive or send that waits longer than the I/O timeout, a malformed
reply) is raised as :class:`Lost`; an SFTP status is :class:`Status`.

:class:`Pipeline` (one per connection) keeps up to ``max_requests``
read requests in flight for the files of the connection:

* the reads a caller asks for (``read``): the missing part of the range
  is requested at once, in requests of ``request_size``;
* a read-ahead plan (``plan``), in the order the caller will read:
  announced ranges are requested ahead of the reads, within the bound,
  so a link with long round trips stays full.  A read that skips planned
  ranges drops them (and the data that came for them): the plan is a
  hint, never a reason for a wrong or missing byte;
* a server that answers fewer bytes than asked (OpenSSH before 8 sends
  at most 64 KiB) gets the rest asked again, and the request size shrinks
  to what it sends.

File data is copied once out of what the channel gives (each reply
into a bytes object of its own) and handed on as views of it: the
caller's join is the only other copy (every copy of every byte costs
the reading thread, which holds the GIL while it copies).

It holds no thread: the caller's read drives it.  After a lost
connection (the caller reconnects, :meth:`Connection.retrying`) the
files are opened again on the new channel, checked to have kept their
size, and what was in flight is asked for again; what arrived is kept.
"""

import collections
import os
import socket
import struct
import threading
import time

import paramiko
from paramiko import buffered_pipe

from any2kvm_os import exception

FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ = 1, 2, 3, 4, 5
FXP_FSTAT, FXP_OPENDIR, FXP_READDIR = 8, 11, 12
FXP_STATUS, FXP_HANDLE, FXP_DATA, FXP_NAME, FXP_ATTRS = \
    101, 102, 103, 104, 105
FX_OK, FX_EOF, FX_NO_SUCH_FILE = 0, 1, 2
FXF_READ = 1
ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_ACMODTIME = 1, 2, 4, 8
ATTR_EXTENDED = 0x80000000

#: Largest SFTP reply taken (OpenSSH sends at most 256 KiB).
MAX_REPLY = 4 << 20
#: Most bytes taken from the channel at once: all it holds (at most its
#: window).  paramiko's channel buffer moves what stays after a partial
#: take, so taking part of a large buffer costs as much as the rest.
_RECV = 1 << 30
#: Most entries of a read-ahead plan (further ranges are not announced).
MAX_PLAN = 1 << 16
#: How many plan entries a read looks through to find where it is.
_PLAN_SCAN = 64

_U32 = struct.Struct('>I')
_READ = struct.Struct('>IBI')


class Lost(Exception):
    """The channel or connection failed: reconnect and ask again."""


class Status(Exception):
    """An SFTP status other than OK for one request."""

    def __init__(self, code, message):
        super(Status, self).__init__('%s (SFTP status %d)' % (
            message or 'error', code))
        self.code = code
        self.message = message


def _string(data):
    return _U32.pack(len(data)) + data


class _Parser(object):
    def __init__(self, body, pos=0):
        self.body = body
        self.pos = pos

    def take(self, n):
        if self.pos + n > len(self.body):
            raise Lost('malformed SFTP reply (too short)')
        part = self.body[self.pos:self.pos + n]
        self.pos += n
        return part

    def u32(self):
        return _U32.unpack(self.take(4))[0]

    def u64(self):
        return struct.unpack('>Q', self.take(8))[0]

    def string(self):
        return self.take(self.u32())

    def view(self):
        """A string as a view of the reply (file data: not copied; the
        view holds the one reply, nothing more)."""
        n = self.u32()
        if self.pos + n > len(self.body):
            raise Lost('malformed SFTP reply (too short)')
        part = memoryview(self.body)[self.pos:self.pos + n]
        self.pos += n
        return part


def parse_attrs(p):
    """(size or None, permissions or None) of an SFTP v3 ATTRS."""
    flags = p.u32()
    size = perms = None
    if flags & ATTR_SIZE:
        size = p.u64()
    if flags & ATTR_UIDGID:
        p.take(8)
    if flags & ATTR_PERMISSIONS:
        perms = p.u32()
    if flags & ATTR_ACMODTIME:
        p.take(8)
    if flags & ATTR_EXTENDED:
        for _ in range(p.u32()):
            p.string()
            p.string()
    return size, perms


class _Pieces(buffered_pipe.BufferedPipe):
    """paramiko's channel buffer, keeping each piece the transport feeds
    it (one SSH packet's data) as the bytes object it came as, and
    handing the pieces out as they are, one per read.  paramiko's own
    buffer copies every byte into an array and twice out of it, in
    copies as large as what waited.  paramiko's ``feed`` (its locking,
    event and wake-up) stays; what takes out is ours."""

    def __init__(self):
        super(_Pieces, self).__init__()
        self._buffer = collections.deque()

    def _buffer_frombytes(self, data):
        self._buffer.append(data)

    def read(self, nbytes, timeout=None):
        with self._lock:
            if not self._buffer:
                if self._closed:
                    return b''
                if timeout == 0.0:
                    raise buffered_pipe.PipeTimeout()
                while not self._buffer and not self._closed:
                    then = time.monotonic()
                    self._cv.wait(timeout)
                    if timeout is not None:
                        timeout -= time.monotonic() - then
                        if timeout <= 0.0:
                            raise buffered_pipe.PipeTimeout()
                if not self._buffer:
                    return b''
            piece = self._buffer[0]
            if len(piece) <= nbytes:
                self._buffer.popleft()
            else:
                self._buffer[0] = piece[nbytes:]
                piece = piece[:nbytes]
            if not self._buffer and self._event is not None and \
                    not self._closed:
                self._event.clear()
            return piece

    def empty(self):
        with self._lock:
            out = b''.join(self._buffer)
            self._buffer.clear()
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def __len__(self):
        with self._lock:
            return sum(map(len, self._buffer))


class Session(object):
    """One SFTP channel: requests sent, replies framed (see the
    module's description).  ``channel`` is anything with paramiko's
    Channel methods ``sendall``, ``recv`` and ``close``, its timeout
    already set; :meth:`open` makes one on a transport."""

    def __init__(self, channel, what='SFTP'):
        self.channel = channel
        self.what = what
        #: What the channel gave and no packet took yet: the pieces in
        #: order, the first one taken up to ``_off``; ``_have`` bytes.
        self._pieces = collections.deque()
        self._off = 0
        self._have = 0
        self._next = 0
        self.closed = False
        self._send(FXP_INIT, _U32.pack(3))
        kind, body = self._packet()
        if kind != FXP_VERSION:
            raise Lost('%s: no SFTP version in answer to INIT' % what)

    @classmethod
    def open(cls, transport, timeout, window, packet, what='SFTP'):
        """A session on a new channel of ``transport``."""
        channel = None
        try:
            channel = transport.open_session(window_size=window,
                                             max_packet_size=packet,
                                             timeout=timeout)
            if isinstance(getattr(channel, 'in_buffer', None),
                          buffered_pipe.BufferedPipe):
                channel.in_buffer = _Pieces()
            channel.settimeout(timeout)
            channel.invoke_subsystem('sftp')
            return cls(channel, what)
        except Lost:
            if channel is not None:
                channel.close()
            raise
        except (paramiko.SSHException, EOFError, OSError) as e:
            if channel is not None:
                channel.close()
            raise Lost('cannot start SFTP: %s' % (
                str(e) or type(e).__name__))

    def next_id(self):
        self._next = (self._next + 1) & 0xffffffff
        return self._next

    def _send(self, kind, body):
        self.send_raw(_U32.pack(len(body) + 1) + bytes((kind,)) + body)

    def send_raw(self, data):
        if self.closed:
            raise Lost('SFTP channel closed')
        try:
            self.channel.sendall(data)
        except socket.timeout:
            raise Lost('sending to the host stalled')
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise Lost('sending failed: %s' % (str(e) or type(e).__name__))

    @staticmethod
    def request(kind, rid, body):
        """The bytes of one request (to send many at once)."""
        return (_U32.pack(len(body) + 5) + bytes((kind,)) + _U32.pack(rid)
                + body)

    @staticmethod
    def read_request(rid, handle, offset, length):
        h = _string(handle)
        return (_READ.pack(len(h) + 17, FXP_READ, rid) + h
                + struct.pack('>QI', offset, length))

    def _fetch(self, n):
        """Receive until ``n`` bytes wait; raises :class:`Lost`."""
        while self._have < n:
            if self.closed:
                raise Lost('SFTP channel closed')
            try:
                data = self.channel.recv(_RECV)
            except socket.timeout:
                raise Lost('no answer from the host in %s s'
                           % self.channel.gettimeout())
            except (paramiko.SSHException, EOFError, OSError) as e:
                raise Lost('receiving failed: %s'
                           % (str(e) or type(e).__name__))
            if not data:
                raise Lost(self._why_closed())
            self._pieces.append(data)
            self._have += len(data)

    def _why_closed(self):
        """Why the channel ended: the socket error that ended its
        connection when there was one (paramiko's transport logs it for
        --debug only), else the host closed it.  The error is the one the
        transport's thread saved (``saved_exception``, which
        ``get_exception`` would clear) before it closed the channels: it
        is there by the time the channel reads as ended, whereas the
        transport is marked inactive only after."""
        transport = self.channel.get_transport()
        error = getattr(transport, 'saved_exception', None)
        if isinstance(error, OSError):
            return 'connection lost: %s' % (
                os.strerror(error.errno) if error.errno else
                str(error) or type(error).__name__)
        return 'connection closed by the host'

    def _take(self, n):
        """The next ``n`` bytes (all waiting), copied once: a slice of
        the piece that holds them, or (across pieces) the join of views
        of them."""
        pieces = self._pieces
        first = pieces[0]
        off = self._off
        self._have -= n
        if len(first) - off >= n:
            out = first[off:off + n]    # the piece itself when whole
            off += n
            if off == len(first):
                pieces.popleft()
                off = 0
            self._off = off
            return out
        parts = []
        while n:
            first = pieces[0]
            left = len(first) - off
            if left <= n:
                parts.append(memoryview(first)[off:] if off else first)
                pieces.popleft()
                off = 0
                n -= left
            else:
                parts.append(memoryview(first)[off:off + n])
                off += n
                n = 0
        self._off = off
        return b''.join(parts)

    def _packet(self):
        """(type, packet) of the next packet, the type byte at index 0
        of ``packet`` (one copy of the channel's bytes, no more); raises
        :class:`Lost`."""
        self._fetch(4)
        n = _U32.unpack(self._take(4))[0]
        if n < 1 or n > MAX_REPLY:
            raise Lost('malformed SFTP reply (length %d)' % n)
        self._fetch(n)
        packet = self._take(n)
        return packet[0], packet

    def receive(self):
        """(type, request id, parser of the rest) of the next reply."""
        kind, packet = self._packet()
        if len(packet) < 5:
            raise Lost('malformed SFTP reply (no id)')
        return kind, _U32.unpack_from(packet, 1)[0], _Parser(packet, 5)

    def close(self):
        self.closed = True
        try:
            self.channel.close()
        except Exception:   # closing a dead channel
            pass


class _Chunk(object):
    """One read request's range of a file: unissued (``rid`` None), in
    flight, or arrived (``data``)."""

    __slots__ = ('file', 'off', 'end', 'seq', 'rid', 'data', 'live')

    def __init__(self, f, off, end, seq):
        self.file, self.off, self.end, self.seq = f, off, end, seq
        self.rid = None
        self.data = None
        self.live = True


class _Call(object):
    __slots__ = ('reply',)

    def __init__(self):
        self.reply = None


class _FileState(object):
    """What the pipeline keeps of one open file."""

    def __init__(self, path, fixed_size):
        self.path = path
        self.fixed_size = fixed_size
        self.size = None
        self.handle = None
        self.generation = None
        self.bytes_read = 0
        self.starts = []        # sorted starts of the chunks
        self.chunks = {}        # start -> _Chunk

    def find(self, pos):
        """The chunk holding ``pos`` and the next chunk's start (or
        None)."""
        i = _bisect(self.starts, pos)
        c = None
        if i > 0:
            c = self.chunks[self.starts[i - 1]]
            if c.end <= pos:
                c = None
        nxt = self.starts[i] if i < len(self.starts) else None
        return c, nxt

    def add(self, c):
        i = _bisect(self.starts, c.off)
        self.starts.insert(i, c.off)
        self.chunks[c.off] = c

    def remove(self, c):
        if self.chunks.get(c.off) is c:
            del self.chunks[c.off]
            i = _bisect(self.starts, c.off) - 1
            del self.starts[i]
        c.live = False


def _bisect(a, x):
    """Index after the last element <= x."""
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


class Pipeline(object):
    """The read requests of one connection (see the module's
    description).

    ``connect()`` returns a live :class:`Session` and its generation
    (a number that changes at every reconnection); ``count(n)`` is told
    of every byte of file data received; ``label`` names the host in
    errors.  Every method runs under one lock; none waits longer than
    the session's I/O timeout for a reply without raising :class:`Lost`.
    """

    def __init__(self, connect, count, label, request_size=252 << 10,
                 max_requests=64):
        self._connect = connect
        self._count = count
        self.label = label
        self.request_size = request_size
        self.max_requests = max(1, max_requests)
        self.lock = threading.RLock()
        self._session = None
        self._gen = None
        self._files = {}            # key -> _FileState
        self._inflight = {}         # rid -> _Chunk or _Call (or None)
        self._reissue = collections.deque()
        self._plan = collections.deque()    # [key, cur, end]
        self._direct = collections.deque()  # [key, cur, end]
        self._ahead = set()         # planned chunks held
        self._n_arrived = 0         # planned chunks arrived, not consumed
        self._n_direct = 0          # unplanned chunks in flight
        self._seq = 0
        self._last_seq = 0

    # -- session ----------------------------------------------------------

    def _live(self):
        """The session of the current connection; after a reconnection,
        the files opened again and what was in flight marked to be asked
        again."""
        session, gen = self._connect(self._session, self._gen)
        if session is self._session:
            return session
        if self._session is not None:
            self._session.close()
        self._session, self._gen = session, gen
        lost = [c for c in self._inflight.values()
                if isinstance(c, _Chunk) and c.live]
        self._inflight.clear()
        self._n_direct = 0
        lost.sort(key=lambda c: (c.seq is not None, c.seq or 0))
        for c in lost:
            c.rid = None
        self._reissue.extendleft(reversed(lost))
        for key, f in self._files.items():
            if f.handle is not None:
                self._open_handle(f)
        return session

    def start(self):
        """The session started now, not at the first read (before a
        moment that counts: a cutover's downtime)."""
        with self.lock:
            self._live()

    def _call(self, kind, body, then=None):
        """Send one request and wait for its reply; ``then()``, when
        given, returns more requests (bytes) sent with it, in the same
        write (their replies are filed as they come)."""
        session = self._session
        rid = session.next_id()
        call = _Call()
        self._inflight[rid] = call
        data = session.request(kind, rid, body)
        if then is not None:
            data += then()
        session.send_raw(data)
        while call.reply is None:
            self._receive()
        return call.reply

    def _open_handle(self, f, key=None, prefetch=()):
        kind, p = self._call(FXP_OPEN, _string(f.path.encode('utf-8'))
                             + _U32.pack(FXF_READ) + _U32.pack(0))
        if kind == FXP_STATUS:
            code, message = p.u32(), p.string()
            raise exception.SshError(host=self.label, reason='%s: %s' % (
                f.path, message.decode('utf-8', 'replace') or
                'cannot open (SFTP status %d)' % code))
        if kind != FXP_HANDLE:
            raise Lost('unexpected SFTP reply %d to OPEN' % kind)
        handle = p.string()
        f.handle, f.generation = handle, self._gen
        # The reads of ``prefetch`` go with the FSTAT: one round trip for
        # the size and the ranges (those beyond the size are dropped).
        kind, p = self._call(
            FXP_FSTAT, _string(handle), (lambda: self._prefetch_requests(
                key, f, prefetch)) if prefetch else None)
        if kind != FXP_ATTRS:
            raise exception.SshError(host=self.label, reason='%s: cannot '
                                     'read its size' % f.path)
        size, perms = parse_attrs(p)
        if f.fixed_size is not None:
            size = f.fixed_size
        elif perms is None or (perms & 0o170000) != 0o100000 or \
                size is None:
            raise exception.SshError(
                host=self.label, reason='%s: not a regular file (give its '
                'size to read it)' % f.path)
        if f.size is not None and size != f.size:
            raise exception.SshError(
                host=self.label, reason='%s: size changed from %d to %d '
                'bytes while it was read' % (f.path, f.size, size))
        f.size = size

    def _prefetch_requests(self, key, f, ranges):
        """The READ requests (bytes) of ``ranges`` of the file not asked
        for yet, as chunks read like any other."""
        return b''.join(self._ask_for(key, f, ranges, []))

    def _ask_for(self, key, f, ranges, batch, stop=None, limit=None):
        """Append to ``batch`` the READ requests of ``ranges`` of the
        file not asked for yet (as chunks read like any other), ranges
        cut at ``stop``, at most ``limit`` requests in ``batch``."""
        for off, length in ranges:
            pos, end = off, off + length
            if stop is not None:
                end = min(end, stop)
            while pos < end and (limit is None or len(batch) < limit):
                c, nxt = f.find(pos)
                if c is not None:
                    pos = c.end
                    continue
                pos = self._new(key, pos, end if nxt is None
                                else min(end, nxt), None, batch)
        return batch

    def _close_handle(self, handle):
        """Send CLOSE for ``handle`` of the live session (its answer is
        not waited for)."""
        session = self._session
        if session is None or session.closed:
            return
        rid = session.next_id()
        self._inflight[rid] = None
        try:
            session.send_raw(session.request(FXP_CLOSE, rid,
                                             _string(handle)))
        except Lost:
            self._inflight.pop(rid, None)

    # -- directories ------------------------------------------------------

    def listdir(self, path, limit):
        """[(name, permissions or None)] of the entries of the directory
        ``path`` (``.`` and ``..`` left out, and names that are not
        UTF-8: no file this reader is asked for), in the server's order,
        over this pipeline's session (no other SFTP server is started).
        More than ``limit`` entries, or a directory that cannot be opened
        or read, is an :class:`~any2kvm_os.exception.SshError` naming
        it; a lost connection is :class:`Lost`."""
        with self.lock:
            self._live()
            kind, p = self._call(FXP_OPENDIR, _string(path.encode('utf-8')))
            if kind == FXP_STATUS:
                code, message = p.u32(), p.string()
                raise self._list_error(path, code, message)
            if kind != FXP_HANDLE:
                raise Lost('unexpected SFTP reply %d to OPENDIR' % kind)
            handle = p.string()
            entries = []
            # Every name counts, those left out too, and every reply: a
            # server that answers names without end (empty replies, "."
            # again and again) is refused, not read for ever.
            seen = replies = 0
            try:
                while True:
                    replies += 1
                    if replies > limit + 16:
                        raise exception.SshError(
                            host=self.label, reason='%s: the SFTP server '
                            'gave %d READDIR replies without its end'
                            % (path, replies - 1))
                    kind, p = self._call(FXP_READDIR, _string(handle))
                    if kind == FXP_STATUS:
                        code, message = p.u32(), p.string()
                        if code == FX_EOF:
                            return entries
                        raise self._list_error(path, code, message)
                    if kind != FXP_NAME:
                        raise Lost('unexpected SFTP reply %d to READDIR'
                                   % kind)
                    count = p.u32()
                    if count > MAX_REPLY // 12:
                        raise Lost('malformed SFTP reply (%d names)'
                                   % count)
                    for _ in range(count):
                        name = p.string()
                        p.string()      # the ls -l line
                        _size, perms = parse_attrs(p)
                        seen += 1
                        if seen > limit + 16:
                            raise exception.SshError(
                                host=self.label, reason='%s has more than '
                                '%d entries (max_directory_entries); raise '
                                'the limit to read it' % (path, limit))
                        if name in (b'.', b'..'):
                            continue
                        try:
                            name = name.decode('utf-8')
                        except UnicodeDecodeError:
                            continue
                        if len(entries) >= limit:
                            raise exception.SshError(
                                host=self.label, reason='%s has more than '
                                '%d entries (max_directory_entries); raise '
                                'the limit to read it' % (path, limit))
                        entries.append((name, perms))
            finally:
                self._close_handle(handle)

    def _list_error(self, path, code, message):
        error = exception.SshError(host=self.label, reason='cannot list '
                                   '%s: %s' % (path, message.decode(
                                       'utf-8', 'replace') or
                                       'SFTP status %d' % code))
        #: The directory is not there (SSH_FX_NO_SUCH_FILE).
        error.no_such_file = code == FX_NO_SUCH_FILE
        return error

    # -- files ------------------------------------------------------------

    def open(self, key, path, fixed_size=None, prefetch=()):
        """Open ``path``; returns its size (``fixed_size`` for what is
        no regular file).  ``prefetch``: ranges [(offset, length)] asked
        for in the round trip that asks for the size (the caller then
        reads them, or closes the file); a range that ends beyond the
        size is not read."""
        with self.lock:
            f = self._files.get(key)
            new = f is None
            if f is None:
                f = _FileState(path, fixed_size)
            self._live()
            if prefetch:
                self._files[key] = f
            try:
                if f.handle is None or f.generation != self._gen:
                    self._open_handle(f, key, prefetch)
            except BaseException:
                if new and prefetch:
                    for c in list(f.chunks.values()):
                        self._drop(c)
                    self._files.pop(key, None)
                raise
            self._files[key] = f
            for c in list(f.chunks.values()):
                if c.end > f.size:
                    self._drop(c)
            return f.size

    def bytes_read(self, key):
        f = self._files.get(key)
        return f.bytes_read if f is not None else 0

    def close(self, key):
        """Forget a file: its plan, its data; close its handle (not
        waited for)."""
        with self.lock:
            f = self._files.get(key)
            if f is None:
                return
            for c in list(f.chunks.values()):
                self._drop(c)
            del self._files[key]
            self._plan = collections.deque(
                e for e in self._plan if e[0] != key)
            self._direct = collections.deque(
                e for e in self._direct if e[0] != key)
            if f.handle is not None and f.generation == self._gen:
                self._close_handle(f.handle)

    def shutdown(self):
        """Close the session (the connection is closing).  Takes no
        lock: a read under way in another thread fails at once instead
        of holding the caller."""
        session = self._session
        if session is not None:
            session.close()

    def prefetch(self, key, ranges, limit=1024):
        """Ask now for ``ranges`` [(offset, length)] of the file (the
        first ``limit`` requests), which are read next."""
        with self.lock:
            self._live()
            f = self._files[key]
            self._fill(self._ask_for(key, f, ranges, [], f.size, limit))

    # -- plans ------------------------------------------------------------

    def plan(self, key, ranges):
        """Announce that ``ranges`` [(offset, length)] of the file will be
        read, in this order, after what was announced before."""
        with self.lock:
            f = self._files.get(key)
            if f is None:
                return
            for off, length in ranges:
                end = min(off + length, f.size)
                if off >= end:
                    continue
                last = self._plan[-1] if self._plan else None
                if last is not None and last[0] == key and last[2] == off:
                    last[2] = end
                elif len(self._plan) < MAX_PLAN:
                    self._plan.append([key, off, end])

    def _at_plan(self, key, pos):
        """Whether ``pos`` of ``key`` is where the plan stands (entries
        skipped over are dropped, with the data asked for before)."""
        for i, entry in enumerate(self._plan):
            if i >= _PLAN_SCAN:
                return False
            if entry[0] == key and entry[1] <= pos < entry[2]:
                for _ in range(i):
                    self._plan.popleft()
                entry[1] = pos
                # Everything asked for ahead lies before the reader now.
                for c in list(self._ahead):
                    self._drop(c)
                return True
        return False

    # -- requests ---------------------------------------------------------

    def _drop(self, c):
        """Forget a chunk (its reply, if one comes, is thrown away)."""
        f = self._files.get(c.file)
        if f is not None:
            f.remove(c)
        c.live = False
        if c.seq is not None and c in self._ahead:
            self._ahead.discard(c)
            if c.data is not None:
                self._n_arrived -= 1
        c.data = None

    def _new(self, key, cur, end, seq, batch):
        f = self._files[key]
        stop = min(end, cur + self.request_size)
        c = _Chunk(key, cur, stop, seq)
        f.add(c)
        if seq is not None:
            self._ahead.add(c)
        self._issue(c, batch)
        return stop

    def _issue(self, c, batch):
        session = self._session
        f = self._files[c.file]
        rid = session.next_id()
        c.rid = rid
        self._inflight[rid] = c
        if c.seq is None:
            self._n_direct += 1
        batch.append(session.read_request(rid, f.handle, c.off,
                                          c.end - c.off))

    def _room(self):
        return len(self._inflight) + self._n_arrived < self.max_requests

    def _fill_from(self, queue, planned, batch):
        while queue:
            if planned and not self._room():
                return
            if not planned and self._n_direct >= self.max_requests:
                return
            entry = queue[0]
            key, cur, end = entry
            f = self._files.get(key)
            if f is None or cur >= end:
                queue.popleft()
                continue
            c, nxt = f.find(cur)
            if c is not None:
                entry[1] = c.end
                continue
            stop = end if nxt is None else min(end, nxt)
            seq = None
            if planned:
                self._seq += 1
                seq = self._seq
            entry[1] = self._new(key, cur, stop, seq, batch)

    def _fill(self, batch=None):
        """Send what the bounds allow: requests lost in a reconnection
        or cut short, the reads under way, then the plan."""
        batch = [] if batch is None else batch
        while self._reissue:
            c = self._reissue[0]
            if not c.live or c.rid is not None:
                self._reissue.popleft()
                continue
            if c.seq is None and self._n_direct >= self.max_requests:
                break
            if c.seq is not None and not self._room():
                break
            self._reissue.popleft()
            self._issue(c, batch)
        self._fill_from(self._direct, False, batch)
        if batch or self._free() >= self._refill:
            self._fill_from(self._plan, True, batch)
        if batch:
            self._session.send_raw(b''.join(batch))

    def _free(self):
        return self.max_requests - len(self._inflight) - self._n_arrived

    @property
    def _refill(self):
        """How many read-ahead requests wait to be sent together: a
        send costs the reading thread about as much as a reply's
        handling (a packet built, encrypted and sent by paramiko), and
        one per reply doubled the handling; an eighth of the bound in
        flight leaves the link as full."""
        return max(1, self.max_requests // 8)

    def _receive(self):
        """Take one reply and file it."""
        if not self._inflight:
            raise exception.SshError(host=self.label, reason='SFTP reader: '
                                     'waiting with nothing asked (a bug)')
        kind, rid, p = self._session.receive()
        if rid not in self._inflight:
            raise Lost('SFTP reply to an unknown request %d' % rid)
        c = self._inflight.pop(rid)
        if isinstance(c, _Call):
            c.reply = (kind, p)
            return
        if c is None:
            return  # a CLOSE
        if c.seq is None:
            self._n_direct -= 1
        c.rid = None
        if kind == FXP_DATA:
            data = p.view()
            f = self._files.get(c.file)
            if f is not None:
                f.bytes_read += len(data)
            self._count(len(data))
            if not c.live:
                return
            if not data:
                raise Lost('empty SFTP data reply')
            want = c.end - c.off
            if len(data) > want:
                raise Lost('SFTP server sent more than asked')
            if len(data) < want:
                # Cut short: the rest is asked again; later requests are
                # no larger than what this server sends.
                if len(data) >= 4096:
                    self.request_size = min(self.request_size, len(data))
                rest = _Chunk(c.file, c.off + len(data), c.end, c.seq)
                c.end = rest.off
                f.add(rest)
                if rest.seq is not None:
                    self._ahead.add(rest)
                self._reissue.append(rest)
            c.data = data
            if c.seq is not None:
                self._n_arrived += 1
        elif kind == FXP_STATUS:
            code, message = p.u32(), p.string()
            if not c.live:
                return
            f = self._files[c.file]
            self._drop(c)
            if code == FX_EOF:
                raise exception.SshError(
                    host=self.label, reason='%s: ends before its %d bytes '
                    '(at %d): changed while it was read?' % (
                        f.path, f.size, c.off))
            raise exception.SshError(
                host=self.label, reason='%s: read at offset %d: %s' % (
                    f.path, c.off, Status(code, message.decode(
                        'utf-8', 'replace'))))
        else:
            raise Lost('unexpected SFTP reply %d to READ' % kind)

    # -- reads ------------------------------------------------------------

    def read(self, key, offset, end, parts):
        """Read ``[offset, end)`` of the file (clipped by the caller to
        its size), appending the bytes to ``parts`` (memoryviews, each
        of one reply; ``b''.join`` takes them): after a lost
        connection, call again with the same list and it goes on where
        it was."""
        with self.lock:
            self._live()
            f = self._files[key]
            pos = offset + sum(len(p) for p in parts)
            try:
                while pos < end:
                    c, nxt = f.find(pos)
                    if c is None:
                        # Not asked for yet: its first request is sent
                        # now whatever the bounds (the read must go on),
                        # the rest as they allow.
                        batch = []
                        stop = end if nxt is None else min(end, nxt)
                        if self._at_plan(key, pos):
                            entry = self._plan[0]
                            self._seq += 1
                            limit = entry[2] if nxt is None \
                                else min(entry[2], nxt)
                            entry[1] = self._new(key, pos, limit,
                                                 self._seq, batch)
                        else:
                            self._direct.appendleft([key, pos, stop])
                            self._new(key, pos, stop, None, batch)
                        self._fill(batch)
                        continue
                    if c.data is None:
                        if c.rid is None:
                            batch = []
                            self._issue(c, batch)
                            self._fill(batch)
                        else:
                            self._fill()
                        self._receive()
                        continue
                    stop = min(end, c.end)
                    parts.append(c.data[pos - c.off:stop - c.off])
                    pos = stop
                    if c.seq is not None and c.seq > self._last_seq:
                        self._last_seq = c.seq
                        for old in list(self._ahead):
                            if old.seq < c.seq:
                                self._drop(old)
                    if stop >= c.end:
                        self._drop(c)
            finally:
                self._direct.clear()
            self._fill()
