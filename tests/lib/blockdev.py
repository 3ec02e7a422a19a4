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

"""Block devices for the tests that write to one."""

import contextlib
import os
import shutil
import subprocess

import pytest


@contextlib.contextmanager
def loop_device(backing):
    """A loop device over the file ``backing``, detached afterwards.

    Skips the test unless run as root with losetup.
    """
    if os.geteuid() != 0 or not shutil.which('losetup'):
        pytest.skip('needs root and losetup for a loop device')
    r = subprocess.run(['losetup', '--find', '--show', str(backing)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip('cannot attach a loop device: %s' % r.stderr.strip())
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(['losetup', '--detach', dev], capture_output=True,
                       timeout=120)


@contextlib.contextmanager
def loop_device_or_none(backing):
    """A loop device over ``backing`` (detached afterwards, even when the
    test fails), or None where none can be attached (not root, no
    losetup, no loop devices in this container): the caller then tests
    the same code on the regular file."""
    if os.geteuid() != 0 or not shutil.which('losetup'):
        yield None
        return
    try:
        r = subprocess.run(['losetup', '--find', '--show', str(backing)],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        yield None
        return
    if r.returncode != 0 or not r.stdout.strip():
        yield None
        return
    dev = r.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(['losetup', '--detach', dev], capture_output=True,
                       timeout=120)
