"""belated graphs on Dask distributed (a real LocalCluster on loopback) and on Ray (a local instance)."""

import io
import json
import os
import subprocess
import sys
import time
import traceback
import urllib.request
import weakref

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_properties import Eager, Lazy, programs, run
from worker_tasks import raise_chained

import belated
from belated import _dask, _fuse, compute, delayed
from belated.diagnostics import ProgressBar

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")
from dask.utils import key_split  # noqa: E402


def square(x):
    time.sleep(0.05)
    return x * x


def power_3(x):
    return x**3


def corr(x, y):
    return np.corrcoef(x, y)[0][1]


def total_func(x):
    return sum(i for i in x if i % 2 == 0)


def count_func(x):
    return len([i for i in x if i % 2 == 0])


class Boom(Exception):
    pass


def explode(x):
    raise Boom(f"bad {x}")


def tutorial_programs():
    """The seed tutorial's examples 1, 2, 3 and 5 (without their sleeps), as (name, objects) pairs."""
    rng = np.random.default_rng(7)
    matrix = rng.random((10, 1000))
    arrays = [rng.integers(1, 100, 1000) for _ in range(10)]
    return [
        ("example 1", (delayed(square)(3) + delayed(square)(4),)),
        ("example 2", (delayed(np.mean)([delayed(corr)(matrix[0], row) for row in matrix]),)),
        (
            "example 3",
            (
                delayed(sum)(
                    [delayed(square)(i) if i % 2 == 0 else delayed(power_3)(i) for i in range(1, 11)]
                ),
            ),
        ),
        (
            "example 5",
            ([delayed(total_func)(x) for x in arrays], [delayed(count_func)(x) for x in arrays]),
        ),
    ]


def api_program():
    x = delayed(square)(3)
    q, r = delayed(divmod, nout=2)(x, 4)
    return (
        [x, {"k": (x, x + 1)}],
        delayed("belated").upper(),
        q * 10 + r,
        delayed(sorted)([3, 1, 2], reverse=True),
        delayed(square, pure=True)(5),
        delayed(lambda pair, text: (pair, text))((len, "x"), "a-string"),
    )


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local_cluster:
        yield local_cluster


@pytest.fixture
def client(cluster):
    with belated.Client(cluster.scheduler_address) as connected:
        yield connected


SPILL_STORE = 100 * 2**20


@pytest.fixture(scope="module")
def spill_directory(tmp_path_factory):
    return str(tmp_path_factory.mktemp("spilled"))


@pytest.fixture(scope="module")
def ray_instance(spill_directory):
    ray = pytest.importorskip("ray")
    # Ray's workers import this module's functions by name, as a cluster's workers import the user's.
    tests = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests}},
        object_store_memory=SPILL_STORE,
        object_spilling_directory=spill_directory,
    )
    yield ray
    ray.shutdown()


def test_tutorial_and_api_programs_on_distributed_equal_local_runs(client):
    for name, objects in [*tutorial_programs(), ("api", api_program())]:
        local = compute(*objects, scheduler="sync")
        assert compute(*objects) == local, name
        assert compute(*objects, scheduler=client) == local, name


def test_the_whole_graph_goes_in_one_submission_of_named_blocks(client, monkeypatch):
    calls = record_submissions(client, monkeypatch)
    xs = [delayed(square)(i) for i in range(50)]
    assert delayed(sum)(xs).compute() == sum(i * i for i in range(50))
    ((graph, _),) = calls
    assert all(task[0] in (_fuse.run_block, _fuse.select) for task in graph.values())
    assert {key_split(key) for key in graph} == {"square", "sum"}, "blocks are named by their function"


def record_submissions(client, monkeypatch):
    calls = []
    real_get = client._distributed_client.get

    def get(dsk, keys, **kwargs):
        calls.append((dsk, keys))
        return real_get(dsk, keys, **kwargs)

    monkeypatch.setattr(client._distributed_client, "get", get)
    return calls


@pytest.mark.parametrize("durations", [{}, {"square": 1e-5, "sum": 1e-5}], ids=["not measured", "short"])
def test_blocks_pass_values_across_blocks(client, monkeypatch, durations):
    monkeypatch.setattr(_dask, "DURATIONS", dict(durations))
    layer = [delayed(square)(i) for i in range(64)]
    while len(layer) > 1:
        layer = [delayed(sum)(layer[i : i + 2]) for i in range(0, len(layer), 2)]
    chain = delayed(square)(1)
    for _ in range(40):
        chain = delayed(sum)([chain, 1])
    shared = delayed(square)(3)
    uneven = [delayed(sum)([shared, i]) for i in range(30)] + [delayed(sum)([layer[0], chain, shared])]
    assert compute(layer[0], chain, uneven, scheduler=client) == compute(
        layer[0], chain, uneven, scheduler="sync"
    )


TRACKED = weakref.WeakSet()


class Tracked:
    """A value whose instances alive in a worker process can be counted there (``TRACKED``)."""

    def __init__(self, seen):
        self.seen = seen
        TRACKED.add(self)


def tracked_step(previous=None):
    """Records how many Tracked values are alive in this worker as the step runs."""
    seen = previous.seen if previous is not None else []
    return Tracked([*seen, len(TRACKED)])


def seen_by(value):
    return value.seen


def test_a_block_frees_values_on_the_worker_after_their_last_use(client):
    x = delayed(tracked_step)()
    for _ in range(12):
        x = delayed(tracked_step)(x)
    seen = delayed(seen_by)(x).compute()
    assert len(seen) == 13
    assert max(seen) <= 1, f"only the step's input is alive while it runs, not every earlier value: {seen}"


def test_every_way_in_uses_the_same_submission(client, monkeypatch):
    planned = []
    real_plan = _fuse.plan
    monkeypatch.setattr(_fuse, "plan", lambda graph, *a: planned.append(len(graph)) or real_plan(graph, *a))
    x = delayed(sum)([delayed(square)(i) for i in range(6)])
    expected = sum(i * i for i in range(6))
    distributed_client = client._distributed_client
    assert compute(x, scheduler=distributed_client) == (expected,)
    assert compute(x, scheduler=client) == (expected,)
    assert client.compute(x).result() == expected
    assert client.compute([x, x], sync=True) == [expected, expected]
    assert dask.compute(x, scheduler=distributed_client) == (expected,)
    assert dask.compute({"x": [x]}, x + 1, scheduler=distributed_client) == ({"x": [expected]}, expected + 1)
    # dask adds a task finalizing the results to the graph it sends.
    assert planned[:4] == [7, 7, 7, 7] and len(planned) == 6 and planned[4] > 7


def timed(label, seconds, *_):
    start = time.time()
    time.sleep(seconds)
    return label, start, time.time()


def overlapped(a, b):
    return a[1] < b[2] and b[1] < a[2]


@pytest.mark.parametrize("measured", [None, 0.5], ids=["not measured", "measured"])
def test_neighbouring_slow_tasks_land_in_different_blocks(client, monkeypatch, measured):
    monkeypatch.setattr(_dask, "DURATIONS", {} if measured is None else {"timed": measured})
    calls = record_submissions(client, monkeypatch)
    spans = [delayed(timed)(i, 0.5 if i in (10, 11) else 0.0) for i in range(40)]
    (results,) = compute(spans, scheduler=client)
    assert [label for label, _, _ in results] == list(range(40))
    ((graph, _),) = calls
    block_of = {
        key: name for name, task in graph.items() if task[0] is _fuse.run_block for key, _, _ in task[1].steps
    }
    assert block_of[spans[10].key] != block_of[spans[11].key]
    if measured:
        assert all(len(task[1].steps) == 1 for task in graph.values() if task[0] is _fuse.run_block)


def test_the_leaves_of_a_tree_run_at_once(client, monkeypatch):
    monkeypatch.setattr(_dask, "DURATIONS", {"timed": 0.3, "pair": 1e-5})
    layer = [delayed(timed)(i, 0.3) for i in range(8)]
    while len(layer) > 1:
        layer = [delayed(pair)(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    leaves = list(flatten(layer[0].compute()))
    threads = sum(client.nthreads().values())
    most = max(sum(overlapped(leaf, other) for other in leaves) for leaf in leaves)
    assert most >= threads, "as many leaves ran at once as there are threads"


def pair(a, b):
    return (a, b)


def flatten(nested):
    if type(nested[0]) is tuple:
        for item in nested:
            yield from flatten(item)
    else:
        yield nested


def test_blocks_report_durations_and_progress(client, monkeypatch):
    monkeypatch.setattr(_dask, "DURATIONS", {})
    out = io.StringIO()
    seen = []
    x = delayed(sum)([delayed(square)(i) for i in range(12)])
    with ProgressBar(out=out), belated.diagnostics.Callback(posttask=lambda key, *_: seen.append(key)):
        assert compute(x, scheduler=client) == (sum(i * i for i in range(12)),)
    assert "| 100% Completed |" in out.getvalue() and len(seen) == 13
    assert sorted(seen) == sorted(x.dask)
    for _ in range(200):  # reports travel through the scheduler: wait for them, up to 10 s
        if "square" in _dask.DURATIONS and "sum" in _dask.DURATIONS:
            break
        time.sleep(0.05)
    assert _dask.DURATIONS["square"] >= 0.05 > _dask.DURATIONS["sum"]


def test_callbacks_follow_futures_until_they_are_done(client):
    finished, seen = [], []
    x = delayed(sum)([delayed(square)(i) for i in range(4)])
    callback = belated.diagnostics.Callback(
        posttask=lambda key, *_: seen.append(key), finish=lambda dsk, state, errored: finished.append(errored)
    )
    with callback:
        future = client.compute(x)
    assert future.result() == 14
    for _ in range(200):  # the done callback runs on the client's event loop: up to 10 s
        if finished:
            break
        time.sleep(0.05)
    assert finished == [False] and sorted(seen) == sorted(x.dask)
    assert not _dask._RUNS, "nothing of a finished computation is kept"


def dashboard_state(board):
    base, _, query = board.url.partition("?")
    with urllib.request.urlopen(base + "api/state" + ("?" + query if query else ""), timeout=10) as response:
        return json.loads(response.read())["compute"]


def test_the_dashboard_sees_tasks_finish_on_distributed(client):
    board = belated.dashboard(port=0, quiet=True)
    try:
        x = delayed(sum)([delayed(square)(i) for i in range(6)])
        assert x.compute() == sum(i * i for i in range(6))
        state = dashboard_state(board)
        assert state["tasks"] == 7 and state["ok"] is True
        groups = {g["name"]: (g["total"], g["done"], g["failed"]) for g in state["groups"]}
        assert groups == {"square": (6, 6, 0), "sum": (1, 1, 0)}
        with pytest.raises(Boom):
            delayed(explode)(1).compute()
        assert dashboard_state(board)["ok"] is False
    finally:
        board.stop()


def test_persist_on_distributed_keeps_values_there(client):
    y = delayed(square)(3)
    p = client.persist(y)
    assert p.key == y.key
    assert p.compute() == 9
    assert (p + 1).compute() == 10
    assert delayed(sum)([p, p, 1]).compute() == 19
    q, r = client.persist([y, y + 1])
    assert (q.compute(), r.compute()) == (9, 10)
    assert dask.compute(p + 1, scheduler=client._distributed_client) == (10,)


def test_a_future_passed_to_a_task_is_its_value(client):
    future = client.submit(square, 4)
    assert delayed(square)(future).compute() == 256
    assert delayed(sum)([future, future]).compute() == 32
    assert delayed(lambda d: d["k"][1])({"k": ("a", future)}).compute() == 16
    assert dask.compute(delayed(square)(future), scheduler=client._distributed_client) == (256,)


def test_task_exceptions_come_back_as_themselves_on_distributed(client):
    with pytest.raises(Boom, match="bad 9") as caught:
        delayed(explode)(delayed(square)(3)).compute()
    assert caught.value.__notes__ == [f"raised by belated task {caught.value.__notes__[0].split()[-1]}"]
    assert caught.value.__notes__[0].split()[-1].startswith("explode-")
    frames = traceback.extract_tb(caught.value.__traceback__)
    functions = [frame.name for frame in frames]
    assert functions[-1] == "explode"
    assert not {"run_block", "evaluate", "_evaluate", "get", "gather"} & set(functions)
    # Of belated's own frames, only the compute that was called (not _run, nor the block runner).
    own = os.path.join(os.path.dirname(belated.__file__), "")
    assert [frame.name for frame in frames if frame.filename.startswith(own)] == ["compute"]
    assert delayed(square)(2).compute() == 4


@pytest.mark.parametrize("kind", ["cause", "context", "from None"])
def test_a_task_exception_on_distributed_keeps_its_cause_and_context_as_dasks_compute_does(client, kind):
    # The block runner and the executor re-raised the task's exception "from None", which dropped the
    # cause of "raise X from Y" and hid an implicit context.
    def chain(error):
        return (repr(error.__cause__), repr(error.__context__), error.__suppress_context__)

    with pytest.raises(ValueError, match="chained") as expected:
        dask.compute(dask.delayed(raise_chained)(kind), scheduler=client._distributed_client)
    with pytest.raises(ValueError, match="chained") as caught:
        delayed(raise_chained)(kind).compute()
    assert chain(caught.value) == chain(expected.value)
    assert chain(caught.value)[:2] != ("None", "None"), "the chain is there to keep"


def test_client_is_the_default_scheduler_only_while_open(cluster):
    client = belated.Client(cluster.scheduler_address)
    assert belated.config.get("scheduler") is client
    assert "Client" in repr(client)
    future = client.compute(delayed(square)(6))
    assert client.gather(future) == 36
    with pytest.raises(TypeError, match="no belated local cluster"):
        client.cluster_stats()
    client.close()
    assert belated.config.get("scheduler", None) is None


def test_dask_accepts_belated_objects_and_belated_accepts_dask_delayed(client):
    x = delayed(square)(4)
    assert dask.compute(x + 1, scheduler="sync") == (17,)
    assert client._distributed_client.compute(x).result() == 16
    assert dask.delayed(square)(x).compute(scheduler="sync") == 256
    theirs = dask.delayed(square)(5)
    assert delayed(sum)([theirs, theirs, x]).compute(scheduler="sync") == 25 + 25 + 16
    (persisted,) = dask.persist(x, scheduler="sync")
    assert persisted.key == x.key and persisted.compute() == 16


def test_persist_on_a_cluster_keeps_the_results_there(client):
    # As dask's persist with a distributed Client as the scheduler (it raised NotImplementedError).
    persisted = delayed(square)(3).persist()
    [future] = distributed.futures_of(persisted)
    assert future.key == persisted.key and persisted.compute() == 9


def test_tutorial_and_api_programs_on_ray_equal_local_runs(ray_instance):
    for name, objects in [*tutorial_programs(), ("api", api_program())]:
        assert compute(*objects, scheduler="ray") == compute(*objects, scheduler="sync"), name


def test_task_exceptions_come_back_as_themselves_on_ray(ray_instance):
    with pytest.raises(Boom, match="bad 4") as caught:
        delayed(explode)(delayed(square)(2)).compute(scheduler="ray")
    assert caught.value.__notes__[0].startswith("raised by belated task explode-")


@pytest.mark.parametrize("kind", ["cause", "context", "from None"])
def test_a_task_exception_on_ray_keeps_its_cause_and_context_as_dasks_compute_does(ray_instance, kind):
    # Ray pickles a task's exception without its chain, and the runner re-raised it "from None".
    def chain(error):
        return (repr(error.__cause__), repr(error.__context__), error.__suppress_context__)

    with pytest.raises(ValueError, match="chained") as expected:
        dask.compute(dask.delayed(raise_chained)(kind), scheduler="sync")
    with pytest.raises(ValueError, match="chained") as caught:
        delayed(raise_chained)(kind).compute(scheduler="ray")
    assert chain(caught.value) == chain(expected.value)
    assert "_belated_chain" not in vars(caught.value)


def load(megabytes):
    return np.ones(megabytes * 2**20 // 8)


def step(array):
    return array + 1


def spilled_files(_, directory):
    return sum(len(files) for _, _, files in os.walk(directory))


def test_ray_frees_each_intermediate_once_its_consumer_is_submitted(ray_instance, spill_directory):
    x = delayed(load)(20)
    for _ in range(12):
        x = delayed(step)(x)
    # Held to the end, the 13 arrays of 20 MB would not fit a 100 MB store and would be spilled.
    assert SPILL_STORE < 13 * 20 * 2**20
    assert delayed(spilled_files)(x, spill_directory).compute(scheduler="ray") == 0


def sleep_in_worker(seconds, pid_file):
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(seconds)
    return seconds


def explode_once_started(pid_file):
    for _ in range(600):  # fails once the sleeper runs (up to 60 s)
        if os.path.exists(pid_file) and os.path.getsize(pid_file):
            break
        time.sleep(0.1)
    raise Boom("early")


def running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ray_cancels_the_rest_on_the_first_failure(ray_instance, tmp_path):
    pid_file = tmp_path / "sleeper"
    slow = delayed(sleep_in_worker)(600, str(pid_file))
    with pytest.raises(Boom, match="early"):
        compute([slow, delayed(explode_once_started)(str(pid_file))], scheduler="ray")
    pid = int(pid_file.read_text())
    for _ in range(300):  # the cancellation reaches the sleeping task's worker: up to 30 s
        if not running(pid):
            break
        time.sleep(0.1)
    assert not running(pid), "the task sleeping for 10 minutes was stopped"


FAILURES_BESIDE_QUICK_TASKS_ON_RAY = """
import sys, ray, belated

def quick(i):
    return i

def fail(x):
    raise ValueError("early")

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
for _ in range(40):
    tasks = [belated.delayed(quick)(i) for i in range(60)]
    tasks.insert(20, belated.delayed(fail)(tasks[3]))
    try:
        belated.compute(tasks, scheduler="ray")
    except ValueError:
        pass
    else:
        sys.exit("the failure was not raised")
print("all raised")
"""


def test_a_failure_among_quick_tasks_on_ray_leaves_the_process_running():
    # Found: the process died (Ray's driver aborts, "Check failed: ... Tried to complete task that was
    # not pending") in 2 runs of 3 of these 40 computations, when the failed task itself, finished, was
    # among those cancelled, or a forced cancel crossed a task's reply.
    pytest.importorskip("ray")
    script = FAILURES_BESIDE_QUICK_TASKS_ON_RAY
    checked = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "Check failed" not in checked.stderr
    assert (checked.returncode, checked.stdout) == (0, "all raised\n"), checked.stderr[-2000:]


def test_missing_engines_say_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'belated\[ray\]'"):
        delayed(square)(1).compute(scheduler="ray")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'belated\[dask\]'"):
        belated.Client("tcp://127.0.0.1:1")


def test_ray_must_be_started_first(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(belated.BelatedError, match=r"ray.init\(\)"):
        delayed(square)(1).compute(scheduler="ray")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=programs)
def test_random_programs_on_distributed_equal_eager_python(client, program):
    assert compute(*run(program, Lazy(belated)), scheduler=client) == tuple(run(program, Eager()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs)
def test_random_programs_on_ray_equal_eager_python(ray_instance, program):
    assert compute(*run(program, Lazy(belated)), scheduler="ray") == tuple(run(program, Eager()))
