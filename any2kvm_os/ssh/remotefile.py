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
the format readers read a remote VHD as they read a local one.  A read
is split into SFTP requests of 32 KiB sent together (``readv``, at most
``ssh_sftp_max_requests`` in flight), so a high-latency link is kept
full within one read.  After a lost connection the file is opened again
on the new one and the read goes on at the same offset; a file whose size
changed meanwhile is refused.

It opens the one path its caller names, and never a path it read.
"""

import logging
import stat
import threading

from any2kvm_os import exception

LOG = logging.getLogger(__name__)

#: Bytes of one SFTP read request (paramiko's SFTPFile.MAX_REQUEST_SIZE).
_REQUEST = 32768


class RemoteFile(object):
    """A read-only remote file (see the module's description).

    ``bytes_read`` counts the bytes received for this file, re-reads
    after a reconnection included (the connection keeps the total).
    """

    def __init__(self, connection, path, size=None, name=None):
        if not isinstance(path, str) or not path.startswith('/'):
            raise ValueError('a remote path is absolute: %r' % (path,))
        self.connection = connection
        self.path = path
        self.name = name or '%s:%s' % (connection.label, path)
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._file = None
        self._generation = None
        self._fixed_size = size
        self._closed = False
        self.size = None
        self.size = self.connection.retrying('opening %s' % self.name,
                                             self._open)

    def _open(self):
        """Open the path on the live connection; returns its size."""
        sftp = self.connection.sftp()
        generation = self.connection.generation
        try:
            handle = sftp.open(self.path, 'rb')
        except OSError as e:
            if self.connection.is_active() and e.errno is not None:
                raise exception.SshError(
                    host=self.connection.label, reason='%s: %s'
                    % (self.path, e.strerror or e))
            raise
        try:
            attrs = handle.stat()
            if self._fixed_size is not None:
                size = self._fixed_size
            elif attrs.st_mode is not None and stat.S_ISREG(attrs.st_mode):
                size = attrs.st_size
            else:
                raise exception.SshError(
                    host=self.connection.label, reason='%s: not a regular '
                    'file (give its size to read it)' % self.path)
            if self.size is not None and size != self.size:
                raise exception.SshError(
                    host=self.connection.label, reason='%s: size changed '
                    'from %d to %d bytes while it was read' % (
                        self.path, self.size, size))
        except BaseException:
            handle.close()
            raise
        self._file, self._generation = handle, generation
        return size

    def _current(self):
        """The handle on the live connection, opened again after a
        reconnection."""
        if self._file is None or \
                self._generation != self.connection.generation:
            self._file = None
            self._open()
        return self._file

    def pread(self, length, offset):
        """Read up to ``length`` bytes at ``offset`` (fewer only at the
        end of the file)."""
        if offset < 0 or length < 0:
            raise ValueError('negative offset or length')
        if self._closed:
            raise ValueError('%s is closed' % self.name)
        if offset >= self.size or length == 0:
            return b''
        length = min(length, self.size - offset)
        # One readv of up to ``ssh_sftp_max_requests`` requests at a
        # time: a lost connection loses at most one window.
        window = self.connection.settings.sftp_max_requests * _REQUEST
        parts = []
        got = 0
        with self._lock:
            while got < length:
                n = min(window, length - got)
                at = offset + got
                part = self.connection.retrying(
                    'reading %s at offset %d' % (self.name, at),
                    lambda: self._read(n, at))
                if not part:
                    break
                parts.append(part)
                got += len(part)
        return b''.join(parts)

    def _read(self, length, offset):
        handle = self._current()
        data = b''.join(handle.readv(
            [(offset, length)],
            max_concurrent_prefetch_requests=(
                self.connection.settings.sftp_max_requests)))
        self.bytes_read += len(data)
        self.connection.count(len(data))
        return data

    def data_runs(self, offset, length):
        """Yield (start, end, is_data) covering ``[offset, offset+length)``:
        SFTP tells no holes, so everything is data."""
        end = min(offset + length, self.size)
        if offset < end:
            yield offset, end, True

    def close(self):
        handle, self._file = self._file, None
        if handle is not None:
            try:
                handle.close()
            except Exception:   # a dead connection: nothing to close
                pass
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return '<RemoteFile %s size=%s>' % (self.name, self.size)
