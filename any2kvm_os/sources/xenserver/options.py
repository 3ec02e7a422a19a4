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

"""The options of the ``xenserver`` source (no SSH library imported: the
option list is gathered at every start-up)."""

from any2kvm_os import lazyopts
from any2kvm_os.sources.xenserver import discovery


def _options():
    from oslo_config import cfg
    return [
        cfg.StrOpt('xenserver_sr_mount',
                   default=discovery.DEFAULT_MOUNT_BASE,
                   help='Where the file SRs (ext, nfs) of a XenServer host '
                        'are mounted: <this>/<sr-uuid>/<vdi-uuid>.vhd.  '
                        'XenServer and XCP-ng mount them under '
                        '/run/sr-mount.'),
        cfg.StrOpt('xenserver_lvm_dev',
                   default=discovery.DEFAULT_LVM_DEV,
                   help='Where the device nodes of the logical volumes of '
                        'a XenServer host\'s LVM SRs (lvm, lvmoiscsi, '
                        'lvmohba) are: <this>/VG_XenStorage-<sr-uuid>/'
                        'VHD-<vdi-uuid>.  XenServer and XCP-ng have them '
                        'under /dev.'),
        cfg.StrOpt('xenserver_inventory',
                   default=discovery.DEFAULT_INVENTORY,
                   help='The inventory file of a XenServer host, whose '
                        'INSTALLATION_UUID names the host connected to: '
                        'each disk\'s SR must be attached (its PBD plugged) '
                        'on that host.  Empty: not checked.'),
    ]


#: ``OPTIONS`` (oslo.config options), made on first use: a command that
#: reads no configuration does not import oslo.config.
__getattr__ = lazyopts.module_getattr(globals(), _options)
