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

"""A file on a host, read at random over SFTP like a local file.

:class:`RemoteFile` has the interface of :class:`any2kvm_os.fileio.
FileView` (``name``, ``size``, ``pread``, ``data_runs``, ``close``), so
the format readers read a remote VHD as they read a local one.  Reads go
through the connection's :class:`~.sftpread.Pipeline`: a read is split in
requests of ``ssh_sftp_request_kib`` sent together, and ranges announced
with :meth:`RemoteFile.will_read` are asked for ahead of the reads, at
most ``ssh_sftp_max_requests`` in flight, so a link with long round trips
stays full.  After a lost connection the file is opened again on the new
one and the read goes on where it was; a file whose size changed
meanwhile is refused.

A file of ``stripe_min`` (64 MiB) or more is read over the connection's
:meth:`~.connection.Connection.streams` (``ssh_sftp_streams``): stripe
``k`` of ``stripe`` bytes (4 MiB) over stream ``k mod n``, each with its
own pipeline, read-ahead plan and reconnections.  The reads stay in the
caller's thread; what runs beside it is each connection's paramiko
thread, which receives and decrypts (OpenSSL releases the GIL) the
stripes asked for ahead while the caller takes another stream's.  A
stream that cannot connect or open the file is left out, with a warning;
one that drops later is reconnected like the first, and when it gives up
its error (one line) fails the read.

It opens the one path its caller names, and never a path it read.
"""

import bisect
import logging

from any2kvm_os import exception

LOG = logging.getLogger(__name__)


#: Most ranges, and bytes, a file's ``prefetch`` asks for (the rest of
#: what it names is read when asked for, as any read).
PREFETCH_RANGES = 2048
PREFETCH_BYTES = 16 << 20


def _bounded(ranges):
    """The first ``ranges`` within :data:`PREFETCH_RANGES` and
    :data:`PREFETCH_BYTES`, each of a positive length."""
    out, total = [], 0
    for offset, length in ranges:
        if offset < 0 or length <= 0:
            continue
        if len(out) >= PREFETCH_RANGES or total + length > PREFETCH_BYTES:
            break
        out.append((offset, length))
        total += length
    return out


class RemoteFile(object):
    """A read-only remote file (see the module's description).

    ``bytes_read`` counts the bytes received for this file over the wire,
    read-ahead and re-reads after a reconnection included (the connection
    keeps the total).
    """

    def __init__(self, connection, path, size=None, name=None,
                 prefetch=None):
        if not isinstance(path, str) or not path.startswith('/'):
            raise ValueError('a remote path is absolute: %r' % (path,))
        self.connection = connection
        self.path = path
        self.name = name or '%s:%s' % (connection.label, path)
        self._closed = False
        self._key = object()
        self._bytes_at_close = None
        self.size = None
        #: Prefetched ranges: sorted starts, and start -> bytes.
        self._starts, self._held = [], {}
        prefetch = _bounded(prefetch or ())
        pipeline = connection.pipeline
        self.size = self.connection.retrying(
            'opening %s' % self.name,
            lambda: pipeline.open(self._key, path, size, prefetch))
        #: (connection, key) of each stream; stripe k is stream k mod n.
        self._streams = [(connection, self._key)]
        st = connection.settings
        self._stripe = st.stripe
        #: The other streams are opened when a read plan or a read of
        #: more than a stripe comes, not for the few reads of the file's
        #: tables (a cutover opens a disk's base and reads only the leaf:
        #: no connection is opened for it during the downtime).
        self._pending = (path, size) if (
            self.size >= st.stripe_min and st.sftp_streams > 1) else None
        if prefetch:
            self._hold(prefetch)

    def _hold(self, ranges):
        """Read ``ranges`` (asked for with the file's size, see
        :meth:`.sftpread.Pipeline.open`) and keep them: :meth:`pread`
        serves any read inside one of them from memory, as often as it
        is asked (a file whose bytes no longer change: a halted VM's
        leaf, whose first sector every format's probe reads)."""
        for offset, length in ranges:
            end = offset + length
            if end > self.size or offset in self._held:
                # Beyond the end: not read (the file is not what the
                # ranges were taken from); its reads go as any other.
                continue
            parts = []
            self._read(0, offset, end, parts)
            self._held[offset] = b''.join(parts)
            bisect.insort(self._starts, offset)

    def _from_held(self, offset, end):
        i = bisect.bisect_right(self._starts, offset)
        if i:
            start = self._starts[i - 1]
            data = self._held[start]
            if end <= start + len(data):
                return data[offset - start:end - start]
        return None

    def _open_streams(self):
        if self._pending is None:
            return
        path, size = self._pending
        self._pending = None
        connection = self.connection
        for sibling in connection.streams()[1:]:
            key = object()
            pipeline = sibling.pipeline
            try:
                got = sibling.retrying(
                    'opening %s' % self.name,
                    lambda: pipeline.open(key, path, size))
            except exception.SshError as e:
                connection.drop_stream(sibling, e)
                continue
            if got != self.size:
                pipeline.close(key)
                raise exception.SshError(
                    host=connection.label, reason='%s: size changed from '
                    '%d to %d bytes while it was opened' % (
                        path, self.size, got))
            self._streams.append((sibling, key))
        if len(self._streams) > 1:
            LOG.debug('%s: reading over %d connections', self.name,
                      len(self._streams))

    def _split(self, offset, end):
        """(stream index, start, stop) of ``[offset, end)``, cut at
        stripe boundaries."""
        n = len(self._streams)
        if n == 1:
            if offset < end:
                yield 0, offset, end
            return
        stripe = self._stripe
        pos = offset
        while pos < end:
            k = pos // stripe
            stop = min(end, (k + 1) * stripe)
            yield k % n, pos, stop
            pos = stop

    def _read(self, index, offset, end, out):
        conn, key = self._streams[index]
        pipeline = conn.pipeline
        parts = []
        conn.retrying('reading %s at offset %d' % (self.name, offset),
                      lambda: pipeline.read(key, offset, end, parts))
        out.extend(parts)

    @property
    def bytes_read(self):
        if self._bytes_at_close is not None:
            return self._bytes_at_close
        return sum(conn.pipeline.bytes_read(key)
                   for conn, key in self._streams)

    def _check(self, offset, length):
        if offset < 0 or length < 0:
            raise ValueError('negative offset or length')
        if self._closed:
            raise ValueError('%s is closed' % self.name)

    def pread(self, length, offset):
        """Read up to ``length`` bytes at ``offset`` (fewer only at the
        end of the file)."""
        self._check(offset, length)
        if offset >= self.size or length == 0:
            return b''
        end = min(offset + length, self.size)
        if self._starts:
            held = self._from_held(offset, end)
            if held is not None:
                return held
        if end - offset > self._stripe:
            self._open_streams()
        parts = []
        for index, a, b in self._split(offset, end):
            self._read(index, a, b, parts)
        return b''.join(parts)

    def preadv(self, ranges):
        """The bytes of each (offset, length) of ``ranges``, asked for
        together (one round trip for many small reads)."""
        ranges = list(ranges)
        for offset, length in ranges:
            self._check(offset, length)
        wanted = [(o, n) for o, n in ranges if not self._starts or
                  self._from_held(o, min(o + n, self.size)) is None]
        for (conn, key), spans in zip(self._streams,
                                      self._per_stream(wanted)):
            if spans:
                pipeline = conn.pipeline
                conn.retrying(
                    'reading %s' % self.name,
                    lambda: pipeline.prefetch(key, spans))
        return [self.pread(length, offset) for offset, length in ranges]

    def will_read(self, ranges):
        """Announce that ``ranges`` [(offset, length)] will be read, in
        this order, after what was announced before: they are asked for
        ahead, within ``ssh_sftp_max_requests``.  A hint: reads elsewhere
        are served all the same."""
        if not self._closed:
            self._open_streams()
            for (conn, key), spans in zip(self._streams,
                                          self._per_stream(ranges)):
                if spans:
                    conn.pipeline.plan(key, spans)

    def _per_stream(self, ranges):
        """``ranges`` [(offset, length)] cut in stripes, one list per
        stream, in order."""
        if len(self._streams) == 1:
            return [list(ranges)]
        out = [[] for _ in self._streams]
        for offset, length in ranges:
            for index, a, b in self._split(offset, offset + length):
                out[index].append((a, b - a))
        return out

    def held_bytes(self):
        """Bytes of prefetched ranges kept in memory."""
        return sum(len(b) for b in self._held.values())

    def data_runs(self, offset, length):
        """Yield (start, end, is_data) covering ``[offset, offset+length)``:
        SFTP tells no holes, so everything is data."""
        end = min(offset + length, self.size)
        if offset < end:
            yield offset, end, True

    def close(self):
        if not self._closed:
            self._bytes_at_close = self.bytes_read
            self._closed = True
            self._starts, self._held = [], {}
            for conn, key in self._streams:
                conn.pipeline.close(key)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return '<RemoteFile %s size=%s>' % (self.name, self.size)
