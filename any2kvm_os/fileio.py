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

import os


def _supports_seek_data(fd):
    try:
        os.lseek(fd, 0, os.SEEK_HOLE)
        return True
    except OSError:
        return False


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
        data = os.pread(self.fd, length, self.base + offset)
        while len(data) < length:
            more = os.pread(self.fd, length - len(data),
                            self.base + offset + len(data))
            if not more:
                break
            data += more
        return data

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
