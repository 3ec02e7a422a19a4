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

"""``--fix`` on Cinder volumes (snapshot, revert), on the copy before a
Glance upload, and the guest step of warm migrations, with a fake Cinder
and a fake probe (the real ones: tests/functional/test_migration_guest.py
and tests/integration/test_guest_fix_cinder.py)."""

import argparse
import contextlib
import json
import subprocess
import types
from pathlib import Path

import pytest

from any2kvm_os import api
from any2kvm_os import exception
from any2kvm_os.guest import inspect as gi
from any2kvm_os import limits as a2k_limits
from any2kvm_os.migration import guest_step
from any2kvm_os.migration.state import sql
from any2kvm_os.targets import volume_fix

RECORDED = Path(__file__).parent / 'data' / 'probe-linux-guests.json'


def recorded():
    return json.loads(RECORDED.read_text())


class FakeCinder(object):
    """Volumes and snapshots as Cinder keeps them; a call log."""

    def __init__(self, fail_snapshot=False):
        self.calls = []
        self.snaps = {}
        self.fail_snapshot = fail_snapshot
        cinder = self

        class Snapshots(object):
            def create(self, vol_id, force=False, name=None,
                       description=None):
                if cinder.fail_snapshot:
                    raise exception.TargetError(path=vol_id,
                                                reason='no snapshots here')
                sid = 'snap-%d' % (len(cinder.snaps) + 1)
                cinder.snaps[sid] = vol_id
                cinder.calls.append(('snapshot', vol_id, name))
                return types.SimpleNamespace(id=sid, status='creating')

            def get(self, sid):
                if sid not in cinder.snaps:
                    raise KeyError(sid)
                return types.SimpleNamespace(id=sid, status='available')

            def delete(self, sid):
                cinder.calls.append(('delete-snapshot', sid))
                del cinder.snaps[sid]

        class Volumes(object):
            def get(self, vol_id):
                return types.SimpleNamespace(id=vol_id, status='available',
                                             volume_image_metadata={
                                                 'hw_scsi_model': 'x'})

            def revert_to_snapshot(self, volume, snap):
                cinder.calls.append(('revert', volume.id, snap.id))

        self.volume_snapshots = Snapshots()
        self.volumes = Volumes()


def _attach(log):
    @contextlib.contextmanager
    def attach(vol_id, name, info):
        info['format'] = 'qcow2'
        log.append(('attach', vol_id))
        try:
            yield '/dev/fake/%s' % vol_id
        finally:
            log.append(('detach', vol_id))
    return attach


def test_fix_volumes_snapshots_fixes_and_deletes_the_snapshots(
        monkeypatch):
    cinder = FakeCinder()
    probes = []

    def probe(settings, paths, fmt='raw', fix=False, name=None, slots=None):
        probes.append((list(paths), fmt, fix))
        assert [c[0] for c in cinder.calls] == ['snapshot', 'snapshot']
        return {'guests': [], 'fixed': []}

    monkeypatch.setattr(gi, 'run_probe', probe)
    log = []
    result = volume_fix.fix_volumes(cinder, [('v1', 'a'), ('v2', 'a-1')],
                                    _attach(log), poll=0)
    assert probes == [(['/dev/fake/v1', '/dev/fake/v2'], 'qcow2', True)]
    assert log == [('attach', 'v1'), ('attach', 'v2'), ('detach', 'v2'),
                   ('detach', 'v1')]
    assert [c[0] for c in cinder.calls] == ['snapshot', 'snapshot',
                                            'delete-snapshot',
                                            'delete-snapshot']
    assert result['snapshots'] == [
        {'volume': 'v1', 'snapshot': 'snap-1', 'kept': False},
        {'volume': 'v2', 'snapshot': 'snap-2', 'kept': False}]
    assert cinder.snaps == {}


def test_a_failed_fix_reverts_after_detaching(monkeypatch):
    cinder = FakeCinder()
    log = []

    def probe(settings, paths, fmt='raw', fix=False, name=None, slots=None):
        raise exception.GuestFixError(path=name, reason='fix stopped after '
                                      '1 file(s); it had changed: '
                                      '/etc/fstab')

    monkeypatch.setattr(gi, 'run_probe', probe)
    with pytest.raises(exception.GuestFixError) as e:
        volume_fix.fix_volumes(cinder, [('v1', 'web')], _attach(log),
                               poll=0)
    assert str(e.value) == (
        'web: guest fix: fix stopped after 1 file(s); it had changed: '
        '/etc/fstab; volume(s) v1 reverted to the snapshot(s) taken before '
        'the fix')
    assert log == [('attach', 'v1'), ('detach', 'v1')]
    assert [c[0] for c in cinder.calls] == ['snapshot', 'revert',
                                            'delete-snapshot']
    assert cinder.snaps == {}


def test_keep_keeps_the_snapshot_even_after_a_revert(monkeypatch):
    cinder = FakeCinder()

    def probe(settings, paths, fmt='raw', fix=False, name=None, slots=None):
        raise exception.GuestFixError(path=name, reason='boom')

    monkeypatch.setattr(gi, 'run_probe', probe)
    with pytest.raises(exception.GuestFixError) as e:
        volume_fix.fix_volumes(cinder, [('v1', 'web')], _attach([]),
                               keep=True, poll=0)
    assert '(kept: snap-1)' in str(e.value)
    assert cinder.snaps == {'snap-1': 'v1'}
    monkeypatch.setattr(gi, 'run_probe', lambda *a, **k: {'guests': []})
    result = volume_fix.fix_volumes(cinder, [('v2', 'web')], _attach([]),
                                    keep=True, poll=0)
    assert result['snapshots'][0]['kept'] is True
    assert 'snap-2' in cinder.snaps


def test_no_snapshot_no_fix(monkeypatch):
    cinder = FakeCinder(fail_snapshot=True)
    monkeypatch.setattr(gi, 'run_probe', lambda *a, **k: pytest.fail(
        'the probe ran without a snapshot'))
    with pytest.raises(exception.GuestFixError) as e:
        volume_fix.fix_volumes(cinder, [('v1', 'web')], _attach([]), poll=0)
    assert 'no snapshot to revert to, nothing changed' in str(e.value)


# -- import --fix to a cloud target: the copy fixed before the upload ---------

class FakeUploadTarget(object):
    name = 'glance'
    takes_properties = True
    server_options = None

    def __init__(self):
        self.uploaded = []

    def write(self, vm, name, props, disk=None, progress=None):
        for d in vm.disks:
            w = _Sink()
            d.write_to(w)
            self.uploaded.append(bytes(w.data))
        return [{'disk': 0, 'name': name, 'id': 'img',
                 'properties': dict(vm.facts.get('guest_properties') or {})}]


class _Sink(object):
    """The writer protocol of vm.Disk.write_to, in memory."""

    fresh = True
    path = '/nonexistent/sink.raw'

    def __init__(self):
        self.data = bytearray()

    def resize(self, size):
        self.data.extend(bytes(max(0, size - len(self.data))))

    def zero_range(self, offset, length):
        self.data[offset:offset + length] = bytes(length)

    def write_data(self, offset, data, over_hole):
        self.data[offset:offset + len(data)] = data


def test_import_fixed_uploads_the_fixed_copy(monkeypatch, tmp_path):
    raw = tmp_path / 'guest.raw'
    raw.write_bytes(b'/dev/xvda1'.ljust(1 << 20, b'\0'))
    src = tmp_path / 'guest.qcow2'
    subprocess.run(['qemu-img', 'convert', '-O', 'qcow2', str(raw),
                    str(src)], check=True, capture_output=True, timeout=60)
    before = src.read_bytes()
    limits = a2k_limits.Limits()
    seen = []

    def inspect_paths(paths, limits, fix=False, source_vm=None,
                      indexes=None):
        assert fix
        seen.extend(paths)
        with open(paths[0], 'r+b') as f:
            f.write(b'UUID=1234!')
        out = gi.summary(recorded(), source_vm)
        return out

    monkeypatch.setattr(api, 'inspect_paths', inspect_paths)
    vm = api.open_location(str(src), limits)
    target = FakeUploadTarget()
    try:
        results = api.import_fixed(target, vm, 'web', {}, None, limits,
                                   None, None, argparse.Namespace())
    finally:
        vm.close()
    assert target.uploaded[0].startswith(b'UUID=1234!')
    assert len(target.uploaded[0]) == 1 << 20
    assert src.read_bytes() == before
    assert results[0]['properties']['hw_disk_bus'] == 'scsi'
    assert results[0]['guest']['hostname'] == 'guest-virtio'
    assert seen and not Path(seen[0]).exists()


@pytest.mark.parametrize('args, message', [
    (dict(fix=True, inspect=False), '--fix needs inspection'),
    (dict(fix=False, keep_fix_snapshot=True),
     '--keep-fix-snapshot goes with --fix'),
])
def test_check_fix_refusals(args, message):
    cls = types.SimpleNamespace(name='cinder')
    with pytest.raises(exception.Any2KvmError) as e:
        api._check_fix(argparse.Namespace(**args), cls)
    assert message in str(e.value)


def test_check_fix_refuses_an_unknown_target():
    cls = types.SimpleNamespace(name='swift')
    with pytest.raises(exception.Any2KvmError) as e:
        api._check_fix(argparse.Namespace(fix=True), cls)
    assert str(e.value) == ('--fix applies to convert and import --target '
                            'file|glance|cinder, not swift')


# -- the guest step of warm migrations ----------------------------------------

@pytest.fixture
def store(tmp_path):
    s = sql.SqlStore('sqlite:///%s' % (tmp_path / 'state.db'))
    s.create('web', 'xenserver://root@h/vm', 'file', {},
             [{'index': 0, 'source_id': 'a', 'name': 'a',
               'virtual_size': 1 << 20,
               'target_ref': str(tmp_path / 'web.raw')}])
    yield s
    s.close()


def _writers(tmp_path):
    return {0: types.SimpleNamespace(path=str(tmp_path / 'web.raw'))}


def test_after_sync_records_the_guest(store, tmp_path, monkeypatch):
    monkeypatch.setattr(gi, 'run_probe', lambda settings, paths, **k:
                        recorded())
    step = guest_step.GuestStep(flag=True)
    record = step.after_sync(store, 'web', _writers(tmp_path), {})
    m = store.get('web')
    assert m['guest'] == record
    assert m['guest']['inspected_by'] == 'sync'
    assert m['guest']['properties']['hw_disk_bus'] == 'scsi'
    assert guest_step.describe(record) == \
        'linux debian 12.8 x86_64, hw_disk_bus=scsi (virtio-scsi)'


def test_after_sync_off_by_default_in_the_suite_and_warns(
        store, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(gi.ENV, '0')
    step = guest_step.GuestStep()
    assert step.after_sync(store, 'web', _writers(tmp_path), {}) is None

    def fails(*a, **k):
        raise exception.InspectionError(path='web.raw', reason='no '
                                        'appliance')

    monkeypatch.setattr(gi, 'run_probe', fails)
    monkeypatch.setenv(gi.ENV, '1')
    assert step.after_sync(store, 'web', _writers(tmp_path), {}) is None
    assert 'no appliance (the guest was not inspected' in caplog.text
    with pytest.raises(exception.InspectionError):
        guest_step.GuestStep(flag=True).after_sync(
            store, 'web', _writers(tmp_path), {})
    assert store.get('web')['guest'] is None


def test_at_cutover_uses_the_record_without_fix(store, monkeypatch):
    monkeypatch.setattr(gi, 'inspect_files', lambda *a, **k: pytest.fail(
        'an appliance at cutover without --fix'))
    step = guest_step.GuestStep()
    assert step.at_cutover(store, 'web', None, {}) == {}
    store.guest_recorded('web', dict(gi.summary(recorded()),
                                     inspected_by='sync'))
    facts = {}
    details = step.at_cutover(store, 'web', None, facts)
    assert facts['guest_properties']['hw_disk_bus'] == 'scsi'
    assert details['hw_disk_bus'] == 'scsi'
    assert details['guest_inspected_by'] == 'sync'
    assert 'fixed' not in details


def test_at_cutover_fixes_the_files(store, tmp_path, monkeypatch):
    calls = []

    def inspect_files(paths, settings=None, fix=False, scratch_dir=None,
                      slots=None, before_commit=None):
        calls.append((paths, fix, slots))
        out = recorded()
        out['fixed'] = [{'root': out['guests'][0]['root'], 'disk': 0,
                         'bus': 'scsi', 'files': [
                             {'path': '/etc/fstab', 'changes': [
                                 {'from': '/dev/xvda1', 'to': 'UUID=x'}]}]}]
        return out

    monkeypatch.setattr(gi, 'inspect_files', inspect_files)
    step = guest_step.GuestStep(fix=True)
    m = store.get('web')
    details = step.at_cutover(store, 'web', None, {})
    assert calls == [([m['disks'][0]['target_ref']], True, None)]
    assert details['fixed'] == '/etc/fstab'
    # A XenServer VM's disk slots (its VBDs' userdevice) go to the probe,
    # which maps the guest's /dev/xvdX names by them.
    step.at_cutover(store, 'web', None, {'xen_slots': [4]})
    assert calls[-1][2] == [4]
    assert store.get('web')['guest']['inspected_by'] == 'cutover --fix'


def test_guest_step_refusals():
    with pytest.raises(exception.Any2KvmError):
        guest_step.GuestStep(flag=False, fix=True)
    with pytest.raises(exception.Any2KvmError):
        guest_step.GuestStep(keep=True)


def test_guest_record_is_checked_for_secrets(store):
    with pytest.raises(ValueError):
        store.guest_recorded('web', {'token': 'x'})
    store.guest_recorded('web', None)
    assert store.get('web')['guest'] is None


def test_at_cutover_fixes_cinder_volumes_with_a_snapshot(tmp_path,
                                                         monkeypatch):
    s = sql.SqlStore('sqlite:///%s' % (tmp_path / 'state.db'))
    s.create('db', 'xenserver://root@h/vm', 'cinder', {},
             [{'index': i, 'source_id': 's%d' % i, 'name': 'd%d' % i,
               'virtual_size': 1 << 30, 'target_ref': 'vol-%d' % i}
              for i in range(2)])
    cinder = FakeCinder()
    log = []
    attach = _attach(log)

    class Dest(object):
        timeout = 60
        poll = 0

        def client(self):
            return cinder

        def _attached(self, vol_id, vol_name, formats=None, info=None):
            assert 'qcow2' in formats
            return attach(vol_id, vol_name, info)

    monkeypatch.setattr(gi, 'run_probe', lambda settings, paths, fmt=None,
                        fix=False, name=None, slots=None: dict(
                            recorded(), fixed=[]))
    monkeypatch.setattr(volume_fix.time, 'sleep', lambda s: None)
    facts = {}
    details = guest_step.GuestStep(fix=True, keep=True).at_cutover(
        s, 'db', Dest(), facts)
    assert [c[:2] for c in cinder.calls] == [
        ('snapshot', 'vol-0'), ('snapshot', 'vol-1')]
    assert details['fix_snapshots_kept'] == 'snap-1, snap-2'
    assert details['fixed'] == 'nothing to fix'
    assert facts['guest_properties']['hw_disk_bus'] == 'scsi'
    assert s.get('db')['guest']['snapshots'][0]['kept'] is True
    s.close()


def test_a_fixed_copy_is_uploaded_from_its_file(tmp_path):
    from any2kvm_os.targets import glance as glance_target
    path = tmp_path / 'disk0.raw'
    with open(str(path), 'wb') as f:
        f.write(b'fixed')
        f.truncate(3 << 20)
    disk = api._fixed_copy('web (fixed)', 'file', str(path))
    assert disk.chain is None and disk.virtual_size == 3 << 20
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    with glance_target.disk_stream(disk, str(scratch)) as s:
        data = s.read(1 << 30)
        assert not list(scratch.iterdir())
    assert data[:5] == b'fixed' and len(data) == 3 << 20
    sink = _Sink()
    disk.write_to(sink)
    assert bytes(sink.data) == data
