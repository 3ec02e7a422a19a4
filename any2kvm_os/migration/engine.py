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

"""Warm migration of a running XenServer VM: create, sync, cutover, abort.

A migration copies a running VM's disks to KVM targets in steps.  Each
``sync`` snapshots the VM (``xe vm-snapshot``): on a file SR every VDI's
file keeps its name and becomes a new, empty differencing leaf, while the
content written so far moves to a new hidden node.  Every layer below the
running leaf is then stable, and the sync applies, oldest first, each such
layer the target does not hold yet (DATA written, ZERO zeroed, the rest
left alone: :func:`any2kvm_os.incremental._apply_one`).  ``cutover``
shuts the VM down and applies what is left, the leaf included.

The durable record is the :class:`~any2kvm_os.migration.state.api.Store`:
each layer is recorded as started (partial) before its first write and
applied after the target is flushed, with a fingerprint of the layer's
metadata (SHA-256 of its footer, header and block table as read).  Every
write is absolute, so a sync killed half way simply applies the partial
layer again.

**The chain is checked before anything is applied.**  The layers already
applied must still be, in order, the oldest layers of the live chain with
the same fingerprints.  When they are not (a snapshot deleted and its node
coalesced by XenServer's garbage collector, a revert), the record is
forgotten from the first layer that differs.  The ranges the forgotten
layers wrote are unknown (the store keeps no block maps, and a coalesced
layer is gone from the host), so correctness needs every range that no
newer layer covers rewritten from the older ones: the engine writes the
fold of the whole stable chain in one pass with base semantics (each
allocated block read once; everything else zeroed) and reports the bytes
that costs.  The pass is recorded under a fingerprint that can never match
(``rewrite:``), so a crash during it leads to the same pass again, never
to a target trusted too early.

**A snapshot of the migration gone from the host is a rewrite.**  The
garbage collector can merge later writes into a node already applied in
place (a snapshot-coalesce of the VM's leaf into its parent, stopped
before its rename: the node keeps its name, id, header and block
table), which no fingerprint shows.  Each sync lists the migration's
snapshots (beside the new one); one it took and has not removed that is
missing makes every disk rewritten from the base, and is recorded as
removed only after that (:func:`_lost_snapshots`).  A cutover refuses
before the shutdown in that case: the sync rewrites while the VM runs.

**The migration's snapshots are kept until cutover or abort.**  Removing
an older one once a newer one is applied would look free, but it is not
safe to do cheaply: the snapshot's VDI is one of the two children of a
hidden node we applied; without it the node has one child and SM's
garbage collector coalesces that child into it, which rewrites a layer we
applied and deletes another.  The next sync would see the change and
would have to rewrite the whole disk (above).  Kept snapshots cost
little on the SR (their VDIs are empty differencing files, on an LVM SR
an LV of 8 MiB each, SM's thin-provisioned minimum; the nodes exist
either way) but lengthen the chain by one per sync, and VHD chains
are limited (SM refuses beyond 30 levels): a sync is refused once the
chain reaches :data:`MAX_CHAIN` and the operator should cut over.

**Each command runs as a TaskFlow flow** (:mod:`.flows`): one task per
step (connect, snapshot, discover, open the targets, one per disk
applying its layers, close, record; for a cutover also the shutdown,
finish, server, downtime and snapshot removal), run by TaskFlow's engine
on its SQLAlchemy persistence in the same state database, a logbook per
migration and a flow detail per command run.  The lease (:class:`_Held`)
is taken before the flow starts: a second command is refused before it
records anything.

**The host's first work starts before the flow** (:meth:`_Run.start_ahead`):
once the lease is held and the targets' check has passed, a thread of
its own connects to the host and asks its first round trips (a sync's
snapshot beside the discovery's queries; a cutover's queries), while this
thread loads TaskFlow and records the flow.  The ``connect`` and
``snapshot`` tasks then take their answers, or raise the error they
failed with.  Nothing the host is asked changes with the order: the
queries are read-only, and a snapshot taken but not recorded (the
process killed before its task ran) is adopted by its tag at the next
sync, as one whose answer was lost always was.
"""

import argparse
import contextlib
from concurrent import futures
import functools
import hashlib
import logging
import os
import re
import sys
import threading
import time
import uuid as uuid_mod

from any2kvm_os.chain import layer_chain
from any2kvm_os import exception
from any2kvm_os.migration import procread
from any2kvm_os.migration.state import api as state_api
from any2kvm_os.sources.xenserver import discovery
from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import location as location_mod
from any2kvm_os.sources.xenserver import snapshots
from any2kvm_os.sources.xenserver import xe

LOG = logging.getLogger(__name__)

#: Longest chain a sync adds a snapshot to (SM's limit is 30 levels).
MAX_CHAIN = 28
#: Prefix of the fingerprint recorded while a whole-disk rewrite runs.
REWRITE = 'rewrite:'
NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$')
#: An environment variable naming the state database (a URL).
STATE_DB_ENV = 'ANY2KVM_STATE_DB'

NO_SUCH = 'no such migration (see "any2kvm migration list")'

#: (``cutting-over``: a cutover killed outright; the lease keeps a live
#: one away.)
SYNCABLE = ('created', 'syncing', 'synced', 'failed', 'cutting-over')
CUTTABLE = ('created', 'syncing', 'synced', 'failed', 'cutting-over')

#: What :meth:`_Run.start_ahead` asks the host before the flow, after the
#: connection: a sync's snapshot beside the discovery's queries, or (a
#: cutover) the queries alone.
SNAPSHOT, QUERIES = 'snapshot', 'queries'


class MigrationError(exception.Any2KvmError):
    msg_fmt = 'migration %(name)s: %(reason)s'


def open_store(url=None, conf=None, create=True):
    """The state database: ``url`` (``--state-db``: refused when it holds
    a password, see :func:`.options.check_argv_url`), else
    ``$ANY2KVM_STATE_DB``, else ``state_db_url`` of ``conf``, else the
    SQLite file of :func:`any2kvm_os.migration.state.options.default_url`.
    ``create=False``: a SQLite file that does not exist is refused
    (:class:`~.state.sql.NoDatabase`), not made: only ``create`` makes
    one, so that a mistyped path is not read as "no migrations".
    """
    from any2kvm_os.migration.state import options as state_options
    from any2kvm_os.migration.state import sql
    refused = state_options.check_argv_url(url)
    if refused:
        raise exception.Any2KvmError(refused)
    url = url or os.environ.get(STATE_DB_ENV) or state_options.url_from(
        None, conf)
    return sql.SqlStore(url, create=create)


def fingerprint(layer, file_name):
    """SHA-256 of a layer's file name and metadata as read (VHD: footer,
    dynamic header, block table): cheap, and changes when a coalesce
    rewrites the layer.  The file name is part of it because a
    leaf-coalesce can merge writes into blocks the node already had (the
    table unchanged) and then gives the node the leaf's file name: the
    next snapshot moves it to a new node name, with the node's old id."""
    h = hashlib.sha256()
    h.update(('%s\0%s\0%s\0%d\0' % (
        file_name, layer.format_name, layer.identity,
        layer.virtual_size)).encode())
    for part in ('footer', 'hdr'):
        h.update(repr(getattr(layer, part, None)).encode() + b'\0')
    bat = getattr(layer, 'bat', None)
    if bat is not None:
        h.update(bat.tobytes() if hasattr(bat, 'tobytes') else
                 repr(bat).encode())
    return h.hexdigest()


def _check_name(name):
    if not NAME_RE.match(name or ''):
        raise MigrationError(name=name, reason='a name is 1 to 63 letters, '
                             'digits, ".", "_" or "-", starting with a '
                             'letter or digit')


def _fenced(store, name):
    """Check that the lease ``store`` holds on ``name`` is still this
    command's (:class:`~.state.api.Fence`) before a change made outside
    the targets' writes and the host's commands (a cloud's volume made
    bootable, extended or deleted, a server deleted)."""
    fence = store.fence(name)
    if fence is not None:
        fence()


def _get(store, name):
    try:
        return store.get(name)
    except state_api.NotFound:
        raise MigrationError(name=name, reason=NO_SUCH)


class _Held(object):
    """``store.hold`` with :class:`Busy` turned into one clear line."""

    def __init__(self, store, name, operation):
        self.cm = store.hold(name, operation)
        self.name = name

    def __enter__(self):
        try:
            return self.cm.__enter__()
        except state_api.Busy as e:
            raise MigrationError(name=self.name, reason='busy: %s by pid %s '
                                 'on %s since %s; try again when it ends'
                                 % (e.holder.get('operation'),
                                    e.holder.get('pid'),
                                    e.holder.get('host'),
                                    e.holder.get('since_text')))
        except state_api.NotFound:
            raise MigrationError(name=self.name, reason=NO_SUCH)

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def _work(jobs):
    """Each (future, fn) of ``jobs`` in turn: the future gets what
    ``fn()`` returned or raised."""
    for future, fn in jobs:
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn())
        except BaseException as e:
            future.set_exception(e)


def _interactive():
    """Whether standard input is a terminal (where the SSH layer may ask
    for a password)."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def _flows():
    """:mod:`.flows`, imported when a command first needs it: TaskFlow
    takes about 0.1 s to load, which a sync or cutover spends while the
    host does its first work (:meth:`_Run.start_ahead`), and ``list`` never."""
    from any2kvm_os.migration import flows
    return flows


#: The SSH options a migration records at create, for the commands after
#: it that do not give them: how its host is reached (not secrets).  A
#: command that gives any of them (``--no-jump-host`` included) takes
#: its own route, for itself only.
ROUTE_OPTIONS = ('jump_host', 'jump_host_key', 'no_jump_host')


def _route(args):
    """{option: value} of :data:`ROUTE_OPTIONS` that ``args`` gives."""
    return dict((k, getattr(args, k)) for k in ROUTE_OPTIONS
                if getattr(args, k, None))


def _connect(location, limits, args, connect, m=None, fence=None):
    """The host of ``location``; ``m``: the migration, whose recorded
    route (``--jump-host``) is taken when ``args`` gives none; ``fence``:
    the held migration's lease check, made before every command that
    changes the host (``host.guard``)."""
    if m is not None and not _route(args):
        recorded = dict((k, v) for k, v in (m.get('target_options') or
                                            {}).items()
                        if k in ROUTE_OPTIONS and v)
        if recorded:
            args = argparse.Namespace(**dict(vars(args) if args is not None
                                             else {}, **recorded))
    if connect is None:
        from any2kvm_os.migration import host as host_mod
        connect = host_mod.connect
    host = connect(location, limits, args)
    if fence is not None:
        host.guard = fence
    return host


def _discovery_queries(host, vm, vdis=()):
    """The queries of :func:`_discover` whose words are known before any
    answer, for ``vm`` (a uuid; None otherwise) and the VDI uuids
    ``vdis``: the VM, the OS its guest reports, its VIFs and VBDs, those
    VDIs, the pool's SRs, and
    the host's inventory and PBDs when it names an inventory."""
    if not location_mod.is_uuid(vm):
        return None
    vm = vm.lower()
    queries = [
        xe.list_command('vm', [('uuid', vm)], discovery.VM_FIELDS),
        discovery.os_version_command(vm),
        xe.list_command('vif', [('vm-uuid', vm)], discovery.VIF_FIELDS),
        xe.list_command('vbd', [('vm-uuid', vm)], discovery.VBD_FIELDS)]
    queries += [xe.list_command('vdi', [('uuid', v.lower())],
                                discovery.VDI_FIELDS) for v in vdis]
    queries.append(discovery.sr_command())
    inventory = getattr(host, 'inventory', None)
    if inventory:
        # The inventory last: a host without it (not a XenServer dom0)
        # fails the batch there, and every answer before it is kept.
        queries += [discovery.pbd_command(),
                    discovery.inventory_command(inventory)]
    return queries


def _discover(host, vm, vdis=(), ahead=None):
    """:func:`discovery.discover` of ``vm``.  When ``vm`` is a uuid
    (sync and cutover: the migration knows it, and ``vdis``, the uuids of
    the disks it records), the queries whose words are known before any
    answer (:func:`_discovery_queries`) go to the host in one round trip
    (:func:`prefetching`), or were answered already: ``ahead``, (those
    queries, their outputs or the error they failed with), run beside the
    snapshot (:meth:`_Run.snapshot`); the rest (a VDI not recorded, an
    SR the pool-wide listing left out) one by one."""
    run = lambda argv: host.run(argv)  # noqa: E731
    # A host that names its inventory file: each disk's SR is checked to
    # be attached on it (its inventory and the PBDs go in the same batch).
    inventory = getattr(host, 'inventory', None)
    queries = _discovery_queries(host, vm, vdis)
    if queries is not None:
        vm = vm.lower()
        answered = None
        if ahead is not None and ahead[0] == queries and (
                isinstance(ahead[1], list) or
                getattr(ahead[1], 'outputs', None) is not None):
            answered = ahead[1]
        run = prefetching(host, queries, answered)
    return discovery.discover(run, vm, host=host.label,
                              mount_base=host.mount_base,
                              inventory=inventory,
                              lvm_dev=getattr(host, 'lvm_dev',
                                              discovery.DEFAULT_LVM_DEV))


def prefetching(host, commands, answered=None):
    """A runner (``run(argv) -> stdout``) that answers ``commands``
    (queries) from one batch run now (:func:`run_batch`), or from
    ``answered``, that batch's result already had (its outputs, or the
    error it failed with), each answer once, and runs anything else on
    the host.  A batch that failed at one query (its error carries the
    ``outputs`` of the queries before it) answers those, and that query
    with its error, as run alone it would have failed; the queries after
    it run alone.  A batch that failed otherwise answers nothing: every
    query then runs alone and fails (or not) on its own."""
    if answered is None:
        try:
            answered = run_batch(host, commands)
        except exception.Any2KvmError as e:
            answered = e
    cache, failed = {}, {}
    outs = answered
    if isinstance(answered, Exception):
        outs = getattr(answered, 'outputs', None)
        if outs is None:
            outs = []
        elif len(outs) < len(commands):
            failed[tuple(commands[len(outs)])] = answered
        LOG.debug('batched queries failed (%s): %d answered, the rest one '
                  'by one', _one_line(answered), len(outs))
    for argv, out in zip(commands, outs):
        cache.setdefault(tuple(argv), []).append(out)

    def run(argv):
        answers = cache.get(tuple(argv))
        if answers:
            return answers.pop(0)
        error = failed.pop(tuple(argv), None)
        if error is not None:
            raise error
        return host.run(argv)
    return run


# -- create -------------------------------------------------------------------

def destination(target, options=None, cloud=None, **kwargs):
    """The :mod:`~any2kvm_os.migration.destinations` object of a
    migration's target."""
    from any2kvm_os.migration import destinations
    return destinations.get(target, options, cloud, **kwargs)


def _destination(m, cloud, dest):
    if dest is not None:
        return dest
    return destination(m['target'], m['target_options'], cloud)


def _devices_free(store, name, devices):
    """Refuse block devices (``--device``) another migration that is not
    aborted writes to, or wrote to (its cutover's disks live there): two
    migrations would write each other's disks."""
    def same(a, b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            return os.path.realpath(a) == os.path.realpath(b)
    for other in store.list():
        if other['name'] == name or other['status'] == 'aborted' or \
                other['target'] != 'file':
            continue
        for d in store.get(other['name'])['disks']:
            for path in devices:
                if same(path, d['target_ref']):
                    raise MigrationError(
                        name=name, reason='--device %s is the target of '
                        'disk %d of migration %s (%s): a device is one '
                        'migration\'s (abort that one first)' % (
                            path, d['index'], other['name'],
                            other['status']))


def create(store, name, location, target='file', output_dir='.',
           limits=None, args=None, connect=None, options=None, cloud=None,
           dest=None):
    """Record a new migration of the VM at ``location`` and create its
    targets: sparse raw files ``NAME.raw``, ``NAME-disk1.raw``... in
    ``output_dir`` (``target`` 'file', as ``import --target file`` names
    them), or a Cinder volume per disk (``target`` 'cinder'; ``options``:
    volume_type, brick_mount_point_base; ``cloud()``: (session, region,
    interface)); with ``options['devices']`` (``target`` 'file'), the
    existing block devices of the disks, in disk order.  The cloud is
    asked before the host; when a target
    cannot be made (or a volume reached), none is left and nothing is
    recorded."""
    _check_name(name)
    if target not in ('file', 'cinder'):
        raise MigrationError(name=name, reason='--target %s is not '
                             'supported by warm migration; use file or '
                             'cinder' % target)
    options = dict(options or {})
    if target == 'file' and not options.get('devices'):
        options['output_dir'] = output_dir
    if dest is None:
        dest = destination(target, options, cloud)
    try:
        store.get(name)
    except state_api.NotFound:
        pass
    else:
        raise MigrationError(name=name, reason='already exists (see '
                             '"any2kvm migration show %s")' % name)
    # The cloud first: bad credentials are told before the host is asked.
    dest.check()
    host = _connect(location, limits, args, connect)
    try:
        found = _discover(host, location_mod.parse(location).vm)
        if not found.disks:
            raise MigrationError(name=name, reason='the VM has no disk')
        chains = _check_chains(host, found.disks)
    finally:
        host.close()
    target_options, disks = dest.plan(name, found.disks)
    if target_options.get('devices'):
        _devices_free(store, name, target_options['devices'])
    target_options['vm_uuid'] = found.uuid
    # How the host was reached (--jump-host): the next commands reach it
    # so unless they say otherwise.
    target_options.update(_route(args))
    # Set as the name-description of every snapshot the migration takes:
    # how its snapshots are found when a crash left one unrecorded.
    target_options['snapshot_tag'] = new_snapshot_tag()
    dest.create(disks)
    try:
        store.create(name, location, target, target_options, disks)
    except BaseException as e:
        try:
            dest.delete(disks)
        except Exception as e2:
            LOG.warning('could not delete the targets made: %s', e2)
        if isinstance(e, state_api.Exists):
            raise MigrationError(name=name, reason='already exists (see '
                                 '"any2kvm migration show %s")' % name)
        raise
    m = store.get(name)
    m['chains'] = chains
    return m


def _check_chains(host, disks):
    """Each disk's chain opened as a sync opens it (the SFTP session,
    the SR directory listed, every layer's metadata read and checked),
    so that what would stop the first sync (no SFTP, a broken or foreign
    chain, a layer past the limits) is told at ``create``, before any
    target is made; [{index, layers, files_size}] of what it found
    (the first sync reads at most the files' allocated blocks)."""
    out = []
    for index, info in enumerate(disks):
        if on_lvm(info) and not info.control_domain:
            # A sync reads its snapshot's VDI attached to dom0.
            raise exception.ChainError(
                path='%s:%s' % (host.label, info.path), reason='a sync '
                'of a disk on an LVM SR reads its snapshot attached to '
                'the host\'s control domain, which is unknown (its '
                'inventory, xenserver_inventory, names no '
                'CONTROL_DOMAIN_UUID)')
        opened = host.open_disk(info)
        try:
            layers = opened.chain.layers
            out.append({'index': index, 'layers': len(layers),
                        'files_size': sum(_file_size(layer)
                                          for layer in layers)})
        finally:
            opened.close()
    return out


# -- applying layers ----------------------------------------------------------

class _Figures(object):
    def __init__(self):
        self.layers = 0
        self.written = 0
        #: The sizes of the layer files applied (to set against the bytes
        #: read over the wire).
        self.files = 0
        self.rewrites = []


#: What :meth:`_Run.create_server` records before the server is made.
SERVER_CHANGE = 'a server was created from them (--create-server)'
#: The layer id of the record ``rollback`` leaves on each disk whose
#: target the KVM side changed (:func:`kvm_changes`): no layer has it, so
#: the next sync rewrites the disk from the base (:func:`_plan`), and the
#: target is not taken as fresh (all zeros) meanwhile.
KVM_MARK = 'changed-on-kvm'


def _kvm_marked(applied):
    """The reason ``rollback`` recorded with its :data:`KVM_MARK`, or
    None."""
    for a in applied:
        if a['layer_id'] == KVM_MARK:
            return (a.get('name') or '').partition(': ')[2] or KVM_MARK
    return None


def kvm_changes(details):
    """What changed a migration's targets on the KVM side, as its
    cutover's ``details`` record it (a server created from the volumes:
    its guest writes to them; ``--fix``, when it fixed something), or
    None.  Such targets no longer hold only the source's bytes: no layer
    can be applied on them as an increment (the next sync after a
    rollback, a cutover run again, writes every disk again whole)."""
    details = details or {}
    if details.get('targets_changed'):
        return details['targets_changed']
    if details.get('server_id'):
        return SERVER_CHANGE
    fixed = fixed_by_cutover(details)
    return 'cutover --fix (%s)' % fixed if fixed else None


def fixed_by_cutover(details):
    """What a ``cutover --fix`` changed in the targets, as its cutover's
    ``details`` record it (the files, the registry), or None (no fix, or
    nothing to fix)."""
    fixed = (details or {}).get('fixed')
    if (details or {}).get('guest_inspected_by') == 'cutover --fix' and \
            fixed and fixed != 'nothing to fix':
        return fixed
    return None


def _plan(applied, stable):
    """How to bring a target holding ``applied`` (store records, oldest
    first) up to ``stable`` ((layer_id, fingerprint) oldest first):
    ('ok', start) -- apply stable[start:];
    ('redo', k) -- applied[k] was partly written (a crash): forget it and
    apply stable[k:];
    ('rewrite', k) -- the chain changed at applied[k]: forget from it and
    rewrite the whole disk."""
    for k, a in enumerate(applied):
        same = (k < len(stable) and a['layer_id'] == stable[k][0]
                and a['fingerprint'] == stable[k][1])
        if not same:
            return 'rewrite', k
        if a.get('partial'):
            if k == len(applied) - 1:
                return 'redo', k
            return 'rewrite', k
    return 'ok', len(applied)


def leaf_names(disk):
    """The names of the layer the VM writes to, ``disk``'s VDI's own
    file (a snapshot moves the content it had to a new node): on a file
    SR, or an LVM SR (its LV).  Only a cutover applies it."""
    return ('%s.vhd' % disk['source_id'], 'VHD-%s' % disk['source_id'])


def _leaf_written_since(disk, applied, stable, k):
    """Whether the one difference :func:`_plan` found (at ``k``) is the
    leaf's fingerprint: the last record is the VM's leaf (which only a
    cutover applies: one cut short, run again), with the id it has now,
    its fingerprint changed (the VM wrote into it since), every layer
    below it unchanged; not a rewrite cut short (its marker), nor
    targets changed on the KVM side.  (A layer that became the leaf by
    a coalesce, applied by a sync, is not: the disk is rewritten.)"""
    return (k == len(applied) - 1 == len(stable) - 1 and
            applied[k]['layer_id'] == stable[k][0] and
            applied[k]['name'] in leaf_names(disk) and
            not (applied[k]['fingerprint'] or '').startswith(REWRITE) and
            _kvm_marked(applied) is None)


def stable_layers(chain, with_leaf):
    """The layers of ``chain`` a sync (all but the leaf) or a cutover
    (``with_leaf``) applies, oldest first: (their chain indexes, their
    file names, their (layer id, fingerprint)), what :func:`_plan`
    compares with a disk's applied layers."""
    n = len(chain.layers)
    # Positions oldest first -> chain indexes (the chain is leaf first).
    order = list(range(n - 1, -1 if with_leaf else 0, -1))
    names = [os.path.basename(chain.names[i]) for i in order]
    stable = [(chain.layers[i].identity,
               fingerprint(chain.layers[i], names[j]))
              for j, i in enumerate(order)]
    return order, names, stable


def _update_disk(store, name, disk, chain, with_leaf, figures, target,
                 progress=None, changed=None, lost=None):
    """Apply onto ``disk``'s target (``target``, an open writer) what it
    lacks of ``chain`` (all but the leaf, or all with ``with_leaf``).
    ``changed``: what changed the targets on the KVM side since their
    layers were applied (:func:`kvm_changes`): every layer is applied
    again, from the base (which zeroes what no layer holds)."""
    n = len(chain.layers)
    order, names, stable = stable_layers(chain, with_leaf)
    applied = disk['applied']
    idx = disk['index']
    how, k = _plan(applied, stable)
    if (changed or lost) and applied:
        # Not an increment: rewritten from the base.
        how, k = 'rewrite', 0
    if with_leaf and not changed and (
            (how == 'ok' and applied and k == len(stable)) or
            (how == 'rewrite' and
             _leaf_written_since(disk, applied, stable, k))):
        # The leaf is recorded as applied: a cutover cut short after it
        # (killed, its connection lost, its --fix failed), run again.
        # The VM may have run since (started by hand, by HA) and written
        # into blocks the leaf held, which no fingerprint shows, or into
        # new ones, which changed the leaf's fingerprint and nothing
        # below it: the leaf, the last delta, is applied again (every
        # block it holds, absolute), not the disk from its base.
        LOG.info('%s: the leaf %s was applied by a cutover that did not '
                 'end: applying it again', disk['target_ref'],
                 applied[-1]['name'])
        store.forget_layers(name, idx, applied[-1]['layer_id'])
        how, k = 'ok', len(stable) - 1
    if target.fresh and applied:
        # The file made by create is gone: everything again.
        LOG.warning('%s: target missing, written anew', disk['target_ref'])
        store.forget_layers(name, idx, applied[0]['layer_id'])
        how, k = 'ok', 0
    elif how == 'redo':
        store.forget_layers(name, idx, applied[k]['layer_id'])
        LOG.info('%s: layer %s was partly applied: applying it again',
                 disk['target_ref'], applied[k]['name'])
    elif how == 'rewrite':
        k = min(k, len(stable) - 1)
        store.forget_layers(name, idx, applied[k]['layer_id'])
        # The marker: a fingerprint no layer has, so a crash in the pass
        # leads to the same pass again.
        store.layer_started(name, idx, stable[k][0], 'rewrite of the disk',
                            REWRITE + stable[k][1])
        bar = _layer_bar(progress, disk, 'rewrite', chain.layers[0])
        written = procread.apply_one(chain, order[-1], target, bar,
                                     bottom=n - 1, processes=not with_leaf)
        target.sync()
        _layer_done(progress)
        figures.written += written
        figures.files += sum(_file_size(chain.layers[i]) for i in order)
        figures.rewrites.append({'disk': idx, 'from_layer':
                                 applied[k]['name'], 'bytes': written})
        why = changed or _kvm_marked(applied)
        if lost and not why:
            LOG.warning('%s: snapshot(s) %s of the migration are gone from '
                        'the host: the disk was rewritten from the base (%d '
                        'bytes of data)', disk['target_ref'],
                        ', '.join(lost), written)
        elif why:
            LOG.warning('%s: the target was changed on the KVM side since '
                        'its layers were applied (%s): the disk was '
                        'rewritten from the base (%d bytes of data)',
                        disk['target_ref'], why, written)
        else:
            LOG.warning('%s: the chain changed on the host from layer %s '
                        'on (snapshot deleted and coalesced?): the disk '
                        'was rewritten from the base (%d bytes of data)',
                        disk['target_ref'], applied[k]['name'], written)
        store.forget_layers(name, idx, stable[k][0])
        for j in range(k, len(stable)):
            store.layer_started(name, idx, stable[j][0], names[j],
                                stable[j][1])
            store.layer_applied(name, idx, stable[j][0])
            figures.layers += 1
        return
    for j in range(k, len(stable)):
        layer_id, fp = stable[j]
        store.layer_started(name, idx, layer_id, names[j], fp)
        layer = chain.layers[order[j]]
        bar = _layer_bar(progress, disk, names[j], layer)
        try:
            # A cutover's last delta is read in this process: no worker
            # starts inside the downtime.
            figures.written += procread.apply_one(
                chain, order[j], target, bar, processes=not with_leaf)
            target.sync()
        except BaseException:
            _layer_done(progress, ok=False)
            raise
        _layer_done(progress)
        store.layer_applied(name, idx, layer_id)
        figures.layers += 1
        figures.files += _file_size(layer)
        LOG.info('applied %s onto %s', names[j], disk['target_ref'])


def _record_size(store, name, disk, size):
    """A disk that grew on the host since the state recorded its size
    (its target grew with it: a volume extended when opened, a file when
    the grown layer was applied): the state records the new size, which
    ``show`` gives and a cutover's volume metadata uses."""
    if size and size != disk['virtual_size']:
        LOG.info('disk %d: %s bytes on the host, %s when last recorded',
                 disk['index'], size, disk['virtual_size'])
        store.disk_resized(name, disk['index'], size)


def _file_size(layer):
    """The size of a layer's file on the host (0 when unknown)."""
    view = getattr(layer, 'view', None)
    return getattr(view, 'size', None) or 0


def _layer_bar(progress, disk, layer_name, layer):
    if progress is None:
        return None
    return progress.start('disk %d %s' % (disk['index'], layer_name),
                          layer.virtual_size)


def _layer_done(progress, ok=True):
    if progress is not None:
        progress.end(ok=ok)


def _reopen_leaf(host, info, opened):
    """``opened`` (a disk's chain opened while its VM ran) with only its
    leaf read again, now that the VM is halted
    (:func:`layer_chain.reopen_leaf`); when that cannot be (a host whose
    disks do not say where they were resolved, a leaf that is no longer
    the child of the chain's next layer) the chain is found anew."""
    container = getattr(opened, 'chain_container', None)
    chain = None
    if container is not None:
        try:
            chain = layer_chain.reopen_leaf(container, opened.chain)
        except exception.Any2KvmError as e:
            LOG.info('%s: the leaf could not be read again (%s)',
                     info.path, _one_line(e))
    if chain is not None:
        opened.chain = chain
        return opened
    opened.close()
    if container is not None:
        LOG.info('%s: the chain changed since it was opened: found anew',
                 info.path)
    return host.open_disk(info)


def _match(name, m, found):
    """{disk index: DiskInfo} of the migration's disks in ``found``."""
    by_vdi = dict((d.vdi_uuid, d) for d in found.disks)
    infos = {}
    for disk in m['disks']:
        info = by_vdi.get(disk['source_id'])
        if info is None:
            raise MigrationError(name=name, reason='VDI %s (disk %d) is no '
                                 'longer attached to the VM'
                                 % (disk['source_id'], disk['index']))
        infos[disk['index']] = info
    return infos


class _Run(object):
    """What the tasks of one sync or cutover share, in memory: the
    migration, its destination, the connection to the host, the open
    targets, the figures and the times.  Each method is a task of the
    command's flow (:func:`_sync_steps`, :func:`_cutover_steps`) and
    returns what its task records (plain data)."""

    def __init__(self, store, name, allowed, status, refusal, limits, args,
                 connect, cloud, dest, progress=None, server=None,
                 guest=None):
        m = _get(store, name)
        if m['status'] not in allowed:
            raise MigrationError(name=name, reason='is %s: %s%s' % (
                m['status'], refusal,
                _NEXT.get(m['status'], '').replace('NAME', name)))
        self.store, self.name, self.m = store, name, m
        self.status = status
        self.limits, self.args, self._connect = limits, args, connect
        self.dest = _destination(m, cloud, dest)
        self.progress = progress
        self.server = server
        #: The guest step (inspection at sync, --fix at cutover), or None.
        self.guest = guest
        #: What the guest step found or fixed.
        self.inspected = None
        #: The server plan to undo when the cutover fails.
        self.prepared = None
        self.figures = _Figures()
        self.started = time.time()
        self.host = None
        self.read0 = 0
        self.found = self.infos = self.writers = None
        #: The migration's record and its disks', read when the targets
        #: are opened.
        self.record = self.disks = None
        #: {disk index: ChainDisk} opened before a cutover's shutdown.
        self.chains = {}
        #: {disk index: what ``host.prepare_disk`` prepared} of the disks
        #: on an LVM SR a cutover opens after the shutdown (open_chains).
        self.prepared_disks = {}
        self.top = {}
        self.times = {}
        self.details = {}
        self.result = self.snap = None
        #: The dom0 attachments of the disks a cutover read, to detach
        #: after the downtime (:meth:`detach_sources`).
        self.attachments = []
        #: {disk index: the disk as the sync's snapshot holds it}, of the
        #: disks on LVM SRs (:meth:`_read_from`), once asked for.
        self.snap_infos = None
        #: The migration's snapshots a sync found gone from the host
        #: (:func:`_lost_snapshots`): every disk is rewritten.
        self.lost = []
        #: The discovery's queries and their answers (or the error they
        #: failed with), run beside the snapshot.
        self.ahead = None
        self.removed = 0
        self.phases = {}
        #: Seconds each step took, in the order they ran (the steps of
        #: :func:`_sync_steps` and :func:`_cutover_steps` write it).
        self.step_seconds = {}
        #: The complete cutover whose last steps this run does
        #: (:func:`_finish_steps`), or None.
        self.finishing = None
        #: The shutdown command held at its gate (``host.arm``), or None.
        self.armed = None
        #: Whether the migration was marked ``status`` (then a failure
        #: must mark it failed, even one before the host answered).
        self.marked = False
        self._targets = contextlib.ExitStack()
        #: The host's first work, in a thread of its own
        #: (:meth:`start_ahead`): the thread, the connection's future and
        #: its first round trips' (or None).
        self._thread = self._connecting = self._asking = None
        #: The targets' check before the flow: None (not made), True
        #: (passed) or the error it failed with (raised by ``connect``).
        self._checked = None
        #: Whether the command was interrupted (:meth:`failed`): the host's
        #: first work is then not waited for.
        self._interrupted = False

    @property
    def vm_uuid(self):
        return self.m['target_options']['vm_uuid']

    def start_ahead(self, what):
        """Start the host's first work in a thread of its own, before the
        flow (called by :func:`_run`; the lease is held): the connection,
        then ``what``: :data:`SNAPSHOT` (a sync's snapshot beside the
        discovery's queries, :meth:`_ask_snapshot`) or :data:`QUERIES`
        (the queries alone).  Meanwhile the calling thread loads
        TaskFlow and records the flow, and the host's answers are waited
        for by the tasks that use them (:meth:`connect`,
        :meth:`snapshot`, :meth:`discover`).  Only once the targets'
        check has passed, so that a refusal costs the host nothing: when
        it fails, nothing starts, and the ``connect`` task raises its
        error, in the flow, as it would have (the check is not made twice:
        a cloud's is a login).  Nor when standard
        input is a terminal: the connection may ask for a password there,
        and a prompt in another thread could not be interrupted."""
        if _interactive():
            return
        try:
            self.dest.check()
        except Exception as e:
            self._checked = e
            return
        self._checked = True
        self.started = time.time()
        # Read here: the store is this thread's.
        m = self.store.get(self.name) if what == SNAPSHOT else None
        connecting = futures.Future()
        jobs = [(connecting, self._connect_host)]
        ask = {SNAPSHOT: functools.partial(self._ask_snapshot, m=m),
               QUERIES: self._ask_queries}.get(what)
        asking = None
        if ask is not None:
            asking = futures.Future()
            jobs.append((asking, lambda: ask(connecting.result()[0])))
        # A daemon: an interrupted command does not wait for the host's
        # answer to end (:meth:`close`).
        thread = threading.Thread(target=_work, args=(jobs,),
                                  name='any2kvm-host', daemon=True)
        thread.start()
        self._thread, self._connecting, self._asking = (thread, connecting,
                                                        asking)

    def _connect_host(self):
        """The connection, and its byte count when it was made (before
        any round trip of this run)."""
        host = _connect(self.m['location'], self.limits, self.args,
                        self._connect, m=self.m,
                        fence=self.store.fence(self.name))
        return host, host.bytes_read

    def _ask_snapshot(self, host, m):
        """A sync's first round trips: ``m``'s listing of the snapshots
        an earlier run took and the new snapshot (one batch), beside the
        discovery's queries (another).  Returns (m, the listing's argv,
        the snapshot's, their batch's outputs or error, and the queries
        with their answers)."""
        # A snapshot an earlier run took but never recorded (killed, or
        # the connection lost, before xe answered) is recorded first, so
        # that it is kept with the others and removed at cutover or abort.
        # The listing and the snapshot go in one round trip (the
        # snapshot only after the listing succeeded).
        # The discovery's queries run beside it, on a channel of their
        # own (the discover step takes their answers): what they ask
        # (the VM, its VBDs and VIFs, the VDIs' records, the SRs and
        # PBDs) is not what a snapshot changes, and a host takes the
        # time of the slower, not of both.
        listings = _adopt_commands(m)
        take = xe.vm_snapshot(self.vm_uuid, snapshot_label(m),
                              snapshot_tag(m))
        queries = _discovery_queries(host, self.vm_uuid, self._vdis())
        snap, answers = run_side_by_side(
            host, [listings + [take], queries], mutating=True)
        return m, listings, take, snap, (queries, answers)

    def _ask_queries(self, host):
        """A cutover's first round trip: the discovery's queries (its
        :func:`prefetching` batch), as (the queries, their outputs or
        the error they failed with); None when none are known ahead."""
        queries = _discovery_queries(host, self.vm_uuid, self._vdis())
        if queries is None:
            return None
        try:
            return queries, run_batch(host, queries)
        except exception.Any2KvmError as e:
            return queries, e

    def _end_ahead(self):
        """Wait for the host's first work (:meth:`start_ahead`) to end, and
        keep its connection (to be closed) when no task took it.  True
        when there is none, or it ended; False when the command was
        interrupted (its process ends) and it still runs: it is left
        alone, its connection too."""
        thread = self._thread
        if thread is None:
            return True
        if self._interrupted and thread.is_alive():
            return False
        thread.join()
        self._thread = None
        if self.host is None and not self._connecting.exception():
            self.host, self.read0 = self._connecting.result()
        return True

    def connect(self):
        """The cloud first (a login that fails costs nothing), then the
        migration marked ``status`` and the host connected (or its
        connection, started before the flow, waited for)."""
        if isinstance(self._checked, Exception):
            raise self._checked
        if self._checked is None:
            self.dest.check()
        self.store.set_status(self.name, self.status)
        self.marked = True
        if self._connecting is not None:
            self.host, self.read0 = self._connecting.result()
        else:
            self.started = time.time()
            self.host, self.read0 = self._connect_host()
        return {'host': str(self.host.label)}

    def snapshot(self):
        """The snapshot asked for (:meth:`_ask_snapshot`: before the flow,
        or now), recorded with any an earlier run left unrecorded."""
        asking, self._asking = self._asking, None
        if asking is not None:
            m, listings, take, snap, self.ahead = asking.result()
        else:
            m, listings, take, snap, self.ahead = self._ask_snapshot(
                self.host, self.store.get(self.name))
        if isinstance(snap, Exception):
            raise snap
        found, taken = snap[:-1], snap[-1]
        self.lost = _lost_snapshots(m, found, listings)
        if self.lost:
            LOG.warning('snapshot(s) %s of migration %s are gone from the '
                        'host (deleted by someone else?): SM may have '
                        'merged later writes into layers the targets hold; '
                        'every disk is rewritten from the base',
                        ', '.join(self.lost), self.name)
        _adopt(self.store, self.name, m, found, listings)
        self.snap = xe.parse_uuid(taken, take)
        self.store.snapshot_taken(self.name, self.snap)
        return {'snapshot': self.snap}

    def _vdis(self):
        return [d['source_id'] for d in self.m['disks']]

    def discover(self):
        ahead, self.ahead = self.ahead, None
        asking, self._asking = self._asking, None
        if asking is not None:
            ahead = asking.result()
        self.found = _discover(self.host, self.vm_uuid, self._vdis(),
                               ahead=ahead)
        self.infos = _match(self.name, self.m, self.found)
        out = {'power_state': self.found.power_state,
               'disks': len(self.infos)}
        if self.status == 'syncing' and self.m.get('cutover') and \
                self.found.power_state == 'running':
            out['cutover_closed'] = self._close_abandoned_cutover()
        return out

    def _close_abandoned_cutover(self):
        """A sync found the VM running after a cutover that did not end
        (stopped before its shutdown, or the VM started again by hand):
        that cutover is over.  It is closed as a rollback closes it
        (:func:`_forget_cutover_layers`: the leaf it applied forgotten,
        or every layer when it changed the targets on the KVM side), so
        that this sync copies what the VM wrote since, and a later
        cutover counts its downtime from its own request, not from the
        old one's."""
        c = self.m['cutover']
        changed = kvm_changes(c.get('details'))
        forgotten = _forget_cutover_layers(self.store, self.name, self.m, c,
                                           changed)
        _close_cutover(self.store, self.name, self.m)
        LOG.warning('migration %s: VM %s runs: its cutover of %s, which did '
                    'not end, is closed%s', self.name, self.vm_uuid,
                    time.strftime('%Y-%m-%d %H:%M:%S UTC',
                                  time.gmtime(c.get('shutdown_at') or 0)),
                    ' (the targets were changed on the KVM side: this sync '
                    'writes them whole)' if changed else '')
        self.m = _get(self.store, self.name)
        return {'layers_forgotten': forgotten, 'rewrite': changed}

    def open_targets(self):
        sizes = {i: info.virtual_size for i, info in self.infos.items()}
        # The disks' records as the command found them: each disk's is
        # changed by its own apply task only (the lease keeps every other
        # command away), so they are not read again inside a cutover's
        # downtime.
        self.record = self.store.get(self.name)
        self.disks = self.record['disks']
        _fenced(self.store, self.name)     # a volume may be extended
        self.writers = self._targets.enter_context(self.dest.opened(
            self.disks, sizes))
        # Every write checks that the lease is still this command's: one
        # stopped past it never writes over the command that took over.
        fence = self.store.fence(self.name)
        for w in self.writers.values():
            w.guard = fence
        return {'targets': len(self.writers)}

    def apply(self, index, with_leaf):
        """Apply onto disk ``index``'s open target what it lacks (all but
        the leaf, or all ``with_leaf``)."""
        f = self.figures
        before = (f.layers, f.written, f.files, len(f.rewrites))
        disk = [d for d in self.disks if d['index'] == index][0]
        pre = self.chains.pop(index, None)
        prepared = self.prepared_disks.pop(index, None)
        if pre is not None:
            opened = _reopen_leaf(self.host, self.infos[index], pre)
        elif prepared is not None:
            # The host takes it over.
            opened = self.host.open_disk(self.infos[index],
                                         prepared=prepared)
        else:
            opened = self.host.open_disk(self._read_from(index, with_leaf))
        try:
            if not with_leaf and len(opened.chain.layers) > MAX_CHAIN:
                raise MigrationError(
                    name=self.name, reason='the chain of disk %d has %d '
                    'layers; another snapshot would near XenServer\'s '
                    'limit: cut over now' % (index,
                                             len(opened.chain.layers)))
            changed = (kvm_changes((self.m.get('cutover') or {})
                                   .get('details')) if with_leaf else None)
            _update_disk(self.store, self.name, disk, opened.chain,
                         with_leaf, f, self.writers[index], self.progress,
                         changed=changed, lost=self.lost)
            self.top[index] = opened.chain.layers[0].identity
            _record_size(self.store, self.name, disk,
                         self.infos[index].virtual_size)
        finally:
            keep = getattr(opened, 'keep_attachment', None)
            if with_leaf and keep is not None:
                # A halted VM's disk attached to dom0 to be read: detached
                # after the downtime (detach_sources), not inside it.
                attachment = keep()
                if attachment is not None:
                    self.attachments.append(attachment)
            opened.close()
        return {'layers': f.layers - before[0],
                'bytes_written': f.written - before[1],
                'files_size': f.files - before[2],
                'rewritten': len(f.rewrites) > before[3],
                'top': self.top[index]}

    def _read_from(self, index, with_leaf):
        """Where disk ``index``'s layers are read: its VDI's chain; in a
        sync of a disk on an LVM SR, the chain of the VDI the sync's
        snapshot took of it (:func:`snapshot_vdis`).  Its parents are the
        same layers as the running VDI's (the snapshot made both children
        of the base it left), and the VM's leaf, which a sync does not
        apply, is not opened: SM deactivates the VM's LVs at a shutdown
        or a migration, and, on a pool member, another tool's snapshot
        deactivates the leaf first (``_updateSlavesPreClone``), each of
        which a reader holding an LV open stops or leaves half-done.  The
        snapshot's VDI, attached read-only to the control domain
        (:mod:`any2kvm_os.sources.xenserver.lvm`), holds every LV read
        with SM's refcounts."""
        info = self.infos[index]
        if with_leaf or not on_lvm(info):
            return info
        if self.snap_infos is None:
            self.snap_infos = snapshot_infos(self.host, self.snap,
                                             self.infos)
        return self.snap_infos[index]

    def open_chains(self):
        """Before the shutdown: each disk's chain found and opened (the
        SFTP session started, the SR listed, every layer's metadata
        read), none of which needs the VM down; after it only each
        leaf is read again (:func:`_reopen_leaf`).  A disk on an LVM SR
        is opened after the shutdown; before it, what can be is prepared
        (``host.prepare_disk``: its dom0 VBD created, plugged in the
        downtime in the round trip that lists the volume group)."""
        prepare = getattr(self.host, 'prepare_disk', None)
        for index, info in sorted(self.infos.items()):
            if on_lvm(info):
                # SM deactivates the VM's LVs at its shutdown, and leaves
                # one held open active with no refcount (lvmcache: "LV
                # open"): opened after it (attached to dom0 then:
                # sources.xenserver.lvm).
                prepared = prepare(info) if prepare is not None else None
                if prepared is not None:
                    self.prepared_disks[index] = prepared
                continue
            self.chains[index] = self.host.open_disk(info)
        return {'layers': dict((str(i), len(c.chain.layers))
                               for i, c in self.chains.items()),
                'prepared': sorted(self.prepared_disks)}

    def close_chains(self):
        chains, self.chains = self.chains, {}
        prepared, self.prepared_disks = self.prepared_disks, {}
        for opened in chains.values():
            try:
                opened.close()
            except Exception as e:
                LOG.warning('could not close a chain: %s', _one_line(e))
        for attachment in prepared.values():
            # Created, never plugged: destroyed (an error is logged).
            attachment.unplug(plugged=False)

    def close_targets(self, exc_info=None):
        """Flush and close (detach) the targets; again: nothing."""
        self.times.setdefault('applied', time.time())
        stack, self._targets = self._targets, contextlib.ExitStack()
        if exc_info:
            stack.__exit__(*exc_info)
        else:
            stack.close()
        self.writers = None
        self.times['closed'] = time.time()

    def inspect_guest(self):
        """After the layers of a sync: what is inside the targets."""
        self.inspected = self.guest.after_sync(
            self.store, self.name, self.writers, self.found.facts)
        return {'inspected': self.inspected is not None}

    def fix_guest(self):
        """After the last layers of a cutover, targets closed: the
        guest's recorded properties, or the targets fixed (``--fix``).
        A fix is recorded at once (:func:`kvm_changes`): a cutover cut
        short after it is run again over targets that differ from the
        source."""
        got = self.guest.at_cutover(self.store, self.name, self.dest,
                                    self.found.facts, m=self.record) or {}
        self.details.update(got)
        change = kvm_changes(got)
        if change:
            self._record_change(dict(got, targets_changed=change))
        if self.guest.fix:
            # A "fix" phase of the downtime only when there was one:
            # else the properties' moment goes to "finish".
            self.times['fixed'] = time.time()
        return {'fixed': True}

    def _record_change(self, details):
        """``details`` of the open cutover recorded now (not at its end):
        what changed the targets on the KVM side (:func:`kvm_changes`)."""
        self.store.cutover_recorded(self.name, self.times['shutdown'], None,
                                    details=details)

    def record_sync(self):
        # Every disk rewritten from the base: the snapshots found gone no
        # longer protect anything the targets hold.  (Recorded only now:
        # a run cut short before finds them gone again, and rewrites.)
        for snapshot_id in self.lost or ():
            self.store.snapshot_removed(self.name, snapshot_id)
        self.result = _result(self.name, self.started, self.host,
                              self.read0, self.figures, snapshot=self.snap,
                              guest=self.inspected,
                              steps=self.steps_so_far())
        r = self.result
        self.store.sync_recorded(self.name, self.started, time.time(),
                                 r['layers_applied'], r['bytes_read'],
                                 r['bytes_written'])
        self.store.set_status(self.name, 'synced')
        return dict((k, r[k]) for k in (
            'layers_applied', 'bytes_read', 'bytes_written', 'files_size',
            'seconds'))

    # -- cutover --------------------------------------------------------------

    def prepare_server(self):
        """Before the shutdown: a refusal costs no downtime."""
        self.server.prepare(self.store.get(self.name), self.found.facts)
        self.prepared = self.server

    def discard_server(self):
        prepared, self.prepared = self.prepared, None
        if prepared is not None:
            try:
                prepared.discard()
            except Exception as e:
                LOG.warning('could not undo the server plan: %s',
                            _one_line(e))

    def prepare_shutdown(self):
        """Before the downtime: the cutover recorded (committed) as
        started, so that a run killed from here on is known to the next
        (which counts the downtime from this time, a little before the
        request: never less than it was); and the shutdown command
        started on the host, held at its gate (``host.arm``), so that
        the request costs no new channel or session."""
        if self.found.power_state != 'halted':
            # A snapshot of the migration deleted since the last sync
            # (the GC may have merged writes into layers the targets
            # hold, in place, which no fingerprint shows): a sync
            # rewrites the disks while the VM runs, not the downtime.
            argvs = _adopt_commands(self.m)
            run = prefetching(self.host, argvs)
            lost = _lost_snapshots(self.m, [run(a) for a in argvs], argvs)
            if lost:
                raise MigrationError(
                    name=self.name, reason='snapshot(s) %s of the migration '
                    'are gone from the host (deleted by someone else?): '
                    'XenServer may have merged later writes into layers '
                    'the targets hold; run "migration sync %s" (it '
                    'rewrites the disks while the VM runs), then cut over; '
                    'nothing was shut down' % (', '.join(lost), self.name))
        t = self.times
        prior = self.m.get('cutover')
        if self.found.power_state == 'halted' and prior and \
                prior['shutdown_at']:
            # A cutover cut short after the shutdown, run again (its
            # targets complete or not: it did not end): the downtime
            # started with the first request.
            t['first_request'] = prior['shutdown_at']
        self.store.cutover_recorded(
            self.name, t.get('first_request') or time.time(), None)
        arm = getattr(self.host, 'arm', None)
        if self.found.power_state != 'halted' and arm is not None:
            try:
                self.armed = arm(xe.vm_shutdown(self.vm_uuid))
            except exception.Any2KvmError as e:
                LOG.info('the shutdown could not be prepared (%s): it '
                         'is asked for when its time comes', _one_line(e))
        return {'armed': self.armed is not None}

    def disarm(self):
        armed, self.armed = self.armed, None
        if armed is not None:
            armed.close()

    def shutdown(self, force, timeout):
        """The downtime starts: the shutdown request (recorded before,
        by :meth:`prepare_shutdown`)."""
        t = self.times
        t['shutdown'] = t.get('first_request') or time.time()
        if self.found.power_state != 'halted':
            pending = _shut_down(self.host, self.vm_uuid, force, timeout,
                                 armed=self.armed)
            prior = self.m.get('cutover')
            if (pending and prior and prior['completed_at'] is None and
                    prior['shutdown_at']):
                # The clean shutdown under way was asked for by the
                # cutover before, cut short while the guest went down:
                # the downtime began with that request (at most a little
                # before it: never less than it was).
                t['shutdown'] = min(t['shutdown'], prior['shutdown_at'])
        self.disarm()
        t['halted'] = time.time()
        return {'was': self.found.power_state,
                'seconds': round(t['halted'] - t['shutdown'], 3)}

    def finish_targets(self):
        """Make the targets ready (bootable volumes, metadata)."""
        _fenced(self.store, self.name)
        fixed, self.details = self.details, self.dest.finish(
            self.name, self.disks, self.found.facts) or {}
        self.details.update(fixed)
        self.times['ready'] = self.times['completed'] = time.time()
        return dict(self.details)

    def create_server(self):
        self.prepared = None
        # Before the server exists: a guest that boots writes to the
        # volumes, and a run killed from here on must know it (a
        # rollback then deletes the server the volumes are attached to,
        # and has them written again whole).
        prior = ((self.store.get(self.name).get('cutover') or {}).get(
            'details') or {}).get('targets_changed')
        self._record_change({'targets_changed': SERVER_CHANGE})

        def created(made):
            # Its id as soon as Nova has it: a rollback deletes it, even
            # when its boot was never seen.
            self._record_change(made)
        try:
            made = self.server.create(self.store.get(self.name),
                                      created=created) or {}
        except BaseException as e:
            if getattr(e, 'deleted', False):
                # Its boot not verified, the server deleted again: a
                # cutover may run again (the targets still count as
                # changed: its guest ran).
                self._record_change({'server_id': None,
                                     'server_deleted': e.server_id})
            elif getattr(e, 'no_server', False):
                # Nova refused it (or was not asked): no guest ran on
                # the volumes, and a cutover run again need not write
                # them whole.
                self._record_change({'targets_changed': prior})
            raise
        self.details.update(made)
        self.times['completed'] = time.time()
        return made

    def record_downtime(self):
        t = self.times
        # Where the downtime went, in seconds.
        self.phases = {'shutdown': t['halted'] - t['shutdown'],
                       'apply': t['applied'] - t['halted'],
                       'close': t['closed'] - t['applied'],
                       'fix': t.get('fixed', t['closed']) - t['closed'],
                       'finish': t['ready'] - t.get('fixed', t['closed']),
                       'server': t['completed'] - t['ready'],
                       # A cutover run again after one cut short after
                       # the shutdown: the downtime began with the first
                       # request, before this run started.
                       'before_shutdown': max(0.0, t['shutdown'] -
                                              self.started)}
        self.phases = dict((k, round(v, 3)) for k, v in self.phases.items())
        self.store.cutover_recorded(self.name, t['shutdown'],
                                    t['completed'], top_layers=self.top,
                                    details=self.details,
                                    phases=self.phases)
        return {'downtime': round(t['completed'] - t['shutdown'], 3)}

    def detach_sources(self):
        """After the downtime: the halted VM's disks that were attached
        to dom0 to be read (on an LVM SR) detached (a detach that fails
        is a warning naming the VBD: the targets are complete)."""
        attachments, self.attachments = self.attachments, []
        for attachment in attachments:
            attachment.unplug()
        return {'detached': len(attachments)}

    def remove_snapshots(self):
        """After the downtime: the VM checked to be halted still (in
        the round trip that lists the snapshots), then its snapshots
        removed.  A VM started during the cutover (by someone else: it
        may have written to its disks while the last layers were read)
        fails the cutover, and the layers read last are forgotten, so
        that the next cutover (which shuts it down again) reads them
        again."""
        argv = xe.power_state(self.vm_uuid)
        run = prefetching(self.host, [argv] + _adopt_commands(
            self.store.get(self.name)))
        state = xe.parse_value(run(argv), argv).strip()
        if state != 'halted' and self.finishing is not None:
            raise MigrationError(
                name=self.name, reason='VM %s is %s again after its '
                'cutover completed: it may have written to its disks since; '
                '"migration rollback %s" forgets what the cutover applied '
                '(and deletes its server), then sync and cut over again'
                % (self.vm_uuid, state, self.name))
        if state != 'halted':
            for index, top in sorted(self.top.items()):
                self.store.forget_layers(self.name, index, top)
            raise MigrationError(
                name=self.name, reason='VM %s is %s: it was started '
                'during the cutover, and may have written to its disks '
                'after its last layers were read; they are forgotten: run '
                'cutover again (it shuts the VM down and reads them '
                'again)' % (self.vm_uuid, state))
        self.removed = _remove_snapshots(self.store, self.name, self.host,
                                         run)
        return {'removed': self.removed}

    def steps_so_far(self):
        """{step name: seconds} of the steps that ran before this one, in
        their order (the record step itself is under way)."""
        return dict((k, round(v, 3)) for k, v in self.step_seconds.items())

    def release_sources(self):
        """(Finishing a complete cutover) the halted VM's disks that a
        killed run left attached to dom0 released: the VM can start
        again some day (a rollback)."""
        release = getattr(self.host, 'release_stale', None)
        if release is None:
            return {'released': 0}
        return {'released': release([d['source_id']
                                     for d in self.m['disks']])}

    def record_finished(self):
        """(Finishing a complete cutover) done, with the downtime its
        complete run recorded."""
        c = self.finishing
        self.result = _result(
            self.name, self.started, self.host, self.read0, self.figures,
            downtime=round(c['downtime'], 3), snapshots_removed=self.removed,
            details=dict(c.get('details') or {}),
            phases=dict(c.get('phases') or {}), finished=True,
            steps=self.steps_so_far())
        self.store.set_status(self.name, 'done')
        return {'status': 'done'}

    def record_cutover(self):
        t = self.times
        self.result = _result(
            self.name, self.started, self.host, self.read0, self.figures,
            downtime=round(t['completed'] - t['shutdown'], 3),
            shutdown_seconds=round(t['halted'] - t['shutdown'], 3),
            snapshots_removed=self.removed, details=self.details,
            phases={k: round(v, 3) for k, v in self.phases.items()},
            steps=self.steps_so_far())
        self.store.set_status(self.name, 'done')
        return {'status': 'done'}

    # -- the end, whatever it was ---------------------------------------------

    def failed(self, e):
        """The flow failed with ``e`` (raised again by the caller): the
        targets closed, the server plan undone, the migration marked
        failed (and a failed sync recorded) once it was marked syncing or
        cutting-over, a connection that failed included ("could not
        connect to the host: ...")."""
        self._interrupted = not isinstance(e, Exception)
        try:
            self.close_targets(sys.exc_info())
        except Exception as e2:
            LOG.warning('could not close the targets: %s', _one_line(e2))
        self.disarm()
        self.close_chains()
        self.discard_server()
        if not self.marked:
            # Refused before anything was marked (the cloud's check).
            return
        # The host never answered: say so, not "syncing" for ever.
        msg = _one_line(e, prefix='' if self.host is not None else
                        'could not connect to the host: ')
        if self.status == 'cutting-over' and 'halted' in self.times:
            # The VM was shut down: that is what the operator must know
            # first (the error itself may be an interruption's one word).
            LOG.warning('migration %s: VM %s was shut down for the cutover '
                        'and stays halted: run "migration cutover %s" again '
                        'to finish, or "migration rollback %s" to start it '
                        'again', self.name, self.vm_uuid, self.name,
                        self.name)
            msg += ' (the source VM was shut down and stays halted)'
        if self.status == 'syncing':
            self.store.sync_recorded(
                self.name, self.started, time.time(), self.figures.layers,
                0 if self.host is None else
                self.host.bytes_read - self.read0, self.figures.written,
                ok=False, error=msg)
        self.store.set_status(self.name, 'failed', error=msg)

    def close(self):
        # After failed() has recorded the failure: the host's first work
        # is waited for here, not before.
        ended = self._end_ahead()
        self.disarm()
        self.close_chains()
        if ended:
            # A cutover that failed after it read a disk attached to dom0.
            self.detach_sources()
        if self.host is not None and ended:
            self.host.close()


#: What an operator may do with a migration in a state that refuses
#: a sync or a cutover.
_NEXT = {'done': ' (its cutover is complete; "migration rollback NAME" '
                 'starts the source VM again, then sync and cut over)',
         'aborted': ' (aborted: create a new migration of the VM)'}


def _run(store, run, operation, make_steps, ahead):
    """The host's first work started (:meth:`_Run.start_ahead`, with
    ``ahead``), then the steps ``make_steps(run)`` run as a TaskFlow flow
    (:mod:`.flows`): on a failure, ``run.failed``; the host closed at the
    end."""
    try:
        run.start_ahead(ahead)
        flows = _flows()
        flows.run(store, run.name, operation,
                  flows.flow(operation, make_steps(run)))
    except BaseException as e:
        run.failed(e)
        raise
    finally:
        run.close()
    return run.result


def _sync_steps(run):
    """connect, snapshot, discover, open the targets, one task per disk
    applying its layers, close the targets, record the figures."""
    step = functools.partial(_flows().Step, timings=run.step_seconds)
    return ([step('connect', run.connect),
             step('snapshot', run.snapshot),
             step('discover', run.discover),
             step('open-targets', run.open_targets,
                  undo=run.close_targets)] +
            [step('apply-disk-%d' % d['index'],
                  functools.partial(run.apply, d['index'], False))
             for d in run.m['disks']] +
            ([step('inspect-guest', run.inspect_guest)]
             if run.guest is not None else []) +
            [step('close-targets', run.close_targets),
             step('record', run.record_sync)])


def _cutover_steps(run, force, timeout):
    """What does not need the VM down first (connect, discover, plan the
    server, open the targets); then the shutdown, one task per disk
    applying the rest (leaf included), close and finish the targets,
    create the server, record the downtime; then detach what was attached
    to dom0 to be read (disks on an LVM SR), remove the snapshots.
    A step of its own (a check of the targets, say) goes in this list."""
    step = functools.partial(_flows().Step, timings=run.step_seconds)
    steps = [step('connect', run.connect),
             step('discover', run.discover)]
    if run.server is not None:
        steps.append(step('prepare-server', run.prepare_server,
                          undo=run.discard_server))
    steps += [step('open-targets', run.open_targets,
                   undo=run.close_targets),
              step('open-chains', run.open_chains, undo=run.close_chains),
              step('prepare-shutdown', run.prepare_shutdown,
                   undo=run.disarm),
              step('shutdown', functools.partial(run.shutdown, force,
                                                 timeout), quiet=True)]
    # Inside the downtime, each task's records wait for record-downtime
    # (flows.run): TaskFlow's small transactions are no downtime.
    steps += [step('apply-disk-%d' % d['index'],
                   functools.partial(run.apply, d['index'], True),
                   quiet=True)
              for d in run.m['disks']]
    steps.append(step('close-targets', run.close_targets, quiet=True))
    if run.guest is not None:
        steps.append(step('fix-guest', run.fix_guest, quiet=True))
    steps.append(step('finish-targets', run.finish_targets, quiet=True))
    if run.server is not None:
        steps.append(step('create-server', run.create_server, quiet=True))
    steps += [step('record-downtime', run.record_downtime),
              step('detach-sources', run.detach_sources),
              step('remove-snapshots', run.remove_snapshots),
              step('record', run.record_cutover)]
    return steps


def _result(name, started, host, read0, figures, **extra):
    out = {'name': name, 'layers_applied': figures.layers,
           'bytes_read': host.bytes_read - read0,
           'bytes_written': figures.written,
           'files_size': figures.files,
           'seconds': round(time.time() - started, 3),
           'rewrites': figures.rewrites}
    out.update(extra)
    return out


# -- sync ---------------------------------------------------------------------

def snapshot_name(name):
    return 'any2kvm migration %s' % name


def new_snapshot_tag():
    """A tag unique to one migration, set by ``create``."""
    return 'any2kvm-migration-%s' % uuid_mod.uuid4()


def snapshot_tag(m):
    """The name-description every snapshot of migration ``m`` gets (None
    for a migration created before tags: its snapshots are found by
    name)."""
    return (m.get('target_options') or {}).get('snapshot_tag')


def snapshot_label(m):
    """The name-label of migration ``m``'s snapshots: ``any2kvm migration
    NAME (TAG)``, or without a tag (a migration created before tags)
    :func:`snapshot_name`.  The tag is in the label because xapi sets
    the label with the snapshot (VM.snapshot) and the description in a
    call of its own after it (xe's vm_clone_aux:
    VM.set_name_description): a run cut between the two, or a second
    call that fails, leaves a snapshot that only its label names."""
    tag = snapshot_tag(m)
    name = snapshot_name(m['name'])
    return '%s (%s)' % (name, tag) if tag else name


def _adopt_commands(m):
    """The listings of migration ``m``'s snapshots (:func:`_adopt`): by
    its label (:func:`snapshot_label`), and for a tagged migration by its
    tag as the description too (the snapshots taken before the label
    carried the tag).  Exact matches of the host's own filters: no
    user-written text is parsed."""
    vm = m['target_options']['vm_uuid']
    tag = snapshot_tag(m)
    # params=uuid: --minimal prints the first field printed, which is the
    # uuid only by xapi's table order (cli_printer.ml).
    return [xe.list_command('snapshot', [('snapshot-of', vm), mine],
                            ('uuid',), minimal=True)
            for mine in [('name-label', snapshot_label(m))] + (
                [('name-description', tag)] if tag else [])]


def _lost_snapshots(m, outputs, argvs):
    """The snapshots migration ``m`` took and has not removed that the
    host's listing (``outputs`` of :func:`_adopt_commands` ``argvs``)
    no longer has: someone deleted them.  SM's garbage collector may then
    merge later writes into a layer the targets already hold, in place
    (its name, id, header and block table kept: a snapshot-coalesce of
    the VM's leaf into its parent that stops before its rename), which
    no fingerprint shows."""
    listed = set()
    for output, argv in zip(outputs, argvs):
        listed.update(u.lower() for u in xe.parse_minimal(output, argv))
    return [s['snapshot_id'] for s in m['snapshots']
            if not s.get('removed_at') and s['snapshot_id'] not in listed]


def _adopt(store, name, m, outputs, argvs):
    """Record the snapshots of ``outputs`` (of :func:`_adopt_commands`
    ``argvs``) that migration ``m`` does not know; returns how many."""
    known = set(s['snapshot_id'] for s in m['snapshots'])
    adopted = []
    for output, argv in zip(outputs, argvs):
        for u in xe.parse_minimal(output, argv):
            u = u.lower()
            if u not in known and u not in adopted:
                LOG.warning('snapshot %s of migration %s was taken by a '
                            'run that stopped before recording it: '
                            'recorded now', u, name)
                store.snapshot_taken(name, u)
                adopted.append(u)
    return len(adopted)


def _adopt_snapshots(store, name, host, run=None):
    """Record the snapshots of the migration's VM that are the
    migration's (its tag as name-description, or for an untagged
    migration its snapshot name) but unrecorded: a run killed, or cut
    from the host, after ``xe vm-snapshot`` and before the store heard of
    it.  Nothing else is ever matched.  Returns how many were found.
    ``run``: what runs the query (default ``host.run``)."""
    m = store.get(name)
    argvs = _adopt_commands(m)
    run = run or host.run
    return _adopt(store, name, m, [run(a) for a in argvs], argvs)


def sync(store, name, limits=None, args=None, connect=None, cloud=None,
         dest=None, progress=None, guest=None):
    """Snapshot the running VM and apply every stable layer the targets
    lack (every target opened, or attached, once).  Returns the figures of
    this sync.  Runs as a TaskFlow flow (:func:`_sync_steps`).
    ``guest``: a :class:`~any2kvm_os.migration.guest_step.GuestStep` that
    inspects the synced targets (the task ``inspect-guest``)."""
    with _Held(store, name, 'sync'):
        run = _Run(store, name, SYNCABLE, 'syncing', 'nothing to sync',
                   limits, args, connect, cloud, dest, progress,
                   guest=guest)
        made = _server_of(run.m.get('cutover'))
        if made:
            # Its server may run from the volumes: a sync would write
            # under it.
            raise MigrationError(name=name, reason='its last cutover made '
                                 'server %s from the volumes, which may run '
                                 'from them: "migration rollback %s" deletes '
                                 'it and starts the source VM again (then '
                                 'sync)' % (made, name))
        return _run(store, run, 'sync', _sync_steps, SNAPSHOT)


#: The longest error text kept for ``show`` (and logged on one line): a
#: failed fix over many volumes names each of them, and a hypervisor's
#: answer quoted in an error is bounded here, not by its author.
MAX_ERROR = 4000


def _one_line(e, prefix=''):
    if isinstance(e, KeyboardInterrupt) and not str(e):
        text = prefix + 'interrupted (Ctrl-C)'
    else:
        text = prefix + (' '.join(str(e).split()) or type(e).__name__)
    if len(text) > MAX_ERROR:
        text = text[:MAX_ERROR - 20] + ' ... (%d more)' % (
            len(text) - MAX_ERROR + 20)
    return text


# -- batched xe commands ------------------------------------------------------

def run_side_by_side(host, batches, mutating=False, timeout=None):
    """Several batches (:func:`run_batch`) at once, each on a channel of
    its own, when the host can (``host.run_batches``), one after the
    other otherwise.  For each batch, its outputs or the
    :class:`~any2kvm_os.exception.Any2KvmError` it failed with: each
    judged on its own."""
    many = getattr(host, 'run_batches', None)
    if many is not None:
        return many(batches, mutating=mutating, timeout=timeout)
    out = []
    for commands in batches:
        try:
            out.append(run_batch(host, commands, mutating=mutating,
                                 timeout=timeout))
        except exception.Any2KvmError as e:
            out.append(e)
    return out


def run_batch(host, commands, mutating=False, timeout=None):
    """Run several ``xe`` commands in one round trip when the host can
    (``host.run_many``), one by one otherwise; stops at the first that
    fails.  Returns their outputs."""
    many = getattr(host, 'run_many', None)
    if many is not None:
        return many(commands, mutating=mutating, timeout=timeout)
    return [host.run(argv, mutating=mutating, timeout=timeout)
            for argv in commands]


# -- cutover ------------------------------------------------------------------

def _remove_snapshots(store, name, host, run=None):
    """Remove every snapshot the migration made: those recorded, and those
    of its name a crash left unrecorded (taken, killed before the store
    heard of it); one already gone from the host counts as removed.  The
    removals go in one round trip; when that fails, one by one.  ``run``:
    what runs the query of the snapshots (default ``host.run``)."""
    _adopt_snapshots(store, name, host, run)
    m = store.get(name)
    left = [s['snapshot_id'] for s in m['snapshots']
            if not s.get('removed_at')]
    if not left:
        return 0
    # Their disks, asked for first: xe's uninstall destroys the snapshot's
    # record, then each disk (cli_operations.ml vm_uninstall_common), so
    # one that fails half-way leaves disks no record names any more.
    disks = _snapshot_disks(host, left)
    try:
        run_batch(host, [xe.snapshot_uninstall(u) for u in left],
                  mutating=True)
    except exception.Any2KvmError as e:
        LOG.info('batched snapshot removal failed (%s): one by one',
                 _one_line(e))
    else:
        for u in left:
            store.snapshot_removed(name, u)
        return len(left)
    # A sync killed while it read a snapshot's disk on an LVM SR left it
    # attached to dom0 (sources.xenserver.lvm), where xapi refuses to
    # destroy it (VDI_IN_USE): released first.
    release = getattr(host, 'release_stale', None)
    if release is not None:
        try:
            release([v for u in left for v in disks.get(u, ())])
        except exception.Any2KvmError as e:
            LOG.info('the snapshots\' disks\' attachments could not be '
                     'checked (%s)', _one_line(e))
    removed = 0
    for u in left:
        try:
            snapshots.remove_snapshot(
                lambda argv: host.run(argv, mutating=True), u)
        except exception.Any2KvmError:
            argv = xe.list_command('snapshot', [('uuid', u)], ('uuid',),
                                   minimal=True)
            if xe.parse_minimal(host.run(argv), argv):
                raise
        store.snapshot_removed(name, u)
        removed += 1
    _destroy_left_disks(host, [v for u in left for v in disks.get(u, ())])
    return removed


def _snapshot_disks(host, snaps):
    """{snapshot uuid: [its disks' VDI uuids]}, in one round trip; {}
    when the host does not answer (the removal goes on without)."""
    argvs = [xe.list_command('vbd', [('vm-uuid', u), ('type', 'Disk')],
                             ('vdi-uuid',), minimal=True) for u in snaps]
    try:
        outs = run_batch(host, argvs)
        return dict((u, [v.lower() for v in xe.parse_minimal(out, argv)
                         if location_mod.is_uuid(v)])
                    for u, out, argv in zip(snaps, outs, argvs))
    except exception.Any2KvmError as e:
        LOG.info('the snapshots\' disks could not be listed (%s)',
                 _one_line(e))
        return {}


def on_lvm(info):
    """Whether the disk ``info`` (a DiskInfo) is on an LVM SR."""
    return getattr(info, 'storage', 'file') == 'lvm'


def snapshot_infos(host, snap, infos):
    """{disk index: DiskInfo} of the disks of ``infos`` ({index:
    DiskInfo}) on an LVM SR, each as the VDI snapshot ``snap`` took of
    it holds it: what a sync (:meth:`_Run._read_from`) and a verify
    after it read."""
    lvm = [(i, info) for i, info in sorted(infos.items(),
                                           key=lambda x: x[0])
           if on_lvm(info)]
    if not lvm:
        return {}
    vdis = snapshot_vdis(host, snap, [info.vdi_uuid for _, info in lvm])
    return dict((i, info.of_vdi(vdis[info.vdi_uuid])) for i, info in lvm)


def snapshot_vdis(host, snap, vdis):
    """{VDI uuid: the VDI of snapshot ``snap`` taken of it} for each of
    ``vdis`` (:func:`snapshots.vdis_taken_of`), the queries after the
    first in one round trip."""
    return snapshots.vdis_taken_of(
        host.run, lambda argvs: run_batch(host, argvs), snap, vdis,
        host=host.label)


def _destroy_left_disks(host, vdis):
    """Destroy the snapshot disks among ``vdis`` that an uninstall
    failing half-way left on the host (their snapshot is gone); one that
    cannot be destroyed is named in a warning, with the command."""
    for vdi in vdis:
        argv = xe.list_command('vdi', [('uuid', vdi)], ('uuid',),
                               minimal=True)
        try:
            if not xe.parse_minimal(host.run(argv), argv):
                continue
            host.run(xe.command('vdi-destroy', [('uuid', vdi)]),
                     mutating=True)
            LOG.warning('snapshot disk %s was left on the host when its '
                        'snapshot was removed: destroyed', vdi)
        except exception.Any2KvmError as e:
            LOG.warning('snapshot disk %s is left on the host (its '
                        'snapshot is removed): xe vdi-destroy uuid=%s (%s)',
                        vdi, vdi, _one_line(e))


def _shut_down(host, vm_uuid, force, timeout, armed=None):
    """Shut the VM down: ``xe vm-shutdown`` (clean: asks the guest),
    which returns once the VM is halted, and fails otherwise: its exit
    status is the answer, no second command is asked inside the
    downtime (``remove-snapshots`` checks, after it, that the VM is
    still halted: :meth:`_Run.remove_snapshots`).  ``armed``: the same
    command started before the downtime and held at its gate
    (``host.arm``): opening the gate is all the request costs.  With
    ``force``, a hard shutdown when the clean one fails.

    A clean shutdown refused because one is already under way (asked
    for by an earlier cutover that stopped waiting: xapi's goes on):
    without ``force``, the VM awaited halted up to ``timeout``
    (:func:`_await_pending_shutdown`); with it, stopped hard (which
    xapi allows beside the clean shutdown, and which cancels it).
    Returns True when the VM halted after such a refusal (the guest was
    going down before this request), else False."""
    try:
        if armed is not None and armed.ready:
            armed.fire(timeout)
        else:
            host.run(xe.vm_shutdown(vm_uuid), mutating=True,
                     timeout=timeout)
        return False
    except exception.Any2KvmError as e:
        pending = snapshots.clean_shutdown_pending(e)
        state = snapshots.power_state(host.run, vm_uuid)
        if state == 'halted':
            return pending
        if not force and pending:
            _await_pending_shutdown(host, vm_uuid, timeout)
            return True
        if not force:
            if getattr(e, 'timed_out', False):
                # Our wait ended before xapi's: its clean shutdown goes
                # on (VM.clean_shutdown waits for the guest up to
                # domain_shutdown_total_timeout, 1200 s by default), and
                # the guest may still halt on its own.
                raise exception.Any2KvmError(
                    'VM %s did not halt within %s s (--timeout); it is '
                    '%s for now, but the host may still be shutting it '
                    'down (xapi waits up to 1200 s by default): check its '
                    'power state, then run cutover again (with --force to '
                    'stop it hard at once)' % (
                        vm_uuid, '%g' % timeout if timeout else '?',
                        state))
            # xapi shuts down cleanly only a running VM: a paused or
            # suspended one is refused (VM_BAD_POWER_STATE) and said so.
            raise exception.Any2KvmError(
                'VM %s did not shut down cleanly (%s); it is still '
                '%s: run cutover again with --force to stop it hard'
                % (vm_uuid, _one_line(e), state))
        LOG.warning('clean shutdown failed (%s): stopping the VM hard',
                    _one_line(e))
        snapshots.shutdown(lambda argv: host.run(argv, mutating=True),
                           vm_uuid, force=True)
        snapshots.wait_for_power_state(host.run, vm_uuid, 'halted',
                                       timeout=timeout, interval=1,
                                       host=host.label)
        return pending


def _await_pending_shutdown(host, vm_uuid, timeout):
    """The host refused our clean shutdown: one is under way already
    (OTHER_OPERATION_IN_PROGRESS).  Wait for the VM to halt, up to
    ``timeout`` seconds (the downtime counts it: it is the shutdown's);
    if it does not, the same one line as a clean shutdown timed out."""
    LOG.warning('VM %s: a clean shutdown is already under way on the host '
                '(asked for earlier); waiting up to %s s for the VM to '
                'halt', vm_uuid, '%g' % timeout if timeout else '?')
    try:
        snapshots.wait_for_power_state(host.run, vm_uuid, 'halted',
                                       timeout=timeout or 600, interval=1,
                                       host=host.label)
    except errors.Timeout as e:
        raise exception.Any2KvmError(
            'VM %s did not halt within %s s (--timeout) of the clean '
            'shutdown already under way on the host; it is %s for now, '
            'but the host may still be shutting it down (xapi waits up '
            'to 1200 s by default): check its power state, then run '
            'cutover again (with --force to stop it hard at once)' % (
                vm_uuid, '%g' % timeout if timeout else '?',
                e.kwargs.get('state', 'not halted')))


def _no_server_left(store, name):
    """Refuse a cutover run again after one that created a server from
    the volumes and then stopped (its server may run from them: a second
    cutover would attach them again, or make a second server)."""
    m = _get(store, name)
    c = m.get('cutover') or {}
    server_id = (c.get('details') or {}).get('server_id')
    if server_id and m['status'] != 'done':
        raise MigrationError(name=name, reason='its last cutover created '
                             'server %s from the volumes and did not end; '
                             'the server may be running from them: '
                             '"migration rollback %s" deletes it and starts '
                             'the source VM again (then cut over again)'
                             % (server_id, name))


def cutover(store, name, force=False, timeout=600, limits=None, args=None,
            connect=None, cloud=None, dest=None, progress=None,
            server=None, guest=None):
    """Shut the VM down, apply the rest (leaf included), make the targets
    ready (:meth:`Destination.finish`), remove the migration's snapshots;
    the source stays halted.  Returns the figures, with ``downtime``
    (seconds from the shutdown request to the targets complete and
    ready).

    Everything that does not need the VM down happens before the
    shutdown request: the VM and its disks are found, the targets opened
    (volumes attached) once, and ``server.prepare()`` (when a server is
    to be created) may refuse at no downtime.  After it, one batched
    round trip shuts the VM down, then only the last layers are read.
    Runs as a TaskFlow flow (:func:`_cutover_steps`).  ``guest``: a
    :class:`~any2kvm_os.migration.guest_step.GuestStep`: the guest's
    properties recorded by a sync, or (``--fix``) the targets fixed after
    the last layers (the task ``fix-guest``, the ``fix`` phase of the
    downtime)."""
    with _Held(store, name, 'cutover'):
        c = _get(store, name).get('cutover')
        if c and c['completed_at'] is not None and _server_of(c):
            # Complete (the targets ready, the server made and booted),
            # then cut short: only what was left is done (the server is
            # the migrated VM now: no second one, no second downtime).
            # Without a server, the cutover is run again as it was: the
            # leaf applied again (the VM may have run since).
            run = _Run(store, name, CUTTABLE, 'cutting-over',
                       'cannot cut over', limits, args, connect, cloud,
                       dest, progress, guest=None)
            run.finishing = c
            return _run(store, run, 'cutover', _finish_steps, None)
        _no_server_left(store, name)
        if server is not None:
            server.check(_get(store, name))
        run = _Run(store, name, CUTTABLE, 'cutting-over', 'cannot cut over',
                   limits, args, connect, cloud, dest, progress, server,
                   guest=guest)
        return _run(store, run, 'cutover', functools.partial(
            _cutover_steps, force=force, timeout=timeout), QUERIES)


def _finish_steps(run):
    """What a cutover that completed (its targets ready, its downtime
    recorded) and then stopped left: connect, release the VM's disks a
    killed run left attached to dom0, remove the snapshots (the VM
    checked halted still), record the migration done."""
    step = functools.partial(_flows().Step, timings=run.step_seconds)
    return [step('connect', run.connect),
            step('release-sources', run.release_sources),
            step('remove-snapshots', run.remove_snapshots),
            step('record', run.record_finished)]


def _forget_cutover_layers(store, name, m, c, changed):
    """What a cutover ``c`` of migration ``m`` that will not be completed
    (rolled back, or the VM found running by a sync) leaves in the
    records, forgotten: each disk's leaf it applied (the VM runs again
    and writes to it: the next sync copies it again as an ordinary
    layer), or, when the targets were ``changed`` on the KVM side
    (:func:`kvm_changes`), every layer, with the :data:`KVM_MARK` that
    makes the next sync write them again whole.  Returns how many layer
    records were forgotten."""
    forgotten = 0
    for disk in m['disks']:
        if changed and disk['applied']:
            # The targets hold what the KVM side wrote: the next
            # sync writes them again whole (the mark).
            store.forget_layers(name, disk['index'],
                                disk['applied'][0]['layer_id'])
            forgotten += len(disk['applied'])
            store.layer_started(name, disk['index'], KVM_MARK,
                                'changed on KVM: %s' % changed,
                                REWRITE + KVM_MARK)
            continue
        # The top layer recorded, or (a cutover cut short) a layer
        # read from the VDI's own file: the leaf the VM writes to.
        top = c['top_layers'].get(str(disk['index']))
        leaves = leaf_names(disk)
        for k, a in enumerate(disk['applied']):
            if a['layer_id'] == top or a['name'] in leaves:
                store.forget_layers(name, disk['index'], a['layer_id'])
                forgotten += len(disk['applied']) - k
                break
    if changed:
        LOG.warning('migration %s: the targets were changed on the '
                    'KVM side (%s): the next sync writes them '
                    'again whole', name, changed)
    return forgotten


def _close_cutover(store, name, m):
    """The open cutover of ``m`` closed as rolled back (it stays in the
    history); what ``cutover --fix`` found of the fixed targets, which
    the next sync writes again whole, forgotten."""
    store.rollback_recorded(name)
    if (m.get('guest') or {}).get('inspected_by') == 'cutover --fix':
        # (the next inspection, at a sync or a cutover --fix, records
        # the guest again)
        store.guest_recorded(name, None)


def _server_of(c):
    """The server a cutover ``c`` made, or perhaps made (a cutover
    killed while it made one: found by its volumes' attachments): its
    id, '(id not recorded)', or None."""
    details = (c or {}).get('details') or {}
    if details.get('server_id'):
        return details['server_id']
    if details.get('targets_changed') == SERVER_CHANGE and \
            not details.get('server_deleted'):
        return '(id not recorded)'
    return None


# -- rollback -----------------------------------------------------------------

def rollback(store, name, limits=None, args=None, connect=None,
             server=None):
    """Undo a cutover: start the source VM again (``xe vm-start``; a
    paused VM is unpaused, a suspended one resumed), and
    forget each disk's top layer recorded at cutover (the restarted VM
    writes to it, so the next sync copies it again as an ordinary layer);
    the cutover stays in the history, the status goes back to 'synced'.
    ``server``: what deletes the server the cutover created (the volumes
    are kept).  Refused before a cutover.  Runs as a TaskFlow flow:
    delete-server, start-vm, forget-layers, record."""
    flows = _flows()
    with _Held(store, name, 'rollback'):
        m = _get(store, name)
        c = m.get('cutover')
        if c is None:
            raise MigrationError(name=name, reason='has no cutover to roll '
                                 'back (status %s)' % m['status'])
        result = {'name': name, 'server_deleted': None,
                  'aborted': m['status'] == 'aborted'}
        changed = kvm_changes(c['details'])
        # A server made (its id known), or perhaps made (a cutover killed
        # while it made one: it is found by its volumes' attachments).
        made = (c['details'].get('server_id') or
                c['details'].get('targets_changed') == SERVER_CHANGE)
        if server is None and made:
            raise MigrationError(name=name, reason='the cutover made server '
                                 '%s: rolling back needs the cloud to '
                                 'delete it' % (c['details'].get('server_id')
                                                or '(id not recorded)'))

        def delete_server():
            # The volumes must be free before the source starts again
            # and the next sync attaches them.
            _fenced(store, name)
            result['server_deleted'] = server.rollback(c['details'], m)
            return {'server_deleted': result['server_deleted']}

        def start_vm():
            host = _connect(m['location'], limits, args, connect, m=m,
                            fence=store.fence(name))
            try:
                vm_uuid = m['target_options']['vm_uuid']
                state = snapshots.power_state(host.run, vm_uuid)
                release = getattr(host, 'release_stale', None)
                if state != 'running' and release is not None:
                    # A disk a killed cutover left attached to dom0 (an
                    # LV being read) would keep the VM from starting; one
                    # another run holds (live, or another conversion
                    # host's) is named, with what removes it.
                    kept = []
                    release([d['source_id'] for d in m['disks']],
                            kept=kept)
                    if kept:
                        v = kept[0]
                        raise MigrationError(
                            name=name, reason='a disk of VM %s is attached '
                            'to the host\'s control domain by another '
                            'any2kvm run (%s; VBD %s%s), and the VM cannot '
                            'start while it is: wait for that run to end, '
                            'or, if it is gone, xe vbd-unplug uuid=%s; xe '
                            'vbd-destroy uuid=%s; then roll back again' % (
                                vm_uuid, v.tag, v.uuid,
                                ' and %d more' % (len(kept) - 1)
                                if len(kept) > 1 else '', v.uuid, v.uuid))
                if state != 'running':
                    # vm-start, vm-unpause or vm-resume, as the state asks
                    snapshots.start(
                        lambda argv: host.run(argv, mutating=True), vm_uuid,
                        state, host=host.label)
            finally:
                host.close()
            return {'was': state}

        def forget_layers():
            forgotten = _forget_cutover_layers(store, name, m, c, changed)
            result['layers_forgotten'] = forgotten
            if changed:
                result['rewrite'] = changed
            return {'layers_forgotten': forgotten, 'rewrite': changed}

        def record():
            _close_cutover(store, name, m)
            # An aborted migration stays aborted (its snapshots are gone:
            # it is not synced).
            if m['status'] != 'aborted':
                store.set_status(name, 'synced')

        steps = []
        if server is not None and made:
            steps.append(flows.Step('delete-server', delete_server))
        steps += [flows.Step('start-vm', start_vm),
                  flows.Step('forget-layers', forget_layers),
                  flows.Step('record', record)]
        flows.run(store, name, 'rollback', flows.flow('rollback', steps))
        return result


# -- abort, show, list --------------------------------------------------------

def abort(store, name, delete_targets=False, limits=None, args=None,
          connect=None, cloud=None, dest=None):
    """Remove the snapshots the migration made (never the VM or its
    disks); keep the targets, or delete them (files, or volumes).  Runs as
    a TaskFlow flow: remove-snapshots, delete-targets, record."""
    flows = _flows()
    with _Held(store, name, 'abort'):
        m = _get(store, name)
        if m['status'] in ('done',):
            raise MigrationError(name=name, reason='is done: nothing to '
                                 'abort')
        if delete_targets:
            dest = _destination(m, cloud, dest)
            dest.check()
        result = {'name': name, 'snapshots_removed': 0,
                  'targets_deleted': []}

        def remove():
            host = _connect(m['location'], limits, args, connect, m=m,
                            fence=store.fence(name))
            try:
                result['snapshots_removed'] = _remove_snapshots(
                    store, name, host)
            finally:
                host.close()
            return {'removed': result['snapshots_removed']}

        def delete():
            _fenced(store, name)
            result['targets_deleted'] = dest.delete(m['disks'])
            return {'deleted': result['targets_deleted']}

        steps = []
        # Once a sync has started, the host is asked even when none is
        # recorded: a sync killed after ``xe vm-snapshot`` and before the
        # store heard of it left one.
        if m['status'] != 'created' or any(
                not s.get('removed_at') for s in m['snapshots']):
            steps.append(flows.Step('remove-snapshots', remove))
        if delete_targets:
            steps.append(flows.Step('delete-targets', delete))
        steps.append(flows.Step('record', lambda: store.set_status(
            name, 'aborted')))
        flows.run(store, name, 'abort', flows.flow('abort', steps))
        c = m.get('cutover')
        if c and c.get('shutdown_at'):
            # A cutover began (it may have shut the VM down): abort
            # starts nothing.
            result['vm_left'] = m['target_options']['vm_uuid']
            LOG.warning('migration %s: its cutover shut VM %s down (or '
                        'asked to): abort leaves it as it is; start it '
                        'with "migration rollback %s" (or xe vm-start '
                        'uuid=%s)', name, result['vm_left'], name,
                        result['vm_left'])
        return result


def show(store, name):
    """The migration (:meth:`Store.get`) with ``last_run``: the last
    command's flow and the state of each of its tasks
    (:func:`.flows.last_run`; None before the first); and
    ``last_verify``, the last ``verify``'s (None before the first), kept
    however many commands ran after it, with ``since``: the syncs and
    cutovers that started after it ({'syncs': N, 'cutovers': N})."""
    m = _get(store, name)
    flows = _flows()
    m['last_run'] = flows.last_run(store, name, m.get('holder'))
    v = (m['last_run'] if (m['last_run'] or {}).get('operation') ==
         'verify' else flows.last_run(store, name, m.get('holder'),
                                      operation='verify'))
    if v is not None:
        # What changed the targets after it: its outcome no longer holds.
        started = v.get('started_at') or 0
        v = dict(v, since={
            'syncs': len([s for s in m['syncs']
                          if (s['started_at'] or 0) > started]),
            'cutovers': len([c for c in m.get('cutovers') or ()
                             if (c['shutdown_at'] or 0) > started])})
    m['last_verify'] = v
    return m


def list_migrations(store):
    return store.list()
