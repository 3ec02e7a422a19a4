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

import pytest

from any2kvm_os.cmd import any2kvm
from any2kvm_os import exception
from any2kvm_os import incremental
from any2kvm_os.writers import raw
from tests.lib import vhdbuild

MiB = 1 << 20


def test_failure_halfway_names_the_partial_layer_and_reapply_completes(
        tmp_path, capsys, monkeypatch):
    paths = vhdbuild.write_chain(tmp_path, 3)
    want = vhdbuild.expected_raw(tmp_path, paths)
    target = tmp_path / 't.raw'
    assert any2kvm.main(['convert', str(paths[0]), '--onto', str(target),
                         '--stop-at', 'l0.vhd']) == 0
    real = raw.RawWriter.write_data
    calls = []

    def failing(self, offset, data, over_hole):
        calls.append(offset)
        real(self, offset, data, over_hole)
        raise OSError(5, 'Input/output error')

    monkeypatch.setattr(raw.RawWriter, 'write_data', failing)
    rc = any2kvm.main(['convert', str(paths[0]), '--onto', str(target),
                       '--finish'])
    err = capsys.readouterr().err
    assert rc == 1 and calls
    assert 'l1.vhd was partly applied: run again to re-apply it' in err
    assert err.count('\n') == 1
    state = json.loads((tmp_path / 't.raw.any2kvm-state.json').read_text())
    assert state['partial']['name'].endswith('l1.vhd')
    assert [a['name'][-6:] for a in state['applied']] == ['l0.vhd']

    monkeypatch.setattr(raw.RawWriter, 'write_data', real)
    assert any2kvm.main(['convert', str(paths[0]), '--onto', str(target),
                         '--finish']) == 0
    assert target.read_bytes() == want
    state = json.loads((tmp_path / 't.raw.any2kvm-state.json').read_text())
    assert state['partial'] is None and len(state['applied']) == 3


def test_block_device_needs_state_dir(tmp_path, monkeypatch):
    import os
    import stat as st

    class FakeStat(object):
        st_mode = st.S_IFBLK | 0o600

    monkeypatch.setattr(os, 'stat', lambda p: FakeStat())
    with pytest.raises(exception.TargetError, match='--state-dir'):
        incremental.state_path('/dev/sdz')
    assert incremental.state_path('/dev/sdz', str(tmp_path)) == str(
        tmp_path / 'sdz.any2kvm-state.json')


def test_corrupt_state_is_refused(tmp_path, capsys):
    paths = vhdbuild.write_chain(tmp_path, 2)
    target = tmp_path / 't.raw'
    (tmp_path / 't.raw.any2kvm-state.json').write_text('{"version": 9}')
    assert any2kvm.main(['convert', str(paths[0]), '--onto',
                         str(target)]) == 1
    assert 'not a valid any2kvm state file' in capsys.readouterr().err


def test_onto_and_output_are_exclusive(tmp_path, capsys):
    paths = vhdbuild.write_chain(tmp_path, 1)
    assert any2kvm.main(['convert', str(paths[0]), str(tmp_path / 'o'),
                         '--onto', str(tmp_path / 't')]) == 1
    assert 'not both' in capsys.readouterr().err
    assert any2kvm.main(['convert', str(paths[0]), str(tmp_path / 'o'),
                         '--finish']) == 1
    assert 'go with --onto' in capsys.readouterr().err
