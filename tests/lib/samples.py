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

"""One small sample of every container plugin and every format reader, for
the shared contract test (tests/functional/test_plugin_contract.py).

A builder returns a :class:`Sample`: the path to open and the SHA-256 and
size of the raw disk it holds, as a reader other than ours (qemu-img) or
the builder's own model says.  A plugin registered without a builder here
fails the contract test: add one the day the plugin is registered.
"""

import hashlib
import subprocess
from pathlib import Path

from tests.lib import imagegen as ig
from tests.lib import ovabuild
from tests.lib import xvabuild

MiB = ig.MiB
SIZE = 4 * MiB


class Sample(object):

    def __init__(self, path, sha256, size):
        self.path = Path(path)
        self.sha256 = sha256
        self.size = size


def _raw(directory, seed=7):
    """A patterned raw disk of SIZE bytes with holes."""
    raw = Path(directory) / 'source.raw'
    with open(raw, 'wb') as f:
        f.truncate(SIZE)
        for off in (0, SIZE // 2 + 4096, SIZE - 65536):
            f.seek(off)
            f.write(ig.pattern(seed + off, 65536))
    return raw


def _qemu(directory, name, qfmt, options=()):
    """A disk written by qemu-img, and qemu-img's SHA-256 of its raw."""
    directory = Path(directory)
    out = directory / name
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', qfmt]
                   + list(options) + [str(_raw(directory)), str(out)],
                   check=True, capture_output=True)
    ref = directory / (name + '.ref.raw')
    subprocess.run(['qemu-img', 'convert', '-O', 'raw', '-f', qfmt,
                    str(out), str(ref)], check=True, capture_output=True)
    sha = ig.sha256_file(ref)
    ref.unlink()
    return out, sha


#: Format reader name -> (qemu-img format, its options).
QEMU_FORMATS = {
    'vhd': ('vpc', ['-o', 'subformat=dynamic,force_size=on']),
    'vhdx': ('vhdx', []),
    'vmdk': ('vmdk', ['-o', 'subformat=monolithicSparse']),
    'qcow2': ('qcow2', []),
}


def format_sample(name, directory):
    qfmt, options = QEMU_FORMATS[name]
    path, sha = _qemu(directory, 'disk.' + name, qfmt, options)
    return Sample(path, sha, SIZE)


def _file(directory):
    return format_sample('vhd', directory)


def _xenserver(directory):
    vhd, sha = _qemu(directory, 'leaf.vhd', 'vpc',
                     ['-o', 'subformat=dynamic,force_size=on'])
    path = Path(directory) / 'vm.tgz'
    ig.make_tar(path, ig.xenserver_members([vhd]), compression='gz')
    return Sample(path, sha, SIZE)


def _ova_members(directory):
    vmdk, sha = _qemu(directory, 'disk0.vmdk', 'vmdk',
                      ['-o', 'subformat=streamOptimized'])
    data = vmdk.read_bytes()
    desc = ovabuild.vmware_ovf1(
        [('file0', 'disk0.vmdk', len(data))],
        [('vmdisk0', 'file0', SIZE, ovabuild.VMDK_URI)])
    members = [('vm.ovf', desc), ('disk0.vmdk', data)]
    return members + [('vm.mf', ovabuild.manifest(members))], sha


def _ova(directory):
    members, sha = _ova_members(directory)
    path = ovabuild.write_ova(Path(directory) / 'vm.ova', members)
    return Sample(path, sha, SIZE)


def _ovf(directory):
    members, sha = _ova_members(directory)
    for name, data in members:
        (Path(directory) / name).write_bytes(data)
    return Sample(Path(directory) / 'vm.ovf', sha, SIZE)


def _xva(directory):
    # XenServer's layout: 1 MiB chunks, each followed by its checksum;
    # chunks of zeros left out, but the first and the last always stored.
    chunks = {0: xvabuild.pattern(1, MiB), 2: xvabuild.pattern(2, MiB),
              3: bytes(MiB)}
    path = Path(directory) / 'vm.xva'
    xvabuild.write_xva(path, xvabuild.ova_xml([('Ref:3', SIZE, 0)]),
                       xvabuild.chunk_members('Ref:3', chunks))
    h = hashlib.sha256()
    for n in range(SIZE // MiB):
        h.update(chunks.get(n, bytes(MiB)))
    return Sample(path, h.hexdigest(), SIZE)


#: Container plugin name -> builder(directory) -> Sample.
CONTAINERS = {
    'file': _file,
    'xenserver-tgz': _xenserver,
    'ova': _ova,
    'ovf': _ovf,
    'xva': _xva,
}
