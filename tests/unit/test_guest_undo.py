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

"""The undo journal of a multi-disk --fix keeps zeros as holes."""

import os

from any2kvm_os.guest import inspect as gi

MiB = 1 << 20


def test_zero_ranges_cost_no_space_and_come_back(tmp_path):
    disk = tmp_path / 'disk.raw'
    with open(disk, 'wb') as f:
        f.truncate(64 * MiB)
        f.seek(1 * MiB)
        f.write(b'\x5a' * MiB)
        f.seek(40 * MiB + 17)
        f.write(b'tail')
    # What a trimming fix overwrites: the data, 30 MiB of holes, the tail
    # and 1 MiB past the disk's end.
    ranges = [(0, 34 * MiB), (40 * MiB, MiB), (64 * MiB, MiB)]
    undo = tmp_path / 'undo-0'
    gi._copy_ranges(str(disk), str(undo), ranges, False)
    assert os.path.getsize(undo) == 36 * MiB
    # Written in 4 MiB chunks: the two chunks holding data, not 36 MiB.
    assert os.stat(undo).st_blocks * 512 <= 6 * MiB
    before = disk.read_bytes()
    with open(disk, 'r+b') as f:
        f.seek(0)
        f.write(b'\xff' * 34 * MiB)
        f.seek(40 * MiB)
        f.write(b'\xee' * MiB)
    gi._copy_ranges(str(disk), str(undo), ranges, True)
    after = disk.read_bytes()
    assert after[:64 * MiB] == before
    assert after[64 * MiB:] == bytes(len(after) - 64 * MiB)
