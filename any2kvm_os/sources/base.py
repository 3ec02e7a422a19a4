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

"""Sources: where a VM's disks come from (stevedore ``any2kvm_os.sources``).

A source plugin turns a LOCATION (a path, an image id, later a host spec)
into an :class:`any2kvm_os.vm.Vm`: the VM facts and its disks.

Local files need no plugin of their own: every container plugin
(``any2kvm_os.containers``) is also a local source, named by its
``source_name()``.  Such a source opens the file by content
(:func:`any2kvm_os.containers.registry.open_path`) and then checks that
what was found is what the user asked for, so ``--source ova`` on a
XenServer tgz is a clear error instead of a surprise.
"""

import abc
import functools
import re

from stevedore import extension

from any2kvm_os.containers import registry
from any2kvm_os import exception
from any2kvm_os import redact

NAMESPACE = 'any2kvm_os.sources'


class Source(object, metaclass=abc.ABCMeta):
    """One kind of place a VM comes from."""

    #: Entry point name, e.g. 'glance-image'.
    name = None
    #: One line for ``openstack any2kvm source list``.
    description = None
    #: URL schemes of the locations it opens (``xenserver`` for
    #: ``xenserver://...``): such a location needs no ``--source``.
    schemes = ()

    #: Whether the disks are to be read whole (``convert``, ``import``),
    #: not only described (``info``): a source of a VM that runs then
    #: reads them as they were at one moment (a snapshot), not as they
    #: change.  Set by :func:`open_location` before :meth:`open`.
    whole = False

    def __init__(self, limits, session=None, args=None):
        self.limits = limits
        #: A keystoneauth1 session, for sources that live in the cloud.
        self.session = session
        #: The parsed command line (SSH options of hypervisor sources).
        self.args = args

    @abc.abstractmethod
    def open(self, location):
        """Return a :class:`~any2kvm_os.vm.Vm` for ``location``."""


class LocalSource(Source):
    """A local file whose content must be one of ``containers`` (names of
    container plugins)."""

    containers = ()

    def open(self, location):
        vm = registry.open_path(location, self.limits)
        if vm.container not in self.containers:
            vm.close()
            found = registry.get(vm.container)
            raise exception.UnsupportedImage(
                path=location, reason='is %s, not %s (use --source %s or '
                'leave --source out)' % (found.noun, self.description,
                                         found.source_name()))
        return vm


def _local_source(word, containers):
    """The LocalSource class of the ``--source`` word."""
    main = [p for p in containers if p.name == word] or containers
    return type('LocalSource_%s' % word.replace('-', '_'), (LocalSource,), {
        'name': word, 'description': main[0].description,
        'containers': tuple(p.name for p in containers)})


@functools.lru_cache(maxsize=1)
def plugins():
    """{name: Source class}: a local source per container plugin, and the
    plugins of the sources namespace."""
    found = {word: _local_source(word, containers)
             for word, containers in registry.source_words().items()}
    mgr = extension.ExtensionManager(NAMESPACE, invoke_on_load=False)
    for e in mgr:
        if e.name in found:
            raise exception.Any2KvmError(
                'source plugin %s has the name of a container plugin'
                % e.name)
        found[e.name] = e.plugin
    return found


_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')


def by_scheme(location):
    """The name of the source plugin whose scheme starts ``location``
    (``xenserver://...``), or None for what is not such a URL."""
    m = _SCHEME.match(location)
    if not m:
        return None
    scheme = m.group(1).lower()
    for name, cls in sorted(plugins().items()):
        if scheme in getattr(cls, 'schemes', ()):
            return name
    raise exception.Any2KvmError(
        '%s: no source plugin reads %s:// locations (known: %s)' % (
            redact.text(location), scheme, ', '.join(sorted(
                '%s://' % s for cls in plugins().values()
                for s in getattr(cls, 'schemes', ())))))


def open_location(location, limits, source_name=None, session=None,
                  args=None, whole=False):
    """Open ``location`` with the named source, the one its URL scheme
    names, or detect a local file by content; ``whole``: its disks are
    to be read whole (:attr:`Source.whole`)."""
    if source_name is None:
        source_name = by_scheme(location)
    if source_name is None:
        return registry.open_path(location, limits)
    try:
        cls = plugins()[source_name]
    except KeyError:
        raise exception.Any2KvmError(
            'unknown source %r (known: %s)' % (
                source_name, ', '.join(sorted(plugins()))))
    source = cls(limits, session=session, args=args)
    source.whole = whole
    return source.open(location)
