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

"""A snapshot chain: its layers, leaf first, resolved by unique id.

The resolver asks a layer for its parent's id and looks for that id among
the other files of the same container.  Names written inside the image
(locators, parent names) decide only the order in which files are tried.
The fold turns the chain into one extent map: for each range, the newest
layer that says something about it wins; ranges beyond a layer's own size
read as zeros for everything above it.
"""

import logging
import posixpath

from any2kvm_os import exception
from any2kvm_os import extents as ext
from any2kvm_os.formats import base
from any2kvm_os.formats import probe

LOG = logging.getLogger(__name__)

#: Granularity of the fold: large enough to keep the Python overhead low,
#: small enough that a window's extent list stays short.
FOLD_WINDOW = 64 << 20


class LayerChain(object):
    """Layers leaf first; ``layers[-1]`` is the base."""

    def __init__(self, layers, names, member_names=None):
        self.layers = layers
        #: How each layer is named in messages and ``info``.
        self.names = names
        #: The layers' names inside their container.
        self.member_names = member_names or names

    @property
    def leaf(self):
        return self.layers[0]

    @property
    def virtual_size(self):
        return self.leaf.virtual_size

    def __len__(self):
        return len(self.layers)

    def _fold(self, i, bottom, start, end, out):
        layer = self.layers[i]
        stop = min(end, layer.virtual_size)
        if start < stop:
            for e in layer.block_status(start, stop - start):
                if e.kind != ext.UNALLOCATED:
                    out.append(e._replace(layer=i))
                elif i < bottom:
                    self._fold(i + 1, bottom, e.offset, e.end, out)
                else:
                    out.append(e._replace(layer=i))
        lo = max(start, layer.virtual_size)
        if lo < end:
            # Beyond this layer's size: zeros, whatever older layers held
            # (a child grown after the snapshot sees zeros there).
            out.append(ext.extent(ext.ZERO, lo, end - lo, layer=i))

    def fold(self, offset, length, top=0, bottom=None):
        """Extents of ``[offset, offset+length)`` seen from layer ``top``,
        folding the layers ``top`` .. ``bottom`` (default: the base).

        UNALLOCATED is returned where none of those layers holds anything:
        for a whole chain that reads as zeros; for a partial chain
        (incremental apply) it means "leave what the target holds".
        """
        if bottom is None:
            bottom = len(self.layers) - 1
        out = []
        end = min(offset + length, self.layers[top].virtual_size)
        if offset < end:
            self._fold(top, bottom, offset, end, out)
        return ext.merge(out)

    def iter_extents(self, window=FOLD_WINDOW, top=0, bottom=None,
                     announced=True):
        """The fold of the whole disk (seen from ``top``), one window at
        a time.  Each window is folded one window ahead of the extents
        yielded, and its DATA extents announced to the layers' files
        (:func:`announce`): a remote file asks for them ahead of the
        reads.  ``announced=False``: not announced (the DATA is read
        elsewhere, by other processes)."""
        size = self.layers[top].virtual_size
        ahead = None
        for off in range(0, size, window):
            extents = self.fold(off, min(window, size - off), top, bottom)
            if announced:
                announce(self.layers, extents)
            if ahead is not None:
                yield from ahead
            ahead = extents
        if ahead is not None:
            yield from ahead

    def describe(self):
        """One dict per layer, leaf first (for ``any2kvm info``)."""
        out = []
        for name, layer in zip(self.member_names, self.layers):
            ref = layer.parent_ref
            out.append({
                'name': name,
                'format': layer.format_name,
                'subformat': layer.subformat,
                'id': layer.identity,
                'parent_id': ref.id if ref else None,
                'virtual_size': layer.virtual_size,
                'allocated_bytes': layer.allocated_bytes(),
                'creator': layer.creator,
            })
            wire = getattr(getattr(layer, 'view', None), 'bytes_read',
                           None)
            if wire is not None:
                # A remote file: its size and the bytes read of it over
                # the wire so far.
                out[-1]['file_size'] = layer.view.size
                out[-1]['wire_bytes'] = wire
        return out


def announce(layers, extents):
    """Tell the files of ``layers`` which of their bytes the DATA
    ``extents`` will read, in order: views with ``will_read`` ask for
    them ahead (a remote file over SFTP; a local file from the kernel).
    Only layers whose DATA extents are read in place take part: the
    linear :meth:`LayerReader.read_extent`, or a reader that says
    ``int_offsets_in_place`` (its DATA extents with an integer
    ``file_offset`` are read in place; the others, compressed, are not
    announced)."""
    ranges = []
    last = None
    for e in extents:
        if e.kind != ext.DATA or e.layer is None:
            continue
        layer = layers[e.layer]
        if last is None or last[0] is not layer:
            will_read = getattr(getattr(layer, 'view', None), 'will_read',
                                None)
            if will_read is None or (
                    type(layer).read_extent is not
                    base.LayerReader.read_extent and
                    not getattr(layer, 'int_offsets_in_place', False)):
                continue
            last = (layer, will_read, [])
            ranges.append(last)
        if isinstance(e.file_offset, int):
            last[2].append((e.file_offset, e.length))
    for _layer, will_read, spans in ranges:
        will_read(spans)


def _try_open(container, name):
    """Open a candidate parent; None if it is no disk image at all."""
    view = container.open_view(name)
    cls = probe.detect(view)
    if cls is None:
        return None
    return cls(view, opener=container.opener(name))


#: qemu's names of our formats (qemu-img's -F).
QEMU_FORMATS = {'vhd': 'vpc'}


def _elsewhere(container, recorded):
    """Whether the backing file name an image records (``recorded``)
    names a file in another directory than the container's: told from
    the names alone (nothing outside the container is looked at)."""
    if not recorded or '/' not in recorded:
        return False
    top = getattr(container, 'directory', None) \
        if getattr(container, 'is_directory', False) else None
    if top is None:
        return posixpath.dirname(posixpath.normpath(recorded)) != ''
    top = posixpath.normpath(posixpath.abspath(top))
    where = posixpath.normpath(posixpath.join(top, recorded))
    return posixpath.dirname(where) != top


def _find_by_name(container, child_name, ref, names, members, child=None):
    """Formats without ids (qcow2): the parent is the member the child
    names, and only a member of the same container.  A name the child
    records in another directory is looked for by its file name in the
    child's (what a chain copied into one directory needs), with a
    warning: qcow2 gives no id to check the parent by."""
    recorded = getattr(child, 'backing_name', None)
    elsewhere = _elsewhere(container, recorded)
    for hint in ref.name_hints:
        if hint in names:
            if elsewhere:
                raise exception.ChainError(
                    path=child_name, reason='backing file %s, in another '
                    'directory, has the name of a file of this chain: '
                    'parents are read from the child\'s directory only; '
                    'copy it beside the child under another name and '
                    'record that name (qemu-img rebase -u -b NAME -F '
                    'FORMAT %s)' % (recorded, container.display_name(
                        names[-1])))
            raise exception.ChainError(
                path=child_name, reason='backing file %s is already in the '
                'chain (cycle)' % hint)
        if hint in members:
            layer = _try_open(container, hint)
            if layer is None:
                unrecorded = child is not None and getattr(
                    child, 'backing_format', '') is None
                raise exception.ChainError(
                    path=child_name, reason='backing file %s is not a disk '
                    'image any2kvm reads%s' % (
                        container.display_name(hint),
                        ' (the image records no backing format; if it is '
                        'raw, record so: qemu-img rebase -u -F raw -b %s '
                        '%s)' % (hint, container.display_name(names[-1]))
                        if unrecorded else ''))
            if elsewhere:
                LOG.warning('%s: its backing file is recorded as %s, in '
                            'another directory; %s beside it is read in its '
                            'place (qcow2 has no id to check it by): make '
                            'sure it is that image, or record it so '
                            '(qemu-img rebase -u -b %s -F %s %s)',
                            child_name, recorded,
                            container.display_name(hint), hint,
                            QEMU_FORMATS.get(layer.format_name,
                                             layer.format_name),
                            container.display_name(names[-1]))
            return hint, layer
    _not_read(container, child_name, ref)
    raise exception.ChainError(
        path=child_name, reason='missing parent %s among the files of %s'
        % (', '.join(ref.name_hints) or '(unnamed)',
           container.path if not container.is_directory else 'its directory'))


def _find_by_id(container, child_name, ref, names, members, scanned):
    """The member whose identity is the child's parent id; names written
    in the child only decide the order in which members are tried."""
    hint_name = getattr(container, 'hint_name', None)
    if hint_name is not None:
        # A container whose members are found by name only (an LVM SR's
        # LVs: opening the others would hold other VMs' volumes): the
        # names the child writes, each opened or refused as it is.
        candidates = []
        for h in ref.name_hints:
            h = hint_name(h)
            if h and h not in names and h not in candidates:
                candidates.append(h)
    else:
        candidates = [h for h in ref.name_hints
                      if h in members and h not in names]
        candidates += [n for n in members
                       if n not in candidates and n not in names]
    mismatch = None
    for name in candidates:
        if scanned.get(name, ref.id) != ref.id:
            continue
        # Named by the child: its failure, or its other id, is the answer.
        named = hint_name is not None or name in ref.name_hints
        try:
            layer = _try_open(container, name)
        except exception.Any2KvmError as e:
            if named:
                raise
            LOG.debug('Skipping %s while looking for %s: %s', name, ref.id,
                      e)
            scanned[name] = None
            continue
        ident = layer.identity if layer is not None else None
        scanned[name] = ident
        if ident == ref.id:
            return name, layer
        if named and mismatch is None:
            mismatch = (name, ident)
    if mismatch:
        raise exception.ChainError(
            path=child_name, reason='parent-id mismatch: %s has id %s, the '
            'child expects %s' % (container.display_name(mismatch[0]),
                                  mismatch[1], ref.id))
    _not_read(container, child_name, ref)
    raise exception.ChainError(
        path=child_name, reason='missing parent %s (named %s) among the '
        'files of %s' % (ref.id, ', '.join(ref.name_hints) or 'nothing',
                         container.path if not container.is_directory
                         else 'its directory'))


def _not_read(container, child_name, ref):
    """Refuse a missing parent that the child names and the container
    listed as something it does not read (a symbolic link): said so,
    not "missing"."""
    not_read = getattr(container, 'not_read', None)
    if not_read is None:
        return
    for hint in ref.name_hints:
        why = not_read(hint)
        if why:
            raise exception.ChainError(
                path=child_name, reason='parent %s%s is %s in its '
                'directory: only regular files are read' % (
                    container.display_name(hint),
                    ' (%s)' % ref.id if ref.id else '', why))


def resolve(container, leaf_name, limits):
    """Build the :class:`LayerChain` of ``leaf_name`` within ``container``."""
    leaf = probe.open_layer(container.open_view(leaf_name),
                            opener=container.opener(leaf_name))
    layers = [leaf]
    names = [leaf_name]
    ids = {leaf.identity} - {None}
    members = [n for n in container.member_names() if n != leaf_name]
    scanned = {}  # name -> identity, for files opened while searching

    while True:
        child = layers[-1]
        child_name = container.display_name(names[-1])
        ref = child.parent_ref
        if ref is None:
            break
        if len(layers) >= limits.max_chain_depth:
            # Named by the file the user gave: the layer where the count
            # ran out is not broken.
            raise exception.ChainError(
                path=container.display_name(leaf_name), reason='its chain '
                'has more than %d layers (%s has a parent still): refused '
                '([any2kvm] max_chain_depth)' % (limits.max_chain_depth,
                                                 child_name))
        if ref.id is None:
            parent = _find_by_name(container, child_name, ref, names,
                                   members, child)
            want = getattr(child, 'parent_format', None)
            if want and parent[1].format_name != want:
                # qemu refuses this too: a backing file of another format
                # than the image records is a format-confusion attack.
                raise exception.ChainError(
                    path=child_name, reason='backing file %s is %s, the '
                    'image says %s' % (container.display_name(parent[0]),
                                       parent[1].format_name, want))
        else:
            if ref.id in ids:
                raise exception.ChainError(
                    path=child_name, reason='parent %s is already in the '
                    'chain (cycle)' % ref.id)
            parent = _find_by_id(container, child_name, ref, names, members,
                                 scanned)
        if parent[1].identity is not None:
            if parent[1].identity in ids:
                raise exception.ChainError(
                    path=child_name, reason='parent %s is already in the '
                    'chain (cycle)' % parent[1].identity)
            ids.add(parent[1].identity)
        names.append(parent[0])
        layers.append(parent[1])
    return LayerChain(layers, [container.display_name(n) for n in names],
                      names)


def reopen_leaf(container, chain):
    """``chain`` (resolved in ``container``) with its leaf opened and read
    again, its other layers as they were: a new :class:`LayerChain`, or
    None when the leaf's file is no longer the same layer (its identity)
    or no longer the child of the chain's next layer (its parent id): then
    :func:`resolve` it anew.

    For a chain resolved while its VM ran (the leaf grows and changes
    under it, the layers below are read-only) and read once the VM is
    halted: only the leaf's metadata crosses the wire again."""
    old = chain.layers[0]
    leaf_name = chain.member_names[0]
    ranges = getattr(old, 'reread_ranges', None)
    if ranges is not None and getattr(container, 'prefetches', False):
        # What the leaf's metadata was read from, asked for at once (a
        # remote file: one round trip with its size, not one per read);
        # the reader reads and checks whatever it needs as always.
        view = container.open_view(leaf_name, prefetch=ranges())
    else:
        view = container.open_view(leaf_name)
    leaf = probe.open_layer(view, opener=container.opener(leaf_name))
    ref = leaf.parent_ref
    if leaf.identity is None or leaf.identity != old.identity:
        return None
    if len(chain.layers) == 1:
        same = ref is None
    else:
        parent = chain.layers[1].identity
        same = (ref is not None and ref.id is not None and
                parent is not None and ref.id == parent)
    if not same:
        return None
    return LayerChain([leaf] + list(chain.layers[1:]), list(chain.names),
                      list(chain.member_names))
