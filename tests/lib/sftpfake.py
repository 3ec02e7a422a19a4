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

"""An SFTP server simulated in-process for the pipelined reader's tests
(tests/unit/test_sftpread.py, tests/unit/test_reopen_batch.py): requests
parsed as they are sent, replies handed out in pieces of random size,
faults (cuts, stalls) injected where asked.  Nothing waits: the channel
answers at once or fails at once."""

import random
import socket
import struct

from any2kvm_os.ssh import sftpread

U32 = struct.Struct('>I')


class Cut(Exception):
    pass


class FakeServer(object):
    """The files (path -> bytes), what a session is allowed to do, and
    the faults to inject (counted over all sessions)."""

    def __init__(self, files, max_read=1 << 20, seed=0, dirs=None):
        self.files = files
        #: path -> [(name bytes, mode or None)]; listed 3 names a reply.
        self.dirs = dirs or {}
        self.closed_handles = 0
        self.sends = 0
        self.max_read = max_read
        self.rng = random.Random(seed)
        self.sent = 0               # reply bytes handed to the client
        self.cut_at = None          # fail recv once ``sent`` passes this
        self.cut_with = None        # exception instance, or None for EOF
        #: With ``cut_with`` None: the socket error the dead connection's
        #: transport holds (paramiko's ``get_exception``), or None.
        self.cut_error = None
        self.stall_at = None        # socket.timeout once past this
        self.sessions = 0
        self.max_inflight = 0
        self.read_requests = 0

    def fault(self):
        if self.cut_at is not None and self.sent >= self.cut_at:
            self.cut_at = None
            return 'cut'
        if self.stall_at is not None and self.sent >= self.stall_at:
            self.stall_at = None
            return 'stall'
        return None


class _FakeTransport(object):
    """A channel's transport as the reader asks it why the channel
    ended: ``saved_exception``, the server's ``cut_error`` once the
    channel is closed (paramiko's transport saves the socket error, then
    closes its channels)."""

    def __init__(self, channel):
        self.channel = channel

    @property
    def saved_exception(self):
        return self.channel.server.cut_error if self.channel.closed \
            else None


class FakeChannel(object):
    """The channel of one SFTP session: requests parsed as they are
    sent, replies queued, handed out in pieces of random size."""

    def __init__(self, server):
        self.server = server
        self.inbuf = bytearray()
        self.out = bytearray()
        self.handles = {}
        self.closed = False
        self.pending = 0
        server.sessions += 1

    def get_transport(self):
        return _FakeTransport(self)

    def settimeout(self, t):
        self.timeout = t

    def gettimeout(self):
        return 5

    def close(self):
        self.closed = True

    def sendall(self, data):
        if self.closed:
            raise OSError('Socket is closed')
        self.server.sends += 1
        self.inbuf += data
        while len(self.inbuf) >= 4:
            n = U32.unpack_from(self.inbuf)[0]
            if len(self.inbuf) < 4 + n:
                break
            packet = bytes(self.inbuf[4:4 + n])
            del self.inbuf[:4 + n]
            self.handle(packet[0], packet[1:])

    def reply(self, kind, body):
        self.out += U32.pack(len(body) + 1) + bytes((kind,)) + body

    def handle(self, kind, body):
        if kind == sftpread.FXP_INIT:
            self.reply(sftpread.FXP_VERSION, U32.pack(3))
            return
        rid = U32.unpack_from(body)[0]
        p = sftpread._Parser(body, 4)
        rid_b = U32.pack(rid)
        if kind == sftpread.FXP_OPEN:
            path = p.string().decode()
            if path not in self.server.files:
                msg = b'No such file'
                self.reply(sftpread.FXP_STATUS, rid_b + U32.pack(2) +
                           U32.pack(len(msg)) + msg + U32.pack(0))
                return
            h = ('h%d' % len(self.handles)).encode()
            self.handles[h] = path
            self.reply(sftpread.FXP_HANDLE, rid_b + U32.pack(len(h)) + h)
        elif kind == sftpread.FXP_FSTAT:
            path = self.handles[p.string()]
            size = len(self.server.files[path])
            self.reply(sftpread.FXP_ATTRS, rid_b + U32.pack(5) +
                       struct.pack('>Q', size) + U32.pack(0o100644))
        elif kind == sftpread.FXP_READ:
            self.server.read_requests += 1
            self.pending += 1
            self.server.max_inflight = max(self.server.max_inflight,
                                           self.pending)
            data = self.server.files[self.handles[p.string()]]
            off = p.u64()
            n = min(p.u32(), self.server.max_read)
            if off >= len(data):
                self.reply(sftpread.FXP_STATUS, rid_b + U32.pack(1) +
                           U32.pack(3) + b'EOF' + U32.pack(0))
            else:
                chunk = data[off:off + n]
                self.reply(sftpread.FXP_DATA, rid_b + U32.pack(len(chunk))
                           + chunk)
        elif kind == sftpread.FXP_CLOSE:
            self.handles.pop(p.string(), None)
            self.server.closed_handles += 1
            self.reply(sftpread.FXP_STATUS, rid_b + U32.pack(0) +
                       U32.pack(0) + U32.pack(0))
        elif kind == sftpread.FXP_OPENDIR:
            path = p.string().decode()
            if path not in self.server.dirs:
                msg = b'No such file'
                self.reply(sftpread.FXP_STATUS, rid_b + U32.pack(2) +
                           U32.pack(len(msg)) + msg + U32.pack(0))
                return
            h = ('d%d' % len(self.handles)).encode()
            self.handles[h] = [path, 0]
            self.reply(sftpread.FXP_HANDLE, rid_b + U32.pack(len(h)) + h)
        elif kind == sftpread.FXP_READDIR:
            state = self.handles[p.string()]
            names = self.server.dirs[state[0]][state[1]:state[1] + 3]
            state[1] += len(names)
            if not names:
                self.reply(sftpread.FXP_STATUS, rid_b + U32.pack(1) +
                           U32.pack(3) + b'EOF' + U32.pack(0))
                return
            body = rid_b + U32.pack(len(names))
            for name, mode in names:
                longname = b'-rw-r--r-- 1 root root 0 ' + name
                attrs = (U32.pack(sftpread.ATTR_SIZE) + struct.pack('>Q', 7)
                         if mode is None else
                         U32.pack(sftpread.ATTR_SIZE |
                                  sftpread.ATTR_PERMISSIONS) +
                         struct.pack('>Q', 7) + U32.pack(mode))
                body += (U32.pack(len(name)) + name + U32.pack(len(longname))
                         + longname + attrs)
            self.reply(sftpread.FXP_NAME, body)

    def recv(self, n):
        fault = self.server.fault()
        if fault == 'cut':
            self.closed = True
            if self.server.cut_with is not None:
                raise self.server.cut_with
            return b''
        if fault == 'stall':
            raise socket.timeout()
        if self.closed:
            return b''
        if not self.out:
            raise socket.timeout()
        k = min(n, len(self.out), self.server.rng.choice(
            (1, 3, 7, 100, 4096, 70000, 1 << 20)))
        data = bytes(self.out[:k])
        del self.out[:k]
        self.server.sent += k
        # Replies handed out: their requests are answered.
        self.pending = 0
        return data


class FakeConnection(object):
    """What Connection gives a pipeline: sessions, a generation that
    changes at every reconnection, the byte count; ``retrying`` as
    Connection does it (without waiting)."""

    def __init__(self, server):
        self.server = server
        self.generation = 1
        self.bytes = 0
        self.drops = 0
        self.live = None

    def connect(self, session, gen):
        if session is not None and not session.closed and \
                gen == self.generation and session is self.live:
            return session, gen
        self.live = sftpread.Session(FakeChannel(self.server))
        return self.live, self.generation

    def count(self, n):
        self.bytes += n

    def retrying(self, step, attempts=100):
        for _ in range(attempts):
            try:
                return step()
            except sftpread.Lost:
                self.drops += 1
                if self.live is not None:
                    self.live.close()
                self.live = None
                self.generation += 1
        raise AssertionError('no progress after %d reconnections'
                             % attempts)
