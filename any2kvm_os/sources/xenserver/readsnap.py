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

"""The snapshot a whole read (``convert``, ``import``) of a running VM
reads its disks from.

Read while the guest runs, a disk changes under the reader: the copy could
hold blocks of different moments, which the guest never wrote together.
So :class:`ReadSnapshot` takes ``xe vm-snapshot`` (labelled
:data:`~.snapshots.READ_LABEL` with this process's tag), and the disks are
read from the snapshot's VDIs, which are frozen: each disk as it was when
xapi snapshotted it (crash-consistent; xapi snapshots a VM's disks one
after another, so two disks are not of the same instant).  On an LVM SR
no VM has those VDIs attached: each is attached read-only to dom0 while
it is read (``plugin._open_lvm_disk``).

The snapshot is removed once the disks are closed (:meth:`ReadSnapshot.
remove`, :func:`remove`): the dom0 VBDs a killed read of this conversion
host left on its VDIs are released first, and a VDI another VBD still has
attached keeps the snapshot, with a warning that names it (xe's
``snapshot-uninstall`` destroys the snapshot record first and then each
VDI: a VDI in use would be left with no snapshot to find it by).  A
snapshot a killed read left is removed by the next whole read of the VM
(:func:`clean_left`).
"""

import logging

from any2kvm_os import exception
from any2kvm_os import processes
from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import lvm
from any2kvm_os.sources.xenserver import snapshots
from any2kvm_os.sources.xenserver import xe

LOG = logging.getLogger(__name__)


def _queries(conn):
    def run(argv):
        # Queries change nothing: repeated after a drop.
        return conn.check_run(argv, idempotent=True).stdout
    return run


def remove(conn, vm_uuid, snap, dom0):
    """Remove snapshot ``snap`` of VM ``vm_uuid`` that a whole read took,
    with its disks; True when it is gone.  The dom0 (``dom0``) VBDs a
    killed read of this conversion host left on its disks are released
    first; while another VBD has one of its disks attached (a live run's,
    another tool's), or when the host refuses, it stays, with a warning
    naming it and the command that removes it."""
    run = _queries(conn)
    command = 'xe snapshot-uninstall snapshot-uuid=%s force=true' % snap
    try:
        held = []
        for _device, vdi in snapshots.snapshot_vdis(run, snap,
                                                    host=conn.label):
            found = lvm.vbds(conn, vdi)
            if dom0 and lvm.release_stale(conn, dom0, vdi, found):
                found = lvm.vbds(conn, vdi)
            held.extend((vdi, v) for v in found if v.attached)
        if held:
            vdi, vbd = held[0]
            LOG.warning('VM %s: snapshot %s, taken to read its disks, is '
                        'kept: its disk %s is attached (VBD %s of VM %s%s); '
                        'once it is detached: %s', vm_uuid, snap, vdi,
                        vbd.uuid, vbd.vm, ', %s' % vbd.tag if vbd.tag
                        else '', command)
            return False
        # Not repeated after a drop: its end would be unknown.
        snapshots.remove_snapshot(lambda argv: conn.check_run(argv), snap)
        return True
    except exception.Any2KvmError as e:
        LOG.warning('VM %s: snapshot %s, taken to read its disks, was not '
                    'removed (%s): %s', vm_uuid, snap,
                    errors.first_line(e, 300), command)
        return False


def clean_left(conn, vm_uuid, dom0):
    """Remove the snapshots of VM ``vm_uuid`` that a whole read by a
    process of this conversion host that is gone left
    (:func:`snapshots.left_read_snapshots`), each with a warning; a
    listing that fails is only warned of."""
    try:
        left = snapshots.left_read_snapshots(_queries(conn), vm_uuid)
    except exception.Any2KvmError as e:
        LOG.warning('VM %s: the snapshots a stopped read may have left were '
                    'not looked for (%s)', vm_uuid, errors.first_line(e, 300))
        return
    for snap in left:
        LOG.warning('VM %s: removing snapshot %s, left by a read that was '
                    'stopped', vm_uuid, snap)
        remove(conn, vm_uuid, snap, dom0)


class ReadSnapshot(object):
    """The snapshot of one whole read of running VM ``found`` (a
    :class:`~.discovery.Discovered`) over ``conn``."""

    def __init__(self, conn, found):
        self.conn, self.found = conn, found
        self.uuid = None
        self.label = snapshots.READ_LABEL % processes.tag()
        disks = found.disks
        self.dom0 = disks[0].control_domain if disks else None

    def take(self):
        """Snapshot the VM; the :class:`~.discovery.DiskInfo` of each of
        its disks as the snapshot's VDI holds it (in the VM's order)."""
        found, conn = self.found, self.conn
        try:
            # Not repeated after a drop: a second snapshot would be made.
            self.uuid = snapshots.snapshot(
                lambda argv: conn.check_run(argv).stdout, found.uuid,
                self.label)
        except BaseException as e:
            # Refused, or cut short (an interrupt, a dropped connection):
            # then it may have been made all the same.
            self._remove_by_label()
            if not isinstance(e, exception.Any2KvmError):
                raise
            raise exception.Any2KvmError(
                'VM %s is %s and could not be snapshotted to read its '
                'disks at one moment (%s): shut it down, or give '
                '--read-in-place to read them as they change'
                % (found.uuid, found.power_state, errors.first_line(e, 300)))
        try:
            run = _queries(conn)

            def run_many(argvs):
                # One round trip, one channel, however many disks.
                return conn.run_many(argvs, idempotent=True)
            vdis = snapshots.vdis_taken_of(
                run, run_many, self.uuid, [d.vdi_uuid for d in found.disks],
                host=conn.label)
            return [d.of_vdi(vdis[d.vdi_uuid]) for d in found.disks]
        except BaseException:
            self.remove()
            raise

    def _remove_by_label(self):
        """A ``vm-snapshot`` whose answer was lost (a dropped connection, a
        timeout: xapi's task goes on) may have made the snapshot: found by
        this process's label and removed."""
        argv = xe.list_command('snapshot', [('snapshot-of', self.found.uuid),
                                            ('name-label', self.label)],
                               ('uuid',), minimal=True)
        try:
            made = xe.parse_minimal(_queries(self.conn)(argv), argv)
        except exception.Any2KvmError as e:
            LOG.warning('VM %s: a snapshot labelled %r may be left on the '
                        'host (%s)', self.found.uuid, self.label,
                        errors.first_line(e, 300))
            return
        for snap in made:
            remove(self.conn, self.found.uuid, snap.lower(), self.dom0)

    def remove(self):
        """Remove the snapshot (after the disks were closed)."""
        snap, self.uuid = self.uuid, None
        if snap is not None:
            remove(self.conn, self.found.uuid, snap, self.dom0)
