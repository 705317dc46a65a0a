"""Functions the worker-process tests run: importable by reference from worker processes, which get
the parent's ``sys.path``."""

import ctypes
import os


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


def stored_results(*_):
    """How many results this worker process holds (run inside a cluster worker)."""
    from belated import _worker

    return len(_worker._STORE)
