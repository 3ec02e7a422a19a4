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

"""Warm migration onto block devices (``migration create --device``), the
engine run in process against the stand-in host (tests/lib/miglocal.py).

The devices are loop devices prefilled with garbage where this machine
can attach them (root, losetup), detached after each test even when it
fails; elsewhere the same code runs on the regular files behind them,
with only "is it a block device" and "how large is it" answered by the
test (``fake`` mode).  The bytes are checked against the stand-in's model
of each disk (what the guest wrote, kept apart from any VHD code), and
each device's tail beyond its disk against the garbage (never written).
"""

import argparse
import contextlib
import ctypes
import errno
import hashlib
import os
import struct
import types
from unittest import mock

import pytest

from any2kvm_os import api
from any2kvm_os import arguments
from any2kvm_os.cmd import any2kvm
from any2kvm_os import exception
from any2kvm_os.migration import destinations
from any2kvm_os.migration import engine
from any2kvm_os.migration.state import sql
from any2kvm_os.osc.v1 import migration as osc_migration
from any2kvm_os.writers import raw
from tests.lib import blockdev
from tests.lib import imagegen as ig
from tests.lib import miglocal
from tests.lib.xenserver import host as xhost

MiB = 1 << 20
LOC = 'xenserver://root@standin/two-disks'
#: The disks of the stand-in's VM "two-disks".
DISKS = (8 * MiB, 4 * MiB)
#: Bytes of each device beyond its disk: garbage, never written.
SPARE = MiB
#: raw.check_device, which the fake mode replaces.
CHECK_DEVICE = raw.check_device


def garbage(i, size):
    return ig.pattern(300 + i, size)


class Devices(list):
    """The device paths, and whether they are real block devices."""
    real = False


def _fake_block_devices(monkeypatch):
    """Regular files taken as block devices: only the two questions a
    regular file answers differently are answered here."""
    def check_device(path):
        # A device number of its own: the file's inode.
        return types.SimpleNamespace(st_rdev=os.stat(path).st_ino)

    monkeypatch.setattr(raw, 'check_device', check_device)
    monkeypatch.setattr(raw.RawWriter, 'device_size',
                        lambda self: os.fstat(self.fd).st_size)


@pytest.fixture
def devices(tmp_path, monkeypatch):
    with contextlib.ExitStack() as stack:
        backings, devs = [], Devices()
        for i, size in enumerate(DISKS):
            backing = tmp_path / ('dev%d.img' % i)
            backing.write_bytes(garbage(i, size + SPARE))
            backings.append(str(backing))
            devs.append(stack.enter_context(
                blockdev.loop_device_or_none(backing)))
        if all(devs):
            devs.real = True
        else:
            devs[:] = backings
            _fake_block_devices(monkeypatch)
        yield devs


@pytest.fixture
def bed(tmp_path):
    root, facts = xhost.standard_host(tmp_path / 'xs')
    store = sql.SqlStore('sqlite:///%s' % (tmp_path / 'state.db'))
    try:
        yield root, facts, store
    finally:
        store.close()


def _kw(root):
    return {'connect': miglocal.connector(root)}


def _writers(root, facts, m):
    return [xhost.GuestWriter(root, d['source_id'],
                              facts['models'][d['source_id']])
            for d in m['disks']]


def _read(path, size):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _check(m, facts, devs):
    for i, (d, dev) in enumerate(zip(m['disks'], devs)):
        assert d['target_ref'] == os.path.abspath(dev)
        model = facts['models'][d['source_id']]
        data = _read(dev, model.size + SPARE)
        assert hashlib.sha256(data[:model.size]).hexdigest() == \
            model.sha256(), dev
        assert data[model.size:] == garbage(i, model.size + SPARE)[
            model.size:], '%s: written beyond the disk' % dev


def _create(store, root, devs, **options):
    options['devices'] = list(devs)
    return engine.create(store, 'web', LOC, options=options, **_kw(root))


def test_sync_sync_cutover_over_garbage(bed, devices):
    if devices.real:
        # The same run, on loop devices through the command line:
        # tests/functional/test_migration.py (suite time).
        pytest.skip('run on loop devices by test_create_sync_sync_cutover_'
                    'onto_devices')
    root, facts, store = bed
    m = _create(store, root, devices)
    assert m['target'] == 'file'
    assert m['target_options']['devices'] == [os.path.abspath(d)
                                              for d in devices]
    assert 'output_dir' not in m['target_options']
    w0, w1 = _writers(root, facts, m)
    engine.sync(store, 'web', **_kw(root))
    # The first sync zeroed every range the VM holds no data in.
    _check(store.get('web'), facts, devices)
    w0.write(5 * MiB, ig.pattern(7, 2 * MiB))
    w0.zero(0, 4096)                      # zeroes parent data
    w1.write(MiB + 100, b'partial block')
    engine.sync(store, 'web', **_kw(root))
    w0.write(3 * MiB, ig.pattern(8, 512))
    w1.zero(MiB, 4096)
    r = engine.cutover(store, 'web', **_kw(root))
    assert r['layers_applied'] == 2
    m = store.get('web')
    assert m['status'] == 'done'
    _check(m, facts, devices)
    lines = api.migration_lines('show', engine.show(store, 'web'))
    assert any(line.startswith('devices:') and 'zeroed by the first sync'
               in line for line in lines), lines
    assert any(os.path.abspath(devices[0]) in line for line in lines)


def test_zeroed_device_resized_disk_and_abort_keeps_it(
        bed, devices, monkeypatch):
    root, facts, store = bed
    for dev, size in zip(devices, DISKS):
        fd = os.open(dev, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, bytes(size), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    zeroed = []
    zero_range = raw.RawWriter.zero_range

    def counted(self, offset, length):
        zeroed.append((self.path, offset, length))
        return zero_range(self, offset, length)

    monkeypatch.setattr(raw.RawWriter, 'zero_range', counted)
    m = _create(store, root, devices, device_is_zeroed=True)
    assert m['target_options']['device_is_zeroed'] is True
    engine.sync(store, 'web', **_kw(root))
    assert zeroed == []
    _check(store.get('web'), facts, devices)
    w0, _w1 = _writers(root, facts, m)
    w0.zero(0, 4096)
    engine.sync(store, 'web', **_kw(root))
    # A later sync is no first pass: zero runs are zeroed.
    assert zeroed
    _check(store.get('web'), facts, devices)
    # A disk resized on the host: the device cannot follow (what lies
    # beyond the old end was never zeroed).
    w0.grow(9 * MiB)
    with pytest.raises(exception.Any2KvmError,
                       match='cannot follow a resized disk'):
        engine.sync(store, 'web', **_kw(root))
    before = [_read(d, s + SPARE) for d, s in zip(devices, DISKS)]
    r = engine.abort(store, 'web', delete_targets=True, **_kw(root))
    assert r['targets_deleted'] == []
    assert [_read(d, s + SPARE) for d, s in zip(devices, DISKS)] == before
    assert api.migration_lines('abort', r)[0].endswith('targets kept')


def test_refusals(bed, devices, tmp_path, monkeypatch):
    root, facts, store = bed

    def refused(devs, match, **options):
        with pytest.raises(exception.Any2KvmError, match=match) as e:
            _create(store, root, devs, **options)
        assert '\n' not in str(e.value)
        return str(e.value)

    dev0, dev1 = devices
    regular = tmp_path / 'regular.raw'
    regular.write_bytes(bytes(16 * MiB))
    link = tmp_path / 'link'
    os.symlink(str(regular), str(link))
    refused([dev0, dev0], 'are the same device')
    refused([dev0], r'the VM has 2 disk\(s\), 1 --device given')
    # The 8 MiB disk onto the 5 MiB device: both sizes named.
    refused([dev1, dev0], 'holds %d bytes, the disk needs %d'
            % (DISKS[1] + SPARE, DISKS[0]))
    if devices.real:
        refused([dev0, regular], 'is a regular file, not a block device')
        refused([dev0, link], 'is a symlink to %s, which is a regular '
                'file, not a block device' % regular)
        refused([dev0, tmp_path], 'is a directory, not a block device')
        refused([dev0, '/dev/null'], 'is a character device')
        refused([dev0, tmp_path / 'nope'], 'does not exist')
        fd = os.open(dev1, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        try:
            refused([dev0, dev1], 'is in use')
            # convert onto a device opens it the same way.
            with pytest.raises(exception.TargetError, match='is in use'):
                raw.RawWriter.open(dev1, exclusive=True)
        finally:
            os.close(fd)
    else:
        real_open = os.open

        def busy(path, flags, *a):
            if path == os.path.abspath(dev1) and flags & os.O_EXCL:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
            return real_open(path, flags, *a)
        with monkeypatch.context() as patch:
            patch.setattr(raw.os, 'open', busy)
            refused([dev0, dev1], 'is in use')
    assert store.list() == []
    # The device checks themselves, on what is never a block device.
    for path, what in ((regular, 'is a regular file'),
                       (link, 'is a symlink to'),
                       (tmp_path, 'is a directory'),
                       ('/dev/null', 'is a character device')):
        with pytest.raises(exception.TargetError, match=what):
            CHECK_DEVICE(str(path))


def _options(argv):
    parser = argparse.ArgumentParser()
    arguments.add_migration_arguments(parser, 'create')
    return api._migration_target_options(parser.parse_args(
        ['web', LOC] + argv))


def test_command_line_options():
    assert _options(['--device', '/dev/a', '--device', '/dev/b']) == {
        'devices': ['/dev/a', '/dev/b']}
    assert _options(['--device', '/dev/a', '--device-is-zeroed']) == {
        'devices': ['/dev/a'], 'device_is_zeroed': True}
    with pytest.raises(exception.Any2KvmError,
                       match='--device and --output-dir: give one'):
        _options(['--device', '/dev/a', '--output-dir', '/tmp'])
    with pytest.raises(exception.Any2KvmError,
                       match='--device-is-zeroed goes with --device'):
        _options(['--device-is-zeroed'])
    with pytest.raises(exception.Any2KvmError,
                       match='--device goes with --target file'):
        _options(['--target', 'cinder', '--device', '/dev/a'])
    # Both command lines take them alike.
    words = ['web', LOC, '--device', '/dev/a', '--device', '/dev/b',
             '--device-is-zeroed']
    a = any2kvm.build_parser(['migration']).parse_args(
        ['migration', 'create'] + words)
    b = osc_migration.MigrationCreate(mock.Mock(), None).get_parser(
        'openstack any2kvm migration create').parse_args(words)
    for args in (a, b):
        assert args.devices == ['/dev/a', '/dev/b']
        assert args.device_is_zeroed is True
    assert isinstance(destinations.get('file', {'devices': ['/dev/a']}),
                      destinations.DeviceDestination)
    assert isinstance(destinations.get('file', {'output_dir': '/tmp'}),
                      destinations.FileDestination)


# -- zeroing a block device range (no device needed) -------------------------

class _Calls(object):
    """fallocate and BLKZEROOUT stand-ins: each mode answers ``errors``
    (an errno, or 0 to do it: punch a hole in the regular file)."""

    def __init__(self, monkeypatch, errors):
        self.errors = errors
        self.calls = []
        monkeypatch.setattr(raw, '_fallocate', lambda: self.fallocate)
        real_ioctl = raw.fcntl.ioctl

        def ioctl(fd, req, arg):
            if req == raw.BLKZEROOUT:
                return self._do('ioctl', fd, *struct.unpack('QQ', arg))
            return real_ioctl(fd, req, arg)
        monkeypatch.setattr(raw.fcntl, 'ioctl', ioctl)

    def fallocate(self, fd, mode, offset, length):
        name = 'punch' if mode & raw.FALLOC_FL_PUNCH_HOLE else 'zero'
        assert mode & raw.FALLOC_FL_KEEP_SIZE
        try:
            self._do(name, fd, offset, length)
        except OSError as e:
            ctypes.set_errno(e.errno)
            return -1
        return 0

    def _do(self, name, fd, offset, length):
        self.calls.append((name, offset, length))
        err = self.errors.get(name, 0)
        if err:
            raise OSError(err, os.strerror(err))
        os.pwrite(fd, bytes(length), offset)


@pytest.fixture
def block_writer(tmp_path):
    path = tmp_path / 'disk'
    path.write_bytes(b'\xee' * (64 * 1024))
    fd = os.open(str(path), os.O_RDWR | os.O_CLOEXEC)
    w = raw.RawWriter(str(path), fd, fresh=False, is_block=True)
    w._sector_size = 4096
    try:
        yield w, path
    finally:
        w.close()


def test_zero_device_tries_each_way_in_order(block_writer, monkeypatch):
    w, path = block_writer
    calls = _Calls(monkeypatch, {'punch': errno.EOPNOTSUPP,
                                 'zero': errno.EINVAL})
    # Unaligned to the 4 KiB sector: the edges are written, the rest
    # zeroed by the kernel.
    w.zero_range(4000, 9000)
    assert calls.calls == [('punch', 4096, 8192), ('zero', 4096, 8192),
                           ('ioctl', 4096, 8192)]
    assert w._zero_modes == ['ioctl']
    w.zero_range(16384, 4096)
    assert calls.calls[-1] == ('ioctl', 16384, 4096)
    data = path.read_bytes()
    assert data[4000:13000] == bytes(9000)
    assert data[16384:20480] == bytes(4096)
    assert data[3999] == data[13000] == data[20480] == 0xee


def test_zero_device_falls_back_to_writing(block_writer, monkeypatch):
    w, path = block_writer
    calls = _Calls(monkeypatch, {'punch': errno.EOPNOTSUPP,
                                 'zero': errno.EOPNOTSUPP,
                                 'ioctl': errno.ENOTTY})
    w.zero_range(8192, 8192)
    w.zero_range(100, 50)          # within a sector: written
    assert len(calls.calls) == 3 and w._zero_modes == []
    data = path.read_bytes()
    assert data[8192:16384] == bytes(8192) and data[100:150] == bytes(50)
    assert data[16384] == data[99] == 0xee


@pytest.mark.parametrize('punch', [0, errno.EOPNOTSUPP])
def test_zero_file_punches_or_writes(tmp_path, monkeypatch, punch):
    """A regular file has one way (a hole, not sector aligned): when the
    file system refuses it as unsupported it is not asked again and the
    zeros are written; either way the range reads as zeros."""
    path = tmp_path / 'disk'
    path.write_bytes(b'\xee' * (64 * 1024))
    fd = os.open(str(path), os.O_RDWR | os.O_CLOEXEC)
    w = raw.RawWriter(str(path), fd, fresh=False, is_block=False)
    calls = _Calls(monkeypatch, {'punch': punch})
    try:
        w.zero_range(100, 5000)
        w.zero_range(9000, 300)
    finally:
        w.close()
    assert calls.calls == ([('punch', 100, 5000), ('punch', 9000, 300)]
                           if not punch else [('punch', 100, 5000)])
    assert w._zero_modes == ([] if punch else ['punch'])
    data = path.read_bytes()
    assert data[100:5100] == bytes(5000) and data[9000:9300] == bytes(300)
    assert data[99] == data[5100] == data[8999] == data[9300] == 0xee


def test_zero_file_failure_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / 'disk'
    path.write_bytes(bytes(8192))
    fd = os.open(str(path), os.O_RDWR | os.O_CLOEXEC)
    w = raw.RawWriter(str(path), fd, fresh=False, is_block=False)
    _Calls(monkeypatch, {'punch': errno.EIO})
    try:
        with pytest.raises(exception.TargetError,
                           match='Input/output error'):
            w.zero_range(0, 4096)
    finally:
        w.close()


def test_zero_device_failure_is_an_error(block_writer, monkeypatch):
    w, _path = block_writer
    _Calls(monkeypatch, {'punch': errno.EIO})
    with pytest.raises(exception.TargetError, match='Input/output error'):
        w.zero_range(0, 8192)
