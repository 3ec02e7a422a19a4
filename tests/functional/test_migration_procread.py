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

"""``migration sync`` with reader processes (``ssh_reader_processes``),
forced onto the small disks of the XenServer test bed (threshold 0):
the real OpenSSH server on 127.0.0.1, the ``xe`` stand-in."""

import os
import re
import signal
import subprocess
import time

from tests.functional import test_migration as tm
from tests.lib import imagegen as ig
from tests.lib.xenserver import bed as xbed

MiB = 1 << 20
WORKER = 'any2kvm_os.migration.procworker'


def _bed(sshd_factory, tmp_path):
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    with open(b.conf, 'a') as f:
        f.write('ssh_reader_processes = 2\n'
                'ssh_reader_processes_min_mib = 0\n')
    out = tmp_path / 'out'
    out.mkdir()
    common = b.ssh_args + ['--state-db',
                           'sqlite:///%s' % (tmp_path / 'state.db')]
    return b.root, b.facts, out, b.location(), common


def _workers(pid):
    """Pids of the reader processes whose parent is ``pid``."""
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                stat = f.read()
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                cmdline = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(')', 1)[1].split()[1])
        if ppid == pid and WORKER.encode() in cmdline:
            found.append(int(name))
    return found


def _kill_a_worker(common):
    """Run ``sync``, SIGKILL its first reader process once it is seen;
    (pid killed or None, returncode, stdout, stderr)."""
    proc = subprocess.Popen(tm._cmd(['sync', 'web'] + common),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=tm._env(), cwd=str(tm.REPO))
    killed = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        pids = _workers(proc.pid)
        if pids:
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            except ProcessLookupError:
                continue
            break
        time.sleep(0.002)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert not _workers(proc.pid), 'a reader process was left behind'
    return killed, proc.returncode, stdout, stderr


def test_sync_with_reader_processes_killed_again_cutover(sshd_factory,
                                                         tmp_path):
    root, facts, out, loc, common = _bed(sshd_factory, tmp_path)
    tm.mig('create', 'web', loc, '--target', 'file', '--output-dir', out,
           common=common)
    m = tm.show(common)
    w0, w1 = tm.writers(root, facts, m)
    # Several batches (1 MiB at least) on each disk, for both workers.
    w0.write(MiB, ig.pattern(41, 6 * MiB))
    w1.write(0, ig.pattern(42, 3 * MiB))
    # A reader process killed: the sync fails in one line, the layer
    # stays partly applied.
    killed, code, stdout, stderr = _kill_a_worker(common)
    assert killed, 'the sync ended before a reader process was seen'
    assert code != 0, stdout
    assert 'killed by signal 9' in stderr, stderr
    assert 'Traceback' not in stderr, stderr
    # The next sync applies it again (and the snapshot the killed one
    # took), each layer over two processes.
    r = tm.mig('sync', 'web', '--debug', common=common)
    assert '4 layer(s) applied' in r.stdout, r.stdout
    assert r.stderr.count('2 reader processes started') == 4, r.stderr
    # Only what the layer files hold crossed the wire, counted once.
    wire, files = (int(x) for x in re.search(
        r'(\d+) bytes read over the wire for (\d+) bytes of layer files',
        r.stdout).groups())
    assert files <= wire <= 1.02 * files + 64 * 1024, r.stdout
    w0.write(5 * MiB, ig.pattern(43, 2 * MiB))
    w0.zero(MiB, 8192)
    w1.write(MiB + 300, b'a partial sector')
    # The cutover reads its last delta in its own process.
    r = tm.mig('cutover', 'web', '--timeout', '60', '--debug',
               common=common)
    assert 'reader processes started' not in r.stderr, r.stderr
    m = tm.show(common)
    assert m['status'] == 'done'
    tm.check(m, facts)
