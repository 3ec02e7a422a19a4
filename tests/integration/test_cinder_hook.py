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

"""The Cinder hook against the loopback cloud's real Cinder.

The loopback cloud has two backends on one NFS share: ``loopback`` (type
``loopback``: stock Cinder) and ``loopback-any2kvm`` (type ``any2kvm``:
the same NFS driver wrapped by :mod:`any2kvm_os.cinder.driver`).  Every
recognised kind of image is turned into a volume through the hook and the
volume is read back through upload-to-image; its bytes must hash to the
answer of readers other than ours (qemu-img's raw, the corpus' stated
digest, a write model), zero-padded to the volume's size.  The same
requests against stock Cinder fail: that is what the hook changes.
"""

import gzip
import hashlib
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.lib import cloudapi
from tests.lib import imagegen as ig
from tests.lib import ovabuild
from tests.lib import tools
from tests.lib import vhdchains
from tests.lib import xvabuild

GiB = 1 << 30
MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
CORPUS_CHAIN = REPO.parent / 'shared' / 'corpus' / 'generated' / \
    'vhdutil-chain.tar.gz'
#: The raw SHA-256 of the vhd-util chain (corpus README).
CORPUS_CHAIN_SHA256 = \
    'e8c993f619828e77140e820379dd47ace9a05320a7363648f272e49810386424'
HOOK_TYPE = 'any2kvm'
STOCK_TYPE = 'loopback'


class Sample(object):
    def __init__(self, path, disk_format, container_format, sha256, size,
                 properties=None):
        self.path = Path(path)
        self.disk_format = disk_format
        self.container_format = container_format
        self.sha256 = sha256
        self.size = size
        self.properties = properties or {}


def corpus_tgz(tmp_path, compression='gz'):
    """The corpus' vhd-util chain as XenServer exports it (0.vhd leaf)."""
    if not CORPUS_CHAIN.is_file():
        pytest.fail('corpus chain missing: %s' % CORPUS_CHAIN)
    work = tmp_path / 'chain'
    work.mkdir()
    with tarfile.open(CORPUS_CHAIN) as tf:
        tf.extractall(work, filter='data')
    arch = tmp_path / ('chain.tgz' if compression else 'chain.tar')
    ig.make_tar(arch, ig.xenserver_members(
        [work / ('l%d.vhd' % i) for i in (2, 1, 0)]),
        compression=compression)
    return Sample(arch, 'vhd', 'ovf', CORPUS_CHAIN_SHA256, 8 * MiB)


def qemu_disk(qemu_img, tmp_path, fmt, options=()):
    """A disk written by qemu-img from patterned raw bytes; the expected
    answer is that raw."""
    raw = tmp_path / 'src.raw'
    size = 12 * MiB
    with open(raw, 'wb') as f:
        f.truncate(size)
        for i, off in enumerate((0, 5 * MiB + 4096, size - 3 * 65536)):
            f.seek(off)
            f.write(ig.pattern(40 + i, 65536 + 512 * i))
    qfmt = {'vhd': 'vpc'}.get(fmt, fmt)
    out = tmp_path / ('disk.' + fmt)
    subprocess.run([qemu_img, 'convert', '-f', 'raw', '-O', qfmt] +
                   list(options) + [str(raw), str(out)], check=True,
                   capture_output=True)
    return Sample(out, fmt, 'bare', ig.sha256_file(raw), size)


def make_sample(kind, request, tmp_path):
    fix = request.getfixturevalue
    if kind == 'xenserver-tgz':
        return corpus_tgz(tmp_path)
    if kind == 'xenserver-tar-grown-child':
        fix('fattools')
        c, _base, child = vhdchains.build_grown_shrunk_parent(tmp_path / 'sr')
        arch = tmp_path / 'vm.tar'
        ig.make_tar(arch, ig.xenserver_members(
            [c.layers[1].path, c.layers[0].path]), compression=None)
        return Sample(arch, 'vhd', 'ovf', child.sha256(), child.size)
    if kind == 'ova-vmdk':
        ova, d1, _d2 = ovabuild.build_ova(fix('qemu_img'), tmp_path, 'vmdk')
        return Sample(ova, 'vmdk', 'ova', d1.sha256, d1.size)
    if kind == 'ova-second-disk':
        ova, _d1, d2 = ovabuild.build_ova(fix('qemu_img'), tmp_path, 'vhd')
        return Sample(ova, 'vhd', 'ova', d2.sha256, d2.size,
                      {'any2kvm_disk': '1'})
    if kind == 'vhd':
        return qemu_disk(fix('qemu_img'), tmp_path, 'vhd',
                         ['-o', 'subformat=dynamic'])
    if kind == 'vhdx':
        return qemu_disk(fix('qemu_img'), tmp_path, 'vhdx')
    if kind == 'vmdk':
        return qemu_disk(fix('qemu_img'), tmp_path, 'vmdk',
                         ['-o', 'subformat=monolithicSparse'])
    if kind in ('xva', 'xva-gzip'):
        xva = fix('xva_img')
        work = tmp_path / 'work'
        work.mkdir()
        raw, _chunks = xvabuild.single(xva, work)
        path = xvabuild.package(xva, work, 'vm.xva', ['Ref:3'])
        if kind == 'xva-gzip':
            packed = work / 'vm.xva.gz'
            packed.write_bytes(gzip.compress(path.read_bytes()))
            path = packed
        return Sample(path, 'raw', 'ovf', ig.sha256_file(raw),
                      raw.stat().st_size)
    raise AssertionError(kind)


class Cloud(object):
    """Images and volumes a test makes, deleted at its end."""

    def __init__(self, glance, cinder):
        self.glance = glance
        self.cinder = cinder
        self.images = []
        self.volumes = []

    def image(self, sample):
        image = self.glance.images.create(
            name='any2kvm-hook-%s' % uuid.uuid4().hex[:8],
            disk_format=sample.disk_format,
            container_format=sample.container_format, **sample.properties)
        self.images.append(image['id'])
        with open(sample.path, 'rb') as f:
            self.glance.images.upload(image['id'], f,
                                      image_size=sample.path.stat().st_size)
        return cloudapi.wait_for(
            lambda: self.glance.images.get(image['id']),
            ('active',), ('killed', 'deleted'), 120)

    def volume(self, image, volume_type, size=1):
        """A volume from ``image``; returns it once available or error."""
        volume = self.cinder.volumes.create(
            size, name='any2kvm-hook-%s' % uuid.uuid4().hex[:8],
            imageRef=image['id'], volume_type=volume_type)
        self.volumes.append(volume.id)
        return cloudapi.wait_for(
            lambda: self.cinder.volumes.get(volume.id),
            ('available', 'error'), (), 600)

    def cleanup(self):
        for volume_id in self.volumes:
            try:
                self.cinder.volumes.delete(volume_id)
            except Exception:
                pass
        for image_id in self.images:
            try:
                self.glance.images.delete(image_id)
            except Exception:
                pass


@pytest.fixture(scope='module')
def volume_types(cinder):
    """Both volume types the tests use must exist: a cloud brought up with
    LOOPBACK_CINDER_ANY2KVM=0 has no hooked backend."""
    names = {t.name for t in cinder.volume_types.list()}
    missing = sorted({HOOK_TYPE, STOCK_TYPE} - names)
    if missing:
        tools.missing_tool('the cloud has no volume type %s (the hooked '
                           'and the stock backend of tools/loopback-cloud;'
                           ' LOOPBACK_CINDER_ANY2KVM=0 leaves the hook '
                           'out)' % ' or '.join(missing))


@pytest.fixture
def made(glance, cinder, volume_types):
    c = Cloud(glance, cinder)
    yield c
    c.cleanup()


@pytest.fixture
def share(cloud):
    """The loopback cloud's NFS export (volume files) and Cinder's
    image_conversion_dir, when the cloud is the one run by
    tools/loopback-cloud."""
    lib = Path(cloud.openrc).parent / 'lib' / 'cinder'
    if not (lib / 'export').is_dir():
        pytest.skip('not a tools/loopback-cloud cloud: cannot see its share')
    return lib


KINDS = ['xenserver-tgz', 'xenserver-tar-grown-child', 'ova-vmdk',
         'ova-second-disk', 'vhd', 'vhdx', 'vmdk', 'xva', 'xva-gzip']


@pytest.mark.parametrize('kind', KINDS)
def test_hook_makes_the_volume(kind, request, tmp_path, made, glance,
                               cinder, share):
    sample = make_sample(kind, request, tmp_path)
    image = made.image(sample)
    volume = made.volume(image, HOOK_TYPE)
    assert volume.status == 'available', _volume_log(share, volume.id)
    assert volume.bootable == 'true'
    meta = volume.volume_image_metadata
    assert meta['hw_scsi_model'] == 'virtio-scsi'
    assert meta['hw_disk_bus'] == 'scsi'
    assert meta['disk_format'] == 'raw'
    assert meta['any2kvm_source_format'] == '%s/%s' % (
        sample.disk_format, sample.container_format)
    assert meta['image_id'] == image['id']
    # Sparse: the volume file holds little more than the disk's data.
    vol_file = share / 'export' / ('volume-%s' % volume.id)
    st = vol_file.stat()
    assert st.st_size == GiB
    assert st.st_blocks * 512 < 64 * MiB
    assert read_back(cinder, glance, volume.id, sample.size) == (
        sample.sha256, GiB, 0)
    # The scratch copy is gone.
    assert not list((share / 'conversion').glob('any2kvm-*'))


@pytest.mark.parametrize('kind', ['xenserver-tgz', 'ova-vmdk', 'vhd'])
def test_stock_cinder_fails_where_the_hook_works(kind, request, tmp_path,
                                                 made):
    """Baseline: the same image, the backend without the hook."""
    sample = make_sample(kind, request, tmp_path)
    image = made.image(sample)
    assert made.volume(image, STOCK_TYPE).status == 'error'


def test_ova_metadata_reaches_the_volume(request, tmp_path, made, share):
    sample = make_sample('ova-vmdk', request, tmp_path)
    sample.properties = {'hw_disk_bus': 'virtio'}   # the image's own wins
    volume = made.volume(made.image(sample), HOOK_TYPE)
    assert volume.status == 'available', _volume_log(share, volume.id)
    meta = volume.volume_image_metadata
    assert meta['hw_firmware_type'] == 'uefi'
    assert meta['hw_cpu_sockets'] == '2' and meta['hw_cpu_cores'] == '2'
    assert meta['hw_vif_model'] == 'vmxnet3'
    assert meta['hw_disk_bus'] == 'virtio'
    assert meta['hw_scsi_model'] == 'virtio-scsi'


def test_volume_too_small_is_an_error(qemu_img, tmp_path, made, share,
                                      cloud, keystone_session):
    """A 2 GiB disk in a gzip tgz (sizes known only while reading) for a
    1 GiB volume: error, a clear line in the log, no volume file left."""
    raw = tmp_path / 'big.raw'
    with open(raw, 'wb') as f:
        f.truncate(2 * GiB)
        f.seek(1536 * MiB)
        f.write(ig.pattern(7, MiB))
    vhd = tmp_path / '0.vhd'
    subprocess.run([qemu_img, 'convert', '-f', 'raw', '-O', 'vpc', '-o',
                    'subformat=dynamic,force_size=on', str(raw), str(vhd)],
                   check=True, capture_output=True)
    arch = tmp_path / 'big.tgz'
    ig.make_tar(arch, ig.xenserver_members([vhd]), compression='gz')
    sample = Sample(arch, 'vhd', 'ovf', None, 2 * GiB)
    volume = made.volume(made.image(sample), HOOK_TYPE, size=1)
    assert volume.status == 'error'
    log = _volume_log(share, volume.id)
    assert 'does not fit in a volume of 1 GiB' in log
    # What the user sees: Cinder's fixed text for this case.
    assert user_messages(keystone_session, cloud.region, volume.id) == [
        'copy image to volume:Image used for creating volume exceeds '
        'available space.']
    assert not (share / 'export' / ('volume-%s' % volume.id)).exists()
    assert not list((share / 'conversion').glob('any2kvm-*'))


def test_corrupt_tgz_is_an_error_and_touches_nothing(tmp_path, made, share):
    good = corpus_tgz(tmp_path)
    # One flipped byte in the middle of the gzip stream: bad data or a bad
    # CRC, found only once most of the archive was read.
    bad = bytearray(good.path.read_bytes())
    bad[len(bad) // 2] ^= 0xff
    bad_path = tmp_path / 'bad.tgz'
    bad_path.write_bytes(bytes(bad))
    before = sorted(p.name for p in (share / 'export').iterdir())
    sample = Sample(bad_path, 'vhd', 'ovf', None, None)
    volume = made.volume(made.image(sample), HOOK_TYPE)
    assert volume.status == 'error'
    assert 'any2kvm: volume %s from image' % volume.id in \
        _volume_log(share, volume.id)
    after = sorted(p.name for p in (share / 'export').iterdir())
    assert after == before
    assert not list((share / 'conversion').glob('any2kvm-*'))


def user_messages(session, region, volume_id):
    """Cinder's user messages about the volume (API 3.3)."""
    from cinderclient import client
    cinder = client.Client('3.3', session=session, region_name=region,
                           interface='public')
    return [m.user_message for m in cinder.messages.list()
            if m.resource_uuid == volume_id]


def read_back(cinder, glance, volume_id, head_size):
    """Upload the volume to a raw image and read it: (SHA-256 of its first
    ``head_size`` bytes, its size, how many later chunks hold a non-zero
    byte)."""
    _resp, body = cinder.volumes.upload_to_image(
        volume_id, False, 'any2kvm-readback-%s' % uuid.uuid4().hex[:8],
        'bare', 'raw')
    image_id = body['os-volume_upload_image']['image_id']
    try:
        cloudapi.wait_for(lambda: glance.images.get(image_id), ('active',),
                          ('killed', 'deleted'))
        cloudapi.wait_for(lambda: cinder.volumes.get(volume_id),
                          ('available',))
        head = hashlib.sha256()
        size = nonzero = 0
        for chunk in glance.images.data(image_id):
            if size < head_size:
                take = chunk[:head_size - size]
                head.update(take)
                size += len(take)
                chunk = chunk[len(take):]
            if chunk.count(0) != len(chunk):
                nonzero += 1
            size += len(chunk)
        return head.hexdigest(), size, nonzero
    finally:
        glance.images.delete(image_id)


def _volume_log(share, volume_id):
    """cinder-volume's log lines about ``volume_id`` (for messages)."""
    log = share.parents[1] / 'log' / 'cinder-volume.log'
    try:
        text = log.read_text(errors='replace')
    except OSError:
        return ''
    return '\n'.join(line for line in text.splitlines()
                     if volume_id in line)
