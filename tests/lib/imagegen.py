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

"""Independent image generation and oracles for the functional tests.

Where the truth comes from
--------------------------
Nothing in this module imports ``any2kvm_os``.  Every VHD that the tests feed
to the converter is written by software the project did not write:

* qemu-img (Debian ``qemu-utils``): fixed and dynamic VHDs;
* FATtools 1.1.23 (PyPI, pure Python): dynamic bases and differencing chains;
* the shared corpus (Hyper-V, Virtual PC, Disk2vhd, XenServer ``vhd-util``...).

The expected raw content comes from:

* :class:`RawModel` -- a plain bytearray into which the tests write exactly
  the same bytes they write through FATtools.  It does not know anything about
  VHD, so it cannot share a bug with a VHD reader.  It is the truth for chains.
* ``qemu-img convert -f vpc -O raw`` for single (non-differencing) VHDs
  (qemu has no differencing-VHD support: it is never an oracle for chains).
* libvhdi (Debian ``python3-libvhdi``, importable only by Debian's system
  python3, hence run in a subprocess) as a second opinion on *simple* chains:
  libvhdi 20210425 is wrong on partial sector-bitmap bytes and on grown
  children, so it is only asked about chains whose bitmaps are made of whole
  0x00/0xff bytes and where every layer has the same size.
* ``expected-hashes.json`` of the corpus.

The only VHD knowledge in here is the small set of field offsets needed to
*patch* externally generated files (to craft corrupt inputs or to grow a
child); each patch is documented where it is made.
"""

import gzip
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import tarfile
import uuid

SECTOR = 512
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
VHD_BLOCK = 2 * MiB

SYSTEM_PYTHON = os.environ.get('ANY2KVM_ORACLE_PYTHON', '/usr/bin/python3')


# ---------------------------------------------------------------------------
# hashing and sparse-file helpers
# ---------------------------------------------------------------------------

def sparse_sha256(path, chunk=16 * MiB):
    """(size, SHA-256) of a file whose holes are hashed as zeros from one
    buffer instead of being read: a 16 GiB output that is mostly holes is
    hashed without reading it."""
    h = hashlib.sha256()
    zeros = memoryview(bytes(chunk))
    fd = os.open(str(path), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                data = size
            while pos < data:
                n = min(chunk, data - pos)
                h.update(zeros[:n])
                pos += n
            if pos >= size:
                break
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            while pos < hole:
                buf = os.pread(fd, min(chunk, hole - pos), pos)
                if not buf:
                    raise AssertionError('%s shrank while hashed' % path)
                h.update(buf)
                pos += len(buf)
    finally:
        os.close(fd)
    return size, h.hexdigest()


def sha256_file(path, length=None, chunk=4 * MiB):
    """SHA-256 of a file (or of its first ``length`` bytes)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        left = length
        while True:
            n = chunk if left is None else min(chunk, left)
            if n == 0:
                break
            buf = f.read(n)
            if not buf:
                break
            h.update(buf)
            if left is not None:
                left -= len(buf)
    if left:
        raise AssertionError('%s is %d bytes short' % (path, left))
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_zeros(length, chunk=16 * MiB):
    h = hashlib.sha256()
    z = memoryview(bytes(chunk))
    while length > 0:
        n = min(length, chunk)
        h.update(z[:n])
        length -= n
    return h.hexdigest()


def allocated_bytes(path):
    """Bytes really allocated on disk for ``path``."""
    return os.stat(path).st_blocks * 512


def data_ranges(path):
    """The (start, end) data extents of a file according to SEEK_DATA/HOLE."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def same_content(a, b, chunk=8 * MiB):
    """True when two (sparse) files have the same size and read the same,
    comparing only the union of their data extents (elsewhere both are
    holes, i.e. zeros)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    merged = []
    for s, e in sorted(data_ranges(a) + data_ranges(b)):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        for s, e in merged:
            pos = s
            while pos < e:
                n = min(chunk, e - pos)
                fa.seek(pos)
                fb.seek(pos)
                if fa.read(n) != fb.read(n):
                    return False
                pos += n
    return True


def hole_violations(path, ranges):
    """Parts of ``ranges`` (list of (start, end)) that are allocated data."""
    bad = []
    extents = data_ranges(path)
    for start, end in ranges:
        for ds, de in extents:
            lo, hi = max(start, ds), min(end, de)
            if lo < hi:
                bad.append((lo, hi))
    return bad


def zero_ranges(data, granularity=64 * KiB):
    """Aligned ``granularity``-sized runs of zeros in ``data`` (merged)."""
    out = []
    zero = bytes(granularity)
    for off in range(0, len(data) - granularity + 1, granularity):
        if data[off:off + granularity] == zero:
            if out and out[-1][1] == off:
                out[-1] = (out[-1][0], off + granularity)
            else:
                out.append((off, off + granularity))
    return out


def pattern(seed, length):
    """Deterministic pseudo-random bytes with no all-zero sector."""
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(length))
    for off in range(0, length, SECTOR):
        if not any(data[off:off + SECTOR]):
            data[off] = 0xA5
    return bytes(data)


# ---------------------------------------------------------------------------
# the write model
# ---------------------------------------------------------------------------

class RawModel(object):
    """The expected raw disk: a flat bytearray, written like the disk was."""

    def __init__(self, size):
        self.data = bytearray(size)

    @property
    def size(self):
        return len(self.data)

    def write(self, offset, data):
        if offset < 0 or offset + len(data) > len(self.data):
            raise ValueError('model write outside the disk')
        self.data[offset:offset + len(data)] = data

    def resize(self, size):
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def copy(self):
        m = RawModel(0)
        m.data = bytearray(self.data)
        return m

    def sha256(self):
        return sha256_bytes(self.data)

    def zero_ranges(self, granularity=64 * KiB):
        return zero_ranges(self.data, granularity)


class FileModel(object):
    """:class:`RawModel`'s writes and ``sha256`` on a sparse file
    instead of a bytearray: memory bounded whatever the disk's size
    (a benchmark's disk of gigabytes); the file is ``path``."""

    def __init__(self, path, size):
        self.path = str(path)
        with open(self.path, 'wb') as f:
            f.truncate(size)
        self._size = size

    @property
    def size(self):
        return self._size

    def write(self, offset, data):
        if offset < 0 or offset + len(data) > self._size:
            raise ValueError('model write outside the disk')
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        finally:
            os.close(fd)

    def resize(self, size):
        os.truncate(self.path, size)
        self._size = size

    def sha256(self):
        """Streamed: 4 MiB at a time."""
        return sha256_file(self.path)


# ---------------------------------------------------------------------------
# FATtools chains
# ---------------------------------------------------------------------------

def _vhdutils():
    from FATtools import vhdutils  # imported lazily: optional tool
    return vhdutils


class Layer(object):
    def __init__(self, path, kind, model):
        self.path = str(path)
        self.kind = kind            # 'fixed' | 'dynamic' | 'differencing'
        self.model = model          # RawModel snapshot after this layer
        self.uuid = None
        self.parent_uuid = None
        self.size = model.size

    @property
    def name(self):
        return os.path.basename(self.path)


class FatChain(object):
    """A VHD chain written by FATtools plus its write model.

    ``layers`` are base first.  Each ``write`` goes through FATtools into the
    newest layer and, byte for byte, into the model.
    """

    def __init__(self, directory, size, block=VHD_BLOCK):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.size = size
        self.block = block
        self.model = RawModel(size)
        self.layers = []

    def _path(self, name):
        return os.path.join(self.directory, name)

    def _refresh_ids(self, layer):
        f = read_vhd(layer.path)
        layer.uuid = f['footer']['uuid']
        layer.parent_uuid = (f['header'] or {}).get('parent_uuid')
        if f['footer']['disk_type'] != 4:
            layer.parent_uuid = None

    def base(self, name, writes=(), kind='dynamic'):
        vhdutils = _vhdutils()
        path = self._path(name)
        if kind == 'dynamic':
            vhdutils.mk_dynamic(path, self.size, block=self.block)
        elif kind == 'fixed':
            vhdutils.mk_fixed(path, self.size)
        else:
            raise ValueError(kind)
        self._write(path, writes)
        layer = Layer(path, kind, self.model.copy())
        self._refresh_ids(layer)
        self.layers.append(layer)
        return layer

    def child(self, name, writes=()):
        vhdutils = _vhdutils()
        path = self._path(name)
        vhdutils.mk_diff(path, self.layers[-1].path)
        self._write(path, writes)
        layer = Layer(path, 'differencing', self.model.copy())
        self._refresh_ids(layer)
        self.layers.append(layer)
        return layer

    def _write(self, path, writes):
        writes = list(writes)
        if not writes:
            return
        vhdutils = _vhdutils()
        img = vhdutils.Image(path, 'r+b')
        try:
            for offset, data in writes:
                img.seek(offset)
                img.write(bytes(data))
                self.model.write(offset, data)
        finally:
            img.close()

    @property
    def leaf(self):
        return self.layers[-1]

    def paths(self):
        return [layer.path for layer in self.layers]


# ---------------------------------------------------------------------------
# VHD metadata: read and patch (for crafting inputs only)
# ---------------------------------------------------------------------------

FOOTER_FIELDS = {
    # name: (offset, struct format)
    'cookie': (0x00, '8s'),
    'features': (0x08, '>I'),
    'version': (0x0C, '>I'),
    'data_offset': (0x10, '>Q'),
    'timestamp': (0x18, '>I'),
    'creator_app': (0x1C, '4s'),
    'creator_version': (0x20, '>I'),
    'creator_host': (0x24, '4s'),
    'original_size': (0x28, '>Q'),
    'current_size': (0x30, '>Q'),
    'geometry': (0x38, '4s'),
    'disk_type': (0x3C, '>I'),
    'checksum': (0x40, '>I'),
    'uuid': (0x44, '16s'),
    'saved_state': (0x54, 'B'),
}
FOOTER_CHECKSUM = 0x40

HEADER_FIELDS = {
    'cookie': (0x00, '8s'),
    'data_offset': (0x08, '>Q'),
    'table_offset': (0x10, '>Q'),
    'version': (0x18, '>I'),
    'max_table_entries': (0x1C, '>I'),
    'block_size': (0x20, '>I'),
    'checksum': (0x24, '>I'),
    'parent_uuid': (0x28, '16s'),
    'parent_timestamp': (0x38, '>I'),
    'parent_name': (0x40, '512s'),
}
HEADER_CHECKSUM = 0x24
HEADER_SIZE = 1024
LOCATOR_OFFSET = 0x240
LOCATOR = struct.Struct('>4sIIIQ')   # code, data space, data length, rsvd, off


def vhd_checksum(buf, field_offset):
    """One's complement of the byte sum with the checksum field zeroed."""
    b = bytearray(buf)
    b[field_offset:field_offset + 4] = b'\0\0\0\0'
    return (~sum(b)) & 0xFFFFFFFF


def _unpack(fields, buf):
    out = {}
    for name, (off, fmt) in fields.items():
        out[name] = struct.unpack_from(fmt, buf, off)[0]
    return out


def _pack_into(fields, buf, changes):
    for name, value in changes.items():
        off, fmt = fields[name]
        if name in ('uuid', 'parent_uuid') and isinstance(value, (str,
                                                                  uuid.UUID)):
            value = uuid.UUID(str(value)).bytes
        struct.pack_into(fmt, buf, off, value)


def read_vhd(path):
    """Footer (end of file), footer copy, dynamic header and BAT of a VHD."""
    with open(path, 'rb') as f:
        f.seek(0, 2)
        fsize = f.tell()
        f.seek(fsize - SECTOR)
        fbuf = f.read(SECTOR)
        footer = _unpack(FOOTER_FIELDS, fbuf)
        footer['uuid'] = str(uuid.UUID(bytes=footer['uuid']))
        footer['checksum_ok'] = (footer['checksum'] ==
                                 vhd_checksum(fbuf, FOOTER_CHECKSUM))
        out = {'file_size': fsize, 'footer': footer, 'header': None,
               'bat': None, 'locators': []}
        if footer['disk_type'] in (3, 4):
            f.seek(footer['data_offset'])
            hbuf = f.read(HEADER_SIZE)
            header = _unpack(HEADER_FIELDS, hbuf)
            header['parent_uuid'] = str(uuid.UUID(bytes=header['parent_uuid']))
            header['checksum_ok'] = (header['checksum'] ==
                                     vhd_checksum(hbuf, HEADER_CHECKSUM))
            out['header'] = header
            for i in range(8):
                code, space, length, _r, off = LOCATOR.unpack_from(
                    hbuf, LOCATOR_OFFSET + i * LOCATOR.size)
                out['locators'].append({'code': code, 'space': space,
                                        'length': length, 'offset': off})
            f.seek(header['table_offset'])
            n = header['max_table_entries']
            out['bat'] = list(struct.unpack('>%dI' % n, f.read(4 * n)))
    return out


def _footer_offsets(path):
    """Offsets of every footer copy in the file: end, and start if present."""
    size = os.path.getsize(path)
    offs = [size - SECTOR]
    with open(path, 'rb') as f:
        if f.read(8) == b'conectix' and size > SECTOR:
            offs.insert(0, 0)
    return offs


def patch_footer(path, fix_checksum=True, copies='all', **changes):
    """Change footer fields in all footer copies, or only 'end'/'start'.

    The checksum is recomputed unless ``fix_checksum`` is False (or
    ``checksum`` itself is one of the changes).
    """
    offs = _footer_offsets(path)
    if copies == 'end':
        offs = offs[-1:]
    elif copies == 'start':
        offs = [o for o in offs if o == 0]
    with open(path, 'r+b') as f:
        for off in offs:
            f.seek(off)
            buf = bytearray(f.read(SECTOR))
            _pack_into(FOOTER_FIELDS, buf, changes)
            if fix_checksum and 'checksum' not in changes:
                struct.pack_into('>I', buf, FOOTER_CHECKSUM,
                                 vhd_checksum(buf, FOOTER_CHECKSUM))
            f.seek(off)
            f.write(buf)


def _header_offset(path):
    return read_vhd(path)['footer']['data_offset']


def patch_header(path, fix_checksum=True, locators=None, **changes):
    """Change dynamic-header fields (and optionally the locator table)."""
    off = _header_offset(path)
    with open(path, 'r+b') as f:
        f.seek(off)
        buf = bytearray(f.read(HEADER_SIZE))
        _pack_into(HEADER_FIELDS, buf, changes)
        if locators is not None:
            for i, loc in enumerate(locators):
                LOCATOR.pack_into(buf, LOCATOR_OFFSET + i * LOCATOR.size,
                                  loc['code'], loc['space'], loc['length'], 0,
                                  loc['offset'])
        if fix_checksum and 'checksum' not in changes:
            struct.pack_into('>I', buf, HEADER_CHECKSUM,
                             vhd_checksum(buf, HEADER_CHECKSUM))
        f.seek(off)
        f.write(buf)


def set_bat_entry(path, index, value):
    """Overwrite one BAT entry (the BAT has no checksum)."""
    header = read_vhd(path)['header']
    with open(path, 'r+b') as f:
        f.seek(header['table_offset'] + 4 * index)
        f.write(struct.pack('>I', value))


def relink(child, parent):
    """Point differencing VHD ``child`` at ``parent`` (same directory).

    Rewrites the parent unique id, parent timestamp, the parent unicode name
    and the W2ru/W2ku locator payloads in place (FATtools reserves whole
    sectors for them) and fixes the header checksum.
    """
    meta = read_vhd(child)
    pmeta = read_vhd(parent)
    pname = os.path.basename(parent)
    rel = ('.\\' + pname).encode('utf-16-le')
    absolute = os.path.abspath(parent).encode('utf-16-le')
    locs = meta['locators']
    with open(child, 'r+b') as f:
        for loc in locs:
            if loc['code'] == b'W2ru':
                payload = rel
            elif loc['code'] == b'W2ku':
                payload = absolute
            elif loc['code'] == b'\0\0\0\0':
                continue
            else:
                raise ValueError('unexpected locator %r' % loc['code'])
            room = loc['space'] if loc['space'] >= SECTOR else (
                loc['space'] * SECTOR)
            if len(payload) > room:
                raise ValueError('no room for locator %r' % payload)
            f.seek(loc['offset'])
            f.write(payload + bytes(room - len(payload)))
            loc['length'] = len(payload)
    name = pname.encode('utf-16-be')
    patch_header(child, locators=locs,
                 parent_uuid=pmeta['footer']['uuid'],
                 parent_timestamp=pmeta['footer']['timestamp'],
                 parent_name=name + bytes(512 - len(name)))


def set_uuid(path, new_uuid=None):
    new_uuid = new_uuid or uuid.uuid4()
    patch_footer(path, uuid=new_uuid)
    return str(new_uuid)


def chs_geometry(size):
    """The footer CHS field for ``size``, as FATtools computes it."""
    return _vhdutils().mk_chs(size)


# ---------------------------------------------------------------------------
# tar archives
# ---------------------------------------------------------------------------

def tar_member_file(name, path):
    return {'name': name, 'type': 'file', 'path': str(path)}


def make_tar(dest, members, compression=None, fmt=tarfile.GNU_FORMAT,
             compresslevel=9):
    """Write a tar (``compression`` None or 'gz') from member descriptions.

    Each member is a dict: ``name`` (stored verbatim: no normalisation, so
    absolute names and ``..`` survive), ``type`` one of file/symlink/
    hardlink/chardev/blockdev/fifo/dir, ``path`` (file) or ``link``.
    """
    kw = {'format': fmt}
    if compression == 'gz':
        mode = 'w:gz'
        kw['compresslevel'] = compresslevel
    else:
        mode = 'w'
    with tarfile.open(str(dest), mode, **kw) as tf:
        for m in members:
            ti = tarfile.TarInfo(m['name'])
            ti.mtime = 1577836800
            ti.mode = 0o644
            ti.uname = ti.gname = 'root'
            kind = m['type']
            if kind == 'file':
                ti.size = os.path.getsize(m['path'])
                with open(m['path'], 'rb') as src:
                    tf.addfile(ti, src)
                continue
            if kind == 'symlink':
                ti.type = tarfile.SYMTYPE
                ti.linkname = m['link']
            elif kind == 'hardlink':
                ti.type = tarfile.LNKTYPE
                ti.linkname = m['link']
            elif kind == 'chardev':
                ti.type = tarfile.CHRTYPE
                ti.devmajor, ti.devminor = 1, 3
            elif kind == 'blockdev':
                ti.type = tarfile.BLKTYPE
                ti.devmajor, ti.devminor = 7, 0
            elif kind == 'fifo':
                ti.type = tarfile.FIFOTYPE
            elif kind == 'dir':
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            else:
                raise ValueError(kind)
            tf.addfile(ti)
    return str(dest)


def xenserver_members(paths_leaf_first, prefix='', order='leaf-first',
                      seed=0):
    """Members ``0.vhd`` (leaf) .. ``n.vhd`` (base) in the requested order."""
    members = [tar_member_file('%s%d.vhd' % (prefix, i), p)
               for i, p in enumerate(paths_leaf_first)]
    if order == 'leaf-first':
        pass
    elif order == 'base-first':
        members.reverse()
    elif order == 'shuffled':
        rnd = random.Random(seed)
        while True:
            shuffled = members[:]
            rnd.shuffle(shuffled)
            if len(members) < 3 or (shuffled != members and
                                    shuffled != members[::-1]):
                break
        members = shuffled
    else:
        raise ValueError(order)
    return members


def compress_whole(path, how):
    """``path`` compressed whole (``how``: 'gz', 'xz' or 'zst'; None:
    ``path`` itself) into ``path.<how>``; the plain file is kept."""
    import gzip
    import lzma
    import zstandard
    if how is None:
        return path
    packed = path.with_name(path.name + '.' + how)
    packed.write_bytes({
        'gz': lambda d: gzip.compress(d, 1), 'xz': lzma.compress,
        'zst': zstandard.ZstdCompressor().compress}[how](path.read_bytes()))
    return packed


def list_tar_names(path):
    with tarfile.open(str(path)) as tf:
        return tf.getnames()


# ---------------------------------------------------------------------------
# corpus helpers
# ---------------------------------------------------------------------------

def decompress(src, dest_dir):
    """Decompress a .gz/.bz2 corpus file (or copy a plain one) to dest_dir."""
    import bz2
    src = str(src)
    base = os.path.basename(src)
    os.makedirs(str(dest_dir), exist_ok=True)
    if base.endswith('.gz') and not base.endswith('.tar.gz'):
        opener, name = gzip.open, base[:-3]
    elif base.endswith('.bz2'):
        opener, name = bz2.open, base[:-4]
    else:
        opener, name = open, base
    dest = os.path.join(str(dest_dir), name)
    with opener(src, 'rb') as fin, open(dest, 'wb') as fout:
        # all-zero chunks become holes (keeps the copies small on disk)
        while True:
            buf = fin.read(4 * MiB)
            if not buf:
                break
            if not any(buf):
                fout.seek(len(buf), 1)
            else:
                fout.write(buf)
        fout.truncate()
    return dest


def extract_tar(src, dest_dir, only=None):
    """Extract regular members of a corpus tarball (optionally some names)."""
    os.makedirs(str(dest_dir), exist_ok=True)
    out = {}
    with tarfile.open(str(src)) as tf:
        for m in tf.getmembers():
            if not m.isfile():
                continue
            name = os.path.basename(m.name)
            if only is not None and name not in only:
                continue
            dest = os.path.join(str(dest_dir), name)
            with tf.extractfile(m) as fin, open(dest, 'wb') as fout:
                shutil.copyfileobj(fin, fout, 4 * MiB)
            out[name] = dest
    return out


def load_expected(corpus_dir):
    with open(os.path.join(str(corpus_dir), 'expected-hashes.json')) as f:
        return json.load(f)


def expected_row(table, key, image, oracle='pyvhdi'):
    for row in table[key]:
        if row['image'] == image and row['oracle'] == oracle:
            if row.get('error'):
                raise LookupError('oracle %s failed on %s' % (oracle, image))
            return row
    raise LookupError('no %s row for %s in %s' % (oracle, image, key))


# ---------------------------------------------------------------------------
# external oracles
# ---------------------------------------------------------------------------

# The libyal bindings (python3-libvhdi, -libvmdk, -libqcow) import only in
# Debian's system python3: one script, run there, opens a chain base first
# with explicit parents and hashes the leaf's whole disk.
_LIBYAL_CHAIN_SCRIPT = r'''
import hashlib, json, sys
module, kind, extents, chunk = sys.argv[1:5]
lib = __import__(module)
paths = sys.argv[5:]          # leaf first, base last
layers = []
for p in reversed(paths):     # open base first, then each child on top
    o = getattr(lib, kind)()
    o.open(p)
    if extents == '1':
        o.open_extent_data_files()
    if layers:
        o.set_parent(layers[-1])
    layers.append(o)
leaf = layers[-1]
size = leaf.get_media_size()
h = hashlib.sha256()
off = 0
while off < size:
    n = min(int(chunk), size - off)
    buf = leaf.read_buffer_at_offset(n, off)
    if len(buf) != n:
        raise SystemExit('short read at %d' % off)
    h.update(buf)
    off += n
print(json.dumps({'size': size, 'sha256': h.hexdigest()}))
'''


def system_python_has(module):
    """Whether Debian's system python3 imports ``module`` (pyvhdi,
    VMDKstream ...)."""
    try:
        r = subprocess.run([SYSTEM_PYTHON, '-c', 'import ' + module],
                           capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def libyal_read(module, paths_leaf_first, kind='file', extents=False,
                chunk=4 * MiB):
    """(size, sha256) of a chain as a libyal binding reads it, parents
    given explicitly.  ``kind``: the handle class (pyvmdk: 'handle');
    ``extents``: call open_extent_data_files (VMDK); ``chunk``: read size
    (libqcow needs small reads, see test_qcow2)."""
    r = subprocess.run([SYSTEM_PYTHON, '-c', _LIBYAL_CHAIN_SCRIPT, module,
                        kind, '1' if extents else '0', str(chunk)] +
                       [str(p) for p in paths_leaf_first],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError('%s failed: %s' % (module, r.stderr.strip()))
    res = json.loads(r.stdout)
    return res['size'], res['sha256']


def pyvhdi_available():
    return system_python_has('pyvhdi')


def pyvhdi_read(paths_leaf_first):
    """(size, sha256) of a chain as libvhdi reads it (parents explicit)."""
    return libyal_read('pyvhdi', paths_leaf_first)


_PYVHDI_META = r'''
import json, sys
import pyvhdi
out = []
for p in sys.argv[1:]:
    f = pyvhdi.file()
    f.open(p)
    dt = f.get_disk_type()
    out.append({'id': f.get_identifier(),
                'parent_id': f.get_parent_identifier() if dt == 4 else None,
                'disk_type': dt, 'media_size': f.get_media_size()})
    f.close()
print(json.dumps(out))
'''


def pyvhdi_meta(*paths):
    """libvhdi's view of each file: id, parent id, disk type, media size."""
    r = subprocess.run([SYSTEM_PYTHON, '-c', _PYVHDI_META] +
                       [str(p) for p in paths],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError('pyvhdi failed: %s' % r.stderr.strip())
    return json.loads(r.stdout)


def qemu_img(*args, timeout=300):
    r = subprocess.run(['qemu-img'] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError('qemu-img %s failed: %s' % (
            ' '.join(str(a) for a in args), r.stderr.strip()))
    return r.stdout


def qemu_to_raw(vhd, raw):
    """qemu-img's raw reading of a (single, non-differencing) VHD."""
    qemu_img('convert', '-f', 'vpc', '-O', 'raw', vhd, raw)
    return str(raw)


def qio(path, *commands, fmt='qcow2'):
    """Run qemu-io commands on an image (backing files opened by qemu)."""
    args = ['qemu-io', '-f', fmt]
    for c in commands:
        args += ['-c', c]
    r = subprocess.run(args + [str(path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and 'error' not in r.stdout.lower(), (
        'qemu-io %s: %s%s' % (commands, r.stdout, r.stderr))


def qemu_raw(src, dest):
    """qemu-img's raw reading of an image and its whole backing chain."""
    qemu_img('convert', '-O', 'raw', src, dest)
    return dest


def write_raw(path, size, extents):
    """Write a raw file of ``size``: ``extents`` is [(offset, bytes)].

    Ranges not covered are left as holes.
    """
    with open(str(path), 'wb') as f:
        f.truncate(size)
        for off, data in extents:
            f.seek(off)
            f.write(data)


def read_range(path, offset, length):
    with open(str(path), 'rb') as f:
        f.seek(offset)
        return f.read(length)
