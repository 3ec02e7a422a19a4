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

"""The hand-off to virt-v2v-in-place (any2kvm_os.guest.v2v): the decision,
the command line, the messages, and the run itself against a stand-in
program on PATH (the real one runs in
tests/integration/test_guest_v2v.py, on a Linux guest; there is no Windows
image here, so the Windows hand-off is tested only here)."""

import contextlib
import copy
import hashlib
import json
import shutil
import types
from pathlib import Path

import defusedxml.ElementTree as ET
import pytest

from any2kvm_os import exception
from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import v2v

DATA = Path(__file__).parent / 'data'


def guest(hostname):
    for g in json.loads((DATA / 'probe-linux-guests.json').read_text())[
            'guests']:
        if g['hostname'] == hostname:
            return g
    raise AssertionError(hostname)


def windows():
    return json.loads((DATA / 'probe-windows-handmade.json').read_text())


def _win_guest(services):
    g = copy.deepcopy(windows()['guests'][0])
    win = g['windows']
    cset = win['control_sets'][win['current_control_set']]
    cset['services'] = services
    return g


@pytest.fixture
def tools(monkeypatch, tmp_path):
    """A PATH holding a stand-in virt-v2v-in-place and nbdkit; the script
    the stand-in runs is ``tools.body`` (shell)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()

    class Tools(object):
        log = tmp_path / 'v2v.log'

        def script(self, body):
            script = bin_dir / v2v.PROGRAM
            script.write_text('#!/bin/sh\necho "$@" >> %s\n'
                              'echo "LIBGUESTFS_BACKEND=$LIBGUESTFS_BACKEND '
                              '$LIBGUESTFS_BACKEND_SETTINGS" >> %s\n%s\n'
                              % (self.log, self.log, body))
            script.chmod(0o755)

        removed = set()

        def remove(self, name):
            (bin_dir / name).unlink()
            self.removed.add(name)

    t = Tools()
    real_which = shutil.which
    monkeypatch.setattr(v2v.shutil, 'which', lambda name: None if name in
                        t.removed else real_which(name))
    t.script("exit 0")
    (bin_dir / 'nbdkit').write_text('#!/bin/sh\nexit 0\n')
    (bin_dir / 'nbdkit').chmod(0o755)
    monkeypatch.setenv('PATH', '%s:/usr/bin:/bin' % bin_dir)
    monkeypatch.delenv('VIRTIO_WIN', raising=False)
    monkeypatch.setattr(v2v, 'VIRTIO_WIN_DIR', str(tmp_path / 'no-vw'))
    # virt-v2v's Windows service wrapper: there (a test takes it away).
    t.virt_tools = tmp_path / 'virt-tools-here'
    t.virt_tools.mkdir()
    (t.virt_tools / 'rhsrvany.exe').write_bytes(b'MZ')
    monkeypatch.setenv('VIRT_TOOLS_DATA_DIR', str(t.virt_tools))
    return t


# -- the decision -------------------------------------------------------------

def test_needed_for_a_linux_initramfs_without_virtio():
    assert v2v.needed(guest('guest-novirtio')) == 'initramfs'
    assert v2v.needed(guest('guest-virtio')) is None
    assert v2v.needed(None) is None


def test_not_needed_when_the_kernel_has_no_virtio_module():
    g = guest('guest-novirtio')
    mods = g['linux']['kernels'][0]['modules']
    mods['virtio_scsi'] = mods['virtio_blk'] = None
    assert v2v.needed(g) is None
    g = guest('guest-novirtio')
    g['linux']['kernels'][0]['initramfs_error'] = 'cannot read'
    assert v2v.needed(g) is None


def test_needed_for_windows_without_a_virtio_storage_service():
    assert v2v.needed(_win_guest({'storahci': {'start': 0}})) == 'drivers'
    assert v2v.needed(_win_guest({'vioscsi': {'start': 0}})) is None
    assert v2v.needed(_win_guest({'viostor': {'start': 0}})) is None


def test_missing(tools, monkeypatch, tmp_path):
    assert v2v.missing('initramfs') == []
    assert v2v.missing('drivers') == [
        'no virtio-win drivers (VIRTIO_WIN or %s)' % v2v.VIRTIO_WIN_DIR]
    monkeypatch.setenv('VIRTIO_WIN', str(tmp_path))
    assert v2v.missing('drivers') == []
    (tools.virt_tools / 'rhsrvany.exe').rename(tools.virt_tools /
                                               'pvvxsvc.exe')
    assert v2v.missing('drivers') == []
    (tools.virt_tools / 'pvvxsvc.exe').unlink()
    assert v2v.missing('drivers') == [
        'no rhsrvany.exe or pvvxsvc.exe in %s (VIRT_TOOLS_DATA_DIR)'
        % tools.virt_tools]
    tools.remove('nbdkit')
    assert v2v.missing('initramfs') == ['nbdkit not found']
    tools.remove(v2v.PROGRAM)
    assert v2v.missing('initramfs') == ['virt-v2v-in-place not found',
                                        'nbdkit not found']


def test_skipped_messages():
    assert v2v.skipped_message('initramfs', ['virt-v2v-in-place not found'],
                               'sata') == (
        'virt-v2v-in-place not found: install virt-v2v and nbdkit to '
        'rebuild the initramfs with virtio; chose hw_disk_bus=sata')
    assert v2v.skipped_message(
        'drivers', ['no virtio-win drivers (VIRTIO_WIN or /x)'], 'ide') == (
        'no virtio-win drivers (VIRTIO_WIN or /x): install virtio-win (or '
        'set VIRTIO_WIN) to inject the virtio drivers; chose '
        'hw_disk_bus=ide')
    assert v2v.skipped_message('initramfs', [], 'ide', disabled=True) == (
        'virt-v2v-in-place not run ([any2kvm] virt_v2v = false): the guest '
        'keeps a boot without virtio; chose hw_disk_bus=ide')


# -- the command line --------------------------------------------------------

def test_command_one_disk():
    assert v2v.command(['/s/disk0.qcow2'], 'qcow2', '/dev/sda1') == [
        'virt-v2v-in-place', '--machine-readable', '-q', '--root',
        '/dev/sda1', '-i', 'disk', '-if', 'qcow2', '/s/disk0.qcow2']


def test_command_several_disks_reads_libvirt_xml():
    assert v2v.command(['a', 'b'], 'raw', '/dev/sdb1')[-2:] == [
        '-i', 'libvirtxml']
    xml = v2v.domain_xml(['/s/a "x".raw', '/s/b.raw'], 'raw')
    root = ET.fromstring(xml)
    disks = root.findall('./devices/disk')
    assert [d.find('source').get('file') for d in disks] == [
        '/s/a "x".raw', '/s/b.raw']
    assert [d.find('target').get('dev') for d in disks] == ['hda', 'hdb']
    assert {d.find('driver').get('type') for d in disks} == {'raw'}


def test_environment_is_the_inspections():
    env = v2v.environment(gi.Settings(backend='direct',
                                      backend_settings='force_tcg'))
    assert env['LIBGUESTFS_BACKEND'] == 'direct'
    assert env['LIBGUESTFS_BACKEND_SETTINGS'] == 'force_tcg'


def test_last_line():
    assert v2v.last_line('[   0.0] Setting up\n12/100\nvirt-v2v-in-place: '
                         'error: no space\n\nmore\n') == \
        'virt-v2v-in-place: error: no space'
    assert v2v.last_line('a\nb   c\n50/100\n') == 'b c'
    assert v2v.last_line('') == 'no output'


def test_last_line_of_machine_readable_output():
    text = ('{ "message": "Opening the source", "timestamp": "t", '
            '"type": "message" }\n'
            '{ "message": "libguestfs error: update-initramfs:\\n  failed",'
            ' "timestamp": "t", "type": "error" }\n'
            '{ "message": "rerun with -v", "type": "message" }\n')
    assert v2v.last_line(text) == \
        'error: libguestfs error: update-initramfs: failed'
    assert v2v.messages(text)[0] == ('message', 'Opening the source')


# -- the run ------------------------------------------------------------------

def test_run_passes_the_disk_and_the_appliance_settings(tools, tmp_path):
    disk = tmp_path / 'd.qcow2'
    disk.write_bytes(b'')
    done = v2v.run(gi.Settings(), [str(disk)], 'qcow2', 'vm.raw',
                   root='/dev/sda1')
    assert done['ran'] is True
    lines = tools.log.read_text().splitlines()
    assert lines[0] == '--machine-readable -q --root /dev/sda1 -i disk ' \
        '-if qcow2 %s' % disk
    assert lines[1] == 'LIBGUESTFS_BACKEND=direct force_tcg'


def test_run_several_disks_writes_the_xml(tools, tmp_path):
    tools.script('cp "$5" %s/seen.xml' % tmp_path)
    v2v.run(gi.Settings(), ['/s/a.raw', '/s/b.raw'], 'raw', 'vm')
    assert tools.log.read_text().split('\n')[0].startswith(
        '--machine-readable -q -i libvirtxml /')
    assert b'/s/b.raw' in (tmp_path / 'seen.xml').read_bytes()


def test_run_failure_is_one_line_with_what_virt_v2v_said(tools):
    tools.script('echo "[   0.0] Setting up the source"; '
                 'echo "virt-v2v-in-place: error: libguestfs error: '
                 'update-initramfs failed" >&2; echo "  rerun with -v"; '
                 'exit 1')
    with pytest.raises(exception.GuestFixError) as e:
        v2v.run(gi.Settings(), ['/s/a.qcow2'], 'qcow2', 'vm-disk0.raw')
    msg = str(e.value)
    assert 'vm-disk0.raw' in msg
    assert 'virt-v2v-in-place failed (exit 1): virt-v2v-in-place: error: ' \
        'libguestfs error: update-initramfs failed' in msg
    assert '\n' not in msg


def test_run_is_bounded(tools):
    tools.script('sleep 60 & sleep 60')
    with pytest.raises(exception.GuestFixError) as e:
        v2v.run(gi.Settings(v2v_timeout=1), ['/s/a.qcow2'], 'qcow2', 'vm')
    assert 'no answer within 1 s ([any2kvm] virt_v2v_timeout)' in \
        str(e.value)


# -- in the fix ---------------------------------------------------------------

def _probes(monkeypatch, before, after):
    calls = []

    def probe(settings, paths, fmt='raw', fix=False, name=None, slots=None):
        calls.append((list(paths), fmt, fix))
        return copy.deepcopy(before if len(calls) == 1 else after)

    monkeypatch.setattr(gi, 'run_probe', probe)
    return calls


def _result(g):
    return {'guests': [g], 'fixed': [{'root': g['root'], 'disk': 0,
                                      'bus': 'scsi', 'files': []}]}


def test_a_hand_off_ending_on_virtio_blk_fixes_the_names_again(
        tools, monkeypatch):
    """virt-v2v added virtio_blk to a kernel without virtio_scsi (RHEL
    5's): the bus set is virtio, whose disks are vdX, where the first fix
    wrote sdX (device.map, the LVM filter, names without a UUID): the fix
    runs again for it, and both fixes are reported."""
    after = guest('guest-virtio')
    for k in after['linux']['kernels']:
        k['modules']['virtio_scsi'] = None
    calls = []
    results = [_result(guest('guest-novirtio')), {'guests': [after]},
               dict(_result(after), fixed=[{'root': after['root'],
                                            'disk': 0, 'bus': 'virtio',
                                            'files': []}])]

    def probe(settings, paths, fmt='raw', fix=False, name=None, slots=None):
        calls.append(fix)
        return copy.deepcopy(results[len(calls) - 1])
    monkeypatch.setattr(gi, 'run_probe', probe)
    result = gi.fix_disks(gi.Settings(), ['/s/d.qcow2'], 'qcow2', 'vm.raw')
    assert calls == [True, False, True]
    assert [f['bus'] for f in result['fixed']] == ['scsi', 'virtio']
    assert result['v2v']['fixed_again_for'] == 'virtio'
    assert gi.summary(result)['properties']['hw_disk_bus'] == 'virtio'


def test_fix_hands_off_then_inspects_again(tools, monkeypatch):
    calls = _probes(monkeypatch, _result(guest('guest-novirtio')),
                    {'guests': [guest('guest-virtio')]})
    result = gi.fix_disks(gi.Settings(), ['/s/d.qcow2'], 'qcow2', 'vm.raw')
    assert calls == [(['/s/d.qcow2'], 'qcow2', True),
                     (['/s/d.qcow2'], 'qcow2', False)]
    assert result['v2v']['ran'] and result['v2v']['needed'] == 'initramfs'
    assert result['v2v']['bus_before'] == 'ide'
    s = gi.summary(result)
    assert s['properties']['hw_disk_bus'] == 'scsi'
    assert s['properties']['hw_scsi_model'] == 'virtio-scsi'
    assert any('initramfs rebuilt with virtio (virt-v2v-in-place' in ln
               for ln in gi.text_lines(s))


def test_fix_without_the_tool_says_what_is_missing(tools, monkeypatch):
    tools.remove(v2v.PROGRAM)
    calls = _probes(monkeypatch, _result(guest('guest-novirtio')), None)
    result = gi.fix_disks(gi.Settings(), ['/s/d.qcow2'], 'qcow2', 'vm.raw')
    assert len(calls) == 1
    s = gi.summary(result)
    assert s['properties']['hw_disk_bus'] == 'ide'
    assert 'virt-v2v-in-place not found: install virt-v2v and nbdkit to ' \
        'rebuild the initramfs with virtio; chose hw_disk_bus=ide' in \
        s['warnings']
    assert not tools.log.exists()


def test_inspection_without_fix_says_what_fix_would_do():
    s = gi.summary({'guests': [guest('guest-novirtio')]})
    assert any(w.startswith('the initramfs of kernel ') and w.endswith(
        'lacks virtio_scsi and virtio_blk (modules on the disk): '
        'hw_disk_bus=ide; --fix rebuilds it with virt-v2v-in-place '
        '(virt-v2v and nbdkit)') for w in s['warnings']), s['warnings']
    s = gi.summary({'guests': [guest('guest-virtio')]})
    assert not [w for w in s['warnings'] if 'virt-v2v' in w]


def test_fix_with_the_hand_off_turned_off(tools, monkeypatch):
    _probes(monkeypatch, _result(guest('guest-novirtio')), None)
    result = gi.fix_disks(gi.Settings(virt_v2v=False), ['/s/d.qcow2'],
                          'qcow2', 'vm.raw')
    assert 'virt_v2v = false' in result['v2v']['skipped']
    assert not tools.log.exists()


def test_fix_not_needed_runs_nothing(tools, monkeypatch):
    calls = _probes(monkeypatch, _result(guest('guest-virtio')), None)
    result = gi.fix_disks(gi.Settings(), ['/s/d.qcow2'], 'qcow2', 'vm.raw')
    assert 'v2v' not in result and len(calls) == 1
    assert not tools.log.exists()


def test_windows_hand_off_needs_virtio_win(tools, monkeypatch, tmp_path):
    win = _win_guest({'storahci': {'start': 0}})
    _probes(monkeypatch, _result(win), None)
    result = gi.fix_disks(gi.Settings(), ['/s/d.qcow2'], 'qcow2', 'w')
    s = gi.summary(result)
    assert s['properties']['hw_disk_bus'] == 'sata'
    assert any('without a virtio storage driver: hw_disk_bus=sata; '
               'install virtio-win before migrating' in w
               for w in s['warnings'])
    # The existing warning only; the JSON output says why.
    assert not [w for w in s['warnings'] if 'virt-v2v' in w or
                'VIRTIO_WIN' in w]
    assert s['v2v']['skipped'] == (
        'no virtio-win drivers (VIRTIO_WIN or %s): install virtio-win '
        '(or set VIRTIO_WIN) to inject the virtio drivers; chose '
        'hw_disk_bus=sata' % v2v.VIRTIO_WIN_DIR)
    assert not tools.log.exists()
    # With virtio-win but no rhsrvany.exe (Debian packages none):
    # virt-v2v would stop at its first-boot script, the VM halted.
    monkeypatch.setenv('VIRTIO_WIN', str(tmp_path))
    wrappers = tmp_path / 'virt-tools'
    wrappers.mkdir()
    monkeypatch.setenv('VIRT_TOOLS_DATA_DIR', str(wrappers))
    _probes(monkeypatch, _result(win), None)
    result = gi.fix_disks(gi.Settings(), ['/s/d.qcow2'], 'qcow2', 'w')
    assert result['v2v']['skipped'] == (
        'no rhsrvany.exe or pvvxsvc.exe in %s (VIRT_TOOLS_DATA_DIR): put '
        'rhsrvany.exe there (Fedora and RHEL package it for virt-v2v; '
        'Debian does not) to inject the virtio drivers; chose '
        'hw_disk_bus=sata' % wrappers)
    assert not tools.log.exists()
    # With both: handed off, VIRTIO_WIN passed through.
    (wrappers / 'rhsrvany.exe').write_bytes(b'MZ')
    tools.script('echo "VIRTIO_WIN=$VIRTIO_WIN" >> %s' % tools.log)
    after = _win_guest({'vioscsi': {'start': 0}, 'storahci': {'start': 0}})
    _probes(monkeypatch, _result(win), {'guests': [after]})
    result = gi.fix_disks(gi.Settings(), ['/s/d.qcow2'], 'qcow2', 'w')
    assert result['v2v']['needed'] == 'drivers'
    assert gi.summary(result)['properties']['hw_disk_bus'] == 'scsi'
    log = tools.log.read_text().splitlines()
    assert log[0].endswith('-i disk -if qcow2 /s/d.qcow2')
    assert log[2] == 'VIRTIO_WIN=%s' % tmp_path


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_failed_hand_off_leaves_the_converted_disk_as_it_was(
        tools, monkeypatch, tmp_path):
    """The overlay mechanism: virt-v2v writes into the qcow2 overlay; it
    fails: nothing is committed into the raw disk."""
    disk = tmp_path / 'vm.raw'
    disk.write_bytes(b'\1' * 65536)
    before = _sha(disk)
    tools.script('qemu-io -f qcow2 -c "write -P 7 0 4k" "$9" >/dev/null; '
                 'echo "virt-v2v-in-place: error: boom" >&2; exit 1')
    _probes(monkeypatch, _result(guest('guest-novirtio')), None)
    with pytest.raises(exception.GuestFixError) as e:
        gi.inspect_files([str(disk)], gi.Settings(), fix=True,
                         scratch_dir=str(tmp_path))
    assert 'virt-v2v-in-place: error: boom' in str(e.value)
    assert _sha(disk) == before
    assert '-if qcow2' in tools.log.read_text()


def test_a_successful_hand_off_is_committed(tools, monkeypatch, tmp_path):
    disk = tmp_path / 'vm.raw'
    disk.write_bytes(b'\1' * 65536)
    tools.script('qemu-io -f qcow2 -c "write -P 7 0 4k" "$9" >/dev/null')
    _probes(monkeypatch, _result(guest('guest-novirtio')),
            {'guests': [guest('guest-virtio')]})
    gi.inspect_files([str(disk)], gi.Settings(), fix=True,
                     scratch_dir=str(tmp_path))
    assert disk.read_bytes()[:4096] == b'\7' * 4096


def test_the_options_are_registered():
    names = [o.name for o in gi.OPTIONS]
    assert 'virt_v2v' in names and 'virt_v2v_timeout' in names


class _Cinder(object):
    """Snapshots, revert and delete as Cinder answers them; a call log."""

    def __init__(self):
        self.calls = []
        calls = self.calls
        ns = types.SimpleNamespace

        class Snapshots(object):
            def create(self, vol_id, force=False, name=None,
                       description=None):
                calls.append(('snapshot', vol_id))
                return ns(id='snap-1', status='creating')

            def get(self, sid):
                if ('delete-snapshot', sid) in calls:
                    raise KeyError(sid)
                return ns(id=sid, status='available')

            def delete(self, sid):
                calls.append(('delete-snapshot', sid))

        class Volumes(object):
            def get(self, vol_id):
                return ns(id=vol_id, status='available')

            def revert_to_snapshot(self, volume, snap):
                calls.append(('revert', volume.id, snap.id))

        self.volume_snapshots = Snapshots()
        self.volumes = Volumes()


def test_a_failed_hand_off_on_volumes_reverts_them(tools, monkeypatch):
    """The Cinder route: the snapshot taken before the fix covers the
    hand-off too."""
    from any2kvm_os.targets import volume_fix
    tools.script('echo "virt-v2v-in-place: error: no space left" >&2; '
                 'exit 1')
    _probes(monkeypatch, _result(guest('guest-novirtio')), None)
    cinder = _Cinder()

    @contextlib.contextmanager
    def attach(vol_id, name, info):
        info['format'] = 'qcow2'
        yield '/dev/fake/%s' % vol_id

    with pytest.raises(exception.GuestFixError) as e:
        volume_fix.fix_volumes(cinder, [('v1', 'web')], attach, poll=0)
    assert str(e.value) == (
        'web: guest fix: virt-v2v-in-place failed (exit 1): '
        'virt-v2v-in-place: error: no space left; volume(s) v1 reverted to '
        'the snapshot(s) taken before the fix')
    assert [c[0] for c in cinder.calls] == ['snapshot', 'revert',
                                            'delete-snapshot']
    assert '-i disk -if qcow2 /dev/fake/v1' in tools.log.read_text()
