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


"""A stand-in for a XenServer host reached over SSH: its ``xe`` command.

Test code only, never shipped.  ``xe`` (an executable Python script) behaves
the way the real ``xe`` CLI is documented to behave, over a state directory:

``$XE_STANDIN_ROOT/state.json``
    the host's objects (VMs, snapshots, VBDs, VDIs, SRs, VIFs, networks,
    the pool's hosts and the SRs' PBDs); ``host`` is the host ``xe`` runs
    on, ``hosts`` every host of the pool;
``$XE_STANDIN_ROOT/state.lock``
    an exclusive ``flock`` held by every ``xe`` run for its whole duration
    (concurrent invocations never interleave their read-modify-write);
``$XE_STANDIN_ROOT/run/sr-mount/<sr-uuid>/<vdi-uuid>.vhd``
    the VHD files of file SRs (``ext``, ``nfs``).  On a real host the path
    is ``/run/sr-mount/<sr-uuid>/<vdi-uuid>.vhd``: a client that reads the
    files needs a configurable mount base to be pointed at
    ``$XE_STANDIN_ROOT/run/sr-mount``.  LVM SRs (``lvm``, ``lvmoiscsi``,
    ``lvmohba``) have no files here; nor do file SRs not attached on this
    host (another host's local SR, unplugged PBDs: their files wait in
    ``off-host/``);
``$XE_STANDIN_ROOT/lvm/VG_XenStorage-<sr-uuid>/<lv>``
    the content of the logical volumes of LVM SRs (SM's LVHD): ``MGT``
    and ``VHD-<vdi-uuid>``, each a VHD whose length is a multiple of
    4 MiB with its footer in the last 512 bytes (see ``lvm.py``);
``$XE_STANDIN_ROOT/dev/VG_XenStorage-<sr-uuid>/<lv>``
    the device node (a symlink to the content) of each ACTIVE LV: the LVs
    of the VHD chains of attached VDIs (running VMs' disks, the control
    domain's plugged VBDs), recomputed after every ``xe`` command that
    changes the state; a client reads LVs under a configurable base
    pointed at ``$XE_STANDIN_ROOT/dev``.  ``state.json``'s ``lv`` holds
    the LVs' attributes (read-only, refcounts), ``host``'s
    ``lv-in-use-at-deactivation`` the deactivations refused because a
    process held the LV open;
``$XE_STANDIN_ROOT/etc/xensource-inventory``
    dom0's inventory (``KEY='value'`` lines; ``INSTALLATION_UUID`` names
    the host ``xe`` runs on), read by the client with ``cat`` at a
    configurable path, like the mount base.

``xe`` imports only the standard library, FATtools and its sibling modules
``state``, ``sr`` and ``lvm``; it never imports ``any2kvm_os``.  ``lvs``
(LVM2's report, over the LVM SRs' volumes) sits beside it and finds the
host the same way.  Tests build hosts
with :mod:`tests.lib.xenserver.host`.
"""
