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

"""Local OVF packages: an OVA archive, or an extracted OVF directory.

An OVA is a plain tar (ustar, pax or GNU) holding one ``.ovf`` descriptor
(the spec wants it first; any position is accepted, two are refused), an
optional ``.mf`` manifest and ``.cert`` certificate, and the files the
descriptor references.  Its members are read in place.  An extracted OVA
is a directory: the user names the ``.ovf``, and the files it references
must be regular files beside it (``<stem>.mf`` is its manifest).

Opening verifies first, before anything is parsed or written:

* every file the manifest lists, against each of its digests (this reads
  what it lists once); a listed file that is missing is refused.  The
  ``.cert`` signature is not verified (a warning says so);
* then the descriptor (see :mod:`.descriptor`); then, for each disk, its file.

Files are reached through an :class:`OvaContainer` whose members are the
*logical* files of the descriptor: a file split in chunks
(``ovf:chunkSize``: members ``href.000000000``, ``href.000000001``...) is
one :class:`.views.ConcatView` of the chunk members; a gzip-compressed file
(``ovf:compression="gzip"``) is decompressed into a private (0700),
bounded (``scratch_limit_gib``) scratch directory under ``scratch_dir``
(default: the system temporary directory), unlinked at once and gone when
the source is closed.  Disk readers resolve parents and VMDK extents only
among these members, through the container's opener.

Disk formats are recognised by content.  When ``ovf:format`` names a
format any2kvm reads (VMDK, VHD, VHDX, qcow2) and the content is another,
the disk is refused: the descriptor and the file disagree about what the
file is.  An unknown or absent URI is not checked.  ``ovf:capacity`` is
checked against ``max_virtual_size_gib`` before anything is opened; if
the disk file's own size differs, the file wins (with a warning).  A
uncompressed, unchunked file whose ``ovf:size`` differs from the member
is refused (a truncated or altered archive).  A disk without a file is a
blank disk of its capacity (written as a hole, :mod:`.blank`).
"""

import hashlib
import logging
import os
import posixpath
import tarfile
import zlib

from any2kvm_os.chain import layer_chain
from any2kvm_os import compression
from any2kvm_os.containers import base
from any2kvm_os.containers.ova import blank
from any2kvm_os.containers.ova import descriptor
from any2kvm_os.containers.ova import signature
from any2kvm_os.containers.ova import views
from any2kvm_os.containers import tar
from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os import scratch
from any2kvm_os import vm

LOG = logging.getLogger(__name__)

MiB = 1 << 20
READ_CHUNK = 4 * MiB
CHUNK_SUFFIX = '.%09d'


def _is_descriptor(name):
    return name.lower().endswith('.ovf')


def is_ova_tar(path, limits):
    """True if ``path`` is a plain tar with a ``.ovf`` or ``.mf`` member.

    Only the member headers are read.  Such a tar is then opened with
    :func:`open_ova` (which refuses two descriptors, or none).
    """
    try:
        with open(path, 'rb') as f, tarfile.open(fileobj=f, mode='r:') as tf:
            for count, ti in enumerate(tf):
                if count >= limits.max_archive_members:
                    break
                name = ti.name.lower()
                if ti.isreg() and name.endswith(('.ovf', '.mf')):
                    return True
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeError):
        # Not a tar we can list: the caller's other checks report it.
        return False
    return False


# ---------------------------------------------------------------------------
# gzip-compressed files, into scratch
# ---------------------------------------------------------------------------

def _gunzip_to_scratch(space, view, name, bound=None):
    """Decompress gzip ``view`` into scratch ``space``; return a FileView
    of the result (already unlinked: it goes away when the view is
    closed).  At most ``bound`` bytes (what the disk can sensibly take),
    within the scratch budget."""
    fd, tmp = space.mkstemp()
    try:
        try:
            budget = space.remaining
            why = 'scratch space (scratch_limit_gib)'
            if bound is not None and bound < budget:
                budget = bound
                why = 'the capacity of its disk allows'
            size = _gunzip(view, fd, name, budget, why)
            space.charge(size, name)
            return fileio.FileView.open_path(tmp, name)
        except OSError as e:
            raise exception.TargetError(
                path=space.dir, reason='scratch space for %s: %s'
                % (name, e.strerror))
    finally:
        os.close(fd)
        os.unlink(tmp)


def _all_zero(data):
    return data.count(0) == len(data)


def _gunzip(view, fd, name, budget, why):
    """Decompress the gzip members in ``view`` into ``fd`` (sparse);
    return the decompressed size."""
    def bad(reason):
        return exception.InvalidImage(path=name, reason=reason)

    pos = 0
    out = 0
    d = None
    pending = b''

    def emit(buf):
        nonlocal out
        if out + len(buf) > budget:
            raise exception.InvalidImage(
                path=name, reason='decompresses to more than %d bytes: more '
                'than %s' % (budget, why))
        if buf and not _all_zero(buf):
            view_ = memoryview(buf)
            off = out
            while view_:
                n = os.pwrite(fd, view_, off)
                view_ = view_[n:]
                off += n
        out += len(buf)

    while True:
        if len(pending) < 2:
            more = view.pread(READ_CHUNK, pos)
            pos += len(more)
            pending += more
            if not pending:
                break
        if d is None or d.eof:
            if pending[:2] != compression.GZIP_MAGIC:
                if d is None:
                    raise bad('ovf:compression says gzip, but the file is '
                              'not gzip data')
                # After the last member: only zero padding may follow.
                if not _all_zero(pending):
                    raise bad('trailing data after the gzip stream')
                while True:
                    more = view.pread(READ_CHUNK, pos)
                    if not more:
                        break
                    pos += len(more)
                    if not _all_zero(more):
                        raise bad('trailing data after the gzip stream')
                pending = b''
                break
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            buf = d.decompress(pending, READ_CHUNK)
        except zlib.error as e:
            raise bad('bad gzip data: %s' % e)
        pending = d.unused_data if d.eof else d.unconsumed_tail
        emit(buf)
    while d is not None and not d.eof:
        try:
            buf = d.decompress(d.unconsumed_tail, READ_CHUNK)
        except zlib.error as e:
            raise bad('bad gzip data: %s' % e)
        if not buf:
            break
        emit(buf)
    if d is None or not d.eof:
        raise bad('truncated gzip data')
    os.ftruncate(fd, out)
    return out


# ---------------------------------------------------------------------------
# the container
# ---------------------------------------------------------------------------

class OvaContainer(base.Container):
    """The logical files of an OVF package (see the module docstring).

    ``entries`` maps each logical name to how it is read:
    ``('member', raw name)``, ``('chunks', [raw names])`` or
    ``('gzip', inner entry, most bytes it may decompress to or None)``.
    """

    def __init__(self, path, raw, entries, display, limits,
                 is_directory=False):
        super(OvaContainer, self).__init__(path)
        self.is_directory = is_directory
        self.raw = raw
        self.entries = entries
        self._display = display
        self._limits = limits
        self._made = {}
        self._scratch = scratch.Scratch.for_limits(limits,
                                                   prefix='any2kvm-ova-')

    def member_names(self):
        return sorted(self.entries)

    def display_name(self, name):
        return self._display(name)

    def _open(self, name):
        if name not in self.entries:
            raise exception.ChainError(
                path=self.display_name(name), reason='not a file of %s'
                % self.path)
        return self._view(name, self.entries[name])

    def _view(self, name, entry):
        if entry[0] == 'member':
            return self.raw.open_view(entry[1])
        made = self._made.get(name)
        if made is None:
            if entry[0] == 'chunks':
                made = views.ConcatView(
                    [self.raw.open_view(n) for n in entry[1]],
                    self.display_name(name))
            else:
                inner = self._view(name + '\0gz', entry[1])
                made = _gunzip_to_scratch(self._scratch, inner,
                                          self.display_name(name), entry[2])
            self._made[name] = made
        if isinstance(made, views.ConcatView):
            return made
        # A view sharing the decompressed file (closed with the container).
        return fileio.FileView(made.fd, made.name, owner=made)

    def close(self):
        super(OvaContainer, self).close()
        for view in self._made.values():
            view.close()
        self._made = {}
        self.raw.close()
        self._scratch.cleanup()


# ---------------------------------------------------------------------------
# opening
# ---------------------------------------------------------------------------

def open_compressed_ova(path, limits):
    """Open an OVA compressed whole (``.ova.gz``, or bzip2, xz, zstd) by
    decompressing it into private scratch (bounded by ``scratch_limit``);
    closing the :class:`~any2kvm_os.vm.Vm` removes the copy.  Messages name
    ``path``, never the scratch file."""
    space = scratch.Scratch.for_limits(limits, prefix='any2kvm-ova-')
    copy = space.path('ova.tar')
    try:
        with open(path, 'rb') as f, open(copy, 'wb') as out:
            src = tar.CheckedReader(path, compression.open_reader(path, f))
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                space.charge(len(chunk), path)
                out.write(chunk)
        source = open_ova(copy, limits)
    except exception.Any2KvmError as e:
        space.cleanup()
        raise exception.Any2KvmError(str(e).replace(copy, path))
    except BaseException:
        space.cleanup()
        raise
    source.relabel(copy, path)
    source.on_close(space.cleanup)
    return source


def open_ova(path, limits):
    """Open an OVA (a plain tar); return a :class:`~any2kvm_os.vm.Vm`."""
    raw = tar.PlainTarContainer(path, limits)
    try:
        names = raw.member_names()
        ovfs = [n for n in names if _is_descriptor(n)]
        if not ovfs:
            raise exception.InvalidArchive(
                path=path, reason='no .ovf descriptor: not an OVA')
        if len(ovfs) > 1:
            raise exception.InvalidArchive(
                path=path, reason='holds %d .ovf descriptors (%s): an OVA '
                'holds exactly one' % (len(ovfs), ', '.join(
                    repr(n) for n in ovfs[:4])))
        prefix = posixpath.dirname(ovfs[0])
        prefix = prefix + '/' if prefix else ''
        local = {}
        for n in names:
            rest = n[len(prefix):]
            if n.startswith(prefix) and '/' not in rest:
                local[rest] = n
        ovf_name = ovfs[0][len(prefix):]
        stem = ovf_name[:-len('.ovf')]

        def pick(ext_):
            found = [n for n in local if n.lower().endswith(ext_)]
            if stem + ext_ in local:
                return stem + ext_
            if len(found) > 1:
                raise exception.InvalidArchive(
                    path=path, reason='holds %d %s files and none is '
                    'named after %r' % (len(found), ext_, ovf_name))
            return found[0] if found else None

        mf_name = pick('.mf')
        cert_name = pick('.cert')
        return _open_package(
            path, 'ova', raw, local, ovf_name, mf_name, cert_name, limits,
            lambda n: '%s:%s' % (path, prefix + n), 'archive')
    except BaseException:
        raw.close()
        raise


def open_ovf(path, limits):
    """Open an extracted OVF package: ``path`` is its ``.ovf``; the files
    it references are regular files of the same directory."""
    raw = base.DirectoryContainer(path, limits)
    try:
        local = {n: n for n in raw.member_names()}
        ovf_name = raw.leaf_name
        local[ovf_name] = ovf_name
        stem = os.path.splitext(ovf_name)[0]
        mf_path = os.path.join(raw.directory, stem + '.mf')
        if stem + '.mf' not in local and os.path.lexists(mf_path):
            raise exception.InvalidArchive(
                path=mf_path, reason='the manifest is not a regular file '
                '(links are not followed)')
        mf_name = stem + '.mf' if stem + '.mf' in local else None
        cert_name = stem + '.cert' if stem + '.cert' in local else None
        return _open_package(path, 'ovf', raw, local, ovf_name, mf_name,
                             cert_name, limits, raw.display_name,
                             'directory')
    except BaseException:
        raw.close()
        raise


def _read_small(view, limit, name, what):
    if view.size > limit:
        raise exception.InvalidImage(
            path=name, reason='%s is %d bytes: more than %d, refused as '
            'absurd' % (what, view.size, limit))
    data = view.pread(view.size, 0)
    if len(data) != view.size:
        raise exception.InvalidImage(path=name, reason='truncated %s' % what)
    return data


def _hash_view(view, algos):
    hashers = {a: hashlib.new(descriptor.DIGESTS[a]) for a in algos}
    pos = 0
    while pos < view.size:
        data = view.pread(min(READ_CHUNK, view.size - pos), pos)
        if not data:
            raise exception.InvalidImage(
                path=view.name, reason='truncated: %d of %d bytes could be '
                'read' % (pos, view.size))
        for h in hashers.values():
            h.update(data)
        pos += len(data)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _verify_manifest(raw, local, ovf_name, ovf_data, mf_name, display,
                     word):
    mf_view = raw.open_view(local[mf_name])
    by_name = descriptor.manifest_by_name(descriptor.parse_manifest(
        _read_small(mf_view, descriptor.MAX_MANIFEST_BYTES,
                    display(mf_name), 'manifest'), display(mf_name)))
    for name, wanted in by_name.items():
        if name == ovf_name:
            got = {}
            for algo, _d in wanted:
                h = hashlib.new(descriptor.DIGESTS[algo])
                h.update(ovf_data)
                got[algo] = h.hexdigest()
        elif name in local and name != mf_name:
            got = _hash_view(raw.open_view(local[name]),
                             {a for a, _d in wanted})
        else:
            raise exception.InvalidArchive(
                path=display(mf_name), reason='manifest lists %r, which is '
                'not a file of the %s' % (name, word))
        for algo, digest in wanted:
            if got[algo] != digest:
                raise exception.InvalidArchive(
                    path=display(mf_name), reason='manifest mismatch for %s '
                    '(%s)' % (name, algo))
    return set(by_name)


def _open_package(path, kind, raw, local, ovf_name, mf_name, cert_name,
                  limits, display, word):
    ovf_display = display(ovf_name)
    ovf_data = _read_small(raw.open_view(local[ovf_name]),
                           descriptor.MAX_OVF_BYTES, ovf_display,
                           'descriptor')
    if mf_name:
        listed = _verify_manifest(raw, local, ovf_name, ovf_data, mf_name,
                                  display, word)
    else:
        listed = None
        LOG.info('%s: no manifest; no digests are checked', path)
    desc = descriptor.parse(ovf_data, ovf_display)
    # Warnings are logged only once the package is known to be usable:
    # a refusal is one line.
    notes = desc.notes
    policy = signature.policy_of(limits)
    if cert_name:
        mf_data = None
        if mf_name:
            mf_data = _read_small(raw.open_view(local[mf_name]),
                                  descriptor.MAX_MANIFEST_BYTES,
                                  display(mf_name), 'manifest')
        cert_data = _read_small(raw.open_view(local[cert_name]),
                                signature.MAX_CERT_BYTES,
                                display(cert_name), 'signature file')
        notes.extend(signature.check(path, display(cert_name), cert_data,
                                     mf_name, mf_data, policy))
    else:
        signature.check_unsigned(path, policy)

    reserved = {ovf_name, mf_name, cert_name}
    entries = {n: ('member', raw_name) for n, raw_name in local.items()
               if n not in reserved}
    bounds = {}
    for placed in desc.placed:
        file_id, cap = placed.disk.file_id, placed.disk.capacity
        if file_id is not None:
            # A disk file holds at most its capacity plus metadata.
            bound = None if cap is None else cap + cap // 8 + 64 * MiB
            if bound is None or bounds.get(file_id, 0) is None:
                bounds[file_id] = None
            else:
                bounds[file_id] = max(bound, bounds.get(file_id, 0))
    disk_files = {}
    for placed in desc.placed:
        file_id = placed.disk.file_id
        if file_id is None or file_id in disk_files:
            continue
        disk_files[file_id] = _file_entry(desc.files[file_id], raw, local,
                                          reserved, entries, listed,
                                          ovf_display, word, notes,
                                          bounds[file_id])

    container = OvaContainer(path, raw, entries, display, limits,
                             is_directory=kind == 'ovf')
    try:
        disks = [_disk_source(kind, container, placed, disk_files, limits,
                              ovf_display, notes)
                 for placed in desc.placed]
    except BaseException:
        container.close()
        raise
    for note in notes:
        LOG.warning('%s', note)
    return vm.Vm(path, kind, disks, facts=desc.vm, notes=notes,
                 closer=container.close)


def _file_entry(ref, raw, local, reserved, entries, listed, ovf_display,
                word, notes, bound):
    """Find the members of a disk's file; add its logical entry; return
    its logical name."""
    what = 'file %r (%r)' % (ref.id, ref.href)
    chosen = None
    for cand in ref.names:
        if cand in reserved:
            raise exception.InvalidArchive(
                path=ovf_display, reason='%s is the descriptor, manifest or '
                'certificate, not a disk' % what)
        if ref.chunk_size is not None:
            if cand + CHUNK_SUFFIX % 0 in local:
                chosen = cand
                break
        elif cand in local:
            chosen = cand
            break
    if chosen is None:
        raise exception.InvalidArchive(
            path=ovf_display, reason='%s of a disk is missing from the %s%s'
            % (what, word, ' (no %s chunk)' % (ref.href + CHUNK_SUFFIX % 0)
               if ref.chunk_size is not None else ''))
    if ref.chunk_size is not None:
        if chosen in local:
            raise exception.InvalidArchive(
                path=ovf_display, reason='%s: both %r and its chunks are '
                'present' % (what, chosen))
        pieces = []
        while chosen + CHUNK_SUFFIX % len(pieces) in local:
            pieces.append(chosen + CHUNK_SUFFIX % len(pieces))
        sizes = [raw.open_view(local[p]).size for p in pieces]
        for i, size in enumerate(sizes):
            last = i == len(sizes) - 1
            if size > ref.chunk_size or (not last and size != ref.chunk_size)\
                    or size == 0:
                raise exception.InvalidArchive(
                    path=ovf_display, reason='%s: chunk %r holds %d bytes; '
                    'ovf:chunkSize is %d' % (what, pieces[i], size,
                                             ref.chunk_size))
        total = sum(sizes)
        if ref.size is not None and ref.size != total and \
                ref.compression is None:
            raise exception.InvalidArchive(
                path=ovf_display, reason='%s: ovf:size says %d bytes, its %d '
                'chunks hold %d' % (what, ref.size, len(pieces), total))
        for p in pieces:
            entries.pop(p, None)
        entry = ('chunks', [local[p] for p in pieces])
        covered = pieces
    else:
        size = raw.open_view(local[chosen]).size
        if ref.size is not None and ref.size != size and \
                ref.compression is None:
            raise exception.InvalidArchive(
                path=ovf_display, reason='%s: ovf:size says %d bytes, the '
                'file holds %d' % (what, ref.size, size))
        entry = ('member', local[chosen])
        covered = [chosen]
    if ref.compression == 'gzip':
        entry = ('gzip', entry, bound)
    entries[chosen] = entry
    if listed is not None:
        missing = [c for c in covered if c not in listed]
        if missing:
            notes.append('%s: the manifest does not cover %s'
                         % (ovf_display, ', '.join(missing[:4])))
    return chosen


def check_size(name, what, size, limits):
    """Refuse a disk of ``size`` bytes above ``max_virtual_size_gib``."""
    if size > limits.max_virtual_size:
        raise exception.InvalidImage(
            path=name, reason='%s of %d bytes exceeds the limit of %d bytes '
            '(max_virtual_size_gib)' % (what, size, limits.max_virtual_size))


def _disk_source(kind, container, placed, disk_files, limits, ovf_display,
                 notes):
    disk = placed.disk
    if disk.capacity is not None:
        check_size(ovf_display, 'disk %r: ovf:capacity' % disk.id,
                   disk.capacity, limits)
    if disk.file_id is None:
        name, chain = blank.blank_chain(ovf_display, disk)
    else:
        logical = disk_files[disk.file_id]
        chain = layer_chain.resolve(container, logical, limits)
        leaf_format = chain.leaf.format_name
        name = container.display_name(logical)
        if disk.format and disk.format != leaf_format:
            raise exception.InvalidImage(
                path=name, reason='ovf:format of disk %r says %s but the '
                'file holds a %s disk: refused' % (disk.id, disk.format,
                                                   leaf_format))
        check_size(name, 'virtual size', chain.virtual_size, limits)
        if disk.capacity is not None and disk.capacity != chain.virtual_size:
            notes.append('%s: ovf:capacity of disk %s is %d bytes, the '
                         'disk holds %d: the disk file is used as it is'
                         % (name, disk.id, disk.capacity,
                            chain.virtual_size))
    return vm.ChainDisk(name, kind, chain, disk_id=disk.id,
                        controller=placed.controller)
