"""``belated.get``: dask's get-function conformance mixin, dask's threaded-scheduler tests that apply,
and differential tests of random dask collections against dask's own synchronous scheduler, with and
without a user task that raises.

Not applicable from dask's ``test_threaded.py``: ``test_reuse_pool`` and ``test_pool_kwarg`` (they hand
dask a ``pool=`` of their own; belated runs on its engine's threads and ignores a pool object, so
``test_pool_kwarg``'s count of distinct pool threads means nothing here), and ``test_interrupt`` as
written (it passes ``pool=`` with 20 threads; ``test_interrupt_cancels`` below is its equivalent on 20
belated workers).
"""

import ast
import contextvars
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import belated

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
dd = pytest.importorskip("dask.dataframe")
from dask._task_spec import GraphNode  # noqa: E402
from dask.callbacks import Callback  # noqa: E402
from dask.utils_test import GetFunctionTestMixin, add, inc  # noqa: E402
from helpers import counting_overlaps, heartbeats_between, slowed_beside_another  # noqa: E402


class TestGetFunction(GetFunctionTestMixin):
    get = staticmethod(belated.get)


# dask/tests/test_threaded.py, against belated.get


def test_get():
    dsk = {"x": 1, "y": 2, "z": (inc, "x"), "w": (add, "z", "y")}
    assert belated.get(dsk, "w") == 4
    assert belated.get(dsk, ["w", "z"]) == (4, 2)


def test_nested_get():
    dsk = {"x": 1, "y": 2, "a": (add, "x", "y"), "b": (sum, ["x", "y"])}
    assert belated.get(dsk, ["a", "b"]) == (3, 3)


def test_get_without_computation():
    assert belated.get({"x": 1}, "x") == 1


def test_a_task_still_running_when_the_graph_fails_is_not_reported_after_finish():
    # dask's get calls back from the thread that computes, which stops at the failure; belated's pool
    # threads called posttask for the task still running once it ended, after finish and after get raised.
    events, started, gate = [], threading.Event(), threading.Event()

    def running():
        started.set()
        return gate.wait(30)

    def failing():
        started.wait(30)
        raise ValueError("failed while another task ran")

    with (
        Callback(
            posttask=lambda key, *_: events.append(("posttask", key)),
            finish=lambda dsk, state, errored: events.append(("finish", errored)),
        ),
        pytest.raises(ValueError, match="failed while"),
    ):
        belated.get({"running": (running,), "failing": (failing,)}, ["running", "failing"], num_workers=2)
    events.append("raised")
    gate.set()
    # Two tasks that wait for each other run once both threads are free, so after the running task's
    # end and anything called back for it.
    first, second = threading.Event(), threading.Event()
    both = {"a": (lambda: first.set() or second.wait(30),), "b": (lambda: second.set() or first.wait(30),)}
    assert belated.get(both, ["a", "b"], num_workers=2) == (True, True)
    assert events == [("finish", True), "raised"]


def test_broken_callback():
    def ok(*args, **kwargs):
        pass

    def broken(*args, **kwargs):
        raise ValueError("my_exception")

    with (
        Callback(start=broken, finish=ok),
        Callback(start=ok, finish=ok),
        pytest.raises(ValueError, match="my_exception"),
    ):
        belated.get({"x": 1}, "x")


def bad(x):
    raise ValueError("bad task")


def test_exceptions_rise_to_top_as_themselves_naming_the_key():
    dsk = {"x": 1, ("y", 3): (bad, "x")}
    with pytest.raises(ValueError, match="bad task") as info:
        belated.get(dsk, ("y", 3))
    assert any("('y', 3)" in note for note in info.value.__notes__)
    assert info.traceback[-1].name == "bad"


def test_threaded_within_thread():
    results = []

    def f(i):
        results.append(belated.get({"x": (lambda: i,)}, "x", num_workers=2))

    for _ in range(20):
        t = threading.Thread(target=f, args=(1,), daemon=True)
        t.start()
        t.join(timeout=30)
        assert results == [1]
        results.clear()


def test_dont_spawn_too_many_threads():
    before = threading.active_count()
    dsk = {("x", i): (lambda i=i: i,) for i in range(10)}
    dsk["x"] = (sum, list(dsk))
    for _ in range(20):
        assert belated.get(dsk, "x", num_workers=4) == 45
    assert threading.active_count() <= before + 8


def test_thread_safety():
    dsk = {"x": (sum, [1, 2]), "y": (lambda x: 1, "x")}
    results = []

    def run():
        results.append(belated.get(dsk, "y"))

    threads = [threading.Thread(target=run, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [1] * 20


def test_interrupt_cancels():
    main_thread = threading.get_ident()
    barrier = threading.Barrier(20)
    tasks_can_end = threading.Event()

    def f():
        barrier.wait(timeout=30)
        tasks_can_end.wait(timeout=30)

    def interrupt():
        barrier.wait(timeout=30)
        signal.pthread_kill(main_thread, signal.SIGINT)

    dsk = {("f", i): (f,) for i in range(19)}
    dsk["interrupt"] = (interrupt,)
    try:
        with pytest.raises(KeyboardInterrupt):
            belated.get(dsk, list(dsk), num_workers=20)
    finally:
        tasks_can_end.set()


# What belated.get adds: the forms of dask 2026's graphs, callbacks, options.


def test_task_spec_nodes_and_containers():
    from dask._task_spec import Alias, DataNode, Dict, List, Task, TaskRef

    dsk = {
        "a": DataNode("a", 2),
        "b": Task("b", inc, TaskRef("a")),
        "c": Alias("c", "b"),
        "d": List(TaskRef("a"), TaskRef("c"), Task(None, inc, TaskRef("b"))),
        "e": Dict(k=TaskRef("d")),
    }
    dsk["d"].key = "d"
    dsk["e"].key = "e"
    assert belated.get(dsk, [["e"], "c"]) == (({"k": [2, 3, 4]},), 3)


def test_task_arguments_keywords_and_nested_nodes():
    from dask._task_spec import DataNode, Task, TaskRef

    def scaled(a, b, *, scale, offset=0):
        return (a + b) * scale + offset

    dsk = {
        "a": DataNode("a", 2),
        "b": Task("b", inc, TaskRef("a")),
        "c": Task("c", scaled, TaskRef("a"), TaskRef("a"), scale=TaskRef("b"), offset=1),
        "d": Task("d", scaled, Task(None, inc, TaskRef("c")), 1, scale=DataNode(None, 2)),
        "e": Task("e", scaled, [1, 2], [3], scale=1, offset=[]),
    }
    assert belated.get(dsk, ["c", "d", "e"]) == (13, 30, [1, 2, 3])


def test_legacy_tasks_met_among_task_spec_nodes_are_read_as_dask_reads_them():
    from dask._task_spec import DataNode, Task, TaskRef

    # The walk meets the legacy forms only below nodes it has already read: raw values, a key naming a
    # key (an alias), tuples with keys inside, a dict argument.
    dsk = {
        "raw": 5,
        "alias": "raw",
        "legacy": (add, "alias", (inc, "raw")),
        "nested": (sum, ["legacy", (inc, 1), {"k": "raw"}.get("k")]),
        "spec": Task("spec", add, TaskRef("nested"), TaskRef("data")),
        "data": DataNode("data", 100),
        "top": Task("top", inc, TaskRef("spec")),
    }
    for keys in ("top", ["top", ["legacy", "alias"]], ["data", "raw"]):
        assert belated.get(dsk, keys) == dask.get(dsk, keys)


def test_get_runs_arrays_without_dasks_linear_fusion_unless_dask_config_sets_it():
    x = da.from_array(np.arange(64.0).reshape(8, 8), chunks=2)
    y = ((x + 1) * 2).T.sum()

    def run(**settings):
        keys = []
        with dask.config.set(settings), Callback(pretask=lambda key, dsk, state: keys.append(key)):
            return y.compute(scheduler=belated.get), keys

    unfused, unfused_keys = run()
    fused, fused_keys = run(**{"optimization.fuse.active": True})
    assert unfused == fused == y.compute(scheduler="sync")
    # dask fuses each block's read with the blockwise work on it into one task under a new name; the
    # engine runs the reads as tasks of their own.
    assert x.name in {key[0] for key in unfused_keys}
    assert x.name not in {key[0] for key in fused_keys}
    assert dask.config.get("optimization.fuse.active") is None


test_var = contextvars.ContextVar("test_var", default=42)


@pytest.mark.parametrize("num_workers", [None, 1])
def test_contextvars(num_workers):
    dsk = {"x": (test_var.get,), "y": (lambda x: (x, test_var.get()), "x")}
    assert belated.get(dsk, "y", num_workers=num_workers) == (42, 42)
    token = test_var.set(43)
    try:
        assert belated.get(dsk, "y", num_workers=num_workers) == (43, 43)
        assert (
            da.from_array(np.arange(4), chunks=2)
            .map_blocks(lambda b: b + test_var.get())
            .sum()
            .compute(scheduler=belated.get)
            == 6 + 4 * 43
        )
    finally:
        test_var.reset(token)


@pytest.mark.parametrize("order", ["dask", "depth-first"])
def test_cycles_and_missing_dependencies_are_refused(order, monkeypatch):
    monkeypatch.setattr(belated._get, "ORDER", order)
    # Found: the depth-first order raised ValueError; dask's schedulers raise RuntimeError.
    for graph in ({"a": (inc, "b"), "b": (inc, "a")}, {"a": (inc, "a")}):
        with pytest.raises(RuntimeError, match="Cycle detected"):
            belated.get(graph, "a")
    from dask._task_spec import Task, TaskRef
    from dask.threaded import get as dask_get

    # A missing dependency is dask's ValueError, with dask's message (it was a KeyError).
    for get in (dask_get, belated.get):
        with pytest.raises(ValueError, match=r"^Missing dependency missing for dependents \{'a'\}$"):
            get({"a": Task("a", inc, TaskRef("missing"))}, "a")
        with pytest.raises(KeyError, match="b"):
            get({"a": 1}, "b")


def test_timeout_cancels():
    release = threading.Event()
    dsk = {"slow": (release.wait, 30), "after": (inc, 1), "both": (add, "after", "after")}
    dsk["slow2"] = (lambda _: 1, "slow")
    try:
        with pytest.raises(belated.ComputeTimeoutError):
            belated.get(dsk, ["slow2", "both"], timeout=0.2, num_workers=2)
    finally:
        release.set()


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": float("nan")},
        {"timeout": -1},
        {"num_workers": 0},
        {"num_workers": -1},
        {"num_workers": 2**40},
    ],
)
def test_bad_options_are_value_errors(options):
    with pytest.raises(ValueError):
        belated.get({"x": (inc, 1)}, "x", **options)


def test_timeouts_too_far_ahead_to_represent_mean_none():
    for timeout in (float("inf"), 1e300):
        assert belated.get({"x": (inc, 1)}, "x", timeout=timeout) == 2


def test_a_task_stuck_in_a_timed_out_get_does_not_hold_up_the_next_one():
    release = threading.Event()
    try:
        with pytest.raises(belated.ComputeTimeoutError):
            belated.get({"stuck": (release.wait, 600)}, "stuck", timeout=0.2, num_workers=1)
        # The pool's only thread is still in that task; the next get of the same size runs all the same.
        assert belated.get({"x": (inc, 1)}, "x", num_workers=1, timeout=60) == 2
        assert not release.is_set()
    finally:
        release.set()


def test_num_workers_runs_tasks_side_by_side():
    barrier = threading.Barrier(3)
    dsk = {i: (barrier.wait, 30) for i in range(3)}
    assert len(belated.get(dsk, list(dsk), num_workers=3)) == 3


def test_dask_callbacks_see_every_task_in_order():
    events = []
    lock = threading.Lock()

    def pretask(key, dsk, state):
        with lock:
            events.append(("pre", key))

    def posttask(key, result, dsk, state, worker_id):
        with lock:
            events.append(("post", key, result))

    def finish(dsk, state, errored):
        events.append(("finish", errored, len(state["finished"])))

    dsk = {"x": 1, "y": (inc, "x"), "z": (add, "y", "y")}
    with Callback(pretask=pretask, posttask=posttask, finish=finish):
        assert belated.get(dsk, "z") == 4
    assert events.index(("post", "y", 2)) < events.index(("pre", "z"))
    assert events[-1] == ("finish", False, 3)
    events.clear()
    with pytest.raises(ValueError):
        belated.get({"x": 1, "y": (bad, "x")}, "y", callbacks=[Callback(finish=finish)])
    assert events[-1][:2] == ("finish", True)


def _keys_handed_to_callbacks(get, **options):
    """What each callback hook received of a graph with tuple keys: the graph's keys, the task keys."""
    seen = {"start": [], "start_state": [], "pretask": [], "posttask": [], "finish": []}
    lock = threading.Lock()

    def record(hook, keys):
        with lock:
            seen[hook].append(keys)

    dsk = {("x", 0): 1, ("x", 1): (add, ("x", 0), 10), "y": (add, ("x", 1), 1)}
    with Callback(
        start=lambda dsk: record("start", set(dsk)),
        start_state=lambda dsk, state: record("start_state", set(dsk)),
        pretask=lambda key, dsk, state: record("pretask", (key, key in dsk)),
        posttask=lambda key, result, dsk, state, worker: record("posttask", (key, result)),
        finish=lambda dsk, state, errored: record("finish", set(dsk)),
    ):
        assert get(dsk, ["y", ("x", 1)], **options) == (12, 11)
    return seen


@pytest.mark.parametrize("pool", ["sync", "threads", "processes"])
def test_callbacks_get_tuple_keys_as_tuples_on_every_pool_as_from_dask(pool):
    # The sync and processes pools (which run the graph as belated's Delayed tasks) handed every
    # hook the key's text, "('x', 1)", where dask hands the tuple.
    seen = _keys_handed_to_callbacks(belated.get, pool=pool)
    expected = _keys_handed_to_callbacks(dask.get)
    for hook in ("start", "start_state", "finish"):
        assert seen[hook] == expected[hook] == [{("x", 0), ("x", 1), "y"}], hook
    # dask runs no task for the literal ('x', 0); belated does, with the tuple key as well.
    assert len(seen["posttask"]) == 3
    assert set(seen["posttask"]) == {(("x", 0), 1), (("x", 1), 11), ("y", 12)}
    assert set(expected["posttask"]) < set(seen["posttask"])
    assert set(seen["pretask"]) == {(("x", 0), True), (("x", 1), True), ("y", True)}


def _fail_in(x):
    bad(x)


def _interrupt_in(x):
    raise KeyboardInterrupt(x)


@pytest.mark.parametrize("pool", ["sync", "threads", "processes"])
@pytest.mark.parametrize(("task", "error"), [(_fail_in, ValueError), (_interrupt_in, KeyboardInterrupt)])
def test_a_task_error_shows_get_then_only_the_users_frames(pool, task, error):
    # The sync and processes pools showed belated's compute between get and the task; a task's
    # KeyboardInterrupt showed belated's frames on every pool.
    with pytest.raises(error) as info:
        belated.get({"x": 1, "y": (task, "x")}, "y", pool=pool)
    own = os.path.join(os.path.dirname(belated.__file__), "")
    frames = traceback.extract_tb(info.value.__traceback__)[1:]
    assert [(frame.name, frame.filename.startswith(own)) for frame in frames][:2] == [
        ("get", True),
        (task.__name__, False),
    ]
    assert not [frame for frame in frames[1:] if frame.filename.startswith(own)]


def test_belated_diagnostics_watch_dask_collections():
    from belated.diagnostics import Profiler

    x = da.ones((10, 10), chunks=5)
    with Profiler() as prof:
        assert (x + 1).sum().compute(scheduler=belated.get) == 200
    assert len(prof.results) > 4
    assert all(row.start_time <= row.end_time for row in prof.results)
    assert all(isinstance(row.task, GraphNode) for row in prof.results)


def test_compute_inside_a_task_runs_inline():
    def inner(_):
        return int(da.arange(10, chunks=2).sum().compute(scheduler=belated.get))

    assert belated.get({"x": 1, "y": (inner, "x")}, "y", num_workers=1) == 45


@pytest.mark.parametrize("pool", [None, "sync"])
def test_a_cache_given_is_read_and_filled(pool):
    runs = []

    def traced(name, x):
        runs.append(name)
        return x + 1

    dsk = {
        "a": (traced, "ran a", 0),
        "b": (traced, "ran b", "a"),
        "c": (traced, "ran c", "b"),
        "d": (traced, "ran d", "a"),
    }
    # As dask's get functions fill it: with the results of the wanted keys.
    cache, dask_cache = {}, {}
    assert belated.get(dsk, ["c", "d"], cache=cache, pool=pool) == (3, 2)
    assert dask.local.get_sync(dsk, ["c", "d"], cache=dask_cache) == (3, 2)
    assert cache == dask_cache == {"c": 3, "d": 2}
    # What it holds is taken as computed: "b" is not run, and "a" only for "d".
    runs.clear()
    cache = {"b": 100}
    assert belated.get(dsk, ["c", "d"], cache=cache, pool=pool) == (101, 2)
    assert sorted(runs) == ["ran a", "ran c", "ran d"]
    assert cache == {"b": 100, "c": 101, "d": 2}
    # A wanted key found there is its value; a key only the cache holds can be depended on.
    runs.clear()
    assert belated.get({"e": (traced, "ran e", "z")}, ["c", "e"], cache={"c": 7, "z": 41}, pool=pool) == (
        7,
        42,
    )
    assert runs == ["ran e"]
    # A cached value is data, even when it looks like a task.
    runs.clear()
    assert belated.get({"n": (len, "t")}, "n", cache={"t": (traced, "ran t", 5)}, pool=pool) == 3
    assert runs == []
    with dask.config.set(cache={"a": 10}):
        assert belated.get(dsk, "d", pool=pool) == 11
        assert dask.config.get("cache") == {"a": 10, "d": 11}


# Tasks record the order they run in. The keys of a task's arguments are a set to dask, iterated in an
# order PYTHONHASHSEED changes: the arguments name them in order (directly, in a container, by keyword).
ORDER_CHILD = """
import sys
from dask._task_spec import Task, TaskRef
import belated

runs = []

def run(name, *args, **kwargs):
    runs.append(name)

legacy = {
    "left": (run, "L"), "mid": (run, "M"), "right": (run, "R"), "z1": (run, "Z1"), "z2": (run, "Z2"),
    "z3": (run, "Z3"), "top": (run, "T", "right", "left", "mid"), "bag": (run, "BAG", ["z3", "z1", "z2"]),
}
spec = {key: Task(key, run, key.upper()) for key in ("a", "b", "c", "d")}
spec["calls"] = Task("calls", run, "CALLS", TaskRef("d"), TaskRef("a"), x=TaskRef("c"), y=TaskRef("b"))
for dsk, keys in ((legacy, ["bag", "top"]), (spec, "calls")):
    belated.get(dsk, keys, pool=sys.argv[1] or None, num_workers=1)
print(" ".join(runs))
"""


@pytest.mark.parametrize("pool", ["sync", ""], ids=["sync", "one thread"])
def test_one_thread_runs_tasks_in_the_order_their_arguments_name_them_whatever_the_hash_seed(pool):
    orders = set()
    for seed in ("0", "1", "2", "3", "4"):
        child = subprocess.run(
            [sys.executable, "-c", ORDER_CHILD, pool],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        orders.add(child.stdout.strip())
    assert orders == {"Z3 Z1 Z2 BAG R L M T D A C B CALLS"}


def test_config_set_scheduler():
    with dask.config.set(scheduler=belated.get):
        assert da.arange(100, chunks=7).sum().compute() == 4950


# Differential: random collection expressions, belated.get against dask's synchronous scheduler.

ARRAY_OPS = [
    lambda x: x + x.T,
    lambda x: (x * 2).sum(axis=0),
    lambda x: x.mean(axis=1),
    lambda x: x[::2, 1:].cumsum(axis=0),
    lambda x: x.dot(x.T),
    lambda x: x.rechunk((3, 5)).max(),
    lambda x: da.concatenate([x, x], axis=0).std(),
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 12),
    chunk=st.integers(1, 6),
    ops=st.lists(st.sampled_from(range(len(ARRAY_OPS))), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
)
def test_random_arrays_match_dask(n, chunk, ops, seed):
    x = da.from_array(np.random.default_rng(seed).random((n, n)), chunks=chunk)
    for op in ops:
        x = ARRAY_OPS[op](x)
        if x.ndim != 2 or x.shape[0] != x.shape[1]:
            break
    expected = x.compute(scheduler="sync")
    np.testing.assert_allclose(x.compute(scheduler=belated.get), expected)
    np.testing.assert_allclose(belated.compute(x)[0], expected)


DATAFRAME_OPS = {
    "groupby_mean": lambda df: df.groupby("k").v.mean(),
    "groupby_sum": lambda df: df.groupby("k").sum(),
    "filter_sum": lambda df: df[df.v > 0.5].v.sum(),
    "assign_max": lambda df: df.assign(w=df.v * df.k).w.max(),
    "value_counts": lambda df: df.k.value_counts(),
}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 60),
    partitions=st.integers(1, 8),
    how=st.sampled_from(sorted(DATAFRAME_OPS)),
    seed=st.integers(0, 1000),
)
def test_random_dataframes_match_dask(rows, partitions, how, seed):
    rng = np.random.default_rng(seed)
    pdf = pd.DataFrame({"k": rng.integers(0, 5, rows), "v": rng.random(rows)})
    expr = DATAFRAME_OPS[how](dd.from_pandas(pdf, npartitions=partitions))
    expected = expr.compute(scheduler="sync")
    for got in (expr.compute(scheduler=belated.get), belated.compute(expr)[0]):
        if isinstance(expected, (pd.Series, pd.DataFrame)):
            assert got.sort_index().equals(expected.sort_index())
        else:
            assert got == expected or (np.isnan(got) and np.isnan(expected))


BAG_OPS = {
    "map_filter_sum": lambda b: b.map(inc).filter(lambda v: v % 2).sum(),
    "frequencies": lambda b: b.map(lambda v: v % 7).frequencies(sort=True),
    "foldby": lambda b: b.foldby(lambda v: v % 3, add, 0),
    "distinct": lambda b: b.distinct(),
    "topk": lambda b: b.topk(3),
}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.integers(-50, 50), max_size=60),
    partitions=st.integers(1, 8),
    how=st.sampled_from(sorted(BAG_OPS)),
)
def test_random_bags_match_dask(items, partitions, how):
    expr = BAG_OPS[how](db.from_sequence(items, npartitions=partitions))
    expected = expr.compute(scheduler="sync")
    for got in (expr.compute(scheduler=belated.get), belated.compute(expr)[0]):
        if how in ("foldby", "distinct"):
            assert sorted(got) == sorted(expected)
        else:
            assert got == expected


# The differential tests again, with a hostile user task somewhere in the expression: what dask's own
# scheduler raises, belated raises too, as itself, from the user's frame, naming the dask key.


class Refused(Exception):
    """What a hostile user task raises."""


def refuse_block(block, target, block_id=None):
    if block_id == target:
        raise Refused(f"block {block_id} refused")
    return block


def refuse_negative_rows(part):
    if (part.v < 0).any():
        raise Refused(f"{int((part.v < 0).sum())} negative rows")
    return part


def refuse_item(v, target):
    if v == target:
        raise Refused(f"item {v} refused")
    return v


def assert_same_outcome(expr, user_function, equal):
    """belated.get and belated.compute give what dask's synchronous scheduler gives: an equal value, or
    the same exception raised as itself from the same (user's) frame, with a note naming the dask key of
    the task that raised (for belated.get, a key of the graph dask handed it)."""
    try:
        expected = expr.compute(scheduler="sync")
    except Refused as error:
        expected = error
    handed = []

    def get(dsk, keys, **kwargs):
        handed.append(dsk)
        return belated.get(dsk, keys, **kwargs)

    runs = {"get": lambda: expr.compute(scheduler=get), "compute": lambda: belated.compute(expr)[0]}
    for how, run in runs.items():
        if not isinstance(expected, Refused):
            assert equal(run(), expected), how
            continue
        with pytest.raises(Refused) as info:
            run()
        assert str(info.value) == str(expected), how
        assert info.traceback[-1].name == traceback.extract_tb(expected.__traceback__)[-1].name, how
        assert info.traceback[-1].name == user_function.__name__, how
        prefix = "raised by belated task "
        (note,) = (note for note in info.value.__notes__ if note.startswith(prefix))
        named = note.removeprefix(prefix)
        # A tuple key is shown as its repr; a string key as itself when belated.compute ran it.
        key = ast.literal_eval(named) if named.startswith(("(", "'")) else named
        assert dask.core.iskey(key), note
        if how == "get":
            # belated.get builds the graph without dask's linear fusion, as dask does when told so.
            with dask.config.set({"optimization.fuse.active": False}):
                assert key in handed[-1].__dask_graph__(), note


def same_values(got, expected):
    if isinstance(expected, (pd.Series, pd.DataFrame)):
        return got.sort_index().equals(expected.sort_index())
    if isinstance(expected, np.ndarray) or np.ndim(expected):
        return np.allclose(got, expected, equal_nan=True)
    return got == expected or (np.isnan(got) and np.isnan(expected))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 12),
    chunk=st.integers(1, 6),
    target=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    ops=st.lists(st.sampled_from(range(len(ARRAY_OPS))), min_size=1, max_size=2),
    seed=st.integers(0, 1000),
)
def test_random_arrays_with_a_raising_block_match_dask(n, chunk, target, ops, seed):
    x = da.from_array(np.random.default_rng(seed).random((n, n)), chunks=chunk)
    x = x.map_blocks(refuse_block, target, dtype=x.dtype)
    for op in ops:
        x = ARRAY_OPS[op](x)
        if x.ndim != 2 or x.shape[0] != x.shape[1]:
            break
    assert_same_outcome(x, refuse_block, same_values)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 60),
    partitions=st.integers(1, 8),
    negative=st.integers(0, 80),
    how=st.sampled_from(sorted(DATAFRAME_OPS)),
    seed=st.integers(0, 1000),
)
def test_random_dataframes_with_a_raising_partition_match_dask(rows, partitions, negative, how, seed):
    rng = np.random.default_rng(seed)
    pdf = pd.DataFrame({"k": rng.integers(0, 5, rows), "v": rng.random(rows)})
    pdf.loc[pdf.index == negative, "v"] = -1.0
    df = dd.from_pandas(pdf, npartitions=partitions).map_partitions(refuse_negative_rows, meta=pdf.iloc[:0])
    assert_same_outcome(DATAFRAME_OPS[how](df), refuse_negative_rows, same_values)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.integers(-50, 50), max_size=60),
    partitions=st.integers(1, 8),
    target=st.integers(-50, 50),
    how=st.sampled_from(sorted(BAG_OPS)),
)
def test_random_bags_with_a_raising_item_match_dask(items, partitions, target, how):
    b = db.from_sequence(items, npartitions=partitions).map(refuse_item, target)

    def equal(got, expected):
        return sorted(got) == sorted(expected) if how in ("foldby", "distinct") else got == expected

    assert_same_outcome(BAG_OPS[how](b), refuse_item, equal)


class Block:
    """A value that counts how many of its kind are alive."""

    alive = 0
    peak = 0
    lock = threading.Lock()

    def __init__(self, size):
        self.size = size
        with Block.lock:
            Block.alive += 1
            Block.peak = max(Block.peak, Block.alive)

    def __del__(self):
        with Block.lock:
            Block.alive -= 1


def combine(a, b):
    return Block(a.size + b.size)


@pytest.mark.parametrize("order", ["dask", "depth-first"])
def test_results_are_released_once_no_task_needs_them(order, monkeypatch):
    monkeypatch.setattr(belated._get, "ORDER", order)
    leaves = 256
    dsk = {("leaf", i): (Block, 1) for i in range(leaves)}
    level = [("leaf", i) for i in range(leaves)]
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = [(f"sum-{depth}", i) for i in range(len(level) // 2)]
        for i, key in enumerate(nxt):
            dsk[key] = (combine, level[2 * i], level[2 * i + 1])
        level = nxt
    Block.peak = Block.alive = 0
    assert belated.get(dsk, level[0], num_workers=1).size == leaves
    # One worker evaluating a binary tree in either order holds one partial sum per level, not all leaves.
    assert Block.peak <= 2 * depth + 2


# dask collections inside belated's compute, persist and delayed calls


class Calls:
    """Counts the calls of a block function, from every thread."""

    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()

    def plus_one(self, block):
        with self.lock:
            self.count += 1
        return block + 1


def counted_array(calls):
    x = da.from_array(np.arange(36.0).reshape(6, 6), chunks=3)
    # meta= keeps dask from calling the function while building the graph.
    return x.map_blocks(calls.plus_one, meta=np.array((), dtype=float))


def test_compute_runs_dask_collections_and_delayed_objects_in_one_pass_sharing_tasks():
    calls = Calls()
    x = counted_array(calls)
    total = belated.delayed(np.sum)(x)
    got_x, got_total, got_sum, got_t = belated.compute(x, total, x.sum(), x.T)
    expected_x = np.arange(36.0).reshape(6, 6) + 1
    np.testing.assert_array_equal(got_x, expected_x)
    assert got_total == got_sum == expected_x.sum()
    np.testing.assert_array_equal(got_t, expected_x.T)
    # Four blocks, each computed once for the four results that need it.
    assert calls.count == 4


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_compute_runs_collections_without_dasks_linear_fusion_in_this_process(scheduler):
    x = da.from_array(np.arange(64.0).reshape(8, 8), chunks=2)
    y = ((x + 1) * 2).T.sum()

    def run(**settings):
        keys = []
        watch = belated.diagnostics.Callback(pretask=lambda key, dsk, state: keys.append(key))
        with dask.config.set(settings), watch:
            value = belated.compute(y, scheduler=scheduler)[0]
        return value, any(isinstance(key, tuple) and key[0] == x.name for key in keys)

    unfused, unfused_reads_x = run()
    fused, fused_reads_x = run(**{"optimization.fuse.active": True})
    assert unfused == fused == y.compute(scheduler="sync")
    # As belated.get: each block's read is a task of its own unless the tasks go to other processes,
    # where fewer, larger tasks cost less.
    assert unfused_reads_x is (scheduler != "processes")
    assert not fused_reads_x
    assert dask.config.get("optimization.fuse.active") is None


def test_a_collection_passed_to_a_delayed_call_is_its_computed_value_as_in_dask():
    x = da.arange(10, chunks=3)
    pdf = pd.DataFrame({"k": [1, 2, 1, 2, 3], "v": range(5)})
    df = dd.from_pandas(pdf, npartitions=2)
    b = db.from_sequence(range(6), npartitions=3)
    for make in (
        lambda d: d(type)(x),
        lambda d: d(len)(df),
        lambda d: d(sorted)(b),
        lambda d: d(sum)([x.sum(), 1]),
    ):
        expected = make(dask.delayed).compute(scheduler="sync")
        assert make(belated.delayed).compute() == expected
    got = belated.delayed(lambda frame: frame.v.sum())(df).compute()
    assert got == pdf.v.sum()


@pytest.mark.filterwarnings("ignore:Computing mixed collections")  # dask's own warning, as in dask.compute
def test_compute_takes_collections_nested_in_containers_as_dask_does():
    x = da.ones((4, 4), chunks=2)
    df = dd.from_pandas(pd.DataFrame({"v": range(8)}), npartitions=3)
    args = ({"a": x.sum(), "b": [df.v.max(), 3]}, (dask.delayed(len)("abc"),), "plain")
    assert belated.compute(*args) == dask.compute(*args, scheduler="sync")


def test_compute_of_a_collection_raises_the_tasks_own_exception():
    def fail(block):
        raise ZeroDivisionError("block failed")

    x = da.ones((4, 4), chunks=2).map_blocks(fail, meta=np.array(()))
    with pytest.raises(ZeroDivisionError, match="block failed"):
        belated.compute(x.sum())


@pytest.mark.filterwarnings("ignore:Computing mixed collections")  # dask's own warning, as in dask.persist
@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_persist_returns_collections_holding_their_computed_keys(scheduler):
    calls = Calls()
    # Worker processes need picklable tasks, which a counter holding a lock is not.
    x = counted_array(calls) if scheduler != "processes" else da.arange(36.0, chunks=5).reshape(6, 6) + 1
    df = dd.from_pandas(pd.DataFrame({"k": [1, 2] * 5, "v": range(10)}), npartitions=3)
    y = belated.delayed(sum)([1, 2])
    px, pdf, py = belated.persist(x, df, y, scheduler=scheduler)
    assert type(px) is type(x) and px.chunks == x.chunks
    assert all(not isinstance(v, GraphNode) or type(v).__name__ == "DataNode" for v in dict(px.dask).values())
    np.testing.assert_array_equal(px.compute(scheduler="sync"), x.compute(scheduler="sync"))
    assert pdf.compute(scheduler="sync").equals(df.compute(scheduler="sync"))
    assert isinstance(py, belated.Delayed) and py.compute() == 3
    if scheduler != "processes":
        calls.count = 0
        (px * 2).sum().compute(scheduler=belated.get)
        # The persisted blocks are values: nothing of the original graph runs again.
        assert calls.count == 0


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_persist_of_collections_and_delayed_objects_runs_their_shared_tasks_once(scheduler):
    calls = Calls()
    x = counted_array(calls)
    total = belated.delayed(np.sum)(x)
    blocks = belated.delayed(len)(x.to_delayed().ravel().tolist())
    px, ptotal, (pblocks,), pt = belated.persist(x, total, [blocks], x.T, scheduler=scheduler)
    expected = np.arange(36.0).reshape(6, 6) + 1
    # Four blocks, each run once for the two collections and the two Delayed objects that need it.
    assert calls.count == 4
    np.testing.assert_array_equal(px.compute(scheduler="sync"), expected)
    np.testing.assert_array_equal(pt.compute(scheduler="sync"), expected.T)
    assert isinstance(ptotal, belated.Delayed) and ptotal.key == total.key
    assert ptotal.compute() == expected.sum() and pblocks.compute() == 4
    assert calls.count == 4


@pytest.mark.filterwarnings("ignore:Computing mixed collections")
@pytest.mark.parametrize("pool", ["processes", "sync", "threads"])
def test_get_pool_runs_collections_where_it_says(pool):
    x = da.from_array(np.arange(64.0).reshape(8, 8), chunks=3)
    df = dd.from_pandas(pd.DataFrame({"k": [1, 2, 3, 1] * 5, "v": range(20)}), npartitions=4)
    b = db.from_sequence(range(30), npartitions=4)
    exprs = ((x + x.T).sum(), df.groupby("k").v.mean(), b.map(inc).filter(lambda v: v % 2).sum())
    expected = dask.compute(*exprs, scheduler="sync")
    got = dask.compute(*exprs, scheduler=belated.get, pool=pool)
    assert got[0] == expected[0] and got[1].equals(expected[1]) and got[2] == expected[2]


def test_get_pool_processes_runs_tasks_in_other_processes():
    import os

    dsk = {"pid": (os.getpid,), "pids": (lambda p: [p, os.getpid()], "pid")}
    task_pid, _ = belated.get(dsk, "pids", pool="processes")
    assert task_pid != os.getpid()


def test_get_refuses_an_unknown_pool_name():
    with pytest.raises(ValueError, match="pool must be"):
        belated.get({"x": 1}, "x", pool="gpu")


def test_client_computes_and_persists_dask_collections_on_its_cluster():
    x = da.from_array(np.arange(64.0).reshape(8, 8), chunks=4)
    df = dd.from_pandas(pd.DataFrame({"k": [1, 2] * 10, "v": range(20)}), npartitions=4)
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        mean = client.compute(df.groupby("k").v.mean()).result(timeout=60)
        assert mean.equals(df.groupby("k").v.mean().compute(scheduler="sync"))
        px = client.persist(x)
        total = client.compute((px + px.T).sum(), sync=True)
    assert total == (x + x.T).sum().compute(scheduler="sync")


def test_dask_runs_a_delayed_object_holding_a_collections_tasks():
    pdf = pd.DataFrame({"x": range(6)})
    df = dd.from_pandas(pdf, npartitions=2)
    part = df[df.x > 1].to_delayed()[1]
    counted = belated.delayed(len)(part)
    assert dask.compute(counted, scheduler="sync") == (counted.compute(),)
    assert counted.compute() == len(part.compute(scheduler="sync"))


def test_dask_reads_a_dict_argument_of_a_delayed_object_as_data():
    # A dask task object inside a dict is data here (as dask's optimizers carry subgraphs), not a task
    # of the exported graph whose dependency would be missing.
    from dask._task_spec import Task, TaskRef

    carried = {"t": Task("inner", inc, TaskRef("elsewhere"))}
    kind = belated.delayed(lambda d: type(d["t"]).__name__)(carried)
    assert dask.compute(kind, scheduler="sync") == (kind.compute(),) == ("Task",)


def test_other_python_threads_run_while_builtin_dask_tasks_compute():
    """Builtin-function tasks run no bytecode, so CPython never asks them to give up the interpreter:
    belated.get offers it between tasks, as compute does. The heartbeat shows up among the tasks."""

    def run(events):
        dsk = {("t", i): (events.append, "task") for i in range(300_000)}
        belated.get(dsk, list(dsk), num_workers=2)

    beats_during = heartbeats_between(run, first="task", last="task")
    assert beats_during >= 3, f"the heartbeat ran {beats_during} times during the get"


def test_tasks_that_release_the_gil_keep_both_workers_to_the_end():
    """belated.get drops a worker only when it does not raise the task rate: tasks that release the
    GIL (sleeping, as numpy does on large arrays) still overlap after the engine has measured them
    for many windows. Overlaps are counted by the order of task starts and ends."""
    task, at_start = counting_overlaps(lambda running: time.sleep(0.002))
    dsk = {("t", i): (task, i) for i in range(400)}
    assert belated.get(dsk, list(dsk), num_workers=2) == tuple(range(400))
    assert max(at_start) == 2
    assert max(at_start[300:]) == 2, "the last hundred tasks ran one at a time"
    # One worker allowed by the user: the ramp never goes above it.
    at_start.clear()
    belated.get(dsk, list(dsk), num_workers=1)
    assert max(at_start) == 1


@pytest.mark.parametrize(
    "run",
    [
        lambda bag: bag.compute(scheduler=belated.get, num_workers=2),
        lambda bag: belated.compute(bag, num_workers=2)[0],
        lambda bag: belated.compute([bag], scheduler=belated.get, num_workers=2)[0][0],
        lambda bag: belated.persist(bag, num_workers=2)[0].compute(scheduler="sync"),
    ],
    ids=["get", "compute", "compute-nested", "persist"],
)
def test_collections_whose_tasks_slow_each_other_settle_on_one_thread_however_computed(run):
    """Tasks that hold the GIL run no faster on two threads than on one: whether dask's collection
    goes through belated.get, compute or persist, the engine measures the task rate and lets one
    thread run them (comparing with two again now and then). Here a task that starts beside another
    one is made far slower, so the measured rates leave no doubt whatever else the machine runs;
    without the measuring nearly every task starts beside another. Overlaps are counted by the order
    of task starts and ends."""

    task, at_start = counting_overlaps(slowed_beside_another)
    bag = db.from_sequence(range(600), npartitions=600).map(task)
    assert list(run(bag)) == list(range(600))
    later = at_start[len(at_start) // 2 :]
    overlapping = sum(count > 1 for count in later) / len(later)
    assert overlapping < 0.5, f"{overlapping:.0%} of the later tasks started beside another one"
