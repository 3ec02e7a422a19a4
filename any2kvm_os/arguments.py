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

"""The arguments of ``import``, the same in both command lines.

``any2kvm import`` and ``openstack any2kvm import`` add them to their
parsers with :func:`add_import_arguments`: the general ones, then the
options each target plugin declares (:attr:`any2kvm_os.targets.base.
Target.arguments`), and pass the parsed result to
:func:`any2kvm_os.api.run_import`.
"""

import argparse


def parse_property(text):
    """argparse type of ``--property KEY=VALUE``."""
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            "expected KEY=VALUE, got %r" % text)
    return key, value


def add_import_arguments(parser, source_choices=None, target_choices=None,
                         property_action=None):
    """The arguments of ``import``.  ``--property`` is appended as (key,
    value) pairs, or given to ``property_action`` (OSC's KeyValueAction:
    a dict)."""
    from any2kvm_os.ssh import options as ssh_options
    from any2kvm_os.targets import base as targets
    parser.add_argument('location', metavar='LOCATION',
                        help='where the VM or disk is: a disk file (parents '
                             'beside it), an OVA, a XenServer tgz or XVA, '
                             'or a running VM: xenserver://USER@HOST/VM')
    parser.add_argument('--name', required=True, metavar='NAME',
                        help='name of the image (of the first disk; the '
                             'others are NAME-diskN)')
    parser.add_argument('--source', dest='source_name',
                        metavar=None if source_choices else 'SOURCE',
                        choices=source_choices,
                        help='kind of LOCATION, a source plugin ("openstack '
                             'any2kvm source list" lists them); default: '
                             'detected by content')
    parser.add_argument('--target', default='glance',
                        metavar=None if target_choices else 'TARGET',
                        choices=target_choices,
                        help='where the disks go: %s; default: glance' % (
                            ', '.join('%s (%s)' % (name, cls.description)
                                      for name, cls in sorted(
                                          targets.plugins().items()))))
    parser.add_argument('--disk', type=int, metavar='N',
                        help='import only disk N of a multi-disk source, '
                             'counted from 0')
    if property_action is None:
        kwargs = {'action': 'append', 'type': parse_property}
    else:
        kwargs = {'action': property_action}
    parser.add_argument('--property', dest='properties', metavar='KEY=VALUE',
                        help='image property to set (repeat for several); '
                             'overrides the ones derived from the VM',
                        **kwargs)
    parser.add_argument('--progress', action='store_true',
                        help='show progress on stderr')
    parser.add_argument('--wait', action='store_true',
                        help='wait until the image or volume is usable (a '
                             'Glance upload is always waited for)')
    add_inspect_arguments(parser, fix=True)
    ssh_options.add_arguments(parser)
    from any2kvm_os.containers.ova import signature
    signature.add_arguments(parser)
    group = parser.add_argument_group(
        'target options', 'Options of one target or some: giving one to '
        'another target is an error.')
    for arg, _names in targets.all_arguments():
        group.add_argument(arg.flag, **arg.kwargs)
    return parser


def add_inspect_arguments(parser, fix=False):
    """``--inspect``/``--no-inspect`` (dest ``inspect``: True, False or
    None, the default: on unless ANY2KVM_INSPECT=0) and, with ``fix``,
    ``--fix``."""
    group = parser.add_argument_group(
        'guest inspection', 'Look inside the converted disks with '
        'libguestfs (on by default; ANY2KVM_INSPECT=0 turns the default '
        'off): the OS, its drivers and disk names decide the image '
        'properties (hw_disk_bus, hw_vif_model, os_*).')
    group.add_argument('--inspect', dest='inspect', action='store_true',
                       default=None,
                       help='inspect, and fail if inspection fails')
    group.add_argument('--no-inspect', dest='inspect',
                       action='store_false',
                       help='do not look inside the disks')
    if fix:
        group.add_argument('--fix', action='store_true',
                           help='fix what would stop a Linux guest booting '
                                'on KVM, in the converted copy only: '
                                'xvd/hd names in fstab, crypttab and the '
                                'bootloader become UUID=, Xen consoles are '
                                'dropped; all or nothing')
    return group
