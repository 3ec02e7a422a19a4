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

"""Throwaway PostgreSQL and MariaDB servers for the state database tests.

Each server is made in a private directory (its data, socket and log),
listens on 127.0.0.1 only, on a free port, and is stopped and removed by
:meth:`stop`.  Neither server runs as root: when the tests do, the server
runs as the user the Debian package made (``postgres``, ``mysql``).

The tests reach them as an unprivileged user with a password
(:data:`USER`, :data:`PASSWORD`), over TCP, with the grants the
documentation asks for (doc/source/admin/state-database.rst): all
privileges on its own database, nothing else.  :meth:`new_database`
gives a new, empty one per test.
"""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

#: The unprivileged user the tests give the state database to.
USER = 'any2kvm'
#: Its password: a made-up one, for servers that live as long as a test
#: session, on 127.0.0.1.
PASSWORD = 'sTate-Pw-4-tests'
#: How long a server may take to start (a loaded 2-core machine).
START_TIMEOUT = 180.0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _scratch():
    """Where a server keeps its data: /dev/shm when it has room (a
    tmpfs: the syncs of MariaDB's every DDL statement cost nothing
    there), else the temporary directory."""
    try:
        st = os.statvfs('/dev/shm')
        if st.f_bavail * st.f_frsize >= 1 << 30 and \
                os.access('/dev/shm', os.W_OK | os.X_OK):
            return '/dev/shm'
    except OSError:
        pass
    return None


def _find(name, patterns=()):
    found = shutil.which(name)
    if found:
        return found
    for pattern in patterns:
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[-1]
    return None


class _Server(object):
    #: The system user a server runs as when the tests run as root.
    system_user = None
    name = None

    def __init__(self):
        self.top = None
        self.port = None
        self.as_user = []
        self._count = 0

    def _make_top(self):
        self.top = tempfile.mkdtemp(prefix='any2kvm-%s-' % self.name,
                                    dir=_scratch())
        os.chmod(self.top, 0o700)
        # The client's password files: ours, not the server's.
        self.client_dir = tempfile.mkdtemp(prefix='any2kvm-%s-client-'
                                           % self.name)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(self.system_user)  # KeyError: not installed
            os.chown(self.top, pw.pw_uid, pw.pw_gid)
            self.as_user = ['runuser', '-u', self.system_user, '--']

    def _run(self, argv, timeout=START_TIMEOUT):
        r = subprocess.run(self.as_user + argv, capture_output=True,
                           text=True, timeout=timeout, cwd=self.top,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError('%s failed (%d): %s%s' % (
                ' '.join(argv[:1]), r.returncode, r.stderr[-2000:],
                self._log_tail()))
        return r

    def _log_tail(self):
        try:
            with open(os.path.join(self.top, 'log')) as f:
                return '\n' + f.read()[-3000:]
        except OSError:
            return ''

    def new_database(self, password=False):
        """The SQLAlchemy URL of a new, empty database that :data:`USER`
        owns: without the password unless ``password`` (see
        :meth:`url`)."""
        self._count += 1
        name = 'any2kvm_t%d' % self._count
        self._create_database(name)
        return self.url(name, password=password)

    def url(self, database, password=True):
        """The URL of ``database`` for :data:`USER`, with the password in
        it, or without (``password=False``: the driver reads it from
        the file of :meth:`client_env` or of the URL's query)."""
        return '%s://%s%s@127.0.0.1:%d/%s%s' % (
            self.scheme, USER, (':' + PASSWORD) if password else '',
            self.port, database, '' if password else self._query())

    def _query(self):
        return ''

    def client_env(self):
        """The environment a client needs for a URL without password."""
        return {}

    def _private_file(self, name, text):
        path = os.path.join(self.client_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        return path

    def _admin_engine(self):
        import sqlalchemy as sa
        return sa.create_engine(self.admin_url(), poolclass=sa.pool.NullPool,
                                isolation_level='AUTOCOMMIT')

    def _admin(self, *statements):
        engine = self._admin_engine()
        try:
            with engine.connect() as c:
                for s in statements:
                    c.exec_driver_sql(s)
        finally:
            engine.dispose()

    def _wait_ready(self, proc=None):
        import sqlalchemy as sa
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError('%s exited (%s)%s' % (
                    self.name, proc.returncode, self._log_tail()))
            engine = self._admin_engine()
            try:
                with engine.connect() as c:
                    c.exec_driver_sql('SELECT 1')
                return
            except sa.exc.OperationalError as e:
                last = e
            finally:
                engine.dispose()
            time.sleep(0.5)
        raise RuntimeError('%s did not answer in %ds: %s%s' % (
            self.name, START_TIMEOUT, last, self._log_tail()))


class PostgreSQL(_Server):
    """``initdb`` and ``pg_ctl`` (Debian: /usr/lib/postgresql/*/bin)."""

    name = 'postgresql'
    system_user = 'postgres'
    scheme = 'postgresql+psycopg2'

    @staticmethod
    def missing():
        """Why the server cannot be made here, or None."""
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            return 'psycopg2 is not installed (test-requirements.txt)'
        for tool in ('initdb', 'pg_ctl'):
            if not _find(tool, ['/usr/lib/postgresql/*/bin/' + tool]):
                return '%s not found (Debian package postgresql)' % tool
        if os.geteuid() == 0:
            try:
                pwd.getpwnam('postgres')
            except KeyError:
                return 'running as root and there is no postgres user'
        return None

    def start(self):
        self._make_top()
        self.port = free_port()
        data = os.path.join(self.top, 'data')
        initdb = _find('initdb', ['/usr/lib/postgresql/*/bin/initdb'])
        self.pg_ctl = _find('pg_ctl', ['/usr/lib/postgresql/*/bin/pg_ctl'])
        # The superuser over the private socket only; every TCP
        # connection with a password.
        self._run([initdb, '-D', data, '-U', 'postgres', '--no-sync',
                   '--auth-local=trust', '--auth-host=scram-sha-256',
                   '-E', 'UTF8', '--locale=C.UTF-8'])
        self._run([self.pg_ctl, '-D', data, '-l',
                   os.path.join(self.top, 'log'), '-w', '-t',
                   str(int(START_TIMEOUT)), '-o',
                   "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off "
                   "-c full_page_writes=off -c max_connections=60"
                   % (self.port, self.top), 'start'])
        self._wait_ready()
        self._admin("CREATE ROLE %s LOGIN PASSWORD '%s'" % (USER, PASSWORD))
        self.passfile = self._private_file('pgpass', '127.0.0.1:%d:*:%s:%s\n'
                                           % (self.port, USER, PASSWORD))
        return self

    def client_env(self):
        # libpq's password file (as ~/.pgpass would be).
        return {'PGPASSFILE': self.passfile}

    def admin_url(self):
        return ('postgresql+psycopg2://postgres@/postgres?host=%s&port=%d'
                % (self.top, self.port))

    def _create_database(self, name):
        # Owned by the user: it makes its tables in the public schema
        # (PostgreSQL 15 grants CREATE there to the owner only).
        self._admin('CREATE DATABASE %s OWNER %s' % (name, USER))

    def stop(self):
        if self.top is None:
            return
        try:
            subprocess.run(self.as_user + [
                self.pg_ctl, '-D', os.path.join(self.top, 'data'), '-m',
                'immediate', '-w', '-t', '60', 'stop'],
                capture_output=True, timeout=120, cwd=self.top)
        finally:
            shutil.rmtree(self.top, ignore_errors=True)
            shutil.rmtree(self.client_dir, ignore_errors=True)
            self.top = None


class MariaDB(_Server):
    """``mariadb-install-db`` and ``mariadbd`` (Debian: mariadb-server),
    started with ``--no-defaults``: nothing of the system's
    configuration, so the server's defaults (latin1 among them) are the
    ones the state code must cope with."""

    name = 'mariadb'
    system_user = 'mysql'
    scheme = 'mysql+pymysql'

    @staticmethod
    def _tools():
        return (_find('mariadb-install-db', ['/usr/bin/mysql_install_db']),
                _find('mariadbd', ['/usr/sbin/mariadbd', '/usr/sbin/mysqld']))

    @classmethod
    def missing(cls):
        try:
            import pymysql  # noqa: F401
        except ImportError:
            return 'PyMySQL is not installed (test-requirements.txt)'
        install_db, server = cls._tools()
        if not install_db or not server:
            return ('mariadb-install-db or mariadbd not found (Debian '
                    'package mariadb-server)')
        if os.geteuid() == 0:
            try:
                pwd.getpwnam('mysql')
            except KeyError:
                return 'running as root and there is no mysql user'
        return None

    def start(self):
        self._make_top()
        self.port = free_port()
        install_db, server = self._tools()
        data = os.path.join(self.top, 'data')
        self.socket = os.path.join(self.top, 'sock')
        user = ['--user=%s' % self.system_user] if self.as_user else []
        self._run([install_db, '--no-defaults', '--datadir=%s' % data,
                   '--auth-root-authentication-method=socket',
                   '--skip-test-db', '--skip-name-resolve'] + user)
        self.proc = subprocess.Popen(
            self.as_user + [
                server, '--no-defaults', '--datadir=%s' % data,
                '--socket=%s' % self.socket, '--port=%d' % self.port,
                '--bind-address=127.0.0.1', '--skip-name-resolve',
                '--pid-file=%s' % os.path.join(self.top, 'pid'),
                '--log-error=%s' % os.path.join(self.top, 'log'),
                '--innodb-buffer-pool-size=32M',
                '--innodb-log-file-size=16M',
                '--innodb-flush-log-at-trx-commit=0',
                '--skip-innodb-doublewrite', '--max-connections=60',
                '--skip-log-bin'] + user,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, cwd=self.top,
            start_new_session=True)
        self._wait_ready(self.proc)
        # 127.0.0.1 and localhost: the address the tests connect to, as
        # the server sees it with --skip-name-resolve.
        self._admin(
            "CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s'"
            % (USER, PASSWORD),
            # (%% is the driver's escape of %: a LIKE pattern here.)
            "GRANT ALL PRIVILEGES ON `any2kvm\\_t%%%%`.* TO "
            "'%s'@'127.0.0.1'" % USER)
        self.option_file = self._private_file(
            'my.cnf', '[client]\npassword=%s\n' % PASSWORD)
        return self

    def _query(self):
        # PyMySQL reads the password from a MySQL option file.
        return '?read_default_file=%s' % self.option_file

    def admin_url(self):
        # root over the private socket (unix_socket authentication: the
        # server's own user, which is also who runs this).
        user = self.system_user if self.as_user else pwd.getpwuid(
            os.geteuid()).pw_name
        return 'mysql+pymysql://%s@localhost/?unix_socket=%s' % (
            'root' if os.geteuid() == 0 else user, self.socket)

    def _create_database(self, name):
        self._admin('CREATE DATABASE %s' % name)

    def stop(self):
        if self.top is None:
            return
        try:
            proc = getattr(self, 'proc', None)
            if proc is not None and proc.poll() is None:
                # Its data is thrown away: no clean shutdown to wait for.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=60)
        finally:
            shutil.rmtree(self.top, ignore_errors=True)
            shutil.rmtree(self.client_dir, ignore_errors=True)
            self.top = None


SERVERS = {'postgresql': PostgreSQL, 'mysql': MariaDB}
