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

"""What zeroing a block device costs: the first sync of a warm migration
onto a device (``migration create --device``) zeroes every range of the
disk the VM holds no data in, unless ``--device-is-zeroed``.

Times :meth:`RawWriter.zero_range` over SIZE bytes of a loop device, by
each way it knows (fallocate PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE, the
BLKZEROOUT ioctl, zeros written from here), the device flushed after
each, on a loop device whose backing file was filled with garbage before
each run (a used thick LV's stand-in); checked to read back as zeros
after.  On a loop device the kernel's ways are cheap (the loop driver
turns them into fallocate on the backing file); on a device without
write-zeroes support the kernel writes zeros itself, at about the
"write" figure.
Needs root and losetup; prints the figures and the load average.

    sudo .venv/bin/python benchmarks/bench_blockdev_zeroing.py \\
        [--size-mib 1024] [--runs 3] [--dir DIR]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from any2kvm_os.writers import raw

MiB = 1 << 20
MODES = {'punch': ['punch'], 'zero-range': ['zero'], 'blkzeroout': ['ioctl'],
         'write': []}


def fill(dev, size, byte):
    fd = os.open(dev, os.O_WRONLY | os.O_CLOEXEC)
    try:
        chunk = bytes([byte]) * (4 * MiB)
        for off in range(0, size, len(chunk)):
            os.pwrite(fd, chunk[:min(len(chunk), size - off)], off)
        os.fsync(fd)
    finally:
        os.close(fd)


def all_zero(dev, size):
    fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        zero = bytes(4 * MiB)
        for off in range(0, size, len(zero)):
            n = min(len(zero), size - off)
            if os.pread(fd, n, off) != zero[:n]:
                return False
        return True
    finally:
        os.close(fd)


def time_mode(dev, size, modes):
    w = raw.RawWriter.open_device(dev, size)
    try:
        w._zero_modes = list(modes)
        subprocess.run(['sync'], check=True)
        t = time.monotonic()
        w.zero_range(0, size)
        w.sync()
        took = time.monotonic() - t
        used = list(w._zero_modes)
    finally:
        w.close()
    return took, used == list(modes)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size-mib', type=int, default=1024)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--dir', default=None,
                   help='where the backing files go (default: a '
                        'temporary directory)')
    a = p.parse_args()
    if os.geteuid() != 0:
        sys.exit('needs root (loop devices)')
    size = a.size_mib * MiB
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        print('load average %s; %d MiB zeroed, median of %d runs'
              % (' '.join('%.2f' % x for x in os.getloadavg()),
                 a.size_mib, a.runs))
        backing = os.path.join(tmp, 'dev.img')
        with open(backing, 'wb') as f:
            f.truncate(size)
        dev = subprocess.run(['losetup', '--find', '--show', backing],
                             check=True, capture_output=True, text=True,
                             timeout=120).stdout.strip()
        try:
            for name, modes in MODES.items():
                times, ok = [], True
                for _ in range(a.runs):
                    # Old data everywhere first, as a used thick LV holds.
                    fill(dev, size, 0xA5)
                    took, supported = time_mode(dev, size, modes)
                    ok = ok and supported and all_zero(dev, size)
                    times.append(took)
                med = statistics.median(times)
                print('%-11s %8.3f s  %8.1f MiB/s  %s' % (
                    name, med, a.size_mib / med, 'reads back zero' if ok
                    else 'NOT SUPPORTED here, or not zero'))
        finally:
            subprocess.run(['losetup', '--detach', dev],
                           capture_output=True, timeout=120)
        print('load average after: %s'
              % ' '.join('%.2f' % x for x in os.getloadavg()))


if __name__ == '__main__':
    main()
