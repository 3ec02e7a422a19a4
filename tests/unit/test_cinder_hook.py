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

"""The Cinder hook's decisions, with stand-ins for Cinder's modules.

Cinder is not installed in the test virtualenv; these tests give the hook
the few names it imports from Cinder (exceptions, the conversion-disable
check) and a fake wrapped driver.  The real Cinder is exercised by
tests/integration/test_cinder_hook.py.
"""

import hashlib
import io
import random
import shutil
import sys
import tarfile
import types

import pytest
from oslo_config import cfg

from any2kvm_os.cinder import driver as hook
from any2kvm_os import exception
from any2kvm_os.formats import vhd
from tests.lib import vhdbuild

MiB = 1 << 20
GiB = 1 << 30


# -- stand-ins for Cinder -----------------------------------------------------

class CinderException(Exception):
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        super().__init__(self.fmt % kwargs)


class ImageUnacceptable(CinderException):
    fmt = 'Image %(image_id)s is unacceptable: %(reason)s'


class ImageCopyFailure(CinderException):
    fmt = 'Failed to copy image to volume: %(reason)s'


class ImageConversionNotAllowed(CinderException):
    fmt = 'Image Conversion disallowed for image %(image_id)s: %(reason)s'


@pytest.fixture
def fake_cinder(monkeypatch, tmp_path):
    state = {'conversion_disabled': False}

    def check_image_conversion_disable(disk_format, volume_format, image_id,
                                       upload=False):
        if state['conversion_disabled'] and disk_format != volume_format:
            raise ImageConversionNotAllowed(image_id=image_id, reason='off')

    cinder = types.ModuleType('cinder')
    exc = types.ModuleType('cinder.exception')
    exc.CinderException = CinderException
    exc.ImageUnacceptable = ImageUnacceptable
    exc.ImageCopyFailure = ImageCopyFailure
    image = types.ModuleType('cinder.image')
    image_utils = types.ModuleType('cinder.image.image_utils')
    image_utils.check_image_conversion_disable = \
        check_image_conversion_disable

    def convert_image(source, dest, out_format, src_format=None,
                      run_as_root=True, **kw):
        state.setdefault('converted', []).append(
            (out_format, src_format, run_as_root))
        with open(source, 'rb') as src, open(dest, 'r+b') as dst:
            shutil.copyfileobj(src, dst)
    image_utils.convert_image = convert_image
    volume = types.ModuleType('cinder.volume')
    volume_utils = types.ModuleType('cinder.volume.volume_utils')
    volume_utils.brick_get_connector_properties = \
        lambda multipath, enforce: {'multipath': multipath}
    volume.volume_utils = volume_utils
    cinder.exception = exc
    cinder.image = image
    cinder.volume = volume
    image.image_utils = image_utils
    for name, mod in [('cinder', cinder), ('cinder.exception', exc),
                      ('cinder.image', image),
                      ('cinder.image.image_utils', image_utils),
                      ('cinder.volume', volume),
                      ('cinder.volume.volume_utils', volume_utils)]:
        monkeypatch.setitem(sys.modules, name, mod)
    conversion = tmp_path / 'conversion'
    try:
        cfg.CONF.register_opt(cfg.StrOpt('image_conversion_dir'))
    except cfg.DuplicateOptError:
        pass
    cfg.CONF.set_override('image_conversion_dir', str(conversion))
    yield state
    cfg.CONF.clear_override('image_conversion_dir')


class Configuration(object):
    """Cinder's per-backend configuration, as much as the hook uses."""

    def __init__(self, **values):
        self.config_group = 'backend-1'
        self.values = dict(values)
        self.appended = []

    def append_config_values(self, options):
        for o in options:
            self.values.setdefault(o.dest, o.default)
        self.appended.extend(options)

    def safe_get(self, name):
        return self.values.get(name)

    def __getattr__(self, name):
        try:
            return self.__dict__['values'][name]
        except KeyError:
            raise AttributeError(name)


class FakeNfsDriver(object):
    """A wrapped driver: volumes are files in a directory."""

    clone_calls = []

    def __init__(self, *args, configuration=None, **kwargs):
        self.configuration = configuration
        self.kwargs = kwargs
        self.directory = configuration.safe_get('directory')
        self.deleted = []

    def create_volume(self, volume):
        path = self.directory / ('volume-%s' % volume.id)
        with open(path, 'wb') as f:
            f.truncate(volume.size * GiB)
        return {'provider_location': 'share:/x'}

    def delete_volume(self, volume):
        self.deleted.append(volume.id)
        (self.directory / ('volume-%s' % volume.id)).unlink()

    def local_path(self, volume):
        assert volume.provider_location == 'share:/x'
        return str(self.directory / ('volume-%s' % volume.id))

    def clone_image(self, context, volume, image_location, image_meta,
                    image_service):
        self.clone_calls.append(image_meta['id'])
        return None, False


class Volume(object):
    def __init__(self, size=1):
        self.id = 'v-%d' % id(self)
        self.size = size
        self.provider_location = None
        self.admin_metadata = {}

    def update(self, values):
        for k, v in values.items():
            setattr(self, k, v)


class ImageService(object):
    def __init__(self, data):
        self.data = data

    def download(self, context, image_id):
        return iter([self.data[i:i + MiB]
                     for i in range(0, len(self.data), MiB)])


def make_driver(tmp_path, **conf):
    conf.setdefault('any2kvm_wrapped_driver',
                    __name__ + '.FakeNfsDriver')
    volumes = tmp_path / 'volumes'
    volumes.mkdir(exist_ok=True)
    return hook.Any2KvmDriver(configuration=Configuration(
        directory=volumes, **conf), db='db', host='host')


def image_meta(data, disk_format='vhd', container_format='bare', **props):
    return {'id': 'img-1', 'size': len(data),
            'checksum': hashlib.md5(data).hexdigest(),
            'disk_format': disk_format, 'container_format': container_format,
            'properties': dict(props)}


def dynamic_vhd(size=4 * MiB, fill=b'Q'):
    data, _uid = vhdbuild.build(size, blocks={0: (None, fill * MiB)})
    return data


def expected(size, fill=b'Q'):
    return (fill * MiB).ljust(size, b'\0')


# -- construction -------------------------------------------------------------

def test_the_driver_is_the_wrapped_class_with_the_hook(tmp_path):
    d = make_driver(tmp_path)
    assert isinstance(d, FakeNfsDriver)
    assert isinstance(d, hook.HookMixin)
    assert type(d).__name__ == 'Any2KvmFakeNfsDriver'
    assert d.kwargs == {'db': 'db', 'host': 'host'}
    assert {o.name for o in d.configuration.appended} == {
        'any2kvm_wrapped_driver', 'any2kvm_enabled', 'any2kvm_kinds'}
    # One class per wrapped driver, not one per backend.
    assert type(make_driver(tmp_path)) is type(d)


def test_wrapped_driver_must_be_named(tmp_path):
    with pytest.raises(exception.Any2KvmError,
                       match=r'\[backend-1\] any2kvm_wrapped_driver is not '
                             'set'):
        make_driver(tmp_path, any2kvm_wrapped_driver=None)
    with pytest.raises(exception.Any2KvmError, match='names the hook'):
        make_driver(tmp_path, any2kvm_wrapped_driver='any2kvm_os.cinder.'
                    'driver.Any2KvmDriver')


# -- what is recognised -------------------------------------------------------

@pytest.mark.parametrize('disk_format,container,kinds', [
    ('vhd', 'ovf', ('xenserver-tgz', 'xva')),
    ('raw', 'ovf', ('xenserver-tgz', 'xva')),
    ('vmdk', 'ova', ('ova',)),
    ('vhd', 'ova', ('ova',)),
    ('vhd', 'bare', ('vhd',)),
    ('vhdx', 'bare', ('vhdx',)),
    ('VMDK', None, ('vmdk',)),
    ('raw', 'bare', None),
    ('qcow2', 'bare', None),
    ('iso', 'bare', None),
    ('vhd', 'docker', None),
])
def test_recognise(disk_format, container, kinds):
    assert hook.recognise({'disk_format': disk_format,
                           'container_format': container}) == kinds


def test_recognise_only_enabled_kinds():
    meta = {'disk_format': 'vhd', 'container_format': 'ovf'}
    assert hook.recognise(meta, ['xva']) == ('xva',)
    assert hook.recognise(meta, ['vhd', 'ova']) is None


@pytest.mark.parametrize('meta,conf', [
    ({'disk_format': 'raw', 'container_format': 'bare'}, {}),
    ({'disk_format': 'vhd', 'container_format': 'bare'},
     {'any2kvm_enabled': False}),
    ({'disk_format': 'vhd', 'container_format': 'bare'},
     {'any2kvm_kinds': ['ova']}),
])
def test_others_go_to_the_wrapped_driver(fake_cinder, tmp_path, meta, conf):
    d = make_driver(tmp_path, **conf)
    FakeNfsDriver.clone_calls.clear()
    meta = dict(meta, id='img-9')
    assert d.clone_image('ctx', Volume(), None, meta, None) == (None, False)
    assert FakeNfsDriver.clone_calls == ['img-9']


# -- converting ---------------------------------------------------------------

def test_vhd_becomes_a_sparse_volume_with_metadata(fake_cinder, tmp_path):
    d = make_driver(tmp_path)
    data = dynamic_vhd()
    meta = image_meta(data, my_prop='mine', hw_disk_bus='virtio')
    vol = Volume(size=1)
    update, cloned = d.clone_image('ctx', vol, None, meta,
                                   ImageService(data))
    assert cloned is True
    assert update == {'provider_location': 'share:/x'}
    path = tmp_path / 'volumes' / ('volume-%s' % vol.id)
    st = path.stat()
    assert st.st_size == GiB                      # never truncated
    assert st.st_blocks * 512 <= 2 * MiB          # sparse
    with open(path, 'rb') as f:
        assert f.read(4 * MiB) == expected(4 * MiB)
    props = meta['properties']
    assert props['hw_scsi_model'] == 'virtio-scsi'
    assert props['hw_disk_bus'] == 'virtio'       # the image's own wins
    assert props['my_prop'] == 'mine'
    assert props['any2kvm_source_format'] == 'vhd/bare'
    assert (meta['disk_format'], meta['container_format']) == ('raw', 'bare')
    assert 'min_disk' not in props
    # Scratch is gone.
    assert list((tmp_path / 'conversion').iterdir()) == []


def test_xenserver_tgz_picks_the_chain(fake_cinder, tmp_path):
    base, base_uid = vhdbuild.build(
        4 * MiB, blocks={0: (None, b'B' * MiB), 1: (None, b'b' * MiB)})
    child, _ = vhdbuild.build(
        4 * MiB, blocks={1: (None, b'C' * MiB)}, parent_uid=base_uid,
        parent_name='whatever.vhd', disk_type=vhd.DISK_DIFFERENCING)
    tgz = tmp_path / 'vm.tgz'
    with tarfile.open(tgz, 'w:gz') as tf:
        for name, blob in [('1.vhd', base), ('0.vhd', child)]:
            (tmp_path / name).write_bytes(blob)
            tf.add(tmp_path / name, arcname=name)
    data = tgz.read_bytes()
    d = make_driver(tmp_path)
    vol = Volume(size=1)
    _update, cloned = d.clone_image('ctx', vol, None,
                                    image_meta(data, 'vhd', 'ovf'),
                                    ImageService(data))
    assert cloned
    with open(tmp_path / 'volumes' / ('volume-%s' % vol.id), 'rb') as f:
        got = f.read(4 * MiB)
    # 2 MiB blocks: the child's block 1 hides the base's.
    assert got == b'B' * MiB + bytes(MiB) + b'C' * MiB + bytes(MiB)


def test_too_small_volume_is_refused_before_creating_it(
        fake_cinder, tmp_path):
    d = make_driver(tmp_path)
    data, _ = vhdbuild.build(2 * GiB, blocks={0: (None, b'x' * MiB)})
    vol = Volume(size=1)
    with pytest.raises(ImageUnacceptable,
                       match=r'its disk is 2147483648 bytes \(2 GiB\): it '
                             'does not fit in a volume of 1 GiB'):
        d.clone_image('ctx', vol, None, image_meta(data),
                      ImageService(data))
    assert list((tmp_path / 'volumes').iterdir()) == []


def test_declared_format_must_match_the_data(fake_cinder, tmp_path):
    d = make_driver(tmp_path)
    data = dynamic_vhd()
    with pytest.raises(ImageUnacceptable,
                       match='disk_format vhdx, container_format bare, but '
                             'the data is vhd'):
        d.clone_image('ctx', Volume(), None, image_meta(data, 'vhdx'),
                      ImageService(data))
    assert list((tmp_path / 'volumes').iterdir()) == []


def test_bad_download_is_refused(fake_cinder, tmp_path):
    d = make_driver(tmp_path)
    data = dynamic_vhd()
    meta = image_meta(data)
    meta['checksum'] = '0' * 32
    with pytest.raises(ImageUnacceptable, match='does not match the image '
                                                'checksum'):
        d.clone_image('ctx', Volume(), None, meta, ImageService(data))
    assert list((tmp_path / 'conversion').iterdir()) == []


def test_failure_while_writing_deletes_the_volume(fake_cinder, tmp_path,
                                                  monkeypatch):
    d = make_driver(tmp_path)
    data = dynamic_vhd()
    vol = Volume()

    def broken(self, target, progress=None):
        raise OSError(5, 'Input/output error')
    from any2kvm_os import vm
    monkeypatch.setattr(vm.ChainDisk, 'write_to', broken)
    with pytest.raises(ImageCopyFailure, match='Input/output error'):
        d.clone_image('ctx', vol, None, image_meta(data), ImageService(data))
    assert d.deleted == [vol.id]
    assert list((tmp_path / 'volumes').iterdir()) == []


def test_disk_property_chooses_the_disk(fake_cinder, tmp_path):
    d = make_driver(tmp_path)
    data = dynamic_vhd()
    with pytest.raises(ImageUnacceptable, match=r"any2kvm_disk='2': the "
                                                r"image has 1 disk\(s\)"):
        d.clone_image('ctx', Volume(), None,
                      image_meta(data, any2kvm_disk='2'), ImageService(data))


def test_qcow2_volumes_are_not_overwritten(fake_cinder, tmp_path):
    d = make_driver(tmp_path, nfs_qcow2_volumes=True)
    data = dynamic_vhd()
    with pytest.raises(ImageUnacceptable, match='keeps this volume as '
                                                'qcow2'):
        d.clone_image('ctx', Volume(), None, image_meta(data),
                      ImageService(data))
    assert list((tmp_path / 'volumes').iterdir()) == []


def test_conversion_disable_is_honoured(fake_cinder, tmp_path):
    fake_cinder['conversion_disabled'] = True
    d = make_driver(tmp_path)
    data = dynamic_vhd()
    with pytest.raises(ImageConversionNotAllowed):
        d.clone_image('ctx', Volume(), None, image_meta(data),
                      ImageService(data))


def test_streamed_tgz_with_a_bad_checksum_leaves_no_volume(fake_cinder,
                                                           tmp_path):
    """A XenServer tgz is written as it downloads; the download's checksum
    is known only at its end, after the volume was written: the volume is
    deleted and the image refused."""
    noise = random.Random(5).randbytes(3 * MiB)    # the tgz is > 1 chunk
    base, _uid = vhdbuild.build(
        4 * MiB, blocks={0: (None, noise[:2 * MiB]),
                         1: (None, noise[2 * MiB:])})
    tgz = tmp_path / 'vm.tgz'
    (tmp_path / '0.vhd').write_bytes(base)
    with tarfile.open(tgz, 'w:gz') as tf:
        tf.add(tmp_path / '0.vhd', arcname='0.vhd')
    data = tgz.read_bytes()
    meta = image_meta(data, 'vhd', 'ovf')
    meta['checksum'] = 'f' * 32
    d = make_driver(tmp_path)
    vol = Volume()
    with pytest.raises(ImageUnacceptable, match='does not match the image '
                                                'checksum'):
        d.clone_image('ctx', vol, None, meta, ImageService(data))
    assert d.deleted == [vol.id]
    assert list((tmp_path / 'volumes').iterdir()) == []


def test_volume_this_service_cannot_open_is_copied_as_root(
        fake_cinder, tmp_path, monkeypatch):
    """A root-owned device (LVM, an attachment): the disk is converted into
    sparse scratch and copied with Cinder's qemu-img as root."""
    from any2kvm_os.writers import raw
    real_open = raw.RawWriter.open_volume
    volumes = tmp_path / 'volumes'

    def open_volume(path):
        if str(path).startswith(str(volumes)):
            try:
                raise PermissionError(13, 'Permission denied')
            except PermissionError as e:
                raise exception.TargetError(path=path, reason=e.strerror)
        return real_open(path)
    monkeypatch.setattr(raw.RawWriter, 'open_volume', open_volume)
    d = make_driver(tmp_path)
    data = dynamic_vhd()
    vol = Volume()
    _update, cloned = d.clone_image('ctx', vol, None, image_meta(data),
                                    ImageService(data))
    assert cloned
    assert fake_cinder['converted'] == [('raw', 'raw', True)]
    with open(volumes / ('volume-%s' % vol.id), 'rb') as f:
        assert f.read(4 * MiB) == expected(4 * MiB)
    assert list((tmp_path / 'conversion').iterdir()) == []


class RbdLikeDriver(FakeNfsDriver):
    """No local path: volumes are reached through an attachment whose
    device is a file object, as os-brick's RBD connector gives."""

    images = {}

    def create_volume(self, volume):
        self.images[volume.id] = io.BytesIO(bytes(volume.size * GiB))
        return {}

    def delete_volume(self, volume):
        self.deleted.append(volume.id)
        del self.images[volume.id]

    def local_path(self, volume):
        raise NotImplementedError()

    def _attach_volume(self, context, volume, properties, remote=False):
        self.attached = properties
        return {'device': {'path': self.images[volume.id]}}, volume

    def _detach_volume(self, context, attach_info, volume, properties,
                       force=False, remote=False, ignore_errors=False):
        self.detached = force


def test_volume_reached_as_a_file_object(fake_cinder, tmp_path):
    d = make_driver(tmp_path, any2kvm_wrapped_driver=__name__ +
                    '.RbdLikeDriver', use_multipath_for_image_xfer=False,
                    enforce_multipath_for_image_xfer=False)
    data = dynamic_vhd()
    vol = Volume()
    _update, cloned = d.clone_image('ctx', vol, None, image_meta(data),
                                    ImageService(data))
    assert cloned
    assert d.attached == {'multipath': False}
    assert d.detached is True
    got = RbdLikeDriver.images.pop(vol.id).getvalue()
    assert len(got) == GiB
    assert got[:4 * MiB] == expected(4 * MiB)
    assert got.count(0, 4 * MiB) == GiB - 4 * MiB
