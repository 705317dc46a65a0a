"""Watching computations, as ``dask.diagnostics``: callbacks, a progress bar and profilers.

Every diagnostic is a :class:`Callback`, active inside a ``with`` block or between ``register()`` and
``unregister()``. Callbacks receive the graph as a read-only mapping (``key -> task``) and a live
:class:`ComputeState` (``total``, ``done``, ``failed``, ``elapsed``) where dask passes its scheduler's
state dict.

>>> from belated import delayed
>>> from belated.diagnostics import Profiler
>>> with Profiler() as prof:
...     (delayed(sum)([1, 2]) + 1).compute()
4
>>> sorted(row.key.split("-")[0] for row in prof.results)
['add', 'sum']
"""

from __future__ import annotations

import html
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TextIO

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

from belated._belated import ComputeState, TaskGraph

__all__ = [
    "CacheData",
    "CacheProfiler",
    "Callback",
    "ComputeState",
    "Profiler",
    "ProgressBar",
    "ResourceProfiler",
    "TaskGraph",
    "visualize",
]


class Callback:
    """Functions called as computations run; pass any of them, or subclass and override the
    underscored methods, as with ``dask.callbacks.Callback``:

    - ``start(dsk)`` and ``start_state(dsk, state)`` before the first task,
    - ``pretask(key, dsk, state)`` and ``posttask(key, result, dsk, state, worker_id)`` around every
      task, on the thread that runs it (``worker_id`` is -1 for the calling thread),
    - ``finish(dsk, state, errored)`` at the end, also after a failure.

    Per-task functions cost a Python call per task; the rest cost nothing per task.
    """

    active: ClassVar[set[Callback]] = set()
    _wants_profile = False

    def __init__(
        self,
        start: Callable[[Mapping[Any, Any]], object] | None = None,
        start_state: Callable[[Mapping[Any, Any], ComputeState], object] | None = None,
        pretask: Callable[[Any, Mapping[Any, Any], ComputeState], object] | None = None,
        posttask: Callable[[Any, Any, Mapping[Any, Any], ComputeState, int], object] | None = None,
        finish: Callable[[Mapping[Any, Any], ComputeState, bool], object] | None = None,
    ) -> None:
        for name, function in [
            ("_start", start),
            ("_start_state", start_state),
            ("_pretask", pretask),
            ("_posttask", posttask),
            ("_finish", finish),
        ]:
            if function is not None:
                setattr(self, name, function)

    @property
    def _callback(self):
        names = ["_start", "_start_state", "_pretask", "_posttask", "_finish"]
        return tuple(getattr(self, name, None) for name in names)

    def __enter__(self) -> Self:
        self.register()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unregister()

    def register(self) -> None:
        """Makes every computation report to this callback until :meth:`unregister`: belated's, and
        those of dask's own local schedulers (a dask array's ``compute()``) when dask is loaded."""
        Callback.active.add(self)
        dask_callbacks = sys.modules.get("dask.callbacks")
        if dask_callbacks is not None:
            self._dask_hooks = _DaskHooks.of(self)
            dask_callbacks.Callback.active.add(self._dask_hooks)

    def unregister(self) -> None:
        Callback.active.discard(self)
        with _CLAIMED_LOCK:
            # Serving a computation, it is out of the registries: it does not go back.
            _CLAIMED.pop(self, None)
        dask_callbacks = sys.modules.get("dask.callbacks")
        hooks = self.__dict__.pop("_dask_hooks", None)
        if dask_callbacks is not None and hooks is not None:
            dask_callbacks.Callback.active.discard(hooks)


# Registered callbacks serving a running computation (callback -> the registry entries taken out for
# it), out of the registries until it ends. As dask's ``local_callbacks`` empties ``Callback.active``
# for a run, a compute started inside a task, or beside it in another thread, neither reports to the
# outer computation's progress bar or profiler nor sees it active.
_CLAIMED: dict[object, tuple[tuple[set, object], ...]] = {}
_CLAIMED_LOCK = threading.Lock()


def _claim(callbacks, dask_active):
    """Takes ``callbacks`` out of belated's registry and ``dask_active`` (dask's, or None); under the
    lock."""
    for callback in callbacks:
        entries = []
        if isinstance(callback, Callback):
            entries.append((Callback.active, callback))
            hooks = callback.__dict__.get("_dask_hooks")
        else:
            hooks = callback
        if dask_active is not None and hooks is not None:
            entries.append((dask_active, hooks))
        for registry, entry in entries:
            registry.discard(entry)
        _CLAIMED[callback] = tuple(entries)


def _release(callbacks):
    """Puts ``callbacks`` back where they were taken from, but for those unregistered meanwhile; under
    the lock."""
    for callback in callbacks:
        for registry, entry in _CLAIMED.pop(callback, ()):
            registry.add(entry)


class claimed_callbacks:
    """The callbacks a computation reports to, held for it until the block ends: belated's registered
    ones and, when dask is loaded and ``dask`` is true, those registered with
    ``dask.callbacks.Callback`` (dask's ``ProgressBar``, ``Profiler``, ...), called as dask's local
    scheduler calls them. A callback registered while the computation runs (inside one of its tasks,
    say) serves the next one.

    A class, not a ``contextlib.contextmanager``, which sets the ``__traceback__`` of an exception
    passing through it: a task's exception whose ``__setattr__`` refuses that would raise in its
    place."""

    def __init__(self, dask=True):
        dask_callbacks = sys.modules.get("dask.callbacks") if dask else None
        self.dask_active = dask_callbacks.Callback.active if dask_callbacks else None

    def __enter__(self):
        with _CLAIMED_LOCK:
            self.mine = [*Callback.active, *dask_own(self.dask_active or ())]
            _claim(self.mine, self.dask_active)
        return tuple(
            callback if isinstance(callback, Callback) else _DaskCallback(callback) for callback in self.mine
        )

    def __exit__(self, kind, error, traceback):
        with _CLAIMED_LOCK:
            _release(self.mine)
        return False


def dask_own(callbacks):
    """dask's callback tuples less those belated's own callbacks registered for dask's schedulers: a
    belated computation finds those callbacks as themselves."""
    return [callback for callback in callbacks if not isinstance(callback, _DaskHooks)]


class SchedulerState(dict):
    """dask's local scheduler state (``waiting``, ``running``, ``finished``, ``cache`` ...) that also
    answers belated's ``total``, ``done``, ``failed``, ``elapsed`` and ``profile()``. It holds the given
    state's own containers, so it follows a dask scheduler that updates them in place."""

    def __init__(self, state, total):
        super().__init__(state)
        self.total = total
        self.failed = 0
        self._began = time.perf_counter()
        self._spans = {}

    @property
    def done(self):
        return len(self["finished"])

    @property
    def elapsed(self):
        return time.perf_counter() - self._began

    def began(self, key):
        self._spans[key] = [time.perf_counter()]

    def ended(self, key, worker):
        # A callback with a posttask but no pretask and no profile is not told when tasks begin.
        span = self._spans.get(key)
        if span is not None:
            span += [time.perf_counter(), worker]

    def profile(self):
        return [(key, *span) for key, span in self._spans.items() if len(span) == 3]


class _DaskHooks(tuple):
    """A belated callback as dask's local schedulers call it (dask's callback tuple), so a progress bar
    or profiler registered with belated observes a dask collection's ``compute()`` too. The callback
    sees dask's state as a :class:`SchedulerState` and dask's keys as they are; as in a belated compute,
    it serves one computation at a time."""

    __slots__ = ()

    @classmethod
    def of(cls, callback):
        hooks = _DaskRun(callback)
        timed = callback._wants_profile
        _, _, pretask, posttask, _ = callback._callback
        return cls(
            (
                hooks.start,
                hooks.start_state,
                hooks.pretask if pretask or timed else None,
                hooks.posttask if posttask or timed else None,
                hooks.finish,
            )
        )


class _DaskRun:
    """The hooks of one belated callback for dask's schedulers, and the computation it serves."""

    def __init__(self, callback):
        self._callback = callback
        self._state = None

    def start(self, dsk):
        with _CLAIMED_LOCK:
            if self._callback in _CLAIMED:
                return
            # dask's local_callbacks has taken dask's registry out for this run, and puts it back.
            _claim([self._callback], None)
        self._state = SchedulerState({}, 0)
        if start := self._callback._callback[0]:
            start(dsk)

    def start_state(self, dsk, state):
        if self._state is None:
            return
        total = len(state["finished"]) + sum(len(state[name]) for name in ("ready", "waiting", "running"))
        self._state = SchedulerState(state, total)
        if start_state := self._callback._callback[1]:
            start_state(dsk, self._state)

    def pretask(self, key, dsk, state):
        if self._state is None:
            return
        self._state.began(key)
        if pretask := self._callback._callback[2]:
            pretask(key, dsk, self._state)

    def posttask(self, key, result, dsk, state, worker_id):
        if self._state is None:
            return
        self._state.ended(key, worker_id)
        if posttask := self._callback._callback[3]:
            posttask(key, result, dsk, self._state, worker_id)

    def finish(self, dsk, state, errored):
        served, self._state = self._state, None
        if served is None:
            return
        try:
            served.failed = int(errored)
            if finish := self._callback._callback[4]:
                finish(dsk, served, errored)
        finally:
            with _CLAIMED_LOCK:
                _release([self._callback])


class _DaskCallback:
    """One of dask's registered callback tuples, given the graph as a dict-like mapping and the state as
    dask's scheduler state. belated's engine keeps no per-key sets, so the state's ``finished``,
    ``running``, ``ready`` and ``waiting`` have the right sizes (all a progress bar reads) but are not
    the keys; ``released`` and ``cache`` are empty."""

    _wants_profile = False

    def __init__(self, functions):
        self._functions = functions
        self._dsk = self._state = None

    def _views(self, dsk, state):
        if self._dsk is None:
            self._dsk, self._state = _DaskGraph(dsk), _DaskState()
        if state is not None:
            self._state.follow(state)
        return self._dsk, self._state

    @property
    def _callback(self):
        start, start_state, pretask, posttask, finish = self._functions

        def on_start(dsk):
            start(self._views(dsk, None)[0])

        def on_start_state(dsk, state):
            start_state(*self._views(dsk, state))

        def on_pretask(key, dsk, state):
            pretask(key, *self._views(dsk, state))

        def on_posttask(key, result, dsk, state, worker_id):
            # dask's synchronous scheduler names no worker where belated says -1 (the calling thread).
            posttask(key, result, *self._views(dsk, state), None if worker_id == -1 else worker_id)

        def on_finish(dsk, state, errored):
            finish(*self._views(dsk, state), errored)

        hooks = (on_start, on_start_state, on_pretask, on_posttask, on_finish)
        return tuple(
            hook if function else None for hook, function in zip(hooks, self._functions, strict=True)
        )


class _DaskGraph(Mapping):
    """A computation's graph as dask's callbacks expect it: a mapping with ``items()``, ``get()``..."""

    def __init__(self, graph):
        self._graph = graph

    def __getitem__(self, key):
        return self._graph[key]

    def __iter__(self):
        return iter(self._graph)

    def __len__(self):
        return len(self._graph)

    def __contains__(self, key):
        return key in self._graph


class _DaskState(Mapping):
    """A live view of a computation's progress shaped like dask's local scheduler state."""

    _KEYS = ("finished", "running", "ready", "waiting", "released", "cache")

    def __init__(self):
        self._compute_state = None

    def follow(self, state):
        self._compute_state = state

    def __getitem__(self, name):
        state = self._compute_state
        if name == "finished":
            return range(state.done if state is not None else 0)
        if name == "waiting":
            return range(state.total - state.done if state is not None else 0)
        if name in ("running", "ready"):
            return range(0)
        if name == "released":
            return frozenset()
        if name == "cache":
            return {}
        raise KeyError(name)

    def __iter__(self):
        return iter(self._KEYS)

    def __len__(self):
        return len(self._KEYS)


class _Sampling(Callback):
    """A callback with a thread of its own, started by ``_start_state`` and stopped at the end."""

    def _stop_thread(self):
        """Stops the thread; False when it never started (another callback failed first)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return False
        self._stop.set()
        thread.join()
        return True


def _notebook():
    """IPython's ``display`` when this runs in a Jupyter kernel (which renders HTML), else None.

    A kernel's shell has a ``kernel``; terminal IPython's has none and gets text like a script.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    from IPython.display import display

    return display


class ProgressBar(_Sampling):
    """A progress bar: percentage and elapsed time.

    In a terminal or a script it is dask's text line redrawn in place; in Jupyter (when ``out`` is not
    given) an HTML bar updated in place. The bar reads the engine's counters every ``dt`` seconds, so
    it costs no Python call per task.

    Parameters
    ----------
    minimum : float
        Nothing is shown for computations shorter than this many seconds.
    width : int
        The width of the text bar, in characters.
    dt : float
        Seconds between redraws.
    out : file-like, optional
        Where the text bar goes; ``sys.stdout`` by default.
    """

    def __init__(self, minimum: float = 0, width: int = 40, dt: float = 0.1, out: TextIO | None = None):
        super().__init__()
        self._minimum = minimum
        self._width = width
        self._dt = dt
        self._out = out
        self.last_duration = 0.0
        self._thread: threading.Thread | None = None

    def _start_state(self, dsk, state):
        self._state = state
        self._shown = False
        self._display = _notebook() if self._out is None else None
        self._handle = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, daemon=True, name="belated-progress")
        self._thread.start()

    def _refresh(self):
        while not self._stop.wait(self._dt):
            if self._state.elapsed >= self._minimum:
                self._draw(self._state.done, self._state.total, self._state.elapsed)

    def _finish(self, dsk, state, errored):
        if not self._stop_thread():
            return
        self.last_duration = state.elapsed
        if self.last_duration < self._minimum and not self._shown:
            return
        self._draw(state.done, state.total, state.elapsed, errored)
        if self._display is None:
            self._write("\n")

    def _draw(self, done, total, elapsed, errored=False):
        fraction = done / total if total else 1.0
        if self._display is not None:
            self._draw_html(done, total, elapsed, fraction, errored)
        else:
            # dask's line, to the character: programs and tests that read dask's bar read this one.
            bar = "#" * int(self._width * fraction)
            self._write(f"\r[{bar:<{self._width}}] | {int(100 * fraction)}% Completed | {_duration(elapsed)}")
        self._shown = True

    def _draw_html(self, done, total, elapsed, fraction, errored):
        from IPython.display import HTML

        colour = "#e45756" if errored else "#4c78a8"
        page = HTML(
            "<div class='belated-progress' style='font-family:monospace'>"
            f"<div style='display:inline-block;width:20em;height:1em;background:#ddd;vertical-align:middle'>"
            f"<div style='width:{100 * fraction:.1f}%;height:100%;background:{colour}'></div></div>"
            f" {fraction:4.0%} | {done}/{total} | Completed in {_duration(elapsed)}</div>"
        )
        # The first drawing makes the display; later ones replace it where it is in the notebook.
        if self._handle is None:
            self._handle = self._display(page, display_id=True)
        else:
            self._handle.update(page)

    def _write(self, text):
        out = self._out if self._out is not None else sys.stdout
        out.write(text)
        out.flush()


def _duration(seconds):
    """Elapsed time written as dask's ``format_time`` writes it."""
    if seconds > 2 * 24 * 3600:
        return f"{int(seconds / 86400)}d {int(seconds % 86400 / 3600)}hr"
    if seconds > 2 * 3600:
        return f"{int(seconds / 3600)}hr {int(seconds % 3600 / 60)}m"
    if seconds > 600:
        return f"{int(seconds / 60)}m {int(seconds % 60)}s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} us"


class TaskData(NamedTuple):
    """One task a :class:`Profiler` saw: ``start_time`` and ``end_time`` in ``time.perf_counter()``
    seconds, ``worker_id`` -1 for the calling thread."""

    key: Any
    task: Any
    start_time: float
    end_time: float
    worker_id: int


class ResourceData(NamedTuple):
    """One sample of a :class:`ResourceProfiler`: memory in MB, CPU in percent of one core."""

    time: float
    mem: float
    cpu: float


class _Profile(Callback):
    """A profiler's ``with`` block, as in dask: it starts with no results (``clear()``) and sets
    ``start_time`` and ``end_time``; registered with ``register()``, results accumulate until
    ``clear()``."""

    def __init__(self) -> None:
        super().__init__()
        self.start_time: float | None = None
        self.end_time: float | None = None

    def clear(self) -> None:
        """Forgets the results recorded."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.clear()
        self.start_time = time.perf_counter()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        self.end_time = time.perf_counter()
        super().__exit__(*exc)


class Profiler(_Profile):
    """Records every task: key, task, start and end (``time.perf_counter()`` seconds) and worker.

    As in dask, a ``with`` block starts with no results and sets ``start_time`` and ``end_time``;
    registered with ``register()``, ``results`` accumulates over computations until ``clear()``. The
    engine times the tasks itself, so profiling adds no Python call per task.
    """

    _wants_profile = True

    def __init__(self) -> None:
        super().__init__()
        self.results: list[TaskData] = []

    def _finish(self, dsk, state, errored):
        self.results.extend(
            TaskData(key, dsk[key], start, end, worker) for key, start, end, worker in state.profile()
        )

    def clear(self) -> None:
        """Forgets the results and the times of the last with block."""
        self.results = []
        self.start_time = self.end_time = None

    def to_dataframe(self) -> Any:
        """The results as a pandas DataFrame, with a ``duration`` column."""
        import pandas as pd

        frame = pd.DataFrame(self.results, columns=TaskData._fields)
        frame["duration"] = frame["end_time"] - frame["start_time"]
        return frame

    def visualize(self, filename: str = "profile.html", show: bool | None = None) -> str:
        """Writes the task stream (a bar per task on its worker's row) as an HTML page.

        Parameters
        ----------
        filename : str
            Where the page is written.
        show : bool, optional
            Whether to also show the page inline; by default, when running in Jupyter.

        Returns
        -------
        str
            The path written.
        """
        return visualize([self], filename=filename, show=show)


class CacheData(NamedTuple):
    """One result a :class:`CacheProfiler` saw held: from ``cache_time`` (when its task finished) to
    ``free_time`` (when the last task needing it finished, or the computation ended), in
    ``time.perf_counter()`` seconds, with its size by the profiler's metric."""

    key: Any
    task: Any
    metric: Any
    cache_time: float
    free_time: float


class CacheProfiler(_Profile):
    """Records how long each task's result is held, as ``dask.diagnostics.CacheProfiler``: a
    :class:`CacheData` per task in ``results``, its ``metric`` by ``metric(value)`` (1 for every
    result by default, so the sum over the results held at a time counts them), named
    ``metric_name`` (by default the function's name, or ``"count"``).

    A result is held from the end of its task until every task that needs it has finished, as the
    engine lets results go, or until the computation ends (the results it returns). As in dask, a
    ``with`` block starts with no results and sets ``start_time`` and ``end_time``; registered with
    ``register()``, ``results`` accumulates until ``clear()``. It costs a Python call per task.

    >>> from belated import delayed
    >>> from belated.diagnostics import CacheProfiler
    >>> with CacheProfiler() as prof:
    ...     (delayed(sum)([1, 2]) * 10).compute()
    30
    >>> sorted((row.key.split("-")[0], row.metric) for row in prof.results)
    [('mul', 1), ('sum', 1)]
    """

    def __init__(self, metric: Callable[[Any], Any] | None = None, metric_name: str | None = None) -> None:
        super().__init__()
        self.results: list[CacheData] = []
        self._cache: dict[Any, tuple[Any, float]] = {}
        self._dsk: dict[Any, Any] = {}
        self._needs: dict[Any, set] = {}
        self._needed_by: dict[Any, int] = {}
        self._metric = metric or _count
        if metric_name:
            self._metric_name = metric_name
        else:
            self._metric_name = metric.__name__ if metric else "count"
        self._lock = threading.Lock()

    def _start(self, dsk):
        graph = {key: dsk[key] for key in dsk}
        self._dsk.update(graph)
        self._needs = {key: _dependencies(task, graph) for key, task in graph.items()}
        self._needed_by = dict.fromkeys(graph, 0)
        for dependencies in self._needs.values():
            for dependency in dependencies:
                self._needed_by[dependency] += 1

    def _posttask(self, key, value, dsk, state, worker_id):
        metric = self._metric(value)
        with self._lock:
            now = time.perf_counter()
            self._cache[key] = (metric, now)
            for dependency in self._needs.get(key, ()):
                self._needed_by[dependency] -= 1
                if self._needed_by[dependency] == 0 and dependency in self._cache:
                    self._free(dependency, now)

    def _finish(self, dsk, state, errored):
        with self._lock:
            now = time.perf_counter()
            for key in list(self._cache):
                self._free(key, now)
            self._needs, self._needed_by = {}, {}

    def _free(self, key, now):
        metric, cached = self._cache.pop(key)
        self.results.append(CacheData(key, self._dsk[key], metric, cached, now))

    def clear(self) -> None:
        """Forgets the results, the graphs seen and the times of the last with block."""
        self.results = []
        self._cache = {}
        self._dsk = {}
        self._needs = {}
        self._needed_by = {}
        self.start_time = self.end_time = None

    def visualize(self, filename: str = "cache.html", show: bool | None = None) -> str:
        """Writes the metric of the results held over time as an HTML page; see
        :meth:`Profiler.visualize`."""
        return visualize([self], filename=filename, show=show)


def _count(value):
    return 1


def _dependencies(task, graph):
    """The keys of ``graph`` that ``task`` reads: a task spec node's own ``dependencies``, else (a
    legacy tuple, as belated's graphs and dask's older ones have) the keys it names at any depth."""
    dependencies = getattr(task, "dependencies", None)
    if dependencies is not None and not isinstance(task, (tuple, list, dict)):
        return set(dependencies) & graph.keys()
    found = set()
    pending = [task]
    while pending:
        item = pending.pop()
        try:
            if item in graph:
                found.add(item)
                continue
        except TypeError:  # unhashable: a list or dict of arguments
            pass
        if isinstance(item, (tuple, list)):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return found


class ResourceProfiler(_Sampling):
    """Samples the process's memory (MB) and CPU use (%) every ``dt`` seconds.

    As in dask: in a ``with`` block it samples for the whole block (which starts with no results and
    sets ``start_time`` and ``end_time``), registered only while computing; the samples reach
    ``results`` when the sampling stops.
    """

    def __init__(self, dt: float = 1.0) -> None:
        super().__init__()
        self._dt = dt
        self.results: list[ResourceData] = []
        self.start_time: float | None = None
        self.end_time: float | None = None
        self._entered = False
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.clear()
        self._entered = True
        self.start_time = time.perf_counter()
        self._start_sampling()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        self._entered = False
        self._stop_thread()
        self.end_time = time.perf_counter()
        super().__exit__(*exc)

    def _start_state(self, dsk, state):
        self._start_sampling()

    def _start_sampling(self):
        if self._thread is not None:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="belated-resources")
        self._thread.start()

    def _sample(self):
        samples = []
        last_time, last_cpu = time.perf_counter(), _cpu_seconds()
        while True:
            stopping = self._stop.wait(self._dt)
            now, cpu = time.perf_counter(), _cpu_seconds()
            usage = 100.0 * (cpu - last_cpu) / (now - last_time) if now > last_time else 0.0
            samples.append(ResourceData(now, _memory_mb(), usage))
            last_time, last_cpu = now, cpu
            if stopping:
                self.results.extend(samples)
                return

    def _finish(self, dsk, state, errored):
        if not self._entered:
            self._stop_thread()

    def close(self) -> None:
        """Stops sampling now, as dask's ``close()`` shuts its tracker down."""
        self._stop_thread()

    def clear(self) -> None:
        """Forgets the samples and the times of the last with block."""
        self.results = []
        self.start_time = self.end_time = None

    def to_dataframe(self) -> Any:
        """The samples as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.results, columns=ResourceData._fields)

    def visualize(self, filename: str = "resources.html", show: bool | None = None) -> str:
        """Writes the memory and CPU samples as an HTML page; see :meth:`Profiler.visualize`."""
        return visualize([self], filename=filename, show=show)


def _cpu_seconds():
    times = os.times()
    return times.user + times.system


def _memory_mb():
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:  # not Linux: the peak is the best the standard library offers
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


_TOKEN = re.compile(r"-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$")


def _key_prefix(key):
    """A key without its token: the function name, which groups tasks in pictures (a tuple key, as
    dask's chunks have, by its name)."""
    if isinstance(key, tuple) and key:
        key = key[0]
    return _TOKEN.sub("", str(key))


_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6"]


def visualize(
    profilers: Iterable[Profiler | ResourceProfiler | CacheProfiler],
    filename: str = "profile.html",
    show: bool | None = None,
) -> str:
    """Draws profilers' results as one self-contained HTML page (inline SVG, no scripts) and writes it.

    Parameters
    ----------
    profilers : iterable of Profiler, ResourceProfiler or CacheProfiler
        The profilers whose results are drawn, one picture each, in order.
    filename : str
        Where the page is written.
    show : bool, optional
        Whether to also show the page inline; by default, when running in Jupyter.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    TypeError
        If one of ``profilers`` is not a ``Profiler``, ``ResourceProfiler`` or ``CacheProfiler``.
    """
    parts = []
    for profiler in profilers:
        if isinstance(profiler, Profiler):
            parts.append(_task_stream_svg(profiler.results))
        elif isinstance(profiler, ResourceProfiler):
            parts.append(_resource_svg(profiler.results))
        elif isinstance(profiler, CacheProfiler):
            parts.append(_cache_svg(profiler.results, profiler._metric_name))
        else:
            kind = type(profiler).__name__
            raise TypeError(f"cannot visualize {kind}; expected Profiler, ResourceProfiler or CacheProfiler")
    page = (
        "<!doctype html><meta charset='utf-8'><title>belated profile</title>"
        "<body style='font-family:sans-serif'>" + "".join(parts) + "</body>"
    )
    with open(filename, "w", encoding="utf-8") as out:
        out.write(page)
    if show is None:
        show = _notebook() is not None
    if show:
        from IPython.display import HTML, display

        display(HTML("".join(parts)))
    return filename


def _task_stream_svg(results, width=900, row=22):
    if not results:
        return "<p>No tasks were profiled.</p>"
    begin = min(r.start_time for r in results)
    span = max(r.end_time for r in results) - begin or 1e-9
    workers = sorted({r.worker_id for r in results})
    row_of = {w: i for i, w in enumerate(workers)}
    prefixes = sorted({_key_prefix(r.key) for r in results})
    colour = {p: _PALETTE[i % len(_PALETTE)] for i, p in enumerate(prefixes)}
    margin = 90
    height = row * len(workers) + 40
    bars = []
    for r in results:
        x = margin + (r.start_time - begin) / span * (width - margin - 10)
        w = max((r.end_time - r.start_time) / span * (width - margin - 10), 1)
        y = 10 + row_of[r.worker_id] * row
        prefix = _key_prefix(r.key)
        tip = html.escape(f"{r.key}: {1e3 * (r.end_time - r.start_time):.2f} ms")
        bars.append(
            f"<rect class='task' x='{x:.1f}' y='{y}' width='{w:.1f}' height='{row - 4}' "
            f"fill='{colour[prefix]}'><title>{tip}</title></rect>"
        )
    labels = [
        f"<text x='4' y='{10 + i * row + row / 2 + 3}' font-size='12'>"
        f"{'caller' if w == -1 else f'worker {w}'}</text>"
        for w, i in row_of.items()
    ]
    legend = " ".join(f"<span style='color:{colour[p]}'>&#9632;</span> {html.escape(p)}" for p in prefixes)
    return (
        f"<h3>Task stream: {len(results)} tasks in {span:.3f} s</h3><p>{legend}</p>"
        f"<svg class='task-stream' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
        + "".join(labels + bars)
        + "</svg>"
    )


def _resource_svg(results, width=900, height=200):
    if not results:
        return "<p>No resource samples.</p>"
    begin = results[0].time
    span = results[-1].time - begin or 1e-9
    top_mem = max(r.mem for r in results) or 1
    top_cpu = max(max(r.cpu for r in results), 100)
    frame = (begin, span, width, height)
    return (
        f"<h3>Resources: memory up to {top_mem:.0f} MB (blue), CPU up to {top_cpu:.0f} % (orange)</h3>"
        f"<svg class='resources' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
        + _polyline([(r.time, r.mem) for r in results], top_mem, "#4c78a8", frame)
        + _polyline([(r.time, r.cpu) for r in results], top_cpu, "#f58518", frame)
        + "</svg>"
    )


def _polyline(samples, top, colour, frame):
    """A line through ``(time, value)`` samples in a picture ``frame`` of ``(begin, span, width,
    height)``: time from ``begin`` over ``span`` across, values up to ``top`` upwards."""
    begin, span, width, height = frame
    points = " ".join(
        f"{10 + (t - begin) / span * (width - 20):.1f},{height - 20 - v / top * (height - 40):.1f}"
        for t, v in samples
    )
    return f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{points}'/>"


def _cache_svg(results, metric_name, width=900, height=200):
    """The summed metric of the results held over time, as a step line."""
    if not results:
        return "<p>No results were held.</p>"
    changes = {}
    for r in results:
        changes[r.cache_time] = changes.get(r.cache_time, 0) + r.metric
        changes[r.free_time] = changes.get(r.free_time, 0) - r.metric
    times = sorted(changes)
    begin, span = times[0], times[-1] - times[0] or 1e-9
    held, steps = 0, []
    for t in times:
        steps.append((t, held))
        held += changes[t]
        steps.append((t, held))
    top = max(value for _, value in steps) or 1
    return (
        f"<h3>Results held: up to {top} by {html.escape(metric_name)}, over {span:.3f} s</h3>"
        f"<svg class='cache' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
        + _polyline(steps, top, "#4c78a8", (begin, span, width, height))
        + "</svg>"
    )
