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

"""VHD chains on LVM SRs (``lvm``, ``lvmoiscsi``, ``lvmohba``: SM's LVHD).

What the host does (xapi-project/sm ``lvhdutil``, ``LVHDSR``):

* each VDI's VHD is the logical volume ``VHD-<vdi-uuid>`` of the volume
  group ``VG_XenStorage-<sr-uuid>``, whose device node is
  ``/dev/VG_XenStorage-<sr-uuid>/VHD-<vdi-uuid>`` while it is active, and
  absent otherwise;
* an LV is active while some attached VDI's chain holds it: attaching a
  VDI (``LVHDVDI.attach``) activates the whole chain, with refcounts, and
  detaching it deactivates what nothing else holds.  A running VM's disks
  are attached, so every layer of their chains can be read while it runs;
  a halted VM's are not;
* the VHD ends with the LV (``inflate``/``deflate`` move the footer to the
  LV's end with ``vhd-util modify -s``), except in an LV never resized
  since ``vhd-util`` made it: there the footer copy at offset 0 is the
  footer, as libvhd falls back to it.  The readers take such an LV as a
  *padded* view (:attr:`LvmContainer.padded`).

The chain is read as from a file SR, over SFTP, from the LV device nodes;
the directory of the container is the volume group's, its members the
active ``VHD-*`` LVs as ``lvs`` lists them with their sizes (a block
device has no size SFTP can tell).  Nothing outside that volume group is
opened, whatever a VHD header or ``xe`` says.

When the disk's LVs are not active (its VM halted: a cutover, after the
shutdown; ``verify`` after one), the VDI is attached read-only to the
control domain of the host connected to, the way SM allows it (``xe
vbd-create`` for dom0, ``vbd-plug``: SM's refcounts keep the chain
active), for as long as the chain is open; then ``vbd-unplug`` and
``vbd-destroy``.  The VBD carries ``other-config:any2kvm-reader`` =
``<conversion host>:<pid>``, so that one a killed process left behind is
known as ours and removed (:func:`release_stale`): it would keep the VM
from starting again.
"""

import logging
import os
import posixpath
import re
import socket

from any2kvm_os.containers import remote
from any2kvm_os import exception
from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import xe

LOG = logging.getLogger(__name__)

VG_PREFIX = 'VG_XenStorage-'
LV_PREFIX = 'VHD-'
#: Where device nodes of LVs are (``xenserver_lvm_dev``).
DEFAULT_DEV = '/dev'
#: The other-config key of the VBDs this tool plugs into dom0.
READER_KEY = 'any2kvm-reader'
#: Most LVs one volume group listing may hold (SM's VGs hold a few
#: hundred; beyond this the answer is refused as absurd).
MAX_LVS = 16384
#: Longest ``lvs`` answer read.
MAX_LVS_OUTPUT = 4 << 20
_LV_NAME = re.compile(r'^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$')
_SEP = '|'


def device_dir(dev_base, sr_uuid):
    """The directory of the device nodes of SR ``sr_uuid``'s LVs."""
    return posixpath.join(dev_base, VG_PREFIX + sr_uuid)


def device_path(dev_base, sr_uuid, vdi_uuid):
    """The device node of VDI ``vdi_uuid``'s LV (while active)."""
    return posixpath.join(device_dir(dev_base, sr_uuid),
                          LV_PREFIX + vdi_uuid)


def lvs_command(vg):
    """``lvs`` of volume group ``vg``: each LV's name, size in bytes and
    attributes, one line each, no heading (LVM2 ``lvs(8)``)."""
    return ['lvs', '--noheadings', '--nosuffix', '--units', 'b',
            '--separator', _SEP, '-o', 'lv_name,lv_size,lv_attr', vg]


class Volume(object):
    """One LV as ``lvs`` lists it."""

    def __init__(self, name, size, attr):
        self.name, self.size, self.attr = name, size, attr

    @property
    def active(self):
        # lvs(8): the 5th attribute character is the state, 'a' active.
        return len(self.attr) >= 5 and self.attr[4] == 'a'

    def __repr__(self):
        return 'Volume(%r, %d, %r)' % (self.name, self.size, self.attr)


def parse_lvs(output, argv):
    """{name: :class:`Volume`} of :func:`lvs_command`'s answer; a line
    that is not three fields, a name that is not an LV name, a size that
    is not a count of bytes, or more than :data:`MAX_LVS` lines, is a
    malformed answer."""
    text = xe.text_of(output, argv)
    if len(text) > MAX_LVS_OUTPUT:
        raise errors.XeOutputError(command=' '.join(argv),
                                   reason='more than %d characters'
                                   % MAX_LVS_OUTPUT)
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(_SEP)]
        if (len(fields) != 3 or not _LV_NAME.match(fields[0]) or
                not fields[1].isdigit() or len(fields[2]) > 16):
            raise errors.XeOutputError(command=' '.join(argv),
                                       reason='not an LV line: %r'
                                       % line[:120])
        if fields[0] in out:
            raise errors.XeOutputError(command=' '.join(argv),
                                       reason='LV %s listed twice'
                                       % fields[0])
        out[fields[0]] = Volume(fields[0], int(fields[1]), fields[2])
        if len(out) > MAX_LVS:
            raise errors.XeOutputError(command=' '.join(argv),
                                       reason='more than %d LVs' % MAX_LVS)
    return out


class LvmContainer(remote.RemoteDirectoryContainer):
    """The active ``VHD-*`` LVs of one volume group, as random-access
    files of their ``lvs`` sizes (see the module)."""

    #: The VHD may end before the LV does (see the module): readers find
    #: its footer at offset 0 when none ends the view.
    padded = True

    def __init__(self, connection, directory, leaf_name, limits,
                 volumes, label=None):
        super(LvmContainer, self).__init__(connection, directory, leaf_name,
                                           limits, label=label)
        self.volumes = volumes

    def member_names(self):
        if self._members is None:
            self._members = sorted(
                n for n, v in self.volumes.items()
                if n.startswith(LV_PREFIX) and v.active)
        return self._members

    def _open(self, name, prefetch=None):
        if name not in self.member_names():
            volume = self.volumes.get(name)
            raise exception.ChainError(
                path=self.display_name(name), reason='not an active LV of '
                'volume group %s%s' % (
                    posixpath.basename(self.directory),
                    ' (it is inactive: no attached VDI holds it)'
                    if volume is not None else ''))
        view = self.connection.open_file(
            posixpath.join(self.directory, name),
            size=self.volumes[name].size, name=self.display_name(name),
            prefetch=prefetch or None)
        view.padded = True
        return view


def reader_tag():
    """``other-config:any2kvm-reader`` of the VBDs this process plugs."""
    return '%s:%d' % (socket.gethostname(), os.getpid())


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(tag):
    """Whether a VBD tagged ``tag`` was left by a process of this
    conversion host that is gone (one of another host, or alive, is not
    ours to remove)."""
    host, _, pid = (tag or '').rpartition(':')
    return (host == socket.gethostname() and pid.isdigit() and
            not _alive(int(pid)))


class Attachment(object):
    """A VDI attached read-only to the host's control domain for as long
    as its chain is read (see the module)."""

    def __init__(self, conn, dom0, vdi_uuid):
        self.conn, self.dom0, self.vdi = conn, dom0, vdi_uuid
        self.vbd = None

    def _run(self, argv):
        return self.conn.check_run(argv).stdout

    def plug(self):
        argv = xe.command('vbd-create', [
            ('vm-uuid', self.dom0), ('vdi-uuid', self.vdi),
            ('device', 'autodetect'), ('mode', 'RO'), ('type', 'Disk')])
        self.vbd = xe.parse_uuid(self._run(argv), argv)
        try:
            self._run(xe.command('vbd-param-set', [
                ('uuid', self.vbd),
                ('other-config:%s' % READER_KEY, reader_tag())]))
            self._run(xe.command('vbd-plug', [('uuid', self.vbd)]))
        except BaseException:
            self.unplug(plugged=False)
            raise
        LOG.info('VDI %s attached read-only to the control domain (VBD '
                 '%s) to read its chain', self.vdi, self.vbd)

    def unplug(self, plugged=True):
        """Detach and forget the VBD (an error is logged: the chain was
        read; the VBD is then named for the operator)."""
        vbd, self.vbd = self.vbd, None
        if vbd is None:
            return
        try:
            if plugged:
                self._run(xe.command('vbd-unplug', [('uuid', vbd)]))
            self._run(xe.command('vbd-destroy', [('uuid', vbd)]))
        except exception.Any2KvmError as e:
            LOG.warning('VDI %s stays attached to the control domain: '
                        'xe vbd-unplug uuid=%s; xe vbd-destroy uuid=%s '
                        '(%s)', self.vdi, vbd, vbd,
                        str(e).splitlines()[0][:200] if str(e) else e)


def check_detached(conn, vdi_uuid, path):
    """Refuse to attach VDI ``vdi_uuid`` to dom0 when it is attached
    elsewhere: its LV is inactive here while a VM uses it, so that VM
    runs on another host of the pool (LVs are activated per host), where
    its chain is active and can be read; reading it here would have SM
    activate on this host the LVs another host writes to."""
    argv = xe.list_command('vbd', [('vdi-uuid', vdi_uuid),
                                   ('currently-attached', 'true')],
                           ('vm-uuid',), minimal=True)
    users = xe.parse_minimal(conn.check_run(argv, idempotent=True).stdout,
                             argv)
    if users:
        raise exception.ChainError(
            path='%s:%s' % (conn.label, path), reason='the LV is not active '
            'on this host, but the VDI is attached to VM %s: it runs on '
            'another host of the pool (LVs are active where their VM '
            'runs); connect to that host' % ', '.join(users[:3]))


def stale_command(dom0, vdi_uuid):
    """The control domain's VBDs of VDI ``vdi_uuid`` that this tool
    plugged (``other-config:any2kvm-reader``)."""
    return xe.list_command('vbd', [
        ('vm-uuid', dom0), ('vdi-uuid', vdi_uuid)],
        ('uuid', 'currently-attached', 'other-config'))


def release_stale(conn, dom0, vdi_uuid):
    """Remove the VBDs of VDI ``vdi_uuid`` in dom0 that a process of this
    conversion host left behind when it was killed while reading the
    chain; returns how many."""
    argv = stale_command(dom0, vdi_uuid)
    records = xe.parse_records(conn.check_run(argv).stdout, argv,
                               ('uuid', 'currently-attached',
                                'other-config'), required=('uuid',))
    gone = 0
    for r in records:
        config = xe.parse_map(r.get('other-config', ''), argv,
                              'other-config')
        if not _stale(config.get(READER_KEY)):
            continue
        a = Attachment(conn, dom0, vdi_uuid)
        a.vbd = r['uuid'].lower()
        LOG.warning('VDI %s: removing VBD %s, left attached to the control '
                    'domain by a run that was stopped (%s)', vdi_uuid,
                    a.vbd, config.get(READER_KEY))
        a.unplug(plugged=xe.parse_bool(r.get('currently-attached',
                                             'false'), argv,
                                       'currently-attached'))
        gone += 1
    return gone
