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
