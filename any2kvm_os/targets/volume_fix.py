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

"""``--fix`` on Cinder volumes, made safe by a Cinder snapshot.

A volume written in place (``import --target cinder`` through an
attachment, a warm migration into Cinder) has no scratch copy to fix and
commit, so the guest is fixed on the volume itself:

1. every volume of the VM gets a Cinder snapshot (``any2kvm-fix ...``),
   the volume ``available``;
2. the volumes are attached here (os-brick, as the attach route does) and
   the probe inspects and fixes the guest on them, read-write, in one
   appliance launch;
3. when the fix (or anything around it) fails, each volume is reverted to
   its snapshot (Cinder's revert-to-snapshot, API 3.40) once detached,
   and the error says so; the volumes hold what they held before the fix;
4. the snapshots are deleted, unless the operator keeps them
   (``--keep-fix-snapshot``; then they are named in the result).

Revert-to-snapshot needs the latest snapshot of the volume, which the one
taken here is; a backend without snapshots refuses step 1 and nothing is
changed.
"""

import contextlib
import logging
import time

from any2kvm_os import clients
from any2kvm_os import exception
from any2kvm_os.guest import inspect as guest_inspect

LOG = logging.getLogger(__name__)

#: Cinder's revert-to-snapshot.
REVERT_MICROVERSION = '3.40'
SNAPSHOT_PREFIX = 'any2kvm-fix'


def _status(getter, item_id, want, what, timeout, poll):
    deadline = time.monotonic() + timeout
    while True:
        item = getter(item_id)
        if item.status == want:
            return item
        if item.status.startswith('error'):
            raise exception.TargetError(path=what, reason='went to %s'
                                        % item.status)
        if time.monotonic() > deadline:
            raise exception.TargetError(path=what, reason='still %s after '
                                        '%d s' % (item.status, timeout))
        time.sleep(poll)


def _error(e):
    if isinstance(e, exception.Any2KvmError) or not isinstance(e,
                                                               Exception):
        return e
    return clients.cloud_error('cinder', e)


def snapshot(cinder, vol_id, name, timeout=3600, poll=2.0):
    """A snapshot of volume ``vol_id`` (available), for a revert."""
    snap = cinder.volume_snapshots.create(
        vol_id, force=False, name='%s %s' % (SNAPSHOT_PREFIX, name),
        description='taken by any2kvm before --fix; revert to it to undo '
        'the fix')
    try:
        return _status(cinder.volume_snapshots.get, snap.id, 'available',
                       'snapshot %s of volume %s' % (snap.id, vol_id),
                       timeout, poll)
    except BaseException:
        delete_snapshots(cinder, [snap.id], timeout, poll)
        raise


def revert(cinder, vol_id, snap_id, timeout=3600, poll=2.0):
    """Volume ``vol_id`` as it was at snapshot ``snap_id`` (available)."""
    volume = cinder.volumes.get(vol_id)
    snap = cinder.volume_snapshots.get(snap_id)
    cinder.volumes.revert_to_snapshot(volume, snap)
    # The volume goes "reverting", then back to "available".
    time.sleep(min(poll, 1.0))
    _status(cinder.volumes.get, vol_id, 'available',
            'volume %s (revert to snapshot %s)' % (vol_id, snap_id),
            timeout, poll)


def delete_snapshots(cinder, snap_ids, timeout=3600, poll=2.0):
    """Delete the snapshots and wait until they are gone; failures are
    logged (a snapshot left behind is named)."""
    pending = []
    for snap_id in snap_ids:
        try:
            cinder.volume_snapshots.delete(snap_id)
            pending.append(snap_id)
        except Exception as e:
            LOG.warning('Could not delete snapshot %s: %s', snap_id, e)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for snap_id in list(pending):
            try:
                snap = cinder.volume_snapshots.get(snap_id)
            except Exception:
                pending.remove(snap_id)
                continue
            if snap.status == 'error_deleting':
                LOG.warning('Snapshot %s went to error_deleting', snap_id)
                pending.remove(snap_id)
        if pending:
            time.sleep(poll)
    for snap_id in pending:
        LOG.warning('Snapshot %s still there after %d s', snap_id, timeout)


def fix_volumes(cinder, volumes, attach, settings=None, keep=False,
                timeout=3600, poll=2.0, slots=None):
    """Inspect and fix the guest on ``volumes`` ([(volume id, name)], one
    VM's, in device order), rollback-safe (see the module).  ``attach(vol
    id, name, info)``: a context manager giving the path of the attached
    volume, filling ``info['format']``.  ``slots``: the volumes' Xen
    slots (:func:`~any2kvm_os.guest.inspect.slots_of`).  Returns the
    probe's output with ``snapshots`` ([{'volume', 'snapshot',
    'kept'}]).
    :class:`~any2kvm_os.exception.GuestFixError` when the fix failed (the
    volumes reverted)."""
    settings = settings or guest_inspect.Settings()
    name = volumes[0][1]
    snaps = []
    try:
        for vol_id, vol_name in volumes:
            snaps.append((vol_id, snapshot(cinder, vol_id, vol_name,
                                           timeout, poll).id))
    except BaseException as e:
        delete_snapshots(cinder, [s for _v, s in snaps], timeout, poll)
        e = _error(e)
        if isinstance(e, exception.Any2KvmError):
            raise exception.GuestFixError(
                path=name, reason='no snapshot to revert to, nothing '
                'changed: %s' % e)
        raise
    LOG.info('Snapshots before the fix: %s', ', '.join(
        '%s of %s' % (s, v) for v, s in snaps))
    try:
        with contextlib.ExitStack() as stack:
            paths = []
            formats = set()
            for vol_id, vol_name in volumes:
                info = {}
                paths.append(stack.enter_context(attach(vol_id, vol_name,
                                                        info)))
                formats.add(info.get('format') or 'raw')
            if len(formats) > 1:
                raise exception.GuestFixError(
                    path=name, reason='the volumes are kept in different '
                    'formats (%s)' % ', '.join(sorted(formats)))
            result = guest_inspect.fix_disks(settings, paths,
                                             formats.pop(), name,
                                             slots=slots)
    except BaseException as e:
        e = _error(e)
        reverted = []
        for vol_id, snap_id in snaps:
            try:
                revert(cinder, vol_id, snap_id, timeout, poll)
                reverted.append(vol_id)
            except Exception as e2:
                LOG.error('Could not revert volume %s to snapshot %s: %s',
                          vol_id, snap_id, _error(e2))
        failed = [s for v, s in snaps if v not in reverted]
        if keep or failed:
            kept = [s for _v, s in snaps]
        else:
            delete_snapshots(cinder, [s for _v, s in snaps], timeout, poll)
            kept = []
        if not isinstance(e, exception.Any2KvmError):
            raise e
        reason = e.kwargs.get('reason') or str(e)
        if failed:
            reason += '; NOT reverted: volume(s) %s (their snapshots %s ' \
                'are kept: revert to them)' % (
                    ', '.join(v for v, s in snaps if s in failed),
                    ', '.join(failed))
        else:
            reason += '; volume(s) %s reverted to the snapshot(s) taken ' \
                'before the fix%s' % (', '.join(reverted), ' (kept: %s)'
                                      % ', '.join(kept) if kept else '')
        raise exception.GuestFixError(path=name, reason=reason)
    if not keep:
        delete_snapshots(cinder, [s for _v, s in snaps], timeout, poll)
    result['snapshots'] = [{'volume': v, 'snapshot': s, 'kept': bool(keep)}
                           for v, s in snaps]
    return result


def fixes_in_place(target):
    """Whether ``import --fix`` to ``target`` fixes the volumes it wrote
    (a Cinder target writing through an attachment, no server to boot
    first); otherwise the copy is fixed in scratch space before the
    upload."""
    from any2kvm_os.targets import cinder as cinder_target
    return (isinstance(target, cinder_target.CinderTarget) and
            not target.server_options.create_server and
            target._attach_possible())


def fix_imported(target, results, facts, props=None, settings=None,
                 keep=False):
    """``import --target cinder --fix`` once the volumes are written
    (``results``, the target's): :func:`fix_volumes` on them, then the
    boot volume's image metadata set again from the guest as fixed.
    Returns the inspection summary (``snapshots`` added); the results'
    ``properties`` are updated."""
    from any2kvm_os.targets import cinder as cinder_target
    cinder = clients.cinder_client(target.session, target.region_name,
                                   target.interface,
                                   cinder_target.ATTACH_MICROVERSION)

    def attach(vol_id, vol_name, info):
        return cinder_target.attached(
            cinder, vol_id, vol_name, root_helper=target.root_helper,
            my_ip=target.my_ip,
            mount_point_base=target.brick_mount_point_base,
            timeout=target.timeout, poll=target.poll,
            formats=('raw', 'qcow2'), info=info)

    volumes = [(r['id'], r['name']) for r in results]
    result = fix_volumes(cinder, volumes, attach, settings, keep,
                         target.timeout, target.poll,
                         slots=guest_inspect.slots_of(
                             facts, [r['disk'] for r in results]))
    summary = guest_inspect.summary(result, facts)
    summary['snapshots'] = result['snapshots']
    facts['guest_properties'] = summary['properties']
    boot_disk = facts.get('boot_disk') or 0
    try:
        for r in results:
            if r['disk'] != boot_disk:
                continue
            meta = cinder_target.volume_metadata(
                facts, r['size'], defaults=target.defaults,
                overrides=props, extra={'any2kvm_route': 'attach'})
            set_metadata(cinder, r['id'], meta)
            r['properties'] = cinder.volumes.get(
                r['id']).volume_image_metadata or {}
    except Exception as e:
        raise _error(e)
    return summary


def set_metadata(cinder, vol_id, meta):
    """Make ``meta`` the image metadata of the volume: keys it had that
    ``meta`` lacks (a bus chosen before the fix) are removed."""
    old = getattr(cinder.volumes.get(vol_id), 'volume_image_metadata',
                  None) or {}
    stale = [k for k in old if k not in meta]
    if stale:
        cinder.volumes.delete_image_metadata(vol_id, stale)
    cinder.volumes.set_image_metadata(vol_id, meta)
