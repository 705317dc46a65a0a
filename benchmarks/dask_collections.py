"""dask's own collections on dask's threaded scheduler, on ``belated.get``, and the floor, in one run.

The floor is what no scheduler can remove: dask building and optimizing the graph (everything
``compute`` does before it calls the scheduler) plus a bare Python loop that runs the graph's tasks
in a topological order, each called with its dependencies' values, with no scheduling at all.

Workloads (the issue's):

- array: ``(x + x.T).sum()``, x 4000x4000 in 40x40 chunks (about 43k tasks);
- bag: ``from_sequence(range(100_000), npartitions=1000).map(inc).filter(odd).sum()``;
- dataframe: 1,000 partitions, ``groupby("k").v.mean()``;
- memory: peak resident memory of ``da.random.random((20000, 20000), chunks=(1000, 1000)).mean()``
  (3.2 GB if held at once) over the process's baseline, dask threads vs belated.get in its default
  depth-first order and following dask.order's priorities, each in a fresh process;
- per task: belated.get's end-to-end time minus dask's graph build, divided by the tasks belated.get
  ran (counted in a separate, untimed run: it skips dask's linear fusion, so it runs more tasks than
  the floor on arrays).

The header says how many cores the process may use, how many workers each scheduler starts, and the
load average when the run began: figures taken under load say little about speed.

``belated.get`` on one worker is timed too: when the task bodies hold the GIL (pandas on small
partitions), a second worker cannot help, and the two columns side by side show what the workers'
contention for the GIL costs. ``belated.compute(collection)`` is timed beside them: the collection's
graph becomes tasks of belated's own graph (as when it is computed with ``Delayed`` objects), run on
the same engine.

Times are the best of ``--repeat`` runs, each scheduler in turn in one process (same warm caches).

    python benchmarks/dask_collections.py [--quick] [--repeat N]

``--quick`` shrinks every workload about 10x for a smoke run.
"""

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Mapping

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import dask.order
import dask.system
import numpy as np
import pandas as pd
from dask._task_spec import convert_legacy_graph
from dask.callbacks import Callback

import belated


def inc(x):
    return x + 1


def odd(x):
    return x % 2


class Floor:
    """A get function that runs the tasks in a depth-first topological order, one after another,
    timing itself so the caller can split graph build from execution."""

    def __init__(self):
        self.tasks = 0
        self.run_seconds = 0.0

    def __call__(self, dsk, keys, **kwargs):
        began = time.perf_counter()
        if not isinstance(dsk, Mapping):
            dsk = dsk.__dask_graph__()
        dsk = convert_legacy_graph(dsk)
        wanted = list(dask.core.flatten(keys)) if isinstance(keys, list) else [keys]
        cache = {}
        for root in wanted:
            stack = [(root, iter(dsk[root].dependencies))]
            while stack:
                key, deps = stack[-1]
                dep = next((d for d in deps if d not in cache), None)
                if dep is not None:
                    stack.append((dep, iter(dsk[dep].dependencies)))
                    continue
                stack.pop()
                if key not in cache:
                    node = dsk[key]
                    cache[key] = node({d: cache[d] for d in node.dependencies})
        self.tasks = len(cache)
        self.run_seconds = time.perf_counter() - began
        return _shape(keys, cache)


def _shape(keys, cache):
    if isinstance(keys, list):
        return tuple(_shape(k, cache) for k in keys)
    return cache[keys]


class TaskCount(Callback):
    """Counts the tasks a scheduler runs, through dask's callback protocol."""

    def __init__(self):
        super().__init__()
        self.tasks = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.tasks += 1


def tasks_run(collection, scheduler):
    with TaskCount() as count:
        collection.compute(scheduler=scheduler)
    return count.tasks


def workloads(quick):
    scale = 10 if quick else 1
    n = 4000 // (3 if quick else 1)
    x = da.random.default_rng(0).random((n, n), chunks=(40, 40))
    bag = db.from_sequence(range(100_000 // scale), npartitions=1000 // scale).map(inc).filter(odd).sum()
    parts = 1000 // scale
    pdf = pd.DataFrame({"k": np.arange(parts * 100) % 17, "v": np.arange(parts * 100.0)})
    frame = dd.from_pandas(pdf, npartitions=parts).groupby("k").v.mean()
    return {
        "array (x + x.T).sum()": (x + x.T).sum(),
        "bag map/filter/sum": bag,
        "dataframe groupby mean": frame,
    }


def best(run, repeat):
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def time_table(quick, repeat):
    rows = []
    for name, collection in workloads(quick).items():
        floor = Floor()
        runs = {
            "dask threads": (collection.compute, {"scheduler": "threads"}),
            "belated.get": (collection.compute, {"scheduler": belated.get}),
            "belated.get, 1 worker": (collection.compute, {"scheduler": belated.get, "num_workers": 1}),
            "belated.compute": (belated.compute, {}),
            "floor": (collection.compute, {"scheduler": floor}),
        }
        timings = {label: [] for label in runs}
        for _ in range(repeat):
            for label, (run, options) in runs.items():
                began = time.perf_counter()
                if run is belated.compute:
                    run(collection, **options)
                else:
                    run(**options)
                timings[label].append(time.perf_counter() - began)
        t = {label: min(v) for label, v in timings.items()}
        build = t["floor"] - floor.run_seconds
        get_tasks = tasks_run(collection, belated.get)
        per_task_us = (t["belated.get"] - build) / get_tasks * 1e6
        rows.append((name, floor.tasks, get_tasks, t, per_task_us))
    print(
        "| workload | floor tasks | belated.get tasks | dask threads (s) | belated.get (s) "
        "| belated.get, 1 worker (s) | belated.compute (s) | floor (s) "
        "| belated.get / floor | dask threads / belated.get "
        "| belated.get per task run, graph build excluded (µs) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, tasks, get_tasks, t, per_task_us in rows:
        print(
            f"| {name} | {tasks:,} | {get_tasks:,} | {t['dask threads']:.2f} | {t['belated.get']:.2f} "
            f"| {t['belated.get, 1 worker']:.2f} | {t['belated.compute']:.2f} | {t['floor']:.2f} "
            f"| {t['belated.get'] / t['floor']:.2f}x | {t['dask threads'] / t['belated.get']:.2f}x "
            f"| {per_task_us:.1f} |"
        )


def conversion_cost(quick):
    """What belated.get costs per task (reading the node, culling, ordering, scheduling and the call)
    on a graph of tasks calling inc, beside the bare loop and dask.order's priorities on it."""
    n = 20_000 if quick else 100_000
    dsk = {("x", i): (inc, i) for i in range(n)}
    dsk["total"] = (len, list(dsk))
    dsk = convert_legacy_graph(dsk)
    floor = Floor()
    loop = best(lambda: floor(dsk, "total"), 3)
    get = best(lambda: belated.get(dsk, "total", num_workers=1), 3)
    priorities = best(lambda: dask.order.order(dsk), 1)
    print(
        f"\nPer task, {n:,} tasks calling inc, graph already converted: belated.get (1 worker) "
        f"{get / n * 1e6:.2f} us end to end, the bare loop {loop / n * 1e6:.2f} us "
        f"({get / loop:.2f}x); computing dask.order's priorities alone {priorities / n * 1e6:.2f} us."
    )


MEMORY_CHILD = """
import resource, sys, threading, time
import dask.array as da
import belated
from belated import _belated

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6

which = sys.argv[1]
n = int(sys.argv[2])
x = da.random.random((n, n), chunks=(1000, 1000)).mean()
peak = [0.0]
done = threading.Event()
def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], rss())
baseline = rss()
threading.Thread(target=sample, daemon=True).start()
if which == "dask":
    x.compute(scheduler="threads")
elif which == "dask.order":
    belated._get.ORDER = "dask"
    x.compute(scheduler=belated.get)
else:
    x.compute(scheduler=belated.get)
done.set()
print(max(peak[0], rss()) - baseline)
"""


def memory(quick):
    n = 6000 if quick else 20000
    peaks = {}
    for which in ("dask", "dask.order", "depth-first"):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, which, str(n)],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        peaks[which] = float(out.stdout.strip())
    held = n * n * 8 / 1e6
    print(
        f"\nPeak memory, da.random.random(({n}, {n}), chunks=(1000, 1000)).mean() ({held:,.0f} MB if held "
        f"at once), resident growth over baseline: dask threads {peaks['dask']:,.0f} MB, "
        f"belated.get (depth-first, the default) {peaks['depth-first']:,.0f} MB "
        f"({peaks['depth-first'] / peaks['dask']:.2f}x dask), belated.get following dask.order "
        f"{peaks['dask.order']:,.0f} MB ({peaks['dask.order'] / peaks['dask']:.2f}x dask)."
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["time", "cost", "memory"])
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    workers = belated.config.get("num_workers", None) or cores
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"dask {dask.__version__}, belated {belated.__version__}; {cores} cores available; workers: "
        f"belated.get {workers}, dask threads {dask.system.CPU_COUNT}; load average at start {load}\n"
    )
    if args.only in (None, "time"):
        time_table(args.quick, args.repeat)
    if args.only in (None, "cost"):
        conversion_cost(args.quick)
    if args.only in (None, "memory"):
        memory(args.quick)


if __name__ == "__main__":
    main()
