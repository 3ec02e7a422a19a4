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

"""The XenServer test bed in one place: the stand-in host (its SR of real
VHD files, :func:`host.standard_host`), an ``xe`` on the PATH of a real
OpenSSH server on 127.0.0.1, and a configuration file pointing any2kvm at
the stand-in's SR mount.  Test code only.

    root, facts, bin_dir, conf = prepare(directory)
    server = start_sshd(sshd_factory, root, bin_dir)
    location(server, 'two-disks'), ssh_args(server, conf)

or :class:`Bed` for all of it.
"""

import os
import shlex
import sys
import urllib.parse

from tests.lib.xenserver import host as xhost
from tests.lib.xenserver import state as st


def prepare(directory, build=None):
    """The stand-in host under ``directory``: (root, facts, bin_dir,
    conf), ``bin_dir`` holding ``xe``, ``lvs`` and ``blockdev``, ``conf``
    an any2kvm configuration file with the stand-in's SR mount, inventory
    and LV device base (``xenserver_lvm_dev``: ``<root>/dev``).
    ``build(root)`` makes the host and returns (root, facts) (default:
    :func:`host.standard_host`)."""
    directory = str(directory)
    build = build or xhost.standard_host
    root, facts = build(os.path.join(directory, 'xs'))
    bin_dir = os.path.join(directory, 'bin')
    os.makedirs(bin_dir, exist_ok=True)
    os.symlink(str(xhost.XE), os.path.join(bin_dir, 'xe'))
    os.symlink(str(xhost.LVS), os.path.join(bin_dir, 'lvs'))
    os.symlink(str(xhost.BLOCKDEV), os.path.join(bin_dir, 'blockdev'))
    conf = os.path.join(directory, 'any2kvm.conf')
    with open(conf, 'w') as f:
        # xenserver_lvm_dev: where the LVs' device nodes are (dom0's /dev)
        f.write('[any2kvm]\nxenserver_sr_mount = %s\n'
                'xenserver_inventory = %s\n'
                'xenserver_lvm_dev = %s\n'
                % (os.path.join(str(root), 'run', 'sr-mount'),
                   st.inventory_path(str(root)),
                   os.path.join(str(root), 'dev')))
    return root, facts, bin_dir, conf


def guest_host(guest_path, vm='xen-guest'):
    """A ``build`` for :func:`prepare`: a stand-in host whose running VM
    ``vm`` has the raw disk at ``guest_path`` (a test guest of
    tests/lib/guestbuild.py) on its one disk, only its non-zero MiBs
    written."""
    MiB = 1 << 20
    with open(str(guest_path), 'rb') as f:
        data = f.read()
    writes = []
    for off in range(0, len(data), MiB):
        chunk = data[off:off + MiB]
        if chunk.count(0) != len(chunk):
            writes.append((off, chunk))

    def build(root):
        b = xhost.HostBuilder(root)
        local = b.add_sr('Local storage', 'ext')
        net = b.add_network('Pool-wide network associated with eth0',
                            'xenbr0')
        facts = {vm: b.add_vm(vm, disks=((len(data), 'system'),),
                              sr=local, nics=(net,),
                              disk_writes={0: writes})}
        facts['models'] = b.models
        b.save()
        return b.root, facts
    return build


def wrap_command(bin_dir, name, body):
    """Put a shell script in front of the stand-in's command ``name`` of
    ``bin_dir`` (``xe``, ``lvs``, ``blockdev``), for a test that makes the
    host act at a given moment: ``body`` (sh) runs with ``$REAL`` the
    real command, which it calls (``"$REAL" "$@"``).  Wrapping again
    replaces the script; the real command stays."""
    bin_dir = str(bin_dir)
    real = os.path.join(bin_dir, name + '.real')
    if not os.path.lexists(real):
        os.rename(os.path.join(bin_dir, name), real)
    path = os.path.join(bin_dir, name)
    with open(path, 'w') as f:
        f.write('#!/bin/sh\nREAL=%s\n%s' % (shlex.quote(real), body))
    os.chmod(path, 0o755)
    return real


def start_sshd(sshd_factory, root, bin_dir):
    """A started sshd (``sshd_factory`` of tests/conftest.py) whose
    sessions find the stand-in's ``xe`` and host."""
    # The stand-in's xe runs with the python3 that has FATtools.
    path = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable),
                            '/usr/bin', '/bin'])
    return sshd_factory(env={'PATH': path, xhost.ENV: str(root)})


def location(server, vm):
    return 'xenserver://%s@127.0.0.1:%d/%s' % (
        server.user, server.port, urllib.parse.quote(vm, safe=''))


def ssh_args(server, conf):
    return ['--identity-file', server.client_key, '--known-hosts',
            server.known_hosts, '--config-file', str(conf)]


class Bed(object):
    """The whole bed for one test: ``root``, ``facts``, ``server``,
    ``conf``; :meth:`location` and :attr:`ssh_args`.  ``build``: see
    :func:`prepare`."""

    def __init__(self, sshd_factory, directory, build=None):
        self.root, self.facts, self.bin_dir, self.conf = prepare(directory,
                                                                 build)
        self.server = start_sshd(sshd_factory, self.root, self.bin_dir)

    def location(self, vm='two-disks'):
        return location(self.server, vm)

    @property
    def ssh_args(self):
        return ssh_args(self.server, self.conf)

    def writers(self, migration):
        """A :class:`host.GuestWriter` per disk of ``migration``."""
        return [xhost.GuestWriter(self.root, d['source_id'],
                                  self.facts['models'][d['source_id']])
                for d in migration['disks']]
