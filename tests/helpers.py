"""Helpers more than one test module uses."""

import contextlib
import os
import subprocess
import sys
import threading
import time


@contextlib.contextmanager
def sharing_a_core_with_a_busy_process():
    """Runs this process's threads, those it has and those it starts, on one core that a busy process
    also wants: the OS takes the core from a running thread every few milliseconds, for milliseconds
    at a time, as on a loaded machine. Linux only (threads' affinities); restored after."""
    allowed = os.sched_getaffinity(0)
    core = min(allowed)
    spin = f"import os\nos.sched_setaffinity(0, {{{core}}})\nprint(flush=True)\nwhile True: pass"
    with subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE) as busy:
        try:
            busy.stdout.readline()
            pin_threads({core})
            yield
        finally:
            busy.kill()
            pin_threads(allowed)


def pin_threads(cores):
    for thread in os.listdir("/proc/self/task"):
        # A thread may end meanwhile.
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(thread), cores)


def heartbeats_between(action, first="start", last="end", last_seen=True, every=0.0005):
    """How many times a heartbeat thread ran between the first ``first`` and the last ``last`` event
    (the first one, without ``last_seen``) that ``action(events)`` records: another Python thread must
    get the interpreter while belated works through a huge argument or graph, as it would from Python
    code. Holding it throughout, the heartbeat (beating ``every`` seconds) still slips in at the few
    bytecode boundaries around the work (at most 4 times, measured); offering it, dozens of times."""
    events = []
    stop = threading.Event()

    def heartbeat():
        while not stop.is_set():
            events.append("beat")
            time.sleep(every)

    interval = sys.getswitchinterval()
    # A short switch interval makes the heartbeat ask often, so a few beats fit in a short stretch.
    sys.setswitchinterval(0.0005)
    beating = threading.Thread(target=heartbeat)
    beating.start()
    try:
        action(events)
    finally:
        stop.set()
        beating.join(timeout=10)
        sys.setswitchinterval(interval)
    start = events.index(first)
    end = len(events) - events[::-1].index(last) if last_seen else events.index(last, start)
    return events[start:end].count("beat")


def counting_overlaps(body):
    """A task ``task(i)`` that runs ``body(running)`` and returns ``i``, where ``running`` counts the
    tasks running when it started, itself included; and the list of those counts, in start order."""
    lock = threading.Lock()
    running = [0]
    at_start = []

    def task(i):
        with lock:
            running[0] += 1
            at_start.append(running[0])
            beside = running[0]
        try:
            body(beside)
        finally:
            with lock:
                running[0] -= 1
        return i

    return task, at_start


def slowed_beside_another(running):
    """A task body that holds the interpreter (a loop of bytecode) and takes 40 times longer when it
    starts beside another task, so that the task rates of one and two threads leave no doubt whatever
    else the machine runs. It keeps a core busy while slowed, as contending for a lock does."""
    for _ in range(20_000):
        pass
    if running > 1:
        until = time.perf_counter() + 0.02
        while time.perf_counter() < until:
            pass


def forget_clients_of_ended_loops():
    """Drops the Clients whose event loop has ended from distributed's default ones: a task of an
    asynchronous cluster run by ``asyncio.run`` makes one (worker_client) on that loop, which cannot
    be closed once it ended, and dask would send later computes to it (the newest default client)."""
    import distributed

    for client in list(distributed.client._global_clients.values()):
        if client.loop.asyncio_loop.is_closed():
            distributed.client._del_global_client(client)


@contextlib.contextmanager
def closing_distributed_clients():
    """On leaving, closes the Clients that distributed's own tasks made (get_client, worker_client):
    they outlive the clusters they served, and the newest stays the default one, with dask's
    ``scheduler`` configuration naming it. That configuration is put back as it was on entering, so
    that later tests, whose computes read it, run on belated's own schedulers."""
    import dask
    import distributed

    scheduler = dask.config.get("scheduler", None)
    try:
        yield
    finally:
        forget_clients_of_ended_loops()
        for client in list(distributed.client._global_clients.values()):
            client.close(timeout=10)
        if scheduler is None:
            dask.config.config.pop("scheduler", None)
        else:
            dask.config.set(scheduler=scheduler)
