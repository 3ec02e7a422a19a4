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

"""The plugin's tempest.conf options.

``[service_available] any2kvm`` switches the whole plugin on;
``[any2kvm-feature-enabled]`` says which parts of any2kvm_os the cloud
under test has; ``[any2kvm-samples]`` names the sample images the tests
convert and the raw disks they must become.
"""

from oslo_config import cfg

service_option = cfg.BoolOpt(
    'any2kvm', default=False,
    help='Whether any2kvm_os is installed in the cloud under test. Every '
         'test of the any2kvm_os tempest plugin is skipped unless it is.')

feature_group = cfg.OptGroup(
    name='any2kvm-feature-enabled',
    title='Parts of any2kvm_os the cloud under test has')

feature_opts = [
    cfg.BoolOpt('cinder_hook', default=False,
                help='Whether the any2kvm_os Cinder hook is enabled for the '
                     'backend of the volume type the tests use (volume_type '
                     'below, or the default type): "openstack volume create '
                     '--image" then converts VHD, OVA and XenServer tgz '
                     'images.'),
    cfg.BoolOpt('osc_import', default=True,
                help='Whether the "openstack any2kvm import" command is '
                     'installed where tempest runs (the "openstack" next to '
                     'tempest\'s Python, or else on PATH).'),
    cfg.StrOpt('volume_type', default=None,
               help='Volume type whose backend has the Cinder hook; unset '
                    'means the default volume type.'),
]

samples_group = cfg.OptGroup(
    name='any2kvm-samples',
    title='Sample images for the any2kvm_os tests',
    help='Each sample is a file on the machine tempest runs on, with the '
         'SHA-256 and the size in bytes of the raw disk it converts to. A '
         'test whose sample is not configured is skipped.')

SAMPLES = ('xenserver_tgz', 'ova', 'vhd')

_SAMPLE_HELP = {
    'xenserver_tgz': 'a XenServer VDI export: a tgz of a VHD chain, 0.vhd '
                     'the leaf',
    'ova': 'an OVA with one disk (a streamOptimized VMDK)',
    'vhd': 'a single dynamic VHD (no parent)',
}


def _sample_opts(name):
    what = _SAMPLE_HELP[name]
    return [
        cfg.StrOpt(name, default=None,
                   help='Path of the sample image: %s.' % what),
        cfg.StrOpt('%s_sha256' % name, default=None,
                   help='SHA-256 (hex) of the raw disk the %s sample '
                        'converts to.' % name),
        cfg.IntOpt('%s_size' % name, default=None, min=1,
                   help='Size in bytes of the raw disk the %s sample '
                        'converts to.' % name),
    ]


samples_opts = [opt for name in SAMPLES for opt in _sample_opts(name)] + [
    cfg.IntOpt('volume_size', default=1, min=1,
               help='Size in GiB of the volumes created from the samples '
                    '(made larger when a sample\'s raw disk needs it).'),
]

samples_opts += [
    cfg.StrOpt('boot_guest_xenserver_tgz', default=None,
               help='Path of a bootable guest as a XenServer VDI export (a '
                    'tgz of 0.vhd ..) whose boot prints a line matching '
                    'boot_guest_console on its serial console. The '
                    'scenario test boots it from a volume the Cinder hook '
                    'makes; it is skipped when this is not set.'),
    cfg.StrOpt('boot_guest_console', default=None,
               help='Regular expression the console log '
                    '(os-getConsoleOutput) of the booted guest must match.'),
    cfg.StrOpt('boot_guest_flavor', default=None,
               help='Flavor (id) of the scenario\'s server; unset means '
                    '[compute] flavor_ref.'),
]
