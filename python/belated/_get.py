"""``belated.get``: dask's scheduler interface, so dask's own collections run on belated's engine."""

import contextvars
from collections.abc import Mapping

from belated import _belated, config
from belated import diagnostics as _diagnostics

# Which order tasks run in: "dask" (dask.order's priorities) or "depth-first" (the engine's own order
# from the wanted keys). benchmarks/dask_collections.py measures both.
ORDER = "depth-first"


def get(dsk, keys, num_workers=None, timeout=None, callbacks=None, pool=None, cache=None, **kwargs):
    """Computes ``keys`` of the dask graph ``dsk`` on belated's thread pool; dask's ``get`` interface.

    ``keys`` is a key or a (nested) list of keys; the result has the same shape, with tuples for
    lists as in dask. The graph may hold ``dask._task_spec`` nodes or legacy tuples. Tasks run
    depth-first from the wanted keys; each result is released as soon as no remaining task needs it;
    tasks see the caller's ``contextvars``; a task's exception is raised as itself with a note naming
    its key. ``num_workers`` and ``timeout`` (seconds, then ``belated.ComputeTimeoutError``) default
    to ``belated.config``. ``callbacks`` follow dask's ``Callback`` protocol (as in
    ``dask.local.get_async``); ``dask.callbacks.Callback`` and ``belated.diagnostics`` callbacks that
    are active are used too.

    ``pool`` says where tasks run, as it does for dask's ``get`` functions: by default on the engine's
    threads; ``"processes"`` runs them in belated's worker processes (``scheduler="processes"``
    semantics), ``"sync"`` on the calling thread, and a ``belated.Client`` on its local cluster.
    dask forwards it from ``compute``: ``x.compute(scheduler=belated.get, pool="processes")``. A
    thread or process pool object (as dask's own ``get`` functions take) sets how many tasks run at
    once, in place of ``num_workers`` as in dask; they run on the engine's own threads.

    ``cache`` (a dict, by default dask's ``cache`` setting), as ``dask.local.get_async`` documents it:
    a key found in it is taken as computed, with that value, and the results of ``keys`` are stored
    in it.

    >>> import dask.array as da
    >>> import belated
    >>> int(da.arange(10, chunks=3).sum().compute(scheduler=belated.get))
    45
    """
    from dask._task_spec import DataNode, convert_legacy_graph
    from dask.callbacks import local_callbacks, normalize_callback
    from dask.core import flatten
    from dask.order import order

    scheduler = _scheduler(pool)
    num_workers = pool_size(pool) or num_workers
    if not isinstance(dsk, Mapping):
        dsk = _graph(dsk, fuse=scheduler not in (None, "sync"))
    if type(dsk) is not dict:
        dsk = convert_legacy_graph(dsk)
    if cache is None:
        cache = config._read("cache", None)
    if cache:
        dsk = {**dsk, **{key: DataNode(key, value) for key, value in cache.items()}}
    wanted = list(flatten(keys)) if isinstance(keys, list) else [keys]
    if num_workers is None:
        num_workers = config._read("num_workers", None)
    if timeout is None:
        timeout = config._read("timeout", None)
    if scheduler is not None:
        from dask.callbacks import add_callbacks

        from belated import compute
        from belated._api import _as_shown

        # dask's local_callbacks takes the registered callbacks out of the registry for the block (its
        # schedulers call them directly); compute finds its callbacks there, so they go back in, alone.
        with (
            local_callbacks(callbacks) as dask_callbacks,
            local_callbacks(None),
            add_callbacks(*dask_callbacks),
        ):
            tasks = _belated.dask_graph_delayed(dsk, wanted)
            try:
                values = compute(*tasks, scheduler=scheduler, num_workers=num_workers, timeout=timeout)
            except BaseException as error:
                raise _as_shown(error)  # noqa: B904
        return _shaped(keys, wanted, values, cache)
    with local_callbacks(callbacks) as dask_callbacks, _diagnostics.claimed_callbacks(dask=False) as own:
        listeners = [normalize_callback(cb) for cb in _diagnostics.dask_own(dask_callbacks)]
        listeners += [cb._callback for cb in own]
        if not listeners:
            # The engine reads the graph's task spec nodes as they are, converting legacy tasks only
            # when it meets one: dask's converter, run on every node up front, costs as much as that.
            values = _belated.run_dask_graph(
                dsk, wanted, _priorities(dsk, order), num_workers, timeout, None, None, _context()
            )
        else:
            # Callbacks see the graph as dask's schedulers hand it to them.
            dsk = convert_legacy_graph(dsk)
            values = _run_with_callbacks(dsk, wanted, num_workers, timeout, listeners, order)
    return _shaped(keys, wanted, values, cache)


def _graph(expr, fuse):
    """The graph of the expression dask hands a scheduler. Unless ``fuse`` (tasks shipped to other
    processes) or dask's configuration sets ``optimization.fuse.active``, it is built without
    dask.array's low-level fusion of linear chains: fusing costs dask more per task than the engine
    spends running the chain's tasks one by one in this process. (The
    setting is global while the graph is built: a computation building its graph in another thread
    meanwhile skips the fusion too, which changes no result.)"""
    import dask

    if fuse or dask.config.get("optimization.fuse.active", None) is not None:
        return expr.__dask_graph__()
    with dask.config.set({"optimization.fuse.active": False}):
        return expr.__dask_graph__()


def pool_size(pool):
    """How many tasks a pool object runs at once (a ``concurrent.futures`` executor or a
    ``multiprocessing`` pool, as dask's get functions take them), else None. The engine runs the tasks
    on its own workers but as many at once as the pool would, as dask does: tasks that wait for one
    another (at a barrier, or for an event a later task sets) would otherwise wait forever."""
    for attribute in ("_max_workers", "_processes"):
        size = getattr(pool, attribute, None)
        if type(size) is int and size > 0:
            return size
    return None


def _scheduler(pool):
    """The belated scheduler ``pool`` names, or None for the engine's threads under ``get``'s own loop."""
    if isinstance(pool, str):
        if pool not in ("threads", "processes", "sync"):
            raise ValueError(f"pool must be 'threads', 'processes', 'sync' or a belated.Client, got {pool!r}")
        return None if pool == "threads" else pool
    return pool if getattr(pool, "_cluster", None) is not None else None


def _shaped(keys, wanted, values, cache):
    if cache is not None:
        for key, value in zip(wanted, values, strict=True):
            cache[key] = value
    if not isinstance(keys, list):
        return values[0]
    return _nest(keys, dict(zip(wanted, values, strict=True)))


def _priorities(dsk, order):
    if ORDER != "dask":
        return None
    from dask._task_spec import convert_legacy_graph

    return order(convert_legacy_graph(dsk))


def _context():
    """The caller's context, if any variable is set in it (else tasks need not pay for entering it)."""
    context = contextvars.copy_context()
    return context if len(context) else None


def _nest(keys, results):
    if isinstance(keys, list):
        return tuple(_nest(k, results) for k in keys)
    return results[keys]


class GetState(_diagnostics.SchedulerState):
    """What ``belated.get`` hands callbacks as the scheduler state: dask's state dict, kept up to date."""

    def __init__(self, dsk):
        waiting = {key: set() for key in dsk}
        state = dict(cache={}, ready=[], running=set(), waiting=waiting, finished=set(), released=set())
        super().__init__(state, total=len(dsk))


def _run_with_callbacks(dsk, wanted, num_workers, timeout, listeners, order):
    _, start_states, pretasks, posttasks, _ = (
        [f for f in group if f] for group in zip(*listeners, strict=True)
    )
    state = GetState(dsk)
    started = []
    try:
        for listener in listeners:
            if listener[0]:
                listener[0](dsk)
            started.append(listener)
        for start_state in start_states:
            start_state(dsk, state)

        def pretask(key):
            state["waiting"].pop(key, None)
            state["running"].add(key)
            state.began(key)
            for f in pretasks:
                f(key, dsk, state)

        def posttask(key, value, worker):
            state["running"].discard(key)
            state["finished"].add(key)
            state.ended(key, worker)
            for f in posttasks:
                f(key, value, dsk, state, worker)

        values = _belated.run_dask_graph(
            dsk, wanted, _priorities(dsk, order), num_workers, timeout, pretask, posttask, _context()
        )
    except BaseException:
        state.failed = 1
        for listener in started:
            if listener[4]:
                listener[4](dsk, state, True)
        raise
    for listener in started:
        if listener[4]:
            listener[4](dsk, state, False)
    return values
