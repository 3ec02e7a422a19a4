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

"""The ``xenserver`` source: a VM on a XenServer/XCP-ng host, over SSH.

``xenserver://USER@HOST[:PORT]/VM`` (VM: the name-label or the uuid).  The
host is reached with the one SSH layer (:mod:`any2kvm_os.ssh`: host keys
verified, never accepted on first sight), the VM found and described with
``xe`` (:mod:`.discovery`), and each disk's VHD chain read in place in its
SR directory over SFTP (:class:`~any2kvm_os.containers.remote.
RemoteDirectoryContainer`): only the blocks the VHD tables say are
allocated cross the wire.  File SRs (``ext``, ``nfs`` ...) are read in
their directory, LVM SRs (``lvm``, ``lvmoiscsi``, ``lvmohba``) in their
volume group's LVs (:mod:`.lvm`); any other SR is refused by name
(:mod:`.discovery`).
"""

import logging
import posixpath

from any2kvm_os.chain import layer_chain
from any2kvm_os import exception
from any2kvm_os.containers import remote
from any2kvm_os.sources import base
from any2kvm_os.sources.xenserver import discovery
from any2kvm_os.sources.xenserver import location as location_mod
from any2kvm_os.sources.xenserver import lvm
from any2kvm_os.sources.xenserver import readsnap
from any2kvm_os.ssh import connection as ssh_connection
from any2kvm_os.ssh import options as ssh_options
from any2kvm_os import vm as vm_mod

LOG = logging.getLogger(__name__)

#: What :attr:`any2kvm_os.vm.Vm.container` says of a VM read this way.
CONTAINER = 'xenserver-sr'

#: Power states in which a VM's disks may change while they are read: a
#: whole read (:attr:`~any2kvm_os.sources.base.Source.whole`) reads a
#: snapshot of it instead (:mod:`.readsnap`).
RUNNING = ('running', 'paused')


class XenServerSource(base.Source):
    name = 'xenserver'
    description = 'a VM on a XenServer/XCP-ng host, over SSH: ' \
        'xenserver://USER@HOST[:PORT]/VM (name-label or uuid)'
    schemes = ('xenserver',)

    def _conf(self, name, default):
        conf = getattr(self.limits, 'conf', None)
        if conf is None:
            return default
        from oslo_config import cfg  # a conf: oslo.config is loaded
        try:
            return getattr(conf.any2kvm, name)
        except (AttributeError, cfg.NoSuchOptError):
            return default

    def connect(self, loc):
        """An SSH connection to the host of ``loc``, with the SSH options
        given (``--identity-file``, ``--known-hosts``, ``--host-key``,
        ``--password-env``) and the ``ssh_*`` settings."""
        host = ssh_options.HostOptions(
            loc.host, user=loc.user, port=loc.port,
            **ssh_options.from_args(
                self.args, self._conf('ssh_jump_host', None)))
        conf = getattr(self.limits, 'conf', None)
        settings = ssh_options.Settings.from_conf(conf) if conf is not None \
            else None
        conn = ssh_connection.Connection(host, settings)
        conn.connect()
        return conn

    def open(self, location):
        loc = location_mod.parse(location)
        conn = self.connect(loc)
        try:
            def run(argv):
                # xe queries change nothing: repeated after a drop.
                return conn.check_run(argv, idempotent=True).stdout
            found = discovery.discover(
                run, loc.vm, host=loc.host_for_display,
                mount_base=self._conf('xenserver_sr_mount',
                                      discovery.DEFAULT_MOUNT_BASE),
                inventory=self.inventory(), lvm_dev=self.lvm_dev())
            infos, reading = found.disks, None
            notes = list(found.notes)
            if self.whole and found.disks:
                infos, reading = self._whole_read(conn, found, notes)
            disks = []

            def remove():
                if reading is not None:
                    reading.remove()
            try:
                for info, own in zip(infos, found.disks):
                    disk = self.open_disk(conn, info)
                    disks.append(disk)
                    # The VM's disk, whichever VDI holds it.
                    disk.disk_id = own.vdi_uuid
            except BaseException:
                try:
                    for disk in disks:
                        disk.close()
                finally:
                    remove()
                raise
            vm = vm_mod.Vm(location, CONTAINER, disks, facts=found.facts,
                           notes=notes, closer=conn.close)
            # After the disks (their dom0 attachments), before the
            # connection.
            vm.on_close(remove)
            vm.wire_counter = conn
            vm.live = reading is None and found.power_state in RUNNING
            return vm
        except BaseException:
            conn.close()
            raise

    def _whole_read(self, conn, found, notes):
        """Before a whole read (:attr:`~any2kvm_os.sources.base.Source.
        whole`) of VM ``found``: the snapshots a stopped read left are
        removed (:func:`.readsnap.clean_left`), and a VM that runs is read
        from a snapshot (unless ``--read-in-place``); a note and a
        warning say which.  Returns (the :class:`~.discovery.DiskInfo` of
        each disk to read, the :class:`~.readsnap.ReadSnapshot` or
        None)."""
        readsnap.clean_left(conn, found.uuid, found.disks[0].control_domain)
        if found.power_state not in RUNNING:
            return found.disks, None
        if getattr(self.args, 'read_in_place', False):
            notes.append(
                'the VM is %s: its disks are read in place as they change '
                '(--read-in-place): the copy is consistent only if the '
                'guest wrote nothing while it was read' % found.power_state)
            LOG.warning('%s', notes[-1])
            return found.disks, None
        reading = readsnap.ReadSnapshot(conn, found)
        infos = reading.take()
        notes.append(
            'the VM is %s: its disks were read from snapshot %s, taken for '
            'this read and removed after it (each disk crash-consistent, '
            'as after a power cut); for a clean copy shut the guest down '
            'first, or use "any2kvm migration" (minutes of downtime)'
            % (found.power_state, reading.uuid))
        LOG.warning('%s', notes[-1])
        return infos, reading

    def mount_base(self):
        """Where the host's file SRs are mounted (``xenserver_sr_mount``)."""
        return self._conf('xenserver_sr_mount', discovery.DEFAULT_MOUNT_BASE)

    def lvm_dev(self):
        """Where the host's LV device nodes are (``xenserver_lvm_dev``)."""
        return self._conf('xenserver_lvm_dev', discovery.DEFAULT_LVM_DEV)

    def inventory(self):
        """The host's inventory file (``xenserver_inventory``), which
        names the host: each disk's SR must be attached on it."""
        return self._conf('xenserver_inventory',
                          discovery.DEFAULT_INVENTORY)

    def prepare_disk(self, conn, info):
        """Before a moment that counts (a cutover's downtime), what
        :meth:`open_disk` of VDI ``info`` can do before: the SFTP session
        started; for a disk on an LVM SR, whose VM is about to be halted,
        the VBDs a killed run left removed, and its dom0 VBD created
        (:meth:`.lvm.Attachment.create`), to be plugged in the same round
        trip as the volume group's listing (:meth:`open_disk` with
        ``prepared``).  Returns that VBD's :class:`.lvm.Attachment`
        (``unplug(plugged=False)`` destroys it when it goes unused), or
        None."""
        conn.start_files()
        if info.storage != 'lvm' or not info.control_domain:
            return None
        vbds = lvm.vbds(conn, info.vdi_uuid)
        lvm.release_stale(conn, info.control_domain, info.vdi_uuid, vbds)
        attachment = lvm.Attachment(conn, info.control_domain,
                                    info.vdi_uuid)
        attachment.create()
        return attachment

    def open_disk(self, conn, info, prepared=None):
        """The chain of one VDI (a :class:`~discovery.DiskInfo`), read in
        its SR directory over ``conn``: a :class:`~any2kvm_os.vm.ChainDisk`
        to close after use (the migration engine resolves the live chain
        anew at every sync).  ``prepared``: what :meth:`prepare_disk`
        returned for it (its VM halted since); this takes it over."""
        if info.storage == 'lvm':
            return self._open_lvm_disk(conn, info, prepared)
        container = remote.RemoteDirectoryContainer(
            conn, posixpath.dirname(info.path),
            posixpath.basename(info.path), self.limits, label=conn.label)
        # A running VM's tapdisk holds its VDI's VHD open for writing: no
        # footer at its end until it closes it.
        container.live_leaf = True
        try:
            chain = layer_chain.resolve(container, container.leaf_name,
                                        self.limits)
        except BaseException:
            container.close()
            raise
        disk = vm_mod.ChainDisk(
            container.display_name(container.leaf_name), CONTAINER, chain,
            disk_id=info.vdi_uuid, closer=container.close)
        #: Where the chain was resolved: a cutover reads only the leaf
        #: again once the VM is halted (:func:`layer_chain.reopen_leaf`).
        disk.chain_container = container
        return disk

    def _open_lvm_disk(self, conn, info, prepared=None):
        """The chain of a VDI of an LVM SR, read from its volume group's
        LVs (:mod:`.lvm`): in place while its VM runs on this host, else
        (no VM has it attached: halted) attached read-only to dom0 while
        open (:func:`.lvm.read_in_place`); ``prepared``: the dom0 VBD
        :meth:`prepare_disk` created, plugged here."""
        directory, leaf = posixpath.split(info.path)
        argv = lvm.lvs_command(posixpath.basename(directory))

        def volumes():
            return lvm.mark_active(
                lvm.parse_lvs(conn.check_run(argv, idempotent=True).stdout,
                              argv),
                lvm.active_names(conn, directory))
        if prepared is not None:
            attachment, found, flushed = _plug_prepared(conn, prepared,
                                                        argv, info.path)
        else:
            attachment, found, flushed = None, None, ()
            # One listing of the VDI's VBDs: who has it attached, and
            # what a killed run left.
            vbds = lvm.vbds(conn, info.vdi_uuid)
            if info.control_domain:
                # A VBD a killed run left plugged keeps the VM from
                # starting.
                lvm.release_stale(conn, info.control_domain,
                                  info.vdi_uuid, vbds)
            if lvm.read_in_place(conn, info, vbds):
                found = volumes()
                if leaf not in found or not found[leaf].active:
                    raise exception.ChainError(
                        path='%s:%s' % (conn.label, info.path),
                        reason='the VM runs here, but volume group %s '
                        'has no active LV %s' % (
                            posixpath.basename(directory), leaf))
            else:
                if not info.control_domain:
                    raise exception.ChainError(
                        path='%s:%s' % (conn.label, info.path),
                        reason='no running VM has the VDI attached (its '
                        'VM is halted, or it is a snapshot\'s, which a sync '
                        'reads), and the host\'s control domain is unknown '
                        '(its inventory, xenserver_inventory, names no '
                        'CONTROL_DOMAIN_UUID): it cannot be attached to be '
                        'read')
                attachment = lvm.Attachment(conn, info.control_domain,
                                            info.vdi_uuid)
                attachment.plug()
        try:
            if found is None:
                found = volumes()
            container = lvm.LvmContainer(conn, directory, leaf, self.limits,
                                         found, label=conn.label,
                                         flushed=flushed)
        except BaseException:
            if attachment is not None:
                attachment.unplug()
            raise

        kept = []

        def close():
            try:
                container.close()
            finally:
                if attachment is not None and not kept:
                    attachment.unplug()

        def keep_attachment():
            # The caller detaches it later (a cutover: after the downtime).
            kept.append(True)
            return attachment
        try:
            chain = layer_chain.resolve(container, leaf, self.limits)
        except BaseException:
            close()
            raise
        disk = vm_mod.ChainDisk(container.display_name(leaf), CONTAINER,
                                chain, disk_id=info.vdi_uuid, closer=close)
        disk.chain_container = container
        #: Closing then leaves the VDI attached to dom0, and returns its
        #: :class:`.lvm.Attachment` (None when read in place), to unplug.
        disk.keep_attachment = keep_attachment
        return disk


def _plug_prepared(conn, attachment, lvs_argv, leaf_path):
    """The prepared dom0 VBD ``attachment`` plugged, the volume group
    listed and the leaf's page cache dropped, in one round trip (inside
    a cutover's downtime: each command alone costs one).  Returns
    (``attachment``, the listing, the names of the LVs flushed).  When
    the plug fails, the VBD is destroyed; when what follows it fails, it
    is unplugged and destroyed; the error is raised."""
    leaf = posixpath.basename(leaf_path)
    commands = [attachment.plug_command(), lvs_argv,
                lvm.flush_command([leaf_path])]
    try:
        outputs = conn.run_many(commands)
    except exception.RemoteCommandError as e:
        # ``outputs``: those of the commands before the one that failed;
        # a batch whose end was not waited for (``timed_out``) may have
        # plugged it, or go on plugging it in xapi: unplugged first.
        attachment.unplug(plugged=bool(getattr(e, 'outputs', None)) or
                          getattr(e, 'timed_out', False))
        raise
    except BaseException:
        # Whether the plug ran is unknown (a lost connection, an
        # interruption): an unplug is asked for first (when it was not
        # plugged, that one fails, and is logged).
        attachment.unplug()
        raise
    attachment.plugged()
    try:
        found = lvm.mark_active(lvm.parse_lvs(outputs[1], lvs_argv),
                                lvm.active_names(conn, posixpath.dirname(
                                    leaf_path)))
    except BaseException:
        attachment.unplug()
        raise
    return attachment, found, (leaf,)
