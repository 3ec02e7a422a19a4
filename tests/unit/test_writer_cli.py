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

import json
import os
import subprocess
import sys

import pytest

from any2kvm_os.cmd import any2kvm
from any2kvm_os import exception
from any2kvm_os import opts
from any2kvm_os.writers import raw
from tests.lib import vhdbuild

MiB = 1 << 20


def test_zero_runs_aligned_to_disk_grains():
    g = raw.GRAIN
    data = b'\1' * 100 + b'\0' * (3 * g) + b'\2' * 10
    # data starts at disk offset 0: zero grains are [4096, 8192) and
    # [8192, 12288) only; the partial grains around them are data.
    assert raw.zero_runs(data, 0) == [(g, 3 * g)]
    assert raw.zero_runs(data, g - 100) == [(100, 100 + 3 * g)]
    assert raw.zero_runs(b'\0' * (64 * g), 0) == [(0, 64 * g)]
    assert raw.zero_runs(os.urandom(8 * g), 0) == []


def allocated(path):
    return os.stat(path).st_blocks * 512


def test_new_file_is_sparse_and_published_atomically(tmp_path):
    out = tmp_path / 'd.raw'
    t = raw.RawWriter.open(str(out))
    assert t.fresh and not out.exists()
    t.resize(16 * MiB)
    t.write_data(0, b'\0' * (4 * MiB), over_hole=True)
    t.write_data(8 * MiB, b'x' * 4096, over_hole=True)
    t.commit()
    assert out.stat().st_size == 16 * MiB
    assert allocated(out) <= 64 * 1024
    assert [p.name for p in tmp_path.iterdir()] == ['d.raw']
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)


def test_zero_over_data_punches(tmp_path):
    out = tmp_path / 'd.raw'
    t = raw.RawWriter.open(str(out))
    t.resize(8 * MiB)
    t.write_data(0, b'y' * (8 * MiB), over_hole=True)
    t.write_data(0, b'\0' * (4 * MiB), over_hole=False)
    t.commit()
    data = out.read_bytes()
    assert data[:4 * MiB] == b'\0' * (4 * MiB)
    assert data[4 * MiB:] == b'y' * (4 * MiB)
    assert allocated(out) <= 4 * MiB + 64 * 1024


def test_abort_leaves_nothing(tmp_path):
    t = raw.RawWriter.open(str(tmp_path / 'd.raw'))
    t.resize(MiB)
    t.write_data(0, b'z' * 4096, over_hole=True)
    t.abort()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_refused_unless_overwrite(tmp_path):
    out = tmp_path / 'd.raw'
    out.write_bytes(b'old')
    with pytest.raises(exception.TargetError, match='already exists'):
        raw.RawWriter.open(str(out))
    t = raw.RawWriter.open(str(out), overwrite=True)
    t.resize(4096)
    t.commit()
    assert out.read_bytes() == b'\0' * 4096


def test_not_a_file_refused(tmp_path):
    with pytest.raises(exception.TargetError, match='neither'):
        raw.RawWriter.open(str(tmp_path))


# -- CLI ----------------------------------------------------------------------

def vhd_file(tmp_path, name='d.vhd'):
    data, _ = vhdbuild.build(4 * MiB, blocks={1: (None, b'k' * 5000)})
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_info_json(tmp_path, capsys):
    p = vhd_file(tmp_path)
    assert any2kvm.main(['info', '--format', 'json', str(p)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['container'] == 'file' and info['format'] == 'vhd'
    assert info['virtual_size'] == 4 * MiB
    (layer,) = info['chain']
    assert layer['subformat'] == 'dynamic' and layer['parent_id'] is None
    assert layer['allocated_bytes'] == 2 * MiB


def test_info_text(tmp_path, capsys):
    p = vhd_file(tmp_path)
    assert any2kvm.main(['info', str(p)]) == 0
    assert 'dynamic' in capsys.readouterr().out


def test_error_is_one_line_without_traceback(tmp_path):
    p = tmp_path / 'bad.vhd'
    p.write_bytes(b'\0' * 4096)
    r = subprocess.run([sys.executable, '-m', 'any2kvm_os.cmd.any2kvm',
                        'convert', str(p), str(tmp_path / 'o.raw')],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.count('\n') == 1
    assert r.stderr.startswith('any2kvm: error: %s: ' % p)
    assert 'Traceback' not in r.stderr
    assert not (tmp_path / 'o.raw').exists()


def test_debug_shows_traceback(tmp_path):
    p = tmp_path / 'bad.vhd'
    p.write_bytes(b'\0' * 4096)
    r = subprocess.run([sys.executable, '-m', 'any2kvm_os.cmd.any2kvm',
                        '--debug', 'info', str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and 'Traceback' in r.stderr


def test_missing_source(tmp_path, capsys):
    assert any2kvm.main(['info', str(tmp_path / 'nope')]) == 1
    err = capsys.readouterr().err
    assert 'nope' in err and 'No such file' in err


def test_progress_lines(tmp_path, capsys):
    p = vhd_file(tmp_path)
    assert any2kvm.main(['convert', '--progress', str(p),
                         str(tmp_path / 'o.raw')]) == 0
    err = capsys.readouterr().err
    assert '100.0%' in err and 'done:' in err


def test_list_opts_names_every_option():
    groups = dict(opts.list_opts())
    assert set(groups) == {'any2kvm', 'backend_defaults'}
    names = {o.name for o in groups['any2kvm']}
    assert {'max_chain_depth', 'scratch_dir', 'scratch_limit_gib',
            'max_archive_members'} <= names
    # The Cinder hook's options, listed where Cinder lists driver options.
    assert {o.name for o in groups['backend_defaults']} == {
        'any2kvm_wrapped_driver', 'any2kvm_enabled', 'any2kvm_kinds'}
    assert all(o.help for options in groups.values() for o in options)


def test_sample_config_generates(tmp_path):
    out = tmp_path / 'sample.conf'
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable),
                                     'oslo-config-generator'),
                        '--namespace', 'any2kvm_os', '--output-file',
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '[any2kvm]' in out.read_text()
    assert 'max_chain_depth' in out.read_text()


def test_volume_target_keeps_its_size_and_zeroes_dropped_bytes(tmp_path):
    path = tmp_path / 'volume'
    with open(path, 'wb') as f:
        f.truncate(8 << 20)
    target = raw.RawWriter.open_volume(str(path))
    assert (target.capacity, target.fresh) == (8 << 20, True)
    target.resize(4 << 20)
    target.write_data(0, b'x' * (4 << 20), over_hole=True)
    # A child smaller than its parent: the dropped bytes read as zeros.
    target.resize(1 << 20)
    target.resize(2 << 20)
    with pytest.raises(exception.CapacityError,
                       match='holds 8388608 bytes, the disk needs 8388609'):
        target.resize((8 << 20) + 1)
    target.sync()
    target.close()
    data = path.read_bytes()
    assert len(data) == 8 << 20
    assert data == b'x' * (1 << 20) + bytes(7 << 20)


def test_info_shows_vm_facts_as_text_not_python():
    """``info``'s text: a VM's NICs and facts as key=value pairs, not
    Python's repr of a list of dicts."""
    from any2kvm_os.cmd import any2kvm as cmd
    assert cmd._fact_text([{'device': '0', 'mac': 'aa:bb:cc:00:00:01',
                            'network': 'Pool-wide network'},
                           {'device': '1', 'mac': 'aa:bb:cc:00:00:02',
                            'network': 'storage'}]) == (
        'device=0, mac=aa:bb:cc:00:00:01, network=Pool-wide network; '
        'device=1, mac=aa:bb:cc:00:00:02, network=storage')
    assert [cmd._fact_text(v) for v in ({}, [], None, '', 2, 'web')] == [
        '-', '-', '-', '-', '2', 'web']
