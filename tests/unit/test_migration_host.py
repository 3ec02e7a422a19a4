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

"""The host of a held migration changes nothing once its lease is lost
(:attr:`any2kvm_os.migration.host.SshHost.guard`)."""

import collections

import pytest

from any2kvm_os import exception
from any2kvm_os.migration import host as host_mod


class Conn(object):
    label = 'root@xs1'

    def __init__(self):
        self.calls = []

    def check_run(self, argv, idempotent=False, timeout=None):
        self.calls.append(('run', argv))
        return collections.namedtuple('R', 'stdout')('out')

    def run_many(self, commands, idempotent=False, timeout=None):
        self.calls.append(('many', commands))
        return ['out' for _c in commands]

    def run_all(self, argvs, idempotent=False, timeout=None):
        self.calls.append(('all', argvs))
        raise AssertionError('not reached in this test')

    def armed(self, argv):
        conn = self

        class Armed(object):
            ready = True

            def fire(self, timeout=None):
                conn.calls.append(('fire', argv))
                return collections.namedtuple('R', 'status stdout')(0, '')

            def close(self):
                pass
        return Armed()


def lost():
    raise exception.LeaseLost(name='web', operation='cutover',
                              reason='another command took it over')


def test_a_lost_lease_stops_what_changes_the_host_not_the_queries():
    host = host_mod.SshHost.__new__(host_mod.SshHost)
    host.conn = Conn()
    host.label = 'root@xs1'
    armed = host.arm(['xe', 'vm-shutdown', 'uuid=u'])
    host.guard = lost
    assert host.run(['xe', 'vm-list']) == 'out'
    assert host.run_many([['xe', 'vm-list']]) == ['out']
    for change in (
            lambda: host.run(['xe', 'vm-snapshot'], mutating=True),
            lambda: host.run_many([['xe', 'snapshot-uninstall']],
                                  mutating=True),
            lambda: host.run_batches([[['xe', 'vm-snapshot']]],
                                     mutating=True),
            lambda: armed.fire(60),
            lambda: host.release_stale(['vdi']),
            lambda: host.prepare_disk(None),
            lambda: host.open_disk(None)):
        with pytest.raises(exception.LeaseLost):
            change()
    assert host.conn.calls == [('run', ['xe', 'vm-list']),
                               ('many', [['xe', 'vm-list']])]
    host.guard = None
    armed.fire(60)
    assert host.conn.calls[-1] == ('fire', ['xe', 'vm-shutdown', 'uuid=u'])
