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

from oslo_config import cfg

from any2kvm_os import exception
from any2kvm_os import limits as limits_mod
from any2kvm_os import progress as progress_mod
from any2kvm_os import scratch
from any2kvm_os.ssh import options as ssh_options

PROG = 'any2kvm'

#: The fields of an import result, in display order.
RESULT_FIELDS = ('disk', 'name', 'id', 'path', 'size', 'sha256',
                 'os_hash_algo', 'os_hash_value', 'properties')


def load_limits(config_files=()):
    """Limits from the oslo.config defaults and ``config_files``."""
    conf = cfg.ConfigOpts()
    register_opts(conf)
    conf(args=[], project='any2kvm_os', prog=PROG,
         default_config_files=list(config_files or ()))
    return limits_mod.Limits.from_conf(conf)


def conversion_options():
    """The ``[any2kvm]`` options of a conversion: limits, scratch space,
    SSH connections, the sources' own, the migration state database."""
    from any2kvm_os.migration.state import options as state_options
    from any2kvm_os.sources.xenserver import options as xenserver
    return (limits_mod.OPTIONS + scratch.OPTIONS + ssh_options.OPTIONS +
            xenserver.OPTIONS + state_options.OPTIONS)


def register_opts(conf):
    """Register the options of a conversion on ``conf``."""
    conf.register_opts(conversion_options(), group=limits_mod.GROUP)


def error_message(e):
    """The one-line message of an error we expect (ours, a file that
    cannot be read, a bad configuration), or None."""
    if isinstance(e, exception.Any2KvmError):
        msg = str(e)
    elif isinstance(e, OSError) and e.filename:
        msg = '%s: %s' % (e.filename, e.strerror)
    elif isinstance(e, cfg.Error):
        msg = 'configuration: %s' % e
    else:
        return None
    return ' '.join(msg.splitlines())


def open_location(location, limits, source_name=None, session=None,
                  args=None):
    """An opened :class:`~any2kvm_os.vm.Vm` of ``location``: with the
    named source plugin, the one its URL scheme names
    (``xenserver://...``), or a local file detected by content.  ``args``:
    the parsed command line, for the sources' own options (SSH)."""
    from any2kvm_os.sources import base as sources
    return sources.open_location(location, limits, source_name,
                                 session=session, args=args)


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
    if disks:
        # The first disk's facts at the top, for one-disk sources.
        for key in ('format', 'virtual_size', 'chain'):
            result[key] = disks[0][key]
    return result


def inspect_location(location, limits, source_name=None, session=None,
                     args=None):
    """:func:`describe` of ``location``."""
    vm = open_location(location, limits, source_name, session, args)
    try:
        return describe(vm, location)
    finally:
        vm.close()


def convert_outputs(vm, output, disk=None):
    """[(index, disk, path)] of ``any2kvm convert``: OUTPUT is the file
    of the one disk (or of ``--disk N``), or the existing directory of
    one file per disk, named as ``import --target file`` names them."""
    from any2kvm_os.targets import base as targets
    from any2kvm_os.targets import file as file_target
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
    where = (region.config.get('auth') or {}).get('auth_url') or 'keystone'
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Its warnings (version discovery) precede the error that tells
        # what went wrong; --debug shows them.
        logging.getLogger('keystoneauth').setLevel(logging.ERROR)
    try:
        # Authenticate now: a wrong password is told before the disks are
        # read, not after.
        session.get_token()
    except ks_exc.Unauthorized as e:
        raise exception.TargetError(
            path=where, reason='authentication failed (check the user, '
            'password, domain and project): %s' % e)
    except ks_exc.ConnectFailure as e:
        raise exception.TargetError(path=where,
                                    reason='cannot connect: %s' % e)
    except ks_exc.ClientException as e:
        raise exception.TargetError(
            path=where, reason='authentication failed: %s: %s' % (
                type(e).__name__, e))
    return session, region.region_name or None, \
        region.config.get('interface')


def import_vm(location, target, name, limits, source_name=None,
              props=None, disk=None, session=None, progress=None,
              target_options=None, args=None):
    """Open ``location`` and write its disks to ``target`` (a name of the
    ``any2kvm_os.targets`` namespace, built with ``target_options``).
    Returns (VM facts, results)."""
    from any2kvm_os.targets import base as targets
    cls = targets.get_class(target)
    vm = open_location(location, limits, source_name, session=session,
                       args=args)
    try:
        plugin = cls(session=session, **(target_options or {}))
        return vm.facts, plugin.write(vm, name, props, disk=disk,
                                      progress=progress)
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
