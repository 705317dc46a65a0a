"""Failing loudly and cleanly: injected faults, hanging tasks, bad input, and memory over long runs.

`BELATED_SOAK_TASKS` sets the soak's total task count (default 2 million; the README's figure uses 10
million)."""

import contextlib
import gc
import itertools
import os
import threading
import time
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from worker_tasks import get_with_timeout

import belated
from belated import compute, delayed


class Injected(Exception):
    pass


def maybe_fail(value, fail):
    if fail:
        raise Injected(f"fault at {value}")
    return value + 1


def os_threads():
    return len(os.listdir("/proc/self/task"))


def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@settings(max_examples=150, deadline=None)
@given(
    width=st.integers(1, 40),
    depth=st.integers(1, 6),
    faults=st.sets(st.integers(0, 239), max_size=3),
    scheduler=st.sampled_from(["threads", "sync", "processes"]),
)
def test_injected_faults_surface_cancel_the_rest_and_leave_nothing_behind(width, depth, faults, scheduler):
    # The pool of three exists before threads are counted.
    delayed(sum)([1]).compute(scheduler=scheduler, num_workers=3)
    threads_before = os_threads()
    numbers = itertools.count()
    layer = [delayed(maybe_fail)(i, next(numbers) in faults) for i in range(width)]
    for _ in range(depth - 1):
        layer = [delayed(maybe_fail)(x, next(numbers) in faults) for x in layer]
    total = delayed(sum)(layer)
    if faults & set(range(next(numbers))):
        with pytest.raises(Injected, match="fault at"):
            total.compute(scheduler=scheduler, num_workers=3)
    else:
        assert total.compute(scheduler=scheduler, num_workers=3) == sum(range(width)) + width * depth
    assert delayed(sum)([1, 2]).compute(scheduler=scheduler, num_workers=3) == 3, "the next compute works"
    # At most: pools an earlier test let go of may still be ending while this one counts.
    assert os_threads() <= threads_before, "no thread is left behind"


def test_a_hanging_task_times_out_cleanly_and_the_pool_recovers():
    release = threading.Event()
    events = []

    def stuck():
        release.wait(60)
        events.append("stuck task ended")

    with pytest.raises(belated.ComputeTimeoutError, match=r"did not finish within 0\.3 s"):
        compute(delayed(stuck)(), delayed(sum)([1, 2]), num_workers=2, timeout=0.3)
    events.append("timeout raised")
    assert delayed(sum)([1, 2]).compute(num_workers=2) == 3, "the other worker still computes"
    release.set()
    assert events[0] == "timeout raised", "the timeout waited for the stuck task"
    assert isinstance(belated.ComputeTimeoutError("x"), belated.BelatedError)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_task_stuck_in_a_timed_out_compute_does_not_hold_up_the_next_one(num_workers):
    release = threading.Event()
    stuck = [delayed(release.wait)(600) for _ in range(num_workers)]
    try:
        with pytest.raises(belated.ComputeTimeoutError):
            compute(*stuck, timeout=0.2, num_workers=num_workers)
        # Every thread of the pool is still inside a task nobody can stop; the next compute of the same
        # size runs all the same, while they are.
        assert compute(delayed(abs)(-1), num_workers=num_workers, timeout=60) == (1,)
        assert not release.is_set()
    finally:
        release.set()


def test_timeouts_apply_between_tasks_inline_and_from_config():
    with belated.config.set(timeout=0.2), pytest.raises(belated.ComputeTimeoutError) as caught:
        compute(*[delayed(time.sleep)(0.05) for _ in range(20)], scheduler="sync")
    assert not getattr(caught.value, "__notes__", None), "belated's own error carries no task note"
    assert compute(delayed(sum)([1]), timeout=5) == (1,)


@pytest.mark.parametrize("tasks", [1, 3])
def test_a_sync_compute_whose_last_task_ran_past_the_timeout_times_out(tasks):
    # The sync scheduler cannot stop a task (it runs on the caller's thread), and looked at the time
    # limit only before each: a compute whose last task outlasted it returned as if in time, where the
    # threads scheduler raises at the limit
    done = []

    def slow(i):
        time.sleep(0.5)
        done.append(i)
        return i

    with pytest.raises(belated.ComputeTimeoutError, match=r"within 0\.05 s"):
        compute(*[delayed(slow)(i) for i in range(tasks)], scheduler="sync", timeout=0.05)
    assert done == [0], "the first task ran; the limit stopped the next ones"
    with pytest.raises(belated.ComputeTimeoutError):
        belated.get({"x": (slow, 7)}, "x", pool="sync", timeout=0.05)
    assert compute(delayed(slow)(8), scheduler="sync", timeout=60) == (8,)


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_belated_get_inside_a_task_times_out_when_its_last_task_ran_past_the_limit(scheduler):
    # Inside a task, belated.get runs the graph on the task's own thread, which looked at the limit only
    # before each task: a graph whose last task outlasted it returned as if in time, where the same
    # call from outside a task raises at the limit.
    with pytest.raises(belated.ComputeTimeoutError, match=r"within 0\.05 s"):
        belated.get({"x": 1, "y": (time.sleep, 0.5)}, "y", timeout=0.05)
    assert compute(delayed(get_with_timeout)(0.05), scheduler=scheduler) == ("timed out",)
    assert compute(delayed(get_with_timeout)(60), scheduler=scheduler) == ("in time",)


def test_bad_input_gets_clear_errors_not_crashes():
    with pytest.raises(TypeError, match="'int' object is not callable"):
        delayed(5)(1).compute()
    with pytest.raises(ValueError, match="nout"):
        delayed(len, nout=-3)
    nested = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(RecursionError):
        delayed(len)(nested)
    with pytest.raises(TypeError):
        delayed(len)(1, 2, 3).compute(scheduler="sync")
    assert delayed(len)([1]).compute() == 1


def test_a_million_task_chain_builds_and_computes():
    step = delayed(int.__add__)
    x = delayed(0)
    for _ in range(1_000_000):
        x = step(x, 1)
    assert x.compute() == 1_000_000
    del x
    gc.collect()


def test_memory_stays_flat_over_successive_computes():
    total_tasks = int(os.environ.get("BELATED_SOAK_TASKS", 2_000_000))
    per_compute = 100_000
    inc = delayed(int.__add__)

    def one_round():
        assert delayed(sum)([inc(i, 1) for i in range(per_compute)]).compute(num_workers=2) > 0

    for _ in range(3):
        one_round()
    gc.collect()
    start = rss_mb()
    for _ in range(total_tasks // per_compute):
        one_round()
    gc.collect()
    growth = rss_mb() - start
    print(f"soak: {total_tasks:,} tasks, RSS growth {growth:+.1f} MB")
    assert growth < 20, f"RSS grew by {growth:.1f} MB over {total_tasks:,} tasks"


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
@pytest.mark.parametrize("timeout", [float("inf"), 1e300, 1e20])
def test_a_timeout_too_far_ahead_to_represent_means_no_limit(scheduler, timeout):
    assert compute(delayed(sum)([1, 2]), scheduler=scheduler, timeout=timeout) == (3,)


@pytest.mark.parametrize("timeout", [float("nan"), -1, -0.001, float("-inf")])
def test_a_nan_or_negative_timeout_is_a_value_error(timeout):
    ran = []
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        compute(delayed(ran.append)(1), timeout=timeout)
    with pytest.raises(ValueError, match="timeout"), belated.config.set(timeout=timeout):
        delayed(ran.append)(2).compute(scheduler="sync")
    assert ran == [], "nothing ran"


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
@pytest.mark.parametrize("num_workers", [2**40, 2**62, 5000, -1, 0])
def test_an_absurd_number_of_workers_is_a_value_error_not_an_abort(scheduler, num_workers):
    with pytest.raises(ValueError, match=r"num_workers must be at (least 1|most 4096)"):
        compute(delayed(sum)([1]), scheduler=scheduler, num_workers=num_workers)


@pytest.mark.parametrize("shape", [(2**40, 1), (1, 2**40), (2**31, 2**31), (100, 100)])
def test_an_absurd_cluster_shape_is_a_value_error_not_an_abort(shape):
    n_workers, threads_per_worker = shape
    with pytest.raises(ValueError, match="at most 4096"):
        belated.Client(n_workers=n_workers, threads_per_worker=threads_per_worker, dashboard_address=None)


def test_a_panic_in_the_engine_is_an_internal_error_not_a_base_exception():
    with pytest.raises(belated.InternalError, match=r"failed: deliberately.*bug in belated") as caught:
        belated._belated.panic_for_tests("deliberately")
    assert isinstance(caught.value, Exception), "`except Exception` catches it"


def test_argument_types_are_not_kept_alive_forever():
    """How arguments of a type are traversed is cached per type; the cache must not pin every type."""

    def instance_of_a_new_type(i):
        return type(f"Made{i}", (), {})()

    first = instance_of_a_new_type(0)
    delayed(id)(first)
    alive = weakref.ref(type(first))
    del first
    for i in range(1, 2000):
        delayed(id)(instance_of_a_new_type(i))
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize(
    ("limit", "shown"),
    [("200MB", "200MB"), (" 1.5 GiB ", "1.5 GiB"), (123456789, "123456789 bytes"), ("auto", "'auto' (")],
)
def test_the_memory_limit_is_described_as_the_user_gave_it(limit, shown):
    from belated._client import describe_memory_limit, parse_memory_limit

    assert describe_memory_limit(limit, parse_memory_limit(limit, 2)).startswith(shown)
    assert describe_memory_limit(None, None) is None


@pytest.mark.parametrize(
    "limit", [float("inf"), float("nan"), 2**70, 1e30, "1e400GB", "1.2.3GB", "9999999999TB", -5, ".", ""]
)
def test_an_absurd_memory_limit_is_a_value_error(limit):
    with pytest.raises(ValueError, match="memory_limit must be bytes"):
        belated.Client(n_workers=1, threads_per_worker=1, memory_limit=limit, dashboard_address=None)


def test_a_zero_memory_limit_in_any_unit_means_no_limit():
    from belated._client import parse_memory_limit

    assert [parse_memory_limit(limit, 1) for limit in (0, "0", "0GB", " 0.0 MiB")] == [None] * 4


def test_iterating_a_delayed_of_huge_length_is_lazy():
    """As in dask, items are made one at a time: a huge nout must not build them all up front."""
    first = next(iter(delayed(divmod, nout=2**62)(7, 2)))
    assert first.compute() == 3
    quotient, remainder = delayed(divmod, nout=2)(7, 2)
    assert compute(quotient, remainder) == (3, 1)


def test_a_crafted_delayed_that_trips_the_engine_raises_an_exception_not_a_panic():
    """However it was built (here by hand, as an unpickled stream could), a Delayed's graph and compute
    raise an ordinary exception rather than a PanicException, which `except Exception` misses."""
    from belated._belated import rebuild

    try:
        method_without_object = rebuild([("m-1", (2, "upper", [], []))], [0], None, None)
    except ValueError:
        return  # refused when rebuilt: nothing to trip
    for use in (lambda: method_without_object.dask, lambda: method_without_object.__dask_graph__()):
        with contextlib.suppress(Exception):  # an error is fine; a PanicException escapes and fails
            use()
    for scheduler in ("sync", "threads"):
        with pytest.raises(Exception):  # noqa: B017 - any Exception, as long as it is one
            method_without_object.compute(scheduler=scheduler)
