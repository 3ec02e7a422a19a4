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

"""A Cinder for unit tests: volumes are sparse files in a directory, and
an attachment is the file itself (what os-brick gives for an NFS share).
It keeps the rules the migration relies on: a volume is written only
while attached, an attached volume is ``in-use`` and cannot be deleted or
extended, sizes are whole GiB.  Test code only."""

import contextlib
import os
import subprocess
import uuid


def _gib():
    # What the code under test calls a GiB (a test may shrink it).
    from any2kvm_os.targets import cinder as cinder_target
    return cinder_target.GiB


class NotFound(Exception):
    pass


class Volume(object):
    def __init__(self, manager, vol_id, size, name, volume_type):
        self.manager = manager
        self.id = vol_id
        self.size = size
        self.name = name
        self.volume_type = volume_type
        self.status = 'available'
        self.bootable = 'false'
        self.volume_image_metadata = {}


class Volumes(object):
    def __init__(self, cloud):
        self.cloud = cloud

    def create(self, size, name=None, volume_type=None, description=None,
               imageRef=None):
        if self.cloud.refuse_create:
            raise RuntimeError('VolumeLimitExceeded: quota exceeded')
        v = Volume(self, str(uuid.uuid4()), size, name, volume_type)
        self.cloud.volumes_by_id[v.id] = v
        with open(self.cloud.path(v.id), 'wb') as f:
            f.truncate(size * _gib())
        self.cloud.calls.append(('create', v.id, size))
        return v

    def get(self, vol_id):
        try:
            return self.cloud.volumes_by_id[vol_id]
        except KeyError:
            raise NotFound('volume %s not found' % vol_id)

    def delete(self, vol_id):
        v = self.get(vol_id)
        if v.status == 'in-use':
            raise RuntimeError('volume %s is in-use' % vol_id)
        del self.cloud.volumes_by_id[vol_id]
        os.unlink(self.cloud.path(vol_id))
        self.cloud.calls.append(('delete', vol_id))

    def extend(self, vol_id, new_size):
        v = self.get(vol_id)
        if v.status != 'available' or new_size <= v.size:
            raise RuntimeError('cannot extend %s (%s, %d -> %d)'
                               % (vol_id, v.status, v.size, new_size))
        with open(self.cloud.path(vol_id), 'r+b') as f:
            f.truncate(new_size * _gib())
        v.size = new_size
        self.cloud.calls.append(('extend', vol_id, new_size))

    def set_bootable(self, vol_id, flag):
        self.get(vol_id).bootable = 'true' if flag else 'false'

    def set_image_metadata(self, vol_id, meta):
        assert all(isinstance(v, str) for v in meta.values())
        self.get(vol_id).volume_image_metadata.update(meta)

    def revert_to_snapshot(self, volume, snap):
        v = self.get(volume.id)
        assert v.status == 'available', v.status
        _copy(self.cloud.path(snap.id), self.cloud.path(v.id))
        self.cloud.calls.append(('revert', v.id, snap.id))

    def delete_image_metadata(self, vol_id, keys):
        meta = self.get(vol_id).volume_image_metadata
        for k in keys:
            del meta[k]
        self.cloud.calls.append(('delete-image-metadata', vol_id,
                                 sorted(keys)))


def _copy(src, dst):
    # The volumes are sparse files of a GiB or more.
    subprocess.run(['cp', '--sparse=always', src, dst], check=True,
                   timeout=120)


class Snapshot(object):
    def __init__(self, snap_id, volume_id, name):
        self.id = snap_id
        self.volume_id = volume_id
        self.name = name
        self.status = 'available'


class Snapshots(object):
    """Cinder's snapshots of the fake's volumes: a copy of the volume's
    file, restored by ``volumes.revert_to_snapshot`` (API 3.40)."""

    def __init__(self, cloud):
        self.cloud = cloud
        self.by_id = {}

    def create(self, vol_id, force=False, name=None, description=None):
        v = self.cloud.volumes.get(vol_id)
        assert v.status == 'available' or force, v.status
        snap = Snapshot(str(uuid.uuid4()), vol_id, name)
        _copy(self.cloud.path(vol_id), self.cloud.path(snap.id))
        self.by_id[snap.id] = snap
        self.cloud.calls.append(('snapshot', vol_id, snap.id))
        return snap

    def get(self, snap_id):
        try:
            return self.by_id[snap_id]
        except KeyError:
            raise NotFound('snapshot %s not found' % snap_id)

    def delete(self, snap_id):
        self.get(snap_id)
        del self.by_id[snap_id]
        os.unlink(self.cloud.path(snap_id))
        self.cloud.calls.append(('delete-snapshot', snap_id))

    def list(self, search_opts=None):
        vol_id = (search_opts or {}).get('volume_id')
        return [s for s in self.by_id.values()
                if vol_id is None or s.volume_id == vol_id]


class FakeCinder(object):
    """``client`` is what a CinderDestination takes; ``attach`` its
    attach function (as :func:`any2kvm_os.targets.cinder.attached`)."""

    def __init__(self, directory, unreachable=()):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.volumes_by_id = {}
        self.volumes = Volumes(self)
        self.volume_snapshots = Snapshots(self)
        self.calls = []
        self.unreachable = set(unreachable)
        self.refuse_create = False
        self.attached_now = set()

    def path(self, vol_id):
        return os.path.join(self.dir, vol_id)

    def read(self, vol_id, length):
        with open(self.path(vol_id), 'rb') as f:
            return f.read(length)

    @contextlib.contextmanager
    def attach(self, cinder, vol_id, vol_name=None, **kwargs):
        assert cinder is self
        v = self.volumes.get(vol_id)
        if vol_name in self.unreachable or vol_id in self.unreachable:
            from any2kvm_os.targets import cinder as cinder_target
            raise cinder_target.AttachUnavailable(
                'volume %s (nfs) cannot be reached from this host' % vol_id)
        assert v.status == 'available', v.status
        v.status = 'in-use'
        self.attached_now.add(vol_id)
        self.calls.append(('attach', vol_id))
        try:
            yield self.path(vol_id)
        finally:
            v.status = 'available'
            self.attached_now.discard(vol_id)
            self.calls.append(('detach', vol_id))

    def count(self, what):
        return len([c for c in self.calls if c[0] == what])
