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
``any2kvm convert SOURCE OUTPUT`` writes it as one raw, sparse disk.
Errors are one line naming the file and the problem, exit status 1, no
traceback unless ``--debug``.
"""

import argparse
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
from any2kvm_os import opts

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


def _info(args, limits):
    source = convert.open_source(args.source, limits)
    try:
        disks = []
        for index, disk in enumerate(source.disks):
            layers = disk.describe()
            disks.append({'index': index, 'name': disk.name,
                          'format': disk.format,
                          'virtual_size': layers[0]['virtual_size'],
                          'chain': layers})
        result = {'source': args.source, 'container': source.kind,
                  'vm': source.vm, 'disks': disks}
        if disks:
            # The first disk's facts at the top, for one-disk sources.
            for key in ('format', 'virtual_size', 'chain'):
                result[key] = disks[0][key]
    finally:
        source.close()
    if args.format == 'json':
        print(json.dumps(result, indent=2))
        return 0
    print('source:       %s' % result['source'])
    print('container:    %s' % result['container'])
    for key, value in sorted(source.vm.items()):
        print('vm %-9s %s' % (key + ':', value))
    for disk in disks:
        layers = disk['chain']
        if len(disks) > 1 or source.vm:
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
    stem = re.sub(r'[^A-Za-z0-9._-]+', '_', source.vm.get('name') or
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
    return parser


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
    return opts.Limits.from_conf(conf)


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
        if isinstance(e, exception.Any2KvmError):
            msg = str(e)
        elif isinstance(e, OSError) and e.filename:
            msg = '%s: %s' % (e.filename, e.strerror)
        elif isinstance(e, cfg.Error):
            msg = 'configuration: %s' % e
        else:
            msg = 'internal error (%s: %s); rerun with --debug' % (
                type(e).__name__, e)
        sys.stderr.write('%s: error: %s\n' % (PROG, ' '.join(
            msg.splitlines())))
        return 1


if __name__ == '__main__':
    sys.exit(main())
