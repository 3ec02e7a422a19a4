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

"""``openstack any2kvm import`` into Glance, run as a command with the
credentials of the test's own user, like an operator would: the XenServer
tgz sample becomes one raw image with the KVM properties, holding exactly
the sample's raw disk.
"""

import json
import os
import shutil
import subprocess
import sys

from tempest import config
from tempest.lib import decorators

from any2kvm_os.tempest_plugin.tests.api import base

CONF = config.CONF


def find_openstack():
    """The ``openstack`` command beside tempest's Python, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), 'openstack')
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which('openstack')


class OscImportTest(base.Any2KvmBaseTest):

    @classmethod
    def skip_checks(cls):
        super(OscImportTest, cls).skip_checks()
        if not CONF.any2kvm_feature_enabled.osc_import:
            raise cls.skipException(
                '"openstack any2kvm import" is not installed here '
                '([any2kvm-feature-enabled] osc_import = False)')
        if not find_openstack():
            raise cls.skipException(
                'no "openstack" command beside %s nor on PATH'
                % sys.executable)

    def _environment(self):
        """os.environ without any OS_* variable, plus the primary user's
        credentials."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('OS_')}
        creds = self.os_primary.credentials
        env.update({
            'OS_AUTH_URL': CONF.identity.uri_v3,
            'OS_AUTH_TYPE': 'password',
            'OS_IDENTITY_API_VERSION': '3',
            'OS_INTERFACE': 'public',
            'OS_USERNAME': creds.username,
            'OS_PASSWORD': creds.password,
            'OS_PROJECT_NAME': creds.project_name,
        })
        for who in ('user', 'project'):
            domain_name = getattr(creds, '%s_domain_name' % who)
            domain_id = getattr(creds, '%s_domain_id' % who)
            if domain_name:
                env['OS_%s_DOMAIN_NAME' % who.upper()] = domain_name
            elif domain_id:
                env['OS_%s_DOMAIN_ID' % who.upper()] = domain_id
        if CONF.identity.region:
            env['OS_REGION_NAME'] = CONF.identity.region
        if CONF.identity.ca_certificates_file:
            env['OS_CACERT'] = CONF.identity.ca_certificates_file
        return env

    def _openstack(self, *args):
        """Run ``openstack ARGS``; the CompletedProcess (text)."""
        command = [find_openstack()]
        if CONF.identity.disable_ssl_certificate_validation:
            command.append('--insecure')
        command.extend(args)
        return subprocess.run(command, env=self._environment(),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=CONF.image.build_timeout)

    def _delete_images_named(self, name):
        """Delete at cleanup whatever images the command made (also when
        it failed or printed something unexpected)."""
        images = self.images_client.list_images(
            params={'name': name})['images']
        for image in images:
            self.delete_image_at_cleanup(image['id'])

    @decorators.attr(type='smoke')
    @decorators.idempotent_id('d35adef1-fe03-4e58-9410-c805ca003014')
    def test_import_xenserver_tgz_into_glance(self):
        sample = self.sample('xenserver_tgz')
        name = self.rand_name('osc-import')
        try:
            r = self._openstack('any2kvm', 'import', sample.path,
                                '--name', name, '-f', 'json')
        finally:
            self._delete_images_named(name)
        self.assertEqual(
            0, r.returncode,
            'openstack any2kvm import failed (%d):\n%s%s'
            % (r.returncode, r.stdout, r.stderr))
        try:
            result = json.loads(r.stdout)
        except ValueError:
            self.fail('openstack any2kvm import -f json printed no JSON:\n%s'
                      % r.stdout)
        image_id = result.get('id')
        self.assertIsNotNone(image_id, 'no "id" in %s' % result)
        self.assertEqual(sample.sha256, result.get('sha256'),
                         'the SHA-256 the command reports')

        image = self.wait_for_image_status(image_id, 'active')
        self.assertEqual(name, image['name'])
        self.assertEqual('raw', image['disk_format'])
        self.assertEqual('bare', image['container_format'])
        self.assertEqual('virtio-scsi', image.get('hw_scsi_model'))
        self.assertEqual('scsi', image.get('hw_disk_bus'))
        self.assertEqual(sample.size, image['size'])
        self.check_image_data(image_id, sample.sha256, sample.size)
