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

"""Whether a process of this conversion host is still there: what the
state database's leases (a holder on this host), and what a process
leaves on a hypervisor host tagged with :func:`tag` (the dom0 VBDs of
``sources.xenserver.lvm``, the snapshots a whole read takes:
``sources.xenserver.snapshots``), are judged by."""

import hashlib
import os
import socket

BOOT_ID = '/proc/sys/kernel/random/boot_id'
#: Where this host's machine id is (systemd's, or D-Bus's older place).
MACHINE_ID = ('/etc/machine-id', '/var/lib/dbus/machine-id')


#: Largest pid a process of this host may have (Linux's limit is 2**22):
#: a larger one, in a mark (untrusted text from a hypervisor host), names
#: none.
PID_MAX = 1 << 22


def pid_alive(pid):
    """Whether process ``pid`` of this host exists (one of another user's
    counts: it is there)."""
    if not 0 < pid <= PID_MAX:
        return False    # no process has it (os.kill would overflow)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def machine_id():
    """This host's machine id (set once, at installation; a clone of a
    host should be given a new one); None when unknown."""
    for path in MACHINE_ID:
        try:
            with open(path) as f:
                found = f.read(64).strip()
        except OSError:
            continue
        if found:
            return found
    return None


def machine_tag():
    """What a :func:`mark` says of this host: a hash of its machine id
    made for this tool (systemd asks that the machine id itself not be
    shown: machine-id(5)); None when the machine id is unknown."""
    found = machine_id()
    if found is None:
        return None
    return hashlib.sha256(('any2kvm_os:' + found).encode()).hexdigest()[:32]


def boot_id():
    """This host's boot id (Linux: a new one at every boot); None when
    unknown."""
    try:
        with open(BOOT_ID) as f:
            return f.read(64).strip() or None
    except OSError:
        return None


def start_time(pid):
    """When process ``pid`` started, in clock ticks since the boot
    (``/proc/<pid>/stat``, its 22nd field); None when it is gone or
    unknown.  With the boot id, it tells a process from a later one that
    was given the same pid."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            stat = f.read(4096)
    except OSError:
        return None
    # The command name (2nd field) is in parentheses and may hold spaces.
    fields = stat[stat.rfind(b')') + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def mark(pid=None):
    """``<pid>:<boot id>:<start time>:<machine id>`` of process ``pid``
    (this one by default): what :func:`gone` judges later."""
    pid = os.getpid() if pid is None else pid
    return '%d:%s:%s:%s' % (pid, boot_id() or '', start_time(pid) or '',
                            machine_tag() or '')


def _number(text):
    """Whether ``text`` is a decimal number this module reads: ASCII
    digits only (``str.isdigit`` takes "²" too), at most 20 of them."""
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def mark_here(mark_text):
    """Whether a :func:`mark` is of this machine (its machine tag, or
    the machine id itself in marks of earlier versions, is this one's, or
    neither is known)."""
    machine = (mark_text or '').split(':', 3)[3:]
    machine = machine[0] if machine else ''
    return not machine or machine in (machine_tag(), machine_id())


def gone(mark_text):
    """Whether the process a :func:`mark` of this host names has ended:
    its pid is not there, the host booted since, or the pid is another
    process's now (it started at another time).  A mark of another
    machine (its machine id: a clone given the same host name) is not
    judged gone; a bare pid is judged by its presence alone; a mark that
    is not one is not judged gone."""
    pid, _, rest = (mark_text or '').partition(':')
    if not _number(pid):
        return False
    boot, _, rest = rest.partition(':')
    start, _, machine = rest.partition(':')
    # (marks of earlier versions hold the machine id itself)
    if machine and machine not in (machine_tag(), machine_id()):
        return False
    if not pid_alive(int(pid)):
        return True
    if boot and boot_id() and boot != boot_id():
        return True
    if _number(start):
        now = start_time(int(pid))
        return now is not None and now != int(start)
    return False


def tag():
    """``<conversion host>:<pid>:<boot id>:<start time>:<machine tag>``
    (:func:`mark`, :func:`machine_tag`):
    this process, as what it leaves on a hypervisor host is tagged, so
    that what a killed run left is told from a live run's
    (:func:`tag_gone`)."""
    return '%s:%s' % (socket.gethostname(), mark())


def tag_gone(text):
    """Whether ``text`` (a :func:`tag`) names a process of this
    conversion host that is gone (:func:`gone`: its pid is not there, the
    host booted since, or the pid is another process's now); one of
    another host, or of a live process, is not ours to judge.  Tags of
    the earlier form (``<host>:<pid>``) are judged by the pid alone."""
    host, _, rest = (text or '').partition(':')
    return host == socket.gethostname() and gone(rest)
