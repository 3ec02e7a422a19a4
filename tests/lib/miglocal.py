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

"""The engine's host, played locally (no SSH): the ``xe`` stand-in run as
a subprocess and the VHD chains read in the stand-in's SR directory.
Test code only.

It answers as :class:`any2kvm_os.migration.host.SshHost` does: ``run``
gives xe's stdout as bytes, and a command that exits non-zero raises
:class:`~any2kvm_os.exception.RemoteCommandError` with the message the
SSH layer makes (``Connection.check_run``: the host, the quoted command,
``exit status N: <stderr>``), so that the engine's fallbacks for xe's own
errors (``<cls>-param-get`` fills, the listing redone with
``params=uuid``, ``template-uninstall``) are reached through it.
:class:`OlderHost` is a host whose xe lacks some commands or fields.
"""

import os
import subprocess

from any2kvm_os.chain import layer_chain
from any2kvm_os.containers import base as containers
from any2kvm_os import exception
from any2kvm_os import limits as limits_mod
from any2kvm_os.ssh import connection
from any2kvm_os import vm as vm_mod
from tests.lib.xenserver import host as xhost
from tests.lib.xenserver import state as st


class LocalHost(object):
    label = 'standin'

    def __init__(self, root):
        self.root = str(root)
        self.mount_base = os.path.join(self.root, 'run', 'sr-mount')
        #: The stand-in's inventory: discovery checks that each disk's SR
        #: is attached on this host.
        self.inventory = st.inventory_path(self.root)
        self.limits = limits_mod.Limits()
        self.bytes_read = 0
        self.commands = []
        #: The batches run (run_many): one round trip each over SSH.
        self.batches = []
        #: Every disk opened (open_disk), in order.
        self.opened = []

    def run(self, argv, mutating=False, timeout=None):
        self.commands.append(list(argv))
        if argv[0] != 'xe':
            # ``cat`` of the inventory: run here, as on the host
            return self._check(argv, subprocess.run(
                list(argv), capture_output=True, text=True, timeout=60,
                cwd='/'))
        return self._check(argv, self._xe(argv))

    def _xe(self, argv):
        """The stand-in's answer to ``argv`` (a CompletedProcess)."""
        return xhost.run_xe(self.root, *argv[1:])

    def _check(self, argv, r):
        if r.returncode != 0:
            raise remote_error(self.label, argv, r.returncode, r.stderr)
        return r.stdout.encode('utf-8')

    def run_many(self, commands, mutating=False, timeout=None):
        """As ``SshHost.run_many``: the first command that fails stops
        the rest, its error carrying the ``outputs`` of those before."""
        self.batches.append([list(a) for a in commands])
        outs = []
        for a in commands:
            try:
                outs.append(self.run(a, mutating, timeout))
            except exception.RemoteCommandError as e:
                e.outputs = outs
                raise
        return outs

    def open_disk(self, info):
        container = _SrDirectory(info.path, self.limits)
        chain = layer_chain.resolve(container, container.leaf_name,
                                    self.limits)
        disk = vm_mod.ChainDisk(info.path, 'xenserver-sr', chain,
                                disk_id=info.vdi_uuid,
                                closer=getattr(container, 'close', None))
        disk.chain_container = container
        self.opened.append(disk)
        return disk

    def close(self):
        pass


class _SrDirectory(containers.DirectoryContainer):
    """An SR directory read in place, as the XenServer source reads it
    over SFTP: its leaf may be held open for writing by a running
    guest's tapdisk (``RemoteDirectoryContainer.live_leaf``)."""

    def _open(self, name):
        view = super(_SrDirectory, self)._open(name)
        if name == self.leaf_name:
            view.live = True
        return view


def remote_error(label, argv, status, stderr):
    """The :class:`~any2kvm_os.exception.RemoteCommandError` of the SSH
    layer for ``argv`` run on ``label`` with exit ``status`` and
    ``stderr`` (str), message and keyword arguments as
    ``Connection.check_run`` makes them."""
    stderr = (stderr or '').strip()
    return exception.RemoteCommandError(
        host=label, command=_short(connection.quote_argv(argv), 200),
        reason='exit status %d%s' % (
            status, ': ' + _short(stderr, 500) if stderr
            else ' (nothing on stderr)'))


def _short(text, limit):
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


class OlderHost(LocalHost):
    """A host whose ``xe`` lacks what a newer one has, each answer still
    the stand-in's own:

    ``unknown``
        commands this xe does not know (``snapshot-uninstall``...): they
        fail as xe fails an unknown command;
    ``unlisted``
        ``{class: fields}`` a listing leaves out even when ``params=``
        names them (``<cls>-param-get`` still gives them);
    ``no_params``
        classes whose listing fails when ``params=`` names more than
        ``uuid`` (a CLI that does not take the fields asked).
    """

    def __init__(self, root, unknown=(), unlisted=None, no_params=()):
        super(OlderHost, self).__init__(root)
        self.unknown = frozenset(unknown)
        self.unlisted = dict(unlisted or {})
        self.no_params = frozenset(no_params)

    def _xe(self, argv):
        words = list(argv[1:])
        cmd = words[0]
        cls = cmd[:-len('-list')] if cmd.endswith('-list') else None
        params = [w for w in words if w.startswith('params=')]
        if cmd in self.unknown or (
                cls in self.no_params and params
                and params[0] != 'params=uuid'):
            # The stand-in's own answer to a command it does not know,
            # naming the command as given.
            words[0] = 'no-such-command-' + cmd
            r = xhost.run_xe(self.root, *words)
            r.stderr = r.stderr.replace(words[0], cmd)
            return r
        if cls in self.unlisted and params:
            left = [f for f in params[0][len('params='):].split(',')
                    if f not in self.unlisted[cls]]
            words[words.index(params[0])] = 'params=' + ','.join(left)
        return xhost.run_xe(self.root, *words)


def connector(root):
    def connect(location, limits, args):
        return LocalHost(root)
    return connect
