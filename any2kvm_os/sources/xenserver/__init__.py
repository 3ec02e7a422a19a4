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

"""Reading VMs straight off a XenServer / XCP-ng host with its ``xe`` CLI.

The client side of discovery, with no transport of its own: every module
takes a *runner*, ``run(argv) -> stdout``, that executes one ``xe``
command on the host (the SSH layer, or a test stand-in) and raises on a
non-zero exit.

``location``
    ``xenserver://USER@HOST[:PORT]/VM`` parsed into a :class:`Location`.
``xe``
    argv lists for ``xe`` commands, and parsers of what ``xe`` prints.
``discovery``
    find the VM, collect its facts (the keys of :class:`any2kvm_os.vm.Vm`
    facts, as the XVA container reports them) and where each disk's VHD
    lives.
``snapshots``
    snapshot, list the snapshot's disks, remove it; shut down, start and
    wait for a power state.
``errors``
    the exceptions, all :class:`any2kvm_os.exception.Any2KvmError`.
"""
