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

"""The standalone ``any2kvm`` command.

``any2kvm info SOURCE`` shows the format and resolved chain of a disk;
``any2kvm convert SOURCE OUTPUT`` writes it as one raw, sparse disk;
``any2kvm import LOCATION --name NAME`` writes a VM's disks to a target
plugin (Glance images by default).
Errors are one line naming the file and the problem, exit status 1, no
traceback unless ``--debug``.
"""

import argparse
import inspect
import json
import logging
import os
import re
import sys
import time

from oslo_config import cfg

from any2kvm_os import convert
from any2kvm_os import exception
from any2kvm_os import incremental
from any2kvm_os import limits as a2k_limits
from any2kvm_os import opts
from any2kvm_os import scratch

LOG = logging.getLogger(__name__)
PROG = 'any2kvm'


def _human(n):
    if n is None:
        return '-'
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return ('%d %s' % (n, unit)) if unit == 'B' else \
                '%.1f %s' % (n, unit)
        n /= 1024.0


class Progress(object):
    """Percent, rate and ETA on a terminal; a line per 10% otherwise."""

    def __init__(self, total, stream=None):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.last_decile = -1
        self.done = 0

    def __call__(self, done, total=None):
        self.done = max(self.done, done)
        total = total or self.total
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        if total:
            pct = min(100.0, 100.0 * self.done / total)
            eta = (total - self.done) / rate if rate else 0
            text = '%5.1f%% %s of %s, %s/s, ETA %ds' % (
                pct, _human(self.done), _human(total), _human(rate), eta)
            decile = int(pct // 10)
        else:
            text = '%s, %s/s' % (_human(self.done), _human(rate))
            decile = int(self.done // (1 << 30))
        if self.tty:
            if now - self.last >= 0.2:
                self.stream.write('\r' + text.ljust(70))
                self.stream.flush()
                self.last = now
        elif decile != self.last_decile:
            self.stream.write(text + '\n')
            self.last_decile = decile

    def finish(self, total=None):
        if total is not None:
            self.total = total
        elapsed = time.monotonic() - self.start
        if self.tty:
            self.stream.write('\r'.ljust(72) + '\r')
        self.stream.write('done: %s in %.1fs\n' % (_human(self.total or
                                                          self.done),
                                                   elapsed))
        self.stream.flush()


def describe_source(source, location=None):
    """What ``any2kvm info --format json`` shows of an opened VmSource:
    the container, the VM facts and, per disk, its format, virtual size
    and chain (leaf first); the first disk's facts also at the top."""
    disks = []
    for index, disk in enumerate(source.disks):
        layers = disk.describe()
        disks.append({'index': index, 'name': disk.name,
                      'format': disk.format,
                      'virtual_size': layers[0]['virtual_size'],
                      'chain': layers})
    result = {'source': location if location is not None else source.path,
              'container': source.container, 'vm': source.facts,
              'disks': disks}
    if disks:
        # The first disk's facts at the top, for one-disk sources.
        for key in ('format', 'virtual_size', 'chain'):
            result[key] = disks[0][key]
    return result


def inspect_location(location, limits, source_name=None, session=None):
    """describe_source() of ``location``, opened with the named source
    plugin or detected by content."""
    if source_name is None:
        # Detection by content, without loading the plugins (start-up).
        source = convert.open_source(location, limits)
    else:
        from any2kvm_os.sources import base as sources
        source = sources.open_location(location, limits, source_name,
                                       session=session)
    try:
        return describe_source(source, location)
    finally:
        source.close()


def _info(args, limits):
    result = inspect_location(args.source, limits)
    disks = result['disks']
    if args.format == 'json':
        print(json.dumps(result, indent=2))
        return 0
    print('source:       %s' % result['source'])
    print('container:    %s' % result['container'])
    for key, value in sorted(result['vm'].items()):
        print('vm %-9s %s' % (key + ':', value))
    for disk in disks:
        layers = disk['chain']
        if len(disks) > 1 or result['vm']:
            print('disk %d:       %s' % (disk['index'], disk['name']))
        print('format:       %s' % disk['format'])
        print('virtual size: %d (%s)' % (disk['virtual_size'],
                                         _human(disk['virtual_size'])))
        print('chain:        %d layer(s), leaf first' % len(layers))
        for i, layer in enumerate(layers):
            print('  [%d] %s' % (i, layer['name']))
            print('      %s %s, id %s, parent %s' % (
                layer['format'], layer['subformat'], layer['id'],
                layer['parent_id'] or '-'))
            print('      size %s, allocated %s, creator %r' % (
                _human(layer['virtual_size']),
                _human(layer['allocated_bytes']), layer['creator']))
    return 0


def _disk_outputs(args, source):
    """[(disk, output path)] for a conversion."""
    disks = source.disks
    if args.disk is not None:
        if not 0 <= args.disk < len(disks):
            raise exception.Any2KvmError(
                '%s: has %d disk(s); --disk takes 0 to %d' % (
                    args.source, len(disks), len(disks) - 1))
        return [(disks[args.disk], args.output)]
    if len(disks) == 1:
        return [(disks[0], args.output)]
    if not os.path.isdir(args.output):
        raise exception.Any2KvmError(
            '%s: holds %d disks: give --disk N, or an existing directory as '
            'OUTPUT for one raw file per disk' % (args.source, len(disks)))
    stem = re.sub(r'[^A-Za-z0-9._-]+', '_', source.facts.get('name') or
                  os.path.basename(args.source)).strip('._') or 'disk'
    return [(disk, os.path.join(args.output, '%s-disk%d.raw' % (stem, i)))
            for i, disk in enumerate(disks)]


def _convert(args, limits):
    incremental_opts = (args.finish or args.start_at or args.stop_at
                        or args.state_dir)
    if args.onto and args.output:
        raise exception.Any2KvmError('give either OUTPUT or --onto TARGET, '
                                     'not both')
    if not args.onto and not args.output:
        raise exception.Any2KvmError('give OUTPUT, or --onto TARGET for an '
                                     'incremental apply')
    if incremental_opts and not args.onto:
        raise exception.Any2KvmError('--finish, --start-at, --stop-at and '
                                     '--state-dir go with --onto')
    source = convert.open_source(args.source, limits)
    try:
        if args.onto:
            return _apply(args, source)
        written = []
        try:
            for disk, output in _disk_outputs(args, source):
                progress = Progress(disk.size_hint) if args.progress \
                    else None
                target = convert.convert(disk, output,
                                         overwrite=args.overwrite,
                                         progress=progress)
                if not target.is_block:
                    written.append(output)
                if progress:
                    progress.finish(target.size)
                if len(source.disks) > 1:
                    print('%s -> %s' % (disk.name, output))
        except BaseException:
            # All disks of a VM or none: remove the ones already written.
            for output in written:
                os.unlink(output)
            raise
    finally:
        source.close()
    return 0


def _apply(args, source):
    if len(source.disks) != 1 and args.disk is None:
        raise exception.Any2KvmError(
            '%s: holds %d disks: give --disk N with --onto'
            % (args.source, len(source.disks)))
    disk = source.disks[args.disk or 0]
    progress = Progress(disk.size_hint) if args.progress else None
    applied, remaining = incremental.apply_layers(
        disk, args.onto, finish=args.finish, start_at=args.start_at,
        stop_at=args.stop_at, state_dir=args.state_dir, progress=progress)
    if progress:
        progress.finish()
    if applied:
        print('applied onto %s: %s' % (args.onto, ', '.join(applied)))
    else:
        print('nothing to apply onto %s: it is up to date' % args.onto)
    if remaining:
        print('still to apply: %s%s' % (
            ', '.join(remaining),
            ' (the leaf: after the VM stops, run again with --finish)'
            if len(remaining) == 1 else ''))
    else:
        print('%s holds the whole disk' % args.onto)
    return 0


class DiskProgress(object):
    """A :class:`Progress` per disk of a multi-disk import: a new one
    starts when the byte count goes back (the next disk)."""

    def __init__(self, stream=None):
        self.stream = stream
        self.current = None
        self.last = 0

    def __call__(self, done, total=None):
        if self.current is None or done < self.last:
            self.finish()
            self.current = Progress(total, self.stream)
        self.last = done
        self.current(done, total)

    def finish(self, ok=True):
        """Close the current disk's line: "done: ..." after a success; on
        a failure only end the progress line."""
        if self.current is not None:
            if ok:
                self.current.finish()
            elif self.current.tty:
                self.current.stream.write('\n')
                self.current.stream.flush()
            self.current = None
            self.last = 0


#: Targets that need no cloud (no authentication) and write no image
#: properties.
LOCAL_TARGETS = ('file',)


def target_options(target, directory=None, overwrite=False, defaults=True,
                   properties=None, wait=False, scratch_dir=None,
                   region_name=None, interface=None, volume_route=None,
                   volume_type=None, brick_mount_point_base=None,
                   scratch_limit=None):
    """The keyword arguments for the ``target`` plugin's constructor.

    An option the user gave (``--output-dir``, ``--overwrite``,
    ``--no-default-properties``, ``--property``) that the target does not
    take is an error; the others (``wait``, ``scratch_dir``,
    ``scratch_limit``, the cloud region and interface) are passed when the
    target takes them.
    """
    from any2kvm_os.targets import base as targets
    cls = targets.plugins().get(target)
    if cls is None:
        targets.get(target)  # raises the "unknown target" error
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        params = None   # takes anything
    options = {}
    for flag, key, value, given in (
            ('--output-dir', 'directory', directory, directory is not None),
            ('--overwrite', 'overwrite', overwrite, overwrite),
            ('--no-default-properties', 'defaults', defaults, not defaults),
            ('--volume-route', 'route', volume_route,
             volume_route is not None),
            ('--volume-type', 'volume_type', volume_type,
             volume_type is not None),
            ('--brick-mount-point-base', 'brick_mount_point_base',
             brick_mount_point_base, brick_mount_point_base is not None)):
        if not given:
            continue
        if params is not None and key not in params:
            raise exception.Any2KvmError('%s does not apply to target %s'
                                         % (flag, target))
        options[key] = value
    if properties and target in LOCAL_TARGETS:
        raise exception.Any2KvmError('--property does not apply to target '
                                     '%s' % target)
    for key, value in (('wait', wait), ('scratch_dir', scratch_dir),
                       ('scratch_limit', scratch_limit),
                       ('region_name', region_name),
                       ('interface', interface)):
        if value is not None and (params is None or key in params):
            options[key] = value
    return options


#: The fields of an import result, in display order.
RESULT_FIELDS = ('disk', 'name', 'id', 'path', 'size', 'sha256',
                 'os_hash_algo', 'os_hash_value', 'properties')


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


def parse_property(text):
    """argparse type of ``--property KEY=VALUE``."""
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            "expected KEY=VALUE, got %r" % text)
    return key, value


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


def run_import(args, limits, cloud, progress_stream=None):
    """The import both commands run (``any2kvm import`` and ``openstack
    any2kvm import``): target options from the parsed ``args``, a session
    from ``cloud()`` — (session, region, interface), asked only for a
    cloud target — a progress bar with ``--progress``; returns the
    results of :func:`any2kvm_os.importer.import_vm`."""
    from any2kvm_os import importer
    props = dict(args.properties or {})
    options = target_options(
        args.target, directory=args.output_dir, overwrite=args.overwrite,
        defaults=not args.no_default_properties, properties=props,
        wait=args.wait or None, scratch_dir=limits.scratch_dir,
        # The targets' own default is the option's: passed when set.
        scratch_limit=(None if limits.scratch_limit == scratch.DEFAULT_LIMIT
                       else limits.scratch_limit), **volume_flags(args))
    session = None
    if args.target not in LOCAL_TARGETS:
        session, region, interface = cloud()
        options.update(target_options(args.target, region_name=region,
                                      interface=interface))
    progress = DiskProgress(progress_stream) if args.progress else None
    try:
        _vm, results = importer.import_vm(
            args.location, args.target, args.name, limits,
            source_name=args.source_name, props=props, disk=args.disk,
            session=session, progress=progress, target_options=options)
    except BaseException:
        if progress:
            progress.finish(ok=False)
        raise
    if progress:
        progress.finish()
    return results


def _import(args, limits):
    results = run_import(args, limits,
                         lambda: cloud_session(args.os_cloud))
    summary = import_summary(args.target, results)
    if args.format == 'json':
        print(json.dumps(summary, indent=2, sort_keys=False))
        return 0
    for result in results:
        if len(results) > 1:
            print('disk %d:' % result.get('disk', 0))
        for key in [k for k in RESULT_FIELDS if k in result and
                    k != 'disk']:
            value = result[key]
            if key == 'properties':
                value = ', '.join('%s=%s' % kv for kv in
                                  sorted(value.items()))
            elif key == 'size':
                value = '%d (%s)' % (value, _human(value))
            print('%s%-14s %s' % ('  ' if len(results) > 1 else '',
                                  key + ':', value))
    return 0


def _global_options(parser, suppress):
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument('--debug', action='store_true', default=default,
                        help='log debug messages and show tracebacks')
    parser.add_argument('--config-file', action='append', default=default,
                        metavar='PATH', help='oslo.config file with an '
                        '[any2kvm] section (may be repeated)')


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description='Read hypervisor disk images (VHD chains, '
        'XenServer tgz) and write raw disks for KVM.')
    _global_options(parser, suppress=False)
    # The same options after the command (any2kvm convert ... --debug).
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, True)
    parser.set_defaults(debug=False, config_file=[])
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    p = sub.add_parser('info', parents=[common],
                       help='show format, size and snapshot chain')
    p.add_argument('source', metavar='SOURCE',
                   help='a disk file (parents beside it) or a XenServer '
                        'tar/tgz of 0.vhd .. n.vhd')
    p.add_argument('--format', choices=('text', 'json'), default='text')
    p.set_defaults(func=_info)
    p = sub.add_parser('convert', parents=[common],
                       help='write SOURCE as a raw disk')
    p.add_argument('source', metavar='SOURCE',
                   help='a disk file (parents beside it) or a XenServer '
                        'tar/tgz of 0.vhd .. n.vhd')
    p.add_argument('output', metavar='OUTPUT', nargs='?',
                   help='a new raw file (sparse), or an existing block '
                        'device written in place')
    g = p.add_argument_group(
        'incremental apply', 'Apply only the layers newer than what TARGET '
        'holds (minimal-downtime migration). By default every layer below '
        'the leaf (the active layer of a running VM) is applied.')
    g.add_argument('--onto', metavar='TARGET',
                   help='an existing raw file or block device (a missing '
                        'file is created) to bring up to date')
    g.add_argument('--finish', action='store_true',
                   help='apply the leaf too (after the VM has stopped)')
    g.add_argument('--start-at', metavar='LAYER',
                   help='first layer to apply (name or id)')
    g.add_argument('--stop-at', metavar='LAYER',
                   help='last layer to apply (name or id)')
    g.add_argument('--state-dir', metavar='DIR',
                   help='keep the state file in DIR instead of beside '
                        'TARGET (needed for block devices)')
    p.add_argument('--progress', action='store_true',
                   help='show progress on stderr')
    p.add_argument('--overwrite', action='store_true',
                   help='replace OUTPUT if it is an existing file')
    p.add_argument('--disk', type=int, metavar='N',
                   help='which disk of a multi-disk source (OVA, XVA) to '
                        'write, counted from 0 as "any2kvm info" lists '
                        'them; without it such a source needs a directory '
                        'as OUTPUT')
    p.set_defaults(func=_convert)
    p = sub.add_parser('import', parents=[common],
                       help='import LOCATION into the cloud (Glance) or as '
                            'raw files')
    add_import_arguments(p)
    p.add_argument('--os-cloud', metavar='CLOUD',
                   default=os.environ.get('OS_CLOUD') or None,
                   help='the cloud of clouds.yaml to use (default: '
                        'OS_CLOUD; without it the OS_* variables of an '
                        'openrc)')
    p.add_argument('--format', choices=('text', 'json'), default='text')
    p.set_defaults(func=_import)
    return parser


def add_import_arguments(parser, source_choices=None, target_choices=None,
                         property_action=None):
    """The arguments of ``any2kvm import`` and ``openstack any2kvm
    import``.  ``--property`` is appended as (key, value) pairs, or given
    to ``property_action`` (OSC's KeyValueAction: a dict)."""
    parser.add_argument('location', metavar='LOCATION',
                        help='where the VM or disk is: a disk file (parents '
                             'beside it), an OVA, a XenServer tgz or XVA')
    parser.add_argument('--name', required=True, metavar='NAME',
                        help='name of the image (of the first disk; the '
                             'others are NAME-diskN)')
    parser.add_argument('--source', dest='source_name',
                        metavar=None if source_choices else 'SOURCE',
                        choices=source_choices,
                        help='kind of LOCATION, a source plugin ("openstack '
                             'any2kvm source list" lists them); default: '
                             'detected by content')
    parser.add_argument('--target', default='glance',
                        metavar=None if target_choices else 'TARGET',
                        choices=target_choices,
                        help='where the disks go: glance (raw images, the '
                             'default), file (raw files in --output-dir)')
    parser.add_argument('--disk', type=int, metavar='N',
                        help='import only disk N of a multi-disk source, '
                             'counted from 0')
    if property_action is None:
        kwargs = {'action': 'append', 'type': parse_property}
    else:
        kwargs = {'action': property_action}
    parser.add_argument('--property', dest='properties', metavar='KEY=VALUE',
                        help='image property to set (repeat for several); '
                             'overrides the ones derived from the VM',
                        **kwargs)
    parser.add_argument('--no-default-properties', action='store_true',
                        help='set only the --property ones, none derived '
                             'from the VM (hw_disk_bus, os_distro, ...)')
    parser.add_argument('--progress', action='store_true',
                        help='show progress on stderr')
    parser.add_argument('--wait', action='store_true',
                        help='wait until the image or volume is usable (a '
                             'Glance upload is always waited for)')
    parser.add_argument('--output-dir', metavar='DIR',
                        help='directory of the raw files (--target file; '
                             'default: the current directory)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace existing raw files (--target file)')
    parser.add_argument('--volume-type', metavar='TYPE',
                        help='volume type of the volumes (--target cinder; '
                             'default: the cloud\'s default type)')
    parser.add_argument('--volume-route', choices=('auto', 'image',
                                                   'attach'),
                        help='how the data reaches a volume (--target '
                             'cinder): image (a raw Glance image the volume '
                             'is created from: works everywhere), attach '
                             '(attach the new volume to this host with '
                             'os-brick and write it directly), auto '
                             '(attach when os-brick is installed and this '
                             'runs as root, else image; the default)')
    parser.add_argument('--brick-mount-point-base', metavar='DIR',
                        help='where os-brick finds or mounts NFS and other '
                             'file-system shares when attaching '
                             '(--volume-route attach or auto)')
    return parser


def volume_flags(args):
    """The --volume-* options of parsed ``args``, as target_options takes
    them."""
    return {'volume_route': args.volume_route,
            'volume_type': args.volume_type,
            'brick_mount_point_base': args.brick_mount_point_base}


def _setup(args):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    # oslo.log is set up when logging is asked for (--debug, or a config
    # file that may carry [DEFAULT] logging options); a plain run logs
    # warnings to stderr without paying oslo.log's import at start-up.
    full_logging = args.debug or args.config_file
    if full_logging:
        from oslo_log import log
        log.register_options(conf)
        # Logs go to stderr: stdout carries the command's output (JSON).
        conf.set_default('use_stderr', True)
    conf(args=[], project='any2kvm_os', prog=PROG,
         default_config_files=args.config_file)
    if full_logging:
        if args.debug:
            conf.set_override('debug', True)
        log.setup(conf, PROG)
        if not args.debug:
            logging.getLogger('any2kvm_os').setLevel(logging.WARNING)
    else:
        root = logging.getLogger()
        if not any(isinstance(h, _StderrHandler) for h in root.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter(
                PROG + ': %(levelname)s: %(message)s'))
            root.addHandler(handler)
        root.setLevel(logging.WARNING)
    return a2k_limits.Limits.from_conf(conf)


def load_limits(config_files=()):
    """Limits from the oslo.config defaults and ``config_files`` (for
    callers that set up logging themselves, like the OSC plugin)."""
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf(args=[], project='any2kvm_os', prog=PROG,
         default_config_files=list(config_files or ()))
    return a2k_limits.Limits.from_conf(conf)


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is when a record is emitted."""

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + '\n')
        except Exception:
            self.handleError(record)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        limits = _setup(args)
        return args.func(args, limits)
    except KeyboardInterrupt:
        sys.stderr.write('%s: interrupted\n' % PROG)
        return 130
    except Exception as e:
        if args.debug:
            raise
        msg = error_message(e) or 'internal error (%s: %s); rerun with ' \
            '--debug' % (type(e).__name__, ' '.join(str(e).split()))
        sys.stderr.write('%s: error: %s\n' % (PROG, msg))
        return 1


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


if __name__ == '__main__':
    sys.exit(main())
