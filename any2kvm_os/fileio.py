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
"""Random-access views of the bytes a reader parses.

Readers never open paths: a container hands them a :class:`FileView`,
which is a window (offset, size) onto an already open file descriptor.
A plain file is a window over the whole file; an uncompressed tar member
is a window inside the archive, so it is read in place without a copy.
"""

import collections
import os

from any2kvm_os import shortread


def _supports_seek_data(fd):
    try:
        os.lseek(fd, 0, os.SEEK_HOLE)
        return True
    except OSError:
        return False


def pread_full(fd, length, offset):
    """``length`` bytes of ``fd`` at ``offset``: fewer only at the end of
    the file.  pread(2) may return fewer bytes than asked for (a signal,
    a network or FUSE file system); one call is not "the bytes there"."""
    data = os.pread(fd, length, offset)
    if len(data) >= length or not data:
        return data
    return shortread.gather(
        lambda got: os.pread(fd, length - got, offset + got), length, data)


class FileView(object):
    """A read-only window [base, base + size) of an open file."""

    def __init__(self, fd, name, base=0, size=None, owner=None):
        self.fd = fd
        self.name = name
        self.base = base
        if size is None:
            size = os.fstat(fd).st_size - base
        self.size = size
        # Keep whatever owns the descriptor alive as long as the view.
        self._owner = owner

    @classmethod
    def open_path(cls, path, name=None):
        """Open a regular file read-only (used by containers only)."""
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
        view = cls(fd, name or path)
        view._own_fd = True
        return view

    def pread(self, length, offset):
        """Read up to ``length`` bytes at ``offset`` inside the window."""
        if offset < 0 or length < 0:
            raise ValueError('negative offset or length')
        if offset >= self.size:
            return b''
        length = min(length, self.size - offset)
        return pread_full(self.fd, length, self.base + offset)

    def preadinto(self, buf, offset):
        """Read into ``buf`` (a writable memoryview) at ``offset`` inside
        the window, as :meth:`pread` would return them; returns how many
        bytes were read (fewer only at the end of the window or file)."""
        if offset < 0:
            raise ValueError('negative offset')
        length = max(0, min(len(buf), self.size - offset))
        done = 0
        while done < length:
            n = os.preadv(self.fd, [buf[done:length]],
                          self.base + offset + done)
            if not n:
                break
            done += n
        return done

    #: Announced spans closer than this are asked for as one.
    WILL_READ_GAP = 64 << 10

    def will_read(self, ranges):
        """Announce that ``ranges`` [(offset, length)] inside the window
        will be read soon, in this order: the kernel is asked to read them
        ahead (``POSIX_FADV_WILLNEED``).  A file that is not in the page
        cache is then read from the disk while the copy works on earlier
        data, many requests at once, instead of one read at a time when
        the copy gets there (qemu-img keeps several reads in flight).  A
        hint: nothing is read or checked here, and a file system that
        ignores it changes nothing.  Spans closer than WILL_READ_GAP (a
        VHD block's bitmap between two blocks) are asked for as one."""
        if self.fd is None or not hasattr(os, 'posix_fadvise'):
            return
        start = end = None
        for offset, length in ranges:
            a = max(0, offset)
            b = min(offset + length, self.size)
            if a >= b:
                continue
            if start is not None and end + self.WILL_READ_GAP >= a >= start:
                end = max(end, b)
                continue
            if start is not None:
                self._willneed(start, end)
            start, end = a, b
        if start is not None:
            self._willneed(start, end)

    def _willneed(self, start, end):
        try:
            os.posix_fadvise(self.fd, self.base + start, end - start,
                             os.POSIX_FADV_WILLNEED)
        except OSError:
            pass

    def data_runs(self, offset, length):
        """Yield (start, end, is_data) covering ``[offset, offset+length)``
        of the window, from the file system's SEEK_DATA/SEEK_HOLE: holes of
        a sparse source need not be read.  Where the file system cannot
        tell, everything is data."""
        end = min(offset + length, self.size)
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self.fd, self.base + pos, os.SEEK_DATA) \
                    - self.base
            except OSError:
                # ENXIO: only a hole up to the end of the file; EINVAL or
                # no support: treat as data.
                if _supports_seek_data(self.fd):
                    yield pos, end, False
                else:
                    yield pos, end, True
                return
            if data > pos:
                yield pos, min(data, end), False
                pos = min(data, end)
                if pos >= end:
                    return
            hole = os.lseek(self.fd, self.base + pos, os.SEEK_HOLE) - self.base
            stop = min(hole, end)
            yield pos, stop, True
            pos = stop

    def close(self):
        if getattr(self, '_own_fd', False) and self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return '<FileView %s base=%d size=%d>' % (self.name, self.base,
                                                  self.size)


class ForwardStream(object):
    """A forward-only reader of exactly ``size`` bytes of ``fileobj``.

    Used for members of compressed archives: they can be read once, in
    order.  ``peek`` looks ahead without consuming; ``skip_to`` only moves
    forward; reading past ``size`` is an error naming the member.
    """

    def __init__(self, fileobj, name, size):
        self.fileobj = fileobj
        self.name = name
        self.size = size
        self.pos = 0
        self._peeked = b''

    def _raw_read(self, n):
        out = []
        while n > 0:
            data = self.fileobj.read(min(n, 8 << 20))
            if not data:
                break
            out.append(data)
            n -= len(data)
        return b''.join(out)

    def peek(self, n):
        n = min(n, self.size - self.pos)
        if len(self._peeked) < n:
            self._peeked += self._raw_read(n - len(self._peeked))
        return self._peeked[:n]

    def read_exact(self, n):
        from any2kvm_os import exception
        if self.pos + n > self.size:
            raise exception.InvalidImage(
                path=self.name, reason='truncated: needs %d bytes at offset '
                '%d, member holds %d' % (n, self.pos, self.size))
        if self._peeked:
            head = self._peeked[:n]
            self._peeked = self._peeked[n:]
            data = head + self._raw_read(n - len(head)) if len(head) < n \
                else head
        else:
            data = self._raw_read(n)
        if len(data) != n:
            raise exception.InvalidImage(
                path=self.name, reason='truncated: needs %d bytes at offset '
                '%d, got %d' % (n, self.pos, len(data)))
        self.pos += n
        return data

    def skip_to(self, offset):
        from any2kvm_os import exception
        if offset < self.pos:
            raise exception.InvalidImage(
                path=self.name, reason='structure at offset %d lies before '
                'the read position %d: cannot be read in one pass'
                % (offset, self.pos))
        while self.pos < offset:
            self.read_exact(min(offset - self.pos, 8 << 20))

    def drain(self):
        """Consume the rest of the member."""
        self.skip_to(self.size)


class ChunkReader(object):
    """A forward-only file object over an iterable of byte chunks (an
    image's data as Glance sends it), checked as it is read.

    The data must be exactly ``size`` bytes with MD5 ``checksum`` (when
    given): reading the end of the data raises InvalidArchive naming
    ``name`` otherwise, so a caller that reads to the end before it commits
    never commits a short or altered download.  The first ``HEAD`` bytes
    are kept: :meth:`head` looks at them without consuming, and ``seek(0)``
    works while nothing beyond them was read.
    """

    HEAD = 64 << 10

    def __init__(self, chunks, name, size, checksum=None):
        import hashlib
        self._source = chunks
        self._chunks = iter(chunks)
        self.name = name
        self.size = size
        self.checksum = checksum
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._got = 0            # bytes taken from the chunks
        self._kept = b''         # the first HEAD bytes taken
        self._pending = collections.deque()   # taken, not yet returned
        self._off = 0            # into _pending[0]
        self.pos = 0
        self._ended = False

    def _take(self):
        if self._ended:
            return b''
        from any2kvm_os import exception
        for chunk in self._chunks:
            if not chunk:
                continue
            self._got += len(chunk)
            if self._got > self.size:
                raise exception.InvalidArchive(
                    path=self.name, reason='Glance sent more than the %d '
                    'bytes the image has' % self.size)
            self._md5.update(chunk)
            if len(self._kept) < self.HEAD:
                self._kept += chunk[:self.HEAD - len(self._kept)]
            return chunk
        self._ended = True
        if self._got != self.size:
            raise exception.InvalidArchive(
                path=self.name, reason='download ended after %d of %d bytes'
                % (self._got, self.size))
        if self.checksum and self._md5.hexdigest() != self.checksum:
            raise exception.InvalidArchive(
                path=self.name, reason='downloaded data does not match the '
                'image checksum')
        return b''

    def head(self, n):
        """The first ``n`` (at most HEAD) bytes, read ahead if needed."""
        n = min(n, self.HEAD)
        while len(self._kept) < n and not self._ended:
            chunk = self._take()
            if chunk:
                self._pending.append(chunk)
        return self._kept[:n]

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.size
        parts = []
        while n > 0:
            if not self._pending:
                chunk = self._take()
                if not chunk:
                    break
                self._pending.append(chunk)
                self._off = 0
            first = self._pending[0]
            take = min(n, len(first) - self._off)
            parts.append(first[self._off:self._off + take])
            self._off += take
            n -= take
            if self._off == len(first):
                self._pending.popleft()
                self._off = 0
        data = b''.join(parts)
        self.pos += len(data)
        return data

    def seek(self, pos, whence=0):
        """Only back to 0, while what was read lies in the kept head."""
        import io
        if whence != 0 or pos != 0 or self.pos > len(self._kept):
            raise io.UnsupportedOperation('%s: a download is read forward '
                                          'only' % self.name)
        rest = list(self._pending)
        if rest:
            rest[0] = rest[0][self._off:]
        head = [self._kept[:self.pos]] if self.pos else []
        self._pending = collections.deque(head + rest)
        self._off = 0
        self.pos = 0
        return 0

    def close(self):
        close = getattr(self._source, 'close', None)
        if close is not None:
            close()

    def rest(self):
        """Yield all the data from the current position (for a caller that
        decided to store it instead)."""
        while True:
            data = self.read(8 << 20)
            if not data:
                return
            yield data
