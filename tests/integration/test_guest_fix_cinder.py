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

"""``import --target cinder --fix`` against the loopback cloud: the volume
is snapshotted, fixed in place, and reverted to the snapshot when the fix
fails.

The Xen PV test guest (tests/lib/guestbuild.py: fstab and GRUB name
``/dev/xvda1``) is imported through the attach route (os-brick, as root,
with the loopback cloud's NFS share).  Two libguestfs appliance launches
in all (60-100 s each under TCG): a fix that succeeds (``any2kvm``), and
one made to fail after its first file (``ANY2KVM_FIX_FAIL_AFTER=1``,
``openstack any2kvm``).  The volume is read back here through an
attachment of its own.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from any2kvm_os import clients
from any2kvm_os.guest import inspect as gi
from any2kvm_os.targets import cinder as cinder_target
from tests.lib.cloudapi import unique
from tests.lib import guestbuild
from tests.lib.tools import missing_tool

APPLIANCE_TIMEOUT = 1800
MiB = 1 << 20


@pytest.fixture(scope='module')
def xen_guest(tmp_path_factory):
    missing = guestbuild.missing_tools()
    if missing:
        missing_tool('test guests need: %s' % ', '.join(missing))
    settings = gi.Settings()
    r = subprocess.run([settings.python, '-c', 'import guestfs'],
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        missing_tool('libguestfs with its Python binding for %s is needed '
                     '(bindep profile inspect)' % settings.python)
    top = tmp_path_factory.mktemp('xen-guest')
    raw = top / 'xen.raw'
    built = guestbuild.build(raw, 'xenpv')
    source = top / 'xen.qcow2'
    subprocess.run(['qemu-img', 'convert', '-O', 'qcow2', str(raw),
                    str(source)], check=True, capture_output=True,
                   timeout=300)
    return dict(built, raw=raw, source=source)


@pytest.fixture
def where(cloud, keystone_session):
    if os.geteuid() != 0:
        pytest.skip('os-brick attaches volumes as root only')
    mnt = Path(cloud.openrc).parent / 'lib' / 'cinder' / 'mnt'
    if not mnt.is_dir():
        pytest.skip('not a tools/loopback-cloud cloud')
    cinder = clients.cinder_client(keystone_session, cloud.region, 'public',
                                   cinder_target.ATTACH_MICROVERSION)
    made = []
    yield str(mnt), cinder, made
    for name in made:
        for v in cinder.volumes.list(search_opts={'name': name}):
            for s in cinder.volume_snapshots.list(
                    search_opts={'volume_id': v.id}):
                cinder.volume_snapshots.delete(s.id)
            try:
                cinder.volumes.delete(v.id)
            except Exception as e:
                print('could not delete volume %s: %s' % (v.id, e))


def run(cloud, command, *args, env=None):
    full = dict(os.environ)
    full.update(cloud.env)
    full.update(env or {})
    full['LC_ALL'] = 'C.UTF-8'
    cmd = [os.path.join(os.path.dirname(sys.executable), command)]
    return subprocess.run(cmd + [str(a) for a in args], env=full,
                          capture_output=True, text=True,
                          timeout=APPLIANCE_TIMEOUT, cwd='/')


def _volume(cinder, name):
    (volume,) = cinder.volumes.list(search_opts={'name': name})
    return cinder.volumes.get(volume.id)


def _read(cinder, vol_id, mnt, tmp_path, length):
    """(SHA-256 of the volume's first ``length`` bytes, its /etc/fstab),
    read through an attachment."""
    part = tmp_path / 'part.img'
    with cinder_target.attached(cinder, vol_id, mount_point_base=mnt,
                                formats=('raw',)) as path:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            left = length
            while left:
                block = f.read(min(left, 4 * MiB))
                assert block, 'volume shorter than %d bytes' % length
                h.update(block)
                left -= len(block)
            start = guestbuild.START_SECTOR * 512
            f.seek(start)
            with open(str(part), 'wb') as dst:
                left = length - start
                while left:
                    block = f.read(min(left, 4 * MiB))
                    dst.write(block)
                    left -= len(block)
    r = subprocess.run(['debugfs', '-R', 'cat /etc/fstab', str(part)],
                       capture_output=True, text=True, timeout=120)
    part.unlink()
    return h.hexdigest(), r.stdout


def _sha256(path):
    h = hashlib.sha256()
    with open(str(path), 'rb') as f:
        for block in iter(lambda: f.read(4 * MiB), b''):
            h.update(block)
    return h.hexdigest()


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_import_into_cinder_with_fix(cloud, xen_guest, where, tmp_path):
    mnt, cinder, made = where
    name = unique('fix')
    made.append(name)
    r = run(cloud, 'any2kvm', 'import', xen_guest['source'], '--name', name,
            '--target', 'cinder', '--volume-route', 'attach',
            '--brick-mount-point-base', mnt, '--fix', '--format', 'json')
    assert r.returncode == 0, (r.stdout, r.stderr)
    report = json.loads(r.stdout)
    uuid = 'UUID=' + xen_guest['fsuuid']
    (fix,) = report['fixed']
    assert sorted(f['path'] for f in fix['files']) == [
        '/boot/grub/grub.cfg', '/etc/fstab']
    volume = _volume(cinder, name)
    # A snapshot was taken, and deleted once the fix succeeded.
    (snap,) = report['snapshots']
    assert snap['volume'] == volume.id and not snap['kept']
    assert cinder.volume_snapshots.list(
        search_opts={'volume_id': volume.id}) == []
    # The properties are those of the guest as fixed.
    assert report['guest']['disk_names']['/etc/fstab'] == [uuid]
    meta = volume.volume_image_metadata
    assert meta['hw_disk_bus'] == report['properties']['hw_disk_bus']
    assert meta['os_distro'] == report['properties']['os_distro']
    assert volume.bootable == 'true'
    size = xen_guest['raw'].stat().st_size
    digest, fstab = _read(cinder, volume.id, mnt, tmp_path, size)
    assert '%s / ext4' % uuid in fstab, fstab
    assert digest != _sha256(xen_guest['raw'])


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_failing_fix_reverts_the_volume_to_its_snapshot(
        cloud, xen_guest, where, tmp_path):
    mnt, cinder, made = where
    name = unique('fixfail')
    made.append(name)
    r = run(cloud, 'openstack', 'any2kvm', 'import', xen_guest['source'],
            '--name', name, '--target', 'cinder', '--volume-route',
            'attach', '--brick-mount-point-base', mnt, '--fix',
            env={'ANY2KVM_FIX_FAIL_AFTER': '1'})
    assert r.returncode != 0, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()[-1]
    assert 'guest fix: fix stopped after 1 file(s)' in err, r.stderr
    assert 'it had changed: /etc/fstab' in err, err
    volume = _volume(cinder, name)
    assert 'volume(s) %s reverted to the snapshot(s) taken before the ' \
        'fix' % volume.id in err, err
    assert volume.status == 'available'
    assert cinder.volume_snapshots.list(
        search_opts={'volume_id': volume.id}) == []
    # The volume holds the guest as imported: nothing of the half-made
    # fix.
    size = xen_guest['raw'].stat().st_size
    digest, fstab = _read(cinder, volume.id, mnt, tmp_path, size)
    assert digest == _sha256(xen_guest['raw'])
    assert '/dev/xvda1 / ext4' in fstab, fstab
