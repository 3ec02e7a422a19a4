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

"""The members of an XVA: their names, order, chunks and checksums.

After ``ova.xml`` the data of each VDI follows as members
``<VDI id>/00000000``, ``<VDI id>/00000001`` ... each holding one 1 MiB
chunk of the disk and followed at once by its checksum member,
``.checksum`` (SHA-1, hex) or ``.xxhash`` (XXH64, hex, XenServer 8).
:class:`Layout` checks the members one by one, in archive order, and
places each chunk on its disk; :func:`verify_chunk` checks a chunk
against its checksum; :func:`member_screen` screens the tar headers.
The rules are those of the package docstring
(:mod:`any2kvm_os.containers.xva`).
"""

import collections
import copy
import hashlib
import re

import xxhash

from any2kvm_os.containers import tar
from any2kvm_os.containers.xva import metadata
from any2kvm_os import exception

CHUNK = 1 << 20

SHA1 = 'sha1'
XXH64 = 'xxh64'
CHECKSUM_EXT = {'.checksum': SHA1, '.xxhash': XXH64}
DIGEST_CHARS = {SHA1: 40, XXH64: 16}

#: ``<VDI id>/<chunk number>[.checksum|.xxhash]``; numbers are "%08d".
MEMBER_RE = re.compile(
    r'^(?P<ref>[^/]+)/(?P<num>[0-9]{8}|[1-9][0-9]{8,11})'
    r'(?P<ext>\.checksum|\.xxhash)?$')

CHUNK_MEMBER = 'chunk'
CHECKSUM_MEMBER = 'checksum'


def member_name(name):
    """A member (or directory) name without leading ``./`` or trailing
    ``/``."""
    return tar.normalise(name).rstrip('/')


def chunk_name(ref, slot):
    """The member name of chunk number ``slot`` of VDI ``ref``."""
    return '%s/%08d' % (ref, slot)


Chunk = collections.namedtuple('Chunk', ['ref', 'number', 'pos', 'length',
                                         'name'])
Chunk.__doc__ = """A chunk member: its VDI, number, disk offset, size."""


class Layout(object):
    """Checks the members of an XVA one by one, in archive order, and
    places each chunk on its disk (see the module docstring)."""

    def __init__(self, archive, vdi_sizes):
        self.archive = archive
        self.sizes = vdi_sizes
        self._last = {}       # ref -> last chunk number
        self._head = set()    # refs whose first chunk (offset 0) came
        self._tail = set()    # refs whose last chunk (to the end) came
        self._empty = {}      # ref -> empty chunks so far
        self._current = None
        self._done = set()
        self.pending = None   # the chunk whose checksum must come next

    def _bad(self, name, reason):
        return exception.InvalidArchive(
            path=self.archive, reason='member %r: %s' % (name, reason))

    def _no_checksum(self):
        return self._bad(self.pending.name, 'chunk without its checksum '
                         'member (.checksum or .xxhash must follow it)')

    def directory(self, name):
        if self.pending:
            raise self._no_checksum()
        name = member_name(name)
        if name and name not in self.sizes:
            raise self._bad(name, 'directory that is no VDI of ova.xml')

    def member(self, name, size):
        """Return (CHUNK_MEMBER, Chunk) or (CHECKSUM_MEMBER, (Chunk,
        algorithm)); raise InvalidArchive for anything else."""
        m = MEMBER_RE.match(name)
        if not m:
            if self.pending:
                raise self._no_checksum()
            raise self._bad(name, 'not part of an XVA (ova.xml first, then '
                            '<VDI id>/<8-digit chunk number> members and '
                            'their .checksum or .xxhash)')
        ref, number, suffix = m.group('ref'), int(m.group('num')), \
            m.group('ext')
        if ref not in self.sizes:
            if self.pending:
                raise self._no_checksum()
            raise self._bad(name, 'no VDI %s in ova.xml' % ref)
        if suffix:
            chunk = self.pending
            if chunk is None or chunk.ref != ref or chunk.number != number:
                raise self._bad(name, 'checksum member without its chunk '
                                'just before it')
            algo = CHECKSUM_EXT[suffix]
            if size != DIGEST_CHARS[algo]:
                raise self._bad(name, 'holds %d bytes: a %s checksum is %d '
                                'hex digits' % (size, algo,
                                                DIGEST_CHARS[algo]))
            self.pending = None
            return CHECKSUM_MEMBER, (chunk, algo)
        if self.pending:
            raise self._no_checksum()
        if ref != self._current:
            if ref in self._done:
                raise self._bad(name, 'the chunks of %s are not together '
                                'in the archive' % ref)
            if self._current is not None:
                self._done.add(self._current)
            self._current = ref
        last = self._last.get(ref, -1)
        if number <= last:
            raise self._bad(name, 'chunk number not above the previous one '
                            '(%08d): duplicate or out of order' % last)
        self._last[ref] = number
        if size > CHUNK:
            raise self._bad(name, 'chunk of %d bytes: chunks hold at most '
                            '1 MiB' % size)
        vsize = self.sizes[ref]
        pos = (number - self._empty.get(ref, 0)) * CHUNK
        if pos > vsize or (size and pos == vsize):
            raise self._bad(name, 'chunk %d of %s lies beyond the disk size '
                            '(%d bytes)' % (number, ref, vsize))
        if size == 0:
            # xapi's keep-alive: takes a number, not a place on the disk.
            self._empty[ref] = self._empty.get(ref, 0) + 1
        elif size != min(CHUNK, vsize - pos):
            raise self._bad(name, 'chunk of %d bytes at disk offset %d: a '
                            'chunk holds 1 MiB, or the rest of the disk at '
                            'its end (%d bytes here)'
                            % (size, pos, min(CHUNK, vsize - pos)))
        elif pos == 0:
            self._head.add(ref)
        if size and pos + size == vsize:
            self._tail.add(ref)
        self.pending = Chunk(ref, number, pos, size, name)
        return CHUNK_MEMBER, self.pending

    def finish(self):
        if self.pending:
            raise self._no_checksum()

    def check_present(self, vdi):
        """xapi and xva-img always write a disk's first and last chunk:
        a disk without any chunk lost its data (a directory left out when
        the archive was packed), it is no all-zero disk."""
        if vdi.ref not in self._last:
            raise exception.InvalidArchive(
                path=self.archive, reason='no chunk of disk %s (userdevice '
                '%s) in the archive: its data is missing (XVA writers always '
                'store the first and the last chunk)'
                % (vdi.ref, vdi.userdevice))
        size = self.sizes[vdi.ref]
        if not size:
            return
        if vdi.ref not in self._head:
            raise exception.InvalidArchive(
                path=self.archive, reason='disk %s (userdevice %s) lacks its '
                'first chunk (%s, disk offset 0): XVA writers always store '
                'it, the archive is damaged'
                % (vdi.ref, vdi.userdevice, chunk_name(vdi.ref, 0)))
        if vdi.ref not in self._tail:
            slot = (size - 1) // CHUNK
            raise exception.InvalidArchive(
                path=self.archive, reason='disk %s (userdevice %s) lacks its '
                'last chunk (%s, disk offset %d): XVA writers always store '
                'it, the archive is cut short or a tar header is damaged'
                % (vdi.ref, vdi.userdevice,
                   chunk_name(vdi.ref, slot + self._empty.get(vdi.ref, 0)),
                   slot * CHUNK))


def verify_chunk(archive, chunk, algo, stored, data):
    """Raise InvalidImage unless ``data`` hashes to the ``stored`` hex."""
    where = '%s:%s' % (archive, chunk.name)
    try:
        text = stored.decode('ascii')
    except UnicodeDecodeError:
        text = ''
    if (len(text) != DIGEST_CHARS[algo]
            or not re.match(r'^[0-9A-Fa-f]+$', text)):
        raise exception.InvalidImage(
            path=where, reason='unreadable %s checksum %r' % (algo, stored))
    if algo == SHA1:
        actual = hashlib.sha1(data).hexdigest()
    else:
        actual = xxhash.xxh64(data).hexdigest()
    if text.lower() != actual:
        raise exception.InvalidImage(
            path=where, reason='checksum mismatch: its %s member says %s, '
            'the chunk hashes to %s' % (
                '.checksum' if algo == SHA1 else '.xxhash', text, actual))


class _Screen(tar.MemberScreen):
    """tar's member screen, without its set of names: an XVA holds two
    members per MiB of data, and the layout already refuses every
    duplicate (strictly increasing chunk numbers, each VDI's members
    together, a checksum only right after its chunk, ova.xml only
    first)."""

    def check(self, ti):
        name = super(_Screen, self).check(ti)
        self.seen.clear()
        return name


def member_bound(vdi_sizes):
    """Most members a well-formed archive with these VDIs can hold:
    ova.xml, a directory entry per VDI, and per VDI slot a chunk, a
    keep-alive chunk and their checksums."""
    n = 1
    for size in vdi_sizes.values():
        n += 1 + 4 * (-(-size // CHUNK) + 1)
    return n


def member_screen(archive, limits, vdi_sizes):
    """The member screen of an XVA with these VDIs: tar's checks, with
    room for every member the VDIs may need."""
    lim = copy.copy(limits)
    lim.max_archive_members = max(limits.max_archive_members,
                                  member_bound(vdi_sizes))
    return _Screen(archive, lim)


def _leading_directory(ti):
    """A directory entry before ova.xml (the ``./`` that ``tar -C dir -cf
    x.xva .`` writes first): it holds nothing and is skipped, unless its
    name leads outside the archive."""
    name = member_name(ti.name)
    return (ti.isdir() and not name.startswith('/')
            and '..' not in name.split('/'))


def first_member(next_member, info=lambda item: item):
    """The first item ``next_member()`` (a TarFile's ``next``) returns
    after at most :data:`~any2kvm_os.containers.tar.MAX_LEADING_DIRECTORIES`
    directory entries; None at the end.  ``info(item)``: its TarInfo."""
    item = next_member()
    for _ in range(tar.MAX_LEADING_DIRECTORIES):
        if item is None or not _leading_directory(info(item)):
            break
        item = next_member()
    return item


def is_ova_xml(ti):
    """ova.xml, at the top of the archive or in a directory (which
    :func:`check_first_member` refuses by name)."""
    return member_name(ti.name).rsplit('/', 1)[-1] == metadata.OVA_XML


def check_first_member(path, ti, screen):
    """The first member after leading directory entries (:func:`first_member`)
    must be ova.xml, a regular file of bounded size (``screen``, if given,
    checks it too)."""
    name = screen.check(ti) if screen else member_name(ti.name)
    if member_name(ti.name) != metadata.OVA_XML:
        if is_ova_xml(ti):
            raise exception.InvalidArchive(
                path=path, reason='%s lies in a directory (%r): an XVA '
                'holds it, and its disks, at the top of the archive'
                % (metadata.OVA_XML, ti.name))
        raise exception.InvalidArchive(
            path=path, reason='not an XVA: the first member is %r, not %s'
            % (ti.name, metadata.OVA_XML))
    if name != metadata.OVA_XML or not ti.isreg():
        raise metadata.metadata_error(path, 'not a regular file')
    if ti.size > metadata.MAX_OVA_XML_BYTES:
        raise metadata.metadata_error(
            path, 'member of %d bytes: larger than the %d bytes allowed'
            % (ti.size, metadata.MAX_OVA_XML_BYTES))
