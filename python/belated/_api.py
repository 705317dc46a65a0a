"""``compute`` and ``persist``: resolve the scheduler options, then hand everything to the engine."""

import atexit
import html
import os

from belated import _belated, _logging, config
from belated._dask import executor_for
from belated.diagnostics import active_callbacks

atexit.register(_belated.shutdown)
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_belated.forget_pools_after_fork)


def _run(args, traverse, scheduler, num_workers, timeout, retries, persist):
    """Runs compute or persist: options default to ``belated.config``; other engines get the graph."""
    scheduler = scheduler or config.get("scheduler", None) or "threads"
    cluster = getattr(scheduler, "_cluster", None)
    executor = None if cluster is not None else executor_for(scheduler)
    if executor is not None:
        if persist:
            raise NotImplementedError(
                "persist() keeps results in this process; on a cluster, use client.persist(...) instead"
            )
        with _logging.computing("compute", scheduler):
            return _belated.compute_with(args, executor, traverse)
    if num_workers is None:
        num_workers = config.get("num_workers", None)
    if timeout is None:
        timeout = config.get("timeout", None)
    if retries is None:
        retries = config.get("retries", 1)
    callbacks = active_callbacks()
    if cluster is not None:
        scheduler = "threads"
    where = scheduler if cluster is None else "a local cluster"
    with _logging.computing("persist" if persist else "compute", where):
        return _belated.compute(
            args, scheduler, num_workers, traverse, callbacks, timeout, persist, retries, cluster
        )


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
    finish in the background and their results are dropped. The inline ``"sync"`` scheduler notices
    the timeout between tasks.
    ``optimize_graph`` and other keyword arguments are accepted for dask compatibility: the engine only
    ever runs the tasks the results need.

    >>> from belated import delayed, compute
    >>> a = delayed(1) + 2
    >>> compute(a, {"b": a * 10}, "unchanged")
    (3, {'b': 30}, 'unchanged')
    """
    return _run(args, traverse, scheduler, num_workers, timeout, retries, persist=False)


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

    Takes the arguments of :func:`compute`. On Dask distributed, use that cluster's ``client.persist``.

    >>> from belated import delayed, persist
    >>> a = delayed(sum)([1, 2, 3])
    >>> (b,) = persist(a)
    >>> b.key == a.key, b.compute()
    (True, 6)
    """
    return _run(args, traverse, scheduler, num_workers, timeout, retries, persist=True)


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
    """
    starting = _belated.dashboard_url() is None
    url = _belated.start_dashboard(host, port, token)
    if starting:
        _logging.dashboard_logger.debug("dashboard serving at %s", url.split("?", 1)[0])
    if not quiet:
        print(f"belated dashboard: {url}")
    return Dashboard(url)
