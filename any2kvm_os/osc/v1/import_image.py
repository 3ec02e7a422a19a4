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

"""``openstack any2kvm import``: a VM's disks into Glance (or files)."""

from osc_lib.cli import parseractions
from osc_lib.command import command

from any2kvm_os.osc.v1 import common


class ImportImage(command.ShowOne):
    _description = 'Import the disks of a VM as raw Glance images'
    _epilog = (
        'LOCATION is a disk file with its snapshot chain (VHD, VHDX, VMDK, '
        'qcow2), an OVA, a XenServer tgz or an XVA export.  Each disk '
        'becomes a raw image with the properties KVM needs (derived from '
        'the VM unless --no-default-properties; --property overrides '
        'them); with several disks, the first is NAME and the others '
        'NAME-diskN.  The upload is synchronous: the images are active, '
        'and their digests checked, when the command returns; on failure '
        'the images made are deleted.')

    def get_parser(self, prog_name):
        parser = super(ImportImage, self).get_parser(prog_name)
        from any2kvm_os import arguments
        from any2kvm_os.targets import base as targets
        common.add_config_file(parser)
        arguments.add_import_arguments(
            parser, source_choices=common.source_names(),
            target_choices=sorted(targets.plugins()),
            property_action=parseractions.KeyValueAction)
        return parser

    def take_action(self, parsed_args):
        from any2kvm_os import api

        def cloud():
            client = self.app.client_manager.any2kvm
            return client.session, client.region_name, client.interface

        with common.errors():
            limits = api.load_limits(parsed_args.config_file)
            results = api.run_import(parsed_args, limits, cloud,
                                     self.app.stderr)
        summary = api.import_summary(parsed_args.target, results)
        return common.show(summary, order=tuple(summary), formatters={
            'disks': common.ImportDisksColumn,
            'server': common.ServerColumn})
