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

"""The one SSH layer of every hypervisor source (XenServer, Hyper-V, ESXi).

* :mod:`.options`: the connection options (``OPTIONS``, group
  ``[any2kvm]``, ``ssh_*``), :class:`~.options.Settings` read from them,
  :class:`~.options.HostOptions` (one host: user, host, port, identity
  file, known_hosts, pinned host keys, password variable) and the
  command-line options every SSH source shares
  (:func:`~.options.add_arguments`).
* :mod:`.hostkeys`: host key verification against known_hosts (OpenSSH
  format, hashed entries, ``[host]:port``) or pinned ``SHA256:``
  fingerprints.  An unknown or changed key is refused; nothing is ever
  accepted on first use.
* :mod:`.credentials`: passwords, only from an environment variable or a
  prompt on a terminal, and the log filter that keeps them out of logs.
* :mod:`.connection`: :class:`~.connection.Connection`: authentication,
  keepalives, reconnection with backoff, ``run(argv)`` and
  ``open_file(path)``.
* :mod:`.remotefile`: :class:`~.remotefile.RemoteFile`, a remote file
  with the interface of :class:`any2kvm_os.fileio.FileView`, read over
  SFTP with pipelined requests.

See doc/source/contributor/ssh.rst for the security model.
"""
