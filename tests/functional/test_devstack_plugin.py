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

"""The devstack plugin's phases, run for real by bash without devstack.

A small harness stands in for the few devstack functions the plugin calls
(``iniget``/``iniset`` through configparser, ``is_service_enabled`` over
``ENABLED_SERVICES``; ``setup_develop``, ``tox`` and ``openstack`` only
record their arguments), sources ``devstack/settings`` and then
``devstack/plugin.sh <mode> <phase>`` exactly as devstack does, and the
tests read the resulting cinder.conf and tempest.conf.
"""

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOOK = 'any2kvm_os.cinder.driver.Any2KvmDriver'
LVM = 'cinder.volume.drivers.lvm.LVMVolumeDriver'
NFS = 'cinder.volume.drivers.nfs.NfsDriver'

# iniget/iniset with devstack's behaviour: a missing option reads as
# empty, iniset creates the file and the section as needed.
INI_HELPER = '''\
import configparser
import sys

op, path, section, option = sys.argv[1:5]
cp = configparser.RawConfigParser(default_section='\\0')
cp.optionxform = str
cp.read(path)
if op == 'get':
    if cp.has_option(section, option):
        print(cp.get(section, option))
else:
    if not cp.has_section(section):
        cp.add_section(section)
    cp.set(section, option, sys.argv[5])
    with open(path, 'w') as f:
        cp.write(f)
'''

HARNESS = r'''
set -o errexit

# Stand-ins for the devstack functions plugin.sh and settings call.
function define_plugin { :; }
function echo_summary { echo "summary: $*"; }
function warn {
    local rc=$?
    echo "[WARNING] $2"
    return $rc
}
function is_service_enabled {
    # Like devstack's: "cinder" and "glance" stand for any c-* and g-*.
    local s
    for s in "$@"; do
        if [[ ",$ENABLED_SERVICES," == *",$s,"* ||
              ( $s == cinder && ",$ENABLED_SERVICES" == *,c-* ) ||
              ( $s == glance && ",$ENABLED_SERVICES" == *,g-* ) ]]; then
            return 0
        fi
    done
    return 1
}
function trueorfalse {
    case "${!2:-}" in
        1 | [yY]es | YES | [tT]rue | TRUE) echo True ;;
        0 | [nN]o | NO | [fF]alse | FALSE) echo False ;;
        *) echo "$1" ;;
    esac
}
function iniget { "$PYTHON" "$INI_HELPER" get "$@"; }
function iniset { "$PYTHON" "$INI_HELPER" set "$@"; }
function sudo { "$@"; }
function record { printf '%s\n' "$*" >>"$CALLS"; }
function setup_develop { record setup_develop "$@"; }
function set_tempest_venv_constraints {
    record set_tempest_venv_constraints
    echo "constraints" >"$1"
}
function tox { record "tox $(pwd)" "$@"; }
function openstack {
    record openstack "$@"
    # No image exists yet: "image show" fails as the real one would.
    [[ " $* " != *" image show "* ]]
}

source "$REPO/devstack/settings"
source "$REPO/devstack/plugin.sh" "$@"
eval "${HARNESS_THEN:-}"
'''


class Stack:
    """A fake devstack host: cinder.conf, tempest.conf and the settings."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.cinder_conf = tmp_path / 'cinder.conf'
        self.tempest_conf = tmp_path / 'tempest.conf'
        self.calls_file = tmp_path / 'calls'
        self.tempest_dir = tmp_path / 'tempest'
        self.tempest_dir.mkdir()
        helper = tmp_path / 'ini_helper.py'
        helper.write_text(INI_HELPER)
        self.cinder_conf.write_text(
            '[DEFAULT]\n'
            'enabled_backends = lvmdriver-1,nfs-1\n'
            'default_volume_type = lvmdriver-1\n'
            '\n'
            '[lvmdriver-1]\n'
            'volume_driver = %s\n'
            'volume_group = stack-volumes-lvmdriver-1\n'
            '\n'
            '[nfs-1]\n'
            'volume_driver = %s\n'
            'nfs_shares_config = /etc/cinder/nfs_shares\n' % (LVM, NFS))
        self.env = {
            'PATH': os.environ.get('PATH', '/usr/bin:/bin'),
            'HOME': str(tmp_path),
            'LC_ALL': 'C',
            'REPO': str(REPO),
            'PYTHON': sys.executable,
            'INI_HELPER': str(helper),
            'CALLS': str(self.calls_file),
            'DEST': str(tmp_path / 'opt-stack'),
            'STACK_USER': subprocess.run(
                ['id', '-un'], capture_output=True, text=True,
                check=True).stdout.strip(),
            'REGION_NAME': 'RegionOne',
            'CINDER_CONF': str(self.cinder_conf),
            'CINDER_ENABLED_BACKENDS': 'lvm:lvmdriver-1,nfs:nfs-1',
            'TEMPEST_CONFIG': str(self.tempest_conf),
            'TEMPEST_DIR': str(self.tempest_dir),
            'ENABLED_SERVICES': 'key,g-api,c-api,c-sch,c-vol,any2kvm',
        }

    def run(self, *args, then=None, **settings):
        env = dict(self.env, **settings)
        if then:
            env['HARNESS_THEN'] = then
        r = subprocess.run(['bash', '-c', HARNESS, 'harness'] + list(args),
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def ini(self, path):
        cp = configparser.RawConfigParser(default_section='\0')
        cp.optionxform = str
        assert cp.read(path) == [str(path)]
        return {s: dict(cp.items(s)) for s in cp.sections()}

    def cinder(self):
        return self.ini(self.cinder_conf)

    def tempest(self):
        return self.ini(self.tempest_conf)

    def calls(self):
        if not self.calls_file.exists():
            return []
        return self.calls_file.read_text().splitlines()


@pytest.fixture
def stack(tmp_path):
    return Stack(tmp_path)


# ---------------------------------------------------------------------------
# stack post-config: the Cinder hook
# ---------------------------------------------------------------------------

def test_post_config_wraps_every_enabled_backend(stack):
    before = stack.cinder()
    stack.run('stack', 'post-config')
    conf = stack.cinder()
    assert conf['lvmdriver-1']['volume_driver'] == HOOK
    assert conf['lvmdriver-1']['any2kvm_wrapped_driver'] == LVM
    assert conf['nfs-1']['volume_driver'] == HOOK
    assert conf['nfs-1']['any2kvm_wrapped_driver'] == NFS
    # Nothing else changes; without ANY2KVM_SCRATCH_DIR no [any2kvm].
    assert conf['DEFAULT'] == before['DEFAULT']
    assert 'any2kvm' not in conf
    for name in ('lvmdriver-1', 'nfs-1'):
        rest = {k: v for k, v in conf[name].items()
                if k not in ('volume_driver', 'any2kvm_wrapped_driver')}
        assert rest == {k: v for k, v in before[name].items()
                        if k != 'volume_driver'}


def test_post_config_twice_changes_nothing(stack):
    stack.run('stack', 'post-config')
    once = stack.cinder()
    out = stack.run('stack', 'post-config')
    assert stack.cinder() == once
    assert once['lvmdriver-1']['any2kvm_wrapped_driver'] == LVM
    assert once['nfs-1']['any2kvm_wrapped_driver'] == NFS
    assert 'already wrapped' in out


@pytest.mark.parametrize('selection', ['nfs-1', 'nfs:nfs-1'])
def test_post_config_wraps_only_selected_backends(stack, selection):
    stack.run('stack', 'post-config', ANY2KVM_CINDER_BACKENDS=selection)
    conf = stack.cinder()
    assert conf['nfs-1']['volume_driver'] == HOOK
    assert conf['nfs-1']['any2kvm_wrapped_driver'] == NFS
    assert conf['lvmdriver-1']['volume_driver'] == LVM
    assert 'any2kvm_wrapped_driver' not in conf['lvmdriver-1']


def test_post_config_warns_about_unknown_selected_backend(stack):
    out = stack.run('stack', 'post-config',
                    ANY2KVM_CINDER_BACKENDS='nfs-1,ceph-1')
    assert '[WARNING]' in out and 'ceph-1' in out
    assert stack.cinder()['lvmdriver-1']['volume_driver'] == LVM


@pytest.mark.parametrize('value', ['False', 'false', '0', 'no'])
def test_post_config_hook_off_changes_nothing(stack, value):
    before = stack.cinder_conf.read_bytes()
    stack.run('stack', 'post-config', ANY2KVM_CINDER_HOOK=value,
              ANY2KVM_SCRATCH_DIR=str(stack.tmp / 'scratch'))
    assert stack.cinder_conf.read_bytes() == before
    assert not (stack.tmp / 'scratch').exists()


def test_post_config_without_c_vol_changes_nothing(stack):
    before = stack.cinder_conf.read_bytes()
    stack.run('stack', 'post-config',
              ENABLED_SERVICES='key,g-api,c-api,c-sch,any2kvm')
    assert stack.cinder_conf.read_bytes() == before


def test_post_config_skips_backend_without_driver(stack):
    out = stack.run('stack', 'post-config',
                    CINDER_ENABLED_BACKENDS='lvm:lvmdriver-1,ceph:ceph')
    conf = stack.cinder()
    assert '[WARNING]' in out and '[ceph]' in out
    assert 'ceph' not in conf
    assert conf['lvmdriver-1']['volume_driver'] == HOOK
    # nfs-1 is not among the enabled backends this time.
    assert conf['nfs-1']['volume_driver'] == NFS


def test_scratch_dir_is_configured_created_and_cleaned(stack):
    scratch = stack.tmp / 'scratch' / 'any2kvm'
    stack.run('stack', 'post-config', ANY2KVM_SCRATCH_DIR=str(scratch))
    assert stack.cinder()['any2kvm'] == {'scratch_dir': str(scratch)}
    assert scratch.is_dir()
    (scratch / 'leftover.raw').write_bytes(b'x')
    stack.run('unstack', ANY2KVM_SCRATCH_DIR=str(scratch))
    assert scratch.is_dir()
    stack.run('clean', ANY2KVM_SCRATCH_DIR=str(scratch))
    assert not scratch.exists()


def test_plugin_without_its_service_changes_nothing(stack):
    before = stack.cinder_conf.read_bytes()
    services = 'key,g-api,c-api,c-sch,c-vol,tempest'
    out = stack.run('stack', 'install', ENABLED_SERVICES=services)
    assert 'enable_service any2kvm' in out
    for phase in ('post-config', 'extra', 'test-config'):
        stack.run('stack', phase, ENABLED_SERVICES=services,
                  ANY2KVM_UPLOAD_SAMPLES='True')
    assert stack.cinder_conf.read_bytes() == before
    assert not stack.tempest_conf.exists()
    assert stack.calls() == []


def test_sourcing_without_arguments_only_defines_functions(stack):
    before = stack.cinder_conf.read_bytes()
    stack.run()
    assert stack.cinder_conf.read_bytes() == before
    stack.run(then='configure_any2kvm_cinder')
    assert stack.cinder()['nfs-1']['any2kvm_wrapped_driver'] == NFS


# ---------------------------------------------------------------------------
# stack install and stack extra
# ---------------------------------------------------------------------------

def test_install_uses_setup_develop_with_bindep(stack):
    """With the zstd extra by default: zstd inputs are read, not refused
    for want of zstandard."""
    stack.run('stack', 'install', ANY2KVM_OS_DIR='/src/any2kvm_os')
    assert stack.calls() == ['setup_develop -bindep /src/any2kvm_os zstd']


def test_install_default_checkout_is_under_dest(stack):
    stack.run('stack', 'install')
    assert stack.calls() == [
        'setup_develop -bindep %s/any2kvm_os zstd' % stack.env['DEST']]


@pytest.mark.parametrize('extras,call', [
    ('', 'setup_develop -bindep /src/any2kvm_os'),
    ('zstd,other', 'setup_develop -bindep /src/any2kvm_os zstd,other')])
def test_install_extras_setting(stack, extras, call):
    stack.run('stack', 'install', ANY2KVM_OS_DIR='/src/any2kvm_os',
              ANY2KVM_OS_EXTRAS=extras)
    assert stack.calls() == [call]


def test_extra_uploads_nothing_by_default(stack):
    tgz = stack.tmp / 'sample.tgz'
    tgz.write_bytes(b'tgz')
    stack.run('stack', 'extra', ANY2KVM_SAMPLE_XENSERVER_TGZ=str(tgz))
    assert stack.calls() == []


def test_extra_uploads_samples(stack):
    tgz = stack.tmp / 'sample.tgz'
    ova = stack.tmp / 'sample.ova'
    tgz.write_bytes(b'tgz')
    ova.write_bytes(b'ova')
    stack.run('stack', 'extra', ANY2KVM_UPLOAD_SAMPLES='True',
              ANY2KVM_SAMPLE_XENSERVER_TGZ=str(tgz),
              ANY2KVM_SAMPLE_OVA=str(ova),
              ANY2KVM_SAMPLE_OVA_NAME='my-ova')
    creates = [c for c in stack.calls() if ' image create ' in c]
    common = 'openstack --os-cloud=devstack-admin --os-region-name=RegionOne'
    assert creates == [
        common + ' image create any2kvm-sample-xenserver-tgz --public'
        ' --disk-format vhd --container-format ovf --file %s' % tgz,
        common + ' image create my-ova --public'
        ' --disk-format vmdk --container-format ova --file %s' % ova]


def test_extra_without_glance_uploads_nothing(stack):
    tgz = stack.tmp / 'sample.tgz'
    tgz.write_bytes(b'tgz')
    out = stack.run('stack', 'extra', ANY2KVM_UPLOAD_SAMPLES='True',
                    ANY2KVM_SAMPLE_XENSERVER_TGZ=str(tgz),
                    ENABLED_SERVICES='key,c-api,c-sch,c-vol,any2kvm')
    assert '[WARNING] Glance is not enabled' in out
    assert stack.calls() == []


def test_post_config_warns_about_wrapped_backend_without_real_driver(stack):
    text = stack.cinder_conf.read_text().replace(NFS, HOOK)
    stack.cinder_conf.write_text(text)
    out = stack.run('stack', 'post-config')
    assert '[WARNING] [nfs-1] lacks any2kvm_wrapped_driver' in out
    conf = stack.cinder()
    assert 'any2kvm_wrapped_driver' not in conf['nfs-1']
    assert conf['lvmdriver-1']['any2kvm_wrapped_driver'] == LVM


def test_extra_skips_missing_samples_with_a_warning(stack):
    tgz = stack.tmp / 'sample.tgz'
    tgz.write_bytes(b'tgz')
    out = stack.run('stack', 'extra', ANY2KVM_UPLOAD_SAMPLES='True',
                    ANY2KVM_SAMPLE_XENSERVER_TGZ=str(tgz),
                    ANY2KVM_SAMPLE_OVA=str(stack.tmp / 'absent.ova'))
    creates = [c for c in stack.calls() if ' image create ' in c]
    assert len(creates) == 1 and '--container-format ovf' in creates[0]
    assert '[WARNING] ANY2KVM_SAMPLE_OVA=' in out

    out = stack.run('stack', 'extra', ANY2KVM_UPLOAD_SAMPLES='True')
    assert '[WARNING] ANY2KVM_SAMPLE_XENSERVER_TGZ is empty' in out
    assert '[WARNING] ANY2KVM_SAMPLE_OVA is empty' in out


# ---------------------------------------------------------------------------
# stack test-config: tempest
# ---------------------------------------------------------------------------

TEMPEST_SERVICES = 'key,g-api,c-api,c-sch,c-vol,tempest,any2kvm'


def test_test_config_writes_tempest_options(stack):
    stack.run('stack', 'test-config', ENABLED_SERVICES=TEMPEST_SERVICES,
              ANY2KVM_SAMPLE_XENSERVER_TGZ='/samples/xs.tgz',
              ANY2KVM_SAMPLE_XENSERVER_TGZ_SHA256='ab' * 32,
              ANY2KVM_SAMPLE_XENSERVER_TGZ_SIZE='1073741824',
              ANY2KVM_SAMPLE_OVA='/samples/vm.ova',
              ANY2KVM_SAMPLE_OVA_SIZE='2147483648',
              ANY2KVM_SAMPLE_VOLUME_SIZE='3')
    assert stack.tempest() == {
        'service_available': {'any2kvm': 'True'},
        'any2kvm-feature-enabled': {'cinder_hook': 'True',
                                    'osc_import': 'True'},
        'any2kvm-samples': {
            'xenserver_tgz': '/samples/xs.tgz',
            'xenserver_tgz_sha256': 'ab' * 32,
            'xenserver_tgz_size': '1073741824',
            'ova': '/samples/vm.ova',
            'ova_size': '2147483648',
            'volume_size': '3'},
    }


def test_test_config_keeps_existing_tempest_options(stack):
    stack.tempest_conf.write_text('[service_available]\ncinder = True\n')
    stack.run('stack', 'test-config', ENABLED_SERVICES=TEMPEST_SERVICES,
              ANY2KVM_SAMPLE_VHD='/samples/d.vhd',
              ANY2KVM_SAMPLE_VHD_SHA256='cd' * 32,
              ANY2KVM_SAMPLE_VHD_SIZE='512')
    conf = stack.tempest()
    assert conf['service_available'] == {'cinder': 'True', 'any2kvm': 'True'}
    assert conf['any2kvm-samples'] == {'vhd': '/samples/d.vhd',
                                       'vhd_sha256': 'cd' * 32,
                                       'vhd_size': '512'}


@pytest.mark.parametrize('settings', [
    {'ANY2KVM_CINDER_HOOK': 'False'},
    {'ENABLED_SERVICES': 'key,g-api,tempest,any2kvm'},
    {'ANY2KVM_CINDER_BACKENDS': 'ceph-1'},
    {'CINDER_ENABLED_BACKENDS': ''},
], ids=['hook-off', 'no-cinder', 'no-selected-backend', 'no-backend'])
def test_test_config_cinder_hook_false(stack, settings):
    env = dict({'ENABLED_SERVICES': TEMPEST_SERVICES}, **settings)
    stack.run('stack', 'test-config', **env)
    conf = stack.tempest()
    assert conf['any2kvm-feature-enabled'] == {'cinder_hook': 'False',
                                               'osc_import': 'True'}
    assert 'any2kvm-samples' not in conf


@pytest.mark.parametrize('settings, volume_type', [
    ({'ANY2KVM_CINDER_BACKENDS': 'nfs:nfs-1'}, 'nfs-1'),
    ({'ANY2KVM_CINDER_BACKENDS': 'ceph-1,nfs-1,lvmdriver-1'}, 'lvmdriver-1'),
    ({'ANY2KVM_TEMPEST_VOLUME_TYPE': 'hooked'}, 'hooked'),
    ({'ANY2KVM_CINDER_BACKENDS': 'nfs-1',
      'ANY2KVM_TEMPEST_VOLUME_TYPE': 'hooked'}, 'hooked'),
], ids=['one', 'first-enabled', 'explicit', 'explicit-wins'])
def test_test_config_volume_type_of_a_wrapped_backend(stack, settings,
                                                      volume_type):
    stack.run('stack', 'test-config', ENABLED_SERVICES=TEMPEST_SERVICES,
              ANY2KVM_INSTALL_TEMPEST_PLUGIN='False', **settings)
    assert stack.tempest()['any2kvm-feature-enabled'] == {
        'cinder_hook': 'True', 'osc_import': 'True',
        'volume_type': volume_type}


def test_test_config_without_tempest_does_nothing(stack):
    stack.run('stack', 'test-config')
    assert not stack.tempest_conf.exists()
    assert stack.calls() == []


def test_test_config_installs_plugin_into_tempest_venv(stack):
    stack.run('stack', 'test-config', ENABLED_SERVICES=TEMPEST_SERVICES,
              ANY2KVM_OS_DIR='/src/any2kvm_os')
    calls = stack.calls()
    assert calls[0] == 'set_tempest_venv_constraints'
    assert len(calls) == 2
    cmd = calls[1].split()
    assert cmd[:4] == ['tox', str(stack.tempest_dir), '-evenv-tempest', '--']
    assert cmd[4:7] == ['pip', 'install', '-c']
    assert cmd[8:] == ['/src/any2kvm_os']
    # The temporary constraints file is removed afterwards.
    assert not os.path.exists(cmd[7])


@pytest.mark.parametrize('settings', [
    {'ANY2KVM_INSTALL_TEMPEST_PLUGIN': 'False'},
    {'TEMPEST_PLUGINS': '/src/other-plugin /src/any2kvm_os'},
], ids=['off', 'in-TEMPEST_PLUGINS'])
def test_test_config_leaves_tempest_venv_alone(stack, settings):
    stack.run('stack', 'test-config', ENABLED_SERVICES=TEMPEST_SERVICES,
              ANY2KVM_OS_DIR='/src/any2kvm_os', **settings)
    assert stack.calls() == []
    assert stack.tempest()['service_available'] == {'any2kvm': 'True'}
