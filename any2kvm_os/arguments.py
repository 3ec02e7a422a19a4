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
    add_fix_snapshot_argument(add_inspect_arguments(parser, fix=True))
    add_read_in_place_argument(parser)
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
    group = _inspect_group(
        parser, 'Look inside the converted disks with libguestfs (on by '
        'default; ANY2KVM_INSPECT=0 turns the default off): the OS, its '
        'drivers and disk names decide the image properties (hw_disk_bus, '
        'hw_vif_model, os_*).', 'disks')
    if fix:
        group.add_argument('--fix', action='store_true',
                           help='fix what would stop a Linux guest booting '
                                'on KVM, in the converted copy only: '
                                'xvd/hd names in fstab, crypttab and the '
                                'bootloader become UUID=, Xen consoles are '
                                'dropped; a boot without virtio drivers is '
                                'handed to virt-v2v-in-place when installed '
                                '([any2kvm] virt_v2v); all or nothing')
    return group


def _inspect_group(parser, description, what):
    """The "guest inspection" argument group with ``--inspect`` and
    ``--no-inspect`` (dest ``inspect``: True, False or None, the
    default); ``what``: what --no-inspect does not look inside."""
    group = parser.add_argument_group('guest inspection', description)
    group.add_argument('--inspect', dest='inspect', action='store_true',
                       default=None,
                       help='inspect, and fail if inspection fails')
    group.add_argument('--no-inspect', dest='inspect',
                       action='store_false',
                       help='do not look inside the %s' % what)
    return group


#: The actions of ``migration``, in the order the help lists them.
MIGRATION_ACTIONS = ('create', 'sync', 'cutover', 'verify', 'rollback',
                     'abort', 'show', 'list')
#: The actions that may need the cloud (a Cinder migration).
MIGRATION_CLOUD_ACTIONS = ('create', 'sync', 'cutover', 'verify',
                           'rollback', 'abort')


def add_migration_arguments(parser, action, with_format=True,
                            with_cloud=True, with_server=True):
    """The arguments of ``migration ACTION``, the same in both command
    lines.  ``with_format``: ``--format text|json`` on show, list,
    cutover and verify (OSC has its own ``-f``); ``with_cloud``:
    ``--os-cloud`` on the actions that may need a cloud (OSC has its
    own); ``with_server``:
    the server options of ``cutover`` (they import the server library:
    left out when another command is parsed, for start-up time)."""
    import os

    from any2kvm_os.migration.state import options as state_options
    from any2kvm_os.ssh import options as ssh_options
    state_options.add_arguments(parser)
    if action != 'list':
        parser.add_argument('name', metavar='NAME',
                            help='name of the migration')
    if action == 'create':
        parser.add_argument('location', metavar='LOCATION',
                            help='xenserver://USER@HOST[:PORT]/VM')
        parser.add_argument('--target', default='file',
                            choices=('file', 'cinder'),
                            help='raw files (or block devices, '
                                 '--device) on this host (file, the '
                                 'default) or a Cinder volume per disk '
                                 '(cinder)')
        parser.add_argument('--output-dir', metavar='DIR',
                            help='directory of the raw files (--target '
                                 'file; default: the current directory)')
        parser.add_argument('--device', dest='devices', metavar='PATH',
                            action='append',
                            help='an existing block device to write a '
                                 'disk onto, in place, instead of a raw '
                                 'file (--target file; one per disk, in '
                                 'disk order: repeat for several; must be '
                                 'at least the disk\'s size, not in use)')
        parser.add_argument('--device-is-zeroed', action='store_true',
                            help='the --device targets read as zeros '
                                 'already (a new thin LV): the first sync '
                                 'does not zero what the VM holds no data '
                                 'in')
        parser.add_argument('--volume-type', metavar='TYPE',
                            help='volume type of the volumes (--target '
                                 'cinder; default: the cloud\'s default)')
        parser.add_argument('--brick-mount-point-base', metavar='DIR',
                            help='where os-brick finds or mounts NFS and '
                                 'other shares when attaching the volumes '
                                 '(--target cinder)')
        parser.add_argument('--property', dest='properties',
                            metavar='KEY=VALUE', action='append',
                            type=parse_property,
                            help='image metadata to set on the volumes at '
                                 'cutover, over what any2kvm chose from '
                                 'the VM and its guest (--target cinder; '
                                 'repeat for several)')
    if action == 'cutover':
        parser.add_argument('--force', action='store_true',
                            help='stop the VM hard if it does not shut down '
                                 'cleanly within --timeout')
        parser.add_argument('--timeout', type=float, default=600,
                            metavar='S', help='seconds to wait for the '
                            'clean shutdown (600)')
    if action == 'cutover' and with_server:
        from any2kvm_os.targets import server as server_mod
        group = parser.add_argument_group(
            'server', 'A Nova server booted from the volumes at cutover '
            '(a migration with --target cinder); the downtime then ends '
            'when its boot is verified, and rollback deletes it.')
        server_mod.add_arguments(group)
    if action == 'abort':
        parser.add_argument('--delete-targets', action='store_true',
                            help='delete the raw files or volumes too '
                                 '(kept by default; block devices are '
                                 'always kept, never wiped)')
    if action in ('sync', 'cutover', 'verify'):
        parser.add_argument('--no-progress', dest='progress',
                            action='store_false', default=True,
                            help='no progress on stderr (by default a bar '
                                 'per layer on a terminal, a line per 10%% '
                                 'otherwise)')
    if action in MIGRATION_CLOUD_ACTIONS:
        ssh_options.add_arguments(parser)
        if with_cloud:
            parser.add_argument(
                '--os-cloud', metavar='CLOUD',
                default=os.environ.get('OS_CLOUD') or None,
                help='the cloud of clouds.yaml (a Cinder migration; '
                     'default: OS_CLOUD, else the OS_* variables)')
    if action in ('sync', 'cutover'):
        add_migration_inspect_arguments(parser, action)
    if with_format and action in ('show', 'list', 'cutover', 'verify'):
        parser.add_argument('--format', choices=('text', 'json'),
                            default='text',
                            help='text for people (default), or one JSON '
                                 'document for scripts')


def add_read_in_place_argument(parser):
    """``--read-in-place``: a running VM's disks (``xenserver://``) read
    as they change, not from a snapshot the command takes (see
    :meth:`any2kvm_os.sources.xenserver.plugin.XenServerSource.open`)."""
    parser.add_argument(
        '--read-in-place', action='store_true',
        help='a running XenServer VM: read its disks in place, as they '
             'change (consistent only if the guest writes nothing '
             'meanwhile), not from a snapshot this command takes and '
             'removes (crash-consistent; the default)')


def add_fix_snapshot_argument(group):
    """``--keep-fix-snapshot``: keep the Cinder snapshot ``--fix`` takes
    of a volume before fixing it."""
    group.add_argument('--keep-fix-snapshot', action='store_true',
                       help='keep the Cinder snapshot --fix takes of each '
                            'volume before fixing it (deleted once the fix '
                            'succeeded, by default; a failed fix is '
                            'reverted to it either way)')


def add_migration_inspect_arguments(parser, action):
    """``migration sync``: ``--inspect``/``--no-inspect`` (the synced
    targets are inspected after the sync, outside the downtime);
    ``migration cutover``: the same and ``--fix`` (inside the downtime,
    after the last layers) and ``--keep-fix-snapshot``."""
    group = _inspect_group(
        parser, 'Look inside the synced targets with libguestfs (sync; on '
        'by default, ANY2KVM_INSPECT=0 turns the default off): the guest '
        'facts and image properties are recorded in the state database '
        'and set at cutover.', 'targets')
    if action == 'cutover':
        group.add_argument('--fix', action='store_true',
                           help='after the last layers (inside the '
                                'downtime) fix what would stop the guest '
                                'booting on KVM, on the targets: xvd/hd '
                                'names become UUID=, Xen consoles are '
                                'dropped, Citrix PV drivers are disabled '
                                'in a Windows SYSTEM hive (their class '
                                'filters removed), a boot without '
                                'virtio drivers is handed to '
                                'virt-v2v-in-place when installed; all or '
                                'nothing (a Cinder volume is reverted to a '
                                'snapshot taken first)')
        add_fix_snapshot_argument(group)
    return group
