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


"""Building stand-in XenServer hosts, writing into running guests, and
running the stand-in ``xe`` as the client would (a subprocess whose only
link to the host is ``XE_STANDIN_ROOT``).

* :class:`HostBuilder` -- a host with SRs (``ext``, ``nfs``, ``lvm`` --
  its VDIs' VHDs in logical volumes, see :mod:`lvm` --, ``iso``),
  networks, the control domain and VMs; :func:`standard_host`
  builds the shared fixture host (two-disk VM with a CD and NICs, names
  with shell metacharacters, two VMs sharing a name-label, a VM on LVM,
  a VDI whose parent locator points outside its SR).
* :class:`GuestWriter` -- the running guest writing into its disk's
  current leaf, with a :class:`tests.lib.imagegen.RawModel` of the bytes
  the disk must read.
* :func:`coalesce` -- SM's garbage collector, as an explicit step.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from tests.lib import imagegen as ig
from tests.lib.xenserver import lvm
from tests.lib.xenserver import sr as srlib
from tests.lib.xenserver import state as st

XE = Path(__file__).resolve().parent / 'xe'
#: The stand-in's ``lvs`` (LVM2's, over the host's LVM SRs), put beside
#: ``xe`` wherever a session's PATH gets it.
LVS = Path(__file__).resolve().parent / 'lvs'
#: The stand-in's ``blockdev`` (util-linux's ``--flushbufs``, over the LV
#: device nodes), put beside ``xe`` too.
BLOCKDEV = Path(__file__).resolve().parent / 'blockdev'
ENV = 'XE_STANDIN_ROOT'
MiB = 1 << 20
GiB = 1 << 30


def xe_env(root):
    env = dict(os.environ)
    env[ENV] = str(root)
    # the xe script runs with the python3 on PATH: the one running the
    # tests has FATtools
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env.get(
        'PATH', '')
    env.pop('PYTHONPATH', None)
    return env


def run_xe(root, *args, input=None, timeout=120):
    """Run ``xe ARGS`` against the host at ``root``; a CompletedProcess."""
    return subprocess.run([str(XE)] + [str(a) for a in args],
                          capture_output=True, text=True, input=input,
                          env=xe_env(root), timeout=timeout, cwd='/')


def xe_ok(root, *args, **kw):
    r = run_xe(root, *args, **kw)
    assert r.returncode == 0, 'xe %s: %s%s' % (args, r.stdout, r.stderr)
    return r.stdout


def mac(n):
    return 'aa:bb:cc:%02x:%02x:%02x' % ((n >> 16) & 255, (n >> 8) & 255,
                                        n & 255)


class HostBuilder(object):
    #: What makes the model of a new VDI's bytes (``factory(size)``): a
    #: :class:`tests.lib.imagegen.RawModel` in memory by default; a
    #: benchmark's disks of gigabytes use a file
    #: (:class:`tests.lib.imagegen.FileModel`).
    model_factory = None

    def __init__(self, root, name='xenserver-standin'):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.state = st.empty_state()
        self.order = 0
        self.macs = 0
        self.state['host'] = {'uuid': st.new_uuid(), 'name-label': name,
                              'next-domid': 1}
        self.this = self.state['host']['uuid']
        self.networks = {}
        self.srs = {}
        self._pool_host(self.this, name)

    def _next(self):
        self.order += 1
        return self.order

    # -- the pool ----------------------------------------------------------

    def _pool_host(self, u, name):
        n = len(self.state['hosts']) + 1
        self.state['hosts'][u] = {
            'name-label': name, 'name-description': 'Default install',
            'hostname': name, 'address': '192.0.2.%d' % n, 'enabled': True,
            'software-version': {'product_brand': 'XCP-ng',
                                 'product_version': '8.2.1'},
            'other-config': {}, 'order': self._next()}
        self.state['hosts'][u]['control-domain'] = self.add_vm(
            'Control domain on host: %s' % name, disks=(), control=True,
            host=u)
        return u

    def add_host(self, name):
        """Another host of the pool (the CLI runs on the first one); its
        uuid.  Shared SRs added afterwards get a PBD on it too."""
        return self._pool_host(st.new_uuid(), name)

    def _pbd(self, sr_uuid, host_uuid, plugged):
        sr = self.state['sr'][sr_uuid]
        config = ({'location': '/dev/disk/by-id/scsi-standin-part3'}
                  if not sr['shared'] else
                  {'server': '192.0.2.200', 'serverpath': '/export/sr'})
        u = st.new_uuid()
        self.state['pbd'][u] = {'host': host_uuid, 'sr': sr_uuid,
                                'device-config': config,
                                'currently-attached': bool(plugged),
                                'other-config': {}, 'order': self._next()}
        return u

    def unplug(self, sr_uuid, host_uuid=None):
        """``xe pbd-unplug`` of the SR's PBD on ``host_uuid`` (default:
        the host the CLI runs on); on that host the SR is unmounted."""
        host_uuid = host_uuid or self.this
        for p in self.state['pbd'].values():
            if p['sr'] == sr_uuid and p['host'] == host_uuid:
                p['currently-attached'] = False

    def attached_here(self, sr_uuid):
        return any(p['sr'] == sr_uuid and p['host'] == self.this and
                   p['currently-attached']
                   for p in self.state['pbd'].values())

    # -- storage and networks ------------------------------------------------

    def add_sr(self, name, sr_type, content_type='user', shared=False,
               size=100 * GiB, host=None, plugged=True):
        """An SR with its PBDs: one on every host of the pool when
        ``shared``, else one on ``host`` (default: the host the CLI runs
        on); ``plugged``: whether they are attached."""
        u = st.new_uuid()
        self.state['sr'][u] = {
            'name-label': name, 'name-description': '', 'type': sr_type,
            'content-type': content_type, 'shared': shared,
            'physical-size': size, 'physical-utilisation': 0,
            'sm-config': ({'devserial': 'scsi-standin'}
                          if sr_type.startswith('lvm') else {}),
            'other-config': {}, 'order': self._next(),
            'root': self.root if sr_type in st.VHD_SR_TYPES else ''}
        if sr_type in st.FILE_SR_TYPES:
            os.makedirs(st.mount_dir(self.root, u), exist_ok=True)
        elif sr_type in lvm.LVM_SR_TYPES:
            # the VG with SM's metadata volume (LVHDSR MDVOLUME_NAME)
            lvm.create_mgt(self.root, u)
        for h in (list(self.state['hosts']) if shared
                  else [host or self.this]):
            self._pbd(u, h, plugged)
        self.srs[name] = u
        return u

    def add_network(self, name, bridge):
        u = st.new_uuid()
        self.state['network'][u] = {'name-label': name,
                                    'name-description': '',
                                    'bridge': bridge, 'MTU': 1500,
                                    'other-config': {},
                                    'order': self._next()}
        self.networks[name] = u
        return u

    def sr_path(self, sr_uuid, vdi_uuid):
        return os.path.join(st.mount_dir(self.root, sr_uuid),
                            vdi_uuid + '.vhd')

    def add_vdi(self, sr_uuid, size, name='disk', writes=()):
        """A VDI with a dynamic VHD (file SRs) and the model of its bytes."""
        u = st.new_uuid()
        sr_type = self.state['sr'][sr_uuid]['type']
        rec = {'name-label': name, 'name-description': 'Created by xe',
               'sr': sr_uuid, 'virtual-size': size, 'type': 'User',
               'sharable': False, 'read-only': False, 'managed': True,
               'location': u, 'sm-config': {}, 'other-config': {},
               'order': self._next()}
        model = (self.model_factory or ig.RawModel)(size)
        if sr_type in st.FILE_SR_TYPES:
            srlib.create_base(self.sr_path(sr_uuid, u), size)
            for off, data in writes:
                srlib.write(self.sr_path(sr_uuid, u), off, data)
                model.write(off, data)
        elif sr_type in lvm.LVM_SR_TYPES:
            # LVHDVDI.create: the LV VHD-<uuid>, inflated (thick SR)
            rec['sm-config'] = {'vdi_type': 'vhd'}
            # ``writes`` may be an iterator (a benchmark's gigabytes):
            # read once, into the LV and the model alike.
            lvm.create(self.root, sr_uuid, u, size,
                       _into(model, writes))
        elif sr_type == 'iso':
            rec.update({'type': 'User', 'read-only': True,
                        'location': name, 'sm-config': {}})
        self.state['vdi'][u] = rec
        self.models = getattr(self, 'models', {})
        self.models[u] = model
        return u

    # -- VMs --------------------------------------------------------------

    def add_vm(self, name, disks=((8 * MiB, None),), sr=None, cd=None,
               nics=(), firmware='bios', power='running', vcpus=2,
               memory=1 * GiB, pv=False, control=False, disk_writes=None,
               owner=True, host=None):
        """``disks``: (size, name) per disk; ``cd``: None (no drive),
        'empty', or an ISO VDI uuid; userdevices as :func:`userdevices`
        gives them (disks 0, 1, 2, ...; the CD at 3 when free), at most
        255 drives (0 to 254); ``nics``: network uuids (device 0,
        1, ...); ``owner``: False for disks attached as ``xe vbd-create``
        does (no ``owner`` in the VBD's other-config: ``vm-uninstall``
        leaves their VDIs); ``host``: the pool host it runs on (default:
        the host the CLI runs on)."""
        places, cd_place = userdevices(len(disks), cd is not None)
        u = st.new_uuid()
        vm = {
            'name-label': name, 'name-description': '',
            'power-state': 'running' if control else power,
            'is-a-template': False, 'is-a-snapshot': False,
            'is-control-domain': control,
            'VCPUs-max': vcpus, 'VCPUs-at-startup': vcpus,
            'memory-static-max': memory, 'memory-dynamic-max': memory,
            'memory-dynamic-min': memory, 'memory-static-min': 256 * MiB,
            'domain-type': 'pv' if (pv or control) else 'hvm',
            'HVM-boot-policy': '' if (pv or control) else 'BIOS order',
            'HVM-boot-params': ({} if (pv or control) else
                                {'order': 'cd', 'firmware': firmware}),
            'PV-bootloader': 'pygrub' if pv else '',
            'PV-bootloader-args': '', 'PV-kernel': '', 'PV-ramdisk': '',
            'PV-args': '',
            'platform': ({} if control else
                         {'timeoffset': '0', 'device-model': 'qemu-upstream-'
                          + ('uefi' if firmware == 'uefi' else 'compat'),
                          'videoram': '8', 'apic': 'true', 'pae': 'true',
                          'acpi': '1', 'hpet': 'true', 'viridian': 'true',
                          'nx': 'true', 'vga': 'std'}),
            'other-config': {}, 'order': self._next()}
        if firmware == 'uefi' and not pv:
            vm['platform']['secureboot'] = 'false'
        if host is not None and host != self.this:
            vm['resident-on'] = host
        if vm['power-state'] == 'running':
            vm['dom-id'] = 0 if control else self.state['host']['next-domid']
            if not control:
                self.state['host']['next-domid'] += 1
        self.state['vm'][u] = vm
        for i, (size, dname) in enumerate(disks):
            writes = (disk_writes or {}).get(i, ())
            vdi = self.add_vdi(sr, size, dname or '%s %d' % (name, i),
                               writes=writes)
            self._vbd(u, vdi, str(places[i]), device_name(places[i]),
                      'Disk', bootable=(i == 0), owner=owner)
        if cd is not None:
            self._vbd(u, None if cd == 'empty' else cd, str(cd_place),
                      device_name(cd_place), 'CD', bootable=False)
        for i, net in enumerate(nics):
            self.macs += 1
            self.state['vif'][st.new_uuid()] = {
                'vm': u, 'device': str(i), 'MAC': mac(self.macs),
                'MAC-autogenerated': True, 'MTU': 1500, 'network': net,
                'other-config': {}, 'order': self._next()}
        return u

    def _vbd(self, vm, vdi, userdevice, device, kind, bootable,
             owner=True):
        self.state['vbd'][st.new_uuid()] = {
            'vm': vm, 'vdi': vdi, 'userdevice': userdevice,
            'device': device, 'type': kind, 'bootable': bootable,
            'mode': 'RW' if kind == 'Disk' else 'RO',
            'empty': vdi is None, 'unpluggable': kind == 'Disk',
            'other-config': ({'owner': 'true'} if kind == 'Disk' and owner
                             else {}),
            'order': self._next()}

    def outside_parent_vdi(self, sr_uuid, size=8 * MiB):
        """A VDI of a file SR whose VHD is a differencing child of a file
        OUTSIDE the SR: its locators say ``../../../outside/<x>.vhd``."""
        outside = os.path.join(self.root, 'outside')
        os.makedirs(outside, exist_ok=True)
        parent_uuid = st.new_uuid()
        parent = os.path.join(outside, parent_uuid + '.vhd')
        srlib.create_base(parent, size)
        srlib.write(parent, 0, ig.pattern(99, 4096))
        u = self.add_vdi(sr_uuid, size, 'escaping parent')
        path = self.sr_path(sr_uuid, u)
        os.unlink(path)
        srlib.create_child(path, parent)
        rel = os.path.relpath(parent, os.path.dirname(path))
        srlib.relink(path, rel, srlib.meta(parent)['uuid'])
        self.state['vdi'][u]['sm-config'] = {'vhd-parent': parent_uuid}
        return u

    def save(self):
        """Write the state and the host's inventory; the directories of
        file SRs not attached on this host leave its SR mount (to
        ``off-host/<sr-uuid>``: an unplugged or other host's SR is not
        mounted here)."""
        with st.locked(self.root):
            for u, sr in self.state['sr'].items():
                here = st.mount_dir(self.root, u)
                if (sr['type'] in st.FILE_SR_TYPES and
                        not self.attached_here(u) and os.path.isdir(here)):
                    away = os.path.join(self.root, 'off-host')
                    os.makedirs(away, exist_ok=True)
                    os.rename(here, os.path.join(away, u))
            self._inventory()
            lvm.sync(self.root, self.state, 'HostBuilder.save')
            st.save(self.root, self.state)
        return self.root

    def _inventory(self):
        """dom0's /etc/xensource-inventory, as the installer writes it
        (``KEY='value'`` lines, sourced by dom0 scripts)."""
        path = st.inventory_path(self.root)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dom0 = self.state['hosts'][self.this]['control-domain']
        items = [('PRODUCT_BRAND', 'XCP-ng'),
                 ('PRODUCT_NAME', 'xenenterprise'),
                 ('PRODUCT_VERSION', '8.2.1'),
                 ('BUILD_NUMBER', 'release/yangtze/master/58'),
                 ('PRIMARY_DISK', '/dev/disk/by-id/scsi-standin'),
                 ('MANAGEMENT_INTERFACE', 'xenbr0'),
                 ('MANAGEMENT_ADDRESS_TYPE', 'IPv4'),
                 ('CONTROL_DOMAIN_UUID', dom0),
                 ('INSTALLATION_UUID', self.this)]
        with open(path, 'w') as f:
            f.write(''.join("%s='%s'\n" % kv for kv in items))


def _into(model, writes):
    """``writes`` ((offset, bytes) ...) as they come, each written into
    ``model`` too."""
    for off, data in writes:
        model.write(off, data)
        yield off, data


def userdevices(disks, cd=False):
    """(the userdevice of each of ``disks`` disks, the CD's or None): the
    disks at the lowest free userdevices (as ``vbd-create`` and
    XenCenter's "Add disk" choose them, from allowed-VBD-devices), the
    CD drive at 3 when that is free (where the templates and the
    documented ``xe vm-cd-add ... device=3`` put it), else at the lowest
    free one.  xapi allows userdevices 0 to 254 (xapi_vm_helpers.ml
    allowed_VBD_devices_HVM/_PV): more drives are refused."""
    total = disks + (1 if cd else 0)
    if total > st.MAX_USERDEVICE + 1:
        raise ValueError('%d drives: a VM has at most %d (userdevices 0 '
                         'to %d)' % (total, st.MAX_USERDEVICE + 1,
                                     st.MAX_USERDEVICE))
    places = list(range(disks))
    cd_place = None
    if cd:
        cd_place = 3 if disks <= 3 else disks
    return places, cd_place


def device_name(userdevice):
    """The device a VBD gets when first attached: ``xvd`` and the
    userdevice as Linux names disks (0 xvda, 25 xvdz, 26 xvdaa, ...)."""
    n = int(userdevice) + 1
    letters = ''
    while n:
        n, r = divmod(n - 1, 26)
        letters = chr(ord('a') + r) + letters
    return 'xvd' + letters


def standard_host(root):
    """The shared host; returns (root, facts) where facts names things."""
    b = HostBuilder(root)
    local = b.add_sr('Local storage', 'ext')
    nfs = b.add_sr('NFS virtual disk storage', 'nfs', shared=True)
    lvm = b.add_sr('Local storage LVM', 'lvm')
    iso_sr = b.add_sr('ISOs', 'iso', content_type='iso')
    b.add_sr('XenServer Tools', 'iso', content_type='iso')
    net0 = b.add_network('Pool-wide network associated with eth0', 'xenbr0')
    net1 = b.add_network('Pool-wide network associated with eth1', 'xenbr1')
    iso = b.add_vdi(iso_sr, 4 * MiB, 'debian-12.iso')
    p = ig.pattern
    facts = {'sr': {'ext': local, 'nfs': nfs, 'lvm': lvm, 'iso': iso_sr},
             'network': {'eth0': net0, 'eth1': net1}, 'iso': iso}
    facts['two-disks'] = b.add_vm(
        'two-disks', disks=((8 * MiB, 'system'), (4 * MiB, 'data')),
        sr=local, cd=iso, nics=(net0, net1), firmware='uefi',
        disk_writes={0: [(0, p(1, 64 * 1024)), (3 * MiB, p(2, 4096))],
                     1: [(MiB, p(3, 8192))]})
    facts['semicolon'] = b.add_vm('a; touch /tmp/pwned',
                                  disks=((4 * MiB, None),), sr=nfs,
                                  cd='empty', nics=(net0,))
    facts['quotes'] = b.add_vm('it\'s "mine"', disks=((4 * MiB, None),),
                               sr=local, nics=(net1,), power='halted')
    facts['twin-a'] = b.add_vm('twin', disks=((4 * MiB, None),), sr=local)
    facts['twin-b'] = b.add_vm('twin', disks=((4 * MiB, None),), sr=local,
                               power='halted')
    facts['lvm'] = b.add_vm('on-lvm', disks=((16 * MiB, None),), sr=lvm,
                            nics=(net0,))
    facts['pv'] = b.add_vm('pv-guest', disks=((4 * MiB, None),), sr=local,
                           pv=True, power='halted')
    facts['escaping-vdi'] = b.outside_parent_vdi(local)
    facts['models'] = b.models
    b.save()
    return b.root, facts


def pool_host(root):
    """A pool of two hosts, the CLI on ``xs-a``; returns (root, facts).

    VMs: ``here`` (a disk on xs-a's local SR, one on a shared SR plugged
    on both hosts), ``on-xs-b`` (running on xs-b, its disk on xs-b's
    local SR), ``unplugged`` (halted, its disk on a shared SR whose PBDs
    are both unplugged) and ``five-disks`` (five disks and an empty CD
    drive, the CD where userdevice 3 is taken)."""
    b = HostBuilder(root, 'xs-a')
    other = b.add_host('xs-b')
    local = b.add_sr('Local storage', 'ext')
    remote = b.add_sr('Local storage', 'ext', host=other)
    shared = b.add_sr('NFS virtual disk storage', 'nfs', shared=True)
    gone = b.add_sr('NFS old', 'nfs', shared=True)
    b.unplug(gone)
    b.unplug(gone, other)
    p = ig.pattern
    facts = {'hosts': {'xs-a': b.this, 'xs-b': other},
             'sr': {'local': local, 'remote': remote, 'shared': shared,
                    'gone': gone}}
    facts['here'] = b.add_vm('here', disks=((4 * MiB, 'system'),), sr=local,
                             disk_writes={0: [(0, p(41, 4096))]})
    data = b.add_vdi(shared, 2 * MiB, 'data on nfs', [(MiB, p(42, 512))])
    b._vbd(facts['here'], data, '1', device_name(1), 'Disk',
           bootable=False)
    facts['on-xs-b'] = b.add_vm('on-xs-b', disks=((4 * MiB, None),),
                                sr=remote, host=other)
    facts['unplugged'] = b.add_vm('unplugged', disks=((4 * MiB, None),),
                                  sr=gone, power='halted')
    facts['five-disks'] = b.add_vm(
        'five-disks', disks=[(MiB * (i + 1), 'disk %d' % i)
                             for i in range(5)], sr=local, cd='empty')
    facts['models'] = b.models
    b.save()
    return b.root, facts


# ---------------------------------------------------------------------------
# the running guest
# ---------------------------------------------------------------------------

def _load(root):
    return st.load(str(root))


@contextlib.contextmanager
def _host_op(root):
    """One operation on the host's disks, under the host's lock, the
    running guests' tapdisks paused around it (``sr.tapdisks_paused``:
    a guest's write leaves its leaf with no footer at its end, as
    tapdisk does)."""
    root = str(root)
    with st.locked(root):
        with srlib.tapdisks_paused(root, lambda: st.load(root)):
            yield


def vdi_path(root, vdi_uuid):
    """The VDI's VHD: its file on a file SR, its LV's store file (see
    :mod:`tests.lib.xenserver.lvm`) on an LVM SR."""
    s = _load(root)
    sr = s['vdi'][vdi_uuid]['sr']
    if lvm.is_lvm(s['sr'][sr]):
        return lvm.store_path(str(root), sr, lvm.lv_name(vdi_uuid))
    return os.path.join(st.mount_dir(str(root), sr), vdi_uuid + '.vhd')


def _is_lvm_vdi(root, vdi_uuid):
    s = _load(root)
    return lvm.is_lvm(s['sr'][s['vdi'][vdi_uuid]['sr']])


def set_field(root, table, uuid, key, value):
    """Set ``key`` of object ``uuid`` of ``table`` (``'vm'``, ``'vdi'``
    ...; ``'host'`` with uuid None: the host the CLI runs on) in the
    stand-in's state, under the host's lock: a test's knob (a fault to
    make, a power state, the host's xapi-version)."""
    with st.locked(str(root)):
        s = _load(root)
        (s[table] if uuid is None else s[table][uuid])[key] = value
        st.save(str(root), s)


def guest_ignores_shutdown(root, vm_uuid, timeout, ignores=True):
    """Make the VM's guest ignore a clean shutdown (``xe vm-shutdown``
    without ``force`` then waits ``timeout`` seconds and fails with
    VM_SHUTDOWN_TIMEOUT, as xapi does; a hard one still stops it)."""
    with st.locked(str(root)):
        s = _load(root)
        s['vm'][vm_uuid]['guest-ignores-shutdown'] = bool(ignores)
        s['host']['clean-shutdown-timeout'] = timeout
        st.save(str(root), s)


class GuestWriter(object):
    """Writes into a VDI's leaf (the file named by the VDI uuid) as the
    running guest would, keeping the model of what the disk must read.

    The leaf keeps its name across snapshots, so this keeps working after
    any number of ``xe vm-snapshot``.  Every write takes the host's lock,
    like the storage stack would serialise metadata updates."""

    def __init__(self, root, vdi_uuid, model):
        self.root = str(root)
        self.vdi = vdi_uuid
        self.model = model

    @property
    def path(self):
        return vdi_path(self.root, self.vdi)

    def write(self, offset, data):
        """On an LVM SR, the write lands in the leaf LV in place, as
        tapdisk writes (:func:`lvm.write`: the LV's size and its footer at
        the end kept)."""
        with _host_op(self.root):
            if _is_lvm_vdi(self.root, self.vdi):
                lvm.write(self.path, offset, data)
            else:
                srlib.write(self.path, offset, data)
        self.model.write(offset, data)

    def zero(self, offset, length):
        self.write(offset, bytes(length))

    def grow(self, new_size):
        """Grow the disk the way ``vhd-util resize -f`` does (sm's
        ``setSizeVirtFast``): footer size, geometry and BAT entries of
        the leaf; the VDI's virtual-size follows."""
        with _host_op(self.root):
            s = st.load(self.root)
            if _is_lvm_vdi(self.root, self.vdi):
                lvm.resize(self.path, new_size,
                           lvm.wants_inflated(s['vdi'][self.vdi]))
            else:
                srlib.resize(self.path, new_size)
            s['vdi'][self.vdi]['virtual-size'] = new_size
            st.save(self.root, s)
        self.model.resize(new_size)

    def read_back(self, offset=0, length=None):
        """What FATtools' own reader returns through the whole chain."""
        if length is None:
            length = self.model.size - offset
        return srlib.read(self.path, offset, length)


def coalesce(root, node_vdi):
    """SM's GC, explicit: merge the hidden node ``node_vdi`` into its only
    child, which takes over (see ``sr.coalesce_into_child``); the node's
    "base copy" VDI record goes, the child's ``vhd-parent`` becomes the
    node's parent."""
    root = str(root)
    with _host_op(root):
        s = st.load(root)
        children = [u for u, v in s['vdi'].items()
                    if (v.get('sm-config') or {}).get('vhd-parent') ==
                    node_vdi]
        if len(children) != 1:
            raise ValueError('node %s has %d children'
                             % (node_vdi, len(children)))
        child = children[0]
        node = s['vdi'][node_vdi]
        sr = s['sr'][node['sr']]
        if sr['type'] in st.FILE_SR_TYPES:
            srlib.coalesce_into_child(st.mount_dir(root, node['sr']),
                                      node_vdi, child)
        elif lvm.is_lvm(sr):
            lvm.coalesce(root, s, node['sr'], node_vdi, child,
                         lvm.wants_inflated(s['vdi'][child]))
        grand = (node.get('sm-config') or {}).get('vhd-parent')
        cfg = s['vdi'][child].setdefault('sm-config', {})
        if grand:
            cfg['vhd-parent'] = grand
        else:
            cfg.pop('vhd-parent', None)
        del s['vdi'][node_vdi]
        lvm.sync(root, s, 'coalesce')
        st.save(root, s)
    return child
