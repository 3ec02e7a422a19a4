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

"""Private, bounded scratch space: the one place conversions buffer data.

Members of a compressed archive that arrive out of order, gzip files of
an OVA, images downloaded from Glance, disks converted before an upload,
volumes written before a root-helper copy: all go into a
:class:`Scratch`, which owns

* the budget: ``scratch_limit_gib`` bytes for one conversion.  Every
  byte stored is charged (:meth:`Scratch.charge`) or, when its size is
  known beforehand, reserved (:meth:`Scratch.reserve`); going beyond the
  budget is a one-line :class:`~any2kvm_os.exception.ScratchLimitError`
  naming what needed the space and ``scratch_limit_gib``;
* the free-space check of the file system (``statvfs``) before a size is
  committed to (:meth:`Scratch.reserve`, :meth:`Scratch.check_free`);
* a private (0700) directory, made on first use under ``parent``
  (``scratch_dir``; by default the system temporary directory or the
  caller's own default);
* clean-up: :meth:`Scratch.cleanup` removes the directory and everything
  in it; it is idempotent, and runs on leaving a ``with`` block, error
  or not.
"""

import logging
import os
import shutil
import tempfile

from any2kvm_os import exception
from any2kvm_os import lazyopts

LOG = logging.getLogger(__name__)

GROUP = 'any2kvm'

#: The options' defaults (``scratch_limit_gib`` in GiB), written once.
DEFAULTS = {'scratch_dir': None, 'scratch_limit_gib': 1024}


def _options():
    from oslo_config import cfg
    return [
        cfg.StrOpt('scratch_dir', default=DEFAULTS['scratch_dir'],
                   help='Directory under which a private (0700) scratch '
                        'directory is made when archive members must be '
                        'buffered. Default: the directory of the output.'),
        cfg.IntOpt('scratch_limit_gib', default=DEFAULTS['scratch_limit_gib'],
                   min=0,
                   help='Most scratch space, in GiB, one conversion may '
                        'use. Scratch is needed only when a compressed '
                        'archive holds members in an order that cannot be '
                        'applied as they come.'),
    ]


#: ``OPTIONS`` (oslo.config options), made on first use: a conversion
#: that reads no configuration does not import oslo.config.
__getattr__ = lazyopts.module_getattr(globals(), _options)


#: ``scratch_limit_gib``'s default, in bytes.
DEFAULT_LIMIT = DEFAULTS['scratch_limit_gib'] << 30

#: Bytes charged between two measures of a scratch file's real
#: allocation (see :class:`BoundedFile`).
_MEASURE_SLACK = 64 << 20


class Scratch(object):
    """A private (0700) scratch directory with a byte budget.

    ``parent`` is where the directory is made (None: the system temporary
    directory), ``limit`` the budget in bytes, ``prefix`` the start of the
    directory's name.  Nothing is made before it is needed.
    """

    def __init__(self, parent=None, limit=DEFAULT_LIMIT,
                 prefix='any2kvm-scratch-'):
        self.parent = parent
        self.limit = limit
        self.prefix = prefix
        #: Bytes charged or reserved so far.
        self.used = 0
        self._dir = None

    @classmethod
    def for_limits(cls, limits, default_parent=None,
                   prefix='any2kvm-scratch-'):
        """The scratch space ``limits`` allow: under ``scratch_dir``, else
        under ``default_parent``; bounded by ``scratch_limit``."""
        return cls(limits.scratch_dir or default_parent,
                   limits.scratch_limit, prefix)

    # -- the directory --------------------------------------------------------

    @property
    def dir(self):
        """The private directory, made on first use."""
        if self._dir is None:
            try:
                # mkdtemp makes it 0700, whatever the umask.
                self._dir = tempfile.mkdtemp(prefix=self.prefix,
                                             dir=self.parent)
            except OSError as e:
                raise exception.TargetError(
                    path=self.parent or tempfile.gettempdir(),
                    reason='cannot make a scratch directory: %s'
                    % (e.strerror or e))
        return self._dir

    def path(self, name):
        """A path named ``name`` in the directory (nothing is made)."""
        return os.path.join(self.dir, name)

    def mkstemp(self, prefix='tmp'):
        """A new file of the directory: ``(fd, path)``."""
        directory = self.dir
        try:
            return tempfile.mkstemp(prefix=prefix, dir=directory)
        except OSError as e:
            raise exception.TargetError(
                path=directory, reason='cannot make a scratch file: %s'
                % (e.strerror or e))

    # -- the budget -----------------------------------------------------------

    @property
    def remaining(self):
        """Bytes the budget still allows."""
        return max(self.limit - self.used, 0)

    def limit_error(self, what, size):
        """The error for ``size`` more bytes, needed by ``what``, that do
        not fit in the budget."""
        used = (' (%d already in use)' % self.used) if self.used else ''
        return exception.ScratchLimitError(
            path=what, reason='%d bytes exceed the scratch limit of %d '
            'bytes%s (scratch_limit_gib)' % (size, self.limit, used))

    def charge(self, size, what):
        """Account ``size`` bytes stored for ``what``; refuse them if they
        do not fit in the budget."""
        if size > self.limit - self.used:
            raise self.limit_error(what, size)
        self.used += size

    def release(self, size):
        """Give back ``size`` bytes (a scratch file was removed)."""
        self.used = max(self.used - size, 0)

    def check_free(self, size, what):
        """Refuse ``size`` bytes for ``what`` when the file system of the
        directory has less free space."""
        directory = self.dir
        st = os.statvfs(directory)
        if st.f_bavail * st.f_frsize < size:
            raise exception.TargetError(
                path=directory, reason='not enough free space for %s (%d '
                'bytes)' % (what, size))

    def reserve(self, size, what):
        """Before committing to store ``size`` bytes for ``what``: check
        the budget and the free space, then charge them."""
        if size > self.limit - self.used:
            raise self.limit_error(what, size)
        self.check_free(size, what)
        self.used += size

    def bound_writer(self, writer, what):
        """Charge what ``writer`` (a
        :class:`~any2kvm_os.writers.raw.RawWriter` on a file of this
        scratch space) stores, as :class:`BoundedFile` does; returns it."""
        bounded = BoundedFile(self, writer.fd, what)
        pwrite = writer.pwrite

        def charged_pwrite(offset, data):
            pwrite(offset, data)
            bounded.wrote(len(data))
        writer.pwrite = charged_pwrite
        return writer

    # -- clean-up -------------------------------------------------------------

    def cleanup(self):
        """Remove the directory and what it holds (idempotent)."""
        directory, self._dir = self._dir, None
        self.used = 0
        if directory is not None:
            shutil.rmtree(directory, onerror=_rmtree_warning)

    close = cleanup

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def __repr__(self):
        return '<Scratch %s used=%d limit=%d>' % (
            self._dir or self.parent, self.used, self.limit)


def _rmtree_warning(function, path, exc_info):
    if isinstance(exc_info[1], FileNotFoundError):
        return
    LOG.warning('Cannot remove scratch %s: %s', path, exc_info[1])


class BoundedFile(object):
    """Charges what is written to a (sparse) scratch file to a budget.

    ``fd`` is the file, ``what`` what it holds (named in errors).  Call
    :meth:`wrote` with each write's length: when the bytes written since
    the last measure could exceed the budget, the file's real allocation
    is measured (``st_blocks``: rewrites of the same range and holes cost
    nothing) and charged, and an allocation beyond the budget is refused.
    """

    def __init__(self, scratch, fd, what):
        self.scratch = scratch
        self.fd = fd
        self.what = what
        #: Bytes of the file charged to the scratch budget.
        self.charged = 0
        self._unmeasured = 0

    def wrote(self, n):
        self._unmeasured += n
        if self._unmeasured > min(self.scratch.remaining, _MEASURE_SLACK):
            self.measure()

    def measure(self):
        """Charge the file's allocation as it is now."""
        allocated = os.fstat(self.fd).st_blocks * 512
        self._unmeasured = 0
        if allocated > self.charged:
            self.scratch.charge(allocated - self.charged, self.what)
        else:
            self.scratch.release(self.charged - allocated)
        self.charged = allocated
