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

"""lazyopts.configuration_found against what oslo.config itself finds."""

import os

from oslo_config import cfg
import pytest

from any2kvm_os import api
from any2kvm_os import lazyopts

PROJECT, PROG = api.PROJECT, api.PROG


@pytest.fixture
def clean(tmp_path, monkeypatch):
    """A HOME and snap directories of our own, no OS_ variables."""
    for k in list(os.environ):
        if k.startswith('OS_'):
            monkeypatch.delenv(k)
    home = tmp_path / 'home'
    home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.setenv('SNAP', str(tmp_path / 'snap'))
    monkeypatch.setenv('SNAP_COMMON', str(tmp_path / 'snap-common'))
    return tmp_path


def _oslo_finds():
    return bool(cfg.find_config_files(PROJECT, PROG) or
                cfg.find_config_dirs(PROJECT, PROG))


def test_the_directories_are_oslo_configs(clean, monkeypatch):
    assert lazyopts._config_dirs(PROJECT) == \
        cfg._get_config_dirs(PROJECT)
    monkeypatch.delenv('SNAP')
    monkeypatch.delenv('SNAP_COMMON')
    assert lazyopts._config_dirs(PROJECT) == \
        cfg._get_config_dirs(PROJECT)


def test_nothing_found_where_oslo_config_finds_nothing(clean):
    if _oslo_finds():
        pytest.skip('this machine has an any2kvm configuration in /etc')
    assert not lazyopts.configuration_found(PROJECT, PROG)


@pytest.mark.parametrize('where', [
    'home/.any2kvm_os/any2kvm_os.conf', 'home/.any2kvm_os/any2kvm.conf',
    'home/any2kvm_os.conf', 'home/any2kvm.conf',
    'home/.any2kvm_os/any2kvm.conf.d', 'home/any2kvm_os.conf.d',
    'snap/etc/any2kvm_os/any2kvm.conf',
    'snap-common/etc/any2kvm_os/any2kvm_os.conf.d'])
def test_each_place_oslo_config_reads_is_found(clean, where):
    path = clean / where
    path.parent.mkdir(parents=True, exist_ok=True)
    if where.endswith('.d'):
        path.mkdir()
    else:
        path.write_text('[any2kvm]\n')
    assert _oslo_finds()                # the place is one oslo.config reads
    assert lazyopts.configuration_found(PROJECT, PROG)


def test_other_names_are_not_configuration(clean):
    if _oslo_finds():
        pytest.skip('this machine has an any2kvm configuration in /etc')
    (clean / 'home' / 'other.conf').write_text('[any2kvm]\n')
    (clean / 'home' / '.any2kvm').mkdir()
    (clean / 'home' / '.any2kvm' / 'any2kvm.conf').write_text('')
    assert not _oslo_finds()
    assert not lazyopts.configuration_found(PROJECT, PROG)


def test_an_option_in_the_environment_is_configuration(clean, monkeypatch):
    if _oslo_finds():
        pytest.skip('this machine has an any2kvm configuration in /etc')
    monkeypatch.setenv('OS_CLOUD', 'mine')      # not an option
    monkeypatch.setenv('OS_AUTH_URL', 'http://127.0.0.1/')
    assert not lazyopts.configuration_found(PROJECT, PROG)
    monkeypatch.setenv('OS_ANY2KVM__MAX_CHAIN_DEPTH', '3')
    assert lazyopts.configuration_found(PROJECT, PROG)
    # ... as oslo.config reads it:
    conf = cfg.ConfigOpts()
    api.register_opts(conf)
    conf(args=[], project=PROJECT, prog=PROG)
    assert conf.any2kvm.max_chain_depth == 3


def test_a_run_without_configuration_gets_what_oslo_config_would_give(
        clean):
    """Where the command skips oslo.config, every setting it reads comes
    from the classes' defaults: they equal the options' defaults read
    through an empty configuration."""
    from any2kvm_os.containers.ova import signature
    from any2kvm_os.guest import inspect
    from any2kvm_os import limits
    from any2kvm_os.migration.state import options as state_options
    from any2kvm_os.sources.xenserver import discovery
    from any2kvm_os.sources.xenserver import plugin
    from any2kvm_os.ssh import options as ssh_options
    conf = cfg.ConfigOpts()
    api.register_opts(conf)
    conf(args=[], project=PROJECT, prog=PROG, default_config_files=[])
    read, plain = limits.Limits.from_conf(conf), limits.Limits()
    assert plain.conf is None
    del read.conf, plain.conf
    assert vars(read) == vars(plain)
    assert vars(ssh_options.Settings.from_conf(conf)) == \
        vars(ssh_options.Settings())
    assert vars(inspect.Settings.from_conf(conf)) == \
        vars(inspect.Settings.from_conf(None))
    assert state_options.url_from(None, conf) == \
        state_options.url_from(None, None)
    with_conf = limits.Limits.from_conf(conf)
    assert vars(signature.policy_of(with_conf)) == \
        vars(signature.policy_of(limits.Limits()))
    source = plugin.XenServerSource.__new__(plugin.XenServerSource)
    for name, default in (('xenserver_sr_mount', discovery.DEFAULT_MOUNT_BASE),
                          ('xenserver_inventory',
                           discovery.DEFAULT_INVENTORY)):
        source.limits = with_conf
        assert source._conf(name, None) == default
        source.limits = limits.Limits()
        assert source._conf(name, default) == default


def test_load_limits_reads_the_default_files_unless_given_some(clean):
    """``openstack any2kvm`` (api.load_limits) reads what ``any2kvm``
    reads: the default files without ``--config-file``, only the files
    given with it."""
    if _oslo_finds():
        pytest.skip('this machine has an any2kvm configuration in /etc')
    assert api.load_limits().max_chain_depth == 64
    conf = clean / 'home' / '.any2kvm_os' / 'any2kvm_os.conf'
    conf.parent.mkdir()
    conf.write_text('[any2kvm]\nmax_chain_depth = 7\n')
    assert api.load_limits().max_chain_depth == 7
    given = clean / 'given.conf'
    given.write_text('[any2kvm]\nmax_directory_entries = 9\n')
    limits = api.load_limits([str(given)])
    assert (limits.max_chain_depth, limits.max_directory_entries) == (64, 9)
