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

"""OVF descriptors (DMTF DSP0243, OVF 1.x and 2.x) and OVA manifests.

This module only parses bytes it is given; :mod:`.package` (a local OVA or
OVF directory) and :mod:`.stream` (an OVA as it downloads) find them.

The descriptor is untrusted XML.  It is parsed with defusedxml with every
DTD refused (so no entity expansion, "billion laughs", and no external
entity or reference can be used), its size is bounded (``MAX_OVF_BYTES``)
and so are its element count and nesting depth, checked while it is
parsed.  Elements and attributes are matched by local name so that any
prefix works; the root must be an OVF 1 or 2 ``Envelope``.

What is taken from it:

* ``References/File``: id, href (only a plain name of a file of the same
  archive or directory: a path, ``..``, an absolute name or a URL is
  refused), size, ``compression="gzip"``, ``chunkSize``;
* ``DiskSection/Disk``: id, fileRef (none: a blank disk), capacity in
  ``capacityAllocationUnits`` (a programmatic unit such as
  ``byte * 2^30``), format URI;
* the first ``VirtualSystem`` (the first of a collection, with a
  warning): name, CPUs, cores per socket, memory, firmware, NICs, disk
  controllers, guest OS, product; and the order of the disks: the disk
  items of its hardware section, by controller then address.  Items of a
  ``DeploymentOptionSection`` configuration other than the default one
  are ignored.
"""

import re
import urllib.parse
import xml.etree.ElementTree as ET

import defusedxml
from defusedxml import ElementTree as DET

from any2kvm_os import exception

MiB = 1 << 20

#: A descriptor is a few KiB; VirtualBox ones with their embedded machine
#: description a few hundred.
MAX_OVF_BYTES = 16 * MiB
MAX_ELEMENTS = 100000
MAX_DEPTH = 64
MAX_DISKS = 256
MAX_MANIFEST_BYTES = 1 * MiB

OVF_NAMESPACES = ('http://schemas.dmtf.org/ovf/envelope/1',
                  'http://schemas.dmtf.org/ovf/envelope/2')

#: CIM ResourceType values used here (CIM_ResourceAllocationSettingData).
RT_CPU = 3
RT_MEMORY = 4
RT_IDE = 5
RT_SCSI = 6
RT_NIC = 10
RT_DISK = 17
RT_OTHER_STORAGE = 20
CONTROLLER_TYPES = {RT_IDE: 'ide', RT_SCSI: 'scsi', RT_OTHER_STORAGE: 'sata'}

#: ResourceSubType of controllers -> model reported in the vm dict.
CONTROLLER_MODELS = {
    'lsilogic': 'lsilogic',
    'lsilogicsas': 'lsilogicsas',
    'virtualscsi': 'pvscsi',
    'pvscsi': 'pvscsi',
    'buslogic': 'buslogic',
    'vmware.sata.ahci': 'ahci',
    'ahci': 'ahci',
    'vmware.nvme.controller': 'nvme',
    'virtio-scsi': 'virtio-scsi',
}

#: ResourceSubType of NICs -> model.
NIC_MODELS = {
    'vmxnet3': 'vmxnet3',
    'vmxnet2': 'vmxnet2',
    'vmxnet': 'vmxnet',
    'e1000': 'e1000',
    'e1000e': 'e1000e',
    'pcnet32': 'pcnet32',
    'pcnet': 'pcnet32',
    'virtio': 'virtio',
    'virtio-net': 'virtio',
    'rtl8139': 'rtl8139',
}

#: Legacy (non-programmatic) allocation units seen in the wild.
LEGACY_UNITS = {
    'byte': 1, 'bytes': 1,
    'kb': 1 << 10, 'kilobytes': 1 << 10, 'kib': 1 << 10,
    'mb': 1 << 20, 'megabytes': 1 << 20, 'mib': 1 << 20,
    'gb': 1 << 30, 'gigabytes': 1 << 30, 'gib': 1 << 30,
    'tb': 1 << 40, 'terabytes': 1 << 40, 'tib': 1 << 40,
}

_UNIT_FACTOR_RE = re.compile(r'^([0-9]{1,10})(?:\s*\^\s*([0-9]{1,3}))?$')
_INT_RE = re.compile(r'^\s*\+?([0-9]{1,20})\s*$')
_HOST_RESOURCE_RE = re.compile(r'^(?:ovf:)?/+(disk|file)/(.+)$')
_URL_RE = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*:')
_PROPERTY_RE = re.compile(r'^\$\{([^}]{1,256})\}$')

DIGESTS = {'SHA1': 'sha1', 'SHA224': 'sha224', 'SHA256': 'sha256',
           'SHA384': 'sha384', 'SHA512': 'sha512'}
DIGEST_HEX_LEN = {'SHA1': 40, 'SHA224': 56, 'SHA256': 64, 'SHA384': 96,
                  'SHA512': 128}
_MANIFEST_RE = re.compile(r'^\s*([A-Za-z0-9]+)\s*\((.+)\)\s*=\s*'
                          r'([0-9A-Fa-f]+)\s*$')


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def _split(tag):
    """(namespace, local name) of an element or attribute name."""
    if not isinstance(tag, str):
        return None, None
    if tag.startswith('{'):
        ns, _sep, local = tag[1:].partition('}')
        return ns, local
    return '', tag


def _local(el):
    return _split(el.tag)[1]


def _children(el, *names):
    return [c for c in el if _local(c) in names]


def _child(el, name):
    for c in el:
        if _local(c) == name:
            return c
    return None


def _text(el, name):
    """Stripped text of the first child called ``name``, or None."""
    c = _child(el, name)
    if c is None or c.text is None:
        return None
    text = c.text.strip()
    return text or None


def _attr(el, name, prefer=OVF_NAMESPACES + ('',)):
    """An attribute by local name: in ``prefer`` namespaces first, then in
    any namespace (producers get prefixes wrong)."""
    other = None
    for key, value in el.attrib.items():
        ns, local = _split(key)
        if local != name:
            continue
        if ns in prefer:
            return value
        if other is None:
            other = value
    return other


def _one_line(text, limit=200):
    """Untrusted text made safe for a one-line message."""
    text = ' '.join(str(text).split())
    return text if len(text) <= limit else text[:limit] + '...'


def parse_int(text, path, what, maximum=None):
    """A non-negative decimal integer (bounded number of digits)."""
    m = _INT_RE.match(text or '')
    if not m:
        raise exception.InvalidImage(
            path=path, reason='%s is %r: not a non-negative integer'
            % (what, _one_line(text, 40)))
    value = int(m.group(1))
    if maximum is not None and value > maximum:
        raise exception.InvalidImage(
            path=path, reason='%s is %d: more than %d' % (what, value,
                                                          maximum))
    return value


def _soft_int(text):
    """An integer if ``text`` is one, else None (informational fields)."""
    m = _INT_RE.match(text or '')
    return int(m.group(1)) if m else None


def parse_units(expr, path, what='allocation units'):
    """Bytes per unit of a CIM programmatic unit (DSP0004 annex C).

    ``byte``, ``byte * 2^30``, ``byte * 1024 * 1024``, ``byte*10^9``...
    (a base of ``byte`` times factors ``N`` or ``N^M``) and the legacy
    names ``KB``/``MegaBytes``/``GigaBytes`` (binary multiples).
    """
    if expr is None:
        return 1
    s = expr.strip()
    if s.lower() in LEGACY_UNITS:
        return LEGACY_UNITS[s.lower()]
    parts = [p.strip() for p in s.split('*')]
    if parts[0].lower() not in ('byte', 'bytes'):
        raise exception.InvalidImage(
            path=path, reason='%s %r: only multiples of bytes are '
            'understood' % (what, _one_line(expr, 60)))
    mult = 1
    for p in parts[1:]:
        m = _UNIT_FACTOR_RE.match(p)
        if not m:
            raise exception.InvalidImage(
                path=path, reason='%s %r: factor %r is not N or N^M'
                % (what, _one_line(expr, 60), _one_line(p, 20)))
        base = int(m.group(1))
        exp = int(m.group(2)) if m.group(2) is not None else 1
        if base > 1 and exp > 128:
            raise exception.InvalidImage(
                path=path, reason='%s %r: absurd exponent'
                % (what, _one_line(expr, 60)))
        mult *= base ** exp
        if mult > 1 << 128:
            raise exception.InvalidImage(
                path=path, reason='%s %r: absurd multiplier'
                % (what, _one_line(expr, 60)))
    if mult == 0:
        raise exception.InvalidImage(
            path=path, reason='%s %r is zero' % (what, _one_line(expr, 60)))
    return mult


def format_from_uri(uri):
    """Short format name of a Disk ``ovf:format`` URI, or None if unknown."""
    if not uri:
        return None
    u = uri.lower()
    if 'vmdk' in u:
        return 'vmdk'
    if 'qcow' in u:
        return 'qcow2'
    if 'vhdx' in u:
        return 'vhdx'
    if 'vhd' in u or 'bb676673' in u:
        return 'vhd'
    return None


def plain_name(name):
    """True if ``name`` names a file of the same directory/archive only."""
    return bool(name) and not (
        '/' in name or '\\' in name or '\0' in name or name in ('.', '..')
        or _URL_RE.match(name))


def href_candidates(href):
    """The member names an href may stand for: itself, and its URI-decoded
    form if it has %-escapes.  Every candidate must be a plain name."""
    cands = [href]
    if '%' in href:
        decoded = urllib.parse.unquote(href)
        if decoded != href:
            cands.append(decoded)
    if not all(plain_name(c) for c in cands):
        return None
    return cands


# ---------------------------------------------------------------------------
# XML
# ---------------------------------------------------------------------------

class _TooBig(Exception):
    pass


class _BoundedBuilder(ET.TreeBuilder):
    """A TreeBuilder that stops an absurd document while it is parsed."""

    def __init__(self):
        super(_BoundedBuilder, self).__init__()
        self.count = 0
        self.depth = 0

    def start(self, tag, attrs):
        self.count += 1
        self.depth += 1
        if self.count > MAX_ELEMENTS:
            raise _TooBig('more than %d XML elements' % MAX_ELEMENTS)
        if self.depth > MAX_DEPTH:
            raise _TooBig('XML nested deeper than %d elements' % MAX_DEPTH)
        return super(_BoundedBuilder, self).start(tag, attrs)

    def end(self, tag):
        self.depth -= 1
        return super(_BoundedBuilder, self).end(tag)


def parse_xml(data, path):
    """The root element of ``data``; DTDs, entities and external
    references are refused, size and element count bounded."""
    if len(data) > MAX_OVF_BYTES:
        raise exception.InvalidImage(
            path=path, reason='descriptor is %d bytes: more than %d, refused '
            'as absurd' % (len(data), MAX_OVF_BYTES))
    parser = DET.DefusedXMLParser(target=_BoundedBuilder(), forbid_dtd=True,
                                  forbid_entities=True,
                                  forbid_external=True)
    try:
        parser.feed(data)
        return parser.close()
    except DET.DTDForbidden:
        reason = ('refused: the XML has a document type declaration '
                  '(<!DOCTYPE>); DTDs, entities and external references are '
                  'not allowed in an OVF descriptor')
    except DET.EntitiesForbidden:
        reason = 'refused: XML entity declarations are not allowed'
    except DET.ExternalReferenceForbidden:
        reason = 'refused: XML external references are not allowed'
    except defusedxml.DefusedXmlException as e:
        reason = 'refused: %s' % type(e).__name__
    except _TooBig as e:
        reason = '%s: refused as absurd' % e
    except ET.ParseError as e:
        reason = 'not well-formed XML (%s)' % _one_line(e, 120)
    except (ValueError, LookupError) as e:
        # An unknown encoding name, say.
        reason = 'unreadable XML (%s)' % _one_line(e, 120)
    raise exception.InvalidImage(path=path, reason=reason)


def looks_like_ovf(view):
    """True if ``view`` starts like an OVF 1/2 envelope (content check)."""
    head = view.pread(64 << 10, 0)
    if head.startswith(b'\xef\xbb\xbf'):
        text = head[3:].decode('utf-8', 'replace')
    elif head[:2] in (b'\xff\xfe', b'\xfe\xff'):
        text = head.decode('utf-16', 'replace')
    else:
        text = head.decode('utf-8', 'replace')
    text = text.lstrip()
    if not text.startswith('<'):
        return False
    return (re.search(r'<([A-Za-z_][\w.-]*:)?Envelope[\s>/]', text)
            is not None and 'schemas.dmtf.org/ovf/envelope/' in text)


# ---------------------------------------------------------------------------
# the descriptor
# ---------------------------------------------------------------------------

class FileRef(object):
    """A ``References/File``."""

    def __init__(self, file_id, href, size, compression, chunk_size):
        self.id = file_id
        self.href = href
        #: The names the href may stand for (plain names only).
        self.names = href_candidates(href)
        self.size = size
        self.compression = compression
        self.chunk_size = chunk_size

    def __repr__(self):
        return '<FileRef %s %r>' % (self.id, self.href)


class DiskDef(object):
    """A ``DiskSection/Disk`` (or a disk item that names a file)."""

    def __init__(self, disk_id, file_id, capacity, format_uri,
                 populated_size=None):
        self.id = disk_id
        self.file_id = file_id
        #: Bytes, or None when only the file knows (``ovf:/file/`` item).
        self.capacity = capacity
        self.format_uri = format_uri
        self.format = format_from_uri(format_uri)
        self.populated_size = populated_size

    def __repr__(self):
        return '<DiskDef %s file=%s capacity=%s>' % (self.id, self.file_id,
                                                     self.capacity)


class PlacedDisk(object):
    """A disk in output order, with where the VM attaches it."""

    def __init__(self, disk, controller):
        self.disk = disk
        #: {'type', 'model', 'bus', 'unit'} or None if no item places it.
        self.controller = controller


class Descriptor(object):
    """What any2kvm uses of an OVF descriptor."""

    def __init__(self, path, version, files, disks, placed, vm, notes):
        self.path = path
        #: '1' or '2'.
        self.version = version
        #: {file id: FileRef}, in document order.
        self.files = files
        #: {disk id: DiskDef}, in document order.
        self.disks = disks
        #: [PlacedDisk] in output order.
        self.placed = placed
        #: The facts of :class:`any2kvm_os.vm.Vm`.
        self.vm = vm
        #: Warnings for the user, to be logged once the package is known
        #: to be usable (a refusal is one line and nothing else).
        self.notes = notes


def _parse_files(root, path):
    files = {}
    for refs in _children(root, 'References'):
        for el in _children(refs, 'File'):
            file_id = _attr(el, 'id')
            href = _attr(el, 'href')
            if not file_id:
                raise exception.InvalidImage(
                    path=path, reason='a References/File has no ovf:id')
            if file_id in files:
                raise exception.InvalidImage(
                    path=path, reason='file id %r is declared twice'
                    % _one_line(file_id, 60))
            if not href:
                raise exception.InvalidImage(
                    path=path, reason='file %r has no ovf:href'
                    % _one_line(file_id, 60))
            size = _attr(el, 'size')
            size = (parse_int(size, path, 'ovf:size of file %r'
                              % _one_line(file_id, 60))
                    if size is not None else None)
            compression = (_attr(el, 'compression') or '').strip().lower()
            if compression in ('', 'identity'):
                compression = None
            elif compression != 'gzip':
                raise exception.UnsupportedImage(
                    path=path, reason='file %r: ovf:compression %r is not '
                    'supported (only gzip)' % (_one_line(file_id, 60),
                                               _one_line(compression, 30)))
            chunk = _attr(el, 'chunkSize')
            chunk = (parse_int(chunk, path, 'ovf:chunkSize of file %r'
                               % _one_line(file_id, 60))
                     if chunk is not None else None)
            if chunk == 0:
                raise exception.InvalidImage(
                    path=path, reason='file %r: ovf:chunkSize is 0'
                    % _one_line(file_id, 60))
            ref = FileRef(file_id, href, size, compression, chunk)
            if ref.names is None:
                raise exception.InvalidArchive(
                    path=path, reason='file %r: ovf:href %r: href outside '
                    'the archive (only the plain name of a file stored '
                    'beside the descriptor is allowed)'
                    % (_one_line(file_id, 60), _one_line(href, 120)))
            files[file_id] = ref
    return files


def _properties(root):
    """{key: value} of the ProductSection properties (for ${key})."""
    props = {}
    for el in root.iter():
        if _local(el) == 'Property':
            key = _attr(el, 'key')
            value = _attr(el, 'value')
            if key and value is not None and key not in props:
                props[key] = value
    return props


def _parse_disks(root, path, files, props):
    disks = {}
    for sec in _children(root, 'DiskSection'):
        for el in _children(sec, 'Disk'):
            disk_id = _attr(el, 'diskId')
            if not disk_id:
                raise exception.InvalidImage(
                    path=path, reason='a DiskSection/Disk has no ovf:diskId')
            what = 'disk %r' % _one_line(disk_id, 60)
            if disk_id in disks:
                raise exception.InvalidImage(
                    path=path, reason='%s is declared twice' % what)
            file_id = _attr(el, 'fileRef') or None
            if file_id is not None and file_id not in files:
                raise exception.InvalidImage(
                    path=path, reason='%s: ovf:fileRef %r names no '
                    'References/File' % (what, _one_line(file_id, 60)))
            cap = _attr(el, 'capacity')
            if cap is None:
                raise exception.InvalidImage(
                    path=path, reason='%s has no ovf:capacity' % what)
            m = _PROPERTY_RE.match(cap.strip())
            if m:
                if m.group(1) not in props:
                    raise exception.InvalidImage(
                        path=path, reason='%s: ovf:capacity %r refers to an '
                        'undefined property' % (what, _one_line(cap, 60)))
                cap = props[m.group(1)]
            capacity = parse_int(cap, path, '%s: ovf:capacity' % what)
            units = parse_units(_attr(el, 'capacityAllocationUnits'), path,
                                '%s: ovf:capacityAllocationUnits' % what)
            capacity *= units
            if capacity == 0:
                raise exception.InvalidImage(
                    path=path, reason='%s has a capacity of 0 bytes' % what)
            populated = _soft_int(_attr(el, 'populatedSize'))
            disks[disk_id] = DiskDef(disk_id, file_id, capacity,
                                     _attr(el, 'format'), populated)
            if len(disks) > MAX_DISKS:
                raise exception.InvalidImage(
                    path=path, reason='more than %d disks: refused as absurd'
                    % MAX_DISKS)
    return disks


def _default_configuration(root):
    for el in root.iter():
        if _local(el) == 'DeploymentOptionSection':
            configs = _children(el, 'Configuration')
            for c in configs:
                if (_attr(c, 'default') or '').strip().lower() in (
                        'true', '1'):
                    return _attr(c, 'id')
            if configs:
                return _attr(configs[0], 'id')
    return None


def _applies(item, config):
    wanted = _attr(item, 'configuration')
    if not wanted or not wanted.strip():
        return True
    return config is not None and config in wanted.split()


def _model(subtype, table):
    if not subtype:
        return None
    key = subtype.strip().lower()
    return table.get(key, key)


def _virtual_systems(root):
    return [el for el in root.iter() if _local(el) == 'VirtualSystem']


def _parse_os(vs):
    sec = _child(vs, 'OperatingSystemSection')
    if sec is None:
        return None
    return {'cim_id': _soft_int(_attr(sec, 'id')),
            'vmware_os_type': _attr(sec, 'osType'),
            'description': _text(sec, 'Description')}


def _parse_product(vs):
    for sec in _children(vs, 'ProductSection'):
        product = {}
        for key, name in (('product', 'Product'), ('vendor', 'Vendor'),
                          ('version', 'Version')):
            value = _text(sec, name)
            if value is not None:
                product[key] = value
        if product:
            return product
    return None


def _virtualbox_firmware(vs):
    """'uefi' or 'bios' from a VirtualBox ``vbox:Machine`` (its
    ``Hardware/Firmware type="EFI..."``), or None."""
    for machine in vs.iter():
        ns, local = _split(machine.tag)
        if local == 'Machine' and 'virtualbox' in (ns or ''):
            for el in machine.iter():
                if _local(el) == 'Firmware':
                    kind = (_attr(el, 'type') or '').strip().upper()
                    return 'uefi' if kind.startswith('EFI') else 'bios'
    return None


def _parse_hardware(vs, path, disks, config):
    """(facts, placed disk ids with controllers, in output order)."""
    facts = {'cpus': None, 'cores_per_socket': None, 'memory_mb': None,
             'firmware': 'bios', 'nics': [], 'disk_controllers': []}
    hw = _child(vs, 'VirtualHardwareSection')
    if hw is None:
        return facts, []
    vmware_firmware = False
    controllers = {}    # InstanceID -> (doc index, dict)
    disk_items = []     # (doc index, parent, unit, disk id)
    for index, item in enumerate(hw):
        local = _local(item)
        if local in ('Config', 'ExtraConfig'):
            key = _attr(item, 'key', prefer=())
            value = _attr(item, 'value', prefer=())
            if (key or '').strip() == 'firmware':
                facts['firmware'] = ('uefi' if (value or '').strip().lower()
                                     == 'efi' else 'bios')
                vmware_firmware = True
            continue
        if local not in ('Item', 'StorageItem', 'EthernetPortItem'):
            continue
        if not _applies(item, config):
            continue
        rtype = _soft_int(_text(item, 'ResourceType'))
        if rtype == RT_CPU:
            facts['cpus'] = _soft_int(_text(item, 'VirtualQuantity'))
            cores = _soft_int(_text(item, 'CoresPerSocket'))
            if cores:
                facts['cores_per_socket'] = cores
        elif rtype == RT_MEMORY:
            qty = _soft_int(_text(item, 'VirtualQuantity'))
            if qty is not None:
                units = _text(item, 'AllocationUnits') or 'byte * 2^20'
                facts['memory_mb'] = qty * parse_units(
                    units, path, 'memory AllocationUnits') // MiB
        elif rtype == RT_NIC:
            facts['nics'].append({
                'model': _model(_text(item, 'ResourceSubType'), NIC_MODELS),
                'network': _text(item, 'Connection')})
        elif rtype in CONTROLLER_TYPES:
            subtype = _text(item, 'ResourceSubType')
            ctype = CONTROLLER_TYPES[rtype]
            if rtype == RT_OTHER_STORAGE and subtype and \
                    'nvme' in subtype.lower():
                ctype = 'nvme'
            ctrl = {'id': _text(item, 'InstanceID'), 'type': ctype,
                    'model': _model(subtype, CONTROLLER_MODELS),
                    'bus': _soft_int(_text(item, 'Address'))}
            if ctrl['id'] is not None:
                controllers.setdefault(ctrl['id'], (index, ctrl))
            facts['disk_controllers'].append(ctrl)
        elif rtype == RT_DISK:
            host = _text(item, 'HostResource')
            m = _HOST_RESOURCE_RE.match(host or '')
            if not m:
                raise exception.InvalidImage(
                    path=path, reason='disk item %r: HostResource %r is not '
                    'ovf:/disk/<id> or ovf:/file/<id>' % (
                        _one_line(_text(item, 'ElementName') or index, 60),
                        _one_line(host, 60)))
            kind, ident = m.group(1), m.group(2)
            if kind == 'file':
                # A disk item backed directly by a file: its size is the
                # file's own.
                ref = 'file:' + ident
                if ref not in disks:
                    disks[ref] = DiskDef(ident, ident, None, None)
                ident = ref
            elif ident not in disks:
                raise exception.InvalidImage(
                    path=path, reason='disk item refers to disk %r, which '
                    'the DiskSection does not declare' % _one_line(ident, 60))
            disk_items.append((index, _text(item, 'Parent'),
                               _soft_int(_text(item, 'AddressOnParent')),
                               ident))
        # CD/DVD (15, 16), floppy (14), USB, sound, video...: not disks.

    # Disks by controller (controllers of a type in the order that type
    # first appears, then by bus number) then by address on it.
    type_rank = {}
    for _index, ctrl in sorted(controllers.values(), key=lambda c: c[0]):
        type_rank.setdefault(ctrl['type'], len(type_rank))
    inf = float('inf')

    def order(entry):
        index, parent, unit, _ident = entry
        c = controllers.get(parent)
        if c is None:
            return (inf, inf, inf, unit if unit is not None else inf, index)
        cindex, ctrl = c
        return (type_rank[ctrl['type']],
                ctrl['bus'] if ctrl['bus'] is not None else inf, cindex,
                unit if unit is not None else inf, index)

    if not vmware_firmware:
        facts['firmware'] = _virtualbox_firmware(vs) or facts['firmware']

    placed = []
    seen = set()
    for entry in sorted(disk_items, key=order):
        _index, parent, unit, ident = entry
        if ident in seen:
            raise exception.InvalidImage(
                path=path, reason='disk %r is attached twice'
                % _one_line(disks[ident].id, 60))
        seen.add(ident)
        c = controllers.get(parent)
        placed.append((ident, {
            'type': c[1]['type'] if c else None,
            'model': c[1]['model'] if c else None,
            'bus': c[1]['bus'] if c else None,
            'unit': unit}))
    return facts, placed


def parse(data, path):
    """Parse descriptor bytes into a :class:`Descriptor`."""
    root = parse_xml(data, path)
    ns, local = _split(root.tag)
    if local != 'Envelope' or ns not in OVF_NAMESPACES:
        raise exception.UnsupportedImage(
            path=path, reason='not an OVF 1.x/2.x descriptor (root element '
            '%r)' % _one_line(root.tag, 120))
    version = ns.rsplit('/', 1)[1]
    files = _parse_files(root, path)
    props = _properties(root)
    disks = _parse_disks(root, path, files, props)
    config = _default_configuration(root)

    systems = _virtual_systems(root)
    vm = {'name': None, 'cpus': None, 'cores_per_socket': None,
          'memory_mb': None, 'firmware': 'bios', 'nics': [],
          'disk_controllers': [], 'os': None, 'product': None}
    placed_ids = []
    notes = []
    if systems:
        vs = systems[0]
        if len(systems) > 1:
            notes.append('%s: holds %d virtual systems; only the first (%s) '
                         'and its disks are used' % (
                             path, len(systems), _one_line(
                                 _text(vs, 'Name') or _attr(vs, 'id'), 60)))
        vm['name'] = _text(vs, 'Name') or _attr(vs, 'id')
        facts, placed_ids = _parse_hardware(vs, path, disks, config)
        vm.update(facts)
        vm['os'] = _parse_os(vs)
        vm['product'] = _parse_product(vs) or _parse_product(root)
    else:
        notes.append('%s: no VirtualSystem; the disks are taken in '
                     'DiskSection order' % path)

    placed = [PlacedDisk(disks[ident], ctrl) for ident, ctrl in placed_ids]
    if len(systems) <= 1:
        used = {ident for ident, _c in placed_ids}
        for ident, disk in disks.items():
            if ident not in used:
                if systems:
                    notes.append('%s: disk %s is attached to no controller; '
                                 'it comes after the attached ones'
                                 % (path, _one_line(ident, 60)))
                placed.append(PlacedDisk(disk, None))
    for p in placed:
        if p.disk.file_id is not None and p.disk.file_id not in files:
            raise exception.InvalidImage(
                path=path, reason='disk item refers to file %r, which '
                'References does not declare' % _one_line(p.disk.file_id, 60))
    if len(placed) > MAX_DISKS:
        raise exception.InvalidImage(
            path=path, reason='more than %d disks: refused as absurd'
            % MAX_DISKS)
    vm['disks'] = [{
        'disk_id': p.disk.id,
        'file': files[p.disk.file_id].href if p.disk.file_id else None,
        'capacity': p.disk.capacity,
        'format': p.disk.format,
        'controller': p.controller} for p in placed]
    return Descriptor(path, version, files, disks, placed, vm, notes)


# ---------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------

def parse_manifest(data, path):
    """[(algorithm, name, hex digest)] of a ``.mf`` file.

    Lines are ``SHA256(name)= hex`` (spaces tolerated around the
    parentheses and ``=``); SHA1, SHA224, SHA256, SHA384 and SHA512.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise exception.InvalidArchive(
            path=path, reason='manifest is %d bytes: more than %d, refused '
            'as absurd' % (len(data), MAX_MANIFEST_BYTES))
    try:
        text = data.decode('utf-8-sig')
    except UnicodeDecodeError:
        raise exception.InvalidArchive(path=path,
                                       reason='manifest is not UTF-8 text')
    entries = []
    seen = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_RE.match(line)
        if not m:
            raise exception.InvalidArchive(
                path=path, reason='manifest line %d is not '
                '"SHAn(name)= digest": %r' % (lineno, _one_line(line, 80)))
        algo, name, digest = m.group(1).upper(), m.group(2).strip(), \
            m.group(3).lower()
        if algo not in DIGESTS:
            raise exception.UnsupportedImage(
                path=path, reason='manifest line %d: digest %r is not '
                'supported (SHA1, SHA256, SHA512...)'
                % (lineno, _one_line(algo, 20)))
        if len(digest) != DIGEST_HEX_LEN[algo]:
            raise exception.InvalidArchive(
                path=path, reason='manifest line %d: a %s digest has %d hex '
                'digits, not %d' % (lineno, algo, DIGEST_HEX_LEN[algo],
                                    len(digest)))
        if not plain_name(name):
            raise exception.InvalidArchive(
                path=path, reason='manifest names %r: outside the archive '
                '(only plain names)' % _one_line(name, 120))
        key = (algo, name)
        if key in seen:
            if seen[key] != digest:
                raise exception.InvalidArchive(
                    path=path, reason='manifest lists %r twice with '
                    'different %s digests' % (_one_line(name, 120), algo))
            continue
        seen[key] = digest
        entries.append((algo, name, digest))
    return entries


def manifest_by_name(entries):
    """{name: [(algorithm, hex digest)]} of :func:`parse_manifest`'s
    entries."""
    by_name = {}
    for algo, name, digest in entries:
        by_name.setdefault(name, []).append((algo, digest))
    return by_name
