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

"""``import --target cinder --fix`` and ``migration cutover --fix`` against
the loopback cloud: the volume is snapshotted, fixed in place, and
reverted to the snapshot when the fix fails.

The Xen PV test guest (tests/lib/guestbuild.py: fstab and GRUB name
``/dev/xvda1``, built once for the module) is imported through the attach
route (os-brick, as root, with the loopback cloud's NFS share), and
warm-migrated from the XenServer stand-in behind the real sshd
(tests/lib/xenserver/bed.py) into a volume.  Four libguestfs appliance
launches in all (60-100 s each under TCG): for ``import``, a fix that
succeeds (``any2kvm``) and one made to fail after its first file
(``ANY2KVM_FIX_FAIL_AFTER=1``, ``openstack any2kvm``); for the migration,
a cutover whose fix fails the same way, then the cutover run again.  The
volumes are read back here through an attachment of their own; the
migrated one is booted under QEMU TCG from it.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from any2kvm_os import clients
from any2kvm_os.guest import inspect as gi
from any2kvm_os.targets import cinder as cinder_target
from tests.lib.cloudapi import unique
from tests.lib import guestbuild
from tests.lib.xenserver import bed as xbed
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


def _read(cinder, vol_id, mnt, tmp_path, length, names=None, copy=None):
    """(SHA-256 of the volume's first ``length`` bytes, its /etc/fstab),
    read through an attachment; with ``names``, the second item is a dict
    of those files.  ``copy``: where to keep those bytes (a raw file)."""
    part = tmp_path / 'part.img'
    with cinder_target.attached(cinder, vol_id, mount_point_base=mnt,
                                formats=('raw',)) as path:
        h = hashlib.sha256()
        with open(path, 'rb') as f, \
                open(str(copy or os.devnull), 'wb') as whole:
            left = length
            while left:
                block = f.read(min(left, 4 * MiB))
                assert block, 'volume shorter than %d bytes' % length
                h.update(block)
                whole.write(block)
                left -= len(block)
            start = guestbuild.START_SECTOR * 512
            f.seek(start)
            with open(str(part), 'wb') as dst:
                left = length - start
                while left:
                    block = f.read(min(left, 4 * MiB))
                    dst.write(block)
                    left -= len(block)
    texts = {}
    for name in names or ('/etc/fstab',):
        r = subprocess.run(['debugfs', '-R', 'cat %s' % name, str(part)],
                           capture_output=True, text=True, timeout=120)
        texts[name] = r.stdout
    part.unlink()
    return h.hexdigest(), texts if names else texts['/etc/fstab']


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


@pytest.mark.timeout(2 * APPLIANCE_TIMEOUT)
def test_migration_cutover_fix_into_cinder_reverts_then_runs_again(
        cloud, xen_guest, where, fattools, sshd_factory, tmp_path):
    """``migration create --target cinder``, ``sync``, ``cutover --fix``
    with a fix failing after its first file: the volume is reverted (it
    holds the guest as synced), not bootable, no metadata, no snapshot
    left, and the migration failed with a line saying to run the cutover
    again.  Run again, the cutover fixes fstab and GRUB on the volume,
    gives it the guest's image metadata, and the volume boots."""
    mnt, cinder, made = where
    b = xbed.Bed(sshd_factory, tmp_path / 'bed',
                 build=xbed.guest_host(xen_guest['raw']))
    name = unique('migfix')
    made.append(name)
    common = b.ssh_args + ['--state-db',
                           'sqlite:///%s' % (tmp_path / 'state.db')]

    def mig(*args, env=None, ok=True, common=common):
        r = run(cloud, 'any2kvm', 'migration', *(list(args) + common),
                env=env)
        if ok:
            assert r.returncode == 0, (r.stdout, r.stderr)
        return r

    def show():
        return json.loads(mig('show', name, '--format', 'json',
                              common=common[-2:]).stdout)

    t0 = [time.monotonic()]

    def lap(what):
        now = time.monotonic()
        print('%s: %.1f s' % (what, now - t0[0]))
        t0[0] = now

    mig('create', name, b.location('xen-guest'), '--target', 'cinder',
        '--brick-mount-point-base', mnt)
    mig('sync', name, '--no-inspect', '--no-progress')
    lap('create and sync')
    (vol_id,) = [d['target_ref'] for d in show()['disks']]
    size = xen_guest['raw'].stat().st_size
    r = mig('cutover', name, '--timeout', '60', '--fix', '--no-progress',
            env={'ANY2KVM_FIX_FAIL_AFTER': '1'}, ok=False)
    assert r.returncode != 0, (r.stdout, r.stderr)
    lap('cutover --fix failing')
    err = r.stderr.strip().splitlines()[-1]
    assert 'guest fix: fix stopped after 1 file(s)' in err, r.stderr
    assert 'volume(s) %s reverted to the snapshot(s) taken before the ' \
        'fix' % vol_id in err, err
    assert 'the VM stays halted: run "migration cutover %s" again' \
        % name in err, err
    m = show()
    assert m['status'] == 'failed' and not m.get('holder'), m
    assert 'reverted' in m['error']
    volume = cinder.volumes.get(vol_id)
    assert (volume.status, volume.bootable) == ('available', 'false')
    assert not getattr(volume, 'volume_image_metadata', None)
    assert cinder.volume_snapshots.list(
        search_opts={'volume_id': vol_id}) == []
    digest, fstab = _read(cinder, vol_id, mnt, tmp_path, size)
    assert digest == _sha256(xen_guest['raw'])
    assert '/dev/xvda1 / ext4' in fstab, fstab
    lap('checks')
    # Again, without the fault: the VM is already down; the leaf is
    # applied again (the VM might have run since), nothing else (the
    # failed fix left nothing on the volume); the fix runs on it.
    r = mig('cutover', name, '--timeout', '60', '--fix', '--format',
            'json', '--no-progress')
    done = json.loads(r.stdout)
    lap('cutover --fix again')
    assert done['layers_applied'] == 1 and done['rewrites'] == []
    assert sorted(done['details']['fixed'].split(', ')) == [
        '/boot/grub/grub.cfg', '/etc/fstab']
    assert done['details']['guest_inspected_by'] == 'cutover --fix'
    m = show()
    assert m['status'] == 'done' and not m['error']
    props = m['guest']['properties']
    volume = cinder.volumes.get(vol_id)
    meta = volume.volume_image_metadata
    assert volume.bootable == 'true'
    assert meta['any2kvm_migration'] == name
    for key in ('hw_disk_bus', 'os_distro'):
        assert meta[key] == props[key], (key, meta, props)
    assert (meta['hw_disk_bus'], meta.get('hw_scsi_model')) == (
        'scsi', 'virtio-scsi')
    assert cinder.volume_snapshots.list(
        search_opts={'volume_id': vol_id}) == []
    uuid = 'UUID=' + xen_guest['fsuuid']
    copy = tmp_path / 'volume.raw'
    _digest, texts = _read(cinder, vol_id, mnt, tmp_path, size, names=(
        '/etc/fstab', '/boot/grub/grub.cfg'), copy=copy)
    fstab, grub = texts['/etc/fstab'], texts['/boot/grub/grub.cfg']
    assert '%s / ext4' % uuid in fstab and 'xvda' not in fstab, fstab
    assert 'root=%s' % uuid in grub and 'xvda' not in grub, grub
    lap('checks')
    # The bytes read back from the volume boot (QEMU TCG) on the bus its
    # metadata names.
    line = guestbuild.boot(copy, guestbuild.NOVA_BUS[meta['hw_disk_bus']])
    lap('boot')
    assert line and 'ANY2KVM-BOOT-OK' in line, line
    assert 'fstab=%s' % uuid in line, line
