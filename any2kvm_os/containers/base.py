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

"""Where the bytes of a disk travel: a directory, a tar, an OVA, an XVA.

Two bases live here:

* :class:`ContainerType`, the plugin (stevedore ``any2kvm_os.containers``):
  one kind of input, which it recognises by content (``probe``; for a
  download, ``probe_head``) and opens as an :class:`any2kvm_os.vm.Vm`.
  :mod:`any2kvm_os.containers.registry` runs the detection loop over them.
* :class:`Container`, a set of named files that belong together (the leaf
  and the files its parents may be among), opened as file views.  Parents
  are only ever looked for among a container's own members: never at a
  path written inside an image.
"""

import abc
import os
import stat

from any2kvm_os import exception
from any2kvm_os import fileio


class ContainerType(object, metaclass=abc.ABCMeta):
    """One kind of input any2kvm opens: the plugin of a container.

    The entry point name is :attr:`name`, and it is what
    :attr:`any2kvm_os.vm.Vm.container` reports for what the plugin opened.
    """

    #: Entry point name, e.g. 'ova'.
    name = None
    #: One line for ``openstack any2kvm source list``.
    description = None
    #: How a message calls such an input: 'an OVA package'.
    noun = None
    #: The short name of an archive kind ('OVA'), listed when a file is
    #: of no known kind; None for what is not an archive.
    archive_title = None
    #: The ``--source`` word that selects it (default: :attr:`name`).
    source = None
    #: When two plugins claim the same input, the higher priority wins
    #: (they are asked in that order).
    priority = 0
    #: {kind word: (Glance container_format, disk_format or None)}: the
    #: Glance images that may hold this container (the Cinder hook's
    #: ``any2kvm_kinds``).  Empty: the hook leaves such images alone.
    glance_kinds = {}

    @classmethod
    def source_name(cls):
        return cls.source or cls.name

    @abc.abstractmethod
    def probe(self, view, path, limits):
        """Whether the regular file at ``path`` (``view``: a FileView of
        it) is of this kind.  Reads little, never raises for a file that
        is not."""

    @abc.abstractmethod
    def open(self, path, limits):
        """Open the file at ``path``; return an :class:`~any2kvm_os.vm.Vm`
        (the caller closes it)."""

    def probe_head(self, head):
        """Whether a download that starts with ``head`` (bytes) is of this
        kind and can be read as it arrives (:meth:`open_stream`)."""
        return False

    def open_stream(self, label, limits, opener, fallback):
        """Open a download as it arrives: ``opener()`` returns a new
        forward-only file object of the whole input per pass.  What cannot
        be read that way after all may be handed to ``fallback()``, which
        returns the VM opened from a scratch copy."""
        raise NotImplementedError(self.name)


class Container(object, metaclass=abc.ABCMeta):
    """A set of named files a chain may be resolved within."""

    #: Whether the members are the files of a directory (else of an
    #: archive): messages say which.
    is_directory = False

    def __init__(self, path):
        self.path = path
        self._views = []

    @abc.abstractmethod
    def member_names(self):
        """Names of the regular files a parent may be among."""

    @abc.abstractmethod
    def _open(self, name):
        """Return a :class:`FileView` of member ``name``."""

    def open_view(self, name):
        view = self._open(name)
        self._views.append(view)
        return view

    def display_name(self, name):
        """How a member is named in messages."""
        return name

    def opener(self, referrer):
        """An ``opener(name)`` for a reader of member ``referrer``.

        It opens only plain names of other members of this container (a
        VMDK extent file, say): never a path, an absolute name, ``..``, a
        link or anything outside the container.
        """
        def open_sibling(name):
            if (not name or '/' in name or '\\' in name
                    or name in ('.', '..') or '\0' in name):
                raise exception.ChainError(
                    path=self.display_name(referrer), reason='refers to %r: '
                    'only files of the same %s can be used' % (
                        name, 'directory' if self.is_directory
                        else 'archive'))
            if name not in self.member_names():
                raise exception.ChainError(
                    path=self.display_name(referrer), reason='refers to %r, '
                    'which is not a regular file of the same %s' % (
                        name, 'directory' if self.is_directory
                        else 'archive'))
            return self.open_view(name)
        return open_sibling

    def close(self):
        for view in self._views:
            view.close()
        self._views = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DirectoryContainer(Container):
    """A disk file the user named, and the regular files beside it."""

    is_directory = True

    def __init__(self, path, limits):
        super(DirectoryContainer, self).__init__(path)
        self.directory = os.path.dirname(os.path.abspath(path))
        self.leaf_name = os.path.basename(path)
        self.limits = limits
        self._members = None

    def member_names(self):
        if self._members is None:
            names = []
            with os.scandir(self.directory) as it:
                for count, entry in enumerate(it):
                    if count >= self.limits.max_directory_entries:
                        break
                    # Only regular files: links could lead out of the
                    # directory the user named.
                    if entry.is_file(follow_symlinks=False):
                        names.append(entry.name)
            self._members = sorted(names)
        return self._members

    def _open(self, name):
        if name == self.leaf_name:
            # The file the user named (it may be a link: the user chose it).
            return fileio.FileView.open_path(self.path, self.path)
        if name not in self.member_names():
            raise exception.ChainError(
                path=name, reason='not a regular file beside %s' % self.path)
        full = os.path.join(self.directory, name)
        view = fileio.FileView.open_path(full, full)
        st = os.fstat(view.fd)
        if not stat.S_ISREG(st.st_mode):
            view.close()
            raise exception.ChainError(path=full, reason='not a regular file')
        return view

    def display_name(self, name):
        if name == self.leaf_name:
            return self.path
        return os.path.join(self.directory, name)
