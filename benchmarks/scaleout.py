"""belated on other engines versus those engines' own APIs, on the same cluster, in one run.

- Dask distributed (a LocalCluster of 2 worker processes on loopback): a 10k-task graph (10k `inc`
  calls summed by one `sum`, and a binary tree reduction), built and computed end to end with
  belated (one `client.get` submission) and with dask.delayed.
- Ray (a local instance, 2 CPUs): the same map + sum through belated's Ray scheduler and as
  hand-written Ray tasks.

Usage: ``python benchmarks/scaleout.py [--tasks N] [--ray-tasks N]``. Writes
``benchmarks/results/scaleout.md``.
"""

import argparse
import os
import time
from pathlib import Path


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def map_sum(delayed, n):
    return delayed(sum)([delayed(inc)(i) for i in range(n)])


def tree(delayed, n):
    layer = [delayed(inc)(i) for i in range(n // 2)]
    while len(layer) > 1:
        layer = [
            delayed(add)(*layer[i : i + 2]) if i + 1 < len(layer) else layer[i]
            for i in range(0, len(layer), 2)
        ]
    return layer[0]


def timed(run, repeats=3):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        best = min(best, time.perf_counter() - start)
    return best, value


def distributed_rows(n):
    import dask
    from distributed import Client, LocalCluster

    import belated

    rows = []
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: None)
        for shape_name, shape in [("map + sum", map_sum), ("tree reduction", tree)]:
            ours, ours_value = timed(
                lambda shape=shape: belated.compute(shape(belated.delayed, n), scheduler=client)[0]
            )
            theirs, theirs_value = timed(
                lambda shape=shape: dask.compute(shape(dask.delayed, n), scheduler=client)[0]
            )
            assert ours_value == theirs_value
            tasks = n + 1 if shape is map_sum else n - 1
            rows.append(("distributed", shape_name, tasks, ours, theirs))
    return rows


def ray_rows(n):
    import ray

    import belated

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote_inc, remote_sum = ray.remote(inc), ray.remote(lambda *xs: sum(xs))
        ray.get(remote_inc.remote(0))

        def by_hand():
            return ray.get(remote_sum.remote(*[remote_inc.remote(i) for i in range(n)]))

        ours, ours_value = timed(lambda: belated.compute(map_sum(belated.delayed, n), scheduler="ray")[0])
        theirs, theirs_value = timed(by_hand)
        assert ours_value == theirs_value
        return [("ray", "map + sum", n + 1, ours, theirs)]
    finally:
        ray.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--ray-tasks", type=int, default=5_000)
    options = parser.parse_args()
    rows = distributed_rows(options.tasks) + ray_rows(options.ray_tasks)
    lines = [
        "| engine | graph | tasks | belated | incumbent | belated µs/task | incumbent µs/task | speedup |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for engine, shape, tasks, ours, theirs in rows:
        incumbent = "dask.delayed" if engine == "distributed" else "hand-written Ray"
        lines.append(
            f"| {engine} | {shape} | {tasks:,} | {ours:.2f} s | {theirs:.2f} s ({incumbent}) "
            f"| {ours / tasks * 1e6:.0f} | {theirs / tasks * 1e6:.0f} | {theirs / ours:.1f}x |"
        )
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "scaleout.md").write_text(table + "\n")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
