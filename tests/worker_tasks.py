"""Functions the worker-process tests run: importable by reference from worker processes, which get
the parent's ``sys.path``."""

import ctypes
import os
import time


def square(x):
    return x * x


def pid_of(*_):
    return os.getpid()


def crash():
    ctypes.string_at(0)


def record(path):
    with open(path, "w") as out:
        out.write("ran")
    return 1


class Boom(Exception):
    pass


def explode(x):
    raise Boom(f"bad {x}")


def alive(pid):
    """Whether process ``pid`` runs (a zombie, dead but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, seconds=10):
    """Waits up to ``seconds`` for every process of ``pids`` to end; returns whether they all did."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    return not any(alive(pid) for pid in pids)


def stored_results(*_):
    """How many results this worker process holds (run inside a cluster worker)."""
    from belated import _worker

    return len(_worker._STORE)
