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

"""A real OpenSSH server on 127.0.0.1, for the tests of the SSH layer and
of the SSH sources.

:class:`SshServer` runs the system's ``/usr/sbin/sshd -D -e -f <config>``
with everything of its own in one directory: configuration, host key,
authorized_keys of a client key it generates, a known_hosts file naming
it, its log.  It listens on a free port of 127.0.0.1 only, dies with the
test process (even one that is killed: ``PR_SET_PDEATHSIG``), logs in the
user running the tests (root in CI: key logins are allowed for root) and
touches no system file and no system service.  ``env`` sets variables of
every session (``SetEnv``): a later test puts a fake ``xe`` first on the
remote ``PATH`` with ``env={'PATH': '/fake/bin:/usr/bin:/bin'}``.

Use it through the fixtures of tests/conftest.py (``sshd``, one server
for the session; ``sshd_factory``, servers of one test's own), or::

    with SshServer(tmp_path) as server:
        server.host, server.port, server.user, server.client_key,
        server.known_hosts, server.fingerprint
"""

import ctypes
import functools
import getpass
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.lib.tools import missing_tool

SSHD = '/usr/sbin/sshd'
SSH_KEYGEN = 'ssh-keygen'
# The SFTP server a session wrapper execs (Debian's openssh-sftp-server).
SFTP_SERVER = '/usr/lib/openssh/sftp-server'
# sshd running as root needs its privilege separation directory (the
# system package makes it at boot; it is empty and holds no
# configuration).
PRIVSEP_DIR = '/run/sshd'


# prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
_LIBC = None


def _die_with(parent):
    """In the child, before exec (``preexec_fn``): be killed when
    ``parent`` (the test process) dies, however it dies: a pytest run
    killed by a timeout or by hand leaves no sshd behind (an orphan
    listening with parent PID 1).  The setting survives the exec of sshd
    (not set-user-ID).  If ``parent`` is gone already, exit at once."""
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(126)
    if os.getppid() != parent:
        os._exit(1)


def die_with_this_process():
    """A ``preexec_fn`` for a child that must not outlive this process
    (see :func:`_die_with`).  The kernel ties it to the thread that forks:
    start long-lived children from the main thread."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return functools.partial(_die_with, os.getpid())


def available():
    """None when sshd and ssh-keygen can run here, else why not."""
    if not os.access(SSHD, os.X_OK):
        return '%s not found (Debian package openssh-server)' % SSHD
    try:
        subprocess.run([SSH_KEYGEN, '-?'], capture_output=True)
    except OSError:
        return 'ssh-keygen not found (Debian package openssh-client)'
    return None


def require():
    why = available()
    if why:
        missing_tool(why)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def keygen(path, kind='ed25519', comment='any2kvm-test'):
    """A new unencrypted key pair at ``path`` (and ``path``.pub)."""
    path = Path(path)
    for p in (path, Path(str(path) + '.pub')):
        if p.exists():
            p.unlink()
    subprocess.run([SSH_KEYGEN, '-q', '-t', kind, '-N', '', '-C', comment,
                    '-f', str(path)], check=True, capture_output=True)
    return path


def fingerprint(pub_path):
    """``SHA256:...`` of a public key file, as ssh-keygen prints it."""
    out = subprocess.run([SSH_KEYGEN, '-l', '-E', 'sha256', '-f',
                          str(pub_path)], check=True, capture_output=True,
                         text=True).stdout
    return out.split()[1]


def _account_locked(user):
    """Whether sshd without PAM would refuse ``user`` as locked (a
    password field starting with "!")."""
    try:
        with open('/etc/shadow') as f:
            for line in f:
                fields = line.split(':')
                if fields[0] == user:
                    return fields[1].startswith('!')
    except OSError:
        pass
    return False


def _children():
    """{parent pid: [pids of its children]} of every process (/proc)."""
    children = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces.
        ppid = int(stat.rsplit(')', 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


class SshServer(object):
    """One sshd of the tests (see the module's description)."""

    def __init__(self, directory, env=None, password_auth=True,
                 key_type='ed25519', max_startups='100', extra_config=()):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = '127.0.0.1'
        self.port = None
        self.user = getpass.getuser()
        self.env = dict(env or {})
        self.password_auth = password_auth
        self.key_type = key_type
        #: sshd's MaxStartups: beyond this many connections not logged
        #: in yet, sshd drops new ones (a busy hypervisor host's case).
        self.max_startups = max_startups
        #: sshd_config lines before ours (the first value of a keyword
        #: counts): ``LogLevel DEBUG1``, ``AllowTcpForwarding no``.
        self.extra_config = list(extra_config)
        self.host_key = self.dir / ('ssh_host_%s_key' % key_type)
        self.client_key = self.dir / 'client_key'
        self.authorized_keys = self.dir / 'authorized_keys'
        self.known_hosts = self.dir / 'known_hosts'
        self.config = self.dir / 'sshd_config'
        self.log = self.dir / 'sshd.log'
        self.pid_file = self.dir / 'sshd.pid'
        self.wrapper = self.dir / 'session'
        self.process = None
        self._log_file = None
        self._known_port = None

    # -- keys -------------------------------------------------------------

    @property
    def fingerprint(self):
        """The host key's ``SHA256:...``."""
        return fingerprint(str(self.host_key) + '.pub')

    @property
    def known_hosts_name(self):
        return '[%s]:%d' % (self.host, self.port)

    def host_public_key(self):
        return (Path(str(self.host_key) + '.pub')).read_text().split()[:2]

    def write_known_hosts(self, path=None, hashed=False):
        """A known_hosts file naming this server (``[host]:port``),
        hashed with ``ssh-keygen -H`` if asked; returns its path."""
        path = Path(path or self.known_hosts)
        kind, blob = self.host_public_key()
        path.write_text('%s %s %s\n' % (self.known_hosts_name, kind, blob))
        if hashed:
            subprocess.run([SSH_KEYGEN, '-H', '-f', str(path)], check=True,
                           capture_output=True)
            old = Path(str(path) + '.old')
            if old.exists():
                old.unlink()
        return path

    def regenerate_host_key(self):
        """A new host key (the server restarts to offer it); known_hosts
        keeps the old one."""
        running = self.process is not None
        if running:
            self.stop()
        keygen(self.host_key, self.key_type, 'any2kvm-test-host')
        if running:
            self.start(port=self.port)

    # -- life -------------------------------------------------------------

    def _write_config(self):
        lines = self.extra_config + [
            'ListenAddress %s' % self.host,
            'Port %d' % self.port,
            'HostKey %s' % self.host_key,
            'PidFile %s' % self.pid_file,
            'AuthorizedKeysFile %s' % self.authorized_keys,
            # The files are in a temporary directory, under /tmp.
            'StrictModes no',
            'UsePAM %s' % ('yes' if _account_locked(self.user) else 'no'),
            'PubkeyAuthentication yes',
            'PasswordAuthentication %s' % (
                'yes' if self.password_auth else 'no'),
            'KbdInteractiveAuthentication no',
            'PermitRootLogin prohibit-password',
            'Subsystem sftp internal-sftp',
            'PrintMotd no',
            'PrintLastLog no',
            'MaxStartups %s' % self.max_startups,
            'LogLevel VERBOSE',
        ]
        if self.env:
            # Not SetEnv: the user's shell may change what it sets
            # (bash reads ~/.bashrc for commands run by sshd).  The
            # wrapper sets the variables last, then runs the command in
            # sh.
            self._write_wrapper()
            lines.append('ForceCommand %s' % self.wrapper)
            lines[lines.index('Subsystem sftp internal-sftp')] = \
                'Subsystem sftp %s' % SFTP_SERVER
        self.config.write_text('\n'.join(lines) + '\n')

    def _write_wrapper(self):
        exports = ''.join('export %s=%s\n' % (k, shlex.quote(v))
                          for k, v in sorted(self.env.items()))
        self.wrapper.write_text(
            '#!/bin/sh\n'
            '# The session of every connection (ForceCommand): the test\n'
            '# environment, then the command the client asked for.\n'
            + exports +
            'case "$SSH_ORIGINAL_COMMAND" in\n'
            '    %s) exec %s ;;\n'
            '    "") exec /bin/sh ;;\n'
            'esac\n'
            'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n'
            % (SFTP_SERVER, SFTP_SERVER))
        self.wrapper.chmod(0o755)

    def start(self, port=None):
        require()
        if not self.host_key.exists():
            keygen(self.host_key, self.key_type, 'any2kvm-test-host')
        if not self.client_key.exists():
            keygen(self.client_key)
            self.authorized_keys.write_text(
                (Path(str(self.client_key) + '.pub')).read_text())
        if os.geteuid() == 0 and not os.path.isdir(PRIVSEP_DIR):
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        last = None
        for _ in range(5):
            self.port = port or free_port()
            self._write_config()
            if self._known_port != self.port:
                # Not again for the same port: regenerate_host_key keeps
                # the old key in it.
                self.write_known_hosts()
                self._known_port = self.port
            self._log_file = open(self.log, 'ab')
            self.process = subprocess.Popen(
                [SSHD, '-D', '-e', '-f', str(self.config)],
                stdin=subprocess.DEVNULL, stdout=self._log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_this_process())
            try:
                self._wait_ready()
                return self
            except RuntimeError as e:
                last = e
                self.stop()
                if port:
                    break
        raise RuntimeError('sshd did not start: %s' % last)

    def _wait_ready(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError('sshd exited with status %d: %s' % (
                    self.process.returncode, self.log_text()[-2000:]))
            try:
                with socket.create_connection((self.host, self.port),
                                              timeout=1) as s:
                    if s.recv(64).startswith(b'SSH-2.0-'):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError('sshd not answering on port %d: %s'
                           % (self.port, self.log_text()[-2000:]))

    def log_text(self):
        try:
            return self.log.read_text(errors='replace')
        except OSError:
            return ''

    def session_pids(self):
        """The sshd processes serving connections (the listener's
        children)."""
        if self.process is None:
            return []
        return _children().get(self.process.pid, [])

    def kill_sessions(self, sig=signal.SIGKILL):
        """Cut every connection at once (``sig``, SIGKILL by default, to
        the processes serving them); returns how many there were."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(pids)

    def session_tree(self):
        """Every process serving a connection: the listener's children
        and their descendants (the SFTP server among them)."""
        children = _children()
        out = []
        todo = list(self.session_pids())
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, ()))
        return out

    def signal_tree(self, sig, pids=None):
        """Send ``sig`` to ``pids`` (default: :meth:`session_tree`);
        returns them."""
        pids = self.session_tree() if pids is None else pids
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def stop(self):
        process, self.process = self.process, None
        if process is not None:
            # The processes serving connections run in sessions of their
            # own (sshd calls setsid): end them, then the listener's.
            self.process = process
            self.kill_sessions(signal.SIGTERM)
            self.process = None
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return '<SshServer %s@%s>' % (self.user, self.known_hosts_name)
