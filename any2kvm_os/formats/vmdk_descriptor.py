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
"""The text descriptor of a VMDK disk.

A descriptor is either a small text file of its own or a text area inside
a hosted sparse extent (``descriptorOffset``).  It says (VMware "Virtual
Disk Format 1.1"):

* ``version``, ``encoding``, ``CID`` (the content id, 8 hex digits),
  ``parentCID`` (``ffffffff``: no parent), ``createType``,
  ``parentFileNameHint``;
* one extent line per piece of the disk, in order::

      RW|RDONLY|NOACCESS <sectors> <type> ["<file>" [<offset>]]

* the disk database, ``ddb.*`` keys (adapter type, geometry, uuid...).

This module only parses and checks the text; it never opens the files the
extent lines name (see :mod:`any2kvm_os.formats.vmdk`).
"""

import codecs
import collections
import logging
import re

from any2kvm_os import exception

LOG = logging.getLogger(__name__)

SECTOR = 512
#: Largest descriptor read, whether a file or embedded (qemu uses 1 MiB).
MAX_DESCRIPTOR_SIZE = 1 << 20
#: Most extent lines; 64 TiB in 2 GiB extents is 32768.
MAX_EXTENTS = 32768
#: Hard bound of a VMDK virtual disk (VMFS: 62 TB, SESparse: 64 TiB).
MAX_VIRTUAL_SIZE = 64 << 40

NO_PARENT = 'ffffffff'

#: createType values this project reads, by lower-case name.
SUPPORTED_TYPES = {t.lower(): t for t in (
    'monolithicSparse', 'twoGbMaxExtentSparse', 'monolithicFlat',
    'twoGbMaxExtentFlat', 'vmfs', 'streamOptimized', 'seSparse',
    'vmfsSparse')}
#: createType values naming a physical device, refused.
DEVICE_TYPES = {t.lower() for t in (
    'vmfsRaw', 'vmfsRawDeviceMap', 'vmfsPassthroughRawDeviceMap',
    'fullDevice', 'partitionedDevice')}

ACCESS_MODES = ('RW', 'RDONLY', 'NOACCESS')
EXTENT_TYPES = ('SPARSE', 'FLAT', 'ZERO', 'VMFS', 'VMFSSPARSE', 'SESPARSE')
DEVICE_EXTENT_TYPES = ('VMFSRDM', 'VMFSRAW', 'VMFSRDMP')

_HEADER_RE = re.compile(r'^#\s*disk\s*descriptor\s*file\s*$', re.I)
_EXTENT_RE = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\S+)\s+([A-Za-z]+)(.*)$',
                        re.I)
_EXTENT_TAIL_RE = re.compile(r'^\s+"([^"]*)"(?:\s+(\S+))?\s*$')
_KV_RE = re.compile(r'^([A-Za-z][A-Za-z0-9_.:-]*)\s*=\s*(.*)$')
_ENCODING_RE = re.compile(rb'^[ \t]*encoding[ \t]*=[ \t]*"?([A-Za-z0-9_.:-]+)',
                          re.M | re.I)
_CID_RE = re.compile(r'^[0-9a-fA-F]{1,8}$')

ExtentLine = collections.namedtuple(
    'ExtentLine', ['access', 'sectors', 'type', 'filename', 'offset',
                   'lineno'])
ExtentLine.__doc__ = """One extent line; ``offset`` in sectors (flat only)."""


def _text_head(raw):
    """Bytes of a descriptor up to its first NUL (embedded descriptors and
    qemu's separate ones are padded with NULs), without a UTF-8 BOM."""
    raw = bytes(raw)
    nul = raw.find(b'\0')
    if nul >= 0:
        raw = raw[:nul]
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    return raw


def _significant_lines(text):
    for line in text.splitlines():
        line = line.strip()
        if line:
            yield line


def looks_like_descriptor(raw):
    """True when ``raw`` (the start of a small file) is a VMDK descriptor.

    Either its first line is the ``# Disk DescriptorFile`` comment (any
    spacing or case: VMware, qemu and VMDKstream spell it differently), or
    its first line that is not a comment is ``version=N`` and a
    ``createType=`` line follows.  Other text files are not claimed.
    """
    head = _text_head(raw)
    if not head:
        return False
    text = head.decode('latin-1')
    lines = list(_significant_lines(text))
    if not lines:
        return False
    if _HEADER_RE.match(lines[0]):
        return True
    body = [ln for ln in lines if not ln.startswith('#')]
    if not body or not re.match(r'^version\s*=\s*"?\d+"?$', body[0], re.I):
        return False
    return any(re.match(r'^createType\s*=', ln, re.I) for ln in body)


def _decode(raw, path):
    """Text of the descriptor in its declared encoding.

    VMware writes ``encoding="windows-1252"`` or ``"UTF-8"`` (and others:
    GBK, Shift_JIS...).  Undeclared: UTF-8.  When the bytes do not decode
    in the declared or default encoding, latin-1 keeps every byte, so that
    ASCII keywords still parse and a name that cannot be matched fails when
    its file is looked for.
    """
    m = _ENCODING_RE.search(raw)
    name = m.group(1).decode('ascii') if m else 'utf-8'
    try:
        codecs.lookup(name)
    except LookupError:
        LOG.debug('%s: unknown descriptor encoding %r, using UTF-8', path,
                  name)
        name = 'utf-8'
    try:
        return raw.decode(name)
    except UnicodeDecodeError:
        LOG.debug('%s: descriptor does not decode as %s', path, name)
        return raw.decode('latin-1')


def parse_cid(value, path, what):
    """A CID as 8 lower-case hex digits (qemu writes them without leading
    zeros); raise on anything that is not 1 to 8 hex digits."""
    if not _CID_RE.match(value or ''):
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor %s %r is not a 32-bit hex '
            'number' % (what, value))
    return '%08x' % int(value, 16)


def basename_hint(path):
    """Last component of a Windows or POSIX path written in a descriptor."""
    for sep in ('\\', '/'):
        path = path.rsplit(sep, 1)[-1]
    return path.strip()


class Descriptor(object):
    """A parsed descriptor."""

    def __init__(self, path):
        self.path = path
        #: Every ``key = value`` line, keys lower-cased, quotes removed.
        self.fields = {}
        #: Keys as written, for ddb.* (``ddb.adapterType`` ...).
        self.ddb = {}
        self.extents = []
        self.comments = []
        self.header_line = None

    def get(self, key, default=None):
        return self.fields.get(key.lower(), default)

    @property
    def version(self):
        v = self.get('version')
        return int(v) if v is not None else None

    @property
    def cid(self):
        v = self.get('cid')
        return parse_cid(v, self.path, 'CID') if v is not None else None

    @property
    def parent_cid(self):
        """The parent's CID or None (``ffffffff`` or absent)."""
        v = self.get('parentcid')
        if v is None:
            return None
        v = parse_cid(v, self.path, 'parentCID')
        return None if v == NO_PARENT else v

    @property
    def create_type(self):
        return self.get('createtype')

    @property
    def parent_hint(self):
        v = self.get('parentfilenamehint')
        return basename_hint(v) if v else None

    @property
    def encoding(self):
        return self.get('encoding')

    @property
    def virtual_sectors(self):
        return sum(e.sectors for e in self.extents)


def _unquote(value):
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    return value


def _int(text, path, lineno, what):
    try:
        if not re.match(r'^\d+$', text):
            raise ValueError(text)
        return int(text)
    except ValueError:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor line %d: %s %r is not a '
            'number' % (lineno, what, text))


def _parse_extent(m, line, lineno, path):
    access = m.group(1).upper()
    sectors = _int(m.group(2), path, lineno, 'extent size')
    etype = m.group(3).upper()
    tail = m.group(4)
    filename = None
    offset = None
    if tail.strip():
        t = _EXTENT_TAIL_RE.match(tail)
        if not t:
            raise exception.InvalidImage(
                path=path, reason='VMDK descriptor line %d: malformed extent '
                'line %r (the file name must be quoted)' % (lineno, line))
        filename = t.group(1)
        if t.group(2) is not None:
            offset = _int(t.group(2), path, lineno, 'extent offset')
    if sectors <= 0:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor line %d: extent of %d '
            'sectors' % (lineno, sectors))
    if sectors * SECTOR > MAX_VIRTUAL_SIZE:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor line %d: extent of %d '
            'sectors is larger than the format limit of %d bytes: refused '
            'as absurd' % (lineno, sectors, MAX_VIRTUAL_SIZE))
    if etype in DEVICE_EXTENT_TYPES:
        raise exception.UnsupportedImage(
            path=path, reason='VMDK descriptor line %d: %s extent maps a raw '
            'device, not a disk image: not supported' % (lineno, etype))
    if etype not in EXTENT_TYPES:
        raise exception.UnsupportedImage(
            path=path, reason='VMDK descriptor line %d: unknown extent type '
            '%r' % (lineno, m.group(3)))
    if etype == 'ZERO':
        filename = None
        offset = None
    elif not filename:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor line %d: %s extent without a '
            'file name' % (lineno, etype))
    if offset is not None and etype not in ('FLAT', 'VMFS') and offset:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor line %d: an offset is only '
            'valid on a flat extent' % lineno)
    if etype in ('FLAT', 'VMFS'):
        offset = offset or 0
        if offset * SECTOR > MAX_VIRTUAL_SIZE:
            raise exception.InvalidImage(
                path=path, reason='VMDK descriptor line %d: extent offset %d '
                'is absurd' % (lineno, offset))
    return ExtentLine(access, sectors, etype, filename, offset, lineno)


#: How many bytes qemu's CID rewrite can leave after the NUL: the CID is
#: 1 to 8 hex digits, unpadded, so the text shrinks by at most 7 bytes.
MAX_CID_RESIDUE = 7


def _cid_rewrite_residue(raw, nul):
    """True when the bytes after the first NUL of ``raw`` are only what
    qemu leaves there, not text of the descriptor.

    qemu prints the CID unpadded ("CID=%x") and rewrites it in place with
    a random one on the first write after each open (vmdk_write_cid): the
    new text is NUL-terminated over the old one, and when the new CID has
    fewer hex digits, the old text's last bytes stay after the NUL (qemu
    reads up to the NUL).  Those bytes are the descriptor's own last
    bytes, shifted: at most :data:`MAX_CID_RESIDUE` of them, every run
    between NULs equal to the end of the text.  Anything else after a
    NUL (a line cut off, e.g. a delta's parentCID) is not this.
    """
    end = len(raw.rstrip(b'\0'))
    tail = raw[nul + 1:end]
    if not tail or len(tail) > MAX_CID_RESIDUE:
        return False
    text = raw[:nul]
    return all(text.endswith(run) for run in tail.split(b'\0') if run)


def parse(raw, path):
    """Parse descriptor bytes; raise InvalidImage on anything malformed.

    ``raw`` is bounded by the caller (:data:`MAX_DESCRIPTOR_SIZE`).  Only
    the syntax and the values are checked here; whether the createType and
    the extents make a disk is the reader's business.
    """
    if len(raw) > MAX_DESCRIPTOR_SIZE:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor of %d bytes is larger than the '
            'limit of %d' % (len(raw), MAX_DESCRIPTOR_SIZE))
    desc = Descriptor(path)
    raw = bytes(raw)
    nul = raw.find(b'\0')
    if nul >= 0 and raw[nul:].count(0) != len(raw) - nul and \
            not _cid_rewrite_residue(raw, nul):
        # Descriptors are padded with NULs; text after one would be lost.
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor holds text after a NUL byte '
            '(at offset %d): corrupt' % nul)
    text = _decode(_text_head(raw), path)
    first = True
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith('#'):
            if first and _HEADER_RE.match(line):
                desc.header_line = line
            desc.comments.append(line)
            first = False
            continue
        first = False
        m = _EXTENT_RE.match(line)
        if m and m.group(1).upper() in ACCESS_MODES:
            if len(desc.extents) >= MAX_EXTENTS:
                raise exception.InvalidImage(
                    path=path, reason='VMDK descriptor has more than %d '
                    'extents: refused as absurd' % MAX_EXTENTS)
            desc.extents.append(_parse_extent(m, line, lineno, path))
            continue
        m = _KV_RE.match(line)
        if m:
            key, value = m.group(1), _unquote(m.group(2))
            lkey = key.lower()
            if lkey.startswith('ddb.'):
                desc.ddb[key] = value
            elif lkey in desc.fields and desc.fields[lkey] != value:
                raise exception.InvalidImage(
                    path=path, reason='VMDK descriptor line %d: %s given '
                    'twice with different values' % (lineno, key))
            desc.fields[lkey] = value
            continue
        LOG.debug('%s: ignoring descriptor line %d: %r', path, lineno, line)
    if sum(e.sectors for e in desc.extents) * SECTOR > MAX_VIRTUAL_SIZE:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor extents add up to more than '
            'the format limit of %d bytes: refused as absurd'
            % MAX_VIRTUAL_SIZE)
    version = desc.get('version')
    if version is not None:
        if not re.match(r'^\d+$', version) or not 1 <= int(version) <= 3:
            raise exception.UnsupportedImage(
                path=path, reason='VMDK descriptor version %r is not '
                'supported (1 to 3)' % version)
    # Parse the ids now, so that a bad one is refused when the file is
    # opened rather than when the chain is resolved.
    desc.cid
    desc.parent_cid
    _check_parent_keys(desc, path)
    return desc


def _check_parent_keys(desc, path):
    """A descriptor is accepted only when it is consistent: a parent is
    named (parentFileNameHint) exactly when a parentCID other than
    ffffffff is given.  Otherwise a delta would be read as a base and its
    parent's data dropped, or a parent guessed."""
    hint = (desc.get('parentfilenamehint') or '').strip()
    pcid = desc.parent_cid
    if hint and pcid is None:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor names a parent '
            '(parentFileNameHint %r) but gives no parentCID: inconsistent'
            % hint)
    if pcid is not None and not hint:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor gives parentCID %s but no '
            'parentFileNameHint: inconsistent' % pcid)


def check_create_type(desc, path, default=None):
    """The canonical spelling of the descriptor's createType, or raise."""
    ct = desc.create_type or default
    if ct is None:
        raise exception.InvalidImage(
            path=path, reason='VMDK descriptor without createType')
    key = ct.lower()
    if key in DEVICE_TYPES:
        raise exception.UnsupportedImage(
            path=path, reason='VMDK createType %r maps a raw device, not a '
            'disk image: not supported' % ct)
    if key not in SUPPORTED_TYPES:
        raise exception.UnsupportedImage(
            path=path, reason='unknown VMDK createType %r' % ct)
    return SUPPORTED_TYPES[key]
