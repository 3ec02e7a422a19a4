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

import io
import os
import tarfile

import pytest

from any2kvm_os.chain import layer_chain
from any2kvm_os.cmd import any2kvm
from any2kvm_os import containers  # noqa: F401
from any2kvm_os.containers import base
from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os.formats import vhd
from any2kvm_os import limits as a2k_limits
from tests.lib.fakelayer import FakeLayer
from tests.lib import vhdbuild
from tests.lib.vhdbuild import expected_raw
from tests.lib.vhdbuild import write_chain

MiB = 1 << 20


def owner_map(chain):
    """{offset: layer index or 'Z'/'U'} per 1-byte unit, from fold()."""
    out = {}
    for e in chain.fold(0, chain.virtual_size):
        for x in range(e.offset, e.end):
            out[x] = e.layer if e.kind == ext.DATA else e.kind[0].upper()
    return out


def test_fold_child_hides_parent():
    base_ = FakeLayer(8, [(0, ext.DATA, 8)], 'b')
    child = FakeLayer(8, [(2, ext.DATA, 2), (5, ext.ZERO, 2)], 'c', 'b')
    chain = layer_chain.LayerChain([child, base_], ['c', 'b'])
    m = owner_map(chain)
    assert [m[i] for i in range(8)] == [1, 1, 0, 0, 1, 'Z', 'Z', 1]


def test_fold_grown_child_sees_zeros_beyond_parent():
    base_ = FakeLayer(4, [(0, ext.DATA, 4)], 'b')
    child = FakeLayer(10, [(8, ext.DATA, 1)], 'c', 'b')
    chain = layer_chain.LayerChain([child, base_], ['c', 'b'])
    m = owner_map(chain)
    assert chain.virtual_size == 10
    assert [m[i] for i in range(10)] == [1, 1, 1, 1, 'Z', 'Z', 'Z', 'Z', 0,
                                         'Z']


def test_fold_shrunk_middle_hides_base_tail():
    base_ = FakeLayer(10, [(0, ext.DATA, 10)], 'b')
    mid = FakeLayer(5, [], 'm', 'b')
    leaf = FakeLayer(10, [(9, ext.DATA, 1)], 'l', 'm')
    chain = layer_chain.LayerChain([leaf, mid, base_], ['l', 'm', 'b'])
    m = owner_map(chain)
    assert [m[i] for i in range(10)] == [2] * 5 + ['Z'] * 4 + [0]


def test_fold_unallocated_through_base():
    base_ = FakeLayer(4, [(0, ext.DATA, 1)], 'b')
    chain = layer_chain.LayerChain([base_], ['b'])
    assert [owner_map(chain)[i] for i in range(4)] == [0, 'U', 'U', 'U']


def test_fold_partial_chain_from_top():
    base_ = FakeLayer(4, [(0, ext.DATA, 4)], 'b')
    child = FakeLayer(4, [(1, ext.DATA, 1)], 'c', 'b')
    chain = layer_chain.LayerChain([child, base_], ['c', 'b'])
    got = chain.fold(0, 4, top=1)
    assert [(e.kind, e.layer) for e in got] == [(ext.DATA, 1)]


# -- resolution over real files -----------------------------------------------

def limits(**kw):
    return a2k_limits.Limits(**kw)


def test_resolve_by_id_ignores_names(tmp_path):
    # Parent names inside point at files that do not exist here.
    paths = write_chain(tmp_path, 3, names=['a.vhd', 'b.vhd', 'c.vhd'])
    os.rename(paths[1], tmp_path / 'renamed.vhd')
    (tmp_path / 'junk.txt').write_text('not a disk')
    c = base.DirectoryContainer(str(paths[0]), limits())
    chain = layer_chain.resolve(c, c.leaf_name, limits())
    assert chain.member_names == ['c.vhd', 'renamed.vhd', 'a.vhd']
    c.close()


def test_missing_parent(tmp_path):
    paths = write_chain(tmp_path, 2)
    os.unlink(paths[1])
    c = base.DirectoryContainer(str(paths[0]), limits())
    with pytest.raises(exception.ChainError, match='missing parent'):
        layer_chain.resolve(c, c.leaf_name, limits())


def test_parent_id_mismatch(tmp_path):
    paths = write_chain(tmp_path, 2)
    other, _ = vhdbuild.build(4 * MiB)
    paths[1].write_bytes(other)  # same name, another id
    c = base.DirectoryContainer(str(paths[0]), limits())
    with pytest.raises(exception.ChainError, match='mismatch'):
        layer_chain.resolve(c, c.leaf_name, limits())


def test_cycle(tmp_path):
    a_id, b_id = b'\xaa' * 16, b'\xbb' * 16
    a, _ = vhdbuild.build(4 * MiB, uid=a_id, parent_uid=b_id,
                          disk_type=vhd.DISK_DIFFERENCING)
    b, _ = vhdbuild.build(4 * MiB, uid=b_id, parent_uid=a_id,
                          disk_type=vhd.DISK_DIFFERENCING)
    (tmp_path / 'a.vhd').write_bytes(a)
    (tmp_path / 'b.vhd').write_bytes(b)
    c = base.DirectoryContainer(str(tmp_path / 'a.vhd'), limits())
    with pytest.raises(exception.ChainError, match='cycle'):
        layer_chain.resolve(c, c.leaf_name, limits())


def test_depth_limit(tmp_path):
    paths = write_chain(tmp_path, 5)
    c = base.DirectoryContainer(str(paths[0]), limits())
    with pytest.raises(exception.ChainError) as e:
        layer_chain.resolve(c, c.leaf_name, limits(max_chain_depth=3))
    # Named by the file given (the layer where the count ran out is not
    # broken), with the option that sets the bound.
    assert str(e.value) == (
        '%s: its chain has more than 3 layers (%s has a parent still): '
        'refused ([any2kvm] max_chain_depth)' % (
            c.display_name(c.leaf_name), c.display_name(paths[2].name)))
    layer_chain.resolve(c, c.leaf_name, limits(max_chain_depth=5))


def test_symlinked_parent_is_not_followed(tmp_path):
    paths = write_chain(tmp_path, 2)
    outside = tmp_path / 'outside'
    outside.mkdir()
    os.rename(paths[1], outside / 'l0.vhd')
    os.symlink(outside / 'l0.vhd', paths[1])
    c = base.DirectoryContainer(str(paths[0]), limits())
    with pytest.raises(exception.ChainError, match='missing parent'):
        layer_chain.resolve(c, c.leaf_name, limits())


# -- end to end through the CLI -----------------------------------------------

def run_cli(*args):
    return any2kvm.main(list(args))


@pytest.mark.parametrize('grow', [False, True])
def test_convert_chain_and_xenserver_archives(tmp_path, grow):
    paths = write_chain(tmp_path, 3, grow=grow)
    want = expected_raw(tmp_path, paths)
    out = tmp_path / 'out.raw'
    assert run_cli('convert', str(paths[0]), str(out)) == 0
    assert out.read_bytes() == want
    for mode, order in (('w:gz', [0, 1, 2]), ('w:gz', [2, 1, 0]),
                        ('w:gz', [1, 2, 0]), ('w', [1, 0, 2])):
        arch = tmp_path / ('x-%s-%s.tar' % (mode[-2:], order))
        with tarfile.open(arch, mode) as tf:
            for i in order:
                tf.add(paths[i], arcname='./%d.vhd' % i)
        o = tmp_path / ('o-%s' % arch.name)
        assert run_cli('convert', str(arch), str(o)) == 0, arch
        assert o.read_bytes() == want, arch


def make_tar(path, members, mode='w:gz'):
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            if isinstance(data, tarfile.TarInfo):
                data.name = name
                tf.addfile(data)
                continue
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def tar_cases(tmp_path):
    paths = write_chain(tmp_path, 2)
    leaf, base_ = paths[0].read_bytes(), paths[1].read_bytes()
    base_id = vhd.parse_footer(base_[-512:], 'b').unique_id
    other, _ = vhdbuild.build(4 * MiB)
    sibling, _ = vhdbuild.build(4 * MiB, disk_type=vhd.DISK_DIFFERENCING,
                                parent_uid=base_id)
    a_id, b_id = b'A' * 16, b'B' * 16
    loop_a, _ = vhdbuild.build(4 * MiB, disk_type=vhd.DISK_DIFFERENCING,
                               uid=a_id, parent_uid=b_id)
    loop_b, _ = vhdbuild.build(4 * MiB, disk_type=vhd.DISK_DIFFERENCING,
                               uid=b_id, parent_uid=a_id)
    sym = tarfile.TarInfo()
    sym.type = tarfile.SYMTYPE
    sym.linkname = '/etc/passwd'
    dev = tarfile.TarInfo()
    dev.type = tarfile.CHRTYPE
    return {
        'symlink': ([('0.vhd', leaf), ('1.vhd', sym)], 'links'),
        'dotdot': ([('0.vhd', leaf), ('../1.vhd', base_)], r'\.\.'),
        'absolute': ([('0.vhd', leaf), ('/1.vhd', base_)], 'absolute'),
        'duplicate': ([('0.vhd', leaf), ('1.vhd', base_),
                       ('./1.vhd', base_)], 'duplicate'),
        'device': ([('0.vhd', leaf), ('1.vhd', dev)], 'regular'),
        'no-leaf': ([('1.vhd', leaf), ('2.vhd', base_)], 'no 0.vhd'),
        'gap': ([('0.vhd', leaf), ('2.vhd', base_)], '1.vhd is missing'),
        'stranger': ([('0.vhd', leaf), ('1.vhd', base_),
                      ('notes.txt', b'x')], 'unexpected member'),
        'missing-parent': ([('0.vhd', leaf)], 'missing parent'),
        'two-bases': ([('0.vhd', leaf), ('1.vhd', base_),
                       ('2.vhd', other)], 'all base disks'),
        'same-id': ([('0.vhd', leaf), ('1.vhd', base_), ('2.vhd', base_)],
                    'same unique id'),
        'branch': ([('0.vhd', leaf), ('1.vhd', sibling), ('2.vhd', base_)],
                   'branch'),
        'cycle': ([('0.vhd', loop_a), ('1.vhd', loop_b)], 'cycle'),
    }


@pytest.mark.parametrize('mode', ['w:gz', 'w'])
@pytest.mark.parametrize('case', ['symlink', 'dotdot', 'absolute',
                                  'duplicate', 'device', 'no-leaf', 'gap',
                                  'stranger', 'missing-parent', 'two-bases',
                                  'same-id', 'branch', 'cycle'])
def test_archive_refusals(tmp_path, capsys, case, mode):
    members, match = tar_cases(tmp_path)[case]
    arch = tmp_path / 'bad.tgz'
    make_tar(arch, members, mode)
    out = tmp_path / 'outdir'
    out.mkdir()
    rc = run_cli('convert', str(arch), str(out / 'disk.raw'))
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count('\n') == 1 and err.startswith('any2kvm: error: ')
    assert str(arch) in err
    import re
    assert re.search(match, err), err
    assert list(out.iterdir()) == []


def test_member_count_bound(tmp_path, capsys):
    arch = tmp_path / 'many.tar'
    make_tar(arch, [('%d.vhd' % i, b'') for i in range(20)], 'w')
    cfg = tmp_path / 'a.conf'
    cfg.write_text('[any2kvm]\nmax_archive_members = 5\n')
    rc = run_cli('--config-file', str(cfg), 'convert', str(arch),
                 str(tmp_path / 'o.raw'))
    assert rc == 1
    assert 'more than 5 members' in capsys.readouterr().err


@pytest.mark.parametrize('mode', ['w:gz', 'w'])
@pytest.mark.parametrize('order', [[0, 1, 2], [2, 1, 0], [1, 0, 2]])
def test_reverse_named_archive(tmp_path, caplog, mode, order):
    """0.vhd the base and 2.vhd the leaf: the parent ids win over the
    names, whatever order the members come in; a warning names the order
    found."""
    paths = write_chain(tmp_path, 3)
    want = expected_raw(tmp_path, paths)
    arch = tmp_path / 'rev.tar'
    with tarfile.open(arch, mode) as tf:
        for i in order:
            # paths[0] is the leaf: it becomes 2.vhd.
            tf.add(paths[2 - i], arcname='%d.vhd' % i)
    out = tmp_path / 'out.raw'
    assert run_cli('convert', str(arch), str(out)) == 0
    assert out.read_bytes() == want
    assert 'leaf to base: 2.vhd, 1.vhd, 0.vhd' in caplog.text


@pytest.mark.parametrize('spare', [0, -1], ids=['fits', 'one-byte-short'])
def test_reverse_named_stream_waits_in_bounded_scratch(tmp_path, spare):
    """A tgz read in one pass, leaf first and reverse-named: 2.vhd (the
    leaf) and 1.vhd arrive before their parent and wait in scratch, which
    ``scratch_limit`` bounds; the copies are gone afterwards, or the
    conversion is refused in one line when they do not fit."""
    from any2kvm_os.containers import registry
    from any2kvm_os.writers import raw
    paths = write_chain(tmp_path, 3)
    want = expected_raw(tmp_path, paths)
    arch = tmp_path / 'rev.tgz'
    with tarfile.open(arch, 'w:gz') as tf:
        for i in [2, 1, 0]:
            tf.add(paths[2 - i], arcname='%d.vhd' % i)
    waiting = os.path.getsize(paths[0]) + os.path.getsize(paths[1])
    space = tmp_path / 'scratch'
    space.mkdir()
    limits = a2k_limits.Limits(scratch_dir=str(space),
                               scratch_limit=waiting + spare)
    source = registry.open_path(str(arch), limits)
    out = tmp_path / 'out.raw'
    try:
        if spare >= 0:
            raw.write_file(source.disks[0], str(out))
            assert out.read_bytes() == want
        else:
            with pytest.raises(exception.Any2KvmError) as e:
                raw.write_file(source.disks[0], str(out))
            assert 'scratch limit' in str(e.value)
            assert '\n' not in str(e.value)
            assert not out.exists()
    finally:
        source.close()
    assert list(space.iterdir()) == []


def test_local_files_are_read_ahead(tmp_path, monkeypatch):
    # FileView.will_read asks the kernel to read ahead (WILLNEED), close
    # spans as one, clipped to the window.
    from any2kvm_os import fileio
    calls = []
    monkeypatch.setattr(os, 'posix_fadvise',
                        lambda fd, off, n, advice: calls.append(
                            (off, n, advice)), raising=False)
    p = tmp_path / 'f'
    p.write_bytes(bytes(1 << 20))
    fd = os.open(str(p), os.O_RDONLY)
    try:
        view = fileio.FileView(fd, 'f', base=4096, size=512 << 10)
        view.will_read([(0, 1000), (1512, 500), (200 << 10, 8192),
                        (500 << 10, 100 << 10), (600 << 10, 10)])
    finally:
        os.close(fd)
    need = os.POSIX_FADV_WILLNEED
    assert calls == [(4096, 2012, need), (4096 + (200 << 10), 8192, need),
                     (4096 + (500 << 10), 12 << 10, need)]
