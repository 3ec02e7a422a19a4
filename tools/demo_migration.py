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

"""The warm-migration part of tools/demo.sh: a running VM moves off a
XenServer host into the loopback cloud, and boots there.

The XenServer host is the tests' stand-in (tests/lib/xenserver): an ``xe``
that answers as the real CLI does, over an SR directory of real VHD files,
behind a real OpenSSH sshd on 127.0.0.1 with its own host key.  The VM's
disk holds a small Debian-kernel guest (tests/lib/guestbuild.py) that
prints a token from its root file system on the serial console.  Like a
Xen PV guest, its fstab and kernel command line name ``/dev/xvda1`` and
``hvc0``: as it is, it does not boot on KVM.  While the "VM runs", this
script writes into its disk as the guest would:

1. ``any2kvm migration create`` (a Cinder volume per disk), ``sync``;
2. a new token and 3 MiB more written; ``sync`` copies only that delta;
3. one more token, then ``cutover --fix --create-server --boot-check``:
   the VM is shut down, only the last delta is applied, the guest on the
   volume is inspected and its Xen names fixed (libguestfs, TCG: the
   longest part of this downtime here), a Nova server boots from the
   volume, and the command waits for the guest's ready line with that
   last token, which only the final delta holds.

Usage (demo.sh runs it with the cloud's openrc sourced)::

    python tools/demo_migration.py WORKDIR CINDER_MOUNT_BASE

Exits non-zero when a step fails or the console does not show the token.
"""

import json
import os
import re
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.lib import guestbuild  # noqa: E402
from tests.lib import sshd  # noqa: E402
from tests.lib.xenserver import bed as xbed  # noqa: E402
from tests.lib.xenserver import host as xhost  # noqa: E402

MiB = 1 << 20
VM = 'web-01'
GUEST_MIB = 64              # the guest's partition ends there
DISK_MIB = 96               # the VM's disk is larger
BOOT_TIMEOUT = 900


def step(text):
    step.no += 1
    print('\n=== Migration step %d: %s' % (step.no, text), flush=True)


step.no = 0


def run(*argv, **kwargs):
    """Show a command, run it, fail the demo when it fails."""
    shown = ' '.join(a if re.match(r'^[\w@%+=:,./-]+$', a) else
                     "'%s'" % a for a in argv)
    print('$ %s' % shown, flush=True)
    res = subprocess.run(list(argv), stdout=subprocess.PIPE, text=True,
                         cwd='/', **kwargs)
    if res.stdout:
        print(res.stdout, end='' if res.stdout.endswith('\n') else '\n',
              flush=True)
    if res.returncode != 0:
        sys.exit('demo: the command above failed (exit %d)'
                 % res.returncode)
    return res.stdout


def _host(data):
    """A ``build`` for :func:`tests.lib.xenserver.bed.prepare`: a host
    with an ext SR and the running BIOS VM ``VM``, one NIC and one disk of
    DISK_MIB whose first MiBs hold the guest (only its non-zero MiBs
    written, as a thin VDI holds them)."""
    writes = [(off, data[off:off + MiB]) for off in range(0, len(data), MiB)
              if data[off:off + MiB].count(0) != len(data[off:off + MiB])]

    def build(root):
        b = xhost.HostBuilder(root)
        local = b.add_sr('Local storage', 'ext')
        net = b.add_network('Pool-wide network associated with eth0',
                            'xenbr0')
        facts = {'vm': b.add_vm(VM, disks=((DISK_MIB * MiB, 'system'),),
                                sr=local, nics=(net,), firmware='bios',
                                vcpus=1, memory=512 * MiB,
                                disk_writes={0: writes}),
                 'models': b.models}
        b.save()
        return b.root, facts
    return build


def _wait_available(volume):
    """Wait until the volume is detached from the deleted server."""
    for _ in range(150):
        res = subprocess.run(['openstack', 'volume', 'show', volume, '-f',
                              'value', '-c', 'status'], cwd='/',
                             stdout=subprocess.PIPE, text=True)
        if res.stdout.strip() in ('available', 'error', ''):
            return
        time.sleep(2)


def main(work, mount_base):
    missing = guestbuild.missing_tools()
    if missing:
        sys.exit('demo: cannot build the test guest, missing: %s'
                 % ', '.join(missing))
    os.makedirs(work, exist_ok=True)
    step('a bootable guest disk (Debian kernel, busybox), %d MiB, named as'
         ' a Xen PV guest (root=/dev/xvda1, console=hvc0)' % GUEST_MIB)
    guest = os.path.join(work, 'guest.raw')
    token0 = guestbuild.nova_guest(guest, size_mib=GUEST_MIB, xen=True)
    with open(guest, 'rb') as f:
        data = f.read()
    at = [m.start() for m in re.finditer(re.escape(token0.encode()), data)]
    assert len(at) == 1, at
    at = at[0]
    print('the guest prints its token on the console at boot: %s' % token0)

    step('a XenServer host (stand-in xe, real VHD files) behind a real sshd'
         ' on 127.0.0.1; the VM %s runs there' % VM)
    directory = os.path.join(work, 'xenserver')
    root, facts, bin_dir, conf = xbed.prepare(directory, _host(data))
    os.unlink(guest)
    server = sshd.SshServer(os.path.join(directory, 'sshd'),
                            env={'PATH': os.pathsep.join([
                                str(bin_dir),
                                os.path.dirname(sys.executable),
                                '/usr/bin', '/bin']),
                                xhost.ENV: str(root)})
    server.start()
    try:
        _migrate(work, mount_base, root, facts, server, conf, at)
    finally:
        server.stop()


def _migrate(work, mount_base, root, facts, server, conf, at):
    location = xbed.location(server, VM)
    ssh = [str(a) for a in xbed.ssh_args(server, conf)]
    print('host key pinned in %s (never accepted on first sight)'
          % server.known_hosts)
    state = ['--state-db', 'sqlite:///%s' % os.path.join(work, 'state.db')]
    common = ssh + state
    name = 'demo-' + VM

    step('what any2kvm sees of the VM over SSH')
    run('any2kvm', 'info', location, *ssh)

    step('create the migration: one Cinder volume per disk')
    run('any2kvm', 'migration', 'create', name, location, '--target',
        'cinder', '--brick-mount-point-base', mount_base, *common)
    m = json.loads(run('any2kvm', 'migration', 'show', name, '--format',
                       'json', *state))
    volumes = [d['target_ref'] for d in m['disks']]
    writers = [xhost.GuestWriter(root, d['source_id'],
                                 facts['models'][d['source_id']])
               for d in m['disks']]
    server_id = None
    try:
        step('first sync, while the VM runs: snapshot, copy the allocated'
             ' blocks')
        run('any2kvm', 'migration', 'sync', name, '--no-progress', *common)

        step('the guest keeps writing: a new token, 3 MiB past its partition;'
             ' sync again'
             ' (only what changed crosses the wire)')
        writers[0].write(at, uuid.uuid4().hex.encode())
        writers[0].write((GUEST_MIB + 2) * MiB, os.urandom(3 * MiB))
        run('any2kvm', 'migration', 'sync', name, '--no-progress', *common)

        step('before the window: the volume read back and compared, byte'
             ' for byte, with the disk read again from the host')
        run('any2kvm', 'migration', 'verify', name, '--no-progress',
            *common)

        token = uuid.uuid4().hex
        writers[0].write(at, token.encode())
        step('last write before the window (token %s), then the cutover:'
             ' shut down, last delta, guest fix, Nova server, boot proof'
             % token)
        out = run('any2kvm', 'migration', 'cutover', name, '--fix',
                  '--create-server', '--flavor', 'auto', '--no-network',
                  '--boot-check', guestbuild.ready_line(token),
                  '--boot-timeout', str(BOOT_TIMEOUT), '--timeout', '300',
                  '--format', 'json', '--no-progress', *common)
        r = json.loads(out)
        server_id = r['details']['server_id']
        print('downtime %.2f s, from the shutdown request until the new'
              ' server had booted: the last delta took %.2f s, the guest'
              ' fix %.2f s (fixed: %s), the server and its boot %.2f s'
              ' (TCG here, no KVM)'
              % (r['downtime'], r['phases']['apply'], r['phases']['fix'],
                 r['details'].get('fixed'), r['phases']['server']))

        step('the server, and its console')
        run('openstack', 'server', 'show', server_id, '-c', 'name', '-c',
            'status', '-c', 'flavor', '-c', 'volumes_attached')
        console = run('openstack', 'console', 'log', 'show', server_id)
        ready = [line for line in console.splitlines()
                 if guestbuild.READY in line]
        if not ready or any(token not in line for line in ready):
            sys.exit('demo: the console does not show the last token')
        print('OK: the migrated VM booted from its volume and read the'
              ' last write made before the shutdown')
        run('any2kvm', 'migration', 'show', name, *state)
    finally:
        step('clean up: the server and its volume')
        if server_id:
            subprocess.run(['openstack', 'server', 'delete', '--wait',
                            server_id], cwd='/')
        for vol in volumes:
            _wait_available(vol)
            subprocess.run(['openstack', 'volume', 'delete', vol], cwd='/')


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__.split('Usage')[1].split('Exits')[0].strip())
    main(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]))
