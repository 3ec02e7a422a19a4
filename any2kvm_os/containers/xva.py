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

"""XenServer / XCP-ng VM exports (XVA).

An XVA is a tar.  Its first member, ``ova.xml``, describes the VM as an
XML-RPC value: ``version`` and ``objects``, an array of records (VM, VBD,
VDI, VIF, network, SR ...) each with a ``class``, an ``id`` (``Ref:N``)
and a ``snapshot`` (the record's fields).  The data of each VDI follows as
members ``<VDI id>/00000000``, ``<VDI id>/00000001`` ... each holding one
1 MiB chunk of the disk and followed at once by its checksum member,
``.checksum`` (SHA-1, hex) or ``.xxhash`` (XXH64, hex, XenServer 8).

What is accepted is what xapi's own importer accepts, with xva-img's
habits on top:

* All-zero chunks may be left out: they read as zeros.  xapi always writes
  the first and the last chunk; xva-img leaves out every zero chunk, the
  last one included.  The disk size is therefore always the VDI's
  ``virtual_size`` in ova.xml, never derived from the chunks present.
  Both always write a disk's first chunk, so a disk without any chunk is
  refused: its data is missing (a directory left out when packing), it is
  no all-zero disk.
* While it skips a long run of zeros, xapi writes an EMPTY chunk every few
  seconds to keep the connection alive.  Such a chunk takes a number but
  no room on the disk, so every later chunk carries a number one higher
  than its position (xapi's importer places a chunk at the end of the
  previous one plus 1 MiB per number skipped).  Chunk number n therefore
  lies at (n - empty chunks before it) MiB.  An empty chunk at the very
  end (a "terminator" some writers may add) takes no room either.
* A chunk holds 1 MiB, except the one that ends the disk, which holds what
  is left of it; any other size is refused, as is a chunk that lies
  beyond the disk size.
* The chunk numbers of a VDI increase strictly (a duplicate is refused),
  the members of one VDI are together, and every chunk is followed by its
  checksum member: a chunk without one is REFUSED (xapi writes one after
  every chunk and its importer requires it; only pre-2008 exports, format
  version 0, lacked them).  A checksum is verified before any byte of its
  chunk is used, all-zero chunks included.
* ``ova.xml`` is parsed with defusedxml, DTDs refused (no entities, no
  external references), its size, nesting and object count bounded.

A plain tar is read in place with random access: the chunk index is built
from the tar headers alone, and a chunk is read (and its checksum
verified) when the disk is copied.  A compressed XVA (gzip, as XenServer
writes with ``compress=true``; bzip2 and xz too; zstd when the
``zstandard`` module is importable) is read in one pass per disk:
converting disk k reads the whole archive and skips the members of the
other VDIs, so a VM with N disks costs N passes.

Only the VDIs behind the VM's ``Disk`` VBDs are disks, ordered by the
VBD's ``userdevice``; CD and floppy drives are skipped, and so is any other
VDI the archive carries (a suspend image, say).
"""

import array
import bisect
import collections
import contextlib
import copy
import hashlib
import logging
import os
import re
import tarfile

import defusedxml
from defusedxml import ElementTree as SafeET
import xxhash

from any2kvm_os import compression
from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.chain import layer_chain
from any2kvm_os.containers import base
from any2kvm_os.containers import tar
from any2kvm_os.formats import base as fbase
from any2kvm_os import vm

LOG = logging.getLogger(__name__)

KIND = 'xva'
FORMAT = 'xva'
OVA_XML = 'ova.xml'
CHUNK = 1 << 20
BLOCK = 512
#: Bounds on ova.xml (a VM with many snapshots is a few MiB).
MAX_OVA_XML_BYTES = 64 << 20
MAX_OVA_OBJECTS = 100000
MAX_XML_DEPTH = 32
MAX_XML_ELEMENTS = 4000000

SHA1 = 'sha1'
XXH64 = 'xxh64'
CHECKSUM_EXT = {'.checksum': SHA1, '.xxhash': XXH64}
DIGEST_CHARS = {SHA1: 40, XXH64: 16}
_ALGO_CODE = {SHA1: 1, XXH64: 2}
_CODE_ALGO = {1: SHA1, 2: XXH64}

#: ``<VDI id>/<chunk number>[.checksum|.xxhash]``; numbers are "%08d".
MEMBER_RE = re.compile(
    r'^(?P<ref>[^/]+)/(?P<num>[0-9]{8}|[1-9][0-9]{8,11})'
    r'(?P<ext>\.checksum|\.xxhash)?$')
#: What a VDI id may look like (xapi writes ``Ref:<N>``).
VDI_ID_RE = re.compile(r'^[A-Za-z0-9:._-]{1,64}$')

CHUNK_MEMBER = 'chunk'
CHECKSUM_MEMBER = 'checksum'


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
    """A plain tar whose first member is ``ova.xml`` (reads its header,
    and a pax or GNU long-name header before it, if any)."""
    try:
        tf = tarfile.open(fileobj=_ViewFile(view), mode='r:')
        ti = tf.next()
    except (tarfile.TarError, EOFError, UnicodeError):
        return False
    return ti is not None and _normalise(ti.name) == OVA_XML


def compressed_looks_like_xva(path):
    """A compressed tar (gzip, bzip2, xz, zstd) whose first member is
    ``ova.xml``.  Only the first records are decompressed.  A zstd file
    answers True when ``zstandard`` is missing: :func:`open_xva` then
    refuses it with a clear message (XenServer compresses only XVAs with
    zstd)."""
    with open(path, 'rb') as f:
        try:
            fileobj = compression.open_reader(path, f)
        except exception.UnsupportedImage:
            return True
        try:
            with _archive_errors(path):
                tf = tarfile.open(fileobj=fileobj, mode='r|')
                ti = tf.next()
        except exception.Any2KvmError:
            return False
        return ti is not None and _normalise(ti.name) == OVA_XML


def _normalise(name):
    while name.startswith('./'):
        name = name[2:]
    return name.rstrip('/')


# ---------------------------------------------------------------------------
# ova.xml
# ---------------------------------------------------------------------------

Vdi = collections.namedtuple('Vdi', ['ref', 'uuid', 'name_label',
                                     'virtual_size', 'userdevice',
                                     'bootable'])
Vdi.__doc__ = """A disk of the VM: the VDI behind one of its Disk VBDs."""


def _xml_error(archive, reason):
    return exception.InvalidArchive(path='%s:%s' % (archive, OVA_XML),
                                    reason=reason)


class _XmlRpc(object):
    """Turns an XML-RPC ``<value>`` tree into Python values, bounded."""

    SCALARS = ('string', 'dateTime.iso8601', 'base64')
    INTS = ('int', 'i4', 'i8')

    def __init__(self, archive):
        self.archive = archive
        self.elements = 0

    def bad(self, reason):
        return _xml_error(self.archive, reason)

    def value(self, elem, depth=0):
        if depth > MAX_XML_DEPTH:
            raise self.bad('nested deeper than %d values' % MAX_XML_DEPTH)
        self.elements += 1
        if self.elements > MAX_XML_ELEMENTS:
            raise self.bad('more than %d XML elements' % MAX_XML_ELEMENTS)
        if elem.tag != 'value':
            raise self.bad('<%s> where a <value> was expected' % elem.tag)
        children = list(elem)
        if not children:
            return elem.text or ''
        if len(children) != 1:
            raise self.bad('a <value> holds %d elements' % len(children))
        child = children[0]
        tag = child.tag
        if tag in self.SCALARS:
            return child.text or ''
        if tag in self.INTS:
            try:
                return int((child.text or '').strip())
            except ValueError:
                raise self.bad('bad <%s> %r' % (tag, child.text))
        if tag == 'boolean':
            text = (child.text or '').strip()
            if text not in ('0', '1'):
                raise self.bad('bad <boolean> %r' % child.text)
            return text == '1'
        if tag == 'double':
            try:
                return float((child.text or '').strip())
            except ValueError:
                raise self.bad('bad <double> %r' % child.text)
        if tag == 'nil':
            return None
        if tag == 'struct':
            out = {}
            for member in child:
                self.elements += 1
                if member.tag != 'member':
                    raise self.bad('<%s> in a <struct>' % member.tag)
                name = member.find('name')
                val = member.find('value')
                if name is None or val is None or len(member) != 2:
                    raise self.bad('a struct <member> needs one <name> and '
                                   'one <value>')
                out[name.text or ''] = self.value(val, depth + 1)
            return out
        if tag == 'array':
            data = list(child)
            if len(data) != 1 or data[0].tag != 'data':
                raise self.bad('an <array> needs one <data>')
            return [self.value(v, depth + 1) for v in data[0]]
        raise self.bad('unknown XML-RPC type <%s>' % tag)


def _int(value):
    """An XenAPI integer (int64s travel as decimal strings) or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.match(r'^-?[0-9]{1,20}$',
                                           value.strip()):
        return int(value.strip())
    return None


def _dict(value):
    return value if isinstance(value, dict) else {}


def _list(value):
    return value if isinstance(value, list) else []


def _text(value):
    return value if isinstance(value, str) else None


def _true(value):
    return value is True or (isinstance(value, str)
                             and value.strip().lower() in ('true', '1'))


def _device_key(value):
    n = _int(value)
    return (0, n, '') if n is not None else (1, 0, str(value))


class OvaXml(object):
    """What ova.xml says: the VM, its disks, and every VDI's size.

    ``vdi_sizes`` maps every VDI id to its virtual size (the layout of the
    archive's members is checked against it); ``disks`` lists the VM's
    disks in ``userdevice`` order; ``vm`` holds the facts reported by
    ``any2kvm info``.
    """

    def __init__(self, archive, data, max_virtual_size):
        self.archive = archive
        if len(data) > MAX_OVA_XML_BYTES:
            raise _xml_error(archive, 'larger than %d bytes'
                             % MAX_OVA_XML_BYTES)
        try:
            root = SafeET.fromstring(data, forbid_dtd=True,
                                     forbid_entities=True,
                                     forbid_external=True)
        except defusedxml.DefusedXmlException as e:
            raise _xml_error(archive, 'refused: %s (DTDs and entities are '
                             'not allowed)' % type(e).__name__)
        except SafeET.ParseError as e:
            raise _xml_error(archive, 'not well-formed XML: %s' % e)
        top = _XmlRpc(archive).value(root)
        if not isinstance(top, dict) or not isinstance(top.get('objects'),
                                                       list):
            raise _xml_error(archive, 'not an XVA description (no '
                             '"objects" array)')
        self.version = _dict(top.get('version'))
        objects = top['objects']
        if len(objects) > MAX_OVA_OBJECTS:
            raise _xml_error(archive, 'more than %d objects'
                             % MAX_OVA_OBJECTS)
        self.objects = {}
        self.classes = collections.defaultdict(list)
        for obj in objects:
            if (not isinstance(obj, dict)
                    or not isinstance(obj.get('class'), str)
                    or not isinstance(obj.get('id'), str)
                    or not isinstance(obj.get('snapshot'), dict)):
                raise _xml_error(archive, 'an object lacks its class, id or '
                                 'record')
            if obj['id'] in self.objects:
                raise _xml_error(archive, 'object id %s appears twice'
                                 % obj['id'])
            self.objects[obj['id']] = (obj['class'], obj['snapshot'])
            self.classes[obj['class']].append(obj['id'])
        self.vdi_sizes = {}
        for ref in self.classes['VDI']:
            size = _int(self.objects[ref][1].get('virtual_size'))
            if size is None or size < 0:
                continue    # checked below if it is one of the disks
            if not VDI_ID_RE.match(ref):
                raise _xml_error(archive, 'VDI id %r is not a plain name'
                                 % ref)
            if size > max_virtual_size:
                raise exception.InvalidImage(
                    path='%s:%s' % (archive, ref), reason='virtual size %d '
                    'exceeds the limit of %d bytes (max_virtual_size_gib)'
                    % (size, max_virtual_size))
            self.vdi_sizes[ref] = size
        self.vm_id = self._choose_vm()
        self.vm_record = self.objects[self.vm_id][1]
        self.disks = self._disks()
        self.vm = self._facts()

    def record(self, ref, cls):
        found = self.objects.get(ref) if isinstance(ref, str) else None
        if found is None or found[0] != cls:
            return None
        return found[1]

    def _choose_vm(self):
        vms = [r for r in self.classes['VM']
               if not _true(self.objects[r][1].get('is_control_domain'))]
        if not vms:
            raise _xml_error(self.archive, 'describes no VM')
        # An export carries the VM and, with its snapshots, their records
        # (is_a_snapshot true): the VM is the one that is no snapshot.
        live = [r for r in vms
                if not _true(self.objects[r][1].get('is_a_snapshot'))]
        if len(live) > 1:
            LOG.warning('%s: ova.xml describes %d VMs; using the first, %s',
                        self.archive, len(live), live[0])
        return (live or vms)[0]

    def _vbds(self):
        refs = _list(self.vm_record.get('VBDs'))
        if not refs:
            refs = [r for r in self.classes['VBD']
                    if self.objects[r][1].get('VM') == self.vm_id]
        return [(r, self.record(r, 'VBD')) for r in refs
                if self.record(r, 'VBD') is not None]

    def _disks(self):
        disks = []
        seen = set()
        for vbd_ref, vbd in self._vbds():
            kind = _text(vbd.get('type')) or ''
            if kind.lower() != 'disk' or _true(vbd.get('empty')):
                LOG.info('%s: skipping %s drive %s (userdevice %s)',
                         self.archive, kind or 'unknown', vbd_ref,
                         vbd.get('userdevice'))
                continue
            ref = vbd.get('VDI')
            vdi = self.record(ref, 'VDI')
            if vdi is None:
                raise _xml_error(self.archive, 'disk VBD %s (userdevice %s) '
                                 'refers to VDI %s, which ova.xml does not '
                                 'describe' % (vbd_ref,
                                               vbd.get('userdevice'), ref))
            if ref not in self.vdi_sizes:
                raise _xml_error(self.archive, 'VDI %s has no valid '
                                 'virtual_size (%r)'
                                 % (ref, vdi.get('virtual_size')))
            if ref in seen:
                continue
            seen.add(ref)
            disks.append(Vdi(ref, _text(vdi.get('uuid')) or None,
                             _text(vdi.get('name_label')) or '',
                             self.vdi_sizes[ref],
                             vbd.get('userdevice'),
                             _true(vbd.get('bootable'))))
        disks.sort(key=lambda d: _device_key(d.userdevice))
        return disks

    @property
    def creator(self):
        v = self.version
        brand = _text(v.get('product_brand')) or ''
        version = _text(v.get('product_version')) or ''
        made = ('%s %s' % (brand, version)).strip()
        return made or None

    def _facts(self):
        rec = self.vm_record
        platform = _dict(rec.get('platform'))
        boot = _dict(rec.get('HVM_boot_params'))
        policy = _text(rec.get('HVM_boot_policy'))
        uefi = ((_text(boot.get('firmware')) or '').lower() == 'uefi'
                or 'uefi' in (_text(platform.get('device-model')) or ''))
        memory = _int(rec.get('memory_static_max'))
        vm = {
            'name': _text(rec.get('name_label')) or '',
            'cpus': _int(rec.get('VCPUs_max')),
            'cores_per_socket': _int(platform.get('cores-per-socket')) or 1,
            'memory_mb': memory // (1 << 20) if memory is not None else None,
            'firmware': 'uefi' if uefi else 'bios',
            'virtualization': 'pv' if policy == '' else 'hvm',
            'nics': self._nics(),
            'os': self._os(),
        }
        if uefi:
            vm['secure_boot'] = _true(platform.get('secureboot'))
        return vm

    def _nics(self):
        refs = _list(self.vm_record.get('VIFs'))
        if not refs:
            refs = [r for r in self.classes['VIF']
                    if self.objects[r][1].get('VM') == self.vm_id]
        nics = []
        for ref in refs:
            vif = self.record(ref, 'VIF')
            if vif is None:
                continue
            nic = {'device': _text(vif.get('device')) or '',
                   'mac': (_text(vif.get('MAC')) or '').lower()}
            net = self.record(vif.get('network'), 'network')
            if net is not None and _text(net.get('name_label')):
                nic['network'] = net['name_label']
            nics.append(nic)
        nics.sort(key=lambda n: _device_key(n['device']))
        return nics

    def _os(self):
        out = {}
        gm = self.record(self.vm_record.get('guest_metrics'),
                         'VM_guest_metrics')
        osv = _dict(gm.get('os_version')) if gm is not None else {}
        other = _dict(self.vm_record.get('other_config'))
        if _text(osv.get('distro')):
            out['distro'] = osv['distro']
        elif _text(other.get('install-distro')):
            out['distro'] = other['install-distro']
        if _text(osv.get('name')):
            out['description'] = osv['name']
        if _text(osv.get('major')):
            out['version'] = osv['major'] + (
                '.' + osv['minor'] if _text(osv.get('minor')) else '')
        template = (_text(other.get('base_template_name'))
                    or _text(self.vm_record.get('reference_label')))
        if template:
            out['template'] = template
        return out

    def member_bound(self):
        """Most members a well-formed archive with these VDIs can hold:
        ova.xml, a directory entry per VDI, and per VDI slot a chunk, a
        keep-alive chunk and their checksums."""
        n = 1
        for size in self.vdi_sizes.values():
            n += 1 + 4 * (-(-size // CHUNK) + 1)
        return n


def parse_ova_xml(archive, data, max_virtual_size=65536 << 30):
    """Parse ova.xml (bytes); see :class:`OvaXml`."""
    return OvaXml(archive, data, max_virtual_size)


# ---------------------------------------------------------------------------
# member layout
# ---------------------------------------------------------------------------

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
        name = _normalise(name)
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


def _screen(archive, limits, ova):
    lim = copy.copy(limits)
    lim.max_archive_members = max(limits.max_archive_members,
                                  ova.member_bound())
    return _Screen(archive, lim)


@contextlib.contextmanager
def _archive_errors(path):
    """Decompression and tar errors become one-line InvalidArchive."""
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


def _is_compressed(path):
    return compression.sniff_path(path) is not None


def _first_member(path, ti, screen):
    name = screen.check(ti) if screen else _normalise(ti.name)
    if _normalise(ti.name) != OVA_XML:
        raise exception.InvalidArchive(
            path=path, reason='not an XVA: the first member is %r, not %s'
            % (ti.name, OVA_XML))
    if name != OVA_XML or not ti.isreg():
        raise _xml_error(path, 'not a regular file')
    if ti.size > MAX_OVA_XML_BYTES:
        raise _xml_error(path, 'member of %d bytes: larger than the %d '
                         'bytes allowed' % (ti.size, MAX_OVA_XML_BYTES))


# ---------------------------------------------------------------------------
# plain tar: random access
# ---------------------------------------------------------------------------

class _Index(object):
    """The present chunks of one VDI, in disk order."""

    def __init__(self):
        self.slots = array.array('q')      # chunk position // CHUNK
        self.data = array.array('q')       # archive offset of the data
        self.sums = array.array('q')       # archive offset of the checksum
        self.algos = bytearray()
        self.allocated = 0
        self.kinds = set()

    def add(self, chunk, data_offset, sum_offset, algo):
        self.slots.append(chunk.pos // CHUNK)
        self.data.append(data_offset)
        self.sums.append(sum_offset)
        self.algos.append(_ALGO_CODE[algo])
        self.allocated += chunk.length
        self.kinds.add(algo)


def _subformat(kinds):
    return '+'.join(sorted(kinds)) or None


class XvaLayer(fbase.LayerReader):
    """One VDI of a plain XVA tar: a base layer (no parent) whose data
    lives in many chunk members, read in place.

    ``block_status`` answers from the chunk index (DATA for a chunk present,
    UNALLOCATED for one left out: zeros, as the layer is a base); DATA
    extents carry their disk offset as ``file_offset`` token and
    :meth:`read_extent` reads whole chunks and verifies their checksums
    before returning any byte.
    """

    format_name = FORMAT

    def __init__(self, view, archive, vdi, index, creator, chunk_names):
        super(XvaLayer, self).__init__(view)
        self.archive = archive
        self.vdi = vdi
        self._index = index
        self._creator = creator
        self._chunk_names = chunk_names
        self._cached = (None, None)

    @classmethod
    def probe(cls, view):
        return False    # never detected on its own: see open_xva

    @property
    def virtual_size(self):
        return self.vdi.virtual_size

    @property
    def identity(self):
        return self.vdi.uuid

    @property
    def parent_ref(self):
        return None

    @property
    def subformat(self):
        return _subformat(self._index.kinds)

    @property
    def creator(self):
        return self._creator

    def allocated_bytes(self):
        return self._index.allocated

    def _chunk_len(self, slot):
        return min(CHUNK, self.vdi.virtual_size - slot * CHUNK)

    def block_status(self, offset, length):
        size = self.vdi.virtual_size
        end = min(offset + length, size)
        slots = self._index.slots
        i = bisect.bisect_left(slots, offset // CHUNK)
        pos = offset
        out = []
        while pos < end:
            start = slots[i] * CHUNK if i < len(slots) else end
            if start > pos:
                stop = min(start, end)
                out.append(ext.extent(ext.UNALLOCATED, pos, stop - pos))
                pos = stop
                continue
            stop = min(start + self._chunk_len(slots[i]), end)
            out.append(ext.extent(ext.DATA, pos, stop - pos,
                                  file_offset=pos))
            pos = stop
            i += 1
        return ext.merge(out)

    def _chunk(self, slot):
        """The verified bytes of the chunk at ``slot``."""
        if self._cached[0] == slot:
            return self._cached[1]
        idx = self._index
        i = bisect.bisect_left(idx.slots, slot)
        if i >= len(idx.slots) or idx.slots[i] != slot:
            raise exception.InvalidImage(
                path=self.name, reason='no chunk stored at disk offset %d'
                % (slot * CHUNK))
        length = self._chunk_len(slot)
        algo = _CODE_ALGO[idx.algos[i]]
        chunk = Chunk(self.vdi.ref, None, slot * CHUNK, length,
                      self._chunk_names(self.vdi.ref, slot))
        data = self.read(idx.data[i], length)
        stored = self.read(idx.sums[i], DIGEST_CHARS[algo])
        verify_chunk(self.archive, chunk, algo, stored, data)
        self._cached = (slot, data)
        return data

    def read_extent(self, extent, skip, length):
        pos = extent.offset + skip
        end = pos + length
        parts = []
        while pos < end:
            slot = pos // CHUNK
            data = self._chunk(slot)
            lo = pos - slot * CHUNK
            n = min(len(data) - lo, end - pos)
            parts.append(data if (lo == 0 and n == len(data))
                         else data[lo:lo + n])
            pos += n
        return parts[0] if len(parts) == 1 else b''.join(parts)


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
        with _archive_errors(path):
            tf = tarfile.open(fileobj=f, mode='r:')
            ti = tf.next()
            del tf.members[:]
            if ti is None:
                raise exception.InvalidArchive(path=path,
                                               reason='empty archive')
            _first_member(path, ti, None)
            if ti.offset_data + ti.size > fsize:
                raise _xml_error(path, 'truncated')
            data = os.pread(f.fileno(), ti.size, ti.offset_data)
            if len(data) != ti.size:
                raise _xml_error(path, 'truncated')
            self.ova = parse_ova_xml(path, data, limits.max_virtual_size)
            screen = _screen(path, limits, self.ova)
            screen.check(ti)
            layout = Layout(path, self.ova.vdi_sizes)
            self.indexes = collections.defaultdict(_Index)
            data_offset = None
            while True:
                ti = tf.next()
                del tf.members[:]
                if ti is None:
                    break
                name = screen.check(ti)
                if name is None:
                    layout.directory(ti.name)
                    continue
                if ti.offset_data + ti.size > fsize:
                    raise exception.InvalidArchive(
                        path=path, reason='member %r is truncated' % ti.name)
                kind, what = layout.member(name, ti.size)
                if kind == CHUNK_MEMBER:
                    data_offset = ti.offset_data
                    continue
                chunk, algo = what
                if chunk.length == 0:
                    verify_chunk(path, chunk, algo, os.pread(
                        f.fileno(), ti.size, ti.offset_data), b'')
                    continue
                self.indexes[chunk.ref].add(chunk, data_offset,
                                            ti.offset_data, algo)
                if chunk.number != chunk.pos // CHUNK:
                    self._names[(chunk.ref, chunk.pos // CHUNK)] = \
                        chunk.name
            end = os.pread(f.fileno(), BLOCK, tf.offset)
            if len(end) < BLOCK:
                raise exception.InvalidArchive(
                    path=path, reason='truncated: the archive ends without '
                    'its end-of-archive marker')
            if end.count(0) != BLOCK:
                raise exception.InvalidArchive(
                    path=path, reason='damaged tar header at offset %d'
                    % tf.offset)
            layout.finish()
            for vdi in self.ova.disks:
                layout.check_present(vdi)
        self.view = fileio.FileView(f.fileno(), path, size=fsize, owner=f)

    def chunk_name(self, ref, slot):
        return self._names.get((ref, slot), '%s/%08d' % (ref, slot))

    def layer(self, vdi):
        view = fileio.FileView(self._file.fileno(),
                               '%s:%s' % (self.path, vdi.ref),
                               size=self.view.size, owner=self._file)
        return XvaLayer(view, self.path, vdi, self.indexes[vdi.ref],
                        self.ova.creator, self.chunk_name)

    def close(self):
        self._file.close()


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
                _first_member(path, ti, None)
                data = self._read_member(tf, ti)
                self.ova = parse_ova_xml(path, data,
                                         limits.max_virtual_size)
                self._ova_digest = hashlib.sha256(data).digest()
                break
            else:
                raise exception.InvalidArchive(path=path,
                                               reason='empty archive')

    def _members(self):
        """Yield (TarInfo, TarFile) for every member, in one pass; then
        check that the archive ends properly."""
        path = self.path
        with contextlib.closing(self._opener()) as f:
            fileobj = compression.open_reader(path, f)
            with _archive_errors(path):
                tf = tarfile.open(fileobj=fileobj, mode='r|',
                                  bufsize=1 << 20)
            while True:
                with _archive_errors(path):
                    ti = tf.next()
                    del tf.members[:]
                if ti is None:
                    break
                yield ti, tf
            with _archive_errors(path):
                self._check_end(tf)

    def _check_end(self, tf):
        stream = tf.fileobj
        if stream.tell() - tf.offset < BLOCK:
            raise exception.InvalidArchive(
                path=self.path, reason='truncated: the archive ends without '
                'its end-of-archive marker')
        # Reading to the end also makes the decompressor verify its CRC.
        while True:
            data = stream.read(1 << 20)
            if not data:
                break
            if data.count(0) != len(data):
                raise exception.InvalidArchive(
                    path=self.path, reason='data after the end-of-archive '
                    'marker (a damaged tar header?)')

    def _read_member(self, tf, ti):
        with _archive_errors(self.path):
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
        layout = Layout(path, self.ova.vdi_sizes)
        screen = _screen(path, self.limits, self.ova)
        stats = collections.defaultdict(lambda: [0, set()])
        held = None
        first = True
        with contextlib.closing(self._members()) as members:
            for ti, tf in members:
                if first:
                    first = False
                    _first_member(path, ti, screen)
                    data = self._read_member(tf, ti)
                    if hashlib.sha256(data).digest() != self._ova_digest:
                        raise _xml_error(path, 'changed while the archive '
                                         'was being read')
                    continue
                name = screen.check(ti)
                if name is None:
                    layout.directory(ti.name)
                    continue
                kind, what = layout.member(name, ti.size)
                if kind == CHUNK_MEMBER:
                    held = (self._read_member(tf, ti) if what.ref == want
                            else None)
                    continue
                chunk, algo = what
                stats[chunk.ref][0] += chunk.length
                stats[chunk.ref][1].add(algo)
                if chunk.ref != want:
                    continue
                verify_chunk(path, chunk, algo, self._read_member(tf, ti),
                             held)
                if chunk.length:
                    yield chunk.pos, held
                held = None
        layout.finish()
        for vdi in self.ova.disks:
            layout.check_present(vdi)
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
            'subformat': _subformat(kinds), 'id': self.vdi.uuid,
            'parent_id': None, 'virtual_size': self.vdi.virtual_size,
            'allocated_bytes': allocated,
            'creator': self._stream.ova.creator,
        }]

    def write_to(self, target, progress=None):
        size = self.vdi.virtual_size
        target.resize(size)
        fresh = target.fresh
        # On a target that holds data already (a block device), the
        # chunks left out must be zeroed: remember which came.
        written = None if fresh else bytearray(-(-size // CHUNK))
        for pos, data in self._stream.chunks(self.vdi.ref):
            target.write_data(pos, data, over_hole=fresh)
            if written is not None:
                written[pos // CHUNK] = 1
            if progress:
                progress(pos + len(data), size)
        if written is not None:
            _zero_missing(target, written, size)
        if progress:
            progress(size, size)


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
    if _is_compressed(path):
        return open_xva_stream(path, limits, None)
    xt = XvaTar(path, limits)
    try:
        disks = [xva_disk(xt, vdi) for vdi in xt.ova.disks]
    except Exception:
        xt.close()
        raise
    return vm.Vm(path, KIND, disks, facts=xt.ova.vm, closer=xt.close)


def head_is_xva(head):
    """Whether the first bytes of an archive (plain, gzip, bzip2, xz, zstd)
    start with ``ova.xml``: an XVA, which can be read as it arrives."""
    ti = tar.head_first_member(head)
    return ti is not None and tar.normalise(ti.name) == OVA_XML


def open_xva_stream(path, limits, opener):
    """A :class:`~any2kvm_os.vm.Vm` for an XVA read through ``opener`` (a
    new file object per pass: one for ova.xml, one per disk written)."""
    stream = XvaStream(path, limits, opener=opener)
    disks = [XvaStreamDisk(stream, vdi) for vdi in stream.ova.disks]
    return vm.Vm(path, KIND, disks, facts=stream.ova.vm)


class XvaType(base.ContainerType):
    name = KIND
    description = 'a XenServer/XCP-ng XVA export'
    noun = 'a XenServer XVA export'
    archive_title = 'XVA'
    # Before the XenServer archive plugin, which takes any tar.
    priority = 40
    glance_kinds = {'xva': ('ovf', None)}

    def probe(self, view, path, limits):
        if tar.looks_like_tar(view):
            return looks_like_xva(view)
        return tar.is_compressed(view) and compressed_looks_like_xva(path)

    def open(self, path, limits):
        return open_xva(path, limits)

    def probe_head(self, head):
        return head_is_xva(head)

    def open_stream(self, label, limits, opener, fallback):
        return open_xva_stream(label, limits, opener)
