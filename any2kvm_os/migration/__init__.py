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

import contextlib
import sys
import warnings


@contextlib.contextmanager
def taskflow_import():
    """Import TaskFlow within this: without eventlet, unless the process
    has imported it already.

    TaskFlow's helpers (through ``oslo_utils.eventletutils``) import
    eventlet whenever it is installed (oslo.service brings it): about a
    third of the imports of a ``migration`` command (0.2-1 s), for
    nothing, since the flows run on TaskFlow's serial engine; it also
    warns that it is deprecated.  Here eventlet is hidden while TaskFlow
    is imported (oslo_utils then takes it as absent, which is true of
    this process), and importable again after.  A process that imported
    eventlet before (a service that monkey-patches) keeps it."""
    hidden = 'eventlet' not in sys.modules
    if hidden:
        sys.modules['eventlet'] = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            yield
    finally:
        if hidden and sys.modules.get('eventlet', 0) is None:
            del sys.modules['eventlet']
