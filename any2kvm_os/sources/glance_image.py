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

"""The glance-image source: an image already in Glance, converted.

Operators often hold XenServer exports in Glance as ``vhd``/``ovf`` tgz
images, OVAs as ``ova`` images, and plain VHD/VHDX/VMDK images that their
KVM cloud cannot boot.  This source finds the image by id or by (unique)
name.  A XenServer tar or tgz, an XVA, or an OVA whose disks can be read
in one pass, is converted as it downloads (no copy of the archive on
disk); other images are downloaded into a private
(0700) scratch directory, bounded by ``scratch_limit_gib``, and opened
with the same content detection as a local file (the copy is removed
when the source is closed).  Either way the data is checked against the
image's size and checksum before anything is committed.
"""

import hashlib
import logging
import os
import shutil
import tempfile

from any2kvm_os import convert
from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os import vm
from any2kvm_os.sources import base
from any2kvm_os.targets import glance as glance_target

CHUNK = 4 << 20
LOG = logging.getLogger(__name__)


class GlanceImageSource(base.Source):
    name = 'glance-image'
    description = 'an image already in Glance (XenServer vhd/ovf tgz, ova, ' \
        'vhd, vhdx, vmdk), by id or name'

    def _find(self, glance, location):
        try:
            return glance.images.get(location)
        except Exception:
            pass
        found = list(glance.images.list(filters={'name': location}))
        if not found:
            raise exception.Any2KvmError(
                'glance image %s: no image with that id or name' % location)
        if len(found) > 1:
            raise exception.Any2KvmError(
                'glance image %s: %d images have that name; give the id'
                % (location, len(found)))
        return found[0]

    def open(self, location):
        if self.session is None:
            raise exception.Any2KvmError(
                'glance image %s: the glance-image source needs cloud '
                'credentials' % location)
        glance = glance_target.glance_client(self.session)
        try:
            image = self._find(glance, location)
        except exception.Any2KvmError:
            raise
        except Exception as e:
            raise glance_target.cloud_error('glance image %s' % location, e)
        label = 'glance image %s' % image['id']
        if image.get('status') != 'active':
            raise exception.Any2KvmError('%s: is %s, not active' % (
                label, image.get('status')))

        def chunks():
            try:
                return glance.images.data(image['id'])
            except Exception as e:
                raise glance_target.cloud_error(label, e)
        source = open_image_data(label, chunks, image.get('size') or 0,
                                 self.limits, checksum=image.get('checksum'),
                                 wrap_error=glance_target.cloud_error)
        if not source.facts.get('name') and image.get('name'):
            source.facts['name'] = image['name']
        return source


def open_image_data(label, chunks, size, limits, checksum=None,
                    wrap_error=None):
    """Open an image's data as it comes from Glance.

    ``chunks()`` starts a download (an iterable of bytes; it may be called
    again for another pass).  A XenServer tar or tgz, or an XVA (plain,
    gzip, bzip2 or xz), is read as it arrives, in one pass per use (an XVA:
    one for its ova.xml, one per disk; an OVA: one for its descriptor, one
    per disk, see :mod:`any2kvm_os.containers.ova_stream`), with no copy
    of the archive on disk
    (checked against ``size`` and ``checksum`` at its end, before anything
    is committed); anything else is stored in scratch first
    (:func:`open_downloaded`).
    """
    from any2kvm_os.containers import xenserver
    from any2kvm_os.containers import xva
    reader = fileio.ChunkReader(chunks(), label, size, checksum)
    try:
        head = reader.head(reader.HEAD)
    except exception.Any2KvmError:
        raise
    except Exception as e:
        if wrap_error is None:
            raise
        raise wrap_error(label, e)
    if xenserver.head_is_xenserver(head):
        kind = 'a XenServer archive'
    elif xva.head_is_xva(head):
        kind = 'an XVA'
    elif _head_is_ova(head):
        kind = 'an OVA'
    else:
        return open_downloaded(label, reader.rest(), size, limits,
                               checksum=None, wrap_error=wrap_error)
    first = [reader]

    def opener():
        if first:
            return first.pop()
        return fileio.ChunkReader(chunks(), label, size, checksum)
    if kind == 'an OVA':
        return _open_ova(label, chunks, size, limits, checksum, wrap_error,
                         opener)
    LOG.info('%s: %s, converted as it downloads', label, kind)
    if kind == 'an XVA':
        return xva.open_xva_stream(label, limits, opener)
    stream = xenserver.XenServerStream(label, limits, opener=opener)
    return vm.Vm(label, stream.container, [stream])


def _head_is_ova(head):
    from any2kvm_os.containers import ova_stream
    return ova_stream.head_is_ova(head)


def _open_ova(label, chunks, size, limits, checksum, wrap_error, opener):
    """An OVA read as it downloads (see :mod:`ova_stream`); one that
    cannot be goes through scratch (:func:`open_downloaded`)."""
    from any2kvm_os.containers import ova_stream

    def fallback():
        reader = fileio.ChunkReader(chunks(), label, size, checksum)
        return open_downloaded(label, reader.rest(), size, limits,
                               checksum=None, wrap_error=wrap_error)
    return ova_stream.open_ova_stream(label, limits, opener,
                                      fallback=fallback)


def open_downloaded(label, chunks, size, limits, checksum=None,
                    wrap_error=None):
    """Store an image's data into private scratch and open it.

    ``chunks`` yields the ``size`` bytes of the image named ``label``
    (Glance's data, through glanceclient or Cinder's image service).  The
    copy goes into a private (0700) directory under ``limits.scratch_dir``,
    bounded by ``limits.scratch_limit`` and the free space there, and is
    checked against ``size`` and the MD5 ``checksum``.  Returns the
    :class:`~any2kvm_os.vm.Vm`; closing it removes the copy.
    Messages name ``label``, never the scratch file.  Errors that are not
    ours are passed to ``wrap_error(label, exc)`` when given.
    """
    if size > limits.scratch_limit:
        raise exception.Any2KvmError(
            '%s: %d bytes exceed the scratch limit of %d bytes '
            '(scratch_limit_gib)' % (label, size, limits.scratch_limit))
    tmp = tempfile.mkdtemp(prefix='any2kvm-glance-', dir=limits.scratch_dir)
    path = os.path.join(tmp, 'image')
    try:
        st = os.statvfs(tmp)
        if st.f_bavail * st.f_frsize < size:
            raise exception.TargetError(
                path=tmp, reason='not enough free space for %s (%d bytes)'
                % (label, size))
        md5 = hashlib.md5(usedforsecurity=False)
        got = 0
        with open(path, 'wb') as f:
            for chunk in chunks:
                got += len(chunk)
                if got > size:
                    raise exception.InvalidArchive(
                        path=label, reason='Glance sent more than the %d '
                        'bytes the image has' % size)
                md5.update(chunk)
                f.write(chunk)
        if got != size:
            raise exception.InvalidArchive(
                path=label, reason='download ended after %d of %d bytes'
                % (got, size))
        if checksum and md5.hexdigest() != checksum:
            raise exception.InvalidArchive(
                path=label, reason='downloaded data does not match the '
                'image checksum')
        source = convert.open_source(path, limits)
    except exception.Any2KvmError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise exception.Any2KvmError(str(e).replace(path, label))
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and wrap_error is not None:
            raise wrap_error(label, e)
        raise
    source.path = label
    for disk in source.disks:
        disk.name = disk.name.replace(path, label)
    source.on_close(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return source
