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

"""The worker process of :mod:`.procread` (which starts it as
``python -m any2kvm_os.migration.procworker``): it imports only what it
needs (a Python start is part of every worker's cost).  See
:mod:`.procread` for the protocol."""

import collections
import json
import logging
import os
import select
import sys
import time

from any2kvm_os import exception
from any2kvm_os.formats import base
from any2kvm_os.writers import raw

#: Batches a worker holds (it asks for the next one's bytes ahead while
#: it reads this one).
AHEAD = 2


class _Output(object):
    """JSON lines on the protocol's descriptor (one writer at a time)."""

    def __init__(self, fd):
        import threading
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, message):
        data = (json.dumps(message) + '\n').encode()
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]


class _LogForward(logging.Handler):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def emit(self, record):
        try:
            self.out.send({'log': record.levelno,
                           'msg': record.getMessage()})
        except Exception:  # the command is gone
            pass


class _Input(object):
    """JSON lines from the command (standard input)."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b''
        self.eof = False
        #: Messages read ahead and put back (:meth:`_Lease.check`).
        self.backlog = collections.deque()

    def get(self, wait):
        """The next message; None when none came (``wait`` False) or the
        input ended."""
        if self.backlog:
            return self.backlog.popleft()
        while b'\n' not in self.buf:
            if self.eof:
                return None
            if not wait:
                ready, _, _ = select.select([self.fd], [], [], 0)
                if not ready:
                    return None
            data = os.read(self.fd, 1 << 16)
            if not data:
                self.eof = True
                return None
            self.buf += data
        line, self.buf = self.buf.split(b'\n', 1)
        return json.loads(line)


def _connection(setup):
    if 'invoke' not in sys.modules:
        # paramiko imports invoke (and with it unittest.mock: 0.1 s of a
        # worker's start) for the "Match exec" of ssh_config files only,
        # which no connection of ours reads.
        sys.modules['invoke'] = None
    from any2kvm_os.ssh import connection
    from any2kvm_os.ssh import options

    host = options.HostOptions(**setup['host'])
    settings = options.Settings()
    settings.__dict__.update(setup['settings'])
    return connection.Connection.beside(host, settings, setup.get('password'),
                                        setup.get('jump_password'))


def _check_identity(conn, rf, f):
    """The VHD file ``f`` names is still the layer the chain found there
    (its unique id, from the footer copy at offset 0, or the footer at
    the end): a file renamed in between (SM's GC gives a coalesced leaf's
    name to its parent) is refused, never read as the other layer."""
    from any2kvm_os.formats import vhd
    found = vhd.footer_identity(rf.pread(vhd.FOOTER_SIZE, 0))
    if found != f['identity'] and rf.size >= vhd.FOOTER_SIZE:
        # A fixed VHD has no copy at 0 (its guest's data may look like
        # one): the footer at the end then.
        found = vhd.footer_identity(rf.pread(vhd.FOOTER_SIZE,
                                             rf.size - vhd.FOOTER_SIZE)) \
            or found
    if found != f['identity']:
        raise exception.SshError(
            host=conn.label, reason='%s: holds %s, where the chain read '
            'found %s (renamed since: SM\'s garbage collection?)'
            % (f['path'], 'VHD %s' % found if found else 'no VHD',
               f['identity']))


def _serve(inp, out, setup):
    conn = _connection(setup)
    try:
        conn.connect()
        files = []
        for f in setup['files']:
            rf = conn.open_file(f['path'], name=f['name'],
                                size=f['size'] if f.get('device') else None)
            files.append(rf)
            if rf.size != f['size']:
                raise exception.SshError(
                    host=conn.label, reason='%s: size changed from %d to '
                    '%d bytes since the chain was read' % (
                        f['path'], f['size'], rf.size))
            if f.get('identity'):
                _check_identity(conn, rf, f)
        out.send({'ready': True})
        t = setup['target']
        writer = raw.RawWriter(t['path'], t['fd'], fresh=False,
                               is_block=t['is_block'],
                               durable=t['durable'])
        writer._zero_modes = list(t['zero_modes'])
        if t.get('direct'):
            writer.direct_io()
        over_hole = setup['over_hole']
        lease = _Lease(setup.get('lease'))
        queue = collections.deque()
        ended = False
        while True:
            # Take what came (waiting only with nothing to do), and ask
            # for each new batch's bytes ahead.
            while not ended and len(queue) < AHEAD:
                m = inp.get(wait=not queue)
                if m is None:
                    if inp.eof:
                        return False   # the command is gone
                    break
                if lease.take(m):
                    continue
                if m.get('end'):
                    ended = True
                    break
                queue.append(m)
                announce(files, m['runs'])
            if not queue:
                break
            m = queue.popleft()
            for k, file_offset, length, offset in m['runs']:
                data = files[k].pread(length, file_offset)
                base.check_read(files[k].name, len(data), length,
                                file_offset)
                lease.check(inp)
                writer.write_data(offset, data, over_hole=over_hole)
            out.send({'done': m['batch'], 'wire': conn.bytes_read})
        writer._stop_flusher()
        for rf in files:
            rf.close()
        out.send({'bye': True, 'wire': conn.bytes_read})
        return True
    finally:
        conn.close()


class _Lease(object):
    """The command's lease, as far as this worker knows it: the time
    its writes may go on until (``until`` of each batch, and of the
    ``{"until": t}`` the command sends when it renewed the lease: its
    :class:`~any2kvm_os.migration.state.api.Fence`).  Past it, the
    command was stopped or could not renew: nothing more is written."""

    def __init__(self, lease):
        self.lease = lease
        self.until = None

    def take(self, m):
        """Note ``m``'s ``until``; True when that is all ``m`` says."""
        until = m.get('until')
        if until is not None and (self.until is None or until > self.until):
            self.until = until
        return until is not None and 'batch' not in m

    def check(self, inp):
        if self.until is None or time.time() < self.until:
            return
        # A renewal may wait in the input, behind batches: those are
        # put back, in order.
        kept = []
        while True:
            m = inp.get(wait=False)
            if m is None:
                break
            if not self.take(m):
                kept.append(m)
        inp.backlog.extend(kept)
        if time.time() < self.until:
            return
        raise exception.LeaseLost(
            name=self.lease.get('name'), operation=self.lease.get(
                'operation'), reason='it was not renewed in time: the '
            'command was stopped, or cut from its database')


def announce(files, runs):
    spans = collections.defaultdict(list)
    for k, file_offset, length, _offset in runs:
        spans[k].append((file_offset, length))
    for k, ranges in spans.items():
        files[k].will_read(ranges)


def run_worker(inp, out):
    """A worker's life: the set-up from ``inp`` (an :class:`_Input`),
    its batches read and written, its messages on ``out``; the exit
    status (an error is sent as one line first)."""
    setup = inp.get(wait=True)
    if setup is None:
        return 1
    handler = _LogForward(out)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(setup.get('log_level') or logging.WARNING)
    try:
        return 0 if _serve(inp, out, setup) else 1
    except Exception as e:
        if isinstance(e, (exception.Any2KvmError, exception.LeaseLost)):
            text, kind = str(e), type(e).__name__
        elif isinstance(e, OSError) and e.strerror:
            text = str(exception.TargetError(path=setup['target']['path'],
                                             reason=e.strerror))
            kind = 'TargetError'
        else:
            text, kind = '%s: %s' % (type(e).__name__, e), None
        out.send({'error': ' '.join(text.split()), 'kind': kind})
        return 1
    finally:
        root.removeHandler(handler)


#: prctl(2)'s option: a signal when the parent dies.
PR_SET_PDEATHSIG = 1


def die_with(parent):
    """Be killed (SIGKILL) when the command ``parent`` (a pid) dies,
    however it dies: a worker left behind by a ``kill -9`` would go on
    writing the batches it holds, over what the next sync writes.  A
    command already gone is not waited for."""
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass        # not Linux: the input's end still stops it
    if parent and os.getppid() != parent:
        os._exit(1)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    die_with(int(argv[0]) if argv else None)
    # The protocol's output on a descriptor of its own; anything printed
    # by mistake goes to standard error.
    out = _Output(os.dup(1))
    os.dup2(2, 1)
    return run_worker(_Input(0), out)


if __name__ == '__main__':
    sys.exit(main())
