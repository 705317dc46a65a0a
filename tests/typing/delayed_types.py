"""What a type checker makes of code using belated: checked by ``mypy --strict`` in test_typing.py.

Every ``assert_type`` is a type the checker must infer; every ``# type: ignore[code]`` marks an error
it must report (``--strict`` warns about an ignore that silences nothing, which fails the test).
"""

from typing import Any, Literal, assert_type

import belated
from belated import Client, Delayed, Future, compute, delayed, persist
from belated.diagnostics import Profiler, ProgressBar, ResourceProfiler, TaskData


@delayed
def describe(x: int) -> str:
    return str(x)


@delayed
def add(x: int, y: int) -> int:
    return x + y


@delayed(pure=True)
def scale(x: float, factor: float = 2.0) -> float:
    return x * factor


# A delayed function keeps its parameters and its return type.
assert_type(describe(1), Delayed[str])
assert_type(describe(1).compute(), str)
assert_type(describe(x=1), Delayed[str])
assert_type(describe(1, dask_key_name="one"), Delayed[str])
assert_type(scale(1.0), Delayed[float])
assert_type(scale(1.0, 3.0), Delayed[float])

# Delayed values stand in for the values they compute to.
one = delayed(1)
assert_type(one, Delayed[int])
assert_type(add(one, 2), Delayed[int])
assert_type(add(add(1, 2), describe(3).__len__()), Delayed[int])
assert_type(describe(add(1, 2)), Delayed[str])

# Wrong types are errors, as values or as Delayed values.
describe("x")  # type: ignore[call-overload]
describe(describe(1))  # type: ignore[arg-type]
add(1)  # type: ignore[call-overload]
add(1, 2, 3)  # type: ignore[call-overload]
describe(y=1)  # type: ignore[call-overload]

# Anything else can be wrapped, and methods and operators build more Delayed values.
assert_type(delayed([1, 2]), Delayed[list[int]])
assert_type(delayed(len)("ab"), Delayed[int])
assert_type(delayed([1, 2]).append, Delayed[Any])
assert_type(one + 1, Delayed[Any])
assert_type(one < 2, Delayed[bool])
assert_type(one.key, str | tuple[Any, ...])
assert_type(one.persist(), Delayed[int])

# compute: one result per argument, typed for Delayed arguments.
assert_type(compute(describe(1)), tuple[str])
assert_type(compute(describe(1), add(1, 2)), tuple[str, int])
assert_type(compute(one, one, describe(1), add(1, 1), scale(1.0)), tuple[int, int, str, int, float])
assert_type(compute(describe(1), 5), tuple[Any, ...])
assert_type(compute(*[describe(i) for i in range(3)]), tuple[Any, ...])
assert_type(compute([describe(1)], scheduler="processes", num_workers=2), tuple[Any, ...])
(text,) = compute(describe(1), scheduler="sync", timeout=1.5)
assert_type(text, str)
assert_type(persist(describe(1)), tuple[Delayed[str]])
assert_type(persist(describe(1), add(1, 2)), tuple[Delayed[str], Delayed[int]])
compute(describe(1), num_workers="2")  # type: ignore[call-overload]


# A Client's futures carry the type of what they compute.
def on_a_cluster(client: Client) -> None:
    future = client.compute(describe(1))
    assert_type(future, Future[str])
    assert_type(future.result(timeout=10), str)
    assert_type(future.status, Literal["pending", "cancelled", "error", "finished"])
    assert_type(client.compute(describe(1), sync=True), str)
    assert_type(client.compute([add(1, 2), add(3, 4)]), list[Future[int]])
    assert_type(client.compute([add(1, 2)], sync=True), list[int])
    assert_type(client.submit(len, [1, 2]), Future[int])
    assert_type(client.map(len, ["a", "bc"]), list[Future[int]])
    assert_type(client.gather(client.submit(len, "ab")), int)
    assert_type(client.persist(describe(1)), Delayed[str])
    assert_type(client.worker_pids, list[int])
    assert_type(client.dashboard_link, str | None)


with Client(n_workers=1, threads_per_worker=1, memory_limit="1GB", dashboard_address=None) as client:
    assert_type(client, Client)
Client(n_workers="2")  # type: ignore[arg-type]


# Diagnostics.
with ProgressBar(minimum=1, dt=0.5), Profiler() as prof, ResourceProfiler(dt=0.1) as rprof:
    assert_type(prof, Profiler)
    assert_type(rprof, ResourceProfiler)
assert_type(prof.results, list[TaskData])
assert_type(prof.results[0].end_time - prof.results[0].start_time, float)
assert_type(prof.visualize(filename="profile.html", show=False), str)
assert_type(belated.diagnostics.visualize([prof, rprof]), str)
ProgressBar(out=1)  # type: ignore[arg-type]
