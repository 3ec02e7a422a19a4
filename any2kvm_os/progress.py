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

"""Progress on a terminal (percent, rate, ETA) or a line per 10%, for both
command lines.

The percent and the ETA follow the disk's address space, as qemu-img's
``-p`` does: a copy runs through it in order, and a hole is passed in no
time.  A copier that skips holes also says how many bytes of data it has
moved (``data``): the rate is then that of the data, never a hole's
"hundreds of GiB/s", and the last line says both."""

import sys
import time


def human(n):
    """``n`` bytes as a short text, like 1.5 GiB."""
    if n is None:
        return '-'
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return ('%d %s' % (n, unit)) if unit == 'B' else \
                '%.1f %s' % (n, unit)
        n /= 1024.0


class Progress(object):
    """Percent, rate and ETA on a terminal; a line per 10% otherwise."""

    def __init__(self, total, stream=None, label=None):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.last_decile = -1
        #: The longest line drawn on the terminal (blanked when done).
        self.width = 0
        self.done = 0
        #: Bytes of data moved, when the caller counts them apart from
        #: the address reached (None: every byte reached was moved).
        self.data = None

    def __call__(self, done, total=None, data=None):
        """``done`` bytes of the disk's address space reached of
        ``total``; ``data``: of which bytes of data moved (holes and
        zero runs skipped), when the caller knows."""
        self.done = max(self.done, done)
        if data is not None:
            self.data = max(self.data or 0, data)
        total = total or self.total
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-6)
        pace = self.done / elapsed
        if self.data is None:
            moved = '%s/s' % human(pace)
        else:
            moved = '%s of data, %s/s' % (human(self.data),
                                          human(self.data / elapsed))
        if total:
            pct = min(100.0, 100.0 * self.done / total)
            eta = (total - self.done) / pace if pace else 0
            where = human(self.done) + ' ' if self.data is None else ''
            text = '%5.1f%% %sof %s, %s, ETA %ds' % (
                pct, where, human(total), moved, eta)
            decile = int(pct // 10)
        else:
            text = '%s, %s' % (human(self.done), moved)
            decile = int(self.done // (1 << 30))
        if self.label:
            text = '%s: %s' % (self.label, text)
        if self.tty:
            if now - self.last >= 0.2:
                self.stream.write('\r' + text.ljust(self.width))
                self.width = max(self.width, len(text))
                self.stream.flush()
                self.last = now
        elif decile != self.last_decile:
            self.stream.write(text + '\n')
            self.last_decile = decile

    def finish(self, total=None):
        if total is not None:
            self.total = total
        elapsed = time.monotonic() - self.start
        if self.tty and self.width:
            self.stream.write('\r' + ' ' * self.width + '\r')
        data = ''
        if self.data is not None:
            data = ' (%s of data, %s/s)' % (
                human(self.data), human(self.data / max(elapsed, 1e-6)))
        self.stream.write('%sdone: %s%s in %.1fs\n' % (
            '%s: ' % self.label if self.label else '',
            human(self.total or self.done), data, elapsed))
        self.stream.flush()


class DiskProgress(object):
    """A :class:`Progress` per disk of a multi-disk import: a new one
    starts when the byte count goes back (the next disk)."""

    def __init__(self, stream=None):
        self.stream = stream
        self.current = None
        self.last = 0

    def __call__(self, done, total=None, data=None):
        if self.current is None or done < self.last:
            self.finish()
            self.current = Progress(total, self.stream)
        self.last = done
        self.current(done, total, data)

    def finish(self, ok=True):
        """Close the current disk's line: "done: ..." after a success; on
        a failure only end the progress line."""
        if self.current is not None:
            if ok:
                self.current.finish()
            elif self.current.tty:
                self.current.stream.write('\n')
                self.current.stream.flush()
            self.current = None
            self.last = 0


class LayerProgress(object):
    """Progress of a migration step: one bar per layer applied (percent
    of the layer's disk address space, the data read and its rate, ETA)
    on a terminal, a plain line per 10% otherwise.  The engine calls
    :meth:`start` before a layer (the callable it returns gets ``(done,
    total, data)``) and :meth:`end` after it."""

    def __init__(self, stream=None):
        self.stream = stream
        self.current = None

    def start(self, label, total):
        self.end()
        self.current = Progress(total, self.stream, label=label)
        return self.current

    def end(self, ok=True):
        if self.current is None:
            return
        if ok:
            self.current.finish()
        elif self.current.tty:
            self.current.stream.write('\n')
            self.current.stream.flush()
        self.current = None
