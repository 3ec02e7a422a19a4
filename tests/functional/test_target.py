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

"""The output side: a full filesystem, an existing output."""

import os
import subprocess

import pytest

from tests.lib import cli
from tests.lib import imagegen as ig

MiB = 1 << 20


@pytest.fixture
def tiny_fs(tmp_path):
    """A 128 KiB tmpfs (needs root, as CI has)."""
    mnt = tmp_path / 'tiny'
    mnt.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=128K', 'tmpfs',
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get('ANY2KVM_REQUIRE_TOOLS') == '1':
            pytest.fail('cannot mount a tmpfs: %s' % r.stderr)
        pytest.skip('cannot mount a tmpfs: %s' % r.stderr)
    try:
        yield mnt
    finally:
        subprocess.run(['umount', str(mnt)], check=False)


def test_no_space_left_is_one_line_and_leaves_nothing(fattools, tmp_path,
                                                      tiny_fs):
    c = ig.FatChain(tmp_path / 'src', 8 * MiB)
    c.base('base.vhd', [(0, ig.pattern(1, 2 * MiB))])
    out = tiny_fs / 'disk.raw'
    r = cli.run_any2kvm('convert', c.leaf.path, out)
    cli.assert_refused(r, output=out, names=[out],
                       problem='No space left on device')


def test_existing_output_needs_overwrite(fattools, tmp_path):
    c = ig.FatChain(tmp_path / 'src', 4 * MiB)
    c.base('base.vhd', [(0, ig.pattern(2, MiB))])
    out = tmp_path / 'o' / 'disk.raw'
    out.parent.mkdir()
    out.write_bytes(b'keep me')
    r = cli.run_any2kvm('convert', c.leaf.path, out)
    cli.assert_refused(r, names=[out], problem='already exists')
    assert out.read_bytes() == b'keep me'
    assert os.listdir(out.parent) == ['disk.raw']
    cli.convert(c.leaf.path, out, '--overwrite')
    assert ig.sha256_file(out) == c.model.sha256()
    assert os.listdir(out.parent) == ['disk.raw']
