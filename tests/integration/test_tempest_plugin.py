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

"""The tempest plugin (any2kvm_os.tempest_plugin) against the loopback
cloud, run the way CI runs it: ``tools/run-tempest.sh``.

Samples are built here: the XenServer tgz from the vhd-util chain of the
shared corpus (as tools/demo.sh packs it: 0.vhd the leaf; its raw SHA-256
is the corpus's), a one-disk OVA (streamOptimized VMDK) and a dynamic VHD
written by qemu-img (truth: qemu-img's own raw reading).

The scenario test boots the tiny guest of tests/lib/guestbuild.py, packed
as a XenServer tgz, from a volume the hook makes; it needs Nova as well
(read from the catalog): with Nova and the hook it must pass, without
Nova it must be skipped.

The volume tests need the Cinder hook.  Whether the cloud has it is read
from its cinder.conf (see :func:`cinder_hook_enabled`); with the hook they
must pass, without it they must be skipped.  The OSC import test must pass
either way.
"""

import importlib.util
import io
import os
import subprocess
import sys

from tests.lib import guestbuild
from tests.lib.corpus import CORPUS
from tests.lib.corpus import REPO
from tests.lib.corpus import VHDUTIL
from tests.lib.corpus import VHDUTIL_L2
from tests.lib import imagegen as ig
from tests.lib import ovabuild
from tests.lib import tools

RUN_TEMPEST = REPO / 'tools' / 'run-tempest.sh'
RUN_TIMEOUT = 1800
HOOK_DRIVER = 'any2kvm_os.cinder.driver'

PLUGIN = 'any2kvm_os.tempest_plugin.tests.api.'
OSC_TESTS = [PLUGIN + 'test_osc_import.OscImportTest.'
             'test_import_xenserver_tgz_into_glance']
VOLUME_CLASS = PLUGIN + 'test_volume_from_image.VolumeFromImageTest'
VOLUME_TESTS = [VOLUME_CLASS + '.test_volume_from_' + name
                for name in ('xenserver_tgz', 'ova', 'vhd')]

SCENARIO_CLASS = ('any2kvm_os.tempest_plugin.tests.scenario.'
                  'test_boot_xenserver_tgz.BootXenServerTgzTest')
SCENARIO_TESTS = [SCENARIO_CLASS + '.test_boot_from_volume_of_xenserver_tgz']


def nova_available(keystone_session):
    """Whether the cloud's catalog has a compute endpoint."""
    from keystoneauth1 import exceptions

    try:
        return bool(keystone_session.get_endpoint(service_type='compute',
                                                  interface='public'))
    except exceptions.EndpointNotFound:
        return False


def cinder_hook_enabled(cloud):
    """Whether the cloud's Cinder runs the any2kvm_os hook.

    ``ANY2KVM_TEMPEST_CINDER_HOOK`` (True/False) decides when set;
    otherwise the hook is on when the cinder.conf of the cloud's run
    directory (the openrc's directory) names the hook's driver module.
    """
    forced = os.environ.get('ANY2KVM_TEMPEST_CINDER_HOOK')
    if forced:
        return forced.lower() in ('true', '1', 'yes')
    conf = cloud.openrc.parent / 'etc' / 'cinder' / 'cinder.conf'
    return conf.is_file() and HOOK_DRIVER in conf.read_text()


class Sample(object):
    def __init__(self, path, sha256, size):
        self.path = path
        self.sha256 = sha256
        self.size = size

    def environ(self, name):
        var = 'ANY2KVM_SAMPLE_' + name.upper()
        return {var: str(self.path), var + '_SHA256': self.sha256,
                var + '_SIZE': str(self.size)}


def xenserver_tgz_sample(directory):
    """The corpus's vhd-util chain as a XenServer tgz (l2 leaf = 0.vhd)."""
    src = CORPUS / VHDUTIL
    if not src.is_file():
        tools.missing_tool('shared corpus not found: %s' % src)
    files = ig.extract_tar(src, directory / 'chain')
    row = ig.expected_row(ig.load_expected(CORPUS), VHDUTIL,
                          'l2.vhd', 'pyvhdi')
    assert row['sha256'] == VHDUTIL_L2
    tgz = directory / 'xenserver.tgz'
    ig.make_tar(tgz, ig.xenserver_members(
        [files['l2.vhd'], files['l1.vhd'], files['l0.vhd']]),
        compression='gz')
    return Sample(tgz, row['sha256'], row['size'])


def ova_sample(qemu_img, directory):
    """A one-disk VMware-style OVA (streamOptimized VMDK, manifest)."""
    disk = ovabuild.make_disk(qemu_img, directory, 'disk1.vmdk', 'vmdk',
                              12 * ig.MiB, 3)
    members = [
        ('vm.ovf', ovabuild.vmware_ovf1(
            [('file1', disk.path.name, disk.path.stat().st_size)],
            [('vmdisk1', 'file1', disk.size, ovabuild.VMDK_URI)])),
        (disk.path.name, disk.path)]
    ova = ovabuild.write_ova(directory / 'vm.ova', members + [
        ('vm.mf', ovabuild.manifest(members))])
    return Sample(ova, disk.sha256, disk.size)


def vhd_sample(qemu_img, directory):
    """A dynamic VHD (Glance accepts it as vhd/bare; a fixed one it
    refuses)."""
    disk = ovabuild.make_disk(qemu_img, directory, 'disk.vhd', 'vhd',
                              10 * ig.MiB, 4)
    return Sample(disk.path, disk.sha256, disk.size)


def run_tempest(cloud, workspace, samples, cinder_hook, nova=False,
                boot_guest=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith('OS_')}
    for name, sample in samples.items():
        env.update(sample.environ(name))
    env['ANY2KVM_TEMPEST_CINDER_HOOK'] = str(cinder_hook)
    env['ANY2KVM_TEMPEST_NOVA'] = str(nova)
    if boot_guest:
        tgz, token = boot_guest
        env['ANY2KVM_BOOT_GUEST_XENSERVER_TGZ'] = str(tgz)
        env['ANY2KVM_BOOT_GUEST_CONSOLE'] = guestbuild.ready_line(token)
    return subprocess.run([str(RUN_TEMPEST), str(cloud.openrc),
                           str(workspace)], env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT)


def last_run_statuses(workspace):
    """{test id (without [attributes]): status} of the workspace's last
    tempest run, read from its subunit stream."""
    import subunit     # tempest's requirements bring both
    import testtools

    stream = subprocess.run(
        [sys.executable, '-m', 'stestr', 'last', '--subunit'],
        cwd=workspace / 'tempest', capture_output=True, check=True).stdout
    statuses = {}

    def record(test):
        statuses[test['id'].split('[', 1)[0]] = test['status']

    result = testtools.StreamToDict(record)
    result.startTestRun()
    try:
        subunit.ByteStreamToStreamResult(
            io.BytesIO(stream), non_subunit_name='stdout').run(result)
    finally:
        result.stopTestRun()
    return statuses


def test_tempest_plugin(cloud, keystone_session, qemu_img, tmp_path):
    if importlib.util.find_spec('tempest') is None:
        tools.missing_tool('tempest is not installed (test-requirements.txt)')
    samples = {'xenserver_tgz': xenserver_tgz_sample(tmp_path),
               'ova': ova_sample(qemu_img, tmp_path),
               'vhd': vhd_sample(qemu_img, tmp_path)}
    hook = cinder_hook_enabled(cloud)
    nova = nova_available(keystone_session)
    boot_guest = None
    if nova and hook:
        missing = guestbuild.missing_tools()
        if missing:
            tools.missing_tool('cannot build a boot guest, missing: %s'
                               % ', '.join(missing))
        (tmp_path / 'guest3').mkdir()
        boot_guest = guestbuild.xenserver_tgz(qemu_img, tmp_path / 'guest3')
    workspace = tmp_path / 'tempest-ws'
    r = run_tempest(cloud, workspace, samples, hook, nova, boot_guest)
    output = r.stdout + r.stderr
    totals = [line.strip() for line in r.stdout.splitlines()
              if line.strip().startswith(('Ran:', '- Passed', '- Skipped',
                                          '- Failed'))]
    print('tempest (cinder_hook = %s, nova = %s): %s'
          % (hook, nova, '; '.join(totals)))
    try:
        statuses = last_run_statuses(workspace)
    except (OSError, subprocess.CalledProcessError):
        statuses = None
    assert statuses, 'no tempest run: tools/run-tempest.sh exit %d:\n%s' % (
        r.returncode, tools.tail(output, 80))

    failed = {t: s for t, s in statuses.items()
              if s not in ('success', 'skip')}
    assert not failed, 'tempest: %s\n%s' % (failed, tools.tail(output, 80))
    expected = OSC_TESTS + (VOLUME_TESTS if hook else []) + (
        SCENARIO_TESTS if hook and nova else [])
    not_passed = {t: statuses.get(t, 'not run') for t in expected
                  if statuses.get(t) != 'success'}
    assert not not_passed, 'should have passed: %s\n%s' % (
        not_passed, tools.tail(output, 80))
    if not hook:
        # Skipped as a class, for want of the hook.
        assert statuses.get('setUpClass (%s)' % VOLUME_CLASS) == 'skip', (
            statuses)
    if not (hook and nova):
        assert statuses.get('setUpClass (%s)' % SCENARIO_CLASS) == 'skip', (
            statuses)
    assert r.returncode == 0, 'tools/run-tempest.sh failed (%d):\n%s' % (
        r.returncode, tools.tail(output, 80))
