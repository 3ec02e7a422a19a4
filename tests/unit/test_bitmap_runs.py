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

"""``formats.base.bitmap_runs`` (the word-at-a-time scan) against a
model that looks at every bit on its own."""

import random

import pytest

from any2kvm_os.formats import base


def model(bitmap, first, count, msb_first):
    runs = []
    for s in range(first, first + count):
        byte = bitmap[s >> 3]
        bit = (0x80 >> (s & 7)) if msb_first else (1 << (s & 7))
        state = bool(byte & bit)
        if runs and runs[-1][2] == state:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, state)
        else:
            runs.append((s, 1, state))
    return runs


def bitmaps(rnd):
    for _ in range(3000):
        nbytes = rnd.randint(1, 80)
        kind = rnd.random()
        if kind < 0.3:
            yield bytes(rnd.choice([0, 255, rnd.randrange(256)])
                        for _ in range(nbytes))
        elif kind < 0.5:
            yield bytes(rnd.choice([0, 255]) for _ in range(nbytes))
        else:
            yield bytes(rnd.randrange(256) for _ in range(nbytes))


@pytest.mark.parametrize('msb_first', [True, False])
def test_against_the_model(msb_first):
    rnd = random.Random(7)
    for bm in bitmaps(rnd):
        first = rnd.randint(0, len(bm) * 8 - 1)
        count = rnd.randint(0, len(bm) * 8 - first)
        assert base.bitmap_runs(bm, first, count, msb_first) == model(
            bm, first, count, msb_first), (bm.hex(), first, count)


@pytest.mark.parametrize('bm', [b'\xff' * 512, b'\x00' * 512,
                                b'\xff' * 256 + b'\x00' * 256,
                                b'\x55' * 512, bytes(range(256)) * 2])
def test_whole_block_bitmaps(bm):
    for msb_first in (True, False):
        for first, count in ((0, 4096), (1, 4094), (63, 65), (4095, 1)):
            assert base.bitmap_runs(bm, first, count, msb_first) == model(
                bm, first, count, msb_first)


def test_memoryview_and_empty():
    bm = memoryview(bytearray(b'\x0f\xf0'))
    assert base.bitmap_runs(bm, 0, 16, True) == [
        (0, 4, False), (4, 8, True), (12, 4, False)]
    assert base.bitmap_runs(bm, 3, 0, True) == []
