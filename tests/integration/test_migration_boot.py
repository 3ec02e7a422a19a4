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

"""Guest 1: a warm-migrated XenServer VM boots in the loopback cloud's
real Nova (libvirt, TCG).

The boot guest of :mod:`tests.lib.guestbuild` is the disk of a BIOS VM on
the XenServer stand-in (its VHD written by FATtools, as the stand-in's SR
keeps them; ``qemu-img convert -f vpc`` reads the guest back), reached
through the real sshd (tests/lib/xenserver/bed.py).  ``any2kvm migration
create --target cinder``, a sync, the guest's token file changed in place
and some MiB written past its partition, a second sync, the token changed
once more (only the leaf read at cutover, with the VM down, has it);
``cutover --create-server --flavor auto --no-network --boot-check`` boots
it: the console shows that last token from ``root=/dev/sda1`` (the
migrated volume on virtio-scsi).  ``rollback`` deletes the server, keeps
the volume and starts the VM again.  One TCG boot (about a minute on a
loaded machine).  The figures (downtime and its phases) are printed:
``pytest -s``.
"""

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from any2kvm_os.targets import server as server_mod
from tests.lib import guestbuild
from tests.lib import cli
from tests.lib.cloudapi import server_clients
from tests.lib.cloudapi import servers_named
from tests.lib.cloudapi import unique
from tests.lib.cloudapi import wait_for
from tests.lib import imagegen as ig
from tests.lib.tools import missing_tool
from tests.lib.xenserver import bed as xbed
from tests.lib.xenserver import host as xhost
from tests.lib.xenserver import state as xstate

MiB = 1 << 20
GUEST_MIB = 64              # the boot guest's disk image (its partition
DISK = 96 * MiB             # ends there); the VDI is larger
CHUNK = 64 * 1024
CLI_TIMEOUT = 1500          # the cutover includes a TCG boot
BOOT_TIMEOUT = 900
TOKEN_FILE = 'etc/any2kvm-id'


def _extents(data):
    """(offset, bytes) runs of the non-zero CHUNKs of ``data``."""
    runs = []
    start = None
    zero = bytes(CHUNK)
    for off in range(0, len(data), CHUNK):
        empty = data[off:off + CHUNK] == zero[:len(data[off:off + CHUNK])]
        if not empty and start is None:
            start = off
        if empty and start is not None:
            runs.append((start, data[start:off]))
            start = None
    if start is not None:
        runs.append((start, data[start:]))
    return runs


def _builder(raw):
    """A stand-in host with one running BIOS VM whose only disk holds
    ``raw`` (for :class:`tests.lib.xenserver.bed.Bed`)."""
    def build(root):
        b = xhost.HostBuilder(root)
        local = b.add_sr('Local storage', 'ext')
        vm = b.add_vm('boot-guest', disks=((DISK, 'system'),), sr=local,
                      firmware='bios', vcpus=1, memory=512 * MiB,
                      disk_writes={0: _extents(raw)})
        b.save()
        (vdi,) = b.models
        return b.root, {'vm': vm, 'vdi': vdi, 'models': b.models}
    return build


@pytest.fixture(scope='module')
def guest(tmp_path_factory):
    missing = guestbuild.missing_tools()
    if missing:
        missing_tool('boot guest: missing %s' % ', '.join(missing))
    path = tmp_path_factory.mktemp('guest1') / 'guest.raw'
    token = guestbuild.nova_guest(path, size_mib=GUEST_MIB)
    raw = path.read_bytes()
    # The token file's one data block: changed in place later, as the
    # guest would rewrite it (same length, no checksum on ext4 data).
    where = [m.start() for m in re.finditer(re.escape(token.encode()), raw)]
    assert len(where) == 1, where
    return path, raw, token, where[0]


@pytest.fixture(scope='module')
def xen_guest(tmp_path_factory):
    """The boot guest named as a Xen PV guest is (/dev/xvda1, hvc0):
    (raw bytes, token)."""
    missing = guestbuild.missing_tools()
    if missing:
        missing_tool('boot guest: missing %s' % ', '.join(missing))
    path = tmp_path_factory.mktemp('guest1x') / 'guest.raw'
    token = guestbuild.nova_guest(path, size_mib=GUEST_MIB, xen=True)
    return path.read_bytes(), token


@pytest.fixture
def nova_clients(cloud, keystone_session):
    return server_clients(cloud, keystone_session)


@pytest.fixture
def bed(cloud, fattools, qemu_img, sshd_factory, guest, tmp_path):
    _path, raw, _token, _at = guest
    return _bed(cloud, qemu_img, sshd_factory, raw, tmp_path)


@pytest.fixture
def xen_bed(cloud, fattools, qemu_img, sshd_factory, xen_guest, tmp_path):
    return _bed(cloud, qemu_img, sshd_factory, xen_guest[0], tmp_path)


def _bed(cloud, qemu_img, sshd_factory, raw, tmp_path):
    if os.geteuid() != 0:
        pytest.skip('os-brick attaches volumes as root only')
    mnt = Path(cloud.openrc).parent / 'lib' / 'cinder' / 'mnt'
    if not mnt.is_dir():
        pytest.skip('not a tools/loopback-cloud cloud')
    b = xbed.Bed(sshd_factory, tmp_path / 'bed', build=_builder(raw))
    # An independent reader of the stand-in's VHD: qemu's vpc driver.
    vdi = xhost.vdi_path(b.root, b.facts['vdi'])
    back = tmp_path / 'readback.raw'
    r = subprocess.run([qemu_img, 'convert', '-f', 'vpc', '-O', 'raw', vdi,
                        str(back)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    got = back.read_bytes()
    assert len(got) == DISK
    assert got[:len(raw)] == raw and got[len(raw):] == bytes(DISK - len(raw))
    back.unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith('OS_')}
    env.update(cloud.env)
    env['LC_ALL'] = 'C.UTF-8'
    common = b.ssh_args + ['--state-db',
                           'sqlite:///%s' % (tmp_path / 'state.db')]
    return b, env, common, str(mnt)


def _run(env, *args, timeout=CLI_TIMEOUT):
    t0 = time.monotonic()
    res = subprocess.run(cli.cli_command() + ['migration'] +
                         [str(a) for a in args], capture_output=True,
                         text=True, env=env, timeout=timeout, cwd='/')
    assert res.returncode == 0, (res.stdout, res.stderr)
    return res, time.monotonic() - t0


def _new_token():
    return uuid.uuid4().hex


def _power_state(root, vm):
    return xstate.load(str(root))['vm'][vm]['power-state']


def test_warm_migrated_vm_boots_the_last_token(bed, guest, nova_clients):
    b, env, common, mnt = bed
    _path, _raw, token0, at = guest
    nova, cinder = nova_clients.nova, nova_clients.cinder
    name = unique('guest1')
    state_db = common[-2:]
    res, took = _run(env, 'create', name, b.location('boot-guest'),
                     '--target', 'cinder', '--brick-mount-point-base', mnt,
                     *common)
    print('\nguest1 create: %.1f s: %s' % (took, res.stdout.strip()))
    m = json.loads(_run(env, 'show', name, '--format', 'json',
                        *state_db)[0].stdout)
    vol_ids = [d['target_ref'] for d in m['disks']]
    server_id = None
    try:
        assert len(vol_ids) == 1
        (w,) = b.writers(m)
        res, took = _run(env, 'sync', name, '--no-progress', *common)
        print('guest1 sync 1: %.1f s: %s' % (took, res.stdout.strip()))

        token1 = _new_token()
        w.write(at, token1.encode())
        # Past the partition (it ends at GUEST_MIB): data the boot never
        # reads, the sync copies.
        w.write((GUEST_MIB + 2) * MiB, ig.pattern(51, 3 * MiB))
        res, took = _run(env, 'sync', name, '--no-progress', *common)
        print('guest1 sync 2: %.1f s: %s' % (took, res.stdout.strip()))
        assert 'rewritten' not in res.stdout

        # Only in the leaf the cutover reads with the VM down.
        token2 = _new_token()
        w.write(at, token2.encode())
        assert token2 not in (token0, token1)
        res, took = _run(env, 'cutover', name, '--create-server',
                         '--flavor', 'auto', '--no-network',
                         '--boot-check', guestbuild.ready_line(token2),
                         '--boot-timeout', BOOT_TIMEOUT, '--timeout', 300,
                         '--format', 'json', '--no-progress', *common)
        r = json.loads(res.stdout)
        server_id = r['details']['server_id']
        print('guest1 cutover --create-server: %.1f s, downtime %.2f s '
              '(%s); boot verified after %.1f s; server %s, flavor %s'
              % (took, r['downtime'], ', '.join(
                  '%s %.2f s' % kv for kv in sorted(r['phases'].items())),
                 r['details']['boot_seconds'], server_id,
                 r['details']['flavor']))
        assert r['details']['flavor'] == 'm1.small'
        assert r['details']['port_ids'] == []
        assert r['downtime'] >= r['phases']['server'] > 0
        assert nova.servers.get(server_id).status == 'ACTIVE'
        assert [v.volumeId for v in nova.volumes.get_server_volumes(
            server_id)] == vol_ids
        console = nova.servers.get_console_output(server_id)
        ready = [line for line in console.splitlines()
                 if guestbuild.READY in line]
        assert ready, console[-2000:]
        for line in ready:
            assert ' root=/dev/sda1 id=%s boot=' % token2 in line, line
        assert token0 not in console and token1 not in console
        assert _power_state(b.root, b.facts['vm']) == 'halted'

        m = json.loads(_run(env, 'show', name, '--format', 'json',
                            *state_db)[0].stdout)
        assert m['status'] == 'done'
        (c,) = m['cutovers']
        assert c['downtime'] is not None and c['downtime'] > 0
        assert c['details']['server_id'] == server_id
        print('guest1 recorded: downtime %.2f s, server %s'
              % (c['downtime'], c['details']['server_id']))

        res, took = _run(env, 'rollback', name, *common)
        print('guest1 rollback: %.1f s: %s' % (took, res.stdout.strip()))
        assert server_id in res.stdout
        assert servers_named(nova, name) == []
        wait_for(lambda: cinder.volumes.get(vol_ids[0]), ('available',),
                 timeout=300)
        server_id = None
        assert _power_state(b.root, b.facts['vm']) == 'running'
        m = json.loads(_run(env, 'show', name, '--format', 'json',
                            *state_db)[0].stdout)
        assert m['status'] == 'synced'
    finally:
        _clean_up(nova_clients, server_id, vol_ids, wait=False)


def test_a_xen_named_vm_boots_after_cutover_fix(xen_bed, xen_guest,
                                                nova_clients):
    """A guest whose fstab and kernel command line name /dev/xvda1 and
    hvc0 (a Xen PV guest's names) does not boot on KVM as it is:
    ``cutover --fix`` inspects the guest on the volumes once the VM is
    down, renames them, and the server it creates boots."""
    b, env, common, mnt = xen_bed
    _raw, token = xen_guest
    nova = nova_clients.nova
    name = unique('guest1x')
    state_db = common[-2:]
    _run(env, 'create', name, b.location('boot-guest'), '--target',
         'cinder', '--brick-mount-point-base', mnt, *common)
    m = json.loads(_run(env, 'show', name, '--format', 'json',
                        *state_db)[0].stdout)
    vol_ids = [d['target_ref'] for d in m['disks']]
    server_id = None
    try:
        _run(env, 'sync', name, '--no-progress', '--no-inspect', *common)
        res, took = _run(env, 'cutover', name, '--fix', '--create-server',
                         '--flavor', 'auto', '--no-network',
                         '--boot-check', guestbuild.ready_line(token),
                         '--boot-timeout', BOOT_TIMEOUT, '--timeout', 300,
                         '--format', 'json', '--no-progress', *common)
        r = json.loads(res.stdout)
        server_id = r['details']['server_id']
        print('\nguest1x cutover --fix --create-server: %.1f s, downtime '
              '%.2f s (%s); fixed %s' % (
                  took, r['downtime'], ', '.join(
                      '%s %.2f s' % kv for kv in sorted(r['phases'].items())),
                  r['details'].get('fixed')))
        assert sorted(r['details']['fixed'].split(', ')) == [
            '/boot/grub/grub.cfg', '/etc/fstab']
        assert nova.servers.get(server_id).status == 'ACTIVE'
        console = nova.servers.get_console_output(server_id)
        ready = [line for line in console.splitlines()
                 if guestbuild.READY in line]
        assert ready, console[-2000:]
        assert all(' id=%s boot=' % token in line for line in ready), ready
        assert 'ANY2KVM-BOOT-FAIL' not in console
    finally:
        _clean_up(nova_clients, server_id, vol_ids)


def _clean_up(clients, server_id, vol_ids, wait=True):
    """Delete the server (when one is left) and the volumes; ``wait``:
    for each volume to be detached first."""
    if server_id is not None:
        try:
            server_mod.rollback(clients, server_id=server_id,
                                volumes=vol_ids)
        except Exception as e:
            print('cleanup of server %s: %s' % (server_id, e))
    for vol_id in vol_ids:
        try:
            if wait:
                wait_for(lambda: clients.cinder.volumes.get(vol_id),
                         ('available', 'error'), timeout=300)
            clients.cinder.volumes.delete(vol_id)
        except Exception as e:
            print('could not delete %s: %s' % (vol_id, e))
