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

"""Snapshots and power states of a VM on a XenServer host, through a runner.

``run(argv) -> stdout`` runs one ``xe`` command (see
:mod:`~any2kvm_os.sources.xenserver.discovery`).  The commands follow the
XenServer CLI reference: ``vm-snapshot`` prints the new snapshot's uuid;
a snapshot is a VM record with ``is-a-snapshot`` true whose VBDs point at
the snapshot's VDIs; ``snapshot-uninstall`` (or, on hosts without it,
``template-uninstall``: ``vm-uninstall`` never selects a snapshot, which
is a template) with ``force=true`` destroys the snapshot and the VDIs of
its VBDs that have ``owner`` in their other-config (all its disks);
``vm-shutdown`` asks the guest to shut down and, with ``force=true``,
stops it hard; ``power-state`` is one of ``halted``,
``paused``, ``running``, ``suspended``.
"""

import re
import time

from any2kvm_os import exception
from any2kvm_os import processes
from any2kvm_os.sources.xenserver import discovery
from any2kvm_os.sources.xenserver import errors
from any2kvm_os.sources.xenserver import xe

POWER_STATES = ('halted', 'paused', 'running', 'suspended')


def snapshot(run, vm_uuid, name, description=None):
    """Snapshot the VM (named ``name``, described ``description``); the
    snapshot's uuid.  xapi gives the snapshot's disk VBDs ``owner`` in
    their other-config (xapi_vm_clone.ml, CA-58405), so that
    ``snapshot-uninstall`` destroys the snapshot's VDIs with it, whatever
    the VM's own VBDs hold."""
    argv = xe.vm_snapshot(vm_uuid, name, description)
    return xe.parse_uuid(run(argv), argv)


def snapshot_disks(run, snapshot_uuid, host='host',
                   mount_base=discovery.DEFAULT_MOUNT_BASE):
    """The snapshot's disks (:class:`~discovery.DiskInfo`, in userdevice
    order, with the paths of their VHDs)."""
    return discovery.disks(run, snapshot_uuid, host, mount_base=mount_base)


def snapshot_vdis(run, snapshot_uuid, host='host'):
    """[(userdevice, vdi uuid)] of the snapshot's disks, in userdevice
    order (no SR lookups)."""
    return [(r['userdevice'], r['vdi-uuid'].lower())
            for r in discovery.disk_vbds(run, snapshot_uuid, host)]


def vdis_taken_of(run, run_many, snapshot_uuid, vdis, host='host'):
    """{VDI uuid: the VDI of the snapshot taken of it} for each of
    ``vdis``: the snapshot's disks (:func:`snapshot_vdis`), then what
    each is a snapshot of (``vdi-param-get param-name=snapshot-of``, all
    in one ``run_many``; xapi answers a ``vdi-list snapshot-of=`` filter
    from a scan of every VDI of the pool).  Each of ``vdis`` must have
    exactly one."""
    mine = [v for _u, v in snapshot_vdis(run, snapshot_uuid, host)]
    argvs = [xe.command('vdi-param-get', [('uuid', v),
                                          ('param-name', 'snapshot-of')])
             for v in mine]
    of = {}
    for v, answer, argv in zip(mine, run_many(argvs) if argvs else [],
                               argvs):
        of.setdefault(xe.parse_value(answer, argv).strip().lower(),
                      []).append(v)
    out = {}
    for vdi in vdis:
        both = of.get(vdi.lower(), [])
        if len(both) != 1:
            raise errors.XeOutputError(
                command='xe vbd-list vm-uuid=%s' % snapshot_uuid,
                reason='snapshot %s holds %s '
                'snapshot of VDI %s' % (snapshot_uuid, 'no' if not both
                                        else '%d VDIs each a' % len(both),
                                        vdi))
        out[vdi] = both[0]
    return out


#: The name-label of the snapshot a whole read of a running VM takes
#: (:mod:`.readsnap`): the tag names the process
#: (:func:`any2kvm_os.processes.tag`: conversion host, pid, boot id, start
#: time, machine).
READ_LABEL = 'any2kvm read (%s)'
_READ_LABEL = re.compile(r'any2kvm read \(([^()\s:]+(?::[^()\s:]*){4})\)\Z')


def left_read_snapshots(run, vm_uuid):
    """The uuids of VM ``vm_uuid``'s snapshots that a whole read by a
    process of this conversion host that is gone (killed) left: labelled
    :data:`READ_LABEL` with its tag (:func:`any2kvm_os.processes.
    tag_gone`).  Another host's, a live run's, and every other snapshot
    are not ours to judge."""
    fields = ('uuid', 'name-label')
    argv = xe.list_command('snapshot', [('snapshot-of', vm_uuid)], fields)
    out = []
    for r in xe.parse_records(run(argv), argv, fields, required=fields):
        found = _READ_LABEL.match(r['name-label'])
        if found and processes.tag_gone(found.group(1)):
            out.append(r['uuid'].lower())
    return out


def remove_snapshot(run, snapshot_uuid, uninstall=xe.snapshot_uninstall):
    """Destroy the snapshot and its own VDIs (``snapshot-uninstall
    force=true``).  When that fails, ``template-uninstall`` (a snapshot is
    a template; ``vm-uninstall`` would not select it) is tried, and if it
    fails too the first error is raised."""
    try:
        run(uninstall(snapshot_uuid))
    except exception.RemoteCommandError as first:
        if uninstall is xe.template_uninstall:
            raise
        try:
            run(xe.template_uninstall(snapshot_uuid))
        except exception.Any2KvmError:
            raise first


def power_state(run, vm_uuid):
    argv = xe.power_state(vm_uuid)
    state = xe.parse_value(run(argv), argv).strip()
    if state not in POWER_STATES:
        raise errors.XeOutputError(command=xe.describe(argv),
                                   reason='unknown power state %r'
                                   % state[:40])
    return state


def shutdown(run, vm_uuid, force=False):
    """Shut the VM down (clean, or hard with ``force``)."""
    run(xe.vm_shutdown(vm_uuid, force=force))


#: One operation, or one of several (``{hard_reboot,clean_shutdown}``).
_CLEAN_SHUTDOWN = r'(?:clean_shutdown\b|\{[^}\n]*\bclean_shutdown\b)'
#: How ``xe`` says that a clean shutdown is refused because one is
#: already under way: OTHER_OPERATION_IN_PROGRESS, printed as its
#: documentation then ``name: value`` lines (xapi-cli-server cli_util.ml
#: server_error), or, by a CLI that does not know the code, as ``Error
#: code:`` and ``Error parameters:``.  Its parameters
#: (ocaml/idl/datamodel_errors.ml, xapi_vm_lifecycle.ml
#: report_concurrent_operations_error):
#:
#: * xapi 25.27 and later: class ``VM``, object, operation_type
#:   ``clean_shutdown``, operation_ref;
#: * before (XCP-ng 8.2's xapi 1.249, 8.3's 24.x, XenServer 8 until mid
#:   2025): class ``VM.clean_shutdown``, object.
_CLEAN_SHUTDOWN_PENDING = (
    re.compile(r'Another operation involving the object is currently in '
               r'progress\s.*\boperation_type:\s*' + _CLEAN_SHUTDOWN, re.S),
    re.compile(r'Another operation involving the object is currently in '
               r'progress\s.*\bclass:\s*VM\.' + _CLEAN_SHUTDOWN, re.S),
    re.compile(r'\bOTHER_OPERATION_IN_PROGRESS\b.*Error parameters:\s*'
               r'(?:VM,[^,]*,\s*|VM\.)' + _CLEAN_SHUTDOWN, re.S))


def clean_shutdown_pending(error):
    """Whether ``error`` (of ``xe vm-shutdown``) is xapi's refusal of a
    clean shutdown beside one already under way: VM.clean_shutdown is
    not allowed concurrently with itself (xapi_vm_lifecycle.ml
    is_allowed_concurrently); the pending one goes on waiting for the
    guest (up to domain_shutdown_total_timeout, 1200 s by default), even
    when the ``xe`` that asked for it is gone."""
    text = str(error)
    return any(p.search(text) for p in _CLEAN_SHUTDOWN_PENDING)


#: The command that makes a VM run again from each power state: xapi
#: starts only a halted VM, unpauses only a paused one and resumes only
#: a suspended one (VM_BAD_POWER_STATE otherwise; xapi_vm_lifecycle.ml
#: allowed_power_states).
RESTARTS = {'halted': xe.vm_start, 'paused': xe.vm_unpause,
            'suspended': xe.vm_resume}


def start(run, vm_uuid, state='halted', host='host'):
    """Make the VM run again from power state ``state``: ``vm-start``
    (halted), ``vm-unpause`` (paused) or ``vm-resume`` (suspended); any
    other state is refused in one line."""
    command = RESTARTS.get(state)
    if command is None:
        raise errors.XenServerError(
            reason='%s: VM %s is %s, not halted, paused or suspended: not '
            'started' % (host, vm_uuid, str(state)[:40] or 'in no power '
                         'state'))
    run(command(vm_uuid))


def wait_for_power_state(run, vm_uuid, wanted, timeout=600, interval=5,
                         host='host', sleep=time.sleep,
                         clock=time.monotonic):
    """Poll until the VM's power state is ``wanted``; returns it, or
    raises :class:`~errors.Timeout` after ``timeout`` seconds."""
    if wanted not in POWER_STATES:
        raise ValueError('power state %r' % (wanted,))
    deadline = clock() + timeout
    while True:
        state = power_state(run, vm_uuid)
        if state == wanted:
            return state
        if clock() >= deadline:
            raise errors.Timeout(host=host, vm=vm_uuid, state=state,
                                 seconds=timeout, wanted=wanted)
        sleep(interval)
