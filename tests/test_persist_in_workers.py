"""Client.persist on a local cluster keeps its results in the worker processes that computed them, as
distributed does: a later computation uses them there, computing one fetches only it, dropping the
last object holding one releases it in the workers, and one lost with its worker is computed again
from its task. Where distributed is installed the same assertions run against its Client."""

import collections
import concurrent.futures
import gc
import os
import signal
import time
import weakref

import pytest
from worker_tasks import (
    add_one,
    gated_square,
    make_lock,
    numbered_run,
    square,
    stored_count,
    type_name,
    wait_gone,
)

import belated
from belated import _futures

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = pytest.mark.timeout(120)


def held(client):
    """How many values the client's workers hold, in all."""
    return sum(client.run(stored_count).values())


def eventually(condition, what):
    """Waits (up to a timeout, not a measure) until ``condition()``: releases travel with the
    workers' next request, and the computation that last held a value lets go of it on its own
    thread."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(params=["belated", "distributed"])
def client(request):
    """A cluster of this test's own, whose workers hold nothing other tests left."""
    if request.param == "distributed":
        yield request.getfixturevalue("reference")
        return
    with belated.Client(
        n_workers=2, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as own:
        yield own


def delayed_of(client):
    return dask.delayed if isinstance(client, distributed.Client) else belated.delayed


def test_persisted_results_stay_in_the_workers_until_the_last_object_holding_them_is_dropped(client):
    delayed = delayed_of(client)
    before = held(client)
    a, b = client.persist([delayed(square)(3), delayed(square)(4)])
    assert a.compute(scheduler=client) == 9, "computing one fetches it; it stays in its worker"
    eventually(lambda: held(client) == before + 2, "both results in the workers")
    total = delayed(sum)([a, b])
    assert client.compute(total).result(timeout=60) == 25
    assert client.compute(total).result(timeout=60) == 25, "used again where they are"
    # The sum's worker may have received a copy of the other's value, released with it.
    with_copies = held(client)
    del a, total
    gc.collect()
    eventually(lambda: held(client) < with_copies, "a released")
    assert b.compute(scheduler=client) == 16
    del b
    gc.collect()
    eventually(lambda: held(client) == before, "b released")


def test_persist_returns_while_its_task_is_held_at_a_gate(local_cluster, tmp_path):
    gate = tmp_path / "gate"
    persisted = local_cluster.persist(belated.delayed(gated_square)(5, str(gate)))
    # The task cannot have ended: it waits for the gate, which opens only now.
    assert not gate.exists()
    gate.touch()
    assert persisted.compute(scheduler=local_cluster) == 25
    assert local_cluster.compute(belated.delayed(square)(persisted)).result(timeout=60) == 625


def test_a_computation_starts_while_an_earlier_persist_runs_and_only_what_needs_it_waits(
    any_client, tmp_path
):
    delayed = delayed_of(any_client)
    gate = tmp_path / "gate"
    persisted = any_client.persist(delayed(gated_square)(6, str(gate)))
    try:
        # The persist's task holds a thread until the gate opens, which happens only below.
        alone = any_client.compute(delayed(square)(7))
        assert alone.result(timeout=60) == 49
        assert delayed(square)(9).compute(scheduler=any_client) == 81
        independent, dependent = any_client.compute([delayed(square)(8), delayed(square)(persisted)])
        assert independent.result(timeout=60) == 64
        assert not dependent.done()
        assert not gate.exists()
    finally:
        gate.touch()
    assert dependent.result(timeout=60) == 36 * 36


def test_a_persisted_result_does_not_come_back_to_the_caller():
    # A lock cannot be pickled: it can only be used where it was made (one worker: no transfer).
    with belated.Client(
        n_workers=1, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as client:
        lock = client.persist(belated.delayed(make_lock)())
        assert client.compute(belated.delayed(type_name)(lock)).result(timeout=60) == "lock"
        with pytest.raises(TypeError, match="cannot be pickled"):
            lock.compute(scheduler=client)  # asked for here, it has to travel


def test_a_persisted_result_lost_with_its_worker_is_computed_again_from_its_task():
    with belated.Client(
        n_workers=2, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as client:
        persisted = client.persist(belated.delayed(square)(7))
        assert persisted.compute(scheduler=client) == 49
        counts = client.run(stored_count)
        [holder] = [int(address.split("//")[1]) for address, count in counts.items() if count == 1]
        os.kill(holder, signal.SIGKILL)
        assert wait_gone([holder])
        assert client.compute(belated.delayed(square)(persisted)).result(timeout=60) == 49 * 49
        assert persisted.compute(scheduler=client) == 49
        assert client.cluster_stats()["replaced"] == 1


def test_a_persisted_result_lost_with_its_worker_is_computed_again_once_and_kept_as_in_distributed(tmp_path):
    runs = tmp_path / "runs"
    with belated.Client(
        n_workers=2, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as client:
        persisted = client.persist(belated.delayed(numbered_run, pure=False)(str(runs)))
        assert persisted.compute(scheduler=client) == 1
        counts = client.run(stored_count)
        [holder] = [int(address.split("//")[1]) for address, count in counts.items() if count == 1]
        os.kill(holder, signal.SIGKILL)
        assert wait_gone([holder])
        # The first use computes it again; the later ones, directly or as an input, use that result.
        assert persisted.compute(scheduler=client) == 2
        assert persisted.compute(scheduler=client) == 2
        assert client.compute(belated.delayed(add_one)(persisted)).result(timeout=60) == 3
        assert runs.read_text().count("run") == 2


@pytest.mark.parametrize("how", ["future", "client"])
def test_cancelling_a_finished_scattered_future_releases_its_value_in_the_workers(client, how):
    before = held(client)
    future = client.scatter(b"value" * 1000)
    assert future.result(timeout=60) == b"value" * 1000
    eventually(lambda: held(client) == before + 1, "the value in a worker")
    if how == "future":
        future.cancel()
    else:
        client.cancel(future)
    # The future itself is still referenced here: the cancel, not a drop, lets go of the value.
    eventually(lambda: held(client) == before, "released by the cancel")
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=60)
    with pytest.raises(concurrent.futures.CancelledError):
        client.submit(len, future).result(timeout=60)


def _scheduler_holds(key, dask_scheduler=None):
    return key in dask_scheduler.tasks


def cancel_reached_the_scheduler(client, key):
    """distributed's cancel reaches its scheduler after ``Client.cancel`` returns, and a compute sent
    before then still finds the value; belated's cancel is done when it returns."""
    if isinstance(client, distributed.Client):
        eventually(lambda: not client.run_on_scheduler(_scheduler_holds, key), "the scheduler forgot it")


@pytest.fixture(params=["belated", "belated-threads", "distributed"])
def own_client(request):
    """A client of this test's own and whether its tasks run in workers: as ``client``, or a belated
    Client running them in this process."""
    if request.param == "distributed":
        yield request.getfixturevalue("reference"), True
        return
    threads = request.param == "belated-threads"
    kwargs = {"processes": False} if threads else {"n_workers": 2, "threads_per_worker": 1}
    with belated.Client(dashboard_address=None, set_as_default=False, **kwargs) as own:
        yield own, not threads


def test_cancelling_a_persisted_object_lets_go_of_its_result_and_computing_it_raises(own_client):
    client, in_workers = own_client
    futures_of = belated.futures_of if isinstance(client, belated.Client) else distributed.futures_of
    delayed = delayed_of(client)
    before = held(client) if in_workers else 0
    kept, cancelled = client.persist([delayed(square)(3), delayed(square)(4)])
    assert cancelled.compute(scheduler=client) == 16
    (future,) = futures_of(cancelled)
    assert future.key == cancelled.key
    assert future.status == "finished", "a finished persist's future, as distributed gives it"
    if in_workers:
        eventually(lambda: held(client) == before + 2, "both results in the workers")
    client.cancel(cancelled)
    assert future.cancelled()
    cancel_reached_the_scheduler(client, future.key)
    with pytest.raises(concurrent.futures.CancelledError):
        cancelled.compute(scheduler=client)
    if in_workers:
        # Still referenced here: the cancel, not a drop, lets go of the value.
        eventually(lambda: held(client) == before + 1, "released by the cancel")
    assert kept.compute(scheduler=client) == 9, "the other result of the persist stays"


def test_cancelling_a_persist_still_running_ends_it_and_computing_it_raises(any_client, tmp_path):
    if isinstance(any_client, distributed.Client):
        # Its compute sent right after the cancel of a running task ran the task again in about
        # half the runs, even once the scheduler had forgotten the key: no reference to compare with.
        pytest.skip("distributed's cancel of a running persist races a compute sent after it")
    delayed = delayed_of(any_client)
    futures_of = belated.futures_of if isinstance(any_client, belated.Client) else distributed.futures_of
    gate = tmp_path / "gate"
    persisted = any_client.persist(delayed(gated_square)(7, str(gate)))
    (future,) = futures_of(persisted)
    any_client.cancel(persisted)
    gate.touch()  # what still runs of it (on threads, which cannot be stopped) may end
    assert future.cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        persisted.compute(scheduler=any_client)


def test_a_persist_cancelled_while_its_result_is_being_kept_is_cancelled(local_cluster, monkeypatch):
    done = _futures.Persisted._done

    def cancelled_first(persisted, cell):
        # The result has come, and is cancelled through the computation that made it before this
        # object holds it alone.
        persisted.future.cancel()
        done(persisted, cell)

    monkeypatch.setattr(_futures.Persisted, "_done", cancelled_first)
    persisted = local_cluster.persist(belated.delayed(square)(5))
    monkeypatch.undo()
    with pytest.raises(concurrent.futures.CancelledError):
        persisted.compute(scheduler=local_cluster)


def test_a_persist_finishing_while_it_is_cancelled_is_cancelled(local_cluster, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    persisted = local_cluster.persist(belated.delayed(gated_square)(8, str(gate)))
    (future,) = belated.futures_of(persisted)
    cancel, calls = _futures.Computation.cancel, []

    def finishing_meanwhile(computation, index):
        # The cancel has read the persist's computation; the result comes, and this object holds it
        # alone, before the cancel reaches that computation.
        calls.append(computation)
        if len(calls) == 1:
            gate.touch()
            eventually(lambda: future._computation is not computation, "the result held alone")
        cancel(computation, index)

    monkeypatch.setattr(_futures.Computation, "cancel", finishing_meanwhile)
    future.cancel()
    monkeypatch.undo()
    with pytest.raises(concurrent.futures.CancelledError):
        persisted.compute(scheduler=local_cluster)


@pytest.fixture(params=["belated", "distributed"])
def default_client(request):
    """A one-worker cluster (no transfers) of this test's own, the default scheduler while open."""
    if request.param == "distributed":
        yield request.getfixturevalue("reference")
        return
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as own:
        yield own


def test_top_level_persist_with_a_default_client_keeps_the_results_in_the_workers(default_client):
    on_dask = isinstance(default_client, distributed.Client)
    delayed, persist = (dask.delayed, dask.persist) if on_dask else (belated.delayed, belated.persist)
    before = held(default_client)
    # A lock cannot be pickled: it cannot come back here, only stay where it was made.
    (lock, [squared]) = persist(delayed(make_lock)(), [delayed(square, pure=True)(5)])
    alone = delayed(square)(6).persist()
    eventually(lambda: held(default_client) == before + 3, "the three results in the worker")
    assert delayed(type_name)(lock).compute() == "lock"
    assert delayed(sum)([squared, alone]).compute() == 61
    assert squared.key == delayed(square, pure=True)(5).key


Point = collections.namedtuple("Point", "x y")


def test_top_level_persist_with_a_default_client_looks_into_containers_as_dask_does(default_client):
    on_dask = isinstance(default_client, distributed.Client)
    delayed, persist = (dask.delayed, dask.persist) if on_dask else (belated.delayed, belated.persist)
    # Each a task on a task: persisted, it is one task holding the result.
    point, pair, values = persist(
        Point(delayed(square)(delayed(square)(2)), 1),
        {delayed(square, pure=True)(delayed(square)(3))},
        {"deep": [(delayed(square)(delayed(square)(4)),)]},
    )
    assert type(point) is Point and point.y == 1
    assert type(pair) is set and type(values["deep"][0]) is tuple
    persisted = [point.x, next(iter(pair)), values["deep"][0][0]]
    assert [len(each.__dask_graph__()) for each in persisted] == [1, 1, 1]
    assert [each.compute() for each in persisted] == [16, 81, 256]


@pytest.fixture
def without_gc():
    """The garbage collector off: what is released goes with its last reference, not with a gc pass
    (a reference cycle would hold it)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_dropping_the_last_reference_releases_a_persisted_result_without_a_gc_pass(client, without_gc):
    delayed = delayed_of(client)
    before = held(client)
    a, b = client.persist([delayed(square)(3), delayed(square)(4)])
    total = delayed(sum)([a, b])
    assert client.compute(total).result(timeout=60) == 25
    assert a.compute(scheduler=client) == 9
    eventually(lambda: held(client) >= before + 2, "both results in the workers")
    with_copies = held(client)
    del a, total
    eventually(lambda: held(client) < with_copies, "a released")
    del b
    eventually(lambda: held(client) == before, "b released")


def test_dropping_a_persist_made_with_a_default_client_releases_it_without_a_gc_pass(
    default_client, without_gc
):
    delayed = dask.delayed if isinstance(default_client, distributed.Client) else belated.delayed
    before = held(default_client)
    alone = delayed(square)(6).persist()
    assert alone.compute() == 36
    eventually(lambda: held(default_client) == before + 1, "the result in the worker")
    del alone
    eventually(lambda: held(default_client) == before, "released")


def test_dropping_a_future_or_persist_in_process_lets_go_of_its_result_without_a_gc_pass(
    in_process, without_gc
):
    # Objects a weak reference can follow, held by the process's futures themselves (not copies).
    persisted = in_process.persist(belated.delayed(collections.OrderedDict)())
    future = in_process.submit(collections.OrderedDict)
    results = [weakref.ref(persisted.compute(scheduler=in_process)), weakref.ref(future.result(timeout=60))]
    assert [result() for result in results] == [{}, {}], "held while the persist and future are"
    del persisted, future
    eventually(lambda: [result() for result in results] == [None, None], "both let go of")
