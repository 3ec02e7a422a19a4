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
import gc
import importlib
import json
import logging
import os
import signal
import sys
import threading

from any2kvm_os import api
from any2kvm_os.containers.ova import signature as ova_signature
from any2kvm_os import exception
from any2kvm_os import lazyopts
from any2kvm_os import limits as limits_mod
from any2kvm_os.progress import human
from any2kvm_os import progress as progress_mod
from any2kvm_os import redact
from any2kvm_os.ssh import options as ssh_options

LOG = logging.getLogger(__name__)
PROG = api.PROG
SOURCE_HELP = ('a disk file (parents beside it), a XenServer tar/tgz, an '
               'OVA or XVA, or a running VM: xenserver://USER@HOST[:PORT]/VM')


def _fact_text(value):
    """A VM fact as text: a mapping as ``key=value`` pairs, a list of them
    separated by ``; `` (NICs, disks), nothing as ``-``."""
    if isinstance(value, dict):
        return ', '.join('%s=%s' % (k, _fact_text(v))
                         for k, v in sorted(value.items())) or '-'
    if isinstance(value, (list, tuple)):
        return '; '.join(_fact_text(v) for v in value) or '-'
    return '-' if value is None or value == '' else str(value)


def _info(args, limits):
    result = api.inspect_location(args.source, limits, args=args,
                                  guest=args.inspect)
    disks = result['disks']
    if args.format == 'json':
        print(json.dumps(result, indent=2))
        return 0
    print('source:       %s' % result['source'])
    print('container:    %s' % result['container'])
    for key, value in sorted(result['vm'].items()):
        print('vm %-9s %s' % (key + ':', _fact_text(value)))
    for disk in disks:
        layers = disk['chain']
        if len(disks) > 1 or result['vm']:
            print('disk %d:       %s' % (disk['index'], disk['name']))
        print('format:       %s' % disk['format'])
        print('virtual size: %d (%s)' % (disk['virtual_size'],
                                         human(disk['virtual_size'])))
        print('chain:        %d layer(s), leaf first' % len(layers))
        for i, layer in enumerate(layers):
            print('  [%d] %s' % (i, layer['name']))
            print('      %s %s, id %s, parent %s' % (
                layer['format'], layer['subformat'], layer['id'],
                layer['parent_id'] or '-'))
            print('      size %s, allocated %s, creator %r' % (
                human(layer['virtual_size']),
                human(layer['allocated_bytes']), layer['creator']))
            if 'wire_bytes' in layer:
                print('      file %s, read over the wire %s' % (
                    human(layer['file_size']), human(layer['wire_bytes'])))
    if 'wire' in result:
        print('read over the wire: %s in all (layer files %s)' % (
            human(result['wire']['bytes_read']),
            human(result['wire']['file_bytes'])))
    if args.inspect:
        _print_inspection(result)
    return 0


def _print_inspection(inspection):
    from any2kvm_os.guest import inspect as guest_inspect
    for line in guest_inspect.text_lines(inspection):
        print(line)


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
    # Whole: a running VM is read from a snapshot; an incremental apply
    # reads the layers below its leaf, which only a snapshot changes.
    vm = api.open_location(args.source, limits, args=args,
                           whole=not args.onto)
    try:
        if args.onto:
            return _apply(args, vm)
        bar = progress_mod.DiskProgress() if args.progress else None

        def done(_index, disk, output, writer):
            if bar:
                bar.finish()
            if len(vm.disks) > 1:
                print('%s -> %s' % (disk.name, output))
        try:
            api.convert(vm, args.output, disk=args.disk,
                        overwrite=args.overwrite, progress=bar, each=done)
        except BaseException:
            if bar:
                bar.finish(ok=False)
            raise
        summary = api.wire_summary(vm)
        if summary:
            print(summary)
        outputs = api.convert_outputs(vm, args.output, args.disk)
    finally:
        # Before the inspection, which reads the outputs: the source's
        # hold on the host (a running VM's snapshot) ends with the copy.
        vm.close()
    paths = [path for _i, _d, path in outputs]
    inspection = api.guarded_inspection(
        args.inspect, paths[0], lambda: api.inspect_paths(
            paths, limits, fix=args.fix, source_vm=vm.facts,
            indexes=[i for i, _d, _p in outputs]),
        fix=args.fix)
    if inspection is not None:
        if args.format == 'json':
            print(json.dumps(inspection, indent=2))
        else:
            _print_inspection(inspection)
    return 0


def _apply(args, source):
    from any2kvm_os import incremental
    if len(source.disks) != 1 and args.disk is None:
        raise exception.Any2KvmError(
            '%s: holds %d disks: give --disk N with --onto'
            % (args.source, len(source.disks)))
    disk = source.disks[args.disk or 0]
    if args.finish and getattr(source, 'live', False):
        if not getattr(args, 'read_in_place', False):
            raise exception.Any2KvmError(
                '%s: the VM runs: --finish applies its leaf, which the '
                'guest changes while it is read; shut the VM down first '
                '(or give --read-in-place to take the leaf as it is read)'
                % args.source)
        LOG.warning('%s: the VM runs: its leaf is applied as it is read '
                    '(--read-in-place): consistent only if the guest wrote '
                    'nothing meanwhile', args.source)
    progress = progress_mod.Progress(disk.size_hint) if args.progress \
        else None
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


def _import(args, limits):
    results = api.run_import(args, limits,
                             lambda: api.cloud_session(args.os_cloud))
    summary = api.import_summary(args.target, results)
    if args.format == 'json':
        print(json.dumps(summary, indent=2, sort_keys=False))
        return 0
    for result in results:
        if len(results) > 1:
            print('disk %d:' % result.get('disk', 0))
        for key in [k for k in api.RESULT_FIELDS if k in result and
                    k != 'disk']:
            value = result[key]
            if key == 'properties':
                value = ', '.join('%s=%s' % kv for kv in
                                  sorted(value.items()))
            elif key == 'size':
                value = '%d (%s)' % (value, human(value))
            print('%s%-14s %s' % ('  ' if len(results) > 1 else '',
                                  key + ':', value))
    if results and 'guest' in results[0]:
        _print_inspection(results[0])
    if results and results[0].get('server'):
        _print_server(results[0]['server'])
    return 0


def _print_server(server):
    """What ``import --create-server`` made, and why."""
    print('%-14s %s (%s)' % ('server:', server['name'], server['id']))
    for line in server.get('plan') or ():
        print('%-14s %s' % ('', line))
    print('%-14s %s' % ('', server['boot_message']))


def _migration(args, limits):
    action = args.migration_command
    result = api.run_migration(
        action, args, limits,
        lambda: api.cloud_session(getattr(args, 'os_cloud', None)),
        sys.stderr)
    if getattr(args, 'format', 'text') == 'json':
        # In the order made: ``steps`` in the order they ran.
        print(json.dumps(result, indent=2))
        return 0
    for line in api.migration_lines(action, result):
        print(line)
    return 0


def _add_migration(sub, common, full=True):
    from any2kvm_os import arguments
    p = sub.add_parser('migration', parents=[common],
                       help='warm migration of a running XenServer VM')
    msub = p.add_subparsers(dest='migration_command', metavar='ACTION')
    msub.required = True
    helps = {
        'create': 'record a migration and create its targets',
        'sync': 'snapshot the running VM and copy what changed',
        'cutover': 'shut the VM down and copy the rest',
        'verify': 'compare the targets with the disks, read again from '
                  'the host',
        'rollback': 'after a cutover: start the source VM again',
        'abort': 'remove the migration\'s snapshots',
        'show': 'show a migration',
        'list': 'list migrations',
    }
    for action in arguments.MIGRATION_ACTIONS:
        q = msub.add_parser(action, parents=[common], help=helps[action])
        arguments.add_migration_arguments(q, action, with_server=full)
    p.set_defaults(func=_migration)


def _global_options(parser, suppress):
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument('--debug', action='store_true', default=default,
                        help='log debug messages and show tracebacks')
    parser.add_argument('--config-file', action='append', default=default,
                        metavar='PATH', help='oslo.config file with an '
                        '[any2kvm] section (may be repeated)')


def build_parser(argv=()):
    """The parser of ``any2kvm`` for ``argv``: the options of the target
    plugins are added to ``import`` only when ``argv`` is an import, so
    that the other commands load no target (start-up time)."""
    with_targets = _command(argv) == 'import'
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
    p.add_argument('source', metavar='SOURCE', help=SOURCE_HELP)
    p.add_argument('--format', choices=('text', 'json'), default='text',
                   help='text for people (default), or one JSON document '
                        'for scripts')
    p.add_argument('--inspect', action='store_true',
                   help='look inside the disks (libguestfs): the guest, '
                        'its drivers and the image properties any2kvm '
                        'would set')
    ssh_options.add_arguments(p)
    ova_signature.add_arguments(p)
    p.set_defaults(func=_info)
    p = sub.add_parser('convert', parents=[common],
                       help='write SOURCE as a raw disk')
    p.add_argument('source', metavar='SOURCE', help=SOURCE_HELP)
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
    from any2kvm_os import arguments
    arguments.add_inspect_arguments(p, fix=True)
    p.add_argument('--format', choices=('text', 'json'), default='text',
                   help='of the inspection report')
    arguments.add_read_in_place_argument(p)
    ssh_options.add_arguments(p)
    ova_signature.add_arguments(p)
    p.set_defaults(func=_convert)
    p = sub.add_parser('import', parents=[common],
                       help='import LOCATION into the cloud (Glance) or as '
                            'raw files')
    if with_targets:
        from any2kvm_os import arguments
        arguments.add_import_arguments(p)
    p.add_argument('--os-cloud', metavar='CLOUD',
                   default=os.environ.get('OS_CLOUD') or None,
                   help='the cloud of clouds.yaml to use (default: '
                        'OS_CLOUD; without it the OS_* variables of an '
                        'openrc)')
    p.add_argument('--format', choices=('text', 'json'), default='text',
                   help='of what was imported: text for people (default), '
                        'or one JSON document for scripts')
    p.set_defaults(func=_import)
    # The server options (their library: start-up time) only for the
    # action that takes them.
    _add_migration(sub, common, full=_migration_action(argv) == 'cutover')
    return parser


def _setup(args):
    """Read the configuration: the ``--config-file`` files, else the
    default ones oslo.config finds (``/etc/any2kvm_os/any2kvm_os.conf``,
    ``~/.any2kvm_os/any2kvm.conf``, ``.conf.d`` directories, ...), and
    ``OS_ANY2KVM__<OPTION>`` variables; set up logging.  The limits."""
    if not (args.debug or args.config_file or
            lazyopts.configuration_found(api.PROJECT, PROG)):
        # Nothing to read but defaults: they are the options' own tables,
        # and neither oslo.config nor oslo.log is imported (about 0.03 s
        # of start-up).  Warnings go to stderr.
        _plain_logging()
        return limits_mod.Limits()
    # --debug, or configuration (which may carry [DEFAULT] logging
    # options).
    from oslo_config import cfg
    from oslo_log import log
    conf = cfg.ConfigOpts()
    api.register_opts(conf)
    root = logging.getLogger()
    before = list(root.handlers)
    log.register_options(conf)
    # Logs go to stderr: stdout carries the command's output (JSON).
    conf.set_default('use_stderr', True)
    # No --config-file: None, so that oslo.config looks for the default
    # files (an empty list would turn that off).
    conf(args=[], project=api.PROJECT, prog=PROG,
         default_config_files=args.config_file or None)
    if not (args.debug or _logging_configured(conf)):
        # Configuration of ours only: the plain warning lines, which
        # info and convert hold until they succeed (an error is then its
        # one line alone).  Without the handler oslo.log puts on the root
        # logger until its setup (it would print each warning again).
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        _plain_logging()
        return limits_mod.Limits.from_conf(conf)
    if args.debug:
        conf.set_override('debug', True)
    log.setup(conf, PROG)
    if not args.debug:
        # Warnings only, ours and the libraries' (alembic, paramiko):
        # stderr carries the one-line error of a failure.
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger('any2kvm_os').setLevel(logging.WARNING)
    return limits_mod.Limits.from_conf(conf)


def _logging_configured(conf):
    """Whether ``conf`` sets one of oslo.log's options (``log_file``,
    ``use_syslog``, ``debug``, ...) to other than its default:
    ``use_stderr`` aside, whose default the command sets."""
    # oslo.log's option list (its oslo-config-generator entry point).
    from oslo_log import _options
    return any(getattr(conf, opt.dest) != opt.default
               for _group, opts in _options.list_opts() for opt in opts
               if opt.dest in conf and opt.dest != 'use_stderr')


def _plain_logging():
    """Warnings (ours and the libraries') to stderr, as ``PROG: LEVEL:
    message`` lines, without oslo.log."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(
            PROG + ': %(levelname)s: %(message)s'))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)


def _words(argv, count):
    """The first ``count`` words of ``argv`` that are not options (nor
    the value of ``--config-file``): the command, its action."""
    words = []
    argv = list(argv)
    while argv and len(words) < count:
        word = argv.pop(0)
        if word == '--config-file':
            argv[:1] = []
        elif not word.startswith('-'):
            words.append(word)
    return words


def _command(argv):
    """The command word of ``argv`` (after the global options)."""
    words = _words(argv, 1)
    return words[0] if words else None


def _migration_action(argv):
    """The action word of ``any2kvm migration ACTION``, else None."""
    words = _words(argv, 2)
    if len(words) == 2 and words[0] == 'migration':
        return words[1]
    return None


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is when a record is emitted.

    While ``held`` is a list, records are kept there instead: ``info`` and
    ``convert`` print their warnings only once they succeed, so that a
    refusal is its one error line alone.
    """

    held = None

    def emit(self, record):
        if self.held is not None:
            self.held.append(record)
            return
        self._write(record)

    def _write(self, record):
        try:
            sys.stderr.write(self.format(record) + '\n')
        except Exception:
            self.handleError(record)

    def end_hold(self, show):
        """Stop holding; print what was held when ``show``."""
        held, self.held = self.held or [], None
        if show:
            for record in held:
                self._write(record)


#: Commands whose warnings wait for their success (see _StderrHandler).
_HOLD_WARNINGS = ('info', 'convert')


def _stderr_handler():
    for h in logging.getLogger().handlers:
        if isinstance(h, _StderrHandler):
            return h
    return None


#: Modules a command's work imports in any case (the SSH layer,
#: SQLAlchemy and the state database for ``migration``), loaded by the
#: console script before the collector is back on (:func:`console_main`).
#: Not TaskFlow: a sync or cutover loads it while the host does its first
#: work (:meth:`any2kvm_os.migration.engine._Run.start_ahead`).
PRELOAD = {
    'migration': ('any2kvm_os.migration.engine',
                  'any2kvm_os.migration.state.sql',
                  'any2kvm_os.migration.host'),
}


def _started(command):
    """The end of the console script's start-up: the command's
    :data:`PRELOAD` modules imported, every object made so far frozen
    (:func:`gc.freeze`: left out of every later collection, the one the
    interpreter runs at exit included), the cyclic collector on again."""
    for name in PRELOAD.get(command, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            # Raised again, where the command imports it, as it would be.
            break
    gc.freeze()
    gc.enable()


def console_main():
    """The ``any2kvm`` console script: :func:`main` with the cyclic
    garbage collector off while the command starts (its imports make
    hundreds of thousands of objects, none of them garbage, and the
    collector walked them again and again: about 0.2 s of a
    ``migration`` command, at its start and at its exit).  Calls of
    :func:`main` in a process of other work (tests, tools) leave the
    collector alone."""
    gc.disable()
    try:
        return main(started=_started)
    finally:
        gc.enable()


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a service manager's stop) or SIGHUP
    (the terminal or SSH session the command ran in went away): raised in
    the main thread like a Ctrl-C, so that what a command leaves behind
    when it is stopped is undone the same way (partial outputs removed,
    the snapshot of a running VM it reads, its dom0 attachments, the
    volumes it attached).  ``signum``: which."""

    def __init__(self, signum=signal.SIGTERM):
        super(Terminated, self).__init__(signum)
        self.signum = signum

    def __str__(self):
        # What a migration's record says of the run it stopped.
        return 'terminated (%s)' % (
            'hangup' if self.signum == signal.SIGHUP else 'SIGTERM')


def _terminated(signum, frame):
    raise Terminated(signum)


#: The signals turned into :class:`Terminated`.
STOPS = (signal.SIGTERM, signal.SIGHUP)


def _on_sigterm():
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (in the main
    thread only; a signal ignored, as ``nohup`` ignores SIGHUP, stays
    ignored); returns {signal: the handler it replaced}."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in STOPS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            continue
        previous[signum] = signal.signal(signum, _terminated)
    return previous


def _quiet_stdout():
    """Standard output onto /dev/null: the pipe it was is closed, and
    the interpreter's flush at exit would fail on it again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _say(text):
    """``text`` on stderr, unless stderr is gone (a terminal hung up)."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main(argv=None, started=None):
    """Run the command of ``argv`` (default ``sys.argv[1:]``); returns
    the exit status.  ``started(command)``: called once the command's
    options are parsed and read, before it runs."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler = None
    command = _command(argv)
    previous = _on_sigterm()
    try:
        limits = _setup(args)
        if started is not None:
            started(command)
        if command in _HOLD_WARNINGS:
            handler = _stderr_handler()
            if handler is not None:
                handler.held = []
        rc = args.func(args, limits)
        if handler is not None:
            handler.end_hold(True)
        return rc
    except KeyboardInterrupt as e:
        if handler is not None:
            handler.end_hold(True)
        if isinstance(e, Terminated):
            _say('%s: terminated%s\n' % (
                PROG, ' (hangup)' if e.signum == signal.SIGHUP else ''))
            return 128 + e.signum
        _say('%s: interrupted\n' % PROG)
        return 130
    except Exception as e:
        if handler is not None:
            handler.end_hold(False)
        if args.debug:
            raise
        if isinstance(e, BrokenPipeError):
            # The reader of our output went away (``| head``): end as a
            # program that writes to a closed pipe ends, quietly, with
            # SIGPIPE's status (what the command did is done and
            # recorded).
            _quiet_stdout()
            return 128 + signal.SIGPIPE
        msg = api.error_message(e) or 'internal error (%s: %s); rerun with ' \
            '--debug' % (type(e).__name__, ' '.join(str(e).split()))
        # Whatever the error quotes (a URL, a location, a library's
        # message), no password written into it is shown.
        sys.stderr.write('%s: error: %s\n' % (PROG, redact.text(msg)))
        return 1
    finally:
        for signum, handler_was in previous.items():
            if handler_was is not None:
                signal.signal(signum, handler_was)
        if handler is not None and handler.held is not None:
            handler.end_hold(True)


if __name__ == '__main__':
    sys.exit(console_main())
