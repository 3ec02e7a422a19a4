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

"""A halted VM's leaf read again in few round trips: the ranges its
metadata was read from asked for with the file's size
(:meth:`sftpread.Pipeline.open` ``prefetch``), kept by the
:class:`RemoteFile`, and :func:`layer_chain.reopen_leaf` over an SFTP
server simulated in-process (tests/lib/sftpfake.py).  Requests are
counted, never timed: each write the client makes to the channel before
it waits is at most one round trip."""

import os
import random
import types

import pytest

from any2kvm_os.chain import layer_chain
from any2kvm_os.containers import remote
from any2kvm_os import extents as ext
from any2kvm_os import limits as limits_mod
from any2kvm_os.ssh import remotefile
from any2kvm_os.ssh import sftpread
from tests.lib import imagegen as ig
from tests.lib import sftpfake as fake

MiB = 1 << 20
SR = '/sr'


class Counted(fake.FakeChannel):
    """A fake channel that records the request types of each write."""

    def sendall(self, data):
        kinds, i = [], 0
        while i + 5 <= len(data):
            n = fake.U32.unpack_from(data, i)[0]
            kinds.append(data[i + 4])
            i += 4 + n
        self.server.writes.append(kinds)
        return super(Counted, self).sendall(data)


class Conn(object):
    """What RemoteFile and the container ask of a connection, over a
    fake SFTP server."""

    label = 'root@xs1'

    def __init__(self, files):
        self.server = fake.FakeServer(files)
        self.server.writes = []
        self.gen = 1
        self.live = None
        self.bytes = 0
        self.settings = types.SimpleNamespace(
            stripe=4 * MiB, stripe_min=64 * MiB, sftp_streams=1)
        self.pipeline = sftpread.Pipeline(self._connect, self._count,
                                          'fake', request_size=64 << 10,
                                          max_requests=16)

    def _connect(self, session, gen):
        if session is not None and session is self.live and \
                gen == self.gen:
            return session, gen
        self.live = sftpread.Session(Counted(self.server))
        return self.live, self.gen

    def _count(self, n):
        self.bytes += n

    def retrying(self, what, step, retry=True):
        return step()

    def listdir(self, path, limit, skipped=None):
        return sorted(os.path.basename(p) for p in self.server.files)

    def open_file(self, path, size=None, name=None, prefetch=None):
        return remotefile.RemoteFile(self, path, size=size, name=name,
                                     prefetch=prefetch)

    def writes(self):
        return len(self.server.writes)


DATA = random.Random(5).randbytes(1 * MiB)


def test_prefetch_goes_with_the_size_and_is_served_from_memory():
    conn = Conn({'/a': DATA})
    ranges = [(0, 512), (len(DATA) - 512, 512), (300000, 4096),
              # Beyond the end: asked for, its answer thrown away.
              (len(DATA) - 100, 1000), (len(DATA) + 10, 10)]
    f = conn.open_file('/a', prefetch=ranges)
    assert f.size == len(DATA)
    # OPEN alone (its handle is needed), then FSTAT with the reads.
    assert conn.server.writes[1][0] == sftpread.FXP_OPEN
    fstat = [w for w in conn.server.writes if sftpread.FXP_FSTAT in w]
    assert len(fstat) == 1
    assert fstat[0].count(sftpread.FXP_READ) == 4
    reads = conn.server.read_requests
    writes = conn.writes()
    # Every format's probe reads the first sector, again and again.
    for off, n in ((0, 4), (0, 8), (0, 512), (0, 512), (8, 100),
                   (len(DATA) - 512, 512), (300000, 4096), (301000, 10)):
        assert f.pread(n, off) == DATA[off:off + n]
    assert f.preadv([(0, 512), (300000, 4096)]) == [
        DATA[:512], DATA[300000:304096]]
    assert conn.server.read_requests == reads
    assert conn.writes() == writes
    # Elsewhere: read as always.
    assert f.pread(1000, 5000) == DATA[5000:6000]
    assert conn.server.read_requests > reads
    assert f.held_bytes() == 512 + 512 + 4096
    f.close()
    assert f.held_bytes() == 0


def test_prefetch_is_bounded():
    ranges = [(i * 1024, 512) for i in range(
        remotefile.PREFETCH_RANGES + 10)]
    assert len(remotefile._bounded(ranges)) == remotefile.PREFETCH_RANGES
    big = [(0, remotefile.PREFETCH_BYTES), (0, 1), (5, 0), (-1, 5)]
    assert remotefile._bounded(big) == [(0, remotefile.PREFETCH_BYTES)]


def test_prefetch_survives_a_cut_connection():
    """Cut while the FSTAT and the reads are in flight: the retry opens
    the file again and the bytes are right."""
    for cut in range(0, 3000, 97):
        conn = Conn({'/a': DATA})
        conn.server.cut_at = conn.server.sent + cut
        base = fake.FakeConnection(conn.server)
        conn.retrying = lambda what, step, retry=True: base.retrying(step)
        conn._connect = base.connect
        conn.pipeline = sftpread.Pipeline(base.connect, conn._count,
                                          'fake', request_size=64 << 10)
        f = conn.open_file('/a', prefetch=[(0, 512), (70000, 70000),
                                           (len(DATA) - 512, 512)])
        assert f.pread(512, 0) == DATA[:512]
        assert f.pread(70000, 70000) == DATA[70000:140000]
        assert f.pread(512, len(DATA) - 512) == DATA[-512:]


def _chain(tmp_path):
    """A base and a leaf (FATtools), the leaf written again after the
    chain was opened (the VM ran on until its shutdown)."""
    size = 16 * MiB
    rnd = random.Random(9)
    fc = ig.FatChain(tmp_path / 'sr', size)
    fc.base('base.vhd', writes=[(0, rnd.randbytes(3 * MiB))])
    fc.child('leaf.vhd', writes=[(1 * MiB + 512, rnd.randbytes(5000)),
                                 (6 * MiB, rnd.randbytes(2 * MiB))])
    return fc, rnd


def _serve(fc):
    return dict((SR + '/' + layer.name, open(layer.path, 'rb').read())
                for layer in fc.layers)


def _read_all(chain):
    out = bytearray(chain.virtual_size)
    for e in chain.iter_extents():
        if e.kind == ext.DATA:
            out[e.offset:e.end] = chain.layers[e.layer].read_extent(
                e, 0, e.length)
    return bytes(out)


@pytest.mark.parametrize('grown', [False, True])
def test_reopen_leaf_in_few_round_trips(tmp_path, grown):
    fc, rnd = _chain(tmp_path)
    conn = Conn(_serve(fc))
    limits = limits_mod.Limits()
    container = remote.RemoteDirectoryContainer(conn, SR, 'leaf.vhd',
                                                limits)
    chain = layer_chain.resolve(container, 'leaf.vhd', limits)
    # The VM writes on: into a block it had (the file keeps its size),
    # or a new block (the file grows).
    fc._write(fc.leaf.path, [(6 * MiB + 4096, rnd.randbytes(700))] + (
        [(12 * MiB, rnd.randbytes(3000))] if grown else []))
    conn.server.files.update(_serve(fc))

    before = conn.writes()
    again = layer_chain.reopen_leaf(container, chain)
    assert again is not None
    # OPEN; FSTAT with every range the leaf's metadata was read from;
    # the footer at the new end when the file grew.
    assert conn.writes() - before == (3 if grown else 2)
    # The sector bitmaps came with it: folding reads nothing more.
    before = conn.writes()
    extents = list(again.fold(0, again.virtual_size))
    assert conn.writes() - before <= (1 if grown else 0)
    assert any(e.kind == ext.DATA for e in extents)
    assert _read_all(again) == bytes(fc.model.data)

    # Without the prefetch: a round trip per read (probes, both footers,
    # header, table, locators, bitmaps).
    plain = remote.RemoteDirectoryContainer(conn, SR, 'leaf.vhd', limits)
    plain.prefetches = False
    chain = layer_chain.resolve(plain, 'leaf.vhd', limits)
    before = conn.writes()
    again = layer_chain.reopen_leaf(plain, chain)
    list(again.fold(0, again.virtual_size))
    assert conn.writes() - before >= 8
