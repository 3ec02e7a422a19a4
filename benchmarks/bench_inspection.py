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

"""Guest inspection: seconds per guest, and import time with and without.

Builds the three test guests of tests/lib/guestbuild.py (virtio, novirtio,
xenpv) as qcow2 files, then, per guest, times ``any2kvm import --target
file`` with ``--no-inspect`` and with ``--inspect`` (one appliance launch
each), and finally one launch inspecting the three guests together (three
drives), whose time divided by three is the cost per guest when disks are
batched.  ``sync`` runs before each timed command.  The libguestfs
appliance runs under TCG (``force_tcg``); its first launch on a machine
also builds the appliance (supermin), so a warm-up launch comes first.

    .venv/bin/python benchmarks/bench_inspection.py [--runs N] [--workdir D]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from any2kvm_os.guest import inspect as gi  # noqa: E402
from tests.lib import guestbuild  # noqa: E402


def any2kvm():
    script = Path(sys.executable).parent / 'any2kvm'
    return [str(script)] if script.exists() else [
        sys.executable, '-m', 'any2kvm_os.cmd.any2kvm']


def timed(cmd, env=None):
    subprocess.run(['sync'], check=True)
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       timeout=3600)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit('failed: %s\n%s%s' % (' '.join(cmd), r.stdout,
                                               r.stderr))
    return took, r.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=1)
    parser.add_argument('--workdir')
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix='bench-inspect-'))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ANY2KVM_INSPECT='1')
    try:
        sources = {}
        for kind in guestbuild.KINDS:
            raw = work / ('%s.raw' % kind)
            guestbuild.build(raw, kind)
            qcow = work / ('%s.qcow2' % kind)
            subprocess.run(['qemu-img', 'convert', '-O', 'qcow2', str(raw),
                            str(qcow)], check=True)
            sources[kind] = (raw, qcow)
        print('load average at start: %s' % ' '.join(
            open('/proc/loadavg').read().split()[:3]))
        warm, _out = timed([gi.Settings().python, gi.PROBE, '--backend',
                            'direct', '--backend-setting', 'force_tcg',
                            'inspect', str(sources['virtio'][0])])
        print('warm-up launch (builds the appliance if needed): %.1f s'
              % warm)
        rows = []
        for kind, (raw, qcow) in sources.items():
            plain, inspected = [], []
            bus = '?'
            for _run in range(args.runs):
                out = work / 'out'
                shutil.rmtree(str(out), ignore_errors=True)
                out.mkdir()
                t, _o = timed(any2kvm() + [
                    'import', str(qcow), '--name', kind, '--target', 'file',
                    '--output-dir', str(out), '--no-inspect'], env)
                plain.append(t)
                shutil.rmtree(str(out))
                out.mkdir()
                t, o = timed(any2kvm() + [
                    'import', str(qcow), '--name', kind, '--target', 'file',
                    '--output-dir', str(out), '--inspect'], env)
                inspected.append(t)
                for line in o.splitlines():
                    if 'hw_disk_bus=' in line:
                        bus = line.split('hw_disk_bus=')[1].split()[0]
            rows.append((kind, min(plain), min(inspected), bus))
        together, _out = timed([gi.Settings().python, gi.PROBE,
                                '--backend', 'direct', '--backend-setting',
                                'force_tcg', '--format', 'raw', 'inspect'] +
                               [str(r) for r, _q in sources.values()])
        print()
        print('| guest | import --no-inspect | import --inspect | '
              'inspection | bus |')
        print('|---|---|---|---|---|')
        for kind, plain, inspected, bus in rows:
            print('| %s | %.2f s | %.1f s | %.1f s | %s |' % (
                kind, plain, inspected, inspected - plain, bus))
        print()
        print('three guests in one launch: %.1f s, %.1f s per guest'
              % (together, together / len(sources)))
        print('load average at end: %s' % ' '.join(
            open('/proc/loadavg').read().split()[:3]))
    finally:
        if not args.workdir:
            shutil.rmtree(str(work), ignore_errors=True)


if __name__ == '__main__':
    main()
