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

"""OVA archives and extracted OVF packages, end to end.

The disks are written by qemu-img (VHD dynamic, VMDK streamOptimized and
monolithicFlat); the truth for each output disk is ``qemu-img convert
-O raw`` of the very file packed in the OVA.  The packages are built here
with Python's tarfile around hand-written VMware-style OVF 1.0 and OVF
2.0 descriptors.  The corpus OVA (``2nd_disk.ova``, corrupt VMDK bytes)
must be refused.

The ``any2kvm`` command is used once it recognises OVAs (checked once per
session); until the detection is wired in, the package is opened in
process through ``any2kvm_os.containers.ova.package`` and the same checks
are made on what it returns.
"""

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.lib import cli
from tests.lib import imagegen as ig
from tests.lib.ovabuild import FORMATS
from tests.lib.ovabuild import make_disk
from tests.lib.ovabuild import manifest
from tests.lib.ovabuild import ovf2
from tests.lib.ovabuild import VHD_URI
from tests.lib.ovabuild import VMDK_URI
from tests.lib.ovabuild import vmware_ovf1
from tests.lib.ovabuild import write_ova

MiB = ig.MiB


# ---------------------------------------------------------------------------
# running: the command once it knows OVAs, in process until then
# ---------------------------------------------------------------------------

class Runner(object):
    def __init__(self, wired, tmp):
        self.wired = wired
        self.tmp = Path(tmp)

    def _config(self, scratch):
        if scratch is None:
            return []
        conf = self.tmp / 'scratch.conf'
        conf.write_text('[any2kvm]\nscratch_dir = %s\n' % scratch)
        return ['--config-file', str(conf)]

    def _limits(self, scratch):
        from any2kvm_os import limits as a2k_limits
        return a2k_limits.Limits(scratch_dir=str(scratch) if scratch else None)

    def _open(self, path, scratch=None):
        from any2kvm_os.containers.ova import package
        limits = self._limits(scratch)
        if tarfile.is_tarfile(path):
            return package.open_ova(str(path), limits)
        return package.open_ovf(str(path), limits)

    def info(self, path, scratch=None):
        if self.wired:
            return cli.info(path, *self._config(scratch))
        source = self._open(path, scratch)
        try:
            disks = []
            for index, disk in enumerate(source.disks):
                layers = disk.describe()
                disks.append({'index': index, 'name': disk.name,
                              'format': disk.format,
                              'virtual_size': layers[0]['virtual_size'],
                              'chain': layers})
            return json.loads(json.dumps({
                'source': str(path), 'container': source.kind,
                'vm': source.facts, 'disks': disks}))
        finally:
            source.close()

    def convert(self, path, output, disk=None, scratch=None):
        """Outputs written, in disk order (a directory: one per disk)."""
        output = Path(output)
        if self.wired:
            extra = ['--disk', str(disk)] if disk is not None else []
            res = cli.run_any2kvm('convert', path, output, *(
                extra + self._config(scratch)))
            assert res.returncode == 0, cli.describe(res)
            if output.is_dir():
                # NAME.raw, NAME-disk1.raw ... (as import names them)
                return sorted(output.iterdir(), key=lambda p: int(
                    p.stem.rsplit('-disk', 1)[1]) if '-disk' in p.stem
                    else 0)
            return [output]
        from any2kvm_os.writers import raw
        source = self._open(path, scratch)
        try:
            if disk is not None:
                pairs = [(source.disks[disk], output)]
            elif output.is_dir():
                pairs = [(d, output / ('vm-disk%d.raw' % i))
                         for i, d in enumerate(source.disks)]
            else:
                assert len(source.disks) == 1
                pairs = [(source.disks[0], output)]
            for d, out in pairs:
                raw.write_file(d, str(out))
        finally:
            source.close()
        return [out for _d, out in pairs]

    def refused(self, path, names, problem, output):
        output = Path(output)
        if self.wired:
            res = cli.run_any2kvm('convert', path, output)
            return cli.assert_refused(res, output, names=names,
                                      problem=problem)
        from any2kvm_os import exception
        with pytest.raises(exception.Any2KvmError) as e:
            self.convert(path, output)
        line = str(e.value)
        assert '\n' not in line, line
        assert any(str(n) in line for n in names), line
        assert problem.lower() in line.lower(), line
        assert not os.path.lexists(output)
        assert os.listdir(output.parent) == []
        print('refusal: %s' % line)
        return line


@pytest.fixture(scope='session')
def runner(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ova-runner')
    probe = write_ova(tmp / 'probe.ova', [('p.ovf', ovf2(
        [], []).replace(b'<ovf:DiskSection><ovf:Info>disks</ovf:Info>',
                        b'<ovf:DiskSection><ovf:Info>disks</ovf:Info>'
                        b'<ovf:Disk ovf:capacity="1048576" '
                        b'ovf:diskId="b"/>'))])
    res = cli.run_any2kvm('info', probe, '--format', 'json')
    wired = res.returncode == 0 and '"container": "ova"' in res.stdout
    # Detection is wired: every test must go through the CLI.
    assert wired, 'any2kvm does not recognise an OVA\n' + cli.describe(res)
    return Runner(wired, tmp)


@pytest.fixture(scope='module')
def disks(qemu_img, tmp_path_factory):
    d = tmp_path_factory.mktemp('ova-disks')
    return {
        'vhd1': make_disk(qemu_img, d, 'disk1.vhd', 'vhd', 16 * MiB, 1),
        'vhd2': make_disk(qemu_img, d, 'disk2.vhd', 'vhd', 8 * MiB, 2),
        'vmdk1': make_disk(qemu_img, d, 'disk1.vmdk', 'vmdk', 16 * MiB, 3),
        'vmdk2': make_disk(qemu_img, d, 'disk2.vmdk', 'vmdk', 8 * MiB, 4),
    }


def check_outputs(outputs, expected):
    assert len(outputs) == len(expected)
    for out, disk in zip(outputs, expected):
        assert os.path.getsize(out) == disk.size, out
        assert ig.sha256_file(out) == disk.sha256, (out, disk.path)


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('fmt', ['vhd', 'vmdk'])
def test_vmware_ovf1_two_disks_sha256_manifest(runner, disks, tmp_path,
                                               fmt):
    d1, d2 = disks[fmt + '1'], disks[fmt + '2']
    uri = FORMATS[fmt][2]
    names = ['web01-disk1.' + fmt, 'web01-disk2.' + fmt]
    desc = vmware_ovf1(
        [('file1', names[0], len(d1.data)), ('file2', names[1],
                                             len(d2.data))],
        [('vmdisk1', 'file1', d1.size, uri), ('vmdisk2', 'file2', d2.size,
                                              uri)])
    members = [('web01.ovf', desc), (names[0], d1.path),
               (names[1], d2.path)]
    ova = write_ova(tmp_path / 'web01.ova', [members[0], (
        'web01.mf', manifest(members))] + members[1:])

    info = runner.info(ova)
    assert info['container'] == 'ova'
    vm = info['vm']
    assert vm['name'] == 'web01'
    assert (vm['cpus'], vm['cores_per_socket'], vm['memory_mb']) == (4, 2,
                                                                     4096)
    assert vm['firmware'] == 'uefi'
    assert vm['nics'] == [{'model': 'vmxnet3', 'network': 'VM Network'}]
    assert vm['os'] == {'cim_id': 107, 'vmware_os_type': 'centos8_64Guest',
                        'description': 'CentOS 8 (64-bit)'}
    assert vm['disk_controllers'][0] == {'id': '3', 'type': 'scsi',
                                         'model': 'lsilogic', 'bus': 0}
    assert [c['type'] for c in vm['disk_controllers']] == ['scsi', 'ide',
                                                           'ide']
    assert [d['controller'] for d in vm['disks']] == [
        {'type': 'scsi', 'model': 'lsilogic', 'bus': 0, 'unit': u}
        for u in (0, 1)]
    assert [d['name'] for d in info['disks']] == [
        '%s:%s' % (ova, n) for n in names]
    assert [d['format'] for d in info['disks']] == [fmt, fmt]
    assert [d['virtual_size'] for d in info['disks']] == [d1.size, d2.size]

    out = tmp_path / 'out'
    out.mkdir()
    check_outputs(runner.convert(ova, out), [d1, d2])
    one = tmp_path / 'second.raw'
    check_outputs(runner.convert(ova, one, disk=1), [d2])


def test_ovf2_sha1_manifest_and_blank_disk(runner, disks, tmp_path):
    d1 = disks['vhd1']
    desc = ovf2([('f1', '8f2c1d7e-disk.vhd', ''),
                 ('env', 'ovf-env.xml', '')],
                [('d1', 'f1', d1.size, VHD_URI)]).replace(
        b'</ovf:DiskSection>', b'<ovf:Disk ovf:capacity="3" '
        b'ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="scratch"/>'
        b'</ovf:DiskSection>')
    members = [('db.ovf', desc), ('8f2c1d7e-disk.vhd', d1.path),
               ('ovf-env.xml', b'<Environment/>')]
    ova = write_ova(tmp_path / 'db.ova', members + [
        ('db.mf', manifest(members, 'SHA1'))])
    info = runner.info(ova)
    vm = info['vm']
    assert vm['name'] == 'db-server'
    assert (vm['cpus'], vm['cores_per_socket'], vm['memory_mb']) == (2, None,
                                                                     2048)
    assert vm['firmware'] == 'bios'
    assert vm['nics'] == [{'model': 'virtio', 'network': 'xenbr0'}]
    assert vm['os'] == {'cim_id': 36, 'vmware_os_type': None,
                        'description': 'Debian'}
    assert vm['product'] == {'product': 'DB', 'vendor': 'Example',
                             'version': '2.0'}
    assert vm['disks'][0]['controller'] == {'type': 'sata', 'model': 'ahci',
                                            'bus': None, 'unit': 0}
    assert [d['format'] for d in info['disks']] == ['vhd', 'blank']
    assert info['disks'][1]['virtual_size'] == 3 * MiB

    out = tmp_path / 'out'
    out.mkdir()
    outputs = runner.convert(ova, out)
    check_outputs(outputs[:1], [d1])
    assert os.path.getsize(outputs[1]) == 3 * MiB
    assert os.stat(outputs[1]).st_blocks == 0
    assert ig.sha256_file(outputs[1]) == hashlib.sha256(
        bytes(3 * MiB)).hexdigest()


@pytest.mark.parametrize('fmt', ['vhd', 'vmdk'])
def test_chunked_file(runner, disks, tmp_path, fmt):
    d1 = disks[fmt + '1']
    data = d1.data
    chunk = 1 * MiB if len(data) > 2 * MiB else max(len(data) // 3, 4096)
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    assert len(pieces) >= 2
    desc = vmware_ovf1([('file1', 'big.' + fmt, len(data))],
                       [('vmdisk1', 'file1', d1.size, FORMATS[fmt][2])])
    desc = desc.replace(b'ovf:id="file1"', b'ovf:id="file1" '
                        b'ovf:chunkSize="%d"' % chunk)
    members = [('vm.ovf', desc)] + [('big.%s.%09d' % (fmt, i), p)
                                    for i, p in enumerate(pieces)]
    ova = write_ova(tmp_path / 'chunked.ova', members + [
        ('vm.mf', manifest(members))])
    check_outputs(runner.convert(ova, tmp_path / 'd.raw'), [d1])


@pytest.mark.parametrize('chunked', [False, True])
def test_gzip_file(runner, disks, tmp_path, chunked):
    d1, d2 = disks['vhd1'], disks['vmdk2']
    gz1 = gzip.compress(d1.data, 6)
    attrs = ' ovf:compression="gzip"'
    if chunked:
        attrs += ' ovf:chunkSize="65536"'
    desc = ovf2([('f1', 'a.vhd', attrs), ('f2', 'b.vmdk', '')],
                [('d1', 'f1', d1.size, VHD_URI),
                 ('d2', 'f2', d2.size, VMDK_URI)])
    if chunked:
        gzm = [('a.vhd.%09d' % (i // 65536), gz1[i:i + 65536])
               for i in range(0, len(gz1), 65536)]
    else:
        gzm = [('a.vhd', gz1)]
    members = [('vm.ovf', desc)] + gzm + [('b.vmdk', d2.path)]
    ova = write_ova(tmp_path / 'gz.ova', members + [
        ('vm.mf', manifest(members))])
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    out = tmp_path / 'out'
    out.mkdir()
    check_outputs(runner.convert(ova, out, scratch=scratch), [d1, d2])
    assert list(scratch.iterdir()) == [], 'scratch left behind'


def test_extracted_directory(runner, disks, tmp_path):
    d1, d2 = disks['vmdk1'], disks['vhd2']
    desc = vmware_ovf1([('file1', 'a.vmdk', len(d1.data)),
                        ('file2', 'b.vhd', len(d2.data))],
                       [('vmdisk1', 'file1', d1.size, VMDK_URI),
                        ('vmdisk2', 'file2', d2.size, VHD_URI)])
    pkg = tmp_path / 'pkg'
    pkg.mkdir()
    members = [('web01.ovf', desc), ('a.vmdk', d1.data), ('b.vhd', d2.data)]
    for name, data in members:
        (pkg / name).write_bytes(data)
    (pkg / 'web01.mf').write_bytes(manifest(members))
    info = runner.info(pkg / 'web01.ovf')
    assert info['container'] == 'ovf'
    assert [d['name'] for d in info['disks']] == [str(pkg / 'a.vmdk'),
                                                  str(pkg / 'b.vhd')]
    assert info['vm']['name'] == 'web01'
    out = tmp_path / 'out'
    out.mkdir()
    check_outputs(runner.convert(pkg / 'web01.ovf', out), [d1, d2])

    # A referenced file that is a link is not a file of the directory.
    os.rename(pkg / 'b.vhd', tmp_path / 'b.vhd')
    os.symlink(tmp_path / 'b.vhd', pkg / 'b.vhd')
    (pkg / 'web01.mf').unlink()
    dest = tmp_path / 'refused'
    dest.mkdir()
    runner.refused(pkg / 'web01.ovf', [pkg / 'web01.ovf'],
                   'missing from the directory', dest / 'x.raw')


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b''.join(b' <!ENTITY lol%d "%s">\n' % (
        i, (b'&lol%d;' % (i - 1) if i > 1 else b'&lol;') * 10)
        for i in range(1, 10))
    + b']>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">'
    b'&lol9;</Envelope>\n')
XXE = (b'<?xml version="1.0"?>\n<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM '
       b'"file:///etc/passwd">]>\n<Envelope xmlns="http://schemas.dmtf.org/'
       b'ovf/envelope/1"><References><File href="&xxe;"/></References>'
       b'</Envelope>\n')


def _one_disk_ovf(disk, href='disk1.vhd', uri=None, capacity=None):
    return vmware_ovf1([('file1', href, len(disk.data))],
                       [('vmdisk1', 'file1', capacity or disk.size,
                         uri or FORMATS[disk.fmt][2])])


def _refusal_cases(disks, tmp):
    d = disks['vhd2']
    good = [('vm.ovf', _one_disk_ovf(d)), ('disk1.vhd', d.path)]
    bad_mf = manifest(good).decode().replace(
        'SHA256(disk1.vhd)= ', 'SHA256(disk1.vhd)= 0')[:-2] + '\n'
    flat = tmp / 'flat'
    flat.mkdir(exist_ok=True)
    src = flat / 'src.raw'
    src.write_bytes(ig.pattern(7, 1 * MiB))
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'vmdk', '-o',
                    'subformat=monolithicFlat', str(src),
                    str(flat / 'x.vmdk')], check=True, capture_output=True)
    desc_text = (flat / 'x.vmdk').read_bytes()
    assert b'"x-flat.vmdk"' in desc_text
    evil_vmdk = desc_text.replace(b'"x-flat.vmdk"', b'"/etc/passwd"')
    dotdot_vmdk = desc_text.replace(b'"x-flat.vmdk"', b'"../x-flat.vmdk"')
    # A plain name, of a file that lies beside the OVA but not in it.
    outside_vmdk = desc_text.replace(b'"x-flat.vmdk"', b'"beside.vmdk"')
    ovf_vmdk = desc_text.replace(b'"x-flat.vmdk"', b'"vm.ovf"')
    flat_uri = ('http://www.vmware.com/interfaces/specifications/'
                'vmdk.html#monolithicFlat')

    def vmdk_ova(text):
        return [('vm.ovf', vmware_ovf1(
            [('file1', 'x.vmdk', len(text))],
            [('vmdisk1', 'file1', 1 * MiB, flat_uri)])),
            ('x.vmdk', text), ('x-flat.vmdk', flat / 'x-flat.vmdk')]

    return {
        'manifest-mismatch': (good + [('vm.mf', bad_mf.encode())],
                              'vm.mf', 'manifest mismatch for disk1.vhd '
                              r'\(SHA256\)'),
        'manifest-lists-missing': (good + [('vm.mf', manifest(
            good + [('gone.vmdk', b'x')]))], 'vm.mf', 'gone.vmdk'),
        'billion-laughs': ([('vm.ovf', BILLION_LAUGHS)], 'vm.ovf', 'DTD'),
        'external-entity': ([('vm.ovf', XXE)], 'vm.ovf', 'DTD'),
        'href-dotdot': ([('vm.ovf', _one_disk_ovf(d, '../x.vhd'))] +
                        good[1:], 'vm.ovf', 'href outside the archive'),
        'href-absolute': ([('vm.ovf', _one_disk_ovf(d, '/etc/passwd'))] +
                          good[1:], 'vm.ovf', 'href outside the archive'),
        'href-http': ([('vm.ovf', _one_disk_ovf(
            d, 'http://evil.example/disk1.vhd'))] + good[1:], 'vm.ovf',
            'href outside the archive'),
        'href-file-url': ([('vm.ovf', _one_disk_ovf(
            d, 'file:///etc/passwd'))] + good[1:], 'vm.ovf',
            'href outside the archive'),
        'vmdk-extent-absolute': (vmdk_ova(evil_vmdk), 'x.vmdk',
                                 '/etc/passwd'),
        'vmdk-extent-dotdot': (vmdk_ova(dotdot_vmdk), 'x.vmdk',
                               r'\.\./x-flat\.vmdk'),
        'vmdk-extent-beside-archive': (vmdk_ova(outside_vmdk), 'x.vmdk',
                                       "'beside.vmdk', which is not"),
        'vmdk-extent-is-descriptor': (vmdk_ova(ovf_vmdk), 'x.vmdk',
                                      "'vm.ovf', which is not"),
        'two-ovf': (good + [('other.ovf', _one_disk_ovf(d))], 'bad.ova',
                    'descriptors'),
        'no-ovf': ([('disk1.vhd', d.path), ('vm.mf', manifest(good[1:]))],
                   'bad.ova', r'no \.ovf'),
        'missing-file': (good[:1], 'vm.ovf', 'missing'),
        'absurd-capacity': ([('vm.ovf', _one_disk_ovf(
            d, capacity=1 << 62))] + good[1:], 'vm.ovf',
            'exceeds the limit'),
        'format-disagrees': ([('vm.ovf', _one_disk_ovf(
            d, uri=VMDK_URI))] + good[1:], 'disk1.vhd',
            'says vmdk but the file holds a vhd'),
    }


REFUSALS = ['manifest-mismatch', 'manifest-lists-missing', 'billion-laughs',
            'external-entity', 'href-dotdot', 'href-absolute', 'href-http',
            'href-file-url', 'vmdk-extent-absolute', 'vmdk-extent-dotdot',
            'vmdk-extent-beside-archive', 'vmdk-extent-is-descriptor',
            'two-ovf', 'no-ovf', 'missing-file', 'absurd-capacity',
            'format-disagrees']


@pytest.fixture(scope='module')
def refusal_cases(disks, tmp_path_factory):
    return _refusal_cases(disks, tmp_path_factory.mktemp('refusals'))


@pytest.mark.parametrize('case', REFUSALS)
def test_refused(runner, refusal_cases, tmp_path, case):
    members, name, problem = refusal_cases[case]
    ova = write_ova(tmp_path / 'bad.ova', members)
    (tmp_path / 'beside.vmdk').write_bytes(bytes(1 * MiB))
    out = tmp_path / 'out'
    out.mkdir()
    if runner.wired:
        res = cli.run_any2kvm('convert', ova, out / 'x.raw')
        cli.assert_refused(res, out / 'x.raw', names=[name],
                           problem=problem)
    else:
        import re
        from any2kvm_os import exception
        with pytest.raises(exception.Any2KvmError) as e:
            runner.convert(ova, out / 'x.raw')
        line = str(e.value)
        assert '\n' not in line and name in line, line
        assert re.search(problem, line, re.I), line
        assert os.listdir(out) == []
        print('refusal: %s' % line)


def test_corpus_2nd_disk(runner, corpus, tmp_path):
    """Hand-made forklift OVA: the tar and OVF are fine, the VMDK bytes
    are corrupt (every independent reader rejects them)."""
    ova = corpus / 'upstream' / 'forklift-console-plugin' / '2nd_disk.ova'
    with tarfile.open(ova) as tf:
        desc = tf.extractfile('2nd_disk_v2.ovf').read()
    from any2kvm_os.containers.ova import descriptor
    d = descriptor.parse(desc, '2nd_disk_v2.ovf')
    assert d.vm['name'] == '2nd-disk-vm'
    assert (d.vm['cpus'], d.vm['memory_mb']) == (1, 2048)
    assert d.vm['nics'] == [{'model': 'e1000', 'network': 'VM Network'}]
    assert [(p.disk.id, p.disk.capacity, p.disk.format)
            for p in d.placed] == [('vmdisk1', 1 << 30, 'vmdk')]
    out = tmp_path / 'out'
    out.mkdir()
    runner.refused(ova, ['2nd_disk.vmdk'], '', out / 'x.raw')
