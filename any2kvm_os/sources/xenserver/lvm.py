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
* the VHD ends with the LV: libvhd writes a block device's footer in its
  last sector, and ``inflate``/``deflate`` move it to the LV's new end
  (``vhd-util modify -s``).  Two things leave no footer there: a
  running VM's tapdisk, which overwrites it with 0xc7 whenever it opens
  the leaf for writing (blktap's ``vhd_kill_footer``: at every start,
  and at every unpause, so after every snapshot) until it closes it; and
  an inflate in flight or cut short (SM then keeps a journal LV, and
  refuses to attach the VDI).  The copy at offset 0 is the footer then,
  as libvhd falls back to it.  The readers take an LV as a *padded* view
  (:attr:`LvmContainer.padded`): that fallback is allowed for it (and
  for a file SR's leaf: ``RemoteDirectoryContainer.live_leaf``), and for
  nothing else.

The chain is read as from a file SR, over SFTP, from the LV device nodes;
the directory of the container is the volume group's, its members the
active ``VHD-*`` LVs: those ``lvs --readonly`` lists (with their sizes:
a block device has no size SFTP can tell) whose device node is in the
volume group's directory (:func:`active_names`: ``lvs --readonly``
cannot say which LVs are active).  A parent is the LV its child names
(as SM finds it: ``vhd-util scan``), checked by unique id; no other LV
is opened (they are other VMs' disks), nor anything outside that volume
group, whatever a VHD header or ``xe`` says.  Before an LV is opened,
this host's page cache of it is dropped (``blockdev --flushbufs``): SFTP
reads through it, while SM writes LVs with O_DIRECT, on a shared SR from
the pool master, which no other host's cache sees.

The chain is read in place only while a VM that has the VDI attached
runs on this host (:func:`read_in_place`): its tapdisk holds the chain
active here, with SM's refcounts.  A VM of another host is refused
(connect to that host).  When no VM has it attached (its VM halted: a
cutover, after the shutdown; ``verify`` after one), the VDI is attached
read-only to the
control domain of the host connected to, the way SM allows it (``xe
vbd-create`` for dom0, ``vbd-plug``: SM's refcounts keep the chain
active), for as long as the chain is open; then ``vbd-unplug`` and
``vbd-destroy``.  The VBD carries ``other-config:any2kvm-reader`` (the
conversion host and the process: :func:`any2kvm_os.processes.tag`), so
that one a
killed process left behind is
known as ours and removed (:func:`release_stale`): it would keep the VM
from starting again.

A migration's sync reads neither way the VM's own chain: it reads the
chain of the VDI its snapshot took of the disk, which no VM has attached,
so attached to dom0 (``engine._Run._read_from``): the VM's LVs are never
held open by us while SM may deactivate them.
"""

import logging
import posixpath
import re
import time

from any2kvm_os.containers import remote
from any2kvm_os import exception
from any2kvm_os import processes
from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import xe

LOG = logging.getLogger(__name__)

VG_PREFIX = 'VG_XenStorage-'
LV_PREFIX = 'VHD-'
#: The LVs of raw VDIs (lvhdutil ``LV_PREFIX`` of ``vdi_type`` ``aio``).
RAW_PREFIX = 'LV-'
#: The other-config key of the VBDs this tool plugs into dom0.
READER_KEY = 'any2kvm-reader'
#: How many times a dom0 VBD's unplug is asked for, and the first wait
#: between two (seconds, growing: 0.5, 1, 1.5, 2).
UNPLUG_TRIES = 5
UNPLUG_WAIT = 0.5
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


def flush_command(paths):
    """``blockdev --flushbufs`` of the LV device nodes ``paths``: this
    host's page cache of them dropped (see the module)."""
    return ['blockdev', '--flushbufs'] + list(paths)


def lvs_command(vg):
    """``lvs`` of volume group ``vg``: each LV's name, size in bytes and
    attributes, one line each, no heading (LVM2 ``lvs(8)``); read-only
    (``--readonly``: no lock taken, no metadata written or repaired, as
    SM's own ``vgs --readonly``)."""
    return ['lvs', '--readonly', '--noheadings', '--nosuffix', '--units',
            'b', '--separator', _SEP, '-o', 'lv_name,lv_size,lv_attr', vg]


class Volume(object):
    """One LV as ``lvs`` lists it; :attr:`active` as :func:`mark_active`
    says."""

    def __init__(self, name, size, attr):
        self.name, self.size, self.attr = name, size, attr
        # lvs(8): the 5th attribute character is the state, 'a' active;
        # ``lvs --readonly`` says 'X' (unknown) of every LV, active or
        # not (see :func:`active_names`).
        self.active = len(attr) >= 5 and attr[4] == 'a'

    def __repr__(self):
        return 'Volume(%r, %d, %r)' % (self.name, self.size, self.attr)


def active_names(conn, directory, limit=MAX_LVS):
    """The names in the device directory ``directory`` of a volume
    group on the host of ``conn``: its active LVs.  SM tells an active
    LV by its device node (``lvutil._checkActive``: the path exists);
    ``lvs --readonly`` cannot tell (LVM2 turns activation off with
    ``--readonly``, and ``lv_attr`` then says 'X', unknown, for every
    LV), and a plain ``lvs`` takes the volume group's lock, which SM's
    own commands would wait for.  No directory: no LV active."""
    skipped = {}
    try:
        names = conn.listdir(directory, limit, skipped=skipped)
    except exception.SshError as e:
        if getattr(e, 'no_such_file', False):
            return set()
        raise
    return set(names) | set(skipped)


def mark_active(volumes, names):
    """Each of ``volumes`` (:func:`parse_lvs`) active when its name is
    one of ``names`` (:func:`active_names`); returns ``volumes``."""
    for name, volume in volumes.items():
        volume.active = name in names
    return volumes


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
                not (fields[1].isascii() and fields[1].isdigit()) or
                len(fields[1]) > 20 or len(fields[2]) > 16):
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
                 volumes, label=None, flushed=()):
        super(LvmContainer, self).__init__(connection, directory, leaf_name,
                                           limits, label=label)
        self.volumes = volumes
        #: LVs whose page cache was dropped just before (in the round
        #: trip that attached them): not dropped again at their first
        #: open.
        self._flushed = set(flushed)

    def member_names(self):
        if self._members is None:
            self._members = sorted(
                n for n, v in self.volumes.items()
                if n.startswith(LV_PREFIX) and v.active)
        return self._members

    def hint_name(self, hint):
        """The LV a child's parent name (its header's, or a locator's
        last part) means: ``VHD-<uuid>``, also from the device-mapper
        name of the LV (``VG_XenStorage--<sr>-VHD--<uuid>``, dashes
        doubled, as SM's ``extractUuid`` reads it); None for another
        name.  Only that LV is ever opened as the parent (SM finds
        parents by name too: ``vhd-util scan``).  A raw LV (``LV-<uuid>``:
        a legacy raw VDI snapshotted with a VHD child on its raw LV; SM
        refuses to snapshot a VDI it marks ``type=raw``) is refused by
        name."""
        base = posixpath.basename(hint or '')
        if base.startswith(VG_PREFIX.replace('-', '--')) or \
                base.startswith(VG_PREFIX):
            cut = max(base.find('-' + p.replace('-', '--'))
                      for p in (LV_PREFIX, RAW_PREFIX))
            base = (base[cut + 1:].replace('--', '-') if cut >= 0
                    else '')
        if not _LV_NAME.match(base):
            return None
        if base.startswith(RAW_PREFIX):
            raise exception.ChainError(
                path=self.display_name(base), reason='the parent is a raw '
                'LV (a legacy raw VDI, snapshotted): only VHD layers are '
                'read; move the disk to a file SR while the VM runs (xe '
                'vdi-pool-migrate), or export the VM (xe vm-export)')
        if base.startswith(LV_PREFIX):
            return base
        return None

    def _open(self, name, prefetch=None):
        if name not in self.member_names():
            volume = self.volumes.get(name)
            raise exception.ChainError(
                path=self.display_name(name), reason='not an active LV of '
                'volume group %s%s' % (
                    posixpath.basename(self.directory),
                    ' (it is inactive: no attached VDI holds it)'
                    if volume is not None else ''))
        path = posixpath.join(self.directory, name)
        # This host's page cache of the LV may be older than its blocks:
        # SM's GC and snapshots write LVs with O_DIRECT, on a shared SR
        # from the pool master, which no other host's cache sees.  SFTP
        # reads through it: dropped first (BLKFLSBUF).
        if name in self._flushed:
            self._flushed.discard(name)
        else:
            self.connection.check_run(flush_command([path]),
                                      idempotent=True)
        view = self.connection.open_file(
            path, size=self.volumes[name].size,
            name=self.display_name(name), prefetch=prefetch or None)
        view.padded = True
        return view


class Attachment(object):
    """A VDI attached read-only to the host's control domain for as long
    as its chain is read (see the module).  Made in two steps where the
    moment counts (a cutover): the VBD created and tagged before the
    VM's shutdown (:meth:`create`), only plugged inside the downtime
    (:meth:`plug_command`, run in one round trip with the reads that
    follow it: ``plugin._plug_prepared``)."""

    def __init__(self, conn, dom0, vdi_uuid):
        self.conn, self.dom0, self.vdi = conn, dom0, vdi_uuid
        self.vbd = None

    def _run(self, argv):
        return self.conn.check_run(argv).stdout

    def create(self):
        """The VBD created in dom0 and tagged with this process
        (:data:`READER_KEY`), not plugged (xapi allows that while a VM
        has the VDI attached: only the plug checks who uses it)."""
        argv = xe.command('vbd-create', [
            ('vm-uuid', self.dom0), ('vdi-uuid', self.vdi),
            ('device', 'autodetect'), ('mode', 'RO'), ('type', 'Disk')])
        self.vbd = xe.parse_uuid(self._run(argv), argv)
        try:
            self._run(xe.command('vbd-param-set', [
                ('uuid', self.vbd),
                ('other-config:%s' % READER_KEY, processes.tag())]))
        except BaseException:
            self.unplug(plugged=False)
            raise

    def plug_command(self):
        """The command that plugs the VBD :meth:`create` made."""
        return xe.command('vbd-plug', [('uuid', self.vbd)])

    def plug(self):
        self.create()
        try:
            self._run(self.plug_command())
        except exception.RemoteCommandError as e:
            # Refused: never plugged.  Not waited for to its end: xapi
            # may have plugged it, or still be at it: unplugged first.
            self.unplug(plugged=getattr(e, 'timed_out', False))
            raise
        except BaseException:
            # (A lost connection, an interruption: whether it was
            # plugged is unknown; an unplug of one that was not fails,
            # and is logged.)
            self.unplug()
            raise
        self.plugged()

    def plugged(self):
        LOG.info('VDI %s attached read-only to the control domain (VBD '
                 '%s) to read its chain', self.vdi, self.vbd)

    def unplug(self, plugged=True):
        """Detach and forget the VBD (an error is logged: the chain was
        read; the VBD is then named for the operator).  An unplug dom0
        refuses for a moment (DEVICE_DETACH_REJECTED while udev or LVM
        look at the new disk) is asked again, :data:`UNPLUG_TRIES` times
        in all."""
        vbd, self.vbd = self.vbd, None
        if vbd is None:
            return
        try:
            if plugged:
                for attempt in range(UNPLUG_TRIES):
                    try:
                        self._run(xe.command('vbd-unplug', [('uuid', vbd)]))
                        break
                    except exception.RemoteCommandError:
                        if attempt + 1 == UNPLUG_TRIES:
                            raise
                        time.sleep(UNPLUG_WAIT * (attempt + 1))
            self._run(xe.command('vbd-destroy', [('uuid', vbd)]))
        except exception.Any2KvmError as e:
            LOG.warning('VDI %s stays attached to the control domain: '
                        'xe vbd-unplug uuid=%s; xe vbd-destroy uuid=%s '
                        '(%s)', self.vdi, vbd, vbd,
                        str(e).splitlines()[0][:200] if str(e) else e)


class Vbd(object):
    """One VBD of a VDI (:func:`vbds`): its ``uuid``, its VM's (``vm``),
    whether it is ``attached`` now, and the ``tag`` this tool gives the
    dom0 VBDs it plugs (``other-config:any2kvm-reader``; None)."""

    def __init__(self, uuid, vm, attached, tag):
        self.uuid, self.vm, self.attached, self.tag = uuid, vm, attached, tag

    def __repr__(self):
        return 'Vbd(%r, %r, %r, %r)' % (self.uuid, self.vm, self.attached,
                                        self.tag)


#: What :func:`vbds` asks of each VBD of a VDI.
VBD_FIELDS = ('uuid', 'vm-uuid', 'currently-attached', 'other-config')


def vbds_command(vdi_uuid):
    """Every VBD of VDI ``vdi_uuid``, with :data:`VBD_FIELDS`: one
    listing tells both who has the VDI attached (:func:`users`) and which
    of dom0's a killed run of this tool left (:func:`release_stale`)."""
    return xe.list_command('vbd', [('vdi-uuid', vdi_uuid)], VBD_FIELDS)


def vbds(conn, vdi_uuid):
    """[:class:`Vbd`] of VDI ``vdi_uuid`` (:func:`vbds_command`)."""
    argv = vbds_command(vdi_uuid)
    records = xe.parse_records(conn.check_run(argv, idempotent=True).stdout,
                               argv, VBD_FIELDS,
                               required=('uuid', 'vm-uuid'))
    out = []
    for r in records:
        config = xe.parse_map(r.get('other-config', ''), argv,
                              'other-config')
        out.append(Vbd(r['uuid'].lower(), r['vm-uuid'].lower(),
                       xe.parse_bool(r.get('currently-attached', 'false'),
                                     argv, 'currently-attached'),
                       config.get(READER_KEY)))
    return out


def users(conn, vdi_uuid, found=None):
    """The uuids of the VMs that have VDI ``vdi_uuid`` attached now (a
    VBD currently attached), dom0's included; ``found``: its
    :func:`vbds`, when listed already."""
    if found is None:
        found = vbds(conn, vdi_uuid)
    return [v.vm for v in found if v.attached]


def resident_on(conn, vm_uuid):
    """The uuid of the host VM ``vm_uuid`` runs on (``resident-on``)."""
    argv = xe.command('vm-param-get', [('uuid', vm_uuid),
                                       ('param-name', 'resident-on')])
    return xe.parse_value(conn.check_run(argv, idempotent=True).stdout,
                          argv).strip().lower()


def read_in_place(conn, info, found=None):
    """Whether the chain of ``info`` (an LVM disk) is read as it is, or
    after attaching its VDI to dom0 (False).  In place only while a VM
    that has it attached runs on this host: its tapdisk holds the chain
    active here with SM's refcounts, and SM keeps this host's mapping of
    its LVs current.  Attached to dom0 when nothing has it attached (the
    VM is halted; another read-only dom0 VBD, a backup tool's, may be
    beside it).  Refused when a VM of another host of the pool has it
    (LVs are active where their VM runs; reading them here would have SM
    activate, on this host, volumes another host writes to): connect to
    that host.  ``found``: the VDI's :func:`vbds`, when listed
    already."""
    where = '%s:%s' % (conn.label, info.path)
    attached = [u for u in users(conn, info.vdi_uuid, found)
                if u != info.control_domain]
    if not attached:
        return False
    if info.this_host is None:
        raise exception.ChainError(
            path=where, reason='VM %s has the VDI attached, and this '
            'host is unknown (its inventory, xenserver_inventory, names '
            'no INSTALLATION_UUID): whether it runs here cannot be told'
            % attached[0])
    for vm in attached:
        if resident_on(conn, vm) == info.this_host:
            return True
    raise exception.ChainError(
        path=where, reason='the VDI is attached to VM %s, which runs on '
        'another host of the pool (LVs are active where their VM runs): '
        'connect to that host' % ', '.join(attached[:3]))


def release_stale(conn, dom0, vdi_uuid, found=None, kept=None):
    """Remove the VBDs of VDI ``vdi_uuid`` in dom0 that a process of this
    conversion host left behind when it was killed while reading the
    chain; returns how many.  ``found``: the VDI's :func:`vbds`, when
    listed already; ``kept``: a list that gets the :class:`Vbd` of each
    other one this tool tagged (a live run's, or another conversion
    host's: not ours to judge) that is attached."""
    if found is None:
        found = vbds(conn, vdi_uuid)
    gone = 0
    for v in found:
        if v.vm != dom0 or not v.tag:
            continue
        if not processes.tag_gone(v.tag):
            if kept is not None and v.attached:
                kept.append(v)
            continue
        a = Attachment(conn, dom0, vdi_uuid)
        a.vbd = v.uuid
        LOG.warning('VDI %s: removing VBD %s, left attached to the control '
                    'domain by a run that was stopped (%s)', vdi_uuid,
                    a.vbd, v.tag)
        a.unplug(plugged=v.attached)
        gone += 1
    return gone
