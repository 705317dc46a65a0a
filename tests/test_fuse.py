"""How belated cuts a graph into blocks for Dask distributed (``belated._fuse``), on graphs built by hand:
block structure only, no engine. The tests on a real cluster are in test_scaleout.py."""

import functools
import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from belated import _dask, _fuse


class Shape:
    """A graph in the shape executors receive: key → task (topological order), and dependencies."""

    def __init__(self):
        self.graph, self.dependencies, self.count = {}, {}, 0

    def task(self, function, *deps):
        key = f"{function}-{self.count:032x}"
        self.count += 1
        self.graph[key] = (_record, key, *deps)
        self.dependencies[key] = list(deps)
        return key

    def plan(self, wanted, threads=4, durations=None):
        return _fuse.plan(self.graph, wanted, self.dependencies, threads, durations or {})


def _record(key, *inputs):
    return (key, *inputs)


def tree(shape, leaves, leaf="leaf"):
    layer = [shape.task(leaf) for _ in range(leaves)]
    levels = 1
    while len(layer) > 1:
        layer = [shape.task("add", *layer[i : i + 2]) for i in range(0, len(layer), 2)]
        levels += 1
    return layer[0], levels


def level_of(shape):
    levels = {}
    for key in shape.graph:
        levels[key] = 1 + max((levels[dep] for dep in shape.dependencies[key]), default=-1)
    return levels


def check_invariants(shape, blocks, wanted, durations=None):
    """What every plan keeps, whatever the graph and durations."""
    placed = [key for block in blocks for key in block.tasks]
    assert sorted(placed) == sorted(shape.graph), "each task in exactly one block"
    block_of = {key: i for i, block in enumerate(blocks) for key in block.tasks}
    levels = level_of(shape)
    for i, block in enumerate(blocks):
        inside = set(block.tasks)
        position = {key: n for n, key in enumerate(block.tasks)}
        for key in block.tasks:
            for dep in shape.dependencies[key]:
                if dep in inside:
                    assert position[dep] < position[key], "a block runs its tasks in dependency order"
                else:
                    assert block_of[dep] < i, "blocks come in dependency order"
                    assert dep in blocks[block_of[dep]].outputs
        needed_outside = {
            dep
            for other in blocks
            if other is not block
            for key in other.tasks
            for dep in shape.dependencies[key]
            if dep in inside
        } | (set(wanted) & inside)
        assert set(block.outputs) == needed_outside, "a block returns exactly what others need"
    depth = max(levels.values()) + 1
    assert _fuse.block_depth(blocks) <= depth, "blocks form no chain longer than the graph's levels"
    for block in blocks:
        if any((durations or {}).get(_fuse.prefix(key), 0) >= _fuse.LONG_TASK for key in block.tasks):
            # A long task shares its block with nothing that could run at the same time.
            assert all(shape.dependencies[b] == [a] for a, b in itertools.pairwise(block.tasks))


def test_a_tree_of_short_tasks_becomes_a_subtree_per_thread():
    shape = Shape()
    root, levels = tree(shape, 256)
    blocks = shape.plan([root], threads=4, durations={"leaf": 1e-5, "add": 1e-5})
    check_invariants(shape, blocks, [root])
    assert _fuse.block_depth(blocks) <= levels
    subtrees = [block for block in blocks if block.name == "leaf"]
    assert [sum(key.startswith("leaf") for key in block.tasks) for block in subtrees] == [64] * 4
    assert all(len(block.tasks) == 64 + 63 for block in subtrees), "each with the adds above its leaves"
    assert len(blocks) == 4 + 2 + 1


def test_a_tree_over_long_leaves_runs_each_leaf_alone_and_the_rest_in_a_few_blocks():
    shape = Shape()
    root, _ = tree(shape, 256)
    blocks = shape.plan([root], threads=4, durations={"leaf": 0.05, "add": 1e-5})
    check_invariants(shape, blocks, [root])
    assert sum(len(block.tasks) == 1 and block.name == "leaf" for block in blocks) == 256
    assert len(blocks) == 256 + 4 + 2 + 1
    assert _fuse.block_depth(blocks) <= 4


def test_calls_not_measured_yet_are_dealt_round_robin():
    shape = Shape()
    works = [shape.task("work") for _ in range(200)]
    total = shape.task("total", *works)
    blocks = shape.plan([total], threads=4)
    block_of = {key: i for i, block in enumerate(blocks) for key in block.tasks}
    assert all(block_of[a] != block_of[b] for a, b in itertools.pairwise(works))
    level_0 = [block for block in blocks if block.level == 0]
    assert len(level_0) == _fuse.UNMEASURED_PER_THREAD * 4


def test_short_calls_are_split_into_contiguous_runs():
    shape = Shape()
    works = [shape.task("work") for _ in range(200)]
    total = shape.task("total", *works)
    blocks = shape.plan([total], threads=4, durations={"work": 1e-4, "total": 1e-4})
    assert [block.tasks for block in blocks if block.level == 0] == [
        works[i : i + 50] for i in range(0, 200, 50)
    ]


def test_long_tasks_each_get_their_own_block():
    shape = Shape()
    works = [shape.task("work") for _ in range(64)]
    total = shape.task("total", *works)
    blocks = shape.plan([total], threads=4, durations={"work": 0.1, "total": 1e-5})
    assert sum(len(block.tasks) == 1 and block.tasks[0] in works for block in blocks) == 64


def test_short_tasks_are_batched_into_blocks_of_about_the_target_duration():
    shape = Shape()
    works = [shape.task("work") for _ in range(1000)]
    total = shape.task("total", *works)
    per_call = 0.002
    blocks = shape.plan([total], threads=2, durations={"work": per_call, "total": 1e-5})
    level_0 = [block for block in blocks if block.level == 0]
    assert len(level_0) == math.ceil(1000 * per_call / _fuse.BLOCK_TARGET)
    assert all(len(block.tasks) * per_call <= 1.5 * _fuse.BLOCK_TARGET for block in level_0)


def test_functions_not_measured_yet_run_alone_unless_there_are_many_calls():
    few, many = Shape(), Shape()
    few_total = few.task("total", *[few.task("work") for _ in range(8)])
    many_total = many.task("total", *[many.task("work") for _ in range(400)])
    few_blocks = few.plan([few_total], threads=4)
    assert all(len(block.tasks) == 1 for block in few_blocks)
    many_blocks = many.plan([many_total], threads=4)
    check_invariants(many, many_blocks, [many_total])


def test_linear_chains_are_fused_whatever_their_tasks_take():
    shape = Shape()
    ends = []
    for _ in range(4):
        step = shape.task("load")
        for _ in range(40):
            step = shape.task("step", step)
        ends.append(step)
    total = shape.task("total", *ends)
    for durations in ({}, {"load": 0.05, "step": 0.05}, {"load": 1e-5, "step": 1e-5}):
        blocks = shape.plan([total], threads=4, durations=durations)
        check_invariants(shape, blocks, [total])
        chains = [block for block in blocks if block.level == 0]
        assert len(chains) == 4 and all(len(block.tasks) == 41 for block in chains)
        assert all(block.outputs == [block.tasks[-1]] for block in chains)


def test_a_chain_with_a_long_task_runs_alone_though_its_head_is_not_measured_yet():
    # Found by the random graphs: the chain went to the round-robin hands of unmeasured calls, as its
    # head was not measured, and its long task held four of them back.
    shape = Shape()
    roots = [shape.task("a") for _ in range(20)]
    long_end = shape.task("c", roots[1])
    wanted = [key for key in roots if key != roots[1]] + [long_end]
    blocks = shape.plan(wanted, threads=1, durations={"c": 0.05})
    check_invariants(shape, blocks, wanted, {"c": 0.05})
    assert [roots[1], long_end] in [block.tasks for block in blocks]


def test_a_wanted_task_ends_its_chain():
    shape = Shape()
    first = shape.task("step")
    middle = shape.task("step", first)
    last = shape.task("step", middle)
    blocks = shape.plan([middle, last], threads=1, durations={"step": 1e-5})
    check_invariants(shape, blocks, [middle, last])
    assert [block.tasks for block in blocks] == [[first, middle], [last]]


def test_block_names_carry_their_main_function():
    shape = Shape()
    root, _ = tree(shape, 64, leaf="work")
    blocks = shape.plan([root], threads=4, durations={"work": 1e-4, "add": 1e-5})
    assert {block.name for block in blocks} == {"work", "add"}
    dsk = _dask.to_distributed(blocks, shape.graph, [root], shape.dependencies, {})
    assert {_fuse.prefix(key) for key in dsk} == {"work", "add"}


@st.composite
def dags(draw):
    shape = Shape()
    keys = []
    for _ in range(draw(st.integers(1, 60))):
        deps = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)) if keys else []
        keys.append(shape.task(draw(st.sampled_from(["a", "b", "c"])), *deps))
    wanted = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4, unique=True))
    needed = {key for key in keys if not any(key in shape.dependencies[k] for k in keys)}
    durations = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from([1e-5, 0.005, 0.05])))
    return shape, sorted(needed | set(wanted)), durations, draw(st.integers(1, 8))


@settings(max_examples=200, deadline=None)
@given(case=dags())
def test_random_graphs_keep_the_plan_invariants(case):
    shape, wanted, durations, threads = case
    blocks = shape.plan(wanted, threads=threads, durations=durations)
    check_invariants(shape, blocks, wanted, durations)


@settings(max_examples=100, deadline=None)
@given(case=dags())
def test_running_the_blocks_in_order_gives_every_wanted_value(case):
    shape, wanted, durations, threads = case
    blocks = shape.plan(wanted, threads=threads, durations=durations)
    produced = {}
    for block in blocks:
        inputs = [key for key in block.inputs]
        code = _fuse.program(block, shape.graph, shape.dependencies, inputs, None)
        result = _fuse.run_block(code, *[produced[key] for key in inputs])
        produced.update(result if len(block.outputs) > 1 else {block.outputs[0]: result})
    expected = {}
    for key, task in shape.graph.items():
        expected[key] = _fuse.evaluate(task, expected)
    assert {key: produced[key] for key in wanted} == {key: expected[key] for key in wanted}


class Counted:
    live = 0

    def __init__(self):
        Counted.live += 1

    def __del__(self):
        Counted.live -= 1


def make_next(*previous, seen):
    seen.append(Counted.live)
    return Counted()


def test_a_block_frees_each_value_after_its_last_use():
    shape = Shape()
    step = shape.task("make")
    for _ in range(10):
        step = shape.task("make", step)
    seen = []
    graph = {
        key: (functools.partial(make_next, seen=seen), *deps) for key, deps in shape.dependencies.items()
    }
    (block,) = _fuse.plan(graph, [step], shape.dependencies, 1, {"make": 1e-6})
    code = _fuse.program(block, graph, shape.dependencies, [], None)
    result = _fuse.run_block(code)
    assert seen == [0] + [1] * 10, "only the value the step reads is alive while it runs"
    del result
    assert Counted.live == 0


def test_a_consumer_receives_only_the_values_it_needs():
    shape = Shape()
    leaves = [shape.task("leaf") for _ in range(8)]
    firsts = [shape.task("use", leaf) for leaf in leaves[:4]]
    lasts = [shape.task("use", leaf, leaves[0]) for leaf in leaves[4:]]
    wanted = firsts + lasts
    blocks = shape.plan(wanted, threads=2, durations={"leaf": 1e-5, "use": 1e-5})
    dsk = _dask.to_distributed(blocks, shape.graph, wanted, shape.dependencies, {})
    for key, task in dsk.items():
        if task[0] is _fuse.run_block:
            code, args = task[1], task[2:]
            needs = {key for key in code.inputs if key is not None}
            for arg, input_key in zip(args, code.inputs, strict=True):
                if input_key is None:
                    selection = dsk[arg]
                    if selection[0] is _fuse.select:
                        needs.update(selection[2].keys)
            block_needs = {
                dep
                for step_key, _, _ in code.steps
                for dep in shape.dependencies[step_key]
                if dep not in {k for k, _, _ in code.steps}
            }
            assert needs == block_needs, key
