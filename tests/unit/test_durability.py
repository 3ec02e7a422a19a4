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

"""What is flushed: every output the user keeps before success is
reported; a scratch file only streamed to Glance and deleted, never."""

import fcntl
import hashlib
import mmap
import os
import threading

import pytest

from any2kvm_os.targets import glance
from any2kvm_os.writers import raw

MiB = 1 << 20


@pytest.fixture
def flushes(monkeypatch):
    """Count fdatasync, fsync and sync_file_range calls."""
    calls = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd):
        calls.append('fdatasync')
        real_fdatasync(fd)

    def fsync(fd):
        calls.append('fsync')
        real_fsync(fd)

    real_libc_fn = raw._libc_fn

    def libc_fn(name):
        fn = real_libc_fn(name)
        if name != 'sync_file_range':
            return fn

        def counted(*args):
            calls.append('sync_file_range')
            return fn(*args)
        return counted

    monkeypatch.setattr(raw.os, 'fdatasync', fdatasync)
    monkeypatch.setattr(raw.os, 'fsync', fsync)
    monkeypatch.setattr(raw, '_libc_fn', libc_fn)
    monkeypatch.setattr(raw, 'WRITEBACK_EVERY', MiB)
    return calls


def write(writer, mib=3):
    writer.resize(8 * MiB)
    for i in range(mib):
        writer.write_data(i * 2 * MiB, bytes([i + 1]) * MiB, over_hole=True)


@pytest.mark.parametrize('direct', [True, False])
def test_kept_output_is_flushed(tmp_path, flushes, direct):
    out = tmp_path / 'disk.raw'
    before = threading.active_count()
    writer = raw.RawWriter.open(str(out))
    assert writer.durable
    if direct:
        if not direct_io_supported(tmp_path):
            pytest.skip('the test directory refuses O_DIRECT')
        writer.direct_io()
    write(writer)
    writer.commit()
    # Through the page cache, write-out was started as it went (in a
    # thread of its own, stopped before the flush); written direct,
    # there was nothing to start.  Then the data was flushed, then the
    # directory entry of the new name.
    assert ('sync_file_range' in flushes) == (not direct)
    assert flushes.count('fdatasync') == 1
    assert flushes[-1] == 'fsync'
    assert threading.active_count() == before
    assert out.read_bytes()[2 * MiB:3 * MiB] == b'\2' * MiB


def test_scratch_file_is_never_flushed(tmp_path, flushes):
    out = tmp_path / 'scratch.raw'
    writer = raw.RawWriter.open(str(out), durable=False)
    write(writer)
    writer.commit()
    assert flushes == []
    data = out.read_bytes()
    assert len(data) == 8 * MiB
    assert data[4 * MiB:5 * MiB] == b'\3' * MiB
    assert not [n for n in os.listdir(str(tmp_path)) if 'partial' in n]


class OnePassDisk(object):
    """A disk read in one pass (no chain): converted to scratch first."""

    chain = None
    name = 'one-pass disk'

    def write_to(self, writer, progress=None):
        write(writer)


def test_glance_upload_scratch_is_not_flushed_and_is_deleted(tmp_path,
                                                             flushes):
    scratch_dir = tmp_path / 'scratch'
    scratch_dir.mkdir()
    want = hashlib.sha256()
    for i in range(4):
        want.update((bytes([i + 1]) * MiB if i < 3 else bytes(MiB)) +
                    bytes(MiB))
    with glance.disk_stream(OnePassDisk(), str(scratch_dir)) as stream:
        got = hashlib.sha256()
        while True:
            piece = stream.read(MiB)
            if not piece:
                break
            got.update(piece)
    assert got.hexdigest() == want.hexdigest()
    assert stream.hexdigest('sha256') == want.hexdigest()
    assert flushes == []
    assert os.listdir(str(scratch_dir)) == []


def test_aborted_writer_stops_its_writeback_thread(tmp_path, flushes):
    before = threading.active_count()
    writer = raw.RawWriter.open(str(tmp_path / 'disk.raw'))
    write(writer)
    writer.abort()
    assert threading.active_count() == before
    assert os.listdir(str(tmp_path)) == []
    assert 'fdatasync' not in flushes


def test_large_writes_are_split_into_pieces(tmp_path, monkeypatch):
    """A 4 MiB buffer reaches write(2) in WRITE_PIECE pieces (large
    buffered writes are costly in the kernel), with the same content."""
    sizes = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(raw.os, 'pwrite', pwrite)
    path = str(tmp_path / 'disk.raw')
    writer = raw.RawWriter.open(path, durable=False)
    writer.resize(8 * MiB)
    data = os.urandom(4 * MiB + 4096)
    buf = bytearray(data) + bytearray(100)
    writer.write_buffer(4096, buf, len(data), over_hole=True)
    writer.commit()
    assert max(sizes) == raw.WRITE_PIECE
    assert sum(sizes) == len(data)
    with open(path, 'rb') as f:
        f.seek(4096)
        assert f.read(len(data)) == data


# -- direct I/O ---------------------------------------------------------------


@pytest.fixture
def writes(monkeypatch):
    """Every pwrite as (direct?, offset, length), in order."""
    calls = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        calls.append((direct, offset, len(data)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(raw.os, 'pwrite', pwrite)
    return calls


def direct_io_supported(directory):
    probe = os.path.join(str(directory), 'probe')
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def test_kept_output_aligned_blocks_go_direct_edges_through_the_cache(
        tmp_path, writes):
    if not direct_io_supported(tmp_path):
        pytest.skip('the test directory refuses O_DIRECT')
    path = str(tmp_path / 'disk.raw')
    writer = raw.RawWriter.open(path).direct_io()
    assert writer.direct
    writer.resize(16 * MiB)
    data = os.urandom(5 * MiB + 1536)       # 512-byte sectors, unaligned
    writer.write_data(512, data, over_hole=True)
    writer.commit()
    # The head up to the first 4 KiB boundary and the tail after the
    # last one through the page cache; the aligned middle direct, in
    # DIRECT_PIECE writes.
    end = 512 + len(data)
    body_end = end // 4096 * 4096
    assert writes == [
        (True, 4096, raw.DIRECT_PIECE),
        (True, 4096 + raw.DIRECT_PIECE, body_end - 4096 - raw.DIRECT_PIECE),
        (False, 512, 4096 - 512),
        (False, body_end, end - body_end)]
    with open(path, 'rb') as f:
        got = f.read()
    assert got == bytes(512) + data + bytes(16 * MiB - end)
    assert not [n for n in os.listdir(str(tmp_path)) if 'partial' in n]


def test_direct_and_cached_writes_of_one_page_stay_coherent(tmp_path):
    """A sector written through the cache, then its page written direct,
    then another sector of it through the cache: the last write wins
    everywhere, as in the one-kind-only case."""
    if not direct_io_supported(tmp_path):
        pytest.skip('the test directory refuses O_DIRECT')
    path = str(tmp_path / 'disk.raw')
    writer = raw.RawWriter.open(path).direct_io()
    writer.resize(64 << 10)
    writer.pwrite(4096 + 512, b'\1' * 512)          # cached, page 1
    writer.pwrite(0, b'\2' * (3 * 4096))            # direct, pages 0-2
    writer.pwrite(4096 + 1024, b'\3' * 512)         # cached, page 1 again
    writer.commit()
    with open(path, 'rb') as f:
        got = f.read()
    want = bytearray(b'\2' * (3 * 4096) + bytes((64 << 10) - 3 * 4096))
    want[4096 + 1024:4096 + 1536] = b'\3' * 512
    assert got == bytes(want)


def test_scratch_file_is_never_written_direct(tmp_path, writes):
    writer = raw.RawWriter.open(str(tmp_path / 'scratch.raw'),
                                durable=False).direct_io()
    assert not writer.direct
    writer.resize(8 * MiB)
    writer.write_data(0, os.urandom(MiB), over_hole=True)
    writer.commit()
    assert writes and not [w for w in writes if w[0]]


def test_converted_output_goes_through_the_cache(tmp_path, writes):
    """convert's writer (a local reader: the device is the limit, and
    the page cache's write-out is faster there) is not direct."""
    writer = raw.RawWriter.open(str(tmp_path / 'disk.raw'))
    assert not writer.direct
    writer.resize(8 * MiB)
    writer.write_data(0, os.urandom(MiB), over_hole=True)
    writer.commit()
    assert writes and not [w for w in writes if w[0]]


def test_file_system_refusing_o_direct_at_open_is_written_cached(
        tmp_path, monkeypatch, writes):
    real_open = raw.os.open

    def open_(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(22, 'Invalid argument')
        return real_open(path, flags, *args)

    monkeypatch.setattr(raw.os, 'open', open_)
    path = str(tmp_path / 'disk.raw')
    writer = raw.RawWriter.open(path).direct_io()
    writer.resize(8 * MiB)
    data = os.urandom(2 * MiB)
    writer.write_data(MiB, data, over_hole=True)
    writer.write_data(4 * MiB, data, over_hole=True)
    writer.commit()
    assert writes and not [w for w in writes if w[0]]
    with open(path, 'rb') as f:
        f.seek(MiB)
        assert f.read(2 * MiB) == data


def test_direct_write_refused_falls_back_to_the_cache_for_good(
        tmp_path, monkeypatch):
    """O_DIRECT taken at open but its writes refused (EINVAL, as some
    FUSE and network file systems do): the same bytes through the
    cache, and direct I/O is not tried again."""
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd, data, offset):
        if fd == getattr(writer, '_direct', None):
            refused.append(offset)
            raise OSError(22, 'Invalid argument')
        return real_pwrite(fd, data, offset)

    path = str(tmp_path / 'disk.raw')
    writer = raw.RawWriter.open(path).direct_io()

    def open_direct(self):
        self._direct_buf = mmap.mmap(-1, raw.DIRECT_PIECE)
        return os.open(path + '.other', os.O_WRONLY | os.O_CREAT, 0o600)

    monkeypatch.setattr(raw.RawWriter, '_open_direct', open_direct)
    monkeypatch.setattr(raw.os, 'pwrite', pwrite)
    writer.resize(8 * MiB)
    data = os.urandom(MiB)
    writer.write_data(0, data, over_hole=True)
    writer.write_data(2 * MiB, data, over_hole=True)
    assert writer._direct is False
    writer.commit()
    assert refused == [0]
    os.unlink(path + '.other')
    with open(path, 'rb') as f:
        assert f.read(3 * MiB) == data + bytes(MiB) + data


def test_direct_write_error_names_the_target(tmp_path, monkeypatch):
    if not direct_io_supported(tmp_path):
        pytest.skip('the test directory refuses O_DIRECT')
    real_pwrite = os.pwrite
    path = str(tmp_path / 'disk.raw')
    writer = raw.RawWriter.open(path).direct_io()

    def pwrite(fd, data, offset):
        if fd == writer._direct:
            raise OSError(28, 'No space left on device')
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(raw.os, 'pwrite', pwrite)
    writer.resize(8 * MiB)
    with pytest.raises(raw.exception.TargetError) as e:
        writer.write_data(0, os.urandom(MiB), over_hole=True)
    assert 'No space left on device' in str(e.value)
    assert path in str(e.value)
    writer.abort()
    assert os.listdir(str(tmp_path)) == []


def test_short_direct_write_ends_through_the_cache(tmp_path, monkeypatch,
                                                   writes):
    """A direct write that takes fewer bytes than given (a device's
    end, a signal): the rest of the data still lands, in order."""
    if not direct_io_supported(tmp_path):
        pytest.skip('the test directory refuses O_DIRECT')
    real_pwrite = raw.os.pwrite   # the recording one
    state = {'short': True}

    def pwrite(fd, data, offset):
        if state['short'] and len(data) > 8192:
            state['short'] = False
            return real_pwrite(fd, memoryview(data)[:8192], offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(raw.os, 'pwrite', pwrite)
    path = str(tmp_path / 'disk.raw')
    writer = raw.RawWriter.open(path).direct_io()
    writer.resize(4 * MiB)
    data = os.urandom(MiB)
    writer.write_data(0, data, over_hole=True)
    writer.commit()
    assert writes[0] == (True, 0, 8192)
    rest = writes[1:]
    assert not [w for w in rest if w[0]]
    assert rest[0][1] == 8192 and sum(w[2] for w in rest) == MiB - 8192
    with open(path, 'rb') as f:
        assert f.read(MiB) == data


def test_migration_file_targets_are_written_direct(tmp_path):
    """A migration's targets are written beside SFTP reads that need the
    CPU: direct (see raw.DIRECT_ALIGN)."""
    from any2kvm_os.migration import destinations
    dest = destinations.FileDestination({'output_dir': str(tmp_path)})
    path = str(tmp_path / 'vm.raw')
    with dest.opened([{'index': 0, 'target_ref': path}], {}) as writers:
        assert writers[0].direct


def test_migration_file_targets_half_made_are_removed(tmp_path):
    """Targets made by ``create``, the second one refused by any error
    (here a size no file can have): the first is removed too, and the
    error goes on."""
    from any2kvm_os.migration import destinations
    dest = destinations.FileDestination({'output_dir': str(tmp_path)})
    disks = [{'index': 0, 'target_ref': str(tmp_path / 'a.raw'),
              'virtual_size': MiB},
             {'index': 1, 'target_ref': str(tmp_path / 'b.raw'),
              'virtual_size': 1 << 64}]
    with pytest.raises(OverflowError):
        dest.create(disks)
    assert os.listdir(str(tmp_path)) == []
