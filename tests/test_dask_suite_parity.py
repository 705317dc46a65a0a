"""What dask's own test suites (dask/tests, dask/diagnostics/tests) found when run with ``import belated as
dask``: each behaviour a user could meet, checked against dask itself."""

import asyncio
import dataclasses
import datetime
import decimal
import enum
import pathlib

import cloudpickle
import dask
import dask.tokenize
import numpy as np
import pandas as pd
import pytest

import belated


def inc(x):
    return x + 1


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


class Flag(enum.IntFlag):
    READ = 1
    WRITE = 2


def _values_dask_tokenizes_by_value():
    # dask registers these types (and subclasses of int, float, str... such as numpy's scalars and
    # IntEnum) as their own normal form; each pair is two equal values made separately, then another value
    return [
        (lambda: np.float64(1.0), lambda: np.float64(2.0)),
        (lambda: np.int64(3), lambda: np.int32(3)),
        (lambda: datetime.date(2021, 6, 25), lambda: datetime.date(2021, 6, 26)),
        (lambda: datetime.time(1, 2, 3, 4, tzinfo=datetime.timezone.utc), lambda: datetime.time(1, 2, 3, 4)),
        (lambda: datetime.datetime(2021, 6, 25, 1, 2), lambda: datetime.datetime(2021, 6, 25, 1, 3)),
        (lambda: datetime.timedelta(days=1), lambda: datetime.timedelta(days=1, microseconds=1)),
        (lambda: decimal.Decimal("1.10"), lambda: decimal.Decimal("1.1")),
        (lambda: pathlib.PurePosixPath("/a/b"), lambda: pathlib.PurePosixPath("/a/c")),
        (lambda: Color.RED, lambda: Color.BLUE),
        (lambda: Flag.READ, lambda: Flag.READ | Flag.WRITE),
        (lambda: pd.NA, lambda: None),
        (lambda: pd.Timestamp("2021-06-25"), lambda: pd.Timestamp("2021-06-26")),
    ]


@pytest.mark.parametrize("make", _values_dask_tokenizes_by_value(), ids=lambda make: repr(make[0]())[:30])
def test_values_dask_registers_as_themselves_tokenize_by_value(make):
    # Once dask was imported, its registrations of these types returned the value itself, which belated
    # normalized again and again until the recursion limit: every token was random, so pure calls on a
    # date or a numpy scalar were never merged (and ensure_deterministic raised)
    same, other = make
    for lib, tokenize in ((belated, belated.tokenize), (dask, dask.tokenize.tokenize)):
        with lib.config.set({"tokenize.ensure-deterministic": True}):
            assert tokenize(same()) == tokenize(same()) != tokenize(other()), lib
    f = belated.delayed(repr, pure=True)
    g = dask.delayed(repr, pure=True)
    assert (f(same()).key == f(same()).key) == (g(same()).key == g(same()).key) is True
    assert (f(same()).key == f(other()).key) == (g(same()).key == g(other()).key) is False
    assert belated.compute(f(same()), f(other())) == dask.compute(g(same()), g(other()))


def _classes_defined_in_a_function():
    class Slotted:
        __slots__ = ("x",)

        def __init__(self, x):
            self.x = x

        def __eq__(self, other):
            return self.x == other.x

    @dataclasses.dataclass
    class Data:
        x: int

    return Slotted, Data


@pytest.mark.parametrize("which", [0, 1], ids=["slots", "dataclass"])
def test_a_value_keeps_its_token_once_pickled_and_loaded(which):
    # A class pickled by value changes with its first pickling and loading, so a value's token (and the
    # key of a pure call on it) changed once the value had travelled to a worker process and back
    for lib, tokenize in ((belated, belated.tokenize), (dask, dask.tokenize.tokenize)):
        kind = _classes_defined_in_a_function()[which]
        value = kind(1)
        before = tokenize(value)
        f = lib.delayed(lambda v: v.x, pure=True)
        key = f(value).key
        copy = cloudpickle.loads(cloudpickle.dumps(value))
        twice = cloudpickle.loads(cloudpickle.dumps(cloudpickle.loads(cloudpickle.dumps(value))))
        assert tokenize(value) == before == tokenize(copy) == tokenize(twice) == tokenize(kind(1)), lib
        assert tokenize(kind(2)) != before
        assert f(copy).key == f(value).key == key != f(kind(2)).key
        assert lib.compute(f(copy), f(kind(2)), scheduler="sync") == (1, 2)


def test_a_registration_with_dask_comes_before_dask_tokenize_as_in_dask():
    class Tokenized:
        def __init__(self, x):
            self.x = x

        def __dask_tokenize__(self):
            return self.x

    def same_keys(lib):
        tokenize = belated.tokenize if lib is belated else dask.tokenize.tokenize
        f = lib.delayed(repr, pure=True)
        return tokenize(Tokenized(1)) == tokenize(Tokenized(2)), f(Tokenized(1)).key == f(Tokenized(2)).key

    assert same_keys(belated) == same_keys(dask) == (False, False)
    dask.tokenize.normalize_token.register(Tokenized, lambda obj: "one form for all")
    try:
        assert same_keys(belated) == same_keys(dask) == (True, True)
    finally:
        del dask.tokenize.normalize_token._lookup[Tokenized]


TOKENIZERS = pytest.mark.parametrize(
    "lib, tokenize, error",
    [
        (belated, belated.tokenize, belated.TokenizationError),
        (dask, dask.tokenize.tokenize, dask.tokenize.TokenizationError),
    ],
    ids=["belated", "dask"],
)


@TOKENIZERS
def test_what_dasks_registrations_refuse_raises_belateds_tokenization_error(lib, tokenize, error):
    # dask's normalizer of a numpy ufunc read dask's own setting, not the call's ensure_deterministic,
    # and raised dask's TokenizationError, which `except belated.TokenizationError` did not catch
    unpicklable = np.frompyfunc(lambda x: x + 1, 1, 1)
    with pytest.raises(error, match=r"Cannot tokenize numpy ufunc.*dask\.array\.ufunc"):
        tokenize(unpicklable, ensure_deterministic=True)
    with pytest.raises(dask.tokenize.TokenizationError, match="Cannot tokenize numpy ufunc"):
        tokenize([1, {"f": unpicklable}], ensure_deterministic=True)
    with lib.config.set({"tokenize.ensure-deterministic": True}):
        random = [tokenize(unpicklable, ensure_deterministic=False) for _ in range(2)]
        assert random[0] != random[1]
        with pytest.raises(error):
            tokenize(unpicklable)
    assert tokenize(unpicklable) != tokenize(unpicklable)


@TOKENIZERS
def test_a_tokenize_inside_dask_tokenize_follows_the_outer_calls_ensure_deterministic(lib, tokenize, error):
    class Sentinel:
        def __dask_tokenize__(self):
            return tokenize(object())

    with pytest.raises(error):
        tokenize(Sentinel(), ensure_deterministic=True)
    with lib.config.set({"tokenize.ensure-deterministic": True}):
        random = [tokenize(Sentinel(), ensure_deterministic=False) for _ in range(2)]
        assert random[0] != random[1]


@TOKENIZERS
def test_lists_and_dicts_that_hold_themselves_tokenize_by_value(lib, tokenize, error):
    def circular(n):
        items = [1, n]
        items.append(items)
        mapping = {"n": n}
        mapping["self"] = mapping
        return [items, mapping]

    with lib.config.set({"tokenize.ensure-deterministic": True}):
        assert tokenize(circular(2)) == tokenize(circular(2)) != tokenize(circular(3))


@TOKENIZERS
def test_what_cannot_be_tokenized_is_named_in_dasks_words(lib, tokenize, error):
    class Unpicklable:
        def __reduce__(self):
            raise TypeError("no")

        def __repr__(self):
            return "<the culprit>"

    with pytest.raises(error, match=r"<the culprit>.* cannot be deterministically hashed"):
        tokenize([1, Unpicklable()], ensure_deterministic=True)
    with pytest.raises(error, match=r"^object\(\) cannot be deterministically hashed|^<object object"):
        tokenize({"a": object()}, ensure_deterministic=True)


@pytest.mark.parametrize("lib", [belated, dask], ids=["belated", "dask"])
def test_config_get_takes_override_with_and_config(lib):
    # libraries read their keyword's default as config.get(key, override_with=value): a TypeError on belated
    with lib.config.set({"my-library.chunk-size": 4}):
        assert lib.config.get("my-library.chunk-size", override_with=None) == 4
        assert lib.config.get("my-library.chunk-size", override_with=8) == 8
        assert lib.config.get("my-library.chunk-size", override_with=False) is False
        assert lib.config.get("my-library.missing", override_with=[1]) == [1]
    # config= reads the dict given instead of the configuration, with dask's key spellings
    given = {"a_b": {"c-d": 1}, "e": {"f": 2}}
    assert lib.config.get("a-b.c_d", config=given) == 1
    assert lib.config.get("a_b", config=given) == {"c-d": 1}
    assert lib.config.get("e.g", 3, config=given) == 3
    assert lib.config.get("e.f", config=given, override_with=5) == 5
    with pytest.raises(KeyError):
        lib.config.get("e.g", config=given)
    with lib.config.set(scheduler="sync"), pytest.raises(KeyError):
        lib.config.get("scheduler", config={})


@pytest.mark.parametrize("lib", [belated, dask], ids=["belated", "dask"])
def test_computing_on_an_asynchronous_distributed_client_falls_back_or_raises_as_in_dask(lib):
    # belated handed the graph to the asynchronous client's get, which gave a coroutine: the compute
    # failed with "AttributeError: 'coroutine' object has no attribute 'values'"
    distributed = pytest.importorskip("distributed")
    x = lib.delayed(inc)(1)

    async def main():
        async with distributed.Client(
            processes=False, n_workers=1, asynchronous=True, dashboard_address=":0"
        ) as client:
            assert client.asynchronous
            with lib.config.set({"admin.async-client-fallback": "sync"}):
                with pytest.warns(UserWarning, match="asynchronous"):
                    assert lib.compute(x) == (2,)
                with pytest.warns(UserWarning, match="asynchronous"):
                    assert x.compute() == 2
            with lib.config.set({"admin.async-client-fallback": None}):
                with pytest.raises(RuntimeError, match="asynchronous"):
                    lib.compute(x)
                with pytest.raises(RuntimeError, match="asynchronous"):
                    lib.compute(x, scheduler=client)
                with pytest.raises(RuntimeError, match="asynchronous"):
                    lib.persist(x)

    asyncio.run(asyncio.wait_for(main(), timeout=120))


def _graph_counter():
    """A distributed scheduler plugin counting the graphs clients send."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class CountGraphs(SchedulerPlugin):
        name = "count-graphs"

        async def start(self, scheduler):
            scheduler.graphs_received = 0

        def update_graph(self, scheduler, *args, **kwargs):
            scheduler.graphs_received += 1

    return CountGraphs()


def _compute_in_a_task(lib_name):
    import importlib

    import dask as real_dask

    lib = importlib.import_module(lib_name)
    # the worker's configuration names no scheduler, as in a worker process of its own
    with real_dask.config.set(scheduler=None):
        return lib.compute(lib.delayed(inc)(1))


@pytest.mark.parametrize("lib", [belated, dask], ids=["belated", "dask"])
def test_a_compute_inside_a_distributed_task_goes_to_the_cluster_as_in_dask(lib):
    # dask's compute finds the worker's client (get_client()) where no scheduler is set; belated's ran
    # the graph on threads in the worker, beside the cluster
    distributed = pytest.importorskip("distributed")
    cluster = {"processes": False, "n_workers": 1, "threads_per_worker": 2, "dashboard_address": ":0"}
    with distributed.Client(**cluster) as client:
        client.register_plugin(_graph_counter())
        task = client.submit(_compute_in_a_task, lib.__name__, pure=False)
        assert task.result(timeout=120) == (2,)
        graphs = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.graphs_received)
        assert graphs == 2  # the task's own, then the compute's


@pytest.mark.parametrize("lib", [belated, dask], ids=["belated", "dask"])
def test_config_set_on_a_given_dict_changes_that_dict_only(lib):
    # belated took config= (and lock=) for keys to set: the given values went into the global
    # configuration for good, with a key named "config", and the dict was left unchanged
    given = {"e_f": 0, "g-h": 1, "n": {"old": 1}}
    with lib.config.set({"a_b": 2, "c-d": 3, "e-f": 4, "g_h": 5, "n.m": 6, "p.q": 7}, config=given):
        assert given == {"a_b": 2, "c-d": 3, "e_f": 4, "g-h": 5, "n": {"old": 1, "m": 6}, "p": {"q": 7}}
        assert lib.config.get("a_b", None) is None and lib.config.get("config", None) is None
    assert given == {"e_f": 0, "g-h": 1, "n": {"old": 1}}
    lib.config.set({"x.y": 1}, given)  # config is dask's second parameter; not a with block: it stays
    assert given == {"e_f": 0, "g-h": 1, "n": {"old": 1}, "x": {"y": 1}}
    assert lib.config.get("x", None) is None and lib.config.get("config", None) is None
