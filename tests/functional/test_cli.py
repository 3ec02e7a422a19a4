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

"""Command-line behaviour: entry points, --overwrite, --progress, devices."""

import json
import os
import shutil
import stat
import subprocess

from tests.lib import blockdev
from tests.lib import cli
from tests.lib import imagegen as ig


def test_module_entry_point(simple_chain, out_dir):
    out = out_dir / 'disk.raw'
    res = cli.run_any2kvm('convert', simple_chain.leaf.path, out,
                          module=True)
    assert res.returncode == 0, cli.describe(res)
    assert ig.sha256_file(out) == simple_chain.leaf.model.sha256()


def test_module_entry_point_info(simple_chain):
    res = cli.run_any2kvm('info', simple_chain.leaf.path, '--format',
                          'json', module=True)
    assert res.returncode == 0, cli.describe(res)
    assert len(json.loads(res.stdout)['chain']) == 3


def test_overwrite_replaces_existing_output(simple_chain, out_dir):
    out = out_dir / 'disk.raw'
    with open(out, 'wb') as f:          # larger and full of junk
        f.write(b'\xAA' * (simple_chain.size + 3 * ig.MiB))
    cli.convert(simple_chain.leaf.path, out, '--overwrite')
    assert os.path.getsize(out) == simple_chain.size
    assert ig.sha256_file(out) == simple_chain.leaf.model.sha256()
    assert os.listdir(out_dir) == ['disk.raw']


def test_progress(simple_chain, out_dir):
    out = cli.convert(simple_chain.leaf.path, out_dir / 'disk.raw',
                      '--progress')
    assert ig.sha256_file(out) == simple_chain.leaf.model.sha256()


def test_relative_paths(simple_chain, tmp_path):
    """Relative SOURCE and OUTPUT are taken from the working directory."""
    work = tmp_path / 'work'
    shutil.copytree(os.path.dirname(simple_chain.leaf.path), work / 'vm')
    res = subprocess.run(cli.cli_command() + ['convert', 'vm/l2.vhd',
                                              'disk.raw'],
                         cwd=work, capture_output=True, text=True,
                         timeout=cli.CLI_TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert ig.sha256_file(work / 'disk.raw') == \
        simple_chain.leaf.model.sha256()


def test_no_arguments_is_an_error():
    res = cli.run_any2kvm()
    assert res.returncode != 0
    assert 'Traceback' not in res.stderr


# --- block device output -----------------------------------------------------

def test_block_device_written_in_place(complex_chain, tmp_path):
    """Every byte of the device is the image's, zeros included."""
    backing = tmp_path / 'device.img'
    size = complex_chain.size
    with open(backing, 'wb') as f:      # stale content everywhere
        f.write(b'\xAA' * size)
    with blockdev.loop_device(backing) as dev:
        res = cli.run_any2kvm('convert', complex_chain.leaf.path, dev,
                              '--overwrite')
        assert res.returncode == 0, cli.describe(res)
        assert stat.S_ISBLK(os.stat(dev).st_mode), 'device replaced'
        with open(dev, 'rb') as f:
            data = f.read(size)
    assert ig.sha256_bytes(data) == complex_chain.leaf.model.sha256()
    assert not [n for n in os.listdir(tmp_path) if n != 'device.img']
