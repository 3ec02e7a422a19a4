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


"""The LVM SRs of the stand-in host (``lvm``, ``lvmoiscsi``, ``lvmohba``:
SM's LVHD), their logical volumes and their activation.

Only the standard library and FATtools (through :mod:`sr`) are used.

What XenServer does, and what is mirrored here (xapi-project/sm
``libs/sm/drivers/LVHDSR.py``, ``libs/sm/lvhdutil.py``,
``libs/sm/lvutil.py``, ``libs/sm/refcounter.py``; blktap ``vhd-util``):

* an LVM SR is the volume group ``VG_XenStorage-<sr-uuid>``
  (lvhdutil ``VG_PREFIX``); a VHD VDI is the logical volume
  ``VHD-<vdi-uuid>`` in it (lvhdutil ``LV_PREFIX``), whose content is a
  dynamic or differencing VHD; the VG also holds SM's 4 MiB metadata
  volume ``MGT`` (LVHDSR ``MDVOLUME_NAME``, created and activated with
  ``activateNoRefcount`` at SR attach);
* LV sizes are multiples of the 4 MiB extent (lvhdutil
  ``LVM_SIZE_INCREMENT``, ``calcSizeLV``); inflating and deflating an LV
  (lvhdutil ``inflate``/``deflate``) call ``vhd-util modify -s`` (vhdutil
  ``setSizePhys``), which writes the VHD footer in the LV's last 512
  bytes: between the end of the VHD's data and that footer lie zeros;
* a thick-provisioned SR (LVHDSR's default ``provision``) keeps a VDI's
  leaf inflated (``calcSizeVHDLV``: room for every block of the virtual
  size); a snapshot's VDI and the hidden "base copy" are deflated to
  their data (``LVHDVDI._snapshot``: ``deflate(..., lvSizeBase)``;
  ``detach`` deflates snapshots);
* ``LVHDVDI._snapshot`` renames the VDI's LV to ``VHD-<base uuid>``, makes
  the new leaf and the snapshot with ``vhdutil.snapshot(snapPath,
  self.path, ...)`` -- the parent given as its device path
  ``/dev/VG_XenStorage-<sr>/VHD-<base>`` -- hides the base
  (``vhdutil.setHidden``) and makes its LV read-only
  (``lvmCache.setReadonly``);
* an LV is active (``/dev/VG_XenStorage-<sr>/<lv>`` exists) while some
  attachment needs it: ``LVHDVDI.attach`` activates the whole VHD chain
  (``_chainSetActive``), counted per VDI with ``RefCounter`` (a binary
  count for the leaf, a normal one for each parent), and detach
  deactivates what no attachment holds any more
  (``lvutil.deactivateNoRefcount``: ``lvchange -an``, which LVM refuses
  on an open LV, "Logical volume ... in use").

The stand-in keeps each LV's content in a file ``<root>/lvm/
VG_XenStorage-<sr>/<lv name>`` (the store; never under ``<root>/dev``),
and materialises an active LV as the symlink ``<root>/dev/
VG_XenStorage-<sr>/<lv name>`` to its store file.  LV attributes
(read-only; the refcounts) are kept in the state under ``lv``, keyed
``<vg>/<lv>``.  :func:`sync` recomputes the activation from the state
(every attached Disk VBD's chain, by ``vhd-parent``) and makes ``/dev``
match it.
"""

import os
import struct

try:
    from . import sr as srlib
    from . import state as st
except ImportError:         # run as a sibling of the xe script
    import sr as srlib
    import state as st

VG_PREFIX = 'VG_XenStorage-'
LV_PREFIX = 'VHD-'
MGT = 'MGT'
MGT_SIZE = 4 << 20
INCREMENT = 4 << 20          # lvhdutil.LVM_SIZE_INCREMENT
LVM_SR_TYPES = ('lvm', 'lvmoiscsi', 'lvmohba')
SECTOR = 512
UNUSED = 0xFFFFFFFF
PAGE_SECTORS = 8             # libvhd: a block's data starts on a page
#: The state's list of deactivations refused because a process held the
#: LV open (see :func:`sync`), in ``state['host']``.
IN_USE_EVENTS = 'lv-in-use-at-deactivation'


def is_lvm(sr_record):
    return sr_record.get('type') in LVM_SR_TYPES


def vg_name(sr_uuid):
    return VG_PREFIX + sr_uuid


def lv_name(vdi_uuid):
    return LV_PREFIX + vdi_uuid


def store_dir(root, sr_uuid):
    return os.path.join(str(root), 'lvm', vg_name(sr_uuid))


def store_path(root, sr_uuid, name):
    return os.path.join(store_dir(root, sr_uuid), name)


def dev_dir(root, sr_uuid):
    return os.path.join(str(root), 'dev', vg_name(sr_uuid))


def dev_path(root, sr_uuid, name):
    return os.path.join(dev_dir(root, sr_uuid), name)


def roundup(n, unit=INCREMENT):
    return (n + unit - 1) // unit * unit


def lv_attrs(state, sr_uuid, name):
    return state.setdefault('lv', {}).setdefault(
        '%s/%s' % (vg_name(sr_uuid), name), {})


# ---------------------------------------------------------------------------
# the VHD inside an LV
# ---------------------------------------------------------------------------

def _layout(f):
    """(file size, footer, header, bitmap bytes, BAT entries) of the VHD
    in open file ``f`` (footer read from the end)."""
    size, footer, data_offset, header = srlib.read_tail(f)
    table = struct.unpack_from('>Q', header, 0x10)[0]
    entries = struct.unpack_from('>I', header, 0x1C)[0]
    block = struct.unpack_from('>I', header, 0x20)[0]
    f.seek(table)
    bat = list(struct.unpack('>%dI' % entries, f.read(4 * entries)))
    bitmap = roundup(block // SECTOR // 8, SECTOR)
    return {'size': size, 'footer': footer, 'data_offset': data_offset,
            'header': header, 'table': table, 'entries': entries,
            'block': block, 'bitmap': bitmap, 'bat': bat}


def _metadata_end(lay):
    """End of the header, BAT and parent locators."""
    end = max(SECTOR, lay['data_offset'] + srlib.HEADER_SIZE,
              lay['table'] + roundup(4 * lay['entries'], SECTOR))
    for i in range(8):
        code, space, _length, _r, off = srlib.LOCATOR.unpack_from(
            lay['header'], srlib.LOCATOR_TABLE + i * srlib.LOCATOR.size)
        if code != b'\0\0\0\0':
            end = max(end, off + roundup(space, SECTOR))
    return end


def end_of_data(path):
    """libvhd's ``vhd_end_of_data``: the end of the metadata and of the
    last allocated block (the footers not counted)."""
    with open(str(path), 'rb') as f:
        lay = _layout(f)
    return _end_of_data(lay)


def _end_of_data(lay):
    end = _metadata_end(lay)
    for b in lay['bat']:
        if b != UNUSED:
            end = max(end, b * SECTOR + lay['bitmap'] + lay['block'])
    return end


def deflated_size(path):
    """``calcSizeLV(getSizePhys)``: the data and a footer, rounded up to
    the extent."""
    return roundup(end_of_data(path) + SECTOR)


def inflated_size(path):
    """``calcSizeVHDLV``: room for every block of the virtual size (with
    the stand-in's own metadata size: FATtools does not preallocate the
    BAT for 2 TiB as ``vhd-util create -S`` does) and a footer."""
    with open(str(path), 'rb') as f:
        lay = _layout(f)
    virt = struct.unpack_from('>Q', lay['footer'], 0x30)[0]
    blocks = (virt + lay['block'] - 1) // lay['block']
    full = (_metadata_end(lay) + blocks * (lay['bitmap'] + lay['block'] +
                                           PAGE_SECTORS * SECTOR) + SECTOR)
    return max(roundup(full), roundup(_end_of_data(lay) + SECTOR))


def set_size(path, size):
    """``lvresize`` plus ``vhd-util modify -s SIZE``: the LV's content is
    ``size`` bytes long, the footer in its last 512 bytes, zeros between
    the end of the data and it."""
    path = str(path)
    if size % INCREMENT:
        raise ValueError('LV size %d is no multiple of the extent' % size)
    with open(path, 'r+b') as f:
        lay = _layout(f)
        eod = _end_of_data(lay)
        if size < eod + SECTOR:
            raise ValueError('LV size %d below the VHD data (%d)'
                             % (size, eod))
        old = lay['size']
        if old == size:
            return
        if size > old:
            f.seek(old - SECTOR)
            f.write(bytes(SECTOR))      # the old footer goes
            f.truncate(size)
        else:
            f.truncate(size - SECTOR)
            f.truncate(size)
        f.seek(size - SECTOR)
        f.write(lay['footer'])


def fit(path, inflated):
    """Size the LV of ``path`` as SM leaves it: inflated (a thick SR's
    VDI) or deflated (a snapshot, a base copy)."""
    set_size(path, inflated_size(path) if inflated else deflated_size(path))


def wants_inflated(vdi_record):
    """A thick SR's managed VDI stays inflated; its snapshots and base
    copies are deflated (LVHDVDI._snapshot, LVHDVDI.detach)."""
    return (vdi_record.get('managed', True) and
            not vdi_record.get('is-a-snapshot'))


def _bit(bitmap, i):
    return bitmap[i // 8] & (0x80 >> (i % 8))


def write(path, offset, data):
    """What tapdisk does writing into an inflated LV: blocks allocated in
    place after the end of the data (libvhd ``__vhd_io_allocate_block``,
    the block's data page-aligned), sectors marked in the block's bitmap;
    the footer stays at the LV's end (the LV grows first, by extents,
    should it lack room).  Partial sectors are completed from what the
    chain reads."""
    path = str(path)
    data = bytes(data)
    if not data:
        return
    start = offset // SECTOR * SECTOR
    stop = roundup(offset + len(data), SECTOR)
    if (start, stop) != (offset, offset + len(data)):
        head = srlib.read(path, start, SECTOR) if offset != start else b''
        tail = (srlib.read(path, stop - SECTOR, SECTOR)
                if offset + len(data) != stop else b'')
        buf = bytearray(stop - start)
        if head:
            buf[:SECTOR] = head
        if tail:
            buf[-SECTOR:] = tail
        buf[offset - start:offset - start + len(data)] = data
        data = bytes(buf)
    with open(path, 'rb') as f:
        lay = _layout(f)
    block = lay['block']
    first, last = start // block, (stop - 1) // block
    eod = _end_of_data(lay)
    need = eod
    for b in range(first, last + 1):
        if lay['bat'][b] == UNUSED:
            need += PAGE_SECTORS * SECTOR + lay['bitmap'] + block
    if need + SECTOR > lay['size']:
        set_size(path, roundup(need + SECTOR))
    with open(path, 'r+b') as f:
        pos = start
        while pos < stop:
            b = pos // block
            within = pos - b * block
            n = min(block - within, stop - pos)
            at = lay['bat'][b]
            if at == UNUSED:
                sec = eod // SECTOR
                gap = (-(sec + lay['bitmap'] // SECTOR)) % PAGE_SECTORS
                at = sec + gap
                f.seek(at * SECTOR)
                f.write(bytes(lay['bitmap']))
                lay['bat'][b] = at
                f.seek(lay['table'] + 4 * b)
                f.write(struct.pack('>I', at))
                eod = at * SECTOR + lay['bitmap'] + block
            f.seek(at * SECTOR + lay['bitmap'] + within)
            f.write(data[pos - start:pos - start + n])
            f.seek(at * SECTOR)
            bitmap = bytearray(f.read(lay['bitmap']))
            for s in range(within // SECTOR, (within + n) // SECTOR):
                bitmap[s // 8] |= 0x80 >> (s % 8)
            f.seek(at * SECTOR)
            f.write(bitmap)
            pos += n


def create(root, sr_uuid, vdi_uuid, size, writes=(), inflated=True):
    """``LVHDVDI.create``: the LV with an empty dynamic VHD, then the
    writes (as the guest made them), sized as SM leaves it."""
    os.makedirs(store_dir(root, sr_uuid), exist_ok=True)
    path = store_path(root, sr_uuid, lv_name(vdi_uuid))
    srlib.create_base(path, size)
    fit(path, inflated)
    for off, data in writes:
        write(path, off, data)
    return path


def create_mgt(root, sr_uuid):
    os.makedirs(store_dir(root, sr_uuid), exist_ok=True)
    with open(store_path(root, sr_uuid, MGT), 'wb') as f:
        f.truncate(MGT_SIZE)


def snapshot(root, state, sr_uuid, vdi_uuid, snap_uuid, node_uuid,
             inflated):
    """``LVHDVDI._snapshot`` (double snapshot) on the store: the VDI's LV
    becomes the hidden, read-only, deflated base ``VHD-<node>``; new
    empty children ``VHD-<vdi>`` (the VDI's leaf: inflated when
    ``inflated``) and ``VHD-<snap>`` (deflated), their parent named by
    its LV name.  When the leaf held no block, ``vhd-util snapshot``
    links both children to its first ancestor that holds one
    (``srlib.snapshot_target``) and ``_finishSnapshot`` removes the unused
    base LV.  Returns (node meta, or None when no base was kept; leaf
    meta; snapshot meta)."""
    d = store_dir(root, sr_uuid)
    src = os.path.join(d, lv_name(vdi_uuid))
    node = os.path.join(d, lv_name(node_uuid))
    snap = os.path.join(d, lv_name(snap_uuid))
    os.rename(src, node)
    old = lv_attrs(state, sr_uuid, lv_name(vdi_uuid))
    state['lv'].pop('%s/%s' % (vg_name(sr_uuid), lv_name(vdi_uuid)))
    lv_attrs(state, sr_uuid, lv_name(node_uuid)).update(old)
    fit(node, False)
    target = srlib.snapshot_target(node)
    for path, big in ((src, inflated), (snap, False)):
        tmp = path + '.new'
        srlib.create_child(tmp, target)
        srlib.fit_size(tmp, node)
        fit(tmp, big)
        os.rename(tmp, path)
    if target != node:
        remove(root, state, sr_uuid, lv_name(node_uuid))
        return None, srlib.meta(src), srlib.meta(snap)
    srlib.set_hidden(node, True)
    lv_attrs(state, sr_uuid, lv_name(node_uuid))['readonly'] = True
    return srlib.meta(node), srlib.meta(src), srlib.meta(snap)


def remove(root, state, sr_uuid, name):
    """``lvremove``: the LV's store file and its device node."""
    for p in (store_path(root, sr_uuid, name), dev_path(root, sr_uuid, name)):
        if os.path.lexists(p):
            os.unlink(p)
    state.get('lv', {}).pop('%s/%s' % (vg_name(sr_uuid), name), None)


def coalesce(root, state, sr_uuid, node_uuid, child_uuid, inflated):
    """SM's GC on LVHD, explicit: the hidden base ``node`` absorbs its
    only child (FATtools ``Image.merge``), takes the child's LV name, is
    un-hidden and made writable, and sized as a leaf."""
    d = store_dir(root, sr_uuid)
    node = os.path.join(d, lv_name(node_uuid))
    child = os.path.join(d, lv_name(child_uuid))
    size = srlib.meta(child)['virtual_size']
    if srlib.meta(node)['virtual_size'] < size:
        srlib.resize(node, size)
    # FATtools allocates at the file's end: the footer right after the data
    # while it works (the host's lock is held)
    with open(node, 'r+b') as f:
        lay = _layout(f)
        eod = _end_of_data(lay)
        f.truncate(eod)
        f.seek(eod)
        f.write(lay['footer'])
    with srlib._resolver(d):
        img = srlib._vhdutils().Image(os.path.abspath(child), 'r+b')
        img.merge()
        if img.Parent is not None:
            img.Parent.close()
    os.rename(node, child)
    set_size(child, roundup(os.path.getsize(child)))
    srlib.set_hidden(child, False)
    fit(child, inflated)
    state.get('lv', {}).pop('%s/%s' % (vg_name(sr_uuid), lv_name(node_uuid)),
                            None)
    lv_attrs(state, sr_uuid, lv_name(child_uuid))['readonly'] = False
    return srlib.meta(child)


def resize(path, new_size, inflated=True):
    """``vhd-util resize -f`` then the LV inflated to the new size
    (lvhdutil ``setSizeVirt``)."""
    srlib.resize(path, new_size)
    if inflated:
        fit(path, True)


# ---------------------------------------------------------------------------
# activation
# ---------------------------------------------------------------------------

def attached_here(state, sr_uuid):
    me = state['host'].get('uuid')
    return any(p['sr'] == sr_uuid and p.get('host') == me and
               p.get('currently-attached', True)
               for p in state.get('pbd', {}).values())


def chain(state, vdi_uuid):
    """The VDI and its vhd-parent ancestors (SM's view of the chain)."""
    out = []
    while vdi_uuid in state['vdi'] and vdi_uuid not in out:
        out.append(vdi_uuid)
        vdi_uuid = (state['vdi'][vdi_uuid].get('sm-config') or {}).get(
            'vhd-parent')
    return out


def refcounts(state):
    """{(sr, lv name): [count, binary count]} as ``RefCounter`` keeps them
    in ``lvm-<sr>``: attaching a VDI takes the binary count of its leaf
    and a normal count on every parent (``_chainSetActive``)."""
    counts = {}
    for vbd in state['vbd'].values():
        vdi = vbd.get('vdi')
        if (not vdi or vdi not in state['vdi'] or vbd.get('type') != 'Disk'
                or not st.vbd_attached(state, vbd)):
            continue
        sr = state['vdi'][vdi]['sr']
        if not is_lvm(state['sr'].get(sr, {})):
            continue
        for i, u in enumerate(chain(state, vdi)):
            c = counts.setdefault((sr, lv_name(u)), [0, 0])
            c[1 if i == 0 else 0] += 1
    for c in counts.values():
        c[1] = min(c[1], 1)
    return counts


def openers(path):
    """Pids of the processes with an open descriptor on ``path``."""
    target = os.path.realpath(str(path))
    pids = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        fd_dir = os.path.join('/proc', pid, 'fd')
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) == target:
                    pids.append(int(pid))
                    break
            except OSError:
                continue
    return pids


def sync(root, state, command):
    """Make ``<root>/dev`` match the activation the state implies: an
    LV is active while an attached Disk VBD's chain holds it (the MGT
    volume while its SR is attached here).  The refcounts are kept in
    ``state['lv']``.

    Deactivating an LV some process holds open fails in LVM ("Logical
    volume ... in use"; ``lvutil.deactivateNoRefcount`` raises): the
    node then stays (the LV stays active) and ``state['host']
    ['lv-in-use-at-deactivation']`` gets ``{'lv', 'vg', 'command',
    'pids'}`` (once per time the LV gets stuck).  The xe command itself
    does not fail: SM's detach failures surface in many ways (a VBD
    unplug that errors after the VM's side is gone, a shutdown that
    leaves the VDI attached, a later attach that finds the LV still
    active), none of which a client can act on; the event is what
    tests check."""
    root = str(root)
    counts = refcounts(state)
    events = state['host'].setdefault(IN_USE_EVENTS, [])
    for sr_uuid, sr in state['sr'].items():
        if not is_lvm(sr):
            continue
        store = store_dir(root, sr_uuid)
        if not os.path.isdir(store):
            continue
        names = sorted(n for n in os.listdir(store)
                       if n == MGT or (n.startswith(LV_PREFIX) and
                                       not n.endswith('.new')))
        here = attached_here(state, sr_uuid)
        ddir = dev_dir(root, sr_uuid)
        for name in names:
            attrs = lv_attrs(state, sr_uuid, name)
            count = counts.get((sr_uuid, name), [0, 0])
            if name != MGT:
                attrs['refcount'] = count
            want = here and (name == MGT or sum(count) > 0)
            node = os.path.join(ddir, name)
            have = os.path.lexists(node)
            if want and not have:
                os.makedirs(ddir, exist_ok=True)
                os.symlink(os.path.join(store, name), node)
            if want:
                attrs.pop('stuck', None)
            elif have:
                pids = openers(os.path.join(store, name))
                if pids:
                    if not attrs.get('stuck'):
                        events.append({'lv': name, 'vg': vg_name(sr_uuid),
                                       'command': command, 'pids': pids})
                        attrs['stuck'] = True
                    continue
                os.unlink(node)
                attrs.pop('stuck', None)
        if os.path.isdir(ddir):
            for name in os.listdir(ddir):
                if name not in names:
                    os.unlink(os.path.join(ddir, name))
