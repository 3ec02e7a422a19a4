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

"""Detection of disk formats by content, never by file name.

Readers are stevedore plugins in the ``any2kvm_os.formats`` namespace.
Each has a ``probe(view)`` class method; a file that two readers claim is
refused rather than guessed.
"""

import functools

from stevedore import extension

from any2kvm_os import exception

NAMESPACE = 'any2kvm_os.formats'


@functools.lru_cache(maxsize=1)
def readers():
    """{name: reader class} of every installed format reader."""
    mgr = extension.ExtensionManager(NAMESPACE, invoke_on_load=False)
    return {e.name: e.plugin for e in mgr}


def detect(view):
    """Return the reader class for ``view`` or None if nothing claims it."""
    hits = [cls for name, cls in sorted(readers().items())
            if cls.probe(view)]
    if len(hits) > 1:
        raise exception.UnsupportedImage(
            path=view.name, reason='ambiguous: matches formats %s'
            % ', '.join(c.format_name for c in hits))
    return hits[0] if hits else None


def open_layer(view, opener=None):
    """Open ``view`` with the reader that recognises it."""
    cls = detect(view)
    if cls is None:
        raise exception.UnsupportedImage(
            path=view.name, reason='not a disk image format any2kvm reads')
    return cls(view, opener=opener)
