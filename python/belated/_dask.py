"""What dask needs to run belated graphs, and belated to run dask's: the collection protocol's helpers
and the executors that hand a whole graph to an existing engine."""

import asyncio
import contextlib
import dataclasses
import itertools
import sys
import threading
import time
import weakref

from belated import _belated, _fuse


class Literal:
    """A task returning a constant: how a list, tuple or string argument is written in a dask graph,
    where it would otherwise be read as a nested task, a list of keys or a key."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __call__(self):
        return self.data

    def __repr__(self):
        return f"Literal({self.data!r})"

    def __reduce__(self):
        return Literal, (self.data,)


def first(results):
    """``__dask_postcompute__``: a Delayed has one key, so one result."""
    return results[0]


def after(value, *done):
    """A task that waits for ``done`` (dependencies carrying no data) and returns ``value``."""
    return value


def optimize(dsk, keys, **kwargs):
    """``__dask_optimize__``: belated graphs hold only what their keys need already. On a distributed
    scheduler materializing the graph it is cut into blocks; elsewhere it is returned in dask's task spec,
    so that :func:`rebuild` can tell it from a mapping of results."""
    dsk = {key: _unquoted(key, task) for key, task in dsk.items()}
    fused = fuse_on_scheduler(dsk, keys)
    if fused is not None:
        return fused
    from dask._task_spec import convert_legacy_graph

    return convert_legacy_graph(dsk)


def _unquoted(key, task):
    """A task of a dask graph that the export quoted (``run_graph_node`` called on the node, given its
    dependencies under their own keys) as that node again: schedulers and their plugins look for their
    own task types (distributed's P2P shuffle finds its barrier by type)."""
    if type(task) is tuple and len(task) >= 3 and task[0] is run_graph_node:
        node, keys = _quoted(task[1]), _quoted(task[2])
        if getattr(node, "key", None) == key and keys == list(task[3:]):
            return node
    return task


def _quoted(arg):
    return arg[0].data if type(arg) is tuple and len(arg) == 1 and type(arg[0]) is Literal else None


def rebuild(dsk, key, length, rename=None):
    """``__dask_postpersist__``: the Delayed for ``key`` of ``dsk``.

    dask hands this either the results of a persist (key → value) or a graph of tasks (from its
    optimizers or ``dask.graph_manipulation``); a graph is rebuilt as belated tasks, one per dask task,
    under the same keys, so that nothing in it is mistaken for a value.
    """
    key = _renamed(key, rename or {})
    if _is_task_graph(dsk):
        return _from_task_graph(dsk, key, length)
    value = dsk[key]
    if _is_distributed_future(value):
        # Persisted on a Dask distributed cluster: the value stays there until computed.
        fetch = _belated.delayed(future_result, pure=False, nout=length)
        return fetch(value, dask_key_name=key)
    return _belated.delayed(value, name=key, nout=length, traverse=False)


def awaited(obj):
    """``await obj`` for a ``Delayed``, as dask's collections: waits (off the event loop) for the
    persists on a belated Client it takes results of and for the distributed futures its graph holds,
    then gives ``obj`` itself."""

    async def wait():
        from belated._futures import wait_for_persists

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, wait_for_persists, [obj], True)
        distributed = sys.modules.get("distributed")
        futures = [] if distributed is None else distributed.futures_of(obj)
        if futures and futures[0].client.asynchronous:
            await distributed.wait(futures)
        elif futures:
            await loop.run_in_executor(None, distributed.wait, futures)
        return obj

    return wait().__await__()


def _renamed(key, rename):
    """``key`` with its name replaced as ``rename`` says: a tuple key's name is its first item."""
    if isinstance(key, tuple) and key and isinstance(key[0], str):
        return (rename.get(key[0], key[0]), *key[1:])
    return rename.get(key, key)


def _is_distributed_future(value):
    distributed = sys.modules.get("distributed")
    return distributed is not None and isinstance(value, distributed.Future)


def future_result(future):
    """The value a Dask distributed future holds."""
    return future.result()


def _is_task_graph(dsk):
    task_spec = sys.modules.get("dask._task_spec")
    highlevelgraph = sys.modules.get("dask.highlevelgraph")
    if highlevelgraph is not None and isinstance(dsk, highlevelgraph.HighLevelGraph):
        return True
    return task_spec is not None and any(isinstance(task, task_spec.GraphNode) for task in dsk.values())


def _from_task_graph(dsk, key, length):
    from dask._task_spec import convert_legacy_graph

    graph = convert_legacy_graph(dict(dsk))
    run = _belated.delayed(run_graph_node, pure=False)
    built = {}
    stack = [key]
    while stack:
        current = stack[-1]
        deps = sorted(graph[current].dependencies, key=repr)
        missing = [dep for dep in deps if dep not in built]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        if current not in built:
            task = run if current != key else _belated.delayed(run_graph_node, pure=False, nout=length)
            built[current] = task(graph[current], deps, *[built[dep] for dep in deps], dask_key_name=current)
    return built[key]


def run_graph_node(node, keys, *values):
    """Runs one task of a dask graph (dask's task spec) given its dependencies' values."""
    return node(dict(zip(keys, values, strict=True)))


def collection_graph(collection):
    """The graph computing a dask collection (in dask's task spec) and the key of its value: the
    collection's graph optimized and finalized as ``dask.compute`` makes it, so that the value is the
    one dask returns."""
    dsk, (key,) = collections_graph([collection])
    return dsk, key


def collections_graph(collections, optimize_graph=True, fuse=True):
    """The graph computing several dask collections, optimized together as ``dask.compute`` optimizes
    them, and the key of each one's value. Unless ``fuse``, built without dask's low-level fusion of
    linear chains, as ``belated.get`` builds it (see ``belated._get._graph``)."""
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr
    from dask.core import flatten

    from belated._get import _graph

    expr = FinalizeCompute(collections_to_expr(list(collections), optimize_graph)).optimize()
    keys = list(flatten(expr.__dask_keys__()))
    if len(keys) != len(collections):
        raise RuntimeError(f"dask made {len(keys)} results of {len(collections)} collections")
    return _task_spec(_graph(expr, fuse)), keys


def collections_in_argument(argument):
    """The dask collections inside one call argument (its lists, tuples, sets, dicts, slices,
    namedtuples and dataclasses, as dask looks), with the graph computing them optimized together and
    each one's key, as dask optimizes the collections of one argument: tasks they share run once. None
    for fewer than two."""
    found = {}
    # Each container once: one that holds itself is refused by the engine's parsing, not looped on here.
    seen = set()
    stack = [argument]
    while stack:
        obj = stack.pop()
        kind = type(obj)
        if kind is not _belated.Delayed and hasattr(kind, "__dask_graph__"):
            found.setdefault(id(obj), obj)
            continue
        if id(obj) in seen:
            continue
        if kind in (list, tuple, set) or (isinstance(obj, tuple) and hasattr(kind, "_fields")):
            items = obj
        elif kind is dict:
            items = [*obj.keys(), *obj.values()]
        elif kind is slice:
            items = (obj.start, obj.stop, obj.step)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            items = [
                getattr(obj, field.name) for field in dataclasses.fields(obj) if hasattr(obj, field.name)
            ]
        else:
            continue
        seen.add(id(obj))
        stack.extend(items)
    if len(found) < 2:
        return None
    collections = list(found.values())
    dsk, keys = collections_graph(collections)
    return collections, dsk, keys


def collections_keys_graph(collections, optimize_graph=True, fuse=True):
    """The graph of several dask collections (in dask's task spec), optimized together as
    ``dask.persist`` optimizes them, and each one's keys, flat; ``fuse`` as for ``collections_graph``."""
    from dask.base import collections_to_expr
    from dask.core import flatten

    from belated._get import _graph

    expr = collections_to_expr(list(collections), optimize_graph).optimize()
    keys = [list(flatten(each)) for each in expr.__dask_keys__()]
    if len(keys) != len(collections):
        raise RuntimeError(f"dask made {len(keys)} key lists of {len(collections)} collections")
    return _task_spec(_graph(expr, fuse)), keys


def _task_spec(dsk):
    # Legacy tasks are converted by the engine's reading of the graph, and only if it meets one.
    return dsk if type(dsk) is dict else dict(dsk)


def _require(module, extra):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"this scheduler needs {module}, which is not installed: pip install 'belated[{extra}]'"
        ) from None


# -- running a whole graph on another engine ----------------------------------------------------------

# Seconds per call of each function (key prefix), as blocks measured them: what the fusion plan goes by.
DURATIONS = {}
# How much a new measurement moves the average: enough to follow a function whose cost changes.
_NEW_WEIGHT = 0.5
_REPORTS = "belated-blocks"
# The computations in progress, by run token, for the reports of their blocks.
_RUNS = {}
_SUBSCRIBED = weakref.WeakSet()


# Functions remembered at most (keys named one by one would each be a function of their own).
_DURATIONS_KEPT = 4096


def measured(timings):
    """Folds ``{function: (calls, seconds)}`` from a block into ``DURATIONS``."""
    for function, (calls, seconds) in timings.items():
        per_call = seconds / calls
        old = DURATIONS.get(function)
        if old is None and len(DURATIONS) >= _DURATIONS_KEPT:
            del DURATIONS[next(iter(DURATIONS))]
        DURATIONS[function] = per_call if old is None else old + _NEW_WEIGHT * (per_call - old)


class Progress:
    """A computation on another engine as belated's callbacks (``belated.diagnostics``) and dashboard
    see it: the engine reports finished tasks in batches, and each is passed on to them. Callbacks
    receive this object as the computation's state (``total``, ``done``, ``failed``, ``elapsed``);
    ``posttask`` receives no result, which stays on the engine."""

    def __init__(self, graph, dashboard=None):
        from belated.diagnostics import Callback

        self.graph = graph
        self._dashboard = dashboard
        self._positions = None
        self._reported = set()
        self._closed = False
        self.on_end = []
        self.total = len(graph)
        self.done = 0
        self.failed = 0
        self._started = time.perf_counter()
        self._lock = threading.Lock()
        self._callbacks = [callback._callback for callback in Callback.active]
        for start, start_state, *_ in self._callbacks:
            if start is not None:
                start(graph)
            if start_state is not None:
                start_state(graph, self)

    @property
    def elapsed(self):
        return time.perf_counter() - self._started

    def profile(self):
        return []

    def finished(self, keys):
        with self._lock:
            if self._closed:
                return
            keys = [key for key in keys if key not in self._reported]
            self._reported.update(keys)
            self.done += len(keys)
            if self._dashboard is not None:
                if self._positions is None:
                    self._positions = {key: i for i, key in enumerate(self.graph)}
                self._dashboard.finished([self._positions[key] for key in keys], True)
        for _, _, pretask, posttask, _ in self._callbacks:
            for key in keys:
                if pretask is not None:
                    pretask(key, self.graph, self)
                if posttask is not None:
                    posttask(key, None, self.graph, self, -1)

    def end(self, errored):
        """After the results came back (or the first failure): on success, tasks whose reports are
        still on their way count as finished; reports arriving later are dropped."""
        if errored:
            self.failed = max(self.failed, 1)
        else:
            self.finished([key for key in self.graph if key not in self._reported])
        with self._lock:
            self._closed = True
        for callback in self.on_end:
            callback()
        if self._dashboard is not None:
            self._dashboard.end(not errored)
        for *_, finish in self._callbacks:
            if finish is not None:
                finish(self.graph, self, errored)


class Report:
    """Sends a block's timings from its distributed worker to the client that submitted it."""

    __slots__ = ("block", "run")

    def __init__(self, run, block):
        self.run, self.block = run, block

    def __call__(self, timings):
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):  # run outside a distributed worker: nobody to tell
            return
        worker.log_event(_REPORTS, (self.run, self.block, timings))


def _on_report(event):
    _, (run, block, timings) = event
    measured(timings)
    submission = _RUNS.get(run)
    if submission is not None:
        submission.block_done(block)


class _Submission:
    """One graph on distributed: passes the blocks' reports on to the computation's progress."""

    def __init__(self, blocks, progress):
        self.blocks, self.progress = blocks, progress
        self.reported = set()

    def block_done(self, index):
        if index in self.reported:
            return
        self.reported.add(index)
        self.progress.finished(self.blocks[index].tasks)


def _futures_in(node, found):
    """``node`` (a task in dask's legacy spec) with each distributed Future in it replaced by its key,
    which ``found`` maps to it."""
    kind = type(node)
    if kind is tuple and len(node) == 1 and type(node[0]) is Literal:
        # A constant, written ``(Literal(value),)``: built instead when Futures are inside.
        return _built(node[0].data, found) if _holds_future(node[0].data) else node
    if kind is tuple and node and callable(node[0]):
        return (node[0], *[_futures_in(arg, found) for arg in node[1:]])
    if kind is list:
        return [_futures_in(item, found) for item in node]
    # Any other value is a constant the spec does not look into.
    return _built(node, found) if _holds_future(node) else node


def _holds_future(value):
    if type(value) in (list, tuple, set):
        return any(_holds_future(item) for item in value)
    if type(value) is dict:
        return any(_holds_future(item) for item in value.values())
    return _is_future(value)


def _built(value, found):
    """A task building the constant ``value`` with its Futures' values in their place."""
    kind = type(value)
    if kind is list:
        return [_built(item, found) for item in value]
    if kind in (tuple, set):
        return (kind, [_built(item, found) for item in value])
    if kind is dict:
        return (dict, [[_built(k, found), _built(v, found)] for k, v in value.items()])
    if _is_future(value):
        found[value.key] = value
        return value.key
    return (Literal(value),) if kind is str else value


def _is_future(obj):
    distributed = sys.modules.get("distributed")
    return distributed is not None and isinstance(obj, distributed.Future)


def distributed_executor(client, *, sync=True, retries=None):
    """Runs a whole graph on a Dask distributed cluster in one submission (``client.get``).

    The graph is cut into blocks (``belated._fuse``); each block runs as one distributed task. With
    ``sync=False`` the executor returns a distributed Future for each key instead of its value.
    Distributed Futures in the graph (a persisted value, or a Future passed as an argument) are
    dependencies: their values are used, not the Futures. ``retries`` is ``client.get``'s: each block
    that raised runs again up to that many times.
    """

    def execute(graph, keys, dependencies, dashboard=None):
        progress = Progress(graph, dashboard)
        try:
            results = _submit(client, graph, keys, dependencies, sync, retries, progress)
        except BaseException as error:
            progress.end(errored=True)
            # Re-raised as it is: ``from None`` would drop the task's own cause and hide its context.
            raise error.with_traceback(_fuse.user_frames(error.__traceback__))  # noqa: B904
        if sync:
            progress.end(errored=False)
        else:
            _end_with(progress, results)
        return results

    return execute


def _without_futures(graph, dependencies):
    """The graph's tasks with each distributed Future in them replaced by its key, their dependencies
    (those keys included), and the Futures by key (a persisted value is a key holding one)."""
    external, tasks, needs = {}, {}, {}
    for key, task in graph.items():
        if _is_future(task):
            external[key] = task
            continue
        found = {}
        tasks[key] = _futures_in(task, found)
        needs[key] = list(dependencies[key]) + [dep for dep in found if dep not in dependencies[key]]
        external.update(found)
    return tasks, needs, external


def _end_with(progress, futures):
    """Ends ``progress`` once every one of ``futures`` is done."""
    waiting = {id(future) for future in futures}
    failed = []
    lock = threading.Lock()

    def done(future):
        with lock:
            if future.status == "error":
                failed.append(future)
            waiting.discard(id(future))
            last = not waiting
        if last:
            progress.end(errored=bool(failed))

    if not futures:
        progress.end(errored=False)
    for future in futures:
        future.add_done_callback(done)


def _submit(client, graph, keys, dependencies, sync, retries, progress):
    tasks, needs, external = _without_futures(graph, dependencies)
    if client not in _SUBSCRIBED:
        client.subscribe_topic(_REPORTS, _on_report)
        _SUBSCRIBED.add(client)
    threads = sum(client.nthreads().values()) or 1
    blocks = _fuse.plan(tasks, keys, needs, threads, DURATIONS)
    dsk = to_distributed(blocks, tasks, keys, needs, external, progress)
    computed = [key for key in keys if key not in external]
    results = dict(zip(computed, client.get(dsk, computed, sync=sync, retries=retries), strict=True))
    for key in keys:
        if key in external:
            results[key] = client.gather(external[key]) if sync else external[key]
    return [results[key] for key in keys]


def to_distributed(blocks, graph, keys, dependencies, external, progress=None):
    """The distributed graph running ``blocks``, with each of ``keys`` under its own key.

    A block with one output returns that value under the output's own key; a block with several
    returns a dict, and a consumer needing only some of them receives them through a ``select`` task.
    """
    run = _fuse.new_token()
    if progress is not None:
        _RUNS[run] = _Submission(blocks, progress)
        progress.on_end.append(lambda: _RUNS.pop(run, None))
    block_of = {key: block for block in blocks for key in block.tasks}
    name = {}
    wanted_keys = set(keys)
    for block in blocks:
        # A block's key is its own task's key when it runs one task, or its single output's when
        # that is wanted (as dask's keys and persisted Futures need); otherwise its main function's.
        alone = len(block.tasks) == 1 or (len(block.outputs) == 1 and block.outputs[0] in wanted_keys)
        name[id(block)] = (
            block.outputs[0] if alone and len(block.outputs) == 1 else f"{block.name}-{_fuse.new_token()}"
        )
    dsk = {}
    for index, block in enumerate(blocks):
        args, input_keys, taken = [], [], {}
        for key in block.inputs:
            if key in external:
                args.append(external[key])
                input_keys.append(key)
                continue
            producer = block_of[key]
            if len(producer.outputs) == 1:
                args.append(name[id(producer)])
                input_keys.append(key)
            else:
                taken.setdefault(id(producer), (producer, []))[1].append(key)
        for producer, needed in taken.values():
            if len(needed) == len(producer.outputs):
                args.append(name[id(producer)])
            else:
                selection = f"{producer.name}-{_fuse.new_token()}"
                dsk[selection] = (_fuse.select, name[id(producer)], _fuse.Keys(needed))
                args.append(selection)
            input_keys.append(None)
        code = _fuse.program(block, graph, dependencies, input_keys, Report(run, index))
        dsk[name[id(block)]] = (_fuse.run_block, code, *args)
    for key in keys:
        if key not in external and name[id(block_of[key])] != key:
            dsk[key] = (_fuse.select, name[id(block_of[key])], _fuse.Keys(key))
    return dsk


def fuse_on_scheduler(dsk, keys):
    """The graph cut into blocks, as ``belated.compute`` submits it, when a distributed scheduler is
    materializing it (``dask.compute(x, scheduler=client)`` sends the graph there); None elsewhere."""
    scheduler = _materializing_scheduler()
    if scheduler is None:
        return None
    graph = dict(dsk)
    if any(_is_special_task(task) for task in graph.values()):
        return None
    dependencies = {key: _references(task, graph) for key, task in graph.items()}
    graph = {key: graph[key] for key in _topological(graph, dependencies)}
    tasks, needs, external = _without_futures(graph, dependencies)
    wanted = list(_flat(keys))
    threads = sum(worker.nthreads for worker in scheduler.workers.values()) or 1
    blocks = _fuse.plan(tasks, wanted, needs, threads, DURATIONS)
    return to_distributed(blocks, tasks, wanted, needs, external)


def _is_special_task(node):
    """A task of a subclass of dask's ``Task`` (distributed's P2P shuffle barrier...): the scheduler or
    its plugins look for it under its own key, so it is not run inside a block."""
    task_spec = sys.modules.get("dask._task_spec")
    return task_spec is not None and isinstance(node, task_spec.Task) and type(node) is not task_spec.Task


def _materializing_scheduler():
    distributed = sys.modules.get("distributed")
    # A scheduler materializes graphs in its offload thread.
    if distributed is None or not threading.current_thread().name.startswith("Dask-Offload"):
        return None
    running = [scheduler for scheduler in distributed.Scheduler._instances if scheduler.workers]
    return running[0] if len(running) == 1 else None


def _references(task, graph):
    found = []

    def visit(node):
        kind = type(node)
        if kind is tuple and node and callable(node[0]):
            for arg in node[1:]:
                visit(arg)
        elif kind is list:
            for item in node:
                visit(item)
        elif _fuse.is_graph_node(node):
            found.extend(node.dependencies)
        else:
            try:
                if node in graph:
                    found.append(node)
            except TypeError:  # unhashable: a constant, not a key
                pass

    if _fuse.is_graph_node(task):
        return list(task.dependencies)
    visit(task)
    return list(dict.fromkeys(found))


def _topological(graph, dependencies):
    order, done = [], set()
    for root in graph:
        if root in done:
            continue
        stack = [(root, iter(dependencies[root]))]
        while stack:
            key, deps = stack[-1]
            for dep in deps:
                if dep not in done and dep in graph:
                    stack.append((dep, iter(dependencies[dep])))
                    break
            else:
                stack.pop()
                if key not in done:
                    done.add(key)
                    order.append(key)
    return order


def _flat(keys):
    for key in keys:
        if type(key) is list:
            yield from _flat(key)
        else:
            yield key


def run_ray_task(spec, *dep_values):
    """One task on Ray, ``spec`` being ``(task, key, dependency keys)``: its status (None, small
    enough to poll) and its value."""
    task, key, dep_keys = spec
    try:
        value = _fuse.evaluate(task, dict(zip(dep_keys, dep_values, strict=True)))
    except Exception as error:
        _fuse.note(error, key)
        # Ray pickles the exception alone; its cause and context travel in its ``__dict__``, which an
        # exception's pickle keeps, and the driver links them back (``_raise_from_ray``).
        from belated import _worker  # only failures need it

        with contextlib.suppress(Exception):
            error.__dict__[_RAY_CHAIN] = _worker._chain(error)
        raise error.with_traceback(_fuse.user_frames(error.__traceback__))  # noqa: B904
    return None, value


_ray_task = None
# The ``__dict__`` entry carrying a task exception's cause and context from a Ray worker.
_RAY_CHAIN = "_belated_chain"
# How long one wait for finished Ray tasks lasts before the driver looks again, and how many it waits for.
_RAY_POLL = 0.1
_RAY_WINDOW = 512
# How long a cancelled Ray task may take to stop before its worker is stopped (see ``_cancel``).
_RAY_FORCE_AFTER = 1.0


def ray_executor():
    """Runs each task as a Ray task, with object references between them. Needs ``ray.init()`` first.

    The driver drops each reference once the last task needing it is submitted, so the object store
    frees intermediates as a hand-written Ray program does. It watches every task's small status
    object, and on the first failure cancels the tasks still pending or running.
    """
    ray = _require("ray", "ray")
    if not ray.is_initialized():
        from belated._belated import BelatedError

        raise BelatedError("scheduler='ray' needs a running Ray: call ray.init() first")
    global _ray_task
    if _ray_task is None:
        _ray_task = ray.remote(num_returns=2)(run_ray_task)

    def execute(graph, keys, dependencies, dashboard=None):
        progress = Progress(graph, dashboard)
        try:
            results = _run_on_ray(ray, graph, keys, dependencies, progress)
        except BaseException:
            progress.end(errored=True)
            raise
        progress.end(errored=False)
        return results

    return execute


def _run_on_ray(ray, graph, keys, dependencies, progress):
    wanted = set(keys)
    consumers = {}
    for key in graph:
        for dep in set(dependencies[key]):
            consumers[dep] = consumers.get(dep, 0) + 1
    values, pending, named = {}, {}, {}
    try:
        for key, task in graph.items():
            deps = list(dict.fromkeys(dependencies[key]))
            # Ray's dashboard and errors name the task by its function.
            function = _fuse.prefix(key)
            remote = named.get(function) or named.setdefault(function, _ray_task.options(name=function))
            status, values[key] = remote.remote((task, key, deps), *[values[dep] for dep in deps])
            pending[status] = key
            for dep in deps:
                consumers[dep] -= 1
                if consumers[dep] == 0 and dep not in wanted:
                    del values[dep]
            if len(pending) % _RAY_WINDOW == 0:
                _collect(ray, pending, progress, timeout=0)
        while pending:
            _collect(ray, pending, progress, timeout=_RAY_POLL)
        return ray.get([values[key] for key in keys])
    except ray.exceptions.RayTaskError as error:
        _cancel(ray, pending)
        failure = error.cause
    except BaseException:
        _cancel(ray, pending)
        raise
    # Raised outside the ``except``, which would make the RayTaskError the task exception's context.
    _raise_from_ray(failure)


def _raise_from_ray(error):
    """Raises a task's own exception as the other schedulers do, with the cause and context it had
    in the Ray worker."""
    from belated import _worker  # only failures need it

    chain = error.__dict__.pop(_RAY_CHAIN, None) if hasattr(error, "__dict__") else None
    with contextlib.suppress(Exception):  # an exception refusing attributes is raised as itself
        _worker._link(error, chain)
    raise error.with_traceback(_fuse.user_frames(error.__traceback__))


def _collect(ray, pending, progress, timeout):
    """Takes finished tasks out of ``pending``; raises the first failure. Looks at the earliest
    submitted only: tasks mostly finish in that order, and a wait costs in proportion to its list."""
    refs = list(itertools.islice(pending, _RAY_WINDOW))
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=True)
    if not ready:
        return
    ray.get(ready)
    progress.finished([pending.pop(ref) for ref in ready])


def _cancel(ray, pending):
    """Stops the tasks not finished: each is cancelled at once, which drops one not yet started and
    interrupts a running one; one still running ``_RAY_FORCE_AFTER`` later (blocked in a call, which
    Ray's interrupt does not reach) is stopped with its worker, from a thread of its own so that the
    failure is raised meanwhile.

    Ray's driver aborts the whole process ("Check failed: ... Tried to complete task that was not
    pending") when a finished task is cancelled (the failed one, taking an input) or a forced cancel
    crosses the reply of a task finishing, as the siblings of a failed task often are."""
    if not pending:
        return
    try:
        _, statuses = ray.wait(list(pending), num_returns=len(pending), timeout=0, fetch_local=False)
    except Exception:  # Ray is gone: so are its tasks
        return
    for status in statuses:
        with contextlib.suppress(Exception):  # it finished meanwhile
            ray.cancel(status)
    if statuses:
        threading.Thread(
            target=_stop_stuck, args=(ray, statuses), name="belated-ray-cancel", daemon=True
        ).start()


def _stop_stuck(ray, statuses):
    with contextlib.suppress(Exception):  # Ray shut down meanwhile: its workers went with it
        _, stuck = ray.wait(statuses, num_returns=len(statuses), timeout=_RAY_FORCE_AFTER, fetch_local=False)
        for status in stuck:
            with contextlib.suppress(Exception):
                ray.cancel(status, force=True)


def distributed_client_of(scheduler):
    """The Dask distributed client a scheduler names (``"distributed"``: the default one; a
    distributed Client; a belated Client connected to one), or None."""
    if isinstance(scheduler, str):
        if scheduler in ("distributed", "dask.distributed"):
            return _require("distributed", "dask").get_client()
        return None
    client = getattr(scheduler, "_distributed_client", None) or scheduler
    if type(client).__module__.startswith("distributed") and hasattr(client, "get"):
        return client
    return None


def executor_for(scheduler, retries=None):
    """The executor of a scheduler that is another engine, or None for belated's own schedulers;
    ``retries`` goes to a distributed client's ``get``."""
    if isinstance(scheduler, str) and scheduler == "ray":
        return ray_executor()
    client = distributed_client_of(scheduler)
    if client is not None:
        return distributed_executor(client, retries=retries)
    if isinstance(scheduler, str):
        return None
    choices = "'threads', 'sync', 'ray', 'distributed' or a distributed Client"
    # A ValueError, as dask's "Unexpected scheduler" is, for code that catches dask's.
    raise ValueError(f"scheduler must be {choices}, got {scheduler!r}")
