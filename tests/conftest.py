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

"""Fixtures every test directory may use.

``sshd``: one real OpenSSH server on 127.0.0.1 for the whole session
(:class:`tests.lib.sshd.SshServer`: ``host``, ``port``, ``user``,
``client_key``, ``known_hosts``, ``fingerprint``).  Tests that cut
connections, change the host key or need another environment use
``sshd_factory`` for servers of their own, stopped after the test.
"""

import pytest

from tests.lib import sshd as sshd_lib


@pytest.fixture(scope='session')
def sshd(tmp_path_factory):
    sshd_lib.require()
    server = sshd_lib.SshServer(tmp_path_factory.mktemp('sshd'))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd_factory(tmp_path):
    """``sshd_factory(env=None, ...)`` -> a started SshServer of this
    test's own."""
    sshd_lib.require()
    servers = []

    def make(**kwargs):
        server = sshd_lib.SshServer(tmp_path / ('sshd%d' % len(servers)),
                                    **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
