"""Random programs built through the public API compute to what plain Python computes eagerly.

`BELATED_HYPOTHESIS_EXAMPLES` raises the number of programs per property for longer runs.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import belated
from belated import compute, delayed

EXAMPLES = int(os.environ.get("BELATED_HYPOTHESIS_EXAMPLES", "500"))
KINDS = ["add", "sub", "mul", "neg", "call", "list", "dict", "nout", "method", "getitem", "literal", "kw"]

programs = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 10**6), st.integers(0, 10**6), st.booleans()),
    min_size=1,
    max_size=40,
)


def combine(a, b):
    return (a * 31 + b) % 1_000_003


def total(items):
    return sum(items) % 1_000_003


def pick(mapping):
    return mapping["x"] - mapping["y"][0] + mapping["y"][1]


def pair(a):
    return a, a + 1


def keyword(a, *, scale=1):
    return a * scale


class Eager:
    def call(self, func, *args, pure=False, **kwargs):
        return func(*args, **kwargs)

    def pair(self, a, pure=False):
        return pair(a)

    def literal(self, value):
        return value


class Lazy:
    def __init__(self, module):
        self.delayed = module.delayed

    def call(self, func, *args, pure=False, **kwargs):
        return self.delayed(func, pure=pure)(*args, **kwargs)

    def pair(self, a, pure=False):
        return self.delayed(pair, nout=2, pure=pure)(a)

    def literal(self, value):
        return self.delayed(value)


def run(program, backend):
    values = [backend.literal(1), backend.literal(2)]
    for kind, i, j, pure in program:
        a, b = values[i % len(values)], values[j % len(values)]
        if kind == "add":
            value = a + b
        elif kind == "sub":
            value = a - b
        elif kind == "mul":
            value = backend.call(combine, a * 3, b, pure=pure)
        elif kind == "neg":
            value = -a
        elif kind == "call":
            value = backend.call(combine, a, b, pure=pure)
        elif kind == "list":
            value = backend.call(total, [a, b, (a, b)[j % 2]], pure=pure)
        elif kind == "dict":
            value = backend.call(pick, {"x": a, "y": (b, a)}, pure=pure)
        elif kind == "nout":
            first, second = backend.pair(a, pure=pure)
            value = first * 2 + second
        elif kind == "method":
            value = a.__abs__() if pure else abs(a).bit_length()
        elif kind == "getitem":
            value = backend.call(pair, b, pure=pure)[j % 2]
        elif kind == "kw":
            value = backend.call(keyword, a, scale=b, pure=pure) % 1_000_003
        else:
            value = backend.literal(i % 100)
        values.append(value)
    return values


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, outputs=st.lists(st.integers(0, 10**6), min_size=1, max_size=6))
@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_random_programs_equal_eager_evaluation(program, outputs, scheduler):
    eager = run(program, Eager())
    lazy = run(program, Lazy(belated))
    picked = [o % len(eager) for o in outputs]
    expected = tuple(eager[i] for i in picked)
    assert compute(*[lazy[i] for i in picked], scheduler=scheduler, num_workers=3) == expected
    assert compute([lazy[i] for i in picked], scheduler=scheduler) == (list(expected),)
    assert lazy[picked[0]].compute(scheduler=scheduler) == expected[0]


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, outputs=st.lists(st.integers(0, 10**6), min_size=1, max_size=6))
def test_random_programs_on_a_local_cluster_equal_eager_evaluation(local_cluster, program, outputs):
    eager = run(program, Eager())
    lazy = run(program, Lazy(belated))
    picked = [o % len(eager) for o in outputs]
    expected = tuple(eager[i] for i in picked)
    assert compute(*[lazy[i] for i in picked], scheduler=local_cluster) == expected
    assert local_cluster.gather(local_cluster.compute([lazy[i] for i in picked])) == list(expected)


def mix(*arrays):
    """A new array from its inputs: what a cluster keeps in a worker, sizes it, and moves when needed."""
    return sum(arrays) * 0.5 + 1


# Arrays of 10,000 floats: above the size at which a cluster sends a value built here to each worker
# once rather than with every call, so these programs move data in every way a cluster can.
array_programs = st.lists(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
    min_size=1,
    max_size=25,
)


@settings(max_examples=max(EXAMPLES // 10, 20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=array_programs, outputs=st.lists(st.integers(0, 10**6), min_size=1, max_size=4))
def test_random_array_programs_on_a_local_cluster_equal_eager_evaluation(local_cluster, program, outputs):
    import numpy as np

    literals = [np.full(10_000, float(i)) for i in range(3)]
    eager, lazy = list(literals), [delayed(array) for array in literals]
    for picks in program:
        eager.append(mix(*(eager[i % len(eager)] for i in picks)))
        lazy.append(delayed(mix)(*(lazy[i % len(lazy)] for i in picks)))
    picked = [o % len(eager) for o in outputs]
    got = compute(*[lazy[i] for i in picked], scheduler=local_cluster)
    for value, i in zip(got, picked, strict=True):
        np.testing.assert_array_equal(value, eager[i])


@settings(max_examples=max(EXAMPLES // 10, 20), deadline=None)
@given(program=programs)
def test_random_programs_match_dask(program):
    dask = pytest.importorskip("dask")
    ours = run(program, Lazy(belated))
    theirs = run(program, Lazy(dask))
    assert compute(*ours) == dask.compute(*theirs, scheduler="sync")
    for i, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert mine.key.split("-")[0] == reference.key.split("-")[0]
        # Equal keys (merged tasks) here exactly where dask has them.
        for j in range(i):
            assert (mine.key == ours[j].key) == (reference.key == theirs[j].key), (i, j)


@settings(max_examples=EXAMPLES, deadline=None)
@given(program=programs)
def test_pickled_programs_compute_the_same(program):
    import pickle

    lazy = run(program, Lazy(belated))
    restored = pickle.loads(pickle.dumps(lazy))
    assert compute(*restored, scheduler="sync") == compute(*lazy, scheduler="sync")
    assert [d.key for d in restored] == [d.key for d in lazy]


@given(st.integers(1, 300))
@settings(max_examples=30, deadline=None)
def test_dask_mapping_lists_every_task_once(width):
    items = [delayed(combine)(i, i) for i in range(width)]
    root = delayed(total)(items)
    graph = root.dask
    assert len(graph) == width + 1
    assert set(graph) == {root.key, *(d.key for d in items)}
