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

"""The options of the Cinder hook (:mod:`any2kvm_os.cinder.driver`).

They are set in a backend's section of cinder.conf (or in
``[backend_defaults]``).  This module imports neither Cinder nor the
driver, so that the options can be listed where Cinder is not installed.
"""

from oslo_config import cfg
from oslo_config import types

from any2kvm_os.containers import registry

#: The kinds of Glance image the hook can take over: the ``glance_kinds``
#: of the container plugins.
KINDS = tuple(sorted(registry.glance_kinds()))

OPTIONS = [
    cfg.StrOpt('any2kvm_wrapped_driver',
               help='The volume driver this backend really uses (the value '
                    'volume_driver had before the hook), e.g. '
                    'cinder.volume.drivers.nfs.NfsDriver. Required when '
                    'volume_driver is any2kvm_os.cinder.driver.'
                    'Any2KvmDriver.'),
    cfg.BoolOpt('any2kvm_enabled', default=True,
                help='Convert recognised images when a volume is created '
                     'from an image. False hands every image to the '
                     'wrapped driver, as if the hook were not there.'),
    cfg.ListOpt('any2kvm_kinds', default=list(KINDS),
                item_type=types.String(choices=KINDS),
                help='Which kinds of Glance image the hook converts: '
                     'xenserver-tgz (container_format ovf holding a '
                     'XenServer VHD chain, tar or tgz), xva (container_'
                     'format ovf holding an XVA), ova (container_format '
                     'ova), vhd, vhdx, vmdk (container_format bare). Other '
                     'images go to the wrapped driver.'),
]


def list_opts():
    # Cinder lists driver options under backend_defaults; each backend
    # section may set them too.
    return [('backend_defaults', OPTIONS)]
