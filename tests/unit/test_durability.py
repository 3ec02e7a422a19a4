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

import hashlib
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


def test_kept_output_is_flushed(tmp_path, flushes):
    out = tmp_path / 'disk.raw'
    before = threading.active_count()
    writer = raw.RawWriter.open(str(out))
    assert writer.durable
    write(writer)
    writer.commit()
    # Write-out started as it went (in a thread of its own, stopped
    # before the flush), then the data, then the directory entry of the
    # new name.
    assert 'sync_file_range' in flushes
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
