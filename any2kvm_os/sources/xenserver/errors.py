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

"""The errors of XenServer discovery: one line each, naming what failed."""

from any2kvm_os import exception


def first_line(e, limit=200):
    """The first line of error ``e`` (``limit`` characters at most), or
    its type's name when it says nothing: what a warning or a wrapping
    error quotes of it."""
    return str(e).splitlines()[0][:limit] if str(e) else type(e).__name__


class XenServerError(exception.Any2KvmError):
    """Root of the errors of the XenServer source."""

    msg_fmt = "%(reason)s"


class BadLocation(XenServerError):
    """A ``xenserver://`` location cannot be parsed."""

    msg_fmt = "bad location %(location)s: %(reason)s"


class XeOutputError(XenServerError):
    """What ``xe`` printed is malformed, too large, or not what was asked."""

    msg_fmt = "%(command)s: malformed answer from the host: %(reason)s"


class VmNotFound(XenServerError):
    """No VM of that name-label or uuid."""

    msg_fmt = "%(host)s: no VM with name-label or uuid %(vm)s"


class AmbiguousVm(XenServerError):
    """Several VMs share the name-label."""

    msg_fmt = ("%(host)s: %(count)d VMs are named %(vm)s; name one by its "
               "uuid: %(candidates)s")


class UnsupportedVm(XenServerError):
    """The VM cannot be migrated: a snapshot, template, control domain."""

    msg_fmt = "%(host)s: VM %(vm)s: %(reason)s"


class UnsupportedStorage(XenServerError):
    """A disk lives on an SR whose VHDs are not files we can read."""

    msg_fmt = "%(host)s: VM %(vm)s, disk %(disk)s: %(reason)s"


class Timeout(XenServerError):
    """A VM did not reach a power state in time."""

    msg_fmt = ("%(host)s: VM %(vm)s is still %(state)s after %(seconds)d "
               "seconds (waiting for %(wanted)s)")
