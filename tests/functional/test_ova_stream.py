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

"""OVAs converted as they download (what the Cinder hook and the
glance-image source do), fed through ``open_image_data`` with chunks read
from a file: no cloud needed.

The disks are streamOptimized VMDKs written by qemu-img and by VMDKstream
(and the corpus' VMDKstream disk); the truth for each output is
``qemu-img convert -O raw`` of the very VMDK packed in the OVA.  The OVA
packing reuses the helpers of ``test_ova``.
"""

import gzip
import hashlib
import logging
import lzma
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from any2kvm_os.containers.ova import stream as ova_stream
from any2kvm_os.writers import raw
from any2kvm_os import exception
from any2kvm_os import limits as a2k_limits
from any2kvm_os.sources import glance_image
from tests.lib import imagegen as ig
from tests.lib import ovabuild as ovat
from tests.lib import tools

MiB = ig.MiB
LABEL = 'glance image 1234'
VMDK_SPARSE_URI = 'http://www.vmware.com/interfaces/specifications/vmdk.html'


# ---------------------------------------------------------------------------
# disks
# ---------------------------------------------------------------------------

def _patterned_raw(path, size, seed):
    with open(path, 'wb') as f:
        f.truncate(size)
        # The last write ends at the very end: a partial last grain.
        for i, off in enumerate((0, size // 3 + 4096, size - 70000)):
            f.seek(off)
            f.write(ig.pattern(seed * 10 + i, 65536 + 512 * i))
    return path


def _truth(qemu_img, vmdk, directory):
    ref = Path(directory) / (Path(vmdk).name + '.qemu.raw')
    subprocess.run([qemu_img, 'convert', '-f', 'vmdk', '-O', 'raw',
                    str(vmdk), str(ref)], check=True, capture_output=True)
    sha = ig.sha256_file(ref)
    size = os.path.getsize(ref)
    ref.unlink()
    return sha, size


def _qemu_vmdk(qemu_img, directory, name, size, seed, subformat):
    src = _patterned_raw(Path(directory) / (name + '.src'), size, seed)
    out = Path(directory) / name
    subprocess.run([qemu_img, 'convert', '-f', 'raw', '-O', 'vmdk', '-o',
                    'subformat=' + subformat, str(src), str(out)],
                   check=True, capture_output=True)
    src.unlink()
    return out


def _vmdkstream(directory, name, size, seed):
    if not ig.system_python_has('VMDKstream'):
        tools.missing_tool('VMDKstream not importable by %s (Debian '
                           'package python3-vmdkstream)' % ig.SYSTEM_PYTHON)
    src = _patterned_raw(Path(directory) / (name + '.src'), size, seed)
    out = Path(directory) / name
    subprocess.run([ig.SYSTEM_PYTHON, '-c', 'import sys, VMDKstream; '
                    'VMDKstream.convert_to_stream(sys.argv[1], sys.argv[2])',
                    str(src), str(out)], check=True, capture_output=True)
    src.unlink()
    return out


class Disk(object):
    def __init__(self, path, truth):
        self.path = Path(path)
        self.sha256, self.size = truth


@pytest.fixture(scope='module')
def disks(qemu_img, tmp_path_factory, corpus_file):
    d = tmp_path_factory.mktemp('ova-stream-disks')
    made = {
        # 16 MiB + 1536: the last grain is partial.
        'qemu': _qemu_vmdk(qemu_img, d, 'qemu.vmdk', 16 * MiB + 1536, 1,
                           'streamOptimized'),
        'vmdkstream': _vmdkstream(d, 'vs.vmdk', 8 * MiB, 2),
        'corpus': corpus_file('generated/vmdkstream-0.2.vmdk.gz'),
        'sparse': _qemu_vmdk(qemu_img, d, 'sparse.vmdk', 8 * MiB, 3,
                             'monolithicSparse'),
    }
    return {k: Disk(p, _truth(qemu_img, p, d)) for k, p in made.items()}


# ---------------------------------------------------------------------------
# packages and the download stand-in
# ---------------------------------------------------------------------------

def make_ova(path, disks, manifest='after-ovf', algo='SHA256', gzip_=(),
             uri=ovat.VMDK_URI, corrupt=None, drop=None):
    """An OVA of ``disks`` (Disk objects, in unit order) with a VMware
    OVF 1.0 descriptor; the manifest right after the descriptor, last, or
    none; members named in ``gzip_`` are gzip-compressed."""
    members = []
    files = []
    dsk = []
    for i, disk in enumerate(disks):
        href = 'disk%d.vmdk' % i
        data = disk.path.read_bytes()
        if href in gzip_:
            data = gzip.compress(data)
        files.append(('file%d' % i, href, len(data)))
        dsk.append(('vmdisk%d' % i, 'file%d' % i, disk.size, uri))
        members.append((href, data))
    desc = ovat.vmware_ovf1(files, dsk)
    for href in gzip_:
        desc = desc.replace(b'ovf:href="%s"' % href.encode(),
                            b'ovf:href="%s" ovf:compression="gzip"'
                            % href.encode())
    members.insert(0, ('vm.ovf', desc))
    mf = ('vm.mf', ovat.manifest(members, algo))
    if corrupt:
        members = [(n, d[:-1] + bytes([d[-1] ^ 1]) if n == corrupt else d)
                   for n, d in members]
    if drop:
        members = [(n, d) for n, d in members if n != drop]
    if manifest == 'after-ovf':
        members.insert(1, mf)
    elif manifest == 'last':
        members.append(mf)
    return ovat.write_ova(path, members)


class Download(object):
    """Glance's data as chunks read from a file; counts the passes."""

    def __init__(self, path, chunk=1 << 20, cut=None):
        self.path = Path(path)
        self.chunk = chunk
        self.cut = cut
        self.passes = 0
        data = self.path.read_bytes()
        self.size = len(data)
        self.checksum = hashlib.md5(data).hexdigest()

    def __call__(self):
        self.passes += 1
        limit = self.size if self.cut is None else self.cut
        with open(self.path, 'rb') as f:
            done = 0
            while done < limit:
                data = f.read(min(self.chunk, limit - done))
                if not data:
                    return
                done += len(data)
                yield data


def open_download(download, scratch):
    return glance_image.open_image_data(
        LABEL, download, download.size,
        a2k_limits.Limits(scratch_dir=str(scratch)),
        checksum=download.checksum)


@pytest.fixture
def scratch(tmp_path):
    d = tmp_path / 'scratch'
    d.mkdir()
    return d


@pytest.fixture
def no_scratch(monkeypatch):
    """Fail if anything goes to scratch."""
    def refuse(*args, **kwargs):
        raise AssertionError('the OVA went through scratch')
    monkeypatch.setattr(glance_image, 'open_downloaded', refuse)


def convert_all(source, out_dir):
    outs = []
    for i, disk in enumerate(source.disks):
        out = Path(out_dir) / ('disk%d.raw' % i)
        raw.write_file(disk, str(out))
        outs.append(out)
    return outs


def check(outs, disks):
    assert len(outs) == len(disks)
    for out, disk in zip(outs, disks):
        assert os.path.getsize(out) == disk.size, out
        assert ig.sha256_file(out) == disk.sha256, (out, disk.path)


# ---------------------------------------------------------------------------
# streamed
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('manifest,algo', [('after-ovf', 'SHA256'),
                                           ('last', 'SHA1'),
                                           ('none', None)])
def test_one_disk_streamed(disks, tmp_path, scratch, no_scratch, manifest,
                           algo):
    ova = make_ova(tmp_path / 'a.ova', [disks['qemu']], manifest=manifest,
                   algo=algo or 'SHA256')
    download = Download(ova)
    with open_download(download, scratch) as source:
        assert source.container == 'ova'
        assert source.facts['name'] == 'web01'
        disk = source.disks[0]
        assert isinstance(disk, ova_stream.OvaStreamDisk)
        assert disk.disk_id == 'vmdisk0'
        assert disk.controller['type'] == 'scsi'
        # The first disk's file follows the descriptor: its size is known.
        assert disk.size_hint == disks['qemu'].size
        check(convert_all(source, tmp_path), [disks['qemu']])
        assert disk.virtual_size == disks['qemu'].size
    # One short pass for the descriptor, one for the disk.
    assert download.passes == 2
    assert os.listdir(scratch) == []


def test_two_disks_from_two_writers(disks, tmp_path, scratch, no_scratch):
    order = [disks['vmdkstream'], disks['qemu']]
    ova = make_ova(tmp_path / 'two.ova', order, manifest='last', algo='SHA1')
    download = Download(ova, chunk=65536 + 17)
    with open_download(download, scratch) as source:
        assert [d.disk_id for d in source.disks] == ['vmdisk0', 'vmdisk1']
        assert source.disks[1].size_hint is None
        check(convert_all(source, tmp_path), order)
    assert download.passes == 3


def test_facts_are_those_of_the_local_path(disks, tmp_path, scratch):
    from any2kvm_os.containers.ova import package
    order = [disks['qemu'], disks['corpus']]
    path = make_ova(tmp_path / 'f.ova', order)
    with package.open_ova(str(path), a2k_limits.Limits()) as local, \
            open_download(Download(path), scratch) as streamed:
        assert streamed.facts == local.facts
        assert [(d.disk_id, d.controller) for d in streamed.disks] == \
            [(d.disk_id, d.controller) for d in local.disks]
        for s, loc in zip(streamed.disks, local.disks):
            assert s.describe()[0]['virtual_size'] == \
                loc.describe()[0]['virtual_size']
            assert s.describe()[0]['creator'] == loc.describe()[0]['creator']
            assert s.name.split(':')[-1] == loc.name.split(':')[-1]


def test_corpus_vmdkstream_disk(disks, expected, tmp_path, scratch,
                                no_scratch):
    want = [e for e in expected['generated/vmdkstream-0.2.vmdk.gz']
            if e['oracle'] == 'qemu'][0]
    assert disks['corpus'].sha256 == want['sha256']
    ova = make_ova(tmp_path / 'c.ova', [disks['corpus']])
    with open_download(Download(ova), scratch) as source:
        check(convert_all(source, tmp_path), [disks['corpus']])


def test_gzip_member_streamed(disks, tmp_path, scratch, no_scratch):
    order = [disks['qemu'], disks['vmdkstream']]
    ova = make_ova(tmp_path / 'g.ova', order, gzip_=('disk1.vmdk',))
    with open_download(Download(ova), scratch) as source:
        check(convert_all(source, tmp_path), order)


# ---------------------------------------------------------------------------
# an OVA compressed whole (.ova.gz): a download, and a local file
# ---------------------------------------------------------------------------

COMPRESSORS = {'gzip': lambda data: gzip.compress(data, 6),
               'xz': lambda data: lzma.compress(data)}


def _compressed_ova(tmp_path, disks, how='gzip'):
    ova = make_ova(tmp_path / 'c.ova', disks)
    packed = tmp_path / ('c.ova.' + {'gzip': 'gz', 'xz': 'xz'}[how])
    packed.write_bytes(COMPRESSORS[how](ova.read_bytes()))
    ova.unlink()
    return packed


def test_compressed_ova_download_streamed(disks, tmp_path, scratch,
                                          no_scratch):
    order = [disks['qemu'], disks['vmdkstream']]
    download = Download(_compressed_ova(tmp_path, order))
    with open_download(download, scratch) as source:
        assert source.container == 'ova'
        check(convert_all(source, tmp_path), order)
    assert list(scratch.iterdir()) == []


def _converted_in_one_pass(path, order, scratch, tmp_path):
    """``path`` is detected as an OVA and converts to the bytes of
    ``order``'s disks, leaving nothing in ``scratch``."""
    from any2kvm_os.containers import registry
    limits = a2k_limits.Limits(scratch_dir=str(scratch))
    assert registry.detect(str(path), limits).name == 'ova'
    source = registry.open_path(str(path), limits)
    try:
        check(convert_all(source, tmp_path), order)
    finally:
        source.close()
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize('how', sorted(COMPRESSORS))
def test_compressed_ova_file_read_in_one_pass(disks, tmp_path, scratch,
                                              monkeypatch, how):
    """A local .ova.gz (or .xz) is an OVA, not a XenServer archive, and is
    read in one pass per disk, as a download is: nothing in scratch."""
    from any2kvm_os.containers.ova import package

    def refuse(*args, **kwargs):
        raise AssertionError('the OVA went through scratch')
    monkeypatch.setattr(package, 'open_compressed_ova', refuse)
    order = [disks['qemu'], disks['vmdkstream']]
    path = _compressed_ova(tmp_path, order, how)
    _converted_in_one_pass(path, order, scratch, tmp_path)


def test_compressed_ova_file_cli(disks, tmp_path):
    """The command converts a local .ova.gz (it used to say "unexpected
    member 'vm.ovf'"), and ``info`` tells an OVA."""
    from tests.lib import cli
    order = [disks['qemu'], disks['vmdkstream']]
    path = _compressed_ova(tmp_path, order)
    out = tmp_path / 'out'
    out.mkdir()
    res = cli.run_any2kvm('convert', path, out)
    assert res.returncode == 0, cli.describe(res)
    assert sorted(p.name for p in out.iterdir()) == ['web01-disk1.raw',
                                                     'web01.raw']
    check([out / 'web01.raw', out / 'web01-disk1.raw'], order)
    res = cli.run_any2kvm('info', path, '--format', 'json')
    assert res.returncode == 0, cli.describe(res)
    assert '"ova"' in res.stdout


def _ova_members(tmp_path, disks):
    """The members of an OVA (descriptor first), written into a folder:
    (folder, names in archive order)."""
    ova = make_ova(tmp_path / 'm.ova', disks)
    folder = tmp_path / 'pkg'
    folder.mkdir()
    with tarfile.open(str(ova)) as tf:
        names = [ti.name for ti in tf.getmembers()]
        for ti in tf.getmembers():
            (folder / ti.name).write_bytes(tf.extractfile(ti).read())
    ova.unlink()
    assert names[0].endswith('.ovf')
    return folder, names


def _gnu_tar_dot(tmp_path, disks, sub):
    """GNU tar's ``tar -C dir -czf x.ova.gz . ./vm.ovf ...``: a leading
    ``./`` directory entry (and ``./vm/`` with ``sub``), then the files in
    the OVA order."""
    folder, names = _ova_members(tmp_path, disks)
    entries = ['.']
    if sub:
        (folder / 'vm').mkdir()
        for n in names:
            (folder / n).rename(folder / 'vm' / n)
        entries.append('./vm')
    entries += ['./%s%s' % ('vm/' if sub else '', n) for n in names]
    packed = tmp_path / 'dot.ova.gz'
    subprocess.run(['tar', '-C', str(folder), '--no-recursion', '-czf',
                    str(packed)] + entries, check=True, timeout=120)
    return packed


def _python_tar_dot(tmp_path, disks, sub):
    """The same written by Python's tarfile (``tf.add(dir, '.',
    recursive=False)`` first)."""
    folder, names = _ova_members(tmp_path, disks)
    packed = tmp_path / 'dot.ova.gz'
    with tarfile.open(str(packed), 'w:gz') as tf:
        tf.add(str(folder), './', recursive=False)
        if sub:
            tf.add(str(folder), './vm/', recursive=False)
        for n in names:
            tf.add(str(folder / n), '%s%s' % ('./vm/' if sub else './', n))
    return packed


DOT_WRITERS = {'gnu-tar': _gnu_tar_dot, 'python-tarfile': _python_tar_dot}


@pytest.mark.parametrize('sub', [False, True], ids=['dot', 'dot-and-vm'])
@pytest.mark.parametrize('writer', sorted(DOT_WRITERS))
def test_compressed_ova_with_leading_directories(writer, sub, disks,
                                                 tmp_path, scratch,
                                                 monkeypatch):
    """An .ova.gz whose tar starts with ``./`` (and ``./vm/``) directory
    entries, as ``tar -C dir -czf x.ova.gz .`` writes: an OVA (the
    directories hold no data and are skipped), read in one pass, the
    descriptor being the first file; nothing goes to scratch."""
    from any2kvm_os.containers.ova import package

    def refuse(*args, **kwargs):
        raise AssertionError('the OVA went through scratch')
    monkeypatch.setattr(package, 'open_compressed_ova', refuse)
    order = [disks['qemu']]
    path = DOT_WRITERS[writer](tmp_path, order, sub)
    with tarfile.open(str(path)) as tf:
        first = tf.getmembers()[0]
    assert first.isdir() and first.name in ('.', './')
    _converted_in_one_pass(path, order, scratch, tmp_path)


def test_leading_directory_outside_refused(disks, tmp_path):
    """A leading directory entry that leads outside (``../``) is not
    skipped quietly: the archive is refused, nothing written anywhere."""
    from tests.lib import cli
    folder, names = _ova_members(tmp_path, [disks['qemu']])
    packed = tmp_path / 'evil.ova.gz'
    with tarfile.open(str(packed), 'w:gz') as tf:
        tf.add(str(folder), '../', recursive=False)
        for n in names:
            tf.add(str(folder / n), n)
    out = tmp_path / 'out'
    out.mkdir()
    res = cli.run_any2kvm('convert', packed, out / 'disk.raw')
    cli.assert_refused(res, out / 'disk.raw', names=['evil.ova.gz'],
                       problem=r'outside')
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'evil.ova.gz', 'out', 'pkg']


def _descriptor_late(tmp_path, disks, first, how='gzip', name='late'):
    """An OVA of ``disks`` whose members are reordered so that ``first``
    comes first (the descriptor later, as ``tar -czf x.ova.gz .`` packs a
    folder in directory order); compressed with ``how``, or plain when
    ``how`` is None.  ``first`` None: no descriptor at all."""
    work = tmp_path / ('%s-members' % name)
    work.mkdir()
    folder, names = _ova_members(work, disks)
    if first is None:
        names = [n for n in names if not n.endswith('.ovf')]
    else:
        names.remove(first)
        names.insert(0, first)
        assert not names[0].endswith('.ovf')
    ova = ovat.write_ova(tmp_path / (name + '.ova'),
                         [(n, folder / n) for n in names])
    if how is None:
        return ova
    packed = tmp_path / ('%s.ova.%s' % (name, {'gzip': 'gz',
                                               'xz': 'xz'}[how]))
    packed.write_bytes(COMPRESSORS[how](ova.read_bytes()))
    ova.unlink()
    return packed


def _counting_scratch_copies(monkeypatch):
    """Count the .ova.gz decompressed into scratch (and still do it)."""
    from any2kvm_os.containers.ova import package
    calls = []
    real = package.open_compressed_ova

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)
    monkeypatch.setattr(package, 'open_compressed_ova', counted)
    return calls


@pytest.mark.parametrize('first,how', [('disk0.vmdk', 'gzip'),
                                       ('vm.mf', 'gzip'),
                                       ('disk1.vmdk', 'xz')])
def test_compressed_ova_descriptor_not_first_goes_through_scratch(
        first, how, disks, tmp_path, scratch, monkeypatch):
    """The OVF spec wants the descriptor first, but the plain .ova accepts
    it anywhere: an .ova.gz whose tar starts with a disk or the manifest
    is an OVA too, decompressed into the bounded scratch (one pass cannot
    read it) and read as the plain one is; the scratch copy is gone once
    the source closes."""
    calls = _counting_scratch_copies(monkeypatch)
    order = [disks['qemu'], disks['vmdkstream']]
    path = _descriptor_late(tmp_path, order, first, how)
    _converted_in_one_pass(path, order, scratch, tmp_path)
    assert calls == [str(path)]


def test_plain_and_compressed_ova_agree_on_a_late_descriptor(
        disks, tmp_path, scratch, caplog):
    """The same late-descriptor package, plain and gzip: both are OVAs
    with the same VM and disks, and the compressed one says (INFO) why it
    goes through scratch."""
    from any2kvm_os.containers import registry
    limits = a2k_limits.Limits(scratch_dir=str(scratch))
    order = [disks['vmdkstream']]
    plain = _descriptor_late(tmp_path, order, 'disk0.vmdk', None, 'p')
    packed = _descriptor_late(tmp_path, order, 'disk0.vmdk', 'gzip', 'c')
    facts = []
    for path in (plain, packed):
        with caplog.at_level(logging.INFO, logger='any2kvm_os'):
            source = registry.open_path(str(path), limits)
        try:
            facts.append((source.container, source.facts,
                          [d.virtual_size for d in source.disks]))
        finally:
            source.close()
    assert facts[0] == facts[1] and facts[0][0] == 'ova'
    assert "the .ovf descriptor is not the first member ('disk0.vmdk' " \
        "comes first)" in caplog.text
    assert list(scratch.iterdir()) == []


def test_compressed_tar_of_ova_files_without_descriptor_refused(
        disks, tmp_path, scratch):
    """A compressed tar that starts like an OVA but holds no .ovf: one
    line naming the file, nothing left in scratch."""
    from any2kvm_os.containers import registry
    path = _descriptor_late(tmp_path, [disks['vmdkstream']], None)
    with pytest.raises(exception.Any2KvmError) as e:
        registry.open_path(str(path),
                           a2k_limits.Limits(scratch_dir=str(scratch)))
    line = str(e.value)
    assert '\n' not in line and str(path) in line, line
    assert 'no .ovf descriptor' in line, line
    assert list(scratch.iterdir()) == []


def test_compressed_ova_download_descriptor_not_first(disks, tmp_path,
                                                      scratch):
    """A download whose descriptor is not first cannot be read as it
    arrives: it is stored in scratch and read from there, then removed."""
    order = [disks['qemu']]
    download = Download(_descriptor_late(tmp_path, order, 'disk0.vmdk'))
    with open_download(download, scratch) as source:
        assert source.container == 'ova'
        check(convert_all(source, tmp_path), order)
    assert list(scratch.iterdir()) == []


def test_compressed_ova_with_a_sparse_disk_goes_through_scratch(
        disks, tmp_path, scratch):
    """A disk with no one-pass reader (a monolithicSparse VMDK): the OVA
    is decompressed into scratch, which is gone once the source closes."""
    from any2kvm_os.containers import registry
    order = [disks['sparse']]
    path = _compressed_ova(tmp_path, order)
    source = registry.open_path(
        str(path), a2k_limits.Limits(scratch_dir=str(scratch)))
    try:
        check(convert_all(source, tmp_path), order)
    finally:
        source.close()
    assert list(scratch.iterdir()) == []


def test_compressed_ova_damaged_is_refused(disks, tmp_path, scratch):
    """A flipped byte in the gzip trailer (its CRC): one line, nothing
    written."""
    from tests.lib import cli
    path = _compressed_ova(tmp_path, [disks['qemu']])
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xff
    path.write_bytes(bytes(data))
    out = tmp_path / 'out.raw'
    # refused at open (the first pass reads to the end: one disk) or
    # else before the disk is committed
    line = cli.convert_in_process(path, out, scratch)
    assert line is not None
    assert '\n' not in line and not os.path.lexists(out)
    assert str(path) in line and 'CRC' in line, line
    assert list(scratch.iterdir()) == []


# ---------------------------------------------------------------------------
# refusals: one line, no output
# ---------------------------------------------------------------------------

def refused(source, tmp_path, index=0):
    out = tmp_path / 'out.raw'
    with pytest.raises(exception.Any2KvmError) as e:
        raw.write_file(source.disks[index], str(out))
    line = str(e.value)
    assert '\n' not in line
    assert not os.path.lexists(out)
    assert [p for p in os.listdir(tmp_path) if p.startswith('.')] == []
    return line


@pytest.mark.parametrize('manifest', ['after-ovf', 'last'])
def test_corrupt_digest_is_refused(disks, tmp_path, scratch, manifest):
    order = [disks['qemu'], disks['vmdkstream']]
    ova = make_ova(tmp_path / 'bad.ova', order, manifest=manifest,
                   corrupt='disk0.vmdk')
    with open_download(Download(ova), scratch) as source:
        line = refused(source, tmp_path, 0)
        assert 'manifest mismatch for disk0.vmdk' in line, line
        assert line.startswith(LABEL + ':vm.mf: '), line
        # The other disk is refused too, as the local path refuses the OVA.
        assert 'manifest mismatch for disk0.vmdk' in refused(
            source, tmp_path, 1)


def test_truncated_download_is_refused(disks, tmp_path, scratch):
    ova = make_ova(tmp_path / 't.ova', [disks['qemu']])
    download = Download(ova)
    with open_download(download, scratch) as source:
        download.cut = download.size - 3 * 512
        line = refused(source, tmp_path)
        assert LABEL in line and 'ended after' in line, line


def test_truncated_archive_is_refused(disks, tmp_path, scratch):
    """The archive itself is cut (Glance holds what it was given)."""
    ova = make_ova(tmp_path / 't.ova', [disks['qemu']], manifest='none')
    data = ova.read_bytes()
    ova.write_bytes(data[:len(data) - 1024 - 2048])
    with open_download(Download(ova), scratch) as source:
        line = refused(source, tmp_path)
        assert 'truncated' in line, line


def test_missing_disk_member_is_refused(disks, tmp_path, scratch):
    order = [disks['qemu'], disks['vmdkstream']]
    ova = make_ova(tmp_path / 'm.ova', order, manifest='none',
                   drop='disk1.vmdk')
    with open_download(Download(ova), scratch) as source:
        for index in (0, 1):
            line = refused(source, tmp_path, index)
            assert "'disk1.vmdk') of a disk is missing" in line, line


def test_manifest_listing_a_missing_file_is_refused(disks, tmp_path,
                                                    scratch):
    ova = make_ova(tmp_path / 'l.ova', [disks['qemu'], disks['vmdkstream']],
                   manifest='last', drop='disk1.vmdk')
    with open_download(Download(ova), scratch) as source:
        line = refused(source, tmp_path)
        assert "missing" in line or "not a file of the archive" in line


# ---------------------------------------------------------------------------
# not streamable: scratch, and still converted
# ---------------------------------------------------------------------------

def test_not_stream_optimized_first_disk_goes_to_scratch(
        disks, tmp_path, scratch, caplog):
    order = [disks['sparse']]
    ova = make_ova(tmp_path / 's.ova', order, uri=VMDK_SPARSE_URI)
    download = Download(ova)
    with caplog.at_level(logging.INFO, logger='any2kvm_os'):
        with open_download(download, scratch) as source:
            assert not isinstance(source.disks[0],
                                  ova_stream.OvaStreamDisk)
            check(convert_all(source, tmp_path), order)
    assert any('goes through scratch' in r.getMessage() and
               'not streamOptimized' in r.getMessage()
               for r in caplog.records)
    assert os.listdir(scratch) == []


def test_not_stream_optimized_second_disk_goes_to_scratch(
        disks, tmp_path, scratch, caplog):
    order = [disks['qemu'], disks['sparse']]
    ova = make_ova(tmp_path / 's2.ova', order, uri=VMDK_SPARSE_URI)
    with caplog.at_level(logging.INFO, logger='any2kvm_os'):
        with open_download(Download(ova), scratch) as source:
            assert isinstance(source.disks[1], ova_stream.OvaStreamDisk)
            check(convert_all(source, tmp_path), order)
    assert any('goes through scratch' in r.getMessage()
               for r in caplog.records)
    assert os.listdir(scratch) == []


def test_chunked_file_goes_to_scratch(disks, tmp_path, scratch):
    disk = disks['qemu']
    data = disk.path.read_bytes()
    half = -(-len(data) // 2)
    desc = ovat.vmware_ovf1([('file0', 'disk0.vmdk', len(data))],
                            [('vmdisk0', 'file0', disk.size, ovat.VMDK_URI)])
    desc = desc.replace(b'ovf:href="disk0.vmdk"', b'ovf:href="disk0.vmdk" '
                        b'ovf:chunkSize="%d"' % half)
    ova = ovat.write_ova(tmp_path / 'k.ova', [
        ('vm.ovf', desc), ('disk0.vmdk.000000000', data[:half]),
        ('disk0.vmdk.000000001', data[half:])])
    with open_download(Download(ova), scratch) as source:
        check(convert_all(source, tmp_path), [disk])


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------

_RSS_SCRIPT = '''
import os, sys
from any2kvm_os import limits as a2k_limits
from any2kvm_os.writers import raw
from any2kvm_os.sources import glance_image
path, out = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
def chunks():
    with open(path, 'rb') as f:
        while True:
            data = f.read(1 << 20)
            if not data:
                return
            yield data
source = glance_image.open_image_data('glance image big', chunks, size,
                                      a2k_limits.Limits())
raw.write_file(source.disks[0], out)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve (it would be
# the size of the forking pytest).
with open('/proc/self/status') as f:
    print([line.split()[1] for line in f if line.startswith('VmHWM:')][0])
'''


def test_memory_stays_bounded_for_a_large_sparse_disk(qemu_img, tmp_path):
    size = 64 << 30
    src = tmp_path / 'big.raw'
    with open(src, 'wb') as f:
        f.truncate(size)
        for off in (0, size // 2, size - MiB):
            f.seek(off)
            f.write(ig.pattern(off % 97, MiB))
    vmdk = tmp_path / 'big.vmdk'
    subprocess.run([qemu_img, 'convert', '-f', 'raw', '-O', 'vmdk', '-o',
                    'subformat=streamOptimized', str(src), str(vmdk)],
                   check=True, capture_output=True)
    src.unlink()
    disk = Disk(vmdk, (None, size))
    ova = make_ova(tmp_path / 'big.ova', [disk])
    out = tmp_path / 'big.out'
    res = subprocess.run([sys.executable, '-c', _RSS_SCRIPT, str(ova),
                          str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rss_kib = int(res.stdout.split()[-1])
    print('peak RSS converting a 64 GiB streamOptimized OVA: %d MiB'
          % (rss_kib >> 10))
    assert os.path.getsize(out) == size
    assert os.stat(out).st_blocks * 512 < 64 * MiB
    assert rss_kib < 256 << 10


# ---------------------------------------------------------------------------
# StreamLayer on its own: a stream cut at a grain boundary
# ---------------------------------------------------------------------------

def _grain_ends(data):
    """Offsets just after each grain of a streamOptimized VMDK."""
    import struct
    overhead = struct.unpack_from('<Q', data, 64)[0] * 512
    pos, ends = overhead, []
    while pos + 512 <= len(data):
        _lba, size = struct.unpack_from('<QI', data, pos)
        if size == 0:
            break
        pos += -(-(12 + size) // 512) * 512
        ends.append(pos)
    return ends


@pytest.mark.parametrize('which', ['qemu', 'vmdkstream'])
def test_stream_layer_cut_at_a_grain_boundary_is_refused(disks, which):
    import io
    from any2kvm_os import fileio
    from any2kvm_os.formats import vmdk
    data = disks[which].path.read_bytes()
    ends = _grain_ends(data)
    assert len(ends) >= 2
    for cut in (len(data), ends[-2]):
        piece = data[:cut]
        stream = fileio.ForwardStream(io.BytesIO(piece), which, len(piece))
        layer = vmdk.StreamLayer(which, stream.peek(512), len(piece))
        layer.read_headers(stream)
        if cut == len(data):
            assert len(list(layer.data_runs(stream))) == len(ends)
            continue
        with pytest.raises(exception.InvalidImage) as e:
            list(layer.data_runs(stream))
        assert 'truncated' in str(e.value), str(e.value)


# ---------------------------------------------------------------------------
# a stream cut short after its grain directory, in an OVA read in one pass
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('which', ['vmdkstream', 'corpus'])
def test_cut_stream_in_streamed_ova_reads_with_warning(disks, which, tmp_path,
                                                       scratch, no_scratch,
                                                       caplog):
    """A streamOptimized VMDK (python3-vmdkstream's, and the corpus one)
    that lost its footer and end-of-stream marker, inside an OVA read as
    it downloads: every grain its tables reference came, so it reads as
    qemu-img reads the whole file, with the warning the file path gives,
    and nothing goes to scratch."""
    import struct
    disk = disks[which]
    data = disk.path.read_bytes()
    assert struct.unpack_from('<QII', data, len(data) - 3 * 512) == (1, 0, 3)
    cut = tmp_path / 'cut.vmdk'
    cut.write_bytes(data[:-3 * 512])
    ova = make_ova(tmp_path / 'c.ova', [Disk(cut, (disk.sha256, disk.size))])
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    with open_download(Download(ova), scratch) as source:
        check(convert_all(source, out_dir), [disk])
    assert 'ends without its footer' in caplog.text
    assert 'read as complete' in caplog.text


def test_stream_cut_inside_grains_in_streamed_ova_is_refused(disks,
                                                             tmp_path,
                                                             scratch):
    disk = disks['corpus']
    data = disk.path.read_bytes()
    cut = tmp_path / 'cut.vmdk'
    # Inside (or just before) the last grain: before the directory.
    cut.write_bytes(data[:_grain_ends(data)[-1] - 512])
    ova = make_ova(tmp_path / 'c.ova', [Disk(cut, (disk.sha256, disk.size))])
    with open_download(Download(ova), scratch) as source:
        line = refused(source, tmp_path)
    assert 'truncated' in line and 'only a complete copy' in line, line
