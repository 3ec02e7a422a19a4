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

"""The OpenStackClient plugin (``openstack any2kvm ...``) and the
standalone ``any2kvm import``; the cloud is faked (the loopback cloud
tests are in tests/integration)."""

import argparse
import io
import json
import os
import pathlib
import subprocess
import sys
from unittest import mock

import fixtures
from osc_lib import exceptions as osc_exc
from osc_lib.test import base
import pytest
from stevedore import extension

from any2kvm_os import api
from any2kvm_os.cmd import any2kvm
from any2kvm_os import exception
from any2kvm_os.osc import plugin
from any2kvm_os.osc.v1 import import_image
from any2kvm_os.osc.v1 import inspect
from any2kvm_os.osc.v1 import migration
from any2kvm_os.osc.v1 import sources
from any2kvm_os import progress as progress_mod
from any2kvm_os.targets import base as targets
from tests.lib import vhdbuild

VENV_BIN = os.path.dirname(sys.executable)
IMPORT_VM = 'any2kvm_os.api.import_vm'

GLANCE_RESULT = {
    'disk': 0, 'name': 'vm1', 'id': 'c0ffee00-0000-4000-8000-000000000001',
    'size': 4 << 20, 'sha256': 'ab' * 32, 'os_hash_algo': 'sha512',
    'os_hash_value': 'cd' * 64,
    'properties': {'hw_disk_bus': 'scsi', 'hw_scsi_model': 'virtio-scsi',
                   'min_disk': 1}}


def glance_result(index, **kw):
    r = dict(GLANCE_RESULT, disk=index,
             name=targets.disk_name('vm1', index, 2),
             id='c0ffee00-0000-4000-8000-00000000000%d' % (index + 1))
    r.update(kw)
    return r


def clean_env():
    """An environment without any cloud (no OS_*, no clouds.yaml)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('OS_')}
    env['HOME'] = '/nonexistent'
    env['PATH'] = VENV_BIN + os.pathsep + env.get('PATH', '')
    return env


# -- the plugin module --------------------------------------------------------

def test_plugin_module():
    assert plugin.API_NAME == 'any2kvm'
    assert plugin.API_VERSION_OPTION == 'os_any2kvm_api_version'
    assert '1' in plugin.API_VERSIONS
    instance = mock.Mock(session=mock.sentinel.session,
                         region_name='RegionOne', interface='public',
                         _api_version={'any2kvm': '1'})
    client = plugin.make_client(instance)
    assert client.session is mock.sentinel.session
    assert (client.region_name, client.interface, client.api_version) == (
        'RegionOne', 'public', '1')
    instance._api_version = {'any2kvm': '7'}
    with pytest.raises(ValueError, match='not supported'):
        plugin.make_client(instance)


def test_api_version_option(monkeypatch):
    monkeypatch.delenv('OS_ANY2KVM_API_VERSION', raising=False)
    parser = plugin.build_option_parser(argparse.ArgumentParser())
    assert parser.parse_args([]).os_any2kvm_api_version == '1'
    assert parser.parse_args(['--os-any2kvm-api-version', '2']) \
        .os_any2kvm_api_version == '2'
    monkeypatch.setenv('OS_ANY2KVM_API_VERSION', '3')
    parser = plugin.build_option_parser(argparse.ArgumentParser())
    assert parser.parse_args([]).os_any2kvm_api_version == '3'


def test_entry_points_load():
    mgr = extension.ExtensionManager('openstack.any2kvm.v1')
    assert {e.name: e.plugin for e in mgr} == {
        'any2kvm_import': import_image.ImportImage,
        'any2kvm_source_list': sources.ListSources,
        'any2kvm_inspect': inspect.Inspect,
        'any2kvm_migration_create': migration.MigrationCreate,
        'any2kvm_migration_sync': migration.MigrationSync,
        'any2kvm_migration_cutover': migration.MigrationCutover,
        'any2kvm_migration_verify': migration.MigrationVerify,
        'any2kvm_migration_rollback': migration.MigrationRollback,
        'any2kvm_migration_abort': migration.MigrationAbort,
        'any2kvm_migration_show': migration.MigrationShow,
        'any2kvm_migration_list': migration.MigrationList}
    mgr = extension.ExtensionManager('openstack.cli.extension')
    assert [e.entry_point.module for e in mgr if e.name == 'any2kvm'] == [
        'any2kvm_os.osc.plugin']


# -- parsers -----------------------------------------------------------------

class TestImportParser(base.TestCommand):

    def setUp(self):
        super(TestImportParser, self).setUp()
        self.cmd = import_image.ImportImage(self.app, None)

    def test_defaults(self):
        self.check_parser(self.cmd, ['disk.vhd', '--name', 'vm1'], [
            ('location', 'disk.vhd'), ('name', 'vm1'),
            ('source_name', None), ('target', 'glance'), ('disk', None),
            ('properties', None), ('no_default_properties', False),
            ('progress', False), ('wait', False), ('output_dir', None),
            ('overwrite', False), ('config_file', [])])

    def test_all_options(self):
        self.check_parser(self.cmd, [
            'vm.ova', '--name', 'vm1', '--source', 'ova', '--target', 'file',
            '--disk', '1', '--property', 'os_distro=ubuntu',
            '--property', 'note=a=b', '--no-default-properties',
            '--progress', '--wait', '--output-dir', '/tmp/x', '--overwrite',
            '--config-file', 'a.conf'], [
            ('location', 'vm.ova'), ('source_name', 'ova'),
            ('target', 'file'), ('disk', 1),
            ('properties', {'os_distro': 'ubuntu', 'note': 'a=b'}),
            ('no_default_properties', True), ('progress', True),
            ('wait', True), ('output_dir', '/tmp/x'), ('overwrite', True),
            ('config_file', ['a.conf'])])

    def test_refused(self):
        for argv in (
                ['disk.vhd'],                              # no --name
                ['--name', 'vm1'],                         # no LOCATION
                ['disk.vhd', '--name', 'vm1', '--source', 'vmx'],
                ['disk.vhd', '--name', 'vm1', '--target', 'swift'],
                ['disk.vhd', '--name', 'vm1', '--disk', 'two'],
                ['disk.vhd', '--name', 'vm1', '--property', 'novalue'],
                ['disk.vhd', '--name', 'vm1', '--property', '=v']):
            self.assertRaises(base.ParserException, self.check_parser,
                              self.cmd, argv, [])

    def test_source_choices_are_the_plugins(self):
        for name in ('file', 'ova', 'xenserver-tgz', 'xva'):
            self.check_parser(self.cmd, ['x', '--name', 'n', '--source',
                                         name], [('source_name', name)])


class TestInspectAndListParsers(base.TestCommand):

    def test_inspect(self):
        cmd = inspect.Inspect(self.app, None)
        self.assertFalse(cmd.auth_required)
        self.check_parser(cmd, ['disk.vhd'], [('location', 'disk.vhd'),
                                              ('source_name', None)])
        self.check_parser(cmd, ['x.tgz', '--source', 'xenserver-tgz'],
                          [('source_name', 'xenserver-tgz')])
        self.assertRaises(base.ParserException, self.check_parser, cmd,
                          [], [])
        self.assertRaises(base.ParserException, self.check_parser, cmd,
                          ['x', '--source', 'nope'], [])
        self.check_parser(cmd, ['disk.vhd'], [('inspect', False)])
        self.check_parser(cmd, ['disk.vhd', '--inspect'],
                          [('inspect', True)])

    def test_source_list(self):
        cmd = sources.ListSources(self.app, None)
        self.assertFalse(cmd.auth_required)
        self.check_parser(cmd, [], [])
        self.assertRaises(base.ParserException, self.check_parser, cmd,
                          ['extra'], [])


# -- take_action --------------------------------------------------------------

class TestImport(base.TestCommand):

    def setUp(self):
        super(TestImport, self).setUp()
        self.cmd = import_image.ImportImage(self.app, None)
        self.app.client_manager.any2kvm = plugin.Any2KvmClient(
            session=mock.sentinel.session, region_name='RegionOne',
            interface='public')
        self.import_vm = self.useFixture(fixtures.MockPatch(
            IMPORT_VM, return_value=({'name': 'vm1'}, [GLANCE_RESULT]))).mock

    def parse(self, *argv):
        return self.check_parser(self.cmd, list(argv), [])

    def test_one_disk(self):
        args = self.parse('disk.vhd', '--name', 'vm1', '--property',
                          'os_distro=ubuntu')
        columns, data = self.cmd.take_action(args)
        self.assertEqual(('target', 'disk', 'name', 'id', 'size', 'sha256',
                          'os_hash_algo', 'os_hash_value', 'properties'),
                         columns)
        shown = dict(zip(columns, data))
        self.assertEqual(GLANCE_RESULT['id'], shown['id'])
        self.assertEqual('glance', shown['target'])
        self.assertEqual(GLANCE_RESULT['properties'],
                         shown['properties'].machine_readable())
        self.assertIn("hw_disk_bus='scsi'",
                      shown['properties'].human_readable())
        self.import_vm.assert_called_once_with(
            'disk.vhd', 'glance', 'vm1', mock.ANY, source_name=None,
            props={'os_distro': 'ubuntu'}, disk=None,
            session=mock.sentinel.session, progress=None,
            target_options={'region_name': 'RegionOne',
                            'interface': 'public'}, args=args)

    def test_options_reach_the_target(self):
        args = self.parse('vm.ova', '--name', 'vm1', '--source', 'ova',
                          '--disk', '1', '--no-default-properties',
                          '--wait', '--progress')
        self.cmd.take_action(args)
        kw = self.import_vm.call_args[1]
        self.assertEqual('ova', kw['source_name'])
        self.assertEqual(1, kw['disk'])
        # The cloud's region and interface reach the target (a Glance
        # upload is synchronous whatever "wait" says).
        self.assertEqual({'defaults': False, 'wait': True,
                          'region_name': 'RegionOne',
                          'interface': 'public'}, kw['target_options'])
        self.assertIsInstance(kw['progress'], progress_mod.DiskProgress)

    def test_several_disks_are_all_listed(self):
        results = [glance_result(0), glance_result(1)]
        self.import_vm.return_value = ({}, results)
        columns, data = self.cmd.take_action(
            self.parse('vm.ova', '--name', 'vm1'))
        shown = dict(zip(columns, data))
        self.assertEqual(results[0]['id'], shown['id'])
        self.assertEqual(results, shown['disks'].machine_readable())
        text = shown['disks'].human_readable().splitlines()
        self.assertEqual(2, len(text))
        self.assertIn('vm1-disk1 %s' % results[1]['id'], text[1])

    def test_json_output(self):
        results = [glance_result(0), glance_result(1)]
        self.import_vm.return_value = ({}, results)
        args = self.parse('vm.ova', '--name', 'vm1', '-f', 'json')
        self.assertEqual(0, self.cmd.run(args))
        out = json.loads(self.fake_stdout.make_string())
        self.assertEqual(api.import_summary('glance', results), out)
        self.assertEqual(results[0]['properties'], out['properties'])
        self.assertEqual(results, out['disks'])
        self.assertEqual('sha512', out['os_hash_algo'])

    def test_our_errors_are_one_line_command_errors(self):
        for error, message in (
                (exception.InvalidImage(path='d.vhd',
                                        reason='bad footer\nchecksum'),
                 'd.vhd: bad footer checksum'),
                (exception.TargetError(path='glance', reason='authentication '
                                       'failed (check ...): 401'),
                 'glance: authentication failed (check ...): 401'),
                (FileNotFoundError(2, 'No such file or directory', 'd.vhd'),
                 'd.vhd: No such file or directory')):
            self.import_vm.side_effect = error
            e = self.assertRaises(osc_exc.CommandError, self.cmd.take_action,
                                  self.parse('d.vhd', '--name', 'vm1'))
            self.assertEqual(message, str(e))

    def test_bugs_are_not_disguised(self):
        self.import_vm.side_effect = ZeroDivisionError('oops')
        self.assertRaises(ZeroDivisionError, self.cmd.take_action,
                          self.parse('d.vhd', '--name', 'vm1'))

    def test_file_options_refused_for_glance(self):
        e = self.assertRaises(osc_exc.CommandError, self.cmd.take_action,
                              self.parse('d.vhd', '--name', 'vm1',
                                         '--output-dir', '/tmp'))
        self.assertEqual('--output-dir does not apply to target glance',
                         str(e))
        self.import_vm.assert_not_called()


class TestRealLocalCommands(base.TestCommand):
    """Source list, inspect and import --target file, nothing mocked."""

    def setUp(self):
        super(TestRealLocalCommands, self).setUp()
        self.tmp = pathlib.Path(self.useFixture(fixtures.TempDir()).path)
        self.paths = vhdbuild.write_chain(self.tmp, 3)

    def test_source_list(self):
        cmd = sources.ListSources(self.app, None)
        columns, rows = cmd.take_action(self.check_parser(cmd, [], []))
        self.assertEqual(('Name', 'Description'), columns)
        names = [r[0] for r in rows]
        self.assertEqual(sorted(names), names)
        self.assertIsSubset(['file', 'ova', 'xenserver-tgz', 'xva'], names)
        self.assertTrue(all(r[1] for r in rows))

    def test_inspect_is_any2kvm_info(self):
        cmd = inspect.Inspect(self.app, None)
        leaf = str(self.paths[0])
        args = self.check_parser(cmd, [leaf, '-f', 'json'], [])
        self.assertEqual(0, cmd.run(args))
        shown = json.loads(self.fake_stdout.make_string())
        out = io.StringIO()
        with mock.patch('sys.stdout', out):
            self.assertEqual(0, any2kvm.main(['info', leaf, '--format',
                                              'json']))
        self.assertEqual(json.loads(out.getvalue()), shown)
        self.assertEqual(['l2.vhd', 'l1.vhd', 'l0.vhd'],
                         [layer['name'] for layer in shown['chain']])
        self.assertEqual(shown['chain'][1]['id'],
                         shown['chain'][0]['parent_id'])
        # The table: a line per layer, a line per disk.
        columns, data = cmd.take_action(self.check_parser(cmd, [leaf], []))
        shown = dict(zip(columns, data))
        self.assertEqual(3, len(shown['chain'].human_readable()
                                .splitlines()))
        self.assertIn('0: %s, vhd, 4194304 bytes, 3 layer(s)' % leaf,
                      shown['disks'].human_readable())

    def test_inspect_errors(self):
        cmd = inspect.Inspect(self.app, None)
        e = self.assertRaises(osc_exc.CommandError, cmd.take_action,
                              self.check_parser(cmd, [str(self.paths[0]),
                                                      '--source', 'xva'],
                                                []))
        self.assertIn('is a disk image file, not a XenServer', str(e))
        self.assertNotIn('\n', str(e))
        e = self.assertRaises(osc_exc.CommandError, cmd.take_action,
                              self.check_parser(cmd, [str(self.tmp / 'no')],
                                                []))
        self.assertEqual('%s: No such file or directory' % (self.tmp / 'no'),
                         str(e))

    def test_import_to_files(self):
        # A file target needs no cloud: the client is not even looked up
        # (FakeClientManager has no "any2kvm" attribute).
        want = vhdbuild.expected_raw(self.tmp, self.paths)
        out = self.tmp / 'out'
        out.mkdir()
        cmd = import_image.ImportImage(self.app, None)
        args = self.check_parser(cmd, [
            str(self.paths[0]), '--name', 'vm1', '--target', 'file',
            '--output-dir', str(out), '-f', 'json'], [])
        self.assertEqual(0, cmd.run(args))
        shown = json.loads(self.fake_stdout.make_string())
        self.assertEqual({'target': 'file', 'disk': 0, 'name': 'vm1.raw',
                          'path': str(out / 'vm1.raw'), 'size': len(want)},
                         shown)
        self.assertEqual(want, (out / 'vm1.raw').read_bytes())
        e = self.assertRaises(osc_exc.CommandError, cmd.take_action, args)
        self.assertIn('already exists', str(e))
        args = self.check_parser(cmd, [
            str(self.paths[0]), '--name', 'vm1', '--target', 'file',
            '--output-dir', str(out), '--property', 'a=b'], [])
        e = self.assertRaises(osc_exc.CommandError, cmd.take_action, args)
        self.assertEqual('--property does not apply to target file', str(e))

    def test_limits_from_a_config_file(self):
        conf = self.tmp / 'a.conf'
        conf.write_text('[any2kvm]\nmax_chain_depth = 2\n')
        cmd = inspect.Inspect(self.app, None)
        e = self.assertRaises(osc_exc.CommandError, cmd.take_action,
                              self.check_parser(cmd, [
                                  str(self.paths[0]), '--config-file',
                                  str(conf)], []))
        self.assertIn('its chain has more than 2 layers', str(e))
        conf.write_text('[any2kvm]\nmax_chain_depth = many\n')
        e = self.assertRaises(osc_exc.CommandError, cmd.take_action,
                              self.check_parser(cmd, [
                                  str(self.paths[0]), '--config-file',
                                  str(conf)], []))
        self.assertTrue(str(e).startswith('configuration: '), str(e))


# -- through the real openstack command ---------------------------------------

def run_openstack(*argv, **kw):
    return subprocess.run([os.path.join(VENV_BIN, 'openstack')] + list(argv),
                          capture_output=True, text=True, env=clean_env(),
                          timeout=120, **kw)


def test_openstack_lists_and_runs_the_commands(tmp_path):
    r = run_openstack('--help')
    assert r.returncode == 0, r.stderr
    for name in ('any2kvm import', 'any2kvm inspect',
                 'any2kvm source list'):
        assert '\n  %s ' % name in r.stdout
    # No cloud anywhere: the local commands need none.
    r = run_openstack('any2kvm', 'source', 'list', '-f', 'json')
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert {'file', 'ova', 'xenserver-tgz', 'xva'} <= {
        row['Name'] for row in rows}
    paths = vhdbuild.write_chain(tmp_path, 2)
    r = run_openstack('any2kvm', 'inspect', str(paths[0]), '-f', 'json')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['chain'][1]['name'] == 'l0.vhd'
    r = run_openstack('any2kvm', 'inspect', str(tmp_path / 'no.vhd'))
    assert r.returncode == 1
    assert r.stderr == '%s: No such file or directory\n' % (
        tmp_path / 'no.vhd')


def test_openstack_migration_commands_without_a_cloud(tmp_path):
    db = ['--state-db', 'sqlite:///%s' % (tmp_path / 'state.db')]
    r = run_openstack('any2kvm', 'migration', 'list', '-f', 'json', *db)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    r = run_openstack('any2kvm', 'migration', 'show', 'nope', *db)
    assert r.returncode == 1
    assert r.stderr == 'state database %s does not exist: no migration ' \
        'was created there (check --state-db, $ANY2KVM_STATE_DB or ' \
        'state_db_url)\n' % (tmp_path / 'state.db')
    assert not (tmp_path / 'state.db').exists()
    from any2kvm_os.migration.state import sql
    sql.SqlStore(db[1]).close()
    r = run_openstack('any2kvm', 'migration', 'show', 'nope', *db)
    assert r.returncode == 1
    assert r.stderr == 'migration nope: no such migration (see "any2kvm ' \
        'migration list")\n'
    r = run_openstack('any2kvm', 'migration', 'create', 'web',
                      'xenserver://root@127.0.0.1:1/vm', '--target', 'file',
                      '--volume-type', 'fast', *db)
    assert r.returncode == 1
    assert r.stderr == '--volume-type goes with --target cinder, not ' \
        '--target file\n'
    r = run_openstack('any2kvm', 'migration', 'rollback', 'nope', *db)
    assert r.returncode == 1 and 'no such migration' in r.stderr


def test_migration_arguments_are_the_same_in_both_command_lines():
    parser = any2kvm.build_parser(['migration'])
    for action in ('create', 'sync', 'cutover', 'verify', 'rollback',
                   'abort'):
        cmd = getattr(migration, 'Migration' + action.capitalize())(
            mock.Mock(), None)
        osc = cmd.get_parser('openstack any2kvm migration ' + action)
        words = ['web', 'xenserver://root@h/vm'] if action == 'create' \
            else ['web']
        a = parser.parse_args(['migration', action] + words)
        b = osc.parse_args(words)
        for key, value in vars(b).items():
            if key in vars(a) and key not in ('formatter', 'columns'):
                assert getattr(a, key) == value, (action, key)


# -- the standalone any2kvm import --------------------------------------------

def test_standalone_import_to_files(tmp_path, capsys):
    paths = vhdbuild.write_chain(tmp_path, 2)
    want = vhdbuild.expected_raw(tmp_path, paths)
    out = tmp_path / 'out'
    out.mkdir()
    argv = ['import', str(paths[0]), '--name', 'vm1', '--target', 'file',
            '--output-dir', str(out), '--format', 'json']
    assert any2kvm.main(argv) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {'target': 'file', 'disk': 0, 'name': 'vm1.raw',
                     'path': str(out / 'vm1.raw'), 'size': len(want)}
    assert (out / 'vm1.raw').read_bytes() == want
    assert any2kvm.main(argv[:-2] + ['--overwrite']) == 0
    text = capsys.readouterr().out
    assert 'path:          %s' % (out / 'vm1.raw') in text
    assert any2kvm.main(argv + ['--property', 'a=b']) == 1
    assert capsys.readouterr().err == (
        'any2kvm: error: --property does not apply to target file\n')


def test_standalone_import_parser():
    parser = any2kvm.build_parser(['import'])
    args = parser.parse_args(['import', 'd.vhd', '--name', 'vm1',
                              '--property', 'a=b=c', '--property', 'x=',
                              '--os-cloud', 'c1'])
    assert args.target == 'glance' and args.os_cloud == 'c1'
    assert dict(args.properties) == {'a': 'b=c', 'x': ''}
    assert args.format == 'text'
    for argv in (['import', 'd.vhd'], ['import', '--name', 'n'],
                 ['import', 'd.vhd', '--name', 'n', '--property', 'k']):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_standalone_import_to_glance(capsys):
    results = [glance_result(0), glance_result(1)]
    with mock.patch.object(api, 'cloud_session', return_value=(
            mock.sentinel.session, 'RegionOne', 'public')) as cs, \
            mock.patch(IMPORT_VM, return_value=({}, results)) as iv:
        assert any2kvm.main(['import', 'vm.ova', '--name', 'vm1',
                             '--os-cloud', 'c1', '--property', 'k=v',
                             '--format', 'json']) == 0
    cs.assert_called_once_with('c1')
    iv.assert_called_once_with(
        'vm.ova', 'glance', 'vm1', mock.ANY, source_name=None,
        props={'k': 'v'}, disk=None, session=mock.sentinel.session,
        progress=None, target_options={'region_name': 'RegionOne',
                                       'interface': 'public'},
        args=mock.ANY)
    assert json.loads(capsys.readouterr().out) == api.import_summary(
        'glance', results)


class FakeRegion(object):

    def __init__(self, session):
        self.config = {'auth': {'auth_url': 'http://127.0.0.1:5/v3'},
                       'interface': 'public'}
        self.region_name = 'RegionOne'
        self._session = session

    def get_session(self):
        return self._session


def test_cloud_session_errors(monkeypatch, capsys):
    from keystoneauth1 import exceptions as ks_exc
    from openstack import config as os_config

    session = mock.Mock()
    get_one = mock.Mock(return_value=FakeRegion(session))
    monkeypatch.setattr(os_config.OpenStackConfig, '__init__',
                        lambda self, *a, **kw: None)
    monkeypatch.setattr(os_config.OpenStackConfig, 'get_one', get_one)
    assert api.cloud_session('c1') == (session, 'RegionOne', 'public')
    get_one.assert_called_once_with(cloud='c1')
    session.get_token.assert_called_once_with()

    def fails(error, *expected):
        session.get_token.side_effect = error
        with pytest.raises(exception.Any2KvmError) as e:
            api.cloud_session(None)
        for text in expected:
            assert text in str(e.value)
        assert any2kvm.main(['import', 'x.vhd', '--name', 'n']) == 1
        err = capsys.readouterr().err
        assert err.startswith('any2kvm: error: ') and err.count('\n') == 1
        assert 'Traceback' not in err

    fails(ks_exc.Unauthorized('The request you have made requires '
                              'authentication.'),
          'http://127.0.0.1:5/v3: authentication failed', 'requires auth')
    fails(ks_exc.Unauthorized('401'), 'check the user, password, domain '
          'and project')
    # A token or an application credential: what was used is named.
    region = FakeRegion(session)
    get_one.return_value = region
    region.config['auth_type'] = 'v3token'
    fails(ks_exc.Unauthorized('401'), 'check the token (OS_TOKEN): it may '
          'have expired')
    region.config['auth_type'] = 'v3applicationcredential'
    fails(ks_exc.Unauthorized('401'), 'check the application credential')
    fails(ks_exc.ConnectFailure('refused'), 'cannot connect: refused')
    session.get_token.side_effect = None
    get_one.side_effect = ks_exc.MissingRequiredOptions([])
    with pytest.raises(exception.Any2KvmError, match='no cloud credentials'):
        api.cloud_session(None)


def test_an_unknown_auth_type_is_one_line(monkeypatch, capsys, tmp_path):
    for k in list(os.environ):
        if k.startswith('OS_'):
            monkeypatch.delenv(k)
    clouds = tmp_path / 'clouds.yaml'
    clouds.write_text('clouds:\n  broken:\n    auth_type: nosuchplugin\n'
                      '    auth:\n      auth_url: http://127.0.0.1:1/v3\n')
    monkeypatch.setenv('OS_CLIENT_CONFIG_FILE', str(clouds))
    assert any2kvm.main(['import', 'x.vhd', '--name', 'n', '--os-cloud',
                         'broken']) == 1
    err = capsys.readouterr().err
    assert err == ('any2kvm: error: cloud configuration \'broken\': The '
                   'plugin nosuchplugin could not be found\n'), err


def test_no_cloud_at_all(monkeypatch, capsys, tmp_path):
    for k in list(os.environ):
        if k.startswith('OS_'):
            monkeypatch.delenv(k)
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert any2kvm.main(['import', 'x.vhd', '--name', 'n']) == 1
    err = capsys.readouterr().err
    assert err.startswith('any2kvm: error: no cloud credentials: give '
                          '--os-cloud'), err


def import_args(*argv):
    return any2kvm.build_parser(['import']).parse_args(
        ['import', 'd.vhd', '--name', 'n'] + list(argv))


def test_target_options():
    limits = api.load_limits()
    assert api.target_options(import_args(), limits) == {}
    assert api.target_options(import_args('--no-default-properties',
                                          '--wait'), limits) == {
        'defaults': False, 'wait': True}
    limits.scratch_dir = '/s'
    assert api.target_options(import_args(
        '--target', 'file', '--output-dir', '/d', '--overwrite'),
        limits, 'R', 'public') == {
        'directory': '/d', 'overwrite': True, 'scratch_dir': '/s',
        'region_name': 'R', 'interface': 'public'}
    args = import_args()
    args.target = 'nope'
    with pytest.raises(exception.Any2KvmError, match='unknown target'):
        api.target_options(args, limits)
    with pytest.raises(exception.Any2KvmError,
                       match='--no-default-properties does not apply to '
                             'target file'):
        api.target_options(import_args('--target', 'file',
                                       '--no-default-properties'), limits)
    with pytest.raises(exception.Any2KvmError,
                       match='--property does not apply to target file'):
        api.target_options(import_args('--target', 'file',
                                       '--property', 'a=b'), limits)


def test_each_target_declares_its_options():
    """A new target's options reach the parser and only that target."""
    class VolumeTarget(targets.Target):
        arguments = (targets.Argument('--speed', 'speed', type=int,
                                      help='how fast'),)

        def __init__(self, speed=1, **context):
            super(VolumeTarget, self).__init__(**context)
            self.speed = speed

        def write(self, *a, **kw):
            pass

    found = dict(targets.plugins(), volume=VolumeTarget)
    with mock.patch.object(targets, 'plugins', return_value=found):
        args = import_args('--target', 'volume', '--speed', '3')
        assert api.target_options(args, api.load_limits()) == {'speed': 3}
        with pytest.raises(exception.Any2KvmError,
                           match='--speed does not apply to target glance'):
            api.target_options(import_args('--speed', '3'),
                               api.load_limits())


def test_disk_progress_restarts_per_disk():
    out = io.StringIO()
    progress = progress_mod.DiskProgress(out)
    for done in (0, 50, 100):
        progress(done, 100)
    for done in (10, 200):
        progress(done, 200)
    progress.finish()
    progress.finish()
    lines = out.getvalue().splitlines()
    assert [line.split(' in ')[0] for line in lines
            if line.startswith('done:')] == ['done: 100 B', 'done: 200 B']
    assert '100.0% 100 B of 100 B' in out.getvalue()
    # A failure ends the line without claiming "done".
    out.isatty = lambda: True
    progress = progress_mod.DiskProgress(out)
    progress(10, 100)
    progress.finish(ok=False)
    assert out.getvalue().count('done:') == 2
    assert out.getvalue().endswith('\n')


def test_convert_start_up_loads_no_cloud_library():
    code = ('import sys\n'
            'from any2kvm_os.cmd import any2kvm\n'
            'argv = ["convert", "a", "b"]\n'
            'any2kvm.build_parser(argv).parse_args(argv)\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in (\n'
            '    "openstack", "keystoneauth1", "osc_lib", "cliff",\n'
            '    "glanceclient", "cinderclient") or m.startswith(\n'
            '    ("any2kvm_os.targets", "any2kvm_os.sources"))))\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'


def test_local_conversion_loads_no_ssh_or_cloud_library():
    """Opening a local file (options, limits, every container plugin)
    imports neither the SSH nor the cloud libraries: they cost tens of
    MiB of memory (bench_convert.py's peak RSS figures)."""
    code = ('import sys\n'
            'from any2kvm_os import api\n'
            'from any2kvm_os.containers import registry\n'
            'api.load_limits()\n'
            'registry.plugins()\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in (\n'
            '    "paramiko", "cryptography", "openstack", "keystoneauth1",\n'
            '    "glanceclient", "cinderclient", "sqlalchemy",\n'
            '    "taskflow")))\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, env=clean_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '[]'


def test_volume_flags_reach_the_cinder_target_only():
    limits = api.load_limits()
    assert api.target_options(import_args(
        '--target', 'cinder', '--volume-route', 'attach', '--volume-type',
        'fast', '--brick-mount-point-base', '/mnt/x'), limits) == {
            'route': 'attach', 'volume_type': 'fast',
            'brick_mount_point_base': '/mnt/x'}
    with pytest.raises(exception.Any2KvmError,
                       match='--volume-route does not apply to target '
                             'glance'):
        api.target_options(import_args('--volume-route', 'image'), limits)


def test_cinder_target_routes(monkeypatch):
    from any2kvm_os.targets import cinder

    with pytest.raises(exception.Any2KvmError, match='unknown volume route'):
        cinder.CinderTarget(route='teleport')
    calls = []

    class Probe(cinder.CinderTarget):
        def _write_attached(self, *a):
            calls.append('attach')
            raise cinder.AttachUnavailable('volume v: unreachable')

        def _write_through_image(self, *a):
            calls.append('image')
            return ['via image']

    monkeypatch.setattr(cinder.os, 'geteuid', lambda: 0)
    assert Probe(route='auto').write('src', 'n') == ['via image']
    assert calls == ['attach', 'image']
    del calls[:]
    with pytest.raises(exception.TargetError, match='unreachable'):
        Probe(route='attach').write('src', 'n')
    assert calls == ['attach']
    del calls[:]
    assert Probe(route='image').write('src', 'n') == ['via image']
    assert calls == ['image']
    # auto needs root for os-brick: as a plain user, straight to image.
    del calls[:]
    monkeypatch.setattr(cinder.os, 'geteuid', lambda: 1000)
    Probe(route='auto').write('src', 'n')
    assert calls == ['image']


def test_an_unknown_error_quoting_a_password_is_masked():
    """An error no layer of ours recognises goes on to cliff as it is;
    one whose text holds a password (a library quoting a URL) is masked
    first, as the any2kvm command line masks its errors."""
    from any2kvm_os.osc.v1 import common
    secret = 'Sekr1t-pw'
    with pytest.raises(osc_exc.CommandError) as e:
        with common.errors():
            raise RuntimeError('cannot reach postgresql://migr:%s@db:5432/'
                               'any2kvm\nretrying' % secret)
    assert secret not in str(e.value)
    assert str(e.value) == ('cannot reach postgresql://migr:***@db:5432/'
                            'any2kvm retrying')
    assert isinstance(e.value.__cause__, RuntimeError)
    with pytest.raises(osc_exc.CommandError) as e:
        with common.errors():
            raise osc_exc.CommandError('ssh://root:%s@xs1 refused' % secret)
    assert secret not in str(e.value)
    with pytest.raises(KeyError):
        with common.errors():
            raise KeyError('no secret here')
