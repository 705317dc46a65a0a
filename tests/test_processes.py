"""The processes scheduler: results, reuse of the pool, and faults with real process deaths."""

import contextlib
import io
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from worker_tasks import (
    Boom,
    crash,
    explode,
    pid_of,
    raise_chained,
    raise_reduce_raises,
    raise_with_array,
    record,
    slow_from,
    square,
    wait_gone,
)

import belated
from belated import _worker, compute, delayed


def kill_once(marker):
    """Dies by SIGKILL the first time it runs, then succeeds: a worker lost mid-task, once."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def test_tasks_are_handed_out_one_at_a_time():
    # Warm: every one of the 4 workers has its process.
    compute(*[delayed(pid_after)(0.2) for _ in range(4)], scheduler="processes", num_workers=4)
    pids = compute(*[delayed(pid_after)(0.3) for _ in range(10)], scheduler="processes", num_workers=4)
    per_worker = sorted(pids.count(pid) for pid in set(pids))
    assert len(per_worker) == 4 and max(per_worker) <= 3, f"10 tasks on 4 workers: {per_worker}"


def test_calls_run_in_reused_worker_processes():
    # A compute may run all its calls on one of the two workers (a batch), so only the union of three
    # computes tells a reused pool (two pids at most) from pools started anew (three at least).
    seen = [
        set(compute(*[delayed(pid_of)(i) for i in range(8)], scheduler="processes", num_workers=2))
        for _ in range(3)
    ]
    assert os.getpid() not in set.union(*seen)
    assert len(set.union(*seen)) <= 2, "the pool is started once and reused"


def test_results_match_local_runs():
    x = delayed(square)(3)
    q, r = delayed(divmod, nout=2)(x, 4)
    array = np.arange(1_000_000, dtype=np.float64)
    program = ([x, {"k": (x, x + 1)}], delayed("belated").upper(), q * 10 + r, delayed(np.sum)(array * 2))
    assert compute(*program, scheduler="processes") == compute(*program, scheduler="sync")
    doubled = delayed(np.multiply)(array, 2).compute(scheduler="processes")
    assert np.array_equal(doubled, array * 2)


def test_task_exceptions_come_back_as_themselves_with_the_workers_traceback():
    with pytest.raises(Boom, match="bad 9") as caught:
        delayed(explode)(delayed(square)(3)).compute(scheduler="processes")
    # The worker's frames, rebuilt as frames of this process: the task's own line is the last one.
    last = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert (last.name, last.line) == ("explode", 'raise Boom(f"bad {x}")')


@pytest.mark.parametrize("size", [2, 2 * _worker.SHARE_FROM])
def test_an_exception_holding_an_array_comes_back_as_itself_as_in_dasks_processes(size):
    with pytest.raises(ValueError, match="bad rows") as caught:
        delayed(raise_with_array)(size).compute(scheduler="processes")
    np.testing.assert_array_equal(caught.value.args[1], np.arange(size))
    assert type(caught.value.__cause__) is KeyError
    np.testing.assert_array_equal(caught.value.__cause__.args[1], np.arange(size))


# A function of a script travels by value. Its file's lines went with every call, so a task of a 15 KB
# script cost a 16 KB call; a worker on this machine reads the unchanged file itself.
SCRIPT = """
import traceback, belated
from belated import _worker

def explode(x):
    raise ValueError(f"bad {x}")

def call_bytes():
    _worker.new_computation()
    return len(b"".join(_worker.dumps_call(explode, (1,), {})))

if __name__ == "__main__":
    print(call_bytes())
    try:
        belated.delayed(explode)(1).compute(scheduler="processes")
    except ValueError as error:
        print(traceback.extract_tb(error.__traceback__)[-1].line)
    with open(__file__, "a") as script:
        script.write("# edited while it ran\\n")
    print(call_bytes())
"""


def test_a_script_function_travels_without_its_files_lines_unless_the_file_changed(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT + "# padding\n" * 2_000)
    size = script.stat().st_size
    shown = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    unchanged, line, edited = int(shown[0]), shown[1], int(shown[2])
    assert unchanged < size / 4 and line == 'raise ValueError(f"bad {x}")'
    # The worker would read the edited file: the lines this process ran travel instead.
    assert edited > size


def _chain_of(error):
    """What an exception's display shows of its chain: each link's type, message and innermost frame,
    whether ``__cause__`` and ``__context__`` are one exception, and whether the context is hidden."""

    def link(linked):
        if linked is None:
            return None
        frames = traceback.extract_tb(linked.__traceback__)
        return (type(linked), str(linked), frames[-1].name if frames else None)

    same = error.__cause__ is not None and error.__cause__ is error.__context__
    return (link(error), link(error.__cause__), link(error.__context__), same, error.__suppress_context__)


@pytest.mark.parametrize("kind", ["cause", "context", "from None"])
@pytest.mark.parametrize("where", ["processes", "Client"])
def test_an_exception_from_a_worker_keeps_its_cause_and_context_as_dasks_processes_does(kind, where):
    import dask

    with pytest.raises(ValueError, match="chained") as expected:
        dask.compute(dask.delayed(raise_chained)(kind), scheduler="processes")
    with contextlib.ExitStack() as stack:
        if where == "Client":
            stack.enter_context(belated.Client(n_workers=1, threads_per_worker=1))
            options = {}
        else:
            options = {"scheduler": "processes"}
        with pytest.raises(ValueError, match="chained") as caught:
            compute(delayed(raise_chained)(kind), **options)
    assert _chain_of(caught.value) == _chain_of(expected.value)
    shown = "".join(traceback.format_exception(caught.value))
    assert ("KeyError: 'missing'" in shown) == (kind != "from None")


@pytest.mark.parametrize("span", [(4, 28), (0, 40), (2, 9), (None, None)], ids=str)
def test_a_workers_frames_are_rebuilt_here_at_their_files_lines_functions_and_columns(tmp_path, span):
    source = tmp_path / "where.py"
    source.write_text("def outer():\n    return inner(1) + inner(2) * 3 + 100000\n")
    start, end = span
    where = [(str(source), 2, "outer", start, end), ("<no file>", 7, "inner", None, None)]
    rebuilt = _worker._traceback_through(where)
    frames = traceback.extract_tb(rebuilt)
    assert [(f.filename, f.lineno, f.name) for f in frames] == [(w[0], w[1], w[2]) for w in where]
    assert frames[0].line == "return inner(1) + inner(2) * 3 + 100000"
    if sys.version_info >= (3, 11):
        # The span the worker marked, where a statement that raises fits in it; else the whole line, so
        # no caret marks the wrong part of it.
        fits = start is not None and end - start >= len("raise(__rebuilding__)") and start != 1
        assert (frames[0].colno, frames[0].end_colno) == ((start, end) if fits else (4, 43))


def test_a_worker_killed_mid_task_is_replaced_and_the_task_retried(tmp_path):
    marker = str(tmp_path / "killed-once")
    assert delayed(kill_once)(marker).compute(scheduler="processes", retries=1) == "survived"
    assert os.path.exists(marker)
    assert delayed(square)(4).compute(scheduler="processes") == 16


@pytest.mark.parametrize("on", ["processes", "client"])
def test_a_task_whose_worker_died_runs_again_and_callbacks_see_both_starts(tmp_path, on):
    # The engine runs it again, as distributed's scheduler does (its transition log has the task
    # processing twice, released in between); dask's callbacks see each start, and one finish.
    marker = str(tmp_path / "killed-once")
    started, finished, ended = [], [], []
    callback = belated.diagnostics.Callback(
        pretask=lambda key, dsk, state: started.append(key),
        posttask=lambda key, result, dsk, state, worker: finished.append(key),
        finish=lambda dsk, state, errored: ended.append((state.done, state.failed, errored)),
    )
    task = delayed(kill_once)(marker, dask_key_name="dies-once")
    with contextlib.ExitStack() as stack:
        scheduler = "processes"
        if on == "client":
            scheduler = stack.enter_context(
                belated.Client(
                    n_workers=1, threads_per_worker=1, dashboard_address=None, set_as_default=False
                )
            )
        stack.enter_context(callback)
        assert compute(task, scheduler=scheduler, retries=1) == ("survived",)
    assert started == ["dies-once", "dies-once"]
    assert finished == ["dies-once"]
    assert ended == [(1, 0, False)], "the lost run is undone: one task done, none failed"


@pytest.mark.parametrize(
    ("task", "death"),
    [(delayed(os._exit), "exit status: 3"), (delayed(crash), "signal: 11")],
    ids=["os._exit", "segfault"],
)
def test_a_task_that_always_kills_its_worker_fails_clearly(task, death):
    call = task(3) if death.startswith("exit") else task()
    with pytest.raises(
        belated.WorkerLostError, match=f"failed after 3 tries: its worker process died.*{death}"
    ):
        call.compute(scheduler="processes", retries=2)
    assert delayed(square)(5).compute(scheduler="processes") == 25, "the pool recovers"


def test_unpicklable_arguments_are_reported_before_anything_runs(tmp_path):
    marker = tmp_path / "ran"
    lock = threading.Lock()
    with pytest.raises(
        belated.BelatedError, match=r"cannot be sent to a worker process: <unlocked _thread\.lock"
    ):
        compute(delayed(record)(str(marker)), delayed(square)(lock), scheduler="processes")
    assert not marker.exists()


def test_no_worker_outlives_its_parent(tmp_path):
    pids = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, time
        from belated import compute, delayed

        def report(i):
            with open({str(pids)!r}, "a") as out:
                out.write(f"{{os.getpid()}}\\n")
            time.sleep(60)

        compute(*[delayed(report)(i) for i in range(2)], scheduler="processes", num_workers=2)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (pids.exists() and len(pids.read_text().split()) == 2):
        time.sleep(0.05)
    workers = [int(pid) for pid in pids.read_text().split()]
    assert len(workers) == 2
    parent.kill()
    parent.wait(timeout=10)
    assert wait_gone(workers), "workers died with their parent"


def test_diagnostics_see_process_runs():
    from belated.diagnostics import Callback, Profiler

    finished = []
    with Profiler() as profiler, Callback(posttask=lambda key, result, *_: finished.append(result)):
        compute(*[delayed(square)(i) for i in range(5)], scheduler="processes", num_workers=2)
    assert len(profiler.results) == 5
    assert sorted(finished) == [0, 1, 4, 9, 16]


def test_a_worker_loads_only_its_own_modules_of_belated_until_a_task_needs_the_package():
    # eval is pickled by reference to builtins, so running it imports nothing of the test's.
    modules_of_belated = "sorted(m for m in __import__('sys').modules if m.split('.')[0] == 'belated')"
    with belated.Client(n_workers=1, threads_per_worker=1) as client:
        assert client.submit(eval, modules_of_belated, pure=False).result(timeout=60) == [
            "belated._logging",
            "belated._worker",
        ]
        # Nor does an input kept in the worker (it arrives as a lookup in the worker's store).
        scope = delayed(dict)()
        assert delayed(eval)(modules_of_belated, scope).compute(timeout=60) == [
            "belated._logging",
            "belated._worker",
        ]
        # A task that needs the package imports it beside the modules loaded alone.
        imported = "__import__('belated').delayed(abs)(-3).compute(scheduler='sync')"
        assert client.submit(eval, imported, pure=False).result(timeout=60) == 3
        assert "belated" in client.submit(eval, modules_of_belated, pure=False).result(timeout=60)


def belated_environment():
    import os

    return sorted(name for name in os.environ if name.startswith("BELATED_"))


def test_a_worker_leaves_no_belated_variable_in_its_tasks_environment_or_config():
    # BELATED_* variables are config keys, in the task and in any Python it starts.
    theirs = belated_environment()
    assert delayed(belated_environment)().compute(scheduler="processes", timeout=60) == theirs
    with belated.Client(n_workers=1, threads_per_worker=1) as client:
        assert client.submit(belated_environment, pure=False).result(timeout=60) == theirs


def golden_vectors():
    path = Path(__file__).parent.parent / "crates" / "belated-cluster" / "golden" / "wire.txt"
    lines = [line.split() for line in path.read_text().splitlines() if not line.startswith("#")]
    return {name: bytes.fromhex(data) for name, data in lines}


def test_the_worker_reads_and_writes_the_golden_wire_vectors():
    golden = golden_vectors()
    cases = {
        "empty": ([], None),
        "two-frames": ([b"ab", b""], None),
        "run-header": (None, [_worker.RUN, 1, 7, 42, _worker.SEND, 0]),
        "fetch-header": (None, [_worker.FETCH, 0, 2, 5, 6]),
        "batch-header": (None, [_worker.BATCH, 1, 7, 40_000, 2, 42, _worker.SEND, 1, 43, _worker.KEEP, 1]),
        "batch-same-function": (
            None,
            [_worker.BATCH, 0, 40_000, 2, 42, _worker.SEND, 2, 43, _worker.SEND | _worker.SAME_FUNCTION, 1],
        ),
        # A batch of three that overran in its second call: the first call's reply, the third handed back.
        "batch-reply": ([struct.pack("<4Q", 1, 0, 2, 1), b"ab"], None),
    }
    # A task's request to the parent: its header, then a pickle's frames.
    client_request = ([struct.pack("<2Q", _worker.CLIENT, 0), b"ab"], None)
    cases["client-request"] = client_request
    assert set(cases) == {name for name in golden if not name.startswith("segment")}  # test_shared_memory
    for name, (frames, header) in cases.items():
        read = _worker.read_message(io.BytesIO(golden[name]))
        if header is not None:
            assert len(read) == 1 and memoryview(read[0]).cast("Q").tolist() == header, name
            frames = read
        assert read == frames, name
        written = io.BytesIO()
        _worker.write_message(written, frames)
        assert written.getvalue() == golden[name], name
        # A worker's channel takes the frames it has buffered in bulk, and writes plain frames in one.
        left, right = socket.socketpair()
        with left, right:
            _worker.write_message(_worker.Channel(left), frames)
            assert _worker.read_message(_worker.Channel(right)) == frames, name


class _Trickle:
    """A socket whose reads each bring at most ``step`` bytes of ``data``."""

    def __init__(self, data, step):
        self.data, self.at, self.step = data, 0, step

    def _next(self, n):
        chunk = self.data[self.at : self.at + min(n, self.step)]
        self.at += len(chunk)
        return chunk

    def recvmsg(self, n, ancillary, flags):
        return self._next(n), [], 0, None

    def recvmsg_into(self, buffers, ancillary, flags):
        chunk = self._next(len(buffers[0]))
        buffers[0][: len(chunk)] = chunk
        return len(chunk), [], 0, None


@pytest.mark.parametrize("step", [1, 5, 8, 13, 4096, 1 << 20])
def test_a_channel_reads_a_message_of_many_frames_split_across_reads(step):
    """Frames of a batch straddle the channel's reads: a length word or a frame's bytes cut by the end
    of a read, and a frame larger than a read in the middle."""
    frames = [bytes([i % 251]) * (i % 37) for i in range(3000)]
    frames[1500] = b"x" * 200_000
    written = io.BytesIO()
    _worker.write_message(written, frames)
    channel = _worker.Channel(_Trickle(written.getvalue() * 2, step))
    assert _worker.read_message(channel) == frames
    assert _worker.read_message(channel) == frames, "the next message starts where the first ends"
    assert _worker.read_message(channel) is None


def watcher():
    """A watcher of batches on a connection nobody reads: for batches that never overrun."""
    _, theirs = socket.socketpair()
    return _worker._Watcher(_worker.Channel(theirs))


_OVERRUN = {}


def overrun_then_wait(value):
    """Makes the batch running it overrun now, and returns once the test read the batch's first reply."""
    watcher = _OVERRUN["watcher"]
    with watcher.lock:
        watcher.batch.deadline = 0
        watcher.changed.notify()
    assert _OVERRUN["read"].wait(timeout=60)
    return value


def _reply_header(frames):
    return memoryview(frames[0]).cast("Q").tolist()


def test_a_batch_hands_back_only_the_calls_its_thread_has_not_taken_and_keeps_later_replies_for_its_last():
    """The connection's thread and the watcher share a batch without a lock a call: each call is
    taken by one of them, and a reply the thread adds after the watcher took the others goes in the
    batch's last reply."""
    batch = _worker._Batch(0, [10, 1, 1, 11, 1, 1, 12, 1, 2])
    assert next(batch.unstarted) == (0, 10, 1, 1)
    batch.done.append([b"ten"])
    assert next(batch.unstarted) == (1, 11, 1, 1), "the call running when the batch overruns"
    batch.hand_back()
    assert batch.end == 2 and next(batch.unstarted, None) is None, "call 2 is handed back"
    first = batch.reply()
    assert _reply_header(first) == [1, 0, 2, 1] and first[1:] == [b"ten"]
    batch.done.append([b"eleven", b"buffer"])
    last = batch.reply()
    assert _reply_header(last) == [1, 1, 2, 2] and last[1:] == [b"eleven", b"buffer"]


def test_a_batch_that_overruns_in_its_last_call_hands_back_nothing():
    batch = _worker._Batch(0, [10, 1, 1, 11, 1, 1])
    assert [call[0] for call in batch.unstarted] == [0, 1]
    batch.done.append([b"ten"])
    batch.hand_back()
    assert batch.end == 2
    assert _reply_header(batch.reply()) == [1, 0, 2, 1]
    batch.done.append([b"eleven"])
    assert _reply_header(batch.reply()) == [1, 1, 2, 1]


def test_a_batch_that_overruns_replies_at_once_with_what_it_did_and_hands_back_the_calls_not_started():
    _worker.new_computation()
    ours, theirs = socket.socketpair()
    ours.settimeout(60)
    _OVERRUN.update(watcher=_worker._Watcher(_worker.Channel(theirs)), read=threading.Event())
    calls = [_worker.dumps_call(square, (2,), None), _worker.dumps_call(overrun_then_wait, ("slow",), None)]
    calls += [_worker.dumps_call(square, (3,), None), _worker.dumps_call(square, (4,), None)]
    flags = [_worker.SEND, _worker.SEND, _worker.KEEP, _worker.KEEP]
    words = [_worker.BATCH, 0, 10**9, len(calls)]
    for result_id, (call, flag) in enumerate(zip(calls, flags, strict=True), start=100):
        words += [result_id, flag, len(call)]
    frames = [struct.pack(f"<{len(words)}Q", *words), *[frame for call in calls for frame in call]]
    last = []
    thread = threading.Thread(target=lambda: last.append(_worker._handle_batch(frames, _OVERRUN["watcher"])))
    thread.start()
    try:
        first = _worker.read_message(_worker.Channel(ours))
        # The first call's reply, the batch ending after the slow call: 2 and 3 are handed back.
        header = memoryview(first[0]).cast("Q").tolist()
        assert header[:3] == [1, 0, 2] and header[3] == len(first) - 1
        assert list(_worker.loads_reply(first[1:])) == [True, 4]
        assert thread.is_alive(), "the slow call still runs"
    finally:
        _OVERRUN["read"].set()
        thread.join(timeout=60)
    (reply,) = last
    header = memoryview(reply[0]).cast("Q").tolist()
    assert header[:3] == [1, 1, 2] and header[3] == len(reply) - 1
    assert list(_worker.loads_reply(reply[1:])) == [True, "slow"]
    assert 102 not in _worker._STORE and 103 not in _worker._STORE, "never ran"


def _logs(text):
    _worker._keep_record({"msg": text})
    return text


def test_a_batch_releases_the_ids_its_header_lists_and_sends_each_calls_records_with_its_reply():
    _worker.new_computation()
    _worker._STORE.update({50: "released", 51: "kept"})
    calls = [_worker.dumps_call(square, (2,), None), _worker.dumps_call(_logs, ("second",), None)]
    calls.append(_worker.dumps_call(square, (4,), None))
    words = [_worker.BATCH, 1, 50, 10**9, len(calls)]
    for result_id, call in enumerate(calls, start=100):
        words += [result_id, _worker.SEND, len(call)]
    header = struct.pack(f"<{len(words)}Q", *words)
    try:
        reply = _worker._handle_batch([header, *[frame for call in calls for frame in call]], watcher())
        assert 50 not in _worker._STORE and _worker._STORE[51] == "kept"
        assert memoryview(reply[0]).cast("Q").tolist() == [3, 0, 3, 1, 1, 1]
        first, second, third = reply[1:]
        # An int result with no records is the int alone; the call that logged carries its records.
        assert [_worker.loads_reply([first]), _worker.loads_reply([third])] == [(True, 4), (True, 16)]
        assert first[:1] == third[:1] == _worker.INT_REPLY
        assert _worker.loads([second]) == (True, "second", [{"msg": "second"}])
    finally:
        _worker._STORE.pop(51, None)


@pytest.mark.parametrize("on", ["processes", "client"])
def test_calls_handed_back_by_batches_again_and_again_run_and_are_no_worker_lost(on):
    # After a thousand quick calls, each of the slow ones overruns the batch it starts, which hands
    # back the calls after it: the later slow calls are handed back once per slow call before them.
    # None of them ran, and no worker died: they are not lost results, however often it happens.
    calls = [delayed(slow_from)(x, 1000, 1020, 0.03) for x in range(1100)]
    if on == "processes":
        (got,) = compute(calls, scheduler="processes", num_workers=1)
    else:
        with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            got = client.compute(calls, sync=True)
    assert got == list(range(1100))


def test_a_batch_runs_each_of_its_calls_and_replies_to_each_as_a_run_would():
    _worker.new_computation()
    calls = [_worker.dumps_call(square, (3,), None), _worker.dumps_call(divmod, (7, 0), None)]
    calls.append(_worker.dumps_call(square, (_worker.Stored(41),), None))
    calls.append(_worker.dumps_call(raise_reduce_raises, (), None))
    _worker._STORE[41] = 5
    flags = [_worker.SEND, _worker.SEND, _worker.KEEP, _worker.SEND]
    words = [_worker.BATCH, 0, 10**9, len(calls)]
    for result_id, (call, flag) in enumerate(zip(calls, flags, strict=True), start=100):
        words += [result_id, flag, len(call)]
    header = struct.pack(f"<{len(words)}Q", *words)
    try:
        reply = _worker._handle_batch([header, *[frame for call in calls for frame in call]], watcher())
        counts = memoryview(reply[0]).cast("Q").tolist()
        assert counts[:3] == [4, 0, 4] and sum(counts[3:]) == len(reply) - 1
        replies, at = [], 1
        for count in counts[3:]:
            replies.append(_worker.loads_reply(reply[at : at + count]))
            at += count
        assert list(replies[0]) == [True, 9]
        assert replies[1][0] is False and isinstance(replies[1][1], ZeroDivisionError)
        # A kept result stays in the worker; its reply is its size.
        assert list(replies[2]) == [True, _worker.nbytes(25)] and _worker._STORE[102] == 25
        # An exception that cannot be sent fails its own call alone, as a RemoteError.
        assert replies[3][0] is False and isinstance(replies[3][1], belated.RemoteError)
        assert replies[3][1].type_name.endswith("ReduceRaises")
    finally:
        for id in (41, 100, 101, 102, 103):
            _worker._STORE.pop(id, None)


PRELOADS = """
import sys, time
import belated


def has_numpy(wait):
    deadline = time.monotonic() + wait
    while "numpy" not in sys.modules and time.monotonic() < deadline:
        time.sleep(0.01)
    return "numpy" in sys.modules


print(belated.compute(belated.delayed(has_numpy)(0), scheduler="processes", num_workers=1)[0])
import numpy
print(belated.compute(belated.delayed(has_numpy)(60), scheduler="processes", num_workers=2)[0])
"""


def test_processes_workers_preload_numpy_when_this_process_has_imported_it():
    # A first task on arrays would otherwise wait for each worker's numpy import, which a Client's
    # workers made while the user got ready: the shared-array benchmark's 2.4x against the Client.
    done = subprocess.run([sys.executable, "-c", PRELOADS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"], "a pool started before numpy's import does not load it"


def test_an_unpickle_waits_for_the_preloading_modules_its_pickle_names_and_no_other():
    import pickle

    import cloudpickle

    preloading = ["numpy", "pandas"]
    assert _worker.names_any(pickle.dumps(np.arange(3), protocol=5), preloading)
    script = {"__name__": "__main__", "np": np}
    exec("def sums(values):\n    return np.sum(values)\n", script)
    # By value, with the module it reads as a global: a script's function.
    assert _worker.names_any(cloudpickle.dumps(script["sums"], protocol=5), ["numpy"])
    assert _worker.names_any(pickle.dumps(np.float64(1.5), protocol=5), ["numpy"])
    # A function's source lines travel with it: a script that imports numpy names no module.
    source = ["import numpy as np\n", "def inc(x):\n", "    return x + 1\n"]
    assert not _worker.names_any(pickle.dumps((square, source), protocol=5), preloading)
    assert not _worker.names_any(pickle.dumps(np.arange(3), protocol=5), ["pandas", "num"])
    assert not _worker.names_any(pickle.dumps(np.arange(3), protocol=5), [])


def test_a_list_or_tuple_of_stored_results_travels_as_their_ids(monkeypatch):
    # A reduction over ten thousand results reduced each Stored in Python (24 ms of its 40-90 ms):
    # a container of stored results alone now pickles as one object, none of them reduced alone.
    reduced = []
    monkeypatch.setattr(
        _worker.Stored, "__reduce__", lambda self: reduced.append(self.id) or (_worker.stored, (self.id,))
    )
    _worker._STORE.update({7: "a", 8: "b", 9: "c"})
    try:
        stored = [_worker.Stored(7), _worker.Stored(8)]
        frames = _worker.dumps_call(
            max, (stored, tuple(stored), [_worker.Stored(9), "here"], _worker.Stored(9)), None
        )
        assert reduced == [9, 9]  # the mixed list's and the lone one's
        function, args, kwargs = _worker.loads_call(frames)
        assert function is max and kwargs is None
        assert args == (["a", "b"], ("a", "b"), ["c", "here"], "c")
        assert [type(arg) for arg in args] == [list, tuple, list, str]
    finally:
        for id in (7, 8, 9):
            _worker._STORE.pop(id, None)


def test_a_sum_of_many_results_kept_in_both_workers_is_their_sum():
    parts = [delayed(square)(i) for i in range(300)]
    assert compute(delayed(sum)(parts), delayed(tuple)(parts), scheduler="processes", num_workers=2) == (
        sum(i * i for i in range(300)),
        tuple(i * i for i in range(300)),
    )


def test_a_batch_call_flagged_same_function_runs_the_function_of_the_call_before_it():
    _worker.new_computation()
    calls = [
        _worker.dumps_call(f, args, None) for f, args in [(square, (2,)), (square, (3,)), (divmod, (7, 2))]
    ]
    calls.append(_worker.dumps_call(divmod, (9, 4), None))
    same = [False, True, False, True]
    words = [_worker.BATCH, 0, 10**9, len(calls)]
    frames = [b""]
    for result_id, (call, again) in enumerate(zip(calls, same, strict=True), start=100):
        flags = _worker.SEND | (_worker.SAME_FUNCTION if again else 0)
        sent = call[1:] if again else call
        words += [result_id, flags, len(sent)]
        frames += sent
    frames[0] = struct.pack(f"<{len(words)}Q", *words)
    reply = _worker._handle_batch(frames, watcher())
    counts = memoryview(reply[0]).cast("Q").tolist()
    assert counts[:3] == [4, 0, 4]
    replies, at = [], 1
    for count in counts[3:]:
        replies.append(list(_worker.loads_reply(reply[at : at + count])))
        at += count
    assert replies == [[True, 4], [True, 9], [True, (3, 1)], [True, (2, 1)]]


def varied(kind):
    """A result of each kind a batch's calls of one function in a row may bring back."""
    if kind == "raises":
        raise ValueError("varied raised")
    if kind == "logs":
        _worker._keep_record({"msg": "varied logged"})
    results = {"int": 7, "str": "seven", "float": 7.5, "bool": True, "big": 2**70, "list": [7] * 20}
    return results.get(kind, kind)


def test_a_batchs_calls_of_one_function_in_a_row_reply_and_keep_as_each_run_alone_would():
    # Such calls take a shorter way through the batch (most of a graph of small tasks): what they keep,
    # and each reply's bytes, must be what the same call sent alone as a RUN gets.
    kinds = ["int", "str", "float", "bool", "big", "list", "raises", "logs", "int", "int"]
    flags = [_worker.KEEP] * len(kinds)
    flags[-1] = _worker.KEEP | _worker.SEND
    _worker.new_computation()
    calls = [_worker.dumps_call(varied, (kind,), None) for kind in kinds]
    words = [_worker.BATCH, 0, 10**9, len(calls)]
    frames = [b""]
    for result_id, (call, flag) in enumerate(zip(calls, flags, strict=True), start=200):
        sent = call[1:] if result_id > 200 else call
        words += [result_id, flag | (_worker.SAME_FUNCTION if result_id > 200 else 0), len(sent)]
        frames += sent
    frames[0] = struct.pack(f"<{len(words)}Q", *words)
    try:
        reply = _worker._handle_batch(frames, watcher())
        counts = memoryview(reply[0]).cast("Q").tolist()
        assert counts[:3] == [len(kinds), 0, len(kinds)]
        batched, at = [], 1
        for count in counts[3:]:
            batched.append(reply[at : at + count])
            at += count
        kept = {id: _worker._STORE.pop(id) for id in range(200, 200 + len(kinds)) if id in _worker._STORE}
        alone = []
        for result_id, (call, flag) in enumerate(zip(calls, flags, strict=True), start=200):
            header = struct.pack("<5Q", _worker.RUN, 0, result_id, flag, 0)
            alone.append(_worker._encode(_worker._handle([header, *call]), _worker._take_records()))
        assert batched == alone
        assert kept == {
            id: varied(kind) for id, kind in enumerate(kinds, start=200) if kind not in ("raises", "logs")
        } | {207: "logs"}
        # The call that logged carries its records, its result kept and replied to by its size.
        assert _worker.loads(batched[7]) == (True, _worker.nbytes("logs"), [{"msg": "varied logged"}])
        failed = _worker.loads_reply(batched[6])
        assert failed[0] is False and isinstance(failed[1], ValueError)
        # The traceback starts in the task, as eager Python's would from the call.
        assert traceback.extract_tb(failed[1].__traceback__)[0].name == "varied"
    finally:
        for id in range(200, 200 + len(kinds)):
            _worker._STORE.pop(id, None)


def fails_to_unpickle():
    raise ValueError("this argument cannot be rebuilt")


class RebuildFails:
    def __reduce__(self):
        return fails_to_unpickle, ()


def test_a_batch_call_of_the_function_of_a_call_whose_arguments_failed_to_unpickle_runs_it():
    _worker.new_computation()
    calls = [_worker.dumps_call(square, (RebuildFails(),), None), _worker.dumps_call(square, (5,), None)]
    words = [_worker.BATCH, 0, 10**9, 2, 100, _worker.SEND, 2, 101, _worker.SEND | _worker.SAME_FUNCTION, 1]
    reply = _worker._handle_batch([struct.pack(f"<{len(words)}Q", *words), *calls[0], calls[1][1]], watcher())
    first, second = _worker.loads_reply(reply[1:2]), _worker.loads_reply(reply[2:3])
    assert first[0] is False and isinstance(first[1], ValueError)
    assert list(second) == [True, 25]


def identity(value):
    return value


# The ints at the edges of the 64 bits an int reply carries, and just past them.
EDGES = [2**63 - 1, -(2**63), 2**63, -(2**63) - 1]


def test_int_results_come_back_as_themselves_and_not_as_an_equal_value_of_another_type():
    values = [1, True, 1.0, 0, False, 2**70, -5, *EDGES, *range(100, 3100)]
    got = compute(*[delayed(identity)(value) for value in values], scheduler="processes", num_workers=2)
    assert [(type(value), value) for value in got] == [(type(value), value) for value in values]


def test_a_call_whose_result_is_a_64_bit_int_replies_with_the_int_alone_not_a_pickle():
    for value in [0, 28, -1, *EDGES[:2]]:
        (frame,) = _worker._encode((True, value), [])
        assert frame == _worker.INT_REPLY + value.to_bytes(8, "little", signed=True)
        assert _worker.loads_reply([frame]) == (True, value)
    # Past 64 bits, an int's subclass, or with log records to carry: a pickle, read as it was.
    for value in [*EDGES[2:], True]:
        frames = _worker._encode((True, value), [])
        assert frames[0][:1] != _worker.INT_REPLY
        assert type(_worker.loads_reply(frames)[1]) is type(value) and _worker.loads_reply(frames)[1] == value
    record = {"msg": "m", "levelno": 20, "name": "n", "process": 1}
    assert _worker._encode((True, 5), [record])[0][:1] != _worker.INT_REPLY


def test_a_pickle_of_plain_values_loads_while_another_thread_unpickles_what_may_import():
    plain = (1, pickle.dumps({}), ("text", 2**40, None, 1.5), None)
    loaded = []
    # Held as by a thread whose unpickling imports a slow module.
    with _worker._UNPICKLING:
        thread = threading.Thread(
            target=lambda: loaded.append(_worker.loads([pickle.dumps(plain, protocol=5)]))
        )
        thread.start()
        thread.join(timeout=60)
        assert loaded == [plain]
    # A data byte that reads as a reference to a global takes the long way, to the same value.
    assert _worker.loads([pickle.dumps((pickle.STACK_GLOBAL[0], "x"), protocol=5)]) == (0x93, "x")


def described(*args, **kwargs):
    return [(type(arg).__name__, repr(arg)) for arg in [*args, *sorted(kwargs.items())]]


# Arguments of each type the parent pickles itself, at the edges of each opcode's range, and beside
# them ones it leaves to pickle (past 64 bits, lone surrogates, a subclass).
PLAIN_ARGUMENTS = [
    *[0, 255, 256, 65535, 65536, -1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, *EDGES],
    *[True, False, None, 0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan")],
    *["", "é", "x" * 255, "y" * 256, "\ud800", b"", b"\x00" * 255, b"b" * 256, Boom("not plain")],
]


def test_calls_of_plain_arguments_run_on_the_values_given_however_many_and_whatever_kept_with_them():
    calls = [delayed(described)(value) for value in PLAIN_ARGUMENTS]
    calls += [delayed(described)(), delayed(described)(1, 2), delayed(described)(1, "two", 3.0)]
    calls += [delayed(described)(*PLAIN_ARGUMENTS), delayed(described)(1, key="word")]
    kept = delayed(identity)(41)
    calls += [delayed(described)(kept), delayed(described)(7, kept, None, kept, "z")]
    expected = [call.compute(scheduler="sync") for call in calls]
    assert list(compute(*calls, scheduler="processes", num_workers=2)) == expected
    # Once more, so that each function is called after its first call taught the parent its pickle.
    assert list(compute(*calls, *calls, scheduler="processes", num_workers=2)) == expected * 2


def test_lists_and_tuples_of_results_kept_in_the_worker_reach_the_call_as_built():
    kept = [delayed(identity)(value) for value in range(5)]
    calls = [delayed(described)(kept), delayed(described)(tuple(kept)), delayed(described)(kept[:1])]
    calls += [delayed(described)([kept[0], 7, kept[1]]), delayed(described)([], (kept[0], kept[0]))]
    calls += [delayed(described)([kept[2], kept[2]], kept[3], key=kept[4])]
    expected = [call.compute(scheduler="sync") for call in calls]
    assert list(compute(*calls, scheduler="processes", num_workers=2)) == expected


def test_results_kept_in_workers_are_placed_by_their_size_whatever_int_they_are():
    values = [*EDGES, 0, -1, 7]
    kept = [delayed(identity)(value) for value in values]
    # Each result stays in its worker, which replies with its size; the list gathers them.
    (got,) = compute(delayed(list)(kept), scheduler="processes", num_workers=2)
    assert got == values
