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

"""``openstack any2kvm inspect`` run in this process: the command's own
parser and ``take_action``, as the OpenStack client calls them (no
cloud: the command needs none)."""

from unittest import mock


def inspect(*argv):
    """{field: value} that ``openstack any2kvm inspect ARGV`` shows
    (a formatted column as its ``-f json`` data)."""
    from any2kvm_os.osc.v1 import inspect as osc_inspect
    cmd = osc_inspect.Inspect(mock.Mock(), None)
    parser = cmd.get_parser('openstack any2kvm inspect')
    columns, data = cmd.take_action(parser.parse_args(
        [str(a) for a in argv]))
    return {c: (v.machine_readable() if hasattr(v, 'machine_readable')
                else v) for c, v in zip(columns, data)}
