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

"""Incremental apply: bring a target up to date layer by layer.

Minimal-downtime migration copies a running VM's disk in steps: the base
and every snapshot below the active layer while the VM runs, then, after
shutdown, only the last delta.  Each step applies, onto the existing target
(a raw file or a block device), exactly the ranges the selected layers
define: DATA is written, ZERO is zeroed (it must overwrite what older
layers left), and what the layers leave to their parents is not touched.

A small JSON state file records which layers the target holds, so the next
run knows where to continue and refuses a layer whose parent is not the
last one applied.  A layer is recorded as ``partial`` while it is being
written: a run that fails halfway says so, and applying that layer again
completes the target (every write is absolute, so re-applying is
harmless).
"""

import datetime
import fcntl
import json
import logging
import os
import queue
import stat
import tempfile
import threading

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os.writers import raw

LOG = logging.getLogger(__name__)

STATE_SUFFIX = '.any2kvm-state.json'
STATE_VERSION = 1
MAX_STATE_BYTES = 1 << 20
#: Chunks read ahead of the writer thread (each at most COPY_CHUNK).
WRITE_QUEUE = 4
#: How long the reader waits for room before looking at the writer again.
_POLL = 0.5


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds')


def state_path(target, state_dir=None):
    """Where the state of ``target`` lives: beside it, or in ``state_dir``
    (required for block devices, whose directory is /dev)."""
    if state_dir:
        return os.path.join(state_dir,
                            os.path.basename(target) + STATE_SUFFIX)
    try:
        is_block = stat.S_ISBLK(os.stat(target).st_mode)
    except FileNotFoundError:
        is_block = False
    if is_block:
        raise exception.TargetError(
            path=target, reason='a block device needs --state-dir for its '
            'incremental state')
    return target + STATE_SUFFIX


class State(object):
    """What a target holds: layers applied (base first), a partial one."""

    def __init__(self, path, target):
        self.path = path
        self.target = os.path.abspath(target)
        self.applied = []
        self.partial = None
        self.virtual_size = None

    @classmethod
    def load(cls, path, target):
        state = cls(path, target)
        try:
            with open(path, 'rb') as f:
                raw_state = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return state
        bad = exception.TargetError(path=path, reason='not a valid '
                                    'any2kvm state file')
        if len(raw_state) > MAX_STATE_BYTES:
            raise bad
        try:
            data = json.loads(raw_state)
        except ValueError:
            raise bad
        if (not isinstance(data, dict)
                or data.get('version') != STATE_VERSION
                or not isinstance(data.get('applied'), list)):
            raise bad
        if data.get('target') != state.target:
            raise exception.TargetError(
                path=path, reason='records target %s, not %s'
                % (data.get('target'), state.target))
        state.applied = data['applied']
        state.partial = data.get('partial')
        state.virtual_size = data.get('virtual_size')
        return state

    def save(self):
        data = {'version': STATE_VERSION, 'target': self.target,
                'virtual_size': self.virtual_size, 'applied': self.applied,
                'partial': self.partial}
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix='.any2kvm-state-', dir=directory)
        try:
            with os.fdopen(fd, 'w') as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @property
    def last_id(self):
        return self.applied[-1]['id'] if self.applied else None


def _select(chain, selector, what):
    """Leaf-first index of the layer ``selector`` names (id or name)."""
    for i, layer in enumerate(chain.layers):
        names = {layer.identity, chain.member_names[i],
                 os.path.basename(chain.names[i]), chain.names[i]}
        if selector in names:
            return i
    raise exception.Any2KvmError(
        '%s: no layer %r in this chain (give a layer name or id; see '
        '"any2kvm info")' % (what, selector))


def plan(chain, state, finish=False, start_at=None, stop_at=None):
    """Leaf-first indexes to apply, oldest first; refuses broken orders."""
    n = len(chain.layers)
    ids = [layer.identity for layer in chain.layers]
    if state.last_id is not None:
        if state.last_id not in ids:
            raise exception.ChainError(
                path=state.path, reason='the target holds layer %s, which '
                'is not in this chain' % state.last_id)
        first = ids.index(state.last_id) - 1
    else:
        first = n - 1
    if state.partial:
        # The partly written layer must be applied again first.
        partial = state.partial.get('id')
        if partial in ids and ids.index(partial) != first:
            raise exception.ChainError(
                path=state.path, reason='layer %s was partly applied but is '
                'not the next one' % partial)
    if start_at is not None:
        s = _select(chain, start_at, '--start-at')
        if state.last_id is not None:
            if s > first:
                return []  # already applied: re-running is harmless
            if s != first:
                raise exception.ChainError(
                    path=chain.names[s], reason='its parent is not the last '
                    'layer applied to the target (%s); apply %s first'
                    % (state.last_id, chain.names[first]))
        elif s != n - 1:
            LOG.warning('Starting at %s without state: the target must '
                        'already hold its parent', chain.names[s])
        first = s
    last = 0 if finish else 1
    if stop_at is not None:
        last = _select(chain, stop_at, '--stop-at')
    if first < last or first < 0:
        return []
    return list(range(first, last - 1, -1))


def apply_layers(disk, target_path, finish=False, start_at=None,
                 stop_at=None, state_dir=None, progress=None):
    """Apply the selected layers of ``disk`` onto ``target_path``.

    Returns (applied, remaining): layer names applied now, and layers still
    to come (the leaf, when not finishing).
    """
    chain = disk.chain
    if chain is None:
        raise exception.Any2KvmError(
            '%s: incremental apply needs random access to the layers: give '
            'the disk files or an uncompressed tar (decompress the archive '
            'first)' % disk.name)
    spath = state_path(target_path, state_dir)
    target = raw.RawWriter.open_in_place(target_path)
    try:
        try:
            fcntl.flock(target.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise exception.TargetError(
                path=target_path, reason='another any2kvm run is applying '
                'to this target')
        state = State.load(spath, target_path)
        if state.last_id is None and not target.fresh:
            LOG.info('No state for %s: it is treated as empty', target_path)
        if state.virtual_size is not None:
            target.size = state.virtual_size
        todo = plan(chain, state, finish, start_at, stop_at)
        applied = []
        for i in todo:
            layer = chain.layers[i]
            name = chain.names[i]
            state.partial = {'id': layer.identity, 'name': name,
                             'started_at': _now()}
            state.save()
            _apply_one(chain, i, target, progress)
            target.sync()
            state.applied.append({'id': layer.identity, 'name': name,
                                  'virtual_size': layer.virtual_size,
                                  'applied_at': _now()})
            state.partial = None
            state.virtual_size = layer.virtual_size
            state.save()
            applied.append(name)
            LOG.info('Applied %s onto %s', name, target_path)
        first_left = (todo[-1] - 1) if todo else None
        if first_left is None:
            ids = [lay.identity for lay in chain.layers]
            first_left = (ids.index(state.last_id) - 1
                          if state.last_id in ids else len(ids) - 1)
        remaining = [chain.names[j] for j in range(first_left, -1, -1)]
        return applied, remaining
    except (exception.Any2KvmError, OSError) as e:
        if 'state' in locals() and state.partial:
            what = str(e) if isinstance(e, exception.Any2KvmError) else \
                '%s: %s' % (target_path, e.strerror or e)
            raise exception.Any2KvmError(
                '%s (layer %s was partly applied: run again to re-apply '
                'it)' % (what, state.partial['name']))
        raise
    finally:
        target.close()


class _Writer(object):
    """Writes to ``target`` in a thread of its own, so that reading the
    next chunk (over SSH) overlaps writing this one.

    At most ``depth`` chunks wait (bounded memory).  A write that fails
    stops the thread; the error is raised in the reader's thread at its
    next :meth:`put` or at :meth:`finish`.  :meth:`finish` (after the
    last put) or :meth:`abort` (on the reader's failure) always joins
    the thread; it is a daemon besides, so it never holds the process.
    """

    _STOP = object()

    def __init__(self, target, depth=WRITE_QUEUE):
        self.target = target
        self.queue = queue.Queue(maxsize=max(1, depth))
        self.error = None
        self._abort = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name='any2kvm-target-writer')
        self.thread.start()

    def _run(self):
        while True:
            item = self.queue.get()
            if item is self._STOP:
                return
            if self._abort.is_set() or self.error is not None:
                continue        # drained, not written
            try:
                if item[0] == 'data':
                    self.target.write_data(item[1], item[2],
                                           over_hole=item[3])
                else:
                    self.target.zero_range(item[1], item[2])
            except BaseException as e:
                self.error = e

    def _check(self):
        if self.error is not None:
            raise self.error
        if not self.thread.is_alive():
            raise exception.Any2KvmError('the target writer stopped')

    def put(self, item):
        while True:
            self._check()
            try:
                self.queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def finish(self):
        """Wait for every queued write; raises the writer's error."""
        self.put(self._STOP)
        self.thread.join()
        self._check_error()

    def _check_error(self):
        if self.error is not None:
            raise self.error

    def abort(self):
        """Drop what waits and join the thread (the reader failed)."""
        self._abort.set()
        while self.thread.is_alive():
            try:
                self.queue.put(self._STOP, timeout=_POLL)
                break
            except queue.Full:
                continue
        self.thread.join()


#: What :func:`writes` yields: a piece of a DATA extent to read and
#: write, a run to zero, the end of an extent.
DATA, ZERO, END = 'data', 'zero', 'end'


def begin(chain, top, bottom, target):
    """Ready ``target`` for the fold of the layers ``top`` .. ``bottom``
    (resized to the top layer's virtual size); (is_base, fresh): whether
    ``bottom`` has no parent, and whether the target is then a fresh
    file whose holes read as zeros."""
    is_base = chain.layers[bottom].parent_ref is None
    fresh = target.fresh and is_base
    target.resize(chain.layers[top].virtual_size)
    return is_base, fresh


def writes(extents, top, fresh, is_base, piece=raw.COPY_CHUNK):
    """The one rule of what applying the folded ``extents`` of layers
    ``top``.. writes, in order (:func:`_apply_one` reads and writes it in
    this process, :mod:`.migration.procread` hands the DATA to reader
    processes):

    - ``(DATA, extent, layer, skip, n)`` for each piece of at most
      ``piece`` bytes of a DATA extent: its bytes ``[skip, skip + n)``,
      held by layer ``layer`` of the chain, go to ``extent.offset +
      skip``;
    - ``(ZERO, extent)``: the target zeroes ``extent`` (a ZERO run hides
      older data; below a base, an unallocated run is nothing, so zero
      too), unless the target is ``fresh`` (a hole already);
    - ``(END, extent)`` after each extent (progress)."""
    data_kind, zero_kind = ext.DATA, ext.ZERO
    zero_all = not fresh and is_base
    for e in extents:
        kind = e.kind
        if kind == data_kind:
            layer = e.layer if e.layer is not None else top
            length = e.length
            if length <= piece:
                if length:
                    yield DATA, e, layer, 0, length
            else:
                done = 0
                while done < length:
                    n = min(piece, length - done)
                    yield DATA, e, layer, done, n
                    done += n
        elif zero_all or (kind == zero_kind and not fresh):
            yield ZERO, e
        yield END, e


def _apply_one(chain, i, target, progress, bottom=None):
    """Apply layer ``i`` onto ``target``; with ``bottom``, the fold of the
    layers ``i`` .. ``bottom`` as if they were one layer (the migration
    engine rewrites a target from the base this way when a chain changed
    behind its back).  Returns the bytes of DATA written.

    The layers are read in this thread and written in another
    (:class:`_Writer`), at most :data:`WRITE_QUEUE` chunks apart; every
    write is done (or has failed, and its error is raised here) when
    this returns.  The caller flushes the target."""
    if bottom is None:
        bottom = i
    is_base, fresh = begin(chain, i, bottom, target)
    size = chain.layers[i].virtual_size
    written = 0
    writer = _Writer(target)
    try:
        for w in writes(chain.iter_extents(top=i, bottom=bottom), i,
                        fresh, is_base):
            kind, e = w[0], w[1]
            if kind == DATA:
                skip, n = w[3], w[4]
                data = chain.layers[w[2]].read_extent(e, skip, n)
                if not isinstance(data, bytes):
                    data = bytes(data)  # a buffer a reader may reuse
                writer.put(('data', e.offset + skip, data, fresh))
                written += n
            elif kind == ZERO:
                writer.put(('zero', e.offset, e.length))
            elif progress:
                progress(e.end, size, written)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    target.fresh = False
    return written
