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

"""``python -m tests.lib.migcli ARGS``: the ``any2kvm`` command with the
test store's ``jsonfile://`` scheme registered (the SQL store is written
elsewhere, at the same time).  Test code only."""

import sys

from tests.lib import migstore

if __name__ == '__main__':
    migstore.register()
    from any2kvm_os.cmd import any2kvm
    sys.exit(any2kvm.main())
