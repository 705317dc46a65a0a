"""Tasks on worker processes that launch tasks: ``get_client()``, ``worker_client()``, ``secede()``
and ``rejoin()`` in a task of ``Client(processes=True)`` ask the parent's Client, over the task's own
connection. Each test runs the same task on a belated cluster and on distributed's LocalCluster and
compares the answers. And a call of a ``map`` cancelled alone on worker processes stops at once."""

import time

import pytest
from helpers import closing_distributed_clients
from worker_tasks import (
    Boom,
    alive,
    ask_for_client,
    chain_futures,
    fib,
    map_and_gather,
    sleep_forever_or_wait_for_gate,
    submit_and_cancel,
    submit_and_wait,
    submit_failing,
    wait_exists,
    wait_gone,
)

import belated

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def one_by_one():
    """A belated cluster of one worker process of one thread: a task waiting on work it submitted
    holds the only worker thread there is."""
    with belated.Client(
        n_workers=1, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as client:
        yield client


@pytest.fixture(scope="module")
def theirs():
    """distributed's LocalCluster of one worker of one thread (in-process, to keep it light)."""
    with (
        closing_distributed_clients(),
        distributed.Client(
            processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
        ) as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("task", "argument", "expected"),
    [
        (fib, 7, 13),
        (submit_and_wait, 3, 9),
        (map_and_gather, [1, 2, 3], [1, 4, 9]),
        (chain_futures, 4, 17),
    ],
)
def test_a_task_that_submits_and_waits_terminates_on_a_full_pool_as_in_distributed(
    task, argument, expected, one_by_one, theirs
):
    assert theirs.submit(task, argument).result(timeout=120) == expected
    assert one_by_one.submit(task, argument).result(timeout=120) == expected


def test_many_tasks_that_submit_at_once_all_finish(local_cluster):
    # More waiting tasks than the cluster has worker threads (2 x 2).
    futures = local_cluster.map(submit_and_wait, range(8))
    assert local_cluster.gather(futures) == [x * x for x in range(8)]


def test_a_failure_of_submitted_work_reaches_the_task_and_then_its_caller(one_by_one, theirs):
    for client in (theirs, one_by_one):
        with pytest.raises(Boom, match="bad 5"):
            client.submit(submit_failing, 5).result(timeout=120)


def test_the_worker_client_is_a_client_of_the_parent(one_by_one, theirs):
    assert theirs.submit(ask_for_client, 0).result(timeout=60) == "Client"
    assert one_by_one.submit(ask_for_client, 0).result(timeout=60) == "WorkerClient"


def test_a_task_cancels_its_future_with_distributeds_keywords(one_by_one, theirs, tmp_path):
    # A future in a task of a worker process took no reason= or msg=: code written for distributed's
    # Future.cancel failed there with a TypeError (the parent's Future took them).
    gate = tmp_path / "gate"
    try:
        for client in (theirs, one_by_one):
            assert client.submit(submit_and_cancel, str(gate)).result(timeout=60) == (True, "cancelled")
    finally:
        gate.touch()  # distributed's thread goes on waiting after the cancel


def test_get_client_in_a_worker_process_without_a_client_says_why():
    with pytest.raises(ValueError, match=r"worker process without a Client.*scheduler='processes'"):
        belated.delayed(ask_for_client)(0).compute(scheduler="processes")


def test_a_call_of_a_map_cancelled_alone_stops_at_once_and_its_sibling_finishes(local_cluster, tmp_path):
    sleeping, gated = local_cluster.map(
        sleep_forever_or_wait_for_gate, ["sleep", "gate"], [str(tmp_path)] * 2, pure=False
    )
    assert wait_exists(tmp_path / "pid", 60), "the sleeping call started"
    pid = int((tmp_path / "pid").read_text())
    sleeping.cancel()
    assert sleeping.cancelled()
    # Its worker process is killed while the sibling still waits for the gate.
    assert wait_gone([pid], 60), "the process of the cancelled call is gone"
    assert not gated.done()
    (tmp_path / "gate").touch()
    # The sibling finishes, on a live worker (its first one too was killed, if it was the same).
    ran_on = gated.result(timeout=60)
    assert ran_on != pid and alive(ran_on)
    assert sleeping.status == "cancelled" and gated.status == "finished"
    deadline = time.monotonic() + 60
    # The replacement starts in the background: until it is up, the slot may still show the killed pid.
    while (
        len(local_cluster.worker_pids) < 2 or pid in local_cluster.worker_pids
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(local_cluster.worker_pids) == 2 and pid not in local_cluster.worker_pids, "replaced"
