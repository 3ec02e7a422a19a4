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

"""The guest tools' child processes (any2kvm_os/guest/process.py): bounded
in time, and never outliving the command that started them."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from any2kvm_os.guest import process

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def alive(pid):
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def wait_gone(pid, seconds=10):
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def wait_file(path, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        time.sleep(0.05)
    pytest.fail('%s was not written' % path)


def test_a_command_past_its_time_is_killed_with_its_group(tmp_path):
    pidfile = tmp_path / 'pid'
    cmd = ['sh', '-c', 'sleep 60 & echo $! > %s; wait' % pidfile]
    with pytest.raises(subprocess.TimeoutExpired):
        process.communicate(cmd, 1)
    # the grandchild, in the child's session, went with it
    assert wait_gone(wait_file(pidfile))


def test_the_output_and_status_come_back():
    proc, out, err = process.communicate(
        ['sh', '-c', 'echo out; echo err >&2; exit 3'], 30,
        stderr=subprocess.PIPE)
    assert (proc.returncode, out, err) == (3, b'out\n', b'err\n')


def test_a_child_dies_with_a_command_killed_by_sigkill(tmp_path):
    """The command killed with ``kill -9`` (no handler, no ``finally``
    runs): the probe or virt-v2v it had started is killed too, instead
    of writing the target on for up to its timeout."""
    pidfile = tmp_path / 'pid'
    script = textwrap.dedent('''
        import sys
        sys.path.insert(0, %r)
        from any2kvm_os.guest import process
        process.communicate(['sh', '-c', 'echo $$ > %s; exec sleep 60'],
                            120)
    ''' % (REPO, pidfile))
    command = subprocess.Popen([sys.executable, '-c', script])
    try:
        child = wait_file(pidfile)
        assert alive(child)
        os.kill(command.pid, signal.SIGKILL)
        command.wait(timeout=30)
        assert wait_gone(child), 'the child outlived the killed command'
    finally:
        if command.poll() is None:
            command.kill()
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
