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

"""Reading "the next n bytes" from a source that may return fewer.

One read of a pipe, an HTTP body or a decompressor (a stream), or one
pread(2) of a network or FUSE file system or one a signal interrupts,
may return fewer bytes than asked for while more are there: fewer is the
end only when a read returns nothing.  :func:`gather` is the loop both
kinds share (:func:`any2kvm_os.compression.read_full`,
:func:`any2kvm_os.fileio.pread_full`).
"""


def gather(read, n, first=b''):
    """Up to ``n`` bytes: ``first`` (what a first read returned, if any)
    and the pieces ``read(got)`` returns, ``got`` being the number of
    bytes gathered so far, until there are ``n`` or a piece is empty
    (the end).  Fewer than ``n`` bytes only at the end."""
    parts = [first]
    got = len(first)
    while got < n:
        data = read(got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b''.join(parts)
