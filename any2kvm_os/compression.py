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

"""Compressed streams: which compression a file uses, and how to read it.

Archives (XenServer tgz, XVA) come plain or compressed with gzip, bzip2,
xz or zstd.  This module tells them apart by their magic
(:func:`sniff`, :func:`sniff_view`), opens a decompressing, forward-only
reader over a file object (:func:`open_reader`) and names the errors a
damaged or truncated stream raises (:func:`stream_errors`).  zstd needs
the ``zstandard`` module; without it a zstd stream is recognised but
refused with a clear message.

The readers VERIFY integrity: GzipFile, BZ2File, LZMAFile and zstandard
check their CRCs (at the end of each gzip member or zstd frame: a caller
must read to the end of the stream before trusting what it wrote).
"""

import bz2
import gzip
import io
import lzma
import zlib

from any2kvm_os import exception
from any2kvm_os import shortread

GZIP = 'gzip'
BZIP2 = 'bzip2'
XZ = 'xz'
ZSTD = 'zstd'

GZIP_MAGIC = b'\x1f\x8b'
BZIP2_MAGIC = b'BZh'
XZ_MAGIC = b'\xfd7zXZ\x00'
ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'

#: (name, magic) of every compression recognised.
MAGICS = ((GZIP, GZIP_MAGIC), (BZIP2, BZIP2_MAGIC), (XZ, XZ_MAGIC),
          (ZSTD, ZSTD_MAGIC))

#: Bytes of a file's head :func:`sniff` needs.
HEAD = 6


def sniff(head):
    """The compression (:data:`GZIP`, :data:`BZIP2`, :data:`XZ`,
    :data:`ZSTD`) whose magic starts ``head``, or None."""
    for name, magic in MAGICS:
        if head.startswith(magic):
            return name
    return None


def sniff_view(view):
    """As :func:`sniff`, for the first bytes of a file view."""
    return sniff(view.pread(HEAD, 0))


def sniff_path(path):
    """As :func:`sniff`, for the first bytes of the file at ``path``."""
    with open(path, 'rb') as f:
        return sniff(f.read(HEAD))


def _zstandard(path):
    try:
        import zstandard
    except ImportError:
        raise exception.UnsupportedImage(
            path=path, reason='zstd-compressed archive: the Python module '
            'zstandard is not installed; install it (the zstd extra: pip '
            'install any2kvm_os[zstd]), or decompress the file first '
            '(zstd -d)')
    return zstandard


def read_full(fileobj, n):
    """Up to ``n`` bytes of ``fileobj``: fewer only at its end.  A pipe,
    an HTTP body or a decompressor may return fewer bytes than asked for
    while more are coming; one read(n) is not "the first n bytes"."""
    return shortread.gather(lambda got: fileobj.read(n - got), n)


class _FullReads(object):
    """``fileobj`` whose read(n) returns ``n`` bytes but at its end."""

    def __init__(self, fileobj):
        self._fileobj = fileobj

    def read(self, n=-1):
        if n is None or n < 0:
            return self._fileobj.read()
        return read_full(self._fileobj, n)

    def __getattr__(self, name):
        return getattr(self._fileobj, name)


def open_reader(path, fileobj):
    """A forward-only file object of the decompressed content of
    ``fileobj`` (its head is read, then it is rewound to 0); ``fileobj``
    itself when it is not compressed.  ``path`` names the file in errors
    (zstd without the ``zstandard`` module: UnsupportedImage)."""
    head = read_full(fileobj, HEAD)
    fileobj.seek(0)
    kind = sniff(head)
    if kind == GZIP:
        # gzip reads each member's header with one read(n): it must not
        # come back short.
        return gzip.GzipFile(fileobj=_FullReads(fileobj), mode='rb')
    if kind == BZIP2:
        return bz2.BZ2File(fileobj, mode='rb')
    if kind == XZ:
        return lzma.LZMAFile(fileobj, mode='rb')
    if kind == ZSTD:
        return _zstandard(path).ZstdDecompressor().stream_reader(
            fileobj, read_across_frames=True)
    return fileobj


def decompress_head(head, want):
    """At most ``want`` bytes decompressed from ``head``, the first bytes
    of a (possibly) compressed file; ``head`` itself, cut to ``want``,
    when it is not compressed.  Raises an error of :func:`stream_errors`
    when the head is damaged, ImportError for zstd without ``zstandard``.
    """
    kind = sniff(head)
    if kind == GZIP:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, want)
    if kind == BZIP2:
        return bz2.BZ2Decompressor().decompress(head, want)
    if kind == XZ:
        return lzma.LZMADecompressor().decompress(head, want)
    if kind == ZSTD:
        import zstandard
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(head), read_across_frames=True)
        out = []
        got = 0
        while got < want:
            try:
                data = reader.read(want - got)
            except zstandard.ZstdError:
                if out:     # the head ends inside a frame: what came is it
                    break
                raise
            if not data:
                break
            out.append(data)
            got += len(data)
        return b''.join(out)
    return head[:want]


def zstd_errors():
    """The errors of ``zstandard`` (none when it is not installed)."""
    try:
        import zstandard
    except ImportError:
        return ()
    return (zstandard.ZstdError,)


def stream_errors():
    """The tuple of exceptions a damaged or truncated compressed stream
    raises while it is read (OSError includes gzip.BadGzipFile; callers
    let an OSError with an errno through: that is the disk, not the
    data)."""
    return (EOFError, zlib.error, lzma.LZMAError, OSError) + zstd_errors()
