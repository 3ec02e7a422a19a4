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

"""A tiny VHD builder for unit tests of structural edge cases.

It exists to produce malformed and corner-case layouts cheaply; truth about
real images comes from the functional tests (qemu-img, FATtools, vhd-util
images, libvhdi).
"""

import struct
import uuid as uuidlib

from any2kvm_os import extents as ext
from any2kvm_os import fileio
from any2kvm_os.formats import vhd

SECTOR = 512
MiB = 1 << 20
BS = 2 * MiB


def footer(size, disk_type, uid, data_offset=None, creator=b'test'):
    if data_offset is None:
        data_offset = (vhd.UNUSED_OFFSET if disk_type == vhd.DISK_FIXED
                       else 512)
    buf = bytearray(vhd._FOOTER.pack(
        b'conectix', 2, 0x00010000, data_offset, 0, creator, 0x10000,
        b'Wi2k', size, size, 0, 0, 0, disk_type, 0, uid, 0, b'\0' * 427))
    struct.pack_into('>I', buf, 64, vhd.vhd_checksum(buf, 64))
    return bytes(buf)


def dyn_header(table_offset, entries, block_size, parent_uid=b'\0' * 16,
               parent_name='', locators=b''):
    name = parent_name.encode('utf-16-be').ljust(512, b'\0')
    buf = bytearray(vhd._DYN.pack(
        b'cxsparse', vhd.UNUSED_OFFSET, table_offset, 0x00010000, entries,
        block_size, 0, parent_uid, 0, 0, name, locators.ljust(192, b'\0'),
        b'\0' * 256))
    struct.pack_into('>I', buf, 36, vhd.vhd_checksum(buf, 36))
    return bytes(buf)


def build(size, blocks=None, block_size=2 << 20, disk_type=vhd.DISK_DYNAMIC,
          uid=None, parent_uid=None, parent_name='', entries=None,
          fixed_data=b''):
    """Return (bytes, uuid bytes).

    ``blocks``: {block index: (bitmap bytes or None, data bytes)}; data is
    padded to the block size.  For a fixed disk, ``fixed_data`` is the
    disk content (padded to ``size``).
    """
    uid = uid or uuidlib.uuid4().bytes
    if disk_type == vhd.DISK_FIXED:
        return fixed_data.ljust(size, b'\0') + footer(size, disk_type,
                                                      uid), uid
    blocks = blocks or {}
    if entries is None:
        entries = -(-size // block_size)
    table_offset = 512 + 1024
    bat_span = -(-entries * 4 // SECTOR) * SECTOR
    bitmap_size = -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR
    bat = [0xFFFFFFFF] * entries
    body = bytearray()
    pos = table_offset + bat_span
    for index in sorted(blocks):
        bitmap, data = blocks[index]
        if bitmap is None:
            bitmap = b'\xff' * (block_size // SECTOR // 8)
        bat[index] = pos // SECTOR
        body += bitmap.ljust(bitmap_size, b'\0')
        body += data.ljust(block_size, b'\0')
        pos += bitmap_size + block_size
    f = footer(size, disk_type, uid)
    hdr = dyn_header(table_offset, entries, block_size,
                     parent_uid=parent_uid or b'\0' * 16,
                     parent_name=parent_name)
    bat_bytes = struct.pack('>%dI' % entries, *bat).ljust(bat_span, b'\0')
    return f + hdr + bat_bytes + bytes(body) + f, uid


def sectors_bitmap(block_size, sectors):
    """A sector bitmap with the given sector numbers set (MSB first)."""
    bm = bytearray(block_size // SECTOR // 8)
    for s in sectors:
        bm[s >> 3] |= 0x80 >> (s & 7)
    return bytes(bm)


# ---------------------------------------------------------------------------
# chains of such files
# ---------------------------------------------------------------------------

def write_chain(tmp_path, n, names=None, grow=False):
    """base <- c1 <- ... written with build(); returns paths leaf first."""
    names = names or ['l%d.vhd' % i for i in range(n)]
    uid = None
    paths = []
    for i in range(n):
        size = 4 * MiB + (i * BS if grow else 0)
        if i == 0:
            data, uid = build(size, blocks={0: (None, b'B' * 10)})
        else:
            data, uid = build(
                size, disk_type=vhd.DISK_DIFFERENCING, parent_uid=uid,
                parent_name='/var/run/sr-mount/x/%s' % names[i - 1],
                blocks={i % (size // BS): (sectors_bitmap(BS, [i]),
                                           b'C' * 4096)})
        p = tmp_path / names[i]
        p.write_bytes(data)
        paths.append(p)
    return list(reversed(paths))


def expected_raw(tmp_path, paths):
    """Model of a write_chain() chain: base first, bitmaps respected."""
    size = None
    disk = bytearray()
    for p in reversed(paths):
        r = vhd.VhdReader(fileio.FileView.open_path(str(p)))
        new = r.virtual_size
        if size is not None:
            del disk[new:]
        disk.extend(b'\0' * (new - len(disk)))
        for e in r.block_status(0, new):
            if e.kind == ext.DATA:
                disk[e.offset:e.end] = r.read(e.file_offset, e.length)
        size = new
    return bytes(disk)
