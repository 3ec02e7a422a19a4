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

"""The library both command lines sit on: ``any2kvm`` and ``openstack
any2kvm`` parse, call these, and print.

Each function takes plain values (and, for ``run_import``, the parsed
``import`` arguments of :mod:`any2kvm_os.arguments`) and returns data; none
prints.  Errors are :class:`any2kvm_os.exception.Any2KvmError` (or a
library's own), turned into one line by :func:`error_message`.
"""

import logging
import os
import sys

from any2kvm_os import exception
from any2kvm_os import limits as limits_mod
from any2kvm_os import progress as progress_mod
from any2kvm_os import scratch
from any2kvm_os.ssh import options as ssh_options

PROG = 'any2kvm'
#: The project name oslo.config finds default configuration files by
#: (``any2kvm_os.conf`` in ``/etc/any2kvm_os/``, ...).
PROJECT = 'any2kvm_os'
LOG = logging.getLogger(__name__)

#: The fields of an import result, in display order.
RESULT_FIELDS = ('disk', 'name', 'id', 'path', 'size', 'sha256',
                 'os_hash_algo', 'os_hash_value', 'properties')


def load_limits(config_files=()):
    """Limits from ``config_files``, else from the default files
    oslo.config finds (``/etc/any2kvm_os/any2kvm_os.conf``, ...), and the
    ``OS_ANY2KVM__<OPTION>`` variables, as ``any2kvm`` reads them."""
    from oslo_config import cfg
    conf = cfg.ConfigOpts()
    register_opts(conf)
    conf(args=[], project=PROJECT, prog=PROG,
         default_config_files=list(config_files or ()) or None)
    return limits_mod.Limits.from_conf(conf)


def conversion_options():
    """The ``[any2kvm]`` options of a conversion: limits, scratch space,
    SSH connections, the sources' own, the migration state database."""
    from any2kvm_os.guest import inspect as guest_inspect
    from any2kvm_os.migration.state import options as state_options
    from any2kvm_os.sources.xenserver import options as xenserver
    from any2kvm_os.containers.ova import signature
    return (limits_mod.OPTIONS + scratch.OPTIONS + ssh_options.OPTIONS +
            xenserver.OPTIONS + state_options.OPTIONS + signature.OPTIONS +
            guest_inspect.OPTIONS)


def register_opts(conf):
    """Register the options of a conversion on ``conf``."""
    conf.register_opts(conversion_options(), group=limits_mod.GROUP)


def error_message(e):
    """The one-line message of an error we expect (ours, a file that
    cannot be read, a bad configuration), or None."""
    if isinstance(e, (exception.Any2KvmError, exception.LeaseLost)):
        msg = str(e)
    elif isinstance(e, OSError) and e.filename:
        msg = '%s: %s' % (e.filename, e.strerror)
    elif _is_config_error(e):
        msg = 'configuration: %s' % e
    else:
        return None
    # Whatever it quotes (a URL, a location, a library's message): no
    # password written into it is shown.
    from any2kvm_os import redact
    return redact.text(' '.join(msg.splitlines()))


def _is_config_error(e):
    """Whether ``e`` is an oslo.config error (none can be raised while
    oslo.config is not imported: a local conversion does not import it)."""
    cfg = sys.modules.get('oslo_config.cfg')
    return cfg is not None and isinstance(e, cfg.Error)


def open_location(location, limits, source_name=None, session=None,
                  args=None, whole=False):
    """An opened :class:`~any2kvm_os.vm.Vm` of ``location``: with the
    named source plugin, the one its URL scheme names
    (``xenserver://...``), or a local file detected by content.  ``args``:
    the parsed command line, for the sources' own options (SSH);
    ``whole``: the disks are to be read whole (``convert``, ``import``),
    so a VM that runs is read from a snapshot (see the source)."""
    from any2kvm_os.sources import base as sources
    if args is not None:
        from any2kvm_os.containers.ova import signature
        signature.apply_arguments(args, limits)
    return sources.open_location(location, limits, source_name,
                                 session=session, args=args, whole=whole)


def describe(vm, location=None):
    """What ``any2kvm info --format json`` shows of an opened VM: the
    container, the VM facts and, per disk, its format, virtual size and
    chain (leaf first); the first disk's facts also at the top."""
    disks = []
    for index, disk in enumerate(vm.disks):
        layers = disk.describe()
        disks.append({'index': index, 'name': disk.name,
                      'format': disk.format,
                      'virtual_size': layers[0]['virtual_size'],
                      'chain': layers})
    result = {'source': location if location is not None else vm.path,
              'container': vm.container, 'vm': vm.facts, 'disks': disks}
    wire = vm.wire()
    if wire is not None:
        result['wire'] = wire
    if disks:
        # The first disk's facts at the top, for one-disk sources.
        for key in ('format', 'virtual_size', 'chain'):
            result[key] = disks[0][key]
    return result


def inspect_location(location, limits, source_name=None, session=None,
                     args=None, guest=False):
    """:func:`describe` of ``location``; with ``guest``, also what is
    inside its disks (:func:`inspect_vm`): ``guest``, ``properties``,
    ``reasons`` and ``warnings``."""
    vm = open_location(location, limits, source_name, session, args)
    try:
        result = describe(vm, location)
        if guest:
            result.update(inspect_vm(vm, limits))
        return result
    finally:
        vm.close()


def convert_outputs(vm, output, disk=None):
    """[(index, disk, path)] of ``any2kvm convert``: OUTPUT is the file
    of the one disk (or of ``--disk N``), or an existing directory where
    each disk written (every disk, the one, or ``--disk N``) gets a file
    named as ``import --target file`` names them (``<vm name>.raw``,
    ``<vm name>-disk<N>.raw``)."""
    from any2kvm_os.targets import base as targets
    from any2kvm_os.targets import file as file_target
    if os.path.isdir(output):
        return file_target.plan(vm, output, file_target.stem(vm), disk)
    if disk is not None or len(vm.disks) == 1:
        ((index, d),) = targets.selected(vm, disk or 0)
        return [(index, d, output)]
    if not os.path.isdir(output):
        raise exception.Any2KvmError(
            '%s: holds %d disks: give --disk N, or an existing directory as '
            'OUTPUT for one raw file per disk' % (vm.path, len(vm.disks)))
    return file_target.plan(vm, output, file_target.stem(vm))


def convert(vm, output, disk=None, overwrite=False, progress=None,
            each=None):
    """Write the disks of ``vm`` as raw files (or onto block devices);
    all or none (:func:`any2kvm_os.targets.file.write`, with ``progress``
    and ``each``).  Returns the writers."""
    from any2kvm_os.targets import file as file_target
    return file_target.write(convert_outputs(vm, output, disk), overwrite,
                             progress, each=each)


def cloud_session(cloud=None):
    """A keystoneauth1 session, already authenticated, for the cloud
    named ``cloud`` in clouds.yaml, or the one of the OS_* variables
    (openrc) when ``cloud`` is None; and (region name, interface)."""
    try:
        from keystoneauth1 import exceptions as ks_exc
        from openstack import config as os_config
        from openstack import exceptions as sdk_exc
    except ImportError as e:
        raise exception.Any2KvmError(
            'a cloud target needs openstacksdk and keystoneauth1: %s' % e)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Their warnings (version discovery, "Could not load" a plugin)
        # precede the error that tells what went wrong; --debug shows
        # them.
        for name in ('keystoneauth', 'openstack.config'):
            logging.getLogger(name).setLevel(logging.ERROR)
    # stevedore's "Could not load PLUGIN" of an unknown auth type comes
    # before the error that says it; only while the cloud is read.
    plugins = logging.getLogger('stevedore.named')
    level = plugins.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        plugins.setLevel(logging.ERROR)
    try:
        region = os_config.OpenStackConfig().get_one(cloud=cloud)
        session = region.get_session()
    except ks_exc.MissingRequiredOptions as e:
        raise exception.Any2KvmError(
            'no cloud credentials: give --os-cloud (a cloud of clouds.yaml) '
            'or set the OS_* variables of an openrc (%s)' % e)
    except (sdk_exc.ConfigException, ks_exc.ClientException) as e:
        raise exception.Any2KvmError('cloud configuration%s: %s' % (
            ' %r' % cloud if cloud else '', e))
    finally:
        plugins.setLevel(level)
    where = (region.config.get('auth') or {}).get('auth_url') or 'keystone'
    try:
        # Authenticate now: a wrong password is told before the disks are
        # read, not after.
        session.get_token()
    except ks_exc.Unauthorized as e:
        raise exception.TargetError(
            path=where, reason='authentication failed (check %s): %s' % (
                _CHECK_AUTH.get(region.config.get('auth_type'),
                                _CHECK_AUTH[None]), e))
    except ks_exc.ConnectFailure as e:
        raise exception.TargetError(path=where,
                                    reason='cannot connect: %s' % e)
    except ks_exc.ClientException as e:
        raise exception.TargetError(
            path=where, reason='authentication failed: %s: %s' % (
                type(e).__name__, e))
    return session, region.region_name or None, \
        region.config.get('interface')


#: What to check when Keystone refuses the credentials, by auth type.
_CHECK_AUTH = {
    None: 'the user, password, domain and project',
    'token': 'the token (OS_TOKEN): it may have expired',
    'v3token': 'the token (OS_TOKEN): it may have expired',
    'v3applicationcredential': 'the application credential\'s id or name '
                               'and secret: it may have expired or been '
                               'deleted',
    'applicationcredential': 'the application credential\'s id or name and '
                             'secret: it may have expired or been deleted',
}


def import_vm(location, target, name, limits, source_name=None,
              props=None, disk=None, session=None, progress=None,
              target_options=None, args=None):
    """Open ``location`` and write its disks to ``target`` (a name of the
    ``any2kvm_os.targets`` namespace, built with ``target_options``).
    Returns (VM facts, results)."""
    from any2kvm_os.targets import base as targets
    cls = targets.get_class(target)
    _check_fix(args, cls)
    vm = open_location(location, limits, source_name, session=session,
                       args=args, whole=True)
    try:
        plugin = cls(session=session, **(target_options or {}))
        flag = getattr(args, 'inspect', None) if args is not None else None
        fix = bool(getattr(args, 'fix', False)) if args is not None \
            else False
        if fix and cls.takes_properties:
            return vm.facts, import_fixed(plugin, vm, name, props, disk,
                                          limits, progress, flag, args)
        inspection = None
        if cls.takes_properties and (target_options or {}).get(
                'defaults', True):
            # Inspected before the upload: the properties depend on it.
            inspection = guarded_inspection(
                flag, vm.path, lambda: inspect_vm(vm, limits, disk))
            if inspection:
                vm.facts['guest_properties'] = inspection['properties']
        results = plugin.write(vm, name, props, disk=disk,
                               progress=progress)
        if not cls.takes_properties:
            written = [r for r in results if r.get('path')]
            paths = [r['path'] for r in written]
            if paths:
                inspection = guarded_inspection(
                    flag, paths[0], lambda: inspect_paths(
                        paths, limits, fix=fix, source_vm=vm.facts,
                        indexes=[r['disk'] for r in written]),
                    fix=fix)
        if inspection and results:
            # A cloud target's own "properties" (what was set) stay.
            for key, value in inspection.items():
                results[0].setdefault(key, value)
        return vm.facts, results
    finally:
        vm.close()


def target_options(args, limits, region_name=None, interface=None):
    """The constructor keywords of the target ``args.target``: its own
    options (each target declares them), the scratch directory, the
    cloud's region and interface, and ``wait`` when ``--wait`` was
    given."""
    from any2kvm_os.targets import base as targets
    options = targets.options(args.target, args)
    targets.get_class(args.target).check_options(options)
    if limits.scratch_dir is not None:
        options['scratch_dir'] = limits.scratch_dir
    if limits.scratch_limit != scratch.DEFAULT_LIMIT:
        options['scratch_limit'] = limits.scratch_limit
    options.update(_cloud_options(region_name, interface))
    if args.wait:
        options['wait'] = True
    return options


def _cloud_options(region_name, interface):
    """The cloud's region and interface, as target keywords (those
    known)."""
    return {key: value for key, value in (('region_name', region_name),
                                          ('interface', interface))
            if value is not None}


def run_import(args, limits, cloud, progress_stream=None):
    """The import both commands run (``any2kvm import`` and ``openstack
    any2kvm import``) from their parsed ``args``: a session from
    ``cloud()`` — (session, region, interface), asked only for a target
    that needs a cloud — a progress bar with ``--progress``; returns the
    results of :func:`import_vm`."""
    from any2kvm_os.targets import base as targets
    props = dict(args.properties or {})
    # The options are checked before any cloud is asked for.
    options = target_options(args, limits)
    _check_fix(args, targets.get_class(args.target))
    session = None
    if targets.get_class(args.target).needs_cloud:
        session, region, interface = cloud()
        options.update(_cloud_options(region, interface))
    bar = progress_mod.DiskProgress(progress_stream) if args.progress \
        else None
    try:
        _facts, results = import_vm(
            args.location, args.target, args.name, limits,
            source_name=args.source_name, props=props, disk=args.disk,
            session=session, progress=bar, target_options=options,
            args=args)
    except BaseException:
        if bar:
            bar.finish(ok=False)
        raise
    if bar:
        bar.finish()
    return results


def import_summary(target, results):
    """One dict for the CLIs: the first (or only) disk's result at the
    top, with ``target``; ``disks``, every result, when there are
    several."""
    first = results[0] if results else {}
    summary = {'target': target}
    keys = [k for k in RESULT_FIELDS if k in first]
    keys += sorted(k for k in first if k not in RESULT_FIELDS)
    for key in keys:
        summary[key] = first[key]
    if len(results) > 1:
        summary['disks'] = list(results)
    return summary


def wire_summary(vm):
    """The line that tells how many bytes a remote source sent over the
    wire, next to the sizes of its files and the data they hold; None
    for local input."""
    wire = vm.wire()
    if wire is None:
        return None
    return 'read over the wire: %s (layer files %s, data held %s)' % (
        progress_mod.human(wire['bytes_read']),
        progress_mod.human(wire['file_bytes']),
        progress_mod.human(wire['allocated_bytes']))


# -- guest inspection (any2kvm_os.guest) --------------------------------------

#: The targets ``import --fix`` knows how to fix (file: the files
#: written; glance: the copy before its upload; cinder: the volumes, with
#: a snapshot to revert to, or the copy before its upload).
FIX_TARGETS = ('file', 'glance', 'cinder')


def _check_fix(args, cls):
    if getattr(args, 'fix', False) and cls.name not in FIX_TARGETS:
        raise exception.Any2KvmError(
            '--fix applies to convert and import --target %s, not %s'
            % ('|'.join(FIX_TARGETS), cls.name))
    if getattr(args, 'fix', False) and getattr(args, 'inspect',
                                               None) is False:
        raise exception.Any2KvmError('--fix needs inspection: drop '
                                     '--no-inspect')
    if getattr(args, 'keep_fix_snapshot', False) and not getattr(
            args, 'fix', False):
        raise exception.Any2KvmError('--keep-fix-snapshot goes with --fix')


def _guest_settings(limits):
    from any2kvm_os.guest import inspect as guest_inspect
    return guest_inspect.Settings.from_conf(getattr(limits, 'conf', None))


def inspect_paths(paths, limits, fix=False, source_vm=None, indexes=None):
    """What is inside the raw disks ``paths`` (one VM's, in order):
    {'guest', 'properties', 'reasons', 'warnings', 'fixed'}.  With
    ``fix``, the Linux fixes are made too (all or none).  ``indexes``:
    the VM's disk index of each path (default: all its disks, in order),
    which the guest's Xen device names are looked up by
    (:func:`any2kvm_os.guest.inspect.slots_of`)."""
    from any2kvm_os.guest import inspect as guest_inspect
    paths = list(paths)
    if indexes is None:
        indexes = range(len(paths))
    result = guest_inspect.inspect_files(
        paths, _guest_settings(limits), fix=fix,
        scratch_dir=limits.scratch_dir,
        slots=guest_inspect.slots_of(source_vm, list(indexes)))
    return guest_inspect.summary(result, source_vm)


def inspect_vm(vm, limits, disk=None):
    """:func:`inspect_paths` of the disks of ``vm`` (all, or only index
    ``disk``), first copied as raw files into scratch space.  A disk read
    in one pass cannot be read again for the upload: such a VM is not
    inspected (InspectionError)."""
    from any2kvm_os.targets import base as targets
    chosen = targets.selected(vm, disk)
    if any(d.chain is None for _i, d in chosen):
        raise exception.InspectionError(
            path=vm.path, reason='its disks are read in one pass (a '
            'compressed archive or a download) and are not copied for '
            'inspection: "any2kvm convert" inspects the raw disks it '
            'writes, and "import --fix" the copy it fixes')
    with scratch.Scratch.for_limits(limits,
                                    prefix='any2kvm-inspect-') as space:
        paths = _scratch_copies(space, chosen, 'inspection')
        return inspect_paths(paths, limits, source_vm=vm.facts,
                             indexes=[i for i, _d in chosen])


def _scratch_copies(space, chosen, why, progress=None):
    """The disks ``chosen`` ([(index, disk)]) written as raw files in
    ``space``; their paths."""
    from any2kvm_os.targets import base as targets
    return [targets.write_scratch_raw(space, d, 'disk%d.raw' % index,
                                      '%s (copied for %s)' % (d.name, why),
                                      progress)
            for index, d in chosen]


def import_fixed(plugin, vm, name, props, disk, limits, progress, flag,
                 args):
    """``import --fix`` to a cloud target: the volumes a Cinder target
    writes in place are fixed there, a snapshot taken first and reverted
    to when the fix fails
    (:func:`any2kvm_os.targets.volume_fix.fix_imported`); otherwise the
    disks are copied into scratch space, fixed there (all or nothing) and
    the fixed copies uploaded.  Either way the properties come from the
    guest as fixed.  Returns the target's results, the inspection merged
    into the first."""
    from any2kvm_os.targets import base as targets
    from any2kvm_os.targets import volume_fix
    from any2kvm_os import vm as vm_mod
    keep = bool(getattr(args, 'keep_fix_snapshot', False))
    guest_inspect_on(flag)
    if volume_fix.fixes_in_place(plugin):
        results = plugin.write(vm, name, props, disk=disk,
                               progress=progress)
        inspection = volume_fix.fix_imported(
            plugin, results, vm.facts, props, _guest_settings(limits), keep)
    else:
        if keep:
            LOG.warning('--keep-fix-snapshot: no snapshot is taken: the '
                        'copy is fixed before its upload')
        # The source is read once, into scratch space (a one-pass
        # archive too): the upload reads the fixed copy.
        chosen = targets.selected(vm, disk)
        with scratch.Scratch.for_limits(limits,
                                        prefix='any2kvm-fix-') as space:
            paths = _scratch_copies(space, chosen, '--fix')
            inspection = inspect_paths(paths, limits, fix=True,
                                       source_vm=vm.facts,
                                       indexes=[i for i, _d in chosen])
            vm.facts['guest_properties'] = inspection['properties']
            disks = list(vm.disks)
            for (index, d), path in zip(chosen, paths):
                disks[index] = _fixed_copy('%s (fixed)' % d.name,
                                           d.container, path)
            fixed = vm_mod.Vm(vm.path, vm.container, disks, facts=vm.facts)
            results = plugin.write(fixed, name, props, disk=disk,
                                   progress=progress)
    if results:
        for key, value in inspection.items():
            results[0].setdefault(key, value)
    return results


def _fixed_copy_class():
    from any2kvm_os import fileio
    from any2kvm_os import vm as vm_mod

    class FixedCopy(vm_mod.Disk):
        """A raw file in scratch space (a disk's copy, fixed), read in
        one pass (its holes skipped) by the target."""

        def __init__(self, name, container, path):
            super(FixedCopy, self).__init__(name, container)
            self.path = path
            #: A Glance upload streams the file itself, not a copy.
            self.raw_path = path

        @property
        def format(self):
            return 'raw'

        def describe(self):
            size = os.path.getsize(self.path)
            return [{'name': self.name, 'format': 'raw', 'subformat': None,
                     'id': None, 'parent_id': None, 'virtual_size': size,
                     'allocated_bytes': None, 'creator': 'any2kvm --fix'}]

        def write_to(self, writer, progress=None):
            size = os.path.getsize(self.path)
            writer.resize(size)
            over_hole = bool(getattr(writer, 'fresh', False))
            if not over_hole:
                writer.zero_range(0, size)
                over_hole = True
            moved = 0
            with fileio.FileView.open_path(self.path) as view:
                for start, end, is_data in view.data_runs(0, size):
                    off = start
                    while is_data and off < end:
                        data = view.pread(min(end - off, 4 << 20), off)
                        if not data:
                            break
                        writer.write_data(off, data, over_hole=over_hole)
                        off += len(data)
                        moved += len(data)
                        if progress:
                            progress(off, size, moved)

    return FixedCopy


def _fixed_copy(name, container, path):
    """The disk of a fixed copy at ``path`` (see
    :func:`import_fixed`)."""
    return _fixed_copy_class()(name, container, path)


def guest_inspect_on(flag):
    """Refuse ``--fix`` with ``--no-inspect``."""
    if flag is False:
        raise exception.Any2KvmError('--fix needs inspection: drop '
                                     '--no-inspect')


def guarded_inspection(flag, name, run, fix=False):
    """``run()`` when inspection is on (``flag``: ``--inspect`` True,
    ``--no-inspect`` False, None: on unless ANY2KVM_INSPECT=0).  A failure
    is an error when inspection or a fix was asked for, else a warning
    (and None)."""
    from any2kvm_os.guest import inspect as guest_inspect
    on, explicit = guest_inspect.enabled(flag)
    if fix and flag is False:
        raise exception.Any2KvmError('--fix needs inspection: drop '
                                     '--no-inspect')
    if not on and not fix:
        return None
    try:
        return run()
    except exception.InspectionError as e:
        if explicit or fix:
            raise
        logging.getLogger(__name__).warning(
            '%s (the guest was not inspected; --no-inspect or %s=0 skips '
            'inspection)', e, guest_inspect.ENV)
        return None


# -- warm migration -----------------------------------------------------------

def _migration_target_options(args):
    """``--target`` and the options of that target; an option of the
    other target is refused in one line."""
    from any2kvm_os.migration import destinations
    target = args.target
    given = {k: getattr(args, k, None) for keys in
             destinations.OPTIONS.values() for k in keys}
    for other, keys in destinations.OPTIONS.items():
        if other == target:
            continue
        for key in keys:
            if given.get(key):
                raise exception.Any2KvmError(
                    '--%s goes with --target %s, not --target %s'
                    % (destinations.FLAGS.get(key, key.replace('_', '-')),
                       other, target))
    options = {k: given[k] for k in destinations.OPTIONS[target]
               if given.get(k)}
    _check_device_options(options)
    if 'properties' in options:
        # --property KEY=VALUE (repeated): a dict, kept in the state DB.
        options['properties'] = dict(options['properties'])
    return options


def _check_device_options(options):
    """``--device`` (block devices) or ``--output-dir`` (raw files), not
    both; ``--device-is-zeroed`` only with ``--device``."""
    if options.get('devices') and options.get('output_dir'):
        raise exception.Any2KvmError('--device and --output-dir: give one '
                                     '(block devices, or raw files in a '
                                     'directory)')
    if options.get('device_is_zeroed') and not options.get('devices'):
        raise exception.Any2KvmError('--device-is-zeroed goes with --device')


def _migration_device_lines(r):
    """``show``: what a migration onto block devices does with them."""
    options = r.get('target_options') or {}
    if not options.get('devices'):
        return []
    return ['devices:  written in place (%s); never deleted or wiped by '
            'abort' % ('given as zeroed: the first sync wrote only data'
                       if options.get('device_is_zeroed') else
                       'zeroed by the first sync where the VM holds no '
                       'data')]


def run_migration(action, args, limits, cloud, progress_stream=None,
                  server=None):
    """What ``any2kvm migration ACTION`` and ``openstack any2kvm migration
    ACTION`` run, from their parsed ``args``
    (:func:`any2kvm_os.arguments.add_migration_arguments`): ``cloud()``
    gives (session, region, interface) and is called only by a Cinder
    migration; a progress bar per layer on ``progress_stream`` unless
    ``--no-progress``; ``server``: what a cutover creates (and a rollback
    deletes).  Returns the data the CLIs print
    (:func:`migration_lines`)."""
    from any2kvm_os.migration import engine
    from any2kvm_os.migration.state import sql
    try:
        store = engine.open_store(getattr(args, 'state_db', None),
                                  limits.conf, create=action == 'create')
    except sql.NoDatabase as e:
        if action != 'list':
            raise
        LOG.warning('%s', e)
        return []
    except Exception as e:
        raise _state_error(e, _state_url(args, limits, engine)) from e
    try:
        return _run_migration(action, args, limits, cloud, store,
                              progress_stream, server, engine)
    except Exception as e:
        raise _state_error(e, store.url) from e
    finally:
        if progress_stream is not None:
            progress_stream.flush()
        store.close()


#: Where an error comes from, by its class's top package: the state
#: database's (SQLAlchemy and its drivers, TaskFlow's persistence,
#: alembic's migrations).
_STATE_PACKAGES = ('sqlalchemy', 'taskflow', 'alembic', 'sqlite3',
                   'pymysql', 'psycopg2', 'psycopg')


def _state_url(args, limits, engine):
    """The state database's URL as :func:`engine.open_store` finds it, or
    None."""
    from any2kvm_os.migration.state import options as state_options
    try:
        return (getattr(args, 'state_db', None) or
                os.environ.get(engine.STATE_DB_ENV) or
                state_options.url_from(None, limits.conf))
    except Exception:
        return None


#: What the drivers say when the server answered nothing in time: a
#: statement cut by its timeout (PostgreSQL's statement_timeout, the
#: MySQL driver's read timeout), a connection lost.
_NO_ANSWER = ('statement timeout', 'Lost connection', 'gone away',
              'server closed the connection', 'terminating connection',
              'timed out')


def _state_error(e, url):
    """``e`` as is, or, when it comes from the state database at ``url``
    (locked, corrupt, read-only, of a newer version), one line naming the
    database (without its password) and the cause."""
    if isinstance(e, exception.Any2KvmError):
        return e
    packages = set(c.__module__.split('.')[0] for c in type(e).__mro__)
    if not packages & set(_STATE_PACKAGES):
        return e
    from any2kvm_os.migration.state import sql
    text = str(e).split('[SQL:')[0].split('(Background on this error')[0]
    text = ' '.join(text.split()) or type(e).__name__
    try:
        where = sql.safe_url(url) if url else ''
    except Exception:
        where = ''
    hint = ''
    if 'database is locked' in text or 'Lock wait timeout' in text:
        hint = ': another command holds it for too long; try again'
    elif any(t in text for t in _NO_ANSWER):
        hint = (': no answer in time (a lock another command keeps, or the '
                'server or its link down); what was recorded stands: run '
                'the command again')
    elif 'readonly database' in text or 'Read-only file system' in text:
        hint = ': it cannot be written here (every command, show and list '\
            'too, records in it)'
    elif "Can't locate revision" in text:
        hint = ': made by a newer any2kvm; use that one'
    elif 'file is not a database' in text:
        hint = ': not a SQLite database (damaged, or another file)'
    return exception.Any2KvmError('state database%s: %s%s' % (
        ' ' + where if where else '', text[:300], hint))


def _run_migration(action, args, limits, cloud, store, progress_stream,
                   server, engine):
    """The action of :func:`run_migration` on the open ``store``."""
    if action == 'create':
        options = _migration_target_options(args)
        return engine.create(
            store, args.name, args.location, target=args.target,
            output_dir=options.pop('output_dir', '.'), limits=limits,
            args=args, options=options, cloud=cloud)
    if action in ('show', 'list'):
        if action == 'show':
            return engine.show(store, args.name)
        return engine.list_migrations(store)
    progress = None
    if getattr(args, 'progress', False):
        progress = progress_mod.LayerProgress(progress_stream)
    if action == 'sync':
        return engine.sync(store, args.name, limits=limits, args=args,
                           cloud=cloud, progress=progress,
                           guest=_guest_step(args, limits))
    if action == 'verify':
        from any2kvm_os.migration import verify
        return verify.verify(store, args.name, limits=limits, args=args,
                             cloud=cloud, progress=progress)
    if server is None and action in ('cutover', 'rollback'):
        server = _server_step(action, args, cloud)
    if action == 'cutover':
        return engine.cutover(store, args.name, force=args.force,
                              timeout=args.timeout, limits=limits,
                              args=args, cloud=cloud, progress=progress,
                              server=server,
                              guest=_guest_step(args, limits))
    if action == 'rollback':
        return engine.rollback(store, args.name, limits=limits,
                               args=args, server=server)
    if action == 'abort':
        return engine.abort(store, args.name,
                            delete_targets=args.delete_targets,
                            limits=limits, args=args, cloud=cloud)
    raise exception.Any2KvmError('migration: unknown action %r'
                                 % action)


def _guest_step(args, limits):
    """What inspects a migration's targets at sync, and fixes them at
    cutover (``--fix``)."""
    from any2kvm_os.migration import guest_step
    return guest_step.GuestStep.from_args(args, limits)


def _server_step(action, args, cloud):
    """The server a cutover creates (``--create-server``; its options
    checked before anything else), or deletes on rollback."""
    from any2kvm_os.migration import server_step
    from any2kvm_os.targets import server as server_mod
    if action == 'rollback':
        return server_step.ServerStep(server_mod.Options(), cloud)
    options = server_mod.Options.from_args(args).check()
    if not options.create_server:
        return None
    return server_step.ServerStep(options, cloud)


def _wire(r):
    """Bytes over the wire next to the sizes of the layer files."""
    from any2kvm_os.progress import human
    text = '%d bytes read over the wire' % r['bytes_read']
    if r.get('files_size'):
        text += ' for %d bytes of layer files (%s of %s, %.3f)' % (
            r['files_size'], human(r['bytes_read']), human(r['files_size']),
            r['bytes_read'] / float(r['files_size']))
    return text


def verify_lines(r):
    """The lines of ``migration verify``'s result (each target identical:
    a difference is the command's error)."""
    lines = ['verified %s: every target equals %s, read again from the '
             'host (%s read over the wire, %.1f s)' % (
                 r['name'], r['against'],
                 progress_mod.human(r['bytes_read']), r['seconds'])]
    lines += ['  disk %d: %s, %s of %s compared (%s of data, %d layer(s) '
              'folded): identical' % (
                  t['index'], t['target_ref'], progress_mod.human(
                      t['compared']), progress_mod.human(t['virtual_size']),
                  progress_mod.human(t['data']), t['layers'])
              for t in r['targets']]
    return lines


def migration_lines(action, result):
    """The text lines ``migration ACTION`` prints of its ``result``."""
    r = result
    if action == 'create':
        return ['migration %s created: %d disk(s), targets %s' % (
            r['name'], len(r['disks']),
            ', '.join(d['target_ref'] for d in r['disks']))] + [
            '  disk %d: %d layer(s) on the host, %s of layer files (the '
            'first sync reads their allocated blocks)' % (
                c['index'], c['layers'], progress_mod.human(c['files_size']))
            for c in r.get('chains') or ()]
    if action == 'sync':
        lines = ['synced %s: %d layer(s) applied, %s, %d bytes written, '
                 '%.1f s' % (r['name'], r['layers_applied'], _wire(r),
                             r['bytes_written'], r['seconds'])]
        lines += ['  disk %d: the chain changed from layer %s on: rewritten '
                  'from the base (%d bytes)' % (rw['disk'], rw['from_layer'],
                                                rw['bytes'])
                  for rw in r['rewrites']]
        lines += _migration_guest_lines(r.get('guest'))
        if r.get('steps'):
            lines.append('  steps: %s' % steps_text(r['steps']))
        return lines
    if action == 'cutover' and r.get('finished'):
        return ['cut over %s: finished what its cutover left (its targets '
                'were complete: downtime %.1f s); %d snapshot(s) removed; '
                'the source VM is halted' % (r['name'], r['downtime'],
                                             r['snapshots_removed'])] + [
            '  %s: %s' % (key, value)
            for key, value in sorted((r.get('details') or {}).items())]
    if action == 'cutover':
        lines = ['cut over %s: %d layer(s) applied, %s, %d bytes written, '
                 'downtime %.1f s; %d snapshot(s) removed; the source VM is '
                 'halted' % (r['name'], r['layers_applied'], _wire(r),
                             r['bytes_written'], r['downtime'],
                             r['snapshots_removed'])]
        for key, value in sorted((r.get('details') or {}).items()):
            lines.append('  %s: %s' % (key, value))
        if (r.get('phases') or {}).get('fix', 0) >= 0.5:
            lines.append('  downtime phase fix: %.1f s (inspection and '
                         'fix of the targets)' % r['phases']['fix'])
        if r.get('steps'):
            lines.append('  steps: %s' % steps_text(r['steps']))
        return lines
    if action == 'verify':
        return verify_lines(r)
    if action == 'rollback':
        return ['rolled back %s: the source VM runs again; %s%s' % (
            r['name'], 'the migration stays aborted (a new one copies the '
            'VM again)' if r.get('aborted') else
            '%d layer(s) to copy again at the next sync'
            % r['layers_forgotten'],
            '; server %s deleted (volumes kept)'
            % r['server_deleted'] if r.get('server_deleted') else '')]
    if action == 'abort':
        return ['aborted %s: %d snapshot(s) removed, %s' % (
            r['name'], r['snapshots_removed'],
            'targets deleted: %s' % ', '.join(r['targets_deleted'])
            if r['targets_deleted'] else 'targets kept')]
    if action == 'list':
        return ['%-20s %-8s %-13s %s' % (row['name'], row['target'],
                                         row['status'], row['location'])
                for row in r]
    # show
    lines = ['name:     %s' % r['name'],
             'location: %s' % r['location'],
             'target:   %s' % r['target'],
             'status:   %s%s' % (r['status'], ' (%s)' % r['error']
                                 if r.get('error') else '')]
    lines += _migration_device_lines(r)
    for d in r['disks']:
        lines.append('disk %d:   %s -> %s, %s, %d layer(s) applied%s' % (
            d['index'], d['source_id'], d['target_ref'],
            progress_mod.human(d.get('virtual_size')),
            len([a for a in d['applied'] if not a.get('partial')]),
            ' (one partial)' if any(a.get('partial')
                                    for a in d['applied']) else ''))
    lines += _migration_guest_lines(r.get('guest'), show=True)
    for s in r['syncs']:
        lines.append('sync:     %d layer(s), %d bytes read, %d written, '
                     '%.1f s%s' % (s['layers_applied'], s['bytes_read'],
                                   s['bytes_written'],
                                   s['ended_at'] - s['started_at'],
                                   '' if s['ok'] else ', failed: %s'
                                   % s['error']))
    for c in r.get('cutovers') or ():
        if c['downtime'] is None:
            text = 'cutover:  not complete'
        else:
            text = 'cutover:  downtime %.1f s' % c['downtime']
        text += details_text(c.get('details'))
        text += phases_text(c.get('phases'))
        if c.get('rolled_back_at'):
            text += ', rolled back'
        lines.append(text)
    verified = last_verify_text(r.get('last_verify'))
    if verified:
        lines.append('verified: %s' % verified)
    if r.get('last_run'):
        lines += last_run_lines(r['last_run'])
    return lines


def last_verify_text(v):
    """``show``: a migration's last ``verify`` (``v``: its
    ``last_verify``): when it ran (UTC), whether the targets have moved
    on since (syncs, a cutover: then it says to verify again), and its
    outcome; '' before the first."""
    if not v:
        return ''
    import re
    import time
    tasks = dict((t['name'], t) for t in v.get('tasks') or ())
    errors = [t['error'] for t in v.get('tasks') or () if t.get('error')]
    # The command's error names the migration, which show has named.
    error = re.sub(r'^migration \S+: ', '', errors[0]) if errors else ''
    if v.get('running'):
        outcome = 'running'
    elif v.get('interrupted'):
        outcome = 'interrupted in %s' % v.get('stopped_in')
    elif v.get('state') == 'SUCCESS':
        outcome = 'identical (%s target(s))' % (
            (tasks.get('judge') or {}).get('result') or {}).get('identical')
    elif v.get('stopped_in') == 'judge':
        outcome = 'differs: %s' % error
    else:
        outcome = 'failed in %s%s' % (v.get('stopped_in'),
                                      ': %s' % error if error else '')
    parts = [time.strftime('%Y-%m-%d %H:%M:%S UTC',
                           time.gmtime(v.get('started_at') or 0))]
    since = v.get('since') or {}
    moved = (['%d sync(s)' % since['syncs']] if since.get('syncs') else []
             ) + (['a cutover'] if since.get('cutovers') else [])
    if moved:
        parts.append('%s since: verify again' % ' and '.join(moved))
    return '; '.join(parts + [outcome])


#: What a cutover records (its ``details``), as ``show`` says it, in
#: this order; any other key after them, as ``key value`` (its ``_`` as
#: spaces).
CUTOVER_DETAILS = (
    ('guest', 'guest %s'), ('guest_inspected_by', 'inspected by %s'),
    ('hw_disk_bus', 'disk bus %s'), ('fixed', 'fixed: %s'),
    ('fix_snapshots_kept', 'snapshots kept from the fix: %s'),
    ('volumes', 'volumes ready: %s'),
    ('server_name', 'server %s'), ('server_id', 'server id %s'),
    ('flavor', 'flavor %s'),
    ('created_flavor', 'made by --create-flavor (id %s)'),
    ('port_ids', 'ports %s'),
    ('boot_seconds', 'seen booting after %s s'),
    ('server_deleted', 'server %s deleted'),
    ('targets_changed', 'targets changed: %s'))


def details_text(details):
    """``show``: a cutover's details, ``', guest Debian 12, inspected by
    cutover --fix, ...'`` (keys of no value left out)."""
    details = details or {}
    forms = dict(CUTOVER_DETAILS)
    keys = [k for k, _form in CUTOVER_DETAILS if k in details] + sorted(
        k for k in details if k not in forms)
    out = ''
    for k in keys:
        value = details[k]
        if isinstance(value, (list, tuple)):
            value = ' '.join(str(v) for v in value)
        if value not in (None, ''):
            out += ', ' + (forms.get(k) or k.replace('_', ' ') + ' %s') % (
                value,)
    return out


#: The phases of a cutover's downtime, in the order they happen.
DOWNTIME_PHASES = ('shutdown', 'apply', 'close', 'fix', 'finish', 'server')


def phases_text(phases):
    """``show``: where a cutover's downtime went, ``' (shutdown 0.071
    s, apply 0.102 s, ...)'`` (phases of 0 s left out), and the seconds
    before the shutdown request (not downtime); '' when not recorded."""
    if not phases:
        return ''
    parts = ['%s %.3f s' % (k, phases[k]) for k in DOWNTIME_PHASES
             if phases.get(k)]
    parts += ['%s %.3f s' % (k, v) for k, v in sorted(phases.items())
              if k not in DOWNTIME_PHASES and k != 'before_shutdown' and v]
    text = ' (%s)' % ', '.join(parts) if parts else ''
    if phases.get('before_shutdown') is not None:
        text += ', %.1f s before the shutdown request' % (
            phases['before_shutdown'])
    return text


def steps_text(steps):
    """Where a command's time went, step by step in the order they ran:
    ``'connect 0.071 s, snapshot 0.284 s, ...'``; '' when not recorded."""
    return ', '.join('%s %.3f s' % (k, v) for k, v in (steps or {}).items())


def last_run_lines(run):
    """``show``'s lines about the last command's TaskFlow flow: its
    state, where an unfinished or failed one stopped, each task's
    state."""
    done = len([t for t in run['tasks'] if t['state'] == 'SUCCESS'])
    names = [t['name'] for t in run['tasks']]
    failed = run.get('stopped_in') and not (run.get('interrupted') or
                                            run.get('running'))
    if failed and run['stopped_in'] in names:
        # TaskFlow reverted the tasks before the failed one (none is
        # SUCCESS any more): say how far the run went instead.
        done = names.index(run['stopped_in'])
        text = 'last run: %s %s, failed at task %d of %d' % (
            run['operation'], run['state'], done + 1, len(names))
    else:
        text = 'last run: %s %s, %d of %d task(s) done' % (
            run['operation'], run['state'], done, len(names))
    if run.get('interrupted'):
        text += ('; interrupted in %s (pid %s on %s is gone): run it '
                 'again' % (run['stopped_in'], run['pid'], run['host']))
    elif run.get('running'):
        text += '; running %s (pid %s on %s)' % (
            run['stopped_in'], run['pid'], run['host'])
    elif run.get('stopped_in'):
        errors = [t['error'] for t in run['tasks'] if t.get('error')]
        text += ' (%s)%s' % (run['stopped_in'],
                             ': %s' % errors[0] if errors else '')
    return [text, 'tasks:    %s' % ', '.join(
        '%s %s' % (t['name'], t['state']) for t in run['tasks'])]


def _migration_guest_lines(record, show=False):
    """The guest lines of a sync's summary, or of ``migration show``."""
    if not record:
        return []
    from any2kvm_os.migration import guest_step
    reason = (record.get('reasons') or {}).get('hw_disk_bus')
    if show:
        lines = ['guest:    %s (%s)' % (guest_step.describe(record),
                                        record.get('inspected_by'))]
    else:
        lines = ['  guest: %s (inspected in %.1f s)' % (
            guest_step.describe(record), record.get('seconds') or 0)]
    if reason:
        lines.append('%sbus: %s' % ('          ' if show else '    ',
                                    reason))
    for warning in record.get('warnings') or ():
        lines.append('%swarning: %s' % ('          ' if show else '    ',
                                        warning))
    return lines
