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

"""Incremental apply (``convert --onto``) against FATtools-written chains.

The chain grows in steps as it does on a running VM: base, snapshot 1,
snapshot 2, final.  Each step applies what is new below the active layer;
``--finish`` applies the last delta.  The result must equal a one-shot
conversion and the write model, including where a child wrote zeros over
data its parent had written.
"""

import json
import os
import shutil

import pytest

from tests.lib import cli
from tests.lib import imagegen as ig

MiB = 1 << 20


def _fill(seed, n):
    return ig.pattern(seed, n)


@pytest.fixture
def growing_chain(fattools, tmp_path):
    """A FatChain whose steps are added by the test."""
    return ig.FatChain(tmp_path / 'sr', 16 * MiB)


def state_of(target):
    with open(str(target) + '.any2kvm-state.json') as f:
        return json.load(f)


def test_steps_then_finish_equal_one_shot(growing_chain, tmp_path):
    c = growing_chain
    target = tmp_path / 'target.raw'
    c.base('base.vhd', [(0, _fill(1, 6 * MiB)), (10 * MiB, _fill(2, MiB))])
    # snapshot 1: partial sectors inside a block, and zeros over base data
    c.child('s1.vhd', [(512 * 3, _fill(3, 1024)),
                       (2 * MiB, b'\0' * (MiB + 4096)),
                       (12 * MiB, _fill(4, 8192))])
    c.child('s2.vhd', [(5 * MiB, _fill(5, 64 * 1024))])   # active layer
    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target)
    assert r.returncode == 0, cli.describe(r)
    applied_line, left_line = r.stdout.splitlines()
    assert 'base.vhd, ' in applied_line and 's1.vhd' in applied_line
    assert left_line.startswith('still to apply: ')
    assert 's2.vhd' in left_line and 'base.vhd' not in left_line
    # The target now holds base + s1 exactly.
    assert ig.sha256_file(target) == c.layers[1].model.sha256()
    assert [a['name'] for a in state_of(target)['applied']] == [
        c.layers[0].path, c.layers[1].path]

    # Re-running the same step is harmless.
    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target)
    assert r.returncode == 0 and 'nothing to apply' in r.stdout, \
        cli.describe(r)
    assert ig.sha256_file(target) == c.layers[1].model.sha256()

    # The VM took another snapshot: s2 is now below the active layer.
    c.child('final.vhd', [(2 * MiB + 4096, b'\0' * 4096),
                          (11 * MiB, _fill(6, 3 * MiB))])
    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target)
    assert r.returncode == 0, cli.describe(r)
    assert r.stdout.startswith('applied onto %s: ' % target)
    assert 's2.vhd' in r.stdout.splitlines()[0]
    assert ig.sha256_file(target) == c.layers[2].model.sha256()

    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target, '--finish')
    assert r.returncode == 0, cli.describe(r)
    assert 'holds the whole disk' in r.stdout

    one_shot = cli.convert(c.leaf.path, tmp_path / 'one-shot.raw')
    assert ig.sha256_file(target) == ig.sha256_file(one_shot)
    assert ig.sha256_file(target) == c.model.sha256()


def test_explicit_start_and_stop(growing_chain, tmp_path):
    c = growing_chain
    c.base('b.vhd', [(0, _fill(7, 2 * MiB))])
    c.child('c1.vhd', [(MiB, b'\0' * MiB)])
    c.child('c2.vhd', [(4 * MiB, _fill(8, MiB))])
    c.child('c3.vhd', [(0, _fill(9, 4096))])
    target = tmp_path / 't.raw'
    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target,
                        '--stop-at', 'b.vhd')
    assert r.returncode == 0, cli.describe(r)
    assert ig.sha256_file(target) == c.layers[0].model.sha256()
    # Skipping c1 is refused: c2's parent is not what the target holds.
    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target,
                        '--start-at', 'c2.vhd')
    cli.assert_refused(r, names=['c2.vhd'], problem='parent is not the last')
    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target,
                        '--start-at', 'c1.vhd', '--stop-at', 'c2.vhd')
    assert r.returncode == 0, cli.describe(r)
    assert ig.sha256_file(target) == c.layers[2].model.sha256()
    # An id works as a selector too.
    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target,
                        '--stop-at', c.layers[3].uuid)
    assert r.returncode == 0, cli.describe(r)
    assert ig.sha256_file(target) == c.model.sha256()


def test_state_from_another_chain_is_refused(fattools, tmp_path):
    a = ig.FatChain(tmp_path / 'a', 4 * MiB)
    a.base('a0.vhd', [(0, _fill(1, MiB))])
    a.child('a1.vhd', [(0, _fill(2, 512))])
    a.child('a2.vhd')
    b = ig.FatChain(tmp_path / 'b', 4 * MiB)
    b.base('b0.vhd', [(0, _fill(3, MiB))])
    b.child('b1.vhd')
    target = tmp_path / 't.raw'
    assert cli.run_any2kvm('convert', a.leaf.path, '--onto',
                           target).returncode == 0
    before = ig.sha256_file(target)
    r = cli.run_any2kvm('convert', b.leaf.path, '--onto', target)
    cli.assert_refused(r, names=['t.raw'], problem='not in this chain')
    assert ig.sha256_file(target) == before


def test_state_dir_and_existing_target_with_old_data(growing_chain,
                                                     tmp_path):
    c = growing_chain
    c.base('base.vhd', [(MiB, _fill(1, MiB))])
    c.child('leaf.vhd', [(0, _fill(2, 4096))])
    target = tmp_path / 'disk.img'
    target.write_bytes(b'\xee' * (20 * MiB))   # stale content everywhere
    states = tmp_path / 'states'
    states.mkdir()
    r = cli.run_any2kvm('convert', c.leaf.path, '--onto', target,
                        '--state-dir', states, '--finish')
    assert r.returncode == 0, cli.describe(r)
    assert os.path.exists(states / 'disk.img.any2kvm-state.json')
    assert not os.path.exists(str(target) + '.any2kvm-state.json')
    assert target.stat().st_size == 16 * MiB
    assert ig.sha256_file(target) == c.model.sha256()


def test_compressed_archive_is_refused_for_onto(growing_chain, tmp_path):
    c = growing_chain
    c.base('base.vhd', [(0, _fill(1, 4096))])
    c.child('leaf.vhd')
    arch = tmp_path / 'x.tgz'
    ig.make_tar(arch, ig.xenserver_members(
        [c.layers[1].path, c.layers[0].path]), compression='gz')
    target = tmp_path / 'out' / 't.raw'
    target.parent.mkdir()
    r = cli.run_any2kvm('convert', arch, '--onto', target)
    cli.assert_refused(r, output=target, names=[arch],
                       problem='random access')
    shutil.rmtree(target.parent)


def test_qcow2_zero_clusters_overwrite_target(qemu_img, tmp_path):
    """A child whose zero clusters (qemu-io ``write -z``) hide data the
    base wrote: applied step by step, the zeros must overwrite what the
    target already holds.  Truth: qemu-img's raw reading of each step."""
    d = tmp_path / 'chain'
    d.mkdir()
    ig.qemu_img('create', '-f', 'qcow2', d / 'base.qcow2', '16M')
    ig.qio(d / 'base.qcow2', 'write -P 0x11 0 8M')
    steps = [('s1.qcow2', ['write -z 1M 2M', 'write -P 0x22 6M 64k']),
             ('s2.qcow2', ['write -z 5M 3M']),
             ('top.qcow2', ['write -P 0x33 0 4k'])]
    parent = 'base.qcow2'
    for name, cmds in steps:
        ig.qemu_img('create', '-f', 'qcow2', '-b', parent, '-F', 'qcow2',
                    d / name)
        ig.qio(d / name, *cmds)
        parent = name
    target = tmp_path / 't.raw'
    r = cli.run_any2kvm('convert', d / 'top.qcow2', '--onto', target,
                        '--stop-at', 's1.qcow2')
    assert r.returncode == 0, cli.describe(r)
    step = ig.qemu_raw(d / 's1.qcow2', tmp_path / 's1.raw')
    assert ig.sha256_file(target) == ig.sha256_file(step)
    r = cli.run_any2kvm('convert', d / 'top.qcow2', '--onto', target,
                        '--finish')
    assert r.returncode == 0, cli.describe(r)
    whole = ig.qemu_raw(d / 'top.qcow2', tmp_path / 'top.raw')
    assert ig.sha256_file(target) == ig.sha256_file(whole)
    # The zeroed ranges read as zeros and are holes in the target.
    with open(target, 'rb') as f:
        f.seek(1 << 20)
        assert f.read(2 << 20) == bytes(2 << 20)
    assert ig.allocated_bytes(target) < 6 << 20
