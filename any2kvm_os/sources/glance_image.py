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

from any2kvm_os import clients
from any2kvm_os.containers import registry
from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os import scratch
from any2kvm_os.sources import base

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
        glance = clients.glance_client(self.session)
        try:
            image = self._find(glance, location)
        except exception.Any2KvmError:
            raise
        except Exception as e:
            raise clients.cloud_error('glance image %s' % location, e)
        label = 'glance image %s' % image['id']
        if image.get('status') != 'active':
            raise exception.Any2KvmError('%s: is %s, not active' % (
                label, image.get('status')))

        def chunks():
            try:
                return glance.images.data(image['id'])
            except Exception as e:
                raise clients.cloud_error(label, e)
        source = open_image_data(label, chunks, image.get('size') or 0,
                                 self.limits, checksum=image.get('checksum'),
                                 wrap_error=clients.cloud_error)
        if not source.facts.get('name') and image.get('name'):
            source.facts['name'] = image['name']
        return source


def open_image_data(label, chunks, size, limits, checksum=None,
                    wrap_error=None):
    """Open an image's data as it comes from Glance.

    ``chunks()`` starts a download (an iterable of bytes; it may be called
    again for another pass).  A XenServer tar or tgz, or an XVA (plain,
    gzip, bzip2, xz or zstd), or an OVA, is read as it arrives (by the
    container plugin that claims the head of the data), in one pass per use
    (an XVA: one for its ova.xml, one per disk; an OVA: one for its
    descriptor, one per disk), with no copy of the archive on disk (checked
    against ``size`` and ``checksum`` at its end, before anything is
    committed); anything else is stored in scratch first
    (:func:`open_downloaded`).
    """
    reader = fileio.ChunkReader(chunks(), label, size, checksum)
    try:
        head = reader.head(reader.HEAD)
    except exception.Any2KvmError:
        raise
    except Exception as e:
        if wrap_error is None:
            raise
        raise wrap_error(label, e)
    plugin = registry.stream_plugin(head)
    if plugin is None:
        return open_downloaded(label, reader.rest(), size, limits,
                               checksum=None, wrap_error=wrap_error)
    first = [reader]

    def opener():
        if first:
            return first.pop()
        return fileio.ChunkReader(chunks(), label, size, checksum)

    def fallback():
        # What the plugin finds it cannot read as it arrives (an OVA
        # whose disk has no one-pass reader) goes through scratch.
        reader = fileio.ChunkReader(chunks(), label, size, checksum)
        return open_downloaded(label, reader.rest(), size, limits,
                               checksum=None, wrap_error=wrap_error)
    LOG.info('%s: %s, converted as it downloads', label, plugin.noun)
    return plugin.open_stream(label, limits, opener, fallback)


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
    space = scratch.Scratch.for_limits(limits, prefix='any2kvm-glance-')
    if size > space.limit:
        raise space.limit_error(label, size)
    path = space.path('image')
    try:
        space.reserve(size, label)
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
        source = registry.open_path(path, limits)
    except exception.Any2KvmError as e:
        space.cleanup()
        raise exception.Any2KvmError(str(e).replace(path, label))
    except BaseException as e:
        space.cleanup()
        if isinstance(e, Exception) and wrap_error is not None:
            raise wrap_error(label, e)
        raise
    source.relabel(path, label)
    source.on_close(space.cleanup)
    return source
