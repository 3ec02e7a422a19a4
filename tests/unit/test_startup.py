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

"""Start-up of a local conversion (issue 14): what it must not import.

A conversion of a local disk file pays the interpreter's start-up and its
imports before it copies a byte; against ``qemu-img convert`` (a quarter
of a second for a 1 GiB disk) every tenth of a second counts.  These
tests run a real conversion in a fresh interpreter and list the modules
it imported: they fail when a heavy library comes back on that path.
No timing is asserted.
"""

import os
import subprocess
import sys

from any2kvm_os.containers.ova import signature
from any2kvm_os import limits
from any2kvm_os import scratch
from any2kvm_os.ssh import options as ssh_options
from tests.lib import vhdbuild

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

#: Never imported by a local conversion, from the command line or not:
#: the SSH, cloud, database and workflow libraries, the guest tools.
NEVER = ('paramiko', 'invoke', 'cryptography', 'keystoneauth1', 'openstack',
         'novaclient', 'glanceclient', 'cinderclient', 'osc_lib', 'cliff',
         'requests', 'sqlalchemy', 'alembic', 'oslo_db', 'taskflow',
         'guestfs', 'ssl', 'http')
#: Nor by the library path the Glance target's scratch conversion takes
#: (no configuration read): oslo.config and what only archives need.
NOT_IN_LIBRARY = NEVER + ('oslo_config', 'oslo_log', 'defusedxml', 'xxhash',
                          'netaddr', 'rfc3986')
#: Our modules a local disk file conversion has no use for (the command
#: line imports the modules of the options it registers, no more).
OURS_NEVER = ('any2kvm_os.targets.glance', 'any2kvm_os.targets.cinder',
              'any2kvm_os.targets.server', 'any2kvm_os.migration.engine',
              'any2kvm_os.migration.flows', 'any2kvm_os.migration.state.sql',
              'any2kvm_os.incremental', 'any2kvm_os.ssh.connection',
              'any2kvm_os.sources.xenserver.plugin',
              'any2kvm_os.sources.glance_image', 'any2kvm_os.clients',
              'any2kvm_os.containers.ova.package',
              'any2kvm_os.containers.ova.stream',
              'any2kvm_os.containers.xva.archive')
#: Nor the library path, which registers no options.
OURS_NOT_IN_LIBRARY = OURS_NEVER + (
    'any2kvm_os.targets', 'any2kvm_os.migration', 'any2kvm_os.guest',
    'any2kvm_os.sources.xenserver')

#: The scratch conversion of the Glance target, as
#: benchmarks/bench_convert.py times it, then the modules it imported.
SCRATCH = (
    'import sys\n'
    'from any2kvm_os import api, limits\n'
    'from any2kvm_os.writers import raw\n'
    'vm = api.open_location(sys.argv[1], limits.Limits())\n'
    'w = raw.RawWriter.open(sys.argv[2], durable=False)\n'
    'vm.disks[0].write_to(w)\n'
    'w.commit()\n'
    'vm.close()\n'
    'print("\\n".join(sorted(sys.modules)))\n')

#: ``any2kvm convert SOURCE OUTPUT``, then the modules it imported.
CLI = (
    'import sys\n'
    'from any2kvm_os.cmd import any2kvm\n'
    'rc = any2kvm.main(sys.argv[1:])\n'
    'assert rc == 0, rc\n'
    'print("\\n".join(sorted(sys.modules)))\n')


def _env(home=None, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('OS_', 'SNAP'))}
    # No guest inspection: it is a libguestfs launch, not start-up.
    env['ANY2KVM_INSPECT'] = '0'
    if home is not None:
        env['HOME'] = str(home)
    env.update(extra)
    return env


def _run(code, *args, env=None, rc=0):
    """The modules a fresh interpreter imported running ``code`` from
    this tree (its directory first on sys.path)."""
    r = subprocess.run([sys.executable, '-c', code] + list(args),
                       capture_output=True, text=True,
                       env=_env() if env is None else env, cwd=ROOT,
                       timeout=120)
    assert r.returncode == rc, r.stderr
    return r if rc else set(r.stdout.split())


def _vhd(tmp_path):
    data = b'any2kvm' * 1000
    image, _uid = vhdbuild.build(8 << 20, blocks={1: (None, data)})
    path = tmp_path / 'disk.vhd'
    path.write_bytes(image)
    return path, data


def _heavy(modules, tops, ours=OURS_NEVER):
    return sorted(m for m in modules
                  if m.split('.')[0] in tops or m.startswith(ours))


def _check_output(path, data):
    with open(path, 'rb') as f:
        assert f.read(2 << 20) == bytes(2 << 20)
        assert f.read(len(data)) == data
    assert os.path.getsize(path) == 8 << 20


def test_scratch_conversion_imports_nothing_heavy(tmp_path):
    src, data = _vhd(tmp_path)
    out = tmp_path / 'scratch.raw'
    modules = _run(SCRATCH, str(src), str(out))
    _check_output(out, data)
    assert 'any2kvm_os.formats.vhd' in modules     # it did run
    # The container plugins whose probe never ran (a disk image is
    # claimed first) load their class only, not their readers.
    assert _heavy(modules, NOT_IN_LIBRARY, OURS_NOT_IN_LIBRARY) == []


def test_cli_convert_imports_nothing_heavy(tmp_path):
    src, data = _vhd(tmp_path)
    out = tmp_path / 'out.raw'
    modules = _run(CLI, 'convert', str(src), str(out))
    _check_output(out, data)
    assert 'any2kvm_os.formats.vhd' in modules
    assert _heavy(modules, NEVER) == []


def _no_default_configuration():
    from any2kvm_os import api
    from any2kvm_os import lazyopts
    return not lazyopts.configuration_found(api.PROJECT, api.PROG)


def test_cli_convert_without_configuration_skips_oslo_config(tmp_path):
    """No configuration file in oslo.config's places (a HOME of our own;
    /etc is the machine's) and no ``OS_*__*`` variable: the command runs
    on the options' defaults and never imports oslo.config."""
    home = tmp_path / 'home'
    home.mkdir()
    src, data = _vhd(tmp_path)
    out = tmp_path / 'out.raw'
    modules = _run(CLI, 'convert', str(src), str(out), env=_env(home))
    _check_output(out, data)
    if _no_default_configuration():     # else /etc holds one, rightly read
        assert _heavy(modules, NOT_IN_LIBRARY) == []


CONFIG_ERROR = ('any2kvm: error: configuration: Value for option '
                'max_chain_depth from ')


def test_cli_reads_a_default_configuration_file(tmp_path):
    """A file in oslo.config's default places is still read: a value out
    of the option's bounds is the usual configuration error."""
    src, _data = _vhd(tmp_path)
    for where in ('.any2kvm_os/any2kvm.conf', 'any2kvm_os.conf',
                  '.any2kvm_os/any2kvm_os.conf.d/10.conf'):
        home = tmp_path / ('home-' + where.replace('/', '_'))
        conf = home / where
        conf.parent.mkdir(parents=True)
        conf.write_text('[any2kvm]\nmax_chain_depth = 0\n')
        r = _run(CLI, 'convert', str(src), str(tmp_path / 'out.raw'),
                 env=_env(home), rc=1)
        assert r.stderr.startswith(CONFIG_ERROR), (where, r.stderr)
        assert not (tmp_path / 'out.raw').exists()


def test_cli_reads_an_option_from_the_environment(tmp_path):
    home = tmp_path / 'home'
    home.mkdir()
    src, _data = _vhd(tmp_path)
    r = _run(CLI, 'convert', str(src), str(tmp_path / 'out.raw'), rc=1,
             env=_env(home, OS_ANY2KVM__MAX_CHAIN_DEPTH='0'))
    assert r.stderr.startswith(CONFIG_ERROR), r.stderr


def test_options_are_made_once_on_first_use():
    """``OPTIONS`` is made on first use, once, with the defaults of the
    table the classes take theirs from."""
    for module, defaults in ((limits, limits._DEFAULTS),
                             (scratch, scratch.DEFAULTS),
                             (ssh_options, ssh_options._DEFAULTS),
                             (signature, signature._DEFAULTS)):
        first = module.OPTIONS
        assert module.OPTIONS is first
        assert first and all(o.default == defaults[o.name] for o in first)
    from any2kvm_os.limits import OPTIONS
    assert OPTIONS is limits.OPTIONS
    assert scratch.DEFAULT_LIMIT == scratch.OPTIONS[1].default << 30
    lim = limits.Limits()
    assert lim.max_chain_depth == limits.OPTIONS[0].default == 64
    assert lim.scratch_limit == scratch.DEFAULT_LIMIT


def test_unknown_module_attribute_is_an_attribute_error():
    for module in (limits, scratch, ssh_options, signature):
        assert not hasattr(module, 'NO_SUCH_NAME')


def test_xva_plugin_name_is_the_archive_kind():
    from any2kvm_os.containers.xva import archive
    from any2kvm_os.containers.xva import plugin
    assert plugin.XvaType.name == archive.KIND


#: ``any2kvm migration list`` through the console script, a spy on what
#: the command found when it ran: (status, collector on, objects frozen,
#: the command's modules loaded, collector on after).
CONSOLE = (
    'import gc, sys\n'
    'from any2kvm_os import api\n'
    'from any2kvm_os.cmd import any2kvm\n'
    'seen = {}\n'
    'real = api.run_migration\n'
    'def spy(*a, **k):\n'
    '    seen["on"] = gc.isenabled()\n'
    '    seen["frozen"] = gc.get_freeze_count()\n'
    '    seen["loaded"] = [m for m in any2kvm.PRELOAD["migration"]\n'
    '                      if m in sys.modules]\n'
    '    return real(*a, **k)\n'
    'api.run_migration = spy\n'
    'sys.argv = ["any2kvm"] + sys.argv[1:]\n'
    'rc = any2kvm.console_main()\n'
    'print(rc, seen["on"], seen["frozen"] > 1000,\n'
    '      seen["loaded"] == list(any2kvm.PRELOAD["migration"]),\n'
    '      gc.isenabled())\n')


def test_console_script_starts_without_the_collector(tmp_path):
    """The console script loads a migration command's modules with the
    cyclic collector off, freezes what start-up made, and runs the
    command with the collector on."""
    db = 'sqlite:///%s' % (tmp_path / 'state.db')
    r = subprocess.run([sys.executable, '-c', CONSOLE, 'migration', 'list',
                        '--state-db', db], capture_output=True, text=True,
                       env=_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['0', 'True', 'True', 'True', 'True']


def test_main_in_process_leaves_the_collector_alone(tmp_path):
    from any2kvm_os.cmd import any2kvm
    import gc
    frozen = gc.get_freeze_count()
    db = 'sqlite:///%s' % (tmp_path / 'state.db')
    assert any2kvm.main(['migration', 'list', '--state-db', db]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen


def test_migration_list_does_without_taskflow(tmp_path):
    """``migration list`` reads the state database only: TaskFlow (about
    0.1 s to load) is for the commands that run a flow, which load it
    while the host does its first work."""
    db = 'sqlite:///%s' % (tmp_path / 'state.db')
    code = ('import sys\n'
            'from any2kvm_os.cmd import any2kvm\n'
            'rc = any2kvm.main(["migration", "list", "--state-db", %r])\n'
            'print(rc, sorted(set(m.split(".")[0] for m in sys.modules\n'
            '                     if m.split(".")[0] in ("taskflow",\n'
            '                     "networkx", "sqlalchemy"))))\n' % db)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, env=_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0 ['sqlalchemy']", r.stdout


def test_only_cutover_parses_the_server_options():
    """The server options (and the server library they import) are added
    to ``migration cutover`` only: a sync does not load them."""
    code = ('import sys\n'
            'from any2kvm_os.cmd import any2kvm\n'
            'for argv in (["migration", "sync", "vm"],\n'
            '             ["--config-file", "migration", "migration",\n'
            '              "verify", "vm"],\n'
            '             ["migration", "cutover", "vm"]):\n'
            '    p = any2kvm.build_parser(argv)\n'
            '    a = p.parse_args(argv)\n'
            '    print(argv[-2], hasattr(a, "create_server"),\n'
            '          "any2kvm_os.targets.server" in sys.modules)\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, env=_env(), cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split('\n')[:3] == [
        'sync False False', 'verify False False', 'cutover True True'], \
        r.stdout
