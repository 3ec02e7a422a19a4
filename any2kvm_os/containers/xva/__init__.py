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

The modules: :mod:`.xmlrpc` (the bounded XML-RPC value parser),
:mod:`.metadata` (the VM and VDI model of ``ova.xml``), :mod:`.layout`
(member names, chunks and checksums), :mod:`.layer` (one disk of a plain
XVA, read in place), :mod:`.archive` (opening an XVA, plain or compressed)
and :mod:`.plugin` (the container plugin).

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
