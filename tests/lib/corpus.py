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

"""Where the repository and the shared corpus are, and corpus facts.

The shared corpus is ``<repo>/../shared/corpus``, or ``$ANY2KVM_CORPUS``.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get('ANY2KVM_CORPUS') or
              REPO.parent / 'shared' / 'corpus')

#: XenServer vhd-util chain (l0 <- l1 <- l2) in the corpus, and the raw
#: SHA-256 of its leaf l2.vhd.
VHDUTIL = 'generated/vhdutil-chain.tar.gz'
VHDUTIL_L2 = ('e8c993f619828e77140e820379dd47ac'
              'e9a05320a7363648f272e49810386424')
