"""belated on other engines versus those engines' own APIs, on the same cluster, in one run.

- Dask distributed, a ``LocalCluster(n_workers=2, threads_per_worker=2)`` on loopback: the graphs of
  issue 17 (trees of sleeping leaves, uneven tasks, chains over 50 MB arrays, thousands of tiny tasks),
  built and computed end to end with belated (``belated.compute(..., scheduler=client)``) and with
  dask.delayed. belated runs each graph once first, so that its blocks have measured the functions
  (the fusion plan goes by those durations; that first run is shown too); then the two alternate for
  ``--repeats`` runs each, and each shows its best. Worker memory is the highest peak of the workers'
  summed RSS above what they held before a run, sampled every 10 ms.
- Ray (a local instance, 2 CPUs, a 1 GB object store): a map + sum of tiny tasks, and a chain of 40
  steps over 50 MB arrays, through belated's Ray scheduler and as hand-written Ray tasks, with the
  files Ray spilled to disk counted while the chain's last step runs.

Usage: ``python benchmarks/scaleout.py [--repeats N]``. Writes ``benchmarks/results/scaleout.md``.
"""

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MB50 = 50 * 2**20


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def work(x, seconds):
    time.sleep(seconds)
    return x


def load(size, seed):
    return np.full(size // 8, float(seed))


def step(array):
    return array + 1


def total(*items):
    return float(sum(np.asarray(item).sum() for item in items))


def tree(delayed, leaves, seconds):
    layer = [delayed(work)(i, seconds) for i in range(leaves)]
    while len(layer) > 1:
        layer = [delayed(add)(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    return layer[0]


def uneven(delayed):
    """200 tasks, ten slow (1 s) ones next to each other."""
    return delayed(sum)([delayed(work)(i, 1.0 if 100 <= i < 110 else 0.0) for i in range(200)])


def chains(delayed):
    """4 independent chains of 40 steps over 50 MB arrays."""
    ends = []
    for seed in range(4):
        x = delayed(load)(MB50, seed)
        for _ in range(40):
            x = delayed(step)(x)
        ends.append(delayed(np.sum)(x))
    return delayed(sum)(ends)


def map_sum(delayed, n):
    return delayed(sum)([delayed(inc)(i) for i in range(n)])


def tiny_tree(delayed, tasks):
    leaves = (tasks + 1) // 2
    layer = [delayed(inc)(i) for i in range(leaves)]
    while len(layer) > 1:
        layer = [delayed(add)(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    return layer[0]


GRAPHS = [
    ("tree over 64 leaves of 0.1 s", lambda d: tree(d, 64, 0.1), 127, 1.6),
    ("tree over 256 leaves of 50 ms", lambda d: tree(d, 256, 0.05), 511, 3.2),
    ("200 tasks, 10 slow (1 s) ones next to each other", uneven, 201, 3.0),
    ("4 chains of 40 steps over 50 MB arrays", chains, 4 * 42 + 1, None),
    ("5,000 tiny tasks (map + sum)", lambda d: map_sum(d, 5000), 5001, None),
    ("tree of 4,095 tiny tasks", lambda d: tiny_tree(d, 4096), 4095, None),
]
MEMORY_GRAPHS = {"4 chains of 40 steps over 50 MB arrays"}


class PeakMemory:
    """The peak of some processes' summed RSS above their level when it started, sampled in a thread."""

    def __init__(self, pids):
        import psutil

        self.processes = [psutil.Process(pid) for pid in pids]

    def _rss(self):
        return sum(process.memory_info().rss for process in self.processes)

    def __enter__(self):
        self.base = self.peak = self._rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def above_base(self):
        return self.peak - self.base


def once(run, pids=None):
    """Seconds ``run`` took, its value, and the peak memory of ``pids`` above their start (or 0)."""
    if not pids:
        start = time.perf_counter()
        value = run()
        return time.perf_counter() - start, value, 0
    with PeakMemory(pids) as peak:
        start = time.perf_counter()
        value = run()
        elapsed = time.perf_counter() - start
    return elapsed, value, peak.above_base


def compare(ours, theirs, repeats, pids=None, between=None):
    """Best time, last value and highest memory peak of each, their runs alternating so that a change
    in the machine's load falls on both."""
    best = [float("inf"), float("inf")]
    values, peaks = [None, None], [0, 0]
    for _ in range(repeats):
        for side, run in enumerate((ours, theirs)):
            if between is not None:
                between()
            elapsed, values[side], memory = once(run, pids)
            best[side] = min(best[side], elapsed)
            peaks[side] = max(peaks[side], memory)
    return best, values, peaks


def distributed_rows(repeats):
    import dask
    from distributed import Client, LocalCluster

    import belated

    rows = []
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: None)
        pids = list(client.run(os.getpid).values())
        for name, build, tasks, ideal in GRAPHS:
            watch = pids if name in MEMORY_GRAPHS else None

            def ours(build=build):
                return belated.compute(build(belated.delayed), scheduler=client)[0]

            def theirs(build=build):
                return dask.compute(build(dask.delayed), scheduler=client)[0]

            first, _, _ = once(ours)
            (ours_time, theirs_time), (ours_value, theirs_value), (ours_memory, theirs_memory) = compare(
                ours, theirs, repeats, watch, between=lambda: client.run(_collect_garbage)
            )
            assert ours_value == theirs_value, name
            rows.append((name, tasks, first, ours_time, theirs_time, ideal, ours_memory, theirs_memory))
            print(rows[-1], flush=True)
    return rows


def _collect_garbage():
    import gc

    gc.collect()


def spilled_files(_, directory):
    return sum(len(files) for _, _, files in os.walk(directory))


def ray_rows(repeats):
    import ray

    import belated

    directory = tempfile.mkdtemp(prefix="belated-spill-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=2**30,
        object_spilling_directory=directory,
    )
    try:
        remote_inc, remote_sum = ray.remote(inc), ray.remote(lambda *xs: sum(xs))
        remote_load, remote_step = ray.remote(load), ray.remote(step)
        remote_spilled = ray.remote(spilled_files)
        ray.get(remote_inc.remote(0))
        n = 5000

        def map_by_hand():
            return ray.get(remote_sum.remote(*[remote_inc.remote(i) for i in range(n)]))

        def map_ours():
            return belated.compute(map_sum(belated.delayed, n), scheduler="ray")[0]

        map_ours(), map_by_hand()  # Ray's workers import the functions once
        (ours, theirs), (ours_value, theirs_value), _ = compare(map_ours, map_by_hand, repeats)
        assert ours_value == theirs_value
        rows = [("5,000 tiny tasks (map + sum)", n + 1, ours, theirs, None, None)]

        def chain_by_hand():
            ref = remote_load.remote(MB50, 0)
            for _ in range(40):
                ref = remote_step.remote(ref)
            return ray.get(remote_spilled.remote(ref, directory))

        def chain_ours():
            x = belated.delayed(load)(MB50, 0)
            for _ in range(40):
                x = belated.delayed(step)(x)
            return belated.delayed(spilled_files)(x, directory).compute(scheduler="ray")

        chain_ours(), chain_by_hand()
        (ours, theirs), (ours_spilled, theirs_spilled), _ = compare(chain_ours, chain_by_hand, repeats)
        rows.append(("chain of 40 steps over 50 MB arrays", 42, ours, theirs, ours_spilled, theirs_spilled))
        print(rows, flush=True)
        return rows
    finally:
        ray.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    lines = [
        "Dask distributed, `LocalCluster(n_workers=2, threads_per_worker=2)`, same cluster and run:",
        "",
        "| graph | tasks | belated, first run | belated | dask.delayed | belated / dask | ideal "
        "| worker peak, belated | worker peak, dask |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, tasks, first, ours, theirs, ideal, ours_memory, theirs_memory in distributed_rows(
        options.repeats
    ):
        memory = (
            f"{ours_memory / 2**20:.0f} MB | {theirs_memory / 2**20:.0f} MB"
            if name in MEMORY_GRAPHS
            else "— | —"
        )
        lines.append(
            f"| {name} | {tasks:,} | {first:.2f} s | {ours:.2f} s | {theirs:.2f} s | {ours / theirs:.2f}x "
            f"| {f'{ideal:.1f} s' if ideal else '—'} | {memory} |"
        )
    lines += [
        "",
        "Ray, 2 CPUs, 1 GB object store:",
        "",
        "| graph | tasks | belated | hand-written Ray | belated / Ray | files spilled, belated | by hand |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, tasks, ours, theirs, ours_spilled, theirs_spilled in ray_rows(options.repeats):
        spilled = "— | —" if ours_spilled is None else f"{ours_spilled} | {theirs_spilled}"
        lines.append(
            f"| {name} | {tasks:,} | {ours:.2f} s | {theirs:.2f} s | {ours / theirs:.2f}x | {spilled} |"
        )
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "scaleout.md").write_text(table + "\n")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
