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
of the storage repository they came from, so they are useless here: the
chain is the numbering, and every link is checked by unique id
(``i.vhd``'s parent id must be ``(i+1).vhd``'s id).

A plain tar is read in place.  A compressed one is consumed in one pass:
each member is applied to the output as soon as everything below it has
been applied (base first); a member that arrives earlier is kept in a
private, bounded scratch directory until its turn.
"""

import contextlib
import logging
import os
import re

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


def _link_error(archive, i, parent_id, next_id):
    if next_id is None:
        return exception.ChainError(
            path='%s:%d.vhd' % (archive, i), reason='missing parent %s: '
            '%d.vhd is differencing and is the last member'
            % (parent_id, i))
    return exception.ChainError(
        path='%s:%d.vhd' % (archive, i), reason='parent-id mismatch: '
        'expects parent %s, %d.vhd has id %s' % (parent_id, i + 1, next_id))


def check_links(archive, layers):
    """``layers``: [(index, id, parent_id)] in index order; verify links."""
    for pos, (i, _ident, parent_id) in enumerate(layers):
        nxt = layers[pos + 1] if pos + 1 < len(layers) else None
        if parent_id is None:
            if nxt is not None:
                raise exception.ChainError(
                    path='%s:%d.vhd' % (archive, i), reason='is a base disk '
                    '(no parent) but %d.vhd follows it' % nxt[0])
            continue
        if nxt is None or nxt[1] != parent_id:
            raise _link_error(archive, i, parent_id,
                              nxt[1] if nxt else None)


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
            check_links(path, [
                (i, lay.identity, lay.parent_ref.id if lay.parent_ref
                 else None) for i, lay in enumerate(layers)])
            self.chain = layer_chain.LayerChain(
                layers, [self.container.display_name('%d.vhd' % i)
                         for i in range(n + 1)],
                ['%d.vhd' % i for i in range(n + 1)])
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
        n = check_numbering(self.path, list(facts))
        check_links(self.path, [(i, facts[i]['id'], facts[i]['parent_id'])
                                for i in range(n + 1)])
        return [facts[i] for i in range(n + 1)]

    def write_to(self, target, progress=None):
        """Apply base first onto ``target``; returns the layer facts."""
        with scratch.Scratch.for_limits(
                self.limits, os.path.dirname(os.path.abspath(target.path))
        ) as space:
            return self._write(target, space, progress)

    def _write(self, target, space, progress):
        applied = []       # (index, id, parent_id), base first
        pending = {}       # index -> scratch path
        seen = set()

        def applicable(index, layer):
            if not applied:
                return layer.is_base
            # The next one down: apply() verifies its link by id.
            return index == applied[-1][0] - 1

        def apply(index, stream):
            layer = _peek_layer(stream.name, stream)
            layer.read_headers(stream)
            first = not applied
            if first and not layer.is_base:
                raise exception.ChainError(
                    path=stream.name, reason='expected a base disk')
            if not first:
                last_index, last_id, _ = applied[-1]
                if layer.parent_id != last_id:
                    raise _link_error(self.path, index, layer.parent_id,
                                      last_id)
            if layer.virtual_size is not None:
                target.resize(layer.virtual_size)
            if first and not target.fresh and not layer.fixed:
                target.zero_range(0, layer.virtual_size)
            over_hole = first and target.fresh
            for off, data in layer.data_runs(stream):
                target.write_data(off, data, over_hole=over_hole)
                if progress:
                    progress(off + len(data), None)
            if layer.fixed:
                target.resize(layer.virtual_size)
            applied.append((index, layer.identity, layer.parent_id))
            LOG.info('Applied %s (%s)', stream.name, layer.identity)

        def drain_pending():
            while applied and applied[-1][0] - 1 in pending:
                index = applied[-1][0] - 1
                path = pending.pop(index)
                with open(path, 'rb') as f:
                    size = os.fstat(f.fileno()).st_size
                    apply(index, fileio.ForwardStream(
                        f, '%s:%d.vhd' % (self.path, index), size))
                os.unlink(path)

        for index, stream in self._members():
            seen.add(index)
            if applicable(index, _peek_layer(stream.name, stream)):
                apply(index, stream)
                drain_pending()
            else:
                pending[index] = _spill(space, stream)
        n = check_numbering(self.path, list(seen))
        if not applied:
            # No base disk came: the highest member has a parent outside.
            with open(pending[n], 'rb') as f:
                size = os.fstat(f.fileno()).st_size
                stream = fileio.ForwardStream(
                    f, '%s:%d.vhd' % (self.path, n), size)
                layer = _peek_layer(stream.name, stream)
                layer.read_headers(stream)
                raise _link_error(self.path, n, layer.parent_id, None)
        if applied[0][0] != n:
            raise exception.ChainError(
                path='%s:%d.vhd' % (self.path, applied[0][0]),
                reason='is a base disk (no parent) but %d.vhd follows it'
                % (applied[0][0] + 1))
        drain_pending()
        if applied[-1][0] != 0 or pending:
            raise exception.ChainError(
                path=self.path, reason='chain could not be completed: '
                '%s left over' % ', '.join('%d.vhd' % i for i in pending))
        return applied


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
