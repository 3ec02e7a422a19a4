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

"""Fixtures for the integration tests: a real cloud on 127.0.0.1.

Once per session, ``tools/loopback-cloud up`` starts Keystone, Glance,
RabbitMQ, Cinder, Placement, Nova and Neutron
(doc/source/contributor/loopback-cloud.rst) and
``tools/loopback-cloud down`` stops them at the end.  A cloud that is
already up is used and left up: the one ``ANY2KVM_CLOUD_OPENRC`` names (the
path of its openrc), or else the one ``tools/loopback-cloud status`` finds
up in the default run directory.

A cloud that cannot come up skips the tests, unless
``ANY2KVM_REQUIRE_TOOLS=1`` is set (CI): then they fail.

How long the whole layer took (cloud up, tests, down) is shown in the
terminal summary.
"""

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.lib.corpus import REPO
from tests.lib.tools import missing_tool
from tests.lib.tools import tail
from tests.lib import xvabuild

TOOL = REPO / 'tools' / 'loopback-cloud'
# A fresh machine installs RabbitMQ, libvirt, QEMU and a virtualenv of
# Keystone, Glance, Cinder, Nova, Placement and Neutron.
UP_TIMEOUT = 1500
DOWN_TIMEOUT = 180

# Seconds spent, for the terminal summary: up, down, whole.
TIMES = {}


def parse_openrc(path):
    """The variables an openrc exports, as a dict (no shell is run)."""
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        if line.startswith('export '):
            line = line[len('export '):]
        name, sep, value = line.partition('=')
        if sep:
            words = shlex.split(value)
            env[name.strip()] = words[0] if words else ''
    return env


class Cloud(object):
    """A cloud on 127.0.0.1: the openrc path and its variables."""

    def __init__(self, openrc, started):
        self.openrc = Path(openrc)
        self.env = parse_openrc(openrc)
        self.started = started     # by this session: it stops it too

    @property
    def region(self):
        return self.env.get('OS_REGION_NAME', 'RegionOne')


def _tool(command, timeout):
    return subprocess.run([str(TOOL), command], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope='session')
def cloud():
    t0 = time.monotonic()
    openrc = os.environ.get('ANY2KVM_CLOUD_OPENRC')
    started = False
    if openrc:
        if not os.path.isfile(openrc):
            pytest.fail('ANY2KVM_CLOUD_OPENRC=%s: no such file' % openrc,
                        pytrace=False)
    elif _tool('status', 60).returncode == 0:
        openrc = REPO / 'run' / 'cloud' / 'openrc'
    else:
        try:
            r = _tool('up', UP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _tool('down', DOWN_TIMEOUT)
            missing_tool('tools/loopback-cloud up: no cloud after %d s'
                         % UP_TIMEOUT)
        print(r.stderr, end='')
        if r.returncode != 0:
            missing_tool('tools/loopback-cloud up failed (%d):\n%s'
                         % (r.returncode, tail(r.stderr)))
        openrc = r.stdout.strip().splitlines()[-1]
        started = True
        TIMES['up'] = time.monotonic() - t0
    yield Cloud(openrc, started)
    if started:
        t1 = time.monotonic()
        r = _tool('down', DOWN_TIMEOUT)
        print(r.stderr, end='')
        TIMES['down'] = time.monotonic() - t1
        assert r.returncode == 0, 'tools/loopback-cloud down failed:\n%s' % (
            tail(r.stderr))
    TIMES['whole'] = time.monotonic() - t0


def pytest_terminal_summary(terminalreporter):
    if 'whole' not in TIMES:
        return
    parts = ['%s %.1f s' % (k, TIMES[k]) for k in ('up', 'down')
             if k in TIMES]
    terminalreporter.write_line(
        'integration layer (loopback cloud): %.1f s in all%s'
        % (TIMES['whole'], ' (%s)' % ', '.join(parts) if parts else ''))


@pytest.fixture(scope='session')
def keystone_session(cloud):
    """A keystoneauth1 Session for the openrc's user and project."""
    from keystoneauth1.identity import v3
    from keystoneauth1 import session

    e = cloud.env
    auth = v3.Password(
        auth_url=e['OS_AUTH_URL'],
        username=e['OS_USERNAME'],
        password=e['OS_PASSWORD'],
        project_name=e['OS_PROJECT_NAME'],
        user_domain_name=e.get('OS_USER_DOMAIN_NAME', 'Default'),
        project_domain_name=e.get('OS_PROJECT_DOMAIN_NAME', 'Default'))
    # The tests' clients live for the whole session and reuse kept-alive
    # connections across long idle gaps; one such reuse failed once with
    # "Connection aborted, BadStatusLine('\\n')" from cinder-api.  A
    # connection failure is retried, as clients facing a real cloud do.
    return session.Session(auth=auth, connect_retries=3)


@pytest.fixture(scope='session')
def glance(cloud, keystone_session):
    from glanceclient import client

    return client.Client('2', session=keystone_session,
                         region_name=cloud.region, interface='public')


@pytest.fixture(scope='session')
def cinder(cloud, keystone_session):
    from cinderclient import client

    return client.Client('3', session=keystone_session,
                         region_name=cloud.region, interface='public')


@pytest.fixture(scope='session')
def qemu_img():
    path = shutil.which('qemu-img')
    if not path:
        missing_tool('qemu-img not found (Debian package qemu-utils)')
    return path


@pytest.fixture(scope='session')
def fattools():
    try:
        import FATtools.vhdutils  # noqa: F401
    except ImportError:
        missing_tool('FATtools is not installed')


@pytest.fixture(scope='session')
def xva_img():
    return xvabuild.find_xva_img()
