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
command lines."""

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
        self.done = 0

    def __call__(self, done, total=None):
        self.done = max(self.done, done)
        total = total or self.total
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        if total:
            pct = min(100.0, 100.0 * self.done / total)
            eta = (total - self.done) / rate if rate else 0
            text = '%5.1f%% %s of %s, %s/s, ETA %ds' % (
                pct, human(self.done), human(total), human(rate), eta)
            decile = int(pct // 10)
        else:
            text = '%s, %s/s' % (human(self.done), human(rate))
            decile = int(self.done // (1 << 30))
        if self.label:
            text = '%s: %s' % (self.label, text)
        if self.tty:
            if now - self.last >= 0.2:
                self.stream.write('\r' + text.ljust(70))
                self.stream.flush()
                self.last = now
        elif decile != self.last_decile:
            self.stream.write(text + '\n')
            self.last_decile = decile

    def finish(self, total=None):
        if total is not None:
            self.total = total
        elapsed = time.monotonic() - self.start
        if self.tty:
            self.stream.write('\r'.ljust(72) + '\r')
        self.stream.write('%sdone: %s in %.1fs\n' % (
            '%s: ' % self.label if self.label else '',
            human(self.total or self.done), elapsed))
        self.stream.flush()


class DiskProgress(object):
    """A :class:`Progress` per disk of a multi-disk import: a new one
    starts when the byte count goes back (the next disk)."""

    def __init__(self, stream=None):
        self.stream = stream
        self.current = None
        self.last = 0

    def __call__(self, done, total=None):
        if self.current is None or done < self.last:
            self.finish()
            self.current = Progress(total, self.stream)
        self.last = done
        self.current(done, total)

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
    of the layer's disk address space, rate and ETA) on a terminal, a
    plain line per 10% otherwise.  The engine calls :meth:`start` before a
    layer (the callable it returns gets ``(done, total)``) and
    :meth:`end` after it."""

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
