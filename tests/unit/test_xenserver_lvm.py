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

"""The LVM SR pieces of the XenServer source (sources/xenserver/lvm.py):
the ``lvs`` answer, the container of a volume group's active VHD LVs,
and the dom0 attachment with its clean-up.  End to end, against the
stand-in's LVHD model through a real sshd: tests/functional/
test_migration.py."""

import os
import socket
import subprocess
import sys

import pytest

from any2kvm_os import exception
from any2kvm_os import limits as limits_mod
from any2kvm_os import processes
from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import lvm

VG = 'VG_XenStorage-5f4c8a2e-1b3d-4e6f-8a9b-0c1d2e3f4a5b'
VDI = '55555555-6666-4777-8888-999999999999'
DOM0 = '11111111-2222-4333-8444-555555555555'
ARGV = lvm.lvs_command(VG)


def test_the_lvs_command_and_its_answer():
    assert ARGV == ['lvs', '--readonly', '--noheadings', '--nosuffix',
                    '--units', 'b', '--separator', '|', '-o',
                    'lv_name,lv_size,lv_attr', VG]
    out = ('  MGT|4194304|-wi-a-----\n'
           '  VHD-%s|12582912|-wi-ao----\n'
           '  VHD-aaaa|8388608|-ri-a-----\n'
           '  VHD-bbbb|4194304|-wi-------\n' % VDI).encode()
    v = lvm.parse_lvs(out, ARGV)
    assert sorted(v) == ['MGT', 'VHD-%s' % VDI, 'VHD-aaaa', 'VHD-bbbb']
    assert v['VHD-%s' % VDI].size == 12582912
    assert [n for n in sorted(v) if v[n].active] == [
        'MGT', 'VHD-%s' % VDI, 'VHD-aaaa']
    assert lvm.parse_lvs(b'', ARGV) == {}


@pytest.mark.parametrize('line', [
    '  VHD-a|12|-wi-a-----|extra', '  VHD-a|12', '  ../x|12|-wi-a-----',
    '  VHD-a|-12|-wi-a-----', '  VHD-a|1.5|-wi-a-----',
    '  VHD-a/b|12|-wi-a-----', '  VHD-a|12|' + 'x' * 40])
def test_an_lvs_answer_that_is_not_lv_lines_is_refused(line):
    with pytest.raises(errors.XeOutputError, match='not an LV line'):
        lvm.parse_lvs(line.encode(), ARGV)


@pytest.mark.parametrize('size', ['\u00b2', '9' * 5000])
def test_an_lv_size_that_is_not_a_number_is_refused(size):
    with pytest.raises(errors.XeOutputError, match='not an LV line'):
        lvm.parse_lvs(('  VHD-a|%s|-wi-a-----\n' % size).encode(), ARGV)


@pytest.mark.parametrize('pid, judged', [
    ('9' * 20, True), ('9' * 30, False), ('\u00b2', False),
    ('9' * 5000, False), ('0x10', False), ('-1', False)])
def test_a_crafted_tag_is_judged_without_a_crash(pid, judged):
    """A tag's pid is untrusted text (a snapshot's label, a VBD's
    other-config on the hypervisor host): a number no process of this
    host can have is gone; what is not a number of at most 20 ASCII
    digits is not judged (left alone); neither raises."""
    text = '%s:%s:::' % (socket.gethostname(), pid)
    assert processes.tag_gone(text) is judged
    assert processes.gone('%s:::' % pid) is judged


def test_an_lv_listed_twice_or_too_many_are_refused(monkeypatch):
    with pytest.raises(errors.XeOutputError, match='listed twice'):
        lvm.parse_lvs(b'  VHD-a|1|-wi-a-----\n  VHD-a|2|-wi-a-----\n',
                      ARGV)
    monkeypatch.setattr(lvm, 'MAX_LVS', 2)
    with pytest.raises(errors.XeOutputError, match='more than 2 LVs'):
        lvm.parse_lvs(b''.join(b'  VHD-%d|1|-wi-a-----\n' % i
                               for i in range(3)), ARGV)


class _Conn(object):
    """Answers commands from ``answers`` ({command word: stdout}) and
    records them; ``fail``: the command word that fails."""
    label = 'root@xs1'

    def __init__(self, answers=None, fail=None, nodes=None):
        self.answers = answers or {}
        self.fail = fail
        self.calls = []
        self.opened = []
        #: The device nodes in the volume group's directory (symbolic
        #: links, as udev and LVM make them); None: no directory.
        self.nodes = nodes
        self.listed = []

    def listdir(self, path, limit, skipped=None):
        """SFTP's listing, as ``Connection.listdir`` answers it."""
        self.listed.append(path)
        if self.nodes is None:
            e = exception.SshError(host=self.label, reason='cannot list '
                                   '%s: No such file' % path)
            e.no_such_file = True
            raise e
        if skipped is not None:
            skipped.update((n, 'a symbolic link') for n in self.nodes)
        return []

    def check_run(self, argv, **kw):
        self.calls.append(list(argv))
        word = argv[1] if argv[0] == 'xe' else argv[0]
        if word == self.fail:
            raise exception.RemoteCommandError(
                host=self.label, command=word, reason='refused')
        if word == getattr(self, 'stalls', None):
            # Not waited for to its end (the SSH layer's timeout): xapi
            # goes on with the request.
            self.stalls = None
            e = exception.RemoteCommandError(
                host=self.label, command=word, reason='no exit after 60 s: '
                'stopped')
            e.timed_out = True
            raise e

        class R(object):
            stdout = self.answers.get(word, b'').encode() \
                if isinstance(self.answers.get(word, b''), str) \
                else self.answers.get(word, b'')
        return R()

    def open_file(self, path, size=None, name=None, prefetch=None):
        class View(object):
            pass
        v = View()
        v.path, v.size, v.name = path, size, name
        self.opened.append(v)
        return v


def test_the_container_holds_the_active_vhd_lvs_with_their_sizes():
    volumes = lvm.parse_lvs(('  MGT|4194304|-wi-a-----\n'
                             '  VHD-a|8388608|-ri-a-----\n'
                             '  VHD-b|4194304|-wi-------\n'
                             '  LV-c|4194304|-wi-a-----\n').encode(), ARGV)
    c = lvm.LvmContainer(_Conn(), '/dev/' + VG, 'VHD-a',
                         limits_mod.Limits(), volumes)
    assert c.member_names() == ['VHD-a'] and c.padded
    conn = c.connection
    view = c.open_view('VHD-a')
    assert (view.path, view.size, view.padded) == (
        '/dev/%s/VHD-a' % VG, 8388608, True)
    # This host's page cache of the LV dropped first (another host may
    # have written it: SM's GC on the pool master).
    assert conn.calls == [['blockdev', '--flushbufs', '/dev/%s/VHD-a' % VG]]
    # Parents by the name the child gives, the device-mapper form too;
    # nothing else is a parent's name.
    assert c.hint_name('VHD-b') == 'VHD-b'
    assert c.hint_name('/dev/%s/VHD-b' % VG) == 'VHD-b'
    assert c.hint_name('file://./VHD-b') == 'VHD-b'
    assert c.hint_name('VG_XenStorage--5f4c8a2e--1b3d-VHD--aaaa--bbbb') \
        == 'VHD-aaaa-bbbb'
    assert c.hint_name('MGT') is None and c.hint_name('x.vhd') is None
    # A raw base (SM snapshots a raw VDI with a VHD child): refused by
    # name, whichever form names it.
    for raw in ('LV-cccc', '/dev/%s/LV-cccc' % VG,
                'VG_XenStorage--5f4c8a2e-LV--cccc'):
        with pytest.raises(exception.ChainError, match='LV-cccc.*the '
                           'parent is a raw LV .*vdi-pool-migrate'):
            c.hint_name(raw)
    with pytest.raises(exception.ChainError, match='it is inactive'):
        c.open_view('VHD-b')
    with pytest.raises(exception.ChainError, match='not an active LV'):
        c.open_view('VHD-zzz')


def test_the_attachment_plugs_tags_and_unplugs():
    conn = _Conn({'vbd-create': 'abcdef01-2345-4678-89ab-cdef01234567\n'})
    a = lvm.Attachment(conn, DOM0, VDI)
    a.plug()
    assert conn.calls[0] == [
        'xe', 'vbd-create', 'vm-uuid=' + DOM0, 'vdi-uuid=' + VDI,
        'device=autodetect', 'mode=RO', 'type=Disk']
    assert conn.calls[1] == [
        'xe', 'vbd-param-set', 'uuid=abcdef01-2345-4678-89ab-cdef01234567',
        'other-config:any2kvm-reader=%s:%d:%s:%d:%s' % (
            socket.gethostname(), os.getpid(), processes.boot_id(),
            processes.start_time(os.getpid()),
            processes.machine_tag() or '')]
    assert conn.calls[2][1] == 'vbd-plug'
    a.unplug()
    assert [c[1] for c in conn.calls[3:]] == ['vbd-unplug', 'vbd-destroy']
    a.unplug()      # once only
    assert len(conn.calls) == 5
    # A plug that fails destroys the VBD it made, and says so.
    conn = _Conn({'vbd-create': 'abcdef01-2345-4678-89ab-cdef01234567\n'},
                 fail='vbd-plug')
    with pytest.raises(exception.RemoteCommandError):
        lvm.Attachment(conn, DOM0, VDI).plug()
    assert [c[1] for c in conn.calls] == ['vbd-create', 'vbd-param-set',
                                          'vbd-plug', 'vbd-destroy']


class _BatchConn(_Conn):
    """A :class:`_Conn` that also runs batches (``run_many``), as the SSH
    layer does: in order, the first failure raised with ``outputs``, the
    outputs of the commands before it."""

    def __init__(self, *a, **kw):
        super(_BatchConn, self).__init__(*a, **kw)
        self.batches = []

    def run_many(self, commands, **kw):
        self.batches.append([list(c) for c in commands])
        outs = []
        for argv in commands:
            try:
                outs.append(self.check_run(argv).stdout)
            except exception.RemoteCommandError as e:
                e.outputs = outs
                raise
        return outs


def test_a_prepared_attachment_is_plugged_listed_and_flushed_at_once():
    """A cutover's dom0 VBD: created and tagged before the shutdown, then
    plugged in the round trip that lists the volume group and drops the
    leaf's page cache; the leaf's first open does not drop it again."""
    from any2kvm_os.sources.xenserver import plugin
    uuid = 'abcdef01-2345-4678-89ab-cdef01234567'
    leaf = '/dev/%s/VHD-a' % VG
    # (What LVM2 answers to lvs --readonly: the state unknown, 'X'.)
    conn = _BatchConn({'vbd-create': uuid + '\n',
                       'lvs': '  VHD-a|8388608|-wi-XX----\n'},
                      nodes=['VHD-a'])
    a = lvm.Attachment(conn, DOM0, VDI)
    a.create()
    assert [c[1] for c in conn.calls] == ['vbd-create', 'vbd-param-set']
    got, found, flushed = plugin._plug_prepared(conn, a, ARGV, leaf)
    assert found['VHD-a'].active and conn.listed == ['/dev/' + VG]
    assert got is a and flushed == ('VHD-a',)
    assert conn.batches == [[['xe', 'vbd-plug', 'uuid=' + uuid], ARGV,
                             ['blockdev', '--flushbufs', leaf]]]
    c = lvm.LvmContainer(conn, '/dev/' + VG, 'VHD-a', limits_mod.Limits(),
                         found, flushed=flushed)
    n = len(conn.calls)
    c.open_view('VHD-a')
    assert len(conn.calls) == n     # dropped in the batch
    c.open_view('VHD-a')
    assert conn.calls[n:] == [['blockdev', '--flushbufs', leaf]]
    # The plug refused: the VBD is destroyed (never plugged).
    for fail, after in (('vbd-plug', ['vbd-destroy']),
                        ('lvs', ['vbd-unplug', 'vbd-destroy'])):
        conn = _BatchConn({'vbd-create': uuid + '\n'}, fail=fail)
        a = lvm.Attachment(conn, DOM0, VDI)
        a.create()
        n = len(conn.calls)
        with pytest.raises(exception.RemoteCommandError):
            plugin._plug_prepared(conn, a, ARGV, leaf)
        words = [c[1] if c[0] == 'xe' else c[0] for c in conn.calls[n:]]
        assert words[words.index(fail) + 1:] == after, words
        assert a.vbd is None


def _vbd(uuid, attached, tag, vm=DOM0):
    return ('uuid ( RO)                  : %s\n'
            '             vm-uuid ( RO): %s\n'
            '    currently-attached ( RO): %s\n'
            '          other-config (MRW): %s\n\n\n'
            % (uuid, vm, attached,
               'any2kvm-reader: %s' % tag if tag else ''))


def test_stale_attachments_of_dead_processes_of_this_host_are_removed():
    me = socket.gethostname()
    dead = 2 ** 22 + 12345          # beyond pid_max's default
    while processes.pid_alive(dead):
        dead += 1
    listing = (_vbd('00000000-0000-4000-8000-000000000001', 'true',
                    '%s:%d' % (me, dead)) +
               _vbd('00000000-0000-4000-8000-000000000002', 'false',
                    '%s:%d' % (me, dead)) +
               # alive: another run reading now (its tag of an earlier
               # version, and of this one)
               _vbd('00000000-0000-4000-8000-000000000003', 'true',
                    '%s:%d' % (me, os.getpid())) +
               _vbd('00000000-0000-4000-8000-000000000007', 'true',
                    processes.tag()) +
               # another conversion host's: not ours to judge
               _vbd('00000000-0000-4000-8000-000000000004', 'true',
                    'elsewhere:%d' % dead) +
               # not ours at all (a backup tool's)
               _vbd('00000000-0000-4000-8000-000000000005', 'true', '') +
               # a VM's, even tagged (by hand): never
               _vbd('00000000-0000-4000-8000-000000000006', 'true',
                    '%s:%d' % (me, dead),
                    vm='aaaaaaaa-0000-4000-8000-000000000001'))
    conn = _Conn({'vbd-list': listing})
    kept = []
    assert lvm.release_stale(conn, DOM0, VDI, kept=kept) == 2
    # The other tagged ones, attached: named to whoever must act on them.
    assert [v.uuid[-1] for v in kept] == ['3', '7', '4']
    assert conn.calls[0] == ['xe', 'vbd-list', 'vdi-uuid=' + VDI,
                             'params=uuid,vm-uuid,currently-attached,'
                             'other-config']
    assert [c[1:] for c in conn.calls[1:]] == [
        ['vbd-unplug', 'uuid=00000000-0000-4000-8000-000000000001'],
        ['vbd-destroy', 'uuid=00000000-0000-4000-8000-000000000001'],
        ['vbd-destroy', 'uuid=00000000-0000-4000-8000-000000000002']]


class _Info(object):
    path = '/dev/%s/VHD-%s' % (VG, VDI)
    vdi_uuid = VDI
    control_domain = DOM0
    this_host = 'cccccccc-0000-4000-8000-000000000000'


def test_in_place_only_while_its_vm_runs_here():
    """Read as it is while a VM that has the VDI attached runs on this
    host (its tapdisk holds the chain with SM's refcounts); attached to
    dom0 when none has it (another dom0 VBD beside it is fine); refused
    when its VM runs on another host of the pool."""
    vm = 'aaaaaaaa-0000-4000-8000-000000000001'
    here = _Info.this_host
    runs = _vbd('00000000-0000-4000-8000-000000000001', 'true', '', vm=vm)
    # A VBD of the VM that is not attached (another VM, halted) is no user.
    halted = _vbd('00000000-0000-4000-8000-000000000002', 'false', '',
                  vm='bbbbbbbb-0000-4000-8000-000000000001')
    conn = _Conn({'vbd-list': halted + runs, 'vm-param-get': here + '\n'})
    assert lvm.read_in_place(conn, _Info())
    assert conn.calls == [
        ['xe', 'vbd-list', 'vdi-uuid=' + VDI,
         'params=uuid,vm-uuid,currently-attached,other-config'],
        ['xe', 'vm-param-get', 'uuid=' + vm, 'param-name=resident-on']]
    # One listing serves both questions when it is given.
    conn = _Conn({'vm-param-get': here + '\n'})
    found = lvm.vbds(_Conn({'vbd-list': runs}), VDI)
    assert lvm.read_in_place(conn, _Info(), found)
    assert [c[1] for c in conn.calls] == ['vm-param-get']
    assert not lvm.read_in_place(_Conn({'vbd-list': '\n'}), _Info())
    assert not lvm.read_in_place(_Conn({'vbd-list': halted}), _Info())
    assert not lvm.read_in_place(
        _Conn({'vbd-list': _vbd('00000000-0000-4000-8000-000000000003',
                                'true', '')}), _Info())
    conn = _Conn({'vbd-list': runs, 'vm-param-get':
                  'dddddddd-0000-4000-8000-000000000000\n'})
    with pytest.raises(exception.ChainError, match='attached to VM %s, '
                       'which runs on another host of the pool' % vm):
        lvm.read_in_place(conn, _Info())
    info = _Info()
    info.this_host = None
    with pytest.raises(exception.ChainError, match='this host is unknown'):
        lvm.read_in_place(_Conn({'vbd-list': runs}), info)


def test_an_unplug_refused_for_a_moment_is_asked_again(monkeypatch):
    monkeypatch.setattr(lvm, 'UNPLUG_WAIT', 0)
    conn = _Conn({'vbd-create': 'abcdef01-2345-4678-89ab-cdef01234567\n'})
    a = lvm.Attachment(conn, DOM0, VDI)
    a.plug()
    fails = [2]
    check_run = conn.check_run

    def flaky(argv, **kw):
        if argv[1] == 'vbd-unplug' and fails[0]:
            fails[0] -= 1
            conn.calls.append(list(argv))
            raise exception.RemoteCommandError(
                host='xs1', command='vbd-unplug',
                reason='DEVICE_DETACH_REJECTED')
        return check_run(argv, **kw)
    conn.check_run = flaky
    a.unplug()
    assert [c[1] for c in conn.calls[3:]] == ['vbd-unplug'] * 3 + [
        'vbd-destroy']


def test_a_tag_names_its_process_across_pid_reuse_and_reboots():
    """A reader's tag is its pid, this host's boot id and the process's
    start time: a pid given since to another process, or a boot since,
    means the reader is gone (its VBD is stale), where the pid alone
    would keep a left VBD for ever."""
    me = socket.gethostname()
    pid, boot, start = os.getpid(), processes.boot_id(), \
        processes.start_time(os.getpid())
    assert boot and start is not None
    # (a container may have no machine id: the tag then ends empty)
    machine = processes.machine_tag() or ''
    # The machine id itself is never shown: a hash made for this tool.
    if processes.machine_id():
        assert processes.machine_id() not in processes.tag()
        assert len(machine) == 32
    gone = processes.tag_gone
    assert processes.tag() == '%s:%d:%s:%d:%s' % (me, pid, boot, start,
                                                  machine)
    assert not gone(processes.tag())
    # The same pid, started at another time: another process now.
    assert gone('%s:%d:%s:%d:%s' % (me, pid, boot, start + 1, machine))
    # Another boot: every process of that one has ended.
    other_boot = '00000000-0000-4000-8000-000000000000'
    assert gone('%s:%d:%s:%d:%s' % (me, pid, other_boot, start, machine))
    # Another machine given this host name (a clone): not ours to judge,
    # whatever its boot or pid say.
    assert not gone('%s:%d:%s:%d:%s' % (me, 2 ** 22 + 7, other_boot, start,
                                        '0' * 32))
    # A tag of an earlier version holds the machine id itself.
    if processes.machine_id():
        assert gone('%s:%d:%s:%d:%s' % (me, pid, boot, start + 1,
                                        processes.machine_id()))
    # Another host's, or not a tag: never ours to judge.
    assert not gone('elsewhere:%d:%s:%d' % (pid, boot, start + 1))
    for odd in ('', me, '%s:' % me, '%s:x:y' % me, None):
        assert not processes.tag_gone(odd)
    # Another live process's start time is read; a gone one's is None.
    child = subprocess.Popen([sys.executable, '-c',
                              'import sys; sys.stdin.read()'],
                             stdin=subprocess.PIPE)
    try:
        assert processes.start_time(child.pid) is not None
    finally:
        child.communicate(b'')
    assert processes.start_time(child.pid) is None


# What LVM2 prints for ``lvs --readonly`` (lvm.lvs_command): --readonly
# turns activation off (tools/lvmcmdline.c), lv_info() never asks
# device-mapper, and lv_attr's state and device columns are 'X', unknown
# (lib/metadata/lv.c), for every LV, active or not (LVM2 2.02.130 on;
# XCP-ng ships 2.02.180).
REAL_READONLY_ANSWER = ('  MGT|4194304|-wi-XX----\n'
                        '  VHD-a|8388608|-ri-XX----\n'
                        '  VHD-b|4194304|-wi-XX----\n'
                        '  VHD-c|4194304|-wi-XX----\n').encode()


def test_the_active_lvs_are_those_with_a_device_node():
    """lvs --readonly cannot say which LVs are active: their device
    nodes in the volume group's directory do, as SM's lvutil reads it;
    no directory, no LV active (a clear refusal, not a read)."""
    volumes = lvm.parse_lvs(REAL_READONLY_ANSWER, ARGV)
    assert not [n for n, v in volumes.items() if v.active]
    conn = _Conn(nodes=['MGT', 'VHD-a', 'VHD-b'])
    lvm.mark_active(volumes, lvm.active_names(conn, '/dev/' + VG))
    c = lvm.LvmContainer(conn, '/dev/' + VG, 'VHD-a', limits_mod.Limits(),
                         volumes)
    assert c.member_names() == ['VHD-a', 'VHD-b']
    c.open_view('VHD-a')
    with pytest.raises(exception.ChainError, match='inactive'):
        c.open_view('VHD-c')
    volumes = lvm.parse_lvs(REAL_READONLY_ANSWER, ARGV)
    lvm.mark_active(volumes, lvm.active_names(_Conn(nodes=None),
                                              '/dev/' + VG))
    c = lvm.LvmContainer(conn, '/dev/' + VG, 'VHD-a', limits_mod.Limits(),
                         volumes)
    assert c.member_names() == []
    # Another listing error is not "none active": it is raised.
    other = _Conn(nodes=None)
    other.listdir = lambda *a, **kw: (_ for _ in ()).throw(
        exception.SshError(host='h', reason='cannot list: Permission '
                           'denied'))
    with pytest.raises(exception.SshError, match='Permission'):
        lvm.active_names(other, '/dev/' + VG)


def test_a_plug_not_waited_for_to_its_end_is_unplugged_first():
    """A vbd-plug whose answer did not come in time (a batch stopped by
    the SSH layer's timeout) may have plugged the VBD, or xapi may still
    be plugging it: it is unplugged before it is destroyed (xapi refuses
    to destroy a plugged VBD, which would keep the VM from starting)."""
    from any2kvm_os.sources.xenserver import plugin
    uuid = 'abcdef01-2345-4678-89ab-cdef01234567'
    leaf = '/dev/%s/VHD-a' % VG
    conn = _BatchConn({'vbd-create': uuid + '\n'})
    conn.stalls = 'vbd-plug'
    a = lvm.Attachment(conn, DOM0, VDI)
    a.create()
    n = len(conn.calls)
    with pytest.raises(exception.RemoteCommandError):
        plugin._plug_prepared(conn, a, ARGV, leaf)
    assert [c[1] for c in conn.calls[n:]] == [
        'vbd-plug', 'vbd-unplug', 'vbd-destroy']
    conn = _Conn({'vbd-create': uuid + '\n'})
    conn.stalls = 'vbd-plug'
    with pytest.raises(exception.RemoteCommandError):
        lvm.Attachment(conn, DOM0, VDI).plug()
    assert [c[1] for c in conn.calls] == [
        'vbd-create', 'vbd-param-set', 'vbd-plug', 'vbd-unplug',
        'vbd-destroy']
