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

"""``convert --fix`` hands a real Debian guest whose initramfs lacks virtio
to the real ``virt-v2v-in-place``, which rebuilds its initramfs; the guest
then gets virtio-scsi and boots on it under QEMU TCG.

The guest (tests/lib/debianguest.py: mmdebstrap, cached in the test
cache) boots on IDE but not on virtio-scsi before the fix.  One
``convert --fix`` in all: the probe's fix, virt-v2v-in-place, the second
inspection (three appliance launches: minutes under TCG on a loaded
machine).  The decisions, the messages without the tool, a failing or
hanging virt-v2v and the Windows hand-off are in
tests/unit/test_guest_v2v.py.  ``ANY2KVM_TEST_V2V=0`` skips this module
(minutes under TCG).
"""

import json
import os
import shutil
import subprocess
import threading

import pytest

from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import v2v
from tests.lib.cli import describe
from tests.lib.cli import run_any2kvm
from tests.lib import debianguest
from tests.lib import guestbuild
from tests.lib import imagegen as ig
from tests.lib.tools import missing_tool

TIMEOUT = 2400


@pytest.fixture(scope='module')
def tools():
    if os.environ.get('ANY2KVM_TEST_V2V', '1') == '0':
        pytest.skip('ANY2KVM_TEST_V2V=0: the virt-v2v hand-off test costs '
                    'minutes under TCG')
    missing = debianguest.missing_tools() + v2v.missing('initramfs')
    r = subprocess.run([gi.Settings().python, '-c', 'import guestfs'],
                       capture_output=True, timeout=60)
    if r.returncode != 0:
        missing.append('python3-guestfs')
    if missing:
        missing_tool('the virt-v2v hand-off test needs: %s (bindep profile '
                     'inspect: virt-v2v, nbdkit; test: mmdebstrap)'
                     % ', '.join(missing))


@pytest.mark.timeout(TIMEOUT)
def test_convert_fix_rebuilds_the_initramfs_with_virt_v2v(tools, tmp_path):
    raw = tmp_path / 'debian.raw'
    built = debianguest.build(raw)
    source = tmp_path / 'debian.qcow2'
    subprocess.run(['qemu-img', 'convert', '-O', 'qcow2', str(raw),
                    str(source)], check=True, capture_output=True,
                   timeout=600)
    raw.unlink()
    before = ig.sha256_file(source)
    # Before: no virtio in the initramfs, no boot on virtio-scsi (the
    # initramfs gives up after rootdelay=10 and the guest reboots).  That
    # boot reads the source (snapshot=on) while the conversion runs.
    seen = {}

    def boot_before():
        seen['line'] = guestbuild.boot(source, 'virtio-scsi', fmt='qcow2',
                                       timeout=300)

    thread = threading.Thread(target=boot_before, daemon=True)
    thread.start()
    out = tmp_path / 'debian-kvm.raw'
    res = run_any2kvm('convert', source, out, '--fix', '--format', 'json',
                      timeout=TIMEOUT)
    thread.join(timeout=400)
    assert not thread.is_alive()
    assert 'line' in seen and seen['line'] is None, seen
    assert res.returncode == 0, describe(res)
    report = json.loads(res.stdout)
    assert report['v2v']['ran'] is True, report
    assert report['v2v']['needed'] == 'initramfs'
    assert report['v2v']['bus_before'] in ('sata', 'ide')
    assert report['properties']['hw_disk_bus'] == 'scsi', report
    assert report['properties']['hw_scsi_model'] == 'virtio-scsi'
    assert report['guest']['drivers']['virtio_scsi'] == 'initramfs'
    # The source is untouched; the copy boots on virtio-scsi.
    assert ig.sha256_file(source) == before
    line = guestbuild.boot(out, 'virtio-scsi', timeout=300)
    assert line and 'ANY2KVM-BOOT-OK' in line, line
    assert 'id=%s' % built['token'] in line
    shutil.rmtree(str(tmp_path), ignore_errors=True)
