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

"""The one exception root of any2kvm_os.

Every subclass carries a message template filled from keyword arguments,
so that callers raise InvalidImage(path=..., reason=...) and the CLI
prints one line.  A template that cannot be filled is a programming error
and is reported as such instead of being swallowed.
"""


class Any2KvmError(Exception):
    """Root of every error this project raises on purpose."""

    msg_fmt = "An unknown error occurred"

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            message = self.msg_fmt % kwargs
        self.message = message
        super().__init__(message)

    def __str__(self):
        return self.message


class InvalidImage(Any2KvmError):
    """A disk image is malformed, truncated or unsafe to read."""

    msg_fmt = "%(path)s: %(reason)s"


class UnsupportedImage(Any2KvmError):
    """A file is well formed but of a kind we do not read."""

    msg_fmt = "%(path)s: %(reason)s"


class ChainError(Any2KvmError):
    """A snapshot chain cannot be resolved (missing parent, cycle, ...)."""

    msg_fmt = "%(path)s: %(reason)s"


class InvalidArchive(Any2KvmError):
    """An archive (tar, tgz) is malformed or holds unsafe members."""

    msg_fmt = "%(path)s: %(reason)s"


class TargetError(Any2KvmError):
    """The output cannot be written."""

    msg_fmt = "%(path)s: %(reason)s"


class ScratchLimitError(Any2KvmError):
    """More scratch space is needed than ``scratch_limit_gib`` allows."""

    msg_fmt = "%(path)s: %(reason)s"


class CapacityError(TargetError):
    """The disk is larger than a fixed-size output (device, volume)."""

    msg_fmt = ("%(path)s: holds %(capacity)d bytes, the disk needs "
               "%(needed)d")

    @property
    def needed(self):
        return self.kwargs['needed']

    @property
    def capacity(self):
        return self.kwargs['capacity']


class SshError(Any2KvmError):
    """A hypervisor host cannot be reached or used over SSH."""

    msg_fmt = "%(host)s: %(reason)s"


class HostKeyError(SshError):
    """The host's key is unknown, changed or not the pinned one: refused."""

    msg_fmt = "%(host)s: %(reason)s"


class SshAuthError(SshError):
    """No credential offered was accepted (or none could be had)."""

    msg_fmt = "%(host)s: %(reason)s"


class RemoteCommandError(SshError):
    """A command run on a host failed, timed out or said too much."""

    msg_fmt = "%(host)s: %(command)s: %(reason)s"


class LeaseLost(Exception):
    """A command's hold of a migration is gone (taken over by another
    command, or not renewed in time): it changes nothing more, in the
    targets, in the state or on the host
    (:class:`any2kvm_os.migration.state.api.Fence`).  Not an
    :class:`Any2KvmError`: no step that gets over a failed command
    (a snapshot left, a disk not detached) may get over this one."""

    msg_fmt = ("migration %(name)s: the hold of this %(operation)s is lost "
               "(%(reason)s): stopped without changing more; run it again "
               "(what it left half done is done again)")

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        super(LeaseLost, self).__init__(
            message if message is not None else self.msg_fmt % kwargs)


class InspectionError(Any2KvmError):
    """A converted disk cannot be looked inside (no libguestfs, the
    appliance failed, a timeout)."""

    msg_fmt = "%(path)s: guest inspection: %(reason)s"


class GuestFixError(InspectionError):
    """A fix of the guest failed; the disk was left as it was."""

    msg_fmt = "%(path)s: guest fix: %(reason)s"
