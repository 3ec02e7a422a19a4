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


"""The VHD files of a file SR, as XenServer's storage manager keeps them.

Only the standard library and FATtools are used (never ``any2kvm_os``).

What XenServer does, and what is mirrored here (xapi-project/sm,
``FileSR.FileVDI._snapshot`` and ``vhdutil``; blktap ``vhd-util``):

* a VDI of a file SR is the file ``<sr-mount>/<vdi-uuid>.vhd``;
* the VHD's own unique id (footer) is NOT the VDI uuid: ``vhd-util create``
  and ``vhd-util snapshot`` give every file a fresh one, and a child names
  its parent by that unique id (header) and by parent locators;
* ``vhd-util snapshot`` writes three locators, all relative to the child's
  directory: ``MacX`` ``file://./<parent>.vhd`` (UTF-8) and ``W2ku`` /
  ``W2ru`` ``.\\<parent>.vhd`` (UTF-16-LE); the header's parent unicode
  name is ``<parent>.vhd`` (UTF-16-BE) -- as read from the corpus'
  ``generated/vhdutil-chain`` files written by vhd-util;
* snapshotting VDI ``V``: ``V.vhd`` is renamed to a new ``<N>.vhd`` (the
  old content, a new node), a new empty differencing leaf is created at
  ``V.vhd`` over it, the snapshot VDI ``S.vhd`` is a second empty child of
  ``N``, and ``N`` is marked hidden (footer byte 0x55, ``vhd-util set -f
  hidden -v 1``).

FATtools writes the files (``mk_dynamic``, ``mk_diff``, ``Image.write``);
this module then rewrites what FATtools writes differently from vhd-util
(locators, parent name, creator fields, hidden flag), fixing checksums.
FATtools itself only follows ``W2ku``/``W2ru`` locators as paths relative
to the process' working directory, so :func:`open_image` opens a chain from
a scratch directory of symlinks named exactly like the locators
(``.\\<uuid>.vhd``).
"""

import contextlib
import io
import os
import shutil
import struct
import tempfile
import uuid as uuidlib

try:
    from . import state as st
except ImportError:         # run as a sibling of the xe script
    import state as st

SECTOR = 512
FOOTER_CHECKSUM = 0x40
HEADER_CHECKSUM = 0x24
HEADER_SIZE = 1024
LOCATOR_TABLE = 0x240
LOCATOR = struct.Struct('>4sIIIQ')
HIDDEN_OFFSET = 0x55          # libvhd: footer "hidden" byte after saved_state
# vhd-util writes creator "tap" 0x00010003 and host b'\0\0\0\0'; FATtools
# refuses to open a footer whose host is not "Wi2k" or "Mac", so the host
# stays FATtools' "Wi2k" (the one field that differs from vhd-util's files).
TAP_CREATOR = (b'tap\0', 0x00010003)


def _vhdutils():
    from FATtools import vhdutils
    return vhdutils


def _checksum(buf, at):
    b = bytearray(buf)
    b[at:at + 4] = b'\0\0\0\0'
    return (~sum(b)) & 0xFFFFFFFF


def _footer_offsets(f):
    f.seek(0, 2)
    size = f.tell()
    offs = [size - SECTOR]
    f.seek(0)
    if f.read(8) == b'conectix':
        offs.insert(0, 0)
    return offs


#: What blktap writes over a VHD's end footer when a tapdisk opens it for
#: writing (block-vhd.c ``vhd_kill_footer``: 0xc7 bytes).
KILLED = b'\xc7' * SECTOR


def footer_state(path):
    """How the end of the dynamic VHD ``path`` is: ``'footer'``,
    ``'killed'`` (:data:`KILLED`) or ``'grown'`` (a block written where
    the footer was); None for a file that is no dynamic VHD."""
    with open(str(path), 'rb') as f:
        if f.read(8) != b'conectix':
            return None
        f.seek(-SECTOR, 2)
        tail = f.read(SECTOR)
    if tail[:8] == b'conectix':
        return 'footer'
    return 'killed' if tail == KILLED else 'grown'


def close_tapdisk(path):
    """What a tapdisk's close does to the VHD it held open for writing
    (block-vhd.c ``_vhd_close``: the footer written at the end of the
    data): the footer copy at offset 0 written back at the end.  Returns
    the state it was in (:func:`footer_state`).  Only a file SR's
    ``.vhd`` (an LV's VHD has its own end: :mod:`.lvm`)."""
    if not str(path).endswith('.vhd'):
        return None
    state = footer_state(path)
    if state in ('killed', 'grown'):
        with open(str(path), 'r+b') as f:
            head = f.read(SECTOR)
            f.seek(-SECTOR if state == 'killed' else 0, 2)
            f.write(head)
    return state


def open_tapdisk(path, grown=False):
    """What a tapdisk's open for writing does to a VHD (block-vhd.c
    ``_vhd_open`` with TD_OPEN_STRICT: ``vhd_kill_footer``), and, with
    ``grown``, what its first new block then does (``allocate_block``
    writes it at ``next_db``, where the footer was: the file ends with
    the block's data, no footer after it, until the close)."""
    if footer_state(path) != 'footer':
        return
    if grown:
        with open(str(path), 'r+b') as f:
            f.seek(0, 2)
            f.truncate(f.tell() - SECTOR)
        return
    with open(str(path), 'r+b') as f:
        f.seek(-SECTOR, 2)
        f.write(KILLED)


def _file_vhds(root, state):
    for sr_uuid, sr in state.get('sr', {}).items():
        if sr.get('type') not in st.FILE_SR_TYPES:
            continue
        directory = st.mount_dir(str(root), sr_uuid)
        if os.path.isdir(directory):
            for name in sorted(os.listdir(directory)):
                if name.endswith('.vhd'):
                    yield os.path.join(directory, name)


def live_leaves(root, state):
    """The VHD files of a file SR that a tapdisk holds open for writing:
    the VDIs a running (or paused) guest has attached read-write."""
    out = set()
    for vbd in state.get('vbd', {}).values():
        vdi = state.get('vdi', {}).get(vbd.get('vdi') or '')
        vm = state.get('vm', {}).get(vbd.get('vm') or '', {})
        if (vdi is None or vm.get('is-control-domain') or
                vbd.get('mode', 'RW') != 'RW' or
                not st.vbd_attached(state, vbd)):
            continue
        sr = state.get('sr', {}).get(vdi.get('sr'), {})
        if sr.get('type') in st.FILE_SR_TYPES:
            path = os.path.join(st.mount_dir(str(root), vdi['sr']),
                                vbd['vdi'] + '.vhd')
            if os.path.exists(path):
                out.add(path)
    return out


@contextlib.contextmanager
def tapdisks_paused(root, state_of):
    """Around one operation of the host (an ``xe`` command, a guest's
    write): every file SR's VHD closed by its tapdisk before
    (:func:`close_tapdisk`: the host's own tools see whole VHDs, as SM's
    see them with tapdisk paused), and then the leaves of the running
    guests open for writing again (:func:`open_tapdisk`), as the
    operation left the state (``state_of()``).  A leaf the operation
    grew ends with its new block."""
    sizes = {}
    for path in _file_vhds(root, state_of()):
        close_tapdisk(path)
        sizes[path] = os.path.getsize(path)
    try:
        yield
    finally:
        for path in sorted(live_leaves(root, state_of())):
            open_tapdisk(path, grown=os.path.getsize(path) > sizes.get(
                path, os.path.getsize(path)))


def read_tail(f):
    """(file size, footer, data offset, dynamic header) of the VHD in open
    file ``f``, its footer read from the end (from offset 0 when none
    ends it: a tapdisk holds it open, :func:`open_tapdisk`, as libvhd
    reads it then)."""
    f.seek(0, 2)
    size = f.tell()
    f.seek(size - SECTOR)
    footer = f.read(SECTOR)
    if footer[:8] != b'conectix':
        f.seek(0)
        head = f.read(SECTOR)
        if head[:8] == b'conectix':
            footer = head
    data_offset = struct.unpack_from('>Q', footer, 0x10)[0]
    f.seek(data_offset)
    return size, footer, data_offset, f.read(HEADER_SIZE)


def _patch_footers(path, fn):
    close_tapdisk(path)
    with open(path, 'r+b') as f:
        for off in _footer_offsets(f):
            f.seek(off)
            buf = bytearray(f.read(SECTOR))
            fn(buf)
            struct.pack_into('>I', buf, FOOTER_CHECKSUM,
                             _checksum(buf, FOOTER_CHECKSUM))
            f.seek(off)
            f.write(buf)


def meta(path):
    """Footer and header facts of one VHD file (no parent is opened)."""
    with open(path, 'rb') as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(size - SECTOR)
        ft = f.read(SECTOR)
        if ft[:8] != b'conectix':
            # A tapdisk holds it open (open_tapdisk): libvhd reads the
            # copy at offset 0 then.
            f.seek(0)
            ft = f.read(SECTOR)
        out = {
            'file_size': size,
            'uuid': str(uuidlib.UUID(bytes=ft[0x44:0x54])),
            'disk_type': struct.unpack_from('>I', ft, 0x3C)[0],
            'virtual_size': struct.unpack_from('>Q', ft, 0x30)[0],
            'hidden': ft[HIDDEN_OFFSET],
            'creator': ft[0x1C:0x20],
            'parent_uuid': None, 'parent_name': None, 'locators': [],
        }
        if out['disk_type'] == 4:
            data_offset = struct.unpack_from('>Q', ft, 0x10)[0]
            f.seek(data_offset)
            hd = f.read(HEADER_SIZE)
            out['parent_uuid'] = str(uuidlib.UUID(bytes=hd[0x28:0x38]))
            out['parent_name'] = hd[0x40:0x240].decode(
                'utf-16-be').split('\0')[0]
            for i in range(8):
                code, space, length, _r, off = LOCATOR.unpack_from(
                    hd, LOCATOR_TABLE + i * LOCATOR.size)
                if code == b'\0\0\0\0':
                    continue
                f.seek(off)
                raw = f.read(length)
                text = (raw.decode('utf-8') if code == b'MacX'
                        else raw.decode('utf-16-le'))
                out['locators'].append((code.decode('ascii'), text))
    return out


def _tapify(path):
    """Creator application and version as vhd-util writes them."""
    def fn(buf):
        buf[0x1C:0x20] = TAP_CREATOR[0]
        struct.pack_into('>I', buf, 0x20, TAP_CREATOR[1])
    _patch_footers(path, fn)


def set_hidden(path, hidden=True):
    """``vhd-util set -n PATH -f hidden -v 1`` (sm's vhdutil.setHidden)."""
    def fn(buf):
        buf[HIDDEN_OFFSET] = 1 if hidden else 0
    _patch_footers(path, fn)


def create_base(path, size, block=2 << 20):
    """An empty dynamic VHD (``vhd-util create``), written by FATtools."""
    _vhdutils().mk_dynamic(str(path), size, block=block)
    _tapify(path)
    return meta(path)['uuid']


def relink(child, parent_name, parent_uuid, parent_timestamp=None):
    """Point differencing VHD ``child`` at ``parent_name`` (a file name in
    the same directory, or any path for crafted cases) the way vhd-util
    does: parent unique id, parent unicode name, and the three relative
    locators MacX, W2ku, W2ru.  The child must have no data blocks yet
    when it needs a third locator sector (see :func:`create_child`)."""
    child = str(child)
    macx = ('file://./%s' % parent_name).encode('utf-8')
    win = ('.\\%s' % parent_name).encode('utf-16-le')
    with open(child, 'r+b') as f:
        fsize, footer, data_offset, hd = read_tail(f)
        hd = bytearray(hd)
        slots = []
        for i in range(8):
            code, space, length, _r, off = LOCATOR.unpack_from(
                hd, LOCATOR_TABLE + i * LOCATOR.size)
            if code != b'\0\0\0\0':
                slots.append((off, space))
        if len(slots) < 3:
            # FATtools reserves two locator sectors; vhd-util has three.
            # A fresh child holds no block yet: the footer moves one
            # sector on to make room for the third.
            extra = fsize - SECTOR
            f.seek(extra)
            f.write(bytes(SECTOR) + footer)
            slots.append((extra, SECTOR))
        payloads = [(b'MacX', macx), (b'W2ku', win), (b'W2ru', win)]
        for i in range(8):
            LOCATOR.pack_into(hd, LOCATOR_TABLE + i * LOCATOR.size,
                              b'\0\0\0\0', 0, 0, 0, 0)
        for i, ((code, payload), (off, space)) in enumerate(
                zip(payloads, slots)):
            if len(payload) > space:
                raise ValueError('locator too long: %r' % payload)
            f.seek(off)
            f.write(payload + bytes(space - len(payload)))
            LOCATOR.pack_into(hd, LOCATOR_TABLE + i * LOCATOR.size,
                              code, space, len(payload), 0, off)
        name = parent_name.encode('utf-16-be')[:510]
        hd[0x40:0x240] = name + bytes(512 - len(name))
        hd[0x28:0x38] = uuidlib.UUID(parent_uuid).bytes
        if parent_timestamp is not None:
            struct.pack_into('>I', hd, 0x38, parent_timestamp)
        struct.pack_into('>I', hd, HEADER_CHECKSUM,
                         _checksum(hd, HEADER_CHECKSUM))
        f.seek(data_offset)
        f.write(hd)


@contextlib.contextmanager
def _resolver(directory):
    """Run FATtools with a working directory in which every ``.\\X.vhd``
    locator of ``directory`` resolves (symlinks named like the locator)."""
    old = os.getcwd()
    scratch = tempfile.mkdtemp(prefix='xe-standin-')
    # FATtools prints its BAT layout warnings on stdout (an LV's blocks
    # lie before zeros and the footer at its end, not where FATtools
    # expects them): never into xe's output
    quiet = contextlib.redirect_stdout(io.StringIO())
    quiet.__enter__()
    try:
        for name in os.listdir(directory):
            # file SRs' <uuid>.vhd; LVM SRs' VHD-<uuid> LVs (lvm.py)
            if name.endswith('.vhd') or name.startswith('VHD-'):
                os.symlink(os.path.join(directory, name),
                           os.path.join(scratch, '.\\' + name))
        os.chdir(scratch)
        yield
    finally:
        quiet.__exit__(None, None, None)
        os.chdir(old)
        shutil.rmtree(scratch, ignore_errors=True)


class _ZeroPastEnd(object):
    """A parent seen by a larger child: zeros past the parent's own size.

    A VHD grown by ``vhd-util resize`` is larger than its parent; what lies
    past the parent's virtual size reads as zeros.  FATtools refuses to
    seek a parent past its end, so the child's parent is wrapped in this
    small adapter (FATtools still does all the block and bitmap work)."""

    def __init__(self, image):
        self.image = image
        self.name = image.name
        self.size = image.size
        self.Parent = image.Parent
        self._pos = 0

    def seek(self, offset, whence=0):
        self._pos = offset

    def read(self, size=-1):
        pos = self._pos
        inside = max(0, min(size, self.size - pos))
        data = bytearray()
        if inside:
            self.image.seek(pos)
            data += self.image.read(inside)
        data += bytes(size - inside)
        self._pos = pos + size
        return data

    def has_block(self, i):
        if i >= self.image.bat.size:
            return False
        return self.image.has_block(i)

    def close(self):
        self.image.close()


def _wrap_parents(img):
    while img.Parent is not None:
        parent = img.Parent
        inner = parent.image if isinstance(parent, _ZeroPastEnd) else parent
        if inner.size < img.size:
            img.Parent = _ZeroPastEnd(inner)
        img = inner


@contextlib.contextmanager
def open_image(path, mode='rb'):
    """A FATtools ``Image`` of ``path`` with its chain resolved."""
    path = os.path.abspath(str(path))
    close_tapdisk(path)
    with _resolver(os.path.dirname(path)):
        img = _vhdutils().Image(path, mode)
        _wrap_parents(img)
        try:
            yield img
        finally:
            img.close()


def create_child(path, parent_path):
    """An empty differencing VHD over ``parent_path`` (same directory), as
    ``vhd-util snapshot -n PATH -p PARENT`` makes it."""
    path = os.path.abspath(str(path))
    parent_path = os.path.abspath(str(parent_path))
    with _resolver(os.path.dirname(parent_path)):
        _vhdutils().mk_diff(path, parent_path)
    _tapify(path)
    pm = meta(parent_path)
    with open(parent_path, 'rb') as f:
        f.seek(-SECTOR + 0x18, 2)
        ts = struct.unpack('>I', f.read(4))[0]
    relink(path, os.path.basename(parent_path), pm['uuid'], ts)
    return meta(path)['uuid']


#: sm's vhdutil.MAX_CHAIN_SIZE: the deepest chain SM snapshots.
MAX_CHAIN_SIZE = 30


def bat_empty(path):
    """True when ``path`` is a differencing VHD with no block allocated:
    vhd-util's empty check (``vhd_util_find_snapshot_target``)."""
    if meta(path)['disk_type'] != 4:
        return False
    with open(str(path), 'rb') as f:
        _size, _footer, _data_offset, hd = read_tail(f)
        table = struct.unpack_from('>Q', hd, 0x10)[0]
        entries = struct.unpack_from('>I', hd, 0x1C)[0]
        f.seek(table)
        bat = f.read(4 * entries)
    return bat == b'\xff' * (4 * entries)


def snapshot_target(path):
    """The VHD a snapshot of ``path`` links its new children to, as
    ``vhd-util snapshot`` finds it without ``-e`` (blktap
    vhd-util-snapshot.c ``vhd_util_find_snapshot_target``; SM's FileSR
    and LVHD both snapshot with that check on): ``path`` itself, or,
    while it is a differencing VHD with no block allocated, its parent
    (through the parent locator: a name in the same directory)."""
    path = os.path.abspath(str(path))
    for _depth in range(MAX_CHAIN_SIZE + 1):
        if not bat_empty(path):
            return path
        path = os.path.join(os.path.dirname(path), meta(path)['parent_name'])
    raise ValueError('chain of %s deeper than %d' % (path, MAX_CHAIN_SIZE))


def fit_size(child, node):
    """A child linked past ``node`` to an ancestor of another size gets
    ``node``'s size ("if the sizes of the parent chain are non-uniform,
    we need to pick the right size: that of the supplied parent":
    vhd-util-snapshot.c)."""
    size = meta(node)['virtual_size']
    if meta(child)['virtual_size'] < size:
        resize(child, size)


def snapshot(sr_dir, vdi_uuid, snap_vdi_uuid, node_uuid):
    """FileSR's double snapshot of ``<vdi_uuid>.vhd`` (FileVDI._snapshot):
    the leaf is renamed to the base ``<node_uuid>.vhd``, and the VDI's new
    leaf and the snapshot are made as its children.  When the leaf held no
    block, ``td-util snapshot`` links both children to its first ancestor
    that holds one (:func:`snapshot_target`) and FileSR deletes the unused
    base (no "base copy" VDI is introduced).

    Returns (node meta, or None when no base was kept; leaf meta;
    snapshot meta)."""
    src = os.path.join(sr_dir, vdi_uuid + '.vhd')
    node = os.path.join(sr_dir, node_uuid + '.vhd')
    snap = os.path.join(sr_dir, snap_vdi_uuid + '.vhd')
    os.rename(src, node)
    target = snapshot_target(node)
    tmp = src + '.new'
    for path in (tmp, snap):
        create_child(path, target)
        fit_size(path, node)
    os.rename(tmp, src)
    if target != node:
        os.unlink(node)
        return None, meta(src), meta(snap)
    set_hidden(node, True)
    return meta(node), meta(src), meta(snap)


def vdi_of_name(name):
    """The VDI uuid a parent name of the SR names: ``<uuid>.vhd`` (file
    SRs) or the LV name ``VHD-<uuid>`` (LVM SRs)."""
    name = os.path.basename(name)
    if name.endswith('.vhd'):
        return name[:-len('.vhd')]
    if name.startswith('VHD-'):
        return name[len('VHD-'):]
    return name


def read(path, offset, length):
    with open_image(path) as img:
        img.seek(offset)
        return bytes(img.read(length))


def write(path, offset, data):
    with open_image(path, 'r+b') as img:
        img.seek(offset)
        img.write(bytes(data))


def chain(path):
    """File names of a chain, leaf first, following parent unique ids among
    the files of the same directory (as XenServer's SM does)."""
    directory = os.path.dirname(os.path.abspath(str(path)))
    by_id = {}
    for name in os.listdir(directory):
        if name.endswith('.vhd'):
            by_id[meta(os.path.join(directory, name))['uuid']] = name
    out = [os.path.basename(str(path))]
    m = meta(path)
    while m['disk_type'] == 4:
        name = by_id.get(m['parent_uuid'])
        if name is None:
            break
        out.append(name)
        m = meta(os.path.join(directory, name))
    return out


def coalesce_into_child(sr_dir, node_uuid, child_uuid):
    """SM's garbage collector, leaf-coalesce flavour, made explicit.

    ``node`` (hidden, with ``child`` its only child) absorbs the child's
    blocks (FATtools ``Image.merge`` writes the child's sectors into the
    parent and deletes the child), then takes the child's file name and is
    un-hidden.  The child VDI keeps its uuid and name but its file now has
    the node's unique id: the chain changed behind a reader's back."""
    node = os.path.join(sr_dir, node_uuid + '.vhd')
    child = os.path.join(sr_dir, child_uuid + '.vhd')
    size = meta(child)['virtual_size']
    if meta(node)['virtual_size'] < size:
        resize(node, size)      # SM grows the parent before coalescing
    with _resolver(sr_dir):
        img = _vhdutils().Image(os.path.abspath(child), 'r+b')
        img.merge()
        if img.Parent is not None:
            img.Parent.close()
    os.rename(node, child)
    set_hidden(child, False)
    return meta(child)


def resize(path, new_size):
    """Grow a VHD in place within its BAT, as ``vhd-util resize -f`` (sm's
    ``vhdutil.setSizeVirtFast``, "resize VHD online") does: the footer's
    current size and CHS geometry and the header's max table entries
    change; the BAT must already have room (its sectors are preallocated
    in whole 512-byte units: 128 entries)."""
    path = str(path)
    with open(path, 'rb') as f:
        f.seek(-SECTOR, 2)
        ft = f.read(SECTOR)
        data_offset = struct.unpack_from('>Q', ft, 0x10)[0]
        f.seek(data_offset)
        hd = bytearray(f.read(HEADER_SIZE))
    old = struct.unpack_from('>Q', ft, 0x30)[0]
    if new_size < old:
        raise ValueError('shrinking is not supported')
    block = struct.unpack_from('>I', hd, 0x20)[0]
    entries = struct.unpack_from('>I', hd, 0x1C)[0]
    capacity = (entries * 4 + SECTOR - 1) // SECTOR * SECTOR // 4
    need = (new_size + block - 1) // block
    if need > capacity:
        raise ValueError('no room in the BAT for %d bytes' % new_size)
    geometry = _vhdutils().mk_chs(new_size)

    def fn(buf):
        struct.pack_into('>Q', buf, 0x30, new_size)
        buf[0x38:0x3C] = geometry
    _patch_footers(path, fn)
    struct.pack_into('>I', hd, 0x1C, need)
    struct.pack_into('>I', hd, HEADER_CHECKSUM,
                     _checksum(hd, HEADER_CHECKSUM))
    with open(path, 'r+b') as f:
        f.seek(data_offset)
        f.write(hd)
