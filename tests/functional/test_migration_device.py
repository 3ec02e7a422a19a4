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

"""Warm migration onto block devices (``migration create --device``):
loop devices prefilled with garbage, the stand-in XenServer over a real
sshd, the CLI in a child process.  The bytes of each device are checked
against the stand-in's model of the disk (the independent answer: what
the guest wrote, tracked apart from any VHD code), and the device's tail
beyond the disk against the garbage (never written).  Skipped where no
loop device can be attached (not root, no losetup); the same code, and
the refusals, zeroed devices and abort, are tested in process in
tests/unit/test_blockdev_target.py (on regular files where no loop
device can be had)."""

import contextlib
import hashlib
import os

import pytest

from tests.functional import test_migration as tm
from tests.lib import blockdev
from tests.lib import imagegen as ig

MiB = 1 << 20
#: The sizes of the disks of the stand-in's VM "two-disks".
DISKS = (8 * MiB, 4 * MiB)
#: Bytes of each device beyond its disk (garbage, never written).
SPARE = MiB

bed = tm.bed


def garbage(seed, size):
    return ig.pattern(seed, size)


@pytest.fixture
def devices(tmp_path):
    """A loop device per disk of "two-disks", each SPARE bytes larger
    than its disk and full of garbage; detached afterwards, even when the
    test fails."""
    with contextlib.ExitStack() as stack:
        devs = []
        for i, size in enumerate(DISKS):
            backing = tmp_path / ('dev%d.img' % i)
            backing.write_bytes(garbage(100 + i, size + SPARE))
            devs.append(stack.enter_context(blockdev.loop_device(backing)))
        yield devs


def read_device(path, size):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def check(m, facts, devs):
    for d, dev in zip(m['disks'], devs):
        assert d['target_ref'] == dev
        model = facts['models'][d['source_id']]
        data = read_device(dev, model.size + SPARE)
        assert hashlib.sha256(data[:model.size]).hexdigest() == \
            model.sha256(), dev
        i = devs.index(dev)
        assert data[model.size:] == garbage(100 + i, model.size +
                                            SPARE)[model.size:], dev


def test_create_sync_sync_cutover_onto_devices(bed, devices, tmp_path):
    root, facts, out, loc, common = bed
    # Refused in one line, before the host is asked.
    regular = tmp_path / 'regular.raw'
    regular.write_bytes(bytes(16 * MiB))
    r = tm.mig('create', 'web', loc, '--device', devices[0], '--device',
               regular, common=common, ok=False)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].endswith(
        '%s: is a regular file, not a block device' % regular), r.stderr
    assert 'Traceback' not in r.stderr
    tm.mig('create', 'web', loc, '--device', devices[0], '--device',
           devices[1], common=common)
    m = tm.show(common)
    assert m['target'] == 'file'
    assert m['target_options']['devices'] == devices
    assert [d['target_ref'] for d in m['disks']] == devices
    text = tm.mig('show', 'web', common=common[-2:]).stdout
    assert devices[0] in text and 'never deleted or wiped' in text, text
    w0, w1 = tm.writers(root, facts, m)
    r = tm.mig('sync', 'web', '--no-inspect', common=common)
    assert '2 layer(s) applied' in r.stdout, r.stdout
    # After the first sync the devices already hold the disks: every
    # range the VM has no data in was zeroed over the garbage.
    check(tm.show(common), facts, devices)
    w0.write(5 * MiB, ig.pattern(21, 2 * MiB))
    w0.zero(0, 4096)
    w1.write(MiB + 300, b'a partial sector')
    tm.mig('sync', 'web', '--no-inspect', common=common)
    w0.write(7 * MiB, ig.pattern(22, 4096))
    w1.zero(MiB, 512)
    r = tm.mig('cutover', 'web', '--timeout', '60', '--no-inspect',
               common=common)
    assert 'downtime' in r.stdout, r.stdout
    m = tm.show(common)
    assert m['status'] == 'done'
    check(m, facts, devices)
