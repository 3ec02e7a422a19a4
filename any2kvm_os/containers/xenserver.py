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

"""XenServer VHD chain archives, as OpenStack stores them in Glance.

A (gzip) tar holds ``0.vhd`` (the leaf, newest) ... ``n.vhd`` (the base).
The parent names inside the VHDs still point at the ``<uuid>.vhd`` files
of the storage repository they came from, so they are useless here.  The
chain is what the unique ids say (each member's parent id is the id of the
member below it); the numbering must be ``0`` .. ``n`` without a gap, but
where it contradicts the ids (``0.vhd`` the base, ``n.vhd`` the leaf, as
older export scripts write) the ids win and a warning names the order
found.  An archive the ids do not order unambiguously is refused: the same
id twice, two base disks, two children of one parent (a branch), a parent
no member has, or a cycle.

A plain tar is read in place.  A compressed one is consumed in one pass:
each member is applied to the output as soon as everything below it has
been applied (base first); a member that arrives earlier is kept in a
private, bounded scratch directory until its turn.
"""

import contextlib
import logging
import os
import re
import uuid

from any2kvm_os import exception
from any2kvm_os import fileio
from any2kvm_os import scratch
from any2kvm_os import vm
from any2kvm_os.chain import layer_chain
from any2kvm_os.containers import base
from any2kvm_os.containers import tar
from any2kvm_os.formats import probe
from any2kvm_os.formats import vhd

LOG = logging.getLogger(__name__)

MEMBER_RE = re.compile(r'^(0|[1-9][0-9]{0,5})\.vhd$')


def member_index(archive, name):
    m = MEMBER_RE.match(name)
    if not m and MEMBER_RE.match(name.rsplit('/', 1)[-1]):
        raise exception.InvalidArchive(
            path=archive, reason='member %r lies in a directory: a XenServer '
            'image holds 0.vhd ... n.vhd at the top of the archive' % name)
    if not m:
        raise exception.InvalidArchive(
            path=archive, reason='unexpected member %r: a XenServer image '
            'holds only 0.vhd ... n.vhd' % name)
    return int(m.group(1))


def check_numbering(archive, indexes):
    """0.vhd .. n.vhd, each once, no gaps; returns n."""
    if 0 not in indexes:
        raise exception.InvalidArchive(
            path=archive, reason='no 0.vhd: not a XenServer VHD chain')
    n = max(indexes)
    missing = sorted(set(range(n + 1)) - set(indexes))
    if missing:
        raise exception.InvalidArchive(
            path=archive, reason='%d.vhd is missing (the chain runs from '
            '0.vhd to %d.vhd)' % (missing[0], n))
    return n


def _link_error(archive, i, parent_id, next_id, noun='archive'):
    if next_id is None:
        return exception.ChainError(
            path='%s:%d.vhd' % (archive, i), reason='missing parent %s: '
            '%d.vhd is differencing and no member of the %s has that '
            'unique id' % (parent_id, i, noun))
    return exception.ChainError(
        path='%s:%d.vhd' % (archive, i), reason='parent-id mismatch: '
        'expects parent %s, %d.vhd has id %s' % (parent_id, i + 1, next_id))


def chain_order(archive, entries, noun='archive'):
    """The chain the unique ids describe.

    ``entries``: ``[(index, id, parent_id)]`` of every member (``id`` None
    only for a base whose id is not known yet).  Returns the indexes leaf
    first.  Refuses whatever the ids leave ambiguous or incomplete: the
    same id twice, two bases, a branch, a missing parent, a cycle.
    """
    entries = sorted(entries)
    by_id = {}
    for i, ident, _parent in entries:
        if ident is None:
            continue
        if ident in by_id:
            raise exception.ChainError(
                path=archive, reason='%d.vhd and %d.vhd have the same unique '
                'id %s: the chain is ambiguous' % (by_id[ident], i, ident))
        by_id[ident] = i
    bases = [i for i, _ident, parent in entries if parent is None]
    if len(bases) > 1:
        raise exception.ChainError(
            path=archive, reason='%s are all base disks (no parent): %s %s '
            'holds one chain with one base'
            % (', '.join('%d.vhd' % i for i in bases),
               'a' if noun[0] not in 'aeiou' else 'an', noun))
    children = {}
    for i, _ident, parent in entries:
        if parent is None:
            continue
        if parent not in by_id:
            raise _link_error(archive, i, parent, None, noun)
        if parent in children:
            raise exception.ChainError(
                path=archive, reason='%d.vhd and %d.vhd both have %d.vhd '
                '(%s) as parent: a branch, not a chain'
                % (children[parent], i, by_id[parent], parent))
        children[parent] = i
    ids = {i: ident for i, ident, _parent in entries}
    order = []
    if bases:
        order.append(bases[0])
        while ids[order[-1]] in children and len(order) <= len(entries):
            order.append(children[ids[order[-1]]])
    if len(order) != len(entries):
        loop = sorted(set(ids) - set(order))
        raise exception.ChainError(
            path=archive, reason='the parent ids of %s form a cycle: no '
            'base disk under them' % ', '.join('%d.vhd' % i for i in loop))
    return order[::-1]


def order_warning(archive, order):
    """Warn when the ids order the members other than their names."""
    if order != sorted(order):
        LOG.warning('%s: the member names contradict the chain; the parent '
                    'ids order it, leaf to base: %s', archive,
                    ', '.join('%d.vhd' % i for i in order))


def directory_chain(container, leaf_name, limits):
    """The chain of an unpacked XenServer archive when the user names its
    ``0.vhd`` (the leaf, by the convention) and the parent ids say that
    another member of the directory is its child: the names are reversed
    (``0.vhd`` the base), and converting ``0.vhd`` alone would silently
    drop every layer above it.  The members ``0.vhd`` .. ``n.vhd`` of the
    directory are then ordered by their ids as in an archive, a warning
    names the order found, and a set the ids leave ambiguous is refused.

    None when this does not apply: ``leaf_name`` is not ``0.vhd`` or not a
    VHD, or no numbered member is its child; the file's own chain is then
    resolved as for any disk file.
    """
    if leaf_name != '0.vhd':
        return None
    numbered = [n for n in container.member_names()
                if MEMBER_RE.match(n) and n != leaf_name]
    if not numbered:
        return None
    leaf = probe.open_layer(container.open_view(leaf_name),
                            opener=container.opener(leaf_name))
    if leaf.format_name != 'vhd' or leaf.identity is None:
        return None
    where = container.directory
    numbered = sorted(numbered, key=lambda n: int(n[:-4]))
    layers = {0: leaf}
    failed = {}
    child_of_leaf = False
    for name in numbered[:limits.max_chain_depth]:
        try:
            layer = probe.open_layer(container.open_view(name),
                                     opener=container.opener(name))
        except exception.Any2KvmError as e:
            failed[name] = e
            continue
        layers[int(name[:-4])] = layer
        ref = layer.parent_ref
        if ref is not None and ref.id == leaf.identity:
            child_of_leaf = True
    if not child_of_leaf:
        return None
    # A reverse-named set: it must be whole and ordered by ids, as an
    # archive (a numbered member that cannot be read is part of it).
    for name, error in failed.items():
        raise error
    n = check_numbering(where, [0] + [int(m[:-4]) for m in numbered])
    if n + 1 > limits.max_chain_depth:
        raise exception.ChainError(
            path=where, reason='chain deeper than %d layers: refused as '
            'absurd (see max_chain_depth)' % limits.max_chain_depth)
    for i, layer in layers.items():
        if layer.format_name != 'vhd':
            raise exception.InvalidArchive(
                path=container.display_name('%d.vhd' % i), reason='not a '
                'VHD (%s) among the XenServer members 0.vhd .. %d.vhd'
                % (layer.format_name, n))
    order = chain_order(where, [
        (i, lay.identity, lay.parent_ref.id if lay.parent_ref else None)
        for i, lay in layers.items()], noun='directory')
    order_warning(where, order)
    return layer_chain.LayerChain(
        [layers[i] for i in order],
        [container.display_name('%d.vhd' % i) for i in order],
        ['%d.vhd' % i for i in order])


class XenServerTar(object):
    """A plain XenServer tar, read in place through a LayerChain."""

    container = 'xenserver-tgz'

    def __init__(self, path, limits):
        self.path = path
        self.container = tar.PlainTarContainer(path, limits)
        try:
            names = self.container.member_names()
            indexes = [member_index(path, n) for n in names]
            n = check_numbering(path, indexes)
            if n + 1 > limits.max_chain_depth:
                raise exception.ChainError(
                    path=path, reason='chain deeper than %d layers: refused '
                    'as absurd (see max_chain_depth)'
                    % limits.max_chain_depth)
            layers = []
            for i in range(n + 1):
                view = self.container.open_view('%d.vhd' % i)
                layers.append(probe.open_layer(view))
            order = chain_order(path, [
                (i, lay.identity, lay.parent_ref.id if lay.parent_ref
                 else None) for i, lay in enumerate(layers)])
            order_warning(path, order)
            self.chain = layer_chain.LayerChain(
                [layers[i] for i in order],
                [self.container.display_name('%d.vhd' % i) for i in order],
                ['%d.vhd' % i for i in order])
        except Exception:
            self.container.close()
            raise

    def close(self):
        self.container.close()


def _spill(space, stream):
    """Store the rest of member ``stream`` in scratch ``space``; return
    the path of the copy."""
    space.reserve(stream.size, '%s (a member out of order)' % stream.name)
    fd, path = space.mkstemp()
    with os.fdopen(fd, 'wb') as f:
        while stream.pos < stream.size:
            f.write(stream.read_exact(min(8 << 20,
                                          stream.size - stream.pos)))
    return path


class _StreamEntry(object):
    def __init__(self, index, layer, stream):
        self.index = index
        self.layer = layer
        self.stream = stream


def _peek_layer(name, stream):
    return vhd.StreamLayer(name, stream.peek(vhd.FOOTER_SIZE), stream.size)


class XenServerStream(vm.Disk):
    """The disk of a compressed XenServer tgz, consumed in one pass."""

    format = 'vhd'
    #: A one-pass archive tells its sizes only as it is read.
    size_hint = None

    def __init__(self, path, limits, opener=None):
        super(XenServerStream, self).__init__(path, 'xenserver-tgz')
        self.path = path
        self._facts = None
        self._warned = False
        self.limits = limits
        #: Returns a new file object of the archive for each pass (a
        #: download: :class:`any2kvm_os.fileio.ChunkReader`); default: the
        #: file at ``path``.
        self._opener = opener or (lambda: open(path, 'rb'))

    def _members(self):
        with contextlib.closing(self._opener()) as f:
            for name, stream in tar.iter_stream_members(self.path, f,
                                                        self.limits):
                index = member_index(self.path, name)
                if index + 1 > self.limits.max_chain_depth:
                    raise exception.ChainError(
                        path=self.path, reason='chain deeper than %d layers: '
                        'refused as absurd (see max_chain_depth)'
                        % self.limits.max_chain_depth)
                yield index, stream

    def describe(self):
        """Per-layer facts, leaf first (the archive is read once, on the
        first call)."""
        if self._facts is None:
            self._facts = self._read_facts()
        return self._facts

    def _warn_order(self, order):
        if not self._warned:
            self._warned = True
            order_warning(self.path, order)

    def _read_facts(self):
        facts = {}
        for index, stream in self._members():
            layer = _peek_layer(stream.name, stream)
            layer.read_headers(stream)
            allocated = 0
            for _off, data in layer.data_runs(stream):
                allocated += len(data)
            if layer.virtual_size is not None:
                allocated = min(allocated, layer.virtual_size)
            facts[index] = {
                'name': '%d.vhd' % index, 'format': 'vhd',
                'subformat': 'fixed' if layer.fixed else
                vhd.SUBFORMATS[layer.footer.disk_type],
                'id': layer.identity, 'parent_id': layer.parent_id,
                'virtual_size': layer.virtual_size,
                'allocated_bytes': allocated,
                'creator': layer.footer.creator_app.decode(
                    'latin-1').rstrip('\x00 '),
            }
        check_numbering(self.path, list(facts))
        order = chain_order(self.path, [
            (i, f['id'], f['parent_id']) for i, f in facts.items()])
        self._warn_order(order)
        return [facts[i] for i in order]

    def write_to(self, target, progress=None):
        """Apply base first onto ``target``; returns the layer facts."""
        with scratch.Scratch.for_limits(
                self.limits, os.path.dirname(os.path.abspath(target.path))
        ) as space:
            return self._write(target, space, progress)

    def _write(self, target, space, progress):
        """Apply each member as soon as the member under it (by unique id)
        has been applied, base first; members that arrive earlier wait in
        ``space``, whatever their names."""
        applied = []       # (index, id, parent_id), base first
        pending = []       # (index, parent_id, scratch path)
        entries = {}       # index -> [id, parent_id]

        def apply(index, stream):
            layer = _peek_layer(stream.name, stream)
            layer.read_headers(stream)
            first = not applied
            if layer.virtual_size is not None:
                target.resize(layer.virtual_size)
            if first and not target.fresh and not layer.fixed:
                target.zero_range(0, layer.virtual_size)
            over_hole = first and target.fresh
            moved = 0
            for off, data in layer.data_runs(stream):
                target.write_data(off, data, over_hole=over_hole)
                moved += len(data)
                if progress:
                    progress(off + len(data), None, moved)
            if layer.fixed:
                target.resize(layer.virtual_size)
            # A fixed disk's id is known once its footer, at the end, is.
            entries[index][0] = layer.identity
            applied.append((index, layer.identity, layer.parent_id))
            LOG.info('Applied %s (%s)', stream.name, layer.identity)

        def applicable(parent):
            if not applied:
                return parent is None
            return parent is not None and parent == applied[-1][1]

        def open_spilled(index, path):
            f = open(path, 'rb')
            size = os.fstat(f.fileno()).st_size
            return f, fileio.ForwardStream(
                f, '%s:%d.vhd' % (self.path, index), size)

        def drain_pending():
            while applied:
                ready = [p for p in pending if applicable(p[1])]
                if not ready:
                    return
                pending.remove(ready[0])
                index, _parent, path = ready[0]
                f, stream = open_spilled(index, path)
                with f:
                    apply(index, stream)
                os.unlink(path)
                space.release(stream.size)

        for index, stream in self._members():
            layer = _peek_layer(stream.name, stream)
            parent = _peek_parent(layer, stream)
            if parent is _UNKNOWN:
                # Its dynamic header lies too far to peek: keep the member
                # and read its parent id from the copy.
                path = _spill(space, stream)
                f, copy = open_spilled(index, path)
                with f:
                    spilled = _peek_layer(copy.name, copy)
                    spilled.read_headers(copy)
                    parent = spilled.parent_id
                entries[index] = [spilled.identity, parent]
                pending.append((index, parent, path))
                drain_pending()
                continue
            entries[index] = [layer.identity, parent]
            if applicable(parent):
                apply(index, stream)
                drain_pending()
            else:
                pending.append((index, parent, _spill(space, stream)))
        check_numbering(self.path, list(entries))
        order = chain_order(self.path, [
            (i, ident, parent) for i, (ident, parent) in entries.items()])
        drain_pending()
        if pending or len(applied) != len(order):
            raise exception.ChainError(
                path=self.path, reason='chain could not be completed: '
                '%s left over' % ', '.join('%d.vhd' % p[0] for p in pending))
        self._warn_order(order)
        return applied


_UNKNOWN = object()

#: How far into a member its dynamic header may lie to be peeked at before
#: the member is consumed (vhd-util, qemu and Hyper-V put it at 512).
_PEEK_LIMIT = 64 << 10


def _peek_parent(layer, stream):
    """The parent id of a member not consumed yet: None for a base,
    ``_UNKNOWN`` when its dynamic header lies too far to peek at."""
    if layer.is_base:
        return None
    end = layer.footer.data_offset + vhd.DYN_HEADER_SIZE
    if layer.footer.data_offset < vhd.FOOTER_SIZE or end > _PEEK_LIMIT:
        return _UNKNOWN
    head = stream.peek(end)
    hdr = vhd.parse_dynamic_header(head[layer.footer.data_offset:],
                                   stream.name)
    return str(uuid.UUID(bytes=bytes(hdr.parent_unique_id)))


def head_is_xenserver(head):
    """Whether the first bytes of an archive start with a XenServer member
    (``0.vhd`` ... ``n.vhd``): such an archive can be consumed in one pass
    as it arrives."""
    ti = tar.head_first_member(head)
    return ti is not None and ti.isreg() and \
        MEMBER_RE.match(tar.normalise(ti.name)) is not None


class XenServerArchiveType(base.ContainerType):
    name = 'xenserver-tgz'
    description = 'a XenServer tar/tgz of 0.vhd (leaf) .. n.vhd (base)'
    noun = 'a XenServer VHD chain archive'
    archive_title = 'XenServer tar/tgz'
    # Any tar or compressed file the other plugins leave: asked last.
    priority = 10
    glance_kinds = {'xenserver-tgz': ('ovf', None)}

    def probe(self, view, path, limits):
        return tar.looks_like_tar(view) or tar.is_compressed(view)

    def open(self, path, limits):
        with fileio.FileView.open_path(path) as view:
            compressed = tar.is_compressed(view)
        if compressed:
            disk = XenServerStream(path, limits)
        else:
            xs = XenServerTar(path, limits)
            disk = vm.ChainDisk(path, self.name, xs.chain, closer=xs.close)
        return vm.Vm(path, self.name, [disk])

    def probe_head(self, head):
        return head_is_xenserver(head)

    def open_stream(self, label, limits, opener, fallback):
        return vm.Vm(label, self.name,
                     [XenServerStream(label, limits, opener=opener)])
