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

"""Windows registry hives for the tests, with no Windows image.

hivex cannot create a hive from nothing, so :func:`empty_hive` writes the
smallest valid one itself, following the documented layout of the
Windows registry file format ("regf"): a 4 KiB base block (signature,
sequence numbers, version 1.3, the root cell's offset, the hive bins'
size, and the XOR checksum of its first 508 bytes), then one 4 KiB hive
bin ("hbin") holding the root key node ("nk", flags KEY_HIVE_ENTRY |
KEY_NO_DELETE | KEY_COMP_NAME) and its security cell ("sk", a
self-relative security descriptor with no ACL), each cell prefixed by its
negative (allocated) size, and the rest of the bin one free cell.

:func:`build(path, reg_text)` then merges a ``.reg`` file (the format of
regedit's export) into it with ``hivexregedit --merge``.
:data:`SYSTEM_REG` is a SYSTEM hive of a Windows Server guest that ran on
XenServer: two ControlSets, ``Select``, the Citrix PV drivers' services,
an ``UpperFilters`` naming xenfilt, the IDE/AHCI services, and the
CriticalDeviceDatabase's IDE entries, laid out as Microsoft documents
them (HKLM\\SYSTEM\\CurrentControlSet\\Services\\NAME, Start: 0 boot,
1 system, 2 automatic, 3 manual, 4 disabled).
"""

import struct
import subprocess

HBIN = 0x1000


def _cell(data):
    size = (len(data) + 4 + 7) & ~7
    return struct.pack('<i', -size) + data + b'\0' * (size - 4 - len(data))


def empty_hive(name='SYSTEM'):
    """The bytes of a valid hive with only its root key."""
    nk_off = 0x20                    # cells start after the hbin header
    sd = struct.pack('<BBHIIII', 1, 0, 0x8004, 0, 0, 0, 0)   # no DACL
    root_name = b'ROOT'
    nk_len = 4 + ((0x4C + len(root_name) + 7) & ~7) - 4
    sk_off = nk_off + ((nk_len + 4 + 7) & ~7)
    nk = struct.pack(
        '<2sHQIIIIIIIIIIIIIIIHH', b'nk', 0x2C, 0, 0,
        0xFFFFFFFF,                  # parent: none
        0, 0, 0xFFFFFFFF, 0xFFFFFFFF,  # subkeys, volatile, their lists
        0, 0xFFFFFFFF,               # values, value list
        sk_off, 0xFFFFFFFF,          # security, class name
        0, 0, 0, 0, 0,               # max lengths, work var
        len(root_name), 0) + root_name
    sk = struct.pack('<2sHIIII', b'sk', 0, sk_off, sk_off, 1,
                     len(sd)) + sd
    cells = _cell(nk)
    assert len(cells) == sk_off - nk_off
    cells += _cell(sk)
    free = HBIN - 0x20 - len(cells)
    cells += struct.pack('<i', free) + b'\0' * (free - 4)
    hbin = struct.pack('<4sIIQQI', b'hbin', 0, HBIN, 0, 0, 0) + cells
    assert len(hbin) == HBIN
    base = bytearray(HBIN)
    struct.pack_into('<4sIIQIIIIII', base, 0, b'regf', 1, 1, 0, 1, 3, 0, 1,
                     nk_off, HBIN)
    struct.pack_into('<I', base, 0x2C, 1)
    fname = name.encode('utf-16-le')[:64]
    base[0x30:0x30 + len(fname)] = fname
    csum = 0
    for (word,) in struct.iter_unpack('<I', bytes(base[:0x1FC])):
        csum ^= word
    struct.pack_into('<I', base, 0x1FC, csum)
    return bytes(base) + hbin


def with_parents(reg_text, prefix):
    """``reg_text`` with a section for every missing parent key (hivexregedit
    creates a key only under an existing one)."""
    seen = {prefix.lower()}
    out = []
    for line in reg_text.splitlines():
        if line.startswith('[') and line.endswith(']'):
            parts = line[1:-1].split('\\')
            for i in range(len(prefix.split('\\')) + 1, len(parts)):
                parent = '\\'.join(parts[:i])
                if parent.lower() not in seen:
                    seen.add(parent.lower())
                    out.extend(['[%s]' % parent, ''])
            seen.add(line[1:-1].lower())
        out.append(line)
    return '\n'.join(out) + '\n'


def build(path, reg_text, prefix='HKEY_LOCAL_MACHINE\\SYSTEM'):
    """Write an empty hive at ``path`` and merge ``reg_text`` into it."""
    with open(str(path), 'wb') as f:
        f.write(empty_hive(prefix.rsplit('\\', 1)[-1]))
    reg = str(path) + '.reg'
    with open(reg, 'w', encoding='utf-8') as f:
        f.write(with_parents(reg_text, prefix))
    subprocess.run(['hivexregedit', '--merge', '--prefix', prefix,
                    str(path), reg], check=True, capture_output=True,
                   timeout=120)
    return path


def export(path, prefix='HKEY_LOCAL_MACHINE\\SYSTEM'):
    """The hive as .reg text (hivexregedit --export), for diffs."""
    return subprocess.run(['hivexregedit', '--export', '--prefix', prefix,
                           str(path), '\\'], check=True,
                          capture_output=True, text=True,
                          timeout=120).stdout


def hex_bytes(data):
    """``data`` as the hex list of a .reg file's ``hex:`` value."""
    return ','.join('%02x' % b for b in data)


def _services(cset, extra=()):
    out = []
    for name, start in (('atapi', 0), ('intelide', 0), ('pciide', 3),
                        ('storahci', 3), ('xenbus', 0), ('xenfilt', 0),
                        ('xenvbd', 0), ('xennet', 3), ('xenvif', 3),
                        ('xeniface', 3), ('Tcpip', 1)) + tuple(extra):
        out.append('[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Services\\%s]\n'
                   '"Start"=dword:%08x\n'
                   '"Type"=dword:00000001\n'
                   '"ImagePath"="system32\\\\drivers\\\\%s.sys"\n'
                   % (cset, name, start, name.lower()))
    return '\n'.join(out)


#: The network adapters' class (GUID_DEVCLASS_NET): lower case under
#: Control\\Class, upper case under Control\\Network, as Windows writes
#: them.
NET_CLASS = '{4d36e972-e325-11ce-bfc1-08002be10318}'
#: The test adapters: (NetCfgInstanceId, Class subkey, DriverDesc,
#: connection name, Tcpip interface values).  A static one (two
#: addresses, a gateway, DNS servers), one on DHCP, one on DHCP with
#: static DNS servers, and one with odd data and no Class or connection
#: entry: a non-contiguous mask, fewer masks than addresses, a 0.0.0.0
#: entry.  Registry names ignore case: the static adapter's Tcpip key is
#: named in lower case, its NetCfgInstanceId in upper case.
NET_ADAPTERS = (
    ('{5A0E2C4B-1D3F-4E6A-8B7C-9D0E1F2A3B4C}', '0001',
     'XenServer PV Network Device #0', 'Ethernet 2',
     {'EnableDHCP': 0, 'IPAddress': ['192.0.2.5', '198.51.100.7'],
      'SubnetMask': ['255.255.255.0', '255.255.255.128'],
      'DefaultGateway': ['192.0.2.1'],
      'NameServer': '192.0.2.53,192.0.2.54'}),
    ('{6B1F3D5C-2E4A-4F7B-9C8D-0E1F2A3B4C5D}', '0002',
     'XenServer PV Network Device #1', 'Ethernet 3',
     {'EnableDHCP': 1, 'IPAddress': ['0.0.0.0'], 'SubnetMask': ['0.0.0.0'],
      'NameServer': ''}),
    ('{7C2A4E6D-3F5B-4A8C-8D9E-1F2A3B4C5D6E}', '0003',
     'XenServer PV Network Device #2', 'Ethernet 4',
     {'EnableDHCP': 1, 'NameServer': '192.0.2.53 192.0.2.54'}),
    ('{8d3b5f7e-4a6c-4b9d-9e0f-2a3b4c5d6e7f}', None, None, None,
     {'EnableDHCP': 0,
      'IPAddress': ['203.0.113.9', '203.0.113.10', '0.0.0.0'],
      'SubnetMask': ['255.0.255.0'], 'DefaultGateway': ['0.0.0.0']}),
)


def _reg_data(value):
    if isinstance(value, int):
        return 'dword:%08x' % value
    if isinstance(value, list):
        return 'hex(7):' + _multi_sz(value)
    return '"%s"' % value


def network_reg(cset, adapters=NET_ADAPTERS):
    """The .reg text of ``adapters`` in ``cset``: their Tcpip interface
    keys, their keys of the network adapters' class, and their
    connections' names."""
    top = 'HKEY_LOCAL_MACHINE\\SYSTEM\\%s' % cset
    parts = ['[%s\\Control\\Class\\%s\\Properties]\n"Security"=hex:00\n'
             % (top, NET_CLASS)]
    for guid, sub, desc, name, values in adapters:
        if sub:
            parts.append('[%s\\Control\\Class\\%s\\%s]\n'
                         '"DriverDesc"="%s"\n"NetCfgInstanceId"="%s"\n'
                         % (top, NET_CLASS, sub, desc, guid.upper()))
        if name:
            parts.append('[%s\\Control\\Network\\%s\\%s\\Connection]\n'
                         '"Name"="%s"\n'
                         % (top, NET_CLASS.upper(), guid, name))
        key = guid.lower() if guid == NET_ADAPTERS[0][0] else guid
        parts.append('[%s\\Services\\Tcpip\\Parameters\\Interfaces\\%s]'
                     '\n' % (top, key) + ''.join(
                         '"%s"=%s\n' % (k, _reg_data(v))
                         for k, v in values.items()))
    return '\n'.join(parts)


def system_reg(extra_services=(), network=None):
    """The .reg text of the test SYSTEM hive; ``network``: {ControlSet:
    adapters (see :data:`NET_ADAPTERS`)} to add (:func:`network_reg`)."""
    parts = ['Windows Registry Editor Version 5.00\n',
             '[HKEY_LOCAL_MACHINE\\SYSTEM\\Select]\n'
             '"Current"=dword:00000001\n"Default"=dword:00000001\n'
             '"LastKnownGood"=dword:00000002\n"Failed"=dword:00000000\n']
    disk_class = '{4d36e967-e325-11ce-bfc1-08002be10318}'
    scsi_class = '{4d36e97b-e325-11ce-bfc1-08002be10318}'
    for cset in ('ControlSet001', 'ControlSet002'):
        parts.append(_services(cset, extra_services))
        parts.append(
            '[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Control\\Class\\%s]\n'
            '"Class"="DiskDrive"\n'
            '"UpperFilters"=hex(7):%s\n' % (cset, disk_class, _multi_sz(
                ['partmgr', 'xenfilt'])))
        parts.append(
            '[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Control\\Class\\%s]\n'
            '"Class"="SCSIAdapter"\n' % (cset, scsi_class))
        for entry in ('primary_ide_channel', 'secondary_ide_channel',
                      'pci#ven_8086&dev_7010'):
            parts.append(
                '[HKEY_LOCAL_MACHINE\\SYSTEM\\%s\\Control\\'
                'CriticalDeviceDatabase\\%s]\n'
                '"Service"="atapi"\n' % (cset, entry))
        if network and cset in network:
            parts.append(network_reg(cset, network[cset]))
    return '\n'.join(parts) + '\n'


def _multi_sz(strings):
    data = ''.join(s + '\0' for s in strings) + '\0'
    return ','.join('%02x' % b for b in data.encode('utf-16-le'))
