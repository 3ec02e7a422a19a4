#!/usr/bin/env python3
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

"""Benchmark ``any2kvm convert`` on every source format, in one run.

Sections (see benchmarks/README.rst; ``--only`` picks some):

vhd-dynamic, vhd-fixed, vhdx, vmdk-sparse, vmdk-stream, qcow2
    one raw disk with realistic data (half random, half text) is turned
    into each format by qemu-img; any2kvm against ``qemu-img convert -f
    <fmt> -O raw``, and against the same with ``-t writeback`` (which
    fdatasyncs its output, as any2kvm does);
vhd-chain
    a 3-level differencing chain made with FATtools, any2kvm against a
    plain ``cp --sparse=always`` of the flattened result (and the copy
    followed by ``sync -d``);
vhd-tgz
    the same chain packed as a XenServer tgz;
memory
    a 100 GiB dynamic VHD with a few MiB of data: peak memory;

then a summary table with PASS/MISS against the targets.

Every figure is the median of ``--runs`` timed runs (default 5), each
after ``sync`` (the previous run's dirty pages are not charged to the
next).  The target of every reader is the issue's: median any2kvm time at
most 0.75x ``qemu-img convert -t writeback`` (which, like any2kvm, flushes
its output before it reports success); plain ``qemu-img convert`` (no
flush) is shown beside it.  The data extents (SEEK_DATA/SEEK_HOLE) of
any2kvm's output are compared exactly with qemu-img's.  ``--baseline DIR``
also times the code of another checkout (say, main before a change) in the
same run, interleaved with the code under test, both started the same way.

Exit status: 0 when every conversion ran and every output had the expected
content (targets missed or not); 1 when a conversion failed or an output
differed; 2 for a usage or set-up error.
"""

import argparse
import errno
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from tests.lib import cli  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Bump when a generated layout changes, so cached images are rebuilt.
GEN_VERSION = 4

PIECE = 4 * MiB         # data piece of the single image and the chain base
VHD_BLOCK = 2 * MiB     # VHD block size (qemu-img and FATtools default)
DIGEST_CHUNK = 1 * MiB

TARGET_CHAIN_RATIO = 1.5
#: The issue's target: median any2kvm time / median qemu-img convert -t
#: writeback time, for every reader.
TARGET_WB_RATIO = 0.75
#: Starts any2kvm from the checkout given first (--baseline): the code
#: under test is started the same way then, so both pay the same start-up.
FROM_TREE = ('import sys; sys.path.insert(0, sys.argv.pop(1)); '
             'from any2kvm_os.cmd.any2kvm import main; '
             'sys.exit(main(sys.argv[1:]))')
TARGET_RSS_MIB = 200
#: What the Glance target does with a disk read in one pass: convert it
#: to a scratch file that is streamed and deleted, never flushed
#: (RawWriter.open(durable=False)).  Target: at most this times plain
#: qemu-img convert (which does not flush either).
TARGET_SCRATCH_RATIO = 1.0
FROM_TREE_SCRATCH = (
    'import sys; sys.path.insert(0, sys.argv.pop(1)); '
    'from any2kvm_os import api, limits; '
    'from any2kvm_os.writers import raw; '
    'vm = api.open_location(sys.argv[1], limits.Limits()); '
    'w = raw.RawWriter.open(sys.argv[2], durable=False); '
    'vm.disks[0].write_to(w); w.commit(); vm.close()')

#: The single-image sections: the file made from the common raw disk, the
#: qemu-img format name, the options that make it, and the target for
#: best any2kvm time / best qemu-img time (None: reported as info only).
IMAGE_CASES = {
    'vhd-dynamic': {
        'file': 'dynamic.vhd', 'fmt': 'vpc', 'target': 1.0,
        'create': ['-O', 'vpc', '-o', 'subformat=dynamic,force_size=on'],
        'title': 'dynamic VHD'},
    'vhd-fixed': {
        'file': 'fixed.vhd', 'fmt': 'vpc', 'target': 1.0,
        'create': ['-O', 'vpc', '-o', 'subformat=fixed,force_size=on'],
        'title': 'fixed VHD'},
    'vhdx': {
        'file': 'dynamic.vhdx', 'fmt': 'vhdx', 'target': 1.0,
        'create': ['-O', 'vhdx'],
        'title': 'dynamic VHDX'},
    'vmdk-sparse': {
        'file': 'sparse.vmdk', 'fmt': 'vmdk', 'target': 1.0,
        'create': ['-O', 'vmdk', '-o', 'subformat=monolithicSparse'],
        'title': 'monolithicSparse VMDK'},
    'vmdk-stream': {
        'file': 'stream.vmdk', 'fmt': 'vmdk', 'target': 1.2,
        'create': ['-O', 'vmdk', '-o', 'subformat=streamOptimized'],
        'title': 'streamOptimized VMDK (deflate grains)'},
    'qcow2': {
        'file': 'disk.qcow2', 'fmt': 'qcow2', 'target': None,
        'create': ['-O', 'qcow2'],
        'title': 'qcow2'},
}

SECTIONS = ['vhd-dynamic', 'vhd-fixed', 'vhd-chain', 'vhd-tgz', 'vhdx',
            'vmdk-sparse', 'vmdk-stream', 'qcow2', 'memory']
#: --only also takes these names for groups of sections (the first two
#: are the section names of the former bench_vhd.py).
SECTION_ALIASES = {
    'single': ['vhd-dynamic', 'vhd-fixed'],
    'chain': ['vhd-chain', 'vhd-tgz'],
    'vhd': ['vhd-dynamic', 'vhd-fixed', 'vhd-chain', 'vhd-tgz'],
    'vmdk': ['vmdk-sparse', 'vmdk-stream'],
    'all': SECTIONS,
}

TIME_BIN = '/usr/bin/time'


class BenchError(Exception):
    """A conversion failed or produced the wrong content."""


# --------------------------------------------------------------------------
# small helpers

def parse_size(text):
    text = text.strip().upper().rstrip('B').rstrip('I')
    mult = {'K': KiB, 'M': MiB, 'G': GiB, 'T': 1 << 40}
    if text and text[-1] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def fmt_size(n):
    if n is None:
        return '-'
    for unit, div in (('GiB', GiB), ('MiB', MiB), ('KiB', KiB)):
        if abs(n) >= div:
            return '%.2f %s' % (n / div, unit)
    return '%d B' % n


def size_tag(n):
    for unit, div in (('T', 1 << 40), ('G', GiB), ('M', MiB), ('K', KiB)):
        if n % div == 0:
            return '%d%s' % (n // div, unit)
    return str(n)


def fmt_mib(kib):
    return '-' if kib is None else '%.1f MiB' % (kib / 1024.0)


def out(line=''):
    print(line, flush=True)


def allocated(path):
    return os.stat(path).st_blocks * 512


def data_extents(fd, size, pos=0):
    """Yield the (start, end) data extents of the open file ``fd`` of
    ``size`` bytes from ``pos`` on, as SEEK_DATA/SEEK_HOLE tell them."""
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        pos = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, pos


def mapped(path):
    """Bytes inside data extents (SEEK_DATA..SEEK_HOLE), metadata excluded.

    st_blocks also counts file system metadata such as ext4 extent-tree
    blocks, which differ by a few KiB between two files with the same
    holes; the sparseness targets are judged on this figure instead.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return sum(end - start for start, end in
                   data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def extent_list(path):
    """The (start, end) data extents of ``path``, as a list."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(data_extents(fd, os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _from(extents, start):
    return [(max(s, start), e) for s, e in extents if e > start]


def compare_extents(ours, theirs):
    """'identical', or what differs between two extent lists.

    qemu-img allocates the first 4 KiB of every raw output it creates
    (so that its later runs can probe the alignment): when that is the
    only difference, the lists are compared from 4 KiB on, and it says so.
    """
    if ours == theirs:
        return 'identical (%d extents)' % len(ours)
    if theirs and theirs[0][0] == 0 and _from(ours, 4096) == _from(
            theirs, 4096):
        return ('identical (%d extents) past the first 4 KiB, which '
                'qemu-img always allocates' % len(ours))

    def total(xs):
        return sum(e - s for s, e in xs)
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs))
                  if a != b), min(len(ours), len(theirs)))
    where = (ours[first] if first < len(ours) else None,
             theirs[first] if first < len(theirs) else None)
    return ('differ: %d extents / %s mapped against %d / %s; first '
            'difference, extent %d: ours %s, theirs %s' % (
                len(ours), fmt_size(total(ours)), len(theirs),
                fmt_size(total(theirs)), first, where[0], where[1]))


def loadavg():
    try:
        with open('/proc/loadavg') as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return [0.0, 0.0, 0.0]


def _cpu_times():
    with open('/proc/stat') as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals), idle


def load_note(sample=2.0):
    """How busy the host is while none of our commands run.

    Samples /proc/stat for ``sample`` seconds between sections: whatever
    used the cpus then was other work (the load average would also count
    our own last runs).  More than 10% busy makes the timings noisy.
    """
    try:
        t0, i0 = _cpu_times()
        time.sleep(sample)
        t1, i1 = _cpu_times()
        busy = 100.0 * (1 - (i1 - i0) / max(1, t1 - t0))
    except (OSError, ValueError, IndexError):
        return 'host load unknown'
    note = 'host cpus %.0f%% busy without us; load average %.2f %.2f %.2f' % (
        (busy,) + tuple(loadavg()))
    if busy > 10:
        note += ' (other work running: timings are noisy)'
    return note


def rm_f(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def rand_bytes(seed, length):
    return random.Random(seed).randbytes(length)


def data_for(write):
    """The bytes of a write: (offset, length, seed); seed None = zeros."""
    _off, length, seed = write
    return bytes(length) if seed is None else rand_bytes(seed, length)


TEXT_POOL = 8 * MiB
_text_pools = {}


def text_pool(seed):
    """TEXT_POOL bytes of log-like English-ish text, made once per seed.

    Lines of a timestamp, a host and a process name, then words drawn
    with Zipf weights from a vocabulary of 4096 made-up words: deflate
    packs it to about a third, like real logs and documents.
    """
    if seed in _text_pools:
        return _text_pools[seed]
    rng = random.Random(seed * 7919 + 17)
    letters = 'etaoinshrdlucmfwypvbgkqjxz'
    lw = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
          2.4, 2.2, 2.4, 2.0, 2.0, 1.0, 1.5, 2.0, 0.8, 0.1, 0.2, 0.2, 0.1]
    vocab = [''.join(rng.choices(letters, lw, k=rng.choice(
        (2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 11)))) for _i in range(4096)]
    cum = []
    acc = 0.0
    for i in range(len(vocab)):
        acc += 1.0 / (i + 1)
        cum.append(acc)
    procs = ['kernel', 'sshd', 'systemd', 'nginx', 'postgres', 'cron',
             'dockerd', 'app-worker']
    words = rng.choices(vocab, cum_weights=cum, k=TEXT_POOL // 5)
    parts = []
    size = 0
    i = 0
    t = 1700000000
    while size < TEXT_POOL:
        n = rng.randrange(4, 18)
        t += rng.randrange(3)
        line = '%s.%03d host%02d %s[%d]: %s\n' % (
            time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t)),
            rng.randrange(1000), rng.randrange(8), rng.choice(procs),
            rng.randrange(100, 40000), ' '.join(words[i:i + n]))
        i = (i + n) % (len(words) - 20)
        parts.append(line)
        size += len(line)
    pool = ''.join(parts).encode('ascii')[:TEXT_POOL]
    _text_pools[seed] = pool
    return pool


def mixed_bytes(seed, length, sub=MiB):
    """Realistic data: alternate ``sub``-sized random and text pieces.

    Half the bytes do not compress, the other half are text (see
    text_pool); the time of a compressed format depends on that mix.
    """
    pool = text_pool(0)
    rng = random.Random(seed)
    parts = []
    for j, off in enumerate(range(0, length, sub)):
        n = min(sub, length - off)
        if j % 2 == 0:
            parts.append(rng.randbytes(n))
        else:
            start = rng.randrange(len(pool) - n + 1)
            parts.append(pool[start:start + n])
    return b''.join(parts)


def content_digest(path):
    """sha256 over the logical content of a file, blind to sparseness.

    The file is cut into DIGEST_CHUNK pieces; every piece that is not all
    zeros is hashed with its index, then the size.  Two files get the same
    digest exactly when they have the same size and bytes, however they
    are allocated.  Holes are found with SEEK_DATA/SEEK_HOLE, so only the
    allocated part is read (a 100 GiB sparse output costs what it holds).
    """
    h = hashlib.sha256()
    zero = bytes(DIGEST_CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        next_idx = 0
        for start, end in data_extents(fd, size):
            # Each piece once, even when several extents share it.
            first = max(start // DIGEST_CHUNK, next_idx)
            last = (end - 1) // DIGEST_CHUNK
            for idx in range(first, last + 1):
                buf = os.pread(fd, DIGEST_CHUNK, idx * DIGEST_CHUNK)
                if buf != zero[:len(buf)]:
                    h.update(idx.to_bytes(8, 'little'))
                    h.update(buf)
            next_idx = max(next_idx, last + 1)
        h.update(b'size' + size.to_bytes(8, 'little'))
    finally:
        os.close(fd)
    return h.hexdigest()


def check_call(argv, **kw):
    """Run a set-up command; raise with its stderr if it fails."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError('%s failed (%d): %s' % (
            ' '.join(argv), p.returncode, (p.stderr or p.stdout).strip()))
    return p.stdout


# --------------------------------------------------------------------------
# measured runs

class Run(object):
    """One measured command: wall time, peak RSS, exit status."""

    def __init__(self, argv, seconds, rc, maxrss_kib, tree_kib, log,
                 killed=None):
        self.argv = argv
        self.seconds = seconds
        self.rc = rc
        self.maxrss_kib = maxrss_kib    # from wait4 via /usr/bin/time
        self.tree_kib = tree_kib        # sampled sum over the process tree
        self.log = log
        self.killed = killed

    @property
    def ok(self):
        return self.rc == 0 and not self.killed

    @property
    def peak_kib(self):
        vals = [v for v in (self.maxrss_kib, self.tree_kib) if v]
        return max(vals) if vals else None

    def failure(self):
        why = self.killed or 'exit status %s' % self.rc
        tail = self.log.strip().splitlines()[-15:]
        return '%s: %s\n      %s' % (' '.join(self.argv), why,
                                     '\n      '.join(tail))


def _children(pid):
    kids = []
    try:
        for tid in os.listdir('/proc/%d/task' % pid):
            with open('/proc/%d/task/%s/children' % (pid, tid)) as f:
                kids.extend(int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    return kids


def _rss_kib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree_rss_kib(root):
    """Sum of VmRSS over the descendants of root (root excluded)."""
    total = 0
    todo = _children(root)
    seen = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _rss_kib(pid)
        todo.extend(_children(pid))
    return total


def run_measured(argv, stdout=None, watch=None, timeout=None,
                 interval=0.05):
    """Run argv, return a Run.

    The command runs under ``/usr/bin/time -f %M``: that forks a small
    process, so ru_maxrss is the command's own peak (a direct wait4 from
    this process would inherit this Python's high-water mark through
    vfork/exec).  A thread also samples the summed VmRSS of the whole
    process tree every ``interval`` s, which catches helpers running in
    parallel (ru_maxrss is a max over processes, not a sum).

    watch = (path, limit): kill the command when path has more than limit
    bytes allocated (guards the disk against a non-sparse 100 GiB output).
    """
    fd, logpath = tempfile.mkstemp(prefix='bench-log-')
    os.close(fd)
    fd, rsspath = tempfile.mkstemp(prefix='bench-rss-')
    os.close(fd)
    if os.access(TIME_BIN, os.X_OK):
        full = [TIME_BIN, '-f', '%M', '-o', rsspath] + list(argv)
    else:
        full = list(argv)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, '/dev/null', os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, stdout or logpath,
         os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if stdout else os.O_APPEND),
         0o644),
        (os.POSIX_SPAWN_OPEN, 2, logpath,
         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
    ]
    state = {'tree': 0, 'killed': None}
    done = threading.Event()
    t0 = time.perf_counter()
    pid = os.posix_spawnp(full[0], full, os.environ, file_actions=actions,
                          setpgroup=0)

    def sampler():
        while not done.wait(interval):
            state['tree'] = max(state['tree'], _tree_rss_kib(pid))
            reason = None
            if timeout and time.perf_counter() - t0 > timeout:
                reason = 'killed: timeout after %ds' % timeout
            elif watch:
                try:
                    alloc = allocated(watch[0])
                except OSError:
                    alloc = 0
                if alloc > watch[1]:
                    reason = 'killed: output %s allocated %s > limit %s' % (
                        watch[0], fmt_size(alloc), fmt_size(watch[1]))
            if reason and not state['killed']:
                state['killed'] = reason
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    _pid, status, ru = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    done.set()
    th.join()
    rc = os.waitstatus_to_exitcode(status)
    maxrss = None
    try:
        with open(rsspath) as f:
            lines = [x for x in f.read().split('\n') if x.strip()]
        if full[0] == TIME_BIN and lines:
            maxrss = int(lines[-1])
    except (OSError, ValueError):
        pass
    if full[0] != TIME_BIN:
        maxrss = ru.ru_maxrss   # includes this process's high-water mark
    with open(logpath, errors='replace') as f:
        log = f.read()
    rm_f(logpath)
    rm_f(rsspath)
    run = Run(list(argv), seconds, rc, maxrss, state['tree'], log,
              state['killed'])
    # CPU time (user + system) of the command and its children: less
    # sensitive than wall time to other work on a loaded host.
    run.cpu = ru.ru_utime + ru.ru_stime
    return run


class Series(object):
    """All measured runs of one command (warm-up excluded)."""

    def __init__(self, label):
        self.label = label
        self.runs = []
        self.warm = None
        self.alloc = None
        self.mapped = None
        self.digest = None
        self.extents = None

    @property
    def best(self):
        return min(r.seconds for r in self.runs) if self.runs else None

    @property
    def median(self):
        return (statistics.median(r.seconds for r in self.runs)
                if self.runs else None)

    @property
    def cpu_median(self):
        return (statistics.median(r.cpu for r in self.runs)
                if self.runs else None)

    @property
    def peak_kib(self):
        vals = [r.peak_kib for r in self.runs + [self.warm]
                if r and r.peak_kib]
        return max(vals) if vals else None

    @property
    def maxrss_kib(self):
        vals = [r.maxrss_kib for r in self.runs + [self.warm]
                if r and r.maxrss_kib]
        return max(vals) if vals else None

    @property
    def tree_kib(self):
        vals = [r.tree_kib for r in self.runs + [self.warm]
                if r and r.tree_kib]
        return max(vals) if vals else None


class Job(object):
    """A command to measure: argv, output file, optional stdout file."""

    def __init__(self, label, argv, output=None, stdout=None, watch=None,
                 inputs=()):
        self.series = Series(label)
        self.argv = argv
        self.output = output
        self.stdout = stdout
        self.watch = watch
        self.inputs = list(inputs)


def warm_files(paths, chunk=4 * MiB):
    """Read the data extents of paths, so they sit in the page cache."""
    buf = memoryview(bytearray(chunk))
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            for start, end in data_extents(fd, os.fstat(fd).st_size):
                for off in range(start, end, chunk):
                    os.preadv(fd, [buf[:min(chunk, end - off)]], off)
        finally:
            os.close(fd)


def _record_output(job):
    job.series.alloc = allocated(job.output)
    job.series.mapped = mapped(job.output)
    job.series.extents = extent_list(job.output)


def measure(jobs, runs, timeout, check=None, lean=False):
    """Warm each job once, then alternate them runs times.

    Before every run (untimed): the job's output is removed, os.sync()
    flushes the previous run's dirty pages, and the job's inputs are read
    once so that they are in the page cache (a proactive reclaimer such
    as DAMON pageout may have dropped them while the other command ran).
    check(job) is called right after the warm-up run and the last run of
    each job.  A failure raises BenchError.
    """
    # An output another job reads (the copies of the tgz's output when
    # vhd-chain did not run) stays until the end, even with lean.
    read_later = set(p for j in jobs for p in j.inputs)
    for rnd in range(runs + 1):
        for job in jobs:
            if job.output:
                rm_f(job.output)
            os.sync()
            warm_files(job.inputs)
            r = run_measured(job.argv, stdout=job.stdout, watch=job.watch,
                             timeout=timeout)
            if not r.ok:
                raise BenchError(r.failure())
            if job.output and not os.path.exists(job.output):
                raise BenchError('%s: exit 0 but no output %s' % (
                    ' '.join(job.argv), job.output))
            if rnd == 0:
                job.series.warm = r
            else:
                job.series.runs.append(r)
            if check and rnd in (0, runs):
                check(job)
            if lean and job.output and job.output not in read_later:
                # --large: one output on the disk at a time.
                if rnd == runs:
                    _record_output(job)
                rm_f(job.output)
    for job in jobs:
        if job.output and (not lean or job.output in read_later):
            _record_output(job)
    return [job.series for job in jobs]


def print_series(series_list):
    out('    %-33s %8s %7s %7s %10s %10s %11s %11s' % (
        'command', 'median s', 'best s', 'cpu s', 'maxrss', 'tree rss',
        'allocated', 'mapped'))
    for s in series_list:
        out('    %-33s %8.3f %7.3f %7.3f %10s %10s %11s %11s' % (
            s.label[:33], s.median, s.best, s.cpu_median,
            fmt_mib(s.maxrss_kib),
            fmt_mib(s.tree_kib), fmt_size(s.alloc), fmt_size(s.mapped)))


# --------------------------------------------------------------------------
# image generation (cached in the work dir)

class Cache(object):
    """A directory of generated images with a manifest of their params."""

    def __init__(self, path, params):
        self.path = path
        self.params = dict(params, gen_version=GEN_VERSION)
        self.manifest = os.path.join(path, 'manifest.json')

    def load(self, files):
        try:
            with open(self.manifest) as f:
                m = json.load(f)
        except (OSError, ValueError):
            return None
        if m.get('params') != self.params:
            return None
        if not all(os.path.exists(os.path.join(self.path, x))
                   for x in files):
            return None
        return m

    def reset(self):
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(self.path)

    def save(self, **info):
        m = dict(info, params=self.params)
        with open(self.manifest + '.tmp', 'w') as f:
            json.dump(m, f, indent=1)
        os.rename(self.manifest + '.tmp', self.manifest)
        return m


def single_layout(size, data, seed):
    """Writes for the single image: pieces of PIECE bytes, then zeros.

    n = data / PIECE pieces, one per stride of size / n, at a random
    sector-aligned place in its stride.  Some pieces then get zeroed
    regions of 512 B, 4 KiB, 64 KiB, 1 MiB and a whole aligned VHD block.
    """
    rng = random.Random(seed)
    n = max(1, data // PIECE)
    stride = size // n
    if stride < PIECE:
        raise SystemExit('--data must not exceed --size')
    writes, zeros = [], []
    for i in range(n):
        off = i * stride + rng.randrange((stride - PIECE) // 512 + 1) * 512
        writes.append((off, PIECE, seed * 100003 + i))
        kind = i % 8
        if kind == 0:       # aligned 1 MiB hole inside data
            z = (off + 2 * MiB) // MiB * MiB - MiB
            zeros.append((max(z, off), MiB))
        elif kind == 1:     # 64 KiB
            z = (off + 64 * KiB - 1) // (64 * KiB) * (64 * KiB)
            zeros.append((z + rng.randrange(32) * 64 * KiB, 64 * KiB))
        elif kind == 2:     # 4 KiB
            z = (off + 4 * KiB - 1) // (4 * KiB) * (4 * KiB)
            zeros.append((z + rng.randrange(512) * 4 * KiB, 4 * KiB))
        elif kind == 3:     # one sector: too small to become a hole
            zeros.append((off + rng.randrange(PIECE // 512) * 512, 512))
        elif kind == 4:     # a whole VHD block inside the piece
            z = (off + VHD_BLOCK - 1) // VHD_BLOCK * VHD_BLOCK
            zeros.append((z, VHD_BLOCK))
    zeros = [(o, n_) for o, n_ in zeros if o + n_ <= size]
    return writes + [(o, n_, None) for o, n_ in zeros]


def gen_images(work, size, data, seed):
    """The common raw disk of the single-image sections (cached).

    single_layout() with mixed_bytes() data is written into a sparse
    ``source.raw``, which is kept: every format is converted from it by
    image_file() when a section first needs it.
    """
    tag = 'images-%s-%s' % (size_tag(size), size_tag(data))
    cache = Cache(os.path.join(work, tag),
                  {'size': size, 'data': data, 'seed': seed,
                   'content': 'mixed'})
    m = cache.load(['source.raw'])
    if m:
        return cache, m
    t0 = time.perf_counter()
    cache.reset()
    raw = os.path.join(cache.path, 'source.raw')
    fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for off, length, wseed in single_layout(size, data, seed):
            buf = (bytes(length) if wseed is None
                   else mixed_bytes(wseed, length))
            os.pwrite(fd, buf, off)
    finally:
        os.close(fd)
    digest = content_digest(raw)
    m = cache.save(digest=digest, gen_seconds=time.perf_counter() - t0,
                   images={})
    out('    generated the raw disk in %.1f s: %s' % (m['gen_seconds'], raw))
    return cache, m


def image_file(cache, m, case):
    """Path of the image of IMAGE_CASES[case], made from source.raw once."""
    spec = IMAGE_CASES[case]
    path = os.path.join(cache.path, spec['file'])
    if spec['file'] in m.get('images', {}) and os.path.exists(path):
        out('    cached image %s' % path)
        return path
    tmp = os.path.join(cache.path, '.tmp-' + spec['file'])
    rm_f(tmp)
    t0 = time.perf_counter()
    check_call(['qemu-img', 'convert', '-f', 'raw'] + spec['create'] +
               [os.path.join(cache.path, 'source.raw'), tmp])
    os.rename(tmp, path)
    secs = time.perf_counter() - t0
    m.setdefault('images', {})[spec['file']] = {
        'seconds': secs, 'qemu-img': spec['create']}
    cache.save(**{k: v for k, v in m.items() if k != 'params'})
    out('    made %s with qemu-img convert %s in %.1f s' % (
        path, ' '.join(spec['create']), secs))
    return path


def chain_layout(size, data, seed):
    """Writes of the three layers: base, child1, leaf (child2).

    base  ~60%: PIECE-sized pieces, one per stride, in the stride's first
                half; every 4th piece gets a 64 KiB zero write inside.
    child1~30%: (A) 3 MiB over a base piece, sector- but not 4K-aligned;
                (B) 1 MiB + 300 bytes at a byte-unaligned offset in fresh
                space (FATtools fills the partial sectors from the parent);
                (C) 4 MiB of whole aligned VHD blocks in fresh space.
    leaf  ~10%: (D) 768 KiB over an A write (covers both parents);
                (E) 256 KiB of zeros over base-only data (must hide it);
                (F) 100 KiB + 13 bytes unaligned inside a B write;
                (G) 1 MiB in fresh space; plus the first 4 KiB of the disk
                and 64.5 KiB ending at the last byte of the disk.
    """
    rng = random.Random(seed)
    sid = [seed * 1000003]

    def nseed():
        sid[0] += 1
        return sid[0]

    nb = max(1, int(round(0.6 * data / PIECE)))
    stride = size // nb
    if stride < 4 * PIECE:
        raise SystemExit('--data is too large for --size (chain layout)')
    half = stride // 2
    base, child1, leaf = [], [], []
    base_off = []
    for i in range(nb):
        off = i * stride + rng.randrange((half - PIECE) // 512 + 1) * 512
        base_off.append(off)
        base.append((off, PIECE, nseed()))
        if i % 4 == 1:
            base.append((off + 2 * MiB + 4 * KiB, 64 * KiB, None))

    order = list(range(nb))
    rng.shuffle(order)
    budget1 = 0.3 * data
    a_writes, b_writes = [], []
    used = 0
    k = 0
    while used < budget1 and k < nb:
        j = order[k]
        k += 1
        a = (base_off[j] + MiB + 1536, 3 * MiB, nseed())
        b = (j * stride + half + 100 + rng.randrange(256) * 512,
             MiB + 300, nseed())
        c_off = (j * stride + 3 * stride // 4) // VHD_BLOCK * VHD_BLOCK
        c = (c_off, 4 * MiB, nseed())
        for w in (a, b, c):
            if w[0] + w[1] <= min(size, (j + 1) * stride):
                child1.append(w)
                used += w[1]
        a_writes.append(a)
        b_writes.append(b)

    budget2 = 0.1 * data
    used = 0
    k = 0
    leaf.append((0, 4 * KiB, nseed()))
    leaf.append((size - 64 * KiB - 512, 64 * KiB + 512, nseed()))
    while used < budget2 and k < len(a_writes):
        a, b = a_writes[k], b_writes[k]
        j = order[k]
        k += 1
        ws = [
            (a[0] + 512 * KiB + 7 * 512, 768 * KiB, nseed()),       # D
            (base_off[j] + 256 * KiB, 256 * KiB, None),             # E
            (b[0] + 4 * KiB + 7, 100 * KiB + 13, nseed()),          # F
            (j * stride + half + 2 * MiB + 512, MiB, nseed()),      # G
        ]
        for w in ws:
            if w[0] + w[1] <= min(size, (j + 1) * stride):
                leaf.append(w)
                used += w[1]
    return base, child1, leaf


def _fat_write(img, writes, raw_fd):
    for w in writes:
        buf = data_for(w)
        img.seek(w[0])
        img.write(buf)
        os.pwrite(raw_fd, buf, w[0])


def gen_chain(work, size, data, seed):
    try:
        from FATtools import vhdutils
    except ImportError:
        raise SystemExit('FATtools is needed for the chain images: run the '
                         'benchmark with the project venv python')
    tag = 'chain-%s-%s' % (size_tag(size), size_tag(data))
    cache = Cache(os.path.join(work, tag),
                  {'size': size, 'data': data, 'seed': seed})
    files = ['base.vhd', 'child1.vhd', 'leaf.vhd', 'chain.tgz']
    m = cache.load(files)
    if m:
        out('    cached images in %s' % cache.path)
        return cache.path, m
    t0 = time.perf_counter()
    cache.reset()
    p = cache.path
    layers = chain_layout(size, data, seed)
    names = ['base.vhd', 'child1.vhd', 'leaf.vhd']
    raw = os.path.join(p, 'expected.raw')
    fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    info = {}
    try:
        os.ftruncate(fd, size)
        for i, (name, writes) in enumerate(zip(names, layers)):
            path = os.path.join(p, name)
            if i == 0:
                vhdutils.mk_dynamic(path, size)
            else:
                vhdutils.mk_diff(path, os.path.join(p, names[i - 1]))
            img = vhdutils.Image(path, 'r+b')
            try:
                _fat_write(img, writes, fd)
            finally:
                img.close()
            info[name] = {'writes': len(writes),
                          'data': sum(w[1] for w in writes),
                          'file': os.path.getsize(path)}
        t_fat = time.perf_counter() - t0
        # Cross-check: FATtools reads the leaf back the way we expect.
        img = vhdutils.Image(os.path.join(p, 'leaf.vhd'), 'rb')
        try:
            for writes in layers:
                for off, length, _s in writes:
                    lo = max(0, off - 1024)
                    hi = min(size, off + length + 1024)
                    img.seek(lo)
                    if bytes(img.read(hi - lo)) != os.pread(fd, hi - lo, lo):
                        raise RuntimeError(
                            'FATtools reads back different data at %d' % lo)
        finally:
            img.close()
    finally:
        os.close(fd)
    digest = content_digest(raw)
    rm_f(raw)
    # XenServer export: 0.vhd is the leaf, n.vhd the base; base first.
    stage = os.path.join(p, 'stage')
    os.mkdir(stage)
    for idx, name in enumerate(reversed(names)):
        os.link(os.path.join(p, name), os.path.join(stage, '%d.vhd' % idx))
    check_call(['tar', 'czf', os.path.join(p, 'chain.tgz'), '-C', stage,
                '2.vhd', '1.vhd', '0.vhd'])
    shutil.rmtree(stage)
    m = cache.save(digest=digest, layers=info, fattools_seconds=t_fat,
                   gen_seconds=time.perf_counter() - t0)
    out('    generated in %.1f s (FATtools writes %.1f s): %s' % (
        m['gen_seconds'], t_fat, p))
    return p, m


def memory_layout(size, seed, n=32, length=256 * KiB):
    rng = random.Random(seed)
    stride = size // n
    writes = [(0, length, seed * 7 + 1)]
    for i in range(1, n - 1):
        off = i * stride + rng.randrange((stride - length) // 512) * 512
        writes.append((off, length, seed * 7 + 1 + i))
    writes.append((size - length, length, seed * 7 + n))
    return writes


def gen_memory(work, size, seed):
    cache = Cache(os.path.join(work, 'memory-%s' % size_tag(size)),
                  {'size': size, 'seed': seed})
    m = cache.load(['big.vhd'])
    if m:
        out('    cached image in %s' % cache.path)
        return cache.path, m
    t0 = time.perf_counter()
    cache.reset()
    p = cache.path
    vhd = os.path.join(p, 'big.vhd')
    check_call(['qemu-img', 'create', '-q', '-f', 'vpc', '-o',
                'subformat=dynamic,force_size=on', vhd, str(size)])
    writes = memory_layout(size, seed)
    raw = os.path.join(p, 'expected.raw')
    cmd = ['qemu-io', '-f', 'vpc']
    fd = os.open(raw, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for i, w in enumerate(writes):
            buf = data_for(w)
            src = os.path.join(p, 'src%d.bin' % i)
            with open(src, 'wb') as f:
                f.write(buf)
            os.pwrite(fd, buf, w[0])
            cmd += ['-c', 'write -q -s %s %d %d' % (src, w[0], w[1])]
    finally:
        os.close(fd)
    if shutil.which('qemu-io'):
        check_call(cmd + [vhd])
    else:   # no qemu-io: convert the sparse expected raw instead
        rm_f(vhd)
        check_call(['qemu-img', 'convert', '-f', 'raw', '-O', 'vpc', '-o',
                    'subformat=dynamic,force_size=on', raw, vhd])
    for i in range(len(writes)):
        rm_f(os.path.join(p, 'src%d.bin' % i))
    digest = content_digest(raw)
    rm_f(raw)
    m = cache.save(digest=digest, data=sum(w[1] for w in writes),
                   gen_seconds=time.perf_counter() - t0)
    out('    generated in %.1f s: %s' % (m['gen_seconds'], p))
    return p, m


# --------------------------------------------------------------------------
# sections

class Bench(object):

    def __init__(self, args):
        self.args = args
        self.rows = []          # (figure, value, target, result)
        self.failures = []
        self.outdir = os.path.join(args.workdir, 'out')
        self._images = None     # (Cache, manifest) of the common raw disk
        self._chain = None      # (path, manifest) of the VHD chain
        self.copy_best = None   # (cp, cp+sync) best times, vhd-chain

    def row(self, figure, value, target='', result='info'):
        self.rows.append((figure, value, target, result))

    def verdict(self, ok):
        return 'PASS' if ok else 'MISS'

    def fail(self, section, msg):
        self.failures.append('%s: %s' % (section, msg))
        out('    FAILED: %s' % msg)
        self.row(section, 'FAILED', '', 'FAIL')

    def any2kvm(self, src, dst):
        if self.args.baseline:
            return [sys.executable, '-c', FROM_TREE, self.args.tree,
                    'convert', src, dst]
        return [self.args.any2kvm, 'convert', src, dst]

    def scratch_argv(self, src, dst):
        """What the Glance target does with a one-pass disk: convert it to
        a scratch file never flushed (the code under test only)."""
        return [sys.executable, '-c', FROM_TREE_SCRATCH, self.args.tree,
                src, dst]

    def scratch_rows(self, name, sc, plain):
        ratio = sc.median / plain.median
        out('    Glance scratch (no flush) / plain qemu-img %.3f (target '
            '<= %.1f)' % (ratio, TARGET_SCRATCH_RATIO))
        self.row('%s time Glance scratch/qemu-img (no flush)' % name,
                 '%.3f (%.2fs/%.2fs)' % (ratio, sc.median, plain.median),
                 '<= %.1f' % TARGET_SCRATCH_RATIO,
                 self.verdict(ratio <= TARGET_SCRATCH_RATIO))

    def baseline_job(self, src, dst, inputs):
        """The same conversion by the --baseline checkout, or None."""
        if not self.args.baseline:
            return None
        return Job('  baseline (%s)' % os.path.basename(
            self.args.baseline.rstrip('/')), [
                sys.executable, '-c', FROM_TREE, self.args.baseline,
                'convert', src, dst], dst, inputs=inputs)

    def baseline_scratch_job(self, src, inputs):
        """The Glance scratch conversion by the --baseline checkout (its
        start-up is what issue 14 cuts), or None."""
        if not self.args.baseline:
            return None
        return Job('  baseline scratch', [
            sys.executable, '-c', FROM_TREE_SCRATCH, self.args.baseline,
            src, os.path.join(self.outdir, 'base-scratch.raw')],
            os.path.join(self.outdir, 'base-scratch.raw'), inputs=inputs)

    def baseline_scratch_rows(self, name, sc, sbs, plain):
        if sbs is None:
            return
        ratio = sc.median / sbs.median
        out('    Glance scratch after/before (median) %.3f (%.2fs/%.2fs); '
            'before / plain qemu-img %.3f; cpu s after/before %.3f/%.3f'
            % (ratio, sc.median, sbs.median, sbs.median / plain.median,
               sc.cpu_median, sbs.cpu_median))
        self.row('%s time Glance scratch after/before' % name,
                 '%.3f (%.2fs/%.2fs)' % (ratio, sc.median, sbs.median),
                 '< 1.0', self.verdict(ratio < 1.0))
        self.row('%s time baseline Glance scratch/qemu-img (no flush)'
                 % name, '%.3f (%.2fs/%.2fs)' % (
                     sbs.median / plain.median, sbs.median, plain.median))
        self.row('%s cpu Glance scratch after/before' % name,
                 '%.3f (%.2fs/%.2fs)' % (sc.cpu_median / sbs.cpu_median,
                                         sc.cpu_median, sbs.cpu_median))

    def baseline_rows(self, name, s1, sb):
        if sb is None:
            return
        ratio = s1.median / sb.median
        out('    after/before (median) %.3f (%.2fs/%.2fs)' % (
            ratio, s1.median, sb.median))
        self.row('%s time after/before' % name, '%.3f (%.2fs/%.2fs)' % (
            ratio, s1.median, sb.median), '< 1.0', self.verdict(ratio < 1.0))
        self.row('%s peak RSS after/before' % name, '%s / %s' % (
            fmt_mib(s1.peak_kib), fmt_mib(sb.peak_kib)))

    def wb_rows(self, name, s1, plain, wb):
        """The issue's target (median, against qemu-img -t writeback)
        and plain qemu-img beside it."""
        ratio = s1.median / wb.median
        self.row('%s time any2kvm/qemu-img -t writeback' % name,
                 '%.3f (%.2fs/%.2fs)' % (ratio, s1.median, wb.median),
                 '<= %.2f' % TARGET_WB_RATIO,
                 self.verdict(ratio <= TARGET_WB_RATIO))
        self.row('%s time any2kvm/qemu-img (no flush)' % name,
                 '%.3f (%.2fs/%.2fs)' % (s1.median / plain.median,
                                         s1.median, plain.median))

    def extent_rows(self, name, s1, ref, ref_name):
        verdict = compare_extents(s1.extents, ref.extents)
        out('    data extents any2kvm vs %s: %s' % (ref_name, verdict))
        self.row('%s extents any2kvm vs %s' % (name, ref_name),
                 verdict.split(':')[0].split(' (')[0], 'identical',
                 self.verdict(verdict.startswith('identical')))

    def fresh_outdir(self):
        shutil.rmtree(self.outdir, ignore_errors=True)
        os.makedirs(self.outdir)

    def check_digest(self, series, path, expected, what):
        d = content_digest(path)
        series.digest = d
        if d != expected:
            raise BenchError('%s: output %s differs from the expected '
                             'content (digest %s, expected %s)' % (
                                 what, path, d[:16], expected[:16]))

    def rss_rows(self, name, series):
        pk = series.peak_kib
        if pk is not None:
            self.row('%s any2kvm peak RSS' % name, fmt_mib(pk),
                     '< %d MiB' % TARGET_RSS_MIB,
                     self.verdict(pk < TARGET_RSS_MIB * 1024))

    def ratio_rows(self, name, s1, ref, ref_fair, ref_name, fair_name,
                   target):
        """Two time rows: against the plain reference, and like-for-like.

        The like-for-like reference does the same work and fdatasyncs its
        output, as any2kvm does.  Both rows get the same target.
        """
        for sref, what, mark in ((ref, ref_name, ''),
                                 (ref_fair, fair_name, ' [like-for-like]')):
            ratio = s1.median / sref.median
            self.row('%s time any2kvm/%s%s' % (name, what, mark),
                     '%.3f (%.2fs/%.2fs)' % (ratio, s1.median, sref.median),
                     '<= %.1f' % target if target else '',
                     self.verdict(ratio <= target) if target else 'info')

    def measure_checked(self, jobs, expected, what):
        """measure() plus a content check of the outputs in expected."""
        def check(job):
            if job in expected:
                self.check_digest(job.series, job.output, expected[job],
                                  what)
        return measure(jobs, self.args.runs, self.args.timeout, check,
                       lean=self.args.large)

    # single images -------------------------------------------------------
    def images(self):
        """The common raw disk (made once per run, cached in workdir)."""
        if self._images is None:
            a = self.args
            self._images = gen_images(a.workdir, a.size, a.data, a.seed)
        return self._images

    def image_case(self, case):
        a = self.args
        spec = IMAGE_CASES[case]
        out('== %s: %s, %s virtual, %s data (half random, half text), '
            'median of %d ==' % (case, spec['title'], fmt_size(a.size),
                                 fmt_size(a.data), a.runs))
        try:
            cache, m = self.images()
            img = image_file(cache, m, case)
        except Exception as e:
            self.fail('%s: generation' % case, str(e))
            return
        self.fresh_outdir()
        fmt = spec['fmt']
        o1 = os.path.join(self.outdir, 'any2kvm.raw')
        o2 = os.path.join(self.outdir, 'qemu.raw')
        o3 = os.path.join(self.outdir, 'qemu-wb.raw')
        out('    %s (%s allocated)' % (img, fmt_size(allocated(img))))
        j1 = Job('any2kvm convert', self.any2kvm(img, o1), o1,
                 inputs=[img])
        j2 = Job('qemu-img convert -f %s -O raw' % fmt,
                 ['qemu-img', 'convert', '-f', fmt, '-O', 'raw', img, o2],
                 o2, inputs=[img])
        j3 = Job('  same with -t writeback',
                 ['qemu-img', 'convert', '-t', 'writeback', '-f', fmt,
                  '-O', 'raw', img, o3], o3, inputs=[img])
        o4 = os.path.join(self.outdir, 'scratch.raw')
        j4 = Job('any2kvm to Glance scratch', self.scratch_argv(img, o4),
                 o4, inputs=[img])
        jobs = [j1, j2, j3, j4]
        jb = self.baseline_job(img, os.path.join(self.outdir, 'base.raw'),
                               [img])
        if jb:
            jobs.append(jb)
        jbs = self.baseline_scratch_job(img, [img])
        if jbs:
            jobs.append(jbs)
        try:
            series = self.measure_checked(
                jobs, {j: m['digest'] for j in jobs}, case)
        except BenchError as e:
            self.fail(case, str(e))
            shutil.rmtree(self.outdir, ignore_errors=True)
            return
        print_series(series)
        s1, s2, s3, s4 = series[:4]
        sb = series[4] if jb else None
        sbs = series[5] if jbs else None
        out('    median ratio any2kvm/qemu-img %.3f; against qemu-img -t '
            'writeback %.3f (target <= %.2f); all outputs identical: yes '
            '(%s)' % (s1.median / s2.median, s1.median / s3.median,
                      TARGET_WB_RATIO, s1.digest[:16]))
        self.wb_rows(case, s1, s2, s3)
        self.scratch_rows(case, s4, s2)
        self.baseline_scratch_rows(case, s4, sbs, s2)
        self.extent_rows(case, s1, s2, 'qemu-img')
        self.baseline_rows(case, s1, sb)
        self.rss_rows(case, s1)
        self.row('%s qemu-img peak RSS' % case, fmt_mib(s2.peak_kib))
        self.row('%s mapped any2kvm/qemu-img' % case,
                 '%s / %s' % (fmt_size(s1.mapped), fmt_size(s2.mapped)),
                 'ours <= qemu', self.verdict(s1.mapped <= s2.mapped))
        shutil.rmtree(self.outdir, ignore_errors=True)
        if a.large:
            # The disk holds one image at a time (made again next run).
            rm_f(img)
            m.get('images', {}).pop(spec['file'], None)
            cache.save(**{k: v for k, v in m.items() if k != 'params'})

    # chain ---------------------------------------------------------------
    def chain_images(self):
        if self._chain is None:
            a = self.args
            self._chain = gen_chain(a.workdir, a.size, a.data, a.seed)
            for name, li in self._chain[1]['layers'].items():
                out('    %-10s %3d writes, %9s data, %9s file' % (
                    name, li['writes'], fmt_size(li['data']),
                    fmt_size(li['file'])))
        return self._chain

    def copy_jobs(self, src, tag):
        """cp --sparse=always of src, and the same followed by sync -d."""
        o2 = os.path.join(self.outdir, 'copy%s.raw' % tag)
        o2s = os.path.join(self.outdir, 'copy-synced%s.raw' % tag)
        j2 = Job('cp --sparse=always', ['cp', '--sparse=always', src, o2],
                 o2, inputs=[src])
        j2s = Job('  same, then sync -d',
                  ['sh', '-c', 'cp --sparse=always "$1" "$2" && sync -d "$2"',
                   'sh', src, o2s], o2s, inputs=[src])
        return j2, j2s

    def vhd_chain(self):
        a = self.args
        out('== vhd-chain: 3-level FATtools chain, %s virtual, ~%s random '
            'data, median of %d ==' % (fmt_size(a.size), fmt_size(a.data),
                                       a.runs))
        try:
            path, m = self.chain_images()
        except SystemExit:
            raise
        except Exception as e:
            self.fail('vhd-chain: generation', str(e))
            return
        self.fresh_outdir()
        leaf = os.path.join(path, 'leaf.vhd')
        o1 = os.path.join(self.outdir, 'any2kvm.raw')
        vhds = [os.path.join(path, x)
                for x in ('base.vhd', 'child1.vhd', 'leaf.vhd')]
        j1 = Job('any2kvm convert leaf.vhd', self.any2kvm(leaf, o1), o1,
                 inputs=vhds)
        # qemu-img cannot follow VHD parents: its columns convert the
        # flattened chain (a raw file of the same content, made once by
        # any2kvm and checked), which is less work than reading the chain.
        flat = os.path.join(path, 'flat.raw')
        if not os.path.exists(flat) or content_digest(flat) != m['digest']:
            check_call(self.any2kvm(leaf, flat + '.tmp'))
            os.rename(flat + '.tmp', flat)
        oq = os.path.join(self.outdir, 'qemu.raw')
        oqw = os.path.join(self.outdir, 'qemu-wb.raw')
        jq = Job('qemu-img convert (flattened raw)',
                 ['qemu-img', 'convert', '-f', 'raw', '-O', 'raw', flat, oq],
                 oq, inputs=[flat])
        jqw = Job('  same with -t writeback',
                  ['qemu-img', 'convert', '-t', 'writeback', '-f', 'raw',
                   '-O', 'raw', flat, oqw], oqw, inputs=[flat])
        j2, j2s = self.copy_jobs(o1, '')
        jobs = [j1, jq, jqw, j2, j2s]
        jb = self.baseline_job(leaf, os.path.join(self.outdir, 'base.raw'),
                               vhds)
        if jb:
            jobs.append(jb)
        try:
            series = self.measure_checked(
                jobs, {j: m['digest'] for j in jobs}, 'vhd-chain')
        except BenchError as e:
            self.fail('vhd-chain', str(e))
            shutil.rmtree(self.outdir, ignore_errors=True)
            return
        print_series(series)
        s1, sq, sqw, s2, s2s = series[:5]
        sb = series[5] if jb else None
        out('    median ratio any2kvm/plain-copy %.3f, against copy+sync '
            '%.3f (target <= %.1f), against qemu-img -t writeback of the '
            'flattened raw %.3f (target <= %.2f); output matches the '
            'expected content: yes (%s)' % (
                s1.median / s2.median, s1.median / s2s.median,
                TARGET_CHAIN_RATIO, s1.median / sqw.median, TARGET_WB_RATIO,
                s1.digest[:16]))
        self.wb_rows('vhd-chain', s1, sq, sqw)
        self.ratio_rows('vhd-chain', s1, s2, s2s, 'cp', '(cp+sync)',
                        TARGET_CHAIN_RATIO)
        self.extent_rows('vhd-chain', s1, sq, 'qemu-img')
        self.baseline_rows('vhd-chain', s1, sb)
        self.rss_rows('vhd-chain', s1)
        self.row('vhd-chain mapped any2kvm/cp',
                 '%s / %s' % (fmt_size(s1.mapped), fmt_size(s2.mapped)),
                 'ours <= cp', self.verdict(s1.mapped <= s2.mapped))
        self.copy_best = (s2.median, s2s.median)
        shutil.rmtree(self.outdir, ignore_errors=True)

    def vhd_tgz(self):
        a = self.args
        out('== vhd-tgz: the vhd-chain files as a XenServer tgz, median of '
            '%d ==' % a.runs)
        try:
            path, m = self.chain_images()
        except SystemExit:
            raise
        except Exception as e:
            self.fail('vhd-tgz: generation', str(e))
            return
        self.fresh_outdir()
        tgz = os.path.join(path, 'chain.tgz')
        out('    %s (%s)' % (tgz, fmt_size(os.path.getsize(tgz))))
        o3 = os.path.join(self.outdir, 'any2kvm-tgz.raw')
        j3 = Job('any2kvm convert chain.tgz', self.any2kvm(tgz, o3), o3,
                 inputs=[tgz])
        j4 = Job('gzip -dc chain.tgz >/dev/null', ['gzip', '-dc', tgz],
                 stdout='/dev/null', inputs=[tgz])
        jobs = [j3, j4]
        if self.copy_best is None:
            # vhd-chain did not run: time the copies of this output here.
            jobs += list(self.copy_jobs(o3, '-tgz'))
        jb = self.baseline_job(tgz, os.path.join(self.outdir, 'base.raw'),
                               [tgz])
        if jb:
            jobs.append(jb)
        try:
            series = self.measure_checked(jobs, {j3: m['digest'],
                                                 jb: m['digest']},
                                          'vhd-tgz')
        except BenchError as e:
            self.fail('vhd-tgz', str(e))
            shutil.rmtree(self.outdir, ignore_errors=True)
            return
        print_series(series)
        s3, s4 = series[:2]
        if self.copy_best is None:
            self.copy_best = (series[2].median, series[3].median)
        cp, cps = self.copy_best
        ref, ref_s = s4.median + cp, s4.median + cps
        out('    any2kvm tgz %.2fs vs gunzip %.2fs + copy %.2fs = %.2fs: '
            'ratio %.3f; like-for-like, with copy+sync %.2fs: %.3f; output '
            'has the expected content: yes (%s)' % (
                s3.median, s4.median, cp, ref, s3.median / ref, cps,
                s3.median / ref_s, s3.digest[:16]))
        self.row('vhd-tgz time any2kvm/(gunzip+cp)',
                 '%.3f (%.2fs/%.2fs)' % (s3.median / ref, s3.median, ref))
        self.row('vhd-tgz time any2kvm/(gunzip+cp+sync) [like-for-like]',
                 '%.3f (%.2fs/%.2fs)' % (s3.median / ref_s, s3.median,
                                         ref_s))
        self.baseline_rows('vhd-tgz', s3, series[-1] if jb else None)
        self.rss_rows('vhd-tgz', s3)
        self.row('vhd-tgz mapped any2kvm', fmt_size(s3.mapped))
        shutil.rmtree(self.outdir, ignore_errors=True)

    # memory --------------------------------------------------------------
    def memory(self):
        a = self.args
        out('== memory: %s dynamic VHD, a few MiB of data, peak RSS ==' %
            fmt_size(a.big_size))
        try:
            path, m = gen_memory(a.workdir, a.big_size, a.seed)
        except Exception as e:
            self.fail('memory: generation', str(e))
            return
        self.fresh_outdir()
        vhd = os.path.join(path, 'big.vhd')
        o1 = os.path.join(self.outdir, 'any2kvm-big.raw')
        out('    %s (%s allocated, %s of data)' % (
            vhd, fmt_size(allocated(vhd)), fmt_size(m['data'])))
        rm_f(o1)
        os.sync()
        warm_files([vhd])
        r = run_measured(self.any2kvm(vhd, o1),
                         watch=(o1, 256 * MiB + 4 * m['data']),
                         timeout=a.timeout)
        try:
            if not r.ok:
                raise BenchError(r.failure())
            d = content_digest(o1)
            if d != m['digest']:
                raise BenchError('output %s differs from the expected '
                                 'content' % o1)
        except BenchError as e:
            self.fail('memory', str(e))
            shutil.rmtree(self.outdir, ignore_errors=True)
            return
        alloc = allocated(o1)
        size = os.path.getsize(o1)
        out('    any2kvm convert: %.2f s, maxrss %s, tree rss %s, output '
            '%s apparent / %s allocated / %s mapped; content ok' % (
                r.seconds, fmt_mib(r.maxrss_kib), fmt_mib(r.tree_kib),
                fmt_size(size), fmt_size(alloc), fmt_size(mapped(o1))))
        pk = r.peak_kib
        self.row('memory %s any2kvm peak RSS' % size_tag(a.big_size),
                 fmt_mib(pk), '< %d MiB' % TARGET_RSS_MIB,
                 self.verdict(pk is not None and pk < TARGET_RSS_MIB * 1024))
        self.row('memory %s any2kvm time' % size_tag(a.big_size),
                 '%.2f s' % r.seconds)
        self.row('memory %s allocated any2kvm' % size_tag(a.big_size),
                 fmt_size(alloc))
        shutil.rmtree(self.outdir, ignore_errors=True)

    # ---------------------------------------------------------------------
    def run_section(self, name):
        if name in IMAGE_CASES:
            self.image_case(name)
        else:
            getattr(self, name.replace('-', '_'))()

    def summary(self):
        out('== summary ==  [%s]' % load_note())
        w = max([len(r[0]) for r in self.rows] + [6])
        v = max([len(r[1]) for r in self.rows] + [5])
        out('  [like-for-like]: the reference also fdatasyncs its output, as '
            'any2kvm does; the fair comparison (README)')
        out('  %-*s  %-*s  %-12s  %s' % (w, 'figure', v, 'value', 'target',
                                         'result'))
        last = None
        for fig, val, tgt, res in self.rows:
            section = fig.split()[0].rstrip(':')
            if last is not None and section != last:
                out()
            last = section
            out('  %-*s  %-*s  %-12s  %s' % (w, fig, v, val, tgt, res))
        miss = sum(1 for r in self.rows if r[3] == 'MISS')
        passed = sum(1 for r in self.rows if r[3] == 'PASS')
        out('  %d PASS, %d MISS, %d FAIL' % (passed, miss,
                                             len(self.failures)))
        for f in self.failures:
            out('  FAIL %s' % f.splitlines()[0])


def compile_trees(args):
    """Byte-compile the trees under test, as an installed package is
    (:func:`tests.lib.cli.byte_compile`); ``--no-compile`` skips this.
    Returns the lines to print."""
    trees = [args.tree] + ([args.baseline] if args.baseline else [])
    return [cli.byte_compile(tree) for tree in trees]


def header(args):
    def first_line(argv):
        try:
            return subprocess.run(argv, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return '?'

    here = os.path.dirname(os.path.abspath(__file__))
    rev = first_line(['git', '-C', here, 'describe', '--always', '--dirty'])
    out('any2kvm convert benchmark  %s' % time.strftime('%Y-%m-%d %H:%M:%S'))
    out('  any2kvm   %s (repo %s)' % (args.any2kvm, rev))
    out('  qemu-img  %s' % first_line(['qemu-img', '--version']))
    out('  host      %s, %d cpus, python %s' % (
        platform.platform(), os.cpu_count(), platform.python_version()))
    mem = '?'
    try:
        with open('/proc/meminfo') as f:
            mem = fmt_size(int(f.readline().split()[1]) * KiB)
    except (OSError, ValueError, IndexError):
        pass
    out('  memory    %s; workdir %s' % (mem, args.workdir))
    if not os.access(TIME_BIN, os.X_OK):
        out('  WARNING: %s missing (apt install time): maxrss includes '
            'this script\'s own peak' % TIME_BIN)
    starts = []
    for _i in range(3):
        r = run_measured([args.any2kvm, '--help'], timeout=60)
        if r.ok:
            starts.append(r.seconds)
    out('  any2kvm start-up (any2kvm --help, best of 3): %s' % (
        '%.3f s' % min(starts) if starts else 'FAILED'))
    out('  size %s, data %s, runs %d (+1 warm-up each), seed %d' % (
        fmt_size(args.size), fmt_size(args.data), args.runs, args.seed))
    out('  sections  %s' % ', '.join(args.sections))
    out('  inspect   %s' % ('as ANY2KVM_INSPECT says (--inspect)'
                            if args.inspect else
                            'off (ANY2KVM_INSPECT=0): the copy is timed'))
    if args.baseline:
        out('  baseline  %s (repo %s), timed in the same run; both trees '
            'started by %s -c' % (args.baseline, first_line(
                ['git', '-C', args.baseline, 'describe', '--always',
                 '--dirty']) if os.path.exists(os.path.join(
                     args.baseline, '.git')) else 'no git metadata',
                sys.executable))
    out()


def default_any2kvm():
    exe = os.path.join(os.path.dirname(sys.executable), 'any2kvm')
    if os.access(exe, os.X_OK):
        return exe
    return shutil.which('any2kvm') or 'any2kvm'


def parse_sections(text):
    """--only text to the ordered list of sections; ValueError if bad."""
    want = set()
    bad = []
    for name in (x.strip() for x in text.split(',')):
        if not name:
            continue
        if name in SECTION_ALIASES:
            want.update(SECTION_ALIASES[name])
        elif name in SECTIONS:
            want.add(name)
        else:
            bad.append(name)
    if bad:
        raise ValueError('unknown section(s): %s (choose from %s, or the '
                         'groups %s)' % (', '.join(bad), ', '.join(SECTIONS),
                                         ', '.join(sorted(SECTION_ALIASES))))
    return [x for x in SECTIONS if x in want]


def main(argv=None, prog=None, default_only='all'):
    p = argparse.ArgumentParser(
        prog=prog,
        description='Benchmark any2kvm convert on VHD, VHDX, VMDK and qcow2 '
                    'images and VHD chains (see benchmarks/README.rst).')
    p.add_argument('--size', type=parse_size, default=None,
                   help='virtual size of the single images and the chain '
                        '(default 4G; 256M with --quick)')
    p.add_argument('--data', type=parse_size, default=None,
                   help='data written (default 1G; 64M with --quick)')
    p.add_argument('--big-size', type=parse_size, default=None,
                   help='virtual size of the memory-bound image '
                        '(default 100G; 10G with --quick)')
    p.add_argument('--runs', type=int, default=None,
                   help='timed runs per command after one warm-up, each '
                        'after sync (default 5, 1 with --large; the median '
                        'counts)')
    p.add_argument('--quick', action='store_true',
                   help='small sizes for a smoke run')
    p.add_argument('--large', action='store_true',
                   help='the issue\'s large case: --size 20G --data 8G '
                        '(start-up no longer hides the copy loop); each '
                        'image is deleted after its section and each '
                        'output after its check, so that the disk holds at '
                        'most the raw disk, one image and one output')
    p.add_argument('--workdir',
                   help='where images are generated and cached (kept); '
                        'default a temporary dir, removed at the end')
    p.add_argument('--keep', action='store_true',
                   help='keep the default temporary work dir')
    p.add_argument('--only', default=default_only,
                   help='comma-separated sections to run: %s; or the '
                        'groups %s (default %s)' % (
                            ', '.join(SECTIONS),
                            ', '.join(sorted(SECTION_ALIASES)),
                            default_only))
    p.add_argument('--any2kvm', default=default_any2kvm(),
                   help='any2kvm executable (default: next to this python, '
                        'else on PATH)')
    p.add_argument('--timeout', type=int, default=1800,
                   help='seconds before a single run is killed')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--baseline', metavar='DIR',
                   help='a checkout of other any2kvm code (say, main before '
                        'a change): its conversions are timed in the same '
                        'run, interleaved; both are started from their '
                        'tree with this python')
    p.add_argument('--no-compile', action='store_true',
                   help='do not byte-compile the trees under test first '
                   '(an installed any2kvm is; with PYTHONDONTWRITEBYTECODE '
                   'set, an uncompiled tree compiles its modules at every '
                   'start)')
    p.add_argument('--inspect', action='store_true',
                   help='leave guest inspection on (ANY2KVM_INSPECT as set); '
                        'by default every any2kvm run gets '
                        'ANY2KVM_INSPECT=0: qemu-img does not inspect, and '
                        'a libguestfs launch costs more than the copy')
    args = p.parse_args(argv)
    if not args.inspect:
        os.environ['ANY2KVM_INSPECT'] = '0'
    args.tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
        if not os.path.isfile(os.path.join(args.baseline, 'any2kvm_os',
                                           'cmd', 'any2kvm.py')):
            p.error('--baseline %s: not an any2kvm checkout' % args.baseline)
    if args.large:
        args.size = args.size or 20 * GiB
        args.data = args.data or 8 * GiB
    args.size = args.size or (256 * MiB if args.quick else 4 * GiB)
    args.data = args.data or (64 * MiB if args.quick else GiB)
    args.big_size = args.big_size or (10 * GiB if args.quick else 100 * GiB)
    if args.size % (2 * MiB) or args.big_size % VHD_BLOCK:
        p.error('--size and --big-size must be multiples of 2 MiB')
    if args.runs is None:
        # --large: a run of an 8 GiB disk costs about a minute with its
        # sync, input read and content check: 8 per section at --runs 1.
        args.runs = 1 if args.large else 5
    if args.runs < 1:
        p.error('--runs must be at least 1')
    try:
        args.sections = parse_sections(args.only)
    except ValueError as e:
        p.error(str(e))
    if not args.sections:
        p.error('--only names no section')
    for tool in ('qemu-img', 'tar', 'gzip', 'cp'):
        if not shutil.which(tool):
            p.error('%s not found' % tool)

    temp = args.workdir is None
    if temp:
        args.workdir = tempfile.mkdtemp(prefix='any2kvm-bench-')
    os.makedirs(args.workdir, exist_ok=True)
    args.workdir = os.path.abspath(args.workdir)
    compiled = [] if args.no_compile else compile_trees(args)
    header(args)
    for line in compiled:
        out(line)
    bench = Bench(args)
    try:
        for s in args.sections:
            out('[%s]' % load_note())
            bench.run_section(s)
            out()
        bench.summary()
    finally:
        shutil.rmtree(bench.outdir, ignore_errors=True)
        if temp and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
        elif temp:
            out('work dir kept: %s' % args.workdir)
    return 1 if bench.failures else 0


if __name__ == '__main__':
    sys.exit(main())
