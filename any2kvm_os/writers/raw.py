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

"""Writing raw disks: a new sparse file, or in place on a block device.

A new file is written under a temporary name in the output's directory and
appears under its real name only when complete (``commit``); on any
failure ``abort`` removes it, so nothing half-written is ever left behind.
Zeros are never written into a new file: zero runs of 4 KiB grains (the
granularity qemu-img uses) stay holes, and where an earlier layer already
wrote data the range is punched.  An existing block device is written in
place, and its ranges that must read as zeros are zeroed explicitly.
"""

import errno
import hashlib
import fcntl
import logging
import mmap
import os
import stat
import struct
import tempfile
import threading

from any2kvm_os import exception

LOG = logging.getLogger(__name__)

GRAIN = 4096
ZERO_GRAIN = bytes(GRAIN)
COPY_CHUNK = 4 << 20
_ZERO_CHUNK = bytes(COPY_CHUNK)
_ZERO16 = bytes(16 * GRAIN)

#: Start the kernel's write-out every so many bytes written, so that the
#: final fdatasync (which makes "the output exists" mean "the output is
#: complete", even after a power cut) has little left to wait for.
WRITEBACK_EVERY = 32 << 20

#: The most bytes given to one write(2).  The copy loop hands 4 MiB
#: buffers, but a buffered write that large makes recent kernels (large
#: folios in the page cache) allocate high-order pages for it, and
#: compact memory to find them: measured on Linux 6.18/ext4, 1 GiB
#: written in 4 MiB or 2 MiB writes cost 3 to 5 s of system time and
#: 6 to 25 s of wall time on a busy host, in 64 to 256 KiB writes
#: 0.2 to 0.3 s and 0.3 to 2 s.  Pieces of this size keep that cost
#: down and still take few system calls.
WRITE_PIECE = 256 << 10
SYNC_FILE_RANGE_WRITE = 2

#: Direct I/O (O_DIRECT, :meth:`RawWriter.direct_io`): a kept target's
#: data past the page cache, in whole aligned blocks of this size (a
#: multiple of every logical block size Linux knows, 512 B and 4 KiB).
#: A kept target is flushed before success anyway, so its pages in the
#: cache buy nothing, but writing them costs CPU: on this project's test
#: hosts (Linux 6.x, ext4, a 2-vCPU VM) 1 GiB through the page cache took
#: 0.2 to 2.5 s of system time from run to run, against 0.06 to 0.34 s
#: direct.  Where the reader needs that CPU (a migration's SFTP reads:
#: paramiko decrypts in Python), a first sync of 1 GiB ran at a median
#: 0.71 of scp's throughput, against 0.61 through the cache.  Where the
#: reader is a local file, the device is the limit instead, and writing
#: a new sparse file direct (one synchronous write at a time, each
#: allocating its blocks) was slower: ``convert`` of 1 GiB took 0.81 s
#: against 0.67 s.  So the migration's targets are written direct, and
#: ``convert``/``import`` through the cache.  Cinder copies volumes with
#: ``dd oflag=direct`` too.  The bytes of a write that do not fill an
#: aligned block (a VHD's 512-byte sectors) go through the page cache:
#: the kernel keeps the two kinds of write coherent (a direct write
#: flushes and drops the cached pages of its range first).  A file
#: system that refuses O_DIRECT is written through the page cache, and a
#: scratch file (read back soon, never flushed) always is.
DIRECT_ALIGN = 4096
#: The most bytes given to one direct write (the aligned buffer's size).
DIRECT_PIECE = 4 << 20

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
BLKSSZGET = 0x1268
#: The errors that say "this way of zeroing is not supported here" (the
#: next way is tried), rather than "the device failed".
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY,
                errno.ENODEV)
#: How a range is zeroed by the kernel, in the order tried: a regular
#: file gets a hole; a block device, which has none, see
#: :meth:`RawWriter._zero_device`.
FILE_ZERO_MODES = ('punch',)
DEVICE_ZERO_MODES = ('punch', 'zero', 'ioctl')

_libc = None


def _libc_fn(name):
    global _libc
    import ctypes  # here: a scratch file never needs it (start-up time)
    if _libc is None:
        # The symbols of the running process include libc's (and
        # find_library would fork ldconfig).
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int,
                                    ctypes.c_longlong, ctypes.c_longlong]
        _libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong,
                                          ctypes.c_longlong, ctypes.c_uint]
    return getattr(_libc, name)


def _fallocate():
    return _libc_fn('fallocate')


def zero_runs(data, base_offset=0, length=None):
    """Aligned all-zero spans of ``data`` as (start, end), relative to it.

    A span is made of whole 4 KiB grains aligned on the disk
    (``base_offset`` is where ``data`` starts on the disk).  ``length``:
    look at the first ``length`` bytes only (a reused buffer).

    Only a grain whose first, middle and last bytes are zero can be a zero
    grain: those bytes of every grain are gathered by three strided slices
    (C loops over the grains), and only the candidates they leave are
    compared in full, with memcmp.  Data with no zero grain (almost all
    of it) is never compared at all.
    """
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast('B')
    n = view.nbytes if length is None else length
    first = -base_offset % GRAIN
    count = (n - first) // GRAIN
    if count <= 0:
        return []
    end = first + count * GRAIN
    heads = view[first:end:GRAIN].tobytes()
    if heads.find(0) < 0:
        return []
    tails = view[first + GRAIN - 1:end:GRAIN].tobytes()
    mids = view[first + GRAIN // 2:end:GRAIN].tobytes()
    # bytes and bytearray slices compare with memcmp; a memoryview's
    # comparison walks byte by byte, so its slices are copied first.
    cmp_src = data if isinstance(data, (bytes, bytearray)) else None
    out = []
    k = heads.find(0)
    while k >= 0:
        run = None
        while k < count and heads[k] == 0 and tails[k] == 0 and \
                mids[k] == 0:
            a = first + k * GRAIN
            if run is not None and k + 16 <= count and (
                    cmp_src[a:a + 16 * GRAIN] if cmp_src is not None else
                    view[a:a + 16 * GRAIN].tobytes()) == _ZERO16:
                run[1] = a + 16 * GRAIN
                k += 16
                continue
            grain = cmp_src[a:a + GRAIN] if cmp_src is not None else \
                view[a:a + GRAIN].tobytes()
            if grain != ZERO_GRAIN:
                break
            if run is None:
                run = [a, a + GRAIN]
            else:
                run[1] = a + GRAIN
            k += 1
        if run is not None:
            out.append((run[0], run[1]))
        else:
            k += 1
        if k >= count:
            break
        k = heads.find(0, k)
    return out


class _Flusher(object):
    """A daemon thread that starts the write-out of a file's dirty pages
    each time it is kicked (at most one pending kick)."""

    def __init__(self, fd):
        self.fd = fd
        self._wake = threading.Event()
        self._pending = False
        self._done = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='any2kvm-writeback')
        self._thread.start()

    def kick(self):
        self._pending = True
        self._wake.set()

    def _run(self):
        sync_file_range = _libc_fn('sync_file_range')
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._pending:
                self._pending = False
                # Errors are not checked here: the final fdatasync
                # reports any write-out failure.
                sync_file_range(self.fd, 0, 0, SYNC_FILE_RANGE_WRITE)
            if self._done:
                return

    def stop(self):
        """Serve the kick pending, if any, and end the thread; the fd
        stays open until then."""
        self._done = True
        self._wake.set()
        self._thread.join()


def check_device(path):
    """The stat of ``path`` when it is a block device (a symlink to one,
    as /dev/VG/LV is, is followed); TargetError in one line otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise exception.TargetError(path=path, reason='does not exist '
                                    '(a block device is needed)')
    except OSError as e:
        raise exception.TargetError(path=path, reason=e.strerror)
    if stat.S_ISBLK(st.st_mode):
        return st
    if stat.S_ISDIR(st.st_mode):
        kind = 'a directory'
    elif stat.S_ISREG(st.st_mode):
        kind = 'a regular file'
    elif stat.S_ISCHR(st.st_mode):
        kind = 'a character device'
    else:
        kind = 'a special file'
    if os.path.islink(path):
        raise exception.TargetError(
            path=path, reason='is a symlink to %s, which is %s, not a block '
            'device' % (os.path.realpath(path), kind))
    raise exception.TargetError(path=path, reason='is %s, not a block '
                                'device' % kind)


def _open_block(path, flags):
    try:
        return os.open(path, flags)
    except OSError as e:
        if e.errno == errno.EBUSY and flags & os.O_EXCL:
            raise exception.TargetError(
                path=path, reason='is in use (mounted, or held by '
                'device-mapper, md or another program): not written')
        raise exception.TargetError(path=path, reason=e.strerror)


#: The longest zeroing made without a new check of the guard
#: (:meth:`RawWriter.zero_range`).
GUARDED_ZERO = 4 << 30


class RawWriter(object):
    """A raw disk being written."""

    #: None, or what is called (no argument) before every write
    #: (:meth:`write_data`, :meth:`write_buffer`, :meth:`zero_range`,
    #: :meth:`resize`) and
    #: raises to stop it: a migration's :class:`~any2kvm_os.migration.
    #: state.api.Fence`, so that a command whose hold of the migration
    #: is lost writes nothing more.
    guard = None

    def __init__(self, path, fd, fresh, is_block, tmp_path=None,
                 overwrite=False, durable=True):
        self.path = path
        #: False for a scratch file read back and deleted by this process
        #: (a disk converted before its upload to Glance): a power cut
        #: loses it whatever we do, so it is never flushed.  Everything the
        #: user keeps is durable: flushed before commit() returns.
        self.durable = durable
        self.fd = fd
        #: True while the file was created by us: every range starts as a
        #: hole, so zero runs need no writing on a first pass.
        self.fresh = fresh
        self.is_block = is_block
        self.tmp_path = tmp_path
        self.overwrite = overwrite
        self.size = None
        #: Bytes the target can hold when that is fixed (a block device, a
        #: volume's file); None when the file grows or shrinks with the disk.
        self.capacity = None
        #: The ways of zeroing a range by the kernel still to be tried, in
        #: order (:meth:`_zero_by_kernel`): one that fails as unsupported
        #: is dropped; with none left, zeros are written.
        self._zero_modes = list(DEVICE_ZERO_MODES if is_block
                                else FILE_ZERO_MODES)
        self._unflushed = 0
        #: The descriptor written with O_DIRECT (:meth:`direct_io`): None
        #: until the first aligned write, False where direct I/O is not
        #: used (not asked for, a scratch file, a file system that
        #: refuses it).
        self._direct = False
        self._direct_buf = None

    @classmethod
    def open(cls, path, overwrite=False, durable=True, exclusive=False):
        """Open ``path`` for writing a disk.

        A block device is written in place; a regular file is created anew
        (an existing one only with ``overwrite``, replaced atomically).
        ``durable=False``: a new scratch file that is deleted after use,
        never flushed (see :attr:`durable`).  ``exclusive``: a block
        device is opened with O_EXCL (refused when mounted or held, see
        :meth:`open_device`).
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise exception.TargetError(path=path, reason=e.strerror)
        if st is not None and stat.S_ISBLK(st.st_mode):
            fd = _open_block(path, os.O_WRONLY | os.O_CLOEXEC |
                             (os.O_EXCL if exclusive else 0))
            return cls(path, fd, fresh=False, is_block=True)
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise exception.TargetError(
                    path=path, reason='exists and is neither a regular file '
                    'nor a block device')
            if not overwrite:
                raise exception.TargetError(
                    path=path, reason='already exists (use --overwrite to '
                    'replace it)')
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, tmp = tempfile.mkstemp(
                prefix='.%s.' % os.path.basename(path),
                suffix='.any2kvm-partial', dir=directory)
        except OSError as e:
            raise exception.TargetError(path=path, reason=e.strerror)
        return cls(path, fd, fresh=True, is_block=False, tmp_path=tmp,
                   overwrite=overwrite, durable=durable)

    @classmethod
    def open_in_place(cls, path):
        """Open ``path`` to be written in place (incremental apply).

        A block device or an existing regular file is written where it is;
        a missing file is created (and starts fresh: all holes).  A block
        device is opened with O_EXCL, as ``convert`` and ``migration
        create --device`` open one: refused when mounted or held (see
        :meth:`open_device`), and kept from being mounted while written.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISBLK(st.st_mode):
            return cls.open(path, exclusive=True)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise exception.TargetError(
                path=path, reason='exists and is neither a regular file nor '
                'a block device')
        flags = os.O_RDWR | os.O_CLOEXEC | (0 if st else
                                            os.O_CREAT | os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as e:
            raise exception.TargetError(path=path, reason=e.strerror)
        target = cls(path, fd, fresh=st is None, is_block=False)
        target.size = st.st_size if st else 0
        return target

    @classmethod
    def open_volume(cls, path):
        """Open the file or block device of a volume just created to be
        written in place: its size is fixed (never truncated; a disk larger
        than it is refused) and it reads as zeros, so a regular file is
        written sparse.  A block device is not assumed to read as zeros.
        """
        try:
            st = os.stat(path)
        except OSError as e:
            raise exception.TargetError(path=path, reason=e.strerror)
        if stat.S_ISBLK(st.st_mode):
            # Not O_EXCL, unlike a device given by the operator
            # (open_device, open_in_place, convert): the volume was just
            # attached to this host, and the host's LVM may already have
            # found a guest volume group on it (a guest PV: the host
            # activates its LVs, which hold the device), so an exclusive
            # open would refuse a volume that nothing else writes.  The
            # volume is ours alone: Cinder made it and attached it here.
            target = cls.open(path)
            target.capacity = target.device_size()
            return target
        if not stat.S_ISREG(st.st_mode):
            raise exception.TargetError(
                path=path, reason='is neither a regular file nor a block '
                'device')
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise exception.TargetError(path=path, reason=e.strerror)
        target = cls(path, fd, fresh=True, is_block=False)
        target.capacity = st.st_size
        return target

    @classmethod
    def open_device(cls, path, size, zeroed=False):
        """Open the block device ``path`` to hold a disk of ``size`` bytes,
        written in place (``migration create --device``).

        Refused in one line (:func:`check_device`): a path that is not a
        block device, a device smaller than ``size``, a device in use: it
        is opened with O_EXCL, which Linux refuses for a mounted device or
        one held by device-mapper, md or another exclusive opener (and
        which keeps it from being mounted while it is written).  Nothing
        is written beyond ``size`` (the writer's capacity: a larger disk
        is refused).  ``zeroed``: the device is known to read as zeros (a
        new thin LV, a device zeroed by its maker), so the zero runs of a
        first pass need no writing; otherwise they are zeroed."""
        check_device(path)
        fd = _open_block(path, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC)
        target = cls(path, fd, fresh=zeroed, is_block=True)
        try:
            have = target.device_size()
        except OSError as e:
            target.close()
            raise exception.TargetError(path=path, reason=e.strerror)
        if have < size:
            target.close()
            raise exception.CapacityError(path=path, needed=size,
                                          capacity=have)
        target.capacity = size
        return target

    # -- size -----------------------------------------------------------------

    def device_size(self):
        buf = fcntl.ioctl(self.fd, BLKGETSIZE64, b'\0' * 8)
        return struct.unpack('Q', buf)[0]

    def resize(self, size):
        """Make the disk ``size`` bytes; bytes beyond a shrink are dropped,
        bytes added by a growth read as zeros."""
        capacity = self.capacity
        if capacity is None and self.is_block:
            capacity = self.capacity = self.device_size()
        if capacity is None:
            if self.guard is not None:
                self.guard()
            try:
                os.ftruncate(self.fd, size)
            except OSError as e:
                raise self._failed(e)
            self.size = size
            return
        if size > capacity:
            raise exception.CapacityError(path=self.path, needed=size,
                                          capacity=capacity)
        if self.size is not None:
            if size < self.size:
                # Dropped bytes read as zeros again: a later growth, and
                # the rest of a volume, must not show them.
                self.zero_range(size, self.size - size)
            elif size > self.size and not self.fresh:
                self.zero_range(self.size, size - self.size)
        self.size = size

    # -- writing --------------------------------------------------------------

    def _failed(self, err):
        return exception.TargetError(path=self.path,
                                     reason=err.strerror or str(err))

    def pwrite(self, offset, data):
        """Write ``data`` at ``offset``: with :meth:`direct_io`, the
        aligned blocks it fills direct (:data:`DIRECT_ALIGN`), the rest
        through the page cache."""
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast('B')
        if self._direct is not False and len(view) >= DIRECT_ALIGN:
            head = -offset % DIRECT_ALIGN
            body = (len(view) - head) // DIRECT_ALIGN * DIRECT_ALIGN
            if body:
                done = self._pwrite_direct(offset + head,
                                           view[head:head + body])
                if done:
                    if head:
                        self._pwrite_cached(offset, view[:head])
                    rest = head + done
                    if rest < len(view):
                        self._pwrite_cached(offset + rest, view[rest:])
                    return
        self._pwrite_cached(offset, view)

    def _pwrite_cached(self, offset, view):
        length = len(view)
        try:
            while view:
                n = os.pwrite(self.fd, view[:WRITE_PIECE], offset)
                view = view[n:]
                offset += n
        except OSError as e:
            raise self._failed(e)
        self._unflushed += length
        if self._unflushed >= WRITEBACK_EVERY and self.durable:
            self._unflushed = 0
            self._kick_writeback()

    def direct_io(self):
        """Write the aligned blocks of this kept target with O_DIRECT
        from now on (see :data:`DIRECT_ALIGN`); a scratch file stays in
        the page cache.  Returns the writer."""
        if self.durable and self._direct is False and self.fd is not None:
            self._direct = None
        return self

    @property
    def direct(self):
        """True when this writer writes its aligned blocks direct (asked
        for, and not refused so far)."""
        return self._direct is not False

    def _open_direct(self):
        """The O_DIRECT descriptor of the target (the same file, opened
        again through /proc/self/fd), or False when it cannot have one."""
        if self.fd is None or not hasattr(os, 'O_DIRECT'):
            return False
        try:
            fd = os.open('/proc/self/fd/%d' % self.fd,
                         os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as e:
            LOG.debug('%s: written through the page cache (no direct I/O: '
                      '%s)', self.path, e.strerror)
            return False
        # An anonymous map: page-aligned, as O_DIRECT needs.
        self._direct_buf = mmap.mmap(-1, DIRECT_PIECE)
        return fd

    def _pwrite_direct(self, offset, view):
        """Write ``view`` (whole aligned blocks at an aligned ``offset``)
        with O_DIRECT, through the aligned buffer; returns the bytes
        written, 0 when direct I/O is not used here (the caller writes
        them through the page cache)."""
        if self._direct is None:
            self._direct = self._open_direct()
            if self._direct is False:
                return 0
        buf = memoryview(self._direct_buf)
        done = 0
        try:
            while done < len(view):
                n = min(len(view) - done, DIRECT_PIECE)
                buf[:n] = view[done:done + n]
                w = os.pwrite(self._direct, buf[:n], offset + done)
                done += w
                if w < n:
                    break       # a short write: the caller writes the rest
        except OSError as e:
            if e.errno != errno.EINVAL or done:
                raise self._failed(e)
            # The file system takes O_DIRECT at open but refuses its
            # writes: everything goes through the page cache from now on.
            LOG.debug('%s: direct write refused (%s): written through the '
                      'page cache', self.path, e.strerror)
            refused = True
        else:
            refused = False
        finally:
            buf.release()
        if refused:
            self._close_direct()
            self._direct = False
        return done

    def _kick_writeback(self):
        """Start the write-out of the dirty pages written so far.

        sync_file_range(SYNC_FILE_RANGE_WRITE) only starts it, but it can
        block while the device's queue is full (a busy disk): it runs in
        a thread of its own so that the copy never waits for it.
        """
        flusher = getattr(self, '_flusher', None)
        if flusher is None:
            flusher = self._flusher = _Flusher(self.fd)
        flusher.kick()

    def write_data(self, offset, data, over_hole):
        """Write disk content ``data`` at ``offset``.

        Zero grains are left as holes when ``over_hole`` (nothing was
        written there before on a fresh file); otherwise they are zeroed.
        """
        if self.guard is not None:
            self.guard()
        pos = 0
        view = memoryview(data)
        for a, b in zero_runs(data, offset):
            if a > pos:
                self.pwrite(offset + pos, view[pos:a])
            if not over_hole:
                self.zero_range(offset + a, b - a)
            pos = b
        if pos < len(data):
            self.pwrite(offset + pos, view[pos:])

    def write_buffer(self, offset, buf, length, over_hole):
        """:meth:`write_data` of the first ``length`` bytes of ``buf`` (a
        bytearray the copy loop reuses): written without a copy."""
        if self.guard is not None:
            self.guard()
        pos = 0
        view = memoryview(buf)
        for a, b in zero_runs(buf, offset, length):
            if a > pos:
                self.pwrite(offset + pos, view[pos:a])
            if not over_hole:
                self.zero_range(offset + a, b - a)
            pos = b
        if pos < length:
            self.pwrite(offset + pos, view[pos:length])

    def zero_range(self, offset, length):
        """Make ``[offset, offset+length)`` read as zeros."""
        if length <= 0:
            return
        if self.guard is not None:
            self.guard()
            if length > GUARDED_ZERO:
                # A long zeroing (a device's, by the kernel) is checked
                # again between pieces of it.
                end = offset + length
                while offset < end:
                    n = min(GUARDED_ZERO, end - offset)
                    self.zero_range(offset, n)
                    offset += n
                return
        if self.is_block:
            self._zero_device(offset, length)
        elif not self._zero_by_kernel(offset, length):
            self._write_zeros(offset, length)

    def _zero_device(self, offset, length):
        """Zero ``[offset, offset+length)`` of a block device, which has
        no holes: by the kernel when it can (fallocate PUNCH_HOLE|KEEP_SIZE,
        a write-zeroes that may unmap: a thin LV or an SSD gets the space
        back; else ZERO_RANGE, which the kernel falls back to writing zero
        pages for; else the BLKZEROOUT ioctl of kernels without fallocate
        on block devices), else written from here.  Each reads back as
        zeros.  The edges not aligned to the device's logical sector are
        written."""
        end = offset + length
        sector = self._sector()
        a = -(-offset // sector) * sector
        b = end // sector * sector
        if a >= b or not self._zero_modes:
            self._write_zeros(offset, length)
            return
        if a > offset:
            self._write_zeros(offset, a - offset)
        if b < end:
            self._write_zeros(b, end - b)
        if not self._zero_by_kernel(a, b - a):
            self._write_zeros(a, b - a)

    def _zero_by_kernel(self, offset, length):
        """Zero ``[offset, offset+length)`` by the first way left in
        :attr:`_zero_modes` that works on this target: True; False once
        none is left (the caller writes the zeros).  A way that fails as
        unsupported is dropped for good; any other failure is an error."""
        while self._zero_modes:
            mode = self._zero_modes[0]
            if mode == 'ioctl':
                try:
                    fcntl.ioctl(self.fd, BLKZEROOUT,
                                struct.pack('QQ', offset, length))
                    return True
                except OSError as e:
                    err = e.errno
            else:
                flags = (FALLOC_FL_PUNCH_HOLE if mode == 'punch'
                         else FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE
                if _fallocate()(self.fd, flags, offset, length) == 0:
                    return True
                import ctypes
                err = ctypes.get_errno()
            if err not in _UNSUPPORTED:
                raise exception.TargetError(path=self.path,
                                            reason=os.strerror(err))
            LOG.debug('%s: zeroing by %s not supported (%s)', self.path,
                      mode, os.strerror(err))
            self._zero_modes.pop(0)
        return False

    def _sector(self):
        sector = getattr(self, '_sector_size', None)
        if sector is None:
            try:
                buf = fcntl.ioctl(self.fd, BLKSSZGET, b'\0' * 4)
                sector = struct.unpack('i', buf)[0]
            except OSError:
                sector = 0
            if sector <= 0 or sector & (sector - 1):
                sector = 512
            self._sector_size = sector
        return sector

    def _write_zeros(self, offset, length):
        while length > 0:
            n = min(length, COPY_CHUNK)
            self.pwrite(offset, _ZERO_CHUNK[:n])
            offset += n
            length -= n

    # -- end ------------------------------------------------------------------

    def sync(self):
        if not self.durable:
            return
        # The flush below waits for everything: no more write-out kicks.
        self._stop_flusher()
        try:
            if self.is_block:
                os.fsync(self.fd)
            else:
                os.fdatasync(self.fd)
        except OSError as e:
            raise self._failed(e)

    def commit(self):
        """Make the written disk durable and visible under its name."""
        self.sync()
        if self.tmp_path:
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(self.fd, 0o666 & ~mask)
            try:
                if self.overwrite:
                    os.replace(self.tmp_path, self.path)
                else:
                    # link() refuses to clobber a file that appeared since.
                    os.link(self.tmp_path, self.path)
                    os.unlink(self.tmp_path)
            except FileExistsError:
                self.abort()
                raise exception.TargetError(
                    path=self.path, reason='appeared while converting; not '
                    'replaced')
            self.tmp_path = None
            if self.durable:
                dfd = os.open(os.path.dirname(os.path.abspath(self.path)),
                              os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        self.close()

    def abort(self):
        """Remove whatever a failed conversion left (new files only)."""
        if self.tmp_path:
            try:
                os.unlink(self.tmp_path)
            except FileNotFoundError:
                pass
            self.tmp_path = None
        self.close()

    def _stop_flusher(self):
        flusher = getattr(self, '_flusher', None)
        if flusher is not None:
            self._flusher = None
            flusher.stop()

    def _close_direct(self):
        direct, self._direct = self._direct, False
        if direct is not None and direct is not False:  # fd 0 is one
            os.close(direct)
        buf, self._direct_buf = self._direct_buf, None
        if buf is not None:
            try:
                buf.close()
            except BufferError:
                # A view of it lives on (in a traceback kept by the
                # caller): the map goes with the last reference.
                pass

    def close(self):
        self._stop_flusher()
        self._close_direct()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FileObjectWriter(RawWriter):
    """A volume reached as a file object rather than a path: os-brick's
    RBD connector hands one (``RBDVolumeIOWrapper``: seek, write, flush)
    when it does not map a kernel device.  Same rules as a volume opened
    with :meth:`RawWriter.open_volume`: fixed size, never truncated; a new
    volume reads as zeros (``fresh``), so zero runs need no writing."""

    def __init__(self, fileobj, name, capacity, fresh=True):
        super(FileObjectWriter, self).__init__(name, None, fresh=fresh,
                                               is_block=False)
        self.fileobj = fileobj
        self.capacity = capacity

    def pwrite(self, offset, data):
        try:
            self.fileobj.seek(offset)
            self.fileobj.write(bytes(data))
        except OSError as e:
            raise self._failed(e)

    def zero_range(self, offset, length):
        self._write_zeros(offset, length)

    def sync(self):
        try:
            self.fileobj.flush()
            fsync = getattr(self.fileobj, 'fsync', None)
            if fsync is not None:
                fsync()
        except OSError as e:
            raise self._failed(e)

    def close(self):
        # The file object belongs to the attachment: detaching closes it.
        self.fileobj = None


def write_file(disk, output, overwrite=False, progress=None):
    """Write ``disk`` (an :class:`any2kvm_os.vm.Disk`) as a raw disk to
    ``output`` (a new sparse file, or a block device in place); all or
    nothing.  Returns the committed writer."""
    return write_all(disk, RawWriter.open(output, overwrite=overwrite,
                                          exclusive=True), progress)


def write_all(disk, writer, progress=None):
    """Write ``disk`` through ``writer`` (an open :class:`RawWriter`),
    all or nothing: committed when the whole disk is written, aborted
    (and the error raised) otherwise.  Returns the writer."""
    try:
        disk.write_to(writer, progress)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer


def sha256_of(path, size):
    """SHA-256 of the first ``size`` bytes of ``path`` (a file or block
    device) as they read back; holes are hashed as zeros without reading."""
    from any2kvm_os import fileio
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        view = fileio.FileView(fd, path, 0, size)
        for start, end, is_data in view.data_runs(0, size):
            pos = start
            while pos < end:
                n = min(COPY_CHUNK, end - pos)
                if is_data:
                    data = fileio.pread_full(fd, n, pos)
                    if len(data) != n:
                        raise exception.TargetError(
                            path=path, reason='ends before %d bytes'
                            % size)
                    h.update(data)
                else:
                    h.update(_ZERO_CHUNK[:n])
                pos += n
    finally:
        os.close(fd)
    return h.hexdigest()
