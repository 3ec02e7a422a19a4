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

"""The writer thread of the incremental apply: reads overlap writes,
every write is done when ``_apply_one`` returns, errors of either side
propagate, the thread is always joined, and it never holds more than
its bounded queue."""

import threading

import pytest

from any2kvm_os import extents as ext
from any2kvm_os import incremental
from any2kvm_os.writers import raw

CHUNK = raw.COPY_CHUNK
WAIT = 60   # seconds: bounds every wait of these tests (never reached)


class Layer(object):
    def __init__(self, size, reads, fail_at=None):
        self.virtual_size = size
        self.parent_ref = None
        self.reads = reads
        self.fail_at = fail_at

    def read_extent(self, e, skip, n):
        pos = e.offset + skip
        if self.fail_at is not None and pos >= self.fail_at:
            raise OSError(5, 'read failed')
        self.reads.append(pos)
        return bytes([1 + (pos // CHUNK) % 250]) * n


class Chain(object):
    def __init__(self, layer, extents):
        self.layers = [layer]
        self.extents = extents

    def iter_extents(self, top, bottom):
        return iter(self.extents)


class Target(object):
    fresh = False

    def __init__(self, gate=None, fail_at=None):
        self.gate = gate
        self.fail_at = fail_at
        self.writes = {}
        self.zeros = []
        self.threads = set()

    def resize(self, size):
        self.size = size

    def write_data(self, offset, data, over_hole):
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(WAIT)
        if self.fail_at is not None and offset >= self.fail_at:
            raise OSError(28, 'No space left on device')
        self.writes[offset] = bytes(data)

    def zero_range(self, offset, length):
        self.zeros.append((offset, length))


def _writers():
    return [t for t in threading.enumerate()
            if t.name == 'any2kvm-target-writer']


def _chain(chunks, reads, fail_at=None):
    size = (chunks + 1) * CHUNK
    layer = Layer(size, reads, fail_at)
    return Chain(layer, [ext.extent(ext.DATA, 0, chunks * CHUNK, 0),
                         ext.extent(ext.ZERO, chunks * CHUNK, CHUNK)])


def test_everything_is_written_by_the_writer_thread_then_joined():
    reads = []
    chain = _chain(6, reads)
    target = Target()
    written = incremental._apply_one(chain, 0, target, None)
    assert written == 6 * CHUNK
    assert sorted(target.writes) == [k * CHUNK for k in range(6)]
    assert all(d == bytes([1 + k]) * CHUNK
               for k, d in enumerate(target.writes[o]
                                     for o in sorted(target.writes)))
    # Not fresh: the base's ZERO run is zeroed.
    assert target.zeros == [(6 * CHUNK, CHUNK)]
    assert target.threads == {'any2kvm-target-writer'}
    assert not _writers()


def test_a_write_error_propagates_and_the_thread_is_joined():
    reads = []
    chain = _chain(12, reads)
    target = Target(fail_at=2 * CHUNK)
    with pytest.raises(OSError, match='No space left'):
        incremental._apply_one(chain, 0, target, None)
    assert not _writers()
    # The reader stopped soon after the failure (within the queue).
    assert len(reads) <= 2 + incremental.WRITE_QUEUE + 2


def test_a_read_error_propagates_and_the_thread_is_joined():
    reads = []
    chain = _chain(6, reads, fail_at=3 * CHUNK)
    target = Target()
    with pytest.raises(OSError, match='read failed'):
        incremental._apply_one(chain, 0, target, None)
    assert not _writers()
    # Nothing past the failed read; what was queued may be dropped.
    assert all(o < 3 * CHUNK for o in target.writes)


def test_the_reader_is_at_most_the_queue_ahead_of_the_writer():
    reads = []
    chain = _chain(20, reads)
    gate = threading.Event()
    target = Target(gate=gate)
    result = []
    t = threading.Thread(target=lambda: result.append(
        incremental._apply_one(chain, 0, target, None)), daemon=True)
    t.start()
    try:
        # The writer holds its first chunk; the reader fills the queue
        # and waits: one being written + WRITE_QUEUE queued + the one
        # read and waiting to be put.
        limit = 1 + incremental.WRITE_QUEUE + 1
        deadline = threading.Event()
        for _ in range(int(WAIT / 0.05)):
            if len(reads) >= limit:
                break
            deadline.wait(0.05)
        deadline.wait(0.3)     # it would go on if it were unbounded
        assert len(reads) == limit
        assert not target.writes
    finally:
        gate.set()
        t.join(WAIT)
    assert not t.is_alive()
    assert result == [20 * CHUNK] and len(target.writes) == 20
    assert not _writers()


def test_a_guard_that_raises_stops_every_write_before_it_is_made(tmp_path):
    """A migration's lease lost (its target's guard raises): no write,
    no zeroing, no resize reaches the target."""
    path = tmp_path / 'target.raw'
    path.write_bytes(b'o' * 8192)
    w = raw.RawWriter.open_in_place(str(path))
    calls = []

    def guard():
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError('lease lost')

    w.guard = guard
    try:
        w.write_data(0, b'n' * 4096, over_hole=False)
        with pytest.raises(RuntimeError):
            w.write_data(4096, b'n' * 4096, over_hole=False)
        with pytest.raises(RuntimeError):
            w.write_buffer(4096, bytearray(b'n' * 4096), 4096, False)
        with pytest.raises(RuntimeError):
            w.zero_range(4096, 4096)
        with pytest.raises(RuntimeError):
            w.resize(4096)
    finally:
        w.guard = None
        w.close()
    assert path.read_bytes() == b'n' * 4096 + b'o' * 4096
    assert len(calls) == 5


def test_a_long_zeroing_checks_the_guard_between_pieces(
        tmp_path, monkeypatch):
    monkeypatch.setattr(raw, 'GUARDED_ZERO', 4096)
    path = tmp_path / 'target.raw'
    path.write_bytes(b'o' * 16384)
    w = raw.RawWriter.open_in_place(str(path))
    calls = []

    def guard():
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError('lease lost')

    w.guard = guard
    try:
        with pytest.raises(RuntimeError):
            w.zero_range(0, 16384)
    finally:
        w.guard = None
        w.close()
    # The first check, then one per piece: two pieces zeroed, no more.
    assert path.read_bytes() == bytes(8192) + b'o' * 8192
