"""No silent differences from dask: keys (which calls are merged), traversal, dask's graph protocol and
graph manipulation, and dask's smaller conventions. Each behaviour is checked against dask itself."""

import dataclasses
import decimal
import fractions
import functools
import importlib
import os
import pickle
import subprocess
import sys
import threading
import warnings

import dask
import dask.graph_manipulation
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import belated
from belated import compute, delayed
from belated.graph_manipulation import bind, checkpoint, clone, wait_on

EXAMPLES = int(os.environ.get("BELATED_HYPOTHESIS_EXAMPLES", "500"))
BACKENDS = pytest.mark.parametrize("lib", [belated, dask], ids=["belated", "dask"])


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def both(lib, *objs):
    return lib.compute(*objs, scheduler="sync")


# --- pure=True identifies functions by what they do ------------------------------------------------------


def make_adder(n):
    def adder(x):
        return x + n

    return adder


A, B = 1, 2


def uses_a(x):
    return x + A


def uses_b(x):
    return x + B


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def scale(self, x):
        return x * self.factor

    def __call__(self, x):
        return x * self.factor


def local_classes():
    class Box:
        def __init__(self, x):
            self.x = ("one", x)

    first = Box

    class Box:
        def __init__(self, x):
            self.x = ("two", x)

    return first, Box


def distinct_callables():
    """Pairs of callables that return different results for 10 but could be mistaken for each other."""
    first_box, second_box = local_classes()
    return {
        "closures": (make_adder(1), make_adder(2)),
        "lambda bodies": (lambda s: s + 1, lambda s: s - 1),
        "lambda globals": (lambda x: x + A, lambda x: x + B),
        "defaults": ((lambda x, n=1: x + n), (lambda x, n=2: x + n)),
        "keyword defaults": ((lambda x, *, n=1: x + n), (lambda x, *, n=2: x + n)),
        "partials": (functools.partial(add, 1), functools.partial(add, 2)),
        "bound methods": (Scaler(2).scale, Scaler(3).scale),
        "callable objects": (Scaler(2), Scaler(3)),
        "builtins": (abs, bin),
        "local classes": (lambda x: first_box(x).x, lambda x: second_box(x).x),
        "nested closures": (make_adder(make_adder(1)(0)), make_adder(make_adder(2)(0))),
    }


@pytest.mark.parametrize("case", list(distinct_callables()))
@BACKENDS
def test_pure_calls_of_different_callables_are_not_merged(lib, case):
    first, second = distinct_callables()[case]
    expected = (first(10), second(10))
    assert expected[0] != expected[1]
    assert both(lib, lib.delayed(first, pure=True)(10), lib.delayed(second, pure=True)(10)) == expected
    with lib.config.set(delayed_pure=True):
        a, b = lib.delayed(first)(10), lib.delayed(second)(10)
    assert a.key != b.key
    assert both(lib, a, b) == expected


def test_the_issue_examples_of_merged_functions():
    assert compute(delayed(make_adder(1), pure=True)(10), delayed(make_adder(2), pure=True)(10)) == (11, 12)
    upper = delayed(lambda s: s.upper(), pure=True)("a")
    lower = delayed(lambda s: s.lower(), pure=True)("a")
    assert upper.key != lower.key
    assert compute(delayed(uses_a, pure=True)(1), delayed(uses_b, pure=True)(1)) == (2, 3)
    assert delayed(lambda x: x + A, pure=True).key != delayed(lambda x: x + B, pure=True).key


@BACKENDS
def test_pure_calls_of_the_same_function_are_merged(lib):
    assert lib.delayed(make_adder(1), pure=True)(10).key == lib.delayed(make_adder(1), pure=True)(10).key
    assert lib.delayed(inc, pure=True)(1).key == lib.delayed(inc, pure=True)(1).key
    scale = lib.delayed(Scaler(2).scale, pure=True)
    assert scale(1).key == lib.delayed(Scaler(2).scale, pure=True)(1).key


def test_a_function_that_cannot_be_identified_gets_unique_keys():
    lock = threading.Lock()

    def locked(x):
        with lock:
            return x + 1

    first, second = delayed(locked, pure=True)(1), delayed(locked, pure=True)(1)
    assert first.key != second.key
    assert compute(first, second) == (2, 2)
    with pytest.raises(belated.TokenizationError):
        belated.tokenize(locked, ensure_deterministic=True)


@pytest.mark.parametrize("lib", [dask, belated], ids=["dask", "belated"])
def test_a_ported_program_catches_tokenization_errors_as_dasks(lib):
    # `import belated as dask` leaves `except dask.tokenize.TokenizationError` in the program
    tokenize = dask.tokenize.tokenize if lib is dask else belated.tokenize
    with lib.config.set({"tokenize.ensure-deterministic": True}):
        with pytest.raises(dask.tokenize.TokenizationError) as raised:
            tokenize(threading.Lock())
        with pytest.raises(dask.tokenize.TokenizationError):
            tokenize([1, object()])
    assert tokenize(threading.Lock()) != tokenize(threading.Lock())
    if lib is belated:
        assert isinstance(raised.value, belated.TokenizationError)
        # as a task's error, it comes back from a worker process
        copy = pickle.loads(pickle.dumps(raised.value))
        assert isinstance(copy, dask.tokenize.TokenizationError)
        assert isinstance(copy, belated.TokenizationError) and copy.args == raised.value.args


def test_recursive_and_self_referencing_functions_tokenize():
    def factorial(n):
        return 1 if n <= 1 else n * factorial(n - 1)

    assert delayed(factorial, pure=True)(5).key == delayed(factorial, pure=True)(5).key
    assert delayed(factorial, pure=True)(5).compute() == 120
    nested = []
    nested.append(nested)
    # a list holding itself is written as a reference to itself, as dask writes it
    assert belated.tokenize(nested) == belated.tokenize(nested) != belated.tokenize([nested])
    assert dask.base.tokenize(nested) == dask.base.tokenize(nested) != dask.base.tokenize([nested])


def test_a_redefined_main_function_is_told_apart_by_its_code():
    script = (
        "import belated\n"
        "def f(x):\n    return x + 1\n"
        "a = belated.delayed(f, pure=True)(1)\n"
        "def f(x):\n    return x + 2\n"
        "b = belated.delayed(f, pure=True)(1)\n"
        "print(belated.compute(a, b))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "(2, 3)", out.stderr


# --- impure keys differ across fork -------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_children_make_different_impure_keys():
    keys = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(write, delayed(inc)(1).key.encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            keys.append(pipe.read())
        os.waitpid(pid, 0)
    parent = delayed(inc)(1).key
    assert len({*keys, parent}) == 3, keys


# --- Delayed inside slices --------------------------------------------------------------------------------


@BACKENDS
def test_delayed_inside_slices_is_computed(lib):
    data = lib.delayed(list(range(10)))
    n, step = lib.delayed(3), lib.delayed(2)
    results = both(
        lib,
        data[n:],
        data[1:n],
        data[n:8:step],
        lib.delayed(lambda xs, s: xs[s])(list(range(5)), slice(None, n)),
        lib.delayed(lambda ss: [s.stop for s in ss])([slice(n), slice(1, step)]),
    )
    assert results == ([3, 4, 5, 6, 7, 8, 9], [1, 2], [3, 5, 7], [0, 1, 2], [3, 2])


# --- dask's graph protocol round-trips --------------------------------------------------------------------


def test_dask_optimize_and_persist_keep_tasks_and_values():
    x = delayed(inc)(1)
    assert dask.optimize(x)[0].compute() == 2
    (optimized,) = dask.optimize(delayed(add)(x, delayed(inc)(x)))
    assert optimized.compute() == 5
    (persisted,) = dask.persist(x, scheduler="sync")
    assert persisted.key == x.key and persisted.compute() == 2
    # A persisted value that looks like a task stays a value.
    (looks_like_a_task,) = dask.persist(delayed(lambda: (inc, 1))(), scheduler="sync")
    assert looks_like_a_task.compute() == (inc, 1)


def test_dask_graph_manipulation_runs_on_belated_objects():
    events = []
    first = delayed(events.append)("first")
    second = delayed(events.append)("second")
    bound = dask.graph_manipulation.bind(second, first)
    assert bound.key != second.key
    assert bound.compute(scheduler="sync") is None
    assert events == ["first", "second"]
    x = delayed(inc)(1)
    assert dask.graph_manipulation.clone(x).compute() == 2
    assert dask.graph_manipulation.wait_on(x).compute() == 2
    assert dask.graph_manipulation.checkpoint(x).compute() is None


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_objects_dask_rebuilt_compute_on_dask_as_well(scheduler):
    # The rebuilt graph carries dask's own task objects as data; dask must not run them as tasks.
    a = delayed(add)(1, 2)
    gm = dask.graph_manipulation
    rebuilt = [*dask.optimize(a), gm.clone(a), gm.wait_on(a), gm.bind(delayed(inc)(a), a)]
    assert dask.compute(*rebuilt, scheduler=scheduler) == (3, 3, 3, 4)
    assert dask.compute(*dask.optimize(delayed(add)(a, delayed(inc)(a))), scheduler=scheduler) == (7,)


def test_the_bind_example_of_dasks_delayed_docs():
    # docs/source/delayed.rst, "Indirect Dependencies" (dask/dask, BSD-3-Clause), on both libraries.
    for lib in (belated, dask):
        calls = []
        write_to_disk = lib.delayed(calls.append)

        @lib.delayed
        def inc(x):
            return x + 1

        @lib.delayed
        def add(x, y):
            return x + y

        x = inc(1)
        y = inc(2)
        write = write_to_disk(add(x, y))
        z = add(x, x)
        z = dask.graph_manipulation.bind(z, write)
        assert z.compute() == 4 and calls == [5]


RECORDED = []


def record(event):
    RECORDED.append(event)


def test_belated_graph_manipulation_orders_tasks_in_the_engine():
    events = []
    first = delayed(events.append)("first")
    second = bind(delayed(events.append)("second"), first)
    assert compute(second, scheduler="threads") == (None,)
    assert events == ["first", "second"]
    # The edge carries no data and survives pickling and export to dask.
    RECORDED.clear()
    again = pickle.loads(pickle.dumps(bind(delayed(len)([1, 2]), delayed(record)("waited"))))
    assert again.compute() == 2 and RECORDED == ["waited"]
    RECORDED.clear()
    assert dask.compute(bind(delayed(len)([1]), delayed(record)("dask")))[0] == 1
    assert RECORDED == ["dask"]


def test_bind_copies_the_children_but_not_omitted_tasks():
    calls = []

    def counted(x):
        calls.append(x)
        return x

    shared = delayed(counted)(1)
    child = delayed(add)(shared, delayed(counted)(2))
    copy = bind(child, None, omit=shared)
    assert copy.key != child.key
    assert compute(child, copy) == (3, 3)
    assert sorted(calls) == [1, 2, 2]  # the omitted task ran once, the copied one twice
    assert bind(child, None, seed=1).key == bind(child, None, seed=1).key != bind(child, None, seed=2).key


def test_clone_wait_on_and_checkpoint():
    x, y = delayed(inc)(1), delayed(inc)(2)
    cloned = clone(x)
    assert cloned.key != x.key and cloned.compute() == 2
    a, b = clone(x, y)
    assert compute(a, b) == (2, 3)
    waited = wait_on({"x": x, "ys": [y]})
    assert set(waited) == {"x", "ys"} and waited["x"].key != x.key
    assert compute(waited) == ({"x": 2, "ys": [3]},)
    assert checkpoint(x, [y]).compute() is None
    assert checkpoint(x).key == checkpoint(x).key
    with pytest.raises(ValueError, match="split_every"):
        checkpoint(x, split_every=1)
    assert clone(dask.delayed(1)).compute() == 1  # a dask collection: dask's own clone (below)


def test_belated_optimize_returns_what_it_was_given():
    x = delayed(inc)(1)
    assert belated.optimize(x, 5) == (x, 5)
    optimized = belated.optimize(x, dask.delayed(inc)(1))
    assert belated.compute(*optimized) == (2, 2)


# --- operators, [] and attributes are pure ----------------------------------------------------------------


class Counter:
    def __init__(self):
        self.reads = 0

    @property
    def n(self):
        self.reads += 1
        return self.reads

    def __getitem__(self, index):
        self.reads += 1
        return index


@BACKENDS
def test_operators_items_and_attributes_get_deterministic_keys(lib):
    a = lib.delayed([1, 2, 3])
    assert a[1].key == a[1].key
    assert (a[0] + 1).key == (a[0] + 1).key
    assert (-a[0]).key == (-a[0]).key
    assert a.count.key == a.count.key
    assert a[1].key != a[2].key
    assert (a[0] + 1).key != (a[0] - 1).key
    assert lib.delayed(3).real.key != lib.delayed(3).imag.key


def operands(lib):
    """Operands told apart by value and type, plain (hashed in Rust) and not (hashed in Python)."""
    return [1, 1.0, True, "1", b"1", None, 10**30, (1,), [1], (1, (2, "x")), slice(1), slice(None, 1),
            -0.0, 0.0, {"a": 1}, {1}, lib.delayed(1, name="one"), lib.delayed((1,), name=("one", 0)),
            [lib.delayed(1, name="one")], inc, Scaler(2)]  # fmt: skip


def test_operand_kinds_give_equal_keys_exactly_when_dask_does():
    ours, theirs = operands(belated), operands(dask)
    x, y = belated.delayed(1, name="x"), dask.delayed(1, name="x")
    for i in range(len(ours)):
        for j in range(len(ours)):
            same_here = (x + ours[i]).key == (x + ours[j]).key
            same_there = (y + theirs[i]).key == (y + theirs[j]).key
            assert same_here == same_there, (ours[i], ours[j])


@BACKENDS
def test_repeated_attribute_reads_of_an_impure_property_are_one_task(lib):
    x = lib.delayed(Counter())
    assert both(lib, x.n, x.n) == (1, 1)
    y = lib.delayed(Counter())
    assert both(lib, y[0], y[0], y[1]) == (0, 0, 1)


@BACKENDS
def test_method_calls_are_impure_unless_asked(lib):
    a = lib.delayed([1, 2, 2])
    assert a.count(2).key != a.count(2).key
    assert a.count(2, pure=True).key == a.count(2, pure=True).key
    with lib.config.set(delayed_pure=True):
        assert a.count(2).key == a.count(2).key


@BACKENDS
def test_delayed_values_honour_delayed_pure(lib):
    assert lib.delayed(5).key != lib.delayed(5).key
    assert lib.delayed(5, pure=True).key == lib.delayed(5, pure=True).key
    with lib.config.set(delayed_pure=True):
        assert lib.delayed(5).key == lib.delayed(5).key
        x = lib.delayed(1, name="x")
        assert lib.delayed([x, 2]).key == lib.delayed([x, 2]).key
        assert lib.delayed(5, nout=1).key != lib.delayed(5).key


# Programs over operators, [], attributes, methods and calls; run on both libraries, equal keys on one
# side must be equal keys on the other.
STEPS = ["add", "neg", "item", "slice", "attr", "method", "shared", "fresh", "literal", "apply"]
key_programs = st.lists(
    st.tuples(st.sampled_from(STEPS), st.integers(0, 50), st.integers(0, 50), st.booleans()),
    min_size=1,
    max_size=25,
)


def pairs(a, b):
    return (a, b, a + b)


def combine(a, b):
    return (a * 31 + b) % 1_000_003


def run_keys(program, lib):
    shared_combine = lib.delayed(combine, pure=True)
    shared_pairs = lib.delayed(pairs, pure=True)
    values = [lib.delayed(1, name="one"), lib.delayed(2, name="two")]
    for step, i, j, flag in program:
        a, b = values[i % len(values)], values[j % len(values)]
        if step == "add":
            value = a + b
        elif step == "neg":
            value = -a
        elif step == "item":
            value = shared_pairs(a, b)[j % 3]
        elif step == "slice":
            value = lib.delayed(sum, pure=True)(shared_pairs(a, b)[(a % 2) :])
        elif step == "attr":
            value = a.real if flag else a.imag
        elif step == "method":
            value = a.bit_length(pure=flag)
        elif step == "shared":
            value = shared_combine(a, b)
        elif step == "fresh":
            value = lib.delayed(combine, pure=flag)(a, b)
        elif step == "apply":
            value = lib.delayed(make_adder, pure=True)(j)(a, pure=flag)
        else:
            value = lib.delayed(i % 3, pure=flag)
        values.append(value)
    return values


@settings(max_examples=max(EXAMPLES // 5, 30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=key_programs, configured_pure=st.booleans())
def test_key_equality_matches_dask(program, configured_pure):
    with belated.config.set(delayed_pure=configured_pure), dask.config.set(delayed_pure=configured_pure):
        ours, theirs = run_keys(program, belated), run_keys(program, dask)
    for i, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        for j in range(i):
            same_here = mine.key == ours[j].key
            same_there = reference.key == theirs[j].key
            assert same_here == same_there, (i, j, mine.key, reference.key)
    assert compute(*ours) == dask.compute(*theirs, scheduler="sync")


# --- smaller conventions ----------------------------------------------------------------------------------


@BACKENDS
def test_private_key_and_length(lib):
    x = lib.delayed(divmod, nout=2)(7, 2)
    assert x._key == x.key and x._length == 2
    assert lib.delayed(1)._length is None


@BACKENDS
def test_tuple_key_names_stay_tuples(lib):
    x = lib.delayed(inc)(1, dask_key_name=("x", 0))
    y = lib.delayed(add)(x, 1, dask_key_name=("y", 0))
    assert x.key == ("x", 0) and y.key == ("y", 0)
    graph = dict(y.dask)
    assert set(graph) == {("x", 0), ("y", 0)}
    assert y.compute() == 3
    assert lib.delayed(5, name=("five", 1)).key == ("five", 1)
    if lib is belated:  # (dask's clone of its own tuple-keyed Delayed loses the dependency)
        cloned = dask.graph_manipulation.clone(y)
        assert cloned.key[0] != "y" and cloned.key[1:] == (0,) and cloned.compute() == 3
        assert pickle.loads(pickle.dumps(y)).key == ("y", 0)
        assert belated.persist(y)[0].key == ("y", 0)


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
def test_a_key_name_that_prints_as_another_keys_text_is_a_task_of_its_own(scheduler):
    # ("x", 1) and the string "('x', 1)" are two keys to dask, though its own schedulers fail on this
    # graph (KeyError: 1); belated merged the tasks and gave the first one's value for both.
    named = [
        belated.delayed(str)("int", dask_key_name=1),
        belated.delayed(str)("str", dask_key_name="1"),
        belated.delayed(str)("tuple", dask_key_name=("x", 1)),
        belated.delayed(str)("text", dask_key_name="('x', 1)"),
    ]
    assert belated.compute(*named, scheduler=scheduler) == ("int", "str", "tuple", "text")


def _pure_keys_equal(lib, pure):
    """Whether two equal calls get one key, for ``pure`` given to ``delayed(f, ...)`` and to
    ``delayed(...)`` as a decorator."""
    return (
        lib.delayed(inc, pure=pure)(1).key == lib.delayed(inc, pure=pure)(1).key,
        lib.delayed(pure=pure)(inc)(1).key == lib.delayed(pure=pure)(inc)(1).key,
    )


@pytest.mark.parametrize(
    "pure", [1, 0, 2.0, "yes", "", [], [0], np.True_, np.False_, None, True, False], ids=repr
)
def test_pure_and_traverse_of_delayed_are_read_by_their_truth_as_in_dask(pure):
    # belated took only a bool there (pure=1 was a TypeError), as dask reads any value by its truth
    assert _pure_keys_equal(belated, pure) == _pure_keys_equal(dask, pure) == (bool(pure),) * 2
    # the same values as traverse= of delayed(value): a container is searched for Delayed objects
    traverse = pure
    searched = [
        isinstance(lib.delayed([lib.delayed(inc)(1)], traverse=traverse).compute()[0], int)
        for lib in (belated, dask)
    ]
    assert searched == [bool(traverse)] * 2


EQUAL_KEYS_OF_OTHER_TYPES = [
    ("x", 1.0),
    ("x", True),
    ("x", np.int64(1)),
    ("x", np.float32(1)),
    ("x", decimal.Decimal(1)),
    ("x", fractions.Fraction(2, 2)),
    ("x", 1 + 0j),
]


def _named_pair_computed(lib, other, scheduler):
    """``("x", 1)`` and ``other`` given as keys of two different calls, computed together, with the
    keys of the graph the computation's callbacks were handed."""
    keys_seen = []
    first = lib.delayed(str)("first", dask_key_name=("x", 1))
    second = lib.delayed(str)("second", dask_key_name=other)
    with belated.diagnostics.Callback(start_state=lambda dsk, state: keys_seen.append(len(list(dsk)))):
        values = lib.compute(first, second, scheduler=scheduler)
    return first.key == second.key, values, keys_seen


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes"])
@pytest.mark.parametrize("other", EQUAL_KEYS_OF_OTHER_TYPES, ids=repr)
def test_keys_equal_in_value_but_of_other_types_are_one_task_as_in_dask(scheduler, other):
    # belated merged keys by their repr, so ("x", 1) and ("x", 1.0) ran as two tasks and each Delayed
    # got its own value, though to dask (and to the dict its callbacks get) they are one key with one value
    equal, values, keys_seen = _named_pair_computed(belated, other, scheduler)
    dask_equal, dask_values, dask_keys_seen = _named_pair_computed(dask, other, scheduler)
    assert equal == dask_equal is True
    assert values[0] == values[1] and dask_values[0] == dask_values[1]
    assert keys_seen == dask_keys_seen == [1]
    # The key stays as it was given, as it is shown
    assert belated.delayed(str)("x", dask_key_name=other).key == other
    assert repr(belated.delayed(str)("x", dask_key_name=other).key) == repr(other)


@pytest.mark.parametrize("other", [("x", 1.5), ("x", (1, 2.0)), ("x", 1 + 1j), ("x", "1"), (b"x", 1)])
def test_keys_that_differ_in_value_stay_two_tasks_as_in_dask(other):
    for lib in (belated, dask):
        equal, values, keys_seen = _named_pair_computed(lib, other, "sync")
        assert (equal, values, keys_seen) == (False, ("first", "second"), [2]), lib


@BACKENDS
def test_item_assignment_says_immutable(lib):
    a = lib.delayed([1, 2])
    with pytest.raises(TypeError, match="Delayed objects are immutable"):
        a[0] = 1
    with pytest.raises(TypeError, match="Delayed objects are immutable"):
        a.attribute = 1


@dataclasses.dataclass
class Plain:
    a: int
    b: int = 0


@dataclasses.dataclass
class CustomInit:
    a: int
    b: int

    def __init__(self, a):
        self.a, self.b = a, 0


@dataclasses.dataclass
class InitFalse:
    a: int
    b: int = dataclasses.field(init=False, default=0)


@dataclasses.dataclass
class InitFalseUnset:
    a: int
    b: int = dataclasses.field(init=False)


@BACKENDS
def test_dataclass_arguments_follow_dasks_rules(lib):
    x = lib.delayed(1)
    assert lib.delayed(lambda p: p.a + p.b)(Plain(x, 2)).compute() == 3
    with pytest.raises(TypeError, match="custom __init__"):
        lib.delayed(lambda p: p)(CustomInit(x))
    with pytest.raises(ValueError, match="init=False"):
        lib.delayed(lambda p: p)(InitFalse(x))
    assert lib.delayed(lambda p: p.a)(InitFalseUnset(x)).compute() == 1
    # Without a Delayed inside, a dataclass is passed as it is.
    assert lib.delayed(lambda p: p.b)(CustomInit(1)).compute() == 0


@BACKENDS
def test_visualise_is_a_spelling_warning(lib):
    x = lib.delayed(1)
    with pytest.warns(UserWarning, match="Perhaps you meant `visualize`"):
        x.visualise  # noqa: B018 - reading it is what warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x.visualize  # noqa: B018


def test_top_level_helpers_are_dasks():
    x = delayed(inc)(1)
    assert belated.is_dask_collection(x) and belated.is_dask_collection(dask.delayed(1))
    assert not belated.is_dask_collection(1) and not belated.is_dask_collection(belated.Delayed)
    assert belated.tokenize(1, "a") == belated.tokenize(1, "a") != belated.tokenize(1, "b")
    assert belated.tokenize(x) == belated.tokenize(x)
    assert belated.persist(x)[0].compute() == 2
    assert belated.visualize(x, filename=None, format="svg").format == "svg"
    with belated.annotate(retries=2):
        assert belated.config.get("annotations") == {"retries": 2}
        assert delayed(inc)(x).compute() == 3
    with pytest.raises(TypeError, match="retries"), belated.annotate(retries="twice"):
        pass


@BACKENDS
def test_is_dask_collection_does_not_build_a_dataframes_graph(lib):
    # belated called __dask_graph__(), which builds and optimizes a dask-expr collection's whole graph.
    pytest.importorskip("pandas")
    collection = pytest.importorskip("dask.dataframe.dask_expr._collection")

    class Unbuilt(dask._expr.Expr):
        @property
        def _meta(self):
            return 0

        def __dask_graph__(self):
            raise AssertionError("the graph was built")

    assert lib.is_dask_collection(collection.new_collection(Unbuilt()))


def test_import_belated_as_dask_reaches_dasks_submodules():
    import dask.array
    import dask.utils

    assert belated.utils is dask.utils
    assert belated.array is dask.array
    assert belated.base.tokenize is not None
    assert belated.graph_manipulation.bind is bind
    with pytest.raises(AttributeError):
        belated.no_such_thing  # noqa: B018


def test_import_statements_reach_dasks_submodules_as_dasks_own_modules():
    import dask.array
    import dask.array.core
    import dask.dataframe

    import belated.array as da
    import belated.array.core
    from belated.dataframe import from_pandas

    assert da is dask.array
    assert belated.array.core is dask.array.core  # not a second copy loaded under belated's name
    assert from_pandas is dask.dataframe.from_pandas
    assert dask.array.__spec__.name == "dask.array"
    assert da.ones(4, chunks=2).sum().compute() == 4
    with pytest.raises(ModuleNotFoundError, match=r"belated\.no_such_module"):
        import belated.no_such_module
    import belated.diagnostics  # belated's own module, not dask.diagnostics

    assert belated.diagnostics.__name__ == "belated.diagnostics"


def test_from_belated_delayed_import_is_belateds_own_as_from_dask_delayed_is_dasks():
    # A port of `from dask.delayed import delayed` loaded dask's module there, which the import system
    # then set on the package in place of belated's function: every later belated.delayed(...) failed.
    for lib in (belated, dask):
        importlib.import_module(f"{lib.__name__}.delayed")
        module = sys.modules[f"{lib.__name__}.delayed"]
        assert module.delayed is lib.delayed and callable(lib.delayed)
        assert isinstance(module.delayed(inc)(1), module.Delayed)
        assert isinstance(lib.delayed(1), module.Delayed)
    from belated.delayed import unpack_collections
    from belated.tokenize import TokenizationError, normalize_token, tokenize

    # dask's own `import dask.tokenize` replaces dask.tokenize by the module; belated's stays a function
    assert tokenize is belated.tokenize and tokenize(1) == belated.tokenize(1)
    assert unpack_collections is sys.modules["dask.delayed"].unpack_collections
    assert normalize_token is dask.tokenize.normalize_token
    assert TokenizationError is belated.TokenizationError
    assert belated.delayed(inc)(1).compute() == 2
    with pytest.raises(AttributeError, match="no_such_name"):
        belated.delayed.no_such_name  # noqa: B018


def test_without_dask_the_error_names_the_extra():
    script = (
        "import sys\n"
        "sys.modules['dask'] = None\n"
        "import belated\n"
        "assert belated.delayed(1).compute() == 1\n"
        "try:\n    belated.array\n"
        "except ImportError as e:\n    print(e)\n"
        "try:\n    import belated.dataframe\n"
        "except ImportError as e:\n    print(e)\n"
        "print(hasattr(belated, 'no_such_thing'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.count("pip install 'belated[dask]'") == 2, out.stderr
    assert "belated.dataframe is dask.dataframe" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_dask_persist_on_distributed_keeps_values_on_the_cluster_until_computed():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        x = delayed(add)(delayed(inc)(1), 10)
        (persisted,) = dask.persist(x)
        assert persisted.key == x.key
        assert persisted.compute(scheduler="sync") == 12
        assert dask.compute(persisted)[0] == 12
        assert client.compute(persisted).result() == 12


# --- pure keys of classes, their instances and arrays -------------------------------------------------------

REDEFINED_IN_MAIN = """
import sys
import numpy as np

lib = __import__(sys.argv[1])


def use(obj):
    return obj.m()


def make(cls):
    return cls().m()


class K:
    def m(self):
        return 1


old_instance, old_class = lib.delayed(use, pure=True)(K()), lib.delayed(make, pure=True)(K)
same_instance = lib.delayed(use, pure=True)(K())


class K:
    def m(self):
        return 2


new_instance, new_class = lib.delayed(use, pure=True)(K()), lib.delayed(make, pure=True)(K)
same, merged = old_instance.key == same_instance.key, old_instance.key == new_instance.key
print(same, merged, old_class.key == new_class.key)
print(lib.compute(old_instance, new_instance, old_class, new_class))


def raw(a):
    return a.ravel(order="K").tolist(), a.dtype.names


c_order = np.arange(6).reshape(2, 3)
arrays = [c_order, np.asfortranarray(c_order), np.array(1.5)]
arrays += [np.zeros(2, dtype=[("a", "i4"), ("b", "i4")]), np.zeros(2, dtype=[("x", "i4"), ("y", "i4")])]
print(lib.compute(*[lib.delayed(raw, pure=True)(a) for a in arrays]))
"""


def test_classes_redefined_in_main_and_array_layouts_get_the_keys_and_values_dask_gives(tmp_path):
    script = tmp_path / "redefined.py"
    script.write_text(REDEFINED_IN_MAIN)
    outputs = [
        subprocess.run(
            [sys.executable, str(script), lib], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        for lib in ("belated", "dask")
    ]
    assert outputs[0] == outputs[1]
    assert outputs[0].splitlines()[0] == "True False False"


@BACKENDS
def test_arrays_alike_in_values_and_memory_order_share_a_pure_key_as_in_dask(lib):
    # The token counted strides: a stepped slice and its copy (or an empty array and its pickled copy)
    # got two keys where dask gives one.
    np = pytest.importorskip("numpy")
    values = np.arange(12.0)
    alike = [
        (values[::2], values[::2].copy()),
        (np.array([]), pickle.loads(pickle.dumps(np.array([])))),
        (values.reshape(3, 4)[:, ::2], values.reshape(3, 4)[:, ::2].copy()),
        (values[::-1], values[::-1].copy()),
    ]
    unlike = [  # the same numbers, held in another order
        (values.reshape(3, 4), np.asfortranarray(values.reshape(3, 4))),
        (np.asfortranarray(values.reshape(3, 4))[:, ::2], values.reshape(3, 4)[:, ::2].copy()),
    ]

    def key(array):
        return lib.delayed(np.ravel, pure=True)(array, order="K").key

    assert [key(a) == key(b) for a, b in alike] == [True] * len(alike)
    assert [key(a) == key(b) for a, b in unlike] == [False] * len(unlike)


# --- dask's own configuration, when the program imported dask -----------------------------------------


def test_dask_config_delayed_pure_applies_where_belated_config_is_silent():
    with dask.config.set(delayed_pure=True):
        for lib in (belated, dask):
            assert lib.delayed(inc)(1).key == lib.delayed(inc)(1).key, lib
            assert lib.delayed(5).key == lib.delayed(5).key, lib
        with belated.config.set(delayed_pure=False):
            assert belated.delayed(inc)(1).key != belated.delayed(inc)(1).key
    with dask.config.set({"delayed-pure": True}):
        assert belated.delayed(inc)(1).key == belated.delayed(inc)(1).key
    for lib in (belated, dask):
        assert lib.delayed(inc)(1).key != lib.delayed(inc)(1).key, lib


def test_dask_config_scheduler_and_num_workers_apply_where_belated_config_is_silent():
    main = threading.get_ident()
    ident = delayed(threading.get_ident)
    with dask.config.set(scheduler="sync"):
        assert ident().compute() == main
        with belated.config.set(scheduler="threads"):
            assert ident().compute() != main
    assert ident().compute() != main
    with dask.config.set(num_workers=0), pytest.raises(ValueError, match="num_workers must be at least 1"):
        delayed(inc)(1).compute()
    # dask told to run its collections on belated: belated's own objects compute as by default.
    with dask.config.set(scheduler=belated.get):
        assert ident().compute() != main


# --- nout is checked as dask checks it --------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -(2**70), 1.5, 2.0, "2", True])
def test_bad_nout_raises_what_dask_raises(bad):
    for lib in (belated, dask):
        with pytest.raises(ValueError, match="nout must be None or a non-negative integer"):
            lib.delayed(divmod, nout=bad)


@pytest.mark.parametrize("huge", [2**63, 2**64, 10**30])
def test_nout_above_sys_maxsize_is_refused_clearly(huge):
    # dask takes it and fails later, at len() or unpacking; no sequence can have that many items.
    with pytest.raises(ValueError, match=r"nout must be at most sys.maxsize \(9223372036854775807\)"):
        delayed(divmod, nout=huge)
    assert len(delayed(divmod, nout=sys.maxsize)(7, 2)) == sys.maxsize


# --- iterators as arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda a, b: iter([a, b, 3]),
        lambda a, b: iter((a, b, 3)),
        lambda a, b: iter({a, b, 3}),
        lambda a, b: iter((1, 2)),
        lambda a, b: iter({1, 2}),
        lambda a, b: iter([[a], (b,)]),
    ],
    ids=["list", "tuple", "set", "plain tuple", "plain set", "nested"],
)
def test_iterators_of_builtin_containers_are_passed_as_dask_passes_them(make):
    def results(lib):
        a, b = lib.delayed(1, name="a"), lib.delayed(2, name="b")
        value = lib.delayed(lambda v: v)(make(a, b)).compute(scheduler="sync")
        return type(value), value

    assert results(belated) == results(dask)


# --- dask code run with `import belated as dask` ----------------------------------------------------------
# Found by running dask's own test_graph_manipulation.py and test_base.py with `import belated as dask`.


class Pair:
    """A dask collection that is neither dask's nor belated's, as in dask's own tests."""

    __dask_scheduler__ = staticmethod(dask.get)
    __dask_optimize__ = None

    def __init__(self, dsk, keys):
        self.dsk, self.keys = dsk, keys

    def __dask_graph__(self):
        return self.dsk

    def __dask_keys__(self):
        return self.keys

    def __dask_layers__(self):
        return tuple(self.dsk)

    def __dask_tokenize__(self):
        return self.keys

    def __dask_postcompute__(self):
        return tuple, ()

    def __dask_postpersist__(self):
        return Pair._rebuild, (self.keys,)

    @staticmethod
    def _rebuild(dsk, keys, *, rename=None):
        rename = rename or {}
        return Pair(dsk, [rename.get(key, key) for key in keys])


@pytest.mark.parametrize(
    "lib", [belated.graph_manipulation, dask.graph_manipulation], ids=["belated", "dask"]
)
def test_graph_manipulation_of_other_dask_collections_is_dasks(lib):
    events = []
    first = Pair({"p": (events.append, "first")}, ["p"])
    second = Pair({"a": (events.append, "second"), "b": 2}, ["a", "b"])
    bound = lib.bind(second, first)
    assert isinstance(bound, Pair) and set(bound.keys).isdisjoint(second.keys)
    assert dask.compute(bound, scheduler="sync") == ((None, 2),) and events == ["first", "second"]
    assert dask.compute(lib.clone(second), scheduler="sync") == ((None, 2),)
    assert dask.compute(lib.wait_on(second), scheduler="sync") == ((None, 2),)
    assert dask.compute(lib.checkpoint(second, delayed(inc)(1)), scheduler="sync") == (None,)


def test_config_set_reaches_dask_code_run_with_import_belated_as_dask():
    # `import belated as dask; dask.config.set(...)` around dask's own arrays, dask.compute or dask's
    # schedulers: before, the keys stayed in belated's configuration and dask silently ignored them.
    da = pytest.importorskip("dask.array")
    before = dask.config.get("array.chunk-size")
    with belated.config.set({"array.chunk-size": "1MiB"}, num_workers=3):
        assert (dask.config.get("array.chunk-size"), dask.config.get("num_workers")) == ("1MiB", 3)
        assert da.ones(10**6).chunks[0][0] == 2**20 // 8
        with belated.config.set(scheduler="sync"):
            assert dask.base.get_scheduler() is dask.local.get_sync
    assert dask.config.get("array.chunk-size") == before
    assert dask.config.get("num_workers", None) is None


def test_annotate_reaches_dask_collections_built_inside():
    da = pytest.importorskip("dask.array")
    with belated.annotate(priority=5):
        x = da.ones(10, chunks=5) + 1
    assert x.__dask_graph__().layers[x.name].annotations == {"priority": 5}


@pytest.mark.parametrize("key", ["a", ("a-1", 2)])
def test_delayed_is_built_from_a_key_and_a_dask_graph_as_in_dask(key):
    for made, lib in ((belated.Delayed, belated), (importlib.import_module("dask.delayed").Delayed, dask)):
        x = made(key, {key: (inc, "b"), "b": 1})
        assert (x.key, x.compute(scheduler="sync")) == (key, 2)
        assert x.persist(scheduler="sync").compute() == 2
        assert made("alias", {"alias": "b", "b": 1}).compute() == 1
        pair = made(key, {key: (divmod, 7, 2)}, length=2)
        assert len(pair) == 2 and lib.compute(*pair) == (3, 1)
    hlg = dask.highlevelgraph.HighLevelGraph.from_collections("c", {"c": (inc, "b"), "b": 1}, [])
    assert belated.Delayed("c", hlg).compute() == 2
    with pytest.raises(TypeError):
        belated.Delayed("a")


def test_dasks_private_submodules_are_reached_as_attributes():
    # dask's test_base.py subclasses `dask._expr.Expr` after `import dask`.
    assert belated._expr is importlib.import_module("dask._expr")
    assert belated._task_spec.Task is dask._task_spec.Task
    with pytest.raises(AttributeError, match="no attribute '_no_such_module'"):
        getattr(belated, "_no_such_module")  # noqa: B009
    assert not hasattr(belated, "__no_such_dunder__")


def test_private_attributes_are_read_back_as_dask_reads_them():
    # dask's test_delayed_picklable reads `_nout`, `_pure`, and an attribute read's `_obj` and `_attr`.
    for lib in (belated, dask):
        assert lib.delayed(1j + 2)._nout is None
        assert lib.delayed(divmod, nout=2)._nout == 2
        again = pickle.loads(pickle.dumps(lib.delayed(divmod, nout=2, pure=True)))
        assert again._nout == 2 and len(again(7, 2)) == 2
        assert (again._pure, lib.delayed(divmod)._pure) == (True, None)
        real = pickle.loads(pickle.dumps(lib.delayed(1j + 2).real))
        assert real._attr == "real" and real._obj.compute() == 1j + 2 and real.compute() == 2


class Cached:
    """An object whose registered normalization leaves out its cache, as a user registers one."""

    def __init__(self, value, cache):
        self.value = value
        self.cache = cache


def test_a_type_registered_with_normalize_token_keys_as_in_dask():
    # `from belated.tokenize import normalize_token` is dask's: a registration made through it decides
    # which objects are equal in pure keys, for belated's calls as for dask's.
    from belated.tokenize import normalize_token

    normalize_token.register(Cached)(lambda obj: obj.value)
    try:
        objects = [Cached(1, "a"), Cached(1, "b"), Cached(2, "a")]
        for lib in (belated, dask):
            keys = [lib.delayed(repr, pure=True)(obj).key for obj in objects]
            assert keys[0] == keys[1] != keys[2], lib.__name__
        assert belated.tokenize(objects[0]) == belated.tokenize(objects[1]) != belated.tokenize(objects[2])
    finally:
        normalize_token._lookup.pop(Cached, None)
