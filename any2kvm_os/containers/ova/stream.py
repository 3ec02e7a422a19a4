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

"""OVAs read as they arrive (a Glance download): one pass per use.

An OVA's descriptor is its first member (the OVF spec requires it), so a
first, short pass reads the ``.ovf``, the ``.mf`` when it comes next, and
the head of the first disk file when that comes next; it stops there (a
download is abandoned).  The VM is described from the descriptor exactly
as :func:`.package.open_ova` does (same facts, disk order,
names, ``disk_id`` and controller).

Each disk is then written in a pass of its own over the whole archive: its
file is read as it arrives (a streamOptimized VMDK through
:class:`any2kvm_os.formats.vmdk.StreamLayer`, a dynamic VHD through
:class:`any2kvm_os.formats.vhd.StreamLayer`; either one may be
gzip-compressed, ``ovf:compression="gzip"``, except a VHD), every member the
manifest may list is hashed as it goes by, and at the end of the archive,
before ``write_to`` returns, the manifest is verified as the local path
verifies it (every listed file present and matching each of its digests,
the descriptor unchanged), and so are the end of the archive and (for a
download) its size and checksum.  Any mismatch raises: the caller aborts
its writer and nothing is committed.

What cannot be read in one pass (a descriptor that is not the first
member, a file split in chunks, a VMDK that is not
streamOptimized or that has a parent, a fixed or differencing VHD, any
other format) goes to scratch instead: ``fallback()`` (given by the
caller) opens the whole image the scratch way.  The decision is made
before anything is written: at open when the first disk's file comes right
after the descriptor, else when a disk's pass reaches its file.  An INFO
line says so.

Digests: when the manifest comes before the disk files (ovftool's
layout) each member is hashed only with the algorithms it lists; when it
comes after them (VirtualBox puts it last) the members are hashed with
SHA1, SHA256 and SHA512, the algorithms exporters use; a manifest that
then names another algorithm for a disk file is refused (nothing is
committed; the error says so).

Signatures (:mod:`.signature`): a ``.cert`` is checked when it arrives if
the manifest came before it (ovftool's layout: descriptor, manifest,
certificate, disks), so that a bad signature is refused before any disk
is read; else, and again in every pass, at the end, before ``write_to``
returns.  An unsigned package under ``ova_signature_policy = require`` is
refused at the end of the pass (nothing is committed).
"""

import bisect
import contextlib
import hashlib
import logging
import posixpath
import zlib

from any2kvm_os import compression
from any2kvm_os.containers.ova import blank
from any2kvm_os.containers.ova import descriptor
from any2kvm_os.containers.ova import package
from any2kvm_os.containers.ova import signature
from any2kvm_os.containers import tar
from any2kvm_os.containers import xenserver
from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os.formats import vhd
from any2kvm_os.formats import vmdk
from any2kvm_os import vm

LOG = logging.getLogger(__name__)

MiB = 1 << 20
BLOCK = 512
KIND = 'ova'
#: Digests computed when the manifest's algorithms are not known yet.
DEFAULT_ALGOS = ('SHA1', 'SHA256', 'SHA512')
READ_CHUNK = 4 * MiB


class NotStreamable(Exception):
    """The OVA (or one disk of it) cannot be read in one pass; raised
    before anything is written."""


def head_is_ova(head):
    """Whether the first bytes of a tar (plain, or compressed whole:
    gzip, bzip2, xz, zstd) start with a ``.ovf`` member: an OVA, which can
    be read as it arrives."""
    ti = tar.head_first_member(head)
    return (ti is not None and ti.isreg()
            and tar.normalise(ti.name).lower().endswith('.ovf'))


#: The files an OVA holds besides its descriptor (manifest, signature,
#: disks, ISO and NVRAM files, as ovftool, VirtualBox and XenServer name
#: them): a compressed tar that starts with one is taken for an OVA whose
#: descriptor comes later.
OVA_MEMBER_SUFFIXES = ('.mf', '.cert', '.vmdk', '.vhd', '.vhdx', '.iso',
                       '.img', '.nvram')


def head_may_be_ova(head):
    """Whether the first bytes of a compressed tar start with a file an
    OVA holds (:data:`OVA_MEMBER_SUFFIXES`) that no other container
    claims (a XenServer archive's ``0.vhd`` ... ``n.vhd``, even in a
    directory, which that container refuses by name): an OVA whose
    ``.ovf`` is not first, as ``tar -czf vm.ova.gz .`` packs it in
    directory order.  It is read through scratch (the plain tar then
    finds its descriptor, or refuses the archive in one line)."""
    ti = tar.head_first_member(head)
    if ti is None or not ti.isreg():
        return False
    name = tar.normalise(ti.name).lower()
    return (name.endswith(OVA_MEMBER_SUFFIXES) and not
            xenserver.MEMBER_RE.match(posixpath.basename(name)))


def compressed_looks_like_ova(path):
    """A compressed file (an ``.ova.gz``) whose tar starts with a ``.ovf``
    member, or with another file an OVA holds (:func:`head_may_be_ova`):
    only its first bytes are read and decompressed."""
    with open(path, 'rb') as f:
        head = compression.read_full(f, fileio.ChunkReader.HEAD)
    return compression.sniff(head) is not None and (
        head_is_ova(head) or head_may_be_ova(head))


def _decompressed(path, raw):
    """``raw`` (a file object of the whole archive) as a tar: decompressed
    when the whole OVA was compressed, its errors one-line refusals."""
    f = compression.open_reader(path, raw)
    return raw if f is raw else tar.CheckedReader(path, f)


# ---------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------

class _Hashing(object):
    """A file object that hashes what is read through it."""

    def __init__(self, fileobj, hashers):
        self.fileobj = fileobj
        self.hashers = hashers

    def read(self, n):
        data = self.fileobj.read(n)
        for h in self.hashers:
            h.update(data)
        return data


class _Gunzip(object):
    """A file object of the gzip data read from ``raw`` (a ForwardStream),
    checked as :mod:`.package` checks one it decompresses into scratch: one or
    more gzip members, then only zero padding; at most ``budget`` bytes."""

    def __init__(self, raw, name, budget):
        self.raw = raw
        self.name = name
        self.budget = budget
        self.out = 0
        self._d = None
        self._pending = b''
        self._done = False

    def _bad(self, reason):
        return exception.InvalidImage(path=self.name, reason=reason)

    def _more(self):
        n = min(READ_CHUNK, self.raw.size - self.raw.pos)
        return self.raw.read_exact(n) if n > 0 else b''

    def read(self, n):
        parts = []
        while n > 0 and not self._done:
            if not self._pending:
                self._pending = self._more()
            d = self._d
            if d is None or d.eof:
                if not self._pending:
                    if d is None:
                        raise self._bad('ovf:compression says gzip, but the '
                                        'file is empty')
                    self._done = True
                    break
                if len(self._pending) < 2:
                    self._pending += self._more()
                if self._pending[:2] != compression.GZIP_MAGIC:
                    if d is None:
                        raise self._bad('ovf:compression says gzip, but the '
                                        'file is not gzip data')
                    # After the last member: only zero padding may follow.
                    data = self._pending
                    while data:
                        if data.count(0) != len(data):
                            raise self._bad('trailing data after the gzip '
                                            'stream')
                        data = self._more()
                    self._pending = b''
                    self._done = True
                    break
                d = self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                buf = d.decompress(self._pending, min(n, READ_CHUNK))
            except zlib.error as e:
                raise self._bad('bad gzip data: %s' % e)
            self._pending = d.unused_data if d.eof else d.unconsumed_tail
            if not buf and not d.eof and not self._pending:
                more = self._more()
                if not more:
                    raise self._bad('truncated gzip data')
                self._pending = more
            self.out += len(buf)
            if self.out > self.budget:
                raise self._bad('decompresses to more than %d bytes: more '
                                'than the capacity of its disk allows'
                                % self.budget)
            parts.append(buf)
            n -= len(buf)
        return b''.join(parts)


def _open_layer(stream, name, compressed):
    """(format, layer) of a disk file at the start of ``stream``, its
    headers read; raise NotStreamable (before anything is written) when
    it cannot be read in one pass."""
    head = stream.peek(BLOCK)
    if head[:4] == vmdk.KDMV_MAGIC and len(head) == BLOCK:
        hdr = vmdk.parse_kdmv_header(head, name)
        if not (hdr.flags & vmdk.FLAG_COMPRESSED
                and hdr.flags & vmdk.FLAG_MARKERS) or hdr.capacity == 0:
            raise NotStreamable('%s is a VMDK that is not streamOptimized'
                                % name)
        layer = vmdk.StreamLayer(name, head, stream.size)
        layer.read_headers(stream)
        if layer.parent_id is not None:
            raise NotStreamable('%s is a VMDK delta (it has a parent)' % name)
        return 'vmdk', layer
    if head[:8] == vhd.FOOTER_COOKIE and not compressed:
        layer = vhd.StreamLayer(name, stream.peek(vhd.FOOTER_SIZE),
                                stream.size)
        if layer.fixed or layer.footer.disk_type != vhd.DISK_DYNAMIC:
            raise NotStreamable('%s is a VHD that is not dynamic' % name)
        layer.read_headers(stream)
        return 'vhd', layer
    raise NotStreamable('%s is neither a streamOptimized VMDK nor a dynamic '
                        'VHD' % name)


class _Written(object):
    """The grains written so far, as sorted disjoint runs: a grain written
    twice (a corrupt stream) is refused.  Runs that follow each other are
    merged, so a stream in disk order (every writer's) keeps one run."""

    def __init__(self, name):
        self.name = name
        self.starts = []
        self.ends = []

    def add(self, a, b):
        i = bisect.bisect_right(self.starts, a)
        if i and self.ends[i - 1] > a or \
                i < len(self.starts) and self.starts[i] < b:
            raise exception.InvalidImage(
                path=self.name, reason='the grain at disk offset %d comes '
                'twice in the stream: corrupt' % a)
        if i and self.ends[i - 1] == a:
            self.ends[i - 1] = b
            if i < len(self.starts) and self.starts[i] == b:
                self.ends[i - 1] = self.ends.pop(i)
                self.starts.pop(i)
        elif i < len(self.starts) and self.starts[i] == b:
            self.starts[i] = a
        else:
            self.starts.insert(i, a)
            self.ends.insert(i, b)


# ---------------------------------------------------------------------------
# the archive
# ---------------------------------------------------------------------------

class _Plan(object):
    """How one disk file is read: its FileRef and what bounds it."""

    def __init__(self, ref, bound):
        self.ref = ref
        self.bound = bound


class OvaStream(object):
    """An OVA read through ``opener()`` (a new file object of the whole
    archive per pass)."""

    kind = KIND

    def __init__(self, path, limits, opener):
        self.path = path
        self.limits = limits
        self._opener = opener
        self.first_layer = None     # (plan file id, format, layer)
        self.mf_name = None
        self.mf_data = None
        self.manifest = None
        self.policy = signature.policy_of(limits)
        #: (local name, data) of the .cert, once checked.
        self.cert = None
        self._cert_notes = []
        with contextlib.closing(self._members()) as members:
            self._first_pass(members)

    # -- members -------------------------------------------------------------

    def _members(self):
        """Yield (name, TarInfo, TarFile) for every regular member, in one
        pass; then check that the archive ends properly (reading to the end
        of a download also checks its size and checksum)."""
        path = self.path
        screen = tar.MemberScreen(path, self.limits)
        with contextlib.closing(self._opener()) as raw:
            f = _decompressed(path, raw)
            # The 64 MiB of trailing zeros allowed bound the pass.
            for ti, tf in tar.one_pass(path, f, trailing_limit=64 * MiB):
                name = screen.check(ti)
                if name is not None:
                    yield name, ti, tf

    def _read_small(self, tf, ti, limit, name, what):
        if ti.size > limit:
            raise exception.InvalidImage(
                path=name, reason='%s is %d bytes: more than %d, refused as '
                'absurd' % (what, ti.size, limit))
        with tar.archive_errors(self.path):
            data = tf.extractfile(ti).read()
        if len(data) != ti.size:
            raise exception.InvalidImage(path=name,
                                         reason='truncated %s' % what)
        return data

    def display(self, name):
        return '%s:%s' % (self.path, self.prefix + name)

    def _local(self, name):
        """The name relative to the descriptor's directory, or None."""
        if not name.startswith(self.prefix):
            return None
        rest = name[len(self.prefix):]
        return None if '/' in rest else rest

    # -- the first pass -------------------------------------------------------

    def _first_pass(self, members):
        path = self.path
        try:
            name, ti, tf = next(members)
        except StopIteration:
            raise exception.InvalidArchive(path=path, reason='empty archive')
        if not name.lower().endswith('.ovf'):
            # The OVF spec wants the descriptor first, but a plain
            # ``tar -czf x.ova.gz .`` lists the files in directory order:
            # what the plain .ova accepts goes through scratch.
            raise NotStreamable('the .ovf descriptor is not the first '
                                'member (%r comes first)' % ti.name)
        prefix = posixpath.dirname(name)
        self.prefix = prefix + '/' if prefix else ''
        self.ovf_name = name[len(self.prefix):]
        self.stem = self.ovf_name[:-len('.ovf')]
        ovf_display = self.ovf_display = self.display(self.ovf_name)
        data = self.ovf_data = self._read_small(
            tf, ti, descriptor.MAX_OVF_BYTES, ovf_display, 'descriptor')
        self._ovf_sha = hashlib.sha256(data).digest()
        nxt = next(members, None)
        if nxt is not None and (self._local(nxt[0]) or '').lower().endswith(
                '.mf'):
            self.mf_name = self._local(nxt[0])
            self.mf_data = self._read_small(
                nxt[2], nxt[1], descriptor.MAX_MANIFEST_BYTES,
                self.display(self.mf_name), 'manifest')
            self.manifest = self._parse_manifest(self.mf_name, self.mf_data)
            self._check_ovf_digest(self.manifest)
            nxt = next(members, None)
            rest = self._local(nxt[0]) if nxt is not None else None
            if rest is not None and rest.lower().endswith('.cert'):
                cert_data = self._read_small(
                    nxt[2], nxt[1], signature.MAX_CERT_BYTES,
                    self.display(rest), 'signature file')
                self._cert_notes = self._check_cert(rest, cert_data,
                                                    self.mf_name,
                                                    self.mf_data)
                nxt = next(members, None)
        else:
            LOG.debug('%s: the manifest does not follow the descriptor',
                      path)
        desc = self.desc = descriptor.parse(data, ovf_display)
        self.notes = desc.notes
        self.notes.extend(self._cert_notes)
        self.plans = self._plan(desc)
        # The head of the first disk's file when it comes next: its size
        # is then known at once, and a file that cannot be streamed goes
        # to scratch before any disk pass.
        first = next((p for p in desc.placed if p.disk.file_id), None)
        if nxt is not None and first is not None:
            plan = self.plans[first.disk.file_id]
            rest = self._local(nxt[0])
            if rest is not None and rest in plan.ref.names:
                stream = self._disk_stream(nxt[2], nxt[1], rest, plan, ())
                fmt, layer = _open_layer(stream, self.display(rest),
                                         plan.ref.compression == 'gzip')
                self.first_layer = (first.disk.file_id, fmt, layer)

    def _check_cert(self, cert_name, cert_data, mf_name, mf_data):
        """Check a .cert as it arrives; return its warnings."""
        if self.cert == (cert_name, cert_data):
            return []
        notes = signature.check(self.path, self.display(cert_name),
                                cert_data, mf_name, mf_data, self.policy)
        self.cert = (cert_name, cert_data)
        return notes

    def _parse_manifest(self, mf_name, mf_data):
        return descriptor.manifest_by_name(
            descriptor.parse_manifest(mf_data, self.display(mf_name)))

    def _check_ovf_digest(self, manifest):
        for algo, digest in manifest.get(self.ovf_name, ()):
            actual = hashlib.new(descriptor.DIGESTS[algo],
                                 self.ovf_data).hexdigest()
            if actual != digest:
                raise exception.InvalidArchive(
                    path=self.display(self.mf_name), reason='manifest '
                    'mismatch for %s (%s)' % (self.ovf_name, algo))

    def _plan(self, desc):
        plans = {}
        for placed in desc.placed:
            disk = placed.disk
            if disk.capacity is not None:
                package.check_size(self.ovf_display, 'disk %r: ovf:capacity'
                                   % disk.id, disk.capacity, self.limits)
            file_id = disk.file_id
            if file_id is None:
                continue
            ref = desc.files[file_id]
            if ref.chunk_size is not None:
                raise NotStreamable('file %r (%r) is split in chunks'
                                    % (ref.id, ref.href))
            cap = disk.capacity
            bound = (self.limits.max_virtual_size if cap is None
                     else cap + cap // 8 + 64 * MiB)
            if file_id in plans:
                bound = max(bound, plans[file_id].bound)
            plans[file_id] = _Plan(ref, bound)
        return plans

    # -- a disk's pass --------------------------------------------------------

    def _disk_stream(self, tf, ti, rest, plan, hashers):
        """A ForwardStream of the disk file member ``rest`` (decompressed
        when ovf:compression says gzip), hashing the member's bytes."""
        name = self.display(rest)
        ref = plan.ref
        if ref.size is not None and ref.size != ti.size and \
                ref.compression is None:
            raise exception.InvalidArchive(
                path=self.ovf_display, reason='file %r (%r): ovf:size says '
                '%d bytes, the file holds %d' % (ref.id, ref.href, ref.size,
                                                 ti.size))
        raw = fileio.ForwardStream(
            _Hashing(tar.CheckedReader(self.path, tf.extractfile(ti)),
                     hashers), name, ti.size)
        if ref.compression == 'gzip':
            stream = fileio.ForwardStream(_Gunzip(raw, name, plan.bound),
                                          name, plan.bound)
        else:
            stream = raw
        stream.raw = raw
        return stream

    @staticmethod
    def _drain(stream):
        """Consume the rest of a disk file, and of its member."""
        if stream is stream.raw:
            stream.drain()
            return
        while stream.fileobj.read(READ_CHUNK):
            pass
        stream.raw.drain()

    def run(self, file_id, handler):
        """One pass over the archive: ``handler(stream)`` is given the
        disk file of ``file_id`` (a ForwardStream) as it arrives; the
        manifest and the archive are verified at the end."""
        plan = self.plans[file_id]
        seen = {}          # local name -> size
        digests = {}       # local name -> {algo: hex}
        mfs = {}           # local .mf name -> data
        certs = {}         # local .cert name -> data
        handled = []
        ovfs = 0
        with contextlib.closing(self._members()) as members:
            for name, ti, tf in members:
                if name.lower().endswith('.ovf'):
                    ovfs += 1
                    if ovfs == 1:
                        data = self._read_small(
                            tf, ti, descriptor.MAX_OVF_BYTES,
                            self.ovf_display, 'descriptor')
                        if hashlib.sha256(data).digest() != self._ovf_sha:
                            raise exception.InvalidArchive(
                                path=self.ovf_display, reason='changed '
                                'while the archive was being read')
                        continue
                    raise exception.InvalidArchive(
                        path=self.path, reason='holds 2 .ovf descriptors '
                        '(%r, %r): an OVA holds exactly one'
                        % (self.prefix + self.ovf_name, name))
                rest = self._local(name)
                if rest is None:
                    continue
                seen[rest] = ti.size
                if rest.lower().endswith('.mf'):
                    mfs[rest] = self._read_small(
                        tf, ti, descriptor.MAX_MANIFEST_BYTES,
                        self.display(rest), 'manifest')
                    continue
                if rest.lower().endswith('.cert'):
                    data = certs[rest] = self._read_small(
                        tf, ti, signature.MAX_CERT_BYTES,
                        self.display(rest), 'signature file')
                    if len(mfs) == 1:
                        # The manifest came first: check it now, before
                        # a disk is read.
                        (mf_name, mf_data), = mfs.items()
                        for note in self._check_cert(rest, data, mf_name,
                                                     mf_data):
                            LOG.warning('%s', note)
                    continue
                hashers = self._hashers(rest)
                if rest in plan.ref.names and not handled:
                    stream = self._disk_stream(tf, ti, rest, plan,
                                               list(hashers.values()))
                    handler(stream)
                    self._drain(stream)
                    handled.append(rest)
                else:
                    stream = fileio.ForwardStream(
                        _Hashing(tar.CheckedReader(self.path,
                                                   tf.extractfile(ti)),
                                 list(hashers.values())),
                        self.display(rest), ti.size)
                    stream.drain()
                digests[rest] = {a: h.hexdigest()
                                 for a, h in hashers.items()}
        self._verify(seen, digests, mfs, plan, handled, certs)

    def _hashers(self, rest):
        if self.manifest is not None:
            algos = {a for a, _d in self.manifest.get(rest, ())}
        else:
            algos = DEFAULT_ALGOS
        return {a: hashlib.new(descriptor.DIGESTS[a]) for a in algos}

    def _pick(self, seen, ext_):
        found = [n for n in seen if n.lower().endswith(ext_)]
        if self.stem + ext_ in seen:
            return self.stem + ext_
        if len(found) > 1:
            raise exception.InvalidArchive(
                path=self.path, reason='holds %d %s files and none is named '
                'after %r' % (len(found), ext_, self.ovf_name))
        return found[0] if found else None

    def _verify(self, seen, digests, mfs, plan, handled, certs):
        """What the local path checks at open, checked at the end."""
        mf_name = self._pick(seen, '.mf')
        cert_name = self._pick(seen, '.cert')
        word = 'archive'
        if self.mf_name is not None and (
                mf_name != self.mf_name or mfs.get(mf_name) != self.mf_data):
            raise exception.InvalidArchive(
                path=self.display(self.mf_name), reason='changed while the '
                'archive was being read')
        manifest = self.manifest
        if mf_name is not None and manifest is None:
            manifest = self._parse_manifest(mf_name, mfs[mf_name])
            self._check_ovf_digest_of(manifest, mf_name)
        reserved = {self.ovf_name, mf_name, cert_name}
        if manifest is not None:
            mf_display = self.display(mf_name)
            for name, wanted in manifest.items():
                if name == self.ovf_name:
                    continue
                if name not in seen or name == mf_name:
                    raise exception.InvalidArchive(
                        path=mf_display, reason='manifest lists %r, which is '
                        'not a file of the %s' % (name, word))
                got = digests.get(name, {})
                for algo, digest in wanted:
                    if algo not in got:
                        raise exception.InvalidArchive(
                            path=mf_display, reason='manifest lists a %s '
                            'digest for %s, which cannot be checked in one '
                            'pass when the manifest comes after it (only %s)'
                            % (algo, name, ', '.join(DEFAULT_ALGOS)))
                    if got[algo] != digest:
                        raise exception.InvalidArchive(
                            path=mf_display, reason='manifest mismatch for '
                            '%s (%s)' % (name, algo))
        for other in self.plans.values():
            ref = other.ref
            what = 'file %r (%r)' % (ref.id, ref.href)
            chosen = next((c for c in ref.names if c in seen), None)
            if chosen is not None and chosen in reserved:
                raise exception.InvalidArchive(
                    path=self.ovf_display, reason='%s is the descriptor, '
                    'manifest or certificate, not a disk' % what)
            if chosen is None:
                raise exception.InvalidArchive(
                    path=self.ovf_display, reason='%s of a disk is missing '
                    'from the %s' % (what, word))
            if ref.size is not None and ref.size != seen[chosen] and \
                    ref.compression is None:
                raise exception.InvalidArchive(
                    path=self.ovf_display, reason='%s: ovf:size says %d '
                    'bytes, the file holds %d' % (what, ref.size,
                                                  seen[chosen]))
            if other is plan and handled != [chosen]:
                raise exception.InvalidArchive(
                    path=self.ovf_display, reason='%s: more than one member '
                    'may be it (%s)' % (what, ', '.join(
                        repr(n) for n in ref.names if n in seen)))
            if manifest is not None and chosen not in manifest:
                LOG.warning('%s: the manifest does not cover %s',
                            self.ovf_display, chosen)
        if manifest is None:
            LOG.info('%s: no manifest; no digests are checked', self.path)
        if cert_name:
            for note in self._check_cert(cert_name, certs[cert_name],
                                         mf_name, mfs.get(mf_name)):
                LOG.warning('%s', note)
        else:
            signature.check_unsigned(self.path, self.policy)

    def _check_ovf_digest_of(self, manifest, mf_name):
        saved = self.mf_name
        self.mf_name = mf_name
        try:
            self._check_ovf_digest(manifest)
        finally:
            self.mf_name = saved


# ---------------------------------------------------------------------------
# disks
# ---------------------------------------------------------------------------

class OvaStreamDisk(vm.Disk):
    """A disk of an OVA read as it arrives: one pass over the archive per
    ``write_to`` (or ``describe``)."""

    def __init__(self, stream, index, placed, fallback):
        name = stream.display(
            stream.plans[placed.disk.file_id].ref.names[0])
        super(OvaStreamDisk, self).__init__(
            name, KIND, disk_id=placed.disk.id, controller=placed.controller)
        self._stream = stream
        self._index = index
        self._placed = placed
        self._fallback = fallback
        self._facts = None
        self._format = None
        self._vsize = None
        first = stream.first_layer
        if first is not None and first[0] == placed.disk.file_id:
            self._format = first[1]
            self._vsize = first[2].virtual_size

    @property
    def format(self):
        if self._format is None:
            self.describe()
        return self._format

    @property
    def size_hint(self):
        return self._vsize

    @property
    def virtual_size(self):
        if self._vsize is None:
            return self.describe()[0]['virtual_size']
        return self._vsize

    def _check(self, fmt, layer, stream_name):
        disk = self._placed.disk
        if disk.format and disk.format != fmt:
            raise exception.InvalidImage(
                path=stream_name, reason='ovf:format of disk %r says %s but '
                'the file holds a %s disk: refused' % (disk.id, disk.format,
                                                       fmt))
        size = layer.virtual_size
        package.check_size(stream_name, 'virtual size', size,
                           self._stream.limits)
        if disk.capacity is not None and disk.capacity != size:
            LOG.warning('%s: ovf:capacity of disk %s is %d bytes, the disk '
                        'holds %d: the disk file is used as it is',
                        stream_name, disk.id, disk.capacity, size)
        self._format = fmt
        self._vsize = size

    def _scratch(self, why):
        return self._fallback(why).disks[self._index]

    def describe(self):
        """Reads the whole archive once (the first call only)."""
        if self._facts is not None:
            return self._facts
        facts = {}

        def handler(stream):
            fmt, layer = _open_layer(stream, stream.name,
                                     self._compressed)
            self._check(fmt, layer, stream.name)
            allocated = 0
            for _off, data in layer.data_runs(stream):
                allocated += len(data)
            facts.update(_layer_facts(fmt, layer, allocated))
        try:
            self._stream.run(self._placed.disk.file_id, handler)
        except NotStreamable as e:
            facts = self._scratch(str(e)).describe()
            self._facts = facts
            return facts
        self._facts = [facts]
        return self._facts

    @property
    def _compressed(self):
        ref = self._stream.plans[self._placed.disk.file_id].ref
        return ref.compression == 'gzip'

    def write_to(self, writer, progress=None):
        def handler(stream):
            fmt, layer = _open_layer(stream, stream.name, self._compressed)
            self._check(fmt, layer, stream.name)
            size = layer.virtual_size
            writer.resize(size)
            fresh = writer.fresh
            if not fresh:
                writer.zero_range(0, size)
            written = _Written(stream.name) if fmt == 'vmdk' else None
            moved = 0
            for off, data in layer.data_runs(stream):
                if written is not None:
                    written.add(off, off + len(data))
                writer.write_data(off, data, over_hole=fresh)
                moved += len(data)
                if progress:
                    progress(off + len(data), size, moved)
            if progress:
                progress(size, size, moved)
        try:
            self._stream.run(self._placed.disk.file_id, handler)
        except NotStreamable as e:
            # Raised before the writer was touched.
            disk = self._scratch(str(e))
            disk.write_to(writer, progress)
            self._vsize = disk.virtual_size


def _layer_facts(fmt, layer, allocated):
    if fmt == 'vmdk':
        d = layer.descriptor
        return {'name': layer.name, 'format': 'vmdk',
                'subformat': 'streamOptimized', 'id': layer.identity,
                'parent_id': None, 'virtual_size': layer.virtual_size,
                'allocated_bytes': min(allocated, layer.virtual_size),
                'creator': vmdk.descriptor_creator(d)}
    return {'name': layer.name, 'format': 'vhd',
            'subformat': vhd.SUBFORMATS[layer.footer.disk_type],
            'id': layer.identity, 'parent_id': None,
            'virtual_size': layer.virtual_size,
            'allocated_bytes': min(allocated, layer.virtual_size),
            'creator': layer.footer.creator_app.decode(
                'latin-1').rstrip('\x00 ')}


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------

def open_ova_stream(label, limits, opener, fallback=None):
    """A :class:`~any2kvm_os.vm.Vm` for an OVA read through ``opener`` (a
    new file object of the whole archive per pass: a short one for the
    descriptor, one per disk written).

    ``fallback(reason)`` returns a :class:`~any2kvm_os.vm.Vm` of the same
    OVA opened the scratch way; it is called (once) when the OVA, or one of
    its disks, cannot be read in one pass.  Without it such an OVA is
    refused.
    """
    made = []

    def scratch(reason):
        if not made:
            if fallback is None:
                raise exception.UnsupportedImage(
                    path=label, reason='cannot be read as it arrives: %s'
                    % reason)
            LOG.info('%s: %s: the OVA goes through scratch instead of '
                     'being read as it arrives', label, reason)
            made.append(fallback())
        return made[0]
    try:
        stream = OvaStream(label, limits, opener)
    except NotStreamable as e:
        return scratch(str(e))
    disks = []
    for index, placed in enumerate(stream.desc.placed):
        disk = placed.disk
        if disk.file_id is None:
            name, chain = blank.blank_chain(stream.ovf_display, disk)
            disks.append(vm.ChainDisk(name, KIND, chain, disk_id=disk.id,
                                      controller=placed.controller))
        else:
            disks.append(OvaStreamDisk(stream, index, placed, scratch))
    for note in stream.notes:
        LOG.warning('%s', note)
    source = vm.Vm(label, KIND, disks, facts=stream.desc.vm,
                   notes=stream.notes)

    def close():
        if made:
            made[0].close()
    source.on_close(close)
    LOG.info('%s: an OVA, converted as it downloads', label)
    return source
