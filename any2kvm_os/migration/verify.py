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

"""``migration verify``: each target read back and compared, byte for
byte, with its disk read again from the host in full.

A sync and a cutover apply layers one at a time, and only the layers a
target lacks (the fingerprints of the state decide).  Verification does
not trust that bookkeeping: it folds the disk's whole chain as found on
the host now, from the base, and compares every byte of the disk with the
target.  The fold is the copy loop of the sync itself
(:func:`any2kvm_os.incremental._apply_one`, the fold of layers ``top``..
base, as the engine rewrites a disk whose chain changed), with a
:class:`Comparer` where the target writer would be: what would be written
is compared instead, and what would be zeroed (every range no layer holds
data for) is read and checked to be zeros (a regular file's holes are
skipped with SEEK_DATA; they read as zeros).

What it is compared with:

- after a sync (status ``synced``): the layers the sync applied, every
  layer of the chain but the running VM's leaf, once the host's chain is
  checked to hold no layer the target lacks (else: sync first); a disk
  on an LVM SR is read, as the sync read it, from the VDI the last
  sync's snapshot took of it (attached read-only to dom0);
- after a cutover (status ``done``): the whole chain of each disk of the
  halted VM, whatever the host made of it since (its garbage collector
  may have merged the layers: the disk's bytes are the same).  Refused when
  the VM runs again (its disks have moved on), when the cutover's
  ``--fix`` changed the targets (they differ by design), and for volumes a
  server uses.

The command reads every allocated byte of the disks over SSH again (as
much as a first sync), and the whole of each target here.  It writes
nothing, on the host or in the targets; it holds the migration's lease,
so that no sync or cutover runs meanwhile.
"""

import contextlib
import errno
import functools
import logging
import os
import stat
import time

from any2kvm_os import exception
from any2kvm_os import incremental
from any2kvm_os.migration import engine

LOG = logging.getLogger(__name__)

#: The unit a difference is counted in (and the ranges reported).
GRAIN = 4096
#: The most bytes of a target read at once to check zeros.
CHUNK = 4 << 20
#: The differing ranges reported per disk (all are counted).
MAX_RANGES = 8

_ZEROS = bytes(CHUNK)

#: The statuses a migration is verified in.
VERIFIABLE = ('synced', 'done')


class Comparer(object):
    """A target of the copy loop that writes nothing: the bytes the fold
    of a chain would write are compared with those of the file or block
    device ``path``, the runs it would zero are read and checked to be
    zeros.  Counts ``compared`` bytes (``data`` of them the chain's
    DATA), ``differing`` bytes (whole :data:`GRAIN` grains of the disk,
    or the part of one a piece covers) and the first :data:`MAX_RANGES`
    differing ranges (merged)."""

    #: Never a fresh file: every run the chain does not hold is checked.
    fresh = False

    def __init__(self, path, exact=None):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(self.fd)
            self.is_block = stat.S_ISBLK(st.st_mode)
            self.size = (os.lseek(self.fd, 0, os.SEEK_END) if self.is_block
                         else st.st_size)
        except OSError:
            os.close(self.fd)
            raise
        #: The disk's size, as the copy loop says it (:meth:`resize`).
        self.expected = None
        self.compared = 0
        self.data = 0
        self.differing = 0
        self.ranges = []
        self._holes = not self.is_block
        #: Whether the target must be exactly the disk's size (a raw
        #: file), else at least (a device, a volume's file); by default,
        #: whether it is a regular file.
        self.exact = not self.is_block if exact is None else exact

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def resize(self, size):
        self.expected = size

    def size_problem(self):
        """Why the target's size does not fit the disk, or None: a raw
        file is exactly the disk's size, a device or volume at least."""
        if self.expected is None:
            return None
        if self.size == self.expected or (
                not self.exact and self.size > self.expected):
            return None
        return 'the target is %d bytes, the disk %d' % (self.size,
                                                        self.expected)

    def _read(self, offset, n):
        """``n`` bytes of the target at ``offset``; past its end, zeros
        (a short target is reported by :meth:`size_problem`)."""
        got = os.pread(self.fd, n, offset)
        if len(got) < n:
            got += bytes(n - len(got))
        return got

    def _differ(self, start, end):
        self.differing += end - start
        last = self.ranges[-1] if self.ranges else None
        if last is not None and last[1] == start:
            last[1] = end
        elif len(self.ranges) < MAX_RANGES:
            self.ranges.append([start, end])

    def _compare(self, offset, want, got):
        """Count the grains of ``got`` (read at ``offset``) that are not
        ``want``."""
        if want == got:
            return
        n = len(want)
        pos = 0
        # Grains as the disk cuts them: the first may be short.
        step = GRAIN - offset % GRAIN
        while pos < n:
            end = min(n, pos + step)
            if want[pos:end] != got[pos:end]:
                self._differ(offset + pos, offset + end)
            pos, step = end, GRAIN

    def write_data(self, offset, data, over_hole=False):
        want = bytes(data) if not isinstance(data, bytes) else data
        self._compare(offset, want, self._read(offset, len(want)))
        self.compared += len(want)
        self.data += len(want)

    def _data_runs(self, offset, end):
        """The runs of [offset, end) that may hold data: all of it on a
        block device; a regular file's data (its holes read as zeros)."""
        if not self._holes:
            yield offset, end
            return
        pos = offset
        while pos < end:
            try:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    return          # only holes from pos on
                if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    self._holes = False
                    yield pos, end
                    return
                raise
            if start >= end:
                return
            stop = min(end, os.lseek(self.fd, start, os.SEEK_HOLE))
            yield start, stop
            pos = stop

    def zero_range(self, offset, length):
        end = offset + length
        for start, stop in self._data_runs(offset, min(end, self.size)):
            pos = start
            while pos < stop:
                n = min(CHUNK, stop - pos)
                want = _ZEROS if n == CHUNK else bytes(n)
                self._compare(pos, want, self._read(pos, n))
                pos += n
        self.compared += length

    def report(self):
        return {'target_size': self.size, 'compared': self.compared,
                'data': self.data, 'differing': self.differing,
                'ranges': [list(r) for r in self.ranges],
                'size_problem': self.size_problem()}


def _refusal(m):
    """Why migration ``m`` cannot be verified now, or None."""
    if m['status'] not in VERIFIABLE:
        return ('is %s: a migration is verified after a sync or a cutover '
                '(status synced or done)' % m['status'])
    c = m.get('cutover')
    if m['status'] == 'done' and c:
        fixed = engine.fixed_by_cutover(c.get('details'))
        if fixed:
            return ('its cutover\'s --fix changed the targets (%s): they '
                    'differ from the source by design; verify before the '
                    'cutover, or cut over without --fix' % fixed)
    return None


def verify(store, name, limits=None, args=None, connect=None, cloud=None,
           dest=None, progress=None):
    """Compare each target of migration ``name`` with its disk read again
    from the host (see the module).  Returns {'name', 'against',
    'targets': [{index, target_ref, identical, ...counts}], 'bytes_read',
    'seconds'}; raises :class:`~.engine.MigrationError` naming the first
    difference when a target differs.  Runs as a TaskFlow flow recorded
    with the migration (``show``'s "last run"): connect, discover, a
    task per disk (its figures), judge (fails on a difference)."""
    started = time.time()
    flows = engine._flows()
    with engine._Held(store, name, 'verify'):
        m = engine._get(store, name)
        why = _refusal(m)
        if why:
            raise engine.MigrationError(name=name, reason=why)
        after_cutover = m['status'] == 'done'
        destination = engine._destination(m, cloud, dest)
        disks = sorted(m['disks'], key=lambda d: d['index'])
        run = {'out': [], 'host': None, 'read0': 0}
        read = 0

        def connect_host():
            destination.check()
            run['host'] = engine._connect(m['location'], limits, args,
                                          connect, m=m,
                                          fence=store.fence(name))
            run['read0'] = run['host'].bytes_read
            return {'host': str(run['host'].label)}

        def discover():
            found = engine._discover(run['host'],
                                     m['target_options']['vm_uuid'],
                                     [d['source_id'] for d in disks])
            if after_cutover and found.power_state != 'halted':
                raise engine.MigrationError(
                    name=name, reason='the source VM is %s: its disks have '
                    'moved on since the cutover' % found.power_state)
            run['infos'] = engine._match(name, m, found)
            if not after_cutover:
                _from_last_snapshot(name, m, run['host'], run['infos'])
            run['paths'] = run['stack'].enter_context(
                destination.read_paths(disks))
            return {'power_state': found.power_state}

        def compare(disk):
            opened = run['host'].open_disk(run['infos'][disk['index']])
            report = _verify_disk(name, disk, opened,
                                  run['paths'][disk['index']],
                                  destination.exact_size, after_cutover,
                                  progress)
            run['out'].append(report)
            return report

        def judge():
            bad = [d for d in run['out'] if not d['identical']]
            if bad:
                raise engine.MigrationError(name=name, reason='; '.join(
                    _difference(d) for d in bad))
            return {'identical': len(run['out'])}

        steps = [flows.Step('connect', connect_host),
                 flows.Step('discover', discover)] + [
            flows.Step('verify-disk-%d' % d['index'],
                       functools.partial(compare, d)) for d in disks] + [
            flows.Step('judge', judge)]
        with contextlib.ExitStack() as stack:
            run['stack'] = stack
            try:
                flows.run(store, name, 'verify', flows.flow('verify', steps))
            finally:
                if run['host'] is not None:
                    read = run['host'].bytes_read - run['read0']
                    run['host'].close()
    return {'name': name, 'against': 'the halted VM\'s disks'
            if after_cutover else 'the layers of the last sync',
            'targets': run['out'], 'bytes_read': read,
            'seconds': round(time.time() - started, 3)}


def _from_last_snapshot(name, m, host, infos):
    """After a sync, each disk on an LVM SR is read from the VDI the
    last sync's snapshot took of it, as the sync read it (:meth:`engine.
    _Run._read_from`): the same layers, and none of the running VM's LVs
    held open for the whole read.  ``infos`` ({index: DiskInfo}) is
    changed in place."""
    if not any(engine.on_lvm(info) for info in infos.values()):
        return
    taken = [s for s in m['snapshots'] if not s.get('removed_at')]
    if not taken:
        raise engine.MigrationError(name=name, reason='no snapshot of the '
                                    'last sync is recorded: sync first')
    snap = max(taken, key=lambda s: s['created_at'] or 0)['snapshot_id']
    try:
        infos.update(engine.snapshot_infos(host, snap, infos))
    except exception.Any2KvmError as e:
        raise engine.MigrationError(
            name=name, reason='the last sync\'s snapshot %s, whose disks '
            'on an LVM SR are compared, cannot be read (%s): sync first'
            % (snap, engine._one_line(e)))


def _verify_disk(name, disk, opened, path, exact, after_cutover, progress):
    try:
        chain = opened.chain
        n = len(chain.layers)
        top = 0 if after_cutover else 1
        if not after_cutover:
            _order, _names, stable = engine.stable_layers(chain, False)
            how, k = engine._plan(disk['applied'], stable)
            if how != 'ok' or k != len(stable):
                raise engine.MigrationError(
                    name=name, reason='disk %d: the host holds layers its '
                    'target lacks (a snapshot since the last sync, or a '
                    'sync cut short): sync first' % disk['index'])
        if top >= n:
            raise engine.MigrationError(
                name=name, reason='disk %d: nothing applied to compare '
                '(sync first)' % disk['index'])
        comparer = Comparer(path, exact)
        try:
            bar = engine._layer_bar(progress, disk, 'verify',
                                    chain.layers[top])
            try:
                incremental._apply_one(chain, top, comparer, bar,
                                       bottom=n - 1)
            except BaseException:
                engine._layer_done(progress, ok=False)
                raise
            engine._layer_done(progress)
        finally:
            comparer.close()
    finally:
        opened.close()
    report = comparer.report()
    report.update(index=disk['index'], target_ref=disk['target_ref'],
                  layers=n - top, virtual_size=comparer.expected,
                  identical=not report['differing'] and
                  not report['size_problem'])
    LOG.info('disk %d: %s', disk['index'], 'identical' if
             report['identical'] else _difference(report))
    return report


def _difference(d):
    parts = []
    if d['size_problem']:
        parts.append(d['size_problem'])
    if d['differing']:
        first = d['ranges'][0]
        parts.append('%d byte(s) differ, the first at offset %d (%d bytes '
                     'there)' % (d['differing'], first[0],
                                 first[1] - first[0]))
    return 'disk %d (%s) differs from the host\'s: %s' % (
        d['index'], d['target_ref'], ', '.join(parts))
