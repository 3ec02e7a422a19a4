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

"""The hand-off to ``virt-v2v-in-place`` during ``--fix``.

What any2kvm's own fixes cannot do offline, virt-v2v can: rebuild a Linux
initramfs with the virtio drivers (it runs the guest's own
``update-initramfs`` or ``dracut`` in its appliance) and inject the
virtio-win drivers into Windows.  When the fix finds a guest whose boot
cannot find its disk on virtio (:func:`needed`), and ``virt-v2v-in-place``
(Debian: package ``virt-v2v``, with ``nbdkit``) is on ``PATH`` (and, for
Windows, virtio-win: ``$VIRTIO_WIN`` or ``/usr/share/virtio-win``), it is
run on the copy being fixed (the qcow2 overlays of :func:`any2kvm_os.guest.
inspect.inspect_files`, or the attached volumes, snapshotted first), with
the appliance settings of the inspection and bounded by
``[any2kvm] virt_v2v_timeout``; then the guest is inspected again and the
properties chosen from what it holds.  ``[any2kvm] virt_v2v = false``
turns the hand-off off.  Without the tool, :func:`skipped` says what is
missing and which bus was chosen.
"""

import json
import logging
import os
import shutil
import subprocess
import tempfile

from any2kvm_os import exception
from any2kvm_os.guest import process
from any2kvm_os import lazyopts
from any2kvm_os import properties
from any2kvm_os import redact

LOG = logging.getLogger(__name__)

PROGRAM = 'virt-v2v-in-place'
VIRTIO_WIN_DIR = '/usr/share/virtio-win'
#: Where virt-v2v looks for the Windows service wrapper it installs its
#: first-boot scripts with (``$VIRT_TOOLS_DATA_DIR``, else this), and its
#: names: it stops with "One of rhsrvany.exe or pvvxsvc.exe is missing"
#: when a Windows conversion has a first-boot script to install (the
#: guest agent of every virtio-win tree, the disks brought online).
#: Debian packages neither.
VIRT_TOOLS_DIR = '/usr/share/virt-tools'
SERVICE_WRAPPERS = ('rhsrvany.exe', 'pvvxsvc.exe')

#: The options' defaults, written once: ``OPTIONS`` and the inspection's
#: ``Settings`` take them from here.
DEFAULTS = dict(virt_v2v=True, virt_v2v_timeout=1800)


def _options():
    from oslo_config import cfg
    return [
        cfg.BoolOpt('virt_v2v', default=DEFAULTS['virt_v2v'],
                    help='With --fix, hand a guest whose boot lacks the '
                         'virtio storage drivers (a Linux initramfs without '
                         'them, Windows without viostor/vioscsi) to '
                         'virt-v2v-in-place when it is installed (and, for '
                         'Windows, virtio-win). False: never; the guest '
                         'gets sata/ide.'),
        cfg.IntOpt('virt_v2v_timeout', default=DEFAULTS['virt_v2v_timeout'],
                   min=10,
                   help='Seconds one virt-v2v-in-place run may take.'),
    ]


#: ``OPTIONS`` (oslo.config options), made on first use: a command that
#: reads no configuration does not import oslo.config.
__getattr__ = lazyopts.module_getattr(globals(), _options)

#: The Linux modules that, on the disk but not at boot, virt-v2v can put
#: into the initramfs.
VIRTIO_STORAGE = ('virtio_scsi', 'virtio_blk')


def virtio_win():
    """Where virt-v2v would find the virtio-win drivers, or None."""
    env = os.environ.get('VIRTIO_WIN')
    if env:
        return env if os.path.exists(env) else None
    return VIRTIO_WIN_DIR if os.path.isdir(VIRTIO_WIN_DIR) else None


def needed(guest):
    """What virt-v2v would do for ``guest``: 'initramfs', 'drivers' or
    None.  Linux: the bus chosen is not virtio, and the kernel ships a
    virtio storage driver as a module on the disk (the initramfs lacks
    it).  Windows: no virtio storage driver starts at boot."""
    if not guest or guest.get('type') not in ('linux', 'windows'):
        return None
    bus, _model, _why = properties.disk_bus(guest)
    if bus in (None, 'scsi', 'virtio'):
        return None
    if guest['type'] == 'windows':
        return 'drivers'
    kernel = properties.boot_kernel(guest) or {}
    if kernel.get('xen_pv_only') or kernel.get('initramfs_error'):
        return None
    mods = kernel.get('modules') or {}
    if any(mods.get(m) == 'module' for m in VIRTIO_STORAGE):
        return 'initramfs'
    if mods.get('sd_mod') == 'module' and mods.get('virtio_scsi'):
        # virtio_scsi at boot, without the SCSI disk driver it needs.
        return 'initramfs'
    return None


def virt_tools():
    """Where virt-v2v would find rhsrvany.exe or pvvxsvc.exe, or None."""
    top = os.environ.get('VIRT_TOOLS_DATA_DIR') or VIRT_TOOLS_DIR
    if any(os.path.isfile(os.path.join(top, n)) for n in SERVICE_WRAPPERS):
        return top
    return None


def missing(kind):
    """What the hand-off of ``kind`` lacks on this host ([] when
    nothing)."""
    out = []
    if not shutil.which(PROGRAM):
        out.append('%s not found' % PROGRAM)
    if not shutil.which('nbdkit'):
        out.append('nbdkit not found')
    if kind == 'drivers' and virtio_win() is None:
        out.append('no virtio-win drivers (VIRTIO_WIN or %s)'
                   % VIRTIO_WIN_DIR)
    if kind == 'drivers' and virt_tools() is None:
        out.append('no %s in %s (VIRT_TOOLS_DATA_DIR)' % (
            ' or '.join(SERVICE_WRAPPERS),
            os.environ.get('VIRT_TOOLS_DATA_DIR') or VIRT_TOOLS_DIR))
    return out


def skipped_message(kind, lacks, bus, disabled=False):
    """The one line that says why the hand-off did not run."""
    what = 'rebuild the initramfs with virtio' if kind == 'initramfs' \
        else 'inject the virtio drivers'
    if disabled:
        return ('%s not run ([any2kvm] virt_v2v = false): the guest keeps '
                'a boot without virtio; chose hw_disk_bus=%s'
                % (PROGRAM, bus))
    install = []
    if any(PROGRAM in m or 'nbdkit' in m for m in lacks):
        install.append('install virt-v2v and nbdkit')
    if any('virtio-win' in m for m in lacks):
        install.append('install virtio-win (or set VIRTIO_WIN)')
    if any(SERVICE_WRAPPERS[0] in m for m in lacks):
        install.append('put rhsrvany.exe there (Fedora and RHEL package '
                       'it for virt-v2v; Debian does not)')
    install = ' and '.join(install)
    return '%s: %s to %s; chose hw_disk_bus=%s' % (
        ', '.join(lacks), install, what, bus)


def command(disks, fmt, root=None):
    """The argv of virt-v2v-in-place on ``disks`` (one VM's, in order):
    ``-i disk`` for one disk, else ``-i libvirtxml`` with the file that
    :func:`domain_xml` writes (its path the last argument, given by the
    caller as ``disks``' XML)."""
    cmd = [PROGRAM, '--machine-readable', '-q']
    if root:
        cmd += ['--root', root]
    if len(disks) == 1:
        return cmd + ['-i', 'disk', '-if', fmt, str(disks[0])]
    return cmd + ['-i', 'libvirtxml']


def domain_xml(disks, fmt, name='any2kvm-guest'):
    """Minimal libvirt XML of a VM with ``disks`` (what ``-i libvirtxml``
    reads)."""
    # saxutils imports urllib.request, http.client and ssl: only here,
    # not at the start-up of every command that registers our options.
    from xml.sax import saxutils
    q = saxutils.quoteattr
    lines = ['<domain type="kvm">', '  <name>%s</name>' % saxutils.escape(
        name), '  <memory>1048576</memory>', '  <vcpu>1</vcpu>',
        '  <os><type>hvm</type><boot dev="hd"/></os>', '  <devices>']
    for index, path in enumerate(disks):
        lines += ['    <disk type="file" device="disk">',
                  '      <driver name="qemu" type=%s/>' % q(fmt),
                  '      <source file=%s/>' % q(os.path.abspath(str(path))),
                  '      <target dev=%s bus="ide"/>' % q(
                      'hd' + 'abcdefghijklmnopqrstuvwxyz'[index % 26]),
                  '    </disk>']
    lines += ['  </devices>', '</domain>', '']
    return '\n'.join(lines)


def environment(settings):
    """The environment of the run: the appliance as the inspection's
    (``LIBGUESTFS_BACKEND``, ``LIBGUESTFS_BACKEND_SETTINGS``), none of the
    command's secrets (:func:`any2kvm_os.redact.child_environ`)."""
    env = redact.child_environ()
    if settings.backend:
        env['LIBGUESTFS_BACKEND'] = settings.backend
    if settings.backend_settings:
        env['LIBGUESTFS_BACKEND_SETTINGS'] = settings.backend_settings
    return env


def messages(text):
    """[(type, message)] of virt-v2v's output: with --machine-readable it
    prints one JSON object a line ({"message", "timestamp", "type":
    "message", "warning", "error", ...}); other lines are kept as they are
    (type None), progress figures (``N/M``) dropped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.replace('/', '').isdigit():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and 'message' in obj:
            out.append((obj.get('type'), ' '.join(
                str(obj['message']).split())))
        else:
            out.append((None, ' '.join(line.split())))
    return out


def last_line(text):
    """The last meaningful line of virt-v2v's output: its last error if
    it printed one, else its last line."""
    found = messages(text)
    for kind, msg in reversed(found):
        if kind == 'error':
            return 'error: ' + msg
        if kind is None and 'error:' in msg:
            return msg
    return found[-1][1] if found else 'no output'


def run(settings, disks, fmt, name, root=None, scratch_dir=None):
    """Run virt-v2v-in-place on ``disks`` (the copy being fixed), bounded
    by ``settings.v2v_timeout``; its output goes to the log.  Returns
    {'ran': True, 'seconds', 'command'};
    :class:`~any2kvm_os.exception.GuestFixError` (one line: the disk and
    what virt-v2v said) on failure.  Its temporary files
    (``VIRT_V2V_TMPDIR``; it wants 1 GB free there) go under
    ``scratch_dir``."""
    import time
    timeout = getattr(settings, 'v2v_timeout', 1800)
    with tempfile.TemporaryDirectory(prefix='any2kvm-v2v-',
                                     dir=scratch_dir) as tmp:
        cmd = command(disks, fmt, root)
        if len(disks) > 1:
            xml = os.path.join(tmp, 'domain.xml')
            with open(xml, 'w') as f:
                f.write(domain_xml(disks, fmt))
            cmd.append(xml)
        env = environment(settings)
        env['VIRT_V2V_TMPDIR'] = tmp
        LOG.info('Handing %s to %s (%s)', name, PROGRAM, ' '.join(cmd))
        started = time.monotonic()
        try:
            proc, out, _err = process.communicate(
                cmd, timeout, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise exception.GuestFixError(
                path=name, reason='%s gave no answer within %d s '
                '([any2kvm] virt_v2v_timeout)' % (PROGRAM, timeout))
        text = out.decode('utf-8', 'replace')
        for kind, msg in messages(text):
            LOG.info('%s: %s%s', PROGRAM, '%s: ' % kind if kind and
                     kind != 'message' else '', msg)
        if proc.returncode != 0:
            raise exception.GuestFixError(
                path=name, reason='%s failed (exit %d): %s' % (
                    PROGRAM, proc.returncode, last_line(text)))
        return {'ran': True, 'seconds': round(time.monotonic() - started, 1),
                'command': cmd[:-1] + [os.path.basename(cmd[-1])]}
