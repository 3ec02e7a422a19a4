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

"""Opening an XVA: a plain tar in place, a compressed one in passes.

A plain tar is read with random access (:class:`XvaTar`): the chunk index
of every VDI is built from the tar headers alone, and a chunk is read (and
its checksum verified) when the disk is copied.  A compressed XVA (gzip,
bzip2, xz; zstd when ``zstandard`` is importable) is read in one pass per
disk (:class:`XvaStream`, :class:`XvaStreamDisk`); so is an XVA read as it
downloads (:func:`open_xva_stream`).  The probes that tell an XVA from
other archives live here too.
"""

import collections
import contextlib
import hashlib
import logging
import os
import tarfile

from any2kvm_os.chain import layer_chain
from any2kvm_os import compression
from any2kvm_os.containers import tar
from any2kvm_os.containers.xva import layer
from any2kvm_os.containers.xva import layout
from any2kvm_os.containers.xva import metadata
from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os import vm

KIND = 'xva'
FORMAT = layer.FORMAT
CHUNK = layout.CHUNK
BLOCK = 512
OVA_XML = metadata.OVA_XML

LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------

def is_zstd(view):
    """The file is zstd-compressed (XenServer ``compress=zstd``)."""
    return compression.sniff_view(view) == compression.ZSTD


class _ViewFile(object):
    """Just enough of a file object over a FileView for tarfile."""

    def __init__(self, view):
        self.view = view
        self.pos = 0

    def read(self, n=-1):
        if n is None or n < 0:
            n = max(self.view.size - self.pos, 0)
        data = self.view.pread(n, self.pos)
        self.pos += len(data)
        return data

    def seek(self, pos, whence=0):
        self.pos = pos if whence == 0 else (
            self.pos + pos if whence == 1 else self.view.size + pos)
        return self.pos

    def tell(self):
        return self.pos


def looks_like_xva(view):
    """A plain tar whose first member after leading directory entries
    (``./``) is ``ova.xml``, at the top or in a directory, which the XVA
    then refuses by name (reads its header, and a pax or GNU long-name
    header before it, if any)."""
    try:
        tf = tarfile.open(fileobj=_ViewFile(view), mode='r:')
        ti = layout.first_member(tf.next)
    except (tarfile.TarError, EOFError, UnicodeError):
        return False
    return ti is not None and layout.is_ova_xml(ti)


def compressed_looks_like_xva(path):
    """A compressed tar (gzip, bzip2, xz, zstd) whose first member is
    ``ova.xml``, as :func:`looks_like_xva` tells it.  Only the first
    records are decompressed.  A zstd file
    answers True when ``zstandard`` is missing: :func:`open_xva` then
    refuses it with a clear message (XenServer compresses only XVAs with
    zstd)."""
    with open(path, 'rb') as f:
        try:
            fileobj = compression.open_reader(path, f)
        except exception.UnsupportedImage:
            return True
        try:
            with tar.archive_errors(path):
                tf = tarfile.open(fileobj=fileobj, mode='r|')
                ti = layout.first_member(tf.next)
        except exception.Any2KvmError:
            return False
        return ti is not None and layout.is_ova_xml(ti)


def head_is_xva(head):
    """Whether the first bytes of an archive (plain, gzip, bzip2, xz, zstd)
    start with ``ova.xml``: an XVA, which can be read as it arrives."""
    ti = tar.head_first_member(head)
    return ti is not None and tar.normalise(ti.name) == OVA_XML


# ---------------------------------------------------------------------------
# plain tar: random access
# ---------------------------------------------------------------------------

class XvaTar(object):
    """A plain XVA tar: the chunk index of every VDI, from the headers."""

    def __init__(self, path, limits):
        self.path = path
        self._file = open(path, 'rb')
        try:
            self._read(limits)
        except Exception:
            self._file.close()
            raise

    def _read(self, limits):
        path = self.path
        f = self._file
        fsize = os.fstat(f.fileno()).st_size
        self._names = {}
        with tar.archive_errors(path):
            tf = tarfile.open(fileobj=f, mode='r:')
            ti = layout.first_member(tf.next)
            del tf.members[:]
            if ti is None:
                raise exception.InvalidArchive(path=path,
                                               reason='empty archive')
            layout.check_first_member(path, ti, None)
            if ti.offset_data + ti.size > fsize:
                raise metadata.metadata_error(path, 'truncated')
            data = fileio.pread_full(f.fileno(), ti.size, ti.offset_data)
            if len(data) != ti.size:
                raise metadata.metadata_error(path, 'truncated')
            self.metadata = metadata.parse_metadata(
                path, data, limits.max_virtual_size)
            screen = layout.member_screen(path, limits,
                                          self.metadata.vdi_sizes)
            screen.check(ti)
            rules = layout.Layout(path, self.metadata.vdi_sizes)
            self.indexes = collections.defaultdict(layer.ChunkIndex)
            data_offset = None
            while True:
                ti = tf.next()
                del tf.members[:]
                if ti is None:
                    break
                name = screen.check(ti)
                if name is None:
                    rules.directory(ti.name)
                    continue
                if ti.offset_data + ti.size > fsize:
                    raise exception.InvalidArchive(
                        path=path, reason='member %r is truncated' % ti.name)
                kind, what = rules.member(name, ti.size)
                if kind == layout.CHUNK_MEMBER:
                    data_offset = ti.offset_data
                    continue
                chunk, algo = what
                if chunk.length == 0:
                    layout.verify_chunk(path, chunk, algo, fileio.pread_full(
                        f.fileno(), ti.size, ti.offset_data), b'')
                    continue
                self.indexes[chunk.ref].add(chunk, data_offset,
                                            ti.offset_data, algo)
                if chunk.number != chunk.pos // CHUNK:
                    self._names[(chunk.ref, chunk.pos // CHUNK)] = \
                        chunk.name
            end = fileio.pread_full(f.fileno(), BLOCK, tf.offset)
            if len(end) < BLOCK:
                raise exception.InvalidArchive(
                    path=path, reason='truncated: the archive ends without '
                    'its end-of-archive marker')
            if end.count(0) != BLOCK:
                raise exception.InvalidArchive(
                    path=path, reason='damaged tar header at offset %d'
                    % tf.offset)
            _check_zeros_after(f, path, tf.offset, fsize)
            rules.finish()
            for vdi in self.metadata.disks:
                rules.check_present(vdi)
        self.view = fileio.FileView(f.fileno(), path, size=fsize, owner=f)

    def chunk_name(self, ref, slot):
        return self._names.get((ref, slot), layout.chunk_name(ref, slot))

    def layer(self, vdi):
        view = fileio.FileView(self._file.fileno(),
                               '%s:%s' % (self.path, vdi.ref),
                               size=self.view.size, owner=self._file)
        return layer.XvaLayer(view, self.path, vdi, self.indexes[vdi.ref],
                              self.metadata.creator, self.chunk_name)

    def close(self):
        self._file.close()


def _check_zeros_after(f, path, offset, fsize):
    """Nothing but zeros may follow the end-of-archive marker: a zeroed
    tar header followed by more data is a damaged archive, not its end."""
    pos = offset
    while pos < fsize:
        data = os.pread(f.fileno(), min(1 << 20, fsize - pos), pos)
        if not data:
            break
        if data.count(0) != len(data):
            raise exception.InvalidArchive(
                path=path, reason='damaged archive: a zeroed tar header at '
                'offset %d is followed by data (at offset %d)'
                % (offset, pos + len(data) - len(data.lstrip(b'\0'))))
        pos += len(data)


def _disk_name(archive_path, vdi):
    return '%s:%s' % (archive_path, vdi.ref)


def xva_disk(xva_tar, vdi):
    """A disk of a plain XVA: random access through a one-layer chain."""
    name = _disk_name(xva_tar.path, vdi)
    chain = layer_chain.LayerChain([xva_tar.layer(vdi)], [name], [vdi.ref])
    return vm.ChainDisk(name, KIND, chain, disk_id=vdi.uuid)


# ---------------------------------------------------------------------------
# compressed: one pass per disk
# ---------------------------------------------------------------------------

class XvaStream(object):
    """A compressed XVA: ova.xml is read at once (it comes first); each
    disk is written in a pass of its own over the whole archive."""

    def __init__(self, path, limits, opener=None):
        self.path = path
        self.limits = limits
        #: Returns a new file object of the archive for each pass (a
        #: download: :class:`any2kvm_os.fileio.ChunkReader`); default: the
        #: file at ``path``.
        self._opener = opener or (lambda: open(path, 'rb'))
        self._stats = None
        with contextlib.closing(self._members()) as members:
            for ti, tf in members:
                layout.check_first_member(path, ti, None)
                data = self._read_member(tf, ti)
                self.metadata = metadata.parse_metadata(
                    path, data, limits.max_virtual_size)
                self._metadata_digest = hashlib.sha256(data).digest()
                break
            else:
                raise exception.InvalidArchive(path=path,
                                               reason='empty archive')

    def _members(self):
        """Yield (TarInfo, TarFile) for every member, in one pass; then
        check that the archive ends properly."""
        path = self.path
        with contextlib.closing(self._opener()) as f:
            members = tar.one_pass(path, compression.open_reader(path, f))
            # The directory entries before ova.xml (``./``) are skipped,
            # as in the plain tar.
            member = layout.first_member(lambda: next(members, None),
                                         info=lambda item: item[0])
            if member is not None:
                yield member
                yield from members

    def _read_member(self, tf, ti):
        with tar.archive_errors(self.path):
            data = tf.extractfile(ti).read()
        if len(data) != ti.size:
            raise exception.InvalidArchive(
                path=self.path, reason='member %r is truncated' % ti.name)
        return data

    def chunks(self, want):
        """Yield (disk offset, verified bytes) for every chunk of VDI
        ``want`` (None: none, only check the layout), in one pass over the
        whole archive; keep-alive (empty) chunks yield nothing."""
        path = self.path
        rules = layout.Layout(path, self.metadata.vdi_sizes)
        screen = layout.member_screen(path, self.limits,
                                      self.metadata.vdi_sizes)
        stats = collections.defaultdict(lambda: [0, set()])
        held = None
        first = True
        with contextlib.closing(self._members()) as members:
            for ti, tf in members:
                if first:
                    first = False
                    layout.check_first_member(path, ti, screen)
                    data = self._read_member(tf, ti)
                    if hashlib.sha256(data).digest() != self._metadata_digest:
                        raise metadata.metadata_error(
                            path, 'changed while the archive was being read')
                    continue
                name = screen.check(ti)
                if name is None:
                    rules.directory(ti.name)
                    continue
                kind, what = rules.member(name, ti.size)
                if kind == layout.CHUNK_MEMBER:
                    held = (self._read_member(tf, ti) if what.ref == want
                            else None)
                    continue
                chunk, algo = what
                stats[chunk.ref][0] += chunk.length
                stats[chunk.ref][1].add(algo)
                if chunk.ref != want:
                    continue
                layout.verify_chunk(path, chunk, algo,
                                    self._read_member(tf, ti), held)
                if chunk.length:
                    yield chunk.pos, held
                held = None
        rules.finish()
        for vdi in self.metadata.disks:
            rules.check_present(vdi)
        self._stats = dict(stats)

    def stats(self, ref):
        """(allocated bytes, checksum kinds) of a VDI, after one pass."""
        if self._stats is None:
            for _ in self.chunks(None):
                pass
        return self._stats.get(ref, (0, set()))


class XvaStreamDisk(vm.Disk):
    """A disk of a compressed XVA, written in one pass (its size is known
    from ova.xml before any data is read)."""

    format = FORMAT

    def __init__(self, stream, vdi):
        super(XvaStreamDisk, self).__init__(
            _disk_name(stream.path, vdi), KIND, disk_id=vdi.uuid)
        self.vdi = vdi
        self._stream = stream

    @property
    def virtual_size(self):
        return self.vdi.virtual_size

    def describe(self):
        """Reads the whole archive once (the first call only)."""
        allocated, kinds = self._stream.stats(self.vdi.ref)
        return [{
            'name': self.vdi.ref, 'format': FORMAT,
            'subformat': layer.subformat(kinds), 'id': self.vdi.uuid,
            'parent_id': None, 'virtual_size': self.vdi.virtual_size,
            'allocated_bytes': allocated,
            'creator': self._stream.metadata.creator,
        }]

    def write_to(self, target, progress=None):
        size = self.vdi.virtual_size
        target.resize(size)
        fresh = target.fresh
        # On a target that holds data already (a block device), the
        # chunks left out must be zeroed: remember which came.
        written = None if fresh else bytearray(-(-size // CHUNK))
        moved = 0
        for pos, data in self._stream.chunks(self.vdi.ref):
            target.write_data(pos, data, over_hole=fresh)
            if written is not None:
                written[pos // CHUNK] = 1
            moved += len(data)
            if progress:
                progress(pos + len(data), size, moved)
        if written is not None:
            _zero_missing(target, written, size)
        if progress:
            progress(size, size, moved)


def _zero_missing(target, written, size):
    """Zero the chunk slots ``written`` does not mark."""
    i = written.find(0)
    while i >= 0:
        j = written.find(1, i)
        if j < 0:
            j = len(written)
        target.zero_range(i * CHUNK, min(j * CHUNK, size) - i * CHUNK)
        i = written.find(0, j)


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------

def open_xva(path, limits):
    """Return a :class:`~any2kvm_os.vm.Vm` for the XVA at ``path``.

    A plain tar is indexed from its headers and read with random access
    (its disks have a ``chain``); a compressed one (gzip, bzip2, xz, zstd)
    is read in one pass per disk.
    """
    if compression.sniff_path(path) is not None:
        return open_xva_stream(path, limits, None)
    xt = XvaTar(path, limits)
    try:
        disks = [xva_disk(xt, vdi) for vdi in xt.metadata.disks]
    except Exception:
        xt.close()
        raise
    for note in xt.metadata.notes:
        LOG.warning('%s', note)
    return vm.Vm(path, KIND, disks, facts=xt.metadata.vm,
                 notes=xt.metadata.notes, closer=xt.close)


def open_xva_stream(path, limits, opener):
    """A :class:`~any2kvm_os.vm.Vm` for an XVA read through ``opener`` (a
    new file object per pass: one for ova.xml, one per disk written)."""
    stream = XvaStream(path, limits, opener=opener)
    disks = [XvaStreamDisk(stream, vdi) for vdi in stream.metadata.disks]
    for note in stream.metadata.notes:
        LOG.warning('%s', note)
    return vm.Vm(path, KIND, disks, facts=stream.metadata.vm,
                 notes=stream.metadata.notes)
