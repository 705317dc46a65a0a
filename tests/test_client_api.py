"""belated.Client speaks distributed's Client API: constructor keywords, futures and the functions over
them, asyncio, cluster control, tasks that launch tasks, progress. Where distributed answers the same
question, the same test runs against a real distributed Client (in-process, to keep it light) and the
answers are compared."""

import asyncio
import concurrent.futures
import functools
import gc
import importlib
import io
import logging
import os
import re
import sys
import threading
import time
import traceback
import types
import uuid
import weakref

import numpy as np
import pytest
from helpers import closing_distributed_clients
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_tasks import (
    Boom,
    counted_inc,
    explode,
    explode_on_zero,
    fail_first_time,
    nap,
    pid_of,
    record_then_nap,
    square,
    touch_then_wait,
    type_names,
    wait_exists,
)

import belated
from belated import _futures

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = pytest.mark.timeout(120)

# Tasks of in-process clients wait on these; set by the test once it saw what it waits for.
GATE = threading.Event()
RAN = []


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def total(values):
    return sum(values)


def gated(x):
    if not GATE.wait(60):
        raise TimeoutError("the test never opened the gate")
    return x


def note(x, label):
    RAN.append(label)
    return x


def fib(n):
    """Submits its two halves from inside the task and waits for them, seceded."""
    if n < 2:
        return n
    with belated.worker_client() if is_belated_task() else distributed.worker_client() as client:
        a, b = client.submit(fib, n - 1), client.submit(fib, n - 2)
        return a.result() + b.result()


def fib_secede(n):
    """As fib, with get_client, secede and rejoin."""
    if n < 2:
        return n
    api = belated if is_belated_task() else distributed
    client = api.get_client()
    a, b = client.submit(fib_secede, n - 1), client.submit(fib_secede, n - 2)
    api.secede()
    result = a.result() + b.result()
    api.rejoin()
    return result


def is_belated_task():
    try:
        distributed.get_worker()
    except ValueError:
        return True
    return False


def ask_for_client(_):
    return belated.get_client()


def unpicklable():
    return threading.Lock()


@pytest.fixture(scope="module", autouse=True)
def no_distributed_client_left_behind():
    """Closes the Clients distributed's own tasks made here, after this module."""
    with closing_distributed_clients():
        yield


@pytest.fixture(params=["belated", "distributed"])
def api(request):
    """belated's module or distributed's, for the module-level names they share."""
    return belated if request.param == "belated" else distributed


def module_of(client):
    return distributed if isinstance(client, distributed.Client) else belated


# -- constructor keywords -----------------------------------------------------------------------------


def test_local_cluster_keywords_shape_the_cluster_as_in_distributed():
    keywords = dict(
        n_workers=1,
        threads_per_worker=3,
        processes=False,
        memory_limit="1GB",
        silence_logs=logging.ERROR,
        dashboard_address=None,
        asynchronous=False,
        name="shaped",
    )
    before = logging.getLogger("belated").level
    with distributed.Client(**keywords) as theirs, belated.Client(**keywords) as ours:
        assert list(ours.nthreads().values()) == list(theirs.nthreads().values()) == [3]
        ours_workers = ours.scheduler_info()["workers"].values()
        theirs_workers = theirs.scheduler_info()["workers"].values()
        for key in ("nthreads", "memory_limit"):
            assert [w[key] for w in ours_workers] == [w[key] for w in theirs_workers]
        assert ours.cluster.name == "shaped" and ours.cluster is ours.cluster
        assert logging.getLogger("belated").getEffectiveLevel() == logging.ERROR
        assert ours.submit(pid_of).result(timeout=30) == os.getpid(), "processes=False runs tasks here"
    assert logging.getLogger("belated").level == before, "close restores the level"


def test_processes_false_computes_delayed_by_default_on_its_threads():
    with belated.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        assert belated.delayed(pid_of)().compute() == os.getpid()
        assert belated.delayed(square)(3).compute(scheduler=client) == 9
        assert client.scheduler_info()["total_threads"] == 2
    with pytest.raises(belated.BelatedError, match="closed"):
        belated.delayed(square)(3).compute(scheduler=client)


class Result:
    pass


def test_a_cycle_through_a_future_and_the_value_a_task_took_it_as_is_collected(in_process):
    future = in_process.submit(Result)
    result = future.result(timeout=30)
    result.future = future
    # A task taking the future reads its result from the future, as a Delayed kept there for all of them.
    assert belated.delayed(type)(future).compute(scheduler=in_process) is Result
    alive = weakref.ref(result)
    del future, result
    # The compute's threads may still hold the task a moment after it returned: a collection then
    # leaves the cycle to the next one.
    deadline = time.monotonic() + 30
    while gc.collect() is not None and alive() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert alive() is None


@pytest.mark.parametrize("keyword", ["security", "scheduler_file", "direct_to_workers", "host", "protocol"])
def test_keywords_of_a_remote_scheduler_say_so(keyword):
    with pytest.raises(TypeError, match=rf"{keyword}=\.\.\..*remote scheduler.*Client\('tcp://"):
        belated.Client(processes=False, dashboard_address=None, **{keyword: None})


def test_unknown_keywords_are_named():
    with pytest.raises(TypeError, match="unexpected keyword arguments: bogus, other"):
        belated.Client(processes=False, dashboard_address=None, bogus=1, other=2)


@pytest.mark.parametrize(
    ("keywords", "error"),
    [
        ({"processes": "yes"}, TypeError),
        ({"silence_logs": "loud"}, ValueError),
        ({"n_workers": 0}, ValueError),
    ],
)
def test_bad_keyword_values_are_refused(keywords, error):
    with pytest.raises(error):
        belated.Client(processes=False, dashboard_address=None, **keywords)


# -- futures ------------------------------------------------------------------------------------------


def test_futures_answer_as_distributeds_do(any_client):
    client = any_client
    one = client.submit(inc, 1)
    many = client.map(inc, range(5))
    assert isinstance(one.key, str) and one.key.startswith("inc")
    assert client.gather(many) == [1, 2, 3, 4, 5]
    keyed, prefixed = client.map(inc, [1, 2], key=["k-one", "k-two"]), client.map(inc, [1, 2], key="pre")
    assert [f.key for f in keyed] == ["k-one", "k-two"] and client.gather(keyed) == [2, 3]
    assert all(f.key.startswith("pre-") for f in prefixed) and client.gather(prefixed) == [2, 3]
    # Futures as arguments, alone and inside containers, and futures of futures.
    chained = client.submit(inc, client.submit(inc, one))
    assert chained.result(timeout=30) == 4
    assert client.submit(add, one, 10, *many).result(timeout=30) == 2 + 10 + 15
    assert client.submit(total, [one, many[4], 3]).result(timeout=30) == 2 + 5 + 3
    assert client.gather(client.map(inc, many)) == [2, 3, 4, 5, 6]
    [scattered] = client.scatter([41])
    assert client.submit(inc, scattered).result(timeout=30) == 42
    assert client.gather(client.scatter({"a": 1, "b": 2})) == {"a": 1, "b": 2}
    # A failed future fails what takes it, with its own exception.
    failed = client.submit(explode, 1)
    with pytest.raises(Boom, match="bad 1"):
        client.submit(inc, failed).result(timeout=30)
    assert failed.status == "error" and isinstance(failed.exception(timeout=30), Boom)


def runs(path):
    return len(path.read_text().splitlines())


@pytest.fixture(params=["itself", "wrapped"])
def retrying_client(request, any_client):
    """Each Client, and distributed's wrapped in a belated.Client, which passes retry through."""
    if request.param == "wrapped":
        if not isinstance(any_client, distributed.Client):
            pytest.skip("only distributed's Client is wrapped")
        return belated.Client(any_client, set_as_default=False)
    return any_client


def test_retry_runs_failed_futures_again_keeping_what_they_took(retrying_client, tmp_path):
    client = retrying_client
    taken, flaky = tmp_path / "taken", tmp_path / "flaky"
    dependency = client.submit(counted_inc, 1, str(taken))
    future = client.submit(fail_first_time, dependency, str(flaky))
    with pytest.raises(ValueError, match="first run"):
        future.result(timeout=30)
    same_key = client.submit(fail_first_time, dependency, str(flaky))
    assert same_key.key == future.key and same_key.status == "error"
    assert future.retry() is None
    assert future.result(timeout=30) == 3 and same_key.result(timeout=30) == 3
    assert (runs(taken), runs(flaky)) == (1, 2)
    # A finished future runs again, alone.
    future.retry()
    assert future.result(timeout=30) == 3 and (runs(taken), runs(flaky)) == (1, 3)


def test_retry_leaves_a_future_waiting_for_another_to_finish(retrying_client, tmp_path):
    client = retrying_client
    started, gate, counted = tmp_path / "started", tmp_path / "gate", tmp_path / "counted"
    waiting = client.submit(counted_inc, client.submit(wait_exists, str(gate)), str(counted))
    # distributed's scheduler takes submits in order: once one sent after `waiting` runs, it has it.
    client.submit(touch_then_wait, str(started), str(started))
    assert wait_exists(str(started))
    waiting.retry()
    gate.touch()
    assert waiting.result(timeout=30) == 2 and runs(counted) == 1


def test_retry_runs_the_failed_futures_a_future_took_first(retrying_client, tmp_path):
    client = retrying_client
    failed = client.submit(fail_first_time, 5, str(tmp_path / "first"))
    taking = client.submit(inc, failed)
    with pytest.raises(ValueError, match="first run"):
        taking.result(timeout=30)
    assert client.retry([taking]) is None
    assert taking.result(timeout=30) == 7 and failed.result(timeout=30) == 6


def test_retry_of_one_future_of_a_map_leaves_the_others(retrying_client, tmp_path):
    client = retrying_client
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    first, second = client.map(fail_first_time, [1, 2], paths)
    assert isinstance(first.exception(timeout=30), ValueError)
    client.retry(first)
    assert first.result(timeout=30) == 2
    with pytest.raises(ValueError, match="first run"):
        second.result(timeout=30)
    assert second.status == "error"


def test_retry_of_a_cancelled_future_raises_key_error():
    with belated.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        future = client.submit(inc, 1)
        future.cancel()
        with pytest.raises(KeyError, match=future.key):
            future.retry()


def test_a_futures_type_is_its_results_once_it_succeeded(any_client, tmp_path):
    client = any_client
    gate = tmp_path / "gate"
    pending = client.submit(wait_exists, str(gate))
    assert pending.type is None
    gate.touch()
    assert pending.result(timeout=30) is True and pending.type is bool
    number, [scattered] = client.submit(inc, 1.5), client.scatter([np.arange(3)])
    assert number.result(timeout=30) == 2.5 and number.type is float
    assert scattered.type is np.ndarray
    failed = client.submit(explode, 1)
    assert isinstance(failed.exception(timeout=30), Boom) and failed.type is None


def test_nbytes_sizes_the_results_futures_hold_as_distributed(retrying_client, tmp_path):
    client = retrying_client
    sized = client.map(inc, [1, 2, 3], key="sized")
    zeros = client.submit(np.zeros, 1000, key="zeros-1000")
    [scattered] = client.scatter([np.arange(10)], hash=False)
    failed = client.submit(explode, 1)
    started = tmp_path / "started"
    pending = client.submit(touch_then_wait, str(started), str(tmp_path / "gate"))
    client.gather([*sized, zeros, scattered])
    assert wait_exists(str(started))  # known to distributed's scheduler, running
    assert isinstance(failed.exception(timeout=30), Boom)
    everything = client.nbytes(summary=False)
    assert {future.key: everything[future.key] for future in sized} == {future.key: 28 for future in sized}
    assert everything[zeros.key] == 8000 and everything[scattered.key] == 80
    assert failed.key not in everything and pending.key not in everything
    assert client.nbytes()["sized"] == 84
    asked = client.nbytes(keys=[zeros.key, failed.key, pending.key], summary=False)
    assert asked == {zeros.key: 8000, failed.key: -1, pending.key: -1}
    with pytest.raises(KeyError):
        client.nbytes(keys=["no-such-key"])
    (tmp_path / "gate").touch()
    assert pending.result(timeout=30) is True


UUID = r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}"


def test_keys_are_made_as_distributed_makes_them(any_client):
    """Pure calls (the default) are named by a token of the call, impure ones by a new uuid."""
    client = any_client
    pure = client.submit(inc, 1)
    assert re.fullmatch(r"inc-[0-9a-f]{32}", pure.key) and pure.key == client.submit(inc, 1).key
    assert re.fullmatch(rf"inc-{UUID}", client.submit(inc, 1, pure=False).key)
    assert client.submit(inc, pure).key == client.submit(inc, pure).key != client.submit(inc, 2).key
    first, second, again = client.map(inc, [1, 2, 1])
    assert re.fullmatch(r"inc-[0-9a-f]{32}", first.key) and first.key == again.key != second.key
    assert client.gather([first, second, again]) == [2, 3, 2]
    impure = client.map(inc, [1, 1], pure=False)
    [uid] = {re.fullmatch(rf"inc-({UUID})-[01]", f.key).group(1) for f in impure}
    assert [f.key for f in impure] == [f"inc-{uid}-0", f"inc-{uid}-1"]
    assert all(re.fullmatch(r"pre-[0-9a-f]{32}", f.key) for f in client.map(inc, [1, 2], key="pre"))
    assert client.submit(lambda x: x, 1).key.startswith("lambda-")
    assert client.submit(functools.partial(add, 1), 2).key.startswith("add-")


def test_containers_and_tuple_keys_are_computed_and_gathered_as_in_distributed(any_client):
    client = any_client
    task = dask.delayed(inc)(1)
    whole = client.compute({"a": task, "b": [task, 5]})
    assert re.fullmatch(rf"dict-{UUID}", whole.key) and whole.result(timeout=30) == {"a": 2, "b": [2, 5]}
    [one] = client.compute([task])
    assert one.key == task.key and one.result(timeout=30) == 2
    keyed = client.submit(inc, 1, key=("tuple-key", 1))
    assert keyed.key == ("tuple-key", 1) and keyed.result(timeout=30) == 2
    nested = {"a": [client.submit(inc, 1), (client.submit(inc, 2),)], "b": {client.submit(inc, 3)}}
    assert client.gather(nested) == {"a": [2, (3,)], "b": {4}}


def test_equal_pure_calls_run_once_and_impure_ones_each_time(in_process, reference):
    for client in (in_process, reference):
        RAN.clear()
        label = uuid.uuid4().hex  # not held from another test
        twice = [client.submit(note, 1, label), client.submit(note, 1, label)]
        assert client.gather(twice) == [1, 1]
        assert RAN.count(label) == 1
        mapped = client.map(note, [2, 2], label=label)
        assert client.gather(mapped) == [2, 2]
        assert RAN.count(label) == 2
        client.gather([client.submit(note, 1, label, pure=False) for _ in range(2)])
        assert RAN.count(label) == 4, type(client)


def test_each_future_of_a_map_has_its_own_outcome_as_in_distributed(any_client):
    """One failing call of a map fails its own future only: the others run and give their results."""
    futures = any_client.map(explode_on_zero, [1, 0, 3, 4], pure=False)
    api = module_of(any_client)
    api.wait(futures, timeout=30)
    assert [f.status for f in futures] == ["finished", "error", "finished", "finished"]
    assert [futures[i].result(timeout=30) for i in (0, 2, 3)] == [1, 3, 4]
    with pytest.raises(Boom, match="zero"):
        futures[1].result(timeout=30)
    assert futures[0].exception(timeout=30) is None and isinstance(futures[1].exception(timeout=30), Boom)
    with pytest.raises(Boom, match="zero"):
        any_client.submit(inc, futures[1]).result(timeout=30)
    outcomes = sorted(
        (
            r if not isinstance(r, tuple) else r[0].__name__
            for _, r in api.as_completed(futures, with_results=True, raise_errors=False)
        ),
        key=str,
    )
    assert outcomes == [1, 3, 4, "Boom"]
    if api is belated:  # distributed has no FIRST_EXCEPTION; concurrent.futures' meaning is kept
        done, _ = api.wait(futures, return_when="FIRST_EXCEPTION", timeout=30)
        assert futures[1] in done


def test_gather_of_an_iterator_gives_an_iterator_of_results_as_distributed(any_client):
    futures = any_client.map(explode_on_zero, [1, 0, 2], pure=False)
    gathered = any_client.gather(iter(futures), errors="skip")
    assert not isinstance(gathered, list)
    assert list(gathered) == [1, None, 2]
    results = any_client.gather(future for future in futures[:1])
    assert list(results) == [1]
    with pytest.raises(Boom):
        list(any_client.gather(iter(futures)))


def test_gather_takes_distributeds_direct_keyword(any_client):
    futures = any_client.map(inc, [1, 2])
    assert any_client.gather(futures, direct=True) == any_client.gather(futures, direct=False) == [2, 3]


def test_gather_skips_failed_futures_as_distributed_does(in_process, reference):
    answers = []
    for client in (in_process, reference):
        bad, good = client.submit(explode, 3, pure=False), client.submit(inc, 1, pure=False)
        module_of(client).wait([bad, good], timeout=30)
        with pytest.raises(Boom):
            client.gather([bad, good])
        answers.append(
            (
                client.gather([bad, good], errors="skip"),
                client.gather({"a": bad, "b": good}, errors="skip"),
                client.gather(bad, errors="skip"),
            )
        )
    assert answers[0] == answers[1] == ([2], {"a": None, "b": 2}, None)
    with pytest.raises(ValueError, match="errors"):
        in_process.gather([good], errors="ignore")


def test_cancelling_one_future_of_a_map_leaves_the_others_as_in_distributed(in_process, reference):
    for client in (in_process, reference):
        api = module_of(client)
        GATE.clear()
        futures = client.map(gated, range(4), pure=False)
        futures[0].cancel()
        assert futures[0].cancelled() and futures[0].status == "cancelled"
        # A cancelled future is no result to wait for: both name it (distributed: FuturesCancelledError).
        with pytest.raises(api.CancelledError, match=r"1 [Ff]uture.* cancelled"):
            api.wait(futures, return_when="FIRST_COMPLETED", timeout=30)
        GATE.set()
        api.wait(futures[1:], timeout=30)
        assert [f.status for f in futures] == ["cancelled", "finished", "finished", "finished"]
        assert client.gather(futures[1:]) == [1, 2, 3]
        with pytest.raises(api.CancelledError if api is belated else distributed.client.FutureCancelledError):
            futures[0].result(timeout=30)
        # Cancelling every one of them cancels the computation.
        GATE.clear()
        rest = client.map(gated, range(2), pure=False)
        for future in rest:
            future.cancel()
        assert [f.status for f in rest] == ["cancelled", "cancelled"]
    GATE.set()


def test_a_cancelled_futures_exception_is_none_as_in_distributed(in_process, reference):
    for client in (in_process, reference):
        api = module_of(client)
        cancelled = api.CancelledError if api is belated else distributed.client.FutureCancelledError
        # Finished before the gate closes: a cancelled gated task of another test may hold a thread.
        finished = client.submit(inc, 1, pure=False)
        assert finished.result(timeout=30) == 2
        GATE.clear()
        waiting = client.submit(gated, 1, pure=False)
        finished.cancel()
        waiting.cancel()
        GATE.set()
        for future in (finished, waiting):
            assert future.status == "cancelled"
            # Not failed: result() raises, exception() has nothing to give.
            assert future.exception(timeout=30) is None and future.traceback(timeout=30) is None
            with pytest.raises(cancelled):
                future.result(timeout=30)


def test_a_failed_map_call_keeps_its_worker_traceback(local_cluster):
    [failed] = local_cluster.map(explode_on_zero, [0])
    error = failed.exception(timeout=30)
    assert isinstance(error, Boom)
    assert traceback.extract_tb(error.__traceback__)[-1].name == "explode_on_zero"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(-5, 5), st.lists(st.integers(0, 1000), max_size=3)),
        min_size=1,
        max_size=12,
    )
)
def test_graphs_of_futures_give_what_eager_python_gives(in_process, steps):
    """Each step adds a constant to earlier steps' results (picked by index), as futures and eagerly."""
    futures, values = [], []
    for constant, picks in steps:
        chosen = [i % len(futures) for i in picks] if futures else []
        futures.append(in_process.submit(add, constant, *[futures[i] for i in chosen], pure=False))
        values.append(add(constant, *[values[i] for i in chosen]))
    assert in_process.gather(futures) == values


def test_done_callbacks_receive_the_future(any_client):
    called = threading.Event()
    seen = []
    future = any_client.submit(square, 4)
    future.add_done_callback(lambda f: (seen.append(f), called.set()))
    assert called.wait(30)
    assert seen[0] is future and seen[0].result() == 16


def test_wait_returns_done_and_not_done_as_distributed(in_process, reference):
    for client, api in ((in_process, belated), (reference, distributed)):
        GATE.clear()
        blocked, quick = client.submit(gated, 1, pure=False), client.submit(square, 3)
        done, not_done = api.wait([blocked, quick], return_when="FIRST_COMPLETED", timeout=30)
        assert done == {quick} and not_done == {blocked}
        with pytest.raises(TimeoutError):
            api.wait([blocked, quick], timeout=0.2)
        GATE.set()
        done, not_done = api.wait([blocked, quick], timeout=30)
        assert done == {blocked, quick} and not not_done
    with pytest.raises(ValueError, match="return_when"):
        belated.wait([quick], return_when="SOMETIMES")


def test_as_completed_yields_in_completion_order_and_takes_more_while_iterating(in_process, reference):
    for client, api in ((in_process, belated), (reference, distributed)):
        GATE.clear()
        blocked = client.submit(gated, "slow", pure=False)
        quick = client.submit(square, 5, pure=False)
        order = []
        iterator = api.as_completed([blocked, quick], with_results=True)
        for _future, result in iterator:
            order.append(result)
            if result == 25:
                iterator.add(client.submit(inc, 99, pure=False))
            elif result == 100:
                GATE.set()  # only now may the first-submitted finish
        assert order == [25, 100, "slow"], api.__name__


def test_as_completed_with_results_raises_or_gives_errors(api, in_process, reference):
    client = in_process if api is belated else reference
    futures = [client.submit(explode, 2, pure=False)]
    with pytest.raises(Boom):
        list(api.as_completed(futures, with_results=True))
    [(future, (kind, error, _))] = list(api.as_completed(futures, with_results=True, raise_errors=False))
    assert future is futures[0] and kind is Boom and isinstance(error, Boom)


def test_as_completed_times_out_waiting_but_yields_what_finished_as_distributed(api, in_process, reference):
    client = in_process if api is belated else reference
    GATE.clear()
    try:
        blocked, quick = client.submit(gated, 1, pure=False), client.submit(inc, 1, pure=False)
        assert quick.result(timeout=60) == 2
        iterator = api.as_completed([blocked, quick], timeout=2)
        assert next(iterator) is quick
        with pytest.raises(TimeoutError):
            next(iterator)
        with pytest.raises(TimeoutError):
            api.as_completed([blocked], timeout=0).next_batch()
        if api is belated:

            async def first_of(futures):
                async for future in belated.as_completed(futures, timeout=0):
                    return future

            assert asyncio.run(first_of([quick])) is quick
            with pytest.raises(TimeoutError):
                asyncio.run(first_of([blocked]))
    finally:
        GATE.set()
    assert blocked.result(timeout=60) == 1


def test_as_completed_with_results_gives_a_cancelled_futures_error_as_its_result(api, in_process, reference):
    client = in_process if api is belated else reference
    GATE.clear()
    waiting, done = client.submit(gated, 1, pure=False), client.submit(inc, 1, pure=False)
    waiting.cancel()
    try:
        for raise_errors in (True, False):
            given = sorted(
                api.as_completed([waiting, done], with_results=True, raise_errors=raise_errors),
                key=lambda pair: pair[0] is done,
            )
            [(first, error), (second, value)] = given
            assert (first, second, value) == (waiting, done, 2)
            assert isinstance(error, concurrent.futures.CancelledError), error
    finally:
        GATE.set()


def test_a_dropped_future_never_starts_unless_fired_and_forgotten(in_process):
    GATE.clear()
    RAN.clear()
    blocker = in_process.submit(gated, 0, pure=False)
    kept = in_process.submit(note, blocker, "forgotten")
    belated.fire_and_forget(kept)
    dropped = in_process.submit(note, blocker, "dropped")
    del kept, dropped
    gc.collect()
    GATE.set()
    assert blocker.result(timeout=30) == 0
    deadline = time.monotonic() + 30
    while "forgotten" not in RAN and time.monotonic() < deadline:
        time.sleep(0.01)
    # Both were waiting on the blocker alone: the kept one ran, so the dropped one would have started.
    assert RAN == ["forgotten"]


def test_futures_of_a_closed_client_are_cancelled():
    client = belated.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    finished = client.submit(square, 2)
    assert finished.result(timeout=30) == 4
    GATE.clear()
    pending = client.submit(gated, 1, pure=False)
    client.close()
    GATE.set()
    for future in (finished, pending):
        with pytest.raises(belated.CancelledError, match="closed"):
            future.result(timeout=30)
        assert future.status == "cancelled" and future.cancelled() and future.done()
    with pytest.raises(belated.BelatedError, match="closed"):
        client.submit(square, 3)


def test_a_scattered_dicts_keys_are_its_futures_keys_as_given(any_client):
    scattered = any_client.scatter({2: 5, ("x", 1): 6, "name": 7, 2.5: 8})
    assert {key: future.key for key, future in scattered.items()} == {
        2: 2,
        ("x", 1): ("x", 1),
        "name": "name",
        2.5: 2.5,
    }
    assert any_client.submit(sum, list(scattered.values())).result(timeout=60) == 26


def test_a_scattered_dicts_numpy_keys_keep_their_type(any_client):
    np = pytest.importorskip("numpy")
    given = [np.int64(1), np.int32(2), (np.int64(3), "x"), np.float64(4.5), np.uint8(7)]
    scattered = any_client.scatter(dict(zip(given, range(5), strict=True)))
    keys = [scattered[key].key for key in given]
    assert [type(key) for key in keys] == [type(key) for key in given]
    assert [type(part) for part in keys[2]] == [np.int64, str]
    assert keys == given
    assert any_client.submit(sum, list(scattered.values())).result(timeout=60) == 10


def test_scattered_keys_that_print_alike_hold_their_own_values(any_client):
    # The key 5 and the key "5" are two keys in distributed; on a cluster of processes they were
    # one task, and "5" gave the value scattered under 5. Keys no other test scatters: distributed
    # forgets a released key later, and a scatter under it meanwhile keeps the old value.
    scattered = any_client.scatter({5: "int", "5": "str", ("x", 5): "tuple", "('x', 5)": "text"})
    assert {key: future.result(timeout=60) for key, future in scattered.items()} == {
        5: "int",
        "5": "str",
        ("x", 5): "tuple",
        "('x', 5)": "text",
    }


def test_scatter_refuses_unpicklable_data_before_anything_runs(local_cluster, in_process):
    before = local_cluster.cluster_stats()
    with pytest.raises(TypeError, match="cannot scatter lock to worker processes: it cannot be pickled"):
        local_cluster.scatter([1, threading.Lock()])
    assert local_cluster.cluster_stats() == before
    lock = threading.Lock()
    assert in_process.submit(type, in_process.scatter(lock)).result(timeout=30) is type(lock)


@pytest.mark.parametrize("which", ["local_cluster", "in_process", "reference"])
def test_a_cancelled_scattered_value_is_refused_as_an_argument_as_in_distributed(which, request):
    client = request.getfixturevalue(which)
    [scattered] = client.scatter([f"value {uuid.uuid4()}"])
    assert scattered.result(timeout=60).startswith("value")
    client.cancel(scattered)
    for use in (client.submit(len, scattered), *client.map(len, [scattered])):
        with pytest.raises(concurrent.futures.CancelledError):
            use.result(timeout=60)


def test_a_scattered_value_goes_to_a_worker_with_the_scatter_and_never_with_a_call(local_cluster):
    array = np.arange(200_000, dtype=np.float64)  # well over the size sent once
    [scattered] = local_cluster.scatter([array])
    before = local_cluster.cluster_stats()["uploaded"]
    futures = local_cluster.map(np.sum, [scattered] * 40, pure=False)
    assert local_cluster.gather(futures) == [array.sum()] * 40
    assert local_cluster.cluster_stats()["uploaded"] == before, "it is in the workers already"


def test_a_future_inside_a_delayed_argument_is_its_result_and_inside_an_object_is_refused(local_cluster):
    # As distributed: a Delayed call taking a future receives its result.
    future = local_cluster.submit(square, 2)
    assert local_cluster.compute(belated.delayed(inc)(future)).result(timeout=30) == 5
    with pytest.raises(belated.BelatedError, match=r"pass it as an argument of client\.submit"):
        local_cluster.compute(belated.delayed(repr)(Holder(future))).result(timeout=30)


class Holder:
    def __init__(self, held):
        self.held = held


# -- asyncio ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", [belated, distributed], ids=["belated", "distributed"])
def test_futures_and_gather_are_awaitable_on_an_asynchronous_client(api):
    async def main():
        async with api.Client(
            asynchronous=True, processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
        ) as client:
            future = client.submit(inc, 1)
            many = client.map(inc, range(3))
            [scattered] = await client.scatter([10])
            completed = [await f async for f in api.as_completed(client.map(inc, range(10, 14)))]
            return (
                await future,
                await client.gather(many),
                await client.submit(inc, scattered),
                sorted(completed),
            )

    assert asyncio.run(asyncio.wait_for(main(), 60)) == (2, [1, 2, 3], 11, [11, 12, 13, 14])


@pytest.mark.parametrize("api", [belated, distributed], ids=["belated", "distributed"])
def test_cluster_methods_are_awaitable_on_an_asynchronous_client(api, tmp_path):
    """``await client.run(...)`` and the like, as distributed's asynchronous client gives them."""
    module = tmp_path / "uploaded_for_async.py"
    module.write_text("VALUE = 7\n")

    async def main():
        async with api.Client(
            asynchronous=True, processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
        ) as client:
            await client.wait_for_workers(1)
            ran = await client.run(inc, 1)
            threads = await client.nthreads()
            await client.upload_file(str(module))
            return list(ran.values()), list(threads.values())

    assert asyncio.run(asyncio.wait_for(main(), 60)) == ([2], [2])


def test_a_synchronous_clients_future_is_awaitable(in_process):
    async def main():
        return await in_process.submit(square, 6)

    assert asyncio.run(asyncio.wait_for(main(), 60)) == 36


# -- workers ------------------------------------------------------------------------------------------


def test_workers_are_described_and_reached_as_in_distributed(in_process, reference, local_cluster):
    for client in (in_process, reference, local_cluster):
        nthreads = client.nthreads()
        info = client.scheduler_info()
        assert set(info["workers"]) == set(nthreads) == set(client.run(os.getpid))
        for address, worker in info["workers"].items():
            assert worker["nthreads"] == nthreads[address]
            assert "memory_limit" in worker and worker["metrics"]["memory"] > 0
        client.wait_for_workers(len(nthreads))
        with pytest.raises(TimeoutError):
            client.wait_for_workers(len(nthreads) + 1, timeout=0.2)
    assert sorted(local_cluster.run(os.getpid).values()) == sorted(local_cluster.worker_pids)
    assert list(local_cluster.nthreads().values()) == [2, 2]


def test_run_raises_a_workers_exception(local_cluster):
    with pytest.raises(Boom, match="bad 3"):
        local_cluster.run(explode, 3)


def test_restart_gives_new_workers_and_keeps_uploaded_files(tmp_path):
    module = tmp_path / "uploaded_by_test.py"
    module.write_text("VALUE = 1\n")
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        client.upload_file(str(module))
        assert set(client.run(read_uploaded).values()) == {1}
        module.write_text("VALUE = 2\n")
        client.upload_file(str(module))
        assert set(client.run(read_uploaded).values()) == {2}, "uploading again reloads"
        old = client.worker_pids
        running = client.submit(nap, 30)
        client.restart()
        with pytest.raises(belated.CancelledError):
            running.result(timeout=30)
        assert not set(client.worker_pids) & set(old)
        assert set(client.run(read_uploaded).values()) == {2}, "new workers get uploaded files"
        assert client.submit(square, 3).result(timeout=30) == 9
        client.scale(3)
        values = client.run(read_uploaded)
        assert len(values) == 3 and set(values.values()) == {2}, "so do workers a scale adds"


def read_uploaded():
    return importlib.import_module("uploaded_by_test").VALUE


@pytest.mark.parametrize("stop", ["restart", "close"])
def test_restart_and_close_cancel_a_compute_running_on_the_client(stop, tmp_path):
    started = str(tmp_path / "started")
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        outcome = concurrent.futures.Future()

        def compute():
            try:
                outcome.set_result(belated.delayed(record_then_nap)(started, 600).compute())
            except BaseException as error:
                outcome.set_exception(error)

        threading.Thread(target=compute, daemon=True).start()
        assert wait_exists(started)
        getattr(client, stop)()
        with pytest.raises(belated.CancelledError):
            outcome.result(timeout=60)


def test_scale_grows_and_shrinks_the_workers_running_tasks():
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        running = client.submit(nap, 0.5)
        client.cluster.scale(3)
        assert len(client.cluster.workers) == 3 and len(client.nthreads()) == 3
        assert running.result(timeout=30) == 0.5, "work running during a scale finishes"
        pids = set(client.gather(client.map(nap_pid, [0.3] * 6, pure=False)))
        assert pids == set(client.worker_pids), "every new worker runs tasks"
        client.scale(1)
        assert client.submit(square, 4).result(timeout=30) == 16
        until_workers(client, 1)
        with pytest.raises(ValueError, match="at least 1"):
            client.cluster.scale(0)


def until_workers(client, n):
    deadline = time.monotonic() + 60
    while len(client.cluster.workers) != n:
        assert time.monotonic() < deadline, f"{len(client.cluster.workers)} workers, never {n}"
        time.sleep(0.02)


def counted_square(x, calls):
    """``x * x``, noting the call in the file ``calls``."""
    with open(calls, "a") as log:
        log.write(f"{x}\n")
    return x * x


def test_persisted_results_survive_scaling_down_and_up_and_are_not_computed_again(tmp_path):
    calls = str(tmp_path / "calls")
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        persisted = client.persist([belated.delayed(counted_square)(i, calls) for i in range(4)])
        assert [item.compute(scheduler=client) for item in persisted] == [0, 1, 4, 9]
        before = set(client.worker_pids)
        client.scale(1)
        assert client.compute(belated.delayed(sum)(persisted)).result(timeout=60) == 14
        client.scale(3)
        assert client.compute(belated.delayed(max)(persisted)).result(timeout=60) == 9
        assert persisted[2].compute(scheduler=client) == 4
        with open(calls) as log:
            assert sorted(log.read().split()) == ["0", "1", "2", "3"], "each computed once"
        assert client.cluster_stats()["recomputed"] == 0
        until_workers(client, 3)
        assert sorted(before)[:1] == sorted(client.worker_pids)[:1], "scaled in place: the first stays"


def test_a_persist_running_during_a_scale_up_finishes_where_it_runs_and_is_used_once_done(tmp_path):
    gate, calls = tmp_path / "gate", str(tmp_path / "calls")
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        persisted = client.persist(belated.delayed(gated_counted_square)(5, str(gate), calls))
        try:
            client.scale(2)
        finally:
            gate.touch()
        assert client.compute(belated.delayed(square)(persisted)).result(timeout=60) == 625
        assert persisted.compute(scheduler=client) == 25
        with open(calls) as log:
            assert log.read().split() == ["5"], "computed once: the scale left it running"


def gated_counted_square(x, gate, calls):
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        assert time.monotonic() < deadline, "the test never opened the gate"
        time.sleep(0.01)
    return counted_square(x, calls)


def nap_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def test_in_process_clients_do_not_adapt(in_process):
    with pytest.raises(TypeError, match="processes=False"):
        in_process.cluster.adapt(minimum=1, maximum=2)


# Two calls of meet() return only if they run at the same time.
MEETING = threading.Barrier(2, timeout=30)


def meet():
    MEETING.wait()
    return True


def total_threads_become(client, expected):
    deadline = time.monotonic() + 30
    while sum(client.nthreads().values()) != expected:
        assert time.monotonic() < deadline, f"{client.nthreads()} never reached {expected} threads"
        time.sleep(0.05)


@pytest.mark.parametrize("make", [belated.Client, distributed.Client], ids=["belated", "distributed"])
def test_in_process_clients_scale_the_threads_tasks_run_on(make):
    with make(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        client.cluster.scale(2)
        total_threads_become(client, 2)
        MEETING.reset()
        assert client.gather(client.map(lambda _: meet(), range(2), pure=False)) == [True, True]
        client.cluster.scale(1)
        total_threads_become(client, 1)
        if make is belated.Client:
            # distributed's in-process scale-down sometimes leaves a task unscheduled for 30 s under load.
            assert client.submit(square, 4).result(timeout=30) == 16


# -- tasks that launch tasks --------------------------------------------------------------------------


def close_worker_clients(client):
    """Closes the clients distributed's get_client() made in its workers, which it leaves polling a
    closed cluster (their errors would land in later tests' logs)."""

    def close(dask_worker):
        if dask_worker._client is not None:
            dask_worker._client.close()
            dask_worker._client = None

    client.run(close)


@pytest.mark.parametrize("task", [fib, fib_secede])
def test_tasks_submit_tasks_without_deadlocking_a_one_thread_worker(task):
    expected = 8
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as theirs:
        assert theirs.submit(task, 6).result(timeout=60) == expected
        close_worker_clients(theirs)
    with belated.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as ours:
        assert ours.submit(task, 6).result(timeout=60) == expected


def test_get_client_in_a_task_is_the_client_running_it(in_process):
    assert in_process.submit(ask_for_client, 0).result(timeout=30) is in_process


def test_get_client_without_a_client_and_secede_outside_a_task_are_refused(monkeypatch):
    import belated._client

    monkeypatch.setattr(belated._client, "_STARTED", [])
    with pytest.raises(ValueError, match="no belated Client is running"):
        belated.get_client()
    with pytest.raises(ValueError, match="secede"):
        belated.secede()


# -- progress -----------------------------------------------------------------------------------------


def test_progress_draws_a_text_bar_until_all_are_done(in_process):
    GATE.clear()
    futures = [in_process.submit(gated, i, pure=False) for i in range(3)] + [in_process.submit(square, 2)]
    out = io.StringIO()

    def open_once_drawn():
        # The gated tasks finish only after the bar has drawn them unfinished.
        deadline = time.monotonic() + 60
        while not out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        GATE.set()

    opener = threading.Thread(target=open_once_drawn)
    opener.start()
    belated.progress(futures, file=out, interval=0.01, notebook=False)
    opener.join(60)
    assert all(f.done() for f in futures)
    frames = out.getvalue().split("\r")[1:]
    assert frames[0].startswith("[") and ("|   0% Completed" in frames[0] or "|  25% Completed" in frames[0])
    assert "| 100% Completed" in frames[-1] and frames[-1].endswith("\n")
    assert "#" * 40 in frames[-1]


def test_progress_in_jupyter_updates_html_bars_per_function_in_place(in_process, monkeypatch):
    updates = []

    class Handle:
        def update(self, obj):
            updates.append(obj.data)

    class HTML:
        def __init__(self, data):
            self.data = data

    def display(obj, display_id=False):
        assert display_id is True
        updates.append(obj.data)
        return Handle()

    fake = types.ModuleType("IPython.display")
    fake.HTML, fake.display = HTML, display
    monkeypatch.setitem(sys.modules, "IPython.display", fake)
    GATE.clear()
    futures = [in_process.submit(gated, i, pure=False) for i in range(2)] + in_process.map(square, range(3))
    bar = belated.progress(futures, notebook=True, interval=0.02)
    assert "gated" in updates[0] and "0 / 2" in updates[0], "drawn at once, before the work is done"
    GATE.set()
    bar.join(timeout=30)
    assert "gated" in updates[-1] and "2 / 2" in updates[-1] and "3 / 3" in updates[-1]


def test_progress_refuses_what_is_not_a_future():
    with pytest.raises(TypeError, match="progress"):
        belated.progress(42, notebook=False)


def test_module_level_names_match_distributed():
    for name in ("as_completed", "wait", "fire_and_forget", "get_client", "secede", "rejoin", "worker_client",
                 "progress", "Future", "Client"):  # fmt: skip
        assert hasattr(belated, name) and hasattr(distributed, name), name
    assert importlib.import_module("belated").Future is _futures.Future


# -- one failure fails only what needs it; persist returns at once --------------------------------------


def delayed_of(client):
    return dask.delayed if isinstance(client, distributed.Client) else belated.delayed


def test_a_failed_task_fails_only_the_futures_that_need_it(any_client):
    delayed = delayed_of(any_client)
    bad, good = delayed(explode_on_zero)(0), delayed(explode_on_zero)(5)
    after_bad, after_good = delayed(inc)(bad), delayed(inc)(good)
    both = delayed(add)(bad, good)
    futures = any_client.compute([bad, good, after_bad, after_good, both])
    module_of(any_client).wait(futures, timeout=60)
    assert [f.status for f in futures] == ["error", "finished", "error", "finished", "error"]
    assert [futures[1].result(), futures[3].result()] == [5, 6]
    for failed in (futures[0], futures[2], futures[4]):
        assert type(failed.exception()) is Boom and str(failed.exception()) == "zero"
        with pytest.raises(Boom, match="zero"):
            failed.result()


def test_a_failed_submit_fails_only_the_submits_that_take_it(any_client):
    bad = any_client.submit(explode_on_zero, 0)
    good = any_client.submit(explode_on_zero, 3)
    chained = [any_client.submit(add, bad, good), any_client.submit(square, good)]
    module_of(any_client).wait(chained, timeout=60)
    assert [f.status for f in chained] == ["error", "finished"]
    assert type(chained[0].exception()) is Boom and chained[1].result() == 9


def test_a_failed_task_keeps_the_users_frames(in_process):
    def fails_here(x):
        raise Boom(f"frame {x}")

    bad, good = belated.delayed(fails_here)(1), belated.delayed(inc)(1)
    futures = in_process.compute([bad, good])
    with pytest.raises(Boom) as raised:
        futures[0].result(timeout=60)
    frames = [entry.name for entry in raised.traceback]
    assert "fails_here" in frames
    assert futures[1].result(timeout=60) == 2


def test_compute_without_a_client_still_raises_the_first_failure():
    bad, good = belated.delayed(explode_on_zero)(0), belated.delayed(inc)(1)
    for scheduler in ("threads", "sync", "processes"):
        with pytest.raises(Boom, match="zero"):
            belated.compute(bad, good, scheduler=scheduler)


def held_until_gate(events):
    assert GATE.wait(60), "the test never opened the gate"
    events.append("task ran")
    return 7


def test_persist_returns_before_its_tasks_end(in_process):
    GATE.clear()
    events = []
    task = belated.delayed(held_until_gate)(events)
    persisted = in_process.persist(task)
    events.append("persist returned")
    GATE.set()
    assert persisted.key == task.key
    assert persisted.compute() == 7
    assert in_process.compute(belated.delayed(inc)(persisted)).result(timeout=60) == 8
    assert events == ["persist returned", "task ran"], "the task ran once, after persist returned"


@pytest.mark.parametrize("which", ["belated-threads", "belated-processes", "distributed"])
def test_a_persisted_failure_shows_only_where_it_is_used(which, request, in_process, local_cluster):
    client = {"belated-threads": in_process, "belated-processes": local_cluster}.get(which)
    client = client or request.getfixturevalue("reference")
    delayed = delayed_of(client)
    bad, good = client.persist([delayed(explode_on_zero)(0), delayed(explode_on_zero)(4)])
    assert client.compute(delayed(square)(good)).result(timeout=60) == 16
    with pytest.raises(Boom, match="zero"):
        client.compute(delayed(square)(bad)).result(timeout=60)
    futures = client.compute([delayed(inc)(bad), delayed(inc)(good)])
    module_of(client).wait(futures, timeout=60)
    assert [f.status for f in futures] == ["error", "finished"]
    if which != "distributed":
        with pytest.raises(Boom, match="zero"):
            bad.compute()
        assert good.compute() == 4


def submits_and_computes_inside(x):
    submitted = belated.get_client().submit(inc, x).result(timeout=60)
    return submitted + belated.delayed(inc)(x).compute(scheduler="sync")


def test_a_persisted_task_may_compute_and_submit_without_waiting_for_its_own_persist(in_process):
    persisted = in_process.persist(belated.delayed(submits_and_computes_inside)(1))
    assert persisted.compute() == 4


def test_result_without_timeout_is_interrupted_by_interrupt_main(in_process):
    import _thread

    GATE.clear()
    future = in_process.submit(gated, 1, pure=False)
    main = threading.main_thread().ident

    def interrupt_once_waiting():
        # Only once the main thread waits on a lock (within result()), where a missed interrupt hangs.
        for _ in range(6000):
            frame = sys._current_frames().get(main)
            names = set()
            while frame is not None:
                names.add(frame.f_code.co_name)
                frame = frame.f_back
            if "result" in names and "wait" in names:
                _thread.interrupt_main()
                return
            time.sleep(0.01)

    interrupter = threading.Thread(target=interrupt_once_waiting)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            future.result()
        assert not future.done(), "interrupted while the task still waited, not once it ended"
    finally:
        interrupter.join(timeout=60)
        GATE.set()
    assert future.result(timeout=60) == 1


def test_submit_and_map_pass_delayed_arguments_as_they_are_as_in_distributed(any_client):
    obj = delayed_of(any_client)(square)(3)
    other = any_client.submit(square, 2)
    expected = ["Delayed", ["Delayed", "int"], "int", "value=Delayed"]
    assert any_client.submit(type_names, obj, [obj, 1], other, value=obj).result(timeout=60) == expected
    assert any_client.gather(any_client.map(type_names, [obj, 1])) == [["Delayed"], ["int"]]
    # Computed where asked for: compute, or a future of it.
    assert any_client.submit(square, any_client.compute(obj)).result(timeout=60) == 81
