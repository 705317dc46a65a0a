"""``belated.Client``: a local cluster of worker processes run by the engine, or a Dask distributed
cluster, as the default scheduler while it is open."""

import collections.abc
import concurrent.futures
import concurrent.futures.thread  # registers its exit hook before ours (at the end)
import contextlib
import functools
import html
import importlib
import importlib.abc
import importlib.util
import logging
import numbers
import os
import re
import sys
import tempfile
import threading
import time
import uuid
import warnings
import weakref

from belated import _belated, _logging, config
from belated._api import _retry_count, is_dask_collection
from belated._dask import _require
from belated._futures import (
    Computation,
    EachDone,
    Future,
    Persisted,
    Raised,
    Scattered,
    finished,
    futures_in,
    futures_of,
    gather,
    graphs_of,
    held_keys,
    in_task,
    is_cancelled,
    kept_in,
    persisting,
    persists_needed,
    persists_started,
    replace_futures,
    task_client,
    wait_for_persists,
)
from belated._futures import (
    done_awaitable as _done_awaitable,
)
from belated._futures import (
    scatter as scatter_task,
)
from belated._futures import (
    seconds as timeout_seconds,
)
from belated._futures import (
    stand_ins as stand_ins_of,
)
from belated._tokenize import tokenize

_OPEN = weakref.WeakSet()
# Clients in the order they started, for get_client(): the newest still open.
_STARTED = []
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_UNITS.update({f"{u}b": n for u, n in list(_UNITS.items()) if u not in ("", "b")})
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


# Sizes from here up are not sizes of any machine's memory (nor fit the engine's byte counts).
_MAX_BYTES = 2**63


def _total_memory():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_memory_limit(limit, n_workers):
    """Bytes per worker from dask's ``memory_limit`` forms, or None for no limit.

    >>> parse_memory_limit("2 GB", 4), parse_memory_limit("512MiB", 1), parse_memory_limit(0, 2)
    (2000000000, 536870912, None)
    """
    if limit is None or limit == 0:
        return None
    if limit == "auto":
        return _total_memory() // n_workers
    if isinstance(limit, float) and 0 < limit <= 1:
        return int(_total_memory() * limit)
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0 < limit < _MAX_BYTES:
        return int(limit)
    if isinstance(limit, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", limit)
        if match and match.group(2).lower() in _UNITS:
            size = float(match.group(1)) * _UNITS[match.group(2).lower()]
            if size < _MAX_BYTES:
                return int(size) or None  # "0GB" means no limit, as 0 does
    raise ValueError(
        f"memory_limit must be bytes, a size like '4GB', a fraction of memory, 'auto' or None; got {limit!r}"
    )


def describe_memory_limit(limit, per_worker):
    """The limit as messages show it: as the user wrote it, with the bytes per worker it came to when
    that is not plain from the text.

    >>> describe_memory_limit("200MB", 200_000_000), describe_memory_limit(0.5, 2**30)
    ('200MB', '0.5 of memory (1.00 GiB per worker)')
    """
    if per_worker is None:
        return None
    if limit == "auto":
        return f"'auto' ({_size(per_worker)} per worker)"
    if isinstance(limit, str):
        return limit.strip()
    if isinstance(limit, float) and limit <= 1:
        return f"{limit} of memory ({_size(per_worker)} per worker)"
    return f"{limit} bytes"


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def _hold(collections, futures):
    """Persisted objects: each Delayed among ``collections`` becomes one holding its distributed
    Future under the same key, which later graphs use as a dependency."""
    if isinstance(collections, _belated.Delayed):
        _, (key, length) = collections.__dask_postpersist__()
        return _belated.delayed(futures, name=key, nout=length, traverse=False)
    if type(collections) in (list, tuple):
        return type(collections)(_hold(c, f) for c, f in zip(collections, futures, strict=True))
    return futures


_SEQUENCES = (list, tuple, set, frozenset)


def _scatter_key(value, hashed):
    """distributed's key of a scattered value: its type's name and its token, or a random one."""
    prefix = type(value).__name__
    return f"{prefix}-{tokenize(value)}" if hashed else f"{prefix}-{uuid.uuid4().hex}"


def _is_key(key):
    """Whether ``key`` names a scattered value as given, as in distributed: a string, bytes, a number
    (numpy's scalars among them), or a tuple of keys."""
    if type(key) is tuple:
        return all(map(_is_key, key))
    return type(key) in (str, bytes) or isinstance(key, numbers.Number)


def _holders(future):
    """The workers (by index) holding ``future``'s value: none unless it is kept in one."""
    kept = kept_in(future._cell)
    return kept.workers if kept is not None else []


# distributed's scheduling keywords of submit and map, the client's and never the function's: why
# belated's Client refuses each one when it is given, or None where it changes no result here (an order
# or a batching among tasks that all run anyway).
_SCHEDULING = {
    "workers": "belated's Client does not place tasks by workers=: every worker runs any task",
    # Resources limit how many tasks run at once: ignoring them could overload a worker.
    "resources": "belated's Client does not place tasks by resources=: every worker runs any task",
    "actor": "belated's Client has no actors: submit a function instead",
    "actors": "belated's Client has no actors: submit a function instead",
    "priority": None,
    "fifo_timeout": None,
    "allow_other_workers": None,
    "batch_size": None,
}


def _scheduling(given):
    """The scheduling keywords among ``given`` (a submit or map call's locals, so the keywords are
    listed once, in the signature), as distributed's Client takes them."""
    return {name: given[name] for name in _SCHEDULING if name in given}


def _refuse_placement(scheduling):
    """Refuses the scheduling keywords belated's workers cannot honour, rather than ignoring them or
    passing them to the function."""
    for name, value in scheduling.items():
        if _SCHEDULING[name] is not None and value is not None and value is not False:
            raise NotImplementedError(_SCHEDULING[name])


class Client:
    """Runs computations on a cluster while it is open, as in the dask tutorial.

    ``Client(n_workers=4, threads_per_worker=4, memory_limit="2GB")`` starts a local cluster: worker
    processes run by belated's engine, each running ``threads_per_worker`` tasks at once and keeping the
    results it computed until a task elsewhere, or the caller, needs them. Workers talk to this process
    on socket pairs only it holds, never a TCP port; their output is forwarded to this process's, each
    line prefixed ``[worker PID]``. A worker that dies or goes over
    ``memory_limit`` (bytes, ``"4GB"``, a fraction of the machine's memory, ``"auto"``: an equal share,
    or ``None``) is replaced; its tasks are retried (the ``retries`` setting) and the results it held
    recomputed. As in distributed, ``retries=`` of ``compute``, ``persist``, ``submit`` and ``map`` runs
    a task that raised again, up to that many times (the last run's exception is the task's); given,
    it also replaces the setting for tasks whose worker died.
    Workers import the modules in ``preload`` as soon as they start (default: numpy and pandas, when
    this process has imported them).

    ``processes=False`` runs tasks on threads of this process instead: one worker of
    ``n_workers * threads_per_worker`` threads (by default one per core), nothing pickled, and tasks
    can submit tasks (:func:`belated.get_client`). Its ``memory_limit`` is reported, not enforced.

    Other keywords as in distributed: ``silence_logs`` (a level below which belated's log records are
    dropped while the client is open; by default, and with ``False``, the logging configuration is
    left as it is, so a ``DEBUG`` level set for ``belated`` stays), ``asynchronous`` (``gather``,
    ``scatter``, ``close``, ``wait``, ``nbytes`` and a future's ``result``, ``exception`` and
    ``traceback`` return awaitables; ``async with Client(asynchronous=True)``), ``name``.

    ``Client("tcp://host:8786")`` (or a distributed ``Client`` or ``LocalCluster``) connects to Dask
    distributed instead, which receives each graph in one submission; its other attributes are the
    distributed client's.

    Until ``close()`` (or the end of a ``with`` block) ``compute()`` runs there by default, and so do
    dask collections' own ``.compute()`` and ``dask.compute`` (dask's ``scheduler`` setting names it).
    ``client.compute(...)``, ``client.submit(...)``, ``client.map(...)`` and ``client.scatter(...)``
    return :class:`Future` objects and ``client.gather(...)`` waits for them.

    Parameters
    ----------
    address : str, distributed.Client or distributed.LocalCluster, optional
        A Dask distributed scheduler to connect to; by default a local belated cluster starts.
    n_workers : int, optional
        Worker processes (by default one per core, or fewer with ``threads_per_worker``).
    threads_per_worker : int, optional
        Tasks each worker runs at once.
    processes : bool
        ``False`` runs tasks on threads of this process instead of worker processes.
    memory_limit : int, float, str or None
        Each worker's memory limit: bytes, ``"4GB"``, a fraction of the machine's memory, ``"auto"``
        (an equal share) or ``None`` (no limit).
    silence_logs : int, str or bool, optional
        A logging level below which belated's records are dropped while the client is open.
    dashboard_address : str, optional
        ``"host:port"`` of the dashboard the client opens (``client.dashboard_link``; a free port if
        that one is taken); ``None`` opens none.
    asynchronous : bool
        Whether ``gather``, ``scatter`` and ``close`` return awaitables.
    name : str, optional
        A name for the client, as in distributed.
    set_as_default : bool
        Whether ``compute()`` runs on this client until it is closed.
    preload : list of str, optional
        Modules each worker imports as soon as it starts.
    **kwargs
        For a Dask distributed ``address``: passed to ``distributed.Client``. Keywords that only
        make sense for a remote scheduler raise ``TypeError`` for a local cluster.

    Raises
    ------
    TypeError
        For a keyword a local cluster does not take, or ``processes`` that is not a bool.
    ValueError
        For a ``memory_limit``, ``n_workers`` or ``threads_per_worker`` that can't be used.
    belated.WorkerStartError
        When a worker process fails to start.

    Examples
    --------
    >>> import belated
    >>> with belated.Client(n_workers=2, threads_per_worker=1) as client:
    ...     future = client.submit(sum, [1, 2, 3])
    ...     future.result()
    6
    """

    def __init__(
        self,
        address=None,
        *,
        n_workers=None,
        threads_per_worker=None,
        processes=True,
        memory_limit="auto",
        silence_logs=None,
        dashboard_address=":8787",
        asynchronous=False,
        name=None,
        set_as_default=True,
        preload=None,
        **kwargs,
    ):
        # Reentrant: a future dropped while it is held (by garbage collection, say) runs callbacks that
        # take it.
        self._lock = threading.RLock()
        self._cluster = None
        self._threads = None
        self._closed = False
        self._distributed_client = None
        self._dask_config = None
        self._dashboard = None
        self._owns_dashboard = False
        self._silenced = None
        self.asynchronous = bool(asynchronous)
        self.name = name
        self.id = f"Client-{uuid.uuid4()}"
        if address is not None:
            distributed = _require("distributed", "dask")
            if isinstance(address, distributed.Client):
                self._distributed_client = address
            else:
                self._distributed_client = distributed.Client(address, **kwargs)
            self._config = config.set(scheduler=self) if set_as_default else None
            return
        _check_local_keywords(kwargs)
        if not isinstance(processes, bool):
            raise TypeError(f"processes must be True or False, got {processes!r}")
        if not processes and n_workers is None:
            n_workers = 1
        n_workers, threads_per_worker = _shape(n_workers, threads_per_worker)
        self._n_workers, self._threads_per_worker = n_workers, threads_per_worker
        self._memory_limit_text = memory_limit
        self._memory_limit = parse_memory_limit(memory_limit, n_workers)
        from belated import _worker  # imported when needed: `import belated` stays quick

        self._preload = _worker.usual_imports() if preload is None else list(preload)
        # Files from upload_file, installed again in workers started later (restart, scale).
        self._uploads = []
        self._silenced = _silence(silence_logs)
        if processes:
            self._cluster = self._start_cluster(n_workers)
        else:
            self._threads = n_workers * threads_per_worker
        # Each future's computation waits on a thread of its own (idle while the engine works), so
        # futures submitted one by one can still fill every worker thread.
        self._submitter = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(32, 2 * n_workers * threads_per_worker), thread_name_prefix="belated-client"
        )
        # The cancel tokens of computations not yet finished, which close() and restart() cancel, and
        # how many tasks each asked for (what adapt() scales to).
        self._pending = set()
        self._task_counts = {}
        # Notified as each leaves _pending, with its futures settled (see _retire).
        self._one_finished = threading.Condition(self._lock)
        # Each key a live future holds -> (its computation, weakly; its index): a later submit, map,
        # compute or scatter under that key gets a future of that same result, as in distributed. Two
        # results under one key would otherwise disagree with the value a task taking either receives.
        self._held = {}
        # Held while the workers are added or retired; each scale counts, so a retirement waiting for
        # computations to end knows a later scale changed the plan.
        self._scaling = threading.Lock()
        self._scales = 0
        self._scaled_to = n_workers
        # What persists made stand for: on the local cluster, a scale down moves their results off
        # the workers it retires; nbytes sizes them.
        self._persisted = weakref.WeakSet()
        # The same by key, the latest of each: what a later computation of the key uses.
        self._persisted_keys = weakref.WeakValueDictionary()
        self._adaptive = None
        self._local_cluster = None
        if dashboard_address:
            self._owns_dashboard = _belated.dashboard_url() is None
            self._dashboard = _start_dashboard(dashboard_address)
        _OPEN.add(self)
        _STARTED.append(weakref.ref(self))
        self._config = config.set(scheduler=self) if set_as_default else None
        if set_as_default:
            _make_dask_default(self)

    def _start_cluster(self, n_workers):
        from belated._remote import Answers

        cluster = _belated.Cluster(
            n_workers,
            self._threads_per_worker,
            parse_memory_limit(self._memory_limit_text, n_workers),
            self._preload,
            describe_memory_limit(self._memory_limit_text, self._memory_limit),
            Answers(self),
        )
        _logging.cluster_logger.debug(
            "local cluster started: %d workers of %d threads, memory limit %s bytes each",
            n_workers,
            self._threads_per_worker,
            cluster.memory_limit,
        )
        if self._uploads:
            cluster.run_on_workers(_install_missing, (self._uploads,), {})
        return cluster

    # -- a local cluster -------------------------------------------------------------------------

    @property
    def _in_process_threads(self):
        """The threads of a ``processes=False`` client, which ``compute(scheduler=client)`` runs on."""
        if self._threads is not None:
            self._check_open()
        return self._threads

    @property
    def dashboard_link(self):
        if self._distributed_client is not None:
            return self._distributed_client.dashboard_link
        return self._dashboard.url if self._dashboard else None

    @property
    def status(self):
        if self._distributed_client is not None:
            return self._distributed_client.status
        return "closed" if self._closed else "running"

    @property
    def cluster(self):
        """The local cluster, with ``scale``, ``adapt``, ``workers`` and ``close``, as distributed's
        ``LocalCluster``."""
        if self._distributed_client is not None:
            return self._distributed_client.cluster
        with self._lock:
            if self._local_cluster is None:
                self._local_cluster = LocalCluster(self)
            return self._local_cluster

    def compute(self, collections, *, sync=False, traverse=True, retries=None, **kwargs):
        """Starts computing ``collections`` (a Delayed, or a list or tuple of them) on the cluster and
        returns a :class:`Future` for each (a list for a list), or the results with ``sync=True``."""
        retries = _retry_count(retries)
        if self._distributed_client is not None:
            return self._on_distributed(collections, traverse, sync=sync, retries=retries)
        many = type(collections) in (list, tuple)
        items = tuple(collections) if many else (collections,)
        # As distributed: what is neither a collection nor (with traverse) a container that may hold
        # some is given back as it is, not as a future.
        computed = [
            i
            for i, item in enumerate(items)
            if is_dask_collection(item) or (traverse and type(item) in _CONTAINERS)
        ]
        if len(computed) < len(items):
            results = list(items)
            if computed:
                futures = self.compute([items[i] for i in computed], traverse=traverse, retries=retries)
                for i, future in zip(computed, futures, strict=True):
                    results[i] = future
            if sync:
                results = self.gather(results)
            return results if many else results[0]
        # What is not one task (a dict or list holding some) gets a key of its own, as in distributed.
        keys = [getattr(item, "key", None) or f"{type(item).__name__}-{uuid.uuid4()}" for item in items]
        futures = self._start_apart(items, keys, traverse, retries)
        if sync:
            return self.gather(futures if many else futures[0])
        return futures if many else futures[0]

    def submit(
        self,
        func,
        *args,
        pure=True,
        key=None,
        retries=None,
        workers=None,
        resources=None,
        priority=0,
        fifo_timeout="100 ms",
        allow_other_workers=False,
        actor=False,
        actors=False,
        **kwargs,
    ):
        """Starts ``func(*args, **kwargs)`` on the cluster and returns its :class:`Future` (a distributed
        Future on Dask distributed). Futures among the arguments (also in lists, tuples and dicts) are
        replaced by their results once done; a failed one fails this task with its exception.

        As in distributed, calls are pure by default: equal calls get one key (``inc-<token>``), and
        while a future holds it, one run and one result. ``pure=False`` gives each call a key of its
        own, for functions with side effects or random results.

        distributed's scheduling keywords are the client's, never ``func``'s: ``priority``,
        ``fifo_timeout`` and ``allow_other_workers`` change no result and are accepted; ``workers``,
        ``resources`` and ``actor``, which belated's workers cannot honour, raise NotImplementedError."""
        scheduling = _scheduling(locals())
        retries = _retry_count(retries)
        if self._distributed_client is not None:
            return self._distributed_client.submit(
                func, *args, pure=pure, key=key, retries=retries, **scheduling, **kwargs
            )
        _refuse_placement(scheduling)
        if not callable(func):
            raise TypeError("First input to submit must be a callable function")
        from belated import delayed

        after = futures_in((args, kwargs))
        if key is None:
            [token] = _call_tokens(func, [args], kwargs, after) if pure else [uuid.uuid4()]
            key = f"{_funcname(func)}-{token}"
        func = self._on_this_client(func)
        func, (args, kwargs) = _passing_delayed(func, (args, kwargs))
        if not after:  # the common case: no need to wait or rebuild
            task = delayed(func)(*args, dask_key_name=key, **kwargs)
            return self._start(lambda: (task,), [key], True, retries, whole=False)[0]

        def build():
            call_args, call_kwargs = replace_futures((args, kwargs), Future._as_delayed)
            return (delayed(func)(*call_args, dask_key_name=key, **call_kwargs),)

        return self._start(build, [key], True, retries, after=after, whole=False)[0]

    def map(
        self,
        func,
        *iterables,
        key=None,
        pure=True,
        retries=None,
        workers=None,
        resources=None,
        priority=0,
        fifo_timeout="100 ms",
        allow_other_workers=False,
        actor=False,
        actors=False,
        batch_size=None,
        **kwargs,
    ):
        """``submit`` for each item of the iterables, as one computation; returns their futures, each
        done as soon as its own call is. ``key``: a list of keys, or a prefix for them (by default the
        function's name). Pure by default, as ``submit``: equal calls share a key and a result.
        distributed's scheduling keywords are taken as ``submit`` takes them; ``batch_size`` (how
        distributed submits the calls) changes no result and is accepted."""
        scheduling = _scheduling(locals())
        retries = _retry_count(retries)
        if self._distributed_client is not None:
            return self._distributed_client.map(
                func, *iterables, key=key, pure=pure, retries=retries, **scheduling, **kwargs
            )
        _refuse_placement(scheduling)
        if not callable(func):
            raise TypeError("First input to map must be a callable function")
        from belated import delayed

        calls = list(zip(*iterables, strict=True))
        after = futures_in((calls, kwargs))
        if isinstance(key, (list, tuple)):
            if len(key) != len(calls):
                raise ValueError(f"map got {len(key)} keys for {len(calls)} calls")
            keys = list(key)
        else:
            prefix = key or _funcname(func)
            if pure:
                keys = [f"{prefix}-{token}" for token in _call_tokens(func, calls, kwargs, after)]
            else:
                batch = uuid.uuid4()
                keys = [f"{prefix}-{batch}-{i}" for i in range(len(calls))]
        func, (calls, kwargs) = _passing_delayed(self._on_this_client(func), (calls, kwargs))
        call = delayed(func)

        def tasks(calls, kwargs):
            # Equal calls share a key, and so one task; of calls given one key by a list of keys, the
            # last one is that key's task, as in distributed (its graph is a dict of them).
            by_key = {}
            for args, name in zip(reversed(calls), reversed(keys), strict=True):
                if name not in by_key:
                    by_key[name] = call(*args, dask_key_name=name, **kwargs)
            return tuple(by_key[name] for name in keys)

        if not after:
            ready = tasks(calls, kwargs)
            return self._start(lambda: ready, keys, True, retries, whole=False)

        def build():
            return tasks(*replace_futures((calls, kwargs), Future._as_delayed))

        return self._start(build, keys, True, retries, after=after, whole=False)

    def _on_this_client(self, func):
        """``func``, made to see this client as get_client()'s while it runs in this process: on a
        ``processes=False`` client, or submitted by a task (whose work runs here, see ``_remote``)."""
        in_task = getattr(task_client, "client", None) is not None
        return func if self._cluster is not None and not in_task else OnClient(func, self)

    def scatter(self, data, *, broadcast=False, hash=True, direct=None, **kwargs):
        """Futures of values built here (one for a value, a list for a list, a dict for a dict: its keys
        are the futures' keys), to pass to ``submit`` and ``map``. As in distributed, on a
        local cluster of processes each value goes to a worker once and stays there: every later task
        that takes it uses it where it is (a task placed on another worker fetches it from that worker,
        which keeps its copy), ``result()`` fetches it, and dropping the last future releases it in the
        workers at once. A value whose worker died is gone, as in distributed: its futures raise
        ``CancelledError``. With ``hash=True`` equal values share a key, and a value already scattered
        is not sent again. ``broadcast=True`` copies each value to every worker before this returns
        (from the worker that received it, not again from here). ``direct`` changes nothing on a local
        cluster. A value that cannot be
        sent to a worker process is refused here, before anything runs."""
        if self._distributed_client is not None:
            return self._distributed_client.scatter(
                data, broadcast=broadcast, hash=hash, direct=direct, **kwargs
            )
        self._check_open()
        if type(data) is range:  # a sequence of values, as distributed scatters it
            data = list(data)
        if isinstance(data, collections.abc.Iterator):
            # As distributed: taken as one value, it would be scattered as an iterator object.
            raise TypeError("scatter() takes a value, list or dict, not an iterator: scatter list(...) of it")
        values = (
            list(data.values()) if type(data) is dict else list(data) if type(data) in _SEQUENCES else [data]
        )
        for value in values:
            self._check_picklable(value)
        keys = (
            [key if _is_key(key) else str(key) for key in data]
            if type(data) is dict
            else [_scatter_key(value, hash) for value in values]
        )
        futures = self._scatter(keys, values)
        if broadcast and self._cluster is not None:
            kept = [kept_in(future._cell) for future in futures]
            self._cluster.replicate([value for value in kept if value is not None])
        if type(data) is dict:
            futures = dict(zip(data, futures, strict=True))
        elif type(data) in _SEQUENCES:
            futures = type(data)(futures)
        else:
            [futures] = futures
        return _done_awaitable(futures) if self._awaits() else futures

    def _check_picklable(self, value):
        if self._cluster is not None:
            from belated import _worker  # imported when needed: `import belated` stays quick

            try:
                # The worker codec's pickler, as the send uses it: buffers (numpy arrays) are left out
                # of band, uncopied, so the check costs no copy of a big value.
                _worker.dumps(value)
            except Exception as error:
                raise TypeError(
                    f"cannot scatter {type(value).__name__} to worker processes: it cannot be pickled "
                    f"({type(error).__name__}: {error}); make it picklable, or use Client(processes=False)"
                ) from error

    def _scatter(self, keys, values):
        with self._lock:
            held = [self._held_future(key) for key in keys]
        missing = [i for i, future in enumerate(held) if future is None]
        if not missing:
            return held
        if self._cluster is None:
            made = [Future(finished([values[i]]), 0, keys[i], self) for i in missing]
            for future in made:
                with self._lock:
                    self._hold_keys(future._computation, [future.key])
        else:
            from belated import delayed

            # Each value travels as its task's argument, once, and its worker keeps it as that task's
            # result: a persist of the values.
            tasks = tuple(
                delayed(scatter_task, pure=False)(Scattered(values[i], keys[i]), dask_key_name=keys[i])
                for i in missing
            )
            made = self._start(lambda: tasks, [keys[i] for i in missing], False, 0, keep=True)
            with self._lock:
                # Unlike a persist's, these futures are the user's: a later scatter or submit under
                # one of their keys gets a future of the same kept value.
                self._hold_keys(made[0]._computation, [future.key for future in made])
            # Returns once the values are in the workers, as distributed's does; a failed upload
            # raises here.
            for future in made:
                error = future._error()
                if error is not None:
                    raise error
        for i, future in zip(missing, made, strict=True):
            held[i] = future
        return held

    def _held_future(self, key):
        """A new future of the result a live, uncancelled future of this client holds under ``key``."""
        try:
            computation_ref, index = self._held.get(key, (None, None))
        except TypeError:  # an unhashable key is never held
            return None
        computation = computation_ref() if computation_ref is not None else None
        if computation is None or index in computation.cancelled or is_cancelled(computation.cells[index]):
            return None
        return Future(computation, index, key, self)

    def _hold_keys(self, computation, keys):
        def release(ref, keys=keys):
            with self._lock:
                for key in keys:
                    if self._held.get(key, (None,))[0] is ref:
                        del self._held[key]

        ref = weakref.ref(computation, release)
        for index, key in enumerate(keys):
            if key is not None:
                self._held[key] = (ref, index)

    def persist(self, collections, *, traverse=True, retries=None, **kwargs):
        """Starts computing ``collections`` (a Delayed, or a list or tuple of them) on the cluster and
        returns at once new ``Delayed`` objects standing for the results under the same keys (a list
        for a list), as distributed does. Computing one waits for its result; a failed task's exception
        shows then, and only in what needs it.

        On a local cluster of processes the results stay in the workers that computed them: a later
        computation uses each where it is, computing a persisted object alone fetches only its own
        result, and dropping the last object holding one releases it in the workers at once. One
        lost with its worker is computed again from the original task. ``futures_of`` gives each new
        object's future, as distributed's: cancelling it (``client.cancel(persisted)``) lets go of the
        result, and computing the object then raises ``CancelledError``. On Dask distributed they stay
        in the cluster, as distributed Futures the new objects hold. Other dask collections are
        persisted before this returns. distributed's other keywords (``optimize_graph``, ``priority``,
        ``fifo_timeout``, …) are taken as ``compute`` takes them."""
        retries = _retry_count(retries)
        if self._distributed_client is not None:
            futures = self._on_distributed(collections, traverse, sync=False, retries=retries)
            return _hold(collections, futures)
        from belated import delayed, persist

        many = type(collections) in (list, tuple)
        items = tuple(collections) if many else (collections,)
        pending = [i for i, item in enumerate(items) if isinstance(item, _belated.Delayed)]
        others = [i for i in range(len(items)) if i not in set(pending)]
        persisted = list(items)
        if others:
            done = persist(*(items[i] for i in others), traverse=traverse, scheduler=self, retries=retries)
            for i, item in zip(others, done, strict=True):
                persisted[i] = item
        if pending:
            tasks = tuple(items[i] for i in pending)
            keys = [task.key for task in tasks]
            futures = self._start(lambda: tasks, keys, traverse, retries, keep=True)
            persisting(futures[0]._batch)
            for i, future in zip(pending, futures, strict=True):
                _, (key, length) = items[i].__dask_postpersist__()
                stands_for = Persisted(future, items[i], own=True)
                self._persisted.add(stands_for)
                self._persisted_keys[key] = stands_for
                persisted[i] = delayed(stands_for, nout=length, pure=True)(dask_key_name=key)
        return persisted if many else persisted[0]

    def _on_distributed(self, collections, traverse, sync, retries):
        """Computes on Dask distributed as ``belated.compute(..., scheduler=client)`` does; with
        ``sync=False`` the results stay there, as distributed Futures."""
        from belated._dask import distributed_executor

        many = type(collections) in (list, tuple)
        items = tuple(collections) if many else (collections,)
        executor = distributed_executor(self._distributed_client, sync=sync, retries=retries)
        results = _belated.compute_with(items, executor, traverse)
        return list(results) if many else results[0]

    def gather(self, futures, errors="raise", direct=None):
        """The results of ``futures`` (a Future, or lists, tuples, sets and dicts of them; an iterator of
        those gives an iterator of their results); an awaitable of them on an asynchronous client. A
        failed future raises its exception, or with ``errors="skip"`` is left out of a list given
        (None elsewhere, in a tuple given too), as in distributed. ``direct`` (distributed's choice of
        fetching from the workers or through the scheduler) changes nothing on a local cluster."""
        if self._distributed_client is not None:
            return self._distributed_client.gather(futures, errors=errors, direct=direct)
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        if isinstance(futures, collections.abc.Iterator):
            # As distributed: each gathered when reached. Taken as a value like any other object, it
            # would come back unchanged and yield the futures themselves, not their results.
            return (self.gather(future, errors=errors) for future in futures)
        if self._awaits():
            return self._gather_async(futures, errors)
        return gather(futures, skip=errors == "skip")

    @classmethod
    def current(cls, allow_global=True):
        """distributed's ``Client.current()``: the open Client started last; ``ValueError`` if none is."""
        client = current_client()
        if client is None:
            raise ValueError("No clients found: start one with belated.Client()")
        return client

    def cancel(self, futures, asynchronous=None, force=False, reason=None, msg=None):
        """Cancels ``futures`` (a Future, or lists, tuples, sets and dicts of them, or collections whose
        graphs hold them, as persisted ones do), as each future's ``cancel()`` does. ``force`` (cancel
        what other clients also want), ``reason`` and ``msg`` are distributed's; with one client per
        cluster, they change nothing here."""
        if self._distributed_client is not None:
            return self._distributed_client.cancel(
                futures, asynchronous=asynchronous, force=force, reason=reason, msg=msg
            )
        for future in futures_of(futures):
            future.cancel()
        return _done_awaitable(None) if self._awaits() else None

    def retry(self, futures, asynchronous=None):
        """Runs the tasks of the done ``futures`` (a Future, or lists, tuples, sets and dicts of them)
        again, failed or finished, as distributed does, and first those of the failed futures they
        take; the futures they take that succeeded give their results again, not computed anew. A
        pending future is left to finish (distributed leaves a waiting task so, but runs a running one
        again beside the first run: see the README's compatibility section), a scattered one as it
        is, and a cancelled one raises ``KeyError``: its key is gone."""
        if self._distributed_client is not None:
            return self._distributed_client.retry(futures, asynchronous=asynchronous)
        self._check_open()
        for future in futures_of(futures):
            self._retry(future)
        return _done_awaitable(None) if self._awaits() else None

    def _retry(self, future):
        if future.cancelled():
            raise KeyError(future.key)
        computation, index = future._computation, future._index
        restart = getattr(computation, "restart", None)  # a kept result held alone has none
        if not future.done() or restart is None:
            return
        build, keys, traverse, retries, after, keep = restart
        for dependency in after:
            if dependency.status == "error":
                self._retry(dependency)
        key = keys[index]
        with self._lock:
            held = self._held_future(key)
            # This future's run (retried before), or its computation's at another index of the key
            # (a map's equal calls): else _start would give back that future, done, and run nothing.
            if held is not None and (held._cell is future._cell or held._computation is computation):
                del self._held[key]
        # A call taking futures is built once they are done, in the background, as its submit's was:
        # built here, it would wait for those being retried.
        [again] = self._start(
            lambda: (build()[index],),
            [key],
            traverse,
            retries,
            after=after,
            keep=keep,
            whole=not after,
            rerun=True,
        )
        computation.retried.append(again._computation)
        # A new list: the computation, if its other tasks still run, settles the cells of its own.
        cells = list(computation.cells)
        for other, other_key in enumerate(keys):
            # Every future of the key sees the new run, as in distributed, where they are one task.
            if other == index or (other_key == key and other not in computation.cancelled):
                cells[other] = again._cell
        computation.cells = cells

    def nbytes(self, keys=None, summary=True, **kwargs):
        """The bytes of each result the futures and persisted objects of this client hold (by default
        every one that succeeded), by key, or with ``summary`` by key prefix (dask's ``key_split``), as
        distributed's. A key given whose task has no result yet (pending or failed) counts -1, one
        nothing holds raises ``KeyError``. A result kept in a worker process is fetched to be sized,
        by dask's ``sizeof`` as distributed's are (by the workers' own measure without dask). An
        awaitable of that on an asynchronous client."""
        if self._distributed_client is not None:
            return self._distributed_client.nbytes(keys=keys, summary=summary, **kwargs)
        self._check_open()
        with self._lock:
            futures = {key: self._held_future(key) for key in list(self._held)}
            # A persist's results too, as distributed's scheduler holds their keys.
            for item in list(self._persisted):
                future = item.future
                if item.own and not future.cancelled():
                    futures.setdefault(future.key, future)
        sizes = {}
        for key in futures if keys is None else keys:
            future = futures.get(key)
            if future is None:
                if keys is not None:
                    raise KeyError(key)
                continue
            size = _result_size(future)
            if size is not None or keys is not None:
                sizes[key] = -1 if size is None else size
        if not summary:
            return self._answer(sizes)
        key_split = _require("dask", "dask").utils.key_split
        grouped = collections.defaultdict(int)
        for key, size in sizes.items():
            grouped[key_split(key)] += size
        return self._answer(dict(grouped))

    def get(self, dsk, keys, **kwargs):
        """Computes ``keys`` of the dask graph ``dsk`` here and returns their values, as distributed's
        ``Client.get``: dask calls it for ``collection.compute(scheduler=client)``."""
        if self._distributed_client is not None:
            return self._distributed_client.get(dsk, keys, **kwargs)
        from belated._get import get

        self._check_open()
        if self._cluster is None:
            kwargs.setdefault("num_workers", self._threads)
        return get(dsk, keys, pool=self, **kwargs)

    async def _gather_async(self, futures, errors):
        for future in futures_in(futures):
            with contextlib.suppress(Exception):
                await future
        return gather(futures, skip=errors == "skip")

    def _local(self):
        """The local cluster, for what only a belated cluster has."""
        if self._distributed_client is not None:
            raise TypeError("this Client is connected to Dask distributed; it has no belated local cluster")
        if self._cluster is None:
            raise TypeError(
                "this Client runs tasks in this process (processes=False); it has no worker processes"
            )
        return self._cluster

    def _check_open(self):
        if self._closed:
            raise _belated.BelatedError("this Client is closed; start a new one")

    def _start_apart(self, items, keys, traverse, retries):
        """Futures of ``items``, as :meth:`_start` gives them, except that while persists run, the
        items that need none of them start at once, in a computation of their own, and the others
        wait for the persists they need (distributed holds back only the tasks that need a persisted
        key still running). Items sharing a task stay in one computation: two would run it twice."""
        earlier = [] if in_task() else persists_started()
        if len(items) > 1 and earlier:
            graphs = [graphs_of((item,), traverse) for item in items]
            waits = [bool(persists_needed(item_graphs, earlier)) for item_graphs in graphs]
            free = [i for i, waiting in enumerate(waits) if not waiting]
            held = [i for i, waiting in enumerate(waits) if waiting]
            free_keys = {key for i in free for graph in graphs[i] for key in graph}
            shared = any(key in free_keys for i in held for graph in graphs[i] for key in graph)
            if free and held and not shared:
                futures = [None] * len(items)
                for group in (free, held):
                    group_items = tuple(items[i] for i in group)
                    started = self._start(
                        lambda group_items=group_items: group_items,
                        [keys[i] for i in group],
                        traverse,
                        retries,
                    )
                    for i, future in zip(group, started, strict=True):
                        futures[i] = future
                return futures
        return self._start(lambda: items, keys, traverse, retries)

    def _start(self, build, keys, traverse, retries, after=(), keep=False, whole=True, rerun=False):
        """Futures of the items ``build()`` returns, computed in the background once the futures
        ``after`` are done. With ``keep``, results stay in the workers: each future's result is a
        ``_belated.Kept`` (a persist's), settled when the whole computation is. A result this client
        holds under a key of their graphs is used in place of that task (see :meth:`_held_results`):
        under any key with ``whole``, else (calls taking futures, which stand for their own keys
        already) under ``keys`` alone; ``rerun`` (a retry) runs the tasks of ``keys`` again all the
        same."""
        self._check_open()
        with self._lock:
            held = [None if key is None else self._held_future(key) for key in keys]
        if keys and all(future is not None for future in held):
            return held
        # Built once, here, where the graph is searched for held keys; else (calls taking futures,
        # which wait for them) once they are done, in the background.
        built = build() if whole else None
        # Found before this computation is among them: each takes only what earlier ones hold, so
        # none waits for another that waits for it.
        holders = self._held_results(built, keys, traverse, rerun)
        # distributed's retries= runs a task that raised again, and here one whose worker died too;
        # without it, the latter runs again as belated's retries setting allows.
        retry_errors = retries or 0
        if retries is None:
            retries = config._read("retries", 1)
        token = _belated.CancelToken()
        # Work submitted by a task running here runs off the worker threads, on a thread of its own:
        # that task may wait for it, and with every worker thread (or every submitter thread) waiting
        # on work queued behind them nothing would run. This is what secede() does in distributed.
        nested = _belated.on_pool_thread() or getattr(task_client, "client", None) is not None
        scheduler, workers = ("sync", None) if nested else ("threads", self._threads)
        cluster = None if nested else self._cluster
        earlier_persists = [] if nested else persists_started()

        def run():
            items = built if whole else build()
            # Only the persists this computation takes results of: the others have nothing to do
            # with it, and it starts while they run.
            wait_for_persists(items, traverse, earlier_persists)
            stand_ins = stand_ins_of(holders)
            # Each future settles on its own, as in distributed: as soon as its task ends (each_done),
            # and a failed task fails only the futures that need it while the others' tasks still run.
            return _belated.compute(
                items,
                scheduler,
                workers,
                traverse,
                # A kept result is not here for a per-task callback to give its future.
                () if keep else (each_done,),
                None,
                False,
                retries,
                cluster,
                token,
                each=Raised,
                keep=keep and cluster is not None,
                retry_errors=retry_errors,
                stand_ins=stand_ins,
            )

        batch = concurrent.futures.Future()
        computation = Computation(batch, token, len(keys))
        computation.restart = (build, keys, traverse, retries, after, keep)
        each_done = EachDone(computation, keys)
        with self._lock:
            self._pending.add(token)
            self._task_counts[token] = len(keys)
        batch.add_done_callback(lambda _: self._finished(token))

        def launch():
            # Not started if every future of it was dropped meanwhile (as distributed releases it).
            if not batch.set_running_or_notify_cancel():
                return
            if nested:
                running = concurrent.futures.Future()
                running.set_running_or_notify_cancel()
                threading.Thread(
                    target=_run_into, args=(run, running), daemon=True, name="belated-nested"
                ).start()
            else:
                try:
                    running = self._submitter.submit(run)
                except RuntimeError:  # closed meanwhile
                    batch.set_exception(_belated.CancelledError("the Client was closed"))
                    return
            running.add_done_callback(lambda done: _settle(batch, done))

        waiting = {future._cell for future in after if not future.done()}
        if not waiting:
            launch()
        else:
            left = [len(waiting)]
            lock = threading.Lock()

            def one_done(_):
                with lock:
                    left[0] -= 1
                    ready = left[0] == 0
                if ready:
                    launch()

            for dependency in waiting:
                dependency.add_done_callback(one_done)
        # What a held future answers for is not this computation's to give: cancelling the rest stops it.
        for index, future in enumerate(held):
            if future is not None:
                computation.cancel(index)
        futures = [Future(computation, i, key, self) for i, key in enumerate(keys)]
        with self._lock:
            # A kept result is no value for a later submit or compute under its key to share.
            fresh = [None if h is not None or keep else key for h, key in zip(held, keys, strict=True)]
            self._hold_keys(computation, fresh)
        return [h if h is not None else future for h, future in zip(held, futures, strict=True)]

    def _held_results(self, items, keys, traverse, rerun):
        """For each key of the graphs of ``items`` (or of ``keys``, without items) that a live,
        uncancelled future or persisted object of this client holds, that holder and the ``Delayed``
        it was computed from (if known): the engine uses its result in place of that task and the
        tasks it needs (``stand_ins``), as distributed's scheduler does not compute a key it holds
        again. ``rerun`` (a retry) leaves ``keys`` out: their tasks run again."""
        if not self._held and not self._persisted_keys:  # nothing to look for in the graph
            return {}
        if rerun:
            keys = set(keys)
        if items is None:
            wanted = keys
        else:
            # A copy: other threads hold and let go of keys meanwhile.
            with self._lock:
                held = frozenset(self._held).union(self._persisted_keys)
            wanted = held_keys(items, traverse, held)
        found = {}
        for key in wanted:
            if rerun and key in keys:
                continue
            with self._lock:
                future = self._held_future(key)
            if future is not None:
                found[key] = (future, _source(future))
                continue
            persisted = self._persisted_keys.get(key)
            future = persisted.future if persisted is not None else None
            if (
                future is not None
                and future._index not in future._computation.cancelled
                and not is_cancelled(future._cell)
            ):
                found[key] = (persisted, persisted.source)
        return found

    def _counted(self):
        """The cancel token of a computation run on the local cluster apart from futures (``compute``
        with this client as scheduler), among the pending ones while it runs: adapt scales for its
        tasks, a scale down retires no worker under it, close() and restart() cancel it."""
        return _Counted(self)

    def _finished(self, token):
        with self._lock:
            self._pending.discard(token)
            self._task_counts.pop(token, None)
            self._one_finished.notify_all()

    def cluster_stats(self):
        """What the local cluster has done: results moved between workers, large values built here
        sent to a worker to keep (once each, not with every call), tasks recomputed after a worker was
        lost, workers replaced."""
        return self._local().stats()

    @property
    def worker_pids(self):
        """The process ids of the local cluster's workers."""
        return self._local().pids

    # -- workers ----------------------------------------------------------------------------------

    def _workers(self):
        """``(address, pid, threads)`` of each running worker (not one that died and is not replaced
        yet)."""
        self._check_open()
        if self._cluster is None:
            return [(f"inproc://{os.getpid()}", os.getpid(), self._threads)]
        cluster = self._cluster
        return [(f"local://{pid}", pid, cluster.threads_per_worker) for pid in cluster.pids]

    def _addresses(self):
        """``{worker index: address}`` of the running workers, by the index values are kept under."""
        self._check_open()
        if self._cluster is None:
            return {0: f"inproc://{os.getpid()}"}
        pids = self._cluster.pids_by_worker
        return {index: f"local://{pid}" for index, pid in enumerate(pids) if pid is not None}

    def who_has(self, futures=None):
        """``{key: [worker address, ...]}``: the workers holding the value of each of ``futures`` (a
        Future, or lists, tuples and dicts of them; by default every future this client holds), as
        distributed's. A result that came back to this process, as a submit's or map's does here (and
        every result of a ``processes=False`` client), is in no worker: ``[]``."""
        if self._distributed_client is not None:
            return self._distributed_client.who_has(futures)
        return self._answer(self._who_has(futures))

    def _who_has(self, futures):
        addresses = self._addresses()
        if futures is None:
            with self._lock:
                held = [self._held_future(key) for key in list(self._held)]
            found = [future for future in held if future is not None]
        else:
            found = futures_in(futures)
        return {future.key: [addresses[w] for w in _holders(future) if w in addresses] for future in found}

    def has_what(self, workers=None):
        """``{worker address: [key, ...]}``: the keys of the futures this client holds whose values each
        worker holds (``workers``: only those addresses), as distributed's."""
        if self._distributed_client is not None:
            return self._distributed_client.has_what(workers)
        addresses = [address for address, _, _ in self._workers()]
        if workers is not None:
            addresses = [address for address in addresses if address in set(workers)]
        answer = {address: [] for address in addresses}
        for key, holders in self._who_has(None).items():
            for address in holders:
                if address in answer:
                    answer[address].append(key)
        return self._answer(answer)

    def nthreads(self):
        """``{worker address: threads}``."""
        if self._distributed_client is not None:
            return self._distributed_client.nthreads()
        return self._answer({address: threads for address, _, threads in self._workers()})

    def _awaits(self):
        """Whether calls give awaitables: on an asynchronous client, except in its tasks and for the
        requests of tasks in its worker processes, which block on them, as on distributed's worker
        client."""
        return self.asynchronous and not in_task()

    def _answer(self, value):
        """``value``, or on an asynchronous client an awaitable of it, as distributed's methods give."""
        return _done_awaitable(value) if self._awaits() else value

    def scheduler_info(self):
        """The cluster as distributed describes it: ``workers`` maps each worker's address to its
        ``nthreads``, ``memory_limit`` (0: none) and ``metrics`` (``memory``: its resident bytes)."""
        if self._distributed_client is not None:
            return self._distributed_client.scheduler_info()
        limit = (self._cluster.memory_limit if self._cluster is not None else self._memory_limit) or 0
        workers = {
            address: {
                "type": "Worker",
                "id": index,
                "name": index,
                "host": "127.0.0.1",
                "pid": pid,
                "nthreads": threads,
                "memory_limit": limit,
                "metrics": {"memory": _resident_bytes(pid)},
                "status": "running",
            }
            for index, (address, pid, threads) in enumerate(self._workers())
        }
        return {
            "type": "Scheduler",
            "id": self.id,
            "address": f"inproc://{os.getpid()}" if self._cluster is None else f"local://{os.getpid()}",
            "n_workers": len(workers),
            "total_threads": sum(w["nthreads"] for w in workers.values()),
            "total_memory": limit * len(workers),
            "workers": workers,
        }

    def wait_for_workers(self, n_workers, timeout=None):
        """Waits until the cluster has at least ``n_workers`` workers (``TimeoutError`` after
        ``timeout`` seconds)."""
        if self._distributed_client is not None:
            return self._distributed_client.wait_for_workers(n_workers, timeout=timeout)
        if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._workers()) < n_workers:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(self._workers())} of {n_workers} workers after {timeout} s")
            time.sleep(0.05)
        return self._answer(None)

    def run(self, function, *args, **kwargs):
        """Calls ``function(*args, **kwargs)`` once in each worker, beside the tasks it runs, and
        returns ``{worker address: result}``; raises the first exception one raised."""
        if self._distributed_client is not None:
            return self._distributed_client.run(function, *args, **kwargs)
        for name in ("workers", "wait", "nanny", "on_error"):
            if name in kwargs:
                raise TypeError(f"run({name}=...) is not supported by a belated local cluster")
        return self._answer(self._run_everywhere(function, args, kwargs))

    def _run_everywhere(self, function, args, kwargs):
        self._check_open()
        if self._cluster is None:
            return {f"inproc://{os.getpid()}": function(*args, **kwargs)}
        replies = self._cluster.run_on_workers(_call_reporting_pid, (function, args, kwargs), {})
        return {f"local://{pid}": result for pid, result in replies}

    def upload_file(self, filename, load=True):
        """Sends a ``.py``, ``.zip``, ``.egg`` or ``.whl`` file to every worker (and those started
        later) and puts it on their import path; a ``.py`` module is imported (again) there."""
        if self._distributed_client is not None:
            return self._distributed_client.upload_file(filename, load=load)
        self._check_open()
        with open(filename, "rb") as file:
            data = file.read()
        name = os.path.basename(filename)
        results = self._run_everywhere(_install_file, (name, data, load), {})
        self._uploads.append((name, data, load))
        return self._answer(results)

    def restart(self):
        """New workers in place of the old: computations still running are cancelled (their futures
        raise ``belated.CancelledError``) and results held in workers are dropped, as in distributed."""
        if self._distributed_client is not None:
            return self._distributed_client.restart()
        self._check_open()
        self._cancel_pending()
        if self._cluster is not None:
            with self._scaling:
                self._replace_cluster(self._scaled_to)
        return self._answer(None)

    def scale(self, n):
        """Runs on ``n`` workers from now on; see :meth:`LocalCluster.scale`."""
        if self._distributed_client is not None:
            return self._distributed_client.cluster.scale(n)
        self.cluster.scale(n)

    def _replace_cluster(self, n_workers):
        new = self._start_cluster(n_workers)
        old, self._cluster = self._cluster, new
        self._scaled_to, self._scales = n_workers, self._scales + 1
        # Computations still running on the old workers hold their own reference to them: they finish
        # there, and the old workers stop when the last of them does.
        del old

    def _kept_values(self):
        """The results this client's persists and scatters keep in the local cluster's workers."""
        with self._lock:
            held = [self._held_future(key) for key in list(self._held)]
            kept = [item.kept() for item in self._persisted]
        kept += [kept_in(future._cell) for future in held if future is not None]
        return [value for value in kept if value is not None]

    def _retire(self, scale, staying, earlier):
        """Retires the workers after the first ``staying`` once the computations started before the
        scale down (which may run tasks anywhere; ``earlier`` are this client's) have ended, moving
        the results this client keeps there to the others first, as distributed's retire_workers
        does; unless a later scale changed the plan meanwhile."""
        cluster = self._cluster
        try:
            cluster.drain()
            with self._one_finished:
                # A persist's results are known to be kept (and so moved) once its futures are
                # settled, which comes after the end of its tasks that drain() waits for: read
                # earlier, the last ones were left behind and computed again at each use.
                self._one_finished.wait_for(lambda: self._closed or not earlier & self._pending)
            with self._scaling:
                if self._scales != scale or self._closed or cluster is not self._cluster:
                    return
                moved, lost = cluster.retire(staying, self._kept_values())
        except _belated.BelatedError:
            return  # closed meanwhile
        _logging.cluster_logger.debug(
            "retired workers down to %d: %d kept results moved, %d lost before they could be",
            staying,
            moved,
            lost,
        )

    def _cancel_pending(self):
        with self._lock:
            pending = list(self._pending)
        for token in pending:
            token.cancel()

    # -- either kind ------------------------------------------------------------------------------

    def close(self):
        """Stops the cluster (a local one's workers end, tasks still running are killed: their futures
        raise ``belated.CancelledError``) and stops being the default scheduler. Idempotent. An
        awaitable on an asynchronous client."""
        self._close()
        return _done_awaitable(None) if self._awaits() else None

    def _close(self):
        with self._lock:
            if self._config is not None:
                self._config.__exit__(None, None, None)
                self._config = None
            dask_config = _dask_default_ended(self)
            if dask_config is not None:
                dask_config.__exit__(None, None, None)
            if self._distributed_client is not None:
                self._distributed_client.close()
                return
            if self._closed:
                return
            self._closed = True
            self._one_finished.notify_all()  # a retirement waiting has nothing left to move
            pending = list(self._pending)
        # Outside the lock: cancelling runs the computations' callbacks, which take it.
        if self._adaptive is not None:
            self._adaptive.stop()
        for token in pending:
            token.cancel()
        self._submitter.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._cluster is not None:
                self._cluster.close()
            _logging.cluster_logger.debug("local cluster closed")
            if self._dashboard is not None and self._owns_dashboard:
                self._dashboard.stop()
            self._dashboard = None
            if self._silenced is not None:
                _logging.logger.setLevel(self._silenced)
                self._silenced = None
            _OPEN.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self._close()

    def __await__(self):
        return _done_awaitable(self).__await__()

    def __getattr__(self, name):
        distributed_client = self.__dict__.get("_distributed_client")
        if distributed_client is None:
            raise AttributeError(f"'Client' object has no attribute {name!r}")
        return getattr(distributed_client, name)

    def _facts(self):
        if self._cluster is None:
            workers, threads = 1, self._threads
        else:
            workers, threads = self._cluster.n_workers, self._cluster.n_workers * self._threads_per_worker
        limit = self._cluster.memory_limit if self._cluster is not None else self._memory_limit
        memory = _size(limit * workers) if limit else "unlimited"
        return workers, threads, memory

    def _kind(self):
        return "belated local cluster" if self._cluster is not None else "belated in-process threads"

    def __repr__(self):
        if self._distributed_client is not None:
            return repr(self._distributed_client)
        if self._closed:
            return f"<Client: {self._kind()}, closed>"
        workers, threads, memory = self._facts()
        link = f", dashboard={self.dashboard_link}" if self.dashboard_link else ""
        return f"<Client: {self._kind()}, workers={workers}, threads={threads}, memory={memory}{link}>"

    def _repr_html_(self):
        if self._distributed_client is not None:
            return self._distributed_client._repr_html_()
        if self._closed:
            return "<p><strong>belated Client</strong>: closed</p>"
        workers, threads, memory = self._facts()
        rows = [("Workers", workers), ("Threads", threads), ("Memory", memory)]
        if self.dashboard_link:
            url = html.escape(self.dashboard_link)
            rows.append(("Dashboard", f'<a href="{url}" target="_blank">{url}</a>'))
        cells = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows)
        return (
            f"<div><strong>belated Client</strong>: {html.escape(self._kind())}<table>{cells}</table></div>"
        )


class OnClient:
    """A function that runs as a task of ``client`` in this process: ``get_client()`` inside it is
    that client. Keys and tokens are the function's own."""

    __slots__ = ("__name__", "client", "func")

    def __init__(self, func, client):
        self.func, self.client = func, client
        self.__name__ = getattr(func, "__name__", type(func).__name__)

    def __call__(self, *args, **kwargs):
        previous = getattr(task_client, "client", None)
        task_client.client = self.client
        try:
            return self.func(*args, **kwargs)
        finally:
            task_client.client = previous

    def __dask_tokenize__(self):
        return tokenize(self.func)


class _Held:
    """A Delayed object passed to a function as it is, not computed first."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj


def _map_delayed(obj, replace, test):
    if test(obj):
        return replace(obj)
    if type(obj) in (list, tuple, set, frozenset):
        return type(obj)(_map_delayed(item, replace, test) for item in obj)
    if type(obj) is dict:
        return {key: _map_delayed(value, replace, test) for key, value in obj.items()}
    return obj


def _passing_delayed(func, arguments):
    """``func`` and ``arguments`` such that the dask collections among the arguments (Delayed objects,
    dask arrays, ...) reach ``func`` as they are, as distributed's ``submit`` and ``map`` pass them (a
    task's argument would be computed first): held as values, and let go of by the function's wrapper
    at call time."""
    found = []
    held = _map_delayed(arguments, lambda obj: found.append(obj) or _Held(obj), is_dask_collection)
    return (_PassingDelayed(func), held) if found else (func, arguments)


class _PassingDelayed:
    """``func``, called with the held Delayed objects among its arguments let go of. Keys and tokens
    are the function's own."""

    __slots__ = ("__name__", "func")

    def __init__(self, func):
        self.func = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)

    def __call__(self, *args, **kwargs):
        args, kwargs = _map_delayed(
            (args, kwargs), lambda held: held.obj, lambda item: isinstance(item, _Held)
        )
        return self.func(*args, **kwargs)

    def __dask_tokenize__(self):
        return tokenize(self.func)


class LocalCluster:
    """``client.cluster`` of a local cluster: its workers, and ``scale``/``adapt`` to change how many.

    Scaling is done in place, as distributed's: scaling up starts workers beside the running ones,
    which go on with their tasks; computations started from then on use them all. Scaling down sends
    new computations to the workers that stay at once, and retires the others (the last ones
    started, as distributed's ``scale`` picks them) once the computations started before have
    ended, so no running task is killed; the results this client keeps there (persisted and
    scattered) move first to the workers that stay, from worker to worker. On a ``processes=False``
    client, scaling sets how many threads (``n`` times ``threads_per_worker``) computations started
    from then on run on, as distributed's in-process workers add threads; those already running
    keep theirs."""

    def __init__(self, client):
        self._client = client

    @property
    def name(self):
        return self._client.name

    @property
    def dashboard_link(self):
        return self._client.dashboard_link

    @property
    def workers(self):
        """``{index: {"address", "pid", "nthreads"}}`` of the running workers."""
        return {
            index: {"address": address, "pid": pid, "nthreads": threads}
            for index, (address, pid, threads) in enumerate(self._client._workers())
        }

    def scale(self, n=None, *, cores=None, memory=None):
        """Runs on ``n`` workers (at least 1): more start at once; fewer retire once the
        computations running now have ended (see the class)."""
        if cores is not None or memory is not None:
            raise TypeError("scale() takes a number of workers; cores= and memory= are not supported")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"scale() needs a number of workers of at least 1, got {n!r}")
        client = self._client
        client._check_open()
        with client._scaling:
            if client._cluster is None:
                client._threads = n * client._threads_per_worker
                return
            if n == client._scaled_to:
                return
            growing = n >= client._cluster.n_workers
            if growing:
                client._cluster.scale_up(n)
                if client._uploads:
                    client._cluster.run_on_workers(_install_missing, (client._uploads,), {})
            else:
                client._cluster.shrink(n)
            # Counted once done: a scale that failed (too many workers, say) changed nothing.
            client._scales += 1
            client._scaled_to = n
            if not growing:
                with client._lock:
                    earlier = set(client._pending)
                threading.Thread(
                    target=client._retire,
                    args=(client._scales, n, earlier),
                    daemon=True,
                    name="belated-retire",
                ).start()

    def adapt(self, minimum=1, maximum=None, interval="1s", wait_count=3, **kwargs):
        """Scales between ``minimum`` and ``maximum`` workers (default: one per core) with the work,
        as distributed's ``Adaptive``: every ``interval`` (seconds, or a string as ``"500ms"``) it
        wants the workers that would run every unfinished task of the client's futures at once;
        more start at once, and fewer retire once that many were wanted ``wait_count`` times in a
        row. Returns the policy; its ``stop()`` ends it."""
        if kwargs:
            raise TypeError(f"adapt() does not take {', '.join(sorted(kwargs))} on a belated local cluster")
        client = self._client
        # In this process, threads added would serve only computations started later: not the
        # queued work adapt scales for.
        client._local()
        maximum = maximum if maximum is not None else max(minimum, os.cpu_count() or 1)
        if not (isinstance(minimum, int) and isinstance(maximum, int) and 1 <= minimum <= maximum):
            raise ValueError(f"adapt() needs 1 <= minimum <= maximum, got {minimum!r} and {maximum!r}")
        if not isinstance(wait_count, int) or isinstance(wait_count, bool) or wait_count < 1:
            raise ValueError(f"adapt() needs a wait_count of at least 1, got {wait_count!r}")
        if client._adaptive is not None:
            client._adaptive.stop()
        client._adaptive = Adaptive(self, minimum, maximum, _seconds(interval), wait_count)
        return client._adaptive

    def close(self):
        self._client.close()

    def __repr__(self):
        client = self._client
        if client._closed:
            return "LocalCluster(closed)"
        workers, threads, memory = client._facts()
        return f"LocalCluster({client.name!r}, workers={workers}, threads={threads}, memory={memory})"


class _Counted:
    __slots__ = ("client", "token")

    def __init__(self, client):
        self.client, self.token = client, _belated.CancelToken()

    def __enter__(self):
        with self.client._lock:
            self.client._pending.add(self.token)
        return self.token

    def __exit__(self, *exc):
        self.client._finished(self.token)


class Adaptive:
    """Scales a local cluster with its work: the workers that would run every unfinished task of
    the client's futures at once, between ``minimum`` and ``maximum``; up at once, down once
    ``wait_count`` looks in a row wanted fewer (distributed's rule, so a short lull between
    computations does not retire workers the next one needs)."""

    def __init__(self, cluster, minimum, maximum, interval, wait_count):
        self.minimum, self.maximum = minimum, maximum
        self.interval, self.wait_count = interval, wait_count
        self._cluster = cluster
        self._fewer = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="belated-adapt")
        self._thread.start()

    def target(self):
        client = self._cluster._client
        waiting = 0
        with client._lock:
            for token in client._pending:
                # A computation's tasks once it has its plan (one future of a compute can stand for
                # a graph of thousands); one per future before.
                left = token.tasks_left
                waiting += left if left is not None else client._task_counts.get(token, 0)
        wanted = -(-waiting // client._threads_per_worker)
        return min(self.maximum, max(self.minimum, wanted))

    def recommendation(self):
        """How many workers to scale to now, or None to stay: one look of the policy."""
        target, current = self.target(), self._cluster._client._scaled_to
        if target >= current:
            self._fewer = 0
            return target if target > current else None
        self._fewer += 1
        if self._fewer < self.wait_count:
            return None
        self._fewer = 0
        return target

    def _loop(self):
        while not self._stopped.wait(self.interval):
            if self._cluster._client._closed or not self.step():
                return

    def step(self):
        """One look, and the scale it asks for; False once the cluster is closed."""
        n = self.recommendation()
        if n is None:
            return True
        try:
            self._cluster.scale(n)
        except _belated.BelatedError:
            return False  # closed meanwhile
        except ValueError as error:
            # More workers than the cluster can hold: adapt up to what it holds, and say so once,
            # rather than end the policy with a traceback nobody reads.
            self.maximum = max(self.minimum, self._cluster._client._scaled_to)
            _logging.cluster_logger.warning("adapt: %s; at most %d workers from now on", error, self.maximum)
        return True

    def stop(self):
        self._stopped.set()


def _seconds(interval):
    """``interval`` in seconds: a number, or a string as distributed writes it (``"500ms"``, ``"2s"``)."""
    try:
        seconds = timeout_seconds(interval)
    except ValueError:
        seconds = None
    if seconds is None:
        raise ValueError(f"adapt() needs an interval in seconds or as '500ms', got {interval!r}")
    if not seconds > 0:
        raise ValueError(f"adapt() needs a positive interval, got {interval!r}")
    return seconds


def _shape(n_workers, threads_per_worker):
    cores = os.cpu_count() or 1
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n_workers is None and threads_per_worker is None:
        return cores, 1
    if n_workers is None:
        return max(1, cores // threads_per_worker), threads_per_worker
    if threads_per_worker is None:
        return n_workers, max(1, cores // n_workers)
    return n_workers, threads_per_worker


def _start_dashboard(address):
    from belated._api import dashboard

    host, _, port = address.rpartition(":")
    host = host or "127.0.0.1"
    try:
        return dashboard(host, int(port or 0), quiet=True)
    except _belated.BelatedError:
        # The port is taken (by another dashboard, say): any free one will do, as dask does.
        return dashboard(host, 0, quiet=True)


def _run_into(run, future):
    try:
        future.set_result(run())
    except BaseException as error:
        future.set_exception(error)


def _source(future):
    """The ``Delayed`` a computed future's result came from, when its computation keeps it: a
    later graph may hold that very task, under a key of its own (an impure call's)."""
    restart = getattr(future._computation, "restart", None)
    if restart is None or restart[4]:  # calls taking futures: named by their keys, rebuilt when built
        return None
    source = restart[0]()[future._index]
    return source if isinstance(source, _belated.Delayed) else None


def _result_size(future):
    """The bytes of ``future``'s result, as distributed gives them (dask's ``sizeof``: a numpy
    scalar's or a bytes object's Python size, not its buffer's), or without dask installed as a
    worker sizes what it keeps; None without one."""
    try:
        from dask.sizeof import sizeof
    except ImportError:
        from belated._worker import nbytes as sizeof

    cell = future._cell
    if not cell.done() or cell.cancelled() or cell.exception() is not None:
        return None
    result = cell.result()
    if type(result) is _belated.Kept:
        try:
            result = result.fetch()
        except _belated.WorkerLostError:
            return None
    return sizeof(result)


def _settle(batch, done):
    """Gives ``batch`` the outcome of ``done``, the run that computed it: its results as a list, from
    which a finished future cancelled alone takes its own out (``Computation._let_go``)."""
    if done.cancelled():
        batch.set_exception(_belated.CancelledError("the Client was closed"))
    elif done.exception() is not None:
        batch.set_exception(done.exception())
    else:
        batch.set_result(list(done.result()))


def current_client():
    """The open local Client started last, or None."""
    for ref in reversed(_STARTED):
        client = ref()
        if client is not None and not client._closed:
            return client
    return None


# Keywords of distributed's Client and LocalCluster that configure a network connection or a remote
# scheduler, which a local cluster on socket pairs does not have.
_REMOTE_ONLY = frozenset({
    "security", "scheduler_file", "direct_to_workers", "connection_limit", "heartbeat_interval",
    "serializers", "deserializers", "host", "ip", "scheduler_port", "protocol", "interface",
    "worker_dashboard_address", "dashboard_prefix", "blocked_handlers", "service_kwargs",
    "scheduler_kwargs", "worker_class", "nanny",
})  # fmt: skip


def _check_local_keywords(kwargs):
    remote = sorted(set(kwargs) & _REMOTE_ONLY)
    if remote:
        raise TypeError(
            f"Client({', '.join(f'{name}=...' for name in remote)}) configures a remote scheduler or its "
            "network, which a belated local cluster has none of (its workers talk to this process on "
            "socket pairs); to use a remote Dask scheduler, pass its address: Client('tcp://host:8786', ...)"
        )
    if kwargs:
        raise TypeError(f"Client() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")


def _silence(silence_logs):
    """Raises belated's log level to ``silence_logs`` (a level, or a level name; ``False``: keeps all)
    and returns the level to restore, or None when nothing changed."""
    if silence_logs is False or silence_logs is None:
        return None
    if silence_logs is True:
        silence_logs = logging.WARNING
    if isinstance(silence_logs, str):
        level = logging.getLevelName(silence_logs.upper())
        if not isinstance(level, int):
            raise ValueError(f"silence_logs must be a logging level, got {silence_logs!r}")
        silence_logs = level
    if not isinstance(silence_logs, int):
        raise TypeError(f"silence_logs must be a logging level or False, got {silence_logs!r}")
    previous = _logging.logger.level
    if _logging.logger.getEffectiveLevel() < silence_logs:
        _logging.logger.setLevel(silence_logs)
        return previous
    return None


def _make_dask_default(client):
    """Sets dask's own ``scheduler`` setting to ``client`` until it closes, as distributed's Client
    does: dask collections' ``compute()`` and ``dask.compute`` then run on it (through ``Client.get``),
    not on dask's local threads beside the cluster.

    Without dask loaded yet, it is set once ``dask.config`` is first imported: importing all of dask
    here (50 ms) would double the start of a Client whose user never touches dask's collections."""
    with _DASK_DEFAULT_LOCK:
        if "dask.config" not in sys.modules:
            if importlib.util.find_spec("dask") is None:
                return
            if not _DASK_DEFAULT_WAITING:
                sys.meta_path.insert(0, _ONCE_DASK_CONFIG)
            _DASK_DEFAULT_WAITING.append(client)
            return
    import dask.config  # loaded, or still loading on another thread, which this waits for

    setting = dask.config.set(scheduler=client)
    with _DASK_DEFAULT_LOCK:
        client._dask_config = setting


def _dask_default_ended(client):
    """What ``client`` set as dask's default (see :func:`_make_dask_default`), taken from it, or None; a
    client still waiting for dask's import stops waiting."""
    with _DASK_DEFAULT_LOCK:
        if client in _DASK_DEFAULT_WAITING:
            _DASK_DEFAULT_WAITING.remove(client)
            if not _DASK_DEFAULT_WAITING:
                _ONCE_DASK_CONFIG.remove()
        setting, client._dask_config = client._dask_config, None
        return setting


def _dask_config_imported(dask_config):
    # Each waiting client in the order they started, as if each had set it then: closing them in the
    # reverse order puts back what was there.
    with _DASK_DEFAULT_LOCK:
        for client in _DASK_DEFAULT_WAITING:
            client._dask_config = dask_config.set(scheduler=client)
        _DASK_DEFAULT_WAITING.clear()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` once module ``name`` has been imported, found and loaded by the finders
    and loader that would import it anyway (this one steps aside as soon as it has seen it)."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def remove(self):
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        self.remove()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader, then):
        self.loader, self.then = loader, then

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # The module keeps its own loader, as if imported without this one.
        module.__spec__.loader = module.__loader__ = self.loader
        self.loader.exec_module(module)
        try:
            self.then(module)
        except Exception as error:  # the user's import of dask must not fail for it
            warnings.warn(
                f"belated's Client could not make itself dask's default scheduler: {error!r}", stacklevel=2
            )


# The clients that are dask's default scheduler once dask is imported, in the order they started.
_DASK_DEFAULT_WAITING = []
_DASK_DEFAULT_LOCK = threading.Lock()
_ONCE_DASK_CONFIG = _AfterImport("dask.config", _dask_config_imported)


# The containers ``compute`` looks into for collections (with ``traverse``), as distributed's does.
_CONTAINERS = (list, tuple, set, dict)


def _call_tokens(func, calls, kwargs, futures):
    """The token of each call ``func(*args, **kwargs)`` for ``args`` in ``calls``, as pure ``delayed``
    calls' keys end with (made in Rust for plain arguments, many times faster than tokenizing here).
    ``futures``: those among the arguments."""
    from belated import delayed

    if futures:
        # Each future by its token: a Delayed call taking the future itself would wait for its result.
        calls, kwargs = replace_futures((calls, kwargs), _TokenOf)
    call = delayed(func, pure=True)
    return [call(*args, **kwargs).key.rpartition("-")[2] for args in calls]


class _TokenOf:
    """Tokenizes as the future it is made from."""

    __slots__ = ("token",)

    def __init__(self, future):
        self.token = future.__dask_tokenize__()

    def __dask_tokenize__(self):
        return self.token


def _funcname(func):
    """The name a call's key starts with, as distributed's (dask's ``funcname``) makes it."""
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None)
    if not isinstance(name, str):
        return type(func).__name__
    return "lambda" if name == "<lambda>" else name[:50]


def _resident_bytes(pid):
    """The resident memory of process ``pid`` in bytes, or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _call_reporting_pid(function, args, kwargs):
    """``Client.run``'s call in a worker, with the pid of the process that ran it: a worker replaced
    right after answering is another process."""
    return os.getpid(), function(*args, **kwargs)


# Where upload_file puts files in each process (a worker's, or this one for processes=False).
_UPLOAD_DIRECTORY = None


def _install_file(filename, data, load):
    """Writes an uploaded file where this process imports from, and imports a module (again)."""
    global _UPLOAD_DIRECTORY
    if _UPLOAD_DIRECTORY is None:
        _UPLOAD_DIRECTORY = tempfile.mkdtemp(prefix="belated-upload-")
        sys.path.insert(0, _UPLOAD_DIRECTORY)
    path = os.path.join(_UPLOAD_DIRECTORY, filename)
    with open(path, "wb") as file:
        file.write(data)
    if filename.endswith((".zip", ".egg", ".whl")):
        if path not in sys.path:
            sys.path.insert(0, path)
        importlib.invalidate_caches()
        return None
    importlib.invalidate_caches()
    if load and filename.endswith(".py"):
        name = filename[:-3]
        module = sys.modules.get(name)
        module = importlib.reload(module) if module is not None else importlib.import_module(name)
        return module.__name__
    return None


def _install_missing(uploads):
    """Installs the uploaded files, in the order they came, in a worker that has none yet (one a
    restart or a scale started); one that has them already keeps them as they are."""
    if _UPLOAD_DIRECTORY is None:
        for filename, data, load in uploads:
            _install_file(filename, data, load)


def _close_all():
    for client in list(_OPEN):
        client.close()


# At exit, open clients close (cancelling their futures, as distributed does) before threading joins
# the threads that wait for those futures. Those joins run before atexit's handlers, in the reverse
# order of registration: this one is registered after concurrent.futures.thread's (imported above).
threading._register_atexit(_close_all)
