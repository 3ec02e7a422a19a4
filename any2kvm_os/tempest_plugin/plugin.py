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

"""The entry point tempest finds in the ``tempest.test_plugins`` group."""

import os

from tempest import config
from tempest.test_discover import plugins

from any2kvm_os.tempest_plugin import config as any2kvm_config


class Any2KvmTempestPlugin(plugins.TempestPlugin):

    def load_tests(self):
        """(directory of the tests, top-level directory for discovery):
        the test ids are then ``any2kvm_os.tempest_plugin.tests...``."""
        here = os.path.dirname(os.path.abspath(__file__))
        top = os.path.dirname(os.path.dirname(here))
        return here, top

    def register_opts(self, conf):
        conf.register_opt(any2kvm_config.service_option,
                          group='service_available')
        config.register_opt_group(conf, any2kvm_config.feature_group,
                                  any2kvm_config.feature_opts)
        config.register_opt_group(conf, any2kvm_config.samples_group,
                                  any2kvm_config.samples_opts)

    def get_opt_lists(self):
        return [
            ('service_available', [any2kvm_config.service_option]),
            (any2kvm_config.feature_group.name, any2kvm_config.feature_opts),
            (any2kvm_config.samples_group.name, any2kvm_config.samples_opts),
        ]

    def get_service_clients(self):
        # Only the stock Image and Block Storage clients are used.
        return []
