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

"""The one contract every container plugin and every format reader keeps.

Parametrised over the registries themselves (the stevedore namespaces
``any2kvm_os.containers`` and ``any2kvm_os.formats``), so a plugin is
tested the day it is registered: one without a sample in
``tests/lib/samples.py`` fails here until it has one.
"""

import hashlib
import os

import pytest

from any2kvm_os.chain import layer_chain
from any2kvm_os.containers import base as cbase
from any2kvm_os.containers import registry
from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.formats import base as fbase
from any2kvm_os.formats import probe
from any2kvm_os import limits as a2k_limits
from any2kvm_os.sources import base as sources
from any2kvm_os.sources import glance_image
from tests.lib import samples

CONTAINERS = [p.name for p in registry.plugins()]
FORMATS = sorted(probe.readers())
#: What Glance accepts (glance-api's defaults).
GLANCE_CONTAINER_FORMATS = ('bare', 'ovf', 'ova', 'aki', 'ari', 'ami',
                            'docker', 'compressed')
GLANCE_DISK_FORMATS = ('ami', 'ari', 'aki', 'vhd', 'vhdx', 'vmdk', 'raw',
                       'qcow2', 'vdi', 'iso', 'ploop')


@pytest.fixture(scope='module')
def container_sample(tmp_path_factory, qemu_img):
    built = {}

    def get(name):
        if name not in built:
            builder = samples.CONTAINERS.get(name)
            if builder is None:
                pytest.fail('container plugin %r has no sample: add a '
                            'builder to tests/lib/samples.py' % name)
            built[name] = builder(tmp_path_factory.mktemp(name))
        return built[name]
    return get


@pytest.fixture(scope='module')
def format_sample(tmp_path_factory, qemu_img):
    built = {}

    def get(name):
        if name not in built:
            if name not in samples.QEMU_FORMATS:
                pytest.fail('format reader %r has no sample: add it to '
                            'tests/lib/samples.py' % name)
            built[name] = samples.format_sample(
                name, tmp_path_factory.mktemp('fmt-' + name))
        return built[name]
    return get


def _sha256_of_disk(disk, tmp_path):
    from any2kvm_os.writers import raw
    out = tmp_path / ('%s.raw' % hashlib.md5(
        disk.name.encode()).hexdigest())
    raw.write_file(disk, str(out))
    try:
        return ig_sha256(out), os.path.getsize(out)
    finally:
        out.unlink()


def ig_sha256(path):
    from tests.lib import imagegen
    return imagegen.sha256_file(path)


def _junk(tmp_path):
    """Files no plugin may claim: empty, text, random bytes."""
    files = {'empty': b'', 'text': b'version=1\nThis is not a disk.\n' * 40,
             'random': hashlib.sha256(b'x').digest() * 32768}
    paths = []
    for name, data in files.items():
        p = tmp_path / ('junk-' + name)
        p.write_bytes(data)
        paths.append(p)
    return paths


# -- container plugins --------------------------------------------------------

@pytest.mark.parametrize('name', CONTAINERS)
def test_container_describes_itself(name):
    plugin = registry.get(name)
    assert isinstance(plugin, cbase.ContainerType)
    assert plugin.name == name
    for attr in ('description', 'noun'):
        assert isinstance(getattr(plugin, attr), str) and \
            getattr(plugin, attr), attr
    assert isinstance(plugin.priority, int)
    # Every container is a local source, under its --source word.
    source = sources.plugins()[plugin.source_name()]
    assert name in source.containers
    for kind, (c_format, d_format) in plugin.glance_kinds.items():
        assert c_format in GLANCE_CONTAINER_FORMATS, kind
        assert d_format is None or d_format in GLANCE_DISK_FORMATS, kind


@pytest.mark.parametrize('name', CONTAINERS)
def test_container_claims_and_opens_its_sample(name, container_sample,
                                               tmp_path):
    sample = container_sample(name)
    limits = a2k_limits.Limits()
    # The loop picks this plugin: none of higher priority claims it.
    assert registry.detect(str(sample.path), limits).name == name
    with registry.open_path(str(sample.path), limits) as vm:
        assert vm.container == name
        assert vm.disks
        disk = vm.disks[0]
        assert disk.container == name
        layers = disk.describe()
        assert layers and layers[0]['virtual_size'] == sample.size
        assert disk.virtual_size == sample.size
        assert disk.size_hint in (None, sample.size)
        assert isinstance(disk.format, str) and disk.format
        assert (sample.sha256, sample.size) == _sha256_of_disk(disk,
                                                               tmp_path)


@pytest.mark.parametrize('name', CONTAINERS)
def test_container_leaves_junk_alone(name, tmp_path):
    plugin = registry.get(name)
    limits = a2k_limits.Limits()
    for path in _junk(tmp_path):
        with fileio.FileView.open_path(str(path)) as view:
            assert not plugin.probe(view, str(path), limits), path.name


@pytest.mark.parametrize('name', CONTAINERS)
def test_container_refuses_its_sample_cut_short(name, container_sample,
                                                tmp_path):
    """Half a sample: a clear error (ours), never a wrong disk."""
    sample = container_sample(name)
    cut = tmp_path / sample.path.name
    data = sample.path.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    if name == 'ovf':
        # The descriptor is intact; its disk file is what is cut.
        for other in sample.path.parent.iterdir():
            if other != sample.path and not (tmp_path / other.name).exists():
                body = other.read_bytes()
                (tmp_path / other.name).write_bytes(
                    body if other.suffix in ('.mf',) else
                    body[:len(body) // 2])
        cut.write_bytes(data)
    with pytest.raises(exception.Any2KvmError):
        with registry.open_path(str(cut), a2k_limits.Limits()) as vm:
            for disk in vm.disks:
                _sha256_of_disk(disk, tmp_path)


def _chunks(path, size=65536 + 17):
    def chunks():
        with open(path, 'rb') as f:
            while True:
                data = f.read(size)
                if not data:
                    return
                yield data
    return chunks


@pytest.mark.parametrize('name', CONTAINERS)
def test_container_from_glance(name, container_sample, tmp_path):
    """A plugin Glance images may hold reads the image data as it
    downloads (or, else, through scratch) to the same disk."""
    plugin = registry.get(name)
    if not plugin.glance_kinds:
        pytest.skip('%s: no Glance image holds it' % name)
    sample = container_sample(name)
    data = sample.path.read_bytes()
    streams = plugin.probe_head(data[:fileio.ChunkReader.HEAD])
    limits = a2k_limits.Limits(scratch_dir=str(tmp_path))
    vm = glance_image.open_image_data(
        'glance image x', _chunks(sample.path), len(data), limits,
        checksum=hashlib.md5(data).hexdigest())
    with vm:
        assert vm.container == name
        if streams:
            # Read as it arrives: no random access, no copy.
            assert vm.disks[0].chain is None
        assert (sample.sha256, sample.size) == _sha256_of_disk(
            vm.disks[0], tmp_path)
    assert [p.name for p in tmp_path.iterdir()
            if p.name.startswith('any2kvm')] == []


# -- format readers -----------------------------------------------------------

@pytest.mark.parametrize('name', FORMATS)
def test_format_reader_contract(name, format_sample, tmp_path):
    sample = format_sample(name)
    cls = probe.readers()[name]
    assert issubclass(cls, fbase.LayerReader)
    with fileio.FileView.open_path(str(sample.path)) as view:
        assert cls.probe(view)
        assert [n for n, other in probe.readers().items()
                if other.probe(view)] == [name]
        layer = cls(view)
        try:
            assert layer.virtual_size == sample.size
            assert isinstance(layer.format_name, str)
            # block_status tiles the disk: contiguous, in order, no gap.
            pos = 0
            h = hashlib.sha256()
            for e in layer.block_status(0, layer.virtual_size):
                assert e.offset == pos and e.length > 0
                assert e.kind in (ext.DATA, ext.ZERO, ext.UNALLOCATED)
                if e.kind == ext.DATA:
                    h.update(layer.read_extent(e, 0, e.length))
                else:
                    h.update(bytes(e.length))
                pos += e.length
            assert pos == sample.size
            assert h.hexdigest() == sample.sha256
        finally:
            layer.close()


@pytest.mark.parametrize('name', FORMATS)
def test_format_reader_refuses_a_cut_file(name, format_sample, tmp_path):
    sample = format_sample(name)
    data = sample.path.read_bytes()
    cut = tmp_path / sample.path.name
    cut.write_bytes(data[:len(data) // 2])
    container = cbase.DirectoryContainer(str(cut), a2k_limits.Limits())
    with pytest.raises(exception.Any2KvmError):
        try:
            chain = layer_chain.resolve(container, cut.name,
                                        a2k_limits.Limits())
            for e in chain.iter_extents():
                if e.kind == ext.DATA:
                    chain.layers[e.layer].read_extent(e, 0, e.length)
        finally:
            container.close()
