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

"""A TCP proxy on 127.0.0.1 that delays every byte, for links with long
round trips where ``tc netem`` is not available.

:class:`DelayProxy` listens on a free port of 127.0.0.1 and forwards each
connection to ``target`` (host, port), holding what it forwards for half
of ``rtt`` seconds in each direction: a request and its answer take
``rtt`` more than over loopback.  It has no bandwidth limit of its own
beyond its threads (one reader and one writer per direction).  Threads
are daemons and :meth:`close` joins them (bounded)::

    with DelayProxy(('127.0.0.1', server.port), rtt=0.05) as proxy:
        ... connect to 127.0.0.1:proxy.port ...

A lost link: :meth:`cut` closes every connection made so far (the
listener stays, so the client can connect again); ``cut_after=N`` does
it once, by itself, when N bytes have gone from the server to the
client (mid-copy, wherever the transfer is).  ``connections`` and
``cuts`` count what happened.  With ``reset=True`` a cut resets the
connections (an RST, as a peer that died or a firewall sends) rather
than closing them in order (a FIN).

One connection lost among others: ``cut_one=(n, N)`` closes, alone, the
first connection numbered ``n`` or more (the first accepted is 0) down
which N bytes have gone; the others carry on.  ``slow_one=(m, rate)``
lets at most ``rate`` bytes a second go down connection ``m`` until
``cut_one`` has cut (the connection ``m`` slow, so that later ones find
work to do).  ``down`` counts the bytes down each connection,
``one_cut`` is the number of the one cut.
"""

import queue
import socket
import struct
import threading
import time

_CHUNK = 256 << 10


def _shut(sockets, reset=False):
    """Shut both directions of each socket, then close it; with
    ``reset``, close it with an RST (a zero linger time), having shut
    only its reading side (which wakes a thread blocked reading it, and
    sends nothing)."""
    for s in sockets:
        if reset:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             struct.pack('ii', 1, 0))
                s.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            s.close()
            continue
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


class DelayProxy(object):

    def __init__(self, target, rtt=0.0, cut_after=None, cut_one=None,
                 slow_one=None, reset=False):
        self.target = target
        self.reset = reset
        self.delay = rtt / 2.0
        self.cut_after = cut_after
        self.cut_one = cut_one
        self.slow_one = slow_one
        self.one_cut = None
        self.down = []
        self._pairs = []
        self._slow_due = 0.0
        #: Bytes forwarded from the server to the client, connections
        #: accepted, cuts made.
        self.bytes_down = 0
        self.connections = 0
        self.cuts = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._threads = []
        self._sockets = []
        self._lock = threading.Lock()
        self._accept = self._start(self._accept_loop)

    def _start(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        with self._lock:
            self._threads.append(t)
        return t

    def _accept_loop(self):
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
                index = self.connections
                self.connections += 1
                self.down.append(0)
                self._pairs.append([client, upstream])
            self._pipe(client, upstream)
            self._pipe(upstream, client, down=True, index=index)

    def _pipe(self, src, dst, down=False, index=None):
        q = queue.Queue()
        self._start(self._reader, src, q, down, index)
        self._start(self._writer, dst, q)

    def cut(self):
        """Close every connection made so far (both sides) at once."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self.cuts += 1
        _shut(sockets, self.reset)

    def _one(self, index, n):
        """Count ``n`` bytes down connection ``index``: (whether it is
        cut now (:attr:`cut_one`), how much longer its bytes are held
        (:attr:`slow_one`))."""
        pair, extra = None, 0.0
        with self._lock:
            self.down[index] += n
            due = (self.cut_one is not None and self.one_cut is None and
                   index >= self.cut_one[0] and
                   self.down[index] >= self.cut_one[1])
            if due:
                self.one_cut = index
                pair = self._pairs[index]
            slow = self.slow_one
            if slow is not None and slow[0] == index and \
                    self.one_cut is None:
                now = time.monotonic()
                self._slow_due = max(now, self._slow_due) + \
                    n / float(slow[1])
                extra = self._slow_due - now
        if pair:
            _shut(pair, self.reset)
        return due, extra

    def _reader(self, src, q, down=False, index=None):
        try:
            while True:
                data = src.recv(_CHUNK)
                extra = 0.0
                if down and data and index is not None:
                    cut, extra = self._one(index, len(data))
                    if cut:
                        q.put((0, b''))
                        return
                if down and data and self.cut_after is not None:
                    with self._lock:
                        self.bytes_down += len(data)
                        due = (not self.cuts and
                               self.bytes_down >= self.cut_after)
                    if due:
                        self.cut()
                        q.put((0, b''))
                        return
                q.put((time.monotonic() + self.delay + extra, data))
                if not data:
                    return
        except OSError:
            q.put((0, b''))

    def _writer(self, dst, q):
        try:
            while True:
                try:
                    due, data = q.get(timeout=0.5)
                except queue.Empty:
                    if self._closing.is_set():
                        return
                    continue
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            pass

    def close(self):
        self._closing.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            sockets, self._sockets = self._sockets, []
            threads = list(self._threads)
        _shut(sockets)
        for t in threads:
            t.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
