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

"""XVA archives (XenServer/XCP-ng exports): ova.xml, chunks, whole tars.

Two ways to make one: crafted here byte for byte (:func:`ova_xml`,
:func:`chunk_members`, :func:`write_xva`), or cut and packed by Debian's
``xva-img`` (:func:`disk_import`, :func:`package`) around an ova.xml
written here.
"""

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from xml.sax import saxutils

import xxhash

from tests.lib import tools

MiB = 1 << 20


# ---------------------------------------------------------------------------
# crafted: ova.xml, chunk members and tars
# ---------------------------------------------------------------------------

def xmlrpc(value):
    """A Python value as an XML-RPC <value>, the way xapi writes ova.xml
    (integers as decimal strings, as XenAPI sends int64s)."""
    if isinstance(value, bool):
        return '<value><boolean>%d</boolean></value>' % value
    if isinstance(value, dict):
        return '<value><struct>%s</struct></value>' % ''.join(
            '<member><name>%s</name>%s</member>' % (saxutils.escape(k),
                                                    xmlrpc(v))
            for k, v in value.items())
    if isinstance(value, list):
        return '<value><array><data>%s</data></array></value>' % ''.join(
            xmlrpc(v) for v in value)
    return '<value>%s</value>' % saxutils.escape(str(value))


def ova_xml(disks, cds=(), vifs=(), vm=None, extra_objects=(),
            uefi=False):
    """ova.xml of one VM.

    ``disks``: [(VDI id, virtual size, userdevice)]; ``cds``: userdevices
    of CD drives (one empty, the others with an ISO VDI); ``vifs``:
    [(device, MAC)].
    """
    objects = []
    vbds = []
    n = 100
    for ref, size, userdevice in disks:
        n += 1
        vbd = 'Ref:%d' % n
        vbds.append(vbd)
        objects.append({'class': 'VBD', 'id': vbd, 'snapshot': {
            'uuid': 'vbd-%d' % n, 'VM': 'Ref:0', 'VDI': ref,
            'userdevice': str(userdevice), 'bootable': userdevice == 0,
            'type': 'Disk', 'mode': 'RW', 'empty': False}})
        objects.append({'class': 'VDI', 'id': ref, 'snapshot': {
            'uuid': 'uuid-%s' % ref.replace(':', '-'),
            'name_label': 'disk %s' % userdevice,
            'virtual_size': str(size), 'type': 'system', 'SR': 'Ref:99',
            'VBDs': [vbd]}})
    for i, userdevice in enumerate(cds):
        n += 1
        vbd = 'Ref:%d' % n
        vbds.append(vbd)
        iso = 'OpaqueRef:NULL' if i == 0 else 'Ref:%d' % (n + 1000)
        objects.append({'class': 'VBD', 'id': vbd, 'snapshot': {
            'VM': 'Ref:0', 'VDI': iso, 'userdevice': str(userdevice),
            'bootable': False, 'type': 'CD', 'mode': 'RO',
            'empty': i == 0}})
        if i:
            objects.append({'class': 'VDI', 'id': iso, 'snapshot': {
                'uuid': 'iso', 'name_label': 'tools.iso',
                'virtual_size': str(50 * MiB), 'type': 'user'}})
    vif_refs = []
    for device, mac in vifs:
        n += 1
        vif_refs.append('Ref:%d' % n)
        objects.append({'class': 'VIF', 'id': 'Ref:%d' % n, 'snapshot': {
            'device': str(device), 'MAC': mac, 'network': 'Ref:98',
            'VM': 'Ref:0', 'MTU': '1500'}})
    if vifs:
        objects.append({'class': 'network', 'id': 'Ref:98', 'snapshot': {
            'name_label': 'Pool-wide network associated with eth0'}})
    record = {
        'uuid': '3f1e0e6a-0000-4000-8000-000000000001',
        'name_label': 'test-vm', 'name_description': '',
        'power_state': 'Halted', 'is_a_template': False,
        'is_a_snapshot': False, 'is_control_domain': False,
        'memory_static_max': str(2048 * MiB),
        'memory_dynamic_max': str(2048 * MiB),
        'VCPUs_max': '4', 'VCPUs_at_startup': '4',
        'HVM_boot_policy': 'BIOS order',
        'HVM_boot_params': {'order': 'cd', 'firmware': 'uefi'} if uefi
        else {'order': 'cd'},
        'platform': {'cores-per-socket': '2', 'acpi': '1',
                     'secureboot': 'false'},
        'other_config': {'install-distro': 'debianbuster',
                         'base_template_name': 'Debian Buster 10'},
        'VBDs': vbds, 'VIFs': vif_refs,
        'guest_metrics': 'OpaqueRef:NULL',
    }
    record.update(vm or {})
    objects.insert(0, {'class': 'VM', 'id': 'Ref:0', 'snapshot': record})
    objects.append({'class': 'SR', 'id': 'Ref:99', 'snapshot': {
        'name_label': 'Local storage', 'type': 'lvm'}})
    objects.extend(extra_objects)
    top = {'version': {'hostname': 'xcp1', 'date': '2024-01-01',
                       'product_version': '8.2.1',
                       'product_brand': 'XCP-ng', 'build_number': 'r',
                       'xapi_major': '1', 'xapi_minor': '20',
                       'export_vsn': '2'},
           'objects': objects}
    return ('<?xml version="1.0" encoding="UTF-8"?>\n%s\n'
            % xmlrpc(top)).encode()


def vdi_only_xml(disks):
    """ova.xml that describes VDIs and no VM (as some tools write it).

    ``disks``: [(VDI id, virtual size)], in ova.xml order.
    """
    objects = [{'class': 'VDI', 'id': ref, 'snapshot': {
        'uuid': 'uuid-%s' % ref.replace(':', '-'),
        'name_label': 'disk %d' % i, 'virtual_size': str(size),
        'type': 'user', 'SR': 'OpaqueRef:NULL', 'VBDs': []}}
        for i, (ref, size) in enumerate(disks)]
    top = {'version': {'hostname': 'localhost', 'export_vsn': '2'},
           'objects': objects}
    return ('<?xml version="1.0" encoding="UTF-8"?>\n%s\n'
            % xmlrpc(top)).encode()


def checksum(data, algo='sha1'):
    """Checksum member content: SHA-1 lower-case hex; XXH64 as xapi writes
    it (%016LX: upper-case)."""
    if algo == 'sha1':
        return hashlib.sha1(data).hexdigest().encode()
    return ('%016X' % xxhash.xxh64_intdigest(data)).encode()


def chunk_members(ref, chunks, algo='sha1'):
    """[(name, bytes)] for {chunk number: data}, each chunk followed by its
    checksum member."""
    out = []
    for number in sorted(chunks):
        name = '%s/%08d' % (ref, number)
        out.append((name, chunks[number]))
        out.append((name + ('.checksum' if algo == 'sha1' else '.xxhash'),
                    checksum(chunks[number], algo)))
    return out


def write_xva(path, ova, members, compress=None, end=True, pax=False):
    """Write a tar: ova.xml (unless ``ova`` is None), then ``members``
    ([(name, bytes)] or TarInfo objects with their bytes).  ``pax``: a
    pax header before every member."""
    buf = io.BytesIO()
    fmt = tarfile.PAX_FORMAT if pax else tarfile.USTAR_FORMAT
    with tarfile.open(fileobj=buf, mode='w', format=fmt) as tf:
        items = ([('ova.xml', ova)] if ova is not None else []) + members
        for name, data in items:
            if isinstance(name, tarfile.TarInfo):
                tf.addfile(name, io.BytesIO(data) if name.isreg() else None)
                continue
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            if pax:
                ti.pax_headers = {'comment': 'made by a pax writer'}
            tf.addfile(ti, io.BytesIO(data))
    data = buf.getvalue()
    if not end:
        # Cut the end-of-archive blocks: ends at a member boundary.
        data = data.rstrip(b'\0')
        data += b'\0' * (-len(data) % 512)
    if compress == 'gz':
        data = gzip.compress(data)
    with open(path, 'wb') as f:
        f.write(data)
    return path


def pattern(seed, length):
    """Deterministic bytes: the SHA-256 of ``seed``, repeated (not the
    same bytes as ``imagegen.pattern``)."""
    block = hashlib.sha256(b'%d' % seed).digest()
    return (block * (length // len(block) + 1))[:length]


# ova.xml that a safe XML parser must refuse.

BILLION_LAUGHS = b'''<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<value>&lol4;</value>
'''

EXTERNAL_ENTITY = b'''<?xml version="1.0"?>
<!DOCTYPE value [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<value><struct><member><name>objects</name><value>&xxe;</value></member>
</struct></value>
'''


# ---------------------------------------------------------------------------
# written by xva-img
# ---------------------------------------------------------------------------

def find_xva_img():
    """The path of xva-img, or a skip (a failure in CI) without it."""
    path = shutil.which('xva-img')
    if not path:
        tools.missing_tool('xva-img not found (Debian package xva-img)')
    return path


def run(*cmd, cwd):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, '%s\n%s%s' % (cmd, r.stdout, r.stderr)


def make_raw(path, size, seed, layout):
    """A raw disk: ``layout`` is [(offset, length)] of data; the rest are
    holes (they read as zeros)."""
    with open(path, 'wb') as f:
        f.truncate(size)
        for i, (offset, length) in enumerate(layout):
            f.seek(offset)
            f.write(pattern(seed * 100 + i, length))
    return path


def disk_import(xva_img, work, ref, raw):
    os.makedirs(work / ref)
    run(xva_img, 'disk-import', ref, raw, cwd=work)
    return sorted(os.listdir(work / ref))


def package(xva_img, work, name, refs, ova=True):
    items = (['./ova.xml'] if ova else []) + ['./%s' % r for r in refs]
    run(xva_img, 'package', name, *items, cwd=work)
    return work / name


# Disk A: data, an all-zero chunk, a half-zero chunk, holes, small writes,
# and data in its last chunk (so xva-img disk-export sizes it right).
SIZE_A = 12 * MiB
LAYOUT_A = [(0, MiB), (2 * MiB, 300 * 1024), (2 * MiB + 900 * 1024, 4096),
            (6 * MiB + 12345, 777), (SIZE_A - 4096, 4096)]
SIZE_B = 6 * MiB
LAYOUT_B = [(MiB + 512, 2 * MiB), (5 * MiB, 100)]


def single(xva_img, work, size=SIZE_A, layout=LAYOUT_A, ova_size=None):
    """Disk A (or ``size``/``layout``) cut into ``work/Ref:3`` by xva-img,
    beside an ova.xml; returns (raw path, chunk member names)."""
    raw = make_raw(work / 'a.raw', size, 1, layout)
    (work / 'ova.xml').write_bytes(ova_xml([('Ref:3', ova_size or size,
                                             0)], cds=[3]))
    chunks = disk_import(xva_img, work, 'Ref:3', raw)
    return raw, chunks
