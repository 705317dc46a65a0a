"""Functions the worker-process tests run: importable by reference from worker processes, which get
the parent's ``sys.path``."""

import ctypes
import gc
import os
import sys
import time
import weakref


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


def wait_exists(path, seconds=30):
    """Waits up to ``seconds`` for the file ``path`` to exist; returns whether it does."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.path.exists(path)


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


def shell_echo(text):
    """Writes to the worker's file descriptor 1 from another process, as os.system does."""
    return os.system(f"echo {text}")


def write_fd1(data):
    """Writes raw bytes to file descriptor 1 from the task's own process, as a C library would."""
    os.write(1, data)
    return len(data)


def run_echo(text):
    import subprocess

    return subprocess.run(["echo", text], check=False).returncode


def read_stdin():
    import sys

    return sys.stdin.read()


def nap(seconds):
    time.sleep(seconds)
    return seconds


def fork_and_return_in_both():
    """Forks; the child returns from the task as the parent does, into the worker's own loop."""
    child = os.fork()
    if child == 0:
        return "child"
    os.waitpid(child, 0)
    return "parent"


def c_fork_and_return_in_both():
    """As :func:`fork_and_return_in_both`, forking from C code, which runs none of Python's after-fork
    hooks. Called holding the interpreter (``PyDLL``), which the child's thread then has: through
    ``CDLL`` it would wait in the child for an interpreter that another thread held at the fork.

    The interpreter's own state is not renewed in the child either: had another of the worker's
    threads asked for the interpreter (after waiting a switch interval), the child would hand it over
    to a thread it does not have and wait forever. So the switch interval is made far longer than the
    fork takes, after a sleep in which every thread already waiting has the interpreter."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60)
    try:
        time.sleep(0.05)
        child = ctypes.PyDLL(None).fork()
    finally:
        sys.setswitchinterval(interval)
    if child == 0:
        return "child"
    os.waitpid(child, 0)
    return "parent"


def record_call_c_forking_on_the_first(path, index):
    """Appends ``index`` and this process's pid to ``path``; call 0 forks from C code first, and its
    child returns from the task (recording nothing) as the parent does. Small and fast, so calls of it
    travel in batches."""
    if index == 0 and c_fork_and_return_in_both() == "child":
        return 0
    with open(path, "a") as out:
        out.write(f"{index} {os.getpid()}\n")
    return index


def record_then_nap(path, seconds):
    record(path)
    return nap(seconds)


def die_leaving_a_daemon(pid_file):
    """Forks a child that outlives this worker (holding every descriptor it had), then dies."""
    child = os.fork()
    if child == 0:
        os.setsid()
        time.sleep(1000)
        os._exit(0)
    with open(pid_file, "w") as out:
        out.write(str(child))
    os._exit(7)


class NeedsTwoArguments(Exception):
    """Pickles (as BaseException does, with its args) but cannot be rebuilt from them."""

    def __init__(self, first, second):
        super().__init__(f"{first} and {second}")


def raise_needs_two_arguments():
    raise NeedsTwoArguments("one", "two")


def raise_unpicklable():
    import threading

    raise ValueError("holds a lock", threading.Lock())


class NotesRaise(Exception):
    @property
    def __notes__(self):
        raise RuntimeError("no notes here")


def raise_notes_raise():
    raise NotesRaise("the real failure")


# The Payload instances this process holds.
_LIVE_PAYLOADS = weakref.WeakSet()


class Payload:
    """A large global a function sent by value carries; the instances a worker holds are counted."""

    def __init__(self, size):
        self.data = bytearray(size)

    def __setstate__(self, state):
        self.__dict__.update(state)
        _LIVE_PAYLOADS.add(self)


def live_payloads(*_):
    gc.collect()
    return len(_LIVE_PAYLOADS)


def wait_for_gate(gate, finished, seconds=60):
    """Creates ``finished + ".started"``, waits until the file ``gate`` exists (up to ``seconds``), then
    creates ``finished``: a task whose start and end a test can order against its own steps, across
    processes."""
    with open(finished + ".started", "w"):
        pass
    deadline = time.monotonic() + seconds
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(finished, "w"):
        pass
    return 1


def explode_on_zero(x):
    if x == 0:
        raise Boom("zero")
    return x


class ReduceRaises(Exception):
    def __reduce__(self):
        raise RuntimeError("no reduce here")


def raise_reduce_raises():
    raise ReduceRaises("the real failure")


def raise_worker_only(directory):
    """Raises an exception whose class lives in a module only this worker can import."""
    path = os.path.join(directory, "only_in_the_worker.py")
    with open(path, "w") as out:
        out.write("class OnlyHere(Exception):\n    pass\n")
    sys.path.insert(0, directory)
    try:
        import only_in_the_worker
    finally:
        sys.path.remove(directory)
    raise only_in_the_worker.OnlyHere("raised where its class lives")


def _client_api():
    """belated's module in a task on a belated worker process, distributed's in a distributed task."""
    import sys

    import belated

    # Work a belated task submits runs in the parent process, where distributed may be imported too.
    if getattr(sys.modules.get("belated._worker"), "serving", False) or "distributed" not in sys.modules:
        return belated
    import distributed

    try:
        distributed.get_worker()
    except ValueError:
        return belated
    return distributed


def fib(n):
    """Submits its two halves from inside the task and waits for them, in ``worker_client()``."""
    if n < 2:
        return n
    with _client_api().worker_client() as client:
        a, b = client.submit(fib, n - 1), client.submit(fib, n - 2)
        return a.result() + b.result()


def submit_and_wait(x):
    """Submits one task and waits for it, seceded."""
    api = _client_api()
    future = api.get_client().submit(square, x)
    api.secede()
    result = future.result()
    api.rejoin()
    return result


def submit_and_cancel(gate):
    """Submits a task that waits for the file ``gate`` and cancels it with distributed's keywords,
    then tells what its future says."""
    future = _client_api().get_client().submit(wait_exists, gate, 120, pure=False)
    future.cancel(reason="no longer wanted", msg="cancelled by its task")
    return future.cancelled(), future.status


def map_and_gather(xs):
    with _client_api().worker_client() as client:
        return client.gather(client.map(square, xs))


def chain_futures(x):
    """A future of the task's client as an argument of another of its calls."""
    with _client_api().worker_client() as client:
        return client.submit(add_one, client.submit(square, x)).result()


def add_one(x):
    return x + 1


def submit_failing(x):
    with _client_api().worker_client() as client:
        return client.submit(explode, x).result()


def ask_for_client(_):
    return type(_client_api().get_client()).__name__


def sleep_forever_or_wait_for_gate(kind, directory):
    """``"sleep"``: writes this process's pid to ``directory/pid``, then sleeps (until killed).
    ``"gate"``: waits for the file ``directory/gate`` (up to a minute), then returns its pid."""
    if kind == "sleep":
        with open(os.path.join(directory, "pid.tmp"), "w") as out:
            out.write(str(os.getpid()))
        os.rename(os.path.join(directory, "pid.tmp"), os.path.join(directory, "pid"))
        time.sleep(3600)
        return None
    if not wait_exists(os.path.join(directory, "gate"), 60):
        raise TimeoutError("the test never opened the gate")
    return os.getpid()


def type_names(*args, **kwargs):
    """The type names of the arguments, those in a list one level down too, keyword ones by name."""
    names = [
        [type(item).__name__ for item in arg] if type(arg) is list else type(arg).__name__ for arg in args
    ]
    return names + sorted(f"{name}={type(value).__name__}" for name, value in kwargs.items())


def stored_count(dask_worker=None):
    """How many values the worker this runs in holds: a belated worker's store, or a distributed
    worker's data (distributed passes ``dask_worker``)."""
    if dask_worker is not None:
        return len(dask_worker.data)
    import belated._worker as worker

    return len(worker._STORE)


def gated_square(x, gate):
    """``x * x`` once the file ``gate`` exists."""
    if not wait_exists(gate, 60):
        raise TimeoutError("the test never opened the gate")
    return x * x


def make_lock():
    """A value that cannot leave its process: it cannot be pickled."""
    import threading

    return threading.Lock()


def type_name(x):
    return type(x).__name__


def _arrived(payload, home, flag):
    """Rebuilds a :class:`Parcel` where it arrives, counting the arrival in that process."""
    Parcel.arrivals += 1
    return Parcel(payload, home, flag)


class Parcel:
    """A value that counts how often it arrives in a process (is unpickled there), and when one that
    arrived elsewhere than ``home`` (the pid that made it) is freed, creates the file ``flag``."""

    arrivals = 0

    def __init__(self, payload, home=None, flag=None):
        self.payload, self.home, self.flag = payload, home or os.getpid(), flag

    def __reduce__(self):
        return (_arrived, (self.payload, self.home, self.flag))

    def __del__(self):
        if self.flag is not None and os.getpid() != self.home:
            open(self.flag, "w").close()


def arrivals(dask_worker=None):
    """How many parcels arrived in the worker this runs in."""
    return Parcel.arrivals


def payload_of(parcel):
    return parcel.payload


def fail_first_time(x, path):
    """``x + 1``, raising the first time it runs for ``path`` (a file counting its runs)."""
    with open(path, "a") as runs:
        runs.write("run\n")
    with open(path) as runs:
        if len(runs.readlines()) == 1:
            raise ValueError("first run")
    return x + 1


def counted_inc(x, path):
    with open(path, "a") as runs:
        runs.write("run\n")
    return x + 1


def numbered_run(path):
    """Which run of this call it is (1, 2, ...) as ``path`` counts them: a result that differs each
    time the task runs."""
    with open(path, "a") as runs:
        runs.write("run\n")
    with open(path) as runs:
        return len(runs.readlines())


def raise_with_array(size):
    import numpy as np

    try:
        raise KeyError("cause", np.arange(size))
    except KeyError as cause:
        raise ValueError("bad rows", np.arange(size)) from cause


def slow_from(x, first, last, seconds):
    """``x``, after ``seconds`` for ``first <= x < last``: a run of slow calls among quick ones."""
    if first <= x < last:
        time.sleep(seconds)
    return x


def fail_first_then_wait(path, gate):
    """Raises the first time it runs for ``path`` (a file counting its runs); later runs wait for
    ``gate`` to exist, and give whether it does."""
    with open(path, "a") as runs:
        runs.write("run\n")
    with open(path) as runs:
        if len(runs.readlines()) == 1:
            raise ValueError("first run")
    return wait_exists(gate)


def count_then_wait(path, gate):
    """Counts its run in the file ``path`` (created by the first), then waits for ``gate`` to exist."""
    with open(path, "a") as runs:
        runs.write("run\n")
    return wait_exists(gate)


def touch_then_wait(started, gate):
    """Creates the file ``started``, then waits for ``gate`` to exist: a task the test sees running."""
    open(started, "w").close()
    return wait_exists(gate)


def raise_once_exists(path):
    """Waits for the file ``path`` to exist (up to 30 s), then raises :class:`Boom`: a failure that comes
    while the task creating ``path`` runs."""
    wait_exists(path)
    raise Boom(f"{path} exists")


def _interrupt():
    raise KeyboardInterrupt("raised while rebuilding")


class RebuildInterrupts(Exception):
    """Pickles, but rebuilding it raises KeyboardInterrupt: in the parent, not a Ctrl-C."""

    def __reduce__(self):
        return _interrupt, ()


def raise_rebuild_interrupts():
    raise RebuildInterrupts("the real failure")


class RebuildExits(Exception):
    def __reduce__(self):
        return sys.exit, (5,)


def raise_rebuild_exits():
    raise RebuildExits("the real failure")


class ClaimsASize:
    """A value whose ``nbytes`` says what its maker chose: any int, or an exception it raises."""

    def __init__(self, claim):
        self.claim = claim

    @property
    def nbytes(self):
        if isinstance(self.claim, BaseException):
            raise self.claim
        return self.claim


def claiming_a_size(claim):
    return ClaimsASize(claim)


def claimed(value):
    return value.claim if not isinstance(value.claim, BaseException) else repr(value.claim)


class RefusesAttributes(Exception):
    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} takes no attribute {name}")


def raise_refusing_attributes():
    raise RefusesAttributes("the real failure")


def print_lines(count, stream="stdout"):
    """Prints ``count`` numbered lines to ``sys.stdout`` or ``sys.stderr``; returns ``count``."""
    out = getattr(sys, stream)
    for i in range(count):
        print(f"line {i}", file=out)
    return count


def print_without_newline_until(size, gate, seconds=60):
    """Writes ``size`` bytes without a newline to fd 1, as a progress bar redrawn with ``\\r`` does,
    then waits for the file ``gate``, so that what was printed is seen while the task still runs."""
    os.write(1, b"x" * size)
    return wait_exists(gate, seconds)


def raise_chained(kind):
    """Raises a ValueError chained to the KeyError it handles: by ``from`` it (``cause``), implicitly
    (``context``), or ``from None``. Builtin types: dask's processes scheduler keeps the chain of
    exceptions whose classes tblib saw at its import, which a class of this module may not be."""
    try:
        {}["missing"]
    except KeyError as handled:
        if kind == "cause":
            raise ValueError("chained") from handled
        if kind == "context":
            raise ValueError("chained")  # noqa: B904
        raise ValueError("chained") from None


def get_with_timeout(timeout):
    """belated.get, with ``timeout``, of a graph whose last task sleeps half a second: "in time", or
    "timed out"."""
    import belated

    try:
        belated.get({"x": 1, "y": (time.sleep, 0.5)}, "y", timeout=timeout)
    except belated.ComputeTimeoutError:
        return "timed out"
    return "in time"
