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

"""``openstack any2kvm source list``: the installed source plugins."""

from osc_lib.command import command


class ListSources(command.Lister):
    _description = 'List the source plugins (kinds of LOCATION)'

    # Local: no cloud is needed.
    auth_required = False

    def take_action(self, parsed_args):
        from any2kvm_os.sources import base as sources
        plugins = sources.plugins()
        return (('Name', 'Description'),
                [(name, plugins[name].description or '')
                 for name in sorted(plugins)])
