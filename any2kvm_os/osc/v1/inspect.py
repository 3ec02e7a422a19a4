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

"""``openstack any2kvm inspect``: what an import of LOCATION would write.
"""

from osc_lib.command import command

from any2kvm_os.osc.v1 import common

#: The keys of ``any2kvm info --format json``, in display order.
FIELDS = ('source', 'container', 'vm', 'format', 'virtual_size', 'chain',
          'disks', 'guest', 'properties', 'reasons', 'warnings')


class Inspect(command.ShowOne):
    _description = 'Show what an import of LOCATION would write'
    _epilog = (
        'Nothing is written and no cloud is needed.  Shows the VM facts '
        'and, per disk, its format, virtual size and snapshot chain (leaf '
        'first: name, id, parent): the data of "any2kvm info --format '
        'json".')

    # Local: no cloud is needed.
    auth_required = False

    def get_parser(self, prog_name):
        parser = super(Inspect, self).get_parser(prog_name)
        common.add_config_file(parser)
        parser.add_argument('location', metavar='LOCATION',
                            help='a disk file (parents beside it), an OVA, '
                                 'a XenServer tgz or XVA')
        parser.add_argument('--source', dest='source_name',
                            choices=common.source_names(),
                            help='kind of LOCATION (see "openstack any2kvm '
                                 'source list"); default: detected by '
                                 'content')
        parser.add_argument('--inspect', action='store_true',
                            help='look inside the disks (libguestfs): the '
                                 'guest, its drivers, and the image '
                                 'properties an import would set')
        from any2kvm_os.ssh import options as ssh_options
        ssh_options.add_arguments(parser)
        from any2kvm_os.containers.ova import signature
        signature.add_arguments(parser)
        return parser

    def take_action(self, parsed_args):
        from any2kvm_os import api

        with common.errors():
            limits = api.load_limits(parsed_args.config_file)
            info = api.inspect_location(parsed_args.location, limits,
                                        parsed_args.source_name,
                                        args=parsed_args,
                                        guest=parsed_args.inspect)
        return common.show(info, order=FIELDS, formatters={
            'chain': common.ChainColumn,
            'disks': common.InspectDisksColumn})
