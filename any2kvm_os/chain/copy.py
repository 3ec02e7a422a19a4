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

"""Fold a chain and copy the whole disk onto a raw writer.

The copy loop of every random-access disk: a reader thread folds the
layers (:meth:`LayerChain.iter_extents`) and reads or inflates the DATA
extents while the calling thread writes them, so reading and writing
overlap.  The writer is anything with ``resize(size)``, ``fresh``,
``write_data(offset, data, over_hole)`` and ``zero_range(offset, length)``
(:class:`any2kvm_os.writers.raw.RawWriter`, whose ``write_buffer(offset,
buf, length, over_hole)`` is used when present); ``data`` is only valid
during the call (the buffer is reused).

The reader fills a few preallocated buffers of COPY_CHUNK bytes, read into
in place (:meth:`LayerReader.read_extent_into`), and packs neighbouring
extents into the same buffer: the DATA of several layers of a chain, and
the small ZERO or unallocated gaps between them (as zeros).  The writer
then gets one large write per buffer, looks for zero grains across the
extents' edges (so the output is as sparse as its content allows), and
hands the buffer back.  Memory stays bounded by BUFFERS * COPY_CHUNK; no
buffer is allocated per chunk (fresh allocations cost page faults on every
chunk).
"""

import queue
import threading

from any2kvm_os import extents as ext

#: Size of each copy buffer: the most bytes read and written at once.
COPY_CHUNK = 4 << 20

#: Chunks read ahead of the writer.
PIPELINE_DEPTH = 2

#: Buffers in all: PIPELINE_DEPTH queued, one being filled, one being
#: written.  The pipeline's memory is BUFFERS * COPY_CHUNK.
BUFFERS = PIPELINE_DEPTH + 2

#: A ZERO or unallocated run at most this long between DATA runs is
#: packed into the buffer as zeros (one write instead of two, and zero
#: grains found across the edges); a longer one is passed on as a zero
#: run, never materialised.
PACK_GAP = 256 << 10

#: Zero grains are looked for at this granularity (the writer's).
GRAIN = 4096

_DONE = object()
_ZEROS = bytes(PACK_GAP)


class _Reader(object):
    """Reader thread: the folded chain as ('data', offset, buffer, n) and
    ('zero', offset, length) items.  Reading (pread, inflate) releases the
    GIL, so it overlaps with the writer's pwrite."""

    def __init__(self, chain, items, free, stop):
        self.chain = chain
        self.items = items
        self.free = free
        self.stop = stop
        self.chunk = 0      # the size of the buffer being filled
        self.buf = None     # the buffer being filled
        self.view = None
        self.start = 0      # its offset on the disk
        self.filled = 0
        #: (start, end) of the last zero run passed on as such.
        self.last_zero = None

    def _wait(self, q, item=None, get=False):
        while not self.stop.is_set():
            try:
                if get:
                    return q.get(timeout=0.1)
                q.put(item, timeout=0.1)
                return True
            except (queue.Full, queue.Empty):
                continue
        return None

    def put(self, item):
        return self._wait(self.items, item)

    def flush(self):
        """Hand the buffer being filled to the writer."""
        if self.buf is None:
            return True
        item = ('data', self.start, self.buf, self.filled)
        self.buf = self.view = None
        return self.put(item)

    def _open(self, offset):
        buf = self._wait(self.free, get=True)
        if buf is None:
            return False
        self.buf = buf
        self.view = memoryview(buf)
        pad = offset % GRAIN
        last = self.last_zero
        if pad and last is not None and last[1] == offset and \
                last[0] <= offset - pad:
            # The grain's head is in the zero run just passed on: take it
            # in as zeros, so that an all-zero grain is seen whole.
            buf[:pad] = _ZEROS[:pad]
        else:
            pad = 0
        self.start = offset - pad
        self.filled = pad
        # The buffer ends on a grain edge of the disk: a zero grain is
        # never cut in two by buffers.
        self.chunk = len(buf) - (self.start + len(buf)) % GRAIN
        return True

    def _room(self, offset):
        """Make the buffer being filled continue at ``offset``, with room
        left; False when stopped."""
        if self.buf is not None and (self.start + self.filled != offset or
                                     self.filled == self.chunk):
            if not self.flush():
                return False
        if self.buf is None:
            return self._open(offset)
        return True

    def data(self, layer, e):
        done = 0
        while done < e.length:
            if not self._room(e.offset + done):
                return False
            n = min(self.chunk - self.filled, e.length - done)
            layer.read_extent_into(
                e, done, self.view[self.filled:self.filled + n])
            self.filled += n
            done += n
        return True

    def _zeros(self, n):
        self.view[self.filled:self.filled + n] = _ZEROS[:n]
        self.filled += n

    def zero(self, e):
        offset, length = e.offset, e.length
        if self.buf is not None and self.start + self.filled == offset:
            room = self.chunk - self.filled
            if length <= PACK_GAP and length <= room:
                self._zeros(length)
                return True
            # Complete the grain being filled, so that it is seen whole.
            head = min(length, room, -offset % GRAIN)
            self._zeros(head)
            offset += head
            length -= head
        if not self.flush():
            return False
        if length:
            self.last_zero = (offset, offset + length)
            return self.put(('zero', offset, length))
        return True

    def run(self):
        try:
            layers = self.chain.layers
            for e in self.chain.iter_extents():
                if e.kind == ext.DATA:
                    ok = self.data(layers[e.layer], e)
                else:
                    ok = self.zero(e)
                if not ok:
                    return
            if self.flush():
                self.put(_DONE)
        except BaseException as exc:  # handed to the writer, raised there
            self.put(exc)


def copy_chain(chain, writer, progress=None):
    """Fold ``chain`` and write the whole disk onto ``writer``.

    A reader thread folds and reads (or inflates) the layers into
    reused buffers while this thread writes them, through a queue of at
    most PIPELINE_DEPTH buffers.
    """
    size = chain.virtual_size
    writer.resize(size)
    fresh = writer.fresh
    items = queue.Queue(maxsize=PIPELINE_DEPTH)
    free = queue.Queue()
    for _i in range(BUFFERS):
        free.put(bytearray(COPY_CHUNK))
    stop = threading.Event()
    reader = threading.Thread(target=_Reader(chain, items, free, stop).run,
                              name='any2kvm-reader', daemon=True)
    reader.start()
    write_buffer = getattr(writer, 'write_buffer', None)
    moved = 0       # bytes of data written (holes and zero runs skipped)
    try:
        while True:
            item = items.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            if item[0] == 'data':
                _kind, offset, buf, n = item
                if write_buffer is not None:
                    write_buffer(offset, buf, n, over_hole=fresh)
                else:
                    writer.write_data(offset, memoryview(buf)[:n],
                                      over_hole=fresh)
                free.put(buf)
                end = offset + n
                moved += n
            else:
                # ZERO, or UNALLOCATED through the base: zeros.
                _kind, offset, length = item
                if not fresh:
                    writer.zero_range(offset, length)
                end = offset + length
            if progress:
                progress(end, size, moved)
    finally:
        stop.set()
        reader.join()
