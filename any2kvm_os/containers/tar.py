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

"""Safe reading of tar archives (plain, or compressed and read in one pass).

Every member is screened before it is used: regular files only (no links,
devices or FIFOs), no absolute names, no ``..``, no duplicates, a bounded
number of members and a bounded total size.  Names are normalised by
dropping leading ``./``.  Nothing is ever extracted to a path taken from
the archive.
"""

import contextlib
import io
import os
import posixpath
import tarfile

from any2kvm_os import compression
from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os.containers import base


def is_compressed(view):
    """The file is compressed (gzip, bzip2, xz or zstd)."""
    return compression.sniff_view(view) is not None


def looks_like_tar(view):
    """A plain tar: a header block with a valid checksum at offset 0."""
    block = view.pread(512, 0)
    if len(block) < 512:
        return False
    try:
        tarfile.TarInfo.frombuf(block, 'utf-8', 'surrogateescape')
    except tarfile.HeaderError:
        return False
    return True


class MemberScreen(object):
    """Screens the members of one archive as they are met."""

    def __init__(self, archive, limits):
        self.archive = archive
        self.limits = limits
        self.seen = set()
        self.count = 0
        self.total = 0

    def check(self, ti):
        """Return the normalised name of a regular member, None for a
        directory, or raise :class:`InvalidArchive`."""
        raw = ti.name
        name = raw
        while name.startswith('./'):
            name = name[2:]
        name = name.rstrip('/') if ti.isdir() else name

        def bad(reason):
            return exception.InvalidArchive(
                path=self.archive, reason='member %r: %s' % (raw, reason))

        self.count += 1
        if self.count > self.limits.max_archive_members:
            raise exception.InvalidArchive(
                path=self.archive, reason='more than %d members'
                % self.limits.max_archive_members)
        if raw.startswith('/') or posixpath.isabs(name):
            raise bad('absolute name')
        if '..' in name.split('/'):
            raise bad('name leads outside the archive (..)')
        if '\0' in name:
            raise bad('NUL in name')
        if ti.issym() or ti.islnk():
            raise bad('links are refused')
        if ti.isdir():
            return None
        if not ti.isreg():
            raise bad('not a regular file (device, FIFO or special '
                      'member)')
        if ti.issparse():
            raise bad('GNU sparse members are not supported')
        if name in self.seen or name == '':
            raise bad('duplicate name')
        self.seen.add(name)
        self.total += ti.size
        if self.total > self.limits.max_archive_bytes:
            raise exception.InvalidArchive(
                path=self.archive, reason='members add up to more than %d '
                'bytes' % self.limits.max_archive_bytes)
        return name


class PlainTarContainer(base.Container):
    """An uncompressed tar: members are read in place, never copied."""

    def __init__(self, path, limits):
        super(PlainTarContainer, self).__init__(path)
        self._file = open(path, 'rb')
        size = os.fstat(self._file.fileno()).st_size
        self._members = {}
        screen = MemberScreen(path, limits)
        try:
            with tarfile.open(fileobj=self._file, mode='r:') as tf:
                while True:
                    ti = tf.next()
                    if ti is None:
                        break
                    name = screen.check(ti)
                    if name is None:
                        continue
                    if ti.offset_data + ti.size > size:
                        raise exception.InvalidArchive(
                            path=path, reason='member %r is truncated'
                            % ti.name)
                    self._members[name] = (ti.offset_data, ti.size)
        except tarfile.TarError as e:
            self._file.close()
            raise exception.InvalidArchive(path=path,
                                           reason='bad tar: %s' % e)
        except Exception:
            self._file.close()
            raise

    def member_names(self):
        return sorted(self._members)

    def _open(self, name):
        offset, size = self._members[name]
        return fileio.FileView(self._file.fileno(), self.display_name(name),
                               base=offset, size=size, owner=self._file)

    def display_name(self, name):
        return '%s:%s' % (self.path, name)

    def close(self):
        super(PlainTarContainer, self).close()
        self._file.close()


def _stream_errors():
    return (tarfile.TarError,) + compression.stream_errors()


def stream_error(path, e):
    """An archive error found while reading, as a one-line error."""
    if isinstance(e, OSError) and e.errno is not None:
        return e
    return exception.InvalidArchive(
        path=path, reason='damaged or truncated archive: %s'
        % (e or 'no data'))


@contextlib.contextmanager
def archive_errors(path):
    """Decompression and tar errors met while reading the archive at
    ``path`` in one pass become one-line InvalidArchive errors; other
    OSErrors (a real I/O error) pass."""
    try:
        yield
    except compression.zstd_errors() as e:
        raise exception.InvalidArchive(
            path=path, reason='bad or truncated zstd archive: %s' % e)
    except (tarfile.TarError,) + compression.stream_errors() as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        raise exception.InvalidArchive(
            path=path, reason='bad or truncated archive: %s' % e)


def check_end(tf, path, trailing_limit=None):
    """After the last member of a tar read in one pass (``tf``, mode
    'r|'): the end-of-archive marker must be there, and nothing but zeros
    (at most ``trailing_limit`` bytes of them, if given) may follow.
    Reading to the end also makes a decompressor verify its checksum."""
    stream = tf.fileobj
    if stream.tell() - tf.offset < tarfile.BLOCKSIZE:
        raise exception.InvalidArchive(
            path=path, reason='truncated: the archive ends without its '
            'end-of-archive marker')
    seen = 0
    while True:
        data = stream.read(1 << 20)
        if not data:
            break
        seen += len(data)
        if data.count(0) != len(data) or (
                trailing_limit is not None and seen > trailing_limit):
            raise exception.InvalidArchive(
                path=path, reason='data after the end-of-archive marker (a '
                'damaged tar header?)')


def one_pass(path, fileobj, trailing_limit=None):
    """Yield (TarInfo, TarFile) for every member of the tar read from
    ``fileobj`` in one pass (the caller reads a member's data before
    asking for the next), holding no list of members; then check the end
    of the archive (:func:`check_end`)."""
    with archive_errors(path):
        tf = tarfile.open(fileobj=fileobj, mode='r|', bufsize=1 << 20)
    while True:
        with archive_errors(path):
            ti = tf.next()
            # A long archive: keep no TarInfo of the members passed.
            del tf.members[:]
        if ti is None:
            break
        yield ti, tf
    with archive_errors(path):
        check_end(tf, path, trailing_limit)


class CheckedReader(object):
    """Member reads that turn decompression errors into InvalidArchive."""

    def __init__(self, path, member):
        self.path = path
        self.member = member

    def read(self, n):
        try:
            return self.member.read(n)
        except _stream_errors() as e:
            raise stream_error(self.path, e)


def iter_stream_members(path, fileobj, limits):
    """Yield (name, ForwardStream) for the regular members of a tar read
    in one pass (compressed or not).  Each stream must be consumed (or
    drained) before the next member is asked for.  After the last member
    the compressed stream is read to its end, so that its checksums are
    verified before the caller commits anything."""
    screen = MemberScreen(path, limits)
    raw = compression.open_reader(path, fileobj)
    try:
        with tarfile.open(fileobj=raw, mode='r|') as tf:
            for ti in tf:
                name = screen.check(ti)
                if name is None:
                    continue
                member = CheckedReader(path, tf.extractfile(ti))
                stream = fileio.ForwardStream(member, '%s:%s' % (path, name),
                                              ti.size)
                yield name, stream
                stream.drain()
        # The end-of-archive blocks come before the compressed stream's
        # trailer: read it, bounded, so that its CRC is checked (and a
        # download's size and checksum, at its end).
        budget = limits.max_archive_bytes
        while True:
            chunk = raw.read(1 << 20)
            if not chunk:
                break
            budget -= len(chunk)
            if budget < 0:
                raise exception.InvalidArchive(
                    path=path, reason='too much data after the end of the '
                    'archive')
    except _stream_errors() as e:
        raise stream_error(path, e)


def normalise(name):
    """A member name without its leading ``./`` parts."""
    while name.startswith('./'):
        name = name[2:]
    return name


#: Directory entries skipped before the first member (``./`` and the
#: directories above it, as ``tar -C dir -czf x.tgz .`` writes them).
MAX_LEADING_DIRECTORIES = 16


def head_first_member(head):
    """The TarInfo of the first member of an archive (plain, gzip, bzip2,
    xz or zstd) of which ``head`` are the first bytes, after a pax or GNU
    long-name header if any, and after leading directory entries (``./``,
    ``vm/``: a directory holds no data, and the readers skip them); None
    when that cannot be told from them.  Only headers are read: nothing
    is extracted."""
    try:
        block = compression.decompress_head(head, 16 << 10)
        tf = tarfile.open(fileobj=io.BytesIO(block), mode='r|')
        ti = tf.next()
        for _ in range(MAX_LEADING_DIRECTORIES):
            if ti is None or not ti.isdir():
                break
            ti = tf.next()
        return ti
    except (tarfile.TarError, ValueError, ImportError) + \
            compression.stream_errors():
        return None
