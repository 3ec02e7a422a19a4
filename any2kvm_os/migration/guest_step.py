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

"""Guest inspection in a warm migration, and ``migration cutover --fix``.

Operators count a migration's downtime in minutes, and a libguestfs
appliance costs one or two of them.  So:

``sync`` (:meth:`GuestStep.after_sync`)
    once the layers are applied, while the source VM still runs, the
    synced targets are inspected (read-only: the files, or the volumes
    still attached for the sync) and what was found (the guest report,
    the image properties and why, the warnings) is recorded in the state
    database (``guest``).  On by default (``--no-inspect``, or
    ``ANY2KVM_INSPECT=0``, skips it); a failure is a warning unless
    ``--inspect`` was given.  The guest's disks change little between a
    sync and the cutover (the same OS, kernel and drivers), so the
    cutover can trust it.
``cutover`` (:meth:`GuestStep.at_cutover`)
    without ``--fix``: no appliance; the recorded properties become the
    guest's (``guest_properties`` of the facts the destination's
    ``finish`` turns into a volume's image metadata).  With ``--fix``:
    after the last layers, inside the downtime (its ``fix`` phase), the
    targets are inspected and fixed in one appliance launch, all or
    nothing: files through qcow2 overlays committed only when every
    change succeeded (:func:`any2kvm_os.guest.inspect.inspect_files`),
    volumes after a Cinder snapshot they are reverted to when the fix
    fails (:mod:`any2kvm_os.targets.volume_fix`).  The properties then
    come from the guest as fixed, and are recorded.

The engine calls it in two places (see ``guest=`` of
:func:`~any2kvm_os.migration.engine.sync` and ``cutover``).
"""

import logging
import time

from any2kvm_os import exception

LOG = logging.getLogger(__name__)


def _inspect():
    """:mod:`any2kvm_os.guest.inspect`, imported when a step inspects or
    fixes (a ``sync --no-inspect`` never does)."""
    from any2kvm_os.guest import inspect as guest_inspect
    return guest_inspect


class GuestStep(object):
    """``flag``: ``--inspect`` True, ``--no-inspect`` False, None (on
    unless ANY2KVM_INSPECT=0); ``fix``: ``cutover --fix``; ``keep``:
    ``--keep-fix-snapshot``; ``settings``: how the probe runs;
    ``scratch_dir``: where a file fix keeps its overlays."""

    def __init__(self, flag=None, fix=False, keep=False, settings=None,
                 scratch_dir=None):
        if fix and flag is False:
            raise exception.Any2KvmError('--fix needs inspection: drop '
                                         '--no-inspect')
        if keep and not fix:
            raise exception.Any2KvmError('--keep-fix-snapshot goes with '
                                         '--fix')
        self.flag = flag
        self.fix = bool(fix)
        self.keep = bool(keep)
        self._settings = settings
        #: The configuration the settings are read from when first used.
        self._conf = None
        self.scratch_dir = scratch_dir

    @property
    def settings(self):
        """How the probe runs (:class:`~any2kvm_os.guest.inspect.
        Settings`), read from the configuration when first used."""
        if self._settings is None:
            self._settings = _inspect().Settings.from_conf(self._conf)
        return self._settings

    @classmethod
    def from_args(cls, args, limits=None):
        step = cls(flag=getattr(args, 'inspect', None),
                   fix=bool(getattr(args, 'fix', False)),
                   keep=bool(getattr(args, 'keep_fix_snapshot', False)),
                   scratch_dir=getattr(limits, 'scratch_dir', None))
        step._conf = getattr(limits, 'conf', None)
        return step

    # -- sync -----------------------------------------------------------------

    def after_sync(self, store, name, writers, facts=None):
        """Inspect the synced targets (``writers``: disk index -> the open
        writer, its ``path`` the file or attached volume) and record what
        was found; returns the record, or None (off, or failed with a
        warning)."""
        if self.flag is False:
            return None     # --no-inspect: nothing imported for it
        guest_inspect = _inspect()
        on, explicit = guest_inspect.enabled(self.flag)
        if not on:
            return None
        paths = [writers[i].path for i in sorted(writers)]
        started = time.time()
        try:
            summary = guest_inspect.summary(
                guest_inspect.run_probe(
                    self.settings, paths, name=paths[0],
                    slots=guest_inspect.slots_of(facts, sorted(writers))),
                facts)
        except exception.InspectionError as e:
            if explicit:
                raise
            LOG.warning('%s (the guest was not inspected; --no-inspect or '
                        '%s=0 skips inspection)', e, guest_inspect.ENV)
            return None
        return self._record(store, name, summary, 'sync', started)

    # -- cutover --------------------------------------------------------------

    def at_cutover(self, store, name, dest, facts, m=None):
        """After the last layers, the targets closed (volumes detached):
        with ``--fix``, inspect and fix the targets (see the module);
        then give ``facts`` the guest's properties (``guest_properties``)
        for the destination's ``finish``.  Returns what the cutover
        records of the guest (empty without a guest).  ``m``: the
        migration's record as read before the downtime (its guest and
        disks do not change in a cutover), else it is read here."""
        if m is None:
            m = store.get(name)
        record = m.get('guest')
        if self.fix:
            started = time.time()
            try:
                summary = self._fix(m, dest, facts,
                                    fence=store.fence(name))
            except exception.GuestFixError as e:
                # The targets hold what they held before the fix: say
                # that the cutover can be run again.
                raise exception.GuestFixError(
                    path=e.kwargs.get('path') or name, reason='%s; the VM '
                    'stays halted: run "migration cutover %s" again (with '
                    '--fix, or without it to take the guest as it is)'
                    % (e.kwargs.get('reason') or e, name))
            record = self._record(store, name, summary, 'cutover --fix',
                                  started)
        if not record:
            return {}
        if record.get('properties'):
            facts['guest_properties'] = dict(record['properties'])
        return details(record)

    def _fix(self, m, dest, facts, fence=None):
        guest_inspect = _inspect()
        disks = sorted(m['disks'], key=lambda d: d['index'])
        slots = guest_inspect.slots_of(facts, [d['index'] for d in disks])
        if m['target'] == 'file':
            result = guest_inspect.inspect_files(
                [d['target_ref'] for d in disks], self.settings, fix=True,
                scratch_dir=self.scratch_dir, slots=slots,
                before_commit=fence)
            return guest_inspect.summary(result, facts)
        if m['target'] == 'cinder':
            from any2kvm_os.targets import volume_fix
            cinder = dest.client()

            def attach(vol_id, vol_name, info):
                return dest._attached(vol_id, vol_name,
                                      formats=('raw', 'qcow2'), info=info)

            if fence is not None:
                # (The volumes, attached here, cannot be attached by the
                # command of another host meanwhile.)
                fence()
            result = volume_fix.fix_volumes(
                cinder, [(d['target_ref'], d['target_ref']) for d in disks],
                attach, self.settings, self.keep, dest.timeout,
                max(dest.poll, 1.0), slots=slots)
            summary = guest_inspect.summary(result, facts)
            summary['snapshots'] = result['snapshots']
            return summary
        raise exception.Any2KvmError('migration %s: --fix does not know '
                                     'target %s' % (m['name'], m['target']))

    def _record(self, store, name, summary, how, started):
        record = dict(summary)
        record['inspected_by'] = how
        record['inspected_at'] = time.time()
        record['seconds'] = round(record['inspected_at'] - started, 1)
        try:
            store.guest_recorded(name, record)
        except ValueError as e:
            # Something in the report looks secret: keep what the cutover
            # needs.
            LOG.warning('guest report not recorded in full: %s', e)
            record = {k: record.get(k) for k in (
                'properties', 'reasons', 'warnings', 'inspected_by',
                'inspected_at', 'seconds')}
            store.guest_recorded(name, record)
        return record


def describe(record):
    """One line of the guest of a record: "linux debian 12 x86_64,
    hw_disk_bus=scsi (virtio-scsi)"."""
    if not record:
        return None
    g = record.get('guest') or {}
    props = record.get('properties') or {}
    version = '.'.join(str(v) for v in (g.get('major_version'),
                                        g.get('minor_version'))
                       if v is not None)
    what = ' '.join(str(x) for x in (g.get('type'), g.get('distro'),
                                     version, g.get('arch')) if x) or \
        'no operating system found'
    bus = props.get('hw_disk_bus')
    if bus:
        what += ', hw_disk_bus=%s%s' % (bus, ' (%s)' % props[
            'hw_scsi_model'] if props.get('hw_scsi_model') else '')
    return what


def details(record):
    """What a cutover records of the guest (its details)."""
    out = {'guest': describe(record),
           'guest_inspected_by': record.get('inspected_by')}
    bus = (record.get('properties') or {}).get('hw_disk_bus')
    if bus:
        out['hw_disk_bus'] = bus
    fixed = [f['path'] for fix in record.get('fixed') or ()
             for f in fix.get('files') or ()]
    registry = [c for fix in record.get('fixed') or ()
                for c in fix.get('registry') or ()]
    if record.get('inspected_by') == 'cutover --fix':
        out['fixed'] = ', '.join(fixed + ['SYSTEM hive (%d change(s))'
                                          % len(registry)] * bool(registry)
                                 ) or 'nothing to fix'
        kept = [s['snapshot'] for s in record.get('snapshots') or ()
                if s.get('kept')]
        if kept:
            out['fix_snapshots_kept'] = ', '.join(kept)
    return out
