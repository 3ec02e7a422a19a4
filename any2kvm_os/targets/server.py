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

"""A Nova server from migrated volumes: plan, create, verify, roll back.

``import ... --target cinder --create-server`` (both command lines) and a
migration's cutover call this library.  Nova is spoken through
python-novaclient at microversion :data:`MICROVERSION` (2.37: ``networks:
none`` and block device mappings v2), Neutron through openstacksdk and
Cinder through python-cinderclient.

The API (stable; the migration cutover builds on it)
----------------------------------------------------

``Options(**kw)`` / ``Options.from_args(args)``
    What the operator asked for: ``create_server``, ``flavor`` (a name or
    id, or ``'auto'``, the default), ``create_flavor``, ``network_map``
    ({source network or ``nicN``: Neutron network name or id}),
    ``keep_macs``, ``no_network``, ``server_name``, ``availability_zone``,
    ``key_name``, ``boot_check`` (a regex; default
    :data:`DEFAULT_BOOT_CHECK`), ``boot_timeout`` (seconds from the
    create request, default 600), ``poll`` (seconds between polls).
    :data:`ARGUMENTS` are the command-line options (declared once, by the
    Cinder target; :func:`add_arguments` adds them to another parser, and
    ``Options.from_args`` reads them back).  ``options.check()`` refuses
    contradictions (``--flavor`` without ``--create-server`` ...).

``Clients(session, region_name=None, interface=None)``
    The Nova, Neutron and Cinder clients, made when first used;
    ``Clients(nova=..., neutron=..., cinder=...)`` takes ready ones (the
    unit tests' :mod:`tests.lib.fakenova`).

``prepare(clients, vm_facts, options, name=None, disk_count=None)``
    -> :class:`Plan`.  Everything that can be refused, checked before any
    disk is written or any VM shut down: the flavor (``auto``: the
    smallest enabled flavor with at least the source's vCPUs and RAM,
    ``plan.reasons`` says why; none fits: refused, the 3 closest listed,
    unless ``create_flavor``), the networks (every source NIC mapped, or
    ``no_network``; mapped networks exist; with ``keep_macs`` every NIC
    has a MAC that no port of its network uses yet).  Read-only, except
    that a flavor asked for with ``create_flavor`` is made here (a refusal
    by policy comes before the disks are written); :func:`discard`
    deletes it again when the disks cannot be written; it is private to
    the credentials' project (``Clients.project_id``).  No server of the
    project may have the name yet.  Raises :class:`ServerError`.  The
    server's name: ``options.server_name``, else ``name``, else the
    source's.

``create(plan, volumes_in_device_order) -> Server``
    One port per NIC on its mapped network (the source MAC with
    ``keep_macs``), then the server: every volume a block device in
    device order, the boot disk (the ``boot_disk`` fact, else disk 0) at
    boot index 0, ``delete_on_termination`` false.  A volume is an id, or
    a dict with ``id`` (and ``name``), as the Cinder target's results
    are.  On failure the ports, the server and a flavor made by
    ``prepare`` are deleted, the volumes kept, and :class:`ServerError`
    names them; a server made by a request whose answer never came is
    found by its :data:`REQUEST_KEY` metadata and deleted too.

``wait_boot(server, timeout=None, boot_check=None, poll=None) -> Boot``
    Waits for ACTIVE (ERROR: :class:`BootError` with Nova's fault), then
    polls ``os-getConsoleOutput`` until ``boot_check`` matches a line:
    ``Boot.seconds`` (from the create request), ``Boot.active_seconds``,
    ``Boot.line``; ``boot.message()`` is "boot verified after N s".
    Otherwise :class:`BootError` with ``console_tail`` (the last
    :data:`TAIL_LINES` lines).  A transient error
    (:data:`any2kvm_os.clients.TRANSIENT_CODES`, a failed connection) is
    asked again until the timeout.  Deletes
    nothing.

``rollback(clients, server=None, server_id=None, volumes=(), ...)``
    -> dict.  Deletes the server, the ports any2kvm made for it (and
    ``port_ids``), keeps the volumes and waits until they are detached.
    It waits (up to 300 s) until Nova answers 404 for the server: a
    server Nova still shows as DELETED counts as not gone yet (one still
    shown DELETED after that is logged as a warning, not an error).
    With neither ``server`` nor ``server_id`` the server is found from
    the volumes' attachments (a cutover that died before it saved the
    id).  Returns {'server_id', 'ports_deleted', 'volumes_kept'}.

``create_and_boot(plan, volumes) -> (Server, Boot)``
    :func:`create` then :func:`wait_boot`; when the boot is not verified,
    :func:`rollback` and :class:`BootError` (console tail, the volumes
    kept named).

``delete_flavor(clients, flavor_id, unless_used=False) -> bool``
    Deletes a flavor ``create_flavor`` made (a migration's rollback:
    kept while a server has it); failures are warnings.

``Server`` has ``id``, ``name``, ``flavor`` (id), ``flavor_name``,
``port_ids``, ``volumes`` ([{'id', 'name'}]), ``created_flavor`` (the id
of a flavor made by ``prepare`` or None) and ``to_dict()``.
"""

import logging
import re
import time
import uuid

from any2kvm_os import clients as _clients
from any2kvm_os import exception
from any2kvm_os.targets import base

LOG = logging.getLogger(__name__)

#: Block device mapping v2 and ``networks: none`` (2.37).
MICROVERSION = '2.37'
#: A login prompt, cloud-init's finished line, or the guest's own line.
DEFAULT_BOOT_CHECK = (r'login:|Cloud-init v\. \S+ finished|'
                      r'ANY2KVM-BOOT-OK')
DEFAULT_BOOT_TIMEOUT = 600
#: ``--boot-check ACTIVE``: Nova's ACTIVE is taken for the boot, with no
#: console line: for a guest that writes nothing on its serial console
#: (Windows), whose boot cannot be proven there.
BOOT_CHECK_ACTIVE = 'ACTIVE'
#: Console lines shown when the boot is not verified.
TAIL_LINES = 15
#: What the ports any2kvm makes say of themselves.
PORT_DESCRIPTION = 'made by any2kvm for server %s'
#: How the names of the flavors ``--create-flavor`` makes begin.
CREATED_FLAVOR_PREFIX = 'any2kvm-'
#: The server's metadata key holding its create request's token: the
#: server of a request whose answer never came (^C, a timeout, a 5xx
#: from a proxy) is found by it, and deleted.
REQUEST_KEY = 'any2kvm_request'
FLAVOR_PAGE = 1000
MiB = 1 << 20


class ServerError(exception.Any2KvmError):
    """The server cannot be planned or created (nothing left behind but
    the volumes, which the message names)."""


class BootError(ServerError):
    """The server did not reach ACTIVE or its boot was not verified."""

    def __init__(self, message, server_id=None, console_tail=(),
                 fault=None):
        super(BootError, self).__init__(message)
        self.server_id = server_id
        self.console_tail = list(console_tail)
        self.fault = fault
        #: Whether the server was deleted again (:func:`create_and_boot`).
        self.deleted = False


# -- options ------------------------------------------------------------------

def parse_network_map(text):
    """``SRC=NET[,SRC=NET...]`` as an ordered dict."""
    import argparse
    result = {}
    for item in (text or '').split(','):
        item = item.strip()
        if not item:
            continue
        src, sep, net = item.partition('=')
        if not sep or not src.strip() or not net.strip():
            raise argparse.ArgumentTypeError(
                'expected SOURCE_NET=NETWORK[,...], got %r' % item)
        result[src.strip()] = net.strip()
    return result


def _positive(text):
    import argparse
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError('expected seconds > 0, got %r'
                                         % text)
    return value


def _regex(text):
    import argparse
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError('not a regular expression: %s'
                                         % e)
    return text


def _merge_maps(values):
    result = {}
    for value in values or ():
        result.update(value)
    return result


_CS = ' (--target cinder --create-server)'

#: The command-line options of server creation, in display order.
ARGUMENTS = (
    base.Argument('--create-server', 'create_server', action='store_true',
                  help='create a Nova server from the volumes and verify '
                       'that it boots (--target cinder); on failure the '
                       'server and its ports are deleted, the volumes '
                       'kept'),
    base.Argument('--flavor', 'flavor', metavar='NAME|auto',
                  help='flavor of the server: a name or id, or auto (the '
                       'smallest enabled flavor with at least the '
                       'source\'s vCPUs and RAM; the default)' + _CS),
    base.Argument('--create-flavor', 'create_flavor', action='store_true',
                  help='with --flavor auto, create a flavor of the '
                       'source\'s vCPUs and RAM when none fits' + _CS),
    base.Argument('--network-map', 'network_map', metavar='SRC=NET[,...]',
                  type=parse_network_map, action='append',
                  convert=_merge_maps,
                  help='the Neutron network (name or id) of each source '
                       'network (its name, or nicN for the Nth NIC); '
                       'repeatable' + _CS),
    base.Argument('--keep-macs', 'keep_macs', action='store_true',
                  help='give each port the MAC of its source NIC' + _CS),
    base.Argument('--no-network', 'no_network', action='store_true',
                  help='create the server without NICs (networks: '
                       'none)' + _CS),
    base.Argument('--server-name', 'server_name', metavar='NAME',
                  help='name of the server (default: --name)' + _CS),
    base.Argument('--availability-zone', 'availability_zone',
                  metavar='ZONE', help='availability zone of the '
                                       'server' + _CS),
    base.Argument('--key-name', 'key_name', metavar='KEYPAIR',
                  help='key pair of the server' + _CS),
    base.Argument('--boot-check', 'boot_check', metavar='REGEX',
                  type=_regex,
                  help='console line that proves the boot (default: a '
                       'login prompt, cloud-init\'s finished line or '
                       'ANY2KVM-BOOT-OK; the guest must write it on its '
                       'serial console); ACTIVE: Nova\'s ACTIVE is '
                       'enough, no proof (a Windows guest)' + _CS),
    base.Argument('--boot-timeout', 'boot_timeout', metavar='SECONDS',
                  type=_positive,
                  help='how long the boot may take, from the create '
                       'request (default: %d)' % DEFAULT_BOOT_TIMEOUT
                       + _CS),
)

#: The keywords the options give (the Cinder target's constructor).
OPTION_KEYS = tuple(arg.key for arg in ARGUMENTS)


def add_arguments(parser_or_group):
    """Add :data:`ARGUMENTS` to an argparse parser (``migration cutover``);
    read them back with :meth:`Options.from_args`."""
    for arg in ARGUMENTS:
        parser_or_group.add_argument(arg.flag, **arg.kwargs)


class Options(object):
    """What the operator asked of the server (see the module's doc)."""

    def __init__(self, create_server=False, flavor=None,
                 create_flavor=False, network_map=None, keep_macs=False,
                 no_network=False, server_name=None,
                 availability_zone=None, key_name=None, boot_check=None,
                 boot_timeout=None, poll=2.0):
        self.create_server = bool(create_server)
        self.flavor = flavor or 'auto'
        self.flavor_given = flavor is not None
        self.create_flavor = bool(create_flavor)
        self.network_map = dict(network_map or {})
        self.keep_macs = bool(keep_macs)
        self.no_network = bool(no_network)
        self.server_name = server_name
        self.availability_zone = availability_zone
        self.key_name = key_name
        self.boot_check = boot_check or DEFAULT_BOOT_CHECK
        self.boot_check_given = boot_check is not None
        self.boot_timeout = boot_timeout or DEFAULT_BOOT_TIMEOUT
        self.poll = poll

    @classmethod
    def from_args(cls, args, **extra):
        """The options of parsed ``args`` (:func:`add_arguments`)."""
        kw = {}
        for arg in ARGUMENTS:
            if arg.given(args):
                kw[arg.key] = arg.value(args)
        kw.update(extra)
        return cls(**kw)

    def given(self):
        """The flags given besides ``--create-server``."""
        flags = []
        for arg in ARGUMENTS[1:]:
            default = Options()
            if arg.key == 'flavor':
                changed = self.flavor_given
            elif arg.key == 'boot_check':
                changed = self.boot_check_given
            else:
                changed = getattr(self, arg.key) != getattr(default,
                                                            arg.key)
            if changed:
                flags.append(arg.flag)
        return flags

    def check(self):
        """Refuse what contradicts itself, in one line."""
        if not self.create_server:
            given = self.given()
            if given:
                raise ServerError('%s: only with --create-server'
                                  % ', '.join(given))
            return self
        if self.no_network and (self.network_map or self.keep_macs):
            raise ServerError('--no-network contradicts %s' % (
                '--network-map' if self.network_map else '--keep-macs'))
        if self.create_flavor and self.flavor != 'auto':
            raise ServerError('--create-flavor goes with --flavor auto '
                              '(not %s)' % self.flavor)
        return self


# -- clients ------------------------------------------------------------------

class Clients(object):
    """Nova (novaclient at :data:`MICROVERSION`), Neutron (openstacksdk's
    network proxy) and Cinder (cinderclient), made when first used."""

    def __init__(self, session=None, region_name=None, interface=None,
                 nova=None, neutron=None, cinder=None, project_id=None):
        self.session = session
        self.region_name = region_name
        self.interface = interface
        self._nova = nova
        self._neutron = neutron
        self._cinder = cinder
        self._project_id = project_id

    @property
    def project_id(self):
        """The project the credentials are scoped to (None: unknown)."""
        if self._project_id is None and self.session is not None:
            try:
                self._project_id = self.session.get_project_id()
            except Exception as e:
                LOG.debug('No project id from the session: %s', e)
        return self._project_id

    @property
    def nova(self):
        if self._nova is None:
            from novaclient import client
            kw = {}
            if self.region_name:
                kw['region_name'] = self.region_name
            if self.interface:
                kw['endpoint_type'] = self.interface
            self._nova = client.Client(MICROVERSION, session=self.session,
                                       **kw)
        return self._nova

    @property
    def neutron(self):
        if self._neutron is None:
            from openstack import connection
            kw = {}
            if self.region_name:
                kw['region_name'] = self.region_name
            if self.interface:
                kw['interface'] = self.interface
            self._neutron = connection.Connection(
                session=self.session, **kw).network
        return self._neutron

    @property
    def cinder(self):
        if self._cinder is None:
            self._cinder = _clients.cinder_client(
                self.session, self.region_name, self.interface)
        return self._cinder


def _cloud_error(what, e):
    if isinstance(e, exception.Any2KvmError):
        return e
    text = ' '.join(str(e).split())[:500]
    return ServerError('%s: %s: %s' % (what, type(e).__name__, text))


def _asked_again(call, what, deadline, poll):
    """``call()``, asked again every ``poll`` seconds while it fails with
    a :func:`any2kvm_os.clients.transient` error and ``deadline``
    (time.monotonic()) has not passed: a service that restarts, or
    answers 503 for a moment, does not end a wait that may cost a
    server (and a cutover's downtime).  Any other error, or the last
    transient one, is raised."""
    while True:
        try:
            return call()
        except Exception as e:
            if not _clients.transient(e) or \
                    time.monotonic() + poll > deadline:
                raise
            LOG.warning('%s: %s (%s); asking again in %.0f s', what,
                        type(e).__name__, ' '.join(str(e).split())[:200],
                        poll)
        time.sleep(poll)


# -- flavors ------------------------------------------------------------------

def _attr(obj, key, default=None):
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _flavor_text(f):
    return '%s (%s vCPU, %s MiB RAM)' % (_attr(f, 'name'), _attr(f, 'vcpus'),
                                         _attr(f, 'ram'))


def _enabled(f):
    return not _attr(f, 'OS-FLV-DISABLED:disabled', False)


def list_flavors(nova):
    """Every flavor the user sees, page by page."""
    flavors = []
    marker = None
    while True:
        page = nova.flavors.list(detailed=True, limit=FLAVOR_PAGE,
                                 marker=marker)
        flavors.extend(page)
        if len(page) < FLAVOR_PAGE:
            return flavors
        marker = _attr(page[-1], 'id')


def _closest(flavors, cpus, ram):
    def shortfall(f):
        return (max(0, cpus - f.vcpus) / float(cpus) +
                max(0, ram - f.ram) / float(ram), f.ram, f.vcpus, f.name)
    return sorted(flavors, key=shortfall)[:3]


def _extra_disks(flavor):
    """Whether ``flavor`` gives the server disks of its own (ephemeral,
    swap)."""
    return bool(getattr(flavor, 'OS-FLV-EXT-DATA:ephemeral', 0) or
                getattr(flavor, 'ephemeral', 0) or
                (getattr(flavor, 'swap', 0) not in (0, '', None)))


def choose_flavor(flavors, cpus, ram):
    """(flavor, reason) of ``auto``: the smallest enabled flavor with at
    least ``cpus`` vCPUs and ``ram`` MiB; (None, the closest 3) when none
    fits."""
    # A flavor with an ephemeral or swap disk adds a disk between the
    # volumes (the guest's second disk would come third): not chosen.
    enabled = [f for f in flavors if _enabled(f) and not _extra_disks(f)]
    fits = [f for f in enabled if f.vcpus >= cpus and f.ram >= ram]
    if not fits:
        return None, _closest(enabled, cpus, ram)
    fits.sort(key=lambda f: (f.ram, f.vcpus, f.disk or 0, f.name))
    best = fits[0]
    reason = ('flavor auto: %s, the smallest of %d enabled flavor(s) with '
              'at least the source\'s %d vCPU and %d MiB RAM' % (
                  _flavor_text(best), len(fits), cpus, ram))
    return best, reason


# -- the plan -----------------------------------------------------------------

class Plan(object):
    """What :func:`prepare` checked, for :func:`create`."""

    def __init__(self, clients, options, name, flavor, nics, boot_disk,
                 disk_count, reasons, created_flavor=None):
        self.clients = clients
        self.options = options
        #: The server's name.
        self.name = name
        #: The novaclient flavor.
        self.flavor = flavor
        #: [{'index', 'source' (the NIC's facts), 'network_id',
        #:   'network_name', 'mac' (None: Neutron's)}] in device order.
        self.nics = nics
        #: Which volume boots (index in device order).
        self.boot_disk = boot_disk
        self.disk_count = disk_count
        #: What the operator should be told (the flavor's choice ...).
        self.reasons = reasons
        #: The id of a flavor made by --create-flavor, or None.
        self.created_flavor = created_flavor


def _flavor_for(clients, facts, options, notes):
    nova = clients.nova
    cpus = facts.get('cpus')
    ram = facts.get('memory_mb')
    if options.flavor != 'auto':
        flavor = None
        try:
            flavor = nova.flavors.get(options.flavor)
        except Exception as e:
            if not _clients.not_found(e) and _clients.http_code(e) != 400:
                raise _cloud_error('nova: flavor %s' % options.flavor, e)
        if flavor is None:
            named = [f for f in list_flavors(nova)
                     if f.name == options.flavor]
            if len(named) != 1:
                raise ServerError('--flavor %s: %s' % (
                    options.flavor, 'no such flavor' if not named else
                    '%d flavors have that name; give its id' % len(named)))
            flavor = named[0]
        if isinstance(ram, int) and flavor.ram < ram:
            # The volumes' min_ram is the source's RAM: Nova would refuse
            # the flavor at the spawn, after the shutdown.
            raise ServerError(
                '--flavor %s: %d MiB RAM, less than the source\'s %d MiB, '
                'which the volumes ask for (min_ram): Nova would refuse it; '
                'give a bigger flavor, or --flavor auto' % (
                    options.flavor, flavor.ram, ram))
        if isinstance(cpus, int) and flavor.vcpus < cpus:
            notes.append('flavor %s has fewer vCPUs than the source (%d)'
                         % (_flavor_text(flavor), cpus))
        notes.append('flavor %s, as given' % _flavor_text(flavor))
        return flavor, None
    if not isinstance(cpus, int) or not isinstance(ram, int) or \
            cpus <= 0 or ram <= 0:
        raise ServerError('--flavor auto: the source does not say its '
                          'vCPUs and RAM; give --flavor NAME')
    flavor, reason = choose_flavor(list_flavors(nova), cpus, ram)
    if flavor is not None:
        notes.append(reason)
        return flavor, None
    closest = reason
    if not options.create_flavor:
        raise ServerError(
            '--flavor auto: no enabled flavor has at least the source\'s '
            '%d vCPU and %d MiB RAM; closest: %s; give --flavor NAME or '
            '--create-flavor' % (cpus, ram, '; '.join(
                _flavor_text(f) for f in closest) or 'none'))
    flavor, made = _create_flavor(clients, cpus, ram)
    notes.append('flavor auto: none fits the source\'s %d vCPU and %d MiB '
                 'RAM; %s %s, private to project %s (--create-flavor)'
                 % (cpus, ram, 'created' if made else 'another run created',
                    _flavor_text(flavor), clients.project_id))
    return flavor, made


#: How long a flavor another run has just made (``--create-flavor``'s
#: 409) is looked for: that run gives the project access to it with its
#: next request.
FLAVOR_RACE_SECONDS = 10
FLAVOR_RACE_POLL = 1.0


def _create_flavor(clients, cpus, ram):
    """``--create-flavor``: a flavor of ``cpus`` and ``ram`` (no root
    disk: the server boots from its volumes), private to the credentials'
    project, so that other projects' flavor lists do not fill up with
    one flavor per migrated VM.  Its name says its size and the project
    (flavor names are unique in the whole cloud): a second VM of the
    same size in the project finds it with ``--flavor auto``.  Returns
    (flavor, its id when made here, else None: another run made it
    meanwhile)."""
    nova = clients.nova
    project = clients.project_id
    if not project:
        raise ServerError('--create-flavor: the cloud credentials name no '
                          'project, which the private flavor would be for; '
                          'scope them to a project')
    name = '%s%dvcpu-%dmb-%s' % (CREATED_FLAVOR_PREFIX, cpus, ram,
                                 project[:8])
    try:
        # (No description: python-novaclient refuses one below
        # microversion 2.55, and any2kvm speaks 2.37.)
        flavor = nova.flavors.create(name, ram, cpus, 0, is_public=False)
    except Exception as e:
        if _clients.http_code(e) == 409:
            # Another run made it since the list was read (two VMs of
            # one size at once): taken as it is, not made here.  Until
            # that run has given the project access (its next request)
            # the list does not show it: looked for a few seconds.
            deadline = time.monotonic() + FLAVOR_RACE_SECONDS
            while True:
                made = [f for f in list_flavors(nova) if f.name == name and
                        _enabled(f) and f.vcpus == cpus and f.ram == ram]
                if made:
                    return made[0], None
                if time.monotonic() >= deadline:
                    break
                time.sleep(FLAVOR_RACE_POLL)
            raise ServerError(
                '--create-flavor: a flavor named %s exists, and --flavor '
                'auto could not use it (disabled, or another project\'s); '
                'give --flavor NAME' % name)
        raise _cloud_error('--create-flavor: flavor %s' % name, e)
    try:
        nova.flavor_access.add_tenant_access(flavor, project)
    except BaseException as e:
        delete_flavor(clients, flavor.id)
        if isinstance(e, Exception):
            raise _cloud_error('--create-flavor: access to flavor %s for '
                               'project %s' % (name, project), e)
        raise
    return flavor, flavor.id


def delete_flavor(clients, flavor_id, unless_used=False):
    """Delete a flavor ``--create-flavor`` made; with ``unless_used``,
    kept while a server (of any project, as far as the credentials see)
    still has it.  Returns whether it is gone; a failure is a warning
    (a flavor left over costs nothing but a line in the admin's list)."""
    nova = clients.nova
    try:
        if unless_used:
            users = nova.servers.list(search_opts={
                'flavor': flavor_id, 'all_tenants': True}, limit=1)
            if users:
                LOG.warning('Flavor %s (made by --create-flavor) kept: '
                            'server %s has it', flavor_id,
                            _attr(users[0], 'id'))
                return False
        nova.flavors.delete(flavor_id)
    except Exception as e:
        if _clients.not_found(e):
            return True
        LOG.warning('Could not delete flavor %s: %s', flavor_id,
                    _cloud_error('nova', e))
        return False
    LOG.info('Flavor %s (made by --create-flavor) deleted', flavor_id)
    return True


def _nic_key(index, nic):
    return nic.get('network') or 'nic%d' % index


def _nics_for(clients, facts, options):
    nics = list(facts.get('nics') or ())
    if options.no_network:
        return []
    if not nics:
        if options.network_map:
            raise ServerError('--network-map %s: the source has no NIC' %
                              ', '.join(sorted(options.network_map)))
        return []
    names = {}
    for index, nic in enumerate(nics):
        names['nic%d' % index] = index
        if nic.get('network'):
            names.setdefault(nic['network'], index)
    stray = [src for src in options.network_map if src not in names and
             src not in [n.get('network') for n in nics]]
    if stray:
        raise ServerError('--network-map %s: no source NIC is on %s (the '
                          'NICs: %s)' % (', '.join(stray), 'it' if len(
                              stray) == 1 else 'them', _nic_list(nics)))
    unmapped = []
    plan = []
    for index, nic in enumerate(nics):
        net = options.network_map.get('nic%d' % index) or \
            options.network_map.get(nic.get('network') or '')
        if net is None:
            unmapped.append(index)
        plan.append({'index': index, 'source': dict(nic), 'network': net})
    if unmapped:
        raise ServerError(
            'unmapped NIC(s): %s; map them with --network-map SRC=NET[,...] '
            'or give --no-network' % _nic_list(
                [nics[i] for i in unmapped], unmapped))
    neutron = clients.neutron
    found = {}
    for entry in plan:
        net = entry['network']
        if net not in found:
            try:
                network = neutron.find_network(net, ignore_missing=True)
            except Exception as e:
                raise _cloud_error('--network-map: network %s' % net, e)
            if network is None:
                raise ServerError('--network-map: no Neutron network %s'
                                  % net)
            found[net] = network
        entry['network_id'] = found[net].id
        entry['network_name'] = found[net].name
        entry['mac'] = None
        if options.keep_macs:
            mac = (entry['source'].get('mac') or '').lower()
            if not mac:
                raise ServerError('--keep-macs: NIC %s has no MAC' %
                                  _nic_list([entry['source']],
                                            [entry['index']]))
            # Neutron keeps a MAC unique within a network, not across
            # networks: a port elsewhere with it is no obstacle.
            twin = [e['index'] for e in plan[:plan.index(entry)]
                    if e['mac'] == mac and
                    e['network_id'] == entry['network_id']]
            if twin:
                raise ServerError('--keep-macs: NICs %d and %d have the '
                                  'same MAC %s and map to the same network '
                                  '%s' % (twin[0], entry['index'], mac,
                                          entry['network_name']))
            try:
                used = list(neutron.ports(mac_address=mac,
                                          network_id=entry['network_id']))
            except Exception as e:
                raise _cloud_error('neutron: ports with MAC %s' % mac, e)
            if used:
                raise ServerError('--keep-macs: MAC %s of NIC %d is used by '
                                  'port %s on network %s' % (
                                      mac, entry['index'], used[0].id,
                                      entry['network_name']))
            entry['mac'] = mac
    return plan


def _nic_list(nics, indexes=None):
    out = []
    for pos, nic in enumerate(nics):
        index = indexes[pos] if indexes is not None else pos
        bits = [nic.get('network') or 'no network']
        if nic.get('mac'):
            bits.append(nic['mac'])
        if nic.get('model'):
            bits.append(nic['model'])
        out.append('nic%d (%s)' % (index, ', '.join(bits)))
    return ', '.join(out)


def _windows(facts):
    """Whether the VM's facts (the source's, and the guest's properties
    when inspected) say Windows."""
    from any2kvm_os import properties
    guest = facts.get('guest_properties') or {}
    return guest.get('os_type') == 'windows' or (
        not guest.get('os_type') and
        properties.guess_distro(facts) == 'windows')


#: Nova's absolute limits a server takes from: (limit, used, what the
#: server asks, its name).
_QUOTAS = (('maxTotalInstances', 'totalInstancesUsed', lambda f: 1,
            'instances'),
           ('maxTotalCores', 'totalCoresUsed', lambda f: f.vcpus, 'cores'),
           ('maxTotalRAMSize', 'totalRAMUsed', lambda f: f.ram, 'RAM (MiB)'))


def _check_quota(clients, flavor):
    """The project's quota has room for a server of ``flavor`` (Nova's
    absolute limits; -1 is none): else refused now, not by Nova at the
    create request after a cutover's shutdown.  Limits that cannot be
    read are not checked."""
    try:
        absolute = clients.nova.limits.get(reserved=False).absolute
        limits = dict((a.name, a.value) for a in absolute)
    except Exception as e:
        LOG.debug('Nova limits not read: %s', e)
        return
    for cap, used, asks, what in _QUOTAS:
        limit = limits.get(cap)
        if not isinstance(limit, int) or limit < 0:
            continue
        have = limit - (limits.get(used) or 0)
        need = asks(flavor)
        if need > have:
            raise ServerError('quota: the server needs %d of %s, and the '
                              'project has %d left of %d; raise the quota or '
                              'free some' % (need, what, max(0, have),
                                             limit))


def _check_names(clients, options):
    """``--key-name`` and ``--availability-zone`` name what exists: Nova
    would refuse them only at the create request, after a cutover's
    shutdown."""
    nova = clients.nova
    if options.key_name:
        try:
            nova.keypairs.get(options.key_name)
        except Exception as e:
            if _clients.not_found(e):
                raise ServerError('--key-name %s: no such key pair (of the '
                                  'user the cloud credentials name)'
                                  % options.key_name)
            raise _cloud_error('nova: key pair %s' % options.key_name, e)
    if options.availability_zone:
        try:
            zones = [z.zoneName for z in
                     nova.availability_zones.list(detailed=False)]
        except Exception as e:
            raise _cloud_error('nova: availability zones', e)
        if options.availability_zone.split(':')[0] not in zones:
            raise ServerError('--availability-zone %s: no such zone '
                              '(there are: %s)' % (
                                  options.availability_zone,
                                  ', '.join(sorted(zones)) or 'none'))


def _name_filter(name):
    """Nova's ``name`` filter (a regular expression, applied by each
    database in its own dialect: MySQL's, PostgreSQL's, Python's for
    SQLite and for servers still being built) for ``name``: anchored,
    every run of characters but letters, digits and ``_`` matched by
    ``.*``, which reads the same in every dialect (MySQL before 8.0.4
    matches bytes: one ``.`` would not match a character of two bytes);
    the caller keeps the exact matches."""
    return '^%s$' % re.sub(r'[^A-Za-z0-9_]+', '.*', name)


def _named(clients, name):
    """The servers of the project named ``name`` exactly: every page
    (``limit=-1``), so that a name among more servers than a page holds
    is not missed."""
    found = clients.nova.servers.list(
        search_opts={'name': _name_filter(name)}, limit=-1)
    return [s for s in found if _attr(s, 'name') == name]


def _check_unused(clients, name):
    """No server of the project has the name yet: an import or a cutover
    run again by a script must not make a second server of the VM (Nova
    allows names twice), with the same volumes' data and MACs."""
    try:
        same = _named(clients, name)
    except Exception as e:
        raise _cloud_error('nova: servers named %s' % name, e)
    if same:
        ours = [s for s in same if (_attr(s, 'metadata') or {}).get(
            REQUEST_KEY)]
        if ours:
            same = ours
            # Made by any2kvm: an earlier run's (a cutover's whose
            # answer never came may have its volumes): another name
            # would make a second server of them.
            raise ServerError(
                'server %s exists already (%s, %s), made by an earlier '
                'any2kvm run: delete it ("migration rollback" when a '
                'cutover made it), or give --server-name if it is another '
                'VM\'s' % (name, _attr(same[0], 'id'),
                           _attr(same[0], 'status')))
        raise ServerError('server %s exists already (%s, %s); give '
                          '--server-name, or delete it first' % (
                              name, _attr(same[0], 'id'),
                              _attr(same[0], 'status')))


def prepare(clients, vm_facts, options, name=None, disk_count=None):
    """The :class:`Plan` of a server for a VM with ``vm_facts``; refused
    (:class:`ServerError`) before anything is written.  The server is
    named ``options.server_name``, else ``name``, else the source VM's
    name."""
    options.check()
    facts = dict(vm_facts or {})
    name = name or facts.get('name') or 'any2kvm-server'
    boot_disk = facts.get('boot_disk') or 0
    if not isinstance(boot_disk, int) or boot_disk < 0 or (
            disk_count is not None and boot_disk >= disk_count):
        raise ServerError('the source boots from disk %r, which it does not '
                          'have' % (boot_disk,))
    reasons = []
    _check_names(clients, options)
    _check_unused(clients, options.server_name or name)
    if not options.boot_check_given and _windows(facts):
        # Windows writes nothing on the serial console Nova reads: the
        # default check would wait --boot-timeout, then delete the
        # server (in a cutover, with the VM down all the while).
        raise ServerError('the source is Windows, which writes nothing on '
                          'the serial console where the boot is checked: '
                          'give --boot-check ACTIVE (Nova\'s ACTIVE, no '
                          'proof of the boot) or a pattern it does write')
    # The networks first: their refusal leaves nothing behind, a flavor
    # made by --create-flavor would have to be deleted.
    nics = _nics_for(clients, facts, options)
    flavor, created = _flavor_for(clients, facts, options, reasons)
    try:
        _check_quota(clients, flavor)
    except ServerError:
        if created:
            delete_flavor(clients, created, unless_used=True)
        raise
    if options.no_network:
        reasons.append('no network (--no-network)')
    for nic in nics:
        reasons.append('nic%d (%s) -> network %s%s' % (
            nic['index'], nic['source'].get('network') or 'no network',
            nic['network_name'], ', MAC %s' % nic['mac'] if nic['mac']
            else ''))
    if boot_disk:
        reasons.append('boots from disk %d (the source says so)'
                       % boot_disk)
    return Plan(clients, options, options.server_name or name, flavor, nics,
                boot_disk, disk_count, reasons, created)


def discard(plan):
    """Undo :func:`prepare` (the disks could not be written): delete the
    flavor it made."""
    if plan.created_flavor:
        # (Kept while a server has it: the next VM of its size may have
        # taken it since.)
        delete_flavor(plan.clients, plan.created_flavor, unless_used=True)
        plan.created_flavor = None


def _check_flavor(plan):
    """The plan's flavor still exists at the create request: a flavor
    ``--create-flavor`` made for another VM of this size, which this plan
    took, may have been deleted by that VM's failed run since (it was
    unused then).  Made again with ``create_flavor``; else refused."""
    nova = plan.clients.nova
    try:
        nova.flavors.get(plan.flavor.id)
        return
    except Exception as e:
        if not _clients.not_found(e):
            return      # Nova will say at the create request.
    if not plan.options.create_flavor or not \
            plan.flavor.name.startswith(CREATED_FLAVOR_PREFIX):
        # (Only a flavor --create-flavor makes is made again: of another
        # one any2kvm knows neither the extra specs nor why it went.)
        raise ServerError('flavor %s was deleted since the server was '
                          'planned' % _flavor_text(plan.flavor))
    flavor, made = _create_flavor(plan.clients, plan.flavor.vcpus,
                                  plan.flavor.ram)
    LOG.info('Flavor %s was deleted since the plan: made again (%s)',
             plan.flavor.id, flavor.id)
    plan.flavor = flavor
    plan.created_flavor = made or plan.created_flavor


# -- creating -----------------------------------------------------------------

class Server(object):
    """A server :func:`create` made."""

    def __init__(self, clients, id, name, flavor, flavor_name, port_ids,
                 volumes, created_flavor, options, started):
        self.clients = clients
        self.id = id
        self.name = name
        self.flavor = flavor
        self.flavor_name = flavor_name
        self.port_ids = list(port_ids)
        self.volumes = list(volumes)
        self.created_flavor = created_flavor
        self.options = options
        #: time.monotonic() of the create request.
        self.started = started

    def to_dict(self):
        return {'id': self.id, 'name': self.name, 'flavor': self.flavor,
                'flavor_name': self.flavor_name,
                'port_ids': list(self.port_ids),
                'volumes': [dict(v) for v in self.volumes],
                'created_flavor': self.created_flavor}


def _volumes(volumes):
    out = []
    for v in volumes:
        if isinstance(v, str):
            out.append({'id': v, 'name': v})
        else:
            vid = _attr(v, 'id')
            out.append({'id': vid, 'name': _attr(v, 'name') or vid})
    return out


def _volume_list(volumes):
    return ', '.join('%s (%s)' % (v['name'], v['id']) if v['name'] !=
                     v['id'] else v['id'] for v in volumes)


def block_devices(volumes, boot_disk=0):
    """The ``block_device_mapping_v2`` of ``volumes`` (ids in device
    order)."""
    bdm = []
    order = [boot_disk] + [i for i in range(len(volumes)) if i != boot_disk]
    for boot_index, index in enumerate(order):
        bdm.append({'uuid': volumes[index], 'source_type': 'volume',
                    'destination_type': 'volume', 'boot_index': boot_index,
                    'delete_on_termination': False})
    return bdm


def _make_ports(plan, name):
    neutron = plan.clients.neutron
    made = []
    try:
        for nic in plan.nics:
            kw = {'network_id': nic['network_id'],
                  'name': '%s-nic%d' % (name, nic['index']),
                  'description': PORT_DESCRIPTION % name}
            if nic['mac']:
                kw['mac_address'] = nic['mac']
            port = neutron.create_port(**kw)
            made.append(port.id)
    except BaseException:
        _delete_ports(neutron, made)
        raise
    return made


def create_ports(plan, name=None):
    """The ports of ``plan`` (ids, in NIC order); :func:`create` makes
    them itself.  For a check of the NIC mapping without a server."""
    return _make_ports(plan, name or plan.name)


def _delete_ports(neutron, port_ids):
    deleted = []
    for port_id in port_ids:
        try:
            neutron.delete_port(port_id, ignore_missing=True)
            deleted.append(port_id)
        except Exception as e:
            LOG.warning('Could not delete port %s: %s', port_id, e)
    return deleted


def create(plan, volumes_in_device_order):
    """Ports, then the server (see the module's doc); :class:`Server`."""
    volumes = _volumes(volumes_in_device_order)
    if plan.disk_count is not None and len(volumes) != plan.disk_count:
        raise ServerError('server %s: %d volume(s) given for %d disk(s)' %
                          (plan.name, len(volumes), plan.disk_count))
    if plan.boot_disk >= len(volumes):
        raise ServerError('server %s: no volume for boot disk %d' % (
            plan.name, plan.boot_disk))
    nova = plan.clients.nova
    opts = plan.options
    port_ids = []
    server_id = None
    asked = False
    token = uuid.uuid4().hex
    try:
        _check_flavor(plan)
        port_ids = _make_ports(plan, plan.name)
        kw = {}
        if opts.availability_zone:
            kw['availability_zone'] = opts.availability_zone
        if opts.key_name:
            kw['key_name'] = opts.key_name
        nics = [{'port-id': p} for p in port_ids] if port_ids else 'none'
        started = time.monotonic()
        asked = True
        created = nova.servers.create(
            plan.name, None, plan.flavor.id, meta={REQUEST_KEY: token},
            block_device_mapping_v2=block_devices(
                [v['id'] for v in volumes], plan.boot_disk),
            nics=nics, **kw)
        server_id = created.id
    except BaseException as e:
        code = _clients.http_code(e)
        refused = code is not None and 400 <= code < 500 and \
            code not in _clients.TRANSIENT_CODES
        try:
            if server_id is None and asked and not refused:
                # The answer never came: Nova may have made the server
                # all the same.  Found by the request's token, it goes
                # too.
                _delete_requested(plan.clients, plan.name, token,
                                  poll=opts.poll)
            if server_id is not None:
                _delete_server(plan.clients, server_id, poll=opts.poll)
        finally:
            # (Even when a second ^C stops the search for the server.)
            _delete_ports(plan.clients.neutron, port_ids)
            discard(plan)
        err = _cloud_error('nova: server %s' % plan.name, e) if \
            isinstance(e, Exception) else e
        if isinstance(err, exception.Any2KvmError):
            error = ServerError('%s; volumes kept: %s' % (
                err, _volume_list(volumes)))
            # No server can exist: Nova was not asked, or refused the
            # request (4xx); a timeout or a 5xx may have made one.
            error.no_server = server_id is None and (not asked or refused)
            raise error from e
        raise
    LOG.info('Server %s (%s) requested', plan.name, server_id)
    return Server(plan.clients, server_id, plan.name, plan.flavor.id,
                  plan.flavor.name, port_ids, volumes, plan.created_flavor,
                  opts, started)


#: How long a create request whose answer never came is looked for (the
#: API may still be handling it when a proxy gives up).
REQUEST_LOOKUP_SECONDS = 30


def _delete_requested(clients, name, token, poll=2.0):
    """Delete the servers named ``name`` made by the create request of
    ``token`` (:data:`REQUEST_KEY`): its answer never came.  Looked for
    up to :data:`REQUEST_LOOKUP_SECONDS`; when none is found (Nova may
    not have made it yet), or one cannot be deleted, the operator is
    told where to look."""
    look = ('a server %s may exist all the same (metadata %s=%s): look '
            'with "openstack server list --name %s" and delete it'
            % (name, REQUEST_KEY, token, name))
    deadline = time.monotonic() + REQUEST_LOOKUP_SECONDS
    LOG.warning('The create request of server %s got no answer: looking '
                'for the server it may have made (up to %d s)', name,
                REQUEST_LOOKUP_SECONDS)
    while True:
        try:
            found = [s for s in _named(clients, name) if (
                _attr(s, 'metadata') or {}).get(REQUEST_KEY) == token]
        except Exception as e:
            LOG.warning('The create request of server %s got no answer, '
                        'and the servers could not be listed (%s): %s',
                        name, _cloud_error('nova', e), look)
            return
        if found or time.monotonic() + max(poll, 1.0) > deadline:
            break
        time.sleep(max(poll, 1.0))
    if not found:
        LOG.warning('The create request of server %s got no answer, and '
                    'Nova showed no server of it in %d s: %s', name,
                    REQUEST_LOOKUP_SECONDS, look)
    for srv in found:
        LOG.warning('The create request of server %s got no answer: '
                    'deleting the server it made (%s)', name, srv.id)
        try:
            _delete_server(clients, srv.id, poll=poll)
        except BaseException as e:
            LOG.warning('Could not delete server %s (%s): %s', srv.id, e,
                        look)
            if not isinstance(e, Exception):
                raise


# -- booting ------------------------------------------------------------------

class Boot(object):
    """A verified boot."""

    def __init__(self, seconds, active_seconds, line):
        #: From the create request to the matching console line.
        self.seconds = seconds
        #: From the create request to ACTIVE.
        self.active_seconds = active_seconds
        #: The console line that matched.
        self.line = line

    def message(self):
        return 'boot verified after %.0f s (ACTIVE after %.0f s): %s' % (
            self.seconds, self.active_seconds, self.line)

    def to_dict(self):
        return {'seconds': round(self.seconds, 1),
                'active_seconds': round(self.active_seconds, 1),
                'line': self.line}


def _console(nova, server_id):
    try:
        return nova.servers.get_console_output(server_id) or ''
    except Exception as e:
        # Not there yet (404/409 until the guest writes).
        LOG.debug('No console output of %s yet: %s', server_id, e)
        return None


def _tail(text):
    lines = [line.rstrip('\r') for line in (text or '').splitlines()]
    lines = [line for line in lines if line.strip()]
    return lines[-TAIL_LINES:]


def wait_boot(server, timeout=None, boot_check=None, poll=None):
    """Wait for ACTIVE, then for ``boot_check`` on the console; a
    :class:`Boot` or :class:`BootError` (see the module's doc)."""
    opts = server.options
    timeout = timeout or (opts.boot_timeout if opts else
                          DEFAULT_BOOT_TIMEOUT)
    pattern = re.compile(boot_check or (opts.boot_check if opts else
                                        DEFAULT_BOOT_CHECK))
    poll = poll if poll is not None else (opts.poll if opts else 2.0)
    nova = server.clients.nova
    deadline = server.started + timeout
    active = None
    text = None
    status = None
    while True:
        now = time.monotonic()
        if active is None:
            try:
                got = _asked_again(lambda: nova.servers.get(server.id),
                                   'nova: server %s' % server.id,
                                   deadline, poll)
            except Exception as e:
                raise BootError('server %s (%s): %s' % (
                    server.name, server.id, _cloud_error('nova', e)),
                    server.id)
            status = got.status
            if status == 'ACTIVE':
                active = now - server.started
                LOG.info('Server %s ACTIVE after %.0f s', server.name,
                         active)
            elif status == 'ERROR':
                fault = getattr(got, 'fault', None) or {}
                message = ' '.join(str(fault.get('message') or
                                       'no fault given').split())
                raise BootError('server %s (%s) went to ERROR: %s' % (
                    server.name, server.id, message), server.id,
                    fault=message)
        if active is not None and pattern.pattern == BOOT_CHECK_ACTIVE:
            return Boot(active, active, 'ACTIVE (--boot-check ACTIVE: no '
                        'console line asked for)')
        if active is not None:
            got_text = _console(nova, server.id)
            if got_text is not None:
                text = got_text
                for line in text.splitlines():
                    if pattern.search(line):
                        return Boot(time.monotonic() - server.started,
                                    active, line.strip())
        if now > deadline:
            tail = _tail(text)
            if active is None:
                what = 'still %s' % status
            else:
                what = 'ACTIVE, but no console line matched %r' % (
                    pattern.pattern)
            raise BootError('server %s (%s): boot not verified: %s after '
                            '%d s; last console lines: %s' % (
                                server.name, server.id, what, timeout,
                                ' | '.join(tail) if tail else '(none)'),
                            server.id, console_tail=tail)
        time.sleep(poll)


# -- rolling back -------------------------------------------------------------

def _delete_server(clients, server_id, timeout=300, poll=2.0):
    nova = clients.nova
    deadline = time.monotonic() + timeout
    what = 'nova: server %s' % server_id
    try:
        _asked_again(lambda: nova.servers.delete(server_id), what, deadline,
                     poll)
    except Exception as e:
        if _clients.not_found(e):
            return
        raise _cloud_error('nova: deleting server %s' % server_id, e)
    status = None
    while time.monotonic() < deadline:
        try:
            got = _asked_again(lambda: nova.servers.get(server_id), what,
                               deadline, poll)
        except Exception as e:
            if _clients.not_found(e):
                return
            raise _cloud_error('nova: server %s' % server_id, e)
        # A deleted server may still be shown, status DELETED, for a
        # moment: wait for it to be gone (404), so that nothing lists it
        # once the rollback has returned.
        status = got.status
        time.sleep(poll)
    if status == 'DELETED':
        LOG.warning('Server %s is deleted but still listed (status '
                    'DELETED) %d s after its deletion', server_id, timeout)
        return
    raise ServerError('server %s still %s %d s after its deletion'
                      % (server_id, status, timeout))


def servers_of(clients, volumes):
    """The ids of the servers ``volumes`` are attached to."""
    found = []
    for v in _volumes(volumes):
        try:
            volume = clients.cinder.volumes.get(v['id'])
        except Exception as e:
            raise _cloud_error('cinder: volume %s' % v['id'], e)
        for att in getattr(volume, 'attachments', None) or ():
            sid = att.get('server_id')
            if sid and sid not in found:
                found.append(sid)
    return found


def _our_ports(clients, server_id):
    try:
        ports = list(clients.neutron.ports(device_id=server_id))
    except Exception as e:
        LOG.warning('Could not list the ports of server %s: %s', server_id,
                    e)
        return []
    return [p.id for p in ports if (_attr(p, 'description') or '')
            .startswith(PORT_DESCRIPTION.split('%')[0])]


def _wait_detached(clients, volumes, timeout=300, poll=2.0):
    deadline = time.monotonic() + timeout
    for v in volumes:
        while True:
            try:
                volume = clients.cinder.volumes.get(v['id'])
            except Exception as e:
                LOG.warning('Volume %s: %s', v['id'], e)
                break
            if volume.status == 'available':
                break
            if time.monotonic() > deadline:
                LOG.warning('Volume %s still %s', v['id'], volume.status)
                break
            time.sleep(poll)


def rollback(clients, server=None, server_id=None, volumes=(),
             port_ids=None, wait=True, poll=2.0):
    """Delete the server and the ports any2kvm made for it; keep the
    volumes (see the module's doc)."""
    volumes = _volumes(volumes or (server.volumes if server else ()))
    if server is not None:
        server_id = server.id
        if port_ids is None:
            port_ids = server.port_ids
    ids = [server_id] if server_id else servers_of(clients, volumes)
    if len(ids) > 1:
        raise ServerError('volumes %s are attached to %d servers (%s); '
                          'give the server' % (_volume_list(volumes),
                                               len(ids), ', '.join(ids)))
    ports = list(port_ids or ())
    for sid in ids:
        for pid in _our_ports(clients, sid):
            if pid not in ports:
                ports.append(pid)
        _delete_server(clients, sid, poll=poll)
    deleted = _delete_ports(clients.neutron, ports)
    if wait and volumes:
        _wait_detached(clients, volumes, poll=poll)
    return {'server_id': ids[0] if ids else None, 'ports_deleted': deleted,
            'volumes_kept': [v['id'] for v in volumes]}


def _undo(plan, server):
    """The server of a boot not verified deleted with its ports, and a
    flavor made for it (--create-flavor: a cutover run again makes its
    own); None when done, else the error that stopped it."""
    try:
        rollback(plan.clients, server, poll=plan.options.poll)
    except Exception as e:
        return e
    discard(plan)
    return None


def create_and_boot(plan, volumes_in_device_order, created=None):
    """:func:`create`, :func:`wait_boot`; rolled back when the boot is not
    verified (see the module's doc), and when the wait is interrupted
    (Ctrl-C, SIGTERM: the server is deleted, then the interruption goes
    on).  ``created(server)``: called once Nova has the server, before
    its boot is waited for (the caller records its id)."""
    server = create(plan, volumes_in_device_order)
    try:
        if created is not None:
            created(server)
        boot = wait_boot(server)
    except BootError as e:
        undone = _undo(plan, server)
        error = BootError('%s; %s; volumes kept: %s' % (
            e, 'server and its ports deleted' if undone is None
            else 'rollback failed: %s' % undone,
            _volume_list(server.volumes)), server.id,
            console_tail=e.console_tail, fault=e.fault)
        error.deleted = undone is None
        raise error from e
    except BaseException as e:
        # Interrupted, or another error: the server goes (a second
        # interruption stops that; its id is recorded: "migration
        # rollback" deletes it).
        undone = _undo(plan, server)
        if undone is None:
            LOG.warning('server %s deleted (its boot was not verified); '
                        'volumes kept: %s', server.id,
                        _volume_list(server.volumes))
            e.deleted, e.server_id = True, server.id
        else:
            LOG.warning('server %s could not be deleted (%s): "migration '
                        'rollback" deletes it', server.id, undone)
        raise
    return server, boot
