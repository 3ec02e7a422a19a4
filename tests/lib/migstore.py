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

"""A small Store for the engine's tests (never shipped): the contract of
:mod:`any2kvm_os.migration.state.api` kept in one JSON file, so that
several processes (the ``any2kvm`` commands a functional test runs) share
it.  Every call takes an exclusive ``flock`` on ``FILE.lock`` for its
read-modify-write; :meth:`hold` keeps a ``flock`` on ``FILE.NAME.hold``
for the block, which the kernel releases when the holder dies (kill -9),
so a dead holder is taken over as the contract says.

URL: ``jsonfile:///abs/path.json``; :func:`register` teaches
``engine.open_store`` the scheme.
"""

import contextlib
import copy
import datetime
import fcntl
import json
import os
import socket
import time

from any2kvm_os.migration.state import api


class FileStore(api.Store):
    def __init__(self, path):
        self.path = str(path)

    @contextlib.contextmanager
    def _state(self, write=True):
        with open(self.path + '.lock', 'a') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(self.path) as f:
                    data = json.load(f)
            except FileNotFoundError:
                data = {}
            yield data
            if write:
                tmp = self.path + '.tmp'
                with open(tmp, 'w') as f:
                    json.dump(data, f)
                os.replace(tmp, self.path)

    def _m(self, data, name):
        if name not in data:
            raise api.NotFound(name)
        m = data[name]
        m['updated_at'] = time.time()
        return m

    def create(self, name, location, target, target_options, disks):
        with self._state() as data:
            if name in data:
                raise api.Exists(name)
            now = time.time()
            data[name] = {
                'name': name, 'location': location, 'target': target,
                'target_options': dict(target_options), 'status': 'created',
                'error': None, 'created_at': now, 'updated_at': now,
                'disks': [dict(d, applied=[]) for d in disks],
                'snapshots': [], 'syncs': [], 'cutover': None}
        return self.get(name)

    def get(self, name):
        with self._state(write=False) as data:
            if name not in data:
                raise api.NotFound(name)
            return copy.deepcopy(data[name])

    def list(self):
        with self._state(write=False) as data:
            return [dict((k, data[n][k]) for k in (
                'name', 'location', 'target', 'status', 'updated_at'))
                for n in sorted(data)]

    def delete(self, name):
        with self._state() as data:
            data.pop(name, None)

    @contextlib.contextmanager
    def hold(self, name, operation):
        self.get(name)
        path = '%s.%s.hold' % (self.path, name)
        with open(path, 'a+') as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                try:
                    holder = json.loads(f.read() or '{}')
                except ValueError:
                    holder = {}
                raise api.Busy(name, holder)
            now = time.time()
            f.seek(0)
            f.truncate()
            f.write(json.dumps({
                'operation': operation, 'pid': os.getpid(),
                'host': socket.gethostname(), 'since': now,
                'since_text': datetime.datetime.fromtimestamp(
                    now, datetime.timezone.utc).isoformat(
                        timespec='seconds')}))
            f.flush()
            yield

    def set_status(self, name, status, error=None):
        assert status in api.STATUSES, status
        with self._state() as data:
            m = self._m(data, name)
            m['status'] = status
            m['error'] = error

    def _disk(self, m, index):
        for d in m['disks']:
            if d['index'] == index:
                return d
        raise api.NotFound('%s disk %s' % (m['name'], index))

    def layer_started(self, name, disk_index, layer_id, layer_name,
                      fingerprint):
        with self._state() as data:
            d = self._disk(self._m(data, name), disk_index)
            assert all(a['layer_id'] != layer_id for a in d['applied']), \
                'layer %s recorded twice' % layer_id
            d['applied'].append({'layer_id': layer_id,
                                 'fingerprint': fingerprint,
                                 'name': layer_name, 'applied_at': None,
                                 'partial': True})

    def layer_applied(self, name, disk_index, layer_id):
        with self._state() as data:
            d = self._disk(self._m(data, name), disk_index)
            for a in d['applied']:
                if a['layer_id'] == layer_id:
                    a['partial'] = False
                    a['applied_at'] = time.time()
                    return
            raise api.NotFound(layer_id)

    def forget_layers(self, name, disk_index, from_layer_id):
        with self._state() as data:
            d = self._disk(self._m(data, name), disk_index)
            ids = [a['layer_id'] for a in d['applied']]
            if from_layer_id in ids:
                d['applied'] = d['applied'][:ids.index(from_layer_id)]

    def snapshot_taken(self, name, snapshot_id):
        with self._state() as data:
            self._m(data, name)['snapshots'].append(
                {'snapshot_id': snapshot_id, 'created_at': time.time(),
                 'removed_at': None})

    def snapshot_removed(self, name, snapshot_id):
        with self._state() as data:
            for s in self._m(data, name)['snapshots']:
                if s['snapshot_id'] == snapshot_id:
                    s['removed_at'] = time.time()

    def sync_recorded(self, name, started_at, ended_at, layers_applied,
                      bytes_read, bytes_written, ok=True, error=None):
        with self._state() as data:
            self._m(data, name)['syncs'].append({
                'started_at': started_at, 'ended_at': ended_at,
                'layers_applied': layers_applied, 'bytes_read': bytes_read,
                'bytes_written': bytes_written, 'ok': ok, 'error': error})

    def cutover_recorded(self, name, shutdown_at, completed_at):
        with self._state() as data:
            self._m(data, name)['cutover'] = {
                'shutdown_at': shutdown_at, 'completed_at': completed_at,
                'downtime': completed_at - shutdown_at}


def open_url(url):
    assert url.startswith('jsonfile://'), url
    return FileStore(url[len('jsonfile://'):])


def register():
    from any2kvm_os.migration import engine
    engine.STORE_SCHEMES['jsonfile'] = open_url
