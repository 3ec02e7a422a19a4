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

"""Readers given short reads: a read(n) of a pipe, an HTTP body, a tar
member over gzip or an SFTP file may return fewer than ``n`` bytes while
more are coming, and pread(2) may too.  The real readers (an OVA of a
qemu-img streamOptimized VMDK, as a local file and as a download read in
one pass) must see exactly the bytes of the file: the same disk, no false
refusal (e.g. "VMDK descriptor holds text after a NUL byte")."""

import hashlib
import os
import random

import pytest

from any2kvm_os import api
from any2kvm_os import limits as a2k_limits
from any2kvm_os.sources import glance_image
from any2kvm_os.writers import raw as raw_writer
from tests.lib import ovabuild

SIZE = 4 << 20


@pytest.fixture(scope='module')
def ova(qemu_img, tmp_path_factory):
    d = tmp_path_factory.mktemp('short')
    disk = d / 'disk.raw'
    rnd = random.Random(7)
    with open(disk, 'wb') as f:
        f.truncate(SIZE)
        for off in (0, 65536, 1 << 20, SIZE - 4096):
            f.seek(off)
            f.write(bytes(rnd.getrandbits(8) for _ in range(4096)))
    path = ovabuild.small_ova(qemu_img, disk, d / 'short.ova', nics=())
    return path, disk.read_bytes()


def _convert(vm, out):
    writer = raw_writer.RawWriter.open(str(out))
    try:
        vm.disks[0].write_to(writer, None)
        writer.commit()
    finally:
        writer.close()
    return out.read_bytes()


def test_file_path_short_preads(ova, tmp_path, monkeypatch):
    """Every pread/preadv returns at most a few hundred bytes."""
    path, truth = ova
    rnd = random.Random(1)
    real_pread, real_preadv = os.pread, os.preadv

    def pread(fd, n, off):
        return real_pread(fd, min(n, rnd.randint(1, 700)), off)

    def preadv(fd, bufs, off):
        b = memoryview(bufs[0])
        return real_preadv(fd, [b[:min(len(b), rnd.randint(1, 700))]], off)

    monkeypatch.setattr(os, 'pread', pread)
    monkeypatch.setattr(os, 'preadv', preadv)
    vm = api.open_location(str(path), a2k_limits.Limits(
        scratch_dir=str(tmp_path)))
    try:
        assert vm.disks[0].virtual_size == SIZE
        got = _convert(vm, tmp_path / 'out.raw')
    finally:
        vm.close()
    assert got == truth


@pytest.mark.parametrize('most', [1, 3, 511, 700])
def test_stream_path_short_chunks(ova, tmp_path, most):
    """The download read in one pass, in chunks of 1 to ``most`` bytes
    (an HTTP body as it arrives)."""
    path, truth = ova
    data = path.read_bytes()
    rnd = random.Random(most)

    def chunks():
        pos = 0
        while pos < len(data):
            n = rnd.randint(1, most)
            yield data[pos:pos + n]
            pos += n
    vm = glance_image.open_image_data(
        'glance image short', chunks, len(data),
        a2k_limits.Limits(scratch_dir=str(tmp_path)),
        checksum=hashlib.md5(data).hexdigest())
    try:
        got = _convert(vm, tmp_path / 'out.raw')
    finally:
        vm.close()
    assert got == truth
