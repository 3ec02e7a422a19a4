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

"""Read-only file views the OVA package builds from other views.

A file of an OVF package split in chunks (``ovf:chunkSize``) is one
logical file: :class:`ConcatView` reads its chunk members end to end,
with the interface of :class:`any2kvm_os.fileio.FileView`.
"""

import bisect


class ConcatView(object):
    """A read-only view that is several views end to end (chunked files).

    It has the :class:`FileView` interface readers use (``name``,
    ``size``, ``pread``, ``close``); ``fd`` and ``base`` are those of the
    first part (they identify the file, they are not for reading).
    """

    def __init__(self, parts, name):
        self.parts = list(parts)
        self.name = name
        self._starts = []
        pos = 0
        for p in self.parts:
            self._starts.append(pos)
            pos += p.size
        self.size = pos
        self.fd = self.parts[0].fd if self.parts else None
        self.base = self.parts[0].base if self.parts else 0

    def data_runs(self, offset, length):
        """As :meth:`FileView.data_runs`, across the parts."""
        end = min(offset + length, self.size)
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        while offset < end and i < len(self.parts):
            start = self._starts[i]
            part = self.parts[i]
            stop = min(end, start + part.size)
            if offset < stop:
                for a, b, is_data in part.data_runs(offset - start,
                                                    stop - offset):
                    yield start + a, start + b, is_data
                offset = stop
            i += 1

    def pread(self, length, offset):
        if offset < 0 or length < 0:
            raise ValueError('negative offset or length')
        if offset >= self.size:
            return b''
        length = min(length, self.size - offset)
        i = bisect.bisect_right(self._starts, offset) - 1
        out = []
        while length > 0 and i < len(self.parts):
            part = self.parts[i]
            rel = offset - self._starts[i]
            n = min(length, part.size - rel)
            if n > 0:
                data = part.pread(n, rel)
                out.append(data)
                if len(data) < n:
                    break
                offset += n
                length -= n
            i += 1
        return b''.join(out)

    def close(self):
        # The parts belong to the container that opened them.
        pass

    def __repr__(self):
        return '<ConcatView %s parts=%d size=%d>' % (
            self.name, len(self.parts), self.size)
