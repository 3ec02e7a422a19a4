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

"""Single VHDs written by qemu-img, read back by qemu-img and libvhdi.

Virtual size rule: the footer's current size.  qemu-img without
``force_size`` rounds the size up to a CHS geometry *and stores that rounded
size* in the footer (creator ``qemu``), so qemu, libvhdi and the footer agree
on it; with ``force_size=on`` (creator ``qem2``) the exact size is kept.
"""

import os

import pytest

from tests.lib import cli
from tests.lib.cli import basename
from tests.lib import imagegen as ig

MiB, KiB = ig.MiB, ig.KiB

# 13 MiB + 5 sectors: the last 2 MiB VHD block is partial.
RAW_SIZE = 13 * MiB + 2560
RAW_EXTENTS = [
    (0, ig.pattern(101, 1 * MiB)),              # data
    (1 * MiB, bytes(1 * MiB)),                  # explicit zeros
    # 2..4 MiB: hole in the raw file (a whole VHD block never written)
    (4 * MiB, ig.pattern(102, 7 * 512)),        # a few sectors in a block
    (6 * MiB, bytes(2 * MiB)),                  # a whole block of zeros
    (8 * MiB, ig.pattern(103, 1 * MiB + 100)),  # ends inside a sector
    (12 * MiB, ig.pattern(104, RAW_SIZE - 12 * MiB)),  # partial last block
]
# allocation may exceed qemu-img's own raw output by this much at most
SPARSE_TOLERANCE = 256 * KiB


def raw_bytes(size=RAW_SIZE):
    model = ig.RawModel(size)
    for off, data in RAW_EXTENTS:
        model.write(off, data)
    return bytes(model.data)


@pytest.fixture(scope='module')
def source_raw(tmp_path_factory):
    path = tmp_path_factory.mktemp('qemu-src') / 'source.raw'
    ig.write_raw(path, RAW_SIZE, RAW_EXTENTS)
    return path


@pytest.fixture(scope='module')
def qemu_vhds(qemu_img, source_raw, tmp_path_factory):
    """{(subformat, force): vhd path}, all made by qemu-img from source_raw."""
    d = tmp_path_factory.mktemp('qemu-vhd')
    out = {}
    for sub in ('dynamic', 'fixed'):
        for force in (False, True):
            opts = 'subformat=%s%s' % (sub, ',force_size=on' if force else '')
            vhd = d / ('%s%s.vhd' % (sub, '-force' if force else ''))
            ig.qemu_img('convert', '-f', 'raw', '-O', 'vpc', '-o', opts,
                        source_raw, vhd)
            out[(sub, force)] = vhd
    return out


CASES = [('dynamic', False), ('dynamic', True), ('fixed', False),
         ('fixed', True)]
IDS = ['%s%s' % (s, '-force_size' if f else '') for s, f in CASES]


@pytest.mark.parametrize('subformat,force', CASES, ids=IDS)
def test_convert_matches_qemu_and_source(qemu_vhds, source_raw, subformat,
                                         force, tmp_path, out_dir):
    vhd = qemu_vhds[(subformat, force)]
    footer = ig.read_vhd(vhd)['footer']
    size = footer['current_size']
    if force:
        assert size == RAW_SIZE
    else:
        assert size >= RAW_SIZE      # CHS round-up, stored in the footer
    expected = raw_bytes(size)
    expected_sha = ig.sha256_bytes(expected)

    # the oracle agrees with the source (sanity of the oracle itself)
    qraw = ig.qemu_to_raw(vhd, tmp_path / 'qemu.raw')
    assert os.path.getsize(qraw) == size
    assert ig.sha256_file(qraw) == expected_sha

    out = cli.convert(vhd, out_dir / 'disk.raw')
    assert os.path.getsize(out) == size
    assert ig.sha256_file(out) == expected_sha
    if force:
        # force_size keeps the exact size: the output is the source itself
        assert ig.sha256_file(out) == ig.sha256_file(source_raw)

    # sparse: no more allocated than qemu-img's own raw output (+ a little),
    # and every whole MiB of zeros is a hole
    allocated = ig.allocated_bytes(out)
    assert allocated <= ig.allocated_bytes(qraw) + SPARSE_TOLERANCE, (
        'output allocates %d bytes, qemu-img raw %d' % (
            allocated, ig.allocated_bytes(qraw)))
    zeros = ig.zero_ranges(expected, granularity=1 * MiB)
    assert zeros, 'test data has no zero range'
    assert ig.hole_violations(out, zeros) == []


@pytest.mark.parametrize('subformat,force', CASES, ids=IDS)
def test_libvhdi_agrees_on_qemu_vhd(qemu_vhds, pyvhdi, subformat, force):
    """Second opinion on the expected value (not on the converter)."""
    vhd = qemu_vhds[(subformat, force)]
    size = ig.read_vhd(vhd)['footer']['current_size']
    assert pyvhdi([vhd]) == (size, ig.sha256_bytes(raw_bytes(size)))


@pytest.mark.parametrize('subformat,force', CASES, ids=IDS)
def test_info_single_qemu_vhd(qemu_vhds, subformat, force):
    vhd = qemu_vhds[(subformat, force)]
    footer = ig.read_vhd(vhd)['footer']
    doc = cli.info(vhd)
    assert doc['container'] == 'file'
    assert doc['format'] == 'vhd'
    assert os.path.basename(doc['source']) == vhd.name
    assert doc['virtual_size'] == footer['current_size']
    assert len(doc['chain']) == 1
    layer = doc['chain'][0]
    assert basename(layer['name']) == vhd.name
    assert layer['format'] == 'vhd'
    assert layer['subformat'] == subformat
    assert layer['id'].lower() == footer['uuid']
    assert layer['parent_id'] is None
    assert layer['virtual_size'] == footer['current_size']
    assert layer['creator'] == ('qem2' if force else 'qemu')
    assert isinstance(layer['allocated_bytes'], int)
    assert layer['allocated_bytes'] >= 0
