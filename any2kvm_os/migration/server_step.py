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

"""``migration cutover --create-server`` and its undoing by ``migration
rollback``: the migration's side of :mod:`any2kvm_os.targets.server`.

The engine calls :meth:`ServerStep.prepare` before it shuts the VM down
(a refusal, no flavor fits or a network is missing, costs no downtime),
:meth:`ServerStep.create` once the volumes are complete and bootable
(the downtime clock stops when the boot is verified), and
:meth:`ServerStep.rollback` to delete the server again (the volumes are
kept).  What the state database keeps of the server (its id, name,
flavor, ports, boot seconds) is not secret.
"""

from any2kvm_os import exception
from any2kvm_os.targets import server as server_mod


class ServerStep(object):
    """``options``: a :class:`~any2kvm_os.targets.server.Options`;
    ``cloud()``: (session, region, interface), asked when first needed;
    ``clients`` (tests): ready :class:`~any2kvm_os.targets.server.Clients`.
    """

    def __init__(self, options=None, cloud=None, clients=None):
        self.options = options or server_mod.Options(create_server=True)
        self.cloud = cloud
        self._clients = clients
        self.plan = None

    def clients(self):
        if self._clients is None:
            if self.cloud is None:
                raise exception.Any2KvmError('--create-server: no cloud '
                                             'given (--os-cloud or OS_*)')
            session, region, interface = self.cloud()
            self._clients = server_mod.Clients(session, region, interface)
        return self._clients

    def check(self, migration):
        """What refuses from the migration's record alone: run before the
        cutover marks the migration (a refusal leaves its status as it
        was)."""
        if migration['target'] != 'cinder':
            raise exception.Any2KvmError(
                'migration %s: --create-server needs a migration into '
                'Cinder volumes (--target cinder at create), not %s'
                % (migration['name'], migration['target']))

    def prepare(self, migration, facts):
        """Everything that can refuse, before the shutdown."""
        self.check(migration)
        self.plan = server_mod.prepare(
            self.clients(), facts, self.options, name=migration['name'],
            disk_count=len(migration['disks']))
        return self.plan

    def discard(self):
        """The cutover failed before the server: undo :meth:`prepare`."""
        if self.plan is not None:
            server_mod.discard(self.plan)

    def create(self, migration, created=None):
        """The server from the volumes, its boot verified (else deleted
        again, and :class:`~any2kvm_os.targets.server.BootError`);
        returns what the cutover records.  ``created(details)``: called
        with the server's id, name and ports as soon as Nova has it."""
        volumes = [{'id': d['target_ref'], 'name': d.get('name')}
                   for d in migration['disks']]

        def made(server):
            if created is not None:
                created(_recorded(server))
        server, boot = server_mod.create_and_boot(self.plan, volumes,
                                                  created=made)
        out = _recorded(server)
        out.update(flavor=server.flavor_name,
                   boot_seconds=round(boot.seconds, 1))
        return out

    def rollback(self, details, migration):
        """Delete the server the cutover made and its ports; the volumes
        are kept (and waited detached); then the flavor ``--create-flavor``
        made for it, unless another server has it since.  Returns the
        server's id."""
        clients = self.clients()
        result = server_mod.rollback(
            clients, server_id=details.get('server_id'),
            volumes=[d['target_ref'] for d in migration['disks']],
            port_ids=details.get('port_ids'), poll=self.options.poll)
        if details.get('created_flavor'):
            server_mod.delete_flavor(clients, details['created_flavor'],
                                     unless_used=True)
        return result['server_id']


def _recorded(server):
    """What the state database keeps of a server as soon as Nova has it:
    what a rollback deletes."""
    out = {'server_id': server.id, 'server_name': server.name,
           'port_ids': list(server.port_ids or ())}
    if server.created_flavor:
        out['created_flavor'] = server.created_flavor
    return out
