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

import os

import pytest

from any2kvm_os import exception
from any2kvm_os import limits as a2k_limits
from any2kvm_os import scratch
from any2kvm_os.writers import raw

MiB = 1 << 20


def test_directory_is_private_lazy_and_removed_on_close(tmp_path):
    space = scratch.Scratch(str(tmp_path), 10 * MiB, prefix='t-')
    assert os.listdir(tmp_path) == []       # nothing made before use
    path = space.path('f')
    assert os.path.dirname(path) == space.dir
    assert os.path.basename(space.dir).startswith('t-')
    assert os.stat(space.dir).st_mode & 0o777 == 0o700
    with open(path, 'wb') as f:
        f.write(b'x')
    space.close()
    assert os.listdir(tmp_path) == []
    space.cleanup()                         # idempotent
    assert space.used == 0


def test_removed_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with scratch.Scratch(str(tmp_path)) as space:
            fd, _path = space.mkstemp()
            os.close(fd)
            raise RuntimeError('boom')
    assert os.listdir(tmp_path) == []


def test_limit_exceeded(tmp_path):
    space = scratch.Scratch(str(tmp_path), 1000)
    space.reserve(600, 'first')
    assert space.remaining == 400
    with pytest.raises(exception.ScratchLimitError) as e:
        space.reserve(500, 'archive.tgz:1.vhd')
    msg = str(e.value)
    assert '\n' not in msg
    assert msg.startswith('archive.tgz:1.vhd: 500 bytes exceed the scratch '
                          'limit of 1000 bytes')
    assert 'scratch_limit_gib' in msg
    with pytest.raises(exception.ScratchLimitError):
        space.charge(401, 'x')
    space.charge(400, 'x')
    assert space.used == 1000
    space.release(1000)
    assert space.remaining == 1000
    space.cleanup()


def test_free_space_too_small(tmp_path, monkeypatch):
    class Stat(object):
        f_bavail = 10
        f_frsize = 4096
    monkeypatch.setattr(os, 'statvfs', lambda path: Stat())
    with scratch.Scratch(str(tmp_path)) as space:
        space.reserve(40960, 'fits')
        with pytest.raises(exception.TargetError,
                           match='not enough free space for big'):
            space.reserve(40961, 'big')
        assert space.used == 40960
    assert os.listdir(tmp_path) == []


def test_cannot_make_the_directory(tmp_path):
    space = scratch.Scratch(str(tmp_path / 'missing'))
    with pytest.raises(exception.TargetError,
                       match='cannot make a scratch directory'):
        space.dir


def test_for_limits_defaults(tmp_path):
    space = scratch.Scratch.for_limits(a2k_limits.Limits(), str(tmp_path))
    assert space.parent == str(tmp_path)
    assert space.limit == scratch.DEFAULT_LIMIT == 1024 << 30
    space = scratch.Scratch.for_limits(a2k_limits.Limits(
        scratch_dir='/s', scratch_limit=5), str(tmp_path))
    assert (space.parent, space.limit) == ('/s', 5)


def test_bound_writer_charges_allocation(tmp_path):
    with scratch.Scratch(str(tmp_path), 3 * MiB) as space:
        writer = space.bound_writer(raw.RawWriter.open(space.path('d')),
                                    'disk')
        writer.resize(64 * MiB)
        # Rewriting the same MiB costs nothing more.
        for _ in range(8):
            writer.write_data(0, b'\1' * MiB, over_hole=True)
        writer.write_data(8 * MiB, b'\2' * MiB, over_hole=True)
        with pytest.raises(exception.ScratchLimitError,
                           match='^disk: .*scratch_limit_gib'):
            for i in range(2, 8):
                writer.write_data(i * 8 * MiB, b'\3' * MiB, over_hole=True)
        writer.abort()
    assert os.listdir(tmp_path) == []


class _Disk(object):
    """A disk that writes ``size`` bytes of ones (name, write_to)."""

    name = 'd0'

    def __init__(self, size):
        self.size = size

    def write_to(self, writer, progress=None):
        writer.resize(self.size)
        for offset in range(0, self.size, MiB):
            writer.write_data(offset, b'\1' * MiB, over_hole=True)


def test_write_scratch_raw_commits_a_whole_disk(tmp_path):
    from any2kvm_os.targets import base
    with scratch.Scratch(str(tmp_path), 3 * MiB) as space:
        path = base.write_scratch_raw(space, _Disk(2 * MiB), 'disk.raw',
                                      'd0 (copied)')
        assert path == space.path('disk.raw')
        with open(path, 'rb') as f:
            assert f.read() == b'\1' * (2 * MiB)
        assert os.listdir(space.dir) == ['disk.raw']
    assert os.listdir(tmp_path) == []


def test_write_scratch_raw_aborts_past_the_limit(tmp_path):
    from any2kvm_os.targets import base
    with scratch.Scratch(str(tmp_path), 3 * MiB) as space:
        with pytest.raises(exception.ScratchLimitError,
                           match=r'^d0 \(copied\): .*scratch_limit_gib'):
            base.write_scratch_raw(space, _Disk(8 * MiB), 'disk.raw',
                                   'd0 (copied)')
        assert os.listdir(space.dir) == []
    assert os.listdir(tmp_path) == []


class _ReadFailed(Exception):
    pass


class _FailingDisk(_Disk):
    """Fails after writing its first MiB."""

    def write_to(self, writer, progress=None):
        writer.resize(self.size)
        writer.write_data(0, b'\1' * MiB, over_hole=True)
        raise _ReadFailed('read failed')


def test_write_file_commits_a_whole_disk_durably(tmp_path):
    out = tmp_path / 'out.raw'
    writer = raw.write_file(_Disk(2 * MiB), str(out))
    assert writer.durable and writer.fd is None and writer.tmp_path is None
    assert out.read_bytes() == b'\1' * (2 * MiB)
    assert os.listdir(tmp_path) == ['out.raw']


def test_write_file_and_write_scratch_raw_abort_on_a_failure(tmp_path):
    from any2kvm_os.targets import base
    with pytest.raises(_ReadFailed, match='read failed'):
        raw.write_file(_FailingDisk(2 * MiB), str(tmp_path / 'out.raw'))
    assert os.listdir(tmp_path) == []
    with scratch.Scratch(str(tmp_path), 3 * MiB) as space:
        with pytest.raises(_ReadFailed, match='read failed'):
            base.write_scratch_raw(space, _FailingDisk(2 * MiB), 'disk.raw',
                                   'd0 (copied)')
        assert os.listdir(space.dir) == []
    assert os.listdir(tmp_path) == []


def test_write_scratch_raw_is_never_flushed(tmp_path, monkeypatch):
    from any2kvm_os.targets import base
    synced = []
    monkeypatch.setattr(os, 'fdatasync', synced.append)
    monkeypatch.setattr(os, 'fsync', synced.append)
    with scratch.Scratch(str(tmp_path), 3 * MiB) as space:
        base.write_scratch_raw(space, _Disk(2 * MiB), 'disk.raw', 'd0')
        assert synced == []
        raw.write_file(_Disk(MiB), space.path('kept.raw'))
        assert len(synced) == 2       # the file, then its directory
