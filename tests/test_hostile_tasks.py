"""Hostile but ordinary tasks on worker processes (the processes scheduler and the local cluster): they
print to file descriptor 1, read stdin, fork daemons, sleep until cancelled, raise exceptions that
cannot be rebuilt. None of it may corrupt, hang or silently change a result."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback

import pytest
from worker_tasks import (
    NeedsTwoArguments,
    ReduceRaises,
    c_fork_and_return_in_both,
    die_leaving_a_daemon,
    fork_and_return_in_both,
    nap,
    pid_of,
    print_lines,
    raise_needs_two_arguments,
    raise_notes_raise,
    raise_reduce_raises,
    raise_unpicklable,
    raise_worker_only,
    read_stdin,
    record_call_c_forking_on_the_first,
    record_then_nap,
    run_echo,
    shell_echo,
    square,
    wait_for_gate,
    wait_gone,
    write_fd1,
)

import belated
from belated import compute, delayed

# Long enough that a test waiting for it would hit pytest's timeout: these tasks only end by being
# cancelled or killed.
FOREVER = 1000


@pytest.fixture(params=["processes", "client"])
def run(request):
    """Computes on one worker process: of the processes scheduler, or of a one-worker local cluster."""
    if request.param == "processes":
        yield lambda *tasks, **options: compute(*tasks, scheduler="processes", num_workers=1, **options)
        return
    with belated.Client(
        n_workers=1, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as client:
        yield lambda *tasks, **options: compute(*tasks, scheduler=client, **options)


def output_until(capfd, wanted, seconds=30):
    """What the process printed to fd 1, read until it holds every line of ``wanted``."""
    seen = ""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen += capfd.readouterr().out
        if all(line in seen.splitlines() for line in wanted):
            break
        time.sleep(0.05)
    return seen


def test_output_on_fd_1_is_forwarded_by_worker_and_never_read_as_a_reply(run, capfd):
    (pid,) = run(delayed(pid_of)())
    # A frame header followed by junk: had fd 1 carried replies, this would be read as one.
    junk = (5).to_bytes(8, "little") + b"junk\n"
    assert run(delayed(shell_echo)("from-a-shell"), delayed(write_fd1)(junk)) == (0, len(junk))
    assert run(delayed(abs)(-5)) == (5,)
    seen = output_until(
        capfd, [f"[worker {pid}] from-a-shell", f"[worker {pid}] " + "\x05" + "\x00" * 7 + "junk"]
    )
    assert f"[worker {pid}] from-a-shell" in seen.splitlines()
    assert run(delayed(pid_of)()) == (pid,), "the worker survived"


def test_a_line_a_task_prints_is_forwarded_where_python_would_buffer_it(monkeypatch, capfd):
    # A worker's stdout is a pipe, which Python fills in blocks of 8 KiB unless PYTHONUNBUFFERED is set:
    # a task's print() reached the parent only once 8 KiB had gathered, and never if the worker ended
    # first. dask's worker processes print to the terminal, line by line.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    with belated.Client(
        n_workers=1, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as client:
        (pid,) = compute(delayed(pid_of)(), scheduler=client)
        assert compute(delayed(print)("printed by a task"), scheduler=client) == (None,)
        line = f"[worker {pid}] printed by a task"
        assert line in output_until(capfd, [line]).splitlines()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_what_a_task_printed_is_forwarded_before_its_compute_returns(run, capfd, stream):
    # As when dask's worker processes print straight to fd 1 and 2: the reply and the output came on
    # different pipes, and the thread forwarding the output was often still on its way through it.
    (pid,) = run(delayed(pid_of)())
    capfd.readouterr()
    assert run(delayed(print_lines)(2000, stream)) == (2000,)
    out, err = capfd.readouterr()
    printed = (out if stream == "stdout" else err).splitlines()
    assert printed == [f"[worker {pid}] line {i}" for i in range(2000)]


def test_a_subprocess_writing_to_stdout_is_not_killed_by_sigpipe(run, capfd):
    (pid,) = run(delayed(pid_of)())
    assert run(delayed(run_echo)("echoed")) == (0,), "echo wrote to its stdout"
    assert f"[worker {pid}] echoed" in output_until(capfd, [f"[worker {pid}] echoed"]).splitlines()


def test_a_forked_child_returning_from_its_task_does_not_answer_for_the_worker(run):
    assert run(delayed(fork_and_return_in_both)()) == ("parent",)
    assert run(delayed(abs)(-5), delayed(square)(3)) == (5, 9)


def test_a_child_forked_from_c_code_returning_from_its_task_does_not_answer_for_the_worker(run):
    assert run(delayed(c_fork_and_return_in_both)()) == ("parent",)
    assert run(delayed(abs)(-5), delayed(square)(3)) == (5, 9)


def test_a_child_forked_from_c_code_runs_none_of_the_calls_batched_after_its_task(run, tmp_path):
    # The child ended only once its batch was done: it ran the calls sent with the forking one again,
    # a second time in all, and took the batch's lock, which another thread may have held at the fork.
    log = tmp_path / "calls"
    # Mid-graph, so that the forking call travels in a batch of calls sent after it.
    order = [*range(1, 100), 0, *range(100, 200)]
    calls = [delayed(record_call_c_forking_on_the_first)(str(log), index) for index in order]
    assert run(delayed(sum)(calls)) == (sum(range(200)),)
    lines = log.read_text().splitlines()
    assert sorted(int(line.split()[0]) for line in lines) == list(range(200))
    assert len({line.split()[1] for line in lines}) == 1


def test_a_task_reading_stdin_reads_nothing(run):
    assert run(delayed(read_stdin)()) == ("",)
    assert run(delayed(square)(3)) == (9,)


def test_a_worker_whose_daemon_holds_its_descriptors_is_still_seen_to_die(run, tmp_path):
    daemon_pid = tmp_path / "daemon"
    try:
        with pytest.raises(belated.WorkerLostError, match="exit status: 7"):
            run(delayed(die_leaving_a_daemon)(str(daemon_pid)), retries=0)
    finally:
        if daemon_pid.exists():
            os.kill(int(daemon_pid.read_text()), signal.SIGKILL)
    assert run(delayed(square)(4)) == (16,)


def test_a_cancelled_task_frees_its_worker(run):
    (before,) = run(delayed(pid_of)())
    with pytest.raises(belated.ComputeTimeoutError):
        run(delayed(nap)(FOREVER), timeout=0.2)
    # With one worker, this waits for the cancelled nap unless its worker was replaced; and the
    # replacement is made at once, not found dead by the next task (which would need a retry).
    (after,) = run(delayed(pid_of)(), retries=0)
    assert after != before
    assert wait_gone([before])


def test_a_cancelled_future_frees_its_worker(tmp_path):
    started = tmp_path / "started"
    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        (before,) = client.worker_pids
        stuck = client.submit(record_then_nap, str(started), FOREVER)
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        stuck.cancel()
        assert client.submit(pid_of).result(timeout=60) != before
        with pytest.raises(belated.CancelledError):
            stuck.result(timeout=10)


def test_a_task_beside_futures_cancelled_again_and_again_on_its_worker_runs_to_its_end(tmp_path):
    # Each cancel kills the worker, and the task beside it runs again on the replacement: not that
    # task's failure, however often (distributed, which kills nothing, never fails it either).
    gate, beside_started = tmp_path / "gate", tmp_path / "beside.started"
    with belated.Client(n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        beside = client.submit(wait_for_gate, str(gate), str(tmp_path / "beside"))
        for attempt in range(4):
            deadline = time.monotonic() + 30
            while not beside_started.exists() and not beside.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert beside_started.exists(), beside
            beside_started.unlink()  # to see it start again after this round's cancel
            started = tmp_path / f"started-{attempt}"
            cancelled = client.submit(record_then_nap, str(started), FOREVER, pure=False)
            deadline = time.monotonic() + 30
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            cancelled.cancel()
        gate.touch()
        assert beside.result(timeout=60) == 1


def test_close_ends_every_future_with_cancelled_error():
    client = belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None)
    running = client.submit(nap, FOREVER)
    queued = [client.submit(square, i) for i in range(3)] + client.map(nap, [FOREVER] * 40, pure=False)
    client.close()
    for future in [running, *queued]:
        with pytest.raises(belated.CancelledError):
            future.result(timeout=30)
        assert future.status == "cancelled"


@pytest.mark.parametrize("scheduler", ["threads", "processes", "client"])
def test_interpreter_exit_never_waits_for_cancelled_work(scheduler, tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        import belated
        from belated import delayed

        def nap(seconds):
            time.sleep(seconds)

        if {scheduler!r} == "client":
            client = belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None)
            future = client.submit(nap, {FOREVER})
            time.sleep(0.5)
            future.cancel()
            # Left pending at exit: the client closes, as distributed's does, cancelling it.
            pending = client.submit(nap, {FOREVER})
            scheduler = client
        else:
            scheduler = {scheduler!r}
        try:
            delayed(nap)({FOREVER}).compute(scheduler=scheduler, timeout=0.3)
        except belated.ComputeTimeoutError:
            print("timed out")
        """
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert "timed out" in finished.stdout


@pytest.mark.parametrize("scheduler", ["threads", "in-process client", "belated.get"])
def test_interpreter_exit_survives_cancelled_work_that_keeps_taking_the_interpreter(scheduler):
    # Left running on a thread of this process, the task wakes while Python finalizes, which ends its
    # thread by pthread_exit on Python before 3.14: an unwind that aborted the process (SIGABRT).
    script = textwrap.dedent(
        f"""
        import time
        import belated
        from belated import delayed

        def spin(_):
            while True:
                time.sleep(0.001)

        scheduler = {scheduler!r}
        if scheduler == "in-process client":
            scheduler = belated.Client(processes=False, threads_per_worker=1, dashboard_address=None)
        try:
            if scheduler == "belated.get":
                belated.get({{"x": (spin, 0)}}, "x", timeout=0.2)
            else:
                delayed(spin)(0).compute(scheduler=scheduler, timeout=0.2)
        except belated.ComputeTimeoutError:
            print("timed out")
        """
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert "timed out" in finished.stdout


@pytest.mark.parametrize("scheduler", ["processes", "client"])
def test_workers_do_not_import_from_the_current_directory(scheduler, tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "imported"
    (planted / "cloudpickle.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n"
    )
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import belated
            from belated import delayed

            if {scheduler!r} == "client":
                belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None)
            print(delayed(abs)(-3).compute(scheduler=None if {scheduler!r} == "client" else "processes"))
            """
        )
    )
    finished = subprocess.run(
        [sys.executable, str(script)], cwd=planted, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "3"
    assert not marker.exists()


def test_client_starts_whatever_the_temporary_directory_holds(tmp_path):
    # What an older belated, or another user, could have left where a predictable name would go.
    import tempfile

    squatted = [os.path.join(tempfile.gettempdir(), f"belated-{os.getpid()}-{n}") for n in range(64)]
    made = [path for path in squatted if not os.path.exists(path)]
    for path in made:
        os.mkdir(path)
    try:
        with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            assert delayed(square)(6).compute(scheduler=client) == 36
    finally:
        for path in made:
            os.rmdir(path)


def test_functions_sent_by_value_are_not_kept_past_their_computation(tmp_path):
    # A function defined in __main__ travels by value with the globals it reads: each round's payload.
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            from types import FunctionType
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            import belated
            from belated import compute, delayed
            from worker_tasks import Payload, live_payloads

            def payload_size(_):
                return len(payload.data)

            client = belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None)
            for scheduler in ["processes", client]:
                for round in range(5):
                    payload = Payload(1_000_000 + round)
                    assert compute(delayed(payload_size)(round), scheduler=scheduler) == (1_000_000 + round,)
                print(compute(delayed(live_payloads)(), scheduler=scheduler, num_workers=1)[0])
                # Many different functions in one computation: what is kept is bounded by bytes.
                sizes = [
                    delayed(FunctionType(payload_size.__code__, {{"payload": Payload(1_000_000)}}))(i)
                    for i in range(100)
                ]
                print(compute(delayed(live_payloads)(*sizes), scheduler=scheduler, num_workers=1)[0])
            """
        )
    )
    finished = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    counts = [int(line) for line in finished.stdout.split()]
    assert len(counts) == 4, finished.stdout
    for kept_after, kept_within in (counts[0:2], counts[2:4]):
        assert kept_after == 0, "a later computation keeps no earlier computation's functions"
        assert kept_within <= 50, "32 MiB of 1 MB functions"


@pytest.mark.parametrize(
    ("task", "type_name", "message"),
    [
        (raise_needs_two_arguments, f"{NeedsTwoArguments.__module__}.NeedsTwoArguments", "one and two"),
        (raise_unpicklable, "ValueError", "holds a lock"),
        (raise_reduce_raises, f"{ReduceRaises.__module__}.ReduceRaises", "the real failure"),
        (raise_worker_only, "only_in_the_worker.OnlyHere", "raised where its class lives"),
    ],
    ids=["cannot-be-rebuilt", "cannot-be-pickled", "reduce-raises", "class-only-in-the-worker"],
)
def test_an_exception_that_cannot_travel_arrives_as_remote_error(run, tmp_path, task, type_name, message):
    # distributed's Client rebuilds the first (tblib), raises a plain Exception of the repr for the
    # next two, and for the last a plain Exception whose message is the unreadable pickle's bytes.
    arguments = (str(tmp_path),) if task is raise_worker_only else ()
    with pytest.raises(belated.RemoteError) as caught:
        run(delayed(task)(*arguments))
    error = caught.value
    assert error.type_name == type_name
    assert message in str(error)
    assert task.__name__ in error.traceback_text
    assert traceback.extract_tb(error.__traceback__)[-1].name == task.__name__, "the task's frames, rebuilt"
    assert run(delayed(square)(2)) == (4,)


def test_an_exception_that_cannot_be_rebuilt_fails_its_task_alone_among_batched_ones(run):
    squares = [delayed(square)(i) for i in range(200)]
    with pytest.raises(belated.RemoteError) as caught:
        run(*squares, delayed(raise_needs_two_arguments)(), retries=0)
    assert caught.value.type_name.endswith("NeedsTwoArguments")
    assert run(*squares) == tuple(i * i for i in range(200))


def test_an_exception_that_cannot_be_formatted_arrives_as_remote_error_and_the_worker_lives(run):
    (before,) = run(delayed(pid_of)())
    # Its __notes__ property raises, so no traceback of it can be printed, here or in the worker.
    with pytest.raises(belated.RemoteError, match="the real failure") as caught:
        run(delayed(raise_notes_raise)(), retries=0)
    assert caught.value.type_name.endswith("NotesRaise")
    assert "raise_notes_raise" in caught.value.traceback_text
    assert run(delayed(pid_of)()) == (before,)


def test_threads_per_worker_is_a_hard_limit(tmp_path):
    log = tmp_path / "log"

    with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        first = client.submit(logged, str(log), "first", 0.5)
        second = client.submit(logged, str(log), "second", 0)
        third = client.compute(delayed(logged)(str(log), "third", 0))
        client.gather([first, second, third])
    events = [line.split()[0] for line in log.read_text().splitlines()]
    assert events[0::2] == [event.replace("end", "start") for event in events[1::2]], (
        f"another task ran while one held the worker's only thread: {events}"
    )


def logged(path, name, seconds):
    with open(path, "a") as out:
        out.write(f"start-{name} {os.getpid()}\n")
    time.sleep(seconds)
    with open(path, "a") as out:
        out.write(f"end-{name} {os.getpid()}\n")
    return name
