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

"""``any2kvm info`` and ``convert`` of ``xenserver://`` locations, end to
end: the real OpenSSH server on 127.0.0.1 (tests/lib/sshd.py), the ``xe``
stand-in on its PATH over an SR directory of FATtools-written VHDs
(tests/lib/xenserver), and the ``any2kvm`` command as a user runs it.
The bytes are checked against the stand-in's model of each disk.
"""

import hashlib
import json
import os
import subprocess
import time

import pytest

from tests.lib import cli
from tests.lib.xenserver import bed as xbed
from tests.lib.xenserver import host as xhost
from tests.lib.xenserver import state as st


@pytest.fixture(scope='module')
def xs_host(tmp_path_factory):
    root, facts, bin_dir, conf = xbed.prepare(tmp_path_factory.mktemp('xs'))
    return root, facts, bin_dir, conf


@pytest.fixture
def server(sshd_factory, xs_host):
    root, _facts, bin_dir, _conf = xs_host
    return xbed.start_sshd(sshd_factory, root, bin_dir)


location = xbed.location
ssh_args = xbed.ssh_args


def test_info_of_a_running_vm(server, xs_host):
    _root, facts, _bin, conf = xs_host
    res = cli.run_any2kvm('info', location(server, 'two-disks'),
                          '--format', 'json', *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    info = json.loads(res.stdout)
    assert info['container'] == 'xenserver-sr'
    assert info['vm']['name'] == 'two-disks'
    assert info['vm']['firmware'] == 'uefi'
    assert [d['virtual_size'] for d in info['disks']] == [8 << 20, 4 << 20]
    for disk in info['disks']:
        assert disk['format'] == 'vhd'
        assert disk['name'].endswith('.vhd')
        assert '/run/sr-mount/' in disk['name']
        # Bytes read over the wire next to each file's size: the
        # headers, tables and bitmaps only.
        for layer in disk['chain']:
            assert 0 < layer['wire_bytes'] < layer['file_size']
    wire = info['wire']
    assert sum(layer['wire_bytes'] for d in info['disks']
               for layer in d['chain']) <= wire['bytes_read']
    assert wire['file_bytes'] == sum(layer['file_size']
                                     for d in info['disks']
                                     for layer in d['chain'])
    res = cli.run_any2kvm('info', location(server, 'two-disks'),
                          *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    assert 'read over the wire' in res.stdout


def test_convert_reads_the_chain_over_sftp(server, xs_host, tmp_path):
    _root, facts, _bin, conf = xs_host
    out = tmp_path / 'out'
    out.mkdir()
    res = cli.run_any2kvm('convert', location(server, 'two-disks'), out,
                          *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    found = sorted(p.name for p in out.iterdir())
    assert found == ['two-disks-disk1.raw', 'two-disks.raw'], found
    assert 'read over the wire: ' in res.stdout, cli.describe(res)
    # The stand-in's model of each VDI, in device order: the disks of
    # 8 MiB (system) and 4 MiB (data) with the data the builder wrote.
    by_size = {m.size: m for m in facts['models'].values()
               if m.sha256() != hashlib.sha256(bytes(m.size)).hexdigest()}
    for name, size in (('two-disks.raw', 8 << 20),
                       ('two-disks-disk1.raw', 4 << 20)):
        data = (out / name).read_bytes()
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == by_size[size].sha256()


def test_onto_finish_of_a_running_vm_is_refused(server, xs_host, tmp_path):
    """``convert --onto T --finish`` of a running VM: its leaf changes
    while it is read; refused in one line, unless --read-in-place says
    so (then a warning).  Without --finish, the layers below the leaf."""
    _root, _facts, _bin, conf = xs_host
    target = tmp_path / 't.raw'
    loc = location(server, 'two-disks')
    res = cli.run_any2kvm('convert', loc, '--onto', target, '--disk', '0',
                          '--finish', *ssh_args(server, conf))
    cli.assert_refused(res, names=[loc],
                       problem='the VM runs: --finish applies its leaf')
    assert not target.exists()
    res = cli.run_any2kvm('convert', loc, '--onto', target, '--disk', '0',
                          *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    assert 'still to apply' in res.stdout, res.stdout
    res = cli.run_any2kvm('convert', loc, '--onto', target, '--disk', '0',
                          '--finish', '--read-in-place',
                          *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    assert 'its leaf is applied as it is read' in res.stderr, res.stderr
    assert 'holds the whole disk' in res.stdout, res.stdout


def test_a_vm_on_an_lvm_sr_is_read_from_its_logical_volumes(
        server, xs_host, tmp_path):
    """info and convert of a VM on an LVM SR: its chain read over SFTP
    from the LV device nodes (sizes from lvs), running (its LVs active)
    and halted (its VDI attached read-only to dom0 while read, then
    detached); the bytes are the model's."""
    root, facts, _bin, conf = xs_host
    vm = facts['lvm']
    res = cli.run_any2kvm('info', location(server, 'on-lvm'), '--format',
                          'json', *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    disk, = json.loads(res.stdout)['disks']
    assert '/dev/VG_XenStorage-%s/VHD-' % facts['sr']['lvm'] in \
        disk['name'], disk
    assert disk['virtual_size'] == 16 << 20
    model = [m for u, m in facts['models'].items()
             if u in disk['name']][0]
    for state in ('running', 'halted'):
        if state == 'halted':
            xhost.xe_ok(root, 'vm-shutdown', 'uuid=' + vm)
        out = tmp_path / ('%s.raw' % state)
        res = cli.run_any2kvm('convert', location(server, 'on-lvm'), out,
                              *ssh_args(server, conf))
        assert res.returncode == 0, cli.describe(res)
        data = out.read_bytes()
        assert hashlib.sha256(data).hexdigest() == model.sha256(), state
        s = st.load(str(root))
        dom0 = s['hosts'][s['host']['uuid']]['control-domain']
        assert not [v for v in s['vbd'].values() if v['vm'] == dom0]
    xhost.xe_ok(root, 'vm-start', 'uuid=' + vm)


def test_metacharacters_in_the_vm_name(server, xs_host):
    _root, _facts, _bin, conf = xs_host
    assert not os.path.exists('/tmp/pwned')
    res = cli.run_any2kvm('info', location(server, 'a; touch /tmp/pwned'),
                          '--format', 'json', *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    assert json.loads(res.stdout)['vm']['name'] == 'a; touch /tmp/pwned'
    assert not os.path.exists('/tmp/pwned')


def test_refusals_are_one_line(server, xs_host, tmp_path):
    _root, _facts, _bin, conf = xs_host
    for vm, words in (('twin', 'twin'), ('no-such-vm', 'no-such-vm')):
        res = cli.run_any2kvm('info', location(server, vm),
                              *ssh_args(server, conf))
        line = cli.one_error_line(res) if hasattr(cli, 'one_error_line') \
            else res.stderr.strip()
        assert res.returncode == 1, cli.describe(res)
        assert '\n' not in line and 'Traceback' not in res.stderr, line
        assert words in line, line
    # A host key nobody pinned: refused, with the fingerprint offered.
    empty = tmp_path / 'known_hosts'
    empty.write_text('')
    res = cli.run_any2kvm('info', location(server, 'two-disks'),
                          '--identity-file', server.client_key,
                          '--known-hosts', empty, '--config-file', conf)
    assert res.returncode == 1, cli.describe(res)
    assert 'SHA256:' in res.stderr and 'Traceback' not in res.stderr


def test_parent_outside_the_sr_is_never_opened(server, xs_host):
    """A VHD whose locators name ``../../../outside/<x>.vhd``: its parent
    is looked for among the SR directory's files only, so the chain is
    refused as missing a parent, in one line naming the file."""
    from any2kvm_os.chain import layer_chain
    from any2kvm_os.containers import remote
    from any2kvm_os import exception
    from any2kvm_os import limits as a2k_limits
    from any2kvm_os.ssh import connection
    from any2kvm_os.ssh import options as ssh_options
    root, facts, _bin, _conf = xs_host
    vdi = facts['escaping-vdi']
    sr_dir = os.path.join(str(root), 'run', 'sr-mount', facts['sr']['ext'])
    assert os.path.exists(os.path.join(sr_dir, vdi + '.vhd'))
    host = ssh_options.HostOptions(
        '127.0.0.1', user=server.user, port=server.port,
        identity_file=str(server.client_key),
        known_hosts=str(server.known_hosts))
    with connection.Connection(host, environ={}) as conn:
        container = remote.RemoteDirectoryContainer(
            conn, sr_dir, vdi + '.vhd', a2k_limits.Limits())
        with pytest.raises(exception.ChainError) as e:
            layer_chain.resolve(container, vdi + '.vhd',
                                a2k_limits.Limits())
        container.close()
    assert 'missing parent' in str(e.value)
    assert '\n' not in str(e.value)


def test_openstack_any2kvm_inspect_of_a_xenserver_vm(server, xs_host,
                                                     tmp_path):
    """``openstack any2kvm inspect xenserver://...`` in process, with
    ``--inspect``: the disks copied over SFTP, the probe a stand-in
    printing the recorded guests (no appliance)."""
    from tests.lib import osc_inprocess
    _root, _facts, _bin, conf = xs_host
    recorded = os.path.join(os.path.dirname(__file__), '..', 'unit', 'data',
                            'probe-linux-guests.json')
    fake = tmp_path / 'fakepython'
    fake.write_text('#!/bin/sh\ncat %s\n' % recorded)
    fake.chmod(0o755)
    conf2 = tmp_path / 'a.conf'
    with open(str(conf)) as f:
        conf2.write_text(f.read() + 'guestfs_python = %s\n' % fake)
    shown = osc_inprocess.inspect(
        location(server, 'two-disks'), '--inspect', *ssh_args(server, conf2))
    assert shown['container'] == 'xenserver-sr'
    assert shown['vm']['name'] == 'two-disks'
    assert [d['virtual_size'] for d in shown['disks']] == [8 << 20, 4 << 20]
    assert shown['guest']['hostname'] == 'guest-virtio'
    assert shown['properties']['hw_disk_bus'] == 'scsi'
    assert shown['properties']['hw_vif_model'] == 'virtio'


def test_disks_on_srs_not_attached_here_are_refused(sshd_factory, tmp_path):
    """A pool reached through xs-a: a VM on xs-a's own SR and a shared one
    is read; one on xs-b's local SR, or on an SR whose PBDs are
    unplugged, is refused in one line naming the SR and where it is
    attached (the stand-in's inventory names xs-a)."""
    from tests.lib.xenserver import host as xhost
    root, facts, bin_dir, conf = xbed.prepare(tmp_path / 'pool',
                                              build=xhost.pool_host)
    server = xbed.start_sshd(sshd_factory, root, bin_dir)
    res = cli.run_any2kvm('info', location(server, 'here'), '--format',
                          'json', *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    assert [d['virtual_size'] for d in json.loads(res.stdout)['disks']] == [
        4 << 20, 2 << 20]
    for vm, words in (
            ('on-xs-b', "which is not attached on this host 'xs-a' (%s); it "
             "is attached on 'xs-b' (%s)" % (facts['hosts']['xs-a'],
                                             facts['hosts']['xs-b'])),
            ('unplugged', "SR 'NFS old' (%s), which is not attached on this "
             "host 'xs-a'" % facts['sr']['gone'])):
        res = cli.run_any2kvm('info', location(server, vm),
                              *ssh_args(server, conf))
        assert res.returncode == 1, cli.describe(res)
        line = res.stderr.strip()
        assert '\n' not in line and 'Traceback' not in res.stderr, line
        assert words in line, line


# -- a whole read of a running VM: a snapshot ---------------------------------

def _disk_vdis(root, vm):
    s = st.load(str(root))
    return [v['vdi'] for v in sorted(
        (b for b in s['vbd'].values()
         if b['vm'] == vm and b.get('type') == 'Disk'),
        key=lambda b: int(b['userdevice']))]


def _snapshots_of(root, vm):
    return sorted(u for u, v in st.load(str(root))['vm'].items()
                  if v.get('snapshot-of') == vm)


def _dom0_vbds(root):
    s = st.load(str(root))
    dom0 = s['hosts'][s['host']['uuid']]['control-domain']
    return [u for u, v in s['vbd'].items() if v['vm'] == dom0]


def _convert_held(server, conf, vm, output, held):
    """``any2kvm convert`` of ``vm`` to ``output`` started, once the host's
    (wrapped) ``xe`` holds its answer to the snapshot (``held`` exists)."""
    proc = subprocess.Popen(
        cli.cli_command() + ['convert', location(server, vm), str(output)] +
        [str(a) for a in ssh_args(server, conf)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _i in range(1200):
        if held.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    if not held.exists():
        proc.kill()
        raise AssertionError(proc.communicate())
    return proc


def test_convert_of_a_running_vm_reads_a_snapshot(sshd_factory, tmp_path):
    """``convert`` of a running VM (a file SR, an LVM SR) reads the disks
    as a snapshot it takes holds them: what the guest writes after the
    snapshot, while the disks are read, is not in the copy, which is
    the disks at one moment; the snapshot and its disks are removed after
    the read (on an LVM SR its VDI was attached to dom0 to be read, then
    detached).  One a killed read of this conversion host left is removed
    first; another host's is not.  ``--read-in-place`` takes none."""
    import copy
    import signal
    import socket
    from tests.lib import imagegen as ig
    root, facts, bin_dir, conf = xbed.prepare(tmp_path / 'bed')
    server = xbed.start_sshd(sshd_factory, root, bin_dir)
    held, go = tmp_path / 'snapshotted', tmp_path / 'go'
    # After the snapshot, xe answers once the test has written.
    xbed.wrap_command(
        bin_dir, 'xe',
        'if [ "$1" = vm-snapshot ] && [ ! -e "%(go)s" ]; then\n'
        '  "$REAL" "$@"; rc=$?; touch "%(held)s"; n=0\n'
        '  while [ ! -e "%(go)s" ] && [ $n -lt 600 ]; do\n'
        '    sleep 0.1; n=$((n+1)); done\n'
        '  exit $rc\n'
        'fi\n'
        'exec "$REAL" "$@"\n' % {'go': go, 'held': held})
    dead = '%s:4194303:::' % socket.gethostname()   # a pid that is gone
    s = st.load(str(root))
    dom0 = s['hosts'][s['host']['uuid']]['control-domain']
    for name, vm in (('two-disks', facts['two-disks']),
                     ('on-lvm', facts['lvm'])):
        # Left by a killed read of this host, and a live one of another
        # conversion host.
        for tag in (dead, 'elsewhere:1:b:2:m'):
            go.write_text('')
            snap = xhost.xe_ok(root, 'vm-snapshot', 'uuid=' + vm,
                               'new-name-label=any2kvm read (%s)'
                               % tag).strip()
            go.unlink()
            if tag == dead and name == 'on-lvm':
                # killed while it read: its disk still attached to dom0
                left_vdi = _disk_vdis(root, snap)[0]
                vbd = xhost.xe_ok(root, 'vbd-create', 'vm-uuid=' + dom0,
                                  'vdi-uuid=' + left_vdi,
                                  'device=autodetect', 'mode=RO').strip()
                xhost.xe_ok(root, 'vbd-param-set', 'uuid=' + vbd,
                            'other-config:any2kvm-reader=' + dead)
                xhost.xe_ok(root, 'vbd-plug', 'uuid=' + vbd)
        other = [u for u in _snapshots_of(root, vm)
                 if 'elsewhere' in st.load(str(root))['vm'][u]['name-label']]
        vdis = _disk_vdis(root, vm)
        then = [facts['models'][v].sha256() for v in vdis]
        out = tmp_path / name
        out.mkdir()
        proc = _convert_held(server, conf, name,
                             out if len(vdis) > 1 else out / 'disk.raw',
                             held)
        try:
            # The guest writes while the disks are read.
            for v in vdis:
                xhost.GuestWriter(root, v, copy.deepcopy(
                    facts['models'][v])).write(0, ig.pattern(99, 8192))
            go.write_text('')
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, (stdout, stderr)
        assert 'was stopped' in stderr and 'read from snapshot' in stderr, \
            stderr
        files = sorted(out.iterdir())
        assert len(files) == len(vdis), files
        for path, digest in zip(sorted(files, key=lambda p: (
                len(p.name), p.name)), then):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        assert _snapshots_of(root, vm) == other
        assert not _dom0_vbds(root)
        # no disk of a removed snapshot is left behind
        s = st.load(str(root))
        assert not [u for u, v in s['vdi'].items() if v.get('snapshot-of')
                    in vdis and u not in _disk_vdis(root, other[0])], s
        held.unlink()
        go.unlink()
        xhost.xe_ok(root, 'snapshot-uninstall', 'uuid=' + other[0],
                    'force=true')
    # Stopped (SIGTERM) while the host snapshots: the snapshot it made is
    # found by its label and removed; nothing is written.
    vm = facts['two-disks']
    out = tmp_path / 'stopped'
    out.mkdir()
    proc = _convert_held(server, conf, 'two-disks', out, held)
    try:
        assert len(_snapshots_of(root, vm)) == 1
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        go.write_text('')
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, (stdout, stderr)
    assert stderr.strip().splitlines()[-1] == 'any2kvm: terminated', stderr
    assert _snapshots_of(root, vm) == []
    assert list(out.iterdir()) == []
    held.unlink()
    go.unlink()
    # In place: no snapshot, a warning that says so.
    res = cli.run_any2kvm('convert', location(server, 'on-lvm'),
                          tmp_path / 'in-place.raw', '--read-in-place',
                          *ssh_args(server, conf))
    assert res.returncode == 0, cli.describe(res)
    assert not held.exists()
    assert '--read-in-place' in res.stderr, res.stderr
    assert _snapshots_of(root, facts['lvm']) == []
