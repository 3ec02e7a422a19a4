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

"""The remote SR directory as a container: the names a host lists are
file names or refused, and a listing is never silently cut short."""

import stat
import types

import pytest

from any2kvm_os.containers import remote
from any2kvm_os import exception
from any2kvm_os import limits as limits_mod
from any2kvm_os.ssh import connection

SR = '/run/sr-mount/5f6b4ac6-1d12-4f8e-9f0a-0a1b2c3d4e5f'


class FakeConnection(object):
    label = 'root@xs1'

    def __init__(self, names):
        self.names = names
        self.opened = []

    def listdir(self, path, limit, skipped=None):
        return list(self.names)

    def open_file(self, path, name=None):
        self.opened.append(path)
        return path


@pytest.mark.parametrize('bad', ['../etc-passwd.vhd', 'a/b.vhd', '..', '.',
                                 '', 'x\0.vhd'])
def test_a_listed_name_that_is_not_a_file_name_is_refused(bad):
    conn = FakeConnection(['a.vhd', bad])
    c = remote.RemoteDirectoryContainer(conn, SR, 'a.vhd',
                                        limits_mod.Limits())
    with pytest.raises(exception.ChainError) as e:
        c.member_names()
    assert 'not a file name' in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(exception.ChainError):
        c._open(bad)
    assert conn.opened == []


def test_plain_names_are_members():
    conn = FakeConnection(['a.vhd', 'b..vhd', '.hidden.vhd'])
    c = remote.RemoteDirectoryContainer(conn, SR, 'a.vhd',
                                        limits_mod.Limits())
    assert c.member_names() == ['a.vhd', 'b..vhd', '.hidden.vhd']
    c._open('b..vhd')
    assert conn.opened == [SR + '/b..vhd']


def _fake_self(entries):
    """A Connection whose pipeline lists ``entries`` [(name, mode)]."""
    def listdir(path, limit, skipped=None):
        if len(entries) > limit:
            raise exception.SshError(
                host='root@xs1', reason='%s has more than %d entries '
                '(max_directory_entries); raise the limit to read it'
                % (path, limit))
        return list(entries)
    return types.SimpleNamespace(
        label='root@xs1', pipeline=types.SimpleNamespace(listdir=listdir),
        retrying=lambda what, step, retry=True: step())


def test_listdir_refuses_a_directory_beyond_the_limit():
    """A listing cut at the limit would make a parent beyond it look
    missing: more entries than the limit is refused, naming the limit."""
    entries = [('%04d.vhd' % i, stat.S_IFREG | 0o644) for i in range(5)]
    fake = _fake_self(entries)
    assert connection.Connection.listdir(fake, SR, 5) == [
        '%04d.vhd' % i for i in range(5)]
    with pytest.raises(exception.SshError) as e:
        connection.Connection.listdir(fake, SR, 4)
    text = str(e.value)
    assert 'more than 4 entries' in text and SR in text
    assert 'max_directory_entries' in text and '\n' not in text


def test_listdir_keeps_regular_files_only():
    entries = [('b.vhd', stat.S_IFREG | 0o644), ('dir', stat.S_IFDIR | 0o755),
               ('link', stat.S_IFLNK | 0o777), ('a.vhd', stat.S_IFREG),
               ('nomode.vhd', None)]
    assert connection.Connection.listdir(_fake_self(entries), SR, 10) == [
        'a.vhd', 'b.vhd']


class SkippingConnection(FakeConnection):
    def __init__(self, names, skipped):
        super(SkippingConnection, self).__init__(names)
        self.skipped = skipped

    def listdir(self, path, limit, skipped=None):
        skipped.update(self.skipped)
        return list(self.names)


def test_a_parent_that_is_a_symbolic_link_is_said_so():
    """The parent a VHD names, replaced by a symbolic link on the host:
    refused as a link, not as "missing"."""
    from any2kvm_os.chain import layer_chain
    conn = SkippingConnection(['leaf.vhd'], {
        'base.vhd': 'a symbolic link (not followed)'})
    c = remote.RemoteDirectoryContainer(conn, SR, 'leaf.vhd',
                                        limits_mod.Limits())
    assert c.not_read('base.vhd') == 'a symbolic link (not followed)'
    assert c.not_read('leaf.vhd') is None
    ref = types.SimpleNamespace(id='1234', name_hints=['base.vhd'])
    with pytest.raises(exception.ChainError) as e:
        layer_chain._find_by_id(c, 'root@xs1:%s/leaf.vhd' % SR, ref,
                                ['leaf.vhd'], c.member_names(), {})
    assert str(e.value) == (
        'root@xs1:%s/leaf.vhd: parent root@xs1:%s/base.vhd (1234) is a '
        'symbolic link (not followed) in its directory: only regular files '
        'are read' % (SR, SR))
