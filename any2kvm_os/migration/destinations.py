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

"""Where a warm migration writes: raw files, block devices, or Cinder
volumes.

Every destination has the same steps, which the engine calls in order:

``check()``
    Before the host is contacted: a Cinder destination logs in to the
    cloud here, so that bad credentials are told first.
``plan(name, disks)``
    The disks' records (``target_ref`` and the rest) and the
    non-secret options the state database keeps.
``create(disks)``
    Make the targets (all or none; ``target_ref`` filled in).
``opened(disks, sizes)``
    A context manager: every target opened once for the whole command
    (a volume attached here once, not once per layer), as a dict of disk
    index to :class:`~any2kvm_os.writers.raw.RawWriter`; a target smaller
    than its disk's size in ``sizes`` is grown first.  Closed (detached)
    when the block ends.
``finish(name, disks, facts)``
    After the last write of a cutover, before the downtime clock stops:
    what makes the targets ready to boot (a volume bootable, with image
    metadata).
``delete(disks)``
    Remove the targets (``abort --delete-targets``).

The state database records the target references (paths, volume ids),
never credentials: each command that needs the cloud logs in again.
"""

import contextlib
import logging
import os
import stat
import time

from any2kvm_os import clients
from any2kvm_os import exception
from any2kvm_os.targets import base as targets_base
from any2kvm_os.writers import raw

LOG = logging.getLogger(__name__)

#: The option of each destination, by target name: what the other one
#: refuses.
OPTIONS = {'file': ('output_dir', 'devices', 'device_is_zeroed'),
           'cinder': ('volume_type', 'brick_mount_point_base',
                      'properties')}
#: The command-line flag of an option, where it is not the option's name.
FLAGS = {'properties': 'property', 'devices': 'device'}


class DestinationError(exception.Any2KvmError):
    msg_fmt = '%(target)s: %(reason)s'


class Destination(object):
    name = None
    #: Whether a command on such a migration needs the cloud.
    needs_cloud = False
    #: Whether a target is exactly its disk's size (a raw file), or at
    #: least (a device, a volume).
    exact_size = False

    def __init__(self, options=None, cloud=None):
        self.options = dict(options or {})
        self.cloud = cloud

    def check(self):
        """Refuse early what can be refused before the host is asked."""

    def plan(self, name, disks):
        raise NotImplementedError

    def create(self, disks):
        raise NotImplementedError

    def opened(self, disks, sizes):
        raise NotImplementedError

    def read_paths(self, disks):
        """A context manager: {disk index: the path of its target, to be
        read} (``migration verify``)."""
        raise NotImplementedError

    def finish(self, name, disks, facts):
        return {}

    def delete(self, disks):
        raise NotImplementedError


def _records(name, disks):
    n = len(disks)
    return [{'index': i, 'source_id': info.vdi_uuid,
             'name': info.vdi_name or info.path,
             'virtual_size': info.virtual_size,
             'target_ref': None, 'label': targets_base.disk_name(name, i, n)}
            for i, info in enumerate(disks)]


class FileDestination(Destination):
    """One sparse raw file per disk, ``NAME.raw``, ``NAME-disk1.raw``...
    in ``output_dir`` (as ``import --target file`` names them)."""

    name = 'file'
    exact_size = True

    def check(self):
        out = os.path.abspath(self.options.get('output_dir') or '.')
        if not os.path.isdir(out):
            raise DestinationError(target=self.name, reason='%s is not a '
                                   'directory' % out)
        self.options['output_dir'] = out

    def plan(self, name, disks):
        self.check()
        records = _records(name, disks)
        for d in records:
            d['target_ref'] = os.path.join(self.options['output_dir'],
                                           d.pop('label') + '.raw')
            if os.path.lexists(d['target_ref']):
                raise DestinationError(target=self.name, reason='%s already '
                                       'exists' % d['target_ref'])
        return {'output_dir': self.options['output_dir']}, records

    def create(self, disks):
        made = []
        try:
            for d in disks:
                fd = os.open(d['target_ref'], os.O_WRONLY | os.O_CREAT |
                             os.O_EXCL | os.O_CLOEXEC, 0o644)
                made.append(d['target_ref'])
                try:
                    os.ftruncate(fd, d['virtual_size'])
                finally:
                    os.close(fd)
        except BaseException as e:
            # Nothing half-made is left, whatever stopped it.
            for path in made:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            if not isinstance(e, OSError):
                raise
            raise DestinationError(target=self.name, reason='%s: %s' % (
                e.filename or self.options.get('output_dir'), e.strerror))

    @contextlib.contextmanager
    def opened(self, disks, sizes):
        writers = {}
        try:
            for d in disks:
                # A file made by create and gone since comes back fresh
                # (all holes): the engine then writes everything again.
                writers[d['index']] = raw.RawWriter.open_in_place(
                    d['target_ref']).direct_io()
            yield writers
        finally:
            for w in writers.values():
                w.close()

    @contextlib.contextmanager
    def read_paths(self, disks):
        paths = {}
        for d in disks:
            path = d['target_ref']
            try:
                st = os.stat(path)
            except OSError as e:
                raise DestinationError(target=path, reason=e.strerror)
            if not stat.S_ISREG(st.st_mode):
                raise DestinationError(target=path, reason='is not a '
                                       'regular file')
            paths[d['index']] = path
        yield paths

    def delete(self, disks):
        deleted = []
        for d in disks:
            try:
                os.unlink(d['target_ref'])
                deleted.append(d['target_ref'])
            except FileNotFoundError:
                pass
        return deleted


class DeviceDestination(Destination):
    """An existing block device per disk (``--device``, one per disk in
    disk order: an LVM logical volume, an iSCSI LUN, a mapped RBD image),
    written in place; target ``file`` with the option ``devices``.

    A block device has no holes: what the source says is zero is written
    as zeros (:meth:`RawWriter.zero_range`), and the first sync zeroes
    every range of the disk the base layer holds no data in, as the
    device may hold old data (a thick LV does), unless the option
    ``device_is_zeroed`` says it reads as zeros already.  Nothing is
    written beyond the disk's size.  The devices are the operator's:
    :meth:`delete` neither deletes nor wipes them."""

    name = 'file'

    def _devices(self):
        return [os.path.abspath(p) for p in self.options.get('devices')
                or ()]

    def check(self):
        """Before the host is asked: each path a block device, no device
        given twice."""
        seen = {}
        for path in self._devices():
            st = self._check(path)
            if st.st_rdev in seen:
                raise DestinationError(
                    target='--device', reason='%s and %s are the same '
                    'device' % (seen[st.st_rdev], path))
            seen[st.st_rdev] = path

    def _check(self, path, size=None):
        """The stat of the block device ``path``; with ``size``, also
        opened and closed (:meth:`RawWriter.open_device`, which checks the
        path itself): refuses a device too small, or in use."""
        try:
            if size is not None:
                raw.RawWriter.open_device(path, size).close()
                return None
            return raw.check_device(path)
        except exception.TargetError as e:
            raise DestinationError(target='--device', reason=str(e))

    def plan(self, name, disks):
        devices = self._devices()
        if len(devices) != len(disks):
            raise DestinationError(
                target='--device', reason='the VM has %d disk(s), %d '
                '--device given (one per disk, in disk order: %s)' % (
                    len(disks), len(devices), ', '.join(
                        '%d %s' % (i, info.vdi_name or info.path)
                        for i, info in enumerate(disks))))
        self.check()
        records = _records(name, disks)
        for d, path in zip(records, devices):
            self._check(path, d['virtual_size'])
            d.pop('label')
            d['target_ref'] = path
        options = {'devices': devices}
        if self.options.get('device_is_zeroed'):
            options['device_is_zeroed'] = True
        return options, records

    def create(self, disks):
        """Nothing to make: the devices exist (checked by :meth:`plan`)."""

    @contextlib.contextmanager
    def read_paths(self, disks):
        paths = {}
        for d in disks:
            self._check(d['target_ref'])
            paths[d['index']] = d['target_ref']
        yield paths

    @contextlib.contextmanager
    def opened(self, disks, sizes):
        zeroed = bool(self.options.get('device_is_zeroed'))
        writers = {}
        try:
            for d in disks:
                size = sizes.get(d['index']) or d['virtual_size']
                if size != d['virtual_size'] and d['applied']:
                    # What the device holds beyond the old size was never
                    # zeroed, and a grown layer does not say "zero" there.
                    raise DestinationError(
                        target=d['target_ref'], reason='disk %d is now %d '
                        'bytes, %d when the migration was created: a '
                        'block device target cannot follow a resized '
                        'disk (abort, and create the migration again)'
                        % (d['index'], size, d['virtual_size']))
                try:
                    w = raw.RawWriter.open_device(d['target_ref'], size,
                                                  zeroed=zeroed).direct_io()
                except exception.TargetError as e:
                    raise DestinationError(target='--device',
                                           reason=str(e))
                # Only the first pass may take the device as zeroed.
                w.fresh = zeroed and not d['applied']
                writers[d['index']] = w
            yield writers
        finally:
            for w in writers.values():
                w.close()

    def delete(self, disks):
        """Nothing: the devices are the operator's, kept as they are (not
        wiped either; they hold what the last sync wrote)."""
        for d in disks:
            LOG.warning('%s: a block device: kept as it is (not deleted, '
                        'not wiped)', d['target_ref'])
        return []


class CinderDestination(Destination):
    """One Cinder volume per disk (``NAME``, ``NAME-disk1``...), sized to
    the disk in whole GiB, written in place through the Cinder target's
    attach route (attachment API and os-brick).

    ``cloud``: a callable returning (session, region name, interface),
    called once, by :meth:`check`; ``attach`` (tests): what
    :func:`any2kvm_os.targets.cinder.attached` is; ``client`` (tests): the
    Cinder client to use instead of one made from the session."""

    name = 'cinder'
    needs_cloud = True

    def __init__(self, options=None, cloud=None, attach=None, client=None,
                 timeout=3600, poll=0.25):
        super(CinderDestination, self).__init__(options, cloud)
        self._attach = attach
        self._client = client
        self.timeout = timeout
        self.poll = poll

    # -- the cloud ------------------------------------------------------------

    def check(self):
        self.client()

    def client(self):
        if self._client is None:
            from any2kvm_os.targets import cinder as cinder_target
            if self.cloud is None:
                raise DestinationError(target=self.name, reason='no cloud '
                                       'given (--os-cloud or OS_*)')
            session, region, interface = self.cloud()
            self._client = clients.cinder_client(
                session, region, interface,
                cinder_target.ATTACH_MICROVERSION)
        return self._client

    def _attached(self, vol_id, vol_name, **kwargs):
        from any2kvm_os.targets import cinder as cinder_target
        attach = self._attach or cinder_target.attached
        # The migration's lease is held: an attachment of its volume to
        # this host that no server has is a killed run's.
        kwargs.setdefault('release_left', True)
        return attach(self.client(), vol_id, vol_name,
                      mount_point_base=self.options.get(
                          'brick_mount_point_base'),
                      timeout=self.timeout, poll=self.poll, **kwargs)

    def _error(self, e):
        if isinstance(e, exception.Any2KvmError) or not isinstance(
                e, Exception):
            return e
        return clients.cloud_error('cinder', e)

    # -- the steps ------------------------------------------------------------

    def plan(self, name, disks):
        records = _records(name, disks)
        options = {k: self.options[k] for k in OPTIONS['cinder']
                   if self.options.get(k)}
        return options, records

    def create(self, disks):
        """A volume per disk, each attached here once to prove this host
        reaches it; when one cannot be made or reached, every volume made
        is deleted and the error raised."""
        from any2kvm_os.targets import cinder as cinder_target
        cinder = self.client()
        made = []
        try:
            for d in disks:
                label = d.pop('label', None) or d['name']
                volume = cinder_target.create_volume(
                    cinder, cinder_target.size_in_gib(d['virtual_size']),
                    label, self.options.get('volume_type'),
                    'warm migration by any2kvm', wait=False)
                made.append(volume.id)
                d['target_ref'] = volume.id
                d['volume_name'] = label
                cinder_target.wait_available(cinder, volume.id, label,
                                             self.timeout, self.poll)
            for d in disks:
                with self._attached(d['target_ref'], d['volume_name']):
                    pass
        except BaseException as e:
            cinder_target.delete_volumes(cinder, made)
            raise self._error(e)
        for d in disks:
            d.pop('volume_name', None)

    def _grow(self, cinder, disk, size):
        """Extend the disk's volume when ``size`` bytes no longer fit."""
        from any2kvm_os.targets import cinder as cinder_target
        vol_id = disk['target_ref']
        volume = cinder.volumes.get(vol_id)
        want = cinder_target.size_in_gib(size)
        if want > volume.size:
            LOG.info('volume %s: extending from %d to %d GiB', vol_id,
                     volume.size, want)
            cinder.volumes.extend(vol_id, want)
            cinder_target.wait_available(cinder, vol_id, vol_id,
                                         self.timeout, self.poll)

    @contextlib.contextmanager
    def opened(self, disks, sizes):
        cinder = self.client()
        writers = {}
        with contextlib.ExitStack() as stack:
            try:
                for d in disks:
                    size = sizes.get(d['index'])
                    if size:
                        self._grow(cinder, d, size)
                for d in disks:
                    path = stack.enter_context(
                        self._attached(d['target_ref'], d['target_ref']))
                    w = raw.RawWriter.open_volume(path).direct_io()
                    stack.callback(w.close)
                    # A volume reads as zeros until its first layer.
                    w.fresh = not d['applied']
                    writers[d['index']] = w
            except BaseException as e:
                raise self._error(e)
            yield writers

    @contextlib.contextmanager
    def read_paths(self, disks):
        """Each volume attached here, once no server uses it."""
        cinder = self.client()
        with contextlib.ExitStack() as stack:
            paths = {}
            try:
                for d in disks:
                    volume = cinder.volumes.get(d['target_ref'])
                    if volume.status != 'available':
                        used = [a.get('server_id') for a in
                                getattr(volume, 'attachments', None) or ()
                                if a.get('server_id')]
                        raise DestinationError(
                            target='volume %s' % d['target_ref'],
                            reason='is %s%s: it is read only while nothing '
                            'uses it (before the cutover\'s --create-server, '
                            'or once detached)' % (volume.status, (
                                ' (server %s)' % ', '.join(used))
                                if used else ''))
                for d in disks:
                    paths[d['index']] = stack.enter_context(
                        self._attached(d['target_ref'], d['target_ref']))
            except BaseException as e:
                raise self._error(e)
            yield paths

    def finish(self, name, disks, facts):
        """The boot volume (the VM's ``boot_disk`` fact, else the first)
        bootable; every volume gets the image metadata of its disk (KVM's
        properties; the VM's facts on the boot volume) and
        ``any2kvm_migration=NAME``, in place of what it had (a key an
        earlier cutover set and this one does not is removed); the user's
        properties (``migration create --property``, in the target
        options) over any2kvm's choices, on every volume."""
        from any2kvm_os.targets import cinder as cinder_target
        from any2kvm_os.targets import volume_fix
        cinder = self.client()
        done = []
        boot_disk = (facts or {}).get('boot_disk') or 0
        try:
            for d in disks:
                boot = d['index'] == boot_disk
                meta = cinder_target.volume_metadata(
                    facts if boot else {}, d['virtual_size'],
                    overrides=self.options.get('properties'),
                    extra={'any2kvm_migration': name})
                cinder.volumes.set_bootable(d['target_ref'], boot)
                # Replaced, not merged: a key of an earlier cutover (rolled
                # back) that this one does not set would mislead Nova.
                volume_fix.set_metadata(cinder, d['target_ref'], meta)
                done.append(d['target_ref'])
        except BaseException as e:
            raise self._error(e)
        return {'volumes': done}

    def delete(self, disks):
        cinder = self.client()
        deleted = []
        for d in disks:
            try:
                cinder.volumes.delete(d['target_ref'])
                deleted.append(d['target_ref'])
            except Exception as e:
                if clients.not_found(e):
                    continue
                raise self._error(e)
        # Gone for good before the command returns.
        for vol_id in deleted:
            _wait_gone(cinder, vol_id, self.timeout, self.poll)
        return deleted


def _wait_gone(cinder, vol_id, timeout, poll):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cinder.volumes.get(vol_id)
        except Exception as e:
            if clients.not_found(e):
                return
            if not clients.transient(e):
                LOG.warning('volume %s: could not be looked at while it is '
                            'deleted: %s', vol_id, clients.cloud_error(
                                'cinder', e))
                return
            # (A 503 is not "gone": asked again.)
            time.sleep(poll)
            continue
        if v.status == 'error_deleting':
            raise DestinationError(target='cinder', reason='volume %s went '
                                   'to error_deleting' % vol_id)
        time.sleep(poll)
    LOG.warning('volume %s still there after %d s', vol_id, timeout)


def get(target, options=None, cloud=None, **kwargs):
    """The destination of ``target`` ('file' or 'cinder')."""
    if target == 'file' and (options or {}).get('devices'):
        return DeviceDestination(options)
    if target == 'file':
        return FileDestination(options)
    if target == 'cinder':
        return CinderDestination(options, cloud, **kwargs)
    raise DestinationError(target=target, reason='unknown target (known: '
                           'file, cinder)')
