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

"""Apply a large layer with more than one reader process.

Reading a layer over SFTP is CPU bound in one Python process: paramiko's
transport thread (decrypting) and the thread that frames the SFTP
replies and writes the target take turns on the GIL, and a second
connection in the same process takes turns with them too.  Here the
DATA of a layer whose files hold ``ssh_reader_processes_min_mib`` or
more is read by ``ssh_reader_processes`` worker processes (``python -m
any2kvm_os.migration.procworker``), each with its own GIL and its own SSH
connection (the same host key check, the same key or agent; a password
is sent over the worker's standard input, never in its argv or
environment), each writing what it reads into the target, whose
descriptor it inherits.

The command's process folds the chain (:meth:`LayerChain.iter_extents`,
not announced: it reads none of the DATA) and follows the one rule of
what applying it writes, :func:`any2kvm_os.incremental.writes`, as
:func:`any2kvm_os.incremental._apply_one` does: it zeroes the runs to
zero itself, and hands the DATA pieces out in batches of :data:`BATCH`
bytes, :data:`AHEAD` per worker, the next to the first worker done:
runs of (file, file offset, length, target offset), each written by
:meth:`RawWriter.write_data` as ``_apply_one`` writes it (zero grains a
hole on a fresh target, zeroed otherwise): the target's bytes are those
of the one-process path.  The extents of one layer never overlap, so the
order of the writes does not matter.

Protocol: JSON lines.  To a worker: the set-up (host, settings, files,
target, the lease's name and operation), then ``{"batch": n, "runs":
[...], "until": t}``, ``{"until": t}`` (the lease was renewed) and
``{"end": true}``.
From it: ``{"done": n, "wire": bytes}`` (the bytes its connection has
read over the wire so far: the command's count grows by the
difference), ``{"log": level, "msg": text}`` (logged by the command),
``{"error": text, "kind": class}`` (one line, raised in the command as
that class of :mod:`any2kvm_os.exception`) and ``{"bye": true,
"wire": bytes}``.  A worker reconnects after a lost connection as the
command does (``ssh_retries``); a worker that dies, or an error, stops
the others and fails the layer (the next sync applies it again).  A
worker whose input ends without ``end`` (the command died) exits, and
is killed with the command besides (``PR_SET_PDEATHSIG``): one left
behind by a ``kill -9`` would write the batches it holds over what the
next sync writes.  A worker writes nothing past ``until``, the time the
command's lease is sure until (:class:`~.state.api.Fence`): a command
stopped past its lease (Ctrl-Z) stops its workers' writes too.
"""

import collections
import json
import logging
import os
import select
import subprocess
import sys
import time

import any2kvm_os
from any2kvm_os import exception
from any2kvm_os.formats import vhd
from any2kvm_os import incremental
from any2kvm_os.migration import procworker
from any2kvm_os import redact
from any2kvm_os.ssh import remotefile
from any2kvm_os.writers import raw

LOG = logging.getLogger(__name__)

#: Most DATA bytes handed to a worker at once ...
BATCH = 32 << 20
#: ... and fewest (a layer is cut in at least 4 batches per worker, so
#: that a worker slowed down by a busy host leaves its share to the
#: others).
MIN_BATCH = 1 << 20
#: Batches a worker holds.
AHEAD = procworker.AHEAD
#: Each DATA extent is cut in pieces of this size (the size
#: :func:`any2kvm_os.incremental.writes` cuts them to by default).
PIECE = raw.COPY_CHUNK
#: Longest wait for a worker to end after ``end`` or a kill.
_REAP = 10


def _remote_connection(chain, top, bottom):
    """The connection the layers ``top`` .. ``bottom`` are read over, if
    every one of them is a remote file read in place (the linear
    :meth:`LayerReader.read_extent`) over that same connection; None
    otherwise."""
    conn = None
    for j in range(top, bottom + 1):
        layer = chain.layers[j]
        view = getattr(layer, 'view', None)
        if not isinstance(view, remotefile.RemoteFile) or \
                not layer.reads_in_place():
            return None
        if conn is None:
            conn = view.connection
        elif view.connection is not conn:
            return None
    return conn


def chosen(chain, top, bottom, target):
    """The connection whose settings say to apply the layers ``top`` ..
    ``bottom`` of ``chain`` onto ``target`` with worker processes, or
    None: one process."""
    if type(target) is not raw.RawWriter:
        return None
    conn = _remote_connection(chain, top, bottom)
    if conn is None:
        return None
    st = conn.settings
    if st.reader_processes < 2:
        return None
    size = sum(chain.layers[j].view.size for j in range(top, bottom + 1))
    if size < st.reader_min_bytes:
        return None
    return conn


def apply_one(chain, i, target, progress, bottom=None, processes=True):
    """:func:`any2kvm_os.incremental._apply_one`, with worker processes
    when ``processes`` and the settings say so (:func:`chosen`)."""
    b = i if bottom is None else bottom
    conn = chosen(chain, i, b, target) if processes else None
    if conn is None:
        return incremental._apply_one(chain, i, target, progress,
                                      bottom=bottom)
    return Copy(conn, chain, i, b, target, progress).run()


def split(extents, top, fresh, is_base, batch=BATCH, piece=PIECE):
    """The work of the extents of layers ``top``.. (folded), as
    :func:`any2kvm_os.incremental.writes` says: yields ('zero', offset,
    length) for what the command zeroes itself and ('batch', runs, data
    bytes) for every :data:`BATCH` bytes of DATA, runs being [file index
    (layer - top), file offset, length, target offset], one per piece."""
    runs, total = [], 0
    for w in incremental.writes(extents, top, fresh, is_base, piece):
        kind, e = w[0], w[1]
        if kind == incremental.DATA:
            skip, n = w[3], w[4]
            runs.append([w[2] - top, e.file_offset + skip, n,
                         e.offset + skip])
            total += n
            if total >= batch:
                yield 'batch', runs, total
                runs, total = [], 0
        elif kind == incremental.ZERO:
            yield 'zero', e.offset, e.length
    if runs:
        yield 'batch', runs, total


def batch_size(files_size, processes):
    """The DATA bytes of a batch: a quarter of a worker's share of
    ``files_size`` bytes, within :data:`MIN_BATCH` .. :data:`BATCH`."""
    share = files_size // (4 * max(1, processes))
    return max(MIN_BATCH, min(BATCH, share))


def _worker_env(conn):
    """The environment of a worker: the command's, without the password
    variable (the password goes over the pipe) or the command's other
    secrets (:func:`any2kvm_os.redact.child_environ`), with this package
    importable."""
    env = redact.child_environ(conn.host_options.password_env or '')
    top = os.path.dirname(os.path.dirname(os.path.abspath(
        any2kvm_os.__file__)))
    path = env.get('PYTHONPATH')
    env['PYTHONPATH'] = top + (os.pathsep + path if path else '')
    return env


def _vhd_identity(layer):
    """A VHD layer's unique id (a worker checks the file it opens holds
    it: :func:`procworker._check_identity`); None for another format."""
    return layer.identity if isinstance(layer, vhd.VhdReader) else None


class _Worker(object):
    def __init__(self, number, proc):
        self.number = number
        self.proc = proc
        self.buf = b''
        self.pending = collections.deque()
        self.ended = False
        self.ready = False
        self.bye = False
        self.wire = 0

    def send(self, message):
        data = (json.dumps(message) + '\n').encode()
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError:
            pass     # it died: its output ends, and that is reported


class Copy(object):
    """One layer (or a fold of layers) applied by worker processes."""

    def __init__(self, conn, chain, top, bottom, target, progress=None):
        self.conn = conn
        self.chain = chain
        self.top, self.bottom = top, bottom
        self.target = target
        self.progress = progress
        self.workers = []
        self.written = 0
        #: DATA bytes read in this process (while the workers started).
        self.local = 0
        self.done_to = 0
        self.files_size = sum(chain.layers[j].view.size
                              for j in range(top, bottom + 1))
        #: The migration's lease check (the target's guard): checked here
        #: at every turn; its ``until`` goes with every batch, and again
        #: whenever the lease was renewed, so that the workers stop
        #: writing when this process stopped renewing it (stopped, or
        #: cut from the database: :class:`procworker._Lease`).
        guard = getattr(target, 'guard', None)
        self.fence = guard if hasattr(guard, 'workers_until') else None
        self.until_sent = None

    def _setup(self, password, jump_password=None):
        ho = self.conn.host_options
        st = dict(vars(self.conn.settings))
        st['sftp_streams'] = 1
        st['reader_processes'] = 1
        t = self.target
        return {
            'host': ho.as_dict(),
            'settings': st,
            'password': password,
            'jump_password': jump_password,
            # An LV (``padded``) is a block device: SFTP cannot size it,
            # its size is the one lvs gave.
            # Each file's VHD unique id: the worker opens it by name
            # again, and must find the same layer there (SM's GC renames
            # a parent to its child's name when it coalesces a leaf).
            'files': [{'path': self.chain.layers[j].view.path,
                       'name': self.chain.layers[j].view.name,
                       'size': self.chain.layers[j].view.size,
                       'device': bool(getattr(self.chain.layers[j].view,
                                              'padded', False)),
                       'identity': _vhd_identity(self.chain.layers[j])}
                      for j in range(self.top, self.bottom + 1)],
            'target': {'fd': t.fd, 'path': t.path, 'is_block': t.is_block,
                       'durable': t.durable,
                       'direct': t.direct,
                       'zero_modes': list(t._zero_modes)},
            'over_hole': self.fresh,
            'lease': ({'name': self.fence.lease.get('name'),
                       'operation': self.fence.lease.get('operation')}
                      if self.fence is not None else None),
            'log_level': logging.getLogger('any2kvm_os').getEffectiveLevel(),
        }

    def _start(self, n):
        setup = self._setup(self.conn.password_to_hand(),
                            self.conn.password_to_hand(jump=True))
        env = _worker_env(self.conn)
        for k in range(n):
            proc = subprocess.Popen(
                [sys.executable, '-m', procworker.__name__,
                 str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                pass_fds=(self.target.fd,), env=env, close_fds=True)
            w = _Worker(k + 1, proc)
            self.workers.append(w)
            w.send(setup)
        LOG.debug('%s: %d reader processes started', self.conn.label, n)

    def run(self):
        chain, t = self.chain, self.target
        layer = chain.layers[self.top]
        is_base, self.fresh = incremental.begin(chain, self.top,
                                                self.bottom, t)
        self.size = layer.virtual_size
        extents = chain.iter_extents(top=self.top, bottom=self.bottom,
                                     announced=False)
        n = self.conn.settings.reader_processes
        self.work = split(extents, self.top, self.fresh, is_base,
                          batch=batch_size(self.files_size, n))
        started = time.monotonic()
        self._start(n)
        try:
            self._loop()
        except BaseException:
            self._stop()
            raise
        self._reap()
        LOG.debug('%s: %d bytes of data read by %d processes in %.3f s '
                  '(%d of them by this one while they started; %d bytes '
                  'over the wire)', layer.view.name, self.written, n,
                  time.monotonic() - started, self.local,
                  sum(w.wire for w in self.workers))
        t.fresh = False
        return self.written

    def _next_batch(self):
        """The next batch of runs (the zero runs met on the way zeroed
        here), or None."""
        for item in self.work:
            if item[0] == 'zero':
                self.target.zero_range(item[1], item[2])
                continue
            self.written += item[2]
            return item[1]
        return None

    def _feed(self):
        exhausted = self.work is None
        serial = getattr(self, '_serial', 0)
        for w in self.workers:
            while not exhausted and not w.ended and w.ready and \
                    len(w.pending) < AHEAD:
                runs = self._next_batch()
                if runs is None:
                    exhausted = True
                    self.work = None
                    break
                serial += 1
                w.pending.append((serial, runs[0][3],
                                  sum(r[2] for r in runs)))
                message = {'batch': serial, 'runs': runs}
                if self.fence is not None:
                    message['until'] = self.fence.workers_until()
                w.send(message)
        self._serial = serial
        if exhausted:
            self.work = None
            for w in self.workers:
                if not w.ended:
                    w.ended = True
                    w.send({'end': True})

    def _silence(self):
        st = self.conn.settings
        return st.connect_timeout + st.io_timeout + st.retry_max_seconds

    def _local(self):
        """Read and write one batch in this process (while no worker
        is ready yet); False when there is none left."""
        runs = self._next_batch()
        if runs is None:
            return False
        views = [self.chain.layers[j].view
                 for j in range(self.top, self.bottom + 1)]
        procworker.announce(views, runs)
        for k, file_offset, length, offset in runs:
            data = self.chain.layers[self.top + k].read(file_offset, length)
            self.target.write_data(offset, data, over_hole=self.fresh)
        self.local += sum(r[2] for r in runs)
        return True

    def _renewed(self):
        """Check the lease (raises when it is lost); tell the workers
        when it was renewed."""
        if self.fence is None:
            return
        self.fence()
        until = self.fence.workers_until()
        if self.until_sent is None or until > self.until_sent + 1:
            self.until_sent = until
            for w in self.workers:
                if not w.ended:
                    w.send({'until': until})

    def _loop(self):
        last = time.monotonic()
        while True:
            self._renewed()
            self._feed()
            live = [w for w in self.workers if not w.bye]
            if not live:
                # Every worker done, or none could start: what is left
                # is read here.
                while self.work is not None and self._local():
                    pass
                self.work = None
                return
            wait = 1.0
            if self.work is not None and not any(w.ready for w in live):
                # The workers are still starting (a Python, a login):
                # this process reads meanwhile.
                if self._local():
                    last = time.monotonic()
                    wait = 0
                else:
                    self.work = None
                    continue
            fds = {w.proc.stdout.fileno(): w for w in live}
            ready, _, _ = select.select(list(fds), [], [], wait)
            if not ready and wait:
                if time.monotonic() - last > self._silence():
                    raise exception.SshError(
                        host=self.conn.label, reason='the reader processes '
                        'said nothing for %d s: stopped' % self._silence())
                continue
            last = time.monotonic()
            for fd in ready:
                self._receive(fds[fd])
            self._report()

    def _receive(self, w):
        data = os.read(w.proc.stdout.fileno(), 1 << 16)
        if not data:
            w.proc.wait()
            code = w.proc.returncode
            raise exception.SshError(
                host=self.conn.label, reason='reader process %d ended '
                '(%s) while copying %s' % (
                    w.number, 'killed by signal %d' % -code if code < 0
                    else 'exit status %d' % code,
                    self.chain.layers[self.top].view.name))
        w.buf += data
        while b'\n' in w.buf:
            line, w.buf = w.buf.split(b'\n', 1)
            self._message(w, json.loads(line))

    def _count(self, w, wire):
        if wire > w.wire:
            self.conn.count(wire - w.wire)
            w.wire = wire

    def _message(self, w, m):
        if 'ready' in m:
            w.ready = True
        elif 'done' in m:
            self._count(w, m['wire'])
            if w.pending and w.pending[0][0] == m['done']:
                w.pending.popleft()
        elif 'log' in m:
            LOG.log(m['log'], 'reader process %d: %s', w.number, m['msg'])
        elif 'error' in m and not w.ready:
            # It could not log in or open the files (as a stream beside
            # the first connection, ssh_sftp_streams): the others, and
            # this process, read its share.
            w.bye = w.ended = True
            LOG.warning('%s: reading with %d reader process(es) instead '
                        'of %d: reader process %d could not start: %s',
                        self.conn.label,
                        len([x for x in self.workers if not x.bye]),
                        len(self.workers), w.number, m['error'])
        elif 'error' in m:
            cls = getattr(exception, m.get('kind') or '', None)
            if not (isinstance(cls, type) and issubclass(
                    cls, (exception.Any2KvmError, exception.LeaseLost))):
                cls = exception.Any2KvmError
            raise cls(m['error'])
        elif 'bye' in m:
            self._count(w, m['wire'])
            w.bye = True

    def _report(self):
        if not self.progress:
            return
        pending = [p for w in self.workers for p in w.pending]
        to = min(p[1] for p in pending) if pending else (
            self.size if self.work is None else self.done_to)
        if to > self.done_to:
            self.done_to = to
            # The data of the batches handed out and not yet written.
            self.progress(to, self.size,
                          self.written - sum(p[2] for p in pending))

    def _reap(self):
        for w in self.workers:
            try:
                w.proc.stdin.close()
            except OSError:
                pass
            try:
                w.proc.wait(_REAP)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.proc.stdout.close()

    def _stop(self):
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
        self._reap()
