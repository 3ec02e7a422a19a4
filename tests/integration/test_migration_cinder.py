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

"""Warm migration into real Cinder volumes: the loopback cloud (its NFS
backend reached through os-brick, as the attach route does), the real
sshd with the xe stand-in (tests/lib/xenserver/bed.py), and ``any2kvm
migration`` as a user runs it.  Two syncs with a guest writing between
them, a cutover, rollback, another sync and cutover; each volume read
back through Cinder (upload to image) equals the model of its disk.  The
figures (bytes, seconds, downtime) are printed: ``pytest -s``."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.lib.cloudapi import padded_sha256
from tests.lib.cloudapi import unique
from tests.lib.cloudapi import volume_sha256
from tests.lib import cli
from tests.lib import imagegen as ig
from tests.lib.xenserver import bed as xbed

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def bed(cloud, fattools, sshd_factory, tmp_path):
    if os.geteuid() != 0:
        pytest.skip('os-brick attaches volumes as root only')
    mnt = Path(cloud.openrc).parent / 'lib' / 'cinder' / 'mnt'
    if not mnt.is_dir():
        pytest.skip('not a tools/loopback-cloud cloud')
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith('OS_')}
    env.update(cloud.env)
    env['LC_ALL'] = 'C.UTF-8'
    common = b.ssh_args + ['--state-db',
                           'sqlite:///%s' % (tmp_path / 'state.db')]
    return b, env, common, str(mnt)


def _run(env, *args, timeout=900):
    t0 = time.monotonic()
    res = subprocess.run(cli.cli_command() + ['migration'] +
                         [str(a) for a in args], capture_output=True,
                         text=True, env=env, timeout=timeout)
    assert res.returncode == 0, (res.stdout, res.stderr)
    return res, time.monotonic() - t0


def _delete_volumes(cinder, ids):
    for vol_id in ids:
        try:
            cinder.volumes.delete(vol_id)
        except Exception as e:
            print('could not delete %s: %s' % (vol_id, e))


def _verified(env, name, common, against):
    res, took = _run(env, 'verify', name, '--format', 'json',
                     '--no-progress', *common)
    r = json.loads(res.stdout)
    print('verify: %.1f s: %s' % (took, r))
    assert r['against'] == against
    assert [t['identical'] for t in r['targets']] == [True, True]
    assert all(t['compared'] == t['virtual_size'] for t in r['targets'])


def test_sync_sync_cutover_rollback_into_cinder(bed, cinder, glance):
    b, env, common, mnt = bed
    name = unique('mig')
    res, took = _run(env, 'create', name, b.location(), '--target',
                     'cinder', '--brick-mount-point-base', mnt, *common)
    print('create: %.1f s: %s' % (took, res.stdout.strip()))
    m = json.loads(_run(env, 'show', name, '--format', 'json',
                        *common[-2:])[0].stdout)
    ids = [d['target_ref'] for d in m['disks']]
    try:
        assert [cinder.volumes.get(i).name for i in ids] == [
            name, name + '-disk1']
        assert all(cinder.volumes.get(i).size == 1 for i in ids)
        assert 'password' not in json.dumps(m).lower()
        w0, w1 = b.writers(m)
        for step, write in (
                ('sync 1', None),
                ('sync 2', lambda: (w0.write(5 * MiB, ig.pattern(41, MiB)),
                                    w0.zero(0, 4096),
                                    w1.write(MiB + 300, b'partial')))):
            if write:
                write()
            res, took = _run(env, 'sync', name, '--no-progress', *common)
            print('%s: %.1f s: %s' % (step, took, res.stdout.strip()))
            assert 'rewritten' not in res.stdout
        # The volumes read back through the attach route and compared
        # with the disks read again from the host.
        _verified(env, name, common, 'the layers of the last sync')
        w0.write(7 * MiB, ig.pattern(42, 4096))
        res, took = _run(env, 'cutover', name, '--timeout', '120',
                         '--format', 'json', '--no-progress', *common)
        r = json.loads(res.stdout)
        print('cutover: %.1f s, downtime %.2f s (%s), %d bytes read over '
              'the wire for %d bytes of layer files'
              % (took, r['downtime'], ', '.join(
                  '%s %.2f s' % kv for kv in sorted(r['phases'].items())),
                 r['bytes_read'], r['files_size']))
        boot, data = [cinder.volumes.get(i) for i in ids]
        assert (boot.bootable, data.bootable) == ('true', 'false')
        meta = boot.volume_image_metadata
        assert meta['any2kvm_migration'] == name
        assert meta['hw_firmware_type'] == 'uefi'
        assert data.volume_image_metadata['any2kvm_migration'] == name
        for vol_id, w in zip(ids, (w0, w1)):
            assert volume_sha256(cinder, glance, vol_id) == padded_sha256(
                bytes(w.model.data), GiB)
        _verified(env, name, common, 'the halted VM\'s disks')
        # Rollback: the VM runs again; the next sync copies what it wrote,
        # no rewrite; a second cutover.
        res, took = _run(env, 'rollback', name, *common)
        print('rollback: %.1f s: %s' % (took, res.stdout.strip()))
        w1.write(2 * MiB, ig.pattern(43, 8192))
        res, took = _run(env, 'sync', name, '--no-progress', *common)
        print('sync 3: %.1f s: %s' % (took, res.stdout.strip()))
        assert 'rewritten' not in res.stdout
        res, took = _run(env, 'cutover', name, '--format', 'json',
                         '--no-progress', *common)
        r = json.loads(res.stdout)
        print('cutover 2: %.1f s, downtime %.2f s (%s)' % (
            took, r['downtime'], ', '.join(
                '%s %.2f s' % kv for kv in sorted(r['phases'].items()))))
        assert volume_sha256(cinder, glance, ids[1]) == padded_sha256(
            bytes(w1.model.data), GiB)
        m = json.loads(_run(env, 'show', name, '--format', 'json',
                            *common[-2:])[0].stdout)
        assert len(m['cutovers']) == 2 and m['status'] == 'done'
    finally:
        _delete_volumes(cinder, ids)


def test_a_sync_killed_while_the_volumes_are_attached(bed, cinder):
    """A sync killed (SIGKILL: the OOM killer, a power loss of the
    conversion host) while it writes the volumes leaves their attachments
    to this host, and the volumes ``in-use``: the next sync removes them
    (a warning names each) and goes on, and the volumes hold the disks."""
    b, env, common, mnt = bed
    name = unique('mig')
    _run(env, 'create', name, b.location(), '--target', 'cinder',
         '--brick-mount-point-base', mnt, *common)
    m = json.loads(_run(env, 'show', name, '--format', 'json',
                        *common[-2:])[0].stdout)
    ids = [d['target_ref'] for d in m['disks']]
    try:
        w0, _w1 = b.writers(m)
        w0.write(MiB, ig.pattern(47, 6 * MiB))
        p = subprocess.Popen(cli.cli_command() + [
            'migration', 'sync', name, '--no-progress'] + common,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        deadline = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline:
            if all(cinder.volumes.get(i).status == 'in-use' for i in ids):
                break
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()
        p.kill()
        p.communicate(timeout=60)
        left = [a for i in ids for a in cinder.volumes.get(i).attachments]
        assert left and not [a for a in left if a.get('server_id')], left
        res, _took = _run(env, 'sync', name, '--no-progress', *common)
        for a in left:
            assert ('removing its attachment %s to this host'
                    % a['attachment_id']) in res.stderr, res.stderr
        assert [cinder.volumes.get(i).status for i in ids] == [
            'available', 'available']
        _verified(env, name, common, 'the layers of the last sync')
    finally:
        _delete_volumes(cinder, ids)
