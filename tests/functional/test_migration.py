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

"""``any2kvm migration`` end to end: the real OpenSSH server on 127.0.0.1,
the ``xe`` stand-in, a guest writing between syncs, and the commands as a
user runs them; the state in the SQL store, on an SQLite file."""

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from any2kvm_os.migration.state import models
from any2kvm_os.migration.state import sql
from tests.lib import blockdev
from tests.lib import cli
from tests.lib import delayproxy
from tests.lib import imagegen as ig
from tests.lib import sshd as sshd_lib
from tests.lib.xenserver import bed as xbed
from tests.lib.xenserver import host as xhost
from tests.lib.xenserver import sr as srlib
from tests.lib.xenserver import state as st

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


@pytest.fixture
def bed(sshd_factory, tmp_path):
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    out = tmp_path / 'out'
    out.mkdir()
    common = b.ssh_args + ['--state-db',
                           'sqlite:///%s' % (tmp_path / 'state.db')]
    return b.root, b.facts, out, b.location(), common


def _cmd(args):
    return cli.cli_command() + ['migration'] + [str(a) for a in args]


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = str(REPO)
    env['LC_ALL'] = 'C.UTF-8'
    return env


def mig(*args, common=(), ok=True):
    res = subprocess.run(_cmd(list(args) + list(common)),
                         capture_output=True, text=True, env=_env(),
                         cwd=str(REPO), timeout=300)
    if ok:
        assert res.returncode == 0, (res.stdout, res.stderr)
    return res


def show(common, name='web'):
    return json.loads(mig('show', name, '--format', 'json',
                          common=common[-2:]).stdout)


def writers(root, facts, m):
    return [xhost.GuestWriter(root, d['source_id'],
                              facts['models'][d['source_id']])
            for d in m['disks']]


def check(m, facts):
    for d in m['disks']:
        model = facts['models'][d['source_id']]
        data = Path(d['target_ref']).read_bytes()
        assert len(data) == model.size
        assert hashlib.sha256(data).hexdigest() == model.sha256()


def test_create_sync_sync_cutover(bed):
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--target', 'file', '--output-dir', out,
        common=common)
    m = show(common)
    w0, w1 = writers(root, facts, m)
    r = mig('sync', 'web', common=common)
    assert '2 layer(s) applied' in r.stdout, r.stdout
    print(r.stdout)
    # Only what the layer files hold crossed the wire (their blocks and
    # metadata, with the command output), not the disks' virtual sizes.
    wire, files = (int(x) for x in re.search(
        r'(\d+) bytes read over the wire for (\d+) bytes of layer files',
        r.stdout).groups())
    assert files <= wire <= 1.02 * files + 64 * 1024, r.stdout
    assert files < sum(d['virtual_size'] for d in m['disks'])
    w0.write(5 * MiB, ig.pattern(21, 2 * MiB))
    w0.zero(0, 4096)
    w1.write(MiB + 300, b'a partial sector')
    print(mig('sync', 'web', common=common).stdout)
    w0.write(7 * MiB, ig.pattern(22, 4096))
    r = mig('cutover', 'web', '--timeout', '60', common=common)
    print(r.stdout)
    assert 'downtime' in r.stdout, r.stdout
    # The cutover reads the last delta (4 KiB of data, with its block's
    # bitmap and the leaf's metadata), whatever the disks' sizes.
    wire = int(re.search(r'(\d+) bytes read over the wire',
                         r.stdout).group(1))
    assert wire < 128 * 1024, r.stdout
    m = show(common)
    assert m['status'] == 'done'
    assert [s['ok'] for s in m['syncs']] == [True, True]
    assert all(s['bytes_read'] > 0 for s in m['syncs'])
    check(m, facts)
    vm = st.load(str(root))['vm'][facts['two-disks']]
    assert vm['power-state'] == 'halted'
    rows = json.loads(mig('list', '--format', 'json',
                          common=common[-2:]).stdout)
    assert [r['name'] for r in rows] == ['web']


def _on_a_terminal(args, timeout=300):
    """Run the CLI with stdout and stderr on a pseudo-terminal; returns
    (exit status, everything it printed)."""
    status, text, _ = cli.on_a_terminal(_cmd(args), _env(), REPO, timeout)
    return status, text


def test_sync_on_a_terminal_shows_a_bar_with_rate_and_eta(bed):
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--target', 'file', '--output-dir', out,
        common=common)
    status, text = _on_a_terminal(['sync', 'web', '--no-inspect'] + common)
    assert status == 0, text
    # The bar is redrawn in place (carriage returns), says the percent,
    # the rate and the ETA, and every layer ends with a "done" line.
    assert '\r' in text, text
    bars = [b for b in re.split(r'[\r\n]', text) if '% ' in b]
    assert bars, text
    # The rate is the data's (read and written), not the address
    # space's: the layers are mostly holes.
    assert all(re.search(r' of data, [\d.]+ \w+/s, ETA \d+s', b)
               for b in bars), bars
    assert re.search(r'done: [\d.]+ \w+ \([\d.]+ \w+ of data, '
                     r'[\d.]+ \w+/s\) in [\d.]+s', text), text
    assert '2 layer(s) applied' in text, text
    # Without a terminal the same step prints plain lines only.
    r = mig('sync', 'web', '--no-inspect', common=common)
    assert '\r' not in r.stdout + r.stderr


def test_second_sync_at_once_is_busy(bed):
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--output-dir', out, common=common)
    state = common[-1]
    # Hold the migration from another process, as a running sync would.
    holder = subprocess.Popen(
        [sys.executable, '-c',
         'import sys, time\n'
         'from any2kvm_os.migration.state import sql\n'
         's = sql.SqlStore(sys.argv[1])\n'
         'with s.hold("web", "sync"):\n'
         '    print("held", flush=True)\n'
         '    time.sleep(60)\n', state],
        stdout=subprocess.PIPE, text=True, env=_env(), cwd=str(REPO))
    try:
        assert holder.stdout.readline().strip() == 'held'
        res = mig('sync', 'web', common=common, ok=False)
        assert res.returncode == 1
        line = res.stderr.strip()
        assert '\n' not in line and 'busy' in line, res.stderr
        assert 'pid %d' % holder.pid in line
    finally:
        holder.kill()
        holder.wait()
    mig('sync', 'web', common=common)


def _all_at_once(argvs):
    """Run the commands side by side; [(exit status, stdout, stderr)]."""
    procs = [subprocess.Popen(_cmd(a), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(),
                              cwd=str(REPO)) for a in argvs]
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            o, e = p.communicate()
        out.append((p.returncode, o, e))
    return out


def test_several_migrations_at_once_share_the_host_and_the_state(
        sshd_factory, tmp_path):
    """What an operator moving many VMs does: one conversion host, one
    SQLite state file, one XenServer host whose sshd has OpenSSH's
    default MaxStartups (10:30:100), and every command of four
    migrations run side by side: all succeed, and each target holds its
    VM's disk."""
    names = ['vm%d' % i for i in range(4)]

    def build(root):
        b = xhost.HostBuilder(root)
        local = b.add_sr('Local storage', 'ext')
        facts = {n: b.add_vm(n, disks=((24 * MiB, None),), sr=local,
                             disk_writes={0: [(i * MiB, ig.pattern(
                                 40 + i, (3 + i) * MiB))]})
                 for i, n in enumerate(names)}
        facts['models'] = b.models
        b.save()
        return b.root, facts
    root, facts, bin_dir, conf = xbed.prepare(tmp_path / 'bed', build)
    server = sshd_factory(env={'PATH': os.pathsep.join([
        str(bin_dir), os.path.dirname(sys.executable), '/usr/bin', '/bin']),
        xhost.ENV: str(root)}, max_startups='10:30:100')
    common = xbed.ssh_args(server, conf) + [
        '--state-db', 'sqlite:///%s' % (tmp_path / 'state.db')]
    outs = []
    for n in names:
        outs.append(tmp_path / ('out-' + n))
        outs[-1].mkdir()

    def each(action, *args):
        res = _all_at_once([[action, 'm-' + n] + [
            a.format(loc=xbed.location(server, n), out=o) for a in args] +
            [str(a) for a in common] for n, o in zip(names, outs)])
        for status, o, e in res:
            assert status == 0, (o, e)
            assert 'locked' not in e and 'Traceback' not in e, e
        return res

    each('create', '{loc}', '--target', 'file', '--output-dir', '{out}')
    each('sync', '--no-progress', '--no-inspect')
    ms = [show(common, 'm-' + n) for n in names]
    for i, m in enumerate(ms):
        (w,) = writers(root, facts, m)
        w.write((10 + i) * MiB, ig.pattern(50 + i, MiB))
        w.zero(i * MiB, 4096)
        w.write(20 * MiB + i, b'the last write of ' + names[i].encode())
    each('cutover', '--timeout', '120', '--no-progress')
    rows = json.loads(mig('list', '--format', 'json',
                          common=common[-2:]).stdout)
    assert sorted((r['name'], r['status']) for r in rows) == [
        ('m-' + n, 'done') for n in names]
    for n in names:
        m = show(common, 'm-' + n)
        assert [s['ok'] for s in m['syncs']] == [True]
        check(m, facts)


def test_sync_killed_then_run_again(bed):
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--output-dir', out, common=common)
    m = show(common)
    w0, _w1 = writers(root, facts, m)
    w0.write(MiB, ig.pattern(31, 6 * MiB))
    proc = subprocess.Popen(_cmd(['sync', 'web'] + common),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env(), cwd=str(REPO))
    # Kill it once a layer is recorded as partial (mid-way).
    deadline = time.monotonic() + 120
    store = sql.SqlStore(common[-1])
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        data = store.get('web')
        if any(a['partial'] for d in data['disks'] for a in d['applied']):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    store.close()
    m = show(common)
    assert killed, 'the sync ended before it could be killed'
    assert m['status'] == 'syncing'
    # Its TaskFlow record says where it stopped.
    assert m['last_run']['interrupted'], m['last_run']
    assert m['last_run']['stopped_in'].startswith('apply-disk-')
    text = mig('show', 'web', common=common[-2:]).stdout
    assert 'interrupted in apply-disk-' in text, text
    mig('sync', 'web', common=common)
    mig('cutover', 'web', common=common)
    m = show(common)
    # Unrecorded snapshots left by the kill are removed too.
    assert not [v for v in st.load(str(root))['vm'].values()
                if v.get('snapshot-of') == facts['two-disks']]
    check(m, facts)


def test_abort_keeps_the_vm(bed):
    root, facts, out, loc, common = bed
    # The VM's disks attached as "xe vbd-create" does, without "owner" in
    # the VBDs' other-config: snapshot-uninstall (xapi's
    # vm_uninstall_common) destroys only VDIs whose VBD has it, and xapi
    # gives it to a snapshot's disk VBDs (CA-58405): none may stay.
    with st.locked(str(root)):
        state = st.load(str(root))
        for vbd in state['vbd'].values():
            if vbd['vm'] == facts['two-disks']:
                vbd['other-config'] = {}
        st.save(str(root), state)
    mig('create', 'web', loc, '--output-dir', out, common=common)
    mig('sync', 'web', common=common)
    r = mig('abort', 'web', '--delete-targets', common=common)
    assert '1 snapshot(s) removed' in r.stdout
    assert os.listdir(out) == []
    state = st.load(str(root))
    vm = state['vm'][facts['two-disks']]
    assert vm['power-state'] == 'running'
    assert [u for u, v in state['vdi'].items()
            if v.get('is-a-snapshot')] == []


def openstack(*args):
    """``openstack any2kvm migration ...`` with no cloud anywhere (a file
    migration needs none)."""
    env = {k: v for k, v in _env().items() if not k.startswith('OS_')}
    env['HOME'] = '/nonexistent'
    cmd = [os.path.join(os.path.dirname(sys.executable), 'openstack'),
           'any2kvm', 'migration'] + [str(a) for a in args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         cwd=str(REPO), timeout=300)
    assert res.returncode == 0, (res.stdout, res.stderr)
    return res


def test_openstack_commands_cutover_rollback_and_again(bed):
    """Both command lines on one migration: create and cut over with
    ``openstack any2kvm``, roll back (the VM runs again), sync (the old
    leaf copied as an ordinary layer, no rewrite), cut over again; the
    history of both cutovers in ``show``; progress lines on stderr."""
    root, facts, out, loc, common = bed
    vm = facts['two-disks']
    openstack('create', 'web', loc, '--target', 'file', '--output-dir', out,
              *common)
    r = mig('sync', 'web', common=common)
    # Not a terminal: a plain line per 10% of each layer, then done.
    assert 'disk 0 ' in r.stderr and 'done:' in r.stderr, r.stderr
    m = show(common)
    w0, w1 = writers(root, facts, m)
    w0.write(2 * MiB, ig.pattern(31, 4096))
    r = openstack('cutover', 'web', '--timeout', '60', '-f', 'json',
                  *common)
    first = json.loads(r.stdout)
    assert first['downtime'] >= 0 and first['layers_applied'] == 2
    assert first['bytes_read'] > 0 and first['files_size'] > 0
    assert st.load(str(root))['vm'][vm]['power-state'] == 'halted'
    r = openstack('rollback', 'web', '-f', 'json', *common)
    assert json.loads(r.stdout)['layers_forgotten'] == 2
    assert st.load(str(root))['vm'][vm]['power-state'] == 'running'
    w0.write(6 * MiB, ig.pattern(32, 8192))
    w1.zero(MiB, 4096)
    r = mig('sync', 'web', '--no-progress', common=common)
    assert r.stderr == ''
    assert 'rewritten' not in r.stdout, r.stdout
    assert 'bytes read over the wire for' in r.stdout, r.stdout
    w1.write(3 * MiB, ig.pattern(33, 512))
    r = mig('cutover', 'web', '--format', 'json', '--no-progress',
            common=common)
    assert json.loads(r.stdout)['rewrites'] == []
    # The steps in the order they ran, as the docs say.
    steps = list(json.loads(r.stdout)['steps'])
    assert steps[:2] == ['connect', 'discover'], steps
    assert steps.index('shutdown') < steps.index('apply-disk-0') < \
        steps.index('remove-snapshots'), steps
    m = show(common)
    assert m['status'] == 'done'
    assert [c['rolled_back_at'] is not None for c in m['cutovers']] == [
        False, True][::-1]
    check(m, facts)
    text = mig('show', 'web', common=common[-2:]).stdout
    assert text.count('cutover:  downtime') == 2, text
    assert 'rolled back' in text
    r = openstack('show', 'web', '-f', 'json', *common[-2:])
    assert len(json.loads(r.stdout)['cutovers']) == 2


def assert_both_disks_rewritten(stdout):
    """The sync said that each of the two disks was rewritten from the
    base, and at what cost in bytes."""
    costs = re.findall(r'disk (\d): the chain changed from layer \S+ on: '
                       r'rewritten from the base \((\d+) bytes\)',
                       stdout)
    assert sorted(d for d, _n in costs) == ['0', '1'], stdout
    assert all(int(n) > 0 for _d, n in costs)


def test_gc_after_rollback_is_detected_and_rewritten(bed):
    """The cutover removes the migration's snapshots, so after a rollback
    a real host's garbage collector may coalesce the chain while the VM
    runs again.  The stand-in's GC is explicit (``xhost.coalesce``): the
    next sync sees the layers it applied changed, rewrites each disk from
    the stable chain, says how many bytes that cost, and the cutover
    after it leaves the targets equal to the guest's disks."""
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--output-dir', out, common=common)
    m = show(common)
    w0, w1 = writers(root, facts, m)
    mig('sync', 'web', common=common)
    w0.write(3 * MiB, ig.pattern(41, 8192))
    mig('cutover', 'web', '--timeout', '60', common=common)
    mig('rollback', 'web', common=common)
    w1.write(2 * MiB, ig.pattern(42, 4096))
    # Behind the tool's back: each disk's first hidden node has one child
    # left (its snapshot was removed at cutover); the GC merges it.
    for w in (w0, w1):
        node = srlib.chain(w.path)[1][:-len('.vhd')]
        xhost.coalesce(root, node)
    w0.zero(0, 4096)
    r = mig('sync', 'web', '--no-progress', common=common)
    print(r.stdout)
    assert_both_disks_rewritten(r.stdout)
    w1.write(3 * MiB + 512, ig.pattern(43, 512))
    r = mig('cutover', 'web', '--format', 'json', '--no-progress',
            common=common)
    assert json.loads(r.stdout)['rewrites'] == []
    m = show(common)
    assert m['status'] == 'done'
    assert m['last_run']['operation'] == 'cutover'
    assert m['last_run']['state'] == 'SUCCESS'
    check(m, facts)


def test_snapshot_deleted_between_syncs_is_detected_and_rewritten(bed):
    """Someone deletes the migration's newest snapshot between two syncs
    (``xe snapshot-uninstall`` on the host) and SM's GC coalesces its
    node into the leaf: the next sync over SSH sees that a layer it
    applied is gone, rewrites each disk from the stable chain and says
    what that cost; the cutover leaves the targets equal to the disks."""
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--output-dir', out, common=common)
    m = show(common)
    w0, w1 = writers(root, facts, m)
    mig('sync', 'web', '--no-progress', common=common)
    w0.write(6 * MiB, ig.pattern(71, 8192))
    # both disks written: each snapshot makes a base to coalesce (SM makes
    # none over a leaf that holds no block)
    w1.write(512, ig.pattern(74, 512))
    mig('sync', 'web', '--no-progress', common=common)
    last = show(common)['snapshots'][-1]['snapshot_id']
    xhost.xe_ok(root, 'snapshot-uninstall', 'uuid=%s' % last, 'force=true')
    for w in (w0, w1):
        xhost.coalesce(root, srlib.chain(w.path)[1][:-len('.vhd')])
    w0.write(MiB, ig.pattern(72, 4096))
    w1.zero(0, 4096)
    r = mig('sync', 'web', '--no-progress', common=common)
    assert_both_disks_rewritten(r.stdout)
    w1.write(2 * MiB + 512, ig.pattern(73, 512))
    mig('cutover', 'web', '--timeout', '60', '--no-progress', common=common)
    m = show(common)
    assert m['status'] == 'done'
    check(m, facts)


def _snapshots_on_host(root, vm):
    return dict((u, v) for u, v in st.load(str(root))['vm'].items()
                if v.get('snapshot-of') == vm)


def _default_hangup():
    """SIGHUP as a terminal's session leaves it to a command (the tests
    may run under nohup, which ignores it: the command then keeps it
    ignored, as it must)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def _sync_killed_after_snapshot(root, facts, common, sig=signal.SIGKILL,
                                ended=None):
    """Run ``sync`` with an ``xe`` that takes the snapshot and then never
    answers (the reply lost with the connection), and kill the CLI with
    ``sig`` (SIGKILL) once the snapshot is on the host: taken, never
    recorded.  ``ended``: a list that gets (the CLI's exit status, its
    stderr, the seconds it took to end after ``sig``, the hang still on)."""
    vm = facts['two-disks']
    before = set(_snapshots_on_host(root, vm))
    bin_dir = Path(str(root)).parent / 'bin'
    hang = bin_dir / 'hang-after-snapshot'
    xbed.wrap_command(
        bin_dir, 'xe',
        'if [ "$1" = vm-snapshot ] && [ -e "%(hang)s" ]; then\n'
        '  "$REAL" "$@"; rc=$?; n=0\n'
        '  while [ -e "%(hang)s" ] && [ $n -lt 1200 ]; do\n'
        '    sleep 0.1; n=$((n+1)); done\n'
        '  exit $rc\n'
        'fi\n'
        'exec "$REAL" "$@"\n' % {'hang': hang})
    hang.write_text('')
    proc = subprocess.Popen(_cmd(['sync', 'web'] + common),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=str(REPO), preexec_fn=_default_hangup)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if set(_snapshots_on_host(root, vm)) - before:
                break
            time.sleep(0.05)
        assert proc.poll() is None, 'the sync ended before the kill'
        assert set(_snapshots_on_host(root, vm)) - before, 'no snapshot'
    finally:
        os.kill(proc.pid, sig)
        sent = time.monotonic()
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate(timeout=60)
        if ended is not None:
            ended.append((proc.returncode, err, time.monotonic() - sent,
                          hang.exists()))
        hang.unlink()
    return set(_snapshots_on_host(root, vm)) - before


def _state(common, name='web'):
    """The migration as recorded (read straight from the database: a
    ``show`` subprocess costs seconds on a loaded machine)."""
    store = sql.SqlStore(common[-1])
    try:
        return store.get(name)
    finally:
        store.close()


@pytest.mark.parametrize('sig,rc,word', [
    (signal.SIGINT, 130, 'interrupted'),
    (signal.SIGTERM, 143, 'terminated'),
    (signal.SIGHUP, 129, 'terminated (hangup)')])
def test_interrupted_while_the_host_snapshots(bed, sig, rc, word):
    """Ctrl-C (SIGINT), or SIGTERM or SIGHUP (the operator's session
    gone; handled alike), while the host's
    answer to the snapshot is awaited (the host's first work runs in a
    thread of its own): the command ends at once with one line, without
    waiting for the answer; the migration is marked failed (or left as it
    was, when the interrupt came before the flow's first task; or
    "syncing", in the instant between its marking and its record of it),
    and the next sync adopts the snapshot."""
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--output-dir', out, common=common)
    ended = []
    leaked = _sync_killed_after_snapshot(root, facts, common,
                                         sig=sig, ended=ended)
    code, err, seconds, hanging = ended[0]
    assert code == rc, err
    assert err.strip() == 'any2kvm: %s' % word, err
    # Ended while the host still held its answer back.
    assert hanging and seconds < 30, (seconds, err)
    assert len(leaked) == 1
    m = _state(common)
    assert m['status'] in ('failed', 'created', 'syncing'), m['status']
    assert m['snapshots'] == []
    mig('sync', 'web', '--no-progress', common=common)
    m = _state(common)
    assert leaked < set(s['snapshot_id'] for s in m['snapshots'])
    assert m['status'] == 'synced'


def _beside_a_users_snapshot(bed):
    """Migration ``web`` of ``two-disks`` created, and a snapshot of the
    VM someone made with the name an untagged migration's would have:
    (root, facts, the VM, the snapshots on the host, common)."""
    root, facts, out, loc, common = bed
    vm = facts['two-disks']
    mig('create', 'web', loc, '--output-dir', out, common=common)
    xhost.xe_ok(root, 'vm-snapshot', 'uuid=%s' % vm,
                'new-name-label=any2kvm migration web')
    return root, facts, vm, set(_snapshots_on_host(root, vm)), common


def test_killed_between_snapshot_and_record_then_sync_and_abort(bed):
    """A sync killed (SIGKILL) after ``xe vm-snapshot`` ran on the host and
    before the state database heard of it.  The next sync records that
    snapshot (found by the migration's tag) before taking its own; after
    a second such kill, abort removes all three, and nothing else: not
    even a snapshot of the VM someone made with the same name."""
    root, facts, vm, other, common = _beside_a_users_snapshot(bed)
    leaked = _sync_killed_after_snapshot(root, facts, common)
    assert len(leaked) == 1
    assert _state(common)['snapshots'] == []
    mig('sync', 'web', '--no-progress', common=common)
    m = _state(common)
    ours = set(_snapshots_on_host(root, vm)) - other
    assert len(ours) == 2 and leaked < ours
    assert set(s['snapshot_id'] for s in m['snapshots']) == ours
    tag = m['target_options']['snapshot_tag']
    on_host = _snapshots_on_host(root, vm)
    assert [on_host[u].get('name-description') for u in ours] == [tag, tag]
    leaked = _sync_killed_after_snapshot(root, facts, common)
    assert len(leaked) == 1
    r = mig('abort', 'web', common=common)
    assert '3 snapshot(s) removed' in r.stdout, r.stdout
    assert set(_snapshots_on_host(root, vm)) == other
    assert st.load(str(root))['vm'][vm]['power-state'] == 'running'


def test_a_snapshot_whose_description_was_never_set_is_ours(bed):
    """xe sets a snapshot's description in a second call after the
    snapshot (vm_clone_aux); when that call fails (or the run is cut
    between the two), the snapshot has only its label: the label carries
    the migration's tag, so the next sync records it, and abort removes
    it; a snapshot of the VM named as an untagged migration's would be
    is left alone."""
    root, facts, vm, other, common = _beside_a_users_snapshot(bed)
    xhost.set_field(root, 'host', None, 'snapshot-description-fails', True)
    line = _one_line_error(mig('sync', 'web', '--no-progress',
                               common=common, ok=False))
    assert 'set_name_description failed' in line, line
    leaked = set(_snapshots_on_host(root, vm)) - other
    assert len(leaked) == 1 and _state(common)['snapshots'] == []
    tag = _state(common)['target_options']['snapshot_tag']
    u, = leaked
    snap = _snapshots_on_host(root, vm)[u]
    assert snap['name-label'] == 'any2kvm migration web (%s)' % tag
    assert snap.get('name-description') != tag
    xhost.set_field(root, 'host', None, 'snapshot-description-fails',
                    False)
    mig('sync', 'web', '--no-progress', common=common)
    recorded = set(s['snapshot_id'] for s in _state(common)['snapshots'])
    assert leaked < recorded and len(recorded) == 2, recorded
    r = mig('abort', 'web', common=common)
    assert '2 snapshot(s) removed' in r.stdout, r.stdout
    assert set(_snapshots_on_host(root, vm)) == other


def _snapshot_disk(root, snap):
    """The VDI of the first disk of snapshot ``snap``."""
    s = st.load(str(root))
    return sorted((v['userdevice'], v['vdi']) for v in s['vbd'].values()
                  if v['vm'] == snap and v['type'] == 'Disk')[0][1]


def test_a_snapshot_disk_left_by_a_failed_uninstall_is_destroyed(bed):
    """xe's snapshot-uninstall destroys the snapshot's record, then its
    disks: a disk whose destroy fails is left with no record naming it.
    The removal knew the disks beforehand: it destroys the one left, or
    names it with the command when that fails too."""
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--output-dir', out, common=common)
    mig('sync', 'web', common=common)
    snap, = [x['snapshot_id'] for x in _state(common)['snapshots']]
    left = _snapshot_disk(root, snap)
    xhost.set_field(root, 'vdi', left, 'destroy-fails', 2)
    r = mig('abort', 'web', common=common)
    assert '1 snapshot(s) removed' in r.stdout, r.stdout
    assert 'snapshot disk %s is left on the host (its snapshot is ' \
        'removed): xe vdi-destroy uuid=%s' % (left, left) in r.stderr, \
        r.stderr
    assert left in st.load(str(root))['vdi']
    xhost.xe_ok(root, 'vdi-destroy', 'uuid=' + left)
    # Once more, the backend failing once: the disk is destroyed after.
    mig('create', 'web2', loc, '--output-dir', out, common=common)
    mig('sync', 'web2', common=common)
    snap, = [x['snapshot_id'] for x in _state(common, 'web2')['snapshots']]
    left = _snapshot_disk(root, snap)
    xhost.set_field(root, 'vdi', left, 'destroy-fails', 1)
    r = mig('cutover', 'web2', '--timeout', '60', common=common)
    assert 'snapshot disk %s was left on the host when its snapshot was ' \
        'removed: destroyed' % left in r.stderr, r.stderr
    s = st.load(str(root))
    assert left not in s['vdi'] and snap not in s['vm']


def test_cutover_guest_ignores_clean_shutdown(bed):
    """A guest that ignores the clean shutdown: ``xe vm-shutdown`` waits
    for it and fails after the host's timeout (VM_SHUTDOWN_TIMEOUT).
    Without --force the cutover stops there with one line, the VM still
    running and the migration retryable; with --force the VM is stopped
    hard after the clean attempt timed out, and the targets are right."""
    root, facts, out, loc, common = bed
    vm = facts['two-disks']
    mig('create', 'web', loc, '--output-dir', out, common=common)
    w0, w1 = writers(root, facts, _state(common))
    xhost.guest_ignores_shutdown(root, vm, 2)
    w0.write(4 * MiB, ig.pattern(51, 8192))
    r = mig('cutover', 'web', '--timeout', '60', '--no-progress',
            common=common, ok=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert '\n' not in line, r.stderr
    assert 'did not shut down cleanly' in line and '--force' in line, line
    assert 'failed to shutdown before the timeout' in line, line
    assert st.load(str(root))['vm'][vm]['power-state'] == 'running'
    assert _state(common)['status'] == 'failed'
    # The guest goes on writing; the cutover with --force takes it all.
    w1.write(2 * MiB + 512, ig.pattern(52, 1024))
    r = mig('cutover', 'web', '--force', '--timeout', '60', '--no-progress',
            common=common)
    assert 'downtime' in r.stdout, r.stdout
    assert st.load(str(root))['vm'][vm]['power-state'] == 'halted'
    m = _state(common)
    assert m['status'] == 'done'
    # The clean attempt took the host's timeout before the hard stop.
    assert m['cutover']['downtime'] >= 2, m['cutover']
    check(m, facts)


def _first_cutover_gives_up(root, vm, common):
    """A cutover whose --timeout (3 s) ends before the host's clean
    shutdown (30 s): it fails in one line, the VM still running, the
    host's clean shutdown still pending (its ``xe`` goes on)."""
    xhost.guest_ignores_shutdown(root, vm, 30)
    r = mig('cutover', 'web', '--timeout', '3', '--no-progress',
            common=common, ok=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert 'did not halt within 3 s' in r.stderr, r.stderr
    s = st.load(str(root))
    assert s['vm'][vm]['power-state'] == 'running'
    assert list(s['vm'][vm]['current-operations'].values()) == [
        'clean_shutdown'], s['vm'][vm]
    # Recorded before the request, for the next cutover to count from.
    first = _state(common)['cutover']
    assert first['completed_at'] is None and first['shutdown_at']
    return first['shutdown_at']


def _cutover_process(args, common):
    return subprocess.Popen(_cmd(args + list(common)), env=_env(),
                            cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize('xapi', ['25.33.0', '24.19.2'])
def test_cutover_again_awaits_the_clean_shutdown_under_way(bed, xapi):
    """A cutover run again while the first one's clean shutdown is still
    pending on the host: xapi refuses a second clean shutdown
    (OTHER_OPERATION_IN_PROGRESS, in the form of xapi 25.27 and later,
    and in the older one of XCP-ng 8.2 and 8.3); the cutover says a
    clean shutdown is under way and waits for the VM to halt (the guest
    halts once it said so), then goes on; the wait is part of the
    downtime."""
    root, facts, out, loc, common = bed
    vm = facts['two-disks']
    xhost.set_field(root, 'host', None, 'xapi-version', xapi)
    mig('create', 'web', loc, '--output-dir', out, common=common)
    w0, _w1 = writers(root, facts, _state(common))
    w0.write(MiB, ig.pattern(53, 4096))
    first_request = _first_cutover_gives_up(root, vm, common)
    p = _cutover_process(['cutover', 'web', '--timeout', '120',
                          '--no-progress'], common)
    said = p.stderr.readline()
    assert 'a clean shutdown is already under way' in said, said
    time.sleep(2)
    # The guest halts at last: the pending xe vm-shutdown ends (exit 0).
    _halt(root, vm)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, (said, stdout, stderr)
    assert 'downtime' in stdout, stdout
    s = st.load(str(root))
    assert s['vm'][vm]['power-state'] == 'halted'
    for _ in range(100):
        if not st.load(str(root))['vm'][vm].get('current-operations'):
            break
        time.sleep(0.1)
    assert not st.load(str(root))['vm'][vm].get('current-operations')
    m = _state(common)
    assert m['status'] == 'done'
    # The downtime began with the first cutover's request (the guest was
    # going down since): its 3 s wait and the 2 s before the halt.
    assert m['cutover']['shutdown_at'] == first_request, m['cutover']
    assert m['cutover']['downtime'] >= 5, m['cutover']
    check(m, facts)


def test_cutover_force_cancels_the_clean_shutdown_under_way(bed):
    """With --force, a cutover run again while the first one's clean
    shutdown is pending stops the VM hard at once: xapi allows the hard
    shutdown beside it, and cancels the clean one (TASK_CANCELLED)."""
    root, facts, out, loc, common = bed
    vm = facts['two-disks']
    mig('create', 'web', loc, '--output-dir', out, common=common)
    first_request = _first_cutover_gives_up(root, vm, common)
    started = time.monotonic()
    r = mig('cutover', 'web', '--force', '--timeout', '120',
            '--no-progress', common=common)
    assert 'downtime' in r.stdout, r.stdout
    # Not the host's 30 s wait for the guest.
    assert time.monotonic() - started < 28, r.stderr
    s = st.load(str(root))
    assert s['vm'][vm]['power-state'] == 'halted'
    assert not s['vm'][vm].get('current-operations'), s['vm'][vm]
    m = _state(common)
    assert m['status'] == 'done'
    # Counted from the first request, as the guest went down since.
    assert m['cutover']['shutdown_at'] == first_request, m['cutover']
    assert m['cutover']['downtime'] >= 3, m['cutover']
    check(m, facts)


def _stopped_at(root, verb, args, common, sig=signal.SIGKILL,
                then_run=True):
    """A command of ``args`` stopped (``sig``) when it runs ``xe VERB`` on
    the host (held there until then); (its exit status, its stderr).
    The held ``xe VERB`` then runs (xapi goes on with a request whose
    client is gone), or, without ``then_run``, fails (it never ran)."""
    bin_dir = Path(str(root)).parent / 'bin'
    hold, reached = bin_dir / 'hold', bin_dir / 'reached'
    abandon = bin_dir / 'abandon'
    if abandon.exists():
        abandon.unlink()
    xbed.wrap_command(
        bin_dir, 'xe',
        'if [ "$1" = %(verb)s ] && [ -e "%(hold)s" ]; then\n'
        '  touch "%(reached)s"; n=0\n'
        '  while [ -e "%(hold)s" ] && [ $n -lt 1200 ]; do\n'
        '    sleep 0.1; n=$((n+1)); done\n'
        '  if [ -e "%(abandon)s" ]; then exit 1; fi\n'
        'fi\n'
        'exec "$REAL" "$@"\n' % {'hold': hold, 'reached': reached,
                                 'verb': verb, 'abandon': abandon})
    if not then_run:
        abandon.write_text('')
    hold.write_text('')
    p = _cutover_process(args, common)
    deadline = time.monotonic() + 120
    while not reached.exists() and p.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert reached.exists(), p.communicate()
    p.send_signal(sig)
    _out, err = p.communicate(timeout=60)
    hold.unlink()
    return p.returncode, err


def test_cutover_again_after_the_vm_ran_again_applies_the_leaf(bed):
    """A cutover stopped (SIGTERM) after it applied the leaf (removing
    the snapshots) says first that the VM stays halted.  The VM is
    started again behind the tool's back (by hand, by HA) and its guest
    writes into a block the leaf already holds, which changes none of
    the leaf's metadata, and into a block it did not hold, which changes
    the leaf's fingerprint: the next cutover applies the leaf again (the
    last delta, not the disk from its base: the downtime stays that of a
    delta), and the targets hold both writes."""
    root, facts, out, loc, common = bed
    vm = facts['two-disks']
    mig('create', 'web', loc, '--output-dir', out, common=common)
    w0, _w1 = writers(root, facts, _state(common))
    mig('sync', 'web', '--no-progress', common=common)
    w0.write(5 * MiB, ig.pattern(61, 4096))
    # (Stopped at the removal of the snapshots, which never runs: the
    # snapshot listing before the shutdown only checks that they are all
    # there.  One removed by the stopped run would be gone: the next
    # cutover would refuse until a sync rewrote the disks.)
    rc, err = _stopped_at(root, 'snapshot-uninstall', [
        'cutover', 'web', '--no-progress', '--timeout', '60'], common,
        sig=signal.SIGTERM, then_run=False)
    assert rc == 143, err
    assert ('VM %s was shut down for the cutover and stays halted: run '
            '"migration cutover web" again to finish, or "migration '
            'rollback web" to start it again' % vm) in err, err
    assert err.strip().splitlines()[-1] == 'any2kvm: terminated', err
    m = _state(common)
    assert m['status'] == 'failed', m['status']
    assert 'stays halted' in m['error'], m['error']
    leaf = '%s.vhd' % m['disks'][0]['source_id']
    assert [a['name'] for a in m['disks'][0]['applied']][-1] == leaf
    assert st.load(str(root))['vm'][vm]['power-state'] == 'halted'
    xhost.xe_ok(root, 'vm-start', 'uuid=%s' % vm)
    w0.write(5 * MiB, ig.pattern(62, 4096))
    w0.write(7 * MiB, ig.pattern(63, 4096))
    r = mig('cutover', 'web', '--format', 'json', '--no-progress',
            '--timeout', '60', common=common)
    done = json.loads(r.stdout)
    assert done['downtime'] is not None, done
    assert done['rewrites'] == [], done
    assert 'rewritten from the base' not in r.stderr, r.stderr
    # The leaf's two blocks of 2 MiB, not the disks (12 MiB).
    assert done['bytes_written'] <= 4 * MiB, done
    m = show(common)
    assert m['status'] == 'done'
    check(m, facts)


def _halt(root, vm):
    with st.locked(str(root)):
        s = st.load(str(root))
        s['vm'][vm]['power-state'] = 'halted'
        st.save(str(root), s)


def _through(b, proxy, tmp_path):
    """The location of bed ``b``'s VM through ``proxy``, and the options
    of its commands (a state database in ``tmp_path``)."""
    loc = 'xenserver://%s@127.0.0.1:%d/two-disks' % (b.server.user,
                                                     proxy.port)
    common = ['--identity-file', b.server.client_key, '--host-key',
              b.server.fingerprint, '--config-file', b.conf,
              '--state-db', 'sqlite:///%s' % (tmp_path / 'state.db')]
    return loc, common


def test_sync_goes_on_after_the_connection_is_cut(sshd_factory, tmp_path):
    """The SSH connection cut in the middle of a sync's copy (a proxy
    between the client and sshd closes it after 2 MiB went down): the
    sync reconnects, goes on where it was and ends; then a reader
    process's own connection cut (:func:`_sync_with_a_reader_process_cut`,
    on the same bed); a disk grows before the cutover; the targets end
    equal to the guest's disks."""
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    out = tmp_path / 'out'
    out.mkdir()
    with delayproxy.DelayProxy(('127.0.0.1', b.server.port)) as proxy:
        loc, common = _through(b, proxy, tmp_path)
        mig('create', 'web', loc, '--output-dir', out, common=common)
        w0, w1 = writers(b.root, b.facts, _state(common))
        w0.write(MiB, ig.pattern(61, 5 * MiB))
        w1.write(0, ig.pattern(62, 3 * MiB))
        before = proxy.connections
        proxy.cut_after = 2 * MiB
        r = mig('sync', 'web', '--no-progress', common=common)
        assert proxy.cuts == 1, (proxy.bytes_down, r.stdout, r.stderr)
        # The sync's connection, and at least one more after the cut.
        assert proxy.connections - before >= 2, r.stderr
        m = _state(common)
        assert m['status'] == 'synced' and m['syncs'][-1]['ok']
        _sync_with_a_reader_process_cut(b, proxy, w0, w1, common)
        # The second disk grows before the cutover (vhd-util resize, as
        # SM does): the raw file follows, a write past the old end lands.
        w0.write(7 * MiB, ig.pattern(63, 4096))
        w1.grow(6 * MiB)
        w1.write(5 * MiB, ig.pattern(64, 4096))
        mig('cutover', 'web', '--timeout', '60', '--no-progress',
            common=common)
    m = _state(common)
    assert m['status'] == 'done'
    # The state records the size the disk grew to (show gives it).
    assert m['disks'][1]['virtual_size'] == 6 * MiB
    check(m, b.facts)


def _sync_with_a_reader_process_cut(b, proxy, w0, w1, common):
    """A reader process's own SSH connection cut in the middle of its
    reads (the proxy closes that connection alone): the process
    reconnects as the command's connection would (``ssh_retries``,
    backoff), says so in the command's log and reads on where it was;
    the sync ends and the targets equal the guest's disks."""
    with open(b.conf, 'a') as f:
        f.write('ssh_reader_processes = 2\n'
                'ssh_reader_processes_min_mib = 0\n')
    # Batches of 1 MiB: several for each reader process.
    w0.write(MiB, ig.pattern(71, 6 * MiB))
    w1.write(0, ig.pattern(72, 3 * MiB))
    before = proxy.connections
    # The sync's own connection (its first) kept slow (512 KiB/s) until
    # the cut, so that what it reads while the reader processes start
    # leaves them batches; the first of their connections to carry
    # 256 KiB is cut.
    proxy.slow_one = (before, 512 << 10)
    proxy.cut_one = (before + 1, 256 << 10)
    r = mig('sync', 'web', '--no-progress', common=common)
    assert proxy.one_cut is not None, (proxy.down, r.stderr)
    lost = [line for line in r.stderr.splitlines()
            if re.search(r'reader process \d: .*connection lost during '
                         r'reading .*reconnecting in', line)]
    assert len(lost) == 1, r.stderr
    assert 'Traceback' not in r.stderr, r.stderr
    # What the processes read crossed the wire (counted by the
    # command), the bytes lost with the connection read again.
    wire, written = (int(x) for x in re.search(
        r'(\d+) bytes read over the wire .* (\d+) bytes written',
        r.stdout).groups())
    assert wire >= written, r.stdout
    m = _state(common)
    assert m['status'] == 'synced' and m['syncs'][-1]['ok']
    check(m, b.facts)


def test_sshd_down_at_sync_and_cutover_marks_the_migration_failed(
        sshd_factory, tmp_path):
    """The host's sshd is stopped: ``sync`` and ``cutover`` fail with one
    line each, the migration is marked failed and ``show`` says why (not
    "syncing" or "cutting-over" for ever), the lease is free; with the
    sshd back on its port, both work."""
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    conf = Path(str(b.conf) + '.noretry')
    # A refused connection is not worth retrying here.
    conf.write_text(Path(b.conf).read_text() + 'ssh_retries = 0\n')
    out = tmp_path / 'out'
    out.mkdir()
    common = b.ssh_args[:-1] + [str(conf), '--state-db',
                                'sqlite:///%s' % (tmp_path / 'state.db')]
    mig('create', 'web', b.location(), '--output-dir', out, common=common)
    port = b.server.port
    b.server.stop()
    for step, extra in (('sync', []), ('cutover', ['--timeout', '60'])):
        r = mig(step, 'web', *extra, common=common, ok=False)
        assert r.returncode != 0, r.stdout
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and 'Traceback' not in r.stderr, r.stderr
        assert 'Connection refused' in err[0], err
    text = mig('show', 'web', common=common[-2:]).stdout
    assert 'status:   failed (could not connect to the host: ' in text, text
    assert 'last run: cutover REVERTED, failed at task 1 of ' in text, text
    assert ' (connect): ' in text, text
    assert 'sync:     0 layer(s), 0 bytes read, 0 written' in text, text
    # The lease is free: both run, with the sshd back.
    b.server.start(port=port)
    mig('sync', 'web', common=common)
    mig('cutover', 'web', '--timeout', '60', common=common)
    m = show(common)
    assert m['status'] == 'done' and not m['error']
    assert [s['ok'] for s in m['syncs']] == [False, True]
    check(m, b.facts)


def test_ssh_host_runs_a_batch_in_one_round_trip(sshd_factory, tmp_path):
    """``SshHost.run_many`` over the real sshd: one ``sh -c`` whose
    output is cut back into each command's own (the stand-in's xe
    included); a command that fails stops the ones after it.  (Each
    marker's printf once swallowed the next command as its arguments:
    every batch failed and was run again one by one.)"""
    import types
    from any2kvm_os import exception
    from any2kvm_os import limits as limits_mod
    from any2kvm_os.migration import host as host_mod
    from any2kvm_os.sources.xenserver import xe
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    args = types.SimpleNamespace(identity_file=b.server.client_key,
                                 known_hosts=b.server.known_hosts,
                                 host_key=None, password_env=None)
    limits = limits_mod.Limits()
    host = host_mod.connect(b.location(), limits, args)
    calls = []
    run = host.conn.run
    host.conn.run = lambda argv, *a, **k: calls.append(argv) or run(
        argv, *a, **k)
    try:
        vm = b.facts['two-disks']
        outs = host.run_many([xe.power_state(vm), ['printf', '%s', 'a b'],
                              ['true'], ['printf', 'x\n\ny\n']])
        assert len(calls) == 1 and calls[0][:2] == ['sh', '-c']
        assert xe.parse_value(outs[0], xe.power_state(vm)) == 'running'
        assert [bytes(o) for o in outs[1:]] == [b'a b', b'', b'x\n\ny\n']
        flag = tmp_path / 'not-made'
        with pytest.raises(exception.RemoteCommandError) as e:
            host.run_many([['printf', 'done'], ['sh', '-c', 'echo why >&2; '
                                                'exit 3'],
                           ['touch', str(flag)]])
        assert not flag.exists()
        # The error of the command that failed, as run alone, with the
        # outputs of those before it.
        assert "sh -c 'echo why >&2; exit 3'" in str(e.value)
        assert 'exit status 3: why' in str(e.value)
        assert [bytes(o) for o in e.value.outputs] == [b'done']
    finally:
        host.close()


def test_ssh_host_runs_batches_side_by_side(sshd_factory, tmp_path):
    """``SshHost.run_batches`` over the real sshd: each batch on a
    channel of its own, at once (the first waits, 10 s at most, for a
    file the second makes: run one after the other it would give up
    and fail), each judged on its own (a failing one is its error, the
    others their outputs)."""
    import types
    from any2kvm_os import exception
    from any2kvm_os import limits as limits_mod
    from any2kvm_os.migration import host as host_mod
    from any2kvm_os.sources.xenserver import xe
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    args = types.SimpleNamespace(identity_file=b.server.client_key,
                                 known_hosts=b.server.known_hosts,
                                 host_key=None, password_env=None)
    host = host_mod.connect(b.location(), limits_mod.Limits(), args)
    flag = tmp_path / 'made-beside'
    wait = ('i=0; while [ ! -e "$1" ] && [ $i -lt 200 ]; do sleep 0.05; '
            'i=$((i+1)); done; test -e "$1" && echo seen')
    try:
        vm = b.facts['two-disks']
        outs = host.run_batches([
            [['sh', '-c', wait, 'sh', str(flag)]],
            [['touch', str(flag)], xe.power_state(vm)],
            [['true'], ['false'], ['printf', 'never']]])
        assert [bytes(o) for o in outs[0]] == [b'seen\n']
        assert outs[1][0] == b''
        assert xe.parse_value(outs[1][1], xe.power_state(vm)) == 'running'
        assert isinstance(outs[2], exception.RemoteCommandError)
        assert 'exit status 1' in str(outs[2])
    finally:
        host.close()


# --- onto block devices (migration create --device) --------------------------
# Loop devices prefilled with garbage; each device's bytes checked against
# the stand-in's model of its disk (the independent answer), and its tail
# beyond the disk against the garbage (never written).  Skipped where no
# loop device can be attached (not root, no losetup); the same code, and
# the refusals, zeroed devices and abort, are tested in process in
# tests/unit/test_blockdev_target.py (on regular files where no loop
# device can be had).

#: The sizes of the disks of the stand-in's VM "two-disks".
DEVICE_DISKS = (8 * MiB, 4 * MiB)
#: Bytes of each device beyond its disk (garbage, never written).
SPARE = MiB


def garbage(seed, size):
    return ig.pattern(seed, size)


@pytest.fixture
def devices(tmp_path):
    """A loop device per disk of "two-disks", each SPARE bytes larger
    than its disk and full of garbage; detached afterwards, even when the
    test fails."""
    with contextlib.ExitStack() as stack:
        devs = []
        for i, size in enumerate(DEVICE_DISKS):
            backing = tmp_path / ('dev%d.img' % i)
            backing.write_bytes(garbage(100 + i, size + SPARE))
            devs.append(stack.enter_context(blockdev.loop_device(backing)))
        yield devs


def read_device(path, size):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def check_devices(m, facts, devs):
    for d, dev in zip(m['disks'], devs):
        assert d['target_ref'] == dev
        model = facts['models'][d['source_id']]
        data = read_device(dev, model.size + SPARE)
        assert hashlib.sha256(data[:model.size]).hexdigest() == \
            model.sha256(), dev
        i = devs.index(dev)
        assert data[model.size:] == garbage(100 + i, model.size +
                                            SPARE)[model.size:], dev


def test_create_sync_sync_cutover_onto_devices(bed, devices, tmp_path):
    root, facts, out, loc, common = bed
    # Refused in one line, before the host is asked.
    regular = tmp_path / 'regular.raw'
    regular.write_bytes(bytes(16 * MiB))
    r = mig('create', 'web', loc, '--device', devices[0], '--device',
            regular, common=common, ok=False)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].endswith(
        '%s: is a regular file, not a block device' % regular), r.stderr
    assert 'Traceback' not in r.stderr
    mig('create', 'web', loc, '--device', devices[0], '--device',
        devices[1], common=common)
    m = show(common)
    assert m['target'] == 'file'
    assert m['target_options']['devices'] == devices
    assert [d['target_ref'] for d in m['disks']] == devices
    text = mig('show', 'web', common=common[-2:]).stdout
    assert devices[0] in text and 'never deleted or wiped' in text, text
    # A device is one migration's: a second one onto it is refused.
    r = mig('create', 'web2', loc, '--device', devices[0], '--device',
            devices[1], common=common, ok=False)
    assert r.returncode != 0 and 'Traceback' not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert ('--device %s is the target of disk 0 of migration web'
            % devices[0]) in line, line
    w0, w1 = writers(root, facts, m)
    r = mig('sync', 'web', '--no-inspect', common=common)
    assert '2 layer(s) applied' in r.stdout, r.stdout
    # After the first sync the devices already hold the disks: every
    # range the VM has no data in was zeroed over the garbage.
    check_devices(show(common), facts, devices)
    w0.write(5 * MiB, ig.pattern(21, 2 * MiB))
    w0.zero(0, 4096)
    w1.write(MiB + 300, b'a partial sector')
    mig('sync', 'web', '--no-inspect', common=common)
    w0.write(7 * MiB, ig.pattern(22, 4096))
    w1.zero(MiB, 512)
    r = mig('cutover', 'web', '--timeout', '60', '--no-inspect',
            common=common)
    assert 'downtime' in r.stdout, r.stdout
    m = show(common)
    assert m['status'] == 'done'
    check_devices(m, facts, devices)
    # verify reads the devices back (larger than the disks: only the
    # disks' bytes are compared).
    r = json.loads(mig('verify', 'web', '--format', 'json', '--no-progress',
                       common=common).stdout)
    assert [(t['target_ref'], t['identical']) for t in r['targets']] == [
        (devices[0], True), (devices[1], True)]
    assert all(t['target_size'] >= t['virtual_size'] for t in r['targets'])


# -- reader processes (ssh_reader_processes), forced onto the small disks ----

WORKER = 'any2kvm_os.migration.procworker'


def _bed_with_readers(sshd_factory, tmp_path):
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    with open(b.conf, 'a') as f:
        f.write('ssh_reader_processes = 2\n'
                'ssh_reader_processes_min_mib = 0\n')
    out = tmp_path / 'out'
    out.mkdir()
    common = b.ssh_args + ['--state-db',
                           'sqlite:///%s' % (tmp_path / 'state.db')]
    return b.root, b.facts, out, b.location(), common


def _workers(pid):
    """Pids of the reader processes whose parent is ``pid``."""
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % name) as f:
                stat = f.read()
            with open('/proc/%s/cmdline' % name, 'rb') as f:
                cmdline = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(')', 1)[1].split()[1])
        if ppid == pid and WORKER.encode() in cmdline:
            found.append(int(name))
    return found


def _kill_a_worker(common):
    """Run ``sync``, SIGKILL its first reader process once it is seen;
    (pid killed or None, returncode, stdout, stderr)."""
    proc = subprocess.Popen(_cmd(['sync', 'web'] + common),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=str(REPO))
    killed = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        pids = _workers(proc.pid)
        if pids:
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            except ProcessLookupError:
                continue
            break
        time.sleep(0.002)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert not _workers(proc.pid), 'a reader process was left behind'
    return killed, proc.returncode, stdout, stderr


def test_sync_with_reader_processes_killed_again_cutover(sshd_factory,
                                                         tmp_path):
    root, facts, out, loc, common = _bed_with_readers(sshd_factory, tmp_path)
    mig('create', 'web', loc, '--target', 'file', '--output-dir', out,
        common=common)
    m = show(common)
    w0, w1 = writers(root, facts, m)
    # Several batches (1 MiB at least) on each disk, for both workers.
    w0.write(MiB, ig.pattern(41, 6 * MiB))
    w1.write(0, ig.pattern(42, 3 * MiB))
    # A reader process killed: the sync fails in one line, the layer
    # stays partly applied.
    killed, code, stdout, stderr = _kill_a_worker(common)
    assert killed, 'the sync ended before a reader process was seen'
    assert code != 0, stdout
    assert 'killed by signal 9' in stderr, stderr
    assert 'Traceback' not in stderr, stderr
    # The next sync applies it again, each layer over two processes (its
    # own snapshot found the leaves empty, so SM made no new layer).
    r = mig('sync', 'web', '--debug', common=common)
    assert '2 layer(s) applied' in r.stdout, r.stdout
    assert r.stderr.count('2 reader processes started') == 2, r.stderr
    # Only what the layer files hold crossed the wire, counted once.
    wire, files = (int(x) for x in re.search(
        r'(\d+) bytes read over the wire for (\d+) bytes of layer files',
        r.stdout).groups())
    assert files <= wire <= 1.02 * files + 64 * 1024, r.stdout
    w0.write(5 * MiB, ig.pattern(43, 2 * MiB))
    w0.zero(MiB, 8192)
    w1.write(MiB + 300, b'a partial sector')
    # The cutover reads its last delta in its own process.
    r = mig('cutover', 'web', '--timeout', '60', '--debug', common=common)
    assert 'reader processes started' not in r.stderr, r.stderr
    m = show(common)
    assert m['status'] == 'done'
    check(m, facts)


#: The command line with the state's lease shortened to 4 s (its renewer
#: then turns every second), so that a test can outlast it.
SHORT_LEASE = ('import sys\n'
               'from any2kvm_os.migration.state import sql\n'
               'sql.SqlStore.__init__.__defaults__ = (None, 4.0, True)\n'
               'from any2kvm_os.cmd import any2kvm\n'
               'sys.exit(any2kvm.main(sys.argv[1:]))\n')


def _short_lease(args):
    return [sys.executable, '-c', SHORT_LEASE, 'migration'] + [
        str(a) for a in args]


def _as_if_on_another_host(url):
    """Make the migration's holder look like a command of another host
    sharing the database (judged by its lease's expiry alone)."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(sa.update(models.Holder).values(
                host='elsewhere.example', mark=None))
    finally:
        engine.dispose()


@pytest.mark.parametrize('processes', [1, 2])
def test_a_sync_stopped_past_its_lease_writes_nothing_more(
        sshd_factory, tmp_path, processes):
    """A sync stopped (Ctrl-Z) past its lease, taken over meanwhile by a
    sync of another host that shares the database: once resumed it
    stops at its next write, in one line, and writes nothing over what
    the other wrote (in its own process, or its reader processes, which
    were stopped with it)."""
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    with open(b.conf, 'a') as f:
        f.write('ssh_reader_processes = %d\n'
                'ssh_reader_processes_min_mib = 0\n' % processes)
    out = tmp_path / 'out'
    out.mkdir()
    url = 'sqlite:///%s' % (tmp_path / 'state.db')
    common = b.ssh_args + ['--state-db', url]
    root, facts = b.root, b.facts
    mig('create', 'web', b.location(), '--output-dir', out, common=common)
    m = _state(common)
    w0, _w1 = writers(root, facts, m)
    size = facts['models'][m['disks'][0]['source_id']].size
    w0.write(0, ig.pattern(51, size))
    proc = subprocess.Popen(
        _short_lease(['sync', 'web', '--no-inspect', '--no-progress'] +
                     common),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(), cwd=str(REPO), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        stopped = False
        while time.monotonic() < deadline and proc.poll() is None:
            d = _state(common)
            if any(a['partial'] for a in d['disks'][0]['applied']):
                os.killpg(proc.pid, signal.SIGSTOP)
                stopped = True
                break
            time.sleep(0.003)
        assert stopped, proc.communicate()
        _as_if_on_another_host(url)
        time.sleep(5)         # past the (shortened) lease
        # The guest writes over what the stopped sync still has to write;
        # the second sync takes the migration over and copies it.
        w0.write(size - 3 * MiB, ig.pattern(52, 2 * MiB))
        r = subprocess.run(
            _short_lease(['sync', 'web', '--no-inspect', '--no-progress'] +
                         common),
            capture_output=True, text=True, env=_env(), cwd=str(REPO),
            timeout=300)
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert 'taking over' in r.stderr, r.stderr
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0, (stdout, stderr)
    assert 'the hold of this sync is lost' in stderr, stderr
    assert 'Traceback' not in stderr, stderr
    # What the second sync recorded stands, and the cutover ends with the
    # VM's disks.
    assert _state(common)['status'] == 'synced'
    mig('cutover', 'web', '--timeout', '60', '--no-progress',
        common=common)
    check(_state(common), facts)


def test_a_reset_connection_prints_only_our_lines(sshd_factory, tmp_path):
    """The connection reset in the middle of a sync's copy (an RST, as a
    host that died or a firewall sends): the sync reconnects and ends,
    and stderr holds only our own lines about it, not paramiko's
    transport reporting the socket error (its records are debug only)."""
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    out = tmp_path / 'out'
    out.mkdir()
    with delayproxy.DelayProxy(('127.0.0.1', b.server.port),
                               reset=True) as proxy:
        loc, common = _through(b, proxy, tmp_path)
        mig('create', 'web', loc, '--output-dir', out, common=common)
        w0, w1 = writers(b.root, b.facts, _state(common))
        w0.write(MiB, ig.pattern(81, 5 * MiB))
        proxy.cut_after = 2 * MiB
        r = mig('sync', 'web', '--no-progress', common=common)
        assert proxy.cuts == 1, (proxy.bytes_down, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert lines and all('reconnecting in' in line for line in lines), \
        r.stderr
    assert 'Socket exception' not in r.stderr
    # Our line says what paramiko's said: the connection was reset.
    assert 'connection lost: Connection reset by peer' in r.stderr, \
        r.stderr
    m = _state(common)
    assert m['status'] == 'synced' and m['syncs'][-1]['ok']
    check(m, b.facts)


# -- migration verify ---------------------------------------------------------

def _poke(path, offset, data):
    """Write ``data`` into the target file ``path`` at ``offset``; returns
    what was there."""
    fd = os.open(str(path), os.O_RDWR)
    try:
        old = os.pread(fd, len(data), offset)
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    return old


def _one_line_error(res):
    """The command failed with one line on stderr; that line."""
    assert res.returncode != 0, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def _verify_error(common):
    return _one_line_error(mig('verify', 'web', '--no-progress',
                               common=common, ok=False))


def test_verify_after_sync_finds_a_changed_byte_and_after_cutover(bed):
    """``migration verify``: the targets compared with the VM's disks
    read again from the host.  A byte changed in a target, in data or
    where zeros must be, and a file cut short are found and named; the
    host's garbage collector merging layers after the cutover changes
    nothing; what cannot be verified is refused in one line."""
    root, facts, out, loc, common = bed
    mig('create', 'web', loc, '--output-dir', out, common=common)
    # Nothing synced yet: nothing to compare.
    line = _verify_error(common)
    assert 'is created: a migration is verified after a sync' in line, line
    m = show(common)
    w0, w1 = writers(root, facts, m)
    mig('sync', 'web', common=common)
    w0.write(5 * MiB, ig.pattern(51, 2 * MiB))
    w1.write(MiB + 300, b'a partial sector')
    mig('sync', 'web', common=common)
    # The guest writes on: the running leaf is not what was synced, and
    # is not compared.
    w0.write(0, ig.pattern(52, 4096))
    r = mig('verify', 'web', '--format', 'json', '--no-progress',
            common=common)
    result = json.loads(r.stdout)
    assert result['against'] == 'the layers of the last sync'
    assert [t['identical'] for t in result['targets']] == [True, True]
    for t, d in zip(result['targets'], m['disks']):
        assert t['compared'] == t['virtual_size'] == d['virtual_size']
        assert t['differing'] == 0 and t['layers'] >= 2
    # Every byte of data crossed the wire again (and little more).
    data = sum(t['data'] for t in result['targets'])
    assert data <= result['bytes_read'] <= 1.05 * data + 256 * 1024
    text = mig('verify', 'web', common=common).stdout
    assert text.startswith('verified web: every target equals the layers '
                           'of the last sync'), text
    assert text.count(': identical') == 2, text
    # show keeps the outcome, and says when the targets moved on since.
    last = show(common)['last_verify']
    assert (last['state'], last['since']) == (
        'SUCCESS', {'syncs': 0, 'cutovers': 0}), last
    text = mig('show', 'web', common=common[-2:]).stdout
    assert re.search(r'^verified: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; '
                     r'identical \(2 target\(s\)\)$', text, re.M), text

    # A byte changed in a target's data, and one where zeros must be.
    t0, t1 = (d['target_ref'] for d in m['disks'])
    old0 = _poke(t0, 5 * MiB + 100, b'\xff')
    size1 = m['disks'][1]['virtual_size']
    old1 = _poke(t1, size1 - 8192, b'not zero')
    line = _verify_error(common)
    assert ('disk 0 (%s) differs from the host\'s: 4096 byte(s) differ, '
            'the first at offset %d (4096 bytes there)'
            % (t0, 5 * MiB)) in line, line
    assert ('disk 1 (%s) differs from the host\'s: 4096 byte(s) differ, '
            'the first at offset %d' % (t1, size1 - 8192)) in line, line
    # show keeps it: the last run, a recorded flow, failed in its judge.
    text = mig('show', 'web', common=common[-2:]).stdout
    assert 'last run: verify ' in text, text
    assert re.search(r'failed at task (\d+) of \1 \(judge\): ', text), text
    assert 'disk 0 (%s) differs' % t0 in text, text
    assert re.search(r'^verified: [^;]* UTC; differs: disk 0 \(%s\) '
                     r'differs' % re.escape(t0), text, re.M), text
    _poke(t0, 5 * MiB + 100, old0)
    _poke(t1, size1 - 8192, old1)
    # A file target cut short.
    os.truncate(t1, size1 - MiB)
    line = _verify_error(common)
    assert 'the target is %d bytes, the disk %d' % (size1 - MiB, size1) \
        in line, line
    os.truncate(t1, size1)

    # After the cutover: the halted VM's disks, whole; the host's garbage
    # collector merging the layers (the migration's snapshots are gone)
    # changes nothing.
    mig('cutover', 'web', '--timeout', '60', common=common)
    # The last verify's outcome no longer holds: show says so.
    m = show(common)
    assert m['last_verify']['since'] == {'syncs': 0, 'cutovers': 1}, m
    assert m['last_run']['operation'] == 'cutover'
    text = mig('show', 'web', common=common[-2:]).stdout
    assert re.search(r'^verified: [^;]* UTC; a cutover since: verify '
                     r'again; ', text, re.M), text
    for w in (w0, w1):
        node = srlib.chain(w.path)[1][:-len('.vhd')]
        xhost.coalesce(root, node)
    r = openstack('verify', 'web', '-f', 'json', '--no-progress', *common)
    result = json.loads(r.stdout)
    assert result['against'] == 'the halted VM\'s disks'
    assert [t['identical'] for t in result['targets']] == [True, True]
    # The VM started again (a rollback): its disks have moved on.
    mig('rollback', 'web', common=common)
    line = _verify_error(common)
    assert 'disk 0: the host holds layers its target lacks' in line, line
    assert 'sync first' in line


# -- LVM SRs ------------------------------------------------------------------

def _dom0_vbds(root):
    """The control domain's VBDs on the stand-in host: {uuid: record}."""
    s = st.load(str(root))
    dom0 = s['hosts'][s['host']['uuid']]['control-domain']
    return dict((u, v) for u, v in s['vbd'].items() if v['vm'] == dom0)


def _lv_nodes(root, sr):
    """The VHD LVs of SR ``sr`` that are active (have a device node)."""
    d = os.path.join(str(root), 'dev', 'VG_XenStorage-%s' % sr)
    return sorted(n for n in os.listdir(d) if n.startswith('VHD-')) \
        if os.path.isdir(d) else []


def test_a_vm_on_an_lvm_sr_end_to_end(bed):
    """A VM whose disk is a logical volume of an LVM SR (SM's LVHD, as
    the stand-in models it from SM's code): synced while it runs from
    the active LVs of its chain; at the cutover, its LVs deactivated at
    the shutdown (none held open by us then), its VDI attached read-only
    to dom0 to read the last layer, and detached; verify after it
    attaches it again; a dom0 VBD a killed run left behind is removed
    before the rollback starts the VM."""
    root, facts, out, _loc, common = bed
    vm, sr = facts['lvm'], facts['sr']['lvm']
    loc = _loc.rsplit('/', 1)[0] + '/on-lvm'
    r = mig('create', 'db', loc, '--output-dir', out, common=common)
    assert 'disk 0: 1 layer(s) on the host' in r.stdout, r.stdout
    m = show(common, 'db')
    w, = writers(root, facts, m)
    w.write(5 * MiB + 512, ig.pattern(71, 3 * 4096))
    # create read the running VM's chain in place; the syncs' flushes next
    Path(root, 'blockdev.log').write_text('')
    mig('sync', 'db', common=common)
    w.write(9 * MiB, ig.pattern(72, MiB))
    mig('sync', 'db', common=common)
    # A sync reads the chain of its own snapshot's VDI, attached to dom0
    # while it reads (SM's refcounts hold every LV read), never the VM's
    # leaf; each LV read had this host's page cache of it dropped first.
    assert not _dom0_vbds(root)
    vdi = m['disks'][0]['source_id']
    flushed = [x.split()[-1].rsplit('/', 1)[-1] for x in
               Path(root, 'blockdev.log').read_text().split('\n') if x]
    s = st.load(str(root))
    snap_vdis = set('VHD-' + u for u, v in s['vdi'].items()
                    if v.get('snapshot-of') == vdi)
    assert len(snap_vdis) == 2, s['vdi']
    assert snap_vdis <= set(flushed), flushed
    assert 'VHD-' + vdi not in flushed, flushed
    r = mig('verify', 'db', common=common)
    assert 'identical' in r.stdout, r.stdout
    # verify after a sync reads the last sync's snapshot too.
    flushed = [x.split()[-1].rsplit('/', 1)[-1] for x in
               Path(root, 'blockdev.log').read_text().split('\n') if x]
    assert 'VHD-' + vdi not in flushed, flushed
    assert not _dom0_vbds(root)
    # A snapshot's VDI a killed sync left attached to dom0 (as a run's
    # reader tags it) does not stop the cutover from removing it.
    dead = 4194303
    dom0 = s['hosts'][s['host']['uuid']]['control-domain']
    stuck = sorted(snap_vdis)[0][len('VHD-'):]
    vbd = xhost.xe_ok(root, 'vbd-create', 'vm-uuid=' + dom0,
                      'vdi-uuid=' + stuck, 'device=autodetect',
                      'mode=RO').strip()
    xhost.xe_ok(root, 'vbd-param-set', 'uuid=' + vbd,
                'other-config:any2kvm-reader=%s:%d' % (
                    socket.gethostname(), dead))
    xhost.xe_ok(root, 'vbd-plug', 'uuid=' + vbd)
    w.write(2 * MiB, ig.pattern(73, 8192))
    # Which round trip (the shell that ran it: $PPID) ran each command.
    bin_dir = Path(str(root)).parent / 'bin'
    calls = bin_dir / 'calls.log'
    for name in ('xe', 'lvs', 'blockdev'):
        xbed.wrap_command(bin_dir, name,
                          '"$REAL" "$@"; rc=$?\n'
                          'echo "$PPID %s $*" >> "%s"\n'
                          'exit $rc\n' % (name, calls))
    r = mig('cutover', 'db', '--timeout', '60', common=common)
    assert 'downtime' in r.stdout, r.stdout
    # The dom0 VBD of the last layer's read was created (and tagged)
    # before the shutdown; inside the downtime it was plugged, the volume
    # group listed and the leaf's cache dropped in one round trip.
    log = [line.split(' ', 2) for line in calls.read_text().splitlines()]
    words = [(c, a.split(' ', 1)[0]) for _p, c, a in log]
    down = words.index(('xe', 'vm-shutdown'))
    assert words.index(('xe', 'vbd-create')) < down, words
    assert words.index(('xe', 'vbd-param-set')) < down, words
    plug = words.index(('xe', 'vbd-plug'))
    assert plug > down, words
    assert [w for w in words[plug:plug + 3]] == [
        ('xe', 'vbd-plug'), ('lvs', '--readonly'),
        ('blockdev', '--flushbufs')], words
    assert len(set(p for p, _c, _a in log[plug:plug + 3])) == 1, log
    assert log[plug + 2][2].endswith('/VHD-' + vdi), log
    assert ('xe', 'vbd-list') not in words[down:plug], words
    m = show(common, 'db')
    assert m['status'] == 'done'
    check(m, facts)
    # The disk attached to dom0 to read the last layer was detached after
    # the downtime was recorded (its own step), not inside it.
    tasks = [(t['name'], t['result']) for t in m['last_run']['tasks']]
    names = [t[0] for t in tasks]
    assert names.index('detach-sources') == names.index(
        'record-downtime') + 1, names
    assert dict(tasks)['detach-sources'] == {'detached': 1}, tasks
    s = st.load(str(root))
    assert s['vm'][vm]['power-state'] == 'halted'
    # The last layer was read through a dom0 attachment, now gone; no LV
    # was held open when SM deactivated it; the snapshots are gone with
    # their disks (the stuck one released first).
    assert not _dom0_vbds(root)
    assert not s['host'].get('lv-in-use-at-deactivation'), s['host']
    assert _lv_nodes(root, sr) == []
    assert not [u for u, v in s['vdi'].items()
                if v.get('snapshot-of') == vdi], s['vdi']
    r = mig('verify', 'db', '--format', 'json', common=common)
    assert [t['identical'] for t in json.loads(r.stdout)['targets']] == [
        True]
    assert not _dom0_vbds(root)
    # A run killed while it read: its dom0 VBD (tagged with this host and
    # a pid that is gone: the tag of earlier versions; this one's adds the
    # boot id and the start time) would keep the VM from starting.  One of
    # another conversion host is not ours to judge: the rollback names it
    # and what removes it, and starts nothing.

    def plugged(tag):
        vbd = xhost.xe_ok(root, 'vbd-create', 'vm-uuid=' + dom0,
                          'vdi-uuid=' + vdi, 'device=autodetect',
                          'mode=RO').strip()
        xhost.xe_ok(root, 'vbd-param-set', 'uuid=' + vbd,
                    'other-config:any2kvm-reader=' + tag)
        xhost.xe_ok(root, 'vbd-plug', 'uuid=' + vbd)
        return vbd
    plugged('%s:%d' % (socket.gethostname(), dead))
    other = plugged('elsewhere:%d:b:1' % dead)
    res = mig('rollback', 'db', common=common, ok=False)
    assert res.returncode != 0
    # The killed run's, removed (a warning), then the error, one line.
    warning, line = res.stderr.strip().splitlines()
    assert 'left attached to the control domain by a run that was ' \
        'stopped' in warning, warning
    assert ('by another any2kvm run (elsewhere:%d:b:1; VBD %s)'
            % (dead, other)) in line, line
    assert 'xe vbd-unplug uuid=%s; xe vbd-destroy uuid=%s' % (
        other, other) in line, line
    assert st.load(str(root))['vm'][vm]['power-state'] == 'halted'
    assert list(_dom0_vbds(root)) == [other]
    xhost.xe_ok(root, 'vbd-unplug', 'uuid=' + other)
    xhost.xe_ok(root, 'vbd-destroy', 'uuid=' + other)
    plugged('%s:%d' % (socket.gethostname(), dead))
    assert _lv_nodes(root, sr)
    mig('rollback', 'db', common=common)
    assert st.load(str(root))['vm'][vm]['power-state'] == 'running'
    assert not _dom0_vbds(root)


def test_an_lvm_vm_shut_down_while_a_sync_reads(bed):
    """The VM on an LVM SR is shut down (hard, from the host) while a sync
    reads its layers: SM deactivates the VM's LVs, and none is held open
    by the sync (it reads its snapshot's VDI, attached to dom0, whose LVs
    SM keeps active); the sync ends and the targets come out right.
    The shutdown is made from the host's ``blockdev`` when the sync flushes
    its second LV: the first is open by then."""
    root, facts, out, _loc, common = bed
    vm = facts['lvm']
    loc = _loc.rsplit('/', 1)[0] + '/on-lvm'
    mig('create', 'db', loc, '--output-dir', out, common=common)
    m = show(common, 'db')
    w, = writers(root, facts, m)
    w.write(3 * MiB + 512, ig.pattern(75, 3 * 4096))
    bin_dir = Path(str(root)).parent / 'bin'
    trigger = bin_dir / 'shutdown-at-second-flush'
    xbed.wrap_command(
        bin_dir, 'blockdev',
        '"$REAL" "$@"; rc=$?\n'
        'if [ -e "%(t)s" ]; then\n'
        '  if [ -s "%(t)s" ]; then\n'
        '    rm -f "%(t)s"\n'
        '    "%(xe)s" vm-shutdown uuid=%(vm)s --force >/dev/null || exit 9\n'
        '  else echo 1 > "%(t)s"; fi\n'
        'fi\n'
        'exit $rc\n' % {'t': trigger, 'xe': bin_dir / 'xe', 'vm': vm})
    trigger.write_text('')
    Path(root, 'blockdev.log').write_text('')
    mig('sync', 'db', common=common)
    assert not trigger.exists()     # the shutdown was made, mid-sync
    s = st.load(str(root))
    assert s['vm'][vm]['power-state'] == 'halted'
    flushed = [x.split()[-1].rsplit('/', 1)[-1] for x in
               Path(root, 'blockdev.log').read_text().split('\n') if x]
    assert len(flushed) >= 2, flushed
    # SM found none of the VM's LVs held open when it deactivated them
    assert not s['host'].get('lv-in-use-at-deactivation'), s['host']
    assert not _dom0_vbds(root)
    assert _lv_nodes(root, facts['sr']['lvm']) == []
    r = mig('verify', 'db', '--format', 'json', common=common)
    assert [t['identical'] for t in json.loads(r.stdout)['targets']] == [
        True]
    mig('cutover', 'db', '--timeout', '60', common=common)
    m = show(common, 'db')
    assert m['status'] == 'done'
    check(m, facts)
    assert not st.load(str(root))['host'].get('lv-in-use-at-deactivation')


# -- through a jump host ------------------------------------------------------

@contextlib.contextmanager
def _jump_host(directory, client_dir, extra=()):
    """A second real sshd, the jump host, that accepts the bed's client
    key; its log at DEBUG1 (it logs each direct-tcpip channel)."""
    directory.mkdir()
    for name in ('client_key', 'client_key.pub'):
        (directory / name).write_bytes((client_dir / name).read_bytes())
        os.chmod(str(directory / name), 0o600)
    (directory / 'authorized_keys').write_bytes(
        (client_dir / 'client_key.pub').read_bytes())
    server = sshd_lib.SshServer(directory, extra_config=['LogLevel DEBUG1']
                                + list(extra))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_host_behind_a_jump_host(sshd_factory, tmp_path):
    """--jump-host: the hypervisor host reached through a second real
    sshd (a direct-tcpip channel, as ssh -J opens it), whose own key is
    verified too; a migration end to end through it; an unknown or
    wrongly pinned jump host key, and a jump host that forwards nothing,
    are refused in one line."""
    b = xbed.Bed(sshd_factory, tmp_path / 'bed')
    target = b.server
    out = tmp_path / 'out'
    out.mkdir()
    with _jump_host(tmp_path / 'jump', target.dir) as jump:
        known = tmp_path / 'known_hosts'
        known.write_text(target.known_hosts.read_text() +
                         jump.known_hosts.read_text())
        via = ['--jump-host', '%s@127.0.0.1:%d' % (jump.user, jump.port)]
        # Reader processes too: each reaches the host through the jump
        # host on its own connection.
        readers = tmp_path / 'readers.conf'
        readers.write_text(Path(b.conf).read_text() +
                           'ssh_reader_processes = 2\n'
                           'ssh_reader_processes_min_mib = 0\n')
        common = ['--identity-file', target.client_key, '--known-hosts',
                  known, '--config-file', readers,
                  '--state-db', 'sqlite:///%s' % (tmp_path / 'state.db')]
        # create records the route; the commands after it take it.
        mig('create', 'web', b.location(), '--output-dir', out, *via,
            common=common)
        m = show(common)
        assert m['target_options']['jump_host'] == via[1]
        w0, w1 = b.writers(m)
        mig('sync', 'web', common=common)

        def channels():
            return len(re.findall(r'server_request_direct_tcpip: ',
                                  jump.log_text()))
        # --no-jump-host: this command connects directly, the recorded
        # route stays for the next.
        before = channels()
        r = mig('verify', 'web', '--no-jump-host', common=common)
        assert channels() == before, r.stdout
        assert show(common)['target_options']['jump_host'] == via[1]
        w0.write(3 * MiB, ig.pattern(61, 8192))
        r = mig('cutover', 'web', '--timeout', '60', common=common)
        assert 'downtime' in r.stdout, r.stdout
        check(show(common), b.facts)
        # Every connection went through the jump host to the bed's sshd.
        log = jump.log_text()
        opened = re.findall(r'server_request_direct_tcpip: originator '
                            r'\S+ port \d+, target 127\.0\.0\.1 port '
                            r'%d\b' % target.port, log)
        # create, sync and cutover, and the sync's two reader processes.
        assert len(opened) >= 5, log[-3000:]
        # The jump host from the configuration (ssh_jump_host).
        conf = tmp_path / 'jump.conf'
        conf.write_text(Path(b.conf).read_text() + 'ssh_jump_host = %s\n'
                        % via[1])
        res = subprocess.run(
            cli.cli_command() + [
                'info', b.location(), '--format', 'json', '--identity-file',
                str(target.client_key), '--known-hosts', str(known),
                '--config-file', str(conf)],
            capture_output=True, text=True, env=_env(), cwd=str(REPO),
            timeout=120)
        assert res.returncode == 0, res.stderr
        assert len(re.findall(r'server_request_direct_tcpip: ',
                              jump.log_text())) == len(opened) + 1

        def refused(*more):
            res = subprocess.run(
                cli.cli_command() + ['info', b.location(), '--format',
                                     'json'] + [str(a) for a in more],
                capture_output=True, text=True, env=_env(), cwd=str(REPO),
                timeout=120)
            assert res.returncode != 0, res.stdout
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1, res.stderr
            return lines[0]
        # The jump host's key unknown: refused, with its fingerprint and
        # the option that pins it.
        line = refused('--identity-file', target.client_key,
                       '--known-hosts', target.known_hosts, '--config-file',
                       b.conf, *via)
        assert 'host key not known, refused' in line, line
        assert '[127.0.0.1]:%d' % jump.port in line
        assert '--jump-host-key %s' % jump.fingerprint in line, line
        # Pinned: then known_hosts is not asked for it.
        res = subprocess.run(
            cli.cli_command() + [
                'info', b.location(), '--format', 'json', '--identity-file',
                str(target.client_key), '--known-hosts',
                str(target.known_hosts), '--config-file', str(b.conf),
                '--jump-host-key', jump.fingerprint] + via,
            capture_output=True, text=True, env=_env(), cwd=str(REPO),
            timeout=120)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)['vm']['name'] == 'two-disks'
        line = refused('--identity-file', target.client_key,
                       '--known-hosts', known, '--config-file', b.conf,
                       '--jump-host-key', target.fingerprint, *via)
        assert 'which is not the pinned --jump-host-key' in line, line
    with _jump_host(tmp_path / 'jump2', target.dir,
                    ['AllowTcpForwarding no']) as closed:
        known.write_text(target.known_hosts.read_text() +
                         closed.known_hosts.read_text())
        line = refused('--identity-file', target.client_key,
                       '--known-hosts', known, '--config-file', b.conf,
                       '--jump-host', '%s@127.0.0.1:%d' % (closed.user,
                                                           closed.port))
        assert 'jump host %s@[127.0.0.1]:%d could not reach 127.0.0.1 ' \
            'port %d' % (closed.user, closed.port, target.port) in line, line


def test_create_opens_the_chains_and_refuses_a_broken_one(bed):
    """create opens each disk's chain as a sync will (SFTP, the SR
    listed, every layer's metadata): it reports what the first sync will
    read, and a chain a sync could not read is refused at create, before
    any target is made."""
    root, facts, out, loc, common = bed
    r = mig('create', 'web', loc, '--output-dir', out, common=common)
    lines = r.stdout.splitlines()
    assert re.match(r'  disk 0: \d+ layer\(s\) on the host, [0-9.]+ \S+ of '
                    r'layer files', lines[1]), r.stdout
    assert len(lines) == 3 and lines[2].startswith('  disk 1: '), r.stdout
    # A sync's snapshot gives the leaf a parent; then that parent goes
    # from the SR.
    mig('sync', 'web', common=common)
    m_disk = [v for v in st.load(str(root))['vbd'].values()
              if v['vm'] == facts['two-disks'] and v['type'] == 'Disk']
    leaf = xhost.vdi_path(root, sorted(m_disk, key=lambda v: int(
        v['userdevice']))[0]['vdi'])
    names = srlib.chain(leaf)
    assert len(names) >= 2, names
    os.unlink(os.path.join(os.path.dirname(leaf), names[1]))
    r = mig('create', 'web2', loc, '--output-dir', out, common=common,
            ok=False)
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert 'missing parent' in line[0], line
    assert not list(out.glob('web2*')), list(out.iterdir())
    r = mig('show', 'web2', common=common[-2:], ok=False)
    assert 'no such migration' in r.stderr
