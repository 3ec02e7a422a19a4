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
    # zstandard is a test requirement (a runtime extra): the zstd path
    # always runs in the tests.
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


# -- zstandard: a test requirement, an optional extra at run time -------------

ROOT = __import__('pathlib').Path(__file__).resolve().parents[2]


def _requirement_names(path):
    names = []
    for line in path.read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            names.append(line.split('>')[0].split('=')[0].split('<')[0]
                         .strip().lower())
    return names


def test_zstandard_is_an_extra_and_a_test_requirement():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    extra = [line.split('#', 1)[0].strip()
             for line in cfg['extras']['zstd'].splitlines()]
    assert any(e.startswith('zstandard') for e in extra)
    assert 'zstandard' not in _requirement_names(ROOT / 'requirements.txt')
    assert 'zstandard' in _requirement_names(
        ROOT / 'test-requirements.txt')


def test_no_module_imports_zstandard_when_loaded():
    """Without the extra, every module still imports: zstandard is only
    imported inside the functions that read zstd."""
    import ast
    offenders = []
    for path in sorted((ROOT / 'any2kvm_os').rglob('*.py')):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or '']
            if any(n.split('.')[0] == 'zstandard' for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


class _Trickle(io.BytesIO):
    """A pipe or an HTTP body: read(n) returns at most 1 byte."""

    def read(self, n=-1):
        return super(_Trickle, self).read(1 if n is None or n < 0
                                          else min(n, 1))


def test_open_reader_head_from_short_reads():
    """A head arriving a byte at a time is still sniffed whole: the gzip
    data is decompressed, not taken for plain data."""
    plain = b'disk data ' * 1000
    reader = compression.open_reader('x', _Trickle(gzip.compress(plain)))
    out = b''
    while True:
        data = reader.read(1 << 16)
        if not data:
            break
        out += data
    assert out == plain
    assert compression.read_full(_Trickle(b'abc'), 10) == b'abc'
