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

"""The comparing target of ``migration verify`` (verify.Comparer): what
the copy loop would write compared, what it would zero read and checked,
differences counted in grains and reported as merged ranges; and what
is refused before the host is asked."""

import os

from any2kvm_os.migration import verify

MiB = 1 << 20


def _target(tmp_path, size, writes=()):
    path = tmp_path / 'target.raw'
    with open(str(path), 'wb') as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)
    return verify.Comparer(str(path))


def test_identical_data_and_zeros(tmp_path):
    c = _target(tmp_path, 8 * MiB, [(MiB, b'x' * 5000)])
    c.resize(8 * MiB)
    c.write_data(MiB, b'x' * 5000)
    c.zero_range(0, MiB)
    c.zero_range(MiB + 5000, 8 * MiB - MiB - 5000)
    r = c.report()
    c.close()
    assert (r['compared'], r['data'], r['differing'], r['ranges'],
            r['size_problem']) == (8 * MiB, 5000, 0, [], None)


def test_differences_are_counted_in_grains_and_merged(tmp_path):
    # Data that differs in two neighbouring grains and one far off; a
    # byte where zeros must be (in the file's data, past a hole).
    c = _target(tmp_path, 8 * MiB, [
        (4096, b'a' * 8192), (MiB, b'b' * 10), (6 * MiB + 1, b'!')])
    c.resize(8 * MiB)
    c.write_data(4096, b'a' * 100 + b'X' + b'a' * 5000 + b'Y' + b'a' * 3090)
    c.write_data(MiB, b'b' * 9 + b'c')
    c.zero_range(2 * MiB, 6 * MiB)
    r = c.report()
    c.close()
    # (A piece shorter than its grain counts its own bytes.)
    assert r['ranges'] == [[4096, 12288], [MiB, MiB + 10],
                           [6 * MiB, 6 * MiB + 4096]]
    assert r['differing'] == 3 * 4096 + 10
    # A piece that starts inside a grain: the grains as the disk cuts
    # them.
    c = _target(tmp_path, MiB, [(4000, b'z' * 200)])
    c.resize(MiB)
    c.write_data(4000, b'z' * 199 + b'Z')
    assert c.report()['ranges'] == [[4096, 4200]]
    c.close()


def test_at_most_max_ranges_are_kept_all_are_counted(tmp_path):
    n = verify.MAX_RANGES + 3
    c = _target(tmp_path, MiB, [(i * 8192, b'!') for i in range(n)])
    c.resize(MiB)
    c.zero_range(0, MiB)
    r = c.report()
    c.close()
    assert len(r['ranges']) == verify.MAX_RANGES
    assert r['differing'] == n * 4096


def test_a_target_of_the_wrong_size(tmp_path):
    c = _target(tmp_path, MiB - 4096)
    c.resize(MiB)
    c.zero_range(0, MiB)        # the missing tail reads as zeros
    r = c.report()
    c.close()
    assert r['differing'] == 0
    assert r['size_problem'] == 'the target is %d bytes, the disk %d' % (
        MiB - 4096, MiB)
    # A file larger than the disk is wrong too (a volume or device may
    # be larger).
    c = _target(tmp_path, 2 * MiB)
    c.resize(MiB)
    assert c.size_problem() is not None
    c.close()
    # A volume's file (its size in whole GiB) may be larger: not exact.
    c = verify.Comparer(str(tmp_path / 'target.raw'), exact=False)
    c.resize(MiB)
    assert c.size_problem() is None
    c.resize(4 * MiB)
    assert c.size_problem() == 'the target is %d bytes, the disk %d' % (
        2 * MiB, 4 * MiB)
    c.close()


def test_holes_are_not_read(tmp_path, monkeypatch):
    c = _target(tmp_path, 64 * MiB, [(32 * MiB, b'q')])
    reads = []
    real = os.pread

    def pread(fd, n, offset):
        reads.append((offset, n))
        return real(fd, n, offset)
    monkeypatch.setattr(verify.os, 'pread', pread)
    c.resize(64 * MiB)
    c.zero_range(0, 64 * MiB)
    c.close()
    # Only the file's data is read (ext4 and tmpfs: one block or page).
    assert sum(n for _o, n in reads) <= 64 * 1024, reads
    assert c.report()['ranges'] == [[32 * MiB, 32 * MiB + 4096]]


def test_refusals_before_the_host_is_asked():
    assert 'is created: a migration is verified after a sync' in \
        verify._refusal({'status': 'created'})
    assert 'is failed' in verify._refusal({'status': 'failed'})
    assert verify._refusal({'status': 'synced'}) is None
    done = {'status': 'done', 'cutover': {'details': {
        'guest_inspected_by': 'cutover --fix', 'fixed': '/etc/fstab'}}}
    assert 'its cutover\'s --fix changed the targets (/etc/fstab)' in \
        verify._refusal(done)
    done['cutover']['details']['fixed'] = 'nothing to fix'
    assert verify._refusal(done) is None
