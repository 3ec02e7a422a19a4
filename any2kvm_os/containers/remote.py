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

"""A directory on a remote host as a member set: an SR directory of a
XenServer host, later an ESXi datastore or a Hyper-V share.

The members are the regular files of that one directory, listed and opened
through a connection (:class:`any2kvm_os.ssh.connection.Connection`: its
``listdir`` and ``open_file``); each opens as a random-access file the
format readers read as they read a local one, so only the blocks their
tables say are allocated cross the wire.  Parents are found among these
members by unique id, exactly as for a local directory: nothing outside
the directory is ever opened, whatever a VHD header or the hypervisor
says.
"""

import posixpath

from any2kvm_os.containers import base
from any2kvm_os import exception


class RemoteDirectoryContainer(base.Container):
    """The regular files of ``directory`` on the host of ``connection``."""

    is_directory = True

    def __init__(self, connection, directory, leaf_name, limits,
                 label=None):
        if not posixpath.isabs(directory) or '\0' in directory:
            raise exception.ChainError(
                path=directory, reason='not an absolute directory')
        super(RemoteDirectoryContainer, self).__init__(directory)
        self.connection = connection
        self.directory = posixpath.normpath(directory)
        self.leaf_name = leaf_name
        self.limits = limits
        #: How the host is named in messages (``root@xs1``).
        self.label = label or getattr(connection, 'label', 'remote')
        self._members = None
        #: {name: what it is} of the entries that are no regular file.
        self._skipped = {}
        #: The leaf may be open for writing on the host (a running VM's
        #: disk): its view is ``live`` (see :mod:`any2kvm_os.formats.vhd`).
        self.live_leaf = False

    def member_names(self):
        if self._members is None:
            skipped = {}
            names = self.connection.listdir(
                self.directory, self.limits.max_directory_entries,
                skipped=skipped)
            for name in names:
                # A name from the host's listing is joined to the
                # directory: one that is not a plain file name (a host
                # that lies, a broken SFTP server) could lead out of it.
                if (not name or '/' in name or '\0' in name or
                        name in ('.', '..')):
                    raise exception.ChainError(
                        path='%s:%s' % (self.label, self.directory),
                        reason='the host listed a member named %r, which '
                        'is not a file name' % (name,))
            self._skipped = skipped
            self._members = names
        return self._members

    def not_read(self, name):
        """Why ``name``, listed in the directory, is no member (``a
        symbolic link (not followed)``), or None."""
        self.member_names()
        return self._skipped.get(name)

    #: :meth:`open_view` takes ``prefetch``.
    prefetches = True

    def open_view(self, name, prefetch=None):
        """The member ``name``; ``prefetch``: ranges [(offset, length)]
        read with its size in one round trip and kept in memory (see
        :meth:`~any2kvm_os.ssh.connection.Connection.open_file`)."""
        view = self._open(name, prefetch)
        self._views.append(view)
        return view

    def _open(self, name, prefetch=None):
        if name not in self.member_names():
            raise exception.ChainError(
                path=self.display_name(name),
                reason='not a regular file of %s' % self.directory)
        kw = {'prefetch': prefetch} if prefetch else {}
        view = self.connection.open_file(
            posixpath.join(self.directory, name),
            name=self.display_name(name), **kw)
        if self.live_leaf and name == self.leaf_name:
            view.live = True
        return view

    def display_name(self, name):
        return '%s:%s' % (self.label, posixpath.join(self.directory, name))
