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

"""What the migration engine asks of its durable state: the contract.

One implementation keeps it in SQL (:mod:`any2kvm_os.migration.state.sql`:
SQLite by default, MySQL or PostgreSQL by URL, schema migrations);
engine tests may use any other that keeps this contract.  Nothing secret
is ever stored: no password, no token, no key.

Every method takes and returns plain data (dicts, lists, str, int,
float); times are UTC seconds since the epoch (float).
"""

import abc
import time

from any2kvm_os import exception

#: The states of a migration, in the order they normally come.
STATUSES = ('created', 'syncing', 'synced', 'cutting-over', 'done',
            'aborted', 'failed')


class Busy(Exception):
    """The migration is held by another command: ``holder`` says which
    (operation, pid, host, since)."""

    def __init__(self, name, holder):
        self.name = name
        self.holder = holder
        expires = holder.get('expires')
        stale = ''
        if expires is not None and expires <= time.time():
            # A process of this host that lives on past its lease.
            stale = ('; its lease expired at %s: the process is stopped '
                     'or hung (resume it, or kill it to go on)'
                     % holder.get('expires_text'))
        super(Busy, self).__init__(
            'migration %s is busy: %s by pid %s on %s since %s%s' % (
                name, holder.get('operation'), holder.get('pid'),
                holder.get('host'), holder.get('since_text'), stale))


#: The command's hold of a migration is gone (:class:`Fence`).
LeaseLost = exception.LeaseLost


class Fence(object):
    """The check made before every write of a command that holds a
    migration (its targets' writes, :attr:`RawWriter.guard
    <any2kvm_os.writers.raw.RawWriter.guard>`; its reader processes'
    :meth:`until`): the writes go on while the lease is surely ours.

    A lease is judged by its expiry on the holder's clock: until
    ``margin`` seconds before it expires nothing is asked (the renewer
    thread of :meth:`Store.hold` keeps it far ahead); past that, it is
    renewed at once (:meth:`Store.touch`), and :class:`LeaseLost` raised
    when that fails or another command holds it.  A command stopped
    (Ctrl-Z, SIGSTOP) or cut from the database past its lease thus never
    writes over the command that took over (another host takes over a
    lease once it expired on its own clock: hosts sharing a database
    must agree on the time within ``margin``)."""

    def __init__(self, store, lease, margin):
        self.store = store
        self.lease = lease
        self.margin = margin

    def until(self):
        """The wall-clock time writes may go on until without a check."""
        return self.lease['expires'] - self.margin

    def workers_until(self):
        """The time the command's reader processes may write until
        (:mod:`~any2kvm_os.migration.procread`): half a margin after
        :meth:`until`, so that the command's own renewal at :meth:`until`
        reaches them first; still half a margin before the lease
        expires."""
        return self.lease['expires'] - self.margin / 2.0

    def __call__(self):
        lease = self.lease
        if lease.get('released'):
            raise LeaseLost(name=lease['name'], operation=lease['operation'],
                            reason='the command let it go')
        if not lease.get('lost') and time.time() < self.until():
            return
        if not lease.get('lost'):
            try:
                if self.store.touch(lease) and time.time() < self.until():
                    return
            except Exception as e:
                raise LeaseLost(name=lease['name'],
                                operation=lease['operation'],
                                reason='it could not be renewed: %s'
                                % ' '.join(str(e).split()[:40]))
        if lease.get('lost'):
            reason = 'another command took it over'
        else:
            reason = 'it could not be renewed in time'
        raise LeaseLost(name=lease['name'], operation=lease['operation'],
                        reason=reason)


class NotFound(Exception):
    pass


class Exists(Exception):
    pass


class Store(object, metaclass=abc.ABCMeta):
    """The durable state of every migration.

    Every method naming a migration that does not exist raises
    :class:`NotFound` (so do a disk index, layer or snapshot it does not
    have).  A store is a context manager; :meth:`close` releases its
    connections.
    """

    def close(self):
        """Release what the store holds open (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @abc.abstractmethod
    def create(self, name, location, target, target_options, disks):
        """A new migration ``name`` (unique; :class:`Exists` otherwise).

        ``location``: the source (``xenserver://user@host/VM``);
        ``target``: 'file' or 'cinder'; ``target_options``: a dict of
        non-secret options (output dir, volume type...); ``disks``: a list
        of dicts ``{'index', 'source_id', 'name', 'virtual_size',
        'target_ref'}`` (source_id: the VDI uuid; target_ref: the raw file
        path or volume id).  Status 'created'.  Returns :meth:`get`.
        ``ValueError`` when an option looks secret (its name has password,
        secret, token, key...; a name ending in ``_env``, the name of a
        variable, is allowed) or is a URL with a password in it."""

    @abc.abstractmethod
    def get(self, name):
        """The migration as a dict: name, location, target,
        target_options, status, created_at, updated_at, disks (each with
        its ``applied`` layers, oldest first: ``{'layer_id',
        'fingerprint', 'name', 'applied_at', 'partial'}``), snapshots
        (``{'snapshot_id', 'created_at', 'removed_at'}``), syncs (each
        ``{'started_at', 'ended_at', 'layers_applied', 'bytes_read',
        'bytes_written', 'ok', 'error'}``), cutover and cutovers (see
        :meth:`cutover_recorded`); also ``error`` (the
        reason given with the status) and ``holder`` (None, or who holds
        it: ``{'operation', 'pid', 'host', 'since', 'since_text',
        'expires', 'live'}``).  :class:`NotFound`."""

    @abc.abstractmethod
    def list(self):
        """Every migration: dicts of name, location, target, status,
        updated_at, in name order."""

    @abc.abstractmethod
    def delete(self, name):
        """Forget a migration and everything recorded of it."""

    @abc.abstractmethod
    def hold(self, name, operation):
        """A context manager holding ``name`` for ``operation`` ('sync',
        'cutover', 'abort'...) while the block runs; :class:`Busy` when
        another live holder has it (a holder whose process is gone on this
        host, or whose lease expired, is taken over).  The hold is
        released when the block ends, by an exception too.

        The block receives the lease, a dict (operation, pid, host,
        since, since_text, expires, name, token, lost).  An
        implementation with leases that expire renews it while the
        block runs; :meth:`touch` renews it at once, and ``lost`` becomes
        True if another command took it over meanwhile."""

    def flow_backend(self):
        """The TaskFlow persistence backend that records the flows of this
        store's commands (:mod:`any2kvm_os.migration.flows`), or None:
        they then run without a record."""
        return None

    def flow_logbook(self, name, create=True):
        """The uuid of migration ``name``'s TaskFlow logbook, made (and
        recorded) now when it has none and ``create``; None otherwise."""
        books = self.__dict__.setdefault('_flow_logbooks', {})
        self.get(name)
        if name not in books and create:
            import uuid
            books[name] = str(uuid.uuid4())
        return books.get(name)

    def touch(self, lease):
        """Renew ``lease`` (what :meth:`hold` gave) now: True while it is
        still ours.  Without expiring leases, there is nothing to do."""
        return not lease.get('lost')

    def fence(self, name):
        """The :class:`Fence` of the lease this store holds on ``name``
        (in :meth:`hold`), or None: a store without expiring leases
        fences nothing."""
        return None

    @abc.abstractmethod
    def set_status(self, name, status, error=None):
        """One of :data:`STATUSES` (``ValueError`` otherwise); ``error``:
        the one-line reason of 'failed' (None clears it)."""

    def guest_recorded(self, name, guest):
        """What inspection found in the migration's targets (a dict:
        the guest report, the image properties and why, warnings, the
        fixes made; non-secret), replacing what was recorded;
        :meth:`get` gives it as ``guest`` (None until then)."""
        raise NotImplementedError()

    @abc.abstractmethod
    def layer_started(self, name, disk_index, layer_id, layer_name,
                      fingerprint):
        """A layer is being applied onto the disk's target (recorded as
        partial until :meth:`layer_applied`: a crash leaves it partial and
        the next sync applies it again).  A layer already recorded on
        the disk is applied again: it moves after every other one."""

    @abc.abstractmethod
    def layer_applied(self, name, disk_index, layer_id):
        """The partial layer ``layer_id`` is complete on the target."""

    @abc.abstractmethod
    def forget_layers(self, name, disk_index, from_layer_id):
        """Drop ``from_layer_id`` and every layer applied after it (the
        chain changed behind the tool's back: they must be applied
        again).  ``from_layer_id`` None: every layer of the disk."""

    @abc.abstractmethod
    def disk_resized(self, name, disk_index, virtual_size):
        """The disk's size on the host changed (it grew between syncs)
        and its target follows: :meth:`get` gives ``virtual_size``
        updated."""

    @abc.abstractmethod
    def snapshot_taken(self, name, snapshot_id):
        """Record a snapshot the migration made on the host (recording
        it again starts it anew: made now, not removed)."""

    @abc.abstractmethod
    def snapshot_removed(self, name, snapshot_id):
        """The snapshot is gone from the host (its first removal time is
        kept)."""

    @abc.abstractmethod
    def sync_recorded(self, name, started_at, ended_at, layers_applied,
                      bytes_read, bytes_written, ok=True, error=None):
        """The figures of one sync."""

    @abc.abstractmethod
    def cutover_recorded(self, name, shutdown_at, completed_at,
                         top_layers=None, details=None, phases=None):
        """The cutover: downtime is ``completed_at - shutdown_at``.
        ``completed_at`` may be None (the VM is down, the cutover not
        complete yet) and recorded later by calling this again, which
        updates the last cutover unless it was rolled back (then a new
        one starts).  ``top_layers``: {disk index: the layer id applied
        last (the VM's leaf)}; ``details``: a dict merged into the
        cutover's (non-secret: a server id, the volumes made bootable);
        ``phases``: {phase: seconds}, where the downtime went (replaces
        what was recorded).

        :meth:`get` gives ``cutover``, the last cutover unless rolled
        back (None otherwise), and ``cutovers``, every one in order; each
        ``{'shutdown_at', 'completed_at', 'downtime', 'top_layers',
        'details', 'phases', 'rolled_back_at'}`` (``phases`` None before
        the cutover completed, or when it was recorded without)."""

    @abc.abstractmethod
    def rollback_recorded(self, name, at=None):
        """The last cutover was rolled back (the source runs again); it
        stays in the history.  :class:`NotFound` without a cutover to roll
        back."""
