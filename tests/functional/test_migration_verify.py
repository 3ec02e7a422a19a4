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

"""``any2kvm migration verify``: the targets compared with the VM's
disks read again from the host (the real sshd, the ``xe`` stand-in, a
two-disk VM whose guest writes between syncs).  A byte changed in a
target, in data or in what must read as zeros, is found and named; the
host's garbage collector merging layers after the cutover changes
nothing; what cannot be verified is refused in one line."""

import json
import os

from tests.functional.test_migration import bed  # noqa: F401 (fixture)
from tests.functional.test_migration import mig
from tests.functional.test_migration import openstack
from tests.functional.test_migration import show
from tests.functional.test_migration import writers
from tests.lib import imagegen as ig
from tests.lib.xenserver import host as xhost
from tests.lib.xenserver import sr as srlib

MiB = 1 << 20


def _poke(path, offset, data):
    """Write ``data`` into the target file ``path`` at ``offset``; returns
    what was there."""
    fd = os.open(str(path), os.O_RDWR)
    try:
        old = os.pread(fd, len(data), offset)
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    return old


def _error(res):
    """The command failed with one line on stderr; that line."""
    assert res.returncode != 0, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def _verify_error(common):
    return _error(mig('verify', 'web', '--no-progress', common=common,
                      ok=False))


def test_verify_after_sync_finds_a_changed_byte_and_after_cutover(bed):  # noqa: F811,E501
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--output-dir', out, common=common)
    # Nothing synced yet: nothing to compare.
    line = _verify_error(common)
    assert 'is created: a migration is verified after a sync' in line, line
    m = show(common)
    w0, w1 = writers(root, facts, m)
    mig('sync', 'web', common=common)
    w0.write(5 * MiB, ig.pattern(51, 2 * MiB))
    w1.write(MiB + 300, b'a partial sector')
    mig('sync', 'web', common=common)
    # The guest writes on: the running leaf is not what was synced, and
    # is not compared.
    w0.write(0, ig.pattern(52, 4096))
    r = mig('verify', 'web', '--format', 'json', '--no-progress',
            common=common)
    result = json.loads(r.stdout)
    assert result['against'] == 'the layers of the last sync'
    assert [t['identical'] for t in result['targets']] == [True, True]
    for t, d in zip(result['targets'], m['disks']):
        assert t['compared'] == t['virtual_size'] == d['virtual_size']
        assert t['differing'] == 0 and t['layers'] >= 2
    # Every byte of data crossed the wire again (and little more).
    data = sum(t['data'] for t in result['targets'])
    assert data <= result['bytes_read'] <= 1.05 * data + 256 * 1024
    text = mig('verify', 'web', common=common).stdout
    assert text.startswith('verified web: every target equals the layers '
                           'of the last sync'), text
    assert text.count(': identical') == 2, text

    # A byte changed in a target's data, and one where zeros must be.
    t0, t1 = (d['target_ref'] for d in m['disks'])
    old0 = _poke(t0, 5 * MiB + 100, b'\xff')
    size1 = m['disks'][1]['virtual_size']
    old1 = _poke(t1, size1 - 8192, b'not zero')
    line = _verify_error(common)
    assert ('disk 0 (%s) differs from the host\'s: 4096 byte(s) differ, '
            'the first at offset %d (4096 bytes there)'
            % (t0, 5 * MiB)) in line, line
    assert ('disk 1 (%s) differs from the host\'s: 4096 byte(s) differ, '
            'the first at offset %d' % (t1, size1 - 8192)) in line, line
    _poke(t0, 5 * MiB + 100, old0)
    _poke(t1, size1 - 8192, old1)
    # A file target cut short.
    os.truncate(t1, size1 - MiB)
    line = _verify_error(common)
    assert 'the target is %d bytes, the disk %d' % (size1 - MiB, size1) \
        in line, line
    os.truncate(t1, size1)

    # After the cutover: the halted VM's disks, whole; the host's garbage
    # collector merging the layers (the migration's snapshots are gone)
    # changes nothing.
    mig('cutover', 'web', '--timeout', '60', common=common)
    for w in (w0, w1):
        node = srlib.chain(w.path)[1][:-len('.vhd')]
        xhost.coalesce(root, node)
    r = openstack('verify', 'web', '-f', 'json', '--no-progress', *common)
    result = json.loads(r.stdout)
    assert result['against'] == 'the halted VM\'s disks'
    assert [t['identical'] for t in result['targets']] == [True, True]
    # The VM started again (a rollback): its disks have moved on.
    mig('rollback', 'web', common=common)
    line = _verify_error(common)
    assert 'disk 0: the host holds layers its target lacks' in line, line
    assert 'sync first' in line
