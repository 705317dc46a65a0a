"""client.scatter on a local cluster puts each value in a worker once, as distributed does: later
tasks use it there (or fetch it worker to worker), ``result()`` fetches it, dropping the last future
releases it in the workers at once, and a value lost with its worker cancels its futures. Where
distributed's in-process cluster can answer (values held, results), the same assertions run on it."""

import gc
import os
import signal
import time
import tracemalloc

import pytest
from worker_tasks import Parcel, arrivals, payload_of, stored_count, wait_gone

import belated

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(120)


def held(client):
    """How many values the client's workers hold, in all."""
    return sum(client.run(stored_count).values())


def eventually(condition, what):
    """Waits (up to a timeout, not a measure) until ``condition()``."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def own_cluster(workers):
    return belated.Client(
        n_workers=workers, threads_per_worker=1, dashboard_address=None, set_as_default=False
    )


@pytest.fixture(params=["belated", "distributed"])
def client(request):
    if request.param == "distributed":
        yield request.getfixturevalue("reference")
        return
    with own_cluster(2) as own:
        yield own


def test_a_scattered_value_is_held_once_and_released_with_its_last_future(client):
    before = held(client)
    future = client.scatter(Parcel(7), hash=False)
    assert held(client) == before + 1
    results = [client.submit(payload_of, future, pure=False) for _ in range(3)]
    assert client.gather(results) == [7, 7, 7]
    assert future.result().payload == 7
    del results
    gc.collect()
    eventually(lambda: held(client) >= before + 1, "the value is held while its future lives")
    del future
    gc.collect()
    eventually(lambda: held(client) == before, "released with its last future")


def test_a_scattered_value_arrives_once_however_often_it_is_used():
    with own_cluster(1) as client:
        future = client.scatter(Parcel(3), hash=False)
        assert sum(client.run(arrivals).values()) == 1, "uploaded once"
        for _ in range(3):
            assert client.submit(payload_of, future, pure=False).result(timeout=60) == 3
        assert client.gather(client.map(payload_of, [future] * 5, pure=False)) == [3] * 5
        assert sum(client.run(arrivals).values()) == 1, "never sent again"
        assert client.scatter(Parcel(3), hash=False).result().payload == 3
        assert sum(client.run(arrivals).values()) == 2, "a new scatter sends its own value"


def test_an_equal_value_scattered_again_is_not_sent_again(client):
    first = client.scatter([1, 2, 3])
    before = held(client)
    second = client.scatter([1, 2, 3])
    assert [f.key for f in first] == [f.key for f in second]
    assert held(client) == before
    assert client.gather(second) == [1, 2, 3]


def test_a_released_scattered_value_leaves_its_worker_without_another_request(tmp_path):
    flag = tmp_path / "freed"
    with own_cluster(1) as client:
        future = client.scatter(Parcel(1, flag=str(flag)), hash=False)
        assert client.submit(payload_of, future).result(timeout=60) == 1
        assert not flag.exists()
        del future
        gc.collect()
        # Only the worker frees it, and nothing else is asked of the worker meanwhile.
        eventually(flag.exists, "the worker freed the value on the release alone")


def test_a_scattered_value_lost_with_its_worker_cancels_its_futures_as_in_distributed():
    # distributed 2026.8 (processes=True, SIGKILL of the holder): the future's status becomes
    # "cancelled", result() and a submit taking it raise CancelledError ("already forgotten").
    with own_cluster(2) as client:
        future = client.scatter({"lost-value": 41})["lost-value"]
        assert client.submit(int, future).result(timeout=60) == 41
        counts = client.run(stored_count)
        holders = [int(address.split("//")[1]) for address, count in counts.items() if count]
        for pid in holders:
            os.kill(pid, signal.SIGKILL)
        assert wait_gone(holders)
        with pytest.raises(belated.CancelledError, match="lost-value was lost with the worker"):
            future.result()
        assert future.status == "cancelled"
        consumer = client.submit(int, future)
        with pytest.raises(belated.CancelledError, match="lost-value was lost with the worker"):
            consumer.result(timeout=60)
        assert consumer.status == "cancelled"
        again = client.scatter({"lost-value": 41})["lost-value"]
        assert again.status == "finished", "scattered again, not the lost future"
        assert client.submit(int, again).result(timeout=60) == 41


def test_who_has_and_has_what_name_the_workers_holding_scattered_values(client):
    futures = client.scatter({"where-a": 1, "where-b": 2})
    who_has = client.who_has(list(futures.values()))
    assert sorted(who_has) == ["where-a", "where-b"]
    assert all(len(holders) == 1 for holders in who_has.values())
    addresses = set(client.scheduler_info()["workers"])
    assert {holders[0] for holders in who_has.values()} <= addresses
    has_what = client.has_what()
    assert set(has_what) == addresses
    for key, (holder,) in who_has.items():
        assert key in has_what[holder]
    assert client.who_has()["where-a"] == who_has["where-a"], "every held future by default"


def test_a_scattered_value_arrives_once_per_worker_holding_it_and_who_has_names_them():
    with own_cluster(2) as client:
        future = client.scatter(Parcel(5), hash=False)
        [first] = client.who_has(future)[future.key]
        # A worker that runs some of these away from the value fetches it once and keeps its copy.
        results = client.map(payload_of, [future] * 40, pure=False)
        assert client.gather(results) == [5] * 40
        holders = client.who_has(future)[future.key]
        assert holders[0] == first
        assert sum(client.run(arrivals).values()) == len(holders), "once per holder: never sent again"


def test_a_large_scattered_array_is_not_copied_in_this_process():
    # Its buffer goes to the worker out of band, as a task's argument: neither the picklability check
    # nor the send makes a copy of it here (each did, twice over: 2.5x the array at the peak).
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(2_000_000, dtype=numpy.float64)  # 16 MB
    with own_cluster(1) as client:
        client.scatter(0)  # the worker's start is not what is measured
        tracemalloc.start()
        try:
            future = client.scatter(array)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < array.nbytes / 8, f"{peak:,} bytes allocated at the peak of the scatter"
        assert client.submit(numpy.sum, future).result() == array.sum()
        assert numpy.array_equal(future.result(), array)
