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

import bz2
import gzip
import io
import lzma
import sys

import pytest

from any2kvm_os import compression
from any2kvm_os import exception

DATA = b'any2kvm ' * 4096


def compressors():
    out = [(compression.GZIP, gzip.compress), (compression.BZIP2,
                                               bz2.compress),
           (compression.XZ, lzma.compress)]
    # zstandard is a requirement: the zstd path always runs.
    import zstandard
    return out + [(compression.ZSTD, zstandard.ZstdCompressor().compress)]


@pytest.mark.parametrize('kind,compress', compressors())
def test_sniff_read_and_head(kind, compress):
    packed = compress(DATA)
    assert compression.sniff(packed[:compression.HEAD]) == kind
    reader = compression.open_reader('x', io.BytesIO(packed))
    assert reader.read() == DATA
    assert compression.decompress_head(packed[:200], 100) == DATA[:100]


def test_plain():
    assert compression.sniff(DATA) is None
    f = io.BytesIO(DATA)
    assert compression.open_reader('x', f) is f
    assert compression.decompress_head(DATA, 10) == DATA[:10]


def test_corrupt_stream_errors():
    packed = bytearray(gzip.compress(DATA))
    packed[-8] ^= 1
    with pytest.raises(compression.stream_errors()):
        compression.open_reader('x', io.BytesIO(bytes(packed))).read()


def test_zstd_without_module(monkeypatch):
    monkeypatch.setitem(sys.modules, 'zstandard', None)
    assert compression.zstd_errors() == ()
    with pytest.raises(exception.UnsupportedImage, match='zstandard'):
        compression.open_reader('x.zst', io.BytesIO(
            compression.ZSTD_MAGIC + bytes(10)))
