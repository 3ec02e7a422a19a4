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

"""The VHD sections of bench_convert.py, under their former name.

Same options as bench_convert.py; ``--only`` defaults to
``vhd,memory`` (vhd-dynamic, vhd-fixed, vhd-chain, vhd-tgz, memory) and
still takes the former section names ``single`` and ``chain``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_convert  # noqa: E402

if __name__ == '__main__':
    sys.exit(bench_convert.main(prog='bench_vhd.py',
                                default_only='vhd,memory'))
