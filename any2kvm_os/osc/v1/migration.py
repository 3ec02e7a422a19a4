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

"""``openstack any2kvm migration create|sync|cutover|verify|rollback|abort|
show|list``: warm migration of a running XenServer VM.

The commands only parse, call :func:`any2kvm_os.api.run_migration` and
show its result (``-f json`` for JSON); the arguments are those of
``any2kvm migration`` (:func:`any2kvm_os.arguments.
add_migration_arguments`), without ``--os-cloud`` and ``--format``, which
OSC has.
"""

from osc_lib.command import command

from any2kvm_os.osc.v1 import common


class _Migration(object):
    action = None
    # A file migration needs no cloud: OSC logs in only when a Cinder
    # migration asks (cloud()).
    auth_required = False

    def get_parser(self, prog_name):
        parser = super(_Migration, self).get_parser(prog_name)
        from any2kvm_os import arguments
        common.add_config_file(parser)
        arguments.add_migration_arguments(parser, self.action,
                                          with_format=False,
                                          with_cloud=False)
        return parser

    def _cloud(self):
        manager = self.app.client_manager
        # auth_required is False: authenticate now, as OSC would have.
        manager._auth_required = True
        manager.setup_auth()
        client = manager.any2kvm
        client.session.get_token()
        return client.session, client.region_name, client.interface

    def run_action(self, parsed_args):
        from any2kvm_os import api
        with common.errors():
            limits = api.load_limits(parsed_args.config_file)
            return api.run_migration(self.action, parsed_args, limits,
                                     self._cloud, self.app.stderr)

    def take_action(self, parsed_args):
        result = self.run_action(parsed_args)
        data = dict(result)
        data.pop('holder', None)
        return common.show(data, order=ORDER, formatters=FORMATTERS)


ORDER = ('name', 'location', 'target', 'status', 'error', 'layers_applied',
         'bytes_read', 'files_size', 'bytes_written', 'seconds', 'downtime',
         'shutdown_seconds', 'snapshots_removed', 'layers_forgotten',
         'server_deleted', 'targets_deleted', 'disks', 'syncs', 'cutover',
         'cutovers', 'steps', 'against', 'targets')


def _formatters():
    from cliff import columns

    class ListColumn(columns.FormattableColumn):
        def human_readable(self):
            return '\n'.join(str(v) for v in self._value or ())

    class DisksColumn(columns.FormattableColumn):
        def human_readable(self):
            from any2kvm_os import progress
            return '\n'.join(
                '%s: %s -> %s, %s, %d layer(s) applied' % (
                    d.get('index'), d.get('source_id'), d.get('target_ref'),
                    progress.human(d.get('virtual_size')),
                    len([a for a in d.get('applied') or ()
                         if not a.get('partial')]))
                for d in self._value or ())

    class CutoversColumn(columns.FormattableColumn):
        def human_readable(self):
            from any2kvm_os import api
            return '\n'.join(
                'downtime %s s%s%s%s' % (
                    None if c.get('downtime') is None
                    else round(c['downtime'], 1),
                    api.details_text(c.get('details')),
                    api.phases_text(c.get('phases')),
                    ', rolled back' if c.get('rolled_back_at') else '')
                for c in self._value or ())

    class LastRunColumn(columns.FormattableColumn):
        """The last command's TaskFlow flow, as ``any2kvm migration
        show`` tells it."""

        def human_readable(self):
            from any2kvm_os import api
            if not self._value:
                return ''
            return '\n'.join(api.last_run_lines(self._value))

    class LastVerifyColumn(columns.FormattableColumn):
        """The last ``verify``'s outcome, as ``any2kvm migration show``
        tells it."""

        def human_readable(self):
            from any2kvm_os import api
            return api.last_verify_text(self._value)

    class GuestColumn(columns.FormattableColumn):
        """What inspection found: one line, its bus and why."""

        def human_readable(self):
            from any2kvm_os.migration import guest_step
            record = self._value or {}
            lines = [guest_step.describe(record) or '']
            if record.get('inspected_by'):
                lines[0] += ' (%s)' % record['inspected_by']
            why = (record.get('reasons') or {}).get('hw_disk_bus')
            if why:
                lines.append('bus: %s' % why)
            lines += ['warning: %s' % w for w in record.get('warnings') or ()]
            return '\n'.join(lines)

    class StepsColumn(columns.FormattableColumn):
        def human_readable(self):
            from any2kvm_os import api
            return api.steps_text(self._value)

    class TargetsColumn(columns.FormattableColumn):
        """What ``migration verify`` compared, a line per target."""

        def human_readable(self):
            from any2kvm_os import api
            return '\n'.join(api.verify_lines(
                {'name': '', 'against': '', 'bytes_read': 0, 'seconds': 0,
                 'targets': self._value or ()})[1:])

    class ChainsColumn(columns.FormattableColumn):
        """What ``migration create`` found of each disk's chain."""

        def human_readable(self):
            from any2kvm_os import progress
            return '\n'.join(
                'disk %s: %s layer(s), %s of layer files' % (
                    c.get('index'), c.get('layers'),
                    progress.human(c.get('files_size')))
                for c in self._value or ())

    return {'disks': DisksColumn, 'syncs': ListColumn,
            'rewrites': ListColumn, 'snapshots': ListColumn,
            'targets_deleted': ListColumn, 'cutovers': CutoversColumn,
            'last_run': LastRunColumn, 'last_verify': LastVerifyColumn,
            'guest': GuestColumn,
            'steps': StepsColumn, 'targets': TargetsColumn,
            'chains': ChainsColumn}


FORMATTERS = _formatters()


def _show_command(action, description):
    """The command ``migration ACTION`` that shows one migration: a
    :class:`_Migration` with the action as its attribute."""
    return type('Migration%s' % action.capitalize(),
                (_Migration, command.ShowOne),
                {'action': action, '_description': description,
                 '__module__': __name__})


MigrationCreate = _show_command(
    'create', 'Record a warm migration of a running XenServer VM and '
    'create its targets')
MigrationSync = _show_command(
    'sync', 'Snapshot the running VM and copy what changed')
MigrationCutover = _show_command(
    'cutover', 'Shut the VM down and copy the rest (downtime shown)')
MigrationVerify = _show_command(
    'verify', 'Compare the targets with the disks, read again from the '
    'host in full (after a sync, or a cutover without --fix)')
MigrationRollback = _show_command(
    'rollback', 'After a cutover: start the source VM again (the next sync '
    'copies what it writes)')
MigrationAbort = _show_command(
    'abort', 'Remove the migration\'s snapshots (and, on request, its '
    'targets)')
MigrationShow = _show_command('show', 'Show a migration')


class MigrationList(_Migration, command.Lister):
    _description = 'List migrations'
    action = 'list'

    def take_action(self, parsed_args):
        rows = self.run_action(parsed_args)
        cols = ('name', 'target', 'status', 'location')
        return (('Name', 'Target', 'Status', 'Location'),
                [tuple(r[c] for c in cols) for r in rows])
