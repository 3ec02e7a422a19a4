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

"""Progress lines: the percent follows the address space, the rate the
data moved (a copy that skips holes passes most of a disk in no time)."""

import io
import re

from any2kvm_os import progress as progress_mod

GiB = 1 << 30
MiB = 1 << 20


class _Clock(object):
    def __init__(self, monkeypatch):
        self.now = 100.0
        monkeypatch.setattr(progress_mod.time, 'monotonic', lambda: self.now)


def test_the_rate_is_the_datas_when_the_copier_counts_it(monkeypatch):
    clock = _Clock(monkeypatch)
    out = io.StringIO()
    bar = progress_mod.Progress(4 * GiB, out, label='disk 0 a.vhd')
    clock.now += 2.0
    # Half the disk reached in 2 s, of which 200 MiB were data: the
    # rest was holes, passed in no time.
    bar(2 * GiB, 4 * GiB, 200 * MiB)
    clock.now += 2.0
    bar(4 * GiB, 4 * GiB, 400 * MiB)
    bar.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == ('disk 0 a.vhd:  50.0% of 4.0 GiB, 200.0 MiB of '
                        'data, 100.0 MiB/s, ETA 2s')
    assert lines[1].startswith('disk 0 a.vhd: 100.0% of 4.0 GiB, 400.0 MiB')
    assert lines[-1] == ('disk 0 a.vhd: done: 4.0 GiB (400.0 MiB of data, '
                         '100.0 MiB/s) in 4.0s')
    # No rate of the address space (1 GiB/s here) anywhere.
    assert 'GiB/s' not in out.getvalue()


def test_without_data_every_byte_reached_was_moved(monkeypatch):
    clock = _Clock(monkeypatch)
    out = io.StringIO()
    bar = progress_mod.Progress(100 * MiB, out)
    clock.now += 1.0
    bar(50 * MiB, 100 * MiB)
    bar.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == ' 50.0% 50.0 MiB of 100.0 MiB, 50.0 MiB/s, ETA 1s'
    assert lines[-1] == 'done: 100.0 MiB in 1.0s'


def test_a_terminal_line_is_blanked_over_its_whole_width(monkeypatch):
    clock = _Clock(monkeypatch)
    out = io.StringIO()
    out.isatty = lambda: True
    bar = progress_mod.Progress(4 * GiB, out, label='disk 0 ' + 'x' * 60)
    clock.now += 1.0
    bar(GiB, 4 * GiB, 10 * MiB)
    bar.finish()
    text = out.getvalue()
    drawn = text.split('\r')[1]
    assert len(drawn) > 80
    # The bar, then spaces over all of it, then the last line.
    assert '\r' + ' ' * len(drawn) + '\r' in text
    assert text.endswith('(10.0 MiB of data, 10.0 MiB/s) in 1.0s\n')


def test_sync_bar_text_matches_the_documented_shape():
    out = io.StringIO()
    bar = progress_mod.LayerProgress(out).start('disk 0 l1.vhd', 4 * GiB)
    bar(GiB, 4 * GiB, 3 * MiB)
    assert re.search(r'of data, [\d.]+ \w+/s, ETA \d+s$',
                     out.getvalue().splitlines()[0])
