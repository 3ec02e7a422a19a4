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

"""A XenServer tgz in Glance boots in Nova through the Cinder hook.

``openstack server create --image IMAGE --boot-from-volume 1``: the image
is a XenServer VDI export (``vhd``/``ovf``) of a bootable guest, Nova asks
Cinder for the boot volume, the any2kvm_os hook converts the image, and
the server reaches ACTIVE with the guest's ready line on its console
(``os-getConsoleOutput``).
"""

import re

from tempest import config
from tempest.lib.common import api_microversion_fixture
from tempest.lib.common.utils import test_utils
from tempest.lib import decorators
from tempest.lib import exceptions as lib_exc

from any2kvm_os.tempest_plugin.tests.api import base

CONF = config.CONF
# volume_type in a block device mapping; networks "none".
MICROVERSION = '2.67'


class BootXenServerTgzTest(base.Any2KvmVolumeTest):

    @classmethod
    def skip_checks(cls):
        super(BootXenServerTgzTest, cls).skip_checks()
        if not CONF.service_available.nova:
            raise cls.skipException(
                'Nova is not available ([service_available] nova)')

    @classmethod
    def setup_clients(cls):
        super(BootXenServerTgzTest, cls).setup_clients()
        cls.servers_client = cls.os_primary.servers_client

    def _server(self, server_id):
        return self.servers_client.show_server(server_id)['server']

    def _server_or_none(self, server_id):
        try:
            return self._server(server_id)
        except lib_exc.NotFound:
            return None

    def _delete_server(self, server_id):
        test_utils.call_and_ignore_notfound_exc(
            self.servers_client.delete_server, server_id)
        self.wait_until(
            lambda: self._server_or_none(server_id), lambda s: s is None,
            CONF.compute.build_timeout, CONF.compute.build_interval,
            lambda s: lib_exc.TimeoutException(
                'server %s not deleted after %d s'
                % (server_id, CONF.compute.build_timeout)))

    def _wait_for_console(self, server_id, regex):
        def console():
            return self.servers_client.get_console_output(
                server_id)['output'] or ''

        return self.wait_until(
            console, regex.search, CONF.compute.build_timeout,
            CONF.compute.build_interval,
            lambda output: self.failureException(
                'console of server %s does not match %r after %d s; last '
                'lines:\n%s' % (
                    server_id, regex.pattern, CONF.compute.build_timeout,
                    '\n'.join(output.splitlines()[-10:]))))

    @decorators.attr(type='slow')
    @decorators.idempotent_id('3d0e6a8c-5b0f-4a86-9b62-0e1a51c6a2f4')
    def test_boot_from_volume_of_xenserver_tgz(self):
        group = CONF.any2kvm_samples
        path = group.boot_guest_xenserver_tgz
        if not path or not group.boot_guest_console:
            raise self.skipException(
                'no boot guest: [any2kvm-samples] boot_guest_xenserver_tgz '
                'and boot_guest_console are not both set')
        regex = re.compile(group.boot_guest_console)
        image = self.create_image_from_file(path, 'vhd', 'ovf')
        self.useFixture(api_microversion_fixture.APIMicroversionFixture(
            compute_microversion=MICROVERSION))
        bdm = {'boot_index': 0, 'uuid': image['id'], 'source_type': 'image',
               'destination_type': 'volume',
               'volume_size': CONF.any2kvm_samples.volume_size,
               'delete_on_termination': True}
        if CONF.any2kvm_feature_enabled.volume_type:
            bdm['volume_type'] = CONF.any2kvm_feature_enabled.volume_type
        server = self.servers_client.create_server(
            name=self.rand_name('server'),
            flavorRef=(group.boot_guest_flavor or CONF.compute.flavor_ref),
            networks='none', block_device_mapping_v2=[bdm])['server']
        self.addCleanup(self._delete_server, server['id'])

        def describe(s):
            return '%s' % (s.get('fault') or {}).get('message')
        self._wait_for_status('server', self._server, server['id'],
                              'ACTIVE', ('ERROR',),
                              CONF.compute.build_timeout,
                              CONF.compute.build_interval, describe)
        self._wait_for_console(server['id'], regex)
