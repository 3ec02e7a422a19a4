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

"""Importing into the real Glance of the loopback cloud.

Each import is downloaded back from Glance and its SHA-256 compared with
truth from outside the project: the byte model of what FATtools wrote
(XenServer chain with a grown child), qemu-img's raw reading of the disks
put into OVAs, the raw file xva-img packed.
"""

import uuid

import pytest

from any2kvm_os import exception
from any2kvm_os import api
from any2kvm_os import limits as a2k_limits
from tests.lib.cloudapi import download_sha256
from tests.lib.cloudapi import unique
from tests.lib import imagegen as ig
from tests.lib import ovabuild
from tests.lib import vhdchains
from tests.lib import xvabuild

MiB = 1 << 20


@pytest.fixture
def cleanup(glance):
    ids = []
    yield ids
    for image_id in ids:
        try:
            glance.images.delete(image_id)
        except Exception:
            pass


def do_import(keystone_session, location, name, source=None, props=None):
    return api.import_vm(str(location), 'glance', name,
                         a2k_limits.Limits(), source_name=source,
                         props=props, session=keystone_session)


def check_image(glance, result, expected_sha256, size):
    image = glance.images.get(result['id'])
    assert image['status'] == 'active'
    assert image['disk_format'] == 'raw'
    assert image['container_format'] == 'bare'
    assert image['size'] == size
    assert image['hw_scsi_model'] == 'virtio-scsi'
    assert image['hw_disk_bus'] == 'scsi'
    assert image['min_disk'] == -(-size // (1 << 30))
    assert result['sha256'] == expected_sha256
    assert download_sha256(glance, result['id']) == expected_sha256
    return image


def test_xenserver_tgz_with_grown_child(fattools, keystone_session, glance,
                                        cleanup, tmp_path):
    c, _base_model, child_model = vhdchains.build_grown_shrunk_parent(
        tmp_path / 'sr')
    arch = tmp_path / 'vm.tgz'
    ig.make_tar(arch, ig.xenserver_members(
        [c.layers[1].path, c.layers[0].path]), compression='gz')
    name = unique('xs')
    vm, (result,) = do_import(keystone_session, arch, name,
                              source='xenserver-tgz')
    cleanup.append(result['id'])
    assert result['name'] == name
    check_image(glance, result, child_model.sha256(), child_model.size)
    assert result['os_hash_algo'] == 'sha512'


@pytest.mark.parametrize('fmt', ['vmdk', 'vhd'])  # vmdk: streamOptimized
def test_ova(qemu_img, keystone_session, glance, cleanup, tmp_path, fmt):
    ova, d1, d2 = ovabuild.build_ova(qemu_img, tmp_path, fmt)
    name = unique('ova')
    vm, results = do_import(keystone_session, ova, name,
                            props={'my_property': 'kept'})
    cleanup.extend(r['id'] for r in results)
    assert [r['name'] for r in results] == [name, name + '-disk1']
    boot = check_image(glance, results[0], d1.sha256, d1.size)
    check_image(glance, results[1], d2.sha256, d2.size)
    # What the OVF said about the VM reached the boot image.
    assert boot['hw_firmware_type'] == 'uefi'
    assert boot['hw_cpu_sockets'] == '2' and boot['hw_cpu_cores'] == '2'
    assert boot['min_ram'] == 4096
    assert boot['hw_vif_model'] == 'vmxnet3'
    assert boot['my_property'] == 'kept'
    assert vm['cpus'] == 4


def test_xva(xva_img, keystone_session, glance, cleanup, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    raw, _chunks = xvabuild.single(xva_img, work)
    xva = work / 'vm.xva'
    xvabuild.package(xva_img, work, 'vm.xva', ['Ref:3'])
    name = unique('xva')
    _vm, (result,) = do_import(keystone_session, xva, name, source='xva')
    cleanup.append(result['id'])
    check_image(glance, result, ig.sha256_file(raw), raw.stat().st_size)


def test_corrupt_input_leaves_no_image(fattools, keystone_session, glance,
                                       tmp_path):
    c = ig.FatChain(tmp_path / 'sr', 8 * MiB)
    c.base('base.vhd', [(0, ig.pattern(1, 4 * MiB))])
    c.child('leaf.vhd', [(0, ig.pattern(2, 4096))])
    arch = tmp_path / 'bad.tgz'
    ig.make_tar(arch, ig.xenserver_members(
        [c.layers[1].path, c.layers[0].path]), compression='gz')
    data = bytearray(arch.read_bytes())
    data[len(data) // 2] ^= 0xFF           # damage the compressed stream
    arch.write_bytes(bytes(data))
    name = unique('bad')
    with pytest.raises(exception.Any2KvmError) as err:
        do_import(keystone_session, arch, name)
    assert 'bad.tgz' in str(err.value) and '\n' not in str(err.value)
    assert not [i for i in glance.images.list(filters={'name': name})]


def test_wrong_password_is_a_clear_error(cloud, fattools, tmp_path):
    from keystoneauth1.identity import v3
    from keystoneauth1 import session

    e = cloud.env
    auth = v3.Password(auth_url=e['OS_AUTH_URL'], username=e['OS_USERNAME'],
                       password='wrong-password',
                       project_name=e['OS_PROJECT_NAME'],
                       user_domain_name='Default',
                       project_domain_name='Default')
    c = ig.FatChain(tmp_path / 'sr', 4 * MiB)
    c.base('base.vhd', [(0, ig.pattern(1, 4096))])
    with pytest.raises(exception.TargetError,
                       match='authentication failed'):
        do_import(session.Session(auth=auth), c.leaf.path, unique('auth'))


def test_existing_xenserver_image_in_glance(fattools, keystone_session,
                                            glance, cleanup, tmp_path):
    """A vhd/ovf image (how OpenStack stores XenServer chains), which
    stock Cinder and Nova on KVM cannot use, becomes a raw image."""
    c = ig.FatChain(tmp_path / 'sr', 8 * MiB)
    c.base('base.vhd', [(0, ig.pattern(1, 3 * MiB))])
    c.child('leaf.vhd', [(MiB + 512, ig.pattern(2, 5000)),
                         (2 * MiB, bytes(64 * 1024))])
    arch = tmp_path / 'vm.tgz'
    ig.make_tar(arch, ig.xenserver_members(
        [c.layers[1].path, c.layers[0].path]), compression='gz')
    old = glance.images.create(name=unique('xs-old'), disk_format='vhd',
                               container_format='ovf')
    cleanup.append(old['id'])
    with open(arch, 'rb') as f:
        glance.images.upload(old['id'], f)
    name = unique('xs-new')
    _vm, (result,) = do_import(keystone_session, old['id'], name,
                               source='glance-image')
    cleanup.append(result['id'])
    check_image(glance, result, c.model.sha256(), c.model.size)
    # The source image is untouched.
    assert glance.images.get(old['id'])['disk_format'] == 'vhd'


def test_glance_image_source_refusals(keystone_session, glance, cleanup,
                                      tmp_path):
    with pytest.raises(exception.Any2KvmError, match='no image with that'):
        do_import(keystone_session, 'no-such-image-%s' % uuid.uuid4().hex,
                  unique('x'), source='glance-image')
    junk = glance.images.create(name=unique('junk'), disk_format='raw',
                                container_format='bare')
    cleanup.append(junk['id'])
    glance.images.upload(junk['id'], open(__file__, 'rb'))
    name = unique('junk-new')
    with pytest.raises(exception.Any2KvmError) as err:
        do_import(keystone_session, junk['id'], name, source='glance-image')
    msg = str(err.value)
    assert 'glance image %s' % junk['id'] in msg and '/tmp' not in msg
    assert not list(glance.images.list(filters={'name': name}))
