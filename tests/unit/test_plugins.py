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

import pytest

from any2kvm_os import api
from any2kvm_os import exception
from any2kvm_os import limits as a2k_limits
from any2kvm_os.sources import base as sources
from any2kvm_os.targets import base as targets
from tests.lib import vhdbuild


def test_plugins_are_registered():
    assert {'file', 'ova', 'xenserver-tgz', 'xva'} <= set(sources.plugins())
    assert {'file', 'glance'} <= set(targets.plugins())
    for cls in sources.plugins().values():
        assert cls.description


def test_source_kind_is_checked(tmp_path):
    paths = vhdbuild.write_chain(tmp_path, 2)
    src = sources.open_location(str(paths[0]), a2k_limits.Limits(), 'file')
    assert src.container == 'file' and len(src.disks) == 1
    src.close()
    with pytest.raises(exception.UnsupportedImage,
                       match='is a disk image file, not an OVA package.*'
                       '--source file'):
        sources.open_location(str(paths[0]), a2k_limits.Limits(), 'ova')
    with pytest.raises(exception.Any2KvmError, match='unknown source'):
        sources.open_location(str(paths[0]), a2k_limits.Limits(), 'nope')


def test_file_target_through_the_library(tmp_path):
    paths = vhdbuild.write_chain(tmp_path, 3)
    want = vhdbuild.expected_raw(tmp_path, paths)
    out = tmp_path / 'out'
    out.mkdir()
    vm, results = api.import_vm(
        str(paths[0]), 'file', 'vm1', a2k_limits.Limits(),
        target_options={'directory': str(out)})
    assert vm == {}
    (r,) = results
    assert r['name'] == 'vm1.raw' and r['size'] == len(want)
    assert (out / 'vm1.raw').read_bytes() == want
    with pytest.raises(exception.Any2KvmError, match='unknown target'):
        api.import_vm(str(paths[0]), 'nope', 'x', a2k_limits.Limits())


def test_disk_names():
    assert targets.disk_name('vm', 0, 1) == 'vm'
    assert targets.disk_name('vm', 0, 3) == 'vm'
    assert targets.disk_name('vm', 2, 3) == 'vm-disk2'
