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


"""The XenServer stand-in (tests/lib/xenserver) checked against the
documented behaviour of the real ``xe`` CLI and of XenServer's FileSR.

``xe`` runs as a subprocess whose only link to the host is
``XE_STANDIN_ROOT``, as the client will run it through SSH.
"""

import os
import re
import shlex
import subprocess
import time

import pytest

from tests.lib import imagegen as ig
from tests.lib.xenserver import host as xh
from tests.lib.xenserver import lvm
from tests.lib.xenserver import sr as srlib
from tests.lib.xenserver import state as st

pytest.importorskip('FATtools')

UUID = r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'


@pytest.fixture
def host(tmp_path):
    root, facts = xh.standard_host(tmp_path / 'host')
    return root, facts


def vbds_of(root, vm):
    out = xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + vm, '--minimal').strip()
    return out.split(',') if out else []


def disk_vdis(root, vm):
    """VDI uuids of a VM's disks in userdevice order."""
    rows = []
    for vbd in vbds_of(root, vm):
        kind = xh.xe_ok(root, 'vbd-param-get', 'uuid=' + vbd,
                        'param-name=type').strip()
        if kind != 'Disk':
            continue
        dev = int(xh.xe_ok(root, 'vbd-param-get', 'uuid=' + vbd,
                           'param-name=userdevice'))
        vdi = xh.xe_ok(root, 'vbd-param-get', 'uuid=' + vbd,
                       'param-name=vdi-uuid').strip()
        rows.append((dev, vdi))
    return [v for _d, v in sorted(rows)]


# ---------------------------------------------------------------------------
# output formats
# ---------------------------------------------------------------------------

def test_record_layout_as_cli_printer(host):
    """First label left-aligned, the others right-aligned to 4 + the
    longest label, ": " then the value; two blank lines after a record."""
    root, f = host
    out = xh.xe_ok(root, 'vm-list', 'uuid=' + f['two-disks'])
    assert out == (
        'uuid ( RO)           : %s\n'
        '     name-label ( RW): two-disks\n'
        '    power-state ( RO): running\n\n\n' % f['two-disks'])


def test_vm_list_default_filter_hides_snapshots_not_dom0(host):
    root, f = host
    uuids = xh.xe_ok(root, 'vm-list', '--minimal').strip().split(',')
    assert f['two-disks'] in uuids
    dom0 = xh.xe_ok(root, 'vm-list', 'is-control-domain=true',
                    '--minimal').strip()
    assert re.fullmatch(UUID, dom0) and dom0 in uuids
    snap = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + f['two-disks'],
                    'new-name-label=s1').strip()
    assert snap not in xh.xe_ok(root, 'vm-list', '--minimal')
    assert snap in xh.xe_ok(root, 'snapshot-list', '--minimal')
    # snapshot-list's default params as xapi lists them: snapshot_of and
    # snapshot_time are no field names, so they never print
    out = xh.xe_ok(root, 'snapshot-list', 'uuid=' + snap)
    assert [line.split('(')[0].strip() for line in out.splitlines()
            if line] == ['uuid', 'name-label', 'name-description',
                         'is-vmss-snapshot']


def test_minimal_params_and_filters(host):
    root, f = host
    assert xh.xe_ok(root, 'vm-list', 'name-label=twin', 'params=uuid',
                    '--minimal').strip().split(',') == [f['twin-a'],
                                                        f['twin-b']]
    assert xh.xe_ok(root, 'vm-list', 'power-state=halted', 'name-label=twin',
                    '--minimal').strip() == f['twin-b']
    names = xh.xe_ok(root, 'vm-list', 'params=name-label', '--minimal')
    # commas in values are escaped by --minimal
    assert 'a; touch /tmp/pwned' in names
    assert xh.xe_ok(root, 'vm-list', 'name-label=nothing',
                    '--minimal') == '\n'
    assert xh.xe_ok(root, 'vm-list', 'name-label=nothing') == ''


def test_params_all_maps_and_sets(host):
    root, f = host
    out = xh.xe_ok(root, 'vm-param-list', 'uuid=' + f['two-disks'])
    assert re.search(r'^ *HVM-boot-params \(MRW\): firmware: uefi; order: cd$',
                     out, re.M)
    assert re.search(r'^ *VBDs \(SRO\): (%s; ){2}%s$' % (UUID, UUID), out,
                     re.M)
    assert re.search(r'^ *snapshot-of \( RO\): <not in database>$', out, re.M)
    listed = xh.xe_ok(root, 'vm-list', 'uuid=' + f['two-disks'],
                      'params=all')
    assert re.search(r'allowed-VBD-devices \(SRO\): <expensive field>',
                     listed)
    assert 'transportable-snapshot-id' not in listed     # hidden field
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + f['two-disks'],
                    'param-name=platform', 'param-key=device-model'
                    ).strip() == 'qemu-upstream-uefi'
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + f['pv'],
                    'param-name=PV-bootloader').strip() == 'pygrub'


def test_vm_hardware(host):
    root, f = host
    vm = f['two-disks']

    def get(name):
        return xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                        'param-name=' + name).strip()
    assert get('VCPUs-max') == '2'
    assert get('memory-static-max') == str(1 << 30)
    vifs = xh.xe_ok(root, 'vif-list', 'vm-uuid=' + vm, 'params=device,MAC',
                    '--minimal').strip().split(',')
    assert vifs == ['0', '1']
    out = xh.xe_ok(root, 'vif-list', 'vm-uuid=' + vm, 'device=1',
                   'params=MAC,network-name-label')
    assert 'network-name-label ( RO): Pool-wide network associated with ' \
           'eth1' in out


def test_cd_drives(host):
    root, f = host
    cd = xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + f['two-disks'], 'type=CD',
                  'params=vdi-uuid', '--minimal').strip()
    assert cd == f['iso']
    assert xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + f['semicolon'],
                    'type=CD', 'params=empty,vdi-uuid').count(
                        '<not in database>') == 1


def test_sr_types_and_vdi_sm_config(host):
    root, f = host
    for kind in ('ext', 'nfs', 'lvm'):
        assert xh.xe_ok(root, 'sr-param-get', 'uuid=' + f['sr'][kind],
                        'param-name=type').strip() == kind
    lvm_vdi = disk_vdis(root, f['lvm'])[0]
    # (the VM runs: the keys the backend adds on attach come first)
    assert xh.xe_ok(root, 'vdi-param-get', 'uuid=' + lvm_vdi,
                    'param-name=sm-config').strip().endswith(
                        '; vdi_type: vhd')
    assert not os.path.exists(os.path.join(
        root, 'run', 'sr-mount', f['sr']['lvm']))


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def test_errors(host):
    root, f = host
    r = xh.run_xe(root, 'vm-param-get', 'uuid=bogus', 'param-name=uuid')
    assert (r.returncode, r.stdout) == (1, '')
    assert r.stderr == ('The uuid you supplied was invalid.\n'
                        'type: VM\nuuid: bogus\n')
    r = xh.run_xe(root, 'vm-frobnicate')
    assert r.returncode == 1
    assert r.stderr == ("Unknown command: vm-frobnicate\n"
                        "For usage run: 'xe help'\n")
    r = xh.run_xe(root, 'vm-param-get', 'uuid=' + f['twin-a'])
    assert r.returncode == 1
    assert r.stderr.startswith('Required parameter not found: param-name\n')
    r = xh.run_xe(root, 'vm-snapshot', 'vm=twin', 'new-name-label=x')
    assert r.returncode == 1
    assert r.stderr == ('Error: Multiple matches VMs found. --multiple '
                        'required to complete the operation\n')
    r = xh.run_xe(root, 'vm-shutdown', 'uuid=' + f['twin-b'])
    assert r.returncode == 1
    assert r.stderr.splitlines()[1:] == [
        'vm: %s (twin)' % f['twin-b'], 'expected: running',
        'actual: halted']
    r = xh.run_xe(root, 'vm-param-get', 'uuid=' + f['twin-a'],
                  'param-name=no-such-field')
    assert r.returncode == 1
    assert r.stderr == ('Error code: Missing parameter\n'
                        'Error parameters: no-such-field\n')


def test_words_as_xapi_receives_them(host):
    # The thin client sends the words joined by newlines; xapi splits them
    # at newlines and drops a carriage return ending one (newcli.ml;
    # xapi_cli.ml parse_session_and_args, zap_cr).
    root, f = host
    assert xh.xe_ok(root, 'vm-list', 'uuid=%s\nparams=name-label'
                    % f['twin-a'], '--minimal') == 'twin\n'
    out = xh.xe_ok(root, 'vm-list', 'name-label=twin\r', 'params=uuid',
                   '--minimal')
    assert out.strip().split(',') == [f['twin-a'], f['twin-b']]
    # What the thin client keeps for itself (newcli.ml parse_args) never
    # reaches xapi as a filter.
    out = xh.xe_ok(root, '--traceparent', '00-1-2-01', 'vm-list',
                   'name-label=twin', 'debug=false', '--nossl',
                   'params=uuid', '--minimal')
    assert out.strip().split(',') == [f['twin-a'], f['twin-b']]


# ---------------------------------------------------------------------------
# snapshots on the VHD files
# ---------------------------------------------------------------------------

def test_snapshot_file_layout(host):
    root, f = host
    vm = f['two-disks']
    leaf = disk_vdis(root, vm)[0]
    sr_dir = os.path.join(root, 'run', 'sr-mount', f['sr']['ext'])
    before = srlib.meta(os.path.join(sr_dir, leaf + '.vhd'))
    snap = xh.xe_ok(root, 'vm-snapshot', 'vm=two-disks',
                    'new-name-label=migrate-1').strip()
    assert re.fullmatch(UUID, snap)
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + snap,
                    'param-name=is-a-snapshot').strip() == 'true'
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + snap,
                    'param-name=snapshot-of').strip() == vm
    node = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + leaf,
                    'param-name=sm-config', 'param-key=vhd-parent').strip()
    snap_vdi = disk_vdis(root, snap)[0]
    assert xh.xe_ok(root, 'vdi-param-get', 'uuid=' + snap_vdi,
                    'param-name=snapshot-of').strip() == leaf
    assert xh.xe_ok(root, 'vdi-param-get', 'uuid=' + node,
                    'param-name=name-label').strip() == 'base copy'
    n = srlib.meta(os.path.join(sr_dir, node + '.vhd'))
    l1 = srlib.meta(os.path.join(sr_dir, leaf + '.vhd'))
    s1 = srlib.meta(os.path.join(sr_dir, snap_vdi + '.vhd'))
    assert n['uuid'] == before['uuid'] and n['hidden'] == 1
    assert l1['disk_type'] == s1['disk_type'] == 4
    assert l1['parent_uuid'] == s1['parent_uuid'] == n['uuid']
    assert l1['uuid'] != n['uuid'] != s1['uuid']
    assert l1['locators'] == [('MacX', 'file://./%s.vhd' % node),
                              ('W2ku', '.\\%s.vhd' % node),
                              ('W2ru', '.\\%s.vhd' % node)]
    assert l1['parent_name'] == node + '.vhd'
    # new empty leaves: no block allocated yet
    assert l1['file_size'] < 8192 and s1['file_size'] < 8192
    # the CD is not snapshotted: the snapshot's CD holds the same ISO
    assert xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + snap, 'type=CD',
                    'params=vdi-uuid', '--minimal').strip() == f['iso']

    # removal: the snapshot's leaf goes, the shared node stays
    r = xh.run_xe(root, 'snapshot-uninstall', 'uuid=' + snap, 'force=true')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == (
        'The following items are about to be destroyed')
    assert r.stdout.splitlines()[-1] == 'All objects destroyed'
    assert not os.path.exists(os.path.join(sr_dir, snap_vdi + '.vhd'))
    assert os.path.exists(os.path.join(sr_dir, node + '.vhd'))
    assert xh.run_xe(root, 'vm-param-get', 'uuid=' + snap,
                     'param-name=uuid').returncode == 1


@pytest.mark.parametrize('kind', ['ext', 'lvm'])
def test_snapshot_of_an_empty_leaf_makes_no_base(host, kind):
    """``vhd-util snapshot`` (blktap ``vhd_util_find_snapshot_target``)
    links the new children to the leaf's first ancestor holding a block;
    FileSR (``delete newsrc if unused``) and LVHD (``_finishSnapshot``)
    remove the unused base, and no base copy VDI is introduced.  A
    running VM that wrote nothing between two snapshots shows it."""
    root, f = host
    vm = f['twin-a'] if kind == 'ext' else f['lvm']     # one disk each
    vdi = disk_vdis(root, vm)[0]
    if kind == 'ext':
        store = os.path.join(root, 'run', 'sr-mount', f['sr']['ext'])

        def path(u):
            return os.path.join(store, u + '.vhd')
    else:
        store = _store(root, f['sr']['lvm'])

        def path(u):
            return os.path.join(store, 'VHD-' + u)
    g = xh.GuestWriter(root, vdi, f['models'][vdi])
    g.write(4096, ig.pattern(8, 8192))
    s1 = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm,
                  'new-name-label=one').strip()
    node = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                    'param-name=sm-config', 'param-key=vhd-parent').strip()
    empty_leaf = srlib.meta(path(vdi))
    assert empty_leaf['parent_uuid'] == srlib.meta(path(node))['uuid']
    # grown, nothing written: the second snapshot finds the leaf empty,
    # and gives its children the leaf's size, not the ancestor's
    g.grow(20 * ig.MiB)
    files = set(os.listdir(store))
    vdis = set(xh.xe_ok(root, 'vdi-list', '--minimal').strip().split(','))
    s2 = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm,
                  'new-name-label=two').strip()
    snap2 = disk_vdis(root, s2)[0]
    assert xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                    'param-name=sm-config',
                    'param-key=vhd-parent').strip() == node
    assert xh.xe_ok(root, 'vdi-param-get', 'uuid=' + snap2,
                    'param-name=sm-config',
                    'param-key=vhd-parent').strip() == node
    leaf, sn = srlib.meta(path(vdi)), srlib.meta(path(snap2))
    n = srlib.meta(path(node))
    assert leaf['parent_uuid'] == sn['parent_uuid'] == n['uuid']
    assert leaf['uuid'] != empty_leaf['uuid']
    assert leaf['virtual_size'] == sn['virtual_size'] == 20 * ig.MiB
    assert n['virtual_size'] < 20 * ig.MiB
    # only the snapshot's disk is new: no base file or LV, no base copy
    assert set(os.listdir(store)) == files | {os.path.basename(path(snap2))}
    assert set(xh.xe_ok(root, 'vdi-list', '--minimal').strip().split(
        ',')) == vdis | {snap2}
    # the first snapshot still reads as the disk was, and so do the VM
    # and the second snapshot
    assert srlib.read(path(snap2), 0, len(g.model.data)) == \
        bytes(g.model.data)
    assert g.read_back() == bytes(g.model.data)
    # a write, then a third snapshot: a base again (the leaf holds a block)
    g.write(0, ig.pattern(9, 512))
    xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm, 'new-name-label=three')
    node3 = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                     'param-name=sm-config', 'param-key=vhd-parent').strip()
    assert node3 != node
    assert xh.xe_ok(root, 'vdi-param-get', 'uuid=' + node3,
                    'param-name=name-label').strip() == 'base copy'
    assert srlib.meta(path(node3))['parent_uuid'] == n['uuid']
    assert g.read_back() == bytes(g.model.data)
    for snap in (s1, s2):
        xh.xe_ok(root, 'snapshot-uninstall', 'uuid=' + snap, 'force=true')


def test_vm_uninstall_does_not_select_snapshots(host):
    root, f = host
    snap = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + f['quotes'],
                    'new-name-label=s').strip()
    r = xh.run_xe(root, 'vm-uninstall', 'uuid=' + snap, 'force=true')
    assert r.returncode == 1
    assert r.stderr == 'Error: No matching VMs found\n'
    # template-uninstall takes any template, a snapshot included, and no
    # VM that is not one
    r = xh.run_xe(root, 'template-uninstall', 'template-uuid=' + f['quotes'],
                  'force=true')
    assert (r.returncode, r.stderr) == (1, 'Error: This operation can only '
                                        'be performed on a VM template. %s '
                                        'is not a VM template.\n'
                                        % f['quotes'])
    out = xh.xe_ok(root, 'template-uninstall', 'template-uuid=' + snap,
                   'force=true')
    assert out.splitlines()[0] == ('The following items are about to be '
                                   'destroyed')
    assert out.splitlines()[-1] == 'All objects destroyed'
    assert snap not in xh.xe_ok(root, 'snapshot-list', '--minimal')


def test_vdi_destroy_rules(host):
    root, f = host
    leaf = disk_vdis(root, f['twin-a'])[0]
    r = xh.run_xe(root, 'vdi-destroy', 'uuid=' + leaf)
    assert r.returncode == 1 and r.stderr.startswith(
        'This operation cannot be performed because this VDI is in use')
    snap = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + f['twin-a'],
                    'new-name-label=s').strip()
    node = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + leaf,
                    'param-name=sm-config', 'param-key=vhd-parent').strip()
    r = xh.run_xe(root, 'vdi-destroy', 'uuid=' + node)
    assert r.returncode == 1 and 'does not manage this VDI' in r.stderr
    snap_vdi = disk_vdis(root, snap)[0]
    xh.xe_ok(root, 'vdi-destroy', 'uuid=' + snap_vdi)
    assert vbds_of(root, snap) == []


def test_shutdown_start(host):
    root, f = host
    xh.xe_ok(root, 'vm-shutdown', 'uuid=' + f['twin-a'])
    assert xh.xe_ok(root, 'vm-list', 'power-state=halted', 'name-label=twin',
                    '--minimal').strip().split(',') == [f['twin-a'],
                                                        f['twin-b']]
    xh.xe_ok(root, 'vm-start', 'uuid=' + f['twin-a'])
    xh.xe_ok(root, 'vm-shutdown', 'uuid=' + f['twin-a'], '--force')
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + f['twin-a'],
                    'param-name=power-state').strip() == 'halted'


def test_shell_metacharacters_through_ssh_like_shell(host):
    """The remote shell gets one command line; a quoted name stays one."""
    root, f = host
    line = '%s vm-list name-label=%s --minimal' % (
        shlex.quote(str(xh.XE)), shlex.quote('a; touch /tmp/pwned'))
    r = subprocess.run(['sh', '-c', line], env=xh.xe_env(root),
                       capture_output=True, text=True)
    assert r.stdout.strip() == f['semicolon']
    quotes = xh.xe_ok(root, 'vm-list', 'name-label=it\'s "mine"',
                      '--minimal').strip()
    assert quotes == f['quotes']


def test_escaping_parent_locator(host):
    root, f = host
    vdi = f['escaping-vdi']
    path = xh.vdi_path(root, vdi)
    m = srlib.meta(path)
    assert all('..' in text for _c, text in m['locators'])
    assert m['parent_uuid'] == srlib.meta(os.path.join(
        root, 'outside', os.listdir(os.path.join(root, 'outside'))[0]
    ))['uuid']


# ---------------------------------------------------------------------------
# the guest writer and its model
# ---------------------------------------------------------------------------

def test_guest_writer_model_matches_fattools_through_snapshots(host):
    root, f = host
    vm = f['two-disks']
    vdi = disk_vdis(root, vm)[0]
    g = xh.GuestWriter(root, vdi, f['models'][vdi])
    p = ig.pattern
    snaps, then = [], []
    for rnd in range(3):
        then.append(bytes(g.model.data))
        snaps.append(xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm,
                              'new-name-label=round-%d' % rnd).strip())
        g.write(2 * ig.MiB + rnd * 4096, p(10 + rnd, 4096))  # new blocks
        g.zero(rnd * 512, 512)                  # zeros over parent data
        g.write(3 * ig.MiB + 100 + rnd, p(20 + rnd, 700))    # partial
    assert g.read_back() == bytes(g.model.data)
    g.grow(12 * ig.MiB)
    g.write(11 * ig.MiB + 3, p(30, 5000))
    g.write(8 * ig.MiB - 512, p(31, 1024))      # straddles the old end
    assert g.read_back() == bytes(g.model.data)
    assert xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                    'param-name=virtual-size').strip() == str(12 * ig.MiB)
    # the chain: leaf and three nodes, by unique id
    assert len(srlib.chain(g.path)) == 4
    # an old snapshot still reads as the disk was then
    first_snap_vdi = disk_vdis(root, snaps[0])[0]
    assert srlib.read(xh.vdi_path(root, first_snap_vdi), 0,
                      8 * ig.MiB) == then[0]


def test_snapshot_reads_the_disk_as_it_was(host):
    root, f = host
    vm = f['twin-a']
    vdi = disk_vdis(root, vm)[0]
    g = xh.GuestWriter(root, vdi, f['models'][vdi])
    g.write(0, ig.pattern(5, 8192))
    before = bytes(g.model.data)
    snap = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm,
                    'new-name-label=s').strip()
    g.write(4096, ig.pattern(6, 8192))
    snap_vdi = disk_vdis(root, snap)[0]
    assert srlib.read(xh.vdi_path(root, snap_vdi), 0, len(before)) == before
    assert g.read_back() == bytes(g.model.data)


def test_coalesce_changes_the_chain_behind_the_readers_back(host):
    root, f = host
    vm = f['twin-a']
    vdi = disk_vdis(root, vm)[0]
    g = xh.GuestWriter(root, vdi, f['models'][vdi])
    snap = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm,
                    'new-name-label=s').strip()
    g.write(512, ig.pattern(7, 4096))
    node = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                    'param-name=sm-config', 'param-key=vhd-parent').strip()
    old_id = srlib.meta(g.path)['uuid']
    xh.xe_ok(root, 'snapshot-uninstall', 'uuid=' + snap, 'force=true')
    xh.coalesce(root, node)
    m = srlib.meta(g.path)
    assert m['uuid'] != old_id and m['disk_type'] == 3 and not m['hidden']
    assert g.read_back() == bytes(g.model.data)
    r = xh.run_xe(root, 'vdi-param-get', 'uuid=' + node, 'param-name=uuid')
    assert r.returncode == 1


# ---------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------

def test_concurrent_invocations_do_not_corrupt_state(host):
    root, f = host
    procs = [subprocess.Popen(
        [str(xh.XE), 'vm-snapshot', 'uuid=' + f['quotes'],
         'new-name-label=c%d' % i], env=xh.xe_env(root),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    snaps = xh.xe_ok(root, 'snapshot-list', 'snapshot-of=' + f['quotes'],
                     '--minimal').strip().split(',')
    assert sorted(snaps) == sorted(o.strip() for o, _e in outs)
    vdi = disk_vdis(root, f['quotes'])[0]
    # the first snapshot made a base; the other five found the leaf empty
    # and linked their disks to that base (no new level each)
    leaf = xh.vdi_path(root, vdi)
    assert len(srlib.chain(leaf)) == 2
    base = srlib.meta(leaf)['parent_uuid']
    for snap in snaps:
        assert srlib.meta(xh.vdi_path(root, disk_vdis(root, snap)[0]))[
            'parent_uuid'] == base
    st.load(root)       # still valid JSON


# ---------------------------------------------------------------------------
# details checked against xapi's records.ml and cli_operations.ml
# ---------------------------------------------------------------------------

def test_vbd_details_and_param_set(host):
    """An empty drive's vdi-name-label is <EMPTY> (records.ml vbd_record);
    a snapshot's VBDs are copies of the VM's, device included; the VBD
    other-config the snapshot copies carries ``owner``
    (what vm-uninstall keys on) on disks, not on CD drives, and
    ``*-param-set map:key=value`` adds a key (cli_operations.ml p_set)
    while read-only fields refuse."""
    root, f = host
    empty = xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + f['semicolon'],
                     'type=CD', 'params=uuid', '--minimal').strip()
    assert xh.xe_ok(root, 'vbd-param-get', 'uuid=' + empty,
                    'param-name=vdi-name-label') == '<EMPTY>\n'
    assert xh.xe_ok(root, 'vbd-param-get', 'uuid=' + empty,
                    'param-name=vdi-uuid') == st.NID + '\n'
    snap = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + f['semicolon'],
                    'new-name-label=s').strip()
    # xapi_vbd_helpers.ml copy keeps the device; snapshot_info is a map
    # printed in a plain ( RO) field
    assert sorted(xh.xe_ok(root, 'vbd-param-get', 'uuid=' + vbd,
                           'param-name=device').strip()
                  for vbd in vbds_of(root, snap)) == ['xvda', 'xvdd']
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + snap,
                    'param-name=snapshot-info') == (
        'disk-snapshot-type: crash_consistent; '
        'power-state-at-snapshot: Running\n')
    disk = xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + snap, 'type=Disk',
                    'params=uuid', '--minimal').strip()
    assert xh.xe_ok(root, 'vbd-param-get', 'uuid=' + disk,
                    'param-name=other-config') == 'owner: true\n'
    cd = xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + snap, 'type=CD',
                  'params=uuid', '--minimal').strip()
    assert xh.xe_ok(root, 'vbd-param-get', 'uuid=' + cd,
                    'param-name=other-config') == '\n'
    xh.xe_ok(root, 'vbd-param-set', 'uuid=' + disk,
             'other-config:note=a; b: c')
    assert xh.xe_ok(root, 'vbd-param-get', 'uuid=' + disk,
                    'param-name=other-config', 'param-key=note') == \
        'a; b: c\n'
    r = xh.run_xe(root, 'vbd-param-set', 'uuid=' + disk, 'device=xvdz')
    assert (r.returncode, r.stderr) == (
        1, "Error: Field 'device' is read-only.\n")
    r = xh.run_xe(root, 'vbd-param-set', 'uuid=' + disk, 'bootable=maybe')
    assert r.returncode == 1 and 'must be a boolean' in r.stderr


def test_attached_vdi_sm_config_has_the_backend_keys(host):
    """While a VM runs, its VHD VDIs' sm-config holds what the SM backend
    adds on attach (``host_OpaqueRef:...: RW``, read-caching-*): keys
    with ':' in them, before the VDI's own keys."""
    root, f = host
    vdi = disk_vdis(root, f['two-disks'])[0]
    sm = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                  'param-name=sm-config')
    assert re.match(r'host_OpaqueRef:%s: RW; read-caching-enabled-on-%s: '
                    r'false; read-caching-reason-%s: LICENSE_RESTRICTION'
                    % (UUID, UUID, UUID), sm), sm
    halted = disk_vdis(root, f['quotes'])[0]
    assert 'host_OpaqueRef' not in xh.xe_ok(
        root, 'vdi-param-get', 'uuid=' + halted, 'param-name=sm-config')


# ---------------------------------------------------------------------------
# a pool: hosts, PBDs, the inventory (records.ml host_record, pbd_record;
# cli_operations.ml default params of host-list and pbd-list)
# ---------------------------------------------------------------------------

@pytest.fixture(scope='module')
def pool(tmp_path_factory):
    return xh.pool_host(tmp_path_factory.mktemp('pool'))


def _fields(out):
    return [line.split('(')[0].strip() for line in out.splitlines() if line]


def test_pool_hosts_pbds_and_inventory(pool):
    root, f = pool
    a, b = f['hosts']['xs-a'], f['hosts']['xs-b']
    out = xh.xe_ok(root, 'host-list')
    assert _fields(out) == ['uuid', 'name-label', 'name-description'] * 2
    assert xh.xe_ok(root, 'host-list', 'params=name-label',
                    '--minimal').strip() == 'xs-a,xs-b'
    out = xh.xe_ok(root, 'pbd-list', 'sr-uuid=' + f['sr']['remote'])
    assert _fields(out) == ['uuid', 'host-uuid', 'sr-uuid', 'device-config',
                            'currently-attached']
    assert 'host-uuid ( RO): %s\n' % b in out
    assert 'currently-attached ( RO): true\n' in out
    # a shared SR has a PBD on each host; unplugged ones say so
    out = xh.xe_ok(root, 'pbd-list', 'sr-uuid=' + f['sr']['gone'],
                   'params=host-uuid,currently-attached')
    assert out.count('currently-attached ( RO): false') == 2
    assert xh.xe_ok(root, 'pbd-list', 'host-uuid=' + a,
                    'currently-attached=true', 'params=sr-uuid',
                    '--minimal').strip().split(',') == [f['sr']['local'],
                                                        f['sr']['shared']]
    # the deprecated field is printed so with params=all
    assert re.search(r'\n *host \( RO\) \[DEPRECATED\]: %s\n' % b,
                     xh.xe_ok(root, 'pbd-list', 'host-uuid=' + b,
                              'sr-uuid=' + f['sr']['remote'], 'params=all'))
    assert xh.xe_ok(root, 'sr-param-get', 'uuid=' + f['sr']['remote'],
                    'param-name=host').strip() == 'xs-b'
    # each host has its control domain; a VM runs on its host
    assert len(xh.xe_ok(root, 'vm-list', 'is-control-domain=true',
                        '--minimal').split(',')) == 2
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + f['on-xs-b'],
                    'param-name=resident-on').strip() == b
    with open(st.inventory_path(root)) as inv:
        assert "INSTALLATION_UUID='%s'\n" % a in inv.read()
    # only what is plugged here is mounted here
    mounted = os.listdir(os.path.join(root, 'run', 'sr-mount'))
    assert sorted(mounted) == sorted([f['sr']['local'], f['sr']['shared']])
    r = xh.run_xe(root, 'host-param-get', 'uuid=bogus', 'param-name=uuid')
    assert r.returncode == 1
    assert r.stderr == ('The uuid you supplied was invalid.\n'
                        'type: host\nuuid: bogus\n')


# ---------------------------------------------------------------------------
# userdevices (xapi_vm_helpers.ml allowed_VBD_devices: 0 to 254)
# ---------------------------------------------------------------------------

def test_five_disks_and_a_cd_take_free_userdevices(pool):
    root, f = pool
    out = xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + f['five-disks'],
                   'params=userdevice,device,type')
    rows = re.findall(r'device \( RO\)\s*: (\S+)\n\s*userdevice \( RW\): '
                      r'(\d+)\n\s*type \( RW\): (\w+)', out)
    assert sorted(rows, key=lambda r: int(r[1])) == [
        ('xvda', '0', 'Disk'), ('xvdb', '1', 'Disk'), ('xvdc', '2', 'Disk'),
        ('xvdd', '3', 'Disk'), ('xvde', '4', 'Disk'), ('xvdf', '5', 'CD')]


def test_userdevice_allocation_and_its_limit():
    assert xh.userdevices(2, cd=True) == ([0, 1], 3)
    assert xh.userdevices(3, cd=True) == ([0, 1, 2], 3)
    assert xh.userdevices(4, cd=True) == ([0, 1, 2, 3], 4)
    assert xh.userdevices(17) == (list(range(17)), None)
    assert xh.userdevices(255) == (list(range(255)), None)
    with pytest.raises(ValueError, match='at most 255'):
        xh.userdevices(255, cd=True)
    assert [xh.device_name(n) for n in (0, 3, 15, 16, 25, 26, 27, 254)] == [
        'xvda', 'xvdd', 'xvdp', 'xvdq', 'xvdz', 'xvdaa', 'xvdab', 'xvdiu']


# ---------------------------------------------------------------------------
# paused and suspended VMs (xapi_vm_lifecycle.ml allowed_power_states)
# ---------------------------------------------------------------------------

def _set_power(root, vm, state):
    with st.locked(str(root)):
        s = st.load(str(root))
        s['vm'][vm]['power-state'] = state
        st.save(str(root), s)


def _power(root, vm):
    return xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=power-state').strip()


def _bad_power(r, vm, name, expected, actual):
    assert r.returncode == 1 and r.stdout == ''
    assert r.stderr.splitlines()[0].startswith(
        'You attempted an operation on a VM that was not in an appropriate '
        'power state')
    assert r.stderr.splitlines()[1:] == [
        'vm: %s (%s)' % (vm, name), 'expected: %s' % expected,
        'actual: %s' % actual]


def test_unpause_resume_and_their_power_states(host):
    root, f = host
    vm = f['twin-a']
    _set_power(root, vm, 'paused')
    # a paused VM keeps its domain
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=dom-id').strip() != '-1'
    _bad_power(xh.run_xe(root, 'vm-start', 'uuid=' + vm), vm, 'twin',
               'halted', 'paused')
    _bad_power(xh.run_xe(root, 'vm-resume', 'uuid=' + vm), vm, 'twin',
               'suspended', 'paused')
    xh.xe_ok(root, 'vm-unpause', 'uuid=' + vm)
    assert _power(root, vm) == 'running'
    _bad_power(xh.run_xe(root, 'vm-unpause', 'uuid=' + vm), vm, 'twin',
               'paused', 'running')
    _set_power(root, vm, 'suspended')
    _bad_power(xh.run_xe(root, 'vm-start', 'uuid=' + vm), vm, 'twin',
               'halted', 'suspended')
    _bad_power(xh.run_xe(root, 'vm-unpause', 'uuid=' + vm), vm, 'twin',
               'paused', 'suspended')
    _bad_power(xh.run_xe(root, 'vm-shutdown', 'uuid=' + vm), vm, 'twin',
               'running', 'suspended')
    xh.xe_ok(root, 'vm-resume', 'uuid=' + vm)
    assert _power(root, vm) == 'running'
    # a hard shutdown takes a paused or suspended VM too
    for state in ('paused', 'suspended'):
        _set_power(root, vm, state)
        xh.xe_ok(root, 'vm-shutdown', 'uuid=' + vm, '--force')
        assert _power(root, vm) == 'halted'


def _pending_clean_shutdown(root, vm, timeout=60):
    """``xe vm-shutdown`` of a guest that ignores it, started and left
    waiting: the process, once the VM shows the operation."""
    xh.guest_ignores_shutdown(root, vm, timeout)
    p = subprocess.Popen([str(xh.XE), 'vm-shutdown', 'uuid=' + vm],
                         env=xh.xe_env(root), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=current-operations').strip():
            return p
        assert p.poll() is None, p.communicate()
        time.sleep(0.1)
    raise AssertionError('no current operation')


def test_pending_clean_shutdown_refuses_another_and_hard_cancels_it(host):
    """While a clean shutdown waits for the guest, the VM has
    ``clean_shutdown`` in its current operations (records.ml prints the
    operation names); a second clean shutdown, or a snapshot, is
    refused at once with OTHER_OPERATION_IN_PROGRESS
    (xapi_vm_lifecycle.ml is_allowed_concurrently,
    report_concurrent_operations_error); a hard shutdown is allowed,
    cancels the pending one (message_forwarding.ml VM.hard_shutdown),
    whose ``xe`` exits 1 with TASK_CANCELLED."""
    root, f = host
    vm = f['twin-a']
    p = _pending_clean_shutdown(root, vm)
    assert xh.xe_ok(root, 'vm-list', 'uuid=' + vm,
                    'params=current-operations') == (
        'current-operations (SRO)    : clean_shutdown\n\n\n')
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=allowed-operations').strip() == (
        'hard_reboot; hard_shutdown')
    for args in (['vm-shutdown'], ['vm-snapshot', 'new-name-label=s']):
        r = xh.run_xe(root, args[0], 'uuid=' + vm, *args[1:])
        assert r.returncode == 1 and r.stdout == '', r
        lines = r.stderr.splitlines()
        assert lines[:4] == [
            'Another operation involving the object is currently in '
            'progress', 'class: VM', 'object: %s (twin)' % vm,
            'operation_type: clean_shutdown'], r.stderr
        assert re.match(r'operation_ref: %s \(Async\.VM\.clean_shutdown\)$'
                        % UUID, lines[4]), r.stderr
        assert len(lines) == 5, r.stderr
    # A host of xapi before 25.27 (XCP-ng 8.2, 8.3): two parameters, the
    # operation in the class.
    xh.set_field(root, 'host', None, 'xapi-version', '24.19.2')
    r = xh.run_xe(root, 'vm-shutdown', 'uuid=' + vm)
    assert r.returncode == 1 and r.stderr.splitlines() == [
        'Another operation involving the object is currently in progress',
        'class: VM.clean_shutdown', 'object: %s (twin)' % vm], r
    assert p.poll() is None
    xh.xe_ok(root, 'vm-shutdown', 'uuid=' + vm, '--force')
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and out == '', (out, err)
    assert re.match(r'The request was asynchronously canceled\.\n'
                    r'task: OpaqueRef:%s\n$' % UUID, err), err
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=power-state').strip() == 'halted'
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=current-operations') == '\n'


def test_pending_clean_shutdown_ends_when_the_guest_halts(host):
    """The guest halting ends the pending clean shutdown: exit 0, the
    current operation gone; one whose ``xe`` was killed is forgotten."""
    root, f = host
    vm = f['twin-a']
    p = _pending_clean_shutdown(root, vm)
    with st.locked(root):
        s = st.load(root)
        s['vm'][vm]['power-state'] = 'halted'
        st.save(root, s)
    assert p.communicate(timeout=60) == ('', '')
    assert p.returncode == 0
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=current-operations') == '\n'
    xh.xe_ok(root, 'vm-start', 'uuid=' + vm)
    p = _pending_clean_shutdown(root, vm)
    p.kill()
    p.communicate(timeout=60)
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=current-operations') == '\n'
    xh.xe_ok(root, 'vm-shutdown', 'uuid=' + vm, '--force')


# ---------------------------------------------------------------------------
# LVM SRs (SM's LVHD): the LVs' content, their activation, lvs, and the
# control domain's VBDs (lvhdutil.py, LVHDSR.py, lvutil.py; xapi_vbd.ml,
# xapi_vbd_helpers.ml)
# ---------------------------------------------------------------------------

def _store(root, sr):
    return os.path.join(root, 'lvm', 'VG_XenStorage-' + sr)


def _dev(root, sr):
    return os.path.join(root, 'dev', 'VG_XenStorage-' + sr)


def _active(root, sr):
    d = _dev(root, sr)
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def _check_lv(path):
    """An LV's content: a multiple of the 4 MiB extent, the VHD footer in
    its last 512 bytes and its copy at 0, zeros between the data's end
    and the footer."""
    size = os.path.getsize(path)
    assert size % (4 * ig.MiB) == 0, (path, size)
    eod = lvm.end_of_data(path)
    with open(path, 'rb') as f:
        head = f.read(512)
        f.seek(size - 512)
        foot = f.read(512)
        f.seek(eod)
        gap = f.read(size - 512 - eod)
    assert foot[:8] == b'conectix' and head == foot
    assert gap.count(0) == len(gap), path


def _lvm_vdi(root, f):
    return disk_vdis(root, f['lvm'])[0]


def _read_chain(dev_dir, leaf, offset, length):
    """An independent VHD reader (not FATtools, not the stand-in's
    writer): BAT and sector bitmaps, the parent found by unique id among
    the device nodes of ``dev_dir``, footers read from the end."""
    import struct
    import uuid as uuidlib

    def info(path):
        with open(path, 'rb') as f:
            f.seek(-512, 2)
            ft = f.read(512)
            f.seek(struct.unpack_from('>Q', ft, 16)[0])
            hd = f.read(1024)
            n = struct.unpack_from('>I', hd, 28)[0]
            f.seek(struct.unpack_from('>Q', hd, 16)[0])
            bat = struct.unpack('>%dI' % n, f.read(4 * n))
        return {'id': uuidlib.UUID(bytes=ft[68:84]),
                'type': struct.unpack_from('>I', ft, 60)[0],
                'parent': uuidlib.UUID(bytes=hd[40:56]),
                'block': struct.unpack_from('>I', hd, 32)[0], 'bat': bat}
    by_id = {}
    for name in os.listdir(dev_dir):
        if name.startswith('VHD-'):
            p = os.path.join(dev_dir, name)
            by_id[info(p)['id']] = p
    out = bytearray()
    for sector in range(offset // 512, (offset + length) // 512):
        path = leaf
        data = bytes(512)
        while path:
            i = info(path)
            b, s = divmod(sector * 512, i['block'])
            at = i['bat'][b] if b < len(i['bat']) else 0xFFFFFFFF
            if at != 0xFFFFFFFF:
                with open(path, 'rb') as f:
                    f.seek(at * 512 + (s // 512) // 8)
                    bits = f.read(1)[0]
                    if i['type'] == 3 or bits & (0x80 >> ((s // 512) % 8)):
                        bm = max(512, i['block'] // 512 // 8)
                        f.seek(at * 512 + bm + s)
                        data = f.read(512)
                        break
            path = by_id.get(i['parent']) if i['type'] == 4 else None
        out += data
    return bytes(out)


def test_lvm_lv_content_and_chain(host):
    root, f = host
    sr, vm = f['sr']['lvm'], f['lvm']
    vdi = _lvm_vdi(root, f)
    store = _store(root, sr)
    assert sorted(os.listdir(store)) == ['MGT', 'VHD-' + vdi]
    assert os.path.getsize(os.path.join(store, 'MGT')) == 4 * ig.MiB
    g = xh.GuestWriter(root, vdi, f['models'][vdi])
    assert g.path == os.path.join(store, 'VHD-' + vdi)
    _check_lv(g.path)
    g.write(1000, ig.pattern(3, 70000))
    _check_lv(g.path)
    # qemu-img reads a dynamic VHD whose footer is at the LV's end
    node_path = os.path.join(_dev(root, sr), 'VHD-' + vdi)
    r = subprocess.run(['qemu-img', 'info', '--output=json', node_path],
                       capture_output=True, text=True)
    if r.returncode == 0:
        assert '"virtual-size": %d' % (16 * ig.MiB) in r.stdout
    snap = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm,
                    'new-name-label=s').strip()
    node = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                    'param-name=sm-config', 'param-key=vhd-parent').strip()
    snap_vdi = disk_vdis(root, snap)[0]
    assert xh.xe_ok(root, 'vdi-param-get', 'uuid=' + snap_vdi,
                    'param-name=sm-config', 'param-key=vdi_type') == 'vhd\n'
    then = bytes(g.model.data)
    g.write(5 * ig.MiB + 3, ig.pattern(4, 3 * ig.MiB))
    g.zero(1024, 512)
    for u in (vdi, node, snap_vdi):
        _check_lv(os.path.join(store, 'VHD-' + u))
    n = srlib.meta(os.path.join(store, 'VHD-' + node))
    leaf = srlib.meta(g.path)
    assert n['hidden'] == 1 and leaf['parent_uuid'] == n['uuid']
    assert leaf['parent_name'] == 'VHD-' + node
    # the base is deflated to its data, the leaf inflated
    assert os.path.getsize(os.path.join(store, 'VHD-' + node)) == \
        4 * ig.MiB
    assert os.path.getsize(g.path) >= 16 * ig.MiB
    assert g.read_back() == bytes(g.model.data)
    dev = _dev(root, sr)
    assert _read_chain(dev, os.path.join(dev, 'VHD-' + vdi), 0,
                       16 * ig.MiB) == bytes(g.model.data)
    # the snapshot reads as the disk was, once its chain is active
    dom0 = xh.xe_ok(root, 'vm-list', 'is-control-domain=true',
                    '--minimal').strip()
    vbd = xh.xe_ok(root, 'vbd-create', 'vm-uuid=' + dom0,
                   'vdi-uuid=' + snap_vdi, 'device=autodetect',
                   'mode=RO').strip()
    xh.xe_ok(root, 'vbd-plug', 'uuid=' + vbd)
    assert _read_chain(dev, os.path.join(dev, 'VHD-' + snap_vdi), 0,
                       16 * ig.MiB) == then
    xh.xe_ok(root, 'vbd-unplug', 'uuid=' + vbd)
    xh.xe_ok(root, 'vbd-destroy', 'uuid=' + vbd)
    # growing and coalescing keep the invariants
    g.grow(20 * ig.MiB)
    g.write(19 * ig.MiB, ig.pattern(5, 4096))
    _check_lv(g.path)
    xh.xe_ok(root, 'snapshot-uninstall', 'uuid=' + snap, 'force=true')
    xh.coalesce(root, node)
    _check_lv(g.path)
    assert sorted(os.listdir(store)) == ['MGT', 'VHD-' + vdi]
    assert srlib.meta(g.path)['disk_type'] == 3
    assert g.read_back() == bytes(g.model.data)
    assert _read_chain(dev, os.path.join(dev, 'VHD-' + vdi), 0,
                       20 * ig.MiB) == bytes(g.model.data)
    assert _active(root, sr) == ['MGT', 'VHD-' + vdi]


def test_lvm_activation_follows_attachment(host):
    root, f = host
    sr, vm = f['sr']['lvm'], f['lvm']
    vdi = _lvm_vdi(root, f)
    assert _active(root, sr) == ['MGT', 'VHD-' + vdi]
    with open(os.path.join(_dev(root, sr), 'VHD-' + vdi), 'rb') as fh:
        assert fh.read(8) == b'conectix'
    xh.xe_ok(root, 'vm-shutdown', 'uuid=' + vm)
    assert _active(root, sr) == ['MGT']
    xh.xe_ok(root, 'vm-start', 'uuid=' + vm)
    assert _active(root, sr) == ['MGT', 'VHD-' + vdi]
    snap = xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm,
                    'new-name-label=s').strip()
    node = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                    'param-name=sm-config', 'param-key=vhd-parent').strip()
    snap_vdi = disk_vdis(root, snap)[0]
    assert _active(root, sr) == sorted(['MGT', 'VHD-' + vdi,
                                        'VHD-' + node])
    s = st.load(root)
    assert s['lv']['VG_XenStorage-%s/VHD-%s' % (sr, node)]['refcount'] == \
        [1, 0]
    assert s['lv']['VG_XenStorage-%s/VHD-%s' % (sr, vdi)]['refcount'] == \
        [0, 1]
    xh.xe_ok(root, 'vm-shutdown', 'uuid=' + vm, '--force')
    assert _active(root, sr) == ['MGT']
    dom0 = xh.xe_ok(root, 'vm-list', 'is-control-domain=true',
                    '--minimal').strip()
    vbd = xh.xe_ok(root, 'vbd-create', 'vm-uuid=' + dom0,
                   'vdi-uuid=' + snap_vdi, 'device=autodetect',
                   'mode=RO').strip()
    assert _active(root, sr) == ['MGT']
    xh.xe_ok(root, 'vbd-plug', 'uuid=' + vbd)
    assert _active(root, sr) == sorted(['MGT', 'VHD-' + snap_vdi,
                                        'VHD-' + node])
    assert xh.xe_ok(root, 'vbd-param-get', 'uuid=' + vbd,
                    'param-name=currently-attached') == 'true\n'
    # the VM's start refused while its VDI's base is... not: only the
    # snapshot is attached in dom0; the VM starts, sharing the base
    xh.xe_ok(root, 'vm-start', 'uuid=' + vm)
    assert _active(root, sr) == sorted(['MGT', 'VHD-' + snap_vdi,
                                        'VHD-' + node, 'VHD-' + vdi])
    xh.xe_ok(root, 'vm-shutdown', 'uuid=' + vm)
    assert _active(root, sr) == sorted(['MGT', 'VHD-' + snap_vdi,
                                        'VHD-' + node])
    xh.xe_ok(root, 'vbd-unplug', 'uuid=' + vbd)
    assert _active(root, sr) == ['MGT']
    assert st.load(root)['host']['lv-in-use-at-deactivation'] == []


def test_lv_held_open_stays_active_and_is_recorded(host):
    root, f = host
    sr, vm = f['sr']['lvm'], f['lvm']
    vdi = _lvm_vdi(root, f)
    node = os.path.join(_dev(root, sr), 'VHD-' + vdi)
    fh = open(node, 'rb')
    try:
        out = subprocess.run(
            [str(xh.LVS), '--noheadings', '-o', 'lv_name,lv_attr',
             '--separator', ',', 'VG_XenStorage-' + sr],
            env=xh.xe_env(root), capture_output=True, text=True).stdout
        assert '  VHD-%s,-wi-ao----\n' % vdi in out
        xh.xe_ok(root, 'vm-shutdown', 'uuid=' + vm)
        assert os.path.exists(node)
        events = st.load(root)['host']['lv-in-use-at-deactivation']
        assert events == [{'lv': 'VHD-' + vdi, 'vg': 'VG_XenStorage-' + sr,
                           'command': 'vm-shutdown',
                           'pids': [os.getpid()]}]
    finally:
        fh.close()
    xh.xe_ok(root, 'vm-param-set', 'uuid=' + vm, 'other-config:x=y')
    assert not os.path.exists(node)
    assert len(st.load(root)['host']['lv-in-use-at-deactivation']) == 1


def test_lvs_output_and_errors(host):
    root, f = host
    sr, vm = f['sr']['lvm'], f['lvm']
    vdi = _lvm_vdi(root, f)
    xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm, 'new-name-label=s')
    node = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                    'param-name=sm-config', 'param-key=vhd-parent').strip()
    snap_vdi = [u for u, v in st.load(root)['vdi'].items()
                if v.get('snapshot-of') == vdi][0]
    store = _store(root, sr)

    def size(u):
        return os.path.getsize(os.path.join(store, 'VHD-' + u))
    vg = 'VG_XenStorage-' + sr
    env = xh.xe_env(root)
    want = sorted([('MGT', 4 * ig.MiB, '-wi-a-----'),
                   ('VHD-' + vdi, size(vdi), '-wi-a-----'),
                   ('VHD-' + node, size(node), '-ri-a-----'),
                   ('VHD-' + snap_vdi, size(snap_vdi), '-wi-------')])
    for args in (['--noheadings', '--nosuffix', '--units', 'b',
                  '--separator', '|', '-o', 'lv_name,lv_size,lv_attr', vg],
                 ['-o', 'lv_name,lv_size,lv_attr', vg, '--units', 'b',
                  '--separator=|', '--nosuffix', '--noheadings']):
        r = subprocess.run([str(xh.LVS)] + args, env=env,
                           capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (0, '')
        assert r.stdout == ''.join('  %s|%d|%s\n' % row for row in want)
    r = subprocess.run([str(xh.LVS), '--nosuffix', '--units', 'b',
                        '--separator', ';', '-o', 'lv_name,lv_size,lv_attr',
                        vg], env=env, capture_output=True, text=True)
    assert r.stdout.splitlines()[0] == '  LV;LSize;Attr'
    assert r.stdout.splitlines()[1] == '  MGT;%d;-wi-a-----' % (4 * ig.MiB)
    r = subprocess.run([str(xh.LVS), '--noheadings', 'VG_XenStorage-nope'],
                       env=env, capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (5, '')
    assert r.stderr == ('  Volume group "VG_XenStorage-nope" not found\n'
                        '  Cannot process volume group '
                        'VG_XenStorage-nope\n')


def _error(r, code_doc, *lines):
    assert r.returncode == 1, r
    assert r.stderr.splitlines()[0].startswith(code_doc), r.stderr
    for line in lines:
        assert line in r.stderr.splitlines(), r.stderr


def test_vbd_create_plug_unplug_destroy_and_refusals(host):
    root, f = host
    vm = f['lvm']
    vdi = _lvm_vdi(root, f)
    dom0 = xh.xe_ok(root, 'vm-list', 'is-control-domain=true',
                    '--minimal').strip()
    inv = open(st.inventory_path(root)).read()
    assert "CONTROL_DOMAIN_UUID='%s'" % dom0 in inv
    # device taken, autodetect, the printed uuid
    r = xh.run_xe(root, 'vbd-create', 'vm-uuid=' + vm, 'device=0',
                  'vdi-uuid=' + vdi)
    _error(r, 'A device with the name given already exists',
           'device: 0')
    r = xh.run_xe(root, 'vbd-create', 'vm-uuid=' + vm, 'device=xvda',
                  'vdi-uuid=' + vdi)
    _error(r, 'A device with the name given already exists')
    r = xh.run_xe(root, 'vbd-create', 'vm-uuid=' + vm, 'device=bogus',
                  'vdi-uuid=' + vdi)
    _error(r, 'The device name is invalid', 'device: bogus')
    r = xh.run_xe(root, 'vbd-create', 'vm-uuid=' + dom0)
    assert r.stderr.startswith('Required parameter not found: device')
    vbd = xh.xe_ok(root, 'vbd-create', 'vm-uuid=' + dom0,
                   'device=autodetect', 'vdi-uuid=' + vdi,
                   'mode=RO').strip()
    assert re.fullmatch(UUID, vbd)
    assert xh.xe_ok(root, 'vbd-param-get', 'uuid=' + vbd,
                    'param-name=userdevice') == '0\n'
    assert xh.xe_ok(root, 'vbd-param-get', 'uuid=' + vbd,
                    'param-name=currently-attached') == 'false\n'
    xh.xe_ok(root, 'vbd-param-set', 'uuid=' + vbd,
             'other-config:any2kvm=migration-1')
    assert xh.xe_ok(root, 'vbd-list', 'other-config:any2kvm=migration-1',
                    'vm-uuid=' + dom0, '--minimal').strip() == vbd
    r = xh.run_xe(root, 'vbd-unplug', 'uuid=' + vbd)
    _error(r, 'The device is not currently attached', 'device: ' + vbd)
    # dom0 (a system domain) shares a disk a running VM has RW
    # (xapi_vbd_helpers.ml: system domains are exempt)
    xh.xe_ok(root, 'vbd-plug', 'uuid=' + vbd)
    assert xh.xe_ok(root, 'vbd-list', 'vm-uuid=' + dom0,
                    'currently-attached=true', '--minimal').strip() == vbd
    r = xh.run_xe(root, 'vbd-plug', 'uuid=' + vbd)
    _error(r, 'The device is already attached to a VM')
    r = xh.run_xe(root, 'vbd-destroy', 'uuid=' + vbd)
    _error(r, 'You attempted an operation that was not allowed.',
           "reason: VBD '%s' still attached to '%s'" % (vbd, dom0))
    # a VM may not share it RW with the VM that has it RW
    other = xh.xe_ok(root, 'vbd-create', 'vm-uuid=' + f['twin-a'],
                     'device=autodetect', 'vdi-uuid=' + vdi).strip()
    r = xh.run_xe(root, 'vbd-plug', 'uuid=' + other)
    _error(r, 'This operation cannot be performed because this VDI is in '
           'use', 'vdi: %s (%s)' % (vdi, 'on-lvm 0'))
    xh.xe_ok(root, 'vbd-destroy', 'uuid=' + other)
    # plugging into a halted VM
    halted = xh.xe_ok(root, 'vbd-create', 'vm-uuid=' + f['twin-b'],
                      'device=autodetect', 'vdi-uuid=' + vdi,
                      'mode=RO').strip()
    r = xh.run_xe(root, 'vbd-plug', 'uuid=' + halted)
    _error(r, 'You attempted an operation on a VM that was not in an '
           'appropriate power state', 'expected: running',
           'actual: halted')
    xh.xe_ok(root, 'vbd-destroy', 'uuid=' + halted)
    # the VM stopped and restarted while dom0 has its disk RO: the
    # storage layer refuses the RW attach (vdi_automaton.ml)
    xh.xe_ok(root, 'vm-shutdown', 'uuid=' + vm)
    r = xh.run_xe(root, 'vm-start', 'uuid=' + vm)
    assert r.returncode == 1 and 'Illegal_transition' in r.stderr
    assert xh.xe_ok(root, 'vm-param-get', 'uuid=' + vm,
                    'param-name=power-state') == 'halted\n'
    xh.xe_ok(root, 'vbd-unplug', 'uuid=' + vbd)
    xh.xe_ok(root, 'vbd-destroy', 'uuid=' + vbd)
    assert vbd not in xh.xe_ok(root, 'vbd-list', '--minimal')
    xh.xe_ok(root, 'vm-start', 'uuid=' + vm)
    # a base copy: not managed, read-only
    xh.xe_ok(root, 'vm-snapshot', 'uuid=' + vm, 'new-name-label=s')
    node = xh.xe_ok(root, 'vdi-param-get', 'uuid=' + vdi,
                    'param-name=sm-config', 'param-key=vhd-parent').strip()
    r = xh.run_xe(root, 'vbd-create', 'vm-uuid=' + dom0,
                  'device=autodetect', 'vdi-uuid=' + node)
    _error(r, 'The operation required write access but this VDI is '
           'read-only')
    ro = xh.xe_ok(root, 'vbd-create', 'vm-uuid=' + dom0,
                  'device=autodetect', 'vdi-uuid=' + node,
                  'mode=RO').strip()
    r = xh.run_xe(root, 'vbd-plug', 'uuid=' + ro)
    _error(r, 'This operation cannot be performed because the system does '
           'not manage this VDI')
    r = xh.run_xe(root, 'vbd-create', 'vm-uuid=' + dom0,
                  'device=autodetect', 'type=CD')
    _error(r, 'Read/write CDs are not supported')
