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

"""Guest inspection and ``convert --fix`` on real Linux guests.

The guests are built from Debian packages (tests/lib/guestbuild.py) and
booted under QEMU TCG on the bus the properties choose.  The libguestfs
appliance under TCG costs a minute or more per launch on a loaded machine,
so this module launches it three times in all: once for the three guests
together (one appliance, three drives), once for ``convert --fix``, once
for a fix that fails half-way.  The command-line plumbing (info, convert,
import, warnings) is tested with a stand-in interpreter that prints a
recorded probe output instead.
"""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from any2kvm_os.guest import inspect as gi
from any2kvm_os import properties
from tests.lib.cli import describe
from tests.lib.cli import run_any2kvm
from tests.lib import guestbuild
from tests.lib.tools import missing_tool

RECORDED = Path(__file__).parent.parent / 'unit' / 'data' / \
    'probe-linux-guests.json'
APPLIANCE_TIMEOUT = 1800


def sha256(path):
    h = hashlib.sha256()
    with open(str(path), 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def qemu_img(*args):
    subprocess.run(('qemu-img',) + tuple(str(a) for a in args), check=True,
                   capture_output=True, timeout=300)


@pytest.fixture(scope='module')
def guests(tmp_path_factory):
    missing = guestbuild.missing_tools()
    if missing:
        missing_tool('test guests need: %s' % ', '.join(missing))
    top = tmp_path_factory.mktemp('guests')
    built = {}
    for kind in guestbuild.KINDS:
        path = top / ('%s.raw' % kind)
        built[kind] = dict(guestbuild.build(path, kind), path=path)
    return built


@pytest.fixture(scope='module')
def libguestfs():
    settings = gi.Settings()
    r = subprocess.run([settings.python, '-c', 'import guestfs'],
                       capture_output=True, timeout=60)
    if r.returncode != 0 or not shutil.which('qemu-system-x86_64'):
        missing_tool('libguestfs with its Python binding for %s is needed '
                     '(bindep profile inspect: python3-guestfs, '
                     'libguestfs-tools)' % settings.python)
    return settings


@pytest.fixture(scope='module')
def inspected(guests, libguestfs):
    """ONE appliance launch for the three guests (three drives)."""
    order = list(guestbuild.KINDS)
    result = gi.inspect_files([guests[k]['path'] for k in order],
                              libguestfs)
    by_disk = {g['disk']: g for g in result['guests']}
    return {kind: by_disk.get(index) for index, kind in enumerate(order)}


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_inspection_of_the_three_guests(inspected):
    for kind, g in inspected.items():
        assert g is not None, kind
        assert g['type'] == 'linux'
        assert g['distro'] == 'debian'
        assert g['major_version'] == 12
        assert g['arch'] == 'x86_64'
        assert g['hostname'] == 'guest-%s' % kind
        assert g['firmware'] == 'bios'
        assert g['linux']['bootloader'] == 'grub2'
    mods = {k: properties.boot_kernel(g)['modules']
            for k, g in inspected.items()}
    assert mods['virtio']['virtio_scsi'] == 'initramfs'
    assert mods['novirtio']['virtio_scsi'] == 'module'
    assert mods['novirtio']['ata_piix'] == 'initramfs'
    names = {e['path']: e for e in inspected['xenpv']['linux']['disk_names']}
    assert names['/etc/fstab']['names'] == ['/dev/xvda1']
    assert names['/boot/grub/grub.cfg']['xen_consoles'] == ['console=hvc0']
    assert inspected['xenpv']['linux']['tools']['xe_guest_utilities'] == [
        'xe-guest-utilities']
    assert inspected['virtio']['linux']['tools']['qemu_guest_agent'] == [
        'qemu-guest-agent']


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_each_guest_boots_on_the_bus_its_properties_choose(guests,
                                                           inspected):
    chosen = {k: properties.guest_properties(g)[0]
              for k, g in inspected.items()}
    assert chosen['virtio']['hw_disk_bus'] == 'scsi'
    assert chosen['virtio']['hw_scsi_model'] == 'virtio-scsi'
    assert chosen['virtio']['hw_qemu_guest_agent'] == 'yes'
    assert chosen['novirtio']['hw_disk_bus'] == 'ide'
    assert 'hw_scsi_model' not in chosen['novirtio']
    for kind in ('virtio', 'novirtio'):
        bus = guestbuild.NOVA_BUS[chosen[kind]['hw_disk_bus']]
        line = guestbuild.boot(guests[kind]['path'], bus)
        assert line and 'ANY2KVM-BOOT-OK' in line, (kind, bus, line)
        assert guests[kind]['token'] in line
    # On virtio-scsi, the guest without virtio in its initramfs does not
    # come up: what the old default (scsi for every image) did to it.
    line = guestbuild.boot(guests['novirtio']['path'], 'virtio-scsi')
    assert line is None or 'ANY2KVM-BOOT-FAIL' in line, line
    # The Xen PV guest's /dev/xvda1 does not exist on KVM.
    line = guestbuild.boot(guests['xenpv']['path'], 'virtio-scsi')
    assert line is None or 'root=/dev/xvda1 not found' in line, line


def _debugfs_cat(disk, path, tmp_path):
    """A file of the guest's ext4 root, read with debugfs (outside
    libguestfs)."""
    part = tmp_path / 'part.img'
    with open(str(disk), 'rb') as src, open(str(part), 'wb') as dst:
        src.seek(guestbuild.START_SECTOR * 512)
        shutil.copyfileobj(src, dst)
    r = subprocess.run(['debugfs', '-R', 'cat %s' % path, str(part)],
                       capture_output=True, text=True, timeout=120)
    part.unlink()
    return r.stdout


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_convert_fix_makes_the_xen_guest_boot_on_virtio_scsi(
        guests, libguestfs, tmp_path):
    source = tmp_path / 'xen.qcow2'
    qemu_img('convert', '-O', 'qcow2', guests['xenpv']['path'], source)
    before = sha256(source)
    out = tmp_path / 'xen.raw'
    res = run_any2kvm('convert', source, out, '--fix', '--format', 'json',
                      timeout=APPLIANCE_TIMEOUT)
    assert res.returncode == 0, describe(res)
    report = json.loads(res.stdout)
    uuid = 'UUID=' + guests['xenpv']['fsuuid']
    (fix,) = report['fixed']
    assert {f['path']: f['changes'] for f in fix['files']} == {
        '/etc/fstab': [{'from': '/dev/xvda1', 'to': uuid}],
        '/boot/grub/grub.cfg': [{'from': '/dev/xvda1', 'to': uuid},
                                {'from': 'console=hvc0', 'to': ''}]}
    assert report['properties']['hw_disk_bus'] == 'scsi'
    assert report['guest']['disk_names']['/etc/fstab'] == [uuid]
    # The source is untouched; the copy has the new names.
    assert sha256(source) == before
    assert '%s / ext4' % uuid in _debugfs_cat(out, '/etc/fstab', tmp_path)
    grub = _debugfs_cat(out, '/boot/grub/grub.cfg', tmp_path)
    assert 'root=%s ro console=ttyS0' % uuid in grub
    assert 'hvc0' not in grub
    line = guestbuild.boot(out, 'virtio-scsi')
    assert line and 'ANY2KVM-BOOT-OK' in line, line
    assert 'fstab=%s' % uuid in line


@pytest.mark.timeout(APPLIANCE_TIMEOUT)
def test_a_fix_failing_half_way_leaves_the_copy_as_converted(
        guests, libguestfs, tmp_path, monkeypatch):
    source = tmp_path / 'xen.qcow2'
    qemu_img('convert', '-O', 'qcow2', guests['xenpv']['path'], source)
    out = tmp_path / 'xen.raw'
    monkeypatch.setenv('ANY2KVM_FIX_FAIL_AFTER', '1')
    res = run_any2kvm('convert', source, out, '--fix',
                      timeout=APPLIANCE_TIMEOUT)
    assert res.returncode == 1, describe(res)
    err = res.stderr.strip()
    assert err.startswith('any2kvm: error: %s: guest fix: fix stopped after '
                          '1 file(s)' % out), err
    assert 'it had changed: /etc/fstab' in err
    assert len(err.splitlines()) == 1, err
    # The converted copy is byte for byte the source: nothing of the
    # half-made fix reached it.
    assert sha256(out) == sha256(guests['xenpv']['path'])


# -- the command lines, with a recorded probe output -----------------------

@pytest.fixture
def recorded_probe(tmp_path):
    """A config file whose guestfs_python prints the recorded output of
    the three guests (the virtio guest, on disk 0, is chosen)."""
    fake = tmp_path / 'fakepython'
    fake.write_text('#!/bin/sh\ncat %s\n' % RECORDED)
    fake.chmod(0o755)
    conf = tmp_path / 'a.conf'
    conf.write_text('[any2kvm]\nguestfs_python = %s\n' % fake)
    return conf


@pytest.fixture
def small_disk(tmp_path):
    raw = tmp_path / 'small.raw'
    with open(str(raw), 'wb') as f:
        f.truncate(4 << 20)
    disk = tmp_path / 'small.qcow2'
    qemu_img('convert', '-O', 'qcow2', raw, disk)
    return disk


def test_info_inspect_json_has_a_properties_object(recorded_probe,
                                                   small_disk):
    res = run_any2kvm('info', small_disk, '--inspect', '--format', 'json',
                      '--config-file', recorded_probe)
    assert res.returncode == 0, describe(res)
    info = json.loads(res.stdout)
    assert info['format'] == 'qcow2'
    assert info['guest']['hostname'] == 'guest-virtio'
    assert info['properties']['hw_disk_bus'] == 'scsi'
    assert info['properties']['hw_scsi_model'] == 'virtio-scsi'
    assert 'virtio_scsi is in the initramfs' in \
        info['reasons']['hw_disk_bus']
    res = run_any2kvm('info', small_disk, '--inspect', '--config-file',
                      recorded_probe)
    assert res.returncode == 0, describe(res)
    assert 'property:     hw_disk_bus=scsi (kernel 6.1.0' in res.stdout
    # Without --inspect, info does not look inside.
    res = run_any2kvm('info', small_disk, '--format', 'json',
                      '--config-file', recorded_probe)
    assert 'guest' not in json.loads(res.stdout)


def test_convert_inspects_by_default(recorded_probe, small_disk, tmp_path,
                                     monkeypatch):
    monkeypatch.setenv(gi.ENV, '1')
    res = run_any2kvm('convert', small_disk, tmp_path / 'a.raw',
                      '--config-file', recorded_probe)
    assert res.returncode == 0, describe(res)
    assert 'property:     hw_vif_model=virtio' in res.stdout
    res = run_any2kvm('convert', small_disk, tmp_path / 'b.raw',
                      '--no-inspect', '--config-file', recorded_probe)
    assert res.returncode == 0, describe(res)
    assert res.stdout == ''
    monkeypatch.setenv(gi.ENV, '0')
    res = run_any2kvm('convert', small_disk, tmp_path / 'c.raw',
                      '--config-file', recorded_probe)
    assert res.stdout == ''


def test_import_to_files_reports_the_guest(recorded_probe, small_disk,
                                           tmp_path):
    res = run_any2kvm('import', small_disk, '--name', 'vm', '--target',
                      'file', '--output-dir', tmp_path, '--inspect',
                      '--format', 'json', '--config-file', recorded_probe)
    assert res.returncode == 0, describe(res)
    summary = json.loads(res.stdout)
    assert summary['path'] == str(tmp_path / 'vm.raw')
    assert summary['properties']['os_distro'] == 'debian'
    assert summary['guest']['kernel'].endswith('-cloud-amd64')


def test_fix_refusals_before_the_cloud_is_asked(small_disk):
    """A cloud target takes --fix (the copy before the upload, or the
    volume with a snapshot); what cannot work is refused before any
    cloud or disk is touched."""
    env_free = ('--os-cloud', 'nowhere')
    res = run_any2kvm('import', small_disk, '--name', 'vm', '--fix',
                      '--no-inspect', *env_free)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        'any2kvm: error: --fix needs inspection: drop --no-inspect')
    res = run_any2kvm('import', small_disk, '--name', 'vm', '--target',
                      'cinder', '--keep-fix-snapshot', *env_free)
    assert res.returncode == 1
    assert res.stderr.strip() == (
        'any2kvm: error: --keep-fix-snapshot goes with --fix')


def test_without_libguestfs_a_warning_or_with_inspect_an_error(
        small_disk, tmp_path, monkeypatch):
    conf = tmp_path / 'none.conf'
    conf.write_text('[any2kvm]\nguestfs_python = %s\n' % (
        tmp_path / 'no' / 'python3'))
    monkeypatch.setenv(gi.ENV, '1')
    res = run_any2kvm('convert', small_disk, tmp_path / 'a.raw',
                      '--config-file', conf)
    assert res.returncode == 0, describe(res)
    assert 'guest inspection: %s not found ([any2kvm] guestfs_python); ' \
        'install libguestfs-tools and python3-guestfs' % (
            tmp_path / 'no' / 'python3') in res.stderr
    assert 'WARNING' in res.stderr
    res = run_any2kvm('convert', small_disk, tmp_path / 'b.raw',
                      '--inspect', '--config-file', conf)
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert 'Traceback' not in res.stderr
    # The conversion itself is kept.
    assert (tmp_path / 'b.raw').exists()
