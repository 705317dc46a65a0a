"""Futures of a belated ``Client``, and distributed's functions over them: ``wait``, ``as_completed``,
``fire_and_forget``, and, for tasks that launch tasks, ``get_client``, ``secede``, ``rejoin`` and
``worker_client``.

Invariants:
- The futures one call made (``submit``: one, ``map``: one per call) share one computation. It starts
  once the futures among its arguments are done; when the last of its futures is dropped before it
  started, it never does, as distributed releases what no future refers to (``fire_and_forget``
  keeps it). A computation already running finishes.
- A future of a closed client raises ``belated.CancelledError``: its results went with the cluster.
- ``Client.persist`` returns at once: each persisted ``Delayed`` is a task that gives its future's
  result (or raises its exception); on a local cluster that result stays in the worker that made it,
  released there when the last ``Delayed`` or future (``futures_of``) holding it is dropped, or its
  future is cancelled. A computation waits for the persists started before it, before it starts, so
  that no task ever blocks a worker thread waiting for a persist that needs one.
"""

import asyncio
import collections
import collections.abc
import concurrent.futures
import contextlib
import datetime
import functools
import itertools
import os
import queue
import re
import sys
import threading
import time
import traceback
import weakref

import cloudpickle

from belated import _belated, _logging


class Computation:
    """The work of one ``submit``/``map``/``compute``/``scatter`` call: ``batch`` resolves to the list
    of its results (a finished future cancelled alone takes its own out), and ``cells`` holds each of
    its futures' own outcome, settled as soon as that future's task ends (see :class:`EachDone`), or
    from ``batch`` if it ends first.

    A future cancelled alone is done at once, and the others keep running, as in distributed. On
    worker processes its call stops at once (its worker is killed and replaced; the other calls that
    worker ran run again elsewhere); on threads, which cannot be killed, it stops with the
    computation, once every other future of it is done or cancelled too."""

    __slots__ = ("__weakref__", "batch", "cancelled", "cells", "restart", "retried", "token")

    def __init__(self, batch, token, size=1):
        self.batch, self.token = batch, token
        # How the client starts it again, for a retry: (build, keys, traverse, retries, after, keep).
        self.restart = None
        # The computations running its futures again: their cells took those futures' places,
        # and what nothing holds is cancelled before it starts.
        self.retried = []
        self.cells = [concurrent.futures.Future() for _ in range(size)]
        # The indices of the futures cancelled one by one, finished ones too (whose results are then
        # let go of, as in distributed).
        self.cancelled = set()
        # The cells, not self: a computation no future refers to is let go of (and cancelled).
        batch.add_done_callback(lambda batch, cells=self.cells: _settle_all(cells, batch))

    @property
    def size(self):
        return len(self.cells)

    def cancel(self, index):
        """Cancels future ``index`` alone, and the computation once nothing else of it is wanted."""
        self.cancelled.add(index)
        if not self.cells[index].cancel():
            self._let_go(index)
        if self.token is not None and not self.batch.done():
            self.token.cancel_output(index)
        _stop_if_unwanted(self.cancelled, self.cells, self.token, self.batch)

    def _let_go(self, index):
        """Drops the result of future ``index``, finished already: distributed forgets a cancelled key,
        and a value kept in a worker is released there once nothing here holds it."""
        gone = concurrent.futures.Future()
        gone.cancel()
        self.cells[index] = gone
        self.batch.add_done_callback(lambda batch: _forget(batch, index))

    def __del__(self):
        # Only what has not started: a running computation finishes (its result unused).
        self.batch.cancel()


class Alone:
    """The computation of a future that holds its result (kept in a worker) alone, having let go of
    the computation that made it (:meth:`Future._keep_alone`): as a :class:`Computation` to that
    future, at its index, without the results of the others."""

    __slots__ = ("__weakref__", "cancelled", "cells")

    # Done: nothing of it runs. One for all, as nothing is read from it but that.
    batch = concurrent.futures.Future()
    batch.set_result(None)

    def __init__(self, index, kept):
        # Not the settled cell: its done callbacks (a Persisted holding this) would make a cycle.
        cell = concurrent.futures.Future()
        cell.set_result(kept)
        # A dict: a list as long as the index would make a persist of n objects hold n² slots.
        self.cells, self.cancelled = {index: cell}, set()

    def cancel(self, index):
        """Lets go of the result, as :meth:`Computation.cancel` does of a finished future's."""
        self.cancelled.add(index)
        gone = concurrent.futures.Future()
        gone.cancel()
        self.cells[index] = gone


class Released:
    """The computation of a released future, which holds it weakly: the computation itself while
    another future of it holds it, else a cancelled one of the same shape."""

    __slots__ = ("_gone", "_index", "_ref")

    def __init__(self, computation, index):
        self._ref, self._index, self._gone = weakref.ref(computation), index, None

    def _target(self):
        computation = self._ref()
        if computation is not None:
            return computation
        if self._gone is None:
            batch = concurrent.futures.Future()
            batch.cancel()
            self._gone = Computation(batch, None, self._index + 1)
            self._gone.cancelled.add(self._index)
        return self._gone

    def __getattr__(self, name):
        # What a future reads of its computation (cells, cancelled, batch, token, cancel); never the
        # slots, which would recurse while unset.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._target(), name)


# How long a wait without timeout sleeps at a time (see _waited).
_WAIT_SLICE = 0.1


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Names written out, singular; a trailing "s" is dropped before looking one up.
_UNIT_NAMES = {
    "microsecond": "us",
    "millisecond": "ms",
    "second": "s",
    "sec": "s",
    "minute": "m",
    "min": "m",
    "hour": "h",
    "day": "d",
}


def seconds(timeout):
    """``timeout`` in seconds: None, a number, a ``timedelta``, or a string as distributed takes one
    (``"500ms"``, ``"10s"``, ``"2 minutes"``; a bare number is seconds)."""
    if timeout is None or (isinstance(timeout, int | float) and not isinstance(timeout, bool)):
        return timeout
    if isinstance(timeout, datetime.timedelta):
        return timeout.total_seconds()
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z]*)\s*", str(timeout).lower())
    if match is not None:
        unit = match[2] or "s"
        unit = _UNIT_NAMES.get(unit) or _UNIT_NAMES.get(unit.removesuffix("s"), unit)
        if unit in _UNITS:
            return float(match[1]) * _UNITS[unit]
    raise ValueError(f"a timeout is a number of seconds or a string such as '10s', got {timeout!r}")


async def done_awaitable(value):
    """``value`` as an awaitable: what an asynchronous client's methods that finish at once return."""
    return value


def _waited(cell, timeout):
    """``cell``, once done if ``timeout`` is None. That wait goes in slices: a lock's wait without
    timeout is woken by a real SIGINT but not by ``_thread.interrupt_main()`` (IPython kernels, IDEs,
    test runners), whose KeyboardInterrupt would otherwise wait for the task."""
    if timeout is None:
        while not cell.done():
            concurrent.futures.wait((cell,), _WAIT_SLICE)
    return cell


def _settle_all(cells, batch):
    """Gives each cell not settled yet its outcome from the computation's ``batch``."""
    if batch.cancelled():
        error = _belated.CancelledError("the computation was cancelled")
    else:
        error = batch.exception()
    values = batch.result() if error is None else ()
    for index, cell in enumerate(cells):
        if cell.done():  # settled by its task already, or cancelled
            continue
        if error is None:
            _settle(cell, values[index])
        else:
            _fail(cell, error)


def _forget(batch, index):
    """Drops result ``index`` of a computation's ``batch`` (a list, for this), once it has one."""
    if not batch.cancelled() and batch.exception() is None:
        batch.result()[index] = None


def _stop_if_unwanted(cancelled, cells, token, batch):
    """Cancels a computation (killing the tasks still running for it) once each of its futures is
    done and one was ``cancelled``: what still runs is for no one."""
    if cancelled and all(cell.done() for cell in cells):
        if token is not None:
            token.cancel()
        batch.cancel()


def _settle(cell, value):
    """Gives ``cell`` its task's value, or the exception a map call returned as its value."""
    if type(value) is Raised:
        _fail(cell, value.error)
        return
    # try rather than contextlib.suppress: this runs once per future, and the context manager made a
    # third of a settle's cost (callgrind: 13.1k -> 9.0k instructions per settle).
    try:  # noqa: SIM105
        cell.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled alone, or settled by its task already


def _fail(cell, error):
    try:  # noqa: SIM105 (as in _settle)
        cell.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass


def is_cancelled(cell):
    """Whether ``cell`` was cancelled alone, or its computation was (a restart, a closed client), or
    its value was lost with the worker keeping it (scattered data: distributed cancels its futures)."""
    if cell.cancelled():
        return True
    if not cell.done():
        return False
    error = cell.exception()
    if error is not None:
        return isinstance(error, (_belated.CancelledError, concurrent.futures.CancelledError))
    kept = kept_in(cell)
    return kept is not None and kept.lost


def kept_in(cell):
    """The ``_belated.Kept`` ``cell`` settled with (its result, kept in a worker), or None."""
    if not cell.done() or cell.cancelled() or cell.exception() is not None:
        return None
    result = cell.result()
    return result if type(result) is _belated.Kept else None


class EachDone:
    """The per-task callback (as ``belated.diagnostics`` callbacks are: the engine calls ``posttask``
    after each task, on the thread that ran it) that settles each future of a computation as soon as
    its own task ends, not when the whole computation does. ``keys`` names the computation's outputs
    in order."""

    __slots__ = ("batch", "cancelled", "cells", "indices", "token")

    def __init__(self, computation, keys):
        self.cells, self.token, self.batch = computation.cells, computation.token, computation.batch
        self.cancelled = computation.cancelled
        self.indices = {}
        for index, key in enumerate(keys):
            if type(key) is str:
                self.indices.setdefault(key, []).append(index)

    @property
    def _callback(self):
        # Made when read, not kept: a bound method stored on self is a cycle, which would hold the
        # computation's results (kept in workers) until a gc pass.
        return (None, None, None, self._posttask, None)

    def _posttask(self, key, value, _graph, _state, _worker):
        indices = self.indices.get(key)
        if indices is None:
            return
        for index in indices:
            _settle(self.cells[index], value)
        _stop_if_unwanted(self.cancelled, self.cells, self.token, self.batch)


# The batches of persists not yet done (see the module's invariants).
_PERSISTING = set()
_PERSISTING_LOCK = threading.Lock()


def persisting(batch):
    """Counts ``batch`` among the persists that computations wait for until it is done."""
    with _PERSISTING_LOCK:
        _PERSISTING.add(batch)
    # Given the batch as argument, not in a closure: a done future keeps its callbacks, so a closure
    # over it would be a cycle holding the persist's results (kept in workers) until a gc pass.
    batch.add_done_callback(_persist_done)


def _persist_done(batch):
    with _PERSISTING_LOCK:
        _PERSISTING.discard(batch)


def persists_started():
    """The persists not yet done, for :func:`wait_for_persists`."""
    with _PERSISTING_LOCK:
        return list(_PERSISTING)


def in_task():
    """Whether a task runs on this thread: its computation may be a persist that others wait for."""
    return _belated.on_pool_thread() or getattr(task_client, "client", None) is not None


def collections_in(items, traverse):
    """The collections (what has ``__dask_graph__``) among ``items``, looking inside lists, tuples,
    sets and dicts when ``traverse``, as a computation of them does."""
    stack = list(items)
    while stack:
        item = stack.pop()
        if hasattr(item, "__dask_graph__") and not isinstance(item, type):
            yield item
        elif traverse and type(item) in (list, tuple, set, frozenset):
            stack.extend(item)
        elif traverse and type(item) is dict:
            stack.extend(item.values())


def graphs_of(items, traverse):
    """The task graphs (``{key: task}``) of the collections among ``items``."""
    graphs = (collection.__dask_graph__() for collection in collections_in(items, traverse))
    return [graph for graph in graphs if graph is not None]


def held_keys(items, traverse, held):
    """The keys of the tasks a computation of ``items`` needs that are among ``held`` (a set; below
    such a key, nothing is searched: its result stands for the tasks it needs). The engine walks its
    own ``Delayed`` graphs, without building them as dask graphs."""
    delayeds, found = [], set()
    for collection in collections_in(items, traverse):
        if isinstance(collection, _belated.Delayed):
            delayeds.append(collection)
            continue
        graph = collection.__dask_graph__()
        if graph is not None:
            found.update(held.intersection(graph))
    found.update(_belated.held_keys(delayeds, held))
    return found


def persists_needed(graphs, batches):
    """The persists among ``batches`` not yet done whose results a task of ``graphs`` takes (a
    :class:`Persisted` task): a computation waits for those alone, as distributed's tasks wait for
    the keys they need rather than for every persist started before them."""
    pending = {batch for batch in batches if not batch.done()}
    needed = set()
    if not pending:
        return needed
    for graph in graphs:
        for task in graph.values():
            if type(task) is tuple and task and type(task[0]) is Persisted:
                future = task[0].future
                if future is not None and future._batch in pending:
                    needed.add(future._batch)
    return needed


def wait_for_persists(items, traverse, batches=None):
    """Waits until the persists among ``batches`` (by default every one not yet done) that tasks of
    ``items`` take results of are done, failed or not. A task does not wait: the persist may be its
    own computation."""
    if in_task():
        return
    batches = persists_started() if batches is None else batches
    needed = persists_needed(graphs_of(items, traverse), batches) if batches else ()
    if needed:
        concurrent.futures.wait(needed)


class Persisted:
    """The function of a persisted ``Delayed``'s task: gives its future's result, or raises the task's
    exception. On a local cluster the result stays in the worker that computed it (a
    ``_belated.Kept``): a computation on that cluster uses it there without running this, and one
    elsewhere fetches it. A result lost with its worker is computed again from ``source``, the
    ``Delayed`` that was persisted (its lineage). Sent to a worker process as the result itself.

    A persist's (``own``: nothing else holds ``future``) keeps its future, as distributed's persisted
    graphs hold theirs: ``futures_of`` finds it and cancelling it lets go of the result. One made of a
    future the program holds keeps its kept result alone."""

    __slots__ = ("__name__", "__weakref__", "client", "future", "kept_result", "key", "own", "source")

    def __init__(self, future, source=None, own=False):
        self.future, self.source, self.key, self.client = future, source, future.key, future.client
        self.own, self.kept_result = own, None
        self.__name__ = "persisted"
        # Weakly: a done future keeps its callbacks, and its computation holds it, so a bound method
        # would be a cycle holding the result until a gc pass. Dropped before, it has nothing to do.
        future._cell.add_done_callback(functools.partial(_call_weakly, weakref.WeakMethod(self._done)))

    def _done(self, cell):
        # A kept result is then held without the computation, which holds every result of the persist,
        # so that each is released with its own last holder.
        kept = kept_in(cell)
        if kept is not None:
            self._hold(kept)

    def kept_again(self, kept):
        """Takes ``kept``, its task's result computed again after the one it kept was lost with its
        worker, for later computations to use, as distributed holds a key recomputed: without it
        each would compute it again, an impure task giving each a value of its own."""
        if self._kept() is not None:  # else cancelled meanwhile: let go of, as it was
            self._hold(kept)

    def _hold(self, kept):
        if self.own:
            self.future._keep_alone(kept)
            return
        self.kept_result = kept  # before letting go of the future: _kept reads in the other order
        self.future = None

    def _kept(self):
        """The result kept in a worker once the persist succeeded, unless cancelled since; else None."""
        future = self.future
        if future is None:
            return self.kept_result
        if future._index in future._computation.cancelled:
            return None
        return kept_in(future._cell)

    def _result(self):
        """The future's result (a ``_belated.Kept`` on a local cluster), or its exception raised."""
        future, kept = self.future, self._kept()
        if kept is None:
            return future._result()
        if self.client._closed:
            raise _belated.CancelledError(f"the Client of {self.key} is closed; its results are gone")
        return kept

    def __call__(self):
        result = self._result()
        if type(result) is not _belated.Kept:
            return result
        try:
            return result.fetch()
        except _belated.WorkerLostError:
            if self.source is None:
                raise
            return self.source.compute(scheduler="sync")

    def kept(self):
        """The result kept in a worker, once the persist is done and succeeded; else None."""
        return None if self.client._closed else self._kept()

    def __dask_tokenize__(self):
        return ("persisted", self.key)

    def __reduce__(self):
        future, result = self.future, self._kept()
        if result is None:
            # Read, not raised: raising it again would add to its notes, and pickle it differently.
            error = future._error()
            if error is not None:
                return (Settled, (None, error))
            result = future._result()
        if type(result) is not _belated.Kept:
            return (Settled, (result, None))
        if result.lost:
            if self.source is None:
                return (Settled, (None, _lost(self.key)))
            return (Lineage, (self.source,))
        try:
            return (Settled, (result.fetch(), None))
        except _belated.WorkerLostError:
            # Its workers died since it was looked at: lost all the same.
            if self.source is None:
                return (Settled, (None, _lost(self.key)))
            return (Lineage, (self.source,))


def stand_ins(holders):
    """What the engine takes for the results of ``holders`` (see ``Client._held_results``), once
    they are done: for each, a ``Delayed`` under its key giving its result (a failed one's exception
    again, as distributed gives it without running the task again), and the ``Delayed`` it was
    computed from. None when there is none."""
    if not holders:
        return None
    from belated import delayed

    concurrent.futures.wait(
        [holder._cell if type(holder) is Future else holder.future._cell for holder, _ in holders.values()]
    )
    return tuple(
        (
            delayed(holder if type(holder) is Persisted else Persisted(holder), pure=True)(dask_key_name=key),
            source,
        )
        for key, (holder, source) in holders.items()
    )


class Once:
    """A future's cell's done callback, ``call(future)``, that holds the future only until it is
    called: a done cell keeps its callbacks, and one holding its future would be a cycle (through its
    computation's cells) keeping the result, and the segment or worker holding it, until a gc pass."""

    __slots__ = ("call", "future")

    def __init__(self, call, future):
        self.call, self.future = call, future

    def __call__(self, _cell):
        call, future = self.call, self.future
        self.call = self.future = None
        call(future)


# The queue of the thread running done callbacks (see call_apart), once it runs in this process.
_CALLBACKS = None
_CALLBACKS_LOCK = threading.Lock()


def call_apart(fn, future):
    """Queues ``fn(future)`` for the callback thread, started on first use in each process (a fork's
    child has none running). Daemonic: interpreter exit does not wait for a callback that never
    ends."""
    global _CALLBACKS
    with _CALLBACKS_LOCK:
        if _CALLBACKS is None:
            _CALLBACKS = queue.SimpleQueue()
            name = "belated-callbacks"
            threading.Thread(target=_run_callbacks, args=(_CALLBACKS,), daemon=True, name=name).start()
        calls = _CALLBACKS
    calls.put((fn, future))


def _run_callbacks(calls):
    while True:
        fn, future = calls.get()
        try:
            fn(future)
        except BaseException:
            _logging.client_logger.exception("Error in callback %s of %s:", fn, future)
        # Not held while waiting for the next: the future would outlive every other reference to it.
        del fn, future


def _after_fork_in_child():
    # The parent's callback thread does not exist here, and its lock may have been held by one of the
    # parent's threads.
    global _CALLBACKS, _CALLBACKS_LOCK
    _CALLBACKS, _CALLBACKS_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _call_weakly(method, cell):
    method = method()
    if method is not None:
        method(cell)


class Scattered:
    """A scattered value, as the argument of its task (:func:`scatter`), which the worker that runs
    the task keeps as its result. An argument, not the function: a call's arguments are pickled with
    their large buffers out of band (into shared memory), while a function's pickle is kept whole, in
    band, as bytes. A box, so that the value is neither searched for ``Delayed`` objects nor
    tokenized."""

    __slots__ = ("key", "value")

    def __init__(self, value, key):
        self.value, self.key = value, key

    def __dask_tokenize__(self):
        return ("scattered", self.key)


def scatter(scattered):
    return scattered.value


def _lost(key):
    return _belated.CancelledError(
        f"{key} was lost with the worker that held it: scattered data cannot be computed again "
        "(distributed too cancels its futures); scatter it again"
    )


class Settled:
    """A :class:`Persisted` in a worker process: the result it stands for, or the exception."""

    __slots__ = ("__name__", "error", "value")

    def __init__(self, value, error):
        self.value, self.error = value, error
        self.__name__ = "persisted"

    def __call__(self):
        if self.error is not None:
            raise self.error
        return self.value


class Lineage:
    """A :class:`Persisted` whose kept result was lost with its worker, in a worker process: computes
    the persisted ``Delayed`` again there."""

    __slots__ = ("__name__", "source")

    def __init__(self, source):
        self.source = source
        self.__name__ = "persisted"

    def __call__(self):
        return self.source.compute(scheduler="sync")


def finished(values):
    """A computation already done, with ``values``: what ``scatter`` makes."""
    batch = concurrent.futures.Future()
    batch.set_result(list(values))
    return Computation(batch, None)


class Raised:
    """The exception of one call of a map, held as its result."""

    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error

    def __reduce__(self):
        # Sent back from a worker process: its frames travel as text (a traceback does not pickle), and
        # an exception that cannot be rebuilt in the parent travels as a RemoteError, as a task's own
        # failure does.
        from belated import _worker

        try:
            text = "".join(traceback.format_exception(self.error))
            cloudpickle.loads(cloudpickle.dumps(self.error, protocol=5))
            error = self.error
        except Exception:
            text = _worker._traceback_text(self.error)
            error = _worker._remote_error(self.error, text)
        return (_raised_in_worker, (error, text))


def _raised_in_worker(error, text):
    error.add_note(f"traceback in the worker process:\n{text}")
    return Raised(error)


class AnyFuture:
    """A Client's future, in the caller (``Future``) or in a task of a worker process
    (``RemoteFuture``). A Delayed call taking one receives its result (the argument collector asks
    for ``_as_delayed()``), as distributed gives a task a Future's result."""

    __slots__ = ()


class Future(AnyFuture):
    """A result being computed on a cluster, from :meth:`Client.submit`, :meth:`Client.map`,
    :meth:`Client.compute` or :meth:`Client.scatter`.

    ``await future`` waits without blocking an event loop. A future can be an argument of another
    ``submit`` or ``map``: that task starts once it is done and receives its result."""

    __slots__ = ("_computation", "_id", "_index", "_value", "client", "key")

    _ids = itertools.count()

    def __init__(self, computation, index, key, client):
        self._computation, self._index, self.key, self.client = computation, index, key, client
        self._value = None
        self._id = next(Future._ids)

    @property
    def _batch(self):
        return self._computation.batch

    @property
    def _cell(self):
        """This future's own outcome (futures of one key of one computation share it)."""
        return self._computation.cells[self._index]

    def _check_client(self):
        if self.client._closed:
            raise _belated.CancelledError(f"the Client of future {self.key} is closed; its results are gone")

    def _check_not_cancelled(self):
        if self._index in self._computation.cancelled:
            raise _belated.CancelledError(f"future {self.key} was cancelled")

    def result(self, timeout=None):
        """Waits up to ``timeout`` (seconds, or a string such as ``"10s"``, as distributed takes it)
        for the result; raises the task's exception if it failed, and ``TimeoutError`` if it is not
        done by then. On an asynchronous client, an awaitable of that, as distributed's."""
        if self._awaited():
            return self._once_done(timeout, self._result)
        return self._result(timeout)

    def _awaited(self):
        """Whether ``result()`` and the like give awaitables, as the client's calls do."""
        return self.client._awaits()

    def _result(self, timeout=None):
        self._check_client()
        self._check_not_cancelled()
        timeout = seconds(timeout)
        try:
            result = _waited(self._cell, timeout).result(timeout)
        except concurrent.futures.CancelledError:
            if not self._cell.cancelled():  # the task's own failure, raised as it is
                raise
            raise _belated.CancelledError(f"future {self.key} was cancelled") from None
        if type(result) is not _belated.Kept:
            return result
        # A scattered value stays in its worker: each result() fetches it from there, as distributed's.
        try:
            return result.fetch()
        except _belated.WorkerLostError:
            raise _lost(self.key) from None

    def done(self):
        return self._cell.done() or self.client._closed

    def exception(self, timeout=None):
        """Waits up to ``timeout`` seconds; the task's exception if it failed, else None: a cancelled
        future's too, as distributed's (its ``result()`` raises ``CancelledError``). On an
        asynchronous client, an awaitable of that."""
        if self._awaited():
            return self._once_done(timeout, self._exception)
        return self._exception(timeout)

    def _exception(self, timeout=None):
        error = self._error(timeout)
        return None if self.cancelled() else error

    def _error(self, timeout=None):
        """What ``result()`` raises once done (a ``CancelledError`` if cancelled), or None."""
        self._check_client()
        if self._index in self._computation.cancelled:
            return _belated.CancelledError(f"future {self.key} was cancelled")
        timeout = seconds(timeout)
        try:
            return _waited(self._cell, timeout).exception(timeout)
        except concurrent.futures.CancelledError:
            return _belated.CancelledError(f"future {self.key} was cancelled")

    def traceback(self, timeout=None):
        """The traceback of ``exception()``, or None; an awaitable of it on an asynchronous client."""
        if self._awaited():
            return self._once_done(timeout, self._traceback)
        return self._traceback(timeout)

    def _traceback(self, timeout=None):
        error = self._exception(timeout)
        return None if error is None else error.__traceback__

    def cancel(self, reason=None, msg=None):
        """Cancels this future: it is done at once and ``result()`` raises ``belated.CancelledError``.
        Its computation stops (nothing more of it starts, and the workers running its tasks are killed
        and replaced) once no other future of it is still to finish: a future of a ``map`` or of a
        ``compute`` of many is cancelled alone, and the other calls go on, as in distributed.
        ``reason`` and ``msg`` are distributed's, taken as :meth:`Client.cancel` takes them. On an
        asynchronous client, an awaitable (of None), as distributed's."""
        computation = self._computation
        computation.cancel(self._index)
        if self._computation is not computation:  # kept alone meanwhile, which saw no cancel
            self._computation.cancel(self._index)
        return done_awaitable(None) if self._awaited() else None

    def _keep_alone(self, kept):
        """Holds its result ``kept`` (in a worker) in a computation of its own, letting go of the one
        that made it, which holds its other futures' results too."""
        computation = self._computation
        self._computation = Alone(self._index, kept)
        if self._index in computation.cancelled:  # cancelled meanwhile, through the one let go of
            self._computation.cancel(self._index)

    def release(self):
        """Lets go of the result, as distributed's ``Future.release``: this future stops holding it,
        so once no other future or persisted object of its key does, it is released (in the workers
        keeping it, at once) and this future is cancelled. Idempotent."""
        if type(self._computation) is not Released:
            self._computation = Released(self._computation, self._index)

    def retry(self):
        """Runs this future's task again (and first those of the failed futures it took), as
        :meth:`Client.retry` does."""
        return self.client.retry([self])

    @property
    def type(self):
        """The type of the result once the task succeeded, else None, as in distributed."""
        cell = self._cell
        if not cell.done() or cell.cancelled() or cell.exception() is not None:
            return None
        result = cell.result()
        if type(result) is _belated.Kept:  # scattered or persisted into a worker process
            try:
                result = result.fetch()
            except _belated.WorkerLostError:
                return None
        return type(result)

    def cancelled(self):
        """Whether it was cancelled, or its client closed (which cancels every future)."""
        return self.client._closed or self._index in self._computation.cancelled or is_cancelled(self._cell)

    def add_done_callback(self, fn):
        """Calls ``fn(future)`` once the future is done (at once if it is), on belated's callback
        thread, as distributed runs it on a thread of its own: one callback at a time, in the order
        the futures were done, so a callback that waits (for another future, say) holds no thread
        that runs tasks or reads their results. One that raises is logged (``belated.client``) and
        the others still run."""
        self._cell.add_done_callback(Once(functools.partial(call_apart, fn), self))

    @property
    def status(self):
        if self.cancelled():
            return "cancelled"
        if not self._cell.done():
            return "pending"
        return "error" if self._exception() is not None else "finished"

    def __await__(self):
        return self._once_done(None, self._result).__await__()

    async def _once_done(self, timeout, then):
        """``then(0)`` once this future is done, waited for without blocking the event loop;
        ``TimeoutError`` if it is not done after ``timeout``."""
        timeout = seconds(timeout)
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake(_):
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        self._cell.add_done_callback(wake)
        # Not wait_for: asyncio's TimeoutError is not the builtin one before Python 3.11.
        await asyncio.wait([done], timeout=timeout)
        return then(0)

    def _as_delayed(self):
        """The result as a Delayed holding it under this future's key: one node per future, so every
        task of a computation that takes it shares one copy (sent once to a worker, not per call)."""
        # Cancelled once finished, its cell still holds the value (kept in a worker for a scatter),
        # which is no longer its to give.
        self._check_not_cancelled()
        if self._value is None:
            if kept_in(self._cell) is not None:
                from belated import delayed

                # Used where a worker keeps it, never fetched here for that.
                self._value = delayed(Persisted(self), pure=True)(dask_key_name=self.key)
            else:
                self._value = _belated.delayed(self._result(), name=self.key, traverse=False)
        return self._value

    def __repr__(self):
        return f"<Future: {self.status}, key: {self.key}>"

    def __dask_tokenize__(self):
        # Its key alone would not do: a key let go of and computed again can hold another value, and a
        # call on the new future must not take the key of the same call on the old one. distributed
        # tokenizes a Future by its key and its object's id too.
        return ("Future", self.key, self._id)

    def __reduce__(self):
        raise TypeError(
            "a belated Future cannot be sent to a worker inside another object; pass it as an argument "
            "of client.submit or client.map (in a list, tuple or dict), or pass its result"
        )


def futures_in(obj, kind=Future, graphs=False):
    """The futures (instances of ``kind``) among ``obj`` and the lists, tuples, sets and dicts in it, in
    the order they appear; with ``graphs``, also those in the graphs of the dask collections in it."""
    found = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, kind):
            found.append(item)
        elif graphs and type(item) is Persisted and item.own:
            stack.append(item.future)
        elif type(item) in (list, tuple, set, frozenset):
            stack.extend(reversed(list(item)))
        elif type(item) is dict:
            stack.extend(reversed(list(item.values())))
        elif graphs and hasattr(type(item), "__dask_graph__") and not isinstance(item, type):
            stack.extend(reversed(list(item.__dask_graph__().values())))
    return found


def _leaves(obj):
    """What is in ``obj`` and its lists, tuples, sets and dicts that is none of those."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if type(item) in (list, tuple, set, frozenset):
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item.values())
        else:
            yield item


def _is_foreign_future(item):
    """A future not of this process's Client (distributed's, concurrent.futures'): left out as other
    objects are, it would be waited for by nothing."""
    return not isinstance(item, Future) and type(item).__name__.endswith("Future")


def futures_of(obj):
    """distributed's ``futures_of``: the futures in ``obj`` (a Future, or lists, tuples, sets and dicts
    of them, or a dask collection whose graph holds them), each once, in the order they appear."""
    return list({id(future): future for future in futures_in(obj, graphs=True)}.values())


def replace_futures(obj, replace, kind=Future):
    """``obj`` with ``replace(future)`` for each future (instance of ``kind``) in it and in its lists,
    tuples, sets and dicts."""
    if isinstance(obj, kind):
        return replace(obj)
    if type(obj) in (list, tuple, set, frozenset):
        return type(obj)(replace_futures(item, replace, kind) for item in obj)
    if type(obj) is dict:
        return {key: replace_futures(value, replace, kind) for key, value in obj.items()}
    return obj


def gather(obj, skip=False):
    """The results of the futures in ``obj``; with ``skip``, a failed one is left out of ``obj`` if it
    is a list, and None elsewhere (a tuple's too, as distributed's gather leaves it)."""
    if not skip:
        return replace_futures(obj, Future._result)
    if type(obj) is list:
        obj = [item for item in obj if not (isinstance(item, Future) and _failed(item))]
    return replace_futures(obj, lambda future: None if _failed(future) else future._result())


def _failed(future):
    # Cancelled ones too: distributed's gather skips them with the failed.
    return future._error() is not None


_WHEN = {
    "ALL_COMPLETED": concurrent.futures.ALL_COMPLETED,
    "FIRST_COMPLETED": concurrent.futures.FIRST_COMPLETED,
    "FIRST_EXCEPTION": concurrent.futures.FIRST_EXCEPTION,
}


def wait(fs, timeout=None, return_when="ALL_COMPLETED"):
    """Waits until the futures in ``fs`` are done (``return_when="ALL_COMPLETED"``), one is
    (``"FIRST_COMPLETED"``) or one failed (``"FIRST_EXCEPTION"``); returns ``(done, not_done)`` sets.
    ``fs`` is what :func:`futures_of` looks in, as in distributed: a Future, lists, tuples, sets and
    dicts of them, or persisted objects (``wait(client.persist(x))``); anything else in it is left
    out. ``TimeoutError`` if what was waited for is not done after ``timeout`` seconds, and
    ``CancelledError`` naming them if cancelled futures are among the done, as in distributed. With
    an asynchronous client (the futures', or else the current one), an awaitable of that, as
    distributed's."""
    if return_when not in _WHEN:
        raise ValueError(f"return_when must be one of {', '.join(_WHEN)}, got {return_when!r}")
    timeout = seconds(timeout)
    if isinstance(fs, collections.abc.Iterator):
        # Its futures, as wait() took them before it took containers: distributed's finds none in it,
        # and returns at once, having waited for nothing.
        fs = list(fs)
    futures = futures_of(fs)
    remote = [item for item in _leaves(fs) if isinstance(item, AnyFuture) and not isinstance(item, Future)]
    if remote and not futures and _in_worker_process():  # a task's, of its client in the parent
        from belated import _remote

        return _remote.wait(remote, timeout, return_when)
    foreign = [item for item in _leaves(fs) if _is_foreign_future(item)]
    if foreign:
        raise TypeError(f"wait() takes belated Futures, got {foreign[0]!r}")
    if futures[0]._awaited() if futures else _current_client_is_asynchronous():
        # On a thread of the event loop's executor: the loop goes on meanwhile.
        return asyncio.to_thread(_wait, futures, timeout, return_when)
    return _wait(futures, timeout, return_when)


def _current_client_is_asynchronous():
    from belated._client import current_client

    client = current_client()
    return client is not None and client._awaits()


def _wait(futures, timeout, return_when):
    cancelled = {future for future in futures if future.cancelled()}
    if cancelled and return_when != "ALL_COMPLETED":
        _raise_cancelled(cancelled)
    by_cell = {}
    for future in set(futures) - cancelled:
        by_cell.setdefault(future._cell, []).append(future)
    done_cells, _ = concurrent.futures.wait(by_cell, timeout, _WHEN[return_when])
    done = {f for cell in done_cells for f in by_cell[cell]} | cancelled
    not_done = set(futures) - done
    # distributed raises once the timeout passed before what was asked for, FIRST_COMPLETED too;
    # concurrent.futures' FIRST_EXCEPTION is met by a failure or by all being done.
    met = {
        "ALL_COMPLETED": not not_done,
        "FIRST_COMPLETED": bool(done) or not futures,
        "FIRST_EXCEPTION": not not_done or any(f.status == "error" for f in done),
    }[return_when]
    if not met:
        raise TimeoutError(f"{len(not_done)} of {len(futures)} futures not done after {timeout} s")
    _raise_cancelled({future for future in done if future.cancelled()})
    return concurrent.futures._base.DoneAndNotDoneFutures(done, not_done)


def _raise_cancelled(cancelled):
    """As distributed's ``wait``: cancelled futures among the done are an error, naming them."""
    if cancelled:
        keys = sorted(str(future.key) for future in cancelled)
        raise _belated.CancelledError(f"{len(keys)} futures cancelled: {', '.join(keys)}")


class as_completed:
    """Yields futures as they finish (in that order, not the order given); ``add`` more while
    iterating, with ``for`` or, under asyncio, ``async for``. With ``with_results=True`` yields
    ``(future, result)``, raising a failed task's exception (or, with ``raise_errors=False``, giving
    its ``(type, value, traceback)`` as the result, as distributed does); a cancelled future's result
    is a ``belated.CancelledError``, never raised. With ``timeout`` (seconds from this call), waiting
    for the next one past then raises ``TimeoutError``; those already finished are still yielded."""

    def __init__(self, futures=None, with_results=False, raise_errors=True, *, timeout=None):
        self._timeout = timeout = seconds(timeout)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._lock = threading.Lock()
        self._finished = collections.deque()
        self._ready = threading.Condition(self._lock)
        self._outstanding = 0
        # Event-loop futures of `async for` waiting for the next one to finish.
        self._waiters = []
        self.with_results, self.raise_errors = with_results, raise_errors
        if futures is not None:
            self.update(futures)

    def add(self, future):
        if not isinstance(future, Future):
            raise TypeError(f"as_completed takes belated Futures, got {future!r}")
        with self._lock:
            self._outstanding += 1
        # Not through the callback thread: a user's callback waiting there would hold it back.
        future._cell.add_done_callback(Once(self._on_done, future))

    def update(self, futures):
        for future in futures:
            self.add(future)

    def _on_done(self, future):
        with self._lock:
            self._finished.append(future)
            self._ready.notify()
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            loop.call_soon_threadsafe(lambda waiter=waiter: waiter.done() or waiter.set_result(None))

    def count(self):
        """How many futures are still to be yielded."""
        with self._lock:
            return self._outstanding

    def is_empty(self):
        return self.count() == 0

    def __iter__(self):
        return self

    def _yielded(self, future):
        if not self.with_results:
            return future
        if future.cancelled():
            # Its error is its result, raise_errors or not, as distributed gives it: the loop over
            # the others goes on.
            return future, _belated.CancelledError(f"future {future.key} was cancelled")
        try:
            return future, future._result()
        except Exception as error:
            if self.raise_errors:
                raise
            return future, (type(error), error, error.__traceback__)

    def _remaining(self):
        """Seconds until the deadline (None without one); ``TimeoutError`` once it passed."""
        if self._deadline is None:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{self._outstanding} futures not done after {self._timeout} s")
        return remaining

    def _wait_for_one(self):
        """Waits, holding the lock, until a future finished or the deadline passed."""
        while not self._finished:
            self._ready.wait(self._remaining())

    def __next__(self):
        with self._lock:
            if self._outstanding == 0:
                raise StopIteration
            self._wait_for_one()
            self._outstanding -= 1
            future = self._finished.popleft()
        return self._yielded(future)

    def __aiter__(self):
        return self

    async def __anext__(self):
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._outstanding == 0:
                    raise StopAsyncIteration
                if self._finished:
                    self._outstanding -= 1
                    future = self._finished.popleft()
                    break
                remaining = self._remaining()
                waiter = loop.create_future()
                self._waiters.append((loop, waiter))
            # Not wait_for: it would cancel the waiter, and asyncio's TimeoutError is not the builtin
            # one before Python 3.11; the deadline is checked again above.
            await asyncio.wait([waiter], timeout=remaining)
        return self._yielded(future)

    def next_batch(self, block=True):
        """Every future finished so far (at least one if ``block``)."""
        with self._lock:
            if block and self._outstanding:
                self._wait_for_one()
            batch = list(self._finished)
            self._finished.clear()
            self._outstanding -= len(batch)
        return [self._yielded(future) for future in batch]

    def batches(self):
        while not self.is_empty():
            yield self.next_batch()


# Computations whose futures were let go of with fire_and_forget: held until done.
_FORGOTTEN = set()
_FORGOTTEN_LOCK = threading.Lock()


def fire_and_forget(obj):
    """Keeps running the computations of the futures in ``obj`` after the last reference to them is
    dropped (which otherwise cancels them, as in distributed)."""
    for future in futures_in(obj):
        computation = future._computation
        with _FORGOTTEN_LOCK:
            _FORGOTTEN.add(computation)

        def let_go(_, computation=computation):
            with _FORGOTTEN_LOCK:
                _FORGOTTEN.discard(computation)

        computation.batch.add_done_callback(let_go)


def _in_worker_process():
    # The parent imports belated._worker too (its picklers); only a worker runs its main().
    return getattr(sys.modules.get("belated._worker"), "serving", False)


def get_client():
    """The Client running this task (or, outside tasks, the one most recently started).

    In a task on a worker process of a Client, a client whose calls the Client runs in the parent
    process (``belated._remote``); work submitted from tasks runs off the cluster's worker threads, so
    a task may wait for it without deadlocking a full pool."""
    from belated._client import current_client

    if _in_worker_process():
        from belated._remote import worker_client

        return worker_client()
    client = getattr(task_client, "client", None)
    if client is None or client._closed:
        client = current_client()
    if client is None:
        raise ValueError("no belated Client is running; start one with belated.Client()")
    return client


def default_client(c=None):
    """distributed's ``default_client``: ``c`` if given, else the open Client started last
    (``ValueError`` if none is)."""
    if c is not None:
        return c
    from belated._client import Client

    return Client.current()


# The client whose task runs on this thread, if one does (set by the Client's task wrapper).
task_client = threading.local()
_seceded = threading.local()


def secede():
    """Marks this task as waiting on other work. belated runs work submitted from a task off the
    worker threads, so a task waiting on it never holds a thread that work needs, seceded or not;
    ``secede``/``rejoin`` keep distributed code running unchanged."""
    in_task = _belated.on_pool_thread() or getattr(task_client, "client", None) is not None
    if not in_task and not _in_worker_process():
        raise ValueError("secede() is for tasks: call it from a function running on a Client")
    _seceded.depth = getattr(_seceded, "depth", 0) + 1


def rejoin():
    """Ends a :func:`secede`; does nothing if the task has not seceded, as in distributed."""
    depth = getattr(_seceded, "depth", 0)
    if depth:
        _seceded.depth = depth - 1


@contextlib.contextmanager
def worker_client():
    """``with worker_client() as client:`` in a task: :func:`get_client` while seceded."""
    client = get_client()
    secede()
    try:
        yield client
    finally:
        rejoin()
