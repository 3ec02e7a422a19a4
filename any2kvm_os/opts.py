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

"""Every option of any2kvm_os, gathered for oslo-config-generator.

Each module owns its options (``OPTIONS``): the limits
(:mod:`any2kvm_os.limits`), the scratch space (:mod:`any2kvm_os.scratch`),
the SSH connections (:mod:`any2kvm_os.ssh.options`) and the Cinder hook
(:mod:`any2kvm_os.cinder.options`).  This module only gathers them
(:func:`list_opts`, the ``oslo.config.opts`` entry point); it imports no
driver.  :func:`any2kvm_os.api.register_opts` registers
those of a conversion.
"""

import copy

from any2kvm_os import api
from any2kvm_os.cinder import options as cinder_options
from any2kvm_os import limits

GROUP = limits.GROUP


def list_opts():
    return [(GROUP, copy.deepcopy(api.conversion_options()))] + [
        (group, copy.deepcopy(options))
        for group, options in cinder_options.list_opts()]
