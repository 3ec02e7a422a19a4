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

"""The attach route writes a volume without os-brick's noise: the
deprecation warning its privsep daemon's eventlet import raises, and its
warnings about the host's other initiators, are shown with ``--debug``
only.  os-brick here is a fake package on ``sys.path`` that does what the
real one does on a host without iSCSI or NVMe tools: warns at import and
logs at WARNING and ERROR through its ``os_brick.*`` loggers."""

import logging
import sys
import textwrap
import types
import warnings

import pytest

from any2kvm_os import exception
from any2kvm_os.targets import cinder as cinder_target

FAKE_CONNECTOR = '''
import logging
import os
import warnings

warnings.warn('Eventlet is deprecated. It is currently being maintained '
              'in bugfix mode', FutureWarning)
LOG = logging.getLogger(__name__)


def get_connector_properties(root_helper, my_ip, multipath, enforce):
    LOG.warning('Could not find the iSCSI Initiator File '
                '/etc/iscsi/initiatorname.iscsi')
    LOG.warning('Could not find nvme_core/parameters/multipath')
    return {'ip': my_ip}


class _Conn(object):
    def connect_volume(self, data):
        if os.environ.get('FAKE_BRICK_FAIL'):
            LOG.error('Failed to mount %s, reason: mount: unknown '
                      'filesystem type', data['export'])
            raise OSError('NFS mount failed for share %s' % data['export'])
        return {'path': os.environ['FAKE_BRICK_PATH']}

    def disconnect_volume(self, data, device):
        # (device None: a connection another process made, known by its
        # connection data alone)
        LOG.warning('disconnecting %s', device['path'] if device else
                    data.get('export'))


class InitiatorConnector(object):
    #: The keyword arguments of the last factory call.
    kwargs = None

    @classmethod
    def factory(cls, protocol, root_helper, **kwargs):
        # os_brick/initiator/connectors/remotefs.py: the mount point base
        # comes from conn= (or the protocol's own keyword).
        cls.kwargs = kwargs
        if not kwargs.get('conn'):
            logging.getLogger('os_brick.remotefs').warning(
                'Connection details not present. RemoteFsClient may not '
                'initialize properly.')
        return _Conn()
'''

FAKE_PRIVILEGED = '''
class _Ctx(object):
    def set_client_mode(self, mode):
        self.mode = mode


default = _Ctx()
'''


class _Attachments(object):
    def __init__(self):
        self.calls = []

    def show(self, att_id):
        self.calls.append('show ' + att_id)
        return types.SimpleNamespace(connection_info={
            'driver_volume_type': 'nfs',
            'data': {'export': '127.0.0.1:/left', 'format': 'raw'}})

    def create(self, vol_id, props, mode):
        self.calls.append('create')
        return {'id': 'att-1', 'connection_info': {
            'driver_volume_type': 'nfs',
            'data': {'export': '127.0.0.1:/export', 'format': 'raw'}}}

    def complete(self, att_id):
        self.calls.append('complete')

    def delete(self, att_id):
        self.calls.append('delete' if att_id == 'att-1' else
                          'delete ' + att_id)


class _Cinder(object):
    def __init__(self, attachments=()):
        self.attachments = _Attachments()
        self.volumes = types.SimpleNamespace(
            get=lambda vol_id: types.SimpleNamespace(
                status='available', attachments=list(attachments)))


@pytest.fixture
def brick(tmp_path, monkeypatch):
    """The fake os-brick, importable afresh; its connector module."""
    pkg = tmp_path / 'os_brick'
    (pkg / 'initiator').mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    (pkg / 'initiator' / '__init__.py').write_text('')
    (pkg / 'initiator' / 'connector.py').write_text(
        textwrap.dedent(FAKE_CONNECTOR))
    (pkg / 'privileged.py').write_text(textwrap.dedent(FAKE_PRIVILEGED))
    for name in list(sys.modules):
        if name == 'os_brick' or name.startswith('os_brick.'):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    volume = tmp_path / 'volume'
    volume.write_bytes(b'')
    monkeypatch.setenv('FAKE_BRICK_PATH', str(volume))
    monkeypatch.delenv('FAKE_BRICK_FAIL', raising=False)
    return volume


def _attach(volume, **kwargs):
    # os-brick is imported by attached() only: its import warning counts.
    cinder = _Cinder()
    with cinder_target.attached(cinder, 'vol-1', poll=0, **kwargs) as path:
        assert path == str(volume)
    return cinder


def _brick_records(caplog):
    return [r for r in caplog.records if r.name.startswith('os_brick')]


def test_a_write_shows_nothing_of_os_brick(brick, caplog):
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        cinder = _attach(brick)
    assert cinder.attachments.calls == ['create', 'complete', 'delete']
    assert _brick_records(caplog) == []
    assert [str(w.message) for w in seen] == []
    # The os_brick logger is as it was afterwards.
    assert logging.getLogger('os_brick').level == logging.NOTSET


def test_with_debug_os_brick_is_heard(brick, caplog):
    caplog.set_level(logging.DEBUG)
    _attach(brick)
    messages = [r.getMessage() for r in _brick_records(caplog)]
    assert any('iSCSI Initiator File' in m for m in messages), messages
    assert any('RemoteFsClient' in m for m in messages), messages
    assert any(m.startswith('disconnecting ') for m in messages), messages


def test_the_mount_point_base_reaches_the_connector_as_conn(brick, caplog):
    """As os-brick's remote file system connector takes it: conn=
    (without it, it warns that it may not initialize properly), and the
    protocol's own keyword."""
    caplog.set_level(logging.DEBUG)
    _attach(brick, mount_point_base='/mnt/a2k')
    connector = sys.modules['os_brick.initiator.connector']
    assert connector.InitiatorConnector.kwargs == {
        'nfs_mount_point_base': '/mnt/a2k',
        'conn': {'mount_point_base': '/mnt/a2k'}}
    messages = [r.getMessage() for r in _brick_records(caplog)]
    assert not any('RemoteFsClient' in m for m in messages), messages


def test_a_failed_mount_is_our_one_error(brick, caplog, monkeypatch):
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv('FAKE_BRICK_FAIL', '1')
    with pytest.raises(cinder_target.AttachUnavailable) as e:
        _attach(brick)
    assert 'volume vol-1 (nfs) cannot be reached from this host' in str(
        e.value)
    assert 'NFS mount failed for share 127.0.0.1:/export' in str(e.value)
    assert isinstance(e.value, exception.Any2KvmError)
    assert _brick_records(caplog) == []
    assert logging.getLogger('os_brick').level == logging.NOTSET


def test_attachments_a_killed_run_left_on_this_host_are_removed(
        brick, caplog):
    """With ``release_left`` (a migration under its lease): the volume's
    attachments to this host that no server has (a killed run's) are
    disconnected and deleted before the new one; a server's, or another
    host's, are left alone."""
    import socket
    caplog.set_level(logging.WARNING)
    me = socket.gethostname()
    cinder = _Cinder([
        {'attachment_id': 'left-1', 'host_name': me, 'server_id': None},
        {'attachment_id': 'nova-1', 'host_name': me, 'server_id': 'vm-1'},
        {'attachment_id': 'far-1', 'host_name': 'elsewhere',
         'server_id': None}])
    with cinder_target.attached(cinder, 'vol-1', poll=0,
                                release_left=True) as path:
        assert path == str(brick)
    assert cinder.attachments.calls == [
        'show left-1', 'delete left-1', 'create', 'complete', 'delete']
    text = caplog.text
    assert ('volume vol-1: removing its attachment left-1 to this host '
            '(%s), left by a run that was stopped' % me) in text, text
    # Without it (an import's new volume), nothing is looked at.
    cinder = _attach(brick)
    assert cinder.attachments.calls == ['create', 'complete', 'delete']


def test_overlapping_attachments_give_the_level_back_once_all_end():
    # Two threads' attachments overlap without nesting (A in, B in, A
    # out, B out): os-brick stays quiet until the last ends, and its
    # level is then what it was before the first.
    log = logging.getLogger('os_brick')
    log.setLevel(logging.INFO)
    try:
        a = cinder_target.brick_logs_for_debug()
        b = cinder_target.brick_logs_for_debug()
        a.__enter__()
        b.__enter__()
        a.__exit__(None, None, None)
        assert log.level > logging.CRITICAL
        b.__exit__(None, None, None)
        assert log.level == logging.INFO
    finally:
        log.setLevel(logging.NOTSET)
