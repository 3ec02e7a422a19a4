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

import logging
import os

import pytest

from tests.lib import sshd as sshd_lib

# Guest inspection (libguestfs, a TCG appliance: a minute or more per
# launch on a loaded machine) is on by default in convert and import.  The
# suite turns the default off, for every command it runs; the inspection
# tests (tests/functional/test_guest_inspection.py) ask for it with
# --inspect.
os.environ['ANY2KVM_INSPECT'] = '0'


@pytest.fixture(scope='session')
def sshd(tmp_path_factory):
    sshd_lib.require()
    server = sshd_lib.SshServer(tmp_path_factory.mktemp('sshd'))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the item (``item.any2kvm_failed``), for
    fixtures that say more when their test failed."""
    outcome = yield
    if outcome.get_result().failed:
        item.any2kvm_failed = True


@pytest.fixture
def sshd_factory(tmp_path, request):
    """``sshd_factory(env=None, ...)`` -> a started SshServer of this
    test's own.  When the test failed, the end of each server's log is
    printed (shown with the failure): what sshd saw of the logins."""
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
        if getattr(request.node, 'any2kvm_failed', False):
            print('--- the end of %s ---' % server.log)
            print('\n'.join(server.log_text().splitlines()[-40:]))


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """Take away the root-logger handlers a test adds (and its level):
    ``any2kvm --config-file`` or ``--debug`` run in-process sets up
    oslo.log, whose handler writes to the sys.stderr of that moment,
    pytest's capture stream, closed once the test is over.  Left in place
    it would fail ("Logging error ... I/O operation on closed file") for
    every later record, a paramiko transport's at exit among them.
    pytest's own handlers (it adds one per phase) are left alone."""
    root = logging.getLogger()
    before = set(root.handlers)
    level = root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and \
                not type(handler).__module__.startswith('_pytest'):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


# A test that hangs must fail, not stall the whole run until CI's limit:
# pytest-timeout bounds every test.  The default (setup.cfg
# [tool:pytest] timeout, which covers the integration layer's cloud
# start-up in its first test) is too loose for the unit and functional
# layers, which get a tighter bound unless a test sets its own
# ``@pytest.mark.timeout``.
UNIT_FUNCTIONAL_TIMEOUT = 600


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.nodeid.split('/')
        if (len(parts) > 1 and parts[1] in ('unit', 'functional')
                and item.get_closest_marker('timeout') is None):
            item.add_marker(pytest.mark.timeout(UNIT_FUNCTIONAL_TIMEOUT))


@pytest.fixture
def direct_io_calls(monkeypatch):
    """The paths of the raw writers asked to write direct
    (``RawWriter.direct_io``), in order; the writers still do."""
    from any2kvm_os.writers import raw
    asked = []
    real = raw.RawWriter.direct_io

    def direct_io(self):
        asked.append(self.path)
        return real(self)

    monkeypatch.setattr(raw.RawWriter, 'direct_io', direct_io)
    return asked
