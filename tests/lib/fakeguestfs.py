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
    unpack); ``xattrs``: {path: {name: bytes}} (libguestfs's lgetxattr
    fails on a name a file does not have).  ``writes``: the paths
    written, in order."""

    def __init__(self, files, links=None, initrds=None, xattrs=None):
        self.files = {k: (v.encode() if isinstance(v, str) else v)
                      for k, v in files.items()}
        self.dirs = set()           # made by mkdir_p, empty
        self.links = dict(links or {})
        self.initrds = initrds or {}
        self.xattrs = {k: dict(v) for k, v in (xattrs or {}).items()}
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

    def realpath(self, path):
        """libguestfs's: the links of every name resolved (relative to
        the link's directory, absolute ones from the guest's root)."""
        names = [n for n in path.split('/') if n]
        done = ''
        hops = 0
        while names:
            name = names.pop(0)
            if name == '.':
                continue
            if name == '..':
                done = done.rsplit('/', 1)[0]
                continue
            here = done + '/' + name
            if here in self.links:
                hops += 1
                if hops > 40:
                    raise RuntimeError('realpath: %s: Too many levels of '
                                       'symbolic links' % path)
                target = self.links[here]
                names = [n for n in target.split('/') if n] + names
                if target.startswith('/'):
                    done = ''
                continue
            done = here
        done = done or '/'
        if done != '/' and not self.exists(done):
            raise RuntimeError('realpath: %s: No such file or directory'
                               % path)
        return done

    def is_dir(self, path, followsymlinks=True):
        return path in self.dirs or any(p.startswith(path + '/')
                                        for p in self.files)

    def ls(self, path):
        return sorted({p[len(path) + 1:].split('/')[0] for p in self.files
                       if p.startswith(path + '/')})

    def filesize(self, path):
        return len(self.files[path])

    #: What statvfs says of the file system: bytes free, in clusters of
    #: ``unit`` (an ESP's FAT).
    free = 100 << 20
    unit = 4096

    def statvfs(self, path):
        return {'bsize': self.unit, 'frsize': self.unit,
                'bavail': self.free // self.unit, 'blocks': 0}

    def read_file(self, path):
        return self.files[path]

    def write(self, path, data):
        assert isinstance(data, bytes)
        self.writes.append(path)
        self.files[path] = data

    def lgetxattr(self, path, name):
        try:
            return self.xattrs[path][name]
        except KeyError:
            raise RuntimeError('lgetxattr: No data available')

    def lsetxattr(self, name, val, vallen, path):
        # The binding passes a str (no NUL) and its length.
        assert isinstance(val, str) and '\0' not in val
        if not self.exists(path):
            raise RuntimeError('lsetxattr: %s: No such file or directory'
                               % path)
        self.xattrs.setdefault(path, {})[name] = val.encode()[:vallen]

    def mkdir_p(self, path):
        while path not in ('', '/'):
            self.dirs.add(path)
            path = path.rsplit('/', 1)[0]

    def cp(self, src, dest):
        if src not in self.files:
            raise RuntimeError('cp: %s: No such file or directory' % src)
        self.writes.append(dest)
        self.files[dest] = self.files[src]

    def case_sensitive_path(self, path):
        """libguestfs's: each name of ``path`` as the files spell it
        (matched without regard to case); the last one may be missing,
        not one on the way."""
        names = [n for n in path.split('/') if n]
        out = ''
        for i, name in enumerate(names):
            top = out + '/'
            found = {p[len(top):].split('/')[0] for p in set(self.files) |
                     self.dirs if p.startswith(top)}
            match = [f for f in sorted(found) if f.lower() == name.lower()]
            if match:
                out = top + match[0]
            elif i == len(names) - 1:
                out = top + name
            else:
                raise RuntimeError('case_sensitive_path: %s: No such file '
                                   'or directory' % path)
        return out or '/'

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
