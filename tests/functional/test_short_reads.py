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

import gzip
import hashlib
import os
import random

import pytest

from any2kvm_os import api
from any2kvm_os import limits as a2k_limits
from any2kvm_os.sources import glance_image
from any2kvm_os.writers import raw as raw_writer
from tests.lib import ovabuild
from tests.lib import samples

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


@pytest.fixture(scope='module', params=['plain', 'gzip'])
def any_ova(request, ova, tmp_path_factory):
    """The OVA as it is, or with its disk file gzip-compressed
    (ovf:compression="gzip")."""
    path, truth = ova
    if request.param == 'plain':
        return ova
    d = tmp_path_factory.mktemp('shortgz')
    vmdk = d / 'short-disk1.vmdk'
    members = {}
    import tarfile
    with tarfile.open(path) as tf:
        for ti in tf:
            members[ti.name] = tf.extractfile(ti).read()
    vmdk_name = [n for n in members if n.endswith('.vmdk')][0]
    packed = gzip.compress(members[vmdk_name], 6)
    ovf = ovabuild.small_ovf(vmdk_name, len(packed), SIZE, nics=())
    ovf = ovf.replace(b'ovf:href="%s"' % vmdk_name.encode(),
                      b'ovf:href="%s" ovf:compression="gzip"'
                      % vmdk_name.encode())
    assert b'ovf:compression="gzip"' in ovf
    del vmdk
    gz = [('guest.ovf', ovf), (vmdk_name, packed)]
    ovabuild.write_ova(d / 'short-gz.ova',
                       gz + [('guest.mf', ovabuild.manifest(gz))])
    return d / 'short-gz.ova', truth


def _convert(vm, out):
    writer = raw_writer.RawWriter.open(str(out))
    try:
        vm.disks[0].write_to(writer, None)
        writer.commit()
    finally:
        writer.close()
    return out.read_bytes()


def test_file_path_short_preads(any_ova, tmp_path, monkeypatch):
    """Every pread/preadv returns at most a few hundred bytes."""
    path, truth = any_ova
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
def test_stream_path_short_chunks(any_ova, tmp_path, most):
    """The download read in one pass, in chunks of 1 to ``most`` bytes
    (an HTTP body as it arrives)."""
    path, truth = any_ova
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


class _Short(object):
    """Replaces os.pread/os.preadv: each call returns at most a few
    hundred bytes (as pread(2) may on a signal or a network file
    system)."""

    def __init__(self, seed=1, most=700):
        self.rnd = random.Random(seed)
        self.most = most
        self.calls = 0
        self.short = 0
        self.pread = os.pread
        self.preadv = os.preadv

    def _n(self, n):
        self.calls += 1
        m = min(n, self.rnd.randint(1, self.most))
        if m < n:
            self.short += 1
        return m

    def fake_pread(self, fd, n, off):
        return self.pread(fd, self._n(n), off)

    def fake_preadv(self, fd, bufs, off):
        b = memoryview(bufs[0])
        return self.preadv(fd, [b[:self._n(len(b))]], off)

    def install(self, monkeypatch):
        monkeypatch.setattr(os, 'pread', self.fake_pread)
        monkeypatch.setattr(os, 'preadv', self.fake_preadv)
        return self


def _sha_of_conversion(location, tmp_path):
    vm = api.open_location(str(location), a2k_limits.Limits(
        scratch_dir=str(tmp_path)))
    try:
        out = tmp_path / 'out.raw'
        got = _convert(vm, out)
    finally:
        vm.close()
    return hashlib.sha256(got).hexdigest()


@pytest.mark.parametrize('fmt', sorted(samples.QEMU_FORMATS))
def test_formats_short_preads(fmt, qemu_img, tmp_path, monkeypatch):
    """Each format reader (a local file, qemu-img's disk) reads the same
    disk when every pread comes back short."""
    sample = samples.format_sample(fmt, tmp_path)
    short = _Short().install(monkeypatch)
    assert _sha_of_conversion(sample.path, tmp_path) == sample.sha256
    assert short.short > 0


@pytest.mark.parametrize('kind', ['ova', 'ovf', 'xva'])
def test_containers_short_preads(kind, qemu_img, tmp_path, monkeypatch):
    """Each container read in place (OVA, OVF directory, XVA: its
    metadata, chunk checksums and end-of-archive block) reads the same
    disk when every pread comes back short."""
    sample = samples.CONTAINERS[kind](tmp_path)
    short = _Short(seed=3).install(monkeypatch)
    assert _sha_of_conversion(sample.path, tmp_path) == sample.sha256
    assert short.short > 0


def test_sha256_of_short_preads(tmp_path, monkeypatch):
    """The read-back digest of a written volume (raw.sha256_of)."""
    data = os.urandom(3 << 20)
    p = tmp_path / 'vol.raw'
    p.write_bytes(data)
    _Short(seed=5, most=4096).install(monkeypatch)
    assert raw_writer.sha256_of(str(p), len(data)) == \
        hashlib.sha256(data).hexdigest()
