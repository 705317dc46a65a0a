"""A differential harness: each scenario runs on belated's Client of worker processes, belated's Client
of threads (``processes=False``) and distributed's Client, and what it observes (results, exception
kinds, statuses, key shapes, sizes, how often a task ran) must be the same on all three. The clusters
are started once for the module; each scenario works in a directory of its own per client, where
its tasks count their runs in files (which worker processes see too)."""

import logging
import queue
import re
import threading

import numpy as np
import pytest
from helpers import closing_distributed_clients
from worker_tasks import (
    Boom,
    count_then_wait,
    counted_inc,
    explode,
    fail_first_then_wait,
    fail_first_time,
    type_names,
    wait_exists,
)

import belated

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

pytestmark = pytest.mark.timeout(120)

CANCELLED = (belated.CancelledError, distributed.client.FutureCancelledError)
UUID = r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}"
# distributed's dashboards on a free port: given None, distributed still asks for 8787, and warns when
# another cluster (another test run) holds it.
DASHBOARD = ":0"


def inc(x):
    return x + 1


@pytest.fixture(scope="module")
def clients():
    """The three clients compared, by name; distributed's is the default one while open, as its wait
    and as_completed need."""
    with (
        closing_distributed_clients(),
        belated.Client(
            n_workers=2, threads_per_worker=1, memory_limit=None, dashboard_address=None, set_as_default=False
        ) as processes,
        belated.Client(
            processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None, set_as_default=False
        ) as threads,
        distributed.Client(
            processes=False, n_workers=2, threads_per_worker=1, dashboard_address=DASHBOARD
        ) as reference,
    ):
        yield {"processes": processes, "threads": threads, "distributed": reference}


def observe(clients, tmp_path, scenario):
    """``scenario(client, api, directory)`` on each client (``api``: the module of its wait,
    as_completed, delayed...), and what it returned, by client name."""
    answers = {}
    for name, client in clients.items():
        directory = tmp_path / name
        directory.mkdir()
        answers[name] = scenario(client, Api(client), directory)
    return answers


def same(answers):
    """The answer every client gave, asserting they agree."""
    expected = answers["distributed"]
    assert answers == dict.fromkeys(answers, expected)
    return expected


class Api:
    """The module-level functions of the client's library."""

    def __init__(self, client):
        self.ours = isinstance(client, belated.Client)
        module = belated if self.ours else distributed
        self.wait, self.as_completed, self.futures_of = module.wait, module.as_completed, module.futures_of
        self.fire_and_forget = module.fire_and_forget
        self.delayed = belated.delayed if self.ours else dask.delayed

    def compute(self, client, obj):
        """Computes a (persisted) Delayed through the client."""
        return obj.compute(scheduler=client) if self.ours else client.compute(obj).result(timeout=30)


def outcome(call):
    """What ``call()`` gave, or the kind of exception it raised (named alike for the clients)."""
    try:
        return "gave", call()
    except CANCELLED:
        return "raised", "cancelled"
    except Exception as error:
        return "raised", type(error).__name__


def runs(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def state(future):
    return future.status, future.done(), future.cancelled()


def finished_failed_and_cancelled(client, api):
    """Three futures, once settled: one that finished (with 2), one that failed (Boom) and one
    cancelled after it finished."""
    finished = client.submit(inc, 1, pure=False)
    failed = client.submit(explode, 1, pure=False)
    cancelled = client.submit(inc, 2, pure=False)
    api.wait([finished, failed, cancelled], timeout=30)
    cancelled.cancel()
    return finished, failed, cancelled


# -- wait and as_completed ----------------------------------------------------------------------------


def test_wait_looks_in_containers_and_persisted_objects_as_distributed(clients, tmp_path):
    def scenario(client, api, _):
        one, two = client.submit(inc, 1), client.submit(inc, 2)
        persisted = client.persist([api.delayed(inc)(10), api.delayed(inc)(11)])
        given = ([], [one, one], {"a": one, "b": [two, 3]}, ((one,), "text", None), persisted, persisted[0])
        sizes = []
        for fs in given:
            done, not_done = api.wait(fs, timeout=30)
            sizes.append((len(done), len(not_done)))
        return sizes, [api.compute(client, p) for p in persisted]

    assert same(observe(clients, tmp_path, scenario)) == (
        [(0, 0), (1, 0), (2, 0), (1, 0), (2, 0), (1, 0)],
        [11, 12],
    )


def test_wait_waits_for_the_futures_an_iterator_gives(clients, tmp_path):
    """Unlike distributed's, whose futures_of finds none in an iterator, so that it waits for none."""
    for name in ("processes", "threads"):
        gate = tmp_path / name
        pending = clients[name].submit(wait_exists, str(gate), pure=False)
        try:
            with pytest.raises(TimeoutError):
                belated.wait((future for future in [pending]), timeout=0.05)
        finally:
            gate.touch()
        done, not_done = belated.wait(iter([pending]), timeout=30)
        assert (done, not_done) == ({pending}, set())


def test_wait_refuses_a_future_of_another_library(clients):
    reference = clients["distributed"]
    theirs = reference.submit(inc, 1)
    for client in (clients["processes"], clients["threads"]):
        with pytest.raises(TypeError, match="belated Futures"):
            belated.wait([client.submit(inc, 1), theirs], timeout=30)


def test_wait_for_the_first_raises_timeout_error_once_none_is_done_as_distributed(clients, tmp_path):
    def scenario(client, api, directory):
        gate = directory / "gate"
        pending = client.submit(wait_exists, str(gate), pure=False)
        try:
            # The timeout passes: the task cannot end before the gate opens below.
            timed_out = [
                outcome(lambda when=when: api.wait([pending], timeout=0.05, return_when=when))
                for when in ("FIRST_COMPLETED", "ALL_COMPLETED")
            ]
            if api.ours:  # belated's FIRST_EXCEPTION (concurrent.futures'): neither failed nor all done
                first_failure = outcome(lambda: api.wait(pending, 0.05, "FIRST_EXCEPTION"))
                assert first_failure == ("raised", "TimeoutError")
        finally:
            gate.touch()
        done, not_done = api.wait([pending], timeout=30, return_when="FIRST_COMPLETED")
        return timed_out, (len(done), len(not_done)), pending.result(timeout=30)

    assert same(observe(clients, tmp_path, scenario)) == (
        [("raised", "TimeoutError"), ("raised", "TimeoutError")],
        (1, 0),
        True,
    )


def test_timeouts_may_be_strings_as_in_distributed(clients, tmp_path):
    def scenario(client, api, directory):
        done = client.submit(inc, 1)
        pending = client.submit(wait_exists, str(directory / "gate"), pure=False)
        try:
            # Each times out: the task cannot end before the gate opens below.
            timed_out = [
                outcome(lambda: pending.result(timeout="50ms")),
                outcome(lambda: pending.exception(timeout="0.05s")),
                outcome(lambda: api.wait([pending], timeout="50 ms")),
                outcome(lambda: list(api.as_completed([pending], timeout="50ms"))),
            ]
        finally:
            (directory / "gate").touch()
        return timed_out, (
            done.result(timeout="10s"),
            done.exception(timeout="10s"),
            len(api.wait([done, pending], timeout="1 minute").done),
            len(list(api.as_completed([done, pending], timeout="10s"))),
        )

    assert same(observe(clients, tmp_path, scenario)) == ([("raised", "TimeoutError")] * 4, (2, None, 2, 2))


def test_as_completed_yields_duplicates_done_and_cancelled_futures_as_distributed(clients, tmp_path):
    def scenario(client, api, _):
        finished, failed, cancelled = finished_failed_and_cancelled(client, api)
        empty = list(api.as_completed([]))
        twice = [f is finished for f in api.as_completed([finished, finished], timeout=30)]
        results = {}
        for future, result in api.as_completed(
            [finished, failed, cancelled], with_results=True, raise_errors=False, timeout=30
        ):
            if isinstance(result, CANCELLED):
                result = "cancelled"
            elif isinstance(result, tuple):
                result = result[0].__name__
            results[future.key] = result
        return empty, twice, sorted(results.values(), key=str)

    assert same(observe(clients, tmp_path, scenario)) == ([], [True, True], [2, "Boom", "cancelled"])


# -- statuses, cancel, gather -------------------------------------------------------------------------


def test_futures_go_through_the_states_distributeds_go_through(clients, tmp_path):
    def scenario(client, api, directory):
        gate = directory / "gate"
        pending = client.submit(wait_exists, str(gate), pure=False)
        waiting = client.submit(inc, pending, pure=False)
        try:
            states = [state(pending), state(waiting)]
            waiting.cancel()
            states.append(state(waiting))
        finally:
            gate.touch()
        assert pending.result(timeout=30) is True
        states.append(state(pending))
        failed = client.submit(explode, 1, pure=False)
        api.wait(failed, timeout=30)
        states.append(state(failed))
        pending.cancel(reason="no longer wanted", msg="the test let it go")
        states.append(state(pending))
        errors = [outcome(f.result) for f in (pending, waiting, failed)]
        return states, errors, [f.exception(timeout=30) is None for f in (pending, waiting)]

    assert same(observe(clients, tmp_path, scenario)) == (
        [
            ("pending", False, False),
            ("pending", False, False),
            ("cancelled", True, True),
            ("finished", True, False),
            ("error", True, False),
            ("cancelled", True, True),
        ],
        [("raised", "cancelled"), ("raised", "cancelled"), ("raised", "Boom")],
        [True, True],
    )


def test_gather_skips_failed_and_cancelled_futures_as_distributed(clients, tmp_path):
    def scenario(client, api, _):
        good, failed, cancelled = finished_failed_and_cancelled(client, api)
        return (
            client.gather([failed, good, cancelled, "plain"], errors="skip"),
            client.gather({"g": good, "f": failed, "c": cancelled}, errors="skip"),
            client.gather((cancelled, good), errors="skip"),
            outcome(lambda: client.gather([good, cancelled])),
            outcome(lambda: client.gather([good, failed])),
        )

    assert same(observe(clients, tmp_path, scenario)) == (
        [2, "plain"],
        {"g": 2, "f": None, "c": None},
        (None, 2),
        ("raised", "cancelled"),
        ("raised", "Boom"),
    )


# -- retry --------------------------------------------------------------------------------------------


def test_retry_of_one_of_equal_map_calls_reruns_their_key_once_as_distributed(clients, tmp_path):
    def scenario(client, api, directory):
        flaky, taken = directory / "flaky", directory / "taken"
        # Equal calls of a map share their key: a retry of one of them is a retry of both.
        failing = client.map(fail_first_time, [1, 1], [str(flaky)] * 2)
        api.wait(failing, timeout=30)
        before = [f.status for f in failing]
        client.retry(failing[1])
        after = client.gather(failing), [f.status for f in failing], runs(flaky)
        # Equal calls taking a failed future: retrying one runs that future again first.
        failed = client.submit(fail_first_time, 5, str(taken))
        taking = client.map(inc, [failed, failed])
        api.wait(taking, timeout=30)
        failing[0].retry()
        taking[0].retry()
        again = client.gather(taking), failed.status, runs(taken), client.gather(failing), runs(flaky)
        return before, after, again

    assert same(observe(clients, tmp_path, scenario)) == (
        ["error", "error"],
        ([2, 2], ["finished", "finished"], 2),
        ([7, 7], "finished", 2, [2, 2], 3),
    )


def test_retry_runs_what_failed_again_and_gives_what_finished_again(clients, tmp_path):
    def scenario(client, api, directory):
        counted, flaky = directory / "counted", directory / "flaky"
        taken = client.submit(counted_inc, 1, str(counted))
        failing = client.submit(fail_first_time, taken, str(flaky))
        outcomes = [outcome(lambda: failing.result(timeout=30))]
        client.retry([failing, taken])
        outcomes.append(outcome(lambda: failing.result(timeout=30)))
        outcomes.append(outcome(lambda: taken.result(timeout=30)))
        return outcomes, runs(flaky), runs(counted) >= 1, taken.type, failing.type

    assert same(observe(clients, tmp_path, scenario)) == (
        [("raised", "ValueError"), ("gave", 3), ("gave", 2)],
        2,
        True,
        int,
        int,
    )


def test_retry_of_a_future_taking_a_failed_one_returns_before_that_one_runs_again_as_distributed(
    clients, tmp_path
):
    def scenario(client, api, directory):
        flaky, gate = directory / "flaky", directory / "gate"
        failed = client.submit(fail_first_then_wait, str(flaky), str(gate))
        taking = client.submit(inc, failed)
        api.wait([taking], timeout=30)
        client.retry([taking])
        # Not waited for: the retried call starts once the future it takes is done.
        statuses = failed.status, taking.status
        gate.touch()
        return statuses, taking.result(timeout=30), failed.result(timeout=30), runs(flaky)

    assert same(observe(clients, tmp_path, scenario)) == (("pending", "pending"), 2, True, 2)


def test_retry_of_a_running_future_lets_it_finish_where_distributed_runs_it_again(clients, tmp_path):
    def scenario(client, api, directory):
        counted, gate = directory / "counted", directory / "gate"
        running = client.submit(count_then_wait, str(counted), str(gate), pure=False)
        assert wait_exists(str(counted))
        client.retry([running])
        status = running.status
        gate.touch()
        return status, running.result(timeout=30), runs(counted)

    answers = observe(clients, tmp_path, scenario)
    # distributed releases the running task and runs it again beside the first run, whose result it
    # drops: the same call, its side effects twice (see the README's compatibility section).
    assert answers == {
        "processes": ("pending", True, 1),
        "threads": ("pending", True, 1),
        "distributed": ("pending", True, 2),
    }


# -- done callbacks -----------------------------------------------------------------------------------


def test_a_done_callback_runs_apart_so_it_may_wait_for_another_future_as_in_distributed(clients, tmp_path):
    def scenario(client, api, directory):
        first_gate, later_gate = directory / "first", directory / "later"
        later = client.submit(wait_exists, str(later_gate), pure=False)
        first = client.submit(wait_exists, str(first_gate), pure=False)
        waiting, waited = threading.Event(), queue.Queue()

        def wait_for_later(future):
            waiting.set()
            waited.put((future is first, outcome(lambda: later.result(timeout=60))))

        first.add_done_callback(wait_for_later)
        first_gate.touch()
        assert waiting.wait(30)
        # While the callback waits, the future it was given is done and the client runs new work:
        # on the thread that finished `first`, the callback would hold that thread (or the runtime).
        meanwhile = first.status, outcome(lambda: client.submit(inc, 10, pure=False).result(timeout=20))
        later_gate.touch()
        return meanwhile, waited.get(timeout=60)

    assert same(observe(clients, tmp_path, scenario)) == (("finished", ("gave", 11)), (True, ("gave", True)))


def test_a_done_callback_that_raises_is_logged_and_the_others_still_run_as_in_distributed(
    clients, tmp_path, caplog
):
    def scenario(client, api, directory):
        gate = directory / "gate"
        future = client.submit(wait_exists, str(gate), pure=False)
        called = queue.Queue()

        def raising(_):
            called.put("raising")
            raise Boom("in a callback")

        future.add_done_callback(raising)
        future.add_done_callback(lambda _: called.put("after"))
        with caplog.at_level(logging.ERROR):
            gate.touch()
            order = [called.get(timeout=30), called.get(timeout=30)]
            # Added once done: called all the same, apart from this thread too, one after the other
            # (so once the last one ran, the raising one before it was logged).
            future.add_done_callback(raising)
            future.add_done_callback(lambda _: called.put("last"))
            order += [called.get(timeout=30), called.get(timeout=30)]
            logged = [record.exc_info[0].__name__ for record in caplog.records if record.exc_info]
        caplog.clear()
        return order, future.status, future.result(timeout=30), logged

    assert same(observe(clients, tmp_path, scenario)) == (
        ["raising", "after", "raising", "last"],
        "finished",
        True,
        ["Boom", "Boom"],
    )


# -- keys, compute, persist, scatter ------------------------------------------------------------------


def shape(key):
    """A key with its tokens and uuids blanked out, to compare key formats."""
    return re.sub(r"[0-9a-f]{32}", "<token>", re.sub(UUID, "<uuid>", str(key)))


def test_keys_have_distributeds_shapes(clients, tmp_path):
    def scenario(client, api, _):
        pure = client.submit(inc, 1)
        mapped = client.map(inc, [1, 2, 1])
        impure = client.map(inc, [1, 1], pure=False)
        [scattered], [unhashed] = client.scatter([np.int64(1)]), client.scatter([1], hash=False)
        whole = client.compute({"a": api.delayed(inc)(1)})
        return (
            [shape(f.key) for f in (pure, *mapped, *impure, scattered, unhashed, whole)],
            pure.key == client.submit(inc, 1).key != client.submit(inc, 2).key,
            mapped[0].key == mapped[2].key != mapped[1].key,
            client.submit(inc, 1, key=("t", 1)).key,
            [f.key for f in client.map(inc, [1, 2], key=["k-1", "k-2"])],
            [shape(f.key) for f in client.map(inc, [1], key="pre")],
        )

    assert same(observe(clients, tmp_path, scenario)) == (
        [
            *["inc-<token>"] * 4,
            "inc-<uuid>-0",
            "inc-<uuid>-1",
            "int64-<token>",
            "int-<token>",
            "dict-<uuid>",
        ],
        True,
        True,
        ("t", 1),
        ["k-1", "k-2"],
        ["pre-<token>"],
    )


def test_a_key_given_twice_keeps_its_first_result_as_distributed(clients, tmp_path):
    def scenario(client, api, _):
        first = client.submit(inc, 1, key="given-key")
        second = client.submit(inc, 10, key="given-key")
        mapped = client.map(inc, [1, 2], key=["shared", "shared"])
        return client.gather([first, second]), client.gather(mapped)

    # A map's calls under one key: the last given is its task (its graph is a dict of them).
    assert same(observe(clients, tmp_path, scenario)) == ([2, 2], [3, 3])


def test_compute_gives_futures_shaped_as_given_as_distributed(clients, tmp_path):
    def scenario(client, api, _):
        one, two = api.delayed(inc)(1), api.delayed(inc)(2)
        as_list, as_tuple = client.compute([one, two]), client.compute((one, two))
        mixed = client.compute([one, 5])
        as_dict = client.compute({"x": one, "y": [two, 3]})
        return (
            type(as_list).__name__,
            type(as_tuple).__name__,
            [type(f).__name__ for f in mixed],
            client.gather([as_list, as_tuple, mixed, as_dict]),
            client.compute(5),
            client.compute([]),
            client.compute(one, sync=True),
            client.compute([one, two], sync=True),
            client.compute({"x": one}, sync=True),
            outcome(lambda: client.compute(api.delayed(explode)(1), sync=True)),
        )

    # A tuple of collections gives a list, as in distributed.
    assert same(observe(clients, tmp_path, scenario)) == (
        "list",
        "list",
        ["Future", "int"],
        [[2, 3], [2, 3], [2, 5], {"x": 2, "y": [3, 3]}],
        5,
        [],
        2,
        [2, 3],
        {"x": 2},
        ("raised", "Boom"),
    )


def test_a_key_the_client_holds_is_not_computed_again_as_distributed(clients, tmp_path):
    def scenario(client, api, directory):
        def counted(x, name, **kwargs):
            return api.delayed(counted_inc, **kwargs)(x, str(directory / name))

        # The persisted object's original, alone, under another task and persisted again (an impure
        # call: the same object, with a key of its own).
        original = counted(1, "original")
        persisted = client.persist(original)
        again = [
            client.compute(original).result(timeout=30),
            client.compute(original + 1).result(timeout=30),
            api.compute(client, client.persist(original * 10)),
            api.compute(client, original * 3),
        ]
        # An equal pure call, as an intermediate: the task it needs does not run either.
        inner = counted(5, "inner", pure=True)
        outer = api.delayed(counted_inc, pure=True)(inner, str(directory / "outer"))
        persisted_outer = client.persist(outer)
        api.wait(api.futures_of(persisted_outer), timeout=30)
        twin = api.delayed(counted_inc, pure=True)(counted(5, "inner", pure=True), str(directory / "outer"))
        again.append(client.compute(twin + 100).result(timeout=30))
        # A submit under a persisted key, and a compute of a future's key.
        again.append(client.submit(counted_inc, 7, str(directory / "original"), key=persisted.key).result(30))
        future = client.compute(counted(20, "future", pure=True))
        again.append(client.compute(counted(20, "future", pure=True) * 2).result(timeout=30))
        names = ("original", "inner", "outer", "future")
        return again, [runs(directory / name) for name in names], future.status

    assert same(observe(clients, tmp_path, scenario)) == ([2, 3, 20, 6, 107, 2, 42], [1, 1, 1, 1], "finished")


def test_a_held_tuple_key_is_not_computed_again_and_its_text_is_another_key_as_distributed(clients, tmp_path):
    def scenario(client, api, directory):
        path = str(directory / "counted")
        held = client.submit(counted_inc, 1, path, key=("x", 1))
        held.result(timeout=30)
        same_key = api.delayed(counted_inc, pure=True)(1, path, dask_key_name=("x", 1))
        text_key = api.delayed(counted_inc, pure=True)(1, path, dask_key_name="('x', 1)")
        found = client.compute(api.delayed(inc)(same_key)).result(timeout=30), runs(directory / "counted")
        other = client.compute(api.delayed(inc)(text_key)).result(timeout=30), runs(directory / "counted")
        return found, other

    assert same(observe(clients, tmp_path, scenario)) == ((3, 1), (3, 2))


def test_a_key_let_go_of_runs_again_and_a_failed_one_fails_again_as_distributed(clients, tmp_path):
    def scenario(client, api, directory):
        def counted(x, name):
            return api.delayed(counted_inc, pure=True)(x, str(directory / name))

        cancelled = client.persist(counted(1, "cancelled"))
        api.wait(api.futures_of(cancelled), timeout=30)
        client.cancel(cancelled)
        dropped = client.persist(counted(2, "dropped"))
        api.wait(api.futures_of(dropped), timeout=30)
        del dropped
        released = client.compute(counted(3, "released"))
        released.result(timeout=30)
        released.release()
        del released
        results = [
            client.compute(counted(x, name) + 1).result(timeout=30)
            for x, name in enumerate(("cancelled", "dropped", "released"), start=1)
        ]
        # Impure calls never share a key: each runs.
        impure = [client.submit(counted_inc, 4, str(directory / "impure"), pure=False) for _ in range(2)]
        results.append(client.gather(impure))
        # A failed key held gives its exception again, without running (fail_first_time would pass).
        failed = client.persist(api.delayed(fail_first_time, pure=True)(6, str(directory / "failed")))
        api.wait(api.futures_of(failed), timeout=30)
        retaken = api.delayed(fail_first_time, pure=True)(6, str(directory / "failed"))
        errors = [outcome(lambda: client.compute(retaken + 1).result(timeout=30))]
        errors.append(outcome(lambda: client.submit(inc, 1, key=failed.key).result(timeout=30)))
        names = ("cancelled", "dropped", "released", "impure", "failed")
        return results, errors, [runs(directory / name) for name in names]

    assert same(observe(clients, tmp_path, scenario)) == (
        [3, 4, 5, [5, 5]],
        [("raised", "ValueError"), ("raised", "ValueError")],
        [2, 2, 2, 2, 1],
    )


def test_persist_takes_distributeds_keywords_and_its_futures_are_waited_for(clients, tmp_path):
    def scenario(client, api, directory):
        counted = directory / "counted"
        one = api.delayed(counted_inc)(1, str(counted))
        persisted = client.persist([one, api.delayed(inc)(one)], optimize_graph=False, priority=1)
        futures = api.futures_of(persisted)
        api.wait(futures, timeout=30)
        [single] = api.futures_of(client.persist(api.delayed(inc)(5), fifo_timeout="60s"))
        single.result(timeout=30)
        return (
            type(persisted).__name__,
            [type(p).__name__ for p in persisted],
            [p.key == f.key for p, f in zip(persisted, futures, strict=True)],
            [f.status for f in futures],
            [api.compute(client, p) for p in persisted],
            single.status,
            runs(counted),
        )

    assert same(observe(clients, tmp_path, scenario)) == (
        "list",
        ["Delayed", "Delayed"],
        [True, True],
        ["finished", "finished"],
        [2, 3],
        "finished",
        1,
    )


def test_scatter_of_a_range_gives_a_future_per_value_of_an_iterator_raises_as_distributed(clients, tmp_path):
    def scenario(client, api, _):
        futures = client.scatter(range(3))
        iterators = [outcome(lambda it=it: client.scatter(it)) for it in (iter([1, 2]), (v for v in [1]))]
        return type(futures).__name__, client.gather(futures), [shape(f.key) for f in futures], iterators

    assert same(observe(clients, tmp_path, scenario)) == (
        "list",
        [0, 1, 2],
        ["int-<token>"] * 3,
        [("raised", "TypeError")] * 2,
    )


def test_who_has_and_has_what_list_workers_and_keys_as_distributed(clients, tmp_path):
    # They gave tuples, where distributed gives lists: code appending to them, or comparing them with
    # a list, broke. (Where a value is held differs: in no worker on a processes=False client.)
    def scenario(client, api, _):
        future = client.scatter(41)
        holders = client.who_has(future)[future.key]
        listed = client.has_what()
        return type(holders).__name__, {type(keys).__name__ for keys in listed.values()}, len(listed) > 0

    assert same(observe(clients, tmp_path, scenario)) == ("list", {"list"}, True)


def test_nbytes_and_type_of_numbers_and_arrays_are_distributeds(clients, tmp_path):
    values = [7, 1.5, np.arange(10), np.zeros((2, 3), dtype="f4"), np.int32(3)]

    def scenario(client, api, _):
        futures = [client.submit(inc, v, key=f"sized-{i}") for i, v in enumerate(values)]
        futures.append(client.scatter(b"x" * 1000, hash=False))
        persisted = client.persist(api.delayed(np.ones)(5, dask_key_name="persisted-ones"))
        api.wait(persisted, timeout=30)
        client.gather(futures)
        sizes = client.nbytes(keys=[f.key for f in futures] + ["persisted-ones"], summary=False)
        everything = client.nbytes(summary=False)
        return (
            [sizes[f.key] for f in futures],
            [f.type for f in futures],
            (sizes["persisted-ones"], everything["persisted-ones"]),
            client.nbytes()["sized"] > 0,
        )

    # dask's sizeof: a numpy scalar's Python object size, a bytes object's length.
    assert same(observe(clients, tmp_path, scenario)) == (
        [28, 24, 80, 24, 28, 1000],
        [int, float, np.ndarray, np.ndarray, np.int32, bytes],
        (40, 40),
        True,
    )


def test_fire_and_forget_runs_dropped_futures_and_what_they_take_as_distributed(clients, tmp_path):
    def scenario(client, api, directory):
        gate, counted = directory / "gate", directory / "counted"
        taken = client.submit(wait_exists, str(gate), pure=False)
        api.fire_and_forget({"nested": [client.submit(counted_inc, taken, str(counted), pure=False)]})
        del taken
        gate.touch()
        return wait_exists(str(counted)), outcome(lambda: api.fire_and_forget(3))

    assert same(observe(clients, tmp_path, scenario)) == (True, ("gave", None))


def test_dask_collections_as_arguments_reach_the_function_as_they_are_as_in_distributed(clients, tmp_path):
    array = pytest.importorskip("dask.array")

    def scenario(client, api, _):
        ones = array.ones(4, chunks=2)
        persisted = client.persist(api.delayed(inc)(1))
        return (
            client.submit(type_names, ones, [ones], value=ones).result(timeout=30),
            client.gather(client.map(type_names, [ones, 1])),
            client.submit(type_names, persisted).result(timeout=30),
            client.submit(inc, client.compute(ones.sum())).result(timeout=30),
        )

    assert same(observe(clients, tmp_path, scenario)) == (
        ["Array", ["Array"], "value=Array"],
        [["Array"], ["int"]],
        ["Delayed"],
        5.0,
    )


def test_futures_in_nested_arguments_are_their_results_as_distributed(clients, tmp_path):
    def scenario(client, api, _):
        one, failed = client.submit(inc, 1), client.submit(explode, 1, pure=False)
        nested = [[[one]], {"a": (one, 2)}, {one}]
        return (
            client.submit(repr, nested).result(timeout=30),
            client.submit(sorted, {one, 7}).result(timeout=30),
            client.gather(client.map(inc, client.map(inc, [one, 1]))),
            outcome(lambda: client.submit(len, [[failed]]).result(timeout=30)),
        )

    assert same(observe(clients, tmp_path, scenario)) == (
        "[[[2]], {'a': (2, 2)}, {2}]",
        [2, 7],
        [4, 3],
        ("raised", "Boom"),
    )
