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
(:class:`any2kvm_os.writers.raw.RawWriter`).
"""

import queue
import threading

from any2kvm_os import extents as ext

#: Most bytes read from a layer at once.
COPY_CHUNK = 4 << 20

#: Chunks read ahead of the writer: bounds the pipeline's memory to about
#: PIPELINE_DEPTH * COPY_CHUNK.
PIPELINE_DEPTH = 4
_DONE = object()


def _produce(chain, out, stop):
    """Reader thread: the folded chain as ('data', offset, bytes) and
    ('zero', offset, length) items.  Reading (pread, inflate) releases the
    GIL, so it overlaps with the writer's pwrite."""
    def put(item):
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        layers = chain.layers
        for e in chain.iter_extents():
            if e.kind == ext.DATA:
                layer = layers[e.layer]
                done = 0
                while done < e.length:
                    n = min(COPY_CHUNK, e.length - done)
                    if not put(('data', e.offset + done,
                                layer.read_extent(e, done, n))):
                        return
                    done += n
            elif not put(('zero', e.offset, e.length)):
                return
        put(_DONE)
    except BaseException as exc:  # handed to the writer, raised there
        put(exc)


def copy_chain(chain, writer, progress=None):
    """Fold ``chain`` and write the whole disk onto ``writer``.

    A reader thread folds and reads (or inflates) the layers while this
    thread writes, through a queue of at most PIPELINE_DEPTH chunks.
    """
    size = chain.virtual_size
    writer.resize(size)
    fresh = writer.fresh
    items = queue.Queue(maxsize=PIPELINE_DEPTH)
    stop = threading.Event()
    reader = threading.Thread(target=_produce, args=(chain, items, stop),
                              name='any2kvm-reader', daemon=True)
    reader.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            kind, offset, payload = item
            if kind == 'data':
                writer.write_data(offset, payload, over_hole=fresh)
                end = offset + len(payload)
            else:
                # ZERO, or UNALLOCATED through the base: zeros.
                if not fresh:
                    writer.zero_range(offset, payload)
                end = offset + payload
            if progress:
                progress(end, size)
    finally:
        stop.set()
        reader.join()
