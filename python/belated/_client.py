"""``belated.Client``: a local cluster of worker processes run by the engine, or a Dask distributed
cluster, as the default scheduler while it is open."""

import concurrent.futures
import concurrent.futures.thread  # registers its exit hook before ours (at the end)
import html
import os
import re
import sys
import threading
import weakref

from belated import _belated, _logging, config
from belated._dask import _require

_OPEN = weakref.WeakSet()
# Slow imports most tasks that use them need: workers import them as soon as they start when this
# process has (the first tasks would otherwise wait for them).
_USUAL_IMPORTS = ("numpy", "pandas")
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


class Future:
    """A result being computed on a cluster, from :meth:`Client.compute` or :meth:`Client.submit`.

    Futures made by one call share its computation: cancelling one cancels them all."""

    __slots__ = ("_batch", "_index", "_token", "key")

    def __init__(self, batch, index, token, key):
        self._batch, self._index, self._token, self.key = batch, index, token, key

    def result(self, timeout=None):
        """Waits up to ``timeout`` seconds for the result; raises the task's exception if it failed."""
        try:
            return self._batch.result(timeout)[self._index]
        except concurrent.futures.CancelledError:  # cancelled before it started
            raise _belated.CancelledError("the computation was cancelled") from None

    def done(self):
        return self._batch.done()

    def exception(self, timeout=None):
        try:
            return self._batch.exception(timeout)
        except concurrent.futures.CancelledError:
            return _belated.CancelledError("the computation was cancelled")

    def cancel(self):
        """Cancels the computation: nothing more of it starts, the workers running its tasks are killed
        (and replaced), and ``result()`` raises ``belated.CancelledError``."""
        self._token.cancel()
        self._batch.cancel()

    def cancelled(self):
        return self._token.cancelled

    @property
    def status(self):
        if not self._batch.done():
            return "pending"
        if self.cancelled():
            return "cancelled"
        return "error" if self._batch.exception() is not None else "finished"

    def __repr__(self):
        return f"<Future: {self.status}, key: {self.key}>"

    def __reduce__(self):
        raise TypeError(
            "a belated Future cannot be sent to a worker; pass its result (client.gather(future)) or the "
            "Delayed it was computed from"
        )


def _gather(obj):
    if isinstance(obj, Future):
        return obj.result()
    if type(obj) in (list, tuple, set):
        return type(obj)(_gather(item) for item in obj)
    if type(obj) is dict:
        return {key: _gather(value) for key, value in obj.items()}
    return obj


def _hold(collections, futures):
    """Persisted objects: each Delayed among ``collections`` becomes one holding its distributed
    Future under the same key, which later graphs use as a dependency."""
    if isinstance(collections, _belated.Delayed):
        _, (key, length) = collections.__dask_postpersist__()
        return _belated.delayed(futures, name=key, nout=length, traverse=False)
    if type(collections) in (list, tuple):
        return type(collections)(_hold(c, f) for c, f in zip(collections, futures, strict=True))
    return futures


class Client:
    """Runs computations on a cluster while it is open, as in the dask tutorial.

    ``Client(n_workers=4, threads_per_worker=4, memory_limit="2GB")`` starts a local cluster: worker
    processes run by belated's engine, each running ``threads_per_worker`` tasks at once and keeping the
    results it computed until a task elsewhere, or the caller, needs them. Workers talk to this process
    on socket pairs only it holds, never a TCP port; their output is forwarded to this process's, each
    line prefixed ``[worker PID]``. A worker that dies or goes over
    ``memory_limit`` (bytes, ``"4GB"``, a fraction of the machine's memory, ``"auto"``: an equal share,
    or ``None``) is replaced; its tasks are retried (``retries``) and the results it held recomputed.
    Workers import the modules in ``preload`` as soon as they start (default: numpy and pandas, when
    this process has imported them).

    ``Client("tcp://host:8786")`` (or a distributed ``Client`` or ``LocalCluster``) connects to Dask
    distributed instead, which receives each graph in one submission; its other attributes are the
    distributed client's.

    Until ``close()`` (or the end of a ``with`` block) ``compute()`` runs there by default.
    ``client.compute(...)`` and ``client.submit(...)`` return :class:`Future` objects and
    ``client.gather(...)`` waits for them.
    """

    def __init__(
        self,
        address=None,
        *,
        n_workers=None,
        threads_per_worker=None,
        memory_limit="auto",
        dashboard_address=":8787",
        set_as_default=True,
        preload=None,
        **kwargs,
    ):
        self._lock = threading.Lock()
        self._cluster = None
        self._distributed_client = None
        self._dashboard = None
        self._owns_dashboard = False
        if address is not None:
            distributed = _require("distributed", "dask")
            if isinstance(address, distributed.Client):
                self._distributed_client = address
            else:
                self._distributed_client = distributed.Client(address, **kwargs)
        else:
            if kwargs:
                raise TypeError(f"Client() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
            n_workers, threads_per_worker = _shape(n_workers, threads_per_worker)
            limit = parse_memory_limit(memory_limit, n_workers)
            if preload is None:
                preload = [name for name in _USUAL_IMPORTS if name in sys.modules]
            self._cluster = _belated.Cluster(
                n_workers,
                threads_per_worker,
                limit,
                list(preload),
                describe_memory_limit(memory_limit, limit),
            )
            _logging.cluster_logger.debug(
                "local cluster started: %d workers of %d threads, memory limit %s bytes each",
                n_workers,
                threads_per_worker,
                limit,
            )
            # Each future's computation waits on a thread of its own (idle while the engine works), so
            # futures submitted one by one can still fill every worker thread.
            self._submitter = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(32, 2 * n_workers * threads_per_worker), thread_name_prefix="belated-client"
            )
            # The cancel tokens of computations not yet finished, which close() cancels.
            self._pending = set()
            if dashboard_address:
                self._owns_dashboard = _belated.dashboard_url() is None
                self._dashboard = _start_dashboard(dashboard_address)
            _OPEN.add(self)
        self._config = config.set(scheduler=self) if set_as_default else None

    # -- a local cluster -------------------------------------------------------------------------

    @property
    def dashboard_link(self):
        if self._distributed_client is not None:
            return self._distributed_client.dashboard_link
        return self._dashboard.url if self._dashboard else None

    @property
    def status(self):
        if self._distributed_client is not None:
            return self._distributed_client.status
        return "closed" if self._cluster.closed else "running"

    def compute(self, collections, *, sync=False, traverse=True, retries=None, **kwargs):
        """Starts computing ``collections`` (a Delayed, or a list or tuple of them) on the cluster and
        returns a :class:`Future` for each (a list for a list), or the results with ``sync=True``."""
        if self._distributed_client is not None:
            return self._on_distributed(collections, traverse, sync=sync)
        many = type(collections) in (list, tuple)
        items = tuple(collections) if many else (collections,)
        futures = self._start(items, traverse, retries)
        if sync:
            return self.gather(futures if many else futures[0])
        return futures if many else futures[0]

    def submit(self, func, *args, pure=None, key=None, retries=None, **kwargs):
        """Starts ``func(*args, **kwargs)`` on the cluster and returns its :class:`Future` (a distributed
        Future on Dask distributed)."""
        if self._distributed_client is not None:
            return self._distributed_client.submit(func, *args, pure=pure, key=key, retries=retries, **kwargs)
        from belated import delayed

        task = delayed(func, pure=pure)(*args, dask_key_name=key, **kwargs)
        return self._start((task,), True, retries)[0]

    def map(self, func, *iterables, pure=None, retries=None, **kwargs):
        """``submit`` for each item of the iterables, as one computation; returns their futures."""
        if self._distributed_client is not None:
            return self._distributed_client.map(func, *iterables, pure=pure, retries=retries, **kwargs)
        from belated import delayed

        call = delayed(func, pure=pure)
        tasks = tuple(call(*args, **kwargs) for args in zip(*iterables, strict=True))
        return self._start(tasks, True, retries)

    def persist(self, collections, *, traverse=True, retries=None):
        """Computes ``collections`` (a Delayed, or a list or tuple of them) on the cluster and returns
        new ``Delayed`` objects holding the results under the same keys (a list for a list).

        On a local cluster the results come back to this process and are held here; a later
        computation on the cluster sends each large one to a worker once, not with every task. On Dask
        distributed they stay in the cluster, as distributed Futures the new objects hold.
        """
        if self._distributed_client is not None:
            futures = self._on_distributed(collections, traverse, sync=False)
            return _hold(collections, futures)
        from belated import persist

        many = type(collections) in (list, tuple)
        items = tuple(collections) if many else (collections,)
        persisted = persist(*items, traverse=traverse, scheduler=self, retries=retries)
        return list(persisted) if many else persisted[0]

    def _on_distributed(self, collections, traverse, sync):
        """Computes on Dask distributed as ``belated.compute(..., scheduler=client)`` does; with
        ``sync=False`` the results stay there, as distributed Futures."""
        from belated._dask import distributed_executor

        many = type(collections) in (list, tuple)
        items = tuple(collections) if many else (collections,)
        executor = distributed_executor(self._distributed_client, sync=sync)
        results = _belated.compute_with(items, executor, traverse)
        return list(results) if many else results[0]

    def gather(self, futures):
        """The results of ``futures`` (a Future, or lists, tuples, sets and dicts of them)."""
        if self._distributed_client is not None:
            return self._distributed_client.gather(futures)
        return _gather(futures)

    def _local(self):
        """The local cluster, for what only a belated cluster has."""
        if self._cluster is None:
            raise TypeError("this Client is connected to Dask distributed; it has no belated local cluster")
        return self._cluster

    def _start(self, items, traverse, retries):
        if self._cluster.closed:
            raise _belated.BelatedError("this Client is closed; start a new one")
        if retries is None:
            retries = config.get("retries", 1)
        token = _belated.CancelToken()
        with self._lock:
            self._pending.add(token)
        batch = self._submitter.submit(
            _belated.compute, items, "threads", None, traverse, (), None, False, retries, self._cluster, token
        )
        batch.add_done_callback(lambda _: self._pending.discard(token))
        keys = [getattr(item, "key", None) for item in items]
        return [Future(batch, i, token, key) for i, key in enumerate(keys)]

    def cluster_stats(self):
        """What the local cluster has done: results moved between workers, large values built here
        sent to a worker to keep (once each, not with every call), tasks recomputed after a worker was
        lost, workers replaced."""
        return self._local().stats()

    @property
    def worker_pids(self):
        """The process ids of the local cluster's workers."""
        return self._local().pids

    # -- either kind ------------------------------------------------------------------------------

    def close(self):
        """Stops the cluster (a local one's workers end, tasks still running are killed: their futures
        raise ``belated.CancelledError``) and stops being the default scheduler. Idempotent."""
        with self._lock:
            if self._config is not None:
                self._config.__exit__(None, None, None)
                self._config = None
            if self._distributed_client is not None:
                self._distributed_client.close()
                return
            for token in list(self._pending):
                token.cancel()
            self._submitter.shutdown(wait=False, cancel_futures=True)
            self._cluster.close()
            _logging.cluster_logger.debug("local cluster closed")
            if self._dashboard is not None and self._owns_dashboard:
                self._dashboard.stop()
            self._dashboard = None
            _OPEN.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        distributed_client = self.__dict__.get("_distributed_client")
        if distributed_client is None:
            raise AttributeError(f"'Client' object has no attribute {name!r}")
        return getattr(distributed_client, name)

    def _facts(self):
        cluster = self._cluster
        workers, threads = cluster.n_workers, cluster.n_workers * cluster.threads_per_worker
        limit = cluster.memory_limit
        memory = _size(limit * workers) if limit else "unlimited"
        return workers, threads, memory

    def __repr__(self):
        if self._distributed_client is not None:
            return repr(self._distributed_client)
        if self._cluster.closed:
            return "<Client: belated local cluster, closed>"
        workers, threads, memory = self._facts()
        link = f", dashboard={self.dashboard_link}" if self.dashboard_link else ""
        return f"<Client: belated local cluster, workers={workers}, threads={threads}, memory={memory}{link}>"

    def _repr_html_(self):
        if self._distributed_client is not None:
            return self._distributed_client._repr_html_()
        if self._cluster.closed:
            return "<p><strong>belated Client</strong>: closed</p>"
        workers, threads, memory = self._facts()
        rows = [("Workers", workers), ("Threads", threads), ("Memory", memory)]
        if self.dashboard_link:
            url = html.escape(self.dashboard_link)
            rows.append(("Dashboard", f'<a href="{url}" target="_blank">{url}</a>'))
        cells = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows)
        return f"<div><strong>belated Client</strong>: local cluster<table>{cells}</table></div>"


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


def _close_all():
    for client in list(_OPEN):
        client.close()


# At exit, open clients close (cancelling their futures, as distributed does) before threading joins
# the threads that wait for those futures. Those joins run before atexit's handlers, in the reverse
# order of registration: this one is registered after concurrent.futures.thread's (imported above).
threading._register_atexit(_close_all)
