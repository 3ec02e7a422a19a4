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

"""The guestfs calls of the probe's Linux facts and fixes, over a dict of
files: for unit tests of what the probe reads and writes.  The real
appliance is the functional tests' (tests/functional/
test_guest_inspection.py)."""


class FilesG(object):
    """A guest's files (``files``: {path: bytes or str}); ``links``:
    {path: target} of symbolic links (a link whose path is in ``files``
    too points at a regular file: ``is_file`` says so only when links are
    followed); ``initrds``: {image: {member: bytes}} that ``initrd_cat``
    answers (else it fails, as libguestfs does on an image it cannot
    unpack).  ``writes``: the paths written, in order."""

    def __init__(self, files, links=None, initrds=None):
        self.files = {k: (v.encode() if isinstance(v, str) else v)
                      for k, v in files.items()}
        self.links = dict(links or {})
        self.initrds = initrds or {}
        self.writes = []

    def exists(self, path):
        return path in self.files or path in self.links or self.is_dir(path)

    def is_file(self, path, followsymlinks=True):
        if path in self.links and not followsymlinks:
            return False
        return path in self.files

    def is_symlink(self, path):
        return path in self.links

    def readlink(self, path):
        return self.links[path]

    def is_dir(self, path, followsymlinks=True):
        return any(p.startswith(path + '/') for p in self.files)

    def ls(self, path):
        return sorted({p[len(path) + 1:].split('/')[0] for p in self.files
                       if p.startswith(path + '/')})

    def filesize(self, path):
        return len(self.files[path])

    def read_file(self, path):
        return self.files[path]

    def write(self, path, data):
        assert isinstance(data, bytes)
        self.writes.append(path)
        self.files[path] = data

    def mkdir_p(self, path):
        pass

    def initrd_cat(self, path, name):
        try:
            return self.initrds[path][name]
        except KeyError:
            raise RuntimeError('initrd_cat: %s: not found' % name)

    def download(self, path, local):
        with open(local, 'wb') as f:
            f.write(self.files[path])

    # What fix_linux needs besides: mounting, and nothing else to do.
    def inspect_get_mountpoints(self, root):
        return {'/': root}

    def mount(self, dev, mp):
        pass

    def umount_all(self):
        pass

    def sync(self):
        pass

    def vfs_uuid(self, dev):
        return ''
