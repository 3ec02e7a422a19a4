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

"""``tools/loopback-cloud up`` without qemu-img fails at once, clearly.

Cinder needs qemu-img to upload a volume to an image; a cloud started
without it would leave such an image queued for ever.  ``up`` is run for
real, with a ``PATH`` that holds every program of the system but
qemu-img, on a run directory of its own: it must stop before starting
anything, with one error line that names qemu-img and its package.
"""

import os
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port_base(count=40):
    """A base with ``count`` ports nobody listens on (127.0.0.1)."""
    for base in range(31700, 60000, 97):
        busy = False
        for port in range(base, base + count):
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(('127.0.0.1', port)) == 0:
                    busy = True
                    break
        if not busy:
            return base
    pytest.skip('no free range of ports')


def test_up_without_qemu_img_fails_before_starting(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('tools/loopback-cloud up needs root')
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    for d in ('/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin',
              '/sbin', '/bin'):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = bindir / name
            if name == 'qemu-img' or os.path.lexists(link):
                continue
            link.symlink_to(os.path.join(d, name))
    run_dir = tmp_path / 'run'
    env = {'PATH': str(bindir), 'HOME': str(tmp_path), 'LC_ALL': 'C.UTF-8',
           'LOOPBACK_CLOUD_PORT_BASE': str(_free_port_base()),
           'ANY2KVM_NO_APT': '1'}
    res = subprocess.run(
        ['bash', str(REPO / 'tools' / 'loopback-cloud'), 'up', '--run-dir',
         str(run_dir)], capture_output=True, text=True, env=env,
        timeout=300, cwd=str(tmp_path))
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert 'qemu-img not found' in lines[0]
    assert 'qemu-utils' in lines[0]
    assert 'nothing was started' in lines[0]
    # Nothing was made but the lock: no marker, no logs, no services.
    assert sorted(os.listdir(run_dir)) == ['.lock']
