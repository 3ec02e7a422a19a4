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

"""External tools the tests need: a missing one skips, or fails in CI.

A missing tool skips the tests that need it, unless
``ANY2KVM_REQUIRE_TOOLS=1`` is set (CI), in which case they fail.
"""

import os

import pytest


def tools_required():
    return os.environ.get('ANY2KVM_REQUIRE_TOOLS') == '1'


def missing_tool(message):
    if tools_required():
        pytest.fail('%s (ANY2KVM_REQUIRE_TOOLS=1)' % message, pytrace=False)
    pytest.skip(message)


def tail(text, lines=30):
    """The last ``lines`` lines of a tool's output, for a failure message."""
    return '\n'.join(text.strip().splitlines()[-lines:])
