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

"""Targets: where converted disks go (stevedore ``any2kvm_os.targets``).

A target plugin receives an opened :class:`any2kvm_os.vm.Vm` and writes its
disks: raw files, Glance images or Cinder volumes.  It returns one result
dict per disk (``name``, ``id`` or ``path``, ``size``, digests,
properties) for the CLI to print.

A target declares the command-line options that belong to it
(:attr:`Target.arguments`); both command lines add them to ``import`` and
refuse an option the chosen target does not declare.
"""

import abc
import functools

from stevedore import extension

from any2kvm_os import exception
from any2kvm_os import scratch

NAMESPACE = 'any2kvm_os.targets'


class Argument(object):
    """One command-line option of a target.

    ``flag`` is the option (``--output-dir``), ``key`` the keyword of the
    target's constructor that receives it (None: accepted, nothing to
    pass), ``convert`` turns the parsed value into the keyword's value,
    and ``kwargs`` go to argparse's ``add_argument``.  An option counts as
    given when its parsed value differs from its argparse default.
    """

    def __init__(self, flag, key, convert=None, **kwargs):
        self.flag = flag
        self.key = key
        self.convert = convert
        self.kwargs = kwargs
        self.dest = kwargs.get('dest') or flag.lstrip('-').replace('-', '_')
        self.default = kwargs.get('default', False if kwargs.get(
            'action') in ('store_true',) else None)

    def given(self, args):
        return getattr(args, self.dest, self.default) != self.default

    def value(self, args):
        value = getattr(args, self.dest)
        return self.convert(value) if self.convert else value


class Target(object, metaclass=abc.ABCMeta):
    """One kind of place converted disks go to."""

    name = None
    description = None
    #: The command-line options of this target (:class:`Argument`).
    arguments = ()
    #: Whether it needs a cloud (a keystoneauth1 session).
    needs_cloud = True
    #: Whether it stores image properties (``--property``).
    takes_properties = True

    def __init__(self, session=None, region_name=None, interface=None,
                 scratch_dir=None, scratch_limit=scratch.DEFAULT_LIMIT,
                 wait=False):
        #: A keystoneauth1 session (cloud targets).
        self.session = session
        self.region_name = region_name
        self.interface = interface
        #: Under which directory private scratch space is made.
        self.scratch_dir = scratch_dir
        #: The most bytes of scratch space one write may use.
        self.scratch_limit = scratch_limit
        #: Wait until what was written is usable (``--wait``).
        self.wait = wait

    @classmethod
    def check_options(cls, options):
        """Refuse contradicting constructor keywords ``options`` (from
        :func:`options`) before any cloud is asked; None."""

    @abc.abstractmethod
    def write(self, vm, name, properties, disk=None, progress=None):
        """Write the disks of ``vm`` (all, or only index ``disk``);
        return one result dict per disk.  On failure nothing made by this
        call is left behind."""


@functools.lru_cache(maxsize=1)
def plugins():
    mgr = extension.ExtensionManager(NAMESPACE, invoke_on_load=False)
    return {e.name: e.plugin for e in mgr}


def get_class(name):
    try:
        return plugins()[name]
    except KeyError:
        raise exception.Any2KvmError('unknown target %r (known: %s)' % (
            name, ', '.join(sorted(plugins()))))


def all_arguments():
    """[(Argument, [names of the targets declaring it])], one per flag, in
    the order the targets (sorted by name) declare them."""
    found = {}
    for name in sorted(plugins()):
        for arg in plugins()[name].arguments:
            found.setdefault(arg.flag, (arg, []))[1].append(name)
    return list(found.values())


def options(name, args):
    """The constructor keywords of target ``name`` from parsed ``args``;
    an option of another target that was given is an error."""
    cls = get_class(name)
    own = {arg.flag for arg in cls.arguments}
    result = {}
    for arg, _names in all_arguments():
        if arg.flag not in own:
            if arg.given(args):
                raise exception.Any2KvmError(
                    '%s does not apply to target %s' % (arg.flag, name))
            continue
        if arg.key is not None and arg.given(args):
            result[arg.key] = arg.value(args)
    if getattr(args, 'properties', None) and not cls.takes_properties:
        raise exception.Any2KvmError('--property does not apply to target '
                                     '%s' % name)
    return result


def disk_name(name, index, count):
    """``name`` for a one-disk VM; ``name-diskN`` for the others."""
    return name if count == 1 or index == 0 else '%s-disk%d' % (name, index)


def selected(vm, disk):
    if disk is None:
        return list(enumerate(vm.disks))
    if not 0 <= disk < len(vm.disks):
        raise exception.Any2KvmError(
            '%s: has %d disk(s); --disk takes 0 to %d' % (
                vm.path, len(vm.disks), len(vm.disks) - 1))
    return [(disk, vm.disks[disk])]


def write_scratch_raw(space, disk, filename, what, progress=None):
    """Write ``disk`` as a sparse raw file ``filename`` of the scratch
    space ``space`` (a :class:`~any2kvm_os.scratch.Scratch`), bound by its
    limit: committed when the whole disk is written, aborted (and the
    error raised) otherwise.  ``what`` names the file in a limit error.
    The file is read back from the page cache and deleted with the
    scratch space, so it is never flushed (``durable=False``).
    Returns its path."""
    from any2kvm_os.writers import raw
    path = space.path(filename)
    writer = space.bound_writer(raw.RawWriter.open(path, durable=False),
                                what)
    raw.write_all(disk, writer, progress)
    return path
