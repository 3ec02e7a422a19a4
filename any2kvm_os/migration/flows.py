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

"""The migration commands as TaskFlow flows, recorded in the state
database.

A command (``sync``, ``cutover``, ``rollback``, ``abort``) is a linear
flow of tasks (:class:`Step`) that :func:`run` runs with a TaskFlow
engine on the store's persistence backend
(:meth:`~any2kvm_os.migration.state.api.Store.flow_backend`: TaskFlow's
SQLAlchemy backend in the same database).  Each migration has one
logbook; each command run adds a flow detail to it, whose atom details
record every task's state (PENDING, RUNNING, SUCCESS, FAILURE,
REVERTED...), its result (small figures) or its failure.  A run cut
short (``kill -9``, a host that went down) stays RUNNING with the task it
was in: the next run on the migration (it holds the migration's lease,
so no other can be alive) marks it interrupted, and ``show`` tells it
(:func:`last_run`).

The tasks of one run share the command's in-memory state (the SSH
connection, the open targets): they run one after the other in the
command's process (TaskFlow's serial engine).  What makes a run safe to
repeat is the migration state itself (layers recorded partial until
applied, every write absolute), not a resumption of the flow: the next
command starts a new flow.
"""

import contextlib
import logging
import os
import socket
import time

from any2kvm_os import migration

with migration.taskflow_import():
    # Without eventlet (the serial engine needs none), no warnings.  The
    # action engine (futurist, which looks for eventlet too) is what
    # tf_engines.load loads for 'serial': imported here, not there.
    from taskflow.engines.action_engine import engine as _action  # noqa
    from taskflow import engines as tf_engines
    from taskflow import exceptions as tf_exc
    from taskflow.patterns import linear_flow
    from taskflow.persistence import models as tf_models
    from taskflow import states as tf_states
    from taskflow import task as tf_task
    from taskflow.utils import persistence_utils

LOG = logging.getLogger(__name__)

#: The states of a flow that is (or was, when its process died) running.
UNFINISHED = (tf_states.RUNNING, tf_states.PENDING, tf_states.RESUMING,
              tf_states.REVERTING, tf_states.SCHEDULING, tf_states.WAITING,
              tf_states.ANALYZING)


class Step(tf_task.Task):
    """A task that runs ``fn()`` (a step of the command, with the state
    the command's tasks share) and records what it returns (plain,
    JSON-able data: small figures, ids).  ``undo()``, when given, is what
    TaskFlow calls to revert it when a later task fails.  ``timings``,
    when given, is a dict that gets the seconds ``fn()`` took (whether it
    returned or raised) under the step's name: where a command's time
    went."""

    def __init__(self, name, fn, undo=None, quiet=False, timings=None):
        super(Step, self).__init__(name=name)
        self._fn = fn
        self._undo = undo
        #: Its records are written with the next task's that is not
        #: quiet (or at the end of the run): see :func:`run`.
        self.quiet = quiet
        self._timings = timings

    def execute(self):
        if self._timings is None:
            return self._fn()
        t0 = time.monotonic()
        try:
            return self._fn()
        finally:
            self._timings[self.name] = time.monotonic() - t0

    def revert(self, *args, **kwargs):
        if self._undo is not None:
            self._undo()


def flow(name, steps):
    """A linear flow of ``steps`` (:class:`Step`, in order)."""
    return linear_flow.Flow(name).add(*steps)


def _book(conn, book_uuid, name):
    try:
        return conn.get_logbook(book_uuid, lazy=True)
    except tf_exc.NotFound:
        return tf_models.LogBook('any2kvm migration %s' % name,
                                 uuid=book_uuid)


def _mark_interrupted(conn, book_uuid, now):
    """Flow details of the book left unfinished by a process that died
    (the caller holds the migration: none can be alive) get
    ``interrupted_at`` in their meta; their states stay as recorded."""
    for fd in conn.get_flows_for_book(book_uuid, lazy=True):
        meta = fd.meta or {}
        if fd.state in UNFINISHED and not meta.get('interrupted_at') and \
                not meta.get('ended_at'):
            fd.meta = dict(meta, interrupted_at=now)
            conn.update_flow_details(fd)


def run(store, name, operation, the_flow):
    """Run ``the_flow`` for ``operation`` on migration ``name`` (held by
    the caller) with TaskFlow's serial engine, recorded as a new flow
    detail of the migration's logbook when the store has a backend.  A
    task's exception is raised again as it was (its earlier tasks
    reverted first)."""
    backend = store.flow_backend()
    now = time.time()
    meta = {'operation': operation, 'pid': os.getpid(),
            'host': socket.gethostname(), 'started_at': now,
            'tasks': [a.name for a in _atoms(the_flow)]}
    book = fd = None
    if backend is not None:
        book_uuid = store.flow_logbook(name)
        with contextlib.closing(backend.get_connection()) as conn:
            _mark_interrupted(conn, book_uuid, now)
            book = _book(conn, book_uuid, name)
    fd = persistence_utils.create_flow_detail(the_flow, book=book,
                                              backend=backend, meta=meta)
    engine = tf_engines.load(the_flow, flow_detail=fd, book=book,
                             backend=backend, engine='serial')
    quiet = [a.name for a in _atoms(the_flow) if getattr(a, 'quiet', False)]
    hold = contextlib.nullcontext()
    if quiet and backend is not None and hasattr(backend, 'holding'):
        # The records of quiet tasks (a cutover's, inside the downtime)
        # wait for the next task that is not: a run killed among them
        # shows as stopped in the first of them.
        hold = backend.holding(quiet)
    try:
        with hold:
            engine.run()
    except Exception:
        if backend is not None:
            _ended(backend, fd.uuid)
        raise
    except BaseException:
        # Stopped from outside (^C): the flow stays as it was.
        if backend is not None:
            _ended(backend, fd.uuid, interrupted=True)
        raise
    if backend is not None:
        _ended(backend, fd.uuid)


def _atoms(the_flow):
    return [node for node, _data in the_flow.iter_nodes()]


def _ended(backend, fd_uuid, interrupted=False):
    """``ended_at`` (and ``interrupted_at``) in the run's meta (failing
    to write it is logged: the run's own outcome matters more)."""
    try:
        with contextlib.closing(backend.get_connection()) as conn:
            fd = conn.get_flow_details(fd_uuid, lazy=True)
            now = time.time()
            fd.meta = dict(fd.meta or {}, ended_at=now)
            if interrupted:
                fd.meta['interrupted_at'] = now
            conn.update_flow_details(fd)
    except Exception as e:
        LOG.warning('could not record the end of the flow: %s', e)


def _one_line(failure):
    if not failure:
        return None
    text = getattr(failure, 'exception_str', None) or str(failure)
    return ' '.join(text.split())[:300]


def last_run(store, name, holder=None, operation=None):
    """The last recorded run of migration ``name`` (of ``operation``
    only, when given: ``'verify'``), or None: a dict with
    operation, id, state (TaskFlow's flow state), started_at, ended_at,
    pid, host, runs (how many are recorded), running (unfinished, and its
    process holds the migration; ``holder``: :meth:`Store.get`'s),
    interrupted (unfinished and not running: its process died, or was
    stopped from outside), stopped_in (the task an unfinished or failed
    run stopped in) and tasks, in flow order, each
    ``{'name', 'state', 'result', 'error'}``."""
    backend = store.flow_backend()
    book_uuid = store.flow_logbook(name, create=False)
    if backend is None or book_uuid is None:
        return None
    with contextlib.closing(backend.get_connection()) as conn:
        fds = list(conn.get_flows_for_book(book_uuid, lazy=True))
        mine = [f for f in fds if operation is None or
                (f.meta or {}).get('operation') == operation]
        if not mine:
            return None
        fd = max(mine, key=lambda f: (f.meta or {}).get('started_at') or 0)
        atoms = dict((ad.name, ad) for ad in conn.get_atoms_for_flow(
            fd.uuid))
    meta = fd.meta or {}
    order = list(meta.get('tasks') or sorted(atoms))
    tasks = []
    for task_name in order:
        ad = atoms.get(task_name)
        state = ad.state if ad is not None else tf_states.PENDING
        tasks.append({'name': task_name, 'state': state,
                      'result': ad.results if ad is not None and
                      state == tf_states.SUCCESS else None,
                      'error': _one_line(ad.failure) if ad is not None
                      else None})
    unfinished = fd.state in UNFINISHED
    live = bool(holder and holder.get('live') and
                holder.get('pid') == meta.get('pid') and
                holder.get('host') == meta.get('host'))
    running = unfinished and live and not meta.get('ended_at')
    stopped = None
    for t in tasks:
        # A failed task keeps its failure once reverted.
        if t['error'] or t['state'] in (tf_states.RUNNING,
                                        tf_states.FAILURE,
                                        tf_states.REVERT_FAILURE):
            stopped = t['name']
            break
    if stopped is None and unfinished:
        done = [t for t in tasks if t['state'] == tf_states.SUCCESS]
        if len(done) < len(tasks):
            stopped = tasks[len(done)]['name']
    return {'operation': meta.get('operation', fd.name), 'id': fd.uuid,
            'state': fd.state, 'started_at': meta.get('started_at'),
            'ended_at': meta.get('ended_at'), 'pid': meta.get('pid'),
            'host': meta.get('host'), 'runs': len(fds),
            'interrupted': bool(unfinished and not running),
            'running': bool(running),
            'stopped_in': stopped if (unfinished or fd.state in (
                tf_states.FAILURE, tf_states.REVERTED)) else None,
            'tasks': tasks}
