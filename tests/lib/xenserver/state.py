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


"""The host's objects, kept as JSON, and how ``xe`` prints them.

Field names, their order and their kind -- `` RO``/`` RW`` plain,
``MRO``/``MRW`` maps printed ``k: v; k2: v2``, ``SRO``/``SRW`` sets printed
``a; b`` -- follow xapi's CLI records (xapi-project/xen-api
``ocaml/xapi-cli-server/records.ml``) and the XenServer Administrator's
Guide "Command line interface" parameter tables.  Null references print
``<not in database>``; fields xapi computes with an extra call print
``<expensive field>`` in ``*-list`` output (not in ``*-param-get``).

Only the standard library is used.
"""

import contextlib
import fcntl
import json
import os
import time
import uuid as uuidlib

NID = '<not in database>'
EXPENSIVE = '<expensive field>'
STATE = 'state.json'
LOCK = 'state.lock'
FILE_SR_TYPES = ('ext', 'nfs', 'file', 'smb')
LVM_SR_TYPES = ('lvm', 'lvmoiscsi', 'lvmohba')
VHD_SR_TYPES = FILE_SR_TYPES + LVM_SR_TYPES

CLASS_NAMES = {'vm': 'VM', 'vdi': 'VDI', 'vbd': 'VBD', 'sr': 'SR',
               'vif': 'VIF', 'network': 'network', 'host': 'host',
               'pbd': 'PBD'}
#: The host's inventory file, below the root (dom0's
#: /etc/xensource-inventory).
INVENTORY = os.path.join('etc', 'xensource-inventory')


def new_uuid():
    return str(uuidlib.uuid4())


def now_stamp():
    return time.strftime('%Y%m%dT%H:%M:%SZ', time.gmtime())


def mount_dir(root, sr_uuid):
    return os.path.join(root, 'run', 'sr-mount', sr_uuid)


def inventory_path(root):
    return os.path.join(root, INVENTORY)


def table(cls):
    """The key of the state that holds the objects of ``cls``:
    ``state['host']`` is the host the CLI runs on; ``state['hosts']``
    every host of the pool (it included)."""
    if cls in ('snapshot', 'template'):
        return 'vm'
    if cls == 'host':
        return 'hosts'
    return cls


# ---------------------------------------------------------------------------
# the state file and its lock
# ---------------------------------------------------------------------------

def empty_state():
    return {'host': {}, 'vm': {}, 'vbd': {}, 'vdi': {}, 'sr': {}, 'vif': {},
            'network': {}, 'hosts': {}, 'pbd': {}}


def load(root):
    path = os.path.join(root, STATE)
    if not os.path.exists(path):
        return empty_state()
    with open(path) as f:
        return json.load(f)


def save(root, state):
    path = os.path.join(root, STATE)
    tmp = path + '.tmp.%d' % os.getpid()
    with open(tmp, 'w') as f:
        json.dump(state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(root):
    """Hold the host's exclusive lock (every ``xe`` run does, whole)."""
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------------------
# field tables
# ---------------------------------------------------------------------------

def _b(v):
    return 'true' if v else 'false'


class Field(object):
    def __init__(self, name, kind, get, expensive=False, hidden=False,
                 deprecated=False):
        self.name = name
        self.kind = kind            # ' RO' ' RW' 'MRO' 'MRW' 'SRO' 'SRW'
        self.get = get              # (state, uuid, obj) -> str|list|dict
        self.expensive = expensive
        self.hidden = hidden
        self.deprecated = deprecated

    @property
    def is_map(self):
        return self.kind[0] == 'M'

    @property
    def is_set(self):
        return self.kind[0] == 'S'

    def label(self):
        return '%s (%s)%s' % (self.name, self.kind,
                              ' [DEPRECATED]' if self.deprecated else '')

    def raw(self, state, uuid, obj):
        return self.get(state, uuid, obj)

    def text(self, state, uuid, obj, listing=False):
        if listing and self.expensive:
            return EXPENSIVE
        return render(self.raw(state, uuid, obj), self)


def render(value, field):
    if field.is_map:
        return '; '.join('%s: %s' % (k, v) for k, v in value.items())
    if field.is_set:
        return '; '.join(value)
    return value


def key(name, default=''):
    """Getter of a stored plain value."""
    def get(state, uuid, obj):
        v = obj.get(name, default)
        if isinstance(v, bool):
            return _b(v)
        return str(v)
    return get


def mapping(name):
    def get(state, uuid, obj):
        return dict(obj.get(name) or {})
    return get


def const(value):
    return lambda state, uuid, obj: value


def ref(cls, name):
    """A reference printed as the object's uuid (or <not in database>)."""
    def get(state, uuid, obj):
        r = obj.get(name)
        return r if r and r in state[cls] else NID
    return get


def ref_label(cls, name):
    def get(state, uuid, obj):
        r = obj.get(name)
        return state[cls][r]['name-label'] if r in state[cls] else NID
    return get


def F(name, kind, get, **kw):
    return Field(name, kind, get, **kw)


def _vm_snapshots(state, uuid, obj):
    return '; '.join(u for u, v in sorted(state['vm'].items(),
                                          key=lambda kv: kv[1].get(
                                              'snapshot-time', ''))
                     if v.get('snapshot-of') == uuid)


def _vm_vbds(state, uuid, obj):
    return [u for u, v in state['vbd'].items() if v['vm'] == uuid]


def _vm_vifs(state, uuid, obj):
    return [u for u, v in state['vif'].items() if v['vm'] == uuid]


#: VM operations xapi lets run beside each other
#: (xapi_vm_lifecycle.ml ``is_allowed_concurrently``): an operation in
#: one of these groups beside operations all of the same group.
CONCURRENT_GROUPS = (('clone', 'copy', 'export'), ('get_boot_record',),
                     ('snapshot', 'checkpoint'))
#: ... and its state machine: (the current operations, the operation
#: allowed beside exactly them).
CONCURRENT_TRANSITIONS = ((('snapshot_with_quiesce',), 'snapshot'),
                          (('migrate_send',), 'metadata_export'),
                          (('migrate_send',), 'clean_shutdown'),
                          (('migrate_send',), 'clean_reboot'))


def allowed_concurrently(op, current_ops):
    """Whether xapi lets VM operation ``op`` start while
    ``current_ops`` (operation names) run (xapi_vm_lifecycle.ml
    ``is_allowed_concurrently``): a hard shutdown unless one runs
    already, a hard reboot unless a hard shutdown or reboot runs; else
    only within a group or by the state machine above -- beside a clean
    shutdown, a second clean shutdown, a snapshot, a start... are
    refused."""
    current = list(current_ops)
    if not current:
        return True
    if op == 'hard_shutdown':
        return op not in current
    if op == 'hard_reboot':
        return not any(o in ('hard_shutdown', 'hard_reboot')
                       for o in current)
    for group in CONCURRENT_GROUPS:
        if op in group and all(o in group for o in current):
            return True
    return any(tuple(current) == state and op == transition
               for state, transition in CONCURRENT_TRANSITIONS)


def vm_current_ops(obj):
    """The VM's current operations, {task ref: operation name}, as xapi
    keeps them (VM.current_operations) while an operation's task runs."""
    return dict(obj.get('current-operations') or {})


def _vm_allowed_ops(state, uuid, obj):
    ops = _vm_allowed_ops_idle(state, uuid, obj)
    current = vm_current_ops(obj).values()
    # xapi_vm_lifecycle.ml update_allowed_operations: those that
    # check_operation_error lets through, the concurrency check included
    return [o for o in ops if allowed_concurrently(o, current)]


def _vm_allowed_ops_idle(state, uuid, obj):
    if obj.get('is-a-snapshot'):
        return ['clone', 'copy', 'create_template', 'destroy', 'export',
                'revert', 'snapshot']
    if obj['power-state'] == 'running':
        return ['changing_dynamic_range', 'checkpoint', 'clean_reboot',
                'clean_shutdown', 'hard_reboot', 'hard_shutdown', 'pause',
                'snapshot', 'suspend']
    return ['changing_dynamic_range', 'changing_static_range', 'clone',
            'copy', 'destroy', 'export', 'make_into_template',
            'snapshot', 'start', 'start_on']


#: The highest userdevice of a VM's VBDs (xapi_vm_helpers.ml
#: allowed_VBD_devices_HVM and _PV: 0 to 254).
MAX_USERDEVICE = 254


def _vm_allowed_vbd_devices(state, uuid, obj):
    used = {state['vbd'][v]['userdevice'] for v in _vm_vbds(state, uuid, obj)}
    # xapi_vm_helpers.ml allowed_VBD_devices_HVM / _PV: 0 to 254
    return [str(i) for i in range(0, MAX_USERDEVICE + 1)
            if str(i) not in used]


def _vm_allowed_vif_devices(state, uuid, obj):
    used = {state['vif'][v]['device'] for v in _vm_vifs(state, uuid, obj)}
    return [str(i) for i in range(0, 7) if str(i) not in used]


def _vm_domid(state, uuid, obj):
    # a paused VM keeps its domain
    if obj['power-state'] in ('running', 'paused'):
        return str(obj.get('dom-id', 1))
    return '-1'


def _vm_resident(state, uuid, obj):
    if obj['power-state'] in ('running', 'paused'):
        return obj.get('resident-on') or state['host'].get('uuid', NID)
    return NID


def _vm_memory_actual(state, uuid, obj):
    if obj['power-state'] == 'running':
        return str(obj.get('memory-dynamic-max', obj['memory-static-max']))
    return '0'


VM_FIELDS = [
    F('uuid', ' RO', lambda s, u, o: u),
    F('name-label', ' RW', key('name-label')),
    F('name-description', ' RW', key('name-description')),
    F('user-version', ' RW', const('1')),
    F('is-a-template', ' RW', key('is-a-template', False)),
    F('is-default-template', ' RW', const('false')),
    F('is-a-snapshot', ' RO', key('is-a-snapshot', False)),
    F('snapshot-of', ' RO', ref('vm', 'snapshot-of')),
    F('snapshots', ' RO', _vm_snapshots),
    F('snapshot-time', ' RO', key('snapshot-time', '19700101T00:00:00Z')),
    F('transportable-snapshot-id', ' RO', const(''), hidden=True),
    F('snapshot-info', ' RO',
      lambda s, u, o: '; '.join('%s: %s' % kv for kv in (
          o.get('snapshot-info') or {}).items())),
    F('parent', ' RO', ref('vm', 'parent')),
    F('children', ' RO', const('')),
    F('is-control-domain', ' RO', key('is-control-domain', False)),
    F('power-state', ' RO', key('power-state')),
    F('memory-actual', ' RO', _vm_memory_actual),
    F('memory-target', ' RO', const('0'), expensive=True),
    F('memory-overhead', ' RO', const('12582912')),
    F('memory-static-max', ' RW', key('memory-static-max')),
    F('memory-dynamic-max', ' RW', key('memory-dynamic-max')),
    F('memory-dynamic-min', ' RW', key('memory-dynamic-min')),
    F('memory-static-min', ' RW', key('memory-static-min')),
    F('suspend-VDI-uuid', ' RW', const(NID)),
    F('suspend-SR-uuid', ' RW', const(NID)),
    F('VCPUs-params', 'MRW', mapping('VCPUs-params')),
    F('VCPUs-max', ' RW', key('VCPUs-max')),
    F('VCPUs-at-startup', ' RW', key('VCPUs-at-startup')),
    F('actions-after-shutdown', ' RW', const('Destroy')),
    F('actions-after-softreboot', ' RW', const('Soft reboot')),
    F('actions-after-reboot', ' RW', const('Restart')),
    F('actions-after-crash', ' RW', const('Restart')),
    F('console-uuids', 'SRO', const([])),
    F('hvm', ' RO', lambda s, u, o: _b(o.get('domain-type') == 'hvm')),
    F('nomigrate', ' RO', const('false'), hidden=True),
    F('nested-virt', ' RO', const('false'), hidden=True),
    F('platform', 'MRW', mapping('platform')),
    F('numa-optimised', ' RO', const('false')),
    F('numa-nodes', ' RO', const('0')),
    F('numa-node-memory', 'MRO', const({})),
    F('allowed-operations', 'SRO', _vm_allowed_ops),
    # records.ml vm_record: the operation names of VM.current_operations
    # (its values; the task references are not printed), "; " between
    F('current-operations', 'SRO',
      lambda s, u, o: list(vm_current_ops(o).values())),
    F('blocked-operations', 'MRW', const({})),
    F('allowed-VBD-devices', 'SRO', _vm_allowed_vbd_devices, expensive=True),
    F('allowed-VIF-devices', 'SRO', _vm_allowed_vif_devices, expensive=True),
    F('possible-hosts', ' RO', lambda s, u, o: s['host'].get('uuid', ''),
      expensive=True),
    F('domain-type', ' RW', key('domain-type', 'hvm')),
    F('current-domain-type', ' RO',
      lambda s, u, o: (o.get('domain-type', 'hvm')
                       if o['power-state'] == 'running' else 'unspecified')),
    F('HVM-boot-policy', ' RW', key('HVM-boot-policy')),
    F('HVM-boot-params', 'MRW', mapping('HVM-boot-params')),
    F('HVM-shadow-multiplier', ' RW', const('1.000')),
    F('NVRAM', 'MRW', const({}), hidden=True),
    F('PV-kernel', ' RW', key('PV-kernel')),
    F('PV-ramdisk', ' RW', key('PV-ramdisk')),
    F('PV-args', ' RW', key('PV-args')),
    F('PV-legacy-args', ' RW', const('')),
    F('PV-bootloader', ' RW', key('PV-bootloader')),
    F('PV-bootloader-args', ' RW', key('PV-bootloader-args')),
    F('last-boot-CPU-flags', ' RO', const('')),
    F('last-boot-record', ' RO', const(''), expensive=True),
    F('resident-on', ' RO', _vm_resident),
    F('affinity', ' RW', const(NID)),
    F('other-config', 'MRW', mapping('other-config')),
    F('dom-id', ' RO', _vm_domid),
    F('recommendations', ' RO', const('')),
    F('xenstore-data', 'MRW', mapping('xenstore-data')),
    F('ha-always-run', ' RW', const('false'), deprecated=True),
    F('ha-restart-priority', ' RW', const('')),
    F('blobs', ' RO', const('')),
    F('start-time', ' RO', const('19700101T00:00:00Z')),
    F('install-time', ' RO', const('19700101T00:00:00Z')),
    F('VCPUs-number', ' RO',
      lambda s, u, o: (str(o['VCPUs-at-startup'])
                       if o['power-state'] == 'running' else '0')),
    F('VCPUs-utilisation', 'MRO', const({}), expensive=True),
    F('os-version', 'MRO', mapping('os-version')),
    F('netbios-name', 'MRO', const({})),
    F('PV-drivers-version', 'MRO', const({})),
    F('PV-drivers-up-to-date', ' RO', const(NID), deprecated=True),
    F('memory', 'MRO', const({})),
    F('disks', 'MRO', const({})),
    F('VBDs', 'SRO', _vm_vbds),
    F('networks', 'MRO', const({})),
    F('services', 'MRO', const({})),
    F('PV-drivers-detected', ' RO', const(NID)),
    F('other', 'MRO', const({})),
    F('live', ' RO', const(NID)),
    F('guest-metrics-last-updated', ' RO', const(NID)),
    F('can-use-hotplug-vbd', ' RO', const('unspecified')),
    F('can-use-hotplug-vif', ' RO', const('unspecified')),
    F('cooperative', ' RO', const('true'), expensive=True, deprecated=True),
    F('tags', 'SRW', lambda s, u, o: list(o.get('tags', []))),
    F('appliance', ' RW', const(NID)),
    F('groups', ' RW', const('')),
    F('secureboot-certificates-state', ' RO', const('')),
    F('snapshot-schedule', ' RW', const(NID)),
    F('is-vmss-snapshot', ' RO', const('false')),
    F('start-delay', ' RW', const('0')),
    F('shutdown-delay', ' RW', const('0')),
    F('order', ' RW', const('0')),
    F('version', ' RO', const('0')),
    F('generation-id', ' RO', const('')),
    F('hardware-platform-version', ' RO', const('0')),
    F('has-vendor-device', ' RW', const('false')),
    F('requires-reboot', ' RO', const('false')),
    F('reference-label', ' RO', const('')),
    F('bios-strings', 'MRW', const({})),
    F('pending-guidances', ' RO', const('')),
    F('vtpms', ' RO', const('')),
    F('pending-guidances-recommended', ' RO', const('')),
    F('pending-guidances-full', ' RO', const('')),
]


def is_system_domain(vm):
    """system_domains.ml is_system_domain: the control domain, or a VM
    whose other-config says ``is_system_domain: true``."""
    return bool(vm.get('is-control-domain')) or (
        (vm.get('other-config') or {}).get('is_system_domain', '')
        .lower() == 'true')


def vbd_attached(state, vbd):
    """VBD.currently_attached.  The control domain's VBDs are attached by
    ``vbd-plug`` only (stored ``currently-attached``); another VM's while
    it runs (or is paused: its domain keeps its devices), all of them
    after a start, unless ``vbd-create`` made one since (xapi_vbd.ml
    create: not attached) or ``vbd-unplug`` detached it."""
    vm = state['vm'].get(vbd.get('vm'), {})
    if vm.get('is-control-domain'):
        return bool(vbd.get('currently-attached', False))
    if vm.get('power-state') not in ('running', 'paused'):
        return False
    return bool(vbd.get('currently-attached', True))


def _vdi_vbds(state, uuid, obj):
    return [u for u, v in state['vbd'].items() if v.get('vdi') == uuid]


def _vdi_snapshots(state, uuid, obj):
    return '; '.join(u for u, v in state['vdi'].items()
                     if v.get('snapshot-of') == uuid)


def _vdi_utilisation(state, uuid, obj):
    sr = state['sr'].get(obj['sr'], {})
    if sr.get('type') in FILE_SR_TYPES and sr.get('root'):
        path = os.path.join(mount_dir(sr['root'], obj['sr']), uuid + '.vhd')
        if os.path.exists(path):
            return str(os.path.getsize(path))
    if sr.get('type') in LVM_SR_TYPES and sr.get('root'):
        # LVHD: the VDI's utilisation is its LV's size
        path = os.path.join(sr['root'], 'lvm', 'VG_XenStorage-' + obj['sr'],
                            'VHD-' + uuid)
        if os.path.exists(path):
            return str(os.path.getsize(path))
    return str(obj.get('physical-utilisation', obj.get('virtual-size', 0)))


def _vdi_sm_config(state, uuid, obj):
    """The VDI's sm-config; while it is attached to a running VM, with
    the keys the SM backend and xapi add on attach, as a real host prints
    them (``host_OpaqueRef:...: RW; read-caching-enabled-on-<host>:
    false; read-caching-reason-<host>: LICENSE_RESTRICTION``): keys that
    hold ':' and values that are not the client's business."""
    out = {}
    attached = [v for v in state['vbd'].values()
                if v.get('vdi') == uuid and vbd_attached(state, v)]
    if attached:
        host = state['host'].get('uuid', '00000000-0000-0000-0000-'
                                 '000000000000')
        ref = 'OpaqueRef:' + str(uuidlib.uuid5(uuidlib.NAMESPACE_OID,
                                               host))
        out['host_%s' % ref] = 'RW' if attached[0].get(
            'mode', 'RW') == 'RW' else 'RO'
        out['read-caching-enabled-on-%s' % host] = 'false'
        out['read-caching-reason-%s' % host] = 'LICENSE_RESTRICTION'
    out.update(obj.get('sm-config') or {})
    return out


VDI_FIELDS = [
    F('uuid', ' RO', lambda s, u, o: u),
    F('name-label', ' RW', key('name-label')),
    F('name-description', ' RW', key('name-description')),
    F('is-a-snapshot', ' RO', key('is-a-snapshot', False)),
    F('snapshot-of', ' RO', ref('vdi', 'snapshot-of')),
    F('snapshots', ' RO', _vdi_snapshots),
    F('snapshot-time', ' RO', key('snapshot-time', '19700101T00:00:00Z')),
    F('allowed-operations', 'SRO',
      lambda s, u, o: (['clone', 'copy', 'destroy', 'snapshot']
                       if o.get('managed', True) else [])),
    F('current-operations', 'SRO', const([])),
    F('sr-uuid', ' RO', ref('sr', 'sr')),
    F('sr-name-label', ' RO', ref_label('sr', 'sr')),
    F('vbd-uuids', 'SRO', _vdi_vbds),
    F('crashdump-uuids', 'SRO', const([])),
    F('virtual-size', ' RO', key('virtual-size')),
    F('physical-utilisation', ' RO', _vdi_utilisation),
    F('location', ' RO', lambda s, u, o: o.get('location', u)),
    F('type', ' RO', key('type', 'User')),
    F('sharable', ' RO', key('sharable', False)),
    F('read-only', ' RO', key('read-only', False)),
    F('storage-lock', ' RO', const('false')),
    F('managed', ' RO', key('managed', True)),
    F('parent', ' RO', const(NID), deprecated=True),
    F('missing', ' RO', key('missing', False)),
    F('is-tools-iso', ' RO', key('is-tools-iso', False)),
    F('other-config', 'MRW', mapping('other-config')),
    F('xenstore-data', 'MRO', const({})),
    F('sm-config', 'MRO', _vdi_sm_config),
    F('on-boot', ' RW', const('persist')),
    F('allow-caching', ' RW', const('false')),
    F('metadata-latest', ' RO', const('false')),
    F('metadata-of-pool', ' RO', const(NID)),
    F('tags', 'SRW', lambda s, u, o: list(o.get('tags', []))),
    F('cbt-enabled', ' RO', const('false')),
]


def _vbd_vdi_name(state, uuid, obj):
    # records.ml vbd_record: an empty drive prints <EMPTY>
    if obj.get('empty'):
        return '<EMPTY>'
    return ref_label('vdi', 'vdi')(state, uuid, obj)


def _vbd_device(state, uuid, obj):
    # set when the VBD is first attached; kept afterwards
    return obj.get('device', '')


VBD_FIELDS = [
    F('uuid', ' RO', lambda s, u, o: u),
    F('vm-uuid', ' RO', ref('vm', 'vm')),
    F('vm-name-label', ' RO', ref_label('vm', 'vm')),
    F('vdi-uuid', ' RO', ref('vdi', 'vdi')),
    F('vdi-name-label', ' RO', _vbd_vdi_name),
    F('allowed-operations', 'SRO', const(['attach'])),
    F('current-operations', 'SRO', const([])),
    F('empty', ' RO', key('empty', False)),
    F('device', ' RO', _vbd_device),
    F('userdevice', ' RW', key('userdevice')),
    F('bootable', ' RW', key('bootable', False)),
    F('mode', ' RW', key('mode', 'RW')),
    F('type', ' RW', key('type', 'Disk')),
    F('unpluggable', ' RW', key('unpluggable', True)),
    F('currently-attached', ' RO', lambda s, u, o: _b(vbd_attached(s, o))),
    F('attachable', ' RO', const('true'), expensive=True),
    F('storage-lock', ' RO', const('false')),
    F('status-code', ' RO', const('0')),
    F('status-detail', ' RO', const('')),
    F('qos_algorithm_type', ' RW', const('')),
    F('qos_algorithm_params', 'MRW', const({})),
    F('qos_supported_algorithms', 'SRO', const([])),
    F('other-config', 'MRW', mapping('other-config')),
    F('io_read_kbs', ' RO', const('0.000'), expensive=True),
    F('io_write_kbs', ' RO', const('0.000'), expensive=True),
]


def _sr_sizes(which):
    def get(state, uuid, obj):
        if which == 'virtual-allocation':
            return str(sum(int(v.get('virtual-size', 0))
                           for v in state['vdi'].values()
                           if v['sr'] == uuid))
        return str(obj.get(which, 0))
    return get


def _sr_pbds(state, uuid, obj):
    return [k for k, v in state.get('pbd', {}).items() if v['sr'] == uuid]


def _sr_host(state, uuid, obj):
    # records.ml sr_record: <shared>, or the name of the host of its PBD
    if obj.get('shared'):
        return '<shared>'
    hosts = state.get('hosts', {})
    for p in _sr_pbds(state, uuid, obj):
        h = state['pbd'][p]['host']
        if h in hosts:
            return hosts[h]['name-label']
    return NID


SR_FIELDS = [
    F('uuid', ' RO', lambda s, u, o: u),
    F('name-label', ' RW', key('name-label')),
    F('name-description', ' RW', key('name-description')),
    F('host', ' RO', _sr_host),
    F('allowed-operations', 'SRO',
      const(['VDI.enable_cbt', 'VDI.list_changed_blocks', 'unplug',
             'plug', 'PBD.create', 'VDI.disable_cbt', 'update',
             'PBD.destroy', 'VDI.resize', 'VDI.clone', 'VDI.data_destroy',
             'scan', 'VDI.snapshot', 'VDI.mirror', 'VDI.create',
             'VDI.destroy', 'VDI.set_on_boot'])),
    F('current-operations', 'SRO', const([])),
    F('VDIs', 'SRO',
      lambda s, u, o: [k for k, v in s['vdi'].items() if v['sr'] == u]),
    F('PBDs', 'SRO', _sr_pbds),
    F('virtual-allocation', ' RO', _sr_sizes('virtual-allocation')),
    F('physical-utilisation', ' RO', _sr_sizes('physical-utilisation')),
    F('physical-size', ' RO', _sr_sizes('physical-size')),
    F('type', ' RO', key('type')),
    F('content-type', ' RO', key('content-type', 'user')),
    F('shared', ' RW', key('shared', False)),
    F('introduced-by', ' RO', const(NID)),
    F('is-tools-sr', ' RO', key('is-tools-sr', False)),
    F('other-config', 'MRW', mapping('other-config')),
    F('sm-config', 'MRO', mapping('sm-config')),
    F('blobs', ' RO', const('')),
    F('local-cache-enabled', ' RO', const('false')),
    F('tags', 'SRW', lambda s, u, o: list(o.get('tags', []))),
    F('clustered', ' RO', const('false')),
]

VIF_FIELDS = [
    F('uuid', ' RO', lambda s, u, o: u),
    F('vm-uuid', ' RO', ref('vm', 'vm')),
    F('vm-name-label', ' RO', ref_label('vm', 'vm')),
    F('allowed-operations', 'SRO', const(['attach'])),
    F('current-operations', 'SRO', const([])),
    F('device', ' RO', key('device')),
    F('MAC', ' RO', key('MAC')),
    F('MAC-autogenerated', ' RO', key('MAC-autogenerated', False)),
    F('MTU', ' RO', key('MTU', 1500)),
    F('currently-attached', ' RO',
      lambda s, u, o: _b(s['vm'].get(o['vm'], {}).get('power-state')
                         == 'running')),
    F('qos_algorithm_type', ' RW', const('')),
    F('qos_algorithm_params', 'MRW', const({})),
    F('qos_supported_algorithms', 'SRO', const([])),
    F('other-config', 'MRW', mapping('other-config')),
    F('network-uuid', ' RO', ref('network', 'network')),
    F('network-name-label', ' RO', ref_label('network', 'network')),
    F('io_read_kbs', ' RO', const('0.000'), expensive=True),
    F('io_write_kbs', ' RO', const('0.000'), expensive=True),
    F('locking-mode', ' RW', key('locking-mode', 'network_default')),
    F('ipv4-allowed', 'SRW', const([])),
    F('ipv6-allowed', 'SRW', const([])),
    F('ipv4-configuration-mode', ' RO', const('None')),
    F('ipv4-addresses', ' RO', const('')),
    F('ipv4-gateway', ' RO', const('')),
    F('ipv6-configuration-mode', ' RO', const('None')),
    F('ipv6-addresses', ' RO', const('')),
    F('ipv6-gateway', ' RO', const('')),
    F('trunks', 'SRW', const([])),
]

NETWORK_FIELDS = [
    F('uuid', ' RO', lambda s, u, o: u),
    F('name-label', ' RW', key('name-label')),
    F('name-description', ' RW', key('name-description')),
    F('VIF-uuids', 'SRO',
      lambda s, u, o: [k for k, v in s['vif'].items()
                       if v['network'] == u]),
    F('PIF-uuids', 'SRO', const([])),
    F('MTU', ' RW', key('MTU', 1500)),
    F('bridge', ' RO', key('bridge')),
    F('managed', ' RO', const('true')),
    F('other-config', 'MRW', mapping('other-config')),
    F('blobs', ' RO', const('')),
    F('tags', 'SRW', const([])),
    F('default-locking-mode', ' RW', const('unlocked')),
    F('purpose', 'SRW', const([])),
]


def _host_ref(name):
    def get(state, uuid, obj):
        r = obj.get('host')
        hosts = state.get('hosts', {})
        if r not in hosts:
            return NID
        return r if name == 'uuid' else hosts[r]['name-label']
    return get


# records.ml pbd_record
PBD_FIELDS = [
    F('uuid', ' RO', lambda s, u, o: u),
    F('host', ' RO', _host_ref('uuid'), deprecated=True),
    F('host-uuid', ' RO', _host_ref('uuid')),
    F('host-name-label', ' RO', _host_ref('name-label')),
    F('sr-uuid', ' RO', ref('sr', 'sr')),
    F('sr-name-label', ' RO', ref_label('sr', 'sr')),
    F('device-config', 'MRO', mapping('device-config')),
    F('currently-attached', ' RO', key('currently-attached', True)),
    F('other-config', 'MRW', mapping('other-config')),
]


def _host_vms(state, uuid, obj):
    return [u for u, v in state['vm'].items()
            if _vm_resident(state, u, v) == uuid]


# records.ml host_record, its first fields and those a test may ask
HOST_FIELDS = [
    F('uuid', ' RO', lambda s, u, o: u),
    F('name-label', ' RW', key('name-label')),
    F('name-description', ' RW', key('name-description')),
    F('allowed-operations', 'SRO',
      const(['vm_migrate', 'provision', 'vm_resume', 'evacuate',
             'vm_start'])),
    F('current-operations', 'SRO', const([])),
    F('enabled', ' RO', key('enabled', True)),
    F('API-version-major', ' RO', const('2')),
    F('API-version-minor', ' RO', const('21')),
    F('API-version-vendor', ' RO', const('XenSource')),
    F('software-version', 'MRO', mapping('software-version')),
    F('other-config', 'MRW', mapping('other-config')),
    F('hostname', ' RO', key('hostname')),
    F('address', ' RO', key('address')),
    F('control-domain-uuid', ' RO', ref('vm', 'control-domain')),
    F('resident-vms', 'SRO', _host_vms),
]

FIELDS = {'vm': VM_FIELDS, 'vdi': VDI_FIELDS, 'vbd': VBD_FIELDS,
          'sr': SR_FIELDS, 'vif': VIF_FIELDS, 'network': NETWORK_FIELDS,
          'pbd': PBD_FIELDS, 'host': HOST_FIELDS}
