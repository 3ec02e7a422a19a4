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

"""Differencing VHD chains written by FATtools, with their write models.

Each builder writes a chain through FATtools' own ``Image.write`` and the
same bytes into :class:`imagegen.RawModel` (the truth); see ``imagegen``.
"""

import math
import shutil
from pathlib import Path

from tests.lib import imagegen as ig

KiB, MiB = ig.KiB, ig.MiB


# ---------------------------------------------------------------------------
# the shared chains (the functional conftest builds them once per session)
# ---------------------------------------------------------------------------

SIMPLE_SIZE = 8 * ig.MiB


def build_simple_chain(directory):
    """3 levels, 8 MiB, writes on 4 KiB boundaries (whole bitmap bytes).

    Simple enough for libvhdi 20210425 to be a valid second opinion.
    """
    MiB, KiB, p = ig.MiB, ig.KiB, ig.pattern
    c = ig.FatChain(directory, SIMPLE_SIZE)
    c.base('l0.vhd', [
        (0, p(1, 2 * MiB)),                       # block 0 full
        (2 * MiB + 64 * KiB, p(2, 128 * KiB)),    # block 1 partial
        (4 * MiB, p(3, 1 * MiB)),                 # block 2 half
    ])                                            # block 3: nowhere
    c.child('l1.vhd', [
        (4 * KiB, p(4, 8 * KiB)),                 # inside parent data
        (2 * MiB + 64 * KiB, bytes(64 * KiB)),    # zeros over parent data
        (4 * MiB + 512 * KiB, p(5, 1 * MiB)),     # straddles parent's end
    ])
    c.child('l2.vhd', [
        (8 * KiB, p(6, 4 * KiB)),
        (0, bytes(4 * KiB)),                      # zeros over base data
        (4 * MiB + 1 * MiB, bytes(256 * KiB)),    # zeros over l1 data
    ])
    return c


COMPLEX_SIZE = 10 * ig.MiB + 1536   # 6 blocks, the last one partial


def build_complex_chain(directory):
    """3 levels with partial sector-bitmap bytes, odd offsets, zero writes.

    libvhdi 20210425 misreads this kind of chain: the model is the truth.
    """
    MiB, KiB, p = ig.MiB, ig.KiB, ig.pattern
    end = COMPLEX_SIZE
    c = ig.FatChain(directory, COMPLEX_SIZE)
    c.base('l0.vhd', [
        (0, p(11, 2 * MiB)),                      # block 0 full
        (2 * MiB, p(12, 64 * KiB)),               # block 1 partial
        (4 * MiB, p(13, 2 * MiB)),                # block 2 full
        (10 * MiB, p(14, 1536)),                  # last, partial block
    ])                                            # blocks 3, 4: nowhere
    c.child('l1.vhd', [
        (5 * 512, p(15, 3 * 512)),                # bitmap byte 0: bits 5-7
        (13 * 512, p(16, 512)),                   # bitmap byte 1: bit 5 only
        (1 * MiB + 100, p(17, 700)),              # unaligned, inside sectors
        (4 * MiB, bytes(1 * MiB)),                # zeros over parent data
        (6 * MiB + 4 * KiB, p(18, 100 * KiB)),    # block only in l1
        (10 * MiB + 512, bytes(512)),             # zero the middle sector
    ])
    c.child('l2.vhd', [
        (6 * 512, bytes(512)),                    # zeros over l1 data
        (2 * MiB, p(19, 2 * MiB)),                # block 1 replaced whole
        (4 * MiB + 512 * KiB + 3, p(20, 5000)),   # unaligned in zeroed area
        (6 * MiB + 8 * KiB, bytes(8 * KiB)),      # zeros over l1 data
        (8 * MiB + 17 * 512, bytes(4 * KiB)),     # zeros where nothing is
        (end - 512, p(21, 512)),                  # last sector of the disk
    ])
    return c


def relocate(chain, dest, names):
    """Move a chain's files into ``dest`` under new ``names`` (base first).

    The originals are gone afterwards, so the parent locators FATtools wrote
    (absolute path and ``.\\name``) point at nothing: parents can only be
    found by unique id (or, for archives, by member number).
    Returns the new paths, base first.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for layer, name in zip(chain.layers, names):
        target = dest / name
        shutil.move(layer.path, target)
        out.append(target)
    return out


# ---------------------------------------------------------------------------
# a grown child over a shrunk parent
# ---------------------------------------------------------------------------
#
# FATtools cannot make a differencing VHD larger than its parent: mk_diff
# copies the parent's footer (size) and BAT length, and Image.expand() only
# grows *dynamic* disks and gives them a new unique id (breaking the link).
# Two constructions, both documented byte for byte; this is A, and B (the
# "patched child") is in tests/functional/test_vhd_chains.py.
#
# A) "shrunk parent": FATtools writes a 16 MiB dynamic base (data below and
#    beyond 7 MiB), mk_diff makes a 16 MiB child, and FATtools writes the
#    child, including whole sectors beyond 7 MiB.  Only then is the BASE
#    patched down to 7 MiB: footer current/original size and CHS geometry
#    in both footer copies (checksums fixed) and the dynamic header's
#    max_table_entries to ceil(7 MiB / 2 MiB) = 4 (checksum fixed).  Its
#    unique id is unchanged, so the link holds.  Everything else -- the BAT,
#    bitmaps, data, the whole child -- is FATtools' output.  The base keeps
#    data past its new size (inside its last block and in BAT slots past
#    max_table_entries): the reader must treat it as zeros.
#    Child writes beyond 7 MiB are sector-aligned so that FATtools never
#    copies pre-shrink parent bytes into the child.
#
# libvhdi 20210425 sizes layers by the original size and cannot read through
# grown children: only the model is used.

GROW_S = 7 * MiB
GROW_L = 16 * MiB


def build_grown_shrunk_parent(directory):
    """Construction A; returns (chain, base model, child model)."""
    p = ig.pattern
    base_writes = [
        (0, p(201, 2 * MiB)),                      # inside S
        (6 * MiB, p(202, 1 * MiB + 512 * KiB)),    # 6..7.5 MiB: crosses S
        (9 * MiB, p(203, 1 * MiB)),                # block 4: wholly past S
        (14 * MiB, p(204, 2 * MiB)),               # last block, past S
    ]
    child_writes = [
        (1 * MiB + 7, p(205, 3000)),               # inside S, unaligned
        (6 * MiB + 512 * KiB, bytes(4 * KiB)),     # zeros inside S
        (7 * MiB + 256 * KiB, p(206, 64 * KiB)),   # past S, parent's block 3
        (12 * MiB, p(207, 1 * MiB)),               # past S, new block
        (GROW_L - 1024, p(208, 1024)),             # last two sectors
    ]
    c = ig.FatChain(directory, GROW_L)
    c.base('base.vhd', base_writes)
    c.child('child.vhd', child_writes)
    base = c.layers[0].path
    ig.patch_footer(base, current_size=GROW_S, original_size=GROW_S,
                    geometry=ig.chs_geometry(GROW_S))
    ig.patch_header(base, max_table_entries=math.ceil(GROW_S / ig.VHD_BLOCK))

    # expected, written independently: the base's writes clipped to S
    base_model = ig.RawModel(GROW_S)
    for off, data in base_writes:
        if off < GROW_S:
            base_model.write(off, data[:GROW_S - off])
    child_model = base_model.copy()
    child_model.resize(GROW_L)
    for off, data in child_writes:
        child_model.write(off, data)
    return c, base_model, child_model
