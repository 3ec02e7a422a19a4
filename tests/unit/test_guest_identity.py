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

"""What a moved Linux guest is at its first boot on KVM: cloud-init,
which on a new instance id regenerates the SSH host keys and takes the
hostname from Nova, and LVM filters that accept Xen's disk names only
(in /etc/lvm and in the initramfs's copy of lvm.conf)."""

import copy
import gzip
import time

from any2kvm_os.guest import inspect as gi
from any2kvm_os.guest import probe
from tests.lib.fakeguestfs import FilesG


# -- real-looking files -------------------------------------------------------

#: Ubuntu 22.04's /etc/cloud/cloud.cfg (its head).
UBUNTU_CLOUD_CFG = (
    '# The top level settings are used as module\n'
    '# and base configuration.\n'
    '# A set of users which may be applied and/or used by various modules\n'
    '# when a \'default\' entry is found it will reference the '
    '\'default_user\'\n'
    'users:\n'
    '   - default\n'
    '\n'
    '# If this is set, \'root\' will not be able to ssh in and they\n'
    '# will get a message to login instead as the default $user\n'
    'disable_root: true\n'
    '\n'
    '# This will cause the set+update hostname module to not operate (if '
    'true)\n'
    'preserve_hostname: false\n'
    '\n'
    '# If you use datasource_list array, keep array items in a single '
    'line.\n'
    '# If you use multi line array, ds-identify script won\'t read array '
    'items.\n'
    '# Example datasource config\n'
    '# datasource:\n'
    '#    Ec2:\n'
    '#      metadata_urls: [ \'blah.com\' ]\n'
    '\n'
    '# The modules that run in the \'init\' stage\n'
    'cloud_init_modules:\n'
    ' - migrator\n'
    ' - seed_random\n'
    ' - growpart\n'
    ' - set_hostname\n'
    ' - update_hostname\n'
    ' - ssh\n')

#: Ubuntu's /etc/cloud/cloud.cfg.d/90_dpkg.cfg.
UBUNTU_DPKG_CFG = (
    '# to update this file, run dpkg-reconfigure cloud-init\n'
    'datasource_list: [ NoCloud, ConfigDrive, OpenNebula, DigitalOcean, '
    'Azure, AltCloud, OVF, MAAS, GCE, OpenStack, CloudSigma, SmartOS, '
    'Bigstep, Scaleway, AliYun, Ec2, CloudStack, Hetzner, IBMCloud, Oracle, '
    'Exoscale, RbxCloud, UpCloud, VMware, Vultr, LXD, NWCS, Akamai, None ]\n')

#: A template built for CloudStack on XenServer.
CLOUDSTACK_CFG = 'datasource_list: [ CloudStack, None ]\n'

#: RHEL 8's /etc/cloud/cloud.cfg (its head).
RHEL8_CLOUD_CFG = (
    'users:\n'
    ' - default\n'
    '\n'
    'disable_root: 1\n'
    'ssh_pwauth:   0\n'
    '\n'
    'mount_default_fields: [~, ~, \'auto\', \'defaults,nofail,'
    'x-systemd.requires=cloud-init.service\', \'0\', \'2\']\n'
    'resize_rootfs_tmp: /dev\n'
    'ssh_deletekeys:   1\n'
    'ssh_genkeytypes:  [\'rsa\', \'ecdsa\', \'ed25519\']\n'
    'syslog_fix_perms: ~\n'
    'disable_vmware_customization: false\n'
    '\n'
    'cloud_init_modules:\n'
    ' - disk_setup\n'
    ' - set_hostname\n'
    ' - ssh\n'
    '\n'
    'system_info:\n'
    '  default_user:\n'
    '    name: cloud-user\n')


def cloudstack_guest(**more):
    """An Ubuntu guest built for CloudStack on XenServer, with the data
    of the instance cloud-init last ran on."""
    files = {'/usr/bin/cloud-init': '#!/usr/bin/python3\n',
             '/etc/cloud/cloud.cfg': UBUNTU_CLOUD_CFG,
             '/etc/cloud/cloud.cfg.d/05_logging.cfg': '_log:\n - x\n',
             '/etc/cloud/cloud.cfg.d/90_dpkg.cfg': UBUNTU_DPKG_CFG,
             '/etc/cloud/cloud.cfg.d/99_cloudstack.cfg': CLOUDSTACK_CFG,
             '/etc/cloud/cloud.cfg.d/README': 'ssh_deletekeys: false\n',
             '/var/lib/cloud/data/instance-id': 'i-2-1234-VM\n',
             '/var/lib/cloud/instance/datasource': (
                 'DataSourceCloudStack: DataSourceCloudStack '
                 '[seed=/var/lib/cloud/seed/cloudstack]\n')}
    files.update(more)
    return FilesG(files)


# -- cloud-init's configuration ----------------------------------------------

# -- SELinux labels of what --fix makes --------------------------------------

ETC_T = b'system_u:object_r:etc_t:s0\0'


def _labelled(g, path, label):
    g.xattrs.setdefault(path, {})[probe.SELINUX_XATTR] = label


def test_the_drop_in_gets_the_label_of_its_neighbours():
    """A RHEL guest that enforces SELinux: the file --fix creates gets the
    label restorecon would give it, copied from its directory's files
    (libguestfs creates it with none: unlabeled_t at boot)."""
    g = cloudstack_guest()
    ci = probe.cloud_init_facts(g, {'cloud-init'})
    # 05_logging.cfg, looked at first, has none: the next one's.
    _labelled(g, '/etc/cloud/cloud.cfg.d/90_dpkg.cfg', ETC_T)
    _labelled(g, '/etc/cloud/cloud.cfg.d', b'system_u:object_r:dir_t:s0')
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci)
    assert done[0]['selinux_label'] == 'system_u:object_r:etc_t:s0'
    assert g.xattrs[probe.CLOUD_KEEP] == {
        probe.SELINUX_XATTR: b'system_u:object_r:etc_t:s0'}
    # No file of the directory has one: the directory's.
    g = cloudstack_guest()
    _labelled(g, '/etc/cloud/cloud.cfg.d',
              b'unconfined_u:object_r:etc_t:s0:c0.c1023\0')
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci)
    assert g.xattrs[probe.CLOUD_KEEP][probe.SELINUX_XATTR] == \
        b'unconfined_u:object_r:etc_t:s0:c0.c1023'
    assert done[0]['selinux_label'] == \
        'unconfined_u:object_r:etc_t:s0:c0.c1023'


def test_a_guest_without_labels_gets_none_and_a_link_is_not_copied():
    ci = probe.cloud_init_facts(cloudstack_guest(), {'cloud-init'})
    g = cloudstack_guest()
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci)
    assert 'selinux_label' not in done[0]
    assert probe.CLOUD_KEEP not in g.xattrs
    # A link's own label (lnk_file) is not a file's; what is not a label
    # is not copied either.
    g = cloudstack_guest()
    g.links['/etc/cloud/cloud.cfg.d/00-link.cfg'] = '90_dpkg.cfg'
    g.files['/etc/cloud/cloud.cfg.d/00-link.cfg'] = b'x: 1\n'
    _labelled(g, '/etc/cloud/cloud.cfg.d/00-link.cfg',
              b'system_u:object_r:link_t:s0')
    _labelled(g, '/etc/cloud/cloud.cfg.d/05_logging.cfg', b'bad\0label')
    _labelled(g, '/etc/cloud/cloud.cfg.d/90_dpkg.cfg', '\xe9'.encode())
    _labelled(g, '/etc/cloud/cloud.cfg.d/99_cloudstack.cfg', ETC_T)
    probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci)
    assert g.xattrs[probe.CLOUD_KEEP][probe.SELINUX_XATTR] == \
        b'system_u:object_r:etc_t:s0'


def test_a_directory_fix_makes_takes_its_parents_label():
    g = cloudstack_guest()
    ci = probe.cloud_init_facts(g, {'cloud-init'})
    for path in list(g.files):
        if path.startswith('/etc/cloud/cloud.cfg.d/'):
            del g.files[path]
    _labelled(g, '/etc/cloud', ETC_T)
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci)
    assert g.xattrs[probe.CLOUD_CFG_D][probe.SELINUX_XATTR] == \
        b'system_u:object_r:etc_t:s0'
    assert g.xattrs[probe.CLOUD_KEEP][probe.SELINUX_XATTR] == \
        b'system_u:object_r:etc_t:s0'
    assert done[0]['selinux_label'] == 'system_u:object_r:etc_t:s0'


def test_a_file_rewritten_in_place_is_not_relabelled():
    """The drop-in there already (a fix run before, cloud-init's own
    keys changed since) keeps its label."""
    g = cloudstack_guest(**{probe.CLOUD_KEEP: 'ssh_deletekeys: true\n'})
    ci = probe.cloud_init_facts(g, {'cloud-init'})
    _labelled(g, '/etc/cloud/cloud.cfg.d/90_dpkg.cfg', ETC_T)
    _labelled(g, probe.CLOUD_KEEP, b'system_u:object_r:own_t:s0')
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci)
    assert [d['path'] for d in done] == [probe.CLOUD_KEEP]
    assert 'selinux_label' not in done[0]
    assert g.xattrs[probe.CLOUD_KEEP][probe.SELINUX_XATTR] == \
        b'system_u:object_r:own_t:s0'


def test_the_values_of_real_configurations():
    assert probe.cloud_config_values(UBUNTU_CLOUD_CFG) == {
        'preserve_hostname': False}
    assert probe.cloud_config_values(RHEL8_CLOUD_CFG) == {
        'ssh_deletekeys': True}
    values = probe.cloud_config_values(UBUNTU_DPKG_CFG)
    assert values['datasource_list'][:3] == ['NoCloud', 'ConfigDrive',
                                             'OpenNebula']
    assert values['datasource_list'][-1] == 'None'
    assert len(values['datasource_list']) == 29


def test_yaml_forms_as_cloud_init_reads_them():
    def value(text, key):
        return probe.cloud_config_values(text).get(key)
    # Booleans as cloud-init's translate_bool takes them.
    for word in ('true', 'True', 'yes', 'on', 'ON', '1', '"true"', "'on'",
                 'true   # comment'):
        assert value('ssh_deletekeys: %s\n' % word, 'ssh_deletekeys') is \
            True, word
    for word in ('false', 'no', 'off', '0', '~', '', 'null', 'nope',
                 '"false"', 'false # true'):
        assert value('ssh_deletekeys: %s\n' % word, 'ssh_deletekeys') is \
            False, word
    # Lists: flow over lines, block, quoted, with comments.
    assert value('datasource_list: [ "OpenStack",  # first\n'
                 "   'ConfigDrive', None ]\n", 'datasource_list') == [
        'OpenStack', 'ConfigDrive', 'None']
    assert value('datasource_list:\n  - CloudStack\n  # a comment\n\n'
                 '  - None\npreserve_hostname: true\n',
                 'datasource_list') == ['CloudStack', 'None']
    assert value('datasource_list: []\n', 'datasource_list') == []
    # What is reported is JSON text: undecodable bytes as U+FFFD.
    text = b'datasource_list: [ Cloud\xe4Stack ]\n'.decode(
        'utf-8', 'surrogateescape')
    assert value(text, 'datasource_list') == ['Cloud\ufffdStack']
    # Not top-level keys: nested, in a block scalar, commented, CRLF.
    for text in ('system_info:\n  ssh_deletekeys: false\n',
                 'write_files:\n - content: |\n     ssh_deletekeys: false\n',
                 '#ssh_deletekeys: false\n', ' ssh_deletekeys: false\n'):
        assert 'ssh_deletekeys' not in probe.cloud_config_values(text), text
    assert value('ssh_deletekeys: false\r\n', 'ssh_deletekeys') is False
    # The later of two settings in one file wins, as in YAML.
    assert value('preserve_hostname: true\npreserve_hostname: false\n',
                 'preserve_hostname') is False


def test_facts_of_a_cloudstack_guest_merge_its_files_in_order():
    ci = probe.cloud_init_facts(cloudstack_guest(), {'cloud-init', 'vim'})
    assert ci == {
        'installed': ['cloud-init', '/usr/bin/cloud-init'],
        'disabled': None, 'ssh_deletekeys': True,
        'preserve_hostname': False,
        'datasource_list': ['CloudStack', 'None'],
        'set_in': {'preserve_hostname': '/etc/cloud/cloud.cfg',
                   'datasource_list':
                   '/etc/cloud/cloud.cfg.d/99_cloudstack.cfg'},
        'instance_id': 'i-2-1234-VM', 'datasource': 'DataSourceCloudStack',
        'keep_overridden_by': None}
    assert not probe.keeps_identity(ci)
    # RHEL 8: ssh_deletekeys set in cloud.cfg; no instance yet.
    ci = probe.cloud_init_facts(FilesG({
        '/etc/cloud/cloud.cfg': RHEL8_CLOUD_CFG}), {'cloud-init'})
    assert (ci['ssh_deletekeys'], ci['set_in'], ci['instance_id'],
            ci['datasource']) == (True, {
                'ssh_deletekeys': '/etc/cloud/cloud.cfg'}, None, None)
    # Not installed: no facts, whatever /etc/cloud holds.
    assert probe.cloud_init_facts(FilesG({
        '/etc/cloud/cloud.cfg': RHEL8_CLOUD_CFG}), {'vim'}) is None


def test_how_cloud_init_is_turned_off():
    off = probe.CLOUD_DISABLED
    on = probe.CLOUD_ENABLED
    g = cloudstack_guest(**{off: ''})
    assert probe.cloud_init_disabled(g, []) == off
    # cloud-init.enabled is looked at first, the kernel command line
    # before both (the systemd generator's order).
    g = cloudstack_guest(**{off: '', on: ''})
    assert probe.cloud_init_disabled(g, []) is None
    grub = ('menuentry x {\n  linux /vmlinuz root=/dev/xvda1 ro '
            'cloud-init=disabled quiet\n}\n')
    assert probe.cloud_init_disabled(cloudstack_guest(), [grub]) == \
        'cloud-init=disabled on the kernel command line'
    g = cloudstack_guest(**{off: ''})
    assert probe.cloud_init_disabled(g, [grub.replace(
        'disabled', 'enabled')]) is None
    assert probe.cloud_init_disabled(cloudstack_guest(), [
        '# cloud-init=disabled\n', 'linux /v xcloud-init=disabled\n']) \
        is None
    # A masked unit (systemctl mask: a link to /dev/null).
    g = cloudstack_guest()
    g.links['/etc/systemd/system/cloud-init.service'] = '/dev/null'
    assert probe.cloud_init_disabled(g, []) == 'cloud-init.service masked'
    g.links['/etc/systemd/system/cloud-init.service'] = \
        '/lib/systemd/system/cloud-init.service'
    assert probe.cloud_init_disabled(g, []) is None
    g.links['/etc/systemd/system/cloud-init.target'] = '/dev/null'
    assert probe.cloud_init_disabled(g, []) == 'cloud-init.target masked'


class LinuxG(FilesG):
    """FilesG with cloud-init among the guest's packages (what
    probe.linux_facts asks libguestfs besides its files)."""

    def inspect_list_applications2(self, root):
        return [{'app2_name': 'cloud-init'}]


def rocky8_guest():
    """A Rocky 8 guest whose bootloader files are GRUB's blscfg menu, its
    environment, two BLS entries (the saved default's has cloud-init=
    disabled) and one too big to be read (past probe.MAX_FILE: its
    cloud-init=enabled is not seen); the names of Xen's disk in fstab
    and grubenv, its console in /etc/default/grub."""
    new, old = '4.18.0-477.el8.x86_64', '4.18.0-80.el8.x86_64'
    files = {
        '/etc/fstab': ('/dev/xvda1 / xfs defaults 0 0\n'
                       'UUID=u2 /data xfs defaults 0 0\n'),
        '/etc/default/grub': ('GRUB_CMDLINE_LINUX="console=hvc0 '
                              'crashkernel=auto"\n'),
        '/boot/grub2/grub.cfg': ('set default="${saved_entry}"\n'
                                 'insmod blscfg\nblscfg\n'),
        '/boot/grub2/grubenv': (
            '# GRUB Environment Block\nsaved_entry=abc-%s\n'
            'kernelopts=root=/dev/xvda1 ro\n' % old + '#' * 900),
        '/boot/loader/entries/zzz.conf': (
            'title big\nlinux /vmlinuz-x\noptions cloud-init=enabled\n' +
            '#' * probe.MAX_FILE),
        '/usr/bin/cloud-init': '#!/usr/bin/python3\n',
        '/etc/cloud/cloud.cfg': 'ssh_deletekeys: 1\n'}
    for version, more in ((new, ''), (old, ' cloud-init=disabled')):
        files['/boot/loader/entries/abc-%s.conf' % version] = (
            'title Rocky (%s)\nversion %s\nlinux /vmlinuz-%s\n'
            'options $kernelopts%s\n' % (version, version, version, more))
        files['/boot/vmlinuz-' + version] = 'k'
        files['/lib/modules/%s/modules.dep' % version] = (
            'kernel/drivers/block/virtio_blk.ko.xz:\n')
    return LinuxG(files)


def test_the_bootloader_files_facts_of_a_linux_guest():
    """What linux_facts makes of the bootloader files: the names in
    them, the bootloader and its default, and cloud-init's kernel
    argument (the files past the read bound are not read)."""
    facts = probe.linux_facts(rocky8_guest(), '/dev/sda1')
    assert facts['bootloader'] == 'grub2'
    assert [(e['path'], e['names'], e['xen_consoles'])
            for e in facts['disk_names']] == [
        ('/etc/fstab', ['/dev/xvda1', 'UUID=u2'], []),
        ('/boot/grub2/grub.cfg', [], []),
        ('/etc/default/grub', [], ['console=hvc0']),
        ('/boot/loader/entries/abc-4.18.0-477.el8.x86_64.conf', [], []),
        ('/boot/loader/entries/abc-4.18.0-80.el8.x86_64.conf', [], []),
        ('/boot/grub2/grubenv', ['/dev/xvda1'], [])]
    assert facts['boot_default'] == {
        'file': '/boot/grub2/grub.cfg',
        'entry': 'Rocky (4.18.0-80.el8.x86_64)',
        'image': '/vmlinuz-4.18.0-80.el8.x86_64',
        'version': '4.18.0-80.el8.x86_64'}
    assert facts['cloud_init']['disabled'] == \
        'cloud-init=disabled on the kernel command line'
    # The argument only in the file too big to read: not seen.
    g = rocky8_guest()
    g.files['/boot/loader/entries/zzz.conf'] = g.files[
        '/boot/loader/entries/zzz.conf'].replace(b'=enabled', b'=disabled')
    old = '/boot/loader/entries/abc-4.18.0-80.el8.x86_64.conf'
    g.files[old] = g.files[old].replace(b' cloud-init=disabled', b'')
    assert probe.linux_facts(g, '/dev/sda1')['cloud_init']['disabled'] \
        is None
    # In grubenv's kernelopts, which the entries' "options $kernelopts"
    # take: seen.
    g.files['/boot/grub2/grubenv'] = g.files['/boot/grub2/grubenv'].replace(
        b' ro\n', b' ro cloud-init=disabled\n')
    assert probe.linux_facts(g, '/dev/sda1')['cloud_init']['disabled'] == \
        'cloud-init=disabled on the kernel command line'
    assert probe.kernelopts_lines(g, ['options $kernelopts\n']) == [
        'options root=/dev/xvda1 ro cloud-init=disabled\n']
    assert probe.kernelopts_lines(g, ['options ${kernelopts} x\n']) != []
    # ... unless no entry takes its options from there.
    for entry in [p for p in g.files if p.startswith('/boot/loader/')]:
        g.files[entry] = g.files[entry].replace(b'$kernelopts',
                                                b'root=/dev/xvda1 ro')
    assert probe.linux_facts(g, '/dev/sda1')['cloud_init']['disabled'] \
        is None
    assert probe.kernelopts_lines(g, ['options root=/dev/sda1\n']) == []


def _counted(g, name):
    """The calls of ``g.name`` from now on (their first argument)."""
    calls = []
    real = getattr(g, name)

    def counted(path, *args):
        calls.append(path)
        return real(path, *args)
    setattr(g, name, counted)
    return calls


def test_linux_facts_read_each_file_once():
    """The bootloader files are read once for the names in them, the
    default entry, cloud-init's kernel argument and net.ifnames=0."""
    g = rocky8_guest()
    reads, resolved = _counted(g, 'read_file'), _counted(g, 'realpath')
    probe.linux_facts(g, '/dev/sda1')
    assert '/boot/grub2/grub.cfg' in reads
    assert sorted(reads) == sorted(set(reads))
    # ... and the list of them made once: each name resolved once (an
    # appliance call each).
    assert '/boot/grub2/grub.cfg' in resolved
    assert sorted(resolved) == sorted(set(resolved))


def test_fix_writes_the_drop_in_once_and_the_warning_goes():
    g = cloudstack_guest()
    ci = probe.cloud_init_facts(g, {'cloud-init'})
    warning = ('cloud-init is installed and enabled (last instance '
               'i-2-1234-VM, on DataSourceCloudStack, datasource_list '
               'CloudStack, None in /etc/cloud/cloud.cfg.d/'
               '99_cloudstack.cfg): at the first boot in OpenStack it sees a '
               'new instance id and runs its per-instance modules, which '
               'delete and regenerate the SSH host keys (ssh_deletekeys true '
               'by default: every client then sees "REMOTE HOST '
               'IDENTIFICATION HAS CHANGED") and set the hostname to the Nova '
               'server\'s name (preserve_hostname false in /etc/cloud/'
               'cloud.cfg); --fix writes /etc/cloud/cloud.cfg.d/'
               '99-any2kvm-keep-identity.cfg (ssh_deletekeys: false, '
               'preserve_hostname: true; cloud-init does the rest, the '
               'network of the new NIC too); by hand: put "ssh_deletekeys: '
               'false" and "preserve_hostname: true" in /etc/cloud/'
               'cloud.cfg.d/99-any2kvm-keep-identity.cfg, or turn cloud-init '
               'off (touch /etc/cloud/cloud-init.disabled)')
    assert gi.cloud_init_warnings(ci) == [warning]
    guest = {'type': 'linux', 'root': '/dev/sda1',
             'linux': {'cloud_init': ci}}
    untouched = dict(g.files)
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci)
    assert done == [{'path': probe.CLOUD_KEEP, 'changes': [
        {'from': '', 'to': 'ssh_deletekeys: false'},
        {'from': '', 'to': 'preserve_hostname: true'}]}]
    assert g.files[probe.CLOUD_KEEP] == probe.CLOUD_KEEP_TEXT.encode()
    assert {k: v for k, v in g.files.items() if k != probe.CLOUD_KEEP} == \
        untouched
    # What the guest holds now keeps its identity; a second fix writes
    # nothing.
    again = probe.cloud_init_facts(g, {'cloud-init'})
    assert (again['ssh_deletekeys'], again['preserve_hostname']) == (
        False, True)
    assert again['set_in']['ssh_deletekeys'] == probe.CLOUD_KEEP
    assert gi.cloud_init_warnings(again) == []
    g.writes = []
    assert probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=again) == []
    assert g.writes == []
    # The report of the fix: the warning gone, the fix listed.
    s = gi.summary({'guests': [copy.deepcopy(guest)],
                    'fixed': [{'root': '/dev/sda1', 'files': done}]})
    assert not [w for w in s['warnings'] if 'cloud-init' in w]
    text = gi.text_lines(s)
    assert ('fixed:        /etc/cloud/cloud.cfg.d/99-any2kvm-keep-identity'
            '.cfg: added ssh_deletekeys: false, added preserve_hostname: '
            'true') in text
    assert ('cloud-init:   enabled; ssh_deletekeys false, preserve_hostname '
            'true, last instance i-2-1234-VM') in text
    s = gi.summary({'guests': [copy.deepcopy(guest)]})
    assert warning in s['warnings']


def test_a_guest_that_keeps_its_identity_is_not_warned_of():
    keep = 'ssh_deletekeys: false\npreserve_hostname: true\n'
    for g in (cloudstack_guest(**{'/etc/cloud/cloud.cfg.d/50-keep.cfg':
                                  keep}),
              cloudstack_guest(**{probe.CLOUD_DISABLED: ''})):
        ci = probe.cloud_init_facts(g, {'cloud-init'})
        assert probe.keeps_identity(ci)
        assert gi.cloud_init_warnings(ci) == []
        assert probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci) == []
    # Only the hostname is at risk: the warning says that alone.
    g = cloudstack_guest(**{'/etc/cloud/cloud.cfg.d/50-keep.cfg':
                            'ssh_deletekeys: false\n'})
    (w,) = gi.cloud_init_warnings(probe.cloud_init_facts(g, {'cloud-init'}))
    assert 'which set the hostname to the Nova server\'s name ' \
        '(preserve_hostname false in /etc/cloud/cloud.cfg); --fix' in w
    assert 'SSH host keys' not in w


def test_a_file_read_after_the_drop_in_stops_the_fix():
    later = '/etc/cloud/cloud.cfg.d/99_zz-site.cfg'
    g = cloudstack_guest(**{later: 'ssh_deletekeys: true\n'})
    ci = probe.cloud_init_facts(g, {'cloud-init'})
    assert ci['keep_overridden_by'] == later
    (w,) = gi.cloud_init_warnings(ci)
    assert w.endswith('; --fix cannot: %s, read after its drop-in, sets '
                      'them again; change it, or turn cloud-init off (touch '
                      '/etc/cloud/cloud-init.disabled)' % later)
    assert probe.fix_linux(g, '/dev/sda1', 'virtio', [], cloud=ci) == []
    assert probe.CLOUD_KEEP not in g.files


def test_hostile_cloud_configurations_are_bounded():
    junk = bytes(range(256)) * 64 + b'\xff\xfe\r\x0c\x0b\x00'
    huge = b'ssh_deletekeys: false\n' + b'#' * probe.MAX_CONFIG_FILE
    files = {'/etc/cloud/cloud.cfg': junk + b'\npreserve_hostname: on\n',
             '/etc/cloud/cloud.cfg.d/10-huge.cfg': huge,
             '/etc/cloud/cloud.cfg.d/20-open.cfg':
                 'datasource_list: [ A,\n' + ' B,\n' * 10000,
             '/var/lib/cloud/data/instance-id': b'\xe4' * 4000 + b'\n',
             '/var/lib/cloud/instance/datasource': b'x' * 5000}
    files.update({'/etc/cloud/cloud.cfg.d/%04d.cfg' % i:
                  'ssh_deletekeys: %s\n' % ('false' if i == 1999 else 'true')
                  for i in range(2000)})
    g = FilesG(dict(files, **{'/usr/bin/cloud-init': ''}))
    begin = time.monotonic()
    ci = probe.cloud_init_facts(g)
    assert time.monotonic() - begin < 10
    # The huge file is not read, the list never closed is none, the
    # files past MAX_CONFIG_FILES are not read (0063.cfg is the last).
    assert ci['preserve_hostname'] is True
    assert ci['datasource_list'] is None
    assert ci['set_in']['ssh_deletekeys'] == \
        '/etc/cloud/cloud.cfg.d/%04d.cfg' % (probe.MAX_CONFIG_FILES - 1)
    assert ci['ssh_deletekeys'] is True
    assert ci['instance_id'] == '\ufffd' * probe.MAX_SHOWN
    assert ci['datasource'] is None     # over 4 KiB: not read
    # A deep nesting of flow lists is one item, not a recursion.
    text = 'datasource_list: ' + '[' * 100000 + ']' * 100000 + '\n'
    assert probe.cloud_config_values(text)['datasource_list'] == [
        '[' * probe.MAX_SHOWN]


# -- LVM filters --------------------------------------------------------------

#: /etc/lvm/lvm.conf of a CentOS 7 guest on XenServer (its devices
#: section, shortened): the filter an administrator set for Xen's disks.
RHEL7_LVM_CONF = (
    '# This is an example configuration file for the LVM2 system.\n'
    'config {\n'
    '\tcheckings = 1\n'
    '}\n'
    'devices {\n'
    '\tdir = "/dev"\n'
    '\tscan = [ "/dev" ]\n'
    '\tobtain_device_list_from_udev = 1\n'
    '\t# Configuration option devices/filter.\n'
    '\t# Example\n'
    '\t# Accept every block device:\n'
    '\t# filter = [ "a|.*/|" ]\n'
    '\t# Reject the cdrom drive:\n'
    '\t# filter = [ "r|/dev/cdrom|" ]\n'
    '\tfilter = [ "a|^/dev/xvd[a-z][0-9]*$|", "r|.*|" ]\n'
    '\t# Configuration option devices/global_filter.\n'
    '\tglobal_filter = [ "a|/dev/xvda2|",  # the root\'s PV\n'
    '\t\t"a|/dev/xvdb|", "r|.*/|" ]\n'
    '\tcache_dir = "/etc/lvm/cache"\n'
    '}\n'
    'activation {\n'
    '\tvolume_list = [ "centos", "@tag" ]\n'
    '}\n')


def test_a_filter_of_xen_disks_gets_the_kvm_names():
    new, changes, found = probe.fix_lvm_text(RHEL7_LVM_CONF, 'virtio')
    assert new == RHEL7_LVM_CONF.replace(
        '"a|^/dev/xvd[a-z][0-9]*$|", "r|.*|"',
        '"a|^/dev/xvd[a-z][0-9]*$|", "a|^/dev/vd[a-z][0-9]*$|", "r|.*|"'
    ).replace('"a|/dev/xvda2|",  # the root\'s PV\n\t\t"a|/dev/xvdb|", ',
              '"a|/dev/xvda2|", "a|/dev/vda2|",  # the root\'s PV\n'
              '\t\t"a|/dev/xvdb|", "a|/dev/vdb|", ')
    assert changes == [('', '"a|^/dev/vd[a-z][0-9]*$|"'),
                       ('', '"a|/dev/vda2|"'), ('', '"a|/dev/vdb|"')]
    assert [(f['setting'], f['left']) for f in found] == [
        ('filter', False), ('global_filter', False)]
    assert found[1]['patterns'] == ['a|/dev/xvda2|', 'a|/dev/xvdb|',
                                    'r|.*/|']
    # Fixing twice changes nothing the second time.
    assert probe.fix_lvm_text(new, 'virtio') == (new, [], [])
    # The scsi bus: sdX; disks in Xen slots 0 and 3 (3 is the second).
    new, changes, _found = probe.fix_lvm_text(
        '\tfilter = [ "a|/dev/xvdd1|", "a|/dev/xvda|", "r|.*|" ]\n',
        'scsi', {0: 0, 3: 1})
    assert new == ('\tfilter = [ "a|/dev/xvdd1|", "a|/dev/sdb1|", '
                   '"a|/dev/xvda|", "a|/dev/sda|", "r|.*|" ]\n')
    # A filter accepting only a Xen disk on none of the VM's disks (a
    # slot left out) does not reject the VM's disks the more on KVM.
    assert probe.fix_lvm_text('filter = [ "a|/dev/xvdc|", "r|.*|" ]\n',
                              'virtio', {0: 0})[1:] == ([], [])
    # A filter that rejects the KVM name before the Xen pattern: the
    # pattern added does not let it through, and the facts say so.
    new, changes, found = probe.fix_lvm_text(
        'filter = [ "r|/dev/vd|", "a|/dev/xvda|", "r|.*|" ]\n', 'virtio')
    assert changes == [('', '"a|/dev/vda|"')]
    assert found[0]['left'] is True


def test_filters_that_let_kvm_disks_through_are_left_alone():
    for text in ('filter = [ "a|.*|" ]\n',
                 'filter = [ "r|/dev/xvdb|", "a|.*|" ]\n',
                 'filter = [ "a|^/dev/sd.*|", "r|.*|" ]\n',
                 'filter = [ "a|/dev/xvd|", "a|/dev/[sv]d|", "r|.*|" ]\n',
                 '# filter = [ "a|/dev/xvd|", "r|.*|" ]\n',
                 'filter = [ "a|/dev/xvd|", "r|.*|"\n',      # never closed
                 'filter = "a|/dev/xvd|"\n',
                 'filter = [ ]\n',
                 ''):
        assert probe.fix_lvm_text(text, 'virtio') == (text, [], []), text


def test_hostile_lvm_configurations_keep_their_bytes():
    latin1 = (b'# Ger\xe4te: \xa9 2014 \x00\x0c\n'
              b'devices {\n filter = [ "a|/dev/xvd.*|", "r|.*|" ] }\n')
    text = latin1.decode('utf-8', 'surrogateescape')
    new, changes, _found = probe.fix_lvm_text(text, 'virtio')
    assert new.encode('utf-8', 'surrogateescape') == latin1.replace(
        b'"a|/dev/xvd.*|", ', b'"a|/dev/xvd.*|", "a|/dev/vd.*|", ')
    # Deep nesting, a bad regular expression, escaped quotes, thousands
    # of patterns: bounded, and no exception.
    deep = '{' * 100000 + 'filter = [ "a|(xvd|", "a|\\"xvd\\"|", ' + \
        '"a|/dev/xvd.*|", "r|.*|" ]\n' + '}' * 100000
    begin = time.monotonic()
    # Not at a line's start: not a setting.
    assert probe.fix_lvm_text(deep, 'virtio')[1] == []
    deep = deep.replace('filter', '\nfilter')
    new, changes, _found = probe.fix_lvm_text(deep, 'virtio')
    # Every pattern naming xvd gets its twin, the broken one too (LVM
    # rejects the file either way); the escaped quotes stay escaped.
    assert changes == [('', '"a|(vd|"'), ('', '"a|\\"vd\\"|"'),
                       ('', '"a|/dev/vd.*|"')], changes
    assert new.endswith('"a|/dev/xvd.*|", "a|/dev/vd.*|", "r|.*|" ]\n' +
                        '}' * 100000)
    many = 'filter = [ %s"a|/dev/xvd.*|", "r|.*|" ]\n' % (
        '"r|/dev/nope%d|", ' % 0 * 5000)
    new, changes, found = probe.fix_lvm_text(many, 'virtio')
    assert changes == [] and found == []   # past MAX_PATTERNS: not read
    assert time.monotonic() - begin < 20
    huge = b'filter = [ "a|/dev/xvd.*|", "r|.*|" ]\n' + \
        b'#' * probe.MAX_CONFIG_FILE
    facts = probe.lvm_filters(FilesG({'/etc/lvm/lvm.conf': huge}), [],
                              'virtio')
    assert facts == {'bus': 'virtio', 'files': [], 'initramfs': []}


def newc(members):
    """A newc cpio archive of {name: bytes}."""
    out = b''
    for ino, (name, data) in enumerate(list(members.items()) +
                                       [('TRAILER!!!', b'')]):
        raw = name.encode() + b'\0'
        head = b'070701' + b''.join(b'%08X' % v for v in (
            ino, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0))
        out += head + raw
        out += b'\0' * (-len(out) % 4) + data
        out += b'\0' * (-len(out) % 4)
    return out


def initramfs_case():
    """(guest, kernels, facts) of a CentOS 7 guest with the Xen filter
    in /etc and in two initramfs images, asserting its facts."""
    conf = RHEL7_LVM_CONF.encode()
    image = b'\0' * 512 + gzip.compress(newc({
        'etc': b'', 'etc/lvm/lvm.conf': b'old', './etc/lvm/lvm.conf': conf}))
    assert probe.cpio_names(image) == ['etc', 'etc/lvm/lvm.conf',
                                       './etc/lvm/lvm.conf']
    assert probe.cpio_members(image, './etc/lvm/lvm.conf') == {
        './etc/lvm/lvm.conf': conf}
    assert probe.cpio_members(image, './etc/lvm/lvm.conf', limit=10) == {}
    assert probe._initrd_member(['init', './etc/lvm/lvm.conf'],
                                probe.LVM_INITRD_CONF) == \
        './etc/lvm/lvm.conf'
    kernels = [{'version': '3.10.0-1160.el7.x86_64',
                'initramfs': '/boot/initramfs-3.10.0-1160.el7.x86_64.img',
                'initramfs_lvm_conf': 'etc/lvm/lvm.conf'},
               {'version': '3.10.0-957.el7.x86_64',
                'initramfs': '/boot/initramfs-3.10.0-957.el7.x86_64.img',
                'initramfs_lvm_conf': './etc/lvm/lvm.conf'},
               {'version': '9.9', 'initramfs': None,
                'initramfs_lvm_conf': None}]
    # libguestfs's initrd-cat for the first; the archive read here for
    # the second (initrd-cat fails on it).
    g = FilesG({'/etc/lvm/lvm.conf': conf,
                '/boot/initramfs-3.10.0-957.el7.x86_64.img': image},
               initrds={'/boot/initramfs-3.10.0-1160.el7.x86_64.img': {
                   'etc/lvm/lvm.conf': conf}})
    facts = probe.lvm_filters(g, kernels, 'virtio')
    assert facts['files'] == [
        {'path': '/etc/lvm/lvm.conf', 'setting': 'filter',
         'patterns': ['a|^/dev/xvd[a-z][0-9]*$|', 'r|.*|'], 'more': 0,
         'changes': ['"a|^/dev/vd[a-z][0-9]*$|"'], 'left': False},
        {'path': '/etc/lvm/lvm.conf', 'setting': 'global_filter',
         'patterns': ['a|/dev/xvda2|', 'a|/dev/xvdb|', 'r|.*/|'], 'more': 0,
         'changes': ['"a|/dev/vda2|"', '"a|/dev/vdb|"'], 'left': False}]
    assert [(e['path'], e['kernel'], e['setting']) for e in
            facts['initramfs']] == [
        ('/boot/initramfs-3.10.0-1160.el7.x86_64.img',
         '3.10.0-1160.el7.x86_64', 'filter'),
        ('/boot/initramfs-3.10.0-1160.el7.x86_64.img',
         '3.10.0-1160.el7.x86_64', 'global_filter'),
        ('/boot/initramfs-3.10.0-957.el7.x86_64.img',
         '3.10.0-957.el7.x86_64', 'filter'),
        ('/boot/initramfs-3.10.0-957.el7.x86_64.img',
         '3.10.0-957.el7.x86_64', 'global_filter')]
    return g, kernels, facts


def test_the_initramfs_copy_is_read_and_reported():
    initramfs_case()


def test_lvm_warnings_before_and_after_the_fix():
    g, _kernels, facts = initramfs_case()
    facts['initramfs'] = facts['initramfs'][:1]
    guest = {'type': 'linux', 'root': '/dev/sda1', 'package_format': 'rpm',
             'linux': {'lvm_filters': facts}}
    first = (
        '/etc/lvm/lvm.conf filter accepts Xen\'s disks only ("a|^/dev/'
        'xvd[a-z][0-9]*$|", "r|.*|"): on KVM the disks are /dev/vdX, which '
        'it rejects, so LVM finds none of its physical volumes and their '
        'volume groups stay inactive (a root on LVM: no boot); --fix adds '
        '"a|^/dev/vd[a-z][0-9]*$|" after the Xen pattern(s)')
    image = (
        'the initramfs /boot/initramfs-3.10.0-1160.el7.x86_64.img (kernel '
        '3.10.0-1160.el7.x86_64) carries a copy of lvm.conf whose filter '
        'accepts Xen\'s disks only ("a|^/dev/xvd[a-z][0-9]*$|", "r|.*|"): '
        'it activates the root\'s volume group before /etc is read, and on '
        'KVM finds none; fixing /etc/lvm/lvm.conf is not enough: rebuild '
        'the initramfs from the fixed lvm.conf (dracut -f --regenerate-all) '
        'before the move, in the guest on Xen (the fixed filter accepts '
        'both names); the virt-v2v hand-off of --fix rebuilds it only when '
        'it lacks virtio')
    out = gi.lvm_filter_warnings(guest)
    assert out[0] == first
    assert out[1].startswith('/etc/lvm/lvm.conf global_filter accepts Xen\'s '
                             'disks only ("a|/dev/xvda2|", "a|/dev/xvdb|", '
                             '"r|.*/|")')
    assert out[1].endswith('--fix adds "a|/dev/vda2|", "a|/dev/vdb|" after '
                           'the Xen pattern(s)')
    assert out[2] == image and len(out) == 3
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [])
    assert done == [{'path': '/etc/lvm/lvm.conf', 'changes': [
        {'from': '', 'to': '"a|^/dev/vd[a-z][0-9]*$|"'},
        {'from': '', 'to': '"a|/dev/vda2|"'},
        {'from': '', 'to': '"a|/dev/vdb|"'}]}]
    assert probe.fix_linux(g, '/dev/sda1', 'virtio', []) == []
    assert probe.lvm_filters(g, [], 'virtio')['files'] == []
    s = gi.summary({'guests': [guest], 'fixed': [
        {'root': '/dev/sda1', 'files': done}]})
    assert [w for w in s['warnings'] if 'lvm' in w] == [image]
    assert s['left'] == [image]
    assert ('fixed:        /etc/lvm/lvm.conf: added "a|^/dev/vd[a-z][0-9]*$|"'
            ', added "a|/dev/vda2|", added "a|/dev/vdb|"') in gi.text_lines(s)
    # Another package format: both commands.
    guest['package_format'] = None
    assert 'initramfs from the fixed lvm.conf (update-initramfs -u -k all, '\
        'or dracut -f --regenerate-all)' in gi.lvm_filter_warnings(guest)[0]


def test_what_the_lvm_fix_leaves_is_listed_word_for_word():
    """After --fix, the fix summary's "not fixed" lines of LVM: the
    filters it leaves rejecting KVM's names (one it added a pattern to,
    one it cannot name, in a file it did not write) and the initramfs's
    copies; the filter it cured is in neither list."""
    lvm = ('devices {\n'
           '\tfilter = [ "a|^/dev/xvd[a-z][0-9]*$|", "r|.*|" ]\n'
           '\tglobal_filter = [ "r|/dev/vd|", "a|/dev/xvda|", "r|.*|" ]\n'
           '}\n')
    local = 'devices {\n\tfilter = [ "a|^/dev/xv.*|", "r|.*|" ]\n}\n'
    image = '/boot/initrd.img-5.10.0-28-amd64'
    kernels = [{'version': '5.10.0-28-amd64', 'initramfs': image,
                'initramfs_lvm_conf': 'etc/lvm/lvm.conf'}]
    g = FilesG({'/etc/lvm/lvm.conf': lvm, '/etc/lvm/lvmlocal.conf': local},
               initrds={image: {'etc/lvm/lvm.conf': lvm.encode()}})
    guest = {'type': 'linux', 'root': '/dev/sda1', 'package_format': 'deb',
             'linux': {'lvm_filters': probe.lvm_filters(g, kernels,
                                                        'virtio')}}
    before = copy.deepcopy(guest)
    rejects = (': on KVM the disks are /dev/vdX, which it rejects, so LVM '
               'finds none of its physical volumes and their volume groups '
               'stay inactive (a root on LVM: no boot); ')
    cured = ('/etc/lvm/lvm.conf filter accepts Xen\'s disks only ("a|^/dev/'
             'xvd[a-z][0-9]*$|", "r|.*|")' + rejects + '--fix adds "a|^/dev/'
             'vd[a-z][0-9]*$|" after the Xen pattern(s)')
    added = ('/etc/lvm/lvm.conf global_filter accepts Xen\'s disks only ("r|'
             '/dev/vd|", "a|/dev/xvda|", "r|.*|")' + rejects)
    unnamed = ('/etc/lvm/lvmlocal.conf filter accepts Xen\'s disks only ("a|'
               '^/dev/xv.*|", "r|.*|")' + rejects + '--fix cannot name them '
               'for KVM: add /dev/vdX by hand')
    copies = [
        'the initramfs /boot/initrd.img-5.10.0-28-amd64 (kernel '
        '5.10.0-28-amd64) carries a copy of lvm.conf whose %s accepts Xen\'s '
        'disks only (%s): it activates the root\'s volume group before /etc '
        'is read, and on KVM finds none; fixing /etc/lvm/lvm.conf is not '
        'enough: rebuild the initramfs from the fixed lvm.conf '
        '(update-initramfs -u -k all) before the move, in the guest on Xen '
        '(the fixed filter accepts both names); the virt-v2v hand-off of '
        '--fix rebuilds it only when it lacks virtio' % f for f in (
            ('filter', '"a|^/dev/xvd[a-z][0-9]*$|", "r|.*|"'),
            ('global_filter', '"r|/dev/vd|", "a|/dev/xvda|", "r|.*|"'))]
    assert gi.lvm_filter_warnings(guest) == [
        cured, added + '--fix adds "a|/dev/vda|" after the Xen pattern(s)',
        unnamed] + copies
    done = probe.fix_linux(g, '/dev/sda1', 'virtio', [])
    assert [d['path'] for d in done] == ['/etc/lvm/lvm.conf']
    s = gi.summary({'guests': [guest], 'fixed': [
        {'root': '/dev/sda1', 'files': done}]})
    left = [added + '--fix cannot name them for KVM: add /dev/vdX by hand',
            unnamed] + copies
    assert [w for w in s['warnings'] if 'lvm' in w] == left
    assert s['left'] == left
    assert [ln for ln in gi.text_lines(s) if 'lvm' in ln and not
            ln.startswith('warning:')] == [
        'fixed:        /etc/lvm/lvm.conf: added "a|^/dev/vd[a-z][0-9]*$|", '
        'added "a|/dev/vda|"'] + ['not fixed:    ' + w for w in left]
    # A fix that wrote another file: what is listed is by file (lvm.conf
    # has a filter left, so both of its filters are).
    s = gi.summary({'guests': [before], 'fixed': [
        {'root': '/dev/sda1', 'files': [{'path': '/etc/fstab', 'changes': [
            {'from': '/dev/xvda1', 'to': '/dev/vda1'}]}]}]})
    assert s['left'] == gi.lvm_filter_warnings(before) == [
        cured, added + '--fix adds "a|/dev/vda|" after the Xen pattern(s)',
        unnamed] + copies


def test_no_lvm_conf_nothing_to_do():
    assert probe.lvm_filters(FilesG({}), [], 'scsi') == {
        'bus': 'scsi', 'files': [], 'initramfs': []}
    assert gi.lvm_filter_warnings({'linux': {}}) == []
    assert gi.lvm_filter_warnings({'linux': {'lvm_filters': {
        'bus': 'scsi', 'files': [], 'initramfs': []}}}) == []
    assert probe.fix_linux(FilesG({}), '/dev/sda1', 'scsi', []) == []


def test_the_boot_loader_entries_read_are_bounded():
    # A hostile guest's thousands of entries: at most MAX_BOOT_ENTRIES of
    # them are read (each up to MAX_FILE bytes), the .conf ones only.
    entries = {'/boot/loader/entries/e%05d.conf' % i: 'linux /vmlinuz\n'
               for i in range(probe.MAX_BOOT_ENTRIES + 50)}
    entries['/boot/loader/entries/a-note.txt'] = 'not an entry\n'
    entries['/boot/grub2/grub.cfg'] = 'set default=0\n'
    files = probe.boot_files(FilesG(entries))
    assert files[0] == '/boot/grub2/grub.cfg'
    listed = [f for f in files if f.startswith('/boot/loader/entries/')]
    assert len(listed) == probe.MAX_BOOT_ENTRIES
    assert listed[0].endswith('/e00000.conf')
    assert all(f.endswith('.conf') for f in listed)


def test_kernels_and_network_files_looked_at_are_bounded():
    # Thousands of module directories or ifcfg files (a hostile guest):
    # the newest MAX_KERNELS kernels (by version, 5.10 after 5.9) and
    # MAX_NET_FILES files of a directory are read.
    n = probe.MAX_KERNELS + 8
    files = {'/lib/modules/5.%d.0/modules.dep' % i: 'kernel/x.ko:\n'
             for i in range(n)}
    got = [k['version'] for k in probe.kernels(FilesG(files))]
    assert len(got) == probe.MAX_KERNELS
    assert '5.%d.0' % (n - 1) in got and '5.9.0' in got
    assert '5.7.0' not in got and '5.0.0' not in got
    nets = {'/etc/sysconfig/network-scripts/ifcfg-eth0.%d' % i:
            'DEVICE=eth0.%d\n' % i for i in range(probe.MAX_NET_FILES + 9)}
    nets['/etc/sysconfig/network-scripts/.ifcfg-hidden'] = 'x\n'
    listed = probe.net_files(FilesG(nets))
    assert len(listed) == probe.MAX_NET_FILES
    assert all('/ifcfg-eth0.' in p for p in listed)


def test_net_ifnames_in_grubenv_kernelopts_keeps_the_kernels_names():
    """net.ifnames=0 where RHEL 8 keeps the kernel command line (grubenv's
    kernelopts, which the BLS entries take) is seen as on any other."""
    g = rocky8_guest()
    assert probe.linux_facts(g, '/dev/sda1')['network']['ifnames_off'] \
        is False
    g.files['/boot/grub2/grubenv'] = g.files['/boot/grub2/grubenv'].replace(
        b' ro\n', b' ro net.ifnames=0\n')
    assert probe.linux_facts(g, '/dev/sda1')['network']['ifnames_off'] \
        is True
    # The same when network_facts reads the files itself (as fix_linux
    # calls it).
    assert probe.network_facts(g)['ifnames_off'] is True
