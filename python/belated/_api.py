"""``compute`` and ``persist``: resolve the scheduler options, then hand everything to the engine."""

import atexit
import collections.abc
import concurrent.futures
import contextlib
import dataclasses
import html
import numbers
import operator
import os
import sys
import warnings

from belated import _belated, _futures, _logging, config
from belated._dask import _require, distributed_client_of, executor_for
from belated._get import pool_size
from belated.diagnostics import claimed_callbacks

atexit.register(_belated.shutdown)


def _after_fork_in_child():
    # A child's keys must differ from its parent's and its siblings', and the parent's threads are gone.
    _belated.reseed_keys_after_fork()
    _belated.forget_pools_after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _setting(key):
    """``key`` from ``belated.config``, which reads dask's own ``dask.config`` where it does not set it:
    dask code that sets ``dask.config`` beside belated keeps working."""
    value = config._read(key, None)
    if value is not None and value is _get_function():
        value = None  # dask told to run its collections on belated: belated's default here
    return value


# The scheduler names belated runs itself; dask's own get functions are registered under them too.
_SCHEDULER_NAMES = frozenset(
    {"sync", "synchronous", "single-threaded", "threads", "threading", "threaded"}
    | {"processes", "multiprocessing", "ray", "distributed", "dask.distributed"}
)


def _dask_named_scheduler(name):
    """The get function registered under ``name`` in dask's ``named_schedulers`` (where libraries and
    users add their own, as dask's docs show), when the program imported dask, else None."""
    dask_base = sys.modules.get("dask.base")
    return None if dask_base is None else dask_base.named_schedulers.get(name)


def _get_function():
    from belated._get import get

    return get


# What the engine counts a task's runs in (u32).
_MOST_RETRIES = 2**32 - 1


def _retry_count(retries):
    """``retries=`` as the int both engines count in (distributed asserts it is one), refused naming
    it when it is no count the engine can hold: its binding raised an OverflowError for -1 that said
    nothing of retries. distributed runs a task given -1 once; ``True`` counts as 1 in both."""
    if retries is None:
        return None
    try:
        count = operator.index(retries)
    except TypeError:
        count = -1
    if not 0 <= count <= _MOST_RETRIES:
        raise ValueError(f"retries must be a whole number from 0 to {_MOST_RETRIES}, got {retries!r}")
    return count


_OWN_FILES = os.path.join(os.path.dirname(__file__), "")


def _past_own_frames(traceback):
    """The traceback of an exception leaving an entry point (``compute``, ``persist``, ``get``: its
    own frame comes first) from the first frame that is not belated's, or None when there is nothing
    to skip or nothing but belated's frames (an error of belated's own keeps them). Between the user's
    call and their task, belated's frames say nothing to them; dask's tracebacks show none of its own
    there either, past its entry point."""
    first = traceback.tb_next
    shown = first
    while shown is not None and shown.tb_frame.f_code.co_filename.startswith(_OWN_FILES):
        shown = shown.tb_next
    return None if shown is first else shown


def _as_shown(error):
    """``error``, leaving an entry point whose frame caught it (``compute``, ``persist``, ``get``), with
    the traceback it should show once raised there again (its own frame comes back): from the first
    frame that is not belated's. The same exception object, so that ``except E as e`` still finds the
    one the task raised (a ``KeyboardInterrupt`` or ``SystemExit`` too)."""
    shown = _past_own_frames(error.__traceback__)
    return error.with_traceback(error.__traceback__.tb_next if shown is None else shown)


def _run(args, traverse, scheduler, num_workers, timeout, retries, persist, kwargs):
    """Runs compute or persist: options default to ``belated.config``, then to dask's own configuration
    for the keys both have (``scheduler``, ``num_workers``); other engines get the graph."""
    # IPython (and pytest) leave frames marked so out of tracebacks: a task's error shows the user's
    # call, then the task's own frames, not belated's.
    __tracebackhide__ = True
    retries = _retry_count(retries)
    if "get" in kwargs:
        # dask refuses the keyword it removed rather than ignoring it, as an unknown keyword would be.
        raise TypeError(
            "The get= keyword has been removed: use scheduler= (a name, a get function or a Client)"
        )
    if scheduler is None:  # only None: dask refuses an empty name or another false value
        scheduler = _setting("scheduler") or _in_distributed_task() or "threads"
    scheduler = _not_asynchronous(scheduler, persist)
    if isinstance(scheduler, str):
        scheduler = scheduler.lower()
        if scheduler not in _SCHEDULER_NAMES:
            scheduler = _dask_named_scheduler(scheduler) or scheduler
    if isinstance(scheduler, str):
        initializer = kwargs.get("initializer") or _setting("multiprocessing.initializer")
        if scheduler in ("processes", "multiprocessing") and initializer:
            # dask runs it in each worker process first; results that depend on it would differ.
            raise NotImplementedError(
                "belated's worker processes do not run an initializer (initializer= or dask's "
                "multiprocessing.initializer setting); run that setup inside the tasks (or at the import "
                "of their module)"
            )
    elif scheduler is _get_function():
        scheduler = "threads"
    elif callable(scheduler) or isinstance(scheduler, concurrent.futures.Executor):
        # A dask get function or an executor: dask runs the graph on it, as dask.compute does.
        _require("dask", "dask")
        from dask.base import compute as dask_compute
        from dask.base import persist as dask_persist

        run = dask_persist if persist else dask_compute
        options = {"num_workers": num_workers} if num_workers is not None else {}
        return run(*args, traverse=traverse, scheduler=scheduler, **options, **kwargs)
    if persist and _is_local_client(scheduler):
        persisted = _client_persist(scheduler, args, traverse, retries)
        if persisted is not None:
            return persisted
    # Its results held under keys of the graph are used, not computed again (see Client._held_results).
    client = scheduler if _is_local_client(scheduler) and not _futures.in_task() else None
    in_process = getattr(scheduler, "_in_process_threads", None)  # a Client(processes=False)
    if in_process is not None:
        scheduler, num_workers = "threads", num_workers or in_process
    cluster = getattr(scheduler, "_cluster", None)
    executor = None if cluster is not None else executor_for(scheduler, retries)
    if executor is not None:
        client = distributed_client_of(scheduler) if persist else None
        if client is not None:
            # The results stay in the cluster, as dask's persist leaves them: each Delayed given back
            # fetches its own from there when computed.
            from dask.base import persist as dask_persist

            if retries is not None:
                kwargs = {**kwargs, "retries": retries}
            return dask_persist(*args, traverse=traverse, scheduler=client, **kwargs)
        if persist:
            raise NotImplementedError(
                "persist() keeps results in this process; on a cluster, use client.persist(...) instead"
            )
        with _logging.computing("compute", scheduler):
            return _belated.compute_with(args, executor, traverse)
    if cluster is None and in_process is None:
        # A thread or process pool (dask's pool= keyword or setting) sets how many tasks run at once in
        # place of num_workers, as in dask; they run on the engine's own workers.
        num_workers = pool_size(kwargs.get("pool") or _setting("pool")) or num_workers
    if num_workers is None:
        num_workers = _setting("num_workers")
    if timeout is None:
        timeout = config._read("timeout", None)
    # On a belated Client, retries= also runs a task that raised again, as distributed's does for
    # x.compute(scheduler=client, retries=...); the local schedulers' retries are for dead workers.
    retry_errors = (retries or 0) if cluster is not None or in_process is not None else 0
    if retries is None:
        retries = config._read("retries", 1)
    counted = scheduler._counted() if cluster is not None else contextlib.nullcontext()
    with claimed_callbacks() as callbacks, counted as token:
        if cluster is not None:
            scheduler = "threads"
        where = scheduler if cluster is None else "a local cluster"

        # dask fuses linear chains of collections' tasks; run in this process, the engine runs them one
        # by one for less than fusing costs dask, as in belated.get.
        fuse = cluster is not None or scheduler == "processes"
        # A Client's persisted objects stand for results that may still be on their way.
        _futures.wait_for_persists(args, traverse)
        if persist and any(_is_foreign(arg) for arg in args):

            def run(tasks, rest):
                with _logging.computing("persist", where):
                    return _belated.compute(
                        (*tasks, *rest),
                        scheduler,
                        num_workers,
                        traverse,
                        callbacks,
                        timeout,
                        True,
                        retries,
                        cluster,
                        token,
                        computed=len(tasks),
                        ramp=True,
                        retry_errors=retry_errors,
                    )

            return _persist_collections(args, run, fuse)
        args, collections = _collections_as_delayed(args, traverse, fuse)
        stand_ins = (
            None if client is None else _futures.stand_ins(client._held_results(args, (), traverse, False))
        )
        # Called here rather than through run(): a task's traceback shows one frame of ours fewer.
        with _logging.computing("persist" if persist else "compute", where):
            return _belated.compute(
                args,
                scheduler,
                num_workers,
                traverse,
                callbacks,
                timeout,
                persist,
                retries,
                cluster,
                token,
                # dask's collections run on as many threads as pay, as belated.get runs them.
                ramp=collections,
                retry_errors=retry_errors,
                stand_ins=stand_ins,
            )


def _in_distributed_task():
    """``"distributed"`` in a task running on a Dask distributed worker, whose configuration may name no
    scheduler: there dask's compute finds the worker's client (``get_client()``), and so does belated's."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        distributed.get_worker()
    except ValueError:
        return None
    return "distributed"


def _not_asynchronous(scheduler, persist):
    """``scheduler``, or in place of an asynchronous Dask distributed Client (whose ``get`` gives a
    coroutine) the scheduler dask's ``admin.async-client-fallback`` names, with dask's warning; without
    one, dask's RuntimeError."""
    if isinstance(scheduler, str) and scheduler.lower() not in ("distributed", "dask.distributed"):
        return scheduler
    client = distributed_client_of(scheduler)
    if client is None or not client.asynchronous:
        return scheduler
    name = "persist" if persist else "compute"
    fallback = config._read("admin.async-client-fallback", None)
    if not fallback:
        raise RuntimeError(f"Attempting to use an asynchronous Client in a synchronous context of `{name}`")
    warnings.warn(
        f"Distributed Client detected but Client instance is asynchronous. Falling back to `{fallback}` "
        f"scheduler. To use an asynchronous Client, please use ``Client.{name}`` and "
        f"``Client.gather`` instead of the top level ``{name}``",
        UserWarning,
        stacklevel=4,
    )
    return fallback


def _is_local_client(scheduler):
    """Whether ``scheduler`` is a belated Client running tasks itself, not on Dask distributed."""
    from belated._client import Client

    return isinstance(scheduler, Client) and scheduler._distributed_client is None


def _left_to_the_engine(obj):
    """Whether ``obj`` is a dask collection, or a container the engine looks into for ``Delayed``
    objects that :func:`_found` does not (a namedtuple, a dataclass, a slice, an iterator)."""
    if type(obj) in _SEQUENCES or type(obj) is dict or isinstance(obj, _belated.Delayed):
        return False
    return (
        _is_foreign(obj)
        or isinstance(obj, (tuple, slice, collections.abc.Iterator))
        or (dataclasses.is_dataclass(obj) and not isinstance(obj, type))
    )


def _is_foreign(arg):
    """Whether ``arg`` is a dask collection other than belated's own ``Delayed``."""
    return not isinstance(arg, _belated.Delayed) and is_dask_collection(arg)


def _collections_as_delayed(args, traverse, fuse):
    """``args`` with each dask collection among them (and, with ``traverse``, in the lists, tuples, sets
    and dicts they are) replaced by a ``Delayed`` of its value, and whether there was any. The collections'
    graphs are optimized together, as ``dask.compute`` optimizes them, so that tasks they share stay
    one task each. (Collections deeper inside arguments are taken one by one when the engine meets
    them.)"""
    found = _found(args, traverse, _is_foreign, _SCANNED_LEVELS)
    if not found:
        return args, False
    from belated._dask import collections_graph

    dsk, keys = collections_graph(found, fuse=fuse)
    delayed = _belated.dask_graph_delayed(dsk, keys)
    return _replaced(args, traverse, found, delayed, _SCANNED_LEVELS), True


def _found(args, traverse, wanted, levels):
    """The objects among ``args`` for which ``wanted`` holds, and with ``traverse`` those in the lists,
    tuples, sets and dicts they are (as dask looks in them), up to ``levels`` deep, in order."""
    found = []
    for arg in args:
        _scan(arg, levels if traverse else 0, wanted, found)
    return found


# Module functions, not closures: a closure calling itself is a cycle, which would hold what it
# found (persisted results kept in workers among them) until a gc pass.
def _scan(obj, levels, wanted, found):
    if wanted(obj):
        found.append(obj)
    elif levels > 0 and type(obj) in _SEQUENCES:
        for item in obj:
            _scan(item, levels - 1, wanted, found)
    elif levels > 0 and type(obj) is dict:
        for item in obj.values():
            _scan(item, levels - 1, wanted, found)


def _replaced(args, traverse, found, replacements, levels):
    """``args`` with each object :func:`_found` gave (``found``) replaced by the one at its place in
    ``replacements``, in containers rebuilt."""
    replacement = dict(zip(map(id, found), replacements, strict=True))
    levels = levels if traverse else 0
    return tuple(_replace(arg, levels, replacement) for arg in args)


def _replace(obj, levels, replacement):
    if id(obj) in replacement:
        return replacement[id(obj)]
    if levels > 0 and type(obj) in _SEQUENCES:
        return type(obj)(_replace(item, levels - 1, replacement) for item in obj)
    if levels > 0 and type(obj) is dict:
        return {key: _replace(item, levels - 1, replacement) for key, item in obj.items()}
    return obj


def _client_persist(client, args, traverse, retries):
    """``persist`` on a belated Client (the default one, or ``scheduler=``): the Client's own persist,
    as dask hands one to distributed's default Client, so the results stay in its workers and this
    returns at once. The ``Delayed`` objects among ``args`` (and, with ``traverse``, in the lists,
    tuples, sets and dicts they are) are persisted in one call; None if dask collections or other
    containers the engine looks into are among them, which are computed here (the caller's persist
    does that)."""
    if _found(args, traverse, _left_to_the_engine, _DELAYED_LEVELS):
        return None
    found = _found(args, traverse, lambda obj: isinstance(obj, _belated.Delayed), _DELAYED_LEVELS)
    persisted = client.persist(found, traverse=traverse, retries=retries) if found else []
    return _replaced(args, traverse, found, persisted, _DELAYED_LEVELS)


# How deep in containers compute looks for dask collections to optimize together.
_SCANNED_LEVELS = 3
_SEQUENCES = (list, tuple, set, frozenset)
# How deep in containers a Client's persist looks for Delayed objects: as deep as data is nested in
# practice, short of Python's recursion limit.
_DELAYED_LEVELS = 100


def _persist_collections(args, run, fuse):
    """``persist`` when dask collections are among ``args``: each comes back as a collection of its own
    type whose graph holds its computed keys, as ``dask.persist`` returns it. The collections' graphs
    are optimized together, as ``dask.persist`` optimizes them, and their keys and the other arguments
    are computed in one run, so a task they share runs once."""
    from belated._dask import collections_keys_graph

    foreign = [i for i, arg in enumerate(args) if _is_foreign(arg)]
    dsk, keys = collections_keys_graph([args[i] for i in foreign], fuse=fuse)
    tasks = _belated.dask_graph_delayed(dsk, [key for each in keys for key in each])
    results = run(tasks, [arg for i, arg in enumerate(args) if i not in foreign])
    values, rest = iter(results[: len(tasks)]), iter(results[len(tasks) :])
    persisted = []
    for i, arg in enumerate(args):
        if i not in foreign:
            persisted.append(next(rest))
            continue
        rebuild, state = arg.__dask_postpersist__()
        collection_keys = keys[foreign.index(i)]
        persisted.append(rebuild({key: next(values) for key in collection_keys}, *state))
    return tuple(persisted)


def compute(
    *args,
    traverse=True,
    optimize_graph=True,
    scheduler=None,
    num_workers=None,
    timeout=None,
    retries=None,
    **kwargs,
):
    """Compute several lazy values at once, sharing the tasks they have in common.

    Arguments may be ``Delayed`` objects, or lists, tuples, dicts, sets, namedtuples and dataclasses
    holding them (``traverse=False`` looks at the top level only); anything else is returned as it is.
    Returns a tuple with one result per argument.

    ``scheduler`` is ``"threads"`` (the default), ``"processes"`` (calls run in worker processes started
    once and reused; ``retries`` times a task is retried if its process dies, default 1) or ``"sync"``
    (everything on the calling thread, for debugging); ``num_workers`` sets the number of workers.
    Both default to ``belated.config``. A ``belated.Client`` runs it on its cluster (the default
    while the client is open). To scale out: a Dask distributed ``Client`` (or ``"distributed"`` for
    the default one) receives the whole graph in one submission; ``"ray"`` runs each task as a Ray task.

    ``timeout`` (seconds, default ``belated.config`` ``timeout``) cancels a local computation that runs
    longer and raises ``belated.ComputeTimeoutError``; tasks already running cannot be stopped, so they
    finish in the background and their results are dropped. The inline ``"sync"`` scheduler runs
    tasks on your thread, so it cannot stop one: it notices the timeout after each task.
    ``optimize_graph`` and other keyword arguments are accepted for dask compatibility: the engine only
    ever runs the tasks the results need.

    Parameters
    ----------
    *args
        ``Delayed`` objects, containers of them, or anything else (returned as it is).
    traverse : bool
        Whether to look for ``Delayed`` objects inside containers.
    scheduler : str, Client or callable, optional
        ``"threads"``, ``"processes"``, ``"sync"``, ``"distributed"``, ``"ray"``, a ``belated.Client``
        or a Dask distributed ``Client``; default ``belated.config`` ``scheduler``, else ``"threads"``.
        A dask get function (``dask.get``, ``client.get``...) or a ``concurrent.futures.Executor``
        is handed to ``dask.compute``, as dask does; ``timeout`` and ``retries`` do not apply there.
    num_workers : int, optional
        How many threads or processes run tasks.
    timeout : float, optional
        Seconds before a local computation is cancelled.
    retries : int, optional
        How many times a task is retried when its worker process dies (default 1); on a
        ``belated.Client``, also when it raises, as on distributed's.

    Returns
    -------
    tuple
        One result per argument, with ``Delayed`` objects replaced by their values.

    Raises
    ------
    Exception
        The first failing task's own exception, with its traceback.
    belated.ComputeTimeoutError
        When ``timeout`` passes first.
    belated.WorkerLostError
        When a task's worker process died more than ``retries`` times.

    Examples
    --------
    >>> from belated import delayed, compute
    >>> a = delayed(1) + 2
    >>> compute(a, {"b": a * 10}, "unchanged")
    (3, {'b': 30}, 'unchanged')
    """
    __tracebackhide__ = True
    try:
        return _run(args, traverse, scheduler, num_workers, timeout, retries, persist=False, kwargs=kwargs)
    except BaseException as error:
        raise _as_shown(error)  # noqa: B904


def persist(
    *args,
    traverse=True,
    optimize_graph=True,
    scheduler=None,
    num_workers=None,
    timeout=None,
    retries=None,
    **kwargs,
):
    """Compute lazy values and return new ``Delayed`` objects holding the results under the same keys.

    Takes the arguments of :func:`compute`. With a belated ``Client`` as the scheduler (the default one,
    or ``scheduler=client``), this is that Client's ``persist``, as dask hands a persist to distributed's
    default Client: it returns at once and the results stay in the Client's workers.

    Parameters
    ----------
    *args
        ``Delayed`` objects, dask collections, containers of them, or anything else (returned as it is).
    traverse : bool
        Whether to look for ``Delayed`` objects inside containers.
    scheduler : str or Client, optional
        As for :func:`compute`.
    num_workers : int, optional
        How many threads or processes run tasks.
    timeout : float, optional
        Seconds before a local computation is cancelled.
    retries : int, optional
        How many times a task is retried when its worker process dies (default 1); on a
        ``belated.Client``, also when it raises, as on distributed's.

    Returns
    -------
    tuple
        One result per argument: each ``Delayed`` computed into a ``Delayed`` that holds its value.

    Raises
    ------
    NotImplementedError
        On Dask distributed or Ray, which keep results in their cluster.
    Exception
        The first failing task's own exception, with its traceback.
    belated.ComputeTimeoutError
        When ``timeout`` passes first.

    Examples
    --------
    >>> from belated import delayed, persist
    >>> a = delayed(sum)([1, 2, 3])
    >>> (b,) = persist(a)
    >>> b.key == a.key, b.compute()
    (True, 6)
    """
    __tracebackhide__ = True
    try:
        return _run(args, traverse, scheduler, num_workers, timeout, retries, persist=True, kwargs=kwargs)
    except BaseException as error:
        raise _as_shown(error)  # noqa: B904


def is_dask_collection(x):
    """Whether ``x`` is a dask collection (a ``Delayed``, or anything with a dask graph), as in dask.

    >>> from belated import delayed, is_dask_collection
    >>> is_dask_collection(delayed(1)), is_dask_collection(1)
    (True, False)
    """
    if isinstance(x, _belated.Delayed):
        return True
    if isinstance(x, type):
        return False
    graph = getattr(x, "__dask_graph__", None)
    if not callable(graph):
        return False
    dask_base = sys.modules.get("dask.base")
    if dask_base is not None:
        # dask knows the collections that answer without building their graph (a dask-expr DataFrame
        # builds and optimizes its whole expression in __dask_graph__).
        return dask_base.is_dask_collection(x)
    return graph() is not None


def optimize(*args, traverse=True, **kwargs):
    """``dask.optimize``: collections that compute the same values with optimized graphs.

    A belated graph holds only the tasks its keys need and is never rewritten, so ``Delayed`` objects
    come back as they are; other dask collections among the arguments go through ``dask.optimize``.

    >>> from belated import delayed, optimize
    >>> x = delayed(sum)([1, 2])
    >>> optimize(x)[0] is x
    True
    """
    foreign = [arg for arg in args if not isinstance(arg, _belated.Delayed) and is_dask_collection(arg)]
    if not foreign:
        return args
    import dask

    return dask.optimize(*args, traverse=traverse, **kwargs)


_ANNOTATION_CHECKS = {
    "workers": (lambda v: isinstance(v, str | list | tuple | set) or callable(v), "a str, list or callable"),
    "priority": (lambda v: isinstance(v, numbers.Number) or callable(v), "a number or callable"),
    "retries": (lambda v: isinstance(v, numbers.Number) or callable(v), "a number or callable"),
    "resources": (lambda v: isinstance(v, dict) or callable(v), "a dict or callable"),
    "allow_other_workers": (lambda v: isinstance(v, bool) or callable(v), "a bool or callable"),
}


@contextlib.contextmanager
def annotate(**annotations):
    """``dask.annotate``: a context manager attaching annotations to the tasks built inside it.

    The annotations are checked as dask checks them and are visible in ``config.get("annotations")``
    inside the block. belated's own schedulers ignore them, as dask's local schedulers do; they matter
    to a Dask distributed scheduler.

    >>> import belated
    >>> with belated.annotate(priority=1):
    ...     belated.config.get("annotations")
    {'priority': 1}
    """
    for name, value in annotations.items():
        check = _ANNOTATION_CHECKS.get(name)
        if check is not None and not check[0](value):
            raise TypeError(f"'{name}' annotations must be {check[1]}, but got {value!r}")
    merged = {**config._read("annotations", {}), **annotations}
    dask = sys.modules.get("dask")
    # dask collections built inside the block (``import belated as dask`` code builds arrays and
    # dataframes with dask itself) take their annotations from dask's own annotate.
    in_dask = contextlib.nullcontext() if dask is None else dask.annotate(**annotations)
    with config.set(annotations=merged), in_dask:
        yield


class Dashboard:
    """The live dashboard started by :func:`dashboard`; Jupyter shows it as a link."""

    def __init__(self, url):
        self.url = url

    def stop(self):
        """Stops serving the page; computations stop reporting to it."""
        _belated.stop_dashboard()
        _logging.dashboard_logger.debug("dashboard stopped")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"Dashboard({self.url!r})"

    def _repr_html_(self):
        url = html.escape(self.url)
        return f'<a href="{url}" target="_blank">belated dashboard: {url}</a>'


def dashboard(host="127.0.0.1", port=8787, token=None, *, quiet=False):
    """Serves a live dashboard of every computation and prints its URL.

    The page shows progress per function, a task stream per worker thread, the task graph coloured as
    tasks wait, run, finish or fail, and the CPU and memory of this process and its worker processes.
    It listens on loopback unless ``host`` says otherwise; then the URL carries a token (``token``, or a
    random one) that every request must present. ``port=0`` picks a free port. Calling it again returns
    the running dashboard.

    Parameters
    ----------
    host : str
        The address to listen on.
    port : int
        The port to listen on; ``0`` for a free one.
    token : str, optional
        The token requests must carry when ``host`` is not loopback (at least 16 characters).
    quiet : bool
        Whether to skip printing the URL.

    Returns
    -------
    Dashboard
        The running dashboard; ``stop()`` ends it, and so does leaving a ``with`` block.

    Raises
    ------
    ValueError
        For a token shorter than 16 characters on an address other than loopback.
    belated.BelatedError
        When the address can't be listened on (a port in use, say).
    """
    starting = _belated.dashboard_url() is None
    url = _belated.start_dashboard(host, port, token)
    if starting:
        _logging.dashboard_logger.debug("dashboard serving at %s", url.split("?", 1)[0])
    if not quiet:
        print(f"belated dashboard: {url}")
    return Dashboard(url)
