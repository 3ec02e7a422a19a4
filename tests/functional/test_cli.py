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

import pytest

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


def test_an_existing_directory_as_output_of_one_disk(simple_chain, tmp_path):
    """OUTPUT an existing directory, for a source of one disk: the disk's
    file in it, named as import --target file names it (the input's name
    when the source has no VM name); a file there already is refused
    without --overwrite, and nothing else is written."""
    out = tmp_path / 'out'
    out.mkdir()
    res = cli.run_any2kvm('convert', simple_chain.leaf.path, out)
    assert res.returncode == 0, cli.describe(res)
    assert os.listdir(out) == ['l2.vhd.raw']
    assert ig.sha256_file(out / 'l2.vhd.raw') == \
        simple_chain.leaf.model.sha256()
    res = cli.run_any2kvm('convert', simple_chain.leaf.path, out)
    cli.assert_refused(res, names=[out / 'l2.vhd.raw'],
                       problem='already exists')
    assert os.listdir(out) == ['l2.vhd.raw']


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


def test_block_device_in_use_refused_by_import_and_convert_onto(
        simple_chain, tmp_path):
    """A device another program holds (here: this test, through an
    O_EXCL open, as a mount or device-mapper holds one) is refused in one
    line by ``import --target file`` (its NAME.raw a link to the device)
    and by ``convert --onto``, and left as it was; once released, the
    import writes it in place."""
    size = simple_chain.size
    backing = tmp_path / 'device.img'
    backing.write_bytes(b'\xAA' * size)
    out = tmp_path / 'out'
    out.mkdir()
    state = tmp_path / 'state'
    state.mkdir()
    with blockdev.loop_device(backing) as dev:
        os.symlink(dev, out / 'vm.raw')
        fd = os.open(dev, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        try:
            res = cli.run_any2kvm('import', simple_chain.leaf.path,
                                  '--name', 'vm', '--target', 'file',
                                  '--output-dir', out, '--no-inspect')
            cli.assert_refused(res, names=[out / 'vm.raw'],
                               problem='is in use')
            res = cli.run_any2kvm('convert', simple_chain.leaf.path,
                                  '--onto', dev, '--state-dir', state,
                                  '--finish')
            cli.assert_refused(res, names=[dev], problem='is in use')
            assert os.listdir(state) == []
        finally:
            os.close(fd)
        with open(dev, 'rb') as f:
            assert f.read(size) == b'\xAA' * size
        res = cli.run_any2kvm('import', simple_chain.leaf.path, '--name',
                              'vm', '--target', 'file', '--output-dir', out,
                              '--no-inspect')
        assert res.returncode == 0, cli.describe(res)
        assert stat.S_ISBLK(os.stat(out / 'vm.raw').st_mode)
        with open(dev, 'rb') as f:
            data = f.read(size)
    assert ig.sha256_bytes(data) == simple_chain.leaf.model.sha256()


def test_output_into_a_closed_pipe_ends_quietly(simple_chain):
    """``any2kvm ... | head -1``: the reader gone before the output is
    written ends the command as writing to a closed pipe ends a program,
    status 141 (128 + SIGPIPE), without "internal error"."""
    p = subprocess.Popen(cli.cli_command() + [
        'info', simple_chain.leaf.path, '--format', 'json'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=cli.CLI_TIMEOUT)
    p.stderr.close()
    assert (p.returncode, err) == (141, ''), (p.returncode, err)


@pytest.mark.parametrize('url', [
    'postgresql+psycopg2://a2k@127.0.0.1:1/a2k?password=S3CRETmarker',
    'mysql+pymysql//a2k:S3CRETmarker@127.0.0.1:1/a2k',
    'mysql+pymysql://a2k:S3CRETmarker@127.0.0.1:notaport/a2k',
    'mysql+pymysql://a2k:S3CRET@marker@127.0.0.1:1/a2k',
])
def test_a_state_database_password_is_never_shown(url, monkeypatch):
    """The URL in ANY2KVM_STATE_DB with a password, a typo, a bad port,
    an unescaped "@": one line, exit 1, and no part of the password
    (plain and --debug)."""
    monkeypatch.setenv('ANY2KVM_STATE_DB', url)
    res = cli.run_any2kvm('migration', 'list')
    assert res.returncode == 1, cli.describe(res)
    assert len(res.stderr.strip().splitlines()) == 1, cli.describe(res)
    assert 'S3CRET' not in res.stderr and 'marker' not in res.stderr, \
        cli.describe(res)
    assert 'state database' in res.stderr, cli.describe(res)


def test_a_password_in_the_location_is_refused_unrepeated():
    for loc in ('xenserver://root:S3CRETmarker@127.0.0.1/web',
                'xenserver://root%3AS3CRETmarker@127.0.0.1/web'):
        res = cli.run_any2kvm('info', loc)
        assert res.returncode == 1, cli.describe(res)
        assert 'a password does not belong in the location' in \
            res.stderr, cli.describe(res)
        assert 'S3CRETmarker' not in res.stderr + res.stdout
    res = cli.run_any2kvm('info', 'xenserver://root@127.0.0.1/web',
                          '--jump-host', 'ops:S3CRETmarker@127.0.0.1')
    assert res.returncode == 2, cli.describe(res)
    assert 'a password does not belong' in res.stderr, cli.describe(res)
    assert 'S3CRETmarker' not in res.stderr + res.stdout
