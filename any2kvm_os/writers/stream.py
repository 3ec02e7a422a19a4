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

"""The raw disk as a sequential stream, for uploads (Glance, Cinder).

A :class:`RawStream` is a file-like object whose ``read(n)`` returns the
raw disk from offset 0 to its end, zeros included (a raw image in Glance
is the whole disk), folding the chain on the way in bounded memory.  The
digests an image service computes (md5, sha256, sha512) are computed while
reading, so that the caller can compare them with what the service stored
and never has to read the disk twice.
"""

import hashlib
import os

from any2kvm_os import extents as ext

CHUNK = 4 << 20
_ZEROS = bytes(CHUNK)


class _DigestingStream(object):
    """What both streams share: position, digests and progress."""

    def __init__(self, size, algorithms, progress):
        self.size = size
        self.pos = 0
        self.digests = {a: hashlib.new(a) for a in algorithms}
        self.progress = progress

    def __len__(self):
        return self.size

    def tell(self):
        return self.pos

    def _account(self, data):
        for d in self.digests.values():
            d.update(data)
        self.pos += len(data)
        if self.progress and data:
            self.progress(self.pos, self.size)
        return data

    def hexdigest(self, algorithm):
        return self.digests[algorithm].hexdigest()


class RawStream(_DigestingStream):
    """``read(n)`` over the folded chain of a random-access disk."""

    def __init__(self, chain, algorithms=('md5', 'sha256', 'sha512'),
                 progress=None):
        super(RawStream, self).__init__(chain.virtual_size, algorithms,
                                        progress)
        self.chain = chain
        self._extents = chain.iter_extents()
        self._current = None      # the extent being read
        self._buf = b''

    def _next_piece(self):
        """The next run of disk bytes, at most CHUNK long."""
        while self._current is None or self._done >= self._current.length:
            self._current = next(self._extents)
            self._done = 0
        e = self._current
        n = min(CHUNK, e.length - self._done)
        if e.kind == ext.DATA:
            data = self.chain.layers[e.layer].read_extent(e, self._done, n)
        else:
            data = _ZEROS[:n]
        self._done += n
        return data

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        parts = []
        have = 0
        while have < n:
            if not self._buf:
                self._buf = self._next_piece()
            take = self._buf[:n - have]
            self._buf = self._buf[len(take):]
            parts.append(take)
            have += len(take)
        return self._account(parts[0] if len(parts) == 1
                             else b''.join(parts))


class FileStream(_DigestingStream):
    """``read(n)`` over a raw file, with the same digests as RawStream
    (for disks that can only be written in one pass: they are converted to
    a sparse scratch file first)."""

    def __init__(self, path, algorithms=('md5', 'sha256', 'sha512'),
                 progress=None):
        self._file = open(path, 'rb')
        super(FileStream, self).__init__(
            os.fstat(self._file.fileno()).st_size, algorithms, progress)

    def read(self, n=-1):
        return self._account(self._file.read(
            n if n is not None and n >= 0 else -1))

    def close(self):
        self._file.close()
