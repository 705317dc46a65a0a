"""belated's processes scheduler and local cluster (``belated.Client``) against dask's processes
scheduler, distributed's LocalCluster, joblib (its default loky backend, with auto-batching) and Ray,
in one run.

- CPU-bound: 8 pure-Python tasks of about 0.5 s each on 2 workers (sequential time / wall time), and
  the wall time over that of 2 forked processes running the same spins with no engine, back to back:
  the machine's own parallel speed, which bounds every engine's speedup (see ``bare_processes``).
- Trivial tasks: 10,000 `inc` calls summed, end to end, per task.
- A shared input: one 80 MB array (``delayed(array)``; ``ray.put`` for Ray) read by 32 tasks, end to end.
- A function holding an input: 32 calls of a function whose default argument is one 80 MB array (a
  closure, pickled by value), end to end.
- Produced and consumed: 8 tasks each making an 80 MB array that another task reduces, end to end.
  joblib has no task graph: it runs the producers, then the consumers, the arrays coming back between.
- Start: the first compute's latency on a fresh pool (belated keeps its pool for later computes; dask's
  processes scheduler starts one per compute), and each cluster's start time; with, for scale, a bare
  interpreter's start (``python -c pass``) and one belated worker's own imports, in the same run.
- The seed tutorial's examples (sleeps divided by 10) on its ``Client(n_workers=4, threads_per_worker=4)``.

Usage: ``python benchmarks/processes.py``. Writes ``benchmarks/results/processes.md``.
``python benchmarks/processes.py client-api``: the Client's futures API against distributed's (see
``client_api``), written to ``benchmarks/results/client_api.md``.
``python benchmarks/processes.py trivial [RUNS]``: the trivial tasks' row alone, for processes, the
Client and joblib, with wall and CPU time per task of each run (see ``trivial_cpu``), printed; for A/B
comparisons, run it alternately with each build.
"""

import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

WORKERS = 2


def spin(n):
    total = 0
    for i in range(n):
        total += i % 7
    return total


def inc(x):
    return x + 1


def calibrate(seconds=0.5):
    n = 200_000
    start = time.perf_counter()
    spin(n)
    return int(n * seconds / (time.perf_counter() - start))


def timed(run):
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def bare_processes(n):
    """The 8 spins on ``WORKERS`` forked processes with no engine at all: what this machine's cores
    give in parallel. Its 2 vCPUs slow each other when both are busy, so this is below 2x, and it
    drifts from minute to minute."""
    children = []
    for worker in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            for _ in range(worker, 8, WORKERS):
                spin(n)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


def speedup(compute, n, expected, repeat=3):
    """Sequential time over parallel time, parallel time over bare processes' time, and the bare
    processes' own speedup, measured back to back (this machine's cores are shared and their speed
    drifts): the best of ``repeat`` rounds, but the ratio to bare processes, their median (a best
    ratio would pick the round whose bare run was slowed most)."""
    best, over_bare, machine = 0.0, [], 0.0
    for _ in range(repeat):
        sequential, _ = timed(lambda: [spin(n) for _ in range(8)])
        bare, _ = timed(lambda: bare_processes(n))
        parallel, got = timed(lambda: list(compute([n] * 8)))
        assert got == expected
        best = max(best, sequential / parallel)
        over_bare.append(parallel / bare)
        machine = max(machine, sequential / bare)
    return best, statistics.median(over_bare), machine


def trivial(compute, tasks):
    elapsed, total = timed(lambda: compute(tasks))
    assert total == sum(range(1, tasks + 1))
    return elapsed


def stride_sum(array, i):
    return float(array[i::32].sum())


def shared_input(compute, module, array):
    """32 tasks that each read one 80 MB array, summed."""
    data = module.delayed(array)
    total = module.delayed(sum)([module.delayed(stride_sum)(data, i) for i in range(32)])
    elapsed, got = timed(lambda: compute(total))
    assert abs(got - float(array.sum())) < 1e-6 * abs(got)
    return elapsed


def held_by_function(compute, array):
    """32 calls of a function holding one 80 MB array, summed; ``compute(function, calls)`` runs them."""

    def stride_sum_held(i, array=array):
        return float(array[i::32].sum())

    elapsed, got = timed(lambda: compute(stride_sum_held, range(32)))
    assert abs(got - float(array.sum())) < 1e-6 * abs(got)
    return elapsed


def delayed_calls(module, **options):
    """``compute`` for :func:`held_by_function` as delayed calls summed by a task."""
    return lambda function, calls: module.delayed(sum)([module.delayed(function)(i) for i in calls]).compute(
        **options
    )


def produce(i):
    import numpy as np

    return np.full(10_000_000, float(i))


def consume(array):
    return float(array[::1000].sum())


def produced_and_consumed(run):
    """8 tasks each producing an 80 MB array that another task reduces."""
    elapsed, got = timed(run)
    assert list(got) == [10_000.0 * i for i in range(8)]
    return elapsed


def main():
    import dask
    import joblib
    import numpy as np
    import ray
    from distributed import Client, LocalCluster

    import belated

    # The first full collection of what these imports made would land in whichever row runs first
    # (0.1 s, 10 µs a trivial task of its run): it is the process's, before any row.
    gc.collect()
    n = calibrate()
    expected = [spin(n) for _ in range(8)]
    tasks = 10_000
    array = np.random.default_rng(0).random(10_000_000)
    # distributed warns that the array sits in the graph; that is the workload.
    warnings.filterwarnings("ignore", message="Sending large graph")

    def belated_spins(module, **options):
        return lambda sizes: module.compute(*[module.delayed(spin)(size) for size in sizes], **options)

    def belated_sum(module, **options):
        return lambda count: module.delayed(sum)([module.delayed(inc)(i) for i in range(count)]).compute(
            **options
        )

    bare = interpreter_start("pass")
    worker_imports = interpreter_start(WORKER_IMPORTS) - bare
    processes = {"scheduler": "processes", "num_workers": WORKERS}
    first_processes, _ = timed(lambda: belated.compute(belated.delayed(inc)(1), **processes))
    first_dask, _ = timed(lambda: dask.compute(dask.delayed(inc)(1), **processes))
    cpu = {
        "belated processes": speedup(belated_spins(belated, **processes), n, expected),
        "dask processes": speedup(belated_spins(dask, **processes), n, expected),
    }
    small = {
        "belated processes": trivial(belated_sum(belated, **processes), tasks),
        "dask processes": trivial(belated_sum(dask, **processes), tasks),
    }
    shared = {
        "belated processes": shared_input(lambda total: total.compute(**processes), belated, array),
        "dask processes": shared_input(lambda total: total.compute(**processes), dask, array),
    }

    held = {
        "belated processes": held_by_function(delayed_calls(belated, **processes), array),
        "dask processes": held_by_function(delayed_calls(dask, **processes), array),
    }

    def chains(module, **options):
        return lambda: module.compute(
            *[module.delayed(consume)(module.delayed(produce)(i)) for i in range(8)], **options
        )

    chained = {
        "belated processes": produced_and_consumed(chains(belated, **processes)),
        "dask processes": produced_and_consumed(chains(dask, **processes)),
    }

    start_ours, client = timed(
        lambda: belated.Client(n_workers=WORKERS, threads_per_worker=1, dashboard_address=None)
    )
    with client:
        cpu["belated Client"] = speedup(belated_spins(belated), n, expected)
        small["belated Client"] = trivial(belated_sum(belated), tasks)
        shared["belated Client"] = shared_input(lambda total: total.compute(), belated, array)
        chained["belated Client"] = produced_and_consumed(chains(belated))
        held["belated Client"] = held_by_function(delayed_calls(belated), array)

    start_theirs, cluster = timed(
        lambda: LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
    )
    with cluster, Client(cluster) as client:
        cpu["distributed"] = speedup(
            lambda sizes: client.gather(client.compute([dask.delayed(spin)(size) for size in sizes])),
            n,
            expected,
        )
        small["distributed"] = trivial(
            lambda count: client.compute(
                dask.delayed(sum)([dask.delayed(inc)(i) for i in range(count)])
            ).result(),
            tasks,
        )
        shared["distributed"] = shared_input(lambda total: client.compute(total).result(), dask, array)
        held["distributed"] = held_by_function(delayed_calls(dask, scheduler=client), array)
        chained["distributed"] = produced_and_consumed(
            lambda: client.gather(
                client.compute([dask.delayed(consume)(dask.delayed(produce)(i)) for i in range(8)])
            )
        )

    parallel = joblib.Parallel(n_jobs=WORKERS)
    first_joblib, _ = timed(lambda: parallel([joblib.delayed(inc)(1)]))
    cpu["joblib"] = speedup(lambda sizes: parallel(joblib.delayed(spin)(size) for size in sizes), n, expected)
    small["joblib"] = trivial(
        lambda count: sum(parallel(joblib.delayed(inc)(i) for i in range(count))), tasks
    )
    started = time.perf_counter()
    parts = parallel(joblib.delayed(stride_sum)(array, i) for i in range(32))
    shared["joblib"] = time.perf_counter() - started
    assert abs(sum(parts) - float(array.sum())) < 1e-6 * abs(sum(parts))
    held["joblib"] = held_by_function(
        lambda function, calls: sum(parallel(joblib.delayed(function)(i) for i in calls)), array
    )
    chained["joblib"] = produced_and_consumed(
        lambda: parallel(
            joblib.delayed(consume)(made) for made in parallel(joblib.delayed(produce)(i) for i in range(8))
        )
    )

    start_ray, _ = timed(lambda: ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False))
    try:
        remote = {
            name: ray.remote(function)
            for name, function in [
                ("spin", spin),
                ("inc", inc),
                ("stride_sum", stride_sum),
                ("produce", produce),
                ("consume", consume),
            ]
        }
        cpu["Ray"] = speedup(
            lambda sizes: ray.get([remote["spin"].remote(size) for size in sizes]), n, expected
        )
        small["Ray"] = trivial(
            lambda count: sum(ray.get([remote["inc"].remote(i) for i in range(count)])), tasks
        )
        started = time.perf_counter()
        stored = ray.put(array)
        parts = ray.get([remote["stride_sum"].remote(stored, i) for i in range(32)])
        shared["Ray"] = time.perf_counter() - started
        assert abs(sum(parts) - float(array.sum())) < 1e-6 * abs(sum(parts))
        del stored

        def ray_calls(function, calls):
            exported = ray.remote(function)  # once: Ray uploads a remote function's pickle once
            return sum(ray.get([exported.remote(i) for i in calls]))

        held["Ray"] = held_by_function(ray_calls, array)
        chained["Ray"] = produced_and_consumed(
            lambda: ray.get([remote["consume"].remote(remote["produce"].remote(i)) for i in range(8)])
        )
    finally:
        ray.shutdown()

    columns = ["belated processes", "belated Client", "dask processes", "distributed", "joblib", "Ray"]
    per = lambda seconds: f"{seconds / tasks * 1e6:,.0f} µs/task"  # noqa: E731
    rows = [
        (
            "8 CPU-bound tasks of 0.5 s, speedup over sequential",
            [f"{cpu[c][0]:.2f}x" for c in columns],
        ),
        (
            "the same, wall time over 2 bare forked processes' (median; 1.00: no engine cost)",
            [f"{cpu[c][1]:.2f}" for c in columns],
        ),
        (f"{tasks:,} trivial tasks, end to end", [per(small[c]) for c in columns]),
        ("one 80 MB array read by 32 tasks, end to end", [f"{shared[c]:.2f} s" for c in columns]),
        ("a function holding an 80 MB array called by 32 tasks", [f"{held[c]:.2f} s" for c in columns]),
        ("8 tasks each making an 80 MB array another task reads", [f"{chained[c]:.2f} s" for c in columns]),
        (
            "start: first compute on a fresh pool / cluster start",
            [
                f"{first_processes:.2f} s (then reused)",
                f"{start_ours:.2f} s",
                f"{first_dask:.2f} s (every compute)",
                f"{start_theirs:.2f} s",
                f"{first_joblib:.2f} s (then reused)",
                f"{start_ray:.2f} s (ray.init)",
            ],
        ),
    ]
    lines = [
        f"| workload ({WORKERS} workers of 1 thread) | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    lines += [
        "",
        f"For scale, in this run: a bare `python -c pass` starts in {bare:.3f} s; a belated worker's own "
        f"imports (before its first task) add {worker_imports:.3f} s. Two bare forked processes sped the "
        f"CPU-bound tasks up {min(c[2] for c in cpu.values()):.2f}-{max(c[2] for c in cpu.values()):.2f}x "
        "over the rows.",
    ]
    lines += ["", *seed_examples()]
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "processes.md").write_text(table + "\n")


# What a belated worker imports before it says it is ready (the bootstrap of belated-py's cluster.rs).
WORKER_IMPORTS = """
import sys
from importlib.machinery import PathFinder
from importlib.util import module_from_spec
package = PathFinder.find_spec("belated", sys.path)
spec = PathFinder.find_spec("belated._worker", package.submodule_search_locations)
spec.loader.exec_module(module_from_spec(spec))
"""


def interpreter_start(code, repeat=5):
    """The fastest of ``repeat`` runs of ``python -c code``."""
    run = lambda: subprocess.run([sys.executable, "-c", code], check=True)  # noqa: E731
    return min(timed(run)[0] for _ in range(repeat))


def seed_examples():
    """The tutorial's examples (sleeps divided by 10) on its Client(n_workers=4, threads_per_worker=4)."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
    import tutorial

    ours, failed = tutorial.run("belated", quick=True, client=True)
    theirs, failed_dask = tutorial.run("dask", quick=True, client=True)
    assert not failed and not failed_dask
    lines = [
        "| seed example, Client(n_workers=4, threads_per_worker=4) | sequential | belated Client "
        "| distributed Client | ideal |",
        "|---|---:|---:|---:|---:|",
    ]
    for (name, sequential, mine, ideal), (_, _, reference, _) in zip(ours, theirs, strict=True):
        lines.append(f"| {name} | {sequential:.2f} s | {mine:.2f} s | {reference:.2f} s | {ideal:.2f} s |")
    return lines


def pid_after(seconds):
    time.sleep(seconds)
    import os

    return os.getpid()


def until_all_run_tasks(client, n, as_completed):
    """Returns once ``n`` distinct worker processes have run tasks, submitting short ones meanwhile."""
    seen = set()
    while len(seen) < n:
        futures = client.map(pid_after, [0.02] * (2 * n), pure=False)
        seen.update(future.result() for future in as_completed(futures))


def client_api():
    """belated.Client's futures API beside distributed's Client on a LocalCluster of processes, in one
    run: as_completed over 10,000 futures, client.map of 10,000 trivial calls gathered, and scaling
    from 1 to 4 workers until all four have run tasks. Writes ``benchmarks/results/client_api.md``."""
    import os

    import distributed

    import belated

    count = 10_000
    results = {}
    for name, api, make in (
        (
            "belated Client",
            belated,
            lambda: belated.Client(n_workers=2, threads_per_worker=1, dashboard_address=None),
        ),
        (
            "distributed Client",
            distributed,
            lambda: distributed.Client(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
            ),
        ),
    ):
        with make() as client:
            client.gather(client.map(inc, range(100)))  # warm: workers have imported what tasks need

            def map_gather(client=client):
                return client.gather(client.map(inc, range(count), pure=False))

            def iterate(client=client, api=api):
                futures = client.map(inc, range(count), pure=False)
                return sum(future.result() for future in api.as_completed(futures))

            mapped, got = timed(map_gather)
            assert got == list(range(1, count + 1))
            completed, total = timed(iterate)
            assert total == sum(range(1, count + 1))
            client.cluster.scale(1)
            # Both retire workers in the background: start from one.
            while len(client.scheduler_info()["workers"]) != 1:
                time.sleep(0.01)
            until_all_run_tasks(client, 1, api.as_completed)
            start = time.perf_counter()
            client.cluster.scale(4)
            until_all_run_tasks(client, 4, api.as_completed)
            results[name] = (completed, mapped, time.perf_counter() - start)
    load = os.getloadavg()[0]
    columns = list(results)
    rows = [
        (
            f"as_completed over {count:,} futures, per future",
            [f"{results[c][0] / count * 1e6:.0f} µs" for c in columns],
        ),
        (
            f"client.map of {count:,} trivial calls, gathered, per call",
            [f"{results[c][1] / count * 1e6:.0f} µs" for c in columns],
        ),
        ("scale 1 → 4 workers, until all four ran tasks", [f"{results[c][2]:.2f} s" for c in columns]),
    ]
    lines = [
        f"| Client API, 2 workers of 1 thread (load average {load:.1f}) | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "client_api.md").write_text(table + "\n")


def cpu_seconds():
    """This process's CPU seconds (every thread, ended ones too), and its descendants' by thread: a
    worker's thread that ends between two readings drops out of their difference (Linux only)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    children, parents = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parents.setdefault(int(stat.read().rsplit(")", 1)[1].split()[1]), []).append(int(pid))
        except OSError:
            continue
    todo = list(parents.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                    children[tid] = int(stat.read().split()[0]) / 1e9
    return usage.ru_utime + usage.ru_stime, children


def trivial_cpu(runs=5, tasks=10_000):
    """10,000 trivial tasks summed, end to end, on warm workers (three runs first, then a pause for
    their background imports): per task, each run's wall time, CPU time of this process and its
    workers, and the workers' share of it."""
    import joblib

    import belated

    gc.collect()  # as in main

    def measured(compute):
        for _ in range(3):
            trivial(compute, tasks)
        time.sleep(0.5)
        rows = []
        for _ in range(runs):
            own, children = cpu_seconds()
            elapsed = trivial(compute, tasks)
            own_after, children_after = cpu_seconds()
            workers = sum(t - children.get(tid, 0.0) for tid, t in children_after.items())
            rows.append((elapsed, own_after - own + workers, workers))
        return rows

    def summed(count, **options):
        return belated.delayed(sum)([belated.delayed(inc)(i) for i in range(count)]).compute(**options)

    results = {
        "belated processes": measured(lambda count: summed(count, scheduler="processes", num_workers=2))
    }
    with belated.Client(n_workers=WORKERS, threads_per_worker=1, dashboard_address=None):
        results["belated Client"] = measured(summed)
    parallel = joblib.Parallel(n_jobs=WORKERS)
    results["joblib"] = measured(lambda count: sum(parallel(joblib.delayed(inc)(i) for i in range(count))))
    print(f"{tasks:,} trivial tasks, µs per task: wall / CPU (workers' share)")
    for name, rows in results.items():
        cells = [f"{w / tasks * 1e6:.1f} / {c / tasks * 1e6:.1f} ({k / tasks * 1e6:.1f})" for w, c, k in rows]
        print(f"{name}: " + ", ".join(cells))


if __name__ == "__main__":
    if sys.argv[1:] == ["client-api"]:
        client_api()
    elif sys.argv[1:2] == ["trivial"]:
        trivial_cpu(*map(int, sys.argv[2:3]))
    else:
        main()
