"""What dask needs to run belated graphs, and belated to run dask's: the collection protocol's helpers
and the executors that hand a whole graph to an existing engine."""

import sys

from belated import _belated


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
    """``__dask_optimize__``: belated graphs hold only what their keys need already. The graph is
    returned in dask's task spec, so that :func:`rebuild` can tell it from a mapping of results."""
    from dask._task_spec import convert_legacy_graph

    return convert_legacy_graph(dict(dsk))


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
        fetch = _belated.delayed(future_result, pure=False, nout=length, traverse=False)
        return fetch(value, dask_key_name=key)
    return _belated.delayed(value, name=key, nout=length, traverse=False)


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


def compute_collection(collection):
    """Computes a dask collection found among a belated call's arguments, inside the belated task."""
    import dask

    return dask.compute(collection, scheduler="sync")[0]


def _require(module, extra):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"this scheduler needs {module}, which is not installed: pip install 'belated[{extra}]'"
        ) from None


BLOCKS_PER_THREAD = 4


def distributed_executor(client):
    """Runs a whole graph on a Dask distributed cluster in one submission (``client.get``).

    Distributed spends about a millisecond on each task it schedules, far more than a typical delayed
    call, so the graph is fused first: its tasks, in topological order, are cut into contiguous blocks
    (four per worker thread), and each block runs as one distributed task that evaluates its tasks in
    order. Ids in depth-first order keep a branch's tasks together, so blocks mostly hold whole branches
    and run in parallel; only values crossing blocks travel between workers.
    """

    def execute(graph, keys, dependencies):
        threads = sum(client.nthreads().values()) or 1
        fused, wanted = fuse(graph, keys, dependencies, blocks=BLOCKS_PER_THREAD * threads)
        return client.get(fused, wanted, sync=True)

    return execute


def fuse(graph, keys, dependencies, blocks):
    """The graph as ``blocks`` block tasks, and the keys of tasks extracting ``keys`` from them."""
    order = list(graph)
    size = -(-len(order) // max(1, min(blocks, len(order))))
    block_of = {key: position // size for position, key in enumerate(order)}
    crossing = set(keys)
    for key in order:
        crossing.update(dep for dep in dependencies[key] if block_of[dep] != block_of[key])
    token = f"belated-block-{id(graph):x}-{len(order)}"
    fused = {}
    for start in range(0, len(order), size):
        members = order[start : start + size]
        block = block_of[members[0]]
        inputs = sorted({block_of[dep] for key in members for dep in dependencies[key]} - {block})
        tasks = Literal([(key, graph[key]) for key in members])
        outputs = [key for key in members if key in crossing]
        fused[f"{token}-{block}"] = (run_block, tasks, outputs, [f"{token}-{other}" for other in inputs])
    wanted = []
    for key in keys:
        extract = f"{token}-result-{key}"
        fused[extract] = (_pick, f"{token}-{block_of[key]}", Literal(key))
        wanted.append(extract)
    return fused, wanted


def run_block(tasks, outputs, inputs):
    """Evaluates a block's tasks in order; returns the values other blocks or the caller need."""
    values = {}
    for produced in inputs:
        values.update(produced)
    for key, task in tasks():
        values[key] = _evaluate(task, values)
    return {key: values[key] for key in outputs}


def _pick(block_values, key):
    return block_values[key()]


def run_task(task, dep_keys, *dep_values):
    """Evaluates one task of a graph in dask's legacy spec, given its dependencies' values."""
    return _evaluate(task, dict(zip(dep_keys, dep_values, strict=True)))


def _evaluate(node, values):
    if type(node) is tuple and node and callable(node[0]):
        return node[0](*[_evaluate(arg, values) for arg in node[1:]])
    if type(node) is list:
        return [_evaluate(item, values) for item in node]
    if type(node) is str and node in values:
        return values[node]
    return node


_ray_task = None


def ray_executor():
    """Runs each task as a Ray task, with object references between them. Needs ``ray.init()`` first."""
    ray = _require("ray", "ray")
    if not ray.is_initialized():
        from belated._belated import BelatedError

        raise BelatedError("scheduler='ray' needs a running Ray: call ray.init() first")
    global _ray_task
    if _ray_task is None:
        _ray_task = ray.remote(run_task)

    def execute(graph, keys, dependencies):
        refs = {}
        for key, task in graph.items():
            deps = dependencies[key]
            refs[key] = _ray_task.remote(task, deps, *[refs[dep] for dep in deps])
        try:
            return ray.get([refs[key] for key in keys])
        except ray.exceptions.RayTaskError as error:
            # The task's own exception, as the other schedulers raise it.
            raise error.cause from None

    return execute


def executor_for(scheduler):
    """The executor of a scheduler that is another engine, or None for belated's own schedulers."""
    if isinstance(scheduler, str):
        if scheduler == "ray":
            return ray_executor()
        if scheduler in ("distributed", "dask.distributed"):
            distributed = _require("distributed", "dask")
            return distributed_executor(distributed.get_client())
        return None
    client = getattr(scheduler, "_distributed_client", None) or scheduler
    if type(client).__module__.startswith("distributed") and hasattr(client, "get"):
        return distributed_executor(client)
    choices = "'threads', 'sync', 'ray', 'distributed' or a distributed Client"
    raise TypeError(f"scheduler must be {choices}, got {scheduler!r}")
