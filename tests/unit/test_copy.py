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

"""The copy loop: reused buffers read into in place, neighbouring extents
of several layers packed into one write, zero grains found across their
edges, and the fallbacks (readers that return bytes, writers without
``write_buffer``)."""

import os
import random
import threading

import pytest

from any2kvm_os.chain import copy as chain_copy
from any2kvm_os.chain import layer_chain
from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.writers import raw
from tests.lib.fakelayer import FakeLayer

GRAIN = 4096
SIZE = 1 << 20


class FileLayer(FakeLayer):
    """A FakeLayer whose DATA is read from a real file (at the same offset
    as on the disk): the in-place ``preadinto`` path."""

    def __init__(self, path, content, runs, ident, parent=None):
        super(FileLayer, self).__init__(len(content), runs, ident, parent)
        with open(path, 'wb') as f:
            f.write(content)
        self.view = fileio.FileView.open_path(str(path))
        self.content = content


class BytesLayer(FileLayer):
    """The same, read through its own ``read_extent`` (compressed formats
    do that): the copying fallback."""

    def read_extent(self, extent, skip, length):
        start = extent.file_offset + skip
        return self.content[start:start + length]


def random_runs(rng, size):
    runs = []
    pos = rng.randrange(0, 3 * GRAIN)
    while pos < size:
        n = min(size - pos, rng.choice(
            (1, 100, 512, GRAIN - 7, GRAIN, 3 * GRAIN + 5, 70000, 300000)))
        kind = rng.choice((ext.DATA, ext.DATA, ext.ZERO))
        runs.append((pos, kind, n))
        pos += n + rng.choice((0, 0, 1, 513, GRAIN, 200000))
    return runs


def layer_content(rng, size):
    """Random bytes with zero grains (aligned and not) inside."""
    data = bytearray(rng.randbytes(size))
    for _i in range(40):
        a = rng.randrange(size)
        n = rng.choice((100, GRAIN, 2 * GRAIN + 300, 9 * GRAIN))
        data[a:a + n] = bytes(len(data[a:a + n]))
    return bytes(data)


def make_chain(tmp_path, seed, classes=(FileLayer, BytesLayer, FileLayer)):
    rng = random.Random(seed)
    layers = []
    for i, cls in enumerate(classes):
        parent = 'l%d' % (i + 1) if i + 1 < len(classes) else None
        layers.append(cls(tmp_path / ('l%d' % i), layer_content(rng, SIZE),
                          random_runs(rng, SIZE), 'l%d' % i, parent))
    return layer_chain.LayerChain(layers, [x.identity for x in layers])


def expected(chain):
    out = bytearray(SIZE)
    for layer in reversed(chain.layers):
        for start, kind, n in layer._runs:
            n = min(n, SIZE - start)
            if kind == ext.DATA:
                out[start:start + n] = layer.content[start:start + n]
            else:
                out[start:start + n] = bytes(n)
    return bytes(out)


def close(chain):
    for layer in chain.layers:
        layer.view.close()


def data_grains(path):
    fd = os.open(str(path), os.O_RDONLY)
    try:
        view = fileio.FileView(fd, str(path))
        grains = set()
        for start, end, is_data in view.data_runs(0, view.size):
            if is_data:
                grains.update(range(start // GRAIN, -(-end // GRAIN)))
        return grains
    finally:
        os.close(fd)


@pytest.fixture(params=[64 << 10, 1 << 20], ids=['64K-buffers', '1M'])
def small_buffers(request, monkeypatch):
    """Buffers far smaller than the default, so that extents straddle
    them; PACK_GAP stays below the buffer size."""
    monkeypatch.setattr(chain_copy, 'COPY_CHUNK', request.param)
    monkeypatch.setattr(chain_copy, 'PACK_GAP', min(chain_copy.PACK_GAP,
                                                    request.param // 4))
    return request.param


@pytest.mark.parametrize('seed', range(6))
def test_copy_onto_new_file_is_exact_and_sparse(tmp_path, small_buffers,
                                                seed):
    chain = make_chain(tmp_path, seed)
    want = expected(chain)
    out = tmp_path / 'out.raw'
    try:
        writer = raw.RawWriter.open(str(out))
        chain_copy.copy_chain(chain, writer)
        writer.commit()
    finally:
        close(chain)
    assert out.read_bytes() == want
    # Every 4 KiB grain that holds a non-zero byte is allocated, and none
    # other: zero grains are found across the extents' edges as well.
    nonzero = {g for g in range(SIZE // GRAIN)
               if want[g * GRAIN:(g + 1) * GRAIN] != bytes(GRAIN)}
    assert data_grains(out) == nonzero


@pytest.mark.parametrize('seed', range(3))
def test_copy_in_place_zeroes_what_it_must(tmp_path, small_buffers, seed):
    """A target that does not read as zeros (not fresh): zero runs and
    zero grains are zeroed explicitly."""
    chain = make_chain(tmp_path, seed)
    want = expected(chain)
    out = tmp_path / 'old.raw'
    out.write_bytes(b'\xa5' * SIZE)
    try:
        writer = raw.RawWriter.open_in_place(str(out))
        assert not writer.fresh
        chain_copy.copy_chain(chain, writer)
        writer.sync()
        writer.close()
    finally:
        close(chain)
    assert out.read_bytes() == want


def test_writer_without_write_buffer(tmp_path, small_buffers):
    """Any writer with write_data works; the data it gets is a view of a
    reused buffer, valid during the call."""
    class Sink(object):
        fresh = True

        def resize(self, size):
            self.buf = bytearray(size)

        def write_data(self, offset, data, over_hole):
            self.buf[offset:offset + len(data)] = data

        def zero_range(self, offset, length):
            raise AssertionError('a fresh target needs no zeroing')

    chain = make_chain(tmp_path, 11)
    sink = Sink()
    try:
        chain_copy.copy_chain(chain, sink)
    finally:
        close(chain)
    assert bytes(sink.buf) == expected(chain)


def test_progress_counts_the_data_apart_from_the_address(tmp_path):
    """A 4 MiB disk holding 256 KiB: the copy reports the address reached
    and, apart, the data written (the progress line's rate is the
    data's)."""
    size = 4 << 20
    layer = FileLayer(tmp_path / 'l0', os.urandom(size),
                      [(1 << 20, ext.DATA, 256 << 10)], 'l0')
    chain = layer_chain.LayerChain([layer], ['l0'])
    calls = []
    writer = raw.RawWriter.open(str(tmp_path / 'out.raw'))
    try:
        chain_copy.copy_chain(chain, writer, lambda *a: calls.append(a))
        writer.commit()
    finally:
        close(chain)
    assert calls[-1] == (size, size, 256 << 10)
    datas = [c[2] for c in calls]
    assert datas == sorted(datas) and all(c[2] <= c[0] for c in calls)


def test_reader_error_reaches_the_writer(tmp_path, small_buffers):
    class Broken(FileLayer):
        def read_extent(self, extent, skip, length):
            raise exception.InvalidImage(path='broken', reason='bad grain')

    chain = make_chain(tmp_path, 3, (FileLayer, Broken))
    before = threading.active_count()
    writer = raw.RawWriter.open(str(tmp_path / 'out.raw'))
    try:
        with pytest.raises(exception.InvalidImage, match='bad grain'):
            chain_copy.copy_chain(chain, writer)
    finally:
        writer.abort()
        close(chain)
    assert threading.active_count() == before
    assert not [n for n in os.listdir(str(tmp_path))
                if n.endswith('.any2kvm-partial') or n == 'out.raw']


def test_writer_error_stops_the_reader(tmp_path, small_buffers):
    class Full(object):
        fresh = True

        def resize(self, size):
            pass

        def write_data(self, offset, data, over_hole):
            raise exception.TargetError(path='out', reason='disk full')

    chain = make_chain(tmp_path, 4)
    before = threading.active_count()
    try:
        with pytest.raises(exception.TargetError, match='disk full'):
            chain_copy.copy_chain(chain, Full())
    finally:
        close(chain)
    assert threading.active_count() == before


def test_read_extent_into_refuses_a_short_file(tmp_path):
    layer = FileLayer(tmp_path / 'l', b'x' * 8192, [(0, ext.DATA, 8192)],
                      'l')
    try:
        os.truncate(str(tmp_path / 'l'), 5000)
        buf = bytearray(8192)
        e = ext.extent(ext.DATA, 0, 8192, 0)
        with pytest.raises(exception.InvalidImage, match='truncated'):
            layer.read_extent_into(e, 0, memoryview(buf))
    finally:
        layer.view.close()


def test_read_extent_into_fallback_checks_the_length(tmp_path):
    class Short(BytesLayer):
        def read_extent(self, extent, skip, length):
            return b'y' * (length - 1)

    layer = Short(tmp_path / 'l', b'x' * 8192, [(0, ext.DATA, 8192)], 'l')
    try:
        e = ext.extent(ext.DATA, 0, 8192, 0)
        with pytest.raises(exception.InvalidImage):
            layer.read_extent_into(e, 0, memoryview(bytearray(4096)))
    finally:
        layer.view.close()


@pytest.mark.parametrize('seed', range(20))
def test_zero_runs_of_a_buffer_and_a_view_agree(seed):
    rng = random.Random(seed)
    n = rng.randrange(0, 40 * GRAIN)
    buf = bytearray(n + rng.randrange(3) * GRAIN)
    for _i in range(rng.randrange(6)):
        a = rng.randrange(len(buf) + 1)
        chunk = buf[a:a + rng.randrange(3 * GRAIN)]
        buf[a:a + len(chunk)] = rng.randbytes(len(chunk))
    base = rng.choice((0, 512, GRAIN - 100, 7))
    want = raw.zero_runs(bytes(buf[:n]), base)
    assert raw.zero_runs(buf, base, n) == want
    assert raw.zero_runs(memoryview(buf)[:n], base) == want


def _zero_grains_one_by_one(data, base):
    """zero_runs' answer, grain by grain, for comparison."""
    out = []
    a = -base % GRAIN
    start = None
    while a + GRAIN <= len(data):
        if bytes(data[a:a + GRAIN]) == bytes(GRAIN):
            start = a if start is None else start
        elif start is not None:
            out.append((start, a))
            start = None
        a += GRAIN
    if start is not None:
        out.append((start, a))
    return out


@pytest.mark.parametrize('seed', range(20))
def test_zero_runs_sampled_bytes_do_not_decide_alone(seed):
    # zero_runs looks first at the first, middle and last byte of each
    # grain: a grain zero there but not elsewhere must not count, and
    # zero runs longer than 16 grains must be found whole.
    rng = random.Random(seed)
    n = rng.randrange(0, 60 * GRAIN)
    buf = bytearray(n) if seed % 2 else bytearray(rng.randbytes(n))
    for _i in range(rng.randrange(8)):
        a = rng.randrange(n + 1)
        b = min(n, a + rng.randrange(40 * GRAIN))
        buf[a:b] = bytes(b - a)
    base = rng.choice((0, 512, GRAIN - 100, 7))
    for _i in range(rng.randrange(12)):
        a = rng.randrange(n + 1)
        if a < n and (base + a) % GRAIN not in (0, GRAIN // 2, GRAIN - 1):
            buf[a] = 1
    want = _zero_grains_one_by_one(buf, base)
    assert raw.zero_runs(bytes(buf), base) == want
    assert raw.zero_runs(buf, base) == want
    assert raw.zero_runs(memoryview(buf), base) == want
