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

"""XVA archives written by Debian's ``xva-img`` (1.4.2).

``xva-img disk-import DIR RAW`` cuts a raw disk into 1 MiB chunks with
SHA-1 ``.checksum`` members (zero chunks left out) and ``xva-img package
OUT ./ova.xml ./DIR`` tars them after an ova.xml we write.  Truth is the
raw disk that went in; ``xva-img disk-export`` is a second reader where it
can be (it sizes the disk by the last chunk present, so only when that
chunk is there).

Every disk is converted in-process through ``xva.archive.open_xva``; the
same cases also run through the ``any2kvm`` command once ``convert`` wires the
xva module in (until then those are skipped).
"""

import gzip
import hashlib
import io
import os
import tarfile

import pytest
import xxhash

from any2kvm_os.containers.xva import archive
from any2kvm_os.writers import raw
from any2kvm_os import exception
from any2kvm_os import limits as a2k_limits
from tests.lib import cli
from tests.lib import imagegen as ig
from tests.lib import xvabuild as xb

MiB = 1 << 20
# Detection is the container registry: the CLI is always exercised.
WIRED = True


@pytest.fixture(scope='session')
def xva_img():
    return xb.find_xva_img()


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def work(tmp_path):
    w = tmp_path / 'work'
    w.mkdir()
    return w


def convert_all(path, out_dir):
    """Convert every disk in-process; return the output paths."""
    src = archive.open_xva(str(path), a2k_limits.Limits())
    outs = []
    try:
        for i, disk in enumerate(src.disks):
            out = out_dir / ('disk%d.raw' % i)
            raw.write_file(disk, str(out))
            outs.append(out)
        return src, outs
    finally:
        src.close()


def wired():
    """Kept for the tests that call it: XVA detection is wired."""


# ---------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------

def test_single_disk(xva_img, work, out_dir):
    raw, chunks = xb.single(xva_img, work)
    # the zero chunks (1, 3-5, 7-10) are left out by xva-img
    assert [c for c in chunks if '.' not in c] == [
        '00000000', '00000002', '00000006', '00000011']
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    src, (out,) = convert_all(xva_path, out_dir)
    assert os.path.getsize(out) == xb.SIZE_A
    assert sha256(out) == sha256(raw)
    assert src.facts['name'] == 'test-vm' and src.facts['cpus'] == 4
    layer, = src.disks[0].describe()
    assert layer['virtual_size'] == xb.SIZE_A
    assert layer['allocated_bytes'] == 4 * MiB
    assert layer['subformat'] == 'sha1'
    # xva-img's own reader agrees (the last chunk is present)
    xb.run(xva_img, 'disk-export', 'Ref:3', work / 'export.raw', cwd=work)
    assert sha256(work / 'export.raw') == sha256(raw)
    if WIRED:
        cli_out = cli.convert(xva_path, out_dir / 'cli.raw')
        assert sha256(cli_out) == sha256(raw)
        info = cli.info(xva_path)
        assert info['container'] == 'xva'
        assert info['vm']['memory_mb'] == 2048
        assert [d['virtual_size'] for d in info['disks']] == [xb.SIZE_A]


@pytest.mark.parametrize('compress', [None, 'gz'])
def test_two_disks_and_a_cd(xva_img, work, out_dir, compress):
    raw_a = xb.make_raw(work / 'a.raw', xb.SIZE_A, 1, xb.LAYOUT_A)
    raw_b = xb.make_raw(work / 'b.raw', xb.SIZE_B, 2, xb.LAYOUT_B)
    # userdevice 1 is Ref:3, userdevice 0 is Ref:5 (packed first: the
    # archive's order is not the VM's)
    (work / 'ova.xml').write_bytes(xb.ova_xml(
        [('Ref:3', xb.SIZE_A, 1), ('Ref:5', xb.SIZE_B, 0)], cds=[3, 2],
        vifs=[(0, '2a:11:22:33:44:55')]))
    xb.disk_import(xva_img, work, 'Ref:3', raw_a)
    xb.disk_import(xva_img, work, 'Ref:5', raw_b)
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:5', 'Ref:3'])
    if compress:
        gz = work / 'vm.xva.gz'
        gz.write_bytes(gzip.compress(xva_path.read_bytes(), 6))
        xva_path = gz
    src, outs = convert_all(xva_path, out_dir)
    assert [sha256(o) for o in outs] == [sha256(raw_b), sha256(raw_a)]
    assert [d.name for d in src.disks] == ['%s:Ref:5' % xva_path,
                                           '%s:Ref:3' % xva_path]
    assert src.facts['nics'][0]['mac'] == '2a:11:22:33:44:55'
    if WIRED:
        dest = out_dir / 'cli'
        dest.mkdir()
        res = cli.run_any2kvm('convert', xva_path, dest)
        assert res.returncode == 0, cli.describe(res)
        # Named as import --target file and Glance name them.
        assert sorted(os.listdir(dest)) == ['test-vm-disk1.raw',
                                            'test-vm.raw']
        assert sha256(dest / 'test-vm.raw') == sha256(raw_b)
        assert sha256(dest / 'test-vm-disk1.raw') == sha256(raw_a)


def test_xxhash_checksums(xva_img, work, out_dir):
    raw, chunks = xb.single(xva_img, work)
    # xva-img only writes SHA-1 .checksum members; XenServer 8 writes
    # .xxhash ones (XXH64, "%016LX"): recompute them that way and drop the
    # SHA-1 ones.
    for name in chunks:
        if name.endswith('.checksum'):
            os.unlink(work / 'Ref:3' / name)
            continue
        data = (work / 'Ref:3' / name).read_bytes()
        (work / 'Ref:3' / (name + '.xxhash')).write_text(
            '%016X' % xxhash.xxh64_intdigest(data))
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    src, (out,) = convert_all(xva_path, out_dir)
    assert sha256(out) == sha256(raw)
    assert src.disks[0].describe()[0]['subformat'] == 'xxh64'
    if WIRED:
        assert sha256(cli.convert(xva_path, out_dir / 'c.raw')) == \
            sha256(raw)


@pytest.mark.parametrize('compress', [None, 'gz'])
def test_zero_chunks_left_out_but_the_last(xva_img, work, out_dir, compress):
    # Chunks 8..10 are zeros and left out; the last one (11) is stored, as
    # xva-img and xapi always store it: the disk reads whole.
    size = 12 * MiB
    raw, chunks = xb.single(xva_img, work, size, xb.LAYOUT_A[:4])
    for name in chunks:
        if '00000008' <= name[:8] < '00000011':
            os.unlink(work / 'Ref:3' / name)
    assert '00000011' in os.listdir(work / 'Ref:3')
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    if compress:
        xva_path.write_bytes(gzip.compress(xva_path.read_bytes()))
    src, (out,) = convert_all(xva_path, out_dir)
    assert os.path.getsize(out) == size
    assert sha256(out) == sha256(raw)


@pytest.mark.parametrize('compress', [None, 'gz'])
@pytest.mark.parametrize('which', ['first', 'last'])
def test_first_or_last_chunk_missing(xva_img, work, out_dir, compress,
                                     which):
    """The export format stores a disk's first and last chunk: without one
    the archive lost data (the tail would read as zeros), and is refused
    naming the disk and the chunk."""
    size = 12 * MiB
    raw, chunks = xb.single(xva_img, work, size, xb.LAYOUT_A[:4])
    gone = '00000000' if which == 'first' else '00000011'
    for name in chunks:
        if name[:8] == gone:
            os.unlink(work / 'Ref:3' / name)
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    if compress:
        xva_path.write_bytes(gzip.compress(xva_path.read_bytes()))
    msg = refuse(xva_path, out_dir, 'lacks its %s chunk' % which)
    assert 'disk Ref:3 (userdevice 0)' in msg and 'Ref:3/%s' % gone in msg


@pytest.mark.parametrize('how', ['zeroed-header', 'cut'])
def test_last_chunk_header_zeroed_or_cut(xva_img, work, out_dir, how):
    """The last chunk's tar header zeroed (tar reads it as the end) is a
    damaged archive; cut at that member's boundary, the last chunk is
    missing."""
    size = 12 * MiB
    xb.single(xva_img, work, size, xb.LAYOUT_A[:4])
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    with tarfile.open(xva_path) as tf:
        last = [m for m in tf.getmembers() if m.isfile()][-2]
    assert last.name.endswith('00000011'), last.name
    with open(xva_path, 'r+b') as f:
        if how == 'zeroed-header':
            f.seek(last.offset)
            f.write(bytes(512))
        else:
            f.truncate(last.offset)
            f.seek(0, 2)
            f.write(bytes(1024))
    refuse(xva_path, out_dir, 'damaged archive' if how == 'zeroed-header'
           else 'lacks its last chunk')


# ---------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------

def refuse(xva_path, out_dir, problem):
    """In-process: a one-line Any2KvmError naming the archive, nothing
    left; through the CLI (once wired): the refusal contract."""
    out = out_dir / 'disk.raw'
    with pytest.raises(exception.Any2KvmError) as e:
        convert_all(xva_path, out_dir)
    msg = str(e.value)
    assert '\n' not in msg and str(xva_path) in msg, msg
    assert problem.lower() in msg.lower(), msg
    assert os.listdir(out_dir) == []
    if WIRED:
        res = cli.run_any2kvm('convert', xva_path, out)
        cli.assert_refused(res, out, names=[xva_path], problem=problem)
    return msg


def rewrite(src, dest, change):
    """Copy the tar ``src`` to ``dest``; ``change(name, data)`` returns
    [(TarInfo or name, data)] to write instead of a member."""
    with tarfile.open(src) as tin, tarfile.open(
            dest, 'w', format=tarfile.USTAR_FORMAT) as tout:
        for ti in tin:
            data = tin.extractfile(ti).read()
            for item, content in change(ti.name, data):
                if not isinstance(item, tarfile.TarInfo):
                    info = tarfile.TarInfo(item)
                    info.size = len(content)
                    item = info
                tout.addfile(item, io.BytesIO(content) if item.isreg()
                             else None)
    return dest


def test_refuse_checksum_mismatch(xva_img, work, out_dir):
    xb.single(xva_img, work)
    chunk = work / 'Ref:3' / '00000002'
    data = bytearray(chunk.read_bytes())
    data[1000] ^= 0x40
    chunk.write_bytes(bytes(data))
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    msg = refuse(xva_path, out_dir, 'checksum mismatch')
    assert 'Ref:3/00000002' in msg


def test_refuse_chunk_beyond_disk(xva_img, work, out_dir):
    xb.single(xva_img, work, ova_size=8 * MiB)
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    refuse(xva_path, out_dir, 'chunk 11 of Ref:3 lies beyond the disk size')


@pytest.mark.parametrize('xml', [xb.BILLION_LAUGHS, xb.EXTERNAL_ENTITY],
                         ids=['billion-laughs', 'external-entity'])
def test_refuse_hostile_ova_xml(xva_img, work, out_dir, xml):
    xb.single(xva_img, work)
    (work / 'ova.xml').write_bytes(xml)
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    refuse(xva_path, out_dir, 'DTDForbidden')


def test_refuse_unknown_encoding(xva_img, work, out_dir):
    """``encoding="WTF-8"``: the one-line "unreadable XML" error a
    malformed descriptor gets, not an internal error (LookupError)."""
    xb.single(xva_img, work)
    xml = (work / 'ova.xml').read_bytes()
    if xml.startswith(b'<?xml'):
        xml = xml[xml.index(b'?>') + 2:]
    (work / 'ova.xml').write_bytes(
        b'<?xml version="1.0" encoding="WTF-8"?>' + xml)
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    refuse(xva_path, out_dir, 'unreadable XML')


def test_refuse_missing_ova_xml(xva_img, work, out_dir):
    xb.single(xva_img, work)
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'], ova=False)
    # Not an XVA: once wired, detection sends it elsewhere; the CLI says
    # only that it cannot read it.
    with pytest.raises(exception.InvalidArchive, match='not ova.xml'):
        convert_all(xva_path, out_dir)
    assert os.listdir(out_dir) == []
    if WIRED:
        res = cli.run_any2kvm('convert', xva_path, out_dir / 'disk.raw')
        cli.assert_refused(res, out_dir / 'disk.raw', names=[xva_path])


def test_refuse_two_mib_chunk(xva_img, work, out_dir):
    xb.single(xva_img, work)
    big = xb.pattern(5, 2 * MiB)
    (work / 'Ref:3' / '00000001').write_bytes(big)
    (work / 'Ref:3' / '00000001.checksum').write_bytes(xb.checksum(big))
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    refuse(xva_path, out_dir, 'at most 1 MiB')


@pytest.mark.parametrize('compress', [None, 'gz'])
def test_refuse_truncated(xva_img, work, out_dir, compress):
    xb.single(xva_img, work)
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:3'])
    data = xva_path.read_bytes()
    if compress:
        data = gzip.compress(data)
    xva_path.write_bytes(data[:len(data) * 2 // 3])
    refuse(xva_path, out_dir, 'truncated')


def test_refuse_symlink_member(xva_img, work, out_dir):
    xb.single(xva_img, work)
    good = xb.package(xva_img, work, 'good.xva', ['Ref:3'])

    def add_link(name, data):
        out = [(name, data)]
        if name in ('ova.xml', './ova.xml'):
            link = tarfile.TarInfo('./Ref:3/00000001')
            link.type = tarfile.SYMTYPE
            link.linkname = '/etc/shadow'
            out.append((link, b''))
        return out
    xva_path = rewrite(good, work / 'vm.xva', add_link)
    refuse(xva_path, out_dir, 'links are refused')


@pytest.mark.parametrize('compress', [None, 'gz'])
def test_vdis_without_a_vm(xva_img, work, out_dir, compress):
    """ova.xml with VDIs and no VM object: each VDI converts (checked
    against xva-img's own disk-export), the VM facts are empty and the
    output says so."""
    raw_a = xb.make_raw(work / 'a.raw', xb.SIZE_A, 1, xb.LAYOUT_A)
    raw_b = xb.make_raw(work / 'b.raw', xb.SIZE_B, 2, xb.LAYOUT_B)
    (work / 'ova.xml').write_bytes(xb.vdi_only_xml(
        [('Ref:5', xb.SIZE_B), ('Ref:3', xb.SIZE_A)]))
    xb.disk_import(xva_img, work, 'Ref:3', raw_a)
    xb.disk_import(xva_img, work, 'Ref:5', raw_b)
    xva_path = xb.package(xva_img, work, 'vm.xva', ['Ref:5', 'Ref:3'])
    for ref in ('Ref:3', 'Ref:5'):
        xb.run(xva_img, 'disk-export', ref, work / ('%s.export' % ref),
               cwd=work)
    if compress:
        gz = work / 'vm.xva.gz'
        gz.write_bytes(gzip.compress(xva_path.read_bytes(), 6))
        xva_path = gz
    src, outs = convert_all(xva_path, out_dir)
    assert [sha256(o) for o in outs] == [sha256(work / 'Ref:5.export'),
                                         sha256(work / 'Ref:3.export')]
    assert [sha256(o) for o in outs] == [sha256(raw_b), sha256(raw_a)]
    assert src.facts == {}
    for o in outs:
        os.unlink(o)
    res = cli.run_any2kvm('info', xva_path, '--format', 'json')
    assert res.returncode == 0, cli.describe(res)
    assert 'describes disks but no VM' in res.stderr
    assert res.stderr.count('\n') == 1


# ---------------------------------------------------------------------------
# leading directories, plain and compressed alike
# ---------------------------------------------------------------------------

def _dir(name):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = 0o755
    return ti, b''


def _leading_members(layout_):
    """ova.xml and the chunks of a 2 MiB + 4 KiB disk ``Ref:3``, laid out
    as ``layout_`` names: (members, raw truth)."""
    size = 2 * MiB + 4096
    data = {0: xb.pattern(31, MiB), 2: xb.pattern(32, 4096)}
    truth = data[0] + bytes(MiB) + data[2]
    chunks = xb.chunk_members('Ref:3', data)
    ova = xb.ova_xml([('Ref:3', size, 0)])
    prefix = {'dot-dir': './', 'dot-names': './', 'ref-dir': '',
              'export': 'export/'}[layout_]
    members = [(prefix + 'ova.xml', ova)]
    if layout_ == 'dot-dir':
        members.insert(0, _dir('.'))
    if layout_ in ('dot-dir', 'ref-dir'):
        members.append(_dir(prefix + 'Ref:3'))
    if layout_ == 'export':
        members.insert(0, _dir('export'))
    members += [(prefix + n, d) for n, d in chunks]
    return members, truth


LEADING_COMPRESS = [None, 'gz', 'xz', 'zst']


@pytest.mark.parametrize('compress', LEADING_COMPRESS,
                         ids=[c or 'plain' for c in LEADING_COMPRESS])
@pytest.mark.parametrize('layout_', ['dot-dir', 'dot-names', 'ref-dir'])
def test_leading_directories_read(layout_, compress, tmp_path, out_dir):
    """``./`` before ova.xml (``tar -C dir -cf vm.xva .``), ``./`` names
    (xva-img's), a ``Ref:3/`` directory entry: detected as an XVA and
    read, plain in place or compressed in one pass, whatever the
    compression."""
    from any2kvm_os.containers import registry
    members, truth = _leading_members(layout_)
    path = ig.compress_whole(
        xb.write_xva(tmp_path / 'vm.xva', None, members), compress)
    assert registry.detect(str(path), a2k_limits.Limits()).name == 'xva'
    assert cli.convert_in_process(path, out_dir / 'disk.raw') is None
    assert (out_dir / 'disk.raw').read_bytes() == truth


def test_leading_directory_download_read(tmp_path, out_dir):
    """The same ``./`` entry in a gzip XVA read as it downloads."""
    from any2kvm_os.sources import glance_image
    members, truth = _leading_members('dot-dir')
    path = ig.compress_whole(
        xb.write_xva(tmp_path / 'vm.xva', None, members), 'gz')
    data = path.read_bytes()
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    src = glance_image.open_image_data(
        'image 1', lambda: iter([data[:70000], data[70000:]]), len(data),
        a2k_limits.Limits(scratch_dir=str(scratch)))
    try:
        assert src.container == 'xva'
        raw.write_file(src.disks[0], str(out_dir / 'disk.raw'))
    finally:
        src.close()
    assert (out_dir / 'disk.raw').read_bytes() == truth
    assert list(scratch.iterdir()) == []


def test_ova_xml_in_a_directory_refused_alike(tmp_path, out_dir):
    """``export/ova.xml`` ...: an XVA, refused in the same line plain or
    compressed (gzip, xz, zstd); nothing written."""
    members, _truth = _leading_members('export')
    lines = cli.refused_alike(
        [ig.compress_whole(xb.write_xva(tmp_path / 'vm.xva', None, members),
                           compress) for compress in LEADING_COMPRESS],
        out_dir / 'disk.raw')
    assert lines == {"ARCHIVE: ova.xml lies in a directory "
                     "('export/ova.xml'): an XVA holds it, and its disks, "
                     "at the top of the archive"}, lines
    assert list(out_dir.iterdir()) == []
