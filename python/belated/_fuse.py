"""Cutting a graph into blocks for an engine that charges per task (Dask distributed), and running them.

An engine like distributed spends about a millisecond on every task it schedules, far more than a typical
delayed call. Fusing tasks into blocks saves that cost, but a careless cut loses the parallelism and the
work stealing that make the engine worth using. The plan keeps these invariants:

- Linear chains (a task whose only dependent has no other dependency) are fused first, as dask's
  ``fuse_linear`` does: a chain runs in sequence anyway, so nothing is lost.
- The graph of chains is then cut by *level* (the longest path from a source): the units of one level
  never depend on one another, and a block only ever waits for blocks of lower levels, so the blocks'
  own graph is no deeper than the task graph.
- A unit known to take long (``LONG_TASK`` or more, as measured by earlier blocks) runs as a distributed
  task of its own, where the engine balances and steals work. Units known to be short are batched into
  contiguous runs of about ``BLOCK_TARGET`` seconds, at least one per thread (or unit) in each level.
- A function not measured yet runs alone unless the graph holds many of its calls; then its calls are
  dealt round-robin into several blocks per thread while they are measured, so that neighbouring calls,
  which are often alike (the slow ones together), land in different blocks, and a first run over
  thousands of tiny calls does not pay the engine's price for each.
- A batched block whose only consumer needs no other block is merged into it (the consumer could not
  start before it ended anyway): a subtree of short tasks becomes one block.
- A block frees each value after its last use, returns only the values other blocks or the caller need,
  and a consumer receives only the values it needs.
"""

import contextlib
import itertools
import math
import re
import sys
import time
import uuid
from collections import Counter

LONG_TASK = 0.010
BLOCK_TARGET = 0.075
# Calls of a function not measured yet: run on their own up to this many per thread; beyond, dealt into
# this many blocks per thread and level.
UNMEASURED_PER_THREAD = 4

_TOKEN = re.compile(r"-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$")


def prefix(key):
    """The function a key belongs to: the key without its token (``inc-3f2a…`` → ``inc``)."""
    if type(key) is tuple:
        key = key[0]
    return _TOKEN.sub("", str(key))


class Block:
    """Tasks run in one engine task. ``tasks`` are in topological order; ``inputs`` are the keys it
    needs from elsewhere, ``outputs`` the keys needed outside it; ``level`` is its units' level (its
    last units', once merged with the blocks before it). ``batched``: not a task running alone."""

    __slots__ = ("batched", "inputs", "level", "name", "outputs", "tasks")

    def __init__(self, tasks, level, batched=True):
        self.tasks, self.level, self.batched = tasks, level, batched
        self.inputs, self.outputs = [], []
        self.name = _main_function(tasks)

    def __repr__(self):
        return f"Block({self.name}, level={self.level}, tasks={len(self.tasks)})"


def _main_function(tasks):
    counts = Counter(prefix(key) for key in tasks)
    return counts.most_common(1)[0][0]


def plan(graph, wanted, dependencies, threads, durations):
    """The blocks of ``graph`` (key → task, topological order), in topological order.

    ``dependencies`` maps each key to the keys it needs; those missing from ``graph`` are inputs from
    outside (values already on the engine). ``durations`` maps a function (a key's prefix) to its
    measured seconds per call.
    """
    threads = max(1, threads)
    wanted = set(wanted)
    dependents = {key: [] for key in graph}
    for key in graph:
        for dep in set(dependencies[key]):
            if dep in dependents:
                dependents[dep].append(key)
    units = _chains(graph, wanted, dependencies, dependents)
    unit_of = {key: i for i, unit in enumerate(units) for key in unit}
    levels = []
    for unit in units:
        # A chain's later tasks need only the task before them, so its head's dependencies are all it needs.
        producers = {unit_of[dep] for dep in dependencies[unit[0]] if dep in unit_of}
        levels.append(1 + max((levels[u] for u in producers), default=-1))
    calls = Counter(prefix(key) for key in graph)
    blocks = []
    by_level = {}
    for i, unit in enumerate(units):
        by_level.setdefault(levels[i], []).append(unit)
    for level in sorted(by_level):
        blocks.extend(_cut_level(by_level[level], level, threads, durations, calls))
    blocks = _fuse_block_chains(blocks, dependencies, dependents, wanted)
    block_of = {key: block for block in blocks for key in block.tasks}
    for block in blocks:
        inside = set(block.tasks)
        needed = []
        for key in block.tasks:
            needed.extend(dep for dep in dependencies[key] if dep not in inside)
        block.inputs = list(dict.fromkeys(needed))
        for dep in block.inputs:
            if dep in block_of:
                block_of[dep].outputs.append(dep)
    for block in blocks:
        outside = set(block.outputs) | (wanted & set(block.tasks))
        block.outputs = [key for key in block.tasks if key in outside]
    blocks.sort(key=lambda block: block.level)
    return blocks


def _chains(graph, wanted, dependencies, dependents):
    """Linear chains, each a list of keys: a task joins its dependency's chain when it is that
    dependency's only dependent and has no other dependency (and the dependency is not wanted)."""
    units, chain_of = [], {}
    for key in graph:
        deps = set(dependencies[key])
        if len(deps) == 1:
            (dep,) = deps
            if dep in graph and len(dependents[dep]) == 1 and dep not in wanted:
                chain = chain_of[dep]
                chain.append(key)
                chain_of[key] = chain
                continue
        chain = [key]
        units.append(chain)
        chain_of[key] = chain
    return units


def _fuse_block_chains(blocks, dependencies, dependents, wanted):
    """Merges a batched block into its only consumer when that consumer needs no other block: the
    consumer could not start before the whole block ended anyway, so the merge saves a task and a
    transfer and loses nothing (a subtree of short tasks becomes one block)."""
    owner = {key: i for i, block in enumerate(blocks) for key in block.tasks}
    merged = set()
    for i, block in enumerate(blocks):
        if not block.batched:
            continue
        producers = {owner[dep] for key in block.tasks for dep in dependencies[key] if dep in owner} - {i}
        if len(producers) != 1:
            continue
        (p,) = producers
        producer = blocks[p]
        if not producer.batched or wanted.intersection(producer.tasks):
            continue
        consumers = {owner[user] for key in producer.tasks for user in dependents[key]} - {p}
        if consumers != {i}:
            continue
        block.tasks = producer.tasks + block.tasks
        block.name = _main_function(block.tasks)
        owner.update((key, i) for key in producer.tasks)
        merged.add(p)
    return [block for i, block in enumerate(blocks) if i not in merged]


def _cut_level(units, level, threads, durations, calls):
    solo, short, unmeasured = [], [], []
    total_short = 0.0
    for unit in units:
        known = [durations.get(prefix(key)) for key in unit]
        seconds = sum(measured for measured in known if measured is not None)
        # A chain with a task known to be long runs alone, even if others of its tasks are not
        # measured yet: dealt with unmeasured calls, it would hold them back.
        if seconds >= LONG_TASK:
            solo.append(unit)
        elif None in known:
            many = all(
                durations.get(prefix(key)) is not None or calls[prefix(key)] > UNMEASURED_PER_THREAD * threads
                for key in unit
            )
            (unmeasured if many else solo).append(unit)
        else:
            short.append(unit)
            total_short += seconds
    blocks = [Block(unit, level, batched=False) for unit in solo]
    if short:
        count = max(min(len(short), threads), math.ceil(total_short / BLOCK_TARGET))
        blocks.extend(_split(short, min(count, len(short)), level))
    if unmeasured:
        blocks.extend(_deal(unmeasured, min(len(unmeasured), UNMEASURED_PER_THREAD * threads), level))
    return blocks


def _deal(units, count, level):
    """Round-robin: calls of unknown cost next to each other (often alike) go to different blocks."""
    hands = [[] for _ in range(count)]
    for i, unit in enumerate(units):
        hands[i % count].extend(unit)
    return [Block(hand, level) for hand in hands]


def _split(units, count, level):
    """Contiguous runs: short calls next to each other in topological order mostly share inputs (a
    subtree's), so their block needs few others."""
    blocks = []
    for i in range(count):
        run = units[i * len(units) // count : (i + 1) * len(units) // count]
        blocks.append(Block([key for unit in run for key in unit], level))
    return blocks


def block_depth(blocks):
    """The longest chain of blocks, each needing the one before (the blocks' critical path)."""
    block_of = {key: i for i, block in enumerate(blocks) for key in block.tasks}
    depth = []
    for block in blocks:
        producers = {block_of[key] for key in block.inputs if key in block_of}
        depth.append(1 + max((depth[p] for p in producers), default=0))
    return max(depth, default=0)


# -- running a block, in the engine's worker --------------------------------------------------------


class Program:
    """A block as its engine task receives it: opaque to the engine, which would otherwise read the
    tasks inside as its own.

    ``inputs`` says, per argument of the engine task, which key it is (a single value) or None (a dict
    of values). ``steps`` are ``(key, task, frees)``: frees are the keys no later step needs.
    """

    __slots__ = ("inputs", "outputs", "report", "steps")

    def __init__(self, steps, inputs, outputs, report):
        self.steps, self.inputs, self.outputs, self.report = steps, inputs, outputs, report


def program(block, graph, dependencies, input_keys, report):
    """The Program of ``block``, whose engine task's arguments carry ``input_keys``."""
    last_use = {}
    for position, key in enumerate(block.tasks):
        for dep in dependencies[key]:
            last_use[dep] = position
    keep = set(block.outputs)
    frees = [[] for _ in block.tasks]
    for key, position in last_use.items():
        if key not in keep:
            frees[position].append(key)
    for position, key in enumerate(block.tasks):
        if key not in keep and key not in last_use:
            frees[position].append(key)
    steps = [(key, graph[key], frees[i]) for i, key in enumerate(block.tasks)]
    return Program(steps, input_keys, block.outputs, report)


def run_block(program, *inputs):
    """Evaluates a block's tasks in order, freeing each value after its last use; returns its single
    output's value, or a dict of its outputs. Tells ``program.report`` how long each function took."""
    values = {}
    for key, value in zip(program.inputs, inputs, strict=True):
        if key is None:
            values.update(value)
        else:
            values[key] = value
    timings = {}
    clock = time.perf_counter
    for key, task, frees in program.steps:
        start = clock()
        try:
            values[key] = evaluate(task, values)
        except Exception as error:
            note(error, key)
            # Re-raised as it is: ``from None`` would drop the task's own cause and hide its context.
            raise error.with_traceback(user_frames(error.__traceback__))  # noqa: B904
        seconds = clock() - start
        function = prefix(key)
        count, total = timings.get(function, (0, 0.0))
        timings[function] = (count + 1, total + seconds)
        for done in frees:
            del values[done]
    if program.report is not None:
        program.report(timings)
    outputs = program.outputs
    if len(outputs) == 1:
        return values[outputs[0]]
    return {key: values[key] for key in outputs}


def select(values, keys):
    """The values of ``keys`` from a block's outputs: what one consumer needs, or one wanted value."""
    keys = keys.keys
    if type(keys) is list:
        return {key: values[key] for key in keys}
    return values[keys]


class Keys:
    """Keys given to ``select``, opaque to the engine (which would read a key list as dependencies)."""

    __slots__ = ("keys",)

    def __init__(self, keys):
        self.keys = keys


def evaluate(node, values):
    """One task in dask's legacy spec, given the values of the keys it names."""
    if type(node) is tuple and node and callable(node[0]):
        return node[0](*[evaluate(arg, values) for arg in node[1:]])
    if type(node) is list:
        return [evaluate(item, values) for item in node]
    if type(node) is str and node in values:
        return values[node]
    if type(node) is tuple and _is_key_of(node, values):  # a tuple key, ("name", 0), names its value
        return values[node]
    if is_graph_node(node):
        return node({dep: values[dep] for dep in node.dependencies})
    return node


def _is_key_of(node, values):
    try:
        return node in values
    except TypeError:  # a tuple holding unhashable data is no key
        return False


def is_graph_node(node):
    """Whether ``node`` is a task in dask's newer spec (``dask._task_spec``), which may share a graph
    with legacy tasks."""
    spec = sys.modules.get("dask._task_spec")
    return spec is not None and isinstance(node, spec.GraphNode)


def note(error, key):
    text = f"raised by belated task {key}"
    # An exception type that refuses notes is passed on without one.
    with contextlib.suppress(Exception):
        if hasattr(error, "add_note"):
            error.add_note(text)
        else:  # Python 3.10 has no add_note: do what it does
            error.__notes__ = [*getattr(error, "__notes__", ()), text]


def _internal_files():
    """Where belated's own frames and an engine's come from."""
    import os

    places = [os.path.dirname(__file__)]
    for engine in ("distributed", "tornado", "ray"):
        module = sys.modules.get(engine)
        if module is not None and getattr(module, "__file__", None):
            places.append(os.path.dirname(module.__file__))
    return tuple(os.path.join(place, "") for place in places)


def user_frames(traceback):
    """The traceback with only the user's frames: belated's and the engine's own are taken out."""
    internal = _internal_files()
    kept = []
    while traceback is not None:
        if not traceback.tb_frame.f_code.co_filename.startswith(internal):
            kept.append(traceback)
        traceback = traceback.tb_next
    for frame, following in itertools.pairwise([*kept, None]):
        frame.tb_next = following
    return kept[0] if kept else None


def new_token():
    return uuid.uuid4().hex
