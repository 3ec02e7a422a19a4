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

"""zstd-compressed inputs, with and without the ``zstandard`` module.

``zstandard`` is a requirement, so these always run.  The XVA is written
by xva-img (``disk-import`` then ``package``) and compressed by the
``zstd`` command, both independent of the code under test; the truth is
the raw disk xva-img was given.  The zstd qcow2 is written by qemu-img.
Without the module (blocked in a child process), both are refused with one
line that names the file and the missing module.
"""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

from any2kvm_os import limits as a2k_limits
from any2kvm_os.sources import glance_image
from any2kvm_os.writers import raw as raw_writer
from tests.lib import cli
from tests.lib import imagegen as ig
from tests.lib import tools
from tests.lib import xvabuild as xb

MiB = 1 << 20

#: The any2kvm command, run with ``zstandard`` made unimportable.
BLOCKED = ("import sys; sys.modules['zstandard'] = None; "
           "from any2kvm_os.cmd.any2kvm import main; sys.exit(main())")


@pytest.fixture(scope='module')
def zstd_cmd():
    path = shutil.which('zstd')
    if not path:
        tools.missing_tool('zstd not found (Debian package zstd)')
    return path


@pytest.fixture(scope='module')
def zstd_xva(zstd_cmd, tmp_path_factory):
    """(the .xva.zst written by xva-img and zstd, the raw truth)."""
    xva_img = xb.find_xva_img()
    work = tmp_path_factory.mktemp('zstd-xva')
    truth, _chunks = xb.single(xva_img, work)
    plain = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    packed = work / 'vm.xva.zst'
    r = subprocess.run([zstd_cmd, '-q', '-3', '-o', str(packed), str(plain)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    os.unlink(plain)
    with open(packed, 'rb') as f:
        assert f.read(4) == b'\x28\xb5\x2f\xfd'
    return packed, truth


@pytest.fixture(scope='module')
def zstd_qcow2(qemu_img, tmp_path_factory):
    d = tmp_path_factory.mktemp('zstd-qcow2')
    src = d / 'src.raw'
    ig.write_raw(src, 4 * MiB, [(0, ig.pattern(1, 96 << 10)),
                                (3 * MiB + 512, ig.pattern(2, 5000))])
    img = d / 'zstd.qcow2'
    ig.qemu_img('convert', '-f', 'raw', '-O', 'qcow2', '-c', '-o',
                'compression_type=zstd', src, img)
    return img, src


def test_zstd_xva_converts(zstd_xva, out_dir):
    packed, truth = zstd_xva
    out = cli.convert(packed, out_dir / 'disk.raw')
    assert os.path.getsize(out) == xb.SIZE_A
    assert ig.sha256_file(out) == ig.sha256_file(truth)
    info = cli.info(packed)
    assert info['container'] == 'xva'


def test_zstd_xva_streamed(zstd_xva, tmp_path):
    """The same file as Glance would hand it over: read in one pass."""
    packed, truth = zstd_xva
    data = packed.read_bytes()
    scratch = tmp_path / 'scratch'
    scratch.mkdir()

    def chunks():
        for pos in range(0, len(data), 1 << 20):
            yield data[pos:pos + (1 << 20)]

    with glance_image.open_image_data(
            'glance image z', chunks, len(data),
            a2k_limits.Limits(scratch_dir=str(scratch)),
            checksum=hashlib.md5(data).hexdigest()) as source:
        out = tmp_path / 'disk.raw'
        raw_writer.write_file(source.disks[0], str(out))
    assert ig.sha256_file(out) == ig.sha256_file(truth)
    assert os.listdir(scratch) == []


def test_zstd_qcow2_converts(zstd_qcow2, out_dir):
    img, src = zstd_qcow2
    out = cli.convert(img, out_dir / 'disk.raw')
    assert ig.sha256_file(out) == ig.sha256_file(src)


def _blocked(*args):
    env = dict(os.environ)
    env['LC_ALL'] = 'C.UTF-8'
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    env['PYTHONPATH'] = root
    res = subprocess.run([sys.executable, '-c', BLOCKED] +
                         [str(a) for a in args], capture_output=True,
                         text=True, timeout=cli.CLI_TIMEOUT, env=env,
                         cwd='/')
    res.cmdline = 'any2kvm (zstandard blocked) ' + ' '.join(
        str(a) for a in args)
    return res


@pytest.mark.parametrize('which', ['xva', 'qcow2'])
def test_refused_in_one_line_without_the_module(zstd_xva, zstd_qcow2,
                                                out_dir, which):
    src = zstd_xva[0] if which == 'xva' else zstd_qcow2[0]
    out = out_dir / 'disk.raw'
    line = cli.assert_refused(_blocked('convert', src, out), out,
                              names=[src.name], problem='zstandard')
    assert 'zstd' in line
    cli.assert_refused(_blocked('info', src), names=[src.name],
                       problem='zstandard')
