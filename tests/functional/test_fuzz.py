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

"""Mutation fuzzing of every format and container the command reads.

For each format a small seed is made here (qemu-img, the test builders),
or taken from the shared corpus (``CORPUS_SEEDS``), then mutated: bytes
flipped, a byte inserted or deleted, the file cut, a field overwritten
with a boundary value, a sector zeroed or copied over another.  In
archives the mutation lands inside a member's data most of the time (and
the compressed XenServer archive is the mutated plain tar, gzipped, so its
one-pass reader sees the damage).
``any2kvm info`` and ``convert`` run on every mutant
(:mod:`tests.lib.fuzzdriver`, one process per format), and:

* no exception escapes, no "internal error": every refusal is the
  one-line ``any2kvm: error: ...`` and exit status 1;
* a success is exit status 0 (a mutant may still be a valid disk);
* nothing is left in the output directory after a refusal, nor in the
  temporary directory ever;
* no hang: each format's run is bounded by a timeout;
* a byte inserted or deleted that converts with exit 0 reads as the seed
  does, for the formats where such a shift is detectable
  (``SHIFT_DETECTED``).

The default is a handful of mutants per format, so the suite stays fast.
``ANY2KVM_FUZZ_ITERATIONS=N`` (mutants per format) and
``ANY2KVM_FUZZ_SEED=S`` make longer or other runs; a failure names the
seed, the format and the mutation, which replays it.
"""

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.lib import fuzzdriver
from tests.lib import imagegen as ig
from tests.lib import samples
from tests.lib import vhdbuild

ITERATIONS = int(os.environ.get('ANY2KVM_FUZZ_ITERATIONS') or 3)
SEED = int(os.environ.get('ANY2KVM_FUZZ_SEED') or 1414)
#: Seconds per mutant (info + convert of a 4 MiB disk) on a loaded machine,
#: on top of a fixed allowance for the driver's start.
PER_MUTANT = 30
START = 120

INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x200, 0x1000, 0x7fffffff,
               0x80000000, 0xffffffff, 0xfffffffe, 1 << 32, 1 << 40,
               0x7fffffffffffffff, 0xffffffffffffffff]


# -- seeds --------------------------------------------------------------------

def _qemu(d, name, qfmt, options):
    return samples._qemu(d, name, qfmt, options)[0]


def _xenserver_tar(d):
    paths = vhdbuild.write_chain(Path(d), 3)
    tar = Path(d) / 'vdi.tar'
    ig.make_tar(tar, ig.xenserver_members([str(p) for p in paths]))
    return tar


def _qcow2_tables(d):
    """A qcow2 with internal snapshots and persistent bitmaps: it ends
    with its last snapshot table, inside a sector."""
    path = _qemu(d, 'qt.qcow2', 'qcow2', [])
    for args in (['bitmap', '--add', path, 'b0'],
                 ['snapshot', '-c', 's1', path],
                 ['bitmap', '--add', '--granularity', '512', path, 'b1'],
                 ['snapshot', '-c', 'second', path]):
        subprocess.run(['qemu-img'] + [str(a) for a in args], check=True,
                       capture_output=True, timeout=120)
    return path


SEEDS = {
    'vhd-dynamic': lambda d: _qemu(d, 'd.vhd', 'vpc', [
        '-o', 'subformat=dynamic,force_size=on']),
    'vhd-fixed': lambda d: _qemu(d, 'f.vhd', 'vpc', [
        '-o', 'subformat=fixed,force_size=on']),
    'vhdx': lambda d: _qemu(d, 'd.vhdx', 'vhdx', []),
    'vmdk-sparse': lambda d: _qemu(d, 's.vmdk', 'vmdk', [
        '-o', 'subformat=monolithicSparse']),
    'vmdk-stream': lambda d: _qemu(d, 't.vmdk', 'vmdk', [
        '-o', 'subformat=streamOptimized']),
    'qcow2': lambda d: _qemu(d, 'q.qcow2', 'qcow2', []),
    'qcow2-tables': _qcow2_tables,
    'xenserver-tar': _xenserver_tar,
    'xenserver-tgz': _xenserver_tar,       # gzipped after the mutation
    'xva': lambda d: samples.CONTAINERS['xva'](d).path,
    'ova': lambda d: samples.CONTAINERS['ova'](d).path,
}
#: Seeds from the shared corpus (written by other tools than the test
#: builders: dfvfs's qcow2, python3-vmdkstream's streamOptimized VMDK).
CORPUS_SEEDS = {
    'qcow2-corpus': 'upstream/dfvfs/ext2.qcow2',
    'vmdk-stream-corpus': 'generated/vmdkstream-0.2.vmdk.gz',
}
GZIP_AFTER = {'xenserver-tgz'}
#: Formats whose structure makes a byte inserted or deleted detectable
#: (whole sectors, a footer at the end, sizes in tar headers and chunk
#: checksums): such a mutant is refused, or reads as the seed does (the
#: byte fell in padding).  VHDX and qcow2 are in since their readers refuse
#: a length that is not whole sectors (every structure of theirs is
#: aligned; qemu-img reads such a file shifted).
SHIFT_DETECTED = {'vhd-dynamic', 'vhd-fixed', 'vmdk-sparse', 'vmdk-stream',
                  'xenserver-tar', 'xenserver-tgz', 'xva', 'ova', 'vhdx',
                  'qcow2', 'qcow2-corpus', 'vmdk-stream-corpus',
                  'qcow2-tables'}


# -- mutations ----------------------------------------------------------------

def _regions(path, data):
    """Where to aim: the member data of a tar, or the whole file."""
    try:
        with tarfile.open(path) as tf:
            regions = [(m.offset_data, m.size) for m in tf.getmembers()
                       if m.isfile() and m.size]
    except tarfile.TarError:
        regions = []
    return regions or [(0, len(data))]


def _offset(rnd, start, size):
    """An offset in [start, start + size), biased to the metadata: the
    first 64 KiB and the last 4 KiB."""
    r = rnd.random()
    if r < 0.5:
        return start + rnd.randrange(min(size, 64 << 10))
    if r < 0.75:
        return start + size - 1 - rnd.randrange(min(size, 4096))
    return start + rnd.randrange(size)


def mutate(rnd, path, data):
    """Return (description, mutated bytes)."""
    start, size = (rnd.choice(_regions(path, data))
                   if rnd.random() < 0.8 else (0, len(data)))
    kind = rnd.choice(['flip', 'flip', 'insert', 'delete', 'truncate',
                       'field', 'field', 'zero-sector', 'copy-sector'])
    out = bytearray(data)
    if kind == 'flip':
        offs = [_offset(rnd, start, size) for _ in range(rnd.randint(1, 4))]
        for o in offs:
            out[o] ^= rnd.randint(1, 255)
        return 'flip %s' % offs, bytes(out)
    if kind == 'insert':
        o = _offset(rnd, start, size)
        b = rnd.randint(0, 255)
        return 'insert %#x at %d' % (b, o), bytes(out[:o] + bytes([b]) +
                                                  out[o:])
    if kind == 'delete':
        o = _offset(rnd, start, size)
        return 'delete at %d' % o, bytes(out[:o] + out[o + 1:])
    if kind == 'truncate':
        o = rnd.randrange(len(data))
        return 'truncate to %d' % o, bytes(out[:o])
    if kind == 'field':
        width = rnd.choice([2, 4, 8])
        o = _offset(rnd, start, size) & ~(width - 1)
        value = rnd.choice(INTERESTING) & ((1 << (8 * width)) - 1)
        order = rnd.choice(['little', 'big'])
        out[o:o + width] = value.to_bytes(width, order)
        return 'field %d@%d=%#x %s' % (width, o, value, order), \
            bytes(out[:len(data)])
    sector = (_offset(rnd, start, size) // 512) * 512
    if kind == 'zero-sector':
        out[sector:sector + 512] = bytes(len(out[sector:sector + 512]))
        return 'zero sector at %d' % sector, bytes(out)
    other = rnd.randrange(max(len(data) // 512, 1)) * 512
    piece = bytes(out[other:other + 512])
    out[sector:sector + len(piece)] = piece
    return 'copy sector %d to %d' % (other, sector), bytes(out[:len(data)])


# -- the test -----------------------------------------------------------------

def _run_driver(work, inputs, timeout):
    spec = work / 'spec.json'
    spec.write_text(json.dumps({'work': str(work / 'run'),
                                'inputs': [str(p) for p in inputs]}))
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    env['LC_ALL'] = 'C.UTF-8'
    proc = subprocess.Popen(
        [sys.executable, fuzzdriver.__file__, str(spec)], cwd='/',
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=60)
        hung = True
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{')]
    return lines, err, hung, proc.returncode


def _problems(result):
    """What is wrong with one mutant's result (empty: all is well)."""
    bad = []
    for cmd in ('info', 'convert'):
        r = result[cmd]
        if r['escaped']:
            bad.append('%s: exception escaped main():\n%s'
                       % (cmd, r['escaped']))
            continue
        err = r['stderr']
        if 'Traceback' in err or 'internal error' in err:
            bad.append('%s: %s' % (cmd, err.strip()))
        if r['rc'] not in (0, 1):
            bad.append('%s: exit status %r' % (cmd, r['rc']))
        if r['rc'] == 1:
            lines = err.splitlines()
            if len(lines) != 1 or not lines[0].startswith(
                    'any2kvm: error: '):
                bad.append('%s: refusal is not one error line: %r'
                           % (cmd, err))
    if result['left_in_output']:
        bad.append('left in the output directory: %s'
                   % result['left_in_output'])
    if result['left_in_tmp']:
        bad.append('left in TMPDIR: %s' % result['left_in_tmp'])
    return bad


@pytest.mark.parametrize('fmt', sorted(SEEDS) + sorted(CORPUS_SEEDS))
def test_fuzz(fmt, qemu_img, tmp_path, request):
    seed_dir = tmp_path / 'seed'
    seed_dir.mkdir()
    if fmt in CORPUS_SEEDS:
        stored = request.getfixturevalue('corpus_file')(CORPUS_SEEDS[fmt])
        seed = seed_dir / stored.name
        shutil.copyfile(stored, seed)
    else:
        seed = Path(SEEDS[fmt](seed_dir))
    data = seed.read_bytes()
    rnd = random.Random('%d-%s' % (SEED, fmt))
    mutants = tmp_path / 'mutants'
    mutants.mkdir()
    suffix = '.tgz' if fmt in GZIP_AFTER else seed.suffix
    first = mutants / ('seed' + suffix)
    first.write_bytes(gzip.compress(data, 1) if fmt in GZIP_AFTER else data)
    inputs = [first]
    what = {str(first): 'the seed itself'}
    for i in range(ITERATIONS):
        desc, bad = mutate(rnd, seed, data)
        if fmt in GZIP_AFTER:
            bad = gzip.compress(bad, 1)
        path = mutants / ('m%04d%s' % (i, suffix))
        path.write_bytes(bad)
        inputs.append(path)
        what[str(path)] = desc
    shutil.rmtree(seed_dir)
    timeout = START + PER_MUTANT * len(inputs)
    lines, err, hung, rc = _run_driver(tmp_path, inputs, timeout)
    starts = [ln['start'] for ln in lines if 'start' in ln]
    done = [ln for ln in lines if 'done' in ln]
    results = [ln for ln in lines if 'input' in ln]
    replay = 'ANY2KVM_FUZZ_SEED=%d ANY2KVM_FUZZ_ITERATIONS=%d, %s' % (
        SEED, ITERATIONS, fmt)
    if hung or len(results) != len(inputs):
        last = starts[-1] if starts else None
        pytest.fail('%s: the driver %s on %s (%s); stderr:\n%s' % (
            replay, 'hung (%d s)' % timeout if hung else
            'stopped with status %s' % rc, last, what.get(last),
            err[-3000:]),
            pytrace=False)
    first = results[0]
    assert first['convert']['rc'] == 0, '%s: the seed does not convert: %s' \
        % (replay, first['convert']['stderr'])
    refused = sum(1 for r in results[1:] if r['convert']['rc'] == 1)
    print('fuzz %s: %d mutants, %d refused, %d read, peak RSS %.1f MiB '
          '(%s)' % (fmt, len(results) - 1, refused, len(results) - 1 - refused,
                    (done[0].get('maxrss_kib') or 0) / 1024 if done else 0,
                    replay))
    failures = []
    for result in results:
        problems = _problems(result)
        desc = what[result['input']]
        if (fmt in SHIFT_DETECTED and desc.split()[0] in ('insert', 'delete')
                and result['convert']['rc'] == 0
                and result.get('sha256') != first.get('sha256')):
            problems.append('a byte %s: read with exit 0 into another '
                            'disk than the seed' % {
                                'insert': 'inserted', 'delete': 'deleted'}[
                                desc.split()[0]])
        for problem in problems:
            failures.append('%s (%s): %s' % (
                os.path.basename(result['input']), desc, problem))
    assert not failures, '%s:\n%s' % (replay, '\n'.join(failures))
