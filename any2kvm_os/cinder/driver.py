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

"""The Cinder hook: ``cinder create --image-id`` for images Cinder fails on.

Stock Cinder fails on every ``disk_format=vhd`` image, on XenServer
``vhd``/``ovf`` tgz chains and on ``vmdk``/``ova`` images
(doc/source/admin/cinder-hook.rst has the measured reasons).  This module
is a volume driver that wraps any other one::

    [mybackend]
    volume_driver = any2kvm_os.cinder.driver.Any2KvmDriver
    any2kvm_wrapped_driver = cinder.volume.drivers.nfs.NfsDriver

Cinder builds the driver with ``importutils.import_object(volume_driver,
configuration=..., db=..., host=..., ...)``.  :class:`Any2KvmDriver` then
builds an instance of a subclass of the wrapped driver's class that
overrides only ``clone_image``: everything else *is* the real driver (its
class attributes, ``isinstance`` checks, attributes set on it), which a
delegating proxy could only imitate.

Cinder asks ``clone_image(context, volume, image_location, image_meta,
image_service)`` before its generic download path (the path where VHD
images die in ``qemu-img info -f vhd``).  For an image we recognise, the
hook reads the image from Glance (a XenServer tar/tgz or an XVA as it
downloads; anything else into bounded private scratch under
``image_conversion_dir`` first), creates the volume through the real
driver, checks and folds the chain and writes the raw disk onto the volume
(the driver's local path, or else an os-brick attachment), sparse where
the backend allows, then returns
``(model_update, True)``: Cinder marks the volume bootable and copies the
image's metadata, to which the hook adds ``hw_scsi_model=virtio-scsi``,
``hw_disk_bus=scsi`` and what the source tells (firmware, CPUs, OS).  Any
failure deletes the backend volume and raises an exception Cinder does not
reschedule, so the volume ends in ``error`` and never holds half-written
data as ``available``.  Images we do not recognise go to the real driver's
``clone_image`` unchanged.

The module imports Cinder only when a hook runs, so that its options can be
listed (``oslo-config-generator``) where Cinder is not installed.
"""

import functools
import os
import time

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import importutils

from any2kvm_os import api
from any2kvm_os.cinder import options
from any2kvm_os.containers import registry
from any2kvm_os import exception
from any2kvm_os import limits as a2k_limits
from any2kvm_os import properties
from any2kvm_os import scratch

LOG = logging.getLogger(__name__)

#: The kinds of Glance image the hook can take over: the ``glance_kinds``
#: of the container plugins.
KINDS = options.KINDS

#: The hook's options (owned by :mod:`any2kvm_os.cinder.options`).
OPTIONS = options.OPTIONS

#: Seconds of conversion between two yields to cinder-volume's other
#: green threads.
YIELD_EVERY = 0.02

#: Image property naming which disk of a multi-disk OVA or XVA becomes the
#: volume, counted from 0 as ``any2kvm info`` lists them (default 0).
DISK_PROPERTY = 'any2kvm_disk'


list_opts = options.list_opts


def recognise(image_meta, kinds=KINDS):
    """The kinds of content an image may hold if the hook takes it over
    (a tuple), or None: the image is left to the wrapped driver."""
    disk_format = (image_meta.get('disk_format') or '').lower()
    container = (image_meta.get('container_format') or 'bare').lower()
    wanted = tuple(sorted(
        kind for kind, (c_format, d_format) in registry.glance_kinds().items()
        if kind in kinds and c_format == container
        and d_format in (None, disk_format)))
    return wanted or None


def content_kind(source):
    """What a downloaded image turned out to be, in :data:`KINDS` words."""
    if source.container == 'file':
        return source.disks[0].format
    return source.container


def _image_label(image_meta):
    return 'image %s' % image_meta.get('id')


def _gib(n):
    return (n + (1 << 30) - 1) >> 30


class Any2KvmDriver(object):
    """``volume_driver`` for a backend whose image-to-volume is hooked.

    Calling it builds the wrapped driver with the hook mixed in (see the
    module's docstring).
    """

    def __new__(cls, *args, **kwargs):
        configuration = kwargs.get('configuration')
        if configuration is None:
            raise exception.Any2KvmError(
                'any2kvm hook: Cinder gave the driver no configuration')
        configuration.append_config_values(OPTIONS)
        name = configuration.safe_get('any2kvm_wrapped_driver')
        if not name:
            raise exception.Any2KvmError(
                'any2kvm hook: [%s] any2kvm_wrapped_driver is not set; name '
                'the real volume driver there'
                % getattr(configuration, 'config_group', None))
        if name.rsplit('.', 1)[-1] == cls.__name__:
            raise exception.Any2KvmError(
                'any2kvm hook: [%s] any2kvm_wrapped_driver names the hook '
                'itself' % getattr(configuration, 'config_group', None))
        klass = hooked_class(importutils.import_class(name))
        return klass(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def hooked_class(wrapped):
    """``wrapped`` (a driver class) with :class:`HookMixin` in front."""
    return type('Any2Kvm' + wrapped.__name__, (HookMixin, wrapped),
                {'__module__': __name__, '__doc__': wrapped.__doc__})


class HookMixin(object):
    """Overrides ``clone_image`` of the driver class it is mixed into."""

    def clone_image(self, context, volume, image_location, image_meta,
                    image_service):
        kinds = None
        if self.configuration.safe_get('any2kvm_enabled') is not False:
            kinds = recognise(image_meta, self.configuration.safe_get(
                'any2kvm_kinds') or KINDS)
        if not kinds:
            return super().clone_image(context, volume, image_location,
                                       image_meta, image_service)
        return ImageToVolume(self, context, volume, image_meta,
                             image_service, kinds).run()


class ImageToVolume(object):
    """One image turned into one volume by the hook."""

    def __init__(self, driver, context, volume, image_meta, image_service,
                 kinds):
        self.driver = driver
        self.context = context
        self.volume = volume
        self.image_meta = image_meta
        self.image_service = image_service
        self.kinds = kinds
        self.label = _image_label(image_meta)
        self.image_id = image_meta.get('id')
        #: Bytes the volume holds (Cinder sizes volumes in GiB).
        self.capacity = int(volume.size) << 30

    # -- Cinder's pieces, imported late ---------------------------------------

    @staticmethod
    def _cinder():
        from cinder import exception as cinder_exception
        from cinder.image import image_utils
        return cinder_exception, image_utils

    def _refuse(self, reason, too_big=False):
        """An image that cannot become this volume: not rescheduled."""
        cinder_exception, _ = self._cinder()
        LOG.error('any2kvm: volume %s from %s: %s', self.volume.id,
                  self.label, reason)
        self._user_message('NOT_ENOUGH_SPACE_FOR_IMAGE' if too_big
                           else 'UNKNOWN_ERROR')
        return cinder_exception.ImageUnacceptable(image_id=self.image_id,
                                                  reason=reason)

    def _failed(self, reason):
        cinder_exception, _ = self._cinder()
        LOG.error('any2kvm: volume %s from %s: %s', self.volume.id,
                  self.label, reason)
        self._user_message('UNKNOWN_ERROR')
        return cinder_exception.ImageCopyFailure(reason='%s: %s' % (
            self.label, reason))

    def _too_big(self, size):
        return self._refuse(
            'its disk is %d bytes (%d GiB): it does not fit in a volume of '
            '%d GiB' % (size, _gib(size), self.volume.size), too_big=True)

    def _user_message(self, detail):
        """A Cinder user message (``openstack volume message list``) for
        the failed copy.  Cinder's messages are fixed texts: the reason
        itself is in the log line."""
        try:
            from cinder.message import api as message_api
            from cinder.message import message_field
            message_api.API().create(
                self.context, message_field.Action.COPY_IMAGE_TO_VOLUME,
                resource_uuid=self.volume.id,
                detail=getattr(message_field.Detail, detail))
        except Exception as e:  # a message must not hide the failure
            LOG.debug('any2kvm: no user message for volume %s: %s',
                      self.volume.id, e)

    # -- the job --------------------------------------------------------------

    def run(self):
        cinder_exception, image_utils = self._cinder()
        # As stock Cinder: no conversion at all when an operator disabled
        # it (raises ImageConversionNotAllowed).
        image_utils.check_image_conversion_disable(
            self.image_meta.get('disk_format'), 'raw', self.image_id)
        limits = self.limits = self._limits()
        t0 = time.monotonic()
        source = self._open_source(limits)
        try:
            disk, index = self._pick_disk(source)
            if disk.size_hint is not None and \
                    disk.size_hint > self.capacity:
                raise self._too_big(disk.size_hint)
            model_update = self._create_and_write(disk)
            self._annotate(source, disk, index)
        finally:
            source.close()
        LOG.info('any2kvm: volume %s written from %s (%s, %d bytes) in '
                 '%.1f s', self.volume.id, self.label, disk.format,
                 disk.virtual_size, time.monotonic() - t0)
        return model_update, True

    def _limits(self):
        conf = cfg.CONF
        api.register_opts(conf)
        limits = a2k_limits.Limits.from_conf(conf)
        if not limits.scratch_dir:
            limits.scratch_dir = self._conversion_dir()
        return limits

    @staticmethod
    def _conversion_dir():
        from oslo_utils import fileutils
        path = cfg.CONF.image_conversion_dir
        fileutils.ensure_tree(path)
        return path

    def _open_source(self, limits):
        from any2kvm_os.sources import glance_image
        size = self.image_meta.get('size') or 0
        try:
            source = glance_image.open_image_data(
                self.label, lambda: self.image_service.download(
                    self.context, self.image_id), size, limits,
                checksum=self.image_meta.get('checksum'))
        except exception.Any2KvmError as e:
            raise self._refuse(str(e))
        kind = content_kind(source)
        if kind not in self.kinds:
            source.close()
            raise self._refuse(
                'disk_format %s, container_format %s, but the data is %s'
                % (self.image_meta.get('disk_format'),
                   self.image_meta.get('container_format'), kind))
        return source

    def _pick_disk(self, source):
        props = self.image_meta.get('properties') or {}
        index = props.get(DISK_PROPERTY, 0)
        try:
            index = int(index)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < len(source.disks):
            raise self._refuse('%s=%r: the image has %d disk(s), counted '
                               'from 0' % (DISK_PROPERTY,
                                           props.get(DISK_PROPERTY),
                                           len(source.disks)))
        return source.disks[index], index

    def _create_and_write(self, disk):
        driver = self.driver
        volume = self.volume
        model_update = driver.create_volume(volume) or {}
        try:
            if model_update:
                volume.update(model_update)
            self._write(disk)
        except BaseException as e:
            try:
                driver.delete_volume(volume)
            except Exception as del_err:
                LOG.error('any2kvm: could not delete volume %s after a '
                          'failed conversion: %s', volume.id, del_err)
            if isinstance(e, exception.CapacityError):
                raise self._too_big(e.needed)
            if isinstance(e, exception.Any2KvmError):
                raise self._refuse(str(e))
            if isinstance(e, Exception) and not self._is_cinder_error(e):
                raise self._failed(str(e) or type(e).__name__)
            raise
        return model_update

    def _is_cinder_error(self, e):
        cinder_exception, _ = self._cinder()
        return isinstance(e, cinder_exception.CinderException)

    def _write(self, disk):
        path = self._local_path()
        if path is not None:
            LOG.info('any2kvm: writing %s onto %s', self.label, path)
            self._write_to(path, disk)
            return
        # No local path: attach the volume to this host with os-brick, as
        # Cinder's generic copy_image_to_volume does.
        from cinder.volume import volume_utils
        conf = self.driver.configuration
        props = volume_utils.brick_get_connector_properties(
            conf.use_multipath_for_image_xfer,
            conf.enforce_multipath_for_image_xfer)
        attach_info, volume = self.driver._attach_volume(
            self.context, self.volume, props)
        try:
            device = attach_info['device']['path']
            LOG.info('any2kvm: writing %s onto attached %s', self.label,
                     device)
            if isinstance(device, str):
                self._write_to(device, disk)
            else:
                # A file object (os-brick's RBD connector without a kernel
                # mapping): written through it.
                from any2kvm_os.writers import raw
                self._write_disk(raw.FileObjectWriter(
                    device, 'volume %s' % self.volume.id,
                    self.capacity), disk)
        finally:
            self.driver._detach_volume(self.context, attach_info, volume,
                                       props, force=True)

    def _local_path(self):
        """The volume's file or device on this host, if the driver has one
        and it is raw."""
        try:
            path = self.driver.local_path(self.volume)
        except (AttributeError, NotImplementedError):
            return None
        except Exception as e:
            LOG.debug('any2kvm: no local path for volume %s: %s',
                      self.volume.id, e)
            return None
        if not path or not os.path.exists(path):
            return None
        fmt = self._volume_format()
        if fmt not in (None, 'raw'):
            raise exception.UnsupportedImage(
                path=path, reason='the backend keeps this volume as %s; the '
                'hook writes raw volumes only' % fmt)
        return path

    def _volume_format(self):
        """The on-disk format a RemoteFS-style driver keeps the volume in
        (None when the driver does not say)."""
        admin = getattr(self.volume, 'admin_metadata', None) or {}
        fmt = admin.get('format') if hasattr(admin, 'get') else None
        if fmt:
            return fmt
        conf = self.driver.configuration
        for opt in ('nfs_qcow2_volumes', 'quobyte_qcow2_volumes'):
            if conf.safe_get(opt):
                return 'qcow2'
        return None

    def _open_target(self, path, space):
        """A RawWriter on ``path``; when cinder-volume may not open it
        (root-owned LVM or attached devices), a RawWriter on a sparse
        file of scratch ``space`` instead (what is written there is
        charged to the scratch limit), copied onto ``path`` as root
        afterwards."""
        from any2kvm_os.writers import raw
        try:
            return raw.RawWriter.open_volume(path), None
        except exception.TargetError as e:
            if not isinstance(e.__context__, PermissionError):
                raise
        copy = space.path('volume.raw')
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.capacity)
        finally:
            os.close(fd)
        LOG.info('any2kvm: %s is not writable by this service: converting '
                 'into %s, then copying it as root', path, copy)
        target = space.bound_writer(
            raw.RawWriter.open_volume(copy),
            '%s (volume %s, converted before the copy as root)'
            % (self.label, self.volume.id))
        return target, copy

    def _copy_as_root(self, copy, path):
        """Cinder's own way to write a volume it cannot open: qemu-img
        through its root helper (rootwrap/privsep), as copy_image_to_volume
        does."""
        _, image_utils = self._cinder()
        image_utils.convert_image(copy, path, 'raw', src_format='raw',
                                  run_as_root=True)

    def _write_to(self, path, disk):
        limits = getattr(self, 'limits', None) or self._limits()
        with scratch.Scratch.for_limits(limits, self._conversion_dir(),
                                        prefix='any2kvm-volume-') as space:
            target, copy = self._open_target(path, space)
            self._write_disk(target, disk)
            if copy is not None:
                self._copy_as_root(copy, path)

    def _write_disk(self, target, disk):
        step = [0, time.monotonic(), time.monotonic()]

        def progress(done, total, data=None):
            now = time.monotonic()
            # cinder-volume runs on eventlet: a conversion is pure Python
            # work that never waits on a green socket, and would hold the
            # whole service (RPC, its heartbeat, other volumes) until it
            # ends.  time.sleep is eventlet's there: yield every
            # YIELD_EVERY seconds (pieces can be a few KiB: a yield per
            # piece cost 6 s per GiB).
            if now - step[2] >= YIELD_EVERY:
                time.sleep(0)
                step[2] = now = time.monotonic()
            if now - step[1] >= 10:
                step[1] = now
                if data is None:
                    data = done
                LOG.info('any2kvm: %s -> volume %s: %d MiB of the disk '
                         'done, %d MiB of data written', self.label,
                         self.volume.id, done >> 20, data >> 20)
        try:
            disk.write_to(target, progress)
            target.sync()
        finally:
            target.close()

    def _annotate(self, source, disk, index):
        """Add what Cinder will copy into volume_image_metadata: the
        image's own properties win over ours."""
        vm = source.facts if index == 0 else {}
        ours = properties.image_properties(vm, disk.virtual_size)
        meta = self.image_meta
        props = meta.setdefault('properties', {})
        for key, value in ours.items():
            if key in ('min_disk', 'min_ram'):
                continue
            props.setdefault(key, value)
        props.setdefault('any2kvm_source_format', '%s/%s' % (
            meta.get('disk_format'), meta.get('container_format')))
        # The volume holds a raw disk, whatever the image held.
        meta['disk_format'] = 'raw'
        meta['container_format'] = 'bare'
