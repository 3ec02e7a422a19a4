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

"""Running the ``any2kvm`` command in a subprocess and judging its result."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

CLI_TIMEOUT = 300
ERROR_PREFIX = 'any2kvm: error: '


def basename(name):
    """A layer's name as ``info`` reports it, reduced to the file/member name.

    The contract says "member or file name"; a full path, or a ``./``
    member prefix, is accepted and reduced.
    """
    return os.path.basename(name)


def cli_command():
    script = Path(sys.executable).parent / 'any2kvm'
    if script.exists():
        return [str(script)]
    found = shutil.which('any2kvm')
    if found:
        return [found]
    return [sys.executable, '-m', 'any2kvm_os.cmd.any2kvm']


def run_any2kvm(*args, module=False, timeout=CLI_TIMEOUT):
    cmd = ([sys.executable, '-m', 'any2kvm_os.cmd.any2kvm'] if module
           else cli_command())
    cmd += [str(a) for a in args]
    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    env['LC_ALL'] = 'C.UTF-8'
    res = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=timeout, env=env, cwd='/')
    res.cmdline = ' '.join(cmd)
    return res


def describe(res):
    return ('command: %s\nexit: %s\n--- stdout ---\n%s\n--- stderr ---\n%s'
            % (res.cmdline, res.returncode, res.stdout[-4000:],
               res.stderr[-4000:]))


def convert(source, output, *extra):
    """Run a conversion that must succeed; returns the output path."""
    res = run_any2kvm('convert', source, output, *extra)
    assert res.returncode == 0, describe(res)
    assert Path(output).exists(), describe(res)
    return Path(output)


def info(source, *extra):
    res = run_any2kvm('info', source, '--format', 'json', *extra)
    assert res.returncode == 0, describe(res)
    try:
        return json.loads(res.stdout)
    except ValueError:
        raise AssertionError('info did not print JSON\n' + describe(res))


def assert_refused(res, output=None, names=(), problem=None,
                   leftovers=None):
    """The contract for bad input.

    exit 1; exactly one stderr line ``any2kvm: error: ...`` naming one of
    ``names`` and matching the ``problem`` regex; no traceback; ``output``
    not created; its directory holds exactly ``leftovers`` (default: nothing).
    """
    text = describe(res)
    assert res.returncode == 1, 'expected exit 1\n' + text
    assert 'Traceback' not in res.stderr + res.stdout, text
    lines = res.stderr.strip('\n').splitlines()
    assert len(lines) == 1, 'expected exactly one stderr line\n' + text
    line = lines[0]
    assert line.startswith(ERROR_PREFIX), text
    if names:
        assert any(str(n) in line for n in names), (
            'error does not name any of %r\n%s' % (list(names), text))
    if problem:
        assert re.search(problem, line, re.I), (
            'error does not say /%s/\n%s' % (problem, text))
    print('refusal: %s' % line)      # shown with pytest -rP
    if output is not None:
        output = Path(output)
        assert not os.path.lexists(output), 'output left behind\n' + text
        present = sorted(os.listdir(output.parent))
        assert present == sorted(leftovers or []), (
            'stray files beside the output: %r\n%s' % (present, text))
    return line


def convert_in_process(source, output, scratch=None):
    """``convert`` of the first disk of ``source`` in this process (no
    start-up of the command): the one-line error, or None once ``output``
    is written.  ``scratch``: the scratch directory, if not the default."""
    from any2kvm_os.containers import registry
    from any2kvm_os import exception
    from any2kvm_os import limits as a2k_limits
    from any2kvm_os.writers import raw
    limits = (a2k_limits.Limits() if scratch is None
              else a2k_limits.Limits(scratch_dir=str(scratch)))
    try:
        vm = registry.open_path(str(source), limits)
        try:
            raw.write_file(vm.disks[0], str(output))
        finally:
            vm.close()
    except exception.Any2KvmError as e:
        return str(e)
    return None


def refused_alike(sources, output, scratch=None):
    """Convert each of ``sources`` in this process
    (:func:`convert_in_process`): each must be refused in one line,
    writing nothing.  Returns the set of those lines, each with its
    source's path as ``ARCHIVE``: one line when they are refused alike."""
    lines = set()
    for source in sources:
        line = convert_in_process(source, output, scratch)
        assert line is not None and '\n' not in line, line
        assert not os.path.lexists(output)
        lines.add(line.replace(str(source), 'ARCHIVE'))
    return lines


def on_a_terminal(argv, env, cwd, timeout=300, answers=None,
                  stdin_tty=False):
    """Run ``argv`` with stdout and stderr (and, with ``stdin_tty``,
    stdin, as its controlling terminal: what getpass reads) on a
    pseudo-terminal; ``answers`` {prompt bytes: reply bytes}, each typed
    once its prompt is printed.  Returns (exit status, everything
    printed, the prompts answered)."""
    import fcntl
    import pty
    import select
    import termios
    import time
    master, slave = pty.openpty()
    kwargs = {}
    if stdin_tty:
        kwargs['preexec_fn'] = lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    try:
        proc = subprocess.Popen(
            argv, stdin=slave if stdin_tty else subprocess.DEVNULL,
            stdout=slave, stderr=slave, env=env, cwd=str(cwd),
            start_new_session=True, **kwargs)
    finally:
        os.close(slave)
    answers = dict(answers or {})
    answered = []
    text = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:     # EIO: every writer has closed the terminal
                break
            if not data:
                break
            text += data
            for prompt in [p for p in answers if p in text]:
                os.write(master, answers.pop(prompt))
                answered.append(prompt)
        status = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return status, text.decode('utf-8', 'replace'), answered


def byte_compile(tree):
    """Byte-compile the ``any2kvm_os`` package of the checkout ``tree``,
    as an installed package is; the line a benchmark prints of it.

    pip byte-compiles what it installs, and Python writes the bytecode
    of a source tree at its first import, unless PYTHONDONTWRITEBYTECODE
    is set (as on the hosts these benchmarks were written on): there
    every run compiled again the modules it imports (a migration sync
    about 0.1 s of wall time, a conversion about 0.1 s of CPU), which an
    installed any2kvm never pays.  compileall writes the ``__pycache__``
    directories whatever that variable says; the interpreter then reads
    them."""
    pkg = os.path.join(str(tree), 'any2kvm_os')
    r = subprocess.run([sys.executable, '-m', 'compileall', '-q', pkg],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    return '  bytecode  %s: %s' % (
        pkg, 'compiled' if r.returncode == 0 else
        'compileall failed: %s' % r.stdout.strip()[-200:])
