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

"""Reader processes (any2kvm_os.migration.procread): the runs a layer is
cut in, and the worker's protocol (a fake connection over local bytes;
the real one is tests/functional/test_migration_procread.py)."""

import collections
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os.formats import base
from any2kvm_os.formats import vhd
from any2kvm_os.migration import procread
from any2kvm_os.migration import procworker

MiB = 1 << 20


# -- cutting a layer in runs and batches -------------------------------------

def test_split_cuts_data_in_pieces_and_batches_and_zeroes_the_rest():
    extents = [ext.extent(ext.DATA, 0, 5 * MiB, 1000, layer=2),
               ext.extent(ext.ZERO, 5 * MiB, MiB, layer=2),
               ext.extent(ext.UNALLOCATED, 6 * MiB, MiB, layer=3),
               ext.extent(ext.DATA, 7 * MiB, 3 * MiB, 7, layer=3)]
    got = list(procread.split(extents, 2, fresh=False, is_base=True,
                              batch=6 * MiB, piece=4 * MiB))
    assert got == [
        ('zero', 5 * MiB, MiB),
        ('zero', 6 * MiB, MiB),
        ('batch', [[0, 1000, 4 * MiB, 0],
                   [0, 1000 + 4 * MiB, MiB, 4 * MiB],
                   [1, 7, 3 * MiB, 7 * MiB]], 8 * MiB)]


def test_split_leaves_holes_of_a_fresh_base_and_unallocated_of_a_delta():
    extents = [ext.extent(ext.ZERO, 0, MiB, layer=0),
               ext.extent(ext.DATA, MiB, 4096, 512, layer=0),
               ext.extent(ext.UNALLOCATED, MiB + 4096, MiB, layer=0)]
    fresh = list(procread.split(extents, 0, fresh=True, is_base=True))
    assert fresh == [('batch', [[0, 512, 4096, MiB]], 4096)]
    delta = list(procread.split(extents, 0, fresh=False, is_base=False))
    assert delta == [('zero', 0, MiB),
                     ('batch', [[0, 512, 4096, MiB]], 4096)]


def test_writes_is_the_one_rule_of_pieces_zeroes_and_ends():
    """What both paths follow (incremental._apply_one in one process,
    split here): DATA cut in pieces, ZERO zeroed, UNALLOCATED zeroed
    below a base only, nothing zeroed onto a fresh base, every extent
    ended."""
    from any2kvm_os import incremental as inc
    d = ext.extent(ext.DATA, 0, 5 * MiB, 1000, layer=None)
    z = ext.extent(ext.ZERO, 5 * MiB, MiB, layer=3)
    u = ext.extent(ext.UNALLOCATED, 6 * MiB, MiB)
    got = list(inc.writes([d, z, u], 2, fresh=False, is_base=True,
                          piece=4 * MiB))
    assert got == [(inc.DATA, d, 2, 0, 4 * MiB),
                   (inc.DATA, d, 2, 4 * MiB, MiB), (inc.END, d),
                   (inc.ZERO, z), (inc.END, z),
                   (inc.ZERO, u), (inc.END, u)]
    delta = list(inc.writes([z, u], 2, fresh=False, is_base=False))
    assert delta == [(inc.ZERO, z), (inc.END, z), (inc.END, u)]
    fresh = list(inc.writes([z, u], 2, fresh=True, is_base=True))
    assert fresh == [(inc.END, z), (inc.END, u)]


def test_batch_size_is_a_quarter_of_a_share_within_bounds():
    assert procread.batch_size(8 * MiB, 2) == procread.MIN_BATCH
    assert procread.batch_size(128 * MiB, 2) == 16 * MiB
    assert procread.batch_size(1 << 40, 2) == procread.BATCH


# -- the worker ---------------------------------------------------------------

class FakeFile(object):
    def __init__(self, conn, name, data):
        self.conn, self.name, self.data = conn, name, data
        self.size = len(data)
        self.announced = []

    def will_read(self, ranges):
        self.announced.extend(ranges)

    def pread(self, length, offset):
        got = self.data[offset:offset + length]
        self.conn.bytes_read += len(got)
        return got

    def close(self):
        pass


class FakeConn(object):
    label = 'root@host'

    def __init__(self, files):
        self.files = files
        self.bytes_read = 0
        self.opened = {}
        self.closed = False

    def connect(self):
        return self

    def open_file(self, path, name=None, size=None):
        f = self.opened[path] = FakeFile(self, name, self.files[path])
        if path.startswith('/dev/'):
            # A block device: SFTP's stat says 0 bytes; the size given.
            f.size = size or 0
        return f

    def close(self):
        self.closed = True


class Pipes(object):
    """A worker's input and output as pipes, read and written here."""

    def __init__(self):
        r, self.w_in = os.pipe()
        self.r_out, w = os.pipe()
        self.inp = procworker._Input(r)
        self.out = procworker._Output(w)
        self.fds = [r, self.w_in, self.r_out, w]

    def send(self, *messages):
        for m in messages:
            os.write(self.w_in, (json.dumps(m) + '\n').encode())
        os.close(self.w_in)
        self.fds.remove(self.w_in)

    def received(self):
        os.close(self.out.fd)
        self.fds.remove(self.out.fd)
        data = b''
        while True:
            chunk = os.read(self.r_out, 1 << 16)
            if not chunk:
                break
            data += chunk
        return [json.loads(line) for line in data.splitlines()]

    def close(self):
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def pipes():
    p = Pipes()
    yield p
    p.close()


def _setup(target, size, over_hole=True):
    return {'host': {}, 'settings': {}, 'password': None,
            'files': [{'path': '/sr/a.vhd', 'name': 'host:/sr/a.vhd',
                       'size': size}],
            'target': {'fd': target, 'path': 'target.raw',
                       'is_block': False, 'durable': False,
                       'zero_modes': ['punch']},
            'over_hole': over_hole, 'log_level': 30}


@pytest.mark.parametrize('direct', [False, True])
def test_worker_writes_its_batches_and_counts_the_wire(pipes, tmp_path,
                                                       monkeypatch, direct,
                                                       direct_io_calls):
    """A worker writes the runs it is sent where they go; a migration's
    target (durable, direct) it writes direct (O_DIRECT), as the command
    does, with the same bytes."""
    data = bytes(range(256)) * 64 + bytes(8192) + b'x' * 4096
    conn = FakeConn({'/sr/a.vhd': data})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    path = tmp_path / 'target.raw'
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
    setup = _setup(fd, len(data))
    setup['target'].update(durable=direct, direct=direct)
    try:
        os.ftruncate(fd, 1 << 20)
        pipes.send(setup,
                   {'batch': 1, 'runs': [[0, 0, 16384, 65536]]},
                   {'batch': 2, 'runs': [[0, 16384, 12288, 0]]},
                   {'end': True})
        assert procworker.run_worker(pipes.inp, pipes.out) == 0
    finally:
        os.close(fd)
    got = path.read_bytes()
    assert got[65536:65536 + 16384] == data[:16384]
    assert got[:12288] == data[16384:]
    assert direct_io_calls == (['target.raw'] if direct else [])
    assert conn.closed
    f = conn.opened['/sr/a.vhd']
    assert f.announced == [(0, 16384), (16384, 12288)]
    assert pipes.received() == [{'ready': True},
                                {'done': 1, 'wire': 16384},
                                {'done': 2, 'wire': 28672},
                                {'bye': True, 'wire': 28672}]


def test_worker_zeroes_zero_grains_over_old_data(pipes, tmp_path,
                                                 monkeypatch):
    data = bytes(8192)
    conn = FakeConn({'/sr/a.vhd': data})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    path = tmp_path / 'target.raw'
    path.write_bytes(b'o' * 16384)
    fd = os.open(str(path), os.O_RDWR)
    try:
        pipes.send(_setup(fd, len(data), over_hole=False),
                   {'batch': 1, 'runs': [[0, 0, 8192, 4096]]},
                   {'end': True})
        assert procworker.run_worker(pipes.inp, pipes.out) == 0
    finally:
        os.close(fd)
    assert path.read_bytes() == b'o' * 4096 + bytes(8192) + b'o' * 4096


def test_worker_stops_when_the_command_is_gone(pipes, tmp_path,
                                               monkeypatch):
    conn = FakeConn({'/sr/a.vhd': b'a' * 4096})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    fd = os.open(str(tmp_path / 't'), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        pipes.send(_setup(fd, 4096))    # no batch, no end: input ends
        assert procworker.run_worker(pipes.inp, pipes.out) == 1
    finally:
        os.close(fd)
    assert pipes.received() == [{'ready': True}]
    assert conn.closed


def _lease_setup(fd, size):
    setup = _setup(fd, size)
    setup['lease'] = {'name': 'web', 'operation': 'sync'}
    return setup


def test_worker_writes_nothing_past_the_leases_until(pipes, tmp_path,
                                                     monkeypatch):
    """Its first batch written, the time passes the lease's ``until`` (the
    command stopped renewing it): the worker stops before the next write,
    in one line, and the target keeps what it held there."""
    data = b'n' * 8192
    conn = FakeConn({'/sr/a.vhd': data})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    path = tmp_path / 'target.raw'
    path.write_bytes(b'o' * 8192)
    fd = os.open(str(path), os.O_RDWR)
    now = time.time()
    clock = [now]
    monkeypatch.setattr(procworker.time, 'time', lambda: clock[0])
    real = procworker.raw.RawWriter.write_data

    def write_data(self, offset, data, over_hole):
        real(self, offset, data, over_hole)
        clock[0] = now + 61         # stopped (Ctrl-Z) after this write

    monkeypatch.setattr(procworker.raw.RawWriter, 'write_data', write_data)
    try:
        # Batch 2 carries an older until: the newest one known counts.
        pipes.send(_lease_setup(fd, len(data)),
                   {'batch': 1, 'runs': [[0, 0, 4096, 0]],
                    'until': now + 60},
                   {'batch': 2, 'runs': [[0, 4096, 4096, 4096]],
                    'until': now + 30},
                   {'end': True})
        assert procworker.run_worker(pipes.inp, pipes.out) == 1
    finally:
        os.close(fd)
    ready, done, m = pipes.received()
    assert done == {'done': 1, 'wire': 4096}
    assert m['kind'] == 'LeaseLost'
    assert m['error'].startswith('migration web: the hold of this sync is '
                                 'lost (it was not renewed in time'), m
    assert path.read_bytes() == b'n' * 4096 + b'o' * 4096


def test_worker_goes_on_with_a_renewal_that_waits_behind_batches(
        pipes, tmp_path, monkeypatch):
    """The command renewed the lease while the worker was busy: the
    renewal waits in its input behind a batch; the worker finds it, and
    keeps the batch (and the end) in order."""
    data = bytes(range(256)) * 48
    conn = FakeConn({'/sr/a.vhd': data})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    monkeypatch.setattr(procworker, 'AHEAD', 1)
    path = tmp_path / 'target.raw'
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
    now = time.time()
    clock = [now]
    monkeypatch.setattr(procworker.time, 'time', lambda: clock[0])
    written = []
    real = procworker.raw.RawWriter.write_data

    def write_data(self, offset, data, over_hole):
        written.append(offset)
        clock[0] = now + 100        # each write takes long
        return real(self, offset, data, over_hole)

    monkeypatch.setattr(procworker.raw.RawWriter, 'write_data', write_data)
    try:
        os.ftruncate(fd, len(data))
        pipes.send(_lease_setup(fd, len(data)),
                   {'batch': 1, 'runs': [[0, 0, 4096, 0],
                                         [0, 4096, 4096, 4096]],
                    'until': now + 50},
                   {'batch': 2, 'runs': [[0, 8192, 4096, 8192]],
                    'until': now + 50},
                   {'until': now + 500},
                   {'end': True})
        assert procworker.run_worker(pipes.inp, pipes.out) == 0
    finally:
        os.close(fd)
    assert written == [0, 4096, 8192]
    assert path.read_bytes() == data
    assert [m for m in pipes.received() if 'done' in m] == [
        {'done': 1, 'wire': 8192}, {'done': 2, 'wire': 12288}]


def test_worker_dies_with_the_command():
    """A command killed with SIGKILL takes its reader processes with it
    (PR_SET_PDEATHSIG): none is left to write the batches it holds."""
    command = textwrap.dedent('''
        import os, subprocess, sys, time
        w = subprocess.Popen([sys.executable, '-m',
                              'any2kvm_os.migration.procworker',
                              str(os.getpid())], stdin=subprocess.PIPE)
        print(w.pid, flush=True)
        time.sleep(60)
        ''')
    proc = subprocess.Popen([sys.executable, '-c', command],
                            stdout=subprocess.PIPE, text=True)
    worker = int(proc.stdout.readline())
    # The worker waits for its set-up, its input open (the command lives).
    time.sleep(0.5)
    assert _alive(worker)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(worker)


def test_a_worker_whose_command_is_already_gone_exits():
    # Its parent is not the command it was started for (that one died
    # before the worker could ask to die with it): it exits at once,
    # without waiting for its input.
    proc = subprocess.Popen([sys.executable, '-m', 'any2kvm_os.migration.'
                             'procworker', '1'], stdin=subprocess.PIPE)
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        proc.kill()
        proc.stdin.close()
        proc.wait()


def _alive(pid):
    """Whether ``pid`` runs (a zombie, killed and not yet reaped by init,
    does not)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def test_worker_sends_its_error_in_one_line(pipes, tmp_path, monkeypatch):
    conn = FakeConn({'/sr/a.vhd': b'a' * 4096})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    fd = os.open(str(tmp_path / 't'), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        pipes.send(_setup(fd, 4096),
                   {'batch': 1, 'runs': [[0, 0, 8192, 0]]}, {'end': True})
        assert procworker.run_worker(pipes.inp, pipes.out) == 1
    finally:
        os.close(fd)
    ready, m = pipes.received()
    assert m['kind'] == 'InvalidImage'
    assert m['error'] == ('host:/sr/a.vhd: truncated: expected 8192 bytes '
                          'at offset 0, got 4096'), m


def test_worker_refuses_a_file_whose_size_changed(pipes, tmp_path,
                                                  monkeypatch):
    conn = FakeConn({'/sr/a.vhd': b'a' * 4096})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    pipes.send(_setup(99, 8192), {'end': True})
    assert procworker.run_worker(pipes.inp, pipes.out) == 1
    (m,) = pipes.received()
    assert m['kind'] == 'SshError'
    assert 'size changed from 8192 to 4096 bytes' in m['error']


# -- the command's side -------------------------------------------------------

class FakeProc(object):
    def __init__(self, fd, returncode):
        self.stdout = os.fdopen(fd, 'rb')
        self.returncode = returncode

    def wait(self, timeout=None):
        return self.returncode


class View(object):
    name = 'host:/sr/a.vhd'


def _copy():
    c = procread.Copy.__new__(procread.Copy)
    Layer = collections.namedtuple('Layer', 'view')
    Chain = collections.namedtuple('Chain', 'layers')
    c.chain = Chain([Layer(View())])
    c.top = 0

    class Conn(object):
        label = 'root@host'
        counted = 0

        def count(self, n):
            self.counted += n
    c.conn = Conn()
    return c


def _worker_saying(lines, returncode=0):
    r, w = os.pipe()
    os.write(w, b''.join(json.dumps(m).encode() + b'\n' for m in lines))
    os.close(w)
    return procread._Worker(1, FakeProc(r, returncode))


def test_command_counts_the_wire_once_and_raises_a_workers_error():
    c = _copy()
    w = _worker_saying([{'ready': True}, {'done': 1, 'wire': 100},
                        {'done': 2, 'wire': 250},
                        {'error': 'root@host: connection lost during '
                         'reading; gave up', 'kind': 'SshError'}])
    w.pending.extend([(1, 0, 8), (2, 8, 8)])
    try:
        with pytest.raises(exception.SshError) as e:
            c._receive(w)
        assert str(e.value) == ('root@host: connection lost during '
                                'reading; gave up')
        assert c.conn.counted == 250
        assert not w.pending
    finally:
        w.proc.stdout.close()


def test_progress_gives_the_data_written_apart_from_the_address():
    """The address reached is the first run still pending; the data is
    what was handed out less what is still pending."""
    c = _copy()
    calls = []
    c.progress = lambda *a: calls.append(a)
    c.size, c.done_to, c.work = 1 << 30, 0, iter(())
    c.written = 96
    w = procread._Worker(1, None)
    w.pending.extend([(3, 4096, 32), (4, 8192, 16)])
    c.workers = [w]
    c._report()
    assert calls == [(4096, 1 << 30, 48)]
    w.pending.clear()
    c.work = None
    c._report()
    assert calls[-1] == (1 << 30, 1 << 30, 96)


def test_command_goes_on_without_a_worker_that_could_not_log_in(caplog):
    c = _copy()
    c.workers = [_worker_saying([{'error': 'root@host: authentication '
                                  'failed', 'kind': 'SshAuthError'}])]
    w = c.workers[0]
    try:
        c._receive(w)
    finally:
        w.proc.stdout.close()
    assert w.bye and w.ended
    assert ('reading with 0 reader process(es) instead of 1: reader '
            'process 1 could not start: root@host: authentication failed'
            in caplog.text)


def test_command_reports_a_killed_worker():
    c = _copy()
    w = _worker_saying([], returncode=-9)
    try:
        with pytest.raises(exception.SshError) as e:
            c._receive(w)
    finally:
        w.proc.stdout.close()
    assert str(e.value) == ('root@host: reader process 1 ended (killed by '
                            'signal 9) while copying host:/sr/a.vhd')


def test_worker_environment_has_no_password_variable(monkeypatch):
    monkeypatch.setenv('XS_PASSWORD', 'secret')

    class Conn(object):
        class host_options(object):
            password_env = 'XS_PASSWORD'
    env = procread._worker_env(Conn())
    assert 'XS_PASSWORD' not in env
    assert 'secret' not in ''.join(env.values())
    # The worker's module is importable with that environment.
    subprocess.run([procread.sys.executable, '-c',
                    'import any2kvm_os.migration.procworker'], env=env,
                   check=True, timeout=120, cwd='/')


def test_worker_logs_in_with_the_password_it_was_sent(monkeypatch):
    """The set-up's password (sent over the worker's standard input) is
    what its connection logs in with, never its environment's."""
    monkeypatch.setenv('XS_PASSWORD', 'from-env')
    # What the worker does to paramiko's imports, undone after.
    monkeypatch.setitem(procworker.sys.modules, 'invoke', None)
    setup = {'host': {'host': 'h', 'user': 'u',
                      'password_env': 'XS_PASSWORD'},
             'settings': {}, 'password': 'sent'}
    conn = procworker._connection(setup)
    tried = []
    assert conn._get_password(tried).reveal() == 'sent'
    assert tried == ['the password of the first connection']
    conn.close()
    setup['password'] = None
    assert procworker._connection(setup)._get_password([]) is None


# -- which layers take the path ----------------------------------------------

class Layer(object):
    """What ``chosen`` looks at: a reader reading its DATA in place."""

    read_extent = base.LayerReader.read_extent
    read = base.LayerReader.read
    _pread = base.LayerReader._pread
    reads_in_place = base.LayerReader.reads_in_place

    def __init__(self, view):
        self.view = view


def _remote(conn, size):
    view = procread.remotefile.RemoteFile.__new__(
        procread.remotefile.RemoteFile)
    view.connection, view.size = conn, size
    return view


def test_chosen_takes_large_remote_layers_onto_a_raw_writer(tmp_path):
    from any2kvm_os.ssh import options
    from any2kvm_os.writers import raw

    class Conn(object):
        settings = options.Settings(reader_processes=2, reader_min_mib=1)
    conn = Conn()
    Chain = collections.namedtuple('Chain', 'layers')
    big = Chain([Layer(_remote(conn, MiB)), Layer(_remote(conn, 1))])
    target = raw.RawWriter(str(tmp_path / 't'), -1, fresh=True,
                           is_block=False)
    assert procread.chosen(big, 0, 1, target) is conn
    # Too small, one process, another writer, a local file, another
    # connection: one process.
    assert procread.chosen(big, 1, 1, target) is None
    Conn.settings = options.Settings(reader_processes=1, reader_min_mib=0)
    assert procread.chosen(big, 0, 1, target) is None
    Conn.settings = options.Settings(reader_processes=2, reader_min_mib=0)
    assert procread.chosen(big, 1, 1, target) is conn

    class Other(raw.RawWriter):
        pass
    other = Other(str(tmp_path / 't'), -1, fresh=True, is_block=False)
    assert procread.chosen(big, 0, 1, other) is None
    local = Chain([Layer(object())])
    assert procread.chosen(local, 0, 0, target) is None
    mixed = Chain([Layer(_remote(conn, MiB)), Layer(_remote(Conn(), 1))])
    assert procread.chosen(mixed, 0, 1, target) is None


def test_a_worker_sizes_an_lv_as_the_command_did(pipes, tmp_path,
                                                 monkeypatch):
    """An LV of an LVM SR is a block device, which SFTP cannot size: the
    worker opens it with the size lvs gave the command."""
    data = b'v' * 8192
    conn = FakeConn({'/dev/VG_XenStorage-s/VHD-a': data})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    path = tmp_path / 'target.raw'
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
    setup = _setup(fd, len(data))
    setup['files'] = [{'path': '/dev/VG_XenStorage-s/VHD-a',
                       'name': 'host:VHD-a', 'size': len(data),
                       'device': True}]
    try:
        os.ftruncate(fd, 1 << 20)
        pipes.send(setup, {'batch': 1, 'runs': [[0, 0, 8192, 0]]},
                   {'end': True})
        assert procworker.run_worker(pipes.inp, pipes.out) == 0
    finally:
        os.close(fd)
    assert path.read_bytes()[:8192] == data


def test_worker_refuses_a_file_that_holds_another_vhd_now(pipes, tmp_path,
                                                          monkeypatch):
    """A layer's file renamed since the chain was read (SM's GC gives a
    coalesced leaf's name to its parent): same size, another VHD; the
    worker checks the unique id in the footer copy at offset 0 (or, with
    none there, the footer at the end) and reads nothing."""
    vhd_path = tmp_path / 'a.vhd'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'vpc', str(vhd_path),
                    '8M'], check=True)
    data = vhd_path.read_bytes()
    ident = vhd.footer_identity(data[:512])
    assert ident and ident == vhd.footer_identity(data[-512:])
    setup = _setup(99, len(data))
    setup['files'][0]['identity'] = ident
    conn = FakeConn({'/sr/a.vhd': data})
    monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
    pipes.send(setup, {'end': True})
    assert procworker.run_worker(pipes.inp, pipes.out) == 0
    assert pipes.received()[0] == {'ready': True}
    # A fixed VHD has no copy at 0, and its guest's first sector may look
    # like a footer of another VHD: the footer at the end decides.
    other_head = bytearray(data[:512])
    other_head[68:84] = bytes(range(16))
    assert vhd.footer_identity(bytes(other_head)) not in (None, ident)
    p = Pipes()
    try:
        conn = FakeConn({'/sr/a.vhd': bytes(other_head) + data[512:]})
        monkeypatch.setattr(procworker, '_connection', lambda setup: conn)
        p.send(setup, {'end': True})
        assert procworker.run_worker(p.inp, p.out) == 0
    finally:
        p.close()
    # The footer at the end only (no copy at 0): that one is read.
    for other, says in ((data, 'VHD %s' % ident),
                        (b'\0' * 512 + data[512:], 'VHD %s' % ident),
                        (b'\0' * len(data), 'no VHD')):
        p = Pipes()
        try:
            setup['files'][0]['identity'] = (
                '00000000-0000-4000-8000-000000000001')
            conn = FakeConn({'/sr/a.vhd': other})
            monkeypatch.setattr(procworker, '_connection',
                                lambda setup: conn)
            p.send(setup, {'end': True})
            assert procworker.run_worker(p.inp, p.out) == 1
            (m,) = p.received()
            assert m['kind'] == 'SshError'
            assert ('/sr/a.vhd: holds %s, where the chain read found '
                    '00000000-0000-4000-8000-000000000001' % says
                    in m['error']), m
        finally:
            p.close()


class FakeFence(object):
    """A migration's lease check (:class:`~.state.api.Fence`)."""

    def __init__(self):
        self.at = 1000.0
        self.lost = False
        self.checks = 0
        self.lease = {'name': 'web', 'operation': 'sync'}

    def workers_until(self):
        return self.at

    def __call__(self):
        self.checks += 1
        if self.lost:
            raise exception.LeaseLost(name='web', operation='sync',
                                      reason='another command took it over')


def test_command_tells_its_workers_until_when_they_may_write():
    c = _copy()
    c.fence, c.until_sent = FakeFence(), None
    sent = []
    w = procread._Worker(1, None)
    w.send, w.ready = sent.append, True
    c.workers = [w]
    batches = iter([[[0, 0, 4096, 0]], [[0, 4096, 4096, 4096]]])
    c.work = True
    c._next_batch = lambda: next(batches, None)
    c._renewed()
    c._feed()
    assert sent[:3] == [
        {'until': 1000.0},
        {'batch': 1, 'runs': [[0, 0, 4096, 0]], 'until': 1000.0},
        {'batch': 2, 'runs': [[0, 4096, 4096, 4096]], 'until': 1000.0}]
    del sent[:]
    c.fence.at = 1000.5     # not worth a message
    c._renewed()
    c.fence.at = 1075.0     # the lease renewed
    c._renewed()
    assert sent == [{'until': 1075.0}]
    c.fence.lost = True
    with pytest.raises(exception.LeaseLost):
        c._renewed()
    assert c.fence.checks == 4
