"""belated's processes scheduler against dask's and against distributed's LocalCluster, in one run.

- CPU-bound: 8 pure-Python tasks of about 0.5 s each on 2 workers (sequential time / wall time).
- Trivial tasks: 10,000 `inc` calls summed, end to end, per task.
- Start: the first compute's latency on a fresh pool (belated keeps its pool for later computes; dask's
  processes scheduler starts one per compute), and the LocalCluster's start time.

Usage: ``python benchmarks/processes.py``. Writes ``benchmarks/results/processes.md``.
"""

import time
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


def main():
    import dask
    from distributed import Client, LocalCluster

    import belated

    n = calibrate()
    sequential, expected = timed(lambda: [spin(n) for _ in range(8)])
    rows = []

    first_belated, _ = timed(
        lambda: belated.compute(belated.delayed(inc)(1), scheduler="processes", num_workers=WORKERS)
    )
    first_dask, _ = timed(
        lambda: dask.compute(dask.delayed(inc)(1), scheduler="processes", num_workers=WORKERS)
    )
    ours, got = timed(
        lambda: list(
            belated.compute(
                *[belated.delayed(spin)(n) for _ in range(8)], scheduler="processes", num_workers=WORKERS
            )
        )
    )
    assert got == expected
    theirs, got = timed(
        lambda: list(
            dask.compute(
                *[dask.delayed(spin)(n) for _ in range(8)], scheduler="processes", num_workers=WORKERS
            )
        )
    )
    assert got == expected
    rows.append(
        (
            "8 CPU-bound tasks of 0.5 s, speedup over sequential",
            f"{sequential / ours:.2f}x",
            f"{sequential / theirs:.2f}x",
            "-",
        )
    )

    tasks = 10_000
    ours, total = timed(
        lambda: belated.delayed(sum)([belated.delayed(inc)(i) for i in range(tasks)]).compute(
            scheduler="processes", num_workers=WORKERS
        )
    )
    theirs, total_dask = timed(
        lambda: dask.delayed(sum)([dask.delayed(inc)(i) for i in range(tasks)]).compute(
            scheduler="processes", num_workers=WORKERS
        )
    )
    start_cluster, cluster = timed(
        lambda: LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
    )
    with cluster, Client(cluster) as client:
        distributed_time, total_distributed = timed(
            lambda: client.compute(dask.delayed(sum)([dask.delayed(inc)(i) for i in range(tasks)])).result()
        )
    assert total == total_dask == total_distributed
    per = lambda seconds: f"{seconds / tasks * 1e6:,.0f} µs/task"  # noqa: E731
    rows.append((f"{tasks:,} trivial tasks, end to end", per(ours), per(theirs), per(distributed_time)))
    rows.append(
        (
            "first compute on a fresh pool / cluster start",
            f"{first_belated:.2f} s",
            f"{first_dask:.2f} s (every compute)",
            f"{start_cluster:.2f} s",
        )
    )

    lines = [
        "| workload | belated processes | dask processes | distributed LocalCluster |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "processes.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
