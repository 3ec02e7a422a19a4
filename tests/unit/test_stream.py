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

import hashlib

import pytest

from any2kvm_os.chain import layer_chain
from any2kvm_os import extents as ext
from any2kvm_os.writers import stream
from tests.lib import fakelayer


class Layer(fakelayer.FakeLayer):
    """A fake layer whose DATA byte at offset x is (x % 251) + layer."""

    def __init__(self, size, runs, ident, parent=None, fill=1):
        super(Layer, self).__init__(size, runs, ident, parent)
        self.fill = fill

    def read_extent(self, extent, skip, length):
        start = extent.offset + skip
        return bytes((x % 251 + self.fill) % 256
                     for x in range(start, start + length))


def model(chain):
    out = bytearray(chain.virtual_size)
    for e in chain.fold(0, chain.virtual_size):
        if e.kind == ext.DATA:
            out[e.offset:e.end] = chain.layers[e.layer].read_extent(
                e, 0, e.length)
    return bytes(out)


def test_stream_is_the_whole_folded_disk_in_any_read_sizes():
    size = 3 * stream.CHUNK + 12345
    base = Layer(size - 5000, [(0, ext.DATA, 2 * stream.CHUNK + 7)], 'b',
                 fill=1)
    child = Layer(size, [(100, ext.DATA, 4000), (stream.CHUNK, ext.ZERO, 99),
                         (size - 10, ext.DATA, 10)], 'c', 'b', fill=2)
    chain = layer_chain.LayerChain([child, base], ['c', 'b'])
    want = model(chain)
    for sizes in ([1 << 20], [7, 65536, 3 << 20], [size + 10]):
        s = stream.RawStream(chain)
        got = []
        i = 0
        while True:
            piece = s.read(sizes[i % len(sizes)])
            i += 1
            if not piece:
                break
            got.append(piece)
        data = b''.join(got)
        assert data == want
        assert s.tell() == size == len(s)
        assert s.hexdigest('sha512') == hashlib.sha512(want).hexdigest()
        assert s.hexdigest('md5') == hashlib.md5(want).hexdigest()


def test_file_stream_digests(tmp_path):
    data = bytes(range(256)) * 5000
    p = tmp_path / 'd.raw'
    p.write_bytes(data)
    s = stream.FileStream(str(p))
    got = b''.join(iter(lambda: s.read(65536), b''))
    s.close()
    assert got == data and len(s) == len(data) == s.tell()
    assert s.hexdigest('sha256') == hashlib.sha256(data).hexdigest()


def test_chunk_reader_checks_and_rewinds():
    import io
    import os
    from any2kvm_os import exception as exc
    from any2kvm_os import fileio

    data = os.urandom(3 << 20)

    def chunks(d=data):
        return [d[i:i + (1 << 20)] for i in range(0, len(d), 1 << 20)]
    r = fileio.ChunkReader(chunks(), 'img', len(data),
                           hashlib.md5(data).hexdigest())
    assert r.head(10) == data[:10]
    assert r.read(6) == data[:6]
    r.seek(0)                     # within the kept head: allowed
    assert b''.join(iter(lambda: r.read(70000), b'')) == data
    with pytest.raises(io.UnsupportedOperation):
        r.seek(0)                 # far past the head
    for bad, message in [
            (fileio.ChunkReader(chunks(), 'img', len(data), '0' * 32),
             'downloaded data does not match the image checksum'),
            (fileio.ChunkReader(chunks()[:-1], 'img', len(data)),
             r'download ended after 2097152 of 3145728 bytes'),
            (fileio.ChunkReader(chunks(), 'img', len(data) - 1),
             'Glance sent more than the 3145727 bytes')]:
        with pytest.raises(exc.InvalidArchive, match='img: ' + message):
            while bad.read(1 << 20):
                pass


@pytest.mark.parametrize('mode', ['w', 'w:gz', 'w:bz2', 'w:xz'])
@pytest.mark.parametrize('fmt', ['ustar', 'pax', 'gnu'])
def test_the_head_of_a_download_tells_the_archive(mode, fmt):
    import io
    import tarfile
    from any2kvm_os.containers import xenserver
    from any2kvm_os.containers.xva import archive as xva

    def archive(first):
        buf = io.BytesIO()
        tar_format = {'ustar': tarfile.USTAR_FORMAT,
                      'pax': tarfile.PAX_FORMAT,
                      'gnu': tarfile.GNU_FORMAT}[fmt]
        with tarfile.open(fileobj=buf, mode=mode, format=tar_format) as tf:
            for name in (first, 'other'):
                ti = tarfile.TarInfo(name)
                ti.size = 70000
                ti.mtime = 1.5      # a pax header in pax format
                tf.addfile(ti, io.BytesIO(bytes(70000)))
        return buf.getvalue()[:64 << 10]
    assert xenserver.head_is_xenserver(archive('0.vhd'))
    assert xenserver.head_is_xenserver(archive('./3.vhd'))
    assert not xenserver.head_is_xenserver(archive('ova.xml'))
    assert not xenserver.head_is_xenserver(archive('disk.vmdk'))
    assert xva.head_is_xva(archive('ova.xml'))
    assert xva.head_is_xva(archive('./ova.xml'))
    assert not xva.head_is_xva(archive('0.vhd'))
    assert not xva.head_is_xva(b'conectix' + bytes(600))
    assert not xenserver.head_is_xenserver(b'\x1f\x8b garbage')


@pytest.mark.parametrize('first,claimed', [
    ('disk1.vmdk', True), ('./vm.mf', True), ('vm/vm.cert', True),
    ('vm-disk1.VHD', True), ('0.vhd', False), ('export/12.vhd', False),
    ('ova.xml', False), ('README', False), ('vm.ovf', False)])
def test_the_head_of_an_ova_whose_descriptor_comes_later(first, claimed):
    """A compressed tar that starts with a file an OVA holds, and no
    XenServer member: an OVA whose .ovf comes later (read through
    scratch).  A .ovf first is :func:`head_is_ova`'s case."""
    import io
    import tarfile
    from any2kvm_os.containers.ova import stream as ova_stream
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tf:
        for name in (first, 'vm.ovf'):
            ti = tarfile.TarInfo(name)
            ti.size = 1000
            tf.addfile(ti, io.BytesIO(bytes(1000)))
    assert ova_stream.head_may_be_ova(buf.getvalue()) is claimed
