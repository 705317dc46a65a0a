"""Scaling a local cluster in place, as distributed's LocalCluster does: scaling up adds workers beside
the running ones (a running task is not started again), scaling down retires workers only after their
running tasks ended and moves the results the client keeps there to the workers that stay (none
computed again, none sent again from this process), and adapt() follows queued work between its bounds
with distributed's interval and wait_count. Where distributed is installed, the same test runs on its
LocalCluster. Every wait is on an event (files the tasks write, the workers the cluster lists), with
a timeout; none bounds how long anything takes."""

import os
import time
from pathlib import Path

import numpy as np
import pytest

import belated

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(180)

# belated's workers are processes; distributed's in-process workers keep the comparison light (what
# is compared is which tasks run and how often, not how processes start).
MAKERS = {
    "belated": lambda n: belated.Client(n_workers=n, threads_per_worker=1, dashboard_address=None),
    "distributed": lambda n: distributed.Client(
        n_workers=n, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=40
    ),
}
BOTH = pytest.mark.parametrize("make", list(MAKERS.values()), ids=list(MAKERS))


def until(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def workers(client):
    return len(client.scheduler_info()["workers"])


def wait_for_file(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"the test never made {path}"
        time.sleep(0.01)


def started_then_gated(x, folder):
    """Notes that it started (a line in ``folder/started``), then waits for ``folder/gate``."""
    with open(os.path.join(folder, "started"), "a") as log:
        log.write(f"{x}\n")
    wait_for_file(os.path.join(folder, "gate"))
    return x


def meet(i, folder, parties):
    """Returns only once ``parties`` calls run at the same time (each leaves a file and waits for
    the others')."""
    Path(folder, f"party-{i}").touch()
    deadline = time.monotonic() + 60
    while len([name for name in os.listdir(folder) if name.startswith("party-")]) < parties:
        assert time.monotonic() < deadline, "the others never ran at the same time"
        time.sleep(0.01)
    return os.getpid()


def counted_square(x, calls):
    with open(calls, "a") as log:
        log.write(f"{x}\n")
    return x * x


def lines(path):
    return sorted(Path(path).read_text().split()) if os.path.exists(path) else []


@BOTH
def test_scale_up_adds_workers_beside_a_running_task_which_is_not_started_again(make, tmp_path):
    with make(1) as client:
        running = client.submit(started_then_gated, 7, str(tmp_path), pure=False)
        until(lambda: lines(tmp_path / "started") == ["7"], "the task started")
        first = set(client.run(os.getpid).values())
        client.cluster.scale(4)
        until(lambda: workers(client) == 4, "four workers")
        assert first <= set(client.run(os.getpid).values()), "the running worker stays"
        assert not running.done()
        # Three new workers of one thread each run three calls at once while the first one is busy.
        meeting = tmp_path / "meeting"
        meeting.mkdir()
        met = client.gather(client.map(meet, range(3), folder=str(meeting), parties=3, pure=False))
        assert len(set(met)) == 3 or make is MAKERS["distributed"], "three processes"
        (tmp_path / "gate").touch()
        assert running.result(timeout=60) == 7
        assert lines(tmp_path / "started") == ["7"], "started once: not restarted by the scale"


@BOTH
def test_scale_down_keeps_persisted_and_scattered_values_computing_and_sending_none_again(make, tmp_path):
    import dask

    calls = str(tmp_path / "calls")
    lazy = belated.delayed if make is MAKERS["belated"] else dask.delayed
    with make(3) as client:
        persisted = client.persist([lazy(counted_square)(i, calls) for i in range(6)])
        assert client.compute(lazy(sum)(persisted)).result(timeout=60) == 55
        array = np.arange(100_000, dtype=np.int64)  # 800 kB: kept in a worker, not sent with calls
        scattered = client.scatter(array)
        assert client.submit(np.sum, scattered).result(timeout=60) == array.sum()
        stats = client.cluster_stats() if make is MAKERS["belated"] else None
        client.cluster.scale(1)
        until(lambda: workers(client) == 1, "one worker left")
        assert client.compute(lazy(max)(persisted)).result(timeout=60) == 25
        if stats is not None:
            # distributed 2026.8's in-process LocalCluster retires workers with their results: it
            # computes persisted ones again (its log says so) and, when the scattered value was on
            # a retired worker, cancels its futures ("lost dependencies"); so on distributed only
            # the persisted values are compared.
            assert client.submit(np.sum, scattered).result(timeout=60) == array.sum()
            assert (scattered.result(timeout=60) == array).all()
            assert lines(calls) == [str(i) for i in range(6)], "each computed once"
            after = client.cluster_stats()
            assert after["recomputed"] == stats["recomputed"] == 0
            assert after["uploaded"] == stats["uploaded"], "nothing sent again from this process"
            assert after["transferred"] > stats["transferred"], "moved from worker to worker"


def test_scale_down_never_kills_a_running_task_and_retires_once_it_ended(tmp_path):
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        gated = client.map(started_then_gated, [1, 2], folder=str(tmp_path), pure=False)
        until(lambda: lines(tmp_path / "started") == ["1", "2"], "both started, one per worker")
        before = client.worker_pids
        client.cluster.scale(1)
        assert client.worker_pids == before, "not retired under its running task"
        (tmp_path / "gate").touch()
        assert client.gather(gated) == [1, 2]
        assert lines(tmp_path / "started") == ["1", "2"], "neither killed and run again"
        until(lambda: len(client.worker_pids) == 1, "retired once its task ended")
        assert client.worker_pids == before[:1], "the first worker stays, the last one retires"
        assert client.cluster_stats()["replaced"] == 0


def test_a_scale_down_while_a_persist_runs_moves_its_results_computing_none_again(tmp_path):
    calls = str(tmp_path / "calls")
    with belated.Client(n_workers=3, threads_per_worker=1, dashboard_address=None) as client:
        gate = str(tmp_path / "gate")
        # Many results: their futures settle one by one after the persist's tasks have all ended.
        persisted = client.persist(
            [belated.delayed(counted_square)(i, calls) for i in range(2000)]
            + [belated.delayed(started_then_gated)(-1, str(tmp_path))]
        )
        until(lambda: os.path.exists(tmp_path / "started"), "the persist runs")
        client.cluster.scale(1)
        Path(gate).touch()
        until(lambda: len(client.worker_pids) == 1, "retired once the persist ended")
        assert belated.compute(*persisted[:-1]) == tuple(i * i for i in range(2000))
        assert lines(calls) == sorted(str(i) for i in range(2000)), "each computed once"


def test_scaling_up_again_before_a_retirement_keeps_the_workers(tmp_path):
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        gated = client.submit(started_then_gated, 1, str(tmp_path), pure=False)
        until(lambda: lines(tmp_path / "started") == ["1"], "started")
        before = client.worker_pids
        client.cluster.scale(1)
        client.cluster.scale(2)
        (tmp_path / "gate").touch()
        assert gated.result(timeout=60) == 1
        meeting = tmp_path / "meeting"
        meeting.mkdir()
        met = client.gather(client.map(meet, range(2), folder=str(meeting), parties=2, pure=False))
        assert sorted(met) == sorted(before), "both workers run tasks: the retirement was called off"


@BOTH
def test_adapt_adds_workers_for_queued_tasks_and_retires_them_when_idle(make, tmp_path):
    with make(1) as client:
        adaptive = client.cluster.adapt(minimum=1, maximum=3, interval="20ms", wait_count=2)
        try:
            # Three calls that return only when they run at once: only three workers can.
            met = client.gather(client.map(meet, range(3), folder=str(tmp_path), parties=3, pure=False))
            assert len(met) == 3
            until(lambda: workers(client) == 1, "back to the minimum once idle")
        finally:
            adaptive.stop()


@BOTH
@pytest.mark.parametrize("through", ["client.compute", "compute"])
def test_adapt_adds_workers_for_the_tasks_of_one_computation(make, through, tmp_path):
    import dask

    lazy = belated.delayed if make is MAKERS["belated"] else dask.delayed
    with make(1) as client:
        adaptive = client.cluster.adapt(minimum=1, maximum=3, interval="20ms", wait_count=2)
        try:
            # One result, three tasks that return only when they run at once: only three workers can.
            met = lazy(list)([lazy(meet)(i, str(tmp_path), 3) for i in range(3)])
            # compute() runs on the client, the default scheduler while it is open.
            met = client.compute(met).result(timeout=120) if through == "client.compute" else met.compute()
            assert len(met) == 3
        finally:
            adaptive.stop()


def test_adapt_scales_down_only_after_wait_count_looks_in_a_row():
    with belated.Client(n_workers=3, threads_per_worker=1, dashboard_address=None) as client:
        # An interval no look comes in by itself: the test takes each look.
        adaptive = client.cluster.adapt(minimum=1, maximum=3, interval=3600, wait_count=3)
        try:
            assert [adaptive.recommendation() for _ in range(4)] == [None, None, 1, None]
        finally:
            adaptive.stop()
        with pytest.raises(ValueError, match="wait_count"):
            client.cluster.adapt(wait_count=0)
        with pytest.raises(ValueError, match="interval"):
            client.cluster.adapt(interval="soon")


def test_adapt_past_what_the_cluster_holds_caps_its_maximum_and_goes_on(monkeypatch, caplog):
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        adaptive = client.cluster.adapt(minimum=1, maximum=8, interval=3600)
        try:
            asked = []

            def refused(n):
                asked.append(n)
                raise ValueError(f"no room for {n} workers")

            monkeypatch.setattr(adaptive._cluster, "scale", refused)
            monkeypatch.setattr(adaptive, "target", lambda: min(adaptive.maximum, 8))
            with caplog.at_level("WARNING", logger="belated.cluster"):
                assert adaptive.step(), "the policy goes on"
            assert asked == [8]
            assert adaptive.maximum == 1
            assert "no room for 8 workers; at most 1 workers from now on" in caplog.text
            assert adaptive.step() and asked == [8], "not asked again"
        finally:
            adaptive.stop()


def test_a_killed_worker_is_not_listed_and_a_value_it_kept_has_no_holder():
    import signal

    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        scattered = client.scatter({"a": 1})["a"]
        (holder,) = client.who_has(scattered)[scattered.key]
        pid = int(holder.removeprefix("local://"))
        os.kill(pid, signal.SIGKILL)
        until(lambda: pid not in client.worker_pids, "the dead worker left the list")
        # Nothing ran since, so nothing replaced it yet: the list shows what runs.
        assert len(client.worker_pids) == 1
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.who_has(scattered) == {scattered.key: []}


def test_a_released_future_lets_go_of_its_value_once_no_other_future_holds_it():
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        first = client.scatter("a value", hash=True)
        second = client.scatter("a value", hash=True)
        assert first is not second and first.key == second.key
        first.release()
        first.release()
        assert first.result(timeout=60) == second.result(timeout=60) == "a value", "still held"
        assert client.who_has(first)[first.key] != []
        second.release()
        with pytest.raises(belated.CancelledError):
            first.result(timeout=60)
        assert first.cancelled() and second.cancelled()
        assert client.has_what() == {address: [] for address in client.has_what()}, "released"


@BOTH
def test_a_broadcast_scatter_is_in_every_worker_when_it_returns(make):
    with make(3) as client:
        future = client.scatter(np.arange(1000), broadcast=True)
        assert len(client.who_has(future)[future.key]) == 3
        assert client.submit(np.sum, future).result(timeout=60) == sum(range(1000))
        if make is MAKERS["belated"]:
            assert client.cluster_stats()["transferred"] == 2, "copied from the first, once each"


def test_a_scale_past_the_threads_limit_is_refused_and_changes_nothing():
    with belated.Client(n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        with pytest.raises(ValueError, match="at most 4096"):
            client.cluster.scale(3000)
        assert workers(client) == 1
        client.cluster.scale(2)
        assert workers(client) == 2
        assert client.submit(counted_square, 3, os.devnull).result(timeout=60) == 9
