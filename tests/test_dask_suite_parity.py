"""What dask's own test suites (dask/tests, dask/diagnostics/tests) found when run with ``import belated as
dask``: each behaviour a user could meet, checked against dask itself."""

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
