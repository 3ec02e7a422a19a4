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

"""The one orchestrator: a source plugin, a target plugin, and the VM."""

from any2kvm_os.sources import base as sources
from any2kvm_os.targets import base as targets


def import_vm(location, target, name, limits, source_name=None,
              props=None, disk=None, session=None, progress=None,
              target_options=None):
    """Open ``location`` and write its disks to ``target`` (a name of the
    ``any2kvm_os.targets`` namespace).  Returns (vm facts, results)."""
    source = sources.open_location(location, limits, source_name,
                                   session=session)
    try:
        cls = targets.plugins().get(target)
        if cls is None:
            targets.get(target)  # raises the "unknown target" error
        plugin = cls(session=session, **(target_options or {}))
        return source.facts, plugin.write(source, name, props, disk=disk,
                                          progress=progress)
    finally:
        source.close()
