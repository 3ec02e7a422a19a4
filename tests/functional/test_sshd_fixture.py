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

"""The test sshd (tests/lib/sshd.py) dies with the test process: a test
run that is killed leaves no sshd listening behind."""

import os
import signal
import subprocess
import sys
import time

from tests.lib.corpus import REPO
from tests.lib import sshd as sshd_lib

# A test process: starts an sshd, says its pid, waits to be killed.
CHILD = '''
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.lib import sshd
server = sshd.SshServer(sys.argv[2]).start()
print(server.process.pid, flush=True)
time.sleep(600)
'''


def _alive(pid):
    """Running (a zombie, waiting for its reaper, counts as dead)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except OSError:
        return False
    return state not in ('Z', 'X')


def test_sshd_dies_with_a_killed_test_process(tmp_path):
    sshd_lib.require()
    child = subprocess.Popen(
        [sys.executable, '-c', CHILD, str(REPO), str(tmp_path / 'sshd')],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        cwd='/')
    pid = None
    try:
        line = child.stdout.readline()      # bounded: sshd's start is
        assert line.strip().isdigit(), line  # (15 s, 5 tries)
        pid = int(line)
        assert _alive(pid)
        child.kill()                        # as a killed pytest run
        child.wait(timeout=60)
        deadline = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), 'sshd %d outlived its test process' % pid
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        child.stdout.close()
