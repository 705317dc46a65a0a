"""The differential harness of test_client_differential.py for asynchronous clients: each scenario runs
on belated's two Clients and distributed's, each started by ``asyncio.run`` for the scenario. They are
kept out of that module: a synchronous distributed cluster open while ``asyncio.run`` ran one of these
left distributed's next cluster in this process failing to close ("IOLoop is closed")."""

import asyncio

import pytest
from helpers import forget_clients_of_ended_loops
from test_client_differential import CANCELLED, DASHBOARD, Api, inc, same
from worker_tasks import _client_api, explode, wait_exists

import belated

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(120)


ASYNCHRONOUS = {
    "processes": lambda: belated.Client(
        asynchronous=True, n_workers=2, threads_per_worker=1, memory_limit=None, dashboard_address=None
    ),
    "threads": lambda: belated.Client(
        asynchronous=True, processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ),
    "distributed": lambda: distributed.Client(
        asynchronous=True, processes=False, n_workers=2, threads_per_worker=1, dashboard_address=DASHBOARD
    ),
}


async def awaited_outcome(awaitable):
    """What awaiting ``awaitable`` gave, or the kind of exception it raised."""
    try:
        return "gave", await awaitable
    except CANCELLED:
        return "raised", "cancelled"
    except Exception as error:
        return "raised", type(error).__name__


def test_an_asynchronous_clients_futures_wait_and_nbytes_give_awaitables_as_distributed(tmp_path):
    async def scenario(client, api, directory):
        gate = directory / "gate"
        pending = client.submit(wait_exists, str(gate), pure=False)
        failed = client.submit(explode, 1, pure=False)
        try:
            # Each times out: the task cannot end before the gate opens below.
            timed_out = [
                await awaited_outcome(pending.result(timeout=0.05)),
                await awaited_outcome(pending.exception(timeout="50ms")),
                await awaited_outcome(api.wait([pending], timeout=0.05)),
            ]
        finally:
            gate.touch()
        cancelled = client.submit(inc, 1, pure=False)
        await cancelled.cancel()
        done, not_done = await api.wait({"both": [pending, failed]}, timeout=30)
        nobody = await api.wait([], timeout=30)
        sizes = await client.nbytes(keys=[pending.key], summary=False)
        return (
            timed_out,
            (len(done), len(not_done), len(nobody.done)),
            await awaited_outcome(pending.result(timeout=30)),
            await awaited_outcome(failed.result()),
            type(await failed.exception()).__name__,
            await failed.traceback() is not None,
            await pending.exception(),
            list(sizes.values()),
            cancelled.status,
        )

    async def observed(name, directory):
        async with ASYNCHRONOUS[name]() as client:
            return await asyncio.wait_for(scenario(client, Api(client), directory), 60)

    answers = {}
    for name in ASYNCHRONOUS:
        (tmp_path / name).mkdir()
        answers[name] = asyncio.run(observed(name, tmp_path / name))
    assert same(answers) == (
        [("raised", "TimeoutError")] * 3,
        (2, 0, 0),
        ("gave", True),
        ("raised", "Boom"),
        "Boom",
        True,
        None,
        [28],
        "cancelled",
    )


def submits_and_gathers(x):
    """A task launching tasks through its client: what its calls give there, as on a synchronous one."""
    api = _client_api()
    with api.worker_client() as client:
        future, failed = client.submit(inc, x, pure=False), client.submit(explode, x, pure=False)
        done, not_done = api.wait({"both": [future, failed]}, timeout=30)
        return (
            (done == {future, failed}, not_done, len(api.wait(future, timeout="10s").done)),
            future.result(timeout=30),
            type(failed.exception(timeout=30)).__name__,
            client.gather(client.map(inc, [x, x + 1])),
            client.gather([failed], errors="skip"),
        )


def test_tasks_of_an_asynchronous_client_block_on_their_clients_calls_as_in_distributed():
    async def observed(name):
        async with ASYNCHRONOUS[name]() as client:
            return await asyncio.wait_for(client.submit(submits_and_gathers, 1), 60)

    answers = {}
    for name in ASYNCHRONOUS:
        try:
            answers[name] = asyncio.run(observed(name))
        finally:
            forget_clients_of_ended_loops()  # the worker client distributed's task made
    assert same(answers) == ((True, set(), 1), 2, "Boom", [2, 3], [])
