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

"""The XenServer host a migration works on, over SSH.

The engine asks a host for four things only, so that its tests can put a
local stand-in in its place: ``run(argv, mutating=False)`` (one ``xe``
command; stdout), ``open_disk(info)`` (the live chain of one VDI, a
:class:`~any2kvm_os.vm.ChainDisk` to close), ``bytes_read`` (bytes that
crossed the wire so far), ``mount_base`` and ``label``; and ``close()``;
optionally ``inventory`` (the path of the host's inventory file: each
disk's SR is then checked to be attached on this host) and
``prepare_disk(info)`` (before a cutover's shutdown, what opening the
disk can do before; passed to ``open_disk(info, prepared=...)``).
"""

from any2kvm_os import exception
from any2kvm_os.sources.xenserver import location as location_mod
from any2kvm_os.sources.xenserver import plugin
from any2kvm_os.ssh import connection


class SshHost(object):
    """One SSH connection to the host of a ``xenserver://`` location."""

    #: None, or what is called (no argument) before every command that
    #: changes the host (``mutating``, an armed command fired, a dom0
    #: attachment made, stale ones released: the command's own
    #: attachments are released whatever happens, so that they never
    #: keep the VM from starting) and raises to stop it: the
    #: migration's :class:`~any2kvm_os.migration.state.api.Fence`, as for
    #: its targets' writes (:attr:`RawWriter.guard
    #: <any2kvm_os.writers.raw.RawWriter.guard>`).
    guard = None

    def _check(self, mutating=True):
        if mutating and self.guard is not None:
            self.guard()

    def __init__(self, location, limits, args=None):
        self.location = location_mod.parse(location)
        self.source = plugin.XenServerSource(limits, args=args)
        self.conn = self.source.connect(self.location)
        self.mount_base = self.source.mount_base()
        self.lvm_dev = self.source.lvm_dev()
        #: The host's inventory file (names the host: SRs attached here).
        self.inventory = self.source.inventory()
        self.label = self.location.host_for_display

    def run(self, argv, mutating=False, timeout=None):
        # Queries are repeated after a dropped connection; commands that
        # change the host (snapshot, shutdown, uninstall) never are.
        self._check(mutating)
        return self.conn.check_run(argv, idempotent=not mutating,
                                   timeout=timeout).stdout

    def run_many(self, commands, mutating=False, timeout=None):
        """Several commands in one round trip (``sh -c``, every word of
        each quoted, ``&&`` between them: the first failure stops the
        rest and is raised); their outputs, in order."""
        self._check(mutating)
        return self.conn.run_many(commands, idempotent=not mutating,
                                  timeout=timeout)

    def run_batches(self, batches, mutating=False, timeout=None):
        """Several batches (as :meth:`run_many` runs each) side by side,
        each on an SSH channel of its own: they take the time of the
        slowest.  For each batch, its outputs, or the
        :class:`~any2kvm_os.exception.Any2KvmError` it failed with (each
        judged on its own); a lost connection is raised for all.  Run
        again after a lost connection only when none is ``mutating``."""
        self._check(mutating)
        scripts = [connection.batch(commands) for commands in batches]
        results = self.conn.run_all([argv for argv, _m in scripts],
                                    idempotent=not mutating, timeout=timeout)
        out = []
        for commands, (_argv, marker), result in zip(batches, scripts,
                                                     results):
            try:
                out.append(connection.batch_outputs(self.label, commands,
                                                    marker, result))
            except exception.Any2KvmError as e:
                out.append(e)
        return out

    def arm(self, argv):
        """``argv`` started, held at a gate: an object with ``ready``,
        ``fire(timeout)`` (its stdout; an error unless it exits 0) and
        ``close()`` (:meth:`~any2kvm_os.ssh.connection.Connection.
        armed`)."""
        return _Armed(self, self.conn.armed(argv))

    def release_stale(self, vdis, kept=None):
        """Remove the dom0 VBDs of ``vdis`` that a killed run of this
        conversion host left plugged (:func:`.lvm.release_stale`);
        nothing without a known control domain.  Returns how many;
        ``kept`` gets the other attached ones this tool tagged."""
        self._check()
        from any2kvm_os.sources.xenserver import discovery
        from any2kvm_os.sources.xenserver import lvm
        if not self.inventory:
            return 0
        _this, dom0 = discovery.host_uuids(self.run, self.inventory)
        if dom0 is None:
            return 0
        return sum(lvm.release_stale(self.conn, dom0, vdi, kept=kept)
                   for vdi in vdis)

    def prepare_disk(self, info):
        """Before a cutover's shutdown: :meth:`.plugin.XenServerSource.
        prepare_disk` (for ``open_disk(info, prepared=...)`` once the VM
        is halted)."""
        self._check()
        return self.source.prepare_disk(self.conn, info)

    def open_disk(self, info, prepared=None):
        self._check()       # an LVM SR's disk is attached to dom0
        return self.source.open_disk(self.conn, info, prepared=prepared)

    @property
    def bytes_read(self):
        return self.conn.bytes_read

    def close(self):
        self.conn.close()


class _Armed(object):
    def __init__(self, host, armed):
        self.host, self.conn, self.armed = host, host.conn, armed

    @property
    def ready(self):
        return self.armed.ready

    def fire(self, timeout=None):
        self.host._check()
        return connection.judged(self.conn.label,
                                 self.armed.fire(timeout)).stdout

    def close(self):
        self.armed.close()


def connect(location, limits, args=None):
    return SshHost(location, limits, args)
