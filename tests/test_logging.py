"""belated's loggers: what they record at DEBUG, silence by default, and records forwarded from a worker."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

import belated
from belated import _logging, delayed


def messages(caplog, name):
    return [record.getMessage() for record in caplog.records if record.name == name]


def test_compute_start_then_finish_or_failure(caplog):
    caplog.set_level(logging.DEBUG, logger="belated")
    assert delayed(sum)([1, 2]).compute(scheduler="sync") == 3
    with pytest.raises(ZeroDivisionError):
        (delayed(1) / 0).compute()
    assert belated.persist(delayed(abs)(-1), scheduler="threads")[0].compute(scheduler="sync") == 1
    logged = messages(caplog, "belated")
    assert [m.split(" in ")[0].split(" after ")[0] for m in logged] == [
        "compute started on sync",
        "compute finished",
        "compute started on threads",
        "compute failed",
        "persist started on threads",
        "persist finished",
        "compute started on sync",
        "compute finished",
    ], logged
    assert logged[3].endswith(": ZeroDivisionError")


def test_local_cluster_start_and_close(caplog):
    caplog.set_level(logging.DEBUG, logger="belated")
    with belated.Client(
        n_workers=1, threads_per_worker=1, dashboard_address=None, memory_limit=None
    ) as client:
        assert client.compute(delayed(abs)(-4)).result(timeout=60) == 4
        assert delayed(abs)(-5).compute() == 5
    assert messages(caplog, "belated.cluster") == [
        "local cluster started: 1 workers of 1 threads, memory limit None bytes each",
        "local cluster closed",
    ]
    assert "compute started on a local cluster" in messages(caplog, "belated")


def test_dashboard_start_and_stop_without_token(caplog):
    caplog.set_level(logging.DEBUG, logger="belated.dashboard")
    with belated.dashboard("127.0.0.1", 0, token="s3cret", quiet=True) as board:
        belated.dashboard("127.0.0.1", 0, quiet=True)  # the running one: not started again
    started, stopped = messages(caplog, "belated.dashboard")
    assert started == f"dashboard serving at {board.url.split('?')[0]}"
    assert "s3cret" in board.url and "s3cret" not in started
    assert stopped == "dashboard stopped"


def test_nothing_printed_without_logging_configured(tmp_path):
    code = """
        import logging
        import belated
        from belated import delayed
        logging.getLogger("belated").warning("a warning nobody asked to see")
        delayed(abs)(-1).compute()
        with belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
            delayed(abs)(-1).compute()
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


WORKER = """
    import json, logging, sys, threading
    from belated import _logging

    def send(payload):
        sys.stdout.write(json.dumps(payload) + "\\n")

    _logging.forward_records(send, json.loads(sys.argv[1]))
    log = logging.getLogger("user.task")
    log.debug("dropped: the parent's level for user.task is INFO")
    log.info("loaded %d rows", 3, extra={"lock": threading.Lock()})
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("task failed")
    logging.getLogger("belated.worker").debug("worker %s ready", 7)
    logging.getLogger().warning("from the root logger")
"""


def test_worker_records_reach_the_parent_through_the_hook(caplog, tmp_path):
    user = logging.getLogger("user.task")
    user.setLevel(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="belated.worker")
    try:
        levels = _logging.worker_levels()
        assert levels["user.task"] == logging.INFO and levels["belated.worker"] == logging.DEBUG
        worker = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(WORKER), json.dumps(levels)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert worker.returncode == 0, worker.stderr
        assert worker.stderr == ""
        for line in worker.stdout.splitlines():
            _logging.receive_record(json.loads(line), worker="worker-1")
    finally:
        user.setLevel(logging.NOTSET)
    seen = [(r.name, r.levelname, r.getMessage(), r.worker) for r in caplog.records]
    assert seen == [
        ("user.task", "INFO", "loaded 3 rows", "worker-1"),
        ("user.task", "ERROR", "task failed", "worker-1"),
        ("belated.worker", "DEBUG", "worker 7 ready", "worker-1"),
        ("root", "WARNING", "from the root logger", "worker-1"),
    ]
    info, error = caplog.records[:2]
    assert info.lock.startswith("<unlocked _thread.lock")
    assert "ZeroDivisionError: division by zero" in caplog.text
    assert error.process != os.getpid()


def test_forwarded_record_below_the_parents_level_is_dropped(caplog):
    caplog.set_level(logging.WARNING, logger="user")
    _logging.receive_record({"name": "user.task", "levelno": logging.INFO, "msg": "too quiet"}, worker="w")
    _logging.receive_record({"name": "user.task", "levelno": logging.ERROR, "msg": "loud"}, worker="w")
    assert [r.getMessage() for r in caplog.records] == ["loud"]


# -- the runtime's worker processes -----------------------------------------------------------------


def log_then_return(x):
    log = logging.getLogger("user.task")
    log.debug("debug %d", x)
    log.info("info %d", x)
    return os.getpid()


def log_then_fail(x):
    logging.getLogger("user.task").error("failing on %d", x)
    raise ValueError(x)


def log_from_a_thread_later():
    """Logs from a thread of the worker after the task has returned."""
    import threading

    logged = threading.Event()

    def later():
        logging.getLogger("user.thread").warning("logged between tasks")
        logged.set()

    threading.Thread(target=later).start()
    assert logged.wait(60)
    return os.getpid()


@pytest.fixture
def user_task_logger():
    user = logging.getLogger("user.task")
    yield user
    user.setLevel(logging.NOTSET)


def forwarded(caplog, name="user.task"):
    return [(r.levelname, r.getMessage(), r.worker, r.process) for r in caplog.records if r.name == name]


@pytest.mark.parametrize("runtime", ["processes", "client"])
def test_task_records_reach_the_parents_handlers_at_the_parents_levels(
    caplog, user_task_logger, runtime, local_cluster
):
    def run(*tasks):
        if runtime == "client":
            return local_cluster.compute(list(tasks), sync=True)
        return list(belated.compute(*tasks, scheduler="processes", num_workers=2))

    caplog.set_level(logging.DEBUG, logger="belated.worker")
    user_task_logger.setLevel(logging.INFO)
    pids = run(delayed(log_then_return)(1), delayed(log_then_return)(2))
    assert os.getpid() not in pids
    assert sorted(forwarded(caplog)) == [
        ("INFO", "info 1", f"worker-{pids[0]}", pids[0]),
        ("INFO", "info 2", f"worker-{pids[1]}", pids[1]),
    ]
    # Levels set between computations are the ones the next computation's workers follow.
    caplog.clear()
    user_task_logger.setLevel(logging.DEBUG)
    (pid,) = run(delayed(log_then_return)(3))
    assert forwarded(caplog) == [
        ("DEBUG", "debug 3", f"worker-{pid}", pid),
        ("INFO", "info 3", f"worker-{pid}", pid),
    ]
    caplog.clear()
    with pytest.raises(ValueError):
        run(delayed(log_then_fail)(4))
    assert [message for _, message, _, _ in forwarded(caplog)] == ["failing on 4"]


def test_records_logged_between_tasks_come_with_the_next_reply(caplog):
    caplog.set_level(logging.WARNING, logger="user.thread")
    with belated.Client(
        n_workers=1, threads_per_worker=1, memory_limit=None, dashboard_address=None, set_as_default=False
    ) as client:
        pid = client.compute(delayed(log_from_a_thread_later)(), sync=True)
        client.compute(delayed(abs)(-1), sync=True)
    assert forwarded(caplog, "user.thread") == [("WARNING", "logged between tasks", f"worker-{pid}", pid)]


def test_worker_without_parent_levels_forwards_only_warnings(caplog):
    # The root's default WARNING, as a worker process would apply without logging configured.
    caplog.set_level(logging.DEBUG)
    logging.getLogger().setLevel(logging.WARNING)
    pid = belated.compute(delayed(log_then_return)(5), scheduler="processes", num_workers=1)[0]
    assert forwarded(caplog) == []
    with pytest.raises(ValueError):
        belated.compute(delayed(log_then_fail)(6), scheduler="processes", num_workers=1)
    assert [r.getMessage() for r in caplog.records if r.name == "user.task"] == ["failing on 6"]
    assert pid != os.getpid()
