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

"""Look inside converted disks, and fix what would stop them booting.

libguestfs does the looking, in :mod:`any2kvm_os.guest.probe`: a separate
program run with ``[any2kvm] guestfs_python`` (Debian's binding is built
for ``/usr/bin/python3``, which the project's virtualenv is not), with the
appliance backend and settings of ``guestfs_backend`` and
``guestfs_backend_settings`` (``force_tcg``: where KVM cannot boot the
appliance, it hangs) and bounded by ``inspect_timeout``.

:func:`inspect_files` reads raw disks (read-only); with ``fix=True`` the
probe works on qcow2 overlays of them, and only when every change
succeeded are the overlays committed into the disks, all of them or none
(:func:`commit_all`, with an undo journal): a failed fix leaves them as
they were.  :func:`summary` turns the probe's output into the
guest report and the image properties
(:func:`any2kvm_os.properties.guest_properties`).
"""

import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile

from any2kvm_os import exception
from any2kvm_os.guest import probe
from any2kvm_os.guest import process
from any2kvm_os.guest import v2v
from any2kvm_os import lazyopts
from any2kvm_os import properties
from any2kvm_os import redact

LOG = logging.getLogger(__name__)

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'probe.py')

#: The environment variable that turns default inspection off (``0``).
ENV = 'ANY2KVM_INSPECT'

#: The options' defaults, written once: ``OPTIONS`` and :class:`Settings`
#: take them from here.
_DEFAULTS = dict(guestfs_python='/usr/bin/python3', guestfs_backend='direct',
                 guestfs_backend_settings='force_tcg', inspect_timeout=900,
                 **v2v.DEFAULTS)


def _options():
    from oslo_config import cfg
    d = _DEFAULTS
    return [
        cfg.StrOpt('guestfs_python', default=d['guestfs_python'],
                   help='Python interpreter that has the libguestfs binding '
                        '(Debian: python3-guestfs, for /usr/bin/python3); '
                        'it runs the guest inspection program.'),
        cfg.StrOpt('guestfs_backend', default=d['guestfs_backend'],
                   help='libguestfs backend of the inspection appliance '
                        '(LIBGUESTFS_BACKEND).'),
        cfg.StrOpt('guestfs_backend_settings',
                   default=d['guestfs_backend_settings'],
                   help='libguestfs backend settings, comma-separated '
                        '(LIBGUESTFS_BACKEND_SETTINGS); force_tcg where KVM '
                        'cannot run the appliance. Empty: libguestfs '
                        'chooses.'),
        cfg.IntOpt('inspect_timeout', default=d['inspect_timeout'], min=10,
                   help='Seconds one guest inspection (one appliance '
                        'launch) may take.'),
    ] + v2v.OPTIONS


#: ``OPTIONS`` (oslo.config options), made on first use: a command that
#: reads no configuration does not import oslo.config.
__getattr__ = lazyopts.module_getattr(globals(), _options)

INSTALL_HINT = ('install libguestfs-tools and python3-guestfs (bindep '
                'profile "inspect"), or give --no-inspect')


class Settings(object):
    """How the probe is run."""

    def __init__(self, python=_DEFAULTS['guestfs_python'],
                 backend=_DEFAULTS['guestfs_backend'],
                 backend_settings=_DEFAULTS['guestfs_backend_settings'],
                 timeout=_DEFAULTS['inspect_timeout'],
                 virt_v2v=_DEFAULTS['virt_v2v'],
                 v2v_timeout=_DEFAULTS['virt_v2v_timeout']):
        self.python = python
        self.backend = backend
        self.backend_settings = backend_settings
        self.timeout = timeout
        self.virt_v2v = virt_v2v
        self.v2v_timeout = v2v_timeout

    @classmethod
    def from_conf(cls, conf, group='any2kvm'):
        if conf is None:
            return cls()
        g = conf[group]
        return cls(g.guestfs_python, g.guestfs_backend,
                   g.guestfs_backend_settings, g.inspect_timeout,
                   g.virt_v2v, g.virt_v2v_timeout)


def enabled(flag):
    """(inspect?, explicitly asked?) from ``--inspect``/``--no-inspect``
    (True, False or None) and ``ANY2KVM_INSPECT``."""
    if flag is not None:
        return bool(flag), bool(flag)
    return os.environ.get(ENV, '1').strip().lower() not in (
        '0', 'no', 'false', 'off'), False


def slots_of(facts, indexes):
    """The Xen slots (``xen_slots`` fact: each disk's VBD
    ``userdevice``) of the VM's disks ``indexes``, for the probe's
    ``--xen-slots``; None when the source does not know them (then the
    guest's /dev/xvdX names are taken as the disks in order)."""
    slots = (facts or {}).get('xen_slots')
    if not isinstance(slots, (list, tuple)):
        return None
    try:
        return [int(slots[i]) for i in indexes]
    except (IndexError, TypeError, ValueError):
        return None


def command(settings, disks, fmt='raw', fix=False, slots=None):
    cmd = [settings.python, PROBE]
    if settings.backend:
        cmd += ['--backend', settings.backend]
    for setting in (settings.backend_settings or '').split(','):
        if setting.strip():
            cmd += ['--backend-setting', setting.strip()]
    if fmt:
        cmd += ['--format', fmt]
    cmd += ['inspect'] + (['--fix'] if fix else [])
    if slots is not None:
        cmd += ['--xen-slots', ','.join(str(int(s)) for s in slots)]
    cmd += [str(d) for d in disks]
    return cmd


def run_probe(settings, disks, fmt='raw', fix=False, name=None,
              slots=None):
    """The probe's JSON output for ``disks``; InspectionError on any
    failure (one line).  ``slots``: see :func:`slots_of`."""
    name = str(name or disks[0])
    if not shutil.which(settings.python) and not os.path.exists(
            settings.python):
        raise exception.InspectionError(
            path=name, reason='%s not found ([any2kvm] guestfs_python); %s'
            % (settings.python, INSTALL_HINT))
    cmd = command(settings, disks, fmt, fix, slots)
    LOG.debug('Running %s', ' '.join(cmd))
    try:
        proc, out, err = process.communicate(cmd, settings.timeout,
                                             stderr=subprocess.PIPE)
    except subprocess.TimeoutExpired:
        raise exception.InspectionError(
            path=name, reason='no answer within %d s ([any2kvm] '
            'inspect_timeout)' % settings.timeout)
    try:
        result = json.loads(out.decode('utf-8', 'replace') or 'null')
    except ValueError:
        result = None
    if not isinstance(result, dict):
        tail = ' '.join(err.decode('utf-8', 'replace').split())[-300:]
        raise exception.InspectionError(
            path=name, reason='the probe failed (exit %d): %s' % (
                proc.returncode, tail or 'no output'))
    if 'error' in result:
        reason = result['error']
        if result.get('missing'):
            reason += '; ' + INSTALL_HINT
        elif 'appliance' in reason and 'force_tcg' not in (
                settings.backend_settings or ''):
            reason += ' (where KVM cannot run it, set [any2kvm] ' \
                'guestfs_backend_settings = force_tcg)'
        if result.get('tried'):
            reason += '; it had changed: %s' % ', '.join(result['tried'])
        cls = exception.GuestFixError if fix else \
            exception.InspectionError
        raise cls(path=name, reason=reason)
    return result


def _qemu_img(*args):
    r = subprocess.run(('qemu-img',) + args, capture_output=True,
                       text=True, timeout=3600, env=redact.child_environ())
    if r.returncode != 0:
        raise exception.GuestFixError(
            path=args[-1], reason='qemu-img %s: %s' % (
                args[0], ' '.join(r.stderr.split())))


def inspect_files(paths, settings=None, fix=False, scratch_dir=None,
                  slots=None, before_commit=None):
    """The probe's output for the raw disks ``paths`` (one VM's, in
    device order; ``slots``: their Xen slots, see :func:`slots_of`).
    With ``fix``, the fixes are made in qcow2 overlays and committed
    into the disks only if all of them succeeded, all of them or none
    (:func:`commit_all`); ``before_commit``, when given, is called
    first, and raises to leave the disks as they were (a migration's
    lease lost meanwhile)."""
    settings = settings or Settings()
    if not fix:
        return run_probe(settings, list(paths), slots=slots)
    tmp = tempfile.mkdtemp(prefix='any2kvm-fix-', dir=scratch_dir)
    keep = False
    try:
        overlays = []
        for index, path in enumerate(paths):
            overlay = os.path.join(tmp, 'disk%d.qcow2' % index)
            _qemu_img('create', '-q', '-f', 'qcow2', '-b',
                      os.path.abspath(path), '-F', 'raw', overlay)
            overlays.append(overlay)
        result = fix_disks(settings, overlays, fmt='qcow2', name=paths[0],
                           scratch_dir=scratch_dir, slots=slots)
        if any(f.get('files') or f.get('registry')
               for f in result.get('fixed') or ()) or \
                (result.get('v2v') or {}).get('ran'):
            if before_commit is not None:
                before_commit()
            try:
                commit_all(paths, overlays, tmp)
            except UndoFailed:
                keep = True
                raise
        return result
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


# -- committing the overlays: all of them or none -----------------------------

#: The undo journal's manifest, in the fix's scratch directory.
UNDO_MANIFEST = 'undo.json'
_CHUNK = 4 << 20


class UndoFailed(exception.GuestFixError):
    """A commit failed and so did putting the disks back: the undo
    journal is kept."""


def changed_ranges(overlay):
    """[(offset, length)] of what the qcow2 ``overlay`` holds itself (its
    clusters, data or zeros, over its backing disk)."""
    r = subprocess.run(['qemu-img', 'map', '--output=json', '-f', 'qcow2',
                        overlay], capture_output=True, text=True,
                       timeout=3600, env=redact.child_environ())
    if r.returncode != 0:
        raise exception.GuestFixError(path=overlay, reason='qemu-img map: '
                                      '%s' % ' '.join(r.stderr.split()))
    return [(int(e['start']), int(e['length'])) for e in json.loads(
        r.stdout) if e.get('depth') == 0]


def _copy_ranges(src, dst, ranges, to_disk):
    """Copy ``ranges`` of the disk ``src`` into the undo file ``dst``
    (packed, in order), or back (``to_disk``); then fsync."""
    with open(src, 'rb' if not to_disk else 'r+b') as disk, \
            open(dst, 'wb' if not to_disk else 'rb') as undo:
        pos = 0
        for offset, length in ranges:
            done = 0
            while done < length:
                n = min(_CHUNK, length - done)
                if to_disk:
                    data = os.pread(undo.fileno(), n, pos + done)
                    if len(data) != n:
                        raise OSError('%s: short undo file' % dst)
                    os.pwrite(disk.fileno(), data, offset + done)
                else:
                    data = os.pread(disk.fileno(), n, offset + done)
                    # Past the end of the disk reads short: zeros.  Zeros
                    # are left as a hole: a fix that trims the free space
                    # (virt-v2v does) must not cost a copy of it.
                    if data.count(0) != len(data):
                        os.pwrite(undo.fileno(), data, pos + done)
                done += n
            pos += length
        if not to_disk:
            os.ftruncate(undo.fileno(), pos)
        os.fsync((disk if to_disk else undo).fileno())


def commit_all(paths, overlays, tmp):
    """Commit each qcow2 overlay into its raw disk, all or none.

    Every overlay is checked (``qemu-img check``) and mapped before the
    first commit; the bytes of the disks the commits will overwrite are
    saved (fsync'd) into an undo journal in ``tmp`` (``undo.json`` names
    disk, ranges and undo file).  When a commit fails, or the process is
    interrupted (an exception, KeyboardInterrupt, SystemExit), every disk
    whose commit had started is put back from the journal, and the error
    says so.  What is left: a SIGKILL or a power loss during the commits
    leaves the disks partly fixed and the journal in ``tmp`` to restore
    them by hand (:func:`restore_journal`)."""
    plans = []
    for path, overlay in zip(paths, overlays):
        _qemu_img('check', '-q', '-f', 'qcow2', overlay)
        plans.append({'disk': os.path.abspath(path),
                      'ranges': changed_ranges(overlay),
                      'undo': os.path.join(tmp, 'undo-%d' % len(plans)),
                      'overlay': overlay, 'started': False})
    for plan in plans:
        _copy_ranges(plan['disk'], plan['undo'], plan['ranges'], False)
    manifest = os.path.join(tmp, UNDO_MANIFEST)
    _write_manifest(manifest, plans)
    try:
        for plan in plans:
            plan['started'] = True
            _write_manifest(manifest, plans)
            _qemu_img('commit', '-q', '-f', 'qcow2', plan['overlay'])
    except BaseException as e:
        started = [p for p in plans if p['started']]
        try:
            restore_journal(tmp)
        except Exception as e2:
            raise UndoFailed(path=paths[0], reason='%s; putting the %d '
                             'disk(s) back failed too: %s; the undo journal '
                             'is kept in %s' % (_reason(e), len(started), e2,
                                                tmp))
        LOG.warning('the fix was not committed: %s; %d disk(s) put back '
                    'as they were', _reason(e), len(started))
        if not isinstance(e, Exception):
            raise
        raise exception.GuestFixError(
            path=paths[0], reason='%s; the %d disk(s) it had started were '
            'put back as they were, none is fixed' % (_reason(e),
                                                      len(started)))


def _reason(e):
    if isinstance(e, exception.GuestFixError) and 'reason' in e.kwargs:
        return '%s: %s' % (os.path.basename(str(e.kwargs.get('path'))),
                           e.kwargs['reason'])
    if isinstance(e, exception.Any2KvmError):
        return str(e)
    return ' '.join(str(e).split()) or type(e).__name__


def _write_manifest(path, plans):
    data = json.dumps([{k: p[k] for k in ('disk', 'ranges', 'undo',
                                          'started')} for p in plans])
    with open(path + '.tmp', 'w') as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + '.tmp', path)


def restore_journal(tmp):
    """Put back, from the undo journal in ``tmp``, every disk whose
    commit had started."""
    with open(os.path.join(tmp, UNDO_MANIFEST)) as f:
        plans = json.load(f)
    for plan in plans:
        if plan['started']:
            _copy_ranges(plan['disk'], plan['undo'],
                         [tuple(r) for r in plan['ranges']], True)


def fix_disks(settings, disks, fmt, name, scratch_dir=None, slots=None):
    """The probe's fixes on ``disks`` (the copy being fixed: overlays or
    attached volumes), then, where the guest's boot lacks the virtio
    storage drivers, the hand-off to virt-v2v-in-place
    (:mod:`any2kvm_os.guest.v2v`) and a second inspection: the result
    says what the guest holds after both.  ``result['v2v']`` records the
    hand-off: {'needed', 'ran', 'seconds', 'command'} or {'needed',
    'skipped': the one line saying why}.  virt-v2v's temporary files go
    under ``scratch_dir`` (else the system's temporary directory)."""
    result = run_probe(settings, disks, fmt=fmt, fix=True, name=name,
                       slots=slots)
    guest = choose(result)
    kind = v2v.needed(guest)
    if kind is None:
        return result
    bus = properties.disk_bus(guest)[0]
    lacks = v2v.missing(kind)
    if not getattr(settings, 'virt_v2v', True) or lacks:
        result['v2v'] = {'needed': kind, 'skipped': v2v.skipped_message(
            kind, lacks, bus, disabled=not getattr(settings, 'virt_v2v',
                                                   True))}
        return result
    done = v2v.run(settings, disks, fmt, name, root=guest.get('root'),
                   scratch_dir=scratch_dir)
    again = run_probe(settings, disks, fmt=fmt, name=name, slots=slots)
    fixed = result.get('fixed') or []
    after = choose(again)
    if guest.get('type') == 'linux' and after is not None and \
            _names_of(properties.disk_bus(after)[0]) != _names_of(bus):
        # The hand-off ended on the other family of names (virtio_blk
        # added to a kernel without virtio_scsi: vdX, where the fix
        # wrote sdX in device.map, the LVM filter, the names without a
        # UUID, RHEL 5's scsi_hostadapter): fixed again for the bus set.
        again = run_probe(settings, disks, fmt=fmt, fix=True, name=name,
                          slots=slots)
        fixed = fixed + (again.get('fixed') or [])
        done['fixed_again_for'] = properties.disk_bus(after)[0]
    again['fixed'] = fixed
    done['needed'] = kind
    done['bus_before'] = bus
    again['v2v'] = done
    return again


def _names_of(bus):
    """The family of disk names a Linux guest on ``bus`` sees: vdX on
    virtio-blk, sdX on the others (what the probe's ``fix_bus`` writes)."""
    return 'virtio' if bus == 'virtio' else 'scsi'


def choose(result):
    """The guest of a VM: the one whose root is on the lowest disk."""
    guests = [g for g in result.get('guests') or () if g.get('type')]
    if not guests:
        return None
    return sorted(guests, key=lambda g: (g.get('disk') is None,
                                         g.get('disk') or 0))[0]


def warnings(guest, result=None):
    out = []
    if guest is None:
        return ['no operating system found on the disk(s)']
    linux = guest.get('linux') or {}
    kernel = properties.boot_kernel(guest)
    for entry in linux.get('disk_names') or ():
        unknown = entry.get('unknown') or []
        if unknown:
            out.append('%s names %s, which is on none of the VM\'s disks '
                       '(a disk left out, or a CD drive): --fix leaves it '
                       'as it is; correct it by hand, or mark the entry '
                       'nofail' % (entry['path'], ', '.join(unknown)))
        if entry.get('unit_named'):
            out.append(unit_named_warning(entry))
            continue
        bad = [n for n in entry['names']
               if (n.startswith('/dev/xvd') or n.startswith('/dev/hd'))
               and n not in unknown]
        if bad:
            out.append('%s names %s, which KVM will not have (convert '
                       '--fix rewrites them)' % (entry['path'],
                                                 ', '.join(bad)))
        if entry.get('xen_consoles'):
            out.append('%s has the Xen console %s (convert --fix drops it)'
                       % (entry['path'], ', '.join(entry['xen_consoles'])))
    for uuid, devices in sorted((linux.get('shared_uuids') or {}).items()):
        out.append('filesystems %s share the UUID %s (one disk cloned from '
                   'another?): UUID=%s may mount either of them on KVM, '
                   'so --fix names them by their bus instead; give the copy '
                   'a new UUID (tune2fs -U random, xfs_admin -U generate) '
                   'and name it so in the guest' % (
                       ' and '.join(devices[:4]), uuid, uuid))
    out.extend(network_warnings(linux.get('network')))
    out.extend(boot_code_warnings(guest))
    fallback = uefi_fallback_warning(guest)
    if fallback:
        out.append(fallback)
    out.extend(xen_file_warnings(linux.get('xen_files')))
    tools_left = xe_tools_warning(guest)
    if tools_left:
        out.append(tools_left)
    if linux.get('packages_unread'):
        out.append('the guest\'s package database could not be read here '
                   '(%s): hypervisor tools, cloud-init and '
                   'qemu-guest-agent were looked for by their files only'
                   % linux['packages_unread'])
    devices = lvm_devices_warning(linux)
    if devices:
        out.append(devices)
    out.extend(lvm_filter_warnings(guest))
    out.extend(cloud_init_warnings(linux.get('cloud_init')))
    out.extend(default_warnings(linux, kernel))
    if kernel is not None:
        if kernel.get('xen_pv_only'):
            out.append('kernel %s is Xen-PV-only: install a standard '
                       'kernel before migrating' % kernel['version'])
        if kernel.get('initramfs_error'):
            out.append('initramfs of %s not read: %s' % (
                kernel['version'], kernel['initramfs_error']))
    elif guest.get('type') == 'linux':
        out.append('no kernel found under /lib/modules')
    if guest.get('type') == 'windows':
        out.extend(windows_warnings(guest))
    arch = guest.get('arch')
    if properties.ARCHITECTURES.get(arch) == 'i686':
        out.append('32-bit guest (%s): nothing converts it to 64-bit; give '
                   'it a flavor of at most 4 GiB of RAM (more is not '
                   'usable without PAE) and, for Windows, the 32-bit (x86) '
                   'virtio-win drivers' % arch)
    handoff = (result or {}).get('v2v') or {}
    if handoff.get('skipped') and handoff.get('needed') == 'initramfs':
        # (Windows: the warning of windows_warnings says it; the JSON
        # output's v2v says why the hand-off did not run.)
        out.append(handoff['skipped'])
    elif not handoff and v2v.needed(guest) == 'initramfs':
        out.append('the initramfs of kernel %s lacks virtio_scsi and '
                   'virtio_blk (modules on the disk): hw_disk_bus=%s; '
                   '--fix rebuilds it with %s (virt-v2v and nbdkit)' % (
                       kernel['version'], properties.disk_bus(guest)[0],
                       v2v.PROGRAM))
    if guest.get('type') == 'linux' and kernel is not None and \
            not properties.bootable_bus(guest):
        out.append('kernel %s: no disk bus can boot it as it is (its '
                   'initramfs has neither virtio_blk nor sd_mod with '
                   'virtio_scsi, ahci or ata_piix): hw_disk_bus=ide is a '
                   'guess; add the virtio drivers to the initramfs before '
                   'migrating, or let --fix rebuild it' % kernel['version'])
    others = [g for g in (result or {}).get('guests') or ()
              if g is not guest and g.get('type')]
    if others:
        out.append('%d other operating system(s) found; the one on disk '
                   '%s (root %s) was used' % (len(others), guest.get('disk'),
                                              guest.get('root')))
    return out


def _uefi_fallback(guest):
    """The probe's ``uefi_fallback`` facts of a Linux or Windows guest."""
    return ((guest.get('linux') or {}).get('uefi_fallback') or
            (guest.get('windows') or {}).get('uefi_fallback'))


def uefi_fallback_warning(guest):
    """The warning of a UEFI guest whose EFI system partition has no
    fallback bootloader (the probe's ``uefi_fallback``), with what --fix
    copies there or, when there is nothing to copy, the step to take in
    the guest; None when there is nothing to say."""
    fallback = _uefi_fallback(guest)
    if guest.get('firmware') != 'uefi' or not fallback or \
            fallback.get('present'):
        return None
    if guest.get('type') == 'windows':
        path = '\\EFI\\Boot\\bootx64.efi'
        step = ('--fix copies Windows\' boot manager %s there' % (
            (fallback['source'] + '/' + fallback['files'][0]).replace(
                '/', '\\'))
                if fallback.get('source') and fallback.get('files') else
                'there is no \\EFI\\Microsoft\\Boot\\bootmgfw.efi to '
                'copy either: run "bcdboot C:\\Windows /f UEFI" in the guest '
                'before the move')
        where = ' (%s)' % fallback['partition'] \
            if fallback.get('partition') else ''
    else:
        path = '\\EFI\\BOOT\\BOOTX64.EFI'
        step = ('--fix copies %s there (%s)' % (
            fallback['source'], ', '.join(fallback.get('files') or ()))
            if fallback.get('source') else
            'install one in the guest (grub-install --removable)')
        where = ''
    full = probe.no_room(fallback, fallback.get('partition') or
                         probe.ESP_MOUNT)
    if full and fallback.get('source'):
        step = '%s, but %s (--fix fails until then)' % (
            step.replace('--fix copies', '--fix would copy', 1), full)
    return ('no UEFI fallback bootloader (%s) on the EFI system '
            'partition%s: the boot entry was in the VM\'s NVRAM under Xen, '
            'which does not move, and a new NVRAM finds nothing to boot; %s'
            % (path, where, step))


#: The buses' disk names, as a warning says them.
BUS_NAMES = {'virtio': '/dev/vdX', 'scsi': '/dev/sdX'}
#: How the initramfs images are rebuilt, by the guest's package format.
REBUILD_INITRAMFS = {'deb': 'update-initramfs -u -k all',
                     'rpm': 'dracut -f --regenerate-all'}


def _patterns(entry):
    return ', '.join('"%s"' % p for p in entry['patterns']) + (
        ', ...' if entry.get('more') else '')


def lvm_filter_warnings(guest, after_fix=False):
    """LVM filters (the probe's ``lvm_filters``) that accept Xen's disks
    and reject the same disks' names on KVM: in /etc/lvm (--fix adds the
    KVM names), and in the initramfs's copy of lvm.conf (rebuilt by
    hand).  ``after_fix``: only those --fix leaves: the initramfs's, and
    those of a file in which a filter still rejects KVM's names after
    it (``left``)."""
    facts = (guest.get('linux') or {}).get('lvm_filters') or {}
    names = BUS_NAMES.get(facts.get('bus'), '/dev/sdX')
    left = {e['path'] for e in facts.get('files') or () if e.get('left')}
    out = []
    for entry in facts.get('files') or ():
        if entry.get('fixed') and not entry.get('left'):
            continue
        if after_fix and entry['path'] not in left:
            continue
        if entry.get('changes') and not entry.get('fixed'):
            how = '--fix adds %s after the Xen pattern(s)' % ', '.join(
                entry['changes'])
        else:
            how = '--fix cannot name them for KVM: add %s by hand' % names
        out.append(
            '%s %s accepts Xen\'s disks only (%s): on KVM the disks are %s, '
            'which it rejects, so LVM finds none of its physical volumes '
            'and their volume groups stay inactive (a root on LVM: no '
            'boot); %s' % (entry['path'], entry['setting'],
                           _patterns(entry), names, how))
    how = REBUILD_INITRAMFS.get(guest.get('package_format'), '%s, or %s' % (
        REBUILD_INITRAMFS['deb'], REBUILD_INITRAMFS['rpm']))
    for entry in facts.get('initramfs') or ():
        out.append(
            'the initramfs %s (kernel %s) carries a copy of lvm.conf whose '
            '%s accepts Xen\'s disks only (%s): it activates the root\'s '
            'volume group before /etc is read, and on KVM finds none; fixing '
            '/etc/lvm/lvm.conf is not enough: rebuild the initramfs from the '
            'fixed lvm.conf (%s) before the move, in the guest on Xen (the '
            'fixed filter accepts both names); the virt-v2v hand-off of '
            '--fix rebuilds it only when it lacks virtio' % (
                entry['path'], entry.get('kernel'), entry['setting'],
                _patterns(entry), how))
    return out


#: How cloud-init is kept from changing the guest's identity by hand.
CLOUD_INIT_BY_HAND = ('put "ssh_deletekeys: false" and "preserve_hostname: '
                      'true" in %s, or turn cloud-init off (touch %s)' % (
                          probe.CLOUD_KEEP, probe.CLOUD_DISABLED))


def _set_where(ci, key):
    where = (ci.get('set_in') or {}).get(key)
    return ' in %s' % where if where else ' by default'


def cloud_init_warnings(ci):
    """cloud-init installed and enabled in a Linux guest (the probe's
    ``cloud_init``), when at the first boot in OpenStack it would change
    the guest's SSH host keys or its hostname."""
    if probe.keeps_identity(ci):
        return []
    does = []
    if ci.get('ssh_deletekeys') is not False:
        does.append('delete and regenerate the SSH host keys (ssh_deletekeys '
                    'true%s: every client then sees "REMOTE HOST '
                    'IDENTIFICATION HAS CHANGED")' % _set_where(
                        ci, 'ssh_deletekeys'))
    if ci.get('preserve_hostname') is not True:
        does.append('set the hostname to the Nova server\'s name '
                    '(preserve_hostname false%s)' % _set_where(
                        ci, 'preserve_hostname'))
    last = []
    if ci.get('instance_id'):
        last.append('last instance %s' % ci['instance_id'])
    if ci.get('datasource'):
        last.append('on %s' % ci['datasource'])
    if ci.get('datasource_list') is not None:
        last.append('datasource_list %s%s' % (
            ', '.join(ci['datasource_list']) or '(empty)',
            _set_where(ci, 'datasource_list')))
    if ci.get('keep_overridden_by'):
        how = ('--fix cannot: %s, read after its drop-in, sets them again; '
               'change it, or turn cloud-init off (touch %s)' % (
                   ci['keep_overridden_by'], probe.CLOUD_DISABLED))
    else:
        how = ('--fix writes %s (ssh_deletekeys: false, preserve_hostname: '
               'true; cloud-init does the rest, the network of the new NIC '
               'too); by hand: %s' % (probe.CLOUD_KEEP, CLOUD_INIT_BY_HAND))
    return ['cloud-init is installed and enabled%s: at the first boot in '
            'OpenStack it sees a new instance id and runs its per-instance '
            'modules, which %s; %s' % (
                ' (%s)' % ', '.join(last) if last else '',
                ' and '.join(does), how)]


def boot_code_warnings(guest):
    """A BIOS guest whose root's disk has no boot code in its master
    boot record (SeaBIOS finds nothing to run on it)."""
    if guest.get('firmware') != 'bios':
        return []
    tables = [t for t in guest.get('partition_tables') or ()
              if t.get('boot_code') is False]
    if not tables:
        return []
    how = ('install the bootloader in the guest before the move '
           '(grub-install /dev/xvda; grub2-install on Red Hat)'
           if guest.get('type') == 'linux' else
           'write one (bootrec /fixmbr from the recovery environment)'
           if guest.get('type') == 'windows' else 'install a bootloader')
    return ['the disk of the root (%s) has no boot code in its master '
            'boot record: a BIOS will not boot it (a Xen PV guest was '
            'started by pygrub, which needs none); %s' % (
                guest.get('root'), how)]


def default_warnings(linux, kernel):
    """When the bootloader boots another kernel by default than the one
    the bus was chosen for (:func:`properties.boot_kernel`: a Xen-only
    default, or one whose image is gone)."""
    default = linux.get('boot_default') or {}
    if kernel is None or not default.get('image'):
        return []
    if default.get('version') is None:
        if default.get('exists', True):
            return []       # there, but its version is not in its name
        return ['%s boots %s by default, which is not there: the guest '
                'will not boot it (the bus was chosen for kernel %s); make '
                'an installed kernel the default' % (
                    default.get('file'), default['image'],
                    kernel.get('version'))]
    if default['version'] == kernel.get('version'):
        return []
    fix = probe.default_fix({'linux': linux})
    return ['%s boots kernel %s by default, which %s: on KVM it must boot '
            'kernel %s (the bus was chosen for it); %s' % (
                default.get('file'), default['version'],
                'needs Xen' if _xen_only(linux, default['version']) else
                'has no kernel image', kernel.get('version'),
                'convert --fix makes it the default' if fix else
                'make it the default (grub2-set-default, or GRUB_DEFAULT '
                'and update-grub)')]


def _xen_only(linux, version):
    return any(k.get('version') == version and k.get('xen_pv_only')
               for k in linux.get('kernels') or ())


#: What each kind of file of the probe's ``xen_files`` does wrong on
#: KVM (``%s``: the lines found, in parentheses), and what --fix does
#: about what it changes and about what it leaves: (what, fixed, left).
XEN_FILE_WARNINGS = {
    'modprobe': (
        'aliases Xen\'s paravirtual drivers%s: on KVM they find no device, '
        'and RHEL 5\'s mkinitrd builds the next kernel\'s initrd with the '
        'scsi_hostadapter drivers alone, which then does not boot',
        '--fix makes them: %s',
        '--fix leaves these, having no KVM driver for them: remove them '
        'by hand'),
    'sysconfig_kernel': (
        'has Xen\'s paravirtual drivers in the modules SUSE\'s mkinitrd '
        'puts in the initrd%s', '--fix makes it: %s', None),
    'inittab': (
        'runs a getty on the Xen console%s, which KVM does not have: init '
        'respawns it for ever', '--fix makes it: %s', None),
    'securetty': (
        'lets root log in on the Xen console but not on the serial '
        'console%s', '--fix adds %s', None),
    'upstart': (
        'runs a getty on the Xen console%s, which KVM does not have', None,
        '--fix leaves it (upstart gives up respawning it): point it at '
        'ttyS0 or remove the job'),
}


def _change_text(change, added='%s'):
    """A change of the fix's record ({'from', 'to'}): ``from -> to``
    (``(dropped)`` for nothing), and one that adds ``to`` where nothing
    was, in the form ``added``."""
    if not change['from']:
        return added % change['to']
    return '%s -> %s' % (change['from'], change['to'] or '(dropped)')


def _found(lines):
    return ' (%s)' % ', '.join(lines) if lines else ''


def xen_file_warnings(entries):
    """What Xen's drivers and consoles left in a Linux guest's settings
    (the probe's ``xen_files``), and what --fix does about it."""
    out = []
    for entry in entries or ():
        what, fixed, left = XEN_FILE_WARNINGS.get(
            entry.get('kind'), (None, None, None))
        if what is None:
            continue
        changes = entry.get('changes') or []
        shown = changes[:4]
        more = len(changes) - len(shown) + (entry.get('more') or 0)
        if changes and fixed:
            out.append('%s %s; %s%s' % (
                entry['path'],
                what % _found([c['from'] for c in shown if c['from']]),
                fixed % ', '.join(_change_text(c) for c in shown),
                ' (and %d more)' % more if more > 0 else ''))
        if entry.get('left') and left:
            out.append('%s %s; %s' % (entry['path'],
                                      what % _found(entry['left'][:4]),
                                      left))
    return out


#: How a package is removed, by the guest's package format.
REMOVE_PACKAGES = {'rpm': 'rpm -e', 'deb': 'dpkg -r'}


def lvm_devices_warning(linux):
    """The warning of LVM's devices file (RHEL 9), or None."""
    if not linux.get('lvm_devices'):
        return None
    return ('/etc/lvm/devices/system.devices lists the disks LVM may '
            'use by their ids under Xen (%s): on KVM the disks have '
            'other ids, so volume groups may stay inactive and the '
            'guest stop at an emergency shell; the virt-v2v hand-off '
            '(--fix, when the initramfs lacks virtio) removes it and '
            'rebuilds the initramfs, else remove it and run "dracut '
            '-f" in the guest before the move' % ', '.join(
                linux['lvm_devices'][:4]))


#: How a guest's package manager names a file's package.
OWNER_QUERY = {'rpm': 'rpm -qf', 'deb': 'dpkg -S'}


def xe_tools_warning(guest):
    """The XenServer guest tools, when installed: --fix does not remove
    packages (it does not run the guest's package manager), so the
    warning says how, by the guest's package format."""
    found = ((guest.get('linux') or {}).get('tools') or {}).get(
        'xe_guest_utilities') or []
    if not found:
        return None
    packages = [p for p in found if not p.startswith('/')]
    how = REMOVE_PACKAGES.get(guest.get('package_format'))
    if packages and how:
        step = 'run "%s %s" in the guest' % (how, ' '.join(packages))
    elif packages:
        step = 'remove the package(s) %s' % ', '.join(packages)
    elif (guest.get('linux') or {}).get('packages_unread'):
        # Found by its files only: a package may well own them.
        step = ('remove the package that owns %s (%s; the package '
                'database could not be read here)' % (
                    found[0], OWNER_QUERY.get(guest.get('package_format'),
                                              'rpm -qf or dpkg -S')))
    else:
        step = 'remove %s (installed without a package)' % ', '.join(
            found[:2])
    return ('XenServer guest tools are installed (%s): their daemon finds '
            'no Xen on KVM and fails at every boot; --fix does not remove '
            'packages: after the move, %s, and install qemu-guest-agent'
            % (', '.join(found[:2]), step))


def left_after_fix(guest):
    """What --fix leaves for the operator (it reports, not changes):
    the lines of the fix summary that say so."""
    if guest is None:
        return []
    linux = guest.get('linux') or {}
    out = []
    tools_left = xe_tools_warning(guest)
    if tools_left:
        out.append(tools_left)
    for entry in linux.get('xen_files') or ():
        if entry.get('left'):
            out.append('%s: %s' % (entry['path'], ', '.join(
                entry['left'][:4])))
    devices = lvm_devices_warning(linux)
    if devices:
        out.append(devices)
    out.extend(lvm_filter_warnings(guest, after_fix=True))
    out.extend(unit_named_warning(e) for e in linux.get('disk_names') or ()
               if e.get('unit_named'))
    out.extend(mac_match_warnings(linux.get('network')))
    fallback = uefi_fallback_warning(guest)
    if fallback:
        out.append(fallback)
    return out


def unit_named_warning(entry):
    """A systemd unit named after its Xen device (``dev-xvda5.swap``):
    its name and its What= must agree, so --fix changes neither."""
    return ('%s is named after %s, which KVM will not have: --fix leaves '
            'it (a unit\'s name must match its device); replace it with an '
            'fstab line by UUID, or disable it, before the move' % (
                entry['path'], entry['unit_named']))


def mac_match_warnings(net):
    """The network files that choose their NIC by the Xen NIC's MAC
    (netplan ``match: macaddress``, networkd ``MACAddress=``): reported,
    never changed, before and after --fix."""
    return ['%s chooses its interface by the Xen NIC\'s MAC (macaddress:, '
            'MACAddress=), which changes on KVM: keep the MAC (--keep-macs), '
            'or change the match; --fix leaves it' % entry['path']
            for entry in (net or {}).get('files') or ()
            if entry.get('mac_match')]


def network_warnings(net):
    """What would leave a Linux guest without network on KVM."""
    out = []
    net = net or {}
    for entry in net.get('files') or ():
        xen = [n for n in entry['names']
               if n.startswith('enX') or not net.get('ifnames_off')]
        if xen:
            out.append('%s names %s, the Xen NIC\'s name(s): on KVM the NIC '
                       'is named by its PCI slot (ens3, enp1s0) and this '
                       'configuration brings up nothing (convert --fix keeps '
                       'the kernel\'s names with net.ifnames=0 and renames '
                       'enXN to ethN)' % (entry['path'], ', '.join(xen)))
        if entry.get('mac_bound') and entry['names']:
            out.append('%s binds its interface to the Xen NIC\'s MAC '
                       '(HWADDR=, mac-address=), which changes on KVM unless '
                       'kept (--keep-macs); --fix drops that line'
                       % entry['path'])
        elif entry.get('mac_bound'):
            out.append('%s finds its interface by the Xen NIC\'s MAC alone '
                       '(HWADDR=, mac-address=), which changes on KVM: keep '
                       'the MAC (--keep-macs), or name the interface in it '
                       '(--fix leaves it)' % entry['path'])
    out.extend(mac_match_warnings(net))
    if net.get('pinned'):
        out.append('/etc/udev/rules.d/70-persistent-net.rules pins %s to the '
                   'Xen NIC\'s MAC: a new MAC gets the next name; --fix '
                   'renames the file aside' % ', '.join(net['pinned']))
    return out


def windows_warnings(guest):
    win = guest.get('windows') or {}
    out = []
    for cset, facts in sorted((win.get('control_sets') or {}).items()):
        citrix = probe.citrix_active(facts.get('services'))
        if citrix:
            out.append('%s: Citrix XenServer PV driver services %s: they '
                       'can stop Windows booting on KVM (--fix disables '
                       'them)' % (cset, ', '.join(citrix)))
        for f in facts.get('filters') or ():
            out.append('%s: class %s %s names %s' % (
                cset, f['class'], f['value'], ', '.join(f['names'])))
    if win.get('hibernated'):
        out.append('Windows was hibernated or shut down with Fast Startup '
                   '(hiberfil.sys holds its session): it would resume a '
                   'session of other hardware, and --fix cannot write its '
                   'volume; in the guest, "powercfg /h off", then shut it '
                   'down, and copy it again')
    if win.get('rtc_utc'):
        out.append('the guest keeps its hardware clock in UTC '
                   '(TimeZoneInformation\\RealTimeIsUniversal), and Nova '
                   'gives a Windows guest (os_type=windows) a clock in local '
                   'time: its time is off by its time zone until Windows '
                   'Time corrects it; to avoid that, set '
                   'RealTimeIsUniversal to 0 in the guest just before the '
                   'cutover')
    if win.get('system_hive') and not win.get('control_sets'):
        out.append('the SYSTEM hive has no usable Select key (or its '
                   'ControlSets are missing): its services and filters '
                   'were not read, and --fix changes nothing there')
    bus, _model, _why = properties.disk_bus(guest)
    if bus in ('sata', 'ide'):
        name = guest.get('product_name') or 'Windows'
        services = properties.windows_boot_services(guest)
        held = [n for n in ('vioscsi', 'viostor')
                if (services.get(n) or {}).get('start') == 0]
        idle = [n for n in ('vioscsi', 'viostor') if n in services and
                n not in held]
        if held:
            out.append('%s: %s would start at boot but for its '
                       'StartOverride: hw_disk_bus=%s; --fix clears it, '
                       'for virtio' % (name, ', '.join(held), bus))
        elif idle:
            out.append('%s: %s is installed but does not start at boot '
                       '(Start %s): hw_disk_bus=%s; set its Start to 0 in '
                       'the guest (boot start, as virtio-win installs it) '
                       'before migrating to get virtio' % (
                           name, ', '.join(idle), ', '.join(
                               str(services[n].get('start')) for n in idle),
                           bus))
        else:
            out.append('%s without a virtio storage driver: hw_disk_bus=%s;'
                       ' install virtio-win before migrating to get '
                       'virtio-scsi' % (name, bus))
        staged = [d.split('.inf', 1)[0] for d in win.get('driver_store')
                  or () if d.lower().startswith(('vioscsi.', 'viostor.'))]
        if staged:
            out.append('%s is in the driver store but not installed as a '
                       'service: install it in the guest (pnputil /add-driver '
                       '... /install, or virtio-win\'s installer) before '
                       'migrating' % ', '.join(sorted(set(staged))))
    out.extend(windows_network_warnings(win))
    out.extend(bcd_warnings(guest))
    return out


#: What stands for the new adapter's connection name in the commands a
#: warning gives: Windows names it when it finds the new NIC ("Ethernet
#: 3"); ``netsh interface show interface`` lists it.
NEW_ADAPTER = '<new adapter>'


def _address_mask(address):
    """('192.0.2.5', '255.255.255.0') of a reported '192.0.2.5/24' (a
    mask kept dotted stays so; without one, '<mask>')."""
    addr, _sep, mask = address.partition('/')
    if mask.isascii() and mask.isdigit() and len(mask) <= 2 and \
            int(mask) <= 32:
        mask = str(ipaddress.IPv4Network('0.0.0.0/%s' % mask).netmask)
    return addr, mask or '<mask>'


def netsh_commands(entry, adapter=NEW_ADAPTER):
    """The netsh commands that set ``entry``'s static addresses, gateway
    and DNS servers (a reported Windows interface) on ``adapter``."""
    out = []
    name = 'name="%s"' % adapter
    for i, address in enumerate(entry.get('addresses') or ()):
        addr, mask = _address_mask(address)
        if i == 0:
            out.append(' '.join(
                ['netsh interface ipv4 set address', name, 'static', addr,
                 mask] + (entry.get('gateways') or [])[:1]))
        else:
            out.append('netsh interface ipv4 add address %s %s %s'
                       % (name, addr, mask))
    for i, server in enumerate(entry.get('dns') or ()):
        if i == 0:
            out.append('netsh interface ipv4 set dnsservers %s static %s '
                       'primary' % (name, server))
        else:
            out.append('netsh interface ipv4 add dnsservers %s %s index=%d'
                       % (name, server, i + 1))
    return out


def _interface_name(entry):
    """How a warning names a reported Windows interface."""
    if entry.get('name'):
        what = 'the connection "%s"' % entry['name']
    else:
        what = 'the interface %s' % entry.get('guid')
    if entry.get('description'):
        what += ' (%s)' % entry['description']
    return what


def windows_network_warnings(win):
    """The static IPv4 settings of the current ControlSet's interfaces:
    Windows binds them to the adapter, not to its MAC, so the new NIC on
    KVM starts on DHCP (a static-only subnet: no network)."""
    facts = (win.get('control_sets') or {}).get(
        win.get('current_control_set')) or {}
    out = []
    for entry in facts.get('network') or ():
        commands = '; '.join(netsh_commands(entry))
        if entry.get('addresses') and not entry.get('dhcp'):
            settings = list(entry['addresses'])
            if entry.get('gateways'):
                settings.append('gateway %s' % ', '.join(entry['gateways']))
            if entry.get('dns'):
                settings.append('DNS %s' % ', '.join(entry['dns']))
            out.append(
                '%s has static IPv4 settings: %s; Windows binds them to '
                'that adapter, not to its MAC, so the new NIC on KVM starts '
                'on DHCP: re-apply them in the guest after the move (%s), '
                'or reserve these addresses for the new NIC on the DHCP '
                'server (Neutron: a port with these fixed IPs, on a subnet '
                'with DHCP)' % (_interface_name(entry), ', '.join(settings),
                                commands))
        elif entry.get('dns'):
            out.append(
                '%s has static DNS servers %s: Windows binds them to that '
                'adapter, so the new NIC on KVM uses the DHCP server\'s '
                'instead; re-apply them in the guest after the move (%s)' % (
                    _interface_name(entry), ', '.join(entry['dns']),
                    commands))
    return out


BCDBOOT = ('rebuild it from the Windows recovery environment with '
           '"bcdboot C:\\Windows" if the guest does not boot')


def bcd_warnings(guest):
    """What the BCD check found, when it could not vouch for the boot
    configuration: no BCD, one it could not read, or a default entry whose
    devices do not name the partition Windows is on."""
    bcd = (guest.get('windows') or {}).get('bcd')
    if not bcd:
        return []
    if bcd.get('dynamic_disk'):
        return ['the Windows system volume %s is on a dynamic disk (LDM), '
                'which is not supported (nor by virt-v2v): its boot '
                'configuration was not checked, and the guest may not '
                'boot; make its system disk a basic disk before migrating'
                % guest.get('root')]
    if not bcd.get('found'):
        return ['no BCD found (%s): the boot configuration could not be '
                'checked; %s' % (', '.join(bcd.get('searched') or ()) or
                                 'no NTFS or FAT partition', BCDBOOT)]
    where = '%s:%s' % (bcd.get('partition'), bcd.get('path'))
    if bcd.get('error'):
        return ['BCD %s could not be checked: %s; %s' % (
            where, bcd['error'], BCDBOOT)]
    part = bcd.get('system_partition') or {}
    if bcd.get('names_system_partition') is False:
        if part.get('table') == 'gpt':
            this = 'partition GUID %s' % part.get('guid')
        else:
            this = 'disk signature %s, offset %s' % (
                part.get('signature'), part.get('offset'))
        return ['BCD %s: its default entry %s (%s) does not name the '
                'Windows partition %s (%s): Windows will not find its boot '
                'device; %s' % (
                    where, bcd.get('default'), bcd.get('description'),
                    guest.get('root'), this, BCDBOOT.replace(
                        ' if the guest does not boot', ''))]
    if bcd.get('names_system_partition') is None:
        return ['BCD %s: its default entry %s has no device element to '
                'check; %s' % (where, bcd.get('default'), BCDBOOT)]
    return []


def summary(result, source_vm=None):
    """{'guest': the report, 'properties', 'reasons', 'warnings'} of the
    probe's ``result``."""
    guest = choose(result)
    fixed = [f for f in result.get('fixed') or ()
             if f.get('files') or f.get('registry')]
    if guest is not None:
        _apply_fixes(guest, fixed)
    props, reasons = properties.guest_properties(guest, source_vm)
    found = warnings(guest, result)
    spawn = properties.machine_warning(props)
    if spawn:
        found.append(spawn)
    out = {'guest': report(guest) if guest else None,
           'properties': props, 'reasons': reasons,
           'warnings': found, 'fixed': fixed}
    if 'fixed' in result:
        out['left'] = left_after_fix(guest)
    if result.get('v2v'):
        out['v2v'] = result['v2v']
    return out


def _apply_fixes(guest, fixed):
    """Make the report of ``guest`` (taken before the fixes) say what
    its files name after them."""
    changes = {}
    added = set()       # what was added where nothing was ('' -> it)
    linux = guest.get('linux') or {}
    default = linux.get('boot_default') or {}
    for fix in fixed:
        if fix.get('root') != guest.get('root'):
            continue
        for f in fix['files']:
            for c in f['changes']:
                changes.setdefault(f['path'], {})[c['from']] = c['to']
                if not c['from']:
                    added.add(c['to'])
                if f['path'] == default.get('file') and \
                        c['to'].startswith('default='):
                    # The default entry was moved to the kernel chosen.
                    kernel = properties.boot_kernel(guest) or {}
                    default.update(entry=int(c['to'].split('=', 1)[1]),
                                   version=kernel.get('version'),
                                   image=kernel.get('image'))
    for entry in linux.get('disk_names') or ():
        done = changes.get(entry['path'])
        if not done:
            continue
        entry['names'] = sorted({done.get(n, n) for n in entry['names']})
        entry['xen_consoles'] = [c for c in entry['xen_consoles']
                                 if c not in done]
    for entry in linux.get('xen_files') or ():
        # The facts are what --fix would change: a file it wrote has it.
        if entry['path'] in changes:
            entry['changes'] = []
            entry['more'] = 0
    for entry in (linux.get('lvm_filters') or {}).get('files') or ():
        if entry['path'] in changes:
            entry['fixed'] = True
    ci = linux.get('cloud_init')
    if ci and probe.CLOUD_KEEP in changes:
        ci.update(probe.CLOUD_KEEP_VALUES)
        ci.setdefault('set_in', {}).update(
            {k: probe.CLOUD_KEEP for k in probe.CLOUD_KEEP_VALUES})
    fallback = _uefi_fallback(guest)
    if fallback and any(p.upper().endswith('/EFI/BOOT/BOOTX64.EFI')
                        for p in changes):
        fallback['present'] = True
    net = (guest.get('linux') or {}).get('network')
    if not net:
        return
    if 'net.ifnames=0' in added:
        net['ifnames_off'] = True
    for entry in net.get('files') or ():
        done = changes.get(entry['path'])
        if not done:
            continue
        entry['names'] = sorted({done.get(n, n) for n in entry['names']})
        if any(k and not v for k, v in done.items()):
            entry['mac_bound'] = False
    rules = [p for p in changes if p.endswith('70-persistent-net.rules')]
    if rules:
        net['pinned'] = []


def report(guest):
    """The facts of one guest users read: the probe's, flattened."""
    out = {k: guest.get(k) for k in (
        'type', 'distro', 'product_name', 'major_version', 'minor_version',
        'arch', 'hostname', 'firmware', 'root', 'disk')}
    linux = guest.get('linux')
    if linux:
        kernel = properties.boot_kernel(guest)
        out['bootloader'] = linux.get('bootloader')
        if linux.get('boot_default') is not None:
            out['boot_default'] = linux['boot_default']
        if linux.get('uefi_fallback') is not None:
            out['uefi_fallback'] = linux['uefi_fallback']
        out['disk_names'] = {e['path']: e['names']
                             for e in linux.get('disk_names') or ()}
        out['xen_consoles'] = sorted({c for e in linux.get('disk_names')
                                      or () for c in e['xen_consoles']})
        out['kernel'] = kernel.get('version') if kernel else None
        out['initramfs'] = kernel.get('initramfs') if kernel else None
        mods = kernel.get('modules') if kernel else {}
        out['drivers'] = {m: mods.get(m) for m in (
            'virtio_blk', 'virtio_scsi', 'virtio_net', 'virtio_pci',
            'ahci', 'ata_piix', 'e1000')}
        out['xen_pv_only'] = bool(kernel and kernel.get('xen_pv_only'))
        out['tools'] = {k: v for k, v in (linux.get('tools') or {}).items()
                        if v}
        if linux.get('network') is not None:
            out['network'] = linux['network']
        if linux.get('cloud_init') is not None:
            out['cloud_init'] = linux['cloud_init']
        lvm = linux.get('lvm_filters') or {}
        if lvm.get('files') or lvm.get('initramfs'):
            out['lvm_filters'] = lvm
    win = guest.get('windows')
    if win:
        out['windows'] = win
    return out


def windows_lines(win):
    """The Windows facts for the text output."""
    if not win:
        return []
    lines = ['windows:      build %s%s, %s' % (
        win.get('build'), ' (%s)' % win['edition'] if win.get('edition')
        else '', win.get('systemroot'))]
    current = win.get('current_control_set')
    for cset, facts in sorted((win.get('control_sets') or {}).items()):
        services = facts.get('services') or {}
        groups = {}
        for name, svc in sorted(services.items()):
            groups.setdefault(svc.get('group'), []).append(
                '%s (start %s%s)' % (name, svc.get('start'), ''.join(
                    ', StartOverride\\%s %s' % kv for kv in sorted(
                        (svc.get('start_override') or {}).items()))))
        lines.append('registry:     %s%s: virtio %s; citrix %s; vmware %s; '
                     'filters %s' % (
                         cset, ' (current)' if cset == current else '',
                         ', '.join(groups.get('virtio') or ['none']),
                         ', '.join(groups.get('citrix') or ['none']),
                         ', '.join(groups.get('vmware') or ['none']),
                         ', '.join('%s %s' % (f['value'], ','.join(
                             f['names'])) for f in facts.get('filters')
                             or ()) or 'none'))
    for entry in ((win.get('control_sets') or {}).get(current) or {}).get(
            'network') or ():
        lines.append('network:      %s%s: %s%s%s%s' % (
            entry.get('name') or entry.get('guid'),
            ' (%s)' % entry['description'] if entry.get('description')
            else '', 'DHCP' if entry.get('dhcp') else 'static',
            ' %s' % ', '.join(entry['addresses'])
            if entry.get('addresses') else '',
            ', gateway %s' % ', '.join(entry['gateways'])
            if entry.get('gateways') else '',
            ', DNS %s' % ', '.join(entry['dns']) if entry.get('dns')
            else ''))
    lines.append('driverstore:  %s' % (
        ', '.join(win.get('driver_store') or ()) or 'no virtio driver'))
    bcd = win.get('bcd')
    if bcd and bcd.get('found'):
        lines.append('bcd:          %s:%s default %s (%s), names the '
                     'Windows partition: %s' % (
                         bcd.get('partition'), bcd.get('path'),
                         bcd.get('default'), bcd.get('description'),
                         {True: 'yes', False: 'no', None: 'unknown'}[
                             bcd.get('names_system_partition')]))
    elif bcd:
        lines.append('bcd:          not found')
    return lines


def text_lines(inspection):
    """Lines for the text output of the CLIs."""
    guest = inspection.get('guest')
    lines = []
    if guest is None:
        lines.append('guest:        no operating system found')
    else:
        version = '.'.join(str(v) for v in (guest.get('major_version'),
                                            guest.get('minor_version'))
                           if v is not None)
        lines.append('guest:        %s %s %s %s (%s), root %s' % (
            guest.get('type'), guest.get('distro'), version,
            guest.get('arch'), guest.get('product_name'),
            guest.get('root')))
        lines.append('firmware:     %s%s' % (
            guest.get('firmware'), ', bootloader %s' % guest['bootloader']
            if guest.get('bootloader') else ''))
        for path, names in sorted((guest.get('disk_names') or {}).items()):
            lines.append('disk names:   %s: %s' % (
                path, ', '.join(names) or '-'))
        if guest.get('kernel'):
            lines.append('kernel:       %s: %s' % (guest['kernel'], ', '.join(
                '%s %s' % (m, w or 'absent') for m, w in
                sorted(guest['drivers'].items()))))
        for entry in (guest.get('network') or {}).get('files') or ():
            lines.append('network:      %s: %s%s' % (
                entry['path'], ', '.join(entry['names']) or '-',
                ' (bound to a MAC)' if entry.get('mac_bound') else ''))
        ci = guest.get('cloud_init')
        if ci:
            lines.append('cloud-init:   %s; ssh_deletekeys %s, '
                         'preserve_hostname %s%s' % (
                             'off (%s)' % ci['disabled'] if ci.get('disabled')
                             else 'enabled',
                             str(ci.get('ssh_deletekeys')).lower(),
                             str(ci.get('preserve_hostname')).lower(),
                             ', last instance %s' % ci['instance_id']
                             if ci.get('instance_id') else ''))
        if guest.get('tools'):
            lines.append('tools:        %s' % ', '.join(
                sorted(v for vs in guest['tools'].values() for v in vs)))
        lines.extend(windows_lines(guest.get('windows')))
    fixes = inspection.get('fixed') or ()
    for fix in fixes:
        # With several systems fixed, each line names its root.
        root = '%s ' % fix.get('root') if len(fixes) > 1 else ''
        for change in fix.get('registry') or ():
            lines.append('fixed:        %sSYSTEM hive: %s' % (root, change))
        for f in fix['files']:
            lines.append('fixed:        %s%s: %s' % (
                root, f['path'], ', '.join(
                    _change_text(c, added='added %s')
                    for c in f['changes'])))
    for line in inspection.get('left') or ():
        lines.append('not fixed:    %s' % line)
    handoff = inspection.get('v2v') or {}
    if handoff.get('ran'):
        lines.append('fixed:        %s (virt-v2v-in-place, %.0f s; the '
                     'bus was %s before)' % (
                         'initramfs rebuilt with virtio' if handoff.get(
                             'needed') == 'initramfs' else
                         'virtio drivers injected', handoff.get('seconds')
                         or 0, handoff.get('bus_before')))
    for key, value in sorted(inspection.get('properties', {}).items()):
        why = inspection.get('reasons', {}).get(key)
        lines.append('property:     %s=%s%s' % (key, value, ' (%s)' % why
                                                if why else ''))
    for warning in inspection.get('warnings') or ():
        lines.append('warning:      %s' % warning)
    return lines


if __name__ == '__main__':  # pragma: no cover - a debugging aid
    print(json.dumps(summary(inspect_files(sys.argv[1:])), indent=2))
