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

"""XVA: the ova.xml parser, the chunk layout and small crafted archives.

The ova.xml and XVA tar writers are in ``tests.lib.xvabuild``, shared with
the functional tests.
"""

import gzip
import os
import re
import sys
import tarfile

import pytest

from any2kvm_os.containers.xva import archive
from any2kvm_os.containers.xva import layout as xva_layout
from any2kvm_os.containers.xva import metadata
from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os import limits as a2k_limits
from any2kvm_os.writers import raw
from tests.lib.xvabuild import BILLION_LAUGHS
from tests.lib.xvabuild import checksum
from tests.lib.xvabuild import chunk_members
from tests.lib.xvabuild import EXTERNAL_ENTITY
from tests.lib.xvabuild import ova_xml
from tests.lib.xvabuild import pattern
from tests.lib.xvabuild import write_xva

MiB = 1 << 20
A = 'archive.xva'


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def read_disk(source, tmp_path, name='out.raw'):
    out = tmp_path / name
    target = raw.RawWriter.open(str(out))
    try:
        source.write_to(target)
        target.commit()
    except BaseException:
        target.abort()
        raise
    return out.read_bytes()


def limits(**kw):
    return a2k_limits.Limits(**kw)


# ---------------------------------------------------------------------------
# ova.xml
# ---------------------------------------------------------------------------

def test_ova_facts_and_disk_order():
    xml = ova_xml([('Ref:7', 3 * MiB, 1), ('Ref:3', 5 * MiB, 0)],
                  cds=[3, 2], vifs=[(1, 'AA:BB:CC:00:00:02'),
                                    (0, 'aa:bb:cc:00:00:01')])
    meta = metadata.parse_metadata(A, xml)
    assert [d.ref for d in meta.disks] == ['Ref:3', 'Ref:7']
    assert [d.virtual_size for d in meta.disks] == [5 * MiB, 3 * MiB]
    assert meta.disks[0].bootable and not meta.disks[1].bootable
    assert meta.disks[0].uuid == 'uuid-Ref-3'
    # the ISO VDI of a CD drive is known (so its members would be
    # accepted) but is no disk
    assert set(meta.vdi_sizes) == {'Ref:3', 'Ref:7', 'Ref:1104'}
    vm = meta.vm
    assert vm['name'] == 'test-vm'
    assert vm['cpus'] == 4 and vm['cores_per_socket'] == 2
    assert vm['memory_mb'] == 2048
    assert vm['firmware'] == 'bios' and vm['virtualization'] == 'hvm'
    assert vm['nics'] == [
        {'device': '0', 'mac': 'aa:bb:cc:00:00:01',
         'network': 'Pool-wide network associated with eth0'},
        {'device': '1', 'mac': 'aa:bb:cc:00:00:02',
         'network': 'Pool-wide network associated with eth0'}]
    assert vm['os'] == {'distro': 'debianbuster',
                        'template': 'Debian Buster 10'}
    assert meta.creator == 'XCP-ng 8.2.1'


def test_ova_uefi_guest_metrics_and_snapshots():
    gm = {'class': 'VM_guest_metrics', 'id': 'Ref:50', 'snapshot': {
        'os_version': {'name': 'Ubuntu 22.04.3 LTS', 'distro': 'ubuntu',
                       'major': '22', 'minor': '04'}}}
    # A snapshot of the VM, exported with it: not the VM to convert.
    snap = {'class': 'VM', 'id': 'Ref:60', 'snapshot': {
        'name_label': 'before upgrade', 'is_a_snapshot': True,
        'VCPUs_max': '1', 'VBDs': []}}
    xml = ova_xml([('Ref:3', MiB, 0)], uefi=True,
                  vm={'guest_metrics': 'Ref:50'}, extra_objects=[gm, snap])
    vm = metadata.parse_metadata(A, xml).vm
    assert vm['name'] == 'test-vm'
    assert vm['firmware'] == 'uefi' and vm['secure_boot'] is False
    assert vm['os'] == {'distro': 'ubuntu',
                        'description': 'Ubuntu 22.04.3 LTS',
                        'version': '22.04', 'template': 'Debian Buster 10'}


def test_ova_device_model_uefi_and_pv():
    xml = ova_xml([('Ref:3', MiB, 0)], vm={
        'platform': {'device-model': 'qemu-upstream-uefi',
                     'secureboot': 'true'}})
    vm = metadata.parse_metadata(A, xml).vm
    assert vm['firmware'] == 'uefi' and vm['secure_boot'] is True
    assert vm['cores_per_socket'] == 1
    xml = ova_xml([('Ref:3', MiB, 0)], vm={'HVM_boot_policy': ''})
    assert metadata.parse_metadata(A, xml).vm['virtualization'] == 'pv'


@pytest.mark.parametrize('data,problem', [
    (BILLION_LAUGHS, 'DTD'),
    (EXTERNAL_ENTITY, 'DTD'),
    (b'<value><struct>', 'not well-formed'),
    (b'<value><struct></struct></value>', 'no "objects"'),
    (b'<value><struct><member><name>objects</name><value><array><data/>'
     b'</array></value></member></struct></value>', 'no VM'),
    (b'<value><array><data>' * 40 + b'</data></array></value>' * 40,
     'deeper'),
    (b'<value><int>x</int></value>', 'bad <int>'),
    (b'<value><foo/></value>', 'unknown XML-RPC type'),
    (b'<?xml version="1.0" encoding="WTF-8"?><value><int>1</int></value>',
     'unreadable XML'),
], ids=['billion-laughs', 'external-entity', 'malformed', 'no-objects',
        'no-vm', 'deep', 'bad-int', 'unknown-type', 'unknown-encoding'])
def test_ova_refusals(data, problem):
    with pytest.raises(exception.InvalidArchive) as e:
        metadata.parse_metadata(A, data)
    msg = str(e.value)
    assert msg.startswith('archive.xva:ova.xml: ')
    assert problem in msg and '\n' not in msg


def test_ova_disk_refusals():
    xml = ova_xml([('Ref:3', MiB, 0)]).replace(b'<name>VDI</name>'
                                               b'<value>Ref:3',
                                               b'<name>VDI</name>'
                                               b'<value>Ref:77')
    with pytest.raises(exception.InvalidArchive, match='refers to VDI '
                       'Ref:77'):
        metadata.parse_metadata(A, xml)
    xml = ova_xml([('Ref:3', 'lots', 0)])
    with pytest.raises(exception.InvalidArchive, match='no valid '
                       'virtual_size'):
        metadata.parse_metadata(A, xml)
    xml = ova_xml([('Ref:3', 4 << 30, 0)])
    with pytest.raises(exception.InvalidImage, match='exceeds the limit'):
        metadata.parse_metadata(A, xml, max_virtual_size=1 << 30)
    xml = ova_xml([('Ref:3', MiB, 0)], extra_objects=[
        {'class': 'SR', 'id': 'Ref:99', 'snapshot': {}}])
    with pytest.raises(exception.InvalidArchive, match='appears twice'):
        metadata.parse_metadata(A, xml)


# ---------------------------------------------------------------------------
# member layout
# ---------------------------------------------------------------------------

def layout(**sizes):
    return xva_layout.Layout(A, {k.replace('_', ':'): v
                                 for k, v in sizes.items()})


def feed(lay, members):
    """[(name, size)] -> [(ref, number, pos, length)] of checksummed
    chunks."""
    out = []
    for name, size in members:
        kind, what = lay.member(name, size)
        if kind == xva_layout.CHECKSUM_MEMBER:
            c = what[0]
            out.append((c.ref, c.number, c.pos, c.length))
    lay.finish()
    return out


def sums(*chunks):
    """(name, size) pairs for chunks with their .checksum members."""
    out = []
    for name, size in chunks:
        out += [(name, size), (name + '.checksum', 40)]
    return out


def test_layout_positions_and_omitted_chunks():
    lay = layout(Ref_3=5 * MiB + 4096, Ref_4=MiB)
    got = feed(lay, sums(('Ref:3/00000000', MiB), ('Ref:3/00000003', MiB),
                         ('Ref:3/00000005', 4096), ('Ref:4/00000000', MiB)))
    assert got == [('Ref:3', 0, 0, MiB), ('Ref:3', 3, 3 * MiB, MiB),
                   ('Ref:3', 5, 5 * MiB, 4096), ('Ref:4', 0, 0, MiB)]


def test_layout_keepalive_shifts_later_chunks():
    # xapi writes an empty chunk to keep the connection alive while it
    # skips zeros; it takes a number, not a place: chunk 4 lies at 2 MiB
    # after two of them, as xapi's importer places it.
    lay = layout(Ref_0=4 * MiB)
    got = feed(lay, sums(('Ref:0/00000000', MiB), ('Ref:0/00000001', 0),
                         ('Ref:0/00000002', 0), ('Ref:0/00000004', MiB),
                         ('Ref:0/00000005', MiB)))
    assert [(n, p, n_) for _, n, p, n_ in got] == [
        (0, 0, MiB), (1, MiB, 0), (2, MiB, 0), (4, 2 * MiB, MiB),
        (5, 3 * MiB, MiB)]
    with pytest.raises(exception.InvalidArchive, match='chunk 6 of Ref:0 '
                       'lies beyond'):
        feed(layout(Ref_0=4 * MiB), sums(('Ref:0/00000001', 0),
                                         ('Ref:0/00000006', MiB)))


def test_layout_empty_terminator_at_the_end():
    lay = layout(Ref_0=2 * MiB)
    got = feed(lay, sums(('Ref:0/00000001', MiB), ('Ref:0/00000002', 0)))
    assert got[-1] == ('Ref:0', 2, 2 * MiB, 0)


@pytest.mark.parametrize('members,problem', [
    (sums(('Ref:3/00000002', MiB)), 'chunk 2 of Ref:3 lies beyond the '
     'disk size'),
    (sums(('Ref:3/00000003', 0)), 'lies beyond'),
    (sums(('Ref:3/00000000', 2 * MiB)), 'at most 1 MiB'),
    (sums(('Ref:3/00000000', 4096)), 'a chunk holds 1 MiB'),
    (sums(('Ref:3/00000001', MiB)), 'the rest of the disk'),
    (sums(('Ref:3/00000001', 4096), ('Ref:3/00000000', MiB)),
     'duplicate or out of order'),
    (sums(('Ref:3/00000001', 4096), ('Ref:3/00000001', 4096)),
     'duplicate or out of order'),
    ([('Ref:3/00000000', MiB), ('Ref:3/00000001', 4096)],
     'without its checksum'),
    ([('Ref:3/00000000', MiB)], 'without its checksum'),
    ([('Ref:3/00000000.checksum', 40)], 'without its chunk'),
    ([('Ref:3/00000000', MiB), ('Ref:3/00000001.checksum', 40)],
     'without its chunk'),
    ([('Ref:3/00000000', MiB), ('Ref:3/00000000.xxhash', 40)],
     'xxh64 checksum is 16'),
    (sums(('Ref:3/00000000', MiB), ('Ref:4/00000000', MiB),
          ('Ref:3/00000001', MiB)), 'not together'),
    (sums(('Ref:9/00000000', MiB)), 'no VDI Ref:9'),
    (sums(('Ref:3/0000001', MiB)), 'not part of an XVA'),
    (sums(('Ref:3/012345678', MiB)), 'not part of an XVA'),
    ([('ova.xml', 10)], 'not part of an XVA'),
    ([('Ref:3/00000000.sha256', 64)], 'not part of an XVA'),
], ids=['beyond', 'empty-beyond', '2MiB', 'short-middle', 'short-last',
        'out-of-order', 'duplicate', 'no-checksum-next', 'no-checksum-end',
        'orphan-checksum', 'wrong-checksum', 'bad-digest-size',
        'not-together', 'unknown-vdi', 'short-number', 'padded-number',
        'second-ova', 'unknown-suffix'])
def test_layout_refusals(members, problem):
    lay = layout(Ref_3=MiB + 4096, Ref_4=MiB)
    with pytest.raises(exception.InvalidArchive) as e:
        feed(lay, members)
    assert problem in str(e.value), str(e.value)
    assert str(e.value).startswith('archive.xva: member ')


def test_layout_directories():
    lay = layout(Ref_3=MiB)
    lay.directory('Ref:3/')
    lay.directory('./')
    with pytest.raises(exception.InvalidArchive, match='no VDI'):
        lay.directory('etc')


def test_verify_chunk():
    chunk = xva_layout.Chunk('Ref:3', 5, 5 * MiB, 3, 'Ref:3/00000005')
    xva_layout.verify_chunk(A, chunk, 'sha1', checksum(b'abc'), b'abc')
    xva_layout.verify_chunk(A, chunk, 'xxh64', checksum(b'abc', 'xxh64'),
                            b'abc')
    xva_layout.verify_chunk(A, chunk, 'xxh64',
                            checksum(b'abc', 'xxh64').lower(), b'abc')
    with pytest.raises(exception.InvalidImage) as e:
        xva_layout.verify_chunk(A, chunk, 'sha1', checksum(b'abd'), b'abc')
    assert str(e.value).startswith('archive.xva:Ref:3/00000005: checksum '
                                   'mismatch')
    with pytest.raises(exception.InvalidImage, match='unreadable'):
        xva_layout.verify_chunk(A, chunk, 'sha1', b'z' * 40, b'abc')


# ---------------------------------------------------------------------------
# crafted archives, in place and streamed
# ---------------------------------------------------------------------------

def open_xva(path, **kw):
    return archive.open_xva(str(path), limits(**kw))


@pytest.mark.parametrize('compress', [None, 'gz'])
def test_keepalive_archive_converts(tmp_path, compress):
    size = 5 * MiB + 4096
    c0, c2, c5 = pattern(1, MiB), pattern(2, MiB), pattern(3, 4096)
    members = chunk_members('Ref:3', {0: c0}, 'xxh64') + \
        chunk_members('Ref:3', {1: b''}, 'xxh64') + \
        chunk_members('Ref:3', {3: c2, 6: c5}, 'xxh64')
    path = write_xva(tmp_path / 'k.xva', ova_xml([('Ref:3', size, 0)]),
                     members, compress)
    src = open_xva(path)
    try:
        assert src.container == 'xva'
        disk, = src.disks
        assert disk.size_hint == size
        assert disk.name == '%s:Ref:3' % path
        layer, = disk.describe()
        assert layer['format'] == 'xva' and layer['subformat'] == 'xxh64'
        assert layer['allocated_bytes'] == 2 * MiB + 4096
        assert layer['virtual_size'] == size
        assert layer['id'] == 'uuid-Ref-3' and layer['parent_id'] is None
        assert (disk.chain is not None) == (compress is None)
        got = read_disk(disk, tmp_path)
    finally:
        src.close()
    want = c0 + bytes(MiB) + c2 + bytes(2 * MiB) + c5
    assert got == want


def test_block_status_and_partial_reads(tmp_path):
    c1, c2 = pattern(1, MiB), pattern(2, MiB)
    # The first and the last chunk are always there (XVA writers store
    # them even when they are zeros).
    z = bytes(MiB)
    path = write_xva(tmp_path / 'a.xva', ova_xml([('Ref:3', 6 * MiB, 0)]),
                     chunk_members('Ref:3', {0: z, 2: c1, 3: c2, 5: z}))
    src = open_xva(path)
    try:
        layer = src.disks[0].chain.layers[0]
        runs = [(e.kind, e.offset, e.length)
                for e in layer.block_status(MiB, 4 * MiB)]
        assert runs == [(ext.UNALLOCATED, MiB, MiB),
                        (ext.DATA, 2 * MiB, 2 * MiB),
                        (ext.UNALLOCATED, 4 * MiB, MiB)]
        assert [(e.kind, e.offset, e.length) for e in
                layer.block_status(2 * MiB + 5, 10)] == [
                    (ext.DATA, 2 * MiB + 5, 10)]
        e = layer.block_status(2 * MiB, 2 * MiB)[0]
        assert layer.read_extent(e, MiB - 3, 6) == c1[-3:] + c2[:3]
        assert layer.read_extent(e, 7, 9) == c1[7:16]
        assert layer.allocated_bytes() == 4 * MiB
    finally:
        src.close()


def corrupt_member(path, name, offset=0):
    """Flip a byte of member ``name`` of the plain tar at ``path``."""
    with tarfile.open(path) as tf:
        where = tf.getmember(name).offset_data + offset
    with open(path, 'r+b') as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize('zero_chunk', [False, True],
                         ids=['data-chunk', 'all-zero-chunk'])
@pytest.mark.parametrize('compress', [None, 'gz'])
def test_checksum_mismatch(tmp_path, compress, zero_chunk):
    data = bytes(MiB) if zero_chunk else pattern(4, MiB)
    members = chunk_members('Ref:3', {0: pattern(5, MiB), 1: data})
    bad = bytearray(members[3][1])
    bad[0] ^= 1 if bad[0] != ord('0') else 2
    members[3] = (members[3][0], bytes(bad))
    path = write_xva(tmp_path / 'c.xva', ova_xml([('Ref:3', 2 * MiB, 0)]),
                     members, compress)
    src = open_xva(path)
    try:
        with pytest.raises(exception.InvalidImage) as e:
            read_disk(src.disks[0], tmp_path)
    finally:
        src.close()
    assert str(e.value).startswith('%s:Ref:3/00000001: checksum mismatch'
                                   % path)
    assert sorted(os.listdir(tmp_path)) == ['c.xva']


def test_checksum_of_keepalive_verified(tmp_path):
    members = chunk_members('Ref:3', {0: b''})
    members[1] = (members[1][0], checksum(b'x'))
    path = write_xva(tmp_path / 'k.xva', ova_xml([('Ref:3', MiB, 0)]),
                     members)
    with pytest.raises(exception.InvalidImage, match='checksum mismatch'):
        open_xva(path)


@pytest.mark.parametrize('compress', [None, 'gz'])
def test_streamed_onto_dirty_target_zeroes_omitted_chunks(tmp_path,
                                                          compress):
    c0, c1, c2 = pattern(5, MiB), pattern(6, MiB), pattern(7, MiB)
    path = write_xva(tmp_path / 'd.xva', ova_xml([('Ref:3', 5 * MiB, 0)]),
                     chunk_members('Ref:3', {0: c0, 2: c1, 4: c2}), compress)
    out = tmp_path / 'dirty.raw'
    out.write_bytes(b'\xff' * 4 * MiB)
    src = open_xva(path)
    try:
        target = raw.RawWriter.open_in_place(str(out))
        assert not target.fresh
        src.disks[0].write_to(target)
        target.close()
    finally:
        src.close()
    assert out.read_bytes() == c0 + bytes(MiB) + c1 + bytes(MiB) + c2


def test_two_vdis_and_other_vdis_skipped(tmp_path):
    a, b = pattern(7, MiB), pattern(8, MiB)
    suspend = {'class': 'VDI', 'id': 'Ref:40', 'snapshot': {
        'uuid': 'susp', 'virtual_size': str(MiB), 'type': 'suspend'}}
    xml = ova_xml([('Ref:5', 2 * MiB, 1), ('Ref:3', MiB, 0)],
                  extra_objects=[suspend])
    members = (chunk_members('Ref:5', {0: bytes(MiB), 1: b}) +
               chunk_members('Ref:40', {0: pattern(9, MiB)}) +
               chunk_members('Ref:3', {0: a}))
    for compress in (None, 'gz'):
        path = write_xva(tmp_path / ('t.xva.%s' % compress), xml, members,
                         compress)
        src = open_xva(path)
        try:
            assert [d.name.rsplit(':', 1)[1] for d in src.disks] == \
                ['3', '5']
            assert read_disk(src.disks[0], tmp_path, 'a.raw') == a
            assert read_disk(src.disks[1], tmp_path, 'b.raw') == \
                bytes(MiB) + b
        finally:
            src.close()
        os.unlink(tmp_path / 'a.raw')
        os.unlink(tmp_path / 'b.raw')


def test_member_limit_follows_ova(tmp_path):
    xml = ova_xml([('Ref:3', 3 * MiB, 0)])
    members = chunk_members('Ref:3', {i: pattern(i, MiB) for i in range(3)})
    path = write_xva(tmp_path / 'm.xva', xml, members)
    # 7 members, more than max_archive_members: the bound comes from what
    # ova.xml declares (one chunk, one keep-alive and their checksums per
    # MiB) ...
    open_xva(path, max_archive_members=3).close()
    # ... and still holds: endless keep-alive chunks are refused.
    members = chunk_members('Ref:3', {i: b'' for i in range(20)})
    path = write_xva(tmp_path / 'm2.xva', xml, members)
    with pytest.raises(exception.InvalidArchive, match='more than 18 '
                       'members'):
        open_xva(path, max_archive_members=3)


def symlink_member():
    ti = tarfile.TarInfo('Ref:3/00000000')
    ti.type = tarfile.SYMTYPE
    ti.linkname = '/etc/passwd'
    return ti


@pytest.mark.parametrize('compress', [None, 'gz'])
@pytest.mark.parametrize('case,problem', [
    ('no-ova', 'the first member is .Ref:3/00000000., not ova.xml'),
    ('ova-late', 'the first member is'),
    ('symlink', 'links are refused'),
    ('no-end', 'end-of-archive marker'),
    ('truncated', 'truncated'),
    ('device', 'not a regular file'),
    ('abs', 'absolute name'),
    ('second-ova', 'not part of an XVA'),
    ('ova-link', 'ova.xml: not a regular file'),
    ('dir-in-pair', 'without its checksum member'),
    ('disk-missing', 'no chunk of disk Ref:5 .userdevice 1.'),
])
def test_archive_refusals(tmp_path, compress, case, problem):
    xml = ova_xml([('Ref:3', 2 * MiB, 0)])
    members = chunk_members('Ref:3', {0: pattern(1, MiB),
                                      1: pattern(2, MiB)})
    ova = xml
    end = True
    if case == 'ova-link':
        ova = None
        link = tarfile.TarInfo('./ova.xml')
        link.type = tarfile.SYMTYPE
        link.linkname = '/etc/passwd'
        members = [(link, b'')] + members
    elif case == 'dir-in-pair':
        d = tarfile.TarInfo('Ref:3')
        d.type = tarfile.DIRTYPE
        members = members[:1] + [(d, b'')] + members[1:]
    elif case == 'disk-missing':
        # a second disk whose directory was left out when packing
        xml = ova_xml([('Ref:3', 2 * MiB, 0), ('Ref:5', MiB, 1)])
        ova = xml
    elif case == 'no-ova':
        ova = None
    elif case == 'ova-late':
        ova = None
        members = members + [('ova.xml', xml)]
    elif case == 'symlink':
        members = [(symlink_member(), b'')]
    elif case == 'no-end':
        end = False
    elif case == 'device':
        ti = tarfile.TarInfo('Ref:3/00000000')
        ti.type = tarfile.CHRTYPE
        members = [(ti, b'')]
    elif case == 'abs':
        members = [('/Ref:3/00000000', b'x')]
    elif case == 'second-ova':
        members = members + [('./ova.xml', xml)]
    path = write_xva(tmp_path / 'r.xva', ova, members, compress, end=end)
    if case == 'truncated':
        data = path.read_bytes()
        if compress:
            data = gzip.decompress(data)[:MiB + 6000]
            data = gzip.compress(data)
            path.write_bytes(data[:-20])
        else:
            path.write_bytes(data[:MiB + 6000])
    with pytest.raises(exception.Any2KvmError) as e:
        src = open_xva(path)
        try:
            for disk in src.disks:
                disk.describe()
                read_disk(disk, tmp_path)
        finally:
            src.close()
    msg = str(e.value)
    assert msg.startswith(str(path)) and '\n' not in msg, msg
    assert re.search(problem, msg), msg
    assert sorted(os.listdir(tmp_path)) == ['r.xva']


@pytest.mark.parametrize('compress', [None, 'gz'])
def test_pax_headers_and_directories(tmp_path, compress):
    c = pattern(3, MiB)
    d = tarfile.TarInfo('./Ref:3/')
    d.type = tarfile.DIRTYPE
    path = write_xva(tmp_path / 'p.xva', ova_xml([('Ref:3', MiB, 0)]),
                     [(d, b'')] + chunk_members('Ref:3', {0: c}), compress,
                     pax=True)
    if not compress:
        with fileio.FileView.open_path(str(path)) as view:
            assert view.pread(512, 0)[156:157] == b'x'    # a pax header
            assert archive.looks_like_xva(view)
    else:
        assert archive.compressed_looks_like_xva(str(path))
    src = open_xva(path)
    try:
        assert read_disk(src.disks[0], tmp_path) == c
    finally:
        src.close()


def test_detection(tmp_path):
    xml = ova_xml([('Ref:3', MiB, 0)])
    members = chunk_members('Ref:3', {0: pattern(1, MiB)})
    plain = write_xva(tmp_path / 'p.xva', xml, members)
    gz = write_xva(tmp_path / 'p.xva.gz', xml, members, 'gz')
    other = write_xva(tmp_path / 'o.tgz', None, [('0.vhd', b'x' * 600)],
                      'gz')
    with fileio.FileView.open_path(str(plain)) as view:
        assert archive.looks_like_xva(view) and not archive.is_zstd(view)
    with fileio.FileView.open_path(str(other)) as view:
        assert not archive.looks_like_xva(view)
    assert archive.compressed_looks_like_xva(str(gz))
    assert not archive.compressed_looks_like_xva(str(other))


def zstd_file(tmp_path, zstandard):
    xml = ova_xml([('Ref:3', MiB, 0)])
    c = pattern(1, MiB)
    plain = write_xva(tmp_path / 'z.tar', xml,
                      chunk_members('Ref:3', {0: c}, 'xxh64'))
    path = tmp_path / 'z.xva'
    path.write_bytes(zstandard.ZstdCompressor().compress(
        plain.read_bytes()))
    os.unlink(plain)
    return path, c


def test_zstd_refused_without_module(tmp_path, monkeypatch):
    path = tmp_path / 'z.xva'
    # zstd frame magic, then anything: refused before it is decompressed.
    path.write_bytes(b'\x28\xb5\x2f\xfd' + bytes(100))
    monkeypatch.setitem(sys.modules, 'zstandard', None)
    with fileio.FileView.open_path(str(path)) as view:
        assert archive.is_zstd(view)
    with pytest.raises(exception.UnsupportedImage) as e:
        open_xva(path)
    assert str(e.value).startswith(str(path))
    assert 'zstandard' in str(e.value)


def test_zstd_with_module(tmp_path):
    zstandard = pytest.importorskip('zstandard')
    path, c = zstd_file(tmp_path, zstandard)
    assert archive.compressed_looks_like_xva(str(path))
    src = open_xva(path)
    try:
        assert read_disk(src.disks[0], tmp_path) == c
    finally:
        src.close()


def test_vdis_without_a_vm():
    """xva-img style: VDIs and no VM object; every VDI is a disk, in
    ova.xml order, the VM facts are empty and a note says so."""
    from tests.lib import xvabuild
    xml = xvabuild.vdi_only_xml([('Ref:7', 2 * MiB), ('Ref:3', MiB)])
    md = metadata.parse_metadata(A, xml)
    assert [d.ref for d in md.disks] == ['Ref:7', 'Ref:3']
    assert [d.virtual_size for d in md.disks] == [2 * MiB, MiB]
    assert md.vm == {}
    assert len(md.notes) == 1 and 'no VM' in md.notes[0]


@pytest.mark.parametrize('last', [True, False], ids=['whole', 'cut'])
def test_cli_warnings_only_on_success(tmp_path, capsys, monkeypatch, last):
    """A VDI-only XVA warns that the VM facts are unknown; when it is then
    refused (its last chunk missing), the error line is printed alone."""
    import logging
    from any2kvm_os.cmd import any2kvm
    # Only the command's own handler: not one an earlier test left behind.
    monkeypatch.setattr(logging.getLogger(), 'handlers', [])
    from tests.lib import xvabuild
    xml = xvabuild.vdi_only_xml([('Ref:3', 2 * MiB)])
    chunks = {0: pattern(1, MiB)}
    if last:
        chunks[1] = pattern(2, MiB)
    path = write_xva(tmp_path / 'v.xva', xml, chunk_members('Ref:3', chunks))
    out = tmp_path / 'out'
    out.mkdir()
    rc = any2kvm.main(['convert', str(path), str(out / 'disk.raw')])
    lines = [ln for ln in capsys.readouterr().err.splitlines()
             if ln.startswith('any2kvm')]
    if last:
        assert rc == 0
        assert len(lines) == 1 and 'no VM' in lines[0], lines
        assert lines[0].startswith('any2kvm: WARNING: ')
    else:
        assert rc == 1
        assert len(lines) == 1 and 'lacks its last chunk' in lines[0], lines
        assert lines[0].startswith('any2kvm: error: ')
