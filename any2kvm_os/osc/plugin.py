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

"""The ``openstack any2kvm`` commands: the OpenStackClient plugin.

OSC finds this module through the ``openstack.cli.extension`` entry point
and the commands through ``openstack.any2kvm.v1``.  any2kvm_os has no API
service of its own: the "client" is OSC's keystoneauth session with the
region and interface chosen, handed to the target plugins (Glance,
Cinder).
"""

import logging
import os

LOG = logging.getLogger(__name__)

API_NAME = 'any2kvm'
API_VERSION_OPTION = 'os_any2kvm_api_version'
DEFAULT_API_VERSION = '1'
API_VERSIONS = {
    '1': 'any2kvm_os.osc.plugin.Any2KvmClient',
}


class Any2KvmClient(object):
    """What the commands need of OSC's ClientManager: an authenticated
    keystoneauth1 session, the region and the interface."""

    def __init__(self, session, region_name=None, interface=None,
                 api_version=DEFAULT_API_VERSION):
        self.session = session
        self.region_name = region_name
        self.interface = interface
        self.api_version = api_version


def make_client(instance):
    """The any2kvm client of an OSC ClientManager."""
    version = instance._api_version.get(API_NAME, DEFAULT_API_VERSION)
    if version not in API_VERSIONS:
        raise ValueError('any2kvm API version %s is not supported (%s)' % (
            version, ', '.join(sorted(API_VERSIONS))))
    LOG.debug('Instantiating any2kvm client, API version %s', version)
    return Any2KvmClient(session=instance.session,
                         region_name=instance.region_name,
                         interface=instance.interface,
                         api_version=version)


def build_option_parser(parser):
    """The global options of the plugin."""
    parser.add_argument(
        '--os-any2kvm-api-version',
        metavar='<any2kvm-api-version>',
        default=os.environ.get('OS_ANY2KVM_API_VERSION',
                               DEFAULT_API_VERSION),
        help='any2kvm command set version, default=%s (Env: '
             'OS_ANY2KVM_API_VERSION)' % DEFAULT_API_VERSION)
    return parser
