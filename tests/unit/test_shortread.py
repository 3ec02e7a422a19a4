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

"""The read-until-n-or-the-end loop a stream and pread(2) share."""

import io
import os

from any2kvm_os import compression
from any2kvm_os import fileio
from any2kvm_os import shortread


class _Trickle(io.RawIOBase):
    """A stream returning at most 3 bytes a read."""

    def __init__(self, data):
        self._data = data

    def readable(self):
        return True

    def read(self, n=-1):
        out, self._data = self._data[:min(n, 3)], self._data[min(n, 3):]
        return out


def test_gather_joins_pieces_until_n():
    asked = []

    def read(got):
        asked.append(got)
        return b'ab'
    assert shortread.gather(read, 5) == b'ababab'
    assert asked == [0, 2, 4]
    assert shortread.gather(read, 4, first=b'x') == b'xabab'


def test_gather_stops_at_the_end():
    pieces = [b'abc', b'de', b'']
    assert shortread.gather(lambda got: pieces.pop(0), 10) == b'abcde'
    assert shortread.gather(lambda got: b'', 10, first=b'z') == b'z'
    assert shortread.gather(lambda got: b'never', 0) == b''


def test_read_full_of_a_trickling_stream():
    data = bytes(range(256)) * 3
    assert compression.read_full(_Trickle(data), 700) == data[:700]
    assert compression.read_full(_Trickle(data), 10000) == data


def test_pread_full_after_short_preads(tmp_path, monkeypatch):
    path = tmp_path / 'f'
    data = os.urandom(10000)
    path.write_bytes(data)
    real = os.pread
    calls = []

    def short_pread(fd, n, offset):
        calls.append((n, offset))
        return real(fd, min(n, 4096), offset)
    monkeypatch.setattr(os, 'pread', short_pread)
    fd = os.open(str(path), os.O_RDONLY)
    try:
        assert fileio.pread_full(fd, 9000, 100) == data[100:9100]
        assert calls == [(9000, 100), (4904, 4196), (808, 8292)]
        del calls[:]
        assert fileio.pread_full(fd, 9000, 5000) == data[5000:]
        assert calls == [(9000, 5000), (4904, 9096), (4000, 10000)]
        del calls[:]
        assert fileio.pread_full(fd, 4096, 0) == data[:4096]
        assert calls == [(4096, 0)]        # one pread when it is whole
    finally:
        os.close(fd)
