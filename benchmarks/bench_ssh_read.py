#!/usr/bin/env python3
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

"""Reading one remote file over SSH: any2kvm's pipelined SFTP reader
against OpenSSH ``scp``, over loopback and over links with long round
trips.

A real sshd on 127.0.0.1 (tests/lib/sshd.py) serves a ``--size-mib``
(512) file of random bytes.  Each link is timed ``--runs`` (3) times,
the variants interleaved, best run kept:

* ``scp`` of the file to a local file;
* ``any2kvm``: :class:`any2kvm_os.ssh.remotefile.RemoteFile` with the
  whole file announced (``will_read``, as a chain copy announces its
  extents), read in 4 MiB preads written to a local file;
* ``any2kvm without read-ahead``: the same preads, nothing announced.

Links: loopback; the delay proxy of tests/lib/delayproxy.py with 0 ms
(its own cost) and with ``--rtt-ms`` (50) round trips (``tc netem`` is
not needed).  ``sync`` runs before each timed run and is timed with
it.  Printed: MiB/s of each, the ratio any2kvm/scp per link, and bytes
over the wire / bytes wanted.  Exit status 0 when every read returned
the file's bytes, 1 otherwise, 2 for a set-up error.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from any2kvm_os.ssh import connection as conn_mod  # noqa: E402
from any2kvm_os.ssh import options  # noqa: E402
from tests.lib import delayproxy  # noqa: E402
from tests.lib import sshd as sshd_lib  # noqa: E402

MiB = 1 << 20
CHUNK = 4 * MiB


def timed_sync(start):
    subprocess.run(['sync'], check=True)
    return time.monotonic() - start


def run_scp(server, port, path, dest):
    if os.path.exists(dest):
        os.unlink(dest)
    subprocess.run(['sync'], check=True)
    start = time.monotonic()
    subprocess.run(
        ['scp', '-q', '-P', str(port), '-i', str(server.client_key),
         '-o', 'UserKnownHostsFile=%s' % server.known_hosts,
         '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes',
         '-o', 'HostKeyAlias=%s' % server.known_hosts_name,
         '%s@127.0.0.1:%s' % (server.user, path), dest], check=True)
    return timed_sync(start), None


def run_any2kvm(server, port, path, dest, ahead):
    if os.path.exists(dest):
        os.unlink(dest)
    ho = options.HostOptions('127.0.0.1', port=port, user=server.user,
                             identity_file=str(server.client_key),
                             known_hosts=str(server.known_hosts))
    if port != server.port:
        # Through the proxy: the known_hosts entry is the server's.
        ho = options.HostOptions('127.0.0.1', port=port, user=server.user,
                                 identity_file=str(server.client_key),
                                 host_keys=[server.fingerprint],
                                 known_hosts=str(server.known_hosts))
    subprocess.run(['sync'], check=True)
    start = time.monotonic()
    with conn_mod.Connection(ho, environ={}) as c:
        f = c.open_file(path)
        if ahead:
            f.will_read([(0, f.size)])
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for off in range(0, f.size, CHUNK):
                os.pwrite(fd, f.pread(CHUNK, off), off)
        finally:
            os.close(fd)
        wire = f.bytes_read / f.size
        f.close()
    return timed_sync(start), wire


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(MiB), b''):
            h.update(block)
    return h.hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size-mib', type=int, default=512)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--rtt-ms', type=float, default=50.0)
    parser.add_argument('--work-dir', default=None,
                        help='where the file and copies go (a temporary '
                             'directory by default)')
    args = parser.parse_args(argv)
    why = sshd_lib.available() or (None if shutil.which('scp')
                                   else 'scp not found')
    if why:
        print('cannot run: %s' % why, file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix='bench-ssh-read-', dir=args.work_dir)
    ok = True
    try:
        server = sshd_lib.SshServer(os.path.join(work, 'sshd')).start()
        try:
            path = os.path.join(work, 'remote.bin')
            with open(path, 'wb') as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(MiB))
            size = args.size_mib * MiB
            want = sha256(path)
            dest = os.path.join(work, 'copy.bin')
            links = [('loopback', None), ('proxy, 0 ms', 0.0),
                     ('proxy, %g ms round trips' % args.rtt_ms,
                      args.rtt_ms / 1000.0)]
            variants = [('scp', lambda p: run_scp(server, p, path, dest)),
                        ('any2kvm', lambda p: run_any2kvm(
                            server, p, path, dest, True)),
                        ('any2kvm without read-ahead',
                         lambda p: run_any2kvm(server, p, path, dest,
                                               False))]
            print('file: %d MiB; best of %d runs, variants interleaved; '
                  'load average %s' % (args.size_mib, args.runs,
                                       os.getloadavg()))
            rows = []
            for label, rtt in links:
                proxy = None
                port = server.port
                if rtt is not None:
                    proxy = delayproxy.DelayProxy(
                        ('127.0.0.1', server.port), rtt=rtt)
                    port = proxy.port
                try:
                    best = {}
                    wires = {}
                    for _ in range(args.runs):
                        for name, run in variants:
                            seconds, wire = run(port)
                            if sha256(dest) != want:
                                print('%s over %s: WRONG BYTES'
                                      % (name, label))
                                ok = False
                            best[name] = min(best.get(name, seconds),
                                             seconds)
                            if wire is not None:
                                wires[name] = wire
                finally:
                    if proxy is not None:
                        proxy.close()
                mbs = {n: size / MiB / s for n, s in best.items()}
                rows.append((label, mbs, wires))
                print('%s: scp %.1f MiB/s, any2kvm %.1f, without '
                      'read-ahead %.1f; any2kvm/scp %.2f; bytes over the '
                      'wire / bytes wanted %.4f' % (
                          label, mbs['scp'], mbs['any2kvm'],
                          mbs['any2kvm without read-ahead'],
                          mbs['any2kvm'] / mbs['scp'],
                          wires.get('any2kvm', 0)), flush=True)
            print()
            print('| link | scp MiB/s | any2kvm | without read-ahead | '
                  'any2kvm/scp | wire/wanted |')
            print('|---|---|---|---|---|---|')
            for label, mbs, wires in rows:
                print('| %s | %.1f | %.1f | %.1f | %.2f | %.4f |' % (
                    label, mbs['scp'], mbs['any2kvm'],
                    mbs['any2kvm without read-ahead'],
                    mbs['any2kvm'] / mbs['scp'], wires.get('any2kvm', 0)))
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
