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

"""qemu-img's VMDKs whose CID rewrite left bytes after the descriptor's
NUL (about 1 in 200 of them with qemu-img 7.2: qemu prints the CID
unpadded and rewrites it in place with a random one, vmdk_write_cid).  They are
valid: the real readers (file and one-pass stream, VMDK alone and in an
OVA) read them as qemu does; qemu-img agrees on the bytes."""

import hashlib
import struct
import subprocess
import tarfile

import pytest

from any2kvm_os import api
from any2kvm_os import limits as a2k_limits
from any2kvm_os.sources import glance_image
from any2kvm_os.writers import raw as raw_writer
from tests.lib import ovabuild

SIZE = 4 << 20
SECTOR = 512


def _with_short_cid(vmdk_bytes):
    """The VMDK as qemu leaves it when a rewrite shortens the CID from 8
    hex digits to 5 (3 bytes of the old text after the NUL)."""
    desc_off, desc_size = struct.unpack_from('<QQ', vmdk_bytes, 28)
    a, b = desc_off * SECTOR, (desc_off + desc_size) * SECTOR
    desc = vmdk_bytes[a:b]
    text = desc.split(b'\0', 1)[0]
    cid_line = text[text.index(b'\nCID='):].split(b'\n')[1]
    if len(cid_line) != len(b'CID=') + 8:
        # An unlucky qemu CID: make it 8 digits first (same length text).
        desc = ovabuild.qemu_write_cid(desc, 0x1a2b3c4d)
    desc = ovabuild.qemu_write_cid(desc, 0x12345)
    text = desc.split(b'\0', 1)[0]
    assert desc[len(text):].strip(b'\0'), 'no residue after the NUL'
    return vmdk_bytes[:a] + desc + vmdk_bytes[b:]


@pytest.fixture(scope='module')
def images(qemu_img, tmp_path_factory):
    d = tmp_path_factory.mktemp('cid')
    disk = d / 'disk.raw'
    with open(disk, 'wb') as f:
        f.truncate(SIZE)
        f.seek(1 << 20)
        f.write(b'any2kvm' * 4096)
    ova = ovabuild.small_ova(qemu_img, disk, d / 'cid.ova', nics=())
    members = []
    with tarfile.open(ova) as tf:
        for ti in tf:
            members.append((ti.name, tf.extractfile(ti).read()))
    members = [(n, _with_short_cid(data) if n.endswith('.vmdk') else data)
               for n, data in members if not n.endswith('.mf')]
    ovabuild.write_ova(ova, members + [('guest.mf',
                                        ovabuild.manifest(members))])
    vmdk = d / 'cid.vmdk'
    vmdk.write_bytes([data for n, data in members
                      if n.endswith('.vmdk')][0])
    # qemu-img reads the file as it is, up to the NUL.
    ref = d / 'ref.raw'
    subprocess.run([qemu_img, 'convert', '-f', 'vmdk', '-O', 'raw',
                    str(vmdk), str(ref)], check=True, capture_output=True,
                   timeout=120)
    truth = disk.read_bytes()
    assert ref.read_bytes() == truth
    return ova, vmdk, truth


def _convert(vm, out):
    writer = raw_writer.RawWriter.open(str(out))
    try:
        vm.disks[0].write_to(writer, None)
        writer.commit()
    finally:
        writer.close()
    return out.read_bytes()


@pytest.mark.parametrize('which', ['ova', 'vmdk'])
def test_file_read(images, tmp_path, which):
    ova, vmdk, truth = images
    vm = api.open_location(str(ova if which == 'ova' else vmdk),
                           a2k_limits.Limits(scratch_dir=str(tmp_path)))
    try:
        assert _convert(vm, tmp_path / 'out.raw') == truth
    finally:
        vm.close()


def test_stream_read(images, tmp_path):
    """The OVA converted as it downloads (the one-pass VMDK reader)."""
    ova, _vmdk, truth = images
    data = ova.read_bytes()

    def chunks():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]
    vm = glance_image.open_image_data(
        'glance image cid', chunks, len(data),
        a2k_limits.Limits(scratch_dir=str(tmp_path)),
        checksum=hashlib.md5(data).hexdigest())
    try:
        assert _convert(vm, tmp_path / 'out.raw') == truth
    finally:
        vm.close()
