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

"""Guests in warm migrations: inspected at sync, fixed at cutover.

The XenServer test bed (the real OpenSSH server on 127.0.0.1, the ``xe``
stand-in, VHD files) and ``any2kvm migration`` as a user runs it.  One
libguestfs appliance in all (60-100 s under TCG): ``cutover --fix`` of a
Xen PV guest whose fstab and GRUB name ``/dev/xvda1``, then booted under
QEMU TCG on the bus its properties chose.  What a sync records and a
cutover shows is checked with a stand-in interpreter printing a recorded
probe output (tests/unit/data/probe-linux-guests.json).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from any2kvm_os.guest import inspect as gi
from tests.lib import cli
from tests.lib import guestbuild
from tests.lib.tools import missing_tool
from tests.lib.xenserver import bed as xbed

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / 'tests' / 'unit' / 'data' / 'probe-linux-guests.json'
MiB = 1 << 20
APPLIANCE_TIMEOUT = 1800


def _env(inspect='0'):
    env = dict(os.environ)
    env['PYTHONPATH'] = str(REPO)
    env['LC_ALL'] = 'C.UTF-8'
    env[gi.ENV] = inspect
    return env


def mig(*args, common=(), ok=True, env=None, timeout=300):
    res = subprocess.run(cli.cli_command() + ['migration'] +
                         [str(a) for a in list(args) + list(common)],
                         capture_output=True, text=True,
                         env=env or _env(), cwd=str(REPO), timeout=timeout)
    if ok:
        assert res.returncode == 0, (res.stdout, res.stderr)
    return res


def _conf_with(conf, extra):
    """The bed's configuration file with ``extra`` lines added to
    [any2kvm]."""
    path = Path(str(conf) + '.extra')
    path.write_text(Path(conf).read_text() + extra)
    return path


# -- what a sync records, with a recorded probe output ------------------------

def test_sync_records_the_guest_and_cutover_sets_its_properties(
        sshd_factory, tmp_path):
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    fake = tmp_path / 'fakepython'
    fake.write_text('#!/bin/sh\ncat %s\n' % RECORDED)
    fake.chmod(0o755)
    conf = _conf_with(b.conf, 'guestfs_python = %s\n' % fake)
    out = tmp_path / 'out'
    out.mkdir()
    state = ['--state-db', 'sqlite:///%s' % (tmp_path / 'state.db')]
    common = b.ssh_args[:-1] + [str(conf)] + state
    mig('create', 'web', b.location(), '--output-dir', out, common=common)
    r = mig('sync', 'web', common=common, env=_env('1'))
    # The virtio guest of the recording (disk 0) is the one chosen.
    assert '  guest: linux debian 12.8 x86_64, hw_disk_bus=scsi ' \
        '(virtio-scsi)' in r.stdout, r.stdout
    assert 'bus: kernel 6.1.0' in r.stdout, r.stdout
    m = json.loads(mig('show', 'web', '--format', 'json',
                       common=state).stdout)
    assert m['guest']['inspected_by'] == 'sync'
    assert m['guest']['guest']['hostname'] == 'guest-virtio'
    assert m['guest']['properties']['hw_vif_model'] == 'virtio'
    text = mig('show', 'web', common=state).stdout
    assert 'guest:    linux debian 12.8 x86_64, hw_disk_bus=scsi ' \
        '(virtio-scsi) (sync)' in text, text
    # openstack any2kvm shows it too, in one cell.
    env = {k: v for k, v in _env().items() if not k.startswith('OS_')}
    env['HOME'] = '/nonexistent'
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable),
                                     'openstack'), 'any2kvm', 'migration',
                        'show', 'web'] + state, capture_output=True,
                       text=True, env=env, cwd=str(REPO), timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'linux debian 12.8 x86_64, hw_disk_bus=scsi (virtio-scsi) ' \
        '(sync)' in r.stdout, r.stdout
    # --no-inspect: the sync leaves the record alone.
    r = mig('sync', 'web', '--no-inspect', common=common, env=_env('1'))
    assert 'guest:' not in r.stdout
    # The cutover needs no appliance: the recorded guest decides.
    r = mig('cutover', 'web', '--timeout', '60', '--format', 'json',
            common=common)
    done = json.loads(r.stdout)
    assert done['details']['hw_disk_bus'] == 'scsi'
    assert done['details']['guest_inspected_by'] == 'sync'
    assert 'fix' in done['phases']
    # --fix refuses --no-inspect before anything is done.
    r = mig('cutover', 'web', '--fix', '--no-inspect', common=common,
            ok=False)
    assert r.returncode != 0
    assert '--fix needs inspection' in r.stderr


# -- cutover --fix of a Xen PV guest, booted after ----------------------------

@pytest.fixture
def libguestfs():
    settings = gi.Settings()
    r = subprocess.run([settings.python, '-c', 'import guestfs'],
                       capture_output=True, timeout=60)
    if r.returncode != 0 or not subprocess.run(
            ['sh', '-c', 'command -v qemu-system-x86_64'],
            capture_output=True).returncode == 0:
        missing_tool('libguestfs with its Python binding for %s is needed '
                     '(bindep profile inspect)' % settings.python)
    return settings


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_cutover_fix_makes_the_xen_pv_guest_boot(sshd_factory, tmp_path,
                                                 libguestfs):
    missing = guestbuild.missing_tools()
    if missing:
        missing_tool('test guests need: %s' % ', '.join(missing))
    guest = tmp_path / 'xen.raw'
    built = guestbuild.build(guest, 'xenpv')
    b = xbed.Bed(sshd_factory, tmp_path / 'bed',
                 build=xbed.guest_host(guest))
    out = tmp_path / 'out'
    out.mkdir()
    common = b.ssh_args + ['--state-db',
                           'sqlite:///%s' % (tmp_path / 'state.db')]
    mig('create', 'xen', b.location('xen-guest'), '--output-dir', out,
        common=common)
    mig('sync', 'xen', common=common)
    r = mig('cutover', 'xen', '--timeout', '60', '--fix', '--format',
            'json', common=common, timeout=APPLIANCE_TIMEOUT)
    done = json.loads(r.stdout)
    print(json.dumps(done['phases']), done['details'])
    uuid = 'UUID=' + built['fsuuid']
    assert sorted(done['details']['fixed'].split(', ')) == [
        '/boot/grub/grub.cfg', '/etc/fstab']
    assert done['details']['hw_disk_bus'] == 'scsi'
    assert done['details']['guest_inspected_by'] == 'cutover --fix'
    # The fix is a phase of the downtime, which holds it.
    assert done['phases']['fix'] > 0
    assert done['downtime'] >= done['phases']['fix']
    m = json.loads(mig('show', 'xen', '--format', 'json',
                       common=common[-2:]).stdout)
    assert m['guest']['guest']['disk_names']['/etc/fstab'] == [uuid]
    (target,) = [d['target_ref'] for d in m['disks']]
    line = guestbuild.boot(target, guestbuild.NOVA_BUS[
        m['guest']['properties']['hw_disk_bus']])
    assert line and 'ANY2KVM-BOOT-OK' in line, line
    assert 'fstab=%s' % uuid in line
