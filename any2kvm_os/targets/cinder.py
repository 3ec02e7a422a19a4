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

"""Cinder target: each disk becomes a volume.

Two routes (``route``):

image
    The portable route, which works with every Cinder backend: the disk is
    uploaded as a raw Glance image (through :class:`GlanceTarget`, digests
    verified), a volume of the disk's size (GiB, rounded up) is created
    from it, Cinder copies the image's properties into the volume's image
    metadata and marks it bootable, and the intermediate image is deleted.
attach
    When the volume can be reached from this host: an empty volume is
    created, attached here through Cinder's attachment API and os-brick
    (as ``cinder local-attach`` does), the disk is written onto it in
    place (sparse where the backend allows; never truncated), the
    attachment is removed, and the volume is marked bootable with the
    image properties as its image metadata.  No Glance image, no second
    copy of the data.
auto (the default)
    attach when os-brick is importable and this process is root (os-brick
    needs both), falling back to image when the attachment cannot be made
    (nothing was written then); image otherwise.

The boot disk (the VM's ``boot_disk`` fact, else the first) is the
bootable volume with the VM's properties; the first disk is ``<name>``,
the others ``<name>-diskN``.  On any failure the volumes and images
this call made are deleted, so nothing half-written is left
``available``.
"""

import contextlib
import logging
import os
import socket
import threading
import time
import warnings

from any2kvm_os import clients
from any2kvm_os import exception
from any2kvm_os import properties
from any2kvm_os.targets import base
from any2kvm_os.targets import glance as glance_target
from any2kvm_os.targets import server as server_mod

LOG = logging.getLogger(__name__)

GiB = 1 << 30


def _result(index, volume, size, size_gib, sha256, image_id):
    """One disk's result row (see any2kvm's RESULT_FIELDS)."""
    return {'disk': index, 'name': volume.name, 'id': volume.id,
            'size': size, 'size_gib': size_gib, 'bootable': volume.bootable,
            'sha256': sha256, 'image_id': image_id,
            'properties': getattr(volume, 'volume_image_metadata',
                                  None) or {}}


def _delete_volumes(cinder, volume_ids):
    """Best effort, after a failure: the first error is the one told."""
    for vol_id in volume_ids:
        try:
            cinder.volumes.delete(vol_id)
        except Exception as e:
            LOG.warning('Could not delete volume %s: %s', vol_id, e)


def _error(e):
    """What to raise for ``e``: ours as they are, others as one line."""
    if isinstance(e, exception.Any2KvmError) or not isinstance(e,
                                                               Exception):
        return e
    return clients.cloud_error('cinder', e)


def size_in_gib(size):
    """Whole GiB that hold ``size`` bytes (at least 1)."""
    return max(1, -(-size // GiB))


def wait_available(cinder, vol_id, vol_name, timeout=3600, poll=2.0,
                   session=None, region_name=None, interface=None):
    """The volume once ``available``; :class:`TargetError` when it goes to
    an error state (with Cinder's user messages, given a session) or is
    still busy after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        volume = cinder.volumes.get(vol_id)
        if volume.status == 'available':
            return volume
        if volume.status in ('error', 'error_restoring', 'error_extending'):
            messages = []
            if session is not None:
                try:
                    # User messages need API 3.3.
                    reader = clients.cinder_client(session, region_name,
                                                   interface, '3.3')
                    messages = [m.user_message
                                for m in reader.messages.list()
                                if m.resource_uuid == vol_id]
                except Exception as e:
                    LOG.debug('No user messages for volume %s: %s', vol_id,
                              e)
            raise exception.TargetError(
                path=vol_name, reason='volume %s went to %s%s' % (
                    vol_id, volume.status,
                    (': ' + '; '.join(messages)) if messages else ''))
        if time.monotonic() > deadline:
            raise exception.TargetError(
                path=vol_name, reason='volume %s still %s after %d s'
                % (vol_id, volume.status, timeout))
        time.sleep(poll)


def create_volume(cinder, size_gib, name, volume_type=None,
                  description='imported by any2kvm', wait=True,
                  timeout=3600, poll=2.0):
    """A new empty volume of ``size_gib`` GiB; with ``wait``, once it is
    available."""
    volume = cinder.volumes.create(size_gib, name=name,
                                   volume_type=volume_type,
                                   description=description)
    if wait:
        try:
            return wait_available(cinder, volume.id, name, timeout, poll)
        except BaseException:
            delete_volumes(cinder, [volume.id])
            raise
    return volume


def volume_metadata(facts, virtual_size, defaults=True, overrides=None,
                    extra=None):
    """The image metadata of a volume holding a disk of ``virtual_size``
    bytes of the VM ``facts`` describes: the image properties KVM needs
    (:func:`any2kvm_os.properties.image_properties`, ``overrides`` on
    top), then ``extra``, every value a string."""
    meta = properties.image_properties(facts or {}, virtual_size,
                                       defaults=defaults,
                                       overrides=overrides)
    meta.update(extra or {})
    return {k: str(v) for k, v in meta.items()}


def make_bootable(cinder, vol_id, bootable, metadata):
    """Mark the volume bootable (or not) and give it ``metadata`` as its
    image metadata."""
    cinder.volumes.set_bootable(vol_id, bool(bootable))
    if metadata:
        cinder.volumes.set_image_metadata(vol_id, metadata)


def delete_volumes(cinder, volume_ids):
    """Best effort: every volume is tried; failures are logged."""
    _delete_volumes(cinder, volume_ids)


def _brick_error(e):
    """os-brick's errors as one line (they carry command output)."""
    return ' '.join(str(e).split())[:300] or type(e).__name__


def _brick():
    """os-brick's connector and privileged modules.  Imported with
    warnings off: its privsep daemon imports eventlet, whose deprecation
    warning (ten lines) would otherwise head every command that writes a
    volume."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from os_brick.initiator import connector
        from os_brick import privileged
    return connector, privileged


#: How many attachments are quieting os-brick now, and the os_brick
#: logger's level before the first (attachments of several threads
#: overlap without nesting).
_QUIET = {'depth': 0, 'level': logging.NOTSET}
_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def brick_logs_for_debug():
    """os-brick's log records only with ``--debug`` (DEBUG enabled here):
    its warnings name the host's other initiators (no iSCSI initiator
    file, no NVMe) and say nothing of the volume at hand, and its errors
    come back as the exception :func:`attached` reports in one line."""
    if LOG.isEnabledFor(logging.DEBUG):
        yield
        return
    log = logging.getLogger('os_brick')
    with _QUIET_LOCK:
        if not _QUIET['depth']:
            _QUIET['level'] = log.level
            log.setLevel(logging.CRITICAL + 1)
        _QUIET['depth'] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET['depth'] -= 1
            if not _QUIET['depth']:
                log.setLevel(_QUIET['level'])


@contextlib.contextmanager
def attached(cinder, vol_id, vol_name=None, root_helper='sudo',
             my_ip='127.0.0.1', mount_point_base=None, timeout=3600,
             poll=2.0, formats=('raw',), info=None, release_left=False):
    """Attach volume ``vol_id`` to this host (Cinder's attachment API,
    then os-brick, as ``cinder local-attach`` does) and yield the path of
    its file or block device, written in place; detached again (and
    waited ``available``) when the block ends, whatever happens in it.
    :class:`AttachUnavailable` when it cannot be reached from here.
    ``formats``: how the backend may keep the volume (a file backend
    keeps a volume with snapshots as qcow2); ``info`` (a dict) gets its
    ``format``.  ``release_left``: first remove the attachments of the
    volume to this host that no server has (:func:`_release_left`: a
    killed run's; for a caller that holds the volume alone, a migration
    under its lease)."""
    with brick_logs_for_debug():
        with _attached(cinder, vol_id, vol_name, root_helper, my_ip,
                       mount_point_base, timeout, poll, formats,
                       info, release_left) as path:
            yield path


def _protocol(conn_info):
    """(connection data, protocol) of an attachment's
    ``connection_info``."""
    conn_info = conn_info or {}
    data = conn_info.get('data', conn_info)
    return data, (conn_info.get('driver_volume_type') or
                  data.get('driver_volume_type'))


def _connector(brick, conn_info, root_helper, mount_point_base):
    """(os-brick connector, its connection data, protocol) of an
    attachment's ``connection_info``."""
    data, protocol = _protocol(conn_info)
    kwargs = {}
    if mount_point_base:
        kwargs['%s_mount_point_base' % protocol] = mount_point_base
        # What a remote file system connector is given (else it warns
        # that it "may not initialize properly").
        kwargs['conn'] = {'mount_point_base': mount_point_base}
    return (brick.InitiatorConnector.factory(protocol, root_helper,
                                             **kwargs), data, protocol)


def _release_left(cinder, vol_id, vol_name, host, brick, root_helper,
                  mount_point_base, timeout, poll):
    """Remove the attachments of volume ``vol_id`` to this host (Cinder's
    ``host_name``: ``host``) that no server has: what a run killed while
    it wrote the volume left (a SIGKILL, the OOM killer, a power loss),
    which keeps the volume ``in-use`` and every later attachment refused.
    Each is disconnected by os-brick first (best effort: a connection
    that is gone), then deleted.  Returns how many."""
    try:
        volume = cinder.volumes.get(vol_id)
    except Exception:
        return 0    # the attachment's creation says what is wrong
    left = [a for a in getattr(volume, 'attachments', None) or ()
            if isinstance(a, dict) and not a.get('server_id') and
            a.get('host_name') == host and a.get('attachment_id')]
    for a in left:
        att_id = a['attachment_id']
        LOG.warning('volume %s: removing its attachment %s to this host '
                    '(%s), left by a run that was stopped', vol_name,
                    att_id, host)
        try:
            shown = cinder.attachments.show(att_id)
            conn_info = getattr(shown, 'connection_info', None)
            if conn_info is None and isinstance(shown, dict):
                conn_info = shown.get('connection_info')
            if conn_info:
                conn, data, _protocol = _connector(
                    brick, conn_info, root_helper, mount_point_base)
                conn.disconnect_volume(data, None)
        except Exception as e:
            LOG.warning('os-brick could not disconnect volume %s (%s): %s',
                        vol_name, att_id, _brick_error(e))
        try:
            cinder.attachments.delete(att_id)
        except Exception as e:
            raise AttachUnavailable(
                'volume %s: its attachment %s to this host, left by a run '
                'that was stopped, could not be removed: %s (cinder '
                'attachment-delete %s)' % (vol_name, att_id,
                                           _brick_error(e), att_id))
    if left:
        wait_available(cinder, vol_id, vol_name, timeout, poll)
    return len(left)


@contextlib.contextmanager
def _attached(cinder, vol_id, vol_name, root_helper, my_ip,
              mount_point_base, timeout, poll, formats, info,
              release_left=False):
    brick, privileged = _brick()
    vol_name = vol_name or vol_id
    if os.geteuid() == 0:
        # Root already: os-brick's privileged calls run in this process
        # instead of a privsep daemon started through sudo.
        privileged.default.set_client_mode(False)
    props = brick.get_connector_properties(root_helper, my_ip, False, False)
    if release_left:
        _release_left(cinder, vol_id, vol_name,
                      props.get('host') or socket.gethostname(), brick,
                      root_helper, mount_point_base, timeout, poll)
    try:
        attachment = cinder.attachments.create(vol_id, props, mode='rw')
    except Exception as e:
        raise AttachUnavailable('volume %s: Cinder refused an attachment: '
                                '%s' % (vol_id, _brick_error(e)))
    try:
        data, protocol = _protocol(attachment.get('connection_info'))
        try:
            conn, data, protocol = _connector(
                brick, attachment.get('connection_info'), root_helper,
                mount_point_base)
            device = conn.connect_volume(data)
            path = device['path']
            if not os.path.exists(path):
                raise exception.Any2KvmError('%s does not exist' % path)
            if (data.get('format') or 'raw') not in formats:
                raise exception.Any2KvmError(
                    'the backend keeps it as %s' % data['format'])
            if info is not None:
                info['format'] = data.get('format') or 'raw'
        except Exception as e:
            raise AttachUnavailable(
                'volume %s (%s) cannot be reached from this host: %s'
                % (vol_id, protocol, _brick_error(e)))
        try:
            cinder.attachments.complete(attachment['id'])
            yield path
        finally:
            try:
                conn.disconnect_volume(data, device)
            except Exception as e:
                LOG.warning('os-brick could not disconnect volume %s: %s',
                            vol_id, _brick_error(e))
    finally:
        cinder.attachments.delete(attachment['id'])
        wait_available(cinder, vol_id, vol_name, timeout, poll)


#: Attachments need microversion 3.44 (attachment complete); 3.54 gives
#: the mode.
ATTACH_MICROVERSION = '3.54'
ROUTES = ('auto', 'image', 'attach')


class AttachUnavailable(exception.Any2KvmError):
    """The volume cannot be attached here (nothing was written)."""


class CinderTarget(base.Target):
    name = 'cinder'
    description = 'a Cinder volume per disk (written through an os-brick ' \
        'attachment, or a raw Glance image)'

    arguments = (
        glance_target.NO_DEFAULT_PROPERTIES,
        base.Argument('--volume-type', 'volume_type', metavar='TYPE',
                      help='volume type of the volumes (--target cinder; '
                           'default: the cloud\'s default type)'),
        base.Argument('--volume-route', 'route',
                      choices=('auto', 'image', 'attach'),
                      help='how the data reaches a volume (--target '
                           'cinder): image (a raw Glance image the volume '
                           'is created from: works everywhere), attach '
                           '(attach the new volume to this host with '
                           'os-brick and write it directly), auto (attach '
                           'when os-brick is installed and this runs as '
                           'root, else image; the default)'),
        base.Argument('--brick-mount-point-base', 'brick_mount_point_base',
                      metavar='DIR',
                      help='where os-brick finds or mounts NFS and other '
                           'file-system shares when attaching '
                           '(--volume-route attach or auto)'),
    ) + server_mod.ARGUMENTS

    def __init__(self, defaults=True, timeout=3600, poll=2.0,
                 keep_image=False, wait=True, route='auto',
                 volume_type=None, brick_mount_point_base=None,
                 root_helper='sudo', my_ip='127.0.0.1', **context):
        # --create-server and its options (server_mod.ARGUMENTS), checked
        # before any cloud is asked.
        self.server_options = server_mod.Options(**{
            key: context.pop(key) for key in server_mod.OPTION_KEYS
            if key in context}).check()
        super(CinderTarget, self).__init__(wait=wait, **context)
        if route not in ROUTES:
            raise exception.Any2KvmError('unknown volume route %r (known: '
                                         '%s)' % (route, ', '.join(ROUTES)))
        self.glance = glance_target.GlanceTarget(defaults=defaults,
                                                 **context)
        self.defaults = defaults
        self.route = route
        self.volume_type = volume_type
        self.brick_mount_point_base = brick_mount_point_base
        self.root_helper = root_helper
        self.my_ip = my_ip
        # The volume is always waited for: the intermediate image can only
        # be deleted, and a failure only reported, once Cinder is done.
        self.timeout = timeout
        self.poll = poll
        self.keep_image = keep_image

    @classmethod
    def check_options(cls, options):
        server_mod.Options(**{key: options[key] for key in
                              server_mod.OPTION_KEYS
                              if key in options}).check()

    def _attach_possible(self):
        if self.route == 'image':
            return False
        try:
            import os_brick  # noqa: F401
        except ImportError:
            if self.route == 'attach':
                raise exception.Any2KvmError(
                    'cinder: --volume-route attach needs os-brick (pip '
                    'install os-brick)')
            return False
        if os.geteuid() != 0 and self.route == 'auto':
            return False
        return True

    def write(self, vm, name, props=None, disk=None, progress=None):
        if not self.server_options.create_server:
            return self._write_volumes(vm, name, props, disk, progress)
        return self._write_and_boot(vm, name, props, disk, progress)

    def _write_and_boot(self, vm, name, props, disk, progress):
        """--create-server: the server is planned (flavor, networks)
        before any disk is written, made from the volumes, and its boot
        verified; the first result gets ``server``."""
        if disk is not None:
            raise exception.Any2KvmError(
                '--create-server needs every disk of the VM: drop --disk')
        clients = server_mod.Clients(self.session, self.region_name,
                                     self.interface)
        plan = server_mod.prepare(clients, vm.facts, self.server_options,
                                  name, disk_count=len(vm.disks))
        for reason in plan.reasons:
            LOG.info('Server %s: %s', plan.name, reason)
        try:
            results = self._write_volumes(vm, name, props, disk, progress)
        except BaseException:
            server_mod.discard(plan)
            raise
        srv, boot = server_mod.create_and_boot(plan, results)
        LOG.info('Server %s (%s): %s', srv.name, srv.id, boot.message())
        info = srv.to_dict()
        info['plan'] = list(plan.reasons)
        info['boot'] = boot.to_dict()
        info['boot_message'] = boot.message()
        results[0]['server'] = info
        return results

    def _write_volumes(self, vm, name, props=None, disk=None,
                       progress=None):
        if self._attach_possible():
            try:
                return self._write_attached(vm, name, props, disk,
                                            progress)
            except AttachUnavailable as e:
                if self.route == 'attach':
                    raise exception.TargetError(path='cinder',
                                                reason=str(e))
                LOG.info('Writing through a Glance image instead: %s', e)
        return self._write_through_image(vm, name, props, disk,
                                         progress)

    # -- attach route ---------------------------------------------------------

    def _write_attached(self, vm, name, props, disk, progress):
        cinder = clients.cinder_client(self.session, self.region_name,
                                       self.interface, ATTACH_MICROVERSION)
        volumes = []
        results = []
        try:
            for index, d in base.selected(vm, disk):
                vol_name = base.disk_name(name, index, len(vm.disks))
                size = d.size_hint
                if size is None:
                    size = d.virtual_size   # one pass over the archive
                size_gib = size_in_gib(size)
                volume = create_volume(
                    cinder, size_gib, vol_name, self.volume_type,
                    'imported by any2kvm', wait=False)
                volumes.append(volume.id)
                self._wait(cinder, volume.id, vol_name)
                digest = self._attach_and_write(cinder, volume.id, vol_name,
                                                d, progress)
                boot = index == (vm.facts.get('boot_disk') or 0)
                facts = vm.facts if boot else {}
                meta = volume_metadata(facts, d.virtual_size,
                                       defaults=self.defaults,
                                       overrides=props,
                                       extra={'any2kvm_route': 'attach'})
                make_bootable(cinder, volume.id, boot, meta)
                results.append(_result(
                    index, cinder.volumes.get(volume.id), d.virtual_size,
                    size_gib, digest, None))
        except BaseException as e:
            _delete_volumes(cinder, volumes)
            raise _error(e)
        return results

    def _attach_and_write(self, cinder, vol_id, vol_name, disk, progress):
        """Attach volume ``vol_id`` here, write ``disk`` onto it, detach;
        returns the SHA-256 of what was written (the whole disk)."""
        from any2kvm_os.writers import raw

        with attached(cinder, vol_id, vol_name,
                      root_helper=self.root_helper, my_ip=self.my_ip,
                      mount_point_base=self.brick_mount_point_base,
                      timeout=self.timeout, poll=self.poll) as path:
            LOG.info('Writing %s onto volume %s at %s', disk.name, vol_id,
                     path)
            target = raw.RawWriter.open_volume(path)
            try:
                disk.write_to(target, progress)
                target.sync()
            finally:
                target.close()
            # What the volume holds, read back (its holes unread).
            return raw.sha256_of(path, disk.virtual_size)

    # -- image route ----------------------------------------------------------

    def _write_through_image(self, vm, name, props, disk, progress):
        images = self.glance.write(vm, name + '-any2kvm-upload', props,
                                   disk=disk, progress=progress)
        cinder = clients.cinder_client(self.session, self.region_name,
                                       self.interface)
        glance = self.glance.client()
        volumes = []
        results = []
        try:
            chosen = base.selected(vm, disk)
            for (index, _d), image in zip(chosen, images):
                vol_name = base.disk_name(name, index, len(vm.disks))
                size_gib = max(1, -(-image['size'] // GiB))
                volume = cinder.volumes.create(
                    size_gib, name=vol_name, imageRef=image['id'],
                    volume_type=self.volume_type,
                    description='imported by any2kvm')
                volumes.append(volume.id)
                results.append(_result(
                    index, self._wait(cinder, volume.id, vol_name),
                    image['size'], size_gib, image['sha256'],
                    image['id'] if self.keep_image else None))
        except BaseException as e:
            _delete_volumes(cinder, volumes)
            self._drop_images(glance, images, force=True)
            raise _error(e)
        self._drop_images(glance, images)
        return results

    def _drop_images(self, glance, images, force=False):
        if self.keep_image and not force:
            return
        for image in images:
            try:
                glance.images.delete(image['id'])
            except Exception as e:
                LOG.warning('Could not delete image %s: %s', image['id'], e)

    def _wait(self, cinder, vol_id, vol_name):
        return wait_available(cinder, vol_id, vol_name, self.timeout,
                              self.poll, self.session, self.region_name,
                              self.interface)
