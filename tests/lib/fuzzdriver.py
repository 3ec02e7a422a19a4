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

"""Runs ``any2kvm info`` and ``convert`` on mutated files, in one process.

Used by tests/functional/test_fuzz.py as ``python fuzzdriver.py SPEC``:
SPEC is a JSON file ``{"work": DIR, "inputs": [PATH, ...]}``.  For each
input the command's ``main()`` is called in this process (a new process
per mutant would cost a second each on a loaded machine); stderr is
captured.  Before each input a line ``{"start": PATH}`` is printed, after
it a line with the result: exit codes, stderr, an exception that escaped
``main()`` (a bug: main must turn every error into a one-line message),
and what was left in the output and temporary directories; at the end a
line ``{"done": N, "maxrss_kib": K}`` with the process's peak RSS.  The
parent bounds the whole run with a timeout, and knows from the last
``start`` line which input hung.
"""

import io
import json
import os
import shutil
import sys
import tempfile
import traceback


def _run(main, argv):
    """(exit status, stderr, escaped traceback); stdout is dropped."""
    err = io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = io.StringIO(), err
    escaped = None
    try:
        rc = main(argv)
    except BaseException:
        rc = None
        escaped = traceback.format_exc()
    finally:
        sys.stdout, sys.stderr = saved
    return rc, err.getvalue(), escaped


def _sha256(path):
    import hashlib
    h = hashlib.sha256()
    try:
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _peak_rss_kib():
    """This process's peak RSS (VmHWM).  Not getrusage's ru_maxrss: Linux
    keeps that across execve, so it would report the forking pytest's
    size when that was larger."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    work = spec['work']
    tmp = os.path.join(work, 'tmp')
    os.makedirs(tmp, exist_ok=True)
    # Every temporary file of the command goes here: it must stay empty.
    os.environ['TMPDIR'] = tmp
    tempfile.tempdir = None
    os.environ.setdefault('ANY2KVM_INSPECT', '0')
    from any2kvm_os.cmd import any2kvm
    for n, path in enumerate(spec['inputs']):
        print(json.dumps({'start': path}), flush=True)
        out = os.path.join(work, 'out-%d' % n)
        os.makedirs(out)
        result = {'input': path}
        rc, err, escaped = _run(any2kvm.main, ['info', path, '--format',
                                               'json'])
        result['info'] = {'rc': rc, 'stderr': err, 'escaped': escaped}
        rc, err, escaped = _run(any2kvm.main, [
            'convert', path, os.path.join(out, 'disk.raw')])
        result['convert'] = {'rc': rc, 'stderr': err, 'escaped': escaped}
        if rc == 0:
            result['sha256'] = _sha256(os.path.join(out, 'disk.raw'))
        left = sorted(os.listdir(out))
        if rc == 0:
            left = [n for n in left if not n.endswith('.raw')]
        result['left_in_output'] = left
        result['left_in_tmp'] = sorted(os.listdir(tmp))
        shutil.rmtree(out, ignore_errors=True)
        for name in os.listdir(tmp):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        print(json.dumps(result), flush=True)
    print(json.dumps({'done': len(spec['inputs']),
                      'maxrss_kib': _peak_rss_kib()}), flush=True)


if __name__ == '__main__':
    main()
