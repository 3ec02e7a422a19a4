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

"""The Cinder target and ``openstack any2kvm`` against the loopback cloud.

Volumes are read back through upload-to-image (``os-volume_upload_image``)
and their bytes compared with the write model of the FATtools chain; the
OSC plugin is run as a user runs it, ``openstack any2kvm ...`` with the
openrc's environment.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from any2kvm_os import api
from any2kvm_os import limits as a2k_limits
from tests.lib.cloudapi import download_sha256
from tests.lib.cloudapi import padded_sha256
from tests.lib.cloudapi import unique
from tests.lib.cloudapi import volume_sha256
from tests.lib import imagegen as ig
from tests.lib import vhdchains

GiB = 1 << 30


@pytest.mark.parametrize('route', ['image', 'attach', 'auto-fallback'])
def test_cinder_volume_from_xenserver_tgz_with_grown_child(
        route, cloud, fattools, keystone_session, cinder, glance, tmp_path):
    """Both routes give the same volume.  attach: os-brick finds the NFS
    share already mounted under the loopback cloud's mount base; auto
    without that base cannot reach the share and falls back to image."""
    c, _b, child_model = vhdchains.build_grown_shrunk_parent(tmp_path / 'sr')
    arch = tmp_path / 'vm.tgz'
    ig.make_tar(arch, ig.xenserver_members(
        [c.layers[1].path, c.layers[0].path]), compression='gz')
    name = unique('vol')
    options = {'route': route.split('-')[0]}
    if route == 'attach':
        mnt = Path(cloud.openrc).parent / 'lib' / 'cinder' / 'mnt'
        if not mnt.is_dir():
            pytest.skip('not a tools/loopback-cloud cloud')
        options['brick_mount_point_base'] = str(mnt)
    _vm, (result,) = api.import_vm(str(arch), 'cinder', name,
                                   a2k_limits.Limits(),
                                   session=keystone_session,
                                   target_options=options)
    try:
        volume = cinder.volumes.get(result['id'])
        assert volume.status == 'available'
        assert volume.bootable == 'true'
        assert volume.size == 1 and volume.name == name
        meta = volume.volume_image_metadata
        assert meta['hw_scsi_model'] == 'virtio-scsi'
        assert meta['hw_disk_bus'] == 'scsi'
        assert meta.get('any2kvm_route') == (
            'attach' if route == 'attach' else None)
        assert ('image_id' in meta) == (route != 'attach')
        # The intermediate image is gone (or was never made).
        assert not list(glance.images.list(
            filters={'name': name + '-any2kvm-upload'}))
        assert result['sha256'] == child_model.sha256()
        assert volume_sha256(cinder, glance, result['id']) == \
            padded_sha256(bytes(child_model.data), GiB)
    finally:
        cinder.volumes.delete(result['id'])


def openstack(cloud, *args):
    env = dict(os.environ)
    env.update(cloud.env)
    cmd = [os.path.join(os.path.dirname(sys.executable), 'openstack')]
    return subprocess.run(cmd + [str(a) for a in args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_openstack_any2kvm_import_as_a_user(cloud, fattools, glance,
                                            tmp_path):
    r = openstack(cloud, 'any2kvm', 'source', 'list', '-f', 'json')
    assert r.returncode == 0, r.stderr
    assert {'file', 'ova', 'xenserver-tgz', 'xva'} <= {
        s['Name'] for s in json.loads(r.stdout)}

    c = ig.FatChain(tmp_path / 'sr', 8 << 20)
    c.base('base.vhd', [(0, ig.pattern(1, 3 << 20))])
    c.child('leaf.vhd', [(1 << 20, ig.pattern(2, 4096))])
    arch = tmp_path / 'vm.tgz'
    ig.make_tar(arch, ig.xenserver_members(
        [c.layers[1].path, c.layers[0].path]), compression='gz')
    r = openstack(cloud, 'any2kvm', 'inspect', arch, '-f', 'json')
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)['chain']) == 2

    name = unique('osc')
    r = openstack(cloud, 'any2kvm', 'import', arch, '--name', name,
                  '--property', 'os_distro=debian', '-f', 'json')
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    try:
        image = glance.images.get(shown['id'])
        assert image['os_distro'] == 'debian'
        assert image['hw_disk_bus'] == 'scsi'
        assert download_sha256(glance, shown['id']) == c.model.sha256()
        assert shown['os_hash_value'] == image['os_hash_value']
    finally:
        glance.images.delete(shown['id'])

    # Bad input: one clear line, no image left.
    bad = tmp_path / 'bad.vhd'
    bad.write_bytes(b'\0' * 4096)
    name = unique('bad')
    r = openstack(cloud, 'any2kvm', 'import', bad, '--name', name)
    assert r.returncode == 1
    assert 'bad.vhd' in r.stderr and 'Traceback' not in r.stderr
    assert not list(glance.images.list(filters={'name': name}))
