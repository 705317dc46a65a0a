"""belated's own local cluster: results, futures, locality, and faults with real process deaths."""

import linecache
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback

import numpy as np
import pytest
from worker_tasks import (
    Boom,
    alive,
    crash,
    explode,
    pid_of,
    record,
    square,
    stored_results,
    wait_exists,
    wait_for_gate,
    wait_gone,
)

import belated
from belated import compute, delayed


def inc(x):
    return x + 1


def make_lock():
    return threading.Lock()


def kind(obj):
    return type(obj).__name__


def kill_once(value, marker):
    """Dies by SIGKILL the first time it runs, taking its worker's results with it; then succeeds."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def hog(megabytes, seconds):
    block = np.ones(megabytes * 2**20, dtype=np.uint8)
    time.sleep(seconds)
    return int(block[0])


def slow_square(x):
    time.sleep(0.005)
    return x * x


def span(seconds):
    """When this task ran, by the machine's clock (shared by every process)."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def nap(seconds):
    time.sleep(seconds)
    return seconds


def made_where(items):
    """An array of ``items`` floats, with the process that made it."""
    return os.getpid(), np.ones(items)


def ran_where(*made):
    return os.getpid(), [pid for pid, _ in made]


@pytest.fixture
def client(local_cluster):
    return local_cluster


def moved(client, before):
    return client.cluster_stats()["transferred"] - before["transferred"]


def test_results_match_local_runs(client):
    x = delayed(square)(3)
    q, r = delayed(divmod, nout=2)(x, 4)
    array = np.arange(1_000_000, dtype=np.float64)
    program = (
        [x, {"k": (x, x + 1)}],
        delayed("belated").upper(),
        q * 10 + r,
        delayed(np.sum)(array * 2),
        delayed([x, 1])[0],
        delayed(sum)([delayed(inc)(i) for i in range(100)]),
    )
    assert compute(*program, scheduler=client) == compute(*program, scheduler="sync")
    doubled = delayed(np.multiply)(array, 2).compute(scheduler=client)
    assert np.array_equal(doubled, array * 2)


@pytest.mark.parametrize("scheduler", ["processes", "cluster"])
def test_functions_sent_by_value_see_globals_changed_between_computes(scheduler, client):
    # A function of __main__ (a notebook's, say) travels by value with the globals it reads.
    namespace = {"__name__": "__main__"}
    exec("factor = 2\ndef scaled(x):\n    return x * factor\n", namespace)
    options = {"scheduler": client if scheduler == "cluster" else "processes"}
    tasks = [delayed(namespace["scaled"])(i) for i in range(3)]
    assert compute(*tasks, **options) == (0, 2, 4)
    namespace["factor"] = 10
    assert compute(*tasks, **options) == (0, 10, 20)


def test_a_function_sent_by_value_does_not_import_the_package_into_a_worker():
    # A worker loads its own module alone, so that it starts in a fraction of the package's import
    # time; a first function sent by value (a script's, with its source lines) must not undo that.
    filename = "<a script sent by value>"
    source = "import sys\ndef imported(name):\n    return name in sys.modules\n"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), namespace)
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as fresh:
        assert delayed(namespace["imported"])("belated").compute(scheduler=fresh) is False


def test_a_result_kept_in_a_worker_reaches_the_next_call_there_without_importing_the_package():
    # A call whose argument is a kept result names this runtime's module in its pickle, which the
    # worker's own unpickler must resolve (a plain loads would import the package to find it).
    source = "import sys\ndef imported(name):\n    return name in sys.modules\ndef echo(x):\n    return x\n"
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<a script sent by value>", "exec"), namespace)
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as fresh:
        kept = delayed(namespace["echo"])("belated")
        assert delayed(namespace["imported"])(kept).compute(scheduler=fresh) is False
        assert delayed(namespace["imported"])("belated").compute(scheduler=fresh) is False


def test_tasks_run_in_the_workers_processes(client):
    pids = set(compute(*[delayed(pid_of)(i) for i in range(20)], scheduler=client))
    assert os.getpid() not in pids and pids <= set(client.worker_pids)


def test_results_stay_in_the_worker_that_computed_them(client):
    # A lock cannot be pickled: the chain works only if it never leaves its worker.
    lock = delayed(make_lock)()
    assert delayed(kind)(lock).compute(scheduler=client) == "lock"
    before = client.cluster_stats()
    x = delayed(inc)(0)
    for _ in range(200):
        x = delayed(inc)(x)
    assert x.compute(scheduler=client) == 201
    assert moved(client, before) == 0, "a chain stays where its input is"


def test_values_move_between_workers_only_when_a_task_needs_them(client):
    before = client.cluster_stats()
    # Slow enough that both workers take some.
    leaves = [delayed(slow_square)(i) for i in range(64)]
    assert delayed(sum)(leaves).compute(scheduler=client) == sum(i * i for i in range(64))
    # The sum runs where most leaves are; at most the other worker's leaves move, each once.
    assert 0 < moved(client, before) < 64


def test_a_tree_reduction_keeps_its_subtrees_on_one_worker_each(client):
    # Each worker starts on a run of neighbouring leaves, so pairs meet where they were made; taking
    # leaves in turns instead would move about half of all results.
    before = client.cluster_stats()
    layer = [delayed(slow_square)(i) for i in range(64)]
    while len(layer) > 1:
        layer = [delayed(sum)(layer[i : i + 2]) for i in range(0, len(layer), 2)]
    assert layer[0].compute(scheduler=client) == sum(i * i for i in range(64))
    assert moved(client, before) <= 10, "of 63 sums, only those where the workers' halves meet"


def test_a_task_is_placed_where_most_of_its_input_bytes_are():
    # The tasks ready from the start are shared out in runs of ids: the first half (10 fillers and the
    # 8 MB input) to worker 0, the rest (the 8-byte input and 10 longer fillers) to worker 1. The
    # consumer, placed when its last input is done, must go to worker 0, where the bytes are; worker 1
    # is still busy with its fillers, so nothing is stolen.
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        # Warm: a worker still importing this module (or its preloads) would leave its run of tasks
        # to the other one.
        compute(*[delayed(nap)(0.01) for _ in range(8)], scheduler=client)
        for _ in range(3):
            big, small = delayed(made_where)(2**20), delayed(made_where)(1)
            first = [delayed(nap)(0.005) for _ in range(10)]
            second = [delayed(nap)(0.02) for _ in range(10)]
            results = compute(*first, delayed(ran_where)(big, small), *second, scheduler=client)
            ran_on, (big_pid, small_pid) = results[10]
            assert big_pid != small_pid, "the two inputs start in different workers"
            assert ran_on == big_pid, "the 8 bytes move, not the 8 MB"


def big_sum(array, i):
    return float(array[i::8].sum())


def test_a_large_value_built_here_goes_to_each_worker_once_not_with_every_call(client):
    def uploaded_by(*tasks):
        before = client.cluster_stats()["uploaded"]
        results = compute(*tasks, scheduler=client)
        return results, client.cluster_stats()["uploaded"] - before

    array = np.arange(2**20, dtype=np.float64)  # 8 MB
    data, small = delayed(array), delayed(array[:1000])
    results, uploaded = uploaded_by(*[delayed(big_sum)(data, i % 8) for i in range(40)])
    assert results == tuple(float(array[i % 8 :: 8].sum()) for i in range(40))
    # Two threads of a worker may each send it before either has finished; never more than that.
    assert 1 <= uploaded <= 4, f"sent {uploaded} times for 40 calls"
    results, uploaded = uploaded_by(*[delayed(big_sum)(small, 0) for i in range(10)])
    assert results == (float(array[:1000:8].sum()),) * 10
    assert uploaded == 0, "an 8 KB value travels inside each call"
    persisted = client.persist(delayed(np.multiply)(data, 2))
    assert [d.key for d in client.persist([persisted, data])] == [persisted.key, data.key]
    results, uploaded = uploaded_by(*[delayed(big_sum)(persisted, i) for i in range(8)])
    assert results == tuple(2 * float(array[i::8].sum()) for i in range(8)) and 1 <= uploaded <= 4


def test_workers_estimate_the_bytes_of_what_they_keep():
    import pandas as pd

    from belated._worker import nbytes

    class Sizeless:
        def __sizeof__(self):
            raise RuntimeError("no size")

    assert nbytes(np.ones(1000)) == 8000
    assert nbytes(pd.DataFrame({"a": np.ones(1000), "b": np.arange(1000)})) >= 16_000
    assert 800_000 <= nbytes([np.ones(100) for _ in range(1000)]) < 900_000, "a sample, scaled up"
    assert nbytes({i: "x" * 100 for i in range(1000)}) > 100_000
    assert nbytes(Sizeless()) > 0, "what cannot be sized still weighs something"
    assert nbytes([]) == sys.getsizeof([])


def test_workers_forget_results_nobody_needs_any_more():
    def tree(leaves):
        layer = [delayed(square)(i) for i in range(leaves)]
        while len(layer) > 1:
            layer = [delayed(sum)(layer[i : i + 2]) for i in range(0, len(layer), 2)]
        return layer[0]

    # A cluster of its own: results other tests persist on a shared cluster stay in its workers for as
    # long as those tests' objects live, which their order decides.
    with belated.Client(n_workers=2, threads_per_worker=2, dashboard_address=None) as client:
        assert tree(64).compute(scheduler=client) == sum(i * i for i in range(64))
        with pytest.raises(Boom):
            delayed(explode)(tree(32)).compute(scheduler=client)
        # Each worker is told what to forget before its next call runs.
        held = compute(*[delayed(stored_results)(i) for i in range(16)], scheduler=client)
    assert held == (0,) * 16


def test_task_exceptions_come_back_as_themselves(client):
    with pytest.raises(Boom, match="bad 9") as caught:
        delayed(explode)(delayed(square)(3)).compute(scheduler=client)
    # The worker's frames, rebuilt as frames of this process: the task's own line is the last one.
    last = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert (last.name, last.line) == ("explode", 'raise Boom(f"bad {x}")')
    assert delayed(square)(5).compute(scheduler=client) == 25


def test_futures(client):
    total = delayed(sum)([delayed(square)(i) for i in range(10)])
    future = client.compute(total)
    assert future.result(timeout=30) == 285 and future.done() and future.status == "finished"
    assert future.key == total.key and "finished" in repr(future)
    futures = client.compute([total, total + 1])
    assert client.gather(futures) == [285, 286]
    assert client.gather({"a": [futures[0]], "b": 3}) == {"a": [285], "b": 3}
    assert client.submit(square, 7).result(timeout=30) == 49
    assert client.gather(client.map(square, range(4))) == [0, 1, 4, 9]
    assert client.compute(total, sync=True) == 285
    assert client.submit(square, future).result(timeout=30) == 285**2, "a future as an argument"
    failing = client.submit(explode, 1)
    with pytest.raises(Boom):
        failing.result(timeout=30)
    assert failing.status == "error"


def test_futures_submitted_one_by_one_run_on_every_worker_thread():
    with belated.Client(n_workers=2, threads_per_worker=8, dashboard_address=None) as client:
        # Warm: each worker thread has imported this module (and the preloads are done), which on a
        # loaded machine takes longer than the naps below.
        client.gather([client.submit(span, 0) for _ in range(16)])
        spans = client.gather([client.submit(span, 0.5) for _ in range(16)])
        assert max(start for start, _ in spans) < min(end for _, end in spans), "all 16 ran at once"


def test_cancelling_a_running_future_stops_its_computation(client, tmp_path):
    gate, finished = tmp_path / "gate", tmp_path / "finished"
    naps = [delayed(nap)(0.5) for _ in range(4)]
    future = client.compute([*naps, delayed(wait_for_gate)(str(gate), str(finished))])
    assert wait_exists(f"{finished}.started"), "the task never started"
    future[0].cancel()  # alone, as in distributed: the others still run
    assert future[0].cancelled() and not future[4].cancelled()
    for each in future[1:]:
        each.cancel()
    with pytest.raises(belated.CancelledError):
        future[4].result(timeout=30)
    assert not finished.exists(), "the cancel did not wait for the running task to end"
    gate.touch()
    assert future[0].status == "cancelled" and future[0].cancelled()


def test_keyboard_interrupt_stops_a_cluster_compute_promptly(client, tmp_path):
    gate, finished = tmp_path / "gate", tmp_path / "finished"
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        delayed(wait_for_gate)(str(gate), str(finished)).compute(scheduler=client)
    assert not finished.exists(), "the interrupt did not wait for the running task to end"
    gate.touch()


def test_client_is_the_default_scheduler_while_open():
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        assert belated.config.get("scheduler") is client
        assert delayed(pid_of)().compute() in client.worker_pids
        pids = client.worker_pids
    assert belated.config.get("scheduler", None) is not client
    assert delayed(pid_of)().compute() == os.getpid(), "back to threads"
    assert wait_gone(pids), "close ends the workers"
    assert client.status == "closed"
    with pytest.raises(belated.BelatedError, match="closed"):
        delayed(square)(2).compute(scheduler=client)
    with pytest.raises(belated.BelatedError, match="closed"):
        client.submit(square, 2)


def test_repr_shows_workers_threads_memory_and_dashboard():
    with belated.Client(
        n_workers=2, threads_per_worker=3, memory_limit="1GiB", dashboard_address="127.0.0.1:0"
    ) as client:
        text, page = repr(client), client._repr_html_()
        assert "workers=2, threads=6, memory=2.00 GiB" in text
        assert client.dashboard_link.startswith("http://127.0.0.1:") and client.dashboard_link in text
        assert "<table>" in page and ">6<" in page and "2.00 GiB" in page and client.dashboard_link in page
    assert "closed" in repr(client)
    assert belated._belated.dashboard_url() is None, "the dashboard the client started stops with it"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_workers": 0}, "n_workers must be a positive integer"),
        ({"threads_per_worker": "4"}, "threads_per_worker must be a positive integer"),
        ({"memory_limit": "lots"}, "memory_limit must be"),
        ({"bogus": False}, "unexpected keyword arguments: bogus"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(arguments, message):
    with pytest.raises((ValueError, TypeError), match=message):
        belated.Client(dashboard_address=None, **arguments)
    assert belated.config.get("scheduler", None) is None


def test_a_worker_killed_mid_task_is_replaced_and_lost_results_are_recomputed(tmp_path):
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        # x's lineage lives in one worker; the task using it kills that worker once. Only x is still
        # held when it dies (its inputs were released), so all three are recomputed.
        x = delayed(inc)(delayed(inc)(delayed(square)(3)))
        survivor = delayed(kill_once)(x, str(tmp_path / "killed"))
        assert (survivor + 1).compute() == 12
        stats = client.cluster_stats()
        assert stats["replaced"] == 1 and stats["recomputed"] == 3
        assert (tmp_path / "killed").exists()
        assert delayed(square)(4).compute() == 16


def sleep_when_marked(value, marker):
    """Returns at once, unless `marker` exists: then (when recomputed after kill_once) never in time."""
    if os.path.exists(marker):
        time.sleep(1000)
    return value


def test_tasks_recomputed_after_a_worker_died_pass_the_callbacks(tmp_path):
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None):
        base = delayed(square)(3, dask_key_name="base")
        x = delayed(inc)(base, dask_key_name="x")
        survivor = delayed(kill_once)(x, str(tmp_path / "killed"), dask_key_name="survivor")
        started, finished = [], []
        callback = belated.diagnostics.Callback(
            pretask=lambda key, dsk, state: started.append(key),
            posttask=lambda key, result, dsk, state, worker: finished.append(key),
        )
        with callback:
            assert survivor.compute() == 10
        # survivor's first try killed the worker holding x and gave no result: the engine ran x and
        # its input again, each seen by the callbacks like any task, inputs first, then survivor.
        assert started == ["base", "x", "survivor", "base", "x", "survivor"]
        assert finished == ["base", "x", "base", "x", "survivor"]


def made_here(value, pid_file):
    """``value`` doubled; writes the pid of the worker that made (and keeps) it to ``pid_file``."""
    partial = pid_file + ".partial"
    with open(partial, "w") as out:
        out.write(str(os.getpid()))
    os.replace(partial, pid_file)
    return value * 2


def add(a, b):
    return a + b


def test_a_result_lost_with_its_worker_while_a_dependent_waits_is_recomputed_where_callbacks_see_it(
    tmp_path,
):
    holder_file, gate, waited = (str(tmp_path / name) for name in ("holder", "gate", "waited"))
    x = delayed(made_here)(21, holder_file, dask_key_name="x")
    waiting = delayed(wait_for_gate)(gate, waited, dask_key_name="waiting")
    total = delayed(add)(x, waiting, dask_key_name="total")
    x_kept = threading.Event()
    started, ended = [], []
    watcher = belated.diagnostics.Callback(
        pretask=lambda key, dsk, state: started.append(key),
        posttask=lambda key, result, dsk, state, worker: key == "x" and x_kept.set(),
        finish=lambda dsk, state, errored: ended.append((state.done, state.failed, state.total, errored)),
    )
    outcome = {}

    def run():
        try:
            outcome["value"] = total.compute(timeout=120)
        except BaseException as error:  # handed to the test thread, which asserts on it
            outcome["error"] = error

    with (
        belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client,
        watcher,
        belated.diagnostics.Profiler() as profiler,
    ):
        computing = threading.Thread(target=run)
        computing.start()
        # x is done and kept by its worker, and total waits for its other input: kill x's worker.
        assert x_kept.wait(60) and wait_exists(waited + ".started")
        with open(holder_file) as holder:
            victim = int(holder.read())
        os.kill(victim, signal.SIGKILL)
        assert wait_gone([victim])
        open(gate, "w").close()
        computing.join(150)
        assert not computing.is_alive()
        assert outcome == {"value": 43}
        stats = client.cluster_stats()
    runs_of = {key: [at for at, started_key in enumerate(started) if started_key == key] for key in started}
    assert len(runs_of["x"]) == 2, started
    assert runs_of["x"][1] < runs_of["total"][-1], f"x again, then total: {started}"
    assert stats["recomputed"] >= 1 and stats["replaced"] >= 1
    # The engine's own observer saw x run twice, and total start twice: once to find x lost.
    observed = [task.key for task in profiler.results]
    assert (observed.count("x"), observed.count("total")) == (2, 2), observed
    assert ended == [(3, 0, 3, False)], "each task is counted done once, and none failed"


def test_a_deadline_applies_to_tasks_recomputed_after_a_worker_died(tmp_path):
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None):
        marker = str(tmp_path / "killed")
        survivor = delayed(kill_once)(delayed(sleep_when_marked)(3, marker), marker)
        with pytest.raises(belated.ComputeTimeoutError):
            survivor.compute(timeout=5)
        # The one worker was stuck in the recompute: the cancel killed it, and a new one serves.
        assert delayed(square)(4).compute(timeout=60) == 16


def test_a_worker_killed_from_outside_is_replaced_and_its_tasks_retried():
    with belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        victims = client.worker_pids
        killer = threading.Timer(0.5, lambda: [os.kill(pid, signal.SIGKILL) for pid in victims])
        killer.start()
        try:
            assert compute(*[delayed(nap)(1.0) for _ in range(2)], retries=1) == (1.0, 1.0)
        finally:
            killer.cancel()
        assert client.cluster_stats()["replaced"] == 2
        assert not set(victims) & set(client.worker_pids)


@pytest.mark.parametrize(
    ("task", "death"),
    [(lambda: delayed(os._exit)(3), "exit status: 3"), (lambda: delayed(crash)(), "signal: 11")],
    ids=["os._exit", "segfault"],
)
def test_a_task_that_always_kills_its_worker_fails_clearly(task, death):
    with belated.Client(n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        call = task()
        with pytest.raises(belated.WorkerLostError, match=f"{call.key} failed after 3 tries: .*{death}"):
            call.compute(retries=2)
        assert delayed(square)(5).compute() == 25, "the cluster recovers"
        assert client.cluster_stats()["replaced"] == 3


def test_a_worker_over_its_memory_limit_is_killed_and_the_error_says_so():
    with belated.Client(n_workers=1, threads_per_worker=1, memory_limit="300MB", dashboard_address=None):
        with pytest.raises(belated.WorkerLostError, match=r"over its memory_limit of 300MB\."):
            delayed(hog)(600, 5).compute(retries=0)
        assert delayed(hog)(10, 0).compute() == 1


def test_unpicklable_arguments_are_reported_before_anything_runs(client, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(
        belated.BelatedError, match=r"cannot be sent to a worker process: <unlocked _thread\.lock"
    ):
        compute(delayed(record)(str(marker)), delayed(square)(threading.Lock()), scheduler=client)
    assert not marker.exists()


def test_a_compute_over_its_timeout_is_cancelled(client, tmp_path):
    gate, finished = tmp_path / "gate", tmp_path / "finished"
    with pytest.raises(belated.ComputeTimeoutError):
        delayed(wait_for_gate)(str(gate), str(finished)).compute(scheduler=client, timeout=0.3)
    assert not finished.exists(), "the timeout did not wait for the running task to end"
    gate.touch()


def test_close_leaves_no_process_behind():
    # And no file: see test_no_worker_outlives_a_killed_parent, whose temporary directory is its own.
    client = belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None)
    pids = client.worker_pids
    assert pids
    client.close()
    client.close()
    assert wait_gone(pids)


def test_a_forked_child_cannot_use_or_stop_its_parents_cluster(client):
    pids = client.worker_pids
    child = os.fork()
    if child == 0:  # the child: refused, and dropping its copy leaves the parent's workers alone
        try:
            delayed(square)(2).compute(scheduler=client)
            code = 1
        except belated.BelatedError as error:
            code = 0 if "forked" in str(error) else 2
        client.close()
        os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert all(alive(pid) for pid in pids)
    assert delayed(square)(3).compute(scheduler=client) == 9


def test_no_worker_outlives_a_killed_parent(tmp_path):
    pids = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import time
        import belated

        client = belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None)
        with open({str(pids)!r}, "w") as out:
            out.write(" ".join(map(str, client.worker_pids)))
        time.sleep(60)
        """
    )
    # Where a socket directory would go: nothing of the cluster's may be left there.
    temp = tmp_path / "temp"
    temp.mkdir()
    environment = dict(os.environ, TMPDIR=str(temp), XDG_RUNTIME_DIR=str(temp))
    parent = subprocess.Popen([sys.executable, "-c", script], env=environment)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (pids.exists() and len(pids.read_text().split()) == 2):
        time.sleep(0.05)
    workers = [int(pid) for pid in pids.read_text().split()]
    assert len(workers) == 2 and all(alive(pid) for pid in workers)
    parent.kill()
    parent.wait(timeout=10)
    assert wait_gone(workers), "workers died with their parent"
    assert list(temp.iterdir()) == []


def test_diagnostics_see_cluster_runs(client):
    from belated.diagnostics import Callback, Profiler

    finished = []
    with Profiler() as profiler, Callback(posttask=lambda key, result, *_: finished.append(result)):
        compute(*[delayed(square)(i) for i in range(5)], scheduler=client)
    assert len(profiler.results) == 5
    assert {record.worker_id for record in profiler.results} <= set(range(4))
    assert sorted(finished) == [0, 1, 4, 9, 16]


GATED_MODULE = """
import os, time

open({started!r}, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists({gate!r}) and time.monotonic() < deadline:
    time.sleep(0.01)
with open({log!r}, "a") as log:
    log.write(f"{{os.getpid()}}\\n")


def imported_by():
    return os.getpid()
"""


def test_a_task_that_names_no_preloading_module_does_not_wait_for_its_import(tmp_path, monkeypatch):
    gate, log, started = tmp_path / "gate", tmp_path / "imports", tmp_path / "started"
    module = GATED_MODULE.format(gate=str(gate), log=str(log), started=str(started))
    (tmp_path / "gated_preload.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    options = {"dashboard_address": None, "set_as_default": False, "preload": ["gated_preload"]}
    with belated.Client(n_workers=1, threads_per_worker=1, **options) as client:
        try:
            deadline = time.monotonic() + 60
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            # The worker is importing gated_preload, its gate shut, while this runs.
            pid = client.submit(os.getpid, pure=False).result(timeout=20)
            assert not log.exists()
        finally:
            gate.touch()
        import gated_preload

        monkeypatch.delitem(sys.modules, "gated_preload")
        assert client.submit(gated_preload.imported_by, pure=False).result(timeout=60) == pid
        imported = log.read_text().split()
        assert sorted(imported) == sorted([str(os.getpid()), str(pid)]), "imported once in each process"


def test_a_preload_that_raises_leaves_later_preloads_and_tasks_naming_them_running(tmp_path, monkeypatch):
    (tmp_path / "raising_preload.py").write_text("raise RuntimeError('not importable here')\n")
    (tmp_path / "later_preload.py").write_text("import os\n\n\ndef pid():\n    return os.getpid()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import later_preload

    monkeypatch.delitem(sys.modules, "later_preload")
    options = {"dashboard_address": None, "set_as_default": False}
    with belated.Client(
        n_workers=1, threads_per_worker=1, preload=["raising_preload", "later_preload"], **options
    ) as client:
        (pid,) = client.run(os.getpid).values()
        assert client.submit(later_preload.pid, pure=False).result(timeout=60) == pid
