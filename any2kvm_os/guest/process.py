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

"""The guest tools' child processes (the libguestfs probe, virt-v2v),
each bounded in time and never outliving the command."""

import os
import shutil
import signal
import subprocess

from any2kvm_os import redact


def _dying_with_us(cmd):
    """``cmd`` under util-linux's ``setpriv --pdeathsig KILL`` (Debian's
    essential ``util-linux``): the child is killed when the thread that
    started it dies, the command killed by ``kill -9`` or the OOM killer
    included.  A probe or virt-v2v left behind would go on writing the
    target under the next command's copy; once it is killed, libguestfs'
    recovery process kills its appliance.  Without setpriv, ``cmd``
    as it is."""
    setpriv = _setpriv()
    if setpriv is None:
        return list(cmd)
    return [setpriv, '--pdeathsig', 'KILL', '--'] + list(cmd)


_SETPRIV = []


def _setpriv():
    """setpriv's path when it has ``--pdeathsig`` (util-linux 2.33 on;
    an older one would make every run fail), asked once; else None."""
    if not _SETPRIV:
        found = shutil.which('setpriv')
        if found is not None:
            try:
                ok = subprocess.run(
                    [found, '--pdeathsig', 'KILL', '--', 'true'],
                    stdin=subprocess.DEVNULL, capture_output=True,
                    timeout=30).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            found = found if ok else None
        _SETPRIV.append(found)
    return _SETPRIV[0]


def communicate(cmd, timeout, **kwargs):
    """Run ``cmd`` in a session of its own and return ``(proc, out,
    err)`` once it ends.  Past ``timeout`` seconds its whole process
    group is killed and :class:`subprocess.TimeoutExpired` raised; any
    other interruption (an exception, KeyboardInterrupt) kills it too and
    is raised again.  It dies with the command besides
    (:func:`_dying_with_us`)."""
    if kwargs.get('env') is None:
        # None of the command's secrets (the SSH password's variable,
        # OS_PASSWORD, the state database's URL): these programs, and
        # the appliance they start, need none.
        kwargs['env'] = redact.child_environ()
    proc = subprocess.Popen(_dying_with_us(cmd), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _kill(proc)
        raise
    return proc, out, err


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        pass
